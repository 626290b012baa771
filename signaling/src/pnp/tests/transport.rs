//! Both transports end to end: TCP framing at every split, several frames per chunk, loss and
//! retransmission on UDP, replays, clock windows, forged replies, amplification and garbage.

use p2pd_proto::testing::Driven;
use std::net::SocketAddr;
use std::time::Duration;

use p2pd_proto::{DropReason, Instant, Rng, SocketId, SocketOutcome, Verdict};

use super::harness::*;
use super::rules::open_reply;
use crate::envelope::{seal, Opener};
use crate::pnp::wire::{FrameEvent, FrameReader};
use crate::pnp::*;

fn src(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn unlimited() -> PnpServerConfig {
    let mut config = server_config();
    config.requests_per_window = u32::MAX;
    config
}

fn frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut reader = FrameReader::new(MAX_MESSAGE_LEN);
    let mut rest = bytes;
    let mut out = Vec::new();
    while let Some(ev) = reader.next(&mut rest) {
        match ev {
            FrameEvent::Frame(f) => out.push(f),
            FrameEvent::BadLength(l) => panic!("bad length {l}"),
        }
    }
    out
}

#[test]
fn tcp_register_lookup_delete_close_each_socket_once() {
    let mut w = World::new(server_config());
    let a = w.add_client(1, "198.51.100.1:4000", PnpTransport::Tcp);
    let b = w.add_client(2, "198.51.100.2:4000", PnpTransport::Tcp);
    assert!(matches!(
        w.register(a, "alice", b"tcp", 1),
        PnpClientEvent::Registered { .. }
    ));
    match w.lookup(b, "alice") {
        PnpClientEvent::Found { record, .. } => assert_eq!(record.value(), b"tcp"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        w.delete(a, "alice", 2),
        PnpClientEvent::Deleted { .. }
    ));
    assert!(matches!(
        w.lookup(b, "alice"),
        PnpClientEvent::NotFound { .. }
    ));
    assert_eq!(w.clients[a].closes.len(), 2);
    assert_eq!(w.clients[b].closes.len(), 2);
    assert_closed_once(&w.clients[a].closes);
    assert_closed_once(&w.clients[b].closes);
    // Every accepted connection was closed by the server exactly once (the harness asserts
    // that no close hits a socket that is not open), and none is left open.
    assert_eq!(w.server.machine.open_connections(), 0);
    assert_eq!(w.server.machine.stats().connections_accepted, 4);
    assert_eq!(w.server.machine.stats().connections_closed, 4);
}

#[test]
fn tcp_frames_split_at_every_offset() {
    let mut w = World::new(unlimited());
    let now_ms = w.server.machine.unix_ms(w.now);
    let record = Record::sign(&id(1), name("split"), vec![3; 300], 1, now_ms + 60_000).unwrap();
    let request = Request::Register(Box::new(record));
    let sealed = seal_request(&id(1), &w.server_key, now_ms, [1; 16], &request, 0);
    let framed = frame(&sealed).unwrap();
    let remote = src("198.51.100.1:40000");
    let conn = w.raw_connect(remote);
    let first = w.raw_stream(conn, &framed);
    assert_eq!(frames(&first).len(), 1);
    w.server
        .clock(w.now)
        .outcome(conn, SocketOutcome::PeerClosed);
    w.pump();
    // The same request again (answered from the reply cache, so no crypto) cut at every offset.
    for cut in 0..=framed.len() {
        let conn = w.raw_connect(remote);
        let mut out = w.raw_stream(conn, &framed[..cut]);
        out.extend(w.raw_stream(conn, &framed[cut..]));
        assert_eq!(out, first, "cut {cut}");
        w.server
            .clock(w.now)
            .outcome(conn, SocketOutcome::PeerClosed);
        w.pump();
    }
    assert_eq!(w.server.machine.stats().duplicates, framed.len() as u64 + 1);
    assert_eq!(w.server.machine.open_connections(), 0);
}

#[test]
fn client_and_server_handle_split_frames() {
    for cut in [1, 2, 3, 97, 500] {
        let mut w = World::new(server_config());
        w.split_at = Some(cut);
        let a = w.add_client(1, "198.51.100.1:4000", PnpTransport::Tcp);
        assert!(matches!(
            w.register(a, "alice", b"x", 1),
            PnpClientEvent::Registered { .. }
        ));
        assert!(matches!(w.lookup(a, "alice"), PnpClientEvent::Found { .. }));
    }
}

#[test]
fn two_frames_in_one_chunk_get_two_replies() {
    let mut w = World::new(server_config());
    let now_ms = w.server.machine.unix_ms(w.now);
    let r1 = Request::Lookup(name("one"));
    let r2 = Request::Lookup(name("two"));
    let mut chunk = frame(&seal_request(
        &id(1),
        &w.server_key,
        now_ms,
        [1; 16],
        &r1,
        0,
    ))
    .unwrap();
    chunk.extend(
        frame(&seal_request(
            &id(1),
            &w.server_key,
            now_ms,
            [2; 16],
            &r2,
            0,
        ))
        .unwrap(),
    );
    let conn = w.raw_connect(src("198.51.100.1:40000"));
    let out = w.raw_stream(conn, &chunk);
    let replies = frames(&out);
    assert_eq!(replies.len(), 2);
    let mut opener = Opener::new(4);
    for (reply, nonce) in replies.iter().zip([[1u8; 16], [2; 16]]) {
        let opened = opener.open(&id(1), now_ms, reply).unwrap();
        let reply = Reply::decode(&opened.payload).unwrap();
        assert_eq!(reply.request_nonce, nonce);
        assert!(matches!(
            reply.body,
            ReplyBody::Error {
                code: ErrorCode::NotFound,
                ..
            }
        ));
    }
}

#[test]
fn bad_frame_length_closes_the_connection_once() {
    let mut w = World::new(server_config());
    for prefix in [[0u8, 0], ((MAX_MESSAGE_LEN + 1) as u16).to_be_bytes()] {
        let conn = w.raw_connect(src("198.51.100.1:40000"));
        let _ = w.raw_stream(conn, &prefix);
        assert_eq!(
            w.server_closes.iter().filter(|s| **s == conn).count() % 2,
            1
        );
        assert!(!w.server_open.contains(&conn));
        // The peer's later close and data change nothing.
        w.server
            .clock(w.now)
            .outcome(conn, SocketOutcome::PeerClosed);
        assert_eq!(
            w.server.clock(w.now).stream(conn, b"more"),
            Verdict::Dropped(DropReason::UnknownSocket)
        );
        w.pump();
    }
    assert_eq!(w.server.machine.stats().bad_frames, 2);
}

#[test]
fn idle_connections_are_closed_once() {
    let mut w = World::new(server_config());
    let conn = w.raw_connect(src("198.51.100.1:40000"));
    w.advance(Duration::from_secs(11));
    assert!(!w.server_open.contains(&conn));
    assert_eq!(w.server.machine.stats().idle_closed, 1);
    w.advance(Duration::from_secs(30));
    assert_eq!(w.server.machine.stats().idle_closed, 1);
}

#[test]
fn tcp_failures_are_reported_and_sockets_closed_once() {
    let mut w = World::new(server_config());
    let a = w.add_client(1, "198.51.100.1:4000", PnpTransport::Tcp);
    w.refuse_tcp = true;
    match w.lookup(a, "x") {
        PnpClientEvent::Failed {
            reason: PnpFailure::Io { op, .. },
            ..
        } => assert_eq!(op, p2pd_proto::OpKind::Connect),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.clients[a].closes.len(), 1);
    w.refuse_tcp = false;
    // Outcomes for sockets the client does not know are ignored; the next request works.
    let now = w.now;
    let rid = w
        .client(a)
        .clock(now)
        .input(|m, now| m.lookup(now, name("x")))
        .unwrap();
    w.clients[a]
        .machine
        .clock(now)
        .outcome(SocketId(99), SocketOutcome::PeerClosed); // unknown socket: ignored
    w.pump();
    assert!(matches!(
        w.take_event(a),
        PnpClientEvent::NotFound { id, .. } if id == rid
    ));
    assert_closed_once(&w.clients[a].closes);
}

#[test]
fn udp_retransmits_after_loss_and_duplicates_get_the_cached_reply() {
    let mut w = World::new(server_config());
    let a = w.add_client(1, "198.51.100.1:4000", PnpTransport::Udp);
    // The first request datagram is lost: a retransmission gets through.
    w.lose_requests.push_back(true);
    assert!(matches!(
        w.register(a, "alice", b"1", 1),
        PnpClientEvent::Registered { .. }
    ));
    assert_eq!(w.client(a).machine.stats().retransmits, 1);
    // The reply is lost: the retransmitted request (same bytes) gets the same reply again.
    w.lose_replies.push_back(true);
    assert!(matches!(
        w.register(a, "alice", b"2", 2),
        PnpClientEvent::Registered { version: 2, .. }
    ));
    assert_eq!(w.server.machine.stats().duplicates, 1);
    let last = w.captured.len();
    assert_eq!(w.captured[last - 1], w.captured[last - 2]);
    // Everything lost: a timeout after max_retransmits retransmissions.
    w.lose_requests.extend([true; 10]);
    let before = w.client(a).machine.stats().retransmits;
    assert!(matches!(
        w.lookup(a, "alice"),
        PnpClientEvent::Failed {
            reason: PnpFailure::Timeout,
            ..
        }
    ));
    assert_eq!(w.client(a).machine.stats().retransmits - before, 3); // 0.5 + 1 + 2 s < 5 s < + 4 s
}

#[test]
fn replayed_requests_are_not_executed_again() {
    // Without a reply cache a replay is rejected outright.
    let mut config = server_config();
    config.reply_cache_capacity = 0;
    let mut w = World::new(config);
    let a = w.add_client(1, "198.51.100.1:4000", PnpTransport::Udp);
    w.register(a, "alice", b"1", 1);
    let captured = w.captured[0].clone();
    assert!(w.raw_udp(src("203.0.113.5:999"), &captured).is_empty());
    assert_eq!(w.server.machine.stats().replays, 1);

    // With the cache, a replay of an old request only gets the old reply back; the store keeps
    // the newer record.
    let mut w = World::new(server_config());
    let a = w.add_client(1, "198.51.100.1:4000", PnpTransport::Udp);
    w.register(a, "alice", b"1", 1);
    let captured = w.captured[0].clone();
    w.register(a, "alice", b"2", 2);
    let replies = w.raw_udp(src("198.51.100.1:4000"), &captured);
    assert_eq!(replies.len(), 1);
    let stored = w
        .server
        .machine
        .store()
        .get(&name("alice"))
        .unwrap()
        .unwrap();
    assert_eq!(stored.record.version(), 2);
    // A tampered copy (same nonce, other bytes) is not served from the cache.
    let mut tampered = captured.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(w.raw_udp(src("198.51.100.1:4000"), &tampered).is_empty());
    // After the freshness window the captured request is simply stale.
    let mut w2 = World::new(server_config());
    w2.advance(Duration::from_secs(31));
    assert!(w2.raw_udp(src("198.51.100.1:4000"), &captured).is_empty());
    assert_eq!(w2.server.machine.stats().stale, 1);
}

#[test]
fn requests_outside_the_clock_window_are_dropped() {
    let mut w = World::new(server_config());
    for skew in [-31_000i64, 10_000] {
        let mut config = w.client_config(PnpTransport::Udp);
        config.unix_epoch_ms = EPOCH.checked_add_signed(skew).unwrap();
        config.timeout = Duration::from_secs(2);
        let c = w.add_client_with(1, "198.51.100.1:4000", config);
        assert!(matches!(
            w.lookup(c, "x"),
            PnpClientEvent::Failed {
                reason: PnpFailure::Timeout,
                ..
            }
        ));
    }
    assert!(w.server.machine.stats().stale >= 2);
    assert_eq!(w.server.machine.stats().requests, 0);
}

/// A lone client whose request the test answers by hand, as a (possibly lying) server.
fn lone_client() -> (Driven<PnpClient>, Vec<u8>, Instant) {
    let server = id(200);
    let config = PnpClientConfig::new(server_addr(), server.public_key(), PnpTransport::Udp, EPOCH);
    let client = PnpClient::new(config, id(1), 1);
    let now = Instant::from_millis(10);
    let mut client = Driven::new("pnp client", client, |e| *e == PnpClientEvent::Closed)
        .at(now)
        .answering(Driven::<PnpClient>::bind_answer());
    client.input(|c, now| c.lookup(now, name("alice"))).unwrap();
    let (_, request) = client.take_transmits().into_iter().next().unwrap();
    (client, request, now)
}

/// The client's one event since the last call, if any.
fn event(client: &mut Driven<PnpClient>) -> Option<PnpClientEvent> {
    let mut events = client.take_events();
    assert!(events.len() <= 1, "{events:?}");
    events.pop()
}

fn answer(request: &[u8], now: Instant, signer: &crate::Identity, body: ReplyBody) -> Vec<u8> {
    let now_ms = EPOCH + now.as_nanos() / 1_000_000;
    let opened = Opener::new(4).open(&id(200), now_ms, request).unwrap();
    let reply = Reply {
        request_nonce: opened.nonce,
        body,
    };
    seal(signer, &opened.sender, now_ms, [0x55; 16], &reply.encode()).unwrap()
}

#[test]
fn client_rejects_forged_or_mismatched_replies() {
    let now_ms = EPOCH + 10;
    let good = Record::sign(&id(1), name("alice"), b"v".to_vec(), 1, now_ms + 60_000).unwrap();
    let forged = {
        let mut b = good.to_bytes();
        let i = b.len() - 10;
        b[i] ^= 1;
        Record::from_bytes(&b).unwrap()
    };
    let other_name = Record::sign(&id(1), name("bob"), b"v".to_vec(), 1, now_ms + 60_000).unwrap();
    let expired = Record::sign(&id(1), name("alice"), b"v".to_vec(), 1, now_ms - 1).unwrap();
    let cases = [
        (
            ReplyBody::Found(Box::new(forged)),
            PnpFailure::BadRecordSignature,
        ),
        (ReplyBody::Found(Box::new(other_name)), PnpFailure::Mismatch),
        (
            ReplyBody::Found(Box::new(expired)),
            PnpFailure::ExpiredRecord,
        ),
        (ReplyBody::Deleted { version: 1 }, PnpFailure::Mismatch),
    ];
    let server = id(200);
    for (body, want) in cases {
        let (mut client, request, now) = lone_client();
        let reply = answer(&request, now, &server, body);
        assert_eq!(
            client.datagram(CLIENT_UDP_SOCKET, server_addr(), &reply),
            Verdict::Consumed
        );
        match event(&mut client) {
            Some(PnpClientEvent::Failed { reason, .. }) => assert_eq!(reason, want),
            other => panic!("{other:?}"),
        }
    }
    // Replies the client cannot attribute to the server are dropped and the request goes on.
    let (mut client, request, now) = lone_client();
    let body = ReplyBody::Found(Box::new(good));
    let by_impostor = answer(&request, now, &id(66), body.clone());
    assert_eq!(
        client.datagram(CLIENT_UDP_SOCKET, server_addr(), &by_impostor),
        Verdict::Dropped(DropReason::WrongSource)
    );
    let genuine = answer(&request, now, &server, body);
    assert_eq!(
        client.datagram(CLIENT_UDP_SOCKET, src("192.0.2.99:5300"), &genuine),
        Verdict::Dropped(DropReason::WrongSource)
    );
    assert_eq!(event(&mut client), None);
    assert_eq!(
        client.datagram(CLIENT_UDP_SOCKET, server_addr(), &genuine),
        Verdict::Consumed
    );
    assert!(matches!(
        event(&mut client),
        Some(PnpClientEvent::Found { .. })
    ));
    // The same reply again is a duplicate.
    assert_eq!(
        client.datagram(CLIENT_UDP_SOCKET, server_addr(), &genuine),
        Verdict::Dropped(DropReason::Duplicate)
    );
}

#[test]
fn udp_replies_are_never_larger_than_requests() {
    let mut w = World::new(unlimited());
    let mut rng = Rng::from_seed(42);
    let owner = id(1);
    // A large record so that Found replies are large.
    let big = vec![0xab; MAX_VALUE_LEN];
    let now_ms = w.server.machine.unix_ms(w.now);
    let record = Record::sign(&owner, name("big"), big, 1, now_ms + 60_000).unwrap();
    let sealed = seal_request(
        &owner,
        &w.server_key,
        now_ms,
        [0; 16],
        &Request::Register(Box::new(record)),
        0,
    );
    assert_eq!(w.raw_udp(src("198.51.100.1:4000"), &sealed).len(), 1);
    let mut padding_required = 0;
    for i in 0..120u32 {
        let n = if rng.below(2) == 0 {
            "big".to_string()
        } else {
            format!("n{}", rng.below(1000))
        };
        let request = match rng.below(3) {
            0 => Request::Lookup(name(&n)),
            1 => Request::Delete {
                name: name(&n),
                version: rng.below(3),
            },
            _ => {
                let len = rng.below(MAX_VALUE_LEN as u64 + 1) as usize;
                let r = Record::sign(&owner, name(&n), vec![1; len], rng.below(3), now_ms + 1_000)
                    .unwrap();
                Request::Register(Box::new(r))
            }
        };
        let pad = match rng.below(3) {
            0 => 0,
            1 => rng.below(UDP_LOOKUP_PAYLOAD_LEN as u64) as usize,
            _ => UDP_LOOKUP_PAYLOAD_LEN,
        };
        let mut nonce = [0u8; 16];
        nonce[..4].copy_from_slice(&(i + 1).to_be_bytes());
        let bytes = seal_request(&owner, &w.server_key, now_ms, nonce, &request, pad);
        // raw_udp asserts every reply is at most the request's length.
        for reply in w.raw_udp(src("198.51.100.1:4000"), &bytes) {
            if let ReplyBody::Error {
                code: ErrorCode::PaddingRequired,
                detail,
            } = open_reply(&w, 1, &reply).body
            {
                assert!(detail as usize > bytes.len());
                padding_required += 1;
            }
        }
    }
    assert!(padding_required > 0);
    // The client's own requests always fit their replies.
    let a = w.add_client(1, "198.51.100.1:4000", PnpTransport::Udp);
    assert!(matches!(w.lookup(a, "big"), PnpClientEvent::Found { .. }));
    assert!(!w.udp.pairs.is_empty());
    assert!(w.udp.pairs.iter().all(|(req, rep)| rep <= req));
}

#[test]
fn a_tcp_request_replayed_over_udp_gets_no_larger_reply() {
    let mut w = World::new(server_config());
    let now_ms = w.server.machine.unix_ms(w.now);
    let record = Record::sign(
        &id(1),
        name("big"),
        vec![1; MAX_VALUE_LEN],
        1,
        now_ms + 60_000,
    )
    .unwrap();
    let register = seal_request(
        &id(1),
        &w.server_key,
        now_ms,
        [1; 16],
        &Request::Register(Box::new(record)),
        0,
    );
    assert_eq!(w.raw_udp(src("198.51.100.1:4000"), &register).len(), 1);
    // An unpadded lookup over TCP gets the large Found reply (and it is cached).
    let lookup = seal_request(
        &id(1),
        &w.server_key,
        now_ms,
        [2; 16],
        &Request::Lookup(name("big")),
        0,
    );
    let conn = w.raw_connect(src("198.51.100.1:40000"));
    let out = w.raw_stream(conn, &frame(&lookup).unwrap());
    assert!(out.len() > lookup.len() + 2);
    // The same bytes over UDP (say from a spoofed victim address): nothing.
    assert!(w.raw_udp(src("203.0.113.7:53"), &lookup).is_empty());
    assert_eq!(w.server.machine.stats().amplification_dropped, 1);
}

#[test]
fn server_survives_garbage_and_keeps_working() {
    let mut w = World::new(server_config());
    let mut rng = Rng::from_seed(7);
    let conn = w.raw_connect(src("198.51.100.3:40000"));
    for _ in 0..2000 {
        let len = rng.below(1400) as usize;
        let mut data = vec![0u8; len];
        rng.fill_bytes(&mut data);
        if rng.below(2) == 0 && !data.is_empty() {
            data[0] = 1; // looks like an envelope
        }
        let from = SocketAddr::from(([10, 0, (rng.below(4)) as u8, 1], 1000));
        let _ = w.server.clock(w.now).datagram(UDP_SOCKET, from, &data);
        let _ = w
            .server
            .clock(w.now)
            .stream(SocketId(rng.below(80) as u32), &data);
        let _ = w
            .server
            .clock(w.now)
            .datagram(SocketId(rng.below(3) as u32), from, &data);
        w.pump();
    }
    let _ = conn;
    let a = w.add_client(1, "198.51.100.1:4000", PnpTransport::Udp);
    assert!(matches!(
        w.register(a, "still", b"ok", 1),
        PnpClientEvent::Registered { .. }
    ));
    let (rates, replies, replay, queued) = w.server.machine.table_sizes();
    assert!(rates <= 4096 && replies <= 256 && replay <= 16_384 && queued == 0);
}

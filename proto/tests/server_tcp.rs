//! The STUN server over TCP: listener, accept slots, framing at every split, answers on the stream,
//! bad framing, idle timeout, closes exactly once, bounds.
// Test code: the package's strict lints (Cargo.toml `[lints]`) guard its library code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::BTreeMap;

use p2pd_proto::server::{
    Role, ServerConfig, ServerConfigError, ServerEvent, StunServer, MAX_RESPONSE_LEN,
    MAX_TCP_MESSAGE_LEN, TCP_CONNECTION_BASE, TCP_LISTENER,
};
use p2pd_proto::stun::{
    attr, AttrKind, Attribute, ChangeRequest, Class, Header, Message, MessageWriter, Method,
    TransactionId,
};
use p2pd_proto::testing::Driven;
use p2pd_proto::Machine;
use p2pd_proto::{
    DropReason, Instant, IoError, OpKind, SocketId, SocketOp, SocketOutcome, Transport, Verdict,
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const P: &str = "192.0.2.1:3478";
const CLIENT: &str = "203.0.113.9:40000";

fn conn(i: u32) -> SocketId {
    SocketId(TCP_CONNECTION_BASE + i)
}

/// Every drain of the server goes through the contract checker.
type Server = Driven<StunServer>;

fn driven(s: StunServer) -> Server {
    let mut s = Driven::new("stun server", s, |e| matches!(e, ServerEvent::Closed));
    s.drain();
    s
}

/// Every op the server has emitted and not taken yet.
fn ops(s: &mut Server) -> Vec<SocketOp> {
    s.take_ops()
}

fn events(s: &mut Server) -> Vec<ServerEvent> {
    s.take_events()
}

/// A TCP server with every bind answered; returns it with the accept intents it asked for.
fn tcp_server(config: ServerConfig) -> (Server, Vec<SocketId>) {
    let s = StunServer::new(config.with_tcp(true)).unwrap();
    let mut s = Driven::new("stun server", s, |e| matches!(e, ServerEvent::Closed))
        .answering(Driven::<StunServer>::bind_answer());
    s.drain();
    let mut accepts = Vec::new();
    for op in ops(&mut s) {
        match op {
            SocketOp::Bind { .. } => {}
            SocketOp::Listen { socket, .. } => assert_eq!(socket, TCP_LISTENER),
            SocketOp::Accept { listener, socket } => {
                assert_eq!(listener, TCP_LISTENER);
                accepts.push(socket);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    (s, accepts)
}

fn small(max: usize) -> ServerConfig {
    let mut c = ServerConfig::single(addr(P));
    c.tcp_limits.max_connections = max;
    c
}

fn accept(s: &mut Server, socket: SocketId, now: Instant) {
    s.clock(now).outcome(
        socket,
        SocketOutcome::Accepted {
            local: addr(P),
            remote: addr(CLIENT),
        },
    );
}

fn request(id: u8, attrs: &[Attribute<'_>]) -> Vec<u8> {
    let header = Header::new(
        Class::Request,
        Method::BINDING,
        TransactionId::new([id; 12]),
    );
    let mut buf = [0u8; 512];
    let mut w = MessageWriter::new(&mut buf, header).unwrap();
    for a in attrs {
        w.add(a).unwrap();
    }
    w.add_fingerprint().unwrap();
    let n = w.finish();
    buf[..n].to_vec()
}

/// Every transmit the server has made and not taken yet: (socket, destination, bytes).
fn transmits(s: &mut Server) -> Vec<(SocketId, SocketAddr, Vec<u8>)> {
    s.take_transmits()
        .into_iter()
        .map(|(t, bytes)| {
            assert!(t.len <= MAX_RESPONSE_LEN);
            (t.socket, t.destination, bytes)
        })
        .collect()
}

fn closes(ops: &[SocketOp]) -> Vec<SocketId> {
    ops.iter()
        .filter_map(|op| match op {
            SocketOp::Close { socket } => Some(*socket),
            _ => None,
        })
        .collect()
}

#[test]
fn tcp_binds_listens_and_accepts_one_per_slot() {
    let mut s = driven(StunServer::new(small(3).with_tcp(true)).unwrap());
    let first = ops(&mut s);
    assert!(first.contains(&SocketOp::Bind {
        socket: TCP_LISTENER,
        transport: Transport::Tcp,
        local: addr(P),
        options: Default::default(),
    }));
    s.clock(Instant::ZERO)
        .outcome(TCP_LISTENER, SocketOutcome::Bound { local: addr(P) });
    let next = ops(&mut s);
    assert_eq!(
        next[0],
        SocketOp::Listen {
            socket: TCP_LISTENER,
            backlog: 128
        }
    );
    // One accept per connection and the spare: a newcomer is always taken from the backlog.
    assert_eq!(
        next[1..].to_vec(),
        (0..4)
            .map(|i| SocketOp::Accept {
                listener: TCP_LISTENER,
                socket: conn(i)
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(
        events(&mut s),
        vec![ServerEvent::TcpListening { local: addr(P) }]
    );
    assert_eq!(s.machine.tcp_local_addr(), Some(addr(P)));
    // Without TCP nothing of the sort happens, and there is no timer.
    let mut udp = driven(StunServer::new(ServerConfig::single(addr(P))).unwrap());
    assert!(ops(&mut udp).iter().all(|op| matches!(
        op,
        SocketOp::Bind {
            transport: Transport::Udp,
            ..
        }
    )));
    assert_eq!(udp.deadline(), None);
}

#[test]
fn connection_limit_is_validated() {
    for bad in [0, p2pd_proto::server::MAX_TCP_CONNECTIONS + 1] {
        let err = StunServer::new(small(bad).with_tcp(true)).unwrap_err();
        assert_eq!(err, ServerConfigError::BadConnectionLimit);
        // Irrelevant without TCP.
        assert!(StunServer::new(small(bad)).is_ok());
    }
}

#[test]
fn a_request_split_anywhere_is_answered_on_its_stream() {
    let req = request(1, &[Attribute::Software("split test")]);
    for split in 0..=req.len() {
        for split2 in split..=req.len() {
            // A full RFC 5780 server: OTHER-ADDRESS must still not appear over TCP.
            let cfg = ServerConfig::rfc5780(addr(P), "192.0.2.2".parse().unwrap(), 3479);
            let (mut s, accepts) = tcp_server(cfg);
            accept(&mut s, accepts[0], Instant::ZERO);
            for part in [&req[..split], &req[split..split2], &req[split2..]] {
                assert_eq!(
                    s.clock(Instant::ZERO).stream(accepts[0], part),
                    Verdict::Consumed
                );
            }
            let out = transmits(&mut s);
            assert_eq!(out.len(), 1, "split {split}/{split2}");
            let (socket, dst, bytes) = &out[0];
            assert_eq!(*socket, accepts[0]);
            assert_eq!(*dst, addr(CLIENT));
            let m = Message::decode(bytes).unwrap();
            assert_eq!(m.class(), Class::Success);
            assert_eq!(m.transaction_id(), TransactionId::new([1; 12]));
            assert_eq!(m.xor_mapped_address(), Some(addr(CLIENT)));
            assert_eq!(m.response_origin(), Some(addr(P)));
            assert_eq!(m.other_address(), None);
            assert!(m.has_fingerprint());
        }
    }
}

#[test]
fn several_requests_in_one_chunk_get_one_answer_each_in_order() {
    let (mut s, accepts) = tcp_server(small(4));
    accept(&mut s, accepts[2], Instant::ZERO);
    let mut chunk = Vec::new();
    for id in 1..=5 {
        chunk.extend(request(id, &[]));
    }
    // And half of a sixth.
    let sixth = request(6, &[]);
    chunk.extend(&sixth[..10]);
    assert_eq!(
        s.clock(Instant::ZERO).stream(accepts[2], &chunk),
        Verdict::Consumed
    );
    let out = transmits(&mut s);
    let ids: Vec<u8> = out
        .iter()
        .map(|(sock, _, b)| {
            assert_eq!(*sock, accepts[2]);
            Message::decode(b).unwrap().transaction_id().as_bytes()[0]
        })
        .collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    let _ = s.clock(Instant::ZERO).stream(accepts[2], &sixth[10..]);
    assert_eq!(transmits(&mut s).len(), 1);
    assert_eq!(s.machine.stats().requests, 6);
}

#[test]
fn a_chunk_longer_than_the_buffer_is_reassembled() {
    let (mut s, accepts) = tcp_server(small(1));
    accept(&mut s, accepts[0], Instant::ZERO);
    let mut chunk = Vec::new();
    let mut n = 0;
    while chunk.len() < 4 * MAX_TCP_MESSAGE_LEN {
        chunk.extend(request(
            n as u8,
            &[Attribute::Software("a longer request body")],
        ));
        n += 1;
    }
    let _ = s.clock(Instant::ZERO).stream(accepts[0], &chunk);
    assert_eq!(transmits(&mut s).len(), n);
}

#[test]
fn change_requests_over_tcp_get_420_and_response_port_is_ignored() {
    let cfg = ServerConfig::rfc5780(addr(P), "192.0.2.2".parse().unwrap(), 3479);
    let (mut s, accepts) = tcp_server(cfg);
    accept(&mut s, accepts[0], Instant::ZERO);
    for change in [ChangeRequest::PORT, ChangeRequest::IP, ChangeRequest::BOTH] {
        let _ = s
            .clock(Instant::ZERO)
            .stream(accepts[0], &request(2, &[Attribute::ChangeRequest(change)]));
        let out = transmits(&mut s);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, accepts[0]);
        let m = Message::decode(&out[0].2).unwrap();
        assert_eq!(m.class(), Class::Error);
        assert_eq!(m.error_code().unwrap().code, 420);
        let Some(Attribute::UnknownAttributes(list)) = m.get(AttrKind::UnknownAttributes) else {
            panic!("no UNKNOWN-ATTRIBUTES")
        };
        assert_eq!(list.iter().collect::<Vec<_>>(), vec![attr::CHANGE_REQUEST]);
    }
    for attrs in [
        vec![Attribute::ChangeRequest(ChangeRequest::NONE)],
        vec![Attribute::ResponsePort(9)],
    ] {
        let _ = s
            .clock(Instant::ZERO)
            .stream(accepts[0], &request(3, &attrs));
        let out = transmits(&mut s);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, accepts[0]);
        assert_eq!(out[0].1, addr(CLIENT));
        assert_eq!(Message::decode(&out[0].2).unwrap().class(), Class::Success);
    }
    // The connection is still open after the errors.
    assert_eq!(s.machine.tcp_connections(), 1);
}

#[test]
fn bad_framing_closes_only_that_connection_once() {
    for garbage in [
        vec![0xFFu8; 20], // not STUN
        {
            let mut r = request(1, &[]);
            r[3] = 0x02; // unaligned length
            r
        },
        {
            let mut r = request(1, &[]);
            r[2] = 0x08; // announces 2048 + 20 bytes: longer than the buffer
            r
        },
    ] {
        let (mut s, accepts) = tcp_server(small(2));
        accept(&mut s, accepts[0], Instant::ZERO);
        accept(&mut s, accepts[1], Instant::ZERO);
        let v = s.clock(Instant::ZERO).stream(accepts[0], &garbage);
        assert!(
            matches!(v, Verdict::Dropped(DropReason::Malformed(_))),
            "{v:?}"
        );
        let after = ops(&mut s);
        assert_eq!(closes(&after), vec![accepts[0]]);
        // The slot asks for the next connection.
        assert!(after.contains(&SocketOp::Accept {
            listener: TCP_LISTENER,
            socket: accepts[0]
        }));
        assert_eq!(s.machine.stats().tcp_bad_frames, 1);
        assert_eq!(s.machine.tcp_connections(), 1);
        // More bytes on the closed id are refused; the other connection still works.
        assert_eq!(
            s.clock(Instant::ZERO).stream(accepts[0], &request(1, &[])),
            Verdict::Dropped(DropReason::UnknownSocket)
        );
        let _ = s.clock(Instant::ZERO).stream(accepts[1], &request(1, &[]));
        assert_eq!(transmits(&mut s).len(), 1);
        // Its peer closing does not close it again.
        s.clock(Instant::ZERO)
            .outcome(accepts[0], SocketOutcome::PeerClosed);
        assert!(closes(&ops(&mut s)).is_empty());
    }
}

#[test]
fn a_well_framed_bad_message_is_dropped_and_the_stream_goes_on() {
    let (mut s, accepts) = tcp_server(small(1));
    accept(&mut s, accepts[0], Instant::ZERO);
    let mut bad = request(1, &[]);
    let last = bad.len() - 1;
    bad[last] ^= 1; // FINGERPRINT mismatch
    bad.extend(request(2, &[]));
    let _ = s.clock(Instant::ZERO).stream(accepts[0], &bad);
    let out = transmits(&mut s);
    assert_eq!(out.len(), 1);
    assert_eq!(
        Message::decode(&out[0].2).unwrap().transaction_id(),
        TransactionId::new([2; 12])
    );
    assert_eq!(s.machine.stats().malformed, 1);
    assert_eq!(s.machine.tcp_connections(), 1);
    // Indications are consumed, responses ignored, neither answered.
    let ind = {
        let header = Header::new(
            Class::Indication,
            Method::BINDING,
            TransactionId::new([4; 12]),
        );
        let mut buf = [0u8; 64];
        let w = MessageWriter::new(&mut buf, header).unwrap();
        let n = w.finish();
        buf[..n].to_vec()
    };
    let _ = s.clock(Instant::ZERO).stream(accepts[0], &ind);
    assert!(transmits(&mut s).is_empty());
}

#[test]
fn idle_connections_close_at_the_deadline_and_traffic_extends_it() {
    let mut cfg = small(2);
    cfg.tcp_limits.idle_timeout = Duration::from_secs(10);
    // Long enough that the partial request below is not closed for lateness first.
    cfg.tcp_limits.message_timeout = Duration::from_secs(60);
    let (mut s, accepts) = tcp_server(cfg);
    let t0 = Instant::from_millis(1000);
    accept(&mut s, accepts[0], t0);
    assert_eq!(s.deadline(), Some(t0 + Duration::from_secs(10)));
    let t1 = t0 + Duration::from_secs(6);
    let _ = s.clock(t1).stream(accepts[0], &request(1, &[])[..5]);
    assert_eq!(s.deadline(), Some(t1 + Duration::from_secs(10)));
    s.clock(t0 + Duration::from_secs(10)).fire();
    assert!(closes(&ops(&mut s)).is_empty());
    s.clock(t1 + Duration::from_secs(10)).fire();
    let after = ops(&mut s);
    assert_eq!(closes(&after), vec![accepts[0]]);
    assert_eq!(s.machine.stats().tcp_idle_closed, 1);
    assert_eq!(s.deadline(), None);
    s.clock(t1 + Duration::from_secs(20)).fire();
    assert!(closes(&ops(&mut s)).is_empty());
}

#[test]
fn a_response_queued_for_a_closed_connection_is_not_sent() {
    let (mut s, accepts) = tcp_server(small(1));
    accept(&mut s, accepts[0], Instant::ZERO);
    // The answer is still queued in the machine (not drained) when the peer closes.
    s.input(|s, now| {
        let _ = s.handle_stream(now, accepts[0], &request(1, &[]));
        s.handle_socket_result(now, accepts[0], SocketOutcome::PeerClosed);
    });
    assert_eq!(closes(&ops(&mut s)), vec![accepts[0]]);
    // A new connection lands in the same slot: it must not get the old answer.
    accept(&mut s, accepts[0], Instant::ZERO);
    assert!(transmits(&mut s).is_empty());
    // A send failure closes the stream too.
    s.clock(Instant::ZERO).outcome(
        accepts[0],
        SocketOutcome::Failed {
            op: OpKind::Send,
            destination: None,
            error: IoError::ConnectionReset,
        },
    );
    assert_eq!(closes(&ops(&mut s)), vec![accepts[0]]);
    assert_eq!(s.machine.stats().send_failures, 1);
    assert_eq!(s.machine.stats().tcp_closed, 2);
}

#[test]
fn failed_accepts_are_retried_later() {
    let (mut s, accepts) = tcp_server(small(1));
    let t0 = Instant::from_millis(500);
    s.clock(t0).outcome(
        accepts[0],
        SocketOutcome::Failed {
            op: OpKind::Accept,
            destination: None,
            error: IoError::Other(Some(24)),
        },
    );
    assert!(ops(&mut s).is_empty());
    let retry = s.deadline().unwrap();
    assert!(retry > t0);
    s.clock(retry).fire();
    assert_eq!(
        ops(&mut s),
        vec![SocketOp::Accept {
            listener: TCP_LISTENER,
            socket: accepts[0]
        }]
    );
}

#[test]
fn listener_failures_turn_tcp_off_and_close_what_exists() {
    // Bind failure: nothing to close.
    let mut s = driven(StunServer::new(small(2).with_tcp(true)).unwrap());
    let _ = ops(&mut s);
    let fail = |op| SocketOutcome::Failed {
        op,
        destination: None,
        error: IoError::AddrInUse,
    };
    s.clock(Instant::ZERO)
        .outcome(TCP_LISTENER, fail(OpKind::Bind));
    assert!(ops(&mut s).is_empty());
    assert_eq!(
        events(&mut s),
        vec![ServerEvent::TcpFailed {
            op: OpKind::Bind,
            error: IoError::AddrInUse
        }]
    );
    s.clock(Instant::ZERO).input(|s, now| s.close(now));
    assert!(!closes(&ops(&mut s)).contains(&TCP_LISTENER));
    // Listen failure: the bound socket is closed once, and never again.
    let (mut s, _) = tcp_server(small(2));
    s.clock(Instant::ZERO)
        .outcome(TCP_LISTENER, fail(OpKind::Listen));
    assert_eq!(closes(&ops(&mut s)), vec![TCP_LISTENER]);
    s.clock(Instant::ZERO).input(|s, now| s.close(now));
    assert!(!closes(&ops(&mut s)).contains(&TCP_LISTENER));
}

#[test]
fn close_closes_every_socket_exactly_once() {
    let (mut s, accepts) = tcp_server(small(3));
    accept(&mut s, accepts[0], Instant::ZERO);
    accept(&mut s, accepts[2], Instant::ZERO);
    // An answer still queued (not drained) when the server closes is never sent.
    s.input(|s, now| {
        let _ = s.handle_stream(now, accepts[0], &request(1, &[]));
        s.close(now);
    });
    s.input(|s, now| s.close(now));
    let mut count: BTreeMap<SocketId, usize> = BTreeMap::new();
    for c in closes(&ops(&mut s)) {
        *count.entry(c).or_default() += 1;
    }
    let expected: BTreeMap<SocketId, usize> =
        [Role::Primary.socket(), accepts[0], accepts[2], TCP_LISTENER]
            .into_iter()
            .map(|s| (s, 1))
            .collect();
    assert_eq!(count, expected);
    assert!(transmits(&mut s).is_empty());
    assert_eq!(events(&mut s).last(), Some(&ServerEvent::Closed));
    assert_eq!(s.deadline(), None);
    // A connection accepted late is closed, once.
    accept(&mut s, accepts[1], Instant::ZERO);
    assert_eq!(closes(&ops(&mut s)), vec![accepts[1]]);
    assert_eq!(
        s.clock(Instant::ZERO).stream(accepts[0], &request(1, &[])),
        Verdict::Dropped(DropReason::Closed)
    );
}

#[test]
fn udp_is_unchanged_with_tcp_on() {
    let (mut s, accepts) = tcp_server(small(1));
    let req = request(7, &[Attribute::ResponsePort(9)]);
    assert_eq!(
        s.clock(Instant::ZERO)
            .datagram(Role::Primary.socket(), addr(CLIENT), &req),
        Verdict::Consumed
    );
    let out = transmits(&mut s);
    assert_eq!(out[0].0, Role::Primary.socket());
    assert_eq!(out[0].1, addr("203.0.113.9:9"));
    // Stream bytes on a socket that is not an open connection are refused.
    assert_eq!(
        s.clock(Instant::ZERO).stream(accepts[0], &req),
        Verdict::Dropped(DropReason::UnknownSocket)
    );
    assert_eq!(
        s.clock(Instant::ZERO).stream(Role::Primary.socket(), &req),
        Verdict::Dropped(DropReason::UnknownSocket)
    );
}

#[test]
fn a_request_dripped_slower_than_the_message_timeout_closes_the_connection() {
    let mut cfg = small(2);
    cfg.tcp_limits.message_timeout = Duration::from_secs(5);
    let (mut s, accepts) = tcp_server(cfg);
    let t0 = Instant::from_millis(1000);
    accept(&mut s, accepts[0], t0);
    accept(&mut s, accepts[1], t0);
    let req = request(1, &[]);
    // One byte a second on the first connection: every byte renews the idle deadline (120 s),
    // but the request must be whole 5 s after its first byte.
    let mut closed_at = None;
    for (i, byte) in req.iter().enumerate() {
        let now = t0 + Duration::from_secs(i as u64 + 1);
        if s.deadline().is_some_and(|d| d <= now) {
            s.clock(now).fire();
            let c = closes(&ops(&mut s));
            if !c.is_empty() {
                assert_eq!(c, vec![accepts[0]]);
                closed_at = Some(i as u64 + 1);
                break;
            }
        }
        let _ = s.clock(now).stream(accepts[0], std::slice::from_ref(byte));
        // The second connection asks a whole request each second and is answered.
        let _ = s.clock(now).stream(accepts[1], &request(2, &[]));
    }
    assert_eq!(closed_at, Some(6), "first byte at 1 s, deadline 6 s");
    assert_eq!(s.machine.stats().tcp_message_timeouts, 1);
    assert_eq!(s.machine.stats().tcp_idle_closed, 0);
    assert_eq!(
        s.machine.tcp_connections(),
        1,
        "the prompt client keeps its connection"
    );
    let answered: Vec<SocketId> = transmits(&mut s).into_iter().map(|t| t.0).collect();
    assert_eq!(answered, vec![accepts[1]; 5]);
    // A whole request ends the message: the prompt connection has no message deadline left,
    // only its idle one.
    let last = t0 + Duration::from_secs(5);
    assert_eq!(s.deadline(), Some(last + cfg_idle()));
}

fn cfg_idle() -> Duration {
    ServerConfig::single(addr(P)).tcp_limits.idle_timeout
}

#[test]
fn a_newcomer_when_full_evicts_the_least_active_and_its_queued_answer_is_dropped() {
    let (mut s, accepts) = tcp_server(small(2));
    assert_eq!(accepts.len(), 3);
    let t0 = Instant::from_millis(1000);
    s.clock(t0).outcome(
        accepts[0],
        SocketOutcome::Accepted {
            local: addr(P),
            remote: addr("198.51.100.1:1000"),
        },
    );
    s.clock(t0).outcome(
        accepts[1],
        SocketOutcome::Accepted {
            local: addr(P),
            remote: addr("198.51.100.2:1000"),
        },
    );
    // The first connection has asked two questions; the second has asked one whose answer is
    // still queued (not drained) when a third client arrives on the spare.
    let _ = s.clock(t0).stream(accepts[0], &request(1, &[]));
    let _ = s.clock(t0).stream(accepts[0], &request(1, &[]));
    assert_eq!(transmits(&mut s).len(), 2);
    s.input(|s, now| {
        let _ = s.handle_stream(now, accepts[1], &request(2, &[]));
        s.handle_socket_result(
            now,
            accepts[2],
            SocketOutcome::Accepted {
                local: addr(P),
                remote: addr("198.51.100.3:1000"),
            },
        );
    });
    // The second did least (one message to two): closed once, its answer never sent, its slot
    // accepts again.
    assert!(transmits(&mut s).is_empty());
    let out = ops(&mut s);
    assert_eq!(closes(&out), vec![accepts[1]]);
    assert!(out.contains(&SocketOp::Accept {
        listener: TCP_LISTENER,
        socket: accepts[1]
    }));
    let stats = s.machine.stats();
    assert_eq!(stats.tcp_evicted_pool_full, 1);
    assert_eq!(stats.tcp_closed, 1);
    assert_eq!(s.machine.tcp_connections(), 2);
    // The newcomer is served.
    let _ = s.clock(t0).stream(accepts[2], &request(3, &[]));
    let out = transmits(&mut s);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, accepts[2]);
}

#[test]
fn one_source_holds_at_most_its_cap() {
    let mut cfg = small(4);
    cfg.tcp_limits.max_per_source = 2;
    let (mut s, accepts) = tcp_server(cfg);
    for (i, socket) in accepts.iter().take(3).enumerate() {
        accept(&mut s, *socket, Instant::from_millis(i as u64));
    }
    // The third from CLIENT replaced the first.
    assert_eq!(closes(&ops(&mut s)), vec![accepts[0]]);
    assert_eq!(s.machine.tcp_connections(), 2);
    assert_eq!(s.machine.stats().tcp_evicted_source_full, 1);
    let mut bad = small(4);
    bad.tcp_limits.max_per_source = 0;
    assert!(matches!(
        StunServer::new(bad.with_tcp(true)),
        Err(ServerConfigError::BadTcpLimits(_))
    ));
}

//! The registry rules, end to end through both machines: ownership, versions, expiry, quotas and
//! typed refusals.

use std::time::Duration;

use super::harness::*;
use crate::pnp::*;

fn refused(ev: &PnpClientEvent) -> (ErrorCode, u64) {
    match ev {
        PnpClientEvent::Failed {
            reason: PnpFailure::Refused { code, detail },
            ..
        } => (*code, *detail),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn udp_world() -> (World, usize, usize) {
    let mut w = World::new(server_config());
    let a = w.add_client(1, "198.51.100.1:4000", PnpTransport::Udp);
    let b = w.add_client(2, "198.51.100.2:4000", PnpTransport::Udp);
    (w, a, b)
}

#[test]
fn register_lookup_delete() {
    let (mut w, a, b) = udp_world();
    assert!(matches!(
        w.register(a, "alice", b"addr-1", 1),
        PnpClientEvent::Registered { version: 1, .. }
    ));
    match w.lookup(b, "alice") {
        PnpClientEvent::Found { record, .. } => {
            assert_eq!(record.value(), b"addr-1");
            assert_eq!(record.owner(), &id(1).public_key());
            assert!(record.verify());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        w.delete(a, "alice", 2),
        PnpClientEvent::Deleted { version: 2, .. }
    ));
    assert!(matches!(
        w.lookup(b, "alice"),
        PnpClientEvent::NotFound { .. }
    ));
}

#[test]
fn only_the_owner_may_update_or_delete() {
    let (mut w, a, b) = udp_world();
    w.register(a, "alice", b"mine", 1);
    assert_eq!(
        refused(&w.register(b, "alice", b"theirs", 5)).0,
        ErrorCode::NotOwner
    );
    assert_eq!(refused(&w.delete(b, "alice", 5)).0, ErrorCode::NotOwner);
    match w.lookup(b, "alice") {
        PnpClientEvent::Found { record, .. } => assert_eq!(record.value(), b"mine"),
        other => panic!("{other:?}"),
    }
    // A record whose owner is not the sender is refused even for a free name.
    let now_ms = w.server.machine.unix_ms(w.now);
    let record = Record::sign(&id(1), name("free"), vec![], 1, now_ms + 60_000).unwrap();
    let request = Request::Register(Box::new(record));
    let bytes = seal_request(&id(2), &w.server_key, now_ms, [1; 16], &request, 0);
    let replies = w.raw_udp("198.51.100.2:4000".parse().unwrap(), &bytes);
    let reply = open_reply(&w, 2, &replies[0]);
    assert!(matches!(
        reply.body,
        ReplyBody::Error {
            code: ErrorCode::NotOwner,
            ..
        }
    ));
}

/// Opens a server reply addressed to identity `key`.
pub fn open_reply(w: &World, key: u8, bytes: &[u8]) -> Reply {
    let mut opener = crate::envelope::Opener::new(16);
    let opened = opener
        .open(&id(key), w.server.machine.unix_ms(w.now), bytes)
        .unwrap();
    assert_eq!(opened.sender, w.server_key);
    Reply::decode(&opened.payload).unwrap()
}

#[test]
fn versions_must_increase_and_repeats_are_idempotent() {
    let (mut w, a, _) = udp_world();
    w.register(a, "alice", b"v2", 2);
    assert_eq!(
        refused(&w.register(a, "alice", b"v1", 1)),
        (ErrorCode::StaleVersion, 2)
    );
    // Same version, different contents: stale.
    assert_eq!(
        refused(&w.register(a, "alice", b"other", 2)),
        (ErrorCode::StaleVersion, 2)
    );
    // Same version, identical record (a repeat in a new envelope): success, nothing changes.
    let stored = w
        .server
        .machine
        .store()
        .get(&name("alice"))
        .unwrap()
        .unwrap()
        .record;
    let now_ms = w.server.machine.unix_ms(w.now);
    let request = Request::Register(Box::new(stored.clone()));
    let bytes = seal_request(&id(1), &w.server_key, now_ms, [2; 16], &request, 0);
    let replies = w.raw_udp("198.51.100.1:4000".parse().unwrap(), &bytes);
    assert_eq!(
        open_reply(&w, 1, &replies[0]).body,
        ReplyBody::Registered { version: 2 }
    );
    assert!(matches!(
        w.register(a, "alice", b"v3", 3),
        PnpClientEvent::Registered { version: 3, .. }
    ));
    assert_eq!(
        refused(&w.delete(a, "alice", 3)),
        (ErrorCode::StaleVersion, 3)
    );
    assert!(matches!(
        w.delete(a, "alice", 4),
        PnpClientEvent::Deleted { .. }
    ));
    assert_eq!(refused(&w.delete(a, "alice", 5)).0, ErrorCode::NotFound);
    // After a delete the name is free again.
    assert!(matches!(
        w.register(a, "alice", b"again", 1),
        PnpClientEvent::Registered { .. }
    ));
}

#[test]
fn expired_names_disappear_and_are_pruned() {
    let (mut w, a, b) = udp_world();
    let ttl = Duration::from_secs(10);
    let ev = w.run(a, |m, now| {
        m.register(now, name("short"), b"x".to_vec(), 1, ttl)
            .unwrap()
    });
    assert!(matches!(ev, PnpClientEvent::Registered { .. }));
    assert!(matches!(w.lookup(b, "short"), PnpClientEvent::Found { .. }));
    w.advance(Duration::from_secs(11));
    assert!(matches!(
        w.lookup(b, "short"),
        PnpClientEvent::NotFound { .. }
    ));
    // Another key may take an expired name.
    assert!(matches!(
        w.register(b, "short", b"y", 1),
        PnpClientEvent::Registered { .. }
    ));
    let ev = w.run(a, |m, now| {
        m.register(now, name("gone"), b"x".to_vec(), 1, ttl)
            .unwrap()
    });
    assert!(matches!(ev, PnpClientEvent::Registered { .. }));
    assert_eq!(w.server.machine.store().len(), Ok(2));
    w.advance(Duration::from_secs(70));
    assert!(w.server.machine.stats().pruned >= 1);
    assert_eq!(w.server.machine.store().get(&name("gone")), Ok(None));
}

#[test]
fn expiry_must_be_within_the_lifetime() {
    let (mut w, a, _) = udp_world();
    let too_long = Duration::from_secs(8 * 24 * 3600);
    let ev = w.run(a, |m, now| {
        m.register(now, name("long"), vec![], 1, too_long).unwrap()
    });
    let (code, latest) = refused(&ev);
    assert_eq!(code, ErrorCode::InvalidExpiry);
    assert_eq!(
        latest,
        w.server.machine.unix_ms(w.now) + 7 * 24 * 3600 * 1000 + 5_000
    );
    let ev = w.run(a, |m, now| {
        m.register(now, name("past"), vec![], 1, Duration::ZERO)
            .unwrap()
    });
    assert_eq!(refused(&ev).0, ErrorCode::InvalidExpiry);
}

#[test]
fn names_per_source_quota() {
    let mut config = server_config();
    config.max_names_per_source = 2;
    let mut w = World::new(config);
    let a = w.add_client(1, "[2001:db8:0:1::1]:4000", PnpTransport::Udp);
    let same_64 = w.add_client(2, "[2001:db8:0:1::2]:4000", PnpTransport::Udp);
    let other_64 = w.add_client(3, "[2001:db8:0:2::1]:4000", PnpTransport::Udp);
    w.register(a, "n1", b"", 1);
    w.register(same_64, "n2", b"", 1);
    assert_eq!(
        refused(&w.register(same_64, "n3", b"", 1)),
        (ErrorCode::QuotaExceeded, 2)
    );
    assert_eq!(
        refused(&w.register(a, "n3", b"", 1)),
        (ErrorCode::QuotaExceeded, 2)
    );
    // Updating a name the source already holds is fine.
    assert!(matches!(
        w.register(a, "n1", b"new", 2),
        PnpClientEvent::Registered { .. }
    ));
    assert!(matches!(
        w.register(other_64, "n3", b"", 1),
        PnpClientEvent::Registered { .. }
    ));
    // Deleting frees quota.
    w.delete(a, "n1", 3);
    assert!(matches!(
        w.register(a, "n4", b"", 1),
        PnpClientEvent::Registered { .. }
    ));
}

#[test]
fn request_rate_is_limited_per_source() {
    let mut config = server_config();
    config.requests_per_window = 3;
    let mut w = World::new(config);
    let a = w.add_client(1, "198.51.100.1:4000", PnpTransport::Udp);
    let b = w.add_client(2, "198.51.100.2:4000", PnpTransport::Udp);
    for _ in 0..3 {
        assert!(matches!(w.lookup(a, "x"), PnpClientEvent::NotFound { .. }));
    }
    // The 4th in the window is told once; the 5th is dropped (the client times out).
    let now = w.now;
    w.client(a)
        .clock(now)
        .input(|m, now| m.lookup(now, name("x")))
        .unwrap();
    w.client(a)
        .clock(now)
        .input(|m, now| m.lookup(now, name("x")))
        .unwrap();
    w.pump();
    let events = std::mem::take(&mut w.clients[a].events);
    assert_eq!(events.len(), 1);
    let (code, retry) = refused(&events[0]);
    assert_eq!(code, ErrorCode::RateLimited);
    assert!(retry > 0 && retry <= 1000);
    // Another source is unaffected.
    assert!(matches!(w.lookup(b, "x"), PnpClientEvent::NotFound { .. }));
    // The dropped one is retransmitted and answered once a new window starts.
    w.advance(Duration::from_secs(6));
    let events = std::mem::take(&mut w.clients[a].events);
    assert!(
        matches!(events[..], [PnpClientEvent::NotFound { .. }]),
        "{events:?}"
    );
    assert!(w.server.machine.stats().rate_limited >= 2);
    // A new window.
    assert!(matches!(w.lookup(a, "x"), PnpClientEvent::NotFound { .. }));
}

#[test]
fn full_store_answers_server_busy() {
    let mut w = World::with_store(server_config(), MemoryStore::new(1));
    let a = w.add_client(1, "198.51.100.1:4000", PnpTransport::Udp);
    w.register(a, "one", b"", 1);
    assert_eq!(
        refused(&w.register(a, "two", b"", 1)).0,
        ErrorCode::ServerBusy
    );
}

#[test]
fn malformed_and_oversize_payloads_get_typed_errors() {
    let (mut w, _, _) = udp_world();
    let from = "198.51.100.9:4000".parse().unwrap();
    let now_ms = w.server.machine.unix_ms(w.now);
    let cases: Vec<(Vec<u8>, ErrorCode)> = vec![
        (vec![1, 0x55, 0, 0], ErrorCode::Malformed),
        (vec![9, 1], ErrorCode::UnsupportedVersion),
        (vec![1, 2, 3, b'A', b'B', b'C'], ErrorCode::InvalidName),
        (
            {
                // A value of 700 bytes fits the envelope but exceeds MAX_VALUE_LEN.
                let mut p = vec![1, 1, 1, b'a'];
                p.extend_from_slice(&700u16.to_be_bytes());
                p.extend(vec![0; 700 + 33 + 8 + 8 + 64]);
                p
            },
            ErrorCode::TooLarge,
        ),
        (
            {
                let mut p = vec![1, 2, 65];
                p.extend(vec![b'a'; 65]);
                p
            },
            ErrorCode::TooLarge,
        ),
    ];
    for (i, (payload, want)) in cases.into_iter().enumerate() {
        let mut padded = payload.clone();
        padded.resize(payload.len().max(UDP_LOOKUP_PAYLOAD_LEN), 0);
        let bytes =
            crate::envelope::seal(&id(9), &w.server_key, now_ms, [i as u8; 16], &payload).unwrap();
        // Unpadded requests may be too small for the error reply; try the padded form too.
        let mut replies = w.raw_udp(from, &bytes);
        if replies.is_empty() {
            assert!(bytes.len() < crate::envelope::OVERHEAD + ERROR_REPLY_PAYLOAD_LEN);
            let bytes =
                crate::envelope::seal(&id(9), &w.server_key, now_ms, [100 + i as u8; 16], &padded)
                    .unwrap();
            replies = w.raw_udp(from, &bytes);
        }
        let reply = open_reply(&w, 9, &replies[0]);
        match reply.body {
            ReplyBody::Error { code, .. } => assert_eq!(code, want, "case {i}"),
            other => panic!("case {i}: {other:?}"),
        }
    }
}

#[test]
fn bad_record_signature_is_refused_by_the_server() {
    let (mut w, _, _) = udp_world();
    let now_ms = w.server.machine.unix_ms(w.now);
    let record = Record::sign(&id(1), name("alice"), b"v".to_vec(), 1, now_ms + 60_000).unwrap();
    let mut bytes = record.to_bytes();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let forged = Record::from_bytes(&bytes).unwrap();
    let request = Request::Register(Box::new(forged));
    let sealed = seal_request(&id(1), &w.server_key, now_ms, [5; 16], &request, 0);
    let replies = w.raw_udp("198.51.100.1:4000".parse().unwrap(), &sealed);
    assert!(matches!(
        open_reply(&w, 1, &replies[0]).body,
        ReplyBody::Error {
            code: ErrorCode::BadSignature,
            ..
        }
    ));
    assert_eq!(w.server.machine.store().len(), Ok(0));
}

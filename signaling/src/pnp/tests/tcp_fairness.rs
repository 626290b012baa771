//! The server's TCP side under slow and idle clients: a request must be whole and answered
//! within the message timeout of its first byte (bytes alone do not hold a connection), one source
//! holds at most its cap, and a newcomer arriving when every connection is open replaces the one
//! that has done least.

use std::net::SocketAddr;
use std::time::Duration;

use super::harness::*;
use crate::pnp::wire::frame;
use crate::pnp::*;

fn src(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A framed lookup from `id(1)` with `nonce`, sealed at the server's current time.
fn lookup_frame(w: &World, nonce: u8) -> Vec<u8> {
    let now_ms = w.server.machine.unix_ms(w.now);
    let request = Request::Lookup(name("fair"));
    frame(&seal_request(
        &id(1),
        &w.server_key,
        now_ms,
        [nonce; 16],
        &request,
        0,
    ))
    .unwrap()
}

#[test]
fn a_dripped_request_is_closed_at_the_message_timeout() {
    let mut w = World::new(server_config());
    let timeout = server_config().tcp_limits.message_timeout;
    let drip = w.raw_connect(src("198.51.100.1:40000"));
    let prompt = w.raw_connect(src("198.51.100.2:40000"));
    let whole = lookup_frame(&w, 1);
    // One byte a second: each renews the 10 s idle deadline, but the request is not whole 10 s
    // after its first byte. The prompt client asks a whole request each second meanwhile (a
    // fresh nonce each time, else it would be a replay).
    let mut seconds = 0u64;
    for (i, byte) in whole.iter().enumerate() {
        if !w.server_open.contains(&drip) {
            break;
        }
        let _ = w.raw_stream(drip, std::slice::from_ref(byte));
        let request = lookup_frame(&w, 10 + i as u8);
        assert!(
            !w.raw_stream(prompt, &request).is_empty(),
            "prompt client answered"
        );
        w.advance(Duration::from_secs(1));
        seconds += 1;
    }
    assert!(
        !w.server_open.contains(&drip),
        "the drip still holds its slot"
    );
    assert_eq!(Duration::from_secs(seconds), timeout);
    let stats = w.server.machine.stats();
    assert_eq!((stats.message_timeouts, stats.idle_closed), (1, 0));
    assert!(w.server_open.contains(&prompt));
}

#[test]
fn unanswered_frames_do_not_count_as_progress() {
    let mut w = World::new(server_config());
    let conn = w.raw_connect(src("198.51.100.1:40000"));
    // A whole frame every second, but not an envelope: framed garbage keeps bytes coming and
    // completes frames, yet nothing is answered, so the deadline of the first byte stands.
    for _ in 0..30 {
        if !w.server_open.contains(&conn) {
            break;
        }
        assert!(w.raw_stream(conn, &[0, 1, 0xff]).is_empty());
        w.advance(Duration::from_secs(1));
    }
    assert!(!w.server_open.contains(&conn));
    assert_eq!(w.server.machine.stats().message_timeouts, 1);
    assert_eq!(w.server.machine.stats().not_envelopes, 10);
}

#[test]
fn one_source_is_capped_and_a_full_server_evicts_the_least_active() {
    let mut config = server_config();
    config.tcp_limits.max_connections = 4;
    config.tcp_limits.max_per_source = 2;
    let mut w = World::new(config);
    // Source A: two connections, one of which has been answered; B and C one each, idle.
    let a1 = w.raw_connect(src("198.51.100.1:1"));
    let a2 = w.raw_connect(src("198.51.100.1:2"));
    let request = lookup_frame(&w, 1);
    assert!(!w.raw_stream(a1, &request).is_empty());
    // A third from A replaces A's least active (a2), nobody else's.
    let a3 = w.raw_connect(src("198.51.100.1:3"));
    assert!(!w.server_open.contains(&a2));
    assert!(w.server_open.contains(&a1) && w.server_open.contains(&a3));
    assert_eq!(w.server.machine.stats().evicted_source_full, 1);
    let b = w.raw_connect(src("203.0.113.1:1"));
    let c = w.raw_connect(src("203.0.113.2:1"));
    assert_eq!(w.server.machine.open_connections(), 4);
    // Full: D is still accepted; A holds most connections, and of A's, a3 did nothing.
    let d = w.raw_connect(src("203.0.113.3:1"));
    let stats = w.server.machine.stats();
    assert_eq!(stats.evicted_pool_full, 1);
    assert!(!w.server_open.contains(&a3), "a3 evicted");
    for conn in [a1, b, c, d] {
        assert!(w.server_open.contains(&conn), "{conn} kept");
    }
    assert_eq!(w.server.machine.open_connections(), 4);
    assert_eq!(stats.connections_closed, 2);
    assert_closed_once(&w.server_closes);
}

#[test]
fn tcp_limits_are_validated() {
    let mut config = server_config();
    config.tcp_limits.max_per_source = 0;
    assert!(matches!(
        PnpServer::new(config.clone(), id(200), MemoryStore::new(1), 1).err(),
        Some(PnpConfigError::BadTcpLimits(_))
    ));
    config.tcp_limits.max_per_source = 1;
    config.tcp_limits.message_timeout = Duration::ZERO;
    assert!(matches!(
        PnpServer::new(config.clone(), id(200), MemoryStore::new(1), 1).err(),
        Some(PnpConfigError::BadTcpLimits(_))
    ));
    // Irrelevant without TCP.
    config.tcp = None;
    assert!(PnpServer::new(config, id(200), MemoryStore::new(1), 1).is_ok());
}

//! Admission under a spoofed-source flood: a sender that can forge source addresses (no reply
//! ever reaches it) must not be able to keep new, genuine clients from being answered.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use super::harness::*;
use crate::pnp::*;

/// New spoofed sources per simulated second (the attack of issue 10, item 2).
const SPOOFED_PER_SECOND: u32 = 8_000;
/// How long the flood lasts, simulated.
const FLOOD: Duration = Duration::from_secs(5);
/// A fresh genuine client every this often during the flood.
const CLIENT_EVERY: Duration = Duration::from_millis(50);

/// The `i`-th spoofed source: a new address every time (10.0.0.0/8 has room for 16 M).
fn spoofed(i: u32) -> SocketAddr {
    let [_, a, b, c] = i.to_be_bytes();
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, a, b, c), 40_000))
}

/// What a spoofer sends: bytes that look like an envelope of our version (so they reach the
/// per-source rate limiter) but open to nothing. A spoofer never sees a reply, so it cannot do
/// better than one-shot garbage or replayed captures from its forged addresses.
fn spoofed_datagram(i: u32) -> Vec<u8> {
    let mut bytes = vec![0u8; 300];
    bytes[0] = crate::envelope::VERSION;
    bytes[1..5].copy_from_slice(&i.to_be_bytes());
    bytes
}

/// Runs the flood against a server with `config` and returns (first-try answers, fresh clients).
/// Every fresh client has a new identity and a new address, sends one UDP lookup, and counts as
/// answered only if the server replied to that very first datagram (no retransmission).
fn first_try_answers_during_flood(config: PnpServerConfig) -> (usize, usize, PnpServerStats) {
    let mut w = World::new(config);
    let owner = w.add_client(1, "198.51.100.1:4000", PnpTransport::Udp);
    assert!(matches!(
        w.register(owner, "target", b"where-i-am", 1),
        PnpClientEvent::Registered { .. }
    ));
    let start = w.now;
    let tick = Duration::from_millis(1);
    let per_tick = SPOOFED_PER_SECOND / 1000;
    let ticks = u32::try_from(FLOOD.as_millis()).unwrap();
    let client_every = u32::try_from(CLIENT_EVERY.as_millis()).unwrap();
    let (mut sent, mut fresh, mut answered) = (0u32, 0usize, 0usize);
    for t in 0..ticks {
        w.now = start + tick * t;
        for _ in 0..per_tick {
            let _ =
                w.server
                    .clock(w.now)
                    .datagram(UDP_SOCKET, spoofed(sent), &spoofed_datagram(sent));
            assert!(
                w.server.take_transmits().is_empty(),
                "a spoofer got a reply"
            );
            sent += 1;
        }
        if t % client_every == client_every / 2 {
            fresh += 1;
            let key = u8::try_from(fresh + 1).unwrap();
            let addr = format!("203.0.113.{key}:5000");
            let c = w.add_client(key, &addr, PnpTransport::Udp);
            let now = w.now;
            w.clients[c]
                .machine
                .clock(now)
                .input(|m, now| m.lookup(now, name("target")).unwrap());
            // Deliver the first datagram and whatever the server answers, without advancing time
            // (so no retransmission can happen).
            w.pump();
            let events = std::mem::take(&mut w.clients[c].events);
            if matches!(events[..], [PnpClientEvent::Found { .. }]) {
                answered += 1;
            }
            w.clients[c].machine.clock(now).input(|m, now| m.close(now));
            w.pump();
            w.clients[c].events.clear();
        }
    }
    // The rate table never holds more sources than its capacity.
    let (rate_sources, ..) = w.server.machine.table_sizes();
    assert!(rate_sources <= 4096, "{rate_sources}");
    (answered, fresh, w.server.machine.stats())
}

#[test]
fn new_clients_are_answered_first_try_during_a_spoofed_source_flood() {
    let config = server_config();
    assert_eq!(config.rate_table_capacity, 4096);
    let (answered, fresh, stats) = first_try_answers_during_flood(config);
    println!(
        "spoofed flood: {answered} of {fresh} fresh clients answered first try; stats {stats:?}"
    );
    assert_eq!(fresh, 100);
    assert!(
        answered * 100 >= fresh * 95,
        "only {answered} of {fresh} fresh clients were answered on their first try ({stats:?})"
    );
}

mod rate_table {
    use std::net::IpAddr;
    use std::time::Duration;

    use p2pd_proto::Instant;

    use super::spoofed;
    use crate::pnp::limits::{RateLimiter, RateVerdict};
    use crate::pnp::SourceKey;

    const WINDOW: Duration = Duration::from_secs(1);

    fn source(i: u32) -> SourceKey {
        SourceKey::from_ip(spoofed(i).ip())
    }

    fn genuine(s: &str) -> SourceKey {
        SourceKey::from_ip(s.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn a_full_table_of_live_windows_still_admits_a_new_source() {
        let mut rates = RateLimiter::new(64, 5, WINDOW);
        let now = Instant::from_millis(1_000);
        for i in 0..64 {
            assert_eq!(rates.check(now, source(i)), RateVerdict::Allowed);
        }
        assert_eq!(rates.len(), 64);
        assert_eq!(
            rates.check(now, genuine("203.0.113.7")),
            RateVerdict::Allowed
        );
        assert_eq!(rates.len(), 64, "bounded");
        assert_eq!(rates.evictions(), 1);
    }

    #[test]
    fn a_one_shot_flood_never_frees_a_sender_over_its_budget() {
        let mut rates = RateLimiter::new(256, 3, WINDOW);
        let abuser = genuine("198.51.100.66");
        let regular = genuine("198.51.100.7");
        let t0 = Instant::from_millis(1_000);
        for _ in 0..3 {
            assert_eq!(rates.check(t0, abuser), RateVerdict::Allowed);
        }
        assert!(matches!(
            rates.check(t0, abuser),
            RateVerdict::LimitedTell { .. }
        ));
        // A client in conversation: two requests.
        assert_eq!(rates.check(t0, regular), RateVerdict::Allowed);
        assert_eq!(rates.check(t0, regular), RateVerdict::Allowed);
        assert!(rates.is_repeat(&abuser) && rates.is_repeat(&regular));
        // Forty table-fulls of one-shot spoofed sources within the same window.
        for i in 0..10_240 {
            let now = t0 + Duration::from_micros(u64::from(i) * 90);
            assert_eq!(rates.check(now, source(i)), RateVerdict::Allowed, "{i}");
            assert!(rates.len() <= 256);
        }
        assert_eq!(rates.evictions(), 10_240 - (256 - 2));
        let late = t0 + Duration::from_millis(950);
        assert_eq!(rates.check(late, abuser), RateVerdict::Limited);
        assert_eq!(rates.check(late, regular), RateVerdict::Allowed);
        // A new window starts on time.
        assert_eq!(rates.check(t0 + WINDOW, abuser), RateVerdict::Allowed);
    }

    #[test]
    fn stale_windows_go_before_one_shot_entries_and_live_repeats_go_last() {
        let mut rates = RateLimiter::new(3, 10, WINDOW);
        let t0 = Instant::from_millis(1_000);
        let (a, b, c) = (
            genuine("192.0.2.1"),
            genuine("192.0.2.2"),
            genuine("192.0.2.3"),
        );
        // a: a repeat entry whose window will be over; b: a one-shot entry; c: a live repeat.
        rates.check(t0, a);
        rates.check(t0, a);
        let t1 = t0 + Duration::from_millis(900);
        rates.check(t1, b);
        rates.check(t1, c);
        rates.check(t1, c);
        let t2 = t0 + WINDOW + Duration::from_millis(1);
        assert_eq!(rates.check(t2, source(1)), RateVerdict::Allowed);
        assert!(!rates.is_repeat(&a), "the stale repeat went first");
        // Now: b (once), c (live repeat), source(1) (once). The next new source takes b's place.
        assert_eq!(rates.check(t2, source(2)), RateVerdict::Allowed);
        assert_eq!(rates.len(), 3);
        assert!(rates.is_repeat(&c));
        // Make every entry a live repeat: a new source still gets in, in place of the least
        // recently seen repeat.
        rates.check(t2, source(1));
        rates.check(t2, source(2));
        rates.check(t2, c);
        assert_eq!(rates.check(t2, source(3)), RateVerdict::Allowed);
        assert_eq!(rates.len(), 3);
        assert!(!rates.is_repeat(&source(1)));
        assert!(rates.is_repeat(&source(2)) && rates.is_repeat(&c));
        assert_eq!(rates.evictions(), 3);
    }

    #[test]
    fn a_zero_budget_admits_nothing_and_stores_nothing() {
        let mut rates = RateLimiter::new(8, 0, WINDOW);
        for i in 0..100 {
            assert_eq!(
                rates.check(Instant::from_millis(1), source(i)),
                RateVerdict::Limited
            );
        }
        assert_eq!(rates.len(), 0);
    }
}

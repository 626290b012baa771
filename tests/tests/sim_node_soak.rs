//! Soak in simulation: the same two nodes connect by name over and over in one world (connect,
//! a message each way, FINISH both ways, `close_stream` both ends, next). Every connect must take
//! the same path; after each round both nodes return to their baseline (`open_sockets`, `live`,
//! the simulator's sockets per host) and keep a future deadline; the rendezvous' tables stay
//! bounded (acknowledgements and receipts flat, the replay cache within its capacity: it keeps
//! the last 4,096 envelopes, two or three per round); closing at the end leaves nothing.
//!
//! Default counts: 1,000 connects for the reverse pair (A open, B port-restricted), 100 for the
//! punched pair (both port-restricted); `P2PD_SOAK=N` runs N of each.

use core::time::Duration;
use std::time::Instant as WallClock;

use p2pd_node::{Machine, Node, Path};
use p2pd_sim::node_matrix::{connect_once, expected, Family, Layout, NodeWorld};
use p2pd_sim::punch_matrix::NatKind;

/// What a node looks like when idle: its sockets, live parts and the simulator's sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Idle {
    open_sockets: usize,
    live: (usize, usize, usize, usize),
    sim_sockets: usize,
}

fn idle(w: &NodeWorld, i: usize) -> Idle {
    let h = w.hosts[i];
    let n = w.sim.machine::<Node>(h);
    Idle {
        open_sockets: n.open_sockets(),
        live: n.live(),
        sim_sockets: w.sim.socket_count(h),
    }
}

fn both_idle(w: &NodeWorld) -> [Idle; 2] {
    [idle(w, 0), idle(w, 1)]
}

fn soak_count(default: usize) -> usize {
    std::env::var("P2PD_SOAK")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn soak(layout: Layout, rounds: usize) {
    let want = expected(layout);
    let wall = WallClock::now();
    let mut w = NodeWorld::new(7, layout, 0.0, Family::Given);
    w.wait_ready().expect("setup");
    // Let the setup's leftovers (the registration's socket, the STUN binding) settle.
    w.run_for(Duration::from_secs(5));
    let before = both_idle(&w);
    assert_eq!(
        before[0].live,
        (0, 0, 0, 0),
        "A not idle before the soak: {before:?}"
    );
    // The baseline is taken after the first round (its first lookup opens the PNP client's UDP
    // socket, kept for later requests).
    let mut baseline = before;
    let mut times = Vec::with_capacity(rounds);
    let mut settle_max = Duration::ZERO;
    let mut tables_first = None;
    for round in 0..rounds {
        let (path, elapsed, sa, sb) =
            connect_once(&mut w).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(path, want, "round {round}: path");
        times.push(elapsed);
        w.close_streams(sa, sb)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        // Back to the baseline (a PNP refresh or a punch's clean-up may take a moment).
        if round == 0 {
            w.run_for(Duration::from_secs(15));
            baseline = both_idle(&w);
            println!("idle before the first round {before:?}, after it {baseline:?}");
        }
        let start = w.sim.now();
        let settled = w.run_until(Duration::from_secs(30), |w| both_idle(w) == baseline);
        let now = w.sim.now();
        settle_max = settle_max.max(now.saturating_duration_since(start));
        assert!(
            settled,
            "round {round}: not back to the baseline {baseline:?}: {:?}; A sockets {:?}, B sockets {:?}",
            both_idle(&w),
            w.sim.socket_list(w.hosts[0]),
            w.sim.socket_list(w.hosts[1])
        );
        for (i, h) in w.hosts.into_iter().enumerate() {
            let n = w.sim.machine::<Node>(h);
            let t = n.poll_timeout();
            assert!(
                t.is_some_and(|t| t > now),
                "round {round}: node {i} deadline {t:?} at {now:?} (keep-alives and refreshes \
                 keep one in the future, never in the past)"
            );
        }
        let tables: Vec<(usize, usize, usize)> = w
            .hosts
            .iter()
            .map(|&h| {
                let r = w.sim.machine::<Node>(h).rendezvous();
                (r.replay_cache_len(), r.pending_acks(), r.pending_receipts())
            })
            .collect();
        let first = tables_first.get_or_insert_with(|| tables.clone());
        for ((replay, acks, receipts), (_, acks0, receipts0)) in tables.iter().zip(first.iter()) {
            // The replay cache fills up to its capacity (default 4,096), then stays there.
            assert!(
                *replay <= 4096,
                "round {round}: replay cache over its capacity"
            );
            assert!(
                acks <= &(acks0 + 4) && receipts <= &(receipts0 + 4),
                "round {round}: rendezvous tables grow: {tables:?} (first {first:?})"
            );
        }
        // Keep the harness' own memory flat.
        w.events = [Vec::new(), Vec::new()];
    }
    let end = both_idle(&w);
    let tables_end: Vec<(usize, usize, usize)> = w
        .hosts
        .iter()
        .map(|&h| {
            let r = w.sim.machine::<Node>(h).rendezvous();
            (r.replay_cache_len(), r.pending_acks(), r.pending_receipts())
        })
        .collect();
    let leaks = w.close_and_check();
    times.sort();
    let median = times.get(times.len() / 2).copied().unwrap_or_default();
    let max = times.last().copied().unwrap_or_default();
    println!(
        "soak {}: {rounds} connects, all {:?}; median {} ms, max {} ms; settle max {} ms; \
         idle before {before:?}, after the first {baseline:?}, at the end {end:?}; rendezvous (replay cache, acks, receipts) \
         after the first {:?}, at the end {tables_end:?}; virtual {:?}; wall {:.1} s",
        layout.label(),
        want,
        median.as_millis(),
        max.as_millis(),
        settle_max.as_millis(),
        tables_first,
        w.sim.now(),
        wall.elapsed().as_secs_f64()
    );
    assert_eq!(end, baseline, "idle state drifted");
    assert!(leaks.is_empty(), "leaks after close: {leaks:?}");
}

#[test]
fn reverse_pair_connects_a_thousand_times() {
    let layout = Layout::Apart(NatKind::Open, NatKind::PortRestricted);
    assert_eq!(expected(layout), Path::Reverse);
    soak(layout, soak_count(1000));
}

#[test]
fn punched_pair_connects_again_and_again() {
    let layout = Layout::Apart(NatKind::PortRestricted, NatKind::PortRestricted);
    assert_eq!(expected(layout), Path::Punched);
    soak(layout, soak_count(100));
}

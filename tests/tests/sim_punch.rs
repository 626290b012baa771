//! The punch machine in the simulator: two hosts behind NATs exchange offer / answer / ack
//! (relayed by the test with a signaling delay, duplicated like brokers do), punch at the meet
//! time, elect one connection and close every other socket.

use core::net::{Ipv4Addr, SocketAddr};
use core::time::Duration;
use std::collections::VecDeque;

use p2pd_nat::{Behaviour, Filtering, Mapping};
use p2pd_proto::{Instant, SocketId};
use p2pd_punch::machine::NodeId;
use p2pd_punch::{Candidate, PunchConfig, PunchEvent, PunchFailure, Puncher};
use p2pd_sim::{run_seeds, HostId, LinkConfig, Sim};

const NAT_A: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const NAT_B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const PRIV_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PRIV_B: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const ID_A: NodeId = [0x11; 20];
const ID_B: NodeId = [0x22; 20];
const EPOCH_NS: u64 = 1_800_000_000_000_000_000;

struct Outcome {
    connected: Option<(SocketId, SocketAddr, SocketAddr)>,
    failed: Option<PunchFailure>,
    closed: bool,
}

/// Runs one punch between A (initiator) and B; candidates from the NATs' ground truth
/// (port preservation: external = NAT IP : local port). `skew_b` shifts B's wall clock.
fn punch(
    seed: u64,
    a: Behaviour,
    b: Behaviour,
    link: LinkConfig,
    skew_b_ms: i64,
) -> (Outcome, Outcome, Sim, HostId, HostId) {
    let mut sim = Sim::new(seed);
    let nat_a = sim.add_nat(NAT_A, a);
    let nat_b = sim.add_nat(NAT_B, b);
    sim.set_nat_link(nat_a, link);
    sim.set_nat_link(nat_b, link);
    let config_a = PunchConfig::new(ID_A, EPOCH_NS);
    let epoch_b = EPOCH_NS.checked_add_signed(skew_b_ms * 1_000_000).unwrap();
    let config_b = PunchConfig::new(ID_B, epoch_b);
    let ha = sim.add_host_behind(nat_a, PRIV_A, Puncher::new(config_a, 1));
    let hb = sim.add_host_behind(nat_b, PRIV_B, Puncher::new(config_b, 2));
    let cand = |ip: Ipv4Addr, port: u16| Candidate {
        local_port: port,
        external: SocketAddr::new(ip.into(), port),
    };
    let mut round_port = [40000u16, 50000u16];
    sim.with_machine::<Puncher, _>(ha, |m, now| {
        m.initiate(now, ID_B, vec![cand(NAT_A, round_port[0])])
            .unwrap();
    });
    // Signaling: 40-80 ms each way, every message delivered twice (two brokers).
    let mut wire: VecDeque<(Instant, HostId, NodeId, Vec<u8>)> = VecDeque::new();
    let mut out = [
        Outcome {
            connected: None,
            failed: None,
            closed: false,
        },
        Outcome {
            connected: None,
            failed: None,
            closed: false,
        },
    ];
    let end = sim.now().saturating_add(Duration::from_secs(60));
    while sim.now() < end && !(out[0].closed && out[1].closed) {
        sim.run_for(Duration::from_millis(5));
        let now = sim.now();
        for (i, (host, peer_host, from)) in [(ha, hb, ID_A), (hb, ha, ID_B)].into_iter().enumerate()
        {
            for ev in sim.take_events::<Puncher>(host) {
                match ev {
                    PunchEvent::Signal { payload, .. } => {
                        for copy in 0..2u64 {
                            let delay = 40 + (seed.wrapping_mul(7).wrapping_add(copy * 13) % 40);
                            let at = now.saturating_add(Duration::from_millis(delay));
                            wire.push_back((at, peer_host, from, payload.clone()));
                        }
                    }
                    PunchEvent::NeedCandidates { round } => {
                        round_port[i] += 7;
                        let ip = if i == 0 { NAT_A } else { NAT_B };
                        let c = cand(ip, round_port[i]);
                        sim.with_machine::<Puncher, _>(host, |m, now| {
                            m.provide_candidates(now, round, vec![c]).unwrap();
                        });
                    }
                    PunchEvent::Connected {
                        socket,
                        local,
                        remote,
                        ..
                    } => {
                        out[i].connected = Some((socket, local, remote));
                        sim.with_machine::<Puncher, _>(host, |m, now| m.close(now));
                    }
                    PunchEvent::Failed { reason } => {
                        out[i].failed = Some(reason);
                        sim.with_machine::<Puncher, _>(host, |m, now| m.close(now));
                    }
                    PunchEvent::Closed => out[i].closed = true,
                    PunchEvent::Armed { .. } | PunchEvent::RoundFailed { .. } => {}
                    other => panic!("{other:?}"),
                }
            }
        }
        let mut later = VecDeque::new();
        while let Some((at, host, from, payload)) = wire.pop_front() {
            if at <= now {
                sim.with_machine::<Puncher, _>(host, |m, now| {
                    let _ = m.handle_signal(now, from, &payload);
                });
            } else {
                later.push_back((at, host, from, payload));
            }
        }
        wire = later;
    }
    let [oa, ob] = out;
    (oa, ob, sim, ha, hb)
}

fn eim(filtering: Filtering) -> Behaviour {
    Behaviour::new(Mapping::EndpointIndependent, filtering)
}

#[test]
fn port_restricted_pair_connects_and_cleans_up() {
    run_seeds(0..5, |seed| {
        let (a, b, sim, ha, hb) = punch(
            seed,
            eim(Filtering::AddressAndPortDependent),
            eim(Filtering::AddressAndPortDependent),
            LinkConfig::IDEAL,
            0,
        );
        let (_, la, ra) = a.connected.unwrap_or_else(|| panic!("A: {:?}", a.failed));
        let (_, lb, rb) = b.connected.unwrap_or_else(|| panic!("B: {:?}", b.failed));
        assert_eq!(ra, SocketAddr::new(NAT_B.into(), lb.port()));
        assert_eq!(rb, SocketAddr::new(NAT_A.into(), la.port()));
        assert!(a.closed && b.closed);
        // Only the winners remain (owned by the caller now).
        assert_eq!(sim.socket_count(ha), 1, "A");
        assert_eq!(sim.socket_count(hb), 1, "B");
        assert_eq!(sim.machine::<Puncher>(ha).poll_timeout(), None);
    });
}

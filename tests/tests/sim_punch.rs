//! The punch machine in the simulator: two hosts behind NATs exchange offer / answer / ack
//! (relayed by the test with a signaling delay, duplicated like brokers do), punch at the meet
//! time, elect one connection and close every other socket.

use core::net::{Ipv4Addr, SocketAddr};
use core::time::Duration;
use p2pd_proto::Machine;
use std::collections::VecDeque;

use p2pd_channel::{ChannelKeys, SeedSource};
use p2pd_nat::{Behaviour, Filtering, Mapping, PortAllocation};
use p2pd_proto::{Instant, SocketId};
use p2pd_punch::machine::Owned;
use p2pd_punch::message::AbortReason;
use p2pd_punch::{PunchCandidate, PunchConfig, PunchEvent, PunchFailure, Puncher};
use p2pd_signaling::{Identity, NodeId};
use p2pd_sim::{run_seeds, HostId, LinkConfig, NatTcpConfig, Sim};

const NAT_A: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const NAT_B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const PRIV_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PRIV_B: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
/// The two identities' secret bytes.
const KEY_A: u8 = 0x11;
const KEY_B: u8 = 0x22;
const EPOCH_NS: u64 = 1_800_000_000_000_000_000;

fn identity(key: u8) -> Identity {
    Identity::from_secret_bytes(&[key; 32]).unwrap()
}

fn id(key: u8) -> NodeId {
    identity(key).node_id()
}

/// A puncher for the identity with secret byte `key`, its channel keyed from the simulation.
fn puncher(sim: &mut Sim, key: u8, config: PunchConfig, seed: u64) -> Owned {
    let keys = ChannelKeys::new(&identity(key), sim.machine_secret()).unwrap();
    let puncher = Puncher::new(config, keys, SeedSource::new(sim.machine_secret()), seed).unwrap();
    Owned::new(puncher)
}

#[derive(Debug)]
struct Outcome {
    connected: Option<(SocketId, SocketAddr, SocketAddr)>,
    failed: Option<PunchFailure>,
    rounds_failed: Vec<PunchFailure>,
    closed: bool,
}

#[derive(Clone)]
struct Scenario {
    a: Behaviour,
    b: Behaviour,
    link: LinkConfig,
    /// B's wall clock minus A's, ms.
    skew_b_ms: i64,
    /// One-way signaling delay range, ms.
    signal_ms: (u64, u64),
    /// Copies of every signaling message (brokers duplicate).
    copies: u64,
    /// Both sides call `initiate` at once.
    glare: bool,
    /// NATs answer unsolicited SYNs with RST.
    nat_rst: bool,
}

impl Scenario {
    fn new(a: Behaviour, b: Behaviour) -> Self {
        Scenario {
            a,
            b,
            link: LinkConfig::IDEAL,
            skew_b_ms: 0,
            signal_ms: (40, 80),
            copies: 2,
            glare: false,
            nat_rst: false,
        }
    }
}

/// Runs one punch between A (initiator) and B; candidates from the NATs' ground truth for
/// port-preserving NATs (external = NAT IP : local port).
fn punch(seed: u64, sc: &Scenario) -> (Outcome, Outcome, Sim, HostId, HostId) {
    let mut sim = Sim::new(seed);
    let nat_a = sim.add_nat(NAT_A, sc.a);
    let nat_b = sim.add_nat(NAT_B, sc.b);
    sim.set_nat_link(nat_a, sc.link);
    sim.set_nat_link(nat_b, sc.link);
    if sc.nat_rst {
        for nat in [nat_a, nat_b] {
            sim.set_nat_tcp(
                nat,
                NatTcpConfig {
                    rst_unsolicited_syn: true,
                    ..NatTcpConfig::default()
                },
            );
        }
    }
    let config_a = PunchConfig::new(id(KEY_A), EPOCH_NS);
    let epoch_b = EPOCH_NS
        .checked_add_signed(sc.skew_b_ms * 1_000_000)
        .unwrap();
    let config_b = PunchConfig::new(id(KEY_B), epoch_b);
    let puncher_a = puncher(&mut sim, KEY_A, config_a, seed);
    let puncher_b = puncher(&mut sim, KEY_B, config_b, seed ^ 1);
    let ha = sim.add_host_behind(nat_a, PRIV_A, puncher_a);
    let hb = sim.add_host_behind(nat_b, PRIV_B, puncher_b);
    let cand = |ip: Ipv4Addr, port: u16| PunchCandidate {
        local_port: port,
        external: SocketAddr::new(ip.into(), port),
    };
    let mut round_port = [40000u16, 50000u16];
    sim.with_machine::<Owned, _>(ha, |m, now| {
        m.initiate(now, id(KEY_B), vec![cand(NAT_A, round_port[0])])
            .unwrap();
    });
    if sc.glare {
        sim.with_machine::<Owned, _>(hb, |m, now| {
            m.initiate(now, id(KEY_A), vec![cand(NAT_B, round_port[1])])
                .unwrap();
        });
    }
    let mut rng = p2pd_proto::Rng::from_seed(seed);
    let mut wire: VecDeque<(Instant, HostId, NodeId, Vec<u8>)> = VecDeque::new();
    let mut out = [(); 2].map(|_| Outcome {
        connected: None,
        failed: None,
        rounds_failed: Vec::new(),
        closed: false,
    });
    let end = sim.now().saturating_add(Duration::from_secs(120));
    while sim.now() < end && !(out[0].closed && out[1].closed) {
        sim.run_for(Duration::from_millis(5));
        let now = sim.now();
        for (i, (host, peer_host, from)) in [(ha, hb, id(KEY_A)), (hb, ha, id(KEY_B))]
            .into_iter()
            .enumerate()
        {
            for ev in sim.take_events::<Owned>(host) {
                match ev {
                    PunchEvent::Signal { payload, .. } => {
                        for _ in 0..sc.copies {
                            let (lo, hi) = sc.signal_ms;
                            let delay = lo + rng.below(hi - lo + 1);
                            let at = now.saturating_add(Duration::from_millis(delay));
                            wire.push_back((at, peer_host, from, payload.clone()));
                        }
                    }
                    PunchEvent::NeedCandidates { round } => {
                        round_port[i] += 7;
                        let ip = if i == 0 { NAT_A } else { NAT_B };
                        let c = cand(ip, round_port[i]);
                        sim.with_machine::<Owned, _>(host, |m, now| {
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
                        // The puncher is done; the winner stays open (it is the caller's).
                        sim.with_machine::<Owned, _>(host, |m, now| Puncher::close(m, now));
                    }
                    PunchEvent::Failed { reason } => {
                        out[i].failed = Some(reason);
                        sim.with_machine::<Owned, _>(host, |m, now| Puncher::close(m, now));
                    }
                    PunchEvent::RoundFailed { reason, .. } => out[i].rounds_failed.push(reason),
                    PunchEvent::Closed => out[i].closed = true,
                    PunchEvent::Armed { .. } => {}
                    other => panic!("{other:?}"),
                }
            }
        }
        let mut later = VecDeque::new();
        while let Some((at, host, from, payload)) = wire.pop_front() {
            if at <= now {
                sim.with_machine::<Owned, _>(host, |m, now| {
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

/// Both sides connected to each other's external endpoint; only the winners stay open.
fn assert_connected(seed: u64, a: &Outcome, b: &Outcome, sim: &Sim, ha: HostId, hb: HostId) {
    let (_, la, ra) = a
        .connected
        .unwrap_or_else(|| panic!("seed {seed} A: {a:?}"));
    let (_, lb, rb) = b
        .connected
        .unwrap_or_else(|| panic!("seed {seed} B: {b:?}"));
    assert_eq!(ra, SocketAddr::new(NAT_B.into(), lb.port()));
    assert_eq!(rb, SocketAddr::new(NAT_A.into(), la.port()));
    assert!(a.closed && b.closed);
    assert_eq!(sim.socket_count(ha), 1, "A: only the winner stays open");
    assert_eq!(sim.socket_count(hb), 1, "B: only the winner stays open");
    assert_eq!(sim.machine::<Owned>(ha).poll_timeout(), None);
    assert_eq!(sim.machine::<Owned>(hb).poll_timeout(), None);
    assert_eq!(sim.machine::<Owned>(ha).open_sockets(), 0);
}

fn eim(filtering: Filtering) -> Behaviour {
    Behaviour::new(Mapping::EndpointIndependent, filtering)
}

#[test]
fn port_restricted_pair_connects_and_cleans_up() {
    let sc = Scenario::new(
        eim(Filtering::AddressAndPortDependent),
        eim(Filtering::AddressAndPortDependent),
    );
    run_seeds(0..10, |seed| {
        let (a, b, sim, ha, hb) = punch(seed, &sc);
        assert_connected(seed, &a, &b, &sim, ha, hb);
    });
}

#[test]
fn lossy_links_skewed_clocks_and_rst_nats_still_connect() {
    let base = Scenario::new(
        eim(Filtering::AddressAndPortDependent),
        Behaviour::new(
            Mapping::AddressAndPortDependent,
            Filtering::AddressAndPortDependent,
        ),
    );
    let lossy = LinkConfig {
        latency: Duration::from_millis(20),
        jitter: Duration::from_millis(10),
        loss: 0.2,
        ..LinkConfig::IDEAL
    };
    let cases = [
        Scenario {
            link: lossy,
            ..base.clone()
        },
        Scenario {
            skew_b_ms: 3_500,
            ..base.clone()
        },
        Scenario {
            skew_b_ms: -7_000,
            ..base.clone()
        },
        Scenario {
            nat_rst: true,
            ..base.clone()
        },
        Scenario {
            copies: 4,
            signal_ms: (5, 300),
            ..base.clone()
        },
        Scenario {
            glare: true,
            ..base.clone()
        },
    ];
    for (i, sc) in cases.iter().enumerate() {
        run_seeds(0..6, |seed| {
            let (a, b, sim, ha, hb) = punch(seed, sc);
            assert!(
                a.connected.is_some() && b.connected.is_some(),
                "case {i} seed {seed}: {a:?} {b:?}"
            );
            assert_connected(seed, &a, &b, &sim, ha, hb);
        });
    }
}

#[test]
fn slow_signaling_is_too_uncertain_and_fails_typed() {
    let sc = Scenario {
        signal_ms: (400, 900),
        ..Scenario::new(
            eim(Filtering::AddressAndPortDependent),
            eim(Filtering::AddressAndPortDependent),
        )
    };
    run_seeds(0..3, |seed| {
        let (a, b, sim, ha, hb) = punch(seed, &sc);
        assert!(
            matches!(a.failed, Some(PunchFailure::TooUncertain { .. })),
            "{a:?}"
        );
        assert!(
            matches!(
                b.failed,
                Some(PunchFailure::PeerAborted(AbortReason::TooUncertain))
                    | Some(PunchFailure::NoOffer)
            ),
            "{b:?}"
        );
        assert_eq!(a.rounds_failed.len(), 2);
        assert_eq!(sim.socket_count(ha), 0);
        assert_eq!(sim.socket_count(hb), 0);
    });
}

#[test]
fn unpredictable_pair_fails_after_every_round_and_closes_everything() {
    let random = Behaviour::new(
        Mapping::AddressAndPortDependent,
        Filtering::AddressAndPortDependent,
    )
    .with_allocation(PortAllocation::Random);
    let sc = Scenario::new(random, random);
    run_seeds(0..3, |seed| {
        let (a, b, sim, ha, hb) = punch(seed, &sc);
        assert!(
            matches!(a.failed, Some(PunchFailure::NoConnection { .. })),
            "{a:?}"
        );
        assert!(b.failed.is_some(), "{b:?}");
        assert_eq!(a.rounds_failed.len(), 2);
        assert!(a.closed && b.closed);
        assert_eq!(sim.socket_count(ha), 0);
        assert_eq!(sim.socket_count(hb), 0);
        let stats = sim.machine::<Owned>(ha).stats();
        assert!(stats.connects >= 3, "{stats:?} {a:?} {b:?}");
    });
}

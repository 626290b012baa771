//! TCP hole punching against ground truth in the simulator: every pair of NAT kinds ([`NatKind`])
//! at several loss levels and seeds, each run a whole [`PunchNode`] per side (signaling over two
//! simulated MQTT brokers, STUN-over-TCP probes, the planner, the punch machine, the punched
//! stream), graded against the oracle [`punchable`].
//!
//! [`run_one`] punches once from host A to host B and checks the result; [`run_matrix`] runs the
//! whole matrix and counts per (pair, loss). Nothing here reads the wall clock, and every run is
//! deterministic for its (pair, loss, seed), so the summary does not depend on threads.
//!
//! # One run
//!
//! A simulation with two MQTT brokers and a STUN server (answering over TCP) on public hosts;
//! host A and host B each behind a NAT box of its kind (or public for [`NatKind::Open`]), each
//! running a [`PunchNode`] whose `nat` is the ground-truth behaviour as a classifier would report
//! it (`None`, i.e. "treat as endpoint-independent", for an open host). Once both nodes listen on
//! both brokers, A punches to B. A run **succeeds** when both report `Connected` to each other,
//! each side's remote being the other side's real external endpoint of the winning connection (the
//! NAT box's mapping table is the ground truth), and a few bytes cross the stream both ways.
//! Otherwise it **fails** with A's typed [`PunchFailure`] (or, if there is none within
//! [`RUN_LIMIT`] of virtual time, a harness reason: [`Failure::Hang`], ...). Either way both nodes
//! are then closed and the run checks that everything is released: one `Closed` each, no socket
//! left in the simulator (the winner stream is closed by the node's close), no deadline left on the
//! machines.
//!
//! # The oracle
//!
//! A side is **predictable** when its peer can know, before any connect, the external endpoint the
//! side's punch socket will use toward the peer:
//!
//! - an open host (no translation), or
//! - endpoint-independent mapping (the endpoint observed by the STUN probe from the punch port is
//!   reused for every destination, whatever the port allocation), or
//! - a dependent mapping whose port allocation is a function of something known: preserving, fixed
//!   offset (from the local port) or sequential (the next port after the probe's observed one).
//!   Random allocation (and local-port-dependent allocation, which the planner does not model for
//!   a second mapping of the same local port) is not predictable.
//!
//! A side is **reachable** (an unsolicited SYN from the peer's unpredictable port gets through to
//! its listener on the punch port) when it is open, or its filtering is endpoint-independent, or
//! it is address-dependent: the side's own SYN toward the peer's candidate (right IP, wrong port)
//! opens the filter for the peer's whole IP (the sim's NAT boxes have one public IP, and the
//! peer's SYN is retransmitted, or retried after an RST, if it arrives before ours left).
//! Address-and-port-dependent filtering only admits the exact endpoint our SYN went to.
//!
//! A pair is **punchable** iff both sides are predictable (the SYNs cross: simultaneous open, or
//! the later SYN meets the mapping the earlier one opened), or one side is predictable *and*
//! reachable (the other side connects to it from wherever its NAT puts it, and its listener
//! accepts):
//!
//! `punchable(a, b) = (P(a) && P(b)) || (P(a) && R(a)) || (P(b) && R(b))`.
//!
//! Everything else (e.g. port-restricted cone vs symmetric random) is not punchable in principle:
//! the expected outcome is a typed failure after every round (`NoConnection`).
//!
//! # The classifier -> planner family
//!
//! [`run_one_classified`] and [`run_classified_matrix`] run the same punches, graded by the same
//! oracle, except that the nodes are not handed the ground truth: each host first runs a
//! [`Classifier`] (UDP, against two RFC 5780 STUN servers: the matrix's and one more), and its
//! report becomes the node's `nat` ([`view_of_report`]). A wrong or unusable classification then
//! shows as a punchable pair that fails.

mod summary;

pub use summary::{PairSummary, PunchMatrix};

use core::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use core::time::Duration;
use p2pd_proto::Machine;
use std::collections::BTreeMap;

use p2pd_nat::{
    Behaviour, Classification, Classifier, ClassifierConfig, ClassifierEvent, Filtering, Mapping,
    PortAllocation, Report,
};
use p2pd_punch::node::{NodeEvent, PunchNode, PunchNodeConfig};
use p2pd_punch::plan::NatView;
use p2pd_punch::{PunchConfig, PunchFailure};
use p2pd_signaling::rendezvous::{BrokerSpec, RendezvousConfig};
use p2pd_signaling::{Identity, NodeId, PublicKey};

use crate::{
    BrokerConfig, Host, HostId, LinkConfig, MqttBroker, NatId, NatTcpConfig, Sim, TcpConfig,
};

/// The NAT kinds of the matrix.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NatKind {
    /// A public host, no NAT.
    Open,
    /// Full cone: endpoint-independent mapping and filtering.
    FullCone,
    /// Restricted cone: endpoint-independent mapping, address-dependent filtering.
    Restricted,
    /// Port-restricted cone: endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// Port-restricted cone with random port allocation.
    PortRestrictedRandom,
    /// Symmetric (address-and-port-dependent mapping and filtering), port preserving.
    SymmetricPreserving,
    /// Symmetric, sequential allocation with stride 1.
    SymmetricSequential,
    /// Symmetric, random allocation.
    SymmetricRandom,
}

/// Every kind, in table order.
pub const KINDS: [NatKind; 8] = [
    NatKind::Open,
    NatKind::FullCone,
    NatKind::Restricted,
    NatKind::PortRestricted,
    NatKind::PortRestrictedRandom,
    NatKind::SymmetricPreserving,
    NatKind::SymmetricSequential,
    NatKind::SymmetricRandom,
];

impl NatKind {
    /// A short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            NatKind::Open => "open",
            NatKind::FullCone => "full-cone",
            NatKind::Restricted => "restricted",
            NatKind::PortRestricted => "port-restr",
            NatKind::PortRestrictedRandom => "port-restr/rand",
            NatKind::SymmetricPreserving => "sym/preserve",
            NatKind::SymmetricSequential => "sym/seq1",
            NatKind::SymmetricRandom => "sym/random",
        }
    }

    /// The NAT box's behaviour (`None` for an open host).
    pub fn behaviour(self) -> Option<Behaviour> {
        use Filtering as F;
        use Mapping as M;
        let (m, f, a) = match self {
            NatKind::Open => return None,
            NatKind::FullCone => (M::EndpointIndependent, F::EndpointIndependent, None),
            NatKind::Restricted => (M::EndpointIndependent, F::AddressDependent, None),
            NatKind::PortRestricted => (M::EndpointIndependent, F::AddressAndPortDependent, None),
            NatKind::PortRestrictedRandom => (
                M::EndpointIndependent,
                F::AddressAndPortDependent,
                Some(PortAllocation::Random),
            ),
            NatKind::SymmetricPreserving => (
                M::AddressAndPortDependent,
                F::AddressAndPortDependent,
                Some(PortAllocation::Preserving),
            ),
            NatKind::SymmetricSequential => (
                M::AddressAndPortDependent,
                F::AddressAndPortDependent,
                Some(PortAllocation::Sequential { stride: 1 }),
            ),
            NatKind::SymmetricRandom => (
                M::AddressAndPortDependent,
                F::AddressAndPortDependent,
                Some(PortAllocation::Random),
            ),
        };
        let b = Behaviour::new(m, f);
        Some(match a {
            Some(a) => b.with_allocation(a),
            None => b,
        })
    }

    /// What a classifier reports for this NAT, as the node takes it (`None` for an open host: no
    /// NAT, the mapping is the local endpoint).
    pub fn view(self) -> Option<NatView> {
        self.behaviour().map(|b| NatView {
            mapping: b.mapping,
            allocation: b.allocation,
        })
    }
}

/// Whether the peer can know this side's external endpoint toward it (see the module docs).
pub fn predictable(kind: NatKind) -> bool {
    let Some(b) = kind.behaviour() else {
        return true;
    };
    b.mapping == Mapping::EndpointIndependent
        || matches!(
            b.allocation,
            PortAllocation::Preserving
                | PortAllocation::FixedOffset { .. }
                | PortAllocation::Sequential { .. }
        )
}

/// Whether a SYN from the peer's unpredictable port reaches this side's listener once this side
/// sent toward the peer's IP (see the module docs).
pub fn reachable(kind: NatKind) -> bool {
    kind.behaviour().is_none_or(|b| {
        matches!(
            b.filtering,
            Filtering::EndpointIndependent | Filtering::AddressDependent
        )
    })
}

/// The oracle: whether a punch between `a` and `b` can succeed in principle (see the module docs).
pub fn punchable(a: NatKind, b: NatKind) -> bool {
    let (pa, pb) = (predictable(a), predictable(b));
    // (P(a) && P(b)) || (P(a) && R(a)) || (P(b) && R(b)), factored.
    (pa && (pb || reachable(a))) || (pb && reachable(b))
}

/// The default loss levels (fractions): 0 % and 10 %.
pub const DEFAULT_LOSSES: [f64; 2] = [0.0, 0.10];

/// Virtual time a run may take from the punch command to its outcome (three rounds of probes,
/// offer, 2 s lead and 6 s window fit well within it).
pub const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Virtual time the nodes get to listen on both brokers before the punch.
pub const SETUP_LIMIT: Duration = Duration::from_secs(30);

/// Virtual time the classifiers of the classified family get to report and close (their own
/// deadline is 8 s).
pub const CLASSIFY_LIMIT: Duration = Duration::from_secs(30);

pub(crate) const BROKER_IPS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(192, 0, 2, 10),
    Ipv4Addr::new(198, 51, 100, 20),
];
pub(crate) const BROKER_PORT: u16 = 1883;
pub(crate) const STUN_IPS: [Ipv4Addr; 2] =
    [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)];
/// The second RFC 5780 server of the classified family (the classifier wants two).
pub(crate) const STUN2_IPS: [Ipv4Addr; 2] =
    [Ipv4Addr::new(192, 0, 2, 11), Ipv4Addr::new(192, 0, 2, 12)];
pub(crate) const STUN_PORT: u16 = 3478;
/// The public IPs of A's and B's NAT boxes (or of the hosts themselves when open).
pub(crate) const PUBLIC_IPS: [Ipv4Addr; 2] =
    [Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(203, 0, 113, 2)];
const PRIVATE_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 1, 0, 2)];
pub(crate) const EPOCH_MS: u64 = 1_800_000_000_000;
const STEP: Duration = Duration::from_millis(20);

/// Why a run did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Failure {
    /// A's typed punch failure (its variant name; `NoConnection`, `NoAnswer`, ...).
    Punch(&'static str),
    /// The nodes did not both listen on both brokers within [`SETUP_LIMIT`] (or, in the classified
    /// family, a classifier did not report and close within [`CLASSIFY_LIMIT`]).
    Setup,
    /// Neither a connection nor a typed failure within [`RUN_LIMIT`].
    Hang,
    /// Only one side connected (or B failed while A connected).
    OneSided,
    /// A side's remote is not the other side's real external endpoint.
    WrongEndpoint,
    /// The bytes did not cross the stream both ways.
    NoData,
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Failure::Punch(name) => f.write_str(name),
            other => write!(f, "{other:?}"),
        }
    }
}

impl std::error::Error for Failure {}

/// The variant name of a punch failure.
pub fn failure_name(f: &PunchFailure) -> &'static str {
    match f {
        PunchFailure::NoAnswer => "NoAnswer",
        PunchFailure::NoAcknowledgement => "NoAcknowledgement",
        PunchFailure::TooUncertain { .. } => "TooUncertain",
        PunchFailure::TooLate => "TooLate",
        PunchFailure::PeerAborted(_) => "PeerAborted",
        PunchFailure::NoConnection { .. } => "NoConnection",
        PunchFailure::NoSockets(_) => "NoSockets",
        PunchFailure::NoOffer => "NoOffer",
        PunchFailure::BadClock(_) => "BadClock",
        PunchFailure::Closed => "Closed",
        _ => "Other",
    }
}

/// One punch against the oracle.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// A's NAT kind (the initiator).
    pub a: NatKind,
    /// B's NAT kind.
    pub b: NatKind,
    /// The loss fraction of both access links.
    pub loss: f64,
    /// Whether the NAT boxes answered unsolicited SYNs with an RST.
    pub nat_rst: bool,
    /// The simulation seed.
    pub seed: u64,
    /// `Ok` with the virtual time from the punch command to both sides connected, or why not.
    pub result: Result<Duration, Failure>,
    /// What was left after both nodes closed (empty: everything released).
    pub leaks: Vec<String>,
}

impl Outcome {
    /// Whether the run connected.
    pub fn succeeded(&self) -> bool {
        self.result.is_ok()
    }
}

/// Quick TCP (Linux-like, with the RTO capped so that lossy links recover within the signaling
/// and punch timeouts).
pub fn tcp_config() -> TcpConfig {
    TcpConfig {
        initial_rto: Duration::from_millis(500),
        max_rto: Duration::from_secs(2),
        ..TcpConfig::default()
    }
}

/// The network of one run: brokers, STUN server, two nodes.
pub struct World {
    /// The simulation.
    pub sim: Sim,
    /// The brokers' hosts.
    pub brokers: [HostId; 2],
    /// The STUN server's host.
    pub stun: HostId,
    /// The brokers' ids.
    pub broker_ids: [p2pd_signaling::BrokerId; 2],
    /// A's and B's hosts.
    pub hosts: [HostId; 2],
    /// A's and B's NAT boxes (`None`: open).
    pub nats: [Option<NatId>; 2],
    /// A's and B's public keys.
    pub keys: [PublicKey; 2],
    /// A's and B's kinds.
    pub kinds: [NatKind; 2],
    /// Whether the NAT boxes answer unsolicited SYNs with an RST.
    pub nat_rst: bool,
    /// The NAT view / punch settings used for the next nodes.
    pub punch: PunchConfig,
    /// What each node is told about its NAT: the ground truth ([`NatKind::view`]) or, in the
    /// classified family, its classifier's report ([`view_of_report`]).
    pub views: [Option<NatView>; 2],
}

impl World {
    /// A network with two brokers and a STUN server, and host A and B behind `kinds` (NAT boxes
    /// that answer unsolicited SYNs with an RST if `nat_rst`, else drop them silently), both access
    /// links with `loss`, nodes started with `punch` settings (node id, epoch and socket range are
    /// set by the node).
    pub fn new(
        seed: u64,
        kinds: [NatKind; 2],
        loss: f64,
        nat_rst: bool,
        punch: PunchConfig,
    ) -> World {
        Self::build(seed, kinds, loss, nat_rst, punch, None)
    }

    /// [`World::new`], or with a classifier on each host instead of the node (`classify`: its
    /// servers, a second STUN server joining the network).
    fn build(
        seed: u64,
        kinds: [NatKind; 2],
        loss: f64,
        nat_rst: bool,
        punch: PunchConfig,
        classify: Option<&[p2pd_nat::ServerSpec]>,
    ) -> World {
        let mut sim = Sim::new(seed);
        let service_link =
            LinkConfig::with_latency(Duration::from_millis(10)).jitter(Duration::from_millis(3));
        let brokers = BROKER_IPS.map(|ip| {
            let b = sim.add_mqtt_broker_with(
                Host::public([ip])
                    .with_link(service_link)
                    .with_tcp(tcp_config()),
                BrokerConfig::new(BROKER_PORT),
            );
            let _ = sim.take_events::<MqttBroker>(b);
            b
        });
        let stun = sim.add_stun_server(STUN_IPS[0], STUN_IPS[1], STUN_PORT, STUN_PORT + 1);
        sim.set_link(stun, service_link);
        if classify.is_some() {
            let stun2 = sim.add_stun_server(STUN2_IPS[0], STUN2_IPS[1], STUN_PORT, STUN_PORT + 1);
            sim.set_link(stun2, service_link);
        }
        let broker_ids =
            BROKER_IPS.map(|ip| BrokerSpec::new(None, SocketAddr::from((ip, BROKER_PORT))).id);
        let access = LinkConfig::with_latency(Duration::from_millis(20))
            .jitter(Duration::from_millis(5))
            .loss(loss);
        let mut hosts = Vec::new();
        let mut nats = Vec::new();
        let mut keys = Vec::new();
        for (i, kind) in kinds.into_iter().enumerate() {
            let secret = [u8::try_from(i).unwrap_or(0).wrapping_add(0x31); 32];
            let identity = Identity::from_secret_bytes(&secret).expect("valid secret");
            keys.push(identity.public_key());
            let (host, nat) = match classify {
                None => {
                    let node = new_node(&mut sim, kind.view(), identity, &punch);
                    add_side(&mut sim, i, kind, access, nat_rst, node)
                }
                Some(servers) => {
                    let config = ClassifierConfig {
                        local_ip: local_ip(i, kind).into(),
                        ..ClassifierConfig::default()
                    };
                    let classifier = Classifier::new(config, servers, sim.machine_seed());
                    add_side(&mut sim, i, kind, access, nat_rst, classifier)
                }
            };
            hosts.push(host);
            nats.push(nat);
        }
        World {
            sim,
            brokers,
            stun,
            broker_ids,
            hosts: [hosts[0], hosts[1]],
            nats: [nats[0], nats[1]],
            keys: [keys[0], keys[1]],
            kinds,
            nat_rst,
            punch,
            views: kinds.map(NatKind::view),
        }
    }

    /// Like [`World::new`], but each node learns its NAT from a [`Classifier`] run on its host
    /// first (see the module docs): both hosts classify at once (a second STUN server joins the
    /// network for it), each report becomes its node's `nat`, then the nodes start. `None` if a
    /// classifier did not report and close within [`CLASSIFY_LIMIT`], or left a socket behind.
    pub fn classified(
        seed: u64,
        kinds: [NatKind; 2],
        loss: f64,
        nat_rst: bool,
        punch: PunchConfig,
    ) -> Option<World> {
        let servers: Vec<p2pd_nat::ServerSpec> = [STUN_IPS[0], STUN2_IPS[0]]
            .into_iter()
            .zip(1u64..)
            .map(|(ip, id)| p2pd_nat::ServerSpec {
                id,
                primary: SocketAddr::from((ip, STUN_PORT)),
                alternate: None,
            })
            .collect();
        let mut w = Self::build(seed, kinds, loss, nat_rst, punch, Some(&servers));
        for h in w.hosts {
            w.sim
                .with_machine::<Classifier, _>(h, |c, now| c.start(now));
        }
        let mut reports: [Option<Report>; 2] = [None, None];
        let mut closed = [false; 2];
        let end = w.sim.now() + CLASSIFY_LIMIT;
        while closed != [true, true] {
            if w.sim.now() >= end {
                return None;
            }
            w.sim.run_for(STEP);
            for (i, h) in w.hosts.into_iter().enumerate() {
                for ev in w.sim.take_events::<Classifier>(h) {
                    match ev {
                        ClassifierEvent::Done(r) => reports[i] = Some(r),
                        ClassifierEvent::Closed => closed[i] = true,
                    }
                }
            }
        }
        if w.hosts.iter().any(|h| w.sim.socket_count(*h) != 0) {
            return None;
        }
        let [Some(ra), Some(rb)] = reports else {
            return None;
        };
        w.views = [view_of_report(&ra), view_of_report(&rb)];
        for i in 0..2 {
            w.restart_node(i);
        }
        Some(w)
    }

    /// Replaces side `i`'s node with a fresh one (same identity), killing the old process first
    /// (call after the old node closed; its sockets are already gone).
    pub fn restart_node(&mut self, i: usize) {
        let secret = [u8::try_from(i).unwrap_or(0).wrapping_add(0x31); 32];
        let identity = Identity::from_secret_bytes(&secret).expect("valid secret");
        let node = new_node(&mut self.sim, self.views[i], identity, &self.punch);
        self.sim.restart_host(self.hosts[i], node);
    }

    /// Whether both nodes listen on both brokers.
    pub fn ready(&self) -> bool {
        self.hosts.iter().all(|h| {
            let n = self.sim.machine::<PunchNode>(*h);
            self.broker_ids.iter().all(|id| {
                n.rendezvous()
                    .and_then(|r| r.health(*id))
                    .is_some_and(|h| h.listening)
            })
        })
    }

    /// Runs until both nodes listen on both brokers (at most `limit`); events are dropped.
    pub fn wait_ready(&mut self, limit: Duration) -> bool {
        let end = self.sim.now() + limit;
        while !self.ready() {
            if self.sim.now() >= end {
                return false;
            }
            self.sim.run_for(STEP);
            for h in self.hosts {
                let _ = self.sim.take_events::<PunchNode>(h);
            }
        }
        true
    }

    /// The real external endpoint of side `i`'s socket at `local` toward `remote`: the NAT box's
    /// mapping for it, or `local` itself for an open host.
    pub fn external_of(
        &self,
        i: usize,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Option<SocketAddr> {
        let Some(nat) = self.nats[i] else {
            return Some(SocketAddr::new(PUBLIC_IPS[i].into(), local.port()));
        };
        let SocketAddr::V4(remote) = remote else {
            return None;
        };
        let internal = SocketAddrV4::new(PRIVATE_IPS[i], local.port());
        self.sim
            .nat_mapping_table(nat)
            .into_iter()
            .find(|m| {
                m.protocol == crate::Protocol::Tcp
                    && m.internal == internal
                    && m.remote_ip.is_none_or(|ip| ip == *remote.ip())
                    && m.remote_port.is_none_or(|p| p == remote.port())
            })
            .map(|m| SocketAddr::V4(m.external))
    }

    /// Punches from A to B, checks the outcome, closes both nodes and checks the clean-up.
    pub fn punch_once(&mut self) -> (Result<Duration, Failure>, Vec<String>) {
        let result = self.punch_and_check();
        let leaks = self.close_and_check();
        (result, leaks)
    }

    fn punch_and_check(&mut self) -> Result<Duration, Failure> {
        let ha = self.hosts[0];
        let key_b = self.keys[1];
        let started = self.sim.now();
        self.sim
            .with_machine::<PunchNode, _>(ha, |n, now| n.punch(now, key_b))
            .map_err(|_| Failure::Punch("Refused"))?;
        let end = started + RUN_LIMIT;
        // (local, remote) per side, once connected; A's typed failure; B's failure.
        let mut connected: [Option<(SocketAddr, SocketAddr)>; 2] = [None, None];
        let mut failed: [Option<PunchFailure>; 2] = [None, None];
        let mut data: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
        let messages: [&[u8]; 2] = [b"hello from A", b"hello from B"];
        let mut sent = [false; 2];
        let mut up_at = None;
        loop {
            for (i, h) in self.hosts.into_iter().enumerate() {
                for ev in self.sim.take_events::<PunchNode>(h) {
                    match ev {
                        NodeEvent::Connected {
                            peer,
                            local,
                            remote,
                        } => {
                            if peer != self.keys[1 - i] {
                                return Err(Failure::WrongEndpoint);
                            }
                            connected[i] = Some((local, remote));
                        }
                        NodeEvent::Data(d) => data[i].extend_from_slice(&d),
                        NodeEvent::Failed(f) => failed[i] = Some(f),
                        _ => {}
                    }
                }
            }
            if let Some(f) = &failed[0] {
                return Err(Failure::Punch(failure_name(f)));
            }
            if connected.iter().all(Option::is_some) {
                let now = self.sim.now();
                let t = *up_at.get_or_insert(now.saturating_duration_since(started));
                for i in 0..2 {
                    if !sent[i] {
                        sent[i] = true;
                        let msg = messages[i];
                        let r = self
                            .sim
                            .with_machine::<PunchNode, _>(self.hosts[i], |n, now| n.send(now, msg));
                        if r.is_err() {
                            return Err(Failure::NoData);
                        }
                    }
                }
                if data[0] == messages[1] && data[1] == messages[0] {
                    return self.check_endpoints(connected).map(|()| t);
                }
            } else if failed[1].is_some() && connected[0].is_some() {
                return Err(Failure::OneSided);
            }
            if self.sim.now() >= end {
                return Err(if connected.iter().any(Option::is_some) {
                    if connected.iter().all(Option::is_some) {
                        Failure::NoData
                    } else {
                        Failure::OneSided
                    }
                } else {
                    Failure::Hang
                });
            }
            self.sim.run_for(STEP);
        }
    }

    fn check_endpoints(&self, c: [Option<(SocketAddr, SocketAddr)>; 2]) -> Result<(), Failure> {
        let [Some((la, ra)), Some((lb, rb))] = c else {
            return Err(Failure::OneSided);
        };
        let ext_a = self.external_of(0, la, ra);
        let ext_b = self.external_of(1, lb, rb);
        if ext_a == Some(rb) && ext_b == Some(ra) {
            Ok(())
        } else {
            Err(Failure::WrongEndpoint)
        }
    }

    /// Closes both nodes and lists what is left: missing or repeated `Closed`, sockets in the
    /// simulator, deadlines on the machines.
    pub fn close_and_check(&mut self) -> Vec<String> {
        for h in self.hosts {
            self.sim
                .with_machine::<PunchNode, _>(h, |n, now| n.close(now));
        }
        let mut closed = [0u32; 2];
        let end = self.sim.now() + Duration::from_secs(30);
        while closed != [1, 1] && self.sim.now() < end {
            self.sim.run_for(STEP);
            for (i, h) in self.hosts.into_iter().enumerate() {
                closed[i] += u32::try_from(
                    self.sim
                        .take_events::<PunchNode>(h)
                        .iter()
                        .filter(|e| matches!(e, NodeEvent::Closed))
                        .count(),
                )
                .unwrap_or(u32::MAX);
            }
        }
        // Let the closing handshakes finish.
        self.sim.run_for(Duration::from_secs(1));
        let mut leaks = Vec::new();
        for (i, h) in self.hosts.into_iter().enumerate() {
            let side = ["A", "B"][i];
            for e in self.sim.take_events::<PunchNode>(h) {
                if matches!(e, NodeEvent::Closed) {
                    closed[i] += 1;
                }
            }
            if closed[i] != 1 {
                leaks.push(format!("{side}: {} Closed events", closed[i]));
            }
            let sockets = self.sim.socket_count(h);
            if sockets != 0 {
                leaks.push(format!(
                    "{side}: {sockets} sockets {:?}",
                    self.sim.socket_list(h)
                ));
            }
            if let Some(t) = self.sim.machine::<PunchNode>(h).poll_timeout() {
                leaks.push(format!("{side}: deadline {t:?}"));
            }
        }
        leaks
    }
}

/// Host `i`'s own IP: the public one when open, else its private one behind its NAT box.
fn local_ip(i: usize, kind: NatKind) -> Ipv4Addr {
    match kind.behaviour() {
        None => PUBLIC_IPS[i],
        Some(_) => PRIVATE_IPS[i],
    }
}

/// Host `i` running `machine`: public when `kind` is open, else behind a NAT box of that kind
/// (answering unsolicited SYNs with an RST if `nat_rst`), its access link with `access`.
fn add_side<M>(
    sim: &mut Sim,
    i: usize,
    kind: NatKind,
    access: LinkConfig,
    nat_rst: bool,
    machine: M,
) -> (HostId, Option<NatId>)
where
    M: p2pd_proto::Machine + 'static,
    M::Event: core::fmt::Debug + 'static,
{
    match kind.behaviour() {
        None => {
            let h = sim.add_host(
                Host::public([PUBLIC_IPS[i]])
                    .with_link(access)
                    .with_tcp(tcp_config()),
                machine,
            );
            (h, None)
        }
        Some(b) => {
            let nat = sim.add_nat(PUBLIC_IPS[i], b);
            sim.set_nat_link(nat, access);
            sim.set_nat_tcp(
                nat,
                NatTcpConfig {
                    rst_unsolicited_syn: nat_rst,
                    ..NatTcpConfig::default()
                },
            );
            let h = sim.add_host_behind(nat, local_ip(i, kind), machine);
            sim.set_tcp_config(h, tcp_config());
            (h, Some(nat))
        }
    }
}

/// What a node takes from its classifier's report: for a NAT its mapping and the allocation
/// verdict (an inconclusive verdict as random: nothing is known about the next port); `None` (no
/// translation: the mapping is the local endpoint) for an open host or a firewall, and for an
/// inconclusive classification (the node's default, as when no classifier ran).
pub fn view_of_report(report: &Report) -> Option<NatView> {
    match report.classification {
        Classification::Nat { mapping, .. } => Some(NatView {
            mapping,
            allocation: report
                .allocation
                .as_ref()
                .and_then(|a| a.verdict.allocation())
                .unwrap_or(PortAllocation::Random),
        }),
        _ => None,
    }
}

fn new_node(
    sim: &mut Sim,
    view: Option<NatView>,
    identity: Identity,
    punch: &PunchConfig,
) -> PunchNode {
    let brokers = BROKER_IPS
        .iter()
        .map(|ip| BrokerSpec::new(None, SocketAddr::from((*ip, BROKER_PORT))))
        .collect();
    let mut rendezvous = RendezvousConfig::new(brokers, EPOCH_MS);
    rendezvous.mqtt.backoff_initial = Duration::from_millis(200);
    rendezvous.mqtt.backoff_max = Duration::from_secs(3);
    rendezvous.mqtt.connect_timeout = Duration::from_secs(6);
    let mut config = PunchNodeConfig::new(rendezvous, SocketAddr::from((STUN_IPS[0], STUN_PORT)));
    config.nat = view;
    // The node sets the node id, epoch and socket range itself.
    config.punch = punch.clone();
    let secret = sim.machine_secret();
    let seed = sim.machine_seed();
    PunchNode::new(config, identity, secret, seed, sim.now()).expect("valid configuration")
}

/// The punch settings of the matrix: the defaults.
pub fn matrix_punch_config() -> PunchConfig {
    PunchConfig::new(NodeId([0; 20]), EPOCH_MS.saturating_mul(1_000_000))
}

/// Runs one punch from A behind `a` to B behind `b` at `loss` with simulation seed `seed`; the NAT
/// boxes answer unsolicited SYNs with an RST if `nat_rst`.
pub fn run_one(a: NatKind, b: NatKind, loss: f64, nat_rst: bool, seed: u64) -> Outcome {
    let world = World::new(seed, [a, b], loss, nat_rst, matrix_punch_config());
    punch_in(Some(world), a, b, loss, nat_rst, seed)
}

/// [`run_one`] with the nodes' NAT views from a classifier run first (the classifier -> planner
/// path, see the module docs); graded by the same oracle. A classifier that does not report in
/// time is [`Failure::Setup`].
pub fn run_one_classified(a: NatKind, b: NatKind, loss: f64, nat_rst: bool, seed: u64) -> Outcome {
    let world = World::classified(seed, [a, b], loss, nat_rst, matrix_punch_config());
    punch_in(world, a, b, loss, nat_rst, seed)
}

/// Punches once in `world` once both nodes are ready, graded as the run of `a` to `b` at `loss`
/// (`None`: the world could not be set up, [`Failure::Setup`]).
fn punch_in(
    world: Option<World>,
    a: NatKind,
    b: NatKind,
    loss: f64,
    nat_rst: bool,
    seed: u64,
) -> Outcome {
    let (result, leaks) = match world {
        Some(mut w) => {
            if w.wait_ready(SETUP_LIMIT) {
                w.punch_once()
            } else {
                (Err(Failure::Setup), w.close_and_check())
            }
        }
        None => (Err(Failure::Setup), Vec::new()),
    };
    Outcome {
        a,
        b,
        loss,
        nat_rst,
        seed,
        result,
        leaks,
    }
}

/// Every ordered pair of `kinds`.
pub fn pairs(kinds: &[NatKind]) -> Vec<(NatKind, NatKind)> {
    kinds
        .iter()
        .flat_map(|a| kinds.iter().map(move |b| (*a, *b)))
        .collect()
}

/// Runs every pair at every loss level (fractions) with every seed, spread over the available
/// cores; the NAT boxes answer unsolicited SYNs with an RST if `nat_rst`. Deterministic: the
/// result depends only on the arguments.
pub fn run_matrix(
    pairs: &[(NatKind, NatKind)],
    losses: &[f64],
    nat_rst: bool,
    seeds: &[u64],
) -> PunchMatrix {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    run_matrix_on(pairs, losses, nat_rst, seeds, threads)
}

/// [`run_matrix`] on at most `threads` threads (at least one).
pub fn run_matrix_on(
    pairs: &[(NatKind, NatKind)],
    losses: &[f64],
    nat_rst: bool,
    seeds: &[u64],
    threads: usize,
) -> PunchMatrix {
    matrix_with(run_one, pairs, losses, nat_rst, seeds, threads)
}

/// [`run_matrix`] for the classified family: every run is [`run_one_classified`].
pub fn run_classified_matrix(
    pairs: &[(NatKind, NatKind)],
    losses: &[f64],
    nat_rst: bool,
    seeds: &[u64],
) -> PunchMatrix {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    matrix_with(run_one_classified, pairs, losses, nat_rst, seeds, threads)
}

fn matrix_with(
    run: fn(NatKind, NatKind, f64, bool, u64) -> Outcome,
    pairs: &[(NatKind, NatKind)],
    losses: &[f64],
    nat_rst: bool,
    seeds: &[u64],
    threads: usize,
) -> PunchMatrix {
    // (cell index, seed) jobs; cell = loss index * pairs + pair index.
    let cells = losses.len() * pairs.len();
    let jobs: Vec<(usize, u64)> = (0..cells)
        .flat_map(|c| seeds.iter().map(move |s| (c, *s)))
        .collect();
    let threads = threads.clamp(1, jobs.len().max(1));
    let empty: Vec<PairSummary> = (0..cells)
        .map(|c| {
            let (a, b) = pairs[c % pairs.len()];
            PairSummary {
                a: Some(a),
                b: Some(b),
                loss: losses[c / pairs.len()],
                punchable: punchable(a, b),
                ..PairSummary::default()
            }
        })
        .collect();
    let worker = |k: usize| {
        let mut out: Vec<(usize, Outcome)> = Vec::new();
        for (j, &(c, seed)) in jobs.iter().enumerate() {
            if j % threads != k {
                continue;
            }
            let (a, b) = pairs[c % pairs.len()];
            out.push((j, run(a, b, losses[c / pairs.len()], nat_rst, seed)));
        }
        out
    };
    let mut outcomes: Vec<(usize, Outcome)> = crate::parallel::fan_out(threads, worker)
        .into_iter()
        .flatten()
        .collect();
    outcomes.sort_by_key(|(j, _)| *j);
    let mut cells = empty;
    for (j, o) in &outcomes {
        if let Some((c, _)) = jobs.get(*j) {
            if let Some(cell) = cells.get_mut(*c) {
                cell.add(o);
            }
        }
    }
    PunchMatrix { cells }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oracle() {
        use NatKind::*;
        assert!(punchable(Open, SymmetricRandom));
        assert!(punchable(FullCone, SymmetricRandom));
        assert!(punchable(Restricted, SymmetricRandom));
        assert!(!punchable(PortRestricted, SymmetricRandom));
        assert!(!punchable(SymmetricRandom, SymmetricRandom));
        assert!(!punchable(SymmetricPreserving, SymmetricRandom));
        assert!(punchable(SymmetricSequential, SymmetricPreserving));
        assert!(punchable(PortRestrictedRandom, SymmetricSequential));
        for a in KINDS {
            for b in KINDS {
                assert_eq!(punchable(a, b), punchable(b, a));
            }
        }
    }
}

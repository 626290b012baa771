//! Whole nodes ([`p2pd_node::Node`]) connecting by name in the simulator, graded against an
//! oracle written from the NAT kinds alone (apart from the node's planner): every pair of
//! [`NatKind`]s, and two hosts behind one NAT box, at several loss levels and seeds.
//!
//! # One run
//!
//! Two MQTT brokers, an RFC 5780 STUN server (also answering over TCP), a PNP server and a TURN
//! relay ([`TurnServer`], TURN REST credentials; every node has it as its one
//! configured relay) on public hosts; host A and host B each behind a NAT box of its kind (or public for [`NatKind::Open`];
//! behind the same box for [`Layout::SameNat`]). Each runs a node told its NAT's behaviour
//! (the ground truth, as a classifier reports it) or classifying it itself
//! ([`Family::Classified`], against two STUN servers). B registers the name `bob`; once both are
//! ready, A connects to `bob`. A run **succeeds** when A's `Connected` and B's `Accepted` name
//! each other with the oracle's path, bytes cross both ways and both ends see the other's FINISH,
//! and relays were used as the ladder promises: no allocation for a direct or reverse path, at
//! most one (started with the punch, released unused) for a punched one. Then both nodes close,
//! and nothing may be left: one `Closed` each, no socket in the simulator, no deadline, no
//! allocation on the relay.
//!
//! # The oracle
//!
//! - two hosts behind one NAT: **direct** (the local endpoint);
//! - B open, or behind a full cone (endpoint-independent filtering lets A's SYN in to the
//!   listener's kept-open mapping): **direct**;
//! - else A open or full cone: **reverse** (B dials A);
//! - else, if the punch matrix's oracle [`punchable`] says the pair can be punched: **punched**;
//! - else: **relayed** (phase C).

use core::net::{Ipv4Addr, SocketAddr};
use core::time::Duration;

use p2pd_nat::{Behaviour, ClassifierConfig, Filtering, ServerSpec};
use p2pd_node::{
    CredentialSource, NatSource, Node, NodeConfig, NodeEvent, Path, RelaySpec, StreamId, Target,
};
use p2pd_proto::Machine;
use p2pd_signaling::pnp::{MemoryStore, Name, PnpServer, PnpServerConfig};
use p2pd_signaling::rendezvous::{BrokerSpec, RendezvousConfig};
use p2pd_signaling::{Identity, NatInfo};

// The services sit where the punch matrix puts them.
use crate::punch_matrix::{
    punchable, tcp_config, NatKind, BROKER_IPS, BROKER_PORT, EPOCH_MS, PUBLIC_IPS, STUN2_IPS,
    STUN_IPS, STUN_PORT,
};
use crate::{
    BrokerConfig, Host, HostId, LinkConfig, MqttBroker, NatTcpConfig, Sim, TurnServer,
    TurnServerConfig,
};

/// Where the two hosts sit.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layout {
    /// A and B behind their own NAT kinds (or open).
    Apart(NatKind, NatKind),
    /// A and B behind one NAT box of this kind.
    SameNat(NatKind),
}

impl Layout {
    /// A label for tables.
    pub fn label(self) -> String {
        match self {
            Layout::Apart(a, b) => format!("{} -> {}", a.label(), b.label()),
            Layout::SameNat(k) => format!("both behind one {}", k.label()),
        }
    }
}

/// How the nodes learn their NAT.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// Told the ground truth.
    Given,
    /// Each node classifies its NAT itself (two RFC 5780 servers).
    Classified,
}

/// The oracle's expected path.
pub fn expected(layout: Layout) -> Path {
    let open_door = |k: NatKind| {
        k.behaviour()
            .is_none_or(|b| b.filtering == Filtering::EndpointIndependent)
    };
    match layout {
        Layout::SameNat(_) => Path::Direct,
        Layout::Apart(_, b) if open_door(b) => Path::Direct,
        Layout::Apart(a, _) if open_door(a) => Path::Reverse,
        Layout::Apart(a, b) if punchable(a, b) => Path::Punched,
        Layout::Apart(..) => Path::Relayed,
    }
}

/// Every layout: all ordered pairs of kinds, and each NAT kind shared by both hosts.
pub fn layouts() -> Vec<Layout> {
    let kinds = crate::punch_matrix::KINDS;
    let mut all = Vec::new();
    for a in kinds {
        for b in kinds {
            all.push(Layout::Apart(a, b));
        }
    }
    for k in kinds.into_iter().filter(|k| *k != NatKind::Open) {
        all.push(Layout::SameNat(k));
    }
    all
}

/// One run's result.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeOutcome {
    /// Where the hosts sat.
    pub layout: Layout,
    /// The access links' loss.
    pub loss: f64,
    /// The seed.
    pub seed: u64,
    /// The expected path.
    pub expected: Path,
    /// The path taken and the virtual time from `connect` to the stream, or the connect's failure
    /// (its phases), or what went wrong.
    pub result: Result<(Path, Duration), String>,
    /// Relay allocations A made for the connect.
    pub allocations: u64,
    /// Whether the run matches the oracle (bytes crossed both ways, and no allocation beyond
    /// what the path allows).
    pub correct: bool,
    /// What was left after both nodes closed.
    pub leaks: Vec<String>,
}

const PNP_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 30);
const PNP_PORT: u16 = 5300;
/// The TURN relay.
pub const TURN_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 40);
const TURN_PORT: u16 = 3478;
const TURN_SECRET: &[u8] = b"p2pd-sim-turn-secret";
const PRIVATE_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)];
const STEP: Duration = Duration::from_millis(10);
/// Virtual time for both nodes to be ready (classified, registered, listening).
pub const SETUP_LIMIT: Duration = Duration::from_secs(40);
/// Virtual time a connect may take to its outcome.
pub const CONNECT_LIMIT: Duration = Duration::from_secs(90);
const NAME: &str = "bob";

/// The network of one run and its two nodes.
pub struct NodeWorld {
    /// The simulation.
    pub sim: Sim,
    /// A's and B's hosts.
    pub hosts: [HostId; 2],
    /// Events each node reported so far (the harness takes them out of the simulator).
    pub events: [Vec<NodeEvent>; 2],
    /// A's and B's NAT boxes (`None`: an open host; the same box for [`Layout::SameNat`]).
    pub nats: [Option<crate::NatId>; 2],
    /// The TURN relay's host.
    pub turn: HostId,
}

/// The NAT behaviour a classifier reports for `kind` (open: no NAT).
pub fn nat_info(kind: NatKind) -> NatInfo {
    match kind.behaviour() {
        Some(b) => NatInfo::from(&b),
        None => p2pd_node::ladder::OPEN,
    }
}

fn identity(i: usize) -> Identity {
    let secret = [u8::try_from(i).unwrap_or(0).wrapping_add(0x51); 32];
    Identity::from_secret_bytes(&secret).expect("valid secret")
}

impl NodeWorld {
    /// The network for `layout`, nodes started (not yet ready).
    pub fn new(seed: u64, layout: Layout, loss: f64, family: Family) -> NodeWorld {
        let mut sim = Sim::new(seed);
        let service =
            LinkConfig::with_latency(Duration::from_millis(10)).jitter(Duration::from_millis(3));
        for ip in BROKER_IPS {
            let b = sim.add_mqtt_broker_with(
                Host::public([ip]).with_link(service).with_tcp(tcp_config()),
                BrokerConfig::new(BROKER_PORT),
            );
            let _ = sim.take_events::<MqttBroker>(b);
        }
        let stun = sim.add_stun_server(STUN_IPS[0], STUN_IPS[1], STUN_PORT, STUN_PORT + 1);
        sim.set_link(stun, service);
        let stun2 = sim.add_stun_server(STUN2_IPS[0], STUN2_IPS[1], STUN_PORT, STUN_PORT + 1);
        sim.set_link(stun2, service);
        let pnp_identity = identity(9);
        let pnp_key = pnp_identity.public_key();
        let pnp_addr = SocketAddr::from((PNP_IP, PNP_PORT));
        let pnp_seed = sim.machine_seed();
        let server = PnpServer::new(
            PnpServerConfig::new(pnp_addr, pnp_addr, EPOCH_MS),
            pnp_identity,
            MemoryStore::new(1024),
            pnp_seed,
        )
        .expect("pnp server config");
        sim.add_host(
            Host::public([PNP_IP])
                .with_link(service)
                .with_tcp(tcp_config()),
            server,
        );
        let mut relay = TurnServerConfig::new(SocketAddr::from((TURN_IP, TURN_PORT)), "p2pd.sim")
            .with_rest_secret(TURN_SECRET);
        relay.unix_now = EPOCH_MS / 1000;
        let turn = sim.add_turn_server(
            Host::public([TURN_IP])
                .with_link(service)
                .with_tcp(tcp_config()),
            relay,
        );
        let access = LinkConfig::with_latency(Duration::from_millis(20))
            .jitter(Duration::from_millis(5))
            .loss(loss);
        let (kinds, shared) = match layout {
            Layout::Apart(a, b) => ([a, b], false),
            Layout::SameNat(k) => ([k, k], true),
        };
        let mut hosts = Vec::new();
        let mut nats = Vec::new();
        let mut shared_nat = None;
        for (i, kind) in kinds.into_iter().enumerate() {
            let ip = match kind.behaviour() {
                None => PUBLIC_IPS.get(i).copied().unwrap_or(PUBLIC_IPS[0]),
                Some(_) => PRIVATE_IPS.get(i).copied().unwrap_or(PRIVATE_IPS[0]),
            };
            let node = new_node(&mut sim, i, kind, ip, family, pnp_addr, pnp_key);
            let host = match kind.behaviour() {
                None => sim.add_host(
                    Host::public([ip]).with_link(access).with_tcp(tcp_config()),
                    node,
                ),
                Some(b) => {
                    let nat = match shared_nat.filter(|_| shared) {
                        Some(nat) => nat,
                        None => new_nat(
                            &mut sim,
                            PUBLIC_IPS.get(i).copied().unwrap_or(PUBLIC_IPS[0]),
                            b,
                            access,
                        ),
                    };
                    shared_nat = Some(nat);
                    nats.push(Some(nat));
                    let h = sim.add_host_behind(nat, ip, node);
                    sim.set_tcp_config(h, tcp_config());
                    h
                }
            };
            if nats.len() < hosts.len().saturating_add(1) {
                nats.push(None);
            }
            hosts.push(host);
        }
        NodeWorld {
            sim,
            hosts: [hosts[0], hosts[1]],
            events: [Vec::new(), Vec::new()],
            nats: [nats[0], nats[1]],
            turn,
        }
    }

    /// Runs for `d`, collecting both nodes' events.
    pub fn run_for(&mut self, d: Duration) {
        self.sim.run_for(d);
        let _ = self.sim.take_events::<TurnServer>(self.turn);
        for (i, h) in self.hosts.into_iter().enumerate() {
            let evs = self.sim.take_events::<Node>(h);
            if let Some(list) = self.events.get_mut(i) {
                list.extend(evs);
            }
        }
    }

    /// Runs until `done` holds (checked every step) or `limit` passes; whether it held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&NodeWorld) -> bool) -> bool {
        let end = self.sim.now() + limit;
        loop {
            if done(self) {
                return true;
            }
            if self.sim.now() >= end {
                return false;
            }
            self.run_for(STEP);
        }
    }

    /// Whether node `i` reported `Ready` (B: registered under its name).
    pub fn is_ready(&self, i: usize) -> bool {
        self.events[i]
            .iter()
            .any(|e| matches!(e, NodeEvent::Ready { .. }))
    }

    /// Closes both nodes and reports what was left behind.
    pub fn close_and_check(&mut self) -> Vec<String> {
        for h in self.hosts {
            self.sim.with_machine::<Node, _>(h, |n, now| n.close(now));
        }
        let _ = self.run_until(Duration::from_secs(30), |w| {
            w.events
                .iter()
                .all(|evs| evs.iter().any(|e| matches!(e, NodeEvent::Closed)))
        });
        self.run_for(Duration::from_secs(1));
        let mut leaks = Vec::new();
        for (i, h) in self.hosts.into_iter().enumerate() {
            let side = ["A", "B"][i];
            let closed = self.events[i]
                .iter()
                .filter(|e| matches!(e, NodeEvent::Closed))
                .count();
            if closed != 1 {
                leaks.push(format!("{side}: {closed} Closed events"));
            }
            let sockets = self.sim.socket_count(h);
            if sockets != 0 {
                leaks.push(format!(
                    "{side}: {sockets} sockets {:?}",
                    self.sim.socket_list(h)
                ));
            }
            let node = self.sim.machine::<Node>(h);
            if let Some(t) = node.poll_timeout() {
                leaks.push(format!("{side}: deadline {t:?}"));
            }
            if node.live() != (0, 0, 0, 0) {
                leaks.push(format!("{side}: live parts {:?}", node.live()));
            }
            if node.open_relays() != 0 {
                leaks.push(format!("{side}: {} relay allocations", node.open_relays()));
            }
        }
        let relay = self.sim.machine::<TurnServer>(self.turn).stats();
        if relay.allocations_live != 0 {
            leaks.push(format!(
                "relay: {} allocations live",
                relay.allocations_live
            ));
        }
        leaks
    }
}

fn new_nat(
    sim: &mut Sim,
    public: Ipv4Addr,
    behaviour: Behaviour,
    access: LinkConfig,
) -> crate::NatId {
    let nat = sim.add_nat(public, behaviour);
    sim.set_nat_link(nat, access);
    sim.set_nat_tcp(nat, NatTcpConfig::default());
    nat
}

fn new_node(
    sim: &mut Sim,
    i: usize,
    kind: NatKind,
    ip: Ipv4Addr,
    family: Family,
    pnp: SocketAddr,
    pnp_key: p2pd_signaling::PublicKey,
) -> Node {
    let brokers = BROKER_IPS
        .iter()
        .map(|ip| BrokerSpec::new(None, SocketAddr::from((*ip, BROKER_PORT))))
        .collect();
    let rendezvous = RendezvousConfig::new(brokers, EPOCH_MS);
    let pnp = vec![p2pd_node::pnp_client_config(pnp, pnp_key, EPOCH_MS)];
    let mut config = NodeConfig::new(rendezvous, pnp);
    config.local_ip = ip.into();
    config.stun_tcp = Some(SocketAddr::from((STUN_IPS[0], STUN_PORT)));
    config.nat = match family {
        Family::Given => NatSource::Known(Some(nat_info(kind))),
        Family::Classified => NatSource::Classify(
            [STUN_IPS[0], STUN2_IPS[0]]
                .into_iter()
                .zip(1u64..)
                .map(|(ip, id)| ServerSpec {
                    id,
                    primary: SocketAddr::from((ip, STUN_PORT)),
                    alternate: None,
                })
                .collect(),
        ),
    };
    config.classifier = ClassifierConfig::default();
    config.relays = vec![RelaySpec {
        server: SocketAddr::from((TURN_IP, TURN_PORT)),
        credentials: CredentialSource::Rest {
            secret: TURN_SECRET.to_vec(),
            user: format!("node{i}"),
            ttl: Duration::from_secs(3600),
        },
    }];
    if i == 1 {
        config.name = Some(Name::new(NAME).expect("valid name"));
    }
    let secret = sim.machine_secret();
    let seed = sim.machine_seed();
    Node::new(config, identity(i), secret, seed, p2pd_proto::Instant::ZERO).expect("node config")
}

/// One run (see the module docs).
pub fn run_one(layout: Layout, loss: f64, seed: u64, family: Family) -> NodeOutcome {
    let mut w = NodeWorld::new(seed, layout, loss, family);
    let expected = expected(layout);
    let result = w
        .wait_ready()
        .and_then(|()| connect_once(&mut w))
        .map(|(path, elapsed, _, _)| (path, elapsed));
    // With the stream still open, only a relayed one holds its allocation: one started with a
    // punch that won is released (its deallocation answered, over a lossy link too) within 5 s.
    w.run_for(Duration::from_secs(5));
    let a = w.sim.machine::<Node>(w.hosts[0]);
    let allocations = a.stats().allocations;
    let held = a.open_relays();
    let mut leaks = Vec::new();
    if let Ok((path, _)) = &result {
        let want = usize::from(*path == Path::Relayed);
        if held != want {
            leaks.push(format!("A holds {held} allocations on a {path:?} stream"));
        }
    }
    leaks.extend(w.close_and_check());
    let correct = match &result {
        Ok((path, _)) => *path == expected && allocations <= allowed_allocations(*path),
        Err(_) => false,
    };
    NodeOutcome {
        layout,
        loss,
        seed,
        expected,
        result,
        allocations,
        correct,
        leaks,
    }
}

/// The most relay allocations a connect that took `path` may make: none when phase A works, one
/// (alongside the punch, or for the relay itself) otherwise.
pub fn allowed_allocations(path: Path) -> u64 {
    match path {
        Path::Direct | Path::Reverse => 0,
        Path::Punched | Path::Relayed => 1,
    }
}

impl NodeWorld {
    /// Runs until both nodes are ready (B registered under its name), within [`SETUP_LIMIT`].
    pub fn wait_ready(&mut self) -> Result<(), String> {
        if self.run_until(SETUP_LIMIT, |w| w.is_ready(0) && w.is_ready(1)) {
            Ok(())
        } else {
            Err(format!(
                "setup: ready A {} B {}",
                self.is_ready(0),
                self.is_ready(1)
            ))
        }
    }

    /// Closes both ends of a stream ([`Node::close_stream`]) and runs until each reported
    /// `StreamClosed`.
    pub fn close_streams(&mut self, stream_a: StreamId, stream_b: StreamId) -> Result<(), String> {
        let mark = self.marks();
        for (host, stream) in [(self.hosts[0], stream_a), (self.hosts[1], stream_b)] {
            self.sim
                .with_machine::<Node, _>(host, |n, now| n.close_stream(now, stream))
                .map_err(|e| format!("close_stream: {e}"))?;
        }
        let closed = |w: &NodeWorld, i: usize, stream: StreamId| {
            w.since(mark, i)
                .iter()
                .any(|e| matches!(e, NodeEvent::StreamClosed { stream: s } if *s == stream))
        };
        if self.run_until(Duration::from_secs(30), |w| {
            closed(w, 0, stream_a) && closed(w, 1, stream_b)
        }) {
            Ok(())
        } else {
            Err("streams never reported closed".into())
        }
    }

    /// How many events each node reported so far (a mark for [`NodeWorld::since`]).
    pub fn marks(&self) -> [usize; 2] {
        [self.events[0].len(), self.events[1].len()]
    }

    /// Node `i`'s events since `mark`.
    pub fn since(&self, mark: [usize; 2], i: usize) -> &[NodeEvent] {
        let from = mark.get(i).copied().unwrap_or(0);
        self.events
            .get(i)
            .and_then(|evs| evs.get(from..))
            .unwrap_or(&[])
    }
}

/// One connect by name from A to B on a ready world, then a message each way and both FINISHes:
/// the path, the virtual time from `connect` to the stream, and A's and B's stream. Only events
/// reported after the call count, so it can be repeated in one world (the soak). A failed
/// connect is `Err("failed: ...")` with its phases.
pub fn connect_once(w: &mut NodeWorld) -> Result<(Path, Duration, StreamId, StreamId), String> {
    let mark = w.marks();
    let a = w.hosts[0];
    let target = Target::Name(Name::new(NAME).expect("valid name"));
    let id = w
        .sim
        .with_machine::<Node, _>(a, |n, now| n.connect(now, target))
        .map_err(|e| format!("connect: {e}"))?;
    let outcome = |w: &NodeWorld| {
        w.since(mark, 0).iter().find_map(|e| match e {
            NodeEvent::Connected {
                connect,
                stream,
                path,
                elapsed,
                ..
            } if *connect == id => Some(Ok((*stream, *path, *elapsed))),
            NodeEvent::ConnectFailed {
                connect, phases, ..
            } if *connect == id => Some(Err(phases.clone())),
            _ => None,
        })
    };
    if !w.run_until(CONNECT_LIMIT, |w| outcome(w).is_some()) {
        return Err("hang: no outcome".into());
    }
    let (stream_a, path, elapsed) = match outcome(w) {
        Some(Ok(ok)) => ok,
        Some(Err(phases)) => return Err(format!("failed: {phases:?}")),
        None => return Err("hang".into()),
    };
    // B's side of the same stream.
    let accepted = |w: &NodeWorld| {
        w.since(mark, 1).iter().find_map(|e| match e {
            NodeEvent::Accepted { stream, path, .. } => Some((*stream, *path)),
            _ => None,
        })
    };
    if !w.run_until(Duration::from_secs(20), |w| accepted(w).is_some()) {
        return Err("B never accepted".into());
    }
    let Some((stream_b, path_b)) = accepted(w) else {
        return Err("B never accepted".into());
    };
    if path_b != path {
        return Err(format!("paths differ: A {path:?}, B {path_b:?}"));
    }
    exchange(w, mark, stream_a, stream_b, path)?;
    Ok((path, elapsed, stream_a, stream_b))
}

/// Sends a message each way, finishes both sides (the FINISHes cross), and checks each end got
/// the other's bytes and FINISH; on a relayed stream also that each end's FINISH was
/// acknowledged ([`NodeEvent::FinishAcknowledged`]: the relay has no half-close, so the channel's
/// ack is what lets either side close without loss). On other paths the acks are not awaited: a
/// side whose FIN went out before the peer's FINISH came cannot send one.
fn exchange(
    w: &mut NodeWorld,
    mark: [usize; 2],
    stream_a: StreamId,
    stream_b: StreamId,
    path: Path,
) -> Result<(), String> {
    let [a, b] = w.hosts;
    let messages: [&[u8]; 2] = [b"hello from a", b"hello from b"];
    for (host, stream, msg) in [(a, stream_a, messages[0]), (b, stream_b, messages[1])] {
        w.sim.with_machine::<Node, _>(host, |n, now| {
            let sent = n.send(now, stream, msg).map_err(|e| e.to_string())?;
            if sent != msg.len() {
                return Err("short send".to_string());
            }
            n.finish(now, stream).map_err(|e| e.to_string())
        })?;
    }
    let got = |evs: &[NodeEvent], stream: StreamId| {
        let mut bytes = Vec::new();
        let mut finished = false;
        let mut acked = false;
        for e in evs {
            match e {
                NodeEvent::Data {
                    stream: s,
                    bytes: b,
                } if *s == stream => bytes.extend_from_slice(b),
                NodeEvent::PeerFinished { stream: s } if *s == stream => finished = true,
                NodeEvent::FinishAcknowledged { stream: s } if *s == stream => acked = true,
                _ => {}
            }
        }
        (bytes, finished, acked)
    };
    let need_acks = path == Path::Relayed;
    let done = |w: &NodeWorld| {
        let (ab, af, aa) = got(w.since(mark, 0), stream_a);
        let (bb, bf, ba) = got(w.since(mark, 1), stream_b);
        af && bf && ab == messages[1] && bb == messages[0] && (!need_acks || (aa && ba))
    };
    if !w.run_until(Duration::from_secs(30), done) {
        let (ab, af, aa) = got(w.since(mark, 0), stream_a);
        let (bb, bf, ba) = got(w.since(mark, 1), stream_b);
        return Err(format!(
            "exchange: A got {:?} finished {af} acked {aa}, B got {:?} finished {bf} acked {ba}",
            String::from_utf8_lossy(&ab),
            String::from_utf8_lossy(&bb)
        ));
    }
    Ok(())
}

/// Runs every layout x loss x seed (seeds `0..seeds`, the same seeds for every layout) on `threads`
/// threads.
pub fn run_matrix(
    layouts: &[Layout],
    losses: &[f64],
    seeds: u64,
    family: Family,
    threads: usize,
) -> Vec<NodeOutcome> {
    let mut jobs = Vec::new();
    for &layout in layouts {
        for &loss in losses {
            for s in 0..seeds {
                jobs.push((layout, loss, s));
            }
        }
    }
    let mut outcomes: Vec<NodeOutcome> = crate::parallel::fan_out(threads, |k| {
        jobs.get(k..)
            .into_iter()
            .flatten()
            .step_by(threads.max(1))
            .map(|&(layout, loss, seed)| run_one(layout, loss, seed, family))
            .collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect();
    // The workers return their shares interleaved: back to job order.
    outcomes.sort_by(|a, b| {
        (a.layout, a.seed)
            .cmp(&(b.layout, b.seed))
            .then(a.loss.total_cmp(&b.loss))
    });
    outcomes
}

//! Signaling in the simulator: two nodes run the multi-broker [`Rendezvous`] machine behind
//! simulated NAT boxes (every pair of five behaviours, from full cone to symmetric with random
//! ports) and exchange sealed messages through two simulated MQTT brokers, over links with latency,
//! jitter, duplication and 0 %, 10 % or 30 % loss, for many seeds.
//!
//! One scenario per seed, in phases:
//!
//! 1. both nodes connect and listen on both brokers; messages go both ways, each delivered exactly
//!    once (the second broker's copy is dropped as a duplicate and counted);
//! 2. broker 1 is killed: delivery continues through broker 2;
//! 3. broker 1 is restarted: the nodes reconnect and re-subscribe, the messages held for it are
//!    acknowledged by it; broker 2 is killed and traffic flows through broker 1 alone; broker 2
//!    comes back;
//! 4. node B's NAT expires its TCP mappings: its connections die, it reconnects through fresh
//!    mappings, and what it sent meanwhile arrives exactly once;
//! 5. node A's host goes down for 30 s and comes back: the same;
//! 6. a last exchange, then both nodes close: one `Closed` each (a second close adds nothing),
//!    no socket left in the simulator, no timer left on the machines.
//!
//! Every message is checked to arrive at most once, and every expected one to arrive, with one
//! documented exception: a broker's delivery into a connection that is dead but not yet detected,
//! or to a client that has reconnected but not yet re-subscribed, is lost (the client asks for
//! clean sessions and the rendezvous has no end-to-end acknowledgement). So messages sent *to* a
//! node during its outage (phases 4 and 5) are only checked to arrive at most once, and an
//! expected message that never arrives is excused only if, on every broker running when it was
//! sent, the broker itself had no connection of the receiver subscribed to its topic then, or
//! every such connection has closed since (or the broker was restarted): the brokers' own tables
//! ([`MqttBroker::subscribers`]), not what the rendezvous under test reports of itself. Such a
//! message's late held copy may then be rejected as stale. How many may be excused is bounded:
//! none at 0 % and 10 % loss (measured: none over 1,500 seeds at 10 %), and at 30 % at most one
//! per 50 seeds, at least one batch (measured: 20 messages over 2,000 seeds, in a handful of
//! seeds, when the receiver's only live connection drops while the other broker is dead; none
//! over the default 25). `P2PD_SIM_SIGNAL_SEEDS=N` runs N seeds per loss level.
//!
//! A failing run prints its seed (`P2PD_SIM_SEED=N` replays it); the same seed gives the same
//! trace hash.

use core::net::{Ipv4Addr, SocketAddr};
use core::time::Duration;
use p2pd_proto::Machine;
use std::collections::BTreeMap;

use p2pd_nat::{Behaviour, Filtering, Mapping, PortAllocation};
use p2pd_proto::SocketId;
use p2pd_signaling::rendezvous::{
    topic_for, BrokerHealth, BrokerSpec, MessageId, Rejection, Rendezvous, RendezvousConfig,
    RendezvousEvent,
};
use p2pd_signaling::{BrokerId, Identity, OpenError, PublicKey};
use p2pd_sim::{
    run_seeds, BrokerConfig, Host, HostId, LinkConfig, MqttBroker, NatId, NatTcpConfig, Sim,
    TcpConfig,
};

const BROKER_IPS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(192, 0, 2, 10),
    Ipv4Addr::new(198, 51, 100, 20),
];
const NAT_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(203, 0, 113, 2)];
const PRIVATE_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 1, 0, 2)];
const PORT: u16 = 1883;
const EPOCH_MS: u64 = 1_700_000_000_000;
/// Messages per direction in each exchange.
const BATCH: usize = 6;
/// Seeds per loss level: 25 covers every pair of the five NAT behaviours once.
const SEEDS: u64 = 25;

/// The NAT behaviours the nodes sit behind.
fn behaviours() -> [(&'static str, Behaviour); 5] {
    use Filtering as F;
    use Mapping as M;
    [
        (
            "full cone",
            Behaviour::new(M::EndpointIndependent, F::EndpointIndependent),
        ),
        (
            "restricted cone",
            Behaviour::new(M::EndpointIndependent, F::AddressDependent),
        ),
        (
            "port restricted cone",
            Behaviour::new(M::EndpointIndependent, F::AddressAndPortDependent),
        ),
        (
            "symmetric, sequential ports",
            Behaviour::new(M::AddressDependent, F::AddressAndPortDependent)
                .with_allocation(PortAllocation::Sequential { stride: 7 }),
        ),
        (
            "symmetric, random ports",
            Behaviour::new(M::AddressAndPortDependent, F::AddressAndPortDependent)
                .with_allocation(PortAllocation::Random),
        ),
    ]
}

/// Quick TCP (Linux-like, with the RTO capped so that a lossy link recovers within the MQTT
/// timeouts).
fn tcp() -> TcpConfig {
    TcpConfig {
        initial_rto: Duration::from_millis(500),
        max_rto: Duration::from_secs(2),
        ..TcpConfig::default()
    }
}

/// What a run leaves behind, for the determinism check.
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    trace_hash: u64,
    delivered: [usize; 2],
    duplicates: [u64; 2],
    maybe_delivered: usize,
    maybe_sent: usize,
    excused: usize,
}

/// What the brokers knew of the receiver when an expected message was sent (their own tables, not
/// the receiver's view of itself).
#[derive(Clone, Debug)]
struct SentState {
    /// Per broker: `None` if it was not running; else its generation (restarts so far) and the
    /// receiver's connections subscribed to its topic there ([`MqttBroker::subscribers`]).
    subscribed: [Option<(u32, Vec<SocketId>)>; 2],
}

struct World {
    sim: Sim,
    brokers: [HostId; 2],
    ids: [BrokerId; 2],
    nats: [NatId; 2],
    nodes: [HostId; 2],
    keys: [PublicKey; 2],
    /// Messages each node received, in order: (payload, the broker of the first copy).
    got: [Vec<(Vec<u8>, BrokerId)>; 2],
    /// Payloads each node must receive exactly once.
    expected: [Vec<Vec<u8>>; 2],
    /// Payloads each node may receive (at most once).
    maybe: [Vec<Vec<u8>>; 2],
    /// For each expected payload: which brokers were alive when it was sent, and the receiver's
    /// disconnect counts on each broker at that moment.
    sent_state: BTreeMap<Vec<u8>, SentState>,
    /// Which brokers run now.
    alive: [bool; 2],
    /// How often each broker was restarted (its socket ids start over).
    generation: [u32; 2],
    /// Each node's signaling topic.
    topics: [String; 2],
    /// Expected messages that did not arrive because the receiver lost every live connection
    /// meanwhile (moved to `maybe`).
    excused: usize,
    /// Acknowledgements each node saw: (message, broker) -> count.
    acks: [BTreeMap<(MessageId, BrokerId), u32>; 2],
    /// Stale rejections per node.
    stale: [u64; 2],
    /// `Closed` events per node.
    closed: [usize; 2],
    /// `BrokerDown` events per node and broker.
    downs: [[u32; 2]; 2],
    next_tag: u32,
    context: String,
}

impl World {
    fn new(seed: u64, loss: f64) -> World {
        let mut sim = Sim::new(seed);
        let broker_link =
            LinkConfig::with_latency(Duration::from_millis(10)).jitter(Duration::from_millis(5));
        let brokers = BROKER_IPS.map(|ip| {
            sim.add_mqtt_broker_with(
                Host::public([ip]).with_link(broker_link).with_tcp(tcp()),
                BrokerConfig::new(PORT),
            )
        });
        for b in brokers {
            let _ = sim.take_events::<MqttBroker>(b);
        }
        let specs = [0, 1].map(|i| {
            BrokerSpec::new(
                Some(&format!("broker{i}.sim")),
                SocketAddr::from((BROKER_IPS[i], PORT)),
            )
        });
        let all = behaviours();
        let pick = [seed % 5, (seed / 5) % 5].map(|i| all[usize::try_from(i).unwrap()]);
        let access = LinkConfig::with_latency(Duration::from_millis(20))
            .jitter(Duration::from_millis(15))
            .loss(loss)
            .duplicate(loss / 10.0)
            .reorder(loss / 10.0, Duration::from_millis(30));
        let mut nats = Vec::new();
        let mut nodes = Vec::new();
        let mut keys = Vec::new();
        for i in 0..2 {
            let nat = sim.add_nat(NAT_IPS[i], pick[i].1);
            sim.set_nat_link(nat, access);
            let identity = Identity::from_secret_bytes(&[u8::try_from(i).unwrap() + 1; 32])
                .expect("valid secret");
            keys.push(identity.public_key());
            let mut config = RendezvousConfig::new(specs.to_vec(), EPOCH_MS);
            config.mqtt.backoff_initial = Duration::from_millis(200);
            config.mqtt.backoff_max = Duration::from_secs(3);
            config.mqtt.keep_alive = Duration::from_secs(10);
            config.mqtt.ping_timeout = Duration::from_secs(5);
            config.mqtt.connect_timeout = Duration::from_secs(6);
            config.mqtt.max_inflight = 256;
            let machine = Rendezvous::new(config, identity, sim.machine_seed(), sim.now())
                .expect("valid configuration");
            let node = sim.add_host_behind(nat, PRIVATE_IPS[i], machine);
            sim.set_tcp_config(node, tcp());
            nats.push(nat);
            nodes.push(node);
        }
        World {
            context: format!(
                "seed {seed}, loss {loss}, node A behind {}, node B behind {}",
                pick[0].0, pick[1].0
            ),
            sim,
            brokers,
            ids: specs.map(|s| s.id),
            nats: [nats[0], nats[1]],
            nodes: [nodes[0], nodes[1]],
            keys: [keys[0], keys[1]],
            got: Default::default(),
            expected: Default::default(),
            maybe: Default::default(),
            sent_state: BTreeMap::new(),
            alive: [true; 2],
            generation: [0; 2],
            topics: [0, 1].map(|i| topic_for(&keys[i].node_id())),
            excused: 0,
            acks: Default::default(),
            closed: [0; 2],
            stale: [0; 2],
            downs: [[0; 2]; 2],
            next_tag: 0,
        }
    }

    fn machine(&self, node: usize) -> &Rendezvous {
        self.sim.machine::<Rendezvous>(self.nodes[node])
    }

    fn health(&self, node: usize, broker: usize) -> BrokerHealth {
        self.machine(node)
            .health(self.ids[broker])
            .expect("configured broker")
    }

    fn listening(&self, node: usize, broker: usize) -> bool {
        self.health(node, broker).listening
    }

    fn received(&self, node: usize, payload: &[u8]) -> bool {
        self.got[node].iter().any(|(p, _)| p == payload)
    }

    /// Every expected message has arrived.
    fn all_delivered(&self) -> bool {
        (0..2).all(|n| self.expected[n].iter().all(|p| self.received(n, p)))
    }

    /// Takes both nodes' events and checks them as they come.
    fn collect(&mut self) {
        for n in 0..2 {
            for ev in self.sim.take_events::<Rendezvous>(self.nodes[n]) {
                match ev {
                    RendezvousEvent::Message {
                        from,
                        payload,
                        broker,
                        sent_at_ms,
                    } => {
                        assert_eq!(from, self.keys[1 - n], "{}: sender key", self.context);
                        assert!(
                            sent_at_ms >= EPOCH_MS
                                && sent_at_ms <= self.machine(n).unix_ms(self.sim.now()),
                            "{}: timestamp {sent_at_ms}",
                            self.context
                        );
                        assert!(
                            !self.received(n, &payload),
                            "{}: node {n} got {:?} twice",
                            self.context,
                            String::from_utf8_lossy(&payload)
                        );
                        assert!(
                            self.expected[n].contains(&payload) || self.maybe[n].contains(&payload),
                            "{}: node {n} got unexpected {:?}",
                            self.context,
                            String::from_utf8_lossy(&payload)
                        );
                        self.got[n].push((payload, broker));
                    }
                    RendezvousEvent::Acknowledged { id, broker } => {
                        *self.acks[n].entry((id, broker)).or_default() += 1;
                    }
                    RendezvousEvent::BrokerDown { broker, .. } => {
                        let b = usize::from(broker == self.ids[1]);
                        self.downs[n][b] += 1;
                    }
                    RendezvousEvent::Closed => self.closed[n] += 1,
                    // A held copy of a message whose first copy was lost can come back after
                    // the freshness window (checked against the excused messages at the end).
                    RendezvousEvent::Rejected {
                        reason: Rejection::Envelope(OpenError::Stale { .. }),
                        ..
                    } => self.stale[n] += 1,
                    RendezvousEvent::Rejected { broker, reason } => {
                        panic!(
                            "{}: node {n} rejected via {broker}: {reason:?}",
                            self.context
                        )
                    }
                    _ => {}
                }
            }
        }
    }

    fn run(&mut self, d: Duration) {
        let end = self.sim.now() + d;
        while self.sim.now() < end {
            let step = Duration::from_millis(100).min(end - self.sim.now());
            self.sim.run_for(step);
            self.collect();
        }
    }

    /// Runs until `done` holds, at most `limit` of virtual time.
    fn run_until(&mut self, what: &str, limit: Duration, done: impl Fn(&World) -> bool) {
        let end = self.sim.now() + limit;
        while !done(self) {
            assert!(
                self.sim.now() < end,
                "{}: {what} within {limit:?} (now {:?}); health A {:?} / {:?}, B {:?} / {:?}; \
                 missing A {:?}, B {:?}",
                self.context,
                self.sim.now(),
                self.health(0, 0),
                self.health(0, 1),
                self.health(1, 0),
                self.health(1, 1),
                self.missing(0),
                self.missing(1),
            );
            self.run(Duration::from_millis(100));
        }
    }

    /// Runs until every expected message has arrived (at most a minute). A message still missing
    /// then is excused only if, on every broker alive when it was sent, its receiver was not
    /// listening then or has lost that connection since (see the module docs); it is moved to the
    /// at-most-once messages and counted. Anything else fails the run.
    fn settle(&mut self, what: &str) {
        let end = self.sim.now() + Duration::from_secs(60);
        while !self.all_delivered() && self.sim.now() < end {
            self.run(Duration::from_millis(100));
        }
        for n in 0..2 {
            let missing: Vec<Vec<u8>> = self.expected[n]
                .iter()
                .filter(|p| !self.received(n, p))
                .cloned()
                .collect();
            for p in missing {
                let then = self.sent_state[&p].clone();
                // On every broker running then: no connection of the receiver subscribed, or
                // every one that was has closed since (or the broker itself went).
                let lost = (0..2).all(|b| match &then.subscribed[b] {
                    None => true,
                    Some((generation, conns)) => {
                        let now = self.subscribers(n, b);
                        *generation != self.generation[b] || conns.iter().all(|c| !now.contains(c))
                    }
                });
                assert!(
                    lost,
                    "{}: {what}: {:?} never reached node {n} (brokers' subscribers when sent: \
                     {:?}; now: {:?} / {:?}); health {:?} / {:?}",
                    self.context,
                    String::from_utf8_lossy(&p),
                    then.subscribed,
                    self.subscribers(n, 0),
                    self.subscribers(n, 1),
                    self.health(n, 0),
                    self.health(n, 1),
                );
                self.expected[n].retain(|e| *e != p);
                self.maybe[n].push(p);
                self.excused += 1;
            }
        }
    }

    fn kill_broker(&mut self, b: usize) {
        self.sim.kill_host(self.brokers[b]);
        self.alive[b] = false;
    }

    fn restart_broker(&mut self, b: usize) {
        self.sim
            .restart_mqtt_broker(self.brokers[b], BrokerConfig::new(PORT));
        self.alive[b] = true;
        self.generation[b] += 1;
    }

    /// Node `node`'s connections subscribed to its topic on broker `b` now, as the broker has them
    /// (none while it is dead).
    fn subscribers(&self, node: usize, b: usize) -> Vec<SocketId> {
        if !self.alive[b] {
            return Vec::new();
        }
        self.sim
            .machine::<MqttBroker>(self.brokers[b])
            .subscribers(&self.topics[node])
    }

    fn missing(&self, node: usize) -> Vec<String> {
        self.expected[node]
            .iter()
            .filter(|p| !self.received(node, p))
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    /// Node `from` sends `n` messages to the other node; `must` says whether each must arrive.
    fn send(&mut self, from: usize, n: usize, must: bool) -> Vec<MessageId> {
        let to = 1 - from;
        let key = self.keys[to];
        let mut ids = Vec::new();
        for _ in 0..n {
            self.next_tag += 1;
            let payload = format!(
                "{} -> {} #{}",
                ["A", "B"][from],
                ["A", "B"][to],
                self.next_tag
            )
            .into_bytes();
            if must {
                let then = SentState {
                    subscribed: [0, 1].map(|b| {
                        self.alive[b].then(|| (self.generation[b], self.subscribers(to, b)))
                    }),
                };
                self.sent_state.insert(payload.clone(), then);
                self.expected[to].push(payload.clone());
            } else {
                self.maybe[to].push(payload.clone());
            }
            let sending = self
                .sim
                .with_machine::<Rendezvous, _>(self.nodes[from], |m, now| {
                    m.send(now, &key, None, &payload)
                })
                .unwrap_or_else(|e| panic!("{}: send: {e}", self.context));
            assert_eq!(sending.brokers, 2, "{}", self.context);
            ids.push(sending.id);
        }
        ids
    }

    /// Both ways, `BATCH` each, every one to be delivered.
    fn exchange(&mut self) -> [Vec<MessageId>; 2] {
        [self.send(0, BATCH, true), self.send(1, BATCH, true)]
    }

    fn listening_everywhere(&self) -> bool {
        (0..2).all(|n| (0..2).all(|b| self.listening(n, b)))
    }

    /// The broker each message of `payloads` first came through, at node `node`.
    fn via(&self, node: usize, since: usize) -> Vec<BrokerId> {
        self.got[node][since..].iter().map(|(_, b)| *b).collect()
    }
}

fn scenario(seed: u64, loss: f64) -> Summary {
    let mut w = World::new(seed, loss);
    let minute = Duration::from_secs(60);

    // 1. Everyone up.
    w.run_until(
        "both nodes listening on both brokers",
        minute,
        World::listening_everywhere,
    );
    w.exchange();
    w.settle("the first exchange");

    // 2. Broker 1 dies: delivery continues through broker 2.
    w.kill_broker(0);
    let since = [w.got[0].len(), w.got[1].len()];
    let held = w.exchange();
    w.settle("delivery with broker 1 dead");
    for (n, since) in since.into_iter().enumerate() {
        assert!(
            w.via(n, since).iter().all(|b| *b == w.ids[1]),
            "{}: only broker 2 can deliver while broker 1 is dead",
            w.context
        );
    }

    // 3. Broker 1 returns: reconnect, re-subscribe, the held copies are acknowledged by it.
    w.restart_broker(0);
    w.run_until("both nodes listening on broker 1 again", minute, |w| {
        (0..2).all(|n| w.listening(n, 0) && w.health(n, 0).connects >= 2)
    });
    let broker1 = w.ids[0];
    w.run_until("broker 1 acknowledging what it missed", minute, |w| {
        (0..2).all(|n| {
            held[n]
                .iter()
                .all(|id| w.acks[n].contains_key(&(*id, broker1)))
        })
    });
    for n in 0..2 {
        assert!(
            w.downs[n][0] >= 1,
            "{}: node {n} saw broker 1 go",
            w.context
        );
    }
    // Broker 2 dies: traffic flows through broker 1 alone.
    w.kill_broker(1);
    let since = [w.got[0].len(), w.got[1].len()];
    w.exchange();
    w.settle("delivery with broker 2 dead");
    for (n, since) in since.into_iter().enumerate() {
        assert!(
            w.via(n, since).iter().all(|b| *b == broker1),
            "{}: only broker 1 can deliver while broker 2 is dead",
            w.context
        );
    }
    w.restart_broker(1);
    w.run_until(
        "everyone listening again",
        minute,
        World::listening_everywhere,
    );

    // 4. Node B's NAT forgets idle TCP mappings after 2 s (less than the 10 s keep-alive) until
    // both its broker connections have died; it reconnects through fresh mappings once the
    // lifetime is back to normal, and what it sent meanwhile arrives exactly once.
    let before = [0, 1].map(|b| w.health(1, b).disconnects);
    let expired = w.sim.nat_stats(w.nats[1]).expired;
    w.sim.set_nat_tcp(
        w.nats[1],
        NatTcpConfig {
            idle_lifetime: Duration::from_secs(2),
            ..NatTcpConfig::default()
        },
    );
    w.run_until("node B's mappings expiring", 2 * minute, |w| {
        let nat = w.sim.nat_stats(w.nats[1]);
        (0..2).all(|b| w.health(1, b).disconnects > before[b])
            && nat.expired >= expired + 2
            && nat.tcp_dropped_no_mapping > 0
    });
    w.send(1, BATCH, true);
    w.send(0, 2, false);
    w.sim.set_nat_tcp(w.nats[1], NatTcpConfig::default());
    // A connection made while the lifetime was short dies at its next keep-alive.
    w.run(Duration::from_secs(25));
    w.run_until("node B back through new mappings", 2 * minute, |w| {
        (0..2).all(|b| w.listening(1, b))
    });
    w.settle("node B's messages from the outage");
    w.exchange();
    w.settle("delivery after the NAT expiry");

    // 5. Node A's host is cut off for 30 s.
    let before = [0, 1].map(|b| w.health(0, b).disconnects);
    w.sim.set_host_down(w.nodes[0], true);
    w.send(0, BATCH, true);
    w.send(1, 2, false);
    w.run(Duration::from_secs(30));
    w.sim.set_host_down(w.nodes[0], false);
    w.run_until("node A back after its outage", 2 * minute, |w| {
        (0..2).all(|b| w.health(0, b).disconnects > before[b] && w.listening(0, b))
    });
    w.settle("node A's messages from its outage");

    // 6. A last exchange everywhere, then close.
    w.run_until(
        "everyone listening before the end",
        minute,
        World::listening_everywhere,
    );
    w.exchange();
    w.settle("the last exchange");
    w.run_until("every copy acknowledged by its broker", minute, |w| {
        (0..2).all(|n| w.machine(n).pending_acks() == 0)
    });

    // Exactly once, and the counters agree with what was seen.
    let mut duplicates = [0; 2];
    for (n, dups) in duplicates.iter_mut().enumerate() {
        let m = w.machine(n);
        let stats = m.stats();
        let h = [w.health(n, 0), w.health(n, 1)];
        assert_eq!(stats.received, w.got[n].len() as u64, "{}", w.context);
        assert_eq!(
            h[0].delivered + h[1].delivered,
            stats.received,
            "{}",
            w.context
        );
        assert_eq!(
            h[0].duplicates + h[1].duplicates,
            stats.duplicates,
            "{}",
            w.context
        );
        // Only a copy of a message whose every earlier copy was lost may be stale (at most one
        // held copy per broker).
        assert_eq!(stats.rejected, w.stale[n], "{}", w.context);
        let excused = w.maybe[n].len() as u64;
        assert!(
            w.stale[n] <= 2 * excused,
            "{}: {} stale",
            w.context,
            w.stale[n]
        );
        assert_eq!(
            m.pending_acks(),
            0,
            "{}: node {n}: every copy acknowledged; {:?} / {:?}; {h:?}",
            w.context,
            m.mqtt_stats(w.ids[0]),
            m.mqtt_stats(w.ids[1]),
        );
        assert!(m.replay_cache_len() <= 4096);
        // Each message travels through two brokers: at most one extra copy each (QoS 1
        // redeliveries are possible only after a reconnect, and count as duplicates too).
        assert!(
            stats.duplicates >= 1,
            "{}: the second copies are counted",
            w.context
        );
        *dups = stats.duplicates;
        for ((id, broker), count) in &w.acks[n] {
            assert_eq!(
                *count, 1,
                "{}: {id:?} acknowledged twice by {broker}",
                w.context
            );
        }
    }

    // Close: one Closed each, idempotent, nothing left.
    for n in 0..2 {
        w.sim
            .with_machine::<Rendezvous, _>(w.nodes[n], |m, now| m.close(now));
    }
    w.run_until("both closed", Duration::from_secs(10), |w| {
        w.closed == [1, 1]
    });
    for n in 0..2 {
        w.sim
            .with_machine::<Rendezvous, _>(w.nodes[n], |m, now| m.close(now));
        let key = w.keys[1 - n];
        let late = w
            .sim
            .with_machine::<Rendezvous, _>(w.nodes[n], |m, now| m.send(now, &key, None, b"late"));
        assert!(late.is_err(), "{}", w.context);
    }
    w.run(Duration::from_secs(5));
    for n in 0..2 {
        assert_eq!(w.closed[n], 1, "{}: exactly one Closed", w.context);
        assert_eq!(
            w.sim.socket_count(w.nodes[n]),
            0,
            "{}: sockets left",
            w.context
        );
        assert_eq!(
            w.machine(n).poll_timeout(),
            None,
            "{}: timer left",
            w.context
        );
        assert_eq!(w.machine(n).connected_brokers(), 0, "{}", w.context);
    }
    // The brokers see the clients go (DISCONNECT, FIN, or their keep-alive).
    w.run_until("the brokers dropping their clients", minute, |w| {
        w.brokers
            .iter()
            .all(|b| w.sim.machine::<MqttBroker>(*b).connections() == 0)
    });

    let maybe_delivered = (0..2)
        .map(|n| w.maybe[n].iter().filter(|p| w.received(n, p)).count())
        .sum();
    if loss == 0.0 {
        assert_eq!(
            w.excused, 0,
            "{}: nothing may be lost without loss",
            w.context
        );
    }
    Summary {
        excused: w.excused,
        trace_hash: w.sim.trace_hash(),
        delivered: [w.got[0].len(), w.got[1].len()],
        duplicates,
        maybe_delivered,
        maybe_sent: w.maybe[0].len() + w.maybe[1].len(),
    }
}

/// Seeds `0..SEEDS`, or `0..N` with `P2PD_SIM_SIGNAL_SEEDS=N` (for longer local sweeps).
fn sweep(loss: f64) {
    let seeds = std::env::var("P2PD_SIM_SIGNAL_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SEEDS);
    let started = std::time::Instant::now();
    // (at-most-once messages that arrived, sent, expected messages excused)
    let totals = std::cell::Cell::new((0usize, 0usize, 0usize));
    run_seeds(0..seeds, |seed| {
        let s = scenario(seed, loss);
        let (arrived, sent, excused) = totals.get();
        totals.set((
            arrived + s.maybe_delivered,
            sent + s.maybe_sent,
            excused + s.excused,
        ));
    });
    let (arrived, sent, excused) = totals.get();
    let seeds = if std::env::var(p2pd_sim::SEED_VAR).is_ok() {
        1
    } else {
        seeds
    };
    eprintln!(
        "loss {loss}: {seeds} seeds in {:?}; at-most-once messages: {arrived} of {sent} arrived; \
         {excused} expected messages lost while their receiver reconnected everywhere",
        started.elapsed(),
    );
    let cap = max_excused(loss, seeds);
    assert!(
        excused <= cap,
        "loss {loss}: {excused} expected messages excused over {seeds} seeds, at most {cap} allowed"
    );
}

/// How many expected messages the sweep may excuse over `seeds` seeds (see the module docs): none
/// up to 10 % loss (measured: none over 1,500 seeds); at 30 % one per 50 seeds, at least one batch
/// (measured: 20 over 2,000 seeds, none over the default 25).
fn max_excused(loss: f64, seeds: u64) -> usize {
    if loss <= 0.1 {
        0
    } else {
        BATCH.max(usize::try_from(seeds / 50).unwrap_or(usize::MAX))
    }
}

#[test]
fn signaling_without_loss() {
    sweep(0.0);
}

#[test]
fn signaling_with_10_percent_loss() {
    sweep(0.1);
}

#[test]
fn signaling_with_30_percent_loss() {
    sweep(0.3);
}

#[test]
fn same_seed_same_trace() {
    run_seeds([22, 7], |seed| {
        let a = scenario(seed, 0.3);
        let b = scenario(seed, 0.3);
        assert_eq!(a, b);
    });
    let c = scenario(22, 0.1);
    let d = scenario(22, 0.3);
    assert_ne!(c.trace_hash, d.trace_hash);
}

//! The rendezvous machine against scripted brokers built from the MQTT codec: no sockets, no
//! clock, no simulator.

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::BTreeMap;

use p2pd_proto::testing::{Driven, Output};
use p2pd_proto::{IoError, OpKind};

use super::*;
use crate::mqtt::codec::{encode, ConnAckProperties, Decoded, Decoder, Packet, Protocol};

const EPOCH_MS: u64 = 1_700_000_000_000;
const BASE: u32 = 100;

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 10 + i], 1883))
}

fn spec(i: u8) -> BrokerSpec {
    BrokerSpec::new(Some(&format!("broker{i}")), addr(i))
}

fn identity(byte: u8) -> Identity {
    Identity::from_secret_bytes(&[byte; 32]).unwrap()
}

fn config(brokers: u8) -> RendezvousConfig {
    let mut c = RendezvousConfig::new((0..brokers).map(spec).collect(), EPOCH_MS);
    c.mqtt.protocol = Protocol::V311;
    c.socket_base = SocketId(BASE);
    c
}

/// One scripted broker's view of its current connection.
#[derive(Default)]
struct Side {
    socket: Option<SocketId>,
    decoder: Option<Decoder>,
    /// PUBLISHes received from the node (topic, pkid, payload).
    published: Vec<(String, u16, Vec<u8>)>,
    /// Answer PUBLISH with PUBACK at once.
    hold_acks: bool,
    next_pkid: u16,
}

struct Harness {
    /// The machine; every input and drain goes through its contract checker.
    m: Driven<Rendezvous>,
    now: Instant,
    sides: Vec<Side>,
    /// Socket -> broker index, from the Connect intents.
    routes: BTreeMap<SocketId, usize>,
    closes: BTreeMap<SocketId, usize>,
    binds: Vec<SocketId>,
    events: Vec<RendezvousEvent>,
}

impl Harness {
    fn new(brokers: u8) -> Harness {
        Harness::with(config(brokers))
    }

    fn with(config: RendezvousConfig) -> Harness {
        let n = config.brokers.len();
        let m = Rendezvous::new(config, identity(1), 7, Instant::ZERO).unwrap();
        let mut m = Driven::new("rendezvous", m, |e| *e == RendezvousEvent::Closed);
        m.drain();
        let mut h = Harness {
            m,
            now: Instant::ZERO,
            sides: (0..n).map(|_| Side::default()).collect(),
            routes: BTreeMap::new(),
            closes: BTreeMap::new(),
            binds: Vec::new(),
            events: Vec::new(),
        };
        h.drain();
        h
    }

    fn id(&self, broker: usize) -> BrokerId {
        self.m.machine.broker_ids().nth(broker).unwrap()
    }

    /// Carries out every output: binds succeed, connects reach the broker named by the remote
    /// address, the brokers answer CONNECT, SUBSCRIBE, PUBLISH (unless holding) and PINGREQ.
    /// A deadline due now is fired, as a runtime does (the settle point of the transmits the
    /// brokers just read).
    fn drain(&mut self) {
        loop {
            let out = self.m.take();
            if out.is_empty() {
                if self.m.deadline().is_some_and(|d| d <= self.now) {
                    self.m.clock(self.now).fire();
                    continue;
                }
                return;
            }
            for output in out.into_outputs() {
                match output {
                    Output::Transmit(t, bytes) => {
                        let b = self.routes[&t.socket];
                        assert_eq!(t.destination, addr(u8::try_from(b).unwrap()));
                        self.broker_reads(b, t.socket, &bytes);
                    }
                    Output::Op(SocketOp::Bind { socket, .. }) => {
                        self.binds.push(socket);
                        let local = "10.0.0.2:40000".parse().unwrap();
                        self.m
                            .clock(self.now)
                            .outcome(socket, SocketOutcome::Bound { local });
                    }
                    Output::Op(SocketOp::Connect { socket, remote }) => {
                        let b = (0..self.sides.len())
                            .find(|&i| addr(u8::try_from(i).unwrap()) == remote)
                            .expect("a configured broker");
                        self.routes.insert(socket, b);
                        let side = &mut self.sides[b];
                        side.socket = Some(socket);
                        side.decoder = Some(Decoder::new(Protocol::V311, 1 << 20));
                        let local = "10.0.0.2:40000".parse().unwrap();
                        self.m
                            .clock(self.now)
                            .outcome(socket, SocketOutcome::Connected { local, remote });
                    }
                    Output::Op(SocketOp::Close { socket }) => {
                        *self.closes.entry(socket).or_default() += 1;
                        for side in &mut self.sides {
                            if side.socket == Some(socket) {
                                side.socket = None;
                            }
                        }
                    }
                    Output::Op(other) => panic!("unexpected intent {other:?}"),
                    Output::Event(ev) => {
                        assert!(
                            !self.events.contains(&RendezvousEvent::Closed),
                            "event after Closed: {ev:?}"
                        );
                        self.events.push(ev);
                    }
                }
            }
        }
    }

    fn broker_reads(&mut self, b: usize, socket: SocketId, bytes: &[u8]) {
        let side = &mut self.sides[b];
        assert_eq!(side.socket, Some(socket), "bytes on a stale socket");
        let decoder = side.decoder.as_mut().unwrap();
        assert_eq!(decoder.push(bytes).unwrap(), bytes.len());
        let mut packets = Vec::new();
        while let Some(p) = decoder.next() {
            let Ok(Decoded::Packet(p)) = p else {
                panic!("valid MQTT, got {p:?}");
            };
            packets.push(p);
        }
        for p in packets {
            let reply = match p {
                Packet::Connect { .. } => Some(Packet::ConnAck {
                    session_present: false,
                    code: 0,
                    properties: ConnAckProperties::default(),
                }),
                Packet::Subscribe { pkid, topics } => Some(Packet::SubAck {
                    pkid,
                    codes: topics.iter().map(|_| 1).collect(),
                }),
                Packet::Publish {
                    topic,
                    pkid,
                    payload,
                    ..
                } => {
                    let side = &mut self.sides[b];
                    side.published.push((topic, pkid, payload));
                    (!side.hold_acks).then_some(Packet::PubAck { pkid })
                }
                Packet::PingReq => Some(Packet::PingResp),
                _ => None,
            };
            if let Some(reply) = reply {
                self.broker_sends(b, &reply);
            }
        }
    }

    /// Broker `b` writes `packet` to its current connection.
    fn broker_sends(&mut self, b: usize, packet: &Packet) {
        let socket = self.sides[b].socket.expect("connected");
        let mut wire = Vec::new();
        encode(packet, Protocol::V311, &mut wire).unwrap();
        assert_eq!(
            self.m.clock(self.now).stream(socket, &wire),
            Verdict::Consumed
        );
        self.drain();
    }

    /// Broker `b` delivers `payload` on `topic` (QoS 1).
    fn deliver(&mut self, b: usize, topic: &str, payload: &[u8]) {
        let side = &mut self.sides[b];
        side.next_pkid += 1;
        let pkid = side.next_pkid;
        let publish = Packet::Publish {
            topic: topic.into(),
            qos: QoS::AtLeastOnce,
            pkid,
            retain: false,
            dup: false,
            payload: payload.to_vec(),
        };
        self.broker_sends(b, &publish);
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        self.m.clock(self.now).fire();
        self.drain();
    }

    fn take(&mut self) -> Vec<RendezvousEvent> {
        core::mem::take(&mut self.events)
    }

    fn own_topic(&self) -> String {
        topic_for(&identity(1).node_id())
    }

    /// A message envelope (no receipt wanted) from node 2 to us, sealed `age` before now.
    fn envelope(&self, nonce: u8, age: Duration, payload: &[u8]) -> Vec<u8> {
        self.sealed(2, nonce, age, &payload::message(payload, false))
    }

    /// An envelope from node `from` to us with `content` (kind byte included), sealed `age`
    /// before now.
    fn sealed(&self, from: u8, nonce: u8, age: Duration, content: &[u8]) -> Vec<u8> {
        let at = self.m.machine.unix_ms(self.now) - u64::try_from(age.as_millis()).unwrap();
        seal(
            &identity(from),
            &identity(1).public_key(),
            at,
            [nonce; NONCE_LEN],
            content,
        )
        .unwrap()
    }
}

#[test]
fn sockets_are_routed_to_the_broker_that_owns_them() {
    let mut h = Harness::new(2);
    // Broker i binds from BASE + i * SOCKETS_PER_BROKER.
    assert_eq!(
        h.binds,
        [SocketId(BASE), SocketId(BASE + SOCKETS_PER_BROKER)]
    );
    assert_eq!(h.routes[&SocketId(BASE)], 0);
    assert_eq!(h.routes[&SocketId(BASE + SOCKETS_PER_BROKER)], 1);
    let ev = h.take();
    for b in 0..2 {
        let broker = h.id(b);
        assert!(ev.contains(&RendezvousEvent::BrokerUp { broker }), "{ev:?}");
        assert!(
            ev.contains(&RendezvousEvent::Listening { broker }),
            "{ev:?}"
        );
        let health = h.m.machine.health(broker).unwrap();
        assert!(health.connected && health.listening);
        assert_eq!(health.connects, 1);
    }
    assert_eq!(h.m.machine.connected_brokers(), 2);
    // Input for a socket outside every range is not ours and changes nothing.
    let now = h.now;
    for socket in [SocketId(BASE - 1), SocketId(BASE + 2 * SOCKETS_PER_BROKER)] {
        assert_eq!(
            h.m.clock(now).stream(socket, b"\x20\x02\0\0"),
            Verdict::NotMine
        );
        h.m.clock(now).outcome(socket, SocketOutcome::PeerClosed);
    }
    let addr = "192.0.2.99:1".parse().unwrap();
    assert_eq!(
        h.m.clock(now).datagram(SocketId(BASE), addr, b"x"),
        Verdict::NotMine
    );
    h.drain();
    assert_eq!(h.take(), []);
    // Broker 1's connection failing touches only broker 1.
    let now = h.now;
    let failed = SocketOutcome::Failed {
        op: OpKind::Receive,
        destination: None,
        error: IoError::ConnectionReset,
    };
    h.m.clock(now)
        .outcome(SocketId(BASE + SOCKETS_PER_BROKER), failed);
    h.drain();
    let ev = h.take();
    assert!(
        matches!(ev.as_slice(), [RendezvousEvent::BrokerDown { broker, .. }] if *broker == h.id(1)),
        "{ev:?}"
    );
    assert!(h.m.machine.health(h.id(0)).unwrap().connected);
    assert!(!h.m.machine.health(h.id(1)).unwrap().connected);
    assert_eq!(h.closes[&SocketId(BASE + SOCKETS_PER_BROKER)], 1);
    // It reconnects on its next socket id and re-subscribes.
    h.advance(Duration::from_secs(2));
    assert_eq!(
        h.binds.last(),
        Some(&SocketId(BASE + SOCKETS_PER_BROKER + 1))
    );
    let broker = h.id(1);
    assert!(h.take().contains(&RendezvousEvent::Listening { broker }));
    assert_eq!(h.m.machine.health(broker).unwrap().connects, 2);
}

#[test]
fn first_copy_reported_later_copies_counted_as_duplicates() {
    let mut h = Harness::new(2);
    h.take();
    let topic = h.own_topic();
    let env = h.envelope(1, Duration::ZERO, b"hello");
    h.deliver(0, &topic, &env);
    let ev = h.take();
    let [RendezvousEvent::Message {
        from,
        payload,
        broker,
        sent_at_ms,
    }] = ev.as_slice()
    else {
        panic!("{ev:?}")
    };
    assert_eq!(
        (*from, payload.as_slice(), *broker, *sent_at_ms),
        (identity(2).public_key(), &b"hello"[..], h.id(0), EPOCH_MS)
    );
    // The second broker's copy, and a QoS 1 redelivery through the first.
    h.deliver(1, &topic, &env);
    h.deliver(0, &topic, &env);
    assert_eq!(h.take(), []);
    // A copy held back by a broker outage arrives after the freshness window: still a
    // duplicate, not a rejection (regression: it used to be reported as Rejected { Stale }).
    h.advance(Duration::from_millis(Opener::DEFAULT_MAX_AGE_MS + 5_000));
    h.deliver(1, &topic, &env);
    assert_eq!(h.take(), []);
    let stats = h.m.machine.stats();
    assert_eq!(
        (stats.received, stats.duplicates, stats.rejected),
        (1, 3, 0)
    );
    let (h0, h1) = (
        h.m.machine.health(h.id(0)).unwrap(),
        h.m.machine.health(h.id(1)).unwrap(),
    );
    assert_eq!((h0.delivered, h0.duplicates), (1, 1));
    assert_eq!((h1.delivered, h1.duplicates), (0, 2));
    assert_eq!(h.m.machine.replay_cache_len(), 1);
}

#[test]
fn rejections_carry_their_reason() {
    let mut h = Harness::new(2);
    h.take();
    let topic = h.own_topic();
    let stale = h.envelope(
        2,
        Duration::from_millis(Opener::DEFAULT_MAX_AGE_MS + 1),
        b"old",
    );
    let mut forged = h.envelope(3, Duration::ZERO, b"forged");
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let elsewhere = seal(
        &identity(2),
        &identity(3).public_key(),
        h.m.machine.unix_ms(h.now),
        [4; NONCE_LEN],
        b"not for us",
    )
    .unwrap();
    let mut version = h.envelope(5, Duration::ZERO, b"v");
    version[0] = 9;
    let cases: [(&[u8], OpenError); 6] = [
        (
            &stale,
            OpenError::Stale {
                age_ms: Opener::DEFAULT_MAX_AGE_MS + 1,
            },
        ),
        (&forged, OpenError::BadSignature),
        (&elsewhere, OpenError::WrongRecipient),
        (&version, OpenError::UnsupportedVersion(9)),
        (&[1, 2, 3], OpenError::Truncated),
        (&[], OpenError::Truncated),
    ];
    for (i, (bytes, reason)) in cases.iter().enumerate() {
        let b = i % 2;
        h.deliver(b, &topic, bytes);
        let broker = h.id(b);
        assert_eq!(
            h.take(),
            [RendezvousEvent::Rejected {
                broker,
                reason: Rejection::Envelope(*reason)
            }]
        );
    }
    // A message on a topic that is not ours is dropped and counted.
    let fresh = h.envelope(6, Duration::ZERO, b"x");
    h.deliver(0, "p2pd/v1/elsewhere", &fresh);
    assert_eq!(h.take(), []);
    let stats = h.m.machine.stats();
    assert_eq!(
        (stats.rejected, stats.foreign_topic, stats.received),
        (6, 1, 0)
    );
    let rejected: u64 = (0..2)
        .map(|b| h.m.machine.health(h.id(b)).unwrap().rejected)
        .sum();
    assert_eq!(rejected, 6);
}

#[test]
fn every_broker_acknowledges_separately() {
    let mut h = Harness::new(2);
    h.take();
    for side in &mut h.sides {
        side.hold_acks = true;
    }
    let peer = identity(2).public_key();
    let now = h.now;
    let sent =
        h.m.clock(now)
            .input(|m, now| m.send(now, &peer, None, b"to both"))
            .unwrap();
    h.drain();
    assert_eq!(sent.brokers, 2);
    assert_eq!(h.m.machine.pending_acks(), 2);
    let topic = topic_for(&peer.node_id());
    for side in &h.sides {
        assert_eq!(side.published.len(), 1);
        assert_eq!(side.published[0].0, topic);
    }
    // The same sealed bytes went to both.
    assert_eq!(h.sides[0].published[0].2, h.sides[1].published[0].2);
    for b in [1, 0] {
        let pkid = h.sides[b].published[0].1;
        h.broker_sends(b, &Packet::PubAck { pkid });
        let broker = h.id(b);
        assert_eq!(
            h.take(),
            [RendezvousEvent::Acknowledged {
                id: sent.id,
                broker
            }]
        );
    }
    assert_eq!(h.m.machine.pending_acks(), 0);
    assert_eq!(h.m.machine.health(h.id(0)).unwrap().acknowledged, 1);
    // A stray PUBACK changes nothing.
    h.broker_sends(0, &Packet::PubAck { pkid: 999 });
    assert_eq!(h.take(), []);
    // Through one chosen broker only.
    let via = [h.id(1)];
    let now = h.now;
    let one =
        h.m.clock(now)
            .input(|m, now| m.send(now, &peer, Some(&via), b"via one"))
            .unwrap();
    h.drain();
    assert_eq!((one.brokers, one.id), (1, MessageId(sent.id.0 + 1)));
    assert_eq!(
        (h.sides[0].published.len(), h.sides[1].published.len()),
        (1, 2)
    );
    let unknown = [BrokerSpec::new(Some("nowhere"), addr(9)).id];
    assert_eq!(
        h.m.clock(now)
            .input(|m, now| m.send(now, &peer, Some(&unknown), b"x")),
        Err(SendError::NoCommonBroker)
    );
    let too_big = vec![0; crate::envelope::MAX_PAYLOAD + 1];
    assert!(matches!(
        h.m.clock(now)
            .input(|m, now| m.send(now, &peer, None, &too_big)),
        Err(SendError::Seal(_))
    ));
    assert_eq!(h.m.machine.stats().sent, 2);
}

#[test]
fn close_is_idempotent_and_reports_closed_once() {
    let mut h = Harness::new(3);
    h.take();
    let sockets: Vec<SocketId> = h.sides.iter().map(|s| s.socket.unwrap()).collect();
    let now = h.now;
    h.m.clock(now).input(|m, now| m.close(now));
    h.drain();
    assert!(h.m.machine.is_closing());
    for s in &sockets {
        assert_eq!(h.closes[s], 1, "{s} closed once");
    }
    assert_eq!(h.take(), [RendezvousEvent::Closed]);
    assert_eq!(h.m.deadline(), None);
    assert_eq!(h.m.machine.connected_brokers(), 0);
    h.m.clock(now).input(|m, now| m.close(now));
    h.advance(Duration::from_secs(120));
    assert_eq!(h.take(), []);
    assert_eq!(h.closes.values().sum::<usize>(), 3);
    let peer = identity(2).public_key();
    // (At the current time: the checker refuses a clock set back.)
    assert_eq!(
        h.m.input(|m, now| m.send(now, &peer, None, b"x")),
        Err(SendError::Closed)
    );
    // Closing while a broker is between attempts closes only the live sockets.
    let mut h = Harness::new(2);
    let now = h.now;
    let failed = SocketOutcome::Failed {
        op: OpKind::Receive,
        destination: None,
        error: IoError::ConnectionReset,
    };
    h.m.clock(now).outcome(SocketId(BASE), failed);
    h.drain();
    h.m.clock(now).input(|m, now| m.close(now));
    h.drain();
    assert_eq!(h.closes.values().sum::<usize>(), 2);
    assert_eq!(h.take().last(), Some(&RendezvousEvent::Closed));
    assert_eq!(h.m.deadline(), None);
}

#[test]
fn configuration_errors() {
    let id = || identity(1);
    let err = |c: RendezvousConfig| Rendezvous::new(c, id(), 1, Instant::ZERO).unwrap_err();
    assert_eq!(
        err(RendezvousConfig::new(vec![], 0)),
        RendezvousConfigError::NoBrokers
    );
    let nine = (0..9).map(spec).collect();
    assert_eq!(
        err(RendezvousConfig::new(nine, 0)),
        RendezvousConfigError::TooManyBrokers
    );
    let twice = vec![spec(0), spec(1), spec(0)];
    assert_eq!(
        err(RendezvousConfig::new(twice, 0)),
        RendezvousConfigError::DuplicateBroker(spec(0).id)
    );
    let mut overflow = config(2);
    overflow.socket_base = SocketId(u32::MAX - SOCKETS_PER_BROKER);
    assert_eq!(err(overflow), RendezvousConfigError::SocketIdsOverflow);
    let mut fits = config(2);
    fits.socket_base = SocketId(u32::MAX - 2 * SOCKETS_PER_BROKER);
    assert!(Rendezvous::new(fits, id(), 1, Instant::ZERO).is_ok());
    let eight = (0..8).map(spec).collect();
    assert!(Rendezvous::new(RendezvousConfig::new(eight, 0), id(), 1, Instant::ZERO).is_ok());
}

#[test]
fn same_seed_same_outputs() {
    let run = || {
        let mut h = Harness::new(2);
        let now = h.now;
        h.m.clock(now)
            .input(|m, now| m.send(now, &identity(2).public_key(), None, b"d"))
            .unwrap();
        h.drain();
        (
            h.binds.clone(),
            h.sides
                .iter()
                .map(|s| s.published.clone())
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(run(), run());
}

mod receipts;

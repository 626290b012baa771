//! The scripted broker: answers socket intents, decodes what the client writes, encodes what the
//! test wants the broker to say, and records every output of the client.

use p2pd_proto::testing::{Driven, Output};
use std::collections::HashMap;

use super::*;

pub(super) const SOCKET_BASE: SocketId = SocketId(100);
pub(super) const KEEP_ALIVE: Duration = Duration::from_secs(30);
pub(super) const PING_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(20);
pub(super) const BOTH: [Protocol; 2] = [Protocol::V311, Protocol::V5];

pub(super) fn broker_addr() -> SocketAddr {
    "192.0.2.1:1883".parse().unwrap()
}

pub(super) fn local_addr() -> SocketAddr {
    "10.0.0.2:40000".parse().unwrap()
}

pub(super) fn config(protocol: Protocol) -> MqttConfig {
    let mut c = MqttConfig::new(broker_addr());
    c.protocol = protocol;
    c.keep_alive = KEEP_ALIVE;
    c.ping_timeout = PING_TIMEOUT;
    c.connect_timeout = CONNECT_TIMEOUT;
    c.backoff_initial = BACKOFF_INITIAL;
    c.backoff_max = BACKOFF_MAX;
    c.socket_base = SOCKET_BASE;
    c
}

pub(super) fn connack(code: u8) -> Packet {
    Packet::ConnAck {
        session_present: false,
        code,
        properties: ConnAckProperties::default(),
    }
}

pub(super) fn publish(topic: &str, qos: QoS, pkid: u16, dup: bool, payload: &[u8]) -> Packet {
    Packet::Publish {
        topic: topic.into(),
        qos,
        pkid,
        retain: false,
        dup,
        payload: payload.to_vec(),
    }
}

pub(super) struct Harness {
    /// The client; every input and drain goes through its contract checker.
    pub client: Driven<MqttClient>,
    pub now: Instant,
    /// The socket whose stream the broker talks on.
    pub current: Option<SocketId>,
    /// Every byte the client wrote, in order.
    pub wire: Vec<u8>,
    /// Packets the client sent and the test has not taken yet.
    pub received: Vec<Packet>,
    /// The last CONNECT the client sent.
    pub connect_packet: Option<Packet>,
    pub ops: Vec<SocketOp>,
    pub events: Vec<MqttEvent>,
    decoders: HashMap<SocketId, Decoder>,
    close_counts: HashMap<SocketId, usize>,
    closed_seen: bool,
}

impl Harness {
    pub fn new(config: MqttConfig, seed: u64) -> Self {
        let client = MqttClient::new(config, seed, Instant::ZERO);
        let mut client = Driven::new("mqtt client", client, |e| *e == MqttEvent::Closed);
        client.drain();
        let mut h = Self {
            client,
            now: Instant::ZERO,
            current: None,
            wire: Vec::new(),
            received: Vec::new(),
            connect_packet: None,
            ops: Vec::new(),
            events: Vec::new(),
            decoders: HashMap::new(),
            close_counts: HashMap::new(),
            closed_seen: false,
        };
        h.drain();
        h
    }

    /// Takes every output the client produced (drained through its contract checker), in order,
    /// and, as a runtime does, fires a deadline that is due (the settle point of the transmits
    /// just taken: the runtime took them all) and takes its outputs too.
    pub fn drain(&mut self) {
        self.take_outputs();
        if self.client.deadline().is_some_and(|d| d <= self.now) {
            self.client.clock(self.now).fire();
            self.take_outputs();
        }
    }

    fn take_outputs(&mut self) {
        for output in self.client.take().into_outputs() {
            match output {
                Output::Transmit(t, bytes) => {
                    assert!(!self.closed_seen, "transmit after Closed");
                    assert!(t.len > 0 && t.len == bytes.len());
                    assert_eq!(t.destination, broker_addr());
                    assert_eq!(
                        self.close_counts.get(&t.socket),
                        None,
                        "transmit on a closed socket"
                    );
                    self.wire.extend_from_slice(&bytes);
                    let protocol = self.client.machine.protocol();
                    let decoder = self
                        .decoders
                        .entry(t.socket)
                        .or_insert_with(|| Decoder::new(protocol, 1 << 24));
                    let mut rest = &bytes[..];
                    while !rest.is_empty() {
                        let n = decoder.push(rest).unwrap();
                        rest = &rest[n..];
                        while let Some(p) = decoder.next() {
                            let Ok(Decoded::Packet(p)) = p else {
                                panic!("the client sends valid MQTT, got {p:?}");
                            };
                            if matches!(p, Packet::Connect { .. }) {
                                self.connect_packet = Some(p.clone());
                            }
                            self.received.push(p);
                        }
                    }
                }
                Output::Op(op) => {
                    if let SocketOp::Close { socket } = op {
                        let n = self.close_counts.entry(socket).or_default();
                        *n += 1;
                        assert_eq!(*n, 1, "{socket} closed twice");
                        if self.current == Some(socket) {
                            self.current = None;
                        }
                    }
                    self.ops.push(op);
                }
                Output::Event(ev) => {
                    assert!(!self.closed_seen, "event after Closed: {ev:?}");
                    self.closed_seen |= ev == MqttEvent::Closed;
                    self.events.push(ev);
                }
            }
        }
        if self.closed_seen {
            assert_eq!(self.client.deadline(), None, "timer after Closed");
        }
    }

    /// The socket of the latest Bind intent.
    pub fn last_bind(&self) -> SocketId {
        self.ops
            .iter()
            .rev()
            .find_map(|op| match op {
                SocketOp::Bind { socket, .. } => Some(*socket),
                _ => None,
            })
            .expect("a Bind intent")
    }

    /// Answers the latest Bind and the Connect that follows: the client then sends CONNECT.
    pub fn accept_tcp(&mut self) {
        let socket = self.last_bind();
        self.client.clock(self.now).outcome(
            socket,
            SocketOutcome::Bound {
                local: local_addr(),
            },
        );
        self.drain();
        assert_eq!(
            self.ops.last(),
            Some(&SocketOp::Connect {
                socket,
                remote: broker_addr()
            })
        );
        self.client.clock(self.now).outcome(
            socket,
            SocketOutcome::Connected {
                local: local_addr(),
                remote: broker_addr(),
            },
        );
        self.current = Some(socket);
        self.drain();
    }

    /// TCP connect, CONNECT, CONNACK 0; clears the events and the CONNECT.
    pub fn connect(&mut self) {
        self.accept_tcp();
        let sent = self.take_packets();
        assert!(
            matches!(sent.as_slice(), [Packet::Connect { .. }]),
            "{sent:?}"
        );
        self.send(&connack(0));
        assert!(self.client.machine.is_connected(), "{:?}", self.events);
        self.events.clear();
    }

    /// The broker sends `packet` on the current stream.
    pub fn send(&mut self, packet: &Packet) {
        let mut bytes = Vec::new();
        encode(packet, self.client.machine.protocol(), &mut bytes).unwrap();
        self.send_raw(&bytes);
    }

    /// The broker sends raw bytes on the current stream.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let socket = self.current.expect("a connected stream");
        let verdict = self.client.clock(self.now).stream(socket, bytes);
        assert_eq!(verdict, Verdict::Consumed);
        self.drain();
    }

    /// Lets `d` pass, firing every deadline on the way at its own time.
    pub fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        for _ in 0..10_000 {
            match self.client.deadline() {
                Some(t) if t <= target => {
                    self.now = self.now.max(t);
                    self.client.clock(self.now).fire();
                    self.drain();
                }
                _ => {
                    self.now = target;
                    return;
                }
            }
        }
        panic!("the deadline does not move");
    }

    /// Forgets which sockets were closed (for tests whose socket ids repeat).
    pub fn close_counts_reset(&mut self) {
        self.close_counts.clear();
    }

    pub fn closes(&self, socket: SocketId) -> usize {
        self.close_counts.get(&socket).copied().unwrap_or(0)
    }

    pub fn take_packets(&mut self) -> Vec<Packet> {
        std::mem::take(&mut self.received)
    }

    /// The SUBSCRIBEs among the packets taken: (packet id, filters).
    pub fn take_subscribes(&mut self) -> Vec<(u16, Vec<SubscribeFilter>)> {
        self.take_packets()
            .into_iter()
            .filter_map(|p| match p {
                Packet::Subscribe { pkid, topics } => Some((pkid, topics)),
                _ => None,
            })
            .collect()
    }
}

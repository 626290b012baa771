//! Stateful fuzzing of the MQTT client machine: arbitrary socket outcomes (for the current socket
//! and for old or unknown ones), broker packets (well-formed, cut into arbitrary chunks, or raw
//! bytes), API calls and time steps, driven through the contract checker. The broker may send MQTT 5
//! CONNACK limits (Maximum Packet Size, Receive Maximum, Server Keep Alive), retained messages and
//! PUBLISH packets larger than the client's limit. Checks besides the contract: the client only
//! writes valid MQTT on open, connected sockets; one socket at a time, ids never reused; buffers
//! stay within their caps; a PUBACK is reported once per publish, never for a message dropped as
//! too large for the broker; a skipped PUBLISH really was over the limit; no QoS 1 PUBLISH beyond
//! the broker's Receive Maximum is outstanding, none beyond its Maximum Packet Size is written.
#![no_main]

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2pd_proto::testing::Driven;
use p2pd_proto::{Instant, IoError, OpKind, SocketId, SocketOp, SocketOutcome, TRANSMIT_BUFFER_LEN};
use p2pd_signaling::mqtt::{
    encode, ConnAckProperties, Decoded, Decoder, MqttClient, MqttConfig, MqttEvent, Packet, Protocol, PublishId,
    QoS,
};

const TOPICS: [&str; 4] = ["a", "node/x", "b/c", "p2pd/very/long/topic/name/for/the/size/limit"];
const MAX_PACKET: usize = 256;
const MAX_QUEUED: usize = 512;
const MAX_INFLIGHT: usize = 4;

fn broker() -> SocketAddr {
    "192.0.2.1:1883".parse().unwrap()
}

fn local() -> SocketAddr {
    "10.0.0.2:40000".parse().unwrap()
}

#[derive(Arbitrary, Debug)]
enum BrokerPacket {
    /// With MQTT 5 limits (ignored in 3.1.1): Maximum Packet Size 64 + 8 * size, Receive
    /// Maximum, Server Keep Alive.
    ConnAck { session_present: bool, code: u8, max_size: Option<u8>, receive_max: Option<u8>, keep_alive: Option<u8> },
    /// A 3.1.1 "unacceptable protocol version" CONNACK, whatever the protocol.
    V311Refusal,
    SubAck { which: u8, code: u8 },
    PubAck { which: u8 },
    Publish { topic: u8, qos: u8, which: u8, dup: bool, retain: bool, payload: Vec<u8> },
    PingResp,
    PingReq,
    Disconnect,
}

#[derive(Arbitrary, Debug)]
enum Outcome {
    Bound,
    Connected,
    PeerClosed,
    Failed { op: u8 },
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Answer the current socket's intent (or any outcome at all).
    Outcome(Outcome),
    /// Shortcut to depth: Bound, Connected and CONNACK 0 on the current socket.
    Handshake,
    /// An outcome for some other socket id (old, future or unknown).
    StaleOutcome { socket: u8, outcome: Outcome },
    /// Broker packets, encoded and cut at `cuts` into chunks.
    Broker { packets: Vec<BrokerPacket>, cuts: Vec<u8> },
    /// Raw bytes from the broker.
    Raw(Vec<u8>),
    /// Bytes on some other socket id.
    StaleBytes { socket: u8, data: Vec<u8> },
    Advance { ms: u16 },
    Subscribe { topic: u8, qos: u8 },
    Publish { topic: u8, len: u16, qos: u8 },
    /// Drain transmits with a small buffer.
    SmallBuffer { len: u8 },
    Close,
}

#[derive(Arbitrary, Debug)]
struct Input {
    seed: u64,
    v5: bool,
    fallback: bool,
    ops: Vec<Op>,
}

/// What the target knows of the client beyond the contract (the checker sees the rest).
#[derive(Default)]
struct Model {
    /// Sockets bound and not yet closed.
    open: BTreeSet<SocketId>,
    /// Sockets the client connected (answered `Connected`) and has not closed.
    streams: BTreeSet<SocketId>,
    /// Every socket closed.
    closed: BTreeSet<SocketId>,
    decoders: HashMap<SocketId, Decoder>,
    /// Packet ids the client used (for realistic acknowledgements).
    sent_pkids: Vec<u16>,
    published: HashSet<PublishId>,
    delivered: HashSet<PublishId>,
    /// Per stream: the properties of its first packet if that was a well-formed CONNACK 0 (the
    /// one the client accepted, if it accepted any), `None` if it was anything else.
    first: HashMap<SocketId, Option<ConnAckProperties>>,
    /// Raw bytes went down the current stream: what the client decoded is unknown.
    raw: bool,
    /// What the first packet of the last `encode_broker` batch was (see `first`).
    last_first: Option<Option<ConnAckProperties>>,
    /// QoS 1 PUBLISH packet ids written on the current connection and not acknowledged (as far
    /// as the target knows: never fewer than the client has).
    outstanding: HashSet<u16>,
}

impl Model {
    /// The socket of the client's latest Bind that is still open.
    fn current(&self) -> Option<SocketId> {
        self.open.iter().copied().max_by_key(|s| s.0)
    }

    /// Machine-specific checks on what the last input produced.
    fn check(&mut self, d: &mut Driven<MqttClient>) {
        let out = d.take();
        for (t, bytes) in out.transmits {
            assert!(t.len > 0 && bytes.len() == t.len);
            assert_eq!(t.destination, broker());
            assert!(self.streams.contains(&t.socket), "transmit on {} which is not a connected stream", t.socket);
            let protocol = d.machine.protocol();
            let decoder = self.decoders.entry(t.socket).or_insert_with(|| Decoder::new(protocol, 1 << 20));
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = decoder.push(rest).unwrap();
                rest = &rest[n..];
                while let Some(p) = decoder.next() {
                    let Ok(Decoded::Packet(p)) = p else { panic!("the client writes valid MQTT: {p:?}") };
                    assert!(!matches!(p, Packet::ConnAck { .. } | Packet::SubAck { .. } | Packet::PingResp));
                    let limits = if self.raw { None } else { self.first.get(&t.socket).copied().flatten() };
                    if let (Packet::Publish { qos: QoS::AtLeastOnce, pkid, .. }, Some(limits)) = (&p, limits) {
                        let mut wire = Vec::new();
                        encode(&p, protocol, &mut wire).unwrap();
                        if let Some(max) = limits.max_packet_size {
                            assert!(wire.len() <= max as usize, "a PUBLISH over the broker's limit");
                        }
                        self.outstanding.insert(*pkid);
                        if let Some(max) = limits.receive_maximum {
                            assert!(self.outstanding.len() <= usize::from(max), "over the broker's Receive Maximum");
                        }
                    }
                    match p {
                        Packet::Publish { pkid, .. } | Packet::Subscribe { pkid, .. } if pkid != 0 => {
                            if self.sent_pkids.len() >= 32 {
                                self.sent_pkids.remove(0);
                            }
                            self.sent_pkids.push(pkid);
                        }
                        _ => {}
                    }
                }
            }
        }
        for op in out.ops {
            match op {
                SocketOp::Bind { socket, .. } => {
                    assert!(!self.closed.contains(&socket), "{socket} reused (ids must not wrap here)");
                    self.open.insert(socket);
                }
                SocketOp::Connect { socket, remote } => {
                    assert!(self.open.contains(&socket));
                    assert_eq!(remote, broker());
                }
                SocketOp::Close { socket } => {
                    self.open.remove(&socket);
                    self.streams.remove(&socket);
                    self.closed.insert(socket);
                    self.raw = false;
                    self.outstanding.clear();
                }
                other => panic!("unexpected intent {other:?}"),
            }
        }
        for ev in out.events {
            match ev {
                MqttEvent::Delivered(id) | MqttEvent::TooLargeForBroker { id, .. } => {
                    assert!(self.published.contains(&id), "Delivered for an unknown id");
                    assert!(self.delivered.insert(id), "Delivered twice, or after it was dropped");
                }
                MqttEvent::Message { payload, .. } => assert!(payload.len() <= MAX_PACKET),
                MqttEvent::PublishSkipped { size, max, .. } => assert!(size > max && max == MAX_PACKET),
                _ => {}
            }
        }
        assert!(d.machine.queued_bytes() <= MAX_QUEUED);
        assert!(d.machine.inflight() <= MAX_INFLIGHT);
        assert!(self.open.len() <= 1, "more than one socket open: {:?}", self.open);
        if d.checker.finished() {
            assert!(self.open.is_empty(), "socket left open after Closed");
        }
    }

    fn outcome(&mut self, d: &mut Driven<MqttClient>, socket: SocketId, outcome: &Outcome) {
        let outcome = match outcome {
            Outcome::Bound => SocketOutcome::Bound { local: local() },
            Outcome::Connected => {
                if self.open.contains(&socket) {
                    self.streams.insert(socket);
                }
                SocketOutcome::Connected { local: local(), remote: broker() }
            }
            Outcome::PeerClosed => SocketOutcome::PeerClosed,
            Outcome::Failed { op } => {
                let kinds = [OpKind::Bind, OpKind::Connect, OpKind::Send, OpKind::Receive];
                SocketOutcome::Failed {
                    op: kinds[usize::from(*op) % kinds.len()],
                    destination: None,
                    error: IoError::ConnectionReset,
                }
            }
        };
        d.outcome(socket, outcome);
    }

    fn pkid(&self, which: u8) -> u16 {
        if self.sent_pkids.is_empty() || which >= 200 {
            u16::from(which).max(1)
        } else {
            self.sent_pkids[usize::from(which) % self.sent_pkids.len()]
        }
    }

    /// Notes what the first packet on the current stream is (once per stream).
    fn note_first(&mut self, socket: SocketId, first: Option<ConnAckProperties>) {
        if self.streams.contains(&socket) {
            self.first.entry(socket).or_insert(first);
        }
    }

    /// `packet`'s properties if it is a CONNACK that accepts the connection.
    fn accepting(packet: &Packet) -> Option<ConnAckProperties> {
        match packet {
            Packet::ConnAck { code: 0, properties, .. } => Some(*properties),
            _ => None,
        }
    }

    fn encode_broker(&mut self, protocol: Protocol, packet: &BrokerPacket, out: &mut Vec<u8>) {
        let packet = match packet {
            BrokerPacket::ConnAck { session_present, code, max_size, receive_max, keep_alive } => {
                let codes: &[u8] = match protocol {
                    Protocol::V311 => &[0, 1, 2, 3, 4, 5],
                    Protocol::V5 => &[0, 0x80, 0x84, 0x87, 0x88, 0x95],
                };
                let properties = match protocol {
                    Protocol::V311 => ConnAckProperties::default(),
                    Protocol::V5 => ConnAckProperties {
                        max_packet_size: max_size.map(|s| 64 + 8 * u32::from(s)),
                        receive_maximum: receive_max.map(|r| u16::from(r).max(1)),
                        server_keep_alive: keep_alive.map(u16::from),
                    },
                };
                Packet::ConnAck {
                    session_present: *session_present,
                    code: codes[usize::from(*code) % codes.len()],
                    properties,
                }
            }
            BrokerPacket::V311Refusal => {
                if out.is_empty() {
                    self.last_first = Some(None);
                }
                out.extend_from_slice(&[0x20, 0x02, 0x00, 0x01]);
                return;
            }
            BrokerPacket::SubAck { which, code } => {
                let codes = [0u8, 1, 2, 0x80];
                Packet::SubAck { pkid: self.pkid(*which), codes: vec![codes[usize::from(*code) % 4]] }
            }
            BrokerPacket::PubAck { which } => Packet::PubAck { pkid: self.pkid(*which) },
            BrokerPacket::Publish { topic, qos, which, dup, retain, payload } => {
                let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(*qos) % 3];
                Packet::Publish {
                    topic: TOPICS[usize::from(*topic) % TOPICS.len()].into(),
                    qos,
                    pkid: if qos == QoS::AtMostOnce { 0 } else { u16::from(*which).max(1) },
                    retain: *retain,
                    dup: *dup,
                    payload: payload.clone(),
                }
            }
            BrokerPacket::PingResp => Packet::PingResp,
            BrokerPacket::PingReq => Packet::PingReq,
            BrokerPacket::Disconnect => Packet::Disconnect,
        };
        if let Packet::PubAck { pkid } = packet {
            self.outstanding.remove(&pkid);
        }
        let before = out.len();
        if encode(&packet, protocol, out).is_ok() && before == 0 {
            self.last_first = Some(Self::accepting(&packet));
        }
    }

}

fuzz_target!(|input: Input| {
    let mut config = MqttConfig::new(broker());
    config.protocol = if input.v5 { Protocol::V5 } else { Protocol::V311 };
    config.fallback_to_v311 = input.fallback;
    config.keep_alive = Duration::from_secs(2);
    config.ping_timeout = Duration::from_secs(1);
    config.connect_timeout = Duration::from_secs(3);
    config.max_packet_size = MAX_PACKET;
    config.max_inflight = MAX_INFLIGHT;
    config.max_queued_bytes = MAX_QUEUED;
    config.max_subscriptions = 3;
    config.max_pending_events = 16;
    config.backoff_initial = Duration::from_millis(100);
    config.backoff_max = Duration::from_secs(2);
    config.socket_base = SocketId(1000);
    config.socket_ids = 1_000_000;
    let client = MqttClient::new(config, input.seed, Instant::ZERO);
    let mut d = Driven::new("mqtt client", client, |e| matches!(e, MqttEvent::Closed));
    let mut m = Model::default();
    d.drain();
    m.check(&mut d);
    for op in input.ops.into_iter().take(256) {
        let protocol = d.machine.protocol();
        match op {
            Op::Outcome(outcome) => {
                if let Some(socket) = m.current() {
                    m.outcome(&mut d, socket, &outcome);
                }
            }
            Op::Handshake => {
                if let Some(socket) = m.current() {
                    m.outcome(&mut d, socket, &Outcome::Bound);
                    m.check(&mut d);
                    m.outcome(&mut d, socket, &Outcome::Connected);
                    m.check(&mut d);
                    let mut bytes = Vec::new();
                    let connack = BrokerPacket::ConnAck {
                        session_present: false,
                        code: 0,
                        max_size: None,
                        receive_max: None,
                        keep_alive: None,
                    };
                    m.encode_broker(d.machine.protocol(), &connack, &mut bytes);
                    let _ = d.stream(socket, &bytes);
                }
            }
            Op::StaleOutcome { socket, outcome } => m.outcome(&mut d, SocketId(995 + u32::from(socket % 16)), &outcome),
            Op::Broker { packets, cuts } => {
                let mut bytes = Vec::new();
                m.last_first = None;
                for p in packets.iter().take(16) {
                    m.encode_broker(protocol, p, &mut bytes);
                }
                if let Some(socket) = m.current() {
                    if let Some(first) = m.last_first {
                        m.note_first(socket, first);
                    }
                    let mut rest = bytes.as_slice();
                    for cut in cuts.iter().take(16) {
                        let n = usize::from(*cut).min(rest.len());
                        let (chunk, tail) = rest.split_at(n);
                        let _ = d.stream(socket, chunk);
                        rest = tail;
                    }
                    let _ = d.stream(socket, rest);
                }
            }
            Op::Raw(data) => {
                if let Some(socket) = m.current() {
                    if !data.is_empty() {
                        m.note_first(socket, None);
                        m.raw = true;
                    }
                    let _ = d.stream(socket, &data);
                }
            }
            Op::StaleBytes { socket, data } => {
                let _ = d.stream(SocketId(995 + u32::from(socket % 16)), &data);
            }
            Op::Advance { ms } => d.advance(Duration::from_millis(u64::from(ms))),
            Op::Subscribe { topic, qos } => {
                let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(qos) % 3];
                let _ = d.input(|c, now| c.subscribe(now, TOPICS[usize::from(topic) % TOPICS.len()], qos));
            }
            Op::Publish { topic, len, qos } => {
                let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(qos) % 3];
                let payload = vec![0x5A; usize::from(len % 400)];
                let topic = TOPICS[usize::from(topic) % TOPICS.len()];
                if let Ok(id) = d.input(|c, now| c.publish(now, topic, &payload, qos)) {
                    assert!(m.published.insert(id), "publish id reused");
                }
            }
            // Drain transmits with a small buffer.
            Op::SmallBuffer { len } => {
                d.set_buffer_len(usize::from(len % 16).max(1));
                d.drain();
                d.set_buffer_len(TRANSMIT_BUFFER_LEN);
            }
            Op::Close => d.input(|c, now| c.close(now)),
        }
        m.check(&mut d);
    }
    // Clean-up: close twice, everything released, each socket closed exactly once.
    d.input(|c, now| c.close(now));
    d.input(|c, now| c.close(now));
    m.check(&mut d);
    assert!(d.checker.finished());
    d.checker.assert_all_closed();
    d.now = d.now.saturating_add(Duration::from_secs(3600));
    d.fire();
    m.check(&mut d);
});

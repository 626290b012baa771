//! Stateful fuzzing of the MQTT client machine: arbitrary socket outcomes (for the current socket
//! and for old or unknown ones), broker packets (well-formed, cut into arbitrary chunks, or raw
//! bytes), API calls and time steps. Checks the contract's invariants, not just "no panic":
//! the client only writes valid MQTT on open, connected sockets; every socket it opens is
//! closed exactly once; buffers stay within their caps; timers always move forward; a PUBACK is
//! reported once per publish; nothing happens after `Closed`.
#![no_main]

use p2pd_proto::Machine;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2pd_proto::{Instant, IoError, OpKind, SocketId, SocketOp, SocketOutcome, TRANSMIT_BUFFER_LEN};
use p2pd_signaling::mqtt::{
    encode, Decoder, MqttClient, MqttConfig, MqttEvent, Packet, Protocol, PublishId, QoS,
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
    ConnAck { session_present: bool, code: u8 },
    /// A 3.1.1 "unacceptable protocol version" CONNACK, whatever the protocol.
    V311Refusal,
    SubAck { which: u8, code: u8 },
    PubAck { which: u8 },
    Publish { topic: u8, qos: u8, which: u8, dup: bool, payload: Vec<u8> },
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

struct Harness {
    client: MqttClient,
    now: Instant,
    /// Sockets bound and not yet closed.
    open: HashSet<SocketId>,
    /// Sockets the client connected (answered `Connected`) and has not closed.
    streams: HashSet<SocketId>,
    closed: HashMap<SocketId, usize>,
    decoders: HashMap<SocketId, Decoder>,
    /// Packet ids the client used (for realistic acknowledgements).
    sent_pkids: Vec<u16>,
    published: HashSet<PublishId>,
    delivered: HashSet<PublishId>,
    closed_event: bool,
}

impl Harness {
    /// The socket of the client's latest Bind that is still open.
    fn current(&self) -> Option<SocketId> {
        self.open.iter().copied().max_by_key(|s| s.0)
    }

    fn drain(&mut self, buf_len: usize) {
        let mut buf = vec![0u8; buf_len.max(1)];
        loop {
            let mut progressed = false;
            while let Some(t) = self.client.poll_transmit(&mut buf) {
                progressed = true;
                assert!(!self.closed_event, "transmit after Closed");
                assert!(t.len > 0 && t.len <= buf.len());
                assert_eq!(t.destination, broker());
                assert!(self.streams.contains(&t.socket), "transmit on {} which is not a connected stream", t.socket);
                let protocol = self.client.protocol();
                let decoder = self.decoders.entry(t.socket).or_insert_with(|| Decoder::new(protocol, 1 << 20));
                let mut rest = &buf[..t.len];
                while !rest.is_empty() {
                    let n = decoder.push(rest).unwrap();
                    rest = &rest[n..];
                    while let Some(p) = decoder.next() {
                        let p = p.expect("the client writes valid MQTT");
                        assert!(!matches!(p, Packet::ConnAck { .. } | Packet::SubAck { .. } | Packet::PingResp));
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
            while let Some(op) = self.client.poll_socket_op() {
                progressed = true;
                match op {
                    SocketOp::Bind { socket, .. } => {
                        assert!(!self.closed_event, "bind after Closed");
                        assert!(self.open.insert(socket), "{socket} bound while open");
                        assert!(!self.closed.contains_key(&socket), "{socket} reused (ids must not wrap here)");
                    }
                    SocketOp::Connect { socket, remote } => {
                        assert!(self.open.contains(&socket));
                        assert_eq!(remote, broker());
                    }
                    SocketOp::Close { socket } => {
                        assert!(self.open.remove(&socket), "{socket} closed but not open");
                        self.streams.remove(&socket);
                        *self.closed.entry(socket).or_default() += 1;
                    }
                    other => panic!("unexpected intent {other:?}"),
                }
            }
            while let Some(ev) = self.client.poll_event() {
                progressed = true;
                assert!(!self.closed_event, "event after Closed: {ev:?}");
                match ev {
                    MqttEvent::Closed => self.closed_event = true,
                    MqttEvent::Delivered(id) => {
                        assert!(self.published.contains(&id), "Delivered for an unknown id");
                        assert!(self.delivered.insert(id), "Delivered twice");
                    }
                    MqttEvent::Message { payload, .. } => assert!(payload.len() <= MAX_PACKET),
                    _ => {}
                }
            }
            if !progressed {
                break;
            }
        }
        assert!(self.client.queued_bytes() <= MAX_QUEUED);
        assert!(self.client.inflight() <= MAX_INFLIGHT);
        assert!(self.open.len() <= 1, "more than one socket open: {:?}", self.open);
        if self.closed_event {
            assert_eq!(self.client.poll_timeout(), None, "timer after Closed");
            assert!(self.open.is_empty(), "socket left open after Closed");
        }
    }

    fn outcome(&mut self, socket: SocketId, outcome: &Outcome) {
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
        self.client.handle_socket_result(self.now, socket, outcome);
    }

    fn pkid(&self, which: u8) -> u16 {
        if self.sent_pkids.is_empty() || which >= 200 {
            u16::from(which).max(1)
        } else {
            self.sent_pkids[usize::from(which) % self.sent_pkids.len()]
        }
    }

    fn encode_broker(&self, packet: &BrokerPacket, out: &mut Vec<u8>) {
        let protocol = self.client.protocol();
        let packet = match packet {
            BrokerPacket::ConnAck { session_present, code } => {
                let codes: &[u8] = match protocol {
                    Protocol::V311 => &[0, 1, 2, 3, 4, 5],
                    Protocol::V5 => &[0, 0x80, 0x84, 0x87, 0x88, 0x95],
                };
                Packet::ConnAck { session_present: *session_present, code: codes[usize::from(*code) % codes.len()] }
            }
            BrokerPacket::V311Refusal => {
                out.extend_from_slice(&[0x20, 0x02, 0x00, 0x01]);
                return;
            }
            BrokerPacket::SubAck { which, code } => {
                let codes = [0u8, 1, 2, 0x80];
                Packet::SubAck { pkid: self.pkid(*which), codes: vec![codes[usize::from(*code) % 4]] }
            }
            BrokerPacket::PubAck { which } => Packet::PubAck { pkid: self.pkid(*which) },
            BrokerPacket::Publish { topic, qos, which, dup, payload } => {
                let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(*qos) % 3];
                Packet::Publish {
                    topic: TOPICS[usize::from(*topic) % TOPICS.len()].into(),
                    qos,
                    pkid: if qos == QoS::AtMostOnce { 0 } else { u16::from(*which).max(1) },
                    retain: false,
                    dup: *dup,
                    payload: payload.clone(),
                }
            }
            BrokerPacket::PingResp => Packet::PingResp,
            BrokerPacket::PingReq => Packet::PingReq,
            BrokerPacket::Disconnect => Packet::Disconnect,
        };
        let _ = encode(&packet, protocol, out);
    }

    fn stream(&mut self, socket: SocketId, data: &[u8]) {
        let _ = self.client.handle_stream(self.now, socket, data);
    }

    fn fire_timers(&mut self) {
        for _ in 0..64 {
            match self.client.poll_timeout() {
                Some(d) if d <= self.now => {
                    self.client.handle_timeout(self.now);
                    self.drain(TRANSMIT_BUFFER_LEN);
                    if let Some(next) = self.client.poll_timeout() {
                        assert!(next > self.now, "timer did not move: {next:?} <= {:?}", self.now);
                    }
                }
                _ => return,
            }
        }
        panic!("timers keep firing");
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
    let mut h = Harness {
        client: MqttClient::new(config, input.seed, Instant::ZERO),
        now: Instant::ZERO,
        open: HashSet::new(),
        streams: HashSet::new(),
        closed: HashMap::new(),
        decoders: HashMap::new(),
        sent_pkids: Vec::new(),
        published: HashSet::new(),
        delivered: HashSet::new(),
        closed_event: false,
    };
    h.drain(TRANSMIT_BUFFER_LEN);
    let mut small_buffer = None;
    for op in input.ops.into_iter().take(256) {
        match op {
            Op::Outcome(outcome) => {
                if let Some(socket) = h.current() {
                    h.outcome(socket, &outcome);
                }
            }
            Op::Handshake => {
                if let Some(socket) = h.current() {
                    h.outcome(socket, &Outcome::Bound);
                    h.drain(TRANSMIT_BUFFER_LEN);
                    h.outcome(socket, &Outcome::Connected);
                    h.drain(TRANSMIT_BUFFER_LEN);
                    let mut bytes = Vec::new();
                    h.encode_broker(&BrokerPacket::ConnAck { session_present: false, code: 0 }, &mut bytes);
                    h.stream(socket, &bytes);
                }
            }
            Op::StaleOutcome { socket, outcome } => h.outcome(SocketId(995 + u32::from(socket % 16)), &outcome),
            Op::Broker { packets, cuts } => {
                let mut bytes = Vec::new();
                for p in packets.iter().take(16) {
                    h.encode_broker(p, &mut bytes);
                }
                if let Some(socket) = h.current() {
                    let mut rest = bytes.as_slice();
                    for cut in cuts.iter().take(16) {
                        let n = usize::from(*cut).min(rest.len());
                        let (chunk, tail) = rest.split_at(n);
                        h.stream(socket, chunk);
                        rest = tail;
                    }
                    h.stream(socket, rest);
                }
            }
            Op::Raw(data) => {
                if let Some(socket) = h.current() {
                    h.stream(socket, &data);
                }
            }
            Op::StaleBytes { socket, data } => h.stream(SocketId(995 + u32::from(socket % 16)), &data),
            Op::Advance { ms } => {
                h.now = h.now.saturating_add(Duration::from_millis(u64::from(ms)));
                h.fire_timers();
            }
            Op::Subscribe { topic, qos } => {
                let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(qos) % 3];
                let _ = h.client.subscribe(h.now, TOPICS[usize::from(topic) % TOPICS.len()], qos);
            }
            Op::Publish { topic, len, qos } => {
                let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(qos) % 3];
                let payload = vec![0x5A; usize::from(len % 400)];
                if let Ok(id) = h.client.publish(h.now, TOPICS[usize::from(topic) % TOPICS.len()], &payload, qos) {
                    assert!(h.published.insert(id), "publish id reused");
                }
            }
            Op::SmallBuffer { len } => small_buffer = Some(usize::from(len % 16)),
            Op::Close => h.client.close(h.now),
        }
        h.drain(small_buffer.take().unwrap_or(TRANSMIT_BUFFER_LEN));
    }
    // Clean-up: close twice, everything released, each socket closed exactly once.
    h.client.close(h.now);
    h.client.close(h.now);
    h.drain(TRANSMIT_BUFFER_LEN);
    assert!(h.closed_event);
    assert!(h.open.is_empty());
    assert!(h.closed.values().all(|n| *n == 1));
    assert_eq!(h.client.poll_timeout(), None);
    h.client.handle_timeout(h.now.saturating_add(Duration::from_secs(3600)));
    h.drain(TRANSMIT_BUFFER_LEN);
});

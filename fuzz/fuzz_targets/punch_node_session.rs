//! Stateful fuzzing of the composite punching node (`PunchNode`: rendezvous over MQTT, STUN-over-TCP
//! probes, the puncher, the punched stream), driven through the contract checker. The target plays
//! the runtime and everyone the node talks to: socket outcomes for its intents (and for any id),
//! the broker (connection up, PUBLISH packets carrying punch messages sealed by the real peer key:
//! offers, answers echoing the node's offers, acks of its answers, raw and replayed ones), the STUN
//! server (genuine binding responses to the probes' requests), the peer on the punch streams (valid
//! or broken hellos, the CHOSEN marker, junk), time steps, and the node's API (`punch`, `send`,
//! `finish`, `close`), including refused stream transmits (flow control).
//!
//! Checks besides the contract: socket ids in the node's ranges; transmits only on connected, not
//! shut down streams: valid MQTT to the broker (its punch signals open for the peer and decode),
//! valid STUN from the probes, a hello with our node id then at most the marker on punch streams,
//! and on the punched stream exactly the bytes given to `send`, in order, refused transmits sent
//! again; `Connected` once, for the peer; `Data` only after it, equal to what arrived on the
//! stream; `StreamClosed` at most once, after `Connected`; `send` accepted only while connected.
#![no_main]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2pd_proto::stun::{Attribute, Class, Header, Message as Stun, MessageWriter, TransactionId};
use p2pd_proto::testing::{pick, Driven, Output, SocketState, SocketTable};
use p2pd_proto::{Instant, IoError, OpKind, SocketId, SocketOp, SocketOutcome, Transport};
use p2pd_punch::message::{AbortReason, Hello, CHOSEN, HELLO_LEN};
use p2pd_punch::node::{NodeEvent, NodePart, PunchNode, PunchNodeConfig};
use p2pd_punch::{Message, NodeId, PunchCandidate as Candidate, SessionId};
use p2pd_signaling::envelope::NONCE_LEN;
use p2pd_signaling::mqtt::{encode, Decoded, Decoder, Packet, Protocol, QoS};
use p2pd_signaling::rendezvous::payload::{self, Content};
use p2pd_signaling::rendezvous::{topic_for, BrokerSpec};
use p2pd_signaling::{seal, Identity, Opener, RendezvousConfig};

const EPOCH_MS: u64 = 1_700_000_000_000;

fn stun_server() -> SocketAddr {
    "192.0.2.1:3478".parse().unwrap()
}

fn broker() -> SocketAddr {
    "192.0.2.10:1883".parse().unwrap()
}

fn local_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))
}

/// 0: the node, 1: its peer, 2: a stranger.
fn keys() -> &'static [Identity; 3] {
    static KEYS: OnceLock<[Identity; 3]> = OnceLock::new();
    KEYS.get_or_init(|| std::array::from_fn(|i| Identity::from_secret_bytes(&[i as u8 + 1; 32]).unwrap()))
}

fn node_id(k: usize) -> NodeId {
    keys()[k].node_id()
}

#[derive(Arbitrary, Debug)]
enum Signal {
    /// The peer offers (a new session, or the current one with some round).
    Offer { new_session: bool, round_delta: i8, offset_ms: i16, cands: u8, port: u16 },
    /// The peer answers one of the node's offers (clock offset, processing time, lead).
    Answer { which: u8, offset_ms: i16, proc_ms: u8, lead_ms: u16, cands: u8, port: u16 },
    /// The peer acknowledges the node's latest answer (`meet_delta` 0 is exact).
    Ack { meet_delta: i8, uncertainty_ms: u8 },
    Abort { reason: u8 },
    /// The node's latest signal, back as if from the peer.
    Echo,
    /// Any payload behind the punch tag.
    Raw(Vec<u8>),
    /// An earlier sealed signal again (another copy, a replay).
    Copy { which: u8 },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Fail {
    Refused,
    Reset,
    TimedOut,
    InUse,
}

impl Fail {
    fn io(self) -> IoError {
        match self {
            Fail::Refused => IoError::ConnectionRefused,
            Fail::Reset => IoError::ConnectionReset,
            Fail::TimedOut => IoError::TimedOut,
            Fail::InUse => IoError::AddrInUse,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Punch { stranger: bool },
    /// The broker connection comes up as far as it can (bind, connect, CONNACK, SUBACK, PINGRESP).
    BrokerUp,
    /// A punch signal through the broker, from the peer (or the stranger), cut in two.
    Signal { signal: Signal, stranger: bool, cut: u16 },
    /// A probe gets as far as it can: bind, connect, then the STUN server's answer.
    ProbeUp { which: u8, mapped_port: u16, error: bool },
    BindResult { which: u8, fail: Option<Fail> },
    AllBound,
    /// Everything goes well for a while: every pending bind, connect and accept succeeds, the
    /// broker comes up, every probe is answered (mapped ports from `port`).
    Settle { port: u16 },
    /// A whole punch as a friendly world plays it (so the fuzzer starts from the deep states):
    /// the node punches the peer, everything settles, the peer answers its offer at once with a
    /// meet `lead_ms` ahead, time runs to the meet, connects and accepts succeed, the peer's
    /// hellos (with the marker, when the peer leads) arrive on every punch stream.
    Happy { port: u16, lead_ms: u8 },
    ConnectResult { which: u8, fail: Option<Fail> },
    AcceptResult { which: u8, fail: Option<Fail>, remote: u8 },
    /// A stream ends (EOF) or fails.
    StreamEnd { which: u8, fail: Option<Fail> },
    /// Some outcome for any socket id.
    Wild { id: u32, kind: u8 },
    /// The peer's hello on a punch stream, maybe the marker and more, cut in two.
    Hello { which: u8, valid: bool, chosen: bool, extra: Vec<u8>, cut: u8 },
    /// Bytes on any stream.
    Bytes { which: u8, data: Vec<u8> },
    /// The runtime refuses the last transmits on the punched stream (its buffer is full).
    Refuse { n: u8 },
    Send { len: u16 },
    Finish,
    Advance { ms: u16 },
    ToDeadline { extra_ms: u8 },
    Jump { secs: u8 },
    Close,
}

#[derive(Arbitrary, Debug)]
struct Input {
    seed: u64,
    ports_per_round: u8,
    window_ms: u16,
    lead_ms: u16,
    ops: Vec<Op>,
}

#[derive(Default)]
struct BrokerLink {
    socket: Option<SocketId>,
    decoder: Option<Decoder>,
    connect_seen: bool,
    connack_sent: bool,
    subscribes: Vec<u16>,
    pings: usize,
    next_pkid: u16,
}

struct H {
    d: Driven<PunchNode>,
    /// Which part of the node opened each socket (asked of the node when it named the socket).
    parts: HashMap<SocketId, NodePart>,
    t: SocketTable,
    link: BrokerLink,
    /// The probes' Binding request ids, by socket.
    requests: HashMap<SocketId, TransactionId>,
    /// Bytes written on punch streams.
    punch_tx: HashMap<SocketId, usize>,
    /// (session, round, t1) of the node's offers; its latest answer's (session, round, meet).
    offers: Vec<(SessionId, u8, u64)>,
    answer: Option<(SessionId, u8, u64)>,
    session: Option<SessionId>,
    round: u8,
    last_signal: Option<Vec<u8>>,
    /// Envelopes sealed to the node, for replays.
    sealed: Vec<Vec<u8>>,
    counter: u32,
    /// The key the node signals (1: the peer, 2: the stranger), once it does.
    peer: Option<usize>,
    /// The punched stream, once `Connected`.
    winner: Option<SocketId>,
    connected: bool,
    stream_closed: bool,
    shut: bool,
    /// Bytes `send` accepted, and the stream transmits the runtime took.
    sent: Vec<u8>,
    taken: Vec<u8>,
    /// Lengths of the stream transmits since the node's last settle point (not refused).
    unsettled: Vec<usize>,
    data: Vec<Vec<u8>>,
}


fn is_stream(s: &SocketState) -> bool {
    matches!(s, SocketState::Stream { .. })
}

impl H {
    /// The part of the node that opened `socket`.
    fn part(&self, socket: SocketId) -> Option<NodePart> {
        self.parts.get(&socket).copied()
    }

    fn wall_ns(&self) -> u64 {
        EPOCH_MS * 1_000_000 + self.d.now.as_nanos()
    }

    /// Checks what the last input produced, in order.
    fn check(&mut self) {
        for out in self.d.take().into_outputs() {
            match out {
                Output::Transmit(t, bytes) => self.transmit(t.socket, t.destination, &bytes),
                Output::Op(op) => self.op(op),
                Output::Event(ev) => self.event(ev),
            }
        }
        if self.winner.is_none() && self.connected {
            self.winner = self.d.machine.stream_socket();
        }
        assert!(self.sent.starts_with(&self.taken), "the punched stream carries what was sent, in order");
        assert!(self.d.machine.queued() <= p2pd_punch::node::SEND_BUFFER);
    }

    fn transmit(&mut self, socket: SocketId, destination: SocketAddr, bytes: &[u8]) {
        assert!(self.parts.contains_key(&socket), "transmit on {socket}, which the node never opened");
        let Some(SocketState::Stream { remote, shut, .. }) = self.t.get(socket) else {
            panic!("transmit on {socket} which is not a connected stream: {:?}", self.t.get(socket));
        };
        assert!(!shut, "transmit on {socket} after its Shutdown");
        assert_eq!(destination, remote);
        if Some(socket) == self.winner {
            self.taken.extend_from_slice(bytes);
            self.unsettled.push(bytes.len());
        } else if self.part(socket) == Some(NodePart::Signaling) {
            self.broker_reads(socket, bytes);
        } else if self.part(socket) == Some(NodePart::Probe) {
            let m = Stun::decode(bytes).expect("a probe sends valid STUN");
            match m.class() {
                Class::Request => {
                    assert!(self.requests.insert(socket, m.transaction_id()).is_none(), "one request per probe");
                }
                Class::Indication => {}
                c => panic!("a probe sent a {c:?}"),
            }
        } else {
            let tx = self.punch_tx.entry(socket).or_default();
            if *tx == 0 {
                let h = Hello::decode(bytes).expect("the first bytes on a punch stream are a hello");
                assert_eq!(h.node_id, node_id(0));
            } else {
                assert_eq!((*tx, bytes), (HELLO_LEN, &[CHOSEN][..]), "a hello then at most the marker");
            }
            *tx += bytes.len();
        }
    }

    fn broker_reads(&mut self, socket: SocketId, bytes: &[u8]) {
        assert_eq!(self.link.socket, Some(socket));
        let decoder = self.link.decoder.get_or_insert_with(|| Decoder::new(Protocol::V311, 1 << 20));
        assert_eq!(decoder.push(bytes).unwrap(), bytes.len());
        let mut packets = Vec::new();
        while let Some(p) = decoder.next() {
            let Ok(Decoded::Packet(p)) = p else { panic!("the node writes valid MQTT: {p:?}") };
            packets.push(p);
        }
        for p in packets {
            match p {
                Packet::Connect { .. } => self.link.connect_seen = true,
                Packet::Subscribe { pkid, .. } => self.link.subscribes.push(pkid),
                Packet::PingReq => self.link.pings += 1,
                Packet::Publish { topic, payload, .. } => {
                    // The node signals its one peer (the peer or the stranger, whoever it punches
                    // or answers first): the envelope opens for it and holds a punch message.
                    let to = (1..3).find(|&k| topic == topic_for(&keys()[k].node_id())).expect("a signal to a known key");
                    assert_eq!(*self.peer.get_or_insert(to), to, "signals to two peers");
                    let mut opener = Opener::with_window(4, u64::MAX / 4, u64::MAX / 4);
                    let opened = opener.open(&keys()[to], 0, &payload).expect("the node's envelope opens for the peer");
                    let Ok(Content::Message { payload, wants_receipt: false }) = payload::parse(&opened.payload) else {
                        panic!("a rendezvous message without a receipt request");
                    };
                    let msg = Message::decode(payload).expect("a punch message");
                    self.learn(&msg);
                    self.last_signal = Some(payload.to_vec());
                }
                Packet::PubAck { .. } | Packet::Disconnect => {}
                other => panic!("the node sent a broker's packet: {other:?}"),
            }
        }
    }

    /// Remembers what the node's signal says, for the peer's answers.
    fn learn(&mut self, msg: &Message) {
        self.session = Some(msg.session());
        match *msg {
            Message::Offer { session, round, t1, .. } => {
                if self.offers.len() >= 16 {
                    self.offers.remove(0);
                }
                self.offers.push((session, round, t1));
                self.round = round;
            }
            Message::Answer { session, round, meet, .. } => {
                self.answer = Some((session, round, meet));
                self.round = round;
            }
            _ => {}
        }
    }

    fn op(&mut self, op: SocketOp) {
        let socket = op.socket();
        if matches!(op, SocketOp::Bind { .. } | SocketOp::Accept { .. }) {
            // The node knows the part while the socket is open; a socket opened and closed within
            // one drain is forgotten by then (its part is only needed while it is open).
            match self.d.machine.socket_part(socket) {
                Some(part) => {
                    self.parts.insert(socket, part);
                }
                None => {
                    self.parts.remove(&socket);
                }
            }
        } else {
            assert!(self.parts.contains_key(&socket) || matches!(op, SocketOp::Close { .. }), "{op:?} on a socket the node never opened");
        }
        let before = self.t.apply(&op);
        match op {
            SocketOp::Bind { transport, .. } => {
                assert_eq!(transport, Transport::Tcp);
                self.requests.remove(&socket);
                self.punch_tx.remove(&socket);
                if self.part(socket) == Some(NodePart::Signaling) {
                    self.link = BrokerLink { socket: Some(socket), next_pkid: self.link.next_pkid, ..BrokerLink::default() };
                }
            }
            SocketOp::Connect { remote, .. } => {
                assert!(matches!(before, Some(SocketState::Bound { .. })), "connect on {socket} in state {before:?}");
                if self.part(socket) == Some(NodePart::Signaling) {
                    assert_eq!(remote, broker());
                } else if self.part(socket) == Some(NodePart::Probe) {
                    assert_eq!(remote, stun_server());
                }
            }
            SocketOp::Listen { .. } => {
                assert!(matches!(before, Some(SocketState::Bound { .. })), "listen on {socket} in state {before:?}");
            }
            SocketOp::Accept { listener, .. } => {
                assert!(matches!(self.t.get(listener), Some(SocketState::Listening { .. })), "accept on {listener} which does not listen");
            }
            SocketOp::Shutdown { .. } => {
                assert_eq!(Some(socket), self.winner, "only the punched stream is shut down");
                assert!(is_stream(&before.unwrap()));
                self.shut = true;
            }
            SocketOp::Close { .. } => {
                if self.link.socket == Some(socket) {
                    self.link.socket = None;
                }
            }
            other => panic!("unexpected intent {other:?}"),
        }
    }

    fn event(&mut self, ev: NodeEvent) {
        match ev {
            NodeEvent::Connected { peer, .. } => {
                assert!(!self.connected, "two Connected");
                assert!(peer == keys()[1].public_key() || peer == keys()[2].public_key());
                if let Some(k) = self.peer {
                    assert_eq!(peer, keys()[k].public_key(), "connected to another peer than signalled");
                }
                self.connected = true;
            }
            NodeEvent::Data(bytes) => {
                assert!(self.connected, "Data before Connected");
                assert!(!bytes.is_empty());
                self.data.push(bytes);
            }
            NodeEvent::StreamClosed => {
                assert!(self.connected, "StreamClosed before Connected");
                assert!(!self.stream_closed, "two StreamClosed");
                self.stream_closed = true;
            }
            NodeEvent::Candidates { candidates, .. } => assert!(!candidates.is_empty()),
            _ => {}
        }
    }

    fn outcome(&mut self, socket: SocketId, outcome: SocketOutcome) {
        self.t.outcome(socket, &outcome);
        self.d.outcome(socket, outcome);
        self.check();
    }

    /// Stream bytes (a settle point of the punched stream). A runtime never reports an empty
    /// read (EOF is `PeerClosed`).
    fn stream(&mut self, socket: SocketId, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.unsettled.clear();
        let _ = self.d.stream(socket, data);
        self.check();
    }

    fn advance(&mut self, to: Instant) {
        if self.d.deadline().is_some_and(|t| t <= to.max(self.d.now)) {
            self.unsettled.clear();
        }
        self.d.advance_to(to);
        self.check();
    }

    fn broker_sends(&mut self, packet: Packet) {
        let Some(socket) = self.link.socket else { return };
        let mut wire = Vec::new();
        encode(&packet, Protocol::V311, &mut wire).unwrap();
        self.stream(socket, &wire);
    }

    fn broker_up(&mut self) {
        for _ in 0..6 {
            let Some(socket) = self.link.socket else { return };
            match self.t.get(socket) {
                Some(SocketState::Binding { local, .. }) => {
                    let local = SocketAddr::new(local_ip(), local.port().max(40_000));
                    self.outcome(socket, SocketOutcome::Bound { local });
                }
                Some(SocketState::Connecting { local, remote }) => {
                    self.outcome(socket, SocketOutcome::Connected { local, remote })
                }
                Some(SocketState::Stream { .. }) => {
                    if self.link.connect_seen && !self.link.connack_sent {
                        self.link.connack_sent = true;
                        self.broker_sends(Packet::ConnAck { session_present: false, code: 0, properties: Default::default() });
                    } else if let Some(pkid) = self.link.subscribes.pop() {
                        self.broker_sends(Packet::SubAck { pkid, codes: vec![1] });
                    } else if self.link.pings > 0 {
                        self.link.pings -= 1;
                        self.broker_sends(Packet::PingResp);
                    } else {
                        return;
                    }
                }
                _ => return,
            }
        }
    }

    fn cands(&self, n: u8, port: u16) -> Vec<Candidate> {
        (0..usize::from(n % 3) + 1)
            .map(|i| Candidate {
                local_port: 30_000 + i as u16,
                external: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 20 + i as u8)), port.wrapping_add(i as u16 * 3).max(1)),
            })
            .collect()
    }

    fn signal(&mut self, signal: Signal, stranger: bool, cut: u16) {
        let payload = match signal {
            Signal::Offer { new_session, round_delta, offset_ms, cands, port } => {
                let (session, round) = match (new_session, self.session) {
                    (false, Some(s)) => (s, (i16::from(self.round) + i16::from(round_delta % 3)).clamp(0, 255) as u8),
                    _ => (SessionId([0x77; 16]), 0),
                };
                let t1 = (self.wall_ns() as i64).wrapping_add(i64::from(offset_ms) * 1_000_000) as u64;
                Message::Offer { session, round, t1, candidates: self.cands(cands, port) }.encode().ok()
            }
            Signal::Answer { which, offset_ms, proc_ms, lead_ms, cands, port } => {
                let Some(&(session, round, t1)) = self.offers.get(usize::from(which) % self.offers.len().max(1)) else { return };
                let t2 = (self.wall_ns() as i64).wrapping_add(i64::from(offset_ms) * 1_000_000) as u64;
                let t3 = t2.wrapping_add(u64::from(proc_ms) * 1_000_000);
                let meet = t3.wrapping_add(u64::from(lead_ms) * 1_000_000);
                Message::Answer { session, round, t1, t2, t3, meet, candidates: self.cands(cands, port) }.encode().ok()
            }
            Signal::Ack { meet_delta, uncertainty_ms } => {
                let Some((session, round, meet)) = self.answer else { return };
                let meet = (meet as i64).wrapping_add(i64::from(meet_delta)) as u64;
                Message::Ack { session, round, meet, uncertainty_ns: u64::from(uncertainty_ms) * 1_000_000 }.encode().ok()
            }
            Signal::Abort { reason } => {
                let Some(session) = self.session else { return };
                let reason = [AbortReason::TooUncertain, AbortReason::TooLate, AbortReason::Cancelled, AbortReason::NoSockets][usize::from(reason % 4)];
                Message::Abort { session, round: self.round, reason }.encode().ok()
            }
            Signal::Echo => self.last_signal.clone(),
            Signal::Raw(mut bytes) => {
                bytes.truncate(300);
                bytes.insert(0, p2pd_punch::message::TAG);
                Some(bytes)
            }
            Signal::Copy { which } => {
                let Some(envelope) = self.sealed.get(usize::from(which) % self.sealed.len().max(1)).cloned() else { return };
                self.publish(envelope, cut);
                return;
            }
        };
        let Some(payload) = payload else { return };
        if self.sealed.len() >= 16 {
            return;
        }
        self.counter += 1;
        let mut nonce = [0x33; NONCE_LEN];
        nonce[..4].copy_from_slice(&self.counter.to_be_bytes());
        let from = if stranger { 2 } else { 1 };
        let content = payload::message(&payload, false);
        let envelope = seal(&keys()[from], &keys()[0].public_key(), self.d.machine.rendezvous().unix_ms(self.d.now), nonce, &content).unwrap();
        self.sealed.push(envelope.clone());
        self.publish(envelope, cut);
    }

    /// The broker delivers `envelope` on the node's topic, cut in two.
    fn publish(&mut self, envelope: Vec<u8>, cut: u16) {
        let Some(socket) = self.link.socket else { return };
        self.link.next_pkid = self.link.next_pkid % 60_000 + 1;
        let publish = Packet::Publish {
            topic: topic_for(&keys()[0].node_id()),
            qos: QoS::AtLeastOnce,
            pkid: self.link.next_pkid,
            retain: false,
            dup: false,
            payload: envelope,
        };
        let mut wire = Vec::new();
        encode(&publish, Protocol::V311, &mut wire).unwrap();
        let cut = usize::from(cut) % (wire.len() + 1);
        self.stream(socket, &wire[..cut]);
        if self.link.socket == Some(socket) {
            self.stream(socket, &wire[cut..]);
        }
    }

    fn probe_up(&mut self, which: u8, mapped_port: u16, error: bool) {
        let probes: Vec<SocketId> = self.t.ids(|_| true).into_iter().filter(|s| self.part(*s) == Some(NodePart::Probe)).collect();
        let Some(socket) = pick(&probes, which) else { return };
        match self.t.get(socket) {
            Some(SocketState::Binding { local, .. }) => {
                let local = SocketAddr::new(local_ip(), local.port().max(1));
                self.outcome(socket, SocketOutcome::Bound { local });
            }
            Some(SocketState::Connecting { local, remote }) => self.outcome(socket, SocketOutcome::Connected { local, remote }),
            Some(SocketState::Stream { .. }) => {
                let Some(&id) = self.requests.get(&socket) else { return };
                let class = if error { Class::Error } else { Class::Success };
                let mut buf = [0u8; 256];
                let mut w = MessageWriter::new(&mut buf, Header::new(class, p2pd_proto::stun::Method::BINDING, id)).unwrap();
                if error {
                    w.add(&Attribute::ErrorCode(p2pd_proto::stun::ErrorCode { code: 500, reason: "x" })).unwrap();
                } else {
                    let mapped = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), mapped_port.max(1));
                    w.add(&Attribute::XorMappedAddress(mapped)).unwrap();
                }
                let n = w.finish();
                self.stream(socket, &buf[..n]);
            }
            _ => {}
        }
    }

    /// The peer's hello on punch stream `socket`, maybe the marker and more, cut in two.
    fn hello(&mut self, socket: SocketId, valid: bool, chosen: bool, extra: &[u8], cut: u8) {
        let peer = self.peer.unwrap_or(1);
        let mut hello = Hello { session: self.session.unwrap_or(SessionId([0; 16])), round: self.round, node_id: node_id(peer) };
        if !valid {
            hello.node_id.0[0] ^= 1;
        }
        let mut bytes = hello.encode().to_vec();
        if chosen {
            bytes.push(CHOSEN);
        }
        bytes.extend(extra.iter().take(64));
        let cut = usize::from(cut).min(bytes.len());
        let (a, b) = bytes.split_at(cut);
        for part in [a, b] {
            if !part.is_empty() {
                self.stream(socket, part);
            }
        }
    }

    fn fail(op: OpKind, f: Fail) -> SocketOutcome {
        SocketOutcome::Failed { op, destination: None, error: f.io() }
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Punch { stranger } => {
                let peer = keys()[if stranger { 2 } else { 1 }].public_key();
                let _ = self.d.input(|n, now| n.punch(now, peer));
                self.check();
            }
            Op::BrokerUp => self.broker_up(),
            Op::Signal { signal, stranger, cut } => self.signal(signal, stranger, cut),
            Op::ProbeUp { which, mapped_port, error } => self.probe_up(which, mapped_port, error),
            Op::BindResult { which, fail } => {
                let Some(socket) = self.t.pick(|s| matches!(s, SocketState::Binding { .. }), which) else { return };
                let Some(SocketState::Binding { local, .. }) = self.t.get(socket) else { return };
                let outcome = match fail {
                    None => SocketOutcome::Bound { local: SocketAddr::new(local_ip(), local.port().max(1)) },
                    Some(f) => Self::fail(OpKind::Bind, f),
                };
                self.outcome(socket, outcome);
            }
            Op::AllBound => {
                for socket in self.t.ids(|s| matches!(s, SocketState::Binding { .. })) {
                    if let Some(SocketState::Binding { local, .. }) = self.t.get(socket) {
                        self.outcome(socket, SocketOutcome::Bound { local: SocketAddr::new(local_ip(), local.port().max(1)) });
                    }
                }
            }
            Op::Settle { port } => {
                for round in 0..4u16 {
                    self.run(Op::AllBound);
                    for socket in self.t.ids(|s| matches!(s, SocketState::Connecting { .. })) {
                        if let Some(SocketState::Connecting { local, remote }) = self.t.get(socket) {
                            self.outcome(socket, SocketOutcome::Connected { local, remote });
                        }
                    }
                    let accepting = self.t.ids(|s| matches!(s, SocketState::Accepting { .. })).len();
                    for k in 0..accepting {
                        self.run(Op::AcceptResult { which: 0, fail: None, remote: k as u8 });
                    }
                    self.broker_up();
                    let probes = self.t.ids(|_| true).into_iter().filter(|s| self.part(*s) == Some(NodePart::Probe)).count();
                    for which in 0..probes {
                        self.probe_up(which as u8, port.wrapping_add(round * 7 + which as u16), false);
                    }
                }
            }
            Op::Happy { port, lead_ms } => {
                self.run(Op::Punch { stranger: false });
                for _ in 0..3 {
                    if !self.offers.is_empty() {
                        break;
                    }
                    self.run(Op::Settle { port });
                }
                let which = self.offers.len().saturating_sub(1) as u8;
                let lead_ms = 150 + u16::from(lead_ms);
                let answer = Signal::Answer { which, offset_ms: 0, proc_ms: 0, lead_ms, cands: 0, port: port | 1 };
                self.signal(answer, false, u16::MAX);
                let peer_leads = node_id(1) < node_id(0);
                let mut greeted = Vec::new();
                for _ in 0..6 {
                    if self.connected {
                        break;
                    }
                    self.run(Op::Settle { port });
                    let fresh: Vec<SocketId> = self.t.ids(is_stream).into_iter().filter(|s| self.part(*s) == Some(NodePart::Puncher) && !greeted.contains(s)).collect();
                    for (k, socket) in fresh.into_iter().enumerate() {
                        greeted.push(socket);
                        self.hello(socket, true, peer_leads && k == 0, &[], 255);
                    }
                    self.run(Op::ToDeadline { extra_ms: 0 });
                }
            }
            Op::ConnectResult { which, fail } => {
                let Some(socket) = self.t.pick(|s| matches!(s, SocketState::Connecting { .. }), which) else { return };
                let Some(SocketState::Connecting { local, remote }) = self.t.get(socket) else { return };
                let outcome = match fail {
                    None => SocketOutcome::Connected { local, remote },
                    Some(f) => Self::fail(OpKind::Connect, f),
                };
                self.outcome(socket, outcome);
            }
            Op::AcceptResult { which, fail, remote } => {
                let Some(socket) = self.t.pick(|s| matches!(s, SocketState::Accepting { .. }), which) else { return };
                let Some(SocketState::Accepting { listener }) = self.t.get(socket) else { return };
                let local = match self.t.get(listener) {
                    Some(SocketState::Listening { local }) => local,
                    _ => SocketAddr::new(local_ip(), 1),
                };
                let outcome = match fail {
                    None => {
                        let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 20 + remote % 4)), 40_000 + u16::from(remote));
                        SocketOutcome::Accepted { local, remote }
                    }
                    Some(f) => Self::fail(OpKind::Accept, f),
                };
                self.outcome(socket, outcome);
            }
            Op::StreamEnd { which, fail } => {
                let Some(socket) = self.t.pick(is_stream, which) else { return };
                let outcome = match fail {
                    None => SocketOutcome::PeerClosed,
                    Some(f) => Self::fail(OpKind::Receive, f),
                };
                self.outcome(socket, outcome);
            }
            Op::Wild { id, kind } => {
                let socket = SocketId(id % 64);
                let outcome = match kind % 5 {
                    0 => SocketOutcome::PeerClosed,
                    1 => SocketOutcome::Bound { local: SocketAddr::new(local_ip(), 9) },
                    2 => Self::fail(OpKind::Receive, Fail::Reset),
                    3 => Self::fail(OpKind::Send, Fail::Reset),
                    _ => Self::fail(OpKind::Bind, Fail::InUse),
                };
                self.outcome(socket, outcome);
            }
            Op::Hello { which, valid, chosen, extra, cut } => {
                let streams: Vec<SocketId> = self.t.ids(is_stream).into_iter().filter(|s| self.part(*s) == Some(NodePart::Puncher)).collect();
                let Some(socket) = pick(&streams, which) else { return };
                self.hello(socket, valid, chosen, &extra, cut);
            }
            Op::Bytes { which, data } => {
                let Some(socket) = self.t.pick(is_stream, which) else { return };
                let onto_stream = Some(socket) == self.winner && self.d.machine.is_connected();
                let closing = self.d.machine.stream_socket().is_none();
                self.data.clear();
                self.stream(socket, &data);
                if onto_stream && !closing && !data.is_empty() {
                    assert_eq!(self.data, vec![data], "Data is what arrived on the punched stream");
                }
            }
            Op::Refuse { n } => {
                let Some(socket) = self.winner else { return };
                let Some(SocketState::Stream { remote, .. }) = self.t.get(socket) else { return };
                for _ in 0..n % 4 {
                    let Some(len) = self.unsettled.pop() else { break };
                    self.taken.truncate(self.taken.len() - len);
                    let refused = SocketOutcome::Failed { op: OpKind::Send, destination: Some(remote), error: IoError::WouldBlock };
                    self.outcome(socket, refused);
                }
            }
            Op::Send { len } => {
                let connected = self.d.machine.is_connected();
                self.counter += 1;
                let bytes: Vec<u8> = (0..usize::from(len) * 4).map(|i| (i as u32 ^ self.counter) as u8).collect();
                if let Ok(taken) = self.d.input(|n, now| n.send(now, &bytes)) {
                    assert!(connected && !self.shut, "send accepted while not connected");
                    assert!(taken <= bytes.len() && (taken > 0 || bytes.is_empty()), "send took {taken} of {}", bytes.len());
                    self.sent.extend_from_slice(&bytes[..taken]);
                }
                self.check();
            }
            Op::Finish => {
                let _ = self.d.input(|n, now| n.finish(now));
                self.check();
            }
            Op::Advance { ms } => self.advance(self.d.now.saturating_add(Duration::from_millis(u64::from(ms)))),
            Op::ToDeadline { extra_ms } => {
                let to = self.d.deadline().unwrap_or(self.d.now).max(self.d.now);
                self.advance(to.saturating_add(Duration::from_millis(u64::from(extra_ms))));
            }
            Op::Jump { secs } => self.advance(self.d.now.saturating_add(Duration::from_secs(u64::from(secs)))),
            Op::Close => {
                self.d.input(|n, now| n.close(now));
                self.check();
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let rendezvous = RendezvousConfig::new(vec![BrokerSpec::new(Some("broker"), broker())], EPOCH_MS);
    let mut config = PunchNodeConfig::new(rendezvous, stun_server());
    config.rendezvous.mqtt.protocol = Protocol::V311;
    config.ports_per_round = usize::from(input.ports_per_round % 3) + 1;
    config.probe_timeout = Duration::from_secs(2);
    config.punch.punch_window = Duration::from_millis(u64::from(input.window_ms % 3000) + 1);
    config.punch.lead = Duration::from_millis(u64::from(input.lead_ms % 3000));
    config.punch.max_sockets = 16;
    let now = Instant::from_millis(1);
    let node = PunchNode::new(config, keys()[0].clone(), input.seed, now).unwrap();
    let d = Driven::new("punch node", node, |e| matches!(e, NodeEvent::Closed)).at(now);
    let mut h = H {
        parts: HashMap::new(),
        d,
        t: SocketTable::default(),
        link: BrokerLink::default(),
        requests: HashMap::new(),
        punch_tx: HashMap::new(),
        offers: Vec::new(),
        answer: None,
        session: None,
        round: 0,
        last_signal: None,
        sealed: Vec::new(),
        counter: 0,
        peer: None,
        winner: None,
        connected: false,
        stream_closed: false,
        shut: false,
        sent: Vec::new(),
        taken: Vec::new(),
        unsettled: Vec::new(),
        data: Vec::new(),
    };
    h.d.drain();
    h.check();
    for op in input.ops.into_iter().take(96) {
        h.run(op);
    }
    h.run(Op::Close);
    assert!(h.d.checker.finished(), "Closed after close");
    h.d.checker.assert_all_closed();
    assert!(h.t.ids(|s| !matches!(s, SocketState::Accepting { .. })).is_empty(), "the runtime holds sockets after Closed");
    assert!(!h.d.machine.is_connected());
    assert!(h.d.input(|n, now| n.send(now, b"x")).is_err());
});

//! Stateful fuzzing of the composite punching node (`PunchNode`: rendezvous over MQTT, STUN-over-TCP
//! probes, the puncher, the punched stream through its secure channel), driven through the
//! contract checker. The target plays the runtime and everyone the node talks to: socket outcomes
//! for its intents (and for any id), the broker (connection up, PUBLISH packets carrying punch
//! messages sealed by the real peer key: offers, answers echoing the node's offers, acks of its
//! answers, raw and replayed ones), the STUN server (genuine binding responses to the probes'
//! requests), the far end of every punch stream and of the punched stream
//! (`common/channel_peer.rs`: a real secure channel for the genuine peer, or for another identity,
//! session, round or role; its handshake, sealed data and FINISH whole, cut, bit-flipped,
//! truncated or followed by junk; replays of bytes seen on other connections; raw bytes), time
//! steps, and the node's API (`punch`, `send`, `finish`, `close`), including refused stream
//! transmits (flow control). The node's identity is one of a few fixed ones, so it leads or
//! follows.
//!
//! Checks besides the contract: socket ids in the node's ranges; transmits only on connected, not
//! shut down streams: valid MQTT to the broker (its punch signals open for the peer and decode),
//! valid STUN from the probes, channel handshake frames of the right size for the node's role on
//! punch streams (the leader's first message as soon as the connection is up, the follower's
//! second once it has read something); `Connected` once, for the signalled peer, only on a
//! connection whose bytes began with the genuine peer's whole handshake; on the punched stream
//! the genuine peer opens exactly a prefix of the bytes given to `send`, in order, refused
//! transmits sent again, and the node's FINISH only after `finish` and all of them; `Data` only
//! after `Connected`, always exactly a prefix of what the genuine peer sealed, and all of it
//! once its frames arrived whole and untouched (attacker bytes are never delivered); a flipped
//! bit in a whole frame is `StreamFailed` at once, the end of the stream before the peer's FINISH
//! is `StreamFailed(Truncated)`, after it a clean `StreamClosed`; a genuine peer fed only by a
//! clean connection never fails and sees the node's identity; `StreamClosed` at most once, after
//! `Connected`; `send` accepted only while connected.
#![no_main]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2pd_proto::stun::{Attribute, Class, Header, Message as Stun, MessageWriter, TransactionId};
use p2pd_proto::testing::{pick, Driven, Output, SocketState, SocketTable};
use p2pd_proto::{Instant, IoError, OpKind, SocketId, SocketOp, SocketOutcome, Transport};
use p2pd_channel::ChannelFailure;
use p2pd_punch::message::AbortReason;
use p2pd_punch::node::{NodeEvent, NodePart, PunchNode, PunchNodeConfig};
use p2pd_punch::{Message, PunchCandidate as Candidate, PunchEvent, SessionId};
use p2pd_signaling::envelope::NONCE_LEN;
use p2pd_signaling::mqtt::{encode, Packet, Protocol};
use p2pd_signaling::rendezvous::payload::{self, Content};
use p2pd_signaling::rendezvous::{topic_for, BrokerSpec};
use p2pd_signaling::{seal, Identity, Opener, RendezvousConfig};

#[path = "common/socket_fail.rs"]
mod socket_fail;
use socket_fail::Fail;

#[path = "common/broker_link.rs"]
mod broker_link;
use broker_link::BrokerLink;

#[path = "common/channel_peer.rs"]
#[allow(dead_code)]
mod channel_peer;
use channel_peer::{context, identity, Conn, Kind, Tamper, IDENTITIES, MSG1_FRAME, MSG2_FRAME};

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

/// The node, its peer and a stranger: `WHO[me + k]` of the fixed identities for k = 0, 1, 2.
fn who(me: usize, k: usize) -> usize {
    (me + k) % IDENTITIES
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
    /// channel (the genuine one) speaks on every punch stream until one wins.
    Happy { port: u16, lead_ms: u8 },
    ConnectResult { which: u8, fail: Option<Fail> },
    AcceptResult { which: u8, fail: Option<Fail>, remote: u8 },
    /// A stream ends (EOF) or fails.
    StreamEnd { which: u8, fail: Option<Fail> },
    /// Some outcome for any socket id.
    Wild { id: u32, kind: u8 },
    /// The far end of a punch stream or of the punched stream speaks (taken by `kind` if nobody
    /// has yet): everything its channel wrote since it last spoke, maybe `data` bytes sealed and
    /// its FINISH (once established), tampered with as asked, cut in two reads.
    Speak { which: u8, kind: Kind, data: u16, finish: bool, tamper: Tamper, cut: u16 },
    /// Bytes seen on some connection (written by the node or by a far end) arrive on a stream.
    Replay { which: u8, chunk: u8, cut: u16 },
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
    /// The node's identity (of a few fixed ones; its peer and the stranger follow).
    me: u8,
    ports_per_round: u8,
    window_ms: u16,
    lead_ms: u16,
    ops: Vec<Op>,
}


struct H {
    d: Driven<PunchNode>,
    /// Which part of the node opened each socket (asked of the node when it named the socket).
    parts: HashMap<SocketId, NodePart>,
    t: SocketTable,
    link: BrokerLink,
    /// The probes' Binding request ids, by socket.
    requests: HashMap<SocketId, TransactionId>,
    /// The identities of the node, its peer and the stranger.
    who: [usize; 3],
    /// The far end of every punch stream (and of the punched stream), and the round of the
    /// latest `Armed`.
    conns: HashMap<SocketId, Conn>,
    armed: u8,
    /// Bytes seen on connections (the node's and the far ends'), for replays.
    seen: Vec<Vec<u8>>,
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
    /// Bytes `send` accepted, and the stream transmits the runtime took (how many of them the
    /// peer read: those that can no longer be refused).
    sent: Vec<u8>,
    taken: Vec<u8>,
    fed: usize,
    /// Lengths of the stream transmits since the node's last settle point (not refused).
    unsettled: Vec<usize>,
    /// `finish` was called (and accepted).
    finishing: bool,
    /// Every `Data` byte, and the `StreamFailed` reason.
    received: Vec<u8>,
    failed: Option<ChannelFailure>,
}


fn is_stream(s: &SocketState) -> bool {
    matches!(s, SocketState::Stream { .. })
}

impl H {
    /// The part of the node that opened `socket`.
    fn part(&self, socket: SocketId) -> Option<NodePart> {
        self.parts.get(&socket).copied()
    }

    /// Identity `k` of the scene (0: the node, 1: its peer, 2: the stranger).
    fn key(&self, k: usize) -> &'static Identity {
        identity(self.who[k])
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
            if let Some(w) = self.winner {
                let conn = self.conns.get(&w).expect("the punched stream has a far end");
                assert!(conn.may_win(), "Connected on {w}, whose bytes did not begin with the genuine peer's handshake");
                let want = if conn.machine_leads { MSG1_FRAME } else { MSG2_FRAME };
                assert_eq!(conn.heard.len(), want, "Connected before the node's handshake went out");
            }
        }
        self.feed_settled();
        if let Some(conn) = self.winner.and_then(|w| self.conns.get(&w)) {
            // What the node sent, as the genuine peer opens it (its last handshake message first,
            // when it leads), and what the node delivered of what the peer sealed.
            let sp = conn.speaker.as_ref().expect("the punched stream's far end");
            assert!(self.sent.starts_with(&sp.opened), "the punched stream carries what was sent, in order");
            if sp.peer_finished {
                assert!(self.finishing, "the node's FINISH without finish");
                assert_eq!(sp.opened, self.sent, "the node's FINISH before all it sent");
            }
            assert!(sp.sealed.starts_with(&self.received), "Data the genuine peer did not seal");
            if let (Some(expected), true) = (conn.must_have_opened(), self.d.machine.is_connected()) {
                assert_eq!(self.received, expected, "Data is what the peer sealed, once it arrived whole");
            }
            conn.check_speaker();
        }
        assert!(self.received.is_empty() || self.connected);
        assert!(self.d.machine.queued() <= p2pd_punch::node::SEND_BUFFER);
    }

    /// The punched stream's transmits that can no longer be refused reach the peer.
    fn feed_settled(&mut self) {
        let settled = self.taken.len() - self.unsettled.iter().sum::<usize>();
        if settled > self.fed {
            let now = self.d.now;
            let bytes = self.taken[self.fed..settled].to_vec();
            self.fed = settled;
            if let Some(conn) = self.winner.and_then(|w| self.conns.get_mut(&w)) {
                conn.machine_wrote(now, &bytes);
            }
            self.remember(&bytes);
        }
    }

    /// Keeps `bytes` (seen on some connection) for replays.
    fn remember(&mut self, bytes: &[u8]) {
        if self.seen.len() >= 32 {
            self.seen.remove(0);
        }
        self.seen.push(bytes[..bytes.len().min(1024)].to_vec());
    }

    fn transmit(&mut self, socket: SocketId, destination: SocketAddr, bytes: &[u8]) {
        assert!(self.parts.contains_key(&socket), "transmit on {socket}, which the node never opened");
        let Some(SocketState::Stream { remote, shut, .. }) = self.t.get(socket) else {
            panic!("transmit on {socket} which is not a connected stream: {:?}", self.t.get(socket));
        };
        assert!(!shut, "transmit on {socket} after its Shutdown");
        assert_eq!(destination, remote);
        if Some(socket) == self.winner || self.d.machine.socket_part(socket) == Some(NodePart::Stream) {
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
            // A punch stream: the puncher writes the leader's first message as the connection
            // comes up, or the follower's second once it has read something (the leader's third
            // goes out on the punched stream, after Connected).
            let conn = self.conns.get_mut(&socket).expect("every punch stream has a far end");
            let tx = conn.heard.len();
            let expected = match (conn.machine_leads, tx) {
                (true, 0) => MSG1_FRAME,
                (false, 0) => {
                    assert!(!conn.delivered.is_empty(), "the follower wrote before it read");
                    MSG2_FRAME
                }
                (leads, sent) => panic!("the {} wrote {} more bytes after {sent}", if leads { "leader" } else { "follower" }, bytes.len()),
            };
            assert_eq!(bytes.len(), expected, "a handshake message of the wrong size");
            assert_eq!(usize::from(u16::from_be_bytes([bytes[0], bytes[1]])) + 2, bytes.len(), "one whole channel frame");
            conn.machine_wrote(self.d.now, bytes);
            self.remember(bytes);
        }
    }

    fn broker_reads(&mut self, socket: SocketId, bytes: &[u8]) {
        assert_eq!(self.link.socket, Some(socket));
        for p in self.link.read(bytes) {
            match p {
                Packet::Publish { topic, payload, .. } => {
                    // The node signals its one peer (the peer or the stranger, whoever it punches
                    // or answers first): the envelope opens for it and holds a punch message.
                    let to = (1..3).find(|&k| topic == topic_for(&self.key(k).node_id())).expect("a signal to a known key");
                    assert_eq!(*self.peer.get_or_insert(to), to, "signals to two peers");
                    let mut opener = Opener::with_window(4, u64::MAX / 4, u64::MAX / 4);
                    let opened = opener.open(self.key(to), 0, &payload).expect("the node's envelope opens for the peer");
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
                self.conns.remove(&socket);
                if self.part(socket) == Some(NodePart::Signaling) {
                    self.link = BrokerLink::new(socket, self.link.next_pkid);
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
                if Some(socket) != self.winner {
                    self.conns.remove(&socket);
                }
            }
            other => panic!("unexpected intent {other:?}"),
        }
    }

    fn event(&mut self, ev: NodeEvent) {
        match ev {
            NodeEvent::Connected { peer, .. } => {
                assert!(!self.connected, "two Connected");
                let k = self.peer.expect("Connected to a peer it never signalled");
                assert_eq!(peer, self.key(k).public_key(), "connected to another peer than signalled");
                self.connected = true;
            }
            NodeEvent::Data(bytes) => {
                assert!(self.connected, "Data before Connected");
                assert!(!bytes.is_empty());
                self.received.extend_from_slice(&bytes);
            }
            NodeEvent::StreamFailed(failure) => {
                assert!(self.connected, "StreamFailed before Connected");
                assert!(self.failed.is_none(), "two StreamFailed");
                self.failed = Some(failure);
            }
            NodeEvent::Punch(PunchEvent::Armed { round, .. }) => self.armed = round,
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
        let up = matches!(outcome, SocketOutcome::Connected { .. } | SocketOutcome::Accepted { .. });
        if up && self.part(socket) == Some(NodePart::Puncher) && self.d.machine.socket_part(socket) == Some(NodePart::Puncher) {
            // A punch connection comes up: its far end, bound to the session and round.
            let session = self.session.unwrap_or(SessionId([0; 16]));
            let peer = self.peer.map(|k| self.who[k]);
            let leads = peer.is_some_and(|p| identity(self.who[0]).node_id() < identity(p).node_id());
            let conn = Conn::new(context(session.0, self.armed), leads, peer, self.who[0]);
            self.conns.insert(socket, conn);
        }
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
                    match self.link.next_answer() {
                        Some(answer) => self.broker_sends(answer),
                        None => return,
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
        let envelope = seal(self.key(from), &self.key(0).public_key(), self.d.machine.rendezvous().expect("own signaling").unix_ms(self.d.now), nonce, &content).unwrap();
        self.sealed.push(envelope.clone());
        self.publish(envelope, cut);
    }

    /// The broker delivers `envelope` on the node's topic, cut in two.
    fn publish(&mut self, envelope: Vec<u8>, cut: u16) {
        let Some(socket) = self.link.socket else { return };
        let wire = self.link.publish_wire(topic_for(&self.key(0).node_id()), envelope);
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

    /// Punch streams and the punched stream: the streams with a far end.
    fn speakable(&self) -> Vec<SocketId> {
        self.t.ids(is_stream).into_iter().filter(|s| self.conns.contains_key(s)).collect()
    }

    /// The far end of `socket` speaks (see [`Op::Speak`]).
    fn speak(&mut self, socket: SocketId, kind: Kind, data: u16, finish: bool, tamper: &Tamper, cut: u16) {
        self.counter += 1;
        let (now, counter) = (self.d.now, self.counter);
        let Some(conn) = self.conns.get_mut(&socket) else { return };
        let Some(speaker) = conn.speaker(now, kind, counter) else { return };
        if data > 0 || finish {
            let bytes: Vec<u8> = (0..usize::from(data % 2048)).map(|i| (i as u32 ^ counter).wrapping_mul(31) as u8).collect();
            speaker.seal(now, &bytes, finish);
        }
        conn.check_speaker();
        let delivery = conn.deliver(tamper);
        self.deliver(socket, delivery.bytes, cut, delivery.must_fail);
    }

    /// `bytes` arrive on `socket`, cut in two reads. `must_fail`: the channel must fail on them
    /// (a punch connection is closed; the punched stream fails as tampered).
    fn deliver(&mut self, socket: SocketId, bytes: Vec<u8>, cut: u16, must_fail: bool) {
        if bytes.is_empty() {
            return;
        }
        self.remember(&bytes);
        let on_stream = Some(socket) == self.winner;
        let up = on_stream && self.d.machine.is_connected();
        let failures = self.d.machine.puncher().stats().channel_failures;
        let cut = usize::from(cut) % (bytes.len() + 1);
        for part in [&bytes[..cut], &bytes[cut..]] {
            if part.is_empty() || !matches!(self.t.get(socket), Some(SocketState::Stream { .. })) {
                continue;
            }
            if let Some(c) = self.conns.get_mut(&socket) {
                c.handed(part);
            }
            self.stream(socket, part);
            if let Some(c) = self.conns.get(&socket) {
                c.check_speaker();
            }
        }
        if must_fail && up {
            assert_eq!(self.failed, Some(ChannelFailure::Tampered), "a flipped bit in a whole frame on the punched stream");
            assert!(!self.d.machine.is_connected());
        } else if must_fail && !on_stream && Some(socket) != self.winner {
            assert!(!self.conns.contains_key(&socket), "a flipped bit in a whole frame, and the punch connection stays");
            assert!(self.d.machine.puncher().stats().channel_failures > failures);
        }
        if up && self.finish_arrived(socket) {
            assert!(self.stream_closed && self.failed.is_none(), "the peer's FINISH arrived whole: a clean StreamClosed");
            assert!(self.d.machine.is_connected(), "after the peer's FINISH the stream stays up for our side");
        }
    }

    /// Whether the far end's FINISH reached the node whole, behind nothing but its own bytes.
    fn finish_arrived(&self, socket: SocketId) -> bool {
        self.conns.get(&socket).is_some_and(|c| {
            c.clean() && c.speaker.as_ref().and_then(|s| s.finish_end).is_some_and(|e| c.delivered.len() >= e)
        })
    }

    fn fail(op: OpKind, f: Fail) -> SocketOutcome {
        SocketOutcome::Failed { op, destination: None, error: f.io() }
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Punch { stranger } => {
                let peer = self.key(if stranger { 2 } else { 1 }).public_key();
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
                for _ in 0..4 {
                    if !self.offers.is_empty() {
                        break;
                    }
                    self.run(Op::Settle { port });
                    if self.offers.is_empty() {
                        // Signaling may wait for the broker's timers (keep-alive, retransmits).
                        self.run(Op::ToDeadline { extra_ms: 0 });
                    }
                }
                let which = self.offers.len().saturating_sub(1) as u8;
                let lead_ms = 150 + u16::from(lead_ms);
                let answer = Signal::Answer { which, offset_ms: 0, proc_ms: 0, lead_ms, cands: 0, port: port | 1 };
                self.signal(answer, false, u16::MAX);
                for _ in 0..6 {
                    if self.connected {
                        break;
                    }
                    self.run(Op::Settle { port });
                    for _ in 0..2 {
                        for socket in self.speakable() {
                            if !self.connected {
                                self.speak(socket, Kind::Genuine, 0, false, &Tamper::None, u16::MAX);
                            }
                        }
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
                let up = Some(socket) == self.winner && self.d.machine.is_connected();
                let clean = self.conns.get(&socket).is_some_and(|c| c.clean());
                let finished = self.finish_arrived(socket);
                let outcome = match fail {
                    None => SocketOutcome::PeerClosed,
                    Some(f) => Self::fail(OpKind::Receive, f),
                };
                self.outcome(socket, outcome);
                if up {
                    assert!(self.stream_closed, "the punched stream ended without StreamClosed");
                    // The end of the bytes (EOF or a reset) is clean only after the peer's FINISH.
                    if finished {
                        assert!(self.failed.is_none(), "the stream failed after the peer's FINISH");
                        assert_eq!(self.d.machine.is_connected(), fail.is_none());
                    } else if clean {
                        assert_eq!(self.failed, Some(ChannelFailure::Truncated), "the stream cut before the peer's FINISH");
                    }
                    if fail.is_some() || !finished {
                        assert!(!self.d.machine.is_connected(), "the stream failed and stays up");
                    }
                }
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
            Op::Speak { which, kind, data, finish, tamper, cut } => {
                let Some(socket) = pick(&self.speakable(), which) else { return };
                self.speak(socket, kind, data, finish, &tamper, cut);
            }
            Op::Replay { which, chunk, cut } => {
                let Some(socket) = self.t.pick(is_stream, which) else { return };
                let Some(bytes) = self.seen.get(usize::from(chunk) % self.seen.len().max(1)).cloned() else { return };
                self.deliver(socket, bytes, cut, false);
            }
            Op::Bytes { which, data } => {
                let Some(socket) = self.t.pick(is_stream, which) else { return };
                if data.is_empty() {
                    return;
                }
                // Attacker bytes: never delivered as Data (see `check`).
                if let Some(c) = self.conns.get_mut(&socket) {
                    c.handed(&data);
                }
                self.stream(socket, &data);
                if let Some(c) = self.conns.get(&socket) {
                    c.check_speaker();
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
                if self.d.input(|n, now| n.finish(now)).is_ok() {
                    self.finishing = true;
                }
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
    let me = usize::from(input.me) % IDENTITIES;
    let who = [who(me, 0), who(me, 1), who(me, 2)];
    let node = PunchNode::new(config, identity(who[0]).clone(), [input.seed as u8; 32], input.seed, now).unwrap();
    let d = Driven::new("punch node", node, |e| matches!(e, NodeEvent::Closed)).at(now);
    let mut h = H {
        parts: HashMap::new(),
        d,
        t: SocketTable::default(),
        link: BrokerLink::default(),
        requests: HashMap::new(),
        who,
        conns: HashMap::new(),
        armed: 0,
        seen: Vec::new(),
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
        fed: 0,
        unsettled: Vec::new(),
        finishing: false,
        received: Vec::new(),
        failed: None,
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

//! Stateful fuzzing of the multi-broker rendezvous machine (`Rendezvous`), driven through the
//! contract checker. Two scripted brokers speak MQTT (the signaling crate's codec) on the node's
//! connections: they come up (bind, connect, CONNACK, SUBACK, PINGRESP), drop, acknowledge the
//! node's publishes, and deliver PUBLISH packets carrying envelopes `seal()`ed with real keys:
//! fresh ones from the node's peers (and from itself), copies of earlier ones through either
//! broker (raw replays, QoS 1 redeliveries), stale, future and misaddressed ones, byte flips,
//! envelopes re-signed by a stranger with its own key swapped in, raw bytes; several at once in one
//! chunk; time steps, sends and close.
//!
//! Receipts: messages may ask for one (the node must answer each such first copy with exactly one
//! receipt, sealed to the sender, naming its nonce, and never answer a receipt), the node's own
//! sends may ask for one, and peers (or the stranger) deliver receipts naming the node's
//! messages or nothing at all.
//!
//! Checks besides the contract: one `Message` per (sender, nonce), only for an envelope we sealed,
//! with its payload and timestamp; every envelope a connected broker hands over is processed once,
//! and (while no event was dropped) exactly as a model of the opener says: a `Message`, a
//! duplicate, a `Rejected` with the right reason, or a `Receipt` for the right message only from
//! its recipient; `Acknowledged` once per (message, broker) for a message we sent; what the node
//! publishes is valid MQTT on its connected socket and opens for its recipient with the payload
//! given to `send` (or a receipt it owes); replay cache, tracked acks and awaited receipts within
//! their bounds.
#![no_main]

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2pd_proto::testing::{Driven, Output};
use p2pd_proto::{Instant, IoError, OpKind, SocketId, SocketOp, SocketOutcome};
use p2pd_signaling::address::BrokerId;
use p2pd_signaling::envelope::{NONCE_LEN, SIGNATURE_LEN};
use p2pd_signaling::mqtt::{encode, Decoded, Decoder, Packet, Protocol, QoS};
use p2pd_signaling::rendezvous::payload::{self, Content};
use p2pd_signaling::rendezvous::{topic_for, BrokerSpec, MessageId, Rejection, SOCKETS_PER_BROKER};
use p2pd_signaling::{seal, Identity, OpenError, Opener, Rendezvous, RendezvousConfig, RendezvousEvent};

const EPOCH_MS: u64 = 1_700_000_000_000;
const BASE: u32 = 100;
const REPLAY: usize = 6;
const MAX_AGE_MS: u64 = 30_000;
const MAX_FUTURE_MS: u64 = 5_000;
const MAX_TRACKED: usize = 4;
const MAX_EVENTS: usize = 16;
/// Offsets in the envelope header: sender key (33), recipient id (20), timestamp, nonce.
const OFF_SENDER: usize = 1;
const OFF_NONCE: usize = 1 + 33 + 20 + 8;

/// 0: the node, 1 and 2: its peers, 3: a stranger.
fn keys() -> &'static [Identity; 4] {
    static KEYS: OnceLock<[Identity; 4]> = OnceLock::new();
    KEYS.get_or_init(|| std::array::from_fn(|i| Identity::from_secret_bytes(&[i as u8 + 1; 32]).unwrap()))
}

fn broker_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 10 + i as u8], 1883))
}

#[derive(Arbitrary, Debug)]
enum Env {
    /// Sealed now (plus a skew) by the node itself or a peer; may ask for a receipt.
    Fresh { from: u8, skew_ms: i16, len: u8, receipt: bool },
    /// A receipt from a peer or the stranger naming one of the node's messages (or none).
    Receipt { from: u8, which: u8 },
    /// An earlier envelope again: another broker's copy, a redelivery, an attacker's replay.
    Copy { index: u8 },
    /// Sealed too long ago, or too far ahead.
    Stale { from: u8, age_s: u8 },
    Future { from: u8, ahead_s: u8 },
    /// Sealed to the stranger.
    NotForUs { from: u8 },
    /// An earlier envelope with one byte changed.
    Flip { index: u8, pos: u16, xor: u8 },
    /// An earlier envelope with the stranger's key in the header, re-signed by the stranger.
    Resign { index: u8 },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// The broker's connection comes up as far as it can: bind, connect, CONNACK, SUBACK, PINGRESP.
    Up { broker: u8 },
    /// One PUBLISH (QoS 0 or 1, our topic or another) with an envelope, cut in two.
    Publish { broker: u8, env: Env, qos1: bool, dup: bool, foreign: bool, cut: u16 },
    /// Several PUBLISHes in one chunk.
    Burst { broker: u8, envs: Vec<Env> },
    /// The broker acknowledges one of the node's publishes.
    PubAck { broker: u8, which: u8 },
    Bytes { broker: u8, data: Vec<u8> },
    /// The broker connection drops or fails.
    Drop { broker: u8, kind: u8 },
    /// Some outcome for any socket id.
    Wild { id: u16, kind: u8 },
    Send { to: u8, via: u8, len: u16, receipt: bool },
    Advance { ms: u32 },
    Close,
}

#[derive(Arbitrary, Debug)]
struct Input {
    seed: u64,
    one_broker: bool,
    ops: Vec<Op>,
}

/// An envelope the target sealed.
#[derive(Clone)]
struct Sealed {
    sender: usize,
    nonce: [u8; NONCE_LEN],
    ts: u64,
    bytes: Vec<u8>,
    payload: Vec<u8>,
    /// Addressed to the node (and authentic).
    for_us: bool,
    /// What opening it yields besides the opener's verdict.
    content: Kind,
}

/// The content kind of a sealed envelope.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Message { wants_receipt: bool },
    /// A receipt naming `nonce`.
    Receipt { nonce: [u8; NONCE_LEN] },
}

/// A message the node published: its recipient, nonce and id.
#[derive(Clone, Copy)]
struct Published {
    to: usize,
    nonce: [u8; NONCE_LEN],
    id: MessageId,
    wants_receipt: bool,
}

/// What delivering an envelope must do, per the model of the node's opener.
#[derive(Debug)]
enum Expect {
    Message,
    /// A message asking for a receipt: reported, and answered with one receipt.
    MessageWithReceipt,
    /// A receipt for this message.
    Receipt(MessageId),
    Duplicate,
    Rejected(fn(&Rejection) -> bool),
    /// Anything but a `Message` (flipped bytes, raw bytes).
    NoMessage,
}

#[derive(Default)]
struct Link {
    socket: Option<SocketId>,
    /// The client was answered `Connected` (or is waiting for it).
    connecting: bool,
    connected: bool,
    decoder: Option<Decoder>,
    connect_seen: bool,
    connack_sent: bool,
    subscribes: Vec<u16>,
    pings: usize,
    /// The node's QoS 1 publishes not acknowledged yet.
    unacked: Vec<u16>,
    next_pkid: u16,
    /// Raw bytes went down this connection: its MQTT framing is anyone's guess (a partial packet
    /// may swallow what follows).
    garbled: bool,
}

struct H {
    d: Driven<Rendezvous>,
    ids: Vec<BrokerId>,
    links: Vec<Link>,
    sealed: Vec<Sealed>,
    counter: u32,
    /// (sender, nonce) of every `Message`.
    delivered: HashSet<(usize, [u8; NONCE_LEN])>,
    /// The opener's replay cache, oldest first (sender, nonce, timestamp), and its floor.
    cache: VecDeque<(usize, [u8; NONCE_LEN], u64)>,
    floor: Option<u64>,
    /// The model is exact until an event is dropped (a full event queue).
    exact: bool,
    sent: HashSet<MessageId>,
    acked: HashSet<(MessageId, BrokerId)>,
    payloads: Vec<(Vec<u8>, MessageId, bool)>,
    messages: usize,
    rejected: Vec<Rejection>,
    /// Every message the node published (first copies), for receipts.
    published: Vec<Published>,
    /// Messages awaiting a receipt, as the node's table must have them (oldest first).
    awaited: VecDeque<MessageId>,
    receipts: HashSet<MessageId>,
    /// (sender, nonce) of every message the node sent a receipt for -> the receipt's own nonce.
    answered: HashMap<(usize, [u8; NONCE_LEN]), [u8; NONCE_LEN]>,
}

impl H {
    fn owner(&self, socket: SocketId) -> Option<usize> {
        let i = usize::try_from(socket.0.checked_sub(BASE)? / SOCKETS_PER_BROKER).ok()?;
        (i < self.links.len()).then_some(i)
    }

    fn unix_ms(&self) -> u64 {
        self.d.machine.unix_ms(self.d.now)
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
        assert!(self.d.machine.replay_cache_len() <= REPLAY);
        assert!(self.d.machine.pending_acks() <= MAX_TRACKED);
        assert!(self.d.machine.pending_receipts() <= MAX_TRACKED);
        if self.d.machine.stats().events_dropped > 0 {
            self.exact = false;
        }
    }

    fn transmit(&mut self, socket: SocketId, destination: SocketAddr, bytes: &[u8]) {
        let i = self.owner(socket).expect("a transmit on a broker's socket");
        assert_eq!(destination, broker_addr(i));
        let link = &mut self.links[i];
        assert_eq!(link.socket, Some(socket), "a transmit on a socket that is not the broker's current one");
        assert!(link.connected, "a transmit before the connection");
        let decoder = link.decoder.get_or_insert_with(|| Decoder::new(Protocol::V311, 1 << 20));
        assert_eq!(decoder.push(bytes).unwrap(), bytes.len());
        let mut packets = Vec::new();
        while let Some(p) = decoder.next() {
            let Ok(Decoded::Packet(p)) = p else { panic!("the node writes valid MQTT: {p:?}") };
            packets.push(p);
        }
        for p in packets {
            match p {
                Packet::Connect { .. } => link.connect_seen = true,
                Packet::Subscribe { pkid, topics } => {
                    assert_eq!(topics.len(), 1);
                    assert_eq!(topics[0].filter, topic_for(&keys()[0].node_id()), "subscribes to its own topic");
                    link.subscribes.push(pkid);
                }
                Packet::Publish { topic, qos, pkid, payload, .. } => {
                    assert_eq!(qos, QoS::AtLeastOnce);
                    if !link.unacked.contains(&pkid) {
                        link.unacked.push(pkid);
                    }
                    // The envelope opens for its recipient with a payload given to `send`, or a
                    // receipt the node owes.
                    let to = (0..3).find(|&k| topic == topic_for(&keys()[k].node_id())).expect("a known node's topic");
                    let mut opener = Opener::with_window(4, u64::MAX / 4, u64::MAX / 4);
                    let opened = opener.open(&keys()[to], 0, &payload).expect("the node's envelope opens");
                    assert_eq!(opened.sender, keys()[0].public_key());
                    match payload::parse(&opened.payload).expect("the node's content parses") {
                        Content::Message { payload, wants_receipt } => {
                            let &(_, id, wants) = self
                                .payloads
                                .iter()
                                .find(|(p, _, _)| p == payload)
                                .expect("an envelope with a payload never sent");
                            assert_eq!(wants, wants_receipt);
                            if !self.published.iter().any(|p| p.nonce == opened.nonce) {
                                self.published.push(Published { to, nonce: opened.nonce, id, wants_receipt });
                            }
                        }
                        Content::Receipt { nonce } => {
                            let owed = self.sealed.iter().any(|s| {
                                s.sender == to
                                    && s.nonce == nonce
                                    && s.for_us
                                    && matches!(s.content, Kind::Message { wants_receipt: true })
                            });
                            assert!(owed, "a receipt for no message that asked for one");
                            // Resent with DUP after a reconnect: the same envelope, never a second receipt.
                            let first = *self.answered.entry((to, nonce)).or_insert(opened.nonce);
                            assert_eq!(first, opened.nonce, "two receipts for one message");
                        }
                    }
                }
                Packet::PubAck { .. } | Packet::PingReq | Packet::Disconnect => {
                    if matches!(p, Packet::PingReq) {
                        link.pings += 1;
                    }
                }
                other => panic!("the node sent a broker's packet: {other:?}"),
            }
        }
    }

    fn op(&mut self, op: SocketOp) {
        let i = self.owner(op.socket()).expect("a socket in a broker's range");
        let link = &mut self.links[i];
        match op {
            SocketOp::Bind { socket, .. } => {
                assert_eq!(link.socket, None, "a second connection while one is open");
                *link = Link { socket: Some(socket), next_pkid: link.next_pkid, ..Link::default() };
            }
            SocketOp::Connect { socket, remote } => {
                assert_eq!(link.socket, Some(socket));
                assert_eq!(remote, broker_addr(i));
                link.connecting = true;
            }
            SocketOp::Close { socket } => {
                if link.socket == Some(socket) {
                    *link = Link { next_pkid: link.next_pkid, ..Link::default() };
                }
            }
            other => panic!("unexpected intent {other:?}"),
        }
    }

    fn event(&mut self, ev: RendezvousEvent) {
        match ev {
            RendezvousEvent::Message { from, payload, broker, sent_at_ms } => {
                assert!(self.ids.contains(&broker));
                let sender = (0..3).find(|&k| keys()[k].public_key() == from).expect("a Message from a key that sealed it");
                let nonce: [u8; NONCE_LEN] = payload[..NONCE_LEN].try_into().unwrap();
                let s = self.sealed.iter().find(|s| s.sender == sender && s.nonce == nonce && s.for_us).expect("a Message we sealed");
                assert_eq!((&payload, sent_at_ms), (&s.payload, s.ts));
                assert!(self.delivered.insert((sender, nonce)), "two Messages for one (sender, nonce)");
                let ts = s.ts;
                self.remember(sender, nonce, ts);
                self.messages += 1;
            }
            RendezvousEvent::Rejected { broker, reason } => {
                assert!(self.ids.contains(&broker));
                assert_ne!(reason, Rejection::Envelope(OpenError::Replay), "a replay is a duplicate, not a rejection");
                self.rejected.push(reason);
            }
            RendezvousEvent::Receipt { id, from, broker, .. } => {
                assert!(self.ids.contains(&broker));
                let p = self.published.iter().find(|p| p.id == id).expect("a receipt for a message never published");
                assert!(p.wants_receipt, "a receipt for a message that did not ask");
                assert_eq!(from, keys()[p.to].public_key(), "a receipt from someone else");
                assert!(self.receipts.insert(id), "two receipts for one message");
                assert!(self.awaited.contains(&id), "a receipt for a message no longer awaited");
                self.awaited.retain(|a| *a != id);
            }
            RendezvousEvent::Acknowledged { id, broker } => {
                assert!(self.sent.contains(&id), "acknowledged a message never sent");
                assert!(self.acked.insert((id, broker)), "acknowledged twice by one broker");
            }
            _ => {}
        }
    }

    /// The opener remembers every envelope that opens (a message, a receipt, an unexpected
    /// receipt), evicting the oldest (which raises its floor).
    fn remember(&mut self, sender: usize, nonce: [u8; NONCE_LEN], ts: u64) {
        while self.cache.len() >= REPLAY {
            let (_, _, ts) = self.cache.pop_front().unwrap();
            self.floor = Some(self.floor.map_or(ts, |f| f.max(ts)));
        }
        self.cache.push_back((sender, nonce, ts));
    }

    fn nonce(&mut self) -> [u8; NONCE_LEN] {
        self.counter += 1;
        let mut n = [0x5A; NONCE_LEN];
        n[..4].copy_from_slice(&self.counter.to_be_bytes());
        n
    }

    fn seal(&mut self, sender: usize, to: usize, ts: u64, len: usize, content: Kind) -> Option<(Vec<u8>, Expect)> {
        if self.sealed.len() >= 24 {
            return None;
        }
        let nonce = self.nonce();
        let mut payload = nonce.to_vec();
        payload.resize(NONCE_LEN + len, 0xC3);
        let plaintext = match content {
            Kind::Message { wants_receipt } => payload::message(&payload, wants_receipt),
            Kind::Receipt { nonce } => payload::receipt(&nonce).to_vec(),
        };
        let bytes = seal(&keys()[sender], &keys()[to].public_key(), ts, nonce, &plaintext).unwrap();
        let s = Sealed { sender, nonce, ts, bytes: bytes.clone(), payload, for_us: to == 0, content };
        let expect = self.expect(&s);
        self.sealed.push(s);
        Some((bytes, expect))
    }

    /// What the node must do with a copy of `s` now.
    fn expect(&self, s: &Sealed) -> Expect {
        if !s.for_us {
            return Expect::Rejected(|r| *r == Rejection::Envelope(OpenError::WrongRecipient));
        }
        let now = self.unix_ms();
        let cached = self.cache.iter().any(|(k, n, _)| (*k, *n) == (s.sender, s.nonce));
        if s.ts <= now && now - s.ts > MAX_AGE_MS {
            if cached {
                Expect::Duplicate
            } else {
                Expect::Rejected(|r| matches!(r, Rejection::Envelope(OpenError::Stale { .. })))
            }
        } else if s.ts > now && s.ts - now > MAX_FUTURE_MS {
            Expect::Rejected(|r| matches!(r, Rejection::Envelope(OpenError::FromFuture { .. })))
        } else if cached || self.floor.is_some_and(|f| s.ts <= f) {
            Expect::Duplicate
        } else {
            match s.content {
                Kind::Message { wants_receipt: false } => Expect::Message,
                Kind::Message { wants_receipt: true } => Expect::MessageWithReceipt,
                Kind::Receipt { nonce } => {
                    // Only the recipient of a message still awaiting its receipt.
                    let awaited = self.published.iter().find(|p| {
                        p.nonce == nonce && p.to == s.sender && self.awaited.contains(&p.id)
                    });
                    match awaited {
                        Some(p) => Expect::Receipt(p.id),
                        None => Expect::Rejected(|r| *r == Rejection::UnexpectedReceipt),
                    }
                }
            }
        }
    }

    /// The bytes and expectation of `env` now (`None`: nothing to send).
    fn envelope(&mut self, env: Env) -> Option<(Vec<u8>, Expect)> {
        let now = self.unix_ms();
        let from = |f: u8| usize::from(f % 3);
        match env {
            Env::Fresh { from: f, skew_ms, len, receipt } => self.seal(
                from(f),
                0,
                now.saturating_add_signed(i64::from(skew_ms)),
                usize::from(len % 96),
                Kind::Message { wants_receipt: receipt },
            ),
            Env::Receipt { from: f, which } => {
                let nonce = match self.published.len() {
                    0 => [0xAB; NONCE_LEN],
                    n => self.published[usize::from(which) % n].nonce,
                };
                // Peers 1 and 2, or the stranger.
                self.seal(1 + usize::from(f % 3), 0, now, 0, Kind::Receipt { nonce })
            }
            Env::Stale { from: f, age_s } => self.seal(
                from(f),
                0,
                now - MAX_AGE_MS - 1 - u64::from(age_s) * 1000,
                8,
                Kind::Message { wants_receipt: false },
            ),
            Env::Future { from: f, ahead_s } => self.seal(
                from(f),
                0,
                now + MAX_FUTURE_MS + 1 + u64::from(ahead_s) * 1000,
                8,
                Kind::Message { wants_receipt: false },
            ),
            Env::NotForUs { from: f } => self.seal(from(f), 3, now, 8, Kind::Message { wants_receipt: false }),
            Env::Copy { index } => {
                let s = self.sealed.get(usize::from(index) % self.sealed.len().max(1))?.clone();
                Some((s.bytes.clone(), self.expect(&s)))
            }
            Env::Flip { index, pos, xor } => {
                let s = self.sealed.get(usize::from(index) % self.sealed.len().max(1))?;
                let mut bytes = s.bytes.clone();
                let n = bytes.len();
                bytes[usize::from(pos) % n] ^= xor.max(1);
                Some((bytes, Expect::NoMessage))
            }
            Env::Resign { index } => {
                let s = self.sealed.get(usize::from(index) % self.sealed.len().max(1))?.clone();
                let mut bytes = s.bytes.clone();
                let stranger = &keys()[3];
                bytes[OFF_SENDER..OFF_SENDER + 33].copy_from_slice(&stranger.public_key().to_bytes());
                let split = bytes.len() - SIGNATURE_LEN;
                let sig = stranger.sign(&bytes[..split]);
                bytes[split..].copy_from_slice(&sig);
                assert_eq!(bytes[OFF_NONCE..OFF_NONCE + NONCE_LEN], s.nonce);
                // Whatever its content, it cannot open: judge it as a plain message.
                let forged = Sealed { sender: 3, for_us: s.for_us, content: Kind::Message { wants_receipt: false }, ..s };
                let expect = match self.expect(&forged) {
                    Expect::Message => {
                        Expect::Rejected(|r| *r == Rejection::Envelope(OpenError::SenderMismatch))
                    }
                    // Never cached: the stranger never sent anything that opened.
                    other => other,
                };
                Some((bytes, expect))
            }
            Env::Raw(bytes) => Some((bytes.into_iter().take(600).collect(), Expect::NoMessage)),
        }
    }

    fn publish_packet(&mut self, i: usize, envelope: Vec<u8>, qos1: bool, dup: bool, foreign: bool) -> Vec<u8> {
        let link = &mut self.links[i];
        link.next_pkid = link.next_pkid % 60_000 + 1;
        let topic = if foreign { topic_for(&keys()[1].node_id()) } else { topic_for(&keys()[0].node_id()) };
        let (qos, pkid) = if qos1 { (QoS::AtLeastOnce, link.next_pkid) } else { (QoS::AtMostOnce, 0) };
        let mut wire = Vec::new();
        encode(&Packet::Publish { topic, qos, pkid, retain: false, dup, payload: envelope }, Protocol::V311, &mut wire).unwrap();
        wire
    }

    fn broker_sends(&mut self, i: usize, packet: Packet) {
        let Some(socket) = self.links[i].socket else { return };
        let mut wire = Vec::new();
        encode(&packet, Protocol::V311, &mut wire).unwrap();
        let _ = self.d.stream(socket, &wire);
        self.check();
    }

    /// Broker `i` brings its connection up as far as the node lets it.
    fn up(&mut self, i: usize) {
        for _ in 0..6 {
            let link = &self.links[i];
            let Some(socket) = link.socket else { return };
            if !link.connecting {
                self.d.outcome(socket, SocketOutcome::Bound { local: "10.0.0.2:40000".parse().unwrap() });
                self.check();
                if !self.links[i].connecting {
                    return;
                }
            } else if !link.connected {
                self.links[i].connected = true;
                self.d.outcome(socket, SocketOutcome::Connected { local: "10.0.0.2:40000".parse().unwrap(), remote: broker_addr(i) });
                self.check();
            } else if link.connect_seen && !link.connack_sent {
                self.links[i].connack_sent = true;
                self.broker_sends(i, Packet::ConnAck { session_present: false, code: 0, properties: Default::default() });
            } else if let Some(pkid) = self.links[i].subscribes.pop() {
                self.broker_sends(i, Packet::SubAck { pkid, codes: vec![1] });
            } else if self.links[i].pings > 0 {
                self.links[i].pings -= 1;
                self.broker_sends(i, Packet::PingResp);
            } else {
                return;
            }
        }
    }

    /// Broker `i` writes one PUBLISH carrying `env`, cut at `cut`; checks the outcome.
    fn deliver(&mut self, i: usize, env: Env, qos1: bool, dup: bool, foreign: bool, cut: u16) {
        let Some(socket) = self.links[i].socket else { return };
        let Some((envelope, expect)) = self.envelope(env) else { return };
        let connected = self.d.machine.health(self.ids[i]).is_some_and(|h| h.connected);
        let sealed = self.sealed.iter().find(|s| s.bytes == envelope).map(|s| (s.sender, s.nonce, s.ts));
        let wire = self.publish_packet(i, envelope, qos1, dup, foreign);
        let before = self.d.machine.stats();
        let (messages, rejected, receipts) = (self.messages, self.rejected.len(), self.receipts.len());
        let cut = usize::from(cut) % (wire.len() + 1);
        let _ = self.d.stream(socket, &wire[..cut]);
        self.check();
        if self.links[i].socket == Some(socket) {
            let _ = self.d.stream(socket, &wire[cut..]);
            self.check();
        }
        let after = self.d.machine.stats();
        // A receipt that opened (reported, or rejected as unexpected) is in the opener's replay
        // cache like a message (whose event updates the model).
        let receipt_opened = after.receipts_received > before.receipts_received
            || self.rejected.get(rejected..).is_some_and(|r| r.contains(&Rejection::UnexpectedReceipt));
        if let (true, Some((sender, nonce, ts))) = (receipt_opened, sealed) {
            self.remember(sender, nonce, ts);
        }
        let processed = (after.received + after.duplicates + after.rejected + after.receipts_received)
            - (before.received + before.duplicates + before.rejected + before.receipts_received);
        let new_messages = self.messages - messages;
        assert!(new_messages <= 1);
        if foreign {
            assert_eq!(processed, 0, "an envelope on another node's topic");
            return;
        }
        if !connected || self.links[i].socket != Some(socket) || self.links[i].garbled || !self.exact {
            assert!(!matches!(expect, Expect::NoMessage) || new_messages == 0, "a flipped or raw envelope opened");
            return;
        }
        assert_eq!(processed, 1, "a connected broker's PUBLISH on our topic is processed once");
        let answered = (after.receipts_sent + after.receipts_failed) - (before.receipts_sent + before.receipts_failed);
        assert_eq!(answered, u64::from(matches!(expect, Expect::MessageWithReceipt)), "{expect:?}: receipts sent");
        match expect {
            Expect::Message | Expect::MessageWithReceipt => assert_eq!(new_messages, 1, "a fresh envelope is reported"),
            Expect::Receipt(id) => {
                assert_eq!(self.receipts.len(), receipts + 1, "the receipt is reported");
                assert!(self.receipts.contains(&id), "for its message");
            }
            Expect::Duplicate => {
                assert_eq!(after.duplicates, before.duplicates + 1, "a copy is a duplicate");
            }
            Expect::Rejected(reason) => {
                assert_eq!(self.rejected.len(), rejected + 1, "rejected, with its reason");
                assert!(reason(&self.rejected[rejected]), "rejected for {:?}", self.rejected[rejected]);
            }
            Expect::NoMessage => assert_eq!(new_messages, 0, "a flipped or raw envelope opened"),
        }
    }

    fn run(&mut self, op: Op) {
        let brokers = self.links.len();
        match op {
            Op::Up { broker } => self.up(usize::from(broker) % brokers),
            Op::Publish { broker, env, qos1, dup, foreign, cut } => {
                self.deliver(usize::from(broker) % brokers, env, qos1, dup, foreign, cut)
            }
            Op::Burst { broker, envs } => {
                let i = usize::from(broker) % brokers;
                let Some(socket) = self.links[i].socket else { return };
                let mut wire = Vec::new();
                for env in envs.into_iter().take(24) {
                    // Receipts only one at a time (`deliver`): an unexpected one is rejected
                    // without naming its envelope, so the model could not tell which opened.
                    let no_message = matches!(env, Env::Flip { .. } | Env::Raw(_) | Env::Receipt { .. });
                    if let Some((envelope, _)) = self.envelope(env) {
                        if !no_message {
                            let packet = self.publish_packet(i, envelope, false, false, false);
                            wire.extend(packet);
                        }
                    }
                }
                let _ = self.d.stream(socket, &wire);
                self.check();
            }
            Op::PubAck { broker, which } => {
                let i = usize::from(broker) % brokers;
                let unacked = &mut self.links[i].unacked;
                if !unacked.is_empty() {
                    let pkid = unacked.remove(usize::from(which) % unacked.len());
                    self.broker_sends(i, Packet::PubAck { pkid });
                }
            }
            Op::Bytes { broker, data } => {
                let i = usize::from(broker) % brokers;
                if let Some(socket) = self.links[i].socket {
                    self.links[i].garbled |= !data.is_empty();
                    let _ = self.d.stream(socket, &data);
                }
            }
            Op::Drop { broker, kind } => {
                let i = usize::from(broker) % brokers;
                if let Some(socket) = self.links[i].socket {
                    self.d.outcome(socket, outcome(kind));
                }
            }
            Op::Wild { id, kind } => self.d.outcome(SocketId(BASE.wrapping_add(u32::from(id))), outcome(kind)),
            Op::Send { to, via, len, receipt } => {
                let to = keys()[1 + usize::from(to % 2)].public_key();
                let via = match via % 4 {
                    0 => None,
                    1 => Some(vec![self.ids[0]]),
                    2 => Some(vec![self.ids[brokers - 1]]),
                    _ => Some(vec![BrokerSpec::new(Some("elsewhere"), "198.51.100.1:1883".parse().unwrap()).id]),
                };
                // Unique payloads: the counter in the first bytes.
                let mut payload = self.counter.to_be_bytes().to_vec();
                payload.resize(usize::from(len % 300).max(4), 0x33);
                self.counter += 1;
                let closing = self.d.machine.is_closing();
                let result = self.d.input(|r, now| {
                    if receipt {
                        r.send_with_receipt(now, &to, via.as_deref(), &payload)
                    } else {
                        r.send(now, &to, via.as_deref(), &payload)
                    }
                });
                match result {
                    Ok(sending) => {
                        assert!(!closing);
                        assert!(sending.brokers >= 1);
                        assert!(self.sent.insert(sending.id), "message id reused");
                        self.payloads.push((payload, sending.id, receipt));
                        if receipt {
                            if self.awaited.len() >= MAX_TRACKED {
                                self.awaited.pop_front();
                            }
                            self.awaited.push_back(sending.id);
                        }
                    }
                    Err(_) => {}
                }
            }
            Op::Advance { ms } => self.d.advance(Duration::from_millis(u64::from(ms % 120_000))),
            Op::Close => self.d.input(|r, now| r.close(now)),
        }
        self.check();
    }
}

fn outcome(kind: u8) -> SocketOutcome {
    let failed = |op, error| SocketOutcome::Failed { op, destination: None, error };
    match kind % 7 {
        0 => SocketOutcome::PeerClosed,
        1 => failed(OpKind::Receive, IoError::ConnectionReset),
        2 => failed(OpKind::Send, IoError::ConnectionReset),
        3 => failed(OpKind::Connect, IoError::ConnectionRefused),
        4 => failed(OpKind::Bind, IoError::AddrInUse),
        5 => SocketOutcome::Bound { local: "10.0.0.2:40000".parse().unwrap() },
        _ => SocketOutcome::Accepted { local: "10.0.0.2:40000".parse().unwrap(), remote: "192.0.2.10:1883".parse().unwrap() },
    }
}

fuzz_target!(|input: Input| {
    let n = if input.one_broker { 1 } else { 2 };
    let specs: Vec<BrokerSpec> = (0..n).map(|i| BrokerSpec::new(Some(&format!("broker{i}")), broker_addr(i))).collect();
    let mut config = RendezvousConfig::new(specs, EPOCH_MS);
    config.mqtt.protocol = Protocol::V311;
    config.socket_base = SocketId(BASE);
    config.replay_capacity = REPLAY;
    config.max_age_ms = MAX_AGE_MS;
    config.max_future_ms = MAX_FUTURE_MS;
    config.max_tracked = MAX_TRACKED;
    config.max_pending_events = MAX_EVENTS;
    let now = Instant::from_millis(1000);
    let machine = Rendezvous::new(config, keys()[0].clone(), input.seed, now).unwrap();
    let ids: Vec<BrokerId> = machine.broker_ids().collect();
    let d = Driven::new("rendezvous", machine, |e| matches!(e, RendezvousEvent::Closed)).at(now);
    let mut h = H {
        d,
        ids,
        links: (0..n).map(|_| Link::default()).collect(),
        sealed: Vec::new(),
        counter: 0,
        delivered: HashSet::new(),
        cache: VecDeque::new(),
        floor: None,
        exact: true,
        sent: HashSet::new(),
        acked: HashSet::new(),
        payloads: Vec::new(),
        messages: 0,
        rejected: Vec::new(),
        published: Vec::new(),
        awaited: VecDeque::new(),
        receipts: HashSet::new(),
        answered: HashMap::new(),
    };
    h.d.drain();
    h.check();
    for op in input.ops.into_iter().take(64) {
        h.run(op);
    }
    h.run(Op::Close);
    assert!(h.d.checker.finished(), "Closed after close");
    h.d.checker.assert_all_closed();
    assert_eq!(h.d.machine.connected_brokers(), 0);
});

//! Multi-broker rendezvous: sealed envelopes between nodes through several MQTT brokers at once.
//!
//! A node listens on the topic derived from its node id ([`topic_for`]:
//! `p2pd/v1/<40 hex digits>`) on every broker it is configured with. [`Rendezvous::send`] seals a
//! payload to the recipient's key ([`seal`]) and publishes the same envelope, QoS 1, on **every**
//! chosen broker (at least two when two are configured), so one broker going down does not stop
//! delivery. The receiver opens each copy with one [`Opener`]: the first copy is reported, later
//! copies (from other brokers, MQTT QoS 1 redeliveries, or an attacker's raw replay) hit the
//! replay cache and are counted as duplicates, never reported twice, even when they arrive after
//! the freshness window (a copy held by the sender's client while a broker was down). Anything
//! else that fails to open (bad signature, stale, from the future, addressed to someone else) is
//! reported as [`RendezvousEvent::Rejected`] with a typed [`Rejection`] and counted, as is a
//! PUBLISH too large for the MQTT client (skipped without buffering it or dropping the
//! connection; MQTT 5 brokers are told our limit and asked not to send retained messages).
//!
//! Receipts: every envelope carries a kind byte before the application payload (see
//! [`payload`]). A message sent with [`Rendezvous::send_with_receipt`] asks its recipient for a
//! receipt; the recipient's machine answers the first copy it opens with a receipt envelope,
//! sealed to the sender and signed by the recipient, naming the message's envelope nonce, through
//! the broker the message came through. The sender reports [`RendezvousEvent::Receipt`] only for
//! a receipt signed by the key the message was sent to and naming a message still awaiting one;
//! any other receipt is rejected ([`Rejection::UnexpectedReceipt`]). Receipts are never
//! answered, so they cannot loop.
//!
//! Brokers are named by their canonical [`BrokerId`] (a hash of name/address, see
//! [`BrokerId::of`]), never by a position in a list, and each keeps its own health record
//! ([`BrokerHealth`]). Each broker is driven by its own [`MqttClient`] (reconnect with back-off and
//! jitter, keep-alive, re-subscription, QoS 1 resend after reconnect); the rendezvous machine routes
//! socket inputs to the client that owns the socket id: broker `i` (in configuration order) uses ids
//! `socket_base + i * SOCKETS_PER_BROKER ..` (see [`RendezvousConfig::socket_base`]).
//!
//! Time: `now` is the contract's [`Instant`]; envelopes carry Unix milliseconds, computed as
//! [`RendezvousConfig::unix_epoch_ms`] + `now` (the caller states the Unix time at
//! [`Instant::ZERO`]).

use core::fmt;
use p2pd_proto::Machine;
use std::collections::VecDeque;

use p2pd_proto::{Instant, Rng, SocketId, SocketOp, SocketOutcome, Transmit, Verdict};

use crate::address::BrokerId;
use crate::envelope::{seal, OpenError, Opened, Opener, SealError, NONCE_LEN};
use crate::identity::{Identity, NodeId, PublicKey, NODE_ID_LEN, PUBLIC_KEY_LEN};
use crate::mqtt::client::{MqttClient, MqttEvent, MqttStats, PublishError, PublishId};
use crate::mqtt::codec::QoS;

pub mod payload;
mod types;

pub use payload::{Content, ContentError, MAX_MESSAGE};
pub use types::{
    BrokerHealth, BrokerSpec, MessageId, Rejection, RendezvousConfig, RendezvousConfigError,
    RendezvousEvent, RendezvousStats, SendError, Sending,
};

/// The prefix of every node topic.
pub const TOPIC_PREFIX: &str = "p2pd/v1/";

/// Socket ids reserved for each broker's client.
pub const SOCKETS_PER_BROKER: u32 = 1024;

/// Most brokers one rendezvous machine talks to.
pub const MAX_BROKERS: usize = 8;

/// The MQTT topic node `node` listens on: `p2pd/v1/` + the node id in lowercase hex.
pub fn topic_for(node: &NodeId) -> String {
    format!("{TOPIC_PREFIX}{node}")
}

/// A message whose recipient was asked for a receipt.
#[derive(Clone, Copy, Debug)]
struct AwaitedReceipt {
    id: MessageId,
    to: PublicKey,
    nonce: [u8; NONCE_LEN],
}

/// One broker and its client.
struct Broker {
    spec: BrokerSpec,
    client: MqttClient,
    health: BrokerHealth,
    closed: bool,
}

/// The multi-broker rendezvous machine (see the [module docs](self)).
pub struct Rendezvous {
    identity: Identity,
    topic: String,
    brokers: Vec<Broker>,
    opener: Opener,
    rng: Rng,
    unix_epoch_ms: u64,
    socket_base: u32,
    /// (broker index, publish id, message id), oldest first.
    tracked: VecDeque<(usize, PublishId, MessageId)>,
    max_tracked: usize,
    /// Messages awaiting a receipt, oldest first (at most `max_tracked`).
    awaited: VecDeque<AwaitedReceipt>,
    events: VecDeque<RendezvousEvent>,
    max_pending_events: usize,
    next_message: u64,
    closing: bool,
    closed_reported: bool,
    deadline: Option<Instant>,
    stats: RendezvousStats,
}

impl fmt::Debug for Rendezvous {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rendezvous")
            .field("node", &self.identity.node_id())
            .field("brokers", &self.brokers.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Rendezvous {
    /// A machine for `identity` that starts connecting to every broker at once and subscribes
    /// to its own topic on each.
    pub fn new(
        config: RendezvousConfig,
        identity: Identity,
        seed: u64,
        now: Instant,
    ) -> Result<Self, RendezvousConfigError> {
        if config.brokers.is_empty() {
            return Err(RendezvousConfigError::NoBrokers);
        }
        if config.brokers.len() > MAX_BROKERS {
            return Err(RendezvousConfigError::TooManyBrokers);
        }
        for (i, b) in config.brokers.iter().enumerate() {
            if config.brokers.iter().take(i).any(|o| o.id == b.id) {
                return Err(RendezvousConfigError::DuplicateBroker(b.id));
            }
        }
        u32::try_from(config.brokers.len())
            .ok()
            .and_then(|n| n.checked_mul(SOCKETS_PER_BROKER))
            .and_then(|n| n.checked_add(config.socket_base.0))
            .ok_or(RendezvousConfigError::SocketIdsOverflow)?;
        let mut rng = Rng::from_seed(seed);
        let topic = topic_for(&identity.node_id());
        let mut brokers = Vec::with_capacity(config.brokers.len());
        let mut base = config.socket_base.0;
        for spec in &config.brokers {
            let mut mqtt = config.mqtt.clone();
            mqtt.broker = spec.address;
            mqtt.socket_base = SocketId(base);
            mqtt.socket_ids = SOCKETS_PER_BROKER;
            base = base.saturating_add(SOCKETS_PER_BROKER);
            let mut client = MqttClient::new(mqtt, rng.next_u64(), now);
            // Our topic is a valid filter by construction; a refusal would surface as no
            // `Listening` event for this broker.
            let _ = client.subscribe(now, &topic, QoS::AtLeastOnce);
            brokers.push(Broker {
                spec: *spec,
                client,
                health: BrokerHealth::default(),
                closed: false,
            });
        }
        let mut machine = Rendezvous {
            identity,
            topic,
            brokers,
            opener: Opener::with_window(
                config.replay_capacity,
                config.max_age_ms,
                config.max_future_ms,
            ),
            rng,
            unix_epoch_ms: config.unix_epoch_ms,
            socket_base: config.socket_base.0,
            tracked: VecDeque::new(),
            max_tracked: config.max_tracked.max(1),
            awaited: VecDeque::new(),
            events: VecDeque::new(),
            max_pending_events: config.max_pending_events.max(16),
            next_message: 0,
            closing: false,
            closed_reported: false,
            deadline: None,
            stats: RendezvousStats::default(),
        };
        machine.pump(now);
        Ok(machine)
    }

    /// Our node's topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The configured brokers' ids, in configuration order.
    pub fn broker_ids(&self) -> impl Iterator<Item = BrokerId> + '_ {
        self.brokers.iter().map(|b| b.spec.id)
    }

    /// The health of broker `id`, if configured.
    pub fn health(&self, id: BrokerId) -> Option<BrokerHealth> {
        self.brokers
            .iter()
            .find(|b| b.spec.id == id)
            .map(|b| b.health)
    }

    /// The MQTT client counters of broker `id`, if configured.
    pub fn mqtt_stats(&self, id: BrokerId) -> Option<MqttStats> {
        self.brokers
            .iter()
            .find(|b| b.spec.id == id)
            .map(|b| b.client.stats())
    }

    /// How many brokers are connected now.
    pub fn connected_brokers(&self) -> usize {
        self.brokers.iter().filter(|b| b.health.connected).count()
    }

    /// The counters.
    pub fn stats(&self) -> RendezvousStats {
        self.stats
    }

    /// Envelopes held in the replay cache (bounded by the configured capacity).
    pub fn replay_cache_len(&self) -> usize {
        self.opener.len()
    }

    /// Broker acknowledgements still awaited for sent messages (bounded by the configured
    /// `max_tracked`).
    pub fn pending_acks(&self) -> usize {
        self.tracked.len()
    }

    /// Messages whose receipt is still awaited (bounded by the configured `max_tracked`).
    pub fn pending_receipts(&self) -> usize {
        self.awaited.len()
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// The Unix time in milliseconds at `now`.
    pub fn unix_ms(&self, now: Instant) -> u64 {
        self.unix_epoch_ms
            .saturating_add(now.as_nanos() / 1_000_000)
    }

    /// Seals `payload` to `to` and publishes it (QoS 1) on every configured broker, or on those
    /// of `via` that are configured here when `via` is given (for example the broker ids in the
    /// peer's address). Brokers that are down hold the message until they reconnect. Each
    /// broker's PUBACK is reported as [`RendezvousEvent::Acknowledged`]; no receipt is asked for.
    pub fn send(
        &mut self,
        now: Instant,
        to: &PublicKey,
        via: Option<&[BrokerId]>,
        payload: &[u8],
    ) -> Result<Sending, SendError> {
        self.send_message(now, to, via, payload, false)
    }

    /// Like [`send`](Self::send), and asks the recipient for a receipt: when its node opens the
    /// message it answers with a signed receipt, reported here as [`RendezvousEvent::Receipt`].
    /// At most `max_tracked` messages await a receipt; beyond, the oldest is forgotten (its
    /// receipt would then be rejected as unexpected).
    pub fn send_with_receipt(
        &mut self,
        now: Instant,
        to: &PublicKey,
        via: Option<&[BrokerId]>,
        payload: &[u8],
    ) -> Result<Sending, SendError> {
        self.send_message(now, to, via, payload, true)
    }

    fn send_message(
        &mut self,
        now: Instant,
        to: &PublicKey,
        via: Option<&[BrokerId]>,
        payload: &[u8],
        wants_receipt: bool,
    ) -> Result<Sending, SendError> {
        if payload.len() > MAX_MESSAGE {
            return Err(SendError::Seal(SealError::TooLarge));
        }
        if self.closing {
            return Err(SendError::Closed);
        }
        let chosen: Vec<usize> = (0..self.brokers.len())
            .filter(|&i| {
                via.is_none_or(|ids| {
                    self.brokers
                        .get(i)
                        .is_some_and(|b| ids.contains(&b.spec.id))
                })
            })
            .collect();
        if chosen.is_empty() {
            return Err(SendError::NoCommonBroker);
        }
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill_bytes(&mut nonce);
        let content = payload::message(payload, wants_receipt);
        let envelope = seal(&self.identity, to, self.unix_ms(now), nonce, &content)
            .map_err(SendError::Seal)?;
        let topic = topic_for(&to.node_id());
        let id = MessageId(self.next_message);
        let mut published = 0usize;
        let mut last_error = None;
        for i in chosen {
            let Some(broker) = self.brokers.get_mut(i) else {
                continue;
            };
            match broker
                .client
                .publish(now, &topic, &envelope, QoS::AtLeastOnce)
            {
                Ok(pid) => {
                    published = published.saturating_add(1);
                    if self.tracked.len() >= self.max_tracked {
                        self.tracked.pop_front();
                        self.stats.untracked_acks = self.stats.untracked_acks.saturating_add(1);
                    }
                    self.tracked.push_back((i, pid, id));
                }
                Err(e) => last_error = Some(e),
            }
        }
        self.pump(now);
        if published == 0 {
            return Err(SendError::Refused(
                last_error.unwrap_or(PublishError::NotConnected),
            ));
        }
        if wants_receipt {
            if self.awaited.len() >= self.max_tracked {
                self.awaited.pop_front();
                self.stats.untracked_receipts = self.stats.untracked_receipts.saturating_add(1);
            }
            self.awaited
                .push_back(AwaitedReceipt { id, to: *to, nonce });
        }
        self.next_message = self.next_message.saturating_add(1);
        self.stats.sent = self.stats.sent.saturating_add(1);
        Ok(Sending {
            id,
            brokers: published,
        })
    }

    /// Closes every broker connection. Idempotent; [`RendezvousEvent::Closed`] comes last.
    pub fn close(&mut self, now: Instant) {
        if self.closing {
            return;
        }
        self.closing = true;
        for b in &mut self.brokers {
            b.client.close(now);
        }
        self.pump(now);
    }

    /// The broker index owning `socket`.
    fn owner(&self, socket: SocketId) -> Option<usize> {
        let offset = socket.0.checked_sub(self.socket_base)?;
        let i = usize::try_from(offset / SOCKETS_PER_BROKER).ok()?;
        (i < self.brokers.len()).then_some(i)
    }

    /// Takes every client's events into our state, then caches the deadline.
    fn pump(&mut self, now: Instant) {
        for i in 0..self.brokers.len() {
            while let Some(ev) = self.brokers.get_mut(i).and_then(|b| b.client.poll_event()) {
                self.on_client_event(i, now, ev);
            }
        }
        if self.closing && !self.closed_reported && self.brokers.iter().all(|b| b.closed) {
            self.closed_reported = true;
            // `Closed` is always delivered, even over a full queue.
            self.events.push_back(RendezvousEvent::Closed);
        }
        self.deadline = self
            .brokers
            .iter()
            .filter_map(|b| b.client.poll_timeout())
            .min();
    }

    fn on_client_event(&mut self, i: usize, now: Instant, event: MqttEvent) {
        let Some(b) = self.brokers.get_mut(i) else {
            return;
        };
        let broker = b.spec.id;
        match event {
            MqttEvent::Connected { .. } => {
                b.health.connected = true;
                b.health.listening = false;
                b.health.connects = b.health.connects.saturating_add(1);
                b.health.last_up = Some(now);
                self.push(RendezvousEvent::BrokerUp { broker });
            }
            MqttEvent::Subscribed { topic, .. } if topic == self.topic => {
                b.health.listening = true;
                self.push(RendezvousEvent::Listening { broker });
            }
            MqttEvent::Subscribed { .. } | MqttEvent::SubscribeFailed { .. } => {}
            MqttEvent::Disconnected { reason, retry_in } => {
                b.health.connected = false;
                b.health.listening = false;
                b.health.disconnects = b.health.disconnects.saturating_add(1);
                if !self.closing {
                    self.push(RendezvousEvent::BrokerDown {
                        broker,
                        reason,
                        retry_in,
                    });
                }
            }
            MqttEvent::Message { topic, payload, .. } => {
                if topic != self.topic {
                    self.stats.foreign_topic = self.stats.foreign_topic.saturating_add(1);
                    return;
                }
                self.on_envelope(i, now, &payload);
            }
            MqttEvent::PublishSkipped { size, .. } => {
                self.reject(i, Rejection::Oversized { size });
            }
            MqttEvent::TooLargeForBroker { id: pid, .. } => {
                // Never acknowledged by this broker: stop waiting for it.
                self.tracked.retain(|&(bi, p, _)| !(bi == i && p == pid));
            }
            MqttEvent::Delivered(pid) => {
                b.health.acknowledged = b.health.acknowledged.saturating_add(1);
                let pos = self
                    .tracked
                    .iter()
                    .position(|&(bi, p, _)| bi == i && p == pid);
                if let Some((_, _, id)) = pos.and_then(|p| self.tracked.remove(p)) {
                    self.push(RendezvousEvent::Acknowledged { id, broker });
                }
            }
            MqttEvent::Closed => {
                b.closed = true;
                b.health.connected = false;
                b.health.listening = false;
            }
        }
    }

    /// Opens one envelope copy that came through broker `i`.
    fn on_envelope(&mut self, i: usize, now: Instant, bytes: &[u8]) {
        let unix_ms = self.unix_ms(now);
        let result = self.opener.open(&self.identity, unix_ms, bytes);
        // A copy held back by a broker outage (the sender's client resends it once the broker is
        // back) may arrive after the freshness window: if its first copy was opened, it is still
        // a duplicate, not a rejection.
        let duplicate = match &result {
            Err(OpenError::Replay) => true,
            Err(OpenError::Stale { .. }) => self.seen_before(bytes),
            _ => false,
        };
        match result {
            Ok(opened) => self.on_opened(i, now, opened),
            Err(_) if duplicate => {
                if let Some(b) = self.brokers.get_mut(i) {
                    b.health.duplicates = b.health.duplicates.saturating_add(1);
                }
                self.stats.duplicates = self.stats.duplicates.saturating_add(1);
            }
            Err(reason) => self.reject(i, Rejection::Envelope(reason)),
        }
    }

    /// An envelope that opened: a message (answered with a receipt if it asks for one), a
    /// receipt for one of ours, or content we reject.
    fn on_opened(&mut self, i: usize, now: Instant, opened: Opened) {
        let Some(broker) = self.brokers.get(i).map(|b| b.spec.id) else {
            return;
        };
        match payload::parse(&opened.payload) {
            Ok(Content::Message {
                payload,
                wants_receipt,
            }) => {
                if let Some(b) = self.brokers.get_mut(i) {
                    b.health.delivered = b.health.delivered.saturating_add(1);
                }
                self.stats.received = self.stats.received.saturating_add(1);
                self.push(RendezvousEvent::Message {
                    from: opened.sender,
                    payload: payload.to_vec(),
                    broker,
                    sent_at_ms: opened.timestamp,
                });
                if wants_receipt {
                    self.send_receipt(i, now, &opened.sender, &opened.nonce);
                }
            }
            Ok(Content::Receipt { nonce }) => {
                let position = self
                    .awaited
                    .iter()
                    .position(|a| a.nonce == nonce && a.to == opened.sender);
                let Some(awaited) = position.and_then(|p| self.awaited.remove(p)) else {
                    self.reject(i, Rejection::UnexpectedReceipt);
                    return;
                };
                self.stats.receipts_received = self.stats.receipts_received.saturating_add(1);
                self.push(RendezvousEvent::Receipt {
                    id: awaited.id,
                    from: opened.sender,
                    broker,
                    received_at_ms: opened.timestamp,
                });
            }
            Err(e) => self.reject(i, Rejection::Content(e)),
        }
    }

    /// Answers the message with `nonce` from `sender` with a receipt, through broker `i` (the
    /// one the message came through: it reaches the sender, and one receipt per message is all
    /// an attacker can make us send).
    fn send_receipt(
        &mut self,
        i: usize,
        now: Instant,
        sender: &PublicKey,
        nonce: &[u8; NONCE_LEN],
    ) {
        let mut receipt_nonce = [0u8; NONCE_LEN];
        self.rng.fill_bytes(&mut receipt_nonce);
        let content = payload::receipt(nonce);
        let unix_ms = self.unix_ms(now);
        let sent = seal(&self.identity, sender, unix_ms, receipt_nonce, &content)
            .ok()
            .and_then(|envelope| {
                let topic = topic_for(&sender.node_id());
                let b = self.brokers.get_mut(i)?;
                b.client
                    .publish(now, &topic, &envelope, QoS::AtLeastOnce)
                    .ok()
            });
        if sent.is_some() {
            self.stats.receipts_sent = self.stats.receipts_sent.saturating_add(1);
        } else {
            self.stats.receipts_failed = self.stats.receipts_failed.saturating_add(1);
        }
    }

    /// Counts and reports a rejection of something that came through broker `i`.
    fn reject(&mut self, i: usize, reason: Rejection) {
        let Some(b) = self.brokers.get_mut(i) else {
            return;
        };
        b.health.rejected = b.health.rejected.saturating_add(1);
        let broker = b.spec.id;
        self.stats.rejected = self.stats.rejected.saturating_add(1);
        self.push(RendezvousEvent::Rejected { broker, reason });
    }

    /// Whether the envelope's (sender, nonce) is in the replay cache, read from the header
    /// (see the layout in [`crate::envelope`]).
    fn seen_before(&self, bytes: &[u8]) -> bool {
        const OFF_SENDER: usize = 1;
        const OFF_NONCE: usize = OFF_SENDER + PUBLIC_KEY_LEN + NODE_ID_LEN + 8;
        let sender = bytes
            .get(OFF_SENDER..OFF_SENDER + PUBLIC_KEY_LEN)
            .and_then(|k| PublicKey::from_bytes(k).ok());
        let nonce = bytes
            .get(OFF_NONCE..OFF_NONCE + NONCE_LEN)
            .and_then(|n| <[u8; NONCE_LEN]>::try_from(n).ok());
        match (sender, nonce) {
            (Some(sender), Some(nonce)) => self.opener.contains(&sender, &nonce),
            _ => false,
        }
    }

    fn push(&mut self, event: RendezvousEvent) {
        if self.events.len() >= self.max_pending_events {
            self.stats.events_dropped = self.stats.events_dropped.saturating_add(1);
        } else {
            self.events.push_back(event);
        }
    }
}

impl p2pd_proto::Machine for Rendezvous {
    type Event = RendezvousEvent;

    /// Stream bytes for the broker that owns `socket`.
    fn handle_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        let Some(i) = self.owner(socket) else {
            return Verdict::NotMine;
        };
        let verdict = match self.brokers.get_mut(i) {
            Some(b) => b.client.handle_stream(now, socket, data),
            None => Verdict::NotMine,
        };
        self.pump(now);
        verdict
    }

    /// A socket outcome for the broker that owns `socket`.
    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        if let Some(b) = self.owner(socket).and_then(|i| self.brokers.get_mut(i)) {
            b.client.handle_socket_result(now, socket, outcome);
        }
        self.pump(now);
    }

    /// Time passed: every client whose deadline passed handles it.
    fn handle_timeout(&mut self, now: Instant) {
        for b in &mut self.brokers {
            if b.client.poll_timeout().is_some_and(|t| t <= now) {
                b.client.handle_timeout(now);
            }
        }
        self.pump(now);
    }

    /// The next transmit of any broker's client.
    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        self.brokers
            .iter_mut()
            .find_map(|b| b.client.poll_transmit(buf))
    }

    /// The next socket intent of any broker's client.
    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        self.brokers
            .iter_mut()
            .find_map(|b| b.client.poll_socket_op())
    }

    /// The next event.
    fn poll_event(&mut self) -> Option<RendezvousEvent> {
        self.events.pop_front()
    }

    /// The earliest deadline of any broker's client (cached after every input).
    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
}

#[cfg(test)]
mod tests;

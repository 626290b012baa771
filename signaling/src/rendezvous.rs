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
//! reported as [`RendezvousEvent::Rejected`] with the typed [`OpenError`] and counted.
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
use core::net::SocketAddr;
use core::time::Duration;
use p2pd_proto::Machine;
use std::collections::VecDeque;

use p2pd_proto::{Instant, Rng, SocketId, SocketOp, SocketOutcome, Transmit, Verdict};

use crate::address::BrokerId;
use crate::envelope::{seal, OpenError, Opener, SealError, NONCE_LEN};
use crate::identity::{Identity, NodeId, PublicKey, NODE_ID_LEN, PUBLIC_KEY_LEN};
use crate::mqtt::client::{
    DisconnectReason, MqttClient, MqttConfig, MqttEvent, MqttStats, PublishError, PublishId,
};
use crate::mqtt::codec::QoS;

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

/// A broker to use: its canonical id and where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrokerSpec {
    /// The canonical id.
    pub id: BrokerId,
    /// The broker's address.
    pub address: SocketAddr,
}

impl BrokerSpec {
    /// The broker named `host` (if known) at `address`, with its canonical id.
    pub fn new(host: Option<&str>, address: SocketAddr) -> Self {
        BrokerSpec {
            id: BrokerId::of(host, address),
            address,
        }
    }
}

/// How the rendezvous machine runs. Build with [`RendezvousConfig::new`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RendezvousConfig {
    /// The brokers (1 to [`MAX_BROKERS`], distinct ids).
    pub brokers: Vec<BrokerSpec>,
    /// Settings for every broker's MQTT client; its `broker`, `socket_base` and `socket_ids` are
    /// replaced per broker.
    pub mqtt: MqttConfig,
    /// Unix time in milliseconds at [`Instant::ZERO`].
    pub unix_epoch_ms: u64,
    /// Envelopes remembered against replay (and for de-duplication). Default 4096.
    pub replay_capacity: usize,
    /// Oldest envelope accepted, in milliseconds. Default [`Opener::DEFAULT_MAX_AGE_MS`].
    pub max_age_ms: u64,
    /// Furthest-ahead envelope accepted (clock skew), in milliseconds. Default
    /// [`Opener::DEFAULT_MAX_FUTURE_MS`].
    pub max_future_ms: u64,
    /// The first socket id; broker `i` uses `socket_base + i * SOCKETS_PER_BROKER` onwards.
    pub socket_base: SocketId,
    /// Most sent messages whose broker acknowledgements are tracked. Default 1024.
    pub max_tracked: usize,
    /// Most events waiting to be polled; further messages are dropped and counted. Default 1024.
    pub max_pending_events: usize,
}

impl RendezvousConfig {
    /// Defaults for these brokers and this Unix time at [`Instant::ZERO`].
    pub fn new(brokers: Vec<BrokerSpec>, unix_epoch_ms: u64) -> Self {
        let first = brokers
            .first()
            .map_or(SocketAddr::from(([127, 0, 0, 1], 1883)), |b| b.address);
        RendezvousConfig {
            brokers,
            mqtt: MqttConfig::new(first),
            unix_epoch_ms,
            replay_capacity: 4096,
            max_age_ms: Opener::DEFAULT_MAX_AGE_MS,
            max_future_ms: Opener::DEFAULT_MAX_FUTURE_MS,
            socket_base: SocketId(0),
            max_tracked: 1024,
            max_pending_events: 1024,
        }
    }
}

/// Why a configuration was refused (API misuse).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RendezvousConfigError {
    /// No brokers.
    NoBrokers,
    /// More than [`MAX_BROKERS`].
    TooManyBrokers,
    /// Two brokers with the same id.
    DuplicateBroker(BrokerId),
    /// The socket id ranges would overflow `u32`.
    SocketIdsOverflow,
}

impl fmt::Display for RendezvousConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RendezvousConfigError::NoBrokers => f.write_str("no brokers configured"),
            RendezvousConfigError::TooManyBrokers => write!(f, "more than {MAX_BROKERS} brokers"),
            RendezvousConfigError::DuplicateBroker(id) => write!(f, "broker {id} configured twice"),
            RendezvousConfigError::SocketIdsOverflow => f.write_str("socket id range overflows"),
        }
    }
}

impl std::error::Error for RendezvousConfigError {}

/// Names one message given to [`Rendezvous::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

/// What [`Rendezvous::send`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sending {
    /// The message's id, reported back in [`RendezvousEvent::Acknowledged`].
    pub id: MessageId,
    /// On how many brokers it was published (or queued until the broker is reachable).
    pub brokers: usize,
}

/// Why [`Rendezvous::send`] refused a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendError {
    /// None of the requested brokers is configured here.
    NoCommonBroker,
    /// Sealing failed (payload too large).
    Seal(SealError),
    /// Every broker's client refused the publish; the last refusal.
    Refused(PublishError),
    /// The machine is closed.
    Closed,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::NoCommonBroker => f.write_str("none of the peer's brokers is configured"),
            SendError::Seal(e) => write!(f, "cannot seal: {e}"),
            SendError::Refused(e) => write!(f, "every broker refused: {e}"),
            SendError::Closed => f.write_str("closed"),
        }
    }
}

impl std::error::Error for SendError {}

/// What the rendezvous machine reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RendezvousEvent {
    /// Connected to a broker.
    BrokerUp {
        /// Which.
        broker: BrokerId,
    },
    /// A broker connection (attempt) ended; its client reconnects after `retry_in`.
    BrokerDown {
        /// Which.
        broker: BrokerId,
        /// Why.
        reason: DisconnectReason,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
    /// A broker granted our topic subscription: messages to us arrive through it.
    Listening {
        /// Which.
        broker: BrokerId,
    },
    /// A message for us, opened and verified: the first copy only.
    Message {
        /// The sender's key (its node id is `from.node_id()`).
        from: PublicKey,
        /// The plaintext.
        payload: Vec<u8>,
        /// The broker the first copy came through.
        broker: BrokerId,
        /// The sender's timestamp (Unix ms).
        sent_at_ms: u64,
    },
    /// An envelope on our topic that failed to open (not a duplicate).
    Rejected {
        /// The broker it came through.
        broker: BrokerId,
        /// Why.
        reason: OpenError,
    },
    /// A broker acknowledged (PUBACK) one of our messages.
    Acknowledged {
        /// The message.
        id: MessageId,
        /// The broker.
        broker: BrokerId,
    },
    /// The machine closed every broker connection: the last event.
    Closed,
}

/// One broker's health, as seen by this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrokerHealth {
    /// Connected now.
    pub connected: bool,
    /// Our subscription is granted on the current connection.
    pub listening: bool,
    /// Successful connections.
    pub connects: u64,
    /// Connections or attempts that ended.
    pub disconnects: u64,
    /// When the last connection succeeded.
    pub last_up: Option<Instant>,
    /// Envelopes received through it that opened (first copies).
    pub delivered: u64,
    /// Copies through it that were duplicates.
    pub duplicates: u64,
    /// Envelopes through it that failed to open.
    pub rejected: u64,
    /// Our messages it acknowledged.
    pub acknowledged: u64,
}

/// Counters for the whole machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RendezvousStats {
    /// Messages sent.
    pub sent: u64,
    /// Messages received (first copies).
    pub received: u64,
    /// Duplicate copies dropped.
    pub duplicates: u64,
    /// Envelopes rejected.
    pub rejected: u64,
    /// Messages on a topic that is not ours (dropped).
    pub foreign_topic: u64,
    /// Events dropped because the event queue was full.
    pub events_dropped: u64,
    /// Acknowledgements no longer tracked (the tracking table was full).
    pub untracked_acks: u64,
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
    /// peer's address). Brokers that are down hold the message until they reconnect.
    pub fn send(
        &mut self,
        now: Instant,
        to: &PublicKey,
        via: Option<&[BrokerId]>,
        payload: &[u8],
    ) -> Result<Sending, SendError> {
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
        let envelope =
            seal(&self.identity, to, self.unix_ms(now), nonce, payload).map_err(SendError::Seal)?;
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
        let Some(b) = self.brokers.get_mut(i) else {
            return;
        };
        let broker = b.spec.id;
        match result {
            Ok(opened) => {
                b.health.delivered = b.health.delivered.saturating_add(1);
                self.stats.received = self.stats.received.saturating_add(1);
                self.push(RendezvousEvent::Message {
                    from: opened.sender,
                    payload: opened.payload,
                    broker,
                    sent_at_ms: opened.timestamp,
                });
            }
            Err(_) if duplicate => {
                b.health.duplicates = b.health.duplicates.saturating_add(1);
                self.stats.duplicates = self.stats.duplicates.saturating_add(1);
            }
            Err(reason) => {
                b.health.rejected = b.health.rejected.saturating_add(1);
                self.stats.rejected = self.stats.rejected.saturating_add(1);
                self.push(RendezvousEvent::Rejected { broker, reason });
            }
        }
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

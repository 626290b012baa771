//! The rendezvous machine's configuration, events, errors and counters.

use core::fmt;
use core::net::SocketAddr;
use core::time::Duration;

use p2pd_proto::{Instant, SocketId};

use super::payload::ContentError;
use crate::address::BrokerId;
use crate::envelope::{OpenError, Opener, SealError};
use crate::identity::PublicKey;
use crate::mqtt::client::{DisconnectReason, MqttConfig, PublishError};

use super::MAX_BROKERS;

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
    /// Most sent messages whose broker acknowledgements are tracked, and most messages whose
    /// receipt is awaited. Default 1024.
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

/// Names one message given to [`Rendezvous::send`](super::Rendezvous::send).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

/// What [`Rendezvous::send`](super::Rendezvous::send) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sending {
    /// The message's id, reported back in [`RendezvousEvent::Acknowledged`].
    pub id: MessageId,
    /// On how many brokers it was published (or queued until the broker is reachable).
    pub brokers: usize,
}

/// Why [`Rendezvous::send`](super::Rendezvous::send) refused a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendError {
    /// None of the requested brokers is configured here.
    NoCommonBroker,
    /// Sealing failed (payload larger than [`MAX_MESSAGE`](super::MAX_MESSAGE)).
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
    /// Something on our topic that is not a message for us: an envelope that failed to open
    /// (not a duplicate), content we do not understand, a receipt we did not ask for, or a
    /// packet too large to take.
    Rejected {
        /// The broker it came through.
        broker: BrokerId,
        /// Why.
        reason: Rejection,
    },
    /// A broker acknowledged (PUBACK) one of our messages.
    Acknowledged {
        /// The message.
        id: MessageId,
        /// The broker.
        broker: BrokerId,
    },
    /// The recipient of a message sent with
    /// [`send_with_receipt`](super::Rendezvous::send_with_receipt) answered: a receipt sealed
    /// and signed by the recipient's key, naming that message's envelope. Reported once.
    Receipt {
        /// The message.
        id: MessageId,
        /// The recipient's key (the receipt's signer).
        from: PublicKey,
        /// The broker the receipt came through.
        broker: BrokerId,
        /// When the recipient sent the receipt (its clock, Unix ms).
        received_at_ms: u64,
    },
    /// The machine closed every broker connection: the last event.
    Closed,
}

/// Why something on our topic was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// The envelope did not open: bad signature, stale, replayed after the cache, ...
    Envelope(OpenError),
    /// The envelope opened, but its content is not a message or receipt we understand.
    Content(ContentError),
    /// A valid receipt, but it answers no message we wait for a receipt of from its signer.
    UnexpectedReceipt,
    /// A PUBLISH larger than the MQTT client's limit, skipped before it could be opened.
    Oversized {
        /// Its size in bytes.
        size: usize,
    },
}

impl Rejection {
    /// A short, stable name for the kind of rejection (`bad_signature`, `stale`,
    /// `oversized`, ...), for counting rejections by reason.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::Envelope(e) => e.label(),
            Rejection::Content(ContentError::Empty) => "empty_content",
            Rejection::Content(ContentError::UnknownKind(_)) => "unknown_kind",
            Rejection::Content(ContentError::MalformedReceipt) => "malformed_receipt",
            Rejection::UnexpectedReceipt => "unexpected_receipt",
            Rejection::Oversized { .. } => "oversized",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Envelope(e) => e.fmt(f),
            Rejection::Content(e) => e.fmt(f),
            Rejection::UnexpectedReceipt => f.write_str("receipt for no message we sent"),
            Rejection::Oversized { size } => write!(f, "MQTT message of {size} bytes skipped"),
        }
    }
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
    /// Things through it that were rejected (see [`Rejection`]).
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
    /// Things on our topic rejected (see [`Rejection`]).
    pub rejected: u64,
    /// Receipts we sent for messages that asked for one.
    pub receipts_sent: u64,
    /// Receipts we could not send (sealing or publishing failed).
    pub receipts_failed: u64,
    /// Receipts received for our messages.
    pub receipts_received: u64,
    /// Messages whose receipt is no longer awaited (the table was full).
    pub untracked_receipts: u64,
    /// Messages on a topic that is not ours (dropped).
    pub foreign_topic: u64,
    /// Events dropped because the event queue was full.
    pub events_dropped: u64,
    /// Acknowledgements no longer tracked (the tracking table was full).
    pub untracked_acks: u64,
}

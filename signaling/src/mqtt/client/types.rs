//! The client's configuration, events, errors and counters.

use core::net::SocketAddr;
use core::time::Duration;

use p2pd_proto::{IoError, OpKind, SocketId};

use crate::mqtt::codec::{CodecError, Protocol, QoS};

/// How an [`MqttClient`](super::MqttClient) connects and how much it may hold.
///
/// Build it with [`MqttConfig::new`] and change the fields you care about. Out-of-range values are
/// clamped when the client is built (see each field).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MqttConfig {
    /// The broker's address.
    pub broker: SocketAddr,
    /// The protocol to speak first. Default: [`Protocol::V5`].
    pub protocol: Protocol,
    /// With [`Protocol::V5`]: when the broker refuses the protocol version (MQTT 5 reason 0x84, or
    /// a 3.1.1 CONNACK with return code 1), switch to MQTT 3.1.1 for this and every later attempt.
    /// Default: `true`.
    pub fallback_to_v311: bool,
    /// Keep-alive: a PINGREQ is sent when nothing was sent, or nothing received, for this long.
    /// Sent to the broker rounded up to whole seconds (at most 65535). Zero disables pings.
    /// Default: 30 s.
    pub keep_alive: Duration,
    /// How long to wait for the PINGRESP before declaring the connection dead. Default: 10 s.
    pub ping_timeout: Duration,
    /// Limit for one connection attempt: bind, TCP connect and CONNACK. Default: 10 s.
    pub connect_timeout: Duration,
    /// Largest MQTT packet, fixed header included, in either direction. MQTT 5 brokers are told
    /// (CONNECT's Maximum Packet Size) and must not send us more; a larger incoming PUBLISH is
    /// skipped as it streams past, without ending the connection ([`MqttEvent::PublishSkipped`]);
    /// any other larger incoming packet is a protocol error. A larger outgoing packet is refused
    /// by [`publish`](super::MqttClient::publish). At least 64 bytes. Default: 64 KiB.
    pub max_packet_size: usize,
    /// Whether retained messages are wanted. When `false` (the default), SUBSCRIBE asks MQTT 5
    /// brokers not to send them (Retain Handling 2), and a PUBLISH that still arrives with the
    /// retain flag set (a 3.1.1 broker sends retained messages when the subscription is made) is
    /// acknowledged and dropped, counted in [`MqttStats::retained_dropped`]. Default: `false`.
    pub accept_retained: bool,
    /// Most QoS 1 messages held until their PUBACK (sent or waiting to be sent). 1..=4096.
    /// Default: 64.
    pub max_inflight: usize,
    /// Most bytes waiting in the outbound stream queue. At least `max_packet_size`.
    /// Default: 256 KiB.
    pub max_queued_bytes: usize,
    /// Most subscriptions kept (and renewed after every reconnect). 1..=1024. Default: 64.
    pub max_subscriptions: usize,
    /// Most events waiting to be polled. When full, further [`MqttEvent::Message`]s and
    /// acknowledgement events are dropped and counted ([`MqttStats::events_dropped`]); an
    /// incoming QoS 1 message that was dropped is not acknowledged. At least 16. Default: 1024.
    pub max_pending_events: usize,
    /// The first reconnect delay. The delay doubles with every attempt or connection that ends
    /// before it was healthy (see `healthy_after`), up to `backoff_max`, and is then drawn
    /// uniformly from its upper half (jitter). A fallback to 3.1.1 retries at once.
    /// Default: 500 ms.
    pub backoff_initial: Duration,
    /// The largest reconnect delay (before jitter). Default: 60 s.
    pub backoff_max: Duration,
    /// How long a connection must have lasted after its CONNACK to reset the back-off when it
    /// ends. A connection that dies sooner (a broker that accepts and then drops us at once, or
    /// a packet that kills every connection) counts as one more failure, so such a loop slows
    /// down to `backoff_max` instead of reconnecting every `backoff_initial`. Default: 10 s.
    pub healthy_after: Duration,
    /// The first socket id this client uses. Every connection attempt takes the next id in
    /// `socket_base .. socket_base + socket_ids` (wrapping), so outcomes for an earlier
    /// attempt's socket are recognised and ignored. Default: `SocketId(0)`.
    pub socket_base: SocketId,
    /// How many socket ids the client cycles through. At least 2. Default: 1024.
    pub socket_ids: u32,
}

impl MqttConfig {
    /// The defaults listed on each field, for `broker`.
    pub fn new(broker: SocketAddr) -> Self {
        Self {
            broker,
            protocol: Protocol::V5,
            fallback_to_v311: true,
            keep_alive: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_packet_size: 64 * 1024,
            accept_retained: false,
            max_inflight: 64,
            max_queued_bytes: 256 * 1024,
            max_subscriptions: 64,
            max_pending_events: 1024,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            healthy_after: Duration::from_secs(10),
            socket_base: SocketId(0),
            socket_ids: 1024,
        }
    }

    /// The same configuration with every value clamped into its documented range.
    pub(super) fn normalized(mut self) -> Self {
        // 64 bytes up to the largest packet MQTT can frame (a remaining length of 2^28 - 1).
        self.max_packet_size = self.max_packet_size.clamp(64, 268_435_460);
        self.max_inflight = self.max_inflight.clamp(1, 4096);
        self.max_queued_bytes = self.max_queued_bytes.max(self.max_packet_size);
        self.max_subscriptions = self.max_subscriptions.clamp(1, 1024);
        self.max_pending_events = self.max_pending_events.max(16);
        self.backoff_max = self.backoff_max.max(self.backoff_initial);
        self.socket_ids = self.socket_ids.max(2);
        self
    }
}

/// Names one QoS 1 message given to [`publish`](super::MqttClient::publish), reported back in
/// [`MqttEvent::Delivered`]. Unique for the life of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublishId(pub u64);

/// What the client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MqttEvent {
    /// The broker accepted the connection (CONNACK 0). Subscriptions are renewed and unacknowledged
    /// QoS 1 messages resent right after this.
    Connected {
        /// The broker kept a session for us (we always ask for a clean one, so usually `false`).
        session_present: bool,
        /// The protocol in use (differs from the configured one after a fallback).
        protocol: Protocol,
    },
    /// A SUBACK granted a subscription (again after every reconnect).
    Subscribed {
        /// The topic filter.
        topic: String,
        /// The QoS the broker granted.
        granted: QoS,
    },
    /// A SUBACK refused a subscription. The subscription is forgotten.
    SubscribeFailed {
        /// The topic filter.
        topic: String,
        /// The broker's return or reason code (0x80 or above).
        code: u8,
    },
    /// A PUBLISH larger than `max_packet_size` was skipped (its bytes discarded as they
    /// arrived); a QoS 1 one was acknowledged so the broker does not send it again. The
    /// connection goes on.
    PublishSkipped {
        /// Its size, fixed header included.
        size: usize,
        /// The limit.
        max: usize,
        /// It was a retained message.
        retained: bool,
    },
    /// A held QoS 1 message is larger than the broker's Maximum Packet Size (MQTT 5 CONNACK):
    /// sending it would only get us disconnected, so it was dropped.
    TooLargeForBroker {
        /// The message.
        id: PublishId,
        /// Its encoded size.
        size: usize,
        /// The broker's limit.
        max: usize,
    },
    /// A message arrived on a subscribed topic. QoS 1 messages may arrive more than once.
    Message {
        /// The topic name.
        topic: String,
        /// The payload.
        payload: Vec<u8>,
        /// The QoS it was delivered with.
        qos: QoS,
    },
    /// The broker acknowledged a QoS 1 message (PUBACK).
    Delivered(PublishId),
    /// A connection attempt or an established connection ended. The client reconnects by
    /// itself after `retry_in`.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
        /// The delay before the next attempt (back-off with jitter).
        retry_in: Duration,
    },
    /// The client was closed: the last event, after which it is inert.
    Closed,
}

/// Why a connection (attempt) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// Bind, TCP connect and CONNACK did not all happen within the connect timeout.
    ConnectTimeout,
    /// A PINGREQ got no PINGRESP within the ping timeout.
    KeepAliveTimeout,
    /// The broker refused the CONNECT.
    Refused {
        /// The CONNACK return (3.1.1) or reason (5) code.
        code: u8,
        /// The protocol the CONNECT used.
        protocol: Protocol,
    },
    /// The broker closed the TCP stream.
    PeerClosed,
    /// The broker sent a DISCONNECT.
    BrokerDisconnect,
    /// A socket operation failed.
    Io {
        /// What was being done.
        op: OpKind,
        /// The error.
        error: IoError,
    },
    /// The broker sent bytes that do not decode, or a packet that is too large.
    Codec(CodecError),
    /// The broker sent a well-formed packet that is not allowed here.
    ProtocolViolation(&'static str),
    /// The outbound queue overflowed while sending a mandatory packet.
    QueueOverflow,
}

/// The reason in words (`no CONNACK in time`, `the broker closed the connection`, ...).
impl core::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DisconnectReason::ConnectTimeout => f.write_str("no connection in time"),
            DisconnectReason::KeepAliveTimeout => f.write_str("no answer to a keep-alive ping"),
            DisconnectReason::Refused { code, protocol } => {
                let version = match protocol {
                    Protocol::V311 => "3.1.1",
                    Protocol::V5 => "5",
                };
                write!(
                    f,
                    "the broker refused the connection (MQTT {version} code {code})"
                )
            }
            DisconnectReason::PeerClosed => f.write_str("the broker closed the connection"),
            DisconnectReason::BrokerDisconnect => f.write_str("the broker sent DISCONNECT"),
            DisconnectReason::Io { op, error } => write!(f, "{op} failed: {error}"),
            DisconnectReason::Codec(e) => write!(f, "undecodable bytes from the broker: {e}"),
            DisconnectReason::ProtocolViolation(what) => {
                write!(f, "protocol violation by the broker: {what}")
            }
            DisconnectReason::QueueOverflow => f.write_str("the outbound queue overflowed"),
        }
    }
}

/// Why [`publish`](super::MqttClient::publish) refused a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishError {
    /// A QoS 0 message while not connected (QoS 1 messages are queued instead).
    NotConnected,
    /// The in-flight store (QoS 1) or the outbound byte queue (QoS 0) is full.
    QueueFull,
    /// The encoded packet would exceed the maximum packet size.
    TooLarge {
        /// The encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The topic is empty, contains a wildcard (`+`, `#`) or NUL, or is longer than 65535 bytes.
    InvalidTopic,
    /// QoS 2 is not supported.
    UnsupportedQoS,
    /// The client was closed.
    Closed,
}

/// Why [`subscribe`](super::MqttClient::subscribe) refused a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The subscription table is full.
    TooManySubscriptions,
    /// The filter is empty, contains NUL, is longer than 65535 bytes or its SUBSCRIBE would
    /// exceed the maximum packet size.
    InvalidFilter,
    /// QoS 2 is not supported.
    UnsupportedQoS,
    /// The client was closed.
    Closed,
}

impl core::fmt::Display for PublishError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotConnected => f.write_str("not connected (QoS 0 is not queued)"),
            Self::QueueFull => f.write_str("publish queue full"),
            Self::TooLarge { size, max } => {
                write!(f, "PUBLISH of {size} bytes exceeds the limit of {max}")
            }
            Self::InvalidTopic => f.write_str("invalid topic name"),
            Self::UnsupportedQoS => f.write_str("QoS 2 is not supported"),
            Self::Closed => f.write_str("client closed"),
        }
    }
}

impl std::error::Error for PublishError {}

impl core::fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooManySubscriptions => f.write_str("subscription table full"),
            Self::InvalidFilter => f.write_str("invalid topic filter"),
            Self::UnsupportedQoS => f.write_str("QoS 2 is not supported"),
            Self::Closed => f.write_str("client closed"),
        }
    }
}

impl std::error::Error for SubscribeError {}

/// Counters, for logs and tests. All saturate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MqttStats {
    /// Connection attempts started (Bind intents).
    pub attempts: u64,
    /// Connections the broker accepted (CONNACK 0).
    pub connects: u64,
    /// Attempts or connections that ended before `close`.
    pub disconnects: u64,
    /// Complete packets received.
    pub packets_in: u64,
    /// Packets queued for sending.
    pub packets_out: u64,
    /// QoS 1 messages sent again (with DUP) after a reconnect.
    pub resent: u64,
    /// Inputs ignored: bytes or outcomes for a socket that is not the current one, stale
    /// acknowledgements, input after close.
    pub dropped: u64,
    /// Events dropped because the event queue was full.
    pub events_dropped: u64,
    /// Connections ended by a codec error or a protocol violation.
    pub protocol_errors: u64,
    /// Incoming PUBLISH packets larger than `max_packet_size`, skipped without ending the
    /// connection.
    pub oversized_skipped: u64,
    /// Incoming retained messages dropped (`accept_retained` off).
    pub retained_dropped: u64,
}

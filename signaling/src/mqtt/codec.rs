//! MQTT packet codec: our own small packet types over the pinned `mqttbytes-ng` (=0.7.1).
//!
//! The client machine only sees [`Packet`], [`encode`], [`Decoder`] and [`CodecError`], so the
//! crate underneath can be swapped (or replaced by a hand-written v3.1.1 codec) without touching
//! it.
//!
//! Supported, for MQTT 3.1.1 ([`Protocol::V311`]) and MQTT 5 ([`Protocol::V5`]): CONNECT,
//! CONNACK, SUBSCRIBE, SUBACK, PUBLISH (QoS 0/1/2), PUBACK, PINGREQ, PINGRESP, DISCONNECT. Other
//! packet types (PUBREC/PUBREL/PUBCOMP, UNSUBSCRIBE/UNSUBACK, AUTH) and CONNECT with a will or
//! login are rejected with [`CodecError::Unsupported`].
//!
//! MQTT 5 properties and options we keep, typed:
//! - CONNECT: Maximum Packet Size ([`Packet::Connect::max_packet_size`]), so a broker never sends
//!   us a packet larger than we accept (it drops such a message for us instead);
//! - CONNACK: Maximum Packet Size, Receive Maximum and Server Keep Alive
//!   ([`ConnAckProperties`]);
//! - SUBSCRIBE: every filter's subscription options ([`SubscribeFilter`]): QoS, No Local, Retain
//!   As Published and Retain Handling ([`RetainHandling::DoNotSend`] asks the broker not to send
//!   retained messages).
//!
//! Other properties are read, checked by the crate and dropped (PUBLISH's Message Expiry
//! Interval, SUBACK's reason string, ...); we encode none of them. A PUBLISH using a Topic Alias
//! is [`CodecError::Unsupported`] (we advertise no Topic Alias Maximum, so brokers must not send
//! one). CONNACK and SUBACK codes are raw bytes in either protocol's code space. The MQTT 5-only
//! fields must keep their defaults in MQTT 3.1.1 (else [`CodecError::Invalid`] on encode).
//!
//! What we add on top of the crate:
//! - framing is ours: [`Decoder`] reads the fixed header itself, never buffers more than
//!   `max_packet_size` bytes and hands the crate exactly one complete frame. A PUBLISH larger than
//!   `max_packet_size` (header included, as MQTT 5's Maximum Packet Size) is skipped as its bytes
//!   stream past and reported as [`Decoded::Skipped`]; any other oversized frame is an error;
//! - [`encode`] validates first (string lengths <= 65535, which the crate would silently
//!   truncate; packet ids; QoS 0 without a packet id; non-zero sizes) and writes into a scratch
//!   buffer, so a failed encode leaves the output untouched;
//! - packet ids must be non-zero wherever MQTT has one, on both sides, so every decoded packet
//!   re-encodes to bytes that decode to the same packet.

use bytes::BytesMut;
use mqttbytes_ng as mb;

mod decoder;
mod v311;
mod v5;

pub use decoder::{Decoded, Decoder, SkippedPublish};

/// Largest remaining length MQTT can express (four 7-bit groups).
const MAX_REMAINING_LEN: usize = 268_435_455;
/// Largest fixed header: one type byte and four remaining-length bytes.
const MAX_FIXED_HEADER: usize = 5;

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5), with the properties listed in the module docs.
    V5,
}

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QoS {
    /// QoS 0.
    AtMostOnce,
    /// QoS 1 (PUBACK).
    AtLeastOnce,
    /// QoS 2 (PUBREC/PUBREL/PUBCOMP; those packets are not supported yet).
    ExactlyOnce,
}

/// MQTT 5 Retain Handling: whether the broker sends the retained messages matching a filter when
/// the subscription is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: send them at every SUBSCRIBE (MQTT 3.1.1's only behaviour).
    #[default]
    SendOnSubscribe,
    /// 1: send them only if the subscription did not exist yet.
    SendOnNewSubscribe,
    /// 2: never send them.
    DoNotSend,
}

/// One topic filter of a SUBSCRIBE with its subscription options.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubscribeFilter {
    /// The topic filter (UTF-8, at most 65535 bytes).
    pub filter: String,
    /// The requested QoS.
    pub qos: QoS,
    /// MQTT 5: do not send us our own messages. Must be `false` in 3.1.1.
    pub no_local: bool,
    /// MQTT 5: keep the retain flag of forwarded messages. Must be `false` in 3.1.1.
    pub retain_as_published: bool,
    /// MQTT 5: when to send retained messages. Must be the default in 3.1.1.
    pub retain_handling: RetainHandling,
}

impl SubscribeFilter {
    /// `filter` at `qos` with the default options (MQTT 3.1.1's behaviour).
    pub fn new(filter: impl Into<String>, qos: QoS) -> Self {
        Self {
            filter: filter.into(),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendOnSubscribe,
        }
    }

    /// Whether every MQTT 5-only option has its default.
    fn has_default_options(&self) -> bool {
        !self.no_local
            && !self.retain_as_published
            && self.retain_handling == RetainHandling::SendOnSubscribe
    }
}

/// The MQTT 5 CONNACK properties we keep (all `None` in MQTT 3.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ConnAckProperties {
    /// The largest packet the broker accepts (non-zero).
    pub max_packet_size: Option<u32>,
    /// How many QoS 1/2 messages the broker processes at once (non-zero).
    pub receive_maximum: Option<u16>,
    /// The keep-alive the broker wants instead of ours, in seconds.
    pub server_keep_alive: Option<u16>,
}

/// The MQTT packets the signaling client needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Packet {
    /// CONNECT (no will, no login).
    Connect {
        /// Client identifier (UTF-8, at most 65535 bytes).
        client_id: String,
        /// Keep-alive in seconds (0 disables it).
        keep_alive: u16,
        /// Clean session (3.1.1) / clean start (5).
        clean_session: bool,
        /// Protocol level written in the packet; must match the codec's protocol.
        protocol: Protocol,
        /// MQTT 5 Maximum Packet Size: the largest packet we accept (non-zero). Must be `None`
        /// in 3.1.1.
        max_packet_size: Option<u32>,
    },
    /// CONNACK.
    ConnAck {
        /// The broker kept a session for us.
        session_present: bool,
        /// Return code: 3.1.1 uses 0 (accepted) to 5; MQTT 5 uses 0 or a reason code >= 0x80.
        code: u8,
        /// MQTT 5 properties (the default in 3.1.1).
        properties: ConnAckProperties,
    },
    /// SUBSCRIBE (at least one filter; non-zero packet id).
    Subscribe {
        /// Packet identifier (non-zero).
        pkid: u16,
        /// Topic filters with their options.
        topics: Vec<SubscribeFilter>,
    },
    /// SUBACK.
    SubAck {
        /// Packet identifier (non-zero).
        pkid: u16,
        /// One return code per filter: 0, 1, 2 (granted QoS) or 0x80 (failure); MQTT 5 adds
        /// its reason codes (0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2).
        codes: Vec<u8>,
    },
    /// PUBLISH.
    Publish {
        /// Topic name.
        topic: String,
        /// Delivery QoS.
        qos: QoS,
        /// Packet identifier: 0 for QoS 0, non-zero otherwise.
        pkid: u16,
        /// Retain flag.
        retain: bool,
        /// Duplicate-delivery flag.
        dup: bool,
        /// Application payload.
        payload: Vec<u8>,
    },
    /// PUBACK (QoS 1 acknowledgement).
    PubAck {
        /// Packet identifier (non-zero).
        pkid: u16,
    },
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect,
}

/// Why a packet could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CodecError {
    /// A frame that is not a PUBLISH announces (or a packet would need) more than the allowed
    /// size.
    TooLarge {
        /// Frame size in bytes (fixed header included), as announced or computed.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a valid packet.
    Malformed(&'static str),
    /// A valid packet (or protocol) this codec does not handle yet.
    Unsupported(&'static str),
    /// The packet cannot be encoded as given (e.g. a string over 65535 bytes).
    Invalid(&'static str),
    /// An earlier error ended this decoder's stream; the connection must be closed.
    Poisoned,
}

impl core::fmt::Display for CodecError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooLarge { size, max } => {
                write!(f, "MQTT packet of {size} bytes exceeds the limit of {max}")
            }
            Self::Malformed(why) => write!(f, "malformed MQTT packet: {why}"),
            Self::Unsupported(what) => write!(f, "unsupported MQTT packet: {what}"),
            Self::Invalid(why) => write!(f, "MQTT packet cannot be encoded: {why}"),
            Self::Poisoned => f.write_str("MQTT stream already failed"),
        }
    }
}

impl std::error::Error for CodecError {}

/// Encodes `packet` for `protocol` and appends it to `out`. On error `out` is unchanged.
pub fn encode(packet: &Packet, protocol: Protocol, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let mut scratch = BytesMut::new();
    match protocol {
        Protocol::V311 => v311::to_v4(packet)?
            .write(&mut scratch, MAX_REMAINING_LEN)
            .map_err(map_encode_err)?,
        Protocol::V5 => v5::to_v5(packet)?
            .write(&mut scratch, None)
            .map_err(map_encode_err)?,
    };
    out.extend_from_slice(&scratch);
    Ok(())
}

fn check_str(s: &str) -> Result<(), CodecError> {
    if s.len() > usize::from(u16::MAX) {
        return Err(CodecError::Invalid("string longer than 65535 bytes"));
    }
    Ok(())
}

fn nonzero(pkid: u16) -> Result<u16, CodecError> {
    if pkid == 0 {
        return Err(CodecError::Invalid("packet id must be non-zero"));
    }
    Ok(pkid)
}

fn decoded_nonzero(pkid: u16) -> Result<u16, CodecError> {
    if pkid == 0 {
        return Err(CodecError::Malformed("packet id 0"));
    }
    Ok(pkid)
}

fn check_publish(topic: &str, qos: QoS, pkid: u16) -> Result<(), CodecError> {
    check_str(topic)?;
    match qos {
        QoS::AtMostOnce if pkid != 0 => Err(CodecError::Invalid("QoS 0 PUBLISH with a packet id")),
        QoS::AtMostOnce => Ok(()),
        QoS::AtLeastOnce | QoS::ExactlyOnce => nonzero(pkid).map(|_| ()),
    }
}

fn qos_to(q: QoS) -> mb::QoS {
    match q {
        QoS::AtMostOnce => mb::QoS::AtMostOnce,
        QoS::AtLeastOnce => mb::QoS::AtLeastOnce,
        QoS::ExactlyOnce => mb::QoS::ExactlyOnce,
    }
}

fn qos_from(q: mb::QoS) -> QoS {
    match q {
        mb::QoS::AtMostOnce => QoS::AtMostOnce,
        mb::QoS::AtLeastOnce => QoS::AtLeastOnce,
        mb::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn map_encode_err(e: mb::Error) -> CodecError {
    match e {
        mb::Error::PayloadTooLong | mb::Error::OutgoingPacketTooLarge { .. } => {
            CodecError::Invalid("packet longer than MQTT's 256 MiB limit")
        }
        mb::Error::PacketIdZero => CodecError::Invalid("packet id must be non-zero"),
        _ => CodecError::Invalid("rejected by the encoder"),
    }
}

fn map_decode_err(e: mb::Error) -> CodecError {
    use mb::Error as E;
    CodecError::Malformed(match e {
        E::InvalidPacketType(_) => "invalid packet type",
        E::InvalidProtocol => "protocol name is not MQTT",
        E::InvalidProtocolLevel(_) => "invalid protocol level",
        E::InvalidConnectReturnCode(_) => "invalid CONNACK return code",
        E::InvalidQoS(_) => "invalid QoS",
        E::InvalidSubscribeReasonCode(_) => "invalid SUBACK return code",
        E::PacketIdZero => "packet id 0",
        E::TopicNotUtf8 => "string is not UTF-8",
        E::BoundaryCrossed(_) => "length field crosses the packet end",
        E::EmptySubscription => "SUBSCRIBE without a filter",
        E::PayloadRequired => "packet body missing",
        E::MalformedRemainingLength => "remaining length over 4 bytes",
        E::InvalidPropertyType(_) => "invalid property",
        E::InvalidRetainForwardRule(_) => "invalid retain handling",
        E::InsufficientBytes(_) => "framing disagreement",
        _ => "rejected by the decoder",
    })
}

#[cfg(test)]
mod tests;

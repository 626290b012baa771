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
//! MQTT 5 limits (next): we encode no properties and drop received ones (CONNACK's
//! Maximum Packet Size, PUBLISH's Message Expiry Interval, ...), subscription options beyond
//! QoS, PUBACK and DISCONNECT reason codes. A PUBLISH using a Topic Alias is
//! [`CodecError::Unsupported`] (we advertise no Topic Alias Maximum, so brokers must not send
//! one). CONNACK and SUBACK codes are raw bytes in either protocol's code space.
//!
//! What we add on top of the crate:
//! - framing is ours: [`Decoder`] reads the fixed header itself, rejects a frame larger than
//!   `max_packet_size` (the whole packet, header included, as MQTT 5's Maximum Packet Size) from
//!   the header alone, never buffers more than `max_packet_size` bytes, and hands the crate
//!   exactly one complete frame;
//! - [`encode`] validates first (string lengths <= 65535, which the crate would silently
//!   truncate; packet ids; QoS 0 without a packet id) and writes into a scratch buffer, so a
//!   failed encode leaves the output untouched;
//! - packet ids must be non-zero wherever MQTT has one, on both sides, so every decoded packet
//!   re-encodes to bytes that decode to the same packet.

use bytes::BytesMut;
use mqttbytes_ng as mb;
use mqttbytes_ng::{v4, v5};

/// Largest remaining length MQTT can express (four 7-bit groups).
const MAX_REMAINING_LEN: usize = 268_435_455;
/// Largest fixed header: one type byte and four remaining-length bytes.
const MAX_FIXED_HEADER: usize = 5;

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5), without properties (see the module docs).
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
    },
    /// CONNACK.
    ConnAck {
        /// The broker kept a session for us.
        session_present: bool,
        /// Return code: 3.1.1 uses 0 (accepted) to 5; MQTT 5 uses 0 or a reason code >= 0x80.
        code: u8,
    },
    /// SUBSCRIBE (at least one filter; non-zero packet id).
    Subscribe {
        /// Packet identifier (non-zero).
        pkid: u16,
        /// Topic filters with their requested QoS.
        topics: Vec<(String, QoS)>,
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
    /// A frame announces (or a packet would need) more than the allowed size.
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
        Protocol::V311 => to_v4(packet)?
            .write(&mut scratch, MAX_REMAINING_LEN)
            .map_err(map_encode_err)?,
        Protocol::V5 => to_v5(packet)?
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

fn connack_code_to_v4(code: u8) -> Result<v4::ConnectReturnCode, CodecError> {
    use v4::ConnectReturnCode as C;
    Ok(match code {
        0 => C::Success,
        1 => C::RefusedProtocolVersion,
        2 => C::BadClientId,
        3 => C::ServiceUnavailable,
        4 => C::BadUserNamePassword,
        5 => C::NotAuthorized,
        _ => return Err(CodecError::Invalid("MQTT 3.1.1 CONNACK code above 5")),
    })
}

fn connack_code_from_v4(code: v4::ConnectReturnCode) -> u8 {
    use v4::ConnectReturnCode as C;
    match code {
        C::Success => 0,
        C::RefusedProtocolVersion => 1,
        C::BadClientId => 2,
        C::ServiceUnavailable => 3,
        C::BadUserNamePassword => 4,
        C::NotAuthorized => 5,
    }
}

fn suback_code_to_v4(code: u8) -> Result<v4::SubscribeReasonCode, CodecError> {
    use v4::SubscribeReasonCode as C;
    Ok(match code {
        0 => C::Success(mb::QoS::AtMostOnce),
        1 => C::Success(mb::QoS::AtLeastOnce),
        2 => C::Success(mb::QoS::ExactlyOnce),
        0x80 => C::Failure,
        _ => return Err(CodecError::Invalid("SUBACK code not 0, 1, 2 or 0x80")),
    })
}

fn suback_code_from_v4(code: v4::SubscribeReasonCode) -> u8 {
    match code {
        v4::SubscribeReasonCode::Success(q) => match q {
            mb::QoS::AtMostOnce => 0,
            mb::QoS::AtLeastOnce => 1,
            mb::QoS::ExactlyOnce => 2,
        },
        v4::SubscribeReasonCode::Failure => 0x80,
    }
}

fn to_v4(packet: &Packet) -> Result<v4::Packet, CodecError> {
    Ok(match packet {
        Packet::Connect {
            client_id,
            keep_alive,
            clean_session,
            protocol,
        } => {
            if *protocol != Protocol::V311 {
                return Err(CodecError::Invalid("CONNECT protocol differs from codec's"));
            }
            check_str(client_id)?;
            let mut c = v4::Connect::new(client_id.as_str());
            c.keep_alive = *keep_alive;
            c.clean_session = *clean_session;
            v4::Packet::Connect(c)
        }
        Packet::ConnAck {
            session_present,
            code,
        } => v4::Packet::ConnAck(v4::ConnAck::new(
            connack_code_to_v4(*code)?,
            *session_present,
        )),
        Packet::Subscribe { pkid, topics } => {
            if topics.is_empty() {
                return Err(CodecError::Invalid("SUBSCRIBE without a filter"));
            }
            let mut filters = Vec::with_capacity(topics.len());
            for (path, qos) in topics {
                check_str(path)?;
                filters.push(v4::SubscribeFilter::new(path.clone(), qos_to(*qos)));
            }
            v4::Packet::Subscribe(v4::Subscribe {
                pkid: nonzero(*pkid)?,
                filters,
            })
        }
        Packet::SubAck { pkid, codes } => {
            if codes.is_empty() {
                return Err(CodecError::Invalid("SUBACK without a return code"));
            }
            let codes = codes
                .iter()
                .map(|c| suback_code_to_v4(*c))
                .collect::<Result<Vec<_>, _>>()?;
            v4::Packet::SubAck(v4::SubAck::new(nonzero(*pkid)?, codes))
        }
        Packet::Publish {
            topic,
            qos,
            pkid,
            retain,
            dup,
            payload,
        } => {
            check_publish(topic, *qos, *pkid)?;
            let mut p = v4::Publish::new(topic.as_str(), qos_to(*qos), payload.as_slice());
            p.pkid = *pkid;
            p.retain = *retain;
            p.dup = *dup;
            v4::Packet::Publish(p)
        }
        Packet::PubAck { pkid } => v4::Packet::PubAck(v4::PubAck::new(nonzero(*pkid)?)),
        Packet::PingReq => v4::Packet::PingReq,
        Packet::PingResp => v4::Packet::PingResp,
        Packet::Disconnect => v4::Packet::Disconnect,
    })
}

fn decoded_nonzero(pkid: u16) -> Result<u16, CodecError> {
    if pkid == 0 {
        return Err(CodecError::Malformed("packet id 0"));
    }
    Ok(pkid)
}

fn from_v4(packet: v4::Packet) -> Result<Packet, CodecError> {
    Ok(match packet {
        v4::Packet::Connect(c) => {
            if c.protocol != mb::Protocol::V4 {
                return Err(CodecError::Unsupported("CONNECT level 5 on a 3.1.1 stream"));
            }
            if c.last_will.is_some() || c.login.is_some() {
                return Err(CodecError::Unsupported("CONNECT with will or login"));
            }
            Packet::Connect {
                client_id: c.client_id,
                keep_alive: c.keep_alive,
                clean_session: c.clean_session,
                protocol: Protocol::V311,
            }
        }
        v4::Packet::ConnAck(a) => Packet::ConnAck {
            session_present: a.session_present,
            code: connack_code_from_v4(a.code),
        },
        v4::Packet::Subscribe(s) => Packet::Subscribe {
            pkid: decoded_nonzero(s.pkid)?,
            topics: s
                .filters
                .into_iter()
                .map(|f| (f.path, qos_from(f.qos)))
                .collect(),
        },
        v4::Packet::SubAck(s) => {
            if s.return_codes.is_empty() {
                return Err(CodecError::Malformed("SUBACK without a return code"));
            }
            Packet::SubAck {
                pkid: decoded_nonzero(s.pkid)?,
                codes: s
                    .return_codes
                    .into_iter()
                    .map(suback_code_from_v4)
                    .collect(),
            }
        }
        v4::Packet::Publish(p) => Packet::Publish {
            topic: p.topic,
            qos: qos_from(p.qos),
            pkid: p.pkid,
            retain: p.retain,
            dup: p.dup,
            payload: p.payload.to_vec(),
        },
        v4::Packet::PubAck(a) => Packet::PubAck {
            pkid: decoded_nonzero(a.pkid)?,
        },
        v4::Packet::PingReq => Packet::PingReq,
        v4::Packet::PingResp => Packet::PingResp,
        v4::Packet::Disconnect => Packet::Disconnect,
        v4::Packet::PubRec(_) => return Err(CodecError::Unsupported("PUBREC")),
        v4::Packet::PubRel(_) => return Err(CodecError::Unsupported("PUBREL")),
        v4::Packet::PubComp(_) => return Err(CodecError::Unsupported("PUBCOMP")),
        v4::Packet::Unsubscribe(_) => return Err(CodecError::Unsupported("UNSUBSCRIBE")),
        v4::Packet::UnsubAck(_) => return Err(CodecError::Unsupported("UNSUBACK")),
    })
}

fn connack_code_to_v5(code: u8) -> Result<v5::ConnectReturnCode, CodecError> {
    use v5::ConnectReturnCode as C;
    // Only MQTT 5 codes: the crate's encoder hits `unreachable!` on its 3.1.1-only variants.
    Ok(match code {
        0 => C::Success,
        128 => C::UnspecifiedError,
        129 => C::MalformedPacket,
        130 => C::ProtocolError,
        131 => C::ImplementationSpecificError,
        132 => C::UnsupportedProtocolVersion,
        133 => C::ClientIdentifierNotValid,
        134 => C::BadUserNamePassword,
        135 => C::NotAuthorized,
        136 => C::ServerUnavailable,
        137 => C::ServerBusy,
        138 => C::Banned,
        140 => C::BadAuthenticationMethod,
        144 => C::TopicNameInvalid,
        149 => C::PacketTooLarge,
        151 => C::QuotaExceeded,
        153 => C::PayloadFormatInvalid,
        154 => C::RetainNotSupported,
        155 => C::QoSNotSupported,
        156 => C::UseAnotherServer,
        157 => C::ServerMoved,
        159 => C::ConnectionRateExceeded,
        _ => return Err(CodecError::Invalid("not an MQTT 5 CONNACK reason code")),
    })
}

fn connack_code_from_v5(code: v5::ConnectReturnCode) -> Result<u8, CodecError> {
    use v5::ConnectReturnCode as C;
    Ok(match code {
        C::Success => 0,
        C::UnspecifiedError => 128,
        C::MalformedPacket => 129,
        C::ProtocolError => 130,
        C::ImplementationSpecificError => 131,
        C::UnsupportedProtocolVersion => 132,
        C::ClientIdentifierNotValid => 133,
        C::BadUserNamePassword => 134,
        C::NotAuthorized => 135,
        C::ServerUnavailable => 136,
        C::ServerBusy => 137,
        C::Banned => 138,
        C::BadAuthenticationMethod => 140,
        C::TopicNameInvalid => 144,
        C::PacketTooLarge => 149,
        C::QuotaExceeded => 151,
        C::PayloadFormatInvalid => 153,
        C::RetainNotSupported => 154,
        C::QoSNotSupported => 155,
        C::UseAnotherServer => 156,
        C::ServerMoved => 157,
        C::ConnectionRateExceeded => 159,
        C::RefusedProtocolVersion | C::BadClientId | C::ServiceUnavailable => {
            return Err(CodecError::Malformed("3.1.1 CONNACK code in MQTT 5"))
        }
    })
}

fn suback_code_to_v5(code: u8) -> Result<v5::SubscribeReasonCode, CodecError> {
    use v5::SubscribeReasonCode as C;
    Ok(match code {
        0 => C::Success(mb::QoS::AtMostOnce),
        1 => C::Success(mb::QoS::AtLeastOnce),
        2 => C::Success(mb::QoS::ExactlyOnce),
        0x80 => C::Unspecified,
        0x83 => C::ImplementationSpecific,
        0x87 => C::NotAuthorized,
        0x8F => C::TopicFilterInvalid,
        0x91 => C::PkidInUse,
        0x97 => C::QuotaExceeded,
        0x9E => C::SharedSubscriptionsNotSupported,
        0xA1 => C::SubscriptionIdNotSupported,
        0xA2 => C::WildcardSubscriptionsNotSupported,
        _ => return Err(CodecError::Invalid("not an MQTT 5 SUBACK reason code")),
    })
}

fn suback_code_from_v5(code: v5::SubscribeReasonCode) -> u8 {
    use v5::SubscribeReasonCode as C;
    match code {
        C::Success(q) => match q {
            mb::QoS::AtMostOnce => 0,
            mb::QoS::AtLeastOnce => 1,
            mb::QoS::ExactlyOnce => 2,
        },
        C::Failure | C::Unspecified => 0x80,
        C::ImplementationSpecific => 0x83,
        C::NotAuthorized => 0x87,
        C::TopicFilterInvalid => 0x8F,
        C::PkidInUse => 0x91,
        C::QuotaExceeded => 0x97,
        C::SharedSubscriptionsNotSupported => 0x9E,
        C::SubscriptionIdNotSupported => 0xA1,
        C::WildcardSubscriptionsNotSupported => 0xA2,
    }
}

fn check_publish(topic: &str, qos: QoS, pkid: u16) -> Result<(), CodecError> {
    check_str(topic)?;
    match qos {
        QoS::AtMostOnce if pkid != 0 => Err(CodecError::Invalid("QoS 0 PUBLISH with a packet id")),
        QoS::AtMostOnce => Ok(()),
        QoS::AtLeastOnce | QoS::ExactlyOnce => nonzero(pkid).map(|_| ()),
    }
}

fn to_v5(packet: &Packet) -> Result<v5::Packet, CodecError> {
    Ok(match packet {
        Packet::Connect {
            client_id,
            keep_alive,
            clean_session,
            protocol,
        } => {
            if *protocol != Protocol::V5 {
                return Err(CodecError::Invalid("CONNECT protocol differs from codec's"));
            }
            check_str(client_id)?;
            let c = v5::Connect {
                keep_alive: *keep_alive,
                client_id: client_id.clone(),
                clean_start: *clean_session,
                properties: None,
            };
            v5::Packet::Connect(c, None, None)
        }
        Packet::ConnAck {
            session_present,
            code,
        } => v5::Packet::ConnAck(v5::ConnAck {
            session_present: *session_present,
            code: connack_code_to_v5(*code)?,
            properties: None,
        }),
        Packet::Subscribe { pkid, topics } => {
            if topics.is_empty() {
                return Err(CodecError::Invalid("SUBSCRIBE without a filter"));
            }
            let mut filters = Vec::with_capacity(topics.len());
            for (path, qos) in topics {
                check_str(path)?;
                filters.push(v5::Filter::new(path.as_str(), qos_to(*qos)));
            }
            v5::Packet::Subscribe(v5::Subscribe {
                pkid: nonzero(*pkid)?,
                filters,
                properties: None,
            })
        }
        Packet::SubAck { pkid, codes } => {
            if codes.is_empty() {
                return Err(CodecError::Invalid("SUBACK without a return code"));
            }
            let return_codes = codes
                .iter()
                .map(|c| suback_code_to_v5(*c))
                .collect::<Result<Vec<_>, _>>()?;
            v5::Packet::SubAck(v5::SubAck {
                pkid: nonzero(*pkid)?,
                return_codes,
                properties: None,
            })
        }
        Packet::Publish {
            topic,
            qos,
            pkid,
            retain,
            dup,
            payload,
        } => {
            check_publish(topic, *qos, *pkid)?;
            v5::Packet::Publish(v5::Publish {
                dup: *dup,
                qos: qos_to(*qos),
                retain: *retain,
                topic: bytes::Bytes::copy_from_slice(topic.as_bytes()),
                pkid: *pkid,
                payload: bytes::Bytes::copy_from_slice(payload),
                properties: None,
            })
        }
        Packet::PubAck { pkid } => v5::Packet::PubAck(v5::PubAck::new(nonzero(*pkid)?, None)),
        Packet::PingReq => v5::Packet::PingReq(v5::PingReq),
        Packet::PingResp => v5::Packet::PingResp(v5::PingResp),
        Packet::Disconnect => v5::Packet::Disconnect(v5::Disconnect::new(
            v5::DisconnectReasonCode::NormalDisconnection,
        )),
    })
}

fn from_v5(packet: v5::Packet) -> Result<Packet, CodecError> {
    Ok(match packet {
        v5::Packet::Connect(c, will, login) => {
            if will.is_some() || login.is_some() {
                return Err(CodecError::Unsupported("CONNECT with will or login"));
            }
            Packet::Connect {
                client_id: c.client_id,
                keep_alive: c.keep_alive,
                clean_session: c.clean_start,
                protocol: Protocol::V5,
            }
        }
        v5::Packet::ConnAck(a) => Packet::ConnAck {
            session_present: a.session_present,
            code: connack_code_from_v5(a.code)?,
        },
        v5::Packet::Subscribe(s) => Packet::Subscribe {
            pkid: decoded_nonzero(s.pkid)?,
            topics: s
                .filters
                .into_iter()
                .map(|f| (f.path, qos_from(f.qos)))
                .collect(),
        },
        v5::Packet::SubAck(s) => {
            if s.return_codes.is_empty() {
                return Err(CodecError::Malformed("SUBACK without a return code"));
            }
            Packet::SubAck {
                pkid: decoded_nonzero(s.pkid)?,
                codes: s
                    .return_codes
                    .into_iter()
                    .map(suback_code_from_v5)
                    .collect(),
            }
        }
        v5::Packet::Publish(p) => {
            if p.properties
                .as_ref()
                .is_some_and(|pr| pr.topic_alias.is_some())
            {
                return Err(CodecError::Unsupported("PUBLISH with a topic alias"));
            }
            let topic = String::from_utf8(p.topic.to_vec())
                .map_err(|_| CodecError::Malformed("string is not UTF-8"))?;
            Packet::Publish {
                topic,
                qos: qos_from(p.qos),
                pkid: p.pkid,
                retain: p.retain,
                dup: p.dup,
                payload: p.payload.to_vec(),
            }
        }
        v5::Packet::PubAck(a) => Packet::PubAck {
            pkid: decoded_nonzero(a.pkid)?,
        },
        v5::Packet::PingReq(_) => Packet::PingReq,
        v5::Packet::PingResp(_) => Packet::PingResp,
        v5::Packet::Disconnect(_) => Packet::Disconnect,
        v5::Packet::Auth(_) => return Err(CodecError::Unsupported("AUTH")),
        v5::Packet::PubRec(_) => return Err(CodecError::Unsupported("PUBREC")),
        v5::Packet::PubRel(_) => return Err(CodecError::Unsupported("PUBREL")),
        v5::Packet::PubComp(_) => return Err(CodecError::Unsupported("PUBCOMP")),
        v5::Packet::Unsubscribe(_) => return Err(CodecError::Unsupported("UNSUBSCRIBE")),
        v5::Packet::UnsubAck(_) => return Err(CodecError::Unsupported("UNSUBACK")),
    })
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

/// Parses a fixed header at the start of `buf`: `Ok(None)` if more bytes are needed, else
/// `(header_len, remaining_len)`.
fn parse_fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, CodecError> {
    let mut remaining: usize = 0;
    let mut multiplier: usize = 1;
    for (i, byte) in buf.iter().skip(1).take(4).enumerate() {
        // At most four digits: the value stays below 2^28, nothing saturates.
        remaining = remaining.saturating_add(usize::from(byte & 0x7f).saturating_mul(multiplier));
        multiplier = multiplier.saturating_mul(128);
        if byte & 0x80 == 0 {
            return Ok(Some((i.saturating_add(2), remaining)));
        }
        if i == 3 {
            return Err(CodecError::Malformed("remaining length over 4 bytes"));
        }
    }
    Ok(None)
}

/// Streaming MQTT decoder: feed bytes with [`push`](Decoder::push), take packets with
/// [`next`](Decoder::next). Frames may be split anywhere and several may arrive at once.
///
/// It buffers at most `max_packet_size` bytes (at least 5): [`push`](Decoder::push) accepts
/// what fits and returns how many bytes it took, so the caller drains packets with
/// [`next`](Decoder::next) and pushes the rest. A frame larger than `max_packet_size`
/// (header included) is rejected as soon as its fixed header is complete. After any error
/// the decoder is poisoned: the MQTT connection has to be closed.
///
/// ```
/// use p2pd_signaling::mqtt::{encode, Decoder, Packet, Protocol};
/// let mut wire = Vec::new();
/// encode(&Packet::PingReq, Protocol::V311, &mut wire).unwrap();
/// encode(&Packet::PubAck { pkid: 7 }, Protocol::V311, &mut wire).unwrap();
/// let mut decoder = Decoder::new(Protocol::V311, 1024);
/// assert_eq!(decoder.push(&wire).unwrap(), wire.len());
/// assert_eq!(decoder.next(), Some(Ok(Packet::PingReq)));
/// assert_eq!(decoder.next(), Some(Ok(Packet::PubAck { pkid: 7 })));
/// assert_eq!(decoder.next(), None);
/// ```
#[derive(Debug)]
pub struct Decoder {
    protocol: Protocol,
    buffer: BytesMut,
    max_packet_size: usize,
    poisoned: bool,
}

impl Decoder {
    /// A decoder for `protocol` that accepts frames of up to `max_packet_size` bytes (fixed
    /// header included).
    pub fn new(protocol: Protocol, max_packet_size: usize) -> Self {
        Self {
            protocol,
            buffer: BytesMut::new(),
            max_packet_size,
            poisoned: false,
        }
    }

    /// Largest number of bytes this decoder ever buffers.
    pub fn capacity(&self) -> usize {
        self.max_packet_size.max(MAX_FIXED_HEADER)
    }

    /// Bytes currently buffered (an incomplete frame, or frames not yet taken).
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Buffers as much of `data` as fits and returns how many bytes were taken. Taking fewer
    /// than `data.len()` means complete frames are waiting: call [`next`](Self::next) until it
    /// returns `None`, then push the rest. Fails only once the decoder is poisoned.
    pub fn push(&mut self, data: &[u8]) -> Result<usize, CodecError> {
        if self.poisoned {
            return Err(CodecError::Poisoned);
        }
        let room = self.capacity().saturating_sub(self.buffer.len());
        let take = data.len().min(room);
        let chunk = data.get(..take).unwrap_or_default();
        self.buffer.extend_from_slice(chunk);
        Ok(take)
    }

    /// The next complete packet, `None` if more bytes are needed. After an error is returned,
    /// the decoder is poisoned and returns `None`.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<Packet, CodecError>> {
        if self.poisoned {
            return None;
        }
        let result = self.decode_one().transpose()?;
        if result.is_err() {
            self.poisoned = true;
            self.buffer = BytesMut::new();
        }
        Some(result)
    }

    fn decode_one(&mut self) -> Result<Option<Packet>, CodecError> {
        let Some((header_len, remaining)) = parse_fixed_header(&self.buffer)? else {
            return Ok(None);
        };
        let frame_len = header_len.saturating_add(remaining);
        if frame_len > self.max_packet_size {
            return Err(CodecError::TooLarge {
                size: frame_len,
                max: self.max_packet_size,
            });
        }
        if self.buffer.len() < frame_len {
            return Ok(None);
        }
        let mut frame = self.buffer.split_to(frame_len);
        // Exactly one complete frame: the crate cannot ask for more bytes.
        let packet = match self.protocol {
            Protocol::V311 => v4::Packet::read(&mut frame, MAX_REMAINING_LEN)
                .map_err(map_decode_err)
                .and_then(from_v4),
            Protocol::V5 => v5::Packet::read(&mut frame, None)
                .map_err(map_decode_err)
                .and_then(from_v5),
        }?;
        if !frame.is_empty() {
            return Err(CodecError::Malformed("framing disagreement"));
        }
        Ok(Some(packet))
    }
}

#[cfg(test)]
mod tests;

//! MQTT 3.1.1: our packets to and from the crate's `v4` types. The MQTT 5-only fields must have
//! their defaults here.

use mqttbytes_ng as mb;
use mqttbytes_ng::v4;

use super::{
    check_publish, check_str, decoded_nonzero, nonzero, qos_from, qos_to, CodecError,
    ConnAckProperties, Packet, Protocol, SubscribeFilter,
};

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

pub(super) fn to_v4(packet: &Packet) -> Result<v4::Packet, CodecError> {
    Ok(match packet {
        Packet::Connect {
            client_id,
            keep_alive,
            clean_session,
            protocol,
            max_packet_size,
        } => {
            if *protocol != Protocol::V311 {
                return Err(CodecError::Invalid("CONNECT protocol differs from codec's"));
            }
            if max_packet_size.is_some() {
                return Err(CodecError::Invalid("Maximum Packet Size needs MQTT 5"));
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
            properties,
        } => {
            if *properties != ConnAckProperties::default() {
                return Err(CodecError::Invalid("CONNACK properties need MQTT 5"));
            }
            v4::Packet::ConnAck(v4::ConnAck::new(
                connack_code_to_v4(*code)?,
                *session_present,
            ))
        }
        Packet::Subscribe { pkid, topics } => {
            if topics.is_empty() {
                return Err(CodecError::Invalid("SUBSCRIBE without a filter"));
            }
            let mut filters = Vec::with_capacity(topics.len());
            for topic in topics {
                check_str(&topic.filter)?;
                if !topic.has_default_options() {
                    return Err(CodecError::Invalid("subscription options need MQTT 5"));
                }
                filters.push(v4::SubscribeFilter::new(
                    topic.filter.clone(),
                    qos_to(topic.qos),
                ));
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

pub(super) fn from_v4(packet: v4::Packet) -> Result<Packet, CodecError> {
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
                max_packet_size: None,
            }
        }
        v4::Packet::ConnAck(a) => Packet::ConnAck {
            session_present: a.session_present,
            code: connack_code_from_v4(a.code),
            properties: ConnAckProperties::default(),
        },
        v4::Packet::Subscribe(s) => Packet::Subscribe {
            pkid: decoded_nonzero(s.pkid)?,
            topics: s
                .filters
                .into_iter()
                .map(|f| SubscribeFilter::new(f.path, qos_from(f.qos)))
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

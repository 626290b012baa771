//! MQTT 5: our packets to and from the crate's `v5` types, with the properties and options we
//! keep (see the module docs of [`super`]).

use mqttbytes_ng as mb;
use mqttbytes_ng::v5;

use super::{
    check_publish, check_str, decoded_nonzero, nonzero, qos_from, qos_to, CodecError,
    ConnAckProperties, Packet, Protocol, RetainHandling, SubscribeFilter,
};

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

fn retain_handling_to_v5(handling: RetainHandling) -> v5::RetainForwardRule {
    match handling {
        RetainHandling::SendOnSubscribe => v5::RetainForwardRule::OnEverySubscribe,
        RetainHandling::SendOnNewSubscribe => v5::RetainForwardRule::OnNewSubscribe,
        RetainHandling::DoNotSend => v5::RetainForwardRule::Never,
    }
}

fn retain_handling_from_v5(rule: v5::RetainForwardRule) -> RetainHandling {
    match rule {
        v5::RetainForwardRule::OnEverySubscribe => RetainHandling::SendOnSubscribe,
        v5::RetainForwardRule::OnNewSubscribe => RetainHandling::SendOnNewSubscribe,
        v5::RetainForwardRule::Never => RetainHandling::DoNotSend,
    }
}

/// The crate's CONNACK properties for ours: `None` when all are absent.
fn connack_properties_to_v5(
    properties: &ConnAckProperties,
) -> Result<Option<v5::ConnAckProperties>, CodecError> {
    if properties.max_packet_size == Some(0) || properties.receive_maximum == Some(0) {
        return Err(CodecError::Invalid("CONNACK size or receive maximum 0"));
    }
    if *properties == ConnAckProperties::default() {
        return Ok(None);
    }
    Ok(Some(v5::ConnAckProperties {
        session_expiry_interval: None,
        receive_max: properties.receive_maximum,
        max_qos: None,
        retain_available: None,
        max_packet_size: properties.max_packet_size,
        assigned_client_identifier: None,
        topic_alias_max: None,
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: properties.server_keep_alive,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }))
}

/// The CONNACK properties we keep; zero sizes are a protocol error (MQTT 5, 3.2.2.3).
fn connack_properties_from_v5(
    properties: Option<v5::ConnAckProperties>,
) -> Result<ConnAckProperties, CodecError> {
    let Some(p) = properties else {
        return Ok(ConnAckProperties::default());
    };
    if p.max_packet_size == Some(0) || p.receive_max == Some(0) {
        return Err(CodecError::Malformed("CONNACK size or receive maximum 0"));
    }
    Ok(ConnAckProperties {
        max_packet_size: p.max_packet_size,
        receive_maximum: p.receive_max,
        server_keep_alive: p.server_keep_alive,
    })
}

pub(super) fn to_v5(packet: &Packet) -> Result<v5::Packet, CodecError> {
    Ok(match packet {
        Packet::Connect {
            client_id,
            keep_alive,
            clean_session,
            protocol,
            max_packet_size,
        } => {
            if *protocol != Protocol::V5 {
                return Err(CodecError::Invalid("CONNECT protocol differs from codec's"));
            }
            check_str(client_id)?;
            if *max_packet_size == Some(0) {
                return Err(CodecError::Invalid("Maximum Packet Size 0"));
            }
            let properties = max_packet_size.map(|size| v5::ConnectProperties {
                max_packet_size: Some(size),
                ..v5::ConnectProperties::new()
            });
            let c = v5::Connect {
                keep_alive: *keep_alive,
                client_id: client_id.clone(),
                clean_start: *clean_session,
                properties,
            };
            v5::Packet::Connect(c, None, None)
        }
        Packet::ConnAck {
            session_present,
            code,
            properties,
        } => v5::Packet::ConnAck(v5::ConnAck {
            session_present: *session_present,
            code: connack_code_to_v5(*code)?,
            properties: connack_properties_to_v5(properties)?,
        }),
        Packet::Subscribe { pkid, topics } => {
            if topics.is_empty() {
                return Err(CodecError::Invalid("SUBSCRIBE without a filter"));
            }
            let mut filters = Vec::with_capacity(topics.len());
            for topic in topics {
                check_str(&topic.filter)?;
                filters.push(v5::Filter {
                    path: topic.filter.clone(),
                    qos: qos_to(topic.qos),
                    nolocal: topic.no_local,
                    preserve_retain: topic.retain_as_published,
                    retain_forward_rule: retain_handling_to_v5(topic.retain_handling),
                });
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

pub(super) fn from_v5(packet: v5::Packet) -> Result<Packet, CodecError> {
    Ok(match packet {
        v5::Packet::Connect(c, will, login) => {
            if will.is_some() || login.is_some() {
                return Err(CodecError::Unsupported("CONNECT with will or login"));
            }
            let max_packet_size = c.properties.and_then(|p| p.max_packet_size);
            if max_packet_size == Some(0) {
                return Err(CodecError::Malformed("Maximum Packet Size 0"));
            }
            Packet::Connect {
                client_id: c.client_id,
                keep_alive: c.keep_alive,
                clean_session: c.clean_start,
                protocol: Protocol::V5,
                max_packet_size,
            }
        }
        v5::Packet::ConnAck(a) => Packet::ConnAck {
            session_present: a.session_present,
            code: connack_code_from_v5(a.code)?,
            properties: connack_properties_from_v5(a.properties)?,
        },
        v5::Packet::Subscribe(s) => Packet::Subscribe {
            pkid: decoded_nonzero(s.pkid)?,
            topics: s
                .filters
                .into_iter()
                .map(|f| SubscribeFilter {
                    filter: f.path,
                    qos: qos_from(f.qos),
                    no_local: f.nolocal,
                    retain_as_published: f.preserve_retain,
                    retain_handling: retain_handling_from_v5(f.retain_forward_rule),
                })
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

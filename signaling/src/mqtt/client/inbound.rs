//! What the broker sends: stream bytes through the decoder, then one packet at a time.

use p2pd_proto::{Instant, SocketId};

use core::time::Duration;

use super::{
    CodecError, DisconnectReason, Flow, MqttClient, MqttEvent, Packet, Protocol, QoS, State,
    SubState, V311_UNACCEPTABLE_PROTOCOL, V5_UNSUPPORTED_PROTOCOL,
};
use crate::mqtt::codec::{ConnAckProperties, Decoded, SkippedPublish};

impl MqttClient {
    pub(super) fn consume(&mut self, now: Instant, socket: SocketId, data: &[u8]) {
        let mut rest = data;
        loop {
            let taken = match self.decoder.push(rest) {
                Ok(taken) => taken,
                Err(error) => {
                    self.disconnect(now, DisconnectReason::Codec(error), false);
                    return;
                }
            };
            rest = rest.get(taken..).unwrap_or_default();
            let mut decoded = false;
            while let Some(result) = self.decoder.next() {
                decoded = true;
                let flow = match result {
                    Ok(Decoded::Packet(packet)) => {
                        self.stats.packets_in = self.stats.packets_in.saturating_add(1);
                        self.on_packet(now, packet)
                    }
                    Ok(Decoded::Skipped(skipped)) => self.on_skipped(now, skipped),
                    Err(error) => {
                        self.on_decode_error(now, error);
                        Flow::Stop
                    }
                };
                if flow == Flow::Stop || self.state.socket() != Some(socket) {
                    return;
                }
            }
            if rest.is_empty() {
                return;
            }
            if taken == 0 && !decoded {
                // The decoder promises progress on a full buffer; never spin if it breaks it.
                let stalled = CodecError::Malformed("decoder made no progress");
                self.disconnect(now, DisconnectReason::Codec(stalled), false);
                return;
            }
        }
    }

    pub(super) fn record_first_bytes(&mut self, data: &[u8]) {
        for byte in data {
            let Some(slot) = self.first_bytes.get_mut(self.first_bytes_len) else {
                return;
            };
            *slot = *byte;
            self.first_bytes_len = self.first_bytes_len.saturating_add(1);
        }
    }

    fn on_decode_error(&mut self, now: Instant, error: CodecError) {
        // A 3.1.1-only broker answers a v5 CONNECT with a 3.1.1 CONNACK (code 1), which the v5
        // decoder cannot read: recognise it by its bytes.
        let v311_refusal = matches!(self.state, State::Handshaking { .. })
            && self.protocol == Protocol::V5
            && self.first_bytes_len == 4
            && matches!(
                self.first_bytes,
                [0x20, 0x02, _, V311_UNACCEPTABLE_PROTOCOL]
            );
        if v311_refusal {
            self.refused(now, V311_UNACCEPTABLE_PROTOCOL);
        } else {
            self.disconnect(now, DisconnectReason::Codec(error), false);
        }
    }

    /// The broker refused the CONNECT with `code`.
    fn refused(&mut self, now: Instant, code: u8) {
        let protocol = self.protocol;
        let version_refused = match protocol {
            Protocol::V5 => code == V5_UNSUPPORTED_PROTOCOL || code == V311_UNACCEPTABLE_PROTOCOL,
            Protocol::V311 => false,
        };
        let fall_back = version_refused && self.config.fallback_to_v311;
        if fall_back {
            self.protocol = Protocol::V311;
        }
        self.disconnect(now, DisconnectReason::Refused { code, protocol }, fall_back);
    }

    fn on_packet(&mut self, now: Instant, packet: Packet) -> Flow {
        if let State::Handshaking { socket, .. } = self.state {
            return match packet {
                Packet::ConnAck {
                    session_present,
                    code: 0,
                    properties,
                } => {
                    self.state = State::Connected { socket };
                    self.connected_at = Some(now);
                    self.adopt(&properties);
                    self.stats.connects = self.stats.connects.saturating_add(1);
                    self.push_event(MqttEvent::Connected {
                        session_present,
                        protocol: self.protocol,
                    });
                    self.pump(now);
                    Flow::Continue
                }
                Packet::ConnAck { code, .. } => {
                    self.refused(now, code);
                    Flow::Stop
                }
                _ => self.violation(now, "packet before CONNACK"),
            };
        }
        match packet {
            Packet::Publish {
                topic,
                qos,
                pkid,
                payload,
                retain,
                ..
            } => {
                if retain && !self.config.accept_retained {
                    self.stats.retained_dropped = self.stats.retained_dropped.saturating_add(1);
                    return self.acknowledge_dropped(now, qos, pkid);
                }
                self.on_publish(now, topic, qos, pkid, payload)
            }
            Packet::PubAck { pkid } => {
                let position = self.inflight.iter().position(|m| m.sent && m.pkid == pkid);
                match position.and_then(|i| self.inflight.remove(i)) {
                    Some(message) => {
                        self.push_event(MqttEvent::Delivered(message.id));
                        // A slot under the broker's Receive Maximum is free again.
                        self.pump(now);
                    }
                    None => self.count_dropped(),
                }
                Flow::Continue
            }
            Packet::SubAck { pkid, codes } => {
                self.on_suback(pkid, codes.first().copied());
                Flow::Continue
            }
            Packet::PingResp => {
                self.ping_sent = None;
                Flow::Continue
            }
            Packet::Disconnect => {
                self.disconnect(now, DisconnectReason::BrokerDisconnect, false);
                Flow::Stop
            }
            Packet::ConnAck { .. } => self.violation(now, "second CONNACK"),
            Packet::Connect { .. } | Packet::Subscribe { .. } | Packet::PingReq => {
                self.violation(now, "client-only packet from the broker")
            }
        }
    }

    /// Takes the MQTT 5 CONNACK properties for this connection.
    fn adopt(&mut self, properties: &ConnAckProperties) {
        self.broker_max_packet_size = properties
            .max_packet_size
            .map(|size| usize::try_from(size).unwrap_or(usize::MAX));
        if let Some(receive_maximum) = properties.receive_maximum {
            self.receive_maximum = usize::from(receive_maximum).max(1);
        }
        if let Some(secs) = properties.server_keep_alive {
            self.keep_alive = Duration::from_secs(u64::from(secs));
        }
    }

    /// A PUBLISH too large to take was skipped by the decoder: counted, reported, and
    /// acknowledged at QoS 1 so the broker neither sends it again nor keeps it in flight.
    fn on_skipped(&mut self, now: Instant, skipped: SkippedPublish) -> Flow {
        if matches!(self.state, State::Handshaking { .. }) {
            return self.violation(now, "packet before CONNACK");
        }
        self.stats.oversized_skipped = self.stats.oversized_skipped.saturating_add(1);
        self.push_event(MqttEvent::PublishSkipped {
            size: skipped.size,
            max: skipped.max,
            retained: skipped.retain,
        });
        self.acknowledge_dropped(now, skipped.qos, skipped.pkid)
    }

    /// Acknowledges a PUBLISH we drop (PUBACK at QoS 1; QoS 2 is a violation, as for any
    /// PUBLISH).
    fn acknowledge_dropped(&mut self, now: Instant, qos: QoS, pkid: u16) -> Flow {
        match qos {
            QoS::AtMostOnce => Flow::Continue,
            QoS::AtLeastOnce => {
                if self.queue_packet(now, &Packet::PubAck { pkid }).is_err() {
                    self.disconnect(now, DisconnectReason::QueueOverflow, false);
                    return Flow::Stop;
                }
                Flow::Continue
            }
            QoS::ExactlyOnce => self.violation(now, "QoS 2 PUBLISH (never subscribed with QoS 2)"),
        }
    }

    fn violation(&mut self, now: Instant, what: &'static str) -> Flow {
        self.disconnect(now, DisconnectReason::ProtocolViolation(what), false);
        Flow::Stop
    }

    fn on_publish(
        &mut self,
        now: Instant,
        topic: String,
        qos: QoS,
        pkid: u16,
        payload: Vec<u8>,
    ) -> Flow {
        if qos == QoS::ExactlyOnce {
            return self.violation(now, "QoS 2 PUBLISH (never subscribed with QoS 2)");
        }
        if self.events.len() >= self.config.max_pending_events {
            // Not acknowledged: the broker may deliver it again.
            self.stats.events_dropped = self.stats.events_dropped.saturating_add(1);
            return Flow::Continue;
        }
        self.push_event(MqttEvent::Message {
            topic,
            payload,
            qos,
        });
        if qos == QoS::AtLeastOnce && self.queue_packet(now, &Packet::PubAck { pkid }).is_err() {
            self.disconnect(now, DisconnectReason::QueueOverflow, false);
            return Flow::Stop;
        }
        Flow::Continue
    }

    fn on_suback(&mut self, pkid: u16, code: Option<u8>) {
        let position = self
            .subscriptions
            .iter()
            .position(|s| s.state == SubState::AwaitingAck(pkid));
        let (Some(index), Some(code)) = (position, code) else {
            self.count_dropped();
            return;
        };
        let granted = match code {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        };
        match granted {
            Some(granted) => {
                let Some(sub) = self.subscriptions.get_mut(index) else {
                    return;
                };
                sub.state = SubState::Granted;
                let topic = sub.filter.clone();
                self.push_event(MqttEvent::Subscribed { topic, granted });
            }
            None => {
                let sub = self.subscriptions.remove(index);
                self.push_event(MqttEvent::SubscribeFailed {
                    topic: sub.filter,
                    code,
                });
            }
        }
    }
}

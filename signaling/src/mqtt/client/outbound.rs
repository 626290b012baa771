//! What the client sends: packets encoded onto the bounded outbound byte queue.

use p2pd_proto::Instant;

use super::sizes::publish_size;
use super::{encode, MqttClient, MqttEvent, Packet, Protocol, QoS, QueueError, SubState};
use crate::mqtt::codec::{RetainHandling, SubscribeFilter};

impl MqttClient {
    /// While connected, queues unsent SUBSCRIBEs, then unsent QoS 1 PUBLISHes, while they fit in
    /// the queue and under the broker's Receive Maximum. A held message larger than the broker's
    /// Maximum Packet Size is dropped and reported instead.
    pub(super) fn pump(&mut self, now: Instant) {
        if !self.is_connected() {
            return;
        }
        for index in 0..self.subscriptions.len() {
            let Some(sub) = self.subscriptions.get(index) else {
                break;
            };
            if sub.state != SubState::Unsent {
                continue;
            }
            let pkid = self.allocate_pkid();
            let Some(sub) = self.subscriptions.get(index) else {
                break;
            };
            let mut filter = SubscribeFilter::new(sub.filter.clone(), sub.qos);
            if self.protocol == Protocol::V5 && !self.config.accept_retained {
                filter.retain_handling = RetainHandling::DoNotSend;
            }
            let packet = Packet::Subscribe {
                pkid,
                topics: vec![filter],
            };
            match self.queue_packet(now, &packet) {
                Ok(()) => {
                    if let Some(sub) = self.subscriptions.get_mut(index) {
                        sub.state = SubState::AwaitingAck(pkid);
                    }
                }
                Err(QueueError::Full) => return,
                Err(QueueError::Encode) => {
                    // Validated in `subscribe`; unreachable in practice. Forget it.
                    if let Some(sub) = self.subscriptions.get_mut(index) {
                        sub.state = SubState::Granted;
                    }
                }
            }
        }
        self.drop_too_large_for_broker();
        let mut unacknowledged = self.inflight.iter().filter(|m| m.sent).count();
        for index in 0..self.inflight.len() {
            if unacknowledged >= self.receive_maximum {
                return;
            }
            let Some(message) = self.inflight.get(index) else {
                break;
            };
            if message.sent {
                continue;
            }
            let packet = Packet::Publish {
                topic: message.topic.clone(),
                qos: QoS::AtLeastOnce,
                pkid: message.pkid,
                retain: false,
                dup: message.sent_before,
                payload: message.payload.clone(),
            };
            let resend = message.sent_before;
            match self.queue_packet(now, &packet) {
                Ok(()) => {
                    unacknowledged = unacknowledged.saturating_add(1);
                    if resend {
                        self.stats.resent = self.stats.resent.saturating_add(1);
                    }
                    if let Some(message) = self.inflight.get_mut(index) {
                        message.sent = true;
                        message.sent_before = true;
                    }
                }
                Err(QueueError::Full) => return,
                Err(QueueError::Encode) => {
                    // Validated in `publish`; unreachable in practice. Keep it, never resend.
                    if let Some(message) = self.inflight.get_mut(index) {
                        message.sent = true;
                    }
                }
            }
        }
    }

    /// Drops (and reports) every held message the broker said it would not accept.
    fn drop_too_large_for_broker(&mut self) {
        let Some(max) = self.broker_max_packet_size else {
            return;
        };
        let protocol = self.protocol;
        let mut index = 0;
        while let Some(message) = self.inflight.get(index) {
            let size = publish_size(
                protocol,
                message.topic.len(),
                QoS::AtLeastOnce,
                message.payload.len(),
            )
            .unwrap_or(usize::MAX);
            if message.sent || size <= max {
                index = index.saturating_add(1);
                continue;
            }
            if let Some(message) = self.inflight.remove(index) {
                self.push_event(MqttEvent::TooLargeForBroker {
                    id: message.id,
                    size,
                    max,
                });
            }
        }
    }

    /// Encodes `packet` onto the outbound queue if it fits.
    pub(super) fn queue_packet(&mut self, now: Instant, packet: &Packet) -> Result<(), QueueError> {
        let mut bytes = Vec::new();
        encode(packet, self.protocol, &mut bytes).map_err(|_| QueueError::Encode)?;
        if bytes.len() > self.outbound.room() {
            return Err(QueueError::Full);
        }
        self.outbound.push(&bytes);
        self.last_sent = now;
        self.stats.packets_out = self.stats.packets_out.saturating_add(1);
        Ok(())
    }

    /// A packet id used by no held QoS 1 message and no pending SUBSCRIBE.
    pub(super) fn allocate_pkid(&mut self) -> u16 {
        // At most 4096 + 1024 ids are in use, so a free one is always found.
        for _ in 0..=u16::MAX {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            let candidate = self.last_pkid;
            let in_use = self.inflight.iter().any(|m| m.pkid == candidate)
                || self
                    .subscriptions
                    .iter()
                    .any(|s| s.state == SubState::AwaitingAck(candidate));
            if !in_use {
                break;
            }
        }
        self.last_pkid
    }
}

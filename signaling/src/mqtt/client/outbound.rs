//! What the client sends: packets encoded onto the bounded outbound byte queue.

use p2pd_proto::Instant;

use super::{encode, MqttClient, Packet, QoS, QueueError, SubState};

impl MqttClient {
    /// While connected, queues unsent SUBSCRIBEs, then unsent QoS 1 PUBLISHes, while they fit.
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
            let packet = Packet::Subscribe {
                pkid,
                topics: vec![(sub.filter.clone(), sub.qos)],
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
        for index in 0..self.inflight.len() {
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

    /// Encodes `packet` onto the outbound queue if it fits.
    pub(super) fn queue_packet(&mut self, now: Instant, packet: &Packet) -> Result<(), QueueError> {
        let mut bytes = Vec::new();
        encode(packet, self.protocol, &mut bytes).map_err(|_| QueueError::Encode)?;
        let room = self
            .config
            .max_queued_bytes
            .saturating_sub(self.outbound.len());
        if bytes.len() > room {
            return Err(QueueError::Full);
        }
        self.outbound.extend(bytes);
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

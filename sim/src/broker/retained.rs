//! Retained messages: kept per topic, sent to new subscriptions as their Retain Handling says.

use p2pd_proto::SocketId;
use p2pd_signaling::mqtt::codec::{Packet, QoS};

use super::{topic_matches, MqttBroker};

impl MqttBroker {
    /// Sends the retained messages matching `filter`, with the retain flag.
    pub(super) fn send_retained(&mut self, socket: SocketId, filter: &str, granted: QoS) {
        let matching: Vec<(String, QoS, Vec<u8>)> = self
            .retained
            .iter()
            .filter(|(topic, _)| topic_matches(filter, topic))
            .map(|(topic, (qos, payload))| (topic.clone(), *qos, payload.clone()))
            .collect();
        let max_inflight = self.config.max_inflight;
        for (topic, qos, payload) in matching {
            let Some(conn) = self.conns.get_mut(&socket) else {
                return;
            };
            let q = granted.min(qos);
            let Some(pkid) = conn
                .session
                .hold(q, &topic, &payload, max_inflight, &mut self.stats)
            else {
                continue;
            };
            self.stats.retained_sent += 1;
            self.stats.publishes_out += 1;
            self.send(
                socket,
                &Packet::Publish {
                    topic,
                    qos: q,
                    pkid,
                    retain: true,
                    dup: false,
                    payload,
                },
            );
        }
    }

    /// Keeps (or, for an empty payload, forgets) `topic`'s retained message.
    pub(super) fn retain(&mut self, topic: &str, qos: QoS, payload: &[u8]) {
        if payload.is_empty() {
            self.retained.remove(topic);
        } else if self.retained.contains_key(topic)
            || self.retained.len() < self.config.max_retained
        {
            self.retained
                .insert(topic.to_owned(), (qos, payload.to_vec()));
        } else {
            self.stats.retained_refused += 1;
        }
    }
}

//! The MQTT broker as the node fuzz targets play it (shared by `punch_node_session` and
//! `node_session`): it reads the node's packets on its broker connection (which must be valid
//! MQTT), owes the answers a broker gives (CONNACK, SUBACK, PINGRESP) and delivers envelopes on
//! the node's topic as PUBLISH packets. The targets check the node's own PUBLISH packets.

use p2pd_proto::SocketId;
use p2pd_signaling::mqtt::{encode, Decoded, Decoder, Packet, Protocol, QoS};

/// The node's broker connection, as the broker sees it.
#[derive(Default)]
pub struct BrokerLink {
    /// The node's socket to the broker, once it connects.
    pub socket: Option<SocketId>,
    decoder: Option<Decoder>,
    connect_seen: bool,
    connack_sent: bool,
    subscribes: Vec<u16>,
    pings: usize,
    /// The last packet id the broker used for a delivery.
    pub next_pkid: u16,
}

impl BrokerLink {
    /// A fresh connection on `socket` (packet ids go on from `next_pkid`).
    pub fn new(socket: SocketId, next_pkid: u16) -> BrokerLink {
        BrokerLink {
            socket: Some(socket),
            next_pkid,
            ..BrokerLink::default()
        }
    }

    /// The node wrote `bytes` to the broker: they must be valid MQTT. CONNECT, SUBSCRIBE and
    /// PINGREQ are noted (the broker owes an answer); every other packet (PUBLISH above all) is
    /// returned for the target to check.
    pub fn read(&mut self, bytes: &[u8]) -> Vec<Packet> {
        let decoder = self.decoder.get_or_insert_with(|| Decoder::new(Protocol::V311, 1 << 20));
        assert_eq!(decoder.push(bytes).unwrap(), bytes.len());
        let mut others = Vec::new();
        while let Some(p) = decoder.next() {
            let Ok(Decoded::Packet(p)) = p else { panic!("the node writes valid MQTT: {p:?}") };
            match p {
                Packet::Connect { .. } => self.connect_seen = true,
                Packet::Subscribe { pkid, .. } => self.subscribes.push(pkid),
                Packet::PingReq => self.pings += 1,
                other => others.push(other),
            }
        }
        others
    }

    /// The next answer the broker owes (CONNACK first, then SUBACKs, then PINGRESPs).
    pub fn next_answer(&mut self) -> Option<Packet> {
        if self.connect_seen && !self.connack_sent {
            self.connack_sent = true;
            Some(Packet::ConnAck { session_present: false, code: 0, properties: Default::default() })
        } else if let Some(pkid) = self.subscribes.pop() {
            Some(Packet::SubAck { pkid, codes: vec![1] })
        } else if self.pings > 0 {
            self.pings -= 1;
            Some(Packet::PingResp)
        } else {
            None
        }
    }

    /// The wire bytes of a QoS 1 PUBLISH delivering `envelope` on `topic`.
    pub fn publish_wire(&mut self, topic: String, envelope: Vec<u8>) -> Vec<u8> {
        self.next_pkid = self.next_pkid % 60_000 + 1;
        let publish = Packet::Publish {
            topic,
            qos: QoS::AtLeastOnce,
            pkid: self.next_pkid,
            retain: false,
            dup: false,
            payload: envelope,
        };
        let mut wire = Vec::new();
        encode(&publish, Protocol::V311, &mut wire).unwrap();
        wire
    }
}

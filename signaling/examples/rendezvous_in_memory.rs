//! Signaling end to end, in memory: identities, a sealed envelope, then two `Rendezvous` machines
//! (Alice and Bob) exchanging a message through a tiny MQTT broker written below with the signaling
//! crate's own codec. No sockets, no clock: the loop plays TCP (bind, connect, byte streams) and
//! the broker, as a runtime or the simulator would.
//!
//! ```text
//! cargo run -p p2pd-signaling --example rendezvous_in_memory
//! ```
// Example code: the package's strict lints (Cargo.toml `[lints]`) guard its library code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::collections::HashMap;
use std::net::SocketAddr;

use p2pd_proto::{Instant, Machine, SocketId, SocketOp, SocketOutcome, TRANSMIT_BUFFER_LEN};
use p2pd_signaling::envelope::OpenError;
use p2pd_signaling::mqtt::codec::{
    encode, ConnAckProperties, Decoded, Decoder, Packet, Protocol, QoS,
};
use p2pd_signaling::{
    seal, BrokerSpec, Identity, Opener, Rendezvous, RendezvousConfig, RendezvousEvent,
};

/// Unix time (ms) at `Instant::ZERO`: envelopes are stamped with wall-clock time.
const UNIX_EPOCH_MS: u64 = 1_700_000_000_000;

/// A minimal MQTT 3.1.1 broker: CONNECT, SUBSCRIBE (exact topics, no wildcards), PUBLISH QoS 0/1
/// fanned out to subscribers, PINGREQ. Enough for two rendezvous machines; the simulator has a
/// complete one (`p2pd_sim::MqttBroker`).
#[derive(Default)]
struct TinyBroker {
    /// Connections by (node, socket): the decoder of each client's stream and its topics.
    connections: HashMap<(usize, SocketId), (Decoder, Vec<String>)>,
    next_pkid: u16,
    /// The last PUBLISH fanned out, to replay it once.
    last: Option<(String, Vec<u8>)>,
}

impl TinyBroker {
    fn connect(&mut self, node: usize, socket: SocketId) {
        let decoder = Decoder::new(Protocol::V311, 64 * 1024);
        self.connections
            .insert((node, socket), (decoder, Vec::new()));
    }

    fn disconnect(&mut self, node: usize, socket: SocketId) {
        self.connections.remove(&(node, socket));
    }

    /// Bytes from a client; returns the packets to write to each connection.
    fn receive(
        &mut self,
        node: usize,
        socket: SocketId,
        bytes: &[u8],
    ) -> Vec<(usize, SocketId, Packet)> {
        let (decoder, topics) = self
            .connections
            .get_mut(&(node, socket))
            .expect("connected");
        assert_eq!(
            decoder.push(bytes).unwrap(),
            bytes.len(),
            "small packets only"
        );
        let mut out = Vec::new();
        let mut published = Vec::new();
        while let Some(packet) = decoder.next() {
            let Decoded::Packet(packet) = packet.expect("well-formed MQTT") else {
                continue; // a PUBLISH too large for this broker: not forwarded
            };
            match packet {
                Packet::Connect { .. } => out.push((
                    node,
                    socket,
                    Packet::ConnAck {
                        session_present: false,
                        code: 0,
                        properties: ConnAckProperties::default(),
                    },
                )),
                Packet::Subscribe {
                    pkid,
                    topics: wanted,
                } => {
                    let codes = wanted.iter().map(|_| 1).collect(); // QoS 1 granted
                    topics.extend(wanted.into_iter().map(|wanted| wanted.filter));
                    out.push((node, socket, Packet::SubAck { pkid, codes }));
                }
                Packet::Publish {
                    topic,
                    qos,
                    pkid,
                    payload,
                    ..
                } => {
                    if qos == QoS::AtLeastOnce {
                        out.push((node, socket, Packet::PubAck { pkid }));
                    }
                    published.push((topic, payload));
                }
                Packet::PingReq => out.push((node, socket, Packet::PingResp)),
                _ => {} // PUBACKs from subscribers, DISCONNECT: nothing to do here
            }
        }
        for (topic, payload) in published {
            out.extend(self.fan_out(&topic, &payload));
            self.last = Some((topic, payload));
        }
        out
    }

    /// A QoS 1 PUBLISH to every connection subscribed to `topic`.
    fn fan_out(&mut self, topic: &str, payload: &[u8]) -> Vec<(usize, SocketId, Packet)> {
        let mut out = Vec::new();
        for (&(node, socket), (_, topics)) in &self.connections {
            if topics.iter().any(|t| t == topic) {
                self.next_pkid = self.next_pkid % u16::MAX + 1; // never 0
                let publish = Packet::Publish {
                    topic: topic.to_string(),
                    qos: QoS::AtLeastOnce,
                    pkid: self.next_pkid,
                    retain: false,
                    dup: false,
                    payload: payload.to_vec(),
                };
                out.push((node, socket, publish));
            }
        }
        out
    }
}

/// One node: its rendezvous machine and the addresses of its (in-memory) TCP sockets.
struct Node {
    name: &'static str,
    machine: Rendezvous,
    ip: [u8; 4],
    sockets: HashMap<SocketId, SocketAddr>,
    events: Vec<RendezvousEvent>,
}

/// Runs every node and the broker until nothing moves; returns how many rounds it took.
fn pump(
    nodes: &mut [Node],
    broker: &mut TinyBroker,
    broker_addr: SocketAddr,
    now: Instant,
) -> usize {
    let mut buf = [0u8; TRANSMIT_BUFFER_LEN];
    for round in 1.. {
        let mut moved = false;
        let mut to_clients = Vec::new();
        for (i, node) in nodes.iter_mut().enumerate() {
            // Drain: transmits go to the broker, socket intents are carried out, events kept.
            let mut outcomes = Vec::new();
            while let Some(t) = node.machine.poll_transmit(&mut buf) {
                moved = true;
                to_clients.extend(broker.receive(i, t.socket, &buf[..t.len]));
            }
            while let Some(op) = node.machine.poll_socket_op() {
                moved = true;
                match op {
                    SocketOp::Bind { socket, .. } => {
                        let local = SocketAddr::from((node.ip, 40_000 + socket.0 as u16));
                        node.sockets.insert(socket, local);
                        outcomes.push((socket, SocketOutcome::Bound { local }));
                    }
                    SocketOp::Connect { socket, remote } => {
                        assert_eq!(remote, broker_addr, "the only server here");
                        broker.connect(i, socket);
                        let local = node.sockets[&socket];
                        outcomes.push((socket, SocketOutcome::Connected { local, remote }));
                    }
                    SocketOp::Close { socket } => {
                        broker.disconnect(i, socket);
                        node.sockets.remove(&socket);
                    }
                    other => panic!("{}: not needed here: {other:?}", node.name),
                }
            }
            while let Some(event) = node.machine.poll_event() {
                moved = true;
                match &event {
                    RendezvousEvent::Message { from, payload, .. } => println!(
                        "{:>5}: Message from {}: {:?}",
                        node.name,
                        from.node_id(),
                        String::from_utf8_lossy(payload)
                    ),
                    other => println!("{:>5}: {other:?}", node.name),
                }
                node.events.push(event);
            }
            for (socket, outcome) in outcomes {
                node.machine.handle_socket_result(now, socket, outcome);
            }
            // A deadline that is due fires, as in any event loop (for example the settle point
            // of the transmits just taken: the broker took them all).
            if node.machine.poll_timeout().is_some_and(|t| t <= now) {
                moved = true;
                node.machine.handle_timeout(now);
            }
        }
        // The broker's packets reach their clients as stream bytes.
        for (i, socket, packet) in to_clients {
            moved = true;
            let mut bytes = Vec::new();
            encode(&packet, Protocol::V311, &mut bytes).unwrap();
            let _ = nodes[i].machine.handle_stream(now, socket, &bytes);
        }
        if !moved {
            return round;
        }
    }
    unreachable!()
}

fn main() {
    // Identities: secp256k1 key pairs; a node id is the first 20 bytes of SHA-256(public key).
    let alice = Identity::from_secret_bytes(&[0xA1; 32]).unwrap();
    let bob = Identity::from_secret_bytes(&[0xB0; 32]).unwrap();
    let (alice_key, bob_key) = (alice.public_key(), bob.public_key());
    println!("alice: node id {}", alice.node_id());
    println!("bob:   node id {}", bob.node_id());

    // An envelope: encrypted to Bob, signed by Alice, stamped with time and a nonce.
    let now_ms = UNIX_EPOCH_MS;
    let sealed = seal(&alice, &bob_key, now_ms, [1; 16], b"hi bob").unwrap();
    let mut opener = Opener::new(1024);
    let opened = opener.open(&bob, now_ms + 5, &sealed).unwrap();
    assert_eq!(
        (opened.payload.as_slice(), opened.sender),
        (&b"hi bob"[..], alice_key)
    );
    println!(
        "sealed {} bytes; bob opened {:?} from alice",
        sealed.len(),
        String::from_utf8_lossy(&opened.payload)
    );
    // The same bytes again are a replay; a flipped byte breaks the signature; Alice cannot open it.
    assert_eq!(
        opener.open(&bob, now_ms + 6, &sealed).unwrap_err(),
        OpenError::Replay
    );
    let mut tampered = sealed.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let refused = Opener::new(8).open(&bob, now_ms, &tampered).unwrap_err();
    assert_eq!(refused, OpenError::BadSignature);
    assert_eq!(
        Opener::new(8).open(&alice, now_ms, &sealed).unwrap_err(),
        OpenError::WrongRecipient
    );
    println!("replayed, tampered and misaddressed copies are refused");

    // Two rendezvous machines on one broker. Each listens on its topic, p2pd/v1/<node id>.
    let broker_addr: SocketAddr = "192.0.2.7:1883".parse().unwrap();
    let spec = BrokerSpec::new(Some("broker.example"), broker_addr);
    let mut config = RendezvousConfig::new(vec![spec], UNIX_EPOCH_MS);
    config.mqtt.protocol = Protocol::V311; // what the tiny broker speaks
    let mut now = Instant::ZERO;
    let mut nodes = [("alice", alice, [10, 0, 0, 1]), ("bob", bob, [10, 0, 0, 2])].map(
        |(name, identity, ip)| {
            let machine = Rendezvous::new(config.clone(), identity, ip[3].into(), now).unwrap();
            println!("{name} listens on {}", machine.topic());
            Node {
                name,
                machine,
                ip,
                sockets: HashMap::new(),
                events: Vec::new(),
            }
        },
    );
    let mut broker = TinyBroker::default();
    pump(&mut nodes, &mut broker, broker_addr, now);
    for node in &nodes {
        assert!(
            node.events
                .iter()
                .any(|e| matches!(e, RendezvousEvent::Listening { .. })),
            "{} subscribed",
            node.name
        );
    }

    // Alice sends; the broker fans the envelope out to Bob, who opens and verifies it.
    now = now + std::time::Duration::from_millis(20);
    let sending = nodes[0]
        .machine
        .send(now, &bob_key, None, b"meet me at 12:00:00.000")
        .unwrap();
    println!(
        "alice sends message {:?} on {} broker(s)",
        sending.id, sending.brokers
    );
    pump(&mut nodes, &mut broker, broker_addr, now);
    let received: Vec<_> = nodes[1]
        .events
        .iter()
        .filter_map(|e| match e {
            RendezvousEvent::Message {
                from,
                payload,
                sent_at_ms,
                ..
            } => Some((*from, payload.clone(), *sent_at_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(
        received,
        vec![(
            alice_key,
            b"meet me at 12:00:00.000".to_vec(),
            UNIX_EPOCH_MS + 20
        )]
    );
    assert!(nodes[0]
        .events
        .iter()
        .any(|e| matches!(e, RendezvousEvent::Acknowledged { id, .. } if *id == sending.id)));

    // The broker delivers the same envelope again (a QoS 1 redelivery, or a replay): counted as a
    // duplicate, never reported twice.
    let (topic, payload) = broker.last.clone().unwrap();
    let again = broker.fan_out(&topic, &payload);
    for (i, socket, packet) in again {
        let mut bytes = Vec::new();
        encode(&packet, Protocol::V311, &mut bytes).unwrap();
        let _ = nodes[i].machine.handle_stream(now, socket, &bytes);
    }
    pump(&mut nodes, &mut broker, broker_addr, now);
    let messages = nodes[1]
        .events
        .iter()
        .filter(|e| matches!(e, RendezvousEvent::Message { .. }))
        .count();
    assert_eq!((messages, nodes[1].machine.stats().duplicates), (1, 1));
    println!("bob got the message once; the redelivered copy counted as a duplicate");

    // Closing sends DISCONNECT, closes each socket once, and ends with `Closed`.
    for node in &mut nodes {
        node.machine.close(now);
    }
    pump(&mut nodes, &mut broker, broker_addr, now);
    for node in &nodes {
        assert!(matches!(node.events.last(), Some(RendezvousEvent::Closed)));
        assert!(node.sockets.is_empty());
    }
    assert!(broker.connections.is_empty());
    println!("ok");
}

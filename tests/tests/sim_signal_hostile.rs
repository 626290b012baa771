//! Signaling under attack, in the simulator: someone publishes a retained message far larger than
//! the nodes accept (200 KiB against the default 64 KiB limit) on node B's topic, and oversized
//! live messages while B listens. B must stay connected and receive every real message; the
//! sender gets a signed receipt for each.
//!
//! Three brokers and clients: an MQTT 5 broker that obeys the client's Maximum Packet Size and
//! Retain Handling; one that ignores the Maximum Packet Size (it sends the oversized live
//! messages anyway); and B speaking MQTT 3.1.1, to which a broker delivers the retained message
//! when B subscribes. Before the fix, the oversized packet ended B's connection at once, every
//! reconnect got it again, and none of the messages arrived.

use core::net::{Ipv4Addr, SocketAddr};
use core::time::Duration;

use p2pd_signaling::mqtt::codec::{Packet, Protocol, QoS};
use p2pd_signaling::rendezvous::{
    topic_for, BrokerSpec, MessageId, Rejection, Rendezvous, RendezvousConfig, RendezvousEvent,
};
use p2pd_signaling::{Identity, PublicKey};
use p2pd_sim::{BrokerConfig, Host, HostId, LinkConfig, MqttBroker, Sim};
use p2pd_tests::scripted_mqtt::Client;

const BROKER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const PORT: u16 = 1883;
const EPOCH_MS: u64 = 1_700_000_000_000;
const MESSAGES: usize = 10;
/// The attack: three times the nodes' 64 KiB limit (and under the simulated TCP's 256 KiB send
/// buffer, which the attacker does not wait on).
const HUGE: usize = 200 * 1024;

/// Mallory: connects to the broker as MQTT 3.1.1 (no receive limit of its own to state) and
/// publishes what it is given.
fn attacker() -> Client {
    let mut m = Client::new(Protocol::V311, "mallory");
    m.broker = SocketAddr::from((BROKER, PORT));
    // Its CONNECT goes first, ahead of the PUBLISHes queued before the stream is up.
    m.auto_connect = false;
    m.send(&Packet::Connect {
        client_id: "mallory".into(),
        keep_alive: 0,
        clean_session: true,
        protocol: Protocol::V311,
        max_packet_size: None,
    });
    m.dial();
    m
}

/// A QoS 0 PUBLISH of `payload` on `topic`, retained or not.
fn huge_publish(topic: &str, retain: bool, payload: Vec<u8>) -> Packet {
    Packet::Publish {
        topic: topic.into(),
        qos: QoS::AtMostOnce,
        pkid: 0,
        retain,
        dup: false,
        payload,
    }
}

struct Scenario {
    name: &'static str,
    /// The broker obeys the client's Maximum Packet Size.
    honour_max_packet_size: bool,
    /// Node B's protocol.
    b_protocol: Protocol,
}

fn node(sim: &mut Sim, ip: [u8; 4], secret: u8, protocol: Protocol) -> (HostId, PublicKey) {
    let spec = BrokerSpec::new(Some("broker.sim"), SocketAddr::from((BROKER, PORT)));
    let mut config = RendezvousConfig::new(vec![spec], EPOCH_MS);
    config.mqtt.protocol = protocol;
    config.mqtt.backoff_initial = Duration::from_millis(200);
    config.mqtt.backoff_max = Duration::from_secs(5);
    let identity = Identity::from_secret_bytes(&[secret; 32]).unwrap();
    let key = identity.public_key();
    let machine = Rendezvous::new(config, identity, sim.machine_seed(), sim.now()).unwrap();
    let link = LinkConfig::with_latency(Duration::from_millis(15));
    let host = sim.add_host(Host::public([ip.into()]).with_link(link), machine);
    (host, key)
}

fn run(s: &Scenario, seed: u64) {
    let context = format!("{} (seed {seed})", s.name);
    let mut sim = Sim::new(seed);
    let broker = sim.add_mqtt_broker_with(
        Host::public([BROKER]),
        BrokerConfig {
            // It takes what the attacker publishes (mosquitto's default limit is 256 MiB).
            max_packet_size: 1 << 20,
            honour_max_packet_size: s.honour_max_packet_size,
            ..BrokerConfig::new(PORT)
        },
    );
    let (b, b_key) = node(&mut sim, [198, 51, 100, 2], 2, s.b_protocol);
    let b_topic = topic_for(&b_key.node_id());
    // The retained message is in place before B connects.
    let attacker = sim.add_host(Host::public([Ipv4Addr::new(203, 0, 113, 66)]), {
        let mut m = attacker();
        m.send(&huge_publish(&b_topic, true, vec![0xEE; HUGE]));
        m
    });
    let (a, _) = node(&mut sim, [198, 51, 100, 1], 1, Protocol::V5);
    sim.run_for(Duration::from_secs(3));
    let listening = |sim: &Sim, h: HostId| {
        sim.machine::<Rendezvous>(h)
            .broker_ids()
            .all(|id| sim.machine::<Rendezvous>(h).health(id).unwrap().listening)
    };
    assert!(listening(&sim, a) && listening(&sim, b), "{context}");
    // While B listens: oversized live messages, then real ones with receipts, interleaved.
    sim.with_machine::<Client, _>(attacker, |m, _| {
        m.send(&huge_publish(&b_topic, false, vec![0xAA; HUGE]));
    });
    let mut ids: Vec<MessageId> = Vec::new();
    for i in 0..MESSAGES {
        let payload = format!("real {i}");
        let sent = sim
            .with_machine::<Rendezvous, _>(a, |m, now| {
                m.send_with_receipt(now, &b_key, None, payload.as_bytes())
            })
            .unwrap();
        ids.push(sent.id);
        sim.run_for(Duration::from_millis(100));
    }
    sim.run_for(Duration::from_secs(5));

    let b_events = sim.take_events::<Rendezvous>(b);
    let mut got: Vec<String> = b_events
        .iter()
        .filter_map(|e| match e {
            RendezvousEvent::Message { payload, .. } => {
                Some(String::from_utf8_lossy(payload).into_owned())
            }
            _ => None,
        })
        .collect();
    got.sort();
    let want: Vec<String> = (0..MESSAGES).map(|i| format!("real {i}")).collect();
    assert_eq!(got, want, "{context}: B's messages");
    let downs = b_events
        .iter()
        .filter(|e| matches!(e, RendezvousEvent::BrokerDown { .. }))
        .count();
    assert_eq!(downs, 0, "{context}: B lost its connection: {b_events:?}");
    let oversized = b_events
        .iter()
        .filter(|e| {
            matches!(
                e,
                RendezvousEvent::Rejected {
                    reason: Rejection::Oversized { .. },
                    ..
                }
            )
        })
        .count();
    // What reached B: the retained message only from a 3.1.1 session (MQTT 5 asks for none),
    // the live one only from a broker that ignores the limit (or any broker, for 3.1.1).
    let expected_oversized = match (s.b_protocol, s.honour_max_packet_size) {
        (Protocol::V311, _) => 2,
        (Protocol::V5, true) => 0,
        (Protocol::V5, false) => 1,
    };
    assert_eq!(oversized, expected_oversized, "{context}: {b_events:?}");
    let b_stats = sim.machine::<Rendezvous>(b).stats();
    assert_eq!(b_stats.receipts_sent, MESSAGES as u64, "{context}");

    // A has a receipt for every message, each signed by B.
    let mut receipts: Vec<MessageId> = sim
        .take_events::<Rendezvous>(a)
        .into_iter()
        .filter_map(|e| match e {
            RendezvousEvent::Receipt { id, from, .. } => {
                assert_eq!(from, b_key, "{context}");
                Some(id)
            }
            _ => None,
        })
        .collect();
    receipts.sort();
    assert_eq!(receipts, ids, "{context}: receipts");
    assert_eq!(sim.machine::<Rendezvous>(a).pending_receipts(), 0);
    let broker_stats = sim.machine::<MqttBroker>(broker).stats();
    if s.honour_max_packet_size && s.b_protocol == Protocol::V5 {
        assert_eq!(broker_stats.dropped_oversize, 1, "{context}");
    }
}

#[test]
fn a_huge_retained_message_does_not_silence_a_node() {
    let scenarios = [
        Scenario {
            name: "MQTT 5, broker obeys the limit",
            honour_max_packet_size: true,
            b_protocol: Protocol::V5,
        },
        Scenario {
            name: "MQTT 5, broker ignores the limit",
            honour_max_packet_size: false,
            b_protocol: Protocol::V5,
        },
        Scenario {
            name: "MQTT 3.1.1",
            honour_max_packet_size: true,
            b_protocol: Protocol::V311,
        },
    ];
    for s in &scenarios {
        for seed in 1..=3 {
            run(s, seed);
        }
    }
}

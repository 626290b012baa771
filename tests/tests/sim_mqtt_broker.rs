//! The MQTT broker model in the simulator, driven by a tiny scripted MQTT client machine built on
//! the signaling crate's codec: CONNECT/CONNACK in both protocols, SUBSCRIBE, PUBLISH QoS 0/1
//! fan-out, PINGREQ, keep-alive, malformed input, bounded connections, sessions, and a broker that
//! is killed mid-run.

use core::net::{Ipv4Addr, SocketAddr};
use core::time::Duration;

use p2pd_nat::{Behaviour, Filtering, Mapping};
use p2pd_proto::{IoError, OpKind};
use p2pd_signaling::mqtt::codec::{
    encode, ConnAckProperties, Packet, Protocol, QoS, RetainHandling, SkippedPublish,
    SubscribeFilter,
};
use p2pd_sim::{BrokerConfig, BrokerEvent, CloseReason, Host, HostId, LinkConfig, MqttBroker, Sim};
use p2pd_tests::scripted_mqtt::{Client, Ev};

const BROKER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const PORT: u16 = 1883;

fn client(sim: &mut Sim, ip: [u8; 4], c: Client) -> HostId {
    let link = LinkConfig::with_latency(Duration::from_millis(10));
    let h = sim.add_host(Host::public([ip.into()]).with_link(link), c);
    sim.with_machine::<Client, _>(h, |c, _| c.dial());
    h
}

fn packets(sim: &mut Sim, h: HostId) -> Vec<Packet> {
    sim.take_events::<Client>(h)
        .into_iter()
        .filter_map(|e| match e {
            Ev::Packet(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn connack(code: u8, session_present: bool) -> Packet {
    Packet::ConnAck {
        session_present,
        code,
        properties: ConnAckProperties::default(),
    }
}

fn publish(topic: &str, qos: QoS, pkid: u16, payload: &[u8]) -> Packet {
    Packet::Publish {
        topic: topic.into(),
        qos,
        pkid,
        retain: false,
        dup: false,
        payload: payload.to_vec(),
    }
}

fn broker_sim(seed: u64) -> (Sim, HostId) {
    let mut sim = Sim::new(seed);
    let b = sim.add_mqtt_broker(BROKER, PORT);
    let ev = sim.take_events::<MqttBroker>(b);
    assert_eq!(
        ev,
        [BrokerEvent::Listening {
            local: SocketAddr::from((BROKER, PORT))
        }]
    );
    (sim, b)
}

#[test]
fn subscriber_gets_qos0_and_qos1_publishes_across_protocols() {
    let (mut sim, b) = broker_sim(1);
    let sub = client(
        &mut sim,
        [198, 51, 100, 1],
        Client::new(Protocol::V5, "sub"),
    );
    let publ = client(
        &mut sim,
        [198, 51, 100, 2],
        Client::new(Protocol::V311, "pub"),
    );
    sim.run_for(Duration::from_millis(200));
    assert_eq!(packets(&mut sim, sub), [connack(0, false)]);
    assert_eq!(packets(&mut sim, publ), [connack(0, false)]);
    let connected: Vec<(String, Protocol)> = sim
        .take_events::<MqttBroker>(b)
        .into_iter()
        .filter_map(|e| match e {
            BrokerEvent::ClientConnected {
                client_id,
                protocol,
                ..
            } => Some((client_id, protocol)),
            _ => None,
        })
        .collect();
    assert!(connected.contains(&("sub".into(), Protocol::V5)));
    assert!(connected.contains(&("pub".into(), Protocol::V311)));

    sim.with_machine::<Client, _>(sub, |c, _| {
        c.send(&Packet::Subscribe {
            pkid: 1,
            topics: vec![
                SubscribeFilter::new("p2pd/node/a", QoS::AtLeastOnce),
                SubscribeFilter::new("p2pd/+/b", QoS::AtMostOnce),
                SubscribeFilter::new("bad/#/filter", QoS::AtMostOnce),
            ],
        })
    });
    sim.run_for(Duration::from_millis(200));
    assert_eq!(
        packets(&mut sim, sub),
        [Packet::SubAck {
            pkid: 1,
            codes: vec![1, 0, 0x80]
        }]
    );
    sim.with_machine::<Client, _>(publ, |c, _| {
        c.send(&publish("p2pd/node/a", QoS::AtMostOnce, 0, b"zero"));
        c.send(&publish("p2pd/node/a", QoS::AtLeastOnce, 7, b"one"));
        c.send(&publish("p2pd/x/b", QoS::AtLeastOnce, 8, b"downgraded"));
        c.send(&publish("elsewhere", QoS::AtLeastOnce, 9, b"nobody"));
        c.send(&Packet::PingReq);
    });
    sim.run_for(Duration::from_millis(200));
    assert_eq!(
        packets(&mut sim, publ),
        [
            Packet::PubAck { pkid: 7 },
            Packet::PubAck { pkid: 8 },
            Packet::PubAck { pkid: 9 },
            Packet::PingResp
        ]
    );
    let got = packets(&mut sim, sub);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0], publish("p2pd/node/a", QoS::AtMostOnce, 0, b"zero"));
    let Packet::Publish { qos, pkid, .. } = &got[1] else {
        panic!("{got:?}")
    };
    assert_eq!((*qos, *pkid != 0), (QoS::AtLeastOnce, true));
    // min(granted 0, published 1) = 0.
    assert_eq!(
        got[2],
        publish("p2pd/x/b", QoS::AtMostOnce, 0, b"downgraded")
    );
    let st = sim.machine::<MqttBroker>(b).stats();
    assert_eq!(
        (st.publishes_in, st.publishes_out, st.pubacks_in),
        (4, 3, 1)
    );
}

#[test]
fn through_a_nat_over_a_lossy_link() {
    let (mut sim, b) = broker_sim(2);
    sim.set_link(
        b,
        LinkConfig::with_latency(Duration::from_millis(20))
            .loss(0.2)
            .reorder(0.1, Duration::from_millis(15))
            .duplicate(0.05),
    );
    let nat = sim.add_nat(
        [203, 0, 113, 1].into(),
        Behaviour::new(
            Mapping::AddressAndPortDependent,
            Filtering::AddressAndPortDependent,
        ),
    );
    let sub = sim.add_host_behind(nat, [10, 0, 0, 2].into(), Client::new(Protocol::V311, "s"));
    sim.with_machine::<Client, _>(sub, |c, _| c.dial());
    let publ = client(&mut sim, [198, 51, 100, 2], Client::new(Protocol::V5, "p"));
    sim.run_for(Duration::from_secs(20));
    sim.with_machine::<Client, _>(sub, |c, _| {
        c.send(&Packet::Subscribe {
            pkid: 3,
            topics: vec![SubscribeFilter::new("t", QoS::AtLeastOnce)],
        })
    });
    sim.run_for(Duration::from_secs(20));
    sim.with_machine::<Client, _>(publ, |c, _| {
        for i in 1..=50u16 {
            c.send(&publish("t", QoS::AtLeastOnce, i, &i.to_be_bytes()));
        }
    });
    sim.run_for(Duration::from_secs(60));
    let got: Vec<Vec<u8>> = packets(&mut sim, sub)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish { payload, .. } => Some(payload),
            _ => None,
        })
        .collect();
    let want: Vec<Vec<u8>> = (1..=50u16).map(|i| i.to_be_bytes().to_vec()).collect();
    assert_eq!(got, want, "every message, in order");
    assert_eq!(sim.machine::<MqttBroker>(b).stats().pubacks_in, 50);
}

#[test]
fn keep_alive_closes_a_silent_client_and_pings_keep_one_alive() {
    let (mut sim, b) = broker_sim(3);
    let mut quiet = Client::new(Protocol::V311, "quiet");
    quiet.keep_alive = 2;
    let mut chatty = Client::new(Protocol::V5, "chatty");
    chatty.keep_alive = 2;
    let quiet = client(&mut sim, [198, 51, 100, 1], quiet);
    let chatty = client(&mut sim, [198, 51, 100, 2], chatty);
    for _ in 0..8 {
        sim.run_for(Duration::from_secs(1));
        sim.with_machine::<Client, _>(chatty, |c, _| c.send(&Packet::PingReq));
    }
    let q = sim.take_events::<Client>(quiet);
    assert!(q.contains(&Ev::PeerClosed), "{q:?}");
    let c = sim.take_events::<Client>(chatty);
    assert!(!c.contains(&Ev::PeerClosed), "{c:?}");
    let closed: Vec<(Option<String>, CloseReason)> = sim
        .take_events::<MqttBroker>(b)
        .into_iter()
        .filter_map(|e| match e {
            BrokerEvent::ClientClosed {
                client_id, reason, ..
            } => Some((client_id, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(closed, [(Some("quiet".into()), CloseReason::KeepAlive)]);
}

#[test]
fn malformed_input_closes_only_that_connection() {
    let (mut sim, b) = broker_sim(4);
    let good = client(
        &mut sim,
        [198, 51, 100, 1],
        Client::new(Protocol::V311, "good"),
    );
    let bad = client(
        &mut sim,
        [198, 51, 100, 2],
        Client::new(Protocol::V311, "bad"),
    );
    let early = client(&mut sim, [198, 51, 100, 3], {
        let mut c = Client::new(Protocol::V311, "x");
        c.auto_connect = false;
        c
    });
    sim.run_for(Duration::from_millis(200));
    // A PUBLISH whose topic length runs past the packet; a PINGREQ before CONNECT.
    sim.with_machine::<Client, _>(bad, |c, _| c.raw(&[0x30, 0x02, 0xff, 0xff]));
    sim.with_machine::<Client, _>(early, |c, _| c.raw(&[0xc0, 0x00]));
    let early2 = client(&mut sim, [198, 51, 100, 4], {
        let mut c = Client::new(Protocol::V311, "early");
        c.client_id = String::new();
        c
    });
    sim.run_for(Duration::from_millis(200));
    assert!(sim.take_events::<Client>(bad).contains(&Ev::PeerClosed));
    assert!(sim.take_events::<Client>(early).contains(&Ev::PeerClosed));
    sim.with_machine::<Client, _>(good, |c, _| c.send(&Packet::PingReq));
    sim.run_for(Duration::from_millis(200));
    assert_eq!(
        packets(&mut sim, good),
        [connack(0, false), Packet::PingResp]
    );
    // An empty client id gets one.
    assert_eq!(packets(&mut sim, early2), [connack(0, false)]);
    let st = sim.machine::<MqttBroker>(b).stats();
    assert_eq!((st.malformed, st.violations), (1, 1));
    assert_eq!(sim.machine::<MqttBroker>(b).connections(), 2);
    assert!(sim
        .machine::<MqttBroker>(b)
        .clients()
        .contains(&"auto-1".to_string()));
}

#[test]
fn bounded_connections_wait_for_a_free_slot() {
    let mut sim = Sim::new(5);
    let b = sim.add_mqtt_broker_with(
        Host::public([BROKER]),
        BrokerConfig {
            max_connections: 2,
            ..BrokerConfig::new(PORT)
        },
    );
    let c1 = client(
        &mut sim,
        [198, 51, 100, 1],
        Client::new(Protocol::V311, "1"),
    );
    let c2 = client(
        &mut sim,
        [198, 51, 100, 2],
        Client::new(Protocol::V311, "2"),
    );
    let c3 = client(
        &mut sim,
        [198, 51, 100, 3],
        Client::new(Protocol::V311, "3"),
    );
    sim.run_for(Duration::from_millis(300));
    assert_eq!(packets(&mut sim, c1), [connack(0, false)]);
    assert_eq!(packets(&mut sim, c2), [connack(0, false)]);
    // The third is in the listen backlog: TCP is up, MQTT is not.
    let e3 = sim.take_events::<Client>(c3);
    assert_eq!(e3, [Ev::TcpUp]);
    sim.with_machine::<Client, _>(c1, |c, _| c.send(&Packet::Disconnect));
    sim.run_for(Duration::from_millis(300));
    assert_eq!(packets(&mut sim, c3), [connack(0, false)]);
    assert_eq!(sim.machine::<MqttBroker>(b).connections(), 2);
}

#[test]
fn session_resumes_and_resends_unacknowledged_qos1_once() {
    let (mut sim, _b) = broker_sim(6);
    let mut s = Client::new(Protocol::V5, "keeper");
    s.clean = false;
    s.auto_ack = false;
    let sub = client(&mut sim, [198, 51, 100, 1], s);
    let publ = client(
        &mut sim,
        [198, 51, 100, 2],
        Client::new(Protocol::V311, "p"),
    );
    sim.run_for(Duration::from_millis(200));
    sim.with_machine::<Client, _>(sub, |c, _| {
        c.send(&Packet::Subscribe {
            pkid: 1,
            topics: vec![SubscribeFilter::new("k", QoS::AtLeastOnce)],
        })
    });
    sim.run_for(Duration::from_millis(200));
    sim.with_machine::<Client, _>(publ, |c, _| {
        c.send(&publish("k", QoS::AtLeastOnce, 1, b"unacked"))
    });
    sim.run_for(Duration::from_millis(200));
    let first = packets(&mut sim, sub);
    assert!(matches!(
        first.last(),
        Some(Packet::Publish { dup: false, .. })
    ));
    // Reconnect without acknowledging: the session is back with the message, DUP set.
    sim.with_machine::<Client, _>(sub, |c, _| {
        c.auto_ack = true;
        c.hang_up();
        c.dial();
    });
    sim.run_for(Duration::from_millis(300));
    let again = packets(&mut sim, sub);
    assert_eq!(again[0], connack(0, true));
    assert!(
        matches!(&again[1], Packet::Publish { dup: true, payload, .. } if payload == b"unacked"),
        "{again:?}"
    );
    // Acknowledged now: a third connection gets nothing more.
    sim.with_machine::<Client, _>(sub, |c, _| {
        c.hang_up();
        c.dial();
    });
    sim.run_for(Duration::from_millis(300));
    assert_eq!(packets(&mut sim, sub), [connack(0, true)]);
}

#[test]
fn killed_broker_resets_clients_and_a_restarted_one_serves_again() {
    let (mut sim, b) = broker_sim(7);
    let c1 = client(
        &mut sim,
        [198, 51, 100, 1],
        Client::new(Protocol::V311, "1"),
    );
    let c2 = client(&mut sim, [198, 51, 100, 2], Client::new(Protocol::V5, "2"));
    sim.run_for(Duration::from_millis(200));
    let _ = (packets(&mut sim, c1), packets(&mut sim, c2));
    sim.kill_host(b);
    sim.run_for(Duration::from_millis(200));
    for c in [c1, c2] {
        let ev = sim.take_events::<Client>(c);
        assert_eq!(
            ev,
            [Ev::Failed(OpKind::Receive, IoError::ConnectionReset)],
            "{c:?}"
        );
    }
    // While it is dead, a dial is refused (the host's kernel answers RST).
    sim.with_machine::<Client, _>(c1, |c, _| c.dial());
    sim.run_for(Duration::from_millis(200));
    assert_eq!(
        sim.take_events::<Client>(c1),
        [Ev::Failed(OpKind::Connect, IoError::ConnectionRefused)]
    );
    sim.restart_mqtt_broker(b, BrokerConfig::new(PORT));
    sim.with_machine::<Client, _>(c1, |c, _| c.dial());
    sim.run_for(Duration::from_millis(200));
    assert_eq!(packets(&mut sim, c1), [connack(0, false)]);
    // A cut-off broker: the client hears nothing (no reset) until its own timers act.
    sim.set_host_down(b, true);
    sim.with_machine::<Client, _>(c1, |c, _| c.send(&Packet::PingReq));
    sim.run_for(Duration::from_secs(2));
    assert!(sim.take_events::<Client>(c1).is_empty());
    sim.set_host_down(b, false);
    sim.run_for(Duration::from_secs(5));
    assert_eq!(packets(&mut sim, c1), [Packet::PingResp]);
}

/// Retained messages, MQTT 5 Retain Handling and Maximum Packet Size: a 200 KiB retained
/// message reaches a 3.1.1 subscriber (which skips it), never an MQTT 5 subscriber that stated
/// a 64 KiB limit or asked for no retained messages; a broker that ignores the limit sends it
/// anyway.
#[test]
fn retained_messages_retain_handling_and_maximum_packet_size() {
    for honour in [true, false] {
        let mut sim = Sim::new(11);
        let b = sim.add_mqtt_broker_with(
            Host::public([BROKER]),
            BrokerConfig {
                max_packet_size: 1 << 20,
                honour_max_packet_size: honour,
                ..BrokerConfig::new(PORT)
            },
        );
        let publ = client(
            &mut sim,
            [198, 51, 100, 1],
            Client::new(Protocol::V311, "pub"),
        );
        sim.run_for(Duration::from_millis(200));
        // (Under the simulated TCP's 256 KiB send buffer: the scripted client does not wait for
        // room.)
        let big = vec![0xEE; 200 * 1024];
        sim.with_machine::<Client, _>(publ, |c, _| {
            for (topic, payload) in [("node/big", &big[..]), ("node/small", b"hello")] {
                c.send(&Packet::Publish {
                    topic: topic.into(),
                    qos: QoS::AtLeastOnce,
                    pkid: 1,
                    retain: true,
                    dup: false,
                    payload: payload.to_vec(),
                });
            }
        });
        sim.run_for(Duration::from_secs(1));
        let _ = sim.take_events::<Client>(publ);
        // A: MQTT 5, 64 KiB. B: MQTT 5, no retained messages. C: 3.1.1.
        let mut a = Client::new(Protocol::V5, "a");
        a.max_packet_size = Some(64 * 1024);
        let a = client(&mut sim, [198, 51, 100, 2], a);
        let c_b = client(&mut sim, [198, 51, 100, 3], Client::new(Protocol::V5, "b"));
        let c = client(
            &mut sim,
            [198, 51, 100, 4],
            Client::new(Protocol::V311, "c"),
        );
        sim.run_for(Duration::from_millis(200));
        for h in [a, c_b, c] {
            let _ = sim.take_events::<Client>(h);
        }
        let mut never = SubscribeFilter::new("node/+", QoS::AtLeastOnce);
        never.retain_handling = RetainHandling::DoNotSend;
        sim.with_machine::<Client, _>(c_b, |c, _| {
            c.send(&Packet::Subscribe {
                pkid: 1,
                topics: vec![never.clone()],
            })
        });
        for h in [a, c] {
            sim.with_machine::<Client, _>(h, |c, _| {
                c.send(&Packet::Subscribe {
                    pkid: 1,
                    topics: vec![SubscribeFilter::new("node/+", QoS::AtLeastOnce)],
                })
            });
        }
        sim.run_for(Duration::from_secs(2));
        let small = Packet::Publish {
            topic: "node/small".into(),
            qos: QoS::AtLeastOnce,
            pkid: 0,
            retain: true,
            dup: false,
            payload: b"hello".to_vec(),
        };
        let events = |sim: &mut Sim, h| -> Vec<Ev> {
            sim.take_events::<Client>(h)
                .into_iter()
                .map(|e| match e {
                    // Packet ids are the broker's to choose.
                    Ev::Packet(Packet::Publish {
                        topic,
                        qos,
                        retain,
                        dup,
                        payload,
                        ..
                    }) => Ev::Packet(Packet::Publish {
                        topic,
                        qos,
                        pkid: 0,
                        retain,
                        dup,
                        payload,
                    }),
                    Ev::Skipped(s) => Ev::Skipped(SkippedPublish { pkid: 0, ..s }),
                    other => other,
                })
                .collect()
        };
        let suback = Ev::Packet(Packet::SubAck {
            pkid: 1,
            codes: vec![1],
        });
        let skipped = |size| {
            Ev::Skipped(SkippedPublish {
                size,
                max: 64 * 1024,
                qos: QoS::AtLeastOnce,
                pkid: 0,
                retain: true,
                dup: false,
            })
        };
        let big_size = {
            let mut wire = Vec::new();
            encode(
                &Packet::Publish {
                    topic: "node/big".into(),
                    qos: QoS::AtLeastOnce,
                    pkid: 1,
                    retain: true,
                    dup: false,
                    payload: big.clone(),
                },
                Protocol::V5,
                &mut wire,
            )
            .unwrap();
            wire.len()
        };
        // A gets the big one only from a broker that ignores its limit.
        let a_got = events(&mut sim, a);
        if honour {
            assert_eq!(a_got, [suback.clone(), Ev::Packet(small.clone())]);
        } else {
            assert_eq!(
                a_got,
                [suback.clone(), skipped(big_size), Ev::Packet(small.clone())]
            );
        }
        assert_eq!(events(&mut sim, c_b), std::slice::from_ref(&suback));
        assert_eq!(
            events(&mut sim, c),
            [suback, skipped(big_size - 1), Ev::Packet(small.clone())]
        );
        let st = sim.machine::<MqttBroker>(b).stats();
        assert_eq!(st.retained_sent, 4);
        assert_eq!(st.dropped_oversize, u64::from(honour));
        // An empty retained message forgets the topic's.
        sim.with_machine::<Client, _>(publ, |c, _| {
            c.send(&Packet::Publish {
                topic: "node/big".into(),
                qos: QoS::AtMostOnce,
                pkid: 0,
                retain: true,
                dup: false,
                payload: Vec::new(),
            })
        });
        sim.run_for(Duration::from_secs(1));
        let _ = sim.take_events::<Client>(c);
        sim.with_machine::<Client, _>(c, |c, _| {
            c.send(&Packet::Subscribe {
                pkid: 2,
                topics: vec![SubscribeFilter::new("node/#", QoS::AtLeastOnce)],
            })
        });
        sim.run_for(Duration::from_secs(1));
        let got = events(&mut sim, c);
        assert_eq!(
            got,
            [
                Ev::Packet(Packet::SubAck {
                    pkid: 2,
                    codes: vec![1]
                }),
                Ev::Packet(small)
            ]
        );
    }
}

//! Drives the client against a scripted broker built from the codec. No sockets, no clock.

use p2pd_proto::{IoError, OpKind, TRANSMIT_BUFFER_LEN};

use crate::mqtt::codec::{ConnAckProperties, Decoded, RetainHandling, SubscribeFilter};

use super::*;

mod broker;
mod hostile_broker;
mod reconnect;

use broker::*;

#[test]
fn connects_with_both_protocols() {
    for protocol in BOTH {
        let mut h = Harness::new(config(protocol), 1);
        let op = h.ops.first().copied();
        assert!(matches!(
            op,
            Some(SocketOp::Bind { transport: Transport::Tcp, local, .. })
                if local == "0.0.0.0:0".parse().unwrap()
        ));
        h.accept_tcp();
        assert_eq!(
            h.ops.last(),
            Some(&SocketOp::Connect {
                socket: SOCKET_BASE,
                remote: broker_addr()
            })
        );
        let sent = h.take_packets();
        let [Packet::Connect {
            client_id,
            keep_alive,
            clean_session,
            protocol: sent_protocol,
            max_packet_size,
        }] = sent.as_slice()
        else {
            panic!("expected one CONNECT, got {sent:?}");
        };
        // MQTT 5 brokers are told our limit (the default 64 KiB).
        let advertised = (protocol == Protocol::V5).then_some(64 * 1024);
        assert_eq!(*max_packet_size, advertised);
        assert_eq!(client_id, h.client.machine.client_id());
        assert_eq!(*keep_alive, 30);
        assert!(*clean_session);
        assert_eq!(*sent_protocol, protocol);
        assert!(!h.client.machine.is_connected());
        h.send(&connack(0));
        assert!(h.client.machine.is_connected());
        assert_eq!(
            h.events,
            vec![MqttEvent::Connected {
                session_present: false,
                protocol
            }]
        );
        assert_eq!(h.client.machine.stats().connects, 1);
    }
}

#[test]
fn client_id_is_random_per_seed_and_deterministic() {
    let id = |seed| {
        MqttClient::new(config(Protocol::V311), seed, Instant::ZERO)
            .client_id()
            .to_owned()
    };
    let a = id(1);
    assert!(a.starts_with("p2pd-"));
    assert_eq!(a.len(), 5 + 16);
    assert!(a[5..].bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(a, id(1));
    assert_ne!(a, id(2));
}

#[test]
fn ipv6_broker_binds_an_ipv6_socket() {
    let mut c = config(Protocol::V311);
    c.broker = "[2001:db8::1]:1883".parse().unwrap();
    let h = Harness::new(c, 1);
    let Some(SocketOp::Bind { local, .. }) = h.ops.first().copied() else {
        panic!()
    };
    assert_eq!(local, "[::]:0".parse().unwrap());
}

#[test]
fn subscribe_before_connect_is_sent_on_connect_and_acknowledged() {
    for protocol in BOTH {
        let mut h = Harness::new(config(protocol), 2);
        h.client
            .clock(h.now)
            .input(|c, now| c.subscribe(now, "node/a", QoS::AtLeastOnce))
            .unwrap();
        h.client
            .clock(h.now)
            .input(|c, now| c.subscribe(now, "node/b", QoS::AtMostOnce))
            .unwrap();
        h.connect();
        let subs = h.take_subscribes();
        assert_eq!(subs.len(), 2);
        // MQTT 5 brokers are asked not to send retained messages.
        let mut filter = SubscribeFilter::new("node/a", QoS::AtLeastOnce);
        if protocol == Protocol::V5 {
            filter.retain_handling = RetainHandling::DoNotSend;
        }
        assert_eq!(subs[0].1, vec![filter]);
        assert_ne!(subs[0].0, subs[1].0, "distinct packet ids");
        h.send(&Packet::SubAck {
            pkid: subs[0].0,
            codes: vec![1],
        });
        h.send(&Packet::SubAck {
            pkid: subs[1].0,
            codes: vec![0x80],
        });
        assert_eq!(
            h.events,
            vec![
                MqttEvent::Subscribed {
                    topic: "node/a".into(),
                    granted: QoS::AtLeastOnce
                },
                MqttEvent::SubscribeFailed {
                    topic: "node/b".into(),
                    code: 0x80
                },
            ]
        );
        // A stale SUBACK is counted, not an error.
        let dropped = h.client.machine.stats().dropped;
        h.send(&Packet::SubAck {
            pkid: subs[0].0,
            codes: vec![1],
        });
        assert_eq!(h.client.machine.stats().dropped, dropped + 1);
        assert!(h.client.machine.is_connected());
    }
}

#[test]
fn subscribe_errors() {
    let mut c = config(Protocol::V311);
    c.max_subscriptions = 1;
    c.max_packet_size = 100;
    let mut h = Harness::new(c, 3);
    let now = h.now;
    assert_eq!(
        h.client
            .clock(now)
            .input(|c, now| c.subscribe(now, "", QoS::AtMostOnce)),
        Err(SubscribeError::InvalidFilter)
    );
    assert_eq!(
        h.client
            .clock(now)
            .input(|c, now| c.subscribe(now, "a\0", QoS::AtMostOnce)),
        Err(SubscribeError::InvalidFilter)
    );
    assert_eq!(
        h.client
            .clock(now)
            .input(|c, now| c.subscribe(now, &"x".repeat(100), QoS::AtMostOnce)),
        Err(SubscribeError::InvalidFilter)
    );
    assert_eq!(
        h.client
            .clock(now)
            .input(|c, now| c.subscribe(now, "a", QoS::ExactlyOnce)),
        Err(SubscribeError::UnsupportedQoS)
    );
    h.client
        .clock(now)
        .input(|c, now| c.subscribe(now, "a/+", QoS::AtMostOnce))
        .unwrap();
    // The same filter again replaces it; a second one does not fit.
    h.client
        .clock(now)
        .input(|c, now| c.subscribe(now, "a/+", QoS::AtLeastOnce))
        .unwrap();
    assert_eq!(
        h.client
            .clock(now)
            .input(|c, now| c.subscribe(now, "b", QoS::AtMostOnce)),
        Err(SubscribeError::TooManySubscriptions)
    );
}

#[test]
fn publish_qos0_only_while_connected() {
    for protocol in BOTH {
        let mut h = Harness::new(config(protocol), 4);
        assert_eq!(
            h.client
                .clock(h.now)
                .input(|c, now| c.publish(now, "t", b"x", QoS::AtMostOnce)),
            Err(PublishError::NotConnected)
        );
        h.connect();
        h.client
            .clock(h.now)
            .input(|c, now| c.publish(now, "t", b"hello", QoS::AtMostOnce))
            .unwrap();
        h.drain();
        assert_eq!(
            h.take_packets(),
            vec![publish("t", QoS::AtMostOnce, 0, false, b"hello")]
        );
    }
}

#[test]
fn publish_qos1_is_delivered_on_puback() {
    for protocol in BOTH {
        let mut h = Harness::new(config(protocol), 5);
        h.connect();
        let id = h
            .client
            .clock(h.now)
            .input(|c, now| c.publish(now, "t", b"one", QoS::AtLeastOnce))
            .unwrap();
        h.drain();
        let sent = h.take_packets();
        let [Packet::Publish {
            pkid,
            qos: QoS::AtLeastOnce,
            dup: false,
            ..
        }] = sent.as_slice()
        else {
            panic!("{sent:?}")
        };
        let pkid = *pkid;
        assert_eq!(h.client.machine.inflight(), 1);
        h.send(&Packet::PubAck {
            pkid: pkid.wrapping_add(1),
        });
        assert!(h.events.is_empty());
        assert_eq!(h.client.machine.stats().dropped, 1);
        h.send(&Packet::PubAck { pkid });
        assert_eq!(h.events, vec![MqttEvent::Delivered(id)]);
        assert_eq!(h.client.machine.inflight(), 0);
    }
}

#[test]
fn publish_errors() {
    let mut c = config(Protocol::V5);
    c.max_inflight = 2;
    c.max_packet_size = 100;
    let mut h = Harness::new(c, 6);
    let now = h.now;
    for topic in ["", "a/+", "a/#", "a\0"] {
        assert_eq!(
            h.client
                .clock(now)
                .input(|c, now| c.publish(now, topic, b"", QoS::AtLeastOnce)),
            Err(PublishError::InvalidTopic)
        );
    }
    assert_eq!(
        h.client
            .clock(now)
            .input(|c, now| c.publish(now, "t", b"", QoS::ExactlyOnce)),
        Err(PublishError::UnsupportedQoS)
    );
    // V5 QoS 1: 2 header + 2 topic len + 1 topic + 2 pkid + 1 properties = 8 bytes of overhead.
    assert_eq!(
        h.client
            .clock(now)
            .input(|c, now| c.publish(now, "t", &[0; 93], QoS::AtLeastOnce)),
        Err(PublishError::TooLarge {
            size: 101,
            max: 100
        })
    );
    // Queued while disconnected, up to max_inflight.
    h.client
        .clock(now)
        .input(|c, now| c.publish(now, "t", &[0; 92], QoS::AtLeastOnce))
        .unwrap();
    h.client
        .clock(now)
        .input(|c, now| c.publish(now, "t", b"", QoS::AtLeastOnce))
        .unwrap();
    assert_eq!(
        h.client
            .clock(now)
            .input(|c, now| c.publish(now, "t", b"", QoS::AtLeastOnce)),
        Err(PublishError::QueueFull)
    );
    h.connect();
    let sent = h.take_packets();
    assert_eq!(sent.len(), 2, "queued QoS 1 messages go out on connect");
    assert!(sent
        .iter()
        .all(|p| matches!(p, Packet::Publish { dup: false, .. })));
}

#[test]
fn qos0_publish_fails_when_the_outbound_queue_is_full() {
    let mut c = config(Protocol::V311);
    c.max_packet_size = 1000;
    c.max_queued_bytes = 1000;
    let mut h = Harness::new(c, 7);
    h.connect();
    // No drain between the publishes (one input): the queue fills.
    let (first, second, third, queued) = h.client.clock(h.now).input(|c, now| {
        let first = c.publish(now, "t", &[1; 900], QoS::AtMostOnce);
        let second = c.publish(now, "t", &[1; 900], QoS::AtMostOnce);
        // QoS 1 waits for room instead, and goes out once the queue drains.
        let third = c.publish(now, "t", &[2; 900], QoS::AtLeastOnce);
        (first, second, third, c.queued_bytes())
    });
    first.unwrap();
    assert_eq!(second, Err(PublishError::QueueFull));
    third.unwrap();
    assert!(queued <= 1000);
    h.drain();
    let sent = h.take_packets();
    assert_eq!(sent.len(), 2);
    assert!(matches!(
        &sent[1],
        Packet::Publish {
            qos: QoS::AtLeastOnce,
            ..
        }
    ));
}

#[test]
fn incoming_messages_are_reported_and_qos1_acknowledged() {
    for protocol in BOTH {
        let mut h = Harness::new(config(protocol), 8);
        h.connect();
        h.send(&publish("in", QoS::AtMostOnce, 0, false, b"zero"));
        h.send(&publish("in", QoS::AtLeastOnce, 77, true, b"one"));
        assert_eq!(
            h.events,
            vec![
                MqttEvent::Message {
                    topic: "in".into(),
                    payload: b"zero".to_vec(),
                    qos: QoS::AtMostOnce
                },
                MqttEvent::Message {
                    topic: "in".into(),
                    payload: b"one".to_vec(),
                    qos: QoS::AtLeastOnce
                },
            ]
        );
        assert_eq!(h.take_packets(), vec![Packet::PubAck { pkid: 77 }]);
    }
}

#[test]
fn every_split_offset_gives_the_same_result() {
    for protocol in BOTH {
        let script = [
            connack(0),
            Packet::PingResp,
            publish("a/b", QoS::AtLeastOnce, 9, false, &[0xAB; 200]),
            publish("c", QoS::AtMostOnce, 0, false, b"x"),
            Packet::PubAck { pkid: 4242 },
        ];
        let mut bytes = Vec::new();
        for p in &script {
            encode(p, protocol, &mut bytes).unwrap();
        }
        let reference = {
            let mut h = Harness::new(config(protocol), 9);
            h.accept_tcp();
            h.send_raw(&bytes);
            h.take_packets();
            h.events.clone()
        };
        assert_eq!(reference.len(), 3, "{reference:?}");
        for split in 0..=bytes.len() {
            let mut h = Harness::new(config(protocol), 9);
            h.accept_tcp();
            h.take_packets();
            h.send_raw(&bytes[..split]);
            h.send_raw(&bytes[split..]);
            assert_eq!(h.events, reference, "split at {split}");
            assert_eq!(h.take_packets(), vec![Packet::PubAck { pkid: 9 }]);
        }
        // One byte at a time.
        let mut h = Harness::new(config(protocol), 9);
        h.accept_tcp();
        for b in &bytes {
            h.send_raw(std::slice::from_ref(b));
        }
        assert_eq!(h.events, reference);
    }
}

#[test]
fn transmits_are_chunked_to_the_buffer() {
    let mut h = Harness::new(config(Protocol::V5), 10);
    h.connect();
    h.client.set_buffer_len(7);
    h.client
        .clock(h.now)
        .input(|c, now| c.publish(now, "topic", &[7; 3000], QoS::AtLeastOnce))
        .unwrap();
    let mut stream = Vec::new();
    for (t, bytes) in h.client.take_transmits() {
        assert!(t.len <= 7 && t.len > 0);
        assert_eq!(t.destination, broker_addr());
        assert_eq!(t.socket, SOCKET_BASE);
        stream.extend_from_slice(&bytes);
    }
    let mut decoder = Decoder::new(Protocol::V5, 1 << 20);
    decoder.push(&stream).unwrap();
    assert!(matches!(
        decoder.next(),
        Some(Ok(Decoded::Packet(Packet::Publish { .. })))
    ));
    h.client.set_buffer_len(0);
    h.client.drain();
    assert!(h.client.take_transmits().is_empty());
}

#[test]
fn keep_alive_pings_and_pongs() {
    let mut h = Harness::new(config(Protocol::V311), 11);
    h.connect();
    let connected_at = h.now;
    assert_eq!(h.client.deadline(), Some(connected_at + KEEP_ALIVE));
    h.advance(KEEP_ALIVE - Duration::from_millis(1));
    assert!(h.take_packets().is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(h.take_packets(), vec![Packet::PingReq]);
    assert_eq!(h.client.deadline(), Some(h.now + PING_TIMEOUT));
    h.advance(PING_TIMEOUT / 2);
    h.send(&Packet::PingResp);
    assert!(h.client.machine.is_connected());
    // The next ping is due a keep-alive after the last packet we sent (the PINGREQ).
    assert_eq!(
        h.client.deadline(),
        Some(connected_at + KEEP_ALIVE + KEEP_ALIVE)
    );
    h.advance(KEEP_ALIVE);
    assert_eq!(h.take_packets(), vec![Packet::PingReq]);
    assert!(h.events.is_empty());
}

#[test]
fn missing_pingresp_kills_the_connection() {
    let mut h = Harness::new(config(Protocol::V5), 12);
    h.connect();
    h.advance(KEEP_ALIVE);
    assert_eq!(h.take_packets(), vec![Packet::PingReq]);
    h.advance(PING_TIMEOUT);
    assert!(matches!(
        h.events.as_slice(),
        [MqttEvent::Disconnected {
            reason: DisconnectReason::KeepAliveTimeout,
            ..
        }]
    ));
    assert_eq!(h.closes(SOCKET_BASE), 1);
    assert!(!h.client.machine.is_connected());
}

#[test]
fn silence_while_sending_is_noticed() {
    // We keep sending QoS 0 messages; the broker never says a word.
    let mut h = Harness::new(config(Protocol::V311), 13);
    h.connect();
    let step = Duration::from_secs(1);
    let mut pinged = false;
    for _ in 0..(KEEP_ALIVE.as_secs() + PING_TIMEOUT.as_secs() + 2) {
        h.advance(step);
        if !h.client.machine.is_connected() {
            break;
        }
        h.client
            .clock(h.now)
            .input(|c, now| c.publish(now, "t", b"x", QoS::AtMostOnce))
            .unwrap();
        h.drain();
        pinged |= h.take_packets().contains(&Packet::PingReq);
    }
    assert!(pinged, "silence for a keep-alive triggers a PINGREQ");
    assert!(matches!(
        h.events.as_slice(),
        [MqttEvent::Disconnected {
            reason: DisconnectReason::KeepAliveTimeout,
            ..
        }]
    ));
}

#[test]
fn keep_alive_zero_disables_pings() {
    let mut c = config(Protocol::V311);
    c.keep_alive = Duration::ZERO;
    let mut h = Harness::new(c, 14);
    h.connect();
    assert_eq!(h.client.deadline(), None);
    let sent = h.connect_packet.clone();
    assert!(matches!(sent, Some(Packet::Connect { keep_alive: 0, .. })));
}

#[test]
fn keep_alive_rounds_up_to_seconds() {
    assert_eq!(keep_alive_secs(Duration::from_millis(1500)), 2);
    assert_eq!(keep_alive_secs(Duration::from_millis(1)), 1);
    assert_eq!(keep_alive_secs(Duration::from_secs(1 << 20)), u16::MAX);
}

#[test]
fn connect_timeout_covers_bind_connect_and_connack() {
    for stage in 0..3 {
        let mut h = Harness::new(config(Protocol::V311), 15);
        let socket = SOCKET_BASE;
        if stage >= 1 {
            h.client.clock(h.now).outcome(
                socket,
                SocketOutcome::Bound {
                    local: local_addr(),
                },
            );
            h.drain();
        }
        if stage >= 2 {
            h.client.clock(h.now).outcome(
                socket,
                SocketOutcome::Connected {
                    local: local_addr(),
                    remote: broker_addr(),
                },
            );
            h.drain();
        }
        assert_eq!(h.client.deadline(), Some(Instant::ZERO + CONNECT_TIMEOUT));
        h.advance(CONNECT_TIMEOUT);
        assert!(
            matches!(
                h.events.as_slice(),
                [MqttEvent::Disconnected {
                    reason: DisconnectReason::ConnectTimeout,
                    ..
                }]
            ),
            "stage {stage}: {:?}",
            h.events
        );
        assert_eq!(h.closes(socket), 1);
    }
}

#[test]
fn garbage_bytes_end_the_connection() {
    for protocol in BOTH {
        for garbage in [
            &[0x00u8, 0x00][..],
            &[0xF0, 0x00],
            &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            &[0x20, 0x02, 0x00, 0x09],
        ] {
            let mut h = Harness::new(config(protocol), 17);
            h.connect();
            h.send_raw(garbage);
            assert!(
                matches!(
                    h.events.as_slice(),
                    [MqttEvent::Disconnected {
                        reason: DisconnectReason::Codec(_) | DisconnectReason::ProtocolViolation(_),
                        ..
                    }]
                ),
                "{protocol:?} {garbage:?}: {:?}",
                h.events
            );
            assert_eq!(h.client.machine.stats().protocol_errors, 1);
            // Further bytes on the dead socket are dropped.
            assert_eq!(
                h.client.clock(h.now).stream(SOCKET_BASE, &[0x20]),
                Verdict::Dropped(DropReason::UnknownSocket)
            );
        }
    }
}

#[test]
fn broker_protocol_violations() {
    let cases = [
        (false, publish("t", QoS::AtMostOnce, 0, false, b"early")),
        (true, connack(0)),
        (true, Packet::PingReq),
        (
            true,
            Packet::Subscribe {
                pkid: 1,
                topics: vec![SubscribeFilter::new("x", QoS::AtMostOnce)],
            },
        ),
        (true, publish("t", QoS::ExactlyOnce, 3, false, b"qos2")),
    ];
    for (connected, packet) in cases {
        let mut h = Harness::new(config(Protocol::V311), 18);
        if connected {
            h.connect();
        } else {
            h.accept_tcp();
        }
        h.send(&packet);
        assert!(
            matches!(
                h.events.as_slice(),
                [MqttEvent::Disconnected {
                    reason: DisconnectReason::ProtocolViolation(_),
                    ..
                }]
            ),
            "{packet:?}: {:?}",
            h.events
        );
    }
}

#[test]
fn broker_disconnect_and_refusal() {
    let mut h = Harness::new(config(Protocol::V311), 19);
    h.connect();
    h.send(&Packet::Disconnect);
    assert!(matches!(
        h.events.as_slice(),
        [MqttEvent::Disconnected {
            reason: DisconnectReason::BrokerDisconnect,
            ..
        }]
    ));
    let mut h = Harness::new(config(Protocol::V311), 19);
    h.accept_tcp();
    h.send(&connack(5));
    assert!(matches!(
        h.events.as_slice(),
        [MqttEvent::Disconnected { reason: DisconnectReason::Refused { code: 5, protocol: Protocol::V311 }, retry_in }]
            if !retry_in.is_zero()
    ));
}

#[test]
fn socket_failures_become_disconnects() {
    let failures = [
        (OpKind::Bind, IoError::AddrInUse),
        (OpKind::Connect, IoError::ConnectionRefused),
        (OpKind::Send, IoError::ConnectionReset),
        (OpKind::Receive, IoError::ConnectionReset),
    ];
    for (op, error) in failures {
        let mut h = Harness::new(config(Protocol::V311), 20);
        if op != OpKind::Bind {
            h.connect();
        }
        h.client.clock(h.now).outcome(
            SOCKET_BASE,
            SocketOutcome::Failed {
                op,
                destination: None,
                error,
            },
        );
        h.drain();
        assert!(matches!(
            h.events.as_slice(),
            [MqttEvent::Disconnected { reason: DisconnectReason::Io { op: o, error: e }, .. }]
                if *o == op && *e == error
        ));
        assert_eq!(h.closes(SOCKET_BASE), 1);
        // A publish after the failure is a typed error, not a crash.
        assert_eq!(
            h.client
                .clock(h.now)
                .input(|c, now| c.publish(now, "t", b"x", QoS::AtMostOnce)),
            Err(PublishError::NotConnected)
        );
    }
}

#[test]
fn unexpected_outcomes_are_counted() {
    let mut h = Harness::new(config(Protocol::V311), 21);
    h.client.clock(h.now).outcome(
        SOCKET_BASE,
        SocketOutcome::Connected {
            local: local_addr(),
            remote: broker_addr(),
        },
    );
    h.drain();
    assert_eq!(h.client.machine.stats().dropped, 1);
    assert!(h.events.is_empty());
    assert_eq!(
        h.client
            .clock(h.now)
            .datagram(SOCKET_BASE, broker_addr(), b"x"),
        Verdict::NotMine
    );
    // Stream bytes before the TCP connect completed are not ours yet.
    assert_eq!(
        h.client.clock(h.now).stream(SOCKET_BASE, &[0x20]),
        Verdict::Dropped(DropReason::UnknownSocket)
    );
}

#[test]
fn event_queue_is_bounded_and_dropped_qos1_is_not_acknowledged() {
    let mut c = config(Protocol::V311);
    c.max_pending_events = 16;
    let mut h = Harness::new(c, 22);
    h.connect();
    let mut bytes = Vec::new();
    for pkid in 1..=40u16 {
        encode(
            &publish("t", QoS::AtLeastOnce, pkid, false, b"m"),
            Protocol::V311,
            &mut bytes,
        )
        .unwrap();
    }
    // Feed without polling events.
    assert_eq!(
        h.client.clock(h.now).stream(SOCKET_BASE, &bytes),
        Verdict::Consumed
    );
    assert_eq!(h.client.machine.stats().events_dropped, 40 - 16);
    h.drain();
    assert_eq!(h.events.len(), 16);
    let acks = h.take_packets();
    assert_eq!(acks.len(), 16);
    assert_eq!(acks.last(), Some(&Packet::PubAck { pkid: 16 }));
}

#[test]
fn encoded_sizes_match_the_codec() {
    for protocol in BOTH {
        for len in [
            0usize, 1, 100, 120, 121, 122, 123, 124, 125, 126, 127, 128, 16_370, 16_380, 16_400,
            70_000,
        ] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
                let pkid = if qos == QoS::AtMostOnce { 0 } else { 1 };
                let mut out = Vec::new();
                encode(
                    &publish("top", qos, pkid, false, &vec![0; len]),
                    protocol,
                    &mut out,
                )
                .unwrap();
                assert_eq!(
                    sizes::publish_size(protocol, 3, qos, len),
                    Some(out.len()),
                    "{protocol:?} {qos:?} {len}"
                );
            }
            let filter = "f".repeat(len.clamp(1, 65_535));
            let mut out = Vec::new();
            let packet = Packet::Subscribe {
                pkid: 1,
                topics: vec![SubscribeFilter::new(filter.clone(), QoS::AtLeastOnce)],
            };
            encode(&packet, protocol, &mut out).unwrap();
            assert_eq!(
                sizes::subscribe_size(protocol, filter.len()),
                Some(out.len())
            );
        }
    }
    assert_eq!(
        sizes::publish_size(Protocol::V5, usize::MAX, QoS::AtMostOnce, 1),
        None
    );
    assert_eq!(
        sizes::publish_size(Protocol::V5, 1, QoS::AtMostOnce, 300_000_000),
        None
    );
}

#[test]
fn same_seed_same_outputs() {
    let run = |seed| {
        let mut h = Harness::new(config(Protocol::V5), seed);
        h.client
            .clock(h.now)
            .input(|c, now| c.subscribe(now, "x", QoS::AtLeastOnce))
            .unwrap();
        h.connect();
        h.client
            .clock(h.now)
            .outcome(SOCKET_BASE, SocketOutcome::PeerClosed);
        h.drain();
        (h.wire.clone(), h.events.clone(), h.ops.clone())
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5).0, run(6).0);
}

#[test]
fn transmit_buffer_len_is_enough() {
    // Any buffer works; the contract's size is just the usual one.
    let mut h = Harness::new(config(Protocol::V311), 23);
    h.connect();
    h.client
        .clock(h.now)
        .input(|c, now| c.publish(now, "t", &[0; TRANSMIT_BUFFER_LEN * 3], QoS::AtMostOnce))
        .unwrap();
    h.drain();
    assert_eq!(h.take_packets().len(), 1);
}

/// Flow control: the runtime refuses a transmit (its spill for the stream is full). The client
/// keeps the refused bytes, sends nothing more until `Writable`, stays connected, and then sends
/// them again: the broker reads the PUBLISH whole, once. Regression: the client drained its queue
/// into every transmit and took a refusal for a broken connection (`Io { Send, WouldBlock }`),
/// so a burst of 10,000 signals through a runtime with a small spill reconnected in a loop.
#[test]
fn a_refused_transmit_is_sent_again_after_writable_and_the_connection_stays() {
    for protocol in BOTH {
        let mut h = Harness::new(config(protocol), 5);
        h.connect();
        let socket = h.current.expect("connected");
        let _id = h
            .client
            .clock(h.now)
            .input(|c, now| c.publish(now, "t", b"held back", QoS::AtLeastOnce))
            .unwrap();
        // The runtime refuses the PUBLISH's transmit (nothing of it was taken).
        let sent = h.client.take_transmits();
        assert_eq!(sent.len(), 1, "{sent:?}");
        let refused = SocketOutcome::Failed {
            op: OpKind::Send,
            destination: Some(broker_addr()),
            error: IoError::WouldBlock,
        };
        h.client.clock(h.now).outcome(socket, refused);
        h.client.clock(h.now).fire();
        assert!(
            h.client.take_transmits().is_empty(),
            "blocked until Writable"
        );
        assert!(h.client.machine.is_connected());
        assert!(
            h.client.machine.queued_bytes() > 0,
            "the refused bytes are kept"
        );
        assert_eq!(h.client.machine.stats().disconnects, 0);
        h.client
            .clock(h.now)
            .outcome(socket, SocketOutcome::Writable);
        h.drain();
        let packets = h.take_packets();
        assert_eq!(packets.len(), 1, "{packets:?}");
        assert!(
            matches!(&packets[0], Packet::Publish { payload, .. } if payload == b"held back"),
            "{packets:?}"
        );
        assert!(h.client.machine.is_connected());
    }
}

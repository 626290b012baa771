//! What a broker (or whoever publishes through it) may throw at the client: oversized and
//! retained messages, and the MQTT 5 limits a CONNACK sets.

use super::*;

fn retained(topic: &str, qos: QoS, pkid: u16, payload: &[u8]) -> Packet {
    Packet::Publish {
        topic: topic.into(),
        qos,
        pkid,
        retain: true,
        dup: false,
        payload: payload.to_vec(),
    }
}

/// The broker sends `packet` in pieces of `chunk` bytes.
fn send_in_chunks(h: &mut Harness, packet: &Packet, chunk: usize) {
    let mut bytes = Vec::new();
    encode(packet, h.client.machine.protocol(), &mut bytes).unwrap();
    for piece in bytes.chunks(chunk) {
        h.send_raw(piece);
    }
}

/// Regression: one retained 256 KiB message on a node's topic ended every connection as soon
/// as the broker delivered it (a codec error), so the client reconnected forever and received
/// nothing. Now the message is skipped as it streams past, acknowledged, and the connection
/// stays up for the messages after it.
#[test]
fn oversized_publish_is_skipped_and_the_connection_stays() {
    for protocol in BOTH {
        let mut c = config(protocol);
        c.max_packet_size = 1024;
        c.accept_retained = true; // The skip, not the retained filter, is under test.
        let mut h = Harness::new(c, 40);
        h.client
            .clock(h.now)
            .input(|c, now| c.subscribe(now, "node/x", QoS::AtLeastOnce))
            .unwrap();
        h.connect();
        h.take_packets();
        let big = retained("node/x", QoS::AtLeastOnce, 0x0102, &[0xEE; 262_144]);
        let mut size = Vec::new();
        encode(&big, protocol, &mut size).unwrap();
        send_in_chunks(&mut h, &big, 1460);
        assert_eq!(
            h.events,
            vec![MqttEvent::PublishSkipped {
                size: size.len(),
                max: 1024,
                retained: true
            }]
        );
        // Acknowledged, so the broker neither resends it nor keeps it in flight.
        assert_eq!(h.take_packets(), vec![Packet::PubAck { pkid: 0x0102 }]);
        // A QoS 0 one is skipped without an answer.
        h.events.clear();
        send_in_chunks(
            &mut h,
            &publish("node/x", QoS::AtMostOnce, 0, false, &[1; 5000]),
            333,
        );
        assert!(matches!(
            h.events.as_slice(),
            [MqttEvent::PublishSkipped {
                retained: false,
                ..
            }]
        ));
        assert_eq!(h.take_packets(), vec![]);
        // The connection is still up and the next message arrives.
        h.events.clear();
        h.send(&publish("node/x", QoS::AtLeastOnce, 9, false, b"real"));
        assert_eq!(
            h.events,
            vec![MqttEvent::Message {
                topic: "node/x".into(),
                payload: b"real".to_vec(),
                qos: QoS::AtLeastOnce
            }]
        );
        assert!(h.client.machine.is_connected());
        let stats = h.client.machine.stats();
        assert_eq!(
            (stats.oversized_skipped, stats.disconnects, stats.attempts),
            (2, 0, 1)
        );
        assert_eq!(h.closes(SOCKET_BASE), 0);
    }
}

#[test]
fn oversized_packet_that_is_not_a_publish_still_ends_the_connection() {
    let mut c = config(Protocol::V311);
    c.max_packet_size = 128;
    let mut h = Harness::new(c, 41);
    h.connect();
    h.send(&Packet::SubAck {
        pkid: 1,
        codes: vec![0; 200],
    });
    assert!(matches!(
        h.events.as_slice(),
        [MqttEvent::Disconnected {
            reason: DisconnectReason::Codec(CodecError::TooLarge { max: 128, .. }),
            ..
        }]
    ));
    assert_eq!(h.client.machine.stats().protocol_errors, 1);
    assert_eq!(h.closes(SOCKET_BASE), 1);
}

#[test]
fn an_oversized_publish_before_connack_is_a_violation() {
    let mut c = config(Protocol::V5);
    c.max_packet_size = 128;
    let mut h = Harness::new(c, 42);
    h.accept_tcp();
    h.send(&publish("t", QoS::AtMostOnce, 0, false, &[0; 500]));
    assert!(matches!(
        h.events.as_slice(),
        [MqttEvent::Disconnected {
            reason: DisconnectReason::ProtocolViolation(_),
            ..
        }]
    ));
}

/// A 3.1.1 broker sends the retained messages of a topic when we subscribe (MQTT 5 brokers are
/// asked not to): unless they are wanted, they are acknowledged and dropped, never reported.
#[test]
fn retained_messages_are_dropped_unless_wanted() {
    for accept_retained in [false, true] {
        let mut c = config(Protocol::V311);
        c.accept_retained = accept_retained;
        let mut h = Harness::new(c, 43);
        h.connect();
        h.send(&retained("t", QoS::AtLeastOnce, 5, b"stored"));
        h.send(&retained("t", QoS::AtMostOnce, 0, b"stored too"));
        assert_eq!(h.take_packets(), vec![Packet::PubAck { pkid: 5 }]);
        let stats = h.client.machine.stats();
        if accept_retained {
            assert_eq!(h.events.len(), 2, "{:?}", h.events);
            assert_eq!(stats.retained_dropped, 0);
        } else {
            assert_eq!(h.events, vec![]);
            assert_eq!(stats.retained_dropped, 2);
        }
        assert!(h.client.machine.is_connected());
    }
}

/// MQTT 5 CONNACK properties: the broker's Maximum Packet Size bounds what we publish (a held
/// message larger than it is dropped, not sent to get us disconnected), its Receive Maximum
/// bounds the QoS 1 messages awaiting PUBACK, its Server Keep Alive replaces ours.
#[test]
fn connack_limits_are_obeyed() {
    let mut h = Harness::new(config(Protocol::V5), 44);
    // Held while connecting: one message too large for this broker, three small ones.
    let mut ids = Vec::new();
    for payload in [&[0u8; 500][..], b"a", b"b", b"c"] {
        ids.push(
            h.client
                .clock(h.now)
                .input(|c, now| c.publish(now, "peer", payload, QoS::AtLeastOnce))
                .unwrap(),
        );
    }
    h.accept_tcp();
    h.take_packets();
    h.send(&Packet::ConnAck {
        session_present: false,
        code: 0,
        properties: ConnAckProperties {
            max_packet_size: Some(200),
            receive_maximum: Some(2),
            server_keep_alive: Some(5),
        },
    });
    assert!(h.client.machine.is_connected());
    assert!(
        h.events.contains(&MqttEvent::TooLargeForBroker {
            id: ids[0],
            size: sizes::publish_size(Protocol::V5, 4, QoS::AtLeastOnce, 500).unwrap(),
            max: 200
        }),
        "{:?}",
        h.events
    );
    // Two of the three small ones go out; the third waits for a PUBACK.
    let sent = h.take_packets();
    let pkids: Vec<u16> = sent
        .iter()
        .map(|p| match p {
            Packet::Publish { pkid, payload, .. } => {
                assert!(payload.len() == 1);
                *pkid
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(pkids.len(), 2);
    h.send(&Packet::PubAck { pkid: pkids[0] });
    assert!(matches!(
        h.take_packets().as_slice(),
        [Packet::Publish { payload, .. }] if payload == b"c"
    ));
    // Larger than the broker takes: refused up front.
    assert_eq!(
        h.client
            .clock(h.now)
            .input(|c, now| c.publish(now, "peer", &[0; 300], QoS::AtLeastOnce)),
        Err(PublishError::TooLarge {
            size: sizes::publish_size(Protocol::V5, 4, QoS::AtLeastOnce, 300).unwrap(),
            max: 200
        })
    );
    // Server Keep Alive 5 s instead of our 30 s.
    h.events.clear();
    h.advance(Duration::from_secs(5));
    assert_eq!(h.take_packets(), vec![Packet::PingReq]);
    // A new connection starts from our own limits again.
    h.client
        .clock(h.now)
        .outcome(SOCKET_BASE, SocketOutcome::PeerClosed);
    h.drain();
    h.advance(BACKOFF_INITIAL);
    h.connect();
    h.take_packets();
    assert!(h
        .client
        .clock(h.now)
        .input(|c, now| c.publish(now, "peer", &[0; 300], QoS::AtLeastOnce))
        .is_ok());
}

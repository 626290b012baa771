//! Reconnect, back-off, stale sockets, protocol fallback and close.

use super::*;

fn retry_in(events: &[MqttEvent]) -> Duration {
    match events.last() {
        Some(MqttEvent::Disconnected { retry_in, .. }) => *retry_in,
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

#[test]
fn peer_close_reconnects_resubscribes_and_resends_with_dup() {
    for protocol in BOTH {
        let mut h = Harness::new(config(protocol), 30);
        h.client
            .clock(h.now)
            .input(|c, now| c.subscribe(now, "node/x", QoS::AtLeastOnce))
            .unwrap();
        h.connect();
        let subs = h.take_subscribes();
        h.send(&Packet::SubAck {
            pkid: subs[0].0,
            codes: vec![1],
        });
        let a = h
            .client
            .clock(h.now)
            .input(|c, now| c.publish(now, "peer/a", b"A", QoS::AtLeastOnce))
            .unwrap();
        let b = h
            .client
            .clock(h.now)
            .input(|c, now| c.publish(now, "peer/b", b"B", QoS::AtLeastOnce))
            .unwrap();
        h.drain();
        let sent = h.take_packets();
        let pkids: Vec<u16> = sent
            .iter()
            .map(|p| match p {
                Packet::Publish { pkid, .. } => *pkid,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_ne!(pkids[0], pkids[1]);
        h.send(&Packet::PubAck { pkid: pkids[1] });
        assert_eq!(h.events.last(), Some(&MqttEvent::Delivered(b)));
        h.events.clear();

        // The broker goes away.
        h.client
            .clock(h.now)
            .outcome(SOCKET_BASE, SocketOutcome::PeerClosed);
        h.drain();
        assert!(matches!(
            h.events.as_slice(),
            [MqttEvent::Disconnected {
                reason: DisconnectReason::PeerClosed,
                ..
            }]
        ));
        let delay = retry_in(&h.events);
        assert!(
            delay >= BACKOFF_INITIAL / 2 && delay <= BACKOFF_INITIAL,
            "{delay:?}"
        );
        assert_eq!(h.closes(SOCKET_BASE), 1);
        assert_eq!(h.client.deadline(), Some(h.now + delay));
        assert_eq!(
            h.client
                .clock(h.now)
                .input(|c, now| c.publish(now, "t", b"x", QoS::AtMostOnce)),
            Err(PublishError::NotConnected)
        );
        let c = h
            .client
            .clock(h.now)
            .input(|c, now| c.publish(now, "peer/c", b"C", QoS::AtLeastOnce))
            .unwrap();
        h.drain();
        assert!(h.take_packets().is_empty());
        h.events.clear();

        // Nothing happens before the delay, then a new socket.
        h.advance(delay - Duration::from_nanos(1));
        assert_eq!(h.last_bind(), SOCKET_BASE);
        h.advance(Duration::from_nanos(1));
        let second = SocketId(SOCKET_BASE.0 + 1);
        assert_eq!(h.last_bind(), second);
        h.connect();
        let again = h.take_packets();
        assert_eq!(again.len(), 3, "{again:?}");
        assert!(
            matches!(&again[0], Packet::Subscribe { topics, .. } if topics[0].filter == "node/x")
        );
        assert_eq!(
            again[1],
            publish("peer/a", QoS::AtLeastOnce, pkids[0], true, b"A")
        );
        assert!(
            matches!(&again[2], Packet::Publish { topic, dup: false, .. } if topic == "peer/c")
        );
        assert_eq!(h.client.machine.stats().resent, 1);
        let Packet::Subscribe { pkid: sub_pkid, .. } = again[0] else {
            unreachable!()
        };
        h.send(&Packet::SubAck {
            pkid: sub_pkid,
            codes: vec![1],
        });
        h.send(&Packet::PubAck { pkid: pkids[0] });
        let Packet::Publish { pkid: c_pkid, .. } = again[2] else {
            unreachable!()
        };
        h.send(&Packet::PubAck { pkid: c_pkid });
        assert_eq!(
            h.events,
            vec![
                MqttEvent::Subscribed {
                    topic: "node/x".into(),
                    granted: QoS::AtLeastOnce
                },
                MqttEvent::Delivered(a),
                MqttEvent::Delivered(c),
            ]
        );
        assert_eq!(h.client.machine.inflight(), 0);
        let stats = h.client.machine.stats();
        assert_eq!(
            (stats.attempts, stats.connects, stats.disconnects),
            (2, 2, 1)
        );
    }
}

#[test]
fn backoff_grows_with_jitter_within_bounds_and_resets_after_success() {
    let mut delays_seen = Vec::new();
    for seed in 0..20 {
        let mut h = Harness::new(config(Protocol::V311), seed);
        let mut base = BACKOFF_INITIAL;
        for attempt in 0..8 {
            let socket = h.last_bind();
            h.client.clock(h.now).outcome(
                socket,
                SocketOutcome::Failed {
                    op: OpKind::Bind,
                    destination: None,
                    error: IoError::AddrInUse,
                },
            );
            h.drain();
            let delay = retry_in(&h.events);
            assert!(
                delay >= base / 2 && delay <= base,
                "seed {seed} attempt {attempt}: {delay:?} vs {base:?}"
            );
            delays_seen.push(delay);
            h.advance(delay);
            assert_ne!(h.last_bind(), socket, "a new socket per attempt");
            base = (base * 2).min(BACKOFF_MAX);
        }
        // A connection that stays up for `healthy_after` resets the back-off.
        h.connect();
        h.advance(MqttConfig::new(broker_addr()).healthy_after);
        h.client
            .clock(h.now)
            .outcome(h.current.unwrap(), SocketOutcome::PeerClosed);
        h.drain();
        let delay = retry_in(&h.events);
        assert!(delay <= BACKOFF_INITIAL, "{delay:?}");
    }
    delays_seen.sort();
    delays_seen.dedup();
    assert!(delays_seen.len() > 100, "jitter varies the delays");
}

/// Regression: the back-off was reset by every accepted CONNACK, so a connection that the broker
/// (or a message it delivers) kills right after the CONNACK was retried every `backoff_initial`
/// forever. Now such connections count as failures: the delay doubles up to the maximum, and
/// only a connection that lasted `healthy_after` resets it.
#[test]
fn a_connection_that_dies_right_after_connack_keeps_the_backoff_growing() {
    let healthy_after = MqttConfig::new(broker_addr()).healthy_after;
    for seed in 0..5 {
        let mut h = Harness::new(config(Protocol::V5), 50 + seed);
        let mut base = BACKOFF_INITIAL;
        let mut delays = Vec::new();
        for attempt in 0..8 {
            h.connect();
            // Up, then gone well before it was healthy.
            h.advance(healthy_after / 2);
            h.client
                .clock(h.now)
                .outcome(h.current.unwrap(), SocketOutcome::PeerClosed);
            h.drain();
            let delay = retry_in(&h.events);
            assert!(
                delay >= base / 2 && delay <= base,
                "seed {seed} attempt {attempt}: {delay:?} vs {base:?}"
            );
            delays.push(delay);
            h.events.clear();
            h.advance(delay);
            base = (base * 2).min(BACKOFF_MAX);
        }
        assert!(delays.last().unwrap() >= &(BACKOFF_MAX / 2), "{delays:?}");
        let stats = h.client.machine.stats();
        assert_eq!((stats.connects, stats.disconnects), (8, 8));
        // A connection that lasts resets it.
        h.connect();
        h.advance(healthy_after);
        h.client
            .clock(h.now)
            .outcome(h.current.unwrap(), SocketOutcome::PeerClosed);
        h.drain();
        assert!(retry_in(&h.events) <= BACKOFF_INITIAL);
    }
}

#[test]
fn late_outcomes_for_old_sockets_are_ignored() {
    let mut h = Harness::new(config(Protocol::V5), 31);
    h.connect();
    let old = SOCKET_BASE;
    h.client
        .clock(h.now)
        .outcome(old, SocketOutcome::PeerClosed);
    h.drain();
    h.advance(BACKOFF_INITIAL);
    h.connect();
    let dropped = h.client.machine.stats().dropped;
    let late = [
        SocketOutcome::PeerClosed,
        SocketOutcome::Bound {
            local: local_addr(),
        },
        SocketOutcome::Connected {
            local: local_addr(),
            remote: broker_addr(),
        },
        SocketOutcome::Failed {
            op: OpKind::Send,
            destination: None,
            error: IoError::ConnectionReset,
        },
    ];
    for outcome in late {
        h.client.clock(h.now).outcome(old, outcome);
        h.drain();
    }
    assert_eq!(
        h.client.clock(h.now).stream(old, &[0xD0, 0x00]),
        Verdict::Dropped(DropReason::UnknownSocket)
    );
    h.drain();
    assert!(h.events.is_empty(), "{:?}", h.events);
    assert!(h.client.machine.is_connected());
    assert_eq!(h.client.machine.stats().dropped, dropped + 5);
    assert_eq!(h.closes(old), 1);
}

#[test]
fn socket_ids_wrap_within_the_range() {
    let mut c = config(Protocol::V311);
    c.socket_ids = 3;
    let mut h = Harness::new(c, 32);
    let mut seen = Vec::new();
    for _ in 0..5 {
        let socket = h.last_bind();
        seen.push(socket.0);
        h.client.clock(h.now).outcome(
            socket,
            SocketOutcome::Failed {
                op: OpKind::Bind,
                destination: None,
                error: IoError::AddrInUse,
            },
        );
        h.drain();
        // The harness insists on one Close per socket; ids repeat here.
        h.close_counts_reset();
        let delay = retry_in(&h.events);
        h.advance(delay);
    }
    assert_eq!(seen, vec![100, 101, 102, 100, 101]);
}

#[test]
fn v5_falls_back_to_v311_when_the_version_is_refused() {
    let raw_v311_refusal: &[u8] = &[0x20, 0x02, 0x00, 0x01];
    let v5_refusal = {
        let mut bytes = Vec::new();
        encode(&connack(0x84), Protocol::V5, &mut bytes).unwrap();
        bytes
    };
    for (refusal, code) in [(raw_v311_refusal, 1u8), (v5_refusal.as_slice(), 0x84)] {
        let mut h = Harness::new(config(Protocol::V5), 33);
        h.accept_tcp();
        assert!(matches!(
            h.connect_packet,
            Some(Packet::Connect {
                protocol: Protocol::V5,
                ..
            })
        ));
        h.send_raw(refusal);
        assert_eq!(
            h.events,
            vec![MqttEvent::Disconnected {
                reason: DisconnectReason::Refused {
                    code,
                    protocol: Protocol::V5
                },
                retry_in: Duration::ZERO,
            }]
        );
        assert_eq!(h.client.machine.protocol(), Protocol::V311);
        h.events.clear();
        h.advance(Duration::ZERO);
        h.accept_tcp();
        assert!(matches!(
            h.connect_packet,
            Some(Packet::Connect {
                protocol: Protocol::V311,
                ..
            })
        ));
        h.take_packets();
        h.send(&connack(0));
        assert_eq!(
            h.events,
            vec![MqttEvent::Connected {
                session_present: false,
                protocol: Protocol::V311
            }]
        );
    }
}

#[test]
fn no_fallback_when_disabled_or_already_v311() {
    let mut c = config(Protocol::V5);
    c.fallback_to_v311 = false;
    let mut h = Harness::new(c, 34);
    h.accept_tcp();
    h.send(&connack(0x84));
    assert!(retry_in(&h.events) >= BACKOFF_INITIAL / 2);
    assert_eq!(h.client.machine.protocol(), Protocol::V5);

    let mut h = Harness::new(config(Protocol::V311), 34);
    h.accept_tcp();
    h.send(&connack(1));
    assert!(retry_in(&h.events) >= BACKOFF_INITIAL / 2);
    assert_eq!(h.client.machine.protocol(), Protocol::V311);
}

#[test]
fn close_while_connected_sends_disconnect_then_closes_once() {
    for protocol in BOTH {
        let mut h = Harness::new(config(protocol), 35);
        h.client
            .clock(h.now)
            .input(|c, now| c.subscribe(now, "a", QoS::AtMostOnce))
            .unwrap();
        h.connect();
        h.client
            .clock(h.now)
            .input(|c, now| c.publish(now, "t", b"pending", QoS::AtLeastOnce))
            .unwrap();
        h.drain();
        h.take_packets();
        h.client.clock(h.now).input(|c, now| c.close(now));
        h.client.clock(h.now).input(|c, now| c.close(now));
        h.drain();
        h.client.clock(h.now).input(|c, now| c.close(now));
        h.drain();
        assert_eq!(h.take_packets(), vec![Packet::Disconnect]);
        assert_eq!(h.closes(SOCKET_BASE), 1);
        assert_eq!(h.events, vec![MqttEvent::Closed]);
        assert_eq!(h.client.deadline(), None);
        assert!(h.client.machine.is_closed() && !h.client.machine.is_connected());
        // Everything after close is refused or dropped, and produces nothing.
        assert_eq!(
            h.client
                .clock(h.now)
                .input(|c, now| c.publish(now, "t", b"x", QoS::AtLeastOnce)),
            Err(PublishError::Closed)
        );
        assert_eq!(
            h.client
                .clock(h.now)
                .input(|c, now| c.subscribe(now, "t", QoS::AtMostOnce)),
            Err(SubscribeError::Closed)
        );
        assert_eq!(
            h.client.clock(h.now).stream(SOCKET_BASE, &[0xD0, 0x00]),
            Verdict::Dropped(DropReason::Closed)
        );
        h.client
            .clock(h.now)
            .outcome(SOCKET_BASE, SocketOutcome::PeerClosed);
        h.client.clock(h.now + Duration::from_secs(1000)).fire();
        h.drain();
        assert_eq!(h.events, vec![MqttEvent::Closed]);
        assert_eq!(h.client.deadline(), None);
    }
}

#[test]
fn close_in_every_other_state() {
    // 0: binding, 1: connecting, 2: handshaking, 3: waiting to reconnect.
    for stage in 0..4 {
        let mut h = Harness::new(config(Protocol::V311), 36);
        match stage {
            0 => {}
            1 => {
                h.client.clock(h.now).outcome(
                    SOCKET_BASE,
                    SocketOutcome::Bound {
                        local: local_addr(),
                    },
                );
                h.drain();
            }
            2 => h.accept_tcp(),
            _ => {
                h.client
                    .clock(h.now)
                    .outcome(SOCKET_BASE, SocketOutcome::PeerClosed);
                h.drain();
                h.events.clear();
            }
        }
        h.take_packets();
        h.client.clock(h.now).input(|c, now| c.close(now));
        h.client.clock(h.now).input(|c, now| c.close(now));
        h.drain();
        assert!(h.take_packets().is_empty(), "no DISCONNECT before CONNACK");
        assert_eq!(h.closes(SOCKET_BASE), 1, "stage {stage}");
        assert_eq!(h.events, vec![MqttEvent::Closed]);
        assert_eq!(h.client.deadline(), None);
        let binds = h
            .ops
            .iter()
            .filter(|op| matches!(op, SocketOp::Bind { .. }))
            .count();
        assert_eq!(binds, 1);
    }
}

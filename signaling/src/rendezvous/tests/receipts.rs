//! Receipts: asked for, answered once by the recipient's machine, authenticated on return;
//! never answered themselves. Content and size rejections.

use super::*;

/// Opens what the machine published, as node `as_node`: (sender, nonce, content).
fn open_as(as_node: u8, h: &Harness, bytes: &[u8]) -> Opened {
    let mut opener = Opener::new(16);
    opener
        .open(&identity(as_node), h.m.machine.unix_ms(h.now), bytes)
        .expect("a valid envelope")
}

#[test]
fn a_receipt_from_the_recipient_is_reported_once() {
    let mut h = Harness::new(2);
    h.take();
    let peer = identity(2).public_key();
    let now = h.now;
    let sent =
        h.m.clock(now)
            .input(|m, now| m.send_with_receipt(now, &peer, None, b"ring"))
            .unwrap();
    h.drain();
    assert_eq!(h.m.machine.pending_receipts(), 1);
    // The recipient sees a message asking for a receipt.
    let envelope = h.sides[0].published[0].2.clone();
    let opened = open_as(2, &h, &envelope);
    assert_eq!(
        payload::parse(&opened.payload),
        Ok(Content::Message {
            payload: b"ring",
            wants_receipt: true
        })
    );
    // It answers (through broker 1 here): reported once, with the message's id.
    let receipt = h.sealed(2, 40, Duration::ZERO, &payload::receipt(&opened.nonce));
    let topic = h.own_topic();
    h.deliver(1, &topic, &receipt);
    let ev: Vec<_> = h
        .take()
        .into_iter()
        .filter(|e| !matches!(e, RendezvousEvent::Acknowledged { .. }))
        .collect();
    assert_eq!(
        ev,
        [RendezvousEvent::Receipt {
            id: sent.id,
            from: peer,
            broker: h.id(1),
            received_at_ms: h.m.machine.unix_ms(h.now),
        }]
    );
    // Its copy through the other broker is a duplicate; a second, fresh receipt for the same
    // message is unexpected (the message no longer awaits one).
    h.deliver(0, &topic, &receipt);
    assert_eq!(h.take(), []);
    let again = h.sealed(2, 41, Duration::ZERO, &payload::receipt(&opened.nonce));
    h.deliver(0, &topic, &again);
    assert_eq!(
        h.take(),
        [RendezvousEvent::Rejected {
            broker: h.id(0),
            reason: Rejection::UnexpectedReceipt
        }]
    );
    let stats = h.m.machine.stats();
    assert_eq!(
        (stats.receipts_received, stats.duplicates, stats.rejected),
        (1, 1, 1)
    );
    assert_eq!(h.m.machine.pending_receipts(), 0);
}

/// Only the key the message went to can answer it, and only for a message that asked.
#[test]
fn receipts_are_authenticated() {
    let mut h = Harness::new(1);
    h.take();
    let peer = identity(2).public_key();
    let now = h.now;
    h.m.clock(now)
        .input(|m, now| m.send_with_receipt(now, &peer, None, b"for 2"))
        .unwrap();
    h.m.clock(now)
        .input(|m, now| m.send(now, &peer, None, b"no receipt wanted"))
        .unwrap();
    h.drain();
    h.take(); // The brokers' acknowledgements.
    let asked = open_as(2, &h, &h.sides[0].published[0].2).nonce;
    let not_asked = open_as(2, &h, &h.sides[0].published[1].2).nonce;
    let topic = h.own_topic();
    let cases = [
        // Node 3 (a valid key, but not the recipient) names our message.
        h.sealed(3, 50, Duration::ZERO, &payload::receipt(&asked)),
        // The recipient names a message that did not ask for a receipt.
        h.sealed(2, 51, Duration::ZERO, &payload::receipt(&not_asked)),
        // The recipient names a message we never sent.
        h.sealed(2, 52, Duration::ZERO, &payload::receipt(&[0xAB; NONCE_LEN])),
    ];
    for receipt in &cases {
        h.deliver(0, &topic, receipt);
        let ev = h.take();
        assert!(
            matches!(
                ev.as_slice(),
                [RendezvousEvent::Rejected {
                    reason: Rejection::UnexpectedReceipt,
                    ..
                }]
            ),
            "{ev:?}"
        );
    }
    // The real recipient still can.
    h.deliver(
        0,
        &topic,
        &h.sealed(2, 53, Duration::ZERO, &payload::receipt(&asked)),
    );
    assert!(matches!(
        h.take().as_slice(),
        [RendezvousEvent::Receipt { from, .. }] if *from == peer
    ));
}

#[test]
fn the_recipient_answers_once_and_never_answers_a_receipt() {
    let mut h = Harness::new(2);
    h.take();
    let topic = h.own_topic();
    let wants = h.sealed(
        2,
        60,
        Duration::ZERO,
        &payload::message(b"please confirm", true),
    );
    h.deliver(1, &topic, &wants);
    assert!(matches!(
        h.take().as_slice(),
        [RendezvousEvent::Message { payload, .. }] if payload == b"please confirm"
    ));
    // One receipt, sealed to the sender, through the broker the message came through.
    let sender_topic = topic_for(&identity(2).node_id());
    assert_eq!(h.sides[0].published.len(), 0);
    assert_eq!(h.sides[1].published.len(), 1);
    let (t, _, bytes) = h.sides[1].published[0].clone();
    assert_eq!(t, sender_topic);
    let receipt = open_as(2, &h, &bytes);
    assert_eq!(receipt.sender, identity(1).public_key());
    assert_eq!(
        payload::parse(&receipt.payload),
        Ok(Content::Receipt {
            nonce: [60; NONCE_LEN]
        })
    );
    // Copies of the message (the other broker, a redelivery) are not answered again.
    h.deliver(0, &topic, &wants);
    h.deliver(1, &topic, &wants);
    // A message that does not ask, and a receipt (even one we reject): no answer.
    h.deliver(0, &topic, &h.envelope(61, Duration::ZERO, b"quiet"));
    h.deliver(
        0,
        &topic,
        &h.sealed(2, 62, Duration::ZERO, &payload::receipt(&[1; NONCE_LEN])),
    );
    assert_eq!(
        (h.sides[0].published.len(), h.sides[1].published.len()),
        (0, 1)
    );
    assert_eq!(h.m.machine.stats().receipts_sent, 1);
}

#[test]
fn content_and_size_rejections_are_typed() {
    let mut c = config(2);
    c.mqtt.max_packet_size = 4096;
    let mut h = Harness::with(c);
    h.take();
    let topic = h.own_topic();
    let cases: [(Vec<u8>, Rejection); 3] = [
        (
            h.sealed(2, 70, Duration::ZERO, b""),
            Rejection::Content(ContentError::Empty),
        ),
        (
            h.sealed(2, 71, Duration::ZERO, b"\x07raw"),
            Rejection::Content(ContentError::UnknownKind(7)),
        ),
        (
            h.sealed(2, 72, Duration::ZERO, b"\x02short"),
            Rejection::Content(ContentError::MalformedReceipt),
        ),
    ];
    for (bytes, reason) in cases {
        h.deliver(0, &topic, &bytes);
        assert_eq!(
            h.take(),
            [RendezvousEvent::Rejected {
                broker: h.id(0),
                reason
            }]
        );
    }
    // Larger than the MQTT client takes: skipped, rejected, and the broker stays up.
    h.deliver(1, &topic, &[0; 10_000]);
    let ev = h.take();
    assert!(
        matches!(
            ev.as_slice(),
            [RendezvousEvent::Rejected {
                reason: Rejection::Oversized { size },
                ..
            }] if *size > 10_000
        ),
        "{ev:?}"
    );
    assert!(h.m.machine.health(h.id(1)).unwrap().connected);
    assert_eq!(Rejection::Oversized { size: 1 }.label(), "oversized");
    assert_eq!(
        Rejection::Envelope(OpenError::Stale { age_ms: 5 }).label(),
        "stale"
    );
    // Too large to send.
    let peer = identity(2).public_key();
    let too_big = vec![0; MAX_MESSAGE + 1];
    let now = h.now;
    assert_eq!(
        h.m.clock(now)
            .input(|m, now| m.send_with_receipt(now, &peer, None, &too_big)),
        Err(SendError::Seal(SealError::TooLarge))
    );
}

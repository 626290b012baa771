//! Unit tests: the handshake and data both ways, identity checks, and every typed failure.

use core::time::Duration;

use p2pd_proto::Instant;
use p2pd_signaling::{Identity, NodeId};

use crate::{
    Channel, ChannelApiError, ChannelConfig, ChannelEvent, ChannelFailure, ChannelKeys,
    HandshakeError, Role, SeedSource, FRAME_OVERHEAD, KIND_DATA, KIND_FINISH, KIND_FINISH_ACK,
};

fn identity(byte: u8) -> Identity {
    Identity::from_secret_bytes(&[byte; 32]).unwrap()
}

fn keys(byte: u8) -> ChannelKeys {
    ChannelKeys::new(&identity(byte), [byte.wrapping_add(100); 32]).unwrap()
}

fn t(ms: u64) -> Instant {
    Instant::ZERO.saturating_add(Duration::from_millis(ms))
}

/// An initiator (identity 1) expecting `expect`, and a responder with keys `responder`.
fn pair_with(expect: NodeId, responder: &ChannelKeys, context: &[u8]) -> (Channel, Channel) {
    let config = ChannelConfig::default();
    let a = Channel::new(
        config,
        &keys(1),
        Role::Initiator { expect },
        context,
        [11; 32],
        t(0),
    )
    .unwrap();
    let b = Channel::new(
        config,
        responder,
        Role::Responder { expect: None },
        context,
        [22; 32],
        t(0),
    )
    .unwrap();
    (a, b)
}

fn pair() -> (Channel, Channel) {
    pair_with(identity(2).node_id(), &keys(2), b"ctx")
}

fn drain(c: &mut Channel) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 1000];
    while let Some(n) = c.poll_transmit(&mut buf) {
        all.extend_from_slice(&buf[..n]);
    }
    all
}

fn events(c: &mut Channel) -> Vec<ChannelEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// Moves bytes both ways until neither side has anything to send.
fn pump(a: &mut Channel, b: &mut Channel) {
    loop {
        let ab = drain(a);
        let ba = drain(b);
        if ab.is_empty() && ba.is_empty() {
            return;
        }
        b.handle_input(t(1), &ab);
        a.handle_input(t(1), &ba);
    }
}

fn data(events: &[ChannelEvent]) -> Vec<u8> {
    events
        .iter()
        .filter_map(|e| match e {
            ChannelEvent::Data(d) => Some(d.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn established() -> (Channel, Channel) {
    let (mut a, mut b) = pair();
    pump(&mut a, &mut b);
    assert!(a.is_established() && b.is_established());
    let _ = (events(&mut a), events(&mut b));
    (a, b)
}

#[test]
fn handshake_proves_both_identities() {
    let (mut a, mut b) = pair();
    pump(&mut a, &mut b);
    assert_eq!(
        events(&mut a),
        [ChannelEvent::Established {
            peer: identity(2).public_key()
        }]
    );
    assert_eq!(
        events(&mut b),
        [ChannelEvent::Established {
            peer: identity(1).public_key()
        }]
    );
    assert_eq!(a.poll_timeout(), None);
}

#[test]
fn data_flows_both_ways_in_frames_and_any_chunking() {
    let (mut a, mut b) = established();
    let message: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut sent = 0;
    let mut wire = Vec::new();
    while sent < message.len() {
        sent += a.send(t(2), &message[sent..]).unwrap();
        wire.extend(drain(&mut a));
    }
    // Byte by byte, then in odd chunks: the same plaintext.
    let mut got = Vec::new();
    for (i, chunk) in wire.chunks(1 + wire.len() / 977).enumerate() {
        if i % 2 == 0 {
            for byte in chunk {
                b.handle_input(t(3), std::slice::from_ref(byte));
            }
        } else {
            b.handle_input(t(3), chunk);
        }
        got.extend(data(&events(&mut b)));
    }
    assert_eq!(got, message);
    b.send(t(4), b"pong").unwrap();
    let back = drain(&mut b);
    a.handle_input(t(4), &back);
    assert_eq!(data(&events(&mut a)), b"pong");
}

#[test]
fn a_full_send_buffer_takes_part_then_nothing() {
    let (mut a, _b) = established();
    let big = vec![7u8; 1 << 20];
    let taken = a.send(t(2), &big).unwrap();
    assert!(taken > 200_000 && taken < 256 * 1024, "{taken}");
    assert_eq!(a.send_room(), 0);
    assert_eq!(a.send(t(2), &big), Err(ChannelApiError::SendBufferFull));
    let _ = drain(&mut a);
    assert!(a.send_room() > 200_000);
}

#[test]
fn partial_takes_between_sends_keep_the_stream_whole() {
    // The runtime writes only part of the pending bytes (a full socket), and the application
    // sends more in between: the pending bytes move to the front of the buffer and the stream
    // stays whole, in order.
    let (mut a, mut b) = established();
    let message: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let (mut sent, mut wire, mut step) = (0, Vec::new(), 0usize);
    while sent < message.len() || !a.pending_transmit().is_empty() {
        if sent < message.len() {
            sent += a.send(t(2), &message[sent..]).unwrap_or(0);
        }
        step += 1;
        let take = a.pending_transmit().len().min(1 + step * 7919 % 70_000);
        wire.extend_from_slice(&a.pending_transmit()[..take]);
        a.consume_transmit(take);
        assert!(a.pending_transmit().len() <= ChannelConfig::default().send_buffer);
    }
    a.finish(t(2)).unwrap();
    wire.extend(drain(&mut a));
    b.handle_input(t(3), &wire);
    let evs = events(&mut b);
    assert_eq!(data(&evs), message);
    assert_eq!(evs.last(), Some(&ChannelEvent::PeerFinished));
}

#[test]
fn the_same_seeds_give_the_same_bytes() {
    let run = || {
        let (mut a, mut b) = pair();
        let mut transcript = Vec::new();
        for _ in 0..4 {
            let ab = drain(&mut a);
            let ba = drain(&mut b);
            transcript.extend_from_slice(&ab);
            transcript.extend_from_slice(&ba);
            b.handle_input(t(1), &ab);
            a.handle_input(t(1), &ba);
        }
        a.send(t(2), b"same").unwrap();
        transcript.extend(drain(&mut a));
        transcript
    };
    assert_eq!(run(), run());
}

#[test]
fn another_identity_is_wrong_peer_and_nothing_is_sent() {
    // The initiator expects identity 3; identity 2 answers.
    let (mut a, mut b) = pair_with(identity(3).node_id(), &keys(2), b"ctx");
    let m1 = drain(&mut a);
    b.handle_input(t(1), &m1);
    let m2 = drain(&mut b);
    a.handle_input(t(1), &m2);
    assert_eq!(
        events(&mut a),
        [ChannelEvent::Failed(ChannelFailure::WrongPeer {
            expected: Some(identity(3).node_id()),
            proved: identity(2).node_id(),
        })]
    );
    // Message 3 (our proof) never left.
    assert!(drain(&mut a).is_empty());
    assert_eq!(a.send(t(2), b"x"), Err(ChannelApiError::Closed));
}

#[test]
fn a_responder_with_an_expectation_refuses_another_initiator() {
    let config = ChannelConfig::default();
    let mut a = Channel::new(
        config,
        &keys(1),
        Role::Initiator {
            expect: identity(2).node_id(),
        },
        b"",
        [1; 32],
        t(0),
    )
    .unwrap();
    let mut b = Channel::new(
        config,
        &keys(2),
        Role::Responder {
            expect: Some(identity(9).node_id()),
        },
        b"",
        [2; 32],
        t(0),
    )
    .unwrap();
    pump(&mut a, &mut b);
    assert!(matches!(
        events(&mut b).as_slice(),
        [ChannelEvent::Failed(ChannelFailure::WrongPeer { .. })]
    ));
}

#[test]
fn our_own_identity_reflected_back_is_wrong_peer() {
    // Both ends hold identity 1 (a connection to ourselves): the responder, expecting anyone,
    // still refuses its own identity.
    let (mut a, mut b) = pair_with(identity(1).node_id(), &keys(1), b"ctx");
    pump(&mut a, &mut b);
    assert!(matches!(
        events(&mut b).as_slice(),
        [ChannelEvent::Failed(ChannelFailure::WrongPeer {
            expected: None,
            ..
        })]
    ));
}

#[test]
fn another_context_fails_to_decrypt() {
    let config = ChannelConfig::default();
    let mut a = Channel::new(
        config,
        &keys(1),
        Role::Initiator {
            expect: identity(2).node_id(),
        },
        b"session 1",
        [1; 32],
        t(0),
    )
    .unwrap();
    let mut b = Channel::new(
        config,
        &keys(2),
        Role::Responder { expect: None },
        b"session 2",
        [2; 32],
        t(0),
    )
    .unwrap();
    pump(&mut a, &mut b);
    assert_eq!(
        events(&mut a),
        [ChannelEvent::Failed(ChannelFailure::BadHandshake(
            HandshakeError::Decrypt
        ))]
    );
}

#[test]
fn a_reflected_first_message_is_a_bad_handshake() {
    let (mut a, _b) = pair();
    let m1 = drain(&mut a);
    a.handle_input(t(1), &m1);
    assert!(matches!(
        events(&mut a).as_slice(),
        [ChannelEvent::Failed(ChannelFailure::BadHandshake(_))]
    ));
}

#[test]
fn a_replayed_handshake_never_establishes() {
    // Record a whole handshake, then replay the initiator's messages to a fresh responder.
    let (mut a, mut b) = pair();
    let m1 = drain(&mut a);
    b.handle_input(t(1), &m1);
    let m2 = drain(&mut b);
    a.handle_input(t(1), &m2);
    let m3 = drain(&mut a);
    // A new responder: a new seed, a new ephemeral key, so the old message 3 cannot fit.
    let mut fresh = Channel::new(
        ChannelConfig::default(),
        &keys(2),
        Role::Responder { expect: None },
        b"ctx",
        [99; 32],
        t(0),
    )
    .unwrap();
    fresh.handle_input(t(2), &m1);
    let _ = drain(&mut fresh);
    fresh.handle_input(t(2), &m3);
    assert_eq!(
        events(&mut fresh),
        [ChannelEvent::Failed(ChannelFailure::BadHandshake(
            HandshakeError::Decrypt
        ))]
    );
    // The old responder's message 2 replayed to a new initiator fails the same way.
    let (mut initiator, _) = pair_with(identity(2).node_id(), &keys(2), b"ctx");
    let mut initiator2 = Channel::new(
        ChannelConfig::default(),
        &keys(1),
        Role::Initiator {
            expect: identity(2).node_id(),
        },
        b"ctx",
        [98; 32],
        t(0),
    )
    .unwrap();
    let _ = (drain(&mut initiator), drain(&mut initiator2));
    initiator2.handle_input(t(2), &m2);
    assert!(matches!(
        events(&mut initiator2).as_slice(),
        [ChannelEvent::Failed(ChannelFailure::BadHandshake(_))]
    ));
}

#[test]
fn every_flipped_bit_is_caught() {
    let (mut a, mut b) = established();
    a.send(t(2), b"first frame").unwrap();
    a.send(t(2), b"second frame").unwrap();
    let wire = drain(&mut a);
    for bit in 0..wire.len() * 8 {
        let (mut a2, mut b2) = established();
        a2.send(t(2), b"first frame").unwrap();
        a2.send(t(2), b"second frame").unwrap();
        let mut bytes = drain(&mut a2);
        assert_eq!(bytes, wire, "deterministic");
        bytes[bit / 8] ^= 1 << (bit % 8);
        b2.handle_input(t(3), &bytes);
        b2.handle_end_of_stream(t(4));
        let evs = events(&mut b2);
        let failed = evs.iter().find_map(|e| match e {
            ChannelEvent::Failed(f) => Some(*f),
            _ => None,
        });
        assert!(
            matches!(
                failed,
                Some(
                    ChannelFailure::Tampered
                        | ChannelFailure::TooLarge { .. }
                        | ChannelFailure::Truncated
                )
            ),
            "bit {bit}: {evs:?}"
        );
        // The frame with the flipped bit delivered nothing.
        let got = data(&evs);
        assert!(
            got.is_empty() || got == b"first frame",
            "bit {bit}: {got:?}"
        );
    }
    b.handle_input(t(3), &wire);
    assert_eq!(data(&events(&mut b)), b"first framesecond frame");
}

#[test]
fn a_length_beyond_the_bound_is_too_large_at_the_header() {
    let (_a, mut b) = established();
    b.handle_input(t(3), &[0xff]);
    assert!(events(&mut b).is_empty());
    b.handle_input(t(3), &[0xff]);
    assert_eq!(
        events(&mut b),
        [ChannelEvent::Failed(ChannelFailure::TooLarge {
            len: 65_535,
            max: 16 * 1024 + 17
        })]
    );
}

#[test]
fn a_stream_cut_mid_frame_or_before_finish_is_truncated() {
    let (mut a, mut b) = established();
    a.send(t(2), b"hello").unwrap();
    let wire = drain(&mut a);
    b.handle_input(t(3), &wire[..wire.len() - 1]);
    b.handle_end_of_stream(t(3));
    assert_eq!(
        events(&mut b),
        [ChannelEvent::Failed(ChannelFailure::Truncated)]
    );

    let (mut a, mut b) = established();
    a.send(t(2), b"hello").unwrap();
    let wire = drain(&mut a);
    b.handle_input(t(3), &wire);
    b.handle_end_of_stream(t(3));
    let evs = events(&mut b);
    assert_eq!(
        evs,
        [
            ChannelEvent::Data(b"hello".to_vec()),
            ChannelEvent::Failed(ChannelFailure::Truncated)
        ]
    );
}

#[test]
fn finish_is_an_authenticated_half_close() {
    let (mut a, mut b) = established();
    a.send(t(2), b"last words").unwrap();
    a.finish(t(2)).unwrap();
    a.finish(t(2)).unwrap();
    assert_eq!(a.send(t(2), b"more"), Err(ChannelApiError::Finished));
    let wire = drain(&mut a);
    b.handle_input(t(3), &wire);
    b.handle_end_of_stream(t(3));
    assert_eq!(
        events(&mut b),
        [
            ChannelEvent::Data(b"last words".to_vec()),
            ChannelEvent::PeerFinished
        ]
    );
    // The other direction still works.
    b.send(t(4), b"reply").unwrap();
    let back = drain(&mut b);
    a.handle_input(t(4), &back);
    assert_eq!(data(&events(&mut a)), b"reply");
}

#[test]
fn a_stall_mid_handshake_times_out() {
    let (mut a, mut b) = pair();
    let m1 = drain(&mut a);
    b.handle_input(t(1), &m1);
    // The initiator never answers message 2.
    let deadline = b.poll_timeout().unwrap();
    assert_eq!(deadline, t(10_000));
    b.handle_timeout(t(9_999));
    assert!(events(&mut b).is_empty());
    b.handle_timeout(deadline);
    assert_eq!(
        events(&mut b),
        [ChannelEvent::Failed(ChannelFailure::HandshakeTimeout)]
    );
    assert_eq!(b.poll_timeout(), None);
}

#[test]
fn close_is_idempotent_and_ends_everything() {
    let (mut a, mut b) = established();
    a.send(t(2), b"unsent").unwrap();
    a.close(t(3));
    a.close(t(3));
    assert_eq!(events(&mut a), [ChannelEvent::Closed]);
    assert!(drain(&mut a).is_empty());
    assert_eq!(a.send(t(3), b"x"), Err(ChannelApiError::Closed));
    b.send(t(3), b"late").unwrap();
    let late = drain(&mut b);
    a.handle_input(t(4), &late);
    assert!(events(&mut a).is_empty());
    assert_eq!(a.stats().dropped_after_end, late.len() as u64);
}

#[test]
fn bad_arguments_are_errors() {
    let long = [0u8; 256];
    let role = Role::Responder { expect: None };
    let k = keys(1);
    assert_eq!(
        Channel::new(ChannelConfig::default(), &k, role, &long, [0; 32], t(0)).unwrap_err(),
        ChannelApiError::ContextTooLong
    );
    for config in [
        ChannelConfig {
            max_frame: 0,
            ..ChannelConfig::default()
        },
        ChannelConfig {
            max_frame: 65_520,
            ..ChannelConfig::default()
        },
        ChannelConfig {
            send_buffer: 100,
            ..ChannelConfig::default()
        },
    ] {
        assert_eq!(
            Channel::new(config, &k, role, b"", [0; 32], t(0)).unwrap_err(),
            ChannelApiError::BadConfig
        );
    }
    let (mut a, _) = pair();
    assert_eq!(a.send(t(0), b"x"), Err(ChannelApiError::NotEstablished));
    assert_eq!(a.finish(t(0)), Err(ChannelApiError::NotEstablished));
}

#[test]
fn seed_sources_are_deterministic_and_never_repeat() {
    let mut s = SeedSource::new([5; 32]);
    let mut r = SeedSource::new([5; 32]);
    let first = s.next_seed();
    assert_eq!(first, r.next_seed());
    assert_ne!(first, s.next_seed());
    assert!(!format!("{s:?}").contains("05"));
    assert!(!format!("{:?}", keys(1)).contains("static_private"));
}

// ----- FINISH acknowledgements -----

fn established_pair() -> (Channel, Channel) {
    let (mut a, mut b) = pair();
    pump(&mut a, &mut b);
    events(&mut a);
    events(&mut b);
    (a, b)
}

#[test]
fn a_finish_is_acknowledged_once_after_the_data_before_it() {
    let (mut a, mut b) = established_pair();
    let big = vec![7u8; 40_000];
    assert_eq!(a.send(t(2), &big).unwrap(), big.len());
    a.finish(t(2)).unwrap();
    let wire = drain(&mut a);
    let (before, finish) = wire.split_at(wire.len() - FRAME_OVERHEAD);
    // Every DATA frame, and the FINISH but its last byte: no ack yet.
    b.handle_input(t(3), before);
    b.handle_input(t(3), &finish[..FRAME_OVERHEAD - 1]);
    assert!(drain(&mut b).is_empty(), "no ack before the FINISH is read");
    assert!(!b.is_peer_finished());
    b.handle_input(t(3), &finish[FRAME_OVERHEAD - 1..]);
    let evs = events(&mut b);
    assert_eq!(data(&evs), big);
    assert_eq!(evs.last(), Some(&ChannelEvent::PeerFinished));
    let ack = drain(&mut b);
    assert_eq!(ack.len(), FRAME_OVERHEAD, "exactly one FINISH-ACK frame");
    assert_eq!(b.stats().frames_out, 1);
    assert_eq!(b.stats().bytes_out, 0);
    assert!(!a.is_finish_acknowledged());
    a.handle_input(t(4), &ack);
    assert_eq!(events(&mut a), [ChannelEvent::FinishAcknowledged]);
    assert!(a.is_finish_acknowledged());
    // The ack is no FINISH of b's, and b's sending side is still up.
    assert!(!a.is_peer_finished() && !b.is_finished());
    assert_eq!(b.send(t(5), b"still talking").unwrap(), 13);
    b.finish(t(5)).unwrap();
    a.handle_input(t(6), &drain(&mut b));
    assert_eq!(
        events(&mut a),
        [
            ChannelEvent::Data(b"still talking".to_vec()),
            ChannelEvent::PeerFinished
        ]
    );
    // a acks b's FINISH after its own FINISH; b hears it once.
    b.handle_input(t(7), &drain(&mut a));
    assert_eq!(events(&mut b), [ChannelEvent::FinishAcknowledged]);
    assert!(
        drain(&mut a).is_empty() && drain(&mut b).is_empty(),
        "nothing more"
    );
    a.handle_end_of_stream(t(8));
    b.handle_end_of_stream(t(8));
    assert!(events(&mut a).is_empty() && events(&mut b).is_empty());
}

#[test]
fn crossing_finishes_are_both_acknowledged() {
    let (mut a, mut b) = established_pair();
    a.send(t(2), b"from a").unwrap();
    b.send(t(2), b"from b").unwrap();
    a.finish(t(2)).unwrap();
    b.finish(t(2)).unwrap();
    let (wa, wb) = (drain(&mut a), drain(&mut b));
    a.handle_input(t(3), &wb);
    b.handle_input(t(3), &wa);
    pump(&mut a, &mut b);
    for c in [&mut a, &mut b] {
        let evs = events(c);
        assert_eq!(evs.len(), 3, "{evs:?}");
        assert_eq!(evs[1], ChannelEvent::PeerFinished);
        assert_eq!(evs[2], ChannelEvent::FinishAcknowledged);
        assert!(c.is_finish_acknowledged() && c.is_peer_finished());
        assert_eq!(c.stats().frames_out, 3, "DATA, FINISH, FINISH-ACK");
        c.handle_end_of_stream(t(4));
        assert!(events(c).is_empty());
    }
}

/// `b` seals a frame of `kind` with `payload` (what a faulty or hostile peer could send, with
/// the session keys) and `a` reads it: its events.
fn forged(a: &mut Channel, b: &mut Channel, kind: u8, payload: &[u8]) -> Vec<ChannelEvent> {
    b.seal(kind, payload).unwrap();
    a.handle_input(t(5), &drain(b));
    events(a)
}

#[test]
fn an_ack_without_our_finish_is_unexpected() {
    let (mut a, mut b) = established_pair();
    assert_eq!(
        forged(&mut a, &mut b, KIND_FINISH_ACK, &[]),
        [ChannelEvent::Failed(ChannelFailure::UnexpectedAck)]
    );
    assert!(a.is_ended());
}

#[test]
fn a_second_ack_is_unexpected_and_a_replayed_one_tampered() {
    let (mut a, mut b) = established_pair();
    a.finish(t(2)).unwrap();
    b.handle_input(t(3), &drain(&mut a));
    let ack = drain(&mut b);
    let mut twice = ack.clone();
    twice.extend_from_slice(&ack);
    let (mut a2, _) = (a, ());
    a2.handle_input(t(4), &twice);
    assert_eq!(
        events(&mut a2),
        [
            ChannelEvent::FinishAcknowledged,
            ChannelEvent::Failed(ChannelFailure::Tampered)
        ]
    );

    let (mut a, mut b) = established_pair();
    a.finish(t(2)).unwrap();
    b.handle_input(t(3), &drain(&mut a));
    a.handle_input(t(4), &drain(&mut b));
    assert_eq!(events(&mut a), [ChannelEvent::FinishAcknowledged]);
    assert_eq!(
        forged(&mut a, &mut b, KIND_FINISH_ACK, &[]),
        [ChannelEvent::Failed(ChannelFailure::UnexpectedAck)]
    );
}

#[test]
fn a_flipped_bit_in_an_ack_is_tampered() {
    for bit in 0..FRAME_OVERHEAD * 8 {
        let (mut a, mut b) = established_pair();
        a.finish(t(2)).unwrap();
        b.handle_input(t(3), &drain(&mut a));
        let mut ack = drain(&mut b);
        ack[bit / 8] ^= 1 << (bit % 8);
        a.handle_input(t(4), &ack);
        let evs = events(&mut a);
        assert!(
            matches!(
                evs.as_slice(),
                [ChannelEvent::Failed(
                    ChannelFailure::Tampered | ChannelFailure::TooLarge { .. }
                )] | []
            ),
            "bit {bit}: {evs:?}"
        );
        assert!(!a.is_finish_acknowledged(), "bit {bit}");
    }
}

#[test]
fn bad_kinds_and_shapes_fail_typed() {
    let cases: [(u8, &[u8], ChannelFailure); 6] = [
        (3, b"", ChannelFailure::UnknownKind(3)),
        (0xff, b"xyz", ChannelFailure::UnknownKind(0xff)),
        (KIND_DATA, b"", ChannelFailure::BadPlaintext),
        (KIND_FINISH, b"x", ChannelFailure::BadPlaintext),
        (KIND_FINISH_ACK, b"x", ChannelFailure::BadPlaintext),
        (KIND_FINISH_ACK, b"", ChannelFailure::UnexpectedAck),
    ];
    for (kind, payload, failure) in cases {
        let (mut a, mut b) = established_pair();
        assert_eq!(
            forged(&mut a, &mut b, kind, payload),
            [ChannelEvent::Failed(failure)],
            "kind {kind} payload {payload:?}"
        );
        assert!(drain(&mut a).is_empty(), "nothing is acked after a failure");
    }
}

#[test]
fn a_second_finish_is_data_after_finish_and_acked_only_once() {
    let (mut a, mut b) = established_pair();
    b.finish(t(2)).unwrap();
    let evs = forged(&mut a, &mut b, KIND_FINISH, &[]);
    assert_eq!(
        evs,
        [
            ChannelEvent::PeerFinished,
            ChannelEvent::Failed(ChannelFailure::DataAfterFinish)
        ]
    );
    assert!(drain(&mut a).is_empty(), "the failure discards the ack");
}

#[test]
fn an_ack_after_the_peers_finish_is_accepted() {
    // The peer finished first, then read our FINISH: its ack comes after its FINISH.
    let (mut a, mut b) = established_pair();
    b.finish(t(2)).unwrap();
    a.handle_input(t(3), &drain(&mut b));
    assert_eq!(events(&mut a), [ChannelEvent::PeerFinished]);
    a.finish(t(3)).unwrap();
    b.handle_input(t(4), &drain(&mut a));
    assert_eq!(
        events(&mut b),
        [ChannelEvent::FinishAcknowledged, ChannelEvent::PeerFinished]
    );
    a.handle_input(t(5), &drain(&mut b));
    assert_eq!(events(&mut a), [ChannelEvent::FinishAcknowledged]);
}

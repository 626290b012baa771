//! Property tests of the channel over its public API: any chunking of a valid stream of frames
//! delivers exactly the plaintext sent; any single corrupted byte after the handshake is a typed
//! failure that delivers exactly the frames before it; the same seeds give the same wire bytes.
// Test code: the package's strict lints (Cargo.toml `[lints]`) guard its library code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::sync::OnceLock;

use p2pd_channel::{
    Channel, ChannelApiError, ChannelConfig, ChannelEvent, ChannelFailure, ChannelKeys, Identity,
    Instant, Role, FRAME_HEADER_LEN, KIND_LEN, TAG_LEN,
};
use proptest::prelude::*;

/// The keys of identities 1 and 2 (signing is slow in a debug build: once per process).
fn keys() -> &'static [ChannelKeys; 2] {
    static KEYS: OnceLock<[ChannelKeys; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        [1u8, 2].map(|i| {
            ChannelKeys::new(
                &Identity::from_secret_bytes(&[i; 32]).unwrap(),
                [i + 50; 32],
            )
            .unwrap()
        })
    })
}

const T0: Instant = Instant::ZERO;

fn take_all(c: &mut Channel) -> Vec<u8> {
    let bytes = c.pending_transmit().to_vec();
    c.consume_transmit(bytes.len());
    bytes
}

/// An initiator (identity 1) and a responder (identity 2) with these seeds and frame size, and
/// every byte of their handshake (both directions, in the order written).
fn handshake(max_frame: usize, seeds: ([u8; 32], [u8; 32])) -> (Channel, Channel, Vec<u8>) {
    let config = ChannelConfig {
        max_frame,
        ..ChannelConfig::default()
    };
    let [ka, kb] = keys();
    let expect = kb.identity().node_id();
    let mut a = Channel::new(config, ka, Role::Initiator { expect }, b"prop", seeds.0, T0).unwrap();
    let mut b = Channel::new(
        config,
        kb,
        Role::Responder { expect: None },
        b"prop",
        seeds.1,
        T0,
    )
    .unwrap();
    let mut transcript = Vec::new();
    for _ in 0..2 {
        let ab = take_all(&mut a);
        b.handle_input(T0, &ab);
        let ba = take_all(&mut b);
        a.handle_input(T0, &ba);
        transcript.extend(ab);
        transcript.extend(ba);
    }
    assert!(a.is_established() && b.is_established());
    assert!(matches!(
        a.poll_event(),
        Some(ChannelEvent::Established { .. })
    ));
    assert!(matches!(
        b.poll_event(),
        Some(ChannelEvent::Established { .. })
    ));
    (a, b, transcript)
}

/// Seals every message (taking the wire bytes whenever the send buffer fills), then FINISH if
/// asked; returns the wire bytes and, per frame, where it ends on the wire and how much
/// plaintext it carries.
fn seal_all(a: &mut Channel, messages: &[Vec<u8>], finish: bool) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut wire = Vec::new();
    for message in messages {
        let mut sent = 0;
        while sent < message.len() {
            match a.send(T0, &message[sent..]) {
                Ok(n) => sent += n,
                Err(ChannelApiError::SendBufferFull) => wire.extend(take_all(a)),
                Err(e) => panic!("send: {e:?}"),
            }
        }
    }
    if finish {
        a.finish(T0).unwrap();
    }
    wire.extend(take_all(a));
    // The frames, from their length fields.
    let mut frames = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        let len = usize::from(u16::from_be_bytes([wire[at], wire[at + 1]]));
        at += FRAME_HEADER_LEN + len;
        frames.push((at, len - TAG_LEN - KIND_LEN));
    }
    assert_eq!(at, wire.len());
    (wire, frames)
}

/// What a receiver reported: the plaintext, whether the peer finished, the failure if any.
fn outcome(b: &mut Channel, max_frame: usize) -> (Vec<u8>, bool, Option<ChannelFailure>) {
    let (mut data, mut finished, mut failed) = (Vec::new(), false, None);
    while let Some(event) = b.poll_event() {
        assert!(failed.is_none(), "{event:?} after Failed");
        match event {
            ChannelEvent::Data(d) => {
                assert!(!finished && !d.is_empty() && d.len() <= max_frame);
                data.extend(d);
            }
            ChannelEvent::PeerFinished => finished = true,
            ChannelEvent::Failed(f) => failed = Some(f),
            other => panic!("unexpected {other:?}"),
        }
    }
    (data, finished, failed)
}

fn max_frame() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(1usize),
        Just(16),
        Just(100),
        Just(1000),
        Just(16 * 1024)
    ]
}

fn messages(max_len: usize) -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..max_len), 1..5)
}

proptest! {
    // About 4 s in a debug build, the three together.
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Cut anywhere, in chunks of any size, a valid stream delivers exactly what was sent, then
    /// FINISH (if sent), and ends cleanly only after it.
    #[test]
    fn any_chunking_delivers_exactly_the_plaintext(
        max_frame in max_frame(),
        messages in messages(3000),
        finish in any::<bool>(),
        chunks in prop::collection::vec(1usize..400, 1..20),
    ) {
        let (mut a, mut b, _) = handshake(max_frame, ([1; 32], [2; 32]));
        let (wire, _) = seal_all(&mut a, &messages, finish);
        let mut rest = wire.as_slice();
        for size in chunks.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
            b.handle_input(T0, chunk);
            rest = tail;
        }
        b.handle_end_of_stream(T0);
        let (data, finished, failed) = outcome(&mut b, max_frame);
        prop_assert_eq!(data, messages.concat());
        prop_assert_eq!(finished, finish);
        // The end of the stream is clean only after the peer's FINISH.
        prop_assert_eq!(failed, (!finish).then_some(ChannelFailure::Truncated));
        prop_assert_eq!(b.stats().bytes_in, messages.concat().len() as u64);
    }

    /// One byte altered anywhere after the handshake (length field, ciphertext or tag, FINISH
    /// included): the receiver delivers exactly the frames wholly before it, then fails with a
    /// typed reason (`Truncated` when the altered length waits for bytes that never come).
    #[test]
    fn any_corrupted_byte_is_a_typed_failure_after_the_frames_before_it(
        max_frame in max_frame(),
        messages in messages(400),
        finish in any::<bool>(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        chunk in 1usize..2000,
    ) {
        let (mut a, mut b, _) = handshake(max_frame, ([3; 32], [4; 32]));
        let (mut wire, frames) = seal_all(&mut a, &messages, finish);
        prop_assume!(!wire.is_empty());
        let at = at.index(wire.len());
        wire[at] ^= flip;
        for piece in wire.chunks(chunk) {
            b.handle_input(T0, piece);
        }
        b.handle_end_of_stream(T0);
        let (data, finished, failed) = outcome(&mut b, max_frame);
        prop_assert!(
            matches!(
                failed,
                Some(ChannelFailure::Tampered | ChannelFailure::TooLarge { .. } | ChannelFailure::Truncated)
            ),
            "{:?}", failed
        );
        prop_assert!(!finished);
        let before: usize = frames.iter().take_while(|(end, _)| *end <= at).map(|(_, n)| n).sum();
        prop_assert_eq!(&data[..], &messages.concat()[..before]);
        prop_assert!(b.is_ended() && b.pending_transmit().is_empty());
    }

    /// The same seeds and inputs give the same bytes on the wire, both ways; another seed gives
    /// another handshake.
    #[test]
    fn the_same_seeds_give_the_same_wire_bytes(
        seeds in any::<([u8; 32], [u8; 32])>(),
        max_frame in max_frame(),
        there in messages(2000),
        back in messages(2000),
    ) {
        let run = |seeds: ([u8; 32], [u8; 32])| {
            let (mut a, mut b, mut wire) = handshake(max_frame, seeds);
            wire.extend(seal_all(&mut a, &there, true).0);
            wire.extend(seal_all(&mut b, &back, true).0);
            wire
        };
        let first = run(seeds);
        prop_assert_eq!(&first, &run(seeds));
        let mut other = seeds;
        other.0[0] ^= 1;
        prop_assert_ne!(&first, &run(other));
    }
}

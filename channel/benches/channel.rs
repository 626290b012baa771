//! The channel's cost: bulk throughput of an established channel in one direction (sealing at
//! the sender and opening at the receiver, both on this one core), beside the bare copy of the
//! same bytes through the same buffers without the channel; each half alone (`seal_only`,
//! `open_only`) beside its own bare counterpart; and the handshake, both sides together and each
//! side's own work alone.
//!
//! ```text
//! cargo bench -p p2pd-channel --bench channel
//! ```
//!
//! Throughput is divan's bytes/s of each 16 MiB function; the ratios to report are
//! `bulk_channel` / `bare_copy`, `seal_only` / `seal_bare` and `open_only` / `open_bare`.
// Bench code may unwrap and index, as tests do.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::hint::black_box;

use divan::counter::BytesCount;
use divan::Bencher;
use p2pd_channel::{
    Channel, ChannelConfig, ChannelEvent, ChannelKeys, Identity, Instant, Role, FRAME_HEADER_LEN,
    KIND_DATA, KIND_LEN, TAG_LEN,
};

const BULK: usize = 16 << 20;
/// The chunk an application hands over at a time (a socket read's worth).
const CHUNK: usize = 64 << 10;

fn main() {
    divan::main();
}

fn keys(byte: u8) -> ChannelKeys {
    ChannelKeys::new(
        &Identity::from_secret_bytes(&[byte; 32]).unwrap(),
        [byte; 32],
    )
    .unwrap()
}

fn new_pair() -> (Channel, Channel) {
    new_pair_with(&keys(1), &keys(2))
}

/// An initiator with `ka` (seed 3) expecting `kb`'s identity, and a responder with `kb` (seed 4):
/// the same keys give the same handshake messages, byte for byte.
fn new_pair_with(ka: &ChannelKeys, kb: &ChannelKeys) -> (Channel, Channel) {
    let expect = kb.identity().node_id();
    let config = ChannelConfig::default();
    let a = Channel::new(
        config,
        ka,
        Role::Initiator { expect },
        b"bench",
        [3; 32],
        Instant::ZERO,
    )
    .unwrap();
    let b = Channel::new(
        config,
        kb,
        Role::Responder { expect: None },
        b"bench",
        [4; 32],
        Instant::ZERO,
    )
    .unwrap();
    (a, b)
}

fn handshake(a: &mut Channel, b: &mut Channel) {
    for _ in 0..3 {
        let ab = a.pending_transmit().to_vec();
        a.consume_transmit(ab.len());
        b.handle_input(Instant::ZERO, &ab);
        let ba = b.pending_transmit().to_vec();
        b.consume_transmit(ba.len());
        a.handle_input(Instant::ZERO, &ba);
    }
    assert!(a.is_established() && b.is_established());
    while a.poll_event().is_some() {}
    while b.poll_event().is_some() {}
}

/// Moves `BULK` bytes from `a` to `b` through the channel; returns the bytes delivered.
fn through_channel(a: &mut Channel, b: &mut Channel, data: &[u8]) -> usize {
    let mut delivered = 0;
    for chunk in data.chunks(CHUNK) {
        let mut sent = 0;
        while sent < chunk.len() {
            sent += a.send(Instant::ZERO, &chunk[sent..]).unwrap();
            let wire = a.pending_transmit();
            b.handle_input(Instant::ZERO, wire);
            let len = wire.len();
            a.consume_transmit(len);
            while let Some(event) = b.poll_event() {
                if let ChannelEvent::Data(plain) = event {
                    delivered += black_box(plain).len();
                }
            }
        }
    }
    delivered
}

#[divan::bench(sample_count = 20)]
fn bulk_channel(bencher: Bencher) {
    let data = vec![0x5au8; BULK];
    let (mut a, mut b) = new_pair();
    handshake(&mut a, &mut b);
    bencher
        .counter(BytesCount::new(BULK))
        .bench_local(|| assert_eq!(through_channel(&mut a, &mut b, &data), BULK));
}

/// The same path without the channel: each chunk copied into a send buffer, then out of it into a
/// fresh buffer per frame-sized piece (what the receiver's events would carry).
#[divan::bench(sample_count = 20)]
fn bare_copy(bencher: Bencher) {
    let data = vec![0x5au8; BULK];
    let mut out: Vec<u8> = Vec::with_capacity(256 << 10);
    bencher.counter(BytesCount::new(BULK)).bench_local(|| {
        let mut delivered = 0;
        for chunk in data.chunks(CHUNK) {
            out.clear();
            out.extend_from_slice(chunk);
            for piece in out.chunks(ChannelConfig::default().max_frame) {
                delivered += black_box(piece.to_vec()).len();
            }
        }
        assert_eq!(delivered, BULK);
    });
}

/// A whole handshake, both sides (three messages, two proofs verified).
#[divan::bench(sample_count = 50)]
fn handshake_both_sides(bencher: Bencher) {
    let (ka, kb) = (keys(1), keys(2));
    let expect = kb.identity().node_id();
    bencher.bench_local(|| {
        let mut a = Channel::new(
            ChannelConfig::default(),
            &ka,
            Role::Initiator { expect },
            b"bench",
            [3; 32],
            Instant::ZERO,
        )
        .unwrap();
        let mut b = Channel::new(
            ChannelConfig::default(),
            &kb,
            Role::Responder { expect: None },
            b"bench",
            [4; 32],
            Instant::ZERO,
        )
        .unwrap();
        handshake(&mut a, &mut b);
    });
}

/// Building a node's keys (one signature), once per node.
#[divan::bench(sample_count = 50)]
fn channel_keys(bencher: Bencher) {
    let identity = Identity::from_secret_bytes(&[1; 32]).unwrap();
    bencher.bench_local(|| ChannelKeys::new(&identity, [5; 32]).unwrap());
}

/// The frame size of the default configuration.
fn max_frame() -> usize {
    ChannelConfig::default().max_frame
}

/// The sender alone: `BULK` bytes sealed (a `CHUNK` at a time, as an application hands them over)
/// and the wire bytes taken, as a runtime takes them for the socket.
#[divan::bench(sample_count = 20)]
fn seal_only(bencher: Bencher) {
    let data = vec![0x5au8; BULK];
    let (mut a, mut b) = new_pair();
    handshake(&mut a, &mut b);
    bencher.counter(BytesCount::new(BULK)).bench_local(|| {
        let mut wire = 0;
        for chunk in data.chunks(CHUNK) {
            let mut sent = 0;
            while sent < chunk.len() {
                sent += a.send(Instant::ZERO, &chunk[sent..]).unwrap();
                let len = black_box(a.pending_transmit()).len();
                a.consume_transmit(len);
                wire += len;
            }
        }
        assert!(wire > BULK);
    });
}

/// `seal_only`'s buffer moves without the cipher: each chunk framed into the send buffer (header,
/// kind byte, plaintext, room for the tag) in frame-sized pieces, then taken.
#[divan::bench(sample_count = 20)]
fn seal_bare(bencher: Bencher) {
    let data = vec![0x5au8; BULK];
    let mut out: Vec<u8> = Vec::with_capacity(ChannelConfig::default().send_buffer);
    bencher.counter(BytesCount::new(BULK)).bench_local(|| {
        let mut wire = 0;
        for chunk in data.chunks(CHUNK) {
            for piece in chunk.chunks(max_frame()) {
                let len = u16::try_from(KIND_LEN + piece.len() + TAG_LEN).unwrap();
                out.extend_from_slice(&len.to_be_bytes());
                out.push(KIND_DATA);
                out.extend_from_slice(piece);
                out.resize(out.len() + TAG_LEN, 0);
            }
            wire += black_box(&out[..]).len();
            out.clear();
        }
        assert!(wire > BULK);
    });
}

/// `BULK` bytes sealed by the channel of `new_pair`'s initiator: what a fresh pair's responder
/// opens (the same seeds, the same keys).
fn sealed_stream() -> Vec<u8> {
    let data = vec![0x5au8; BULK];
    let (mut a, mut b) = new_pair();
    handshake(&mut a, &mut b);
    let mut wire = Vec::with_capacity(BULK + BULK / 64);
    let mut sent = 0;
    while sent < data.len() {
        sent += a.send(Instant::ZERO, &data[sent..]).unwrap();
        let pending = a.pending_transmit();
        wire.extend_from_slice(pending);
        let len = pending.len();
        a.consume_transmit(len);
    }
    wire
}

/// The receiver alone: `BULK` bytes of wire (sealed once, outside the timing) read a `CHUNK` at
/// a time, as from a socket (frames straddle the reads), and every `Data` event taken. A fresh
/// established receiver per iteration, set up outside the timing.
#[divan::bench(sample_count = 20)]
fn open_only(bencher: Bencher) {
    let wire = sealed_stream();
    let (ka, kb) = (keys(1), keys(2));
    bencher
        .counter(BytesCount::new(BULK))
        .with_inputs(|| {
            let (mut a, mut b) = new_pair_with(&ka, &kb);
            handshake(&mut a, &mut b);
            b
        })
        .bench_local_values(|mut b| {
            let mut delivered = 0;
            for chunk in wire.chunks(CHUNK) {
                b.handle_input(Instant::ZERO, chunk);
                while let Some(event) = b.poll_event() {
                    if let ChannelEvent::Data(plain) = event {
                        delivered += black_box(plain).len();
                    }
                }
            }
            assert_eq!(delivered, BULK);
            // Dropped outside the timing.
            b
        });
}

/// `open_only`'s buffer moves without the cipher: the same wire, read a `CHUNK` at a time; a
/// frame inside one read is taken where it lies, a frame that straddles two is assembled in a
/// carried buffer; each frame's plaintext copied into a fresh buffer (what `Data` carries).
#[divan::bench(sample_count = 20)]
fn open_bare(bencher: Bencher) {
    let wire = sealed_stream();
    let mut partial: Vec<u8> =
        Vec::with_capacity(max_frame() + KIND_LEN + TAG_LEN + FRAME_HEADER_LEN);
    let announced = |b: &[u8]| usize::from(u16::from_be_bytes([b[0], b[1]]));
    bencher.counter(BytesCount::new(BULK)).bench_local(|| {
        let mut delivered = 0;
        for chunk in wire.chunks(CHUNK) {
            let mut input = chunk;
            while !input.is_empty() {
                if partial.is_empty() && input.len() >= FRAME_HEADER_LEN {
                    let end = FRAME_HEADER_LEN + announced(input);
                    if input.len() >= end {
                        let plain = &input[FRAME_HEADER_LEN + KIND_LEN..end - TAG_LEN];
                        delivered += black_box(plain.to_vec()).len();
                        input = &input[end..];
                        continue;
                    }
                }
                let need = if partial.len() < FRAME_HEADER_LEN {
                    FRAME_HEADER_LEN - partial.len()
                } else {
                    FRAME_HEADER_LEN + announced(&partial) - partial.len()
                };
                let take = need.min(input.len());
                partial.extend_from_slice(&input[..take]);
                input = &input[take..];
                if partial.len() >= FRAME_HEADER_LEN
                    && partial.len() == FRAME_HEADER_LEN + announced(&partial)
                {
                    let plain = &partial[FRAME_HEADER_LEN + KIND_LEN..partial.len() - TAG_LEN];
                    delivered += black_box(plain.to_vec()).len();
                    partial.clear();
                }
            }
        }
        assert_eq!(delivered, BULK);
    });
}

/// The three handshake messages of `new_pair_with(ka, kb)` (the same every time: the seeds and
/// keys are fixed).
fn transcript(ka: &ChannelKeys, kb: &ChannelKeys) -> [Vec<u8>; 3] {
    let (mut a, mut b) = new_pair_with(ka, kb);
    let take = |c: &mut Channel| {
        let bytes = c.pending_transmit().to_vec();
        c.consume_transmit(bytes.len());
        bytes
    };
    let m1 = take(&mut a);
    b.handle_input(Instant::ZERO, &m1);
    let m2 = take(&mut b);
    a.handle_input(Instant::ZERO, &m2);
    let m3 = take(&mut a);
    b.handle_input(Instant::ZERO, &m3);
    assert!(a.is_established() && b.is_established());
    [m1, m2, m3]
}

/// The initiator's own work: build the channel (message 1), read the responder's recorded
/// message 2 (DH, the proof verified) and write message 3 (DH, its proof).
#[divan::bench(sample_count = 50)]
fn handshake_initiator(bencher: Bencher) {
    let (ka, kb) = (keys(1), keys(2));
    let [m1, m2, _] = transcript(&ka, &kb);
    bencher.bench_local(|| {
        let mut a = Channel::new(
            ChannelConfig::default(),
            &ka,
            Role::Initiator {
                expect: kb.identity().node_id(),
            },
            b"bench",
            [3; 32],
            Instant::ZERO,
        )
        .unwrap();
        assert_eq!(a.pending_transmit(), m1);
        a.consume_transmit(m1.len());
        a.handle_input(Instant::ZERO, &m2);
        assert!(a.is_established());
        a
    });
}

/// The responder's own work: build the channel, read the initiator's recorded message 1 and
/// write message 2 (DH, its proof), read message 3 (DH, the proof verified).
#[divan::bench(sample_count = 50)]
fn handshake_responder(bencher: Bencher) {
    let (ka, kb) = (keys(1), keys(2));
    let [m1, m2, m3] = transcript(&ka, &kb);
    bencher.bench_local(|| {
        let mut b = Channel::new(
            ChannelConfig::default(),
            &kb,
            Role::Responder { expect: None },
            b"bench",
            [4; 32],
            Instant::ZERO,
        )
        .unwrap();
        b.handle_input(Instant::ZERO, &m1);
        assert_eq!(b.pending_transmit(), m2);
        b.consume_transmit(m2.len());
        b.handle_input(Instant::ZERO, &m3);
        assert!(b.is_established());
        b
    });
}

//! The channel's cost: bulk throughput of an established channel in one direction (sealing at
//! the sender and opening at the receiver, both on this one core), beside the bare copy of the
//! same bytes through the same buffers without the channel; and the handshake, both sides.
//!
//! ```text
//! cargo bench -p p2pd-channel --bench channel
//! ```
//!
//! Throughput is divan's bytes/s of each `bulk_*` function (16 MiB per iteration); the ratio
//! to report is `bulk_channel` over `bare_copy`.
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
use p2pd_channel::{Channel, ChannelConfig, ChannelEvent, ChannelKeys, Identity, Instant, Role};

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
    let (ka, kb) = (keys(1), keys(2));
    let expect = kb.identity().node_id();
    let config = ChannelConfig::default();
    let a = Channel::new(
        config,
        &ka,
        Role::Initiator { expect },
        b"bench",
        [3; 32],
        Instant::ZERO,
    )
    .unwrap();
    let b = Channel::new(
        config,
        &kb,
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

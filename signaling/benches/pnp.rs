//! PNP server throughput, in-process: one request through `PnpServer::handle_datagram` and its
//! reply out of `poll_transmit`, with the in-memory store and all envelope crypto.
//!
//! - `register`: open (ECDH + ECDSA verify + AES-GCM), record signature check, store write, seal
//!   the reply (ECDH + ECDSA sign + AES-GCM).
//! - `lookup`: open + store read + seal a `Found` reply carrying a 200-byte record.
//! - `retransmission`: the same request bytes again, answered from the reply cache (no crypto);
//!   every iteration must get a reply and count as a cache hit (`duplicates`), none as a request.
//! - `stale_drop`: a request outside the clock window, dropped before any public-key operation;
//!   every iteration must get no reply and count as `stale`.
//!
//! Requests are sealed by the client outside the timed section. Requests per second = 1 / time.
//!
//! ```text
//! cargo bench -p p2pd-signaling --bench pnp
//! ```
// Benchmark code: the package's strict lints (Cargo.toml `[lints]`) guard its library code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use p2pd_proto::Machine;
use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Duration;

use divan::{black_box, Bencher};
use p2pd_proto::{Instant, SocketOp, SocketOutcome, TRANSMIT_BUFFER_LEN};
use p2pd_signaling::pnp::{
    MemoryStore, Name, PnpServer, PnpServerConfig, Record, Request, UDP_LOOKUP_PAYLOAD_LEN,
    UDP_SOCKET,
};
use p2pd_signaling::{seal, Identity, PublicKey};

const EPOCH: u64 = 1_700_000_000_000;

fn main() {
    divan::main();
}

fn client() -> Identity {
    Identity::from_secret_bytes(&[1; 32]).unwrap()
}

fn from() -> SocketAddr {
    "198.51.100.1:4000".parse().unwrap()
}

fn server() -> PnpServer<MemoryStore> {
    let addr = "192.0.2.1:5300".parse().unwrap();
    let mut config = PnpServerConfig::new(addr, addr, EPOCH);
    config.tcp = None;
    config.requests_per_window = u32::MAX;
    config.max_names_per_source = u64::MAX;
    let identity = Identity::from_secret_bytes(&[9; 32]).unwrap();
    let mut server = PnpServer::new(config, identity, MemoryStore::new(1 << 20), 1).unwrap();
    while let Some(op) = server.poll_socket_op() {
        if let SocketOp::Bind { socket, local, .. } = op {
            server.handle_socket_result(Instant::ZERO, socket, SocketOutcome::Bound { local });
        }
    }
    server
}

/// A request sealed at step `i` (1 ms per step, so the replay cache's floor never bites).
fn sealed(
    id: &Identity,
    key: &PublicKey,
    i: u64,
    request: &Request,
    pad_to: usize,
) -> (Instant, Vec<u8>) {
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&i.to_be_bytes());
    let bytes = seal(id, key, EPOCH + i, nonce, &request.encode(pad_to)).unwrap();
    (Instant::from_millis(i), bytes)
}

fn answer(
    server: &mut PnpServer<MemoryStore>,
    now: Instant,
    bytes: &[u8],
    buf: &mut [u8],
) -> usize {
    let _ = server.handle_datagram(now, UDP_SOCKET, from(), bytes);
    server.poll_transmit(buf).map_or(0, |t| t.len)
}

#[divan::bench(sample_count = 50, sample_size = 20)]
fn register(bencher: Bencher) {
    let (id, mut server) = (client(), server());
    let key = server.public_key();
    let step = Cell::new(0u64);
    let mut buf = vec![0u8; TRANSMIT_BUFFER_LEN];
    bencher
        .with_inputs(|| {
            let i = step.get() + 1;
            step.set(i);
            let name = Name::new(&format!("name-{}", i % 1000)).unwrap();
            let record = Record::sign(&id, name, vec![0x61; 200], i, EPOCH + i + 600_000).unwrap();
            sealed(&id, &key, i, &Request::Register(Box::new(record)), 0)
        })
        .bench_local_values(|(now, bytes)| {
            let len = answer(&mut server, now, &bytes, &mut buf);
            assert!(len > 0);
            black_box(len)
        });
}

#[divan::bench(sample_count = 50, sample_size = 20)]
fn lookup(bencher: Bencher) {
    let (id, mut server) = (client(), server());
    let key = server.public_key();
    let mut buf = vec![0u8; TRANSMIT_BUFFER_LEN];
    let name = Name::new("alice").unwrap();
    let record = Record::sign(&id, name.clone(), vec![0x61; 200], 1, EPOCH + 3_600_000).unwrap();
    let (now, bytes) = sealed(&id, &key, 1, &Request::Register(Box::new(record)), 0);
    assert!(answer(&mut server, now, &bytes, &mut buf) > 0);
    let step = Cell::new(1u64);
    let request = Request::Lookup(name);
    bencher
        .with_inputs(|| {
            let i = step.get() + 1;
            step.set(i);
            sealed(&id, &key, i, &request, UDP_LOOKUP_PAYLOAD_LEN)
        })
        .bench_local_values(|(now, bytes)| {
            let len = answer(&mut server, now, &bytes, &mut buf);
            assert!(len > 400);
            black_box(len)
        });
}

#[divan::bench]
fn retransmission(bencher: Bencher) {
    let (id, mut server) = (client(), server());
    let key = server.public_key();
    let mut buf = vec![0u8; TRANSMIT_BUFFER_LEN];
    let request = Request::Lookup(Name::new("alice").unwrap());
    let (now, bytes) = sealed(&id, &key, 1, &request, UDP_LOOKUP_PAYLOAD_LEN);
    assert!(answer(&mut server, now, &bytes, &mut buf) > 0);
    let before = server.stats();
    let iterations = Cell::new(0u64);
    bencher.bench_local(|| {
        iterations.set(iterations.get() + 1);
        let len = answer(&mut server, now, black_box(&bytes), &mut buf);
        assert!(
            len > 0,
            "a retransmission is answered (from the reply cache)"
        );
        black_box(len)
    });
    // Every iteration was a reply-cache hit; nothing was opened again.
    let after = server.stats();
    assert_eq!(
        after.duplicates - before.duplicates,
        iterations.get(),
        "{after:?}"
    );
    assert_eq!(after.requests, before.requests, "{after:?}");
}

#[divan::bench]
fn stale_drop(bencher: Bencher) {
    let (id, mut server) = (client(), server());
    let key = server.public_key();
    let mut buf = vec![0u8; TRANSMIT_BUFFER_LEN];
    let request = Request::Lookup(Name::new("alice").unwrap());
    let (_, bytes) = sealed(&id, &key, 1, &request, UDP_LOOKUP_PAYLOAD_LEN);
    let late = Instant::from_millis(1) + Duration::from_secs(3600);
    let iterations = Cell::new(0u64);
    bencher.bench_local(|| {
        iterations.set(iterations.get() + 1);
        let len = answer(&mut server, late, black_box(&bytes), &mut buf);
        assert_eq!(len, 0, "a stale request is dropped, not answered");
        black_box(len)
    });
    // Every iteration was refused as stale, and nothing got further.
    let stats = server.stats();
    assert_eq!(stats.stale, iterations.get(), "{stats:?}");
    assert_eq!(
        (stats.requests, stats.duplicates, stats.bad_envelopes),
        (0, 0, 0),
        "{stats:?}"
    );
}

//! Sealed-envelope benchmarks: seal and open per message, against the `ecies` crate's bare
//! encrypt / decrypt (no signature, no replay check) as a reference point, in one run.
//!
//! Seal = ECIES (ephemeral key, ECDH, HKDF-SHA256, AES-256-GCM) + ECDSA-SHA256 signature.
//! Open = framing + freshness + replay-cache check + signature verification + ECIES decryption.
//!
//! ```text
//! cargo bench -p p2pd-signaling --bench envelope
//! ```
// Benchmark code: the package's strict lints (Cargo.toml `[lints]`) guard its library code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use divan::{black_box, AllocProfiler, Bencher};
use p2pd_signaling::{seal, Identity, Opener};

#[global_allocator]
static ALLOC: AllocProfiler = AllocProfiler::system();

const NOW: u64 = 1_700_000_000_000;
const SIZES: [usize; 2] = [64, 1024];

fn alice() -> Identity {
    Identity::from_secret_bytes(&[1; 32]).unwrap()
}

fn bob() -> Identity {
    Identity::from_secret_bytes(&[2; 32]).unwrap()
}

fn main() {
    divan::main();
}

#[divan::bench(args = SIZES)]
fn seal_ours(bencher: Bencher, size: usize) {
    let (a, b) = (alice(), bob());
    let payload = vec![0x5a; size];
    let bob_key = b.public_key();
    let mut nonce = 0u128;
    bencher.bench_local(|| {
        nonce += 1;
        black_box(seal(&a, &bob_key, NOW, nonce.to_le_bytes(), black_box(&payload)).unwrap())
    });
}

#[divan::bench(args = SIZES)]
fn open_ours(bencher: Bencher, size: usize) {
    let (a, b) = (alice(), bob());
    let payload = vec![0x5a; size];
    // Distinct messages, so the replay cache accepts each; the cache is as big as the batch.
    let messages: Vec<Vec<u8>> = (0..4096u128)
        .map(|n| seal(&a, &b.public_key(), NOW, n.to_le_bytes(), &payload).unwrap())
        .collect();
    let mut opener = Opener::new(messages.len());
    let mut i = 0usize;
    bencher.bench_local(|| {
        if i == messages.len() {
            opener = Opener::new(messages.len());
            i = 0;
        }
        let m = &messages[i];
        i += 1;
        black_box(opener.open(&b, NOW + 10, black_box(m)).unwrap())
    });
}

#[divan::bench(args = SIZES)]
fn encrypt_ecies_crate(bencher: Bencher, size: usize) {
    let b = bob();
    let payload = vec![0x5a; size];
    let pk = b.public_key().to_bytes();
    bencher.bench_local(|| black_box(ecies::encrypt(&pk, black_box(&payload)).unwrap()));
}

#[divan::bench(args = SIZES)]
fn decrypt_ecies_crate(bencher: Bencher, size: usize) {
    let b = bob();
    let payload = vec![0x5a; size];
    let ct = ecies::encrypt(&b.public_key().to_bytes(), &payload).unwrap();
    let sk = b.secret_bytes();
    bencher.bench_local(|| black_box(ecies::decrypt(&sk, black_box(&ct)).unwrap()));
}

//! STUN codec benchmarks, ours against `stun-types`, in one run.
//!
//! The message is a 56-byte Binding success response: XOR-MAPPED-ADDRESS, SOFTWARE "p2p-rs test"
//! and FINGERPRINT. "decode" is parse + FINGERPRINT check + extracting XOR-MAPPED-ADDRESS; "encode"
//! writes the whole response into a caller-owned buffer. The SOFTWARE attribute is built once,
//! outside the timed loop, on both sides (a server would too): ours borrows a `&'static str`,
//! stun-types' `Software` (which owns a `String`) is passed by reference, so neither side
//! allocates per encode. Divan's `AllocProfiler` counts heap allocations per iteration.
//!
//! ```text
//! cargo bench -p p2pd-proto --bench codec
//! ```
// Benchmark code: the package's strict lints (Cargo.toml `[lints]`) guard its library code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use core::net::SocketAddr;

use divan::{black_box, AllocProfiler, Bencher};
use p2pd_proto::stun::{Attribute, Class, Header, Message, MessageWriter, Method, TransactionId};
use stun_types::attribute::{AttributeStaticType, Software, XorMappedAddress};
use stun_types::message::{
    Message as TheirMessage, MessageClass, MessageType, MessageWrite, MessageWriteExt,
    MessageWriteMutSlice, TransactionId as TheirTransactionId, BINDING,
};

#[global_allocator]
static ALLOC: AllocProfiler = AllocProfiler::system();

const ID: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];
const SOFTWARE: &str = "p2p-rs test";

fn mapped() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], 32853))
}

fn their_id() -> TheirTransactionId {
    let mut b = [0u8; 16];
    b[4..].copy_from_slice(&ID);
    u128::from_be_bytes(b).into()
}

fn encode_ours(buf: &mut [u8], mapped: SocketAddr) -> usize {
    let header = Header::new(Class::Success, Method::BINDING, TransactionId::new(ID));
    let Ok(mut w) = MessageWriter::new(buf, header) else {
        return 0;
    };
    let ok = w.add(&Attribute::XorMappedAddress(mapped)).is_ok()
        && w.add(&Attribute::Software(SOFTWARE)).is_ok()
        && w.add_fingerprint().is_ok();
    if ok {
        w.finish()
    } else {
        0
    }
}

/// stun-types' SOFTWARE attribute, built once (it owns a `String`).
fn their_software() -> Software {
    Software::new(SOFTWARE).expect("a valid SOFTWARE value")
}

fn encode_theirs(buf: &mut [u8], mapped: SocketAddr, software: &Software) -> usize {
    let tid = their_id();
    let mtype = MessageType::from_class_method(MessageClass::Success, BINDING);
    let mut b = TheirMessage::builder(mtype, tid, MessageWriteMutSlice::new(buf));
    let ok = b.add_attribute(&XorMappedAddress::new(mapped, tid)).is_ok()
        && b.add_attribute(software).is_ok()
        && b.add_fingerprint().is_ok();
    if ok {
        b.finish()
    } else {
        0
    }
}

fn response() -> Vec<u8> {
    let mut buf = [0u8; 64];
    let len = encode_ours(&mut buf, mapped());
    assert_eq!(len, 56);
    let mut theirs = [0u8; 64];
    assert_eq!(encode_theirs(&mut theirs, mapped(), &their_software()), 56);
    assert_eq!(buf[..56], theirs[..56], "both encoders agree byte for byte");
    buf[..len].to_vec()
}

fn main() {
    divan::main();
}

mod decode {
    use super::*;

    #[divan::bench(sample_count = 1000, sample_size = 200)]
    fn ours(bencher: Bencher) {
        let bytes = response();
        bencher.bench_local(|| {
            Message::decode(black_box(&bytes))
                .ok()
                .and_then(|m| m.xor_mapped_address())
        });
    }

    #[divan::bench(sample_count = 1000, sample_size = 200)]
    fn stun_types(bencher: Bencher) {
        let bytes = response();
        bencher.bench_local(|| {
            let m = TheirMessage::from_bytes(black_box(&bytes)).ok()?;
            let raw = m.raw_attribute(XorMappedAddress::TYPE)?;
            let xma = XorMappedAddress::try_from(&raw).ok()?;
            Some(xma.addr(m.transaction_id()))
        });
    }
}

mod encode {
    use super::*;

    #[divan::bench(sample_count = 1000, sample_size = 200)]
    fn ours(bencher: Bencher) {
        let mut buf = [0u8; 64];
        bencher.bench_local(|| encode_ours(black_box(&mut buf), black_box(mapped())));
    }

    #[divan::bench(sample_count = 1000, sample_size = 200)]
    fn stun_types(bencher: Bencher) {
        let mut buf = [0u8; 64];
        let software = their_software();
        bencher.bench_local(|| {
            encode_theirs(
                black_box(&mut buf),
                black_box(mapped()),
                black_box(&software),
            )
        });
    }
}

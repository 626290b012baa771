//! What an on-path observer learns of a punched stream (issue 11, item 2): `p2pd punch` through
//! two real Linux NATs (the lab of `punch_lab`: masq/masq routers with `inputdrop`, coturn's STUN
//! over TCP, two mosquitto brokers), with tcpdump on router A's WAN interface (`ra`/`wan0`,
//! every packet whole) from before the punch to after both sides have exited.
//!
//! Each side pipes a distinctive payload through `p2pd punch`: 64 KiB of a seeded pseudo-random
//! pattern, a marker `p2pd-lab-secret-<random hex>` before every 4 KiB of it. Both sides must
//! exit 0 and print exactly the other side's payload. Then the capture (read by our own classic
//! pcap reader) must
//! - (a) hold the punched connection (the 4-tuple both sides' `connected` lines name, as seen on
//!   A's WAN) carrying, per direction and without a hole in its sequence, at least as many
//!   payload bytes as were piped that way: the capture really saw the stream;
//! - (b) hold none of it in the clear: neither the marker nor any 32-byte window of either
//!   payload in any captured frame, nor in either direction of the punched connection put back
//!   in sequence order.
//!
//! Without root, the lab's tools, mosquitto or tcpdump the test prints `SKIP: ...` and passes
//! (under `CI=true` it fails instead: `.ci/run` installs all of them).

mod common;
#[path = "common/lab_punch.rs"]
mod lab_punch;

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use common::lab::Lab;
use common::pcap::{contains, tcp_stream, Pcap, Windows};
use common::{on_path, p2pd_bin};
use lab_punch::{common_args, identity, skip_reason, start_brokers, Punch, Side};

/// Bytes of pseudo-random pattern per side.
const PATTERN: usize = 64 * 1024;
/// The pattern comes in blocks of this size, each after a copy of the marker.
const BLOCK: usize = 4096;

/// splitmix64: a seeded stream that looks random and can be told apart from anything else.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One side's payload: the marker and a newline before every block of the pattern.
fn payload(seed: u64, marker: &str) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::new();
    for _ in 0..PATTERN / BLOCK {
        out.extend_from_slice(marker.as_bytes());
        out.push(b'\n');
        for _ in 0..BLOCK / 8 {
            out.extend_from_slice(&splitmix(&mut state).to_le_bytes());
        }
    }
    out
}

/// The `remote` address of a side's `connected` line.
fn remote(side: &Side) -> Option<SocketAddrV4> {
    side.event("connected")?["remote"].as_str()?.parse().ok()
}

#[test]
fn wan_capture_holds_none_of_the_punched_bytes() {
    if let Some(reason) = skip_reason() {
        common::skip_or_fail(&reason);
        return;
    }
    if !on_path("tcpdump") {
        common::skip_or_fail("tcpdump not installed");
        return;
    }
    let started = Instant::now();
    assert!(p2pd_bin().is_file()); // built before the lab exists
    let lab = Lab::start("pc");
    let _brokers = start_brokers(&lab);
    let ids = [identity(&lab, "a"), identity(&lab, "b")];
    lab.script("nat.sh", &["A", "masq", "inputdrop"]).unwrap();
    lab.script("nat.sh", &["B", "masq", "inputdrop"]).unwrap();

    let mut random = [0u8; 24];
    getrandom::fill(&mut random).expect("OS randomness");
    let word = |i: usize| u64::from_le_bytes(random[i * 8..i * 8 + 8].try_into().unwrap());
    let marker = format!("p2pd-lab-secret-{:016x}", word(0));
    let (seed_a, seed_b) = (word(1), word(2));
    let (data_a, data_b) = (payload(seed_a, &marker), payload(seed_b, &marker));
    eprintln!("marker {marker}, seeds A {seed_a:#x} B {seed_b:#x}");

    let pcap_file = lab.state.join("ra-wan0.pcap");
    let tcpdump = lab.tcpdump("ra", "wan0", &pcap_file);

    let mut args_b = vec!["--wait".to_string()];
    args_b.extend(common_args(&ids[1].0, "20"));
    let b = Punch::spawn(&lab, "hb", &args_b, &data_b, &data_a);
    // B subscribes to both brokers first (A's offer would be re-sent anyway, once a second).
    std::thread::sleep(Duration::from_millis(500));
    let mut args_a = vec![ids[1].1.clone()];
    args_a.extend(common_args(&ids[0].0, "20"));
    let a = Punch::spawn(&lab, "ha", &args_a, &data_a, &data_b);
    let a = a.finish(Duration::from_secs(40));
    let b = b.finish(Duration::from_secs(10));
    let counts = tcpdump.stop().expect("tcpdump stops cleanly");

    let sides = || format!("{}\n{}", a.describe("A"), b.describe("B"));
    assert!(
        a.code == Some(0) && b.code == Some(0),
        "both sides must exit 0\n{}",
        sides()
    );
    assert!(
        a.stdout == data_b && b.stdout == data_a,
        "each side must print exactly the other's {} bytes (A printed {}, B printed {})\n{}",
        data_a.len(),
        a.stdout.len(),
        b.stdout.len(),
        sides()
    );
    // On A's WAN the punched connection runs between A's public endpoint (B's remote) and B's
    // public endpoint (A's remote).
    let (Some(a_public), Some(b_public)) = (remote(&b), remote(&a)) else {
        panic!("no connected line with a remote address\n{}", sides());
    };

    let pcap = Pcap::parse(&std::fs::read(&pcap_file).expect("read the capture")).unwrap();
    let segments = pcap.tcp_segments();
    let punched: Vec<_> = segments
        .iter()
        .filter(|s| {
            (s.src, s.dst) == (a_public, b_public) || (s.src, s.dst) == (b_public, a_public)
        })
        .collect();
    let raw_payload: usize = punched.iter().map(|s| s.payload.len()).sum();
    let (a_to_b, holes_ab) = tcp_stream(&segments, a_public, b_public);
    let (b_to_a, holes_ba) = tcp_stream(&segments, b_public, a_public);

    let windows = Windows::of(&[&data_a, &data_b]);
    let frames_with_marker = pcap
        .frames
        .iter()
        .filter(|f| contains(f, marker.as_bytes()))
        .count();
    let frame_hits: Vec<usize> = pcap.frames.iter().map(|f| windows.hits(f)).collect();
    let frames_with_windows = frame_hits.iter().filter(|h| **h > 0).count();
    let window_hits: usize = frame_hits.iter().sum();
    let (stream_hits_ab, stream_hits_ba) = (windows.hits(&a_to_b), windows.hits(&b_to_a));
    let (marker_ab, marker_ba) = (
        contains(&a_to_b, marker.as_bytes()),
        contains(&b_to_a, marker.as_bytes()),
    );

    eprintln!(
        "figures: {} packets captured on ra/wan0 ({} dropped, {} truncated); punched \
         {a_public} <-> {b_public}: {} packets, {raw_payload} payload bytes (in order: A->B {}, \
         B->A {}, {} holes; {} piped each way); {} windows checked; {:.1} s",
        pcap.frames.len(),
        counts.dropped,
        pcap.truncated,
        punched.len(),
        a_to_b.len(),
        b_to_a.len(),
        holes_ab + holes_ba,
        data_a.len(),
        windows.len(),
        started.elapsed().as_secs_f64()
    );

    // (a) the capture saw the stream, all of it (a hole would be bytes nobody looked at).
    assert!(
        a_to_b.len() >= data_a.len() && b_to_a.len() >= data_b.len() && holes_ab + holes_ba == 0,
        "the capture missed the punched stream: A->B {} of {} bytes ({holes_ab} holes), B->A {} \
         of {} bytes ({holes_ba} holes); {} packets of {a_public} <-> {b_public} among {} frames, \
         tcpdump dropped {}",
        a_to_b.len(),
        data_a.len(),
        b_to_a.len(),
        data_b.len(),
        punched.len(),
        pcap.frames.len(),
        counts.dropped
    );
    // (b) ... and learned nothing of it.
    assert!(
        frames_with_marker == 0
            && window_hits == 0
            && stream_hits_ab == 0
            && stream_hits_ba == 0
            && !marker_ab
            && !marker_ba,
        "plaintext on the WAN: the marker {marker:?} is in {frames_with_marker} of {} frames \
         (A->B stream: {marker_ab}, B->A stream: {marker_ba}); piped 32-byte windows start at \
         {window_hits} positions in {frames_with_windows} frames, {stream_hits_ab} in the A->B \
         stream, {stream_hits_ba} in the B->A stream",
        pcap.frames.len()
    );
}

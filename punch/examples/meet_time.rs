//! Two peers agree on when to punch, though their clocks differ: Bob's runs 1.234 s ahead of
//! Alice's, and the signaling path between them is slow and asymmetric (40 ms one way, 90 ms the
//! other, through brokers). Pure functions of `p2pd_punch::clock`, simulated in real time (ns):
//!
//! 1. Alice sends a `ClockProbe` (t1); Bob answers with a `ClockEcho` (t2, t3); Alice reads t4.
//!    The offset is ((t2 − t1) + (t3 − t4)) / 2, off by half the path asymmetry at most, so its
//!    uncertainty is ⌈δ/2⌉ plus an allowance.
//! 2. Alice proposes a meet time 2 s ahead in her clock; Bob converts it into his clock with
//!    `agree`. Both then act within the agreed uncertainty of each other, in real time.
//! 3. Over a path too slow for the policy, `propose` refuses with `TooUncertain`.
//!
//! ```text
//! cargo run -p p2pd-punch --example meet_time
//! ```
// Example code: the package's strict lints (Cargo.toml `[lints]`) guard its library code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use p2pd_punch::clock::{ClockEcho, ClockProbe};
use p2pd_punch::{agree, propose, ClockError, MeetPolicy, PeerClock, Proposer, WallTime};

/// Real time at the start of the exchange (Unix ns), and each clock's error.
const REAL_START: u64 = 1_700_000_000_000_000_000;
const ALICE_OFF: i64 = -30_000_000; // Alice's clock is 30 ms behind real time
const BOB_OFF: i64 = 1_204_000_000; // Bob's is 1.204 s ahead: Bob − Alice = 1.234 s
const MS: u64 = 1_000_000;

fn alice_clock(real: u64) -> WallTime {
    WallTime(real.checked_add_signed(ALICE_OFF).unwrap())
}

fn bob_clock(real: u64) -> WallTime {
    WallTime(real.checked_add_signed(BOB_OFF).unwrap())
}

/// The four-timestamp exchange with the given one-way delays; Alice's view of Bob's clock.
fn measure(to_bob_ms: u64, to_alice_ms: u64) -> (PeerClock, u64) {
    let sent = REAL_START;
    let probe = ClockProbe {
        t1: alice_clock(sent),
    };
    let at_bob = sent + to_bob_ms * MS;
    let bob_replies = at_bob + 3 * MS; // Bob holds it 3 ms
    let echo = ClockEcho::answer(probe, bob_clock(at_bob), bob_clock(bob_replies));
    let at_alice = bob_replies + to_alice_ms * MS;
    // 1 ms allowance for reading the clocks and drift during the exchange.
    let clock = PeerClock::from_round_trip(probe, echo, alice_clock(at_alice), MS).unwrap();
    (clock, at_alice)
}

fn main() {
    let policy = MeetPolicy::default();
    let true_offset = BOB_OFF - ALICE_OFF;

    // 1. Measure.
    let (clock, now_real) = measure(40, 90);
    println!(
        "alice: bob's clock − mine = {:+.3} ms ± {:.3} ms (true {:+.3} ms)",
        clock.offset_ns as f64 / 1e6,
        clock.uncertainty_ns as f64 / 1e6,
        true_offset as f64 / 1e6
    );
    assert!((clock.offset_ns - true_offset).unsigned_abs() <= clock.uncertainty_ns);
    assert_eq!(
        clock.offset_ns - true_offset,
        -25_000_000,
        "half of 40 − 90 ms"
    );

    // 2. Alice proposes a meet 2 s from now in her clock and sends it (and her clock) to Bob.
    let meet = propose(alice_clock(now_real), 2_000 * MS, clock, &policy).unwrap();
    println!(
        "alice: meet at {} (mine) = {} (bob's), uncertainty {:.3} ms",
        meet.local.0,
        meet.peer.0,
        meet.uncertainty_ns as f64 / 1e6
    );
    // Bob receives the proposal 40 ms later and converts it with the clock seen from his side.
    let bob_now = bob_clock(now_real + 40 * MS);
    let bob_meet = agree(
        meet.local,
        Proposer::Peer,
        clock.reversed().unwrap(),
        bob_now,
        &policy,
    )
    .unwrap();
    assert_eq!(
        bob_meet.local, meet.peer,
        "the same instant, in Bob's clock"
    );

    // When does each really act? When their own clock reads their meet time.
    let alice_real = meet.local.0.checked_add_signed(-ALICE_OFF).unwrap();
    let bob_real = bob_meet.local.0.checked_add_signed(-BOB_OFF).unwrap();
    let apart = alice_real.abs_diff(bob_real);
    println!(
        "real time between their connects: {:.3} ms (bound {:.3} ms)",
        apart as f64 / 1e6,
        bob_meet.uncertainty_ns as f64 / 1e6
    );
    assert!(apart <= meet.uncertainty_ns && apart <= bob_meet.uncertainty_ns);

    // 3. A signaling path with a 1.2 s round trip: ±600 ms is more than the 500 ms the policy
    //    allows, so Alice does not propose at all (and says why).
    let (slow, now_real) = measure(200, 1_000);
    let refused = propose(alice_clock(now_real), 2_000 * MS, slow, &policy).unwrap_err();
    println!("over a 1.2 s path: {refused}");
    assert!(matches!(refused, ClockError::TooUncertain { .. }));
    println!("ok");
}

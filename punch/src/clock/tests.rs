//! Tests of the offset math and meet-time agreement, with hand-computed examples and properties.

use p2pd_proto::Instant;
use proptest::prelude::*;

use super::*;

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
const T0: u64 = 1_700_000_000 * S;

/// One exchange with real one-way delays: B's clock = A's + `offset`; the probe takes `up`, B
/// holds it `hold`, the echo takes `down` (all ns). Returns the probe, echo and t4.
fn exchange(
    start: u64,
    offset: i64,
    up: u64,
    hold: u64,
    down: u64,
) -> (ClockProbe, ClockEcho, WallTime) {
    let t1 = WallTime(start);
    let t2 = WallTime(start + up).shifted(offset).unwrap();
    let t3 = WallTime(t2.0 + hold);
    let t4 = WallTime(start + up + hold + down);
    let probe = ClockProbe { t1 };
    (probe, ClockEcho::answer(probe, t2, t3), t4)
}

#[test]
fn offset_and_delay_hand_computed() {
    // RFC 4330 style example: t1=100, t2=160, t3=170, t4=130 (units: ns).
    // θ = ((160−100) + (170−130))/2 = (60 + 40)/2 = 50; δ = (130−100) − (170−160) = 20.
    assert_eq!(offset_and_delay(100, 160, 170, 130), Ok((50, 20)));
    // The answerer is behind: t2 = 40, t3 = 45, t4 = 120 → θ = ((40−100)+(45−120))/2 = −67
    // (−67.5 rounded toward zero), δ = 20 − 5 = 15.
    assert_eq!(offset_and_delay(100, 40, 45, 120), Ok((-67, 15)));
    // Zero delay, zero holding.
    assert_eq!(offset_and_delay(5, 5, 5, 5), Ok((0, 0)));
}

#[test]
fn inconsistent_timestamps_are_typed() {
    assert_eq!(
        offset_and_delay(100, 0, 0, 99),
        Err(ClockError::InconsistentTimestamps),
        "t4 < t1"
    );
    assert_eq!(
        offset_and_delay(100, 50, 49, 200),
        Err(ClockError::InconsistentTimestamps),
        "t3 < t2"
    );
    assert_eq!(
        offset_and_delay(100, 0, 50, 120),
        Err(ClockError::InconsistentTimestamps),
        "held longer than the round trip"
    );
    assert_eq!(
        offset_and_delay(0, i128::MAX, i128::MAX, 0),
        Err(ClockError::Overflow)
    );
}

#[test]
fn symmetric_round_trip_is_exact() {
    let (probe, echo, t4) = exchange(T0, 2 * S as i64, 30 * MS, MS, 30 * MS);
    let clock = PeerClock::from_round_trip(probe, echo, t4, 0).unwrap();
    assert_eq!(clock.offset_ns, 2 * S as i64);
    assert_eq!(clock.uncertainty_ns, 30 * MS);
    assert_eq!(clock.source, OffsetSource::RoundTrip);
}

#[test]
fn asymmetric_round_trip_errs_by_half_the_asymmetry() {
    // Peer 3 s behind; probe 80 ms (a slow broker), echo 20 ms: θ = −3 s + 30 ms, δ = 100 ms.
    let (probe, echo, t4) = exchange(T0, -3 * S as i64, 80 * MS, 5 * MS, 20 * MS);
    let clock = PeerClock::from_round_trip(probe, echo, t4, MS).unwrap();
    assert_eq!(clock.offset_ns, -3 * S as i64 + 30 * MS as i64);
    assert_eq!(clock.uncertainty_ns, 50 * MS + MS);
    let error = clock.offset_ns.abs_diff(-3 * S as i64);
    assert!(error <= clock.uncertainty_ns);
}

#[test]
fn echo_of_another_probe_is_refused() {
    let (probe, echo, t4) = exchange(T0, 0, MS, 0, MS);
    let other = ClockProbe {
        t1: WallTime(T0 + 1),
    };
    assert_eq!(
        PeerClock::from_round_trip(other, echo, t4, 0),
        Err(ClockError::EchoMismatch)
    );
    assert!(PeerClock::from_round_trip(probe, echo, t4, 0).is_ok());
}

#[test]
fn references_subtract_and_uncertainties_add() {
    // A is 100 ms slow (ref − A = +100 ms), B is 40 ms fast (ref − B = −40 ms): B − A = 140 ms.
    let ours = ReferenceOffset {
        offset_ns: 100 * MS as i64,
        uncertainty_ns: 8 * MS,
    };
    let theirs = ReferenceOffset {
        offset_ns: -40 * MS as i64,
        uncertainty_ns: 12 * MS,
    };
    let clock = PeerClock::from_references(ours, theirs).unwrap();
    assert_eq!(clock.offset_ns, 140 * MS as i64);
    assert_eq!(clock.uncertainty_ns, 20 * MS);
    assert_eq!(clock.source, OffsetSource::Reference);
    // B's view is the negation.
    assert_eq!(
        PeerClock::from_references(theirs, ours).unwrap(),
        clock.reversed().unwrap()
    );
    let huge = ReferenceOffset {
        offset_ns: i64::MIN,
        uncertainty_ns: u64::MAX,
    };
    assert_eq!(
        PeerClock::from_references(ours, huge),
        Err(ClockError::Overflow)
    );
}

#[test]
fn the_less_uncertain_source_is_chosen() {
    let rt = PeerClock {
        offset_ns: 10,
        uncertainty_ns: 90 * MS,
        source: OffsetSource::RoundTrip,
    };
    let refs = PeerClock {
        offset_ns: 12,
        uncertainty_ns: 20 * MS,
        source: OffsetSource::Reference,
    };
    assert_eq!(rt.better(refs), refs);
    assert_eq!(refs.better(rt), refs);
    assert_eq!(rt.better(rt), rt);
}

fn clock(offset_ns: i64, uncertainty_ns: u64) -> PeerClock {
    PeerClock {
        offset_ns,
        uncertainty_ns,
        source: OffsetSource::RoundTrip,
    }
}

#[test]
fn our_proposal_is_converted_into_the_peers_clock() {
    let policy = MeetPolicy {
        drift_ppm: 0,
        ..MeetPolicy::default()
    };
    let now = WallTime(T0);
    let meet = propose(now, 2 * S, clock(-700 * MS as i64, 30 * MS), &policy).unwrap();
    assert_eq!(meet.local, WallTime(T0 + 2 * S));
    assert_eq!(meet.peer, WallTime(T0 + 2 * S - 700 * MS));
    assert_eq!(meet.uncertainty_ns, 30 * MS);
    assert_eq!(
        meet.local_instant(T0 - 5 * S),
        Some(Instant::from_nanos(7 * S))
    );
}

#[test]
fn the_peers_proposal_is_converted_into_ours_and_both_agree() {
    let policy = MeetPolicy::default();
    // A's view: B = A + 250 ms. A proposes 3 s ahead.
    let a_clock = clock(250 * MS as i64, 10 * MS);
    let a_now = WallTime(T0);
    let a_meet = propose(a_now, 3 * S, a_clock, &policy).unwrap();
    // B's clock at the same real moment reads 250 ms more; B got the proposal 40 ms later.
    let b_now = WallTime(T0 + 250 * MS + 40 * MS);
    let b_meet = agree(
        a_meet.local,
        Proposer::Peer,
        a_clock.reversed().unwrap(),
        b_now,
        &policy,
    )
    .unwrap();
    assert_eq!(b_meet.local, a_meet.peer);
    assert_eq!(b_meet.peer, a_meet.local);
    // Drift: 100 ppm over the lead (3 s for A, 2.96 s for B).
    assert_eq!(a_meet.uncertainty_ns, 10 * MS + 300_000);
    assert_eq!(b_meet.uncertainty_ns, 10 * MS + 296_000);
}

#[test]
fn too_uncertain_is_a_typed_failure() {
    let policy = MeetPolicy {
        max_uncertainty_ns: 100 * MS,
        drift_ppm: 0,
        ..MeetPolicy::default()
    };
    assert_eq!(
        propose(WallTime(T0), S, clock(0, 100 * MS + 1), &policy),
        Err(ClockError::TooUncertain {
            uncertainty_ns: 100 * MS + 1,
            limit_ns: 100 * MS
        })
    );
    assert!(propose(WallTime(T0), S, clock(0, 100 * MS), &policy).is_ok());
    // The drift over a long lead can tip it over.
    let drifting = MeetPolicy {
        drift_ppm: 100,
        ..policy
    };
    assert_eq!(
        propose(WallTime(T0), 1000 * S, clock(0, 50 * MS), &drifting),
        Err(ClockError::TooUncertain {
            uncertainty_ns: 150 * MS,
            limit_ns: 100 * MS
        })
    );
}

#[test]
fn too_late_is_a_typed_failure() {
    let policy = MeetPolicy::default();
    let now = WallTime(T0);
    // Past.
    assert_eq!(
        agree(WallTime(T0 - 1), Proposer::Us, clock(0, MS), now, &policy),
        Err(ClockError::TooLate {
            now,
            meet: WallTime(T0 - 1)
        })
    );
    // Ahead, but closer than the minimum lead.
    assert_eq!(
        propose(now, policy.min_lead_ns - 1, clock(0, MS), &policy),
        Err(ClockError::TooLate {
            now,
            meet: WallTime(T0 + policy.min_lead_ns - 1)
        })
    );
    assert!(propose(now, policy.min_lead_ns, clock(0, MS), &policy).is_ok());
    // The peer's proposal looked fine in its clock but is past in ours (the peer is 2 s ahead).
    assert_eq!(
        agree(
            WallTime(T0 + S),
            Proposer::Peer,
            clock(2 * S as i64, MS),
            now,
            &policy
        ),
        Err(ClockError::TooLate {
            now,
            meet: WallTime(T0 - S)
        })
    );
}

#[test]
fn implausible_offset_is_a_typed_failure() {
    let policy = MeetPolicy::default();
    let limit = policy.max_offset_ns;
    for offset in [limit as i64 + 1, -(limit as i64) - 1, i64::MIN] {
        assert_eq!(
            propose(WallTime(T0), S, clock(offset, MS), &policy),
            Err(ClockError::ImplausibleOffset {
                offset_ns: offset,
                limit_ns: limit
            })
        );
    }
    assert!(propose(WallTime(T0), S, clock(limit as i64, MS), &policy).is_ok());
}

#[test]
fn overflow_is_a_typed_failure_never_a_wrap() {
    let policy = MeetPolicy {
        max_offset_ns: u64::MAX,
        max_uncertainty_ns: u64::MAX,
        ..MeetPolicy::default()
    };
    assert_eq!(
        propose(WallTime(u64::MAX), 1, clock(0, 0), &policy),
        Err(ClockError::Overflow)
    );
    for (meet, proposer, offset) in [
        (u64::MAX - 1, Proposer::Us, i64::MAX),
        (10, Proposer::Peer, i64::MAX),
        (10, Proposer::Peer, i64::MIN),
    ] {
        assert_eq!(
            agree(
                WallTime(meet),
                proposer,
                clock(offset, 0),
                WallTime(0),
                &policy
            ),
            Err(ClockError::Overflow),
            "meet {meet}, {proposer:?}, offset {offset}"
        );
    }
    assert_eq!(clock(i64::MIN, 0).reversed(), Err(ClockError::Overflow));
    assert_eq!(
        propose(WallTime(0), S, clock(0, u64::MAX), &policy),
        Err(ClockError::Overflow)
    );
}

#[test]
fn wall_time_converts_to_and_from_instants() {
    let epoch = T0;
    let now = Instant::from_millis(1500);
    let wall = WallTime::at(epoch, now).unwrap();
    assert_eq!(wall, WallTime(T0 + 1500 * MS));
    assert_eq!(wall.to_instant(epoch), Some(now));
    assert_eq!(WallTime(T0 - 1).to_instant(epoch), None);
    assert_eq!(WallTime::at(u64::MAX, Instant::from_nanos(1)), None);
    assert_eq!(WallTime(5).shifted(-6), None);
    assert_eq!(WallTime(5).shifted(-5), Some(WallTime(0)));
}

#[test]
fn errors_display() {
    let e = ClockError::TooUncertain {
        uncertainty_ns: 2,
        limit_ns: 1,
    };
    assert_eq!(e.to_string(), "clock offset uncertainty 2 ns exceeds 1 ns");
}

proptest! {
    /// Swapping the roles over the same links negates the estimate exactly.
    #[test]
    fn swapping_roles_negates_the_offset(
        offset in -3_600_000_000_000i64..3_600_000_000_000i64,
        a_to_b in 0u64..10_000_000_000,
        b_to_a in 0u64..10_000_000_000,
        hold_a in 0u64..1_000_000_000,
        hold_b in 0u64..1_000_000_000,
    ) {
        let start = 1_000_000 * S;
        // A probes B: up = A→B, down = B→A.
        let (p, e, t4) = exchange(start, offset, a_to_b, hold_b, b_to_a);
        let ab = PeerClock::from_round_trip(p, e, t4, 0).unwrap();
        // B probes A (B's clock = A's + offset, so A's = B's − offset): up = B→A, down = A→B.
        let b_start = WallTime(start).shifted(offset).unwrap().0;
        let (p, e, t4) = exchange(b_start, -offset, b_to_a, hold_a, a_to_b);
        let ba = PeerClock::from_round_trip(p, e, t4, 0).unwrap();
        prop_assert_eq!(ba.offset_ns, -ab.offset_ns);
        prop_assert_eq!(ba.uncertainty_ns, ab.uncertainty_ns);
        prop_assert_eq!(ab.reversed().unwrap(), PeerClock { source: OffsetSource::RoundTrip, ..ba });
    }

    /// |true offset − estimate| ≤ uncertainty for any one-way delays (δ/2 bounds the asymmetry).
    #[test]
    fn the_true_offset_is_within_the_uncertainty(
        offset in -3_600_000_000_000i64..3_600_000_000_000i64,
        up in 0u64..30_000_000_000,
        down in 0u64..30_000_000_000,
        hold in 0u64..5_000_000_000,
    ) {
        let (p, e, t4) = exchange(T0, offset, up, hold, down);
        let clock = PeerClock::from_round_trip(p, e, t4, 0).unwrap();
        prop_assert!(clock.offset_ns.abs_diff(offset) <= clock.uncertainty_ns);
        prop_assert_eq!(clock.uncertainty_ns, (up + down).div_ceil(2));
    }

    /// Through references: the error of the difference is within the summed uncertainties when
    /// each side's error is within its own.
    #[test]
    fn reference_errors_add_up(
        a in -1_000_000_000_000i64..1_000_000_000_000,
        b in -1_000_000_000_000i64..1_000_000_000_000,
        ea in -50_000_000i64..50_000_000,
        eb in -50_000_000i64..50_000_000,
    ) {
        // True: ref − A = a, ref − B = b, so B − A = a − b. Measured with errors ea, eb.
        let ours = ReferenceOffset { offset_ns: a + ea, uncertainty_ns: ea.unsigned_abs() };
        let theirs = ReferenceOffset { offset_ns: b + eb, uncertainty_ns: eb.unsigned_abs() };
        let clock = PeerClock::from_references(ours, theirs).unwrap();
        prop_assert!(clock.offset_ns.abs_diff(a - b) <= clock.uncertainty_ns);
    }

    /// Both parties' meet times are the same real instant: converting there and back is exact.
    #[test]
    fn agreement_is_symmetric(
        offset in -3_600_000_000_000i64..3_600_000_000_000i64,
        lead in 500_000_000u64..60_000_000_000,
        uncertainty in 0u64..100_000_000,
        transit in 0u64..400_000_000,
    ) {
        let policy = MeetPolicy::default();
        let ours = clock(offset, uncertainty);
        let a = propose(WallTime(T0), lead, ours, &policy);
        prop_assume!(a.is_ok());
        let a = a.unwrap();
        let b_now = WallTime(T0 + transit).shifted(offset).unwrap();
        match agree(a.local, Proposer::Peer, ours.reversed().unwrap(), b_now, &policy) {
            Ok(b) => {
                prop_assert_eq!(b.local, a.peer);
                prop_assert_eq!(b.peer, a.local);
                prop_assert!(b.uncertainty_ns <= a.uncertainty_ns);
            }
            Err(ClockError::TooLate { .. }) => prop_assert!(lead < transit + policy.min_lead_ns),
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }
}

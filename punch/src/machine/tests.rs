//! Regressions found by the `punch_session` fuzz target, driven through the contract checker.

use super::*;
use p2pd_channel::{ChannelKeys, SeedSource};
use p2pd_proto::testing::Pair;
use p2pd_proto::Machine;
use p2pd_signaling::Identity;

/// Our identity's secret byte, and the peer's.
const US_KEY: u8 = 1;
const PEER_KEY: u8 = 2;
const EPOCH: u64 = 1_700_000_000_000_000_000;

fn identity(key: u8) -> Identity {
    Identity::from_secret_bytes(&[key; 32]).unwrap()
}

fn us() -> NodeId {
    identity(US_KEY).node_id()
}

fn peer() -> NodeId {
    identity(PEER_KEY).node_id()
}

/// A puncher for the identity with secret byte `key`.
fn puncher(key: u8, config: PunchConfig, seed: u64) -> Puncher {
    let keys = ChannelKeys::new(&identity(key), [key; 32]).unwrap();
    Puncher::new(config, keys, SeedSource::new([key ^ 0x55; 32]), seed).unwrap()
}

fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

fn cand(local_port: u16, external: &str) -> PunchCandidate {
    PunchCandidate {
        local_port,
        external: external.parse().unwrap(),
    }
}

/// Every input and drain of the puncher goes through the contract checker.
type Driven = p2pd_proto::testing::Driven<Puncher>;
type Out = p2pd_proto::testing::Recorder<PunchEvent>;

fn drain(m: &mut Driven) -> Out {
    m.take()
}

fn binds(out: &Out) -> Vec<SocketId> {
    out.ops
        .iter()
        .filter_map(|op| match op {
            SocketOp::Bind { socket, .. } => Some(*socket),
            _ => None,
        })
        .collect()
}

fn bound(m: &mut Driven, now: Instant, id: SocketId) -> Out {
    m.clock(now).outcome(
        id,
        SocketOutcome::Bound {
            local: "0.0.0.0:20000".parse().unwrap(),
        },
    );
    drain(m)
}

/// An initiator armed against `peer_candidates` (one own port): returns the machine, the meet
/// time and the Bind ids (the listener first, then one dialer per pair).
fn armed(
    config: PunchConfig,
    peer_candidates: Vec<PunchCandidate>,
) -> (Driven, Instant, Vec<SocketId>) {
    let puncher = puncher(US_KEY, config, 7);
    let mut m = Driven::new("puncher", puncher, |e| matches!(e, PunchEvent::Closed));
    let session = m
        .input(|m, now| m.initiate(now, peer(), vec![cand(20_000, "198.51.100.1:20000")]))
        .unwrap();
    let t1 = drain(&mut m)
        .events
        .iter()
        .find_map(|e| match e {
            PunchEvent::Signal { payload, .. } => match Message::decode(payload) {
                Ok(Message::Offer { t1, .. }) => Some(t1),
                _ => None,
            },
            _ => None,
        })
        .unwrap();
    let t2 = EPOCH + 5_000_000;
    let answer = Message::Answer {
        session,
        round: 0,
        t1,
        t2,
        t3: t2,
        meet: t2 + 2_000_000_000,
        candidates: peer_candidates,
    }
    .encode()
    .unwrap();
    assert_eq!(
        m.clock(ms(10))
            .input(|m, now| m.handle_signal(now, peer(), &answer)),
        Verdict::Consumed
    );
    let out = drain(&mut m);
    let meet = out
        .events
        .iter()
        .find_map(|e| match e {
            PunchEvent::Armed { meet, .. } => Some(*meet),
            _ => None,
        })
        .unwrap();
    (m, meet, binds(&out))
}

#[test]
fn a_dialer_still_binding_at_the_meet_time_does_not_make_the_caller_spin() {
    let config = PunchConfig::new(us(), EPOCH);
    let (mut m, meet, ids) = armed(config, vec![cand(20_000, "203.0.113.9:41000")]);
    let [listener, dialer] = ids[..] else {
        panic!("{ids:?}")
    };
    let _ = bound(&mut m, ms(20), listener);
    // The dialer's bind has not completed when the meet time comes.
    m.clock(meet).fire();
    let _ = drain(&mut m);
    let next = m.deadline().unwrap();
    assert!(
        next > meet,
        "deadline {next:?} is due at {meet:?}: the caller would spin"
    );
    // The late bind connects at once.
    let late = meet.saturating_add(Duration::from_millis(30));
    let out = bound(&mut m, late, dialer);
    assert!(out
        .ops
        .iter()
        .any(|op| matches!(op, SocketOp::Connect { socket, .. } if *socket == dialer)));
}

#[test]
fn a_retry_without_a_free_socket_waits_instead_of_spinning() {
    // One listener and two dialers fill the table.
    let mut config = PunchConfig::new(us(), EPOCH);
    config.max_sockets = 3;
    let (mut m, meet, ids) = armed(
        config,
        vec![
            cand(20_000, "203.0.113.9:41000"),
            cand(20_000, "203.0.113.9:41001"),
        ],
    );
    let [listener, d1, d2] = ids[..] else {
        panic!("{ids:?}")
    };
    let _ = bound(&mut m, ms(20), d1);
    let _ = bound(&mut m, ms(20), d2);
    m.clock(meet).fire();
    let _ = drain(&mut m);
    // The first connect is refused: its pair retries after `retry_interval`...
    m.clock(meet).outcome(
        d1,
        SocketOutcome::Failed {
            op: OpKind::Connect,
            destination: None,
            error: IoError::ConnectionRefused,
        },
    );
    let _ = drain(&mut m);
    // ...but the listener's accept takes the freed slot first.
    let out = bound(&mut m, meet, listener);
    assert!(out
        .ops
        .iter()
        .any(|op| matches!(op, SocketOp::Accept { .. })));
    assert_eq!(m.machine.open_sockets(), 3);
    let retry = meet.saturating_add(Duration::from_millis(100));
    for _ in 0..2 {
        m.clock(retry).fire();
        let _ = drain(&mut m);
    }
    let next = m.deadline().unwrap();
    assert!(
        next > retry,
        "deadline {next:?} is due at {retry:?}: the caller would spin"
    );
}

/// Moves every signal one side reported to the other at once (signaling takes no time here),
/// answers the responder's candidate request; keeps every other event (with its side).
fn relay(pair: &mut Pair<Owned, Owned>, seen: &mut Vec<(char, PunchEvent)>) {
    while !(pair.a.events.is_empty() && pair.b.events.is_empty()) {
        relay_once(pair, seen);
    }
}

fn relay_once(pair: &mut Pair<Owned, Owned>, seen: &mut Vec<(char, PunchEvent)>) {
    for (side, events) in [('a', pair.a.take_events()), ('b', pair.b.take_events())] {
        for ev in events {
            match ev {
                PunchEvent::Signal { payload, .. } => {
                    let verdict = if side == 'a' {
                        pair.input_b(|m, now| m.handle_signal(now, us(), &payload))
                    } else {
                        pair.input_a(|m, now| m.handle_signal(now, peer(), &payload))
                    };
                    // Retransmitted signals are duplicates.
                    assert!(
                        matches!(
                            verdict,
                            Verdict::Consumed | Verdict::Dropped(DropReason::Duplicate)
                        ),
                        "{verdict:?}"
                    );
                }
                PunchEvent::NeedCandidates { round } if side == 'b' => {
                    pair.input_b(|m, now| {
                        m.provide_candidates(now, round, vec![cand(30_000, "10.0.0.2:30000")])
                    })
                    .unwrap();
                }
                other => seen.push((side, other)),
            }
        }
    }
}

/// `a` and `b` 15 ms apart on one virtual clock, `a` initiating a punch to `peer()` with its own
/// address as its candidate.
fn initiated_pair(a: Puncher, b: Puncher) -> Pair<Owned, Owned> {
    let mut pair = Pair::new(Owned::new(a), Owned::new(b))
        .latency(Duration::from_millis(15), Duration::from_millis(15))
        .final_events(
            |e| matches!(e, PunchEvent::Closed),
            |e| matches!(e, PunchEvent::Closed),
        );
    pair.input_a(|m, now| m.initiate(now, peer(), vec![cand(20_000, "10.0.0.1:20000")]))
        .unwrap();
    pair
}

#[test]
fn two_punchers_meet_through_the_in_memory_network() {
    // Both on one virtual clock (so their clocks agree), 15 ms apart, no NAT: each candidate is
    // the side's own address.
    let (a, b) = (
        puncher(US_KEY, PunchConfig::new(us(), EPOCH), 1),
        puncher(PEER_KEY, PunchConfig::new(peer(), EPOCH), 2),
    );
    let mut pair = initiated_pair(a, b);
    let mut seen = Vec::new();
    let done = pair.drive_until(|p| {
        relay(p, &mut seen);
        ['a', 'b'].iter().all(|side| {
            seen.iter()
                .any(|(s, e)| s == side && matches!(e, PunchEvent::Connected { .. }))
        })
    });
    assert!(done, "{seen:?}");
    // Both meet at the same time, one measured lead (not the 2 s fallback) after the answer:
    // signals arrive at once here, so the lead is min_lead.
    let meets: Vec<Instant> = seen
        .iter()
        .filter_map(|(_, e)| match e {
            PunchEvent::Armed { meet, .. } => Some(*meet),
            _ => None,
        })
        .collect();
    assert_eq!(meets, vec![ms(150); 2], "{seen:?}");
    // Each side's winner is the caller's now: a stream between the two candidates.
    for (side, ev) in &seen {
        if let PunchEvent::Connected {
            socket,
            local,
            remote,
            peer: proved,
            ..
        } = ev
        {
            // Each side's channel proved the other's identity.
            let expected = if *side == 'a' { PEER_KEY } else { US_KEY };
            assert_eq!(*proved, identity(expected).public_key(), "{side}");
            // The owner took it at once (and sent the leader's last handshake message on it:
            // both sides connected).
            let won = if *side == 'a' {
                &pair.a.machine.won
            } else {
                &pair.b.machine.won
            };
            assert!(
                won.as_ref()
                    .is_some_and(|(s, _, c)| s == socket && c.is_established()),
                "{side}"
            );
            let (ours, theirs) = if *side == 'a' {
                ("10.0.0.1:20000", "10.0.0.2:30000")
            } else {
                ("10.0.0.2:30000", "10.0.0.1:20000")
            };
            assert_eq!(
                (*local, *remote),
                (ours.parse().unwrap(), theirs.parse().unwrap()),
                "{side}"
            );
        }
    }
    pair.input_a(|m, now| m.close(now));
    pair.input_b(|m, now| m.close(now));
    pair.drive_for(Duration::from_secs(1));
    pair.a.checker.assert_all_closed();
    pair.b.checker.assert_all_closed();
    assert!(pair.a.checker.finished() && pair.b.checker.finished());
}

#[test]
fn api_misuse_is_a_typed_error_and_changes_nothing() {
    let mut m = puncher(US_KEY, PunchConfig::new(us(), EPOCH), 7);
    let one = || vec![cand(40_000, "203.0.113.1:40000")];
    assert_eq!(
        m.initiate(ms(0), us(), one()),
        Err(PunchApiError::PunchToSelf)
    );
    assert_eq!(
        m.initiate(ms(0), peer(), Vec::new()),
        Err(PunchApiError::CandidateCount { count: 0 })
    );
    let many = vec![cand(40_000, "203.0.113.1:40000"); MAX_CANDIDATES + 1];
    assert_eq!(
        m.initiate(ms(0), peer(), many),
        Err(PunchApiError::CandidateCount {
            count: MAX_CANDIDATES + 1
        })
    );
    assert_eq!(
        m.initiate(ms(0), peer(), vec![cand(0, "203.0.113.1:40000")]),
        Err(PunchApiError::CandidatePortZero)
    );
    assert_eq!(
        m.initiate(ms(0), peer(), vec![cand(40_000, "203.0.113.1:0")]),
        Err(PunchApiError::CandidatePortZero)
    );
    assert_eq!(
        m.provide_candidates(ms(0), 0, one()),
        Err(PunchApiError::CandidatesNotAsked)
    );
    assert!(m.poll_event().is_none(), "refused calls emit nothing");
    m.initiate(ms(0), peer(), one()).unwrap();
    assert_eq!(
        m.initiate(ms(0), peer(), one()),
        Err(PunchApiError::InProgress)
    );
    assert_eq!(
        m.provide_candidates(ms(0), 3, one()),
        Err(PunchApiError::WrongRound {
            given: 3,
            current: 0
        })
    );
    m.close(ms(1));
    assert_eq!(m.initiate(ms(1), peer(), one()), Err(PunchApiError::Closed));
    assert_eq!(
        m.provide_candidates(ms(1), 0, one()),
        Err(PunchApiError::Closed)
    );
    assert_eq!(
        PunchApiError::CandidateCount { count: 17 }.to_string(),
        "17 candidates given, 1 to 16 allowed"
    );
}

#[test]
fn an_impostor_with_the_signaling_but_not_the_key_never_gets_a_stream() {
    // B speaks for `peer()` on signaling (the relay delivers its messages as from `peer()`), but
    // holds identity 3's key. A refuses every connection (B cannot prove `peer()`), so A never
    // connects and its punch ends in NoConnection. (B may see A prove itself, as A's identity is
    // public; it gets no stream from A.)
    const IMPOSTOR_KEY: u8 = 3;
    let mut one_round = PunchConfig::new(us(), EPOCH);
    one_round.max_rounds = 1;
    let (a, b) = (
        puncher(US_KEY, one_round, 1),
        puncher(IMPOSTOR_KEY, PunchConfig::new(us(), EPOCH), 2),
    );
    let mut pair = initiated_pair(a, b);
    let mut seen = Vec::new();
    let failed = pair.drive_until(|p| {
        relay(p, &mut seen);
        seen.iter()
            .any(|(s, e)| *s == 'a' && matches!(e, PunchEvent::Failed { .. }))
    });
    assert!(failed, "{seen:?}");
    assert!(
        !seen
            .iter()
            .any(|(s, e)| *s == 'a' && matches!(e, PunchEvent::Connected { .. })),
        "{seen:?}"
    );
    // Connections did come up at A; their handshakes failed.
    assert!(pair.a.machine.stats().channel_failures > 0, "{seen:?}");
    // A stream B believes in is B's caller's to close (the owner closes it).
    assert!(seen.iter().any(|(s, e)| *s == 'a'
        && matches!(
            e,
            PunchEvent::Failed {
                reason: PunchFailure::NoConnection { came_up, .. }
            } if *came_up > 0
        )));
    pair.input_a(|m, now| m.close(now));
    pair.input_b(|m, now| m.close(now));
    pair.drive_for(Duration::from_secs(1));
    pair.a.checker.assert_all_closed();
    pair.b.checker.assert_all_closed();
}

/// An initiator that offered at 0 ms gets an answer (`t2`, `t3` and the meet time in the
/// responder's clock, ms after `EPOCH`) at `arrive`: its output.
fn answered(config: PunchConfig, t: [u64; 3], arrive: u64) -> (Driven, SessionId, Out) {
    let puncher = puncher(US_KEY, config, 7);
    let mut m = Driven::new("puncher", puncher, |e| matches!(e, PunchEvent::Closed));
    let session = m
        .input(|m, now| m.initiate(now, peer(), vec![cand(20_000, "198.51.100.1:20000")]))
        .unwrap();
    let _ = drain(&mut m);
    let [t2, t3, meet] = t.map(|ms| EPOCH + ms * 1_000_000);
    let answer = Message::Answer {
        session,
        round: 0,
        t1: EPOCH,
        t2,
        t3,
        meet,
        candidates: vec![cand(30_000, "203.0.113.9:41000")],
    }
    .encode()
    .unwrap();
    assert_eq!(
        m.clock(ms(arrive))
            .input(|m, now| m.handle_signal(now, peer(), &answer)),
        Verdict::Consumed
    );
    let out = drain(&mut m);
    (m, session, out)
}

/// The Armed meet time and the ACK's meet (Unix ns, the responder's clock) in `out`.
fn armed_and_ack(out: &Out) -> (Option<Instant>, Option<u64>) {
    let mut armed = None;
    let mut ack = None;
    for e in &out.events {
        match e {
            PunchEvent::Armed { meet, .. } => armed = Some(*meet),
            PunchEvent::Signal { payload, .. } => {
                if let Ok(Message::Ack { meet, .. }) = Message::decode(payload) {
                    ack = Some(meet);
                }
            }
            _ => {}
        }
    }
    (armed, ack)
}

#[test]
fn the_initiator_meets_one_measured_lead_after_the_answer() {
    // A 10 ms round trip, clocks in step (the responder held the offer 20 ms): the lead is
    // min_margin + 2 * 10 ms + 7 ms, below min_lead, so 150 ms.
    let (_m, _, out) = answered(PunchConfig::new(us(), EPOCH), [5, 25, 2_025], 30);
    let (armed, ack) = armed_and_ack(&out);
    assert_eq!(armed, Some(ms(30 + 150)));
    assert_eq!(ack, Some(EPOCH + 180_000_000));
    // A 300 ms round trip: 100 + 600 + 152 ms.
    let (_m, _, out) = answered(PunchConfig::new(us(), EPOCH), [150, 150, 2_150], 300);
    assert_eq!(armed_and_ack(&out).0, Some(ms(300 + 852)));
    // A 700 ms round trip (uncertainty allowed): 100 + 1400 + 352 ms is past the answer's meet
    // time: that one it is.
    let mut config = PunchConfig::new(us(), EPOCH);
    config.max_uncertainty = Duration::from_secs(1);
    let (_m, _, out) = answered(config, [350, 350, 2_350], 700);
    let (armed, ack) = armed_and_ack(&out);
    assert_eq!(armed, Some(ms(2_350)));
    assert_eq!(ack, Some(EPOCH + 2_350_000_000));
    // With the lead capped at 500 ms, a 300 ms round trip meets 500 ms after the answer.
    let mut config = PunchConfig::new(us(), EPOCH);
    config.lead = Duration::from_millis(500);
    let (_m, _, out) = answered(config, [150, 150, 2_150], 300);
    assert_eq!(armed_and_ack(&out).0, Some(ms(300 + 500)));
    // A lead configured below min_margin (found by the punch_session fuzz target: it armed for
    // `now`): min_margin it is.
    let mut config = PunchConfig::new(us(), EPOCH);
    config.lead = Duration::ZERO;
    let (_m, _, out) = answered(config, [5, 25, 2_025], 30);
    assert_eq!(armed_and_ack(&out).0, Some(ms(30 + 100)));
}

#[test]
fn a_round_that_failed_for_time_doubles_the_next_lead() {
    let (mut m, session, out) = answered(PunchConfig::new(us(), EPOCH), [5, 25, 2_025], 30);
    assert_eq!(armed_and_ack(&out).0, Some(ms(180)));
    // The responder got the ACK too late.
    let abort = Message::Abort {
        session,
        round: 0,
        reason: AbortReason::TooLate,
    }
    .encode()
    .unwrap();
    assert_eq!(
        m.clock(ms(100))
            .input(|m, now| m.handle_signal(now, peer(), &abort)),
        Verdict::Consumed
    );
    let _ = drain(&mut m);
    m.clock(ms(110))
        .input(|m, now| m.provide_candidates(now, 1, vec![cand(20_001, "198.51.100.1:20001")]))
        .unwrap();
    let t1 = drain(&mut m)
        .events
        .iter()
        .find_map(|e| match e {
            PunchEvent::Signal { payload, .. } => match Message::decode(payload) {
                Ok(Message::Offer { t1, round: 1, .. }) => Some(t1),
                _ => None,
            },
            _ => None,
        })
        .unwrap();
    // The same 10 ms round trip: (100 + 20 + 7) ms doubled.
    let answer = Message::Answer {
        session,
        round: 1,
        t1,
        t2: t1 + 5_000_000,
        t3: t1 + 5_000_000,
        meet: t1 + 2_005_000_000,
        candidates: vec![cand(30_001, "203.0.113.9:41001")],
    }
    .encode()
    .unwrap();
    assert_eq!(
        m.clock(ms(120))
            .input(|m, now| m.handle_signal(now, peer(), &answer)),
        Verdict::Consumed
    );
    assert_eq!(armed_and_ack(&drain(&mut m)).0, Some(ms(120 + 254)));
}

#[test]
fn the_responder_arms_at_an_earlier_meet_but_never_a_later_one() {
    let responder = |ack_meet: u64, arrive: u64| {
        let puncher = puncher(PEER_KEY, PunchConfig::new(peer(), EPOCH), 3);
        let mut m = Driven::new("responder", puncher, |e| matches!(e, PunchEvent::Closed));
        let session = SessionId([9; 16]);
        let offer = Message::Offer {
            session,
            round: 0,
            t1: EPOCH,
            candidates: vec![cand(20_000, "198.51.100.1:20000")],
        }
        .encode()
        .unwrap();
        assert_eq!(
            m.clock(ms(5))
                .input(|m, now| m.handle_signal(now, us(), &offer)),
            Verdict::Consumed
        );
        let _ = drain(&mut m);
        m.clock(ms(5))
            .input(|m, now| m.provide_candidates(now, 0, vec![cand(30_000, "203.0.113.9:41000")]))
            .unwrap();
        let _ = drain(&mut m);
        // The answer offered EPOCH + 2005 ms.
        let ack = Message::Ack {
            session,
            round: 0,
            meet: EPOCH + ack_meet * 1_000_000,
            uncertainty_ns: 7_000_000,
        }
        .encode()
        .unwrap();
        let verdict = m
            .clock(ms(arrive))
            .input(|m, now| m.handle_signal(now, us(), &ack));
        let out = drain(&mut m);
        (verdict, out)
    };
    // Earlier than offered: armed at it.
    let (verdict, out) = responder(165, 15);
    assert_eq!(verdict, Verdict::Consumed);
    assert_eq!(armed_and_ack(&out).0, Some(ms(165)));
    // Exactly the offered meet time.
    let (verdict, out) = responder(2_005, 15);
    assert_eq!(verdict, Verdict::Consumed);
    assert_eq!(armed_and_ack(&out).0, Some(ms(2_005)));
    // Later than offered: not ours to accept.
    let (verdict, out) = responder(2_006, 15);
    assert_eq!(verdict, Verdict::Dropped(DropReason::Duplicate));
    assert_eq!(armed_and_ack(&out).0, None);
    // Earlier, but closer than min_margin when it arrives: too late, aborted.
    let (verdict, out) = responder(165, 70);
    assert_eq!(verdict, Verdict::Consumed);
    assert_eq!(armed_and_ack(&out).0, None);
    assert!(out.events.iter().any(|e| matches!(
        e,
        PunchEvent::RoundFailed {
            reason: PunchFailure::TooLate,
            ..
        }
    )));
}

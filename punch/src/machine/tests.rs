//! Regressions found by the `punch_session` fuzz target.

use super::*;
use crate::message::NODE_ID_LEN;
use p2pd_proto::Machine;

const US: NodeId = NodeId([1; NODE_ID_LEN]);
const PEER: NodeId = NodeId([2; NODE_ID_LEN]);
const EPOCH: u64 = 1_700_000_000_000_000_000;

fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

fn cand(local_port: u16, external: &str) -> PunchCandidate {
    PunchCandidate {
        local_port,
        external: external.parse().unwrap(),
    }
}

#[derive(Default)]
struct Out {
    ops: Vec<SocketOp>,
    events: Vec<PunchEvent>,
}

fn drain(m: &mut Puncher) -> Out {
    let mut out = Out::default();
    let mut buf = [0u8; 256];
    while m.poll_transmit(&mut buf).is_some() {}
    while let Some(op) = m.poll_socket_op() {
        out.ops.push(op);
    }
    while let Some(ev) = m.poll_event() {
        out.events.push(ev);
    }
    out
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

fn bound(m: &mut Puncher, now: Instant, id: SocketId) -> Out {
    m.handle_socket_result(
        now,
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
) -> (Puncher, Instant, Vec<SocketId>) {
    let mut m = Puncher::new(config, 7);
    let session = m
        .initiate(ms(0), PEER, vec![cand(20_000, "198.51.100.1:20000")])
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
    assert_eq!(m.handle_signal(ms(10), PEER, &answer), Verdict::Consumed);
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
    let config = PunchConfig::new(US, EPOCH);
    let (mut m, meet, ids) = armed(config, vec![cand(20_000, "203.0.113.9:41000")]);
    let [listener, dialer] = ids[..] else {
        panic!("{ids:?}")
    };
    let _ = bound(&mut m, ms(20), listener);
    // The dialer's bind has not completed when the meet time comes.
    m.handle_timeout(meet);
    let _ = drain(&mut m);
    let next = m.poll_timeout().unwrap();
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
    let mut config = PunchConfig::new(US, EPOCH);
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
    m.handle_timeout(meet);
    let _ = drain(&mut m);
    // The first connect is refused: its pair retries after `retry_interval`...
    m.handle_socket_result(
        meet,
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
    assert_eq!(m.open_sockets(), 3);
    let retry = meet.saturating_add(Duration::from_millis(100));
    for _ in 0..2 {
        m.handle_timeout(retry);
        let _ = drain(&mut m);
    }
    let next = m.poll_timeout().unwrap();
    assert!(
        next > retry,
        "deadline {next:?} is due at {retry:?}: the caller would spin"
    );
}

#[test]
fn api_misuse_is_a_typed_error_and_changes_nothing() {
    let mut m = Puncher::new(PunchConfig::new(US, EPOCH), 7);
    let one = || vec![cand(40_000, "203.0.113.1:40000")];
    assert_eq!(
        m.initiate(ms(0), US, one()),
        Err(PunchApiError::PunchToSelf)
    );
    assert_eq!(
        m.initiate(ms(0), PEER, Vec::new()),
        Err(PunchApiError::CandidateCount { count: 0 })
    );
    let many = vec![cand(40_000, "203.0.113.1:40000"); MAX_CANDIDATES + 1];
    assert_eq!(
        m.initiate(ms(0), PEER, many),
        Err(PunchApiError::CandidateCount {
            count: MAX_CANDIDATES + 1
        })
    );
    assert_eq!(
        m.initiate(ms(0), PEER, vec![cand(0, "203.0.113.1:40000")]),
        Err(PunchApiError::CandidatePortZero)
    );
    assert_eq!(
        m.initiate(ms(0), PEER, vec![cand(40_000, "203.0.113.1:0")]),
        Err(PunchApiError::CandidatePortZero)
    );
    assert_eq!(
        m.provide_candidates(ms(0), 0, one()),
        Err(PunchApiError::CandidatesNotAsked)
    );
    assert!(
        drain(&mut m).events.is_empty(),
        "refused calls emit nothing"
    );
    m.initiate(ms(0), PEER, one()).unwrap();
    assert_eq!(
        m.initiate(ms(0), PEER, one()),
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
    assert_eq!(m.initiate(ms(1), PEER, one()), Err(PunchApiError::Closed));
    assert_eq!(
        m.provide_candidates(ms(1), 0, one()),
        Err(PunchApiError::Closed)
    );
    assert_eq!(
        PunchApiError::CandidateCount { count: 17 }.to_string(),
        "17 candidates given, 1 to 16 allowed"
    );
}

//! Slot lifecycle of the accept pool.

use super::*;

const LISTENER: SocketId = SocketId(9);
const FIRST: u32 = 100;
const IDLE: Duration = Duration::from_secs(10);

/// Slot data that counts its resets.
#[derive(Debug, Default)]
struct Resets(u32);

impl SlotData for Resets {
    fn reset(&mut self) {
        self.0 += 1;
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], port))
}

fn at(ms: u64) -> Instant {
    Instant::ZERO + Duration::from_millis(ms)
}

fn pool(capacity: usize) -> AcceptPool<Resets> {
    AcceptPool::new(
        PoolConfig {
            listener: LISTENER,
            first_socket: FIRST,
            capacity,
            idle_timeout: IDLE,
            backlog: 16,
        },
        Resets::default,
    )
}

fn drain(ops: &mut VecDeque<SocketOp>) -> Vec<SocketOp> {
    ops.drain(..).collect()
}

fn accepted() -> SocketOutcome {
    SocketOutcome::Accepted {
        local: addr(3478),
        remote: addr(50000),
    }
}

fn failed(op: OpKind) -> SocketOutcome {
    SocketOutcome::Failed {
        op,
        destination: None,
        error: IoError::ConnectionReset,
    }
}

/// A pool of `capacity` slots with its listener bound: returns the accept intents it issued.
fn listening(capacity: usize) -> (AcceptPool<Resets>, VecDeque<SocketOp>, Vec<SocketOp>) {
    let mut p = pool(capacity);
    let mut ops = VecDeque::new();
    p.bind(addr(3478), BindOptions::default(), &mut ops);
    assert_eq!(p.listener(), Listener::Binding);
    let ev = p.handle_result(
        at(0),
        LISTENER,
        SocketOutcome::Bound { local: addr(3478) },
        &mut ops,
    );
    assert_eq!(ev, PoolEvent::Listening(addr(3478)));
    assert_eq!(p.local_addr(), Some(addr(3478)));
    let issued = drain(&mut ops);
    (p, ops, issued)
}

fn accept(i: u32) -> SocketOp {
    SocketOp::Accept {
        listener: LISTENER,
        socket: SocketId(FIRST + i),
    }
}

fn close(i: u32) -> SocketOp {
    SocketOp::Close {
        socket: SocketId(FIRST + i),
    }
}

#[test]
fn one_accept_per_free_slot_and_capacity_bound() {
    let (mut p, mut ops, issued) = listening(3);
    assert!(matches!(issued.first(), Some(SocketOp::Bind { socket, .. }) if *socket == LISTENER));
    assert_eq!(
        issued.get(1),
        Some(&SocketOp::Listen {
            socket: LISTENER,
            backlog: 16
        })
    );
    assert_eq!(
        issued.get(2..),
        Some(&[accept(0), accept(1), accept(2)][..])
    );
    // Accepting slots are not asked for again.
    p.accept_idle(at(1), &mut ops);
    assert!(ops.is_empty());
    for i in 0..3 {
        let socket = SocketId(FIRST + i);
        let ev = p.handle_result(at(1), socket, accepted(), &mut ops);
        assert_eq!(ev, PoolEvent::Opened(i as usize));
    }
    assert_eq!(p.open_count(), 3);
    // Full: nothing more is asked for, and ids past the table are not ours.
    p.accept_idle(at(2), &mut ops);
    assert!(ops.is_empty());
    assert_eq!(p.slot_of(SocketId(FIRST + 3)), None);
    assert_eq!(p.slot_of(SocketId(FIRST - 1)), None);
    assert_eq!(
        p.handle_result(at(2), SocketId(FIRST + 3), accepted(), &mut ops),
        PoolEvent::NotMine
    );
    assert!(ops.is_empty());
}

#[test]
fn slot_lifecycle_open_touch_close_reaccept() {
    let (mut p, mut ops, _) = listening(1);
    let s0 = SocketId(FIRST);
    assert_eq!(p.open_index(s0), None);
    assert_eq!(
        p.handle_result(at(5), s0, accepted(), &mut ops),
        PoolEvent::Opened(0)
    );
    let (conn, data) = p.get(0).unwrap();
    assert_eq!(conn.local, addr(3478));
    assert_eq!(conn.remote, addr(50000));
    assert_eq!(conn.idle_deadline, at(5) + IDLE);
    assert_eq!(data.0, 1, "reset on open");
    assert_eq!(p.open_index(s0), Some(0));
    let (conn, _) = p.touch(at(7), 0).unwrap();
    assert_eq!(conn.idle_deadline, at(7) + IDLE);
    assert_eq!(p.next_deadline(), Some(at(7) + IDLE));
    // The peer goes away: the pool reports it, the caller closes.
    assert_eq!(
        p.handle_result(at(8), s0, SocketOutcome::PeerClosed, &mut ops),
        PoolEvent::Ended {
            index: 0,
            send_failed: false
        }
    );
    assert!(p.close(at(8), 0, &mut ops));
    assert_eq!(drain(&mut ops), vec![close(0), accept(0)]);
    assert_eq!(p.get(0).map(|(_, d)| d.0), None);
    assert_eq!(p.open_count(), 0);
    assert_eq!(p.next_deadline(), None);
    // The next connection in the slot starts clean.
    assert_eq!(
        p.handle_result(at(9), s0, accepted(), &mut ops),
        PoolEvent::Opened(0)
    );
    assert_eq!(p.get(0).unwrap().1 .0, 3, "reset on close and on open");
    assert_eq!(
        p.handle_result(at(9), s0, failed(OpKind::Send), &mut ops),
        PoolEvent::Ended {
            index: 0,
            send_failed: true
        }
    );
}

#[test]
fn close_is_emitted_exactly_once() {
    let (mut p, mut ops, _) = listening(2);
    let s0 = SocketId(FIRST);
    let _ = p.handle_result(at(1), s0, accepted(), &mut ops);
    assert!(p.close(at(2), 0, &mut ops));
    assert!(!p.close(at(2), 0, &mut ops), "second close is a no-op");
    assert!(
        !p.close(at(2), 1, &mut ops),
        "an accepting slot has nothing to close"
    );
    assert!(!p.close(at(2), 7, &mut ops), "out of range");
    assert_eq!(drain(&mut ops), vec![close(0), accept(0)]);
    // Outcomes after the close are ignored for a slot that is accepting again.
    assert_eq!(
        p.handle_result(at(3), s0, SocketOutcome::PeerClosed, &mut ops),
        PoolEvent::Nothing
    );
    // Shutting down closes open slots and the listener once; a second shutdown adds nothing.
    let _ = p.handle_result(at(3), s0, accepted(), &mut ops);
    assert_eq!(p.close_all(&mut ops), 1);
    assert_eq!(
        drain(&mut ops),
        vec![close(0), SocketOp::Close { socket: LISTENER }]
    );
    assert_eq!(p.close_all(&mut ops), 0);
    assert!(ops.is_empty());
    assert_eq!(p.listener(), Listener::Absent);
    // An accept completing after shutdown is still closed, once, and opens nothing.
    let s1 = SocketId(FIRST + 1);
    assert_eq!(
        p.handle_result(at(4), s1, accepted(), &mut ops),
        PoolEvent::Nothing
    );
    assert_eq!(drain(&mut ops), vec![close(1)]);
    assert_eq!(p.open_count(), 0);
    p.accept_idle(at(5), &mut ops);
    assert!(ops.is_empty(), "no accepts after shutdown");
}

#[test]
fn accepts_that_never_completed_get_no_close() {
    let (mut p, mut ops, _) = listening(3);
    let _ = p.handle_result(at(1), SocketId(FIRST + 1), accepted(), &mut ops);
    // Slots 0 and 2 only ever had an Accept intent: shutting down closes slot 1 and the listener.
    assert_eq!(p.close_all(&mut ops), 1);
    assert_eq!(
        drain(&mut ops),
        vec![close(1), SocketOp::Close { socket: LISTENER }]
    );
}

#[test]
fn failed_accept_retries_after_a_delay() {
    let (mut p, mut ops, _) = listening(1);
    let s0 = SocketId(FIRST);
    assert_eq!(
        p.handle_result(at(10), s0, failed(OpKind::Accept), &mut ops),
        PoolEvent::Nothing
    );
    assert!(ops.is_empty(), "a failed accept gets no close");
    assert_eq!(p.next_deadline(), Some(at(10) + ACCEPT_RETRY));
    p.accept_idle(at(500), &mut ops);
    assert!(ops.is_empty(), "too early");
    p.accept_idle(at(1010), &mut ops);
    assert_eq!(drain(&mut ops), vec![accept(0)]);
    assert_eq!(p.next_deadline(), None);
    // A failed accept on a slot that is not accepting changes nothing.
    let _ = p.handle_result(at(1011), s0, accepted(), &mut ops);
    assert_eq!(
        p.handle_result(at(1011), s0, failed(OpKind::Accept), &mut ops),
        PoolEvent::Ended {
            index: 0,
            send_failed: false
        }
    );
}

#[test]
fn idle_expiry() {
    let (mut p, mut ops, _) = listening(2);
    let _ = p.handle_result(at(0), SocketId(FIRST), accepted(), &mut ops);
    let _ = p.handle_result(at(3000), SocketId(FIRST + 1), accepted(), &mut ops);
    assert_eq!(p.next_deadline(), Some(at(0) + IDLE));
    let t = at(0) + IDLE;
    assert!(p.is_expired(0, t));
    assert!(!p.is_expired(1, t));
    assert!(!p.is_expired(5, t));
    assert!(p.close(t, 0, &mut ops));
    assert!(!p.is_expired(0, t), "a closed slot does not expire");
    assert_eq!(p.next_deadline(), Some(at(3000) + IDLE));
    // Touching pushes the deadline.
    let _ = p.touch(at(9000), 1);
    assert!(!p.is_expired(1, at(3000) + IDLE));
    assert!(p.is_expired(1, at(9000) + IDLE));
}

#[test]
fn listener_failures() {
    // Bind failure: no close (nothing was bound), no accepts, no retries.
    let mut p = pool(2);
    let mut ops = VecDeque::new();
    p.bind(addr(1), BindOptions::default(), &mut ops);
    ops.clear();
    assert_eq!(
        p.handle_result(at(0), LISTENER, failed(OpKind::Bind), &mut ops),
        PoolEvent::ListenerFailed {
            op: OpKind::Bind,
            error: IoError::ConnectionReset
        }
    );
    assert!(ops.is_empty());
    assert_eq!(p.listener(), Listener::Failed);
    assert_eq!(p.close_all(&mut ops), 0);
    assert!(
        ops.is_empty(),
        "a listener that failed to bind is not closed"
    );

    // Listen failure after accepts were issued: the listener gets its close, the outstanding
    // accepts are forgotten (a late Accepted is closed), an open connection survives.
    let (mut p, mut ops, _) = listening(2);
    let _ = p.handle_result(at(1), SocketId(FIRST), accepted(), &mut ops);
    let _ = p.handle_result(at(1), SocketId(FIRST + 1), failed(OpKind::Accept), &mut ops);
    let ev = p.handle_result(at(2), LISTENER, failed(OpKind::Listen), &mut ops);
    assert!(matches!(
        ev,
        PoolEvent::ListenerFailed {
            op: OpKind::Listen,
            ..
        }
    ));
    assert_eq!(drain(&mut ops), vec![SocketOp::Close { socket: LISTENER }]);
    assert_eq!(p.open_count(), 1);
    assert_eq!(
        p.next_deadline(),
        Some(at(1) + IDLE),
        "no retry without a listener"
    );
    let _ = p.handle_result(at(3), SocketId(FIRST + 1), accepted(), &mut ops);
    assert_eq!(drain(&mut ops), vec![close(1)]);
    assert!(p.close(at(4), 0, &mut ops));
    assert_eq!(
        drain(&mut ops),
        vec![close(0)],
        "no accept without a listener"
    );
    assert_eq!(p.close_all(&mut ops), 0);
    assert!(ops.is_empty(), "the failed listener was already closed");
}

#[test]
fn a_bind_failure_after_the_listener_was_bound_still_closes_it() {
    // Regression (fuzz tcp_stun_session under the contract checker): a `Failed { op: Bind }`
    // for a listener already `Bound` made the pool forget it without its close, leaking the
    // runtime's socket.
    let (mut p, mut ops, _) = listening(1);
    let ev = p.handle_result(at(1), LISTENER, failed(OpKind::Bind), &mut ops);
    assert!(matches!(
        ev,
        PoolEvent::ListenerFailed {
            op: OpKind::Bind,
            ..
        }
    ));
    assert_eq!(drain(&mut ops), vec![SocketOp::Close { socket: LISTENER }]);
    assert_eq!(p.close_all(&mut ops), 0);
    assert!(ops.is_empty(), "closed once");
}

#[test]
fn empty_pool_owns_nothing() {
    let mut p: AcceptPool<()> = AcceptPool::new(
        PoolConfig {
            listener: LISTENER,
            first_socket: FIRST,
            capacity: 0,
            idle_timeout: IDLE,
            backlog: 1,
        },
        || (),
    );
    let mut ops = VecDeque::new();
    assert_eq!(p.capacity(), 0);
    assert_eq!(
        p.handle_result(at(0), SocketId(FIRST), accepted(), &mut ops),
        PoolEvent::NotMine
    );
    assert_eq!(
        p.handle_result(
            at(0),
            LISTENER,
            SocketOutcome::Bound { local: addr(1) },
            &mut ops
        ),
        PoolEvent::Nothing,
        "not asked to bind"
    );
    assert_eq!(p.close_all(&mut ops), 0);
    assert!(ops.is_empty());
    assert_eq!(p.next_deadline(), None);
}

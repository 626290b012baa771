//! Slot lifecycle of the accept pool, and its fairness: message deadlines, the per-source cap,
//! eviction of the least active connection when full, IPv6 /64 grouping, one close per socket.

use super::*;
use crate::testing::ContractChecker;
use core::net::IpAddr;

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

const MESSAGE: Duration = Duration::from_secs(5);

fn limits(capacity: usize, per_source: usize) -> ConnectionLimits {
    ConnectionLimits {
        max_connections: capacity,
        max_per_source: per_source,
        message_timeout: MESSAGE,
        idle_timeout: IDLE,
    }
}

fn pool_with(limits: ConnectionLimits) -> AcceptPool<Resets> {
    AcceptPool::new(
        PoolConfig {
            listener: LISTENER,
            first_socket: FIRST,
            limits,
            backlog: 16,
        },
        Resets::default,
    )
}

/// A pool whose per-source cap does not bind (most test connections come from one address).
fn pool(capacity: usize) -> AcceptPool<Resets> {
    pool_with(limits(capacity, usize::MAX))
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

/// A pool for `capacity` connections with its listener bound: returns the accept intents it
/// issued.
fn listening(capacity: usize) -> (AcceptPool<Resets>, VecDeque<SocketOp>, Vec<SocketOp>) {
    listening_with(limits(capacity, usize::MAX))
}

fn listening_with(
    limits: ConnectionLimits,
) -> (AcceptPool<Resets>, VecDeque<SocketOp>, Vec<SocketOp>) {
    let mut p = pool_with(limits);
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

fn opened(index: usize) -> PoolEvent {
    PoolEvent::Opened {
        index,
        evicted: None,
    }
}

#[test]
fn one_accept_per_free_slot_plus_a_spare_and_capacity_bound() {
    let (mut p, mut ops, issued) = listening(3);
    assert_eq!((p.capacity(), p.slot_count()), (3, 4));
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
        Some(&[accept(0), accept(1), accept(2), accept(3)][..])
    );
    // Accepting slots are not asked for again.
    p.accept_idle(at(1), &mut ops);
    assert!(ops.is_empty());
    for i in 0..3 {
        let socket = SocketId(FIRST + i);
        let ev = p.handle_result(at(1), socket, accepted(), &mut ops);
        assert_eq!(ev, opened(i as usize));
    }
    assert_eq!(p.open_count(), 3);
    // Full: the spare still waits for a newcomer, nothing more is asked for, and ids past the
    // table are not ours.
    p.accept_idle(at(2), &mut ops);
    assert!(ops.is_empty());
    assert_eq!(p.slot_of(SocketId(FIRST + 4)), None);
    assert_eq!(p.slot_of(SocketId(FIRST - 1)), None);
    assert_eq!(
        p.handle_result(at(2), SocketId(FIRST + 4), accepted(), &mut ops),
        PoolEvent::NotMine
    );
    assert!(ops.is_empty());
    // The newcomer on the spare opens, and the connection that has done least (slot 0: no
    // message, oldest) makes room: closed once, its slot becomes the new spare.
    let ev = p.handle_result(at(3), SocketId(FIRST + 3), accepted(), &mut ops);
    let PoolEvent::Opened {
        index: 3,
        evicted: Some(evicted),
    } = ev
    else {
        panic!("{ev:?}");
    };
    assert_eq!((evicted.index, evicted.reason), (0, EvictReason::PoolFull));
    assert_eq!(drain(&mut ops), vec![close(0), accept(0)]);
    assert_eq!(p.open_count(), 3);
}

#[test]
fn slot_lifecycle_open_bytes_message_close_reaccept() {
    let (mut p, mut ops, _) = listening(1);
    let s0 = SocketId(FIRST);
    assert_eq!(p.open_index(s0), None);
    assert_eq!(p.handle_result(at(5), s0, accepted(), &mut ops), opened(0));
    let (conn, data) = p.get(0).unwrap();
    assert_eq!(conn.local, addr(3478));
    assert_eq!(conn.remote, addr(50000));
    assert_eq!(conn.idle_deadline, at(5) + IDLE);
    assert_eq!(conn.message_deadline, None);
    assert_eq!((conn.messages, conn.last_progress), (0, at(5)));
    assert_eq!(data.0, 1, "reset on open");
    assert_eq!(p.open_index(s0), Some(0));
    assert!(p.bytes_arrived(at(7), 0));
    let conn = p.get(0).unwrap().0;
    assert_eq!(conn.idle_deadline, at(7) + IDLE);
    assert_eq!(conn.message_deadline, Some(at(7) + MESSAGE));
    assert_eq!(p.next_deadline(), Some(at(7) + MESSAGE));
    p.message_completed(at(8), 0, false);
    let conn = p.get(0).unwrap().0;
    assert_eq!((conn.messages, conn.last_progress), (1, at(8)));
    assert_eq!(conn.message_deadline, None);
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
    assert_eq!(p.handle_result(at(9), s0, accepted(), &mut ops), opened(0));
    assert_eq!(p.get(0).unwrap().1 .0, 3, "reset on close and on open");
    assert_eq!(p.get(0).unwrap().0.messages, 0);
    assert!(!p.bytes_arrived(at(9), 5), "not a slot");
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
    // Slots 0, 2 and 3 only ever had an Accept intent: shutting down closes slot 1 and the
    // listener.
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
    // Slot 1 (the spare) waits for a connection too; nothing is due.
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
    assert_eq!(p.expired(0, t), Some(Expiry::Idle));
    assert_eq!(p.expired(1, t), None);
    assert_eq!(p.expired(5, t), None);
    assert_eq!(p.next_expired(t), Some((0, Expiry::Idle)));
    assert!(p.close(t, 0, &mut ops));
    assert_eq!(p.expired(0, t), None, "a closed slot does not expire");
    assert_eq!(p.next_expired(t), None);
    assert_eq!(p.next_deadline(), Some(at(3000) + IDLE));
    // Bytes push the idle deadline (and start a message, completed here).
    assert!(p.bytes_arrived(at(9000), 1));
    p.message_completed(at(9000), 1, false);
    assert_eq!(p.expired(1, at(3000) + IDLE), None);
    assert_eq!(p.expired(1, at(9000) + IDLE), Some(Expiry::Idle));
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
            limits: limits(0, 1),
            backlog: 1,
        },
        || (),
    );
    let mut ops = VecDeque::new();
    assert_eq!((p.capacity(), p.slot_count()), (0, 0), "no spare either");
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

// ---------------------------------------------------------------------------------------------
// Fairness.

fn from(ip: &str, port: u16) -> SocketOutcome {
    let ip: IpAddr = ip.parse().unwrap();
    SocketOutcome::Accepted {
        local: addr(3478),
        remote: SocketAddr::new(ip, port),
    }
}

/// Hands `outcome` to the accepting slot the pool asked for first (the runtime's next
/// connection), returning the event.
fn next_conn(
    p: &mut AcceptPool<Resets>,
    ops: &mut VecDeque<SocketOp>,
    now: Instant,
    outcome: SocketOutcome,
) -> PoolEvent {
    let socket = (0..p.slot_count())
        .map(|i| p.socket(i))
        .find(|s| p.slot_of(*s).is_some_and(|i| p.get(i).is_none()) && is_accepting(p, *s))
        .expect("an accept is outstanding");
    p.handle_result(now, socket, outcome, ops)
}

fn is_accepting(p: &AcceptPool<Resets>, socket: SocketId) -> bool {
    p.slot_of(socket)
        .and_then(|i| p.slots.get(i))
        .is_some_and(|s| s.state == SlotState::Accepting)
}

fn accepting_count(p: &AcceptPool<Resets>) -> usize {
    p.slots
        .iter()
        .filter(|s| s.state == SlotState::Accepting)
        .count()
}

fn opened_index(ev: PoolEvent) -> (usize, Option<Eviction>) {
    match ev {
        PoolEvent::Opened { index, evicted } => (index, evicted),
        other => panic!("not opened: {other:?}"),
    }
}

#[test]
fn a_drip_is_closed_at_its_message_deadline_whatever_the_bytes() {
    // Regression: any byte renewed the idle timer, so a client sending one byte per second
    // held its slot forever. Now the message its first byte started must be whole in 5 s.
    let (mut p, mut ops, _) = listening(2);
    let (drip, _) = opened_index(next_conn(&mut p, &mut ops, at(0), from("192.0.2.7", 1)));
    let (good, _) = opened_index(next_conn(&mut p, &mut ops, at(0), from("192.0.2.8", 1)));
    let mut expired_at = None;
    for second in 1..=30u64 {
        let now = at(second * 1000);
        if let Some((index, why)) = p.next_expired(now) {
            assert_eq!((index, why), (drip, Expiry::MessageTimeout));
            expired_at = Some(second);
            assert!(p.close(now, index, &mut ops));
            break;
        }
        // One byte each second on the drip; the good client completes a message each second.
        assert!(p.bytes_arrived(now, drip));
        assert!(p.bytes_arrived(now, good));
        p.message_completed(now, good, false);
        assert_eq!(
            p.get(drip).unwrap().0.idle_deadline,
            now + IDLE,
            "bytes renew idle"
        );
    }
    // First byte at 1 s: due at 6 s, seen at the first check not before it.
    assert_eq!(expired_at, Some(6));
    assert_eq!(
        drain(&mut ops),
        vec![close(drip as u32), accept(drip as u32)]
    );
    assert!(p.get(good).is_some(), "the good client keeps its slot");
    assert_eq!(p.get(good).unwrap().0.messages, 5);
    // The deadline is exact, and a completed message with more bytes held starts the next one
    // at the completion time.
    assert_eq!(
        p.expired(good, at(5000) + MESSAGE + IDLE),
        Some(Expiry::Idle)
    );
    assert!(p.bytes_arrived(at(7000), good));
    p.message_completed(at(7500), good, true);
    assert_eq!(
        p.get(good).unwrap().0.message_deadline,
        Some(at(7500) + MESSAGE)
    );
    assert_eq!(p.expired(good, at(7499) + MESSAGE), None);
    assert_eq!(
        p.expired(good, at(7500) + MESSAGE),
        Some(Expiry::MessageTimeout)
    );
    assert_eq!(p.next_deadline(), Some(at(7500) + MESSAGE));
    // More bytes of that message do not push its deadline.
    assert!(p.bytes_arrived(at(9000), good));
    assert_eq!(
        p.get(good).unwrap().0.message_deadline,
        Some(at(7500) + MESSAGE)
    );
}

#[test]
fn a_source_at_its_cap_replaces_its_own_least_active_connection() {
    let (mut p, mut ops, _) = listening_with(limits(8, 2));
    let (a1, _) = opened_index(next_conn(&mut p, &mut ops, at(0), from("198.51.100.1", 1)));
    let (a2, _) = opened_index(next_conn(&mut p, &mut ops, at(1), from("198.51.100.1", 2)));
    let (b1, _) = opened_index(next_conn(&mut p, &mut ops, at(2), from("203.0.113.5", 1)));
    drain(&mut ops);
    // a1 has done more than a2; b1 has done nothing but is another source.
    assert!(p.bytes_arrived(at(3), a1));
    p.message_completed(at(3), a1, false);
    let source = SourcePrefix::of("198.51.100.1".parse().unwrap());
    assert_eq!(p.source_count(source), 2);
    // A third connection from the same source: a2 (fewest messages) goes, nobody else.
    let (a3, evicted) = opened_index(next_conn(&mut p, &mut ops, at(4), from("198.51.100.1", 3)));
    let evicted = evicted.expect("an eviction");
    assert_eq!(evicted.index, a2);
    assert_eq!(evicted.reason, EvictReason::SourceFull);
    assert_eq!(evicted.conn.remote.port(), 2);
    assert_eq!(p.source_count(source), 2);
    assert!(p.get(a1).is_some() && p.get(b1).is_some() && p.get(a3).is_some());
    assert_eq!(p.open_count(), 3, "the pool was far from full");
    let out = drain(&mut ops);
    assert_eq!(out.first(), Some(&close(a2 as u32)));
    assert!(out.contains(&accept(a2 as u32)));
    // Next time a3 goes: it has no message yet, a1 has one (fewest messages before oldest).
    let (_, evicted) = opened_index(next_conn(&mut p, &mut ops, at(5), from("198.51.100.1", 4)));
    assert_eq!(evicted.map(|e| e.index), Some(a3));
}

#[test]
fn a_full_pool_evicts_the_connection_that_has_done_least() {
    let (mut p, mut ops, _) = listening_with(limits(4, 4));
    // Source A holds two connections, B and C one each.
    let (a1, _) = opened_index(next_conn(&mut p, &mut ops, at(0), from("192.0.2.1", 1)));
    let (a2, _) = opened_index(next_conn(&mut p, &mut ops, at(1), from("192.0.2.1", 2)));
    let (b, _) = opened_index(next_conn(&mut p, &mut ops, at(2), from("192.0.2.2", 1)));
    let (c, _) = opened_index(next_conn(&mut p, &mut ops, at(3), from("192.0.2.3", 1)));
    assert_eq!(p.open_count(), 4);
    assert_eq!(accepting_count(&p), 1, "full, the spare still accepts");
    for (index, messages) in [(a1, 3), (a2, 1), (b, 0), (c, 0)] {
        for _ in 0..messages {
            assert!(p.bytes_arrived(at(4), index));
            p.message_completed(at(4), index, false);
        }
    }
    drain(&mut ops);
    // D arrives: A holds most connections, and of A's, a2 did least.
    let (d, evicted) = opened_index(next_conn(&mut p, &mut ops, at(5), from("192.0.2.4", 1)));
    let evicted = evicted.unwrap();
    assert_eq!((evicted.index, evicted.reason), (a2, EvictReason::PoolFull));
    assert_eq!(drain(&mut ops), vec![close(a2 as u32), accept(a2 as u32)]);
    // E arrives: every source holds one; b and c did nothing, b's progress (its accept) is
    // older.
    let (_, evicted) = opened_index(next_conn(&mut p, &mut ops, at(6), from("192.0.2.5", 1)));
    assert_eq!(evicted.map(|e| e.index), Some(b));
    // F arrives: c and d did nothing; c is older. a1, with messages, survives everything.
    let (_, evicted) = opened_index(next_conn(&mut p, &mut ops, at(7), from("192.0.2.6", 1)));
    assert_eq!(evicted.map(|e| e.index), Some(c));
    assert!(p.get(a1).is_some() && p.get(d).is_some());
    assert_eq!(p.open_count(), 4);
    assert_eq!(accepting_count(&p), 1);
}

#[test]
fn ipv6_sources_are_grouped_by_their_64_prefix() {
    let same = ["2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff"];
    let key = |s: &str| SourcePrefix::of(s.parse().unwrap());
    assert_eq!(key(same[0]), key(same[1]));
    assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    assert_eq!(
        key("::ffff:192.0.2.1"),
        key("192.0.2.1"),
        "mapped IPv4 is IPv4"
    );
    assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
    // Two addresses in one /64 share the cap of 2: the third evicts within the prefix; another
    // /64 is not affected.
    let (mut p, mut ops, _) = listening_with(limits(8, 2));
    let (x1, _) = opened_index(next_conn(&mut p, &mut ops, at(0), from(same[0], 1)));
    let _ = next_conn(&mut p, &mut ops, at(1), from(same[1], 1));
    let (other, _) = opened_index(next_conn(
        &mut p,
        &mut ops,
        at(2),
        from("2001:db8:1:3::1", 1),
    ));
    let (_, evicted) = opened_index(next_conn(&mut p, &mut ops, at(3), from(same[1], 2)));
    let evicted = evicted.unwrap();
    assert_eq!(
        (evicted.index, evicted.reason),
        (x1, EvictReason::SourceFull)
    );
    assert!(p.get(other).is_some());
    assert_eq!(p.source_count(key(same[0])), 2);
}

#[test]
fn limits_are_checked() {
    let ok = ConnectionLimits::DEFAULT;
    assert_eq!(ok.check(64), Ok(()));
    assert_eq!(ok.check(63), Err(LimitsError::Connections));
    let bad = |f: fn(&mut ConnectionLimits)| {
        let mut l = ConnectionLimits::DEFAULT;
        f(&mut l);
        l.check(4096)
    };
    assert_eq!(
        bad(|l| l.max_connections = 0),
        Err(LimitsError::Connections)
    );
    assert_eq!(bad(|l| l.max_per_source = 0), Err(LimitsError::PerSource));
    assert_eq!(
        bad(|l| l.message_timeout = Duration::ZERO),
        Err(LimitsError::ZeroTimeout)
    );
    assert_eq!(
        bad(|l| l.idle_timeout = Duration::ZERO),
        Err(LimitsError::ZeroTimeout)
    );
    assert_eq!(ConnectionLimits::default(), ok);
}

/// A seeded storm of accepts from a few sources, drips, messages, deadlines, peer closes and
/// failed accepts, every op and outcome through the contract checker: each accepted socket is
/// closed exactly once, the pool never holds more than its limits, and while it listens an
/// accept is always outstanding.
#[test]
fn exactly_one_close_per_socket_under_churn() {
    const CAP: usize = 6;
    const PER_SOURCE: usize = 3;
    let sources = [
        "192.0.2.1",
        "192.0.2.2",
        "2001:db8::1",
        "2001:db8::2",
        "2001:db8:0:1::1",
    ];
    for seed in 0..20u64 {
        let mut rng = crate::Rng::from_seed(seed);
        let mut checker: ContractChecker<()> = ContractChecker::new("accept pool", |_| false);
        let mut p = pool_with(limits(CAP, PER_SOURCE));
        let mut ops = VecDeque::new();
        let feed = |ops: &mut VecDeque<SocketOp>, checker: &mut ContractChecker<()>| {
            for op in ops.drain(..) {
                checker.socket_op(&op);
            }
        };
        let mut now = at(0);
        checker.input(now);
        p.bind(addr(3478), BindOptions::default(), &mut ops);
        feed(&mut ops, &mut checker);
        let bound = SocketOutcome::Bound { local: addr(3478) };
        checker.outcome(LISTENER, &bound);
        let _ = p.handle_result(now, LISTENER, bound, &mut ops);
        feed(&mut ops, &mut checker);
        let mut evictions = 0;
        for step in 0..400u32 {
            now = now + Duration::from_millis(rng.below(1500));
            checker.input(now);
            let index = usize::try_from(rng.below(CAP as u64 + 1)).unwrap();
            let socket = p.socket(index);
            match rng.below(10) {
                0..=3 => {
                    let ip = sources[usize::try_from(rng.below(5)).unwrap()];
                    let outcome = from(ip, u16::try_from(step % 60_000).unwrap() + 1);
                    if is_accepting(&p, socket) {
                        checker.outcome(socket, &outcome);
                        if let PoolEvent::Opened {
                            evicted: Some(_), ..
                        } = p.handle_result(now, socket, outcome, &mut ops)
                        {
                            evictions += 1;
                        }
                    }
                }
                4 | 5 => {
                    let _ = p.bytes_arrived(now, index);
                }
                6 => p.message_completed(now, index, rng.below(2) == 0),
                7 => {
                    let outcome = SocketOutcome::PeerClosed;
                    if p.get(index).is_some() {
                        checker.outcome(socket, &outcome);
                        if let PoolEvent::Ended { index, .. } =
                            p.handle_result(now, socket, outcome, &mut ops)
                        {
                            assert!(p.close(now, index, &mut ops));
                        }
                    }
                }
                8 => {
                    let outcome = failed(OpKind::Accept);
                    if is_accepting(&p, socket) {
                        checker.outcome(socket, &outcome);
                        let _ = p.handle_result(now, socket, outcome, &mut ops);
                    }
                }
                _ => {
                    while let Some((index, _)) = p.next_expired(now) {
                        assert!(p.close(now, index, &mut ops));
                    }
                    p.accept_idle(now, &mut ops);
                }
            }
            feed(&mut ops, &mut checker);
            assert!(p.open_count() <= CAP, "seed {seed} step {step}");
            for ip in sources {
                let n = p.source_count(SourcePrefix::of(ip.parse().unwrap()));
                assert!(n <= PER_SOURCE, "seed {seed} step {step}: {ip} holds {n}");
            }
            // One slot is never open; it accepts unless its accept failed and waits to retry.
            let retrying = p
                .slots
                .iter()
                .filter(|s| matches!(s.state, SlotState::Idle { retry_at: Some(_) }))
                .count();
            assert!(
                accepting_count(&p) + retrying >= 1,
                "seed {seed} step {step}"
            );
            assert_eq!(
                p.open_count() + accepting_count(&p) + retrying,
                p.slot_count(),
                "seed {seed} step {step}: a slot idles without a retry"
            );
        }
        assert!(
            evictions > 0,
            "seed {seed}: the storm never filled the pool"
        );
        let _ = p.close_all(&mut ops);
        feed(&mut ops, &mut checker);
        checker.assert_all_closed();
        assert!(checker.closes() > 0);
    }
}

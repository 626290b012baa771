//! The checker catches each violation it is for, and passes a machine that keeps the contract.

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::VecDeque;
use std::ops::ControlFlow;

use super::{ContractChecker, Recorder};
use crate::{
    Instant, Machine, OpKind, SocketId, SocketOp, SocketOutcome, Transmit, Transport, Verdict,
    TRANSMIT_BUFFER_LEN,
};

/// A machine that emits whatever the test scripts.
#[derive(Default)]
struct Scripted {
    transmits: VecDeque<Transmit>,
    ops: VecDeque<SocketOp>,
    events: VecDeque<&'static str>,
    deadline: Option<Instant>,
    /// `handle_timeout` sets the deadline to this.
    after_timeout: Option<Instant>,
}

impl Machine for Scripted {
    type Event = &'static str;
    fn handle_datagram(&mut self, _: Instant, _: SocketId, _: SocketAddr, _: &[u8]) -> Verdict {
        Verdict::Consumed
    }
    fn handle_socket_result(&mut self, _: Instant, _: SocketId, _: SocketOutcome) {}
    fn handle_timeout(&mut self, _: Instant) {
        self.deadline = self.after_timeout;
    }
    fn poll_transmit(&mut self, _: &mut [u8]) -> Option<Transmit> {
        self.transmits.pop_front()
    }
    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        self.ops.pop_front()
    }
    fn poll_event(&mut self) -> Option<&'static str> {
        self.events.pop_front()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
}

fn bind(id: u32) -> SocketOp {
    SocketOp::Bind {
        socket: SocketId(id),
        transport: Transport::Udp,
        local: "0.0.0.0:0".parse().unwrap(),
        options: Default::default(),
    }
}

fn close(id: u32) -> SocketOp {
    SocketOp::Close {
        socket: SocketId(id),
    }
}

fn transmit(id: u32) -> Transmit {
    Transmit {
        socket: SocketId(id),
        destination: "192.0.2.1:3478".parse().unwrap(),
        len: 0,
    }
}

fn at(ms: u64) -> Instant {
    Instant::ZERO + Duration::from_millis(ms)
}

/// A scripted machine that asked for socket 1 (its bind not answered yet), and the checker that
/// saw it ask.
fn bound_one() -> (Scripted, ContractChecker<&'static str>) {
    let mut m = Scripted::default();
    let mut c = checker();
    m.ops.push_back(bind(1));
    run(&mut m, &mut c, at(0));
    (m, c)
}

/// Runs one drain of `m` at `now` through a fresh checker that has already seen `setup`.
fn run(m: &mut Scripted, checker: &mut ContractChecker<&'static str>, now: Instant) {
    let mut buf = [0u8; TRANSMIT_BUFFER_LEN];
    let mut out = Recorder::default();
    checker.input(now);
    let _ = checker.drain(m, &mut buf, &mut out);
}

fn checker() -> ContractChecker<&'static str> {
    ContractChecker::new("scripted", |e| *e == "closed")
}

#[test]
fn a_machine_that_keeps_the_contract_passes() {
    let mut m = Scripted::default();
    let mut c = checker();
    m.ops.extend([bind(1), bind(2)]);
    m.transmits.push_back(transmit(1));
    run(&mut m, &mut c, at(0));
    assert_eq!(c.open_sockets(), vec![SocketId(1), SocketId(2)]);
    m.ops.extend([close(1), close(2), bind(1)]);
    run(&mut m, &mut c, at(1));
    m.ops.push_back(close(1));
    m.events.push_back("closed");
    run(&mut m, &mut c, at(1));
    c.assert_all_closed();
    assert_eq!(c.closes(), 3);
    assert!(c.finished());
}

#[test]
#[should_panic(expected = "time went backwards")]
fn time_going_backwards_is_caught() {
    let mut c = checker();
    c.input(at(5));
    c.input(at(4));
}

#[test]
#[should_panic(expected = "second Close")]
fn a_second_close_is_caught() {
    let mut m = Scripted::default();
    let mut c = checker();
    m.ops.extend([bind(1), close(1), close(1)]);
    run(&mut m, &mut c, at(0));
}

#[test]
#[should_panic(expected = "never opened")]
fn closing_a_socket_never_opened_is_caught() {
    let mut m = Scripted::default();
    let mut c = checker();
    m.ops.push_back(close(9));
    run(&mut m, &mut c, at(0));
}

#[test]
#[should_panic(expected = "after its Close")]
fn a_transmit_after_close_is_caught() {
    let mut m = Scripted::default();
    let mut c = checker();
    m.ops.extend([bind(1), close(1)]);
    run(&mut m, &mut c, at(0));
    m.transmits.push_back(transmit(1));
    run(&mut m, &mut c, at(0));
}

#[test]
#[should_panic(expected = "after the final event")]
fn an_intent_after_the_final_event_is_caught() {
    let mut m = Scripted::default();
    let mut c = checker();
    m.events.push_back("closed");
    run(&mut m, &mut c, at(0));
    m.ops.push_back(bind(1));
    run(&mut m, &mut c, at(0));
}

#[test]
#[should_panic(expected = "deadline")]
fn a_deadline_after_the_final_event_is_caught() {
    let mut m = Scripted::default();
    let mut c = checker();
    m.events.push_back("closed");
    m.deadline = Some(at(10));
    run(&mut m, &mut c, at(0));
}

#[test]
#[should_panic(expected = "never closed")]
fn a_leaked_socket_is_caught() {
    let (_, c) = bound_one();
    c.assert_all_closed();
}

#[test]
#[should_panic(expected = "would spin")]
fn a_timeout_that_stays_due_is_caught() {
    let mut m = Scripted {
        deadline: Some(at(10)),
        after_timeout: Some(at(10)),
        ..Scripted::default()
    };
    let mut c = checker();
    let mut buf = [0u8; TRANSMIT_BUFFER_LEN];
    let mut out = Recorder::default();
    let _ = c.timeout(&mut m, at(10), &mut buf, &mut out);
}

#[test]
fn a_timeout_may_be_due_once_more_then_moves_on() {
    let mut m = Scripted {
        deadline: Some(at(10)),
        after_timeout: Some(at(20)),
        ..Scripted::default()
    };
    let mut c = checker();
    let mut buf = [0u8; TRANSMIT_BUFFER_LEN];
    let mut out = Recorder::default();
    assert_eq!(
        c.timeout(&mut m, at(10), &mut buf, &mut out),
        ControlFlow::Continue(Some(at(20)))
    );
}

#[test]
fn an_accept_that_never_completed_need_not_be_closed() {
    let mut m = Scripted::default();
    let mut c = checker();
    m.ops.extend([
        bind(1),
        SocketOp::Listen {
            socket: SocketId(1),
            backlog: 8,
        },
        SocketOp::Accept {
            listener: SocketId(1),
            socket: SocketId(2),
        },
        SocketOp::Accept {
            listener: SocketId(1),
            socket: SocketId(3),
        },
    ]);
    run(&mut m, &mut c, at(0));
    c.outcome(
        SocketId(2),
        &SocketOutcome::Accepted {
            local: "192.0.2.1:80".parse().unwrap(),
            remote: "192.0.2.2:999".parse().unwrap(),
        },
    );
    c.outcome(
        SocketId(3),
        &SocketOutcome::Failed {
            op: OpKind::Accept,
            destination: None,
            error: crate::IoError::UnknownSocket,
        },
    );
    assert_eq!(c.open_sockets(), vec![SocketId(1), SocketId(2)]);
    m.ops.extend([close(2), close(1)]);
    run(&mut m, &mut c, at(1));
    c.assert_all_closed();
}

fn bind_failed() -> SocketOutcome {
    SocketOutcome::Failed {
        op: OpKind::Bind,
        destination: None,
        error: crate::IoError::AddrInUse,
    }
}

#[test]
fn a_bind_that_failed_may_be_closed_once_or_not_at_all() {
    let mut m = Scripted::default();
    let mut c = checker();
    m.ops.extend([bind(1), bind(2)]);
    run(&mut m, &mut c, at(0));
    c.outcome(SocketId(1), &bind_failed());
    c.outcome(SocketId(2), &bind_failed());
    assert!(c.open_sockets().is_empty());
    // 1 is closed anyway, 2 is forgotten and its id bound again.
    m.ops.extend([close(1), bind(2)]);
    run(&mut m, &mut c, at(1));
    assert_eq!(c.open_sockets(), vec![SocketId(2)]);
    m.ops.push_back(close(2));
    run(&mut m, &mut c, at(1));
    c.assert_all_closed();
}

#[test]
#[should_panic(expected = "never closed")]
fn a_bind_failure_after_bound_does_not_excuse_the_close() {
    let (_, mut c) = bound_one();
    c.outcome(
        SocketId(1),
        &SocketOutcome::Bound {
            local: "192.0.2.1:1".parse().unwrap(),
        },
    );
    c.outcome(SocketId(1), &bind_failed());
    c.assert_all_closed();
}

#[test]
#[should_panic(expected = "second Close")]
fn a_bind_that_failed_is_closed_at_most_once() {
    let (mut m, mut c) = bound_one();
    c.outcome(SocketId(1), &bind_failed());
    m.ops.extend([close(1), close(1)]);
    run(&mut m, &mut c, at(0));
}

#[test]
fn a_socket_handed_to_the_caller_needs_no_close() {
    let (mut m, mut c) = bound_one();
    c.released(SocketId(1));
    c.assert_all_closed();
    // The id may be opened again.
    m.ops.extend([bind(1), close(1)]);
    run(&mut m, &mut c, at(0));
    c.assert_all_closed();
}

#[test]
#[should_panic(expected = "handed to the caller")]
fn a_transmit_on_a_socket_handed_to_the_caller_is_caught() {
    let (mut m, mut c) = bound_one();
    c.released(SocketId(1));
    m.transmits.push_back(transmit(1));
    run(&mut m, &mut c, at(0));
}

#[test]
#[should_panic(expected = "handed to the caller")]
fn closing_a_socket_handed_to_the_caller_is_caught() {
    let (mut m, mut c) = bound_one();
    c.released(SocketId(1));
    m.ops.push_back(close(1));
    run(&mut m, &mut c, at(0));
}

#[test]
fn an_accepted_nobody_asked_for_may_be_closed_once_or_ignored() {
    let mut m = Scripted::default();
    let mut c = checker();
    let accepted = SocketOutcome::Accepted {
        local: "192.0.2.1:80".parse().unwrap(),
        remote: "192.0.2.2:999".parse().unwrap(),
    };
    c.outcome(SocketId(5), &accepted);
    c.outcome(SocketId(6), &accepted);
    m.ops.push_back(close(5));
    run(&mut m, &mut c, at(0));
    c.assert_all_closed();
    m.ops.push_back(close(5));
    let second = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(&mut m, &mut c, at(0));
    }));
    assert!(second.is_err(), "a second Close is still caught");
}

#[test]
fn the_socket_table_follows_intents_and_outcomes() {
    use super::{SocketState, SocketTable};
    let local: SocketAddr = "10.0.0.1:4000".parse().unwrap();
    let remote: SocketAddr = "10.0.0.2:80".parse().unwrap();
    let mut t = SocketTable::default();
    let tcp = |id| SocketOp::Bind {
        socket: SocketId(id),
        transport: Transport::Tcp,
        local,
        options: Default::default(),
    };
    assert_eq!(t.apply(&tcp(1)), None);
    t.apply(&tcp(2));
    t.apply(&tcp(3));
    assert_eq!(t.ids(|s| matches!(s, SocketState::Binding { .. })).len(), 3);
    t.outcome(SocketId(3), &bind_failed());
    for id in [1, 2] {
        t.outcome(SocketId(id), &SocketOutcome::Bound { local });
    }
    assert_eq!(t.get(SocketId(3)), None, "a failed bind leaves nothing");
    t.apply(&SocketOp::Listen {
        socket: SocketId(1),
        backlog: 1,
    });
    t.apply(&SocketOp::Accept {
        listener: SocketId(1),
        socket: SocketId(9),
    });
    t.apply(&SocketOp::Connect {
        socket: SocketId(2),
        remote,
    });
    assert_eq!(
        t.get(SocketId(2)),
        Some(SocketState::Connecting { local, remote })
    );
    t.outcome(SocketId(2), &SocketOutcome::Connected { local, remote });
    t.apply(&SocketOp::Shutdown {
        socket: SocketId(2),
    });
    assert_eq!(
        t.get(SocketId(2)),
        Some(SocketState::Stream {
            local,
            remote,
            shut: true
        })
    );
    assert_eq!(
        t.pick(|s| matches!(s, SocketState::Accepting { .. }), 7),
        Some(SocketId(9))
    );
    // Closing the listener drops its pending accept.
    t.apply(&close(1));
    assert_eq!(t.len(), 1);
    t.apply(&close(2));
    assert!(t.is_empty());
}

#[test]
fn a_stream_accepted_after_the_end_gets_its_close_and_nothing_else() {
    let mut m = Scripted::default();
    let mut c = checker();
    m.ops.extend([
        bind(1),
        SocketOp::Accept {
            listener: SocketId(1),
            socket: SocketId(2),
        },
    ]);
    run(&mut m, &mut c, at(0));
    m.ops.push_back(close(1));
    m.events.push_back("closed");
    run(&mut m, &mut c, at(1));
    // The runtime hands over the connection it accepted meanwhile: the machine closes it.
    c.outcome(
        SocketId(2),
        &SocketOutcome::Accepted {
            local: "192.0.2.1:80".parse().unwrap(),
            remote: "192.0.2.2:999".parse().unwrap(),
        },
    );
    assert_eq!(c.open_sockets(), vec![SocketId(2)]);
    m.ops.push_back(close(2));
    run(&mut m, &mut c, at(2));
    c.assert_all_closed();
    // Anything else is still caught.
    m.transmits.push_back(transmit(2));
    let after = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(&mut m, &mut c, at(2));
    }));
    assert!(after.is_err());
}

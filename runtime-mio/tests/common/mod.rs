//! One scripted test machine shared by the runtime's tests: queues the test fills (intents,
//! transmits, a deadline) and drains (events), with the reactions to its inputs given per test.
// Each test file uses a part of it.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::Duration;

use p2pd_mio::Runtime;
use p2pd_proto::{
    BindOptions, Instant, Machine, SocketId, SocketOp, SocketOutcome, Transmit, Transport, Verdict,
};

/// A queued transmit: the socket to send from, the destination and the bytes.
pub type Queued = (SocketId, SocketAddr, Vec<u8>);

/// What a [`Scripted`] machine does with its inputs: the machine hands every input to `react`,
/// which can queue transmits, intents and events and keep its own state in `m.state`.
pub trait Reactions: Sized {
    /// The events the machine reports.
    type Event;

    /// Reacts to `input`; the verdict answers a datagram or stream bytes (it is ignored for the
    /// other inputs).
    fn react(m: &mut Scripted<Self>, now: Instant, input: Input) -> Verdict;
}

/// A test machine: what the test and the reactions queue is polled out in order.
pub struct Scripted<R: Reactions> {
    /// Socket intents, polled first in, first out.
    pub ops: VecDeque<SocketOp>,
    /// Transmits, polled first in, first out.
    pub tx: VecDeque<Queued>,
    /// Events, polled first in, first out.
    pub events: VecDeque<R::Event>,
    /// The next deadline (`poll_timeout`).
    pub deadline: Option<Instant>,
    /// The reactions' own state.
    pub state: R,
}

impl<R: Reactions> Scripted<R> {
    /// A machine with empty queues and no deadline, reacting with `state`.
    pub fn new(state: R) -> Self {
        Scripted {
            ops: VecDeque::new(),
            tx: VecDeque::new(),
            events: VecDeque::new(),
            deadline: None,
            state,
        }
    }

    /// The same, with `ops` queued.
    pub fn with_ops(state: R, ops: impl IntoIterator<Item = SocketOp>) -> Self {
        Scripted {
            ops: ops.into_iter().collect(),
            ..Scripted::new(state)
        }
    }
}

impl<R: Reactions + Default> Default for Scripted<R> {
    fn default() -> Self {
        Scripted::new(R::default())
    }
}

impl<R: Reactions> Machine for Scripted<R> {
    type Event = R::Event;

    fn handle_datagram(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        data: &[u8],
    ) -> Verdict {
        R::react(self, now, Input::Datagram(socket, from, data.to_vec()))
    }

    fn handle_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        R::react(self, now, Input::Stream(socket, data.to_vec()))
    }

    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        let _ = R::react(self, now, Input::Result(socket, outcome));
    }

    fn handle_timeout(&mut self, now: Instant) {
        let _ = R::react(self, now, Input::Timeout(now));
    }

    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let (socket, destination, bytes) = self.tx.pop_front()?;
        buf[..bytes.len()].copy_from_slice(&bytes);
        Some(Transmit {
            socket,
            destination,
            len: bytes.len(),
        })
    }

    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        self.ops.pop_front()
    }

    fn poll_event(&mut self) -> Option<R::Event> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
}

/// One input of a [`Scripted`] machine (and the event a [`Record`] machine makes of it).
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The outcome of an intent on a socket.
    Result(SocketId, SocketOutcome),
    /// A datagram: the socket, the sender, the bytes.
    Datagram(SocketId, SocketAddr, Vec<u8>),
    /// Stream bytes on a socket.
    Stream(SocketId, Vec<u8>),
    /// The deadline fired at this time.
    Timeout(Instant),
}

/// Reactions that make every input an event ([`record`]); the test reacts in the run's callback.
#[derive(Default)]
pub struct Record;

impl Reactions for Record {
    type Event = Input;

    fn react(m: &mut Scripted<Self>, _now: Instant, input: Input) -> Verdict {
        record(m, input)
    }
}

/// Queues `input` as an event and consumes it; a timeout takes the deadline (and must not come
/// before it).
pub fn record<R: Reactions<Event = Input>>(m: &mut Scripted<R>, input: Input) -> Verdict {
    if let Input::Timeout(now) = input {
        let deadline = m.deadline.take().expect("deadline");
        assert!(now >= deadline, "handle_timeout before the deadline");
    }
    m.events.push_back(input);
    Verdict::Consumed
}

/// Runs `m` until it has reported `n` events (or `limit` passes), returning them.
pub fn collect<R: Reactions>(
    rt: &mut Runtime,
    m: &mut Scripted<R>,
    limit: Option<Duration>,
    n: usize,
) -> Vec<R::Event> {
    let mut seen = Vec::new();
    rt.run(m, limit, |_, _, event| {
        seen.push(event);
        if seen.len() >= n {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    seen
}

/// Drives `m` once (every input and output ready now), returning the events it reported.
pub fn drained<R: Reactions>(rt: &mut Runtime, m: &mut Scripted<R>) -> Vec<R::Event> {
    let mut seen = Vec::new();
    let _ = rt.drive(m, |_, _, event| {
        seen.push(event);
        ControlFlow::Continue(())
    });
    seen
}

/// A UDP bind intent for `socket` on `local`.
pub fn udp_bind(socket: u32, local: &str, options: BindOptions) -> SocketOp {
    SocketOp::Bind {
        socket: SocketId(socket),
        transport: Transport::Udp,
        local: local.parse().unwrap(),
        options,
    }
}

/// A test that cannot run here for `reason` (no IPv6 loopback, no `SO_BINDTODEVICE`): prints
/// `SKIP: reason` and returns, so the caller returns; panics under `CI=true`, where every
/// prerequisite is present. The same rule as `p2pd_tests::skip_or_fail` (this crate cannot depend
/// on `p2pd-tests`, which depends on it).
pub fn skip_or_fail(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true, but a test would be skipped: {reason}");
    }
    eprintln!("SKIP: {reason}");
}

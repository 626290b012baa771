//! [`Driven`]: one machine driven alone by a test or a fuzz target.

// Test support reports a machine that never settles the way the checker reports violations.
#![allow(clippy::panic)]

use core::fmt::Debug;
use core::net::SocketAddr;
use core::ops::ControlFlow;
use core::time::Duration;
use std::boxed::Box;
use std::collections::VecDeque;
use std::vec::Vec;

use super::{ContractChecker, Recorder};
use crate::machine::{
    Machine, Outputs, SocketId, SocketOp, SocketOutcome, Transmit, Verdict, TRANSMIT_BUFFER_LEN,
};
use crate::time::Instant;

/// How a [`Driven`] machine's intents are answered at once (`None`: left to the test).
pub type Answer = Box<dyn FnMut(&SocketOp) -> Option<SocketOutcome>>;

/// One machine, a virtual clock, and its outputs recorded: every input goes through
/// [`ContractChecker::input`] and every drain through [`ContractChecker::drain`] (or
/// [`ContractChecker::timeout`]), so a test or fuzz target checks the contract without writing a
/// drain loop of its own.
///
/// Outputs accumulate in [`Driven::out`] until taken ([`Driven::take`] and friends). Intents can be
/// answered inside the drain, as a runtime does for the outcomes it knows at once
/// ([`Driven::answering`]; [`Driven::bind_answer`] answers every `Bind` with `Bound`).
///
/// ```
/// use p2pd_proto::client::{ClientConfig, ClientEvent, Request, StunClient};
/// use p2pd_proto::testing::Driven;
/// use p2pd_proto::Machine;
///
/// let client = StunClient::new(ClientConfig::default(), 7);
/// let mut d = Driven::new("stun client", client, |e| matches!(e, ClientEvent::Closed))
///     .answering(Driven::<StunClient>::bind_answer());
/// let socket = d
///     .input(|c, now| c.open_socket(now, "10.0.0.2:4000".parse().unwrap(), Default::default()))
///     .unwrap();
/// d.input(|c, now| c.start(now, Request::binding(socket, "192.0.2.1:3478".parse().unwrap())))
///     .unwrap();
/// assert_eq!(d.take_transmits().len(), 1);
/// d.run_for(core::time::Duration::from_secs(60)); // every retransmission, then the timeout
/// d.input(|c, now| c.close(now));
/// assert!(matches!(d.take_events().last(), Some(ClientEvent::Closed)));
/// d.checker.assert_all_closed();
/// ```
pub struct Driven<M: Machine> {
    /// The machine.
    pub machine: M,
    /// Its contract checker.
    pub checker: ContractChecker<M::Event>,
    /// The virtual clock: the `now` of the next input.
    pub now: Instant,
    /// Outputs not taken yet, in drain order.
    pub out: Recorder<M::Event>,
    answer: Option<Answer>,
    answered: VecDeque<(SocketId, SocketOutcome)>,
    buf: Vec<u8>,
}

impl<M: Machine> Debug for Driven<M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Driven")
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// The outputs of one drain of a [`Driven`] machine: recorded, and intents answered if asked.
struct Sink<'a, E> {
    out: &'a mut Recorder<E>,
    answer: Option<&'a mut Answer>,
    answered: &'a mut VecDeque<(SocketId, SocketOutcome)>,
    now: Instant,
}

impl<M: Machine + ?Sized> Outputs<M> for Sink<'_, M::Event> {
    fn transmit(&mut self, transmit: Transmit, bytes: &[u8]) {
        self.out.push_transmit(transmit, bytes);
    }

    fn socket_op(&mut self, op: SocketOp) {
        if let Some(outcome) = self.answer.as_mut().and_then(|a| a(&op)) {
            self.answered.push_back((op.socket(), outcome));
        }
        self.out.push_op(op);
    }

    fn event(&mut self, _: &mut M, event: M::Event) -> ControlFlow<()> {
        self.out.push_event(event);
        ControlFlow::Continue(())
    }

    fn outcome(&mut self) -> Option<(Instant, SocketId, SocketOutcome)> {
        let (socket, outcome) = self.answered.pop_front()?;
        Some((self.now, socket, outcome))
    }
}

impl<M: Machine> Driven<M>
where
    M::Event: Debug,
{
    /// Drives `machine` (called `name` in violation messages) from [`Instant::ZERO`]; `is_final`
    /// tells its final event (see [`ContractChecker::new`]). Nothing is drained yet: the first
    /// input (or [`Driven::drain`]) collects what the constructor queued.
    pub fn new(name: &'static str, machine: M, is_final: fn(&M::Event) -> bool) -> Self {
        Driven {
            machine,
            checker: ContractChecker::new(name, is_final),
            now: Instant::ZERO,
            out: Recorder::default(),
            answer: None,
            answered: VecDeque::new(),
            buf: std::vec![0u8; TRANSMIT_BUFFER_LEN],
        }
    }

    /// Starts the clock at `now` instead.
    pub fn at(mut self, now: Instant) -> Self {
        self.now = now;
        self
    }

    /// Answers intents inside every drain with what `answer` returns for them (handed to the
    /// machine, checked, at the current time), as a runtime does for outcomes it knows at once.
    pub fn answering(
        mut self,
        answer: impl FnMut(&SocketOp) -> Option<SocketOutcome> + 'static,
    ) -> Self {
        self.answer = Some(Box::new(answer));
        self
    }

    /// An answer for [`Driven::answering`]: every `Bind` succeeds on the address asked for.
    pub fn bind_answer() -> impl FnMut(&SocketOp) -> Option<SocketOutcome> {
        |op| match *op {
            SocketOp::Bind { local, .. } => Some(SocketOutcome::Bound { local }),
            _ => None,
        }
    }

    /// Sets the clock to `now` for the next inputs (the checker catches a clock set back).
    pub fn clock(&mut self, now: Instant) -> &mut Self {
        self.now = now;
        self
    }

    /// Uses a transmit buffer of `len` bytes from now on (at least [`TRANSMIT_BUFFER_LEN`] per
    /// the contract; smaller ones test a machine's handling of short buffers).
    pub fn set_buffer_len(&mut self, len: usize) {
        self.buf.resize(len, 0);
    }

    /// A checked drain at the current time, after an input given outside [`Driven::input`] (or
    /// after construction).
    pub fn drain(&mut self) -> Option<Instant> {
        self.checker.input(self.now);
        self.drain_only()
    }

    fn drain_only(&mut self) -> Option<Instant> {
        let mut sink = Sink {
            out: &mut self.out,
            answer: self.answer.as_mut(),
            answered: &mut self.answered,
            now: self.now,
        };
        let flow = self
            .checker
            .drain(&mut self.machine, &mut self.buf, &mut sink);
        flow.continue_value().flatten()
    }

    /// Gives the machine an input or a command at the current time, then drains it.
    pub fn input<R>(&mut self, f: impl FnOnce(&mut M, Instant) -> R) -> R {
        self.checker.input(self.now);
        let r = f(&mut self.machine, self.now);
        self.drain_only();
        r
    }

    /// A datagram arrives.
    pub fn datagram(&mut self, socket: SocketId, from: SocketAddr, data: &[u8]) -> Verdict {
        self.input(|m, now| m.handle_datagram(now, socket, from, data))
    }

    /// Stream bytes arrive.
    pub fn stream(&mut self, socket: SocketId, data: &[u8]) -> Verdict {
        self.input(|m, now| m.handle_stream(now, socket, data))
    }

    /// A socket outcome is handed to the machine.
    pub fn outcome(&mut self, socket: SocketId, outcome: SocketOutcome) {
        self.checker.input(self.now);
        self.checker.outcome(socket, &outcome);
        self.machine.handle_socket_result(self.now, socket, outcome);
        self.drain_only();
    }

    /// `handle_timeout` at the current time, due or not (at most twice if the machine asks for the
    /// same instant again, as a runtime does), then drained.
    pub fn fire(&mut self) {
        let mut sink = Sink {
            out: &mut self.out,
            answer: self.answer.as_mut(),
            answered: &mut self.answered,
            now: self.now,
        };
        let _ = self
            .checker
            .timeout(&mut self.machine, self.now, &mut self.buf, &mut sink);
    }

    /// The machine's deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.machine.poll_timeout()
    }

    /// Moves the clock to `to` (never back) and fires the machine's deadline once if it is due
    /// by then: one wake-up of a runtime that slept until `to`.
    pub fn advance_to(&mut self, to: Instant) {
        self.now = self.now.max(to);
        if self.deadline().is_some_and(|d| d <= self.now) {
            self.fire();
        }
    }

    /// [`Driven::advance_to`] `d` from now.
    pub fn advance(&mut self, d: Duration) {
        self.advance_to(self.now.saturating_add(d));
    }

    /// Runs the clock to `until`, firing every deadline on the way at its own instant, then
    /// leaves the clock at `until` (never back). Panics if the machine keeps asking for more than
    /// a million wake-ups.
    pub fn run_until(&mut self, until: Instant) {
        for _ in 0..1_000_000u32 {
            match self.deadline() {
                Some(d) if d <= until => {
                    self.now = self.now.max(d);
                    self.fire();
                }
                _ => {
                    self.now = self.now.max(until);
                    return;
                }
            }
        }
        panic!("{:?}: a million wake-ups before {until:?}", self);
    }

    /// [`Driven::run_until`] `d` from now.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now.saturating_add(d));
    }

    /// Fires deadlines (at their instants) until the machine has none, up to a million.
    pub fn run_to_end(&mut self) {
        for _ in 0..1_000_000u32 {
            match self.deadline() {
                Some(d) => {
                    self.now = self.now.max(d);
                    self.fire();
                }
                None => return,
            }
        }
        panic!("{:?}: still asking for wake-ups after a million", self);
    }

    /// Takes every output recorded so far.
    pub fn take(&mut self) -> Recorder<M::Event> {
        self.out.take()
    }

    /// Takes the transmits recorded so far (the other outputs stay).
    pub fn take_transmits(&mut self) -> Vec<(Transmit, Vec<u8>)> {
        self.out.take_transmits()
    }

    /// Takes the intents recorded so far (the other outputs stay).
    pub fn take_ops(&mut self) -> Vec<SocketOp> {
        self.out.take_ops()
    }

    /// Takes the events recorded so far (the other outputs stay).
    pub fn take_events(&mut self) -> Vec<M::Event> {
        self.out.take_events()
    }
}

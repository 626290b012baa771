//! Type erasure: any [`Machine`] behind one object-safe trait, its events kept typed for
//! [`crate::Sim::take_events`].

use core::any::Any;
use core::fmt::Debug;
use core::net::SocketAddr;
use core::ops::ControlFlow;

use p2pd_proto::testing::{Checked, ContractChecker};
use p2pd_proto::{
    drain, Instant, Machine, Outputs, SocketId, SocketOp, SocketOutcome, Transmit, Verdict,
};

/// One output of a machine, in the order it was drained.
#[derive(Debug)]
pub(crate) enum Output {
    Transmit {
        socket: SocketId,
        destination: SocketAddr,
        data: Vec<u8>,
    },
    Op(SocketOp),
}

/// A machine with its event type erased.
pub(crate) trait Node {
    fn handle_datagram(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        data: &[u8],
    ) -> Verdict;
    fn handle_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict;
    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome);
    fn handle_timeout(&mut self, now: Instant);
    /// A command is about to be given to the machine at `now` (for the contract checker).
    fn command(&mut self, now: Instant);
    /// Drains transmits and socket intents into `out` (events stay inside, typed) and returns the
    /// next deadline.
    fn drain(&mut self, buf: &mut [u8], out: &mut Vec<Output>) -> Option<Instant>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// A machine, the events it reported that nobody has taken yet, and the contract checker that
/// watches everything it does (a violation stops the simulation with its seed).
pub(crate) struct Typed<M: Machine> {
    pub(crate) machine: M,
    pub(crate) events: Vec<M::Event>,
    checker: ContractChecker<M::Event>,
    /// The last input was `handle_timeout` at this instant.
    timed_out: Option<Instant>,
}

impl<M: Machine> Typed<M>
where
    M::Event: Debug,
{
    /// Wraps `machine` with a fresh checker.
    pub(crate) fn new(machine: M) -> Self {
        Typed {
            machine,
            events: Vec::new(),
            checker: ContractChecker::new(core::any::type_name::<M>(), |_| false),
            timed_out: None,
        }
    }
}

struct Sink<'a, E> {
    out: &'a mut Vec<Output>,
    events: &'a mut Vec<E>,
}

impl<M: Machine> Outputs<M> for Sink<'_, M::Event> {
    fn transmit(&mut self, transmit: Transmit, bytes: &[u8]) {
        self.out.push(Output::Transmit {
            socket: transmit.socket,
            destination: transmit.destination,
            data: bytes.to_vec(),
        });
    }

    fn socket_op(&mut self, op: SocketOp) {
        self.out.push(Output::Op(op));
    }

    fn event(&mut self, _: &mut M, event: M::Event) -> ControlFlow<()> {
        self.events.push(event);
        ControlFlow::Continue(())
    }
}

impl<M> Node for Typed<M>
where
    M: Machine + 'static,
    M::Event: Debug + 'static,
{
    fn handle_datagram(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        data: &[u8],
    ) -> Verdict {
        self.checker.input(now);
        self.timed_out = None;
        self.machine.handle_datagram(now, socket, from, data)
    }

    fn handle_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        self.checker.input(now);
        self.timed_out = None;
        self.machine.handle_stream(now, socket, data)
    }

    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        self.checker.input(now);
        self.checker.outcome(socket, &outcome);
        self.timed_out = None;
        self.machine.handle_socket_result(now, socket, outcome);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.checker.timeout_input(now);
        self.timed_out = Some(now);
        self.machine.handle_timeout(now);
    }

    fn command(&mut self, now: Instant) {
        self.checker.input(now);
        self.timed_out = None;
    }

    fn drain(&mut self, buf: &mut [u8], out: &mut Vec<Output>) -> Option<Instant> {
        let mut sink = Sink {
            out,
            events: &mut self.events,
        };
        let mut checked = Checked {
            checker: &mut self.checker,
            inner: &mut sink,
        };
        // The sink never breaks.
        let next = drain(&mut self.machine, buf, &mut checked)
            .continue_value()
            .flatten();
        if let Some(now) = self.timed_out.take() {
            self.checker.deadline(now, next, true);
        }
        next
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

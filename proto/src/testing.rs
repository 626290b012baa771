//! Test support shared by unit tests, the simulator and every fuzz target (feature `testing`):
//! [`ContractChecker`], which checks the invariants written on [`Machine`], [`Checked`], which
//! runs that check on everything a [`drain`] delivers, [`Recorder`], outputs kept in vectors,
//! [`Driven`], one machine on a virtual clock with checked drains, [`Pair`], two machines on an
//! in-memory network (UDP and TCP) with checked drains, and [`SocketTable`], the sockets a runtime
//! holds for a machine (for fuzz targets that answer intents themselves). [`codec`] holds the
//! STUN codec's properties, checked on any bytes by its property tests and its fuzz target.
//!
//! Violations panic with a message that names the machine and the rule, so a unit test fails, a
//! fuzz target reports a crash and the simulator stops with its seed.
//!
//! ```
//! use p2pd_proto::client::{ClientConfig, ClientEvent, Request, StunClient};
//! use p2pd_proto::testing::{ContractChecker, Recorder};
//! use p2pd_proto::{Instant, Machine, SocketOp, SocketOutcome, TRANSMIT_BUFFER_LEN};
//!
//! let mut client = StunClient::new(ClientConfig::default(), 7);
//! let mut checker = ContractChecker::new("stun client", |_: &ClientEvent| false);
//! let mut out = Recorder::default();
//! let mut buf = [0u8; TRANSMIT_BUFFER_LEN];
//! let now = Instant::ZERO;
//! checker.input(now);
//! let socket = client.open_socket(now, "0.0.0.0:0".parse().unwrap(), Default::default()).unwrap();
//! let _ = checker.drain(&mut client, &mut buf, &mut out);
//! assert!(matches!(out.ops[..], [SocketOp::Bind { .. }]));
//! checker.input(now);
//! checker.outcome(socket, &SocketOutcome::Bound { local: "192.0.2.1:4000".parse().unwrap() });
//! client.handle_socket_result(now, socket, SocketOutcome::Bound { local: "192.0.2.1:4000".parse().unwrap() });
//! client.close(now);
//! let _ = checker.drain(&mut client, &mut buf, &mut out);
//! checker.assert_all_closed();
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::ops::ControlFlow;
use std::vec::Vec;

use crate::machine::{drain, Machine, Outputs, SocketId, SocketOp, SocketOutcome, Transmit};
use crate::time::Instant;

pub mod codec;
mod driven;
mod pair;
mod sockets;

pub use driven::{Answer, Driven};
pub use pair::{Pair, Side};
pub use sockets::{SocketState, SocketTable};

/// How many closed socket ids a [`ContractChecker`] remembers (to catch output on a socket after
/// its `Close`): the most recent ones, so the checker's memory does not grow with the machine's
/// lifetime (a soak test measures the heap with it running).
pub const REMEMBERED_CLOSES: usize = 128;

/// The last [`REMEMBERED_CLOSES`] closed socket ids, in a fixed ring.
#[derive(Debug)]
struct Closed {
    ids: [Option<SocketId>; REMEMBERED_CLOSES],
    next: usize,
}

impl Default for Closed {
    fn default() -> Self {
        Closed {
            ids: [None; REMEMBERED_CLOSES],
            next: 0,
        }
    }
}

impl Closed {
    fn insert(&mut self, socket: SocketId) {
        if let Some(slot) = self.ids.get_mut(self.next) {
            *slot = Some(socket);
        }
        self.next = self
            .next
            .wrapping_add(1)
            .checked_rem(REMEMBERED_CLOSES)
            .unwrap_or(0);
    }

    fn remove(&mut self, socket: SocketId) {
        for slot in &mut self.ids {
            if *slot == Some(socket) {
                *slot = None;
            }
        }
    }

    fn contains(&self, socket: SocketId) -> bool {
        self.ids.contains(&Some(socket))
    }
}

/// Where one socket the machine opened stands, as the checker sees it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Owned {
    /// A `Bind` was emitted and not answered yet: the machine must close it.
    Binding,
    /// The `Bind` was answered `Bound`: the machine must close it.
    Bound,
    /// The `Bind` was answered with a failure before it was bound: the runtime holds nothing, so
    /// closing it (once) is allowed, not required.
    BindFailed,
    /// An `Accept` was emitted and has not completed: closing it is allowed, not required.
    Accepting,
    /// The `Accept` completed (`Accepted`): the machine must close it.
    Accepted,
    /// `Accepted` arrived for an id with no outstanding `Accept` (a runtime's mistake, or a fuzz
    /// target's): the machine may close it once or ignore it.
    Unasked,
}

impl Owned {
    /// Whether the machine must still close the socket.
    fn must_close(self) -> bool {
        matches!(self, Owned::Binding | Owned::Bound | Owned::Accepted)
    }
}

/// Checks the contract's invariants on one machine (see [`Machine`]): monotonic `now`, timeouts
/// that make progress, exactly one `Close` per socket the machine opened and nothing on it after,
/// and nothing at all after the final event.
///
/// Feed it every input's time ([`ContractChecker::input`]), every outcome handed to the machine
/// ([`ContractChecker::outcome`]), and every output, most simply by draining through
/// [`ContractChecker::drain`]. Each violation panics.
///
/// Two cases need no `Close`, as the runtime holds no socket for them: an `Accept` that failed
/// before it completed (closing it is a violation), and a `Bind` answered with a failure before
/// it was bound (closing it once is allowed). An `Accepted` for an id the machine has no
/// outstanding `Accept` for (which a runtime does not send, but fuzz targets do) may be closed
/// once or ignored. After the final event, the Close of a stream whose outstanding `Accept`
/// completed after it is the one output still allowed (and owed). A socket the machine hands to its caller (the puncher's winning stream,
/// a released probe socket) leaves its responsibility through [`ContractChecker::released`].
pub struct ContractChecker<E> {
    name: &'static str,
    is_final: fn(&E) -> bool,
    last_now: Option<Instant>,
    /// Sockets opened by this machine and not yet closed.
    owned: BTreeMap<SocketId, Owned>,
    /// Sockets this machine closed (an id leaves the set when a new intent reopens it), the last
    /// [`REMEMBERED_CLOSES`] of them, so a long-running machine's checker stays bounded.
    /// A ring: fixed size, so the checker allocates nothing for it (allocation-counting tests
    /// drain through it).
    closed: Closed,
    /// Sockets handed to the caller (an id leaves the set when a new intent reopens it).
    released: BTreeSet<SocketId>,
    /// Accepts completed after the final event: their Close is the one intent still allowed.
    late: BTreeSet<SocketId>,
    /// The final event was seen.
    finished: bool,
    /// `handle_timeout` calls at the current `now` whose drain left a deadline not after `now`.
    due_again: u32,
    closes: u64,
}

impl<E: Debug> ContractChecker<E> {
    /// A checker for the machine called `name` in messages; `is_final` tells its final event
    /// (`Closed`, `Finished`...). Use `|_| false` for a machine that has none.
    pub fn new(name: &'static str, is_final: fn(&E) -> bool) -> Self {
        ContractChecker {
            name,
            is_final,
            last_now: None,
            owned: BTreeMap::new(),
            closed: Closed::default(),
            released: BTreeSet::new(),
            late: BTreeSet::new(),
            finished: false,
            due_again: 0,
            closes: 0,
        }
    }

    /// An input (a `handle_*` call other than `handle_timeout`, or a command) is about to be given
    /// at `now`: time must not go backwards.
    pub fn input(&mut self, now: Instant) {
        self.timeout_input(now);
        // New input may make something due at once again.
        self.due_again = 0;
    }

    /// `handle_timeout(now)` is about to be called: time must not go backwards. Pass the drain's
    /// result to [`ContractChecker::deadline`] with `after_timeout` set.
    pub fn timeout_input(&mut self, now: Instant) {
        if let Some(last) = self.last_now {
            assert!(
                now >= last,
                "{}: time went backwards: {now:?} after {last:?}",
                self.name
            );
            if now > last {
                self.due_again = 0;
            }
        }
        self.last_now = Some(now);
    }

    /// `outcome` is about to be handed to the machine for `socket`.
    pub fn outcome(&mut self, socket: SocketId, outcome: &SocketOutcome) {
        match outcome {
            SocketOutcome::Accepted { .. } => match self.owned.get_mut(&socket) {
                Some(state) => {
                    if *state == Owned::Accepting {
                        *state = Owned::Accepted;
                        if self.finished {
                            self.late.insert(socket);
                        }
                    }
                }
                None => {
                    self.owned.insert(socket, Owned::Unasked);
                    self.closed.remove(socket);
                    self.released.remove(&socket);
                    if self.finished {
                        self.late.insert(socket);
                    }
                }
            },
            SocketOutcome::Bound { .. } => {
                if let Some(state) = self.owned.get_mut(&socket) {
                    if *state == Owned::Binding {
                        *state = Owned::Bound;
                    }
                }
            }
            // A bind that failed leaves no socket: closing it is allowed, not required.
            SocketOutcome::Failed {
                op: crate::OpKind::Bind,
                ..
            } => {
                if let Some(state) = self.owned.get_mut(&socket) {
                    if *state == Owned::Binding {
                        *state = Owned::BindFailed;
                    }
                }
            }
            // An accept that never completed need not be closed.
            SocketOutcome::Failed {
                op: crate::OpKind::Accept,
                ..
            } if self.owned.get(&socket) == Some(&Owned::Accepting) => {
                self.owned.remove(&socket);
            }
            _ => {}
        }
    }

    /// The machine handed `socket` to its caller (for example the puncher's winning stream in
    /// its `Connected` event, or `TcpBinding::release_socket`): the caller closes it now. The
    /// machine must not close it or name it in any output again, until a new `Bind`/`Accept`
    /// reuses the id.
    pub fn released(&mut self, socket: SocketId) {
        assert!(
            self.owned.remove(&socket).is_some(),
            "{}: {socket} handed over, but this machine does not hold it",
            self.name
        );
        self.released.insert(socket);
    }

    /// The machine emitted `transmit`.
    pub fn transmit(&mut self, transmit: &Transmit) {
        assert!(
            !self.finished,
            "{}: transmit on {} after the final event",
            self.name, transmit.socket
        );
        assert!(
            !self.closed.contains(transmit.socket),
            "{}: transmit on {} after its Close",
            self.name,
            transmit.socket
        );
        assert!(
            !self.released.contains(&transmit.socket),
            "{}: transmit on {} after it was handed to the caller",
            self.name,
            transmit.socket
        );
    }

    /// The machine emitted `op`.
    pub fn socket_op(&mut self, op: &SocketOp) {
        // The one intent allowed after the end: the Close of a stream the runtime handed over
        // after it (an `Accepted` for an accept that was outstanding when the machine closed).
        let late_close = matches!(op, SocketOp::Close { socket } if self.late.contains(socket));
        assert!(
            !self.finished || late_close,
            "{}: intent after the final event: {op:?}",
            self.name
        );
        let socket = op.socket();
        match *op {
            SocketOp::Bind { .. } | SocketOp::Accept { .. } => {
                assert!(
                    self.owned
                        .get(&socket)
                        .is_none_or(|s| matches!(s, Owned::BindFailed | Owned::Unasked)),
                    "{}: {op:?} names {socket}, which is still open",
                    self.name
                );
                self.closed.remove(socket);
                self.released.remove(&socket);
                let state = if matches!(op, SocketOp::Bind { .. }) {
                    Owned::Binding
                } else {
                    Owned::Accepting
                };
                self.owned.insert(socket, state);
            }
            SocketOp::Close { .. } => {
                assert!(
                    !self.closed.contains(socket),
                    "{}: second Close of {socket}",
                    self.name
                );
                assert!(
                    !self.released.contains(&socket),
                    "{}: Close of {socket} after it was handed to the caller",
                    self.name
                );
                assert!(
                    self.owned.remove(&socket).is_some(),
                    "{}: Close of {socket}, which this machine never opened",
                    self.name
                );
                self.closed.insert(socket);
                self.late.remove(&socket);
                self.closes = self.closes.saturating_add(1);
            }
            _ => {
                assert!(
                    !self.closed.contains(socket),
                    "{}: {op:?} after the Close of {socket}",
                    self.name
                );
                assert!(
                    !self.released.contains(&socket),
                    "{}: {op:?} after {socket} was handed to the caller",
                    self.name
                );
            }
        }
    }

    /// The machine reported `event`.
    pub fn event(&mut self, event: &E) {
        assert!(
            !self.finished,
            "{}: event after the final event: {event:?}",
            self.name
        );
        if (self.is_final)(event) {
            self.finished = true;
        }
    }

    /// The machine's deadline after a full drain. `after_timeout` says whether the input was
    /// `handle_timeout(now)`: a machine may ask once more for the same instant (a timer whose
    /// action is due at once), never a second time, or a loop would spin.
    pub fn deadline(&mut self, now: Instant, next: Option<Instant>, after_timeout: bool) {
        if self.finished {
            assert!(
                next.is_none(),
                "{}: a deadline ({next:?}) after the final event",
                self.name
            );
        }
        if !after_timeout {
            return;
        }
        if next.is_some_and(|t| t <= now) {
            self.due_again = self.due_again.saturating_add(1);
            assert!(
                self.due_again < 2,
                "{}: poll_timeout {next:?} <= now {now:?} after two handle_timeout(now): the \
                 caller would spin",
                self.name
            );
        } else {
            self.due_again = 0;
        }
    }

    /// Drains `machine` into `outputs` through [`crate::drain`], checking every output, then the
    /// deadline (as after an input that was not a timeout). Returns what the drain returned.
    pub fn drain<M, O>(
        &mut self,
        machine: &mut M,
        buf: &mut [u8],
        outputs: &mut O,
    ) -> ControlFlow<(), Option<Instant>>
    where
        M: Machine<Event = E> + ?Sized,
        O: Outputs<M> + ?Sized,
    {
        let flow = drain(
            machine,
            buf,
            &mut Checked {
                checker: self,
                inner: outputs,
            },
        );
        if let (ControlFlow::Continue(next), Some(now)) = (flow, self.last_now) {
            self.deadline(now, next, false);
        }
        flow
    }

    /// `handle_timeout(now)` then a checked drain, twice at most if the machine asks for the same
    /// instant again: what a runtime does when a deadline passes.
    pub fn timeout<M, O>(
        &mut self,
        machine: &mut M,
        now: Instant,
        buf: &mut [u8],
        outputs: &mut O,
    ) -> ControlFlow<(), Option<Instant>>
    where
        M: Machine<Event = E> + ?Sized,
        O: Outputs<M> + ?Sized,
    {
        let mut flow = ControlFlow::Continue(None);
        for _ in 0..2 {
            self.timeout_input(now);
            machine.handle_timeout(now);
            flow = drain(
                machine,
                buf,
                &mut Checked {
                    checker: self,
                    inner: outputs,
                },
            );
            let ControlFlow::Continue(next) = flow else {
                return flow;
            };
            self.deadline(now, next, true);
            if next.is_none_or(|t| t > now) {
                break;
            }
        }
        flow
    }

    /// Whether the final event was seen.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Sockets the machine opened and must still close (accepts that never completed and binds
    /// that failed excluded).
    pub fn open_sockets(&self) -> Vec<SocketId> {
        self.owned
            .iter()
            .filter(|(_, s)| s.must_close())
            .map(|(id, _)| *id)
            .collect()
    }

    /// How many `Close` intents the machine emitted.
    pub fn closes(&self) -> u64 {
        self.closes
    }

    /// Panics unless every socket the machine opened was closed (once).
    pub fn assert_all_closed(&self) {
        let open = self.open_sockets();
        assert!(
            open.is_empty(),
            "{}: sockets never closed: {open:?}",
            self.name
        );
    }
}

/// [`Outputs`] that checks every output with a [`ContractChecker`] before passing it on.
pub struct Checked<'a, E, O: ?Sized> {
    /// The checker.
    pub checker: &'a mut ContractChecker<E>,
    /// Where the outputs go after the check.
    pub inner: &'a mut O,
}

impl<M, O> Outputs<M> for Checked<'_, M::Event, O>
where
    M: Machine + ?Sized,
    M::Event: Debug,
    O: Outputs<M> + ?Sized,
{
    fn transmit(&mut self, transmit: Transmit, bytes: &[u8]) {
        self.checker.transmit(&transmit);
        self.inner.transmit(transmit, bytes);
    }

    fn socket_op(&mut self, op: SocketOp) {
        self.checker.socket_op(&op);
        self.inner.socket_op(op);
    }

    fn event(&mut self, machine: &mut M, event: M::Event) -> ControlFlow<()> {
        self.checker.event(&event);
        self.inner.event(machine, event)
    }

    fn outcome(&mut self) -> Option<(Instant, SocketId, SocketOutcome)> {
        let (now, socket, outcome) = self.inner.outcome()?;
        self.checker.input(now);
        self.checker.outcome(socket, &outcome);
        Some((now, socket, outcome))
    }

    fn settle(&mut self) -> bool {
        self.inner.settle()
    }
}

/// The `which`-th of `items`, wrapping around (`None` if there are none): how fuzz targets pick
/// one of the sockets, transactions or messages they know from an arbitrary byte.
pub fn pick<T: Copy>(items: &[T], which: impl Into<usize>) -> Option<T> {
    let n = items.len();
    if n == 0 {
        return None;
    }
    items.get(which.into().checked_rem(n)?).copied()
}

/// Outputs kept in vectors, in the order the drain delivered them; [`Recorder::into_outputs`]
/// interleaves them again.
#[derive(Debug)]
pub struct Recorder<E> {
    /// Transmits with their payloads.
    pub transmits: Vec<(Transmit, Vec<u8>)>,
    /// Socket intents.
    pub ops: Vec<SocketOp>,
    /// Events.
    pub events: Vec<E>,
    /// The kind of every output, in drain order.
    order: Vec<Kind>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Kind {
    Transmit,
    Op,
    Event,
}

/// One output of a drain, as [`Recorder::into_outputs`] gives them back.
#[derive(Debug)]
pub enum Output<E> {
    /// A transmit with its payload.
    Transmit(Transmit, Vec<u8>),
    /// A socket intent.
    Op(SocketOp),
    /// An event.
    Event(E),
}

impl<E> Default for Recorder<E> {
    fn default() -> Self {
        Recorder {
            transmits: Vec::new(),
            ops: Vec::new(),
            events: Vec::new(),
            order: Vec::new(),
        }
    }
}

impl<E> Recorder<E> {
    /// Takes everything recorded so far.
    pub fn take(&mut self) -> Recorder<E> {
        core::mem::take(self)
    }

    /// Takes the transmits recorded so far (the other outputs stay).
    pub fn take_transmits(&mut self) -> Vec<(Transmit, Vec<u8>)> {
        self.order.retain(|k| *k != Kind::Transmit);
        core::mem::take(&mut self.transmits)
    }

    /// Takes the intents recorded so far (the other outputs stay).
    pub fn take_ops(&mut self) -> Vec<SocketOp> {
        self.order.retain(|k| *k != Kind::Op);
        core::mem::take(&mut self.ops)
    }

    /// Takes the events recorded so far (the other outputs stay).
    pub fn take_events(&mut self) -> Vec<E> {
        self.order.retain(|k| *k != Kind::Event);
        core::mem::take(&mut self.events)
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.transmits.is_empty() && self.ops.is_empty() && self.events.is_empty()
    }

    /// Every output, in the order the machine produced them (outputs pushed into the vectors
    /// directly come last).
    pub fn into_outputs(self) -> Vec<Output<E>> {
        let mut transmits = self.transmits.into_iter();
        let mut ops = self.ops.into_iter();
        let mut events = self.events.into_iter();
        let mut out: Vec<Output<E>> = self
            .order
            .iter()
            .filter_map(|kind| match kind {
                Kind::Transmit => transmits.next().map(|(t, b)| Output::Transmit(t, b)),
                Kind::Op => ops.next().map(Output::Op),
                Kind::Event => events.next().map(Output::Event),
            })
            .collect();
        out.extend(transmits.map(|(t, b)| Output::Transmit(t, b)));
        out.extend(ops.map(Output::Op));
        out.extend(events.map(Output::Event));
        out
    }

    fn push_transmit(&mut self, transmit: Transmit, bytes: &[u8]) {
        self.transmits.push((transmit, bytes.to_vec()));
        self.order.push(Kind::Transmit);
    }

    fn push_op(&mut self, op: SocketOp) {
        self.ops.push(op);
        self.order.push(Kind::Op);
    }

    fn push_event(&mut self, event: E) {
        self.events.push(event);
        self.order.push(Kind::Event);
    }
}

impl<M> Outputs<M> for Recorder<M::Event>
where
    M: Machine + ?Sized,
{
    fn transmit(&mut self, transmit: Transmit, bytes: &[u8]) {
        self.push_transmit(transmit, bytes);
    }

    fn socket_op(&mut self, op: SocketOp) {
        self.push_op(op);
    }

    fn event(&mut self, _: &mut M, event: M::Event) -> ControlFlow<()> {
        self.push_event(event);
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests;

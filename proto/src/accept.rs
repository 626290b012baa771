//! A bounded pool of accepted TCP connections behind one listener, for server machines.
//!
//! [`AcceptPool`] owns the listener's state and a fixed table of connection slots. The machine
//! names accepted sockets: slot `i` is `SocketId(first_socket + i)`, and the pool keeps one
//! [`SocketOp::Accept`] outstanding per free slot while the listener is up. A slot is
//!
//! - **idle**: no accept outstanding; it asks again at once, or at its retry time after an accept
//!   failed ([`ACCEPT_RETRY`]);
//! - **accepting**: its `Accept` intent is out;
//! - **open**: a connected stream with an idle deadline, refreshed by [`AcceptPool::touch`].
//!
//! Every accepted socket gets exactly one [`SocketOp::Close`]: when the machine closes the slot
//! ([`AcceptPool::close`], [`AcceptPool::close_all`]), or at once when an `Accepted` arrives for a
//! slot that no longer waits for it. An accept that never got `Accepted` gets no close.
//!
//! Each slot carries a value `C` ([`SlotData`]) built once, when the pool is built, and reset when
//! the slot opens and when it closes: a reassembly buffer allocated up front makes serving a
//! connection allocation-free. The pool itself never allocates after construction; intents go to
//! the caller's queue.
//!
//! The caller routes every [`AcceptPool::handle_result`] through the pool first and acts on the
//! returned [`PoolEvent`] (events, counters, dropping queued output for a closed slot).

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::VecDeque;

use crate::machine::{BindOptions, IoError, OpKind, SocketId, SocketOp, SocketOutcome, Transport};
use crate::time::Instant;

/// How long a slot waits before asking again after an accept failed.
pub const ACCEPT_RETRY: Duration = Duration::from_secs(1);

/// Per-slot state kept across connections (for example a reassembly buffer).
pub trait SlotData {
    /// Forgets the previous connection's bytes; called when the slot opens and when it closes.
    fn reset(&mut self);
}

impl SlotData for () {
    fn reset(&mut self) {}
}

/// The pool's settings.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// The listener's socket id.
    pub listener: SocketId,
    /// The socket id of slot 0; slot `i` is `first_socket + i`.
    pub first_socket: u32,
    /// How many slots (0: no TCP).
    pub capacity: usize,
    /// An open connection not touched for this long is expired ([`AcceptPool::is_expired`]).
    pub idle_timeout: Duration,
    /// The listen backlog.
    pub backlog: u32,
}

/// The listener's state.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Listener {
    /// Not asked for (or closed).
    Absent,
    /// The bind intent is out.
    Binding,
    /// Bound and asked to listen.
    Bound(SocketAddr),
    /// The bind failed (or, for a TCP listener, the listen): the socket serves nothing.
    Failed,
}

/// An open connection's addresses and idle deadline.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Conn {
    /// The accepted socket's local address.
    pub local: SocketAddr,
    /// The peer.
    pub remote: SocketAddr,
    /// When the connection expires unless touched.
    pub idle_deadline: Instant,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum SlotState {
    Idle { retry_at: Option<Instant> },
    Accepting,
    Open(Conn),
}

#[derive(Debug)]
struct Slot<C> {
    state: SlotState,
    data: C,
}

/// What [`AcceptPool::handle_result`] did with an outcome.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PoolEvent {
    /// The socket is neither the listener nor a slot: the caller handles it.
    NotMine,
    /// Handled; nothing to report.
    Nothing,
    /// The listener is bound; the pool asked it to listen and asked for connections.
    Listening(SocketAddr),
    /// The listener could not be bound (`op` Bind) or could not listen (`op` Listen; its close is
    /// queued). No connections will be accepted.
    ListenerFailed {
        /// Which step failed.
        op: OpKind,
        /// Why.
        error: IoError,
    },
    /// Slot `index` opened for an accepted stream.
    Opened(usize),
    /// Open slot `index` saw its peer close or an error: the caller closes it
    /// ([`AcceptPool::close`]). `send_failed`: the error was a failed send.
    Ended {
        /// The slot.
        index: usize,
        /// Whether the outcome was a send failure.
        send_failed: bool,
    },
}

/// A listener and a bounded table of accepted connections. See the module docs.
#[derive(Debug)]
pub struct AcceptPool<C> {
    config: PoolConfig,
    listener: Listener,
    slots: Box<[Slot<C>]>,
}

impl<C: SlotData> AcceptPool<C> {
    /// A pool of `config.capacity` idle slots, each with data from `make`. The listener is absent
    /// until [`AcceptPool::bind`].
    pub fn new(config: PoolConfig, mut make: impl FnMut() -> C) -> Self {
        let slots = (0..config.capacity)
            .map(|_| Slot {
                state: SlotState::Idle { retry_at: None },
                data: make(),
            })
            .collect();
        AcceptPool {
            config,
            listener: Listener::Absent,
            slots,
        }
    }

    /// How many slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The listener's state.
    pub fn listener(&self) -> Listener {
        self.listener
    }

    /// The listener's bound address, once bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self.listener {
            Listener::Bound(a) => Some(a),
            _ => None,
        }
    }

    /// The socket id of slot `index`.
    pub fn socket(&self, index: usize) -> SocketId {
        slot_socket(self.config.first_socket, index)
    }

    /// The slot a socket id names (open or not).
    pub fn slot_of(&self, socket: SocketId) -> Option<usize> {
        let index = usize::try_from(socket.0.checked_sub(self.config.first_socket)?).ok()?;
        (index < self.slots.len()).then_some(index)
    }

    /// The open slot a socket id names.
    pub fn open_index(&self, socket: SocketId) -> Option<usize> {
        let index = self.slot_of(socket)?;
        self.get(index).map(|_| index)
    }

    /// Open slot `index`: its connection and data.
    pub fn get(&self, index: usize) -> Option<(Conn, &C)> {
        match self.slots.get(index)? {
            Slot {
                state: SlotState::Open(conn),
                data,
            } => Some((*conn, data)),
            _ => None,
        }
    }

    /// Open slot `index`: its connection and data, mutably.
    pub fn get_mut(&mut self, index: usize) -> Option<(Conn, &mut C)> {
        match self.slots.get_mut(index)? {
            Slot {
                state: SlotState::Open(conn),
                data,
            } => Some((*conn, data)),
            _ => None,
        }
    }

    /// Like [`AcceptPool::get_mut`], after pushing the idle deadline to `now + idle_timeout`.
    pub fn touch(&mut self, now: Instant, index: usize) -> Option<(Conn, &mut C)> {
        let idle = self.config.idle_timeout;
        match self.slots.get_mut(index)? {
            Slot {
                state: SlotState::Open(conn),
                data,
            } => {
                conn.idle_deadline = now.saturating_add(idle);
                Some((*conn, data))
            }
            _ => None,
        }
    }

    /// How many slots are open.
    pub fn open_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.state, SlotState::Open(_)))
            .count()
    }

    /// Whether slot `index` is open and its idle deadline has come.
    pub fn is_expired(&self, index: usize, now: Instant) -> bool {
        self.get(index)
            .is_some_and(|(conn, _)| now >= conn.idle_deadline)
    }

    /// The earliest idle deadline or accept retry (retries only while listening).
    pub fn next_deadline(&self) -> Option<Instant> {
        let listening = matches!(self.listener, Listener::Bound(_));
        self.slots
            .iter()
            .filter_map(|s| match s.state {
                SlotState::Open(conn) => Some(conn.idle_deadline),
                SlotState::Idle { retry_at: Some(at) } if listening => Some(at),
                _ => None,
            })
            .min()
    }

    /// Asks for the listener: queues its TCP bind on `local`.
    pub fn bind(&mut self, local: SocketAddr, options: BindOptions, ops: &mut VecDeque<SocketOp>) {
        self.listener = Listener::Binding;
        ops.push_back(SocketOp::Bind {
            socket: self.config.listener,
            transport: Transport::Tcp,
            local,
            options,
        });
    }

    /// Handles an outcome for the listener or a slot; anything else is [`PoolEvent::NotMine`].
    pub fn handle_result(
        &mut self,
        now: Instant,
        socket: SocketId,
        outcome: SocketOutcome,
        ops: &mut VecDeque<SocketOp>,
    ) -> PoolEvent {
        if socket == self.config.listener {
            return self.listener_result(now, outcome, ops);
        }
        let Some(index) = self.slot_of(socket) else {
            return PoolEvent::NotMine;
        };
        let Some(slot) = self.slots.get_mut(index) else {
            return PoolEvent::NotMine;
        };
        match outcome {
            SocketOutcome::Accepted { local, remote } => match slot.state {
                SlotState::Accepting => {
                    slot.state = SlotState::Open(Conn {
                        local,
                        remote,
                        idle_deadline: now.saturating_add(self.config.idle_timeout),
                    });
                    slot.data.reset();
                    return PoolEvent::Opened(index);
                }
                // A stream we did not (or no longer) wait for is still ours to close, once.
                SlotState::Idle { .. } => ops.push_back(SocketOp::Close { socket }),
                SlotState::Open(_) => {}
            },
            SocketOutcome::Failed {
                op: OpKind::Accept, ..
            } if slot.state == SlotState::Accepting => {
                slot.state = SlotState::Idle {
                    retry_at: Some(now.saturating_add(ACCEPT_RETRY)),
                };
            }
            SocketOutcome::PeerClosed | SocketOutcome::Failed { .. }
                if matches!(slot.state, SlotState::Open(_)) =>
            {
                let send_failed = matches!(
                    outcome,
                    SocketOutcome::Failed {
                        op: OpKind::Send,
                        ..
                    }
                );
                return PoolEvent::Ended { index, send_failed };
            }
            _ => {}
        }
        PoolEvent::Nothing
    }

    fn listener_result(
        &mut self,
        now: Instant,
        outcome: SocketOutcome,
        ops: &mut VecDeque<SocketOp>,
    ) -> PoolEvent {
        match outcome {
            SocketOutcome::Bound { local } if self.listener == Listener::Binding => {
                self.listener = Listener::Bound(local);
                ops.push_back(SocketOp::Listen {
                    socket: self.config.listener,
                    backlog: self.config.backlog,
                });
                self.accept_idle(now, ops);
                PoolEvent::Listening(local)
            }
            SocketOutcome::Failed {
                op: op @ (OpKind::Bind | OpKind::Listen),
                error,
                ..
            } if matches!(self.listener, Listener::Binding | Listener::Bound(_)) => {
                if op == OpKind::Listen || matches!(self.listener, Listener::Bound(_)) {
                    // The socket exists (it was bound): it still needs its one close. (A bind
                    // failure reported after `Bound` is the runtime's mistake, but the socket it
                    // bound must not leak.)
                    ops.push_back(SocketOp::Close {
                        socket: self.config.listener,
                    });
                }
                self.listener = Listener::Failed;
                // No accept is outstanding any more: a late `Accepted` gets its close.
                for slot in self.slots.iter_mut() {
                    if !matches!(slot.state, SlotState::Open(_)) {
                        slot.state = SlotState::Idle { retry_at: None };
                    }
                }
                PoolEvent::ListenerFailed { op, error }
            }
            _ => PoolEvent::Nothing,
        }
    }

    /// Queues an accept for every idle slot whose retry time has come (only while listening).
    pub fn accept_idle(&mut self, now: Instant, ops: &mut VecDeque<SocketOp>) {
        if !matches!(self.listener, Listener::Bound(_)) {
            return;
        }
        let (listener, first) = (self.config.listener, self.config.first_socket);
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if let SlotState::Idle { retry_at } = slot.state {
                if retry_at.is_none_or(|t| now >= t) {
                    slot.state = SlotState::Accepting;
                    ops.push_back(SocketOp::Accept {
                        listener,
                        socket: slot_socket(first, index),
                    });
                }
            }
        }
    }

    /// Closes open slot `index`: queues its one close, frees the slot and asks for the next
    /// connection. Returns whether the slot was open (the caller then drops its queued output).
    pub fn close(&mut self, now: Instant, index: usize, ops: &mut VecDeque<SocketOp>) -> bool {
        let socket = self.socket(index);
        let Some(slot) = self.slots.get_mut(index) else {
            return false;
        };
        if !matches!(slot.state, SlotState::Open(_)) {
            return false;
        }
        slot.state = SlotState::Idle { retry_at: None };
        slot.data.reset();
        ops.push_back(SocketOp::Close { socket });
        self.accept_idle(now, ops);
        true
    }

    /// Shuts the pool: queues the close of every open slot, then of the listener if it exists,
    /// and asks for nothing more. Returns how many connections were closed.
    pub fn close_all(&mut self, ops: &mut VecDeque<SocketOp>) -> usize {
        let mut closed = 0usize;
        let first = self.config.first_socket;
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if matches!(slot.state, SlotState::Open(_)) {
                ops.push_back(SocketOp::Close {
                    socket: slot_socket(first, index),
                });
                closed = closed.saturating_add(1);
            }
            slot.state = SlotState::Idle { retry_at: None };
            slot.data.reset();
        }
        if matches!(self.listener, Listener::Binding | Listener::Bound(_)) {
            ops.push_back(SocketOp::Close {
                socket: self.config.listener,
            });
        }
        self.listener = Listener::Absent;
        closed
    }
}

/// The socket id of slot `index` in a pool whose slot 0 is `first`.
fn slot_socket(first: u32, index: usize) -> SocketId {
    let index = u32::try_from(index).unwrap_or(u32::MAX);
    SocketId(first.saturating_add(index))
}

#[cfg(test)]
mod tests;

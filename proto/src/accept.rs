//! A bounded, fair pool of accepted TCP connections behind one listener, for server machines.
//!
//! [`AcceptPool`] owns the listener's state and a fixed table of connection slots: one per
//! connection allowed ([`ConnectionLimits::max_connections`]) plus a spare. The machine names
//! accepted sockets: slot `i` is `SocketId(first_socket + i)`, and the pool keeps one
//! [`SocketOp::Accept`] outstanding per slot that is not open while the listener is up. At most
//! `max_connections` slots are open, so at least one accept is always outstanding: a newcomer is
//! never left in the kernel's backlog behind clients that hold every slot. A slot is
//!
//! - **idle**: no accept outstanding; it asks again at once, or at its retry time after an accept
//!   failed ([`ACCEPT_RETRY`]);
//! - **accepting**: its `Accept` intent is out;
//! - **open**: a connected stream.
//!
//! ## Fairness
//!
//! One source (a [`SourcePrefix`]: IPv4 address or IPv6 /64) must not lock others out, whether it
//! opens many idle connections or drips bytes on a few. So:
//!
//! - **Per-source cap.** A newcomer from a source that already holds
//!   [`ConnectionLimits::max_per_source`] connections replaces that source's own least active one
//!   (rather than being refused: a source behind a NAT keeps its newest connections, and nobody
//!   else loses anything).
//! - **Eviction when full.** A newcomer arriving while `max_connections` are open replaces the
//!   connection that has done least: from the source holding most connections, the one with
//!   fewest completed messages, then the one whose last completed message (or accept) is oldest.
//! - **Message deadline.** The machine tells the pool when bytes arrive
//!   ([`AcceptPool::bytes_arrived`]) and when a message is complete
//!   ([`AcceptPool::message_completed`]; the pool cannot parse). A message not complete within
//!   [`ConnectionLimits::message_timeout`] of its first byte expires the connection
//!   ([`Expiry::MessageTimeout`]), however many bytes keep trickling in.
//! - **Idle deadline.** A connection silent for [`ConnectionLimits::idle_timeout`] expires
//!   ([`Expiry::Idle`]); any byte pushes it back.
//!
//! The machine closes expired connections ([`AcceptPool::next_expired`], [`AcceptPool::close`]);
//! the pool closes evicted ones itself and reports them in [`PoolEvent::Opened`].
//!
//! Every accepted socket gets exactly one [`SocketOp::Close`]: when the machine closes the slot
//! ([`AcceptPool::close`], [`AcceptPool::close_all`]), when the pool evicts it, or at once when an
//! `Accepted` arrives for a slot that no longer waits for it. An accept that never got `Accepted`
//! gets no close.
//!
//! Each slot carries a value `C` ([`SlotData`]) built once, when the pool is built, and reset when
//! the slot opens and when it closes: a reassembly buffer allocated up front makes serving a
//! connection allocation-free. The pool itself never allocates after construction (it scans its
//! fixed table instead of keeping maps); intents go to the caller's queue.
//!
//! The caller routes every [`AcceptPool::handle_result`] through the pool first and acts on the
//! returned [`PoolEvent`] (events, counters, dropping queued output for a closed slot).

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::VecDeque;

use crate::machine::{BindOptions, IoError, OpKind, SocketId, SocketOp, SocketOutcome, Transport};
use crate::time::Instant;

mod limits;

pub use limits::{ConnectionLimits, LimitsError, SourcePrefix};

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
    /// The socket id of slot 0; slot `i` is `first_socket + i` (`max_connections + 1` slots).
    pub first_socket: u32,
    /// How many connections, how many per source, the message and idle deadlines.
    pub limits: ConnectionLimits,
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

/// An open connection: its addresses, deadlines and what it has done.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Conn {
    /// The accepted socket's local address.
    pub local: SocketAddr,
    /// The peer.
    pub remote: SocketAddr,
    /// When the connection expires unless bytes arrive.
    pub idle_deadline: Instant,
    /// When the message in progress must be complete (`None`: no message in progress).
    pub message_deadline: Option<Instant>,
    /// Messages completed on this connection.
    pub messages: u64,
    /// When the last message completed, or the connection opened if none has.
    pub last_progress: Instant,
}

/// Why an open connection expired ([`AcceptPool::next_expired`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Expiry {
    /// Nothing arrived for [`ConnectionLimits::idle_timeout`].
    Idle,
    /// A message was not complete [`ConnectionLimits::message_timeout`] after its first byte.
    MessageTimeout,
}

/// Why the pool closed an open connection to make room for a newcomer.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum EvictReason {
    /// The newcomer's source was at [`ConnectionLimits::max_per_source`]: one of its own
    /// connections made room.
    SourceFull,
    /// All [`ConnectionLimits::max_connections`] were open.
    PoolFull,
}

/// A connection the pool closed (its close intent is queued) to open another.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Eviction {
    /// The slot that was closed; it is accepting again.
    pub index: usize,
    /// The connection it held.
    pub conn: Conn,
    /// Why it was chosen.
    pub reason: EvictReason,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct OpenSlot {
    conn: Conn,
    source: SourcePrefix,
    /// Connections open from `source`, this one included.
    source_conns: usize,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum SlotState {
    Idle { retry_at: Option<Instant> },
    Accepting,
    Open(OpenSlot),
}

#[derive(Debug)]
struct Slot<C> {
    state: SlotState,
    data: C,
}

impl<C> Slot<C> {
    fn open(&self) -> Option<&OpenSlot> {
        match &self.state {
            SlotState::Open(open) => Some(open),
            _ => None,
        }
    }
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
    /// Slot `index` opened for an accepted stream. If `evicted`, the pool closed that connection
    /// to make room (its close is queued): the caller drops its queued output.
    Opened {
        /// The new connection's slot.
        index: usize,
        /// The connection closed to make room, if any.
        evicted: Option<Eviction>,
    },
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
    /// A pool for `config.limits.max_connections` connections (one slot more, the spare, each
    /// with data from `make`; no slot at all for 0). The listener is absent until
    /// [`AcceptPool::bind`].
    pub fn new(config: PoolConfig, mut make: impl FnMut() -> C) -> Self {
        let max = config.limits.max_connections;
        let slot_count = if max == 0 { 0 } else { max.saturating_add(1) };
        let slots = (0..slot_count)
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

    /// Most connections open at once ([`ConnectionLimits::max_connections`]).
    pub fn capacity(&self) -> usize {
        self.config.limits.max_connections
    }

    /// How many slots the table has: [`AcceptPool::capacity`] plus the spare (0 without
    /// connections). Slot indexes run below this.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The limits.
    pub fn limits(&self) -> &ConnectionLimits {
        &self.config.limits
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
        let slot = self.slots.get(index)?;
        Some((slot.open()?.conn, &slot.data))
    }

    /// Open slot `index`: its connection and data, mutably.
    pub fn get_mut(&mut self, index: usize) -> Option<(Conn, &mut C)> {
        match self.slots.get_mut(index)? {
            Slot {
                state: SlotState::Open(open),
                data,
            } => Some((open.conn, data)),
            _ => None,
        }
    }

    /// Bytes arrived on open slot `index`: the idle deadline moves to `now + idle_timeout`, and
    /// if no message was in progress these bytes start one, which must be complete by
    /// `now + message_timeout`. Call it once per chunk that carries bytes, before
    /// [`AcceptPool::message_completed`] for the messages the chunk completes. Returns whether
    /// the slot is open.
    pub fn bytes_arrived(&mut self, now: Instant, index: usize) -> bool {
        let limits = self.config.limits;
        let Some(SlotState::Open(open)) = self.slots.get_mut(index).map(|s| &mut s.state) else {
            return false;
        };
        open.conn.idle_deadline = now.saturating_add(limits.idle_timeout);
        if open.conn.message_deadline.is_none() {
            open.conn.message_deadline = Some(now.saturating_add(limits.message_timeout));
        }
        true
    }

    /// A message was completed on open slot `index` (the machine read it whole and it counts as
    /// work done). `more_held`: bytes of the next message are already held (they arrived now, so
    /// its deadline starts now); otherwise no message is in progress until the next byte.
    pub fn message_completed(&mut self, now: Instant, index: usize, more_held: bool) {
        let timeout = self.config.limits.message_timeout;
        let Some(SlotState::Open(open)) = self.slots.get_mut(index).map(|s| &mut s.state) else {
            return;
        };
        open.conn.messages = open.conn.messages.saturating_add(1);
        open.conn.last_progress = now;
        open.conn.message_deadline = more_held.then(|| now.saturating_add(timeout));
    }

    /// How many slots are open.
    pub fn open_count(&self) -> usize {
        self.slots.iter().filter(|s| s.open().is_some()).count()
    }

    /// How many open connections come from `source`.
    pub fn source_count(&self, source: SourcePrefix) -> usize {
        self.slots
            .iter()
            .filter(|s| s.open().is_some_and(|o| o.source == source))
            .count()
    }

    /// Whether open slot `index` has expired at `now`, and why (a message deadline first).
    pub fn expired(&self, index: usize, now: Instant) -> Option<Expiry> {
        let conn = self.slots.get(index)?.open()?.conn;
        if conn.message_deadline.is_some_and(|d| now >= d) {
            Some(Expiry::MessageTimeout)
        } else if now >= conn.idle_deadline {
            Some(Expiry::Idle)
        } else {
            None
        }
    }

    /// The first open slot expired at `now`, and why: the caller closes it
    /// ([`AcceptPool::close`]) and asks again until `None`.
    pub fn next_expired(&self, now: Instant) -> Option<(usize, Expiry)> {
        (0..self.slots.len()).find_map(|index| Some((index, self.expired(index, now)?)))
    }

    /// The earliest idle or message deadline, or accept retry (retries only while listening).
    pub fn next_deadline(&self) -> Option<Instant> {
        let listening = matches!(self.listener, Listener::Bound(_));
        self.slots
            .iter()
            .filter_map(|s| match s.state {
                SlotState::Open(OpenSlot { conn, .. }) => Some(
                    conn.message_deadline
                        .map_or(conn.idle_deadline, |m| m.min(conn.idle_deadline)),
                ),
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
        let Some(state) = self.slots.get(index).map(|s| s.state) else {
            return PoolEvent::NotMine;
        };
        match outcome {
            SocketOutcome::Accepted { local, remote } => match state {
                SlotState::Accepting => return self.open(now, index, local, remote, ops),
                // A stream we did not (or no longer) wait for is still ours to close, once.
                SlotState::Idle { .. } => ops.push_back(SocketOp::Close { socket }),
                SlotState::Open(_) => {}
            },
            SocketOutcome::Failed {
                op: OpKind::Accept, ..
            } if state == SlotState::Accepting => {
                if let Some(slot) = self.slots.get_mut(index) {
                    slot.state = SlotState::Idle {
                        retry_at: Some(now.saturating_add(ACCEPT_RETRY)),
                    };
                }
            }
            SocketOutcome::PeerClosed | SocketOutcome::Failed { .. }
                if matches!(state, SlotState::Open(_)) =>
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

    /// Opens accepting slot `index` for `remote`, first evicting a connection if the newcomer's
    /// source is at its cap or every connection is open.
    fn open(
        &mut self,
        now: Instant,
        index: usize,
        local: SocketAddr,
        remote: SocketAddr,
        ops: &mut VecDeque<SocketOp>,
    ) -> PoolEvent {
        let limits = self.config.limits;
        let source = SourcePrefix::of(remote.ip());
        let reason = if self.source_count(source) >= limits.max_per_source.max(1) {
            Some(EvictReason::SourceFull)
        } else if self.open_count() >= limits.max_connections {
            Some(EvictReason::PoolFull)
        } else {
            None
        };
        let evicted = reason.and_then(|reason| {
            let from = (reason == EvictReason::SourceFull).then_some(source);
            let victim = self.least_active(from)?;
            let conn = self.release(victim, ops)?.conn;
            Some(Eviction {
                index: victim,
                conn,
                reason,
            })
        });
        let source_conns = self.source_count(source).saturating_add(1);
        let Some(slot) = self.slots.get_mut(index) else {
            return PoolEvent::Nothing;
        };
        slot.state = SlotState::Open(OpenSlot {
            conn: Conn {
                local,
                remote,
                idle_deadline: now.saturating_add(limits.idle_timeout),
                message_deadline: None,
                messages: 0,
                last_progress: now,
            },
            source,
            source_conns,
        });
        slot.data.reset();
        self.set_source_conns(source, source_conns);
        if evicted.is_some() {
            self.accept_idle(now, ops);
        }
        PoolEvent::Opened { index, evicted }
    }

    /// The open connection that has done least, among those from `source` (or all): from the
    /// source holding most connections, fewest completed messages, oldest progress, lowest slot.
    fn least_active(&self, source: Option<SourcePrefix>) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| {
                let open = slot.open()?;
                if source.is_some_and(|s| s != open.source) {
                    return None;
                }
                let key = (
                    core::cmp::Reverse(open.source_conns),
                    open.conn.messages,
                    open.conn.last_progress,
                    index,
                );
                Some((key, index))
            })
            .min_by_key(|(key, _)| *key)
            .map(|(_, index)| index)
    }

    /// Records that `source` holds `count` open connections on each of its open slots.
    fn set_source_conns(&mut self, source: SourcePrefix, count: usize) {
        for slot in self.slots.iter_mut() {
            if let SlotState::Open(open) = &mut slot.state {
                if open.source == source {
                    open.source_conns = count;
                }
            }
        }
    }

    /// Frees open slot `index`: queues its one close, resets its data, leaves it idle (not yet
    /// asking for a connection). Returns the connection it held.
    fn release(&mut self, index: usize, ops: &mut VecDeque<SocketOp>) -> Option<OpenSlot> {
        let socket = self.socket(index);
        let slot = self.slots.get_mut(index)?;
        let SlotState::Open(open) = slot.state else {
            return None;
        };
        slot.state = SlotState::Idle { retry_at: None };
        slot.data.reset();
        ops.push_back(SocketOp::Close { socket });
        let left = self.source_count(open.source);
        self.set_source_conns(open.source, left);
        Some(open)
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
        if self.release(index, ops).is_none() {
            return false;
        }
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

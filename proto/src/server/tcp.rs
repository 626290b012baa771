//! STUN over TCP for the server (RFC 5389 §7.2.2): a listener on the primary address, a bounded
//! table of accepted connections, and per-connection reassembly of messages framed by the STUN
//! header's length field.
//!
//! Each connection slot owns a fixed buffer of [`MAX_TCP_MESSAGE_LEN`] bytes, allocated when the
//! server is built: serving TCP requests allocates nothing either. A slot is idle, waiting for an
//! accept (one outstanding [`SocketOp::Accept`] per free slot), or open. Closing a slot emits its
//! one close intent and frees it for the next accept.

use core::net::SocketAddr;
use core::time::Duration;

use crate::machine::SocketId;
use crate::stun::{DecodeError, Message};
use crate::time::Instant;

/// The socket id of the server's TCP listener.
pub const TCP_LISTENER: SocketId = SocketId(4);

/// The first socket id of accepted TCP connections: slot `i` is `SocketId(TCP_CONNECTION_BASE + i)`.
pub const TCP_CONNECTION_BASE: u32 = 0x100;

/// The most TCP connections a server may be configured to hold.
pub const MAX_TCP_CONNECTIONS: usize = 4096;

/// The longest STUN message accepted on a TCP connection; a longer one closes the connection.
pub const MAX_TCP_MESSAGE_LEN: usize = 1500;

/// How long to wait before asking again after an accept failed.
pub(super) const ACCEPT_RETRY: Duration = Duration::from_secs(1);

/// The socket id of connection slot `index`.
pub(super) fn connection_id(index: usize) -> SocketId {
    let index = u32::try_from(index).unwrap_or(u32::MAX);
    SocketId(TCP_CONNECTION_BASE.saturating_add(index))
}

/// The slot index of a connection socket id.
pub(super) fn slot_index(socket: SocketId) -> Option<usize> {
    usize::try_from(socket.0.checked_sub(TCP_CONNECTION_BASE)?).ok()
}

/// The listener's state.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Listener {
    /// TCP is off.
    Absent,
    /// The bind intent is out.
    Binding,
    /// Bound and asked to listen.
    Bound(SocketAddr),
    /// Bind or listen failed; TCP is off.
    Failed,
}

/// A connection slot's state.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum SlotState {
    /// Not waiting for a connection; ask again at `retry_at` (if the listener is up).
    Idle { retry_at: Option<Instant> },
    /// An accept intent is outstanding.
    Accepting,
    /// A connected stream.
    Open {
        local: SocketAddr,
        remote: SocketAddr,
        idle_deadline: Instant,
    },
}

/// One connection slot with its reassembly buffer.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) state: SlotState,
    buf: Box<[u8]>,
    len: usize,
}

/// What the reassembly buffer holds.
pub(super) enum Frame {
    /// Not a whole message yet.
    Partial,
    /// A whole message of this many bytes starts the buffer.
    Complete(usize),
    /// The bytes cannot start a STUN message (or announce one too long): close the connection.
    Bad(DecodeError),
}

impl Slot {
    fn new() -> Self {
        Slot {
            state: SlotState::Idle { retry_at: None },
            buf: vec![0u8; MAX_TCP_MESSAGE_LEN].into_boxed_slice(),
            len: 0,
        }
    }

    /// Whether the slot holds an open connection.
    pub(super) fn is_open(&self) -> bool {
        matches!(self.state, SlotState::Open { .. })
    }

    /// Opens the slot for an accepted stream, with an empty buffer.
    pub(super) fn open(&mut self, local: SocketAddr, remote: SocketAddr, idle_deadline: Instant) {
        self.state = SlotState::Open {
            local,
            remote,
            idle_deadline,
        };
        self.len = 0;
    }

    /// Frees the slot (the caller emits the close intent).
    pub(super) fn reset(&mut self) {
        self.state = SlotState::Idle { retry_at: None };
        self.len = 0;
    }

    /// Appends as much of `data` as fits and returns the rest.
    pub(super) fn fill<'d>(&mut self, data: &'d [u8]) -> &'d [u8] {
        let Some(free) = self.buf.get_mut(self.len..) else {
            return data;
        };
        let n = free.len().min(data.len());
        let (now, rest) = data.split_at(n);
        if let Some(dst) = free.get_mut(..n) {
            dst.copy_from_slice(now);
        }
        self.len = self.len.saturating_add(n);
        rest
    }

    /// Whether a whole message starts the buffer.
    pub(super) fn frame(&self) -> Frame {
        let held = self.held();
        match Message::needed(held) {
            Err(DecodeError::TooShort) => Frame::Partial,
            Err(e) => Frame::Bad(e),
            Ok(total) if total > self.buf.len() => Frame::Bad(DecodeError::LengthMismatch),
            Ok(total) if total > held.len() => Frame::Partial,
            Ok(total) => Frame::Complete(total),
        }
    }

    /// The bytes held.
    pub(super) fn held(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// Drops the first `n` bytes held (a message that was handled).
    pub(super) fn consume(&mut self, n: usize) {
        if n >= self.len {
            self.len = 0;
            return;
        }
        self.buf.copy_within(n..self.len, 0);
        self.len = self.len.saturating_sub(n);
    }
}

/// The TCP side of the server: listener and connection slots.
#[derive(Debug)]
pub(super) struct TcpSide {
    pub(super) listener: Listener,
    pub(super) slots: Vec<Slot>,
}

impl TcpSide {
    /// TCP with `connections` slots, or off (no slots) when `connections` is 0.
    pub(super) fn new(connections: usize) -> Self {
        TcpSide {
            listener: if connections == 0 {
                Listener::Absent
            } else {
                Listener::Binding
            },
            slots: (0..connections).map(|_| Slot::new()).collect(),
        }
    }

    /// The index of the open connection on `socket`.
    pub(super) fn open_index(&self, socket: SocketId) -> Option<usize> {
        let index = slot_index(socket)?;
        self.slots
            .get(index)
            .is_some_and(Slot::is_open)
            .then_some(index)
    }

    /// The local address of open connection `index`.
    pub(super) fn local(&self, index: usize) -> Option<SocketAddr> {
        match self.slots.get(index)?.state {
            SlotState::Open { local, .. } => Some(local),
            _ => None,
        }
    }

    /// How many connections are open.
    pub(super) fn open_count(&self) -> usize {
        self.slots.iter().filter(|s| s.is_open()).count()
    }

    /// The earliest idle deadline or accept retry.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let listening = matches!(self.listener, Listener::Bound(_));
        self.slots
            .iter()
            .filter_map(|s| match s.state {
                SlotState::Open { idle_deadline, .. } => Some(idle_deadline),
                SlotState::Idle { retry_at: Some(at) } if listening => Some(at),
                _ => None,
            })
            .min()
    }
}

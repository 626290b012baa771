//! STUN over TCP for the server (RFC 5389 §7.2.2): the listener and connection slots are an
//! [`AcceptPool`](crate::accept::AcceptPool); each slot reassembles messages framed by the STUN
//! header's length field in a [`StreamBuf`].
//!
//! Each slot's buffer holds [`MAX_TCP_MESSAGE_LEN`] bytes and is allocated when the server is
//! built: serving TCP requests allocates nothing either.

use crate::accept::SlotData;
use crate::machine::SocketId;
use crate::stun::{DecodeError, Message};

/// The socket id of the server's TCP listener.
pub const TCP_LISTENER: SocketId = SocketId(4);

/// The first socket id of accepted TCP connections: slot `i` is `SocketId(TCP_CONNECTION_BASE + i)`.
pub const TCP_CONNECTION_BASE: u32 = 0x100;

/// The most TCP connections a server may be configured to hold.
pub const MAX_TCP_CONNECTIONS: usize = 4096;

/// The longest STUN message accepted on a TCP connection; a longer one closes the connection.
pub const MAX_TCP_MESSAGE_LEN: usize = 1500;

/// A connection slot's reassembly buffer.
#[derive(Debug)]
pub(super) struct StreamBuf {
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

impl SlotData for StreamBuf {
    fn reset(&mut self) {
        self.len = 0;
    }
}

impl StreamBuf {
    pub(super) fn new() -> Self {
        StreamBuf {
            buf: vec![0u8; MAX_TCP_MESSAGE_LEN].into_boxed_slice(),
            len: 0,
        }
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

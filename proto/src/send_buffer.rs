//! A TCP stream's send buffer under the runtime's flow control, for any machine that writes a
//! stream: the bytes the machine took from its user (or encoded itself) that the runtime has not
//! taken yet.
//!
//! A runtime refuses a stream transmit when it cannot take it (`Failed { op: Send, error:
//! WouldBlock }`; nothing of that transmit is taken), refuses every later one until it reports
//! [`SocketOutcome::Writable`], and reports refusals in the same drain, before any further input
//! (see [`SocketOutcome::Writable`]). That is flow control, not a broken stream: the bytes stay
//! here until the runtime has taken them.
//!
//! The first `emitted` bytes went out as the transmits in `chunks` since the last settle point.
//! The settle point is the machine's next `handle_timeout` (a transmit makes its deadline
//! immediate: [`SendBuffer::wants_settle`]): a runtime calls it only after a whole drain, so every
//! refusal of the transmits before it has been reported, and every transmit not refused was
//! taken; the refused ones are the last ones and stay buffered. No other input settles: an
//! outcome or stream bytes may come while refusals of the same drain are still queued behind them.
//! After a refusal nothing is sent until `Writable` and the next settle point.
//!
//! One buffer serves the punched stream of `p2pd_punch::node::PunchNode` and the MQTT client's
//! broker connection, so the runtime needs to hold no more than what the kernel has not taken.

use std::collections::VecDeque;

use crate::machine::{IoError, OpKind, SocketOutcome, TRANSMIT_BUFFER_LEN};

/// A stream's send buffer: see the [module docs](self).
#[derive(Clone, Debug)]
pub struct SendBuffer {
    bytes: VecDeque<u8>,
    capacity: usize,
    /// Bytes at the front of `bytes` handed to the runtime, not yet known to be taken.
    emitted: usize,
    /// Their transmits' lengths, in order.
    chunks: VecDeque<usize>,
    /// Transmits the runtime refused (the last ones of `chunks`).
    refused: usize,
    /// The runtime refused a transmit and has not reported `Writable` yet.
    blocked: bool,
}

/// What [`SendBuffer::on_outcome`] made of a stream outcome.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FlowControl {
    /// A refusal of one of our transmits: its bytes stay buffered and go out again after
    /// `Writable` and the next settle point.
    Refused,
    /// The runtime can take bytes again.
    Writable,
    /// Not flow control (a failure, EOF, or a refusal of nothing we sent): the caller's to handle.
    NotFlowControl,
}

impl SendBuffer {
    /// An empty buffer that holds at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        SendBuffer {
            bytes: VecDeque::new(),
            capacity,
            emitted: 0,
            chunks: VecDeque::new(),
            refused: 0,
            blocked: false,
        }
    }

    /// The most bytes it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes not yet known to be taken by the runtime (including those handed over since the last
    /// settle point).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether every byte was taken by the runtime.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// How many more bytes it takes now.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.bytes.len())
    }

    /// Takes as many of `bytes` as fit and returns how many.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let taken = self.room().min(bytes.len());
        self.bytes.extend(bytes.iter().take(taken).copied());
        taken
    }

    /// Whether every transmit handed over is settled (known taken, or refused and buffered again).
    pub fn is_settled(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Whether the owner should settle at once: transmits went out since the last settle point and
    /// the runtime is not blocked (a blocked stream waits for `Writable`). The owner makes its
    /// deadline `now` while this holds and calls [`SendBuffer::settle`] in `handle_timeout`.
    pub fn wants_settle(&self) -> bool {
        !self.chunks.is_empty() && !self.blocked
    }

    /// Writes the next transmit's bytes into `buf` and returns how many (at most
    /// [`TRANSMIT_BUFFER_LEN`]), or `None` when there is nothing to send now (empty, refused and
    /// waiting for `Writable` and a settle point, or only a short tail after a batch started).
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.blocked || self.refused > 0 {
            return None;
        }
        let full = buf.len().min(TRANSMIT_BUFFER_LEN);
        let pending = self.bytes.len().saturating_sub(self.emitted);
        // Only the first transmit of a batch may be short: it carries the odd remainder, so the
        // rest follows in full-sized transmits in the same batch (a short tail would wait for
        // another settle point: one more timeout at the same instant than the contract allows).
        // Bytes pushed after a batch started wait for the next settle point if they leave a
        // short tail (at the latest the immediate deadline).
        let n = match (self.chunks.is_empty(), pending.checked_rem(full)) {
            (true, Some(odd)) if odd > 0 => odd,
            _ => pending.min(full),
        };
        if n == 0 || (n < full && !self.chunks.is_empty()) {
            return None;
        }
        for (dst, src) in buf.iter_mut().zip(self.bytes.range(self.emitted..)).take(n) {
            *dst = *src;
        }
        self.emitted = self.emitted.saturating_add(n);
        self.chunks.push_back(n);
        Some(n)
    }

    /// Takes a stream outcome's flow control: a refusal of one of our transmits, or `Writable`.
    pub fn on_outcome(&mut self, outcome: &SocketOutcome) -> FlowControl {
        match outcome {
            SocketOutcome::Failed {
                op: OpKind::Send,
                error: IoError::WouldBlock,
                ..
            } if self.refused < self.chunks.len() => {
                self.refused = self.refused.saturating_add(1);
                self.blocked = true;
                FlowControl::Refused
            }
            SocketOutcome::Writable => {
                // Refused transmits go out again after the next settle point, never here:
                // refusals of the last drain may still be on their way.
                self.blocked = false;
                FlowControl::Writable
            }
            _ => FlowControl::NotFlowControl,
        }
    }

    /// The settle point: every transmit since the last one that was not refused was taken. Drops
    /// those bytes and keeps the refused ones buffered, in order, to be sent again.
    pub fn settle(&mut self) {
        let refused: usize = self.chunks.iter().rev().take(self.refused).sum();
        let taken = self.emitted.saturating_sub(refused).min(self.bytes.len());
        self.bytes.drain(..taken);
        self.emitted = 0;
        self.chunks.clear();
        self.refused = 0;
    }

    /// Forgets every byte (the stream failed or was closed, or a new connection starts).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.emitted = 0;
        self.chunks.clear();
        self.refused = 0;
        self.blocked = false;
    }
}

#[cfg(test)]
mod tests;

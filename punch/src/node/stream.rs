//! The punched stream's send buffer: what `send` and `finish` queue, the transmits that take it,
//! and the runtime's refusals (flow control) until every byte is taken.

use core::net::SocketAddr;
use std::collections::VecDeque;

use p2pd_proto::{
    Instant, IoError, OpKind, SocketId, SocketOp, SocketOutcome, Transmit, TRANSMIT_BUFFER_LEN,
};

use super::{NodeEvent, NodePart, Part, PunchNode, STREAM_ID};
use crate::error::PunchApiError;

/// The punched stream's send buffer: most bytes [`PunchNode::send`] holds that the runtime has not
/// taken yet. It is the stream's one send buffer. A runtime takes a transmit only when it can
/// write it at once or hold what the kernel did not take in a small spill (`p2pd_mio` holds at
/// most 16 KiB per stream, then refuses until `Writable`); the bytes wait here meanwhile. When it
/// is full, `send` takes what fits and [`NodeEvent::Writable`] says when half of it is free.
pub const SEND_BUFFER: usize = 256 * 1024;

/// The punched stream, once up.
///
/// A runtime refuses a stream transmit when its own buffer for the stream is full
/// (`Failed { op: Send, error: WouldBlock }`; nothing of that transmit is taken), refuses every
/// later one until it reports [`SocketOutcome::Writable`], and reports refusals in the same drain
/// (before any further input). That is flow control, not a broken stream: bytes stay in `out`
/// until the runtime has taken them. The first `emitted` bytes of `out` went out as the transmits
/// in `chunks` since the last settle point. The settle point is the next `handle_timeout` (a
/// transmit makes the deadline immediate): a runtime calls it only after a whole drain, so every
/// refusal of the transmits before it has been reported, and every transmit not refused was
/// taken; the refused ones are the last ones and stay queued. No other input settles: an
/// outcome or stream bytes may come while refusals of the same drain are still queued behind
/// them. After a refusal nothing is sent until `Writable` and the next settle point.
pub(super) struct Stream {
    pub(super) socket: SocketId,
    pub(super) remote: SocketAddr,
    pub(super) out: VecDeque<u8>,
    /// Bytes at the front of `out` handed to the runtime, not yet known to be taken.
    pub(super) emitted: usize,
    /// Their transmits' lengths, in order.
    pub(super) chunks: VecDeque<usize>,
    /// Transmits the runtime refused (the last ones of `chunks`).
    pub(super) refused: usize,
    /// The runtime refused a transmit and has not reported `Writable` yet.
    pub(super) blocked: bool,
    /// [`PunchNode::send`] failed because `out` was full, or left it more than half full: report
    /// [`NodeEvent::Writable`] once half of it is free.
    pub(super) wants_room: bool,
    /// Failed, or the node is closing: nothing more is sent or reported.
    pub(super) closed: bool,
    /// The stream's `Close` went out.
    pub(super) close_sent: bool,
    /// [`PunchNode::finish`] was called: no more `send`; the `Shutdown` goes out once `out` is
    /// empty (every byte taken by the runtime).
    pub(super) finishing: bool,
    /// The `Shutdown` intent went out.
    pub(super) shut: bool,
    /// [`NodeEvent::StreamClosed`] was reported (the peer's EOF, or a failure).
    pub(super) ended: bool,
}

impl Stream {
    /// Every transmit since the last settle point not refused was taken: drop those bytes, keep
    /// the refused ones queued (in order) to be sent again.
    pub(super) fn settle(&mut self) {
        let refused: usize = self.chunks.iter().rev().take(self.refused).sum();
        let taken = self.emitted.saturating_sub(refused).min(self.out.len());
        self.out.drain(..taken);
        self.emitted = 0;
        self.chunks.clear();
        self.refused = 0;
    }

    pub(super) fn clear(&mut self) {
        self.out.clear();
        self.emitted = 0;
        self.chunks.clear();
        self.refused = 0;
        self.blocked = false;
        self.wants_room = false;
    }

    /// An outcome for the punched stream: a refusal (flow control), `Writable`, the peer's EOF or
    /// a failure.
    pub(super) fn on_outcome(&mut self, outcome: SocketOutcome, events: &mut VecDeque<NodeEvent>) {
        let refused = matches!(
            outcome,
            SocketOutcome::Failed {
                op: OpKind::Send,
                error: IoError::WouldBlock,
                ..
            }
        );
        if refused && !self.closed && self.refused < self.chunks.len() {
            // Flow control: sent again after `Writable` (see `Stream`).
            self.refused = self.refused.saturating_add(1);
            self.blocked = true;
        } else if matches!(outcome, SocketOutcome::Writable) {
            // Refused transmits go out again after the next settle point (an immediate
            // timeout), never here: refusals of the last drain may still be on their way.
            self.blocked = false;
        } else if matches!(outcome, SocketOutcome::PeerClosed) && !self.closed {
            // Half-closed by the peer: we may still send (and finish).
            if !self.ended {
                self.ended = true;
                events.push_back(NodeEvent::StreamClosed);
            }
        } else if matches!(outcome, SocketOutcome::Failed { .. }) && !self.closed {
            self.closed = true;
            self.clear();
            if !self.ended {
                self.ended = true;
                events.push_back(NodeEvent::StreamClosed);
            }
        }
    }
}

impl PunchNode {
    /// Takes as many of `bytes` as fit in the send buffer ([`SEND_BUFFER`]) for the punched
    /// stream and returns how many, like [`std::io::Write::write`]: a partial write leaves the
    /// rest to the caller, and [`NodeEvent::Writable`] says when half of the buffer is free again.
    /// `Err` before the stream is up, after it failed or the node closed, after
    /// [`PunchNode::finish`], or when the buffer is full and `bytes` is not empty
    /// ([`PunchApiError::SendBufferFull`]). The peer's EOF ([`NodeEvent::StreamClosed`] with
    /// [`PunchNode::is_connected`] still true) does not stop sending.
    pub fn send(&mut self, now: Instant, bytes: &[u8]) -> Result<usize, PunchApiError> {
        let stream = self.stream.as_mut().ok_or(PunchApiError::NotConnected)?;
        if stream.closed {
            return Err(PunchApiError::StreamClosed);
        }
        if stream.finishing {
            return Err(PunchApiError::Finished);
        }
        let room = SEND_BUFFER.saturating_sub(stream.out.len());
        if room == 0 && !bytes.is_empty() {
            stream.wants_room = true;
            return Err(PunchApiError::SendBufferFull {
                buffered: stream.out.len(),
            });
        }
        let taken = room.min(bytes.len());
        stream.out.extend(bytes.iter().take(taken).copied());
        if stream.out.len() > SEND_BUFFER / 2 {
            // The caller is filling the buffer: tell it when half of it is free again.
            stream.wants_room = true;
        }
        self.pump(now);
        Ok(taken)
    }

    /// Finishes our sending side of the punched stream (half-close): once every byte queued so far
    /// has been taken by the runtime, the node emits [`SocketOp::Shutdown`] for the stream (the
    /// runtime writes what it still holds, then the FIN), so the peer reads all of it and then
    /// EOF. We keep receiving: [`NodeEvent::Data`] until the peer's own EOF,
    /// [`NodeEvent::StreamClosed`]; then [`PunchNode::close`]. [`PunchNode::send`] fails from now
    /// on. Idempotent; `Err` before the stream is up and after it failed or the node closed.
    pub fn finish(&mut self, now: Instant) -> Result<(), PunchApiError> {
        let stream = self.stream.as_mut().ok_or(PunchApiError::NotConnected)?;
        if stream.closed {
            return Err(PunchApiError::StreamClosed);
        }
        stream.finishing = true;
        self.pump(now);
        Ok(())
    }

    /// Whether [`PunchNode::finish`] has taken full effect on the node's side: every queued byte
    /// was taken by the runtime and the `Shutdown` intent went out (the runtime may still hold
    /// bytes it has not written: see its own view of the socket, [`PunchNode::stream_socket`]).
    pub fn is_finished(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.shut)
    }

    /// Which part of the node holds `socket` (an id the node named in an intent and has not
    /// closed), if any.
    pub fn socket_part(&self, socket: SocketId) -> Option<NodePart> {
        Some(match self.sockets.route(socket)?.0 {
            Part::Signaling => NodePart::Signaling,
            Part::Puncher => NodePart::Puncher,
            Part::Probe(_) => NodePart::Probe,
            Part::Stream => NodePart::Stream,
        })
    }

    /// The punched stream's socket while it is up (for the runtime's own view of it, e.g. bytes
    /// it still holds unwritten).
    pub fn stream_socket(&self) -> Option<SocketId> {
        self.stream.as_ref().filter(|s| !s.closed).map(|s| s.socket)
    }

    /// Whether the punched stream is up: punched, not failed, the node not closed. Stays true
    /// after the peer's EOF and after [`PunchNode::finish`] (half-closed either way).
    pub fn is_connected(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| !s.closed)
    }

    /// Bytes waiting to be written to the punched stream (including those handed to the runtime
    /// and not yet known to be taken).
    pub fn queued(&self) -> usize {
        self.stream.as_ref().map_or(0, |s| s.out.len())
    }

    /// How many bytes [`PunchNode::send`] takes now (0 when the stream is not up for sending).
    pub fn send_room(&self) -> usize {
        match &self.stream {
            Some(s) if !s.closed && !s.finishing => SEND_BUFFER.saturating_sub(s.out.len()),
            _ => 0,
        }
    }

    /// The punched stream's next transmit (after every part's own).
    pub(super) fn poll_stream_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let s = self.stream.as_mut()?;
        // After a refusal nothing more goes out until `Writable` and a settle point.
        if s.closed || s.blocked || s.refused > 0 {
            return None;
        }
        let full = buf.len().min(TRANSMIT_BUFFER_LEN);
        let pending = s.out.len().saturating_sub(s.emitted);
        // Only the first transmit of a batch may be short: it carries the odd remainder, so the
        // rest of the queue follows in full-sized transmits in the same batch (a short tail would
        // wait for another settle point: one more timeout at the same instant than the contract
        // allows). Bytes queued after a batch started wait for the next settle point if they
        // leave a short tail (at the latest the immediate deadline).
        let n = match (s.chunks.is_empty(), pending.checked_rem(full)) {
            (true, Some(odd)) if odd > 0 => odd,
            _ => pending.min(full),
        };
        if n == 0 || (n < full && !s.chunks.is_empty()) {
            return None;
        }
        for (dst, src) in buf.iter_mut().zip(s.out.range(s.emitted..)).take(n) {
            *dst = *src;
        }
        s.emitted = s.emitted.saturating_add(n);
        s.chunks.push_back(n);
        // Settle at once (a timeout now), so taken bytes leave the queue and the rest goes out.
        self.deadline = Some(
            self.deadline
                .map_or(self.last_now, |d| d.min(self.last_now)),
        );
        Some(Transmit {
            socket: s.socket,
            destination: s.remote,
            len: n,
        })
    }

    /// The punched stream's next socket intent (after every part's own): its `Shutdown`, then
    /// its `Close`.
    pub(super) fn poll_stream_op(&mut self) -> Option<SocketOp> {
        // Finishing: the `Shutdown` once the runtime has taken every byte (unsettled transmits
        // stay in `out` until the next settle point, so refused ones are sent first).
        if let Some(s) = self.stream.as_mut() {
            if s.finishing && !s.shut && !s.closed && s.out.is_empty() && s.chunks.is_empty() {
                s.shut = true;
                self.events.push_back(NodeEvent::Finished);
                return Some(SocketOp::Shutdown { socket: s.socket });
            }
        }
        // The punched stream is ours once handed over: close it once, on close.
        if self.closing {
            if let Some(s) = self.stream.as_mut() {
                if s.closed && !s.close_sent {
                    s.close_sent = true;
                    return self
                        .sockets
                        .outbound(Part::Stream, SocketOp::Close { socket: STREAM_ID });
                }
            }
        }
        None
    }
}

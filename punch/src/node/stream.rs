//! The punched stream's send buffer: what `send` and `finish` queue, the transmits that take it,
//! and the runtime's refusals (flow control) until every byte is taken.

use core::net::SocketAddr;
use std::collections::VecDeque;

use p2pd_proto::send_buffer::{FlowControl, SendBuffer};
use p2pd_proto::{Instant, SocketId, SocketOp, SocketOutcome, Transmit};

use super::{NodeEvent, NodePart, Part, PunchNode, STREAM_ID};
use crate::error::PunchApiError;

/// The punched stream's send buffer: most bytes [`PunchNode::send`] holds that the runtime has not
/// taken yet. It is the stream's one send buffer. A runtime takes a transmit only when it can
/// write it at once or hold what the kernel did not take in a small spill (`p2pd_mio` holds at
/// most 16 KiB per stream, then refuses until `Writable`); the bytes wait here meanwhile. When it
/// is full, `send` takes what fits and [`NodeEvent::Writable`] says when half of it is free.
pub const SEND_BUFFER: usize = 256 * 1024;

/// The punched stream, once up. Its bytes wait in `send` (see [`SendBuffer`] for the runtime's
/// flow control) until the runtime has taken them.
pub(super) struct Stream {
    pub(super) socket: SocketId,
    pub(super) remote: SocketAddr,
    pub(super) send: SendBuffer,
    /// [`PunchNode::send`] failed because `send` was full, or left it more than half full: report
    /// [`NodeEvent::Writable`] once half of it is free.
    pub(super) wants_room: bool,
    /// Failed, or the node is closing: nothing more is sent or reported.
    pub(super) closed: bool,
    /// The stream's `Close` went out.
    pub(super) close_sent: bool,
    /// [`PunchNode::finish`] was called: no more `send`; the `Shutdown` goes out once `send` is
    /// empty (every byte taken by the runtime).
    pub(super) finishing: bool,
    /// The `Shutdown` intent went out.
    pub(super) shut: bool,
    /// [`NodeEvent::StreamClosed`] was reported (the peer's EOF, or a failure).
    pub(super) ended: bool,
}

impl Stream {
    /// The stream the puncher connected, adopted by the node.
    pub(super) fn new(socket: SocketId, remote: SocketAddr) -> Self {
        Stream {
            socket,
            remote,
            send: SendBuffer::new(SEND_BUFFER),
            wants_room: false,
            closed: false,
            close_sent: false,
            finishing: false,
            shut: false,
            ended: false,
        }
    }

    pub(super) fn clear(&mut self) {
        self.send.clear();
        self.wants_room = false;
    }

    /// An outcome for the punched stream: a refusal (flow control), `Writable`, the peer's EOF or
    /// a failure.
    pub(super) fn on_outcome(&mut self, outcome: SocketOutcome, events: &mut VecDeque<NodeEvent>) {
        if self.closed || self.send.on_outcome(&outcome) != FlowControl::NotFlowControl {
            return;
        }
        if matches!(outcome, SocketOutcome::PeerClosed) {
            // Half-closed by the peer: we may still send (and finish).
            if !self.ended {
                self.ended = true;
                events.push_back(NodeEvent::StreamClosed);
            }
        } else if matches!(outcome, SocketOutcome::Failed { .. }) {
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
        if stream.send.room() == 0 && !bytes.is_empty() {
            stream.wants_room = true;
            return Err(PunchApiError::SendBufferFull {
                buffered: stream.send.len(),
            });
        }
        let taken = stream.send.push(bytes);
        if stream.send.len() > SEND_BUFFER / 2 {
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
        self.stream.as_ref().map_or(0, |s| s.send.len())
    }

    /// How many bytes [`PunchNode::send`] takes now (0 when the stream is not up for sending).
    pub fn send_room(&self) -> usize {
        match &self.stream {
            Some(s) if !s.closed && !s.finishing => s.send.room(),
            _ => 0,
        }
    }

    /// The punched stream's next transmit (after every part's own).
    pub(super) fn poll_stream_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let s = self.stream.as_mut().filter(|s| !s.closed)?;
        let len = s.send.poll_transmit(buf)?;
        // Settle at once (a timeout now), so taken bytes leave the buffer and the rest goes out.
        self.deadline = Some(
            self.deadline
                .map_or(self.last_now, |d| d.min(self.last_now)),
        );
        Some(Transmit {
            socket: s.socket,
            destination: s.remote,
            len,
        })
    }

    /// The punched stream's next socket intent (after every part's own): its `Shutdown`, then
    /// its `Close`.
    pub(super) fn poll_stream_op(&mut self) -> Option<SocketOp> {
        // Finishing: the `Shutdown` once the runtime has taken every byte (unsettled transmits
        // stay in `out` until the next settle point, so refused ones are sent first).
        if let Some(s) = self.stream.as_mut() {
            if s.finishing && !s.shut && !s.closed && s.send.is_empty() && s.send.is_settled() {
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

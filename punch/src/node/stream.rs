//! The punched stream: its socket and its [`SecureStream`] (the secure channel the punch's
//! election established, every byte sealed and opened there, and the send buffer of sealed bytes
//! under the runtime's flow control), and the node's API for it.

use core::net::SocketAddr;

use p2pd_channel::stream::{SecureStream, StreamApiError, StreamEvent};
use p2pd_proto::{Instant, SocketId, SocketOp, Transmit};
use p2pd_signaling::PublicKey;

use super::{NodeEvent, NodePart, Part, PunchNode, STREAM_ID};
use crate::error::PunchApiError;

pub use p2pd_channel::stream::SEND_BUFFER;

/// The punched stream, once up.
pub(super) struct Stream {
    /// Its id in the node's (the runtime's) namespace.
    pub(super) socket: SocketId,
    pub(super) local: SocketAddr,
    pub(super) remote: SocketAddr,
    pub(super) peer: PublicKey,
    /// The channel and its send buffer: plaintext in and out goes through it.
    pub(super) secure: SecureStream,
    /// The stream's `Close` went out.
    pub(super) close_sent: bool,
}

/// The node's event for a stream's.
fn node_event(event: StreamEvent) -> Option<NodeEvent> {
    Some(match event {
        StreamEvent::Data(bytes) => NodeEvent::Data(bytes),
        StreamEvent::Failed(failure) => NodeEvent::StreamFailed(failure),
        StreamEvent::PeerFinished => NodeEvent::StreamClosed,
        StreamEvent::Finished => NodeEvent::Finished,
        StreamEvent::Writable => NodeEvent::Writable,
        // The node reports the handshake as `Connected` (the puncher's).
        _ => return None,
    })
}

/// The node's error for a stream's refusal of `send` or `finish`.
fn api_error(error: StreamApiError) -> PunchApiError {
    match error {
        StreamApiError::Finished => PunchApiError::Finished,
        StreamApiError::SendBufferFull { buffered } => PunchApiError::SendBufferFull { buffered },
        StreamApiError::NotEstablished => PunchApiError::NotConnected,
        _ => PunchApiError::StreamClosed,
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
        let taken = stream.secure.send(now, bytes).map_err(api_error)?;
        self.pump(now);
        Ok(taken)
    }

    /// Finishes our sending side of the punched stream (half-close): the channel's authenticated
    /// FINISH follows every byte queued so far, and once the runtime has taken all of it the node
    /// emits [`SocketOp::Shutdown`] for the stream (the runtime writes what it still holds, then
    /// the FIN), so the peer reads all of it and then EOF. We keep receiving: [`NodeEvent::Data`] until the peer's own EOF,
    /// [`NodeEvent::StreamClosed`]; then [`PunchNode::close`]. [`PunchNode::send`] fails from now
    /// on. Idempotent; `Err` before the stream is up and after it failed or the node closed.
    pub fn finish(&mut self, now: Instant) -> Result<(), PunchApiError> {
        let stream = self.stream.as_mut().ok_or(PunchApiError::NotConnected)?;
        stream.secure.finish(now).map_err(api_error)?;
        self.pump(now);
        Ok(())
    }

    /// Whether [`PunchNode::finish`] has taken full effect on the node's side: every queued byte
    /// was taken by the runtime and the `Shutdown` intent went out (the runtime may still hold
    /// bytes it has not written: see its own view of the socket, [`PunchNode::stream_socket`]).
    pub fn is_finished(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.secure.is_finished())
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
        self.stream
            .as_ref()
            .filter(|s| s.secure.is_open())
            .map(|s| s.socket)
    }

    /// Whether the punched stream is up: punched, not failed, the node not closed, not taken
    /// ([`PunchNode::take_stream`]). Stays true after the peer's EOF and after
    /// [`PunchNode::finish`] (half-closed either way).
    pub fn is_connected(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.secure.is_open())
    }

    /// Bytes waiting to be written to the punched stream (including those handed to the runtime
    /// and not yet known to be taken).
    pub fn queued(&self) -> usize {
        self.stream.as_ref().map_or(0, |s| s.secure.queued())
    }

    /// How many plaintext bytes [`PunchNode::send`] takes now (0 when the stream is not up for
    /// sending).
    pub fn send_room(&self) -> usize {
        self.stream.as_ref().map_or(0, |s| s.secure.send_room())
    }

    /// The punched stream's next event, as the node's.
    pub(super) fn poll_stream_event(&mut self) -> Option<NodeEvent> {
        let s = self.stream.as_mut()?;
        while let Some(event) = s.secure.poll_event() {
            if let Some(event) = node_event(event) {
                return Some(event);
            }
        }
        None
    }

    /// The punched stream's next transmit (after every part's own).
    pub(super) fn poll_stream_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let s = self.stream.as_mut()?;
        let len = s.secure.poll_transmit(buf)?;
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
        // stay in the send buffer until the next settle point, so refused ones are sent first).
        if let Some(s) = self.stream.as_mut() {
            if s.secure.poll_shutdown() {
                return Some(SocketOp::Shutdown { socket: s.socket });
            }
        }
        // The punched stream is ours once handed over: close it once, on close.
        if self.closing {
            if let Some(s) = self.stream.as_mut() {
                if !s.secure.is_open() && !s.close_sent {
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

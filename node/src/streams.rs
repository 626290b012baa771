//! Authenticated streams, whatever their path: each is a socket of the node's own with its
//! [`SecureStream`] (every byte sealed and opened by the secure channel). Bytes in as
//! [`NodeEvent::Data`], out with [`Node::send`]; [`Node::finish`] half-closes;
//! [`Node::close_stream`] releases the socket ([`NodeEvent::StreamClosed`]).
//!
//! A TURN relay has no half-close: coturn answers a FIN on either leg of a relayed connection by
//! resetting both, and drops what it still holds for the other side. So on a relayed stream
//! [`Node::finish`] sends only the authenticated FINISH (the FIN waits for the close; the stream
//! is [`SecureStream::set_no_half_close`], so the channel's FINISH-ACKs still go out after it),
//! and [`Node::close_stream`] (or [`Node::close`]) of a relayed stream we finished lingers until
//! closing loses nothing:
//!
//! - (a) the peer's authenticated FINISH came (nothing more will come), and
//! - (b) the peer acknowledged our FINISH (its channel's FINISH-ACK: it read every byte we sent),
//!   and our own ack of its FINISH left the stream's buffer;
//!
//! or the relay ends the connection (the peer closed: it had what it needed), or [`RELAY_LINGER`]
//! passes. Then the socket closes. FINISHes that cross on the way are acknowledged both ways like
//! any others. The side that closes last may never see its ack arrive (coturn resets the leg when
//! the peer closes); that reset ends its linger, and it lost nothing: it had the peer's FINISH
//! and its own was acknowledged. A relayed stream closed without [`Node::finish`] (an abort), and
//! every direct, reverse or punched stream, closes at once. [`NodeEvent::FinishAcknowledged`]
//! tells the caller of the ack on any path.

use core::net::SocketAddr;
use core::time::Duration;

use p2pd_channel::stream::{SecureStream, StreamApiError, StreamEvent};
use p2pd_proto::{Instant, SocketId, SocketOp, Transmit};
use p2pd_signaling::PublicKey;

use crate::node::{Node, Part};
use crate::types::{NodeApiError, NodeEvent, Path, StreamId};

/// Longest a relayed stream lingers after [`Node::close_stream`] for the acknowledgement of our
/// FINISH (or for the relay to end it): a TURN relay has no half-close, and drops what it still
/// holds for one side when the other closes.
pub const RELAY_LINGER: Duration = Duration::from_secs(30);

/// One stream.
pub(crate) struct StreamSlot {
    pub(crate) id: StreamId,
    pub(crate) socket: SocketId,
    pub(crate) remote: SocketAddr,
    pub(crate) peer: PublicKey,
    pub(crate) path: Path,
    pub(crate) stream: SecureStream,
    /// [`Node::close_stream`] was called (or the node closes): its `Close` goes out next.
    pub(crate) closing: bool,
    /// A relayed stream finished, and its `Shutdown` waits for the close (see
    /// [`Node::poll_stream_op`]).
    fin_held: bool,
    /// [`Node::finish`] was called: a close is graceful (a relayed stream may linger).
    finishing: bool,
    /// Closed by the caller, lingering until then for the acknowledgements or the relay's end.
    linger_until: Option<Instant>,
}

impl StreamSlot {
    /// Closes the stream, or starts its linger if it is a relayed stream we finished whose close
    /// would still lose bytes (see the module docs). A lingering stream keeps lingering.
    pub(crate) fn close_or_linger(&mut self, now: Instant) {
        if self.closing || self.linger_until.is_some() {
            return;
        }
        let linger = self.path == Path::Relayed
            && self.finishing
            && self.stream.is_open()
            && !self.lossless();
        if linger {
            self.linger_until = Some(now.saturating_add(RELAY_LINGER));
        } else {
            self.stream.close(now);
            self.closing = true;
        }
    }

    /// Whether closing loses nothing either way: (a) the peer's FINISH came, (b) the peer
    /// acknowledged ours, and nothing of ours (our ack of its FINISH) waits in the buffer.
    fn lossless(&self) -> bool {
        self.stream.is_peer_finished()
            && self.stream.finish_acknowledged()
            && self.stream.queued() == 0
    }
}

impl Node {
    pub(crate) fn add_stream(
        &mut self,
        socket: SocketId,
        remote: SocketAddr,
        peer: PublicKey,
        path: Path,
        mut stream: SecureStream,
    ) -> StreamId {
        if path == Path::Relayed {
            // No half-close through a TURN relay: the FIN waits for the close (see
            // `poll_stream_op`), and the channel's FINISH-ACKs go out after our FINISH.
            stream.set_no_half_close();
        }
        let id = StreamId(self.next_stream);
        self.next_stream = self.next_stream.wrapping_add(1);
        self.stats.streams = self.stats.streams.saturating_add(1);
        self.streams.push(StreamSlot {
            id,
            socket,
            remote,
            peer,
            path,
            stream,
            closing: false,
            fin_held: false,
            finishing: false,
            linger_until: None,
        });
        id
    }

    fn stream_mut(&mut self, id: StreamId) -> Result<&mut StreamSlot, NodeApiError> {
        self.streams
            .iter_mut()
            .find(|s| s.id == id && !s.closing && s.linger_until.is_none())
            .ok_or(NodeApiError::UnknownStream)
    }

    /// Sends `bytes` on `stream`: takes as many as fit and returns how many (like
    /// [`std::io::Write::write`]); [`NodeEvent::Writable`] says when there is room again.
    pub fn send(
        &mut self,
        now: Instant,
        stream: StreamId,
        bytes: &[u8],
    ) -> Result<usize, NodeApiError> {
        let slot = self.stream_mut(stream)?;
        let taken = slot.stream.send(now, bytes).map_err(api_error)?;
        self.pump(now);
        Ok(taken)
    }

    /// How many bytes [`Node::send`] takes now on `stream`.
    pub fn send_room(&self, stream: StreamId) -> usize {
        self.streams
            .iter()
            .find(|s| s.id == stream && !s.closing)
            .map_or(0, |s| s.stream.send_room())
    }

    /// Finishes our sending side of `stream` (authenticated FINISH, then the FIN once every byte
    /// is taken: [`NodeEvent::Finished`]; on a relayed stream the FIN waits for the close, since
    /// a TURN relay has no half-close). We keep receiving until [`NodeEvent::PeerFinished`];
    /// [`NodeEvent::FinishAcknowledged`] says the peer read everything we sent.
    pub fn finish(&mut self, now: Instant, stream: StreamId) -> Result<(), NodeApiError> {
        let slot = self.stream_mut(stream)?;
        slot.stream.finish(now).map_err(api_error)?;
        slot.finishing = true;
        self.pump(now);
        Ok(())
    }

    /// Closes `stream` at once (unsent bytes are dropped) and releases its socket:
    /// [`NodeEvent::StreamClosed`]. Idempotent. A relayed stream we finished lingers first (a
    /// TURN relay has no half-close, and drops what it still holds for one side when the other
    /// closes): until the peer's FINISH is in and the peer acknowledged ours
    /// ([`NodeEvent::FinishAcknowledged`]), the relay ends the connection, or [`RELAY_LINGER`]
    /// passes. Nothing more is reported of it but `StreamClosed`.
    pub fn close_stream(&mut self, now: Instant, stream: StreamId) -> Result<(), NodeApiError> {
        let slot = self.stream_mut(stream)?;
        slot.close_or_linger(now);
        self.pump(now);
        Ok(())
    }

    /// Lingering relayed streams that may close without loss (both FINISHes in, ours
    /// acknowledged), that the relay ended, or whose linger ran out, close now; true if any did.
    pub(crate) fn step_lingering(&mut self, now: Instant) -> bool {
        let mut closed = false;
        for s in &mut self.streams {
            let Some(until) = s.linger_until else {
                continue;
            };
            if !s.stream.is_open() || s.lossless() || until <= now {
                s.linger_until = None;
                s.stream.close(now);
                s.closing = true;
                closed = true;
            }
        }
        closed
    }

    /// Test only: `stream` goes as if through a TURN relay (the path sets its close; the
    /// sockets stay as they are).
    #[cfg(test)]
    pub(crate) fn pretend_relayed(&mut self, stream: StreamId) {
        if let Some(s) = self.streams.iter_mut().find(|s| s.id == stream) {
            s.path = Path::Relayed;
            s.stream.set_no_half_close();
        }
    }

    /// The earliest end of a linger.
    pub(crate) fn linger_deadline(&self) -> Option<Instant> {
        self.streams.iter().filter_map(|s| s.linger_until).min()
    }

    /// The peer, path and peer's end of `stream`.
    pub fn stream_info(&self, stream: StreamId) -> Option<(PublicKey, Path, SocketAddr)> {
        self.streams
            .iter()
            .find(|s| s.id == stream)
            .map(|s| (s.peer, s.path, s.remote))
    }

    /// The runtime's socket id of `stream` (for the runtime's own view of it).
    pub fn stream_socket(&self, stream: StreamId) -> Option<SocketId> {
        let s = self.streams.iter().find(|s| s.id == stream)?;
        self.sockets.outer(Part::Own, s.socket)
    }

    /// Bytes queued on `stream` that the runtime has not taken.
    pub fn queued(&self, stream: StreamId) -> usize {
        self.streams
            .iter()
            .find(|s| s.id == stream)
            .map_or(0, |s| s.stream.queued())
    }

    pub(crate) fn on_stream_event(&mut self, i: usize, ev: StreamEvent) {
        let Some(slot) = self.streams.get_mut(i) else {
            return;
        };
        if slot.linger_until.is_some() {
            // Closed by the caller: nothing more is reported but `StreamClosed`.
            return;
        }
        let stream = slot.id;
        let event = match ev {
            StreamEvent::Data(bytes) => NodeEvent::Data { stream, bytes },
            StreamEvent::Failed(reason) => NodeEvent::StreamFailed { stream, reason },
            StreamEvent::PeerFinished => NodeEvent::PeerFinished { stream },
            StreamEvent::Finished => NodeEvent::Finished { stream },
            StreamEvent::Writable => NodeEvent::Writable { stream },
            StreamEvent::FinishAcknowledged => NodeEvent::FinishAcknowledged { stream },
            _ => return,
        };
        self.events.push_back(event);
    }

    pub(crate) fn poll_stream_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        for s in &mut self.streams {
            if s.closing {
                continue;
            }
            if let Some(len) = s.stream.poll_transmit(buf) {
                // Settle at once, so taken bytes leave the buffer and the rest goes out.
                self.deadline = Some(
                    self.deadline
                        .map_or(self.last_now, |d| d.min(self.last_now)),
                );
                let t = Transmit {
                    socket: s.socket,
                    destination: s.remote,
                    len,
                };
                if let Some(t) = self.sockets.transmit(Part::Own, t) {
                    return Some(t);
                }
            }
        }
        None
    }

    /// A stream's `Shutdown` once it finished, its `Close` once it is closed.
    pub(crate) fn poll_stream_op(&mut self) -> Option<SocketOp> {
        for i in 0..self.streams.len() {
            let Some(s) = self.streams.get_mut(i) else {
                break;
            };
            if !s.closing && s.stream.poll_shutdown() {
                let op = SocketOp::Shutdown { socket: s.socket };
                // A TURN relay carries no half-close: coturn answers a FIN on either leg of a
                // relayed connection by resetting both, and what the peer still had to send is
                // lost. The authenticated FINISH already told the peer; the FIN waits for the
                // close (where it makes the runtime write what it still holds before closing).
                let relayed = s.path == Path::Relayed;
                s.fin_held = relayed;
                // The shutdown raised the stream's `Finished`: hand it on now, since no input
                // may come after (the peer may be done already) to run the pump that would.
                while let Some(ev) = self.streams.get_mut(i).and_then(|s| s.stream.poll_event()) {
                    self.on_stream_event(i, ev);
                }
                if relayed {
                    continue;
                }
                if let Some(op) = self.sockets.outbound(Part::Own, op) {
                    return Some(op);
                }
            }
        }
        if let Some(s) = self.streams.iter_mut().find(|s| s.closing && s.fin_held) {
            s.fin_held = false;
            let op = SocketOp::Shutdown { socket: s.socket };
            if let Some(op) = self.sockets.outbound(Part::Own, op) {
                return Some(op);
            }
        }
        if let Some(pos) = self.streams.iter().position(|s| s.closing) {
            let slot = self.streams.remove(pos);
            self.events
                .push_back(NodeEvent::StreamClosed { stream: slot.id });
            if slot.path == Path::Relayed {
                self.relayed_stream_closed(slot.id);
            }
            return self.sockets.outbound(
                Part::Own,
                SocketOp::Close {
                    socket: slot.socket,
                },
            );
        }
        None
    }
}

fn api_error(e: StreamApiError) -> NodeApiError {
    match e {
        StreamApiError::SendBufferFull { .. } => NodeApiError::SendBufferFull,
        _ => NodeApiError::StreamClosed,
    }
}

//! The punched stream: its secure channel (every byte sealed and opened there), the send buffer
//! of sealed bytes, the transmits that take it, and the runtime's refusals (flow control) until
//! every byte is taken.

use core::net::SocketAddr;
use std::collections::VecDeque;

use p2pd_channel::{Channel, ChannelApiError, ChannelEvent, FRAME_HEADER_LEN, TAG_LEN};
use p2pd_proto::send_buffer::{FlowControl, SendBuffer};
use p2pd_proto::{Instant, SocketId, SocketOp, SocketOutcome, Transmit};

use super::{NodeEvent, NodePart, Part, PunchNode, STREAM_ID};
use crate::error::PunchApiError;

/// The punched stream's send buffer: most sealed bytes (frames of the secure channel)
/// [`PunchNode::send`] holds that the runtime has not taken yet. It is the stream's one send
/// buffer: `send` seals only what fits in it. A runtime takes a transmit only when it can
/// write it at once or hold what the kernel did not take in a small spill (`p2pd_mio` holds at
/// most 16 KiB per stream, then refuses until `Writable`); the bytes wait here meanwhile. When it
/// is full, `send` takes what fits and [`NodeEvent::Writable`] says when half of it is free.
pub const SEND_BUFFER: usize = 256 * 1024;

/// The punched stream, once up. Its bytes wait in `send` (see [`SendBuffer`] for the runtime's
/// flow control) until the runtime has taken them.
pub(super) struct Stream {
    pub(super) socket: SocketId,
    pub(super) remote: SocketAddr,
    /// The established secure channel: plaintext in and out goes through it.
    pub(super) channel: Channel,
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
    /// The stream the puncher connected, adopted by the node with its channel.
    pub(super) fn new(socket: SocketId, remote: SocketAddr, channel: Channel) -> Self {
        Stream {
            socket,
            remote,
            channel,
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
    pub(super) fn on_outcome(
        &mut self,
        now: Instant,
        outcome: SocketOutcome,
        events: &mut VecDeque<NodeEvent>,
    ) {
        if self.closed || self.send.on_outcome(&outcome) != FlowControl::NotFlowControl {
            return;
        }
        if matches!(outcome, SocketOutcome::PeerClosed) {
            // The end of the bytes: clean only after the peer's authenticated FINISH (then we
            // may still send and finish); otherwise the channel reports it truncated.
            self.channel.handle_end_of_stream(now);
            self.take_channel_output(events);
        } else if matches!(outcome, SocketOutcome::Failed { .. }) {
            // A reset ends the bytes too: truncated unless the peer's FINISH came first.
            self.channel.handle_end_of_stream(now);
            self.take_channel_output(events);
            self.fail(events);
        }
    }

    /// Bytes read from the stream: opened by the channel.
    pub(super) fn on_bytes(
        &mut self,
        now: Instant,
        bytes: &[u8],
        events: &mut VecDeque<NodeEvent>,
    ) {
        if self.closed {
            return;
        }
        self.channel.handle_input(now, bytes);
        self.take_channel_output(events);
    }

    /// Moves the channel's sealed bytes into the send buffer (as far as they fit) and its events
    /// out as the node's.
    pub(super) fn take_channel_output(&mut self, events: &mut VecDeque<NodeEvent>) {
        let taken = self.send.push(self.channel.pending_transmit());
        self.channel.consume_transmit(taken);
        while let Some(event) = self.channel.poll_event() {
            match event {
                ChannelEvent::Data(bytes) if !self.closed => {
                    events.push_back(NodeEvent::Data(bytes))
                }
                ChannelEvent::PeerFinished => self.end(events),
                ChannelEvent::Failed(failure) => {
                    events.push_back(NodeEvent::StreamFailed(failure));
                    self.fail(events);
                }
                ChannelEvent::Established { .. } | ChannelEvent::Data(_) | ChannelEvent::Closed => {
                }
            }
        }
    }

    /// The peer's sending side ended (reported once).
    fn end(&mut self, events: &mut VecDeque<NodeEvent>) {
        if !self.ended {
            self.ended = true;
            events.push_back(NodeEvent::StreamClosed);
        }
    }

    /// The stream failed: nothing more is sent or delivered.
    fn fail(&mut self, events: &mut VecDeque<NodeEvent>) {
        self.closed = true;
        self.clear();
        self.end(events);
    }

    /// Seals the FINISH once the channel may and the send buffer has room for it.
    pub(super) fn seal_finish(&mut self, now: Instant, events: &mut VecDeque<NodeEvent>) {
        let finish_len = FRAME_HEADER_LEN.saturating_add(TAG_LEN);
        if self.finishing
            && !self.closed
            && !self.channel.is_finished()
            && self.channel.pending_transmit().is_empty()
            && self.send.room() >= finish_len
            && self.channel.finish(now).is_ok()
        {
            self.take_channel_output(events);
        }
    }
}

/// The node's error for a channel's refusal of `send` or `finish`.
fn api_error(error: ChannelApiError, buffered: usize) -> PunchApiError {
    match error {
        ChannelApiError::Finished => PunchApiError::Finished,
        ChannelApiError::SendBufferFull => PunchApiError::SendBufferFull { buffered },
        ChannelApiError::NotEstablished
        | ChannelApiError::Closed
        | ChannelApiError::ContextTooLong
        | ChannelApiError::BadConfig
        | ChannelApiError::Noise => PunchApiError::StreamClosed,
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
        // Seal only what fits in the send buffer once sealed: it stays the stream's one buffer.
        let wire_room = stream
            .send
            .room()
            .saturating_sub(stream.channel.pending_transmit().len());
        let fits = stream.channel.plaintext_room(wire_room).min(bytes.len());
        if fits == 0 && !bytes.is_empty() {
            stream.wants_room = true;
            return Err(PunchApiError::SendBufferFull {
                buffered: stream.send.len(),
            });
        }
        let taken = match bytes.get(..fits) {
            Some([]) | None => 0,
            Some(part) => stream
                .channel
                .send(now, part)
                .map_err(|e| api_error(e, stream.send.len()))?,
        };
        stream.take_channel_output(&mut self.events);
        if stream.send.len() > SEND_BUFFER / 2 {
            // The caller is filling the buffer: tell it when half of it is free again.
            stream.wants_room = true;
        }
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
        if stream.closed {
            return Err(PunchApiError::StreamClosed);
        }
        stream.finishing = true;
        stream.seal_finish(now, &mut self.events);
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

    /// How many plaintext bytes [`PunchNode::send`] takes now (0 when the stream is not up for
    /// sending).
    pub fn send_room(&self) -> usize {
        match &self.stream {
            Some(s) if !s.closed && !s.finishing => s.channel.plaintext_room(
                s.send
                    .room()
                    .saturating_sub(s.channel.pending_transmit().len()),
            ),
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
            if s.finishing
                && !s.shut
                && !s.closed
                && s.channel.is_finished()
                && s.channel.pending_transmit().is_empty()
                && s.send.is_empty()
                && s.send.is_settled()
            {
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

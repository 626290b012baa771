//! A secure stream: one socket's [`Channel`] (handshaking or established) plus its send buffer
//! under the runtime's flow control ([`SendBuffer`]), for any machine that owns a stream socket.
//!
//! The owner feeds it what the socket gave ([`SecureStream::handle_bytes`],
//! [`SecureStream::handle_outcome`], [`SecureStream::handle_timeout`]), takes what to write
//! ([`SecureStream::poll_transmit`]; the owner makes its own deadline `now` while
//! [`SecureStream::wants_settle`] and then calls `handle_timeout`, the send buffer's settle
//! point), emits the socket's `Shutdown` when [`SecureStream::poll_shutdown`] says so, and reports
//! its [`StreamEvent`]s. It knows no socket id: the owner names the socket in its transmits and
//! intents, and closes the socket itself.
//!
//! Plaintext goes out with [`SecureStream::send`] (sealing only what fits in the send buffer, so
//! it stays the stream's one buffer) and our sending side ends with [`SecureStream::finish`] (the
//! channel's authenticated FINISH, then the TCP `Shutdown` once every byte is taken).
//!
//! The channel acknowledges the peer's FINISH by itself (a FINISH-ACK, see the crate docs); the
//! peer's acknowledgement of ours is [`StreamEvent::FinishAcknowledged`]
//! ([`SecureStream::finish_acknowledged`]). On a stream with a half-close the ack is sent only
//! while our sending side is open: an ack due after our `Shutdown` is dropped (the FIN already
//! tells the peer the rest). A stream without half-close (a TURN relay) calls
//! [`SecureStream::set_no_half_close`]: its owner holds the `Shutdown` for the close, so acks go
//! out after our FINISH too, and closing once both FINISHes are in and ours is acknowledged
//! loses nothing.

use core::fmt;
use std::collections::VecDeque;

use p2pd_proto::send_buffer::{FlowControl, SendBuffer};
use p2pd_proto::{Instant, SocketOutcome};
use p2pd_signaling::PublicKey;

use crate::{Channel, ChannelApiError, ChannelEvent, ChannelFailure, FRAME_OVERHEAD};

/// A stream's send buffer: most sealed bytes (frames of the secure channel) a [`SecureStream`]
/// holds that the runtime has not taken yet. A runtime takes a transmit only when it can write it
/// at once or hold what the kernel did not take in a small spill (`p2pd_mio` holds at most 16 KiB
/// per stream, then refuses until `Writable`); the bytes wait here meanwhile. When it is full,
/// [`SecureStream::send`] takes what fits and [`StreamEvent::Writable`] says when half of it is
/// free.
pub const SEND_BUFFER: usize = 256 * 1024;

/// What a [`SecureStream`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamEvent {
    /// The channel's handshake completed on this stream: the peer proved `peer`. Not reported
    /// when the channel was already established when the stream was made.
    Established {
        /// The identity the peer proved.
        peer: PublicKey,
    },
    /// Authenticated plaintext from the peer.
    Data(Vec<u8>),
    /// The channel failed (a failed handshake, tampered bytes, the stream cut before the peer's
    /// FINISH...): nothing more is sent or delivered; [`StreamEvent::PeerFinished`] follows.
    Failed(ChannelFailure),
    /// The peer finished sending (its authenticated FINISH, after its last
    /// [`StreamEvent::Data`]), or the stream failed. Reported once. After a clean FINISH our side
    /// stays up: [`SecureStream::send`] and [`SecureStream::finish`] work as before.
    PeerFinished,
    /// Our sending side is finished: after [`SecureStream::finish`], every queued byte was taken
    /// by the runtime and [`SecureStream::poll_shutdown`] told the owner to emit the `Shutdown`.
    Finished,
    /// The peer acknowledged our FINISH (its authenticated FINISH-ACK): it has read every byte we
    /// sent. Reported once, and only on a healthy stream.
    FinishAcknowledged,
    /// At least half of [`SEND_BUFFER`] is free again, after a [`SecureStream::send`] was refused
    /// because it was full or left it more than half full.
    Writable,
}

/// Why a [`SecureStream`] refused [`SecureStream::send`] or [`SecureStream::finish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamApiError {
    /// The channel's handshake has not completed yet.
    NotEstablished,
    /// The stream failed or was closed.
    Closed,
    /// [`SecureStream::finish`] was called: nothing more is sent.
    Finished,
    /// The send buffer is full: nothing of the bytes fit ([`StreamEvent::Writable`] follows).
    SendBufferFull {
        /// Bytes waiting in the send buffer.
        buffered: usize,
    },
}

impl fmt::Display for StreamApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamApiError::NotEstablished => f.write_str("the secure channel is not established"),
            StreamApiError::Closed => f.write_str("the stream is closed"),
            StreamApiError::Finished => f.write_str("our sending side is finished"),
            StreamApiError::SendBufferFull { buffered } => {
                write!(f, "the send buffer is full ({buffered} bytes buffered)")
            }
        }
    }
}

impl std::error::Error for StreamApiError {}

/// One stream socket's secure channel and send buffer: see the [module docs](self).
#[derive(Debug)]
pub struct SecureStream {
    /// Every byte in and out goes through it.
    channel: Channel,
    /// Sealed bytes the runtime has not taken yet (see [`SendBuffer`] for its flow control).
    send: SendBuffer,
    events: VecDeque<StreamEvent>,
    /// [`StreamEvent::Established`] was reported, or the channel was established at `new`.
    established: bool,
    /// `send` was refused because the buffer was full, or left it more than half full: report
    /// [`StreamEvent::Writable`] once half of it is free.
    wants_room: bool,
    /// Failed, or closed: nothing more is sent or reported.
    closed: bool,
    /// [`SecureStream::finish`] was called: no more `send`; the `Shutdown` goes out once the
    /// buffer is empty (every byte taken by the runtime).
    finishing: bool,
    /// [`SecureStream::poll_shutdown`] said `true`.
    shut: bool,
    /// [`StreamEvent::PeerFinished`] was reported.
    ended: bool,
    /// The socket's sending side closes at [`SecureStream::poll_shutdown`] (false: the owner
    /// holds the `Shutdown` for the close, see [`SecureStream::set_no_half_close`]).
    half_close: bool,
}

impl SecureStream {
    /// The stream of `channel`, established or still handshaking. The channel's pending output (a
    /// leader's last handshake message, a fresh initiator's first one) goes into the send buffer
    /// at once, and events it holds (data that came right behind the handshake) are reported.
    pub fn new(channel: Channel) -> Self {
        Self::with_prefix(channel, &[])
    }

    /// Like [`SecureStream::new`], with `prefix` (bytes an earlier owner of the socket had
    /// already queued for it, at most [`SEND_BUFFER`]) going out before anything of the channel.
    pub fn with_prefix(channel: Channel, prefix: &[u8]) -> Self {
        let established = channel.is_established();
        let mut stream = SecureStream {
            channel,
            send: SendBuffer::new(SEND_BUFFER),
            events: VecDeque::new(),
            established,
            wants_room: false,
            closed: false,
            finishing: false,
            shut: false,
            ended: false,
            half_close: true,
        };
        let _ = stream.send.push(prefix);
        stream.take_channel_output();
        stream
    }

    /// For a socket without half-close (a TURN relay): the owner does not shut its sending side
    /// when [`SecureStream::poll_shutdown`] says `true` (it holds the `Shutdown` for the close),
    /// so the channel's FINISH-ACK of the peer's FINISH still goes out after our own FINISH.
    pub fn set_no_half_close(&mut self) {
        self.half_close = false;
    }

    /// Whether the peer acknowledged our FINISH ([`StreamEvent::FinishAcknowledged`]).
    pub fn finish_acknowledged(&self) -> bool {
        self.channel.is_finish_acknowledged()
    }

    /// Whether the peer's authenticated FINISH came.
    pub fn is_peer_finished(&self) -> bool {
        self.channel.is_peer_finished()
    }

    /// Bytes read from the socket: opened by the channel (handshake messages and frames).
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        if self.closed {
            return;
        }
        self.channel.handle_input(now, bytes);
        self.update(now);
    }

    /// An outcome for the socket: a refusal of a transmit or `Writable` (flow control), the
    /// peer's EOF (clean only after its authenticated FINISH, otherwise
    /// [`ChannelFailure::Truncated`]), or a failure (which ends the stream). Other outcomes are
    /// ignored.
    pub fn handle_outcome(&mut self, now: Instant, outcome: &SocketOutcome) {
        if self.closed || self.send.on_outcome(outcome) != FlowControl::NotFlowControl {
            self.update(now);
            return;
        }
        if matches!(outcome, SocketOutcome::PeerClosed) {
            // The end of the bytes: clean only after the peer's authenticated FINISH (then we
            // may still send and finish); otherwise the channel reports it truncated.
            self.channel.handle_end_of_stream(now);
            self.take_channel_output();
        } else if matches!(outcome, SocketOutcome::Failed { .. }) {
            // A reset ends the bytes too: truncated unless the peer's FINISH came first.
            self.channel.handle_end_of_stream(now);
            self.take_channel_output();
            self.fail();
        }
        self.update(now);
    }

    /// Time passed: the send buffer's settle point (every transmit since the last one that was not
    /// refused was taken), and the channel's handshake deadline when due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.send.settle();
        if !self.closed && self.channel.poll_timeout().is_some_and(|t| t <= now) {
            self.channel.handle_timeout(now);
        }
        self.update(now);
    }

    /// Takes as many of `bytes` as fit in the send buffer ([`SEND_BUFFER`]) and returns how many,
    /// like [`std::io::Write::write`]: a partial write leaves the rest to the caller, and
    /// [`StreamEvent::Writable`] says when half of the buffer is free again. `Err` before the
    /// handshake completed, after a failure or [`SecureStream::close`], after
    /// [`SecureStream::finish`], or when the buffer is full and `bytes` is not empty
    /// ([`StreamApiError::SendBufferFull`]). The peer's FINISH does not stop sending.
    pub fn send(&mut self, now: Instant, bytes: &[u8]) -> Result<usize, StreamApiError> {
        if self.closed {
            return Err(StreamApiError::Closed);
        }
        if self.finishing {
            return Err(StreamApiError::Finished);
        }
        if !self.channel.is_established() {
            return Err(StreamApiError::NotEstablished);
        }
        // Seal only what fits in the send buffer once sealed: it stays the stream's one buffer.
        let fits = self.send_room().min(bytes.len());
        if fits == 0 && !bytes.is_empty() {
            self.wants_room = true;
            return Err(StreamApiError::SendBufferFull {
                buffered: self.send.len(),
            });
        }
        let taken = match bytes.get(..fits) {
            Some([]) | None => 0,
            Some(part) => self
                .channel
                .send(now, part)
                .map_err(|e| api_error(e, self.send.len()))?,
        };
        self.take_channel_output();
        if self.send.len() > SEND_BUFFER / 2 {
            // The caller is filling the buffer: tell it when half of it is free again.
            self.wants_room = true;
        }
        self.update(now);
        Ok(taken)
    }

    /// Finishes our sending side (half-close): the channel's authenticated FINISH follows every
    /// byte queued so far, and once the runtime has taken all of it
    /// [`SecureStream::poll_shutdown`] tells the owner to emit the socket's `Shutdown` (the peer
    /// reads every byte, then EOF). We keep receiving. [`SecureStream::send`] fails from now on.
    /// Idempotent; `Err` before the handshake completed and after a failure or close.
    pub fn finish(&mut self, now: Instant) -> Result<(), StreamApiError> {
        if self.closed {
            return Err(StreamApiError::Closed);
        }
        if !self.channel.is_established() {
            return Err(StreamApiError::NotEstablished);
        }
        self.finishing = true;
        self.update(now);
        Ok(())
    }

    /// How many plaintext bytes [`SecureStream::send`] takes now (0 while handshaking, after
    /// [`SecureStream::finish`], a failure or close).
    pub fn send_room(&self) -> usize {
        if self.closed || self.finishing {
            return 0;
        }
        self.channel.plaintext_room(
            self.send
                .room()
                .saturating_sub(self.channel.pending_transmit().len()),
        )
    }

    /// Writes the next bytes for the socket into `buf` and returns how many (`None` when there is
    /// nothing to send now). After a transmit the owner's deadline is `now`
    /// ([`SecureStream::wants_settle`]).
    #[must_use]
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.closed {
            return None;
        }
        self.send.poll_transmit(buf)
    }

    /// `true` exactly once, when the owner must emit the socket's `Shutdown`: after
    /// [`SecureStream::finish`], once the FINISH is sealed and every byte was taken by the
    /// runtime (settled). Reports [`StreamEvent::Finished`] then.
    #[must_use]
    pub fn poll_shutdown(&mut self) -> bool {
        // Unsettled transmits stay in the buffer until the next settle point, so refused ones
        // are sent first.
        if self.finishing
            && !self.shut
            && !self.closed
            && self.channel.is_finished()
            && self.channel.pending_transmit().is_empty()
            && self.send.is_empty()
            && self.send.is_settled()
        {
            self.shut = true;
            self.events.push_back(StreamEvent::Finished);
            return true;
        }
        false
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<StreamEvent> {
        self.events.pop_front()
    }

    /// The channel's deadline (its handshake's). The owner must also call
    /// [`SecureStream::handle_timeout`] at `now` while [`SecureStream::wants_settle`].
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        self.channel.poll_timeout()
    }

    /// Whether transmits went out since the last settle point and the runtime is not blocked: the
    /// owner makes its deadline `now` and calls [`SecureStream::handle_timeout`] then.
    pub fn wants_settle(&self) -> bool {
        !self.closed && self.send.wants_settle()
    }

    /// Stops sending and delivering: buffered bytes are dropped and the channel is closed.
    /// Idempotent. The owner emits the socket's `Close` itself. Events already reported stay
    /// queued.
    pub fn close(&mut self, now: Instant) {
        if !self.closed {
            self.closed = true;
            self.channel.close(now);
            // Its `Closed` event is ours to drop.
            while self.channel.poll_event().is_some() {}
        }
        self.clear();
    }

    /// Whether the stream has not failed nor been closed (true while handshaking, and after the
    /// peer's FINISH or our own).
    pub fn is_open(&self) -> bool {
        !self.closed
    }

    /// Whether the channel's handshake completed and the stream has not failed nor been closed.
    pub fn is_established(&self) -> bool {
        !self.closed && self.channel.is_established()
    }

    /// Whether our `Shutdown` went out ([`SecureStream::poll_shutdown`] said `true`).
    pub fn is_finished(&self) -> bool {
        self.shut
    }

    /// Bytes waiting to be written (including those handed to the runtime and not yet known to
    /// be taken).
    pub fn queued(&self) -> usize {
        self.send.len()
    }

    /// The identity the peer proved, once it did.
    pub fn peer(&self) -> Option<PublicKey> {
        self.channel.peer()
    }

    /// The secure channel (stats, role).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    // ----- internals -----

    /// After every input and command: the channel's sealed bytes that did not fit yet, a FINISH
    /// waiting for room, and `Writable` once half of the buffer is free.
    fn update(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.take_channel_output();
        self.seal_finish(now);
        if self.wants_room && !self.closed && self.send.len() <= SEND_BUFFER / 2 {
            self.wants_room = false;
            self.events.push_back(StreamEvent::Writable);
        }
    }

    /// Moves the channel's sealed bytes into the send buffer (as far as they fit) and its events
    /// out as the stream's.
    fn take_channel_output(&mut self) {
        if !self.closed && self.shut && self.half_close {
            // Our sending side is shut: a FINISH-ACK due now cannot go out (the FIN told the
            // peer what it needs); drop it.
            let pending = self.channel.pending_transmit().len();
            self.channel.consume_transmit(pending);
        } else if !self.closed {
            let taken = self.send.push(self.channel.pending_transmit());
            self.channel.consume_transmit(taken);
        }
        while let Some(event) = self.channel.poll_event() {
            match event {
                ChannelEvent::Established { peer } if !self.closed => {
                    if !self.established {
                        self.established = true;
                        self.events.push_back(StreamEvent::Established { peer });
                    }
                }
                ChannelEvent::Data(bytes) if !self.closed => {
                    self.events.push_back(StreamEvent::Data(bytes))
                }
                ChannelEvent::PeerFinished => self.end(),
                ChannelEvent::FinishAcknowledged if !self.closed => {
                    self.events.push_back(StreamEvent::FinishAcknowledged)
                }
                ChannelEvent::Failed(failure) if !self.closed => {
                    self.events.push_back(StreamEvent::Failed(failure));
                    self.fail();
                }
                ChannelEvent::Established { .. }
                | ChannelEvent::Data(_)
                | ChannelEvent::Failed(_)
                | ChannelEvent::FinishAcknowledged
                | ChannelEvent::Closed => {}
            }
        }
    }

    /// The peer's sending side ended (reported once).
    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.events.push_back(StreamEvent::PeerFinished);
        }
    }

    /// The stream failed: nothing more is sent or delivered.
    fn fail(&mut self) {
        self.closed = true;
        self.clear();
        self.end();
    }

    fn clear(&mut self) {
        self.send.clear();
        self.wants_room = false;
    }

    /// Seals the FINISH once the channel may and the send buffer has room for it.
    fn seal_finish(&mut self, now: Instant) {
        let finish_len = FRAME_OVERHEAD;
        if self.finishing
            && !self.closed
            && !self.channel.is_finished()
            && self.channel.pending_transmit().is_empty()
            && self.send.room() >= finish_len
            && self.channel.finish(now).is_ok()
        {
            self.take_channel_output();
        }
    }
}

/// The stream's error for a channel's refusal of `send`.
fn api_error(error: ChannelApiError, buffered: usize) -> StreamApiError {
    match error {
        ChannelApiError::Finished => StreamApiError::Finished,
        ChannelApiError::SendBufferFull => StreamApiError::SendBufferFull { buffered },
        ChannelApiError::NotEstablished => StreamApiError::NotEstablished,
        ChannelApiError::Closed
        | ChannelApiError::ContextTooLong
        | ChannelApiError::BadConfig
        | ChannelApiError::Noise => StreamApiError::Closed,
    }
}

#[cfg(test)]
mod tests;

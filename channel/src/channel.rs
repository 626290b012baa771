//! The channel machine: the Noise XX handshake with identity proofs, then authenticated,
//! encrypted frames both ways, half-close and close (the wire format is in the crate docs).

use core::time::Duration;
use std::collections::VecDeque;

use p2pd_proto::Instant;
use p2pd_signaling::{NodeId, PublicKey};
use snow::{HandshakeState, TransportState};

use crate::error::{ChannelApiError, ChannelFailure, HandshakeError};
use crate::frame::{
    header, FrameReader, Next, FRAME_HEADER_LEN, FRAME_OVERHEAD, HANDSHAKE_MAX_LEN, KIND_DATA,
    KIND_FINISH, KIND_FINISH_ACK, KIND_LEN, TAG_LEN,
};
use crate::keys::{verify_proof, ChannelKeys};
use crate::resolver::SeededResolver;
use crate::{MAX_CONTEXT_LEN, NOISE_PARAMS, PROLOGUE_PREFIX};

/// The most plaintext one Noise transport message carries.
const NOISE_MAX_PLAINTEXT: usize = 65_535 - TAG_LEN;
/// The most application bytes one frame carries (the kind byte takes one of Noise's).
const MAX_FRAME: usize = NOISE_MAX_PLAINTEXT - KIND_LEN;

/// Which end of the handshake a channel is, and whom it expects at the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends the first message; fails with [`ChannelFailure::WrongPeer`] unless the responder
    /// proves `expect`.
    Initiator {
        /// The identity the responder must prove.
        expect: NodeId,
    },
    /// Answers; learns the initiator's identity, and checks it against `expect` when given.
    Responder {
        /// The identity the initiator must prove, if only one is welcome.
        expect: Option<NodeId>,
    },
}

/// A channel's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelConfig {
    /// The most plaintext bytes in one frame, ours and the peer's (a longer announced frame is
    /// [`ChannelFailure::TooLarge`]): `1..=65518`. Both ends must use the same value. The wire
    /// frame is [`FRAME_OVERHEAD`] bytes longer (header, kind byte, tag).
    pub max_frame: usize,
    /// The most wire bytes [`Channel::send`] holds that the caller has not taken with
    /// [`Channel::poll_transmit`]; at least one whole frame (`max_frame + 19`). FINISH and
    /// FINISH-ACK frames (19 bytes each) are sealed beyond it.
    pub send_buffer: usize,
    /// The handshake must be complete this long after the channel is created.
    pub handshake_timeout: Duration,
}

impl ChannelConfig {
    /// Whether the limits are in range (`max_frame` in `1..=65518`, `send_buffer` at least one
    /// whole frame): [`ChannelApiError::BadConfig`] otherwise. [`Channel::new`] checks it; a
    /// machine that builds channels later checks it once, when it is built.
    pub fn check(&self) -> Result<(), ChannelApiError> {
        if self.max_frame == 0
            || self.max_frame > MAX_FRAME
            || self.send_buffer < frame_wire_len(self.max_frame)
        {
            return Err(ChannelApiError::BadConfig);
        }
        Ok(())
    }
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            max_frame: 16 * 1024,
            send_buffer: 256 * 1024,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// What a channel reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelEvent {
    /// The handshake completed: the peer proved this identity. Data may flow both ways.
    Established {
        /// The peer's identity (its node id: [`PublicKey::node_id`]).
        peer: PublicKey,
    },
    /// Plaintext the peer sent, authenticated, in order.
    Data(Vec<u8>),
    /// The peer finished its sending side (authenticated half-close): no more data will come.
    /// The channel has sealed its FINISH-ACK (take the transmits).
    PeerFinished,
    /// The peer acknowledged our FINISH: it has read every byte we sent (reported once).
    FinishAcknowledged,
    /// The channel failed; nothing more is delivered or sent. Close the stream.
    Failed(ChannelFailure),
    /// [`Channel::close`] took effect (reported once).
    Closed,
}

/// Counters (all saturating).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Transport frames read and authenticated (FINISH and FINISH-ACK included).
    pub frames_in: u64,
    /// Transport frames sealed (FINISH and FINISH-ACK included).
    pub frames_out: u64,
    /// Plaintext bytes delivered.
    pub bytes_in: u64,
    /// Plaintext bytes sealed.
    pub bytes_out: u64,
    /// Input bytes ignored because the channel had already failed or closed.
    pub dropped_after_end: u64,
}

enum State {
    Handshake(Box<HandshakeState>),
    Transport(Box<TransportState>),
    /// Failed or closed.
    Ended,
}

/// A secure channel over a byte stream: see the [crate docs](crate).
pub struct Channel {
    config: ChannelConfig,
    role: Role,
    own: NodeId,
    proof: [u8; crate::PROOF_LEN],
    state: State,
    reader: FrameReader,
    /// Wire bytes for the stream: `out_start..out_end` wait to be taken. The bytes past
    /// `out_end` are scratch kept from earlier frames, so sealing does not zero-fill its buffer
    /// every time (the length stays at its high-water mark, within the send buffer and one
    /// FINISH and one FINISH-ACK frame, or one handshake message).
    out: Vec<u8>,
    out_start: usize,
    out_end: usize,
    /// The plaintext being sealed (kind byte and payload), kept between frames.
    plain: Vec<u8>,
    events: VecDeque<ChannelEvent>,
    /// The handshake deadline, while handshaking.
    deadline: Option<Instant>,
    /// Handshake messages read so far.
    handshake_reads: u8,
    peer: Option<PublicKey>,
    finished: bool,
    peer_finished: bool,
    /// The peer's FINISH-ACK of our FINISH came.
    finish_acked: bool,
    closed: bool,
    stats: ChannelStats,
}

impl core::fmt::Debug for Channel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Channel")
            .field("role", &self.role)
            .field("established", &self.is_established())
            .field("peer", &self.peer)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// A channel in `role` with `keys`, bound to `context` (at most [`MAX_CONTEXT_LEN`] bytes;
    /// both ends must pass the same), its ephemeral key drawn from `seed` (32 secret random
    /// bytes, a new one for every channel: [`crate::SeedSource`]). An initiator's first message
    /// is ready at once ([`Channel::poll_transmit`]).
    pub fn new(
        config: ChannelConfig,
        keys: &ChannelKeys,
        role: Role,
        context: &[u8],
        seed: [u8; 32],
        now: Instant,
    ) -> Result<Channel, ChannelApiError> {
        config.check()?;
        let context_len =
            u8::try_from(context.len()).map_err(|_| ChannelApiError::ContextTooLong)?;
        debug_assert!(context.len() <= MAX_CONTEXT_LEN);
        let mut prologue = Vec::with_capacity(PROLOGUE_PREFIX.len().saturating_add(256));
        prologue.extend_from_slice(PROLOGUE_PREFIX);
        prologue.push(context_len);
        prologue.extend_from_slice(context);
        let params = NOISE_PARAMS.parse().map_err(|_| ChannelApiError::Noise)?;
        let builder = snow::Builder::with_resolver(params, Box::new(SeededResolver::new(seed)))
            .local_private_key(keys.static_private())
            .and_then(|b| b.prologue(&prologue))
            .map_err(|_| ChannelApiError::Noise)?;
        let handshake = match role {
            Role::Initiator { .. } => builder.build_initiator(),
            Role::Responder { .. } => builder.build_responder(),
        }
        .map_err(|_| ChannelApiError::Noise)?;
        let mut channel = Channel {
            config,
            role,
            own: keys.identity().node_id(),
            proof: *keys.proof(),
            state: State::Handshake(Box::new(handshake)),
            reader: FrameReader::default(),
            out: Vec::new(),
            out_start: 0,
            out_end: 0,
            plain: Vec::new(),
            events: VecDeque::new(),
            deadline: Some(now.saturating_add(config.handshake_timeout)),
            handshake_reads: 0,
            peer: None,
            finished: false,
            peer_finished: false,
            finish_acked: false,
            closed: false,
            stats: ChannelStats::default(),
        };
        if matches!(role, Role::Initiator { .. }) {
            channel
                .write_handshake(&[])
                .map_err(|_| ChannelApiError::Noise)?;
        }
        Ok(channel)
    }

    /// Bytes read from the stream. Complete frames are processed at once (events follow); a
    /// partial frame waits for the rest. After a failure or close the bytes are counted and
    /// ignored.
    pub fn handle_input(&mut self, _now: Instant, bytes: &[u8]) {
        let mut input = bytes;
        while !input.is_empty() {
            let (min, max) = match &self.state {
                State::Handshake(_) => (1, HANDSHAKE_MAX_LEN),
                State::Transport(_) => (
                    TAG_LEN.saturating_add(KIND_LEN),
                    self.config
                        .max_frame
                        .saturating_add(KIND_LEN)
                        .saturating_add(TAG_LEN),
                ),
                State::Ended => break,
            };
            match self.reader.next(&mut input, min, max) {
                Next::NeedMore => {}
                Next::Bad(failure) => self.fail(failure),
                Next::Frame(body) => self.on_frame(body),
                Next::Assembled(buffer) => {
                    self.on_frame(buffer.get(FRAME_HEADER_LEN..).unwrap_or_default());
                    self.reader.recycle(buffer);
                }
            }
        }
        if matches!(self.state, State::Ended) {
            let ignored = u64::try_from(input.len()).unwrap_or(u64::MAX);
            self.stats.dropped_after_end = self.stats.dropped_after_end.saturating_add(ignored);
        }
    }

    /// The stream ended (the peer's FIN, or it broke). Unless the peer had finished with its
    /// authenticated FINISH and no frame was cut short, that is [`ChannelFailure::Truncated`].
    pub fn handle_end_of_stream(&mut self, _now: Instant) {
        let clean = matches!(self.state, State::Transport(_))
            && self.peer_finished
            && !self.reader.is_mid_frame();
        if !clean {
            self.fail(ChannelFailure::Truncated);
        }
    }

    /// Time passed: a handshake past its deadline fails with [`ChannelFailure::HandshakeTimeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.fail(ChannelFailure::HandshakeTimeout);
        }
    }

    /// Seals as much of `plaintext` as fits in the send buffer into frames and returns how many
    /// bytes it took, like [`std::io::Write::write`]. `Err` before the handshake completed, after
    /// [`Channel::finish`], after a failure or close, and ([`ChannelApiError::SendBufferFull`])
    /// when not one byte fits and `plaintext` is not empty.
    pub fn send(&mut self, _now: Instant, plaintext: &[u8]) -> Result<usize, ChannelApiError> {
        self.check_sendable()?;
        if self.finished {
            return Err(ChannelApiError::Finished);
        }
        self.compact();
        let mut taken = 0usize;
        while let Some(rest) = plaintext.get(taken..).filter(|r| !r.is_empty()) {
            let room = self.config.send_buffer.saturating_sub(self.out_end);
            let fits = room.saturating_sub(FRAME_OVERHEAD);
            let len = fits.min(self.config.max_frame).min(rest.len());
            let Some(chunk) = rest.get(..len).filter(|c| !c.is_empty()) else {
                break;
            };
            self.seal(KIND_DATA, chunk)?;
            taken = taken.saturating_add(len);
        }
        if taken == 0 && !plaintext.is_empty() {
            return Err(ChannelApiError::SendBufferFull);
        }
        Ok(taken)
    }

    /// Finishes our sending side: seals the authenticated FINISH after every byte sent so far.
    /// The peer reads all of it, then [`ChannelEvent::PeerFinished`], and acknowledges it
    /// ([`ChannelEvent::FinishAcknowledged`] here); we keep receiving. On a stream with a
    /// half-close, close its sending side (TCP shutdown) once the transmits are taken, or later
    /// to let our FINISH-ACK of the peer's FINISH out too. Idempotent.
    pub fn finish(&mut self, _now: Instant) -> Result<(), ChannelApiError> {
        self.check_sendable()?;
        if !self.finished {
            self.compact();
            self.seal(KIND_FINISH, &[])?;
            self.finished = true;
        }
        Ok(())
    }

    /// Closes the channel: unsent bytes are discarded, nothing more is delivered, and
    /// [`ChannelEvent::Closed`] is reported once. Idempotent. (For a graceful end: `finish`,
    /// take every transmit, wait for the peer's FINISH, then close.)
    pub fn close(&mut self, _now: Instant) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.end();
        self.events.push_back(ChannelEvent::Closed);
    }

    /// Copies the next wire bytes for the stream into `buf` and returns how many (`None` when
    /// there are none).
    #[must_use]
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        let pending = self.pending_transmit();
        if pending.is_empty() || buf.is_empty() {
            return None;
        }
        let len = pending.len().min(buf.len());
        let (dst, src) = (buf.get_mut(..len)?, pending.get(..len)?);
        dst.copy_from_slice(src);
        self.consume_transmit(len);
        Some(len)
    }

    /// The wire bytes waiting for the stream, without copying (take them with
    /// [`Channel::consume_transmit`]).
    pub fn pending_transmit(&self) -> &[u8] {
        self.out
            .get(self.out_start..self.out_end)
            .unwrap_or_default()
    }

    /// Marks the first `len` bytes of [`Channel::pending_transmit`] as written.
    pub fn consume_transmit(&mut self, len: usize) {
        self.out_start = self.out_start.saturating_add(len).min(self.out_end);
        if self.out_start == self.out_end {
            self.out_start = 0;
            self.out_end = 0;
        }
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ChannelEvent> {
        self.events.pop_front()
    }

    /// The handshake deadline, while the handshake runs.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the handshake completed and the channel has not failed or closed.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Transport(_))
    }

    /// Whether the channel failed or was closed.
    pub fn is_ended(&self) -> bool {
        matches!(self.state, State::Ended)
    }

    /// The identity the peer proved, once it did.
    pub fn peer(&self) -> Option<PublicKey> {
        self.peer
    }

    /// This channel's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// How many plaintext bytes [`Channel::send`] takes now (0 unless established and not
    /// finished).
    pub fn send_room(&self) -> usize {
        let pending = self.pending_transmit().len();
        self.plaintext_room(self.config.send_buffer.saturating_sub(pending))
    }

    /// How many plaintext bytes fit in `wire_room` bytes of frames (0 unless established and not
    /// finished): for a caller that bounds its own buffer of wire bytes.
    pub fn plaintext_room(&self, wire_room: usize) -> usize {
        if !self.is_established() || self.finished {
            return 0;
        }
        let overhead = FRAME_OVERHEAD;
        let whole = wire_room
            .checked_div(frame_wire_len(self.config.max_frame))
            .unwrap_or(0);
        let rest = wire_room
            .checked_rem(frame_wire_len(self.config.max_frame))
            .unwrap_or(0);
        whole
            .saturating_mul(self.config.max_frame)
            .saturating_add(rest.saturating_sub(overhead))
    }

    /// Whether our FINISH was sealed.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Whether the peer's FINISH arrived.
    pub fn is_peer_finished(&self) -> bool {
        self.peer_finished
    }

    /// Whether the peer acknowledged our FINISH (it has every byte we sent).
    pub fn is_finish_acknowledged(&self) -> bool {
        self.finish_acked
    }

    /// The counters.
    pub fn stats(&self) -> ChannelStats {
        self.stats
    }

    // ----- internals -----

    fn check_sendable(&self) -> Result<(), ChannelApiError> {
        match self.state {
            State::Handshake(_) => Err(ChannelApiError::NotEstablished),
            State::Transport(_) => Ok(()),
            State::Ended => Err(ChannelApiError::Closed),
        }
    }

    /// Moves the pending bytes to the front of `out`.
    fn compact(&mut self) {
        if self.out_start > 0 {
            self.out.copy_within(self.out_start..self.out_end, 0);
            self.out_end = self.out_end.saturating_sub(self.out_start);
            self.out_start = 0;
        }
    }

    /// The `len` bytes after the pending ones in `out`, grown (zero-filled) only past its
    /// high-water mark.
    fn out_tail(out: &mut Vec<u8>, out_end: usize, len: usize) -> Option<&mut [u8]> {
        let end = out_end.checked_add(len)?;
        if out.len() < end {
            out.resize(end, 0);
        }
        out.get_mut(out_end..end)
    }

    /// Seals one transport frame of `kind` carrying `payload` onto `out`.
    pub(crate) fn seal(&mut self, kind: u8, payload: &[u8]) -> Result<(), ChannelApiError> {
        let State::Transport(transport) = &mut self.state else {
            return Err(ChannelApiError::NotEstablished);
        };
        self.plain.clear();
        self.plain.push(kind);
        self.plain.extend_from_slice(payload);
        let body = self.plain.len().saturating_add(TAG_LEN);
        let wire_len = frame_wire_len(payload.len());
        let frame =
            Self::out_tail(&mut self.out, self.out_end, wire_len).ok_or(ChannelApiError::Noise)?;
        let (head, dst) = frame.split_at_mut(FRAME_HEADER_LEN);
        match transport.write_message(&self.plain, dst) {
            Ok(written) if written == body => head.copy_from_slice(&header(body)),
            _ => return Err(ChannelApiError::Noise),
        }
        self.out_end = self.out_end.saturating_add(wire_len);
        self.stats.frames_out = self.stats.frames_out.saturating_add(1);
        let len = u64::try_from(payload.len()).unwrap_or(u64::MAX);
        self.stats.bytes_out = self.stats.bytes_out.saturating_add(len);
        Ok(())
    }

    /// Test support (feature `testing`): seals a transport frame of any `kind` with any
    /// `payload`, which this channel never sends on its own (an unknown kind, an empty DATA, an
    /// ack without a FINISH...): what a faulty or hostile peer holding the session keys could
    /// send. The channel's own state (finished, acked) does not change.
    #[cfg(feature = "testing")]
    pub fn seal_raw(&mut self, kind: u8, payload: &[u8]) -> Result<(), ChannelApiError> {
        self.check_sendable()?;
        self.compact();
        self.seal(kind, payload)
    }

    /// Writes the next handshake message with `payload` onto `out`.
    fn write_handshake(&mut self, payload: &[u8]) -> Result<(), snow::Error> {
        let State::Handshake(handshake) = &mut self.state else {
            return Err(snow::Error::Input);
        };
        let mut message = [0u8; HANDSHAKE_MAX_LEN];
        let len = handshake.write_message(payload, &mut message)?;
        let body = message.get(..len).ok_or(snow::Error::Input)?;
        let wire_len = FRAME_HEADER_LEN.saturating_add(len);
        let frame =
            Self::out_tail(&mut self.out, self.out_end, wire_len).ok_or(snow::Error::Input)?;
        let (head, dst) = frame.split_at_mut(FRAME_HEADER_LEN);
        head.copy_from_slice(&header(len));
        dst.copy_from_slice(body);
        self.out_end = self.out_end.saturating_add(wire_len);
        Ok(())
    }

    fn on_frame(&mut self, body: &[u8]) {
        match &mut self.state {
            State::Handshake(_) => self.on_handshake_message(body),
            State::Transport(_) => self.on_transport_frame(body),
            State::Ended => {}
        }
    }

    fn on_handshake_message(&mut self, message: &[u8]) {
        let State::Handshake(handshake) = &mut self.state else {
            return;
        };
        if handshake.is_my_turn() {
            // Never with this protocol (each side writes as soon as it has read), but a message
            // where none is due is malformed, not a panic.
            return self.fail(ChannelFailure::BadHandshake(HandshakeError::Malformed));
        }
        // The responder's first read is message 1 (XX sends the initiator's static key only in
        // message 3).
        let first_of_responder = !handshake.is_initiator() && self.handshake_reads == 0;
        self.handshake_reads = self.handshake_reads.saturating_add(1);
        let mut payload = [0u8; HANDSHAKE_MAX_LEN];
        let len = match handshake.read_message(message, &mut payload) {
            Ok(len) => len,
            Err(snow::Error::Decrypt) => {
                return self.fail(ChannelFailure::BadHandshake(HandshakeError::Decrypt))
            }
            Err(_) => return self.fail(ChannelFailure::BadHandshake(HandshakeError::Malformed)),
        };
        let payload = payload.get(..len).unwrap_or_default();
        if first_of_responder {
            // Message 1 carries no payload; answer with message 2 and our proof.
            if !payload.is_empty() {
                return self.fail(ChannelFailure::BadHandshake(HandshakeError::Malformed));
            }
            let proof = self.proof;
            if self.write_handshake(&proof).is_err() {
                self.fail(ChannelFailure::BadHandshake(HandshakeError::Malformed));
            }
            return;
        }
        // Message 2 (we initiated) or 3 (we respond): the peer's proof.
        let proved = handshake
            .get_remote_static()
            .and_then(|static_public| verify_proof(payload, static_public));
        let Some(proved) = proved else {
            return self.fail(ChannelFailure::BadHandshake(HandshakeError::BadProof));
        };
        if let Err(failure) = self.check_peer(proved) {
            return self.fail(failure);
        }
        if matches!(self.role, Role::Initiator { .. }) {
            let proof = self.proof;
            if self.write_handshake(&proof).is_err() {
                return self.fail(ChannelFailure::BadHandshake(HandshakeError::Malformed));
            }
        }
        let State::Handshake(handshake) = std::mem::replace(&mut self.state, State::Ended) else {
            return;
        };
        match handshake.into_transport_mode() {
            Ok(transport) => {
                self.state = State::Transport(Box::new(transport));
                self.deadline = None;
                self.peer = Some(proved);
                self.events
                    .push_back(ChannelEvent::Established { peer: proved });
            }
            Err(_) => {
                // The state is already `Ended` (taken for the conversion): end and report here,
                // as `fail` would.
                self.end();
                self.events
                    .push_back(ChannelEvent::Failed(ChannelFailure::BadHandshake(
                        HandshakeError::Malformed,
                    )));
            }
        }
    }

    /// Whether the proven identity is the one this channel accepts.
    fn check_peer(&self, proved: PublicKey) -> Result<(), ChannelFailure> {
        let proved = proved.node_id();
        let expected = match self.role {
            Role::Initiator { expect } => Some(expect),
            Role::Responder { expect } => expect,
        };
        match expected {
            Some(expected) if expected == proved => Ok(()),
            Some(expected) => Err(ChannelFailure::WrongPeer {
                expected: Some(expected),
                proved,
            }),
            None if proved == self.own => Err(ChannelFailure::WrongPeer {
                expected: None,
                proved,
            }),
            None => Ok(()),
        }
    }

    fn on_transport_frame(&mut self, body: &[u8]) {
        let State::Transport(transport) = &mut self.state else {
            return;
        };
        // Room for the tag too: snow then opens in place in this buffer (given only the
        // plaintext's length, it copies the frame into a scratch vector first, then back).
        let mut plaintext = vec![0u8; body.len()];
        match transport.read_message(body, &mut plaintext) {
            Ok(len) => plaintext.truncate(len),
            Err(_) => return self.fail(ChannelFailure::Tampered),
        }
        self.stats.frames_in = self.stats.frames_in.saturating_add(1);
        let Some((&kind, payload)) = plaintext.split_first() else {
            return self.fail(ChannelFailure::BadPlaintext);
        };
        match kind {
            KIND_DATA | KIND_FINISH if self.peer_finished => {
                self.fail(ChannelFailure::DataAfterFinish)
            }
            KIND_DATA if payload.is_empty() => self.fail(ChannelFailure::BadPlaintext),
            KIND_DATA => {
                let len = payload.len();
                // Drop the kind byte in place: the plaintext's buffer becomes the event's.
                plaintext.copy_within(KIND_LEN.., 0);
                plaintext.truncate(len);
                let len = u64::try_from(len).unwrap_or(u64::MAX);
                self.stats.bytes_in = self.stats.bytes_in.saturating_add(len);
                self.events.push_back(ChannelEvent::Data(plaintext));
            }
            KIND_FINISH | KIND_FINISH_ACK if !payload.is_empty() => {
                self.fail(ChannelFailure::BadPlaintext)
            }
            KIND_FINISH => {
                // Read in order: every DATA before it was authenticated and handed out above,
                // so acknowledge it now (once: a second FINISH fails above).
                self.peer_finished = true;
                self.events.push_back(ChannelEvent::PeerFinished);
                self.compact();
                if self.seal(KIND_FINISH_ACK, &[]).is_err() {
                    self.fail(ChannelFailure::BadPlaintext);
                }
            }
            KIND_FINISH_ACK if !self.finished || self.finish_acked => {
                self.fail(ChannelFailure::UnexpectedAck)
            }
            KIND_FINISH_ACK => {
                self.finish_acked = true;
                self.events.push_back(ChannelEvent::FinishAcknowledged);
            }
            unknown => self.fail(ChannelFailure::UnknownKind(unknown)),
        }
    }

    /// Ends the channel with `failure` (once; nothing after a failure or close).
    fn fail(&mut self, failure: ChannelFailure) {
        if matches!(self.state, State::Ended) {
            return;
        }
        self.end();
        self.events.push_back(ChannelEvent::Failed(failure));
    }

    fn end(&mut self) {
        self.state = State::Ended;
        self.out = Vec::new();
        self.out_start = 0;
        self.out_end = 0;
        self.reader.clear();
        self.deadline = None;
    }
}

/// The wire length of a frame carrying `payload` bytes (after the kind byte).
fn frame_wire_len(payload: usize) -> usize {
    payload.saturating_add(FRAME_OVERHEAD)
}

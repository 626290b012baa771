//! Length-prefixed frames on the byte stream: reassembly with a bound, and the header.

use crate::error::ChannelFailure;

/// The length field in front of every frame (big-endian u16).
pub const FRAME_HEADER_LEN: usize = 2;
/// The most bytes a handshake message may announce (the longest of ours is 193).
pub const HANDSHAKE_MAX_LEN: usize = 256;
/// The authentication tag every transport frame ends with.
pub const TAG_LEN: usize = 16;
/// The kind byte in front of every transport plaintext (see the crate docs).
pub const KIND_LEN: usize = 1;
/// Transport plaintext kind: application bytes (1 to `max_frame` of them) follow.
pub const KIND_DATA: u8 = 0;
/// Transport plaintext kind: FINISH, the sender's authenticated half-close (nothing follows).
pub const KIND_FINISH: u8 = 1;
/// Transport plaintext kind: the acknowledgement of the peer's FINISH (nothing follows).
pub const KIND_FINISH_ACK: u8 = 2;
/// The wire bytes a transport frame adds to what it carries: header, kind byte and tag.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + KIND_LEN + TAG_LEN;

/// Where the next frame of a byte stream stands: the partial frame carried over from earlier
/// input (at most one frame, header included), with the bound checked as soon as the header is in.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    partial: Vec<u8>,
}

/// One step of [`FrameReader::next`].
pub(crate) enum Next<'a> {
    /// A whole frame body, inside the input.
    Frame(&'a [u8]),
    /// A whole frame assembled from several inputs: its header and body (hand the buffer back
    /// with [`FrameReader::recycle`]).
    Assembled(Vec<u8>),
    /// Every byte was taken; more are needed for a frame.
    NeedMore,
    /// The length field is out of bounds.
    Bad(ChannelFailure),
}

impl FrameReader {
    /// Whether bytes of an unfinished frame are held.
    pub(crate) fn is_mid_frame(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Frees the held bytes.
    pub(crate) fn clear(&mut self) {
        self.partial = Vec::new();
    }

    /// The next frame from the held bytes and `input` (advanced past what it takes). Frames
    /// wholly inside `input` are returned without a copy; only a frame split across inputs is
    /// assembled in the reader. `min..=max` bounds the body's length.
    pub(crate) fn next<'a>(&mut self, input: &mut &'a [u8], min: usize, max: usize) -> Next<'a> {
        if self.partial.is_empty() {
            // Fast path: a whole frame in the input.
            if let Some(len) = announced(input) {
                if !(min..=max).contains(&len) {
                    return Next::Bad(ChannelFailure::TooLarge { len, max });
                }
                let end = FRAME_HEADER_LEN.saturating_add(len);
                if let (Some(body), Some(rest)) =
                    (input.get(FRAME_HEADER_LEN..end), input.get(end..))
                {
                    *input = rest;
                    return Next::Frame(body);
                }
            }
        }
        // Assemble: the header first, then the body, never more than one frame.
        if self.partial.len() < FRAME_HEADER_LEN {
            let want = FRAME_HEADER_LEN.saturating_sub(self.partial.len());
            let (head, rest) = input.split_at(want.min(input.len()));
            self.partial.extend_from_slice(head);
            *input = rest;
            if self.partial.len() < FRAME_HEADER_LEN {
                return Next::NeedMore;
            }
        }
        let Some(len) = announced(&self.partial) else {
            return Next::NeedMore;
        };
        if !(min..=max).contains(&len) {
            return Next::Bad(ChannelFailure::TooLarge { len, max });
        }
        let total = FRAME_HEADER_LEN.saturating_add(len);
        let want = total.saturating_sub(self.partial.len());
        let (body, rest) = input.split_at(want.min(input.len()));
        self.partial.extend_from_slice(body);
        *input = rest;
        if self.partial.len() < total {
            return Next::NeedMore;
        }
        Next::Assembled(std::mem::take(&mut self.partial))
    }

    /// Takes back the buffer of an [`Next::Assembled`] frame, so the next one reuses it.
    pub(crate) fn recycle(&mut self, mut buffer: Vec<u8>) {
        if self.partial.is_empty() {
            buffer.clear();
            self.partial = buffer;
        }
    }
}

/// The length a frame header announces, once both of its bytes are there.
fn announced(bytes: &[u8]) -> Option<usize> {
    match bytes {
        [hi, lo, ..] => Some(usize::from(u16::from_be_bytes([*hi, *lo]))),
        _ => None,
    }
}

/// The frame header for a body of `len` bytes (at most `u16::MAX`; callers bound it).
pub(crate) fn header(len: usize) -> [u8; FRAME_HEADER_LEN] {
    u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes()
}

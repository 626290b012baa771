//! STUN over a byte stream (RFC 8489 §6.2.2): messages sent back to back on TCP (or TLS), each
//! sized by its own header's length field, reassembled from chunks split anywhere.
//!
//! See [`StreamFramer`].

use super::decode::{DecodeError, Message};

/// What the front of a [`StreamFramer`] holds.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FrameStatus {
    /// Not a whole frame yet: wait for more bytes.
    Partial,
    /// A whole frame of this many bytes starts the buffer (`held()[..len]`).
    Complete(usize),
    /// The bytes cannot start a frame (the length rule refused them), or they announce one longer
    /// than the framer's capacity ([`DecodeError::LengthMismatch`]): the stream is unusable.
    Bad(DecodeError),
}

/// A bounded buffer reassembling STUN messages (or other length-prefixed frames) from a byte
/// stream.
///
/// It is the one reassembly buffer every stream reader in the workspace uses: the STUN client
/// over TCP, the STUN server's TCP connections, the TURN client's control and data connections,
/// and the simulator's TURN server. It is bounded: its capacity, fixed when it is built and
/// allocated then (filling never allocates), is also the longest frame it accepts, so what a
/// peer can make it hold never grows with the peer's input.
///
/// A reader loops: [`fill`](StreamFramer::fill) a chunk (what does not fit is handed back, to be
/// filled again once a frame is consumed), ask for the [`status`](StreamFramer::status) of the
/// frame at the front, handle a [`FrameStatus::Complete`] frame and
/// [`consume`](StreamFramer::consume) it, stop on [`FrameStatus::Partial`] and close the stream
/// on [`FrameStatus::Bad`] (the framing is lost: nothing after it can be trusted).
///
/// Protocols that multiplex other frames with STUN on the same stream (TURN ChannelData, RFC 8656
/// §12.5) pass their own length rule to [`status_with`](StreamFramer::status_with); the
/// bookkeeping (partial, too long for the capacity) stays here.
///
/// ```
/// use p2pd_proto::stun::{Class, FrameStatus, Header, MessageWriter, Method, StreamFramer};
/// use p2pd_proto::stun::TransactionId;
/// let header = Header::new(Class::Request, Method::BINDING, TransactionId::new([1; 12]));
/// let mut msg = [0u8; 64];
/// let len = MessageWriter::new(&mut msg, header).unwrap().finish();
///
/// let mut framer = StreamFramer::new(1024);
/// // The first 7 bytes arrive: not a whole message yet.
/// assert!(framer.fill(&msg[..7]).is_empty());
/// assert_eq!(framer.status(), FrameStatus::Partial);
/// // The rest arrives.
/// assert!(framer.fill(&msg[7..len]).is_empty());
/// assert_eq!(framer.status(), FrameStatus::Complete(len));
/// // ...decode `&framer.held()[..len]`, then drop it.
/// framer.consume(len);
/// assert!(framer.held().is_empty());
/// ```
///
/// The capacity is the longest frame accepted. With a capacity of at least
/// [`HEADER_LEN`](super::HEADER_LEN) a full buffer always holds a whole frame or a bad one, never
/// a partial one, so a reader that consumes what it handles never gets stuck.
///
/// The default framer has capacity 0: it holds nothing (a placeholder, for example while the
/// real one is taken out with [`core::mem::take`]).
#[derive(Clone, Debug, Default)]
pub struct StreamFramer {
    /// The bytes held, at most `capacity` (its allocation is made up front).
    buf: Vec<u8>,
    capacity: usize,
}

impl StreamFramer {
    /// An empty framer holding at most `capacity` bytes, which is also the longest frame it
    /// accepts. Allocates its buffer now; nothing later allocates.
    pub fn new(capacity: usize) -> Self {
        StreamFramer {
            buf: Vec::with_capacity(capacity),
            capacity,
        }
    }

    /// The most bytes held (and the longest frame accepted).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends as much of `data` as fits and returns the rest (empty if it all fit). The rest is
    /// not lost: fill it again once [`consume`](Self::consume) has made room.
    pub fn fill<'d>(&mut self, data: &'d [u8]) -> &'d [u8] {
        let room = self.capacity.saturating_sub(self.buf.len());
        let (now, rest) = data.split_at(room.min(data.len()));
        self.buf.extend_from_slice(now);
        rest
    }

    /// The bytes held: the frame at the front (whole or not), then whatever followed it.
    pub fn held(&self) -> &[u8] {
        &self.buf
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Whether a whole STUN message (RFC 5389/8489, or RFC 3489 legacy) starts the buffer, sized
    /// by [`Message::needed`]: `Partial` until its 20-byte header and the body it announces have
    /// arrived; `Bad` if the first bytes are not a STUN header (top bits set, length not a
    /// multiple of 4) or announce more than the capacity. A `Complete` message is framed, not
    /// validated: decode it.
    pub fn status(&self) -> FrameStatus {
        self.status_with(Message::needed)
    }

    /// [`status`](Self::status) with another length rule: `frame_len(held)` returns the total
    /// size of the frame starting `held` (it need not all be there yet),
    /// `Err(DecodeError::TooShort)` while too few bytes are held to tell, or another error if
    /// the bytes cannot start a frame. A length beyond the capacity is `Bad(LengthMismatch)`.
    pub fn status_with<F>(&self, frame_len: F) -> FrameStatus
    where
        F: FnOnce(&[u8]) -> Result<usize, DecodeError>,
    {
        let held = self.held();
        match frame_len(held) {
            Err(DecodeError::TooShort) => FrameStatus::Partial,
            Err(e) => FrameStatus::Bad(e),
            Ok(total) if total > self.capacity => FrameStatus::Bad(DecodeError::LengthMismatch),
            Ok(total) if total > held.len() => FrameStatus::Partial,
            Ok(total) => FrameStatus::Complete(total),
        }
    }

    /// Drops the first `n` bytes held (a frame that was handled); everything if `n` is more than
    /// is held.
    pub fn consume(&mut self, n: usize) {
        self.buf.drain(..n.min(self.buf.len()));
    }

    /// Drops everything held (the stream is reset or handed over). Keeps the allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::stun::{Attribute, Class, Header, MessageWriter, Method, TransactionId, HEADER_LEN};

    /// A Binding request with SOFTWARE `software` and FINGERPRINT.
    fn message(id: u8, software: &str) -> Vec<u8> {
        let mut buf = [0u8; 512];
        let header = Header::new(
            Class::Request,
            Method::BINDING,
            TransactionId::new([id; 12]),
        );
        let mut w = MessageWriter::new(&mut buf, header).unwrap();
        w.add(&Attribute::Software(software)).unwrap();
        w.add_fingerprint().unwrap();
        let len = w.finish();
        buf[..len].to_vec()
    }

    #[test]
    fn empty_is_partial() {
        let f = StreamFramer::new(64);
        assert_eq!(f.status(), FrameStatus::Partial);
        assert!(f.is_empty());
        assert_eq!(f.capacity(), 64);
    }

    #[test]
    fn split_at_every_offset() {
        let msg = message(1, "split me");
        for cut in 0..=msg.len() {
            let mut f = StreamFramer::new(1024);
            assert!(f.fill(&msg[..cut]).is_empty());
            if cut < msg.len() {
                assert_eq!(f.status(), FrameStatus::Partial, "cut at {cut}");
            }
            assert!(f.fill(&msg[cut..]).is_empty());
            assert_eq!(f.status(), FrameStatus::Complete(msg.len()), "cut at {cut}");
            let decoded = Message::decode(&f.held()[..msg.len()]).unwrap();
            assert_eq!(decoded.software(), Some("split me"));
            f.consume(msg.len());
            assert!(f.is_empty());
            assert_eq!(f.status(), FrameStatus::Partial);
        }
    }

    #[test]
    fn byte_by_byte() {
        let msg = message(2, "one at a time");
        let mut f = StreamFramer::new(1024);
        for (i, b) in msg.iter().enumerate() {
            assert_eq!(f.status(), FrameStatus::Partial, "after {i} bytes");
            assert!(f.fill(core::slice::from_ref(b)).is_empty());
        }
        assert_eq!(f.status(), FrameStatus::Complete(msg.len()));
    }

    #[test]
    fn two_messages_in_one_chunk() {
        let a = message(3, "first");
        let b = message(4, "the second one");
        let mut chunk = a.clone();
        chunk.extend_from_slice(&b);
        // And split the pair at every offset too.
        for cut in 0..=chunk.len() {
            let mut f = StreamFramer::new(1024);
            let mut seen = Vec::new();
            for part in [&chunk[..cut], &chunk[cut..]] {
                assert!(f.fill(part).is_empty());
                while let FrameStatus::Complete(n) = f.status() {
                    let m = Message::decode(&f.held()[..n]).unwrap();
                    seen.push(m.transaction_id());
                    f.consume(n);
                }
            }
            assert_eq!(
                seen,
                [TransactionId::new([3; 12]), TransactionId::new([4; 12])],
                "cut at {cut}"
            );
            assert!(f.is_empty());
        }
    }

    #[test]
    fn what_does_not_fit_is_handed_back() {
        let a = message(5, "a");
        let b = message(6, "b");
        let mut chunk = a.clone();
        chunk.extend_from_slice(&b);
        // Room for the first message only.
        let mut f = StreamFramer::new(a.len());
        let rest = f.fill(&chunk);
        assert_eq!(rest, &b[..]);
        assert_eq!(f.status(), FrameStatus::Complete(a.len()));
        f.consume(a.len());
        assert!(f.fill(rest).is_empty());
        assert_eq!(f.status(), FrameStatus::Complete(b.len()));
    }

    #[test]
    fn capacity_exactly_full() {
        let msg = message(7, "exactly");
        let mut f = StreamFramer::new(msg.len());
        assert!(f.fill(&msg).is_empty());
        assert_eq!(f.held().len(), f.capacity());
        assert_eq!(f.status(), FrameStatus::Complete(msg.len()));
        // A full buffer takes nothing more.
        assert_eq!(f.fill(&[0]), &[0]);
        f.consume(msg.len());
        assert!(f.fill(&[0]).is_empty());
    }

    #[test]
    fn oversized_is_bad() {
        let msg = message(8, "too long for the buffer");
        let mut f = StreamFramer::new(msg.len() - 4);
        // Known from the header alone, before the body arrives.
        assert!(f.fill(&msg[..HEADER_LEN]).is_empty());
        assert_eq!(f.status(), FrameStatus::Bad(DecodeError::LengthMismatch));
        let rest = f.fill(&msg[HEADER_LEN..]);
        assert_eq!(rest.len(), 4);
        assert_eq!(f.status(), FrameStatus::Bad(DecodeError::LengthMismatch));
    }

    #[test]
    fn non_stun_is_bad() {
        let mut f = StreamFramer::new(1024);
        // Fewer than 20 bytes: cannot tell yet.
        assert!(f.fill(b"GET / HTTP/1.1\r\n").is_empty());
        assert_eq!(f.status(), FrameStatus::Partial);
        assert!(f.fill(b"Host: x\r\n").is_empty());
        assert_eq!(f.status(), FrameStatus::Bad(DecodeError::NotStun));

        let mut f = StreamFramer::new(1024);
        let mut msg = message(9, "x");
        msg[3] |= 1; // length not a multiple of 4
        assert!(f.fill(&msg).is_empty());
        assert_eq!(f.status(), FrameStatus::Bad(DecodeError::UnalignedLength));
    }

    #[test]
    fn well_framed_garbage_is_complete() {
        // Framing only looks at the header: the body is the decoder's business.
        let mut f = StreamFramer::new(64);
        let mut bytes = [0u8; 24];
        bytes[3] = 4;
        // One attribute announcing 100 bytes of value in a 4-byte body.
        bytes[20..24].copy_from_slice(&[0, 1, 0, 100]);
        assert!(f.fill(&bytes).is_empty());
        assert_eq!(f.status(), FrameStatus::Complete(24));
        assert!(Message::decode(&f.held()[..24]).is_err());
    }

    #[test]
    fn other_length_rule() {
        // A 4-byte header whose last two bytes are the body length, padded to 4.
        let rule = |held: &[u8]| match held {
            [_, _, l0, l1, ..] => Ok((usize::from(u16::from_be_bytes([*l0, *l1])) + 4 + 3) & !3),
            _ => Err(DecodeError::TooShort),
        };
        let mut f = StreamFramer::new(16);
        assert!(f.fill(&[0x40, 0, 0]).is_empty());
        assert_eq!(f.status_with(rule), FrameStatus::Partial);
        assert!(f.fill(&[5, 1, 2, 3, 4, 5]).is_empty());
        assert_eq!(f.status_with(rule), FrameStatus::Partial);
        assert!(f.fill(&[0, 0, 0]).is_empty());
        assert_eq!(f.status_with(rule), FrameStatus::Complete(12));
        f.consume(12);
        assert!(f.fill(&[0x40, 0, 0, 13]).is_empty());
        assert_eq!(
            f.status_with(rule),
            FrameStatus::Bad(DecodeError::LengthMismatch)
        );
        let refuse = |_: &[u8]| Err(DecodeError::NotStun);
        assert_eq!(
            f.status_with(refuse),
            FrameStatus::Bad(DecodeError::NotStun)
        );
    }

    #[test]
    fn consume_and_clear() {
        let mut f = StreamFramer::new(8);
        assert!(f.fill(b"abcdef").is_empty());
        f.consume(2);
        assert_eq!(f.held(), b"cdef");
        f.consume(100);
        assert!(f.is_empty());
        assert!(f.fill(b"xyz").is_empty());
        f.clear();
        assert!(f.is_empty());
        assert_eq!(f.fill(b"123456789"), b"9");
    }

    #[test]
    fn default_holds_nothing() {
        let mut f = StreamFramer::default();
        assert_eq!(f.capacity(), 0);
        assert_eq!(f.fill(b"abc"), b"abc");
        assert_eq!(f.status(), FrameStatus::Partial);
    }
}

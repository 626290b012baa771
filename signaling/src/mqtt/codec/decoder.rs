//! The streaming, size-bounded decoder, which skips oversized PUBLISH packets as they stream past.

use bytes::BytesMut;
use mqttbytes_ng::{v4, v5};

use super::{
    map_decode_err, CodecError, Packet, Protocol, QoS, MAX_FIXED_HEADER, MAX_REMAINING_LEN,
};

/// The PUBLISH packet type (upper four bits of the first byte).
const PUBLISH_TYPE: u8 = 3;

/// What [`Decoder::next`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Decoded {
    /// A complete, valid packet.
    Packet(Packet),
    /// A PUBLISH larger than the decoder's limit: its bytes were discarded as they arrived,
    /// never buffered, and the stream goes on with the next packet.
    Skipped(SkippedPublish),
}

/// An oversized PUBLISH that [`Decoder`] skipped, as far as its header tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SkippedPublish {
    /// The frame size in bytes, fixed header included.
    pub size: usize,
    /// The decoder's limit.
    pub max: usize,
    /// Its QoS, as its flags say (QoS 2 is the receiver's to judge).
    pub qos: QoS,
    /// Its packet id: non-zero above QoS 0 (so a QoS 1 message can still be acknowledged), 0 for
    /// QoS 0.
    pub pkid: u16,
    /// Its retain flag (set on a retained message sent at subscription time).
    pub retain: bool,
    /// Its DUP flag.
    pub dup: bool,
}

/// A PUBLISH being skipped: how much of its body has passed and what was read on the way (the
/// topic length, then the packet id right after the topic).
#[derive(Debug)]
struct Skip {
    publish: SkippedPublish,
    /// Body bytes (after the fixed header).
    body_len: usize,
    /// Body bytes discarded so far.
    seen: usize,
    /// The topic length (body bytes 0 and 1).
    topic_len: usize,
}

impl Skip {
    /// The skip of a PUBLISH whose first byte is `first` and whose frame is `size` bytes, of
    /// which `header_len` are the fixed header.
    fn start(first: u8, header_len: usize, size: usize, max: usize) -> Result<Skip, CodecError> {
        let qos = match (first >> 1) & 0b11 {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            _ => return Err(CodecError::Malformed("invalid QoS")),
        };
        Ok(Skip {
            publish: SkippedPublish {
                size,
                max,
                qos,
                pkid: 0,
                retain: first & 1 != 0,
                dup: first & 0b1000 != 0,
            },
            body_len: size.saturating_sub(header_len),
            seen: 0,
            topic_len: 0,
        })
    }

    /// Body bytes still to come.
    fn remaining(&self) -> usize {
        self.body_len.saturating_sub(self.seen)
    }

    /// Discards the next bytes of the body from `data`, reading the topic length and packet id
    /// as they pass; returns how many bytes it took.
    fn absorb(&mut self, data: &[u8]) -> Result<usize, CodecError> {
        let take = data.len().min(self.remaining());
        let start = self.seen;
        let end = start.saturating_add(take);
        let byte_at = |pos: usize| -> Option<u8> {
            if pos >= start && pos < end {
                data.get(pos.saturating_sub(start)).copied()
            } else {
                None
            }
        };
        if let Some(high) = byte_at(0) {
            self.topic_len = usize::from(high) << 8;
        }
        if let Some(low) = byte_at(1) {
            self.topic_len = self.topic_len.saturating_add(usize::from(low));
            // The topic and the packet id must fit in the body.
            let pkid_len = if self.publish.qos == QoS::AtMostOnce {
                0
            } else {
                2
            };
            if self.topic_len.saturating_add(2).saturating_add(pkid_len) > self.body_len {
                return Err(CodecError::Malformed("topic longer than the packet"));
            }
        }
        if self.publish.qos != QoS::AtMostOnce {
            let at = self.topic_len.saturating_add(2);
            if let Some(high) = byte_at(at) {
                self.publish.pkid = u16::from(high) << 8;
            }
            if let Some(low) = byte_at(at.saturating_add(1)) {
                self.publish.pkid |= u16::from(low);
            }
        }
        self.seen = end;
        if self.remaining() == 0 && self.publish.qos != QoS::AtMostOnce && self.publish.pkid == 0 {
            return Err(CodecError::Malformed("packet id 0"));
        }
        Ok(take)
    }
}

/// Parses a fixed header at the start of `buf`: `Ok(None)` if more bytes are needed, else
/// `(header_len, remaining_len)`.
fn parse_fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, CodecError> {
    let mut remaining: usize = 0;
    let mut multiplier: usize = 1;
    for (i, byte) in buf.iter().skip(1).take(4).enumerate() {
        // At most four digits: the value stays below 2^28, nothing saturates.
        remaining = remaining.saturating_add(usize::from(byte & 0x7f).saturating_mul(multiplier));
        multiplier = multiplier.saturating_mul(128);
        if byte & 0x80 == 0 {
            return Ok(Some((i.saturating_add(2), remaining)));
        }
        if i == 3 {
            return Err(CodecError::Malformed("remaining length over 4 bytes"));
        }
    }
    Ok(None)
}

/// Streaming MQTT decoder: feed bytes with [`push`](Decoder::push), take packets with
/// [`next`](Decoder::next). Frames may be split anywhere and several may arrive at once.
///
/// It buffers at most `max_packet_size` bytes (at least 5): [`push`](Decoder::push) accepts
/// what fits and returns how many bytes it took, so the caller drains packets with
/// [`next`](Decoder::next) and pushes the rest.
///
/// A PUBLISH larger than `max_packet_size` (header included) is not an error: as soon as its
/// fixed header is complete the decoder starts discarding its bytes as they arrive (reading
/// only its flags and packet id on the way), and reports it as [`Decoded::Skipped`] once its
/// last byte has passed; the packets after it decode as usual. Any other frame larger than the
/// limit is [`CodecError::TooLarge`], known from its header alone. After an error the decoder
/// is poisoned: the MQTT connection has to be closed.
///
/// ```
/// use p2pd_signaling::mqtt::{encode, Decoded, Decoder, Packet, Protocol, QoS};
/// let mut wire = Vec::new();
/// encode(&Packet::PingReq, Protocol::V311, &mut wire).unwrap();
/// let big = Packet::Publish {
///     topic: "t".into(),
///     qos: QoS::AtLeastOnce,
///     pkid: 9,
///     retain: true,
///     dup: false,
///     payload: vec![0; 4096],
/// };
/// encode(&big, Protocol::V311, &mut wire).unwrap();
/// encode(&Packet::PubAck { pkid: 7 }, Protocol::V311, &mut wire).unwrap();
/// let mut decoder = Decoder::new(Protocol::V311, 1024);
/// let mut out = Vec::new();
/// let mut rest = &wire[..];
/// while !rest.is_empty() {
///     let taken = decoder.push(rest).unwrap();
///     rest = &rest[taken..];
///     while let Some(decoded) = decoder.next() {
///         out.push(decoded.unwrap());
///     }
/// }
/// assert_eq!(out[0], Decoded::Packet(Packet::PingReq));
/// assert!(matches!(out[1], Decoded::Skipped(s) if s.pkid == 9 && s.retain));
/// assert_eq!(out[2], Decoded::Packet(Packet::PubAck { pkid: 7 }));
/// assert!(decoder.buffered() <= 1024);
/// ```
#[derive(Debug)]
pub struct Decoder {
    protocol: Protocol,
    buffer: BytesMut,
    max_packet_size: usize,
    poisoned: bool,
    /// The oversized PUBLISH whose bytes are being discarded.
    skip: Option<Skip>,
    /// A skipped PUBLISH whose last byte has passed, not yet returned by `next`.
    skipped: Option<SkippedPublish>,
    /// An error found while skipping, not yet returned by `next`.
    failed: Option<CodecError>,
}

impl Decoder {
    /// A decoder for `protocol` that accepts frames of up to `max_packet_size` bytes (fixed
    /// header included).
    pub fn new(protocol: Protocol, max_packet_size: usize) -> Self {
        Self {
            protocol,
            buffer: BytesMut::new(),
            max_packet_size,
            poisoned: false,
            skip: None,
            skipped: None,
            failed: None,
        }
    }

    /// Largest number of bytes this decoder ever buffers.
    pub fn capacity(&self) -> usize {
        self.max_packet_size.max(MAX_FIXED_HEADER)
    }

    /// Bytes currently buffered (an incomplete frame, or frames not yet taken).
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Whether an oversized PUBLISH is being skipped (its last bytes have not arrived yet).
    pub fn is_skipping(&self) -> bool {
        self.skip.is_some()
    }

    /// Takes as much of `data` as it can: the bytes of a PUBLISH being skipped (discarded), then
    /// as much as fits in the buffer. Returns how many bytes were taken. Taking fewer than
    /// `data.len()` means something is waiting: call [`next`](Self::next) until it returns
    /// `None`, then push the rest. Fails only once the decoder is poisoned.
    pub fn push(&mut self, data: &[u8]) -> Result<usize, CodecError> {
        if self.poisoned {
            return Err(CodecError::Poisoned);
        }
        if self.failed.is_some() {
            return Ok(0);
        }
        let mut taken = 0;
        if let Some(skip) = &mut self.skip {
            match skip.absorb(data) {
                Ok(n) => taken = n,
                Err(e) => {
                    self.failed = Some(e);
                    self.skip = None;
                    return Ok(0);
                }
            }
            if skip.remaining() == 0 {
                self.skipped = Some(skip.publish);
                self.skip = None;
            } else {
                return Ok(taken);
            }
        }
        let rest = data.get(taken..).unwrap_or_default();
        let room = self.capacity().saturating_sub(self.buffer.len());
        let take = rest.len().min(room);
        let chunk = rest.get(..take).unwrap_or_default();
        self.buffer.extend_from_slice(chunk);
        Ok(taken.saturating_add(take))
    }

    /// The next packet or skipped PUBLISH, `None` if more bytes are needed. After an error is
    /// returned, the decoder is poisoned and returns `None`.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<Decoded, CodecError>> {
        if self.poisoned {
            return None;
        }
        if let Some(error) = self.failed.take() {
            return Some(self.poison(error));
        }
        if let Some(skipped) = self.skipped.take() {
            return Some(Ok(Decoded::Skipped(skipped)));
        }
        match self.decode_one() {
            Ok(decoded) => decoded.map(Ok),
            Err(error) => Some(self.poison(error)),
        }
    }

    fn poison(&mut self, error: CodecError) -> Result<Decoded, CodecError> {
        self.poisoned = true;
        self.buffer = BytesMut::new();
        self.skip = None;
        self.skipped = None;
        Err(error)
    }

    fn decode_one(&mut self) -> Result<Option<Decoded>, CodecError> {
        if self.skip.is_some() {
            return Ok(None);
        }
        let Some((header_len, remaining)) = parse_fixed_header(&self.buffer)? else {
            return Ok(None);
        };
        let frame_len = header_len.saturating_add(remaining);
        if frame_len > self.max_packet_size {
            let first = self.buffer.first().copied().unwrap_or_default();
            if first >> 4 != PUBLISH_TYPE {
                return Err(CodecError::TooLarge {
                    size: frame_len,
                    max: self.max_packet_size,
                });
            }
            return self.start_skip(first, header_len, frame_len);
        }
        if self.buffer.len() < frame_len {
            return Ok(None);
        }
        let mut frame = self.buffer.split_to(frame_len);
        // Exactly one complete frame: the crate cannot ask for more bytes.
        let packet = match self.protocol {
            Protocol::V311 => v4::Packet::read(&mut frame, MAX_REMAINING_LEN)
                .map_err(map_decode_err)
                .and_then(super::v311::from_v4),
            Protocol::V5 => v5::Packet::read(&mut frame, None)
                .map_err(map_decode_err)
                .and_then(super::v5::from_v5),
        }?;
        if !frame.is_empty() {
            return Err(CodecError::Malformed("framing disagreement"));
        }
        Ok(Some(Decoded::Packet(packet)))
    }

    /// Starts skipping the oversized PUBLISH at the start of the buffer: everything buffered
    /// belongs to it (it is larger than the buffer), so the buffer empties into the skip.
    fn start_skip(
        &mut self,
        first: u8,
        header_len: usize,
        frame_len: usize,
    ) -> Result<Option<Decoded>, CodecError> {
        let mut skip = Skip::start(first, header_len, frame_len, self.max_packet_size)?;
        let body = self.buffer.split_off(header_len.min(self.buffer.len()));
        self.buffer = BytesMut::new();
        skip.absorb(&body)?;
        if skip.remaining() == 0 {
            // Unreachable (the frame is larger than the buffer), but harmless.
            return Ok(Some(Decoded::Skipped(skip.publish)));
        }
        self.skip = Some(skip);
        Ok(None)
    }
}

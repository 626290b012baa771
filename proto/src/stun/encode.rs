//! Encoding STUN messages into a caller-owned buffer, without allocating.

use super::attribute::Attribute;
use super::decode::{fingerprint_of, integrity_of};
use super::header::{Header, HEADER_LEN};
use super::padded;

/// Why a message could not be written.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum EncodeError {
    /// The buffer is too small for the message.
    BufferTooSmall,
    /// The message would exceed the 16-bit length field, or a value its attribute's 16-bit length.
    TooLong,
    /// The value cannot be represented (an ERROR-CODE outside 300..=699).
    InvalidValue,
}

/// Writes one STUN message into a buffer.
///
/// Add attributes in order; [`MessageWriter::add_message_integrity`] and
/// [`MessageWriter::add_fingerprint`] compute their values over what was written so far.
#[derive(Debug)]
pub struct MessageWriter<'b> {
    buf: &'b mut [u8],
    header: Header,
    len: usize,
}

impl<'b> MessageWriter<'b> {
    /// Starts a message with `header` in `buf`.
    pub fn new(buf: &'b mut [u8], header: Header) -> Result<Self, EncodeError> {
        let head = buf
            .get_mut(..HEADER_LEN)
            .ok_or(EncodeError::BufferTooSmall)?;
        let [t0, t1] = header.message_type().to_be_bytes();
        head.get_mut(..4)
            .ok_or(EncodeError::BufferTooSmall)?
            .copy_from_slice(&[t0, t1, 0, 0]);
        head.get_mut(4..8)
            .ok_or(EncodeError::BufferTooSmall)?
            .copy_from_slice(&header.cookie);
        head.get_mut(8..20)
            .ok_or(EncodeError::BufferTooSmall)?
            .copy_from_slice(header.transaction_id.as_bytes());
        Ok(MessageWriter {
            buf,
            header,
            len: HEADER_LEN,
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether only the header is written.
    pub fn is_empty(&self) -> bool {
        self.len == HEADER_LEN
    }

    /// Appends an attribute (with zero padding).
    pub fn add(&mut self, attribute: &Attribute<'_>) -> Result<(), EncodeError> {
        let value_len = attribute.value_len();
        let wire_len = u16::try_from(value_len).map_err(|_| EncodeError::TooLong)?;
        let padded_len = padded(value_len).ok_or(EncodeError::TooLong)?;
        let start = self.len;
        let value_start = start.checked_add(4).ok_or(EncodeError::TooLong)?;
        let end = value_start
            .checked_add(padded_len)
            .ok_or(EncodeError::TooLong)?;
        if end.saturating_sub(HEADER_LEN) > usize::from(u16::MAX) {
            return Err(EncodeError::TooLong);
        }
        let slot = self
            .buf
            .get_mut(start..end)
            .ok_or(EncodeError::BufferTooSmall)?;
        let [c0, c1] = attribute.code().to_be_bytes();
        let [l0, l1] = wire_len.to_be_bytes();
        slot.get_mut(..4)
            .ok_or(EncodeError::BufferTooSmall)?
            .copy_from_slice(&[c0, c1, l0, l1]);
        let value = slot
            .get_mut(4..4usize.saturating_add(value_len))
            .ok_or(EncodeError::BufferTooSmall)?;
        attribute
            .write_value(&self.header, value)
            .ok_or(EncodeError::InvalidValue)?;
        if let Some(padding) = slot.get_mut(4usize.saturating_add(value_len)..) {
            padding.fill(0);
        }
        self.len = end;
        Ok(())
    }

    /// Appends MESSAGE-INTEGRITY computed with the short-term credential `key`.
    pub fn add_message_integrity(&mut self, key: &[u8]) -> Result<(), EncodeError> {
        let at = self.len;
        let covered = self.buf.get(..at).ok_or(EncodeError::BufferTooSmall)?;
        let mac = integrity_of(covered, at, key).ok_or(EncodeError::TooLong)?;
        self.add(&Attribute::MessageIntegrity(mac))
    }

    /// Appends FINGERPRINT. Nothing may be added after it.
    pub fn add_fingerprint(&mut self) -> Result<(), EncodeError> {
        let at = self.len;
        // The length field must already count the fingerprint when the CRC is computed.
        let after = at.checked_add(8).ok_or(EncodeError::TooLong)?;
        if self.buf.len() < after {
            return Err(EncodeError::BufferTooSmall);
        }
        self.set_length(after)?;
        let crc = fingerprint_of(self.buf.get(..at).ok_or(EncodeError::BufferTooSmall)?);
        self.add(&Attribute::Fingerprint(crc))
    }

    fn set_length(&mut self, total: usize) -> Result<(), EncodeError> {
        let body =
            u16::try_from(total.saturating_sub(HEADER_LEN)).map_err(|_| EncodeError::TooLong)?;
        self.buf
            .get_mut(2..4)
            .ok_or(EncodeError::BufferTooSmall)?
            .copy_from_slice(&body.to_be_bytes());
        Ok(())
    }

    /// Writes the final length into the header and returns the message's length. The header's
    /// length field is only right after this (or after `add_fingerprint`).
    pub fn finish(mut self) -> usize {
        // Cannot fail: `add` keeps the body within 16 bits and the header is in the buffer.
        let _ = self.set_length(self.len);
        self.len
    }
}

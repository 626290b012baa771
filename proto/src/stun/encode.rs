//! Encoding STUN messages into a caller-owned buffer, without allocating.

use core::net::SocketAddr;

use super::attr;
use super::attribute::Attribute;
use super::decode::{fingerprint_of, integrity_of};
use super::header::{Header, HEADER_LEN};

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

impl core::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EncodeError::BufferTooSmall => f.write_str("buffer too small for the stun message"),
            EncodeError::TooLong => {
                f.write_str("stun message or attribute longer than 65535 bytes")
            }
            EncodeError::InvalidValue => {
                f.write_str("value not encodable (error code outside 300..=699)")
            }
        }
    }
}

impl std::error::Error for EncodeError {}

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
            .first_chunk_mut::<HEADER_LEN>()
            .ok_or(EncodeError::BufferTooSmall)?;
        let [t0, t1] = header.message_type().to_be_bytes();
        let [c0, c1, c2, c3] = header.cookie;
        let [i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, i10, i11] = *header.transaction_id.as_bytes();
        *head = [
            t0, t1, 0, 0, c0, c1, c2, c3, i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, i10, i11,
        ];
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
        match *attribute {
            Attribute::XorMappedAddress(a) => self.add_address(attr::XOR_MAPPED_ADDRESS, a, true),
            Attribute::XorMappedAddressDraft(a) => {
                self.add_address(attr::XOR_MAPPED_ADDRESS_DRAFT, a, true)
            }
            Attribute::MappedAddress(a) => self.add_address(attr::MAPPED_ADDRESS, a, false),
            Attribute::ResponseAddress(a) => self.add_address(attr::RESPONSE_ADDRESS, a, false),
            Attribute::SourceAddress(a) => self.add_address(attr::SOURCE_ADDRESS, a, false),
            Attribute::ChangedAddress(a) => self.add_address(attr::CHANGED_ADDRESS, a, false),
            Attribute::OtherAddress(a) => self.add_address(attr::OTHER_ADDRESS, a, false),
            Attribute::ResponseOrigin(a) => self.add_address(attr::RESPONSE_ORIGIN, a, false),
            Attribute::Software(s) => self.add_bytes(attr::SOFTWARE, s.as_bytes()),
            Attribute::Username(v) => self.add_bytes(attr::USERNAME, v),
            Attribute::Padding(v) => self.add_bytes(attr::PADDING, v),
            Attribute::Other { kind, value } => self.add_bytes(kind, value),
            Attribute::Fingerprint(f) => self.add_word(attr::FINGERPRINT, f),
            Attribute::ChangeRequest(_)
            | Attribute::ResponsePort(_)
            | Attribute::ErrorCode(_)
            | Attribute::UnknownAttributes(_)
            | Attribute::MessageIntegrity(_) => self.add_generic(attribute),
        }
    }

    /// Appends an attribute through [`Attribute::write_value`].
    fn add_generic(&mut self, attribute: &Attribute<'_>) -> Result<(), EncodeError> {
        let header = self.header;
        let (value, end) = self.slot(attribute.code(), attribute.value_len())?;
        attribute
            .write_value(&header, value)
            .ok_or(EncodeError::InvalidValue)?;
        self.len = end;
        Ok(())
    }

    /// Appends an attribute whose value is `value`.
    #[inline(always)]
    fn add_bytes(&mut self, code: u16, value: &[u8]) -> Result<(), EncodeError> {
        let (slot, end) = self.slot(code, value.len())?;
        copy_value(slot, value);
        self.len = end;
        Ok(())
    }

    /// Appends an attribute with a 4-byte value.
    #[inline(always)]
    fn add_word(&mut self, code: u16, value: u32) -> Result<(), EncodeError> {
        let [c0, c1] = code.to_be_bytes();
        let [v0, v1, v2, v3] = value.to_be_bytes();
        self.put([c0, c1, 0, 4, v0, v1, v2, v3])
    }

    /// Appends an address attribute, XORed with the cookie and transaction id if `xor`.
    #[inline(always)]
    fn add_address(&mut self, code: u16, addr: SocketAddr, xor: bool) -> Result<(), EncodeError> {
        let cookie = if xor {
            u32::from_be_bytes(self.header.cookie)
        } else {
            0
        };
        // The port is XORed with the cookie's top 16 bits.
        let [p0, p1] = (addr.port() ^ (cookie >> 16) as u16).to_be_bytes();
        let [c0, c1] = code.to_be_bytes();
        match addr {
            SocketAddr::V4(a) => {
                let [a0, a1, a2, a3] = (a.ip().to_bits() ^ cookie).to_be_bytes();
                self.put([c0, c1, 0, 8, 0, 1, p0, p1, a0, a1, a2, a3])
            }
            SocketAddr::V6(a) => {
                let key = if xor {
                    u128::from_be_bytes(self.header.xor_key())
                } else {
                    0
                };
                let mut out = [0u8; 24];
                if let Some((head, ip)) = out.split_first_chunk_mut::<8>() {
                    *head = [c0, c1, 0, 20, 0, 2, p0, p1];
                    ip.copy_from_slice(&(a.ip().to_bits() ^ key).to_be_bytes());
                }
                self.put(out)
            }
        }
    }

    /// Appends a whole attribute (header, value and padding) of `N` bytes.
    #[inline(always)]
    fn put<const N: usize>(&mut self, bytes: [u8; N]) -> Result<(), EncodeError> {
        let start = self.len;
        // `len` is at most 20 + 65535 (see `slot`) and `N` small: cannot overflow.
        let end = start.wrapping_add(N);
        if end.wrapping_sub(HEADER_LEN) > usize::from(u16::MAX) {
            return Err(EncodeError::TooLong);
        }
        let slot = self
            .buf
            .get_mut(start..)
            .and_then(|rest| rest.first_chunk_mut::<N>())
            .ok_or(EncodeError::BufferTooSmall)?;
        *slot = bytes;
        self.len = end;
        Ok(())
    }

    /// Reserves an attribute with a `value_len`-byte value: writes its header and zero padding and
    /// returns the value's bytes and where the attribute ends. `len` is not advanced.
    #[inline(always)]
    fn slot(&mut self, code: u16, value_len: usize) -> Result<(&mut [u8], usize), EncodeError> {
        let wire_len = u16::try_from(value_len).map_err(|_| EncodeError::TooLong)?;
        // `len` starts at 20 and only grows to an `end` that passed the check below, so it is at most
        // 20 + 65535; with a value of at most 65535 bytes nothing here can overflow.
        let start = self.len;
        let end = start
            .wrapping_add(4)
            .wrapping_add(usize::from(wire_len).wrapping_add(3) & !3);
        if end.wrapping_sub(HEADER_LEN) > usize::from(u16::MAX) {
            return Err(EncodeError::TooLong);
        }
        let (head, rest) = self
            .buf
            .get_mut(start..end)
            .and_then(|slot| slot.split_first_chunk_mut::<4>())
            .ok_or(EncodeError::BufferTooSmall)?;
        let [c0, c1] = code.to_be_bytes();
        let [l0, l1] = wire_len.to_be_bytes();
        *head = [c0, c1, l0, l1];
        // Zero the last word before the value is written over its start: that leaves the padding 0.
        if let Some(last) = rest.last_chunk_mut::<4>() {
            *last = [0; 4];
        }
        let value = rest
            .get_mut(..value_len)
            .ok_or(EncodeError::BufferTooSmall)?;
        Ok((value, end))
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
        // At most 20 + 65535 + 8: cannot overflow.
        let after = at.wrapping_add(8);
        let (message, rest) = self
            .buf
            .split_at_mut_checked(at)
            .ok_or(EncodeError::BufferTooSmall)?;
        let slot = rest
            .first_chunk_mut::<8>()
            .ok_or(EncodeError::BufferTooSmall)?;
        // The length field must already count the fingerprint when the CRC is computed.
        set_length(message, after)?;
        let [f0, f1] = attr::FINGERPRINT.to_be_bytes();
        let [v0, v1, v2, v3] = fingerprint_of(message).to_be_bytes();
        *slot = [f0, f1, 0, 4, v0, v1, v2, v3];
        self.len = after;
        Ok(())
    }

    /// Writes the final length into the header and returns the message's length. The header's
    /// length field is only right after this (or after `add_fingerprint`).
    pub fn finish(self) -> usize {
        // Cannot fail: `add` keeps the body within 16 bits and the header is in the buffer.
        let _ = set_length(self.buf, self.len);
        self.len
    }
}

/// Writes the body length of a `total`-byte message into the header at the start of `message`.
#[inline]
fn set_length(message: &mut [u8], total: usize) -> Result<(), EncodeError> {
    let body = u16::try_from(total.saturating_sub(HEADER_LEN)).map_err(|_| EncodeError::TooLong)?;
    let [_, _, l0, l1] = message
        .first_chunk_mut::<4>()
        .ok_or(EncodeError::BufferTooSmall)?;
    [*l0, *l1] = body.to_be_bytes();
    Ok(())
}

/// Copies `src` into `dst` (the same length). Short values, the usual case, are copied as two
/// overlapping words instead of through `memcpy`.
#[inline(always)]
fn copy_value(dst: &mut [u8], src: &[u8]) {
    if dst.len() != src.len() {
        return;
    }
    match src.len() {
        8..=16 => {
            if let (Some(d), Some(s)) = (dst.first_chunk_mut::<8>(), src.first_chunk::<8>()) {
                *d = *s;
            }
            if let (Some(d), Some(s)) = (dst.last_chunk_mut::<8>(), src.last_chunk::<8>()) {
                *d = *s;
            }
        }
        4..=7 => {
            if let (Some(d), Some(s)) = (dst.first_chunk_mut::<4>(), src.first_chunk::<4>()) {
                *d = *s;
            }
            if let (Some(d), Some(s)) = (dst.last_chunk_mut::<4>(), src.last_chunk::<4>()) {
                *d = *s;
            }
        }
        _ => dst.copy_from_slice(src),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{Class, Message, Method, TransactionId};

    #[test]
    fn values_of_every_length_are_copied_and_padded_with_zeros() {
        let header = Header::new(Class::Request, Method::BINDING, TransactionId::new([9; 12]));
        let data: Vec<u8> = (1..=64).collect();
        for len in 0..=data.len() {
            let value = &data[..len];
            // A dirty buffer: padding must still come out as zeros.
            let mut buf = [0xFFu8; 256];
            let mut w = MessageWriter::new(&mut buf, header).unwrap();
            w.add(&Attribute::Username(value)).unwrap();
            w.add(&Attribute::Other {
                kind: 0x8123,
                value,
            })
            .unwrap();
            w.add_fingerprint().unwrap();
            let n = w.finish();
            let padded = len.next_multiple_of(4);
            assert_eq!(n, HEADER_LEN + 2 * (4 + padded) + 8);
            for start in [HEADER_LEN + 4, HEADER_LEN + 8 + padded] {
                assert_eq!(&buf[start..start + len], value);
                assert!(buf[start + len..start + padded].iter().all(|&b| b == 0));
            }
            let msg = Message::decode(&buf[..n]).unwrap();
            assert_eq!(
                msg.get(crate::stun::AttrKind::Username),
                Some(Attribute::Username(value))
            );
        }
    }
}

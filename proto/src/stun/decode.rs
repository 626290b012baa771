//! Zero-copy decoding and validation of STUN messages.

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

use core::net::SocketAddr;
use std::sync::OnceLock;

use super::attribute::{
    parse_address, parse_ipv4_address, AttrError, AttrKind, Attribute, ChangeRequest, ErrorCode,
};
use super::header::{Class, Header, Method, TransactionId, HEADER_LEN, MAGIC_COOKIE};
use super::{attr, padded, read_u16, FINGERPRINT_XOR};

/// MESSAGE-INTEGRITY-SHA256 (RFC 8489): not verified here, but it ends the attributes we read.
const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;

/// Why bytes are not a valid STUN message.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// Fewer than 20 bytes.
    TooShort,
    /// The first two bits are not zero: not STUN.
    NotStun,
    /// The header's length is not a multiple of four.
    UnalignedLength,
    /// The header's length disagrees with the bytes (for a datagram: more or fewer bytes than it says).
    LengthMismatch,
    /// An attribute header or value runs past the end of the message.
    AttributeTruncated,
    /// A known attribute has an invalid value.
    BadAttribute {
        /// Its type code.
        code: u16,
        /// What is wrong.
        error: AttrError,
    },
    /// An attribute follows FINGERPRINT.
    FingerprintNotLast,
    /// The FINGERPRINT does not match the message.
    FingerprintMismatch,
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::TooShort => {
                write!(f, "stun message too short: header needs {HEADER_LEN} bytes")
            }
            DecodeError::NotStun => f.write_str("not a stun message (top two bits set)"),
            DecodeError::UnalignedLength => f.write_str("stun length field is not a multiple of 4"),
            DecodeError::LengthMismatch => {
                f.write_str("stun length field disagrees with the bytes received")
            }
            DecodeError::AttributeTruncated => {
                f.write_str("stun attribute runs past the end of the message")
            }
            DecodeError::BadAttribute { code, error } => {
                write!(f, "stun attribute 0x{code:04x} is invalid: {error}")
            }
            DecodeError::FingerprintNotLast => f.write_str("stun attribute after the fingerprint"),
            DecodeError::FingerprintMismatch => {
                f.write_str("stun fingerprint does not match the message")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why MESSAGE-INTEGRITY did not verify.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum IntegrityError {
    /// The message has no MESSAGE-INTEGRITY.
    Missing,
    /// The HMAC does not match.
    Mismatch,
}

impl core::fmt::Display for IntegrityError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            IntegrityError::Missing => f.write_str("message-integrity attribute missing"),
            IntegrityError::Mismatch => f.write_str("message-integrity hmac does not match"),
        }
    }
}

impl std::error::Error for IntegrityError {}

/// A cheap test of whether `buf` could be a STUN message: at least a header, the top two bits zero and
/// a length that is a multiple of four. Lets machines answer `NotMine` for other protocols.
pub fn is_stun(buf: &[u8]) -> bool {
    match (buf.first(), read_u16(buf, 2)) {
        (Some(first), Some(len)) => buf.len() >= HEADER_LEN && first & 0xC0 == 0 && len % 4 == 0,
        _ => false,
    }
}

/// A raw attribute: type code and value, borrowed from the message.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    /// Type code.
    pub code: u16,
    /// Value, without padding.
    pub value: &'a [u8],
    /// Offset of the attribute header from the start of the message.
    pub offset: usize,
}

/// Iterator over the raw attributes of a validated message.
#[derive(Clone, Debug)]
pub struct Attributes<'a> {
    raw: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = RawAttribute<'a>;

    fn next(&mut self) -> Option<RawAttribute<'a>> {
        let code = read_u16(self.raw, self.at)?;
        let len = usize::from(read_u16(self.raw, self.at.checked_add(2)?)?);
        let start = self.at.checked_add(4)?;
        let value = self.raw.get(start..start.checked_add(len)?)?;
        let offset = self.at;
        self.at = start.checked_add(padded(len)?)?;
        Some(RawAttribute {
            code,
            value,
            offset,
        })
    }
}

/// A decoded, validated STUN message borrowing the input bytes.
///
/// Decoding checks framing, every attribute's length and every known attribute's value, and the
/// FINGERPRINT if there is one. Getters then return the first occurrence of each attribute.
/// Attributes after MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 (other than MESSAGE-INTEGRITY and
/// FINGERPRINT) are ignored by the getters, as RFC 5389 and RFC 8489 require.
#[derive(Clone, Debug)]
pub struct Message<'a> {
    header: Header,
    raw: &'a [u8],
    /// Bit [`AttrKind::bit`] is set when the getters have an attribute of that kind to return: one
    /// before the integrity boundary, or any MESSAGE-INTEGRITY or FINGERPRINT. The getters find
    /// the first of its kind by walking the (validated) attributes, which keeps the message small.
    present: u32,
    /// The first comprehension-required attribute we do not know, if any.
    first_unknown: u16,
    unknown_count: u16,
    /// Offset of the first MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 (0 = none): attributes from
    /// there on are ignored, except MESSAGE-INTEGRITY and FINGERPRINT (RFC 8489 §14.5, §14.6).
    integrity_boundary: u32,
}

impl<'a> Message<'a> {
    /// Decodes one datagram: `buf` must hold exactly one message.
    pub fn decode(buf: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        let total = Self::needed(buf)?;
        let raw = buf.get(..total).ok_or(DecodeError::LengthMismatch)?;
        // A longer buffer is `LengthMismatch`, but only once the message itself is valid.
        Self::parse(raw, buf.len())
    }

    /// Decodes the message at the start of `buf` (for streams) and returns it with the number of bytes
    /// it occupies. A buffer that holds only part of a message is `LengthMismatch`; use
    /// [`Message::needed`] to learn how many bytes to wait for.
    pub fn decode_prefix(buf: &'a [u8]) -> Result<(Message<'a>, usize), DecodeError> {
        let total = Self::needed(buf)?;
        let raw = buf.get(..total).ok_or(DecodeError::LengthMismatch)?;
        Ok((Self::parse(raw, total)?, total))
    }

    /// The total size of the message whose header starts `buf`, once the first 20 bytes are there
    /// (the rest of the message need not have arrived yet).
    #[inline]
    pub fn needed(buf: &[u8]) -> Result<usize, DecodeError> {
        let Some(&[first, _, l0, l1, ..]) = buf.first_chunk::<HEADER_LEN>() else {
            return Err(DecodeError::TooShort);
        };
        if first & 0xC0 != 0 {
            return Err(DecodeError::NotStun);
        }
        let len = u16::from_be_bytes([l0, l1]);
        if len % 4 != 0 {
            return Err(DecodeError::UnalignedLength);
        }
        // The body need not be there yet: a stream reader calls this to learn how much to wait for.
        // At most 20 + 65535: cannot overflow.
        Ok(HEADER_LEN.wrapping_add(usize::from(len)))
    }

    /// Parses and validates `raw`, which `needed` sized: checks every attribute and notes the known
    /// ones; then fails with `LengthMismatch` if the datagram was `datagram_len` bytes rather than
    /// exactly the message. Works on locals and builds the message in the return value.
    #[inline(always)]
    fn parse(raw: &'a [u8], datagram_len: usize) -> Result<Message<'a>, DecodeError> {
        let Some((head, body)) = raw.split_first_chunk::<HEADER_LEN>() else {
            return Err(DecodeError::TooShort);
        };
        let mut present = 0u32;
        let mut first_unknown = 0u16;
        let mut unknown_count = 0u16;
        // Offset of the first MESSAGE-INTEGRITY(-SHA256); 0 while there is none.
        let mut integrity_boundary = 0u32;
        let mut rest = body;
        while let [t0, t1, l0, l1, ref tail @ ..] = *rest {
            let code = u16::from_be_bytes([t0, t1]);
            let len = usize::from(u16::from_be_bytes([l0, l1]));
            // At most 65535 + 3, so this cannot overflow.
            let padded_len = len.wrapping_add(3) & !3;
            let Some((padded_value, after)) = tail.split_at_checked(padded_len) else {
                return Err(DecodeError::AttributeTruncated);
            };
            let Some(value) = padded_value.get(..len) else {
                return Err(DecodeError::AttributeTruncated);
            };
            // XOR-MAPPED-ADDRESS, the attribute of nearly every response, skips the kind lookup.
            let kind = if code == attr::XOR_MAPPED_ADDRESS {
                Some(AttrKind::XorMappedAddress)
            } else {
                AttrKind::from_code(code)
            };
            match kind {
                Some(AttrKind::Fingerprint) => {
                    if !after.is_empty() {
                        return Err(DecodeError::FingerprintNotLast);
                    }
                    let Ok(got) = <[u8; 4]>::try_from(value) else {
                        return Err(DecodeError::BadAttribute {
                            code,
                            error: AttrError::BadLength,
                        });
                    };
                    // Everything before the FINGERPRINT attribute (its value and header are the last
                    // 8 bytes).
                    let covered = raw.get(..raw.len().saturating_sub(8)).unwrap_or(&[]);
                    if u32::from_be_bytes(got) != fingerprint_of(covered) {
                        return Err(DecodeError::FingerprintMismatch);
                    }
                    present |= AttrKind::Fingerprint.bit();
                }
                Some(kind) => {
                    if let Err(error) = kind.check(value) {
                        return Err(DecodeError::BadAttribute { code, error });
                    }
                    if integrity_boundary == 0 {
                        present |= kind.bit();
                        if kind == AttrKind::MessageIntegrity {
                            // A message is at most 20 + 65535 bytes.
                            integrity_boundary = offset(raw, rest) as u32;
                        }
                    } else if kind == AttrKind::MessageIntegrity {
                        present |= kind.bit();
                    }
                }
                None => {
                    if integrity_boundary == 0 {
                        if code < 0x8000 {
                            if unknown_count == 0 {
                                first_unknown = code;
                            }
                            unknown_count = unknown_count.saturating_add(1);
                        }
                        if code == MESSAGE_INTEGRITY_SHA256 {
                            // A message is at most 20 + 65535 bytes.
                            integrity_boundary = offset(raw, rest) as u32;
                        }
                    }
                }
            }
            rest = after;
        }
        if !rest.is_empty() {
            return Err(DecodeError::AttributeTruncated);
        }
        if datagram_len != raw.len() {
            return Err(DecodeError::LengthMismatch);
        }
        let [t0, t1, _, _, c0, c1, c2, c3, ref txid @ ..] = *head;
        let (class, method) = Header::split_type(u16::from_be_bytes([t0, t1]));
        Ok(Message {
            header: Header {
                class,
                method,
                cookie: [c0, c1, c2, c3],
                transaction_id: TransactionId::new(*txid),
            },
            raw,
            present,
            first_unknown,
            unknown_count,
            integrity_boundary,
        })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The class.
    pub fn class(&self) -> Class {
        self.header.class
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.header.method
    }

    /// The transaction id.
    pub fn transaction_id(&self) -> TransactionId {
        self.header.transaction_id
    }

    /// Whether this is an RFC 3489 message (no magic cookie).
    pub fn is_legacy(&self) -> bool {
        u32::from_be_bytes(self.header.cookie) != MAGIC_COOKIE
    }

    /// The whole message's bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }

    /// Every attribute, in order, as raw type and value.
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            raw: self.raw,
            at: HEADER_LEN,
        }
    }

    /// The first attribute of `kind` (before MESSAGE-INTEGRITY, or FINGERPRINT).
    pub fn get(&self, kind: AttrKind) -> Option<Attribute<'a>> {
        let (code, value) = self.value_of(kind)?;
        Attribute::parse(code, value, &self.header).ok()
    }

    /// The type code and value of the first attribute of `kind`.
    #[inline]
    fn value_of(&self, kind: AttrKind) -> Option<(u16, &'a [u8])> {
        self.find(kind).map(|(_, value)| (kind.code(), value))
    }

    /// The offset and value of the first attribute of `kind`, if the getters see one.
    #[inline]
    fn find(&self, kind: AttrKind) -> Option<(usize, &'a [u8])> {
        if self.present & kind.bit() == 0 {
            return None;
        }
        // The first attribute of the kind is the one the getters want: if the kind is present, one
        // came before the integrity boundary (or it is MESSAGE-INTEGRITY or FINGERPRINT).
        let code = kind.code();
        let (_, mut rest) = self.raw.split_first_chunk::<HEADER_LEN>()?;
        while let [t0, t1, l0, l1, ref tail @ ..] = *rest {
            let len = usize::from(u16::from_be_bytes([l0, l1]));
            if u16::from_be_bytes([t0, t1]) == code {
                return Some((offset(self.raw, rest), tail.get(..len)?));
            }
            rest = tail.get(len.wrapping_add(3) & !3..)?;
        }
        None
    }

    /// How many comprehension-required attributes (type < 0x8000) this decoder does not know, and the
    /// first of them: a server answers such a request with error 420.
    pub fn unknown_comprehension_required(&self) -> Option<(u16, u16)> {
        (self.unknown_count > 0).then_some((self.first_unknown, self.unknown_count))
    }

    /// Up to `out.len()` unknown comprehension-required attribute types, for UNKNOWN-ATTRIBUTES.
    /// Returns how many were written.
    pub fn collect_unknown(&self, out: &mut [u16]) -> usize {
        let mut n = 0usize;
        let integrity = usize::try_from(self.integrity_boundary).unwrap_or(usize::MAX);
        let unknown = self.attributes().filter(|a| {
            a.code < 0x8000
                && AttrKind::from_code(a.code).is_none()
                && (integrity == 0 || a.offset <= integrity)
        });
        for (slot, a) in out.iter_mut().zip(unknown) {
            *slot = a.code;
            n = n.saturating_add(1);
        }
        n
    }

    /// An address attribute's value, decoded straight from the (already checked) bytes.
    #[inline]
    fn address(&self, kind: AttrKind) -> Option<SocketAddr> {
        let (_, value) = self.find(kind)?;
        let xor = match kind {
            AttrKind::XorMappedAddress | AttrKind::XorMappedAddressDraft => Some(&self.header),
            _ => None,
        };
        match parse_ipv4_address(value, xor) {
            Some(addr) => Some(addr),
            None => other_address(value, xor),
        }
    }

    /// XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS, else the pre-standard 0x8020 form.
    pub fn mapped_address(&self) -> Option<SocketAddr> {
        self.address(AttrKind::XorMappedAddress)
            .or_else(|| self.address(AttrKind::MappedAddress))
            .or_else(|| self.address(AttrKind::XorMappedAddressDraft))
    }

    /// XOR-MAPPED-ADDRESS only.
    pub fn xor_mapped_address(&self) -> Option<SocketAddr> {
        self.address(AttrKind::XorMappedAddress)
    }

    /// OTHER-ADDRESS, else the RFC 3489 CHANGED-ADDRESS.
    pub fn other_address(&self) -> Option<SocketAddr> {
        self.address(AttrKind::OtherAddress)
            .or_else(|| self.address(AttrKind::ChangedAddress))
    }

    /// RESPONSE-ORIGIN, else the RFC 3489 SOURCE-ADDRESS.
    pub fn response_origin(&self) -> Option<SocketAddr> {
        self.address(AttrKind::ResponseOrigin)
            .or_else(|| self.address(AttrKind::SourceAddress))
    }

    /// CHANGE-REQUEST, if present.
    pub fn change_request(&self) -> Option<ChangeRequest> {
        match self.get(AttrKind::ChangeRequest)? {
            Attribute::ChangeRequest(c) => Some(c),
            _ => None,
        }
    }

    /// RESPONSE-PORT, if present.
    pub fn response_port(&self) -> Option<u16> {
        match self.get(AttrKind::ResponsePort)? {
            Attribute::ResponsePort(p) => Some(p),
            _ => None,
        }
    }

    /// ERROR-CODE, if present.
    pub fn error_code(&self) -> Option<ErrorCode<'a>> {
        match self.get(AttrKind::ErrorCode)? {
            Attribute::ErrorCode(e) => Some(e),
            _ => None,
        }
    }

    /// SOFTWARE, if present.
    pub fn software(&self) -> Option<&'a str> {
        match self.get(AttrKind::Software)? {
            Attribute::Software(s) => Some(s),
            _ => None,
        }
    }

    /// Whether the message carries a (verified) FINGERPRINT.
    pub fn has_fingerprint(&self) -> bool {
        self.present & AttrKind::Fingerprint.bit() != 0
    }

    /// Verifies MESSAGE-INTEGRITY with a short-term credential `key` (the password, after SASLprep).
    pub fn verify_integrity(&self, key: &[u8]) -> Result<(), IntegrityError> {
        let Some((at, value)) = self.find(AttrKind::MessageIntegrity) else {
            return Err(IntegrityError::Missing);
        };
        let Ok(expected) = <[u8; 20]>::try_from(value) else {
            return Err(IntegrityError::Missing);
        };
        let covered = self.raw.get(..at).ok_or(IntegrityError::Missing)?;
        let mac = integrity_of(covered, at, key).ok_or(IntegrityError::Mismatch)?;
        // Constant-time comparison.
        let diff = mac
            .iter()
            .zip(expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            Ok(())
        } else {
            Err(IntegrityError::Mismatch)
        }
    }
}

/// An address that is not IPv4 (kept out of line: the IPv4 case is a few instructions).
#[inline(never)]
fn other_address(value: &[u8], xor: Option<&Header>) -> Option<SocketAddr> {
    parse_address(value, xor).ok()
}

/// Offset in `raw` of `rest`, a suffix of it.
#[inline(always)]
fn offset(raw: &[u8], rest: &[u8]) -> usize {
    raw.len().wrapping_sub(rest.len())
}

/// FINGERPRINT value of `bytes` (the message up to the FINGERPRINT attribute, with the header length
/// already covering it).
pub(crate) fn fingerprint_of(bytes: &[u8]) -> u32 {
    // The header length must count the FINGERPRINT attribute; when validating we hash the bytes as they
    // are, because the sender already set the length that way.
    //
    // `crc32fast::hash` detects the CPU's features on every call, which costs about a third of a
    // short message's CRC; a hasher made once carries the detected implementation.
    static HASHER: OnceLock<crc32fast::Hasher> = OnceLock::new();
    let mut hasher = HASHER.get_or_init(crc32fast::Hasher::new).clone();
    hasher.update(bytes);
    hasher.finalize() ^ FINGERPRINT_XOR
}

/// HMAC-SHA1 over `covered` (the message before MESSAGE-INTEGRITY, `mi_offset` bytes) with the header
/// length adjusted to end just after MESSAGE-INTEGRITY.
pub(crate) fn integrity_of(covered: &[u8], mi_offset: usize, key: &[u8]) -> Option<[u8; 20]> {
    let adjusted = u16::try_from(mi_offset.checked_add(24)?.checked_sub(HEADER_LEN)?).ok()?;
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(key).ok()?;
    mac.update(covered.get(..2)?);
    mac.update(&adjusted.to_be_bytes());
    mac.update(covered.get(4..)?);
    let out = mac.finalize().into_bytes();
    let mut res = [0u8; 20];
    res.copy_from_slice(out.get(..20)?);
    Some(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{attr, MessageWriter};

    /// The getters' rule, from the attribute list: the first attribute of the kind, before the first
    /// MESSAGE-INTEGRITY(-SHA256) unless it is MESSAGE-INTEGRITY or FINGERPRINT.
    fn reference(msg: &Message<'_>, kind: AttrKind) -> Option<Attribute<'static>> {
        let mut boundary = None;
        for a in msg.attributes() {
            let counts = boundary.is_none()
                || matches!(kind, AttrKind::MessageIntegrity | AttrKind::Fingerprint);
            if counts && a.code == kind.code() {
                // Leak for a 'static result: tests only.
                let leaked: &'static [u8] = Box::leak(a.value.to_vec().into_boxed_slice());
                return Attribute::parse(a.code, leaked, msg.header()).ok();
            }
            if boundary.is_none()
                && (a.code == attr::MESSAGE_INTEGRITY || a.code == MESSAGE_INTEGRITY_SHA256)
            {
                boundary = Some(a.offset);
            }
        }
        None
    }

    #[test]
    fn getters_find_the_first_attribute_the_rules_allow() {
        let header = Header::new(Class::Success, Method::BINDING, TransactionId::new([3; 12]));
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let mut buf = [0u8; 1024];
            let mut w = MessageWriter::new(&mut buf, header).unwrap();
            for _ in 0..(next() % 8) {
                let port = (next() % 65536) as u16;
                let a = match next() % 9 {
                    0 => Attribute::XorMappedAddress(SocketAddr::from(([1, 2, 3, 4], port))),
                    1 => Attribute::MappedAddress(SocketAddr::from(([5, 6, 7, 8], port))),
                    2 => Attribute::OtherAddress(SocketAddr::from(([9u16; 8], port))),
                    3 => Attribute::Software(["a", "bc", "def", "ghijk"][(next() % 4) as usize]),
                    4 => Attribute::ResponsePort(port),
                    5 => Attribute::MessageIntegrity([port as u8; 20]),
                    6 => Attribute::Other {
                        kind: MESSAGE_INTEGRITY_SHA256,
                        value: &[7; 32],
                    },
                    7 => Attribute::ChangeRequest(ChangeRequest::BOTH),
                    _ => Attribute::Other {
                        kind: 0x7F00,
                        value: &[1, 2, 3],
                    },
                };
                w.add(&a).unwrap();
            }
            if next() % 2 == 0 {
                w.add_fingerprint().unwrap();
            }
            let n = w.finish();
            let msg = Message::decode(&buf[..n]).unwrap();
            for kind in [
                AttrKind::XorMappedAddress,
                AttrKind::MappedAddress,
                AttrKind::OtherAddress,
                AttrKind::Software,
                AttrKind::ResponsePort,
                AttrKind::MessageIntegrity,
                AttrKind::ChangeRequest,
                AttrKind::Fingerprint,
            ] {
                assert_eq!(msg.get(kind), reference(&msg, kind), "{kind:?} in {msg:?}");
            }
            let addr = |a: Option<Attribute<'_>>| match a {
                Some(
                    Attribute::XorMappedAddress(x)
                    | Attribute::MappedAddress(x)
                    | Attribute::OtherAddress(x),
                ) => Some(x),
                _ => None,
            };
            assert_eq!(
                msg.xor_mapped_address(),
                addr(reference(&msg, AttrKind::XorMappedAddress))
            );
            assert_eq!(
                msg.mapped_address(),
                addr(reference(&msg, AttrKind::XorMappedAddress))
                    .or(addr(reference(&msg, AttrKind::MappedAddress)))
            );
            assert_eq!(
                msg.other_address(),
                addr(reference(&msg, AttrKind::OtherAddress))
            );
            assert_eq!(
                msg.has_fingerprint(),
                reference(&msg, AttrKind::Fingerprint).is_some()
            );
        }
    }
}

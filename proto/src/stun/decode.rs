//! Zero-copy decoding and validation of STUN messages.

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

use core::net::SocketAddr;
use std::sync::OnceLock;

use super::attribute::{parse_address, AttrError, AttrKind, Attribute, ChangeRequest, ErrorCode};
use super::header::{Class, Header, Method, TransactionId, HEADER_LEN, MAGIC_COOKIE};
use super::{padded, read_u16, FINGERPRINT_XOR};

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
            DecodeError::TooShort => f.write_str("shorter than a STUN header"),
            DecodeError::NotStun => f.write_str("not a STUN message"),
            DecodeError::UnalignedLength => f.write_str("length is not a multiple of 4"),
            DecodeError::LengthMismatch => f.write_str("length field disagrees with the data"),
            DecodeError::AttributeTruncated => f.write_str("attribute runs past the message"),
            DecodeError::BadAttribute { code, error } => {
                write!(f, "attribute 0x{code:04x} is invalid: {error:?}")
            }
            DecodeError::FingerprintNotLast => f.write_str("attribute after FINGERPRINT"),
            DecodeError::FingerprintMismatch => f.write_str("FINGERPRINT mismatch"),
        }
    }
}

/// Why MESSAGE-INTEGRITY did not verify.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum IntegrityError {
    /// The message has no MESSAGE-INTEGRITY.
    Missing,
    /// The HMAC does not match.
    Mismatch,
}

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
    /// Where the first attribute of each known kind starts, as its 4-byte word number after the
    /// header plus one (0 = absent). Attributes are 4-byte aligned and a body is at most 65535 bytes,
    /// so this fits 16 bits for every message.
    index: [u16; AttrKind::COUNT],
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
        let msg = Self::parse(raw)?;
        if total != buf.len() {
            return Err(DecodeError::LengthMismatch);
        }
        Ok(msg)
    }

    /// Decodes the message at the start of `buf` (for streams) and returns it with the number of bytes
    /// it occupies. A buffer that holds only part of a message is `LengthMismatch`; use
    /// [`Message::needed`] to learn how many bytes to wait for.
    pub fn decode_prefix(buf: &'a [u8]) -> Result<(Message<'a>, usize), DecodeError> {
        let total = Self::needed(buf)?;
        let raw = buf.get(..total).ok_or(DecodeError::LengthMismatch)?;
        Ok((Self::parse(raw)?, total))
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

    /// Parses and validates `raw`, which `needed` sized: checks every attribute and indexes the known
    /// ones. Works on locals and builds the message in the return value, so nothing is copied twice.
    #[inline(always)]
    fn parse(raw: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        let Some((head, body)) = raw.split_first_chunk::<HEADER_LEN>() else {
            return Err(DecodeError::TooShort);
        };
        let mut index = [0u16; AttrKind::COUNT];
        let mut first_unknown = 0u16;
        let mut unknown_count = 0u16;
        let mut integrity_boundary = 0u32;
        let mut rest = body;
        // Offset of the current attribute from the start of the body.
        let mut off = 0usize;
        let mut after_integrity = false;
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
            // The word number of this attribute plus one: `off` is a multiple of four below 65536.
            let slot_value = ((off >> 2) as u16).wrapping_add(1);
            match AttrKind::from_code(code) {
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
                    // `off` is within the body, so the header plus `off` is within `raw`.
                    let covered = raw.get(..HEADER_LEN.wrapping_add(off)).unwrap_or(&[]);
                    if u32::from_be_bytes(got) != fingerprint_of(covered) {
                        return Err(DecodeError::FingerprintMismatch);
                    }
                    record(&mut index, AttrKind::Fingerprint, slot_value);
                }
                Some(kind) => {
                    if let Err(error) = kind.check(value) {
                        return Err(DecodeError::BadAttribute { code, error });
                    }
                    if !after_integrity {
                        record(&mut index, kind, slot_value);
                        if kind == AttrKind::MessageIntegrity {
                            after_integrity = true;
                            integrity_boundary = HEADER_LEN.wrapping_add(off) as u32;
                        }
                    } else if kind == AttrKind::MessageIntegrity {
                        record(&mut index, kind, slot_value);
                    }
                }
                None => {
                    if !after_integrity {
                        if code < 0x8000 {
                            if unknown_count == 0 {
                                first_unknown = code;
                            }
                            unknown_count = unknown_count.saturating_add(1);
                        }
                        if code == MESSAGE_INTEGRITY_SHA256 {
                            after_integrity = true;
                            integrity_boundary = HEADER_LEN.wrapping_add(off) as u32;
                        }
                    }
                }
            }
            // Both within the body (at most 65535 bytes): cannot overflow.
            off = off.wrapping_add(4).wrapping_add(padded_len);
            rest = after;
        }
        if !rest.is_empty() {
            return Err(DecodeError::AttributeTruncated);
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
            index,
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
        let at = self.index_of(kind);
        if at == 0 {
            return None;
        }
        let (_, attr) = self.raw.split_at_checked(at)?;
        let [t0, t1, l0, l1, ref value @ ..] = *attr else {
            return None;
        };
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        Some((u16::from_be_bytes([t0, t1]), value.get(..len)?))
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

    #[inline]
    fn index_of(&self, kind: AttrKind) -> usize {
        match self.index.get(kind.index()).copied().unwrap_or(0) {
            0 => 0,
            // At most 20 + 4 * 65535: cannot overflow.
            slot => (usize::from(slot).wrapping_sub(1) << 2).wrapping_add(HEADER_LEN),
        }
    }

    /// An address attribute's value, decoded straight from the (already checked) bytes.
    #[inline]
    fn address(&self, kind: AttrKind) -> Option<SocketAddr> {
        let (_, value) = self.value_of(kind)?;
        let xor = match kind {
            AttrKind::XorMappedAddress | AttrKind::XorMappedAddressDraft => Some(&self.header),
            _ => None,
        };
        parse_address(value, xor).ok()
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
        self.index_of(AttrKind::Fingerprint) != 0
    }

    /// Verifies MESSAGE-INTEGRITY with a short-term credential `key` (the password, after SASLprep).
    pub fn verify_integrity(&self, key: &[u8]) -> Result<(), IntegrityError> {
        let at = self.index_of(AttrKind::MessageIntegrity);
        if at == 0 {
            return Err(IntegrityError::Missing);
        }
        let Some(Attribute::MessageIntegrity(expected)) = self.get(AttrKind::MessageIntegrity)
        else {
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

/// Records `slot_value` as where the first attribute of `kind` is, unless one came before.
#[inline(always)]
fn record(index: &mut [u16; AttrKind::COUNT], kind: AttrKind, slot_value: u16) {
    if let Some(slot) = index.get_mut(kind.index()) {
        if *slot == 0 {
            *slot = slot_value;
        }
    }
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

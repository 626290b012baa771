//! Typed STUN attributes: parsing from and writing to wire values.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use super::header::Header;
use super::{attr, read_u16, read_u32};

/// Why an attribute's value is invalid.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum AttrError {
    /// The value's length is wrong for its type (or for its address family).
    BadLength,
    /// An address attribute with a family other than 1 (IPv4) or 2 (IPv6).
    BadFamily,
    /// Text that is not UTF-8.
    BadUtf8,
    /// An ERROR-CODE whose class is not 3..=6 or whose number is over 99.
    BadErrorCode,
    /// A value longer than the RFC allows (SOFTWARE, reason phrase, USERNAME).
    TooLong,
}

impl core::fmt::Display for AttrError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AttrError::BadLength => f.write_str("wrong value length for the attribute"),
            AttrError::BadFamily => f.write_str("address family neither 1 (ipv4) nor 2 (ipv6)"),
            AttrError::BadUtf8 => f.write_str("text is not utf-8"),
            AttrError::BadErrorCode => f.write_str("error code class not 3..=6 or number over 99"),
            AttrError::TooLong => f.write_str("value longer than the rfc allows"),
        }
    }
}

impl std::error::Error for AttrError {}

/// The known attribute kinds, used to index a decoded message.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum AttrKind {
    /// MAPPED-ADDRESS.
    MappedAddress,
    /// XOR-MAPPED-ADDRESS.
    XorMappedAddress,
    /// XOR-MAPPED-ADDRESS under the pre-standard code 0x8020.
    XorMappedAddressDraft,
    /// RESPONSE-ADDRESS (RFC 3489).
    ResponseAddress,
    /// SOURCE-ADDRESS (RFC 3489).
    SourceAddress,
    /// CHANGED-ADDRESS (RFC 3489).
    ChangedAddress,
    /// CHANGE-REQUEST.
    ChangeRequest,
    /// OTHER-ADDRESS (RFC 5780).
    OtherAddress,
    /// RESPONSE-ORIGIN (RFC 5780).
    ResponseOrigin,
    /// RESPONSE-PORT (RFC 5780).
    ResponsePort,
    /// PADDING (RFC 5780).
    Padding,
    /// USERNAME.
    Username,
    /// SOFTWARE.
    Software,
    /// ERROR-CODE.
    ErrorCode,
    /// UNKNOWN-ATTRIBUTES.
    UnknownAttributes,
    /// MESSAGE-INTEGRITY.
    MessageIntegrity,
    /// FINGERPRINT.
    Fingerprint,
}

impl AttrKind {
    /// How many kinds there are.
    pub const COUNT: usize = 17;

    /// Every kind, in declaration order.
    const ALL: [AttrKind; AttrKind::COUNT] = [
        AttrKind::MappedAddress,
        AttrKind::XorMappedAddress,
        AttrKind::XorMappedAddressDraft,
        AttrKind::ResponseAddress,
        AttrKind::SourceAddress,
        AttrKind::ChangedAddress,
        AttrKind::ChangeRequest,
        AttrKind::OtherAddress,
        AttrKind::ResponseOrigin,
        AttrKind::ResponsePort,
        AttrKind::Padding,
        AttrKind::Username,
        AttrKind::Software,
        AttrKind::ErrorCode,
        AttrKind::UnknownAttributes,
        AttrKind::MessageIntegrity,
        AttrKind::Fingerprint,
    ];

    /// The kind's type code.
    pub(crate) const fn code(self) -> u16 {
        match self {
            AttrKind::MappedAddress => attr::MAPPED_ADDRESS,
            AttrKind::XorMappedAddress => attr::XOR_MAPPED_ADDRESS,
            AttrKind::XorMappedAddressDraft => attr::XOR_MAPPED_ADDRESS_DRAFT,
            AttrKind::ResponseAddress => attr::RESPONSE_ADDRESS,
            AttrKind::SourceAddress => attr::SOURCE_ADDRESS,
            AttrKind::ChangedAddress => attr::CHANGED_ADDRESS,
            AttrKind::ChangeRequest => attr::CHANGE_REQUEST,
            AttrKind::OtherAddress => attr::OTHER_ADDRESS,
            AttrKind::ResponseOrigin => attr::RESPONSE_ORIGIN,
            AttrKind::ResponsePort => attr::RESPONSE_PORT,
            AttrKind::Padding => attr::PADDING,
            AttrKind::Username => attr::USERNAME,
            AttrKind::Software => attr::SOFTWARE,
            AttrKind::ErrorCode => attr::ERROR_CODE,
            AttrKind::UnknownAttributes => attr::UNKNOWN_ATTRIBUTES,
            AttrKind::MessageIntegrity => attr::MESSAGE_INTEGRITY,
            AttrKind::Fingerprint => attr::FINGERPRINT,
        }
    }

    /// Kinds by code: entry `i` is the kind of code `i` for `i < 64` and of `0x8000 + i - 64` for
    /// `64 <= i < 128` (every known code is in one of those two ranges).
    const BY_CODE: [Option<AttrKind>; 128] = {
        let mut t = [None; 128];
        let mut kinds: &[AttrKind] = &AttrKind::ALL;
        while let [kind, ref rest @ ..] = *kinds {
            let code = kind.code();
            // 0x0000..0x003F -> 0..63, 0x8000..0x803F -> 64..127.
            let slot = ((code & 0x3F) | ((code >> 9) & 0x40)) as usize;
            if let Some((_, [entry, ..])) = t.split_at_mut_checked(slot) {
                *entry = Some(kind);
            }
            kinds = rest;
        }
        t
    };

    /// The kind of a type code, if known.
    #[inline]
    pub fn from_code(code: u16) -> Option<AttrKind> {
        // Only codes whose bits other than 0x8000 and 0x003F are clear can be known.
        if code & 0x7FC0 != 0 {
            return None;
        }
        let slot = usize::from((code & 0x3F) | ((code >> 9) & 0x40));
        AttrKind::BY_CODE.get(slot).copied().flatten()
    }

    /// Checks that `value` is a valid value of this kind, without building it. This is the one
    /// place the format rules live: [`Attribute::parse`] checks with it before building.
    #[inline(always)]
    pub fn check(self, value: &[u8]) -> Result<(), AttrError> {
        let exact = |n: usize| {
            if value.len() == n {
                Ok(())
            } else {
                Err(AttrError::BadLength)
            }
        };
        match self {
            AttrKind::MappedAddress
            | AttrKind::XorMappedAddress
            | AttrKind::XorMappedAddressDraft
            | AttrKind::ResponseAddress
            | AttrKind::SourceAddress
            | AttrKind::ChangedAddress
            | AttrKind::OtherAddress
            | AttrKind::ResponseOrigin => match *value {
                [_, 1, _, _, _, _, _, _] => Ok(()),
                [_, 2, ref rest @ ..] if rest.len() == 18 => Ok(()),
                [_, 1 | 2, ..] => Err(AttrError::BadLength),
                [_, _, ..] => Err(AttrError::BadFamily),
                _ => Err(AttrError::BadLength),
            },
            AttrKind::ChangeRequest | AttrKind::ResponsePort | AttrKind::Fingerprint => exact(4),
            AttrKind::MessageIntegrity => exact(20),
            AttrKind::Padding => Ok(()),
            AttrKind::Username => {
                if value.len() > MAX_USERNAME {
                    Err(AttrError::TooLong)
                } else {
                    Ok(())
                }
            }
            AttrKind::Software => check_text(value),
            AttrKind::ErrorCode => {
                let [_, _, class, number, ref reason @ ..] = *value else {
                    return Err(AttrError::BadLength);
                };
                if !(3..=6).contains(&(class & 0x07)) || number > 99 {
                    return Err(AttrError::BadErrorCode);
                }
                check_text(reason)
            }
            AttrKind::UnknownAttributes => {
                if value.len().is_multiple_of(2) {
                    Ok(())
                } else {
                    Err(AttrError::BadLength)
                }
            }
        }
    }

    /// The kind's bit in a set of kinds.
    #[inline]
    pub(crate) const fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// The flags of a CHANGE-REQUEST.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChangeRequest {
    /// Ask the server to answer from its other IP address.
    pub change_ip: bool,
    /// Ask the server to answer from its other port.
    pub change_port: bool,
}

impl ChangeRequest {
    /// No change.
    pub const NONE: ChangeRequest = ChangeRequest {
        change_ip: false,
        change_port: false,
    };
    /// Change the port only.
    pub const PORT: ChangeRequest = ChangeRequest {
        change_ip: false,
        change_port: true,
    };
    /// Change the IP only.
    pub const IP: ChangeRequest = ChangeRequest {
        change_ip: true,
        change_port: false,
    };
    /// Change both.
    pub const BOTH: ChangeRequest = ChangeRequest {
        change_ip: true,
        change_port: true,
    };

    /// Whether anything is to change.
    pub fn any(self) -> bool {
        self.change_ip || self.change_port
    }

    fn to_wire(self) -> u32 {
        (if self.change_ip { 4 } else { 0 }) | (if self.change_port { 2 } else { 0 })
    }
}

/// An ERROR-CODE value.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ErrorCode<'a> {
    /// The code, 300..=699.
    pub code: u16,
    /// The reason phrase.
    pub reason: &'a str,
}

/// A list of attribute types (the value of UNKNOWN-ATTRIBUTES), either as received or as given.
#[derive(Copy, Clone, Debug, Eq, Hash)]
pub enum AttrTypes<'a> {
    /// Big-endian u16s as they are on the wire (even length).
    Wire(&'a [u8]),
    /// A list to encode.
    List(&'a [u16]),
}

impl<'a> AttrTypes<'a> {
    /// The types.
    pub fn iter(&self) -> impl Iterator<Item = u16> + 'a {
        let (wire, list): (&'a [u8], &'a [u16]) = match *self {
            AttrTypes::Wire(w) => (w, &[]),
            AttrTypes::List(l) => (&[], l),
        };
        wire.chunks_exact(2)
            .map(|c| {
                u16::from_be_bytes([
                    c.first().copied().unwrap_or(0),
                    c.get(1).copied().unwrap_or(0),
                ])
            })
            .chain(list.iter().copied())
    }

    fn byte_len(&self) -> usize {
        match *self {
            AttrTypes::Wire(w) => w.len(),
            AttrTypes::List(l) => l.len().saturating_mul(2),
        }
    }
}

impl PartialEq for AttrTypes<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

/// A STUN attribute, decoded (borrowing from the message) or to be encoded.
///
/// Address-valued attributes hold the real (un-XORed) address.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Attribute<'a> {
    /// MAPPED-ADDRESS.
    MappedAddress(SocketAddr),
    /// XOR-MAPPED-ADDRESS.
    XorMappedAddress(SocketAddr),
    /// XOR-MAPPED-ADDRESS under its pre-standard code 0x8020.
    XorMappedAddressDraft(SocketAddr),
    /// RESPONSE-ADDRESS (RFC 3489).
    ResponseAddress(SocketAddr),
    /// SOURCE-ADDRESS (RFC 3489).
    SourceAddress(SocketAddr),
    /// CHANGED-ADDRESS (RFC 3489).
    ChangedAddress(SocketAddr),
    /// CHANGE-REQUEST.
    ChangeRequest(ChangeRequest),
    /// OTHER-ADDRESS (RFC 5780).
    OtherAddress(SocketAddr),
    /// RESPONSE-ORIGIN (RFC 5780).
    ResponseOrigin(SocketAddr),
    /// RESPONSE-PORT (RFC 5780).
    ResponsePort(u16),
    /// PADDING (RFC 5780).
    Padding(&'a [u8]),
    /// USERNAME.
    Username(&'a [u8]),
    /// SOFTWARE.
    Software(&'a str),
    /// ERROR-CODE.
    ErrorCode(ErrorCode<'a>),
    /// UNKNOWN-ATTRIBUTES.
    UnknownAttributes(AttrTypes<'a>),
    /// MESSAGE-INTEGRITY (the HMAC as received; use `MessageWriter::add_message_integrity` to compute one).
    MessageIntegrity([u8; 20]),
    /// FINGERPRINT (the value as received; use `MessageWriter::add_fingerprint` to compute one).
    Fingerprint(u32),
    /// Any other attribute.
    Other {
        /// The type code.
        kind: u16,
        /// The value.
        value: &'a [u8],
    },
}

/// Longest SOFTWARE, reason phrase and USERNAME values (RFC 8489: 763 bytes, 513 for USERNAME).
const MAX_TEXT: usize = 763;
const MAX_USERNAME: usize = 513;

impl<'a> Attribute<'a> {
    /// The attribute's type code.
    pub fn code(&self) -> u16 {
        match self {
            Attribute::MappedAddress(_) => attr::MAPPED_ADDRESS,
            Attribute::XorMappedAddress(_) => attr::XOR_MAPPED_ADDRESS,
            Attribute::XorMappedAddressDraft(_) => attr::XOR_MAPPED_ADDRESS_DRAFT,
            Attribute::ResponseAddress(_) => attr::RESPONSE_ADDRESS,
            Attribute::SourceAddress(_) => attr::SOURCE_ADDRESS,
            Attribute::ChangedAddress(_) => attr::CHANGED_ADDRESS,
            Attribute::ChangeRequest(_) => attr::CHANGE_REQUEST,
            Attribute::OtherAddress(_) => attr::OTHER_ADDRESS,
            Attribute::ResponseOrigin(_) => attr::RESPONSE_ORIGIN,
            Attribute::ResponsePort(_) => attr::RESPONSE_PORT,
            Attribute::Padding(_) => attr::PADDING,
            Attribute::Username(_) => attr::USERNAME,
            Attribute::Software(_) => attr::SOFTWARE,
            Attribute::ErrorCode(_) => attr::ERROR_CODE,
            Attribute::UnknownAttributes(_) => attr::UNKNOWN_ATTRIBUTES,
            Attribute::MessageIntegrity(_) => attr::MESSAGE_INTEGRITY,
            Attribute::Fingerprint(_) => attr::FINGERPRINT,
            Attribute::Other { kind, .. } => *kind,
        }
    }

    /// Parses a value of type `code` found in a message with `header`.
    pub fn parse(code: u16, value: &'a [u8], header: &Header) -> Result<Attribute<'a>, AttrError> {
        let Some(kind) = AttrKind::from_code(code) else {
            return Ok(Attribute::Other { kind: code, value });
        };
        kind.check(value)?;
        Self::build(kind, value, header).ok_or(AttrError::BadLength)
    }

    /// Builds an attribute from a value that [`AttrKind::check`] accepted.
    fn build(kind: AttrKind, value: &'a [u8], header: &Header) -> Option<Attribute<'a>> {
        let plain = |v| parse_address(v, None).ok();
        let xored = |v| parse_address(v, Some(header)).ok();
        Some(match kind {
            AttrKind::MappedAddress => Attribute::MappedAddress(plain(value)?),
            AttrKind::XorMappedAddress => Attribute::XorMappedAddress(xored(value)?),
            AttrKind::XorMappedAddressDraft => Attribute::XorMappedAddressDraft(xored(value)?),
            AttrKind::ResponseAddress => Attribute::ResponseAddress(plain(value)?),
            AttrKind::SourceAddress => Attribute::SourceAddress(plain(value)?),
            AttrKind::ChangedAddress => Attribute::ChangedAddress(plain(value)?),
            AttrKind::OtherAddress => Attribute::OtherAddress(plain(value)?),
            AttrKind::ResponseOrigin => Attribute::ResponseOrigin(plain(value)?),
            AttrKind::ChangeRequest => {
                let flags = read_u32(value, 0)?;
                Attribute::ChangeRequest(ChangeRequest {
                    change_ip: flags & 4 != 0,
                    change_port: flags & 2 != 0,
                })
            }
            AttrKind::ResponsePort => Attribute::ResponsePort(read_u16(value, 0)?),
            AttrKind::Padding => Attribute::Padding(value),
            AttrKind::Username => Attribute::Username(value),
            AttrKind::Software => Attribute::Software(core::str::from_utf8(value).ok()?),
            AttrKind::ErrorCode => {
                let class = u16::from(*value.get(2)? & 0x07);
                let number = u16::from(*value.get(3)?);
                Attribute::ErrorCode(ErrorCode {
                    code: class.saturating_mul(100).saturating_add(number),
                    reason: core::str::from_utf8(value.get(4..)?).ok()?,
                })
            }
            AttrKind::UnknownAttributes => Attribute::UnknownAttributes(AttrTypes::Wire(value)),
            AttrKind::MessageIntegrity => Attribute::MessageIntegrity(value.try_into().ok()?),
            AttrKind::Fingerprint => Attribute::Fingerprint(read_u32(value, 0)?),
        })
    }

    /// The length of the encoded value (without header or padding).
    pub fn value_len(&self) -> usize {
        match self {
            Attribute::MappedAddress(a)
            | Attribute::XorMappedAddress(a)
            | Attribute::XorMappedAddressDraft(a)
            | Attribute::ResponseAddress(a)
            | Attribute::SourceAddress(a)
            | Attribute::ChangedAddress(a)
            | Attribute::OtherAddress(a)
            | Attribute::ResponseOrigin(a) => address_len(a),
            Attribute::ChangeRequest(_)
            | Attribute::ResponsePort(_)
            | Attribute::Fingerprint(_) => 4,
            Attribute::Padding(v) | Attribute::Username(v) | Attribute::Other { value: v, .. } => {
                v.len()
            }
            Attribute::Software(s) => s.len(),
            Attribute::ErrorCode(e) => e.reason.len().saturating_add(4),
            Attribute::UnknownAttributes(t) => t.byte_len(),
            Attribute::MessageIntegrity(_) => 20,
        }
    }

    /// Writes the value into `out` (exactly `value_len()` bytes). `None` if `out` is too short or the
    /// value cannot be represented (an error code outside 300..=699).
    pub(crate) fn write_value(&self, header: &Header, out: &mut [u8]) -> Option<()> {
        match self {
            Attribute::MappedAddress(a)
            | Attribute::ResponseAddress(a)
            | Attribute::SourceAddress(a)
            | Attribute::ChangedAddress(a)
            | Attribute::OtherAddress(a)
            | Attribute::ResponseOrigin(a) => write_address(a, None, out),
            Attribute::XorMappedAddress(a) | Attribute::XorMappedAddressDraft(a) => {
                write_address(a, Some(&header.xor_key()), out)
            }
            Attribute::ChangeRequest(c) => {
                out.get_mut(..4)?
                    .copy_from_slice(&c.to_wire().to_be_bytes());
                Some(())
            }
            Attribute::ResponsePort(p) => {
                let v = out.get_mut(..4)?;
                v.copy_from_slice(&[0, 0, 0, 0]);
                v.get_mut(..2)?.copy_from_slice(&p.to_be_bytes());
                Some(())
            }
            Attribute::Fingerprint(f) => {
                out.get_mut(..4)?.copy_from_slice(&f.to_be_bytes());
                Some(())
            }
            Attribute::Padding(v) | Attribute::Username(v) | Attribute::Other { value: v, .. } => {
                out.get_mut(..v.len())?.copy_from_slice(v);
                Some(())
            }
            Attribute::Software(s) => {
                out.get_mut(..s.len())?.copy_from_slice(s.as_bytes());
                Some(())
            }
            Attribute::ErrorCode(e) => {
                if !(300..=699).contains(&e.code) {
                    return None;
                }
                let class = u8::try_from(e.code / 100).ok()?;
                let number = u8::try_from(e.code % 100).ok()?;
                out.get_mut(..4)?.copy_from_slice(&[0, 0, class, number]);
                out.get_mut(4..4usize.checked_add(e.reason.len())?)?
                    .copy_from_slice(e.reason.as_bytes());
                Some(())
            }
            Attribute::UnknownAttributes(t) => {
                for (slot, code) in out.chunks_exact_mut(2).zip(t.iter()) {
                    slot.copy_from_slice(&code.to_be_bytes());
                }
                Some(())
            }
            Attribute::MessageIntegrity(m) => {
                out.get_mut(..20)?.copy_from_slice(m);
                Some(())
            }
        }
    }
}

/// Checks text without building a `&str`; ASCII (the usual SOFTWARE and reason phrase) is checked
/// word-at-a-time before falling back to full UTF-8 validation.
#[inline(always)]
fn check_text(value: &[u8]) -> Result<(), AttrError> {
    if value.len() > MAX_TEXT {
        return Err(AttrError::TooLong);
    }
    if is_ascii(value) || core::str::from_utf8(value).is_ok() {
        Ok(())
    } else {
        Err(AttrError::BadUtf8)
    }
}

/// Whether every byte is below 0x80, a word at a time: short values do not reach the standard
/// library's vectorised loop, and this stays inline. The last word may overlap the one before it.
#[inline(always)]
fn is_ascii(value: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let acc = if let Some(last) = value.last_chunk::<8>() {
        let (words, _) = value.as_chunks::<8>();
        words.iter().fold(u64::from_ne_bytes(*last), |acc, w| {
            acc | u64::from_ne_bytes(*w)
        })
    } else if let (Some(first), Some(last)) = (value.first_chunk::<4>(), value.last_chunk::<4>()) {
        u64::from(u32::from_ne_bytes(*first) | u32::from_ne_bytes(*last))
    } else {
        value.iter().fold(0, |acc, &b| acc | u64::from(b))
    };
    acc & HIGH == 0
}

fn address_len(a: &SocketAddr) -> usize {
    match a {
        SocketAddr::V4(_) => 8,
        SocketAddr::V6(_) => 20,
    }
}

/// Parses `reserved(1) family(1) port(2) address(4|16)`, un-XORing with the cookie and transaction id
/// of `xor` when given.
pub(crate) fn parse_address(value: &[u8], xor: Option<&Header>) -> Result<SocketAddr, AttrError> {
    match *value {
        [_, 1, ..] => parse_ipv4_address(value, xor).ok_or(AttrError::BadLength),
        [_, 2, p0, p1, ref rest @ ..] => {
            let raw: [u8; 16] = rest.try_into().map_err(|_| AttrError::BadLength)?;
            let key = xor.map_or(0, |h| u128::from_be_bytes(h.xor_key()));
            let ip = Ipv6Addr::from_bits(u128::from_be_bytes(raw) ^ key);
            // The port is XORed with the cookie's top 16 bits.
            let port = u16::from_be_bytes([p0, p1]) ^ (key >> 112) as u16;
            Ok(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)))
        }
        [_, 2, ..] => Err(AttrError::BadLength),
        [_, _, ..] => Err(AttrError::BadFamily),
        _ => Err(AttrError::BadLength),
    }
}

/// [`parse_address`] of an IPv4 address, a few word operations; `None` for anything else.
#[inline(always)]
pub(crate) fn parse_ipv4_address(value: &[u8], xor: Option<&Header>) -> Option<SocketAddr> {
    let [_, 1, p0, p1, a, b, c, d] = *value else {
        return None;
    };
    let cookie = xor.map_or(0, |h| u32::from_be_bytes(h.cookie));
    // The port is XORed with the cookie's top 16 bits.
    let port = u16::from_be_bytes([p0, p1]) ^ (cookie >> 16) as u16;
    let ip = Ipv4Addr::from_bits(u32::from_be_bytes([a, b, c, d]) ^ cookie);
    Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
}

fn write_address(a: &SocketAddr, key: Option<&[u8; 16]>, out: &mut [u8]) -> Option<()> {
    let mut ip = [0u8; 16];
    let (family, ip_len) = match a.ip() {
        IpAddr::V4(v4) => {
            ip.get_mut(..4)?.copy_from_slice(&v4.octets());
            (1u8, 4usize)
        }
        IpAddr::V6(v6) => {
            ip.copy_from_slice(&v6.octets());
            (2u8, 16usize)
        }
    };
    let mut port = a.port();
    if let Some(key) = key {
        port ^= u16::from_be_bytes([key[0], key[1]]);
        for (b, k) in ip.iter_mut().zip(key.iter()) {
            *b ^= *k;
        }
    }
    let [p0, p1] = port.to_be_bytes();
    out.get_mut(..4)?.copy_from_slice(&[0, family, p0, p1]);
    out.get_mut(4..4usize.checked_add(ip_len)?)?
        .copy_from_slice(ip.get(..ip_len)?);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_code_knows_exactly_the_kinds() {
        let mut known = 0;
        for code in 0..=u16::MAX {
            if let Some(kind) = AttrKind::from_code(code) {
                assert_eq!(kind.code(), code);
                known += 1;
            }
        }
        assert_eq!(known, AttrKind::COUNT);
        for kind in AttrKind::ALL {
            assert_eq!(AttrKind::from_code(kind.code()), Some(kind));
            assert_eq!(AttrKind::ALL[kind as usize], kind);
        }
    }

    #[test]
    fn is_ascii_agrees_with_std() {
        for len in 0..40 {
            let ascii = vec![b'a'; len];
            assert!(is_ascii(&ascii));
            for at in 0..len {
                let mut v = ascii.clone();
                v[at] = 0x80 | (at as u8);
                assert!(!is_ascii(&v), "len {len} at {at}");
                assert_eq!(is_ascii(&v), v.is_ascii());
            }
        }
    }
}

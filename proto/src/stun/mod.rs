//! STUN codec: zero-copy decoding of `&[u8]` and encoding into a caller's buffer.
//!
//! Covers RFC 5389/8489 messages, RFC 3489 "legacy" messages (no magic cookie: the 16 bytes after the
//! length are all transaction id), the RFC 5780 attributes and the legacy RFC 3489 address attributes.
//!
//! [`StreamFramer`] reassembles messages sent back to back on a byte stream (RFC 8489 §6.2.2).
//!
//! ```
//! use p2pd_proto::stun::{Attribute, Class, Header, Message, MessageWriter, Method, TransactionId};
//! let header = Header::new(Class::Success, Method::BINDING, TransactionId::new([7; 12]));
//! let mut buf = [0u8; 128];
//! let mut w = MessageWriter::new(&mut buf, header).unwrap();
//! w.add(&Attribute::XorMappedAddress("192.0.2.1:32853".parse().unwrap())).unwrap();
//! w.add_fingerprint().unwrap();
//! let len = w.finish();
//! let msg = Message::decode(&buf[..len]).unwrap();
//! assert_eq!(msg.mapped_address(), Some("192.0.2.1:32853".parse().unwrap()));
//! ```

mod attribute;
mod decode;
mod encode;
mod framing;
mod header;

pub use attribute::{AttrError, AttrKind, AttrTypes, Attribute, ChangeRequest, ErrorCode};
pub use decode::{is_stun, Attributes, DecodeError, IntegrityError, Message, RawAttribute};
pub use encode::{EncodeError, MessageWriter};
pub use framing::{FrameStatus, StreamFramer};
pub use header::{Class, Header, Method, TransactionId, HEADER_LEN, MAGIC_COOKIE};

/// Attribute type codes.
pub mod attr {
    /// MAPPED-ADDRESS (RFC 5389, RFC 3489).
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// RESPONSE-ADDRESS (RFC 3489, obsolete).
    pub const RESPONSE_ADDRESS: u16 = 0x0002;
    /// CHANGE-REQUEST (RFC 5780, RFC 3489).
    pub const CHANGE_REQUEST: u16 = 0x0003;
    /// SOURCE-ADDRESS (RFC 3489).
    pub const SOURCE_ADDRESS: u16 = 0x0004;
    /// CHANGED-ADDRESS (RFC 3489).
    pub const CHANGED_ADDRESS: u16 = 0x0005;
    /// USERNAME.
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY (HMAC-SHA1).
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE.
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES.
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// XOR-MAPPED-ADDRESS.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// PADDING (RFC 5780).
    pub const PADDING: u16 = 0x0026;
    /// RESPONSE-PORT (RFC 5780).
    pub const RESPONSE_PORT: u16 = 0x0027;
    /// XOR-MAPPED-ADDRESS as some pre-RFC 5389 servers send it.
    pub const XOR_MAPPED_ADDRESS_DRAFT: u16 = 0x8020;
    /// SOFTWARE.
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT.
    pub const FINGERPRINT: u16 = 0x8028;
    /// RESPONSE-ORIGIN (RFC 5780).
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    /// OTHER-ADDRESS (RFC 5780).
    pub const OTHER_ADDRESS: u16 = 0x802C;
}

/// The value FINGERPRINT's CRC-32 is XORed with.
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Reads a big-endian u16 at `at`.
fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
}

/// Reads a big-endian u32 at `at`.
fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

/// Rounds `n` up to a multiple of four.
fn padded(n: usize) -> Option<usize> {
    n.checked_add(3).map(|v| v & !3)
}

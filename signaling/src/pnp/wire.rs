//! The PNP wire codec: request and reply payloads (carried inside sealed envelopes), TCP framing
//! and the size constants. The format is documented in the [module docs](super).

use core::fmt;

use crate::envelope::{self, NONCE_LEN};
use crate::identity::PUBLIC_KEY_LEN;

use super::record::{Name, NameError, Record, MAX_RECORD_LEN};

/// The payload format version this crate reads and writes (first payload byte).
pub const WIRE_VERSION: u8 = 1;
/// Length of the header every reply payload starts with: version, opcode, request nonce.
pub const REPLY_HEADER_LEN: usize = 2 + NONCE_LEN;
/// Length of an error reply's payload (header, code, detail).
pub const ERROR_REPLY_PAYLOAD_LEN: usize = REPLY_HEADER_LEN + 1 + 8;
/// Length of a `Registered` or `Deleted` reply's payload (header, version).
pub const ACK_REPLY_PAYLOAD_LEN: usize = REPLY_HEADER_LEN + 8;
/// The largest request or reply payload: a `Found` reply carrying the largest record.
pub const MAX_PAYLOAD_LEN: usize = REPLY_HEADER_LEN + MAX_RECORD_LEN;
/// The largest sealed request or reply, in bytes. Larger envelopes are dropped unopened.
pub const MAX_MESSAGE_LEN: usize = envelope::OVERHEAD + MAX_PAYLOAD_LEN;
/// The bound on every reply the server sends (and on every request it accepts).
pub const MAX_REPLY_LEN: usize = 1200;
/// The smallest payload a UDP request may have so that every non-`Found` reply fits (the client
/// pads delete requests up to this; register requests are always larger).
pub const MIN_UDP_REQUEST_PAYLOAD: usize = ERROR_REPLY_PAYLOAD_LEN;
/// The payload length the client pads UDP lookups to, so that the largest `Found` reply fits.
pub const UDP_LOOKUP_PAYLOAD_LEN: usize = MAX_PAYLOAD_LEN;
/// Length of the TCP frame prefix (big-endian `u16` byte count of the envelope that follows).
pub const FRAME_PREFIX_LEN: usize = 2;

const _: () = assert!(MAX_MESSAGE_LEN <= MAX_REPLY_LEN);
const _: () = assert!(ACK_REPLY_PAYLOAD_LEN <= MIN_UDP_REQUEST_PAYLOAD);
const _: () = assert!(MAX_MESSAGE_LEN <= u16::MAX as usize);

const OP_REGISTER: u8 = 0x01;
const OP_LOOKUP: u8 = 0x02;
const OP_DELETE: u8 = 0x03;
const OP_REGISTERED: u8 = 0x81;
const OP_FOUND: u8 = 0x82;
const OP_DELETED: u8 = 0x83;
const OP_ERROR: u8 = 0xff;

/// Why a payload (or record) did not parse.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum WireError {
    /// Shorter than its fields say.
    Truncated,
    /// The payload version byte is not [`WIRE_VERSION`].
    UnsupportedVersion(u8),
    /// An opcode this version does not define (or a reply opcode where a request was expected).
    UnknownOpcode(u8),
    /// A name field is not a valid [`Name`].
    Name(NameError),
    /// A value is longer than [`super::MAX_VALUE_LEN`].
    ValueTooLarge,
    /// A public key field is not a valid curve point.
    BadKey,
    /// Bytes after the message that are not zero padding (or, for a reply or a record, any bytes
    /// after it).
    TrailingBytes,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated => f.write_str("truncated"),
            WireError::UnsupportedVersion(v) => write!(f, "unsupported PNP version {v}"),
            WireError::UnknownOpcode(op) => write!(f, "unknown opcode 0x{op:02x}"),
            WireError::Name(e) => write!(f, "invalid name: {e}"),
            WireError::ValueTooLarge => f.write_str("value too large"),
            WireError::BadKey => f.write_str("invalid public key"),
            WireError::TrailingBytes => f.write_str("trailing bytes"),
        }
    }
}

impl std::error::Error for WireError {}

/// A bounds-checked cursor over a byte slice.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.rest.len() {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        self.take(N)?.try_into().map_err(|_| WireError::Truncated)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Requires that nothing is left.
    pub(crate) fn finish(self) -> Result<(), WireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes)
        }
    }

    /// Requires that whatever is left is zero padding.
    fn finish_padding(self) -> Result<(), WireError> {
        if self.rest.iter().all(|b| *b == 0) {
            Ok(())
        } else {
            Err(WireError::TrailingBytes)
        }
    }
}

/// A request, as carried in a sealed envelope from the client to the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Create or update a name. The record must be signed by the envelope's sender.
    Register(Box<Record>),
    /// Fetch a name's record.
    Lookup(Name),
    /// Remove a name. Only its owner (the envelope's sender) may; `version` must exceed the
    /// stored record's.
    Delete {
        /// The name.
        name: Name,
        /// Must be greater than the stored version.
        version: u64,
    },
}

impl Request {
    /// The name the request is about.
    pub fn name(&self) -> &Name {
        match self {
            Request::Register(record) => record.name(),
            Request::Lookup(name) | Request::Delete { name, .. } => name,
        }
    }

    /// Encodes the payload, followed by zero padding up to `pad_to` bytes (no padding when the
    /// body is already that long).
    pub fn encode(&self, pad_to: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(pad_to.max(MAX_PAYLOAD_LEN));
        out.push(WIRE_VERSION);
        match self {
            Request::Register(record) => {
                out.push(OP_REGISTER);
                record.encode(&mut out);
            }
            Request::Lookup(name) => {
                out.push(OP_LOOKUP);
                name.encode(&mut out);
            }
            Request::Delete { name, version } => {
                out.push(OP_DELETE);
                name.encode(&mut out);
                out.extend_from_slice(&version.to_be_bytes());
            }
        }
        if out.len() < pad_to {
            out.resize(pad_to, 0);
        }
        out
    }

    /// Parses a request payload (trailing zero bytes are padding).
    pub fn decode(bytes: &[u8]) -> Result<Request, WireError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != WIRE_VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        let request = match r.u8()? {
            OP_REGISTER => Request::Register(Box::new(Record::decode(&mut r)?)),
            OP_LOOKUP => Request::Lookup(Name::decode(&mut r)?),
            OP_DELETE => Request::Delete {
                name: Name::decode(&mut r)?,
                version: r.u64()?,
            },
            other => return Err(WireError::UnknownOpcode(other)),
        };
        r.finish_padding()?;
        Ok(request)
    }
}

/// Why the server refused a request (the `code` byte of an error reply).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// No live record has this name. Detail: 0.
    NotFound,
    /// The name belongs to another key, or the record's owner is not the request's sender.
    /// Detail: 0.
    NotOwner,
    /// The version is not greater than the stored one (or equal with different contents).
    /// Detail: the stored version.
    StaleVersion,
    /// The source (IPv4 address or IPv6 /64) holds its maximum number of names. Detail: the limit.
    QuotaExceeded,
    /// The source sent too many requests. Detail: milliseconds until it may send again.
    RateLimited,
    /// The record's signature does not verify under its owner key. Detail: 0.
    BadSignature,
    /// The payload does not parse. Detail: 0.
    Malformed,
    /// A value (or name) is longer than allowed. Detail: the limit in bytes.
    TooLarge,
    /// The server cannot store anything now (store full or failing). Detail: 0.
    ServerBusy,
    /// The name does not follow the name rules. Detail: 0.
    InvalidName,
    /// The expiry is in the past or beyond the server's maximum lifetime. Detail: the latest
    /// expiry (Unix ms) the server would accept now.
    InvalidExpiry,
    /// Over UDP, the reply would be larger than the request: pad the request. Detail: the request
    /// length in bytes that the reply needs.
    PaddingRequired,
    /// The payload version is not one the server speaks. Detail: the server's version.
    UnsupportedVersion,
    /// A code this implementation does not know.
    Unknown(u8),
}

impl ErrorCode {
    /// The code byte.
    pub fn to_u8(self) -> u8 {
        match self {
            ErrorCode::NotFound => 1,
            ErrorCode::NotOwner => 2,
            ErrorCode::StaleVersion => 3,
            ErrorCode::QuotaExceeded => 4,
            ErrorCode::RateLimited => 5,
            ErrorCode::BadSignature => 6,
            ErrorCode::Malformed => 7,
            ErrorCode::TooLarge => 8,
            ErrorCode::ServerBusy => 9,
            ErrorCode::InvalidName => 10,
            ErrorCode::InvalidExpiry => 11,
            ErrorCode::PaddingRequired => 12,
            ErrorCode::UnsupportedVersion => 13,
            ErrorCode::Unknown(code) => code,
        }
    }

    /// The code for a byte (unknown bytes are kept as [`ErrorCode::Unknown`]).
    pub fn from_u8(code: u8) -> ErrorCode {
        match code {
            1 => ErrorCode::NotFound,
            2 => ErrorCode::NotOwner,
            3 => ErrorCode::StaleVersion,
            4 => ErrorCode::QuotaExceeded,
            5 => ErrorCode::RateLimited,
            6 => ErrorCode::BadSignature,
            7 => ErrorCode::Malformed,
            8 => ErrorCode::TooLarge,
            9 => ErrorCode::ServerBusy,
            10 => ErrorCode::InvalidName,
            11 => ErrorCode::InvalidExpiry,
            12 => ErrorCode::PaddingRequired,
            13 => ErrorCode::UnsupportedVersion,
            other => ErrorCode::Unknown(other),
        }
    }

    /// The error reply for a request payload that did not parse.
    pub fn for_wire_error(error: WireError) -> (ErrorCode, u64) {
        match error {
            WireError::UnsupportedVersion(_) => {
                (ErrorCode::UnsupportedVersion, u64::from(WIRE_VERSION))
            }
            WireError::Name(NameError::TooLong) => {
                (ErrorCode::TooLarge, super::MAX_NAME_LEN as u64)
            }
            WireError::Name(_) => (ErrorCode::InvalidName, 0),
            WireError::ValueTooLarge => (ErrorCode::TooLarge, super::MAX_VALUE_LEN as u64),
            WireError::Truncated
            | WireError::UnknownOpcode(_)
            | WireError::BadKey
            | WireError::TrailingBytes => (ErrorCode::Malformed, 0),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What a reply says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyBody {
    /// The record is stored (or was already stored identically) at this version.
    Registered {
        /// The stored version.
        version: u64,
    },
    /// The name's record.
    Found(Box<Record>),
    /// The name was removed.
    Deleted {
        /// The version of the delete request.
        version: u64,
    },
    /// The request was refused.
    Error {
        /// Why.
        code: ErrorCode,
        /// A code-specific number (see [`ErrorCode`]).
        detail: u64,
    },
}

/// A reply, as carried in a sealed envelope from the server to the requester.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The envelope nonce of the request this answers.
    pub request_nonce: [u8; NONCE_LEN],
    /// What it says.
    pub body: ReplyBody,
}

impl Reply {
    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_PAYLOAD_LEN);
        out.push(WIRE_VERSION);
        let opcode = match &self.body {
            ReplyBody::Registered { .. } => OP_REGISTERED,
            ReplyBody::Found(_) => OP_FOUND,
            ReplyBody::Deleted { .. } => OP_DELETED,
            ReplyBody::Error { .. } => OP_ERROR,
        };
        out.push(opcode);
        out.extend_from_slice(&self.request_nonce);
        match &self.body {
            ReplyBody::Registered { version } | ReplyBody::Deleted { version } => {
                out.extend_from_slice(&version.to_be_bytes());
            }
            ReplyBody::Found(record) => record.encode(&mut out),
            ReplyBody::Error { code, detail } => {
                out.push(code.to_u8());
                out.extend_from_slice(&detail.to_be_bytes());
            }
        }
        out
    }

    /// Parses a reply payload (exactly; no padding).
    pub fn decode(bytes: &[u8]) -> Result<Reply, WireError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != WIRE_VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        let opcode = r.u8()?;
        let request_nonce = r.array::<NONCE_LEN>()?;
        let body = match opcode {
            OP_REGISTERED => ReplyBody::Registered { version: r.u64()? },
            OP_FOUND => ReplyBody::Found(Box::new(Record::decode(&mut r)?)),
            OP_DELETED => ReplyBody::Deleted { version: r.u64()? },
            OP_ERROR => ReplyBody::Error {
                code: ErrorCode::from_u8(r.u8()?),
                detail: r.u64()?,
            },
            other => return Err(WireError::UnknownOpcode(other)),
        };
        r.finish()?;
        Ok(Reply {
            request_nonce,
            body,
        })
    }
}

/// The sender key and nonce of a sealed envelope, read from its header without opening it (the
/// offsets of the envelope wire format v1). `None` if `bytes` is too short or not version 1.
pub(crate) fn peek_envelope(bytes: &[u8]) -> Option<([u8; PUBLIC_KEY_LEN], [u8; NONCE_LEN])> {
    const OFF_SENDER: usize = 1;
    const OFF_NONCE: usize = OFF_SENDER + PUBLIC_KEY_LEN + crate::identity::NODE_ID_LEN + 8;
    if *bytes.first()? != envelope::VERSION {
        return None;
    }
    let sender = bytes.get(OFF_SENDER..OFF_SENDER + PUBLIC_KEY_LEN)?;
    let nonce = bytes.get(OFF_NONCE..OFF_NONCE + NONCE_LEN)?;
    Some((sender.try_into().ok()?, nonce.try_into().ok()?))
}

/// `envelope` with its TCP frame prefix, or `None` if it is longer than a frame can say.
pub fn frame(envelope: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(envelope.len()).ok()?;
    let mut out = Vec::with_capacity(envelope.len().saturating_add(FRAME_PREFIX_LEN));
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(envelope);
    Some(out)
}

/// What [`FrameReader::push`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FrameEvent {
    /// A complete frame's body (the envelope).
    Frame(Vec<u8>),
    /// The prefix announces an empty frame or one longer than the reader's limit.
    BadLength(u16),
}

/// Reassembles length-prefixed frames from stream chunks. Holds at most one frame
/// (`FRAME_PREFIX_LEN + max` bytes), whatever the chunking.
#[derive(Clone, Debug)]
pub(crate) struct FrameReader {
    max: usize,
    prefix: [u8; FRAME_PREFIX_LEN],
    prefix_len: usize,
    body: Vec<u8>,
    want: Option<usize>,
}

impl FrameReader {
    pub(crate) fn new(max: usize) -> Self {
        FrameReader {
            max,
            prefix: [0; FRAME_PREFIX_LEN],
            prefix_len: 0,
            body: Vec::new(),
            want: None,
        }
    }

    /// Consumes bytes from the front of `data` until a frame is complete (returned) or `data` is
    /// used up (`None`). After a [`FrameEvent::BadLength`] the stream cannot be resynchronised:
    /// the caller must stop feeding this reader.
    pub(crate) fn next(&mut self, data: &mut &[u8]) -> Option<FrameEvent> {
        while !data.is_empty() {
            match self.want {
                None => {
                    let (&byte, rest) = data.split_first()?;
                    *data = rest;
                    if let Some(slot) = self.prefix.get_mut(self.prefix_len) {
                        *slot = byte;
                    }
                    self.prefix_len = self.prefix_len.saturating_add(1);
                    if self.prefix_len >= FRAME_PREFIX_LEN {
                        self.prefix_len = 0;
                        let len = u16::from_be_bytes(self.prefix);
                        let want = usize::from(len);
                        if want == 0 || want > self.max {
                            return Some(FrameEvent::BadLength(len));
                        }
                        self.want = Some(want);
                        self.body.clear();
                    }
                }
                Some(want) => {
                    let missing = want.saturating_sub(self.body.len());
                    let (head, rest) = data.split_at(missing.min(data.len()));
                    self.body.extend_from_slice(head);
                    *data = rest;
                    if self.body.len() >= want {
                        self.want = None;
                        return Some(FrameEvent::Frame(core::mem::take(&mut self.body)));
                    }
                }
            }
        }
        None
    }
}

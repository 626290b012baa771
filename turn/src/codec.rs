//! TURN on the workspace's one STUN codec (`p2pd_proto::stun`): the TURN methods, the TURN
//! attributes (RFC 8656 §18, RFC 6062 §6.2), the error codes, and the long-term and TURN REST API
//! credentials.
//!
//! The STUN codec stays the only codec: TURN attributes are written through
//! [`MessageWriter::add`] with [`Attribute::Other`] and read from [`Message::attributes`]; the XOR
//! address attributes are parsed by the STUN codec's own XOR-MAPPED-ADDRESS parser (same format,
//! same checks), and MESSAGE-INTEGRITY is the STUN codec's HMAC-SHA1 under the long-term key
//! ([`long_term_key`]).
//!
//! ```
//! use p2pd_proto::stun::{Class, Header, Message, MessageWriter, TransactionId};
//! use p2pd_turn::codec::{self, method, TurnAttribute, TurnWriter};
//! let header = Header::new(Class::Request, method::ALLOCATE, TransactionId::new([1; 12]));
//! let mut buf = [0u8; 128];
//! let mut w = MessageWriter::new(&mut buf, header).unwrap();
//! w.add_turn(&header, &TurnAttribute::RequestedTransport(codec::TRANSPORT_TCP)).unwrap();
//! w.add_turn(&header, &TurnAttribute::Lifetime(600)).unwrap();
//! let len = w.finish();
//! let msg = Message::decode(&buf[..len]).unwrap();
//! assert_eq!(codec::find(&msg, codec::attr::LIFETIME), Ok(Some(TurnAttribute::Lifetime(600))));
//! ```

use core::net::SocketAddr;

use hmac::{KeyInit, Mac};
use p2pd_proto::stun::{
    attr as stun_attr, AttrError, Attribute, EncodeError, Header, Message, MessageWriter, Method,
};

/// `Method::new` in a constant (every TURN method number is a valid 12-bit method).
const fn method_const(number: u16) -> Method {
    match Method::new(number) {
        Some(m) => m,
        None => Method::BINDING,
    }
}

/// The TURN methods (RFC 8656 §17, RFC 6062 §6.1).
pub mod method {
    use super::method_const;
    use p2pd_proto::stun::Method;

    /// Allocate (request/response only).
    pub const ALLOCATE: Method = method_const(0x003);
    /// Refresh (request/response only).
    pub const REFRESH: Method = method_const(0x004);
    /// Send (indication only).
    pub const SEND: Method = method_const(0x006);
    /// Data (indication only).
    pub const DATA: Method = method_const(0x007);
    /// CreatePermission (request/response only).
    pub const CREATE_PERMISSION: Method = method_const(0x008);
    /// ChannelBind (request/response only).
    pub const CHANNEL_BIND: Method = method_const(0x009);
    /// Connect (RFC 6062, request/response only).
    pub const CONNECT: Method = method_const(0x00A);
    /// ConnectionBind (RFC 6062, request/response only).
    pub const CONNECTION_BIND: Method = method_const(0x00B);
    /// ConnectionAttempt (RFC 6062, indication only).
    pub const CONNECTION_ATTEMPT: Method = method_const(0x00C);
}

/// The TURN attribute type codes.
pub mod attr {
    /// CHANNEL-NUMBER.
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    /// LIFETIME.
    pub const LIFETIME: u16 = 0x000D;
    /// XOR-PEER-ADDRESS.
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    /// DATA.
    pub const DATA: u16 = 0x0013;
    /// REALM (RFC 8489, used by the long-term mechanism).
    pub const REALM: u16 = 0x0014;
    /// NONCE (RFC 8489, used by the long-term mechanism).
    pub const NONCE: u16 = 0x0015;
    /// XOR-RELAYED-ADDRESS.
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    /// REQUESTED-ADDRESS-FAMILY (RFC 8656).
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    /// EVEN-PORT.
    pub const EVEN_PORT: u16 = 0x0018;
    /// REQUESTED-TRANSPORT.
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    /// DONT-FRAGMENT.
    pub const DONT_FRAGMENT: u16 = 0x001A;
    /// MESSAGE-INTEGRITY-SHA256 (RFC 8489): not produced here, but it ends the attributes read.
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    /// RESERVATION-TOKEN.
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    /// CONNECTION-ID (RFC 6062).
    pub const CONNECTION_ID: u16 = 0x002A;
}

/// The TURN error codes (RFC 8656 §19, RFC 6062 §6.3, RFC 8489 §14.8).
pub mod error {
    /// Try Alternate.
    pub const TRY_ALTERNATE: u16 = 300;
    /// Bad Request.
    pub const BAD_REQUEST: u16 = 400;
    /// Unauthenticated (the long-term mechanism's challenge).
    pub const UNAUTHENTICATED: u16 = 401;
    /// Forbidden.
    pub const FORBIDDEN: u16 = 403;
    /// Unknown Attribute.
    pub const UNKNOWN_ATTRIBUTE: u16 = 420;
    /// Allocation Mismatch.
    pub const ALLOCATION_MISMATCH: u16 = 437;
    /// Stale Nonce.
    pub const STALE_NONCE: u16 = 438;
    /// Address Family not Supported.
    pub const ADDRESS_FAMILY_NOT_SUPPORTED: u16 = 440;
    /// Wrong Credentials.
    pub const WRONG_CREDENTIALS: u16 = 441;
    /// Unsupported Transport Protocol.
    pub const UNSUPPORTED_TRANSPORT_PROTOCOL: u16 = 442;
    /// Peer Address Family Mismatch.
    pub const PEER_ADDRESS_FAMILY_MISMATCH: u16 = 443;
    /// Connection Already Exists (RFC 6062).
    pub const CONNECTION_ALREADY_EXISTS: u16 = 446;
    /// Connection Timeout or Failure (RFC 6062).
    pub const CONNECTION_TIMEOUT_OR_FAILURE: u16 = 447;
    /// Allocation Quota Reached.
    pub const ALLOCATION_QUOTA_REACHED: u16 = 486;
    /// Server Error.
    pub const SERVER_ERROR: u16 = 500;
    /// Insufficient Capacity.
    pub const INSUFFICIENT_CAPACITY: u16 = 508;
}

/// REQUESTED-TRANSPORT's protocol number for UDP allocations.
pub const TRANSPORT_UDP: u8 = 17;
/// REQUESTED-TRANSPORT's protocol number for TCP allocations (RFC 6062).
pub const TRANSPORT_TCP: u8 = 6;

/// Longest REALM and NONCE values (RFC 8489 §14.9, §14.10: fewer than 128 characters, at most 763
/// bytes).
const MAX_TEXT: usize = 763;

/// A TURN attribute, decoded (borrowing from the message) or to be encoded.
///
/// Address-valued attributes hold the real (un-XORed) address.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TurnAttribute<'a> {
    /// CHANNEL-NUMBER (0x4000..=0x4FFF are valid channels; not checked here).
    ChannelNumber(u16),
    /// LIFETIME in seconds.
    Lifetime(u32),
    /// XOR-PEER-ADDRESS.
    XorPeerAddress(SocketAddr),
    /// DATA.
    Data(&'a [u8]),
    /// REALM (UTF-8).
    Realm(&'a str),
    /// NONCE (opaque bytes, echoed as received).
    Nonce(&'a [u8]),
    /// XOR-RELAYED-ADDRESS.
    XorRelayedAddress(SocketAddr),
    /// REQUESTED-ADDRESS-FAMILY: 1 (IPv4) or 2 (IPv6).
    RequestedAddressFamily(u8),
    /// EVEN-PORT: whether the next port is to be reserved too.
    EvenPort(bool),
    /// REQUESTED-TRANSPORT: an IP protocol number ([`TRANSPORT_UDP`], [`TRANSPORT_TCP`]).
    RequestedTransport(u8),
    /// DONT-FRAGMENT (no value).
    DontFragment,
    /// RESERVATION-TOKEN.
    ReservationToken([u8; 8]),
    /// CONNECTION-ID (RFC 6062).
    ConnectionId(u32),
}

impl<'a> TurnAttribute<'a> {
    /// The attribute's type code.
    pub fn code(&self) -> u16 {
        match self {
            TurnAttribute::ChannelNumber(_) => attr::CHANNEL_NUMBER,
            TurnAttribute::Lifetime(_) => attr::LIFETIME,
            TurnAttribute::XorPeerAddress(_) => attr::XOR_PEER_ADDRESS,
            TurnAttribute::Data(_) => attr::DATA,
            TurnAttribute::Realm(_) => attr::REALM,
            TurnAttribute::Nonce(_) => attr::NONCE,
            TurnAttribute::XorRelayedAddress(_) => attr::XOR_RELAYED_ADDRESS,
            TurnAttribute::RequestedAddressFamily(_) => attr::REQUESTED_ADDRESS_FAMILY,
            TurnAttribute::EvenPort(_) => attr::EVEN_PORT,
            TurnAttribute::RequestedTransport(_) => attr::REQUESTED_TRANSPORT,
            TurnAttribute::DontFragment => attr::DONT_FRAGMENT,
            TurnAttribute::ReservationToken(_) => attr::RESERVATION_TOKEN,
            TurnAttribute::ConnectionId(_) => attr::CONNECTION_ID,
        }
    }

    /// Parses a value of type `code` found in a message with `header`: `Ok(None)` if `code` is not
    /// a TURN attribute. Every length and family is checked against the attribute.
    pub fn parse(
        code: u16,
        value: &'a [u8],
        header: &Header,
    ) -> Result<Option<TurnAttribute<'a>>, AttrError> {
        let word = || -> Result<u32, AttrError> {
            let b: [u8; 4] = value.try_into().map_err(|_| AttrError::BadLength)?;
            Ok(u32::from_be_bytes(b))
        };
        let xor = || -> Result<SocketAddr, AttrError> {
            // Same format as XOR-MAPPED-ADDRESS (RFC 8656 §18.3, §18.5): the STUN codec parses it.
            match Attribute::parse(stun_attr::XOR_MAPPED_ADDRESS, value, header)? {
                Attribute::XorMappedAddress(a) => Ok(a),
                _ => Err(AttrError::BadLength),
            }
        };
        let text = || -> Result<&'a [u8], AttrError> {
            if value.len() > MAX_TEXT {
                Err(AttrError::TooLong)
            } else {
                Ok(value)
            }
        };
        Ok(Some(match code {
            attr::CHANNEL_NUMBER => TurnAttribute::ChannelNumber((word()? >> 16) as u16),
            attr::LIFETIME => TurnAttribute::Lifetime(word()?),
            attr::XOR_PEER_ADDRESS => TurnAttribute::XorPeerAddress(xor()?),
            attr::DATA => TurnAttribute::Data(value),
            attr::REALM => {
                TurnAttribute::Realm(core::str::from_utf8(text()?).map_err(|_| AttrError::BadUtf8)?)
            }
            attr::NONCE => TurnAttribute::Nonce(text()?),
            attr::XOR_RELAYED_ADDRESS => TurnAttribute::XorRelayedAddress(xor()?),
            attr::REQUESTED_ADDRESS_FAMILY => match word()? >> 24 {
                f @ (1 | 2) => TurnAttribute::RequestedAddressFamily(f as u8),
                _ => return Err(AttrError::BadFamily),
            },
            attr::EVEN_PORT => match *value {
                [flags] => TurnAttribute::EvenPort(flags & 0x80 != 0),
                _ => return Err(AttrError::BadLength),
            },
            attr::REQUESTED_TRANSPORT => TurnAttribute::RequestedTransport((word()? >> 24) as u8),
            attr::DONT_FRAGMENT => {
                if value.is_empty() {
                    TurnAttribute::DontFragment
                } else {
                    return Err(AttrError::BadLength);
                }
            }
            attr::RESERVATION_TOKEN => {
                TurnAttribute::ReservationToken(value.try_into().map_err(|_| AttrError::BadLength)?)
            }
            attr::CONNECTION_ID => TurnAttribute::ConnectionId(word()?),
            _ => return Ok(None),
        }))
    }
}

/// The first TURN attribute of type `code` in `msg` that a receiver may read: attributes after
/// MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 are ignored (RFC 8489 §14.5, §14.6).
/// `Ok(None)` if there is none (or `code` is not a TURN attribute); `Err` if its value is invalid.
pub fn find<'a>(msg: &Message<'a>, code: u16) -> Result<Option<TurnAttribute<'a>>, AttrError> {
    for raw in msg.attributes() {
        if raw.code == stun_attr::MESSAGE_INTEGRITY || raw.code == attr::MESSAGE_INTEGRITY_SHA256 {
            break;
        }
        if raw.code == code {
            return TurnAttribute::parse(raw.code, raw.value, msg.header());
        }
    }
    Ok(None)
}

/// Writing TURN attributes with the STUN codec's [`MessageWriter`].
pub trait TurnWriter {
    /// Appends `attribute` to a message whose header is `header` (the XOR attributes need its
    /// cookie and transaction id).
    fn add_turn(
        &mut self,
        header: &Header,
        attribute: &TurnAttribute<'_>,
    ) -> Result<(), EncodeError>;
}

impl TurnWriter for MessageWriter<'_> {
    fn add_turn(
        &mut self,
        header: &Header,
        attribute: &TurnAttribute<'_>,
    ) -> Result<(), EncodeError> {
        let kind = attribute.code();
        let mut scratch = [0u8; 20];
        let value: &[u8] = match *attribute {
            TurnAttribute::ChannelNumber(n) => {
                put(&mut scratch, &(u32::from(n) << 16).to_be_bytes())
            }
            TurnAttribute::Lifetime(s) => put(&mut scratch, &s.to_be_bytes()),
            TurnAttribute::XorPeerAddress(a) | TurnAttribute::XorRelayedAddress(a) => {
                xor_address(&mut scratch, header, a)
            }
            TurnAttribute::Data(d) => d,
            TurnAttribute::Realm(r) => {
                if r.len() > MAX_TEXT {
                    return Err(EncodeError::InvalidValue);
                }
                r.as_bytes()
            }
            TurnAttribute::Nonce(n) => {
                if n.len() > MAX_TEXT {
                    return Err(EncodeError::InvalidValue);
                }
                n
            }
            TurnAttribute::RequestedAddressFamily(f) => put(&mut scratch, &[f, 0, 0, 0]),
            TurnAttribute::EvenPort(r) => put(&mut scratch, &[if r { 0x80 } else { 0 }]),
            TurnAttribute::RequestedTransport(p) => put(&mut scratch, &[p, 0, 0, 0]),
            TurnAttribute::DontFragment => &[],
            TurnAttribute::ReservationToken(t) => put(&mut scratch, &t),
            TurnAttribute::ConnectionId(id) => put(&mut scratch, &id.to_be_bytes()),
        };
        self.add(&Attribute::Other { kind, value })
    }
}

/// Copies `bytes` (at most 20) to the start of `scratch` and returns that part.
fn put<'s>(scratch: &'s mut [u8; 20], bytes: &[u8]) -> &'s [u8] {
    let n = bytes.len().min(scratch.len());
    if let (Some(dst), Some(src)) = (scratch.get_mut(..n), bytes.get(..n)) {
        dst.copy_from_slice(src);
    }
    scratch.get(..n).unwrap_or_default()
}

/// Writes `addr` XORed as in XOR-MAPPED-ADDRESS (RFC 8489 §14.2) into `scratch`.
fn xor_address<'s>(scratch: &'s mut [u8; 20], header: &Header, addr: SocketAddr) -> &'s [u8] {
    let cookie = header.cookie;
    let [c0, c1, _, _] = cookie;
    let port = addr.port() ^ u16::from_be_bytes([c0, c1]);
    let [p0, p1] = port.to_be_bytes();
    match addr {
        SocketAddr::V4(a) => {
            let ip = a.ip().to_bits() ^ u32::from_be_bytes(cookie);
            let [a0, a1, a2, a3] = ip.to_be_bytes();
            put(scratch, &[0, 1, p0, p1, a0, a1, a2, a3])
        }
        SocketAddr::V6(a) => {
            let mut key = [0u8; 16];
            let (c, t) = key.split_at_mut(4);
            c.copy_from_slice(&cookie);
            t.copy_from_slice(header.transaction_id.as_bytes());
            let ip = a.ip().to_bits() ^ u128::from_be_bytes(key);
            if let Some((head, tail)) = scratch.split_first_chunk_mut::<4>() {
                *head = [0, 2, p0, p1];
                tail.copy_from_slice(&ip.to_be_bytes());
            }
            scratch.as_slice()
        }
    }
}

/// The long-term credential key (RFC 8489 §9.2.2): MD5(username ":" realm ":" password), used as
/// the MESSAGE-INTEGRITY key ([`MessageWriter::add_message_integrity`],
/// [`Message::verify_integrity`]).
///
/// No SASLprep / OpaqueString processing is applied: pass the processed strings (they are the same
/// as the input for ASCII credentials without control characters, which is what coturn's
/// `--user` and REST API credentials are).
pub fn long_term_key(username: &[u8], realm: &[u8], password: &[u8]) -> [u8; 16] {
    use md5::Digest;
    let mut h = md5::Md5::new();
    h.update(username);
    h.update(b":");
    h.update(realm);
    h.update(b":");
    h.update(password);
    h.finalize().into()
}

/// TURN REST API credentials (draft-uberti-behave-turn-rest, coturn's `--use-auth-secret`): the
/// username is `"<expiry>:<user>"` (expiry in unix seconds) and the password is
/// base64(HMAC-SHA1(secret, username)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestCredentials {
    /// `"<expiry>:<user>"`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub password: String,
}

impl RestCredentials {
    /// Credentials for `user` valid until `expiry_unix` (seconds since the unix epoch; the caller
    /// computes it from its injected wall clock plus the lifetime it wants).
    pub fn new(secret: &[u8], user: &str, expiry_unix: u64) -> RestCredentials {
        let username = format!("{expiry_unix}:{user}");
        RestCredentials {
            password: rest_password(secret, &username),
            username,
        }
    }
}

/// The TURN REST API password of `username` under `secret`: base64(HMAC-SHA1(secret, username)),
/// what a server (coturn's `--use-auth-secret`) checks a REST username against.
pub fn rest_password(secret: &[u8], username: &str) -> String {
    use base64ct::Encoding;
    // HMAC accepts keys of any length, so this never fails; an empty MAC would only make the
    // server answer 401.
    let mac = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(secret)
        .map(|mut m| {
            m.update(username.as_bytes());
            m.finalize().into_bytes().to_vec()
        })
        .unwrap_or_default();
    base64ct::Base64::encode_string(&mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pd_proto::stun::{Class, TransactionId};

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    /// RFC 5769 §2.4, "Sample Request with Long-Term Authentication".
    const RFC5769_LONG_TERM: &str = "
        00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
        00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
        00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
        00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
        00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66";
    const LT_USERNAME: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
    const LT_PASSWORD: &str = "TheMatrIX";

    #[test]
    fn rfc5769_long_term_vector_verifies_and_decodes() {
        let bytes = hex(RFC5769_LONG_TERM);
        let msg = Message::decode(&bytes).unwrap();
        assert_eq!(msg.class(), Class::Request);
        assert_eq!(
            find(&msg, attr::REALM),
            Ok(Some(TurnAttribute::Realm("example.org")))
        );
        assert_eq!(
            find(&msg, attr::NONCE),
            Ok(Some(TurnAttribute::Nonce(b"f//499k954d6OL34oL9FSTvy64sA")))
        );
        let key = long_term_key(
            LT_USERNAME.as_bytes(),
            b"example.org",
            LT_PASSWORD.as_bytes(),
        );
        assert_eq!(msg.verify_integrity(&key), Ok(()));
        let wrong = long_term_key(LT_USERNAME.as_bytes(), b"example.org", b"TheMatrix");
        assert!(msg.verify_integrity(&wrong).is_err());
    }

    #[test]
    fn rfc5769_long_term_vector_is_reproduced_byte_for_byte() {
        let expected = hex(RFC5769_LONG_TERM);
        let tid: [u8; 12] = expected[8..20].try_into().unwrap();
        let header = Header::new(Class::Request, Method::BINDING, TransactionId::new(tid));
        let mut buf = [0u8; 256];
        let mut w = MessageWriter::new(&mut buf, header).unwrap();
        w.add(&Attribute::Username(LT_USERNAME.as_bytes())).unwrap();
        w.add_turn(
            &header,
            &TurnAttribute::Nonce(b"f//499k954d6OL34oL9FSTvy64sA"),
        )
        .unwrap();
        w.add_turn(&header, &TurnAttribute::Realm("example.org"))
            .unwrap();
        let key = long_term_key(
            LT_USERNAME.as_bytes(),
            b"example.org",
            LT_PASSWORD.as_bytes(),
        );
        w.add_message_integrity(&key).unwrap();
        let n = w.finish();
        assert_eq!(&buf[..n], &expected[..]);
    }

    #[test]
    fn every_turn_attribute_round_trips() {
        let header = Header::new(
            Class::Request,
            method::ALLOCATE,
            TransactionId::new([0xA5; 12]),
        );
        let all = [
            TurnAttribute::ChannelNumber(0x4001),
            TurnAttribute::Lifetime(600),
            TurnAttribute::XorPeerAddress("192.0.2.7:40000".parse().unwrap()),
            TurnAttribute::Data(b"hello relay"),
            TurnAttribute::Realm("turn.example"),
            TurnAttribute::Nonce(b"abcdef0123"),
            TurnAttribute::XorRelayedAddress("[2001:db8::17]:3478".parse().unwrap()),
            TurnAttribute::RequestedAddressFamily(2),
            TurnAttribute::EvenPort(true),
            TurnAttribute::RequestedTransport(TRANSPORT_TCP),
            TurnAttribute::DontFragment,
            TurnAttribute::ReservationToken([1, 2, 3, 4, 5, 6, 7, 8]),
            TurnAttribute::ConnectionId(0xDEAD_BEEF),
        ];
        let mut buf = [0u8; 512];
        let mut w = MessageWriter::new(&mut buf, header).unwrap();
        for a in &all {
            w.add_turn(&header, a).unwrap();
        }
        w.add_fingerprint().unwrap();
        let n = w.finish();
        let msg = Message::decode(&buf[..n]).unwrap();
        for a in &all {
            assert_eq!(find(&msg, a.code()), Ok(Some(*a)), "{a:?}");
        }
    }

    #[test]
    fn xor_peer_address_matches_the_stun_codecs_xor_mapped_address() {
        // The RFC 5769 §2.2 / §2.3 addresses, written as XOR-PEER-ADDRESS, must have the same value
        // bytes as the STUN codec's XOR-MAPPED-ADDRESS.
        let header = Header::new(
            Class::Success,
            Method::BINDING,
            TransactionId::new([0x3C; 12]),
        );
        for addr in [
            "192.0.2.1:32853",
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut a = [0u8; 64];
            let mut w = MessageWriter::new(&mut a, header).unwrap();
            w.add(&Attribute::XorMappedAddress(addr)).unwrap();
            let na = w.finish();
            let mut b = [0u8; 64];
            let mut w = MessageWriter::new(&mut b, header).unwrap();
            w.add_turn(&header, &TurnAttribute::XorPeerAddress(addr))
                .unwrap();
            let nb = w.finish();
            assert_eq!(na, nb);
            assert_eq!(&a[22..na], &b[22..nb]);
        }
    }

    #[test]
    fn bad_values_are_typed_errors_not_panics() {
        let header = Header::new(
            Class::Success,
            method::ALLOCATE,
            TransactionId::new([0; 12]),
        );
        let cases: [(u16, &[u8], AttrError); 8] = [
            (attr::LIFETIME, &[0, 0, 1], AttrError::BadLength),
            (
                attr::XOR_RELAYED_ADDRESS,
                &[0, 1, 0, 0, 0, 0, 0],
                AttrError::BadLength,
            ),
            (
                attr::XOR_PEER_ADDRESS,
                &[0, 3, 0, 0, 0, 0, 0, 0],
                AttrError::BadFamily,
            ),
            (attr::REALM, &[0xFF, 0xFE], AttrError::BadUtf8),
            (
                attr::REQUESTED_ADDRESS_FAMILY,
                &[3, 0, 0, 0],
                AttrError::BadFamily,
            ),
            (attr::DONT_FRAGMENT, &[0], AttrError::BadLength),
            (attr::CONNECTION_ID, &[0; 5], AttrError::BadLength),
            (attr::NONCE, &[b'a'; 764], AttrError::TooLong),
        ];
        for (code, value, err) in cases {
            assert_eq!(
                TurnAttribute::parse(code, value, &header),
                Err(err),
                "{code:#x}"
            );
        }
        assert_eq!(TurnAttribute::parse(0x8022, b"x", &header), Ok(None));
    }

    #[test]
    fn attributes_after_message_integrity_are_ignored() {
        let header = Header::new(
            Class::Success,
            method::ALLOCATE,
            TransactionId::new([2; 12]),
        );
        let mut buf = [0u8; 128];
        let mut w = MessageWriter::new(&mut buf, header).unwrap();
        w.add_message_integrity(b"key").unwrap();
        w.add_turn(&header, &TurnAttribute::Lifetime(5)).unwrap();
        let n = w.finish();
        let msg = Message::decode(&buf[..n]).unwrap();
        assert_eq!(find(&msg, attr::LIFETIME), Ok(None));
    }

    #[test]
    fn methods_have_their_rfc_numbers() {
        let numbers = [
            (method::ALLOCATE, 3),
            (method::REFRESH, 4),
            (method::SEND, 6),
            (method::DATA, 7),
            (method::CREATE_PERMISSION, 8),
            (method::CHANNEL_BIND, 9),
            (method::CONNECT, 10),
            (method::CONNECTION_BIND, 11),
            (method::CONNECTION_ATTEMPT, 12),
        ];
        for (m, n) in numbers {
            assert_eq!(m.number(), n);
        }
    }

    #[test]
    fn rest_credentials_match_an_independent_hmac() {
        // Computed with Python: base64.b64encode(hmac.new(b"north", b"1700000000:alice",
        // hashlib.sha1).digest()).
        let c = RestCredentials::new(b"north", "alice", 1_700_000_000);
        assert_eq!(c.username, "1700000000:alice");
        assert_eq!(c.password, REST_EXPECTED);
    }

    const REST_EXPECTED: &str = "Cd/49soE35ICqcJF/bCTn8Z4OyE=";

    #[test]
    fn long_term_key_is_md5_of_the_triple() {
        // MD5("user:realm:pass") computed with Python's hashlib.
        assert_eq!(long_term_key(b"user", b"realm", b"pass"), MD5_EXPECTED);
    }

    const MD5_EXPECTED: [u8; 16] = [
        0x84, 0x93, 0xfb, 0xc5, 0x3b, 0xa5, 0x82, 0xfb, 0x4c, 0x04, 0x4c, 0x45, 0x6b, 0xdc, 0x40,
        0xeb,
    ];
}

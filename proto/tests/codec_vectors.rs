//! Known-answer tests for the STUN codec: the RFC 5769 test vectors, a real RFC 3489 ("legacy")
//! response as p2pd receives it, and the malformed inputs that crashed p2pd.
// Test code: the package's strict lints (Cargo.toml `[lints]`) guard its library code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use core::net::SocketAddr;

use hmac::{Hmac, KeyInit, Mac};
use p2pd_proto::stun::{
    attr, AttrError, Attribute, Class, DecodeError, Header, IntegrityError, Message, MessageWriter,
    Method, TransactionId, FINGERPRINT_XOR,
};
use sha1::Sha1;

const PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";
const TXID: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];

/// RFC 5769 §2.1: sample request (SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME, MI, FINGERPRINT).
/// USERNAME "evtj:h6vY" is padded with three 0x20 bytes (offsets 73..76).
const RFC5769_REQUEST: [u8; 108] = [
    0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73,
    0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff,
    0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09,
    0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14,
    0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49,
    0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
];
const RFC5769_REQUEST_PADDING: &[usize] = &[73, 74, 75];

/// RFC 5769 §2.2: IPv4 response. SOFTWARE "test vector" is padded with one 0x20 byte (offset 35).
const RFC5769_IPV4_RESPONSE: [u8; 80] = [
    0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43,
    0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9,
    0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
];

/// RFC 5769 §2.3: IPv6 response. Same SOFTWARE padding (offset 35).
const RFC5769_IPV6_RESPONSE: [u8; 92] = [
    0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa,
    0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9, 0x00, 0x08, 0x00, 0x14,
    0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9, 0x7c, 0x82, 0x92, 0xc2, 0x75,
    0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb, 0x0b, 0x4c,
];
const RFC5769_RESPONSE_PADDING: &[usize] = &[35];

/// An RFC 3489 Binding response received by p2pd: cookie slot "!4Q#" (no magic cookie),
/// MAPPED-ADDRESS, SOURCE-ADDRESS, CHANGED-ADDRESS and a pre-standard 0x8020 XOR-MAPPED-ADDRESS.
const LEGACY_RESPONSE_HEX: &str = "0101 0030 21345123 95b22fb840a5b9995be9dabb \
    0001 0008 0001 e126 9fc4c1b7 \
    0004 0008 0001 0d96 5863d3d8 \
    0005 0008 0001 0d97 5863d3d3 \
    8020 0008 0001 c012 bef09094";

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn decoded_attributes<'a>(msg: &Message<'a>) -> Vec<Attribute<'a>> {
    msg.attributes()
        .map(|raw| Attribute::parse(raw.code, raw.value, msg.header()).unwrap())
        .collect()
}

/// MESSAGE-INTEGRITY per RFC 5389 §15.4, computed independently of the codec: HMAC-SHA1 over the
/// message up to MI, with the header length set to end just after MI.
fn reference_integrity(message: &[u8], mi_offset: usize) -> [u8; 20] {
    let mut covered = message[..mi_offset].to_vec();
    let len = u16::try_from(mi_offset + 24 - 20).unwrap();
    covered[2..4].copy_from_slice(&len.to_be_bytes());
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(PASSWORD).unwrap();
    mac.update(&covered);
    mac.finalize().into_bytes().into()
}

/// FINGERPRINT per RFC 5389 §15.5, computed independently of the codec (length already counts it).
fn reference_fingerprint(message: &[u8], fp_offset: usize) -> u32 {
    crc32fast::hash(&message[..fp_offset]) ^ 0x5354_554E
}

/// Re-encodes every attribute of `msg` with our writer, computing MESSAGE-INTEGRITY and FINGERPRINT
/// afresh (zero padding).
fn reencode(msg: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    let mut w = MessageWriter::new(&mut buf, *msg.header()).unwrap();
    for a in decoded_attributes(msg) {
        match a {
            Attribute::MessageIntegrity(_) => w.add_message_integrity(PASSWORD).unwrap(),
            Attribute::Fingerprint(_) => w.add_fingerprint().unwrap(),
            other => w.add(&other).unwrap(),
        }
    }
    let len = w.finish();
    buf.truncate(len);
    buf
}

/// The vectors pad with 0x20 where we pad with zeros, and MESSAGE-INTEGRITY and FINGERPRINT cover
/// the padding, so our re-encoding cannot reproduce the vector's MI and FINGERPRINT values. What we
/// compare:
/// 1. every byte before MESSAGE-INTEGRITY, after putting the vector's 0x20 padding bytes into ours;
/// 2. the MI and FINGERPRINT headers and positions (same length, same offsets);
/// 3. our MI and FINGERPRINT values against an independent HMAC-SHA1 and CRC-32 of our own bytes;
/// 4. and, where the vector has no padding at all, every byte.
fn assert_reencodes(vector: &[u8], padding: &[usize]) {
    let msg = Message::decode(vector).unwrap();
    let mut ours = reencode(&msg);
    assert_eq!(ours.len(), vector.len(), "same length");

    let mi = msg
        .attributes()
        .find(|a| a.code == attr::MESSAGE_INTEGRITY)
        .unwrap()
        .offset;
    let fp = msg
        .attributes()
        .find(|a| a.code == attr::FINGERPRINT)
        .unwrap()
        .offset;
    assert_eq!(fp, mi + 24);

    assert_eq!(
        ours[mi + 4..mi + 24],
        reference_integrity(&ours, mi),
        "our MI is the RFC 5389 HMAC of our bytes"
    );
    assert_eq!(
        u32::from_be_bytes(ours[fp + 4..fp + 8].try_into().unwrap()),
        reference_fingerprint(&ours, fp),
        "our FINGERPRINT is the RFC 5389 CRC of our bytes"
    );
    let decoded = Message::decode(&ours).unwrap();
    assert_eq!(decoded.verify_integrity(PASSWORD), Ok(()));

    for &i in padding {
        assert_eq!(ours[i], 0, "we pad with zeros");
        ours[i] = vector[i];
    }
    assert_eq!(
        ours[..mi + 4],
        vector[..mi + 4],
        "bytes before the MI value"
    );
    assert_eq!(ours[fp..fp + 4], vector[fp..fp + 4], "FINGERPRINT header");
    if padding.is_empty() {
        assert_eq!(ours, vector);
    }
}

#[test]
fn rfc5769_request_decodes() {
    let msg = Message::decode(&RFC5769_REQUEST).unwrap();
    assert_eq!(msg.class(), Class::Request);
    assert_eq!(msg.method(), Method::BINDING);
    assert_eq!(msg.transaction_id().as_bytes(), &TXID);
    assert!(!msg.is_legacy());
    assert!(msg.has_fingerprint());
    assert_eq!(msg.software(), Some("STUN test client"));
    assert_eq!(msg.unknown_comprehension_required(), Some((0x0024, 1)));
    let mut unknown = [0u16; 4];
    assert_eq!(msg.collect_unknown(&mut unknown), 1);
    assert_eq!(unknown[0], 0x0024);

    assert_eq!(
        decoded_attributes(&msg),
        vec![
            Attribute::Software("STUN test client"),
            Attribute::Other {
                kind: 0x0024,
                value: &[0x6e, 0x00, 0x01, 0xff]
            },
            Attribute::Other {
                kind: 0x8029,
                value: &[0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36]
            },
            Attribute::Username(b"evtj:h6vY"),
            Attribute::MessageIntegrity(RFC5769_REQUEST[80..100].try_into().unwrap()),
            Attribute::Fingerprint(0xe57a_3bcf),
        ]
    );
}

#[test]
fn rfc5769_ipv4_response_decodes() {
    let msg = Message::decode(&RFC5769_IPV4_RESPONSE).unwrap();
    assert_eq!(msg.class(), Class::Success);
    assert_eq!(msg.method(), Method::BINDING);
    assert_eq!(msg.transaction_id().as_bytes(), &TXID);
    assert_eq!(msg.software(), Some("test vector"));
    assert_eq!(msg.xor_mapped_address(), Some(addr("192.0.2.1:32853")));
    assert_eq!(msg.mapped_address(), Some(addr("192.0.2.1:32853")));
    assert_eq!(msg.other_address(), None);
    assert_eq!(msg.response_origin(), None);
    assert_eq!(msg.error_code(), None);
    assert_eq!(msg.unknown_comprehension_required(), None);
    assert!(msg.has_fingerprint());
}

#[test]
fn rfc5769_ipv6_response_decodes() {
    let msg = Message::decode(&RFC5769_IPV6_RESPONSE).unwrap();
    assert_eq!(msg.class(), Class::Success);
    assert_eq!(msg.transaction_id().as_bytes(), &TXID);
    assert_eq!(msg.software(), Some("test vector"));
    assert_eq!(
        msg.xor_mapped_address(),
        Some(addr("[2001:db8:1234:5678:11:2233:4455:6677]:32853"))
    );
}

#[test]
fn rfc5769_integrity_verifies_with_the_password_only() {
    for vector in [
        &RFC5769_REQUEST[..],
        &RFC5769_IPV4_RESPONSE[..],
        &RFC5769_IPV6_RESPONSE[..],
    ] {
        let msg = Message::decode(vector).unwrap();
        assert_eq!(msg.verify_integrity(PASSWORD), Ok(()));
        assert_eq!(
            msg.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBT"),
            Err(IntegrityError::Mismatch)
        );
        assert_eq!(msg.verify_integrity(b""), Err(IntegrityError::Mismatch));
    }
}

#[test]
fn integrity_is_missing_without_the_attribute() {
    let mut buf = [0u8; 64];
    let header = Header::new(Class::Request, Method::BINDING, TransactionId::new(TXID));
    let mut w = MessageWriter::new(&mut buf, header).unwrap();
    w.add_fingerprint().unwrap();
    let len = w.finish();
    let msg = Message::decode(&buf[..len]).unwrap();
    assert_eq!(msg.verify_integrity(PASSWORD), Err(IntegrityError::Missing));
}

#[test]
fn rfc5769_fingerprint_corruption_is_detected() {
    for vector in [
        &RFC5769_REQUEST[..],
        &RFC5769_IPV4_RESPONSE[..],
        &RFC5769_IPV6_RESPONSE[..],
    ] {
        // Any flipped bit in the attributes (past the header, which framing checks catch first) or
        // in the CRC itself is a FINGERPRINT mismatch, or an invalid attribute found before it.
        for byte in 20..vector.len() {
            for bit in 0..8 {
                let mut bad = vector.to_vec();
                bad[byte] ^= 1 << bit;
                // A flipped attribute length can swallow MI and FINGERPRINT and leave a valid
                // message: attribute headers are covered by the framing tests below instead.
                if !is_attribute_header(vector, byte) {
                    let err = Message::decode(&bad).unwrap_err();
                    assert!(
                        matches!(
                            err,
                            DecodeError::FingerprintMismatch | DecodeError::BadAttribute { .. }
                        ),
                        "byte {byte} bit {bit}: {err:?}"
                    );
                }
            }
        }
        let mut bad = vector.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(
            Message::decode(&bad).unwrap_err(),
            DecodeError::FingerprintMismatch
        );
    }
}

fn is_attribute_header(vector: &[u8], byte: usize) -> bool {
    Message::decode(vector)
        .unwrap()
        .attributes()
        .any(|a| (a.offset..a.offset + 4).contains(&byte))
}

#[test]
fn rfc5769_vectors_reencode() {
    assert_reencodes(&RFC5769_REQUEST, RFC5769_REQUEST_PADDING);
    assert_reencodes(&RFC5769_IPV4_RESPONSE, RFC5769_RESPONSE_PADDING);
    assert_reencodes(&RFC5769_IPV6_RESPONSE, RFC5769_RESPONSE_PADDING);
}

#[test]
fn rfc5769_vectors_with_zero_padding_reencode_byte_for_byte() {
    // Rewrite each vector with zero padding and a valid MI and FINGERPRINT (computed independently),
    // then the whole re-encoding must be identical.
    for (vector, padding) in [
        (&RFC5769_REQUEST[..], RFC5769_REQUEST_PADDING),
        (&RFC5769_IPV4_RESPONSE[..], RFC5769_RESPONSE_PADDING),
        (&RFC5769_IPV6_RESPONSE[..], RFC5769_RESPONSE_PADDING),
    ] {
        let mut zeroed = vector.to_vec();
        for &i in padding {
            zeroed[i] = 0;
        }
        let mi = zeroed.len() - 32;
        let mac = reference_integrity(&zeroed, mi);
        zeroed[mi + 4..mi + 24].copy_from_slice(&mac);
        let fp = zeroed.len() - 8;
        let crc = reference_fingerprint(&zeroed, fp);
        zeroed[fp + 4..].copy_from_slice(&crc.to_be_bytes());

        let msg = Message::decode(&zeroed).unwrap();
        assert_eq!(msg.verify_integrity(PASSWORD), Ok(()));
        assert_eq!(reencode(&msg), zeroed);
    }
}

#[test]
fn fingerprint_xor_constant_is_stun() {
    assert_eq!(FINGERPRINT_XOR.to_be_bytes(), *b"STUN");
}

#[test]
fn rfc3489_legacy_response_from_p2pd() {
    let bytes = hex(LEGACY_RESPONSE_HEX);
    assert_eq!(bytes.len(), 68);
    let msg = Message::decode(&bytes).unwrap();
    assert!(msg.is_legacy());
    assert!(msg.header().is_legacy());
    assert_eq!(msg.header().cookie, *b"!4Q#");
    assert_eq!(msg.class(), Class::Success);
    assert_eq!(msg.method(), Method::BINDING);
    assert_eq!(
        msg.transaction_id().as_bytes(),
        &hex("95b22fb840a5b9995be9dabb")[..]
    );
    assert_eq!(msg.xor_mapped_address(), None);
    assert_eq!(msg.mapped_address(), Some(addr("159.196.193.183:57638")));
    assert_eq!(msg.other_address(), Some(addr("88.99.211.211:3479")));
    assert_eq!(msg.response_origin(), Some(addr("88.99.211.216:3478")));
    assert!(!msg.has_fingerprint());
    assert_eq!(
        decoded_attributes(&msg),
        vec![
            Attribute::MappedAddress(addr("159.196.193.183:57638")),
            Attribute::SourceAddress(addr("88.99.211.216:3478")),
            Attribute::ChangedAddress(addr("88.99.211.211:3479")),
            // XORed with the legacy cookie slot, as the server did.
            Attribute::XorMappedAddressDraft(addr("159.196.193.183:57638")),
        ]
    );

    // No padding, no MI or FINGERPRINT: the re-encoding is the same bytes.
    let mut buf = [0u8; 68];
    let mut w = MessageWriter::new(&mut buf, *msg.header()).unwrap();
    for a in decoded_attributes(&msg) {
        w.add(&a).unwrap();
    }
    assert_eq!(w.finish(), 68);
    assert_eq!(buf[..], bytes[..]);
}

#[test]
fn mapped_address_prefers_xor_then_plain_then_draft() {
    let tid = TransactionId::new([9u8; 12]);
    let encode = |attrs: &[Attribute<'_>]| {
        let mut buf = [0u8; 128];
        let mut w = MessageWriter::new(&mut buf, Header::new(Class::Success, Method::BINDING, tid))
            .unwrap();
        for a in attrs {
            w.add(a).unwrap();
        }
        let len = w.finish();
        buf[..len].to_vec()
    };
    let (x, m, d) = (addr("1.1.1.1:1"), addr("2.2.2.2:2"), addr("3.3.3.3:3"));
    let all = encode(&[
        Attribute::XorMappedAddressDraft(d),
        Attribute::MappedAddress(m),
        Attribute::XorMappedAddress(x),
    ]);
    assert_eq!(Message::decode(&all).unwrap().mapped_address(), Some(x));
    let two = encode(&[
        Attribute::XorMappedAddressDraft(d),
        Attribute::MappedAddress(m),
    ]);
    assert_eq!(Message::decode(&two).unwrap().mapped_address(), Some(m));
    let one = encode(&[Attribute::XorMappedAddressDraft(d)]);
    assert_eq!(Message::decode(&one).unwrap().mapped_address(), Some(d));
}

// ---- Malformed inputs that crashed p2pd: each is a typed error, never a panic. ----

/// A 20-byte Binding success header with `body` and a length field of `len`.
fn with_body(len: u16, body: &[u8]) -> Vec<u8> {
    let mut m = hex("0101 0000 2112a442 000102030405060708090a0b");
    m[2..4].copy_from_slice(&len.to_be_bytes());
    m.extend_from_slice(body);
    m
}

#[test]
fn length_field_larger_than_the_buffer() {
    let m = with_body(12, &hex("0001 0008 0001 e126 9fc4c1b7")[..8]);
    assert_eq!(
        Message::decode(&m).unwrap_err(),
        DecodeError::LengthMismatch
    );
    assert_eq!(
        Message::decode_prefix(&m).unwrap_err(),
        DecodeError::LengthMismatch
    );
    // The legacy response with its length raised by 4.
    let mut legacy = hex(LEGACY_RESPONSE_HEX);
    legacy[3] += 4;
    assert_eq!(
        Message::decode(&legacy).unwrap_err(),
        DecodeError::LengthMismatch
    );
    // The maximum length with no body at all.
    let m = with_body(0xFFFC, &[]);
    assert_eq!(
        Message::decode(&m).unwrap_err(),
        DecodeError::LengthMismatch
    );
}

#[test]
fn attribute_running_past_the_end() {
    // Attribute claims 8 bytes, message has 4 after its header.
    let m = with_body(8, &hex("0001 0008 0001 e126"));
    assert_eq!(
        Message::decode(&m).unwrap_err(),
        DecodeError::AttributeTruncated
    );
    // Claims 0xFFFF bytes.
    let m = with_body(8, &hex("8022 ffff 41414141"));
    assert_eq!(
        Message::decode(&m).unwrap_err(),
        DecodeError::AttributeTruncated
    );
    // Value fits but its padding does not.
    let m = with_body(8, &hex("8022 0005 41414141"));
    assert_eq!(
        Message::decode(&m).unwrap_err(),
        DecodeError::AttributeTruncated
    );
}

#[test]
fn mapped_address_with_a_short_value() {
    for (body, error) in [
        ("0001 0004 0001 e126", AttrError::BadLength),
        ("0001 0000", AttrError::BadLength),
        ("0001 0008 0002 e126 9fc4c1b7", AttrError::BadLength), // IPv6 family, IPv4 length
        ("0001 0008 0003 e126 9fc4c1b7", AttrError::BadFamily),
        ("0001 0002 0002 0000", AttrError::BadLength),
        ("0001 0001 00 000000", AttrError::BadLength),
        (
            "0020 0014 0001 e126 9fc4c1b7 00000000 00000000 00000000",
            AttrError::BadLength,
        ),
        ("0020 0004 0001 e126", AttrError::BadLength),
        ("0005 0000", AttrError::BadLength),
    ] {
        let b = hex(body);
        let code = u16::from_be_bytes([b[0], b[1]]);
        let m = with_body(u16::try_from(b.len()).unwrap(), &b);
        assert_eq!(
            Message::decode(&m).unwrap_err(),
            DecodeError::BadAttribute { code, error },
            "{body}"
        );
    }
}

#[test]
fn trailing_body_bytes() {
    let legacy = hex(LEGACY_RESPONSE_HEX);
    // Two bytes after the message: the header length no longer matches the datagram.
    let mut extra = legacy.clone();
    extra.extend_from_slice(&[0, 0]);
    assert_eq!(
        Message::decode(&extra).unwrap_err(),
        DecodeError::LengthMismatch
    );
    // ... but a stream reader can take the message off the front.
    let (msg, used) = Message::decode_prefix(&extra).unwrap();
    assert_eq!(used, legacy.len());
    assert_eq!(msg.mapped_address(), Some(addr("159.196.193.183:57638")));
    // Two body bytes counted in the length: not a multiple of four.
    let mut counted = extra.clone();
    counted[3] += 2;
    assert_eq!(
        Message::decode(&counted).unwrap_err(),
        DecodeError::UnalignedLength
    );
    // Two body bytes that are too few for an attribute header.
    let m = with_body(2, &[0, 1]);
    assert_eq!(
        Message::decode(&m).unwrap_err(),
        DecodeError::UnalignedLength
    );
}

#[test]
fn buffers_shorter_than_a_header() {
    let full = hex(LEGACY_RESPONSE_HEX);
    for n in 0..20 {
        assert_eq!(
            Message::decode(&full[..n]).unwrap_err(),
            DecodeError::TooShort
        );
        assert_eq!(
            Message::decode_prefix(&full[..n]).unwrap_err(),
            DecodeError::TooShort
        );
        assert_eq!(
            Message::needed(&full[..n]).unwrap_err(),
            DecodeError::TooShort
        );
        assert!(!p2pd_proto::stun::is_stun(&full[..n]));
    }
}

#[test]
fn top_bits_set_is_not_stun() {
    for top in [0x40u8, 0x80, 0xC0] {
        let mut m = hex(LEGACY_RESPONSE_HEX);
        m[0] |= top;
        assert_eq!(Message::decode(&m).unwrap_err(), DecodeError::NotStun);
        assert!(!p2pd_proto::stun::is_stun(&m));
    }
    // An HTTP request on the same port.
    let http = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n";
    assert_eq!(Message::decode(http).unwrap_err(), DecodeError::NotStun);
}

#[test]
fn needed_reports_the_full_size_from_the_header_alone() {
    let full = hex(LEGACY_RESPONSE_HEX);
    for n in 20..=full.len() {
        assert_eq!(Message::needed(&full[..n]), Ok(full.len()), "{n} bytes");
        assert!(p2pd_proto::stun::is_stun(&full[..n]));
        if n < full.len() {
            assert_eq!(
                Message::decode_prefix(&full[..n]).unwrap_err(),
                DecodeError::LengthMismatch
            );
        }
    }
}

#[test]
fn attribute_after_fingerprint_is_rejected() {
    let mut buf = [0u8; 64];
    let mut w = MessageWriter::new(
        &mut buf,
        Header::new(Class::Success, Method::BINDING, TransactionId::new([1; 12])),
    )
    .unwrap();
    w.add_fingerprint().unwrap();
    w.add(&Attribute::Software("x")).unwrap();
    let len = w.finish();
    assert_eq!(
        Message::decode(&buf[..len]).unwrap_err(),
        DecodeError::FingerprintNotLast
    );
}

#[test]
fn every_truncation_and_length_of_the_vectors_is_a_typed_error() {
    for vector in [
        &RFC5769_REQUEST[..],
        &RFC5769_IPV4_RESPONSE[..],
        &RFC5769_IPV6_RESPONSE[..],
        &hex(LEGACY_RESPONSE_HEX)[..],
    ] {
        for n in 0..vector.len() {
            assert!(Message::decode(&vector[..n]).is_err());
        }
        for len in 0..=u16::MAX {
            let mut m = vector.to_vec();
            m[2..4].copy_from_slice(&len.to_be_bytes());
            let _ = Message::decode(&m);
            let _ = Message::decode_prefix(&m);
        }
    }
}

#[test]
fn attributes_after_message_integrity_sha256_are_ignored() {
    // RFC 8489 §14.6: only MESSAGE-INTEGRITY and FINGERPRINT count after MESSAGE-INTEGRITY-SHA256.
    // (Found by the codec_diff fuzz target: stun-types ignored this XOR-MAPPED-ADDRESS, we did not.)
    let mut buf = [0u8; 128];
    let header = Header::new(Class::Success, Method::BINDING, TransactionId::new(TXID));
    let mut w = MessageWriter::new(&mut buf, header).unwrap();
    w.add(&Attribute::Other {
        kind: 0x001C,
        value: &[0xAA; 32],
    })
    .unwrap();
    w.add(&Attribute::XorMappedAddress(addr("192.0.2.1:32853")))
        .unwrap();
    w.add(&Attribute::Other {
        kind: 0x7FFF,
        value: &[],
    })
    .unwrap();
    w.add_message_integrity(PASSWORD).unwrap();
    w.add_fingerprint().unwrap();
    let len = w.finish();
    let msg = Message::decode(&buf[..len]).unwrap();
    assert_eq!(msg.xor_mapped_address(), None);
    assert_eq!(msg.unknown_comprehension_required(), Some((0x001C, 1)));
    let mut unknown = [0u16; 4];
    assert_eq!(msg.collect_unknown(&mut unknown), 1);
    assert_eq!(msg.verify_integrity(PASSWORD), Ok(()));
    assert!(msg.has_fingerprint());
}

//! Property tests for the STUN codec: everything we encode decodes back to the same header and
//! attributes, decoding arbitrary bytes never panics, and whatever decodes re-encodes to the same bytes
//! (except for padding and reserved bits, which the decoder ignores).
// Test code: the package's strict lints (Cargo.toml `[lints]`) guard its library code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use common::mutation::{mutate, mutation};
use core::net::{IpAddr, SocketAddr};

use p2pd_proto::stun::{
    attr, AttrKind, AttrTypes, Attribute, ChangeRequest, Class, ErrorCode, Header, Message,
    MessageWriter, Method, TransactionId, HEADER_LEN, MAGIC_COOKIE,
};
use p2pd_proto::testing::codec::{check_framing, check_reencodes, ADDRESS_CODES};
use proptest::prelude::*;

// ---- Strategies ----

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![
        Just(Class::Request),
        Just(Class::Indication),
        Just(Class::Success),
        Just(Class::Error),
    ]
}

/// RFC 5389 headers (magic cookie) and RFC 3489 headers (any other cookie), every class and method.
fn header() -> impl Strategy<Value = Header> {
    let legacy_cookie = any::<[u8; 4]>().prop_filter("not the magic cookie", |c| {
        u32::from_be_bytes(*c) != MAGIC_COOKIE
    });
    (
        class(),
        0u16..=0x0FFF,
        any::<[u8; 12]>(),
        prop::option::of(legacy_cookie),
    )
        .prop_map(|(class, method, id, cookie)| {
            let method = Method::new(method).unwrap();
            let id = TransactionId::new(id);
            match cookie {
                None => Header::new(class, method, id),
                Some(cookie) => Header::legacy(class, method, cookie, id),
            }
        })
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip.into(), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
    ]
}

/// UTF-8 text of at most `max_bytes` bytes.
fn text(max_chars: usize, max_bytes: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..=max_chars).prop_map(move |chars| {
        let mut s = String::new();
        for c in chars {
            if s.len() + c.len_utf8() > max_bytes {
                break;
            }
            s.push(c);
        }
        s
    })
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}

/// An attribute that owns its data (`Attribute` borrows).
#[derive(Clone, Debug)]
enum Owned {
    Address(u16, SocketAddr),
    ChangeRequest(ChangeRequest),
    ResponsePort(u16),
    Padding(Vec<u8>),
    Username(Vec<u8>),
    Software(String),
    ErrorCode(u16, String),
    UnknownAttributes(Vec<u16>),
    MessageIntegrity([u8; 20]),
    Other(u16, Vec<u8>),
}

impl Owned {
    fn attribute(&self) -> Attribute<'_> {
        match self {
            Owned::Address(code, a) => match *code {
                attr::MAPPED_ADDRESS => Attribute::MappedAddress(*a),
                attr::XOR_MAPPED_ADDRESS => Attribute::XorMappedAddress(*a),
                attr::XOR_MAPPED_ADDRESS_DRAFT => Attribute::XorMappedAddressDraft(*a),
                attr::RESPONSE_ADDRESS => Attribute::ResponseAddress(*a),
                attr::SOURCE_ADDRESS => Attribute::SourceAddress(*a),
                attr::CHANGED_ADDRESS => Attribute::ChangedAddress(*a),
                attr::OTHER_ADDRESS => Attribute::OtherAddress(*a),
                _ => Attribute::ResponseOrigin(*a),
            },
            Owned::ChangeRequest(c) => Attribute::ChangeRequest(*c),
            Owned::ResponsePort(p) => Attribute::ResponsePort(*p),
            Owned::Padding(v) => Attribute::Padding(v),
            Owned::Username(v) => Attribute::Username(v),
            Owned::Software(s) => Attribute::Software(s),
            Owned::ErrorCode(code, reason) => Attribute::ErrorCode(ErrorCode {
                code: *code,
                reason,
            }),
            Owned::UnknownAttributes(list) => Attribute::UnknownAttributes(AttrTypes::List(list)),
            Owned::MessageIntegrity(m) => Attribute::MessageIntegrity(*m),
            Owned::Other(kind, value) => Attribute::Other { kind: *kind, value },
        }
    }
}

/// Every attribute variant except FINGERPRINT (which must be last; it is appended separately).
fn attribute() -> impl Strategy<Value = Owned> {
    prop_oneof![
        4 => (prop::sample::select(&ADDRESS_CODES[..]), socket_addr())
            .prop_map(|(code, a)| Owned::Address(code, a)),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(change_ip, change_port)| {
            Owned::ChangeRequest(ChangeRequest { change_ip, change_port })
        }),
        1 => any::<u16>().prop_map(Owned::ResponsePort),
        1 => bytes(64).prop_map(Owned::Padding),
        1 => prop_oneof![bytes(40), bytes(513)].prop_map(Owned::Username),
        1 => prop_oneof![text(40, 763), text(763, 763)].prop_map(Owned::Software),
        1 => (300u16..=699, text(40, 763)).prop_map(|(c, r)| Owned::ErrorCode(c, r)),
        1 => prop::collection::vec(any::<u16>(), 0..8).prop_map(Owned::UnknownAttributes),
        1 => any::<[u8; 20]>().prop_map(Owned::MessageIntegrity),
        2 => (
            any::<u16>().prop_filter("not a known attribute", |c| AttrKind::from_code(*c).is_none()),
            bytes(40),
        )
            .prop_map(|(code, v)| Owned::Other(code, v)),
    ]
}

#[derive(Clone, Debug)]
struct Spec {
    header: Header,
    attributes: Vec<Owned>,
    integrity_key: Option<Vec<u8>>,
    fingerprint: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        header(),
        prop::collection::vec(attribute(), 0..10),
        prop::option::of(bytes(32)),
        any::<bool>(),
    )
        .prop_map(|(header, attributes, integrity_key, fingerprint)| Spec {
            header,
            attributes,
            integrity_key,
            fingerprint,
        })
}

fn encode(spec: &Spec) -> Vec<u8> {
    let size = HEADER_LEN
        + spec
            .attributes
            .iter()
            .map(|a| 4 + a.attribute().value_len().next_multiple_of(4))
            .sum::<usize>()
        + 24
        + 8;
    let mut buf = vec![0u8; size];
    let mut w = MessageWriter::new(&mut buf, spec.header).unwrap();
    for a in &spec.attributes {
        w.add(&a.attribute()).unwrap();
    }
    if let Some(key) = &spec.integrity_key {
        w.add_message_integrity(key).unwrap();
    }
    if spec.fingerprint {
        w.add_fingerprint().unwrap();
    }
    let len = w.finish();
    buf.truncate(len);
    buf
}

fn parsed<'a>(msg: &Message<'a>) -> Vec<Attribute<'a>> {
    msg.attributes()
        .map(|raw| Attribute::parse(raw.code, raw.value, msg.header()).unwrap())
        .collect()
}

// ---- Properties ----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn encoded_messages_decode_to_the_same_header_and_attributes(spec in spec()) {
        let bytes = encode(&spec);
        let msg = Message::decode(&bytes).unwrap();
        prop_assert_eq!(msg.header(), &spec.header);
        prop_assert_eq!(msg.is_legacy(), spec.header.is_legacy());

        let mut expected: Vec<Attribute<'_>> =
            spec.attributes.iter().map(Owned::attribute).collect();
        let got = parsed(&msg);
        if spec.integrity_key.is_some() {
            expected.push(got[spec.attributes.len()]); // the computed HMAC, checked below
            prop_assert!(matches!(expected.last(), Some(Attribute::MessageIntegrity(_))));
        }
        if spec.fingerprint {
            expected.push(*got.last().unwrap());
            prop_assert!(matches!(expected.last(), Some(Attribute::Fingerprint(_))));
        }
        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(msg.has_fingerprint(), spec.fingerprint);

        // MI verifies, unless a raw MESSAGE-INTEGRITY among the attributes comes first.
        let raw_mi = spec.attributes.iter().any(|a| matches!(a, Owned::MessageIntegrity(_)));
        if let (Some(key), false) = (&spec.integrity_key, raw_mi) {
            prop_assert_eq!(msg.verify_integrity(key), Ok(()));
            // (Not `push(0)`: HMAC pads short keys with zeros, so that would be the same key.)
            let mut wrong = key.clone();
            wrong.push(1);
            prop_assert!(msg.verify_integrity(&wrong).is_err());
        }

        // Getters return the first of each kind before any MESSAGE-INTEGRITY(-SHA256).
        let before_integrity: Vec<&Owned> = spec
            .attributes
            .iter()
            .take_while(|a| {
                !matches!(a, Owned::MessageIntegrity(_) | Owned::Other(0x001C, _))
            })
            .collect();
        let first_xma = before_integrity.iter().find_map(|a| match a {
            Owned::Address(attr::XOR_MAPPED_ADDRESS, x) => Some(*x),
            _ => None,
        });
        prop_assert_eq!(msg.xor_mapped_address(), first_xma);
        let first_software = before_integrity.iter().find_map(|a| match a {
            Owned::Software(s) => Some(s.as_str()),
            _ => None,
        });
        prop_assert_eq!(msg.software(), first_software);

        check_reencodes(&msg);
    }

    #[test]
    fn writer_output_is_always_aligned_and_framed(spec in spec()) {
        let bytes = encode(&spec);
        prop_assert_eq!(bytes.len() % 4, 0);
        prop_assert_eq!(Message::needed(&bytes), Ok(bytes.len()));
        check_framing(&bytes);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(data in bytes(256)) {
        check_framing(&data);
        if let Ok(msg) = Message::decode(&data) {
            check_reencodes(&msg);
        }
    }

    #[test]
    fn decoding_arbitrary_stun_headers_never_panics(
        head in any::<[u8; 20]>(),
        body in bytes(120),
    ) {
        let mut data = head.to_vec();
        data[0] &= 0x3F;
        let len = u16::try_from(body.len() & !3).unwrap();
        data[2..4].copy_from_slice(&len.to_be_bytes());
        data.extend_from_slice(&body[..usize::from(len)]);
        check_framing(&data);
        if let Ok(msg) = Message::decode(&data) {
            check_reencodes(&msg);
        }
    }

    #[test]
    fn mutated_messages_never_panic_and_reencode_when_accepted(
        spec in spec(),
        mutations in prop::collection::vec(mutation(), 1..4),
        fix_length in any::<bool>(),
    ) {
        let data = mutate(encode(&spec), &mutations, fix_length);
        check_framing(&data);
        if let Ok(msg) = Message::decode(&data) {
            check_reencodes(&msg);
            let _ = (msg.mapped_address(), msg.other_address(), msg.response_origin());
            let _ = (msg.change_request(), msg.response_port(), msg.error_code());
            let _ = msg.verify_integrity(b"key");
        }
    }
}

#[test]
fn oversized_values_are_refused_by_the_writer_not_truncated() {
    let header = Header::new(Class::Request, Method::BINDING, TransactionId::new([0; 12]));
    let mut buf = vec![0u8; 70_000];
    let mut w = MessageWriter::new(&mut buf, header).unwrap();
    let big = vec![0u8; 65_536];
    assert!(w
        .add(&Attribute::Other {
            kind: 0x8001,
            value: &big
        })
        .is_err());
    assert!(w
        .add(&Attribute::ErrorCode(ErrorCode {
            code: 700,
            reason: ""
        }))
        .is_err());
    let mut small = [0u8; 24];
    let mut w = MessageWriter::new(&mut small, header).unwrap();
    assert!(w.add(&Attribute::Software("12345")).is_err());
    assert!(MessageWriter::new(&mut [0u8; 19], header).is_err());
}

#[test]
fn largest_message_keeps_attribute_offsets_past_65535() {
    // 20 + 65535 bytes: the FINGERPRINT sits past offset 65535 and must still be found.
    let header = Header::new(Class::Success, Method::BINDING, TransactionId::new([3; 12]));
    let mut buf = vec![0u8; HEADER_LEN + 0xFFFC];
    let mut w = MessageWriter::new(&mut buf, header).unwrap();
    let filler = vec![0x41u8; 0xFFFC - 8 - 8 - 4];
    w.add(&Attribute::Padding(&filler)).unwrap();
    w.add(&Attribute::Software("abcd")).unwrap();
    w.add_fingerprint().unwrap();
    let len = w.finish();
    assert_eq!(len, buf.len());
    let msg = Message::decode(&buf).unwrap();
    assert!(msg.has_fingerprint());
    assert_eq!(msg.software(), Some("abcd"));
}

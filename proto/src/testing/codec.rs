//! Checks of the STUN codec on any bytes, shared by the codec's property tests and its fuzz
//! target: [`check_framing`] (the framing functions agree), [`check_reencodes`] (whatever decodes
//! re-encodes to the same attributes and bytes) and [`ignored_bits`].
// A checker: a violated property panics, as an assertion in a test does. Offsets and lengths come
// from a message the decoder accepted, so they lie within its bytes.
#![allow(
    clippy::panic,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::vec::Vec;

use crate::stun::{attr, is_stun, Attribute, DecodeError, Message, MessageWriter, HEADER_LEN};

/// The attributes that carry an address: their first value byte is reserved.
pub const ADDRESS_CODES: [u16; 8] = [
    attr::MAPPED_ADDRESS,
    attr::XOR_MAPPED_ADDRESS,
    attr::XOR_MAPPED_ADDRESS_DRAFT,
    attr::RESPONSE_ADDRESS,
    attr::SOURCE_ADDRESS,
    attr::CHANGED_ADDRESS,
    attr::OTHER_ADDRESS,
    attr::RESPONSE_ORIGIN,
];

/// Checks that `is_stun`, `Message::needed`, `Message::decode_prefix` and `Message::decode` agree
/// on `data`, whatever it is.
pub fn check_framing(data: &[u8]) {
    let needed = Message::needed(data);
    assert_eq!(
        is_stun(data),
        needed.is_ok(),
        "is_stun disagrees with needed"
    );
    match needed {
        Ok(total) => {
            assert!(total >= HEADER_LEN && (total - HEADER_LEN).is_multiple_of(4));
            match Message::decode_prefix(data) {
                Ok((msg, used)) => {
                    assert_eq!(used, total);
                    assert_eq!(msg.as_bytes(), &data[..total]);
                    let exact = Message::decode(&data[..total]).expect("prefix decodes alone");
                    assert_eq!(exact.header(), msg.header());
                    if total != data.len() {
                        assert_eq!(
                            Message::decode(data).err(),
                            Some(DecodeError::LengthMismatch)
                        );
                    }
                }
                Err(e) if total > data.len() => assert_eq!(e, DecodeError::LengthMismatch),
                Err(e) => {
                    assert!(!matches!(
                        e,
                        DecodeError::TooShort | DecodeError::NotStun | DecodeError::UnalignedLength
                    ));
                    assert_eq!(Message::decode(&data[..total]).err(), Some(e));
                }
            }
            if total != data.len() {
                assert!(
                    Message::decode(data).is_err(),
                    "decode accepted extra bytes"
                );
            }
        }
        Err(e) => {
            assert_eq!(Message::decode_prefix(data).err(), Some(e));
            assert_eq!(Message::decode(data).err(), Some(e));
        }
    }
}

/// For each byte of a decoded message, the bits its decoder ignores: padding and reserved fields.
pub fn ignored_bits(msg: &Message<'_>) -> Vec<u8> {
    let mut mask = std::vec![0u8; msg.as_bytes().len()];
    for raw in msg.attributes() {
        let v = raw.offset + 4;
        let end = v + raw.value.len();
        mask[end..end.next_multiple_of(4)].fill(0xFF);
        match raw.code {
            c if ADDRESS_CODES.contains(&c) => mask[v] = 0xFF,
            attr::CHANGE_REQUEST => {
                mask[v..v + 3].fill(0xFF);
                mask[v + 3] = !0x06;
            }
            attr::RESPONSE_PORT => mask[v + 2..v + 4].fill(0xFF),
            attr::ERROR_CODE => {
                mask[v..v + 2].fill(0xFF);
                mask[v + 2] = 0xF8;
            }
            _ => {}
        }
    }
    mask
}

/// Re-encodes every attribute of `msg` under the same header (a fresh FINGERPRINT if it had one)
/// and checks: every attribute parses, the re-encoding decodes to the same attributes at the same
/// offsets, and its bytes equal the input except in ignored bits (and, if those differ, in the
/// FINGERPRINT value that covers them).
pub fn check_reencodes(msg: &Message<'_>) {
    let original = msg.as_bytes();
    let mut buf = std::vec![0u8; original.len()];
    let mut w = MessageWriter::new(&mut buf, *msg.header()).expect("header fits");
    let mut attrs = Vec::new();
    for raw in msg.attributes() {
        let a = Attribute::parse(raw.code, raw.value, msg.header())
            .expect("every attribute of a decoded message parses");
        match a {
            Attribute::Fingerprint(_) => w.add_fingerprint().expect("fingerprint fits"),
            other => w.add(&other).expect("decoded attribute re-encodes"),
        }
        attrs.push((raw.offset, a));
    }
    assert_eq!(w.finish(), original.len());

    let again = Message::decode(&buf).expect("re-encoded message decodes");
    assert_eq!(again.header(), msg.header());
    let mut n = 0;
    for (raw, (offset, a)) in again.attributes().zip(&attrs) {
        assert_eq!(raw.offset, *offset);
        let b = Attribute::parse(raw.code, raw.value, again.header()).expect("parses");
        if !matches!(a, Attribute::Fingerprint(_)) {
            assert_eq!(&b, a);
        }
        n += 1;
    }
    assert_eq!(n, attrs.len());
    assert_eq!(again.attributes().count(), attrs.len());

    // Byte identity modulo what the decoder ignores.
    let fingerprint = msg
        .attributes()
        .find(|a| a.code == attr::FINGERPRINT)
        .map(|a| a.offset);
    let end = fingerprint.unwrap_or(original.len());
    let mask = ignored_bits(msg);
    for i in 0..end {
        assert_eq!(
            (original[i] ^ buf[i]) & !mask[i],
            0,
            "re-encoding changed byte {i} outside padding and reserved bits"
        );
    }
    if original[..end] == buf[..end] {
        assert_eq!(original, &buf[..], "same content, different fingerprint");
    }
}

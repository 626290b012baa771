//! Decodes arbitrary bytes with the STUN codec. On success, re-encodes every attribute into a fresh
//! message with the same header and checks that it decodes to the same attributes and the same bytes
//! (modulo padding and reserved bits, which the decoder ignores). Also checks that `is_stun`,
//! `Message::needed`, `Message::decode_prefix` and `Message::decode` agree with each other.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pd_proto::stun::{attr, is_stun, Attribute, DecodeError, Message, MessageWriter, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    check_framing(data);
    if let Ok(msg) = Message::decode(data) {
        exercise_getters(&msg);
        check_reencode(&msg);
    }
});

fn check_framing(data: &[u8]) {
    let needed = Message::needed(data);
    assert_eq!(
        is_stun(data),
        needed.is_ok(),
        "is_stun disagrees with needed"
    );
    match needed {
        Ok(total) => {
            assert!(total >= HEADER_LEN && (total - HEADER_LEN) % 4 == 0);
            match Message::decode_prefix(data) {
                Ok((msg, used)) => {
                    assert_eq!(used, total);
                    assert_eq!(msg.as_bytes(), &data[..total]);
                    let exact = Message::decode(&data[..total]).expect("prefix decodes alone");
                    assert_eq!(exact.header(), msg.header());
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

fn exercise_getters(msg: &Message<'_>) {
    let _ = msg.mapped_address();
    let _ = msg.xor_mapped_address();
    let _ = msg.other_address();
    let _ = msg.response_origin();
    let _ = msg.change_request();
    let _ = msg.response_port();
    let _ = msg.error_code();
    let _ = msg.software();
    let _ = msg.has_fingerprint();
    let _ = msg.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt");
    let _ = msg.unknown_comprehension_required();
    let mut unknown = [0u16; 4];
    let n = msg.collect_unknown(&mut unknown);
    assert!(n <= unknown.len());
    let _ = format!("{:?}", msg);
}

fn check_reencode(msg: &Message<'_>) {
    let original = msg.as_bytes();
    let mut buf = vec![0u8; original.len()];
    let mut w = MessageWriter::new(&mut buf, *msg.header()).expect("header fits");
    let mut attrs = Vec::new();
    for raw in msg.attributes() {
        let a = Attribute::parse(raw.code, raw.value, msg.header())
            .expect("every attribute of a decoded message parses");
        if matches!(a, Attribute::Fingerprint(_)) {
            w.add_fingerprint().expect("fingerprint fits");
        } else {
            w.add(&a).expect("decoded attribute re-encodes");
        }
        attrs.push((raw.offset, a));
    }
    let len = w.finish();
    assert_eq!(len, original.len());
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
    // Byte identity modulo what the decoder ignores.
    let mask = ignored_bits(msg);
    let mut fingerprint_at = None;
    for raw in msg.attributes() {
        if raw.code == attr::FINGERPRINT {
            fingerprint_at = Some(raw.offset);
        }
    }
    let end = fingerprint_at.unwrap_or(original.len());
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

/// For each byte of the message, the bits the decoder ignores (padding and reserved fields).
fn ignored_bits(msg: &Message<'_>) -> Vec<u8> {
    let mut mask = vec![0u8; msg.as_bytes().len()];
    for raw in msg.attributes() {
        let v = raw.offset + 4;
        let len = raw.value.len();
        for m in &mut mask[v + len..(v + len + 3) & !3] {
            *m = 0xFF;
        }
        match raw.code {
            attr::MAPPED_ADDRESS
            | attr::RESPONSE_ADDRESS
            | attr::SOURCE_ADDRESS
            | attr::CHANGED_ADDRESS
            | attr::XOR_MAPPED_ADDRESS
            | attr::XOR_MAPPED_ADDRESS_DRAFT
            | attr::RESPONSE_ORIGIN
            | attr::OTHER_ADDRESS => mask[v] = 0xFF,
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

//! Codec, record, framing and store tests (no machines).

use std::net::IpAddr;

use super::harness::{id, name};
use crate::pnp::wire::{FrameEvent, FrameReader};
use crate::pnp::*;

fn record(owner: u8, n: &str, value: &[u8], version: u64) -> Record {
    Record::sign(&id(owner), name(n), value.to_vec(), version, 5_000).unwrap()
}

#[test]
fn name_rules() {
    for ok in ["a", "alice", "0day", "a-b_c.d", &"x".repeat(MAX_NAME_LEN)] {
        assert_eq!(Name::new(ok).unwrap().as_str(), ok);
    }
    assert_eq!(Name::new(""), Err(NameError::Empty));
    assert_eq!(
        Name::new(&"x".repeat(MAX_NAME_LEN + 1)),
        Err(NameError::TooLong)
    );
    assert_eq!(Name::new("Alice"), Err(NameError::InvalidCharacter(b'A')));
    assert_eq!(Name::new("-a"), Err(NameError::InvalidCharacter(b'-')));
    assert_eq!(Name::new(".a"), Err(NameError::InvalidCharacter(b'.')));
    assert_eq!(Name::new("a b"), Err(NameError::InvalidCharacter(b' ')));
    assert_eq!(
        Name::from_bytes(&[b'a', 0xc3, 0xa9]),
        Err(NameError::InvalidCharacter(0xc3))
    );
}

#[test]
fn record_signature_covers_every_field() {
    let r = record(1, "alice", b"addr", 3);
    assert!(r.verify());
    assert_eq!(r.owner(), &id(1).public_key());
    let bytes = r.to_bytes();
    assert_eq!(bytes.len(), r.encoded_len());
    assert_eq!(Record::from_bytes(&bytes).unwrap(), r);
    // Flip every byte: the result either does not parse or does not verify.
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        if let Ok(tampered) = Record::from_bytes(&b) {
            assert!(!tampered.verify(), "byte {i} not covered");
        }
    }
    // A record signed by one key and claiming another owner does not verify.
    let mut forged = bytes.clone();
    let other = id(2).public_key().to_bytes();
    let owner_at = 1 + 5 + 2 + 4;
    forged[owner_at..owner_at + 33].copy_from_slice(&other);
    assert!(!Record::from_bytes(&forged).unwrap().verify());
    assert_eq!(
        Record::sign(&id(1), name("a"), vec![0; MAX_VALUE_LEN + 1], 1, 1),
        Err(RecordError::ValueTooLarge)
    );
}

#[test]
fn requests_round_trip_with_padding() {
    let requests = [
        Request::Register(Box::new(record(1, "alice", &[7; MAX_VALUE_LEN], 9))),
        Request::Lookup(name("bob")),
        Request::Delete {
            name: name("carol"),
            version: u64::MAX,
        },
    ];
    for req in &requests {
        for pad in [0, 30, UDP_LOOKUP_PAYLOAD_LEN] {
            let bytes = req.encode(pad);
            assert!(bytes.len() >= pad);
            assert_eq!(&Request::decode(&bytes).unwrap(), req);
            // Every truncation is an error, never a panic (except cutting only padding).
            let body_len = req.encode(0).len();
            for cut in 0..body_len {
                assert!(Request::decode(&bytes[..cut]).is_err(), "cut {cut}");
            }
            // Non-zero padding is malformed.
            let mut bad = req.encode(body_len + 4);
            *bad.last_mut().unwrap() = 1;
            assert_eq!(Request::decode(&bad), Err(WireError::TrailingBytes));
        }
    }
    assert_eq!(
        Request::decode(&[2, 1]),
        Err(WireError::UnsupportedVersion(2))
    );
    assert_eq!(
        Request::decode(&[1, 0x81]),
        Err(WireError::UnknownOpcode(0x81))
    );
}

#[test]
fn replies_round_trip() {
    let bodies = [
        ReplyBody::Registered { version: 4 },
        ReplyBody::Found(Box::new(record(1, "alice", b"v", 2))),
        ReplyBody::Deleted { version: 5 },
        ReplyBody::Error {
            code: ErrorCode::StaleVersion,
            detail: 3,
        },
        ReplyBody::Error {
            code: ErrorCode::Unknown(200),
            detail: 0,
        },
    ];
    for body in bodies {
        let reply = Reply {
            request_nonce: [9; 16],
            body,
        };
        let bytes = reply.encode();
        assert_eq!(Reply::decode(&bytes).unwrap(), reply);
        for cut in 0..bytes.len() {
            assert!(Reply::decode(&bytes[..cut]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Reply::decode(&longer), Err(WireError::TrailingBytes));
    }
    for code in 0..=255u8 {
        assert_eq!(ErrorCode::from_u8(code).to_u8(), code);
    }
}

#[test]
fn sizes_are_bounded() {
    let biggest = ReplyBody::Found(Box::new(record(
        1,
        &"n".repeat(MAX_NAME_LEN),
        &[0; MAX_VALUE_LEN],
        1,
    )));
    let payload = Reply {
        request_nonce: [0; 16],
        body: biggest,
    }
    .encode();
    assert_eq!(payload.len(), MAX_PAYLOAD_LEN);
    assert_eq!(MAX_MESSAGE_LEN, payload.len() + crate::envelope::OVERHEAD);
    const { assert!(MAX_MESSAGE_LEN <= MAX_REPLY_LEN) };
    let error = Reply {
        request_nonce: [0; 16],
        body: ReplyBody::Error {
            code: ErrorCode::NotFound,
            detail: 0,
        },
    };
    assert_eq!(error.encode().len(), ERROR_REPLY_PAYLOAD_LEN);
}

#[test]
fn frames_split_at_every_offset() {
    let a: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    let b = vec![0xee; 5];
    let mut stream = frame(&a).unwrap();
    stream.extend(frame(&b).unwrap());
    for cut in 0..=stream.len() {
        let mut reader = FrameReader::new(MAX_MESSAGE_LEN);
        let mut got = Vec::new();
        for chunk in [&stream[..cut], &stream[cut..]] {
            let mut rest = chunk;
            while let Some(ev) = reader.next(&mut rest) {
                got.push(ev);
            }
        }
        assert_eq!(
            got,
            vec![FrameEvent::Frame(a.clone()), FrameEvent::Frame(b.clone())],
            "cut {cut}"
        );
    }
    // Byte by byte.
    let mut reader = FrameReader::new(MAX_MESSAGE_LEN);
    let mut frames = 0;
    for byte in &stream {
        let mut rest = std::slice::from_ref(byte);
        while reader.next(&mut rest).is_some() {
            frames += 1;
        }
    }
    assert_eq!(frames, 2);
    for bad in [[0u8, 0], (MAX_MESSAGE_LEN as u16 + 1).to_be_bytes()] {
        let mut reader = FrameReader::new(MAX_MESSAGE_LEN);
        let mut rest = &bad[..];
        assert!(matches!(
            reader.next(&mut rest),
            Some(FrameEvent::BadLength(_))
        ));
    }
}

#[test]
fn source_keys() {
    let k = |s: &str| SourceKey::from_ip(s.parse::<IpAddr>().unwrap());
    assert_eq!(k("192.0.2.1"), SourceKey::V4([192, 0, 2, 1]));
    assert_eq!(k("::ffff:192.0.2.1"), k("192.0.2.1"));
    assert_ne!(k("192.0.2.1"), k("192.0.2.2"));
    assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
    assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
    for key in [k("192.0.2.1"), k("2001:db8:1:2::1")] {
        assert_eq!(SourceKey::from_bytes(&key.to_bytes()), Some(key));
    }
    assert_eq!(SourceKey::from_bytes(&[4, 1, 2, 3, 4, 0, 0, 0, 1]), None);
    assert_eq!(SourceKey::from_bytes(&[5; 9]), None);
    assert_eq!(SourceKey::from_bytes(&[4; 3]), None);
}

#[test]
fn memory_store_is_bounded_and_counts_sources() {
    let s1 = SourceKey::V4([1, 1, 1, 1]);
    let s2 = SourceKey::V4([2, 2, 2, 2]);
    let entry = |n: &str, expires: u64, source| StoredName {
        record: Record::sign(&id(1), name(n), vec![], 1, expires).unwrap(),
        source,
    };
    let mut store = MemoryStore::new(2);
    store.put(entry("a", 100, s1), 0).unwrap();
    store.put(entry("b", 200, s1), 0).unwrap();
    assert_eq!(store.put(entry("c", 100, s1), 0), Err(StoreError::Full));
    assert_eq!(store.count_for_source(s1, 0), Ok(2));
    // Replacing moves the name to the new source.
    store.put(entry("a", 100, s2), 0).unwrap();
    assert_eq!(store.count_for_source(s1, 0), Ok(1));
    assert_eq!(store.count_for_source(s2, 0), Ok(1));
    // An expired name counts against nothing, pruned or not.
    assert_eq!(store.count_for_source(s2, 100), Ok(0));
    assert_eq!(store.prune_expired(100, 10), Ok(1));
    assert_eq!(store.count_for_source(s2, 0), Ok(0));
    assert_eq!(store.len(), Ok(1));
    assert_eq!(store.delete(&name("b")), Ok(true));
    assert_eq!(store.delete(&name("b")), Ok(false));
    assert_eq!(store.is_empty(), Ok(true));
    // Usable as a trait object.
    let mut boxed: Box<dyn NameStore> = Box::new(MemoryStore::new(1));
    boxed.put(entry("z", 100, s1), 0).unwrap();
    assert_eq!(boxed.get(&name("z")).unwrap().unwrap().source, s1);
}

#[test]
fn server_ids_are_canonical() {
    let a = PnpServerId::new("192.0.2.1:5300".parse().unwrap(), &id(1).public_key());
    let mapped = PnpServerId::new(
        "[::ffff:192.0.2.1]:5300".parse().unwrap(),
        &id(1).public_key(),
    );
    assert_eq!(a, mapped);
    assert_ne!(
        a,
        PnpServerId::new("192.0.2.1:5301".parse().unwrap(), &id(1).public_key())
    );
    assert_ne!(
        a,
        PnpServerId::new("192.0.2.1:5300".parse().unwrap(), &id(2).public_key())
    );
    assert_eq!(a.to_string().len(), 16);
}

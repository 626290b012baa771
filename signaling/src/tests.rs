use crate::envelope::{HEADER_LEN, MAX_ENVELOPE, MAX_PAYLOAD, OVERHEAD, SIGNATURE_LEN};
use crate::{ecies, seal, Identity, NodeId, OpenError, Opener, PublicKey, SealError};
use k256::ecdsa::Signature;
use proptest::prelude::*;

const NOW: u64 = 1_700_000_000_000;

fn id(byte: u8) -> Identity {
    Identity::from_secret_bytes(&[byte; 32]).unwrap()
}

fn nonce(n: u8) -> [u8; 16] {
    [n; 16]
}

#[test]
fn identity_basics() {
    let a = id(1);
    let pk = a.public_key().to_bytes();
    assert_eq!(pk.len(), 33);
    assert!(pk[0] == 2 || pk[0] == 3);
    assert_eq!(PublicKey::from_bytes(&pk).unwrap(), a.public_key());
    assert_eq!(
        PublicKey::from_bytes(&a.public_key().to_uncompressed()).unwrap(),
        a.public_key()
    );
    assert_eq!(
        Identity::from_secret_bytes(&a.secret_bytes())
            .unwrap()
            .public_key(),
        a.public_key()
    );
    // Node id = first 20 bytes of SHA-256(compressed key), hex.
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(pk);
    assert_eq!(a.node_id().as_bytes()[..], digest[..20]);
    let hex = a.node_id().to_string();
    assert_eq!(hex.len(), 40);
    assert!(hex
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(a.node_id(), NodeId::from_public_key(&a.public_key()));
    // Known answer: secret key 1 is the generator.
    let mut one = [0u8; 32];
    one[31] = 1;
    assert_eq!(
        Identity::from_secret_bytes(&one)
            .unwrap()
            .public_key()
            .to_string(),
        "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
    );
    // The secret never appears in Debug.
    let dbg = format!("{a:?}");
    assert!(!dbg.contains("0101010101"));
    assert_ne!(id(1).node_id(), id(2).node_id());
}

#[test]
fn invalid_secrets_rejected() {
    assert!(Identity::from_secret_bytes(&[0; 32]).is_err());
    assert!(Identity::from_secret_bytes(&[0xff; 32]).is_err());
    assert!(Identity::generate(&mut |b: &mut [u8]| b.fill(0)).is_err());
    let mut calls = 0;
    let g = Identity::generate(&mut |b: &mut [u8]| {
        calls += 1;
        b.fill(if calls < 3 { 0xff } else { 9 });
    })
    .unwrap();
    assert_eq!(calls, 3);
    assert_eq!(g.public_key(), id(9).public_key());
    let mut rng = p2pd_proto::Rng::from_seed(7);
    let x = Identity::generate(&mut |b: &mut [u8]| rng.fill_bytes(b)).unwrap();
    let mut rng = p2pd_proto::Rng::from_seed(7);
    let y = Identity::generate(&mut |b: &mut [u8]| rng.fill_bytes(b)).unwrap();
    assert_eq!(x.public_key(), y.public_key());
    assert!(PublicKey::from_bytes(&[5; 33]).is_err());
    assert!(PublicKey::from_bytes(&[]).is_err());
}

#[test]
fn round_trip() {
    let (a, b) = (id(1), id(2));
    let bytes = seal(&a, &b.public_key(), NOW, nonce(1), b"hello bob").unwrap();
    assert_eq!(bytes.len(), OVERHEAD + 9);
    assert_eq!(OVERHEAD, 276);
    assert_eq!(bytes[0], 1);
    let mut opener = Opener::new(8);
    let opened = opener.open(&b, NOW + 5, &bytes).unwrap();
    assert_eq!(opened.payload, b"hello bob");
    assert_eq!(opened.sender, a.public_key());
    assert_eq!(opened.node_id, a.node_id());
    assert_eq!(opened.timestamp, NOW);
    assert_eq!(opened.nonce, nonce(1));
    // Empty and maximal payloads.
    for (i, len) in [0usize, 1, 1000, MAX_PAYLOAD].into_iter().enumerate() {
        let payload = vec![0xa5; len];
        let bytes = seal(&a, &b.public_key(), NOW, nonce(10 + i as u8), &payload).unwrap();
        assert!(bytes.len() <= MAX_ENVELOPE);
        assert_eq!(opener.open(&b, NOW, &bytes).unwrap().payload, payload);
    }
    assert_eq!(
        seal(
            &a,
            &b.public_key(),
            NOW,
            nonce(1),
            &vec![0; MAX_PAYLOAD + 1]
        ),
        Err(SealError::TooLarge)
    );
    // Sending to oneself works too.
    let own = seal(&a, &a.public_key(), NOW, nonce(1), b"me").unwrap();
    assert_eq!(Opener::new(1).open(&a, NOW, &own).unwrap().payload, b"me");
}

#[test]
fn deterministic_and_nonce_sensitive() {
    let (a, b) = (id(1), id(2));
    let x = seal(&a, &b.public_key(), NOW, nonce(1), b"p").unwrap();
    let y = seal(&a, &b.public_key(), NOW, nonce(1), b"p").unwrap();
    assert_eq!(x, y);
    let z = seal(&a, &b.public_key(), NOW, nonce(2), b"p").unwrap();
    assert_ne!(x, z);
    // Different nonce gives a different ECIES ephemeral key, not just a different header.
    assert_ne!(
        x[HEADER_LEN..HEADER_LEN + 65],
        z[HEADER_LEN..HEADER_LEN + 65]
    );
    let w = seal(&a, &b.public_key(), NOW, nonce(1), b"q").unwrap();
    assert_ne!(
        x[HEADER_LEN..HEADER_LEN + 65],
        w[HEADER_LEN..HEADER_LEN + 65]
    );
}

#[test]
fn every_byte_flip_is_a_typed_error() {
    let (a, b) = (id(1), id(2));
    let bytes = seal(&a, &b.public_key(), NOW, nonce(1), b"flip me").unwrap();
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut m = bytes.clone();
            m[i] ^= mask;
            let mut opener = Opener::new(4);
            let err = opener.open(&b, NOW, &m).unwrap_err();
            let expected_ok = match i {
                0 => matches!(err, OpenError::UnsupportedVersion(_)),
                1..=33 => matches!(err, OpenError::Malformed | OpenError::BadSignature),
                34..=53 => err == OpenError::WrongRecipient,
                54..=61 => matches!(
                    err,
                    OpenError::Stale { .. }
                        | OpenError::FromFuture { .. }
                        | OpenError::BadSignature
                ),
                78..=81 => matches!(
                    err,
                    OpenError::Truncated | OpenError::Malformed | OpenError::TooLarge
                ),
                _ => err == OpenError::BadSignature,
            };
            assert!(expected_ok, "byte {i} mask {mask:#x}: {err:?}");
            assert!(opener.is_empty());
        }
    }
    // Truncation at every length, and trailing garbage.
    let mut opener = Opener::new(4);
    for len in 0..bytes.len() {
        let err = opener.open(&b, NOW, &bytes[..len]).unwrap_err();
        assert!(len == 0 || err == OpenError::Truncated, "{len}: {err:?}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(opener.open(&b, NOW, &longer), Err(OpenError::Malformed));
    assert_eq!(opener.open(&b, NOW, &[]), Err(OpenError::Truncated));
    assert_eq!(
        opener.open(&b, NOW, &[2]),
        Err(OpenError::UnsupportedVersion(2))
    );
    let mut huge = vec![0u8; MAX_ENVELOPE + 1];
    huge[0] = 1;
    assert_eq!(opener.open(&b, NOW, &huge), Err(OpenError::TooLarge));
    assert!(opener.open(&b, NOW, &bytes).is_ok());
}

#[test]
fn wrong_recipient() {
    let (a, b, c) = (id(1), id(2), id(3));
    let bytes = seal(&a, &b.public_key(), NOW, nonce(1), b"for bob").unwrap();
    assert_eq!(
        Opener::new(4).open(&c, NOW, &bytes),
        Err(OpenError::WrongRecipient)
    );
    // A node id rewritten to c's and re-signed by the sender still cannot be decrypted by c.
    let mut forged = bytes.clone();
    forged[34..54].copy_from_slice(c.node_id().as_bytes());
    let signed_len = forged.len() - SIGNATURE_LEN;
    let sig = a.sign(&forged[..signed_len]);
    forged[signed_len..].copy_from_slice(&sig);
    assert_eq!(
        Opener::new(4).open(&c, NOW, &forged),
        Err(OpenError::DecryptFailed)
    );
}

#[test]
fn replay_rejected_and_cache_bounded() {
    let (a, b) = (id(1), id(2));
    let mut opener = Opener::new(3);
    let env: Vec<Vec<u8>> = (0..5u8)
        .map(|i| seal(&a, &b.public_key(), NOW + u64::from(i), nonce(i), &[i]).unwrap())
        .collect();
    assert!(opener.open(&b, NOW + 10, &env[0]).is_ok());
    assert_eq!(opener.open(&b, NOW + 10, &env[0]), Err(OpenError::Replay));
    assert!(opener.open(&b, NOW + 10, &env[1]).is_ok());
    assert!(opener.open(&b, NOW + 10, &env[2]).is_ok());
    assert_eq!(opener.len(), 3);
    assert_eq!(opener.floor_ms(), None);
    assert!(opener.open(&b, NOW + 10, &env[3]).is_ok());
    assert_eq!(opener.len(), 3);
    assert_eq!(opener.capacity(), 3);
    // The oldest (env 0) was evicted; 1..=3 remain.
    assert!(!opener.contains(&a.public_key(), &nonce(0)));
    for i in 1..=3 {
        assert!(opener.contains(&a.public_key(), &nonce(i)));
        assert_eq!(
            opener.open(&b, NOW + 10, &env[usize::from(i)]),
            Err(OpenError::Replay)
        );
    }
    // The evicted envelope is still fresh, but the floor stops its replay.
    assert_eq!(opener.floor_ms(), Some(NOW));
    assert_eq!(opener.open(&b, NOW + 10, &env[0]), Err(OpenError::Replay));
    assert!(opener.open(&b, NOW + 10, &env[4]).is_ok());
    assert_eq!(opener.len(), 3);
    // Same nonce from a different sender is not a replay.
    let c = id(3);
    let other = seal(&c, &b.public_key(), NOW + 20, nonce(4), b"c").unwrap();
    assert!(opener.open(&b, NOW + 20, &other).is_ok());
    // Many envelopes never grow the cache past capacity.
    let mut big = Opener::new(16);
    for i in 0..100u64 {
        let mut n = [0u8; 16];
        n[..8].copy_from_slice(&i.to_be_bytes());
        let e = seal(&a, &b.public_key(), NOW + i, n, b"x").unwrap();
        assert!(big.open(&b, NOW + i, &e).is_ok());
        assert!(big.len() <= 16);
    }
    assert_eq!(big.len(), 16);
    assert_eq!(Opener::new(0).capacity(), 1);
}

#[test]
fn freshness_window() {
    let (a, b) = (id(1), id(2));
    let bytes = seal(&a, &b.public_key(), NOW, nonce(1), b"t").unwrap();
    let max_age = Opener::DEFAULT_MAX_AGE_MS;
    let max_future = Opener::DEFAULT_MAX_FUTURE_MS;
    assert!(Opener::new(4).open(&b, NOW + max_age, &bytes).is_ok());
    assert_eq!(
        Opener::new(4).open(&b, NOW + max_age + 1, &bytes),
        Err(OpenError::Stale {
            age_ms: max_age + 1
        })
    );
    assert!(Opener::new(4).open(&b, NOW - max_future, &bytes).is_ok());
    assert_eq!(
        Opener::new(4).open(&b, NOW - max_future - 1, &bytes),
        Err(OpenError::FromFuture {
            ahead_ms: max_future + 1
        })
    );
    let mut strict = Opener::with_window(4, 10, 0);
    assert_eq!(
        strict.open(&b, NOW - 1, &bytes),
        Err(OpenError::FromFuture { ahead_ms: 1 })
    );
    assert_eq!(
        strict.open(&b, NOW + 11, &bytes),
        Err(OpenError::Stale { age_ms: 11 })
    );
    assert!(strict.open(&b, NOW + 10, &bytes).is_ok());
    // Extreme clocks do not overflow.
    let old = seal(&a, &b.public_key(), 0, nonce(2), b"t").unwrap();
    assert_eq!(
        Opener::new(4).open(&b, u64::MAX, &old),
        Err(OpenError::Stale { age_ms: u64::MAX })
    );
    let future = seal(&a, &b.public_key(), u64::MAX, nonce(3), b"t").unwrap();
    assert_eq!(
        Opener::new(4).open(&b, 0, &future),
        Err(OpenError::FromFuture { ahead_ms: u64::MAX })
    );
}

#[test]
fn high_s_signature_rejected() {
    let (a, b) = (id(1), id(2));
    let mut bytes = seal(&a, &b.public_key(), NOW, nonce(1), b"s").unwrap();
    let signed_len = bytes.len() - SIGNATURE_LEN;
    let sig = Signature::from_slice(&bytes[signed_len..]).unwrap();
    assert!(sig.normalize_s() == sig, "we sign low-S");
    let neg_s = -*sig.s();
    let high = Signature::from_scalars(sig.r().to_bytes(), neg_s.to_bytes()).unwrap();
    assert_ne!(high, sig);
    assert!(a.public_key().verify(&bytes[..signed_len], &sig.to_bytes()));
    assert!(!a
        .public_key()
        .verify(&bytes[..signed_len], &high.to_bytes()));
    assert_eq!(high.normalize_s(), sig);
    bytes[signed_len..].copy_from_slice(&high.to_bytes());
    assert_eq!(
        Opener::new(4).open(&b, NOW, &bytes),
        Err(OpenError::BadSignature)
    );
}

#[test]
fn signature_checked_before_decryption() {
    let (a, b) = (id(1), id(2));
    let mut bytes = seal(&a, &b.public_key(), NOW, nonce(1), b"x").unwrap();
    // Corrupt the ciphertext's tag: without a valid signature this must not reach decryption.
    bytes[HEADER_LEN + 81] ^= 1;
    assert_eq!(
        Opener::new(4).open(&b, NOW, &bytes),
        Err(OpenError::BadSignature)
    );
}

#[test]
fn ecies_interop_with_ecies_crate() {
    // Only the crate's defaults (eciespy-compatible); never update_config.
    let (a, b) = (id(1), id(2));
    let payload = b"interop with eciespy defaults";
    let bytes = seal(&a, &b.public_key(), NOW, nonce(1), payload).unwrap();
    let ct = &bytes[HEADER_LEN..bytes.len() - SIGNATURE_LEN];
    assert_eq!(ecies::OVERHEAD, 97);
    let mut expected = a.public_key().to_bytes().to_vec();
    expected.extend_from_slice(payload);
    assert_eq!(::ecies::decrypt(&b.secret_bytes(), ct).unwrap(), expected);
    for len in [0usize, 1, 100] {
        let msg = vec![7u8; len];
        let theirs = ::ecies::encrypt(&b.public_key().to_bytes(), &msg).unwrap();
        assert_eq!(theirs.len(), 97 + len);
        assert_eq!(ecies::decrypt(&b.secret_key(), &theirs).unwrap(), msg);
        assert!(ecies::decrypt(&a.secret_key(), &theirs).is_none());
    }
}

proptest! {
    #[test]
    fn prop_round_trip(secret_a in any::<[u8; 32]>(), secret_b in any::<[u8; 32]>(),
                       ts in any::<u64>(), n in any::<[u8; 16]>(),
                       payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        let (Ok(a), Ok(b)) = (Identity::from_secret_bytes(&secret_a), Identity::from_secret_bytes(&secret_b)) else {
            return Ok(());
        };
        let bytes = seal(&a, &b.public_key(), ts, n, &payload).unwrap();
        let opened = Opener::new(2).open(&b, ts, &bytes).unwrap();
        prop_assert_eq!(opened.payload, payload);
        prop_assert_eq!(opened.sender, a.public_key());
    }

    #[test]
    fn prop_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let b = id(2);
        let mut data = data;
        if let Some(first) = data.first_mut() { *first = 1; }
        prop_assert!(Opener::new(2).open(&b, NOW, &data).is_err());
    }
}

#[test]
fn resigned_by_third_party_rejected() {
    // Surreptitious forwarding: c swaps in its key and re-signs a's ciphertext to b.
    let (a, b, c) = (id(1), id(2), id(3));
    let mut bytes = seal(&a, &b.public_key(), NOW, nonce(1), b"from a").unwrap();
    bytes[1..34].copy_from_slice(&c.public_key().to_bytes());
    let signed_len = bytes.len() - SIGNATURE_LEN;
    let sig = c.sign(&bytes[..signed_len]);
    bytes[signed_len..].copy_from_slice(&sig);
    let mut opener = Opener::new(4);
    assert_eq!(opener.open(&b, NOW, &bytes), Err(OpenError::SenderMismatch));
    assert!(opener.is_empty());
    // The real sender re-signing a changed timestamp is still its own message.
    let mut bytes = seal(&a, &b.public_key(), NOW, nonce(2), b"from a").unwrap();
    bytes[61] ^= 1;
    let sig = a.sign(&bytes[..signed_len]);
    bytes[signed_len..].copy_from_slice(&sig);
    assert_eq!(opener.open(&b, NOW, &bytes).unwrap().payload, b"from a");
}

//! Differential fuzzing against the `stun-types` crate: whenever both decoders accept the same bytes
//! (RFC 5389 messages only; stun-types rejects RFC 3489 ones) they must agree on class, method,
//! transaction id and XOR-MAPPED-ADDRESS, and neither may call the other's FINGERPRINT wrong.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pd_proto::stun::{Class, DecodeError, Message};
use stun_types::attribute::{AttributeStaticType, Fingerprint, XorMappedAddress};
use stun_types::message::{Message as TheirMessage, MessageClass, StunParseError};

fuzz_target!(|data: &[u8]| {
    let ours = Message::decode(data);
    let theirs = TheirMessage::from_bytes(data);
    match (&ours, &theirs) {
        (Ok(o), Ok(t)) => {
            assert!(
                !o.is_legacy(),
                "stun-types accepted a message without the magic cookie"
            );
            let class = match t.class() {
                MessageClass::Request => Class::Request,
                MessageClass::Indication => Class::Indication,
                MessageClass::Success => Class::Success,
                MessageClass::Error => Class::Error,
            };
            assert_eq!(o.class(), class);
            assert_eq!(o.method().number(), t.method().value());
            let mut id = [0u8; 16];
            id[4..].copy_from_slice(o.transaction_id().as_bytes());
            assert_eq!(u128::from_be_bytes(id), u128::from(t.transaction_id()));
            let theirs_xma = t
                .raw_attribute(XorMappedAddress::TYPE)
                .and_then(|raw| XorMappedAddress::try_from(&raw).ok())
                .map(|a| a.addr(t.transaction_id()));
            assert_eq!(o.xor_mapped_address(), theirs_xma);
        }
        (Ok(o), Err(StunParseError::FingerprintMismatch)) => {
            panic!("stun-types says FINGERPRINT mismatch, we accepted {o:?}")
        }
        // stun-types stops reading (and returns Ok without checking FINGERPRINT) at the first
        // attribute other than FINGERPRINT after MESSAGE-INTEGRITY; only when its reader reaches the
        // FINGERPRINT has it checked it.
        (Err(DecodeError::FingerprintMismatch), Ok(t)) if t.has_attribute(Fingerprint::TYPE) => {
            panic!("we say FINGERPRINT mismatch, stun-types accepted")
        }
        _ => {}
    }
});

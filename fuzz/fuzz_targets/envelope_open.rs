//! Feeds `Opener::open` arbitrary bytes and mutated valid envelopes. It must never panic, an
//! arbitrary input must never open, and a mutated envelope that does open (for example a changed
//! timestamp or nonce re-signed by the real sender) must yield exactly the original payload.
//!
//! Input: byte 0 picks the mode. Raw mode (even): the rest is the envelope. Mutation mode (odd):
//! byte 1 = payload length (mod 64), then the payload, then 8 bytes of timestamp offset and a list
//! of 4-byte edits `(op, pos_hi, pos_lo, value)`; op 0 xors, 1 sets, 2 inserts, 3 truncates,
//! 4 re-signs everything before the last 64 bytes with the sender's key, 5 re-signs with an
//! unrelated key, 6 swaps in another sender key.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use p2pd_signaling::envelope::SIGNATURE_LEN;
use p2pd_signaling::{seal, Identity, Opener};

const NOW: u64 = 1_700_000_000_000;

struct Keys {
    sender: Identity,
    recipient: Identity,
    other: Identity,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        sender: Identity::from_secret_bytes(&[1; 32]).unwrap(),
        recipient: Identity::from_secret_bytes(&[2; 32]).unwrap(),
        other: Identity::from_secret_bytes(&[3; 32]).unwrap(),
    })
}

fuzz_target!(|data: &[u8]| {
    let k = keys();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let mut opener = Opener::new(4);
        assert!(
            opener.open(&k.recipient, NOW, rest).is_err(),
            "arbitrary bytes opened"
        );
        return;
    }
    let Some((&len, rest)) = rest.split_first() else {
        return;
    };
    let len = usize::from(len % 64).min(rest.len());
    let (payload, rest) = rest.split_at(len);
    let (offset, edits) = if rest.len() >= 8 {
        let (o, e) = rest.split_at(8);
        (u64::from_le_bytes(o.try_into().unwrap()), e)
    } else {
        (0, rest)
    };
    // Timestamps around NOW, within and outside the window.
    let ts = NOW.wrapping_add(offset % 200_000).wrapping_sub(100_000);
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&offset.to_be_bytes());
    let original = seal(&k.sender, &k.recipient.public_key(), ts, nonce, payload).unwrap();
    let mut env = original.clone();
    for edit in edits.chunks_exact(4) {
        let pos = usize::from(u16::from_be_bytes([edit[1], edit[2]]));
        let value = edit[3];
        match edit[0] % 7 {
            0 => {
                if let Some(b) = env.get_mut(pos) {
                    *b ^= value.max(1);
                }
            }
            1 => {
                if let Some(b) = env.get_mut(pos) {
                    *b = value;
                }
            }
            2 => env.insert(pos.min(env.len()), value),
            3 => env.truncate(pos),
            4 | 5 => {
                if env.len() >= SIGNATURE_LEN {
                    let split = env.len() - SIGNATURE_LEN;
                    let key = if edit[0] % 7 == 4 {
                        &k.sender
                    } else {
                        &k.other
                    };
                    let sig = key.sign(&env[..split]);
                    env[split..].copy_from_slice(&sig);
                }
            }
            _ => {
                if env.len() >= 34 {
                    env[1..34].copy_from_slice(&k.other.public_key().to_bytes());
                }
            }
        }
    }
    let mut opener = Opener::new(4);
    match opener.open(&k.recipient, NOW, &env) {
        Ok(opened) => {
            assert_eq!(
                opened.payload, payload,
                "mutated envelope opened to another payload"
            );
            // Only the real sender's key can sign anything that opens.
            assert_eq!(opened.sender, k.sender.public_key());
            assert_eq!(
                opener.open(&k.recipient, NOW, &env).unwrap_err(),
                p2pd_signaling::OpenError::Replay
            );
        }
        Err(_) => {
            // An unmutated, fresh envelope must open.
            if env == original && ts.abs_diff(NOW) <= 5_000 {
                panic!("valid envelope rejected");
            }
        }
    }
});

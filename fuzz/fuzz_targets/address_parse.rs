//! Feeds `PeerAddress::from_bytes` and `PeerAddress::from_text` arbitrary input. Neither may
//! panic, and any input that parses must re-encode to exactly itself (the format is canonical),
//! with the binary and text forms agreeing.
//!
//! Input: byte 0 picks the mode. 0: the rest is a binary address. 1: a valid header (version,
//! node id, public key) followed by the rest, so the interface and broker sections are reached.
//! 2: the rest as text. 3: the header-plus-rest bytes in the text form.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use p2pd_signaling::address::TEXT_PREFIX;
use p2pd_signaling::{Identity, PeerAddress, NODE_ID_LEN, PUBLIC_KEY_LEN};

fn header() -> &'static [u8] {
    static HEADER: OnceLock<Vec<u8>> = OnceLock::new();
    HEADER.get_or_init(|| {
        let key = Identity::from_secret_bytes(&[1; 32]).unwrap().public_key();
        let mut h = vec![1u8];
        h.extend_from_slice(key.node_id().as_bytes());
        h.extend_from_slice(&key.to_bytes());
        assert_eq!(h.len(), 1 + NODE_ID_LEN + PUBLIC_KEY_LEN);
        h
    })
}

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut buf = [0u8; 3];
        buf[..chunk.len()].copy_from_slice(chunk);
        let v = (u32::from(buf[0]) << 16) | (u32::from(buf[1]) << 8) | u32::from(buf[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(A[((v >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn check_bytes(bytes: &[u8]) {
    if let Ok(addr) = PeerAddress::from_bytes(bytes) {
        assert_eq!(addr.to_bytes().unwrap(), bytes, "binary not canonical");
        let text = addr.to_text().unwrap();
        assert_eq!(text, format!("{TEXT_PREFIX}{}", b64url(bytes)));
        assert_eq!(PeerAddress::from_text(&text).unwrap(), addr);
    }
    let text = format!("{TEXT_PREFIX}{}", b64url(bytes));
    assert_eq!(
        PeerAddress::from_text(&text).ok(),
        PeerAddress::from_bytes(bytes).ok(),
        "text and binary disagree"
    );
}

fn check_text(text: &str) {
    if let Ok(addr) = PeerAddress::from_text(text) {
        assert_eq!(addr.to_text().unwrap(), text, "text not canonical");
        assert_eq!(PeerAddress::from_bytes(&addr.to_bytes().unwrap()).unwrap(), addr);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => check_bytes(rest),
        1 | 3 => {
            let mut b = header().to_vec();
            b.extend_from_slice(rest);
            if mode % 4 == 1 {
                check_bytes(&b);
            } else {
                check_text(&format!("{TEXT_PREFIX}{}", b64url(&b)));
            }
        }
        _ => {
            let s = String::from_utf8_lossy(rest);
            check_text(&s);
            check_text(&format!("{TEXT_PREFIX}{s}"));
        }
    }
});

//! Decodes arbitrary bytes with the STUN codec. On success, re-encodes every attribute into a fresh
//! message with the same header and checks that it decodes to the same attributes and the same bytes
//! (modulo padding and reserved bits, which the decoder ignores). Also checks that `is_stun`,
//! `Message::needed`, `Message::decode_prefix` and `Message::decode` agree with each other.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pd_proto::stun::Message;
use p2pd_proto::testing::codec::{check_framing, check_reencodes};

fuzz_target!(|data: &[u8]| {
    check_framing(data);
    if let Ok(msg) = Message::decode(data) {
        exercise_getters(&msg);
        check_reencodes(&msg);
    }
});

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

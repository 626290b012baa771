//! Feeds the MQTT `Decoder` (3.1.1 and 5) arbitrary bytes in arbitrary chunks. It may not panic, it
//! never buffers more than its limit, it makes progress (a full buffer always yields a packet,
//! a skip or an error), every decoded packet (MQTT 5 properties and subscription options
//! included) re-encodes to bytes that decode to the same packet, and a PUBLISH reported as
//! skipped was larger than the limit and had a non-zero packet id above QoS 0.
//!
//! Input: byte 0 picks the limit (16 << (b % 8) bytes, 16 B to 2 KiB) and, with bit 3, MQTT 5. Then chunks: a length
//! byte (0..=63) followed by that many bytes, until the input runs out.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pd_signaling::mqtt::{encode, Decoded, Decoder, Packet, Protocol, QoS};

fn check_reencode(packet: &Packet, v: Protocol, max: usize) {
    let mut wire = Vec::new();
    encode(packet, v, &mut wire).expect("a decoded packet re-encodes");
    assert!(wire.len() <= max, "re-encoded packet grew past the limit");
    let mut d = Decoder::new(v, max);
    assert_eq!(d.push(&wire), Ok(wire.len()));
    assert_eq!(d.next(), Some(Ok(Decoded::Packet(packet.clone()))));
    assert_eq!(d.next(), None);
    assert_eq!(d.buffered(), 0);
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let max = 16usize << (sel % 8);
    let v = if sel & 8 != 0 {
        Protocol::V5
    } else {
        Protocol::V311
    };
    let mut d = Decoder::new(v, max);
    let mut failed = false;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len % 64).min(tail.len());
        let (mut chunk, tail) = tail.split_at(n);
        rest = tail;
        while !chunk.is_empty() {
            let taken = match d.push(chunk) {
                Ok(t) => t,
                Err(_) => {
                    assert!(failed, "push fails only after an error");
                    return;
                }
            };
            assert!(d.buffered() <= d.capacity() && d.capacity() <= max.max(5));
            chunk = &chunk[taken..];
            let mut progressed = taken > 0;
            while let Some(r) = d.next() {
                progressed = true;
                match r {
                    Ok(Decoded::Packet(p)) => check_reencode(&p, v, max),
                    Ok(Decoded::Skipped(s)) => {
                        assert!(s.size > max && s.max == max, "skipped a PUBLISH within the limit");
                        assert_eq!(s.pkid == 0, s.qos == QoS::AtMostOnce, "packet id");
                    }
                    Err(_) => failed = true,
                }
            }
            if failed {
                assert_eq!(d.next(), None);
                return;
            }
            assert!(progressed, "full buffer without a packet or an error");
        }
    }
});

use super::*;

const V: Protocol = Protocol::V311;
const BOTH: [Protocol; 2] = [Protocol::V311, Protocol::V5];

fn all_packets() -> Vec<Packet> {
    packets_for(V)
}

fn packets_for(v: Protocol) -> Vec<Packet> {
    let refused = if v == Protocol::V5 { 0x87 } else { 5 };
    vec![
        Packet::Connect {
            client_id: "p2pd-abc".into(),
            keep_alive: 60,
            clean_session: true,
            protocol: v,
            max_packet_size: None,
        },
        Packet::Connect {
            client_id: String::new(),
            keep_alive: 0,
            clean_session: false,
            protocol: v,
            max_packet_size: None,
        },
        Packet::ConnAck {
            session_present: false,
            code: 0,
            properties: ConnAckProperties::default(),
        },
        Packet::ConnAck {
            session_present: true,
            code: refused,
            properties: ConnAckProperties::default(),
        },
        Packet::Subscribe {
            pkid: 1,
            topics: vec![
                SubscribeFilter::new("node/a", QoS::AtLeastOnce),
                SubscribeFilter::new("b/#", QoS::AtMostOnce),
                SubscribeFilter::new("c", QoS::ExactlyOnce),
            ],
        },
        Packet::SubAck {
            pkid: 1,
            codes: vec![1, 0, 2, 0x80],
        },
        Packet::Publish {
            topic: "node/a".into(),
            qos: QoS::AtMostOnce,
            pkid: 0,
            retain: false,
            dup: false,
            payload: b"00hello".to_vec(),
        },
        Packet::Publish {
            topic: "t".into(),
            qos: QoS::AtLeastOnce,
            pkid: 0xBEEF,
            retain: true,
            dup: true,
            payload: vec![0xAB; 300],
        },
        Packet::Publish {
            topic: "t".into(),
            qos: QoS::ExactlyOnce,
            pkid: 65535,
            retain: false,
            dup: false,
            payload: Vec::new(),
        },
        Packet::PubAck { pkid: 42 },
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect,
    ]
}

fn enc(p: &Packet) -> Vec<u8> {
    enc_as(p, V)
}

fn enc_as(p: &Packet, v: Protocol) -> Vec<u8> {
    let mut out = Vec::new();
    encode(p, v, &mut out).unwrap();
    out
}

/// The packet inside `decoded`; these tests never expect a skipped PUBLISH.
fn packet_only(decoded: Decoded) -> Packet {
    match decoded {
        Decoded::Packet(p) => p,
        Decoded::Skipped(s) => panic!("unexpected skip {s:?}"),
    }
}

fn decode_all(bytes: &[u8], max: usize) -> Vec<Result<Packet, CodecError>> {
    decode_all_as(bytes, max, V)
}

fn decode_all_as(bytes: &[u8], max: usize, v: Protocol) -> Vec<Result<Packet, CodecError>> {
    decode_frames(bytes, max, bytes.len().max(1), v)
        .into_iter()
        .map(|r| r.map(packet_only))
        .collect()
}

#[test]
fn round_trip_every_packet() {
    for v in BOTH {
        for p in packets_for(v) {
            let bytes = enc_as(&p, v);
            assert_eq!(
                decode_all_as(&bytes, 1024, v),
                vec![Ok(p.clone())],
                "{v:?} {p:?}"
            );
        }
    }
}

#[test]
fn v5_known_bytes_and_properties_dropped() {
    let v5 = Protocol::V5;
    assert_eq!(
        enc_as(
            &Packet::Connect {
                client_id: "id".into(),
                keep_alive: 30,
                clean_session: true,
                protocol: v5,
                max_packet_size: None,
            },
            v5
        ),
        [0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 30, 0, 0, 2, b'i', b'd']
    );
    // PUBACK with reason 0x10 (no matching subscribers) and no properties.
    assert_eq!(
        decode_all_as(&[0x40, 3, 0, 9, 0x10], 64, v5),
        vec![Ok(Packet::PubAck { pkid: 9 })]
    );
    // PUBLISH QoS 1 with Message Expiry Interval 120: accepted, property dropped.
    let publish = [
        0x32, 13, 0, 1, b't', 0, 5, 5, 0x02, 0, 0, 0, 120, b'h', b'i',
    ];
    assert_eq!(
        decode_all_as(&publish, 64, v5),
        vec![Ok(Packet::Publish {
            topic: "t".into(),
            qos: QoS::AtLeastOnce,
            pkid: 5,
            retain: false,
            dup: false,
            payload: b"hi".to_vec(),
        })]
    );
    // Topic alias 1: unsupported.
    let aliased = [0x30, 7, 0, 0, 3, 0x23, 0, 1, b'x'];
    assert!(matches!(
        &decode_all_as(&aliased, 64, v5)[..],
        [Err(CodecError::Unsupported(_))]
    ));
    // A 3.1.1 CONNECT on an MQTT 5 stream and vice versa.
    let c4 = enc(&all_packets()[0]);
    assert!(matches!(
        &decode_all_as(&c4, 64, v5)[..],
        [Err(CodecError::Malformed(_))]
    ));
    let c5 = enc_as(&packets_for(v5)[0], v5);
    assert!(matches!(
        &decode_all_as(&c5, 64, V)[..],
        [Err(CodecError::Unsupported(_))]
    ));
}

#[test]
fn known_bytes() {
    assert_eq!(enc(&Packet::PingReq), [0xC0, 0]);
    assert_eq!(enc(&Packet::PubAck { pkid: 0x0102 }), [0x40, 2, 1, 2]);
    assert_eq!(
        enc(&Packet::Connect {
            client_id: "id".into(),
            keep_alive: 30,
            clean_session: true,
            protocol: V,
            max_packet_size: None,
        }),
        [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 2, b'i', b'd']
    );
}

#[test]
fn qos1_pkid_preserved() {
    for pkid in [1u16, 2, 255, 256, 0x7FFF, 0xFFFF] {
        let p = Packet::Publish {
            topic: "x".into(),
            qos: QoS::AtLeastOnce,
            pkid,
            retain: false,
            dup: false,
            payload: b"p".to_vec(),
        };
        let got = decode_all(&enc(&p), 64);
        assert!(
            matches!(&got[..], [Ok(Packet::Publish { pkid: k, qos: QoS::AtLeastOnce, .. })] if *k == pkid)
        );
    }
}

#[test]
fn stream_split_at_every_offset() {
    for v in BOTH {
        split_at_every_offset(v);
    }
}

fn split_at_every_offset(v: Protocol) {
    let packets = packets_for(v);
    let wire: Vec<u8> = packets.iter().flat_map(|p| enc_as(p, v)).collect();
    let expected: Vec<_> = packets.iter().cloned().map(Ok).collect();
    // Whole.
    assert_eq!(decode_all_as(&wire, 1024, v), expected);
    // Two pieces, split at every offset.
    for cut in 0..=wire.len() {
        let mut d = Decoder::new(v, 1024);
        let mut got = Vec::new();
        for piece in [&wire[..cut], &wire[cut..]] {
            assert_eq!(d.push(piece), Ok(piece.len()));
            while let Some(r) = d.next() {
                got.push(r.map(packet_only));
            }
        }
        assert_eq!(got, expected, "cut at {cut}");
        assert_eq!(d.buffered(), 0);
    }
    // Byte by byte.
    let mut d = Decoder::new(v, 1024);
    let mut got = Vec::new();
    for b in &wire {
        assert_eq!(d.push(std::slice::from_ref(b)), Ok(1));
        while let Some(r) = d.next() {
            got.push(r.map(packet_only));
        }
    }
    assert_eq!(got, expected);
}

#[test]
fn small_buffer_still_decodes_many_packets() {
    // The decoder holds at most one max-size frame; push takes what fits.
    let packets = all_packets();
    let wire: Vec<u8> = packets.iter().flat_map(enc).collect();
    let biggest = packets.iter().map(|p| enc(p).len()).max().unwrap();
    let got = decode_all(&wire, biggest);
    assert_eq!(got, packets.into_iter().map(Ok).collect::<Vec<_>>());
}

/// Every output of a decoder with limit `max` fed `bytes` in chunks of `chunk`, asserting on the
/// way that it never buffers more than its capacity.
fn decode_frames(
    bytes: &[u8],
    max: usize,
    chunk: usize,
    v: Protocol,
) -> Vec<Result<Decoded, CodecError>> {
    let mut d = Decoder::new(v, max);
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk) {
        let mut rest = piece;
        loop {
            let n = match d.push(rest) {
                Ok(n) => n,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            };
            assert!(d.buffered() <= d.capacity());
            rest = &rest[n..];
            let mut got = false;
            while let Some(r) = d.next() {
                got = true;
                out.push(r);
            }
            if rest.is_empty() {
                break;
            }
            assert!(n > 0 || got, "no progress");
        }
    }
    out
}

#[test]
fn oversized_publish_is_skipped_as_it_streams_past() {
    for v in BOTH {
        let big = |qos, pkid, retain| Packet::Publish {
            topic: "p2pd/v1/target".into(),
            qos,
            pkid,
            retain,
            dup: false,
            payload: vec![0xEE; 262_144],
        };
        let before = Packet::PubAck { pkid: 3 };
        let after = Packet::Publish {
            topic: "t".into(),
            qos: QoS::AtLeastOnce,
            pkid: 4,
            retain: false,
            dup: false,
            payload: b"small".to_vec(),
        };
        let mut wire = enc_as(&before, v);
        let retained = enc_as(&big(QoS::AtLeastOnce, 0x1234, true), v);
        wire.extend_from_slice(&retained);
        let plain = enc_as(&big(QoS::AtMostOnce, 0, false), v);
        wire.extend_from_slice(&plain);
        wire.extend_from_slice(&enc_as(&after, v));
        let expected = vec![
            Ok(Decoded::Packet(before.clone())),
            Ok(Decoded::Skipped(SkippedPublish {
                size: retained.len(),
                max: 1024,
                qos: QoS::AtLeastOnce,
                pkid: 0x1234,
                retain: true,
                dup: false,
            })),
            Ok(Decoded::Skipped(SkippedPublish {
                size: plain.len(),
                max: 1024,
                qos: QoS::AtMostOnce,
                pkid: 0,
                retain: false,
                dup: false,
            })),
            Ok(Decoded::Packet(after.clone())),
        ];
        // In one piece, in network-sized chunks and byte by byte (the packet id split from its
        // topic length, every byte of the header on its own): the same result, and the buffer
        // never holds more than the limit.
        for chunk in [wire.len(), 1460, 7, 1] {
            assert_eq!(
                decode_frames(&wire, 1024, chunk, v),
                expected,
                "{v:?} chunk {chunk}"
            );
        }
    }
}

#[test]
fn oversized_frames_that_are_not_publish_are_errors() {
    let big = Packet::SubAck {
        pkid: 1,
        codes: vec![0; 300],
    };
    let bytes = enc(&big);
    let mut d = Decoder::new(V, 100);
    // Only the header and a little more are offered; the verdict needs no more.
    assert_eq!(d.push(&bytes[..10]), Ok(10));
    assert_eq!(
        d.next(),
        Some(Err(CodecError::TooLarge {
            size: bytes.len(),
            max: 100
        }))
    );
    assert_eq!(d.next(), None);
    assert_eq!(d.push(&bytes[10..]), Err(CodecError::Poisoned));
    assert_eq!(d.buffered(), 0);

    // A 256 MiB SUBACK announcement with a 64 KiB limit: rejected after 5 bytes.
    let mut d = Decoder::new(V, 65_536);
    assert_eq!(d.push(&[0x90, 0xFF, 0xFF, 0xFF, 0x7F]), Ok(5));
    assert!(matches!(d.next(), Some(Err(CodecError::TooLarge { .. }))));

    // Exactly at the limit is fine.
    let exact = bytes.len();
    assert_eq!(decode_all(&bytes, exact), vec![Ok(big)]);
}

#[test]
fn a_skipped_publish_is_still_checked() {
    // QoS 3 in the header, a topic longer than the packet, a QoS 1 packet id 0: errors, found
    // while skipping, and the decoder is poisoned.
    let mut qos1_pkid0 = vec![0x32, 0x80, 0x01, 0x00, 0x01, b't', 0x00, 0x00];
    qos1_pkid0.resize(3 + 128, 0);
    let cases: [&[u8]; 3] = [
        &[0x36, 0x80, 0x01, 0x00, 0x01],
        &[0x30, 0x80, 0x01, 0x00, 0xFF],
        &qos1_pkid0,
    ];
    for bytes in cases {
        for chunk in [bytes.len(), 1] {
            let got = decode_frames(bytes, 64, chunk, V);
            assert!(
                matches!(got.as_slice(), [Err(CodecError::Malformed(_)), ..]),
                "{bytes:x?} chunk {chunk}: {got:?}"
            );
            assert!(
                got.iter().skip(1).all(|r| *r == Err(CodecError::Poisoned)),
                "{got:?}"
            );
        }
    }
    // A 256 MiB PUBLISH announcement: skipping starts after 5 bytes, nothing is buffered.
    let mut d = Decoder::new(V, 65_536);
    assert_eq!(d.push(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F, 0, 1, b't']), Ok(8));
    assert_eq!(d.next(), None);
    assert!(d.is_skipping());
    assert_eq!(d.buffered(), 0);
    assert_eq!(d.push(&[0xAA; 100_000]), Ok(100_000));
    assert_eq!(d.buffered(), 0);
}

#[test]
fn v5_properties_and_options_round_trip() {
    let v5 = Protocol::V5;
    let connect = Packet::Connect {
        client_id: "id".into(),
        keep_alive: 30,
        clean_session: true,
        protocol: v5,
        max_packet_size: Some(65_536),
    };
    // Properties: length 5, Maximum Packet Size (0x27) = 65536.
    assert_eq!(
        enc_as(&connect, v5),
        [
            0x10, 20, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 30, 5, 0x27, 0, 1, 0, 0, 0, 2, b'i',
            b'd'
        ]
    );
    let subscribe = Packet::Subscribe {
        pkid: 7,
        topics: vec![SubscribeFilter {
            filter: "a".into(),
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend,
        }],
    };
    // Options byte: QoS 1 | No Local | Retain As Published | Retain Handling 2.
    assert_eq!(
        enc_as(&subscribe, v5),
        [0x82, 7, 0, 7, 0, 0, 1, b'a', 0b0010_1101]
    );
    let connack = Packet::ConnAck {
        session_present: false,
        code: 0,
        properties: ConnAckProperties {
            max_packet_size: Some(1_000_000),
            receive_maximum: Some(20),
            server_keep_alive: Some(60),
        },
    };
    for p in [&connect, &subscribe, &connack] {
        assert_eq!(decode_all_as(&enc_as(p, v5), 1024, v5), vec![Ok(p.clone())]);
        // MQTT 3.1.1 cannot say any of it.
        let mut out = Vec::new();
        assert!(
            matches!(encode(p, V, &mut out), Err(CodecError::Invalid(_))),
            "{p:?}"
        );
        assert!(out.is_empty());
    }
    // Zero sizes are protocol errors: refused on encode, malformed on decode.
    let zero_connect = Packet::Connect {
        client_id: "id".into(),
        keep_alive: 30,
        clean_session: true,
        protocol: v5,
        max_packet_size: Some(0),
    };
    let zero_connack = Packet::ConnAck {
        session_present: false,
        code: 0,
        properties: ConnAckProperties {
            receive_maximum: Some(0),
            ..ConnAckProperties::default()
        },
    };
    for p in [&zero_connect, &zero_connack] {
        assert!(matches!(
            encode(p, v5, &mut Vec::new()),
            Err(CodecError::Invalid(_))
        ));
    }
    let mut wire = enc_as(&connect, v5);
    wire[14..18].copy_from_slice(&[0, 0, 0, 0]);
    assert!(matches!(
        &decode_all_as(&wire, 1024, v5)[..],
        [Err(CodecError::Malformed(_))]
    ));
    // CONNACK with Receive Maximum (0x21) 0.
    assert!(matches!(
        &decode_all_as(&[0x20, 6, 0, 0, 3, 0x21, 0, 0], 1024, v5)[..],
        [Err(CodecError::Malformed(_))]
    ));
}

#[test]
fn garbage_is_typed_error() {
    let cases: &[&[u8]] = &[
        &[0x00, 0x00],                         // packet type 0
        &[0xF0, 0x00],                         // packet type 15
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], // 5-byte remaining length
        &[0x20, 0x00],                         // CONNACK without body
        &[0x20, 0x02, 0x00, 0x09],             // bad CONNACK code
        &[0x40, 0x02, 0x00, 0x00],             // PUBACK pkid 0
        &[0x32, 0x03, 0x00, 0x01, b't'],       // QoS 1 without pkid
        &[0x36, 0x03, 0x00, 0x01, b't'],       // QoS 3
        &[0x30, 0x03, 0x00, 0x05, b't'],       // topic longer than the packet
        &[0x30, 0x03, 0x00, 0x01, 0xFF],       // topic not UTF-8
        &[0x82, 0x02, 0x00, 0x01],             // SUBSCRIBE without filters
        &[0x90, 0x02, 0x00, 0x01],             // SUBACK without codes
        &[0x90, 0x03, 0x00, 0x01, 0x07],       // bad SUBACK code
        &[0x10, 0x02, 0x00, 0x04],             // truncated CONNECT
        &[0x62, 0x02, 0x00, 0x01],             // PUBREL: unsupported
    ];
    for bytes in cases {
        let got = decode_all(bytes, 1024);
        assert!(
            matches!(
                &got[..],
                [Err(CodecError::Malformed(_) | CodecError::Unsupported(_))]
            ),
            "{bytes:x?}: {got:?}"
        );
    }
}

#[test]
fn encode_rejects_invalid_and_leaves_output_untouched() {
    let long = "x".repeat(65_536);
    let bad = [
        Packet::Publish {
            topic: long.clone(),
            qos: QoS::AtMostOnce,
            pkid: 0,
            retain: false,
            dup: false,
            payload: Vec::new(),
        },
        Packet::Publish {
            topic: "t".into(),
            qos: QoS::AtMostOnce,
            pkid: 3,
            retain: false,
            dup: false,
            payload: Vec::new(),
        },
        Packet::Publish {
            topic: "t".into(),
            qos: QoS::AtLeastOnce,
            pkid: 0,
            retain: false,
            dup: false,
            payload: Vec::new(),
        },
        Packet::Subscribe {
            pkid: 1,
            topics: Vec::new(),
        },
        Packet::Subscribe {
            pkid: 0,
            topics: vec![SubscribeFilter::new("t", QoS::AtLeastOnce)],
        },
        Packet::SubAck {
            pkid: 1,
            codes: vec![3],
        },
        Packet::ConnAck {
            session_present: false,
            code: 6,
            properties: ConnAckProperties::default(),
        },
        Packet::PubAck { pkid: 0 },
        Packet::Connect {
            client_id: long,
            keep_alive: 1,
            clean_session: true,
            protocol: V,
            max_packet_size: None,
        },
        Packet::Connect {
            client_id: "a".into(),
            keep_alive: 1,
            clean_session: true,
            protocol: Protocol::V5,
            max_packet_size: None,
        },
    ];
    for p in &bad {
        let mut out = vec![9];
        assert!(
            matches!(encode(p, V, &mut out), Err(CodecError::Invalid(_))),
            "{p:?}"
        );
        assert_eq!(out, [9]);
    }
}

#[test]
fn v5_rejects_codes_outside_its_space() {
    let mut out = Vec::new();
    for p in [
        Packet::ConnAck {
            session_present: false,
            code: 5,
            properties: ConnAckProperties::default(),
        },
        Packet::SubAck {
            pkid: 1,
            codes: vec![0x81],
        },
    ] {
        assert!(matches!(
            encode(&p, Protocol::V5, &mut out),
            Err(CodecError::Invalid(_))
        ));
    }
    assert!(out.is_empty());
}

#[test]
fn prefix_of_valid_stream_never_errors() {
    let wire: Vec<u8> = all_packets().iter().flat_map(enc).collect();
    for end in 0..=wire.len() {
        for r in decode_all(&wire[..end], 1024) {
            assert!(r.is_ok(), "prefix {end}");
        }
    }
}

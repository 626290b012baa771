//! Tests of the NTP codec and the reply checks.

use proptest::prelude::*;

use super::*;

fn sample_packet() -> NtpPacket {
    NtpPacket {
        leap: 0,
        version: 4,
        mode: 4,
        stratum: 2,
        poll: 6,
        precision: -23,
        root_delay: 0x0000_0800,
        root_dispersion: 0x0000_0400,
        reference_id: [192, 0, 2, 1],
        reference_ts: 0xe8f0_0000_1234_5678,
        originate_ts: 0x1122_3344_5566_7788,
        receive_ts: 0xe8f0_0001_8000_0000,
        transmit_ts: 0xe8f0_0001_8000_1000,
    }
}

#[test]
fn request_is_48_bytes_v4_mode3_with_the_nonce_only() {
    let mut buf = [0xffu8; 64];
    let len = NtpPacket::client_request(0x0102_0304_0506_0708)
        .encode(&mut buf)
        .unwrap();
    assert_eq!(len, PACKET_LEN);
    assert_eq!(buf[0], 0b00_100_011); // LI 0, VN 4, mode 3
    assert!(buf[1..40].iter().all(|b| *b == 0));
    assert_eq!(&buf[40..48], &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(buf[48], 0xff, "nothing written past the header");
}

#[test]
fn packet_round_trips_field_by_field() {
    let p = sample_packet();
    let mut buf = [0u8; PACKET_LEN];
    assert_eq!(p.encode(&mut buf), Some(PACKET_LEN));
    assert_eq!(NtpPacket::decode(&buf), Ok(p));
    assert_eq!(buf[2], 6);
    assert_eq!(buf[3], 0xe9); // -23
    assert_eq!(&buf[4..8], &[0, 0, 8, 0]);
    assert_eq!(&buf[12..16], &[192, 0, 2, 1]);
}

#[test]
fn every_truncation_is_too_short() {
    let mut buf = [0u8; PACKET_LEN];
    let _ = sample_packet().encode(&mut buf);
    for len in 0..PACKET_LEN {
        assert_eq!(NtpPacket::decode(&buf[..len]), Err(TooShort { len }));
    }
    let mut small = [0u8; PACKET_LEN - 1];
    assert_eq!(sample_packet().encode(&mut small), None);
}

#[test]
fn trailing_bytes_are_ignored() {
    let mut buf = [0u8; 68]; // header + key id + 16-byte digest
    let _ = sample_packet().encode(&mut buf);
    buf[48..].fill(0xab);
    assert_eq!(NtpPacket::decode(&buf), Ok(sample_packet()));
}

proptest! {
    #[test]
    fn any_48_bytes_round_trip(bytes in proptest::collection::vec(any::<u8>(), PACKET_LEN)) {
        let p = NtpPacket::decode(&bytes).unwrap();
        let mut out = [0u8; PACKET_LEN];
        prop_assert_eq!(p.encode(&mut out), Some(PACKET_LEN));
        prop_assert_eq!(&out[..], &bytes[..]);
    }

    #[test]
    fn unix_ntp_conversion_round_trips(unix_ns in 0i128..4_000_000_000_000_000_000i128) {
        let ts = unix_nanos_to_ntp(unix_ns);
        prop_assert_eq!(ntp_to_unix_nanos(ts, unix_ns), unix_ns);
    }
}

#[test]
fn ntp_era_is_chosen_near_our_clock() {
    // 2036-02-07 06:28:16 UTC is the start of era 1: NTP seconds wrap to 0.
    let era1_unix_s: i128 = (1 << 32) - 2_208_988_800;
    let just_after = (era1_unix_s + 10) * 1_000_000_000;
    let ts = unix_nanos_to_ntp(just_after);
    assert_eq!(ts >> 32, 10);
    assert_eq!(
        ntp_to_unix_nanos(ts, just_after - 20_000_000_000),
        just_after
    );
    let before = (era1_unix_s - 10) * 1_000_000_000;
    assert_eq!(
        ntp_to_unix_nanos(unix_nanos_to_ntp(before), just_after),
        before
    );
}

#[test]
fn short_format_converts_to_nanoseconds() {
    assert_eq!(short_to_nanos(0), 0);
    assert_eq!(short_to_nanos(0x0001_0000), 1_000_000_000);
    assert_eq!(short_to_nanos(0x0000_8000), 500_000_000);
    assert_eq!(short_to_nanos(1), 15_259); // 15258.789 rounded up
}

#[test]
fn header_checks_reject_every_wrong_mode_and_version() {
    for mode in 0..8u8 {
        let p = NtpPacket {
            mode,
            ..sample_packet()
        };
        let expected = if mode == 4 {
            Ok(())
        } else {
            Err(RejectReason::NotServerMode { mode })
        };
        assert_eq!(check_header(&p), expected, "mode {mode}");
    }
    for version in 0..8u8 {
        let p = NtpPacket {
            version,
            ..sample_packet()
        };
        let expected = if version == 3 || version == 4 {
            Ok(())
        } else {
            Err(RejectReason::UnsupportedVersion { version })
        };
        assert_eq!(check_header(&p), expected, "version {version}");
    }
}

#[test]
fn reply_checks_reject_every_invalid_field() {
    let max = 1_500_000_000;
    let ok = sample_packet();
    assert_eq!(check_reply(&ok, max), Ok(()));
    let cases: Vec<(NtpPacket, RejectReason)> = vec![
        (
            NtpPacket {
                stratum: 0,
                reference_id: *b"RATE",
                ..ok
            },
            RejectReason::Kiss(KissCode::RATE),
        ),
        (
            NtpPacket { leap: 3, ..ok },
            RejectReason::Unsynchronized {
                leap: 3,
                stratum: 2,
            },
        ),
        (
            NtpPacket { stratum: 16, ..ok },
            RejectReason::Unsynchronized {
                leap: 0,
                stratum: 16,
            },
        ),
        (
            NtpPacket { stratum: 255, ..ok },
            RejectReason::Unsynchronized {
                leap: 0,
                stratum: 255,
            },
        ),
        (
            NtpPacket {
                transmit_ts: 0,
                ..ok
            },
            RejectReason::ZeroTransmit,
        ),
        (
            NtpPacket {
                receive_ts: 0,
                ..ok
            },
            RejectReason::ZeroReceive,
        ),
        (
            NtpPacket {
                transmit_ts: ok.receive_ts - 1,
                ..ok
            },
            RejectReason::TransmitBeforeReceive,
        ),
        (
            NtpPacket {
                root_dispersion: 0x0002_0000,
                ..ok
            },
            RejectReason::RootDistanceTooLarge {
                root_distance_ns: 2_000_000_000 + short_to_nanos(0x800).div_ceil(2),
            },
        ),
        (
            NtpPacket { mode: 5, ..ok },
            RejectReason::NotServerMode { mode: 5 },
        ),
    ];
    for (packet, reason) in cases {
        assert_eq!(check_reply(&packet, max), Err(reason), "{packet:?}");
    }
    // Leap indicators 1 and 2 only announce a leap second.
    for leap in 1..=2 {
        assert_eq!(check_reply(&NtpPacket { leap, ..ok }, max), Ok(()));
    }
    // T3 = T2 is a server that answers within the same tick.
    let same = NtpPacket {
        transmit_ts: ok.receive_ts,
        ..ok
    };
    assert_eq!(check_reply(&same, max), Ok(()));
}

#[test]
fn kiss_codes_print_as_text() {
    assert_eq!(KissCode::DENY.to_string(), "DENY");
    assert_eq!(KissCode::RSTR.as_str(), Some("RSTR"));
    assert_eq!(KissCode([0, 1, 2, 0xff]).as_str(), None);
    assert_eq!(format!("{:?}", KissCode::RATE), "KissCode(\"RATE\")");
}

//! Tests of the address format: round trips, canonical encodings, every rejection, and properties.

use super::base64url::{b64_value, B64};
use super::*;
use crate::Identity;
use proptest::prelude::*;

fn key(b: u8) -> PublicKey {
    Identity::from_secret_bytes(&[b; 32]).unwrap().public_key()
}

fn sample() -> PeerAddress {
    PeerAddress {
        public_key: key(1),
        interfaces: vec![
            Interface {
                label: InterfaceLabel::Name("eth0".into()),
                nat: Some(NatInfo {
                    mapping: Mapping::AddressAndPortDependent,
                    filtering: Filtering::AddressDependent,
                    allocation: PortAllocation::FixedOffset { offset: -3 },
                }),
                endpoints: vec![
                    Endpoint::new("198.51.100.7".parse().unwrap(), 40000),
                    Endpoint::new("192.168.1.2".parse().unwrap(), 40000),
                ],
            },
            Interface {
                label: InterfaceLabel::Index(3),
                nat: None,
                endpoints: vec![Endpoint::new("2001:db8::1".parse().unwrap(), 5000)],
            },
        ],
        brokers: vec![BrokerId(1), BrokerId(0xdead_beef)],
    }
}

/// Offset of interface 0's flags byte.
const IFACES: usize = 1 + NODE_ID_LEN + PUBLIC_KEY_LEN + 1;

#[test]
fn sample_round_trips() {
    let a = sample();
    let bytes = a.to_bytes().unwrap();
    assert_eq!(PeerAddress::from_bytes(&bytes).unwrap(), a);
    let text = a.to_text().unwrap();
    assert!(text.starts_with(TEXT_PREFIX));
    assert_eq!(PeerAddress::from_text(&text).unwrap(), a);
    assert_eq!(text.parse::<PeerAddress>().unwrap(), a);
    assert_eq!(a.to_string(), text);
    assert_eq!(bytes[0], ADDRESS_VERSION);
    assert_eq!(&bytes[1..21], a.node_id().as_bytes());
}

#[test]
fn every_truncation_is_truncated() {
    let bytes = sample().to_bytes().unwrap();
    for n in 0..bytes.len() {
        assert_eq!(
            PeerAddress::from_bytes(&bytes[..n]),
            Err(AddressError::Truncated),
            "length {n}"
        );
    }
}

#[test]
fn trailing_and_version() {
    let mut bytes = sample().to_bytes().unwrap();
    bytes.push(0);
    assert_eq!(
        PeerAddress::from_bytes(&bytes),
        Err(AddressError::TrailingBytes)
    );
    bytes.pop();
    bytes[0] = 2;
    assert_eq!(
        PeerAddress::from_bytes(&bytes),
        Err(AddressError::UnsupportedVersion(2))
    );
}

#[test]
fn key_and_node_id() {
    let good = sample().to_bytes().unwrap();
    let mut b = good.clone();
    b[1] ^= 1;
    assert_eq!(
        PeerAddress::from_bytes(&b),
        Err(AddressError::NodeIdMismatch)
    );
    // Another valid key with the old node id.
    let mut b = good.clone();
    b[21..54].copy_from_slice(&key(2).to_bytes());
    assert_eq!(
        PeerAddress::from_bytes(&b),
        Err(AddressError::NodeIdMismatch)
    );
    // Uncompressed-style prefix / not on the curve.
    for prefix in [0x04, 0x00, 0x05] {
        let mut b = good.clone();
        b[21] = prefix;
        assert_eq!(PeerAddress::from_bytes(&b), Err(AddressError::BadKey));
    }
    let mut b = good;
    b[22..54].fill(0xff);
    assert_eq!(PeerAddress::from_bytes(&b), Err(AddressError::BadKey));
}

#[test]
fn flags_family_port_nat() {
    let good = sample().to_bytes().unwrap();
    // Interface 0: flags 2|4 (name + nat), len 4 "eth0", nat 3 bytes + 4 offset, count, endpoints.
    assert_eq!(good[IFACES], 0b110);
    for bad in [0b1110, 0x80, 0b111] {
        let mut b = good.clone();
        b[IFACES] = bad;
        assert_eq!(
            PeerAddress::from_bytes(&b),
            Err(AddressError::Reserved),
            "{bad:#b}"
        );
    }
    let nat = IFACES + 1 + 1 + 4;
    for off in [0, 1, 2] {
        let mut b = good.clone();
        b[nat + off] = 9;
        assert_eq!(PeerAddress::from_bytes(&b), Err(AddressError::BadNat));
    }
    let count = nat + 3 + 4;
    assert_eq!(good[count], 2);
    let mut b = good.clone();
    b[count + 1] = 5;
    assert_eq!(PeerAddress::from_bytes(&b), Err(AddressError::BadFamily(5)));
    let mut b = good.clone();
    b[count + 6..count + 8].fill(0);
    assert_eq!(PeerAddress::from_bytes(&b), Err(AddressError::BadPort));
    let mut b = good.clone();
    b[count] = 9;
    assert_eq!(
        PeerAddress::from_bytes(&b),
        Err(AddressError::TooMany {
            what: Part::Endpoint
        })
    );
    // Name not UTF-8 / with a control character / empty.
    let mut b = good.clone();
    b[IFACES + 2] = 0xff;
    assert_eq!(PeerAddress::from_bytes(&b), Err(AddressError::BadName));
    let mut b = good.clone();
    b[IFACES + 2] = b'\n';
    assert_eq!(PeerAddress::from_bytes(&b), Err(AddressError::BadName));
    let mut b = good;
    b[IFACES + 1] = 0;
    b.drain(IFACES + 2..IFACES + 6);
    assert_eq!(PeerAddress::from_bytes(&b), Err(AddressError::BadName));
}

#[test]
fn value_rules_on_encode_and_decode() {
    let check = |a: PeerAddress, e: AddressError| {
        assert_eq!(a.to_bytes(), Err(e));
        assert_eq!(a.to_text(), Err(e));
    };
    let mut a = sample();
    a.brokers.push(BrokerId(1));
    check(a, AddressError::Duplicate { what: Part::Broker });
    let mut a = sample();
    let e = a.interfaces[0].endpoints[0];
    a.interfaces[0].endpoints.push(e);
    check(
        a,
        AddressError::Duplicate {
            what: Part::Endpoint,
        },
    );
    let mut a = sample();
    let i = a.interfaces[1].clone();
    a.interfaces.push(i);
    check(
        a,
        AddressError::Duplicate {
            what: Part::Interface,
        },
    );
    // Unnamed interfaces may repeat.
    let mut a = sample();
    for iface in &mut a.interfaces {
        iface.label = InterfaceLabel::Unnamed;
    }
    let i = a.interfaces[1].clone();
    a.interfaces.push(i);
    assert!(a.to_bytes().is_ok());
    let mut a = sample();
    a.interfaces[0].endpoints[0].port = 0;
    check(a, AddressError::BadPort);
    let mut a = sample();
    a.interfaces[0].label = InterfaceLabel::Name("x".repeat(MAX_NAME_LEN + 1));
    check(a, AddressError::BadName);
    let mut a = sample();
    a.interfaces[0].nat = Some(NatInfo {
        mapping: Mapping::EndpointIndependent,
        filtering: Filtering::EndpointIndependent,
        allocation: PortAllocation::Sequential { stride: 0 },
    });
    check(a, AddressError::BadNat);

    // The same rules on decode: splice duplicates into valid encodings.
    let mut a = sample();
    a.brokers = vec![BrokerId(5)];
    let mut b = a.to_bytes().unwrap();
    let len = b.len();
    b[len - 9] = 2;
    b.extend_from_slice(&5u64.to_be_bytes());
    assert_eq!(
        PeerAddress::from_bytes(&b),
        Err(AddressError::Duplicate { what: Part::Broker })
    );
    let mut a = sample();
    a.interfaces.truncate(1);
    a.interfaces[0].endpoints.truncate(1);
    a.brokers.clear();
    let mut b = a.to_bytes().unwrap();
    // Endpoint: 1 + 4 + 2 bytes, then the broker count.
    let ep = b[b.len() - 8..b.len() - 1].to_vec();
    let count = b.len() - 9;
    assert_eq!(b[count], 1);
    b[count] = 2;
    b.splice(b.len() - 1..b.len() - 1, ep);
    assert_eq!(
        PeerAddress::from_bytes(&b),
        Err(AddressError::Duplicate {
            what: Part::Endpoint
        })
    );
    let mut a = sample();
    a.interfaces[0] = a.interfaces[1].clone();
    a.interfaces[0].label = InterfaceLabel::Index(4);
    let mut b = a.to_bytes().unwrap();
    b[IFACES + 4] = 3;
    assert_eq!(
        PeerAddress::from_bytes(&b),
        Err(AddressError::Duplicate {
            what: Part::Interface
        })
    );
}

fn big() -> PeerAddress {
    let iface = |n: u32| Interface {
        label: InterfaceLabel::Index(n),
        nat: None,
        endpoints: (0..MAX_ENDPOINTS as u16)
            .map(|p| Endpoint::new("2001:db8::1".parse().unwrap(), p + 1))
            .collect(),
    };
    PeerAddress {
        public_key: key(1),
        interfaces: (0..MAX_INTERFACES as u32).map(iface).collect(),
        brokers: (0..MAX_BROKERS as u64).map(BrokerId).collect(),
    }
}

#[test]
fn caps() {
    // At most 8 × (6 + 8 × 19) = 1264 bytes of interfaces: over the size cap.
    assert_eq!(big().to_bytes(), Err(AddressError::TooLarge));
    let mut a = big();
    a.interfaces.truncate(5);
    let bytes = a.to_bytes().unwrap();
    assert!(bytes.len() <= MAX_ADDRESS_LEN);
    assert_eq!(PeerAddress::from_bytes(&bytes).unwrap(), a);
    let text = a.to_text().unwrap();
    assert!(text.len() <= MAX_TEXT_LEN);
    assert_eq!(PeerAddress::from_text(&text).unwrap(), a);

    let mut a = sample();
    a.brokers = (0..=MAX_BROKERS as u64).map(BrokerId).collect();
    assert_eq!(
        a.to_bytes(),
        Err(AddressError::TooMany { what: Part::Broker })
    );
    let mut a = sample();
    a.interfaces = (0..=MAX_INTERFACES as u32)
        .map(|i| Interface {
            label: InterfaceLabel::Index(i),
            nat: None,
            endpoints: vec![],
        })
        .collect();
    assert_eq!(
        a.to_bytes(),
        Err(AddressError::TooMany {
            what: Part::Interface
        })
    );
    let mut a = sample();
    a.interfaces[1].endpoints = (1..=MAX_ENDPOINTS as u16 + 1)
        .map(|p| Endpoint::new("192.0.2.1".parse().unwrap(), p))
        .collect();
    assert_eq!(
        a.to_bytes(),
        Err(AddressError::TooMany {
            what: Part::Endpoint
        })
    );

    // Decoder: count bytes over the cap, oversized input.
    let good = sample().to_bytes().unwrap();
    let mut b = good.clone();
    b[IFACES - 1] = MAX_INTERFACES as u8 + 1;
    assert_eq!(
        PeerAddress::from_bytes(&b),
        Err(AddressError::TooMany {
            what: Part::Interface
        })
    );
    let mut b = good.clone();
    let bc = b.len() - 17;
    assert_eq!(b[bc], 2);
    b[bc] = MAX_BROKERS as u8 + 1;
    assert_eq!(
        PeerAddress::from_bytes(&b),
        Err(AddressError::TooMany { what: Part::Broker })
    );
    let mut b = good;
    b.resize(MAX_ADDRESS_LEN + 1, 0);
    assert_eq!(PeerAddress::from_bytes(&b), Err(AddressError::TooLarge));
    let long = format!("{TEXT_PREFIX}{}", "A".repeat(MAX_TEXT_LEN));
    assert_eq!(PeerAddress::from_text(&long), Err(AddressError::TooLarge));
}

#[test]
fn text_is_strict() {
    let text = sample().to_text().unwrap();
    let body = &text[TEXT_PREFIX.len()..];
    for bad in [
        format!("p2pd2:{body}"),
        format!("P2PD1:{body}"),
        body.to_string(),
        format!("{text}="),
        format!("{text} "),
        format!("{TEXT_PREFIX}A"), // dangling single character
        format!("{text}{}", "A".repeat(5 - body.len() % 4)),
        text.replace('-', "+"),
        format!(" {text}"),
    ] {
        if bad != text {
            assert_eq!(
                PeerAddress::from_text(&bad),
                Err(AddressError::BadText),
                "{bad}"
            );
        }
    }
    // Non-zero unused bits: the binary length is 1 + 20 + 33 + ... ; find the last char.
    let bytes = sample().to_bytes().unwrap();
    assert_ne!(bytes.len() % 3, 0, "sample must leave unused bits");
    let mut t = text.clone().into_bytes();
    let last = t.len() - 1;
    let v = b64_value(t[last]).unwrap();
    t[last] = B64[(v | 1) as usize];
    assert_eq!(
        PeerAddress::from_text(std::str::from_utf8(&t).unwrap()),
        Err(AddressError::BadText)
    );
    // A wrong binary behind a valid text gives the binary error.
    let mut b = bytes;
    b[0] = 7;
    let mut t = TEXT_PREFIX.to_string();
    base64url_encode(&b, &mut t);
    assert_eq!(
        PeerAddress::from_text(&t),
        Err(AddressError::UnsupportedVersion(7))
    );
}

#[test]
fn base64_matches_rfc4648() {
    for (raw, enc) in [
        (&b""[..], ""),
        (b"f", "Zg"),
        (b"fo", "Zm8"),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg"),
        (b"fooba", "Zm9vYmE"),
        (b"foobar", "Zm9vYmFy"),
        (&[0xfb, 0xff, 0xfe], "-__-"),
    ] {
        let mut s = String::new();
        base64url_encode(raw, &mut s);
        assert_eq!(s, enc);
        assert_eq!(base64url_decode(enc).unwrap(), raw);
    }
}

fn arb_alloc() -> impl Strategy<Value = PortAllocation> {
    prop_oneof![
        Just(PortAllocation::Preserving),
        any::<i32>().prop_map(|offset| PortAllocation::FixedOffset { offset }),
        (1..=u16::MAX).prop_map(|stride| PortAllocation::Sequential { stride }),
        any::<u16>().prop_map(|stride| PortAllocation::LocalPortDependent { stride }),
        Just(PortAllocation::Random),
    ]
}

fn arb_nat() -> impl Strategy<Value = Option<NatInfo>> {
    let m = prop_oneof![
        Just(Mapping::EndpointIndependent),
        Just(Mapping::AddressDependent),
        Just(Mapping::AddressAndPortDependent)
    ];
    let f = prop_oneof![
        Just(Filtering::EndpointIndependent),
        Just(Filtering::AddressDependent),
        Just(Filtering::AddressAndPortDependent)
    ];
    proptest::option::of(
        (m, f, arb_alloc()).prop_map(|(mapping, filtering, allocation)| NatInfo {
            mapping,
            filtering,
            allocation,
        }),
    )
}

fn arb_endpoint() -> impl Strategy<Value = Endpoint> {
    let ip = prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(o.into())),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(o.into())),
    ];
    (ip, 1..=u16::MAX).prop_map(|(ip, port)| Endpoint::new(ip, port))
}

fn arb_interface(i: usize) -> impl Strategy<Value = Interface> {
    let label = prop_oneof![
        Just(InterfaceLabel::Unnamed),
        any::<u16>().prop_map(move |n| InterfaceLabel::Index(u32::from(n) << 3 | i as u32)),
        "[a-zA-Zé0-9 ._-]{0,8}".prop_map(move |s| InterfaceLabel::Name(format!("{s}{i}"))),
    ];
    let eps = proptest::collection::vec(arb_endpoint(), 0..=4).prop_map(|mut v| {
        let mut seen = Vec::new();
        v.retain(|e| {
            let new = !seen.contains(e);
            seen.push(*e);
            new
        });
        v
    });
    (label, arb_nat(), eps).prop_map(|(label, nat, endpoints)| Interface {
        label,
        nat,
        endpoints,
    })
}

fn arb_address() -> impl Strategy<Value = PeerAddress> {
    let ifaces =
        (0..=MAX_INTERFACES).prop_flat_map(|n| (0..n).map(arb_interface).collect::<Vec<_>>());
    let brokers = proptest::collection::btree_set(any::<u64>(), 0..=MAX_BROKERS)
        .prop_map(|s| s.into_iter().rev().map(BrokerId).collect::<Vec<_>>());
    (1u8..=200, ifaces, brokers).prop_map(|(k, interfaces, brokers)| PeerAddress {
        public_key: key(k),
        interfaces,
        brokers,
    })
}

proptest! {
    #[test]
    fn round_trips(a in arb_address()) {
        match a.to_bytes() {
            Ok(bytes) => {
                prop_assert!(bytes.len() <= MAX_ADDRESS_LEN);
                prop_assert_eq!(PeerAddress::from_bytes(&bytes)?, a.clone());
                let text = a.to_text()?;
                prop_assert_eq!(PeerAddress::from_text(&text)?, a);
                for n in 0..bytes.len() {
                    prop_assert_eq!(PeerAddress::from_bytes(&bytes[..n]), Err(AddressError::Truncated));
                }
            }
            Err(e) => prop_assert_eq!(e, AddressError::TooLarge),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_are_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..200), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = PeerAddress::from_bytes(&bytes);
        // A valid header makes deeper parsing reachable.
        let mut b = sample().to_bytes().unwrap()[..IFACES - 1].to_vec();
        b.extend_from_slice(&tail);
        if let Ok(a) = PeerAddress::from_bytes(&b) {
            prop_assert_eq!(a.to_bytes()?, b);
        }
    }
}

//! The connection ladder's decision table for every pair of NAT behaviours the planner
//! distinguishes: which paths a node tries (phase A direct / reverse, phase B punch, else the
//! relay), from its own behaviour and the peer's address alone.
//!
//! `cargo run -p p2pd-node --example ladder_table`
// Example code: the package's strict lints (Cargo.toml `[lints]`) guard its library code.
#![allow(clippy::expect_used, clippy::arithmetic_side_effects)]

use p2pd_nat::{Filtering, Mapping, PortAllocation};
use p2pd_node::ladder::{plan, SelfView, OPEN};
use p2pd_signaling::{Endpoint, Identity, Interface, InterfaceLabel, NatInfo, PeerAddress};

fn kinds() -> Vec<(&'static str, NatInfo)> {
    let nat = |mapping, filtering, allocation| NatInfo {
        mapping,
        filtering,
        allocation,
    };
    vec![
        ("open", OPEN),
        (
            "full cone",
            nat(
                Mapping::EndpointIndependent,
                Filtering::EndpointIndependent,
                PortAllocation::Preserving,
            ),
        ),
        (
            "restricted",
            nat(
                Mapping::EndpointIndependent,
                Filtering::AddressDependent,
                PortAllocation::Preserving,
            ),
        ),
        (
            "port-restricted",
            nat(
                Mapping::EndpointIndependent,
                Filtering::AddressAndPortDependent,
                PortAllocation::Preserving,
            ),
        ),
        (
            "symmetric seq",
            nat(
                Mapping::AddressAndPortDependent,
                Filtering::AddressAndPortDependent,
                PortAllocation::Sequential { stride: 1 },
            ),
        ),
        (
            "symmetric random",
            nat(
                Mapping::AddressAndPortDependent,
                Filtering::AddressAndPortDependent,
                PortAllocation::Random,
            ),
        ),
    ]
}

fn main() {
    let peer_key = Identity::from_secret_bytes(&[2; 32])
        .expect("key")
        .public_key();
    println!(
        "{:<18} {:<18} {:<8} {:<8} {:<6} then",
        "we", "peer", "direct", "reverse", "punch"
    );
    let mut relay_only = 0;
    for (our_name, ours) in kinds() {
        for (peer_name, theirs) in kinds() {
            let peer = PeerAddress {
                public_key: peer_key,
                interfaces: vec![Interface {
                    label: InterfaceLabel::Unnamed,
                    nat: Some(theirs),
                    endpoints: vec![
                        Endpoint::new("203.0.113.2".parse().expect("ip"), 4000),
                        Endpoint::new("10.1.0.2".parse().expect("ip"), 4000),
                    ],
                }],
                brokers: vec![],
            };
            let me = SelfView {
                nat: Some(ours),
                external_ips: vec!["203.0.113.1".parse().expect("ip")],
            };
            let p = plan(&me, &peer);
            let yes = |b: bool| if b { "yes" } else { "-" };
            if p.direct.is_empty() && !p.reverse && !p.punch {
                relay_only += 1;
            }
            println!(
                "{our_name:<18} {peer_name:<18} {:<8} {:<8} {:<6} relay",
                yes(!p.direct.is_empty()),
                yes(p.reverse),
                yes(p.punch)
            );
        }
    }
    // Random against a port-restricted or symmetric peer (both ways) has no path but the relay.
    assert_eq!(relay_only, 5, "pairs that need the relay");
    println!("{relay_only} pairs need the relay");
}

//! The connection ladder's decision table: from our view of ourselves and the peer's address,
//! which paths are worth trying, and in which phase. A pure function, tested against the table
//! below (and in simulation against an oracle written apart from it, from the NAT kinds alone).
//!
//! | condition (peer P, us U)                                       | phase A: direct        | phase A: reverse | phase B: punch | phase C |
//! |----------------------------------------------------------------|------------------------|------------------|----------------|---------|
//! | P and U share an external IP (one NAT, one LAN)                | P's local endpoints    | —                | —              | relay   |
//! | P's filtering is endpoint-independent (open host, full cone)   | P's external endpoints | —                | —              | relay   |
//! | else U's filtering is endpoint-independent                     | —                      | yes              | —              | relay   |
//! | else both NATs known and the pair is punchable                 | —                      | —                | yes            | relay   |
//! | else (random versus random, unknown behaviour)                 | —                      | —                | —              | relay   |
//!
//! Rows are not exclusive: both direct rows add their endpoints, and reverse is asked for
//! whenever we are reachable and P is not (so a peer behind a filtering NAT still reaches an
//! open host at once). A pair is **punchable** when a simultaneous open can meet: both
//! mappings predictable, or one predictable and its filtering lets the other's SYN in from an
//! unpredicted port (endpoint-independent, or address-dependent once its own SYN went to the
//! peer's IP). A mapping is **predictable** when it is
//! endpoint-independent (the probe's mapping is the punch's) or its port allocation is not
//! random (the planner predicts the next port). Phase A's budget (3 s) only bounds the wait
//! before a later phase: for a pair with nothing after phase A (no punch, and no relay yet) its
//! attempts keep their own handshake deadline instead, so a SYN retransmitted over a lossy link
//! is not cut short for nothing. Phase C is the relay: always the last resort, reported as
//! skipped when no relay is configured. The connecting side allocates (on its own configured
//! relays); when the plan has nothing before phase C (the last row) the allocation starts with
//! phase A, else with the punch (released unused if another path wins), and never for a pair
//! whose phase A works.

use core::net::{IpAddr, SocketAddr};

use p2pd_nat::{Filtering, Mapping, PortAllocation};
use p2pd_signaling::{NatInfo, PeerAddress};

/// What a node knows of itself for planning: its external IPs and NAT behaviour.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelfView {
    /// Our NAT behaviour toward the internet (open host: endpoint-independent mapping and
    /// filtering with preserved ports), `None` while unknown.
    pub nat: Option<NatInfo>,
    /// Our external IPs (the STUN servers' view of our listener).
    pub external_ips: Vec<IpAddr>,
}

/// The paths worth trying, by phase.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Phase A: endpoints of the peer to dial, in order (same-LAN endpoints first).
    pub direct: Vec<SocketAddr>,
    /// Phase A: ask the peer to dial us (we are reachable, it is not).
    pub reverse: bool,
    /// Phase B: punch (both NATs known and the pair punchable, and no direct path).
    pub punch: bool,
}

/// Whether a NAT's mapping can be predicted for a punch.
pub fn predictable(nat: &NatInfo) -> bool {
    nat.mapping == Mapping::EndpointIndependent || nat.allocation != PortAllocation::Random
}

/// Whether a NAT lets in a connection nobody inside asked for (toward a mapped port).
pub fn reachable(nat: &NatInfo) -> bool {
    nat.filtering == Filtering::EndpointIndependent
}

/// Whether a NAT lets the peer's SYN in during a punch, from whatever port the peer's NAT
/// gives it: our own SYN toward the peer's IP opens an address-dependent filter for that IP.
pub fn opens_to_peer(nat: &NatInfo) -> bool {
    matches!(
        nat.filtering,
        Filtering::EndpointIndependent | Filtering::AddressDependent
    )
}

/// Whether a TCP punch between these two NATs can work (see the [module docs](self)).
pub fn punchable(ours: &NatInfo, theirs: &NatInfo) -> bool {
    let both = predictable(ours) && predictable(theirs);
    let one_side_predictable_and_open = (predictable(ours) && opens_to_peer(ours))
        || (predictable(theirs) && opens_to_peer(theirs));
    both || one_side_predictable_and_open
}

/// The behaviour of a host with no NAT: what an open host puts in its address.
pub const OPEN: NatInfo = NatInfo {
    mapping: Mapping::EndpointIndependent,
    filtering: Filtering::EndpointIndependent,
    allocation: PortAllocation::Preserving,
};

/// The plan for reaching `peer` (see the [module docs](self) for the table).
pub fn plan(ours: &SelfView, peer: &PeerAddress) -> Plan {
    let mut plan = Plan::default();
    let peer_external: Vec<IpAddr> = peer
        .interfaces
        .iter()
        .flat_map(|i| i.endpoints.first())
        .map(|e| e.ip)
        .collect();
    let same_nat = peer_external
        .iter()
        .any(|ip| ours.external_ips.contains(ip));
    let mut peer_reachable = false;
    let mut peer_nat = None;
    for interface in &peer.interfaces {
        // An interface's endpoints: the external one first, then the local ones.
        let (external, locals) = match interface.endpoints.split_first() {
            Some((first, rest)) => (Some(first), rest),
            None => (None, &[][..]),
        };
        if same_nat {
            // One NAT: the peer's local endpoints, then its external one (hairpin).
            for e in locals {
                push_unique(&mut plan.direct, SocketAddr::from(*e));
            }
        }
        if let Some(nat) = interface.nat {
            peer_nat.get_or_insert(nat);
            if reachable(&nat) {
                peer_reachable = true;
                if let Some(e) = external {
                    push_unique(&mut plan.direct, SocketAddr::from(*e));
                }
            }
        }
    }
    let ours_reachable = ours.nat.as_ref().is_some_and(reachable);
    plan.reverse = !same_nat && !peer_reachable && ours_reachable;
    plan.punch = !same_nat
        && !peer_reachable
        && !ours_reachable
        && match (ours.nat, peer_nat) {
            (Some(a), Some(b)) => punchable(&a, &b),
            _ => false,
        };
    plan
}

fn push_unique(list: &mut Vec<SocketAddr>, addr: SocketAddr) {
    if !list.contains(&addr) {
        list.push(addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pd_signaling::{Endpoint, Identity, Interface, InterfaceLabel};

    fn nat(mapping: Mapping, filtering: Filtering, allocation: PortAllocation) -> NatInfo {
        NatInfo {
            mapping,
            filtering,
            allocation,
        }
    }

    fn address(nat: Option<NatInfo>, external: &str, local: &str) -> PeerAddress {
        let id = Identity::from_secret_bytes(&[9; 32]).unwrap();
        let mut endpoints = vec![Endpoint::from(external.parse::<SocketAddr>().unwrap())];
        if local != external {
            endpoints.push(Endpoint::from(local.parse::<SocketAddr>().unwrap()));
        }
        PeerAddress {
            public_key: id.public_key(),
            interfaces: vec![Interface {
                label: InterfaceLabel::Unnamed,
                nat,
                endpoints,
            }],
            brokers: vec![],
        }
    }

    fn me(nat: Option<NatInfo>, ip: &str) -> SelfView {
        SelfView {
            nat,
            external_ips: vec![ip.parse().unwrap()],
        }
    }

    const APD: Filtering = Filtering::AddressAndPortDependent;
    const EI: Mapping = Mapping::EndpointIndependent;
    const SYM: Mapping = Mapping::AddressAndPortDependent;

    #[test]
    fn an_open_peer_is_dialled_directly() {
        let peer = address(Some(OPEN), "203.0.113.2:4000", "203.0.113.2:4000");
        let p = plan(
            &me(Some(nat(EI, APD, PortAllocation::Random)), "203.0.113.1"),
            &peer,
        );
        assert_eq!(p.direct, vec!["203.0.113.2:4000".parse().unwrap()]);
        assert!(!p.reverse && !p.punch);
    }

    #[test]
    fn an_open_host_asks_a_natted_peer_to_dial_back() {
        let peer = address(
            Some(nat(EI, APD, PortAllocation::Preserving)),
            "203.0.113.2:4000",
            "10.0.0.2:4000",
        );
        let p = plan(&me(Some(OPEN), "203.0.113.1"), &peer);
        assert!(p.direct.is_empty());
        assert!(p.reverse && !p.punch);
    }

    #[test]
    fn hosts_behind_one_nat_dial_the_local_endpoint() {
        let peer = address(
            Some(nat(SYM, APD, PortAllocation::Random)),
            "203.0.113.1:4000",
            "10.0.0.3:4000",
        );
        let p = plan(
            &me(Some(nat(SYM, APD, PortAllocation::Random)), "203.0.113.1"),
            &peer,
        );
        assert_eq!(p.direct, vec!["10.0.0.3:4000".parse().unwrap()]);
        assert!(!p.reverse && !p.punch);
    }

    #[test]
    fn two_filtering_nats_punch_unless_both_are_random() {
        let cone = nat(EI, APD, PortAllocation::Preserving);
        let random = nat(SYM, APD, PortAllocation::Random);
        let seq = nat(SYM, APD, PortAllocation::Sequential { stride: 1 });
        let peer = |n| address(Some(n), "203.0.113.2:4000", "10.1.0.2:4000");
        let from = |n| me(Some(n), "203.0.113.1");
        let restricted = nat(EI, Filtering::AddressDependent, PortAllocation::Preserving);
        assert!(plan(&from(cone), &peer(cone)).punch);
        assert!(plan(&from(random), &peer(restricted)).punch);
        assert!(
            !plan(&from(random), &peer(cone)).punch,
            "a port-restricted filter only admits the predicted port"
        );
        assert!(plan(&from(seq), &peer(seq)).punch);
        assert!(!plan(&from(seq), &peer(random)).punch);
        let doomed = plan(&from(random), &peer(random));
        assert_eq!(
            doomed,
            Plan::default(),
            "random versus random goes straight to the relay"
        );
    }

    #[test]
    fn an_unknown_behaviour_never_punches() {
        let peer = address(None, "203.0.113.2:4000", "10.1.0.2:4000");
        let p = plan(
            &me(
                Some(nat(EI, APD, PortAllocation::Preserving)),
                "203.0.113.1",
            ),
            &peer,
        );
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn punchability_is_symmetric() {
        let allocations = [
            PortAllocation::Preserving,
            PortAllocation::Sequential { stride: 2 },
            PortAllocation::Random,
        ];
        let mappings = [EI, Mapping::AddressDependent, SYM];
        let filterings = [
            Filtering::EndpointIndependent,
            Filtering::AddressDependent,
            APD,
        ];
        let mut all = Vec::new();
        for m in mappings {
            for f in filterings {
                for a in allocations {
                    all.push(nat(m, f, a));
                }
            }
        }
        for a in &all {
            for b in &all {
                assert_eq!(punchable(a, b), punchable(b, a), "{a:?} {b:?}");
            }
        }
    }
}

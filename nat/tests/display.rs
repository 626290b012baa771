//! The words the CLI prints for the classifier's types (`p2pd nat` output; scripts and users read
//! them, so they are pinned here).

use p2pd_nat::classify::{ClassifyInconclusive as Why, ProbeKind};
use p2pd_nat::{Classification, DeltaInconclusive, DeltaVerdict, Filtering, LocalPorts, Mapping};

#[test]
fn behaviour_words() {
    assert_eq!(
        Mapping::EndpointIndependent.to_string(),
        "endpoint-independent"
    );
    assert_eq!(Mapping::AddressDependent.to_string(), "address-dependent");
    assert_eq!(
        Mapping::AddressAndPortDependent.to_string(),
        "address-and-port-dependent"
    );
    assert_eq!(
        Filtering::EndpointIndependent.to_string(),
        "endpoint-independent"
    );
    assert_eq!(Filtering::AddressDependent.to_string(), "address-dependent");
    assert_eq!(
        Filtering::AddressAndPortDependent.to_string(),
        "address-and-port-dependent"
    );
    assert_eq!(
        ProbeKind::MapAlternateBoth.to_string(),
        "map-alternate-ip+port"
    );
    assert_eq!(
        ProbeKind::AllocationConsecutive.to_string(),
        "allocation-consecutive-port"
    );
}

#[test]
fn classification_words() {
    assert_eq!(
        Classification::Open.to_string(),
        "open internet (no NAT, no filtering)"
    );
    assert_eq!(
        Classification::Firewall(Filtering::AddressDependent).to_string(),
        "UDP firewall, no NAT (address-dependent filtering)"
    );
    assert_eq!(
        Classification::Nat {
            mapping: Mapping::EndpointIndependent,
            filtering: Filtering::AddressAndPortDependent
        }
        .to_string(),
        "NAT: endpoint-independent mapping, address-and-port-dependent filtering"
    );
    assert_eq!(
        Classification::Blocked.to_string(),
        "blocked (no server answered)"
    );
    assert_eq!(
        Classification::Inconclusive(Why::MappingDisagrees).to_string(),
        "inconclusive: servers disagree about the mapping"
    );
}

/// Every inconclusive verdict names its reason, in words and as a key.
#[test]
fn every_inconclusive_reason_is_named() {
    let all = [
        Why::NoUsableServer,
        Why::MappingDisagrees,
        Why::FilteringDisagrees,
        Why::LocalAddressUnknown,
        Why::Deadline,
        Why::SilenceNotConclusive,
    ];
    let mut keys: Vec<&str> = all.iter().map(|w| w.key()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), all.len());
    for w in all {
        let text = w.to_string();
        assert!(!text.is_empty() && text != "unknown reason", "{text}");
        assert!(!w.key().is_empty() && w.key() != "other");
    }
    assert_eq!(Why::SilenceNotConclusive.key(), "silence-not-conclusive");
}

#[test]
fn allocation_words() {
    assert_eq!(
        DeltaVerdict::Equal.to_string(),
        "port preserving (external = local)"
    );
    assert_eq!(
        DeltaVerdict::FixedOffset { offset: -3 }.to_string(),
        "fixed offset -3"
    );
    assert_eq!(
        DeltaVerdict::Sequential { stride: 1 }.to_string(),
        "sequential, stride 1"
    );
    assert_eq!(
        DeltaVerdict::LocalPortDependent { stride: 2 }.to_string(),
        "local-port dependent, stride 2"
    );
    assert_eq!(DeltaVerdict::Random.to_string(), "random");
    let v = DeltaVerdict::Inconclusive {
        reason: DeltaInconclusive::TooLittleEvidence {
            round: LocalPorts::Consecutive,
        },
    };
    assert_eq!(
        v.to_string(),
        "inconclusive (too few replies or pairs in the round on consecutive local ports)"
    );
    assert!(!format!("{v}").contains('{'));
}

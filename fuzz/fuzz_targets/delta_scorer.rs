//! Arbitrary observation lists through the delta scorer: it never panics, its counts match the
//! input, and every verdict is backed by the counts the rules require (an Equal verdict implies at
//! least T replies with mapped == local and a majority of them, and so on). The verdict's allocation
//! then goes through port prediction, whose candidates must be distinct, in range and bounded.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2pd_nat::{
    delta_test, predict, DeltaConfig, DeltaVerdict, DeltaInconclusive, Observation, PortMapping,
    PortRange, PredictConfig, RoundEvidence, MAX_CANDIDATES,
};
use p2pd_proto::Rng;

#[derive(Arbitrary, Debug)]
struct Input {
    threshold: u8,
    modulus: u32,
    random: Vec<(u16, Option<u16>)>,
    consecutive: Option<Vec<(u16, Option<u16>)>>,
    range: (u16, u16),
    count: u8,
    last: Vec<(u16, u16)>,
    local: Option<u16>,
    seed: u64,
}

fn observations(v: &[(u16, Option<u16>)]) -> Vec<Observation> {
    v.iter().map(|&p| Observation::from(p)).collect()
}

fn check_counts(ev: &RoundEvidence, obs: &[Observation]) {
    assert_eq!(ev.probes as usize, obs.len());
    let replies = obs.iter().filter(|o| o.mapped.is_some()).count();
    let equal = obs.iter().filter(|o| o.mapped == Some(o.local)).count();
    assert_eq!(ev.replies as usize, replies);
    assert_eq!(ev.equal as usize, equal);
    assert!(ev.pairs as usize <= obs.len().saturating_sub(1));
    assert!(ev.unit_pairs <= ev.pairs);
    for t in [ev.stride.map(|t| t.support), ev.offset.map(|t| t.support)]
        .into_iter()
        .flatten()
    {
        assert!(t <= ev.pairs);
    }
    if let Some(t) = ev.dependent {
        assert!(t.support <= ev.unit_pairs && !t.varied && t.value != 0);
    }
    if let Some(t) = ev.stride {
        assert_ne!(t.value, 0);
    }
    if let Some(t) = ev.offset {
        assert_ne!(t.value, 0);
    }
}

fn majority(support: u32, of: u32) -> bool {
    u64::from(support) * 2 > u64::from(of)
}

fuzz_target!(|input: Input| {
    // The defaults (modulo 65536, cross-checked modulo 65535), or an arbitrary modulus.
    let cfg = DeltaConfig::P2PD.with_threshold(u32::from(input.threshold));
    let cfg = if input.modulus % 2 == 0 {
        cfg
    } else {
        cfg.with_modulus(input.modulus >> 1)
    };
    let t = cfg.threshold();
    assert!(t >= 2 && (2..=65536).contains(&cfg.modulus()));
    let r1 = observations(&input.random);
    let r2 = input.consecutive.as_deref().map(observations);
    let report = delta_test(&cfg, &r1, r2.as_deref());
    assert_eq!(
        report,
        delta_test(&cfg, &r1, r2.as_deref()),
        "deterministic"
    );
    check_counts(&report.random, &r1);
    if let (Some(ev), Some(obs)) = (&report.consecutive, &r2) {
        check_counts(ev, obs);
    }
    let ev = &report.random;
    match report.verdict {
        DeltaVerdict::Equal => {
            assert!(ev.equal >= t && majority(ev.equal, ev.replies) && ev.equal_varied);
        }
        DeltaVerdict::FixedOffset { offset } => {
            let o = ev.offset.expect("offset tally");
            assert!(offset != 0 && o.value == offset);
            assert!(o.support >= t && majority(o.support, ev.pairs) && o.varied);
        }
        DeltaVerdict::Sequential { stride } => {
            let s = ev.stride.expect("stride tally");
            assert!(stride != 0 && s.value == stride);
            assert!(s.support >= t && majority(s.support, ev.pairs) && s.varied);
        }
        DeltaVerdict::LocalPortDependent { stride } => {
            let c = report.consecutive.as_ref().expect("round 2");
            let d = c.dependent.expect("dependent tally");
            assert!(stride > 1 && d.value == stride);
            assert!(d.support >= t && majority(d.support, c.unit_pairs));
            // Round 1 refuted the rules it judges.
            assert!(ev.replies >= t && !majority(ev.equal, ev.replies));
            assert!(ev.pairs >= t);
        }
        DeltaVerdict::Random => {
            let c = report.consecutive.as_ref().expect("round 2");
            assert!(ev.replies >= t && ev.pairs >= t && c.unit_pairs >= t);
            assert!(!majority(ev.equal, ev.replies));
        }
        DeltaVerdict::Inconclusive { reason } => {
            if reason == DeltaInconclusive::NeedConsecutiveRound {
                assert!(report.consecutive.is_none());
            }
        }
    }
    // Round 1 alone never disagrees with both rounds, except that round 2 may contradict it (under
    // either modulus of the cross-check).
    let alone = delta_test(&cfg, &r1, None).verdict;
    if alone.is_conclusive() {
        assert!(
            report.verdict == alone
                || matches!(
                    report.verdict,
                    DeltaVerdict::Inconclusive {
                        reason: DeltaInconclusive::Contradictory
                            | DeltaInconclusive::WrapAmbiguous
                    }
                ),
            "{alone:?} vs {:?}",
            report.verdict
        );
    }
    let _ = report.verdict.p2pd();

    // Prediction from whatever the verdict says.
    let Some(allocation) = report.verdict.allocation() else {
        return;
    };
    let range = PortRange::new(input.range.0, input.range.1).unwrap_or(PortRange::ALL);
    let pcfg = PredictConfig {
        range,
        count: usize::from(input.count),
    };
    let last: Vec<PortMapping> = input
        .last
        .iter()
        .map(|&(local, external)| PortMapping { local, external })
        .collect();
    let mut rng = Rng::from_seed(input.seed);
    let c = predict(&pcfg, allocation, &last, input.local, &mut rng);
    assert!(c.len() <= MAX_CANDIDATES);
    assert!(c.iter().all(|c| range.contains(c.port) && c.confidence > 0));
    let mut ports: Vec<u16> = c.iter().map(|c| c.port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), c.len(), "distinct");
});

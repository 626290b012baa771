//! Arbitrary observation lists through the delta scorer: it never panics, and its counts and every
//! verdict agree with an oracle in this target that recomputes the pairwise deltas (local and
//! mapped distances, offsets, modulo the configured modulus) from the observations: the tallies'
//! values and supports, and that each verdict is backed by the counts its rule requires (an Equal
//! verdict implies at least T replies with mapped == local and a majority of them; a FixedOffset
//! or Sequential verdict a majority of the pairs with that offset or stride, from at least two
//! local distances; LocalPortDependent and Random a round 1 that refuted the other rules, and so
//! on). The verdict's allocation
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

// ---- The oracle: pairwise deltas recomputed here from the observations, never taken from the
// scorer's own tallies (a wrong delta computation in the scorer would be self-consistent). ----

/// `(a - b) mod m`, in `0..m`.
fn sub_mod(a: u16, b: u16, m: u32) -> u32 {
    let d = (i64::from(a) - i64::from(b)).rem_euclid(i64::from(m));
    u32::try_from(d).expect("a residue fits")
}

/// One usable adjacent pair: both probes answered, local ports differ (modulo `m`).
struct Pair {
    /// Local distance, mod m.
    ld: u32,
    /// Mapped distance, mod m.
    md: u32,
    /// Offset class `mapped - local` of the second probe, mod m.
    off: u32,
    /// The same offset unreduced.
    raw_off: i32,
    /// Both probes mapped to their own local port.
    both_equal: bool,
}

fn pairs_of(obs: &[Observation], m: u32) -> Vec<Pair> {
    obs.windows(2)
        .filter_map(|w| {
            let (a, b) = (w[0], w[1]);
            let (ma, mb) = (a.mapped?, b.mapped?);
            let ld = sub_mod(b.local, a.local, m);
            (ld != 0).then(|| Pair {
                ld,
                md: sub_mod(mb, ma, m),
                off: sub_mod(mb, b.local, m),
                raw_off: i32::from(mb) - i32::from(b.local),
                both_equal: ma == a.local && mb == b.local,
            })
        })
        .collect()
}

/// How many of `pairs` satisfy `f`, and whether those saw two distinct local distances.
fn support(pairs: &[Pair], f: impl Fn(&Pair) -> bool) -> (u32, bool) {
    let mut n = 0u32;
    let mut first = None;
    let mut varied = false;
    for p in pairs.iter().filter(|p| f(p)) {
        n += 1;
        match first {
            None => first = Some(p.ld),
            Some(ld) if ld != p.ld => varied = true,
            Some(_) => {}
        }
    }
    (n, varied)
}

/// The best (most supported, smallest on ties) key among the pairs `f` keys, with its support.
fn best(pairs: &[Pair], f: impl Fn(&Pair) -> Option<u32>) -> Option<(u32, u32)> {
    let mut counts = std::collections::BTreeMap::<u32, u32>::new();
    for k in pairs.iter().filter_map(f) {
        *counts.entry(k).or_default() += 1;
    }
    let mut out: Option<(u32, u32)> = None;
    for (k, n) in counts {
        if out.is_none_or(|(_, b)| n > b) {
            out = Some((k, n));
        }
    }
    out
}

/// What the oracle knows about one round, modulo `m`.
struct Round {
    replies: u32,
    equal: u32,
    pairs: Vec<Pair>,
    unit_pairs: u32,
}

fn round(obs: &[Observation], m: u32) -> Round {
    let replies = obs.iter().filter(|o| o.mapped.is_some()).count();
    let equal = obs.iter().filter(|o| o.mapped == Some(o.local)).count();
    let pairs = pairs_of(obs, m);
    let unit_pairs = pairs.iter().filter(|p| p.ld == 1).count();
    Round {
        replies: u32::try_from(replies).expect("small"),
        equal: u32::try_from(equal).expect("small"),
        unit_pairs: u32::try_from(unit_pairs).expect("small"),
        pairs,
    }
}

impl Round {
    fn n_pairs(&self) -> u32 {
        u32::try_from(self.pairs.len()).expect("small")
    }
    fn best_offset(&self) -> Option<(u32, u32)> {
        best(&self.pairs, |p| (p.md == p.ld && p.off != 0).then_some(p.off))
    }
    fn best_stride(&self) -> Option<(u32, u32)> {
        best(&self.pairs, |p| (p.md != 0).then_some(p.md))
    }
    fn best_dependent(&self) -> Option<(u32, u32)> {
        best(&self.pairs, |p| (p.ld == 1 && p.md != 0).then_some(p.md))
    }
    /// Round 1 refuted Equal, FixedOffset and Sequential (the precondition of round 2's verdicts).
    fn refutes_all(&self, t: u32) -> bool {
        let refuted = |support: u32, of: u32| of >= t && !majority(support, of);
        refuted(self.equal, self.replies)
            && refuted(self.best_offset().map_or(0, |b| b.1), self.n_pairs())
            && refuted(self.best_stride().map_or(0, |b| b.1), self.n_pairs())
    }
}

/// The scorer's counts against the oracle's.
fn check_counts(ev: &RoundEvidence, obs: &[Observation], m: u32) {
    let r = round(obs, m);
    assert_eq!(ev.probes as usize, obs.len());
    assert_eq!(ev.replies, r.replies);
    assert_eq!(ev.equal, r.equal);
    assert_eq!(ev.pairs, r.n_pairs(), "pairs");
    assert_eq!(ev.unit_pairs, r.unit_pairs, "unit pairs");
    assert_eq!(
        ev.equal_varied,
        support(&r.pairs, |p| p.both_equal).1,
        "equal pairs varied"
    );
    match (ev.offset, r.best_offset()) {
        (None, None) => {}
        (Some(t), Some((class, n))) => {
            let raw = i64::from(t.value);
            assert_eq!(raw.rem_euclid(i64::from(m)), i64::from(class), "offset class");
            assert_eq!(t.support, n, "offset support");
            let (n2, varied) = support(&r.pairs, |p| p.md == p.ld && p.off == class);
            assert_eq!((t.support, t.varied), (n2, varied));
            assert!(
                r.pairs
                    .iter()
                    .any(|p| p.md == p.ld && p.off == class && p.raw_off == t.value),
                "the offset is one the probes saw"
            );
        }
        (got, want) => panic!("offset tally {got:?}, oracle {want:?}"),
    }
    match (ev.stride, r.best_stride()) {
        (None, None) => {}
        (Some(t), Some((md, n))) => {
            assert_eq!((u32::from(t.value), t.support), (md, n), "stride tally");
            assert_eq!(t.varied, support(&r.pairs, |p| p.md == md).1);
        }
        (got, want) => panic!("stride tally {got:?}, oracle {want:?}"),
    }
    match (ev.dependent, r.best_dependent()) {
        (None, None) => {}
        (Some(t), Some((md, n))) => {
            assert_eq!((u32::from(t.value), t.support), (md, n), "dependent tally");
            assert!(!t.varied);
        }
        (got, want) => panic!("dependent tally {got:?}, oracle {want:?}"),
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
    let m = cfg.modulus();
    check_counts(&report.random, &r1, m);
    if let (Some(ev), Some(obs)) = (&report.consecutive, &r2) {
        check_counts(ev, obs, m);
    }
    // Every verdict against the oracle's counts (modulo the configured modulus: the cross-check
    // can only turn a verdict inconclusive).
    let o1 = round(&r1, m);
    let o2 = r2.as_deref().map(|obs| round(obs, m));
    match report.verdict {
        DeltaVerdict::Equal => {
            assert!(o1.equal >= t && majority(o1.equal, o1.replies));
            assert!(support(&o1.pairs, |p| p.both_equal).1, "equal pairs varied");
        }
        DeltaVerdict::FixedOffset { offset } => {
            let class = u32::try_from(i64::from(offset).rem_euclid(i64::from(m))).expect("fits");
            assert_ne!(class, 0, "offset {offset} is no offset modulo {m}");
            let (n, varied) = support(&o1.pairs, |p| p.md == p.ld && p.off == class);
            assert!(n >= t && majority(n, o1.n_pairs()) && varied, "offset {offset}: {n}");
            assert!(
                o1.pairs
                    .iter()
                    .any(|p| p.md == p.ld && p.off == class && p.raw_off == offset),
                "offset {offset} was observed"
            );
        }
        DeltaVerdict::Sequential { stride } => {
            let s = u32::from(stride);
            assert!(s != 0 && s < m, "stride {stride} modulo {m}");
            let (n, varied) = support(&o1.pairs, |p| p.md == s);
            assert!(n >= t && majority(n, o1.n_pairs()) && varied, "stride {stride}: {n}");
        }
        DeltaVerdict::LocalPortDependent { stride } => {
            let o2 = o2.as_ref().expect("round 2");
            let s = u32::from(stride);
            let (n, _) = support(&o2.pairs, |p| p.ld == 1 && p.md == s);
            assert!(stride > 1 && n >= t && majority(n, o2.unit_pairs), "{stride}: {n}");
            assert!(!(o2.equal >= t && majority(o2.equal, o2.replies)));
            assert!(o1.refutes_all(t), "round 1 refuted the rules it judges");
        }
        DeltaVerdict::Random => {
            let o2 = o2.as_ref().expect("round 2");
            assert!(o1.refutes_all(t), "round 1 refuted the rules it judges");
            let dependent = o2.best_dependent().map_or(0, |b| b.1);
            assert!(o2.unit_pairs >= t && !majority(dependent, o2.unit_pairs));
        }
        DeltaVerdict::Inconclusive { reason } => {
            if reason == DeltaInconclusive::NeedConsecutiveRound {
                assert!(report.consecutive.is_none());
                assert!(o1.refutes_all(t));
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

//! Tests of the delta scorer: p2pd's fixtures, the evidence tallies, the rules and properties.

use super::*;
use proptest::prelude::*;

/// p2pd's test settings: 8 probes, threshold 5.
const T5: DeltaConfig = DeltaConfig {
    probes: 8,
    threshold: 5,
    ..DeltaConfig::P2PD
};

fn obs(pairs: &[(u16, u16)]) -> Vec<Observation> {
    pairs.iter().map(|&p| Observation::from(p)).collect()
}

/// p2pd's `FakeSTUNClient` replays the same list in both rounds.
fn both(cfg: &DeltaConfig, v: &[Observation]) -> DeltaVerdict {
    delta_test(cfg, v, Some(v)).verdict
}

const P2PD_PRESERVING: [(u16, u16); 8] = [
    (4000, 50000),
    (10000, 56000),
    (10200, 56200),
    (10400, 56400),
    (11000, 57000),
    (12000, 58000),
    (4620, 2333),
    (4630, 2334),
];
const P2PD_EQUAL: [(u16, u16); 8] = [
    (4567, 4567),
    (48234, 48234),
    (6823, 6823),
    (60000, 60000),
    (50000, 50000),
    (60001, 60001),
    (5000, 5001),
    (5000, 5001),
];
const P2PD_INDEPENDENT: [(u16, u16); 8] = [
    (5000, 50000),
    (23412, 50010),
    (55421, 50020),
    (6322, 50030),
    (5622, 50040),
    (45610, 50050),
    (4420, 2333),
    (5555, 2334),
];
const P2PD_DEPENDENT: [(u16, u16); 8] = [
    (4560, 50000),
    (4561, 50020),
    (4562, 50040),
    (4563, 50060),
    (4564, 50080),
    (4565, 50100),
    (4566, 2333),
    (4567, 6000),
];
const P2PD_RANDOM: [(u16, u16); 8] = [
    (4560, 4443),
    (4561, 50001),
    (4562, 63813),
    (4563, 64000),
    (4564, 2000),
    (4565, 6004),
    (4566, 2333),
    (4567, 8432),
];
/// Random local ports for round 1 of a dependent NAT (stride 20 per local port).
const RANDOM_LOCALS: [u16; 8] = [23412, 5000, 55421, 6322, 45610, 5622, 4420, 31337];

fn dependent_round1(stride: u16) -> Vec<Observation> {
    RANDOM_LOCALS
        .iter()
        .map(|&l| {
            Observation::new(
                l,
                50000u16.wrapping_add(l.wrapping_sub(4560).wrapping_mul(stride)),
            )
        })
        .collect()
}

#[test]
fn p2pd_vectors() {
    // PRESERV: 50000 - 4000 = 46000 (p2pd records no value).
    let v = both(&T5, &obs(&P2PD_PRESERVING));
    assert_eq!(v, DeltaVerdict::FixedOffset { offset: 46000 });
    assert_eq!(v.p2pd(), P2pdDelta::Preserving);
    assert_eq!(both(&T5, &obs(&P2PD_EQUAL)), DeltaVerdict::Equal);
    assert_eq!(both(&T5, &obs(&P2PD_EQUAL)).p2pd(), P2pdDelta::Equal);
    let v = both(&T5, &obs(&P2PD_INDEPENDENT));
    assert_eq!(v, DeltaVerdict::Sequential { stride: 10 });
    assert_eq!(v.p2pd(), P2pdDelta::Independent(10));
    assert_eq!(both(&T5, &obs(&P2PD_RANDOM)), DeltaVerdict::Random);
    assert_eq!(both(&T5, &obs(&P2PD_RANDOM)).p2pd(), P2pdDelta::Random);
}

#[test]
fn p2pd_dependent_vector_needs_random_round1() {
    // Difference from p2pd (which says DEPENDENT 20): the fake replays consecutive local ports in
    // round 1, where a sequential NAT with stride 20 would give the very same observations.
    let v = both(&T5, &obs(&P2PD_DEPENDENT));
    assert_eq!(
        v,
        DeltaVerdict::Inconclusive {
            reason: DeltaInconclusive::LocalPortsDidNotVary
        }
    );
    // With random local ports in round 1 (as p2pd really sends them) the answer is DEPENDENT 20.
    let r1 = dependent_round1(20);
    let report = delta_test(&T5, &r1, Some(&obs(&P2PD_DEPENDENT)));
    assert_eq!(
        report.verdict,
        DeltaVerdict::LocalPortDependent { stride: 20 }
    );
    assert_eq!(report.verdict.p2pd(), P2pdDelta::Dependent(20));
    let r2 = report.consecutive.unwrap();
    assert_eq!((r2.unit_pairs, r2.dependent.unwrap().support), (7, 5));
    // Without round 2 there is no answer yet.
    assert_eq!(
        delta_test(&T5, &r1, None).verdict,
        DeltaVerdict::Inconclusive {
            reason: DeltaInconclusive::NeedConsecutiveRound
        }
    );
}

#[test]
fn p2pd_dependent_with_probe_2_lost() {
    // p2pd: still DEPENDENT(20), with two TypeErrors logged.
    let mut r2 = obs(&P2PD_DEPENDENT);
    r2[1].mapped = None;
    let v = delta_test(&T5, &dependent_round1(20), Some(&r2)).verdict;
    // Losing probe #2 (index 1) breaks two pairs: 3 unit pairs with stride 20 remain (of 5).
    // Under T = 5 that is too little (p2pd's exact input for this case is not in the
    // reference); T = 3 is enough.
    assert_eq!(
        v,
        DeltaVerdict::Inconclusive {
            reason: DeltaInconclusive::TooLittleEvidence {
                round: LocalPorts::Consecutive
            }
        }
    );
    let t3 = T5.with_threshold(3);
    let v = delta_test(&t3, &dependent_round1(20), Some(&r2)).verdict;
    assert_eq!(v, DeltaVerdict::LocalPortDependent { stride: 20 });
}

#[test]
fn p2pd_additional_cases() {
    let cfg = DeltaConfig::default();
    // 12 x [p, p] with T = 5 (varied local ports): EQUAL.
    let ps: Vec<Observation> = (0..12u16)
        .map(|i| {
            let p = 4000 + i * i * 397 % 60000;
            Observation::new(p, p)
        })
        .collect();
    assert_eq!(delta_test(&cfg, &ps, None).verdict, DeltaVerdict::Equal);
    // [p, p + 1000] for p = 20000..20011: p2pd says RANDOM; one local distance cannot tell a
    // fixed offset from a sequential stride of 1, so: inconclusive.
    let consecutive: Vec<Observation> = (20000..20012u16)
        .map(|p| Observation::new(p, p + 1000))
        .collect();
    assert_eq!(
        delta_test(&cfg, &consecutive, Some(&consecutive)).verdict,
        DeltaVerdict::Inconclusive {
            reason: DeltaInconclusive::LocalPortsDidNotVary
        }
    );
    // The same NAT probed from random local ports: a fixed offset of 1000.
    let random: Vec<Observation> = ps
        .iter()
        .map(|o| Observation::new(o.local, o.local + 1000))
        .collect();
    let report = delta_test(&cfg, &random, Some(&consecutive));
    assert_eq!(report.verdict, DeltaVerdict::FixedOffset { offset: 1000 });
    assert_eq!(
        report.verdict.allocation(),
        Some(PortAllocation::FixedOffset { offset: 1000 })
    );
    let t = report.random.offset.unwrap();
    assert_eq!((t.support, t.varied, report.random.pairs), (11, true, 11));
}

fn sequential(locals: &[u16], first: u16, stride: u16) -> Vec<Observation> {
    let mut m = first;
    locals
        .iter()
        .map(|&l| {
            let o = Observation::new(l, m);
            m = m.wrapping_add(stride);
            o
        })
        .collect()
}

fn random_locals(seed: u64, n: usize) -> Vec<u16> {
    let mut rng = p2pd_proto::Rng::from_seed(seed);
    (0..n).map(|_| 4000 + rng.below(61535) as u16).collect()
}

#[test]
fn lost_probes_in_any_position() {
    let cfg = DeltaConfig::default();
    let locals = random_locals(1, 12);
    let cases = [
        (
            sequential(&locals, 30000, 7),
            DeltaVerdict::Sequential { stride: 7 },
        ),
        (
            locals.iter().map(|&l| Observation::new(l, l)).collect(),
            DeltaVerdict::Equal,
        ),
        (
            locals
                .iter()
                .map(|&l| Observation::new(l, l.wrapping_sub(555)))
                .collect(),
            DeltaVerdict::FixedOffset { offset: -555 },
        ),
    ];
    for (full, want) in cases {
        assert_eq!(delta_test(&cfg, &full, None).verdict, want);
        for i in 0..full.len() {
            let mut lossy = full.clone();
            lossy[i].mapped = None;
            assert_eq!(delta_test(&cfg, &lossy, None).verdict, want, "lost {i}");
            // Two lost, anywhere: still the answer, or too little evidence; never another.
            for j in 0..full.len() {
                let mut lossy = lossy.clone();
                lossy[j].mapped = None;
                let v = delta_test(&cfg, &lossy, None).verdict;
                assert!(v == want || !v.is_conclusive(), "lost {i} {j}: {v:?}");
            }
        }
    }
    let all_lost: Vec<Observation> = locals.iter().map(|&l| Observation::lost(l)).collect();
    let report = delta_test(&cfg, &all_lost, Some(&all_lost));
    assert_eq!(
        report.verdict,
        DeltaVerdict::Inconclusive {
            reason: DeltaInconclusive::TooLittleEvidence {
                round: LocalPorts::Random
            }
        }
    );
    assert_eq!(report.verdict.p2pd(), P2pdDelta::Random);
    assert_eq!(
        (
            report.random.probes,
            report.random.replies,
            report.random.pairs
        ),
        (12, 0, 0)
    );
    assert!(!delta_test(&cfg, &[], None).verdict.is_conclusive());
}

#[test]
fn wrap_around_at_65535() {
    let cfg = DeltaConfig::default();
    let locals = random_locals(2, 12);
    // 65530, 65531, ..., 65535, 0, 1, ...: stride 1 in the 16-bit port space.
    let v = delta_test(&cfg, &sequential(&locals, 65530, 1), None).verdict;
    assert_eq!(v, DeltaVerdict::Sequential { stride: 1 });
    // Descending allocation: stride -1, i.e. 65535.
    let v = delta_test(&cfg, &sequential(&locals, 3, 65535), None).verdict;
    assert_eq!(v, DeltaVerdict::Sequential { stride: 65535 });
    // A NAT allocating from 1..=65535 goes 65535 -> 1: modulo 65536 that pair has distance 2
    // (evidence against, outvoted); modulo the range's length every pair has distance 1.
    let in_range: Vec<Observation> = locals
        .iter()
        .enumerate()
        .map(|(i, &l)| Observation::new(l, PortRange::ALL.wrap(65530 + i as i64)))
        .collect();
    let report = delta_test(&cfg, &in_range, None);
    assert_eq!(report.verdict, DeltaVerdict::Sequential { stride: 1 });
    assert_eq!(report.random.stride.unwrap().support, 10);
    let by_range = cfg.with_range(PortRange::ALL);
    assert_eq!(by_range.modulus(), 65535);
    let report = delta_test(&by_range, &in_range, None);
    assert_eq!(report.random.stride.unwrap().support, 11);
    // A fixed offset whose mapped ports wrap past 65535 for most probes.
    let fixed: Vec<Observation> = locals
        .iter()
        .map(|&l| Observation::new(l, l.wrapping_add(40000)))
        .collect();
    assert_eq!(
        delta_test(&cfg, &fixed, None).verdict,
        DeltaVerdict::FixedOffset { offset: -25536 }
    );
    // A large stride in 1..=65535 wraps every other allocation: modulo 65536 the wrapped class
    // (43676 = -21860) and the plain one (43675 = -21861, wrong in that range) split the pairs.
    // Here the wrapped class wins and agrees with the modulo-65535 reading (43675 = -21860), so
    // the answer stands: the same step in that range.
    let big: Vec<Observation> = locals
        .iter()
        .enumerate()
        .map(|(i, &l)| Observation::new(l, PortRange::ALL.wrap(1000 + 43675 * i as i64)))
        .collect();
    assert_eq!(
        delta_test(&cfg, &big, None).verdict,
        DeltaVerdict::Sequential { stride: 43676 }
    );
    assert_eq!(
        delta_test(&by_range, &big, None).verdict,
        DeltaVerdict::Sequential { stride: 43675 }
    );
    let last = crate::PortMapping {
        local: 0,
        external: big[11].mapped.unwrap(),
    };
    let next = crate::predict(
        &crate::PredictConfig::default(),
        PortAllocation::Sequential { stride: 43676 },
        &[last],
        None,
        &mut p2pd_proto::Rng::from_seed(0),
    );
    assert_eq!(next[0].port, PortRange::ALL.wrap(1000 + 43675 * 12));
    // Had the plain class won modulo 65536 (43675 = -21861), modulo 65535 would still say
    // -21860: the two disagree and the answer is withheld.
    assert!(!agree(
        DeltaVerdict::Sequential { stride: 43675 },
        65536,
        DeltaVerdict::Sequential { stride: 43675 },
        65535
    ));
    // p2pd's field_dist(65535, 0) is 0; ours is 1.
    assert_eq!(sub_mod(0, 65535, 65536), 1);
    assert_eq!(sub_mod(65535, 0, 65536), 65535);
    assert_eq!(signed(65535, 65536), -1);
    assert_eq!(sub_mod(1, 65535, 65535), 1);
}

#[test]
fn rounds_must_agree() {
    let cfg = DeltaConfig::default();
    let locals = random_locals(3, 12);
    let r1 = sequential(&locals, 1000, 3);
    // Round 2 from consecutive local ports of a stride-3 NAT agrees.
    let ok = sequential(&(30000..30012).collect::<Vec<_>>(), 2000, 3);
    assert_eq!(
        delta_test(&cfg, &r1, Some(&ok)).verdict,
        DeltaVerdict::Sequential { stride: 3 }
    );
    // A round 2 that shows stride 5 refutes stride 3.
    let bad = sequential(&(30000..30012).collect::<Vec<_>>(), 2000, 5);
    assert_eq!(
        delta_test(&cfg, &r1, Some(&bad)).verdict,
        DeltaVerdict::Inconclusive {
            reason: DeltaInconclusive::Contradictory
        }
    );
    // Rounds passed the wrong way round.
    let e1 = score_round(&cfg, &r1, LocalPorts::Consecutive);
    assert_eq!(
        decide(&cfg, &e1, None),
        DeltaVerdict::Inconclusive {
            reason: DeltaInconclusive::WrongRound
        }
    );
    assert_eq!(DeltaConfig::for_probes(12), DeltaConfig::P2PD);
    assert_eq!(DeltaConfig::for_probes(2).threshold(), 2);
    assert_eq!(DeltaConfig::P2PD.with_modulus(0).modulus(), 2);
}

// ---- property: the truth or Inconclusive, never another allocation ----

/// A model NAT, like the simulator's: ports wrap modulo `m` (65536: the 16-bit space; 65535:
/// the range 1..=65535 via `PortRange::wrap`); Sequential and LocalPortDependent start at the
/// first mapping's local port.
struct ModelNat {
    rule: PortAllocation,
    m: u32,
    last: Option<u16>,
    first: Option<(u16, u16)>,
    rng: p2pd_proto::Rng,
}

impl ModelNat {
    fn wrap(&self, p: i64) -> u16 {
        if self.m == 65536 {
            p.rem_euclid(65536) as u16
        } else {
            PortRange::ALL.wrap(p)
        }
    }

    fn allocate(&mut self, local: u16) -> u16 {
        let l = i64::from(local);
        let port = match self.rule {
            PortAllocation::Preserving => local,
            PortAllocation::FixedOffset { offset } => self.wrap(l + i64::from(offset)),
            PortAllocation::Sequential { stride } => match self.last {
                None => local,
                Some(last) => self.wrap(i64::from(last) + i64::from(stride)),
            },
            PortAllocation::LocalPortDependent { stride } => match self.first {
                None => local,
                Some((fl, fe)) => {
                    self.wrap(i64::from(fe) + (l - i64::from(fl)) * i64::from(stride))
                }
            },
            PortAllocation::Random => {
                let r = self.rng.below(65535) as i64;
                self.wrap(1 + r)
            }
        };
        self.last = Some(port);
        self.first.get_or_insert((local, port));
        port
    }

    /// Loss: 0 delivered, 1 request lost (no mapping made), 2 reply lost.
    fn round(&mut self, locals: &[u16], loss: &[u8]) -> Vec<Observation> {
        locals
            .iter()
            .zip(loss.iter().chain(std::iter::repeat(&0)))
            .map(|(&l, &x)| match x {
                1 => Observation::lost(l),
                2 => {
                    self.allocate(l);
                    Observation::lost(l)
                }
                _ => Observation::new(l, self.allocate(l)),
            })
            .collect()
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn rule(m: u32) -> impl Strategy<Value = PortAllocation> {
    let half = (m / 2 - 1) as i32;
    prop_oneof![
        Just(PortAllocation::Preserving),
        (-half..=half)
            .prop_filter("non-zero", |o| *o != 0)
            .prop_map(|offset| PortAllocation::FixedOffset { offset }),
        (1..m).prop_map(|s| PortAllocation::Sequential { stride: s as u16 }),
        // Strides sharing a large factor with the modulus alias (module docs, "Limits").
        (2..m)
            .prop_filter("no aliasing", move |k| gcd(*k, m) <= 256
                && gcd(k - 1, m) <= 256)
            .prop_map(|k| PortAllocation::LocalPortDependent { stride: k as u16 }),
        Just(PortAllocation::Random),
    ]
}

fn case() -> impl Strategy<Value = (u32, PortAllocation)> {
    prop_oneof![Just(65536u32), Just(65535u32)].prop_flat_map(|m| (Just(m), rule(m)))
}

fn check(truth: PortAllocation, m: u32, v: DeltaVerdict) -> Result<(), TestCaseError> {
    let Some(got) = v.allocation() else {
        return Ok(());
    };
    let want = match truth {
        PortAllocation::LocalPortDependent { stride: 1 } => {
            unreachable!("generated strides are at least 2")
        }
        t => t,
    };
    // Equivalent modulo the NAT's modulus: offsets as observed may differ by it, strides above
    // 32767 read as negative (two's complement).
    let same = |a: i64, b: i64| (a - b).rem_euclid(i64::from(m)) == 0;
    let s16 = |s: u16| i64::from(s as i16);
    let ok = match (got, want) {
        (PortAllocation::FixedOffset { offset: a }, PortAllocation::FixedOffset { offset: b }) => {
            same(a.into(), b.into())
        }
        (PortAllocation::Sequential { stride: a }, PortAllocation::Sequential { stride: b })
        | (
            PortAllocation::LocalPortDependent { stride: a },
            PortAllocation::LocalPortDependent { stride: b },
        ) => a == b || same(s16(a), b.into()),
        (a, b) => a == b,
    };
    prop_assert!(ok, "modulus {}, truth {:?}, verdict {:?}", m, want, v);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn truth_or_inconclusive(
        (m, truth) in case(),
        n in 8u16..=16,
        seed in any::<u64>(),
        loss1 in proptest::collection::vec(prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)], 16),
        loss2 in proptest::collection::vec(prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)], 16),
        round1_consecutive in proptest::bool::weighted(0.2),
    ) {
        // The default settings (modulo 65536, cross-checked modulo 65535) and the NAT's own
        // modulus without a cross-check.
        let cfg = DeltaConfig::for_probes(n);
        let exact = DeltaConfig::for_probes(n).with_modulus(m);
        let mut rng = p2pd_proto::Rng::from_seed(seed);
        let mut nat = ModelNat { rule: truth, m, last: None, first: None, rng: p2pd_proto::Rng::from_seed(!seed) };
        let n = usize::from(n);
        let locals1: Vec<u16> = if round1_consecutive {
            let start = 4000 + rng.below(65535 - 4000 - n as u64) as u16;
            (start..).take(n).collect()
        } else {
            let mut v: Vec<u16> = Vec::new();
            while v.len() < n {
                let p = 4000 + rng.below(65535 - 4000) as u16;
                if !v.contains(&p) { v.push(p); }
            }
            v
        };
        let start = 4000 + rng.below(65535 - 4000 - n as u64) as u16;
        let locals2: Vec<u16> = (start..).take(n).collect();
        let r1 = nat.round(&locals1, &loss1);
        let r2 = nat.round(&locals2, &loss2);
        check(truth, m, delta_test(&cfg, &r1, Some(&r2)).verdict)?;
        let report = delta_test(&exact, &r1, Some(&r2));
        check(truth, m, report.verdict)?;
        // Round 1 alone: never wrong either.
        check(truth, m, delta_test(&cfg, &r1, None).verdict)?;
        check(truth, m, delta_test(&exact, &r1, None).verdict)?;
        // Without loss and with random local ports, the deterministic rules are found.
        if !round1_consecutive && loss1.iter().chain(&loss2).all(|x| *x == 0) && truth != PortAllocation::Random {
            prop_assert!(report.verdict.is_conclusive(), "{:?} -> {:?}", truth, report);
        }
    }
}

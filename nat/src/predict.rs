//! Port prediction: which external port will a NAT give the next mapping?
//!
//! Pure functions of a [`PortAllocation`] (from the delta test), the last observed mapping(s), the
//! local port the new mapping will come from (if chosen) and a [`PortRange`]. Every port is wrapped
//! into the range with a true modulus ([`PortRange::wrap`]; p2pd's `field_wrap` is not one).
//!
//! | allocation | candidates (best first) |
//! |---|---|
//! | `Preserving` | `[local]` |
//! | `FixedOffset { offset }` | `[local + offset]` |
//! | `Sequential { stride }` | `[last + stride, last + 2 * stride, ...]` ([`PredictConfig::count`] of them) |
//! | `LocalPortDependent { stride }` | `[last + (local - last_local) * stride]` |
//! | `Random` | `count` distinct ports drawn from the range with the injected [`Rng`] |
//!
//! `last` is the most recent mapping (the slice's last element). A rule that needs a local port or a
//! last mapping it was not given returns no candidate. Strides above 32767 are descending (the
//! delta scorer's distances are 16-bit two's complement: 65535 is -1).
//!
//! Differences from p2pd's `get_single_mapping` (reference §4.3): a batch of sequential
//! predictions advances (`last + stride`, `last + 2 * stride`, ...) where p2pd predicts the same port
//! for every member of a batch; the local port for a fixed offset is `target - offset` (see
//! [`local_for_external`]) where p2pd adds `|target - last.remote|`, the wrong sign whenever the
//! target is below the last port; and random allocation yields low-confidence candidates instead of
//! an exception.
//!
//! The prediction is for a **new** mapping. Reusing an existing endpoint-independent mapping (p2pd's
//! "preload" for cone NATs with random allocation) is the caller's choice: its external port is
//! already known.

use p2pd_proto::Rng;

use crate::behaviour::{PortAllocation, PortRange};

/// An observed mapping: a local port and the external port the NAT gave it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortMapping {
    /// The local port.
    pub local: u16,
    /// The external (mapped) port.
    pub external: u16,
}

/// A predicted external port.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortCandidate {
    /// The port.
    pub port: u16,
    /// How likely it is, in parts per million (a heuristic weight for ranking and for splitting a
    /// budget of attempts; only the order is meaningful across rules).
    pub confidence: u32,
}

/// Prediction settings.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct PredictConfig {
    /// The NAT's external port range (p2pd: `[1, 65535]`, and `[2000, 65535]` after its
    /// intersection rule).
    pub range: PortRange,
    /// How many candidates sequential and random allocation produce (clamped to
    /// `1..=`[`MAX_CANDIDATES`]).
    pub count: usize,
}

/// The most candidates one prediction returns.
pub const MAX_CANDIDATES: usize = 64;

impl Default for PredictConfig {
    /// The whole port range and 4 candidates.
    fn default() -> Self {
        PredictConfig {
            range: PortRange::ALL,
            count: 4,
        }
    }
}

impl PredictConfig {
    fn count(&self) -> usize {
        self.count.clamp(1, MAX_CANDIDATES)
    }
}

/// Confidence of a port-preserving or fixed-offset prediction (the port may be taken).
pub const CONFIDENCE_EXACT: u32 = 900_000;
/// Confidence of a local-port-dependent prediction.
pub const CONFIDENCE_DEPENDENT: u32 = 800_000;
/// Confidence of the first sequential candidate; each further one halves it (other hosts behind the
/// NAT may take ports in between).
pub const CONFIDENCE_SEQUENTIAL: u32 = 500_000;

/// A 16-bit stride as a signed step: above 32767 means descending.
fn signed_stride(stride: u16) -> i64 {
    i64::from(i16::from_ne_bytes(stride.to_ne_bytes()))
}

fn push_unique(out: &mut Vec<PortCandidate>, port: u16, confidence: u32) {
    if !out.iter().any(|c| c.port == port) {
        out.push(PortCandidate { port, confidence });
    }
}

/// Ranked candidate external ports for the next mapping (best first, distinct ports).
///
/// - `last`: observed mappings, oldest first; the last one anchors sequential and dependent rules.
/// - `local`: the local port the new mapping will come from, if chosen.
/// - `rng`: draws the random candidates (nothing else uses it).
pub fn predict(
    cfg: &PredictConfig,
    allocation: PortAllocation,
    last: &[PortMapping],
    local: Option<u16>,
    rng: &mut Rng,
) -> Vec<PortCandidate> {
    let range = cfg.range;
    let anchor = last.last().copied();
    let mut out = Vec::new();
    match allocation {
        PortAllocation::Preserving => {
            if let Some(l) = local {
                push_unique(&mut out, range.wrap(i64::from(l)), CONFIDENCE_EXACT);
            }
        }
        PortAllocation::FixedOffset { offset } => {
            if let Some(l) = local {
                let p = range.wrap(i64::from(l).saturating_add(i64::from(offset)));
                push_unique(&mut out, p, CONFIDENCE_EXACT);
            }
        }
        PortAllocation::Sequential { stride } => {
            if let Some(a) = anchor {
                let step = signed_stride(stride);
                let mut confidence = CONFIDENCE_SEQUENTIAL;
                let mut next = i64::from(a.external);
                for _ in 0..cfg.count() {
                    next = i64::from(range.wrap(next.saturating_add(step)));
                    push_unique(&mut out, range.wrap(next), confidence.max(1));
                    confidence /= 2;
                }
            }
        }
        PortAllocation::LocalPortDependent { stride } => {
            if let (Some(a), Some(l)) = (anchor, local) {
                let dl = i64::from(l).saturating_sub(i64::from(a.local));
                let p = range.wrap(
                    i64::from(a.external).saturating_add(dl.saturating_mul(signed_stride(stride))),
                );
                push_unique(&mut out, p, CONFIDENCE_DEPENDENT);
            }
        }
        PortAllocation::Random => {
            let len = range.len();
            let confidence = 1_000_000u32.checked_div(len).unwrap_or(0).max(1);
            let want = cfg.count().min(usize::try_from(len).unwrap_or(usize::MAX));
            // Distinct draws; bounded attempts (collisions are rare unless the range is tiny).
            let mut attempts = want.saturating_mul(8);
            while out.len() < want && attempts > 0 {
                attempts = attempts.saturating_sub(1);
                let r = i64::try_from(rng.below(u64::from(len))).unwrap_or(0);
                push_unique(
                    &mut out,
                    range.wrap(i64::from(range.low).saturating_add(r)),
                    confidence,
                );
            }
        }
    }
    out
}

/// The local port to bind so that the NAT maps it to `target`, when the rule makes the external
/// port a function of the local one: `Preserving` -> `target`; `FixedOffset` -> `target - offset`;
/// `LocalPortDependent` -> `last_local + (target - last_external) / stride` when that divides
/// exactly. `None` for sequential and random allocation (the local port does not matter), without a
/// last mapping where one is needed, or when no local port in `1..=65535` works.
pub fn local_for_external(
    range: PortRange,
    allocation: PortAllocation,
    last: &[PortMapping],
    target: u16,
) -> Option<u16> {
    let valid = |p: i64| u16::try_from(p).ok().filter(|p| *p != 0);
    let candidate = match allocation {
        PortAllocation::Preserving => valid(i64::from(target)),
        PortAllocation::FixedOffset { offset } => {
            let base = i64::from(target).saturating_sub(i64::from(offset));
            let len = i64::from(range.len());
            [0, len, len.saturating_neg()]
                .into_iter()
                .find_map(|j| valid(base.saturating_add(j)))
        }
        PortAllocation::LocalPortDependent { stride } => {
            let a = last.last()?;
            let step = signed_stride(stride);
            let len = i64::from(range.len());
            let d = i64::from(target).saturating_sub(i64::from(a.external));
            // The external distance may have wrapped around the range once either way.
            [d, d.saturating_sub(len), d.saturating_add(len)]
                .into_iter()
                .filter(|d| step != 0 && d.checked_rem(step) == Some(0))
                .filter_map(|d| d.checked_div(step))
                .find_map(|q| valid(i64::from(a.local).saturating_add(q)))
        }
        PortAllocation::Sequential { .. } | PortAllocation::Random => None,
    }?;
    // Only answer what the forward rule confirms.
    let mut rng = Rng::from_seed(0);
    let cfg = PredictConfig { range, count: 1 };
    let forward = predict(&cfg, allocation, last, Some(candidate), &mut rng);
    forward
        .first()
        .filter(|c| c.port == target)
        .map(|_| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(c: &[PortCandidate]) -> Vec<u16> {
        c.iter().map(|c| c.port).collect()
    }

    fn rng() -> Rng {
        Rng::from_seed(42)
    }

    const LAST: PortMapping = PortMapping {
        local: 44333,
        external: 30000,
    };

    #[test]
    fn p2pd_section_4_3_values() {
        let cfg = PredictConfig::default();
        // p2pd: last = (44333, 30000), peer port 13073.
        // FULL_CONE+EQUAL: 13073/0/13073.
        let p = predict(
            &cfg,
            PortAllocation::Preserving,
            &[LAST],
            Some(13073),
            &mut rng(),
        );
        assert_eq!(ports(&p), [13073]);
        assert_eq!(
            local_for_external(cfg.range, PortAllocation::Preserving, &[LAST], 13073),
            Some(13073)
        );
        // RESTRICT+INDEP(4): remote 30004 (p2pd gives 30004 to every member of a batch).
        let p = predict(
            &cfg,
            PortAllocation::Sequential { stride: 4 },
            &[LAST],
            None,
            &mut rng(),
        );
        assert_eq!(ports(&p), [30004, 30008, 30012, 30016]);
        assert_eq!(
            p.iter().map(|c| c.confidence).collect::<Vec<_>>(),
            [500_000, 250_000, 125_000, 62_500]
        );
        // SYMMETRIC+INDEP(1): 30001.
        let p = predict(
            &cfg,
            PortAllocation::Sequential { stride: 1 },
            &[LAST],
            None,
            &mut rng(),
        );
        assert_eq!(p[0].port, 30001);
        // RESTRICT+DEP(4): local 44334 -> 30004.
        let dep = PortAllocation::LocalPortDependent { stride: 4 };
        let p = predict(&cfg, dep, &[LAST], Some(44334), &mut rng());
        assert_eq!(ports(&p), [30004]);
        assert_eq!(
            local_for_external(cfg.range, dep, &[LAST], 30004),
            Some(44334)
        );
        assert_eq!(local_for_external(cfg.range, dep, &[LAST], 30002), None);
        // RESTRICT_PORT+PRESERV: p2pd binds local 44333 + |13073 - 30000| = 61260. The offset seen
        // in the last mapping is 30000 - 44333 = -14333, so local 61260 maps to 46927, not 13073;
        // the right local port is 13073 + 14333 = 27406.
        let fixed = PortAllocation::FixedOffset { offset: -14333 };
        let p = predict(&cfg, fixed, &[LAST], Some(61260), &mut rng());
        assert_eq!(ports(&p), [46927]);
        assert_eq!(
            local_for_external(cfg.range, fixed, &[LAST], 13073),
            Some(27406)
        );
        let p = predict(&cfg, fixed, &[LAST], Some(27406), &mut rng());
        assert_eq!(ports(&p), [13073]);
    }

    #[test]
    fn wrap_around() {
        let all = PredictConfig::default();
        let top = PortMapping {
            local: 5000,
            external: 65534,
        };
        let p = predict(
            &all,
            PortAllocation::Sequential { stride: 1 },
            &[top],
            None,
            &mut rng(),
        );
        assert_eq!(ports(&p), [65535, 1, 2, 3]);
        // p2pd's range after its intersection rule.
        let high = PredictConfig {
            range: PortRange::new(2000, 65535).unwrap(),
            count: 2,
        };
        let p = predict(
            &high,
            PortAllocation::Sequential { stride: 1 },
            &[top],
            None,
            &mut rng(),
        );
        assert_eq!(ports(&p), [65535, 2000]);
        // 65535 + 4465 = 70000: p2pd's field_wrap gives 4464, a true wrap into [2000, 65535] 6464.
        let p = predict(
            &high,
            PortAllocation::Sequential { stride: 4465 },
            &[PortMapping {
                local: 1,
                external: 65535,
            }],
            None,
            &mut rng(),
        );
        assert_eq!(p[0].port, 6464);
        // Descending: 65535 is -1.
        let p = predict(
            &all,
            PortAllocation::Sequential { stride: 65535 },
            &[PortMapping {
                local: 1,
                external: 2,
            }],
            None,
            &mut rng(),
        );
        assert_eq!(ports(&p), [1, 65535, 65534, 65533]);
        // Fixed offset past the top.
        let p = predict(
            &all,
            PortAllocation::FixedOffset { offset: 1000 },
            &[],
            Some(65000),
            &mut rng(),
        );
        assert_eq!(ports(&p), [465]);
        assert_eq!(
            local_for_external(
                all.range,
                PortAllocation::FixedOffset { offset: 1000 },
                &[],
                465
            ),
            Some(65000)
        );
        // Dependent below the bottom.
        let p = predict(
            &all,
            PortAllocation::LocalPortDependent { stride: 10 },
            &[PortMapping {
                local: 100,
                external: 5,
            }],
            Some(99),
            &mut rng(),
        );
        assert_eq!(ports(&p), [65530]);
    }

    #[test]
    fn random_and_missing_inputs() {
        let cfg = PredictConfig {
            range: PortRange::new(40000, 40009).unwrap(),
            count: 6,
        };
        let a = predict(&cfg, PortAllocation::Random, &[], None, &mut rng());
        let b = predict(&cfg, PortAllocation::Random, &[], None, &mut rng());
        assert_eq!(a, b, "deterministic from the seed");
        assert_eq!(a.len(), 6);
        assert!(a
            .iter()
            .all(|c| cfg.range.contains(c.port) && c.confidence == 100_000));
        let mut seen = ports(&a);
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 6, "distinct");
        // Never more than the range holds.
        let tiny = PredictConfig {
            range: PortRange::new(7, 8).unwrap(),
            count: 6,
        };
        assert_eq!(
            predict(&tiny, PortAllocation::Random, &[], None, &mut rng()).len(),
            2
        );
        let full = predict(
            &PredictConfig::default(),
            PortAllocation::Random,
            &[],
            None,
            &mut rng(),
        );
        assert_eq!(full.len(), 4);
        assert_eq!(full[0].confidence, 15);
        // Missing anchors: nothing to say.
        let cfg = PredictConfig::default();
        for (a, local) in [
            (PortAllocation::Preserving, None),
            (PortAllocation::FixedOffset { offset: 3 }, None),
            (PortAllocation::Sequential { stride: 3 }, Some(5)),
            (PortAllocation::LocalPortDependent { stride: 3 }, Some(5)),
        ] {
            assert!(predict(&cfg, a, &[], local, &mut rng()).is_empty(), "{a:?}");
        }
        assert!(local_for_external(cfg.range, PortAllocation::Random, &[], 5).is_none());
        assert!(local_for_external(
            cfg.range,
            PortAllocation::Sequential { stride: 1 },
            &[LAST],
            5
        )
        .is_none());
        // The most recent mapping anchors.
        let older = PortMapping {
            local: 1,
            external: 100,
        };
        let p = predict(
            &PredictConfig { count: 100, ..cfg },
            PortAllocation::Sequential { stride: 2 },
            &[older, LAST],
            None,
            &mut rng(),
        );
        assert_eq!(p.len(), MAX_CANDIDATES);
        assert_eq!(p[0].port, 30002);
        assert!(p.iter().all(|c| c.confidence >= 1));
    }
}

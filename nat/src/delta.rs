//! The port-allocation ("delta") scorer: pure functions from probe observations to a verdict.
//!
//! A driver (not here: this module does no I/O) sends one STUN Binding request from each of N fresh
//! local sockets and records, in send order, an [`Observation`] `(local port, Option<mapped port>)`
//! per probe. A probe whose reply never came is `mapped: None`; it removes evidence but can never make
//! the scorer fail (p2pd subscripted the previous result even when it was `None`, a `TypeError` that
//! threw away the current sample too, §3.4 of the reference).
//!
//! Two rounds, as in p2pd (`delta_test`, N = 12, T = N/2 - 1 = 5):
//!
//! 1. **random local ports** ([`LocalPorts::Random`]): decides [`DeltaVerdict::Equal`],
//!    [`DeltaVerdict::FixedOffset`] and [`DeltaVerdict::Sequential`];
//! 2. **consecutive local ports** ([`LocalPorts::Consecutive`]): consulted only when round 1 refuted
//!    all three, decides [`DeltaVerdict::LocalPortDependent`] or [`DeltaVerdict::Random`].
//!
//! # Evidence
//!
//! [`score_round`] counts, for one round ([`RoundEvidence`]):
//!
//! - `replies`, and `equal`: replies with `mapped == local`;
//! - `pairs`: adjacent probes `(i - 1, i)` that both got a reply and whose local ports differ. Only
//!   index-adjacent pairs are used, so a lost probe breaks the chain instead of faking a double stride.
//!   For a pair, `ld = local_i - local_{i-1}` and `md = mapped_i - mapped_{i-1}`, both **modulo the
//!   port space** (see below) and **signed** (forward distance): p2pd takes absolute values, which
//!   confuses a stride of +10 with one of -10 and "mirrored" pairs with preserved ones;
//! - the best (most supported, smallest on ties) **offset** class `mapped - local` over pairs with
//!   `md == ld` and a non-zero offset (p2pd's "preserving" pairs); it is reported as the most common
//!   unreduced `mapped - local` of the class, i.e. as observed (p2pd's vector: `+46000`);
//! - the best non-zero **stride** `md` over all pairs (p2pd's `dist_no`, which however left out pairs
//!   with `ld == 1` and preserved pairs; we count every pair the stride explains);
//! - the best **dependent stride** `md` over pairs with `ld == 1` (p2pd's `local_dist`).
//!
//! Each tally also records whether its supporting pairs saw **at least two distinct local distances**
//! ("varied"). With a single local distance `d`, a constant offset, a sequential allocator with
//! stride `d` and a local-port-dependent one are indistinguishable; p2pd's rule "PRESERV needs two
//! distinct distances" is the same idea, but p2pd applied it only to the offset and then answered
//! RANDOM (§3.3). We answer `Inconclusive { LocalPortsDidNotVary }` instead.
//!
//! # Rules
//!
//! A hypothesis with support `s` out of `n` (replies for Equal, pairs otherwise) and minimum support
//! `T` ([`DeltaConfig::threshold`], at least 2) is
//!
//! - **confirmed** when `s >= T`, `2s > n` (a strict majority: one answer can never be confirmed
//!   together with a different one from the same counts) and the supporting pairs varied (not needed
//!   for the dependent stride, see below);
//! - **refuted** when `n >= T` and `2s <= n` (had it been true, every usable sample would support it);
//! - **undetermined** otherwise (too little evidence, or no variation).
//!
//! How the two rounds combine ([`decide`]):
//!
//! 1. Round 1 judges Equal, FixedOffset and Sequential. Exactly one confirmed: that is the answer,
//!    unless round 2 was given and refutes its prediction (Equal: replies equal; FixedOffset `o`:
//!    pairs with offset `o`; Sequential `s`: pairs with stride `s`), which gives
//!    `Inconclusive { Contradictory }`. More than one confirmed, or one confirmed while another has
//!    a majority that only lacked variation: `Inconclusive { Ambiguous }`. None confirmed and any
//!    undetermined: `Inconclusive` with the reason.
//! 2. All three refuted: round 2 is needed (`Inconclusive { NeedConsecutiveRound }` without it). Its
//!    dependent stride `k` over `ld == 1` pairs, confirmed, gives `LocalPortDependent { stride: k }`:
//!    round 1 already refuted a sequential allocator, which would show the same stride `k` at
//!    `ld == 1`. `k == 1` (or a round 2 that shows mostly equal ports) is a fixed offset, which round 1
//!    refuted: `Inconclusive { Contradictory }`. Refuted: `Random`. Undetermined: `Inconclusive`.
//!
//! Unlike p2pd, a constant offset with one distinct local distance is never RANDOM: with random local
//! ports (distinct distances) it is [`DeltaVerdict::FixedOffset`], and with one distance it is
//! inconclusive. p2pd's own test double replays the same (consecutive) local ports in round 1, so its
//! "dependent" vector is inconclusive here (a sequential NAT with stride 20 would produce exactly the
//! same observations), and becomes `LocalPortDependent { stride: 20 }` once round 1 has random local
//! ports.
//!
//! # The port space
//!
//! Distances are taken modulo [`DeltaConfig::modulus`]: by default **65536**, the true 16-bit port
//! space, so 65535 -> 0 is a distance of 1. p2pd's `field_dist(x, y, 65535)` returns
//! `min(|x - y|, 65535 - |x - y|)`, a distance modulo 65535 (and unsigned): it says 65535 and 0 are the
//! same port, one less than the 16-bit distance across the wrap. A NAT that allocates from a range
//! `low..=high` wraps modulo the range's length instead (65535 for `1..=65535`, the simulator's
//! [`crate::PortRange::ALL`]); [`DeltaConfig::with_range`] sets that modulus. With the wrong modulus,
//! a pair that crosses the wrap shows a stride off by `65536 - len`. When wraps are rare (small
//! strides and offsets) the majority rule outvotes that pair; when they are frequent (a stride or
//! offset near half the port space) the wrapped class can win and the answer would be off by one.
//! So by default [`delta_test`] scores the observations modulo 65536 **and** modulo 65535
//! ([`DeltaConfig::cross_check`]) and answers only if both agree — same rule, same observed offset,
//! strides with the same signed value — else `Inconclusive { WrapAmbiguous }`: modulo the NAT's true
//! length the truth is confirmed whenever a wrong answer is confirmed modulo another length, so the
//! two disagree instead of being wrong.
//!
//! Strides are residues: above half the modulus they are descending steps (`65535` is -1 modulo
//! 65536), which is how [`crate::predict`] reads them. A stride of +43675 in `1..=65535` may thus be
//! reported (modulo 65536) as 43676, i.e. -21860, the same step in that range. Offsets are reported
//! as observed and may differ from the NAT's configured offset by the range length (the same rule).
//!
//! # Limits
//!
//! The verdict is statistical: with random local ports a wrong answer needs a coincidence across a
//! majority of the samples. Local-port-dependent strides `k` for which `k` or `k - 1` has a factor
//! 2^9 or more in common with the modulus alias (the allocator then takes few distinct values), and
//! the model assumes a dependent NAT maps `external = base + k * local` for every local port.

use std::collections::BTreeMap;

use crate::behaviour::{P2pdDelta, PortAllocation, PortRange};

/// One probe: the local port it was sent from and the mapped (external) port the server saw, or
/// `None` when no reply came.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Observation {
    /// The local port of the probe's socket.
    pub local: u16,
    /// The mapped port from the reply, `None` if the probe was lost.
    pub mapped: Option<u16>,
}

impl Observation {
    /// A probe that got a reply.
    pub const fn new(local: u16, mapped: u16) -> Self {
        Observation {
            local,
            mapped: Some(mapped),
        }
    }

    /// A probe without a reply.
    pub const fn lost(local: u16) -> Self {
        Observation {
            local,
            mapped: None,
        }
    }
}

impl From<(u16, Option<u16>)> for Observation {
    fn from((local, mapped): (u16, Option<u16>)) -> Self {
        Observation { local, mapped }
    }
}

impl From<(u16, u16)> for Observation {
    fn from((local, mapped): (u16, u16)) -> Self {
        Observation::new(local, mapped)
    }
}

/// How a round chose its local ports.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum LocalPorts {
    /// Round 1: an independent random port per probe (p2pd: `randrange(4000, 65535)`).
    Random,
    /// Round 2: `start, start + 1, ...` (p2pd: `start = randrange(4000, 65535 - N)`).
    Consecutive,
}

/// `random` or `consecutive` (how the round chose its local ports).
impl core::fmt::Display for LocalPorts {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.pad(match self {
            LocalPorts::Random => "random",
            LocalPorts::Consecutive => "consecutive",
        })
    }
}

/// Scorer settings.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeltaConfig {
    probes: u16,
    threshold: u32,
    modulus: u32,
    cross_check: Option<u32>,
}

impl DeltaConfig {
    /// p2pd's defaults: 12 probes per round, threshold 5, the 16-bit port space (modulus 65536),
    /// cross-checked against the range `1..=65535` (modulus 65535) by [`delta_test`].
    pub const P2PD: DeltaConfig = DeltaConfig {
        probes: 12,
        threshold: 5,
        modulus: 65536,
        cross_check: Some(65535),
    };

    /// `n` probes per round and p2pd's threshold `n / 2 - 1` (at least 2).
    pub fn for_probes(n: u16) -> Self {
        DeltaConfig {
            probes: n,
            threshold: u32::from(n / 2).saturating_sub(1).max(2),
            ..Self::P2PD
        }
    }

    /// The same settings with another minimum support (raised to 2 if lower: one sample proves
    /// nothing, and a threshold of 0 would let an empty round refute everything).
    pub fn with_threshold(mut self, threshold: u32) -> Self {
        self.threshold = threshold.max(2);
        self
    }

    /// The same settings with distances modulo `modulus` (clamped to `2..=65536`) and no cross-check.
    pub fn with_modulus(mut self, modulus: u32) -> Self {
        self.modulus = modulus.clamp(2, 65536);
        self.cross_check = None;
        self
    }

    /// The same settings with [`delta_test`] also scoring modulo `modulus` (clamped to `2..=65536`)
    /// and answering only when both moduli give the same verdict; `None` turns the check off.
    pub fn with_cross_check(mut self, modulus: Option<u32>) -> Self {
        self.cross_check = modulus.map(|m| m.clamp(2, 65536));
        self
    }

    /// The same settings with distances modulo the length of `range`, the NAT's external port range
    /// when known (65535 for [`PortRange::ALL`], which matches p2pd's `field_dist` and the simulator),
    /// and no cross-check.
    pub fn with_range(self, range: PortRange) -> Self {
        self.with_modulus(range.len())
    }

    /// How many probes a driver should send per round (the scorer takes whatever it is given).
    pub fn probes(&self) -> u16 {
        self.probes
    }

    /// The minimum support `T` of a confirmed hypothesis (p2pd: `N / 2 - 1`).
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// The modulus of port distances (65536 by default).
    pub fn modulus(&self) -> u32 {
        self.modulus
    }

    /// The second modulus [`delta_test`] checks the verdict against (65535 by default).
    pub fn cross_check(&self) -> Option<u32> {
        self.cross_check
    }
}

impl Default for DeltaConfig {
    fn default() -> Self {
        Self::P2PD
    }
}

/// The best-supported value of one kind of evidence.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tally<T> {
    /// The value (an offset or a stride).
    pub value: T,
    /// How many samples support it.
    pub support: u32,
    /// Whether its supporting pairs saw at least two distinct local distances.
    pub varied: bool,
}

/// The counts one round produced: the evidence behind a verdict.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoundEvidence {
    /// How the round chose its local ports.
    pub local_ports: LocalPorts,
    /// Observations given.
    pub probes: u32,
    /// Observations with a reply.
    pub replies: u32,
    /// Adjacent observations that both got a reply, from different local ports.
    pub pairs: u32,
    /// Replies with `mapped == local`.
    pub equal: u32,
    /// Whether adjacent pairs of equal replies saw at least two distinct local distances.
    pub equal_varied: bool,
    /// The best non-zero offset class `mapped - local` over pairs with equal distances (classes are
    /// residues modulo [`DeltaConfig::modulus`]); its value is the most common unreduced
    /// `mapped - local` of the class, in `-65535..=65535`.
    pub offset: Option<Tally<i32>>,
    /// The best non-zero mapped distance over all pairs.
    pub stride: Option<Tally<u16>>,
    /// The best non-zero mapped distance over pairs whose local ports are one apart (`varied` is
    /// always false: they all have the same local distance).
    pub dependent: Option<Tally<u16>>,
    /// Pairs whose local ports are one apart.
    pub unit_pairs: u32,
}

/// Why the scorer would not answer.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DeltaInconclusive {
    /// Too few replies or pairs in this round to confirm or refute.
    TooLittleEvidence {
        /// The round lacking evidence.
        round: LocalPorts,
    },
    /// The evidence fits, but every supporting pair had the same local distance, so a constant
    /// offset, a sequential and a local-port-dependent allocator cannot be told apart.
    LocalPortsDidNotVary,
    /// More than one allocation rule is confirmed by the same counts.
    Ambiguous,
    /// The two rounds disagree.
    Contradictory,
    /// Round 1 refuted every rule it can judge; round 2 (consecutive local ports) is needed.
    NeedConsecutiveRound,
    /// A round was passed in the other round's place.
    WrongRound,
    /// The verdict depends on the port space's modulus: scored modulo [`DeltaConfig::modulus`] and
    /// modulo [`DeltaConfig::cross_check`], the same observations give different answers (ports
    /// wrapped around the top of the range, and whether the NAT skips port 0 matters).
    WrapAmbiguous,
}

/// The reason in words (for example `the two rounds disagree`).
impl core::fmt::Display for DeltaInconclusive {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DeltaInconclusive::TooLittleEvidence { round } => write!(
                f,
                "too few replies or pairs in the round on {round} local ports"
            ),
            DeltaInconclusive::LocalPortsDidNotVary => f.write_str(
                "every supporting pair had the same local distance, so the rules cannot be told \
                 apart",
            ),
            DeltaInconclusive::Ambiguous => f.write_str("more than one allocation rule fits"),
            DeltaInconclusive::Contradictory => f.write_str("the two rounds disagree"),
            DeltaInconclusive::NeedConsecutiveRound => f.write_str(
                "the round on random local ports refuted every rule; a round on consecutive local \
                 ports is needed",
            ),
            DeltaInconclusive::WrongRound => {
                f.write_str("a round was passed in the other round's place")
            }
            DeltaInconclusive::WrapAmbiguous => f.write_str(
                "the answer depends on how the NAT wraps ports around the top of the range",
            ),
        }
    }
}

/// The scorer's answer.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DeltaVerdict {
    /// Mapped port = local port. p2pd: EQUAL.
    Equal,
    /// Mapped port = local port + `offset` (non-zero). p2pd: PRESERV.
    FixedOffset {
        /// The offset as observed (`mapped - local`, in `-65535..=65535`); offsets that differ by the
        /// NAT's port-range length are the same rule.
        offset: i32,
    },
    /// Each new mapping takes the previous mapped port + `stride`. p2pd: INDEPENDENT.
    Sequential {
        /// The stride, modulo [`DeltaConfig::modulus`]; above half the modulus it means descending
        /// (modulo 65536: `stride - 65536`, as [`crate::predict`] reads it).
        stride: u16,
    },
    /// Mapped ports advance by `stride` per local port. p2pd: DEPENDENT.
    LocalPortDependent {
        /// Mapped ports per local port.
        stride: u16,
    },
    /// Enough evidence, and no rule fits. p2pd: RANDOM.
    Random,
    /// Not enough evidence, or evidence that disagrees.
    Inconclusive {
        /// Why.
        reason: DeltaInconclusive,
    },
}

/// The verdict in words: `port preserving (external = local)`, `fixed offset +2`,
/// `sequential, stride 1`, `local-port dependent, stride 2`, `random` or `inconclusive (REASON)`.
impl core::fmt::Display for DeltaVerdict {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DeltaVerdict::Equal => f.write_str("port preserving (external = local)"),
            DeltaVerdict::FixedOffset { offset } => write!(f, "fixed offset {offset:+}"),
            DeltaVerdict::Sequential { stride } => write!(f, "sequential, stride {stride}"),
            DeltaVerdict::LocalPortDependent { stride } => {
                write!(f, "local-port dependent, stride {stride}")
            }
            DeltaVerdict::Random => f.write_str("random"),
            DeltaVerdict::Inconclusive { reason } => write!(f, "inconclusive ({reason})"),
        }
    }
}

impl DeltaVerdict {
    /// The port allocation this verdict describes, `None` when inconclusive.
    pub fn allocation(&self) -> Option<PortAllocation> {
        match *self {
            DeltaVerdict::Equal => Some(PortAllocation::Preserving),
            DeltaVerdict::FixedOffset { offset } => Some(PortAllocation::FixedOffset { offset }),
            DeltaVerdict::Sequential { stride } => Some(PortAllocation::Sequential { stride }),
            DeltaVerdict::LocalPortDependent { stride } => {
                Some(PortAllocation::LocalPortDependent { stride })
            }
            DeltaVerdict::Random => Some(PortAllocation::Random),
            DeltaVerdict::Inconclusive { .. } => None,
        }
    }

    /// p2pd's delta label. An inconclusive verdict becomes RANDOM, the value aionetiface substitutes
    /// when its delta test gives nothing.
    pub fn p2pd(&self) -> P2pdDelta {
        self.allocation().map_or(P2pdDelta::Random, P2pdDelta::from)
    }

    /// Whether the scorer answered.
    pub fn is_conclusive(&self) -> bool {
        !matches!(self, DeltaVerdict::Inconclusive { .. })
    }
}

/// A verdict with the counts of both rounds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeltaReport {
    /// The answer.
    pub verdict: DeltaVerdict,
    /// Round 1's counts.
    pub random: RoundEvidence,
    /// Round 2's counts, if it ran.
    pub consecutive: Option<RoundEvidence>,
}

/// Scores both rounds and decides: [`score_round`] then [`decide`]. With a
/// [`DeltaConfig::cross_check`] modulus (the default), a conclusive verdict must also come out of
/// scoring modulo that second modulus, else it is `Inconclusive { WrapAmbiguous }`; the report's
/// counts are those modulo [`DeltaConfig::modulus`].
pub fn delta_test(
    cfg: &DeltaConfig,
    random: &[Observation],
    consecutive: Option<&[Observation]>,
) -> DeltaReport {
    let score = |cfg: &DeltaConfig| {
        let r1 = score_round(cfg, random, LocalPorts::Random);
        let r2 = consecutive.map(|obs| score_round(cfg, obs, LocalPorts::Consecutive));
        let verdict = decide(cfg, &r1, r2.as_ref());
        DeltaReport {
            verdict,
            random: r1,
            consecutive: r2,
        }
    };
    let mut report = score(cfg);
    if let Some(m) = cfg.cross_check.filter(|m| *m != cfg.modulus) {
        let other = score(&cfg.with_modulus(m)).verdict;
        if report.verdict.is_conclusive() && !agree(report.verdict, cfg.modulus, other, m) {
            report.verdict = inconclusive(DeltaInconclusive::WrapAmbiguous);
        }
    }
    report
}

/// Whether verdicts scored modulo `ma` and `mb` describe the same allocation: same rule, the same
/// observed offset, strides with the same signed value (`65535` modulo 65536 and `65534` modulo
/// 65535 are both -1).
fn agree(a: DeltaVerdict, ma: u32, b: DeltaVerdict, mb: u32) -> bool {
    use DeltaVerdict as V;
    let s = |v: u16, m: u32| signed(u32::from(v), m);
    match (a, b) {
        (V::Sequential { stride: x }, V::Sequential { stride: y })
        | (V::LocalPortDependent { stride: x }, V::LocalPortDependent { stride: y }) => {
            s(x, ma) == s(y, mb)
        }
        _ => a == b,
    }
}

/// Per-value counter with the distinct-local-distance flag.
#[derive(Copy, Clone)]
struct Acc {
    support: u32,
    first_ld: u32,
    varied: bool,
}

impl Acc {
    fn add(&mut self, ld: u32) {
        if self.support == 0 {
            self.first_ld = ld;
        } else if ld != self.first_ld {
            self.varied = true;
        }
        self.support = self.support.saturating_add(1);
    }
}

const ACC0: Acc = Acc {
    support: 0,
    first_ld: 0,
    varied: false,
};

fn best(map: &BTreeMap<u32, Acc>) -> Option<Tally<u32>> {
    let mut out: Option<Tally<u32>> = None;
    for (&value, acc) in map {
        if out.is_none_or(|b| acc.support > b.support) {
            out = Some(Tally {
                value,
                support: acc.support,
                varied: acc.varied,
            });
        }
    }
    out
}

fn inc(n: &mut u32) {
    *n = n.saturating_add(1);
}

/// `(a - b) mod m`, in `0..m`.
fn sub_mod(a: u16, b: u16, m: u32) -> u32 {
    let d = i64::from(a)
        .saturating_sub(i64::from(b))
        .checked_rem_euclid(i64::from(m.max(1)))
        .unwrap_or(0);
    u32::try_from(d).unwrap_or(0)
}

/// A residue modulo `m` as a signed value in `(-m/2, m/2]`.
fn signed(r: u32, m: u32) -> i32 {
    let r = i64::from(r);
    let m = i64::from(m);
    let v = if r.saturating_mul(2) > m {
        r.saturating_sub(m)
    } else {
        r
    };
    i32::try_from(v).unwrap_or(0)
}

/// The most common observed `mapped - local` (unreduced) among the pairs of offset class `residue`
/// (ties: the smallest magnitude). Members of one class differ by the modulus when some mapped
/// ports wrapped; any of them describes the NAT, the most common is what most probes saw.
fn raw_offset(observations: &[Observation], m: u32, residue: u32) -> i32 {
    let mut raws: BTreeMap<i32, u32> = BTreeMap::new();
    for w in observations.windows(2) {
        let [a, b] = w else { continue };
        let (Some(ma), Some(mb)) = (a.mapped, b.mapped) else {
            continue;
        };
        let ld = sub_mod(b.local, a.local, m);
        if ld != 0 && sub_mod(mb, ma, m) == ld && sub_mod(mb, b.local, m) == residue {
            let raw = i32::from(mb).saturating_sub(i32::from(b.local));
            inc(raws.entry(raw).or_insert(0));
        }
    }
    let mut out: Option<(i32, u32)> = None;
    for (&raw, &n) in &raws {
        let better =
            out.is_none_or(|(r, c)| n > c || (n == c && raw.unsigned_abs() < r.unsigned_abs()));
        if better {
            out = Some((raw, n));
        }
    }
    out.map_or_else(|| signed(residue, m), |(r, _)| r)
}

fn to_u16(t: Tally<u32>) -> Tally<u16> {
    Tally {
        value: u16::try_from(t.value).unwrap_or(u16::MAX),
        support: t.support,
        varied: t.varied,
    }
}

/// Counts one round's evidence. Never fails: lost probes (`mapped: None`), repeated local ports and
/// any port values are just fewer usable samples.
pub fn score_round(
    cfg: &DeltaConfig,
    observations: &[Observation],
    local_ports: LocalPorts,
) -> RoundEvidence {
    let m = cfg.modulus();
    let mut ev = RoundEvidence {
        local_ports,
        probes: 0,
        replies: 0,
        pairs: 0,
        equal: 0,
        equal_varied: false,
        offset: None,
        stride: None,
        dependent: None,
        unit_pairs: 0,
    };
    for o in observations {
        inc(&mut ev.probes);
        if let Some(mapped) = o.mapped {
            inc(&mut ev.replies);
            if mapped == o.local {
                inc(&mut ev.equal);
            }
        }
    }
    let mut equal = ACC0;
    let mut offsets: BTreeMap<u32, Acc> = BTreeMap::new();
    let mut strides: BTreeMap<u32, Acc> = BTreeMap::new();
    let mut dependent: BTreeMap<u32, Acc> = BTreeMap::new();
    for w in observations.windows(2) {
        let [a, b] = w else { continue };
        let (Some(ma), Some(mb)) = (a.mapped, b.mapped) else {
            continue;
        };
        let ld = sub_mod(b.local, a.local, m);
        if ld == 0 {
            continue;
        }
        let md = sub_mod(mb, ma, m);
        inc(&mut ev.pairs);
        if ma == a.local && mb == b.local {
            equal.add(ld);
        }
        if md == ld {
            let off = sub_mod(mb, b.local, m);
            if off != 0 {
                offsets.entry(off).or_insert(ACC0).add(ld);
            }
        }
        if md != 0 {
            strides.entry(md).or_insert(ACC0).add(ld);
            if ld == 1 {
                dependent.entry(md).or_insert(ACC0).add(ld);
            }
        }
        if ld == 1 {
            inc(&mut ev.unit_pairs);
        }
    }
    ev.equal_varied = equal.varied;
    ev.offset = best(&offsets).map(|t| Tally {
        value: raw_offset(observations, m, t.value),
        support: t.support,
        varied: t.varied,
    });
    ev.stride = best(&strides).map(to_u16);
    ev.dependent = best(&dependent).map(to_u16);
    ev
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Status {
    Confirmed,
    Refuted,
    Undetermined(DeltaInconclusive),
}

fn judge(
    cfg: &DeltaConfig,
    support: u32,
    of: u32,
    varied: Option<bool>,
    round: LocalPorts,
) -> Status {
    let t = cfg.threshold();
    let majority = u64::from(support).saturating_mul(2) > u64::from(of);
    if support >= t && majority {
        if varied == Some(false) {
            Status::Undetermined(DeltaInconclusive::LocalPortsDidNotVary)
        } else {
            Status::Confirmed
        }
    } else if of >= t && !majority {
        Status::Refuted
    } else {
        Status::Undetermined(DeltaInconclusive::TooLittleEvidence { round })
    }
}

fn judge_tally<T>(
    cfg: &DeltaConfig,
    t: Option<Tally<T>>,
    of: u32,
    need_varied: bool,
    round: LocalPorts,
) -> Status {
    let (support, varied) = t.map_or((0, false), |t| (t.support, t.varied));
    judge(cfg, support, of, need_varied.then_some(varied), round)
}

/// Whether `round` refutes the prediction of `verdict` (a verdict decided from round 1).
fn refutes(cfg: &DeltaConfig, round: &RoundEvidence, verdict: DeltaVerdict) -> bool {
    let r = round.local_ports;
    let status = match verdict {
        DeltaVerdict::Equal => judge(cfg, round.equal, round.replies, None, r),
        DeltaVerdict::FixedOffset { offset } => {
            let m = i64::from(cfg.modulus());
            let same = |a: i32, b: i32| i64::from(a).rem_euclid(m) == i64::from(b).rem_euclid(m);
            let t = round.offset.filter(|t| same(t.value, offset));
            judge_tally(cfg, t, round.pairs, false, r)
        }
        DeltaVerdict::Sequential { stride } => {
            let t = round.stride.filter(|t| t.value == stride);
            judge_tally(cfg, t, round.pairs, false, r)
        }
        _ => return false,
    };
    status == Status::Refuted
}

const fn inconclusive(reason: DeltaInconclusive) -> DeltaVerdict {
    DeltaVerdict::Inconclusive { reason }
}

/// Combines the evidence of round 1 (random local ports) and, if it ran, round 2 (consecutive local
/// ports) into a verdict, by the rules in the module docs.
pub fn decide(
    cfg: &DeltaConfig,
    random: &RoundEvidence,
    consecutive: Option<&RoundEvidence>,
) -> DeltaVerdict {
    use DeltaInconclusive as R;
    if random.local_ports != LocalPorts::Random
        || consecutive.is_some_and(|c| c.local_ports != LocalPorts::Consecutive)
    {
        return inconclusive(R::WrongRound);
    }
    let r1 = LocalPorts::Random;
    let candidates = [
        (
            judge(
                cfg,
                random.equal,
                random.replies,
                Some(random.equal_varied),
                r1,
            ),
            Some(DeltaVerdict::Equal),
        ),
        (
            judge_tally(cfg, random.offset, random.pairs, true, r1),
            random
                .offset
                .map(|t| DeltaVerdict::FixedOffset { offset: t.value }),
        ),
        (
            judge_tally(cfg, random.stride, random.pairs, true, r1),
            random
                .stride
                .map(|t| DeltaVerdict::Sequential { stride: t.value }),
        ),
    ];
    let mut confirmed = None;
    let mut undetermined = None;
    for (status, verdict) in candidates {
        match status {
            Status::Confirmed => {
                if confirmed.is_some() {
                    return inconclusive(R::Ambiguous);
                }
                confirmed = verdict;
            }
            Status::Undetermined(why) => {
                // "No variation" (a majority that cannot be told apart) says more than "too little
                // evidence".
                if undetermined.is_none() || why == R::LocalPortsDidNotVary {
                    undetermined = Some(why);
                }
            }
            Status::Refuted => {}
        }
    }
    if let Some(v) = confirmed {
        // Another rule with a majority of the samples, which only lacked variation: be careful.
        if undetermined == Some(R::LocalPortsDidNotVary) {
            return inconclusive(R::Ambiguous);
        }
        if consecutive.is_some_and(|c| refutes(cfg, c, v)) {
            return inconclusive(R::Contradictory);
        }
        return v;
    }
    if let Some(why) = undetermined {
        return inconclusive(why);
    }
    let Some(c) = consecutive else {
        return inconclusive(R::NeedConsecutiveRound);
    };
    let r2 = LocalPorts::Consecutive;
    if judge(cfg, c.equal, c.replies, None, r2) == Status::Confirmed {
        return inconclusive(R::Contradictory);
    }
    match judge_tally(cfg, c.dependent, c.unit_pairs, false, r2) {
        Status::Confirmed => match c.dependent {
            Some(t) if t.value != 1 => DeltaVerdict::LocalPortDependent { stride: t.value },
            _ => inconclusive(R::Contradictory),
        },
        Status::Refuted => DeltaVerdict::Random,
        Status::Undetermined(why) => inconclusive(why),
    }
}

#[cfg(test)]
mod tests;

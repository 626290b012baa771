//! The NAT classifier against ground truth in the simulator: every truth (an open host, a firewall
//! per filtering, a NAT per mapping x filtering x port allocation) at several loss levels and seeds.
//!
//! [`run_one`] classifies one truth and grades the answer; [`run_matrix`] runs the whole matrix and
//! counts per loss level. Nothing here reads the wall clock: callers time it themselves. Every run
//! is deterministic for its (truth, loss, seed), so the summary does not depend on how the runs are
//! spread over threads.
//!
//! Grading ([`Correctness`]): an answer equal to the truth is [`Correctness::Right`] (a firewall
//! with endpoint-independent filtering may also be reported as open: nothing tells them apart);
//! `Inconclusive` is [`Correctness::Inconclusive`]; anything else — a different class, `Blocked`,
//! or no report at all — is [`Correctness::Wrong`]. The port-allocation verdict is graded the same
//! way for NAT truths (a test that did not run or was cut short counts as inconclusive).

use core::time::Duration;
use std::net::{IpAddr, Ipv4Addr};

use p2pd_nat::classify::ClassifyInconclusive;
use p2pd_nat::{
    Behaviour, Classification, Classifier, ClassifierConfig, ClassifierEvent, DeltaVerdict,
    Filtering, Mapping, PortAllocation, Report, ServerSpec,
};

use crate::{Host, LinkConfig, Sim};

/// Every mapping behaviour.
pub const MAPPINGS: [Mapping; 3] = [
    Mapping::EndpointIndependent,
    Mapping::AddressDependent,
    Mapping::AddressAndPortDependent,
];

/// Every filtering behaviour.
pub const FILTERINGS: [Filtering; 3] = [
    Filtering::EndpointIndependent,
    Filtering::AddressDependent,
    Filtering::AddressAndPortDependent,
];

/// The port allocations of the matrix.
pub const ALLOCATIONS: [PortAllocation; 5] = [
    PortAllocation::Preserving,
    PortAllocation::FixedOffset { offset: 1000 },
    PortAllocation::Sequential { stride: 1 },
    PortAllocation::LocalPortDependent { stride: 2 },
    PortAllocation::Random,
];

/// The default loss levels (fractions): 0 %, 10 %, 30 %.
pub const DEFAULT_LOSSES: [f64; 3] = [0.0, 0.10, 0.30];

/// Virtual time after which a run without a report is given up (the classifier's own deadline is
/// 8 s).
pub const RUN_LIMIT: Duration = Duration::from_secs(20);

/// What is really in front of the host.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Truth {
    /// A public address, no filtering.
    Open,
    /// A public address behind a filtering firewall.
    Firewall(Filtering),
    /// A NAT.
    Nat(Mapping, Filtering, PortAllocation),
}

/// `open`, `firewall (F filtering)` or `NAT (M mapping, F filtering, ALLOCATION)`.
impl core::fmt::Display for Truth {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Truth::Open => f.write_str("open"),
            Truth::Firewall(filtering) => write!(f, "firewall ({filtering} filtering)"),
            Truth::Nat(m, filtering, a) => {
                write!(f, "NAT ({m} mapping, {filtering} filtering, {a})")
            }
        }
    }
}

/// Every truth of the matrix: open, a firewall per filtering, then every NAT (49 in all).
pub fn truths() -> Vec<Truth> {
    let mut t = vec![Truth::Open];
    t.extend(FILTERINGS.iter().map(|f| Truth::Firewall(*f)));
    for m in MAPPINGS {
        for f in FILTERINGS {
            for a in ALLOCATIONS {
                t.push(Truth::Nat(m, f, a));
            }
        }
    }
    t
}

/// How an answer compares with the truth.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Correctness {
    /// The truth.
    Right,
    /// No answer (the safe outcome under loss).
    Inconclusive,
    /// Not the truth.
    Wrong,
}

/// The grades of one run.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Correct {
    /// The classification (mapping and filtering, or open / firewall).
    pub behaviour: Correctness,
    /// The port-allocation verdict; `None` when the truth is not a NAT.
    pub allocation: Option<Correctness>,
}

/// `right`, `inconclusive` or `wrong`.
impl core::fmt::Display for Correctness {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.pad(match self {
            Correctness::Right => "right",
            Correctness::Inconclusive => "inconclusive",
            Correctness::Wrong => "wrong",
        })
    }
}

/// `behaviour B` or `behaviour B, allocation A`.
impl core::fmt::Display for Correct {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "behaviour {}", self.behaviour)?;
        match self.allocation {
            Some(a) => write!(f, ", allocation {a}"),
            None => Ok(()),
        }
    }
}

/// One classification against the truth.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The truth.
    pub truth: Truth,
    /// The loss fraction.
    pub loss: f64,
    /// The simulation seed.
    pub seed: u64,
    /// The classifier's report; `None` if it never reported within [`RUN_LIMIT`] (graded wrong).
    pub report: Option<Report>,
    /// Virtual time from start to the report.
    pub virtual_time: Duration,
    /// The grades.
    pub correct: Correct,
}

/// The two simulated RFC 5780 servers (ids 1 and 2).
pub fn servers() -> Vec<ServerSpec> {
    vec![
        ServerSpec {
            id: 1,
            primary: ([192, 0, 2, 1], 3478).into(),
            alternate: None,
        },
        ServerSpec {
            id: 2,
            primary: ([192, 0, 2, 11], 3478).into(),
            alternate: None,
        },
    ]
}

/// Grades a classification against the truth.
pub fn grade_behaviour(truth: Truth, got: Classification) -> Correctness {
    let right = match (truth, got) {
        (_, Classification::Inconclusive(_)) => return Correctness::Inconclusive,
        (Truth::Open, Classification::Open) => true,
        (Truth::Firewall(f), Classification::Firewall(g)) => f == g,
        (Truth::Firewall(Filtering::EndpointIndependent), Classification::Open) => true,
        (Truth::Nat(m, f, _), Classification::Nat { mapping, filtering }) => {
            m == mapping && f == filtering
        }
        _ => false,
    };
    if right {
        Correctness::Right
    } else {
        Correctness::Wrong
    }
}

/// Grades the port-allocation verdict (`None` when the truth is not a NAT). A test that did not run
/// or ended inconclusive counts as inconclusive.
pub fn grade_allocation(truth: Truth, report: &Report) -> Option<Correctness> {
    let Truth::Nat(_, _, allocation) = truth else {
        return None;
    };
    Some(match report.allocation.as_ref().map(|a| a.verdict) {
        None | Some(DeltaVerdict::Inconclusive { .. }) => Correctness::Inconclusive,
        Some(v) if v.allocation() == Some(allocation) => Correctness::Right,
        Some(_) => Correctness::Wrong,
    })
}

/// Runs one classification of `truth` at `loss` (a fraction, 0.0 to 1.0) with simulation seed
/// `seed`, and grades it.
pub fn run_one(truth: Truth, loss: f64, seed: u64) -> Outcome {
    let mut sim = Sim::new(seed);
    sim.add_stun_server([192, 0, 2, 1].into(), [192, 0, 2, 2].into(), 3478, 3479);
    sim.add_stun_server([192, 0, 2, 11].into(), [192, 0, 2, 12].into(), 3478, 3479);
    let link = LinkConfig::with_latency(Duration::from_millis(15))
        .jitter(Duration::from_millis(5))
        .loss(loss);
    let machine_seed = sim.machine_seed();
    let classifier = |ip: Ipv4Addr| {
        let config = ClassifierConfig {
            local_ip: IpAddr::V4(ip),
            ..ClassifierConfig::default()
        };
        Classifier::new(config, &servers(), machine_seed)
    };
    let host = match truth {
        Truth::Open => {
            let ip = Ipv4Addr::new(198, 51, 100, 7);
            sim.add_host(Host::public([ip]).with_link(link), classifier(ip))
        }
        Truth::Firewall(filtering) => {
            // A firewall is a NAT box that does not translate: endpoint-independent mapping that
            // preserves ports on the host's own public address.
            let ip = Ipv4Addr::new(198, 51, 100, 7);
            let nat = sim.add_nat(ip, Behaviour::new(Mapping::EndpointIndependent, filtering));
            sim.set_nat_link(nat, link);
            sim.add_host_behind(nat, ip, classifier(ip))
        }
        Truth::Nat(mapping, filtering, allocation) => {
            let nat = sim.add_nat(
                Ipv4Addr::new(203, 0, 113, 10),
                Behaviour::new(mapping, filtering).with_allocation(allocation),
            );
            sim.set_nat_link(nat, link);
            let ip = Ipv4Addr::new(10, 0, 0, 2);
            sim.add_host_behind(nat, ip, classifier(ip))
        }
    };
    let start = sim.now();
    sim.with_machine::<Classifier, _>(host, |c, now| c.start(now));
    let mut report = None;
    let step = Duration::from_millis(50);
    let mut elapsed = Duration::ZERO;
    while report.is_none() && elapsed < RUN_LIMIT {
        sim.run_for(step);
        elapsed = elapsed.saturating_add(step);
        for ev in sim.take_events::<Classifier>(host) {
            if let ClassifierEvent::Done(r) = ev {
                report = Some(r);
            }
        }
    }
    let virtual_time = sim.now().saturating_duration_since(start);
    let correct = match &report {
        Some(r) => Correct {
            behaviour: grade_behaviour(truth, r.classification),
            allocation: grade_allocation(truth, r),
        },
        None => Correct {
            behaviour: Correctness::Wrong,
            allocation: matches!(truth, Truth::Nat(..)).then_some(Correctness::Wrong),
        },
    };
    Outcome {
        truth,
        loss,
        seed,
        report,
        virtual_time,
        correct,
    }
}

/// A run worth a closer look: a wrong answer, or an inconclusive one without loss.
#[derive(Clone, Debug, PartialEq)]
pub struct Notable {
    /// The truth.
    pub truth: Truth,
    /// The loss fraction.
    pub loss: f64,
    /// The seed (replay one with `P2PD_SIM_SEED`).
    pub seed: u64,
    /// The classification (`None`: no report).
    pub got: Option<Classification>,
    /// The allocation verdict, if the test ran.
    pub allocation: Option<DeltaVerdict>,
    /// The grades.
    pub correct: Correct,
}

/// The counts of one loss level.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LossSummary {
    /// The loss fraction.
    pub loss: f64,
    /// Runs.
    pub runs: u32,
    /// Classifications equal to the truth.
    pub right: u32,
    /// Inconclusive classifications.
    pub inconclusive: u32,
    /// Wrong classifications (including runs without a report).
    pub wrong: u32,
    /// Runs whose truth is a NAT (those that grade allocation).
    pub nat_runs: u32,
    /// NAT runs with no allocation verdict (test not run, cut short, or inconclusive).
    pub allocation_inconclusive: u32,
    /// NAT runs with a wrong allocation verdict.
    pub allocation_wrong: u32,
    /// The slowest run, in virtual time.
    pub slowest: Duration,
    /// Every run's virtual time to its classification ([`Report::classified_in`], before the
    /// port-allocation test; without a report, the time given up after), sorted once merged, so
    /// that the summary does not depend on the threads (see [`Self::quantile`]).
    pub times: Vec<Duration>,
    /// Inconclusive classifications per reason, sorted by key once merged.
    pub reasons: Vec<(ClassifyInconclusive, u32)>,
}

impl LossSummary {
    fn add(&mut self, o: &Outcome) {
        self.runs += 1;
        match o.correct.behaviour {
            Correctness::Right => self.right += 1,
            Correctness::Inconclusive => self.inconclusive += 1,
            Correctness::Wrong => self.wrong += 1,
        }
        if let Some(a) = o.correct.allocation {
            self.nat_runs += 1;
            match a {
                Correctness::Right => {}
                Correctness::Inconclusive => self.allocation_inconclusive += 1,
                Correctness::Wrong => self.allocation_wrong += 1,
            }
        }
        self.slowest = self.slowest.max(o.virtual_time);
        self.times.push(
            o.report
                .as_ref()
                .map_or(o.virtual_time, |r| r.classified_in),
        );
        if let Some(Classification::Inconclusive(why)) = o.report.as_ref().map(|r| r.classification)
        {
            self.count_reason(why, 1);
        }
    }

    fn count_reason(&mut self, why: ClassifyInconclusive, n: u32) {
        match self.reasons.iter_mut().find(|(r, _)| *r == why) {
            Some((_, count)) => *count += n,
            None => self.reasons.push((why, n)),
        }
    }

    fn merge(&mut self, other: &LossSummary) {
        self.runs += other.runs;
        self.right += other.right;
        self.inconclusive += other.inconclusive;
        self.wrong += other.wrong;
        self.nat_runs += other.nat_runs;
        self.allocation_inconclusive += other.allocation_inconclusive;
        self.allocation_wrong += other.allocation_wrong;
        self.slowest = self.slowest.max(other.slowest);
        self.times.extend_from_slice(&other.times);
        self.times.sort_unstable();
        for &(why, n) in &other.reasons {
            self.count_reason(why, n);
        }
        self.reasons.sort_by_key(|(why, _)| why.key());
    }

    /// The median virtual time to a classification (the lower middle one for an even count; zero
    /// without runs).
    pub fn median(&self) -> Duration {
        self.quantile(50)
    }

    /// The virtual time to a classification that `percent` % of the runs did not exceed (the
    /// nearest rank; zero without runs): 50 is the median, 100 the slowest classification.
    pub fn quantile(&self, percent: u8) -> Duration {
        let mut t = self.times.clone();
        t.sort_unstable();
        let rank = (t.len() * usize::from(percent.min(100))).div_ceil(100);
        t.get(rank.saturating_sub(1)).copied().unwrap_or_default()
    }

    /// Inconclusive classifications, in percent of the runs.
    pub fn inconclusive_percent(&self) -> f64 {
        percent(self.inconclusive, self.runs)
    }

    /// Inconclusive allocation verdicts, in percent of the NAT runs.
    pub fn allocation_inconclusive_percent(&self) -> f64 {
        percent(self.allocation_inconclusive, self.nat_runs)
    }
}

fn percent(n: u32, of: u32) -> f64 {
    f64::from(n) * 100.0 / f64::from(of.max(1))
}

/// The whole matrix, per loss level.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MatrixSummary {
    /// One entry per loss level, in the order given.
    pub per_loss: Vec<LossSummary>,
    /// Wrong answers (classification or allocation) and inconclusive ones at 0 % loss, sorted by
    /// loss, truth order and seed.
    pub notable: Vec<Notable>,
}

impl MatrixSummary {
    /// Wrong answers (classification or allocation) over all loss levels.
    pub fn wrong(&self) -> u32 {
        self.per_loss
            .iter()
            .map(|l| l.wrong + l.allocation_wrong)
            .sum()
    }

    /// Inconclusive classifications at 0 % loss.
    pub fn inconclusive_without_loss(&self) -> u32 {
        self.per_loss
            .iter()
            .filter(|l| l.loss == 0.0)
            .map(|l| l.inconclusive)
            .sum()
    }

    /// Runs over all loss levels.
    pub fn runs(&self) -> u32 {
        self.per_loss.iter().map(|l| l.runs).sum()
    }

    /// The per-loss table as text (one header line, one line per loss level).
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::from(
            "  loss   runs  right  inconclusive  wrong  allocation inconclusive  median    slowest (virtual)\n",
        );
        for l in &self.per_loss {
            let _ = writeln!(
                s,
                "{:>5.0}% {:>6} {:>6} {:>6} ({:>4.1}%) {:>6} {:>7} of {:>4} ({:>4.1}%)  {:>6.3} s {:>8.3} s",
                l.loss * 100.0,
                l.runs,
                l.right,
                l.inconclusive,
                l.inconclusive_percent(),
                l.wrong + l.allocation_wrong,
                l.allocation_inconclusive,
                l.nat_runs,
                l.allocation_inconclusive_percent(),
                l.median().as_secs_f64(),
                l.slowest.as_secs_f64(),
            );
        }
        s
    }
}

/// One thread's share: its per-loss counts and its notable runs with their job index.
type Part = (Vec<LossSummary>, Vec<(usize, Notable)>);

/// Runs every truth at every loss level (fractions) with every seed, spread over the available
/// cores. Deterministic: the summary depends only on `losses` and `seeds`.
pub fn run_matrix(losses: &[f64], seeds: &[u64]) -> MatrixSummary {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    run_matrix_on(losses, seeds, threads)
}

/// [`run_matrix`] on at most `threads` threads (at least one).
pub fn run_matrix_on(losses: &[f64], seeds: &[u64], threads: usize) -> MatrixSummary {
    let truths = truths();
    // (loss index, truth index, seed): the job list, in report order.
    let jobs: Vec<(usize, usize, u64)> = (0..losses.len())
        .flat_map(|l| (0..truths.len()).flat_map(move |t| seeds.iter().map(move |s| (l, t, *s))))
        .collect();
    let threads = threads.clamp(1, jobs.len().max(1));
    let empty: Vec<LossSummary> = losses
        .iter()
        .map(|&loss| LossSummary {
            loss,
            ..LossSummary::default()
        })
        .collect();
    let worker = |k: usize| {
        let mut per_loss = empty.clone();
        let mut notable = Vec::new();
        for (j, &(l, t, seed)) in jobs.iter().enumerate() {
            if j % threads != k {
                continue;
            }
            let (Some(&truth), Some(&loss)) = (truths.get(t), losses.get(l)) else {
                continue;
            };
            let o = run_one(truth, loss, seed);
            if let Some(s) = per_loss.get_mut(l) {
                s.add(&o);
            }
            let wrong = o.correct.behaviour == Correctness::Wrong
                || o.correct.allocation == Some(Correctness::Wrong);
            let inconclusive_lossless =
                loss == 0.0 && o.correct.behaviour == Correctness::Inconclusive;
            if wrong || inconclusive_lossless {
                notable.push((
                    j,
                    Notable {
                        truth,
                        loss,
                        seed,
                        got: o.report.as_ref().map(|r| r.classification),
                        allocation: o
                            .report
                            .as_ref()
                            .and_then(|r| r.allocation.as_ref())
                            .map(|a| a.verdict),
                        correct: o.correct,
                    },
                ));
            }
        }
        (per_loss, notable)
    };
    let parts: Vec<Part> = crate::parallel::fan_out(threads, worker);
    let mut per_loss = empty;
    let mut notable = Vec::new();
    for (p, n) in parts {
        for (total, part) in per_loss.iter_mut().zip(&p) {
            total.merge(part);
        }
        notable.extend(n);
    }
    notable.sort_by_key(|(j, _)| *j);
    MatrixSummary {
        per_loss,
        notable: notable.into_iter().map(|(_, n)| n).collect(),
    }
}

/// The seeds to run: only `P2PD_SIM_SEED` when it is set (see [`crate::run_seeds`]), else `seeds`.
///
/// # Panics
/// When `P2PD_SIM_SEED` is set but not a number.
pub fn seeds_or_env(seeds: impl IntoIterator<Item = u64>) -> Vec<u64> {
    match std::env::var(crate::SEED_VAR) {
        Ok(v) => vec![crate::replay::parse_seed(&v)
            .unwrap_or_else(|| panic!("{}={v:?} is not a u64", crate::SEED_VAR))],
        Err(_) => seeds.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_has_49_truths() {
        let t = truths();
        assert_eq!(t.len(), 49);
        assert_eq!(t.first(), Some(&Truth::Open));
    }

    #[test]
    fn grading() {
        let nat = Truth::Nat(
            Mapping::EndpointIndependent,
            Filtering::AddressDependent,
            PortAllocation::Preserving,
        );
        assert_eq!(
            grade_behaviour(
                nat,
                Classification::Nat {
                    mapping: Mapping::EndpointIndependent,
                    filtering: Filtering::AddressDependent
                }
            ),
            Correctness::Right
        );
        assert_eq!(
            grade_behaviour(nat, Classification::Blocked),
            Correctness::Wrong
        );
        assert_eq!(
            grade_behaviour(
                Truth::Firewall(Filtering::EndpointIndependent),
                Classification::Open
            ),
            Correctness::Right
        );
        assert_eq!(
            grade_behaviour(
                Truth::Open,
                Classification::Inconclusive(p2pd_nat::classify::ClassifyInconclusive::Deadline)
            ),
            Correctness::Inconclusive
        );
    }

    #[test]
    fn one_run_is_right_and_deterministic() {
        let truth = Truth::Nat(
            Mapping::AddressDependent,
            Filtering::AddressAndPortDependent,
            PortAllocation::Sequential { stride: 1 },
        );
        let a = run_one(truth, 0.0, 3);
        let b = run_one(truth, 0.0, 3);
        assert_eq!(a.correct.behaviour, Correctness::Right);
        assert_ne!(a.correct.allocation, Some(Correctness::Wrong));
        assert_eq!(a.report, b.report);
        assert_eq!(a.virtual_time, b.virtual_time);
    }

    #[test]
    fn quantiles_are_nearest_ranks() {
        let ms = Duration::from_millis;
        let mut l = LossSummary::default();
        assert_eq!(l.median(), Duration::ZERO);
        l.times = vec![ms(4), ms(1), ms(3), ms(2)];
        assert_eq!(l.median(), ms(2));
        assert_eq!(l.quantile(75), ms(3));
        assert_eq!(l.quantile(100), ms(4));
        assert_eq!(l.quantile(1), ms(1));
    }

    #[test]
    fn threads_do_not_change_the_summary() {
        let losses = [0.0, 0.3];
        let one = run_matrix_on(&losses, &[1], 1);
        let two = run_matrix_on(&losses, &[1], 2);
        assert_eq!(one, two);
        assert_eq!(one.runs(), 98);
        assert_eq!(one.per_loss.len(), 2);
    }
}

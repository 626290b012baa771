//! The punch matrix's results: per-pair counts graded against the oracle, and their table.

use super::*;

/// The counts of one (pair, loss).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PairSummary {
    /// A's kind.
    pub a: Option<NatKind>,
    /// B's kind.
    pub b: Option<NatKind>,
    /// The loss fraction.
    pub loss: f64,
    /// What the oracle says.
    pub punchable: bool,
    /// Runs.
    pub runs: u32,
    /// Runs that connected.
    pub successes: u32,
    /// Failed runs by reason.
    pub failures: BTreeMap<Failure, u32>,
    /// Runs that left something behind after close.
    pub leaky: u32,
    /// The slowest success, in virtual time.
    pub slowest: Duration,
    /// Seeds of the runs worth a look: a failure of a punchable pair, an untyped failure, a leak.
    pub notable_seeds: Vec<u64>,
}

impl PairSummary {
    /// Whether this cell breaks the claim: a punchable pair below 100 %, a failure that is not a
    /// typed punch failure, or a leak.
    pub fn flagged(&self) -> bool {
        (self.punchable && self.successes < self.runs)
            || self
                .failures
                .keys()
                .any(|f| !matches!(f, Failure::Punch(_)))
            || self.leaky > 0
    }

    /// An unpunchable pair that connected anyway (fine, but worth printing).
    pub fn surprise(&self) -> bool {
        !self.punchable && self.successes > 0
    }

    pub(super) fn add(&mut self, o: &Outcome) {
        self.runs += 1;
        match &o.result {
            Ok(t) => {
                self.successes += 1;
                self.slowest = self.slowest.max(*t);
            }
            Err(f) => *self.failures.entry(f.clone()).or_default() += 1,
        }
        if !o.leaks.is_empty() {
            self.leaky += 1;
        }
        let notable = (self.punchable && !o.succeeded())
            || matches!(&o.result, Err(f) if !matches!(f, Failure::Punch(_)))
            || !o.leaks.is_empty();
        if notable {
            self.notable_seeds.push(o.seed);
        }
    }
}

/// The whole matrix: one cell per (loss, A's kind, B's kind), in that order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PunchMatrix {
    /// The cells.
    pub cells: Vec<PairSummary>,
}

impl PunchMatrix {
    /// Runs over all cells.
    pub fn runs(&self) -> u32 {
        self.cells.iter().map(|c| c.runs).sum()
    }

    /// Cells that break the claim ([`PairSummary::flagged`]).
    pub fn flagged(&self) -> Vec<&PairSummary> {
        self.cells.iter().filter(|c| c.flagged()).collect()
    }

    /// The table as text: one line per cell, then the flagged cells and surprises.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = format!(
            "{:>5} {:<16} {:<16} {:>9} {:>5} {:>5} {:>8} {:>9}  failures\n",
            "loss", "A", "B", "punchable", "runs", "ok", "success", "slowest"
        );
        for c in &self.cells {
            let failures: Vec<String> = c
                .failures
                .iter()
                .map(|(f, n)| format!("{f} x{n}"))
                .collect();
            let mark = if c.flagged() {
                "  <-- FLAGGED"
            } else if c.surprise() {
                "  (unpunchable, connected)"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "{:>4.0}% {:<16} {:<16} {:>9} {:>5} {:>5} {:>7.1}% {:>7.3} s  {}{}{}",
                c.loss * 100.0,
                c.a.map_or("?", NatKind::label),
                c.b.map_or("?", NatKind::label),
                if c.punchable { "yes" } else { "no" },
                c.runs,
                c.successes,
                f64::from(c.successes) * 100.0 / f64::from(c.runs.max(1)),
                c.slowest.as_secs_f64(),
                failures.join(", "),
                if c.leaky > 0 {
                    format!(" leaks in {} run(s)", c.leaky)
                } else {
                    String::new()
                },
                mark,
            );
        }
        s
    }
}

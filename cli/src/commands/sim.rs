//! `p2pd sim nat [--seeds N] [--loss 0,10,30] [--json]`: runs the NAT classifier against every
//! simulated truth (open host, firewalls, NATs of every mapping x filtering x port allocation) in the
//! deterministic simulator and prints how often it is right, inconclusive or wrong per loss level.
//!
//! `p2pd sim punch [--seeds N] [--loss 0,10] [--nat-rst] [--json]`: punches between whole punching
//! nodes behind every pair of NAT kinds and prints the success per pair against the oracle of
//! what is punchable in principle (see `p2pd_sim::punch_matrix`).

use crate::{out, outln};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use p2pd_sim::matrix::{run_matrix, truths, MatrixSummary};
use p2pd_sim::punch_matrix::{self, Failure, PunchMatrix, KINDS};
use serde::{Serialize, Serializer};

use super::numbers;
use super::report::{to_json, ErrorLine, Num, Reporter};

mod node;

/// Options of `p2pd sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// What to simulate.
    #[command(subcommand)]
    pub command: SimCommand,
}

/// The `p2pd sim` sub-commands.
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// The classifier accuracy matrix (exits 1 if any answer is wrong).
    Nat(SimNatArgs),
    /// The punch matrix: every pair of NAT kinds x loss x seeds (exits 1 if a punchable pair
    /// ever fails, a run ends without a typed failure, or anything is left after close).
    Punch(SimPunchArgs),
    /// The node matrix: whole nodes connect by name between every pair of NAT kinds (and two
    /// hosts behind one NAT) x loss x seeds; the path must be the oracle's (exits 1 otherwise, or
    /// if anything is left after close).
    Node(node::SimNodeArgs),
}

/// Options of `p2pd sim punch`.
#[derive(Debug, Args)]
pub struct SimPunchArgs {
    /// Seeds per pair and loss level (seeds 1..=N; N from 1 to 10000).
    #[arg(long, default_value_t = 3, value_parser = numbers::count::<u64>(1, MAX_SEEDS))]
    pub seeds: u64,
    /// Loss levels in percent (each 0 to 100), comma-separated (1 to 16 levels).
    #[arg(long, value_name = "PERCENT", value_delimiter = ',', default_value = "0,10",
          value_parser = numbers::percent)]
    pub loss: Vec<f64>,
    /// NAT boxes answer unsolicited SYNs with an RST (default: drop them silently).
    #[arg(long)]
    pub nat_rst: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Options of `p2pd sim nat`.
#[derive(Debug, Args)]
pub struct SimNatArgs {
    /// Seeds per truth and loss level (seeds 1..=N; N from 1 to 10000).
    #[arg(long, default_value_t = 5, value_parser = numbers::count::<u64>(1, MAX_SEEDS))]
    pub seeds: u64,
    /// Loss levels in percent (each 0 to 100), comma-separated (1 to 16 levels).
    #[arg(long, value_name = "PERCENT", value_delimiter = ',', default_value = "0,10,30",
          value_parser = numbers::percent)]
    pub loss: Vec<f64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `p2pd sim`; returns the process exit code.
pub fn run(args: &SimArgs) -> i32 {
    match &args.command {
        SimCommand::Nat(a) => run_nat(a),
        SimCommand::Punch(a) => run_punch(a),
        SimCommand::Node(a) => node::run(a),
    }
}

/// Most seeds per cell (`--seeds`).
pub const MAX_SEEDS: u64 = 10_000;
/// Most loss levels (`--loss`).
pub const MAX_LOSS_LEVELS: usize = 16;

/// Checks the options and converts the loss levels to fractions.
pub fn losses(args: &SimNatArgs) -> Result<Vec<f64>, String> {
    if args.seeds == 0 || args.seeds > MAX_SEEDS {
        return Err(format!(
            "--seeds {} out of range [1, {MAX_SEEDS}]",
            args.seeds
        ));
    }
    if args.loss.is_empty() || args.loss.len() > MAX_LOSS_LEVELS {
        return Err(format!("--loss needs 1 to {MAX_LOSS_LEVELS} levels"));
    }
    args.loss
        .iter()
        .map(|&l| {
            if l.is_finite() && (0.0..=100.0).contains(&l) {
                Ok(l / 100.0)
            } else {
                Err(format!("--loss {l} out of range [0, 100] (percent)"))
            }
        })
        .collect()
}

/// Runs `p2pd sim punch`: 0 when nothing is flagged, 1 otherwise (or on bad options).
pub fn run_punch(args: &SimPunchArgs) -> i32 {
    let checked = losses(&SimNatArgs {
        seeds: args.seeds,
        loss: args.loss.clone(),
        json: args.json,
    });
    let losses = match checked {
        Ok(l) => l,
        Err(e) => {
            Reporter { json: args.json }.note(
                format_args!("p2pd sim punch: {e}"),
                &ErrorLine { error: &e },
            );
            return 1;
        }
    };
    let seeds: Vec<u64> = (1..=args.seeds).collect();
    let pairs = punch_matrix::pairs(&KINDS);
    if !args.json {
        outln!(
            "punch matrix: {} pairs x {} loss level(s) x {} seed(s) = {} runs (NAT boxes {}              unsolicited SYNs)",
            pairs.len(),
            losses.len(),
            seeds.len(),
            pairs.len() * losses.len() * seeds.len(),
            if args.nat_rst { "reset" } else { "drop" }
        );
    }
    let started = Instant::now();
    let m = punch_matrix::run_matrix(&pairs, &losses, args.nat_rst, &seeds);
    let wall = started.elapsed();
    if args.json {
        outln!("{}", punch_json(&m, wall));
    } else {
        out!("{}", punch_text(&m, wall));
    }
    i32::from(!m.flagged().is_empty())
}

/// The punch matrix as text: the table, the flagged cells with their seeds, a summary line.
pub fn punch_text(m: &PunchMatrix, wall: Duration) -> String {
    use std::fmt::Write as _;
    let mut s = m.table();
    for c in m.flagged() {
        let failures: Vec<String> = c
            .failures
            .iter()
            .map(|(f, n)| format!("{f} x{n}"))
            .collect();
        let seeds: Vec<String> = c.notable_seeds.iter().map(u64::to_string).collect();
        let _ = writeln!(
            s,
            "FLAGGED: {} -> {} at {:.0}% loss: {} of {} connected, failures [{}], seeds [{}]",
            c.a.map_or("-", |k| k.label()),
            c.b.map_or("-", |k| k.label()),
            c.loss * 100.0,
            c.successes,
            c.runs,
            failures.join(", "),
            seeds.join(", ")
        );
    }
    let punchable: Vec<_> = m.cells.iter().filter(|c| c.punchable).collect();
    let ok: u32 = punchable.iter().map(|c| c.successes).sum();
    let runs: u32 = punchable.iter().map(|c| c.runs).sum();
    let surprises = m.cells.iter().filter(|c| c.surprise()).count();
    let _ = writeln!(
        s,
        "punchable pairs: {ok} of {runs} runs connected; unpunchable cells that connected:          {surprises}; flagged cells: {}; wall time {:.3} s",
        m.flagged().len(),
        wall.as_secs_f64()
    );
    s
}

/// `p2pd sim punch --json`.
#[derive(Debug, Serialize)]
struct PunchReport {
    runs: u32,
    flagged: usize,
    wall_s: Num,
    cells: Vec<PunchCell>,
}

/// One pair of NAT kinds at one loss level.
#[derive(Debug, Serialize)]
struct PunchCell {
    a: Option<&'static str>,
    b: Option<&'static str>,
    loss_percent: Num,
    punchable: bool,
    runs: u32,
    successes: u32,
    leaky: u32,
    slowest_virtual_s: Num,
    flagged: bool,
    /// Failure name -> runs, in the matrix's order of failures.
    #[serde(serialize_with = "failure_counts")]
    failures: BTreeMap<Failure, u32>,
}

fn failure_counts<S: Serializer>(f: &BTreeMap<Failure, u32>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(f.iter().map(|(failure, n)| (failure.to_string(), n)))
}

/// The punch matrix as one JSON object.
pub fn punch_json(m: &PunchMatrix, wall: Duration) -> String {
    let cells = m
        .cells
        .iter()
        .map(|c| PunchCell {
            a: c.a.map(|k| k.label()),
            b: c.b.map(|k| k.label()),
            loss_percent: Num(c.loss * 100.0),
            punchable: c.punchable,
            runs: c.runs,
            successes: c.successes,
            leaky: c.leaky,
            slowest_virtual_s: Num(secs(c.slowest)),
            flagged: c.flagged(),
            failures: c.failures.clone(),
        })
        .collect();
    to_json(&PunchReport {
        runs: m.runs(),
        flagged: m.flagged().len(),
        wall_s: Num(secs(wall)),
        cells,
    })
}

/// Runs `p2pd sim nat`: 0 when no answer is wrong, 1 otherwise (or on bad options).
pub fn run_nat(args: &SimNatArgs) -> i32 {
    let losses = match losses(args) {
        Ok(l) => l,
        Err(e) => {
            Reporter { json: args.json }
                .note(format_args!("p2pd sim nat: {e}"), &ErrorLine { error: &e });
            return 1;
        }
    };
    let seeds: Vec<u64> = (1..=args.seeds).collect();
    if !args.json {
        outln!(
            "classifier matrix: {} truths x {} loss level(s) x {} seed(s) = {} runs",
            truths().len(),
            losses.len(),
            seeds.len(),
            truths().len() * losses.len() * seeds.len()
        );
    }
    let started = Instant::now();
    let summary = run_matrix(&losses, &seeds);
    let wall = started.elapsed();
    if args.json {
        outln!("{}", json(&summary, wall));
    } else {
        out!("{}", text(&summary, wall));
    }
    i32::from(summary.wrong() > 0)
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// The accuracy table as text.
pub fn text(summary: &MatrixSummary, wall: Duration) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>5} {:>6} {:>6} {:>13} {:>6} {:>15} {:>9} {:>9} {:>9} {:>10}",
        "loss",
        "runs",
        "right",
        "inconclusive",
        "wrong",
        "alloc. inconcl.",
        "median",
        "p99",
        "max",
        "slowest"
    );
    for l in &summary.per_loss {
        let _ = writeln!(
            s,
            "{:>4.0}% {:>6} {:>6} {:>12.1}% {:>6} {:>14.1}% {:>7.3} s {:>7.3} s {:>7.3} s {:>8.3} s",
            l.loss * 100.0,
            l.runs,
            l.right,
            l.inconclusive_percent(),
            l.wrong + l.allocation_wrong,
            l.allocation_inconclusive_percent(),
            l.median().as_secs_f64(),
            l.quantile(99).as_secs_f64(),
            l.quantile(100).as_secs_f64(),
            l.slowest.as_secs_f64(),
        );
        for (why, n) in &l.reasons {
            let _ = writeln!(s, "        inconclusive: {n} x {}", why.key());
        }
    }
    let _ = writeln!(
        s,
        "(median, p99, max: virtual time to the classification; slowest: to the whole report, \
         port-allocation test included)"
    );
    for n in &summary.notable {
        let _ = writeln!(
            s,
            "{} at {:.0}% loss, seed {}: truth {}, got {}, allocation {}",
            n.correct,
            n.loss * 100.0,
            n.seed,
            n.truth,
            n.got
                .map_or_else(|| "no report".to_string(), |c| c.to_string()),
            n.allocation
                .map_or_else(|| "-".to_string(), |a| a.to_string())
        );
    }
    let _ = writeln!(
        s,
        "wall time {:.3} s; {} wrong answer(s)",
        wall.as_secs_f64(),
        summary.wrong()
    );
    s
}

/// `p2pd sim nat --json`.
#[derive(Debug, Serialize)]
struct NatMatrixReport {
    runs: u32,
    wrong: u32,
    wall_s: Num,
    per_loss: Vec<LossLevel>,
}

/// The counts of one loss level.
#[derive(Debug, Serialize)]
struct LossLevel {
    loss_percent: Num,
    runs: u32,
    right: u32,
    inconclusive: u32,
    inconclusive_percent: Num,
    wrong: u32,
    nat_runs: u32,
    allocation_inconclusive: u32,
    allocation_inconclusive_percent: Num,
    allocation_wrong: u32,
    median_virtual_s: Num,
    p99_virtual_s: Num,
    max_classify_virtual_s: Num,
    slowest_virtual_s: Num,
    /// Reason key -> inconclusive classifications.
    inconclusive_reasons: BTreeMap<&'static str, u32>,
}

/// The summary as one JSON object.
pub fn json(summary: &MatrixSummary, wall: Duration) -> String {
    let per_loss = summary
        .per_loss
        .iter()
        .map(|l| LossLevel {
            loss_percent: Num(l.loss * 100.0),
            runs: l.runs,
            right: l.right,
            inconclusive: l.inconclusive,
            inconclusive_percent: Num(l.inconclusive_percent()),
            wrong: l.wrong,
            nat_runs: l.nat_runs,
            allocation_inconclusive: l.allocation_inconclusive,
            allocation_inconclusive_percent: Num(l.allocation_inconclusive_percent()),
            allocation_wrong: l.allocation_wrong,
            median_virtual_s: Num(secs(l.median())),
            p99_virtual_s: Num(secs(l.quantile(99))),
            max_classify_virtual_s: Num(secs(l.quantile(100))),
            slowest_virtual_s: Num(secs(l.slowest)),
            inconclusive_reasons: l.reasons.iter().map(|(why, n)| (why.key(), *n)).collect(),
        })
        .collect();
    to_json(&NatMatrixReport {
        runs: summary.runs(),
        wrong: summary.wrong(),
        wall_s: Num(secs(wall)),
        per_loss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_levels_are_percent() {
        let args = SimNatArgs {
            seeds: 5,
            loss: vec![0.0, 10.0, 30.0],
            json: false,
        };
        assert_eq!(losses(&args).unwrap(), vec![0.0, 0.1, 0.3]);
        let bad = SimNatArgs {
            loss: vec![101.0],
            ..args
        };
        assert!(losses(&bad).is_err());
    }

    #[test]
    fn a_small_punch_matrix_prints() {
        use p2pd_sim::punch_matrix::NatKind;
        let pairs = [
            (NatKind::FullCone, NatKind::SymmetricRandom),
            (NatKind::PortRestricted, NatKind::SymmetricRandom),
        ];
        let m = punch_matrix::run_matrix(&pairs, &[0.0], false, &[1]);
        assert!(m.flagged().is_empty(), "{}", m.table());
        let j = punch_json(&m, Duration::from_millis(5));
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["runs"], 2, "{j}");
        assert_eq!(v["flagged"], 0, "{j}");
        assert_eq!(v["wall_s"], 0.005, "{j}");
        let cells = v["cells"].as_array().unwrap();
        assert_eq!(cells.len(), 2, "{j}");
        assert_eq!(cells[0]["a"], "full-cone", "{j}");
        assert_eq!(cells[0]["punchable"], true, "{j}");
        assert_eq!(cells[0]["failures"], serde_json::json!({}), "{j}");
        assert_eq!(cells[1]["b"], "sym/random", "{j}");
        assert_eq!(
            cells[1]["failures"],
            serde_json::json!({"NoConnection": 1}),
            "{j}"
        );
        let t = punch_text(&m, Duration::ZERO);
        assert!(t.contains("punchable pairs: 1 of 1 runs connected"), "{t}");
    }

    #[test]
    fn a_small_matrix_is_never_wrong() {
        let summary = run_matrix(&[0.0], &[1]);
        assert_eq!(summary.wrong(), 0);
        let j = json(&summary, Duration::from_millis(5));
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["runs"], 49, "{j}");
        assert_eq!(v["wrong"], 0, "{j}");
        let levels = v["per_loss"].as_array().unwrap();
        assert_eq!(levels.len(), 1, "{j}");
        assert_eq!(levels[0]["loss_percent"], 0, "{j}");
        assert_eq!(levels[0]["runs"], 49, "{j}");
        assert!(text(&summary, Duration::ZERO).contains("0 wrong answer(s)"));
    }
}

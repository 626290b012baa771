//! `p2pd sim nat [--seeds N] [--loss 0,10,30] [--json]`: runs the NAT classifier against every
//! simulated truth (open host, firewalls, NATs of every mapping x filtering x port allocation) in the
//! deterministic simulator and prints how often it is right, inconclusive or wrong per loss level.
//!
//! `p2pd sim punch [--seeds N] [--loss 0,10] [--nat-rst] [--json]`: punches between whole punching
//! nodes behind every pair of NAT kinds and prints the success per pair against the oracle of
//! what is punchable in principle (see `p2pd_sim::punch_matrix`).

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use p2pd_sim::matrix::{run_matrix, truths, MatrixSummary};
use p2pd_sim::punch_matrix::{self, PunchMatrix, KINDS};

use super::json::Object;

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
}

/// Options of `p2pd sim punch`.
#[derive(Debug, Args)]
pub struct SimPunchArgs {
    /// Seeds per pair and loss level (seeds 1..=N).
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Loss levels in percent, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,10")]
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
    /// Seeds per truth and loss level (seeds 1..=N).
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    /// Loss levels in percent, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,10,30")]
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
    }
}

/// Checks the options and converts the loss levels to fractions.
pub fn losses(args: &SimNatArgs) -> Result<Vec<f64>, String> {
    if args.seeds == 0 || args.seeds > 10_000 {
        return Err(format!("--seeds {} out of range [1, 10000]", args.seeds));
    }
    if args.loss.is_empty() {
        return Err("--loss needs at least one level".into());
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
            if args.json {
                println!("{}", Object::new().str("error", &e).finish());
            } else {
                eprintln!("p2pd sim punch: {e}");
            }
            return 1;
        }
    };
    let seeds: Vec<u64> = (1..=args.seeds).collect();
    let pairs = punch_matrix::pairs(&KINDS);
    if !args.json {
        println!(
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
        println!("{}", punch_json(&m, wall));
    } else {
        print!("{}", punch_text(&m, wall));
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

/// The punch matrix as one JSON object.
pub fn punch_json(m: &PunchMatrix, wall: Duration) -> String {
    let cells: Vec<String> = m
        .cells
        .iter()
        .map(|c| {
            let mut failures = Object::new();
            for (f, n) in &c.failures {
                failures = failures.uint(&f.to_string(), u64::from(*n));
            }
            let o = Object::new()
                .opt("a", c.a.map(|k| k.label()))
                .opt("b", c.b.map(|k| k.label()))
                .num("loss_percent", c.loss * 100.0)
                .bool("punchable", c.punchable)
                .uint("runs", u64::from(c.runs))
                .uint("successes", u64::from(c.successes))
                .uint("leaky", u64::from(c.leaky))
                .num("slowest_virtual_s", secs(c.slowest))
                .bool("flagged", c.flagged())
                .finish();
            let body = o.strip_suffix('}').unwrap_or(&o);
            format!("{body},\"failures\":{}}}", failures.finish())
        })
        .collect();
    let o = Object::new()
        .uint("runs", u64::from(m.runs()))
        .uint("flagged", m.flagged().len() as u64)
        .num("wall_s", secs(wall))
        .finish();
    let body = o.strip_suffix('}').unwrap_or(&o);
    format!("{body},\"cells\":[{}]}}", cells.join(","))
}

/// Runs `p2pd sim nat`: 0 when no answer is wrong, 1 otherwise (or on bad options).
pub fn run_nat(args: &SimNatArgs) -> i32 {
    let losses = match losses(args) {
        Ok(l) => l,
        Err(e) => {
            if args.json {
                println!("{}", Object::new().str("error", &e).finish());
            } else {
                eprintln!("p2pd sim nat: {e}");
            }
            return 1;
        }
    };
    let seeds: Vec<u64> = (1..=args.seeds).collect();
    if !args.json {
        println!(
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
        println!("{}", json(&summary, wall));
    } else {
        print!("{}", text(&summary, wall));
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
        "{:>5} {:>6} {:>6} {:>13} {:>6} {:>15} {:>10}",
        "loss", "runs", "right", "inconclusive", "wrong", "alloc. inconcl.", "slowest"
    );
    for l in &summary.per_loss {
        let _ = writeln!(
            s,
            "{:>4.0}% {:>6} {:>6} {:>12.1}% {:>6} {:>14.1}% {:>8.3} s",
            l.loss * 100.0,
            l.runs,
            l.right,
            l.inconclusive_percent(),
            l.wrong + l.allocation_wrong,
            l.allocation_inconclusive_percent(),
            l.slowest.as_secs_f64(),
        );
    }
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

/// The summary as one JSON object.
pub fn json(summary: &MatrixSummary, wall: Duration) -> String {
    let levels: Vec<String> = summary
        .per_loss
        .iter()
        .map(|l| {
            Object::new()
                .num("loss_percent", l.loss * 100.0)
                .num("runs", l.runs)
                .num("right", l.right)
                .num("inconclusive", l.inconclusive)
                .num("inconclusive_percent", l.inconclusive_percent())
                .num("wrong", l.wrong)
                .num("nat_runs", l.nat_runs)
                .num("allocation_inconclusive", l.allocation_inconclusive)
                .num(
                    "allocation_inconclusive_percent",
                    l.allocation_inconclusive_percent(),
                )
                .num("allocation_wrong", l.allocation_wrong)
                .num("slowest_virtual_s", secs(l.slowest))
                .finish()
        })
        .collect();
    let o = Object::new()
        .num("runs", summary.runs())
        .num("wrong", summary.wrong())
        .num("wall_s", secs(wall))
        .finish();
    let body = o.strip_suffix('}').unwrap_or(&o);
    format!("{body},\"per_loss\":[{}]}}", levels.join(","))
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
        assert!(j.starts_with("{\"runs\":2,\"flagged\":0,"), "{j}");
        assert!(j.contains("\"failures\":{\"NoConnection\":1}"), "{j}");
        let t = punch_text(&m, Duration::ZERO);
        assert!(t.contains("punchable pairs: 1 of 1 runs connected"), "{t}");
    }

    #[test]
    fn a_small_matrix_is_never_wrong() {
        let summary = run_matrix(&[0.0], &[1]);
        assert_eq!(summary.wrong(), 0);
        let j = json(&summary, Duration::from_millis(5));
        assert!(j.starts_with("{\"runs\":49,\"wrong\":0,"), "{j}");
        assert!(j.ends_with("]}"), "{j}");
        assert!(text(&summary, Duration::ZERO).contains("0 wrong answer(s)"));
    }
}

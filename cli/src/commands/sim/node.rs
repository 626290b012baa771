//! `p2pd sim node`: the node matrix ([`p2pd_sim::node_matrix`]) from the command line.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Args;
use p2pd_sim::node_matrix::{self, Family, NodeOutcome};
use serde::Serialize;

use crate::commands::numbers;
use crate::commands::report::to_json;
use crate::{out, outln};

/// Options of `p2pd sim node`.
#[derive(Debug, Args)]
pub struct SimNodeArgs {
    /// Seeds per layout and loss level (1 to 1000).
    #[arg(long, default_value_t = 1, value_parser = numbers::count::<u64>(1, 1000))]
    pub seeds: u64,
    /// Loss levels in percent (each 0 to 100), comma-separated (1 to 16 levels).
    #[arg(long, value_name = "PERCENT", value_delimiter = ',', default_value = "0",
          value_parser = numbers::percent)]
    pub loss: Vec<f64>,
    /// The nodes classify their NATs themselves (default: they are told the truth).
    #[arg(long)]
    pub classify: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Row {
    layout: String,
    loss_percent: f64,
    seed: u64,
    expected: &'static str,
    path: Option<&'static str>,
    allocations: u64,
    connect_ms: Option<u128>,
    correct: bool,
    error: Option<String>,
    leaks: Vec<String>,
}

#[derive(Serialize)]
struct Report {
    runs: usize,
    correct: usize,
    leaking: usize,
    wall_s: f64,
    median_ms_by_path: BTreeMap<&'static str, u128>,
    rows: Vec<Row>,
}

fn row(o: &NodeOutcome) -> Row {
    let (path, connect_ms, error) = match &o.result {
        Ok((p, d)) => (Some(p.as_str()), Some(d.as_millis()), None),
        Err(e) => (None, None, Some(e.clone())),
    };
    Row {
        layout: o.layout.label(),
        loss_percent: o.loss * 100.0,
        seed: o.seed,
        expected: o.expected.as_str(),
        path,
        allocations: o.allocations,
        connect_ms,
        correct: o.correct,
        error,
        leaks: o.leaks.clone(),
    }
}

/// Runs `p2pd sim node`; the exit code.
pub fn run(args: &SimNodeArgs) -> i32 {
    let checked = super::losses(&super::SimNatArgs {
        seeds: args.seeds,
        loss: args.loss.clone(),
        json: args.json,
    });
    let losses = match checked {
        Ok(l) => l,
        Err(e) => {
            crate::errln!("p2pd sim node: {e}");
            return 1;
        }
    };
    let layouts = node_matrix::layouts();
    let family = if args.classify {
        Family::Classified
    } else {
        Family::Given
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if !args.json {
        outln!(
            "node matrix: {} layouts x {} loss level(s) x {} seed(s), NATs {}",
            layouts.len(),
            losses.len(),
            args.seeds,
            if args.classify {
                "classified by the nodes"
            } else {
                "given"
            }
        );
    }
    let started = Instant::now();
    let outcomes = node_matrix::run_matrix(&layouts, &losses, args.seeds, family, threads);
    let wall = started.elapsed();
    let rows: Vec<Row> = outcomes.iter().map(row).collect();
    let mut by_path: BTreeMap<&'static str, Vec<u128>> = BTreeMap::new();
    for r in &rows {
        if let (Some(p), Some(ms)) = (r.path, r.connect_ms) {
            by_path.entry(p).or_default().push(ms);
        }
    }
    let medians: BTreeMap<&'static str, u128> = by_path
        .into_iter()
        .map(|(p, mut v)| {
            v.sort_unstable();
            (p, v.get(v.len() / 2).copied().unwrap_or(0))
        })
        .collect();
    let correct = rows.iter().filter(|r| r.correct).count();
    let leaking = rows.iter().filter(|r| !r.leaks.is_empty()).count();
    let ok = correct == rows.len() && leaking == 0;
    if args.json {
        outln!(
            "{}",
            to_json(&Report {
                runs: rows.len(),
                correct,
                leaking,
                wall_s: wall.as_secs_f64(),
                median_ms_by_path: medians,
                rows,
            })
        );
    } else {
        out!("{}", text(&rows, &medians, correct, leaking, wall));
    }
    i32::from(!ok)
}

fn text(
    rows: &[Row],
    medians: &BTreeMap<&'static str, u128>,
    correct: usize,
    leaking: usize,
    wall: Duration,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<36} {:>5} {:>9} {:>9} {:>9}  result",
        "layout", "loss", "expected", "path", "ms"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<36} {:>4}% {:>9} {:>9} {:>9}  {}{}",
            r.layout,
            r.loss_percent,
            r.expected,
            r.path.unwrap_or("-"),
            r.connect_ms.map_or("-".to_string(), |m| m.to_string()),
            if r.correct { "ok" } else { "WRONG" },
            if r.leaks.is_empty() {
                String::new()
            } else {
                format!(" LEAKS {:?}", r.leaks)
            },
        );
    }
    let medians: Vec<String> = medians.iter().map(|(p, m)| format!("{p} {m} ms")).collect();
    let _ = writeln!(
        s,
        "{correct} of {} runs took the oracle's path, {leaking} leaked; median connect (virtual time): {}; {:.1} s",
        rows.len(),
        medians.join(", "),
        wall.as_secs_f64()
    );
    s
}

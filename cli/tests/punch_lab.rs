//! `p2pd punch` through two real Linux NATs (the lab in `tests/lab/`): coturn answers STUN over
//! TCP on 203.0.113.1:3478, two mosquitto brokers run inside the lab on 203.0.113.3:1883 and
//! 203.0.113.4:1883, and `p2pd punch` runs on host A (initiator) and host B (`--wait`), each
//! behind its own router with the NAT mode of the pair and `inputdrop` (routers drop unsolicited
//! WAN input, so an early SYN is dropped instead of answered with an RST: lab reference §4.2).
//!
//! For every punchable pair (all six of them: masq/masq, masq/fullcone, seq/restricted,
//! snat-range/masq, preserve/masq, masq-fully/fullcone) both sides must exit 0 and each side's
//! stdout must hold the other side's stdin message (data both ways over the punched connection);
//! a failed run of any pair fails the test. Symmetric on both sides (`masq-fully` / `masq-fully`)
//! is not punchable: both sides must end with a `failed` line whose reason is `NoConnection` (no
//! connection came up in any round, not some other failure) and exit 1 (no hang). The connect times (`elapsed_ms` of the JSON `connected` line, from
//! the command's start, and from its `armed` line, i.e. from the end of the signaling exchange)
//! are printed as a table; `bench/punch-lab.sh` takes the same measurement with more runs.
//!
//! Without root, `ip netns`, `nft`, `conntrack`, `ss`, `turnserver` or `mosquitto` the test prints
//! `SKIP: ...` and passes (under `CI=true` it fails instead: CI installs all of them). The namespace
//! prefix is unique per run, and the lab (namespaces, coturn, brokers, punch processes) is torn
//! down on drop, also after a panic.

mod common;
#[path = "common/lab_punch.rs"]
mod lab_punch;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::lab::Lab;
use common::p2pd_bin;
use lab_punch::{common_args, identity, skip_reason, start_brokers, Punch, Side};

/// A NAT pair to punch through.
struct Pair {
    a: &'static str,
    b: &'static str,
    /// Extra `p2pd punch` options on A's and B's side (their NAT's behaviour).
    args_a: &'static [&'static str],
    args_b: &'static [&'static str],
    runs: usize,
    /// Whether the pair must connect (otherwise it must fail with the no-connection failure).
    punchable: bool,
}

#[derive(Default)]
struct Tally {
    runs: usize,
    ok: usize,
    /// A's `connected` elapsed_ms (from its start).
    start_ms: Vec<f64>,
    /// Both sides' time from `armed` to `connected`.
    armed_ms: Vec<f64>,
    notes: Vec<String>,
}

fn stats(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let median = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    format!("{median:.0} / {:.0} / {:.0}", s[0], s[s.len() - 1])
}

/// One punch of `pair`; returns whether it did what the pair must do, and why not.
fn run_once(
    lab: &Lab,
    pair: &Pair,
    ids: &[(PathBuf, String); 2],
    tally: &mut Tally,
) -> Result<(), String> {
    lab.script("nat.sh", &["A", pair.a, "inputdrop"])?;
    lab.script("nat.sh", &["B", pair.b, "inputdrop"])?;
    let timeout = if pair.punchable { "20" } else { "60" };
    let (msg_a, msg_b) = (
        format!("hello from A via {}\n", pair.a),
        format!("hello from B via {}\n", pair.b),
    );
    let mut args_b = vec!["--wait".to_string()];
    args_b.extend(common_args(&ids[1].0, timeout));
    args_b.extend(pair.args_b.iter().map(|s| s.to_string()));
    let b = Punch::spawn(lab, "hb", &args_b, msg_b.as_bytes(), msg_a.as_bytes());
    // B subscribes to both brokers first (A's offer would be re-sent anyway, once a second).
    std::thread::sleep(Duration::from_millis(500));
    let mut args_a = vec![ids[1].1.clone()];
    args_a.extend(common_args(&ids[0].0, timeout));
    args_a.extend(pair.args_a.iter().map(|s| s.to_string()));
    let a = Punch::spawn(lab, "ha", &args_a, msg_a.as_bytes(), msg_b.as_bytes());
    let limit = Duration::from_secs(if pair.punchable { 40 } else { 90 });
    let a = a.finish(limit);
    let b = b.finish(Duration::from_secs(10));
    tally.runs += 1;
    if pair.punchable {
        let ok = a.code == Some(0)
            && b.code == Some(0)
            && a.got(msg_b.as_bytes())
            && b.got(msg_a.as_bytes())
            && a.event("connected").is_some()
            && b.event("connected").is_some();
        if !ok {
            return Err(format!("{}\n{}", a.describe("A"), b.describe("B")));
        }
        tally.ok += 1;
        if let Some(t) = a.elapsed("connected") {
            tally.start_ms.push(t);
        }
        tally.armed_ms.extend(
            [a.armed_to_connected(), b.armed_to_connected()]
                .into_iter()
                .flatten(),
        );
        if let (Some(l), Some(r)) = (a.event("connected"), b.event("connected")) {
            let field =
                |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
            tally.notes.push(format!(
                "A {} -> {}, B {} -> {}",
                field(&l, "local"),
                field(&l, "remote"),
                field(&r, "local"),
                field(&r, "remote")
            ));
        }
        Ok(())
    } else {
        // Not punchable: on both sides the failure that says no connection came up (not any
        // failure: a signaling one would be "no answer"), exit 1, no data, no hang.
        let typed = |s: &Side| {
            s.code == Some(1)
                && s.event("connected").is_none()
                && s.event("failed").is_some_and(|l| {
                    l["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("no connection within the punch window"))
                })
        };
        if !(typed(&a) && typed(&b)) {
            return Err(format!(
                "expected a NoConnection failure on both sides\n{}\n{}",
                a.describe("A"),
                b.describe("B")
            ));
        }
        tally.ok += 1;
        for s in [&a, &b] {
            if let Some(l) = s.event("failed") {
                tally.notes.push(format!(
                    "failed after {} ms: {}",
                    l["elapsed_ms"],
                    l["reason"].as_str().unwrap_or_default()
                ));
            }
        }
        Ok(())
    }
}

#[test]
fn punch_through_real_nats() {
    if let Some(reason) = skip_reason() {
        common::skip_or_fail(&reason);
        return;
    }
    let started = Instant::now();
    let bin = p2pd_bin(); // built before the lab exists
    assert!(bin.is_file());
    let lab = Lab::start("pp");
    let _brokers = start_brokers(&lab);
    let ids = [identity(&lab, "a"), identity(&lab, "b")];

    const SEQ: &[&str] = &["--nat-mapping", "apdm", "--nat-allocation", "sequential:1"];
    const EIM: &[&str] = &["--nat-mapping", "eim"];
    let pair = |a, b, args_a, args_b, runs, punchable| Pair {
        a,
        b,
        args_a,
        args_b,
        runs,
        punchable,
    };
    // Every pair is required: a failed run of any of them fails the test.
    let pairs = [
        pair("masq", "masq", &[][..], &[][..], 2, true),
        pair("masq", "fullcone", &[], &[], 2, true),
        pair("seq", "restricted", SEQ, &[], 2, true),
        pair("snat-range", "masq", &[], &[], 1, true),
        pair("preserve", "masq", EIM, &[], 1, true),
        pair("masq-fully", "fullcone", &[], &[], 1, true),
        pair("masq-fully", "masq-fully", &[], &[], 1, false),
    ];
    let mut table = Vec::new();
    let mut failures = Vec::new();
    for p in &pairs {
        let mut tally = Tally::default();
        for run in 0..p.runs {
            if let Err(e) = run_once(&lab, p, &ids, &mut tally) {
                let line = format!("{}/{} run {run}: {e}", p.a, p.b);
                eprintln!("{line}");
                failures.push(line);
            }
        }
        table.push((p, tally));
    }

    eprintln!();
    eprintln!("p2pd punch through two real NATs (inputdrop routers; ms = median / min / max):");
    eprintln!(
        "{:<36} {:>4} {:>4}  {:<22} {:<22}",
        "pair A/B", "runs", "ok", "start->connected (A)", "armed->connected"
    );
    for (p, t) in &table {
        let name = format!(
            "{}/{}{}",
            p.a,
            p.b,
            if p.punchable { "" } else { " (must fail)" }
        );
        eprintln!(
            "{:<36} {:>4} {:>4}  {:<22} {:<22}",
            name,
            t.runs,
            t.ok,
            stats(&t.start_ms),
            stats(&t.armed_ms)
        );
        for n in &t.notes {
            eprintln!("    {n}");
        }
    }
    eprintln!("total {:.1} s", started.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{} failed run(s)", failures.len());
}

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

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::lab::{self, Lab};
use common::{event_of, json_line, json_object, p2pd_bin, ChildGuard};

/// Why the lab (with mosquitto) cannot run here, if it cannot.
fn skip_reason() -> Option<String> {
    lab::skip_reason().or_else(|| {
        common::mosquitto_binary()
            .is_none()
            .then(|| "`mosquitto` is unavailable".into())
    })
}

/// A new identity file; returns (path, public key hex).
fn identity(lab: &Lab, name: &str) -> (PathBuf, String) {
    let file = lab.state.join(format!("{name}.key"));
    let out = Command::new(p2pd_bin())
        .args(["id", "new", "--json", "--file"])
        .arg(&file)
        .output()
        .expect("p2pd id new");
    assert!(out.status.success(), "p2pd id new: {out:?}");
    let json = json_object(&String::from_utf8_lossy(&out.stdout));
    let key = json["public_key"].as_str().expect("public_key").to_string();
    (file, key)
}

const BROKERS: [&str; 2] = ["203.0.113.3:1883", "203.0.113.4:1883"];
const STUN: &str = "203.0.113.1:3478";

/// One side of a run: what the process printed and how it ended.
#[derive(Debug, Default)]
struct Side {
    code: Option<i32>,
    stdout: String,
    /// The JSON status lines.
    status: Vec<String>,
}

impl Side {
    /// The first status line of this event, parsed.
    fn event(&self, name: &str) -> Option<serde_json::Value> {
        self.status
            .iter()
            .filter_map(|l| json_line(l))
            .find(|l| event_of(l) == Some(name))
    }

    fn elapsed(&self, name: &str) -> Option<f64> {
        self.event(name).and_then(|l| l["elapsed_ms"].as_f64())
    }

    /// Milliseconds from the `armed` line of the round that connected to `connected`.
    fn armed_to_connected(&self) -> Option<f64> {
        let connected = self.elapsed("connected")?;
        let armed = self
            .status
            .iter()
            .filter_map(|l| json_line(l))
            .filter(|l| event_of(l) == Some("armed"))
            .filter_map(|l| l["elapsed_ms"].as_f64())
            .rfind(|t| *t <= connected)?;
        Some(connected - armed)
    }
}

/// A running `p2pd punch` in a host namespace. Its stdin carries `message` and stays open until
/// its stdout holds `expect` (the peer's message) or ends, so the close that follows stdin's EOF
/// never races the peer's bytes; the reader threads report the result.
struct Punch {
    guard: ChildGuard,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<Vec<String>>,
}

impl Punch {
    fn spawn(lab: &Lab, host: &str, args: &[String], message: &str, expect: &str) -> Punch {
        let mut guard = ChildGuard::spawn(
            "p2pd punch",
            Command::new("ip")
                .args(["netns", "exec", &lab.ns(host)])
                .arg(p2pd_bin())
                .arg("punch")
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .expect("spawn p2pd punch");
        let mut stdin = guard.child.stdin.take();
        let mut stdout = guard.child.stdout.take().expect("stdout");
        let stderr = guard.child.stderr.take().expect("stderr");
        if let Some(s) = stdin.as_mut() {
            s.write_all(message.as_bytes()).expect("write stdin");
            s.flush().expect("flush stdin");
        }
        let expect = expect.to_string();
        let (out_tx, out) = mpsc::channel();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
                if String::from_utf8_lossy(&got).contains(&expect) {
                    stdin = None; // EOF: the CLI closes once everything is written
                }
            }
            drop(stdin);
            let _ = out_tx.send(String::from_utf8_lossy(&got).into_owned());
        });
        let (err_tx, err) = mpsc::channel();
        std::thread::spawn(move || {
            let lines: Vec<String> = BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .collect();
            let _ = err_tx.send(lines);
        });
        Punch { guard, out, err }
    }

    /// Waits until the process ends (killed after `limit`).
    fn finish(mut self, limit: Duration) -> Side {
        let deadline = Instant::now() + limit;
        let code = loop {
            if let Some(status) = self.guard.exited() {
                break status.code();
            }
            if Instant::now() >= deadline {
                let _ = self.guard.child.kill();
                let _ = self.guard.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stdout = self
            .out
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default();
        let status = self
            .err
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default();
        Side {
            code,
            stdout,
            status,
        }
    }
}

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
    let common = |id: &PathBuf| -> Vec<String> {
        let mut v = vec!["--identity".to_string(), id.display().to_string()];
        for b in BROKERS {
            v.extend(["--broker".to_string(), b.to_string()]);
        }
        v.extend(
            ["--stun", STUN, "--json", "--timeout", timeout]
                .iter()
                .map(|s| s.to_string()),
        );
        v
    };
    let (msg_a, msg_b) = (
        format!("hello from A via {}\n", pair.a),
        format!("hello from B via {}\n", pair.b),
    );
    let mut args_b = vec!["--wait".to_string()];
    args_b.extend(common(&ids[1].0));
    args_b.extend(pair.args_b.iter().map(|s| s.to_string()));
    let b = Punch::spawn(lab, "hb", &args_b, &msg_b, &msg_a);
    // B subscribes to both brokers first (A's offer would be re-sent anyway, once a second).
    std::thread::sleep(Duration::from_millis(500));
    let mut args_a = vec![ids[1].1.clone()];
    args_a.extend(common(&ids[0].0));
    args_a.extend(pair.args_a.iter().map(|s| s.to_string()));
    let a = Punch::spawn(lab, "ha", &args_a, &msg_a, &msg_b);
    let limit = Duration::from_secs(if pair.punchable { 40 } else { 90 });
    let a = a.finish(limit);
    let b = b.finish(Duration::from_secs(10));
    tally.runs += 1;
    let describe = |name: &str, s: &Side| {
        format!(
            "{name}: exit {:?}, stdout {:?}\n  {}",
            s.code,
            s.stdout,
            s.status.join("\n  ")
        )
    };
    if pair.punchable {
        let ok = a.code == Some(0)
            && b.code == Some(0)
            && a.stdout.contains(&msg_b)
            && b.stdout.contains(&msg_a)
            && a.event("connected").is_some()
            && b.event("connected").is_some();
        if !ok {
            return Err(format!("{}\n{}", describe("A", &a), describe("B", &b)));
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
                describe("A", &a),
                describe("B", &b)
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
    let _brokers = [lab.broker("203.0.113.3"), lab.broker("203.0.113.4")];
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

//! `p2pd punch` in the real-NAT lab, shared by `punch_lab` and `punch_lab_capture`: the lab's
//! brokers and STUN server, identities, one side's process (stdin fed, stdout and the JSON status
//! lines collected) and what it left.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::lab::{self, Lab};
use crate::common::pcap::contains;
use crate::common::{event_of, json_line, json_object, p2pd_bin, ChildGuard};

/// The two mosquitto brokers inside the lab ([`start_brokers`]).
pub const BROKERS: [&str; 2] = ["203.0.113.3:1883", "203.0.113.4:1883"];
/// coturn's STUN over TCP.
pub const STUN: &str = "203.0.113.1:3478";

/// Why the lab (with mosquitto) cannot run here, if it cannot.
pub fn skip_reason() -> Option<String> {
    lab::skip_reason().or_else(|| {
        crate::common::mosquitto_binary()
            .is_none()
            .then(|| "`mosquitto` is unavailable".into())
    })
}

/// The brokers of [`BROKERS`], running until dropped.
pub fn start_brokers(lab: &Lab) -> [ChildGuard; 2] {
    [lab.broker("203.0.113.3"), lab.broker("203.0.113.4")]
}

/// A new identity file; returns (path, public key hex).
pub fn identity(lab: &Lab, name: &str) -> (PathBuf, String) {
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

/// The options every lab punch takes: identity, both brokers, STUN, JSON status, `--timeout`.
pub fn common_args(id: &Path, timeout: &str) -> Vec<String> {
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
}

/// One side of a run: what the process printed and how it ended.
#[derive(Debug, Default)]
pub struct Side {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    /// The JSON status lines.
    pub status: Vec<String>,
}

impl Side {
    /// The first status line of this event, parsed.
    pub fn event(&self, name: &str) -> Option<serde_json::Value> {
        self.status
            .iter()
            .filter_map(|l| json_line(l))
            .find(|l| event_of(l) == Some(name))
    }

    pub fn elapsed(&self, name: &str) -> Option<f64> {
        self.event(name).and_then(|l| l["elapsed_ms"].as_f64())
    }

    /// Milliseconds from the `armed` line of the round that connected to `connected`.
    pub fn armed_to_connected(&self) -> Option<f64> {
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

    /// Whether stdout holds `bytes`.
    pub fn got(&self, bytes: &[u8]) -> bool {
        contains(&self.stdout, bytes)
    }

    /// Exit code, stdout (its first 200 bytes when longer) and status lines, for a failure.
    pub fn describe(&self, name: &str) -> String {
        let shown = String::from_utf8_lossy(&self.stdout[..self.stdout.len().min(200)]);
        let more = if self.stdout.len() > 200 {
            format!(" ... ({} bytes)", self.stdout.len())
        } else {
            String::new()
        };
        format!(
            "{name}: exit {:?}, stdout {shown:?}{more}\n  {}",
            self.code,
            self.status.join("\n  ")
        )
    }
}

/// A running `p2pd punch` in a host namespace. Its stdin carries `message` and stays open until
/// its stdout holds `expect` (the peer's message) or ends, so the close that follows stdin's EOF
/// never races the peer's bytes; the reader threads report the result.
pub struct Punch {
    guard: ChildGuard,
    out: mpsc::Receiver<Vec<u8>>,
    err: mpsc::Receiver<Vec<String>>,
}

impl Punch {
    pub fn spawn(lab: &Lab, host: &str, args: &[String], message: &[u8], expect: &[u8]) -> Punch {
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
        let mut stdin = guard.child.stdin.take().expect("stdin");
        let mut stdout = guard.child.stdout.take().expect("stdout");
        let stderr = guard.child.stderr.take().expect("stderr");
        // The writer holds stdin until the reader has seen the peer's message (or stdout ended:
        // the sender is dropped); a message bigger than the pipe never blocks the caller.
        let (seen_tx, seen) = mpsc::channel::<()>();
        let message = message.to_vec();
        std::thread::spawn(move || {
            if stdin
                .write_all(&message)
                .and_then(|()| stdin.flush())
                .is_ok()
            {
                let _ = seen.recv();
            }
            drop(stdin); // EOF: the CLI closes once everything is written
        });
        let expect = expect.to_vec();
        let (out_tx, out) = mpsc::channel();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 16384];
            let mut seen_tx = Some(seen_tx);
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
                if seen_tx.is_some() && contains(&got, &expect) {
                    if let Some(tx) = seen_tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
            drop(seen_tx);
            let _ = out_tx.send(got);
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
    pub fn finish(mut self, limit: Duration) -> Side {
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

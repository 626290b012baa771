//! The issue-10 attack on the real `p2pd pnp-server` binary, default settings (a 4,096-source
//! rate table), on loopback: `P2PD_FLOOD_RATE` (default 8,000) new UDP sources per second for
//! `P2PD_FLOOD_SECONDS` (default 10) s, each datagram from a new 127.x.y.z address (Linux makes
//! all of 127.0.0.0/8 local, so nothing is forged), while a fresh client (new key, new address)
//! sends one lookup every 50 ms and waits up to 1 s for the answer to that one datagram.
//!
//! Prints the first-try answer rate, the server's memory (VmRSS before, VmHWM after) and CPU,
//! and its `stopped` counters.
//!
//! ```text
//! cargo bench -p p2pd --bench pnp_flood
//! ```

#[path = "../tests/common/flood.rs"]
mod flood;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use p2pd_cli::identity_file::write_identity;
use p2pd_signaling::Identity;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the ")".
    fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
}

fn main() {
    if !cfg!(target_os = "linux") {
        println!("SKIP: the loopback flood needs every 127.x.y.z address to be local (Linux)");
        return;
    }
    let rate: u32 = env_or("P2PD_FLOOD_RATE", 8_000);
    let seconds: f64 = env_or("P2PD_FLOOD_SECONDS", 10.0);
    let dir = std::env::temp_dir().join(format!("p2pd-flood-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let identity = Identity::from_secret_bytes(&[0x42; 32]).unwrap();
    let key_file = dir.join("server.key");
    write_identity(&key_file, &identity, true).unwrap();
    let (port, _) = p2pd_tests::free_port_pair();
    let addr = SocketAddr::new(p2pd_tests::LO1, port);
    let mut child = Command::new(env!("CARGO_BIN_EXE_p2pd"))
        .arg("pnp-server")
        .arg("--db")
        .arg(dir.join("names.db"))
        .args(["--udp", &addr.to_string(), "--tcp", &addr.to_string()])
        .arg("--identity")
        .arg(&key_file)
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn p2pd pnp-server");
    let pid = child.id();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut listening = 0;
    let mut line = String::new();
    while listening < 2 {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "server exited");
        if line.contains("\"listening\"") {
            listening += 1;
        }
    }
    let rss_before = proc_status_kb(pid, "VmRSS:");
    let ticks_before = cpu_ticks(pid);
    let report = flood::run(&flood::Flood {
        server: addr,
        server_key: identity.public_key(),
        sources_per_second: rate,
        duration: Duration::from_secs_f64(seconds),
        warmup: Duration::from_secs(1),
        probe_every: Duration::from_millis(50),
        probe_timeout: Duration::from_secs(1),
    });
    let ticks = cpu_ticks(pid) - ticks_before;
    let hwm = proc_status_kb(pid, "VmHWM:");
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let mut stopped = String::new();
    for l in out.lines() {
        let l = l.unwrap();
        if l.contains("\"stopped\"") {
            stopped = l;
        }
    }
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let hz = 100.0; // USER_HZ on Linux
    println!(
        "flood: {} datagrams from new sources ({} failed to send) at {rate}/s for {seconds} s",
        report.flood_sent, report.flood_failed
    );
    println!(
        "first try: {} of {} fresh clients answered ({:.1} %), slowest {:.1} ms",
        report.answered_first_try,
        report.probes,
        100.0 * f64::from(report.answered_first_try) / f64::from(report.probes.max(1)),
        report.slowest_answer.as_secs_f64() * 1000.0
    );
    println!(
        "server: VmRSS {rss_before} kB before, VmHWM {hwm} kB after; CPU {:.0} % of one core",
        100.0 * ticks as f64 / hz / seconds
    );
    println!("server {stopped}");
}

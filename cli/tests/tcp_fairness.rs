//! TCP servers stay fair under slow and idle clients: `p2pd stun-server --tcp` and
//! `p2pd pnp-server` (its TCP side), each with its default limits, while one source (127.0.0.2)
//! drips a byte per second on 64 connections or holds as many idle connections as it can (up to
//! 2,000 here; `bench/tcp-fairness.sh` measures 5,000), reconnecting whatever the server closes.
//! Probes from another source (127.0.0.1) must be served in at least 99 % of tries, and the
//! server's open descriptors stay bounded by its connection limit.
//!
//! Before the fix (global slots, any byte renewing the idle timer, newcomers left in the
//! backlog when all slots were taken) the probes starved: run against commit b643805, every
//! scenario served 0 of 100 probes (the attacker held all 64 slots, or the slots and the backlog).
//! With the fix: 100 of 100 in each.
//!
//! The scenarios run one at a time (they measure a shared machine), each within about 15 s.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::{
    event_of, free_port_pair, identity, json_line, p2pd_bin, ChildGuard, Scratch, LO1, LO2,
};
use p2pd_signaling::PublicKey;
use p2pd_tests::tcp_attack::{
    pnp_probe, probe_window, raise_fd_limit, stun_probe, Attack, Attacker, ProbeReport,
    ResourceSampler,
};

/// One scenario at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const PROBES: usize = 100;
const PROBE_SPACING: Duration = Duration::from_millis(80);
const PROBE_TIMEOUT: Duration = Duration::from_secs(4);
/// The servers' default connection limit (`ConnectionLimits::DEFAULT`), plus the spare slot and
/// what a server holds besides connections (listeners, UDP, epoll, waker, std streams, the
/// database): the most descriptors a fair server may show.
const FD_BOUND: usize = 64 + 1 + 24;

/// A server child process whose stdout is kept open (so it never gets EPIPE).
struct Server {
    addr: SocketAddr,
    guard: ChildGuard,
    _stdout: BufReader<ChildStdout>,
    _dir: Option<Scratch>,
    key: Option<PublicKey>,
}

impl Server {
    fn pid(&self) -> u32 {
        self.guard.child.id()
    }
}

/// Spawns `cmd` and waits for `listening` lines (two: UDP and TCP).
fn wait_listening(name: &str, cmd: &mut Command) -> (ChildGuard, BufReader<ChildStdout>) {
    let mut guard = ChildGuard::spawn(
        name,
        cmd.arg("--json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )
    .expect("spawn the server");
    let mut out = BufReader::new(guard.child.stdout.take().expect("stdout"));
    let (mut listening, mut seen, mut line) = (0, String::new(), String::new());
    while listening < 2 {
        line.clear();
        let n = out.read_line(&mut line).unwrap_or(0);
        assert!(n > 0, "{name} exited before listening:\n{seen}");
        seen.push_str(&line);
        let json = json_line(&line);
        let event = json.as_ref().and_then(event_of);
        assert_ne!(event, Some("socket-failed"), "{name}: {line}");
        if event == Some("listening") {
            listening += 1;
        }
    }
    (guard, out)
}

/// `p2pd stun-server --tcp` on 127.0.0.1, its defaults untouched.
fn stun_server() -> Server {
    let (port, _) = free_port_pair();
    let (guard, out) = wait_listening(
        "p2pd stun-server",
        Command::new(p2pd_bin()).args([
            "stun-server",
            "--primary",
            "127.0.0.1",
            "--single",
            "--tcp",
            "--port",
            &port.to_string(),
        ]),
    );
    Server {
        addr: SocketAddr::new(LO1, port),
        guard,
        _stdout: out,
        _dir: None,
        key: None,
    }
}

/// `p2pd pnp-server` on 127.0.0.1 (UDP and TCP), its defaults untouched.
fn pnp_server() -> Server {
    let dir = Scratch::new("tcp-fairness");
    let key_file = dir.identity_file("server.key", 0x61);
    let (port, _) = free_port_pair();
    let addr = SocketAddr::new(LO1, port).to_string();
    let (guard, out) = wait_listening(
        "p2pd pnp-server",
        Command::new(p2pd_bin())
            .arg("pnp-server")
            .arg("--db")
            .arg(dir.path("names.db"))
            .args(["--udp", &addr, "--tcp", &addr, "--identity"])
            .arg(&key_file),
    );
    Server {
        addr: SocketAddr::new(LO1, port),
        guard,
        _stdout: out,
        _dir: Some(dir),
        key: Some(identity(0x61).public_key()),
    }
}

/// Runs `attack` from 127.0.0.2 against `server` and a window of probes from 127.0.0.1;
/// asserts that at least 99 % were served and that the server's descriptors stayed bounded.
fn assert_fair_under(server: &Server, attack: Attack, label: &str) {
    let connections = match &attack {
        Attack::Drip { connections, .. } | Attack::Idle { connections } => *connections,
    };
    let sampler = ResourceSampler::start(server.pid());
    let attacker = Attacker::start(attack, server.addr, LO2);
    // Let the attack take hold: all of its connections, or what the server lets it open.
    attacker.wait_connects(connections.min(200) as u64, Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(500));
    let held = attacker.held();
    let addr = server.addr;
    let report: ProbeReport = match server.key {
        Some(key) => probe_window(PROBES, PROBE_SPACING, move |i| {
            pnp_probe(addr, key, i, PROBE_TIMEOUT)
        }),
        None => probe_window(PROBES, PROBE_SPACING, move |i| {
            stun_probe(addr, i, PROBE_TIMEOUT)
        }),
    };
    let stats = attacker.stop();
    let (rss, fds) = sampler.stop();
    eprintln!(
        "{label}: {report}; attacker held {held} connections when probing began, {} handshakes, \
         {} failed connects, {} closed by the server; server peak {rss} KiB RSS, {fds} fds",
        stats.connects, stats.failed_connects, stats.closed_by_server
    );
    assert!(
        report.served_at_least(99),
        "{label}: only {report} (goal: 99 %)"
    );
    assert!(
        fds <= FD_BOUND,
        "{label}: server had {fds} descriptors open (bound {FD_BOUND})"
    );
}

/// As many idle connections as this process may open, up to 2,000.
fn idle_connections() -> usize {
    let limit = raise_fd_limit(4096);
    // Keep room for the probes (each PNP probe runs its own runtime) and the test harness.
    usize::try_from(limit.saturating_sub(800))
        .unwrap_or(0)
        .clamp(64, 2000)
}

/// [`assert_fair_under`] one source holding [`idle_connections`] idle connections.
fn assert_fair_under_idle_connections(server: &Server, name: &str) {
    let n = idle_connections();
    assert_fair_under(
        server,
        Attack::Idle { connections: n },
        &format!("{name}, {n} idle"),
    );
}

#[test]
fn stun_server_tcp_serves_others_while_one_source_drips() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = stun_server();
    assert_fair_under(&server, Attack::stun_drip(64), "stun-server, 64 drips");
}

#[test]
fn stun_server_tcp_serves_others_while_one_source_holds_idle_connections() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert_fair_under_idle_connections(&stun_server(), "stun-server");
}

#[test]
fn pnp_server_tcp_serves_others_while_one_source_drips() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = pnp_server();
    assert_fair_under(&server, Attack::pnp_drip(64), "pnp-server, 64 drips");
}

#[test]
fn pnp_server_tcp_serves_others_while_one_source_holds_idle_connections() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert_fair_under_idle_connections(&pnp_server(), "pnp-server");
}

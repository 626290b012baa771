//! `tcp-fairness`: one source attacks a TCP server with dripping or idle connections while probes
//! from another source count how often the server still serves them; the server's peak RSS and
//! open descriptors are sampled meanwhile. Used by `bench/tcp-fairness.sh`.
//!
//! ```text
//! tcp-fairness --kind stun|pnp --server ADDR [--pnp-key KEY] --attack drip|idle
//!              [--connections N] [--from IP] [--probes N] [--spacing-ms MS] [--timeout-ms MS]
//!              [--warmup-ms MS] [--server-pid PID]
//! ```
//!
//! Prints one JSON object.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use p2pd_signaling::PublicKey;
use p2pd_tests::tcp_attack::{
    pnp_probe, probe_window, raise_fd_limit, stun_probe, Attack, Attacker, ResourceSampler,
};

struct Args {
    kind: String,
    server: SocketAddr,
    pnp_key: Option<PublicKey>,
    attack: String,
    connections: usize,
    from: IpAddr,
    probes: usize,
    spacing: Duration,
    timeout: Duration,
    warmup: Duration,
    server_pid: Option<u32>,
}

fn parse<T: FromStr>(name: &str, value: Option<String>) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let value = value.ok_or(format!("{name} needs a value"))?;
    value.parse().map_err(|e| format!("{name}: {e}"))
}

/// A public key in hex, as `p2pd pnp-server` prints it.
fn parse_key(hex: &str) -> Result<PublicKey, String> {
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(|| "--pnp-key is not hex".to_string())
        })
        .collect::<Result<Vec<u8>, String>>()?;
    PublicKey::from_bytes(&bytes).map_err(|e| format!("--pnp-key: {e}"))
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        kind: "stun".into(),
        server: "127.0.0.1:3478".parse().map_err(|e| format!("{e}"))?,
        pnp_key: None,
        attack: "idle".into(),
        connections: 5000,
        from: "127.0.0.2".parse().map_err(|e| format!("{e}"))?,
        probes: 200,
        spacing: Duration::from_millis(50),
        timeout: Duration::from_secs(5),
        warmup: Duration::from_secs(3),
        server_pid: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let ms = |v: u64| Duration::from_millis(v);
        match a.as_str() {
            "--kind" => args.kind = parse("--kind", it.next())?,
            "--server" => args.server = parse("--server", it.next())?,
            "--pnp-key" => {
                args.pnp_key = Some(parse_key(&parse::<String>("--pnp-key", it.next())?)?)
            }
            "--attack" => args.attack = parse("--attack", it.next())?,
            "--connections" => args.connections = parse("--connections", it.next())?,
            "--from" => args.from = parse("--from", it.next())?,
            "--probes" => args.probes = parse("--probes", it.next())?,
            "--spacing-ms" => args.spacing = ms(parse("--spacing-ms", it.next())?),
            "--timeout-ms" => args.timeout = ms(parse("--timeout-ms", it.next())?),
            "--warmup-ms" => args.warmup = ms(parse("--warmup-ms", it.next())?),
            "--server-pid" => args.server_pid = Some(parse("--server-pid", it.next())?),
            "-h" | "--help" => {
                println!("see the doc comment of tests/src/bin/tcp-fairness.rs");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.kind == "pnp" && args.pnp_key.is_none() {
        return Err("--kind pnp needs --pnp-key".into());
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tcp-fairness: {e}");
            std::process::exit(2);
        }
    };
    let limit = raise_fd_limit(args.connections as u64 + 1024);
    let attack = match (args.attack.as_str(), args.kind.as_str()) {
        ("drip", "pnp") => Attack::pnp_drip(args.connections),
        ("drip", _) => Attack::stun_drip(args.connections),
        _ => Attack::Idle {
            connections: args.connections,
        },
    };
    let sampler = args.server_pid.map(ResourceSampler::start);
    let attacker = Attacker::start(attack, args.server, args.from);
    std::thread::sleep(args.warmup);
    let held_before = attacker.held();
    let (server, timeout, key) = (args.server, args.timeout, args.pnp_key);
    let report = if args.kind == "pnp" {
        let key = key.expect("checked");
        probe_window(args.probes, args.spacing, move |i| {
            pnp_probe(server, key, i, timeout)
        })
    } else {
        probe_window(args.probes, args.spacing, move |i| {
            stun_probe(server, i, timeout)
        })
    };
    let held_after = attacker.held();
    let stats = attacker.stop();
    let (rss, fds) = sampler.map(ResourceSampler::stop).unwrap_or_default();
    println!(
        "{}",
        serde_json::json!({
            "kind": args.kind,
            "attack": args.attack,
            "connections": args.connections,
            "fd_limit": limit,
            "attacker_held_before": held_before,
            "attacker_held_after": held_after,
            "attacker_connects": stats.connects,
            "attacker_failed_connects": stats.failed_connects,
            "attacker_closed_by_server": stats.closed_by_server,
            "probes": report.tried,
            "served": report.served,
            "served_percent": if report.tried > 0 { report.served as f64 * 100.0 / report.tried as f64 } else { 0.0 },
            "slowest_ms": report.slowest.as_millis() as u64,
            "server_peak_rss_kib": rss,
            "server_peak_fds": fds,
        })
    );
}

//! `p2pd servers` end to end on loopback: real `p2pd stun-server`s (one RFC 5780 on 127.0.0.1 +
//! 127.0.0.2 with TCP, one single-address UDP only), a real `p2pd pnp-server` (once with its key,
//! once with a key it does not hold), mosquitto when installed, and one dead server (a closed
//! port) per kind (relays against coturn: `servers_relay.rs`). Checks every row, that the checks ran at once (well below the sum of the
//! timeouts), and that the health file keeps a server's last success for the next run.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::procs::{start_pnp, start_server, start_stun_rfc5780, words};
use common::{event_of, free_port_pair, identity, json_line, p2pd_bin, Mosquitto, Scratch};
use serde_json::Value;

/// `--timeout` of the runs.
const TIMEOUT_S: u64 = 2;

fn run_servers(config: &Path, health: &Path, extra: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new(p2pd_bin())
        .arg("servers")
        .arg("--config")
        .arg(config)
        .arg("--health")
        .arg(health)
        .args(["--timeout", &TIMEOUT_S.to_string()])
        .args(extra)
        .env_remove("P2PD_CONFIG")
        .output()
        .expect("run p2pd servers");
    (out, started.elapsed())
}

/// The `--json` output: the server rows and the summary.
fn parse(out: &Output) -> (Vec<Value>, Value) {
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = Vec::new();
    let mut summary = None;
    for line in text.lines() {
        let v = json_line(line).unwrap_or_else(|| panic!("not a JSON object: {line:?}\n{text}"));
        match event_of(&v) {
            Some("server") => rows.push(v),
            Some("summary") => summary = Some(v),
            other => panic!("unexpected event {other:?}: {line}"),
        }
    }
    (
        rows,
        summary.unwrap_or_else(|| panic!("no summary:\n{text}")),
    )
}

/// The row of `kind` at `address` (with `id` when given: two PNP rows share an address).
fn row<'a>(rows: &'a [Value], kind: &str, address: &str, id: Option<&str>) -> &'a Value {
    rows.iter()
        .find(|r| r["kind"] == kind && r["address"] == address && id.is_none_or(|id| r["id"] == id))
        .unwrap_or_else(|| panic!("no {kind} row for {address}: {rows:#?}"))
}

fn assert_ok(r: &Value) {
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["error"].is_null(), "{r}");
    let rtt = r["rtt_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("rtt_ms: {r}"));
    assert!((0.0..1000.0 * TIMEOUT_S as f64).contains(&rtt), "{r}");
    assert!(r["last_success_unix_ms"].as_u64().is_some(), "{r}");
    assert_eq!(r["id"].as_str().map(str::len), Some(16), "{r}");
}

fn assert_failed(r: &Value) {
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["rtt_ms"].is_null(), "{r}");
    let error = r["error"].as_str().unwrap_or_else(|| panic!("error: {r}"));
    assert!(!error.is_empty(), "{r}");
}

#[test]
fn servers_checks_every_kind_at_once_and_remembers_last_success() {
    let dir = Scratch::new("servers");
    // The RFC 5780 STUN server (UDP on 4 roles, TCP on the primary address).
    let (rfc5780, p) = start_stun_rfc5780();
    let stun_full = format!("127.0.0.1:{p}");
    // A single-address STUN server (UDP only): answers, but no RFC 5780, nothing over TCP.
    let (single, s, _) = start_server(1, |p, _| {
        words(&[
            "stun-server",
            "--primary",
            "127.0.0.1",
            "--single",
            "--port",
            &p.to_string(),
        ])
    });
    let stun_single = format!("127.0.0.1:{s}");
    // The PNP server.
    let (_pnp, n) = start_pnp(&dir.path("names.db"), &dir.identity_file("pnp.key", 0x61));
    let pnp = format!("127.0.0.1:{n}");
    let pnp_key = identity(0x61).public_key().to_string();
    let wrong_key = identity(0x62).public_key().to_string();
    let broker = Mosquitto::start();
    if broker.is_none() {
        common::skip_or_fail("mosquitto not installed (no live MQTT broker checked)");
    }
    // One closed port per kind.
    let (d1, d2) = free_port_pair();
    let (d3, d4) = free_port_pair();
    let dead_stun = format!("127.0.0.1:{d1}");
    let dead_broker = format!("127.0.0.1:{d2}");
    let dead_pnp = format!("127.0.0.1:{d3}");
    let dead_relay = format!("127.0.0.1:{d4}");
    let live_broker = broker.as_ref().map(|b| b.addr().to_string());
    let brokers: Vec<String> = live_broker
        .iter()
        .chain([&dead_broker])
        .map(|b| format!("{b:?}"))
        .collect();
    let config = dir.path("config.toml");
    std::fs::write(
        &config,
        format!(
            "stun = [{stun_full:?}, {stun_single:?}, {dead_stun:?}]\n\
             brokers = [{}]\n\
             [[pnp]]\naddress = {pnp:?}\nkey = {pnp_key:?}\n\
             [[pnp]]\naddress = {pnp:?}\nkey = {wrong_key:?}\n\
             [[pnp]]\naddress = {dead_pnp:?}\nkey = {pnp_key:?}\n\
             [[relay]]\naddress = {dead_relay:?}\nsecret = \"s\"\n",
            brokers.join(", ")
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let health = dir.path("state").join("health.sqlite");

    // First run.
    let (out, wall) = run_servers(&config, &health, &["--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (rows, summary) = parse(&out);
    let expected_rows = 3 + 3 + brokers.len() + 3 + 1;
    assert_eq!(rows.len(), expected_rows, "{rows:#?}");
    assert_eq!(summary["checked"], expected_rows, "{summary}");
    let ok_rows = rows.iter().filter(|r| r["ok"] == true).count();
    assert_eq!(summary["ok"], ok_rows, "{summary}");
    // Live: 2 stun-udp, 1 stun-tcp, the broker if any, 1 pnp.
    assert_eq!(ok_rows, 4 + usize::from(broker.is_some()), "{rows:#?}");
    // In parallel: three checks wait for their whole timeout (dead STUN over UDP, dead PNP, the
    // PNP key the server does not hold), so one after the other would take 3 x TIMEOUT_S.
    let elapsed_ms = summary["elapsed_ms"].as_u64().expect("elapsed_ms");
    // (Room for a loaded machine: twice the timeout, still below the sum.)
    let limit_ms = 2 * 1000 * TIMEOUT_S + 500;
    assert!(
        elapsed_ms >= 1000 * TIMEOUT_S - 100,
        "the dead servers were given their whole timeout: {summary}"
    );
    assert!(elapsed_ms < limit_ms, "elapsed {elapsed_ms} ms: {summary}");
    // Closing is bounded too: the process ends soon after the checks.
    assert!(
        wall < Duration::from_millis(limit_ms + 3000),
        "wall {wall:?}"
    );
    assert_eq!(
        out.status.code(),
        // No relay answered (the live ones are in servers_relay.rs).
        Some(1),
        "{stderr}"
    );

    let full_udp = row(&rows, "stun-udp", &stun_full, None);
    assert_ok(full_udp);
    assert_eq!(full_udp["rfc5780"], "yes", "{full_udp}");
    let single_udp = row(&rows, "stun-udp", &stun_single, None);
    assert_ok(single_udp);
    assert_eq!(single_udp["rfc5780"], "no", "{single_udp}");
    let dead_udp = row(&rows, "stun-udp", &dead_stun, None);
    assert_failed(dead_udp);
    assert_eq!(dead_udp["rfc5780"], "unknown", "{dead_udp}");
    assert!(dead_udp["last_success_unix_ms"].is_null(), "{dead_udp}");
    // The canonical ids are those `p2pd config show` gives.
    let shown = Command::new(p2pd_bin())
        .args(["config", "show", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&shown.stdout).expect("config show --json");
    for (i, address) in [&stun_full, &stun_single, &dead_stun].iter().enumerate() {
        assert_eq!(shown["stun"][i]["address"], address.as_str());
        assert_eq!(
            row(&rows, "stun-udp", address, None)["id"],
            shown["stun"][i]["id"]
        );
        assert_eq!(
            row(&rows, "stun-tcp", address, None)["id"],
            shown["stun"][i]["id"]
        );
    }
    assert_eq!(
        row(&rows, "pnp", &pnp, shown["pnp"][0]["id"].as_str())["ok"],
        true
    );

    assert_ok(row(&rows, "stun-tcp", &stun_full, None));
    assert!(row(&rows, "stun-tcp", &stun_full, None)
        .get("rfc5780")
        .is_none());
    assert_failed(row(&rows, "stun-tcp", &stun_single, None));
    assert_failed(row(&rows, "stun-tcp", &dead_stun, None));
    if let Some(b) = &live_broker {
        assert_ok(row(&rows, "mqtt", b, None));
    }
    assert_failed(row(&rows, "mqtt", &dead_broker, None));
    let pnp_ok = row(&rows, "pnp", &pnp, shown["pnp"][0]["id"].as_str());
    assert_ok(pnp_ok);
    let pnp_wrong = row(&rows, "pnp", &pnp, shown["pnp"][1]["id"].as_str());
    assert_failed(pnp_wrong);
    assert!(
        pnp_wrong["error"]
            .as_str()
            .is_some_and(|e| e.contains("key")),
        "{pnp_wrong}"
    );
    assert_failed(row(&rows, "pnp", &dead_pnp, None));
    let relay = row(&rows, "relay", &dead_relay, None);
    assert_failed(relay);
    assert!(relay["relayed"].is_null(), "{relay}");
    assert!(row(&rows, "pnp", &dead_pnp, None).get("relayed").is_none());
    assert!(health.is_file(), "the health file was written");
    let first_success = single_udp["last_success_unix_ms"].as_u64().unwrap();

    // The single server goes away; the second run still shows its success of the first run.
    drop(single);
    let (out, _) = run_servers(&config, &health, &["--json"]);
    let (rows2, _) = parse(&out);
    let gone = row(&rows2, "stun-udp", &stun_single, None);
    assert_failed(gone);
    assert_eq!(gone["last_success_unix_ms"], first_success, "{gone}");
    assert!(gone["last_success_age_s"].as_u64().is_some(), "{gone}");
    let again = row(&rows2, "stun-udp", &stun_full, None);
    assert_ok(again);
    assert!(again["last_success_unix_ms"].as_u64().unwrap() >= first_success);
    assert!(row(&rows2, "mqtt", &dead_broker, None)["last_success_unix_ms"].is_null());

    // Text: a table on stdout, the summary on stderr.
    let (out, _) = run_servers(&config, &health, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(text.starts_with("KIND"), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("stun-udp") && l.contains(&stun_full))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(" ok ") && line.contains(" yes "), "{line}");
    let line = text
        .lines()
        .find(|l| l.starts_with("stun-udp") && l.contains(&stun_single))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("failed") && line.contains(" ago"), "{line}");
    assert!(stderr.contains("servers checked"), "{stderr}");
    drop(rfc5780);
}

/// Without `--health`, the health file is `health.sqlite` beside the identity file.
#[test]
fn servers_health_file_defaults_beside_the_identity() {
    let dir = Scratch::new("servers-default");
    let (dead, _) = free_port_pair();
    let config = dir.path("config.toml");
    std::fs::write(
        &config,
        format!("stun = []\nbrokers = [\"127.0.0.1:{dead}\"]\n"),
    )
    .unwrap();
    let keys = dir.path("keys");
    let out = Command::new(p2pd_bin())
        .args(["servers", "--json", "--timeout", "0.5", "--config"])
        .arg(&config)
        .env("P2PD_IDENTITY", keys.join("id.key"))
        .output()
        .expect("run p2pd servers");
    let (rows, summary) = parse(&out);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_failed(&rows[0]);
    assert_eq!(rows[0]["kind"], "mqtt");
    assert_eq!(summary["ok"], 0);
    assert_eq!(out.status.code(), Some(1));
    assert!(keys.join("health.sqlite").is_file());
}

//! `p2pd servers` against real TURN relays: two coturns on loopback (one with TURN REST API
//! credentials, `--use-auth-secret`, one with static long-term ones, `--lt-cred-mech --user`), a
//! relay with a wrong password and a dead one. The good rows allocate (ok, RTT, the relayed address
//! on 127.0.0.1) and deallocate; the wrong password is an authentication failure; the dead one
//! fails. REST credentials name the node id of the identity file.
//!
//! Skipped (with a message) when `turnserver` is not installed (a failure under `CI=true`).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::servers::Coturn;
use common::{event_of, free_port_pair, identity, json_line, p2pd_bin, Scratch};
use serde_json::Value;

const REALM: &str = "p2pd.test";
const SECRET: &str = "p2pd-servers-secret";

/// Starts coturn as a TURN server with `auth`, relaying on 127.0.0.1, once it accepts TCP.
fn start_turn(name: &str, auth: &[&str]) -> Coturn {
    Coturn::start_turn(name, REALM, auth)
}

fn run_servers(config: &Path, dir: &Scratch, identity: &Path, extra: &[&str]) -> Output {
    Command::new(p2pd_bin())
        .arg("servers")
        .arg("--config")
        .arg(config)
        .arg("--health")
        .arg(dir.path("health.sqlite"))
        .args(["--timeout", "3"])
        .args(extra)
        .env_remove("P2PD_CONFIG")
        .env("P2PD_IDENTITY", identity)
        .output()
        .expect("run p2pd servers")
}

fn row<'a>(rows: &'a [Value], address: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["kind"] == "relay" && r["address"] == address)
        .unwrap_or_else(|| panic!("no relay row for {address}: {rows:#?}"))
}

/// Waits (up to 5 s) until `coturn`'s log holds `what`.
fn log_shows(coturn: &Coturn, what: &str) -> bool {
    let until = Instant::now() + Duration::from_secs(5);
    while !coturn.log().contains(what) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    coturn.log().contains(what)
}

#[test]
fn servers_allocates_on_relays_with_rest_and_long_term_credentials() {
    if !common::on_path("turnserver") {
        common::skip_or_fail("coturn (turnserver) not installed");
        return;
    }
    let dir = Scratch::new("servers-relay");
    let secret_flag = format!("--static-auth-secret={SECRET}");
    let rest = start_turn("p2pd-servers-rest", &["--use-auth-secret", &secret_flag]);
    let lt = start_turn("p2pd-servers-lt", &["--lt-cred-mech", "--user", "u:p"]);
    let (dead_port, _) = free_port_pair();
    let rest_addr = rest.primary.to_string();
    let lt_addr = lt.primary.to_string();
    // A relay that knows u:p, given a wrong password.
    let strict = start_turn("p2pd-servers-wrong", &["--lt-cred-mech", "--user", "u:p"]);
    let wrong_addr = strict.primary.to_string();
    let dead_addr = SocketAddr::from(([127, 0, 0, 1], dead_port)).to_string();
    let config = dir.path("config.toml");
    std::fs::write(
        &config,
        format!(
            "stun = []\nbrokers = []\n\
             [[relay]]\naddress = {rest_addr:?}\nsecret = {SECRET:?}\n\
             [[relay]]\naddress = {lt_addr:?}\nusername = \"u\"\npassword = \"p\"\n\
             [[relay]]\naddress = {wrong_addr:?}\nusername = \"u\"\npassword = \"not-p\"\n\
             [[relay]]\naddress = {dead_addr:?}\nsecret = {SECRET:?}\n"
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let id_file = dir.identity_file("id.key", 0x5e);
    let node_id = identity(0x5e).node_id().to_string();

    let out = run_servers(&config, &dir, &id_file, &["--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut rows = Vec::new();
    let mut summary = None;
    for line in stdout.lines() {
        let v = json_line(line).unwrap_or_else(|| panic!("not JSON: {line:?}\n{stdout}"));
        match event_of(&v) {
            Some("server") => rows.push(v),
            Some("summary") => summary = Some(v),
            other => panic!("unexpected event {other:?}: {line}"),
        }
    }
    let logs = || format!("rest coturn:\n{}\nlt coturn:\n{}", rest.log(), lt.log());
    assert_eq!(rows.len(), 4, "{rows:#?}\n{stderr}");
    let summary = summary.unwrap_or_else(|| panic!("no summary: {stdout}"));
    assert_eq!(summary["ok"], 2, "{rows:#?}\n{}", logs());
    assert_eq!(out.status.code(), Some(0), "{stderr}");

    for address in [&rest_addr, &lt_addr] {
        let r = row(&rows, address);
        assert_eq!(r["ok"], true, "{r}\n{}", logs());
        assert!(r["error"].is_null(), "{r}");
        let rtt = r["rtt_ms"].as_f64().unwrap_or_else(|| panic!("{r}"));
        assert!((0.0..3000.0).contains(&rtt), "{r}");
        let relayed: SocketAddr = r["relayed"]
            .as_str()
            .unwrap_or_else(|| panic!("relayed: {r}"))
            .parse()
            .expect("relayed is an address");
        // coturn relays on --relay-ip, on a port of its own.
        assert_eq!(relayed.ip().to_string(), "127.0.0.1", "{r}");
        assert_ne!(relayed.port(), rest.primary.port(), "{r}");
        assert_ne!(relayed.port(), lt.primary.port(), "{r}");
        assert_eq!(r["id"].as_str().map(str::len), Some(16), "{r}");
        assert!(r.get("rfc5780").is_none(), "{r}");
    }
    // The check deallocated (a Refresh with LIFETIME 0) on both.
    assert!(log_shows(&rest, "lifetime=0"), "{}", logs());
    assert!(log_shows(&lt, "lifetime=0"), "{}", logs());
    // REST credentials name the node: user "<expiry>:<node id>".
    assert!(
        log_shows(&rest, &node_id),
        "node id {node_id} not in the log\n{}",
        logs()
    );

    let wrong = row(&rows, &wrong_addr);
    assert_eq!(wrong["ok"], false, "{wrong}");
    assert!(wrong["rtt_ms"].is_null(), "{wrong}");
    assert!(wrong["relayed"].is_null(), "{wrong}");
    let error = wrong["error"].as_str().unwrap_or_else(|| panic!("{wrong}"));
    assert!(
        error.contains("authentication refused (401)"),
        "{wrong}\n{}",
        logs()
    );

    let dead = row(&rows, &dead_addr);
    assert_eq!(dead["ok"], false, "{dead}");
    assert!(dead["relayed"].is_null(), "{dead}");
    let error = dead["error"].as_str().unwrap_or_else(|| panic!("{dead}"));
    assert!(error.contains("connect"), "{dead}");

    // The table: the relayed address on the good rows, the reason on the others.
    let out = run_servers(&config, &dir, &id_file, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |address: &str| {
        text.lines()
            .find(|l| l.starts_with("relay") && l.contains(address))
            .unwrap_or_else(|| panic!("no line for {address}:\n{text}"))
            .to_string()
    };
    for address in [&rest_addr, &lt_addr] {
        let l = line(address);
        assert!(
            l.contains(" ok ") && l.contains("(relayed 127.0.0.1:"),
            "{l}"
        );
    }
    assert!(
        line(&wrong_addr).contains("authentication refused"),
        "{text}"
    );
    assert!(line(&dead_addr).contains("failed"), "{text}");
}

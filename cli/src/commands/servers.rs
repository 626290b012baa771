//! `p2pd servers [--json] [--timeout S] [--health FILE]`: checks every server of the effective
//! configuration at once and shows whether it answered, its RTT and its last success.
//!
//! What is checked (see [`checks`]), every server on a thread and a runtime of its own, so the
//! whole run takes about the slowest check (at most `--timeout`, plus a bounded close):
//!
//! - `stun-udp`: a Binding request; if its reply names an OTHER-ADDRESS, a CHANGE-REQUEST (IP and
//!   port) that must be answered from that address: `rfc5780` is `yes`, `no`, or `unknown` when
//!   the server did not answer at all;
//! - `stun-tcp`: a Binding request over TCP to the same server;
//! - `mqtt`: TCP connect, CONNECT, CONNACK (the RTT covers all three);
//! - `pnp`: a lookup of a random unused name, sealed to the configured key: only a reply signed by
//!   that key counts, so an answer proves the server holds it;
//! - `relay`: a TURN Allocate (an RFC 6062 TCP allocation over a TCP control connection) with the
//!   configured credentials ([`crate::relay::turn_config`]: long-term ones, or TURN REST API ones
//!   from the secret for the node id of the default identity file, else user `p2pd`), then the
//!   deallocation; the RTT is the time from the start to the allocation (TCP connect and the 401
//!   challenge included), and the row names the relayed address. A refusal of the credentials is
//!   "authentication refused (401)".
//!
//! Servers are named by their canonical id (see [`crate::config`]), never by their position.
//! Each outcome is recorded in the health file ([`crate::health_store`]; `--health FILE`, default
//! `health.sqlite` beside the identity file), and each row shows the server's last success as
//! the file knows it after this run (this run's, or an earlier one for a server that failed now).
//!
//! Output: a table on stdout (an allocated relay's row ends with its relayed address), the
//! summary on stderr; with `--json` one object per server on
//! stdout (`event` `server`, `kind`, `id`, `address`, `ok`, `rtt_ms`, `rfc5780` for `stun-udp`
//! only, `relayed` for `relay` only (the relayed address, `null` when the check failed), `error`,
//! `last_success_unix_ms`, `last_success_age_s`), then
//! `{"event":"summary","checked":N,"ok":M,"elapsed_ms":T}`. Exit code 0 when at least one server
//! of every configured kind answered, else 1; 2 for a configuration error.

mod checks;

use crate::{errln, outln};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant as StdInstant};

use clap::Args;
use serde::Serialize;

use super::numbers;
use super::report::{to_json, Num};
use crate::config::{broker_id, relay_id, stun_id, Config, Endpoint, PnpServer, Relay};
use crate::health_store::{default_health_path, HealthStore, ServerKind};
use crate::identity_file::default_identity_path;
pub use checks::Rfc5780;
use p2pd_signaling::NodeId;

/// The longest `--timeout`: one hour.
pub const MAX_TIMEOUT_S: u64 = 3600;

/// Options of `p2pd servers`.
#[derive(Debug, Args)]
pub struct ServersArgs {
    /// How long each check may take, in seconds (0 to 3600); all checks run at once.
    #[arg(long, value_name = "S", default_value = "3",
          value_parser = numbers::seconds_up_to(MAX_TIMEOUT_S))]
    pub timeout: Duration,
    /// The health file, where every server's last success is kept between runs (default:
    /// health.sqlite in the identity file's directory).
    #[arg(long, value_name = "FILE")]
    pub health: Option<PathBuf>,
    /// Print one JSON object per server, then a summary object.
    #[arg(long)]
    pub json: bool,
}

/// One server to check.
#[derive(Clone, Debug)]
enum Target {
    Stun(Endpoint, ServerKind),
    Mqtt(Endpoint),
    Pnp(PnpServer),
    /// A relay, the node id its REST credentials name, and the wall clock they start at.
    Relay(Relay, Option<NodeId>, u64),
}

impl Target {
    fn kind(&self) -> ServerKind {
        match self {
            Target::Stun(_, kind) => *kind,
            Target::Mqtt(_) => ServerKind::Mqtt,
            Target::Pnp(_) => ServerKind::Pnp,
            Target::Relay(..) => ServerKind::Relay,
        }
    }

    fn endpoint(&self) -> &Endpoint {
        match self {
            Target::Stun(e, _) | Target::Mqtt(e) => e,
            Target::Pnp(p) => &p.address,
            Target::Relay(r, ..) => &r.address,
        }
    }
}

/// Every server of `config`, grouped by kind in the order of [`ServerKind::ALL`], each group in
/// the configuration's order. Relays authenticate with REST credentials for `node` from
/// `unix_now` (when they have a secret).
fn targets(config: &Config, node: Option<NodeId>, unix_now: u64) -> Vec<Target> {
    let mut out = Vec::new();
    for kind in [ServerKind::StunUdp, ServerKind::StunTcp] {
        out.extend(config.stun.iter().map(|e| Target::Stun(e.clone(), kind)));
    }
    out.extend(config.brokers.iter().cloned().map(Target::Mqtt));
    out.extend(config.pnp.iter().cloned().map(Target::Pnp));
    out.extend(
        config
            .relay
            .iter()
            .map(|r| Target::Relay(r.clone(), node, unix_now)),
    );
    out
}

/// The outcome of one check.
#[derive(Clone, Debug)]
pub struct Row {
    /// The kind of server.
    pub kind: ServerKind,
    /// Its canonical id (`None` for a PNP server whose address does not resolve: its id covers
    /// the address).
    pub id: Option<u64>,
    /// Its address as configured.
    pub address: String,
    /// The RTT, or why it failed.
    pub outcome: Result<Duration, String>,
    /// `stun-udp` only.
    pub rfc5780: Option<Rfc5780>,
    /// `relay` only: the relayed address the allocation got.
    pub relayed: Option<SocketAddr>,
    /// Its last success (Unix ms), as the health file knows it after this run.
    pub last_success_ms: Option<u64>,
}

/// Resolves and checks one server.
fn check(target: &Target, timeout: Duration) -> Row {
    let endpoint = target.endpoint();
    let kind = target.kind();
    let mut row = Row {
        kind,
        id: None,
        address: endpoint.text.clone(),
        outcome: Err(String::new()),
        rfc5780: None,
        relayed: None,
        last_success_ms: None,
    };
    row.id = match target {
        Target::Stun(e, _) => Some(stun_id(e).as_u64()),
        Target::Mqtt(e) => Some(broker_id(e).as_u64()),
        Target::Relay(r, ..) => Some(relay_id(&r.address).0),
        Target::Pnp(_) => None,
    };
    if kind == ServerKind::StunUdp {
        row.rfc5780 = Some(Rfc5780::Unknown);
    }
    // What some checks learn besides the outcome.
    let mut rfc5780 = None;
    let mut relayed = None;
    let mut pnp_id = None;
    row.outcome = match target {
        Target::Relay(relay, node, unix_now) => {
            crate::relay::turn_config(relay, node.as_ref(), *unix_now)
                .and_then(|config| checks::relay_turn(config, timeout))
                .map(|(rtt, address)| {
                    relayed = Some(address);
                    rtt
                })
        }
        Target::Stun(_, ServerKind::StunUdp) => endpoint.resolve().and_then(|addr| {
            let (outcome, found) = checks::stun_udp(addr, timeout);
            rfc5780 = Some(found);
            outcome
        }),
        Target::Stun(..) => endpoint
            .resolve()
            .and_then(|addr| checks::stun_tcp(addr, timeout)),
        Target::Mqtt(_) => endpoint
            .resolve()
            .and_then(|addr| checks::mqtt(addr, timeout)),
        Target::Pnp(p) => endpoint.resolve().and_then(|addr: SocketAddr| {
            pnp_id = Some(p2pd_signaling::pnp::PnpServerId::new(addr, &p.key).0);
            checks::pnp(addr, &p.key, timeout)
        }),
    };
    if rfc5780.is_some() {
        row.rfc5780 = rfc5780;
    }
    if relayed.is_some() {
        row.relayed = relayed;
    }
    if pnp_id.is_some() {
        row.id = pnp_id;
    }
    row
}

/// Checks every target at once (a thread each; should a thread not start, its check runs on
/// this one). Rows come back in the order of `targets`.
fn check_all(targets: &[Target], timeout: Duration) -> Vec<Row> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| {
                std::thread::Builder::new()
                    .name(format!("check {}", t.kind()))
                    .spawn_scoped(scope, move || check(t, timeout))
                    .map_err(|_| t)
            })
            .collect();
        handles
            .into_iter()
            .zip(targets)
            .map(|(h, t)| match h {
                Ok(h) => h.join().unwrap_or_else(|_| {
                    let mut row = check_failed(t);
                    row.outcome = Err("the check panicked (a bug)".into());
                    row
                }),
                Err(t) => check(t, timeout),
            })
            .collect()
    })
}

fn check_failed(t: &Target) -> Row {
    Row {
        kind: t.kind(),
        id: None,
        address: t.endpoint().text.clone(),
        outcome: Err(String::new()),
        rfc5780: None,
        relayed: None,
        last_success_ms: None,
    }
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Records every row with an id in the health file at `path` and fills in its last success.
/// Without a usable file, a row's last success is this run's (the error is returned).
fn record_health(path: &Path, rows: &mut [Row], now_ms: u64) -> Result<(), String> {
    for row in rows.iter_mut() {
        row.last_success_ms = row.outcome.is_ok().then_some(now_ms);
    }
    let mut store = HealthStore::open(path)?;
    let known = store.batch(|store| {
        let mut known = Vec::with_capacity(rows.len());
        for row in rows.iter() {
            let Some(id) = row.id else {
                known.push(None);
                continue;
            };
            store.record(row.kind, id, &row.address, row.outcome.clone(), now_ms)?;
            known.push(store.get(row.kind, id)?.and_then(|h| h.last_success_ms));
        }
        Ok(known)
    })?;
    for (row, last) in rows.iter_mut().zip(known) {
        if row.id.is_some() {
            row.last_success_ms = last;
        }
    }
    Ok(())
}

/// Runs `p2pd servers`; returns the exit code.
pub fn run(args: &ServersArgs, config_flag: Option<&Path>) -> i32 {
    let loaded = match crate::config::load_for("servers", config_flag) {
        Ok(l) => l,
        Err(code) => return code,
    };
    // REST credentials name the node of the default identity file, if there is one.
    let node = if loaded.config.relay.is_empty() {
        None
    } else {
        crate::relay::node_id_of(&default_identity_path())
    };
    let targets = targets(&loaded.config, node, crate::relay::unix_now());
    if targets.is_empty() {
        errln!(
            "p2pd servers: no servers in the configuration ({})",
            loaded.source
        );
        return 1;
    }
    if !args.json && std::io::stderr().is_terminal() {
        errln!(
            "checking {} servers at once (at most {} s)...",
            targets.len(),
            args.timeout.as_secs_f64()
        );
    }
    let started = StdInstant::now();
    let mut rows = check_all(&targets, args.timeout);
    let elapsed = started.elapsed();
    let now_ms = unix_now_ms();
    let health = args.health.clone().unwrap_or_else(default_health_path);
    if let Err(e) = record_health(&health, &mut rows, now_ms) {
        errln!("p2pd servers: health file: {e} (health not kept)");
    }
    let ok = rows.iter().filter(|r| r.outcome.is_ok()).count();
    if args.json {
        for row in &rows {
            outln!("{}", to_json(&row_json(row, now_ms)));
        }
        outln!(
            "{}",
            to_json(&Summary {
                event: "summary",
                checked: rows.len(),
                ok,
                elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            })
        );
    } else {
        print_table(&rows, now_ms);
        errln!(
            "{} servers checked, {ok} answered, in {:.1} s",
            rows.len(),
            elapsed.as_secs_f64()
        );
    }
    exit_code(&rows)
}

/// 0 when every kind present has at least one server that answered, else 1.
fn exit_code(rows: &[Row]) -> i32 {
    let every_kind_answered = ServerKind::ALL.iter().all(|&kind| {
        let mut of_kind = rows.iter().filter(|r| r.kind == kind).peekable();
        of_kind.peek().is_none() || of_kind.any(|r| r.outcome.is_ok())
    });
    if every_kind_answered {
        0
    } else {
        1
    }
}

/// `p2pd servers --json`: one server.
#[derive(Debug, Serialize)]
struct RowJson<'a> {
    event: &'static str,
    kind: &'static str,
    id: Option<String>,
    address: &'a str,
    ok: bool,
    rtt_ms: Option<Num>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rfc5780: Option<&'static str>,
    /// `relay` rows only (`null` when the allocation failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    relayed: Option<Option<String>>,
    error: Option<&'a str>,
    last_success_unix_ms: Option<u64>,
    last_success_age_s: Option<u64>,
}

/// `p2pd servers --json`: the last line.
#[derive(Debug, Serialize)]
struct Summary {
    event: &'static str,
    checked: usize,
    ok: usize,
    elapsed_ms: u64,
}

fn rtt_ms(rtt: Duration) -> f64 {
    (rtt.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn row_json(row: &Row, now_ms: u64) -> RowJson<'_> {
    RowJson {
        event: "server",
        kind: row.kind.as_str(),
        id: row.id.map(|id| format!("{id:016x}")),
        address: &row.address,
        ok: row.outcome.is_ok(),
        rtt_ms: row.outcome.as_ref().ok().map(|r| Num(rtt_ms(*r))),
        rfc5780: row.rfc5780.map(Rfc5780::as_str),
        relayed: (row.kind == ServerKind::Relay).then(|| row.relayed.map(|a| a.to_string())),
        error: row.outcome.as_ref().err().map(String::as_str),
        last_success_unix_ms: row.last_success_ms,
        last_success_age_s: row.last_success_ms.map(|t| now_ms.saturating_sub(t) / 1000),
    }
}

/// How long ago `then_ms` was, in words.
fn age(then_ms: Option<u64>, now_ms: u64) -> String {
    let Some(then) = then_ms else {
        return "never".into();
    };
    let s = now_ms.saturating_sub(then) / 1000;
    match s {
        0 => "now".into(),
        1..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        7200..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

fn print_table(rows: &[Row], now_ms: u64) {
    let header = [
        "KIND",
        "ID",
        "ADDRESS",
        "STATUS",
        "RTT",
        "RFC5780",
        "LAST SUCCESS",
    ];
    let lines: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.kind.to_string(),
                r.id.map_or_else(|| "-".into(), |id| format!("{id:016x}")),
                r.address.clone(),
                if r.outcome.is_ok() { "ok" } else { "failed" }.into(),
                r.outcome
                    .as_ref()
                    .map_or_else(|_| "-".into(), |d| format!("{:.1} ms", rtt_ms(*d))),
                r.rfc5780.map_or("-", Rfc5780::as_str).into(),
                age(r.last_success_ms, now_ms),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let render = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        text
    };
    outln!("{}", render(&header));
    for (line, row) in lines.iter().zip(rows) {
        let cells: Vec<&str> = line.iter().map(String::as_str).collect();
        match (&row.outcome, row.relayed) {
            (Ok(_), Some(relayed)) => outln!("{}  (relayed {relayed})", render(&cells)),
            (Ok(_), None) => outln!("{}", render(&cells)),
            (Err(why), _) => outln!("{}  ({why})", render(&cells)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: ServerKind, ok: bool) -> Row {
        Row {
            kind,
            id: Some(1),
            address: "a".into(),
            outcome: if ok {
                Ok(Duration::from_millis(1))
            } else {
                Err("x".into())
            },
            rfc5780: None,
            relayed: None,
            last_success_ms: None,
        }
    }

    #[test]
    fn exit_code_needs_one_answer_per_configured_kind() {
        use ServerKind::*;
        assert_eq!(exit_code(&[row(StunUdp, true), row(StunUdp, false)]), 0);
        assert_eq!(exit_code(&[row(StunUdp, true), row(Mqtt, false)]), 1);
        assert_eq!(
            exit_code(&[row(Mqtt, false), row(Mqtt, true), row(Pnp, true)]),
            0
        );
        assert_eq!(exit_code(&[]), 0);
    }

    #[test]
    fn ages_in_words() {
        assert_eq!(age(None, 5), "never");
        assert_eq!(age(Some(1_000), 1_500), "now");
        assert_eq!(age(Some(0), 42_000), "42 s ago");
        assert_eq!(age(Some(0), 600_000), "10 min ago");
        assert_eq!(age(Some(0), 3 * 3_600_000), "3 h ago");
        assert_eq!(age(Some(0), 3 * 86_400_000), "3 days ago");
        assert_eq!(age(Some(10), 5), "now");
    }
}

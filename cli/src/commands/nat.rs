//! `p2pd nat [--server ADDR[,ALT]|ID ...]`: classifies the NAT (or firewall) in front of this host
//! with the RFC 5780 mapping and filtering tests, corroborated across servers.
//!
//! Without `--server` the built-in list ([`p2pd_nat::default_servers`], the RFC 5780 capable
//! entries) is used; `p2pd nat --list-servers` prints it with each server's id.
//!
//! # Server ids
//!
//! Every server's id (the classifier's `ServerSpec::id`, printed as 16 hex digits in probes and JSON)
//! is its [`ServerId`]: the 64-bit FNV-1a of `"stun:" + host + ":" + port` when a host name was
//! given, else of `"stun:" + primary` in canonical `Display` form (see `p2pd_nat::servers`). An
//! address that is a built-in server's primary takes that entry's id, so one server has one id
//! however it is named. `--server` also accepts a built-in id (`--server 1a2b3c4d5e6f7081`).

use crate::{err, errln, outln};
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Duration;

use clap::Args;
use p2pd_nat::classify::{ClassifyInconclusive, Probe, ProbeKind, ProbeOutcome};
use p2pd_nat::{
    default_servers, Behaviour, Classification, Classifier, ClassifierConfig, ClassifierEvent,
    Report, ServerEntry, ServerId, ServerSpec,
};
use p2pd_nat::{Connectivity, DeltaVerdict, Filtering, Mapping, P2pdLabel};
use p2pd_proto::BindOptions;
use serde::Serialize;

use super::report::{display, display_opt, to_json, ErrorLine, Num, Reporter};
use p2pd_mio::{RunEnd, Runtime};

/// Options of `p2pd nat`.
#[derive(Debug, Args)]
pub struct NatArgs {
    /// An RFC 5780 STUN server: HOST[:PORT], or HOST[:PORT],ALT[:PORT] to give its alternate
    /// address (otherwise the OTHER-ADDRESS it reports is used), or the id of a built-in server
    /// (see --list-servers). Repeat it; two or more servers corroborate each other. Default: the
    /// configuration's stun servers (see `p2pd config show`), else the built-in RFC 5780 servers.
    #[arg(long = "server", value_name = "ADDR[,ALT]|ID")]
    pub servers: Vec<String>,
    /// Print the built-in servers with their ids and exit.
    #[arg(long)]
    pub list_servers: bool,
    /// The local IP to test from (default: the one the OS routes to the first server).
    #[arg(long)]
    pub local_ip: Option<IpAddr>,
    /// Bind every socket to this network interface.
    #[arg(long)]
    pub interface: Option<String>,
    /// Give up after this many seconds (0 to 3600).
    #[arg(long, value_name = "S", default_value = "8",
          value_parser = super::numbers::seconds_up_to(3600))]
    pub timeout: Duration,
    /// Print every probe.
    #[arg(long, short)]
    pub verbose: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The built-in servers usable for classification (RFC 5780 capable).
pub fn builtin_servers() -> Vec<ServerEntry> {
    default_servers()
        .into_iter()
        .filter(|e| e.rfc5780)
        .collect()
}

/// The classifier's spec of a built-in server.
pub fn entry_spec(e: &ServerEntry) -> ServerSpec {
    ServerSpec {
        id: e.id.as_u64(),
        primary: e.primary,
        alternate: e.alternate,
    }
}

/// The host name in `HOST[:PORT]`, if it is a name rather than an IP literal.
fn host_name(target: &str) -> Option<&str> {
    if target.parse::<SocketAddr>().is_ok() || target.parse::<IpAddr>().is_ok() {
        return None;
    }
    let host = match target.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => target,
    };
    (!host.is_empty()).then_some(host)
}

/// Parses one `--server` value into a [`ServerSpec`]: a built-in server's id (16 hex digits), or
/// `HOST[:PORT][,ALT[:PORT]]` with the [`ServerId`] of the name (or of the resolved primary
/// address; a built-in server's primary keeps that server's id and alternate).
pub fn server_spec(text: &str) -> Result<ServerSpec, String> {
    let text = text.trim();
    let builtin = builtin_servers();
    if text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        let id = u64::from_str_radix(text, 16).map_err(|e| format!("bad id {text}: {e}"))?;
        return builtin
            .iter()
            .find(|e| e.id.as_u64() == id)
            .map(entry_spec)
            .ok_or_else(|| format!("no built-in server has id {text} (see --list-servers)"));
    }
    let (primary_text, alternate) = match text.split_once(',') {
        Some((p, a)) => (p.trim(), Some(a.trim())),
        None => (text, None),
    };
    let primary = super::resolve(primary_text, super::STUN_PORT)?;
    let alternate = match alternate {
        Some(a) => {
            let a = super::resolve(a, primary.port())?;
            if a.ip() == primary.ip() || a.port() == primary.port() {
                return Err(format!(
                    "alternate {a} of {primary} must differ in both IP and port"
                ));
            }
            Some(a)
        }
        None => None,
    };
    let known = builtin.iter().find(|e| e.primary == primary);
    let id = match (host_name(primary_text), known) {
        (_, Some(e)) => e.id,
        (host, None) => ServerId::of(host, primary),
    };
    Ok(ServerSpec {
        id: id.as_u64(),
        primary,
        alternate: alternate.or(known.and_then(|e| e.alternate)),
    })
}

/// Prints the built-in servers (`--list-servers`).
fn list_servers(json: bool) {
    let servers = builtin_servers();
    if json {
        let servers = servers
            .iter()
            .map(|e| BuiltinServer {
                id: e.id.to_string(),
                host: e.host,
                primary: e.primary,
                alternate: e.alternate,
            })
            .collect();
        outln!("{}", to_json(&ServerList { servers }));
        return;
    }
    outln!("{:<16}  {:<22} {:<22} host", "id", "primary", "alternate");
    for e in &servers {
        outln!(
            "{}  {:<22} {:<22} {}",
            e.id,
            e.primary.to_string(),
            e.alternate
                .map_or_else(|| "-".to_string(), |a| a.to_string()),
            e.host.unwrap_or("-")
        );
    }
}

/// The local IP the OS would use to reach `server` (a UDP `connect` sends nothing).
pub fn route_local_ip(server: SocketAddr, interface: Option<&str>) -> Result<IpAddr, String> {
    let any: SocketAddr = if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(server),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(|e| format!("cannot create a socket: {e}"))?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(name) = interface {
        socket
            .bind_device(Some(name.as_bytes()))
            .map_err(|e| format!("cannot bind to interface {name}: {e}"))?;
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = interface;
    socket
        .bind(&any.into())
        .map_err(|e| format!("cannot bind {any}: {e}"))?;
    let socket: UdpSocket = socket.into();
    socket
        .connect(server)
        .map_err(|e| format!("no route to {server}: {e}"))?;
    let local = socket
        .local_addr()
        .map_err(|e| format!("cannot read the local address: {e}"))?;
    Ok(local.ip())
}

/// Runs `p2pd nat`; returns the process exit code (0 classified, 3 inconclusive, 1 error, 2 a
/// configuration error).
///
/// Without `--server`, the configuration's `stun` servers are used when the configuration file
/// lists them (`stun` absent from the file, or no file: the built-in servers, as before).
pub fn run(args: &NatArgs, config_flag: Option<&Path>) -> i32 {
    if args.list_servers {
        list_servers(args.json);
        return 0;
    }
    let configured = if args.servers.is_empty() {
        match crate::config::load_for("nat", config_flag) {
            Ok(loaded) if !loaded.is_default("stun") => {
                if loaded.config.stun.is_empty() {
                    errln!(
                        "p2pd nat: no STUN server: give --server, or list stun servers in the \
                         configuration ({})",
                        loaded.source
                    );
                    return crate::config::EXIT_CONFIG_ERROR;
                }
                loaded.config.stun.iter().map(|e| e.text.clone()).collect()
            }
            Ok(_) => Vec::new(),
            Err(code) => return code,
        }
    } else {
        Vec::new()
    };
    match classify(args, &configured) {
        Ok(out) => {
            print_report(args, &out);
            match out.report.classification {
                Classification::Inconclusive(_) => 3,
                _ => 0,
            }
        }
        Err(e) => {
            Reporter { json: args.json }
                .note(format_args!("p2pd nat: {e}"), &ErrorLine { error: &e });
            1
        }
    }
}

/// `p2pd nat --list-servers --json`.
#[derive(Debug, Serialize)]
struct ServerList {
    servers: Vec<BuiltinServer>,
}

/// One built-in server.
#[derive(Debug, Serialize)]
struct BuiltinServer {
    id: String,
    host: Option<&'static str>,
    primary: SocketAddr,
    alternate: Option<SocketAddr>,
}

/// `p2pd nat --json`: the whole report on one line. Fields that do not apply are `null`.
#[derive(Debug, Serialize)]
struct NatReport<'a> {
    /// `open`, `firewall`, `nat`, `blocked` or `inconclusive`.
    classification: &'static str,
    #[serde(serialize_with = "display_opt")]
    mapping: Option<Mapping>,
    #[serde(serialize_with = "display_opt")]
    filtering: Option<Filtering>,
    /// The inconclusive reason's key.
    reason: Option<&'static str>,
    /// The inconclusive reason in words.
    #[serde(serialize_with = "display_opt")]
    reason_text: Option<ClassifyInconclusive>,
    p2pd_label: Option<&'a str>,
    #[serde(serialize_with = "display_opt")]
    allocation: Option<DeltaVerdict>,
    #[serde(serialize_with = "display_opt")]
    p2pd_full_label: Option<P2pdLabel>,
    p2pd_nat_type: Option<u8>,
    local_ip: IpAddr,
    servers_agreeing: usize,
    confidence: Num,
    servers_tested: usize,
    elapsed_ms: Num,
    public_addresses: &'a [SocketAddr],
    servers: Vec<TestedServer>,
    probes: Vec<ProbeReport>,
}

/// A server the report used.
#[derive(Debug, Serialize)]
struct TestedServer {
    id: String,
    primary: SocketAddr,
    alternate: Option<SocketAddr>,
}

/// One probe: what it tested, then `outcome` and the outcome's own fields.
#[derive(Debug, Serialize)]
struct ProbeReport {
    server: String,
    #[serde(serialize_with = "display")]
    kind: ProbeKind,
    socket: u32,
    destination: SocketAddr,
    change: &'static str,
    #[serde(flatten)]
    outcome: OutcomeReport,
}

/// How a probe ended.
#[derive(Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
enum OutcomeReport {
    Pending,
    Reply {
        mapped: SocketAddr,
        other_address: Option<SocketAddr>,
        source: SocketAddr,
        rtt_ms: Num,
        transmissions: u32,
    },
    NoReply {
        transmissions: u32,
    },
    ErrorResponse {
        code: u16,
    },
    Failed,
}

struct Outcome {
    servers: Vec<ServerSpec>,
    local_ip: IpAddr,
    report: Report,
    elapsed: Duration,
}

fn classify(args: &NatArgs, configured: &[String]) -> Result<Outcome, String> {
    let mut servers: Vec<ServerSpec> = Vec::new();
    let texts = if args.servers.is_empty() {
        configured
    } else {
        &args.servers
    };
    for text in texts {
        let spec = server_spec(text)?;
        if servers
            .iter()
            .any(|s| s.id == spec.id || s.primary == spec.primary)
        {
            return Err(format!("server {} given twice", spec.primary));
        }
        servers.push(spec);
    }
    if servers.is_empty() {
        servers = builtin_servers().iter().map(entry_spec).collect();
    }
    let first = *servers.first().ok_or("no STUN servers given")?;
    if servers
        .iter()
        .any(|s| s.primary.is_ipv4() != first.primary.is_ipv4())
    {
        return Err("mixing IPv4 and IPv6 servers is not supported".to_string());
    }
    let device = match &args.interface {
        Some(name) => Some(super::interface(name)?),
        None => None,
    };
    let local_ip = match args.local_ip {
        Some(ip) => ip,
        // No route: bind to "any" and let the probes time out (the answer is then Blocked).
        None => route_local_ip(first.primary, args.interface.as_deref()).unwrap_or_else(|e| {
            tracing::debug!(error = %e, "no local IP routes to the first server; binding to any");
            if first.primary.is_ipv4() {
                IpAddr::from([0, 0, 0, 0])
            } else {
                IpAddr::from([0u16; 8])
            }
        }),
    };
    let deadline = args.timeout;
    let config = ClassifierConfig {
        local_ip,
        bind_options: BindOptions {
            device,
            ..BindOptions::default()
        },
        parallel_servers: servers.len(),
        deadline,
        ..ClassifierConfig::default()
    };
    tracing::debug!(%local_ip, servers = servers.len(), ?deadline, "classifying");
    let mut classifier = Classifier::new(config, &servers, super::stun::seed_from_os());
    let mut runtime = Runtime::new().map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    classifier.start(runtime.now());

    let progress = !args.json && std::io::stderr().is_terminal();
    let mut progressed = false;
    let mut report: Option<Report> = None;
    // The classifier ends itself at its deadline; this cap only guards against a stuck loop.
    let hard_cap = deadline.saturating_add(Duration::from_secs(5));
    loop {
        let run = runtime.run(
            &mut classifier,
            Some(Duration::from_secs(1)),
            |_, _, event| match event {
                ClassifierEvent::Done(r) => {
                    report = Some(r);
                    ControlFlow::Continue(())
                }
                ClassifierEvent::Closed => ControlFlow::Break(()),
            },
        );
        match run.map_err(|e| e.to_string())? {
            RunEnd::TimeLimit => {
                if started.elapsed() >= hard_cap {
                    break;
                }
                if progress && report.is_none() {
                    let probes = classifier.probes();
                    let done = probes
                        .iter()
                        .filter(|p| !matches!(p.outcome, ProbeOutcome::Pending))
                        .count();
                    err!(
                        "\rclassifying: {:.0} s, {done}/{} probe(s) done   ",
                        started.elapsed().as_secs_f64(),
                        probes.len()
                    );
                    progressed = true;
                }
            }
            // Nobody holds a waker of this runtime, so `Woken` cannot come.
            RunEnd::Break | RunEnd::Idle | RunEnd::Woken => break,
        }
    }
    if progressed {
        errln!();
    }
    let elapsed = started.elapsed();
    let report = report.ok_or("the event loop ended without a report")?;
    Ok(Outcome {
        servers,
        local_ip,
        report,
        elapsed,
    })
}

/// p2pd's NAT-type number and name (its delta is not measured here).
fn p2pd_type(c: Classification) -> Option<(u8, String)> {
    match c {
        Classification::Open => Some((1, "open internet".into())),
        Classification::Firewall(_) => Some((2, "UDP firewall".into())),
        Classification::Blocked => Some((7, "blocked".into())),
        Classification::Nat { mapping, filtering } => {
            let label = Behaviour::new(mapping, filtering).p2pd();
            let text = label.to_string();
            let name = text.split(", ").next().unwrap_or(&text).to_string();
            Some((label.nat as u8, name))
        }
        Classification::Inconclusive(_) => None,
    }
}

/// Everything known about the path, when it is known completely (for a NAT: with its allocation).
fn connectivity(r: &Report) -> Option<Connectivity> {
    match r.classification {
        Classification::Open => Some(Connectivity::Open),
        Classification::Firewall(f) => Some(Connectivity::Firewall(f)),
        Classification::Blocked => Some(Connectivity::Blocked),
        Classification::Nat { .. } => r.behaviour().map(Connectivity::Nat),
        Classification::Inconclusive(_) => None,
    }
}

fn change_name(p: &Probe) -> &'static str {
    match (p.change.change_ip, p.change.change_port) {
        (false, false) => "none",
        (false, true) => "port",
        (true, false) => "ip",
        (true, true) => "both",
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn probe_json(p: &Probe) -> ProbeReport {
    let outcome = match p.outcome {
        ProbeOutcome::Pending => OutcomeReport::Pending,
        ProbeOutcome::Reply {
            mapped,
            other_address,
            source,
            rtt,
            transmissions,
        } => OutcomeReport::Reply {
            mapped,
            other_address,
            source,
            rtt_ms: Num(ms(rtt)),
            transmissions,
        },
        ProbeOutcome::NoReply { transmissions } => OutcomeReport::NoReply { transmissions },
        ProbeOutcome::ErrorResponse { code } => OutcomeReport::ErrorResponse { code },
        ProbeOutcome::Failed => OutcomeReport::Failed,
    };
    ProbeReport {
        server: format!("{:016x}", p.server),
        kind: p.kind,
        socket: p.socket.0,
        destination: p.destination,
        change: change_name(p),
        outcome,
    }
}

fn probe_text(p: &Probe) -> String {
    let outcome = match p.outcome {
        ProbeOutcome::Pending => "pending (not awaited)".to_string(),
        ProbeOutcome::Reply {
            mapped,
            other_address,
            source,
            rtt,
            ..
        } => {
            let mut s = format!("reply from {source}: mapped {mapped}");
            if let Some(o) = other_address {
                let _ = write!(s, ", other {o}");
            }
            let _ = write!(s, ", rtt {:.3} ms", ms(rtt));
            s
        }
        ProbeOutcome::NoReply { transmissions } => {
            format!("no reply after {transmissions} transmission(s)")
        }
        ProbeOutcome::ErrorResponse { code } => format!("error response {code}"),
        ProbeOutcome::Failed => "failed (socket error or protocol violation)".to_string(),
    };
    format!(
        "  {:016x} {:<22} {} -> {} change {:<4} {outcome}",
        p.server,
        p.kind.to_string(),
        p.socket,
        p.destination,
        change_name(p),
    )
}

fn print_report(args: &NatArgs, out: &Outcome) {
    let r = &out.report;
    let c = r.classification;
    let p2pd = p2pd_type(c);
    if args.json {
        let (class, mapping, filtering, reason) = match c {
            Classification::Open => ("open", None, None, None),
            Classification::Firewall(f) => ("firewall", None, Some(f), None),
            Classification::Nat { mapping, filtering } => {
                ("nat", Some(mapping), Some(filtering), None)
            }
            Classification::Blocked => ("blocked", None, None, None),
            Classification::Inconclusive(why) => ("inconclusive", None, None, Some(why)),
        };
        let report = NatReport {
            classification: class,
            mapping,
            filtering,
            reason: reason.map(|r| r.key()),
            reason_text: reason,
            p2pd_label: p2pd.as_ref().map(|(_, name)| name.as_str()),
            allocation: r.allocation.as_ref().map(|a| a.verdict),
            p2pd_full_label: r.behaviour().map(|b| b.p2pd()),
            p2pd_nat_type: p2pd.as_ref().map(|(n, _)| *n),
            local_ip: out.local_ip,
            servers_agreeing: r.servers_agreeing,
            confidence: Num(r.confidence),
            servers_tested: out.servers.len(),
            elapsed_ms: Num(ms(out.elapsed)),
            public_addresses: &r.public_addresses,
            servers: out
                .servers
                .iter()
                .map(|s| TestedServer {
                    id: format!("{:016x}", s.id),
                    primary: s.primary,
                    alternate: s.alternate,
                })
                .collect(),
            probes: r.probes.iter().map(probe_json).collect(),
        };
        outln!("{}", to_json(&report));
        return;
    }
    outln!("classification    {c}");
    if let Some(a) = &r.allocation {
        outln!("port allocation   {}", a.verdict);
    }
    match (connectivity(r), &p2pd) {
        (Some(c), _) => outln!("p2pd label        {}", c.p2pd()),
        (None, Some((n, name))) => {
            outln!("p2pd NAT type     {name} ({n}; port delta not measured)")
        }
        (None, None) => {}
    }
    outln!("local IP          {}", out.local_ip);
    if r.public_addresses.is_empty() {
        outln!("public address    -");
    }
    for a in &r.public_addresses {
        outln!("public address    {a}");
    }
    outln!(
        "servers agreeing  {} of {}",
        r.servers_agreeing,
        out.servers.len()
    );
    outln!(
        "confidence        {:.6} (chance that loss alone faked a filter: {:.1e})",
        r.confidence,
        1.0 - r.confidence
    );
    outln!("time              {:.0} ms", ms(out.elapsed));
    if args.verbose {
        outln!("probes:");
        for p in &r.probes {
            outln!("{}", probe_text(p));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{builtin_servers, host_name, server_spec};
    use p2pd_nat::ServerId;

    #[test]
    fn server_specs() {
        let s = server_spec("192.0.2.1:3478").unwrap();
        assert_eq!(
            s.id,
            ServerId::of(None, "192.0.2.1:3478".parse().unwrap()).as_u64()
        );
        assert_eq!(s.alternate, None);
        let s = server_spec("192.0.2.1,192.0.2.2:3479").unwrap();
        assert_eq!(s.primary.to_string(), "192.0.2.1:3478");
        assert_eq!(s.alternate.unwrap().to_string(), "192.0.2.2:3479");
        assert!(server_spec("192.0.2.1:3478,192.0.2.1:3479").is_err());
        assert!(server_spec("192.0.2.1:3478,192.0.2.2").is_err());
    }

    #[test]
    fn builtin_servers_by_id_and_address() {
        let list = builtin_servers();
        assert!(list.len() >= 2);
        for e in &list {
            let by_id = server_spec(&e.id.to_string()).unwrap();
            assert_eq!(by_id.id, e.id.as_u64());
            assert_eq!(by_id.primary, e.primary);
            assert_eq!(by_id.alternate, e.alternate);
            // The bare address keeps the entry's id and alternate.
            let by_addr = server_spec(&e.primary.to_string()).unwrap();
            assert_eq!(by_addr, by_id);
        }
        assert!(server_spec("0123456789abcdef").is_err());
        // Ids are stable: the documented derivation of the first built-in entry.
        assert_eq!(
            list[0].id,
            ServerId::of(
                Some("hetzner1.p2pd.net"),
                "88.99.211.216:3478".parse().unwrap()
            )
        );
    }

    #[test]
    fn host_names() {
        assert_eq!(host_name("stun.example.org:3478"), Some("stun.example.org"));
        assert_eq!(host_name("stun.example.org"), Some("stun.example.org"));
        assert_eq!(host_name("192.0.2.1:3478"), None);
        assert_eq!(host_name("::1"), None);
        assert_eq!(host_name("[::1]:3478"), None);
    }
}

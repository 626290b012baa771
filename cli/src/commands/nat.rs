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

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::ops::ControlFlow;
use std::time::Duration;

use clap::Args;
use p2pd_nat::classify::{ClassifyInconclusive, Probe, ProbeKind, ProbeOutcome};
use p2pd_nat::{
    default_servers, Behaviour, Classification, Classifier, ClassifierConfig, ClassifierEvent,
    Filtering, Mapping, Report, ServerEntry, ServerId, ServerSpec,
};
use p2pd_nat::{Connectivity, DeltaVerdict};
use p2pd_proto::BindOptions;

use super::json::Object;
use p2pd_mio::{RunEnd, Runtime};

/// Options of `p2pd nat`.
#[derive(Debug, Args)]
pub struct NatArgs {
    /// An RFC 5780 STUN server: HOST[:PORT], or HOST[:PORT],ALT[:PORT] to give its alternate
    /// address (otherwise the OTHER-ADDRESS it reports is used), or the id of a built-in server
    /// (see --list-servers). Repeat it; two or more servers corroborate each other. Default: the
    /// built-in RFC 5780 servers.
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
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 8.0)]
    pub timeout: f64,
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
        let items: Vec<String> = servers
            .iter()
            .map(|e| {
                Object::new()
                    .str("id", &e.id.to_string())
                    .opt("host", e.host)
                    .str("primary", &e.primary.to_string())
                    .opt("alternate", e.alternate)
                    .finish()
            })
            .collect();
        println!("{{\"servers\":[{}]}}", items.join(","));
        return;
    }
    println!("{:<16}  {:<22} {:<22} host", "id", "primary", "alternate");
    for e in &servers {
        println!(
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
fn route_local_ip(server: SocketAddr, interface: Option<&str>) -> Result<IpAddr, String> {
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

/// Runs `p2pd nat`; returns the process exit code (0 classified, 3 inconclusive, 1 error).
pub fn run(args: &NatArgs) -> i32 {
    if args.list_servers {
        list_servers(args.json);
        return 0;
    }
    match classify(args) {
        Ok(out) => {
            print_report(args, &out);
            match out.report.classification {
                Classification::Inconclusive(_) => 3,
                _ => 0,
            }
        }
        Err(e) => {
            if args.json {
                println!("{}", Object::new().str("error", &e).finish());
            } else {
                eprintln!("p2pd nat: {e}");
            }
            1
        }
    }
}

struct Outcome {
    servers: Vec<ServerSpec>,
    local_ip: IpAddr,
    report: Report,
    elapsed: Duration,
}

fn classify(args: &NatArgs) -> Result<Outcome, String> {
    let mut servers: Vec<ServerSpec> = Vec::new();
    for text in &args.servers {
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
    if !(args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 3600.0) {
        return Err(format!("--timeout {} out of range (0, 3600]", args.timeout));
    }
    let device = match &args.interface {
        Some(name) => Some(super::interface(name)?),
        None => None,
    };
    let local_ip = match args.local_ip {
        Some(ip) => ip,
        // No route: bind to "any" and let the probes time out (the answer is then Blocked).
        None => route_local_ip(first.primary, args.interface.as_deref()).unwrap_or(
            if first.primary.is_ipv4() {
                IpAddr::from([0, 0, 0, 0])
            } else {
                IpAddr::from([0u16; 8])
            },
        ),
    };
    let deadline = Duration::from_secs_f64(args.timeout);
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
                    eprint!(
                        "\rclassifying: {:.0} s, {done}/{} probe(s) done   ",
                        started.elapsed().as_secs_f64(),
                        probes.len()
                    );
                    progressed = true;
                }
            }
            RunEnd::Break | RunEnd::Idle => break,
        }
    }
    if progressed {
        eprintln!();
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

fn mapping_name(m: Mapping) -> &'static str {
    match m {
        Mapping::EndpointIndependent => "endpoint-independent",
        Mapping::AddressDependent => "address-dependent",
        Mapping::AddressAndPortDependent => "address-and-port-dependent",
    }
}

fn filtering_name(f: Filtering) -> &'static str {
    match f {
        Filtering::EndpointIndependent => "endpoint-independent",
        Filtering::AddressDependent => "address-dependent",
        Filtering::AddressAndPortDependent => "address-and-port-dependent",
    }
}

fn reason_name(r: ClassifyInconclusive) -> &'static str {
    match r {
        ClassifyInconclusive::NoUsableServer => {
            "no server gave a complete, consistent set of results"
        }
        ClassifyInconclusive::MappingDisagrees => "servers disagree about the mapping",
        ClassifyInconclusive::FilteringDisagrees => "servers disagree about the filtering",
        ClassifyInconclusive::LocalAddressUnknown => {
            "the mapped address equals the local port but the local IP is unknown"
        }
        ClassifyInconclusive::Deadline => "the deadline passed first",
        _ => "unknown reason",
    }
}

fn reason_key(r: ClassifyInconclusive) -> &'static str {
    match r {
        ClassifyInconclusive::NoUsableServer => "no-usable-server",
        ClassifyInconclusive::MappingDisagrees => "mapping-disagrees",
        ClassifyInconclusive::FilteringDisagrees => "filtering-disagrees",
        ClassifyInconclusive::LocalAddressUnknown => "local-address-unknown",
        ClassifyInconclusive::Deadline => "deadline",
        _ => "other",
    }
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

fn kind_name(k: ProbeKind) -> &'static str {
    match k {
        ProbeKind::MapPrimary => "map-primary",
        ProbeKind::MapAlternateIp => "map-alternate-ip",
        ProbeKind::MapAlternateBoth => "map-alternate-ip+port",
        ProbeKind::FilterControl => "filter-control",
        ProbeKind::FilterChangeBoth => "filter-change-ip+port",
        ProbeKind::FilterChangePort => "filter-change-port",
        ProbeKind::AllocationRandom => "allocation-random-port",
        ProbeKind::AllocationConsecutive => "allocation-consecutive-port",
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

/// The port-allocation verdict in words.
fn allocation_text(v: &DeltaVerdict) -> String {
    match v {
        DeltaVerdict::Equal => "port preserving (external = local)".into(),
        DeltaVerdict::FixedOffset { offset } => format!("fixed offset {offset:+}"),
        DeltaVerdict::Sequential { stride } => format!("sequential, stride {stride}"),
        DeltaVerdict::LocalPortDependent { stride } => {
            format!("local-port dependent, stride {stride}")
        }
        DeltaVerdict::Random => "random".into(),
        DeltaVerdict::Inconclusive { reason } => format!("inconclusive ({reason:?})"),
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

fn probe_json(p: &Probe) -> String {
    let o = Object::new()
        .str("server", &format!("{:016x}", p.server))
        .str("kind", kind_name(p.kind))
        .num("socket", p.socket.0)
        .str("destination", &p.destination.to_string())
        .str("change", change_name(p));
    match p.outcome {
        ProbeOutcome::Pending => o.str("outcome", "pending"),
        ProbeOutcome::Reply {
            mapped,
            other_address,
            source,
            rtt,
            transmissions,
        } => o
            .str("outcome", "reply")
            .str("mapped", &mapped.to_string())
            .opt("other_address", other_address)
            .str("source", &source.to_string())
            .num("rtt_ms", ms(rtt))
            .num("transmissions", transmissions),
        ProbeOutcome::NoReply { transmissions } => o
            .str("outcome", "no-reply")
            .num("transmissions", transmissions),
        ProbeOutcome::ErrorResponse { code } => {
            o.str("outcome", "error-response").num("code", code)
        }
        ProbeOutcome::Failed => o.str("outcome", "failed"),
    }
    .finish()
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
        kind_name(p.kind),
        p.socket,
        p.destination,
        change_name(p),
    )
}

/// Inserts `"key":raw` (raw JSON) before the closing brace of `object`.
fn with_raw(object: String, key: &str, raw: &str) -> String {
    let body = object.strip_suffix('}').unwrap_or(&object);
    let sep = if body == "{" { "" } else { "," };
    format!("{body}{sep}\"{key}\":{raw}}}")
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
        let mut o = Object::new()
            .str("classification", class)
            .opt("mapping", mapping.map(mapping_name))
            .opt("filtering", filtering.map(filtering_name))
            .opt("reason", reason.map(reason_key))
            .opt("reason_text", reason.map(reason_name))
            .opt("p2pd_label", p2pd.as_ref().map(|(_, name)| name.clone()))
            .opt(
                "allocation",
                r.allocation.as_ref().map(|a| allocation_text(&a.verdict)),
            )
            .opt(
                "p2pd_full_label",
                r.behaviour().map(|b| b.p2pd().to_string()),
            );
        o = match &p2pd {
            Some((n, _)) => o.num("p2pd_nat_type", *n),
            None => o.opt("p2pd_nat_type", None::<u8>),
        };
        let o = o
            .str("local_ip", &out.local_ip.to_string())
            .num(
                "servers_agreeing",
                u32::try_from(r.servers_agreeing).unwrap_or(u32::MAX),
            )
            .num("confidence", r.confidence)
            .num(
                "servers_tested",
                u32::try_from(out.servers.len()).unwrap_or(u32::MAX),
            )
            .num("elapsed_ms", ms(out.elapsed));
        let addrs: Vec<String> = r
            .public_addresses
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect();
        let servers: Vec<String> = out
            .servers
            .iter()
            .map(|s| {
                Object::new()
                    .str("id", &format!("{:016x}", s.id))
                    .str("primary", &s.primary.to_string())
                    .opt("alternate", s.alternate)
                    .finish()
            })
            .collect();
        let probes: Vec<String> = r.probes.iter().map(probe_json).collect();
        let mut s = with_raw(
            o.finish(),
            "public_addresses",
            &format!("[{}]", addrs.join(",")),
        );
        s = with_raw(s, "servers", &format!("[{}]", servers.join(",")));
        s = with_raw(s, "probes", &format!("[{}]", probes.join(",")));
        println!("{s}");
        return;
    }
    let verdict = match c {
        Classification::Open => "open internet (no NAT, no filtering)".to_string(),
        Classification::Firewall(f) => {
            format!("UDP firewall, no NAT ({} filtering)", filtering_name(f))
        }
        Classification::Nat { mapping, filtering } => format!(
            "NAT: {} mapping, {} filtering",
            mapping_name(mapping),
            filtering_name(filtering)
        ),
        Classification::Blocked => "blocked (no server answered)".to_string(),
        Classification::Inconclusive(why) => format!("inconclusive: {}", reason_name(why)),
    };
    println!("classification    {verdict}");
    if let Some(a) = &r.allocation {
        println!("port allocation   {}", allocation_text(&a.verdict));
    }
    match (connectivity(r), &p2pd) {
        (Some(c), _) => println!("p2pd label        {}", c.p2pd()),
        (None, Some((n, name))) => {
            println!("p2pd NAT type     {name} ({n}; port delta not measured)")
        }
        (None, None) => {}
    }
    println!("local IP          {}", out.local_ip);
    if r.public_addresses.is_empty() {
        println!("public address    -");
    }
    for a in &r.public_addresses {
        println!("public address    {a}");
    }
    println!(
        "servers agreeing  {} of {}",
        r.servers_agreeing,
        out.servers.len()
    );
    println!(
        "confidence        {:.6} (chance that loss alone faked a filter: {:.1e})",
        r.confidence,
        1.0 - r.confidence
    );
    println!("time              {:.0} ms", ms(out.elapsed));
    if args.verbose {
        println!("probes:");
        for p in &r.probes {
            println!("{}", probe_text(p));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{builtin_servers, host_name, server_spec, with_raw};
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

    #[test]
    fn raw_members() {
        assert_eq!(with_raw("{}".into(), "a", "[]"), r#"{"a":[]}"#);
        assert_eq!(
            with_raw(r#"{"x":1}"#.into(), "a", "[1]"),
            r#"{"x":1,"a":[1]}"#
        );
    }
}

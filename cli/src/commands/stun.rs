//! `p2pd stun SERVER`: one Binding transaction, printing mapped address, other address and RTT;
//! with `--tcp`, one Binding over TCP printing the NAT's TCP mapping (see [`tcp`]).

mod tcp;

use crate::{err, errln, outln};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::Duration;

use clap::{Args, ValueEnum};
use p2pd_proto::client::{
    BindingResponse, ClientConfig, ClientEvent, Failure, Request, Retransmit, StunClient,
};
use p2pd_proto::stun::ChangeRequest;
use p2pd_proto::BindOptions;
use serde::Serialize;

use super::numbers;
use super::report::{to_json, Num, Reporter};
use p2pd_mio::{RunEnd, Runtime};
use std::io::IsTerminal;

/// Which CHANGE-REQUEST to send.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Change {
    /// No change (a plain Binding request).
    None,
    /// Ask for the reply from the server's other port.
    Port,
    /// Ask for the reply from the server's other IP.
    Ip,
    /// Ask for the reply from the other IP and port.
    Both,
}

impl From<Change> for ChangeRequest {
    fn from(c: Change) -> Self {
        match c {
            Change::None => ChangeRequest::NONE,
            Change::Port => ChangeRequest::PORT,
            Change::Ip => ChangeRequest::IP,
            Change::Both => ChangeRequest::BOTH,
        }
    }
}

/// Options of `p2pd stun`.
#[derive(Debug, Args)]
pub struct StunArgs {
    /// The STUN server: HOST[:PORT] (default port 3478).
    pub server: String,
    /// Local address to send from (default: any address, any port, of the server's family).
    #[arg(long)]
    pub local: Option<SocketAddr>,
    /// Bind to this network interface (SO_BINDTODEVICE on Linux).
    #[arg(long)]
    pub interface: Option<String>,
    /// CHANGE-REQUEST to send (RFC 5780).
    #[arg(long, value_enum, default_value = "none")]
    pub change: Change,
    /// Speak RFC 3489 (no magic cookie), as p2pd does for change requests.
    #[arg(long)]
    pub legacy: bool,
    /// Initial retransmission timeout in milliseconds (RFC 5389 RTO; 1 to 3600000; it doubles
    /// up to 60 s).
    #[arg(long, value_name = "MS", default_value = "500", value_parser = numbers::millis_nonzero)]
    pub rto_ms: Duration,
    /// Total transmissions (RFC 5389 Rc; 1 to 20).
    #[arg(long, default_value_t = 7, value_parser = numbers::count::<u32>(1, MAX_TRANSMISSIONS))]
    pub transmissions: u32,
    /// Send once and wait this many milliseconds instead of retransmitting (0 to 3600000).
    #[arg(long, value_name = "MS", value_parser = numbers::millis)]
    pub single_shot_ms: Option<Duration>,
    /// Ask over TCP (RFC 5389 §7.2.2) and print the TCP mapping of the local port; the socket
    /// is bound with SO_REUSEADDR and SO_REUSEPORT. `--single-shot-ms` is the timeout (default
    /// 5000).
    #[arg(long)]
    pub tcp: bool,
    /// With --tcp: keep the connection (and the NAT mapping) open this many seconds after the
    /// answer (0 to 31536000).
    #[arg(long, value_name = "S", requires = "tcp", value_parser = numbers::seconds)]
    pub hold: Option<Duration>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Most transmissions `--transmissions` accepts.
pub const MAX_TRANSMISSIONS: u64 = 20;

/// Runs `p2pd stun`; returns the process exit code.
pub fn run(args: &StunArgs) -> i32 {
    if args.tcp {
        return match target(args) {
            Ok((server, local)) => tcp::run(args, server, local),
            Err(e) => {
                report_error(args, &e);
                1
            }
        };
    }
    match query(args) {
        Ok(r) => {
            print_success(args, &r);
            0
        }
        Err(e) => {
            report_error(args, &e);
            1
        }
    }
}

/// `p2pd stun --json` when it fails.
#[derive(Debug, Serialize)]
struct StunError<'a> {
    server: &'a str,
    error: &'a str,
    kind: &'static str,
}

/// `p2pd stun --json`: the answer over UDP.
#[derive(Debug, Serialize)]
struct StunAnswer {
    server: SocketAddr,
    local: Option<SocketAddr>,
    mapped: SocketAddr,
    other_address: Option<SocketAddr>,
    response_origin: Option<SocketAddr>,
    source: SocketAddr,
    rtt_ms: Num,
    transmissions: u32,
    legacy: bool,
}

fn report_error(args: &StunArgs, e: &CliError) {
    Reporter { json: args.json }.note(
        format_args!("p2pd stun: {}", e.message),
        &StunError {
            server: &args.server,
            error: &e.message,
            kind: e.kind,
        },
    );
}

/// The server's address and the local address to use (default: any address of its family).
fn target(args: &StunArgs) -> Result<(SocketAddr, SocketAddr), CliError> {
    let server =
        super::resolve(&args.server, super::STUN_PORT).map_err(|e| CliError::new("resolve", e))?;
    let local = args.local.unwrap_or_else(|| {
        if server.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        }
    });
    Ok((server, local))
}

struct CliError {
    kind: &'static str,
    message: String,
}

impl CliError {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        CliError {
            kind,
            message: message.into(),
        }
    }
}

struct Answer {
    server: SocketAddr,
    response: BindingResponse,
}

fn query(args: &StunArgs) -> Result<Answer, CliError> {
    let (server, local) = target(args)?;
    let device = match &args.interface {
        Some(name) => Some(super::interface(name).map_err(|e| CliError::new("usage", e))?),
        None => None,
    };
    let retransmit = match args.single_shot_ms {
        Some(timeout) => Retransmit::SingleShot { timeout },
        None => Retransmit::Rfc5389 {
            rto: args.rto_ms,
            transmissions: args.transmissions,
            last_wait: 16,
            max_rto: Duration::from_secs(60),
        },
    };
    let seed = seed_from_os();
    let mut client = StunClient::new(
        ClientConfig {
            retransmit,
            ..ClientConfig::default()
        },
        seed,
    );
    let mut runtime = Runtime::new().map_err(|e| CliError::new("io", e.to_string()))?;
    let now = runtime.now();
    let options = BindOptions {
        device,
        ..BindOptions::default()
    };
    let socket = client
        .open_socket(now, local, options)
        .map_err(|e| CliError::new("usage", e.to_string()))?;
    let mut request = Request::binding(socket, server).with_change(args.change.into());
    if args.legacy {
        request = request.legacy();
    }
    client
        .start(now, request)
        .map_err(|e| CliError::new("usage", e.to_string()))?;

    let mut result: Option<Result<BindingResponse, CliError>> = None;
    // Progress on stderr once the answer takes longer than a second (not with --json, not when
    // stderr is not a terminal).
    let progress = !args.json && std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let mut progressed = false;
    loop {
        let run = runtime.run(
            &mut client,
            Some(Duration::from_secs(1)),
            |client, now, event| match event {
                ClientEvent::SocketFailed { error, .. } => {
                    result = Some(Err(CliError::new(
                        "socket",
                        format!("cannot bind {local}: {error}"),
                    )));
                    client.close(now);
                    ControlFlow::Continue(())
                }
                ClientEvent::Transaction(t) => {
                    result = Some(t.outcome.map_err(|f| failure(server, f)));
                    client.close(now);
                    ControlFlow::Continue(())
                }
                ClientEvent::Closed => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            },
        );
        match run {
            Err(e) => return Err(CliError::new("io", e.to_string())),
            Ok(RunEnd::TimeLimit) => {
                if progress {
                    let stats = client.stats();
                    err!(
                        "\rwaiting for {server}: {:.0} s, {} transmission(s)   ",
                        started.elapsed().as_secs_f64(),
                        stats.requests.saturating_add(stats.retransmissions)
                    );
                    progressed = true;
                }
            }
            Ok(_) => break,
        }
    }
    if progressed {
        errln!();
    }
    match result {
        Some(Ok(response)) => Ok(Answer { server, response }),
        Some(Err(e)) => Err(e),
        None => Err(CliError::new("io", "the event loop ended without a result")),
    }
}

fn failure(server: SocketAddr, f: Failure) -> CliError {
    match f {
        Failure::Timeout { transmissions } => CliError::new(
            "timeout",
            format!("no reply from {server} after {transmissions} transmission(s)"),
        ),
        Failure::ErrorResponse { code, reason } => CliError::new(
            "error-response",
            format!("{server} answered error {code} {reason}"),
        ),
        Failure::ServerMisbehaved(m) => {
            CliError::new("server-misbehaved", format!("{server} misbehaved: {m}"))
        }
        Failure::SocketFailed(e) => CliError::new("socket", format!("socket failed: {e}")),
        other => CliError::new("cancelled", other.to_string()),
    }
}

fn print_success(args: &StunArgs, a: &Answer) {
    let r = &a.response;
    let rtt_ms = r.rtt.as_secs_f64() * 1000.0;
    if args.json {
        outln!(
            "{}",
            to_json(&StunAnswer {
                server: a.server,
                local: r.local,
                mapped: r.mapped,
                other_address: r.other_address,
                response_origin: r.response_origin,
                source: r.source,
                rtt_ms: Num((rtt_ms * 1000.0).round() / 1000.0),
                transmissions: r.transmissions,
                legacy: r.legacy,
            }),
        );
        return;
    }
    let none = || "-".to_string();
    outln!("server           {}", a.server);
    outln!(
        "local            {}",
        r.local.map_or_else(none, |l| l.to_string())
    );
    outln!("mapped address   {}", r.mapped);
    outln!(
        "other address    {}",
        r.other_address.map_or_else(none, |l| l.to_string())
    );
    outln!(
        "response origin  {}",
        r.response_origin.map_or_else(none, |l| l.to_string())
    );
    outln!("reply from       {}", r.source);
    outln!(
        "rtt              {rtt_ms:.3} ms ({} transmission{})",
        r.transmissions,
        if r.transmissions == 1 { "" } else { "s" }
    );
}

/// A seed for transaction ids from the OS (time and process id; ids need only be unpredictable enough
/// not to collide with other clients).
pub fn seed_from_os() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

//! `p2pd stun-server`: a full RFC 5780 STUN server on two IPs and two ports, and with `--tcp` STUN
//! over TCP on the primary address. It serves until `--duration` passes, SIGINT or SIGTERM
//! arrives, or stdout is closed; then it closes its sockets and prints its counters.

use crate::{errln, outln};
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::time::Duration;

use clap::Args;
use p2pd_proto::server::{Role, ServerConfig, ServerEvent, ServerStats, StunServer};
use p2pd_proto::{BindOptions, Instant};

use serde::Serialize;

use super::numbers;
use super::report::Reporter;
use super::stop_signal;
use super::tcp_limits::TcpLimitArgs;
use p2pd_mio::Runtime;

/// How long the loop runs between checks for SIGINT / SIGTERM, a closed stdout and `--duration`.
const SLICE: Duration = Duration::from_millis(100);
/// How long a clean stop may take to release the sockets.
const CLOSE_LIMIT: Duration = Duration::from_secs(2);

/// Options of `p2pd stun-server`.
#[derive(Debug, Args)]
pub struct StunServerArgs {
    /// The primary IP address.
    #[arg(long)]
    pub primary: IpAddr,
    /// The alternate IP address (RFC 5780 change-IP); without it change-IP requests get error 420.
    #[arg(long)]
    pub alternate: Option<IpAddr>,
    /// The primary port (0 to 65535; 0, with --single only, picks a free port).
    #[arg(long, default_value_t = 3478)]
    pub port: u16,
    /// The alternate port (1 to 65535, not PORT; default: PORT + 1).
    #[arg(long)]
    pub alt_port: Option<u16>,
    /// Serve only the primary address and port (no alternates at all).
    #[arg(long, conflicts_with_all = ["alternate", "alt_port"])]
    pub single: bool,
    /// Also serve STUN over TCP (RFC 5389 §7.2.2) on the primary address and port.
    #[arg(long)]
    pub tcp: bool,
    /// With --tcp: the connection limits.
    #[command(flatten)]
    pub tcp_limits: TcpLimitArgs,
    /// Bind every socket to this network interface.
    #[arg(long)]
    pub interface: Option<String>,
    /// Stop after this many seconds (0 to 31536000; default: serve until SIGINT or SIGTERM).
    #[arg(long, value_name = "S", value_parser = numbers::seconds)]
    pub duration: Option<Duration>,
    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `p2pd stun-server --json`: one line per event.
#[derive(Debug, Serialize)]
#[serde(tag = "event")]
enum ServerLine {
    /// A socket is up (`transport` only for TCP).
    #[serde(rename = "listening")]
    Listening {
        role: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        transport: Option<&'static str>,
        local: SocketAddr,
    },
    /// A socket could not be opened (`transport` only for TCP).
    #[serde(rename = "socket-failed")]
    SocketFailed {
        role: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        transport: Option<&'static str>,
        local: Option<SocketAddr>,
        error: String,
    },
    /// The server stopped: its counters.
    #[serde(rename = "stopped")]
    Stopped {
        requests: u64,
        responses: u64,
        error_responses: u64,
        malformed: u64,
        queue_full: u64,
        tcp_accepted: u64,
        tcp_closed: u64,
        tcp_bad_frames: u64,
        tcp_idle_closed: u64,
        tcp_message_timeouts: u64,
        tcp_evicted: u64,
    },
}

/// What the serving loop keeps between slices, and how it reports each server event.
struct Serving {
    out: Reporter,
    tcp: bool,
    primary: SocketAddr,
    /// Sockets the server should open (UDP roles, plus TCP).
    expected: usize,
    listening: usize,
    failed: usize,
    /// The `ready` line is printed (once).
    ready: bool,
    /// The server reported `Closed`.
    closed: bool,
}

impl Serving {
    fn on_event(
        &mut self,
        server: &mut StunServer,
        now: Instant,
        event: ServerEvent,
    ) -> ControlFlow<()> {
        match event {
            ServerEvent::Listening { role, local } => {
                self.listening += 1;
                self.out.line(
                    format_args!("listening {:<18} {local}", role_name(role)),
                    &ServerLine::Listening {
                        role: role_name(role),
                        transport: None,
                        local,
                    },
                );
            }
            ServerEvent::SocketFailed { role, error } => {
                self.failed += 1;
                let addr = server.config().role_addr(role);
                self.out.note(
                    format_args!(
                        "cannot bind {} ({}): {error}",
                        addr.map_or_else(|| "-".into(), |a| a.to_string()),
                        role_name(role)
                    ),
                    &ServerLine::SocketFailed {
                        role: role_name(role),
                        transport: None,
                        local: addr,
                        error: error.to_string(),
                    },
                );
                if role == Role::Primary {
                    server.close(now);
                }
            }
            ServerEvent::TcpListening { local } => {
                self.listening += 1;
                self.out.line(
                    format_args!("listening {:<18} {local}", "tcp"),
                    &ServerLine::Listening {
                        role: "primary",
                        transport: Some("tcp"),
                        local,
                    },
                );
            }
            ServerEvent::TcpFailed { op, error } => {
                self.failed += 1;
                self.out.note(
                    format_args!("cannot serve TCP on {} ({op}): {error}", self.primary),
                    &ServerLine::SocketFailed {
                        role: "primary",
                        transport: Some("tcp"),
                        local: Some(self.primary),
                        error: format!("{op}: {error}"),
                    },
                );
                // TCP was asked for: without it the server is not what the user wanted.
                server.close(now);
            }
            ServerEvent::Closed => {
                self.closed = true;
                return ControlFlow::Break(());
            }
            _ => {}
        }
        if !self.ready && self.listening + self.failed == self.expected && self.failed == 0 {
            self.ready = true;
            if !self.out.json {
                outln!(
                    "ready: RFC 5780 server with {} socket(s){}",
                    self.listening,
                    if self.tcp { " (incl. TCP)" } else { "" }
                );
            }
        }
        ControlFlow::Continue(())
    }
}

/// TCP connections closed to make room for newcomers, for whichever reason.
fn tcp_evicted(stats: &ServerStats) -> u64 {
    stats
        .tcp_evicted_source_full
        .saturating_add(stats.tcp_evicted_pool_full)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Primary => "primary",
        Role::AlternatePort => "alternate-port",
        Role::AlternateIp => "alternate-ip",
        Role::AlternateBoth => "alternate-ip+port",
    }
}

/// Runs `p2pd stun-server`; returns the process exit code.
pub fn run(args: &StunServerArgs) -> i32 {
    let primary = SocketAddr::new(args.primary, args.port);
    let mut config = ServerConfig::single(primary).with_tcp(args.tcp);
    config.tcp_limits = args.tcp_limits.limits(config.tcp_limits);
    if !args.single {
        config.alternate_ip = args.alternate;
        config.alternate_port = Some(args.alt_port.unwrap_or(args.port.wrapping_add(1)));
    }
    if let Some(name) = &args.interface {
        match super::interface(name) {
            Ok(device) => {
                config.bind_options = BindOptions {
                    device: Some(device),
                    ..config.bind_options
                }
            }
            Err(e) => {
                errln!("p2pd stun-server: {e}");
                return 2;
            }
        }
    }
    let mut server = match StunServer::new(config) {
        Ok(s) => s,
        Err(e) => {
            errln!("p2pd stun-server: invalid configuration: {e}");
            return 2;
        }
    };
    let mut runtime = match Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            errln!("p2pd stun-server: {e}");
            return 1;
        }
    };
    if let Err(e) = stop_signal::install() {
        errln!("p2pd stun-server: signal handlers: {e}");
        return 1;
    }
    let mut state = Serving {
        out: Reporter { json: args.json },
        tcp: args.tcp,
        primary,
        expected: Role::ALL
            .iter()
            .filter(|r| server.config().role_addr(**r).is_some())
            .count()
            + usize::from(args.tcp),
        listening: 0,
        failed: 0,
        ready: false,
        closed: false,
    };
    // Serve in short slices, checking between them for SIGINT / SIGTERM, a closed stdout and
    // the --duration limit (at least one slice runs, so `--duration 0` still opens and closes).
    let started = std::time::Instant::now();
    let mut result = Ok(());
    while !state.closed {
        let slice = args.duration.map_or(SLICE, |limit| {
            limit.saturating_sub(started.elapsed()).min(SLICE)
        });
        if let Err(e) = runtime.run(&mut server, Some(slice), |server, now, event| {
            state.on_event(server, now, event)
        }) {
            result = Err(e);
            break;
        }
        if stop_signal::requested() || args.duration.is_some_and(|l| started.elapsed() >= l) {
            break;
        }
    }
    // Clean stop: close every socket and wait (bounded) until the runtime has released them.
    if !state.closed {
        server.close(runtime.now());
        let _ = runtime.run(&mut server, Some(CLOSE_LIMIT), |_, _, event| {
            if event == ServerEvent::Closed {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
    }
    let stats = server.stats();
    let mut human = format!(
        "stopped: {} requests, {} responses, {} error responses, {} malformed, {} dropped (queue full)",
        stats.requests, stats.responses, stats.error_responses, stats.malformed, stats.queue_full
    );
    if args.tcp {
        human.push_str(&format!(
            "\ntcp: {} accepted, {} closed ({} bad framing, {} idle, {} late message, {} evicted)",
            stats.tcp_accepted,
            stats.tcp_closed,
            stats.tcp_bad_frames,
            stats.tcp_idle_closed,
            stats.tcp_message_timeouts,
            tcp_evicted(&stats)
        ));
    }
    state.out.line(
        human,
        &ServerLine::Stopped {
            requests: stats.requests,
            responses: stats.responses,
            error_responses: stats.error_responses,
            malformed: stats.malformed,
            queue_full: stats.queue_full,
            tcp_accepted: stats.tcp_accepted,
            tcp_closed: stats.tcp_closed,
            tcp_bad_frames: stats.tcp_bad_frames,
            tcp_idle_closed: stats.tcp_idle_closed,
            tcp_message_timeouts: stats.tcp_message_timeouts,
            tcp_evicted: tcp_evicted(&stats),
        },
    );
    match result {
        Err(e) => {
            errln!("p2pd stun-server: {e}");
            1
        }
        Ok(()) if state.failed > 0 && state.listening == 0 => 1,
        Ok(()) => 0,
    }
}

//! `p2pd stun-server`: a full RFC 5780 STUN server on two IPs and two ports, and with `--tcp` STUN
//! over TCP on the primary address.

use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::time::Duration;

use clap::Args;
use p2pd_proto::server::{Role, ServerConfig, ServerEvent, ServerStats, StunServer};
use p2pd_proto::BindOptions;

use serde::Serialize;

use super::report::Reporter;
use super::tcp_limits::TcpLimitArgs;
use p2pd_mio::Runtime;

/// Options of `p2pd stun-server`.
#[derive(Debug, Args)]
pub struct StunServerArgs {
    /// The primary IP address.
    #[arg(long)]
    pub primary: IpAddr,
    /// The alternate IP address (RFC 5780 change-IP); without it change-IP requests get error 420.
    #[arg(long)]
    pub alternate: Option<IpAddr>,
    /// The primary port.
    #[arg(long, default_value_t = 3478)]
    pub port: u16,
    /// The alternate port (default: PORT + 1).
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
    /// Stop after this many seconds (default: run until killed).
    #[arg(long)]
    pub duration: Option<f64>,
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
                eprintln!("p2pd stun-server: {e}");
                return 2;
            }
        }
    }
    let mut server = match StunServer::new(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("p2pd stun-server: invalid configuration: {e}");
            return 2;
        }
    };
    let mut runtime = match Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("p2pd stun-server: {e}");
            return 1;
        }
    };
    let json = args.json;
    let out = Reporter { json };
    let mut listening = 0;
    let mut failed = 0;
    let expected = Role::ALL
        .iter()
        .filter(|r| server.config().role_addr(**r).is_some())
        .count()
        + usize::from(args.tcp);
    let limit = args.duration.map(Duration::from_secs_f64);
    let result = runtime.run(&mut server, limit, |server, now, event| {
        match event {
            ServerEvent::Listening { role, local } => {
                listening += 1;
                out.line(
                    format_args!("listening {:<18} {local}", role_name(role)),
                    &ServerLine::Listening {
                        role: role_name(role),
                        transport: None,
                        local,
                    },
                );
            }
            ServerEvent::SocketFailed { role, error } => {
                failed += 1;
                let addr = server.config().role_addr(role);
                out.note(
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
                listening += 1;
                out.line(
                    format_args!("listening {:<18} {local}", "tcp"),
                    &ServerLine::Listening {
                        role: "primary",
                        transport: Some("tcp"),
                        local,
                    },
                );
            }
            ServerEvent::TcpFailed { op, error } => {
                failed += 1;
                out.note(
                    format_args!("cannot serve TCP on {primary} ({op}): {error}"),
                    &ServerLine::SocketFailed {
                        role: "primary",
                        transport: Some("tcp"),
                        local: Some(primary),
                        error: format!("{op}: {error}"),
                    },
                );
                // TCP was asked for: without it the server is not what the user wanted.
                server.close(now);
            }
            ServerEvent::Closed => return ControlFlow::Break(()),
            _ => {}
        }
        if listening + failed == expected && failed == 0 && !json {
            println!(
                "ready: RFC 5780 server with {listening} socket(s){}",
                if args.tcp { " (incl. TCP)" } else { "" }
            );
        }
        ControlFlow::Continue(())
    });
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
    out.line(
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
            eprintln!("p2pd stun-server: {e}");
            1
        }
        Ok(_) if failed > 0 && listening == 0 => 1,
        Ok(_) => 0,
    }
}

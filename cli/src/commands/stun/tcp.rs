//! `p2pd stun SERVER --tcp`: one Binding request over TCP (RFC 5389 §7.2.2), printing the NAT's TCP
//! mapping for the local port. The socket is bound with SO_REUSEADDR and SO_REUSEPORT, so a fixed
//! `--local` port can be shared with a hole-punching socket; `--hold SECS` keeps the connection
//! (and so the mapping) open that long after the answer.

use crate::outln;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::Duration;

use p2pd_proto::client_tcp::{
    TcpBinding, TcpBindingConfig, TcpBindingError, TcpBindingEvent, TcpMapping,
};

use serde::Serialize;

use super::super::report::{to_json, Num};
use super::{seed_from_os, CliError, StunArgs};
use p2pd_mio::Runtime;

/// How long to wait for the answer without `--single-shot-ms`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the TCP query and prints the answer; returns the exit code.
pub(super) fn run(args: &StunArgs, server: SocketAddr, local: SocketAddr) -> i32 {
    match query(args, server, local) {
        Ok(()) => 0,
        Err(e) => {
            super::report_error(args, &e);
            1
        }
    }
}

fn query(args: &StunArgs, server: SocketAddr, local: SocketAddr) -> Result<(), CliError> {
    if args.legacy || args.change != super::Change::None {
        return Err(CliError::new(
            "usage",
            "--tcp cannot send RFC 3489 or CHANGE-REQUEST queries (a stream is answered on itself)",
        ));
    }
    let mut config = TcpBindingConfig::new(server, local);
    config.timeout = args.single_shot_ms.unwrap_or(DEFAULT_TIMEOUT);
    if let Some(name) = &args.interface {
        config.options.device =
            Some(super::super::interface(name).map_err(|e| CliError::new("usage", e))?);
    }
    let hold = args.hold;
    config.keep_open = hold.is_some();
    let mut runtime = Runtime::new().map_err(|e| CliError::new("io", e.to_string()))?;
    let mut binding = TcpBinding::new(config, seed_from_os(), runtime.now());
    let mut result: Option<Result<TcpMapping, TcpBindingError>> = None;
    let run = runtime.run(&mut binding, None, |_, _, event| match event {
        TcpBindingEvent::Mapped(m) => {
            result = Some(Ok(m));
            // Print at once: with --hold the caller reads the mapping while it is held.
            ControlFlow::Break(())
        }
        TcpBindingEvent::Failed { reason } => {
            result = Some(Err(reason));
            ControlFlow::Continue(())
        }
        TcpBindingEvent::Closed { .. } => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    if let Err(e) = run {
        return Err(CliError::new("io", e.to_string()));
    }
    let mapping = match result {
        Some(Ok(m)) => m,
        Some(Err(reason)) => return Err(failure(server, reason)),
        None => return Err(CliError::new("io", "the event loop ended without a result")),
    };
    print_success(args, server, &mapping);
    if let Some(hold) = hold {
        // Hold the mapping: keep the loop (and the connection) running, then close.
        let _ = runtime.run(&mut binding, Some(hold), |_, _, event| match event {
            TcpBindingEvent::Closed { .. } => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        });
        binding.close(runtime.now());
        let _ = runtime.run(&mut binding, Some(Duration::from_secs(1)), |_, _, _| {
            ControlFlow::Continue(())
        });
    }
    Ok(())
}

fn failure(server: SocketAddr, reason: TcpBindingError) -> CliError {
    match reason {
        TcpBindingError::Timeout => {
            CliError::new("timeout", format!("no answer from {server} over TCP"))
        }
        TcpBindingError::BindFailed(e) => CliError::new("socket", format!("cannot bind: {e}")),
        TcpBindingError::ConnectFailed(e) => {
            CliError::new("connect", format!("cannot connect to {server}: {e}"))
        }
        TcpBindingError::ErrorResponse { code } => {
            CliError::new("error-response", format!("{server} answered error {code}"))
        }
        TcpBindingError::PeerClosed => CliError::new(
            "server-misbehaved",
            format!("{server} closed the connection without answering"),
        ),
        other => CliError::new("server-misbehaved", format!("{server}: {other}")),
    }
}

/// `p2pd stun --tcp --json`: the TCP mapping.
#[derive(Debug, Serialize)]
struct TcpAnswer<'a> {
    server: SocketAddr,
    transport: &'static str,
    local: SocketAddr,
    mapped: SocketAddr,
    response_origin: Option<SocketAddr>,
    software: Option<&'a str>,
    rtt_ms: Num,
}

fn print_success(args: &StunArgs, server: SocketAddr, m: &TcpMapping) {
    let rtt_ms = m.rtt.as_secs_f64() * 1000.0;
    if args.json {
        outln!(
            "{}",
            to_json(&TcpAnswer {
                server,
                transport: "tcp",
                local: m.local,
                mapped: m.mapped,
                response_origin: m.response_origin,
                software: m.server_software.as_deref(),
                rtt_ms: Num((rtt_ms * 1000.0).round() / 1000.0),
            }),
        );
        return;
    }
    let none = || "-".to_string();
    outln!("server           {server} (tcp)");
    outln!("local            {}", m.local);
    outln!("mapped address   {}", m.mapped);
    outln!(
        "response origin  {}",
        m.response_origin.map_or_else(none, |a| a.to_string())
    );
    outln!(
        "software         {}",
        m.server_software.clone().unwrap_or_else(none)
    );
    outln!("rtt              {rtt_ms:.3} ms");
}

//! `p2pd ntp SERVER...`: measures how far this host's clock is from one or more NTP servers (the
//! SNTP machine of `p2pd-punch`), printing the offset with its uncertainty.

use crate::errln;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use p2pd_punch::sntp::{
    ClockEstimate, SntpClient, SntpConfig, SntpEvent, SntpFailure, MAX_SAMPLES_PER_SERVER,
};

use serde::Serialize;

use super::numbers;
use super::report::{Num, Reporter};
use crate::identity_file::os_seed;
use p2pd_mio::Runtime;

/// The NTP port.
pub const NTP_PORT: u16 = 123;

/// Options of `p2pd ntp`.
#[derive(Debug, Args)]
pub struct NtpArgs {
    /// NTP servers: HOST[:PORT] (default port 123), all of one address family.
    #[arg(required = true)]
    pub servers: Vec<String>,
    /// Samples per server (1 to 16).
    #[arg(long, default_value_t = 4,
          value_parser = numbers::count::<u32>(1, u64::from(MAX_SAMPLES_PER_SERVER)))]
    pub samples: u32,
    /// Milliseconds between samples of one server (0 to 3600000; public servers kiss faster
    /// clients `RATE`).
    #[arg(long, value_name = "MS", default_value = "2000", value_parser = numbers::millis)]
    pub spacing_ms: Duration,
    /// Milliseconds to wait for each reply (1 to 3600000).
    #[arg(long, value_name = "MS", default_value = "1000", value_parser = numbers::millis_nonzero)]
    pub timeout_ms: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `p2pd ntp`; returns the process exit code.
pub fn run(args: &NtpArgs) -> i32 {
    match measure(args) {
        Ok(est) => {
            print_estimate(args, &est);
            0
        }
        Err((kind, message)) => {
            Reporter { json: args.json }.note(
                format_args!("p2pd ntp: {message}"),
                &NtpError {
                    error: &message,
                    kind,
                },
            );
            1
        }
    }
}

fn measure(args: &NtpArgs) -> Result<ClockEstimate, (&'static str, String)> {
    let servers = args
        .servers
        .iter()
        .map(|s| super::resolve(s, NTP_PORT))
        .collect::<Result<Vec<SocketAddr>, String>>()
        .map_err(|e| ("resolve", e))?;
    let mut runtime = Runtime::new().map_err(|e| ("io", e.to_string()))?;
    // The local wall clock is the system clock, read against the runtime's epoch in nanoseconds.
    let since_zero = runtime.now().as_nanos();
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| ("clock", e.to_string()))?
        .as_nanos();
    let epoch = u64::try_from(unix_now)
        .map_err(|e| ("clock", e.to_string()))?
        .saturating_sub(since_zero);
    let config = SntpConfig {
        samples_per_server: args.samples,
        sample_spacing: args.spacing_ms,
        reply_timeout: args.timeout_ms,
        local_error: Duration::from_micros(100),
        ..SntpConfig::new(servers.clone(), epoch)
    };
    let seed = os_seed().map_err(|e| ("io", e.to_string()))?;
    let mut client = SntpClient::new(config, seed).map_err(|e| ("usage", e.to_string()))?;
    let any = match servers.first() {
        Some(s) if s.is_ipv6() => SocketAddr::from(([0u16; 8], 0)),
        _ => SocketAddr::from(([0, 0, 0, 0], 0)),
    };
    client
        .open_socket(runtime.now(), any, Default::default())
        .map_err(|e| ("usage", format!("{e} (mixing IPv4 and IPv6 servers?)")))?;
    let progress = !args.json && std::io::stderr().is_terminal();
    let mut result = None;
    runtime
        .run(&mut client, None, |client, now, event| match event {
            SntpEvent::Sample(s) => {
                if progress {
                    errln!(
                        "sample from {}: offset {:+.3} ms, delay {:.3} ms",
                        s.server,
                        millis(s.offset_ns),
                        millis_u(s.delay_ns)
                    );
                }
                ControlFlow::Continue(())
            }
            SntpEvent::Finished(r) => {
                result = Some(r);
                client.close(now);
                ControlFlow::Continue(())
            }
            SntpEvent::Closed => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        })
        .map_err(|e| ("io", e.to_string()))?;
    match result {
        Some(Ok(est)) => Ok(est),
        Some(Err(f)) => Err((failure_kind(&f), f.to_string())),
        None => Err(("io", "the event loop ended without a result".to_string())),
    }
}

fn failure_kind(f: &SntpFailure) -> &'static str {
    match f {
        SntpFailure::Timeout { .. } => "timeout",
        SntpFailure::AllServersRefused { .. } => "refused",
        SntpFailure::Unsynchronized => "unsynchronized",
        SntpFailure::BadReplies { .. } => "bad-replies",
        SntpFailure::SocketFailed(_) => "socket",
        _ => "other",
    }
}

fn millis(ns: i64) -> f64 {
    ns as f64 / 1e6
}

fn millis_u(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// `p2pd ntp --json`: the estimate.
#[derive(Debug, Serialize)]
struct NtpEstimate {
    server: SocketAddr,
    offset_ms: Num,
    uncertainty_ms: Num,
    delay_ms: Num,
    stratum: u64,
    samples: u64,
}

/// `p2pd ntp --json` when it fails.
#[derive(Debug, Serialize)]
struct NtpError<'a> {
    error: &'a str,
    kind: &'static str,
}

fn print_estimate(args: &NtpArgs, est: &ClockEstimate) {
    let direction = if est.offset_ns >= 0 {
        "behind"
    } else {
        "ahead of"
    };
    Reporter { json: args.json }.line(
        format_args!(
            "offset {:+.3} ms ± {:.3} ms (this clock is {direction} {}), delay {:.3} ms, stratum {}, {} sample(s)",
            millis(est.offset_ns),
            millis_u(est.uncertainty_ns),
            est.server,
            millis_u(est.delay_ns),
            est.stratum,
            est.samples
        ),
        &NtpEstimate {
            server: est.server,
            offset_ms: Num(millis(est.offset_ns)),
            uncertainty_ms: Num(millis_u(est.uncertainty_ns)),
            delay_ms: Num(millis_u(est.delay_ns)),
            stratum: u64::from(est.stratum),
            samples: u64::from(est.samples),
        },
    );
}

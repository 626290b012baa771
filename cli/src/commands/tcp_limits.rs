//! The TCP connection limits every TCP server sub-command takes (`p2pd stun-server --tcp`,
//! `p2pd pnp-server`): how many connections, how many per source, how long a message and a
//! silence may last. They keep slow or idle clients from one source from locking others out
//! (see `p2pd_proto::accept`).

use std::time::Duration;

use clap::Args;
use p2pd_proto::accept::ConnectionLimits;

/// The most a server may be told to hold; both servers accept this many.
const MOST_CONNECTIONS: u64 = 4096;

/// The longest timeout accepted (a day): longer is a typo, not a policy.
const MAX_TIMEOUT_SECS: f64 = 86_400.0;

/// `--tcp-max-connections`, `--tcp-max-per-source`, `--tcp-message-timeout`,
/// `--tcp-idle-timeout`.
#[derive(Debug, Clone, Args)]
pub struct TcpLimitArgs {
    /// Most TCP connections held at once (1 to 4096); when all are open, a newcomer replaces the
    /// one that has done least (fewest messages, longest without one, from the source holding
    /// most).
    #[arg(
        long = "tcp-max-connections",
        alias = "max-connections",
        value_name = "N",
        default_value_t = ConnectionLimits::DEFAULT.max_connections as u64,
        value_parser = clap::value_parser!(u64).range(1..=MOST_CONNECTIONS)
    )]
    pub max_connections: u64,
    /// Most TCP connections from one source, an IPv4 address or an IPv6 /64 (1 to 4096); a
    /// newcomer from a source at its cap replaces that source's least active connection.
    #[arg(
        long = "tcp-max-per-source",
        value_name = "N",
        default_value_t = ConnectionLimits::DEFAULT.max_per_source as u64,
        value_parser = clap::value_parser!(u64).range(1..=MOST_CONNECTIONS)
    )]
    pub max_per_source: u64,
    /// Seconds a message may take from its first byte to its last before its connection is
    /// closed, however many bytes keep trickling in (above 0 to 86400).
    #[arg(
        long = "tcp-message-timeout",
        value_name = "SECONDS",
        default_value_t = ConnectionLimits::DEFAULT.message_timeout.as_secs_f64(),
        value_parser = parse_timeout
    )]
    pub message_timeout: f64,
    /// Seconds a TCP connection may stay silent before it is closed (above 0 to 86400)
    /// [default: 120 for stun-server, 10 for pnp-server].
    #[arg(long = "tcp-idle-timeout", value_name = "SECONDS", value_parser = parse_timeout)]
    pub idle_timeout: Option<f64>,
}

impl TcpLimitArgs {
    /// The limits, starting from a server's own `defaults` (for the idle timeout).
    pub fn limits(&self, defaults: ConnectionLimits) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            max_per_source: usize::try_from(self.max_per_source).unwrap_or(usize::MAX),
            message_timeout: Duration::from_secs_f64(self.message_timeout),
            idle_timeout: self
                .idle_timeout
                .map_or(defaults.idle_timeout, Duration::from_secs_f64),
        }
    }
}

/// A timeout in seconds: a finite number above 0 and at most a day.
fn parse_timeout(text: &str) -> Result<f64, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("not a number of seconds: {}", super::quoted(text)))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= MAX_TIMEOUT_SECS) {
        return Err(format!(
            "must be above 0 and at most {MAX_TIMEOUT_SECS} seconds"
        ));
    }
    if Duration::from_secs_f64(secs).is_zero() {
        return Err("rounds to 0 (shorter than a nanosecond)".to_string());
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_within_bounds() {
        assert_eq!(parse_timeout("2.5"), Ok(2.5));
        for bad in ["0", "-1", "nan", "inf", "86401", "x", "1e-12"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }
}

//! What a TCP server lets its clients hold: [`ConnectionLimits`], and the [`SourcePrefix`] that
//! groups connections by where they come from.

use core::net::IpAddr;
use core::time::Duration;

/// Where a connection comes from, for the per-source cap: an IPv4 address, or the /64 prefix of
/// an IPv6 address (one subscriber's network: a host can pick any address inside it). An
/// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) counts as its IPv4 address.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourcePrefix {
    /// An IPv4 address.
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6([u8; 8]),
}

impl SourcePrefix {
    /// The source an address belongs to.
    pub fn of(ip: IpAddr) -> SourcePrefix {
        match ip.to_canonical() {
            IpAddr::V4(v4) => SourcePrefix::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let mut prefix = [0u8; 8];
                for (dst, src) in prefix.iter_mut().zip(v6.octets()) {
                    *dst = src;
                }
                SourcePrefix::V6(prefix)
            }
        }
    }
}

/// A TCP server's limits on its clients' connections (the fields of
/// [`PoolConfig`](super::PoolConfig) a server exposes in its own configuration).
///
/// Together they keep one source from locking others out: a source holds at most
/// `max_per_source` connections, a message must arrive whole within `message_timeout` of its
/// first byte (a client dripping a byte at a time cannot hold a slot by keeping it "busy"), and
/// when all `max_connections` are open a newcomer takes the place of the connection that has done
/// least instead of waiting in the kernel's backlog. Defaults: [`ConnectionLimits::DEFAULT`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once (default 64; 0: no connections, no listener slots at all).
    /// When all are open, a newcomer evicts the open connection that has done least: from the
    /// source holding most connections, the one with fewest completed messages, then the one
    /// whose last completed message (or accept) is oldest.
    pub max_connections: usize,
    /// Most connections open at once from one [`SourcePrefix`] (default 8; 0 counts as 1). A
    /// newcomer from a source at its cap replaces that source's own least active connection:
    /// the source keeps its newest connections and nobody else loses one.
    pub max_per_source: usize,
    /// How long a message may take from its first byte to its last (default 10 s). A connection
    /// whose message is not complete by then is closed, however many bytes keep arriving.
    pub message_timeout: Duration,
    /// A connection that sends nothing for this long is closed (default 120 s).
    pub idle_timeout: Duration,
}

impl ConnectionLimits {
    /// 64 connections, 8 per source, 10 s per message, 120 s of silence.
    pub const DEFAULT: ConnectionLimits = ConnectionLimits {
        max_connections: 64,
        max_per_source: 8,
        message_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(120),
    };

    /// Whether the limits are usable for a server that holds at most `most` connections: 1 to
    /// `most` connections, at least 1 per source, non-zero timeouts.
    pub fn check(&self, most: usize) -> Result<(), LimitsError> {
        if self.max_connections == 0 || self.max_connections > most {
            return Err(LimitsError::Connections);
        }
        if self.max_per_source == 0 {
            return Err(LimitsError::PerSource);
        }
        if self.message_timeout.is_zero() || self.idle_timeout.is_zero() {
            return Err(LimitsError::ZeroTimeout);
        }
        Ok(())
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits::DEFAULT
    }
}

/// Why [`ConnectionLimits::check`] refused a configuration.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum LimitsError {
    /// `max_connections` is 0 or above the server's most.
    Connections,
    /// `max_per_source` is 0.
    PerSource,
    /// `message_timeout` or `idle_timeout` is 0.
    ZeroTimeout,
}

impl core::fmt::Display for LimitsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            LimitsError::Connections => "tcp connection limit out of range",
            LimitsError::PerSource => "tcp connections per source must be at least 1",
            LimitsError::ZeroTimeout => "tcp message and idle timeouts must be non-zero",
        })
    }
}

impl std::error::Error for LimitsError {}

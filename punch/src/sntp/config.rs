//! The SNTP client's settings, bounds and API errors.

use core::net::SocketAddr;
use core::time::Duration;

/// Most servers one machine queries.
pub const MAX_SERVERS: usize = 16;
/// Most samples asked of one server.
pub const MAX_SAMPLES_PER_SERVER: u32 = 16;
/// Most attempts for one sample.
pub const MAX_ATTEMPTS_PER_SAMPLE: u32 = 8;

/// SNTP client settings. [`SntpConfig::new`] fills in the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SntpConfig {
    /// The servers to ask (1..=[`MAX_SERVERS`]), all of the socket's address family.
    pub servers: Vec<SocketAddr>,
    /// Unix time in nanoseconds at [`p2pd_proto::Instant::ZERO`]: the local wall clock is this plus `now`.
    pub unix_epoch_ns: u64,
    /// Samples per server (1..=[`MAX_SAMPLES_PER_SERVER`]; default 4).
    pub samples_per_server: u32,
    /// Time from the end of one sample (reply or give-up) to the next query of the same server
    /// (default 2 s, the spacing of ntpd's and chrony's initial burst; public servers answer
    /// faster queries with a `RATE` kiss).
    pub sample_spacing: Duration,
    /// How long to wait for a reply before trying again (default 1 s).
    pub reply_timeout: Duration,
    /// Transmissions per sample before it counts as lost (1..=[`MAX_ATTEMPTS_PER_SAMPLE`];
    /// default 2).
    pub attempts_per_sample: u32,
    /// Replies whose server is farther than this from its reference (root delay/2 + root
    /// dispersion) are rejected (default 1.5 s, NTP's `MAXDIST`).
    pub max_root_distance: Duration,
    /// Added to every uncertainty: how far the caller's reading of `now` and its epoch may be from
    /// the clock it describes (default 2 ms, enough for an epoch taken in whole milliseconds).
    pub local_error: Duration,
}

impl SntpConfig {
    /// The defaults for `servers`, with the local wall clock at `unix_epoch_ns + now`.
    pub fn new(servers: Vec<SocketAddr>, unix_epoch_ns: u64) -> SntpConfig {
        SntpConfig {
            servers,
            unix_epoch_ns,
            samples_per_server: 4,
            sample_spacing: Duration::from_secs(2),
            reply_timeout: Duration::from_secs(1),
            attempts_per_sample: 2,
            max_root_distance: Duration::from_millis(1500),
            local_error: Duration::from_millis(2),
        }
    }
}

/// A configuration the machine refuses.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SntpConfigError {
    /// No servers, or more than [`MAX_SERVERS`].
    ServerCount,
    /// `samples_per_server` outside 1..=[`MAX_SAMPLES_PER_SERVER`].
    SampleCount,
    /// `attempts_per_sample` outside 1..=[`MAX_ATTEMPTS_PER_SAMPLE`].
    AttemptCount,
    /// A zero `reply_timeout`.
    ZeroTimeout,
}

impl core::fmt::Display for SntpConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SntpConfigError::ServerCount => write!(f, "sntp needs 1..={MAX_SERVERS} servers"),
            SntpConfigError::SampleCount => {
                write!(f, "samples per server must be 1..={MAX_SAMPLES_PER_SERVER}")
            }
            SntpConfigError::AttemptCount => {
                write!(
                    f,
                    "attempts per sample must be 1..={MAX_ATTEMPTS_PER_SAMPLE}"
                )
            }
            SntpConfigError::ZeroTimeout => f.write_str("reply timeout is 0"),
        }
    }
}

impl std::error::Error for SntpConfigError {}

/// Misuse of the machine's API.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SntpApiError {
    /// The machine already has its socket.
    SocketAlreadySet,
    /// A server's address family differs from the socket's.
    AddressFamilyMismatch,
    /// The machine is closed.
    Closed,
}

impl core::fmt::Display for SntpApiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SntpApiError::SocketAlreadySet => f.write_str("the sntp client already has its socket"),
            SntpApiError::AddressFamilyMismatch => {
                f.write_str("server and socket address families differ")
            }
            SntpApiError::Closed => f.write_str("sntp client closed"),
        }
    }
}

impl std::error::Error for SntpApiError {}

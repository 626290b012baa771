//! What the SNTP client reports: samples, the estimate, typed failures, events and counters.

use core::net::SocketAddr;

use p2pd_proto::{Instant, IoError, SocketId};

use super::packet::{KissCode, RejectReason};
use crate::clock::ReferenceOffset;

/// One accepted reply.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SntpSample {
    /// The server.
    pub server: SocketAddr,
    /// θ: server clock − local wall clock, in nanoseconds.
    pub offset_ns: i64,
    /// δ: the round trip minus the server's processing time, in nanoseconds.
    pub delay_ns: u64,
    /// The server's root delay, in nanoseconds.
    pub root_delay_ns: u64,
    /// The server's root dispersion, in nanoseconds.
    pub root_dispersion_ns: u64,
    /// The server's stratum (1..=15).
    pub stratum: u8,
    /// The bound on |true offset − `offset_ns`| (see the module docs).
    pub uncertainty_ns: u64,
    /// When the reply arrived (T4, machine time).
    pub received_at: Instant,
}

/// The machine's answer: how far the local wall clock is from true time.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ClockEstimate {
    /// Server clock − local wall clock, in nanoseconds: `true time ≈ local + offset_ns`.
    pub offset_ns: i64,
    /// |true offset − `offset_ns`| ≤ this, if the server's root delay and dispersion are honest.
    pub uncertainty_ns: u64,
    /// The server whose sample was chosen.
    pub server: SocketAddr,
    /// That sample's round trip δ, in nanoseconds.
    pub delay_ns: u64,
    /// That server's stratum.
    pub stratum: u8,
    /// How many samples were accepted, from every server.
    pub samples: u32,
    /// When the chosen sample's reply arrived (machine time).
    pub measured_at: Instant,
}

impl ClockEstimate {
    /// The estimate as a [`ReferenceOffset`] (what a peer needs over signaling).
    pub fn reference_offset(&self) -> ReferenceOffset {
        ReferenceOffset {
            offset_ns: self.offset_ns,
            uncertainty_ns: self.uncertainty_ns,
        }
    }
}

/// Why the machine has no estimate.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SntpFailure {
    /// No server answered anything acceptable.
    Timeout {
        /// Queries sent, retries included.
        queries: u32,
    },
    /// Every server sent a kiss-o'-death; their codes, one per server.
    AllServersRefused {
        /// The kiss codes.
        kiss_codes: Vec<KissCode>,
    },
    /// No sample, and at least one server said its clock is unsynchronised.
    Unsynchronized,
    /// No sample, and replies were rejected; the last reason.
    BadReplies {
        /// The last rejection.
        last: RejectReason,
    },
    /// The socket could not be bound.
    SocketFailed(IoError),
    /// The machine was closed first.
    Closed,
}

impl core::fmt::Display for SntpFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SntpFailure::Timeout { queries } => write!(f, "no reply to {queries} queries"),
            SntpFailure::AllServersRefused { kiss_codes } => {
                f.write_str("every server refused:")?;
                for code in kiss_codes {
                    write!(f, " {code}")?;
                }
                Ok(())
            }
            SntpFailure::Unsynchronized => f.write_str("server clock unsynchronised"),
            SntpFailure::BadReplies { last } => write!(f, "bad replies ({last})"),
            SntpFailure::SocketFailed(e) => write!(f, "socket failed: {e}"),
            SntpFailure::Closed => f.write_str("closed"),
        }
    }
}

impl std::error::Error for SntpFailure {}

/// What the machine reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SntpEvent {
    /// The socket is bound (only for a socket the machine opened).
    SocketReady {
        /// The socket.
        socket: SocketId,
        /// Its local address.
        local: SocketAddr,
    },
    /// A reply was accepted.
    Sample(SntpSample),
    /// The end of the measurement: exactly once.
    Finished(Result<ClockEstimate, SntpFailure>),
    /// The machine is closed; the last event.
    Closed,
}

/// Counters, for tests and diagnostics.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SntpStats {
    /// Queries sent (first attempts).
    pub queries: u32,
    /// Retransmissions.
    pub retries: u32,
    /// Samples accepted.
    pub samples: u32,
    /// Datagrams too short to be NTP.
    pub too_short: u64,
    /// Datagrams of the wrong mode or version.
    pub wrong_header: u64,
    /// Replies whose originate timestamp matched no remembered query.
    pub unknown_originate: u64,
    /// Replies from the wrong address, or on a socket that is not ours.
    pub wrong_source: u64,
    /// Second replies to one query.
    pub duplicates: u64,
    /// Kiss-o'-death replies.
    pub kisses: u64,
    /// Replies from unsynchronised servers.
    pub unsynchronized: u64,
    /// Replies rejected for bad timestamps or root distance.
    pub bad_times: u64,
    /// Sends the runtime reported as failed.
    pub send_failures: u64,
    /// Datagrams after the end or the close.
    pub late: u64,
}

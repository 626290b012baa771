//! The punch machine's public types: its configuration, events, failures and counters.

use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::time::Duration;

use p2pd_channel::ChannelConfig;
use p2pd_proto::{Instant, IoError, SocketId};

use crate::clock::ClockError;
use crate::message::AbortReason;
use p2pd_signaling::{NodeId, PublicKey};

/// How the punch machine runs. Build with [`PunchConfig::new`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PunchConfig {
    /// Our node id (decides the leader: the smaller id leads, and the initiator on glare). Set
    /// from the channel keys by [`Puncher::new`](super::Puncher::new).
    pub node_id: NodeId,
    /// Unix time in nanoseconds at [`Instant::ZERO`] (our wall clock).
    pub unix_epoch_ns: u64,
    /// The local address punch sockets bind to (port from the candidates).
    pub bind_ip: IpAddr,
    /// The longest lead, and the fallback: the responder's answer offers the meet time `t3 +
    /// lead` (its send time plus this); the initiator, once it has measured the signaling round
    /// trip, acknowledges an earlier one (see the [module docs](super)). Default 2 s.
    pub lead: Duration,
    /// The shortest lead the initiator picks from a measured round trip (time for both sides to
    /// bind their sockets before the meet). Default 150 ms.
    pub min_lead: Duration,
    /// The meet time must be at least this far ahead when a side arms. Default 100 ms.
    pub min_margin: Duration,
    /// Largest acceptable clock uncertainty between the peers. Default 200 ms.
    pub max_uncertainty: Duration,
    /// Added to every clock uncertainty (drift, scheduling). Default 2 ms.
    pub drift_allowance: Duration,
    /// Offers are re-sent this often until answered. Default 1 s.
    pub signal_retransmit: Duration,
    /// Offers sent per round before giving up. Default 5.
    pub signal_attempts: u32,
    /// Gap between the connects of successive pairs at the meet time. Default 5 ms.
    pub connect_spacing: Duration,
    /// After a refused or timed-out connect, retry on a fresh socket after this. Default 100 ms.
    pub retry_interval: Duration,
    /// How long after the meet time a round may take. Default 6 s.
    pub punch_window: Duration,
    /// Rounds (with fresh candidates) before the punch fails. Default 3.
    pub max_rounds: u8,
    /// A follower that answered a leader's handshake on a connection waits this long for its
    /// last message, past the punch window if need be. Default 10 s.
    pub chosen_timeout: Duration,
    /// The secure channel of every punched connection (both peers must agree on `max_frame`).
    /// Its `handshake_timeout` plays no part while punching: the round's deadline (and
    /// `chosen_timeout`) bound every connection's handshake. Default [`ChannelConfig::default`].
    pub channel: ChannelConfig,
    /// The first socket id; the machine cycles through `socket_base .. socket_base + socket_ids`.
    pub socket_base: SocketId,
    /// How many socket ids the machine cycles through. Default 4096.
    pub socket_ids: u32,
    /// Most sockets open at once. Default 64.
    pub max_sockets: usize,
    /// Answer offers from any peer while idle. Default `true`.
    pub accept_offers: bool,
}

impl PunchConfig {
    /// Defaults for node `node_id` whose wall clock read `unix_epoch_ns` at [`Instant::ZERO`].
    pub fn new(node_id: NodeId, unix_epoch_ns: u64) -> Self {
        PunchConfig {
            node_id,
            unix_epoch_ns,
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            lead: Duration::from_secs(2),
            min_lead: Duration::from_millis(150),
            min_margin: Duration::from_millis(100),
            max_uncertainty: Duration::from_millis(200),
            drift_allowance: Duration::from_millis(2),
            signal_retransmit: Duration::from_secs(1),
            signal_attempts: 5,
            connect_spacing: Duration::from_millis(5),
            retry_interval: Duration::from_millis(100),
            punch_window: Duration::from_secs(6),
            max_rounds: 3,
            chosen_timeout: Duration::from_secs(10),
            channel: ChannelConfig::default(),
            socket_base: SocketId(0),
            socket_ids: 4096,
            max_sockets: 64,
            accept_offers: true,
        }
    }
}

/// Why a round (or the whole punch) failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PunchFailure {
    /// No answer to the offer after every attempt.
    NoAnswer,
    /// The initiator's acknowledgement did not arrive before the meet time.
    NoAcknowledgement,
    /// The clock offset between the peers is too uncertain for a common meet time.
    TooUncertain {
        /// The estimated uncertainty.
        uncertainty: Duration,
        /// The configured limit.
        limit: Duration,
    },
    /// The meet time was already too close (or past) when it became known.
    TooLate,
    /// The peer aborted the round.
    PeerAborted(AbortReason),
    /// No connection came up (or none passed the handshake) within the punch window.
    NoConnection {
        /// Connects issued.
        connects: u32,
        /// Connects refused (RST).
        refused: u32,
        /// Connects that timed out or failed otherwise.
        failed: u32,
        /// Connections that came up (connected or accepted) but lost the election or failed the
        /// handshake.
        came_up: u32,
    },
    /// No punch socket could be bound.
    NoSockets(IoError),
    /// The responder waited for the next round's offer in vain.
    NoOffer,
    /// The four timestamps of the clock exchange contradict each other (the answer arrived before
    /// the offer left, say): no meet time can be trusted.
    BadClock(ClockError),
    /// The caller closed the machine.
    Closed,
}

/// The failure in words, with its numbers (for example `no connection within the punch window
/// (6 connects: 0 refused, 6 failed; 0 came up)`).
impl core::fmt::Display for PunchFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PunchFailure::NoAnswer => f.write_str("no answer to the offer"),
            PunchFailure::NoAcknowledgement => {
                f.write_str("no acknowledgement before the meet time")
            }
            PunchFailure::TooUncertain { uncertainty, limit } => write!(
                f,
                "the clock offset is too uncertain ({} ms, limit {} ms)",
                uncertainty.as_millis(),
                limit.as_millis()
            ),
            PunchFailure::TooLate => {
                f.write_str("the meet time was too close when it became known")
            }
            PunchFailure::PeerAborted(why) => write!(f, "the peer aborted: {why}"),
            PunchFailure::NoConnection {
                connects,
                refused,
                failed,
                came_up,
            } => write!(
                f,
                "no connection within the punch window ({connects} connects: {refused} refused, \
                 {failed} failed; {came_up} came up)"
            ),
            PunchFailure::NoSockets(e) => write!(f, "no punch socket could be bound: {e}"),
            PunchFailure::NoOffer => f.write_str("no offer for the next round"),
            PunchFailure::BadClock(e) => write!(f, "the clock exchange is contradictory: {e}"),
            PunchFailure::Closed => f.write_str("closed"),
        }
    }
}

impl std::error::Error for PunchFailure {}

/// What the punch machine reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PunchEvent {
    /// Send this payload to `peer` over signaling (sealed; any number of copies is fine).
    Signal {
        /// The peer's node id.
        peer: NodeId,
        /// The punch message.
        payload: Vec<u8>,
    },
    /// The machine needs our candidates for `round`
    /// ([`Puncher::provide_candidates`](super::Puncher::provide_candidates)).
    NeedCandidates {
        /// The round.
        round: u8,
    },
    /// Both sides agreed: sockets are bound and the connects fire at `meet`.
    Armed {
        /// The round.
        round: u8,
        /// The meet time, our clock.
        meet: Instant,
        /// Clock uncertainty between the peers.
        uncertainty: Duration,
    },
    /// The punch succeeded: `socket` is a connected TCP stream to the peer, now the caller's
    /// (the machine will never use or close it), and its secure channel, established, proves the
    /// peer: take it with [`Puncher::take_channel`](super::Puncher::take_channel).
    Connected {
        /// The stream.
        socket: SocketId,
        /// Our end.
        local: SocketAddr,
        /// The peer's end.
        remote: SocketAddr,
        /// The identity the peer proved.
        peer: PublicKey,
        /// The round that succeeded.
        round: u8,
    },
    /// A round failed; another follows.
    RoundFailed {
        /// The round.
        round: u8,
        /// Why.
        reason: PunchFailure,
    },
    /// The punch failed for good.
    Failed {
        /// The last round's reason.
        reason: PunchFailure,
    },
    /// The machine released everything (after `close`, success or failure): the last event.
    Closed,
}

/// Counters.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct PunchStats {
    /// Signaling messages handled.
    pub signals_in: u64,
    /// Signaling messages emitted.
    pub signals_out: u64,
    /// Duplicate or stale signaling messages ignored.
    pub duplicates: u64,
    /// Signaling messages rejected (malformed, wrong peer, wrong session).
    pub rejected: u64,
    /// Sockets opened.
    pub sockets_opened: u64,
    /// Sockets closed.
    pub sockets_closed: u64,
    /// Connects issued.
    pub connects: u64,
    /// Inputs for unknown sockets.
    pub unknown_socket: u64,
    /// Connections closed because their secure-channel handshake failed (a stranger, the wrong
    /// identity, another session or round, tampered bytes).
    pub channel_failures: u64,
}

//! Peer clock offset over signaling, and agreement on a meet time with an explicit uncertainty.
//!
//! Pure functions and small types; no machine. All times are [`WallTime`]s: nanoseconds since the
//! Unix epoch **as read from one party's clock** (for a machine, `unix_epoch_ns + now`, see
//! [`WallTime::at`]). Two parties' readings of the same real instant differ by their offset.
//!
//! # Sign convention
//!
//! An offset is always "**other clock − this clock**": add it to a reading of this clock to get the
//! other's reading of the same instant.
//!
//! - [`PeerClock::offset_ns`] = peer clock − our clock: `peer_time = our_time + offset_ns`.
//! - [`ReferenceOffset::offset_ns`] = reference (an NTP server, true time) − our clock, as
//!   [`crate::sntp::ClockEstimate`] reports it.
//!
//! # Round trip over signaling (four timestamps)
//!
//! The initiator A sends a [`ClockProbe`] carrying `t1` (A's clock, at sending). The answerer B
//! replies with a [`ClockEcho`] carrying `t1` back, `t2` (B's clock, when the probe arrived) and `t3`
//! (B's clock, when the echo left). A reads `t4` (A's clock) when the echo arrives. Then
//!
//! ```text
//! offset θ = ((t2 − t1) + (t3 − t4)) / 2      B − A
//! delay  δ = (t4 − t1) − (t3 − t2)            round trip minus B's holding time, ≥ 0
//! ```
//!
//! If the probe took `a` and the echo `b` (real time) and B = A + θ₀, then t2 = t1 + a + θ₀ and
//! t4 = t3 + b − θ₀, so θ = θ₀ + (a − b)/2. Because |a − b| ≤ a + b = δ, the error is at most δ/2
//! whatever the asymmetry: [`PeerClock::uncertainty_ns`] = ⌈δ/2⌉ + a drift allowance (for clock
//! reading error and drift during the exchange). Swapping the roles (B probes A over the same
//! links) gives exactly −θ. Signaling paths through brokers are slow and asymmetric, so δ/2 may
//! be large; that is why the uncertainty is explicit.
//!
//! # Through a common reference (SNTP on both sides)
//!
//! If A measured `o_A` = ref − A ± `u_A` and B measured `o_B` = ref − B ± `u_B` (and sent it over
//! signaling), then B − A = `o_A − o_B` ± (`u_A + u_B`): see [`PeerClock::from_references`]. Take
//! whichever source is less uncertain: [`PeerClock::better`].
//!
//! # Meet time
//!
//! One party proposes a meet time `m` in its own clock. In the other's clock it is `m + θ` (if we
//! proposed, θ = peer − us) or `m − θ` (if the peer proposed). [`agree`] converts it and checks, in
//! this order: |θ| ≤ [`MeetPolicy::max_offset_ns`] ([`ClockError::ImplausibleOffset`]); the total
//! uncertainty
//!
//! ```text
//! U = u_clock + ⌈lead · drift_ppm / 10⁶⌉       lead = meet (our clock) − now
//! ```
//!
//! is at most [`MeetPolicy::max_uncertainty_ns`] ([`ClockError::TooUncertain`]); and the meet is at
//! least [`MeetPolicy::min_lead_ns`] ahead of our `now` ([`ClockError::TooLate`]). The two parties
//! then act within U of each other in real time. No arithmetic wraps: a result that does not fit is
//! [`ClockError::Overflow`].
//!
//! # A flow
//!
//! 1. A → B: [`ClockProbe`] (with A's punch offer).
//! 2. B → A: [`ClockEcho::answer`] (with B's [`ReferenceOffset`], if it has one).
//! 3. A: [`PeerClock::from_round_trip`], maybe [`PeerClock::from_references`], pick with
//!    [`PeerClock::better`]; [`propose`] a meet; send B the meet in A's clock and A's
//!    [`PeerClock`].
//! 4. B: [`agree`] with [`Proposer::Peer`] and the clock [`PeerClock::reversed`] (B's view).
//!    Either party that gets an error does not fire, and says why.

#[cfg(test)]
mod tests;

use core::fmt;

use p2pd_proto::Instant;

/// Nanoseconds since the Unix epoch, as read from one party's wall clock.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WallTime(pub u64);

impl WallTime {
    /// The wall time of machine instant `now`, for a caller whose [`Instant::ZERO`] is Unix time
    /// `unix_epoch_ns`; `None` past the year 2554.
    pub fn at(unix_epoch_ns: u64, now: Instant) -> Option<WallTime> {
        unix_epoch_ns.checked_add(now.as_nanos()).map(WallTime)
    }

    /// Nanoseconds since the Unix epoch.
    pub fn unix_nanos(self) -> u64 {
        self.0
    }

    /// The machine instant of this wall time, for a caller whose [`Instant::ZERO`] is Unix time
    /// `unix_epoch_ns`; `None` if it is before the epoch.
    pub fn to_instant(self, unix_epoch_ns: u64) -> Option<Instant> {
        self.0.checked_sub(unix_epoch_ns).map(Instant::from_nanos)
    }

    /// This time shifted by `offset_ns` (for example into the peer's clock).
    pub fn shifted(self, offset_ns: i64) -> Option<WallTime> {
        self.0.checked_add_signed(offset_ns).map(WallTime)
    }
}

/// An offset to a shared reference clock (an NTP server): reference − our clock.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReferenceOffset {
    /// Reference − our clock, in nanoseconds.
    pub offset_ns: i64,
    /// |true offset − `offset_ns`| ≤ this.
    pub uncertainty_ns: u64,
}

/// Where a [`PeerClock`] came from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum OffsetSource {
    /// A four-timestamp exchange over signaling.
    RoundTrip,
    /// Both parties' offsets to a common reference (SNTP).
    Reference,
}

/// How far the peer's clock is from ours.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerClock {
    /// Peer clock − our clock, in nanoseconds: `peer_time = our_time + offset_ns`.
    pub offset_ns: i64,
    /// |true offset − `offset_ns`| ≤ this, if the path and allowance assumptions hold.
    pub uncertainty_ns: u64,
    /// How it was measured.
    pub source: OffsetSource,
}

/// Why clocks could not be compared or a meet time agreed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClockError {
    /// The total uncertainty exceeds the limit: the parties could miss each other.
    TooUncertain {
        /// The total uncertainty, in nanoseconds.
        uncertainty_ns: u64,
        /// The limit.
        limit_ns: u64,
    },
    /// The meet time (our clock) is past, or closer to `now` than the minimum lead.
    TooLate {
        /// Our clock now.
        now: WallTime,
        /// The meet time in our clock.
        meet: WallTime,
    },
    /// The offset is beyond the sanity bound: a broken clock or a broken peer.
    ImplausibleOffset {
        /// The offset, in nanoseconds.
        offset_ns: i64,
        /// The bound.
        limit_ns: u64,
    },
    /// The four timestamps cannot come from one exchange (t4 < t1, t3 < t2, or a negative round
    /// trip).
    InconsistentTimestamps,
    /// The echo carries a `t1` other than the probe's: not the answer to our probe.
    EchoMismatch,
    /// A value does not fit its type.
    Overflow,
}

impl fmt::Display for ClockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClockError::TooUncertain {
                uncertainty_ns,
                limit_ns,
            } => write!(
                f,
                "clock offset uncertainty {uncertainty_ns} ns exceeds {limit_ns} ns"
            ),
            ClockError::TooLate { now, meet } => write!(
                f,
                "meet time {} ns is too close to now ({} ns)",
                meet.0, now.0
            ),
            ClockError::ImplausibleOffset {
                offset_ns,
                limit_ns,
            } => write!(f, "clock offset {offset_ns} ns beyond ±{limit_ns} ns"),
            ClockError::InconsistentTimestamps => f.write_str("inconsistent timestamps"),
            ClockError::EchoMismatch => f.write_str("echo does not answer our probe"),
            ClockError::Overflow => f.write_str("arithmetic overflow"),
        }
    }
}

impl std::error::Error for ClockError {}

/// θ and δ of one four-timestamp exchange (any clocks, nanoseconds): θ = ((t2 − t1) + (t3 − t4)) / 2
/// (rounded toward zero) is the answerer's clock minus the initiator's; δ = (t4 − t1) − (t3 − t2).
pub fn offset_and_delay(t1: i128, t2: i128, t3: i128, t4: i128) -> Result<(i64, u64), ClockError> {
    if t4 < t1 || t3 < t2 {
        return Err(ClockError::InconsistentTimestamps);
    }
    let outbound = t2.checked_sub(t1).ok_or(ClockError::Overflow)?;
    let inbound = t3.checked_sub(t4).ok_or(ClockError::Overflow)?;
    let round_trip = t4.checked_sub(t1).ok_or(ClockError::Overflow)?;
    let holding = t3.checked_sub(t2).ok_or(ClockError::Overflow)?;
    let delay = round_trip
        .checked_sub(holding)
        .ok_or(ClockError::Overflow)?;
    if delay < 0 {
        return Err(ClockError::InconsistentTimestamps);
    }
    let offset = outbound.checked_add(inbound).ok_or(ClockError::Overflow)? / 2;
    let offset = i64::try_from(offset).map_err(|_| ClockError::Overflow)?;
    let delay = u64::try_from(delay).map_err(|_| ClockError::Overflow)?;
    Ok((offset, delay))
}

/// The first message of the exchange: the initiator's clock when it sent it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClockProbe {
    /// t1: initiator's clock, at sending.
    pub t1: WallTime,
}

/// The answer: the probe's `t1` echoed, with the answerer's receive and send times.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClockEcho {
    /// t1, copied from the probe (initiator's clock).
    pub t1: WallTime,
    /// t2: answerer's clock, when the probe arrived.
    pub t2: WallTime,
    /// t3: answerer's clock, when the echo left.
    pub t3: WallTime,
}

impl ClockEcho {
    /// The answerer's echo of `probe`, received at `received` and sent at `sent` (its clock).
    pub fn answer(probe: ClockProbe, received: WallTime, sent: WallTime) -> ClockEcho {
        ClockEcho {
            t1: probe.t1,
            t2: received,
            t3: sent,
        }
    }
}

impl PeerClock {
    /// The initiator's view after a round trip: it sent `probe`, got `echo` back at `t4` (its
    /// clock). `allowance_ns` is added to the ⌈δ/2⌉ bound (clock reading error, drift during the
    /// exchange).
    pub fn from_round_trip(
        probe: ClockProbe,
        echo: ClockEcho,
        t4: WallTime,
        allowance_ns: u64,
    ) -> Result<PeerClock, ClockError> {
        if echo.t1 != probe.t1 {
            return Err(ClockError::EchoMismatch);
        }
        let (offset_ns, delay_ns) = offset_and_delay(
            i128::from(probe.t1.0),
            i128::from(echo.t2.0),
            i128::from(echo.t3.0),
            i128::from(t4.0),
        )?;
        Ok(PeerClock {
            offset_ns,
            uncertainty_ns: delay_ns.div_ceil(2).saturating_add(allowance_ns),
            source: OffsetSource::RoundTrip,
        })
    }

    /// Through a common reference: `ours` = reference − us, `theirs` = reference − peer, so
    /// peer − us = ours − theirs, and the uncertainties add.
    pub fn from_references(
        ours: ReferenceOffset,
        theirs: ReferenceOffset,
    ) -> Result<PeerClock, ClockError> {
        Ok(PeerClock {
            offset_ns: ours
                .offset_ns
                .checked_sub(theirs.offset_ns)
                .ok_or(ClockError::Overflow)?,
            uncertainty_ns: ours
                .uncertainty_ns
                .checked_add(theirs.uncertainty_ns)
                .ok_or(ClockError::Overflow)?,
            source: OffsetSource::Reference,
        })
    }

    /// The same measurement seen from the peer: the offset negated.
    pub fn reversed(self) -> Result<PeerClock, ClockError> {
        Ok(PeerClock {
            offset_ns: self.offset_ns.checked_neg().ok_or(ClockError::Overflow)?,
            ..self
        })
    }

    /// The less uncertain of the two (on a tie, `self`).
    pub fn better(self, other: PeerClock) -> PeerClock {
        if other.uncertainty_ns < self.uncertainty_ns {
            other
        } else {
            self
        }
    }
}

/// Who proposed a meet time (and so whose clock it is in).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Proposer {
    /// We did: the time is in our clock.
    Us,
    /// The peer did: the time is in the peer's clock.
    Peer,
}

/// The limits a meet time must respect.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct MeetPolicy {
    /// Most total uncertainty accepted (default 500 ms).
    pub max_uncertainty_ns: u64,
    /// Least time between now and the meet (default 500 ms): enough to bind sockets and for the
    /// peer to receive the proposal.
    pub min_lead_ns: u64,
    /// Largest plausible |offset| (default 1 h): beyond it a clock or a peer is broken.
    pub max_offset_ns: u64,
    /// Relative drift of the two clocks, in parts per million, charged over the lead time
    /// (default 100: two ±50 ppm oscillators).
    pub drift_ppm: u32,
}

impl Default for MeetPolicy {
    fn default() -> Self {
        MeetPolicy {
            max_uncertainty_ns: 500_000_000,
            min_lead_ns: 500_000_000,
            max_offset_ns: 3_600_000_000_000,
            drift_ppm: 100,
        }
    }
}

/// An agreed meet time, in both clocks.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct MeetTime {
    /// The meet time in our clock.
    pub local: WallTime,
    /// The same instant in the peer's clock.
    pub peer: WallTime,
    /// The two parties act within this many nanoseconds of each other (real time).
    pub uncertainty_ns: u64,
}

impl MeetTime {
    /// The meet as a machine instant, for a caller whose [`Instant::ZERO`] is Unix time
    /// `unix_epoch_ns`; `None` if it is before the epoch.
    pub fn local_instant(&self, unix_epoch_ns: u64) -> Option<Instant> {
        self.local.to_instant(unix_epoch_ns)
    }
}

/// Checks and converts a meet time proposed by `proposer` (in its clock), given the peer clock as
/// we see it and our clock `now`. See the module docs for the order of the checks.
pub fn agree(
    meet: WallTime,
    proposer: Proposer,
    clock: PeerClock,
    now: WallTime,
    policy: &MeetPolicy,
) -> Result<MeetTime, ClockError> {
    if clock.offset_ns.unsigned_abs() > policy.max_offset_ns {
        return Err(ClockError::ImplausibleOffset {
            offset_ns: clock.offset_ns,
            limit_ns: policy.max_offset_ns,
        });
    }
    let (local, peer) = match proposer {
        Proposer::Us => (Some(meet), meet.shifted(clock.offset_ns)),
        Proposer::Peer => (
            meet.shifted(clock.offset_ns.checked_neg().ok_or(ClockError::Overflow)?),
            Some(meet),
        ),
    };
    let (Some(local), Some(peer)) = (local, peer) else {
        return Err(ClockError::Overflow);
    };
    let lead_ns = local.0.saturating_sub(now.0);
    let drift_ns = u128::from(lead_ns)
        .saturating_mul(u128::from(policy.drift_ppm))
        .div_ceil(1_000_000);
    let uncertainty_ns = u64::try_from(drift_ns)
        .ok()
        .and_then(|d| d.checked_add(clock.uncertainty_ns))
        .ok_or(ClockError::Overflow)?;
    if uncertainty_ns > policy.max_uncertainty_ns {
        return Err(ClockError::TooUncertain {
            uncertainty_ns,
            limit_ns: policy.max_uncertainty_ns,
        });
    }
    if local.0 < now.0 || lead_ns < policy.min_lead_ns {
        return Err(ClockError::TooLate { now, meet: local });
    }
    Ok(MeetTime {
        local,
        peer,
        uncertainty_ns,
    })
}

/// Proposes a meet `lead_ns` after our `now` (our clock) and checks it as [`agree`] would.
pub fn propose(
    now: WallTime,
    lead_ns: u64,
    clock: PeerClock,
    policy: &MeetPolicy,
) -> Result<MeetTime, ClockError> {
    let meet = now.0.checked_add(lead_ns).ok_or(ClockError::Overflow)?;
    agree(WallTime(meet), Proposer::Us, clock, now, policy)
}

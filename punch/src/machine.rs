//! The TCP hole-punch machine: offer / answer / acknowledge over signaling, a meet time in both
//! clocks, sockets bound (reuse flags before bind) ahead of it, timed connects at it, a listener on
//! every punch port, the first-byte handshake that elects one connection, and clean-up.
//!
//! # Protocol
//!
//! 1. The **initiator** sends an OFFER (its candidates, its send time `t1`), re-sent until an
//!    answer comes.
//! 2. The **responder** asks its caller for candidates ([`PunchEvent::NeedCandidates`]; the caller
//!    learns its TCP mappings, e.g. with a TCP STUN binding, and calls
//!    [`Puncher::provide_candidates`]), then answers with its candidates, `t2`, `t3` and the
//!    latest meet time, `t3 + lead` in its own clock. A duplicate offer gets the very same answer
//!    again.
//! 3. The initiator estimates the responder's clock offset and the signaling round trip from the
//!    four timestamps ([`crate::clock`]); if the uncertainty is within the limit and the latest
//!    meet time is far enough ahead it picks the meet time (see *The lead* below), sends it in an
//!    ACK and arms; otherwise it sends an ABORT and the round fails with a typed reason. The
//!    responder arms on the ACK if its meet time is no later than the answer's and still
//!    `min_margin` ahead (else it aborts: [`PunchFailure::TooLate`]); with no ACK by the
//!    answer's meet time its round fails ([`PunchFailure::NoAcknowledgement`]).
//! 4. Armed, each side binds (SO_REUSEADDR + SO_REUSEPORT, set before bind) a listener on every
//!    own candidate port and one socket per (own port, peer endpoint) pair. At the meet time the
//!    pairs connect, spaced by `connect_spacing`; a refused or timed-out connect is retried on a
//!    fresh socket after `retry_interval` until the punch window closes.
//! 5. Every connection that comes up (connected or accepted) runs a secure channel handshake
//!    ([`p2pd_channel`]: Noise XX bound to both node identities, its context the session id and
//!    round). The side with the smaller node id leads and initiates on every connection,
//!    expecting the peer's identity; the follower responds, accepting only the leader's. The
//!    leader takes the first connection whose responder proves the peer, closing everything else
//!    (the handshake's last message, on that connection alone, is left in its channel for the
//!    caller to send); the follower takes the
//!    connection on which that last message proves the leader (while it has answered a leader's
//!    first message it waits up to `chosen_timeout` for the last one, even past the punch window,
//!    so loss cannot leave the leader connected alone). A stranger, another session or round, or
//!    tampered bytes fail the handshake and that connection is closed. The winner and its
//!    established channel are handed to the caller ([`PunchEvent::Connected`],
//!    [`Puncher::take_channel`]); the machine never touches them again. Every other socket is
//!    closed exactly once.
//! 6. A failed round is retried with fresh candidates (`max_rounds`); the last failure is final
//!    ([`PunchEvent::Failed`]).
//!
//! # The lead
//!
//! Nothing is measured when the responder answers, so its meet time `t3 + lead` (`lead`, 2 s by
//! default) is only the latest one, and the fallback. When the answer arrives the initiator knows
//! the signaling round trip `delay` (the time spent on the path, the responder's holding time
//! left out) and the clock uncertainty (`delay / 2` plus the drift allowance), and it meets at
//!
//! ```text
//! now + max(clamp((min_margin + 2 * delay + uncertainty) * 2^late_rounds, min_lead, lead), min_margin)
//! ```
//!
//! or at the answer's meet time if that is sooner. The ACK takes about `delay / 2` (at most
//! `delay` on a lopsided path) to arrive and the initiator's view of the responder's clock is off
//! by at most `uncertainty`, so the ACK still arrives `min_margin` before the meet time even when
//! the return path is as slow again as the measured round trip. `late_rounds` counts this
//! punch's rounds that failed for time (too late, no acknowledgement, or the peer aborting as
//! too late): each doubles the lead of the next round, up to `lead`.
//!
//! Duplicated signaling (brokers duplicate) is harmless: every message is matched to the session
//! and round, and handled once. If both sides initiate at once, the smaller node id stays
//! initiator and the other becomes the responder.

mod dial;
mod handshake;
mod owned;
#[cfg(test)]
mod tests;
mod types;

use core::net::SocketAddr;
use std::collections::VecDeque;

use p2pd_channel::{Channel, ChannelKeys, SeedSource};
use p2pd_proto::{DropReason, Instant, Rng, SocketId, SocketOp, SocketOutcome, Transmit, Verdict};

use crate::error::PunchApiError;
use crate::message::{
    AbortReason, Message, MessageError, PunchCandidate, SessionId, MAX_CANDIDATES,
};
use p2pd_signaling::NodeId;

use dial::{Punch, Sock};
pub use owned::Owned;
pub use types::{PunchConfig, PunchEvent, PunchFailure, PunchStats};

// Names machine/tests.rs takes from `super::*` that the machine itself no longer uses.
#[cfg(test)]
use core::time::Duration;
#[cfg(test)]
use p2pd_proto::{IoError, OpKind};

/// Who we are in the session.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Role {
    Initiator,
    Responder,
}

/// Where the session stands.
#[derive(Clone, Debug)]
enum Phase {
    /// No session.
    Idle,
    /// Initiator: waiting for the caller's candidates for a new round.
    InitiatorNeedsCandidates,
    /// Initiator: offer sent, waiting for the answer.
    Offering {
        candidates: Vec<PunchCandidate>,
        sent_t1: Vec<u64>,
        attempts: u32,
        next_resend: Instant,
    },
    /// Responder: waiting for the next round's offer.
    AwaitingOffer { deadline: Instant },
    /// Responder: waiting for the caller's candidates to answer `offer`.
    ResponderNeedsCandidates {
        t1: u64,
        t2: u64,
        peer: Vec<PunchCandidate>,
    },
    /// Responder: answered, waiting for the acknowledgement.
    AwaitingAck {
        answer: Vec<u8>,
        meet_ns: u64,
        ours: Vec<PunchCandidate>,
        peer: Vec<PunchCandidate>,
    },
    /// Both agreed; sockets are bound and fire at `meet`.
    Punching(Box<Punch>),
    /// Finished (success or failure); only close remains.
    Finished,
}

/// The punch machine (see the [module docs](self)).
#[derive(Debug)]
pub struct Puncher {
    config: PunchConfig,
    /// Our channel keys (the proof of our identity every handshake carries).
    keys: ChannelKeys,
    /// Seeds for each connection's channel.
    seeds: SeedSource,
    /// The winning connection's socket and channel, until the caller takes them.
    won: Option<(SocketId, Box<Channel>)>,
    rng: Rng,
    role: Role,
    peer: Option<NodeId>,
    session: SessionId,
    round: u8,
    /// Rounds of this punch that failed for time (too late, no acknowledgement): each doubles
    /// the initiator's measured lead.
    late_rounds: u32,
    phase: Phase,
    sockets: Vec<Sock>,
    next_socket: u32,
    ops: VecDeque<SocketOp>,
    transmits: VecDeque<(SocketId, SocketAddr, Vec<u8>)>,
    events: VecDeque<PunchEvent>,
    closing: bool,
    closed_reported: bool,
    deadline: Option<Instant>,
    stats: PunchStats,
}

impl Puncher {
    /// An idle machine (answers offers if `accept_offers`) for the node whose channel `keys`
    /// these are (the config's `node_id` is set from them). `seeds` keys every punched
    /// connection's channel (32 secret bytes from the OS in a runtime, from the simulation's seed
    /// in a simulator); `seed` draws session ids. `Err` when `config.channel` is out of range.
    pub fn new(
        mut config: PunchConfig,
        keys: ChannelKeys,
        seeds: SeedSource,
        seed: u64,
    ) -> Result<Self, PunchApiError> {
        config.node_id = keys.identity().node_id();
        // The channel checks its configuration when it is built; try it once here so that a bad
        // one is an error now, not a round that can never elect a connection.
        let probe = Channel::new(
            config.channel,
            &keys,
            p2pd_channel::Role::Responder { expect: None },
            b"",
            [0; 32],
            Instant::ZERO,
        );
        if probe.is_err() {
            return Err(PunchApiError::BadChannelConfig);
        }
        Ok(Puncher {
            config,
            keys,
            seeds,
            won: None,
            rng: Rng::from_seed(seed),
            role: Role::Responder,
            peer: None,
            session: SessionId([0; 16]),
            round: 0,
            late_rounds: 0,
            phase: Phase::Idle,
            sockets: Vec::new(),
            next_socket: 0,
            ops: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            closing: false,
            closed_reported: false,
            deadline: None,
            stats: PunchStats::default(),
        })
    }

    /// The winning connection's established secure channel, once, for the socket of
    /// [`PunchEvent::Connected`]. The leader's last handshake message is still in the channel
    /// ([`Channel::pending_transmit`]): the new owner writes it first (e.g.
    /// `p2pd_channel::stream::SecureStream::new` does). The follower's channel may hold data that
    /// came right behind the handshake ([`Channel::poll_event`], after its `Established`): drain
    /// it at once.
    pub fn take_channel(&mut self, socket: SocketId) -> Option<Channel> {
        match self.won.take() {
            Some((id, channel)) if id == socket => Some(*channel),
            other => {
                self.won = other;
                None
            }
        }
    }

    /// Starts a punch to `peer` with our first round's candidates. API misuse (already in a
    /// session, closed, bad candidates) is an `Err`.
    pub fn initiate(
        &mut self,
        now: Instant,
        peer: NodeId,
        candidates: Vec<PunchCandidate>,
    ) -> Result<SessionId, PunchApiError> {
        if self.closing {
            return Err(PunchApiError::Closed);
        }
        if !matches!(self.phase, Phase::Idle) {
            return Err(PunchApiError::InProgress);
        }
        if peer == self.config.node_id {
            return Err(PunchApiError::PunchToSelf);
        }
        check_candidates(&candidates)?;
        let mut session = [0u8; 16];
        self.rng.fill_bytes(&mut session);
        self.session = SessionId(session);
        self.role = Role::Initiator;
        self.peer = Some(peer);
        self.round = 0;
        self.late_rounds = 0;
        self.send_offer(now, candidates, Vec::new(), 0);
        self.refresh_deadline();
        Ok(self.session)
    }

    /// Our candidates for the round announced by [`PunchEvent::NeedCandidates`].
    pub fn provide_candidates(
        &mut self,
        now: Instant,
        round: u8,
        candidates: Vec<PunchCandidate>,
    ) -> Result<(), PunchApiError> {
        if self.closing {
            return Err(PunchApiError::Closed);
        }
        if round != self.round {
            return Err(PunchApiError::WrongRound {
                given: round,
                current: self.round,
            });
        }
        check_candidates(&candidates)?;
        match std::mem::replace(&mut self.phase, Phase::Finished) {
            Phase::InitiatorNeedsCandidates => {
                self.send_offer(now, candidates, Vec::new(), 0);
            }
            Phase::ResponderNeedsCandidates { t1, t2, peer } => {
                self.send_answer(now, t1, t2, candidates, peer);
            }
            other => {
                self.phase = other;
                return Err(PunchApiError::CandidatesNotAsked);
            }
        }
        self.refresh_deadline();
        Ok(())
    }

    /// A signaling payload from node `from`. Not a punch message: `NotMine`.
    pub fn handle_signal(&mut self, now: Instant, from: NodeId, payload: &[u8]) -> Verdict {
        let message = match Message::decode(payload) {
            Ok(m) => m,
            Err(MessageError::NotPunch) => return Verdict::NotMine,
            Err(_) => {
                self.stats.rejected = self.stats.rejected.saturating_add(1);
                return Verdict::Dropped(DropReason::Unexpected);
            }
        };
        if self.closing {
            return Verdict::Dropped(DropReason::Closed);
        }
        self.stats.signals_in = self.stats.signals_in.saturating_add(1);
        let verdict = self.on_message(now, from, message);
        self.refresh_deadline();
        verdict
    }

    /// Closes every socket the machine owns (once each), tells the peer if a round is running,
    /// and ends with [`PunchEvent::Closed`]. Idempotent.
    pub fn close(&mut self, now: Instant) {
        if self.closing {
            return;
        }
        let _ = now;
        self.closing = true;
        let in_session = !matches!(self.phase, Phase::Idle | Phase::Finished);
        if in_session {
            self.signal_abort(AbortReason::Cancelled);
            self.events.push_back(PunchEvent::Failed {
                reason: PunchFailure::Closed,
            });
        }
        self.close_all_sockets();
        self.phase = Phase::Finished;
        self.report_closed();
        self.refresh_deadline();
    }

    /// Whether the machine was closed.
    pub fn is_closed(&self) -> bool {
        self.closing
    }

    /// The current session, if any.
    pub fn session(&self) -> Option<SessionId> {
        (!matches!(self.phase, Phase::Idle)).then_some(self.session)
    }

    /// Sockets the machine owns now.
    pub fn open_sockets(&self) -> usize {
        self.sockets.len()
    }

    /// The counters.
    pub fn stats(&self) -> PunchStats {
        self.stats
    }

    // ----- rounds -----

    fn round_failed(&mut self, now: Instant, reason: PunchFailure) {
        self.close_all_sockets();
        if matches!(
            reason,
            PunchFailure::TooLate
                | PunchFailure::NoAcknowledgement
                | PunchFailure::PeerAborted(AbortReason::TooLate)
        ) {
            self.late_rounds = self.late_rounds.saturating_add(1);
        }
        let next = self.round.saturating_add(1);
        if next >= self.config.max_rounds || self.round == u8::MAX {
            self.finish_failed(reason);
            return;
        }
        self.events.push_back(PunchEvent::RoundFailed {
            round: self.round,
            reason,
        });
        self.round = next;
        match self.role {
            Role::Initiator => {
                self.phase = Phase::InitiatorNeedsCandidates;
                self.events
                    .push_back(PunchEvent::NeedCandidates { round: next });
            }
            Role::Responder => {
                let wait = self
                    .config
                    .signal_retransmit
                    .saturating_mul(self.config.signal_attempts.max(1))
                    .saturating_add(self.config.lead);
                self.phase = Phase::AwaitingOffer {
                    deadline: now.saturating_add(wait),
                };
            }
        }
    }

    fn finish_failed(&mut self, reason: PunchFailure) {
        self.close_all_sockets();
        self.phase = Phase::Finished;
        self.events.push_back(PunchEvent::Failed { reason });
    }

    // ----- time -----

    fn wall_ns(&self, now: Instant) -> u64 {
        self.config.unix_epoch_ns.saturating_add(now.as_nanos())
    }

    /// The [`Instant`] at which our wall clock reads `unix_ns`.
    fn instant_of(&self, unix_ns: u64) -> Instant {
        Instant::from_nanos(unix_ns.saturating_sub(self.config.unix_epoch_ns))
    }

    fn refresh_deadline(&mut self) {
        self.deadline = if self.closing {
            None
        } else {
            match &self.phase {
                Phase::Offering { next_resend, .. } => Some(*next_resend),
                Phase::AwaitingOffer { deadline } => Some(*deadline),
                Phase::AwaitingAck { meet_ns, .. } => Some(self.instant_of(*meet_ns)),
                Phase::Punching(p) => {
                    // A pair whose socket is still binding connects when the bind completes (see
                    // `on_outcome`), not on a timer: a due time there would make the caller spin.
                    let next = p
                        .pairs
                        .iter()
                        .filter(|x| !x.socket.is_some_and(|id| self.is_binding(id)))
                        .filter_map(|x| x.next)
                        .min();
                    Some(next.map_or(p.deadline, |n| n.min(p.deadline)))
                }
                Phase::Idle
                | Phase::InitiatorNeedsCandidates
                | Phase::ResponderNeedsCandidates { .. }
                | Phase::Finished => None,
            }
        };
    }
}

fn check_candidates(candidates: &[PunchCandidate]) -> Result<(), PunchApiError> {
    if candidates.is_empty() || candidates.len() > MAX_CANDIDATES {
        return Err(PunchApiError::CandidateCount {
            count: candidates.len(),
        });
    }
    if candidates
        .iter()
        .any(|c| c.local_port == 0 || c.external.port() == 0)
    {
        return Err(PunchApiError::CandidatePortZero);
    }
    Ok(())
}

impl p2pd_proto::Machine for Puncher {
    type Event = PunchEvent;

    /// Bytes on one of our streams: the handshake.
    fn handle_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        let Some(index) = self.sockets.iter().position(|s| s.id == socket) else {
            self.stats.unknown_socket = self.stats.unknown_socket.saturating_add(1);
            return Verdict::NotMine;
        };
        let verdict = self.on_stream_bytes(now, index, data);
        self.refresh_deadline();
        verdict
    }

    /// The outcome of one of our socket intents.
    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        let Some(index) = self.sockets.iter().position(|s| s.id == socket) else {
            self.stats.unknown_socket = self.stats.unknown_socket.saturating_add(1);
            return;
        };
        self.on_outcome(now, index, outcome);
        self.refresh_deadline();
    }

    /// Time passed.
    fn handle_timeout(&mut self, now: Instant) {
        if self.closing {
            return;
        }
        match &mut self.phase {
            Phase::Offering {
                candidates,
                sent_t1,
                attempts,
                next_resend,
            } if now >= *next_resend => {
                if *attempts >= self.config.signal_attempts {
                    self.round_failed(now, PunchFailure::NoAnswer);
                } else {
                    let (c, s, a) = (candidates.clone(), std::mem::take(sent_t1), *attempts);
                    self.send_offer(now, c, s, a);
                }
            }
            Phase::AwaitingOffer { deadline } if now >= *deadline => {
                self.finish_failed(PunchFailure::NoOffer);
            }
            Phase::AwaitingAck { meet_ns, .. } => {
                let meet_ns = *meet_ns;
                if now >= self.instant_of(meet_ns) {
                    self.round_failed(now, PunchFailure::NoAcknowledgement);
                }
            }
            Phase::Punching(_) => self.punch_timers(now),
            _ => {}
        }
        self.refresh_deadline();
    }

    /// The next bytes to write.
    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let (socket, destination, bytes) = self.transmits.pop_front()?;
        let n = bytes.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), bytes.get(..n)) {
            dst.copy_from_slice(src);
        }
        Some(Transmit {
            socket,
            destination,
            len: n,
        })
    }

    /// The next socket intent.
    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        self.ops.pop_front()
    }

    /// The next event.
    fn poll_event(&mut self) -> Option<PunchEvent> {
        self.events.pop_front()
    }

    /// The next deadline (cached).
    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
}

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
//!    [`Puncher::provide_candidates`]), then answers with its candidates, `t2`, `t3` and a meet
//!    time `t3 + lead` in its own clock. A duplicate offer gets the very same answer again.
//! 3. The initiator estimates the responder's clock offset from the four timestamps
//!    ([`crate::clock`]); if the uncertainty is within the limit and the meet time is far enough
//!    ahead it sends an ACK and arms; otherwise it sends an ABORT and the round fails with a typed
//!    reason. The responder arms on the ACK; with no ACK by the meet time its round fails
//!    ([`PunchFailure::NoAcknowledgement`]).
//! 4. Armed, each side binds (SO_REUSEADDR + SO_REUSEPORT, set before bind) a listener on every
//!    own candidate port and one socket per (own port, peer endpoint) pair. At the meet time the
//!    pairs connect, spaced by `connect_spacing`; a refused or timed-out connect is retried on a
//!    fresh socket after `retry_interval` until the punch window closes.
//! 5. Every connection that comes up (connected or accepted) carries the [`Hello`] both ways. The
//!    side with the smaller node id leads: it takes the first connection whose hello checks out,
//!    writes [`CHOSEN`] on it and closes everything else; the follower takes the connection on
//!    which it reads [`CHOSEN`] (while it holds a verified connection it waits up to
//!    `chosen_timeout` for the marker, even past the punch window, so loss cannot leave the leader
//!    connected alone). The winner is handed to the caller
//!    ([`PunchEvent::Connected`]); the machine never touches it again. Every other socket is closed
//!    exactly once.
//! 6. A failed round is retried with fresh candidates (`max_rounds`); the last failure is final
//!    ([`PunchEvent::Failed`]).
//!
//! Duplicated signaling (brokers duplicate) is harmless: every message is matched to the session
//! and round, and handled once. If both sides initiate at once, the smaller node id stays
//! initiator and the other becomes the responder.

use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::time::Duration;
use std::collections::VecDeque;

use p2pd_proto::{
    BindOptions, DropReason, Instant, IoError, OpKind, Rng, SocketId, SocketOp, SocketOutcome,
    Transmit, Transport, Verdict,
};

use crate::clock::{offset_and_delay, ClockError};
use crate::error::PunchApiError;
use crate::message::{
    AbortReason, Hello, Message, MessageError, PunchCandidate, SessionId, CHOSEN, HELLO_LEN,
    MAX_CANDIDATES,
};
use p2pd_signaling::NodeId;

/// How the punch machine runs. Build with [`PunchConfig::new`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PunchConfig {
    /// Our node id (decides the leader: the smaller id leads, and the initiator on glare).
    pub node_id: NodeId,
    /// Unix time in nanoseconds at [`Instant::ZERO`] (our wall clock).
    pub unix_epoch_ns: u64,
    /// The local address punch sockets bind to (port from the candidates).
    pub bind_ip: IpAddr,
    /// The responder's meet time is its answer's send time plus this. Default 2 s.
    pub lead: Duration,
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
    /// A follower holding a connection whose hello checked out waits this long for the leader's
    /// marker, past the punch window if need be. Default 10 s.
    pub chosen_timeout: Duration,
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
    /// The machine needs our candidates for `round` ([`Puncher::provide_candidates`]).
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
    /// (the machine will never use or close it).
    Connected {
        /// The stream.
        socket: SocketId,
        /// Our end.
        local: SocketAddr,
        /// The peer's end.
        remote: SocketAddr,
        /// Application bytes that arrived right behind the handshake.
        leftover: Vec<u8>,
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
}

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

/// The state of one armed round.
#[derive(Clone, Debug)]
struct Punch {
    deadline: Instant,
    /// (own port, peer endpoint, next connect time) of every pair; `None` while a connect runs.
    pairs: Vec<Pair>,
    connects: u32,
    refused: u32,
    failed: u32,
    came_up: u32,
}

#[derive(Clone, Debug)]
struct Pair {
    port: u16,
    target: SocketAddr,
    /// When to connect next (after binding); `None` while an attempt is in flight.
    next: Option<Instant>,
    /// The socket of the current attempt.
    socket: Option<SocketId>,
}

/// A socket the machine owns.
#[derive(Clone, Debug)]
struct Sock {
    id: SocketId,
    port: u16,
    kind: SockKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum SockKind {
    /// A listener (bound, then listening) with its outstanding accept id.
    Listener {
        bound: bool,
        accepting: Option<SocketId>,
    },
    /// An outstanding accept's future stream.
    Accepting,
    /// A dialing socket of pair `pair` (bound or binding, then connecting).
    Dialing {
        pair: usize,
        bound: bool,
        connecting: bool,
    },
    /// A connection that came up: handshake in progress.
    Stream {
        local: SocketAddr,
        remote: SocketAddr,
        rx: Vec<u8>,
        verified: bool,
    },
}

/// The punch machine (see the [module docs](self)).
#[derive(Debug)]
pub struct Puncher {
    config: PunchConfig,
    rng: Rng,
    role: Role,
    peer: Option<NodeId>,
    session: SessionId,
    round: u8,
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
    /// An idle machine (answers offers if `accept_offers`).
    pub fn new(config: PunchConfig, seed: u64) -> Self {
        Puncher {
            config,
            rng: Rng::from_seed(seed),
            role: Role::Responder,
            peer: None,
            session: SessionId([0; 16]),
            round: 0,
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

    // ----- signaling -----

    fn on_message(&mut self, now: Instant, from: NodeId, message: Message) -> Verdict {
        let session = message.session();
        let round = message.round();
        // A new offer while idle (or glare: both offered at once).
        if let Message::Offer { t1, candidates, .. } = &message {
            let glare = matches!(self.phase, Phase::Offering { .. })
                && self.round == 0
                && self.peer == Some(from)
                && from < self.config.node_id
                && session != self.session;
            let fresh = matches!(self.phase, Phase::Idle) && self.config.accept_offers;
            if fresh || glare {
                if glare {
                    // The smaller node id stays initiator; our offer is withdrawn.
                    self.phase = Phase::Idle;
                }
                self.role = Role::Responder;
                self.peer = Some(from);
                self.session = session;
                self.round = round;
                return self.on_offer(now, *t1, candidates.clone());
            }
        }
        if self.peer != Some(from) || session != self.session {
            self.stats.rejected = self.stats.rejected.saturating_add(1);
            return Verdict::Dropped(DropReason::Unexpected);
        }
        if round < self.round {
            self.stats.duplicates = self.stats.duplicates.saturating_add(1);
            return Verdict::Dropped(DropReason::Duplicate);
        }
        match message {
            Message::Abort { reason, .. } if round == self.round => {
                if matches!(self.phase, Phase::Finished) {
                    return self.duplicate();
                }
                self.round_failed(now, PunchFailure::PeerAborted(reason));
                Verdict::Consumed
            }
            Message::Offer { t1, candidates, .. } if self.role == Role::Responder => {
                // The initiator moved on to a new round (ours may still be running, or it ended
                // and we wait for this offer): follow it with fresh sockets.
                let waiting =
                    matches!(self.phase, Phase::AwaitingOffer { .. }) && round == self.round;
                if (round > self.round || waiting) && !matches!(self.phase, Phase::Finished) {
                    self.close_all_sockets();
                    self.round = round;
                    return self.on_offer(now, t1, candidates);
                }
                // A duplicate of the offer we are answering: the same answer again.
                if round == self.round {
                    if let Phase::AwaitingAck { answer, .. } = &self.phase {
                        let answer = answer.clone();
                        self.signal(answer);
                    }
                }
                self.duplicate()
            }
            Message::Answer {
                t1,
                t2,
                t3,
                meet,
                candidates,
                ..
            } if self.role == Role::Initiator && round == self.round => match &self.phase {
                Phase::Offering { sent_t1, .. } if sent_t1.contains(&t1) => {
                    self.on_answer(now, [t1, t2, t3], meet, candidates);
                    Verdict::Consumed
                }
                Phase::Punching(p) => {
                    // Our ACK may have been lost: acknowledge again.
                    let _ = p;
                    self.duplicate()
                }
                _ => self.duplicate(),
            },
            Message::Ack { meet, .. } if self.role == Role::Responder && round == self.round => {
                match &self.phase {
                    Phase::AwaitingAck { meet_ns, .. } if *meet_ns == meet => {
                        self.on_ack(now);
                        Verdict::Consumed
                    }
                    _ => self.duplicate(),
                }
            }
            _ => {
                self.stats.rejected = self.stats.rejected.saturating_add(1);
                Verdict::Dropped(DropReason::Unexpected)
            }
        }
    }

    fn duplicate(&mut self) -> Verdict {
        self.stats.duplicates = self.stats.duplicates.saturating_add(1);
        Verdict::Dropped(DropReason::Duplicate)
    }

    fn on_offer(&mut self, now: Instant, t1: u64, peer: Vec<PunchCandidate>) -> Verdict {
        let t2 = self.wall_ns(now);
        self.phase = Phase::ResponderNeedsCandidates { t1, t2, peer };
        self.events
            .push_back(PunchEvent::NeedCandidates { round: self.round });
        Verdict::Consumed
    }

    fn send_offer(
        &mut self,
        now: Instant,
        candidates: Vec<PunchCandidate>,
        mut sent: Vec<u64>,
        attempts: u32,
    ) {
        let t1 = self.wall_ns(now);
        let message = Message::Offer {
            session: self.session,
            round: self.round,
            t1,
            candidates: candidates.clone(),
        };
        if let Ok(bytes) = message.encode() {
            self.signal(bytes);
        }
        if sent.len() >= 16 {
            sent.remove(0);
        }
        sent.push(t1);
        self.phase = Phase::Offering {
            candidates,
            sent_t1: sent,
            attempts: attempts.saturating_add(1),
            next_resend: now.saturating_add(self.config.signal_retransmit),
        };
    }

    fn send_answer(
        &mut self,
        now: Instant,
        t1: u64,
        t2: u64,
        ours: Vec<PunchCandidate>,
        peer: Vec<PunchCandidate>,
    ) {
        let t3 = self.wall_ns(now);
        let meet_ns = t3.saturating_add(duration_ns(self.config.lead));
        let message = Message::Answer {
            session: self.session,
            round: self.round,
            t1,
            t2,
            t3,
            meet: meet_ns,
            candidates: ours.clone(),
        };
        let Ok(answer) = message.encode() else {
            self.round_failed(now, PunchFailure::NoSockets(IoError::Other(None)));
            return;
        };
        self.signal(answer.clone());
        self.phase = Phase::AwaitingAck {
            answer,
            meet_ns,
            ours,
            peer,
        };
    }

    fn on_answer(&mut self, now: Instant, t: [u64; 3], meet_ns: u64, peer: Vec<PunchCandidate>) {
        let [t1, t2, t3] = t;
        let t4 = self.wall_ns(now);
        let clock = match exchange_clock([t1, t2, t3, t4], self.config.drift_allowance) {
            Ok(clock) => clock,
            Err(error) => {
                // The answer's timestamps contradict ours (a clock stepped mid-exchange, or a
                // forged answer): no meet time can be trusted.
                self.signal_abort(AbortReason::TooUncertain);
                self.round_failed(now, PunchFailure::BadClock(error));
                return;
            }
        };
        let limit = self.config.max_uncertainty;
        if clock.uncertainty > limit {
            self.signal_abort(AbortReason::TooUncertain);
            self.round_failed(
                now,
                PunchFailure::TooUncertain {
                    uncertainty: clock.uncertainty,
                    limit,
                },
            );
            return;
        }
        // The meet time in our clock: theirs minus their offset from us.
        let meet_ours = i128::from(meet_ns).saturating_sub(i128::from(clock.offset_ns));
        let meet = u64::try_from(meet_ours).ok().map(|ns| self.instant_of(ns));
        let margin = now.saturating_add(self.config.min_margin);
        let Some(meet) = meet.filter(|m| *m >= margin) else {
            self.signal_abort(AbortReason::TooLate);
            self.round_failed(now, PunchFailure::TooLate);
            return;
        };
        let ours = match &self.phase {
            Phase::Offering { candidates, .. } => candidates.clone(),
            _ => return,
        };
        let ack = Message::Ack {
            session: self.session,
            round: self.round,
            meet: meet_ns,
            uncertainty_ns: duration_ns(clock.uncertainty),
        };
        if let Ok(bytes) = ack.encode() {
            self.signal(bytes);
        }
        self.arm(now, meet, clock.uncertainty, ours, peer);
    }

    fn on_ack(&mut self, now: Instant) {
        let Phase::AwaitingAck {
            meet_ns,
            ours,
            peer,
            ..
        } = std::mem::replace(&mut self.phase, Phase::Finished)
        else {
            return;
        };
        let meet = self.instant_of(meet_ns);
        if meet < now.saturating_add(self.config.min_margin) {
            self.signal_abort(AbortReason::TooLate);
            self.round_failed(now, PunchFailure::TooLate);
            return;
        }
        // The responder's own clock is the reference; the initiator carries the uncertainty.
        self.arm(now, meet, Duration::ZERO, ours, peer);
    }

    fn signal(&mut self, payload: Vec<u8>) {
        let Some(peer) = self.peer else {
            return;
        };
        self.stats.signals_out = self.stats.signals_out.saturating_add(1);
        self.events.push_back(PunchEvent::Signal { peer, payload });
    }

    fn signal_abort(&mut self, reason: AbortReason) {
        let message = Message::Abort {
            session: self.session,
            round: self.round,
            reason,
        };
        if let Ok(bytes) = message.encode() {
            self.signal(bytes);
        }
    }

    // ----- rounds -----

    fn round_failed(&mut self, now: Instant, reason: PunchFailure) {
        self.close_all_sockets();
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

    // ----- punching -----

    fn arm(
        &mut self,
        now: Instant,
        meet: Instant,
        uncertainty: Duration,
        ours: Vec<PunchCandidate>,
        peer: Vec<PunchCandidate>,
    ) {
        let mut ports: Vec<u16> = Vec::new();
        for c in &ours {
            if !ports.contains(&c.local_port) {
                ports.push(c.local_port);
            }
        }
        let mut pairs = Vec::new();
        for &port in &ports {
            for p in &peer {
                if p.external.is_ipv4() == self.config.bind_ip.is_ipv4()
                    && !pairs
                        .iter()
                        .any(|x: &Pair| x.port == port && x.target == p.external)
                {
                    pairs.push(Pair {
                        port,
                        target: p.external,
                        next: None,
                        socket: None,
                    });
                }
            }
        }
        // Listeners plus the first socket of every pair must fit.
        let budget = self.config.max_sockets.saturating_sub(ports.len());
        pairs.truncate(budget.max(1));
        let deadline = meet.saturating_add(self.config.punch_window);
        self.phase = Phase::Punching(Box::new(Punch {
            deadline,
            pairs,
            connects: 0,
            refused: 0,
            failed: 0,
            came_up: 0,
        }));
        for port in ports {
            self.open_listener(port);
        }
        let n = self.punch_pairs();
        for i in 0..n {
            let at = meet.saturating_add(
                self.config
                    .connect_spacing
                    .saturating_mul(u32::try_from(i).unwrap_or(u32::MAX)),
            );
            self.open_dialer(i, at);
        }
        self.events.push_back(PunchEvent::Armed {
            round: self.round,
            meet,
            uncertainty,
        });
        let _ = now;
    }

    fn punch_pairs(&self) -> usize {
        match &self.phase {
            Phase::Punching(p) => p.pairs.len(),
            _ => 0,
        }
    }

    fn bind_op(&self, socket: SocketId, port: u16) -> SocketOp {
        SocketOp::Bind {
            socket,
            transport: Transport::Tcp,
            local: SocketAddr::new(self.config.bind_ip, port),
            options: BindOptions {
                reuse_address: true,
                reuse_port: true,
                device: None,
            },
        }
    }

    fn new_socket_id(&mut self) -> Option<SocketId> {
        if self.sockets.len() >= self.config.max_sockets {
            return None;
        }
        let span = self.config.socket_ids.max(1);
        for _ in 0..span {
            let id = SocketId(
                self.config
                    .socket_base
                    .0
                    .wrapping_add(self.next_socket.checked_rem(span).unwrap_or(0)),
            );
            self.next_socket = self.next_socket.wrapping_add(1);
            if !self.sockets.iter().any(|s| s.id == id) {
                return Some(id);
            }
        }
        None
    }

    fn open_listener(&mut self, port: u16) {
        let Some(id) = self.new_socket_id() else {
            return;
        };
        self.ops.push_back(self.bind_op(id, port));
        self.stats.sockets_opened = self.stats.sockets_opened.saturating_add(1);
        self.sockets.push(Sock {
            id,
            port,
            kind: SockKind::Listener {
                bound: false,
                accepting: None,
            },
        });
    }

    fn open_dialer(&mut self, pair: usize, at: Instant) {
        let Phase::Punching(p) = &self.phase else {
            return;
        };
        let Some(port) = p.pairs.get(pair).map(|x| x.port) else {
            return;
        };
        let Some(id) = self.new_socket_id() else {
            // No free socket (or id) now: try again later rather than stay due, which would make
            // the caller spin.
            let retry = self.config.retry_interval.max(Duration::from_millis(1));
            if let Phase::Punching(p) = &mut self.phase {
                if let Some(x) = p.pairs.get_mut(pair) {
                    x.next = Some(at.saturating_add(retry));
                    x.socket = None;
                }
            }
            return;
        };
        self.ops.push_back(self.bind_op(id, port));
        self.stats.sockets_opened = self.stats.sockets_opened.saturating_add(1);
        self.sockets.push(Sock {
            id,
            port,
            kind: SockKind::Dialing {
                pair,
                bound: false,
                connecting: false,
            },
        });
        if let Phase::Punching(p) = &mut self.phase {
            if let Some(x) = p.pairs.get_mut(pair) {
                x.next = Some(at);
                x.socket = Some(id);
            }
        }
    }

    /// Fires due connects, retries, and the window's end.
    fn punch_timers(&mut self, now: Instant) {
        let Phase::Punching(p) = &self.phase else {
            return;
        };
        if now >= p.deadline {
            let reason = PunchFailure::NoConnection {
                connects: p.connects,
                refused: p.refused,
                failed: p.failed,
                came_up: p.came_up,
            };
            self.round_failed(now, reason);
            return;
        }
        let due: Vec<(usize, Option<SocketId>)> = p
            .pairs
            .iter()
            .enumerate()
            .filter(|(_, x)| x.next.is_some_and(|t| t <= now))
            .map(|(i, x)| (i, x.socket))
            .collect();
        for (pair, socket) in due {
            match socket {
                // A bound socket waiting for its time: connect.
                Some(id) => self.try_connect(pair, id),
                // A retry: a fresh socket, connected once bound.
                None => self.open_dialer(pair, now),
            }
        }
    }

    fn try_connect(&mut self, pair: usize, id: SocketId) {
        let Some(sock) = self.sockets.iter_mut().find(|s| s.id == id) else {
            return;
        };
        let SockKind::Dialing {
            bound, connecting, ..
        } = &mut sock.kind
        else {
            return;
        };
        if !*bound || *connecting {
            return;
        }
        *connecting = true;
        let Phase::Punching(p) = &mut self.phase else {
            return;
        };
        let Some(x) = p.pairs.get_mut(pair) else {
            return;
        };
        x.next = None;
        p.connects = p.connects.saturating_add(1);
        self.stats.connects = self.stats.connects.saturating_add(1);
        self.ops.push_back(SocketOp::Connect {
            socket: id,
            remote: x.target,
        });
    }

    fn on_outcome(&mut self, now: Instant, index: usize, outcome: SocketOutcome) {
        let Some(sock) = self.sockets.get_mut(index) else {
            return;
        };
        let id = sock.id;
        match (&mut sock.kind, outcome) {
            (SockKind::Listener { bound, .. }, SocketOutcome::Bound { .. }) => {
                *bound = true;
                self.ops.push_back(SocketOp::Listen {
                    socket: id,
                    backlog: 8,
                });
                self.accept_next(index);
            }
            (SockKind::Dialing { bound, pair, .. }, SocketOutcome::Bound { .. }) => {
                *bound = true;
                let pair = *pair;
                let due = match &self.phase {
                    Phase::Punching(p) => p
                        .pairs
                        .get(pair)
                        .and_then(|x| x.next)
                        .is_some_and(|t| t <= now),
                    _ => false,
                };
                if due {
                    self.try_connect(pair, id);
                }
            }
            (SockKind::Dialing { .. }, SocketOutcome::Connected { local, remote })
            | (SockKind::Accepting, SocketOutcome::Accepted { local, remote }) => {
                let accepted = matches!(sock.kind, SockKind::Accepting);
                sock.kind = SockKind::Stream {
                    local,
                    remote,
                    rx: Vec::new(),
                    verified: false,
                };
                if let Phase::Punching(p) = &mut self.phase {
                    p.came_up = p.came_up.saturating_add(1);
                }
                self.send_hello(id, remote);
                if accepted {
                    if let Some(listener) = self.listener_of(id) {
                        self.accept_next(listener);
                    }
                }
            }
            (SockKind::Dialing { pair, .. }, SocketOutcome::Failed { op, error, .. }) => {
                let pair = *pair;
                if let Phase::Punching(p) = &mut self.phase {
                    if op == OpKind::Connect && error == IoError::ConnectionRefused {
                        p.refused = p.refused.saturating_add(1);
                    } else {
                        p.failed = p.failed.saturating_add(1);
                    }
                    if let Some(x) = p.pairs.get_mut(pair) {
                        x.socket = None;
                        x.next = Some(now.saturating_add(self.config.retry_interval));
                    }
                }
                self.close_socket(id);
                if op == OpKind::Bind && !self.any_bound() {
                    if let Phase::Punching(p) = &self.phase {
                        if p.pairs.iter().all(|x| x.socket.is_none()) {
                            self.round_failed(now, PunchFailure::NoSockets(error));
                        }
                    }
                }
            }
            (SockKind::Listener { .. }, SocketOutcome::Failed { .. })
            | (SockKind::Accepting, SocketOutcome::Failed { .. }) => {
                self.close_socket(id);
            }
            (SockKind::Stream { .. }, SocketOutcome::PeerClosed)
            | (SockKind::Stream { .. }, SocketOutcome::Failed { .. }) => {
                self.close_socket(id);
            }
            _ => {}
        }
    }

    /// Whether `id` is a dialing socket whose bind has not completed yet.
    fn is_binding(&self, id: SocketId) -> bool {
        self.sockets
            .iter()
            .any(|s| s.id == id && matches!(s.kind, SockKind::Dialing { bound: false, .. }))
    }

    fn any_bound(&self) -> bool {
        self.sockets.iter().any(|s| match s.kind {
            SockKind::Listener { bound, .. } | SockKind::Dialing { bound, .. } => bound,
            SockKind::Accepting | SockKind::Stream { .. } => true,
        })
    }

    /// The listener whose accept produced `stream`.
    fn listener_of(&mut self, stream: SocketId) -> Option<usize> {
        self.sockets.iter().position(
            |s| matches!(s.kind, SockKind::Listener { accepting: Some(a), .. } if a == stream),
        )
    }

    fn accept_next(&mut self, listener: usize) {
        let Some(id) = self.new_socket_id() else {
            return;
        };
        let Some(sock) = self.sockets.get_mut(listener) else {
            return;
        };
        let (listener_id, port) = (sock.id, sock.port);
        if let SockKind::Listener { accepting, .. } = &mut sock.kind {
            *accepting = Some(id);
        } else {
            return;
        }
        self.ops.push_back(SocketOp::Accept {
            listener: listener_id,
            socket: id,
        });
        self.stats.sockets_opened = self.stats.sockets_opened.saturating_add(1);
        self.sockets.push(Sock {
            id,
            port,
            kind: SockKind::Accepting,
        });
    }

    fn send_hello(&mut self, socket: SocketId, remote: SocketAddr) {
        let hello = Hello {
            session: self.session,
            round: self.round,
            node_id: self.config.node_id,
        };
        self.transmits
            .push_back((socket, remote, hello.encode().to_vec()));
    }

    fn on_stream_bytes(&mut self, now: Instant, index: usize, data: &[u8]) -> Verdict {
        let leader = self.peer.is_some_and(|p| self.config.node_id < p);
        let (session, round, peer) = (self.session, self.round, self.peer);
        let Some(sock) = self.sockets.get_mut(index) else {
            return Verdict::NotMine;
        };
        let id = sock.id;
        let SockKind::Stream {
            local,
            remote,
            rx,
            verified,
        } = &mut sock.kind
        else {
            return Verdict::Dropped(DropReason::Unexpected);
        };
        if !matches!(self.phase, Phase::Punching(_)) {
            return Verdict::Dropped(DropReason::Unexpected);
        }
        // Keep at most the hello and the marker; anything after them is application data.
        rx.extend_from_slice(data);
        let (local, remote) = (*local, *remote);
        if !*verified {
            if rx.len() < HELLO_LEN {
                return Verdict::Consumed;
            }
            let ok = rx
                .get(..HELLO_LEN)
                .and_then(Hello::decode)
                .is_some_and(|h| {
                    h.session == session && h.round == round && Some(h.node_id) == peer
                });
            if !ok {
                self.close_socket(id);
                return Verdict::Dropped(DropReason::Unexpected);
            }
            *verified = true;
            if leader {
                let leftover = rx.get(HELLO_LEN..).unwrap_or_default().to_vec();
                self.transmits.push_back((id, remote, vec![CHOSEN]));
                self.win(now, id, local, remote, leftover);
                return Verdict::Consumed;
            }
            // The leader may have chosen this connection already: its marker is on the way
            // (TCP retransmits it). Do not give up on the round while waiting for it.
            self.wait_for_chosen(now);
        }
        let Some(Sock {
            kind: SockKind::Stream { rx, .. },
            ..
        }) = self.sockets.get(index)
        else {
            return Verdict::Consumed;
        };
        // Follower: the marker follows the hello.
        match rx.get(HELLO_LEN) {
            None => Verdict::Consumed,
            Some(&CHOSEN) => {
                let leftover = rx
                    .get(HELLO_LEN.saturating_add(1)..)
                    .unwrap_or_default()
                    .to_vec();
                self.win(now, id, local, remote, leftover);
                Verdict::Consumed
            }
            Some(_) => {
                self.close_socket(id);
                Verdict::Dropped(DropReason::Unexpected)
            }
        }
    }

    /// A follower with a verified connection keeps the round open for at least
    /// [`PunchConfig::chosen_timeout`] more, so a leader's marker delayed by loss is not met by a
    /// closed round (which would leave the leader alone with a connection).
    fn wait_for_chosen(&mut self, now: Instant) {
        let until = now.saturating_add(self.config.chosen_timeout);
        if let Phase::Punching(p) = &mut self.phase {
            if p.deadline < until {
                p.deadline = until;
            }
        }
    }

    fn win(
        &mut self,
        _now: Instant,
        winner: SocketId,
        local: SocketAddr,
        remote: SocketAddr,
        leftover: Vec<u8>,
    ) {
        // The winner leaves our table: it is the caller's now.
        self.sockets.retain(|s| s.id != winner);
        self.close_all_sockets();
        self.phase = Phase::Finished;
        self.events.push_back(PunchEvent::Connected {
            socket: winner,
            local,
            remote,
            leftover,
            round: self.round,
        });
    }

    // ----- sockets -----

    fn close_socket(&mut self, id: SocketId) {
        if let Some(pos) = self.sockets.iter().position(|s| s.id == id) {
            let sock = self.sockets.remove(pos);
            // An outstanding accept's id was never opened by the runtime: the listener's close
            // ends it. Everything else gets exactly one Close.
            if sock.kind != SockKind::Accepting {
                self.ops.push_back(SocketOp::Close { socket: id });
                self.stats.sockets_closed = self.stats.sockets_closed.saturating_add(1);
            }
            // Transmits still queued for it are dropped.
            self.transmits.retain(|(s, _, _)| *s != id);
        }
    }

    fn close_all_sockets(&mut self) {
        let ids: Vec<SocketId> = self.sockets.iter().map(|s| s.id).collect();
        // Accepting ids first, so that they are removed without a Close before their listener.
        for id in ids {
            self.close_socket(id);
        }
    }

    fn report_closed(&mut self) {
        if !self.closed_reported {
            self.closed_reported = true;
            self.events.push_back(PunchEvent::Closed);
        }
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

/// The peer's clock relative to ours from one four-timestamp exchange.
struct ExchangeClock {
    /// Peer minus us, nanoseconds.
    offset_ns: i64,
    /// Half the round trip spent on the path (rounded up), plus the drift allowance.
    uncertainty: Duration,
}

/// [`crate::clock::offset_and_delay`] on the four timestamps (see [`crate::clock`] for the math and
/// sign conventions).
fn exchange_clock(t: [u64; 4], drift: Duration) -> Result<ExchangeClock, ClockError> {
    let [t1, t2, t3, t4] = t.map(i128::from);
    let (offset_ns, delay) = offset_and_delay(t1, t2, t3, t4)?;
    Ok(ExchangeClock {
        offset_ns,
        uncertainty: Duration::from_nanos(delay.div_ceil(2)).saturating_add(drift),
    })
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
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

#[cfg(test)]
mod tests;

//! The signaling handshake: offer, answer, acknowledgement and abort, and the clock exchange
//! that turns them into a meet time.

use core::time::Duration;

use p2pd_proto::{DropReason, Instant, IoError, Verdict};

use super::{Phase, PunchEvent, PunchFailure, Puncher, Role};
use crate::clock::{offset_and_delay, ClockError};
use crate::message::{AbortReason, Message, PunchCandidate};
use p2pd_signaling::NodeId;

impl Puncher {
    pub(super) fn on_message(&mut self, now: Instant, from: NodeId, message: Message) -> Verdict {
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
                    // The initiator may pick an earlier meet than ours, never a later one.
                    Phase::AwaitingAck { meet_ns, .. } if meet <= *meet_ns => {
                        self.on_ack(now, meet);
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

    pub(super) fn send_offer(
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

    pub(super) fn send_answer(
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
        // The responder's meet time (the latest one) in our clock: theirs minus their offset
        // from us.
        let latest = i128::from(meet_ns).saturating_sub(i128::from(clock.offset_ns));
        let latest = u64::try_from(latest).ok().map(|ns| self.instant_of(ns));
        let margin = now.saturating_add(self.config.min_margin);
        let Some(latest) = latest.filter(|m| *m >= margin) else {
            self.signal_abort(AbortReason::TooLate);
            self.round_failed(now, PunchFailure::TooLate);
            return;
        };
        // The round trip is measured now: meet as early as it allows, never later than offered.
        let early = now.saturating_add(self.measured_lead(&clock));
        let early_ns = i128::from(self.wall_ns(early)).saturating_add(i128::from(clock.offset_ns));
        let (meet, meet_ns) = match u64::try_from(early_ns) {
            Ok(early_ns) if early < latest && early_ns < meet_ns => (early, early_ns),
            _ => (latest, meet_ns),
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

    /// The ACK chose `meet_ns` (our clock, no later than our answer's).
    fn on_ack(&mut self, now: Instant, meet_ns: u64) {
        let Phase::AwaitingAck { ours, peer, .. } =
            std::mem::replace(&mut self.phase, Phase::Finished)
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

    /// The initiator's lead from the ACK to the meet time, from the round trip it just measured
    /// (see the [module docs](super)): `min_margin + 2 * delay + uncertainty`, doubled for every
    /// round of this punch that failed for time, at least `min_lead`, at most `lead`, and never
    /// below `min_margin` (a `lead` configured below it would arm for a meet time already due).
    fn measured_lead(&self, clock: &ExchangeClock) -> Duration {
        let need = self
            .config
            .min_margin
            .saturating_add(clock.delay.saturating_mul(2))
            .saturating_add(clock.uncertainty);
        let scale = 1u32.checked_shl(self.late_rounds).unwrap_or(u32::MAX);
        need.saturating_mul(scale)
            .max(self.config.min_lead)
            .min(self.config.lead)
            .max(self.config.min_margin)
    }

    fn signal(&mut self, payload: Vec<u8>) {
        let Some(peer) = self.peer else {
            return;
        };
        self.stats.signals_out = self.stats.signals_out.saturating_add(1);
        self.events.push_back(PunchEvent::Signal { peer, payload });
    }

    pub(super) fn signal_abort(&mut self, reason: AbortReason) {
        let message = Message::Abort {
            session: self.session,
            round: self.round,
            reason,
        };
        if let Ok(bytes) = message.encode() {
            self.signal(bytes);
        }
    }
}

/// The peer's clock relative to ours from one four-timestamp exchange.
struct ExchangeClock {
    /// Peer minus us, nanoseconds.
    offset_ns: i64,
    /// Half the round trip spent on the path (rounded up), plus the drift allowance.
    uncertainty: Duration,
    /// The round trip spent on the path (the responder's time between offer and answer left
    /// out).
    delay: Duration,
}

/// [`crate::clock::offset_and_delay`] on the four timestamps (see [`crate::clock`] for the math and
/// sign conventions).
fn exchange_clock(t: [u64; 4], drift: Duration) -> Result<ExchangeClock, ClockError> {
    let [t1, t2, t3, t4] = t.map(i128::from);
    let (offset_ns, delay) = offset_and_delay(t1, t2, t3, t4)?;
    Ok(ExchangeClock {
        offset_ns,
        uncertainty: Duration::from_nanos(delay.div_ceil(2)).saturating_add(drift),
        delay: Duration::from_nanos(delay),
    })
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

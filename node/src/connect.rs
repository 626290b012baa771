//! One connect, up the ladder: resolve, phase A (direct dials raced with a reverse request
//! within [`NodeConfig::direct_budget`](crate::NodeConfig::direct_budget)), phase B (the punch,
//! when the pair is punchable), phase C (the relay, module `relays`). The plan comes from
//! [`crate::ladder::plan`]; the first authenticated stream wins and everything else of the
//! connect is closed once.

use core::net::SocketAddr;

use p2pd_proto::Instant;
use p2pd_signaling::pnp::{PnpFailure, RequestId};
use p2pd_signaling::{PeerAddress, PublicKey};

use crate::ladder::{self, Plan};
use crate::node::Node;
use crate::phases::Phases;
use crate::target::Target;
use crate::types::{
    ConnectId, NodeApiError, NodeEvent, Path, Phase, PhaseFailure, PhaseOutcome, SkipReason,
    StreamId,
};
use crate::wire::{Message, TOKEN_LEN};

/// Most endpoints phase A dials for one connect.
const MAX_DIRECT_DIALS: usize = 8;

/// Where a connect is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Looking the name up / waiting for the fresh address.
    Resolving,
    /// Phase A until its budget runs out.
    PhaseA { until: Instant },
    /// Phase B: the punch runs.
    PhaseB,
    /// Phase C: waiting for the allocation (`None`), then for the peer to come through the
    /// relay (until then).
    PhaseC { until: Option<Instant> },
    /// Won or failed: about to leave.
    Done,
}

/// One connect.
#[derive(Debug)]
pub(crate) struct Connect {
    pub(crate) id: ConnectId,
    pub(crate) target: Target,
    pub(crate) started: Instant,
    pub(crate) stage: Stage,
    /// The peer's key, once known.
    pub(crate) key: Option<PublicKey>,
    /// The peer's address, once resolved.
    pub(crate) peer: Option<PeerAddress>,
    pub(crate) plan: Plan,
    /// PNP lookups in flight: (server index, request).
    pub(crate) lookups: Vec<(usize, RequestId)>,
    pub(crate) lookup_failure: Option<PnpFailure>,
    pub(crate) found_nothing: bool,
    /// The fresh-address request's nonce.
    pub(crate) address_nonce: Option<u64>,
    resolve_until: Instant,
    /// Phase A: dials still running.
    pub(crate) dials: usize,
    /// Phase A: the last dial failure.
    pub(crate) dial_failure: Option<PhaseFailure>,
    /// Phase A: the reverse request's token while it runs.
    pub(crate) reverse_token: Option<[u8; TOKEN_LEN]>,
    /// Phase B: the punch's serial.
    pub(crate) punch: Option<u32>,
    /// What each phase is doing.
    pub(crate) phases: Phases,
    /// Phase A's budget ran out with nothing after it, and was extended once.
    pub(crate) budget_extended: bool,
    /// Phase C: the allocation serving this connect.
    pub(crate) relay: Option<u32>,
    /// Phase C: the next configured relay to try.
    pub(crate) relay_next: usize,
    /// Phase C: the last relay's failure.
    pub(crate) relay_failure: Option<PhaseFailure>,
    /// Phase C: the offer's token while it is out.
    pub(crate) relay_token: Option<[u8; TOKEN_LEN]>,
}

impl Connect {
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.stage {
            Stage::Resolving => Some(self.resolve_until),
            Stage::PhaseA { until } => Some(until),
            Stage::PhaseC { until } => until,
            Stage::PhaseB | Stage::Done => None,
        }
    }

    /// Whether `phase` is over.
    pub(crate) fn ended(&self, phase: Phase) -> bool {
        self.phases.has_ended(phase)
    }
}

impl Node {
    /// Connects to `target` by the cheapest path that works (see the [crate docs](crate)):
    /// [`NodeEvent::Connected`] with the stream, or [`NodeEvent::ConnectFailed`] with every
    /// phase's reason.
    pub fn connect(&mut self, now: Instant, target: Target) -> Result<ConnectId, NodeApiError> {
        self.check_open()?;
        if self.connects.len() >= self.config.max_connects {
            return Err(NodeApiError::TooManyConnects);
        }
        let key = target.key();
        if key == Some(self.key) {
            return Err(NodeApiError::SelfTarget);
        }
        let id = ConnectId(self.next_connect);
        self.next_connect = self.next_connect.wrapping_add(1);
        let mut connect = Connect {
            id,
            target: target.clone(),
            started: now,
            stage: Stage::Resolving,
            key,
            peer: None,
            plan: Plan::default(),
            lookups: Vec::new(),
            lookup_failure: None,
            found_nothing: false,
            address_nonce: None,
            resolve_until: now.saturating_add(self.config.resolve_timeout),
            dials: 0,
            dial_failure: None,
            reverse_token: None,
            punch: None,
            phases: Phases::new(now),
            budget_extended: false,
            relay: None,
            relay_next: 0,
            relay_failure: None,
            relay_token: None,
        };
        start_phase(&mut connect, Phase::Resolve, now);
        match target {
            Target::Address(address) => {
                end_phase(
                    &mut connect,
                    Phase::Resolve,
                    now,
                    PhaseOutcome::Skipped(SkipReason::NotNeeded),
                );
                connect.peer = Some(*address);
            }
            Target::Key(key) => {
                let nonce = self.rng.next_u64();
                connect.address_nonce = Some(nonce);
                let message = Message::AddressRequest { nonce }.encode();
                if self.rendezvous.send(now, &key, None, &message).is_err() {
                    end_phase(
                        &mut connect,
                        Phase::Resolve,
                        now,
                        PhaseOutcome::Failed(PhaseFailure::Signaling),
                    );
                }
            }
            Target::Name(name) => {
                for (i, client) in self.pnp.iter_mut().enumerate() {
                    if let Ok(request) = client.lookup(now, name.clone()) {
                        connect.lookups.push((i, request));
                    }
                }
                if connect.lookups.is_empty() {
                    end_phase(
                        &mut connect,
                        Phase::Resolve,
                        now,
                        PhaseOutcome::Failed(PhaseFailure::NameNotFound),
                    );
                }
            }
        }
        self.connects.push(connect);
        self.events.push_back(NodeEvent::Progress {
            connect: id,
            phase: Phase::Resolve,
        });
        self.pump(now);
        Ok(id)
    }

    /// Moves every connect along its ladder; true if anything changed.
    pub(crate) fn step_connects(&mut self, now: Instant) -> bool {
        let mut progressed = false;
        for i in 0..self.connects.len() {
            progressed |= self.step_connect(now, i);
        }
        let before = self.connects.len();
        self.connects.retain(|c| c.stage != Stage::Done);
        progressed || before != self.connects.len()
    }

    fn step_connect(&mut self, now: Instant, i: usize) -> bool {
        let Some(connect) = self.connects.get_mut(i) else {
            return false;
        };
        match connect.stage {
            Stage::Resolving => {
                if connect.peer.is_some() && connect.ended(Phase::Resolve) {
                    self.start_phase_a(now, i);
                    return true;
                }
                if connect.ended(Phase::Resolve) {
                    self.fail_connect(now, i);
                    return true;
                }
                false
            }
            Stage::PhaseA { .. } => {
                let direct_over = connect.dials == 0;
                let reverse_over = connect.reverse_token.is_none();
                if direct_over && reverse_over {
                    self.start_phase_b(now, i);
                    return true;
                }
                false
            }
            Stage::PhaseB => {
                if connect.punch.is_none() {
                    self.start_phase_c(now, i);
                    return true;
                }
                false
            }
            Stage::PhaseC { .. } | Stage::Done => false,
        }
    }

    fn start_phase_a(&mut self, now: Instant, i: usize) {
        let view = self.own.view();
        let our_address = self.own.address.clone();
        let budget = self.config.direct_budget;
        let Some(connect) = self.connects.get_mut(i) else {
            return;
        };
        let Some(peer) = connect.peer.clone() else {
            return;
        };
        if peer.public_key == self.key {
            end_phase(
                connect,
                Phase::Direct,
                now,
                PhaseOutcome::Failed(PhaseFailure::BadAddress),
            );
            connect.stage = Stage::PhaseB;
            connect.plan = Plan::default();
            return;
        }
        connect.plan = ladder::plan(&view, &peer);
        connect.stage = Stage::PhaseA {
            until: now.saturating_add(budget),
        };
        let id = connect.id;
        let plan = connect.plan.clone();
        let punch = plan.punch && self.config.stun_tcp.is_some();
        if plan.direct.is_empty() && !plan.reverse && !punch {
            // Nothing before phase C: the relay's allocation starts now.
            self.start_relay(now, i);
        }
        let Some(connect) = self.connects.get_mut(i) else {
            return;
        };
        if plan.direct.is_empty() {
            end_phase(
                connect,
                Phase::Direct,
                now,
                PhaseOutcome::Skipped(SkipReason::NotApplicable),
            );
        } else {
            start_phase(connect, Phase::Direct, now);
        }
        if plan.reverse && our_address.is_some() {
            let mut token = [0u8; TOKEN_LEN];
            self.rng.fill_bytes(&mut token);
            connect.reverse_token = Some(token);
            start_phase(connect, Phase::Reverse, now);
            if let Some(address) = our_address {
                let message = Message::ReverseRequest {
                    token,
                    address: Box::new(address),
                }
                .encode();
                let via = peer.brokers.clone();
                if self
                    .rendezvous
                    .send(now, &peer.public_key, Some(&via), &message)
                    .is_err()
                    && self
                        .rendezvous
                        .send(now, &peer.public_key, None, &message)
                        .is_err()
                {
                    if let Some(c) = self.connects.get_mut(i) {
                        c.reverse_token = None;
                        end_phase(
                            c,
                            Phase::Reverse,
                            now,
                            PhaseOutcome::Failed(PhaseFailure::Signaling),
                        );
                    }
                }
            }
        } else {
            let outcome = if plan.reverse {
                // The peer should dial us, but we do not know where we are yet.
                PhaseOutcome::Failed(PhaseFailure::NoOwnAddress)
            } else {
                PhaseOutcome::Skipped(SkipReason::NotApplicable)
            };
            end_phase(connect, Phase::Reverse, now, outcome);
        }
        let expect = peer.public_key;
        // A peer's address may list up to 64 endpoints: the first few are its preferred ones.
        for remote in plan.direct.into_iter().take(MAX_DIRECT_DIALS) {
            self.dial(now, id, remote, expect);
        }
        if !self
            .connects
            .get(i)
            .is_some_and(|c| c.dials == 0 && c.reverse_token.is_none())
        {
            self.events.push_back(NodeEvent::Progress {
                connect: id,
                phase: Phase::Direct,
            });
        }
    }

    fn start_phase_b(&mut self, now: Instant, i: usize) {
        let Some(connect) = self.connects.get_mut(i) else {
            return;
        };
        connect.stage = Stage::PhaseB;
        let (plan, key, id) = (connect.plan.clone(), connect.key, connect.id);
        if !plan.punch || self.config.stun_tcp.is_none() {
            let reason = if plan.direct.is_empty() && !plan.reverse {
                SkipReason::Unpunchable
            } else {
                SkipReason::NotApplicable
            };
            end_phase(connect, Phase::Punch, now, PhaseOutcome::Skipped(reason));
            return;
        }
        let Some(key) = key else {
            return;
        };
        start_phase(connect, Phase::Punch, now);
        if connect.relay.is_none() {
            // The relay gets ready while the punch runs, in case it fails.
            self.start_relay(now, i);
        }
        match self.start_punch(now, key, Some(id)) {
            Some(serial) => {
                if let Some(c) = self.connects.get_mut(i) {
                    c.punch = Some(serial);
                }
                self.events.push_back(NodeEvent::Progress {
                    connect: id,
                    phase: Phase::Punch,
                });
            }
            None => {
                if let Some(c) = self.connects.get_mut(i) {
                    end_phase(
                        c,
                        Phase::Punch,
                        now,
                        PhaseOutcome::Failed(PhaseFailure::Closed),
                    );
                }
            }
        }
    }

    pub(crate) fn fail_connect(&mut self, now: Instant, i: usize) {
        let Some(connect) = self.connects.get_mut(i) else {
            return;
        };
        if connect.stage == Stage::Done {
            return;
        }
        connect.stage = Stage::Done;
        connect.relay_token = None;
        let relay = connect.relay.take();
        let phases = connect
            .phases
            .close(now, &PhaseOutcome::Failed(PhaseFailure::Timeout));
        self.events.push_back(NodeEvent::ConnectFailed {
            connect: connect.id,
            elapsed: now.saturating_duration_since(connect.started),
            phases,
        });
        if let Some(serial) = relay {
            self.release_relay(now, serial);
        }
    }

    /// Fails every connect (the node is closing).
    pub(crate) fn fail_all_connects(&mut self, now: Instant) {
        for i in 0..self.connects.len() {
            if let Some(c) = self.connects.get_mut(i) {
                c.phases
                    .end_running(now, &PhaseOutcome::Failed(PhaseFailure::Closed));
                if c.stage == Stage::Resolving && !c.ended(Phase::Resolve) {
                    end_phase(
                        c,
                        Phase::Resolve,
                        now,
                        PhaseOutcome::Failed(PhaseFailure::Closed),
                    );
                }
            }
            self.fail_connect(now, i);
        }
        self.connects.clear();
    }

    /// Deadlines: resolution, phase A's budget, the wait for the peer through the relay.
    pub(crate) fn connects_timeout(&mut self, now: Instant) {
        let handshake_timeout = self.config.channel.handshake_timeout;
        let relay_after = !self.config.relays.is_empty();
        let mut expired_dials = Vec::new();
        let mut expired_relays = Vec::new();
        for connect in &mut self.connects {
            match connect.stage {
                Stage::Resolving if connect.resolve_until <= now && connect.peer.is_none() => {
                    let failure = match connect.target {
                        Target::Key(_) => PhaseFailure::NoAnswer,
                        _ => PhaseFailure::Timeout,
                    };
                    connect.lookups.clear();
                    end_phase(connect, Phase::Resolve, now, PhaseOutcome::Failed(failure));
                }
                Stage::PhaseA { until }
                    if until <= now
                        && !connect.plan.punch
                        && !relay_after
                        && !connect.budget_extended
                        && (connect.dials > 0 || connect.reverse_token.is_some()) =>
                {
                    // Nothing comes after phase A for this pair (no punch, no relay): its
                    // budget would only cut attempts that are still making progress (a SYN
                    // retransmitted over a lossy link). They get their own handshake deadline
                    // instead, once.
                    connect.budget_extended = true;
                    connect.stage = Stage::PhaseA {
                        until: now.saturating_add(handshake_timeout),
                    };
                }
                Stage::PhaseA { until } if until <= now => {
                    if connect.dials > 0 {
                        expired_dials.push(connect.id);
                        connect.dials = 0;
                        end_phase(
                            connect,
                            Phase::Direct,
                            now,
                            PhaseOutcome::Failed(PhaseFailure::Timeout),
                        );
                    }
                    if connect.reverse_token.take().is_some() {
                        end_phase(
                            connect,
                            Phase::Reverse,
                            now,
                            PhaseOutcome::Failed(PhaseFailure::Timeout),
                        );
                    }
                }
                Stage::PhaseC { until: Some(until) } if until <= now => {
                    expired_relays.push(connect.id);
                }
                _ => {}
            }
        }
        for id in expired_dials {
            self.drop_dials_of(id);
        }
        for id in expired_relays {
            self.relay_failed(now, id, PhaseFailure::Timeout);
        }
    }

    /// A dial of phase A ended without a stream.
    pub(crate) fn dial_failed(&mut self, now: Instant, connect: ConnectId, failure: PhaseFailure) {
        let Some(c) = self.connects.iter_mut().find(|c| c.id == connect) else {
            return;
        };
        if !matches!(c.stage, Stage::PhaseA { .. }) || c.dials == 0 {
            return;
        }
        c.dials = c.dials.saturating_sub(1);
        c.dial_failure = Some(failure);
        if c.dials == 0 {
            let failure = c.dial_failure.take().unwrap_or(PhaseFailure::Timeout);
            end_phase(c, Phase::Direct, now, PhaseOutcome::Failed(failure));
        }
    }

    /// The peer could not dial us back.
    pub(crate) fn reverse_failed(&mut self, now: Instant, from: PublicKey, token: [u8; TOKEN_LEN]) {
        for c in &mut self.connects {
            if c.reverse_token == Some(token) && c.key == Some(from) {
                c.reverse_token = None;
                end_phase(
                    c,
                    Phase::Reverse,
                    now,
                    PhaseOutcome::Failed(PhaseFailure::PeerCouldNotDial),
                );
            }
        }
    }

    /// The punch of a connect ended without a stream.
    pub(crate) fn punch_failed(&mut self, now: Instant, connect: ConnectId, failure: PhaseFailure) {
        if let Some(c) = self.connects.iter_mut().find(|c| c.id == connect) {
            if c.punch.take().is_some() {
                end_phase(c, Phase::Punch, now, PhaseOutcome::Failed(failure));
            }
        }
    }

    /// Whether `connect` still wants a stream (a handshake that completes now wins).
    pub(crate) fn connect_open(&self, connect: ConnectId) -> bool {
        self.connects
            .iter()
            .any(|c| c.id == connect && c.stage != Stage::Done)
    }

    /// The connect whose reverse request carries `token`, if it still runs.
    pub(crate) fn reverse_connect(
        &self,
        token: &[u8; TOKEN_LEN],
    ) -> Option<(ConnectId, PublicKey)> {
        self.connects
            .iter()
            .find(|c| c.reverse_token.as_ref() == Some(token) && c.stage != Stage::Done)
            .and_then(|c| Some((c.id, c.key?)))
    }

    /// `connect` won by `path` with `stream`: report it and close every other attempt.
    pub(crate) fn connect_won(
        &mut self,
        now: Instant,
        connect: ConnectId,
        stream: StreamId,
        peer: PublicKey,
        path: Path,
        remote: SocketAddr,
    ) {
        let Some(c) = self.connects.iter_mut().find(|c| c.id == connect) else {
            return;
        };
        let winner = match path {
            Path::Direct => Phase::Direct,
            Path::Reverse => Phase::Reverse,
            Path::Punched => Phase::Punch,
            Path::Relayed => Phase::Relay,
        };
        end_phase(c, winner, now, PhaseOutcome::Won);
        let phases = c.phases.close(now, &PhaseOutcome::Lost);
        c.stage = Stage::Done;
        c.reverse_token = None;
        c.relay_token = None;
        c.dials = 0;
        let punch = c.punch.take();
        let relay = c.relay.take();
        let event = NodeEvent::Connected {
            connect,
            stream,
            peer,
            path,
            elapsed: now.saturating_duration_since(c.started),
            phases,
            remote,
        };
        self.events.push_back(event);
        self.drop_dials_of(connect);
        if let Some(serial) = punch {
            if let Some(p) = self.punches.iter_mut().find(|p| p.serial == serial) {
                p.connect = None;
                p.node.close(now);
                self.stats.losers = self.stats.losers.saturating_add(1);
            }
        }
        if let Some(serial) = relay {
            if path == Path::Relayed {
                // The allocation lives as long as its stream.
                if let Some(r) = self.relays.iter_mut().find(|r| r.serial == serial) {
                    r.connect = None;
                    r.stream = Some(stream);
                }
            } else {
                // Released unused: another path won.
                self.release_relay(now, serial);
            }
        }
    }
}

/// Marks `phase` started (unless it runs or ended already).
pub(crate) fn start_phase(connect: &mut Connect, phase: Phase, now: Instant) {
    connect.phases.start(phase, now);
}

/// Ends `phase` with `outcome` (once).
pub(crate) fn end_phase(connect: &mut Connect, phase: Phase, now: Instant, outcome: PhaseOutcome) {
    connect.phases.end(phase, now, outcome);
}

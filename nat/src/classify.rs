//! The NAT classifier machine: mapping and filtering tests (RFC 5780 §4) against several servers in
//! parallel, with every probe kept as evidence.
//!
//! For each server the classifier uses two fresh local sockets:
//!
//! - a **mapping socket**, shared by all servers, sends plain Binding requests to each server's
//!   primary address, to its alternate IP with the primary port, and to its alternate IP and port.
//!   Equal mapped addresses for every destination mean endpoint-independent mapping; equal only per
//!   destination IP, address-dependent; else address-and-port-dependent.
//! - a **filtering socket** per server first sends a plain request to the primary address (the
//!   control: it opens the mapping and measures the round-trip time), then asks the server to answer
//!   from its other IP and port, and from its other port. A reply to the first means endpoint-
//!   independent filtering; to the second only, address-dependent; to neither, address-and-port-
//!   dependent. A socket used for filtering never sends anywhere else, so its own traffic cannot open
//!   the filter it measures.
//!
//! A positive result (a reply) is conclusive. A negative one (no reply) is only believed after the
//! control succeeded and the request was retransmitted on a schedule scaled to the measured RTT, and
//! only if every server agrees: servers that disagree, or lie about their other address, make the
//! result `Inconclusive`, never a guess.
//!
//! The time is spent adaptively, within [`ClassifierConfig::budget`] (2 s by default): on a clean
//! path one train of filtering requests is enough and the answer comes as soon as the evidence is
//! decisive; when the loss measured on the probes that were answered leaves a server's silence
//! explainable by loss alone (more likely than [`ClassifierConfig::max_false_negative`]), that
//! filtering test is sent again as a new transaction, up to
//! [`ClassifierConfig::filter_attempts`] times, each silent train multiplying that chance by the
//! loss again, until it is conclusive or a reply settles it. When the budget is spent, whatever is
//! still running is cancelled and the answer is made from what came: an answer only if it is as
//! sure as required, else `Inconclusive` with its reason.
//!
//! This module is the probing machine ([`Classifier`]): sockets, probes, follow-ups, the
//! port-allocation rounds and the deadline. The answer itself is a pure function of the probes
//! (module `decide`, with its rules written out there): [`Classification`], and the confidence in
//! [`Report::confidence`].

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use p2pd_proto::Machine;
use std::collections::VecDeque;
use std::vec::Vec;

use p2pd_proto::client::{
    ClientConfig, ClientEvent, Failure, Request, Retransmit, StunClient, TransactionHandle,
};
use p2pd_proto::stun::ChangeRequest;
use p2pd_proto::{BindOptions, Instant, SocketId, SocketOp, SocketOutcome, Transmit, Verdict};

use crate::behaviour::{Behaviour, Filtering};
use crate::delta::{delta_test, DeltaConfig, DeltaReport, Observation};
use crate::servers::{ServerId, ServerList};
use p2pd_proto::Rng;

mod decide;

use decide::{filtering_of, mapped_of, mapping_of, Evidence};
pub use decide::{Classification, ClassifyInconclusive, Probe, ProbeKind, ProbeOutcome};

/// A STUN server the classifier may use: its canonical id and its two addresses.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerSpec {
    /// Canonical id (never a list position).
    pub id: u64,
    /// Primary IP and port.
    pub primary: SocketAddr,
    /// The alternate IP and port (RFC 5780 OTHER-ADDRESS), if known in advance. When `None`, the
    /// address the server reports is used.
    pub alternate: Option<SocketAddr>,
}

/// Classifier settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassifierConfig {
    /// The local IP to bind to (its unspecified address means "any"; then open internet cannot be
    /// told from a port-preserving NAT and is reported inconclusive).
    pub local_ip: IpAddr,
    /// Options for every bind.
    pub bind_options: BindOptions,
    /// How many servers to test in parallel (at least 2 for corroboration when available).
    pub parallel_servers: usize,
    /// Retransmission policy for probes whose reply is expected (controls and mapping probes).
    pub probe_retransmit: Retransmit,
    /// Transmissions of a filtering probe before its silence counts as "filtered".
    pub filter_transmissions: u32,
    /// The least spacing between those transmissions.
    pub filter_spacing: Duration,
    /// The least wait after the last of them.
    pub filter_final_wait: Duration,
    /// The highest acceptable chance that a "filtered" verdict is only loss (see
    /// [`Report::confidence`]); above it the answer is `Inconclusive`.
    pub max_false_negative: f64,
    /// The time budget of the mapping and filtering tests, from [`Classifier::start`]. While it
    /// lasts, a filtering test whose silence loss could still explain (see
    /// [`ClassifierConfig::filter_attempts`]) is sent again instead of being believed or given up
    /// on; when it is spent, probes still running are cancelled and the answer is made from what
    /// came (`Inconclusive` with its reason if that is not enough). The port-allocation test runs
    /// after it, within `deadline`.
    pub budget: Duration,
    /// Attempts (trains of `filter_transmissions`, each a new transaction) a filtering test may
    /// get on one server while its silence is not yet conclusive at the estimated loss. 1 never
    /// repeats it.
    pub filter_attempts: u32,
    /// Give up after this long.
    pub deadline: Duration,
    /// Probes per round of the port-allocation test (0 skips the test). Each probe is a fresh
    /// socket; probes run one after another so that no other mapping is created in between.
    pub allocation_probes: u16,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            local_ip: IpAddr::from([0, 0, 0, 0]),
            bind_options: BindOptions::default(),
            parallel_servers: 2,
            probe_retransmit: Retransmit::Rfc5389 {
                rto: Duration::from_millis(100),
                transmissions: 8,
                last_wait: 4,
                max_rto: Duration::from_millis(400),
            },
            filter_transmissions: 10,
            filter_spacing: Duration::from_millis(10),
            filter_final_wait: Duration::from_millis(50),
            max_false_negative: 1e-5,
            budget: Duration::from_secs(2),
            filter_attempts: 6,
            deadline: Duration::from_secs(8),
            allocation_probes: 12,
        }
    }
}

/// The full report: the answer, the public addresses seen and every probe.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The answer.
    pub classification: Classification,
    /// Distinct mapped addresses seen.
    pub public_addresses: Vec<SocketAddr>,
    /// Servers whose results were complete and consistent.
    pub servers_agreeing: usize,
    /// How sure the answer is, from 0 to 1: one minus the chance that a "filtered" verdict is only
    /// packet loss. That chance is the per-transmission loss estimated from every probe that got a
    /// reply (or none), raised to the number of unanswered transmissions, multiplied over the
    /// agreeing servers. Positive evidence (a reply) is certain: 1.0.
    pub confidence: f64,
    /// Every probe.
    pub probes: Vec<Probe>,
    /// Time from [`Classifier::start`] until the mapping and filtering tests ended (the
    /// classification was settled), or until the deadline cut them short. The port-allocation test
    /// runs after that.
    pub classified_in: Duration,
    /// The port-allocation test: its verdict and evidence, when it ran (only behind a NAT).
    pub allocation: Option<DeltaReport>,
}

impl Report {
    /// Feeds the servers' health: a server whose primary address answered counts a success (with
    /// the round-trip time of its first reply); one that never answered counts a failure. Only the
    /// probes to the primary address count, since the others test the NAT, not the server.
    pub fn update_health(&self, servers: &mut ServerList, now: Instant) {
        let mut seen: Vec<u64> = Vec::new();
        for p in &self.probes {
            if !matches!(p.kind, ProbeKind::MapPrimary | ProbeKind::FilterControl)
                || seen.contains(&p.server)
            {
                continue;
            }
            let id = ServerId::from_u64(p.server);
            match p.outcome {
                ProbeOutcome::Reply { rtt, .. } => {
                    seen.push(p.server);
                    servers.record_success(id, now, rtt);
                }
                ProbeOutcome::NoReply { .. } | ProbeOutcome::Failed | ProbeOutcome::Pending => {
                    let answered = self.probes.iter().any(|q| {
                        q.server == p.server && matches!(q.outcome, ProbeOutcome::Reply { .. })
                    });
                    if !answered {
                        seen.push(p.server);
                        servers.record_failure(id, now);
                    }
                }
                _ => {}
            }
        }
    }

    /// The NAT's behaviour, when mapping, filtering and port allocation are all known.
    pub fn behaviour(&self) -> Option<Behaviour> {
        let Classification::Nat { mapping, filtering } = self.classification else {
            return None;
        };
        let allocation = self.allocation.as_ref()?.verdict.allocation()?;
        Some(Behaviour::new(mapping, filtering).with_allocation(allocation))
    }
}

/// What the classifier reports.
#[derive(Clone, Debug, PartialEq)]
pub enum ClassifierEvent {
    /// The classification is finished; sockets are being closed.
    Done(Report),
    /// Every socket has been closed. The last event.
    Closed,
}

#[derive(Clone, Debug)]
struct ServerRun {
    spec: ServerSpec,
    filter_socket: Option<SocketId>,
    alternate: Option<SocketAddr>,
    /// The filtering trains' schedule, once the control's round-trip time is known.
    filter_policy: Option<Retransmit>,
    unusable: bool,
}

/// The classifier machine. See the module docs.
#[derive(Debug)]
pub struct Classifier {
    config: ClassifierConfig,
    client: StunClient,
    runs: Vec<ServerRun>,
    mapping_socket: Option<SocketId>,
    probes: Vec<Probe>,
    handles: Vec<(TransactionHandle, usize)>,
    events: VecDeque<ClassifierEvent>,
    deadline: Option<Instant>,
    started: Instant,
    classified_at: Option<Instant>,
    /// The budget ran out before the mapping and filtering tests ended.
    budget_spent: bool,
    done: bool,
    rng: Rng,
    allocation: Option<AllocationRun>,
    allocation_report: Option<DeltaReport>,
}

/// The port-allocation test in progress.
#[derive(Clone, Debug, Default)]
struct AllocationRun {
    /// Local ports planned for the current round.
    ports: Vec<u16>,
    /// Observations of the current round so far.
    current: Vec<Observation>,
    /// Round 1's observations once it is over.
    random: Option<Vec<Observation>>,
    /// The socket of the probe in flight.
    socket: Option<SocketId>,
    finished: bool,
}

impl Classifier {
    /// A classifier over `servers` (the first `parallel_servers` are used), seeded with `seed`.
    pub fn new(config: ClassifierConfig, servers: &[ServerSpec], seed: u64) -> Self {
        let client_config = ClientConfig {
            retransmit: config.probe_retransmit,
            max_transactions: 64,
            max_sockets: 16,
            ..ClientConfig::default()
        };
        let runs = servers
            .iter()
            .take(config.parallel_servers.max(1))
            .map(|spec| ServerRun {
                spec: *spec,
                filter_socket: None,
                alternate: spec.alternate,
                filter_policy: None,
                unusable: false,
            })
            .collect();
        Classifier {
            client: StunClient::new(client_config, seed),
            config,
            runs,
            mapping_socket: None,
            probes: Vec::new(),
            handles: Vec::new(),
            events: VecDeque::new(),
            deadline: None,
            started: Instant::ZERO,
            classified_at: None,
            budget_spent: false,
            done: false,
            rng: Rng::from_seed(seed ^ 0xA110_C8ED),
            allocation: None,
            allocation_report: None,
        }
    }

    /// Starts the tests: opens the sockets and sends the first probes.
    pub fn start(&mut self, now: Instant) {
        if self.deadline.is_some() || self.done {
            return;
        }
        self.deadline = Some(now.saturating_add(self.config.deadline));
        self.started = now;
        let local = SocketAddr::new(self.config.local_ip, 0);
        let options = self.config.bind_options;
        self.mapping_socket = self.client.open_socket(now, local, options).ok();
        for i in 0..self.runs.len() {
            let socket = self.client.open_socket(now, local, options).ok();
            let Some(run) = self.runs.get_mut(i) else {
                continue;
            };
            run.filter_socket = socket;
            let primary = run.spec.primary;
            if let Some(ms) = self.mapping_socket {
                self.probe(
                    now,
                    i,
                    ProbeKind::MapPrimary,
                    ms,
                    primary,
                    ChangeRequest::NONE,
                    None,
                );
            }
            if let Some(fs) = socket {
                self.probe(
                    now,
                    i,
                    ProbeKind::FilterControl,
                    fs,
                    primary,
                    ChangeRequest::NONE,
                    None,
                );
            }
        }
        if self.runs.is_empty() {
            self.finish(now);
            // Finishing closed the client: pass its `Closed` on now, as no later call may come.
            self.pump(now);
        }
    }

    /// Abandons the tests and closes every socket; [`ClassifierEvent::Closed`] follows. Idempotent.
    pub fn close(&mut self, now: Instant) {
        self.shut(now);
        self.pump(now);
    }

    fn shut(&mut self, now: Instant) {
        if !self.done {
            self.done = true;
            self.client.close(now);
        }
    }

    /// The probes so far.
    pub fn probes(&self) -> &[Probe] {
        &self.probes
    }

    #[allow(clippy::too_many_arguments)]
    fn probe(
        &mut self,
        now: Instant,
        run: usize,
        kind: ProbeKind,
        socket: SocketId,
        destination: SocketAddr,
        change: ChangeRequest,
        policy: Option<(Retransmit, SocketAddr)>,
    ) {
        let server = self.runs.get(run).map_or(0, |r| r.spec.id);
        let mut request = Request::binding(socket, destination).with_change(change);
        if let Some((retransmit, expect)) = policy {
            request = request.with_retransmit(retransmit).expect_from(expect);
        }
        let outcome = match self.client.start(now, request) {
            Ok(handle) => {
                self.handles.push((handle, self.probes.len()));
                ProbeOutcome::Pending
            }
            Err(_) => ProbeOutcome::Failed,
        };
        self.probes.push(Probe {
            server,
            kind,
            socket,
            destination,
            change,
            outcome,
        });
    }

    /// Reacts to the client's events: records outcomes, starts follow-up probes, decides; repeats
    /// until nothing changes (deciding closes the client, whose `Closed` must be passed on).
    fn pump(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some(event) = self.client.poll_event() {
                progressed = true;
                self.on_client_event(now, event);
            }
            if !self.done && self.allocation.is_none() && self.classified_at.is_none() {
                if now >= self.budget_end() {
                    progressed |= self.spend_budget(now);
                } else {
                    self.repeat_filtering(now);
                }
            }
            if !self.done {
                match &self.allocation {
                    None if self.handles.is_empty() || self.decided_early() => {
                        self.classified_at = Some(now);
                        if self.needs_allocation_test() {
                            self.allocation = Some(AllocationRun::default());
                            self.next_allocation_round(now);
                        } else {
                            self.finish(now);
                        }
                        progressed = true;
                    }
                    Some(run) if run.finished => {
                        self.finish(now);
                        progressed = true;
                    }
                    _ => {}
                }
            }
            if !progressed {
                break;
            }
        }
    }

    /// When the mapping and filtering tests must end.
    fn budget_end(&self) -> Instant {
        self.started.saturating_add(self.config.budget)
    }

    /// The budget is spent: cancels the probes still running (they end as `Pending`, which
    /// counts as no result). Whether anything was cancelled.
    fn spend_budget(&mut self, now: Instant) -> bool {
        if self.handles.is_empty() {
            return false;
        }
        self.budget_spent = true;
        let handles: Vec<TransactionHandle> = self.handles.iter().map(|(h, _)| *h).collect();
        for h in handles {
            self.client.cancel(now, h);
        }
        true
    }

    /// Sends again every filtering test whose silence is not yet conclusive on its own server
    /// (`decide::worth_repeating`), as a new transaction on the same socket with the same
    /// schedule, up to `filter_attempts` attempts per test.
    fn repeat_filtering(&mut self, now: Instant) {
        let usable = self.usable_servers();
        let wanted = decide::worth_repeating(&self.evidence(&usable));
        for (server, kind) in wanted {
            let attempts = self
                .probes
                .iter()
                .filter(|p| p.server == server && p.kind == kind)
                .count();
            if attempts >= usize::try_from(self.config.filter_attempts).unwrap_or(usize::MAX) {
                continue;
            }
            let Some(run) = self.runs.iter().position(|r| r.spec.id == server) else {
                continue;
            };
            let Some((socket, primary, alternate, policy)) = self.runs.get(run).and_then(|r| {
                Some((
                    r.filter_socket?,
                    r.spec.primary,
                    r.alternate?,
                    r.filter_policy?,
                ))
            }) else {
                continue;
            };
            let (change, expect) = match kind {
                ProbeKind::FilterChangeBoth => (ChangeRequest::BOTH, alternate),
                ProbeKind::FilterChangePort => (
                    ChangeRequest::PORT,
                    SocketAddr::new(primary.ip(), alternate.port()),
                ),
                _ => continue,
            };
            self.probe(
                now,
                run,
                kind,
                socket,
                primary,
                change,
                Some((policy, expect)),
            );
        }
    }

    fn on_client_event(&mut self, now: Instant, event: ClientEvent) {
        match event {
            ClientEvent::Transaction(t) => {
                let Some(pos) = self.handles.iter().position(|(h, _)| *h == t.id) else {
                    return;
                };
                let (_, index) = self.handles.swap_remove(pos);
                let outcome = match t.outcome {
                    Ok(r) => ProbeOutcome::Reply {
                        mapped: r.mapped,
                        other_address: r.other_address,
                        source: r.source,
                        rtt: r.rtt,
                        transmissions: r.transmissions,
                    },
                    Err(Failure::Timeout { transmissions }) => {
                        ProbeOutcome::NoReply { transmissions }
                    }
                    Err(Failure::ErrorResponse { code, .. }) => {
                        ProbeOutcome::ErrorResponse { code }
                    }
                    Err(Failure::Closed | Failure::Cancelled) => ProbeOutcome::Pending,
                    Err(_) => ProbeOutcome::Failed,
                };
                if let Some(p) = self.probes.get_mut(index) {
                    p.outcome = outcome;
                }
                if !self.done {
                    self.follow_up(now, index);
                }
            }
            ClientEvent::Closed => self.events.push_back(ClassifierEvent::Closed),
            _ => {}
        }
    }

    /// Starts the probes that depend on probe `index`'s result.
    fn follow_up(&mut self, now: Instant, index: usize) {
        let Some(probe) = self.probes.get(index).copied() else {
            return;
        };
        if matches!(
            probe.kind,
            ProbeKind::AllocationRandom | ProbeKind::AllocationConsecutive
        ) {
            self.allocation_probe_done(now, probe);
            return;
        }
        let Some(run) = self.runs.iter().position(|r| r.spec.id == probe.server) else {
            return;
        };
        let ProbeOutcome::Reply {
            other_address, rtt, ..
        } = probe.outcome
        else {
            if matches!(probe.kind, ProbeKind::MapPrimary | ProbeKind::FilterControl) {
                // Without its first answers a server cannot complete the tests.
                if let Some(r) = self.runs.get_mut(run) {
                    r.unusable = true;
                }
            }
            return;
        };
        if !matches!(probe.kind, ProbeKind::MapPrimary | ProbeKind::FilterControl) {
            return;
        }
        let Some(spec) = self.runs.get(run).map(|r| r.spec) else {
            return;
        };
        // The alternate address (from an answer to the primary address): the configured one wins; a reported one that is not really
        // "other" (same IP or same port as the primary) is a lie and makes the server unusable.
        let alternate = match (spec.alternate, other_address) {
            (Some(configured), _) => Some(configured),
            (None, Some(reported))
                if reported.ip() != spec.primary.ip() && reported.port() != spec.primary.port() =>
            {
                Some(reported)
            }
            _ => None,
        };
        let Some(alternate) = alternate else {
            if let Some(r) = self.runs.get_mut(run) {
                r.unusable = true;
            }
            return;
        };
        if let Some(r) = self.runs.get_mut(run) {
            r.alternate = Some(alternate);
        }
        match probe.kind {
            ProbeKind::MapPrimary => {
                let alt_ip = SocketAddr::new(alternate.ip(), spec.primary.port());
                self.probe(
                    now,
                    run,
                    ProbeKind::MapAlternateIp,
                    probe.socket,
                    alt_ip,
                    ChangeRequest::NONE,
                    None,
                );
                self.probe(
                    now,
                    run,
                    ProbeKind::MapAlternateBoth,
                    probe.socket,
                    alternate,
                    ChangeRequest::NONE,
                    None,
                );
            }
            ProbeKind::FilterControl => {
                // Silence counts only after many independent chances: the request is sent
                // `filter_transmissions` times at an even spacing (half the measured RTT, at least
                // `filter_spacing`, so a loss burst shorter than the whole train cannot hide a
                // reply), then a final wait of three RTTs (at least `filter_final_wait`) lets the
                // last replies arrive.
                let spacing = rtt
                    .checked_div(2)
                    .unwrap_or_default()
                    .max(self.config.filter_spacing);
                let final_wait = rtt.saturating_mul(3).max(self.config.filter_final_wait);
                let last_wait =
                    u32::try_from(final_wait.as_nanos().div_ceil(spacing.as_nanos().max(1)))
                        .unwrap_or(u32::MAX)
                        .max(1);
                let policy = Retransmit::Rfc5389 {
                    rto: spacing,
                    transmissions: self.config.filter_transmissions.max(1),
                    last_wait,
                    max_rto: spacing,
                };
                if let Some(r) = self.runs.get_mut(run) {
                    r.filter_policy = Some(policy);
                }
                let from_port = SocketAddr::new(spec.primary.ip(), alternate.port());
                self.probe(
                    now,
                    run,
                    ProbeKind::FilterChangeBoth,
                    probe.socket,
                    spec.primary,
                    ChangeRequest::BOTH,
                    Some((policy, alternate)),
                );
                self.probe(
                    now,
                    run,
                    ProbeKind::FilterChangePort,
                    probe.socket,
                    spec.primary,
                    ChangeRequest::PORT,
                    Some((policy, from_port)),
                );
            }
            _ => {}
        }
    }

    /// Whether the behaviour tests found a NAT, so its port allocation is worth measuring.
    fn needs_allocation_test(&self) -> bool {
        self.config.allocation_probes >= 2
            && matches!(self.current_classification(), Classification::Nat { .. })
    }

    fn current_classification(&self) -> Classification {
        let usable = self.usable_servers();
        decide::decide(&self.evidence(&usable))
    }

    /// The canonical ids of the servers whose results may still count, in configuration order.
    fn usable_servers(&self) -> Vec<u64> {
        self.runs
            .iter()
            .filter(|r| !r.unusable)
            .map(|r| r.spec.id)
            .collect()
    }

    /// What the decision reads, for the servers in `usable`.
    fn evidence<'a>(&'a self, usable: &'a [u64]) -> Evidence<'a> {
        Evidence {
            probes: &self.probes,
            usable,
            local: self.mapping_socket.and_then(|s| self.client.local_addr(s)),
            max_false_negative: self.config.max_false_negative,
        }
    }

    /// Plans the next round (random local ports, then consecutive ones) and starts its first probe.
    fn next_allocation_round(&mut self, now: Instant) {
        let n = usize::from(self.config.allocation_probes);
        let Some(run) = self.allocation.as_mut() else {
            return;
        };
        run.ports.clear();
        run.current.clear();
        if run.random.is_none() {
            while run.ports.len() < n {
                let port = u16::try_from(self.rng.below(64_512))
                    .unwrap_or(0)
                    .saturating_add(1024);
                if !run.ports.contains(&port) {
                    run.ports.push(port);
                }
            }
        } else {
            let span = u64::from(u16::MAX)
                .saturating_sub(1024)
                .saturating_sub(n as u64);
            let base = u16::try_from(self.rng.below(span))
                .unwrap_or(0)
                .saturating_add(1024);
            run.ports
                .extend((0..self.config.allocation_probes).map(|i| base.saturating_add(i)));
        }
        self.next_allocation_probe(now);
    }

    /// Opens the next planned socket and sends its probe, or ends the round.
    fn next_allocation_probe(&mut self, now: Instant) {
        let target = self
            .runs
            .iter()
            .find(|r| {
                !r.unusable && mapped_of(&self.probes, r.spec.id, ProbeKind::MapPrimary).is_some()
            })
            .map(|r| {
                (
                    self.runs.iter().position(|x| x.spec.id == r.spec.id),
                    r.spec.primary,
                )
            });
        let Some((Some(run_index), server)) = target else {
            self.end_allocation_round(now);
            return;
        };
        let Some(run) = self.allocation.as_mut() else {
            return;
        };
        let Some(&port) = run.ports.get(run.current.len()) else {
            self.end_allocation_round(now);
            return;
        };
        let kind = if run.random.is_none() {
            ProbeKind::AllocationRandom
        } else {
            ProbeKind::AllocationConsecutive
        };
        let local = SocketAddr::new(self.config.local_ip, port);
        match self
            .client
            .open_socket(now, local, self.config.bind_options)
        {
            Ok(socket) => {
                if let Some(run) = self.allocation.as_mut() {
                    run.socket = Some(socket);
                }
                self.probe(
                    now,
                    run_index,
                    kind,
                    socket,
                    server,
                    ChangeRequest::NONE,
                    None,
                );
            }
            Err(_) => {
                if let Some(run) = self.allocation.as_mut() {
                    run.current.push(Observation {
                        local: port,
                        mapped: None,
                    });
                }
                self.next_allocation_probe(now);
            }
        }
    }

    /// Records an allocation probe's result, releases its socket and moves on.
    fn allocation_probe_done(&mut self, now: Instant, probe: Probe) {
        let Some(run) = self.allocation.as_mut() else {
            return;
        };
        let planned = run.ports.get(run.current.len()).copied().unwrap_or(0);
        let local = self
            .client
            .local_addr(probe.socket)
            .map_or(planned, |a| a.port());
        let mapped = match probe.outcome {
            ProbeOutcome::Reply { mapped, .. } => Some(mapped.port()),
            _ => None,
        };
        run.current.push(Observation { local, mapped });
        run.socket = None;
        self.client.close_socket(now, probe.socket);
        self.next_allocation_probe(now);
    }

    /// Scores the round just finished; starts round 2 if round 1 asks for it.
    fn end_allocation_round(&mut self, now: Instant) {
        let cfg = DeltaConfig::for_probes(self.config.allocation_probes);
        let Some(run) = self.allocation.as_mut() else {
            return;
        };
        let observations = core::mem::take(&mut run.current);
        let report = match &run.random {
            None => {
                let report = delta_test(&cfg, &observations, None);
                run.random = Some(observations);
                report
            }
            Some(random) => delta_test(&cfg, random, Some(&observations)),
        };
        let needs_round_two = report.consecutive.is_none()
            && matches!(
                report.verdict,
                crate::delta::DeltaVerdict::Inconclusive {
                    reason: crate::delta::DeltaInconclusive::NeedConsecutiveRound
                }
            );
        self.allocation_report = Some(report);
        if needs_round_two {
            self.next_allocation_round(now);
        } else if let Some(run) = self.allocation.as_mut() {
            run.finished = true;
        }
    }

    /// Every usable server has shown endpoint-independent filtering and its mapping is known:
    /// nothing left can change the answer.
    fn decided_early(&self) -> bool {
        let usable: Vec<&ServerRun> = self.runs.iter().filter(|r| !r.unusable).collect();
        !usable.is_empty()
            && usable.iter().all(|r| {
                filtering_of(&self.probes, r.spec.id) == Some(Filtering::EndpointIndependent)
                    && mapping_of(&self.probes, r.spec.id).is_some()
            })
    }

    fn finish(&mut self, now: Instant) {
        if self.done {
            return;
        }
        let report = self.report(now, false);
        self.events.push_back(ClassifierEvent::Done(report));
        self.shut(now);
    }

    fn report(&self, now: Instant, deadline: bool) -> Report {
        let mut public_addresses: Vec<SocketAddr> = Vec::new();
        for p in &self.probes {
            if let ProbeOutcome::Reply { mapped, .. } = p.outcome {
                if !public_addresses.contains(&mapped) {
                    public_addresses.push(mapped);
                }
            }
        }
        let usable = self.usable_servers();
        let evidence = self.evidence(&usable);
        Report {
            classification: decide::classification(&evidence, deadline || self.budget_spent),
            public_addresses,
            servers_agreeing: decide::verdicts(&evidence).0.len(),
            confidence: 1.0 - decide::false_negative_chance(&evidence),
            probes: self.probes.clone(),
            classified_in: self
                .classified_at
                .unwrap_or(now)
                .saturating_duration_since(self.started),
            allocation: self.allocation_report.clone(),
        }
    }
}

impl p2pd_proto::Machine for Classifier {
    type Event = ClassifierEvent;

    /// Feeds a datagram to the probes.
    fn handle_datagram(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        data: &[u8],
    ) -> Verdict {
        let v = self.client.handle_datagram(now, socket, from, data);
        self.pump(now);
        v
    }

    /// Feeds a socket outcome.
    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        self.client.handle_socket_result(now, socket, outcome);
        self.pump(now);
    }

    /// Advances time.
    fn handle_timeout(&mut self, now: Instant) {
        if !self.done && self.deadline.is_some_and(|d| now >= d) {
            let report = self.report(now, true);
            self.events.push_back(ClassifierEvent::Done(report));
            self.shut(now);
        }
        self.client.handle_timeout(now);
        self.pump(now);
    }

    /// The next probe datagram.
    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        self.client.poll_transmit(buf)
    }

    /// The next socket intent.
    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        self.client.poll_socket_op()
    }

    /// The next event.
    fn poll_event(&mut self) -> Option<ClassifierEvent> {
        self.events.pop_front()
    }

    /// The next deadline.
    fn poll_timeout(&self) -> Option<Instant> {
        let client = self.client.poll_timeout();
        if self.done {
            return client;
        }
        let budget = (self.deadline.is_some()
            && self.allocation.is_none()
            && self.classified_at.is_none()
            && !self.handles.is_empty())
        .then(|| self.budget_end());
        [client, self.deadline, budget].into_iter().flatten().min()
    }
}

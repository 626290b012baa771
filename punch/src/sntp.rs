//! The SNTP client machine (RFC 4330): how far our wall clock is from one or more NTP servers'.
//!
//! # Time
//!
//! The machine reads no clock. The caller gives, in [`SntpConfig::unix_epoch_ns`], the Unix time
//! (nanoseconds) of [`Instant::ZERO`]; our **local wall clock** is then `unix_epoch_ns + now`. The
//! result is relative to that clock, so it stays right even if the epoch itself is off: it measures
//! how far *that* clock is from the server's.
//!
//! # Queries
//!
//! A request is 48 bytes, version 4, mode 3, all zero except the transmit timestamp, which holds a
//! random nonce from the seeded RNG (RFC 4330 §3 lets a client put any value there; the server
//! copies it into the reply's originate timestamp). The real send time T1 is remembered locally.
//! Each server is asked [`SntpConfig::samples_per_server`] times, [`SntpConfig::sample_spacing`]
//! apart; each sample is tried up to [`SntpConfig::attempts_per_sample`] times, waiting
//! [`SntpConfig::reply_timeout`] for each. A reply to an earlier attempt that arrives late is still a
//! valid sample (its own T1 is known), just one with a longer round trip.
//!
//! # Replies
//!
//! A datagram on our socket is checked in this order; the first failure drops it (and is counted):
//! at least 48 bytes, mode 4, version 3 or 4, originate timestamp equal to the nonce of a query we
//! remember, source equal to that query's server, not already answered; then kiss-o'-death (stratum
//! 0: that server is never asked again), unsynchronised (leap indicator 3 or stratum ≥ 16: that
//! server is never asked again), zero T3, zero T2, T3 before T2, root distance above
//! [`SntpConfig::max_root_distance`], negative round trip. See [`packet::check_reply`].
//!
//! # The estimate
//!
//! With T1 (our send), T2 (server receive), T3 (server send) and T4 (our receive), each sample has
//!
//! ```text
//! offset θ = ((T2 − T1) + (T3 − T4)) / 2      server clock − local clock
//! delay  δ = (T4 − T1) − (T3 − T2)            round trip, minus the server's processing
//! ```
//!
//! If the request took `a` and the reply `b` (real time), θ = true offset + (a − b)/2, and since
//! |a − b| ≤ a + b = δ the error is at most δ/2. The best sample of a server is its smallest δ (the
//! clock filter); among servers the sample with the smallest uncertainty wins, where
//!
//! ```text
//! uncertainty = ⌈δ/2⌉ + root dispersion + ⌈root delay/2⌉ + local error allowance + 1 ns
//! ```
//!
//! (root delay and dispersion bound the server's own distance from true time; the allowance covers
//! the caller's clock reading; 1 ns covers the NTP fraction's truncation). A positive
//! [`ClockEstimate::offset_ns`] means the server is ahead: `true time ≈ local wall clock + offset`.
//!
//! # Life cycle
//!
//! Open a socket with [`SntpClient::open_socket`] (a bind intent; the machine closes it) or hand it
//! one with [`SntpClient::use_socket`] (the caller's; never closed). Queries begin once the socket
//! is ready. When every server is done the machine emits one [`SntpEvent::Finished`]. `close` emits
//! the close intent for an owned socket once, then [`SntpEvent::Closed`]; closing before the end
//! also finishes with [`SntpFailure::Closed`].

mod config;
pub mod packet;
mod report;
#[cfg(test)]
mod tests;

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::VecDeque;

use p2pd_proto::stun::DecodeError;
use p2pd_proto::{
    BindOptions, DropReason, Instant, OpKind, Rng, SocketId, SocketOp, SocketOutcome, Transmit,
    Transport, Verdict,
};

use crate::clock::offset_and_delay;
pub use config::{
    SntpApiError, SntpConfig, SntpConfigError, MAX_ATTEMPTS_PER_SAMPLE, MAX_SAMPLES_PER_SERVER,
    MAX_SERVERS,
};
pub use packet::{KissCode, NtpPacket, RejectReason, PACKET_LEN};
pub use report::{ClockEstimate, SntpEvent, SntpFailure, SntpSample, SntpStats};

/// How many sent queries are remembered to match late replies (the oldest is forgotten first).
const QUERY_MEMORY: usize = 64;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum SocketState {
    Binding,
    Ready(SocketAddr),
}

#[derive(Copy, Clone, Debug)]
struct OurSocket {
    id: SocketId,
    owned: bool,
    state: SocketState,
}

/// How a server's part ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum ServerEnd {
    /// Every sample was asked for.
    Done,
    /// A kiss-o'-death.
    Kissed(KissCode),
    /// An unsynchronised clock.
    Unsynchronized,
}

#[derive(Clone, Debug)]
struct ServerState {
    address: SocketAddr,
    /// Samples begun (the current one included).
    slot: u32,
    /// Transmissions of the current sample.
    attempts: u32,
    /// The nonce and give-up time of the query in flight.
    awaiting: Option<(u64, Instant)>,
    /// When to send the next query.
    next_send: Option<Instant>,
    end: Option<ServerEnd>,
    best: Option<SntpSample>,
}

#[derive(Copy, Clone, Debug)]
struct Query {
    nonce: u64,
    server: usize,
    slot: u32,
    sent_at: Instant,
    answered: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for a socket.
    Idle,
    Running,
    Finished,
    Closed,
}

/// The SNTP client machine. See the module docs.
#[derive(Debug)]
pub struct SntpClient {
    config: SntpConfig,
    rng: Rng,
    socket: Option<OurSocket>,
    servers: Vec<ServerState>,
    queries: VecDeque<Query>,
    ops: VecDeque<SocketOp>,
    events: VecDeque<SntpEvent>,
    last_reject: Option<RejectReason>,
    phase: Phase,
    now: Instant,
    deadline: Option<Instant>,
    stats: SntpStats,
}

impl SntpClient {
    /// A machine whose nonces come from `seed`.
    pub fn new(config: SntpConfig, seed: u64) -> Result<SntpClient, SntpConfigError> {
        if config.servers.is_empty() || config.servers.len() > MAX_SERVERS {
            return Err(SntpConfigError::ServerCount);
        }
        if !(1..=MAX_SAMPLES_PER_SERVER).contains(&config.samples_per_server) {
            return Err(SntpConfigError::SampleCount);
        }
        if !(1..=MAX_ATTEMPTS_PER_SAMPLE).contains(&config.attempts_per_sample) {
            return Err(SntpConfigError::AttemptCount);
        }
        if config.reply_timeout.is_zero() {
            return Err(SntpConfigError::ZeroTimeout);
        }
        let servers = config
            .servers
            .iter()
            .map(|&address| ServerState {
                address,
                slot: 0,
                attempts: 0,
                awaiting: None,
                next_send: None,
                end: None,
                best: None,
            })
            .collect();
        Ok(SntpClient {
            config,
            rng: Rng::from_seed(seed),
            socket: None,
            servers,
            queries: VecDeque::with_capacity(QUERY_MEMORY),
            ops: VecDeque::new(),
            events: VecDeque::new(),
            last_reject: None,
            phase: Phase::Idle,
            now: Instant::ZERO,
            deadline: None,
            stats: SntpStats::default(),
        })
    }

    /// The counters.
    pub fn stats(&self) -> SntpStats {
        self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &SntpConfig {
        &self.config
    }

    /// The socket, once set.
    pub fn socket(&self) -> Option<SocketId> {
        self.socket.map(|s| s.id)
    }

    /// Whether [`SntpEvent::Finished`] has been emitted (or queued).
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished | Phase::Closed)
    }

    /// Whether [`SntpClient::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The local wall clock at `now`: Unix nanoseconds.
    pub fn wall_clock_ns(&self, now: Instant) -> i128 {
        i128::from(self.config.unix_epoch_ns).saturating_add(i128::from(now.as_nanos()))
    }

    /// Asks for a UDP socket bound to `local` (a bind intent, id 1); queries begin once it is
    /// bound. The machine closes it on [`SntpClient::close`].
    pub fn open_socket(
        &mut self,
        now: Instant,
        local: SocketAddr,
        options: BindOptions,
    ) -> Result<SocketId, SntpApiError> {
        self.check_socket(now, local)?;
        let id = SocketId(1);
        self.socket = Some(OurSocket {
            id,
            owned: true,
            state: SocketState::Binding,
        });
        self.ops.push_back(SocketOp::Bind {
            socket: id,
            transport: Transport::Udp,
            local,
            options,
        });
        Ok(id)
    }

    /// Uses the caller's bound UDP socket `socket` (local address `local`); queries begin at once.
    /// The machine never closes it.
    pub fn use_socket(
        &mut self,
        now: Instant,
        socket: SocketId,
        local: SocketAddr,
    ) -> Result<(), SntpApiError> {
        self.check_socket(now, local)?;
        self.socket = Some(OurSocket {
            id: socket,
            owned: false,
            state: SocketState::Ready(local),
        });
        self.begin(now);
        Ok(())
    }

    /// Ends the machine: if it has not finished, [`SntpEvent::Finished`] with
    /// [`SntpFailure::Closed`]; a close intent for a socket it opened; then [`SntpEvent::Closed`].
    /// Idempotent.
    pub fn close(&mut self, now: Instant) {
        self.advance(now);
        if self.phase == Phase::Closed {
            return;
        }
        if self.phase != Phase::Finished {
            self.events
                .push_back(SntpEvent::Finished(Err(SntpFailure::Closed)));
        }
        self.phase = Phase::Closed;
        if let Some(socket) = self.socket.take() {
            if socket.owned {
                self.ops.push_back(SocketOp::Close { socket: socket.id });
            }
        }
        self.queries.clear();
        self.events.push_back(SntpEvent::Closed);
        self.deadline = None;
    }

    fn check_socket(&mut self, now: Instant, local: SocketAddr) -> Result<(), SntpApiError> {
        self.advance(now);
        if self.phase == Phase::Closed {
            return Err(SntpApiError::Closed);
        }
        if self.socket.is_some() || self.phase != Phase::Idle {
            return Err(SntpApiError::SocketAlreadySet);
        }
        if self
            .config
            .servers
            .iter()
            .any(|s| s.is_ipv4() != local.is_ipv4())
        {
            return Err(SntpApiError::AddressFamilyMismatch);
        }
        Ok(())
    }

    fn begin(&mut self, now: Instant) {
        if self.phase != Phase::Idle {
            return;
        }
        self.phase = Phase::Running;
        for server in &mut self.servers {
            server.slot = 1;
            server.next_send = Some(now);
        }
        self.refresh_deadline();
    }

    fn receive(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        data: &[u8],
    ) -> Verdict {
        if self.socket.is_none_or(|s| s.id != socket) {
            if self.phase == Phase::Closed {
                return Verdict::Dropped(DropReason::Closed);
            }
            self.stats.wrong_source = self.stats.wrong_source.saturating_add(1);
            return Verdict::Dropped(DropReason::UnknownSocket);
        }
        if self.phase != Phase::Running {
            self.stats.late = self.stats.late.saturating_add(1);
            return Verdict::Dropped(DropReason::Unexpected);
        }
        let packet = match NtpPacket::decode(data) {
            Ok(p) => p,
            Err(_) => {
                self.stats.too_short = self.stats.too_short.saturating_add(1);
                return Verdict::Dropped(DropReason::Malformed(DecodeError::TooShort));
            }
        };
        if packet::check_header(&packet).is_err() {
            self.stats.wrong_header = self.stats.wrong_header.saturating_add(1);
            return Verdict::Dropped(DropReason::Unexpected);
        }
        let Some(position) = self
            .queries
            .iter()
            .position(|q| q.nonce == packet.originate_ts)
        else {
            self.stats.unknown_originate = self.stats.unknown_originate.saturating_add(1);
            return Verdict::Dropped(DropReason::UnknownTransaction);
        };
        let Some(query) = self.queries.get(position).copied() else {
            return Verdict::Dropped(DropReason::UnknownTransaction);
        };
        let Some(server) = self.servers.get(query.server).map(|s| s.address) else {
            return Verdict::Dropped(DropReason::UnknownTransaction);
        };
        if canonical(from) != canonical(server) {
            self.stats.wrong_source = self.stats.wrong_source.saturating_add(1);
            return Verdict::Dropped(DropReason::WrongSource);
        }
        if query.answered {
            self.stats.duplicates = self.stats.duplicates.saturating_add(1);
            return Verdict::Dropped(DropReason::Duplicate);
        }
        if let Some(q) = self.queries.get_mut(position) {
            q.answered = true;
        }
        let max_root_ns = duration_nanos(self.config.max_root_distance);
        let sample = packet::check_reply(&packet, max_root_ns)
            .and_then(|()| self.sample(&packet, server, query.sent_at, now));
        match sample {
            Ok(sample) => {
                self.stats.samples = self.stats.samples.saturating_add(1);
                if let Some(state) = self.servers.get_mut(query.server) {
                    if state.best.is_none_or(|b| sample.delay_ns < b.delay_ns) {
                        state.best = Some(sample);
                    }
                }
                self.events.push_back(SntpEvent::Sample(sample));
                self.sample_ended(query, now);
                Verdict::Consumed
            }
            Err(reason) => {
                self.last_reject = Some(reason);
                let end = match reason {
                    RejectReason::Kiss(code) => {
                        self.stats.kisses = self.stats.kisses.saturating_add(1);
                        Some(ServerEnd::Kissed(code))
                    }
                    RejectReason::Unsynchronized { .. } => {
                        self.stats.unsynchronized = self.stats.unsynchronized.saturating_add(1);
                        Some(ServerEnd::Unsynchronized)
                    }
                    _ => {
                        self.stats.bad_times = self.stats.bad_times.saturating_add(1);
                        None
                    }
                };
                match end {
                    Some(end) => self.end_server(query.server, end),
                    None => self.sample_ended(query, now),
                }
                Verdict::Dropped(DropReason::Unexpected)
            }
        }
    }

    /// The sample of a checked reply, or why its timestamps are implausible.
    fn sample(
        &self,
        packet: &NtpPacket,
        server: SocketAddr,
        sent_at: Instant,
        now: Instant,
    ) -> Result<SntpSample, RejectReason> {
        let t1 = self.wall_clock_ns(sent_at);
        let t4 = self.wall_clock_ns(now);
        let t2 = packet::ntp_to_unix_nanos(packet.receive_ts, t1);
        let t3 = packet::ntp_to_unix_nanos(packet.transmit_ts, t1);
        let (offset_ns, delay_ns) =
            offset_and_delay(t1, t2, t3, t4).map_err(|_| RejectReason::ImplausibleTimes)?;
        let root_delay_ns = packet::short_to_nanos(packet.root_delay);
        let root_dispersion_ns = packet::short_to_nanos(packet.root_dispersion);
        let uncertainty_ns = delay_ns
            .div_ceil(2)
            .saturating_add(root_dispersion_ns)
            .saturating_add(root_delay_ns.div_ceil(2))
            .saturating_add(duration_nanos(self.config.local_error))
            .saturating_add(1);
        Ok(SntpSample {
            server,
            offset_ns,
            delay_ns,
            root_delay_ns,
            root_dispersion_ns,
            stratum: packet.stratum,
            uncertainty_ns,
            received_at: now,
        })
    }

    /// A reply (good or bad) answered `query`: if it belongs to its server's current sample, that
    /// sample is over.
    fn sample_ended(&mut self, query: Query, now: Instant) {
        let current = self
            .servers
            .get(query.server)
            .is_some_and(|s| s.end.is_none() && s.slot == query.slot);
        if current {
            self.next_sample(query.server, now);
        }
    }

    /// The query in flight to server `index` got no reply in time.
    fn query_lost(&mut self, index: usize, now: Instant) {
        let attempts = self.config.attempts_per_sample;
        let Some(server) = self.servers.get_mut(index) else {
            return;
        };
        server.awaiting = None;
        if server.attempts < attempts {
            server.next_send = Some(now);
        } else {
            self.next_sample(index, now);
        }
    }

    fn next_sample(&mut self, index: usize, now: Instant) {
        let (samples, spacing) = (self.config.samples_per_server, self.config.sample_spacing);
        let Some(server) = self.servers.get_mut(index) else {
            return;
        };
        server.awaiting = None;
        if server.slot < samples {
            server.slot = server.slot.saturating_add(1);
            server.attempts = 0;
            server.next_send = Some(now.saturating_add(spacing));
        } else {
            server.next_send = None;
            server.end = Some(ServerEnd::Done);
        }
    }

    fn end_server(&mut self, index: usize, end: ServerEnd) {
        if let Some(server) = self.servers.get_mut(index) {
            server.awaiting = None;
            server.next_send = None;
            if server.end.is_none_or(|e| e == ServerEnd::Done) {
                server.end = Some(end);
            }
        }
    }

    fn after_input(&mut self, _now: Instant) {
        if self.phase == Phase::Running && self.servers.iter().all(|s| s.end.is_some()) {
            let result = self.conclude();
            self.finish(result);
        }
        self.refresh_deadline();
    }

    fn conclude(&self) -> Result<ClockEstimate, SntpFailure> {
        let best = self
            .servers
            .iter()
            .filter_map(|s| s.best)
            .min_by_key(|s| (s.uncertainty_ns, s.delay_ns));
        if let Some(best) = best {
            return Ok(ClockEstimate {
                offset_ns: best.offset_ns,
                uncertainty_ns: best.uncertainty_ns,
                server: best.server,
                delay_ns: best.delay_ns,
                stratum: best.stratum,
                samples: self.stats.samples,
                measured_at: best.received_at,
            });
        }
        let kiss_codes: Vec<KissCode> = self
            .servers
            .iter()
            .filter_map(|s| match s.end {
                Some(ServerEnd::Kissed(code)) => Some(code),
                _ => None,
            })
            .collect();
        if kiss_codes.len() == self.servers.len() {
            return Err(SntpFailure::AllServersRefused { kiss_codes });
        }
        if self
            .servers
            .iter()
            .any(|s| s.end == Some(ServerEnd::Unsynchronized))
        {
            return Err(SntpFailure::Unsynchronized);
        }
        match self.last_reject {
            Some(last) => Err(SntpFailure::BadReplies { last }),
            None => Err(SntpFailure::Timeout {
                queries: self.stats.queries.saturating_add(self.stats.retries),
            }),
        }
    }

    fn finish(&mut self, result: Result<ClockEstimate, SntpFailure>) {
        if matches!(self.phase, Phase::Finished | Phase::Closed) {
            return;
        }
        self.phase = Phase::Finished;
        for server in &mut self.servers {
            server.awaiting = None;
            server.next_send = None;
        }
        self.events.push_back(SntpEvent::Finished(result));
    }

    fn fresh_nonce(&mut self) -> u64 {
        let mut nonce = self.rng.next_u64();
        for _ in 0..8 {
            if nonce != 0 && !self.queries.iter().any(|q| q.nonce == nonce) {
                break;
            }
            nonce = self.rng.next_u64();
        }
        nonce.max(1)
    }

    fn advance(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    fn refresh_deadline(&mut self) {
        self.deadline = if self.phase == Phase::Running {
            self.servers
                .iter()
                .filter(|s| s.end.is_none())
                .filter_map(|s| s.awaiting.map(|(_, at)| at).or(s.next_send))
                .min()
        } else {
            None
        };
    }
}

/// A duration in whole nanoseconds, saturating.
fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Maps IPv4-mapped IPv6 addresses to IPv4, so dual-stack sockets compare equal.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

impl p2pd_proto::Machine for SntpClient {
    type Event = SntpEvent;

    /// Handles a datagram received on `socket` from `from`. Anything but an acceptable reply is
    /// counted and dropped.
    fn handle_datagram(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        data: &[u8],
    ) -> Verdict {
        self.advance(now);
        let verdict = self.receive(now, socket, from, data);
        self.after_input(now);
        verdict
    }

    /// Handles the answer to the bind intent, or a socket error.
    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        self.advance(now);
        let Some(ours) = self.socket.filter(|s| s.id == socket) else {
            return;
        };
        match outcome {
            SocketOutcome::Bound { local } if ours.state == SocketState::Binding => {
                self.socket = Some(OurSocket {
                    state: SocketState::Ready(local),
                    ..ours
                });
                self.events
                    .push_back(SntpEvent::SocketReady { socket, local });
                self.begin(now);
            }
            SocketOutcome::Failed {
                op: OpKind::Bind,
                error,
                ..
            } if ours.state == SocketState::Binding => {
                // Never bound: nothing to close.
                self.socket = None;
                self.finish(Err(SntpFailure::SocketFailed(error)));
            }
            SocketOutcome::Failed {
                op: OpKind::Send, ..
            } => {
                // The reply timeout already covers a lost send.
                self.stats.send_failures = self.stats.send_failures.saturating_add(1);
            }
            _ => {}
        }
        self.after_input(now);
    }

    /// Gives up on or retries every query whose reply is overdue.
    fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        if self.phase == Phase::Running {
            for index in 0..self.servers.len() {
                let overdue = self
                    .servers
                    .get(index)
                    .and_then(|s| s.awaiting)
                    .is_some_and(|(_, give_up)| give_up <= now);
                if overdue {
                    self.query_lost(index, now);
                }
            }
        }
        self.after_input(now);
    }

    /// Writes the next due query into `buf` (at least [`PACKET_LEN`] bytes).
    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        if self.phase != Phase::Running {
            return None;
        }
        let socket = self.socket?;
        let now = self.now;
        let index = self.servers.iter().position(|s| {
            s.end.is_none() && s.awaiting.is_none() && s.next_send.is_some_and(|at| at <= now)
        })?;
        let nonce = self.fresh_nonce();
        let len = NtpPacket::client_request(nonce).encode(buf)?;
        let reply_timeout = self.config.reply_timeout;
        let server = self.servers.get_mut(index)?;
        server.attempts = server.attempts.saturating_add(1);
        server.awaiting = Some((nonce, now.saturating_add(reply_timeout)));
        server.next_send = None;
        let (slot, destination, first) = (server.slot, server.address, server.attempts == 1);
        if first {
            self.stats.queries = self.stats.queries.saturating_add(1);
        } else {
            self.stats.retries = self.stats.retries.saturating_add(1);
        }
        if self.queries.len() >= QUERY_MEMORY {
            self.queries.pop_front();
        }
        self.queries.push_back(Query {
            nonce,
            server: index,
            slot,
            sent_at: now,
            answered: false,
        });
        self.refresh_deadline();
        Some(Transmit {
            socket: socket.id,
            destination,
            len,
        })
    }

    /// The next socket intent.
    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        self.ops.pop_front()
    }

    /// The next event.
    fn poll_event(&mut self) -> Option<SntpEvent> {
        self.events.pop_front()
    }

    /// The next deadline (cached).
    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
}

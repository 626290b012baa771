//! The PNP server machine: UDP datagrams and length-prefixed TCP streams in, sealed replies out.

use core::fmt;
use core::net::SocketAddr;
use core::time::Duration;
use std::collections::VecDeque;

use p2pd_proto::accept::{
    AcceptPool, ConnectionLimits, EvictReason, Expiry, LimitsError, Listener, PoolConfig,
    PoolEvent, SlotData,
};
use p2pd_proto::{
    BindOptions, DropReason, Instant, IoError, OpKind, Rng, SocketId, SocketOp, SocketOutcome,
    Transmit, Transport, Verdict,
};

use crate::envelope::{self, OpenError, Opener, NONCE_LEN};
use crate::identity::{Identity, PublicKey};

use super::handler::{self, RuleCounters, Rules};
use super::limits::{RateLimiter, RateVerdict, ReplyCache};
use super::store::{NameStore, SourceKey};
use super::wire::{
    self, ErrorCode, FrameEvent, FrameReader, Reply, ReplyBody, Request, MAX_MESSAGE_LEN,
};

/// The server's UDP socket.
pub const UDP_SOCKET: SocketId = SocketId(0);
/// The server's TCP listening socket.
pub const TCP_LISTENER: SocketId = SocketId(1);
/// The most TCP connections one server holds.
pub const MAX_CONNECTIONS: usize = 4096;
const FIRST_CONNECTION_ID: u32 = 2;
/// The longest [`PnpServerConfig::max_lifetime`] a server accepts (366 days): no configuration
/// lets a name be registered for longer, and every expiry the server stores stays far from the
/// limits of its integer types.
pub const MAX_RECORD_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);
/// The most clock skew ([`PnpServerConfig::max_future_ms`]) a server accepts: one hour. It is
/// added to the lifetime when checking an expiry, so it is bounded too.
pub const MAX_CLOCK_SKEW_MS: u64 = 3_600_000;

/// Server settings. [`PnpServerConfig::new`] gives sensible defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PnpServerConfig {
    /// Where to bind the UDP socket (`None`: no UDP).
    pub udp: Option<SocketAddr>,
    /// Where to bind the TCP listener (`None`: no TCP).
    pub tcp: Option<SocketAddr>,
    /// Options for both binds.
    pub bind_options: BindOptions,
    /// The Unix time in milliseconds at [`Instant::ZERO`]: the machine computes wall-clock time
    /// as `unix_epoch_ms + (now - Instant::ZERO)` for envelope freshness and record expiry. The
    /// runtime sets it from the system clock when it fixes its `Instant` epoch.
    pub unix_epoch_ms: u64,
    /// Requests older than this (by their envelope timestamp) are dropped as stale.
    pub max_age_ms: u64,
    /// Requests further ahead of the server's clock than this are dropped (at most
    /// [`MAX_CLOCK_SKEW_MS`]).
    pub max_future_ms: u64,
    /// How many accepted requests the replay cache remembers; size it for the request rate over
    /// `max_age_ms + max_future_ms` (a too small cache rejects late genuine requests, never
    /// accepts replays).
    pub replay_capacity: usize,
    /// How many replies are kept to answer retransmitted requests.
    pub reply_cache_capacity: usize,
    /// Names one source (IPv4 address, IPv6 /64) may hold.
    pub max_names_per_source: u64,
    /// Requests one source may make per `rate_window`.
    pub requests_per_window: u32,
    /// The rate limiter's window.
    pub rate_window: Duration,
    /// How many sources the rate limiter tracks at once. A full table never refuses a new
    /// source: it forgets a one-shot or stale one instead (see [`PnpServerStats::rate_evictions`]),
    /// so a flood of spoofed sources cannot lock new clients out.
    pub rate_table_capacity: usize,
    /// The longest lifetime a record may have (its expiry minus now; at most
    /// [`MAX_RECORD_LIFETIME`]). A record expiring later is refused with `InvalidExpiry`.
    pub max_lifetime: Duration,
    /// TCP connections: how many (1 to [`MAX_CONNECTIONS`]), how many per source, the message
    /// and idle deadlines. [`PnpServerConfig::new`]: 64 connections, 8 per source, 10 s per
    /// message, 10 s idle (see [`ConnectionLimits`] for how they keep one source from locking
    /// others out).
    pub tcp_limits: ConnectionLimits,
    /// The listen backlog.
    pub listen_backlog: u32,
    /// How many replies may wait to be sent.
    pub transmit_queue_capacity: usize,
    /// How often expired names are pruned from the store.
    pub prune_interval: Duration,
    /// The most expired names one prune step removes (at least 1), so that a mass expiry never
    /// stalls the server in one store call (a store may remove fewer, to bound its time). A step
    /// that removed names is followed by the next one after
    /// [`PnpServerConfig::prune_step_pause`], requests being served in between; a step that found
    /// none waits `prune_interval`.
    pub prune_batch: u64,
    /// The pause between two prune steps while expired names remain.
    pub prune_step_pause: Duration,
}

impl PnpServerConfig {
    /// A server on `udp` and `tcp` with default limits; `unix_epoch_ms` as documented on the field.
    pub fn new(udp: SocketAddr, tcp: SocketAddr, unix_epoch_ms: u64) -> Self {
        PnpServerConfig {
            udp: Some(udp),
            tcp: Some(tcp),
            bind_options: BindOptions::default(),
            unix_epoch_ms,
            max_age_ms: 30_000,
            max_future_ms: 5_000,
            replay_capacity: 16_384,
            reply_cache_capacity: 256,
            max_names_per_source: 32,
            requests_per_window: 20,
            rate_window: Duration::from_secs(1),
            rate_table_capacity: 4096,
            max_lifetime: Duration::from_secs(7 * 24 * 3600),
            tcp_limits: ConnectionLimits {
                idle_timeout: Duration::from_secs(10),
                ..ConnectionLimits::DEFAULT
            },
            listen_backlog: 128,
            transmit_queue_capacity: 256,
            prune_interval: Duration::from_secs(60),
            prune_batch: 1_000,
            prune_step_pause: Duration::from_millis(10),
        }
    }
}

/// Why a configuration is unusable.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PnpConfigError {
    /// Neither UDP nor TCP is configured.
    NoTransport,
    /// `tcp_limits.max_connections` is 0 (with TCP) or above [`MAX_CONNECTIONS`].
    BadConnectionLimit,
    /// With TCP, `tcp_limits` allows no connection per source or has a zero timeout.
    BadTcpLimits(LimitsError),
    /// A capacity that must be non-zero is zero.
    ZeroCapacity,
    /// `max_lifetime` is above [`MAX_RECORD_LIFETIME`].
    LifetimeTooLong,
    /// `max_future_ms` is above [`MAX_CLOCK_SKEW_MS`].
    SkewTooLarge,
}

impl fmt::Display for PnpConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PnpConfigError::NoTransport => f.write_str("neither udp nor tcp configured"),
            PnpConfigError::BadConnectionLimit => {
                write!(f, "tcp connection limit must be 1..={MAX_CONNECTIONS}")
            }
            PnpConfigError::BadTcpLimits(e) => e.fmt(f),
            PnpConfigError::ZeroCapacity => f.write_str("a capacity is 0"),
            PnpConfigError::LifetimeTooLong => write!(
                f,
                "the longest record lifetime is {} days",
                MAX_RECORD_LIFETIME.as_secs() / 86_400
            ),
            PnpConfigError::SkewTooLarge => {
                write!(
                    f,
                    "the clock skew allowed is at most {MAX_CLOCK_SKEW_MS} ms"
                )
            }
        }
    }
}

impl std::error::Error for PnpConfigError {}

/// What the server reports.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PnpServerEvent {
    /// A socket is bound (UDP) or bound and listening (TCP).
    Listening {
        /// Which one.
        transport: Transport,
        /// Its local address.
        local: SocketAddr,
    },
    /// A socket could not be bound or could not listen; the server works without it.
    SocketFailed {
        /// Which one.
        transport: Transport,
        /// What failed.
        op: OpKind,
        /// Why.
        error: IoError,
    },
    /// The server is closed; every socket it owned has had its close intent. The last event.
    Closed,
}

/// Counters.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct PnpServerStats {
    /// Requests opened and answered (including error replies).
    pub requests: u64,
    /// Error replies among them.
    pub error_replies: u64,
    /// Retransmitted requests answered from the reply cache.
    pub duplicates: u64,
    /// Messages larger than [`MAX_MESSAGE_LEN`], dropped unopened.
    pub oversize: u64,
    /// Messages that are not envelopes of our version.
    pub not_envelopes: u64,
    /// Envelopes refused as stale or from the future.
    pub stale: u64,
    /// Envelopes refused as replays.
    pub replays: u64,
    /// Envelopes that failed to open otherwise (signature, recipient, decryption, framing).
    pub bad_envelopes: u64,
    /// Requests over their source's rate (answered once per window, then dropped).
    pub rate_limited: u64,
    /// Sources the rate table forgot to make room for a new source (the table never refuses
    /// one; a spoofed-source flood shows here, not as refused clients).
    pub rate_evictions: u64,
    /// UDP replies not sent because they would have been larger than the request, even as a
    /// `PaddingRequired` error.
    pub amplification_dropped: u64,
    /// Replies dropped because the transmit queue was full.
    pub queue_full: u64,
    /// Store failures (answered `ServerBusy`).
    pub store_errors: u64,
    /// Names removed by pruning.
    pub pruned: u64,
    /// Prune steps run (each removes at most [`PnpServerConfig::prune_batch`] names).
    pub prune_steps: u64,
    /// TCP connections accepted.
    pub connections_accepted: u64,
    /// TCP connections closed by the server (each exactly once).
    pub connections_closed: u64,
    /// TCP connections closed for a bad frame length.
    pub bad_frames: u64,
    /// TCP connections closed for idleness.
    pub idle_closed: u64,
    /// TCP connections closed because a request was not whole and answered within the message
    /// timeout of its first byte.
    pub message_timeouts: u64,
    /// TCP connections closed to make room for a newcomer from the same source (at its cap).
    pub evicted_source_full: u64,
    /// TCP connections closed to make room for a newcomer while every connection was open.
    pub evicted_pool_full: u64,
    /// Sends the runtime reported as failed.
    pub send_failures: u64,
}

/// A connection slot reassembles length-prefixed frames; each connection starts a fresh reader.
impl SlotData for FrameReader {
    fn reset(&mut self) {
        *self = FrameReader::new(MAX_MESSAGE_LEN);
    }
}

#[derive(Clone, Debug)]
struct Outgoing {
    socket: SocketId,
    destination: SocketAddr,
    bytes: Vec<u8>,
}

/// The PNP name registry server. See the [module docs](super) for the protocol.
///
/// Construct it, answer its bind intents, then feed it datagrams, stream chunks, socket outcomes
/// and timeouts; drain its outputs after every input.
pub struct PnpServer<S: NameStore> {
    config: PnpServerConfig,
    identity: Identity,
    store: S,
    rng: Rng,
    opener: Opener,
    rates: RateLimiter,
    replies: ReplyCache,
    rules: Rules,
    udp: Listener,
    tcp: AcceptPool<FrameReader>,
    transmits: VecDeque<Outgoing>,
    ops: VecDeque<SocketOp>,
    events: VecDeque<PnpServerEvent>,
    next_prune: Instant,
    timeout: Option<Instant>,
    closed: bool,
    stats: PnpServerStats,
}

impl<S: NameStore> fmt::Debug for PnpServer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PnpServer")
            .field("public_key", &self.identity.public_key())
            .field("udp", &self.udp)
            .field("tcp", &self.tcp.listener())
            .field("closed", &self.closed)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<S: NameStore> PnpServer<S> {
    /// A server with `identity` (its key is what clients seal requests to), writing names to
    /// `store`; `seed` seeds the reply nonces. Emits its bind intents at once.
    pub fn new(
        config: PnpServerConfig,
        identity: Identity,
        store: S,
        seed: u64,
    ) -> Result<Self, PnpConfigError> {
        if config.udp.is_none() && config.tcp.is_none() {
            return Err(PnpConfigError::NoTransport);
        }
        if config.tcp.is_some() {
            match config.tcp_limits.check(MAX_CONNECTIONS) {
                Ok(()) => {}
                Err(LimitsError::Connections) => return Err(PnpConfigError::BadConnectionLimit),
                Err(e) => return Err(PnpConfigError::BadTcpLimits(e)),
            }
        }
        if config.replay_capacity == 0
            || config.transmit_queue_capacity == 0
            || config.rate_table_capacity == 0
        {
            return Err(PnpConfigError::ZeroCapacity);
        }
        if config.max_lifetime > MAX_RECORD_LIFETIME {
            return Err(PnpConfigError::LifetimeTooLong);
        }
        if config.max_future_ms > MAX_CLOCK_SKEW_MS {
            return Err(PnpConfigError::SkewTooLarge);
        }
        // Without TCP the pool has no slots at all.
        let tcp_limits = ConnectionLimits {
            max_connections: if config.tcp.is_some() {
                config.tcp_limits.max_connections
            } else {
                0
            },
            ..config.tcp_limits
        };
        let mut ops = VecDeque::new();
        let mut udp = Listener::Absent;
        if let Some(local) = config.udp {
            ops.push_back(SocketOp::Bind {
                socket: UDP_SOCKET,
                transport: Transport::Udp,
                local,
                options: config.bind_options,
            });
            udp = Listener::Binding;
        }
        let mut tcp = AcceptPool::new(
            PoolConfig {
                listener: TCP_LISTENER,
                first_socket: FIRST_CONNECTION_ID,
                limits: tcp_limits,
                backlog: config.listen_backlog,
            },
            || FrameReader::new(MAX_MESSAGE_LEN),
        );
        if let Some(local) = config.tcp {
            tcp.bind(local, config.bind_options, &mut ops);
        }
        let rules = Rules {
            max_names_per_source: config.max_names_per_source,
            max_lifetime_ms: u64::try_from(config.max_lifetime.as_millis()).unwrap_or(u64::MAX),
            max_future_ms: config.max_future_ms,
        };
        Ok(PnpServer {
            opener: Opener::with_window(
                config.replay_capacity,
                config.max_age_ms,
                config.max_future_ms,
            ),
            rates: RateLimiter::new(
                config.rate_table_capacity,
                config.requests_per_window,
                config.rate_window,
            ),
            replies: ReplyCache::new(config.reply_cache_capacity),
            rules,
            udp,
            tcp,
            transmits: VecDeque::new(),
            ops,
            events: VecDeque::new(),
            next_prune: Instant::ZERO.saturating_add(config.prune_interval),
            timeout: Some(Instant::ZERO.saturating_add(config.prune_interval)),
            closed: false,
            stats: PnpServerStats::default(),
            rng: Rng::from_seed(seed),
            identity,
            store,
            config,
        })
    }

    /// The server's public key (clients need it, with the address, to reach the server).
    pub fn public_key(&self) -> PublicKey {
        self.identity.public_key()
    }

    /// The counters.
    pub fn stats(&self) -> PnpServerStats {
        PnpServerStats {
            rate_evictions: self.rates.evictions(),
            ..self.stats
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, mutably (for example to seed it).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// How many TCP connections are open.
    pub fn open_connections(&self) -> usize {
        self.tcp.open_count()
    }

    /// How many entries the bounded tables hold: (rate limiter sources, cached replies, replay
    /// cache entries, queued transmits).
    pub fn table_sizes(&self) -> (usize, usize, usize, usize) {
        (
            self.rates.len(),
            self.replies.len(),
            self.opener.len(),
            self.transmits.len(),
        )
    }

    /// Unix time in milliseconds at `now` (see [`PnpServerConfig::unix_epoch_ms`]).
    pub fn unix_ms(&self, now: Instant) -> u64 {
        let since = u64::try_from(now.saturating_duration_since(Instant::ZERO).as_millis())
            .unwrap_or(u64::MAX);
        self.config.unix_epoch_ms.saturating_add(since)
    }

    /// Whether [`PnpServer::close`] has been called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Closes every socket the server owns (each exactly once) and ends with
    /// [`PnpServerEvent::Closed`]. Idempotent.
    pub fn close(&mut self, _now: Instant) {
        if self.closed {
            return;
        }
        self.closed = true;
        if matches!(self.udp, Listener::Binding | Listener::Bound(_)) {
            self.ops.push_back(SocketOp::Close { socket: UDP_SOCKET });
        }
        self.udp = Listener::Absent;
        let closed = self.tcp.close_all(&mut self.ops);
        let closed = u64::try_from(closed).unwrap_or(u64::MAX);
        self.stats.connections_closed = self.stats.connections_closed.saturating_add(closed);
        self.transmits.clear();
        self.timeout = None;
        self.events.push_back(PnpServerEvent::Closed);
    }

    fn udp_result(&mut self, outcome: SocketOutcome) {
        match outcome {
            SocketOutcome::Bound { local } if self.udp == Listener::Binding => {
                self.udp = Listener::Bound(local);
                self.events.push_back(PnpServerEvent::Listening {
                    transport: Transport::Udp,
                    local,
                });
            }
            SocketOutcome::Failed {
                op: OpKind::Bind,
                error,
                ..
            } if self.udp == Listener::Binding => {
                self.udp = Listener::Failed;
                self.events.push_back(PnpServerEvent::SocketFailed {
                    transport: Transport::Udp,
                    op: OpKind::Bind,
                    error,
                });
            }
            SocketOutcome::Failed {
                op: OpKind::Send, ..
            } => self.stats.send_failures = self.stats.send_failures.saturating_add(1),
            _ => {}
        }
    }

    fn tcp_event(&mut self, now: Instant, event: PoolEvent) {
        match event {
            PoolEvent::Listening(local) => {
                self.events.push_back(PnpServerEvent::Listening {
                    transport: Transport::Tcp,
                    local,
                });
            }
            PoolEvent::ListenerFailed { op, error } => {
                self.events.push_back(PnpServerEvent::SocketFailed {
                    transport: Transport::Tcp,
                    op,
                    error,
                });
            }
            PoolEvent::Opened { evicted, .. } => {
                self.stats.connections_accepted = self.stats.connections_accepted.saturating_add(1);
                if let Some(evicted) = evicted {
                    let counter = match evicted.reason {
                        EvictReason::SourceFull => &mut self.stats.evicted_source_full,
                        EvictReason::PoolFull => &mut self.stats.evicted_pool_full,
                    };
                    *counter = counter.saturating_add(1);
                    // The pool closed it: count it and drop the replies queued for it.
                    self.stats.connections_closed = self.stats.connections_closed.saturating_add(1);
                    let socket = self.tcp.socket(evicted.index);
                    self.transmits.retain(|t| t.socket != socket);
                }
            }
            PoolEvent::Ended { index, send_failed } => {
                if send_failed {
                    self.stats.send_failures = self.stats.send_failures.saturating_add(1);
                }
                self.close_connection(now, index);
            }
            PoolEvent::NotMine | PoolEvent::Nothing => {}
        }
    }

    fn queue(&mut self, socket: SocketId, destination: SocketAddr, bytes: Vec<u8>) -> Verdict {
        if self.transmits.len() >= self.config.transmit_queue_capacity {
            self.stats.queue_full = self.stats.queue_full.saturating_add(1);
            return Verdict::Dropped(DropReason::QueueFull);
        }
        self.transmits.push_back(Outgoing {
            socket,
            destination,
            bytes,
        });
        Verdict::Consumed
    }

    /// Closes an open connection (its one close intent) and frees its slot for the next accept.
    fn close_connection(&mut self, now: Instant, index: usize) {
        if !self.tcp.close(now, index, &mut self.ops) {
            return;
        }
        self.stats.connections_closed = self.stats.connections_closed.saturating_add(1);
        // A reply still queued for this stream must not reach the next connection on this id.
        let socket = self.tcp.socket(index);
        self.transmits.retain(|t| t.socket != socket);
    }

    /// Removes one bounded batch of expired names; schedules the next step soon if it removed
    /// any (more may be left) or the store is still pruning in the background, else after the
    /// prune interval.
    fn prune_step(&mut self, now: Instant) {
        let batch = self.config.prune_batch.max(1);
        let pause = match self.store.prune_expired(self.unix_ms(now), batch) {
            Ok(n) => {
                self.stats.pruned = self.stats.pruned.saturating_add(n);
                self.stats.prune_steps = self.stats.prune_steps.saturating_add(1);
                if n > 0 || self.store.prune_pending() {
                    self.config.prune_step_pause
                } else {
                    self.config.prune_interval
                }
            }
            Err(_) => {
                self.stats.store_errors = self.stats.store_errors.saturating_add(1);
                self.config.prune_interval
            }
        };
        // Never a zero pause: time must pass between two steps for requests to be served.
        self.next_prune = now.saturating_add(pause.max(Duration::from_millis(1)));
    }

    fn refresh_timeout(&mut self) {
        if self.closed {
            self.timeout = None;
            return;
        }
        let next = self.next_prune;
        self.timeout = Some(self.tcp.next_deadline().map_or(next, |t| t.min(next)));
    }

    /// The sealed reply to one request, or why there is none.
    fn answer(
        &mut self,
        now: Instant,
        source: SourceKey,
        request: &[u8],
        udp_limit: Option<usize>,
    ) -> Result<Vec<u8>, DropReason> {
        if request.len() > MAX_MESSAGE_LEN {
            self.stats.oversize = self.stats.oversize.saturating_add(1);
            return Err(DropReason::Unexpected);
        }
        let Some(key) = wire::peek_envelope(request) else {
            self.stats.not_envelopes = self.stats.not_envelopes.saturating_add(1);
            return Err(DropReason::Unexpected);
        };
        let rate = self.rates.check(now, source);
        match rate {
            RateVerdict::Allowed | RateVerdict::LimitedTell { .. } => {}
            RateVerdict::Limited => {
                self.stats.rate_limited = self.stats.rate_limited.saturating_add(1);
                return Err(DropReason::Unexpected);
            }
        }
        if let Some(cached) = self.replies.get(&key, request) {
            // A request first sent over TCP may come back over UDP: the size rule still holds.
            if cached.len() > udp_limit.unwrap_or(usize::MAX) {
                self.stats.amplification_dropped =
                    self.stats.amplification_dropped.saturating_add(1);
                return Err(DropReason::Duplicate);
            }
            self.stats.duplicates = self.stats.duplicates.saturating_add(1);
            return Ok(cached.to_vec());
        }
        let now_ms = self.unix_ms(now);
        let opened = match self.opener.open(&self.identity, now_ms, request) {
            Ok(opened) => opened,
            Err(e) => {
                let counter = match e {
                    OpenError::Stale { .. } | OpenError::FromFuture { .. } => &mut self.stats.stale,
                    OpenError::Replay => &mut self.stats.replays,
                    _ => &mut self.stats.bad_envelopes,
                };
                *counter = counter.saturating_add(1);
                return Err(if e == OpenError::Replay {
                    DropReason::Duplicate
                } else {
                    DropReason::Unexpected
                });
            }
        };
        let body = if let RateVerdict::LimitedTell { retry_after_ms } = rate {
            self.stats.rate_limited = self.stats.rate_limited.saturating_add(1);
            ReplyBody::Error {
                code: ErrorCode::RateLimited,
                detail: retry_after_ms,
            }
        } else {
            match Request::decode(&opened.payload) {
                Ok(req) => {
                    let mut counters = RuleCounters::default();
                    let body = handler::execute(
                        &mut self.store,
                        &self.rules,
                        &mut counters,
                        now_ms,
                        source,
                        &opened.sender,
                        req,
                    );
                    self.stats.store_errors = self
                        .stats
                        .store_errors
                        .saturating_add(counters.store_errors);
                    body
                }
                Err(e) => {
                    let (code, detail) = ErrorCode::for_wire_error(e);
                    ReplyBody::Error { code, detail }
                }
            }
        };
        let sealed = self
            .seal_reply(now_ms, &opened.sender, opened.nonce, body, udp_limit)
            .ok_or(DropReason::Unexpected)?;
        self.stats.requests = self.stats.requests.saturating_add(1);
        self.replies.insert(key, request, sealed.clone());
        Ok(sealed)
    }

    /// Seals the reply; over UDP, substitutes `PaddingRequired` if the reply would be larger than
    /// the request, and gives up if even that is.
    fn seal_reply(
        &mut self,
        now_ms: u64,
        to: &PublicKey,
        request_nonce: [u8; NONCE_LEN],
        body: ReplyBody,
        udp_limit: Option<usize>,
    ) -> Option<Vec<u8>> {
        let is_error = matches!(body, ReplyBody::Error { .. });
        let reply = Reply {
            request_nonce,
            body,
        };
        let sealed = self.seal(now_ms, to, &reply)?;
        let limit = udp_limit.unwrap_or(usize::MAX);
        if sealed.len() <= limit {
            if is_error {
                self.stats.error_replies = self.stats.error_replies.saturating_add(1);
            }
            return Some(sealed);
        }
        let needed = u64::try_from(sealed.len()).unwrap_or(u64::MAX);
        let fallback = Reply {
            request_nonce,
            body: ReplyBody::Error {
                code: ErrorCode::PaddingRequired,
                detail: needed,
            },
        };
        let sealed = self.seal(now_ms, to, &fallback)?;
        if sealed.len() <= limit {
            self.stats.error_replies = self.stats.error_replies.saturating_add(1);
            Some(sealed)
        } else {
            self.stats.amplification_dropped = self.stats.amplification_dropped.saturating_add(1);
            None
        }
    }

    fn seal(&mut self, now_ms: u64, to: &PublicKey, reply: &Reply) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill_bytes(&mut nonce);
        envelope::seal(&self.identity, to, now_ms, nonce, &reply.encode()).ok()
    }
}

impl<S: NameStore> p2pd_proto::Machine for PnpServer<S> {
    type Event = PnpServerEvent;

    /// Handles a datagram on the UDP socket.
    fn handle_datagram(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        data: &[u8],
    ) -> Verdict {
        if self.closed {
            return Verdict::Dropped(DropReason::Closed);
        }
        if socket != UDP_SOCKET || !matches!(self.udp, Listener::Bound(_)) {
            return Verdict::Dropped(DropReason::UnknownSocket);
        }
        if data.first() != Some(&envelope::VERSION) {
            self.stats.not_envelopes = self.stats.not_envelopes.saturating_add(1);
            return Verdict::NotMine;
        }
        let source = SourceKey::from_ip(from.ip());
        let verdict = match self.answer(now, source, data, Some(data.len())) {
            Ok(reply) => self.queue(UDP_SOCKET, from, reply),
            Err(reason) => Verdict::Dropped(reason),
        };
        self.refresh_timeout();
        verdict
    }

    /// Handles bytes on an accepted TCP connection: any number of frames, split anywhere.
    fn handle_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        if self.closed {
            return Verdict::Dropped(DropReason::Closed);
        }
        let Some(index) = self.tcp.open_index(socket) else {
            return Verdict::Dropped(DropReason::UnknownSocket);
        };
        if !data.is_empty() {
            self.tcp.bytes_arrived(now, index);
        }
        let mut rest = data;
        let mut verdict = Verdict::Consumed;
        while let Some((conn, reader)) = self.tcp.get_mut(index) {
            let (remote, source) = (conn.remote, SourceKey::from_ip(conn.remote.ip()));
            match reader.next(&mut rest) {
                None => break,
                Some(FrameEvent::BadLength(_)) => {
                    self.stats.bad_frames = self.stats.bad_frames.saturating_add(1);
                    self.close_connection(now, index);
                    verdict = Verdict::Dropped(DropReason::Unexpected);
                    break;
                }
                Some(FrameEvent::Frame(body)) => match self.answer(now, source, &body, None) {
                    Ok(reply) => {
                        verdict = match wire::frame(&reply) {
                            Some(framed) => self.queue(socket, remote, framed),
                            None => Verdict::Dropped(DropReason::Unexpected),
                        };
                        // An answered request is work done; an unanswered frame (not ours,
                        // stale, over the rate) does not end the deadline its first byte started.
                        self.tcp.message_completed(now, index, !rest.is_empty());
                    }
                    Err(reason) => verdict = Verdict::Dropped(reason),
                },
            }
        }
        self.refresh_timeout();
        verdict
    }

    /// Handles the outcome of an intent, or an asynchronous socket error.
    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        if socket == UDP_SOCKET {
            self.udp_result(outcome);
        } else {
            let event = self.tcp.handle_result(now, socket, outcome, &mut self.ops);
            self.tcp_event(now, event);
        }
        self.refresh_timeout();
    }

    /// Prunes expired names, closes idle connections and those whose request is late, and retries
    /// failed accepts.
    fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        if now >= self.next_prune {
            self.prune_step(now);
        }
        while let Some((index, why)) = self.tcp.next_expired(now) {
            let counter = match why {
                Expiry::Idle => &mut self.stats.idle_closed,
                Expiry::MessageTimeout => &mut self.stats.message_timeouts,
            };
            *counter = counter.saturating_add(1);
            self.close_connection(now, index);
        }
        self.tcp.accept_idle(now, &mut self.ops);
        self.refresh_timeout();
    }

    /// Writes the next reply into `buf`.
    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(out) = self.transmits.pop_front() {
            let Some(dst) = buf.get_mut(..out.bytes.len()) else {
                continue;
            };
            dst.copy_from_slice(&out.bytes);
            return Some(Transmit {
                socket: out.socket,
                destination: out.destination,
                len: out.bytes.len(),
            });
        }
        None
    }

    /// The next socket intent.
    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        self.ops.pop_front()
    }

    /// The next event.
    fn poll_event(&mut self) -> Option<PnpServerEvent> {
        self.events.pop_front()
    }

    /// The next deadline (pruning, idle connections, late requests, accept retries). O(1).
    fn poll_timeout(&self) -> Option<Instant> {
        self.timeout
    }
}

//! The RFC 5780 STUN server machine.
//!
//! A full RFC 5780 server listens on four sockets, one per [`Role`]: primary or alternate IP times
//! primary or alternate port. A Binding request's CHANGE-REQUEST picks the socket that answers; OTHER-
//! ADDRESS is advertised only when both an alternate IP and an alternate port exist (and are bound).
//! A change the server cannot honour gets error 420 naming CHANGE-REQUEST.
//!
//! RFC 3489 clients (no magic cookie) are answered in their dialect: MAPPED-ADDRESS, SOURCE-ADDRESS
//! and CHANGED-ADDRESS, no XOR or FINGERPRINT.
//!
//! Responses are never longer than [`MAX_RESPONSE_LEN`] bytes, and handling a request allocates
//! nothing: requests become small fixed-size records in a queue allocated up front, and each response is
//! encoded straight into the caller's transmit buffer.
//!
//! ## STUN over TCP
//!
//! With [`ServerConfig::with_tcp`] the server also listens on TCP on the primary address (RFC 5389
//! §7.2.2): messages on a stream, framed by the header's length field. It binds
//! [`TCP_LISTENER`], listens, and keeps one [`SocketOp::Accept`] outstanding per free connection
//! slot, and always at least one (an [`AcceptPool`] under [`ServerConfig::tcp_limits`]); accepted
//! streams are named `SocketId(TCP_CONNECTION_BASE + slot)` and fed to
//! the server's [`Machine::handle_stream`](crate::Machine::handle_stream) in chunks of any size. Each Binding request is answered on its stream, RESPONSE-ORIGIN being the connection's
//! local address; OTHER-ADDRESS is never sent over TCP, RESPONSE-PORT is ignored, and a
//! CHANGE-REQUEST asking for any change gets error 420 (a stream cannot be answered from another
//! address). Bytes that cannot start a STUN message, or a message longer than
//! [`MAX_TCP_MESSAGE_LEN`], close that connection; a well-framed message that does not decode is
//! dropped and counted. One source cannot lock others out: it holds at most
//! [`ConnectionLimits::max_per_source`] connections, a message must be whole within
//! [`ConnectionLimits::message_timeout`] of its first byte, a connection idle for
//! [`ConnectionLimits::idle_timeout`] is closed, and when every connection is open a newcomer
//! replaces the one that has done least (see [`crate::accept`]). Each accepted socket gets
//! exactly one close intent. The connection buffers are allocated when the
//! server is built, so TCP requests allocate nothing either.

use core::net::{IpAddr, SocketAddr};
use std::collections::VecDeque;

use crate::accept::{
    AcceptPool, ConnectionLimits, EvictReason, Expiry, LimitsError, PoolConfig, PoolEvent,
};
use crate::machine::{
    BindOptions, DropReason, IoError, OpKind, SocketId, SocketOp, SocketOutcome, Transmit,
    Transport, Verdict,
};
use crate::stun::{
    self, attr, AttrTypes, Attribute, Class, ErrorCode, FrameStatus, Header, Message,
    MessageWriter, Method, StreamFramer,
};
use crate::time::Instant;

mod tcp;

pub use tcp::{MAX_TCP_CONNECTIONS, MAX_TCP_MESSAGE_LEN, TCP_CONNECTION_BASE, TCP_LISTENER};

/// The longest response the server sends (IPv6 with every attribute and the longest SOFTWARE).
pub const MAX_RESPONSE_LEN: usize = 200;

/// The longest SOFTWARE value the server accepts in its configuration.
pub const MAX_SOFTWARE_LEN: usize = 32;

/// Most attribute types listed in one UNKNOWN-ATTRIBUTES.
const MAX_UNKNOWN: usize = 4;

/// One of the four RFC 5780 server sockets.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Primary IP, primary port.
    Primary,
    /// Primary IP, alternate port.
    AlternatePort,
    /// Alternate IP, primary port.
    AlternateIp,
    /// Alternate IP, alternate port.
    AlternateBoth,
}

impl Role {
    /// All four roles.
    pub const ALL: [Role; 4] = [
        Role::Primary,
        Role::AlternatePort,
        Role::AlternateIp,
        Role::AlternateBoth,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn from_parts(alt_ip: bool, alt_port: bool) -> Role {
        match (alt_ip, alt_port) {
            (false, false) => Role::Primary,
            (false, true) => Role::AlternatePort,
            (true, false) => Role::AlternateIp,
            (true, true) => Role::AlternateBoth,
        }
    }

    fn alt_ip(self) -> bool {
        matches!(self, Role::AlternateIp | Role::AlternateBoth)
    }

    fn alt_port(self) -> bool {
        matches!(self, Role::AlternatePort | Role::AlternateBoth)
    }

    /// The socket id the server uses for this role.
    pub fn socket(self) -> SocketId {
        SocketId(self as u32)
    }
}

/// Server settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Primary IP and port.
    pub primary: SocketAddr,
    /// The second IP address (same family as the primary).
    pub alternate_ip: Option<IpAddr>,
    /// The second port.
    pub alternate_port: Option<u16>,
    /// SOFTWARE to put in responses (at most [`MAX_SOFTWARE_LEN`] bytes).
    pub software: Option<&'static str>,
    /// How many responses may wait to be sent; more requests are dropped and counted.
    pub queue_capacity: usize,
    /// Options for every bind.
    pub bind_options: BindOptions,
    /// Also serve STUN over TCP on the primary address (see the module docs).
    pub tcp: bool,
    /// TCP connections: how many (1 to [`MAX_TCP_CONNECTIONS`]), how many per source, the
    /// message and idle deadlines. Default [`ConnectionLimits::DEFAULT`]: 64 connections, 8 per
    /// source, 10 s per message, 120 s idle.
    pub tcp_limits: ConnectionLimits,
    /// The TCP listen backlog.
    pub tcp_backlog: u32,
}

impl ServerConfig {
    /// A server on one address: it answers Binding requests but no change requests.
    pub fn single(primary: SocketAddr) -> Self {
        ServerConfig {
            primary,
            alternate_ip: None,
            alternate_port: None,
            software: Some("p2pd-rs"),
            queue_capacity: 256,
            bind_options: BindOptions::default(),
            tcp: false,
            tcp_limits: ConnectionLimits::DEFAULT,
            tcp_backlog: 128,
        }
    }

    /// The same configuration, serving STUN over TCP on the primary address too (or not).
    pub fn with_tcp(mut self, tcp: bool) -> Self {
        self.tcp = tcp;
        self
    }

    /// A full RFC 5780 server on `primary` plus an alternate IP and port.
    pub fn rfc5780(primary: SocketAddr, alternate_ip: IpAddr, alternate_port: u16) -> Self {
        ServerConfig {
            alternate_ip: Some(alternate_ip),
            alternate_port: Some(alternate_port),
            ..ServerConfig::single(primary)
        }
    }

    /// The configured address of a role, if the role exists.
    pub fn role_addr(&self, role: Role) -> Option<SocketAddr> {
        let ip = if role.alt_ip() {
            self.alternate_ip?
        } else {
            self.primary.ip()
        };
        let port = if role.alt_port() {
            self.alternate_port?
        } else {
            self.primary.port()
        };
        Some(SocketAddr::new(ip, port))
    }
}

/// Why a configuration is unusable.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ServerConfigError {
    /// The alternate IP is of another family than the primary, or equal to it.
    BadAlternateIp,
    /// The alternate port equals the primary port, or a port is 0 while alternates are configured.
    BadPort,
    /// SOFTWARE is longer than [`MAX_SOFTWARE_LEN`].
    SoftwareTooLong,
    /// `queue_capacity` is 0.
    ZeroQueue,
    /// TCP is on and `tcp_limits.max_connections` is 0 or above [`MAX_TCP_CONNECTIONS`].
    BadConnectionLimit,
    /// TCP is on and `tcp_limits` allows no connection per source or has a zero timeout.
    BadTcpLimits(LimitsError),
}

impl core::fmt::Display for ServerConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ServerConfigError::BadAlternateIp => {
                f.write_str("alternate ip equals the primary or is of another family")
            }
            ServerConfigError::BadPort => {
                f.write_str("alternate port equals the primary, or a port is 0 with alternates")
            }
            ServerConfigError::SoftwareTooLong => {
                write!(f, "software longer than {MAX_SOFTWARE_LEN} bytes")
            }
            ServerConfigError::ZeroQueue => f.write_str("queue capacity is 0"),
            ServerConfigError::BadConnectionLimit => {
                write!(f, "tcp connection limit must be 1..={MAX_TCP_CONNECTIONS}")
            }
            ServerConfigError::BadTcpLimits(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ServerConfigError {}

/// What the server reports.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A role's socket is bound.
    Listening {
        /// The role.
        role: Role,
        /// Its local address.
        local: SocketAddr,
    },
    /// A role's socket could not be bound; the server works without it.
    SocketFailed {
        /// The role.
        role: Role,
        /// Why.
        error: IoError,
    },
    /// The TCP listener is bound and listening on `local`.
    TcpListening {
        /// Its local address.
        local: SocketAddr,
    },
    /// The TCP listener could not be bound or could not listen; the server works without TCP.
    TcpFailed {
        /// Which step failed.
        op: OpKind,
        /// Why.
        error: IoError,
    },
    /// The server is closed; every socket has had its close intent. The last event.
    Closed,
}

/// Counters.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Binding requests accepted.
    pub requests: u64,
    /// Success responses sent.
    pub responses: u64,
    /// Error responses sent.
    pub error_responses: u64,
    /// Datagrams dropped as malformed.
    pub malformed: u64,
    /// Requests dropped because the queue was full.
    pub queue_full: u64,
    /// Datagrams that were not STUN requests (answered `NotMine` or ignored indications).
    pub not_requests: u64,
    /// Sends the runtime reported as failed.
    pub send_failures: u64,
    /// TCP connections accepted.
    pub tcp_accepted: u64,
    /// TCP connections closed by the server (each exactly once).
    pub tcp_closed: u64,
    /// TCP connections closed because their bytes could not be framed as STUN.
    pub tcp_bad_frames: u64,
    /// TCP connections closed for idleness.
    pub tcp_idle_closed: u64,
    /// TCP connections closed because a message was not whole within the message timeout.
    pub tcp_message_timeouts: u64,
    /// TCP connections closed to make room for a newcomer from the same source (at its cap).
    pub tcp_evicted_source_full: u64,
    /// TCP connections closed to make room for a newcomer while every connection was open.
    pub tcp_evicted_pool_full: u64,
}

#[derive(Copy, Clone, Debug)]
enum Reply {
    Success,
    Error {
        code: u16,
        unknown: [u16; MAX_UNKNOWN],
        unknown_len: u8,
    },
}

/// A response waiting to be encoded: fixed size, no heap.
#[derive(Copy, Clone, Debug)]
struct Pending {
    header: Header,
    /// The role that received the request.
    received_on: Role,
    /// The role that answers.
    answer_from: Role,
    /// The client's address as seen (the mapped address).
    client: SocketAddr,
    destination: SocketAddr,
    reply: Reply,
    /// The TCP connection slot the request came on (`None`: UDP).
    stream: Option<usize>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum SocketState {
    Absent,
    Binding,
    Bound(SocketAddr),
    Failed,
}

/// The RFC 5780 STUN server machine. See the module docs.
#[derive(Debug)]
pub struct StunServer {
    config: ServerConfig,
    sockets: [SocketState; 4],
    queue: VecDeque<Pending>,
    ops: VecDeque<SocketOp>,
    events: VecDeque<ServerEvent>,
    tcp: AcceptPool<StreamFramer>,
    timeout: Option<Instant>,
    closed: bool,
    stats: ServerStats,
}

impl StunServer {
    /// A server for `config`; it asks for its sockets at once (drain `poll_socket_op`).
    pub fn new(config: ServerConfig) -> Result<Self, ServerConfigError> {
        if let Some(ip) = config.alternate_ip {
            if ip.is_ipv4() != config.primary.is_ipv4() || ip == config.primary.ip() {
                return Err(ServerConfigError::BadAlternateIp);
            }
        }
        if let Some(port) = config.alternate_port {
            if port == config.primary.port() || port == 0 || config.primary.port() == 0 {
                return Err(ServerConfigError::BadPort);
            }
        }
        if config.alternate_ip.is_some() && config.primary.port() == 0 {
            return Err(ServerConfigError::BadPort);
        }
        if config.software.is_some_and(|s| s.len() > MAX_SOFTWARE_LEN) {
            return Err(ServerConfigError::SoftwareTooLong);
        }
        if config.queue_capacity == 0 {
            return Err(ServerConfigError::ZeroQueue);
        }
        if config.tcp {
            match config.tcp_limits.check(MAX_TCP_CONNECTIONS) {
                Ok(()) => {}
                Err(LimitsError::Connections) => return Err(ServerConfigError::BadConnectionLimit),
                Err(e) => return Err(ServerConfigError::BadTcpLimits(e)),
            }
        }
        let mut sockets = [SocketState::Absent; 4];
        // Without TCP the pool has no slots at all.
        let tcp_limits = ConnectionLimits {
            max_connections: if config.tcp {
                config.tcp_limits.max_connections
            } else {
                0
            },
            ..config.tcp_limits
        };
        // Room for every bind, and for a close and an accept per connection slot (the spare
        // included): serving never grows the queue.
        let tcp_slots = tcp_limits.max_connections.saturating_add(1);
        let mut ops = VecDeque::with_capacity(tcp_slots.saturating_mul(2).saturating_add(8));
        for role in Role::ALL {
            if let Some(local) = config.role_addr(role) {
                if let Some(s) = sockets.get_mut(role.index()) {
                    *s = SocketState::Binding;
                }
                ops.push_back(SocketOp::Bind {
                    socket: role.socket(),
                    transport: Transport::Udp,
                    local,
                    options: config.bind_options,
                });
            }
        }
        let mut tcp = AcceptPool::new(
            PoolConfig {
                listener: TCP_LISTENER,
                first_socket: TCP_CONNECTION_BASE,
                limits: tcp_limits,
                backlog: config.tcp_backlog,
            },
            || StreamFramer::new(MAX_TCP_MESSAGE_LEN),
        );
        if config.tcp {
            tcp.bind(config.primary, config.bind_options, &mut ops);
        }
        Ok(StunServer {
            queue: VecDeque::with_capacity(config.queue_capacity),
            config,
            sockets,
            ops,
            events: VecDeque::with_capacity(8),
            tcp,
            timeout: None,
            closed: false,
            stats: ServerStats::default(),
        })
    }

    /// The counters.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The role a socket id stands for.
    pub fn role_of(&self, socket: SocketId) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.socket() == socket)
    }

    /// The address a role listens on: the bound address once bound, else the configured one.
    pub fn local_addr(&self, role: Role) -> Option<SocketAddr> {
        match self.sockets.get(role.index())? {
            SocketState::Bound(a) => Some(*a),
            SocketState::Binding => self.config.role_addr(role),
            SocketState::Absent | SocketState::Failed => None,
        }
    }

    /// The socket serving local address `addr`, if any.
    pub fn socket_for(&self, addr: SocketAddr) -> Option<SocketId> {
        Role::ALL
            .into_iter()
            .find(|r| self.local_addr(*r) == Some(addr))
            .map(Role::socket)
    }

    /// Whether the role's socket is usable.
    fn available(&self, role: Role) -> bool {
        matches!(
            self.sockets.get(role.index()),
            Some(SocketState::Bound(_) | SocketState::Binding)
        )
    }

    /// OTHER-ADDRESS for a request received on `role`: only when all four roles work.
    fn other_address(&self, role: Role) -> Option<SocketAddr> {
        if Role::ALL.iter().all(|r| self.available(*r)) {
            self.local_addr(Role::from_parts(!role.alt_ip(), !role.alt_port()))
        } else {
            None
        }
    }

    /// Closes every socket (each exactly once), then reports [`ServerEvent::Closed`]. Idempotent.
    pub fn close(&mut self, _now: Instant) {
        if self.closed {
            return;
        }
        self.closed = true;
        for role in Role::ALL {
            if let Some(state) = self.sockets.get_mut(role.index()) {
                if matches!(state, SocketState::Bound(_) | SocketState::Binding) {
                    self.ops.push_back(SocketOp::Close {
                        socket: role.socket(),
                    });
                }
                *state = SocketState::Absent;
            }
        }
        let closed = self.tcp.close_all(&mut self.ops);
        let closed = u64::try_from(closed).unwrap_or(u64::MAX);
        self.stats.tcp_closed = self.stats.tcp_closed.saturating_add(closed);
        self.timeout = None;
        self.queue.clear();
        self.events.push_back(ServerEvent::Closed);
    }

    /// How many TCP connections are open.
    pub fn tcp_connections(&self) -> usize {
        self.tcp.open_count()
    }

    /// The TCP listener's bound address, once bound.
    pub fn tcp_local_addr(&self) -> Option<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The response record for a decoded request received on `received_on` (or on TCP connection
    /// `stream`) from `from`, or the verdict for a message that gets no response.
    fn pending_for(
        &mut self,
        msg: &Message<'_>,
        received_on: Role,
        from: SocketAddr,
        stream: Option<usize>,
    ) -> Result<Pending, Verdict> {
        match msg.class() {
            Class::Request => {}
            Class::Indication => {
                // Binding indications are keep-alives: consumed, never answered.
                self.stats.not_requests = self.stats.not_requests.saturating_add(1);
                return Err(Verdict::Consumed);
            }
            Class::Success | Class::Error => {
                self.stats.not_requests = self.stats.not_requests.saturating_add(1);
                return Err(Verdict::NotMine);
            }
        }
        if self.queue.len() >= self.config.queue_capacity {
            self.stats.queue_full = self.stats.queue_full.saturating_add(1);
            return Err(Verdict::Dropped(DropReason::QueueFull));
        }
        self.stats.requests = self.stats.requests.saturating_add(1);
        let header = Header {
            class: Class::Success,
            ..*msg.header()
        };
        let mut pending = Pending {
            header,
            received_on,
            answer_from: received_on,
            client: from,
            destination: from,
            reply: Reply::Success,
            stream,
        };
        if msg.method() != Method::BINDING {
            pending.reply = error_reply(400, &[]);
        } else if let Some(_first) = msg.unknown_comprehension_required() {
            let mut unknown = [0u16; MAX_UNKNOWN];
            let n = msg.collect_unknown(&mut unknown);
            pending.reply = error_reply(420, unknown.get(..n).unwrap_or(&[]));
        } else if stream.is_some() {
            // A stream is answered on itself: no change can be honoured, RESPONSE-PORT is moot.
            if msg.change_request().is_some_and(|c| c.any()) {
                pending.reply = error_reply(420, &[attr::CHANGE_REQUEST]);
            }
        } else {
            if let Some(port) = msg.response_port() {
                pending.destination.set_port(port);
            }
            if let Some(change) = msg.change_request() {
                let target = Role::from_parts(
                    received_on.alt_ip() ^ change.change_ip,
                    received_on.alt_port() ^ change.change_port,
                );
                if self.available(target) {
                    pending.answer_from = target;
                } else {
                    pending.reply = error_reply(420, &[attr::CHANGE_REQUEST]);
                }
            }
        }
        if let Reply::Error { .. } = pending.reply {
            pending.header.class = Class::Error;
            // Errors go back to where the request came from, from where it arrived.
            pending.answer_from = received_on;
            pending.destination = from;
        }
        Ok(pending)
    }

    fn enqueue(&mut self, pending: Pending) -> Verdict {
        self.queue.push_back(pending);
        Verdict::Consumed
    }

    fn tcp_event(&mut self, now: Instant, event: PoolEvent) {
        match event {
            PoolEvent::Listening(local) => {
                self.events.push_back(ServerEvent::TcpListening { local });
            }
            PoolEvent::ListenerFailed { op, error } => {
                self.events.push_back(ServerEvent::TcpFailed { op, error });
            }
            PoolEvent::Opened { evicted, .. } => {
                self.stats.tcp_accepted = self.stats.tcp_accepted.saturating_add(1);
                if let Some(evicted) = evicted {
                    let counter = match evicted.reason {
                        EvictReason::SourceFull => &mut self.stats.tcp_evicted_source_full,
                        EvictReason::PoolFull => &mut self.stats.tcp_evicted_pool_full,
                    };
                    *counter = counter.saturating_add(1);
                    // The pool closed it: count it and drop what was queued for it.
                    self.stats.tcp_closed = self.stats.tcp_closed.saturating_add(1);
                    self.queue.retain(|p| p.stream != Some(evicted.index));
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

    /// Closes an open connection (its one close intent), drops its queued responses and frees its
    /// slot for the next accept.
    fn close_connection(&mut self, now: Instant, index: usize) {
        if !self.tcp.close(now, index, &mut self.ops) {
            return;
        }
        self.stats.tcp_closed = self.stats.tcp_closed.saturating_add(1);
        // A response still queued for this stream must not reach the next connection in the slot.
        self.queue.retain(|p| p.stream != Some(index));
    }

    fn refresh_timeout(&mut self) {
        self.timeout = if self.closed {
            None
        } else {
            self.tcp.next_deadline()
        };
    }

    fn encode(&self, p: &Pending, buf: &mut [u8]) -> Option<usize> {
        let buf = buf.get_mut(..MAX_RESPONSE_LEN.min(buf.len()))?;
        let legacy = p.header.is_legacy();
        let mut w = MessageWriter::new(buf, p.header).ok()?;
        match p.reply {
            Reply::Success => {
                let (origin, other) = match p.stream {
                    Some(index) => (self.tcp.get(index)?.0.local, None),
                    None => (
                        self.local_addr(p.answer_from)?,
                        self.other_address(p.received_on),
                    ),
                };
                if legacy {
                    w.add(&Attribute::MappedAddress(p.client)).ok()?;
                    w.add(&Attribute::SourceAddress(origin)).ok()?;
                    if let Some(other) = other {
                        w.add(&Attribute::ChangedAddress(other)).ok()?;
                    }
                } else {
                    w.add(&Attribute::XorMappedAddress(p.client)).ok()?;
                    w.add(&Attribute::MappedAddress(p.client)).ok()?;
                    w.add(&Attribute::ResponseOrigin(origin)).ok()?;
                    if let Some(other) = other {
                        w.add(&Attribute::OtherAddress(other)).ok()?;
                    }
                }
            }
            Reply::Error {
                code,
                unknown,
                unknown_len,
            } => {
                w.add(&Attribute::ErrorCode(ErrorCode {
                    code,
                    reason: reason_phrase(code),
                }))
                .ok()?;
                if unknown_len > 0 {
                    let list = unknown.get(..usize::from(unknown_len))?;
                    w.add(&Attribute::UnknownAttributes(AttrTypes::List(list)))
                        .ok()?;
                }
            }
        }
        if let Some(s) = self.config.software {
            w.add(&Attribute::Software(s)).ok()?;
        }
        if !legacy {
            w.add_fingerprint().ok()?;
        }
        Some(w.finish())
    }
}

fn error_reply(code: u16, unknown: &[u16]) -> Reply {
    let mut list = [0u16; MAX_UNKNOWN];
    let mut n = 0u8;
    for (slot, t) in list.iter_mut().zip(unknown) {
        *slot = *t;
        n = n.saturating_add(1);
    }
    Reply::Error {
        code,
        unknown: list,
        unknown_len: n,
    }
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        420 => "Unknown Attribute",
        _ => "Error",
    }
}

impl crate::Machine for StunServer {
    type Event = ServerEvent;

    /// Handles a datagram received on `socket` from `from`.
    fn handle_datagram(
        &mut self,
        _now: Instant,
        socket: SocketId,
        from: SocketAddr,
        data: &[u8],
    ) -> Verdict {
        if self.closed {
            return Verdict::Dropped(DropReason::Closed);
        }
        let Some(received_on) = self.role_of(socket).filter(|r| self.available(*r)) else {
            return Verdict::Dropped(DropReason::UnknownSocket);
        };
        if !stun::is_stun(data) {
            self.stats.not_requests = self.stats.not_requests.saturating_add(1);
            return Verdict::NotMine;
        }
        let msg = match Message::decode(data) {
            Ok(m) => m,
            Err(e) => {
                self.stats.malformed = self.stats.malformed.saturating_add(1);
                return Verdict::Dropped(DropReason::Malformed(e));
            }
        };
        match self.pending_for(&msg, received_on, from, None) {
            Ok(pending) => self.enqueue(pending),
            Err(verdict) => verdict,
        }
    }

    /// Handles bytes on an accepted TCP connection: any number of messages, split anywhere.
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
        let mut verdict = Verdict::Consumed;
        let mut rest = data;
        while let Some((_, buf)) = self.tcp.get_mut(index) {
            let before = rest.len();
            rest = buf.fill(rest);
            let stuck = !rest.is_empty() && rest.len() == before;
            // Answer every whole message held.
            while let Some((conn, buf)) = self.tcp.get(index) {
                let total = match buf.status() {
                    FrameStatus::Partial => break,
                    FrameStatus::Bad(e) => {
                        self.stats.tcp_bad_frames = self.stats.tcp_bad_frames.saturating_add(1);
                        self.close_connection(now, index);
                        self.refresh_timeout();
                        return Verdict::Dropped(DropReason::Malformed(e));
                    }
                    FrameStatus::Complete(total) => total,
                };
                // The message leaves the slot's buffer for the stack, so the slot can be updated
                // while it is answered.
                let mut scratch = [0u8; MAX_TCP_MESSAGE_LEN];
                let (Some(dst), Some(src)) = (scratch.get_mut(..total), buf.held().get(..total))
                else {
                    break;
                };
                dst.copy_from_slice(src);
                let (outcome, decoded) = match Message::decode(dst) {
                    Ok(msg) => (
                        self.pending_for(&msg, Role::Primary, conn.remote, Some(index)),
                        true,
                    ),
                    Err(e) => {
                        self.stats.malformed = self.stats.malformed.saturating_add(1);
                        (Err(Verdict::Dropped(DropReason::Malformed(e))), false)
                    }
                };
                verdict = match outcome {
                    Ok(pending) => self.enqueue(pending),
                    Err(v) => v,
                };
                let mut more_held = !rest.is_empty();
                if let Some((_, buf)) = self.tcp.get_mut(index) {
                    buf.consume(total);
                    more_held |= !buf.held().is_empty();
                }
                // Only a message that decodes is work done: well-framed garbage does not end the
                // message deadline that its first byte started.
                if decoded {
                    self.tcp.message_completed(now, index, more_held);
                }
            }
            if rest.is_empty() || stuck {
                break;
            }
        }
        self.refresh_timeout();
        verdict
    }

    /// Handles the answer to a bind intent or a send failure.
    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        match self.tcp.handle_result(now, socket, outcome, &mut self.ops) {
            PoolEvent::NotMine => {}
            event => {
                self.tcp_event(now, event);
                self.refresh_timeout();
                return;
            }
        }
        let Some(role) = self.role_of(socket) else {
            return;
        };
        let Some(state) = self.sockets.get_mut(role.index()) else {
            return;
        };
        match outcome {
            SocketOutcome::Bound { local } if *state == SocketState::Binding => {
                *state = SocketState::Bound(local);
                self.events
                    .push_back(ServerEvent::Listening { role, local });
            }
            SocketOutcome::Failed {
                op: OpKind::Bind,
                error,
                ..
            } if *state == SocketState::Binding => {
                *state = SocketState::Failed;
                self.events
                    .push_back(ServerEvent::SocketFailed { role, error });
            }
            SocketOutcome::Failed {
                op: OpKind::Send, ..
            } => {
                self.stats.send_failures = self.stats.send_failures.saturating_add(1);
            }
            _ => {}
        }
    }

    /// Closes idle TCP connections and those whose message is late, and retries failed accepts
    /// (UDP needs no timers).
    fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        while let Some((index, why)) = self.tcp.next_expired(now) {
            let counter = match why {
                Expiry::Idle => &mut self.stats.tcp_idle_closed,
                Expiry::MessageTimeout => &mut self.stats.tcp_message_timeouts,
            };
            *counter = counter.saturating_add(1);
            self.close_connection(now, index);
        }
        self.tcp.accept_idle(now, &mut self.ops);
        self.refresh_timeout();
    }

    /// Encodes the next response into `buf`.
    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(p) = self.queue.pop_front() {
            let socket = match p.stream {
                Some(index) if self.tcp.get(index).is_some() => self.tcp.socket(index),
                Some(_) => continue,
                None if self.available(p.answer_from) => p.answer_from.socket(),
                None => continue,
            };
            let Some(len) = self.encode(&p, buf) else {
                continue;
            };
            match p.reply {
                Reply::Success => self.stats.responses = self.stats.responses.saturating_add(1),
                Reply::Error { .. } => {
                    self.stats.error_responses = self.stats.error_responses.saturating_add(1)
                }
            }
            return Some(Transmit {
                socket,
                destination: p.destination,
                len,
            });
        }
        None
    }

    /// The next socket intent.
    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        self.ops.pop_front()
    }

    /// The next event.
    fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// The next TCP deadline (idle connection, late message, accept retry); `None` without TCP.
    /// O(1).
    fn poll_timeout(&self) -> Option<Instant> {
        self.timeout
    }
}

//! The PNP client machine: register, look up and delete names on one server, over UDP (with
//! retransmission) or TCP (one connection per request).

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::time::Duration;
use std::collections::VecDeque;

use p2pd_proto::{
    BindOptions, DropReason, Instant, IoError, OpKind, Rng, SocketId, SocketOp, SocketOutcome,
    Transmit, Transport, Verdict,
};
use sha2::{Digest, Sha256};

use crate::envelope::{self, Opener, NONCE_LEN};
use crate::identity::{Identity, PublicKey};

use super::record::{Name, Record, RecordError};
use super::wire::{
    self, ErrorCode, FrameEvent, FrameReader, Reply, ReplyBody, Request, MAX_MESSAGE_LEN,
    MIN_UDP_REQUEST_PAYLOAD, UDP_LOOKUP_PAYLOAD_LEN,
};

/// The client's UDP socket.
pub const CLIENT_UDP_SOCKET: SocketId = SocketId(0);

/// A PNP server's canonical id: the first 8 bytes of SHA-256 over a domain string, the server's
/// address (IP as 16 bytes, IPv4 mapped; port) and its public key. Servers are named by this id,
/// never by a position in a list.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PnpServerId(pub u64);

impl PnpServerId {
    /// The id of the server at `addr` with key `key`.
    pub fn new(addr: SocketAddr, key: &PublicKey) -> PnpServerId {
        let ip = match addr.ip().to_canonical() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        let mut hash = Sha256::new();
        hash.update(b"p2pd-pnp/v1/server-id");
        hash.update(ip.octets());
        hash.update(addr.port().to_be_bytes());
        hash.update(key.to_bytes());
        let digest = hash.finalize();
        let mut id = [0u8; 8];
        for (dst, src) in id.iter_mut().zip(digest.iter()) {
            *dst = *src;
        }
        PnpServerId(u64::from_be_bytes(id))
    }
}

impl fmt::Display for PnpServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// How the client reaches the server.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum PnpTransport {
    /// One UDP socket for every request; lost requests are retransmitted.
    Udp,
    /// One TCP connection per request: connect, send one frame, read one frame, close.
    Tcp,
}

/// Client settings. [`PnpClientConfig::new`] gives defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PnpClientConfig {
    /// The server's address.
    pub server: SocketAddr,
    /// The server's public key: requests are sealed to it, and only replies signed by it count.
    pub server_key: PublicKey,
    /// UDP or TCP.
    pub transport: PnpTransport,
    /// The local address to bind (`None`: any address of the server's family, any port).
    pub local: Option<SocketAddr>,
    /// Options for the binds.
    pub bind_options: BindOptions,
    /// How long a request may take in total before it fails with [`PnpFailure::Timeout`].
    pub timeout: Duration,
    /// The first UDP retransmission interval; it doubles after each retransmission.
    pub retransmit: Duration,
    /// How many times a UDP request is retransmitted at most.
    pub max_retransmits: u32,
    /// The Unix time in milliseconds at [`Instant::ZERO`] (envelope timestamps and record expiry
    /// are `unix_epoch_ms + (now - Instant::ZERO)`).
    pub unix_epoch_ms: u64,
    /// Replies whose timestamp differs from the client's clock by more than this are dropped.
    pub max_clock_skew_ms: u64,
    /// How many requests may be in flight at once.
    pub max_pending: usize,
}

impl PnpClientConfig {
    /// Defaults: 5 s timeout, 500 ms first retransmission, 4 retransmissions, 60 s clock skew,
    /// 16 requests in flight.
    pub fn new(
        server: SocketAddr,
        server_key: PublicKey,
        transport: PnpTransport,
        unix_epoch_ms: u64,
    ) -> Self {
        PnpClientConfig {
            server,
            server_key,
            transport,
            local: None,
            bind_options: BindOptions::default(),
            timeout: Duration::from_secs(5),
            retransmit: Duration::from_millis(500),
            max_retransmits: 4,
            unix_epoch_ms,
            max_clock_skew_ms: 60_000,
            max_pending: 16,
        }
    }
}

/// Identifies one request of one client.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pnp-request#{}", self.0)
    }
}

/// Why a command was refused (API misuse or local limits; protocol failures are events).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PnpClientError {
    /// The client is closed.
    Closed,
    /// `max_pending` requests are in flight.
    TooManyPending,
    /// The value is too large.
    Record(RecordError),
    /// Sealing failed.
    Seal,
}

impl fmt::Display for PnpClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PnpClientError::Closed => f.write_str("client closed"),
            PnpClientError::TooManyPending => f.write_str("too many requests in flight"),
            PnpClientError::Record(e) => write!(f, "{e}"),
            PnpClientError::Seal => f.write_str("sealing the request failed"),
        }
    }
}

impl std::error::Error for PnpClientError {}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PnpFailure {
    /// The server refused, with a typed reason (see [`ErrorCode`] for `detail`).
    Refused {
        /// Why.
        code: ErrorCode,
        /// The code's detail number.
        detail: u64,
    },
    /// No valid reply in time.
    Timeout,
    /// The server returned a record whose owner signature does not verify.
    BadRecordSignature,
    /// The server returned a record that has already expired.
    ExpiredRecord,
    /// The server's reply does not match the request (another name, version or kind).
    Mismatch,
    /// The server sent bytes that are not a valid reply (TCP: a bad frame or payload).
    MalformedReply,
    /// A socket operation failed.
    Io {
        /// Which operation.
        op: OpKind,
        /// Why.
        error: IoError,
    },
    /// The server closed the TCP connection before replying.
    ConnectionClosed,
    /// The client was closed.
    Closed,
}

/// The failure in words (a refusal shows its code and detail number).
impl fmt::Display for PnpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PnpFailure::Refused { code, detail } => {
                write!(f, "refused by the server: {code} (detail {detail})")
            }
            PnpFailure::Timeout => f.write_str("no valid reply in time"),
            PnpFailure::BadRecordSignature => {
                f.write_str("the server returned a record whose signature does not verify")
            }
            PnpFailure::ExpiredRecord => f.write_str("the server returned an expired record"),
            PnpFailure::Mismatch => f.write_str("the server's reply does not match the request"),
            PnpFailure::MalformedReply => f.write_str("the server's reply is malformed"),
            PnpFailure::Io { op, error } => write!(f, "{op} failed: {error}"),
            PnpFailure::ConnectionClosed => {
                f.write_str("the server closed the connection before replying")
            }
            PnpFailure::Closed => f.write_str("the client was closed"),
        }
    }
}

impl std::error::Error for PnpFailure {}

/// What the client reports. Every accepted command ends in exactly one event carrying its id.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PnpClientEvent {
    /// The record is stored.
    Registered {
        /// The request.
        id: RequestId,
        /// The name.
        name: Name,
        /// The stored version.
        version: u64,
    },
    /// The name's record; its signature has been verified and it matches the name asked for.
    Found {
        /// The request.
        id: RequestId,
        /// The record.
        record: Box<Record>,
    },
    /// The server has no live record for the name.
    NotFound {
        /// The request.
        id: RequestId,
        /// The name.
        name: Name,
    },
    /// The name was removed.
    Deleted {
        /// The request.
        id: RequestId,
        /// The name.
        name: Name,
        /// The delete's version.
        version: u64,
    },
    /// The request failed.
    Failed {
        /// The request.
        id: RequestId,
        /// Why.
        reason: PnpFailure,
    },
    /// The client is closed; every socket has had its close intent. The last event.
    Closed,
}

/// Counters.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct PnpClientStats {
    /// Requests sent (first transmissions).
    pub requests: u64,
    /// UDP retransmissions.
    pub retransmits: u64,
    /// Replies accepted.
    pub replies: u64,
    /// Datagrams from another address than the server's.
    pub wrong_source: u64,
    /// Envelopes that did not open (bad signature, stale, not for us...) or were not the server's.
    pub bad_envelopes: u64,
    /// Replayed envelopes (duplicate replies to retransmitted requests).
    pub duplicates: u64,
    /// Replies for no pending request.
    pub unknown_request: u64,
    /// Replies from the server that did not parse.
    pub malformed: u64,
}

#[derive(Clone, Debug)]
enum Kind {
    Register { name: Name, version: u64 },
    Lookup { name: Name },
    Delete { name: Name, version: u64 },
}

#[derive(Clone, Debug)]
enum Stage {
    /// UDP: waiting for the shared socket, or sent `sent` times.
    Udp {
        sent: u32,
        next_send: Option<Instant>,
        interval: Duration,
    },
    /// TCP: the request's own socket.
    Tcp {
        socket: SocketId,
        state: TcpState,
        reader: FrameReader,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum TcpState {
    Binding,
    Connecting,
    AwaitingReply,
    /// The bind failed: there is no socket to close.
    NoSocket,
}

#[derive(Clone, Debug)]
struct Pending {
    id: RequestId,
    nonce: [u8; NONCE_LEN],
    kind: Kind,
    /// The sealed request (TCP: with its frame prefix).
    bytes: Vec<u8>,
    deadline: Instant,
    stage: Stage,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum UdpSocket {
    None,
    Binding,
    Bound,
}

/// The PNP client machine. See the [module docs](super) for the protocol.
///
/// Records it registers are signed by its identity, which is also the key requests are sealed
/// with: the server only stores records whose owner sent them.
pub struct PnpClient {
    config: PnpClientConfig,
    identity: Identity,
    rng: Rng,
    opener: Opener,
    udp: UdpSocket,
    pending: Vec<Pending>,
    next_id: u64,
    next_tcp_socket: u32,
    transmits: VecDeque<(SocketId, Vec<u8>)>,
    ops: VecDeque<SocketOp>,
    events: VecDeque<PnpClientEvent>,
    timeout: Option<Instant>,
    closed: bool,
    stats: PnpClientStats,
}

impl fmt::Debug for PnpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PnpClient")
            .field("server", &self.config.server)
            .field("transport", &self.config.transport)
            .field("pending", &self.pending.len())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl PnpClient {
    /// A client of one server with `identity`; `seed` seeds the envelope nonces.
    pub fn new(config: PnpClientConfig, identity: Identity, seed: u64) -> Self {
        let window = config.max_clock_skew_ms;
        let capacity = config.max_pending.max(1).saturating_mul(4);
        PnpClient {
            opener: Opener::with_window(capacity, window, window),
            rng: Rng::from_seed(seed),
            udp: UdpSocket::None,
            pending: Vec::new(),
            next_id: 1,
            next_tcp_socket: 1,
            transmits: VecDeque::new(),
            ops: VecDeque::new(),
            events: VecDeque::new(),
            timeout: None,
            closed: false,
            stats: PnpClientStats::default(),
            identity,
            config,
        }
    }

    /// The canonical id of the server this client talks to.
    pub fn server_id(&self) -> PnpServerId {
        PnpServerId::new(self.config.server, &self.config.server_key)
    }

    /// The counters.
    pub fn stats(&self) -> PnpClientStats {
        self.stats
    }

    /// How many requests are in flight.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Unix time in milliseconds at `now` (see [`PnpClientConfig::unix_epoch_ms`]).
    pub fn unix_ms(&self, now: Instant) -> u64 {
        let since = u64::try_from(now.saturating_duration_since(Instant::ZERO).as_millis())
            .unwrap_or(u64::MAX);
        self.config.unix_epoch_ms.saturating_add(since)
    }

    /// Registers (or updates) `name` with `value`, signed by the client's identity, valid for
    /// `ttl` from now. `version` must exceed the version stored on the server (or equal it with
    /// identical contents, which is a harmless repeat).
    pub fn register(
        &mut self,
        now: Instant,
        name: Name,
        value: Vec<u8>,
        version: u64,
        ttl: Duration,
    ) -> Result<RequestId, PnpClientError> {
        self.check_room()?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let expires_ms = self.unix_ms(now).saturating_add(ttl_ms);
        let record = Record::sign(&self.identity, name.clone(), value, version, expires_ms)
            .map_err(PnpClientError::Record)?;
        self.start(
            now,
            Request::Register(Box::new(record)),
            Kind::Register { name, version },
        )
    }

    /// Looks up `name`.
    pub fn lookup(&mut self, now: Instant, name: Name) -> Result<RequestId, PnpClientError> {
        self.check_room()?;
        self.start(now, Request::Lookup(name.clone()), Kind::Lookup { name })
    }

    /// Deletes `name`, which the client's identity must own; `version` must exceed the stored one.
    pub fn delete(
        &mut self,
        now: Instant,
        name: Name,
        version: u64,
    ) -> Result<RequestId, PnpClientError> {
        self.check_room()?;
        self.start(
            now,
            Request::Delete {
                name: name.clone(),
                version,
            },
            Kind::Delete { name, version },
        )
    }

    /// Fails every request in flight with [`PnpFailure::Closed`], closes every socket (each once)
    /// and ends with [`PnpClientEvent::Closed`]. Idempotent.
    pub fn close(&mut self, _now: Instant) {
        if self.closed {
            return;
        }
        self.closed = true;
        for pending in core::mem::take(&mut self.pending) {
            self.release(&pending);
            self.events.push_back(PnpClientEvent::Failed {
                id: pending.id,
                reason: PnpFailure::Closed,
            });
        }
        if self.udp != UdpSocket::None {
            self.ops.push_back(SocketOp::Close {
                socket: CLIENT_UDP_SOCKET,
            });
            self.udp = UdpSocket::None;
        }
        self.transmits.clear();
        self.timeout = None;
        self.events.push_back(PnpClientEvent::Closed);
    }

    fn check_room(&self) -> Result<(), PnpClientError> {
        if self.closed {
            return Err(PnpClientError::Closed);
        }
        if self.pending.len() >= self.config.max_pending {
            return Err(PnpClientError::TooManyPending);
        }
        Ok(())
    }

    fn local_addr(&self) -> SocketAddr {
        self.config.local.unwrap_or_else(|| {
            let ip = match self.config.server {
                SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            };
            SocketAddr::new(ip, 0)
        })
    }

    fn start(
        &mut self,
        now: Instant,
        request: Request,
        kind: Kind,
    ) -> Result<RequestId, PnpClientError> {
        let udp = self.config.transport == PnpTransport::Udp;
        let pad_to = match (&request, udp) {
            (Request::Lookup(_), true) => UDP_LOOKUP_PAYLOAD_LEN,
            (_, true) => MIN_UDP_REQUEST_PAYLOAD,
            (_, false) => 0,
        };
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill_bytes(&mut nonce);
        let sealed = envelope::seal(
            &self.identity,
            &self.config.server_key,
            self.unix_ms(now),
            nonce,
            &request.encode(pad_to),
        )
        .map_err(|_| PnpClientError::Seal)?;
        let id = RequestId(self.next_id);
        self.next_id = self.next_id.saturating_add(1);
        let local = self.local_addr();
        let (bytes, stage) = if udp {
            if self.udp == UdpSocket::None {
                self.udp = UdpSocket::Binding;
                self.ops.push_back(SocketOp::Bind {
                    socket: CLIENT_UDP_SOCKET,
                    transport: Transport::Udp,
                    local,
                    options: self.config.bind_options,
                });
            }
            let stage = Stage::Udp {
                sent: 0,
                next_send: None,
                interval: self.config.retransmit,
            };
            (sealed, stage)
        } else {
            let socket = self.next_tcp_id();
            self.ops.push_back(SocketOp::Bind {
                socket,
                transport: Transport::Tcp,
                local,
                options: self.config.bind_options,
            });
            let framed = wire::frame(&sealed).ok_or(PnpClientError::Seal)?;
            let stage = Stage::Tcp {
                socket,
                state: TcpState::Binding,
                reader: FrameReader::new(MAX_MESSAGE_LEN),
            };
            (framed, stage)
        };
        self.pending.push(Pending {
            id,
            nonce,
            kind,
            bytes,
            deadline: now.saturating_add(self.config.timeout),
            stage,
        });
        if udp && self.udp == UdpSocket::Bound {
            self.send_udp_due(now);
        }
        self.refresh_timeout();
        Ok(id)
    }

    /// A TCP socket id not used by any request in flight (and never the UDP socket's).
    fn next_tcp_id(&mut self) -> SocketId {
        loop {
            let candidate = SocketId(self.next_tcp_socket);
            self.next_tcp_socket = self.next_tcp_socket.checked_add(1).unwrap_or(1);
            let in_use = self
                .pending
                .iter()
                .any(|p| matches!(&p.stage, Stage::Tcp { socket, .. } if *socket == candidate));
            if candidate != CLIENT_UDP_SOCKET && !in_use {
                return candidate;
            }
        }
    }

    fn tcp_index(&self, socket: SocketId) -> Option<usize> {
        self.pending
            .iter()
            .position(|p| tcp_socket(p) == Some(socket))
    }

    /// Opens, checks and applies one sealed reply. `expected`: the TCP request it arrived for.
    fn handle_reply(&mut self, now: Instant, data: &[u8], expected: Option<usize>) -> Verdict {
        let now_ms = self.unix_ms(now);
        let opened = match self.opener.open(&self.identity, now_ms, data) {
            Ok(opened) => opened,
            Err(envelope::OpenError::Replay) => {
                self.stats.duplicates = self.stats.duplicates.saturating_add(1);
                return Verdict::Dropped(DropReason::Duplicate);
            }
            Err(_) => {
                self.stats.bad_envelopes = self.stats.bad_envelopes.saturating_add(1);
                return Verdict::Dropped(DropReason::Unexpected);
            }
        };
        if opened.sender != self.config.server_key {
            self.stats.bad_envelopes = self.stats.bad_envelopes.saturating_add(1);
            return Verdict::Dropped(DropReason::WrongSource);
        }
        let reply = match Reply::decode(&opened.payload) {
            Ok(reply) => reply,
            Err(_) => {
                self.stats.malformed = self.stats.malformed.saturating_add(1);
                return Verdict::Dropped(DropReason::Unexpected);
            }
        };
        let Some(index) = self
            .pending
            .iter()
            .position(|p| p.nonce == reply.request_nonce)
        else {
            self.stats.unknown_request = self.stats.unknown_request.saturating_add(1);
            return Verdict::Dropped(DropReason::UnknownTransaction);
        };
        if expected.is_some_and(|e| e != index) {
            // A reply to another request, on this request's connection.
            self.stats.unknown_request = self.stats.unknown_request.saturating_add(1);
            return Verdict::Dropped(DropReason::WrongSocket);
        }
        self.stats.replies = self.stats.replies.saturating_add(1);
        let outcome = self
            .pending
            .get(index)
            .map(|p| judge(&p.kind, reply.body, now_ms));
        if let Some(outcome) = outcome {
            self.finish(index, outcome);
        }
        Verdict::Consumed
    }

    /// Removes request `index`, releases its socket and reports `outcome`.
    fn finish(&mut self, index: usize, outcome: Result<Success, PnpFailure>) {
        if index >= self.pending.len() {
            return;
        }
        let pending = self.pending.swap_remove(index);
        self.release(&pending);
        let id = pending.id;
        let event = match outcome {
            Ok(Success::Registered { version }) => PnpClientEvent::Registered {
                id,
                name: kind_name(pending.kind),
                version,
            },
            Ok(Success::Found(record)) => PnpClientEvent::Found { id, record },
            Ok(Success::NotFound) => PnpClientEvent::NotFound {
                id,
                name: kind_name(pending.kind),
            },
            Ok(Success::Deleted { version }) => PnpClientEvent::Deleted {
                id,
                name: kind_name(pending.kind),
                version,
            },
            Err(reason) => PnpClientEvent::Failed { id, reason },
        };
        self.events.push_back(event);
    }

    /// Closes a finished request's TCP socket (exactly once: the request is gone afterwards).
    fn release(&mut self, pending: &Pending) {
        if let Stage::Tcp { socket, state, .. } = &pending.stage {
            if *state != TcpState::NoSocket {
                self.ops.push_back(SocketOp::Close { socket: *socket });
            }
            let socket = *socket;
            self.transmits.retain(|(s, _)| *s != socket);
        }
    }

    fn udp_result(&mut self, now: Instant, outcome: SocketOutcome) {
        match outcome {
            SocketOutcome::Bound { .. } if self.udp == UdpSocket::Binding => {
                self.udp = UdpSocket::Bound;
                self.send_udp_due(now);
            }
            SocketOutcome::Failed {
                op: OpKind::Bind,
                error,
                ..
            } if self.udp == UdpSocket::Binding => {
                // No socket exists; the next command binds again.
                self.udp = UdpSocket::None;
                let mut index = 0;
                while index < self.pending.len() {
                    let is_udp = self
                        .pending
                        .get(index)
                        .is_some_and(|p| matches!(p.stage, Stage::Udp { .. }));
                    if is_udp {
                        self.finish(
                            index,
                            Err(PnpFailure::Io {
                                op: OpKind::Bind,
                                error,
                            }),
                        );
                    } else {
                        index = index.saturating_add(1);
                    }
                }
            }
            // Send failures and ICMP errors: the retransmissions and the timeout decide.
            _ => {}
        }
    }

    fn tcp_result(&mut self, index: usize, socket: SocketId, outcome: SocketOutcome) {
        let server = self.config.server;
        let Some(pending) = self.pending.get_mut(index) else {
            return;
        };
        let Stage::Tcp { state, .. } = &mut pending.stage else {
            return;
        };
        match outcome {
            SocketOutcome::Bound { .. } if *state == TcpState::Binding => {
                *state = TcpState::Connecting;
                self.ops.push_back(SocketOp::Connect {
                    socket,
                    remote: server,
                });
            }
            SocketOutcome::Connected { .. } if *state == TcpState::Connecting => {
                *state = TcpState::AwaitingReply;
                let bytes = pending.bytes.clone();
                self.transmits.push_back((socket, bytes));
                self.stats.requests = self.stats.requests.saturating_add(1);
            }
            SocketOutcome::Failed { op, error, .. } => {
                if op == OpKind::Bind && *state == TcpState::Binding {
                    *state = TcpState::NoSocket;
                }
                self.finish(index, Err(PnpFailure::Io { op, error }));
            }
            SocketOutcome::PeerClosed => self.finish(index, Err(PnpFailure::ConnectionClosed)),
            _ => {}
        }
    }

    /// Sends every UDP request that is due: first transmissions and retransmissions.
    fn send_udp_due(&mut self, now: Instant) {
        let max = self.config.max_retransmits;
        for pending in &mut self.pending {
            let Stage::Udp {
                sent,
                next_send,
                interval,
            } = &mut pending.stage
            else {
                continue;
            };
            let due = next_send.is_none_or(|t| now >= t);
            if !due || *sent > max {
                continue;
            }
            if *sent == 0 {
                self.stats.requests = self.stats.requests.saturating_add(1);
            } else {
                self.stats.retransmits = self.stats.retransmits.saturating_add(1);
                *interval = interval.saturating_mul(2);
            }
            *sent = sent.saturating_add(1);
            *next_send = if *sent > max {
                Some(Instant::MAX)
            } else {
                Some(now.saturating_add(*interval))
            };
            self.transmits
                .push_back((CLIENT_UDP_SOCKET, pending.bytes.clone()));
        }
    }

    fn refresh_timeout(&mut self) {
        if self.closed {
            self.timeout = None;
            return;
        }
        let mut next: Option<Instant> = None;
        for pending in &self.pending {
            let mut at = pending.deadline;
            if let Stage::Udp {
                next_send: Some(t), ..
            } = pending.stage
            {
                at = at.min(t);
            }
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        self.timeout = next;
    }
}

impl p2pd_proto::Machine for PnpClient {
    type Event = PnpClientEvent;

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
        if socket != CLIENT_UDP_SOCKET || self.udp != UdpSocket::Bound {
            return Verdict::Dropped(DropReason::UnknownSocket);
        }
        if from != self.config.server {
            self.stats.wrong_source = self.stats.wrong_source.saturating_add(1);
            return Verdict::Dropped(DropReason::WrongSource);
        }
        let verdict = self.handle_reply(now, data, None);
        self.refresh_timeout();
        verdict
    }

    /// Handles bytes on a request's TCP connection.
    fn handle_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        if self.closed {
            return Verdict::Dropped(DropReason::Closed);
        }
        let Some(index) = self.tcp_index(socket) else {
            return Verdict::Dropped(DropReason::UnknownSocket);
        };
        let mut rest = data;
        let event = match self.pending.get_mut(index).map(|p| &mut p.stage) {
            Some(Stage::Tcp { reader, .. }) => reader.next(&mut rest),
            _ => None,
        };
        let verdict = match event {
            None => Verdict::Consumed,
            Some(FrameEvent::BadLength(_)) => {
                self.stats.malformed = self.stats.malformed.saturating_add(1);
                self.finish(index, Err(PnpFailure::MalformedReply));
                Verdict::Dropped(DropReason::Unexpected)
            }
            Some(FrameEvent::Frame(body)) => {
                let verdict = self.handle_reply(now, &body, Some(index));
                if self
                    .pending
                    .get(index)
                    .is_some_and(|p| tcp_socket(p) == Some(socket))
                {
                    // The one frame was not a valid reply for this request.
                    self.finish(index, Err(PnpFailure::MalformedReply));
                }
                verdict
            }
        };
        self.refresh_timeout();
        verdict
    }

    /// Handles the outcome of an intent, or an asynchronous socket error.
    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        if self.closed {
            return;
        }
        if socket == CLIENT_UDP_SOCKET {
            self.udp_result(now, outcome);
        } else if let Some(index) = self.tcp_index(socket) {
            self.tcp_result(index, socket, outcome);
        }
        self.refresh_timeout();
    }

    /// Retransmits UDP requests and fails requests past their deadline.
    fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        let mut index = 0;
        while index < self.pending.len() {
            if self.pending.get(index).is_some_and(|p| now >= p.deadline) {
                self.finish(index, Err(PnpFailure::Timeout));
            } else {
                index = index.saturating_add(1);
            }
        }
        if self.udp == UdpSocket::Bound {
            self.send_udp_due(now);
        }
        self.refresh_timeout();
    }

    /// Writes the next request (datagram, or TCP frame) into `buf`.
    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        while let Some((socket, bytes)) = self.transmits.pop_front() {
            let Some(dst) = buf.get_mut(..bytes.len()) else {
                continue;
            };
            dst.copy_from_slice(&bytes);
            return Some(Transmit {
                socket,
                destination: self.config.server,
                len: bytes.len(),
            });
        }
        None
    }

    /// The next socket intent.
    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        self.ops.pop_front()
    }

    /// The next event.
    fn poll_event(&mut self) -> Option<PnpClientEvent> {
        self.events.pop_front()
    }

    /// The next deadline (retransmission or timeout). O(1).
    fn poll_timeout(&self) -> Option<Instant> {
        self.timeout
    }
}

fn tcp_socket(pending: &Pending) -> Option<SocketId> {
    match pending.stage {
        Stage::Tcp { socket, .. } => Some(socket),
        Stage::Udp { .. } => None,
    }
}

fn kind_name(kind: Kind) -> Name {
    match kind {
        Kind::Register { name, .. } | Kind::Lookup { name } | Kind::Delete { name, .. } => name,
    }
}

enum Success {
    Registered { version: u64 },
    Found(Box<Record>),
    NotFound,
    Deleted { version: u64 },
}

/// Whether `body` is a valid answer to a request of `kind`.
fn judge(kind: &Kind, body: ReplyBody, now_ms: u64) -> Result<Success, PnpFailure> {
    match (kind, body) {
        (_, ReplyBody::Error { code, detail }) => match (kind, code) {
            (Kind::Lookup { .. }, ErrorCode::NotFound) => Ok(Success::NotFound),
            _ => Err(PnpFailure::Refused { code, detail }),
        },
        (Kind::Register { version, .. }, ReplyBody::Registered { version: stored }) => {
            if stored == *version {
                Ok(Success::Registered { version: stored })
            } else {
                Err(PnpFailure::Mismatch)
            }
        }
        (Kind::Lookup { name }, ReplyBody::Found(record)) => {
            if record.name() != name {
                Err(PnpFailure::Mismatch)
            } else if !record.verify() {
                Err(PnpFailure::BadRecordSignature)
            } else if record.is_expired(now_ms) {
                Err(PnpFailure::ExpiredRecord)
            } else {
                Ok(Success::Found(record))
            }
        }
        (Kind::Delete { version, .. }, ReplyBody::Deleted { version: deleted }) => {
            if deleted == *version {
                Ok(Success::Deleted { version: deleted })
            } else {
                Err(PnpFailure::Mismatch)
            }
        }
        _ => Err(PnpFailure::Mismatch),
    }
}

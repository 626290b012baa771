//! The TURN client machine: one allocation over a TCP control connection to the server.
//!
//! [`TurnClient`] binds and connects its control socket ([`CONTROL_SOCKET`]), sends an Allocate
//! (REQUESTED-TRANSPORT UDP, or TCP for an RFC 6062 allocation), answers the server's 401
//! challenge with the long-term credentials under its REALM and NONCE, retries once more per
//! request on 438 (stale nonce), reports the relayed address ([`TurnEvent::Allocated`]), refreshes
//! the allocation at half its lifetime, creates permissions on demand
//! ([`TurnClient::create_permission`]) and refreshes them every [`PERMISSION_REFRESH`].
//!
//! Every error code becomes a typed [`TurnFailure`]. A failure of the allocation (Allocate or
//! Refresh answered with an error, a timeout, the connection lost) ends the machine:
//! [`TurnEvent::Failed`], the control socket's close intent, then [`TurnEvent::Closed`]. A refused
//! CreatePermission is only [`TurnEvent::PermissionFailed`].
//!
//! [`TurnClient::close`] is idempotent: with an allocation it sends a Refresh with LIFETIME 0 (the
//! deallocation) and closes the socket once that is answered, refused or timed out; without one
//! it closes the socket at once. Then [`TurnEvent::Closed`], the last event.
//!
//! With a UDP allocation, [`TurnClient::send_to`] sends Send indications, and Data indications
//! from permitted peers are [`TurnEvent::PeerData`]. With a TCP allocation,
//! [`TurnClient::connect`] asks the relay to connect to a peer (RFC 6062 Connect), and a peer's
//! connection to the relayed address arrives as a ConnectionAttempt; either way the machine opens
//! a data connection to the server, sends ConnectionBind on it and hands the bound stream to the
//! caller ([`TurnEvent::PeerConnected`]); a failure is [`TurnEvent::PeerConnectFailed`]. At most
//! [`MAX_DATA_CONNECTIONS`] are set up at once.
//!
//! TCP is reliable, so there are no retransmissions (RFC 8489 §6.2.2): each request has one
//! deadline, [`TurnConfig::timeout`].
//!
//! ```
//! use core::time::Duration;
//! use p2pd_proto::{Instant, Machine, SocketOp, SocketOutcome, TRANSMIT_BUFFER_LEN};
//! use p2pd_turn::{Credentials, TurnClient, TurnConfig, TurnEvent, TurnFailure, CONTROL_SOCKET};
//!
//! let server = "192.0.2.1:3478".parse().unwrap();
//! let local = "10.0.0.2:0".parse().unwrap();
//! // TURN REST API credentials from coturn's static-auth-secret, valid for an hour from the
//! // caller's wall clock (here a fixed unix time).
//! let credentials = Credentials::rest(b"secret", "alice", 1_700_000_000, Duration::from_secs(3600));
//! let mut c = TurnClient::new(TurnConfig::new(server, local, credentials), 7, Instant::ZERO);
//! let Some(SocketOp::Bind { socket, .. }) = c.poll_socket_op() else { unreachable!() };
//! c.handle_socket_result(Instant::ZERO, socket, SocketOutcome::Bound { local });
//! assert!(matches!(c.poll_socket_op(), Some(SocketOp::Connect { .. })));
//! c.handle_socket_result(Instant::ZERO, socket, SocketOutcome::Connected { local, remote: server });
//! let mut buf = [0u8; TRANSMIT_BUFFER_LEN];
//! let allocate = c.poll_transmit(&mut buf).unwrap();
//! assert_eq!(allocate.socket, CONTROL_SOCKET);
//! // ...the runtime writes buf[..allocate.len] to the stream and feeds the server's bytes to
//! // `c.handle_stream(now, CONTROL_SOCKET, chunk)`; no answer within the timeout fails:
//! c.handle_timeout(Instant::ZERO + Duration::from_secs(10));
//! assert_eq!(c.poll_event(), Some(TurnEvent::Failed(TurnFailure::Timeout)));
//! assert_eq!(c.poll_socket_op(), Some(SocketOp::Close { socket: CONTROL_SOCKET }));
//! assert_eq!(c.poll_event(), Some(TurnEvent::Closed { deallocated: false }));
//! ```

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::VecDeque;

use p2pd_proto::stun::{
    attr as stun_attr, Attribute, Class, DecodeError, Header, Message, MessageWriter, Method,
    TransactionId,
};
use p2pd_proto::{
    BindOptions, DropReason, Instant, IoError, Machine, OpKind, Rng, SocketId, SocketOp,
    SocketOutcome, Transmit, Transport, Verdict,
};

use crate::codec::{
    self, attr, error, long_term_key, method, RestCredentials, TurnAttribute, TurnWriter,
};

/// The control connection's socket id.
pub const CONTROL_SOCKET: SocketId = SocketId(0);

/// How often permissions are refreshed (they last 300 s, RFC 8656 §9).
pub const PERMISSION_REFRESH: Duration = Duration::from_secs(240);

/// Most peers a client keeps permissions for; more is [`TurnError::TooManyPermissions`].
pub const MAX_PERMISSIONS: usize = 16;

/// Most RFC 6062 data connections being set up at once (Connect answered or ConnectionAttempt
/// received, ConnectionBind not answered yet); more ConnectionAttempts are ignored and counted.
pub const MAX_DATA_CONNECTIONS: usize = 8;

/// Most Send indications waiting to be transmitted ([`TurnClient::send_to`]).
pub const MAX_SEND_QUEUE: usize = 16;

/// The longest payload [`TurnClient::send_to`] takes: a Send indication with it fits in a
/// 1500-byte transmit.
pub const MAX_SEND_LEN: usize = 1400;

/// Most requests in flight at once (Allocate or Refresh, permissions, Connects, ConnectionBinds).
const MAX_PENDING: usize = MAX_PERMISSIONS + 2 * MAX_DATA_CONNECTIONS + 2;

/// Stale-nonce retries allowed per request.
const MAX_STALE_NONCE_RETRIES: u8 = 2;

/// The longest message (STUN or ChannelData) accepted on the control connection.
pub const MAX_CONTROL_MESSAGE_LEN: usize = 2048;

/// Longest REALM and NONCE taken from a challenge (RFC 8489 allows fewer than 128 characters):
/// with a USERNAME of at most 513 bytes every request fits in a 1500-byte transmit.
const MAX_CHALLENGE_LEN: usize = 256;

/// ALTERNATE-SERVER (RFC 8489 §14.15), carried by 300 Try Alternate.
const ALTERNATE_SERVER: u16 = 0x8023;

/// Long-term credentials (RFC 8489 §9.2), given as they are or made from a TURN REST API secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The USERNAME.
    pub username: String,
    /// The password (after OpaqueString processing; ASCII passwords are unchanged by it).
    pub password: String,
}

impl core::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Static long-term credentials (coturn `--user u:p --lt-cred-mech`).
    pub fn long_term(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// TURN REST API credentials (coturn `--use-auth-secret --static-auth-secret`): valid for
    /// `ttl` from `unix_now` (seconds since the unix epoch, from the caller's wall clock).
    pub fn rest(secret: &[u8], user: &str, unix_now: u64, ttl: Duration) -> Self {
        let c = RestCredentials::new(secret, user, unix_now.saturating_add(ttl.as_secs()));
        Credentials {
            username: c.username,
            password: c.password,
        }
    }
}

/// What the relay relays.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum RelayTransport {
    /// A UDP relayed address (RFC 8656).
    Udp,
    /// A TCP relayed address (RFC 6062).
    Tcp,
}

/// Settings of a [`TurnClient`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnConfig {
    /// The TURN server's TCP address.
    pub server: SocketAddr,
    /// The local address to bind the control connection to (port 0 picks any).
    pub local: SocketAddr,
    /// Options set before the bind.
    pub options: BindOptions,
    /// The relayed transport to ask for.
    pub transport: RelayTransport,
    /// The credentials.
    pub credentials: Credentials,
    /// The LIFETIME to ask for (`None`: the server's default, 600 s).
    pub lifetime: Option<Duration>,
    /// Connecting, and each request, must be answered within this time.
    pub timeout: Duration,
    /// SOFTWARE to put in requests.
    pub software: Option<&'static str>,
}

impl TurnConfig {
    /// A TCP allocation on `server` with `credentials`, from any local port, 10 s per step.
    pub fn new(server: SocketAddr, local: SocketAddr, credentials: Credentials) -> Self {
        TurnConfig {
            server,
            local,
            options: BindOptions::default(),
            transport: RelayTransport::Tcp,
            credentials,
            lifetime: None,
            timeout: Duration::from_secs(10),
            software: None,
        }
    }
}

/// Why a TURN operation failed: one variant per error code of RFC 8656, RFC 6062 and RFC 8489,
/// and the transport's failures.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TurnFailure {
    /// 300 Try Alternate, with the ALTERNATE-SERVER if the server named one.
    TryAlternate(Option<SocketAddr>),
    /// 400 Bad Request.
    BadRequest,
    /// 401 answered to a request that carried the credentials: they are wrong (or expired).
    Unauthenticated,
    /// 401 without the REALM and NONCE a challenge needs.
    BadChallenge,
    /// 403 Forbidden.
    Forbidden,
    /// 420 Unknown Attribute.
    UnknownAttribute,
    /// 437 Allocation Mismatch.
    AllocationMismatch,
    /// 438 Stale Nonce, again after the retries.
    StaleNonce,
    /// 440 Address Family not Supported.
    AddressFamilyNotSupported,
    /// 441 Wrong Credentials.
    WrongCredentials,
    /// 442 Unsupported Transport Protocol.
    UnsupportedTransportProtocol,
    /// 443 Peer Address Family Mismatch.
    PeerAddressFamilyMismatch,
    /// 446 Connection Already Exists (RFC 6062).
    ConnectionAlreadyExists,
    /// 447 Connection Timeout or Failure (RFC 6062).
    ConnectionTimeoutOrFailure,
    /// 486 Allocation Quota Reached.
    AllocationQuotaReached,
    /// 500 Server Error.
    ServerError,
    /// 508 Insufficient Capacity.
    InsufficientCapacity,
    /// Any other error code.
    Other(u16),
    /// No answer within [`TurnConfig::timeout`].
    Timeout,
    /// The control socket could not be bound.
    BindFailed(IoError),
    /// The control connection could not be made.
    ConnectFailed(IoError),
    /// The control connection failed after it was made.
    SocketError(IoError),
    /// The server closed the control connection.
    PeerClosed,
    /// The server sent bytes that are not a STUN message (or one too long).
    Malformed(DecodeError),
    /// A success response without what it must carry (XOR-RELAYED-ADDRESS), or with an invalid
    /// value.
    BadResponse,
}

impl TurnFailure {
    /// The failure for an error response with `code` (and ALTERNATE-SERVER `alternate`).
    pub fn from_code(code: u16, alternate: Option<SocketAddr>) -> TurnFailure {
        match code {
            error::TRY_ALTERNATE => TurnFailure::TryAlternate(alternate),
            error::BAD_REQUEST => TurnFailure::BadRequest,
            error::UNAUTHENTICATED => TurnFailure::Unauthenticated,
            error::FORBIDDEN => TurnFailure::Forbidden,
            error::UNKNOWN_ATTRIBUTE => TurnFailure::UnknownAttribute,
            error::ALLOCATION_MISMATCH => TurnFailure::AllocationMismatch,
            error::STALE_NONCE => TurnFailure::StaleNonce,
            error::ADDRESS_FAMILY_NOT_SUPPORTED => TurnFailure::AddressFamilyNotSupported,
            error::WRONG_CREDENTIALS => TurnFailure::WrongCredentials,
            error::UNSUPPORTED_TRANSPORT_PROTOCOL => TurnFailure::UnsupportedTransportProtocol,
            error::PEER_ADDRESS_FAMILY_MISMATCH => TurnFailure::PeerAddressFamilyMismatch,
            error::CONNECTION_ALREADY_EXISTS => TurnFailure::ConnectionAlreadyExists,
            error::CONNECTION_TIMEOUT_OR_FAILURE => TurnFailure::ConnectionTimeoutOrFailure,
            error::ALLOCATION_QUOTA_REACHED => TurnFailure::AllocationQuotaReached,
            error::SERVER_ERROR => TurnFailure::ServerError,
            error::INSUFFICIENT_CAPACITY => TurnFailure::InsufficientCapacity,
            other => TurnFailure::Other(other),
        }
    }
}

impl core::fmt::Display for TurnFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TurnFailure::TryAlternate(Some(a)) => write!(f, "300 try alternate server {a}"),
            TurnFailure::TryAlternate(None) => f.write_str("300 try alternate (none named)"),
            TurnFailure::BadRequest => f.write_str("400 bad request"),
            TurnFailure::Unauthenticated => f.write_str("401 unauthenticated: credentials refused"),
            TurnFailure::BadChallenge => f.write_str("401 without realm and nonce"),
            TurnFailure::Forbidden => f.write_str("403 forbidden"),
            TurnFailure::UnknownAttribute => f.write_str("420 unknown attribute"),
            TurnFailure::AllocationMismatch => f.write_str("437 allocation mismatch"),
            TurnFailure::StaleNonce => f.write_str("438 stale nonce, after retries"),
            TurnFailure::AddressFamilyNotSupported => {
                f.write_str("440 address family not supported")
            }
            TurnFailure::WrongCredentials => f.write_str("441 wrong credentials"),
            TurnFailure::UnsupportedTransportProtocol => {
                f.write_str("442 unsupported transport protocol")
            }
            TurnFailure::PeerAddressFamilyMismatch => {
                f.write_str("443 peer address family mismatch")
            }
            TurnFailure::ConnectionAlreadyExists => f.write_str("446 connection already exists"),
            TurnFailure::ConnectionTimeoutOrFailure => {
                f.write_str("447 connection timeout or failure")
            }
            TurnFailure::AllocationQuotaReached => f.write_str("486 allocation quota reached"),
            TurnFailure::ServerError => f.write_str("500 server error"),
            TurnFailure::InsufficientCapacity => f.write_str("508 insufficient capacity"),
            TurnFailure::Other(code) => write!(f, "error {code}"),
            TurnFailure::Timeout => f.write_str("no answer in time"),
            TurnFailure::BindFailed(e) => write!(f, "bind failed: {e}"),
            TurnFailure::ConnectFailed(e) => write!(f, "connect failed: {e}"),
            TurnFailure::SocketError(e) => write!(f, "control connection failed: {e}"),
            TurnFailure::PeerClosed => f.write_str("server closed the control connection"),
            TurnFailure::Malformed(e) => write!(f, "malformed message from the server: {e}"),
            TurnFailure::BadResponse => f.write_str("success response without a relayed address"),
        }
    }
}

impl std::error::Error for TurnFailure {}

/// API misuse.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TurnError {
    /// There is no allocation (yet, or any more).
    NotAllocated,
    /// [`MAX_PERMISSIONS`] peers already have permissions.
    TooManyPermissions,
    /// Connect needs a TCP allocation (RFC 6062).
    NotTcpAllocation,
    /// [`MAX_DATA_CONNECTIONS`] data connections are already being set up.
    TooManyConnections,
    /// Send indications need a UDP allocation.
    NotUdpAllocation,
    /// No permission for the peer's IP address ([`TurnClient::create_permission`] first).
    NoPermission,
    /// The payload is longer than [`MAX_SEND_LEN`].
    TooLong,
    /// [`MAX_SEND_QUEUE`] sends are waiting; drain the transmits first.
    QueueFull,
}

impl core::fmt::Display for TurnError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TurnError::NotAllocated => f.write_str("no allocation"),
            TurnError::TooManyPermissions => f.write_str("too many permissions"),
            TurnError::NotTcpAllocation => f.write_str("connect needs a tcp allocation"),
            TurnError::TooManyConnections => f.write_str("too many data connections in setup"),
            TurnError::NotUdpAllocation => f.write_str("send needs a udp allocation"),
            TurnError::NoPermission => f.write_str("no permission for the peer"),
            TurnError::TooLong => f.write_str("payload too long for one send indication"),
            TurnError::QueueFull => f.write_str("send queue full"),
        }
    }
}

impl std::error::Error for TurnError {}

/// What a [`TurnClient`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TurnEvent {
    /// The allocation exists.
    Allocated {
        /// The relayed transport address (XOR-RELAYED-ADDRESS).
        relayed: SocketAddr,
        /// The server's view of the control connection (XOR-MAPPED-ADDRESS), if it sent one.
        mapped: Option<SocketAddr>,
        /// The granted lifetime.
        lifetime: Duration,
    },
    /// A Refresh succeeded.
    Refreshed {
        /// The granted lifetime.
        lifetime: Duration,
    },
    /// A permission for `peer`'s IP address exists (first creation only; refreshes are silent).
    PermissionCreated {
        /// The peer.
        peer: SocketAddr,
    },
    /// A permission could not be created (the allocation stays).
    PermissionFailed {
        /// The peer.
        peer: SocketAddr,
        /// Why.
        failure: TurnFailure,
    },
    /// An RFC 6062 data connection to `peer` through the relay is bound (after
    /// [`TurnClient::connect`], or a peer's connection to the relayed address): the stream on
    /// `socket` now carries the peer's bytes, and the socket is the caller's (the machine never
    /// names it again; the caller closes it).
    PeerConnected {
        /// The peer.
        peer: SocketAddr,
        /// The data connection, handed over.
        socket: SocketId,
        /// Bytes of the peer's that arrived right behind the ConnectionBind answer.
        data: Vec<u8>,
    },
    /// A datagram from `peer` relayed on a UDP allocation (a Data indication).
    PeerData {
        /// The peer.
        peer: SocketAddr,
        /// The datagram.
        data: Vec<u8>,
    },
    /// A data connection to or from `peer` could not be made (its socket, if any, is closed).
    PeerConnectFailed {
        /// The peer.
        peer: SocketAddr,
        /// Why.
        failure: TurnFailure,
    },
    /// The allocation failed or was lost. [`TurnEvent::Closed`] follows.
    Failed(TurnFailure),
    /// The control socket has had its close intent. The last event.
    Closed {
        /// Whether the server confirmed the deallocation (Refresh with LIFETIME 0 answered).
        deallocated: bool,
    },
}

/// Counters.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TurnStats {
    /// Requests sent (retries included).
    pub requests: u64,
    /// Messages from the server dropped (unknown transaction, integrity mismatch, indications,
    /// ChannelData).
    pub ignored: u64,
    /// Refreshes that succeeded.
    pub refreshes: u64,
    /// Data connections handed over.
    pub connections: u64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum State {
    Binding,
    Connecting,
    /// Connected; the Allocate is in flight.
    Allocating,
    Allocated,
    /// The deallocating Refresh is in flight.
    Closing,
    Done,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Kind {
    Allocate,
    Refresh { lifetime: u32 },
    CreatePermission { peer: SocketAddr, first: bool },
    Connect { peer: SocketAddr },
    ConnectionBind { socket: SocketId, id: u32 },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum DataPhase {
    Binding,
    Connecting,
    /// Connected; the ConnectionBind is in flight.
    Binding2,
}

/// An RFC 6062 data connection being set up.
#[derive(Clone, Debug)]
struct DataConn {
    socket: SocketId,
    peer: SocketAddr,
    id: u32,
    phase: DataPhase,
    deadline: Instant,
    /// The socket exists (its bind did not fail) and is ours to close.
    opened: bool,
    /// The ConnectionBind answer, as it arrives.
    buf: Vec<u8>,
}

#[derive(Copy, Clone, Debug)]
struct Pending {
    id: TransactionId,
    /// The socket it is sent on.
    socket: SocketId,
    kind: Kind,
    deadline: Instant,
    stale_retries: u8,
    /// Sent with credentials (a 401 to it is a refusal, not a challenge).
    authenticated: bool,
    /// Waiting in the send queue.
    unsent: bool,
}

/// The long-term credential state after the first challenge.
#[derive(Clone, Debug)]
struct Auth {
    realm: String,
    nonce: Vec<u8>,
    key: [u8; 16],
}

/// The TURN client machine. See the module docs.
#[derive(Debug)]
pub struct TurnClient {
    config: TurnConfig,
    rng: Rng,
    state: State,
    socket_open: bool,
    connect_deadline: Option<Instant>,
    auth: Option<Auth>,
    pending: Vec<Pending>,
    relayed: Option<SocketAddr>,
    refresh_at: Option<Instant>,
    permissions: Vec<SocketAddr>,
    permissions_at: Option<Instant>,
    deallocated: bool,
    data: Vec<DataConn>,
    next_data_socket: u32,
    sends: VecDeque<(SocketAddr, Vec<u8>)>,
    deadline: Option<Instant>,
    buf: Box<[u8]>,
    held: usize,
    ops: VecDeque<SocketOp>,
    events: VecDeque<TurnEvent>,
    stats: TurnStats,
}

impl TurnClient {
    /// A client for `config`; `seed` determines the transaction ids. Emits its bind intent at once.
    pub fn new(config: TurnConfig, seed: u64, now: Instant) -> Self {
        let mut ops = VecDeque::new();
        ops.push_back(SocketOp::Bind {
            socket: CONTROL_SOCKET,
            transport: Transport::Tcp,
            local: config.local,
            options: config.options,
        });
        let connect_deadline = Some(now.saturating_add(config.timeout));
        TurnClient {
            rng: Rng::from_seed(seed),
            state: State::Binding,
            socket_open: true,
            connect_deadline,
            auth: None,
            pending: Vec::new(),
            relayed: None,
            refresh_at: None,
            permissions: Vec::new(),
            permissions_at: None,
            deallocated: false,
            data: Vec::new(),
            sends: VecDeque::new(),
            next_data_socket: CONTROL_SOCKET.0.saturating_add(1),
            deadline: connect_deadline,
            buf: vec![0u8; MAX_CONTROL_MESSAGE_LEN].into_boxed_slice(),
            held: 0,
            ops,
            events: VecDeque::new(),
            stats: TurnStats::default(),
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &TurnConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> TurnStats {
        self.stats
    }

    /// The relayed address, while allocated.
    pub fn relayed(&self) -> Option<SocketAddr> {
        self.relayed.filter(|_| self.state == State::Allocated)
    }

    /// Whether the machine has ended.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Asks for a permission for `peer`'s IP address (RFC 8656 §9); kept refreshed until close.
    /// A peer whose IP already has one is accepted and nothing is sent.
    pub fn create_permission(&mut self, now: Instant, peer: SocketAddr) -> Result<(), TurnError> {
        if self.state != State::Allocated {
            return Err(TurnError::NotAllocated);
        }
        if self.permissions.iter().any(|p| p.ip() == peer.ip()) {
            return Ok(());
        }
        if self.permissions.len() >= MAX_PERMISSIONS {
            return Err(TurnError::TooManyPermissions);
        }
        self.permissions.push(peer);
        let _ = self.start(now, Kind::CreatePermission { peer, first: true });
        self.permissions_at
            .get_or_insert(now.saturating_add(PERMISSION_REFRESH));
        self.update_deadline();
        Ok(())
    }

    /// Asks the relay to open a TCP connection to `peer` (RFC 6062 Connect; a permission for its
    /// IP is needed, [`TurnClient::create_permission`]). When the server answers, the machine
    /// opens a data connection to the server, binds it to the peer's connection
    /// (ConnectionBind) and reports [`TurnEvent::PeerConnected`] with the socket, or
    /// [`TurnEvent::PeerConnectFailed`].
    pub fn connect(&mut self, now: Instant, peer: SocketAddr) -> Result<(), TurnError> {
        if self.state != State::Allocated {
            return Err(TurnError::NotAllocated);
        }
        if self.config.transport != RelayTransport::Tcp {
            return Err(TurnError::NotTcpAllocation);
        }
        let connects = self
            .pending
            .iter()
            .filter(|p| matches!(p.kind, Kind::Connect { .. }))
            .count();
        if connects.saturating_add(self.data.len()) >= MAX_DATA_CONNECTIONS {
            return Err(TurnError::TooManyConnections);
        }
        let _ = self.start(now, Kind::Connect { peer });
        self.update_deadline();
        Ok(())
    }

    /// Sends `data` to `peer` through a UDP allocation (a Send indication on the control
    /// connection; RFC 8656 §11). The peer's IP needs a permission.
    pub fn send_to(
        &mut self,
        _now: Instant,
        peer: SocketAddr,
        data: &[u8],
    ) -> Result<(), TurnError> {
        if self.state != State::Allocated {
            return Err(TurnError::NotAllocated);
        }
        if self.config.transport != RelayTransport::Udp {
            return Err(TurnError::NotUdpAllocation);
        }
        if !self.permissions.iter().any(|p| p.ip() == peer.ip()) {
            return Err(TurnError::NoPermission);
        }
        if data.len() > MAX_SEND_LEN {
            return Err(TurnError::TooLong);
        }
        if self.sends.len() >= MAX_SEND_QUEUE {
            return Err(TurnError::QueueFull);
        }
        self.sends.push_back((peer, data.to_vec()));
        Ok(())
    }

    /// Writes the next Send indication into `buf`.
    fn encode_send(&mut self, buf: &mut [u8]) -> Option<usize> {
        let (peer, data) = self.sends.pop_front()?;
        let header = Header::new(Class::Indication, method::SEND, self.new_id());
        let mut w = MessageWriter::new(buf, header).ok()?;
        w.add_turn(&header, &TurnAttribute::XorPeerAddress(peer))
            .ok()?;
        w.add_turn(&header, &TurnAttribute::Data(&data)).ok()?;
        w.add_fingerprint().ok()?;
        Some(w.finish())
    }

    /// Opens a data connection for the server's connection `id` to `peer`.
    fn open_data(&mut self, now: Instant, peer: SocketAddr, id: u32) {
        if self.data.len() >= MAX_DATA_CONNECTIONS || self.next_data_socket == u32::MAX {
            self.ignore();
            return;
        }
        let socket = SocketId(self.next_data_socket);
        self.next_data_socket = self.next_data_socket.saturating_add(1);
        self.ops.push_back(SocketOp::Bind {
            socket,
            transport: Transport::Tcp,
            local: SocketAddr::new(self.config.local.ip(), 0),
            options: self.config.options,
        });
        self.data.push(DataConn {
            socket,
            peer,
            id,
            phase: DataPhase::Binding,
            deadline: now.saturating_add(self.config.timeout),
            opened: true,
            buf: Vec::new(),
        });
    }

    /// Gives up the data connection at `at`: closes its socket, reports `failure`.
    fn drop_data(&mut self, at: usize, failure: TurnFailure) {
        if at >= self.data.len() {
            return;
        }
        let conn = self.data.swap_remove(at);
        self.pending.retain(|p| p.socket != conn.socket);
        if conn.opened {
            self.ops.push_back(SocketOp::Close {
                socket: conn.socket,
            });
        }
        self.events.push_back(TurnEvent::PeerConnectFailed {
            peer: conn.peer,
            failure,
        });
    }

    /// Closes every data connection still being set up (no events: the machine is ending).
    fn close_data(&mut self) {
        for conn in core::mem::take(&mut self.data) {
            self.pending.retain(|p| p.socket != conn.socket);
            if conn.opened {
                self.ops.push_back(SocketOp::Close {
                    socket: conn.socket,
                });
            }
        }
    }

    /// Bytes on a data connection: the ConnectionBind answer, then the peer's.
    fn data_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        let Some(at) = self.data.iter().position(|c| c.socket == socket) else {
            return Verdict::Dropped(DropReason::UnknownSocket);
        };
        let Some(conn) = self.data.get_mut(at) else {
            return Verdict::Dropped(DropReason::UnknownSocket);
        };
        if conn.phase != DataPhase::Binding2 {
            return Verdict::Dropped(DropReason::Unexpected);
        }
        let room = MAX_CONTROL_MESSAGE_LEN.saturating_sub(conn.buf.len());
        let (now_part, rest) = data.split_at(room.min(data.len()));
        conn.buf.extend_from_slice(now_part);
        let total = match Message::needed(&conn.buf) {
            Err(DecodeError::TooShort) if conn.buf.len() < MAX_CONTROL_MESSAGE_LEN => {
                return Verdict::Consumed;
            }
            Ok(total) if total <= conn.buf.len() => total,
            Ok(total) if total <= MAX_CONTROL_MESSAGE_LEN => return Verdict::Consumed,
            Ok(_) => {
                self.drop_data(at, TurnFailure::Malformed(DecodeError::LengthMismatch));
                return Verdict::Dropped(DropReason::Malformed(DecodeError::LengthMismatch));
            }
            Err(e) => {
                self.drop_data(at, TurnFailure::Malformed(e));
                return Verdict::Dropped(DropReason::Malformed(e));
            }
        };
        let buf = core::mem::take(&mut conn.buf);
        let (frame, after) = buf.split_at(total.min(buf.len()));
        let msg = match Message::decode(frame) {
            Ok(m) => m,
            Err(e) => {
                self.drop_data(at, TurnFailure::Malformed(e));
                return Verdict::Dropped(DropReason::Malformed(e));
            }
        };
        let pending = self
            .pending
            .iter()
            .position(|p| p.socket == socket && p.id == msg.transaction_id() && !p.unsent);
        let (Some(pi), true) = (pending, msg.class().is_response()) else {
            self.drop_data(at, TurnFailure::BadResponse);
            return Verdict::Dropped(DropReason::UnknownTransaction);
        };
        let Some(p) = self.pending.get(pi).copied() else {
            return Verdict::Consumed;
        };
        if msg.class() == Class::Success {
            if !self.integrity_ok(&msg) {
                self.drop_data(at, TurnFailure::BadResponse);
                return Verdict::Dropped(DropReason::Unexpected);
            }
            self.pending.swap_remove(pi);
            let conn = self.data.swap_remove(at);
            let mut handed = after.to_vec();
            handed.extend_from_slice(rest);
            self.stats.connections = self.stats.connections.saturating_add(1);
            self.events.push_back(TurnEvent::PeerConnected {
                peer: conn.peer,
                socket,
                data: handed,
            });
        } else {
            self.pending.swap_remove(pi);
            // A 438 retries on the same connection (whose buffer is empty again); anything else
            // gives it up.
            self.error(now, p, &msg);
        }
        Verdict::Consumed
    }

    /// Whether a success response's MESSAGE-INTEGRITY, if it carries one, verifies under our key.
    fn integrity_ok(&self, msg: &Message<'_>) -> bool {
        let has_mi = msg
            .attributes()
            .any(|a| a.code == stun_attr::MESSAGE_INTEGRITY);
        !has_mi
            || self
                .auth
                .as_ref()
                .is_some_and(|a| msg.verify_integrity(&a.key).is_ok())
    }

    /// Deallocates (Refresh with LIFETIME 0) and closes the control connection. Idempotent.
    pub fn close(&mut self, now: Instant) {
        match self.state {
            State::Allocated => {
                self.close_data();
                self.sends.clear();
                self.pending.clear();
                self.refresh_at = None;
                self.permissions_at = None;
                self.state = State::Closing;
                let _ = self.start(now, Kind::Refresh { lifetime: 0 });
                self.update_deadline();
            }
            State::Binding | State::Connecting | State::Allocating => self.finish(),
            State::Closing | State::Done => {}
        }
    }

    /// Queues a new request of `kind`; `false` if [`MAX_PENDING`] are already in flight (the
    /// request is then dropped; its own deadline or the data connection's ends it).
    fn start(&mut self, now: Instant, kind: Kind) -> bool {
        let socket = match kind {
            Kind::ConnectionBind { socket, .. } => socket,
            _ => CONTROL_SOCKET,
        };
        if self.pending.len() >= MAX_PENDING {
            return false;
        }
        let id = self.new_id();
        self.pending.push(Pending {
            id,
            socket,
            kind,
            deadline: now.saturating_add(self.config.timeout),
            stale_retries: 0,
            authenticated: false,
            unsent: true,
        });
        true
    }

    fn new_id(&mut self) -> TransactionId {
        let mut id = [0u8; 12];
        self.rng.fill_bytes(&mut id);
        TransactionId::new(id)
    }

    /// Ends the machine: the close intent (once) and `Closed`.
    fn finish(&mut self) {
        if self.state == State::Done {
            return;
        }
        self.state = State::Done;
        self.close_data();
        self.sends.clear();
        self.pending.clear();
        self.refresh_at = None;
        self.permissions_at = None;
        self.connect_deadline = None;
        self.deadline = None;
        if self.socket_open {
            self.socket_open = false;
            self.ops.push_back(SocketOp::Close {
                socket: CONTROL_SOCKET,
            });
        }
        self.events.push_back(TurnEvent::Closed {
            deallocated: self.deallocated,
        });
    }

    /// The allocation failed: `Failed`, then the end.
    fn fail(&mut self, failure: TurnFailure) {
        if self.state == State::Done {
            return;
        }
        if self.state == State::Closing {
            // Closing anyway: the deallocation is simply unconfirmed.
            self.finish();
            return;
        }
        self.events.push_back(TurnEvent::Failed(failure));
        self.finish();
    }

    fn update_deadline(&mut self) {
        if self.state == State::Done {
            self.deadline = None;
            return;
        }
        let mut next = self.connect_deadline;
        for t in self
            .pending
            .iter()
            .map(|p| p.deadline)
            .chain(self.refresh_at)
            .chain(self.permissions_at)
            .chain(self.data.iter().map(|c| c.deadline))
        {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        self.deadline = next;
    }

    /// Appends as much of `data` as fits; returns the rest.
    fn fill<'d>(&mut self, data: &'d [u8]) -> &'d [u8] {
        let Some(free) = self.buf.get_mut(self.held..) else {
            return data;
        };
        let n = free.len().min(data.len());
        let (now, rest) = data.split_at(n);
        if let Some(dst) = free.get_mut(..n) {
            dst.copy_from_slice(now);
        }
        self.held = self.held.saturating_add(n);
        rest
    }

    /// The size of the whole frame (STUN message, or ChannelData padded to 4 on a stream, RFC
    /// 8656 §12.5) starting the buffer, `None` if it has not all arrived.
    fn next_frame(&self) -> Result<Option<usize>, DecodeError> {
        let held = self.buf.get(..self.held).unwrap_or(&[]);
        let total = match held {
            [] => return Ok(None),
            [first, ..] if first & 0xC0 == 0x40 => match held {
                [_, _, l0, l1, ..] => {
                    let len = usize::from(u16::from_be_bytes([*l0, *l1]));
                    len.saturating_add(4).saturating_add(3) & !3
                }
                _ => return Ok(None),
            },
            _ => match Message::needed(held) {
                Err(DecodeError::TooShort) => return Ok(None),
                Err(e) => return Err(e),
                Ok(total) => total,
            },
        };
        if total > self.buf.len() {
            Err(DecodeError::LengthMismatch)
        } else if total > held.len() {
            Ok(None)
        } else {
            Ok(Some(total))
        }
    }

    fn consume(&mut self, n: usize) {
        if n >= self.held {
            self.held = 0;
            return;
        }
        self.buf.copy_within(n..self.held, 0);
        self.held = self.held.saturating_sub(n);
    }

    /// Handles the frame of `total` bytes starting the buffer.
    fn frame(&mut self, now: Instant, total: usize) {
        let buf = core::mem::take(&mut self.buf);
        let raw = buf.get(..total).unwrap_or(&[]);
        match raw.first() {
            Some(first) if first & 0xC0 == 0x40 => self.ignore(),
            _ => match Message::decode(raw) {
                Ok(msg) => self.message(now, &msg),
                Err(e) => self.fail(TurnFailure::Malformed(e)),
            },
        }
        self.buf = buf;
    }

    fn ignore(&mut self) {
        self.stats.ignored = self.stats.ignored.saturating_add(1);
    }

    /// Handles one STUN message from the server.
    fn message(&mut self, now: Instant, msg: &Message<'_>) {
        if msg.class() == Class::Indication
            && msg.method() == method::CONNECTION_ATTEMPT
            && self.state == State::Allocated
            && self.config.transport == RelayTransport::Tcp
        {
            // A peer connected to the relayed address (RFC 6062 §5.3).
            let id = codec::find(msg, attr::CONNECTION_ID);
            let peer = codec::find(msg, attr::XOR_PEER_ADDRESS);
            if let (
                Ok(Some(TurnAttribute::ConnectionId(id))),
                Ok(Some(TurnAttribute::XorPeerAddress(peer))),
            ) = (id, peer)
            {
                self.open_data(now, peer, id);
            } else {
                self.ignore();
            }
            return;
        }
        if msg.class() == Class::Indication
            && msg.method() == method::DATA
            && self.state == State::Allocated
            && self.config.transport == RelayTransport::Udp
        {
            let peer = codec::find(msg, attr::XOR_PEER_ADDRESS);
            let data = codec::find(msg, attr::DATA);
            match (peer, data) {
                (
                    Ok(Some(TurnAttribute::XorPeerAddress(peer))),
                    Ok(Some(TurnAttribute::Data(data))),
                ) if self.permissions.iter().any(|p| p.ip() == peer.ip()) => {
                    self.events.push_back(TurnEvent::PeerData {
                        peer,
                        data: data.to_vec(),
                    });
                }
                _ => self.ignore(),
            }
            return;
        }
        if !msg.class().is_response() {
            self.ignore();
            return;
        }
        let Some(at) = self
            .pending
            .iter()
            .position(|p| p.id == msg.transaction_id() && !p.unsent && p.socket == CONTROL_SOCKET)
        else {
            self.ignore();
            return;
        };
        let Some(p) = self.pending.get(at).copied() else {
            return;
        };
        if msg.method() != kind_method(p.kind) {
            self.ignore();
            return;
        }
        // A response that carries MESSAGE-INTEGRITY must verify under our key.
        if msg.class() == Class::Success && !self.integrity_ok(msg) {
            self.ignore();
            return;
        }
        self.pending.swap_remove(at);
        if msg.class() == Class::Success {
            self.success(now, p, msg);
        } else {
            self.error(now, p, msg);
        }
    }

    fn success(&mut self, now: Instant, p: Pending, msg: &Message<'_>) {
        let lifetime = match codec::find(msg, attr::LIFETIME) {
            Ok(Some(TurnAttribute::Lifetime(s))) => Some(Duration::from_secs(u64::from(s))),
            _ => None,
        };
        match p.kind {
            Kind::Allocate => {
                let relayed = match codec::find(msg, attr::XOR_RELAYED_ADDRESS) {
                    Ok(Some(TurnAttribute::XorRelayedAddress(a))) => a,
                    _ => return self.fail(TurnFailure::BadResponse),
                };
                let lifetime = lifetime.unwrap_or(Duration::from_secs(600));
                self.relayed = Some(relayed);
                self.state = State::Allocated;
                self.schedule_refresh(now, lifetime);
                self.events.push_back(TurnEvent::Allocated {
                    relayed,
                    mapped: msg.xor_mapped_address(),
                    lifetime,
                });
            }
            Kind::Refresh { lifetime: 0 } => {
                self.deallocated = true;
                self.finish();
            }
            Kind::Refresh { .. } => {
                let lifetime = lifetime.unwrap_or(Duration::from_secs(600));
                self.stats.refreshes = self.stats.refreshes.saturating_add(1);
                self.schedule_refresh(now, lifetime);
                self.events.push_back(TurnEvent::Refreshed { lifetime });
            }
            Kind::CreatePermission { peer, first } => {
                if first {
                    self.events.push_back(TurnEvent::PermissionCreated { peer });
                }
            }
            Kind::Connect { peer } => match codec::find(msg, attr::CONNECTION_ID) {
                Ok(Some(TurnAttribute::ConnectionId(id))) => self.open_data(now, peer, id),
                _ => self.events.push_back(TurnEvent::PeerConnectFailed {
                    peer,
                    failure: TurnFailure::BadResponse,
                }),
            },
            // Answered on the data connection (`data_stream`), never here.
            Kind::ConnectionBind { .. } => self.ignore(),
        }
    }

    fn schedule_refresh(&mut self, now: Instant, lifetime: Duration) {
        // Half the lifetime, but at least a second (a tiny lifetime must not make us spin).
        let half = lifetime
            .checked_div(2)
            .unwrap_or_default()
            .max(Duration::from_secs(1));
        self.refresh_at = Some(now.saturating_add(half));
    }

    fn error(&mut self, now: Instant, p: Pending, msg: &Message<'_>) {
        let code = msg.error_code().map_or(0, |e| e.code);
        let realm = match codec::find(msg, attr::REALM) {
            Ok(Some(TurnAttribute::Realm(r))) if r.len() <= MAX_CHALLENGE_LEN => Some(r),
            _ => None,
        };
        let nonce = match codec::find(msg, attr::NONCE) {
            Ok(Some(TurnAttribute::Nonce(n))) if n.len() <= MAX_CHALLENGE_LEN => Some(n),
            _ => None,
        };
        let retry = match code {
            error::UNAUTHENTICATED if !p.authenticated => match (realm, nonce) {
                (Some(realm), Some(nonce)) => {
                    let c = &self.config.credentials;
                    self.auth = Some(Auth {
                        realm: realm.to_owned(),
                        nonce: nonce.to_vec(),
                        key: long_term_key(
                            c.username.as_bytes(),
                            realm.as_bytes(),
                            c.password.as_bytes(),
                        ),
                    });
                    Ok(p.stale_retries)
                }
                _ => Err(TurnFailure::BadChallenge),
            },
            error::STALE_NONCE if p.stale_retries < MAX_STALE_NONCE_RETRIES => {
                match (self.auth.as_mut(), nonce) {
                    (Some(auth), Some(nonce)) => {
                        auth.nonce = nonce.to_vec();
                        if let Some(realm) = realm {
                            if realm != auth.realm {
                                let c = &self.config.credentials;
                                auth.realm = realm.to_owned();
                                auth.key = long_term_key(
                                    c.username.as_bytes(),
                                    realm.as_bytes(),
                                    c.password.as_bytes(),
                                );
                            }
                        }
                        Ok(p.stale_retries.saturating_add(1))
                    }
                    _ => Err(TurnFailure::StaleNonce),
                }
            }
            _ => {
                let alternate = msg
                    .attributes()
                    .find(|a| a.code == ALTERNATE_SERVER)
                    .and_then(|a| {
                        match Attribute::parse(stun_attr::MAPPED_ADDRESS, a.value, msg.header()) {
                            Ok(Attribute::MappedAddress(addr)) => Some(addr),
                            _ => None,
                        }
                    });
                Err(TurnFailure::from_code(code, alternate))
            }
        };
        match retry {
            Ok(stale_retries) => {
                let id = self.new_id();
                self.pending.push(Pending {
                    id,
                    socket: p.socket,
                    kind: p.kind,
                    deadline: now.saturating_add(self.config.timeout),
                    stale_retries,
                    authenticated: false,
                    unsent: true,
                });
            }
            Err(failure) => match p.kind {
                Kind::CreatePermission { peer, .. } => {
                    self.permissions.retain(|q| q.ip() != peer.ip());
                    self.events
                        .push_back(TurnEvent::PermissionFailed { peer, failure });
                }
                Kind::Refresh { lifetime: 0 } => self.finish(),
                Kind::Allocate | Kind::Refresh { .. } => self.fail(failure),
                Kind::Connect { peer } => {
                    self.events
                        .push_back(TurnEvent::PeerConnectFailed { peer, failure });
                }
                Kind::ConnectionBind { socket, .. } => {
                    if let Some(at) = self.data.iter().position(|c| c.socket == socket) {
                        self.drop_data(at, failure);
                    }
                }
            },
        }
    }

    /// Writes request `p` into `buf`.
    fn encode(&self, p: &Pending, buf: &mut [u8]) -> Option<usize> {
        let header = Header::new(Class::Request, kind_method(p.kind), p.id);
        let mut w = MessageWriter::new(buf, header).ok()?;
        if let Some(s) = self.config.software {
            w.add(&Attribute::Software(s)).ok()?;
        }
        match p.kind {
            Kind::Allocate => {
                let proto = match self.config.transport {
                    RelayTransport::Udp => codec::TRANSPORT_UDP,
                    RelayTransport::Tcp => codec::TRANSPORT_TCP,
                };
                w.add_turn(&header, &TurnAttribute::RequestedTransport(proto))
                    .ok()?;
                if let Some(l) = self.config.lifetime {
                    let secs = u32::try_from(l.as_secs()).unwrap_or(u32::MAX);
                    w.add_turn(&header, &TurnAttribute::Lifetime(secs)).ok()?;
                }
            }
            Kind::Refresh { lifetime } => {
                w.add_turn(&header, &TurnAttribute::Lifetime(lifetime))
                    .ok()?;
            }
            Kind::CreatePermission { peer, .. } | Kind::Connect { peer } => {
                w.add_turn(&header, &TurnAttribute::XorPeerAddress(peer))
                    .ok()?;
            }
            Kind::ConnectionBind { id, .. } => {
                w.add_turn(&header, &TurnAttribute::ConnectionId(id)).ok()?;
            }
        }
        if let Some(auth) = &self.auth {
            w.add(&Attribute::Username(
                self.config.credentials.username.as_bytes(),
            ))
            .ok()?;
            w.add_turn(&header, &TurnAttribute::Realm(&auth.realm))
                .ok()?;
            w.add_turn(&header, &TurnAttribute::Nonce(&auth.nonce))
                .ok()?;
            w.add_message_integrity(&auth.key).ok()?;
        }
        w.add_fingerprint().ok()?;
        Some(w.finish())
    }

    /// The lifetime to ask for in refreshes.
    fn requested_lifetime(&self) -> u32 {
        self.config
            .lifetime
            .map_or(600, |l| u32::try_from(l.as_secs()).unwrap_or(u32::MAX))
    }
}

impl TurnClient {
    /// The outcome of an intent on a data connection.
    fn data_outcome(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        let Some(at) = self.data.iter().position(|c| c.socket == socket) else {
            return;
        };
        let Some(conn) = self.data.get_mut(at) else {
            return;
        };
        match (conn.phase, outcome) {
            (DataPhase::Binding, SocketOutcome::Bound { .. }) => {
                conn.phase = DataPhase::Connecting;
                self.ops.push_back(SocketOp::Connect {
                    socket,
                    remote: self.config.server,
                });
            }
            (
                DataPhase::Binding,
                SocketOutcome::Failed {
                    op: OpKind::Bind,
                    error,
                    ..
                },
            ) => {
                conn.opened = false;
                self.drop_data(at, TurnFailure::BindFailed(error));
            }
            (DataPhase::Connecting, SocketOutcome::Connected { .. }) => {
                conn.phase = DataPhase::Binding2;
                let (id, deadline) = (conn.id, conn.deadline);
                // The data connection's deadline covers its ConnectionBind.
                if self.start(now, Kind::ConnectionBind { socket, id }) {
                    if let Some(p) = self.pending.last_mut() {
                        p.deadline = deadline;
                    }
                }
            }
            (
                DataPhase::Connecting,
                SocketOutcome::Failed {
                    op: OpKind::Connect,
                    error,
                    ..
                },
            ) => self.drop_data(at, TurnFailure::ConnectFailed(error)),
            (_, SocketOutcome::PeerClosed) => self.drop_data(at, TurnFailure::PeerClosed),
            (_, SocketOutcome::Failed { error, .. }) => {
                self.drop_data(at, TurnFailure::SocketError(error))
            }
            _ => {}
        }
    }
}

fn kind_method(kind: Kind) -> Method {
    match kind {
        Kind::Allocate => method::ALLOCATE,
        Kind::Refresh { .. } => method::REFRESH,
        Kind::CreatePermission { .. } => method::CREATE_PERMISSION,
        Kind::Connect { .. } => method::CONNECT,
        Kind::ConnectionBind { .. } => method::CONNECTION_BIND,
    }
}

impl Machine for TurnClient {
    type Event = TurnEvent;

    /// Bytes from the server on the control connection, split anywhere.
    fn handle_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        if socket != CONTROL_SOCKET {
            let verdict = self.data_stream(now, socket, data);
            self.update_deadline();
            return verdict;
        }
        match self.state {
            State::Allocating | State::Allocated | State::Closing => {}
            State::Done => return Verdict::Dropped(DropReason::Closed),
            State::Binding | State::Connecting => return Verdict::Dropped(DropReason::Unexpected),
        }
        let mut rest = data;
        let mut verdict = Verdict::Consumed;
        while self.state != State::Done {
            let before = rest.len();
            rest = self.fill(rest);
            match self.next_frame() {
                Ok(None) if rest.is_empty() || rest.len() == before => break,
                Ok(None) => {}
                Ok(Some(total)) => {
                    self.frame(now, total);
                    self.consume(total);
                }
                Err(e) => {
                    self.fail(TurnFailure::Malformed(e));
                    verdict = Verdict::Dropped(DropReason::Malformed(e));
                }
            }
        }
        self.update_deadline();
        verdict
    }

    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        if socket != CONTROL_SOCKET {
            self.data_outcome(now, socket, outcome);
            self.update_deadline();
            return;
        }
        match (self.state, outcome) {
            (State::Binding, SocketOutcome::Bound { .. }) => {
                self.state = State::Connecting;
                self.ops.push_back(SocketOp::Connect {
                    socket,
                    remote: self.config.server,
                });
            }
            (
                State::Binding,
                SocketOutcome::Failed {
                    op: OpKind::Bind,
                    error,
                    ..
                },
            ) => {
                self.socket_open = false;
                self.fail(TurnFailure::BindFailed(error));
            }
            (State::Connecting, SocketOutcome::Connected { .. }) => {
                self.state = State::Allocating;
                self.connect_deadline = None;
                let _ = self.start(now, Kind::Allocate);
            }
            (
                State::Connecting,
                SocketOutcome::Failed {
                    op: OpKind::Connect,
                    error,
                    ..
                },
            ) => self.fail(TurnFailure::ConnectFailed(error)),
            (State::Done, _) | (_, SocketOutcome::Writable) => {}
            (_, SocketOutcome::PeerClosed) => self.fail(TurnFailure::PeerClosed),
            (_, SocketOutcome::Failed { error, .. }) => self.fail(TurnFailure::SocketError(error)),
            _ => {}
        }
        self.update_deadline();
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Done {
            return;
        }
        if self.connect_deadline.is_some_and(|d| now >= d) {
            self.fail(TurnFailure::Timeout);
        }
        // An unanswered CreatePermission fails only that permission; anything else unanswered
        // fails the allocation.
        let mut expired = Vec::new();
        let mut fatal = false;
        self.pending.retain(|p| {
            if now < p.deadline {
                return true;
            }
            match p.kind {
                Kind::CreatePermission { peer, .. } => {
                    expired.push((peer, true));
                    false
                }
                Kind::Connect { peer } => {
                    expired.push((peer, false));
                    false
                }
                // The data connection's own deadline covers it.
                Kind::ConnectionBind { .. } => true,
                Kind::Allocate | Kind::Refresh { .. } => {
                    fatal = true;
                    true
                }
            }
        });
        for (peer, permission) in expired {
            let failure = TurnFailure::Timeout;
            if permission {
                self.permissions.retain(|q| q.ip() != peer.ip());
                self.events
                    .push_back(TurnEvent::PermissionFailed { peer, failure });
            } else {
                self.events
                    .push_back(TurnEvent::PeerConnectFailed { peer, failure });
            }
        }
        while let Some(at) = self.data.iter().position(|c| now >= c.deadline) {
            self.drop_data(at, TurnFailure::Timeout);
        }
        if fatal {
            self.fail(TurnFailure::Timeout);
        }
        if self.state == State::Allocated {
            if self.refresh_at.is_some_and(|t| now >= t) {
                self.refresh_at = None;
                let lifetime = self.requested_lifetime();
                let _ = self.start(now, Kind::Refresh { lifetime });
            }
            if self.permissions_at.is_some_and(|t| now >= t) {
                self.permissions_at = Some(now.saturating_add(PERMISSION_REFRESH));
                let peers = self.permissions.clone();
                for peer in peers {
                    let _ = self.start(now, Kind::CreatePermission { peer, first: false });
                }
            }
        }
        self.update_deadline();
    }

    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        if !matches!(
            self.state,
            State::Allocating | State::Allocated | State::Closing
        ) {
            return None;
        }
        let Some(at) = self.pending.iter().position(|p| p.unsent) else {
            if self.state != State::Allocated {
                return None;
            }
            let len = self.encode_send(buf)?;
            return Some(Transmit {
                socket: CONTROL_SOCKET,
                destination: self.config.server,
                len,
            });
        };
        let mut p = *self.pending.get(at)?;
        p.unsent = false;
        p.authenticated = self.auth.is_some();
        let len = self.encode(&p, buf);
        if let Some(slot) = self.pending.get_mut(at) {
            *slot = p;
        }
        self.stats.requests = self.stats.requests.saturating_add(1);
        Some(Transmit {
            socket: p.socket,
            destination: self.config.server,
            len: len?,
        })
    }

    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        self.ops.pop_front()
    }

    fn poll_event(&mut self) -> Option<TurnEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;

//! The client's configuration, credentials, events, failures, errors, counters and limits.

use core::net::SocketAddr;
use core::time::Duration;

use p2pd_proto::stun::DecodeError;
use p2pd_proto::{BindOptions, IoError, SocketId};

use crate::codec::{error, RestCredentials};

/// The control connection's socket id.
pub const CONTROL_SOCKET: SocketId = SocketId(0);

/// How often permissions are refreshed (they last 300 s, RFC 8656 §9).
pub const PERMISSION_REFRESH: Duration = Duration::from_secs(240);

/// Most peers a client keeps permissions for; more is [`TurnError::TooManyPermissions`].
pub const MAX_PERMISSIONS: usize = 16;

/// Most RFC 6062 data connections being set up at once (Connect answered or ConnectionAttempt
/// received, ConnectionBind not answered yet); more ConnectionAttempts are ignored and counted.
pub const MAX_DATA_CONNECTIONS: usize = 8;

/// Most Send indications waiting to be transmitted
/// ([`TurnClient::send_to`](super::TurnClient::send_to)).
pub const MAX_SEND_QUEUE: usize = 16;

/// The longest payload [`TurnClient::send_to`](super::TurnClient::send_to) takes: a Send
/// indication with it fits in a 1500-byte transmit.
pub const MAX_SEND_LEN: usize = 1400;

/// Most requests in flight at once (Allocate or Refresh, permissions, Connects, ConnectionBinds).
pub(super) const MAX_PENDING: usize = MAX_PERMISSIONS + 2 * MAX_DATA_CONNECTIONS + 2;

/// Stale-nonce retries allowed per request.
pub(super) const MAX_STALE_NONCE_RETRIES: u8 = 2;

/// The longest message (STUN or ChannelData) accepted on the control connection.
pub const MAX_CONTROL_MESSAGE_LEN: usize = 2048;

/// Longest REALM and NONCE taken from a challenge (RFC 8489 allows fewer than 128 characters):
/// with a USERNAME of at most 513 bytes every request fits in a 1500-byte transmit.
pub(super) const MAX_CHALLENGE_LEN: usize = 256;

/// ALTERNATE-SERVER (RFC 8489 §14.15), carried by 300 Try Alternate.
pub(super) const ALTERNATE_SERVER: u16 = 0x8023;

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

/// Where a relay's credentials come from: fixed long-term ones, or TURN REST API ones made
/// afresh from a shared secret for each allocation (so a long-running caller never presents
/// expired ones).
#[derive(Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// Static long-term credentials, used as they are.
    LongTerm(Credentials),
    /// TURN REST API credentials: `user` under `secret`, each set valid for `ttl` from when it
    /// is made.
    Rest {
        /// The shared secret (coturn's `static-auth-secret`).
        secret: Vec<u8>,
        /// The user part of the time-limited user name.
        user: String,
        /// How long each set stays valid.
        ttl: Duration,
    },
}

impl core::fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CredentialSource::LongTerm(c) => f.debug_tuple("LongTerm").field(c).finish(),
            CredentialSource::Rest { user, ttl, .. } => f
                .debug_struct("Rest")
                .field("secret", &"<redacted>")
                .field("user", user)
                .field("ttl", ttl)
                .finish(),
        }
    }
}

impl CredentialSource {
    /// The credentials to present now: `unix_now` is the caller's wall clock in seconds since
    /// the unix epoch (only REST credentials depend on it).
    pub fn credentials(&self, unix_now: u64) -> Credentials {
        match self {
            CredentialSource::LongTerm(c) => c.clone(),
            CredentialSource::Rest { secret, user, ttl } => {
                Credentials::rest(secret, user, unix_now, *ttl)
            }
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

/// Settings of a [`TurnClient`](super::TurnClient).
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
    /// No permission for the peer's IP address
    /// ([`TurnClient::create_permission`](super::TurnClient::create_permission) first).
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

/// What a [`TurnClient`](super::TurnClient) reports.
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
    /// [`TurnClient::connect`](super::TurnClient::connect), or a peer's connection to the
    /// relayed address): the stream on `socket` now carries the peer's bytes, and the socket is
    /// the caller's (the machine never names it again; the caller closes it).
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

//! What a [`TurnServer`](super::TurnServer) reports: events, why allocations end, counters.

use core::net::SocketAddr;

use p2pd_proto::{IoError, SocketId};

/// What a [`TurnServer`](super::TurnServer) reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TurnServerEvent {
    /// The listener is bound and listening.
    Listening {
        /// Its address.
        local: SocketAddr,
    },
    /// The listener could not be bound or could not listen; the server does nothing more.
    ListenFailed {
        /// Why.
        error: IoError,
    },
    /// An allocation exists.
    Allocated {
        /// Its control connection.
        control: SocketId,
        /// The relayed address.
        relayed: SocketAddr,
        /// Its username.
        username: String,
    },
    /// An allocation was deleted.
    Deallocated {
        /// The relayed address (`None` if its listener never got bound).
        relayed: Option<SocketAddr>,
        /// Why.
        reason: EndReason,
    },
    /// A data connection and a peer connection are spliced.
    Spliced {
        /// The peer.
        peer: SocketAddr,
        /// The CONNECTION-ID.
        id: u32,
    },
    /// The server closed ([`TurnServer::close`](super::TurnServer::close)); the last event.
    Closed,
}

/// Why an allocation ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Refresh with LIFETIME 0.
    Deallocated,
    /// Its lifetime ran out.
    Expired,
    /// Its control connection ended.
    ControlClosed,
    /// Its relayed listener failed.
    ListenerFailed,
    /// The server closed.
    Shutdown,
}

/// A [`TurnServer`](super::TurnServer)'s counters.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TurnServerStats {
    /// Allocations live now.
    pub allocations_live: u64,
    /// Allocations ever made.
    pub allocations_total: u64,
    /// Allocations deleted by a Refresh with LIFETIME 0.
    pub deallocated: u64,
    /// Allocations deleted because their lifetime ran out.
    pub expired: u64,
    /// Requests refused for their credentials (unknown user, expired REST username, wrong
    /// MESSAGE-INTEGRITY).
    pub auth_refused: u64,
    /// 401 challenges to requests without credentials.
    pub challenges: u64,
    /// 438 Stale Nonce answers.
    pub stale_nonces: u64,
    /// Error responses of any code other than 401 and 438.
    pub errors: u64,
    /// Data and peer connections spliced.
    pub connections_spliced: u64,
    /// Peers closed because their IP had no permission.
    pub peer_refused_no_permission: u64,
    /// Peers closed because the allocation or the server had no room for them.
    pub peer_refused_capacity: u64,
    /// Peer connections closed because no ConnectionBind came in time.
    pub bind_timeouts: u64,
    /// Peer connections closed because they sent more than could be held before ConnectionBind.
    pub peer_overflow: u64,
    /// Bytes relayed between spliced connections (both ways).
    pub bytes_relayed: u64,
    /// Connections closed for a malformed frame.
    pub malformed: u64,
    /// Connections closed because their runtime refused bytes or too many were queued.
    pub slow_closed: u64,
    /// Connections closed after [`TurnServerConfig::idle_timeout`](super::TurnServerConfig::idle_timeout) without an allocation.
    pub idle_closed: u64,
    /// TCP connections accepted (listen address and relayed addresses).
    pub accepted: u64,
    /// Messages ignored (indications, responses).
    pub ignored: u64,
}

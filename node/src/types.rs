//! The node's vocabulary: ids, paths, phases and their outcomes, events and API errors.

use core::fmt;
use core::net::SocketAddr;
use core::time::Duration;

use p2pd_channel::ChannelFailure;
use p2pd_proto::IoError;
use p2pd_punch::PunchFailure;
use p2pd_signaling::pnp::{Name, PnpFailure, PnpServerId};
use p2pd_signaling::rendezvous::RendezvousEvent;
use p2pd_signaling::{NatInfo, PeerAddress, PublicKey};
use p2pd_turn::TurnFailure;

/// One [`Node::connect`](crate::Node::connect) call.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectId(pub u64);

/// One authenticated stream (connected or accepted).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stream#{}", self.0)
    }
}

/// How a stream reached the peer.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Path {
    /// We dialled the peer (same LAN, or a peer that lets connections in).
    Direct,
    /// The peer dialled us on request (we let connections in, it does not).
    Reverse,
    /// A TCP hole punch.
    Punched,
    /// Through a relay.
    Relayed,
}

impl Path {
    /// The lower-case name used in JSON (`direct`, `reverse`, `punched`, `relayed`).
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Reverse => "reverse",
            Path::Punched => "punched",
            Path::Relayed => "relayed",
        }
    }
}

/// A step of the connection ladder.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Finding the peer's address (name record, fresh address over signaling).
    Resolve,
    /// Phase A: dialling the peer.
    Direct,
    /// Phase A: asking the peer to dial us.
    Reverse,
    /// Phase B: the TCP hole punch.
    Punch,
    /// Phase C: the relay.
    Relay,
}

impl Phase {
    /// The lower-case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Resolve => "resolve",
            Phase::Direct => "direct",
            Phase::Reverse => "reverse",
            Phase::Punch => "punch",
            Phase::Relay => "relay",
        }
    }
}

/// Why a phase was not tried.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The decision table rules the path out for these two NATs (see [`crate::ladder`]).
    NotApplicable,
    /// Random versus random, or a NAT whose behaviour is unknown: a punch would be doomed.
    Unpunchable,
    /// No relay is configured (or relaying is not available yet).
    NoRelay,
    /// The target was given as an address: nothing to resolve.
    NotNeeded,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::NotApplicable => "not applicable to these NATs",
            SkipReason::Unpunchable => "the pair cannot be punched (or a NAT is unknown)",
            SkipReason::NoRelay => "no relay configured",
            SkipReason::NotNeeded => "not needed",
        })
    }
}

/// Why a phase failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PhaseFailure {
    /// No PNP server has a record for the name.
    NameNotFound,
    /// Every PNP server failed (the last failure).
    Lookup(PnpFailure),
    /// The peer's address from the record or signaling does not parse.
    BadAddress,
    /// No fresh address came over signaling in time (target given as a key).
    NoAnswer,
    /// The phase's time budget ran out.
    Timeout,
    /// Every connect failed; the last error.
    Connect(IoError),
    /// A connection came up but its secure channel failed (a stranger, the wrong identity...).
    Handshake(ChannelFailure),
    /// The peer could not dial us back.
    PeerCouldNotDial,
    /// The punch failed.
    Punch(PunchFailure),
    /// Signaling could not carry the request (no broker).
    Signaling,
    /// Our own address is not known yet (a connect before [`NodeEvent::Ready`]), so the peer
    /// cannot be asked to dial us.
    NoOwnAddress,
    /// A relay refused the allocation or its permission, could not be reached or timed out
    /// (the last relay's failure, after every configured relay was tried).
    Relay(TurnFailure),
    /// The node was closed.
    Closed,
}

impl fmt::Display for PhaseFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PhaseFailure::NameNotFound => f.write_str("no PNP server has the name"),
            PhaseFailure::Lookup(e) => write!(f, "name lookup failed: {e}"),
            PhaseFailure::BadAddress => f.write_str("the peer's address is malformed"),
            PhaseFailure::NoAnswer => f.write_str("the peer did not answer over signaling"),
            PhaseFailure::Timeout => f.write_str("timed out"),
            PhaseFailure::Connect(e) => write!(f, "connect failed: {e:?}"),
            PhaseFailure::Handshake(e) => write!(f, "secure channel failed: {e}"),
            PhaseFailure::PeerCouldNotDial => f.write_str("the peer could not dial us"),
            PhaseFailure::Punch(e) => write!(f, "punch failed: {e:?}"),
            PhaseFailure::Signaling => f.write_str("signaling unavailable"),
            PhaseFailure::NoOwnAddress => f.write_str("our own address is not known yet"),
            PhaseFailure::Relay(e) => write!(f, "relay failed: {e}"),
            PhaseFailure::Closed => f.write_str("the node was closed"),
        }
    }
}

/// How a phase ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PhaseOutcome {
    /// This phase's stream won.
    Won,
    /// Another path won while this one was still running (it was closed).
    Lost,
    /// Not tried.
    Skipped(SkipReason),
    /// Tried and failed.
    Failed(PhaseFailure),
    /// Finished its part (the resolve phase found the address).
    Done,
}

/// What one phase of a connect did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseReport {
    /// Which phase.
    pub phase: Phase,
    /// When it started, after the connect call (`None`: never started).
    pub started: Option<Duration>,
    /// How long it ran.
    pub took: Duration,
    /// How it ended.
    pub outcome: PhaseOutcome,
}

/// What a [`Node`](crate::Node) reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// Our address is known (and, with a name, registered on at least one PNP server) and we
    /// listen on at least one broker: peers can reach us. Reported again when the address
    /// changes.
    Ready {
        /// Our name, if we have one.
        name: Option<Name>,
        /// Our address.
        address: Box<PeerAddress>,
        /// Our NAT's behaviour, if known.
        nat: Option<NatInfo>,
    },
    /// A PNP server refused or did not answer our registration (it is retried).
    RegistrationFailed {
        /// The server.
        server: PnpServerId,
        /// Why.
        reason: PnpFailure,
    },
    /// A configured relay failed for a connect (refused, unreachable, timed out, or its relayed
    /// address was not reached): the next configured one is tried if `next`, else phase C
    /// fails with this failure.
    RelayFailed {
        /// The connect.
        connect: ConnectId,
        /// The relay's address.
        relay: SocketAddr,
        /// Why.
        failure: PhaseFailure,
        /// Whether another relay is tried.
        next: bool,
    },
    /// A connect made progress (a phase started).
    Progress {
        /// The connect.
        connect: ConnectId,
        /// The phase now running.
        phase: Phase,
    },
    /// A connect succeeded: the stream is up, authenticated to the peer's identity.
    Connected {
        /// The connect.
        connect: ConnectId,
        /// The stream.
        stream: StreamId,
        /// The peer's key (the identity its channel proved).
        peer: PublicKey,
        /// The path.
        path: Path,
        /// From the connect call to the stream.
        elapsed: Duration,
        /// Every phase, in ladder order.
        phases: Vec<PhaseReport>,
        /// The far end of the stream's connection: the peer's, or the relay's for a relayed one.
        remote: SocketAddr,
    },
    /// A connect failed: every phase says why.
    ConnectFailed {
        /// The connect.
        connect: ConnectId,
        /// From the connect call to the failure.
        elapsed: Duration,
        /// Every phase, in ladder order.
        phases: Vec<PhaseReport>,
    },
    /// A peer connected to us; its channel proved `peer`.
    Accepted {
        /// The stream.
        stream: StreamId,
        /// The peer's key.
        peer: PublicKey,
        /// How it came (direct: it dialled us; reverse: we dialled it on request; punched;
        /// relayed: we dialled its relayed address).
        path: Path,
        /// The far end of the connection: the peer's, or the relay's for a relayed one.
        remote: SocketAddr,
    },
    /// Authenticated bytes from the peer.
    Data {
        /// The stream.
        stream: StreamId,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The stream's secure channel failed (tampered, cut before the peer's FINISH...):
    /// `PeerFinished` follows; close the stream.
    StreamFailed {
        /// The stream.
        stream: StreamId,
        /// Why.
        reason: ChannelFailure,
    },
    /// The peer finished sending (or the stream failed): reported once per stream.
    PeerFinished {
        /// The stream.
        stream: StreamId,
    },
    /// The peer acknowledged our FINISH (authenticated, in the secure channel): it read every
    /// byte we sent on the stream. Reported once per stream, not after its close.
    FinishAcknowledged {
        /// The stream.
        stream: StreamId,
    },
    /// Our [`Node::finish`](crate::Node::finish) took effect: every byte was taken, the FIN is out.
    Finished {
        /// The stream.
        stream: StreamId,
    },
    /// Room again in the stream's send buffer after a refused or large send.
    Writable {
        /// The stream.
        stream: StreamId,
    },
    /// The stream is released (after [`Node::close_stream`](crate::Node::close_stream)).
    StreamClosed {
        /// The stream.
        stream: StreamId,
    },
    /// A signaling event worth showing (broker up or down).
    Signaling(RendezvousEvent),
    /// Everything is released: the last event.
    Closed,
}

/// API misuse.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeApiError {
    /// The node is closed.
    Closed,
    /// No such stream (never existed, or closed).
    UnknownStream,
    /// The stream failed or was finished: nothing more can be sent.
    StreamClosed,
    /// The send buffer is full.
    SendBufferFull,
    /// Too many connects at once.
    TooManyConnects,
    /// The target names ourselves.
    SelfTarget,
}

impl fmt::Display for NodeApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeApiError::Closed => "the node is closed",
            NodeApiError::UnknownStream => "no such stream",
            NodeApiError::StreamClosed => "the stream is closed for sending",
            NodeApiError::SendBufferFull => "the send buffer is full",
            NodeApiError::TooManyConnects => "too many connects in progress",
            NodeApiError::SelfTarget => "the target is this node",
        })
    }
}

impl std::error::Error for NodeApiError {}

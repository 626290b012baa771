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
use std::collections::VecDeque;

use p2pd_proto::stun::{DecodeError, FrameStatus, Message, StreamFramer, TransactionId};
use p2pd_proto::{
    DropReason, Instant, Machine, OpKind, Rng, SocketId, SocketOp, SocketOutcome, Transmit,
    Transport, Verdict,
};

mod allocation;
mod data;
mod requests;
#[cfg(test)]
mod tests;
mod types;

pub use types::{
    CredentialSource, Credentials, RelayTransport, TurnConfig, TurnError, TurnEvent, TurnFailure,
    TurnStats, CONTROL_SOCKET, MAX_CONTROL_MESSAGE_LEN, MAX_DATA_CONNECTIONS, MAX_PERMISSIONS,
    MAX_SEND_LEN, MAX_SEND_QUEUE, PERMISSION_REFRESH,
};
use types::{ALTERNATE_SERVER, MAX_CHALLENGE_LEN, MAX_PENDING, MAX_STALE_NONCE_RETRIES};

// The tests (`use super::*`) build and read the server's messages with these.
#[cfg(test)]
use {
    crate::codec::{self, attr, long_term_key, method, RestCredentials, TurnAttribute, TurnWriter},
    core::time::Duration,
    p2pd_proto::stun::{attr as stun_attr, Attribute, Class, Header, MessageWriter, Method},
    p2pd_proto::IoError,
};

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
    /// The ConnectionBind answer, as it arrives (at most [`MAX_CONTROL_MESSAGE_LEN`] bytes).
    framer: StreamFramer,
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
    /// The control connection's reassembly buffer (STUN and ChannelData).
    framer: StreamFramer,
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
            framer: StreamFramer::new(MAX_CONTROL_MESSAGE_LEN),
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

    /// Handles the frame of `total` bytes starting the buffer.
    fn frame(&mut self, now: Instant, total: usize) {
        let framer = core::mem::take(&mut self.framer);
        let raw = framer.held().get(..total).unwrap_or(&[]);
        match raw.first() {
            Some(first) if is_channel_data(*first) => self.ignore(),
            _ => match Message::decode(raw) {
                Ok(msg) => self.message(now, &msg),
                Err(e) => self.fail(TurnFailure::Malformed(e)),
            },
        }
        self.framer = framer;
    }

    fn ignore(&mut self) {
        self.stats.ignored = self.stats.ignored.saturating_add(1);
    }
}

/// Whether a frame starting with `first` is TURN ChannelData (channel numbers 0x4000..=0x7FFF,
/// RFC 8656 §12: the first two bits are 0b01; STUN's are 0b00).
fn is_channel_data(first: u8) -> bool {
    first & 0xC0 == 0x40
}

/// The length rule of the control connection, for [`StreamFramer::status_with`]: a STUN message
/// is sized by its header ([`Message::needed`]); ChannelData by its 4-byte header (channel
/// number, length), padded to a multiple of 4 on a stream (RFC 8656 §12.5).
fn frame_len(held: &[u8]) -> Result<usize, DecodeError> {
    match held {
        [first, ..] if is_channel_data(*first) => match held {
            [_, _, l0, l1, ..] => {
                let len = usize::from(u16::from_be_bytes([*l0, *l1]));
                Ok(len.saturating_add(4).saturating_add(3) & !3)
            }
            _ => Err(DecodeError::TooShort),
        },
        _ => Message::needed(held),
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
            rest = self.framer.fill(rest);
            match self.framer.status_with(frame_len) {
                FrameStatus::Partial if rest.is_empty() || rest.len() == before => break,
                FrameStatus::Partial => {}
                FrameStatus::Complete(total) => {
                    self.frame(now, total);
                    self.framer.consume(total);
                }
                FrameStatus::Bad(e) => {
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

//! STUN Binding over TCP: learn the mapping a NAT gives a local **TCP** port (RFC 5389 §7.2.2).
//!
//! [`TcpBinding`] binds one TCP socket to [`TcpBindingConfig::local`] (with the reuse flags set
//! before the bind, so a hole-punching socket can share the port later), connects to the server,
//! sends one Binding request (a random transaction id from the seeded [`Rng`], FINGERPRINT) and
//! reads the response from the stream in chunks of any size, framed by the STUN header's length
//! field. There are no retransmissions on a stream: one deadline, [`TcpBindingConfig::timeout`],
//! covers bind, connect and answer.
//!
//! It reports exactly one [`TcpBindingEvent::Mapped`] or [`TcpBindingEvent::Failed`], then, once
//! its socket is closed (or handed over), [`TcpBindingEvent::Closed`], the last event.
//!
//! With [`TcpBindingConfig::keep_open`] the connection stays open after the answer, which keeps the
//! NAT's mapping (and the server's connection) alive, until [`TcpBinding::close`], until the peer
//! closes it, or until [`TcpBinding::release_socket`] hands the open socket to the caller;
//! otherwise the socket is closed right after the answer. While kept open the machine can send a
//! Binding indication every [`TcpBindingConfig::keepalive`] to refresh idle timers on the path.
//!
//! ```
//! use core::time::Duration;
//! use p2pd_proto::client_tcp::{TcpBinding, TcpBindingConfig, TcpBindingEvent};
//! use p2pd_proto::{Instant, Machine, SocketOp, SocketOutcome};
//!
//! let server = "192.0.2.1:3478".parse().unwrap();
//! let local = "10.0.0.2:40000".parse().unwrap();
//! let mut b = TcpBinding::new(TcpBindingConfig::new(server, local), 7, Instant::ZERO);
//! let Some(SocketOp::Bind { socket, .. }) = b.poll_socket_op() else { unreachable!() };
//! b.handle_socket_result(Instant::ZERO, socket, SocketOutcome::Bound { local });
//! assert!(matches!(b.poll_socket_op(), Some(SocketOp::Connect { .. })));
//! b.handle_socket_result(Instant::ZERO, socket, SocketOutcome::Connected { local, remote: server });
//! let mut buf = [0u8; p2pd_proto::TRANSMIT_BUFFER_LEN];
//! let request = b.poll_transmit(&mut buf).unwrap();
//! assert_eq!(request.socket, socket);
//! // ...the runtime writes buf[..request.len] to the stream and feeds the answer to
//! // `b.handle_stream(now, socket, chunk)`; no answer within the timeout fails:
//! b.handle_timeout(Instant::ZERO + Duration::from_secs(5));
//! assert!(matches!(b.poll_event(), Some(TcpBindingEvent::Failed { .. })));
//! ```

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::VecDeque;

use crate::machine::{
    BindOptions, DropReason, IoError, OpKind, SocketId, SocketOp, SocketOutcome, Transmit,
    Transport, Verdict,
};
use crate::rng::Rng;
use crate::stun::{
    Attribute, Class, DecodeError, FrameStatus, Header, Message, MessageWriter, Method,
    StreamFramer, TransactionId,
};
use crate::time::Instant;

/// The socket id the machine uses.
pub const TCP_BINDING_SOCKET: SocketId = SocketId(0);

/// The longest response accepted; a longer one is [`TcpBindingError::Malformed`].
pub const MAX_TCP_RESPONSE_LEN: usize = 1024;

/// The longest SOFTWARE value kept from a response (longer ones are cut at a character boundary).
pub const MAX_SERVER_SOFTWARE_LEN: usize = 128;

/// Settings of a [`TcpBinding`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpBindingConfig {
    /// The STUN server (TCP).
    pub server: SocketAddr,
    /// The local address to bind (port 0 picks any; a fixed port is what hole punching needs).
    pub local: SocketAddr,
    /// Options set before the bind (reuse flags, interface).
    pub options: BindOptions,
    /// Bind, connect and answer must all happen within this time.
    pub timeout: Duration,
    /// Keep the connection (and so the NAT mapping) open after the answer, until
    /// [`TcpBinding::close`].
    pub keep_open: bool,
    /// While kept open, send a Binding indication this often (`None`: never).
    pub keepalive: Option<Duration>,
    /// SOFTWARE to put in the request.
    pub software: Option<&'static str>,
}

impl TcpBindingConfig {
    /// A binding from `local` to `server` with `SO_REUSEADDR` and `SO_REUSEPORT` set, a 5 s timeout,
    /// closed after the answer.
    pub fn new(server: SocketAddr, local: SocketAddr) -> Self {
        TcpBindingConfig {
            server,
            local,
            options: BindOptions {
                reuse_address: true,
                reuse_port: true,
                device: None,
            },
            timeout: Duration::from_secs(5),
            keep_open: false,
            keepalive: None,
            software: None,
        }
    }

    /// The same configuration, keeping the connection open after the answer (or not).
    pub fn keep_open(mut self, keep_open: bool) -> Self {
        self.keep_open = keep_open;
        self
    }
}

/// The mapping learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpMapping {
    /// The local address of the connection (the bound port, resolved).
    pub local: SocketAddr,
    /// The server's view of it: the NAT's external TCP endpoint for `local`.
    pub mapped: SocketAddr,
    /// RESPONSE-ORIGIN (or SOURCE-ADDRESS), if the server sent one.
    pub response_origin: Option<SocketAddr>,
    /// The server's SOFTWARE, if it sent one.
    pub server_software: Option<String>,
    /// From the connect's completion to the answer.
    pub rtt: Duration,
}

/// Why a binding failed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TcpBindingError {
    /// No answer within [`TcpBindingConfig::timeout`].
    Timeout,
    /// The socket could not be bound.
    BindFailed(IoError),
    /// The connection could not be made.
    ConnectFailed(IoError),
    /// The connection failed after it was made (send, receive, reset).
    SocketError(IoError),
    /// The server answered with an error.
    ErrorResponse {
        /// The error code.
        code: u16,
    },
    /// The server's bytes are not a STUN response (or it is longer than
    /// [`MAX_TCP_RESPONSE_LEN`]).
    Malformed(DecodeError),
    /// The server closed the connection before answering.
    PeerClosed,
    /// The success response has no (XOR-)MAPPED-ADDRESS.
    MissingMappedAddress,
}

impl core::fmt::Display for TcpBindingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TcpBindingError::Timeout => f.write_str("no answer in time"),
            TcpBindingError::BindFailed(e) => write!(f, "cannot bind: {e}"),
            TcpBindingError::ConnectFailed(e) => write!(f, "cannot connect: {e}"),
            TcpBindingError::SocketError(e) => write!(f, "the connection failed: {e}"),
            TcpBindingError::ErrorResponse { code } => write!(f, "error response {code}"),
            TcpBindingError::Malformed(e) => write!(f, "malformed response: {e}"),
            TcpBindingError::PeerClosed => {
                f.write_str("the server closed the connection without answering")
            }
            TcpBindingError::MissingMappedAddress => {
                f.write_str("the response has no mapped address")
            }
        }
    }
}

impl std::error::Error for TcpBindingError {}

/// Why the machine ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseCause {
    /// It finished (answer or failure without `keep_open`) or [`TcpBinding::close`] was called.
    Local,
    /// The peer closed the kept-open connection.
    PeerClosed,
    /// The kept-open connection failed.
    Error(IoError),
    /// [`TcpBinding::release_socket`] handed the open socket to the caller (no close intent).
    Released,
}

/// What a [`TcpBinding`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TcpBindingEvent {
    /// The server answered with the mapping.
    Mapped(TcpMapping),
    /// No mapping: why.
    Failed {
        /// The reason.
        reason: TcpBindingError,
    },
    /// The socket has had its close intent (or was released). The last event.
    Closed {
        /// Why.
        cause: CloseCause,
    },
}

/// Counters.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpBindingStats {
    /// Bytes received on the stream.
    pub bytes_received: u64,
    /// Well-formed messages ignored (other transaction, indications, anything after the answer).
    pub ignored: u64,
    /// Keep-alive indications sent.
    pub keepalives: u64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum State {
    Binding,
    Connecting,
    /// Connected; the request is sent (or waiting in `send_request`), the answer is awaited.
    Waiting {
        connected_at: Instant,
    },
    /// Answered; the connection is kept open.
    Open,
    /// Over (the socket is closed or released).
    Done,
}

/// The STUN-over-TCP binding machine. See the module docs.
#[derive(Debug)]
pub struct TcpBinding {
    config: TcpBindingConfig,
    rng: Rng,
    state: State,
    transaction: TransactionId,
    local: Option<SocketAddr>,
    /// The socket exists (its bind was asked for and did not fail) and is ours to close.
    socket_open: bool,
    send_request: bool,
    send_keepalive: bool,
    deadline: Option<Instant>,
    keepalive_at: Option<Instant>,
    framer: StreamFramer,
    ops: VecDeque<SocketOp>,
    events: VecDeque<TcpBindingEvent>,
    stats: TcpBindingStats,
}

impl TcpBinding {
    /// A binding for `config`; `seed` determines the transaction id. Emits its bind intent at once.
    pub fn new(config: TcpBindingConfig, seed: u64, now: Instant) -> Self {
        let mut rng = Rng::from_seed(seed);
        let mut id = [0u8; 12];
        rng.fill_bytes(&mut id);
        let mut ops = VecDeque::with_capacity(4);
        ops.push_back(SocketOp::Bind {
            socket: TCP_BINDING_SOCKET,
            transport: Transport::Tcp,
            local: config.local,
            options: config.options,
        });
        TcpBinding {
            deadline: Some(now.saturating_add(config.timeout)),
            config,
            rng,
            state: State::Binding,
            transaction: TransactionId::new(id),
            local: None,
            socket_open: true,
            send_request: false,
            send_keepalive: false,
            keepalive_at: None,
            framer: StreamFramer::new(MAX_TCP_RESPONSE_LEN),
            ops,
            events: VecDeque::with_capacity(4),
            stats: TcpBindingStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &TcpBindingConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> TcpBindingStats {
        self.stats
    }

    /// The transaction id of the request.
    pub fn transaction_id(&self) -> TransactionId {
        self.transaction
    }

    /// The bound local address, once known.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// Whether the machine has ended (its `Closed` event is queued or taken).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether the answered connection is being kept open.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Closes the socket (its one close intent) and ends with [`TcpBindingEvent::Closed`]; before an
    /// answer this reports nothing else (no `Failed`). Idempotent.
    pub fn close(&mut self, _now: Instant) {
        self.finish(CloseCause::Local);
    }

    /// Hands the kept-open, answered connection to the caller: the machine forgets the socket (it
    /// will never close it; the caller must, through the runtime that owns it) and ends with
    /// [`TcpBindingEvent::Closed`] `{ cause: Released }`. Useful to keep holding the mapping after
    /// the machine is dropped. `None` (and nothing changes) unless the connection is open.
    pub fn release_socket(&mut self) -> Option<SocketId> {
        if self.state != State::Open {
            return None;
        }
        self.state = State::Done;
        self.socket_open = false;
        self.clear_timers();
        self.events.push_back(TcpBindingEvent::Closed {
            cause: CloseCause::Released,
        });
        Some(TCP_BINDING_SOCKET)
    }

    fn count_received(&mut self, n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        self.stats.bytes_received = self.stats.bytes_received.saturating_add(n);
    }

    /// Handles the whole message of `total` bytes starting the buffer.
    fn answer(&mut self, now: Instant, connected_at: Instant, total: usize) {
        let raw = self.framer.held().get(..total).unwrap_or(&[]);
        let msg = match Message::decode(raw) {
            Ok(m) => m,
            Err(e) => {
                self.fail(TcpBindingError::Malformed(e));
                return;
            }
        };
        if !msg.class().is_response()
            || msg.method() != Method::BINDING
            || msg.transaction_id() != self.transaction
            || msg.is_legacy()
        {
            self.stats.ignored = self.stats.ignored.saturating_add(1);
            return;
        }
        if msg.class() == Class::Error {
            let code = msg.error_code().map_or(0, |e| e.code);
            self.fail(TcpBindingError::ErrorResponse { code });
            return;
        }
        let Some(mapped) = msg.mapped_address() else {
            self.fail(TcpBindingError::MissingMappedAddress);
            return;
        };
        let mapping = TcpMapping {
            local: self.local.unwrap_or(self.config.local),
            mapped,
            response_origin: msg.response_origin(),
            server_software: msg.software().map(software),
            rtt: now.saturating_duration_since(connected_at),
        };
        self.events.push_back(TcpBindingEvent::Mapped(mapping));
        if self.config.keep_open {
            self.state = State::Open;
            self.keepalive_at = self.config.keepalive.map(|k| now.saturating_add(k));
            self.deadline = self.keepalive_at;
        } else {
            self.finish(CloseCause::Local);
        }
    }

    /// Reports `reason`, then closes.
    fn fail(&mut self, reason: TcpBindingError) {
        if matches!(self.state, State::Done | State::Open) {
            return;
        }
        self.events.push_back(TcpBindingEvent::Failed { reason });
        self.finish(CloseCause::Local);
    }

    /// Closes the socket once and reports `Closed`. Idempotent.
    fn finish(&mut self, cause: CloseCause) {
        if self.state == State::Done {
            return;
        }
        self.state = State::Done;
        if core::mem::take(&mut self.socket_open) {
            self.ops.push_back(SocketOp::Close {
                socket: TCP_BINDING_SOCKET,
            });
        }
        self.clear_timers();
        self.events.push_back(TcpBindingEvent::Closed { cause });
    }

    fn clear_timers(&mut self) {
        self.send_request = false;
        self.send_keepalive = false;
        self.deadline = None;
        self.keepalive_at = None;
        self.framer.clear();
    }
}

/// SOFTWARE, cut to [`MAX_SERVER_SOFTWARE_LEN`] bytes at a character boundary.
fn software(s: &str) -> String {
    let mut end = s.len().min(MAX_SERVER_SOFTWARE_LEN);
    while !s.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    s.get(..end).unwrap_or("").to_string()
}

impl crate::Machine for TcpBinding {
    type Event = TcpBindingEvent;

    /// Bytes from the server, split anywhere.
    fn handle_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        if socket != TCP_BINDING_SOCKET {
            return Verdict::Dropped(DropReason::UnknownSocket);
        }
        let connected_at = match self.state {
            State::Waiting { connected_at } => connected_at,
            State::Open => {
                // After the answer: read and ignored (the server has nothing more to say).
                self.count_received(data.len());
                self.stats.ignored = self.stats.ignored.saturating_add(1);
                return Verdict::Consumed;
            }
            State::Done => return Verdict::Dropped(DropReason::Closed),
            State::Binding | State::Connecting => return Verdict::Dropped(DropReason::Unexpected),
        };
        self.count_received(data.len());
        let mut rest = data;
        while self.state == (State::Waiting { connected_at }) {
            let before = rest.len();
            rest = self.framer.fill(rest);
            match self.framer.status() {
                FrameStatus::Partial if rest.is_empty() || rest.len() == before => break,
                FrameStatus::Partial => {}
                FrameStatus::Complete(total) => {
                    self.answer(now, connected_at, total);
                    self.framer.consume(total);
                }
                FrameStatus::Bad(e) => {
                    self.fail(TcpBindingError::Malformed(e));
                    return Verdict::Dropped(DropReason::Malformed(e));
                }
            }
        }
        Verdict::Consumed
    }

    /// The outcome of an intent, or an asynchronous socket error.
    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        if socket != TCP_BINDING_SOCKET {
            return;
        }
        match (self.state, outcome) {
            (State::Binding, SocketOutcome::Bound { local }) => {
                self.local = Some(local);
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
                // Nothing was opened: nothing to close.
                self.socket_open = false;
                self.fail(TcpBindingError::BindFailed(error));
            }
            (State::Connecting, SocketOutcome::Connected { local, .. }) => {
                self.local = Some(local);
                self.state = State::Waiting { connected_at: now };
                self.send_request = true;
            }
            (
                State::Connecting,
                SocketOutcome::Failed {
                    op: OpKind::Connect,
                    error,
                    ..
                },
            ) => self.fail(TcpBindingError::ConnectFailed(error)),
            (State::Connecting | State::Waiting { .. }, SocketOutcome::PeerClosed) => {
                self.fail(TcpBindingError::PeerClosed)
            }
            (State::Connecting | State::Waiting { .. }, SocketOutcome::Failed { error, .. }) => {
                self.fail(TcpBindingError::SocketError(error))
            }
            (State::Open, SocketOutcome::PeerClosed) => self.finish(CloseCause::PeerClosed),
            (State::Open, SocketOutcome::Failed { error, .. }) => {
                self.finish(CloseCause::Error(error))
            }
            _ => {}
        }
    }

    /// The deadline has come: fail with `Timeout` before an answer; send a keep-alive after it.
    fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Binding | State::Connecting | State::Waiting { .. } => {
                if self.deadline.is_some_and(|d| now >= d) {
                    self.fail(TcpBindingError::Timeout);
                }
            }
            State::Open => {
                if let (Some(at), Some(every)) = (self.keepalive_at, self.config.keepalive) {
                    if now >= at {
                        self.send_keepalive = true;
                        self.keepalive_at = Some(now.saturating_add(every));
                        self.deadline = self.keepalive_at;
                    }
                }
            }
            State::Done => {}
        }
    }

    /// Writes the request (or a keep-alive indication) into `buf`.
    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let class = if self.send_request {
            self.send_request = false;
            Class::Request
        } else if self.send_keepalive {
            self.send_keepalive = false;
            self.stats.keepalives = self.stats.keepalives.saturating_add(1);
            Class::Indication
        } else {
            return None;
        };
        let id = if class == Class::Request {
            self.transaction
        } else {
            let mut id = [0u8; 12];
            self.rng.fill_bytes(&mut id);
            TransactionId::new(id)
        };
        let mut w = MessageWriter::new(buf, Header::new(class, Method::BINDING, id)).ok()?;
        if let Some(s) = self.config.software {
            w.add(&Attribute::Software(s)).ok()?;
        }
        w.add_fingerprint().ok()?;
        Some(Transmit {
            socket: TCP_BINDING_SOCKET,
            destination: self.config.server,
            len: w.finish(),
        })
    }

    /// The next socket intent.
    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        self.ops.pop_front()
    }

    /// The next event.
    fn poll_event(&mut self) -> Option<TcpBindingEvent> {
        self.events.pop_front()
    }

    /// The next deadline: the timeout before the answer, the next keep-alive after it. O(1).
    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
}

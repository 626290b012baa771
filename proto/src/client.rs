//! The STUN client machine: many Binding transactions multiplexed over sockets it owns.
//!
//! Open sockets with [`StunClient::open_socket`] (a bind intent), start transactions with
//! [`StunClient::start`]; each transaction ends in exactly one [`ClientEvent::Transaction`] with the
//! mapped address, other address, response origin and RTT, or a typed [`Failure`].
//!
//! A reply counts only if its transaction id (including the cookie field of RFC 3489 messages), class,
//! method, socket and source address all match. For a change request the expected source is the
//! address given with [`Request::expect_from`]; without one the source must differ from the server's
//! in whatever the request asked to change.

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::VecDeque;

use crate::machine::{
    BindOptions, DropReason, IoError, OpKind, SocketId, SocketOp, SocketOutcome, Transmit,
    Transport, Verdict,
};
use crate::rng::Rng;
use crate::stun::{
    self, Attribute, ChangeRequest, Class, Header, Message, MessageWriter, Method, TransactionId,
    MAGIC_COOKIE,
};
use crate::time::Instant;

/// When to (re)transmit a request and when to give up.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Retransmit {
    /// RFC 5389 §7.2.1: send, then resend after `rto`, `2·rto`, `4·rto`... (capped at `max_rto`) up to
    /// `transmissions` sends in all (Rc); after the last, wait `last_wait · rto` (Rm) before failing.
    Rfc5389 {
        /// Initial retransmission timeout.
        rto: Duration,
        /// Total number of transmissions (Rc).
        transmissions: u32,
        /// Multiple of `rto` to wait after the last transmission (Rm).
        last_wait: u32,
        /// Cap on the doubled timeout.
        max_rto: Duration,
    },
    /// One transmission, then fail after `timeout` (what p2pd does in practice).
    SingleShot {
        /// How long to wait for the reply.
        timeout: Duration,
    },
}

impl Retransmit {
    /// RFC 5389's defaults: RTO 500 ms, Rc 7, Rm 16 (39.5 s in all).
    pub const RFC5389: Retransmit = Retransmit::Rfc5389 {
        rto: Duration::from_millis(500),
        transmissions: 7,
        last_wait: 16,
        max_rto: Duration::from_secs(60),
    };

    /// How long to wait after transmission number `sent` (1-based) before retransmitting, and whether
    /// another transmission may follow.
    fn wait_after(&self, sent: u32) -> (Duration, bool) {
        match *self {
            Retransmit::SingleShot { timeout } => (timeout, false),
            Retransmit::Rfc5389 {
                rto,
                transmissions,
                last_wait,
                max_rto,
            } => {
                if sent >= transmissions.max(1) {
                    (rto.saturating_mul(last_wait.max(1)), false)
                } else {
                    let doublings = sent.saturating_sub(1).min(31);
                    let wait = rto.saturating_mul(1u32 << doublings).min(max_rto);
                    (wait, true)
                }
            }
        }
    }
}

/// Client settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Retransmission policy.
    pub retransmit: Retransmit,
    /// Most transactions in flight at once; [`StunClient::start`] refuses more.
    pub max_transactions: usize,
    /// Most sockets open at once.
    pub max_sockets: usize,
    /// Put FINGERPRINT on RFC 5389 requests.
    pub fingerprint: bool,
    /// Put SOFTWARE on RFC 5389 requests.
    pub software: Option<&'static str>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            retransmit: Retransmit::RFC5389,
            max_transactions: 64,
            max_sockets: 16,
            fingerprint: false,
            software: None,
        }
    }
}

/// Names one transaction of a client.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TransactionHandle(pub u64);

/// A Binding request to start.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The (client-owned) socket to send from.
    pub socket: SocketId,
    /// Where to send.
    pub server: SocketAddr,
    /// CHANGE-REQUEST flags (none by default).
    pub change: ChangeRequest,
    /// The only source a reply is accepted from; see the module docs for the default.
    pub expect_from: Option<SocketAddr>,
    /// Speak RFC 3489: no magic cookie, a random 128-bit transaction id.
    pub legacy: bool,
    /// RESPONSE-PORT (RFC 5780): ask for the reply at this port of our address.
    pub response_port: Option<u16>,
    /// This transaction's retransmission policy, instead of the client's.
    pub retransmit: Option<Retransmit>,
}

impl Request {
    /// A plain Binding request from `socket` to `server`.
    pub fn binding(socket: SocketId, server: SocketAddr) -> Self {
        Request {
            socket,
            server,
            change: ChangeRequest::NONE,
            expect_from: None,
            legacy: false,
            response_port: None,
            retransmit: None,
        }
    }

    /// With CHANGE-REQUEST flags.
    pub fn with_change(mut self, change: ChangeRequest) -> Self {
        self.change = change;
        self
    }

    /// Accept the reply only from `source`.
    pub fn expect_from(mut self, source: SocketAddr) -> Self {
        self.expect_from = Some(source);
        self
    }

    /// In the RFC 3489 dialect.
    pub fn legacy(mut self) -> Self {
        self.legacy = true;
        self
    }

    /// With RESPONSE-PORT.
    pub fn with_response_port(mut self, port: u16) -> Self {
        self.response_port = Some(port);
        self
    }

    /// With its own retransmission policy (for example a long schedule for a probe whose silence is
    /// itself the evidence).
    pub fn with_retransmit(mut self, retransmit: Retransmit) -> Self {
        self.retransmit = Some(retransmit);
        self
    }
}

/// A successful Binding transaction.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BindingResponse {
    /// Our address as the server saw it (XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS).
    pub mapped: SocketAddr,
    /// OTHER-ADDRESS (or RFC 3489 CHANGED-ADDRESS), if the server sent one.
    pub other_address: Option<SocketAddr>,
    /// RESPONSE-ORIGIN (or RFC 3489 SOURCE-ADDRESS), if the server sent one.
    pub response_origin: Option<SocketAddr>,
    /// Where the reply actually came from.
    pub source: SocketAddr,
    /// The local address of the socket, if known.
    pub local: Option<SocketAddr>,
    /// Time from the last transmission to the reply.
    pub rtt: Duration,
    /// How many times the request was sent.
    pub transmissions: u32,
    /// Whether the reply was in the RFC 3489 dialect.
    pub legacy: bool,
}

/// How a server broke the protocol.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Misbehaviour {
    /// A success response without any mapped-address attribute.
    MissingMappedAddress,
    /// An error response without ERROR-CODE.
    MissingErrorCode,
    /// Replies came only from a source the request did not allow (for example a change request the
    /// server ignored, answering from its primary address).
    ReplyFromUnexpectedSource {
        /// The (last) unexpected source.
        from: SocketAddr,
    },
}

impl core::fmt::Display for Misbehaviour {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Misbehaviour::MissingMappedAddress => {
                f.write_str("a success response without a mapped address")
            }
            Misbehaviour::MissingErrorCode => f.write_str("an error response without ERROR-CODE"),
            Misbehaviour::ReplyFromUnexpectedSource { from } => {
                write!(f, "replies came only from an unexpected source ({from})")
            }
        }
    }
}

/// Why a transaction failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// No acceptable reply after every transmission.
    Timeout {
        /// How many times the request was sent.
        transmissions: u32,
    },
    /// The server answered with an error response.
    ErrorResponse {
        /// The error code (300..=699).
        code: u16,
        /// The reason phrase (at most 128 bytes kept).
        reason: String,
    },
    /// The server broke the protocol.
    ServerMisbehaved(Misbehaviour),
    /// The socket could not be bound, or was closed under the transaction.
    SocketFailed(IoError),
    /// Cancelled by [`StunClient::cancel`] or [`StunClient::close_socket`].
    Cancelled,
    /// The client was closed.
    Closed,
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Failure::Timeout { transmissions } => {
                write!(f, "no reply after {transmissions} transmission(s)")
            }
            Failure::ErrorResponse { code, reason } => write!(f, "error response {code} {reason}"),
            Failure::ServerMisbehaved(m) => write!(f, "the server misbehaved: {m}"),
            Failure::SocketFailed(e) => write!(f, "socket failed: {e}"),
            Failure::Cancelled => f.write_str("cancelled"),
            Failure::Closed => f.write_str("the client was closed"),
        }
    }
}

impl std::error::Error for Failure {}

/// The end of one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionResult {
    /// Which transaction.
    pub id: TransactionHandle,
    /// Its socket.
    pub socket: SocketId,
    /// The server it was sent to.
    pub server: SocketAddr,
    /// The change it asked for.
    pub change: ChangeRequest,
    /// The result.
    pub outcome: Result<BindingResponse, Failure>,
}

/// What the client reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A socket is bound.
    SocketReady {
        /// The socket.
        socket: SocketId,
        /// Its local address.
        local: SocketAddr,
    },
    /// A socket could not be bound; its transactions failed.
    SocketFailed {
        /// The socket.
        socket: SocketId,
        /// Why.
        error: IoError,
    },
    /// A transaction ended.
    Transaction(TransactionResult),
    /// The client is closed: every socket has been given a close intent. The last event.
    Closed,
}

/// Misuse of the client's API.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientApiError {
    /// `max_transactions` are in flight.
    TooManyTransactions,
    /// `max_sockets` are open.
    TooManySockets,
    /// The socket is not one this client opened (or it was closed).
    UnknownSocket,
    /// The client is closed.
    Closed,
    /// The server and socket address families differ.
    AddressFamilyMismatch,
}

impl core::fmt::Display for ClientApiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ClientApiError::TooManyTransactions => "too many transactions in flight",
            ClientApiError::TooManySockets => "too many sockets open",
            ClientApiError::UnknownSocket => "the socket is not open in this client",
            ClientApiError::Closed => "the client is closed",
            ClientApiError::AddressFamilyMismatch => {
                "the server and the socket differ in address family"
            }
        })
    }
}

impl std::error::Error for ClientApiError {}

/// Counters, for tests and diagnostics.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests sent (first transmissions).
    pub requests: u64,
    /// Retransmissions.
    pub retransmissions: u64,
    /// Replies accepted.
    pub replies: u64,
    /// Datagrams dropped as malformed.
    pub malformed: u64,
    /// Replies dropped for coming from the wrong source or socket.
    pub wrong_source: u64,
    /// Replies to transactions that already ended.
    pub duplicates: u64,
    /// STUN responses matching no transaction (answered `NotMine`).
    pub unknown_transaction: u64,
    /// Well-formed messages of the wrong method.
    pub unexpected: u64,
    /// Sends the runtime reported as failed.
    pub send_failures: u64,
    /// Transactions that timed out.
    pub timeouts: u64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum SocketState {
    Binding,
    Ready(SocketAddr),
}

#[derive(Copy, Clone, Debug)]
struct OwnedSocket {
    id: SocketId,
    local_hint: SocketAddr,
    state: SocketState,
}

#[derive(Clone, Debug)]
struct Transaction {
    handle: TransactionHandle,
    request: Request,
    cookie: [u8; 4],
    txid: TransactionId,
    transmissions: u32,
    last_sent: Instant,
    /// When to retransmit or give up; `None` while waiting for the socket or for the send.
    deadline: Option<Instant>,
    final_wait: bool,
    queued: bool,
    misdirected: Option<SocketAddr>,
}

/// How many ended transaction ids are remembered to recognise late duplicates.
const RECENT: usize = 32;

/// The STUN client machine. See the module docs.
#[derive(Debug)]
pub struct StunClient {
    config: ClientConfig,
    rng: Rng,
    sockets: Vec<OwnedSocket>,
    transactions: Vec<Option<Transaction>>,
    transmit_queue: VecDeque<(usize, TransactionHandle)>,
    ops: VecDeque<SocketOp>,
    events: VecDeque<ClientEvent>,
    recent: [([u8; 4], TransactionId); RECENT],
    recent_next: usize,
    next_handle: u64,
    next_socket: u32,
    deadline: Option<Instant>,
    now: Instant,
    closed: bool,
    stats: ClientStats,
}

impl StunClient {
    /// A client whose transaction ids come from `seed`.
    pub fn new(config: ClientConfig, seed: u64) -> Self {
        let slots = config.max_transactions;
        StunClient {
            transactions: core::iter::repeat_with(|| None).take(slots).collect(),
            sockets: Vec::with_capacity(config.max_sockets),
            transmit_queue: VecDeque::with_capacity(slots),
            ops: VecDeque::new(),
            events: VecDeque::new(),
            recent: [([0; 4], TransactionId::new([0; 12])); RECENT],
            recent_next: 0,
            config,
            rng: Rng::from_seed(seed),
            next_handle: 1,
            next_socket: 1,
            deadline: None,
            now: Instant::ZERO,
            closed: false,
            stats: ClientStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// How many transactions are in flight.
    pub fn in_flight(&self) -> usize {
        self.transactions.iter().filter(|t| t.is_some()).count()
    }

    /// How many sockets are open (bound or binding).
    pub fn open_sockets(&self) -> usize {
        self.sockets.len()
    }

    /// The local address of a bound socket.
    pub fn local_addr(&self, socket: SocketId) -> Option<SocketAddr> {
        match self.sockets.iter().find(|s| s.id == socket)?.state {
            SocketState::Ready(a) => Some(a),
            SocketState::Binding => None,
        }
    }

    /// Asks for a UDP socket bound to `local`; the answer is [`ClientEvent::SocketReady`] or
    /// [`ClientEvent::SocketFailed`]. Transactions may be started on it at once.
    pub fn open_socket(
        &mut self,
        now: Instant,
        local: SocketAddr,
        options: BindOptions,
    ) -> Result<SocketId, ClientApiError> {
        self.advance(now);
        if self.closed {
            return Err(ClientApiError::Closed);
        }
        if self.sockets.len() >= self.config.max_sockets {
            return Err(ClientApiError::TooManySockets);
        }
        let id = loop {
            let candidate = SocketId(self.next_socket);
            self.next_socket = self.next_socket.wrapping_add(1);
            if !self.sockets.iter().any(|s| s.id == candidate) {
                break candidate;
            }
        };
        self.sockets.push(OwnedSocket {
            id,
            local_hint: local,
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

    /// Closes one socket: its transactions fail with [`Failure::Cancelled`] and a close intent is
    /// emitted. Closing a socket that is not open does nothing.
    pub fn close_socket(&mut self, now: Instant, socket: SocketId) {
        self.advance(now);
        let Some(pos) = self.sockets.iter().position(|s| s.id == socket) else {
            return;
        };
        self.sockets.swap_remove(pos);
        self.fail_where(|t| t.request.socket == socket, || Failure::Cancelled);
        self.ops.push_back(SocketOp::Close { socket });
        self.refresh_deadline();
    }

    /// Starts a transaction. Its request goes out on the next `poll_transmit` (once the socket is bound).
    pub fn start(
        &mut self,
        now: Instant,
        request: Request,
    ) -> Result<TransactionHandle, ClientApiError> {
        self.advance(now);
        if self.closed {
            return Err(ClientApiError::Closed);
        }
        let socket = self
            .sockets
            .iter()
            .find(|s| s.id == request.socket)
            .ok_or(ClientApiError::UnknownSocket)?;
        if socket.local_hint.is_ipv4() != request.server.is_ipv4() {
            return Err(ClientApiError::AddressFamilyMismatch);
        }
        let ready = matches!(socket.state, SocketState::Ready(_));
        let slot = self
            .transactions
            .iter()
            .position(Option::is_none)
            .ok_or(ClientApiError::TooManyTransactions)?;
        let handle = TransactionHandle(self.next_handle);
        self.next_handle = self.next_handle.wrapping_add(1);
        let mut id = [0u8; 12];
        self.rng.fill_bytes(&mut id);
        let cookie = if request.legacy {
            let mut c = [0u8; 4];
            loop {
                self.rng.fill_bytes(&mut c);
                if u32::from_be_bytes(c) != MAGIC_COOKIE {
                    break c;
                }
            }
        } else {
            MAGIC_COOKIE.to_be_bytes()
        };
        let tx = Transaction {
            handle,
            request,
            cookie,
            txid: TransactionId::new(id),
            transmissions: 0,
            last_sent: now,
            deadline: None,
            final_wait: false,
            queued: false,
            misdirected: None,
        };
        if let Some(s) = self.transactions.get_mut(slot) {
            *s = Some(tx);
        }
        if ready {
            self.queue_send(slot);
        }
        Ok(handle)
    }

    /// Cancels a transaction; it ends with [`Failure::Cancelled`]. Unknown handles are ignored.
    pub fn cancel(&mut self, now: Instant, handle: TransactionHandle) {
        self.advance(now);
        self.fail_where(|t| t.handle == handle, || Failure::Cancelled);
        self.refresh_deadline();
    }

    /// Closes the client: every transaction fails with [`Failure::Closed`], every socket gets a close
    /// intent, then [`ClientEvent::Closed`]. Idempotent.
    pub fn close(&mut self, now: Instant) {
        self.advance(now);
        if self.closed {
            return;
        }
        self.closed = true;
        self.fail_where(|_| true, || Failure::Closed);
        for s in self.sockets.drain(..) {
            self.ops.push_back(SocketOp::Close { socket: s.id });
        }
        self.transmit_queue.clear();
        self.events.push_back(ClientEvent::Closed);
        self.deadline = None;
    }

    /// Whether [`StunClient::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    fn advance(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    fn queue_send(&mut self, slot: usize) {
        if let Some(tx) = self.transactions.get_mut(slot).and_then(Option::as_mut) {
            if !tx.queued {
                tx.queued = true;
                tx.deadline = None;
                self.transmit_queue.push_back((slot, tx.handle));
            }
        }
    }

    fn finish(&mut self, slot: usize, outcome: Result<BindingResponse, Failure>) {
        let Some(tx) = self.transactions.get_mut(slot).and_then(Option::take) else {
            return;
        };
        if let Some(r) = self.recent.get_mut(self.recent_next) {
            *r = (tx.cookie, tx.txid);
        }
        self.recent_next = self.recent_next.saturating_add(1) % RECENT;
        let local = self.local_addr(tx.request.socket);
        let outcome = outcome.map(|mut r| {
            r.local = local;
            r
        });
        self.events
            .push_back(ClientEvent::Transaction(TransactionResult {
                id: tx.handle,
                socket: tx.request.socket,
                server: tx.request.server,
                change: tx.request.change,
                outcome,
            }));
    }

    fn fail_where(&mut self, pred: impl Fn(&Transaction) -> bool, failure: impl Fn() -> Failure) {
        let slots: Vec<usize> = self
            .transactions
            .iter()
            .enumerate()
            .filter(|(_, t)| t.as_ref().is_some_and(&pred))
            .map(|(i, _)| i)
            .collect();
        for slot in slots {
            self.finish(slot, Err(failure()));
        }
    }

    fn refresh_deadline(&mut self) {
        self.deadline = self
            .transactions
            .iter()
            .filter_map(|t| t.as_ref().and_then(|t| t.deadline))
            .min();
    }
}

/// Whether a reply from `from` may answer `request`.
fn source_acceptable(request: &Request, from: SocketAddr) -> bool {
    let from = canonical(from);
    if let Some(expected) = request.expect_from {
        return canonical(expected) == from;
    }
    let server = canonical(request.server);
    if !request.change.any() {
        return from == server;
    }
    (!request.change.change_ip || from.ip() != server.ip())
        && (!request.change.change_port || from.port() != server.port())
        && (request.change.change_ip || from.ip() == server.ip())
        && (request.change.change_port || from.port() == server.port())
}

/// Maps IPv4-mapped IPv6 addresses to IPv4, so dual-stack sockets compare equal.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    String::from(s.get(..end).unwrap_or(""))
}

fn encode_request(
    tx: &Transaction,
    fingerprint: bool,
    software: Option<&str>,
    buf: &mut [u8],
) -> Option<usize> {
    let header = Header::legacy(Class::Request, Method::BINDING, tx.cookie, tx.txid);
    let mut w = MessageWriter::new(buf, header).ok()?;
    if tx.request.change.any() {
        w.add(&Attribute::ChangeRequest(tx.request.change)).ok()?;
    }
    if let Some(port) = tx.request.response_port {
        w.add(&Attribute::ResponsePort(port)).ok()?;
    }
    if !tx.request.legacy {
        if let Some(s) = software {
            w.add(&Attribute::Software(s)).ok()?;
        }
        if fingerprint {
            w.add_fingerprint().ok()?;
        }
    }
    Some(w.finish())
}

impl crate::Machine for StunClient {
    type Event = ClientEvent;

    /// Handles a datagram received on `socket` from `from`.
    fn handle_datagram(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        data: &[u8],
    ) -> Verdict {
        self.advance(now);
        if !stun::is_stun(data) {
            return Verdict::NotMine;
        }
        let msg = match Message::decode(data) {
            Ok(m) => m,
            Err(e) => {
                self.stats.malformed = self.stats.malformed.saturating_add(1);
                return Verdict::Dropped(DropReason::Malformed(e));
            }
        };
        if !msg.class().is_response() {
            return Verdict::NotMine;
        }
        let key = (msg.header().cookie, msg.transaction_id());
        let Some(slot) = self.transactions.iter().position(|t| {
            t.as_ref()
                .is_some_and(|t| (t.cookie, t.txid) == key && t.transmissions > 0)
        }) else {
            if self.recent.contains(&key) {
                self.stats.duplicates = self.stats.duplicates.saturating_add(1);
                return Verdict::Dropped(DropReason::Duplicate);
            }
            self.stats.unknown_transaction = self.stats.unknown_transaction.saturating_add(1);
            return Verdict::NotMine;
        };
        let Some(tx) = self.transactions.get_mut(slot).and_then(Option::as_mut) else {
            return Verdict::NotMine;
        };
        if tx.request.socket != socket {
            self.stats.wrong_source = self.stats.wrong_source.saturating_add(1);
            return Verdict::Dropped(DropReason::WrongSocket);
        }
        if msg.method() != Method::BINDING {
            self.stats.unexpected = self.stats.unexpected.saturating_add(1);
            return Verdict::Dropped(DropReason::Unexpected);
        }
        // An error response (for example 420 to a change the server cannot make) comes from the
        // address the request was sent to; a success must come from where the request allows.
        let acceptable = source_acceptable(&tx.request, from)
            || (msg.class() == Class::Error && canonical(from) == canonical(tx.request.server));
        if !acceptable {
            tx.misdirected = Some(from);
            self.stats.wrong_source = self.stats.wrong_source.saturating_add(1);
            return Verdict::Dropped(DropReason::WrongSource);
        }
        let outcome = match msg.class() {
            Class::Success => match msg.mapped_address() {
                Some(mapped) => Ok(BindingResponse {
                    mapped,
                    other_address: msg.other_address(),
                    response_origin: msg.response_origin(),
                    source: from,
                    local: None,
                    rtt: now.saturating_duration_since(tx.last_sent),
                    transmissions: tx.transmissions,
                    legacy: msg.is_legacy(),
                }),
                None => Err(Failure::ServerMisbehaved(
                    Misbehaviour::MissingMappedAddress,
                )),
            },
            _ => match msg.error_code() {
                Some(e) => Err(Failure::ErrorResponse {
                    code: e.code,
                    reason: truncate(e.reason, 128),
                }),
                None => Err(Failure::ServerMisbehaved(Misbehaviour::MissingErrorCode)),
            },
        };
        self.stats.replies = self.stats.replies.saturating_add(1);
        self.finish(slot, outcome);
        self.refresh_deadline();
        Verdict::Consumed
    }

    /// Handles the answer to a socket intent.
    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        self.advance(now);
        let Some(pos) = self.sockets.iter().position(|s| s.id == socket) else {
            return;
        };
        match outcome {
            SocketOutcome::Bound { local } => {
                if let Some(s) = self.sockets.get_mut(pos) {
                    s.state = SocketState::Ready(local);
                }
                self.events
                    .push_back(ClientEvent::SocketReady { socket, local });
                let waiting: Vec<usize> = self
                    .transactions
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| {
                        t.as_ref().is_some_and(|t| {
                            t.request.socket == socket && t.transmissions == 0 && !t.queued
                        })
                    })
                    .map(|(i, _)| i)
                    .collect();
                for slot in waiting {
                    self.queue_send(slot);
                }
            }
            SocketOutcome::Failed {
                op: OpKind::Bind,
                error,
                ..
            } => {
                self.sockets.swap_remove(pos);
                self.events
                    .push_back(ClientEvent::SocketFailed { socket, error });
                self.fail_where(
                    |t| t.request.socket == socket,
                    || Failure::SocketFailed(error),
                );
            }
            SocketOutcome::Failed {
                op: OpKind::Send, ..
            } => {
                // UDP: the retransmission schedule already covers a lost send.
                self.stats.send_failures = self.stats.send_failures.saturating_add(1);
            }
            _ => {}
        }
        self.refresh_deadline();
    }

    /// Retransmits or fails every transaction whose deadline has passed.
    fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        let mut slot = 0usize;
        while slot < self.transactions.len() {
            let due = self
                .transactions
                .get(slot)
                .and_then(Option::as_ref)
                .and_then(|t| t.deadline.map(|d| (d <= now, t.final_wait)));
            match due {
                Some((true, false)) => self.queue_send(slot),
                Some((true, true)) => {
                    let failure =
                        self.transactions
                            .get(slot)
                            .and_then(Option::as_ref)
                            .map(|t| match t.misdirected {
                                Some(from) => Failure::ServerMisbehaved(
                                    Misbehaviour::ReplyFromUnexpectedSource { from },
                                ),
                                None => Failure::Timeout {
                                    transmissions: t.transmissions,
                                },
                            })
                            .unwrap_or(Failure::Timeout { transmissions: 0 });
                    self.stats.timeouts = self.stats.timeouts.saturating_add(1);
                    self.finish(slot, Err(failure));
                }
                _ => {}
            }
            slot = slot.saturating_add(1);
        }
        self.refresh_deadline();
    }

    /// Writes the next request into `buf`.
    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        while let Some((slot, handle)) = self.transmit_queue.pop_front() {
            let now = self.now;
            let retransmit = self.config.retransmit;
            let (fingerprint, software) = (self.config.fingerprint, self.config.software);
            let Some(tx) = self.transactions.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            if tx.handle != handle || !tx.queued {
                continue;
            }
            tx.queued = false;
            let Some(len) = encode_request(tx, fingerprint, software, buf) else {
                // The caller's buffer is too small (API misuse); fail rather than spin.
                self.finish(slot, Err(Failure::SocketFailed(IoError::MessageTooLong)));
                self.refresh_deadline();
                continue;
            };
            tx.transmissions = tx.transmissions.saturating_add(1);
            tx.last_sent = now;
            let (wait, more) = tx
                .request
                .retransmit
                .unwrap_or(retransmit)
                .wait_after(tx.transmissions);
            tx.deadline = Some(now.saturating_add(wait));
            tx.final_wait = !more;
            if tx.transmissions == 1 {
                self.stats.requests = self.stats.requests.saturating_add(1);
            } else {
                self.stats.retransmissions = self.stats.retransmissions.saturating_add(1);
            }
            let transmit = Transmit {
                socket: tx.request.socket,
                destination: tx.request.server,
                len,
            };
            self.refresh_deadline();
            return Some(transmit);
        }
        None
    }

    /// The next socket intent.
    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        self.ops.pop_front()
    }

    /// The next event.
    fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The next deadline (cached).
    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
}

//! The machine contract: socket handles, transmits, socket intents, verdicts and the driving loop.
//!
//! Every protocol machine in the workspace follows one shape (see the crate docs for the loop):
//! inputs are `handle_*` calls that take `now`; outputs are drained after every input with
//! [`Machine::poll_transmit`], [`Machine::poll_socket_op`], [`Machine::poll_event`] and finally
//! [`Machine::poll_timeout`]. [`drain`] is that loop, shared by the runtime, the simulator and the
//! test harness in [`crate::testing`].

use core::fmt;
use core::net::SocketAddr;
use core::ops::ControlFlow;

use crate::time::Instant;

/// A handle for a socket. The machine names its sockets; the runtime or simulator owns the real thing.
///
/// Ids are scoped to one machine: two machines may use the same id for different sockets.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SocketId(pub u32);

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "socket#{}", self.0)
    }
}

/// The transport of a socket intent.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A UDP socket.
    Udp,
    /// A TCP socket (stream or listener).
    Tcp,
}

/// A network interface name (at most 15 bytes, as Linux's `IFNAMSIZ` allows), stored inline.
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub struct InterfaceName {
    bytes: [u8; 15],
    len: u8,
}

impl InterfaceName {
    /// The longest name accepted.
    pub const MAX_LEN: usize = 15;

    /// A name, or `None` if it is empty, longer than [`Self::MAX_LEN`] or contains NUL or `/`.
    pub fn new(name: &str) -> Option<Self> {
        let raw = name.as_bytes();
        if raw.is_empty() || raw.len() > Self::MAX_LEN || raw.iter().any(|b| *b == 0 || *b == b'/')
        {
            return None;
        }
        let mut bytes = [0u8; 15];
        bytes.get_mut(..raw.len())?.copy_from_slice(raw);
        Some(InterfaceName {
            bytes,
            len: u8::try_from(raw.len()).ok()?,
        })
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        let raw = self.bytes.get(..usize::from(self.len)).unwrap_or(&[]);
        core::str::from_utf8(raw).unwrap_or("")
    }
}

impl fmt::Debug for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// Options a bind intent carries. The runtime applies them **before** `bind(2)`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct BindOptions {
    /// Set `SO_REUSEADDR`.
    pub reuse_address: bool,
    /// Set `SO_REUSEPORT` (where the platform has it).
    pub reuse_port: bool,
    /// Bind to this interface (`SO_BINDTODEVICE` on Linux, `IP_BOUND_IF` on macOS, `IP_UNICAST_IF` on
    /// Windows).
    pub device: Option<InterfaceName>,
}

/// A socket intent: something the machine needs done to a socket it names.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SocketOp {
    /// Create a socket and bind it to `local` (port 0 picks any). Answered with
    /// [`SocketOutcome::Bound`] or [`SocketOutcome::Failed`].
    Bind {
        /// The handle the machine will use for it.
        socket: SocketId,
        /// UDP or TCP.
        transport: Transport,
        /// The local address.
        local: SocketAddr,
        /// Options set before binding.
        options: BindOptions,
    },
    /// Connect a bound TCP socket. Answered with [`SocketOutcome::Connected`] or a failure.
    Connect {
        /// The socket.
        socket: SocketId,
        /// The remote address.
        remote: SocketAddr,
    },
    /// Make a bound TCP socket listen. Connections wait in the kernel's backlog until the machine
    /// asks for them with [`SocketOp::Accept`].
    Listen {
        /// The socket.
        socket: SocketId,
        /// The accept backlog.
        backlog: u32,
    },
    /// Take the next incoming connection on `listener` (now or when one arrives) and name it
    /// `socket`. Answered on `socket` with [`SocketOutcome::Accepted`], or on `socket` with a
    /// failure of kind [`OpKind::Accept`]. The machine chooses the id, so it also chooses how many
    /// connections it is willing to hold: one outstanding `Accept` per free slot.
    Accept {
        /// The listening socket.
        listener: SocketId,
        /// The handle the machine will use for the accepted stream.
        socket: SocketId,
    },
    /// Set the IP TTL (hop limit) of outgoing packets.
    SetTtl {
        /// The socket.
        socket: SocketId,
        /// The TTL.
        ttl: u8,
    },
    /// Shut down the sending half of a connected TCP stream (`shutdown(SHUT_WR)`), after every
    /// byte already handed over in transmits on it is written: the peer then reads EOF
    /// ([`SocketOutcome::PeerClosed`]) while this side keeps receiving (bytes, and the peer's own
    /// EOF). Nothing answers success; a transmit on the socket afterwards fails with
    /// [`SocketOutcome::Failed`] of kind [`OpKind::Send`] ([`IoError::BrokenPipe`]), and a stream
    /// that cannot be shut down (not connected: [`IoError::NotConnected`]; reset) answers a failure
    /// of kind [`OpKind::Shutdown`]. A second `Shutdown`
    /// does nothing. The socket stays the machine's: it still emits [`SocketOp::Close`] for it.
    Shutdown {
        /// The socket.
        socket: SocketId,
    },
    /// Close the socket. The machine emits this exactly once per socket it opened. Bytes of a
    /// stream handed over before a [`SocketOp::Shutdown`] are still delivered after the close
    /// (the runtime keeps writing them, then sends the FIN, as a kernel does; the mio runtime
    /// for at most `LINGER`); a stream closed without a shutdown may lose what the runtime still
    /// holds.
    Close {
        /// The socket.
        socket: SocketId,
    },
}

impl SocketOp {
    /// The socket this intent is about.
    pub fn socket(&self) -> SocketId {
        match *self {
            SocketOp::Bind { socket, .. }
            | SocketOp::Connect { socket, .. }
            | SocketOp::Listen { socket, .. }
            | SocketOp::Accept { socket, .. }
            | SocketOp::SetTtl { socket, .. }
            | SocketOp::Shutdown { socket }
            | SocketOp::Close { socket } => socket,
        }
    }
}

/// Which kind of operation failed, in a [`SocketOutcome::Failed`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// A bind intent.
    Bind,
    /// A connect intent.
    Connect,
    /// A listen intent.
    Listen,
    /// An accept intent.
    Accept,
    /// A TTL change.
    SetTtl,
    /// Sending a transmit.
    Send,
    /// Shutting down a stream's sending half ([`SocketOp::Shutdown`]).
    Shutdown,
    /// Receiving.
    Receive,
}

/// The operation in words: `bind`, `connect`, `listen`, `accept`, `set-ttl`, `send`, `shutdown`,
/// `receive`.
impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            OpKind::Bind => "bind",
            OpKind::Connect => "connect",
            OpKind::Listen => "listen",
            OpKind::Accept => "accept",
            OpKind::SetTtl => "set-ttl",
            OpKind::Send => "send",
            OpKind::Shutdown => "shutdown",
            OpKind::Receive => "receive",
        })
    }
}

/// An I/O error, reduced to what a protocol machine can act on.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IoError {
    /// The address is in use.
    AddrInUse,
    /// The address is not local.
    AddrNotAvailable,
    /// Not allowed (privileged port, missing capability for `SO_BINDTODEVICE`...).
    PermissionDenied,
    /// The peer refused (TCP RST, or ICMP port unreachable on a connected UDP socket).
    ConnectionRefused,
    /// The connection was reset.
    ConnectionReset,
    /// No route to the host.
    HostUnreachable,
    /// No route to the network.
    NetworkUnreachable,
    /// The operation timed out in the kernel.
    TimedOut,
    /// The datagram is larger than the path allows.
    MessageTooLong,
    /// The socket's send buffer is full; the datagram (or stream transmit) was not taken. For a
    /// stream, [`SocketOutcome::Writable`] follows once it can take bytes again.
    WouldBlock,
    /// The interface does not exist.
    NoSuchDevice,
    /// The runtime has no socket with this id.
    UnknownSocket,
    /// The socket is not a connected stream: a transmit or [`SocketOp::Shutdown`] on a TCP socket
    /// that is only bound, listening or still connecting (`ENOTCONN`).
    NotConnected,
    /// The stream's sending half is shut down: a transmit after [`SocketOp::Shutdown`] (`EPIPE`).
    BrokenPipe,
    /// Anything else, with the raw OS error code if there was one.
    Other(Option<i32>),
}

/// The error in words, as the OS says it (`address in use`, `connection refused`, ...).
impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoError::AddrInUse => f.write_str("address in use"),
            IoError::AddrNotAvailable => f.write_str("address not available"),
            IoError::PermissionDenied => f.write_str("permission denied"),
            IoError::ConnectionRefused => f.write_str("connection refused"),
            IoError::ConnectionReset => f.write_str("connection reset"),
            IoError::HostUnreachable => f.write_str("host unreachable"),
            IoError::NetworkUnreachable => f.write_str("network unreachable"),
            IoError::TimedOut => f.write_str("timed out"),
            IoError::MessageTooLong => f.write_str("message too long"),
            IoError::WouldBlock => f.write_str("send buffer full"),
            IoError::NoSuchDevice => f.write_str("no such device"),
            IoError::UnknownSocket => f.write_str("no such socket in the runtime"),
            IoError::NotConnected => f.write_str("not connected"),
            IoError::BrokenPipe => f.write_str("broken pipe (sending side shut down)"),
            IoError::Other(Some(code)) => write!(f, "OS error {code}"),
            IoError::Other(None) => f.write_str("I/O error"),
        }
    }
}

impl std::error::Error for IoError {}

/// The runtime's answer to a [`SocketOp`] or an asynchronous socket error.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SocketOutcome {
    /// A bind succeeded; `local` is the real address (port 0 resolved).
    Bound {
        /// The bound local address.
        local: SocketAddr,
    },
    /// A TCP connect completed.
    Connected {
        /// The local address of the connection.
        local: SocketAddr,
        /// The remote address.
        remote: SocketAddr,
    },
    /// An accept intent completed: the socket is a connected TCP stream.
    Accepted {
        /// The local address of the connection.
        local: SocketAddr,
        /// The remote address.
        remote: SocketAddr,
    },
    /// The peer closed a TCP stream (EOF).
    PeerClosed,
    /// A stream that refused a transmit (a [`SocketOutcome::Failed`] of kind [`OpKind::Send`]
    /// with [`IoError::WouldBlock`]) can take bytes again. After such a refusal the runtime
    /// refuses every further transmit on the stream until it reports `Writable` (so the refused
    /// transmits are always the last ones handed over), and it reports `Writable` once, when its
    /// buffer for the stream has room for more than a full transmit buffer's worth. Machines
    /// that never send more than they can afford to have refused may ignore it.
    Writable,
    /// An operation failed.
    Failed {
        /// What was being done.
        op: OpKind,
        /// The destination, for a failed send.
        destination: Option<SocketAddr>,
        /// Why.
        error: IoError,
    },
}

/// Describes one datagram (or stream chunk) the machine wrote into the caller's buffer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    /// The socket to send from.
    pub socket: SocketId,
    /// The destination (ignored by the runtime for connected TCP streams).
    pub destination: SocketAddr,
    /// How many bytes of the caller's buffer hold the payload.
    pub len: usize,
}

/// The size of buffer a caller should pass to `poll_transmit`; every machine's transmits fit in it.
pub const TRANSMIT_BUFFER_LEN: usize = 1500;

/// Why a machine dropped an input.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The bytes are not a well-formed message; the decoder said why.
    Malformed(crate::stun::DecodeError),
    /// A well-formed message of a kind this machine does not accept here (wrong class or method).
    Unexpected,
    /// A response whose transaction id matches no live transaction.
    UnknownTransaction,
    /// A response from a source address other than the one expected.
    WrongSource,
    /// A response on a different socket than its request was sent from.
    WrongSocket,
    /// A duplicate of something already handled.
    Duplicate,
    /// The input arrived on a socket the machine does not own.
    UnknownSocket,
    /// The machine's bounded queue is full.
    QueueFull,
    /// The machine is closed.
    Closed,
}

/// What a machine did with a datagram.
///
/// Machines can share a socket: the first that does not answer [`Verdict::NotMine`] owns the datagram.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub enum Verdict {
    /// The machine used it.
    Consumed,
    /// Not a message for this machine (for example not STUN at all); offer it to another.
    NotMine,
    /// It was for this machine but was rejected and counted.
    Dropped(DropReason),
}

/// The contract every protocol machine follows, so the runtime, the simulator, fuzz targets and
/// users' own loops can drive any of them. Each machine implements it directly (there is no second,
/// inherent copy of these methods): import the trait to call them.
///
/// # Driving
///
/// After every `handle_*` call or command, drain the outputs in this order until each is empty:
/// `poll_transmit`, `poll_socket_op`, `poll_event`; then read `poll_timeout`. [`drain`] does this.
///
/// # Invariants
///
/// Every machine keeps these, and [`crate::testing::ContractChecker`] (feature `testing`) checks
/// them in unit tests, the simulator and every fuzz target:
///
/// 1. **Monotonic time.** The caller passes a `now` that never goes backwards across calls.
/// 2. **Timeouts make progress.** After `handle_timeout(now)` and a full drain, `poll_timeout` is
///    `None` or later than `now` (a machine never asks to be woken again for the same instant,
///    so a loop cannot spin).
/// 3. **One close per socket.** A [`SocketOp::Close`] names a socket the machine opened (by a
///    `Bind` or an `Accept` intent) and is emitted exactly once for it; no other intent or
///    transmit names that socket afterwards, unless a new `Bind`/`Accept` reuses the id. The runtime
///    holds no socket after a `Bind` answered with a failure before it was bound (the machine
///    may close it once or not at all) nor after an `Accept` that failed before it completed (the
///    machine does not close it). A machine that hands a socket to its caller (the puncher's
///    winning stream) stops owning it: it never names it again.
/// 4. **Nothing after the end.** A machine that reports a final event (its `Closed`, `Finished`
///    or equivalent) emits nothing after it: no transmit, no intent, no event, no deadline. The
///    one exception is forced on it by the runtime: a stream `Accepted` after the end (for an
///    `Accept` still outstanding when it closed) gets its `Close`.
/// 5. **Bad input is a verdict, never a panic.** Input that is malformed, unexpected, on an
///    unknown socket or after close is answered with [`Verdict::Dropped`] or [`Verdict::NotMine`]
///    (or ignored, for socket outcomes), and counted.
pub trait Machine {
    /// What the machine reports.
    type Event;

    /// A datagram arrived on `socket` from `from`. Stream-only machines keep the default, which
    /// answers [`Verdict::NotMine`].
    fn handle_datagram(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        data: &[u8],
    ) -> Verdict {
        let _ = (now, socket, from, data);
        Verdict::NotMine
    }

    /// Bytes arrived on a connected TCP stream. Datagram-only machines keep the default, which
    /// answers [`Verdict::NotMine`].
    fn handle_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        let _ = (now, socket, data);
        Verdict::NotMine
    }

    /// The outcome of a socket intent, or an asynchronous socket error.
    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome);

    /// Time has reached (or passed) the deadline from `poll_timeout`.
    fn handle_timeout(&mut self, now: Instant);

    /// Writes the next datagram into `buf` (at least [`TRANSMIT_BUFFER_LEN`] bytes).
    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit>;

    /// The next socket intent.
    fn poll_socket_op(&mut self) -> Option<SocketOp>;

    /// The next event.
    fn poll_event(&mut self) -> Option<Self::Event>;

    /// The next deadline, if any. O(1).
    fn poll_timeout(&self) -> Option<Instant>;
}

/// Where [`drain`] delivers a machine's outputs: the runtime's sockets, the simulator's network, or a
/// test's vectors.
pub trait Outputs<M: Machine + ?Sized> {
    /// Send `bytes` as described by `transmit`.
    fn transmit(&mut self, transmit: Transmit, bytes: &[u8]);
    /// Carry out a socket intent. Its outcome, if it is known at once, may be handed back through
    /// [`Outputs::outcome`].
    fn socket_op(&mut self, op: SocketOp);
    /// Deliver an event. The machine is lent so the receiver can issue commands on it at once
    /// (they are drained in the same call); `Break` stops the drain, leaving the machine's other
    /// outputs queued in it for the next drain.
    fn event(&mut self, machine: &mut M, event: M::Event) -> ControlFlow<()>;
    /// The next socket outcome to hand the machine (for example a send that failed, or a bind
    /// that completed), with the time to hand it at. The default has none.
    fn outcome(&mut self) -> Option<(Instant, SocketId, SocketOutcome)> {
        None
    }
    /// Called when a pass over the machine produced nothing. Answer `true` if finishing pending
    /// work (flushing batched sends, say) produced new outcomes, so the drain runs another pass.
    fn settle(&mut self) -> bool {
        false
    }
}

/// Drains every output of `machine` into `outputs`, in the contract's order (transmits, socket
/// intents, events, then the outcomes `outputs` hands back), until a pass produces nothing; then
/// returns the machine's next deadline. `buf` is scratch space for transmits (at least
/// [`TRANSMIT_BUFFER_LEN`] bytes). Returns `Break` as soon as [`Outputs::event`] does.
pub fn drain<M, O>(
    machine: &mut M,
    buf: &mut [u8],
    outputs: &mut O,
) -> ControlFlow<(), Option<Instant>>
where
    M: Machine + ?Sized,
    O: Outputs<M> + ?Sized,
{
    loop {
        let mut progressed = false;
        while let Some(t) = machine.poll_transmit(buf) {
            progressed = true;
            let bytes = buf.get(..t.len).unwrap_or(&[]);
            outputs.transmit(t, bytes);
        }
        while let Some(op) = machine.poll_socket_op() {
            progressed = true;
            outputs.socket_op(op);
        }
        while let Some(ev) = machine.poll_event() {
            progressed = true;
            outputs.event(machine, ev)?;
        }
        while let Some((now, socket, outcome)) = outputs.outcome() {
            progressed = true;
            machine.handle_socket_result(now, socket, outcome);
        }
        if !progressed && !outputs.settle() {
            return ControlFlow::Continue(machine.poll_timeout());
        }
    }
}

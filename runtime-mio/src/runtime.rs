//! The event loop: a socket table, the machine's timer, and the drain loop.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};
use p2pd_proto::{
    BindOptions, Instant, IoError, Machine, OpKind, SocketId, SocketOp, SocketOutcome, Transmit,
    Transport, Verdict,
};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::device::bind_to_device;
use crate::error::map_io_error;

/// Size of the receive buffer (and of the transmit scratch buffer): the largest UDP payload.
pub const RECV_BUFFER_LEN: usize = 65_536;

/// How many datagrams one socket may deliver per wake-up before the loop looks at timers and other
/// sockets again (the rest is read on the next turn, without waiting).
const MAX_READS_PER_WAKEUP: usize = 256;

/// Consecutive receive errors on one socket after which the loop stops reading it until it is
/// readable again (guards against an error that does not clear).
const MAX_RECV_ERRORS_PER_WAKEUP: usize = 16;

/// Cap on socket outcomes waiting to be reported to the machine; beyond it they are counted in
/// [`RuntimeStats::reports_dropped`].
const MAX_PENDING_REPORTS: usize = 4096;

/// Capacity of the mio event buffer.
const EVENTS_CAPACITY: usize = 256;

/// Counters kept by a [`Runtime`], for logs and soak tests.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuntimeStats {
    /// Datagrams received and handed to the machine.
    pub datagrams_received: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Transmits that failed (reported to the machine as `Failed { op: Send, .. }`).
    pub send_errors: u64,
    /// Receive errors, such as ICMP port unreachable (reported as `Failed { op: Receive, .. }`).
    pub receive_errors: u64,
    /// Datagrams the machine answered [`Verdict::Consumed`].
    pub verdict_consumed: u64,
    /// Datagrams the machine answered [`Verdict::NotMine`].
    pub verdict_not_mine: u64,
    /// Datagrams the machine answered [`Verdict::Dropped`].
    pub verdict_dropped: u64,
    /// Calls to `handle_timeout`.
    pub timeouts: u64,
    /// Sockets opened (successful bind intents).
    pub sockets_opened: u64,
    /// Sockets closed.
    pub sockets_closed: u64,
    /// Socket intents that failed (bind, TTL, unsupported operations).
    pub op_failures: u64,
    /// Socket outcomes dropped because too many were waiting to be reported.
    pub reports_dropped: u64,
    /// Times the loop returned from waiting on the OS.
    pub wakeups: u64,
}

/// Why [`Runtime::run`] returned.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum RunEnd {
    /// The event callback answered [`ControlFlow::Break`].
    Break,
    /// The time limit passed to `run` was reached.
    TimeLimit,
    /// The machine is idle: it has no open sockets, no deadline and nothing left to report.
    Idle,
}

/// A socket the runtime owns, by kind. TCP kinds (bound, connecting, stream, listener) slot in here.
enum Kind {
    /// A bound, registered UDP socket.
    Udp(mio::net::UdpSocket),
}

/// One row of the socket table.
struct Entry {
    /// The machine's handle.
    id: SocketId,
    /// The real local address.
    local: SocketAddr,
    /// The socket.
    kind: Kind,
}

/// How reading one socket ended.
enum ReadEnd {
    /// Read until `WouldBlock` (or the socket is gone).
    Done,
    /// Stopped early; more may be waiting.
    More,
    /// The event callback asked to stop; more may be waiting.
    Break,
}

/// A single-threaded mio event loop that drives any [`Machine`] on real sockets.
///
/// The runtime carries out the machine's socket intents (bind with reuse flags and interface
/// binding, TTL, close), sends its transmits, feeds it received datagrams and timeouts, and hands
/// its events to a callback. Socket ids are the machine's, so drive one machine (or machines
/// sharing one id space) per runtime.
///
/// Every failure on the network side is reported to the machine as a
/// [`SocketOutcome::Failed`], never as a panic or an error return; `run` returns `Err` only when
/// waiting on the OS itself fails.
pub struct Runtime {
    poll: Poll,
    events: Events,
    epoch: std::time::Instant,
    /// The socket table; the slot index is the mio token.
    slots: Vec<Option<Entry>>,
    /// Free slot indices.
    free: Vec<usize>,
    /// Machine handle -> slot index.
    ids: HashMap<SocketId, usize>,
    /// Slots to read this turn.
    ready: Vec<usize>,
    /// Slots that may still hold data from an earlier turn.
    carry: Vec<usize>,
    /// Socket outcomes to report after the current drain.
    pending: VecDeque<(SocketId, SocketOutcome)>,
    recv_buf: Box<[u8]>,
    tx_buf: Box<[u8]>,
    stats: RuntimeStats,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("open_sockets", &self.ids.len())
            .field("pending_reports", &self.pending.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// A runtime with no sockets. Its time epoch (proto `Instant::ZERO`) is the moment of creation.
    pub fn new() -> io::Result<Runtime> {
        Ok(Runtime {
            poll: Poll::new()?,
            events: Events::with_capacity(EVENTS_CAPACITY),
            epoch: std::time::Instant::now(),
            slots: Vec::new(),
            free: Vec::new(),
            ids: HashMap::new(),
            ready: Vec::with_capacity(EVENTS_CAPACITY),
            carry: Vec::new(),
            pending: VecDeque::new(),
            recv_buf: vec![0u8; RECV_BUFFER_LEN].into_boxed_slice(),
            tx_buf: vec![0u8; RECV_BUFFER_LEN].into_boxed_slice(),
            stats: RuntimeStats::default(),
        })
    }

    /// The current time as a proto [`Instant`] (nanoseconds since the runtime was created).
    pub fn now(&self) -> Instant {
        self.to_proto(std::time::Instant::now())
    }

    /// Converts a `std::time::Instant` to a proto [`Instant`]; times before the epoch become
    /// [`Instant::ZERO`].
    pub fn to_proto(&self, t: std::time::Instant) -> Instant {
        let nanos = t.saturating_duration_since(self.epoch).as_nanos();
        Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Converts a proto [`Instant`] back to a `std::time::Instant`. Instants too far in the future
    /// for the platform's clock saturate to a point decades away.
    pub fn to_std(&self, t: Instant) -> std::time::Instant {
        const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        let d = Duration::from_nanos(t.as_nanos());
        self.epoch
            .checked_add(d)
            .or_else(|| self.epoch.checked_add(FAR))
            .unwrap_or(self.epoch)
    }

    /// How many sockets are open.
    pub fn open_sockets(&self) -> usize {
        self.ids.len()
    }

    /// The counters.
    pub fn stats(&self) -> RuntimeStats {
        self.stats
    }

    /// The real local address of the machine's socket `id`, if it is open.
    pub fn local_addr(&self, id: SocketId) -> Option<SocketAddr> {
        self.entry(id).map(|e| e.local)
    }

    /// Drains the machine once, now: sends its transmits, carries out its socket intents, hands
    /// its events to `on_event`, reports socket outcomes, and repeats until nothing is left.
    ///
    /// Call it after issuing a command outside [`Runtime::run`] (`run` also drains first thing).
    /// Returns `Break` as soon as `on_event` does; the machine's remaining outputs stay queued in
    /// it, and undelivered socket outcomes in the runtime, for the next `drive` or `run`.
    pub fn drive<M: Machine>(
        &mut self,
        machine: &mut M,
        mut on_event: impl FnMut(&mut M, Instant, M::Event) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        self.drain(machine, &mut on_event)
    }

    /// Runs the loop until `on_event` answers `Break`, `limit` (measured from the call) passes, or
    /// the machine is idle (no open sockets, no deadline). See [`RunEnd`].
    ///
    /// The machine is drained first, after every datagram, socket outcome, timeout and event, so
    /// commands the callback issues on `&mut M` take effect at once. `handle_timeout` is called
    /// only once the machine's deadline has passed; between events the loop sleeps in the OS.
    ///
    /// Returns `Err` only if waiting on the OS fails; network errors go to the machine.
    pub fn run<M: Machine>(
        &mut self,
        machine: &mut M,
        limit: Option<Duration>,
        mut on_event: impl FnMut(&mut M, Instant, M::Event) -> ControlFlow<()>,
    ) -> io::Result<RunEnd> {
        let end = limit.and_then(|d| std::time::Instant::now().checked_add(d));
        if self.drain(machine, &mut on_event).is_break() {
            return Ok(RunEnd::Break);
        }
        loop {
            let now = self.now();
            let deadline = machine.poll_timeout();
            if let Some(deadline) = deadline {
                if now >= deadline {
                    self.stats.timeouts = self.stats.timeouts.saturating_add(1);
                    machine.handle_timeout(now);
                    if self.drain(machine, &mut on_event).is_break() {
                        return Ok(RunEnd::Break);
                    }
                    continue;
                }
            }
            let wall = std::time::Instant::now();
            if end.is_some_and(|end| wall >= end) {
                return Ok(RunEnd::TimeLimit);
            }
            let backlog = !self.carry.is_empty() || !self.pending.is_empty();
            if self.ids.is_empty() && deadline.is_none() && !backlog {
                return Ok(RunEnd::Idle);
            }

            let mut timeout = deadline.map(|d| ceil_millis(d.saturating_duration_since(now)));
            if let Some(end) = end {
                let left = end.saturating_duration_since(wall);
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            if backlog {
                timeout = Some(Duration::ZERO);
            }
            match self.poll.poll(&mut self.events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.stats.wakeups = self.stats.wakeups.saturating_add(1);

            self.ready.clear();
            for event in self.events.iter() {
                let Token(idx) = event.token();
                if !self.ready.contains(&idx) {
                    self.ready.push(idx);
                }
            }
            for idx in std::mem::take(&mut self.carry) {
                if !self.ready.contains(&idx) {
                    self.ready.push(idx);
                }
            }
            // Outcomes left over from a `Break` are delivered before new input.
            if !self.pending.is_empty() && self.drain(machine, &mut on_event).is_break() {
                let ready = std::mem::take(&mut self.ready);
                self.carry.extend_from_slice(&ready);
                self.ready = ready;
                return Ok(RunEnd::Break);
            }

            let mut i = 0;
            while let Some(&idx) = self.ready.get(i) {
                i = i.saturating_add(1);
                match self.read_socket(machine, idx, &mut on_event) {
                    ReadEnd::Done => {}
                    ReadEnd::More => self.carry.push(idx),
                    ReadEnd::Break => {
                        let rest = std::mem::take(&mut self.ready);
                        self.carry.push(idx);
                        self.carry.extend_from_slice(rest.get(i..).unwrap_or(&[]));
                        self.ready = rest;
                        return Ok(RunEnd::Break);
                    }
                }
            }
        }
    }

    /// Reads datagrams from slot `idx` until `WouldBlock`, handing each to the machine and
    /// draining after each.
    fn read_socket<M, F>(&mut self, machine: &mut M, idx: usize, on_event: &mut F) -> ReadEnd
    where
        M: Machine,
        F: FnMut(&mut M, Instant, M::Event) -> ControlFlow<()>,
    {
        let mut reads = 0usize;
        let mut errors = 0usize;
        loop {
            // The socket may have been closed (or its slot reused) by the last drain.
            let Some(Some(entry)) = self.slots.get(idx) else {
                return ReadEnd::Done;
            };
            let id = entry.id;
            let result = match &entry.kind {
                Kind::Udp(sock) => sock.recv_from(&mut self.recv_buf),
            };
            match result {
                Ok((n, from)) => {
                    errors = 0;
                    self.stats.datagrams_received = self.stats.datagrams_received.saturating_add(1);
                    self.stats.bytes_received = self
                        .stats
                        .bytes_received
                        .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
                    let now = self.now();
                    let data = self.recv_buf.get(..n).unwrap_or(&[]);
                    match machine.handle_datagram(now, id, from, data) {
                        Verdict::Consumed => {
                            self.stats.verdict_consumed =
                                self.stats.verdict_consumed.saturating_add(1)
                        }
                        Verdict::NotMine => {
                            self.stats.verdict_not_mine =
                                self.stats.verdict_not_mine.saturating_add(1)
                        }
                        Verdict::Dropped(_) => {
                            self.stats.verdict_dropped =
                                self.stats.verdict_dropped.saturating_add(1)
                        }
                    }
                    if self.drain(machine, on_event).is_break() {
                        return ReadEnd::Break;
                    }
                    reads = reads.saturating_add(1);
                    if reads >= MAX_READS_PER_WAKEUP {
                        return ReadEnd::More;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadEnd::Done,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // For example ECONNREFUSED from an ICMP port unreachable: report, keep reading.
                    self.stats.receive_errors = self.stats.receive_errors.saturating_add(1);
                    let now = self.now();
                    let outcome = SocketOutcome::Failed {
                        op: OpKind::Receive,
                        destination: None,
                        error: map_io_error(&e),
                    };
                    machine.handle_socket_result(now, id, outcome);
                    if self.drain(machine, on_event).is_break() {
                        return ReadEnd::Break;
                    }
                    errors = errors.saturating_add(1);
                    if errors >= MAX_RECV_ERRORS_PER_WAKEUP {
                        return ReadEnd::Done;
                    }
                }
            }
        }
    }

    /// The drain loop: transmits, socket intents, events, then queued socket outcomes, until a pass
    /// produces nothing.
    fn drain<M, F>(&mut self, machine: &mut M, on_event: &mut F) -> ControlFlow<()>
    where
        M: Machine,
        F: FnMut(&mut M, Instant, M::Event) -> ControlFlow<()>,
    {
        loop {
            let mut progressed = false;
            while let Some(t) = machine.poll_transmit(&mut self.tx_buf) {
                progressed = true;
                self.send(t);
            }
            while let Some(op) = machine.poll_socket_op() {
                progressed = true;
                self.apply(op);
            }
            while let Some(ev) = machine.poll_event() {
                progressed = true;
                let now = self.now();
                if on_event(machine, now, ev).is_break() {
                    return ControlFlow::Break(());
                }
            }
            while let Some((id, outcome)) = self.pending.pop_front() {
                progressed = true;
                let now = self.now();
                machine.handle_socket_result(now, id, outcome);
            }
            if !progressed {
                return ControlFlow::Continue(());
            }
        }
    }

    /// Sends one transmit from `tx_buf`; failures are queued for the machine.
    fn send(&mut self, t: Transmit) {
        let destination = t.destination;
        let result = match self.tx_buf.get(..t.len) {
            None => Err(IoError::MessageTooLong),
            Some(bytes) => match self.ids.get(&t.socket).and_then(|&i| self.slots.get(i)) {
                Some(Some(entry)) => match &entry.kind {
                    Kind::Udp(sock) => send_to(sock, bytes, destination),
                },
                _ => Err(IoError::UnknownSocket),
            },
        };
        match result {
            Ok(n) => {
                self.stats.datagrams_sent = self.stats.datagrams_sent.saturating_add(1);
                self.stats.bytes_sent = self
                    .stats
                    .bytes_sent
                    .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
            }
            Err(error) => {
                self.stats.send_errors = self.stats.send_errors.saturating_add(1);
                let outcome = SocketOutcome::Failed {
                    op: OpKind::Send,
                    destination: Some(destination),
                    error,
                };
                self.report(t.socket, outcome);
            }
        }
    }

    /// Carries out one socket intent; outcomes are queued for the machine.
    fn apply(&mut self, op: SocketOp) {
        match op {
            SocketOp::Bind {
                socket,
                transport,
                local,
                options,
            } => match self.bind(socket, transport, local, options) {
                Ok(local) => self.report(socket, SocketOutcome::Bound { local }),
                Err(error) => self.fail(socket, OpKind::Bind, error),
            },
            SocketOp::SetTtl { socket, ttl } => {
                if let Err(error) = self.set_ttl(socket, ttl) {
                    self.fail(socket, OpKind::SetTtl, error);
                }
            }
            SocketOp::Close { socket } => self.close(socket),
            SocketOp::Connect { socket, .. } => {
                let error = self.unsupported(socket);
                self.fail(socket, OpKind::Connect, error);
            }
            SocketOp::Listen { socket, .. } => {
                let error = self.unsupported(socket);
                self.fail(socket, OpKind::Listen, error);
            }
            // An intent this runtime does not know yet: nothing sensible to report it as.
            _ => {
                self.stats.op_failures = self.stats.op_failures.saturating_add(1);
            }
        }
    }

    /// The error for an operation this runtime does not support on `socket` (yet).
    fn unsupported(&self, socket: SocketId) -> IoError {
        if self.ids.contains_key(&socket) {
            IoError::Other(None)
        } else {
            IoError::UnknownSocket
        }
    }

    /// Queues a failed intent.
    fn fail(&mut self, socket: SocketId, op: OpKind, error: IoError) {
        self.stats.op_failures = self.stats.op_failures.saturating_add(1);
        let outcome = SocketOutcome::Failed {
            op,
            destination: None,
            error,
        };
        self.report(socket, outcome);
    }

    /// Queues an outcome for the machine, within [`MAX_PENDING_REPORTS`].
    fn report(&mut self, socket: SocketId, outcome: SocketOutcome) {
        if self.pending.len() >= MAX_PENDING_REPORTS {
            self.stats.reports_dropped = self.stats.reports_dropped.saturating_add(1);
        } else {
            self.pending.push_back((socket, outcome));
        }
    }

    /// Creates, configures, binds and registers a socket for `id`; returns its real local address.
    fn bind(
        &mut self,
        id: SocketId,
        transport: Transport,
        local: SocketAddr,
        options: BindOptions,
    ) -> Result<SocketAddr, IoError> {
        if self.ids.contains_key(&id) {
            // API misuse: the id is taken. The open socket is left alone.
            return Err(IoError::Other(None));
        }
        let (mut kind, local) = match transport {
            Transport::Udp => {
                let (sock, local) = open_udp(local, &options)?;
                (Kind::Udp(sock), local)
            }
            Transport::Tcp => return Err(IoError::Other(None)),
        };
        let idx = self.free.pop().unwrap_or(self.slots.len());
        let registered = match &mut kind {
            Kind::Udp(sock) => self
                .poll
                .registry()
                .register(sock, Token(idx), Interest::READABLE),
        };
        if let Err(e) = registered {
            if idx < self.slots.len() {
                self.free.push(idx);
            }
            return Err(map_io_error(&e));
        }
        let entry = Entry { id, local, kind };
        match self.slots.get_mut(idx) {
            Some(slot) => *slot = Some(entry),
            None => self.slots.push(Some(entry)),
        }
        self.ids.insert(id, idx);
        self.stats.sockets_opened = self.stats.sockets_opened.saturating_add(1);
        Ok(local)
    }

    /// Sets the TTL (IPv4) or unicast hop limit (IPv6) of socket `id`.
    fn set_ttl(&mut self, id: SocketId, ttl: u8) -> Result<(), IoError> {
        let entry = self.entry(id).ok_or(IoError::UnknownSocket)?;
        let sock = match &entry.kind {
            Kind::Udp(sock) => SockRef::from(sock),
        };
        let result = if entry.local.is_ipv4() {
            sock.set_ttl_v4(u32::from(ttl))
        } else {
            sock.set_unicast_hops_v6(u32::from(ttl))
        };
        result.map_err(|e| map_io_error(&e))
    }

    /// Deregisters and drops socket `id`; unknown ids are ignored.
    fn close(&mut self, id: SocketId) {
        let Some(idx) = self.ids.remove(&id) else {
            return;
        };
        if let Some(mut entry) = self.slots.get_mut(idx).and_then(Option::take) {
            match &mut entry.kind {
                Kind::Udp(sock) => {
                    let _ = self.poll.registry().deregister(sock);
                }
            }
            self.stats.sockets_closed = self.stats.sockets_closed.saturating_add(1);
        }
        self.free.push(idx);
    }

    /// The table entry for `id`.
    fn entry(&self, id: SocketId) -> Option<&Entry> {
        let idx = *self.ids.get(&id)?;
        self.slots.get(idx)?.as_ref()
    }
}

/// Rounds `d` up to whole milliseconds, so the OS never wakes the loop before a deadline.
fn ceil_millis(d: Duration) -> Duration {
    let ms = d.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// `send_to`, retried on `EINTR`.
fn send_to(sock: &mio::net::UdpSocket, bytes: &[u8], to: SocketAddr) -> Result<usize, IoError> {
    loop {
        match sock.send_to(bytes, to) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(map_io_error(&e)),
        }
    }
}

/// Creates a non-blocking UDP socket with `options` applied, bound to `local`.
fn open_udp(
    local: SocketAddr,
    options: &BindOptions,
) -> Result<(mio::net::UdpSocket, SocketAddr), IoError> {
    let io = |e: io::Error| map_io_error(&e);
    let socket =
        Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP)).map_err(io)?;
    if local.is_ipv6() {
        // IPv6 sockets carry IPv6 only, the same on every platform; machines bind IPv4 separately.
        socket.set_only_v6(true).map_err(io)?;
    }
    apply_options(&socket, local, options)?;
    socket.set_nonblocking(true).map_err(io)?;
    socket.bind(&local.into()).map_err(io)?;
    let std_socket = std::net::UdpSocket::from(socket);
    let bound = std_socket.local_addr().map_err(io)?;
    Ok((mio::net::UdpSocket::from_std(std_socket), bound))
}

/// Applies reuse flags and interface binding; must run before `bind`.
fn apply_options(socket: &Socket, local: SocketAddr, options: &BindOptions) -> Result<(), IoError> {
    let io = |e: io::Error| map_io_error(&e);
    if options.reuse_address {
        socket.set_reuse_address(true).map_err(io)?;
    }
    if options.reuse_port {
        set_reuse_port(socket).map_err(io)?;
    }
    if let Some(device) = &options.device {
        bind_to_device(socket, device, local.is_ipv6()).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                IoError::NoSuchDevice
            } else {
                map_io_error(&e)
            }
        })?;
    }
    Ok(())
}

/// Sets `SO_REUSEPORT`.
#[cfg(all(
    unix,
    not(any(
        target_os = "solaris",
        target_os = "illumos",
        target_os = "cygwin",
        target_os = "nuttx"
    ))
))]
fn set_reuse_port(socket: &Socket) -> io::Result<()> {
    socket.set_reuse_port(true)
}

/// Windows has no `SO_REUSEPORT`; its `SO_REUSEADDR` already lets sockets share a port.
#[cfg(windows)]
fn set_reuse_port(socket: &Socket) -> io::Result<()> {
    socket.set_reuse_address(true)
}

/// `SO_REUSEPORT` is not available on this platform.
#[cfg(not(any(
    windows,
    all(
        unix,
        not(any(
            target_os = "solaris",
            target_os = "illumos",
            target_os = "cygwin",
            target_os = "nuttx"
        ))
    )
)))]
fn set_reuse_port(socket: &Socket) -> io::Result<()> {
    let _ = socket;
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_millis_rounds_up() {
        assert_eq!(ceil_millis(Duration::ZERO), Duration::ZERO);
        assert_eq!(
            ceil_millis(Duration::from_nanos(1)),
            Duration::from_millis(1)
        );
        assert_eq!(
            ceil_millis(Duration::from_micros(1500)),
            Duration::from_millis(2)
        );
        assert_eq!(
            ceil_millis(Duration::from_millis(7)),
            Duration::from_millis(7)
        );
    }

    #[test]
    fn time_round_trips() {
        let rt = Runtime::new().unwrap();
        let t = Instant::from_millis(1234);
        assert_eq!(rt.to_proto(rt.to_std(t)), t);
        assert!(rt.to_std(Instant::MAX) > rt.to_std(t));
        assert!(rt.now() >= Instant::ZERO);
    }
}

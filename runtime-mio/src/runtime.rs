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
use crate::mmsg::{RecvBatch, SendBatch};

/// Size of the receive buffer (and of the transmit scratch buffer): the largest UDP payload.
pub const RECV_BUFFER_LEN: usize = 65_536;

/// How many datagrams one socket may deliver per wake-up before the loop looks at timers and other
/// sockets again (the rest is read on the next turn, without waiting). Checked after each batch of
/// datagrams read in one call, so one more batch may be delivered.
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

/// Cap on bytes waiting to be written to one TCP stream; a transmit that does not fit fails with
/// [`IoError::WouldBlock`] and nothing of it is queued.
pub const MAX_STREAM_BUFFER: usize = 256 * 1024;

/// A socket the runtime owns, by kind.
enum Kind {
    /// A bound, registered UDP socket.
    Udp(mio::net::UdpSocket),
    /// A bound TCP socket, neither connecting nor listening (not registered).
    TcpBound(Socket),
    /// A connecting or connected TCP stream (registered readable and writable).
    TcpStream(Stream),
    /// A listening TCP socket (registered readable) and the ids the machine asked to name its next
    /// accepted connections, oldest first.
    TcpListener(Listener),
}

/// A listening TCP socket and its outstanding accept intents.
struct Listener {
    listener: mio::net::TcpListener,
    /// Ids for the next accepted connections; connections beyond these wait in the kernel's backlog.
    waiting: VecDeque<SocketId>,
}

/// A TCP stream and its state.
struct Stream {
    stream: mio::net::TcpStream,
    remote: SocketAddr,
    /// The connect completed (`Connected` was reported).
    connected: bool,
    /// The connect failed or a read error / EOF was reported: no more reads.
    read_closed: bool,
    /// Bytes accepted from transmits but not yet written (at most [`MAX_STREAM_BUFFER`]).
    out: Vec<u8>,
    /// The machine asked to shut down the sending half ([`SocketOp::Shutdown`]): done once `out`
    /// is written (or at once if it was empty). Transmits fail from then on.
    shutdown: Shutdown,
}

/// Where the sending half of a stream stands.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Shutdown {
    /// Open.
    No,
    /// Asked for; waits for the queued bytes to be written.
    Pending,
    /// Done (or failed and reported).
    Done,
}

/// Where a connecting stream stands.
enum Progress {
    Pending,
    Connected(SocketAddr),
    Failed(IoError),
}

/// One row of the socket table.
struct Entry {
    /// The machine's handle.
    id: SocketId,
    /// Unique per socket the runtime opened (ids and slots are reused, serials are not).
    serial: u64,
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
/// binding, TCP connect and listen, TTL, shutdown of a stream's sending half, close), sends its transmits, feeds it received datagrams and timeouts, and hands
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
    /// Receive buffer for TCP streams.
    recv_buf: Box<[u8]>,
    /// Where the machine writes each transmit.
    tx_buf: Box<[u8]>,
    /// Datagrams read from one UDP socket by one call, and not all handed to the machine yet.
    rx: RecvBatch,
    /// The slot and socket serial `rx` was read from.
    rx_owner: Option<(usize, u64)>,
    /// Datagrams to send from one UDP socket in one call, in the order the machine produced them.
    tx: SendBatch,
    /// The slot and machine id `tx` is for.
    tx_owner: Option<(usize, SocketId)>,
    /// Serial for the next socket opened.
    next_serial: u64,
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
            rx: RecvBatch::new(),
            rx_owner: None,
            tx: SendBatch::new(),
            tx_owner: None,
            next_serial: 0,
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

    /// Unix time in milliseconds at proto [`Instant::ZERO`] (the runtime's creation), read from
    /// the system clock now; machines that stamp messages with wall-clock time take it as their
    /// epoch.
    pub fn unix_epoch_ms(&self) -> u64 {
        let unix_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let since_epoch = self.epoch.elapsed().as_millis();
        u64::try_from(unix_now.saturating_sub(since_epoch)).unwrap_or(u64::MAX)
    }

    /// How many sockets are open.
    pub fn open_sockets(&self) -> usize {
        self.ids.len()
    }

    /// The size of the socket table: open sockets plus free slots kept for reuse. A closed socket's
    /// slot is reused, so this stays at the most sockets ever open at once.
    pub fn slot_capacity(&self) -> usize {
        self.slots.len()
    }

    /// Bytes the machine sent on TCP stream `id` that the runtime holds and has not written to the
    /// OS yet (0 for any other socket). Closing the socket now would drop them: a caller that wants
    /// everything delivered closes once this is 0.
    pub fn unsent(&self, id: SocketId) -> usize {
        match self.entry(id).map(|e| &e.kind) {
            Some(Kind::TcpStream(st)) => st.out.len(),
            _ => 0,
        }
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
    /// the machine is idle (no open sockets, no deadline). See [`RunEnd`]. Every call polls the
    /// sockets at least once, even when `limit` has already passed after the first drain, so
    /// running in short slices never starves the machine of input.
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
        let mut polled = false;
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
            // Past the limit, one last non-blocking pass still reads the sockets, so a caller
            // that runs in short slices while also feeding the machine is never starved of input.
            let last_pass = end.is_some_and(|end| wall >= end);
            if last_pass && polled {
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
            if backlog || last_pass {
                timeout = Some(Duration::ZERO);
            }
            polled = true;
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
            // Popped, not taken, so both vectors keep their capacity (no allocation per turn).
            while let Some(idx) = self.carry.pop() {
                if !self.ready.contains(&idx) {
                    self.ready.push(idx);
                }
            }
            // Datagrams already read but not handed over (the callback stopped a run in the
            // middle of a batch) go first, before any socket is read again.
            if let Some((idx, _)) = self.rx_owner.filter(|_| self.rx.has_pending()) {
                if let Some(pos) = self.ready.iter().position(|&i| i == idx) {
                    self.ready.remove(pos);
                }
                self.ready.insert(0, idx);
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

    /// Services a ready slot: reads a UDP socket, or advances a TCP stream.
    fn read_socket<M, F>(&mut self, machine: &mut M, idx: usize, on_event: &mut F) -> ReadEnd
    where
        M: Machine,
        F: FnMut(&mut M, Instant, M::Event) -> ControlFlow<()>,
    {
        match self.slots.get(idx) {
            Some(Some(Entry {
                kind: Kind::Udp(_), ..
            })) => self.read_udp(machine, idx, on_event),
            Some(Some(Entry {
                kind: Kind::TcpStream(_),
                ..
            })) => self.service_stream(machine, idx, on_event),
            Some(Some(Entry {
                kind: Kind::TcpListener(_),
                ..
            })) => {
                self.accept_waiting(idx);
                match self.drain(machine, on_event) {
                    ControlFlow::Break(()) => ReadEnd::Break,
                    ControlFlow::Continue(()) => ReadEnd::Done,
                }
            }
            _ => ReadEnd::Done,
        }
    }

    /// Reads datagrams from slot `idx` until `WouldBlock`, a batch at a time, handing each to the
    /// machine and draining after each. Transmits produced while a batch is handed over are sent
    /// together once the batch is done.
    fn read_udp<M, F>(&mut self, machine: &mut M, idx: usize, on_event: &mut F) -> ReadEnd
    where
        M: Machine,
        F: FnMut(&mut M, Instant, M::Event) -> ControlFlow<()>,
    {
        let mut reads = 0usize;
        let mut errors = 0usize;
        loop {
            // Datagrams read earlier from this socket (by the last call, or by a run the callback
            // stopped in the middle of a batch).
            if self.rx.has_pending() {
                let Some((owner, serial)) = self.rx_owner else {
                    self.rx.clear();
                    continue;
                };
                if owner != idx {
                    // Not this socket's: `run` hands those over first, so this is not expected.
                    return ReadEnd::More;
                }
                match self.hand_over(machine, idx, serial, on_event) {
                    ControlFlow::Break(_) => return ReadEnd::Break,
                    ControlFlow::Continue(n) => reads = reads.saturating_add(n),
                }
                // The batch is done: send what it produced (and report any send failure).
                if self.drain(machine, on_event).is_break() {
                    return ReadEnd::Break;
                }
                if reads >= MAX_READS_PER_WAKEUP {
                    return ReadEnd::More;
                }
            }
            // The socket may have been closed (or its slot reused) by the last drain.
            let Some(Some(entry)) = self.slots.get(idx) else {
                return ReadEnd::Done;
            };
            let (id, serial) = (entry.id, entry.serial);
            let result = match &entry.kind {
                Kind::Udp(sock) => self.rx.recv(sock),
                _ => return ReadEnd::Done,
            };
            match result {
                Ok(_) => {
                    errors = 0;
                    self.rx_owner = Some((idx, serial));
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

    /// Hands the datagrams waiting in `rx` to the machine, draining after each but deferring the
    /// sends. Stops with `Break` when the callback does (the rest stays in `rx`). Datagrams of a
    /// socket that was closed meanwhile are dropped, as the kernel drops those it still held.
    /// Returns how many datagrams were handed over.
    fn hand_over<M, F>(
        &mut self,
        machine: &mut M,
        idx: usize,
        serial: u64,
        on_event: &mut F,
    ) -> ControlFlow<usize, usize>
    where
        M: Machine,
        F: FnMut(&mut M, Instant, M::Event) -> ControlFlow<()>,
    {
        let mut handed = 0usize;
        loop {
            let id = match self.slots.get(idx) {
                Some(Some(entry)) if entry.serial == serial => entry.id,
                _ => {
                    self.rx.clear();
                    return ControlFlow::Continue(handed);
                }
            };
            let now = self.now();
            let Some((from, data)) = self.rx.pop() else {
                return ControlFlow::Continue(handed);
            };
            let Some(from) = from else {
                // Not an IP sender: nothing the machine could answer.
                continue;
            };
            let n = data.len();
            let verdict = machine.handle_datagram(now, id, from, data);
            handed = handed.saturating_add(1);
            self.stats.datagrams_received = self.stats.datagrams_received.saturating_add(1);
            self.stats.bytes_received = self
                .stats
                .bytes_received
                .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
            self.count_verdict(verdict);
            if self.drain_deferred(machine, on_event).is_break() {
                return ControlFlow::Break(handed);
            }
        }
    }

    /// Advances TCP stream `idx`: completes a connect, flushes queued bytes, reads until
    /// `WouldBlock` (handing each chunk to `handle_stream`), reports EOF as `PeerClosed`.
    fn service_stream<M, F>(&mut self, machine: &mut M, idx: usize, on_event: &mut F) -> ReadEnd
    where
        M: Machine,
        F: FnMut(&mut M, Instant, M::Event) -> ControlFlow<()>,
    {
        // Connection progress.
        let Some(Some(Entry {
            id,
            kind: Kind::TcpStream(st),
            ..
        })) = self.slots.get_mut(idx)
        else {
            return ReadEnd::Done;
        };
        let id = *id;
        if !st.connected {
            if st.read_closed {
                return ReadEnd::Done;
            }
            let outcome = match connect_progress(&st.stream) {
                Progress::Pending => return ReadEnd::Done,
                Progress::Connected(local) => {
                    st.connected = true;
                    SocketOutcome::Connected {
                        local,
                        remote: st.remote,
                    }
                }
                Progress::Failed(error) => {
                    st.read_closed = true;
                    SocketOutcome::Failed {
                        op: OpKind::Connect,
                        destination: Some(st.remote),
                        error,
                    }
                }
            };
            if let SocketOutcome::Failed { .. } = outcome {
                self.stats.op_failures = self.stats.op_failures.saturating_add(1);
            }
            self.report(id, outcome);
            if self.drain(machine, on_event).is_break() {
                return ReadEnd::Break;
            }
        }
        self.flush_stream(idx);

        let mut reads = 0usize;
        loop {
            let Some(Some(Entry {
                id,
                kind: Kind::TcpStream(st),
                ..
            })) = self.slots.get_mut(idx)
            else {
                return ReadEnd::Done;
            };
            let id = *id;
            if !st.connected || st.read_closed {
                return ReadEnd::Done;
            }
            let result = io::Read::read(&mut st.stream, &mut self.recv_buf);
            match result {
                Ok(0) => {
                    st.read_closed = true;
                    self.report(id, SocketOutcome::PeerClosed);
                    return match self.drain(machine, on_event) {
                        ControlFlow::Break(()) => ReadEnd::Break,
                        ControlFlow::Continue(()) => ReadEnd::Done,
                    };
                }
                Ok(n) => {
                    self.stats.bytes_received = self
                        .stats
                        .bytes_received
                        .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
                    let now = self.now();
                    let data = self.recv_buf.get(..n).unwrap_or(&[]);
                    self.count_verdict(machine.handle_stream(now, id, data));
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
                    st.read_closed = true;
                    self.stats.receive_errors = self.stats.receive_errors.saturating_add(1);
                    let outcome = SocketOutcome::Failed {
                        op: OpKind::Receive,
                        destination: None,
                        error: map_io_error(&e),
                    };
                    self.report(id, outcome);
                    return match self.drain(machine, on_event) {
                        ControlFlow::Break(()) => ReadEnd::Break,
                        ControlFlow::Continue(()) => ReadEnd::Done,
                    };
                }
            }
        }
    }

    /// Writes as much of stream `idx`'s queued bytes as the kernel takes; a write error is
    /// reported as a failed send and drops the queue.
    fn flush_stream(&mut self, idx: usize) {
        let Some(Some(Entry {
            id,
            kind: Kind::TcpStream(st),
            ..
        })) = self.slots.get_mut(idx)
        else {
            return;
        };
        let id = *id;
        if !st.connected || st.out.is_empty() {
            return;
        }
        let result = write_some(&mut st.stream, &st.out);
        let written_all = matches!(result, Ok(n) if n >= st.out.len());
        let written = match result {
            Ok(n) => n,
            Err(error) => {
                st.out.clear();
                let destination = Some(st.remote);
                self.stats.send_errors = self.stats.send_errors.saturating_add(1);
                let outcome = SocketOutcome::Failed {
                    op: OpKind::Send,
                    destination,
                    error,
                };
                self.report(id, outcome);
                return;
            }
        };
        st.out.drain(..written.min(st.out.len()));
        self.stats.bytes_sent = self
            .stats
            .bytes_sent
            .saturating_add(u64::try_from(written).unwrap_or(u64::MAX));
        if written_all && st.shutdown == Shutdown::Pending {
            // Everything handed over before the `Shutdown` is written: now the FIN.
            self.shutdown_now(idx);
        }
    }

    /// Carries out [`SocketOp::Shutdown`] on socket `id`: at once if nothing is queued for it,
    /// else once the queue is written ([`Runtime::flush_stream`]).
    fn shutdown(&mut self, id: SocketId) {
        let Some(&idx) = self.ids.get(&id) else {
            self.fail(id, OpKind::Shutdown, IoError::UnknownSocket);
            return;
        };
        let Some(Some(Entry {
            kind: Kind::TcpStream(st),
            ..
        })) = self.slots.get_mut(idx)
        else {
            self.fail(id, OpKind::Shutdown, IoError::Other(Some(NOT_CONNECTED)));
            return;
        };
        if !st.connected {
            self.fail(id, OpKind::Shutdown, IoError::Other(Some(NOT_CONNECTED)));
            return;
        }
        if st.shutdown != Shutdown::No {
            return;
        }
        if st.out.is_empty() {
            self.shutdown_now(idx);
        } else {
            st.shutdown = Shutdown::Pending;
        }
    }

    /// Shuts down the sending half of stream slot `idx` now; a failure is reported.
    fn shutdown_now(&mut self, idx: usize) {
        let Some(Some(Entry {
            id,
            kind: Kind::TcpStream(st),
            ..
        })) = self.slots.get_mut(idx)
        else {
            return;
        };
        let id = *id;
        st.shutdown = Shutdown::Done;
        if let Err(e) = st.stream.shutdown(std::net::Shutdown::Write) {
            self.fail(id, OpKind::Shutdown, map_io_error(&e));
        }
    }

    /// Counts a machine's verdict.
    fn count_verdict(&mut self, verdict: Verdict) {
        let counter = match verdict {
            Verdict::Consumed => &mut self.stats.verdict_consumed,
            Verdict::NotMine => &mut self.stats.verdict_not_mine,
            Verdict::Dropped(_) => &mut self.stats.verdict_dropped,
        };
        *counter = counter.saturating_add(1);
    }

    /// The drain loop: transmits, socket intents, events, then queued socket outcomes, until a pass
    /// produces nothing and every transmit is sent.
    fn drain<M, F>(&mut self, machine: &mut M, on_event: &mut F) -> ControlFlow<()>
    where
        M: Machine,
        F: FnMut(&mut M, Instant, M::Event) -> ControlFlow<()>,
    {
        self.drain_with(machine, on_event, true)
    }

    /// [`Runtime::drain`], except that UDP transmits may be left in the send batch, to go out with
    /// those of the next inputs (the caller drains once more after its last input).
    fn drain_deferred<M, F>(&mut self, machine: &mut M, on_event: &mut F) -> ControlFlow<()>
    where
        M: Machine,
        F: FnMut(&mut M, Instant, M::Event) -> ControlFlow<()>,
    {
        self.drain_with(machine, on_event, false)
    }

    /// The drain loop. Transmits are collected into the send batch, which is sent when it is full,
    /// when a transmit for another socket comes, before a socket intent is carried out or an event
    /// is handed to the callback (so the batch is empty whenever the drain returns `Break`), and at
    /// the end if `flush`. Send failures are queued and reported like any other socket outcome.
    fn drain_with<M, F>(
        &mut self,
        machine: &mut M,
        on_event: &mut F,
        flush: bool,
    ) -> ControlFlow<()>
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
                self.flush_sends();
                self.apply(op);
            }
            while let Some(ev) = machine.poll_event() {
                progressed = true;
                self.flush_sends();
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
                if flush && !self.tx.is_empty() {
                    self.flush_sends();
                    if !self.pending.is_empty() {
                        // Send failures to report.
                        continue;
                    }
                }
                return ControlFlow::Continue(());
            }
        }
    }

    /// Sends the send batch in as few calls as the kernel allows, in order. A datagram the kernel
    /// refuses is reported as a failed send (queued) and the rest are still sent.
    fn flush_sends(&mut self) {
        let Some((idx, socket)) = self.tx_owner.take() else {
            self.tx.clear();
            return;
        };
        let count = self.tx.len();
        let mut i = 0usize;
        while i < count {
            let result = match self.slots.get(idx) {
                Some(Some(Entry {
                    id,
                    kind: Kind::Udp(sock),
                    ..
                })) if *id == socket => self.tx.send(sock, i).map_err(|e| {
                    if e.kind() == io::ErrorKind::Interrupted {
                        None
                    } else {
                        Some(map_io_error(&e))
                    }
                }),
                // Not expected: sockets are closed only after a flush.
                _ => Err(Some(IoError::UnknownSocket)),
            };
            match result {
                Ok(n) => {
                    let sent = i.saturating_add(n).min(count);
                    for j in i..sent {
                        let len = u64::try_from(self.tx.sent_len(j)).unwrap_or(u64::MAX);
                        self.stats.datagrams_sent = self.stats.datagrams_sent.saturating_add(1);
                        self.stats.bytes_sent = self.stats.bytes_sent.saturating_add(len);
                    }
                    i = sent;
                }
                // Interrupted: try the same datagram again.
                Err(None) => {}
                Err(Some(error)) => {
                    self.stats.send_errors = self.stats.send_errors.saturating_add(1);
                    if let Some(destination) = self.tx.destination(i) {
                        let outcome = SocketOutcome::Failed {
                            op: OpKind::Send,
                            destination: Some(destination),
                            error,
                        };
                        self.report(socket, outcome);
                    }
                    i = i.saturating_add(1);
                }
            }
        }
        self.tx.clear();
    }

    /// Sends one transmit from `tx_buf` (a datagram, or bytes on a connected TCP stream); failures
    /// are queued for the machine.
    fn send(&mut self, t: Transmit) {
        let destination = t.destination;
        let idx = self.ids.get(&t.socket).copied();
        // A datagram joins the send batch (sent first if it is full or for another socket).
        let udp = idx.filter(|&i| {
            t.len <= self.tx_buf.len()
                && matches!(
                    self.slots.get(i),
                    Some(Some(Entry {
                        kind: Kind::Udp(_),
                        ..
                    }))
                )
        });
        if let Some(i) = udp {
            if self.tx.is_full() || self.tx_owner.is_some_and(|(owner, _)| owner != i) {
                self.flush_sends();
            }
            self.tx
                .push(self.tx_buf.get(..t.len).unwrap_or_default(), destination);
            self.tx_owner = Some((i, t.socket));
            return;
        }
        // Anything else is handled at once, after the datagrams before it.
        self.flush_sends();
        let mut datagram = false;
        let result = match self.tx_buf.get(..t.len) {
            None => Err(IoError::MessageTooLong),
            Some(bytes) => match idx.and_then(|i| self.slots.get_mut(i)) {
                Some(Some(entry)) => match &mut entry.kind {
                    Kind::Udp(sock) => {
                        datagram = true;
                        send_to(sock, bytes, destination)
                    }
                    Kind::TcpStream(st) => stream_send(st, bytes),
                    Kind::TcpBound(_) | Kind::TcpListener(_) => {
                        Err(IoError::Other(Some(NOT_CONNECTED)))
                    }
                },
                _ => Err(IoError::UnknownSocket),
            },
        };
        match result {
            Ok(n) => {
                if datagram {
                    self.stats.datagrams_sent = self.stats.datagrams_sent.saturating_add(1);
                }
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
            SocketOp::Shutdown { socket } => self.shutdown(socket),
            SocketOp::Connect { socket, remote } => {
                if let Err(error) = self.connect(socket, remote) {
                    self.stats.op_failures = self.stats.op_failures.saturating_add(1);
                    let outcome = SocketOutcome::Failed {
                        op: OpKind::Connect,
                        destination: Some(remote),
                        error,
                    };
                    self.report(socket, outcome);
                }
            }
            SocketOp::Listen { socket, backlog } => {
                if let Err(error) = self.listen(socket, backlog) {
                    self.fail(socket, OpKind::Listen, error);
                }
            }
            SocketOp::Accept { listener, socket } => match self.queue_accept(listener, socket) {
                Ok(idx) => self.accept_waiting(idx),
                Err(error) => self.fail(socket, OpKind::Accept, error),
            },
            // An intent this runtime does not know yet: nothing sensible to report it as.
            _ => {
                self.stats.op_failures = self.stats.op_failures.saturating_add(1);
            }
        }
    }

    /// Starts a non-blocking connect on bound TCP socket `id`; completion is reported when the
    /// stream becomes writable.
    fn connect(&mut self, id: SocketId, remote: SocketAddr) -> Result<(), IoError> {
        let idx = *self.ids.get(&id).ok_or(IoError::UnknownSocket)?;
        let slot = self.slots.get_mut(idx).ok_or(IoError::UnknownSocket)?;
        let Some(Entry {
            kind: Kind::TcpBound(_),
            ..
        }) = slot
        else {
            // Not a bound TCP socket (UDP, already connecting, listening).
            return Err(IoError::Other(None));
        };
        let Some(mut entry) = slot.take() else {
            return Err(IoError::UnknownSocket);
        };
        let sock = match entry.kind {
            Kind::TcpBound(sock) => sock,
            other => {
                entry.kind = other;
                *slot = Some(entry);
                return Err(IoError::Other(None));
            }
        };
        let started = match sock.connect(&remote.into()) {
            Ok(()) => Ok(()),
            Err(e) if connect_in_progress(&e) => Ok(()),
            Err(e) => Err(map_io_error(&e)),
        };
        if let Err(error) = started {
            // The socket stays bound; the machine decides whether to close it.
            entry.kind = Kind::TcpBound(sock);
            *slot = Some(entry);
            return Err(error);
        }
        let mut stream = mio::net::TcpStream::from_std(std::net::TcpStream::from(sock));
        let registered = self.poll.registry().register(
            &mut stream,
            Token(idx),
            Interest::READABLE | Interest::WRITABLE,
        );
        let failed = registered.err().map(|e| map_io_error(&e));
        entry.kind = Kind::TcpStream(Stream {
            stream,
            remote,
            connected: false,
            read_closed: failed.is_some(),
            out: Vec::new(),
            shutdown: Shutdown::No,
        });
        *slot = Some(entry);
        failed.map_or(Ok(()), Err)
    }

    /// Makes bound TCP socket `id` listen.
    fn listen(&mut self, id: SocketId, backlog: u32) -> Result<(), IoError> {
        let idx = *self.ids.get(&id).ok_or(IoError::UnknownSocket)?;
        let slot = self.slots.get_mut(idx).ok_or(IoError::UnknownSocket)?;
        let Some(Entry {
            kind: Kind::TcpBound(sock),
            ..
        }) = slot
        else {
            return Err(IoError::Other(None));
        };
        sock.listen(i32::try_from(backlog).unwrap_or(i32::MAX))
            .map_err(|e| map_io_error(&e))?;
        let Some(mut entry) = slot.take() else {
            return Err(IoError::UnknownSocket);
        };
        let mut registered = Ok(());
        entry.kind = match entry.kind {
            Kind::TcpBound(sock) => {
                let mut listener =
                    mio::net::TcpListener::from_std(std::net::TcpListener::from(sock));
                registered =
                    self.poll
                        .registry()
                        .register(&mut listener, Token(idx), Interest::READABLE);
                Kind::TcpListener(Listener {
                    listener,
                    waiting: VecDeque::new(),
                })
            }
            other => other,
        };
        *slot = Some(entry);
        registered.map_err(|e| map_io_error(&e))
    }

    /// Records that the next connection on `listener` is to be named `socket`; returns the
    /// listener's slot.
    fn queue_accept(&mut self, listener: SocketId, socket: SocketId) -> Result<usize, IoError> {
        if self.ids.contains_key(&socket) {
            // API misuse: the id is taken.
            return Err(IoError::Other(None));
        }
        let idx = *self.ids.get(&listener).ok_or(IoError::UnknownSocket)?;
        let Some(Some(Entry {
            kind: Kind::TcpListener(l),
            ..
        })) = self.slots.get_mut(idx)
        else {
            // Not a listening socket.
            return Err(IoError::Other(None));
        };
        if l.waiting.contains(&socket) || l.waiting.len() >= MAX_PENDING_REPORTS {
            return Err(IoError::Other(None));
        }
        l.waiting.push_back(socket);
        Ok(idx)
    }

    /// Accepts connections on listener slot `idx` while the machine has ids waiting for them,
    /// registering each stream and reporting `Accepted` (or a failed accept) on its id.
    fn accept_waiting(&mut self, idx: usize) {
        loop {
            let Some(Some(Entry {
                kind: Kind::TcpListener(l),
                ..
            })) = self.slots.get_mut(idx)
            else {
                return;
            };
            let Some(&socket) = l.waiting.front() else {
                return;
            };
            let (mut stream, remote) = match l.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    l.waiting.pop_front();
                    self.fail(socket, OpKind::Accept, map_io_error(&e));
                    continue;
                }
            };
            l.waiting.pop_front();
            if self.ids.contains_key(&socket) {
                // The machine bound this id meanwhile: misuse; the connection is dropped.
                self.fail(socket, OpKind::Accept, IoError::Other(None));
                continue;
            }
            let local = match stream.local_addr() {
                Ok(local) => local,
                Err(e) => {
                    self.fail(socket, OpKind::Accept, map_io_error(&e));
                    continue;
                }
            };
            let new_idx = self.free.pop().unwrap_or(self.slots.len());
            let registered = self.poll.registry().register(
                &mut stream,
                Token(new_idx),
                Interest::READABLE | Interest::WRITABLE,
            );
            if let Err(e) = registered {
                if new_idx < self.slots.len() {
                    self.free.push(new_idx);
                }
                self.fail(socket, OpKind::Accept, map_io_error(&e));
                continue;
            }
            let serial = self.next_serial;
            self.next_serial = serial.wrapping_add(1);
            let entry = Entry {
                id: socket,
                serial,
                local,
                kind: Kind::TcpStream(Stream {
                    stream,
                    remote,
                    connected: true,
                    read_closed: false,
                    out: Vec::new(),
                    shutdown: Shutdown::No,
                }),
            };
            match self.slots.get_mut(new_idx) {
                Some(slot) => *slot = Some(entry),
                None => self.slots.push(Some(entry)),
            }
            self.ids.insert(socket, new_idx);
            self.stats.sockets_opened = self.stats.sockets_opened.saturating_add(1);
            self.report(socket, SocketOutcome::Accepted { local, remote });
            // Bytes may have arrived before registration: read them on the next turn.
            self.carry.push(new_idx);
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
            Transport::Tcp => {
                let (sock, local) = open_tcp(local, &options)?;
                (Kind::TcpBound(sock), local)
            }
        };
        let idx = self.free.pop().unwrap_or(self.slots.len());
        let registered = match &mut kind {
            Kind::Udp(sock) => self
                .poll
                .registry()
                .register(sock, Token(idx), Interest::READABLE),
            _ => Ok(()),
        };
        if let Err(e) = registered {
            if idx < self.slots.len() {
                self.free.push(idx);
            }
            return Err(map_io_error(&e));
        }
        let serial = self.next_serial;
        self.next_serial = serial.wrapping_add(1);
        let entry = Entry {
            id,
            serial,
            local,
            kind,
        };
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
            Kind::TcpBound(sock) => SockRef::from(sock),
            Kind::TcpStream(st) => SockRef::from(&st.stream),
            Kind::TcpListener(l) => SockRef::from(&l.listener),
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
            let registry = self.poll.registry();
            let _ = match &mut entry.kind {
                Kind::Udp(sock) => registry.deregister(sock),
                Kind::TcpStream(st) => registry.deregister(&mut st.stream),
                // Outstanding accepts end with the listener, without a report.
                Kind::TcpListener(l) => registry.deregister(&mut l.listener),
                Kind::TcpBound(_) => Ok(()),
            };
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

/// The OS code for "not connected", reported when a transmit names a TCP socket that is not a
/// connected stream.
#[cfg(unix)]
const NOT_CONNECTED: i32 = libc::ENOTCONN;
/// The OS code for "not connected" (`WSAENOTCONN`).
#[cfg(windows)]
const NOT_CONNECTED: i32 = 10057;
/// The OS code for "not connected" (none on this platform).
#[cfg(not(any(unix, windows)))]
const NOT_CONNECTED: i32 = 0;

/// The OS code for "broken pipe", reported when a transmit names a TCP stream whose sending half
/// the machine shut down.
#[cfg(unix)]
const BROKEN_PIPE: i32 = libc::EPIPE;
/// The OS code for "shut down" (`WSAESHUTDOWN`).
#[cfg(windows)]
const BROKEN_PIPE: i32 = 10058;
/// The OS code for "broken pipe" (none on this platform).
#[cfg(not(any(unix, windows)))]
const BROKEN_PIPE: i32 = 0;

/// Whether a non-blocking `connect` error only means "in progress".
fn connect_in_progress(e: &io::Error) -> bool {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::EINPROGRESS) {
        return true;
    }
    e.kind() == io::ErrorKind::WouldBlock
}

/// Where a connecting stream stands, after it became writable (or readable).
fn connect_progress(stream: &mio::net::TcpStream) -> Progress {
    match stream.take_error() {
        Ok(Some(e)) | Err(e) => return Progress::Failed(map_io_error(&e)),
        Ok(None) => {}
    }
    match stream.peer_addr() {
        Ok(_) => match stream.local_addr() {
            Ok(local) => Progress::Connected(local),
            Err(e) => Progress::Failed(map_io_error(&e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Progress::Pending,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Progress::Pending,
        Err(e) => Progress::Failed(map_io_error(&e)),
    }
}

/// Writes as much of `bytes` as the kernel takes without blocking.
fn write_some(stream: &mut mio::net::TcpStream, bytes: &[u8]) -> Result<usize, IoError> {
    let mut written = 0usize;
    while let Some(rest) = bytes.get(written..).filter(|r| !r.is_empty()) {
        match io::Write::write(stream, rest) {
            Ok(0) => return Err(IoError::ConnectionReset),
            Ok(n) => written = written.saturating_add(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(map_io_error(&e)),
        }
    }
    Ok(written)
}

/// Sends `bytes` on a stream: written at once if nothing is queued, the rest queued (whole or not
/// at all, within [`MAX_STREAM_BUFFER`]). Returns how many bytes were written at once.
fn stream_send(st: &mut Stream, bytes: &[u8]) -> Result<usize, IoError> {
    if !st.connected {
        return Err(IoError::Other(Some(NOT_CONNECTED)));
    }
    if st.shutdown != Shutdown::No {
        return Err(IoError::Other(Some(BROKEN_PIPE)));
    }
    if st.out.len().saturating_add(bytes.len()) > MAX_STREAM_BUFFER {
        return Err(IoError::WouldBlock);
    }
    let written = if st.out.is_empty() {
        write_some(&mut st.stream, bytes)?
    } else {
        0
    };
    st.out
        .extend_from_slice(bytes.get(written..).unwrap_or(&[]));
    Ok(written)
}

/// Creates a non-blocking TCP socket with `options` applied, bound to `local`.
fn open_tcp(local: SocketAddr, options: &BindOptions) -> Result<(Socket, SocketAddr), IoError> {
    let io = |e: io::Error| map_io_error(&e);
    let socket = Socket::new(
        Domain::for_address(local),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(io)?;
    if local.is_ipv6() {
        socket.set_only_v6(true).map_err(io)?;
    }
    apply_options(&socket, local, options)?;
    socket.set_nonblocking(true).map_err(io)?;
    socket.bind(&local.into()).map_err(io)?;
    let bound = socket
        .local_addr()
        .map_err(io)?
        .as_socket()
        .ok_or(IoError::Other(None))?;
    Ok((socket, bound))
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

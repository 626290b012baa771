//! The event loop: the runtime, its loop and drain. The socket table and intents are in
//! [`table`], TCP streams in [`stream`], UDP batching and transmit routing in [`udp`], platform
//! socket setup in [`sys`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};
use p2pd_proto::{
    BindOptions, Instant, IoError, Machine, OpKind, Outputs, SocketId, SocketOp, SocketOutcome,
    Transmit, Transport, Verdict,
};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::device::bind_to_device;
use crate::error::map_io_error;
use crate::mmsg::{RecvBatch, SendBatch};

mod stream;
mod sys;
mod table;
mod udp;

use self::stream::*;
use self::sys::*;

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
    /// The machine is idle: it has no open sockets, no deadline and nothing left to report (and
    /// no closed stream is still writing out its last bytes).
    Idle,
    /// Another thread called [`Waker::wake`] (see [`Runtime::waker`]).
    Woken,
}

/// Wakes a [`Runtime`] from another thread: its [`Runtime::run`] returns [`RunEnd::Woken`] (after
/// servicing whatever else was ready), so the caller can hand the machine new work without
/// polling. Cheap to clone; wakes that come while the loop is busy are coalesced into one.
#[derive(Clone, Debug)]
pub struct Waker(Arc<mio::Waker>);

impl Waker {
    /// Wakes the runtime. Fails only if the OS refuses (the runtime is gone, say).
    pub fn wake(&self) -> io::Result<()> {
        self.0.wake()
    }
}

/// The mio token of the waker (slots use their index).
const WAKER_TOKEN: Token = Token(usize::MAX);

/// How long a stream closed with bytes still queued after a `Shutdown` may take to write them.
pub const LINGER: Duration = Duration::from_secs(30);

/// Cap on bytes of accepted transmits the kernel has not taken yet, per TCP stream: a spill, not
/// a send buffer (the machine holds the stream's send buffer, as quinn's connection does, and the
/// kernel its socket buffer). A transmit that does not fit fails with [`IoError::WouldBlock`] and
/// nothing of it is queued. Every later transmit on the stream is refused too, until the runtime
/// reports [`SocketOutcome::Writable`] (once the spill is down to half of this).
pub const MAX_STREAM_BUFFER: usize = 16 * 1024;

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
    /// A stream the machine closed after a `Shutdown`, still writing the bytes queued before it
    /// (at most until the deadline); the machine's id is already free.
    Lingering(Stream, std::time::Instant),
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
    /// A transmit was refused ([`IoError::WouldBlock`]): every later one is refused too until
    /// [`SocketOutcome::Writable`] is reported.
    refused: bool,
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
    /// Slots holding [`Kind::Lingering`] streams.
    lingering: usize,
    /// The waker, once [`Runtime::waker`] made one.
    waker: Option<Arc<mio::Waker>>,
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
            lingering: 0,
            waker: None,
            stats: RuntimeStats::default(),
        })
    }

    /// A [`Waker`] for this runtime, for other threads (a stdin reader, an application) to make
    /// [`Runtime::run`] return [`RunEnd::Woken`] when they have work for the machine.
    pub fn waker(&mut self) -> io::Result<Waker> {
        if let Some(w) = &self.waker {
            return Ok(Waker(w.clone()));
        }
        let w = Arc::new(mio::Waker::new(self.poll.registry(), WAKER_TOKEN)?);
        self.waker = Some(w.clone());
        Ok(Waker(w))
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
                    tracing::trace!(?now, "machine timeout");
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
            let linger = self.expire_lingering(wall);
            if self.ids.is_empty() && deadline.is_none() && !backlog && linger.is_none() {
                return Ok(RunEnd::Idle);
            }

            let mut timeout = deadline.map(|d| ceil_millis(d.saturating_duration_since(now)));
            if let Some(linger) = linger {
                let left = linger.saturating_duration_since(wall);
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
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
            tracing::trace!(events = self.events.iter().count(), ?timeout, "wakeup");

            self.ready.clear();
            let mut woken = false;
            for event in self.events.iter() {
                if event.token() == WAKER_TOKEN {
                    woken = true;
                    continue;
                }
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
            if woken {
                return Ok(RunEnd::Woken);
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
            Some(Some(Entry {
                kind: Kind::Lingering(..),
                ..
            })) => {
                self.flush_lingering(idx);
                ReadEnd::Done
            }
            _ => ReadEnd::Done,
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

    /// The drain loop: [`p2pd_proto::drain`] into [`Driver`]. Transmits are collected into the
    /// send batch, which is sent when it is full, when a transmit for another socket comes, before
    /// a socket intent is carried out or an event is handed to the callback (so the batch is
    /// empty whenever the drain returns `Break`), and at the end if `flush`. Send failures are
    /// queued and reported like any other socket outcome.
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
        // The transmit buffer is lent to the drain for the call (taking a boxed slice does not
        // allocate) so the driver can borrow the rest of the runtime.
        let mut buf = std::mem::take(&mut self.tx_buf);
        let mut driver = Driver {
            runtime: self,
            on_event,
            flush,
        };
        let flow = p2pd_proto::drain(machine, &mut buf, &mut driver);
        self.tx_buf = buf;
        match flow {
            ControlFlow::Break(()) => ControlFlow::Break(()),
            ControlFlow::Continue(_) => ControlFlow::Continue(()),
        }
    }
}

/// Rounds `d` up to whole milliseconds, so the OS never wakes the loop before a deadline.
/// The runtime as the shared drain's [`Outputs`]: transmits go to the sockets (datagrams through
/// the send batch), intents are carried out, events go to the caller's callback, and outcomes the
/// runtime queued are handed back.
struct Driver<'a, F> {
    runtime: &'a mut Runtime,
    on_event: &'a mut F,
    /// Send the batch when the machine has nothing more to say (otherwise the caller drains again
    /// after its last input).
    flush: bool,
}

impl<M, F> Outputs<M> for Driver<'_, F>
where
    M: Machine,
    F: FnMut(&mut M, Instant, M::Event) -> ControlFlow<()>,
{
    fn transmit(&mut self, transmit: Transmit, bytes: &[u8]) {
        self.runtime.send(transmit, bytes);
    }

    fn socket_op(&mut self, op: SocketOp) {
        self.runtime.flush_sends();
        self.runtime.apply(op);
    }

    fn event(&mut self, machine: &mut M, event: M::Event) -> ControlFlow<()> {
        self.runtime.flush_sends();
        let now = self.runtime.now();
        (self.on_event)(machine, now, event)
    }

    fn outcome(&mut self) -> Option<(Instant, SocketId, SocketOutcome)> {
        let (socket, outcome) = self.runtime.pending.pop_front()?;
        Some((self.runtime.now(), socket, outcome))
    }

    fn settle(&mut self) -> bool {
        if !self.flush || self.runtime.tx.is_empty() {
            return false;
        }
        self.runtime.flush_sends();
        // Send failures to report.
        !self.runtime.pending.is_empty()
    }
}

fn ceil_millis(d: Duration) -> Duration {
    let ms = d.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
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

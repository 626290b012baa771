//! The simulated hosts' TCP: one [`TcpStack`] per host, a segment-level state machine per
//! connection (RFC 793 states, cumulative ACKs, retransmission, simultaneous open).
//!
//! The stack is sans-IO like the machines it serves: every call takes `now` and pushes what has to
//! happen into a `Vec<TcpOut>` (segments for the network, outcomes and stream bytes for the
//! machine); the simulator routes them. Rules, in brief:
//!
//! - **Handshake**: `Connect` sends a SYN; a SYN-ACK completes it (`Connected`). Two SYNs that cross
//!   (simultaneous open) move both sides to SYN-RECEIVED, each answers with a SYN-ACK, and both
//!   report `Connected`, as on Linux. A SYN retransmits with a backed-off RTO (initial
//!   [`TcpConfig::initial_rto`], doubling up to [`TcpConfig::max_rto`]); after
//!   [`TcpConfig::syn_retries`] retransmissions the connect fails with `TimedOut`. An RST answering
//!   the SYN fails it with `ConnectionRefused`.
//! - **Listening**: a SYN for a listening socket's port (exact IP first, then wildcard) creates a
//!   half-open connection and a SYN-ACK; it counts against the listener's backlog together with
//!   established connections nobody has accepted yet (at least 1). A SYN beyond the backlog is
//!   dropped silently, as Linux does, so the connector retries it. Established connections are
//!   handed to outstanding `Accept`s in order; bytes and a FIN that arrive before the accept are
//!   kept and delivered after `Accepted`.
//! - **No socket**: a segment for no connection and no listener is answered with an RST, or dropped
//!   when [`TcpConfig::rst_on_closed_port`] is off. RSTs are never answered.
//! - **Data**: bytes from transmits are cut into segments of at most [`MSS`] bytes, with at most
//!   [`WINDOW`] bytes in flight and [`MAX_SEND_BUFFER`] bytes queued (beyond it a transmit fails with
//!   `WouldBlock`). Every data segment or FIN is acknowledged at once (no delayed ACKs);
//!   out-of-order segments within the window are kept (bounded) and delivered when the gap fills;
//!   duplicates are dropped. The RTO follows RFC 6298 (SRTT/RTTVAR, Karn's rule, doubling backoff
//!   within [`TcpConfig::min_rto`]..=[`TcpConfig::max_rto`]); a timeout retransmits go-back-N from
//!   the first unacknowledged byte, three duplicate ACKs retransmit that segment at once. After
//!   [`TcpConfig::data_retries`] timeouts in a row the connection is dropped and the machine gets
//!   `Failed { op: Receive, error: TimedOut }`. There is no flow or congestion control.
//! - **Close**: `Close` detaches the socket from the machine at once (its port is free again) and
//!   the stack finishes alone: FIN after the queued data, FIN-WAIT/CLOSING/LAST-ACK, then
//!   TIME-WAIT for [`TcpConfig::time_wait`] (which also bounds an orphaned FIN-WAIT-2). Closing a
//!   connecting socket drops it silently; closing a listener resets its unaccepted connections. New
//!   data reaching an orphaned connection is answered with an RST. The peer sees `PeerClosed` after
//!   every byte before the FIN.
//! - **Shutdown**: `Shutdown` sends the FIN after the queued data as `Close` does
//!   (ESTABLISHED -> FIN-WAIT-1, CLOSE-WAIT -> LAST-ACK), but the socket stays the machine's: bytes
//!   and the peer's FIN keep arriving (`PeerClosed`), transmits fail with `BrokenPipe`, and a
//!   later `Close` releases the socket (the connection finishes alone from wherever it is). A
//!   second `Shutdown` does nothing; on a socket that is not a connected stream it fails (kind
//!   `Shutdown`, `NotConnected`), as a transmit on one does (kind `Send`).
//! - **Reset**: an in-window RST reports `Failed { op: Receive, error: ConnectionReset }` (or
//!   `ConnectionRefused` while connecting); the socket stays the machine's until it closes it, and
//!   transmits on it fail with `ConnectionReset`.

mod conn;
mod segment;

use core::net::{Ipv4Addr, SocketAddrV4};
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use p2pd_proto::{Instant, IoError, Rng, SocketId, SocketOutcome};

use conn::{Conn, Fate, State};
pub(crate) use segment::Segment;
pub use segment::TcpHeader;

/// Largest payload of one segment.
pub const MSS: usize = 1400;
/// Most bytes in flight per connection, and the receive window (out-of-order data beyond it is
/// dropped).
pub const WINDOW: usize = 64 * 1024;
/// Most bytes a connection queues for sending; a transmit beyond it fails with `WouldBlock` (and
/// so does every later one, until the buffer is down to half and `Writable` is reported).
pub const MAX_SEND_BUFFER: usize = 256 * 1024;
/// Most connections (of every state) per host; SYNs beyond it are dropped.
pub const MAX_CONNECTIONS: usize = 4096;

/// A host's TCP settings ([`crate::Host::with_tcp`], [`crate::Sim::set_tcp_config`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct TcpConfig {
    /// Answer a segment for a port with no connection and no listener with an RST (Linux does);
    /// `false` drops it silently, so a connector times out.
    pub rst_on_closed_port: bool,
    /// The RTO before any RTT sample (RFC 6298: 1 s).
    pub initial_rto: Duration,
    /// The smallest RTO (Linux: 200 ms).
    pub min_rto: Duration,
    /// The largest RTO after backoff (Linux: 120 s).
    pub max_rto: Duration,
    /// SYN retransmissions before a connect fails with `TimedOut` (Linux `tcp_syn_retries`: 6).
    pub syn_retries: u32,
    /// SYN-ACK retransmissions before a half-open connection is dropped (Linux: 5).
    pub synack_retries: u32,
    /// Data retransmission timeouts in a row before the connection is dropped (Linux
    /// `tcp_retries2`: 15).
    pub data_retries: u32,
    /// How long TIME-WAIT (and an orphaned FIN-WAIT-2) lasts (Linux: 60 s).
    pub time_wait: Duration,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            rst_on_closed_port: true,
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(120),
            syn_retries: 6,
            synack_retries: 5,
            data_retries: 15,
            time_wait: Duration::from_secs(60),
        }
    }
}

/// TCP counters, per host ([`crate::Sim::host_tcp_stats`]) or summed over the network
/// ([`crate::Sim::tcp_stats`], which adds the link counters).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Segments the hosts sent (retransmissions and RSTs included).
    pub segments_sent: u64,
    /// Segments that reached a host's stack.
    pub segments_received: u64,
    /// Segments sent again (SYN, SYN-ACK, data or FIN).
    pub retransmitted: u64,
    /// Segment copies lost on links (network-wide counter only).
    pub lost: u64,
    /// Extra segment copies made by duplicating links (network-wide counter only).
    pub duplicated: u64,
    /// RSTs sent by hosts.
    pub rst_sent: u64,
    /// RSTs received by hosts (acceptable or not).
    pub rst_received: u64,
    /// Segments for no connection and no listener (answered by an RST or dropped).
    pub no_listener: u64,
    /// SYNs dropped because a listener's backlog (or the host's connection table) was full.
    pub syn_dropped_backlog: u64,
    /// Segments dropped as out of window, unacceptable or duplicate.
    pub dropped: u64,
    /// Connects that completed (`Connected`).
    pub connected: u64,
    /// Connections handed out by `Accept`.
    pub accepted: u64,
    /// Connects refused by an RST.
    pub refused: u64,
    /// Connections that timed out (connect or data).
    pub timed_out: u64,
    /// Established connections reset by the peer.
    pub reset: u64,
    /// Payload bytes handed to machines.
    pub bytes_delivered: u64,
}

impl TcpStats {
    pub(crate) fn add(&mut self, o: &TcpStats) {
        self.segments_sent += o.segments_sent;
        self.segments_received += o.segments_received;
        self.retransmitted += o.retransmitted;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.rst_sent += o.rst_sent;
        self.rst_received += o.rst_received;
        self.no_listener += o.no_listener;
        self.syn_dropped_backlog += o.syn_dropped_backlog;
        self.dropped += o.dropped;
        self.connected += o.connected;
        self.accepted += o.accepted;
        self.refused += o.refused;
        self.timed_out += o.timed_out;
        self.reset += o.reset;
        self.bytes_delivered += o.bytes_delivered;
    }
}

/// What the stack asks of the simulator.
#[derive(Debug)]
pub(crate) enum TcpOut {
    /// Send this segment from the host.
    Segment(Segment),
    /// Tell the machine about `socket`.
    Outcome(SocketId, SocketOutcome),
    /// `listener` handed out a connection as `socket` (the simulator records the socket, then
    /// reports `Accepted`).
    Accepted {
        listener: SocketId,
        socket: SocketId,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    },
    /// Hand stream bytes to the machine.
    Stream(SocketId, Vec<u8>),
}

type ConnId = u64;

#[derive(Debug)]
enum Sock {
    Bound(SocketAddrV4),
    Listening(Listener),
    Conn(ConnId),
    /// A connection that ended (reset, timed out, refused) while the machine holds the socket.
    Dead(IoError),
}

#[derive(Debug)]
struct Listener {
    local: SocketAddrV4,
    backlog: usize,
    half_open: BTreeSet<ConnId>,
    queue: VecDeque<ConnId>,
    waiting: VecDeque<SocketId>,
}

/// One host's TCP: its sockets (bound, listening, connections) and connection table.
#[derive(Debug)]
pub(crate) struct TcpStack {
    pub(crate) config: TcpConfig,
    pub(crate) stats: TcpStats,
    rng: Rng,
    socks: BTreeMap<SocketId, Sock>,
    conns: BTreeMap<ConnId, Conn>,
    by_tuple: BTreeMap<(SocketAddrV4, SocketAddrV4), ConnId>,
    next_conn: ConnId,
}

impl TcpStack {
    pub(crate) fn new(config: TcpConfig, rng: Rng) -> Self {
        TcpStack {
            config,
            stats: TcpStats::default(),
            rng,
            socks: BTreeMap::new(),
            conns: BTreeMap::new(),
            by_tuple: BTreeMap::new(),
            next_conn: 0,
        }
    }

    /// Connections of every state, TIME-WAIT and unaccepted included.
    pub(crate) fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The earliest retransmission or linger deadline.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.conns.values().filter_map(Conn::deadline).min()
    }

    /// A TCP socket was bound to `local` (unspecified IP: wildcard).
    pub(crate) fn bind(&mut self, socket: SocketId, local: SocketAddrV4) {
        self.socks.insert(socket, Sock::Bound(local));
    }

    fn insert(&mut self, conn: Conn) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.by_tuple.insert((conn.local, conn.remote), id);
        self.conns.insert(id, conn);
        id
    }

    /// Removes a connection and its table entries; a socket still held by the machine becomes
    /// `Dead` with `error`.
    fn remove(&mut self, id: ConnId, error: IoError) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        if self.by_tuple.get(&(conn.local, conn.remote)) == Some(&id) {
            self.by_tuple.remove(&(conn.local, conn.remote));
        }
        if let Some(l) = conn.listener {
            if let Some(Sock::Listening(listener)) = self.socks.get_mut(&l) {
                listener.half_open.remove(&id);
                listener.queue.retain(|c| *c != id);
            }
        }
        if let Some(s) = conn.socket {
            if let Some(sock) = self.socks.get_mut(&s) {
                *sock = Sock::Dead(error);
            }
        }
    }

    /// `Connect`: sends the SYN. `default_ip` replaces a wildcard local IP.
    pub(crate) fn connect(
        &mut self,
        now: Instant,
        socket: SocketId,
        remote: SocketAddrV4,
        default_ip: Ipv4Addr,
        out: &mut Vec<TcpOut>,
    ) -> Result<(), IoError> {
        let local = match self.socks.get(&socket) {
            None => return Err(IoError::UnknownSocket),
            Some(Sock::Bound(local)) => *local,
            Some(_) => return Err(IoError::Other(None)),
        };
        let local = if local.ip().is_unspecified() {
            SocketAddrV4::new(default_ip, local.port())
        } else {
            local
        };
        if let Some(&old) = self.by_tuple.get(&(local, remote)) {
            match self.conns.get(&old).map(|c| c.state) {
                Some(State::TimeWait) => self.remove(old, IoError::ConnectionReset),
                _ => return Err(IoError::AddrNotAvailable),
            }
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            return Err(IoError::Other(None));
        }
        let iss = self.rng.next_u64() as u32;
        let mut conn = Conn::new(local, remote, iss, &self.config);
        conn.socket = Some(socket);
        conn.send_syn(&mut self.stats, out);
        conn.rtx_at = Some(now + conn.rto);
        let id = self.insert(conn);
        self.socks.insert(socket, Sock::Conn(id));
        Ok(())
    }

    /// `Listen`.
    pub(crate) fn listen(&mut self, socket: SocketId, backlog: u32) -> Result<(), IoError> {
        let local = match self.socks.get(&socket) {
            None => return Err(IoError::UnknownSocket),
            Some(Sock::Bound(local)) => *local,
            Some(_) => return Err(IoError::Other(None)),
        };
        let backlog = usize::try_from(backlog)
            .unwrap_or(usize::MAX)
            .clamp(1, MAX_CONNECTIONS);
        self.socks.insert(
            socket,
            Sock::Listening(Listener {
                local,
                backlog,
                half_open: BTreeSet::new(),
                queue: VecDeque::new(),
                waiting: VecDeque::new(),
            }),
        );
        Ok(())
    }

    /// `Accept`: names the next established connection on `listener` `socket`, now or when one
    /// arrives. The caller has checked that `socket` is free.
    pub(crate) fn accept(
        &mut self,
        listener: SocketId,
        socket: SocketId,
        out: &mut Vec<TcpOut>,
    ) -> Result<(), IoError> {
        match self.socks.get_mut(&listener) {
            None => return Err(IoError::UnknownSocket),
            Some(Sock::Listening(l)) => {
                if l.waiting.contains(&socket) || l.waiting.len() >= MAX_CONNECTIONS {
                    return Err(IoError::Other(None));
                }
                l.waiting.push_back(socket);
            }
            Some(_) => return Err(IoError::Other(None)),
        }
        self.hand_out(listener, out);
        Ok(())
    }

    /// Pairs queued connections with waiting accepts.
    fn hand_out(&mut self, listener: SocketId, out: &mut Vec<TcpOut>) {
        loop {
            let Some(Sock::Listening(l)) = self.socks.get_mut(&listener) else {
                return;
            };
            if l.queue.is_empty() || l.waiting.is_empty() {
                return;
            }
            let (Some(id), Some(socket)) = (l.queue.pop_front(), l.waiting.pop_front()) else {
                return;
            };
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            conn.listener = None;
            conn.socket = Some(socket);
            self.socks.insert(socket, Sock::Conn(id));
            self.stats.accepted += 1;
            out.push(TcpOut::Accepted {
                listener,
                socket,
                local: conn.local,
                remote: conn.remote,
            });
            if !conn.pending.is_empty() {
                let data = core::mem::take(&mut conn.pending);
                self.stats.bytes_delivered += data.len() as u64;
                out.push(TcpOut::Stream(socket, data));
            }
            if conn.pending_closed {
                conn.pending_closed = false;
                out.push(TcpOut::Outcome(socket, SocketOutcome::PeerClosed));
            }
        }
    }

    /// The connection behind machine socket `socket`, or why there is none: unknown, dead (its
    /// error), or not a connection (bound or listening); with the stack's counters, borrowed
    /// alongside.
    fn connection_of(&mut self, socket: SocketId) -> Result<(&mut Conn, &mut TcpStats), IoError> {
        let id = match self.socks.get(&socket) {
            None => return Err(IoError::UnknownSocket),
            Some(Sock::Conn(id)) => *id,
            Some(Sock::Dead(error)) => return Err(*error),
            Some(_) => return Err(IoError::NotConnected),
        };
        let conn = self.conns.get_mut(&id).ok_or(IoError::UnknownSocket)?;
        Ok((conn, &mut self.stats))
    }

    /// Bytes the machine transmitted on `socket`.
    pub(crate) fn write(
        &mut self,
        now: Instant,
        socket: SocketId,
        data: &[u8],
        out: &mut Vec<TcpOut>,
    ) -> Result<(), IoError> {
        let (conn, stats) = self.connection_of(socket)?;
        if conn.fin_queued {
            // The machine shut the sending half down.
            return Err(IoError::BrokenPipe);
        }
        if !matches!(conn.state, State::Established | State::CloseWait) {
            return Err(IoError::NotConnected);
        }
        if conn.refused || conn.send.len() + data.len() > MAX_SEND_BUFFER {
            conn.refused = true;
            return Err(IoError::WouldBlock);
        }
        conn.send.extend(data);
        conn.push(now, stats, out);
        Ok(())
    }

    /// `Shutdown`: a FIN after the queued data; the socket stays the machine's and keeps receiving.
    pub(crate) fn shutdown(
        &mut self,
        now: Instant,
        socket: SocketId,
        out: &mut Vec<TcpOut>,
    ) -> Result<(), IoError> {
        let (conn, stats) = self.connection_of(socket)?;
        if conn.fin_queued {
            return Ok(());
        }
        conn.state = match conn.state {
            State::Established => State::FinWait1,
            State::CloseWait => State::LastAck,
            _ => return Err(IoError::NotConnected),
        };
        conn.fin_queued = true;
        conn.push(now, stats, out);
        Ok(())
    }

    /// `Close`: the socket leaves the machine; a connection finishes on its own.
    pub(crate) fn close(&mut self, now: Instant, socket: SocketId, out: &mut Vec<TcpOut>) {
        match self.socks.remove(&socket) {
            Some(Sock::Listening(l)) => {
                for id in l.half_open.iter().chain(l.queue.iter()).copied() {
                    if let Some(conn) = self.conns.get(&id) {
                        conn.send_rst(&mut self.stats, out);
                    }
                    self.remove(id, IoError::ConnectionReset);
                }
            }
            Some(Sock::Conn(id)) => {
                let Some(conn) = self.conns.get_mut(&id) else {
                    return;
                };
                conn.socket = None;
                conn.orphan = true;
                match conn.state {
                    State::Established => {
                        conn.state = State::FinWait1;
                        conn.fin_queued = true;
                        conn.push(now, &mut self.stats, out);
                    }
                    State::CloseWait => {
                        conn.state = State::LastAck;
                        conn.fin_queued = true;
                        conn.push(now, &mut self.stats, out);
                    }
                    State::SynRcvd => {
                        conn.send_rst(&mut self.stats, out);
                        self.remove(id, IoError::ConnectionReset);
                    }
                    // Shut down before: the FIN is already queued or sent; finish alone.
                    State::FinWait1 | State::Closing | State::LastAck | State::TimeWait => {}
                    State::FinWait2 => {
                        conn.linger_until = Some(now + self.config.time_wait);
                    }
                    State::SynSent => self.remove(id, IoError::ConnectionReset),
                }
            }
            _ => {}
        }
    }

    /// Kills everything, as when the host's process dies: an RST for every connection that has
    /// a peer, every socket forgotten.
    pub(crate) fn abort_all(&mut self, out: &mut Vec<TcpOut>) {
        for conn in self.conns.values() {
            if !matches!(conn.state, State::SynSent | State::TimeWait) {
                conn.send_rst(&mut self.stats, out);
            }
        }
        self.conns.clear();
        self.by_tuple.clear();
        self.socks.clear();
    }

    /// A segment reached this host.
    pub(crate) fn on_segment(&mut self, now: Instant, seg: Segment, out: &mut Vec<TcpOut>) {
        self.stats.segments_received += 1;
        let h = seg.header;
        if h.has(TcpHeader::RST) {
            self.stats.rst_received += 1;
        }
        if let Some(&id) = self.by_tuple.get(&(seg.dst, seg.src)) {
            let time_wait = self.conns.get(&id).map(|c| c.state) == Some(State::TimeWait);
            if !(time_wait && h.is_syn_only()) {
                self.conn_segment(now, id, h, &seg.payload, out);
                return;
            }
            // A new SYN ends TIME-WAIT.
            self.remove(id, IoError::ConnectionReset);
        }
        if h.is_syn_only() {
            if let Some(listener) = self.listener_for(seg.dst) {
                self.on_listen_syn(now, listener, &seg, out);
                return;
            }
        }
        if h.has(TcpHeader::RST) {
            return;
        }
        self.stats.no_listener += 1;
        if self.config.rst_on_closed_port {
            if let Some(rst) = seg.reset_reply() {
                self.stats.segments_sent += 1;
                self.stats.rst_sent += 1;
                out.push(TcpOut::Segment(rst));
            }
        }
    }

    fn conn_segment(
        &mut self,
        now: Instant,
        id: ConnId,
        h: TcpHeader,
        payload: &[u8],
        out: &mut Vec<TcpOut>,
    ) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let fate = conn.on_segment(now, h, payload, &self.config, &mut self.stats, out);
        match fate {
            Fate::Keep => {}
            Fate::Remove => {
                let error = if h.has(TcpHeader::RST) {
                    IoError::ConnectionReset
                } else {
                    IoError::NotConnected
                };
                let refused = conn.state == State::SynSent;
                self.remove(
                    id,
                    if refused {
                        IoError::ConnectionRefused
                    } else {
                        error
                    },
                );
            }
            Fate::Established => {
                if let Some(l) = conn.listener {
                    if let Some(Sock::Listening(listener)) = self.socks.get_mut(&l) {
                        listener.half_open.remove(&id);
                        listener.queue.push_back(id);
                    }
                    self.hand_out(l, out);
                }
            }
        }
    }

    /// The listener for a SYN to `dst`: one bound to its IP first, then a wildcard one.
    fn listener_for(&self, dst: SocketAddrV4) -> Option<SocketId> {
        let mut wildcard = None;
        for (id, sock) in &self.socks {
            if let Sock::Listening(l) = sock {
                if l.local.port() != dst.port() {
                    continue;
                }
                if l.local.ip() == dst.ip() {
                    return Some(*id);
                }
                if l.local.ip().is_unspecified() && wildcard.is_none() {
                    wildcard = Some(*id);
                }
            }
        }
        wildcard
    }

    fn on_listen_syn(
        &mut self,
        now: Instant,
        listener: SocketId,
        seg: &Segment,
        out: &mut Vec<TcpOut>,
    ) {
        let full = match self.socks.get(&listener) {
            Some(Sock::Listening(l)) => l.half_open.len() + l.queue.len() >= l.backlog,
            _ => true,
        };
        if full || self.conns.len() >= MAX_CONNECTIONS {
            self.stats.syn_dropped_backlog += 1;
            return;
        }
        let iss = self.rng.next_u64() as u32;
        let mut conn = Conn::new(seg.dst, seg.src, iss, &self.config);
        conn.state = State::SynRcvd;
        conn.listener = Some(listener);
        conn.irs = seg.header.seq;
        conn.rcv_nxt = seg.header.seq.wrapping_add(1);
        conn.send_syn(&mut self.stats, out);
        conn.rtx_at = Some(now + conn.rto);
        let id = self.insert(conn);
        if let Some(Sock::Listening(l)) = self.socks.get_mut(&listener) {
            l.half_open.insert(id);
        }
    }

    /// Fires every deadline that has passed.
    pub(crate) fn on_timeout(&mut self, now: Instant, out: &mut Vec<TcpOut>) {
        let due: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline().is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            if conn.on_timeout(now, &self.config, &mut self.stats, out) == Fate::Remove {
                self.remove(id, IoError::TimedOut);
            }
        }
    }
}

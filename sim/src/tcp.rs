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

use core::net::{Ipv4Addr, SocketAddrV4};
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use p2pd_proto::{Instant, IoError, OpKind, Rng, SocketId, SocketOutcome};

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
/// Most out-of-order bytes kept per connection.
const MAX_OUT_OF_ORDER: usize = 2 * WINDOW;
/// Most bytes kept for a connection nobody has accepted yet.
const MAX_PENDING: usize = WINDOW;

/// The flags and numbers of a simulated TCP segment (no options, no window field: the simulated
/// receiver always has room).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct TcpHeader {
    /// Flag bits, as in the real header ([`TcpHeader::FIN`], [`TcpHeader::SYN`], ...).
    pub flags: u8,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number (meaningful with [`TcpHeader::ACK`]).
    pub ack: u32,
}

impl TcpHeader {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronise sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// The acknowledgement number is valid.
    pub const ACK: u8 = 0x10;

    /// Whether every bit of `flag` is set.
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag == flag
    }

    /// A SYN without ACK: a connection attempt.
    pub fn is_syn_only(&self) -> bool {
        self.has(Self::SYN) && !self.has(Self::ACK) && !self.has(Self::RST)
    }

    /// The bytes the trace hash eats for this header.
    pub(crate) fn bytes(&self) -> [u8; 9] {
        let mut b = [0u8; 9];
        b[0] = self.flags;
        b[1..5].copy_from_slice(&self.seq.to_be_bytes());
        b[5..9].copy_from_slice(&self.ack.to_be_bytes());
        b
    }
}

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

/// A segment to put on the network.
#[derive(Clone, Debug)]
pub(crate) struct Segment {
    pub(crate) src: SocketAddrV4,
    pub(crate) dst: SocketAddrV4,
    pub(crate) header: TcpHeader,
    pub(crate) payload: Vec<u8>,
}

impl Segment {
    /// The RST answering `self` (RFC 793: seq from its ACK, or RST+ACK covering it); `None` for an
    /// RST.
    pub(crate) fn reset_reply(&self) -> Option<Segment> {
        let h = self.header;
        if h.has(TcpHeader::RST) {
            return None;
        }
        let header = if h.has(TcpHeader::ACK) {
            TcpHeader {
                flags: TcpHeader::RST,
                seq: h.ack,
                ack: 0,
            }
        } else {
            let len = seg_len(&h, self.payload.len());
            TcpHeader {
                flags: TcpHeader::RST | TcpHeader::ACK,
                seq: 0,
                ack: h.seq.wrapping_add(len),
            }
        };
        Some(Segment {
            src: self.dst,
            dst: self.src,
            header,
            payload: Vec::new(),
        })
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

/// Sequence space a segment occupies.
fn seg_len(h: &TcpHeader, payload: usize) -> u32 {
    let flags = u32::from(h.has(TcpHeader::SYN)) + u32::from(h.has(TcpHeader::FIN));
    u32::try_from(payload)
        .unwrap_or(u32::MAX)
        .wrapping_add(flags)
}

fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

fn seq_le(a: u32, b: u32) -> bool {
    a == b || seq_lt(a, b)
}

fn distance(from: u32, to: u32) -> usize {
    to.wrapping_sub(from) as usize
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum State {
    SynSent,
    SynRcvd,
    Established,
    FinWait1,
    FinWait2,
    CloseWait,
    Closing,
    LastAck,
    TimeWait,
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

#[derive(Debug)]
struct Conn {
    local: SocketAddrV4,
    remote: SocketAddrV4,
    state: State,
    /// The machine's handle; `None` before accept and after close.
    socket: Option<SocketId>,
    /// The listener of a passive connection not yet accepted.
    listener: Option<SocketId>,
    /// The machine closed its socket.
    orphan: bool,
    /// A transmit was refused (the send buffer was full): every later one is refused too until
    /// `Writable` is reported (once the buffer is down to half).
    refused: bool,
    iss: u32,
    snd_una: u32,
    snd_nxt: u32,
    snd_max: u32,
    /// Queued bytes, the first at sequence number `send_base`.
    send: VecDeque<u8>,
    send_base: u32,
    fin_queued: bool,
    irs: u32,
    rcv_nxt: u32,
    /// Out-of-order data by offset from `irs`.
    ooo: BTreeMap<u32, Vec<u8>>,
    ooo_bytes: usize,
    /// Where the peer's FIN sits, when it arrived ahead of data.
    peer_fin: Option<u32>,
    pending: Vec<u8>,
    pending_closed: bool,
    rto: Duration,
    srtt: Option<Duration>,
    rttvar: Duration,
    retries: u32,
    dup_acks: u32,
    rtx_at: Option<Instant>,
    timed: Option<(u32, Instant)>,
    linger_until: Option<Instant>,
}

/// What a connection's input left it as.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Fate {
    Keep,
    /// A passive connection completed its handshake.
    Established,
    /// Gone: remove it.
    Remove,
}

impl Conn {
    fn new(local: SocketAddrV4, remote: SocketAddrV4, iss: u32, config: &TcpConfig) -> Self {
        Conn {
            local,
            remote,
            state: State::SynSent,
            socket: None,
            listener: None,
            orphan: false,
            refused: false,
            iss,
            snd_una: iss,
            snd_nxt: iss.wrapping_add(1),
            snd_max: iss.wrapping_add(1),
            send: VecDeque::new(),
            send_base: iss.wrapping_add(1),
            fin_queued: false,
            irs: 0,
            rcv_nxt: 0,
            ooo: BTreeMap::new(),
            ooo_bytes: 0,
            peer_fin: None,
            pending: Vec::new(),
            pending_closed: false,
            rto: config.initial_rto,
            srtt: None,
            rttvar: Duration::ZERO,
            retries: 0,
            dup_acks: 0,
            rtx_at: None,
            timed: None,
            linger_until: None,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match (self.rtx_at, self.linger_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn emit(
        &self,
        flags: u8,
        seq: u32,
        payload: Vec<u8>,
        stats: &mut TcpStats,
        out: &mut Vec<TcpOut>,
    ) {
        let ack = if flags & TcpHeader::ACK != 0 {
            self.rcv_nxt
        } else {
            0
        };
        stats.segments_sent += 1;
        if flags & TcpHeader::RST != 0 {
            stats.rst_sent += 1;
        }
        out.push(TcpOut::Segment(Segment {
            src: self.local,
            dst: self.remote,
            header: TcpHeader { flags, seq, ack },
            payload,
        }));
    }

    fn send_syn(&self, stats: &mut TcpStats, out: &mut Vec<TcpOut>) {
        let flags = match self.state {
            State::SynSent => TcpHeader::SYN,
            _ => TcpHeader::SYN | TcpHeader::ACK,
        };
        self.emit(flags, self.iss, Vec::new(), stats, out);
    }

    fn send_ack(&self, stats: &mut TcpStats, out: &mut Vec<TcpOut>) {
        self.emit(TcpHeader::ACK, self.snd_nxt, Vec::new(), stats, out);
    }

    fn send_rst(&self, stats: &mut TcpStats, out: &mut Vec<TcpOut>) {
        self.emit(TcpHeader::RST, self.snd_max, Vec::new(), stats, out);
    }

    fn report(&self, outcome: SocketOutcome, out: &mut Vec<TcpOut>) {
        if let Some(s) = self.socket {
            out.push(TcpOut::Outcome(s, outcome));
        }
    }

    /// Sends queued data (and the FIN once everything is sent) within the window; arms the timer.
    fn push(&mut self, now: Instant, stats: &mut TcpStats, out: &mut Vec<TcpOut>) {
        if !matches!(
            self.state,
            State::Established
                | State::CloseWait
                | State::FinWait1
                | State::Closing
                | State::LastAck
        ) {
            return;
        }
        loop {
            let off = distance(self.send_base, self.snd_nxt);
            let in_flight = distance(self.snd_una, self.snd_nxt);
            if off >= self.send.len() || in_flight >= WINDOW {
                break;
            }
            let n = MSS.min(self.send.len() - off).min(WINDOW - in_flight);
            let payload: Vec<u8> = self.send.range(off..off + n).copied().collect();
            let again = seq_lt(self.snd_nxt, self.snd_max);
            if again {
                stats.retransmitted += 1;
            }
            self.emit(TcpHeader::ACK, self.snd_nxt, payload, stats, out);
            let end = self.snd_nxt.wrapping_add(n as u32);
            if !again && self.timed.is_none() {
                self.timed = Some((end, now));
            }
            self.snd_nxt = end;
            if seq_lt(self.snd_max, end) {
                self.snd_max = end;
            }
        }
        let fin_seq = self.send_base.wrapping_add(self.send.len() as u32);
        if self.fin_queued && self.snd_nxt == fin_seq {
            if seq_lt(fin_seq, self.snd_max) {
                stats.retransmitted += 1;
            }
            self.emit(
                TcpHeader::FIN | TcpHeader::ACK,
                fin_seq,
                Vec::new(),
                stats,
                out,
            );
            self.snd_nxt = fin_seq.wrapping_add(1);
            if seq_lt(self.snd_max, self.snd_nxt) {
                self.snd_max = self.snd_nxt;
            }
        }
        if self.snd_una != self.snd_max && self.rtx_at.is_none() {
            self.rtx_at = Some(now + self.rto);
        }
    }

    fn fin_acked(&self) -> bool {
        self.fin_queued && self.send.is_empty() && self.snd_una == self.send_base.wrapping_add(1)
    }

    fn sample_rtt(&mut self, r: Duration, config: &TcpConfig) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((s * 7 + r) / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(r);
        let rto = srtt + (self.rttvar * 4).max(Duration::from_millis(1));
        self.rto = rto.clamp(config.min_rto, config.max_rto);
    }

    /// The peer's FIN is next in sequence: consume it and move on.
    fn take_fin(&mut self, now: Instant, config: &TcpConfig, out: &mut Vec<TcpOut>) {
        self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
        self.peer_fin = None;
        self.state = match self.state {
            State::SynRcvd | State::Established => State::CloseWait,
            State::FinWait1 if self.fin_acked() => State::TimeWait,
            State::FinWait1 => State::Closing,
            State::FinWait2 => State::TimeWait,
            s => s,
        };
        if self.state == State::TimeWait {
            self.enter_time_wait(now, config);
        }
        if self.listener.is_some() {
            self.pending_closed = true;
        } else {
            self.report(SocketOutcome::PeerClosed, out);
        }
    }

    fn enter_time_wait(&mut self, now: Instant, config: &TcpConfig) {
        self.state = State::TimeWait;
        self.rtx_at = None;
        self.linger_until = Some(now + config.time_wait);
    }

    fn deliver(&mut self, bytes: &[u8], stats: &mut TcpStats, out: &mut Vec<TcpOut>) -> bool {
        if self.listener.is_some() {
            if self.pending.len() + bytes.len() > MAX_PENDING {
                return false;
            }
            self.pending.extend_from_slice(bytes);
        } else if let Some(s) = self.socket {
            stats.bytes_delivered += bytes.len() as u64;
            out.push(TcpOut::Stream(s, bytes.to_vec()));
        }
        true
    }

    /// Takes in-order payload at `seq`, keeps what is ahead, and delivers out-of-order data the
    /// gap filling made contiguous.
    fn receive_data(
        &mut self,
        seq: u32,
        payload: &[u8],
        stats: &mut TcpStats,
        out: &mut Vec<TcpOut>,
    ) {
        let ahead = seq.wrapping_sub(self.rcv_nxt) as i32;
        if ahead <= 0 {
            let skip = ahead.unsigned_abs() as usize;
            if let Some(fresh) = payload.get(skip..).filter(|f| !f.is_empty()) {
                if !self.deliver(fresh, stats, out) {
                    stats.dropped += 1;
                    return;
                }
                self.rcv_nxt = self.rcv_nxt.wrapping_add(fresh.len() as u32);
            } else {
                stats.dropped += 1;
            }
        } else if (ahead as usize) < WINDOW {
            let room = WINDOW - ahead as usize;
            let keep = payload.get(..payload.len().min(room)).unwrap_or(&[]);
            let key = seq.wrapping_sub(self.irs);
            let longer = self.ooo.get(&key).is_none_or(|old| old.len() < keep.len());
            if longer && self.ooo_bytes + keep.len() <= MAX_OUT_OF_ORDER {
                self.ooo_bytes += keep.len();
                if let Some(old) = self.ooo.insert(key, keep.to_vec()) {
                    self.ooo_bytes -= old.len();
                }
            } else {
                stats.dropped += 1;
            }
            return;
        } else {
            stats.dropped += 1;
            return;
        }
        // Fill from the out-of-order store.
        loop {
            let rcv = self.rcv_nxt.wrapping_sub(self.irs);
            let Some((&key, _)) = self.ooo.first_key_value() else {
                break;
            };
            if key > rcv {
                break;
            }
            let Some(data) = self.ooo.remove(&key) else {
                break;
            };
            self.ooo_bytes -= data.len();
            let skip = (rcv - key) as usize;
            if let Some(fresh) = data.get(skip..).filter(|f| !f.is_empty()) {
                if !self.deliver(fresh, stats, out) {
                    break;
                }
                self.rcv_nxt = self.rcv_nxt.wrapping_add(fresh.len() as u32);
            }
        }
    }

    /// A segment for this connection (synchronized states and SYN-SENT).
    fn on_segment(
        &mut self,
        now: Instant,
        h: TcpHeader,
        payload: &[u8],
        config: &TcpConfig,
        stats: &mut TcpStats,
        out: &mut Vec<TcpOut>,
    ) -> Fate {
        if self.state == State::SynSent {
            return self.on_syn_sent(h, config, stats, out);
        }
        // RST: accepted within the window.
        if h.has(TcpHeader::RST) {
            let off = distance(self.rcv_nxt, h.seq);
            if off >= 2 * WINDOW {
                stats.dropped += 1;
                return Fate::Keep;
            }
            return self.on_reset(stats, out);
        }
        if h.has(TcpHeader::SYN) {
            if h.seq != self.irs {
                // Not this connection's SYN: challenge ACK (RFC 5961).
                self.send_ack(stats, out);
                stats.dropped += 1;
                return Fate::Keep;
            }
            let acceptable = h.has(TcpHeader::ACK) && h.ack == self.iss.wrapping_add(1);
            if !(self.state == State::SynRcvd && acceptable) {
                // A retransmitted SYN or SYN-ACK: our answer was lost.
                if self.state == State::SynRcvd {
                    stats.retransmitted += 1;
                    self.send_syn(stats, out);
                } else {
                    self.send_ack(stats, out);
                }
                stats.dropped += 1;
                return Fate::Keep;
            }
        }
        if !h.has(TcpHeader::ACK) {
            stats.dropped += 1;
            return Fate::Keep;
        }
        let mut fate = Fate::Keep;
        if self.state == State::SynRcvd {
            if h.ack != self.iss.wrapping_add(1) {
                self.emit(TcpHeader::RST, h.ack, Vec::new(), stats, out);
                return Fate::Keep;
            }
            self.snd_una = h.ack;
            self.retries = 0;
            self.rtx_at = None;
            self.rto = config.initial_rto;
            self.state = State::Established;
            if self.listener.is_some() {
                fate = Fate::Established;
            } else {
                stats.connected += 1;
                self.report(
                    SocketOutcome::Connected {
                        local: self.local.into(),
                        remote: self.remote.into(),
                    },
                    out,
                );
            }
        } else if let Some(f) = self.on_ack(now, h, payload.len(), config, stats, out) {
            return f;
        }
        // Data and FIN.
        let fin = h.has(TcpHeader::FIN);
        let takes_data = matches!(
            self.state,
            State::Established | State::FinWait1 | State::FinWait2
        );
        if !payload.is_empty() || fin {
            if self.orphan && takes_data {
                let fresh = seq_lt(self.rcv_nxt, h.seq.wrapping_add(payload.len() as u32));
                if fresh && !payload.is_empty() {
                    self.send_rst(stats, out);
                    return Fate::Remove;
                }
            }
            if takes_data && !payload.is_empty() {
                self.receive_data(h.seq, payload, stats, out);
            }
            if fin && self.peer_fin.is_none() && takes_data {
                let at = h.seq.wrapping_add(payload.len() as u32);
                if seq_le(self.rcv_nxt, at) {
                    self.peer_fin = Some(at);
                }
            }
            if self.peer_fin == Some(self.rcv_nxt) {
                self.take_fin(now, config, out);
            } else if fin && self.state == State::TimeWait {
                // A retransmitted FIN: our ACK was lost; TIME-WAIT starts again.
                self.linger_until = Some(now + config.time_wait);
            }
            self.send_ack(stats, out);
        }
        fate
    }

    /// Processes the ACK field in a synchronized state. `Some` ends the segment's processing.
    fn on_ack(
        &mut self,
        now: Instant,
        h: TcpHeader,
        payload_len: usize,
        config: &TcpConfig,
        stats: &mut TcpStats,
        out: &mut Vec<TcpOut>,
    ) -> Option<Fate> {
        let a = h.ack;
        if seq_lt(self.snd_max, a) {
            // Acknowledges something never sent.
            self.send_ack(stats, out);
            stats.dropped += 1;
            return Some(Fate::Keep);
        }
        if seq_lt(self.snd_una, a) {
            self.snd_una = a;
            if seq_lt(self.snd_nxt, a) {
                self.snd_nxt = a;
            }
            let acked = distance(self.send_base, a).min(self.send.len());
            self.send.drain(..acked);
            self.send_base = self.send_base.wrapping_add(acked as u32);
            if self.refused && self.send.len() <= MAX_SEND_BUFFER / 2 {
                self.refused = false;
                if let Some(s) = self.socket.filter(|_| !self.orphan) {
                    out.push(TcpOut::Outcome(s, SocketOutcome::Writable));
                }
            }
            match self.timed {
                Some((end, at)) if seq_le(end, a) => {
                    self.timed = None;
                    self.sample_rtt(now.saturating_duration_since(at), config);
                }
                _ => {
                    // New data acknowledged: undo the backoff (as Linux does).
                    if let Some(srtt) = self.srtt {
                        let rto = srtt + (self.rttvar * 4).max(Duration::from_millis(1));
                        self.rto = rto.clamp(config.min_rto, config.max_rto);
                    }
                }
            }
            self.retries = 0;
            self.dup_acks = 0;
            self.rtx_at = (self.snd_una != self.snd_max).then(|| now + self.rto);
            if self.fin_acked() {
                match self.state {
                    State::FinWait1 => {
                        self.state = State::FinWait2;
                        if self.orphan {
                            self.linger_until = Some(now + config.time_wait);
                        }
                    }
                    State::Closing => self.enter_time_wait(now, config),
                    State::LastAck => return Some(Fate::Remove),
                    _ => {}
                }
            }
            self.push(now, stats, out);
        } else if a == self.snd_una
            && payload_len == 0
            && !h.has(TcpHeader::FIN)
            && self.snd_una != self.snd_max
        {
            self.dup_acks += 1;
            if self.dup_acks == 3 {
                // Fast retransmit of the first unacknowledged segment.
                let n = MSS.min(self.send.len());
                if n > 0 {
                    let payload: Vec<u8> = self.send.range(..n).copied().collect();
                    stats.retransmitted += 1;
                    self.timed = None;
                    self.emit(TcpHeader::ACK, self.send_base, payload, stats, out);
                }
            }
        }
        None
    }

    fn on_syn_sent(
        &mut self,
        h: TcpHeader,
        config: &TcpConfig,
        stats: &mut TcpStats,
        out: &mut Vec<TcpOut>,
    ) -> Fate {
        let has_ack = h.has(TcpHeader::ACK);
        let acceptable = has_ack && h.ack == self.iss.wrapping_add(1);
        if has_ack && !acceptable {
            if !h.has(TcpHeader::RST) {
                self.emit(TcpHeader::RST, h.ack, Vec::new(), stats, out);
            }
            stats.dropped += 1;
            return Fate::Keep;
        }
        if h.has(TcpHeader::RST) {
            if !acceptable {
                stats.dropped += 1;
                return Fate::Keep;
            }
            stats.refused += 1;
            self.fail(OpKind::Connect, IoError::ConnectionRefused, out);
            return Fate::Remove;
        }
        if !h.has(TcpHeader::SYN) {
            stats.dropped += 1;
            return Fate::Keep;
        }
        self.irs = h.seq;
        self.rcv_nxt = h.seq.wrapping_add(1);
        if acceptable {
            self.snd_una = h.ack;
            self.state = State::Established;
            self.retries = 0;
            self.rtx_at = None;
            self.rto = config.initial_rto;
            stats.connected += 1;
            self.report(
                SocketOutcome::Connected {
                    local: self.local.into(),
                    remote: self.remote.into(),
                },
                out,
            );
            self.send_ack(stats, out);
        } else {
            // Simultaneous open: both SYNs crossed.
            self.state = State::SynRcvd;
            self.send_syn(stats, out);
        }
        Fate::Keep
    }

    fn on_reset(&mut self, stats: &mut TcpStats, out: &mut Vec<TcpOut>) -> Fate {
        match self.state {
            State::SynRcvd if self.listener.is_none() && !self.orphan => {
                stats.refused += 1;
                self.fail(OpKind::Connect, IoError::ConnectionRefused, out);
            }
            // (FIN-WAIT and later with a socket: the machine shut down and still holds it.)
            State::Established
            | State::CloseWait
            | State::FinWait1
            | State::FinWait2
            | State::Closing
            | State::LastAck
                if self.socket.is_some() =>
            {
                stats.reset += 1;
                self.fail(OpKind::Receive, IoError::ConnectionReset, out);
            }
            _ => {}
        }
        Fate::Remove
    }

    fn fail(&self, op: OpKind, error: IoError, out: &mut Vec<TcpOut>) {
        self.report(
            SocketOutcome::Failed {
                op,
                destination: None,
                error,
            },
            out,
        );
    }

    /// The retransmission or linger deadline passed.
    fn on_timeout(
        &mut self,
        now: Instant,
        config: &TcpConfig,
        stats: &mut TcpStats,
        out: &mut Vec<TcpOut>,
    ) -> Fate {
        if self.linger_until.is_some_and(|t| t <= now) {
            return Fate::Remove;
        }
        if self.rtx_at.is_none_or(|t| t > now) {
            return Fate::Keep;
        }
        self.rtx_at = None;
        self.retries += 1;
        let limit = match self.state {
            State::SynSent => config.syn_retries,
            State::SynRcvd => config.synack_retries,
            _ => config.data_retries,
        };
        if self.retries > limit {
            stats.timed_out += 1;
            let op = match self.state {
                State::SynSent | State::SynRcvd => OpKind::Connect,
                _ => OpKind::Receive,
            };
            if self.listener.is_none() {
                self.fail(op, IoError::TimedOut, out);
            }
            return Fate::Remove;
        }
        self.rto = (self.rto * 2).min(config.max_rto);
        self.timed = None;
        self.dup_acks = 0;
        match self.state {
            State::SynSent | State::SynRcvd => {
                stats.retransmitted += 1;
                self.send_syn(stats, out);
                self.rtx_at = Some(now + self.rto);
            }
            _ => {
                // Go back N: everything from the first unacknowledged byte again (`push` counts
                // each segment as retransmitted).
                self.snd_nxt = self.snd_una;
                self.push(now, stats, out);
            }
        }
        Fate::Keep
    }
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

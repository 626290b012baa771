//! One connection's state machine: handshake, send queue and retransmission, in-order delivery,
//! close and reset.

use core::net::SocketAddrV4;
use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};

use p2pd_proto::{Instant, IoError, OpKind, SocketId, SocketOutcome};

use super::segment::{distance, seq_le, seq_lt, Segment, TcpHeader};
use super::{TcpConfig, TcpOut, TcpStats, MAX_SEND_BUFFER, MSS, WINDOW};

/// Most out-of-order bytes kept per connection.
const MAX_OUT_OF_ORDER: usize = 2 * WINDOW;
/// Most bytes kept for a connection nobody has accepted yet.
const MAX_PENDING: usize = WINDOW;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum State {
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

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) local: SocketAddrV4,
    pub(super) remote: SocketAddrV4,
    pub(super) state: State,
    /// The machine's handle; `None` before accept and after close.
    pub(super) socket: Option<SocketId>,
    /// The listener of a passive connection not yet accepted.
    pub(super) listener: Option<SocketId>,
    /// The machine closed its socket.
    pub(super) orphan: bool,
    /// A transmit was refused (the send buffer was full): every later one is refused too until
    /// `Writable` is reported (once the buffer is down to half).
    pub(super) refused: bool,
    pub(super) iss: u32,
    pub(super) snd_una: u32,
    pub(super) snd_nxt: u32,
    pub(super) snd_max: u32,
    /// Queued bytes, the first at sequence number `send_base`.
    pub(super) send: VecDeque<u8>,
    pub(super) send_base: u32,
    pub(super) fin_queued: bool,
    pub(super) irs: u32,
    pub(super) rcv_nxt: u32,
    /// Out-of-order data by offset from `irs`.
    pub(super) ooo: BTreeMap<u32, Vec<u8>>,
    pub(super) ooo_bytes: usize,
    /// Where the peer's FIN sits, when it arrived ahead of data.
    pub(super) peer_fin: Option<u32>,
    pub(super) pending: Vec<u8>,
    pub(super) pending_closed: bool,
    pub(super) rto: Duration,
    pub(super) srtt: Option<Duration>,
    pub(super) rttvar: Duration,
    pub(super) retries: u32,
    pub(super) dup_acks: u32,
    pub(super) rtx_at: Option<Instant>,
    pub(super) timed: Option<(u32, Instant)>,
    pub(super) linger_until: Option<Instant>,
}

/// What a connection's input left it as.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Fate {
    Keep,
    /// A passive connection completed its handshake.
    Established,
    /// Gone: remove it.
    Remove,
}

impl Conn {
    pub(super) fn new(
        local: SocketAddrV4,
        remote: SocketAddrV4,
        iss: u32,
        config: &TcpConfig,
    ) -> Self {
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

    pub(super) fn deadline(&self) -> Option<Instant> {
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

    pub(super) fn send_syn(&self, stats: &mut TcpStats, out: &mut Vec<TcpOut>) {
        let flags = match self.state {
            State::SynSent => TcpHeader::SYN,
            _ => TcpHeader::SYN | TcpHeader::ACK,
        };
        self.emit(flags, self.iss, Vec::new(), stats, out);
    }

    fn send_ack(&self, stats: &mut TcpStats, out: &mut Vec<TcpOut>) {
        self.emit(TcpHeader::ACK, self.snd_nxt, Vec::new(), stats, out);
    }

    pub(super) fn send_rst(&self, stats: &mut TcpStats, out: &mut Vec<TcpOut>) {
        self.emit(TcpHeader::RST, self.snd_max, Vec::new(), stats, out);
    }

    fn report(&self, outcome: SocketOutcome, out: &mut Vec<TcpOut>) {
        if let Some(s) = self.socket {
            out.push(TcpOut::Outcome(s, outcome));
        }
    }

    /// Sends queued data (and the FIN once everything is sent) within the window; arms the timer.
    pub(super) fn push(&mut self, now: Instant, stats: &mut TcpStats, out: &mut Vec<TcpOut>) {
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
    pub(super) fn on_segment(
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
    pub(super) fn on_timeout(
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

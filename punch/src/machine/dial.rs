//! The socket pool and dialing: listeners, timed connects and retries, accepts, and the
//! secure-channel handshake on every connection that elects one.

use core::net::SocketAddr;
use core::time::Duration;

use p2pd_proto::{
    BindOptions, DropReason, Instant, IoError, OpKind, SocketId, SocketOp, SocketOutcome,
    Transport, Verdict,
};

use p2pd_channel::{Channel, Role as ChannelRole};

use super::{Phase, PunchEvent, PunchFailure, Puncher};
use crate::message::PunchCandidate;

/// The state of one armed round.
#[derive(Clone, Debug)]
pub(super) struct Punch {
    pub(super) deadline: Instant,
    /// The latest the round may last while a follower waits for the leader's last handshake
    /// message: the window's end plus `chosen_timeout`.
    pub(super) latest: Instant,
    /// (own port, peer endpoint, next connect time) of every pair; `None` while a connect runs.
    pub(super) pairs: Vec<Pair>,
    pub(super) connects: u32,
    pub(super) refused: u32,
    pub(super) failed: u32,
    pub(super) came_up: u32,
}

#[derive(Clone, Debug)]
pub(super) struct Pair {
    pub(super) port: u16,
    pub(super) target: SocketAddr,
    /// When to connect next (after binding); `None` while an attempt is in flight.
    pub(super) next: Option<Instant>,
    /// The socket of the current attempt.
    pub(super) socket: Option<SocketId>,
}

/// A socket the machine owns.
#[derive(Debug)]
pub(super) struct Sock {
    pub(super) id: SocketId,
    pub(super) port: u16,
    pub(super) kind: SockKind,
}

#[derive(Debug)]
pub(super) enum SockKind {
    /// A listener (bound, then listening) with its outstanding accept id.
    Listener {
        bound: bool,
        accepting: Option<SocketId>,
    },
    /// An outstanding accept's future stream.
    Accepting,
    /// A dialing socket of pair `pair` (bound or binding, then connecting).
    Dialing {
        pair: usize,
        bound: bool,
        connecting: bool,
    },
    /// A connection that came up: its secure channel's handshake in progress.
    Stream {
        local: SocketAddr,
        remote: SocketAddr,
        channel: Box<Channel>,
    },
}

/// The first bytes of every punched connection's channel context (then the session id and the
/// round), so a handshake belongs to one round of one session.
const CONTEXT_PREFIX: &[u8] = b"p2pd-punch";

impl Puncher {
    // ----- punching -----

    pub(super) fn arm(
        &mut self,
        now: Instant,
        meet: Instant,
        uncertainty: Duration,
        ours: Vec<PunchCandidate>,
        peer: Vec<PunchCandidate>,
    ) {
        let mut ports: Vec<u16> = Vec::new();
        for c in &ours {
            if !ports.contains(&c.local_port) {
                ports.push(c.local_port);
            }
        }
        let mut pairs = Vec::new();
        for &port in &ports {
            for p in &peer {
                if p.external.is_ipv4() == self.config.bind_ip.is_ipv4()
                    && !pairs
                        .iter()
                        .any(|x: &Pair| x.port == port && x.target == p.external)
                {
                    pairs.push(Pair {
                        port,
                        target: p.external,
                        next: None,
                        socket: None,
                    });
                }
            }
        }
        // Listeners plus the first socket of every pair must fit.
        let budget = self.config.max_sockets.saturating_sub(ports.len());
        pairs.truncate(budget.max(1));
        let deadline = meet.saturating_add(self.config.punch_window);
        self.phase = Phase::Punching(Box::new(Punch {
            deadline,
            latest: deadline.saturating_add(self.config.chosen_timeout),
            pairs,
            connects: 0,
            refused: 0,
            failed: 0,
            came_up: 0,
        }));
        for port in ports {
            self.open_listener(port);
        }
        let n = self.punch_pairs();
        for i in 0..n {
            let at = meet.saturating_add(
                self.config
                    .connect_spacing
                    .saturating_mul(u32::try_from(i).unwrap_or(u32::MAX)),
            );
            self.open_dialer(i, at);
        }
        self.events.push_back(PunchEvent::Armed {
            round: self.round,
            meet,
            uncertainty,
        });
        let _ = now;
    }

    fn punch_pairs(&self) -> usize {
        match &self.phase {
            Phase::Punching(p) => p.pairs.len(),
            _ => 0,
        }
    }

    fn bind_op(&self, socket: SocketId, port: u16) -> SocketOp {
        SocketOp::Bind {
            socket,
            transport: Transport::Tcp,
            local: SocketAddr::new(self.config.bind_ip, port),
            options: BindOptions {
                reuse_address: true,
                reuse_port: true,
                device: None,
            },
        }
    }

    fn new_socket_id(&mut self) -> Option<SocketId> {
        if self.sockets.len() >= self.config.max_sockets {
            return None;
        }
        let span = self.config.socket_ids.max(1);
        for _ in 0..span {
            let id = SocketId(
                self.config
                    .socket_base
                    .0
                    .wrapping_add(self.next_socket.checked_rem(span).unwrap_or(0)),
            );
            self.next_socket = self.next_socket.wrapping_add(1);
            if !self.sockets.iter().any(|s| s.id == id) {
                return Some(id);
            }
        }
        None
    }

    fn open_listener(&mut self, port: u16) {
        let Some(id) = self.new_socket_id() else {
            return;
        };
        self.open_socket(
            id,
            port,
            SockKind::Listener {
                bound: false,
                accepting: None,
            },
        );
    }

    /// Asks for socket `id` bound to `port` and keeps it as `kind`.
    fn open_socket(&mut self, id: SocketId, port: u16, kind: SockKind) {
        self.ops.push_back(self.bind_op(id, port));
        self.stats.sockets_opened = self.stats.sockets_opened.saturating_add(1);
        self.sockets.push(Sock { id, port, kind });
    }

    fn open_dialer(&mut self, pair: usize, at: Instant) {
        let Phase::Punching(p) = &self.phase else {
            return;
        };
        let Some(port) = p.pairs.get(pair).map(|x| x.port) else {
            return;
        };
        let Some(id) = self.new_socket_id() else {
            // No free socket (or id) now: try again later rather than stay due, which would make
            // the caller spin.
            let retry = self.config.retry_interval.max(Duration::from_millis(1));
            if let Phase::Punching(p) = &mut self.phase {
                if let Some(x) = p.pairs.get_mut(pair) {
                    x.next = Some(at.saturating_add(retry));
                    x.socket = None;
                }
            }
            return;
        };
        self.open_socket(
            id,
            port,
            SockKind::Dialing {
                pair,
                bound: false,
                connecting: false,
            },
        );
        if let Phase::Punching(p) = &mut self.phase {
            if let Some(x) = p.pairs.get_mut(pair) {
                x.next = Some(at);
                x.socket = Some(id);
            }
        }
    }

    /// Fires due connects, retries, and the window's end.
    pub(super) fn punch_timers(&mut self, now: Instant) {
        let Phase::Punching(p) = &self.phase else {
            return;
        };
        if now >= p.deadline {
            let reason = PunchFailure::NoConnection {
                connects: p.connects,
                refused: p.refused,
                failed: p.failed,
                came_up: p.came_up,
            };
            self.round_failed(now, reason);
            return;
        }
        let due: Vec<(usize, Option<SocketId>)> = p
            .pairs
            .iter()
            .enumerate()
            .filter(|(_, x)| x.next.is_some_and(|t| t <= now))
            .map(|(i, x)| (i, x.socket))
            .collect();
        for (pair, socket) in due {
            match socket {
                // A bound socket waiting for its time: connect.
                Some(id) => self.try_connect(pair, id),
                // A retry: a fresh socket, connected once bound.
                None => self.open_dialer(pair, now),
            }
        }
    }

    fn try_connect(&mut self, pair: usize, id: SocketId) {
        let Some(sock) = self.sockets.iter_mut().find(|s| s.id == id) else {
            return;
        };
        let SockKind::Dialing {
            bound, connecting, ..
        } = &mut sock.kind
        else {
            return;
        };
        if !*bound || *connecting {
            return;
        }
        *connecting = true;
        let Phase::Punching(p) = &mut self.phase else {
            return;
        };
        let Some(x) = p.pairs.get_mut(pair) else {
            return;
        };
        x.next = None;
        p.connects = p.connects.saturating_add(1);
        self.stats.connects = self.stats.connects.saturating_add(1);
        self.ops.push_back(SocketOp::Connect {
            socket: id,
            remote: x.target,
        });
    }

    pub(super) fn on_outcome(&mut self, now: Instant, index: usize, outcome: SocketOutcome) {
        let Some(sock) = self.sockets.get_mut(index) else {
            return;
        };
        let id = sock.id;
        match (&mut sock.kind, outcome) {
            (SockKind::Listener { bound, .. }, SocketOutcome::Bound { .. }) => {
                *bound = true;
                self.ops.push_back(SocketOp::Listen {
                    socket: id,
                    backlog: 8,
                });
                self.accept_next(index);
            }
            (SockKind::Dialing { bound, pair, .. }, SocketOutcome::Bound { .. }) => {
                *bound = true;
                let pair = *pair;
                let due = match &self.phase {
                    Phase::Punching(p) => p
                        .pairs
                        .get(pair)
                        .and_then(|x| x.next)
                        .is_some_and(|t| t <= now),
                    _ => false,
                };
                if due {
                    self.try_connect(pair, id);
                }
            }
            (SockKind::Dialing { .. }, SocketOutcome::Connected { local, remote })
            | (SockKind::Accepting, SocketOutcome::Accepted { local, remote }) => {
                let accepted = matches!(sock.kind, SockKind::Accepting);
                self.came_up(now, index, local, remote);
                if accepted {
                    if let Some(listener) = self.listener_of(id) {
                        self.accept_next(listener);
                    }
                }
            }
            (SockKind::Dialing { pair, .. }, SocketOutcome::Failed { op, error, .. }) => {
                let pair = *pair;
                if let Phase::Punching(p) = &mut self.phase {
                    if op == OpKind::Connect && error == IoError::ConnectionRefused {
                        p.refused = p.refused.saturating_add(1);
                    } else {
                        p.failed = p.failed.saturating_add(1);
                    }
                    if let Some(x) = p.pairs.get_mut(pair) {
                        x.socket = None;
                        x.next = Some(now.saturating_add(self.config.retry_interval));
                    }
                }
                self.close_socket(id);
                if op == OpKind::Bind && !self.any_bound() {
                    if let Phase::Punching(p) = &self.phase {
                        if p.pairs.iter().all(|x| x.socket.is_none()) {
                            self.round_failed(now, PunchFailure::NoSockets(error));
                        }
                    }
                }
            }
            (SockKind::Listener { .. }, SocketOutcome::Failed { .. })
            | (SockKind::Accepting, SocketOutcome::Failed { .. }) => {
                self.close_socket(id);
            }
            (SockKind::Stream { .. }, SocketOutcome::PeerClosed)
            | (SockKind::Stream { .. }, SocketOutcome::Failed { .. }) => {
                self.close_socket(id);
            }
            _ => {}
        }
    }

    /// Whether `id` is a dialing socket whose bind has not completed yet.
    pub(super) fn is_binding(&self, id: SocketId) -> bool {
        self.sockets
            .iter()
            .any(|s| s.id == id && matches!(s.kind, SockKind::Dialing { bound: false, .. }))
    }

    fn any_bound(&self) -> bool {
        self.sockets.iter().any(|s| match s.kind {
            SockKind::Listener { bound, .. } | SockKind::Dialing { bound, .. } => bound,
            SockKind::Accepting | SockKind::Stream { .. } => true,
        })
    }

    /// The listener whose accept produced `stream`.
    fn listener_of(&mut self, stream: SocketId) -> Option<usize> {
        self.sockets.iter().position(
            |s| matches!(s.kind, SockKind::Listener { accepting: Some(a), .. } if a == stream),
        )
    }

    fn accept_next(&mut self, listener: usize) {
        let Some(id) = self.new_socket_id() else {
            return;
        };
        let Some(sock) = self.sockets.get_mut(listener) else {
            return;
        };
        let (listener_id, port) = (sock.id, sock.port);
        if let SockKind::Listener { accepting, .. } = &mut sock.kind {
            *accepting = Some(id);
        } else {
            return;
        }
        self.ops.push_back(SocketOp::Accept {
            listener: listener_id,
            socket: id,
        });
        self.stats.sockets_opened = self.stats.sockets_opened.saturating_add(1);
        self.sockets.push(Sock {
            id,
            port,
            kind: SockKind::Accepting,
        });
    }

    /// A connection came up: its secure channel starts (the leader initiates, expecting the
    /// peer; the follower responds, accepting only the peer), bound to this session and round.
    fn came_up(&mut self, now: Instant, index: usize, local: SocketAddr, remote: SocketAddr) {
        let Some(peer) = self.peer else {
            return;
        };
        let role = if self.is_leader() {
            ChannelRole::Initiator { expect: peer }
        } else {
            ChannelRole::Responder { expect: Some(peer) }
        };
        let mut context = Vec::with_capacity(CONTEXT_PREFIX.len().saturating_add(17));
        context.extend_from_slice(CONTEXT_PREFIX);
        context.extend_from_slice(&self.session.0);
        context.push(self.round);
        let seed = self.seeds.next_seed();
        let channel = Channel::new(self.config.channel, &self.keys, role, &context, seed, now);
        let Some(sock) = self.sockets.get_mut(index) else {
            return;
        };
        let id = sock.id;
        match channel {
            Ok(channel) => {
                sock.kind = SockKind::Stream {
                    local,
                    remote,
                    channel: Box::new(channel),
                };
                if let Phase::Punching(p) = &mut self.phase {
                    p.came_up = p.came_up.saturating_add(1);
                }
                self.flush_channel(index);
            }
            // The configuration is out of range (checked in `Puncher::new`): nothing to elect.
            Err(_) => self.close_socket(id),
        }
    }

    /// Whether we lead the election (the smaller node id).
    fn is_leader(&self) -> bool {
        self.peer.is_some_and(|p| self.config.node_id < p)
    }

    /// Queues the handshake bytes the connection's channel has for the peer.
    fn flush_channel(&mut self, index: usize) {
        let Some(Sock {
            id,
            kind: SockKind::Stream {
                remote, channel, ..
            },
            ..
        }) = self.sockets.get_mut(index)
        else {
            return;
        };
        let bytes = channel.pending_transmit().to_vec();
        channel.consume_transmit(bytes.len());
        if !bytes.is_empty() {
            self.transmits.push_back((*id, *remote, bytes));
        }
    }

    pub(super) fn on_stream_bytes(&mut self, now: Instant, index: usize, data: &[u8]) -> Verdict {
        let punching = matches!(self.phase, Phase::Punching(_));
        let Some(sock) = self.sockets.get_mut(index) else {
            return Verdict::NotMine;
        };
        let id = sock.id;
        let SockKind::Stream { channel, .. } = &mut sock.kind else {
            return Verdict::Dropped(DropReason::Unexpected);
        };
        if !punching {
            return Verdict::Dropped(DropReason::Unexpected);
        }
        channel.handle_input(now, data);
        if channel.is_ended() {
            // A stranger, the wrong peer, another session, tampered bytes: this connection
            // proves nothing.
            self.stats.channel_failures = self.stats.channel_failures.saturating_add(1);
            self.close_socket(id);
            return Verdict::Dropped(DropReason::Unexpected);
        }
        if channel.is_established() {
            // The peer proved itself on this connection. The leader's last handshake message
            // stays in the channel, like data that came right behind the follower's: the new
            // owner ([`Puncher::take_channel`]) sends it.
            self.win(index);
            return Verdict::Consumed;
        }
        let answered = matches!(channel.role(), ChannelRole::Responder { .. })
            && !channel.pending_transmit().is_empty();
        self.flush_channel(index);
        if answered {
            // The leader's last message (which also says it chose this connection) is on the way
            // (TCP retransmits it). Do not give up on the round while waiting for it.
            self.wait_for_chosen(now);
        }
        Verdict::Consumed
    }

    /// A follower that answered a leader's handshake keeps the round open for
    /// [`PunchConfig::chosen_timeout`] more (at most that long past the window), so a leader's
    /// last message delayed by loss is not met by a closed round (which would leave the leader
    /// alone with a connection).
    ///
    /// [`PunchConfig::chosen_timeout`]: super::PunchConfig::chosen_timeout
    fn wait_for_chosen(&mut self, now: Instant) {
        let until = now.saturating_add(self.config.chosen_timeout);
        if let Phase::Punching(p) = &mut self.phase {
            let until = until.min(p.latest);
            if p.deadline < until {
                p.deadline = until;
            }
        }
    }

    /// The connection at `index` won: it leaves our table with its channel (the caller's now,
    /// through [`Puncher::take_channel`]), and every other socket is closed.
    fn win(&mut self, index: usize) {
        if index >= self.sockets.len() {
            return;
        }
        let sock = self.sockets.remove(index);
        let SockKind::Stream {
            local,
            remote,
            channel,
        } = sock.kind
        else {
            return;
        };
        let Some(peer) = channel.peer() else {
            return;
        };
        self.close_all_sockets();
        self.phase = Phase::Finished;
        self.won = Some((sock.id, channel));
        self.events.push_back(PunchEvent::Connected {
            socket: sock.id,
            local,
            remote,
            peer,
            round: self.round,
        });
    }

    // ----- sockets -----

    fn close_socket(&mut self, id: SocketId) {
        if let Some(pos) = self.sockets.iter().position(|s| s.id == id) {
            let sock = self.sockets.remove(pos);
            // An outstanding accept's id was never opened by the runtime: the listener's close
            // ends it. Everything else gets exactly one Close.
            if !matches!(sock.kind, SockKind::Accepting) {
                self.ops.push_back(SocketOp::Close { socket: id });
                self.stats.sockets_closed = self.stats.sockets_closed.saturating_add(1);
            }
            // Transmits still queued for it are dropped.
            self.transmits.retain(|(s, _, _)| *s != id);
        }
    }

    pub(super) fn close_all_sockets(&mut self) {
        let ids: Vec<SocketId> = self.sockets.iter().map(|s| s.id).collect();
        // Accepting ids first, so that they are removed without a Close before their listener.
        for id in ids {
            self.close_socket(id);
        }
    }

    pub(super) fn report_closed(&mut self) {
        if !self.closed_reported {
            self.closed_reported = true;
            self.events.push_back(PunchEvent::Closed);
        }
    }
}

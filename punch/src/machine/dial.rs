//! The socket pool and dialing: listeners, timed connects and retries, accepts, and the hello
//! handshake that elects one connection.

use core::net::SocketAddr;
use core::time::Duration;

use p2pd_proto::{
    BindOptions, DropReason, Instant, IoError, OpKind, SocketId, SocketOp, SocketOutcome,
    Transport, Verdict,
};

use super::{Phase, PunchEvent, PunchFailure, Puncher};
use crate::message::{Hello, PunchCandidate, CHOSEN, HELLO_LEN};

/// The state of one armed round.
#[derive(Clone, Debug)]
pub(super) struct Punch {
    pub(super) deadline: Instant,
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
#[derive(Clone, Debug)]
pub(super) struct Sock {
    pub(super) id: SocketId,
    pub(super) port: u16,
    pub(super) kind: SockKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// A connection that came up: handshake in progress.
    Stream {
        local: SocketAddr,
        remote: SocketAddr,
        rx: Vec<u8>,
        verified: bool,
    },
}

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
                sock.kind = SockKind::Stream {
                    local,
                    remote,
                    rx: Vec::new(),
                    verified: false,
                };
                if let Phase::Punching(p) = &mut self.phase {
                    p.came_up = p.came_up.saturating_add(1);
                }
                self.send_hello(id, remote);
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

    fn send_hello(&mut self, socket: SocketId, remote: SocketAddr) {
        let hello = Hello {
            session: self.session,
            round: self.round,
            node_id: self.config.node_id,
        };
        self.transmits
            .push_back((socket, remote, hello.encode().to_vec()));
    }

    pub(super) fn on_stream_bytes(&mut self, now: Instant, index: usize, data: &[u8]) -> Verdict {
        let leader = self.peer.is_some_and(|p| self.config.node_id < p);
        let (session, round, peer) = (self.session, self.round, self.peer);
        let Some(sock) = self.sockets.get_mut(index) else {
            return Verdict::NotMine;
        };
        let id = sock.id;
        let SockKind::Stream {
            local,
            remote,
            rx,
            verified,
        } = &mut sock.kind
        else {
            return Verdict::Dropped(DropReason::Unexpected);
        };
        if !matches!(self.phase, Phase::Punching(_)) {
            return Verdict::Dropped(DropReason::Unexpected);
        }
        // Keep at most the hello and the marker; anything after them is application data.
        rx.extend_from_slice(data);
        let (local, remote) = (*local, *remote);
        if !*verified {
            if rx.len() < HELLO_LEN {
                return Verdict::Consumed;
            }
            let ok = rx
                .get(..HELLO_LEN)
                .and_then(Hello::decode)
                .is_some_and(|h| {
                    h.session == session && h.round == round && Some(h.node_id) == peer
                });
            if !ok {
                self.close_socket(id);
                return Verdict::Dropped(DropReason::Unexpected);
            }
            *verified = true;
            if leader {
                let leftover = rx.get(HELLO_LEN..).unwrap_or_default().to_vec();
                self.transmits.push_back((id, remote, vec![CHOSEN]));
                self.win(now, id, local, remote, leftover);
                return Verdict::Consumed;
            }
            // The leader may have chosen this connection already: its marker is on the way
            // (TCP retransmits it). Do not give up on the round while waiting for it.
            self.wait_for_chosen(now);
        }
        let Some(Sock {
            kind: SockKind::Stream { rx, .. },
            ..
        }) = self.sockets.get(index)
        else {
            return Verdict::Consumed;
        };
        // Follower: the marker follows the hello.
        match rx.get(HELLO_LEN) {
            None => Verdict::Consumed,
            Some(&CHOSEN) => {
                let leftover = rx
                    .get(HELLO_LEN.saturating_add(1)..)
                    .unwrap_or_default()
                    .to_vec();
                self.win(now, id, local, remote, leftover);
                Verdict::Consumed
            }
            Some(_) => {
                self.close_socket(id);
                Verdict::Dropped(DropReason::Unexpected)
            }
        }
    }

    /// A follower with a verified connection keeps the round open for at least
    /// [`PunchConfig::chosen_timeout`] more, so a leader's marker delayed by loss is not met by a
    /// closed round (which would leave the leader alone with a connection).
    ///
    /// [`PunchConfig::chosen_timeout`]: super::PunchConfig::chosen_timeout
    fn wait_for_chosen(&mut self, now: Instant) {
        let until = now.saturating_add(self.config.chosen_timeout);
        if let Phase::Punching(p) = &mut self.phase {
            if p.deadline < until {
                p.deadline = until;
            }
        }
    }

    fn win(
        &mut self,
        _now: Instant,
        winner: SocketId,
        local: SocketAddr,
        remote: SocketAddr,
        leftover: Vec<u8>,
    ) {
        // The winner leaves our table: it is the caller's now.
        self.sockets.retain(|s| s.id != winner);
        self.close_all_sockets();
        self.phase = Phase::Finished;
        self.events.push_back(PunchEvent::Connected {
            socket: winner,
            local,
            remote,
            leftover,
            round: self.round,
        });
    }

    // ----- sockets -----

    fn close_socket(&mut self, id: SocketId) {
        if let Some(pos) = self.sockets.iter().position(|s| s.id == id) {
            let sock = self.sockets.remove(pos);
            // An outstanding accept's id was never opened by the runtime: the listener's close
            // ends it. Everything else gets exactly one Close.
            if sock.kind != SockKind::Accepting {
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

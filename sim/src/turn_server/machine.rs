//! The machine contract for [`TurnServer`], and its place in the simulator.

use p2pd_proto::stun::StreamFramer;
use p2pd_proto::{
    DropReason, Instant, IoError, Machine, OpKind, SocketId, SocketOp, SocketOutcome, Transmit,
    Verdict,
};

use super::bump;
use super::{
    Client, EndReason, PeerState, TurnServer, TurnServerConfig, TurnServerEvent, LISTENER,
    MAX_MESSAGE_LEN,
};

/// Most accepts remembered after their listener closed (an `Accepted` for one is closed).
const MAX_ORPHANS: usize = 1024;

impl TurnServer {
    fn listener_result(&mut self, outcome: SocketOutcome) {
        match outcome {
            SocketOutcome::Bound { local } if !self.closed && !self.listening => {
                self.ops.push_back(SocketOp::Listen {
                    socket: LISTENER,
                    backlog: self.config.backlog,
                });
                self.listening = true;
                self.push_event(TurnServerEvent::Listening { local });
                self.fill_accepts();
            }
            SocketOutcome::Failed { op, error, .. }
                if !self.closed && (op == OpKind::Bind || op == OpKind::Listen) =>
            {
                if op == OpKind::Bind {
                    self.listener_open = false;
                }
                self.push_event(TurnServerEvent::ListenFailed { error });
                self.close(self.now);
            }
            _ => {}
        }
    }

    /// The outcome of an accept asked on `listener`, named `socket`.
    fn accept_result(&mut self, listener: SocketId, socket: SocketId, outcome: SocketOutcome) {
        match outcome {
            SocketOutcome::Accepted { remote, .. } => {
                if self.closed {
                    self.ops.push_back(SocketOp::Close { socket });
                } else if listener == LISTENER {
                    bump(&mut self.stats.accepted);
                    let idle = self.now.saturating_add(self.config.idle_timeout);
                    self.clients.insert(
                        socket,
                        Client {
                            remote,
                            framer: StreamFramer::new(MAX_MESSAGE_LEN),
                            spliced: None,
                            eof: false,
                            idle_deadline: Some(idle),
                        },
                    );
                    self.fill_accepts();
                } else {
                    self.peer_accepted(listener, socket, remote);
                }
            }
            SocketOutcome::Failed {
                op: OpKind::Accept, ..
            } => {
                // The slot stays empty: re-asking could spin on a broken listener.
                if listener == LISTENER {
                    self.accept_broken = true;
                } else if let Some(c) = self.listeners.get(&listener).copied() {
                    if let Some(a) = self.allocations.get_mut(&c) {
                        a.accepting = false;
                        a.accept_broken = true;
                    }
                }
            }
            _ => {
                // Not an answer to the accept: it stays outstanding.
                self.accepts.insert(socket, listener);
            }
        }
    }

    fn client_result(&mut self, socket: SocketId, outcome: SocketOutcome) {
        let spliced = self.clients.get(&socket).and_then(|c| c.spliced);
        match (spliced, outcome) {
            (_, SocketOutcome::Writable) => {}
            (Some(id), SocketOutcome::PeerClosed) => self.client_eof(socket, id),
            (
                _,
                SocketOutcome::Failed {
                    op: OpKind::Send,
                    error: IoError::WouldBlock,
                    ..
                },
            ) => {
                bump(&mut self.stats.slow_closed);
                self.close_client(socket);
            }
            (_, SocketOutcome::PeerClosed | SocketOutcome::Failed { .. }) => {
                self.close_client(socket)
            }
            _ => {}
        }
    }

    /// Moves the outstanding accepts of closed listeners aside.
    pub(super) fn orphan_accepts(&mut self, listener: SocketId) {
        let gone: Vec<SocketId> = self
            .accepts
            .iter()
            .filter(|(_, l)| **l == listener)
            .map(|(s, _)| *s)
            .collect();
        for s in gone {
            self.accepts.remove(&s);
            if self.orphans.len() >= MAX_ORPHANS {
                self.orphans.pop_first();
            }
            self.orphans.insert(s);
        }
    }
}

impl Machine for TurnServer {
    type Event = TurnServerEvent;

    /// Bytes on a connection to the listen address or on a peer connection.
    fn handle_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        self.now = now;
        if self.closed {
            return Verdict::Dropped(DropReason::Closed);
        }
        if let Some(client) = self.clients.get(&socket) {
            match client.spliced {
                Some(id) => self.relay_to_peer(id, data),
                None => self.client_bytes(socket, data),
            }
        } else if let Some(id) = self.peer_sockets.get(&socket).copied() {
            self.peer_bytes(id, data);
        } else {
            return Verdict::NotMine;
        }
        self.refresh_timeout();
        Verdict::Consumed
    }

    /// Outcomes of the listeners' intents, accepts, outgoing peer connections and stream ends.
    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        self.now = now;
        if socket == LISTENER {
            self.listener_result(outcome);
        } else if self.listeners.contains_key(&socket) {
            match outcome {
                SocketOutcome::Bound { local } => self.relay_bound(socket, local),
                SocketOutcome::Failed { op, .. } if op == OpKind::Bind || op == OpKind::Listen => {
                    self.relay_failed(socket, op)
                }
                _ => {}
            }
        } else if let Some(listener) = self.accepts.remove(&socket) {
            self.accept_result(listener, socket, outcome);
        } else if self.orphans.contains(&socket) {
            if matches!(outcome, SocketOutcome::Accepted { .. }) {
                self.ops.push_back(SocketOp::Close { socket });
            }
            if matches!(
                outcome,
                SocketOutcome::Accepted { .. }
                    | SocketOutcome::Failed {
                        op: OpKind::Accept,
                        ..
                    }
            ) {
                self.orphans.remove(&socket);
            }
        } else if self.clients.contains_key(&socket) {
            self.client_result(socket, outcome);
        } else if let Some(id) = self.peer_sockets.get(&socket).copied() {
            self.peer_outcome(id, outcome);
        }
        self.refresh_timeout();
    }

    /// Expires allocations, peers that were never bound, unanswered Connects and idle
    /// connections.
    fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        let expired: Vec<SocketId> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(c, _)| *c)
            .collect();
        for c in expired {
            match self.allocations.get(&c) {
                Some(a) if a.relayed.is_some() => self.delete_allocation(c, EndReason::Expired),
                // Its relayed listener never got bound: the Allocate gets 508.
                Some(a) => {
                    let listener = a.listener;
                    self.relay_failed(listener, OpKind::Listen);
                }
                None => {}
            }
        }
        let due: Vec<(u32, PeerState)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.deadline <= now && !matches!(p.state, PeerState::Spliced(_)))
            .map(|(id, p)| (*id, p.state))
            .collect();
        for (id, state) in due {
            match state {
                PeerState::Binding(tid) | PeerState::Connecting(tid) => self.fail_connect(id, tid),
                _ => {
                    bump(&mut self.stats.bind_timeouts);
                    self.close_peer(id);
                }
            }
        }
        let idle: Vec<SocketId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.idle_deadline.is_some_and(|d| d <= now))
            .map(|(s, _)| *s)
            .collect();
        for s in idle {
            bump(&mut self.stats.idle_closed);
            self.close_client(s);
        }
        self.refresh_timeout();
    }

    /// The next chunk of a connection's outgoing bytes.
    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        self.out.poll_transmit(buf).map(|(transmit, _)| transmit)
    }

    /// The next socket intent.
    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        self.ops.pop_front()
    }

    /// The next event.
    fn poll_event(&mut self) -> Option<TurnServerEvent> {
        self.events.pop_front()
    }

    /// The earliest allocation expiry, ConnectionBind or Connect deadline or idle deadline.
    fn poll_timeout(&self) -> Option<Instant> {
        self.timeout
    }
}

impl crate::Sim {
    /// Adds `host` running a [`TurnServer`] with `config` (its seed from
    /// [`crate::Sim::machine_seed`]). The relayed addresses live on the config's relay IP, which
    /// must be one of the host's.
    pub fn add_turn_server(
        &mut self,
        host: crate::Host,
        config: TurnServerConfig,
    ) -> crate::HostId {
        let seed = self.machine_seed();
        self.add_host(host, TurnServer::new(config, seed))
    }
}

//! The relay side: relayed listeners, peer connections (accepted or connected by Connect), the
//! ConnectionAttempt indication, and the splice of a data connection with its peer connection.

use core::net::SocketAddr;
use core::time::Duration;

use p2pd_proto::stun::{Class, TransactionId};
use p2pd_proto::{IoError, OpKind, SocketId, SocketOp, SocketOutcome};
use p2pd_turn::codec::{error, method, TurnAttribute};

use super::bump;
use super::wire::Out;
use super::{EndReason, Peer, PeerState, TurnServer, TurnServerEvent};

impl TurnServer {
    /// A CONNECTION-ID not in use (random, never 0).
    pub(super) fn new_connection_id(&mut self) -> Option<u32> {
        for _ in 0..16 {
            let id = (self.rng.next_u64() >> 32) as u32;
            if id != 0 && !self.peers.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    pub(super) fn add_peer(&mut self, id: u32, peer: Peer) {
        if let Some(a) = self.allocations.get_mut(&peer.control) {
            a.peers.insert(id);
        }
        self.peer_sockets.insert(peer.socket, id);
        self.peers.insert(id, peer);
    }

    /// The relayed listener of an allocation is bound: it listens, and the Allocate is answered.
    pub(super) fn relay_bound(&mut self, listener: SocketId, local: SocketAddr) {
        let Some(control) = self.listeners.get(&listener).copied() else {
            return;
        };
        let relay_ip = self.config.relay_ip();
        let backlog = self.config.backlog;
        let now = self.now;
        let Some(a) = self.allocations.get_mut(&control) else {
            return;
        };
        let Some((tid, lifetime)) = a.waiting.take() else {
            return;
        };
        let ip = if local.ip().is_unspecified() {
            relay_ip
        } else {
            local.ip()
        };
        let relayed = SocketAddr::new(ip, local.port());
        a.relayed = Some(relayed);
        a.expires = now.saturating_add(Duration::from_secs(u64::from(lifetime)));
        let (key, username) = (a.key, a.username.clone());
        self.ops.push_back(SocketOp::Listen {
            socket: listener,
            backlog,
        });
        bump(&mut self.stats.allocations_total);
        bump(&mut self.stats.allocations_live);
        let mapped = self.clients.get(&control).map(|c| c.remote);
        self.respond_ok(
            control,
            method::ALLOCATE,
            TransactionId::new(tid),
            &[
                TurnAttribute::XorRelayedAddress(relayed),
                TurnAttribute::Lifetime(lifetime),
            ],
            mapped,
            Some(key),
        );
        self.push_event(TurnServerEvent::Allocated {
            control,
            relayed,
            username,
        });
        self.fill_accepts();
    }

    /// The relayed listener could not be bound (`op` Bind) or could not listen (`op` Listen).
    pub(super) fn relay_failed(&mut self, listener: SocketId, op: OpKind) {
        let Some(control) = self.listeners.get(&listener).copied() else {
            return;
        };
        let Some(a) = self.allocations.get_mut(&control) else {
            return;
        };
        if op == OpKind::Bind {
            a.listener_open = false;
        }
        let (waiting, key) = (a.waiting.take(), a.key);
        if let Some((tid, _)) = waiting {
            bump(&mut self.stats.errors);
            self.respond_error_to(
                control,
                method::ALLOCATE,
                TransactionId::new(tid),
                error::INSUFFICIENT_CAPACITY,
                false,
                Some(key),
            );
        }
        self.delete_allocation(control, EndReason::ListenerFailed);
    }

    /// A peer connected to the relayed listener `listener` of an allocation.
    pub(super) fn peer_accepted(
        &mut self,
        listener: SocketId,
        socket: SocketId,
        remote: SocketAddr,
    ) {
        let control = self.listeners.get(&listener).copied();
        if let Some(a) = control.and_then(|c| self.allocations.get_mut(&c)) {
            a.accepting = false;
        }
        let now = self.now;
        let Some((control, a)) = control.and_then(|c| self.allocations.get(&c).map(|a| (c, a)))
        else {
            self.ops.push_back(SocketOp::Close { socket });
            return;
        };
        bump(&mut self.stats.accepted);
        let permitted = a
            .permissions
            .get(&remote.ip())
            .is_some_and(|until| *until > now);
        if !permitted {
            bump(&mut self.stats.peer_refused_no_permission);
            self.ops.push_back(SocketOp::Close { socket });
            self.fill_accepts();
            return;
        }
        let full = a.peers.len() >= self.config.max_peers_per_allocation
            || self.connection_load() >= self.config.max_connections;
        let id = if full { None } else { self.new_connection_id() };
        let Some(id) = id else {
            bump(&mut self.stats.peer_refused_capacity);
            self.ops.push_back(SocketOp::Close { socket });
            self.fill_accepts();
            return;
        };
        self.add_peer(
            id,
            Peer {
                socket,
                control,
                remote,
                state: PeerState::Waiting,
                held: Vec::new(),
                eof: false,
                deadline: now.saturating_add(self.config.bind_timeout),
                open: true,
            },
        );
        let mut tid = [0u8; 12];
        self.rng.fill_bytes(&mut tid);
        let attrs = [
            TurnAttribute::ConnectionId(id),
            TurnAttribute::XorPeerAddress(remote),
        ];
        let out = Out {
            class: Class::Indication,
            method: method::CONNECTION_ATTEMPT,
            id: TransactionId::new(tid),
            code: None,
            attrs: &attrs,
            mapped: None,
            realm_nonce: None,
            key: None,
        };
        self.write(control, &out);
        self.fill_accepts();
    }

    /// An outcome on peer connection `id`'s socket.
    pub(super) fn peer_outcome(&mut self, id: u32, outcome: SocketOutcome) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let now = self.now;
        let bind_timeout = self.config.bind_timeout;
        match (peer.state, outcome) {
            (PeerState::Binding(tid), SocketOutcome::Bound { .. }) => {
                peer.state = PeerState::Connecting(tid);
                let (socket, remote) = (peer.socket, peer.remote);
                self.ops.push_back(SocketOp::Connect { socket, remote });
            }
            (
                PeerState::Binding(tid),
                SocketOutcome::Failed {
                    op: OpKind::Bind, ..
                },
            ) => {
                peer.open = false;
                self.fail_connect(id, tid);
            }
            (PeerState::Connecting(tid), SocketOutcome::Connected { .. }) => {
                peer.state = PeerState::Waiting;
                peer.deadline = now.saturating_add(bind_timeout);
                let control = peer.control;
                let key = self.allocations.get(&control).map(|a| a.key);
                self.respond_ok(
                    control,
                    method::CONNECT,
                    TransactionId::new(tid),
                    &[TurnAttribute::ConnectionId(id)],
                    None,
                    key,
                );
            }
            (PeerState::Connecting(tid), SocketOutcome::Failed { .. }) => {
                self.fail_connect(id, tid)
            }
            (PeerState::Spliced(data), SocketOutcome::PeerClosed) => {
                peer.eof = true;
                self.ops.push_back(SocketOp::Shutdown { socket: data });
                if self.clients.get(&data).is_some_and(|c| c.eof) {
                    self.close_peer(id);
                }
            }
            (_, SocketOutcome::PeerClosed) => self.close_peer(id),
            (
                _,
                SocketOutcome::Failed {
                    op: OpKind::Send,
                    error: IoError::WouldBlock,
                    ..
                },
            ) => {
                bump(&mut self.stats.slow_closed);
                self.close_peer(id);
            }
            (_, SocketOutcome::Failed { .. }) => self.close_peer(id),
            _ => {}
        }
    }

    /// Connect to the peer of `id` failed: 447 to the Connect `tid`, and the connection goes.
    pub(super) fn fail_connect(&mut self, id: u32, tid: [u8; 12]) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        let control = peer.control;
        let key = self.allocations.get(&control).map(|a| a.key);
        bump(&mut self.stats.errors);
        self.respond_error_to(
            control,
            method::CONNECT,
            TransactionId::new(tid),
            error::CONNECTION_TIMEOUT_OR_FAILURE,
            false,
            key,
        );
        self.close_peer(id);
    }

    /// Bytes from peer connection `id`.
    pub(super) fn peer_bytes(&mut self, id: u32, data: &[u8]) {
        let max = self.config.max_peer_buffer;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        match peer.state {
            PeerState::Spliced(socket) => self.relay(socket, data, id),
            PeerState::Waiting if peer.held.len().saturating_add(data.len()) <= max => {
                peer.held.extend_from_slice(data);
            }
            PeerState::Waiting => {
                bump(&mut self.stats.peer_overflow);
                self.close_peer(id);
            }
            PeerState::Binding(_) | PeerState::Connecting(_) => {}
        }
    }

    /// Splices data connection `data` with peer connection `id`; what the peer sent so far goes
    /// out first.
    pub(super) fn splice(&mut self, id: u32, data: SocketId) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(client) = self.clients.get_mut(&data) else {
            return;
        };
        peer.state = PeerState::Spliced(data);
        client.spliced = Some(id);
        client.idle_deadline = None;
        let held = core::mem::take(&mut peer.held);
        let remote = peer.remote;
        bump(&mut self.stats.connections_spliced);
        self.push_event(TurnServerEvent::Spliced { peer: remote, id });
        self.relay(data, &held, id);
    }

    /// Bytes from spliced data connection of peer connection `id`, to the peer.
    pub(super) fn relay_to_peer(&mut self, id: u32, data: &[u8]) {
        if let Some(socket) = self.peers.get(&id).map(|p| p.socket) {
            self.relay(socket, data, id);
        }
    }

    /// Queues relayed bytes on `socket` (of the splice of peer connection `id`); a splice that
    /// cannot take them is closed.
    fn relay(&mut self, socket: SocketId, data: &[u8], id: u32) {
        if self.send(socket, data) {
            self.stats.bytes_relayed = self.stats.bytes_relayed.saturating_add(data.len() as u64);
        } else {
            bump(&mut self.stats.slow_closed);
            self.close_peer(id);
        }
    }

    /// The spliced data connection `socket` (of peer connection `id`) ended its sending half.
    pub(super) fn client_eof(&mut self, socket: SocketId, id: u32) {
        if let Some(c) = self.clients.get_mut(&socket) {
            c.eof = true;
        }
        let Some(peer) = self.peers.get(&id) else {
            return self.close_client(socket);
        };
        if peer.eof {
            self.close_peer(id);
        } else {
            self.ops.push_back(SocketOp::Shutdown {
                socket: peer.socket,
            });
        }
    }

    /// Closes peer connection `id` (once), and its data connection if spliced.
    pub(super) fn close_peer(&mut self, id: u32) {
        let Some(peer) = self.peers.remove(&id) else {
            return;
        };
        self.peer_sockets.remove(&peer.socket);
        if let Some(a) = self.allocations.get_mut(&peer.control) {
            a.peers.remove(&id);
        }
        if peer.open {
            self.ops.push_back(SocketOp::Close {
                socket: peer.socket,
            });
        }
        if let PeerState::Spliced(data) = peer.state {
            self.close_client(data);
        }
        self.fill_accepts();
    }

    /// Closes whatever `socket` is (a connection to the listen address or a peer connection).
    pub(super) fn close_socket(&mut self, socket: SocketId) {
        if self.clients.contains_key(&socket) {
            self.close_client(socket);
        } else if let Some(id) = self.peer_sockets.get(&socket).copied() {
            self.close_peer(id);
        }
    }
}

//! The node's own TCP connections until they prove a peer: dials of phase A, dials answering a
//! reverse request, and connections accepted by the listener. Each opens with a
//! [`Preface`](crate::wire::Preface), then runs the secure channel's handshake; the side that
//! called `connect` is the channel's initiator and sends its last handshake message only on the
//! connection it picks (the first whose responder proved the expected identity), so the other
//! side sees exactly one stream. A connection that proves nothing (a stranger, a bad preface,
//! the wrong identity, a handshake past its deadline) is closed once and counted.

use core::net::SocketAddr;

use p2pd_channel::stream::SecureStream;
use p2pd_channel::{Channel, ChannelEvent, Role};
use p2pd_proto::{
    BindOptions, DropReason, Instant, IoError, SocketId, SocketOp, SocketOutcome, Transmit,
    Transport, Verdict,
};
use p2pd_signaling::{PeerAddress, PublicKey};

use crate::ladder;
use crate::node::{Node, Part};
use crate::types::{ConnectId, NodeEvent, Path, PhaseFailure};
use crate::wire::{Message, Preface, PrefaceKind, PREFACE_LEN, TOKEN_LEN};

/// Most dials answering reverse requests at once (requests beyond are dropped and counted).
const MAX_REVERSE_DIALS: usize = 16;
/// Most endpoints dialled for one reverse request.
const MAX_DIALS_PER_REQUEST: usize = 4;

/// Whose connection it is.
#[derive(Clone, Debug)]
pub(crate) enum ConnRole {
    /// Our dial of phase A for `connect`, expecting `peer`.
    Dial { connect: ConnectId, peer: PublicKey },
    /// Our dial answering `requester`'s reverse request.
    ReverseDial {
        requester: PublicKey,
        token: [u8; TOKEN_LEN],
    },
    /// Accepted by the listener.
    Inbound,
    /// Our dial to the relayed address `requester` offered.
    RelayDial {
        requester: PublicKey,
        token: [u8; TOKEN_LEN],
    },
    /// A connection our relay handed us for `connect` (the peer dialled the relayed address).
    Relayed { connect: ConnectId },
}

/// Where a connection is.
#[derive(Debug)]
pub(crate) enum ConnState {
    /// Binding (the connect goes out once the bind is done).
    Binding,
    /// Bound, connecting.
    Connecting,
    /// Accepted, reading the preface.
    Preface(Vec<u8>),
    /// Running the handshake; for an accepted reverse connection, the connect it is for.
    Handshake {
        channel: Box<Channel>,
        reverse_for: Option<ConnectId>,
    },
}

/// One connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) socket: SocketId,
    pub(crate) remote: SocketAddr,
    pub(crate) role: ConnRole,
    pub(crate) state: ConnState,
    /// Closed if it has not proved a peer by then.
    pub(crate) deadline: Instant,
    pub(crate) opened: Instant,
}

impl Node {
    /// Dials `remote` for `connect`, expecting `peer`.
    pub(crate) fn dial(
        &mut self,
        now: Instant,
        connect: ConnectId,
        remote: SocketAddr,
        peer: PublicKey,
    ) {
        if let Some(c) = self.connects.iter_mut().find(|c| c.id == connect) {
            c.dials = c.dials.saturating_add(1);
        }
        let until = now.saturating_add(self.config.channel.handshake_timeout);
        self.open_dial(now, remote, ConnRole::Dial { connect, peer }, until);
    }

    pub(crate) fn open_dial(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        role: ConnRole,
        deadline: Instant,
    ) {
        let socket = self.new_socket();
        let local_ip = if remote.is_ipv4() == self.config.local_ip.is_ipv4() {
            self.config.local_ip
        } else if remote.is_ipv4() {
            core::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            core::net::Ipv6Addr::UNSPECIFIED.into()
        };
        self.ops.push_back(SocketOp::Bind {
            socket,
            transport: Transport::Tcp,
            local: SocketAddr::new(local_ip, 0),
            options: BindOptions::default(),
        });
        self.conns.push(Conn {
            socket,
            remote,
            role,
            state: ConnState::Binding,
            deadline,
            opened: now,
        });
    }

    /// A peer asks us to dial it back: dial every endpoint the planner gives for it.
    pub(crate) fn on_reverse_request(
        &mut self,
        now: Instant,
        from: PublicKey,
        token: [u8; TOKEN_LEN],
        address: PeerAddress,
    ) {
        if address.public_key != from || self.closing || !self.accepts(&from) {
            self.stats.bad_messages = self.stats.bad_messages.saturating_add(1);
            return;
        }
        if self
            .conns
            .iter()
            .any(|c| matches!(&c.role, ConnRole::ReverseDial { token: t, .. } if *t == token))
        {
            return;
        }
        let plan = ladder::plan(&self.own.view(), &address);
        if !self.may_dial_for_peer() {
            // Anyone who can sign may ask us to dial: a bounded number at a time.
            self.stats.bad_messages = self.stats.bad_messages.saturating_add(1);
            return;
        }
        if plan.direct.is_empty() {
            let _ =
                self.rendezvous
                    .send(now, &from, None, &Message::ReverseFailed { token }.encode());
            return;
        }
        let until = now.saturating_add(self.config.channel.handshake_timeout);
        for remote in plan.direct.into_iter().take(MAX_DIALS_PER_REQUEST) {
            self.open_dial(
                now,
                remote,
                ConnRole::ReverseDial {
                    requester: from,
                    token,
                },
                until,
            );
        }
    }

    /// Whether another dial a peer asked for (reverse or relayed) fits: anyone who can sign may
    /// ask us to dial, so a bounded number run at a time.
    pub(crate) fn may_dial_for_peer(&self) -> bool {
        let asked = self
            .conns
            .iter()
            .filter(|c| {
                matches!(
                    c.role,
                    ConnRole::ReverseDial { .. } | ConnRole::RelayDial { .. }
                )
            })
            .count();
        asked < MAX_REVERSE_DIALS
    }

    /// Whether we take streams from `peer`.
    pub(crate) fn accepts(&self, peer: &PublicKey) -> bool {
        self.config
            .accept_from
            .as_ref()
            .is_none_or(|allowed| allowed.contains(&peer.node_id()))
    }

    /// Outcomes of the node's own sockets: the listener, connections, streams.
    pub(crate) fn own_socket_result(
        &mut self,
        now: Instant,
        socket: SocketId,
        outcome: SocketOutcome,
    ) {
        if Some(socket) == self.own.listener {
            self.on_listener_result(now, socket, outcome);
            return;
        }
        if Some(socket) == self.own.accepting {
            self.own.accepting = None;
            // A failed accept ends with nothing to close; ask again.
            if let SocketOutcome::Accepted { remote, .. } = outcome {
                self.stats.accepted = self.stats.accepted.saturating_add(1);
                self.admit(now, socket, remote);
            }
            self.next_accept();
            return;
        }
        if let Some(i) = self.streams.iter().position(|s| s.socket == socket) {
            if let Some(s) = self.streams.get_mut(i) {
                s.stream.handle_outcome(now, &outcome);
            }
            return;
        }
        let Some(i) = self.conns.iter().position(|c| c.socket == socket) else {
            return;
        };
        match outcome {
            SocketOutcome::Connected { .. } => self.on_connected(now, i),
            SocketOutcome::Bound { .. } => {
                if let Some(conn) = self.conns.get_mut(i) {
                    if matches!(conn.state, ConnState::Binding) {
                        conn.state = ConnState::Connecting;
                        let (socket, remote) = (conn.socket, conn.remote);
                        self.ops.push_back(SocketOp::Connect { socket, remote });
                    }
                }
            }
            SocketOutcome::Writable => {}
            SocketOutcome::Failed { error, .. } => {
                self.conn_failed(now, socket, PhaseFailure::Connect(error))
            }
            _ => self.conn_failed(now, socket, PhaseFailure::Connect(IoError::ConnectionReset)),
        }
    }

    /// A new inbound connection: make room, then read its preface.
    fn admit(&mut self, now: Instant, socket: SocketId, remote: SocketAddr) {
        let inbound = |c: &Conn| matches!(c.role, ConnRole::Inbound);
        if self.conns.iter().filter(|c| inbound(c)).count() >= self.config.max_handshakes {
            if let Some(oldest) = self
                .conns
                .iter()
                .filter(|c| inbound(c))
                .min_by_key(|c| c.opened)
            {
                let s = oldest.socket;
                self.stats.strangers = self.stats.strangers.saturating_add(1);
                self.drop_conn(s);
            }
        }
        if self.closing {
            self.ops.push_back(SocketOp::Close { socket });
            return;
        }
        self.conns.push(Conn {
            socket,
            remote,
            role: ConnRole::Inbound,
            state: ConnState::Preface(Vec::with_capacity(PREFACE_LEN)),
            deadline: now.saturating_add(self.config.channel.handshake_timeout),
            opened: now,
        });
    }

    /// Our dial connected: preface, then the channel.
    fn on_connected(&mut self, now: Instant, i: usize) {
        let Some(conn) = self.conns.get(i) else {
            return;
        };
        let (socket, remote) = (conn.socket, conn.remote);
        let (preface, role) = match conn.role.clone() {
            ConnRole::Dial { peer, .. } => {
                let mut token = [0u8; TOKEN_LEN];
                self.rng.fill_bytes(&mut token);
                let p = Preface {
                    kind: PrefaceKind::Direct,
                    token,
                };
                (
                    p,
                    Role::Initiator {
                        expect: peer.node_id(),
                    },
                )
            }
            ConnRole::ReverseDial { requester, token } => (
                Preface {
                    kind: PrefaceKind::Reverse,
                    token,
                },
                Role::Responder {
                    expect: Some(requester.node_id()),
                },
            ),
            ConnRole::RelayDial { requester, token } => (
                Preface {
                    kind: PrefaceKind::Relay,
                    token,
                },
                Role::Responder {
                    expect: Some(requester.node_id()),
                },
            ),
            ConnRole::Inbound | ConnRole::Relayed { .. } => return,
        };
        match Channel::new(
            self.config.channel,
            &self.keys,
            role,
            &preface.context(),
            self.seeds.next_seed(),
            now,
        ) {
            Ok(channel) => {
                self.transmits
                    .push_back((socket, remote, preface.encode().to_vec()));
                if let Some(conn) = self.conns.get_mut(i) {
                    conn.state = ConnState::Handshake {
                        channel: Box::new(channel),
                        reverse_for: None,
                    };
                }
                self.flush_handshake(socket);
            }
            Err(_) => self.conn_failed(now, socket, PhaseFailure::Connect(IoError::Other(None))),
        }
    }

    /// Bytes on one of the node's own sockets: a stream's, or a connection's preface and
    /// handshake.
    pub(crate) fn own_stream_bytes(
        &mut self,
        now: Instant,
        socket: SocketId,
        data: &[u8],
    ) -> Verdict {
        if let Some(s) = self.streams.iter_mut().find(|s| s.socket == socket) {
            s.stream.handle_bytes(now, data);
            return Verdict::Consumed;
        }
        let Some(i) = self.conns.iter().position(|c| c.socket == socket) else {
            return Verdict::Dropped(DropReason::UnknownSocket);
        };
        let mut rest = data;
        if let Some(Conn {
            state: ConnState::Preface(buf),
            ..
        }) = self.conns.get_mut(i)
        {
            let want = PREFACE_LEN.saturating_sub(buf.len()).min(rest.len());
            let (head, tail) = rest.split_at(want);
            buf.extend_from_slice(head);
            rest = tail;
            if buf.len() < PREFACE_LEN {
                return Verdict::Consumed;
            }
            let preface = <&[u8; PREFACE_LEN]>::try_from(buf.as_slice())
                .ok()
                .and_then(Preface::decode);
            if !self.start_inbound_channel(now, i, preface) {
                self.stats.strangers = self.stats.strangers.saturating_add(1);
                self.drop_conn(socket);
                return Verdict::Dropped(DropReason::Unexpected);
            }
        }
        if !rest.is_empty() {
            self.handshake_bytes(now, socket, rest);
        }
        Verdict::Consumed
    }

    /// The preface of an accepted connection: its channel (responder for a direct one, our
    /// initiator for the answer to our reverse request or relay offer). False if it is not a
    /// node's preface, or answers no request of ours (a relay preface only counts on a
    /// connection our relay handed us for that connect).
    fn start_inbound_channel(&mut self, now: Instant, i: usize, preface: Option<Preface>) -> bool {
        let (Some(preface), Some(conn)) = (preface, self.conns.get(i)) else {
            return false;
        };
        let (role, reverse_for) = match (&conn.role, preface.kind) {
            (ConnRole::Inbound, PrefaceKind::Direct) => (Role::Responder { expect: None }, None),
            (ConnRole::Inbound, PrefaceKind::Reverse) => {
                match self.reverse_connect(&preface.token) {
                    Some((connect, peer)) => (
                        Role::Initiator {
                            expect: peer.node_id(),
                        },
                        Some(connect),
                    ),
                    None => return false,
                }
            }
            (ConnRole::Relayed { connect }, PrefaceKind::Relay) => {
                match self
                    .connects
                    .iter()
                    .find(|c| c.id == *connect && c.relay_token == Some(preface.token))
                    .and_then(|c| c.key)
                {
                    Some(peer) => (
                        Role::Initiator {
                            expect: peer.node_id(),
                        },
                        Some(*connect),
                    ),
                    None => return false,
                }
            }
            _ => return false,
        };
        let Ok(channel) = Channel::new(
            self.config.channel,
            &self.keys,
            role,
            &preface.context(),
            self.seeds.next_seed(),
            now,
        ) else {
            return false;
        };
        let Some(conn) = self.conns.get_mut(i) else {
            return false;
        };
        conn.state = ConnState::Handshake {
            channel: Box::new(channel),
            reverse_for,
        };
        let socket = conn.socket;
        self.flush_handshake(socket);
        true
    }

    /// Handshake bytes: on to the channel; a proven peer wins (initiator) or is accepted
    /// (responder).
    fn handshake_bytes(&mut self, now: Instant, socket: SocketId, data: &[u8]) {
        let Some(conn) = self.conns.iter_mut().find(|c| c.socket == socket) else {
            return;
        };
        let ConnState::Handshake { channel, .. } = &mut conn.state else {
            return;
        };
        channel.handle_input(now, data);
        if channel.is_ended() {
            let mut failure = PhaseFailure::Connect(IoError::ConnectionReset);
            while let Some(ev) = channel.poll_event() {
                if let ChannelEvent::Failed(f) = ev {
                    failure = PhaseFailure::Handshake(f);
                }
            }
            if matches!(conn.role, ConnRole::Inbound) {
                self.stats.strangers = self.stats.strangers.saturating_add(1);
            }
            self.conn_failed(now, socket, failure);
            return;
        }
        if channel.is_established() {
            self.conn_established(now, socket);
        } else {
            self.flush_handshake(socket);
        }
    }

    /// The channel of connection `socket` proved its peer.
    fn conn_established(&mut self, now: Instant, socket: SocketId) {
        let Some(pos) = self.conns.iter().position(|c| c.socket == socket) else {
            return;
        };
        let conn = self.conns.remove(pos);
        let ConnState::Handshake {
            channel,
            reverse_for,
        } = conn.state
        else {
            return;
        };
        let Some(peer) = channel.peer() else {
            return;
        };
        let initiator = matches!(channel.role(), Role::Initiator { .. });
        // Handshake bytes still queued for this socket go out before the stream's own.
        let (path, connect) = match (&conn.role, reverse_for) {
            (ConnRole::Dial { connect, .. }, _) => (Path::Direct, Some(*connect)),
            (ConnRole::Inbound, Some(connect)) => (Path::Reverse, Some(connect)),
            (ConnRole::Inbound, None) => (Path::Direct, None),
            (ConnRole::ReverseDial { .. }, _) => (Path::Reverse, None),
            (ConnRole::RelayDial { .. }, _) => (Path::Relayed, None),
            (ConnRole::Relayed { connect }, _) => (Path::Relayed, Some(*connect)),
        };
        match connect {
            Some(connect) if initiator => {
                if !self.connect_open(connect) {
                    // Another path won: this one never gets our last message.
                    self.stats.losers = self.stats.losers.saturating_add(1);
                    self.ops.push_back(SocketOp::Close { socket });
                    self.transmits.retain(|(s, _, _)| *s != socket);
                    return;
                }
                let stream =
                    self.add_stream(socket, conn.remote, peer, path, SecureStream::new(*channel));
                self.connect_won(now, connect, stream, peer, path, conn.remote);
            }
            _ => {
                if !self.accepts(&peer) || self.streams.len() >= self.config.max_streams {
                    self.stats.strangers = self.stats.strangers.saturating_add(1);
                    self.ops.push_back(SocketOp::Close { socket });
                    self.transmits.retain(|(s, _, _)| *s != socket);
                    return;
                }
                let stream =
                    self.add_stream(socket, conn.remote, peer, path, SecureStream::new(*channel));
                self.events.push_back(NodeEvent::Accepted {
                    stream,
                    peer,
                    path,
                    remote: conn.remote,
                });
            }
        }
    }

    /// Queues the handshake bytes a connection's channel has (not an initiator's last message:
    /// that goes out only when the connection wins, from its stream).
    fn flush_handshake(&mut self, socket: SocketId) {
        let Some(conn) = self.conns.iter_mut().find(|c| c.socket == socket) else {
            return;
        };
        let ConnState::Handshake { channel, .. } = &mut conn.state else {
            return;
        };
        if channel.is_established() {
            return;
        }
        let bytes = channel.pending_transmit().to_vec();
        channel.consume_transmit(bytes.len());
        if !bytes.is_empty() {
            self.transmits.push_back((socket, conn.remote, bytes));
        }
    }

    /// A connection failed: close it, tell its connect (or the reverse requester).
    pub(crate) fn conn_failed(&mut self, now: Instant, socket: SocketId, failure: PhaseFailure) {
        let Some(conn) = self.conns.iter().find(|c| c.socket == socket) else {
            return;
        };
        let role = conn.role.clone();
        self.drop_conn(socket);
        match role {
            ConnRole::Dial { connect, .. } => self.dial_failed(now, connect, failure),
            ConnRole::ReverseDial { requester, token } => {
                let others = self.conns.iter().any(
                    |c| matches!(&c.role, ConnRole::ReverseDial { token: t, .. } if *t == token),
                );
                if !others {
                    let _ = self.rendezvous.send(
                        now,
                        &requester,
                        None,
                        &Message::ReverseFailed { token }.encode(),
                    );
                }
            }
            ConnRole::RelayDial { requester, token } => {
                let _ = self.rendezvous.send(
                    now,
                    &requester,
                    None,
                    &Message::RelayFailed { token }.encode(),
                );
            }
            ConnRole::Relayed { connect } => self.relay_failed(now, connect, failure),
            ConnRole::Inbound => {}
        }
    }

    /// Closes a connection (once) and forgets it.
    pub(crate) fn drop_conn(&mut self, socket: SocketId) {
        if let Some(pos) = self.conns.iter().position(|c| c.socket == socket) {
            self.conns.remove(pos);
            self.transmits.retain(|(s, _, _)| *s != socket);
            self.ops.push_back(SocketOp::Close { socket });
        }
    }

    /// Closes every dial of `connect` (another path won, or phase A's budget ran out).
    pub(crate) fn drop_dials_of(&mut self, connect: ConnectId) {
        let sockets: Vec<SocketId> = self
            .conns
            .iter()
            .filter(|c| match (&c.role, &c.state) {
                (ConnRole::Dial { connect: id, .. }, _)
                | (ConnRole::Relayed { connect: id }, _) => *id == connect,
                (ConnRole::Inbound, ConnState::Handshake { reverse_for, .. }) => {
                    *reverse_for == Some(connect)
                }
                _ => false,
            })
            .map(|c| c.socket)
            .collect();
        for s in sockets {
            self.stats.losers = self.stats.losers.saturating_add(1);
            self.drop_conn(s);
        }
    }

    /// Connections past their deadline, and handshakes past theirs.
    pub(crate) fn conns_timeout(&mut self, now: Instant) {
        let expired: Vec<SocketId> = self
            .conns
            .iter()
            .filter(|c| c.deadline <= now)
            .map(|c| c.socket)
            .collect();
        for socket in expired {
            if let Some(Conn {
                role: ConnRole::Inbound,
                ..
            }) = self.conns.iter().find(|c| c.socket == socket)
            {
                self.stats.strangers = self.stats.strangers.saturating_add(1);
            }
            self.conn_failed(now, socket, PhaseFailure::Timeout);
        }
    }

    /// The next transmit of the node's own sockets: handshakes first, then streams.
    pub(crate) fn poll_own_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        while let Some((socket, destination, bytes)) = self.transmits.pop_front() {
            let n = bytes.len().min(buf.len());
            let (now_part, later) = bytes.split_at(n);
            if let Some(dst) = buf.get_mut(..n) {
                dst.copy_from_slice(now_part);
            }
            if !later.is_empty() {
                self.transmits
                    .push_front((socket, destination, later.to_vec()));
            }
            if let Some(t) = self.sockets.transmit(
                Part::Own,
                Transmit {
                    socket,
                    destination,
                    len: n,
                },
            ) {
                return Some(t);
            }
        }
        self.poll_stream_transmit(buf)
    }

    /// The next intent of the node's own sockets.
    pub(crate) fn poll_own_op(&mut self) -> Option<SocketOp> {
        while let Some(op) = self.ops.pop_front() {
            if let Some(op) = self.sockets.outbound(Part::Own, op) {
                return Some(op);
            }
        }
        self.poll_stream_op()
    }
}

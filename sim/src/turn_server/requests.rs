//! Requests on connections to the listen address: Allocate, Refresh, CreatePermission, Connect,
//! ConnectionBind (and Binding).

use core::net::SocketAddr;
use core::time::Duration;

use p2pd_proto::stun::{Class, FrameStatus, Message, Method};
use p2pd_proto::{BindOptions, SocketId, SocketOp, Transport};
use p2pd_turn::codec::{self, attr, error, method, TurnAttribute};

use super::auth::Authed;
use super::bump;
use super::{Allocation, Peer, PeerState, TurnServer, PERMISSION_LIFETIME};

impl TurnServer {
    /// Bytes on connection `socket` to the listen address (not spliced yet): reassembles and
    /// handles messages; bytes after a successful ConnectionBind go to the peer.
    pub(super) fn client_bytes(&mut self, socket: SocketId, data: &[u8]) {
        let Some(client) = self.clients.get_mut(&socket) else {
            return;
        };
        // The client's framer holds at most `MAX_MESSAGE_LEN` bytes and refuses a header that
        // announces more; it leaves the client while its messages are handled.
        let mut framer = core::mem::take(&mut client.framer);
        let mut rest = data;
        loop {
            rest = framer.fill(rest);
            let total = match framer.status() {
                // The framer is never full of a partial message: `rest` is all in.
                FrameStatus::Partial => break,
                FrameStatus::Complete(total) => total,
                FrameStatus::Bad(_) => {
                    bump(&mut self.stats.malformed);
                    self.close_client(socket);
                    return;
                }
            };
            let frame = framer.held().get(..total).unwrap_or_default();
            match Message::decode(frame) {
                Ok(msg) if !msg.is_legacy() => self.message(socket, &msg),
                _ => {
                    bump(&mut self.stats.malformed);
                    self.close_client(socket);
                    return;
                }
            }
            framer.consume(total);
            let Some(client) = self.clients.get(&socket) else {
                return;
            };
            if let Some(id) = client.spliced {
                // The rest belongs to the peer.
                let mut after = framer.held().to_vec();
                after.extend_from_slice(rest);
                self.relay_to_peer(id, &after);
                return;
            }
        }
        if let Some(client) = self.clients.get_mut(&socket) {
            client.framer = framer;
        }
    }

    fn message(&mut self, socket: SocketId, msg: &Message<'_>) {
        if msg.class() != Class::Request {
            bump(&mut self.stats.ignored);
            return;
        }
        let m = msg.method();
        if m == Method::BINDING {
            let mapped = self.clients.get(&socket).map(|c| c.remote);
            self.respond_ok(socket, m, msg.transaction_id(), &[], mapped, None);
            return;
        }
        let known = [
            method::ALLOCATE,
            method::REFRESH,
            method::CREATE_PERMISSION,
            method::CONNECT,
            method::CONNECTION_BIND,
        ];
        if !known.contains(&m) {
            self.respond_error(socket, msg, error::BAD_REQUEST, false, None);
            return;
        }
        let Some(authed) = self.authenticate(socket, msg) else {
            return;
        };
        if m == method::ALLOCATE {
            self.allocate(socket, msg, authed);
        } else if m == method::CONNECTION_BIND {
            self.connection_bind(socket, msg, authed);
        } else {
            // The rest need this connection's allocation, under its username.
            let owner = self.allocations.get(&socket).map(|a| a.username.clone());
            match owner {
                None => {
                    self.respond_error(
                        socket,
                        msg,
                        error::ALLOCATION_MISMATCH,
                        false,
                        Some(authed.key),
                    );
                }
                Some(u) if u != authed.username => {
                    self.respond_error(
                        socket,
                        msg,
                        error::WRONG_CREDENTIALS,
                        false,
                        Some(authed.key),
                    );
                }
                Some(_) if m == method::REFRESH => self.refresh(socket, msg, authed),
                Some(_) if m == method::CREATE_PERMISSION => {
                    self.create_permission(socket, msg, authed)
                }
                Some(_) => self.connect(socket, msg, authed),
            }
        }
    }

    /// The lifetime to grant for a requested one (`None`: not asked).
    fn grant(&self, requested: Option<u32>) -> u32 {
        let default = secs(self.config.default_lifetime);
        let max = secs(self.config.max_lifetime).max(default);
        requested.unwrap_or(default).clamp(default, max)
    }

    fn allocate(&mut self, socket: SocketId, msg: &Message<'_>, authed: Authed) {
        let key = Some(authed.key);
        if self.allocations.contains_key(&socket)
            || self
                .clients
                .get(&socket)
                .is_none_or(|c| c.spliced.is_some())
        {
            return self.respond_error(socket, msg, error::ALLOCATION_MISMATCH, false, key);
        }
        let transport = match codec::find(msg, attr::REQUESTED_TRANSPORT) {
            Ok(Some(TurnAttribute::RequestedTransport(p))) => p,
            _ => return self.respond_error(socket, msg, error::BAD_REQUEST, false, key),
        };
        if transport != codec::TRANSPORT_TCP {
            return self.respond_error(
                socket,
                msg,
                error::UNSUPPORTED_TRANSPORT_PROTOCOL,
                false,
                key,
            );
        }
        let requested = match codec::find(msg, attr::LIFETIME) {
            Ok(Some(TurnAttribute::Lifetime(s))) => Some(s),
            Ok(_) => None,
            Err(_) => return self.respond_error(socket, msg, error::BAD_REQUEST, false, key),
        };
        if self.allocations.len() >= self.config.max_allocations {
            return self.respond_error(socket, msg, error::ALLOCATION_QUOTA_REACHED, false, key);
        }
        let Some(listener) = self.new_socket() else {
            return self.respond_error(socket, msg, error::INSUFFICIENT_CAPACITY, false, key);
        };
        let lifetime = self.grant(requested);
        self.ops.push_back(SocketOp::Bind {
            socket: listener,
            transport: Transport::Tcp,
            local: SocketAddr::new(self.config.relay_ip(), 0),
            options: BindOptions::default(),
        });
        self.listeners.insert(listener, socket);
        self.allocations.insert(
            socket,
            Allocation {
                listener,
                listener_open: true,
                relayed: None,
                waiting: Some((*msg.transaction_id().as_bytes(), lifetime)),
                accepting: false,
                accept_broken: false,
                expires: self
                    .now
                    .saturating_add(self.config.bind_timeout.max(Duration::from_secs(1))),
                permissions: Default::default(),
                username: authed.username,
                key: authed.key,
                peers: Default::default(),
            },
        );
        if let Some(c) = self.clients.get_mut(&socket) {
            c.idle_deadline = None;
        }
    }

    fn refresh(&mut self, socket: SocketId, msg: &Message<'_>, authed: Authed) {
        let key = Some(authed.key);
        let requested = match codec::find(msg, attr::LIFETIME) {
            Ok(Some(TurnAttribute::Lifetime(s))) => Some(s),
            Ok(_) => None,
            Err(_) => return self.respond_error(socket, msg, error::BAD_REQUEST, false, key),
        };
        let (m, id) = (msg.method(), msg.transaction_id());
        if requested == Some(0) {
            self.respond_ok(socket, m, id, &[TurnAttribute::Lifetime(0)], None, key);
            self.delete_allocation(socket, super::EndReason::Deallocated);
            return;
        }
        let lifetime = self.grant(requested);
        let now = self.now;
        if let Some(a) = self.allocations.get_mut(&socket) {
            if a.relayed.is_some() {
                a.expires = now.saturating_add(Duration::from_secs(u64::from(lifetime)));
            }
        }
        self.respond_ok(
            socket,
            m,
            id,
            &[TurnAttribute::Lifetime(lifetime)],
            None,
            key,
        );
    }

    fn create_permission(&mut self, socket: SocketId, msg: &Message<'_>, authed: Authed) {
        let key = Some(authed.key);
        let mut peers = Vec::new();
        for raw in msg.attributes() {
            if raw.code == p2pd_proto::stun::attr::MESSAGE_INTEGRITY {
                break;
            }
            if raw.code != attr::XOR_PEER_ADDRESS {
                continue;
            }
            match TurnAttribute::parse(raw.code, raw.value, msg.header()) {
                Ok(Some(TurnAttribute::XorPeerAddress(a))) => peers.push(a),
                _ => return self.respond_error(socket, msg, error::BAD_REQUEST, false, key),
            }
        }
        if peers.is_empty() {
            return self.respond_error(socket, msg, error::BAD_REQUEST, false, key);
        }
        let relay_v4 = self.config.relay_ip().is_ipv4();
        if peers.iter().any(|p| p.is_ipv4() != relay_v4) {
            return self.respond_error(
                socket,
                msg,
                error::PEER_ADDRESS_FAMILY_MISMATCH,
                false,
                key,
            );
        }
        let (now, max) = (self.now, self.config.max_permissions);
        let Some(a) = self.allocations.get_mut(&socket) else {
            return;
        };
        a.permissions.retain(|_, until| *until > now);
        let new = peers
            .iter()
            .filter(|p| !a.permissions.contains_key(&p.ip()))
            .count();
        if a.permissions.len().saturating_add(new) > max {
            return self.respond_error(socket, msg, error::INSUFFICIENT_CAPACITY, false, key);
        }
        for p in peers {
            a.permissions
                .insert(p.ip(), now.saturating_add(PERMISSION_LIFETIME));
        }
        self.respond_ok(socket, msg.method(), msg.transaction_id(), &[], None, key);
    }

    fn connect(&mut self, socket: SocketId, msg: &Message<'_>, authed: Authed) {
        let key = Some(authed.key);
        let peer = match codec::find(msg, attr::XOR_PEER_ADDRESS) {
            Ok(Some(TurnAttribute::XorPeerAddress(a))) => a,
            _ => return self.respond_error(socket, msg, error::BAD_REQUEST, false, key),
        };
        if peer.is_ipv4() != self.config.relay_ip().is_ipv4() {
            return self.respond_error(
                socket,
                msg,
                error::PEER_ADDRESS_FAMILY_MISMATCH,
                false,
                key,
            );
        }
        let now = self.now;
        let Some(a) = self.allocations.get(&socket) else {
            return;
        };
        if a.relayed.is_none() {
            return self.respond_error(socket, msg, error::ALLOCATION_MISMATCH, false, key);
        }
        if a.permissions
            .get(&peer.ip())
            .is_none_or(|until| *until <= now)
        {
            return self.respond_error(socket, msg, error::FORBIDDEN, false, key);
        }
        let exists = a
            .peers
            .iter()
            .any(|id| self.peers.get(id).is_some_and(|p| p.remote == peer));
        if exists {
            return self.respond_error(socket, msg, error::CONNECTION_ALREADY_EXISTS, false, key);
        }
        let full = a.peers.len() >= self.config.max_peers_per_allocation
            || self.connection_load() >= self.config.max_connections;
        let (Some(id), Some(out), false) = (self.new_connection_id(), self.new_socket(), full)
        else {
            return self.respond_error(
                socket,
                msg,
                error::CONNECTION_TIMEOUT_OR_FAILURE,
                false,
                key,
            );
        };
        self.ops.push_back(SocketOp::Bind {
            socket: out,
            transport: Transport::Tcp,
            local: SocketAddr::new(self.config.relay_ip(), 0),
            options: BindOptions::default(),
        });
        self.add_peer(
            id,
            Peer {
                socket: out,
                control: socket,
                remote: peer,
                state: PeerState::Binding(*msg.transaction_id().as_bytes()),
                held: Vec::new(),
                eof: false,
                deadline: now.saturating_add(self.config.bind_timeout),
                open: true,
            },
        );
    }

    fn connection_bind(&mut self, socket: SocketId, msg: &Message<'_>, authed: Authed) {
        let key = Some(authed.key);
        let id = match codec::find(msg, attr::CONNECTION_ID) {
            Ok(Some(TurnAttribute::ConnectionId(id))) => id,
            _ => return self.respond_error(socket, msg, error::BAD_REQUEST, false, key),
        };
        if self.allocations.contains_key(&socket) {
            // A control connection cannot become a data connection.
            return self.respond_error(socket, msg, error::BAD_REQUEST, false, key);
        }
        let Some(peer) = self.peers.get(&id) else {
            return self.respond_error(socket, msg, error::BAD_REQUEST, false, key);
        };
        if peer.state != PeerState::Waiting {
            return self.respond_error(socket, msg, error::BAD_REQUEST, false, key);
        }
        let owner = self.allocations.get(&peer.control).map(|a| &a.username);
        if owner != Some(&authed.username) {
            return self.respond_error(socket, msg, error::WRONG_CREDENTIALS, false, key);
        }
        self.respond_ok(socket, msg.method(), msg.transaction_id(), &[], None, key);
        if self.clients.contains_key(&socket) {
            self.splice(id, socket);
        }
    }
}

/// Whole seconds of `d`, saturating at `u32::MAX`.
fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

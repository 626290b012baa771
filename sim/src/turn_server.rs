//! [`TurnServer`]: a TURN server (RFC 8656 over TCP, with RFC 6062 TCP allocations) as a sans-IO
//! machine, for the simulator ([`crate::Sim::add_turn_server`]) and any runtime. It speaks the
//! TURN codec of `p2pd-turn`, so [`p2pd_turn::TurnClient`] is its natural client.
//!
//! It binds a TCP listener on [`TurnServerConfig::listen`] (port 3478 by default) and keeps one
//! `Accept` outstanding on it (and on every relayed listener) while the connection budget
//! ([`TurnServerConfig::max_connections`]) has room:
//!
//! - **Framing**: STUN messages back to back on the stream, reassembled across segments. A frame
//!   that is not STUN, longer than [`MAX_MESSAGE_LEN`], or that does not decode closes that
//!   connection ([`TurnServerStats::malformed`]). Indications and responses from clients are
//!   ignored; a Binding request is answered with XOR-MAPPED-ADDRESS (no authentication).
//! - **Long-term authentication** (RFC 8489 §9.2): a request without MESSAGE-INTEGRITY gets 401
//!   with REALM and a fresh NONCE; one with it but without USERNAME, REALM or NONCE gets 400; a
//!   nonce that is not ours or older than [`TurnServerConfig::nonce_lifetime`] gets 438 with a new
//!   nonce; an unknown user, an expired TURN REST username or a MESSAGE-INTEGRITY that does not
//!   verify under MD5(username:realm:password) gets 401 ([`TurnServerStats::auth_refused`]).
//!   Passwords come from [`TurnServerConfig::users`] or, for usernames `"<unix expiry>:<any>"`,
//!   from the REST shared secret ([`TurnServerConfig::rest_secret`], coturn's
//!   `use-auth-secret`): base64(HMAC-SHA1(secret, username)), valid until the expiry, measured on
//!   the clock [`TurnServerConfig::unix_now`] gives. Nonces are stateless (issue time and a
//!   keyed MD5 tag under a secret from the seed), so a data connection can use the nonce its
//!   control connection got. Responses to authenticated requests carry MESSAGE-INTEGRITY.
//! - **Allocate**: REQUESTED-TRANSPORT TCP (6) gives an RFC 6062 allocation: a relayed TCP
//!   listener bound on [`TurnServerConfig::relay_ip`](TurnServerConfig#structfield.relay_ip) on a fresh port; the success response
//!   (sent once that listener is bound) carries XOR-RELAYED-ADDRESS, XOR-MAPPED-ADDRESS and
//!   LIFETIME (the requested one clamped to [`TurnServerConfig::default_lifetime`] ..=
//!   [`TurnServerConfig::max_lifetime`]). UDP (17) or anything else gets 442; a second Allocate on
//!   the connection 437; beyond [`TurnServerConfig::max_allocations`] 486; a relayed listener that
//!   cannot be bound 508.
//! - **Refresh** sets a new lifetime; LIFETIME 0 deletes the allocation
//!   ([`TurnServerStats::deallocated`]). An allocation whose lifetime runs out is deleted too
//!   ([`TurnServerStats::expired`]), and so is one whose control connection ends. Deleting closes
//!   the relayed listener and every peer and data connection of the allocation. Requests about an
//!   allocation must use its username (441 otherwise); with no allocation they get 437.
//! - **CreatePermission**: every XOR-PEER-ADDRESS gets (or refreshes) a permission for its IP for
//!   [`PERMISSION_LIFETIME`]; at most [`TurnServerConfig::max_permissions`] per allocation (508).
//! - **Peers** (RFC 6062 §5.3): a connection to the relayed address from an IP without a live
//!   permission is closed ([`TurnServerStats::peer_refused_no_permission`]); otherwise the
//!   control connection gets a ConnectionAttempt indication (CONNECTION-ID, XOR-PEER-ADDRESS) and
//!   the peer's bytes are held (at most [`TurnServerConfig::max_peer_buffer`]) until a new
//!   connection to the listen address sends ConnectionBind with that CONNECTION-ID, under the
//!   allocation's credentials, within [`TurnServerConfig::bind_timeout`] (else the peer
//!   connection is closed).
//! - **Connect** (RFC 6062 §5.2): the server connects to XOR-PEER-ADDRESS (it needs a permission:
//!   403 otherwise; 446 if this allocation already has a connection to that address) from the
//!   relay IP on an ephemeral port (not from the relayed port itself, a simplification); once
//!   connected it answers with a CONNECTION-ID, bound by ConnectionBind as above; a failed
//!   connect is 447.
//! - **ConnectionBind** success is answered on the data connection, then the data connection and
//!   the peer connection are spliced byte for byte both ways ([`TurnServerStats::bytes_relayed`]);
//!   bytes after the ConnectionBind in the same segment belong to the peer. One side's EOF shuts
//!   down the other's sending half; once both sides ended, both are closed; a reset or a failure
//!   on either closes both. A spliced side whose runtime refuses bytes (the sim model has no flow
//!   control toward the sender) is closed with its partner ([`TurnServerStats::slow_closed`]).
//! - **Bounds**: connections (all kinds), allocations, permissions per allocation, peer
//!   connections per allocation ([`TurnServerConfig::max_peers_per_allocation`]), bytes held per
//!   peer, bytes queued toward the runtime ([`MAX_QUEUED`]), message size, events
//!   ([`MAX_EVENTS`]); a connection with no allocation and no splice is closed after
//!   [`TurnServerConfig::idle_timeout`].
//!
//! [`TurnServer::close`] closes every connection, relayed listener and the listener, each exactly
//! once, then reports [`TurnServerEvent::Closed`].

// A server model faces arbitrary input (and the fuzzer): the protocol crates' strict lints hold
// here too, although the simulator crate does not opt in to them.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use p2pd_proto::stun::StreamFramer;
use p2pd_proto::{BindOptions, Instant, Rng, SocketId, SocketOp, Transport};

mod auth;
mod config;
mod machine;
mod relay;
mod report;
mod requests;
#[cfg(test)]
mod tests;
mod wire;

pub use config::TurnServerConfig;
pub use report::{EndReason, TurnServerEvent, TurnServerStats};

/// Most events queued; beyond, the oldest are dropped.
pub const MAX_EVENTS: usize = 1024;
/// Longest STUN message accepted from a client.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// How long a permission lasts (RFC 8656 §9).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// Most bytes queued toward the runtime at once; a connection whose bytes would go beyond is
/// closed (a slow consumer).
pub const MAX_QUEUED: usize = 4 * 1024 * 1024;

/// The listener's socket id.
const LISTENER: SocketId = SocketId(0);

/// A connection accepted on the listen address: a control connection, or a data connection
/// before or after its ConnectionBind.
#[derive(Debug)]
struct Client {
    remote: SocketAddr,
    /// Bytes of a message not complete yet (at most [`MAX_MESSAGE_LEN`]).
    framer: StreamFramer,
    /// Spliced with this peer connection (CONNECTION-ID).
    spliced: Option<u32>,
    /// The client ended its sending half (only tracked while spliced).
    eof: bool,
    /// Closed at this time unless it allocates or gets spliced.
    idle_deadline: Option<Instant>,
}

/// An allocation, keyed by its control connection.
#[derive(Debug)]
struct Allocation {
    listener: SocketId,
    /// The relayed listener's bind was asked for and did not fail: ours to close.
    listener_open: bool,
    relayed: Option<SocketAddr>,
    /// The Allocate waiting for the relayed listener's bind: its transaction id and lifetime.
    waiting: Option<([u8; 12], u32)>,
    /// An accept is outstanding on the relayed listener.
    accepting: bool,
    /// An accept on it failed: no more are asked (re-asking could spin).
    accept_broken: bool,
    expires: Instant,
    permissions: BTreeMap<IpAddr, Instant>,
    username: String,
    key: [u8; 16],
    /// Its peer connections' CONNECTION-IDs.
    peers: BTreeSet<u32>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum PeerState {
    /// Connect: the outgoing socket's bind is out (transaction id of the Connect).
    Binding([u8; 12]),
    /// Connect: the connect is out.
    Connecting([u8; 12]),
    /// Waiting for ConnectionBind.
    Waiting,
    /// Spliced with this data connection.
    Spliced(SocketId),
}

/// A connection with a peer, accepted on a relayed listener or opened by Connect.
#[derive(Debug)]
struct Peer {
    socket: SocketId,
    /// The allocation (its control connection).
    control: SocketId,
    remote: SocketAddr,
    state: PeerState,
    /// Held until the splice.
    held: Vec<u8>,
    /// The peer ended its sending half (only tracked while spliced).
    eof: bool,
    /// Closed at this time unless spliced.
    deadline: Instant,
    /// The socket exists (not a failed bind): ours to close.
    open: bool,
}

/// The TURN server machine. See the module docs.
#[derive(Debug)]
pub struct TurnServer {
    config: TurnServerConfig,
    rng: Rng,
    /// Keys the nonce tags.
    nonce_secret: [u8; 16],
    clients: BTreeMap<SocketId, Client>,
    allocations: BTreeMap<SocketId, Allocation>,
    /// Relayed listener -> its allocation's control connection.
    listeners: BTreeMap<SocketId, SocketId>,
    peers: BTreeMap<u32, Peer>,
    /// Peer socket -> CONNECTION-ID.
    peer_sockets: BTreeMap<SocketId, u32>,
    /// Outstanding accepts: accepted socket id -> listener.
    accepts: BTreeMap<SocketId, SocketId>,
    /// Accepts outstanding when their relayed listener closed.
    orphans: BTreeSet<SocketId>,
    next_id: u32,
    ops: VecDeque<SocketOp>,
    out: crate::out_queue::OutQueue,
    events: VecDeque<TurnServerEvent>,
    stats: TurnServerStats,
    timeout: Option<Instant>,
    /// The time of the input being handled.
    now: Instant,
    listener_open: bool,
    listening: bool,
    accept_broken: bool,
    closed: bool,
}

impl TurnServer {
    /// A server that binds and listens as soon as it is drained; `seed` keys its nonces and picks
    /// its CONNECTION-IDs.
    pub fn new(config: TurnServerConfig, seed: u64) -> Self {
        let mut ops = VecDeque::new();
        ops.push_back(SocketOp::Bind {
            socket: LISTENER,
            transport: Transport::Tcp,
            local: config.listen,
            options: BindOptions {
                reuse_address: true,
                ..BindOptions::default()
            },
        });
        let mut rng = Rng::from_seed(seed);
        let mut nonce_secret = [0u8; 16];
        rng.fill_bytes(&mut nonce_secret);
        TurnServer {
            config,
            rng,
            nonce_secret,
            clients: BTreeMap::new(),
            allocations: BTreeMap::new(),
            listeners: BTreeMap::new(),
            peers: BTreeMap::new(),
            peer_sockets: BTreeMap::new(),
            accepts: BTreeMap::new(),
            orphans: BTreeSet::new(),
            next_id: 1,
            ops,
            out: crate::out_queue::OutQueue::default(),
            events: VecDeque::new(),
            stats: TurnServerStats::default(),
            timeout: None,
            now: Instant::ZERO,
            listener_open: true,
            listening: false,
            accept_broken: false,
            closed: false,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &TurnServerConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> TurnServerStats {
        self.stats
    }

    /// The relayed addresses of the live allocations, in control-connection order.
    pub fn relayed_addresses(&self) -> Vec<SocketAddr> {
        self.allocations
            .values()
            .filter_map(|a| a.relayed)
            .collect()
    }

    /// Table sizes: (connections on the listen address, allocations, peer connections,
    /// outstanding accepts). For bound checks in tests and fuzzing.
    pub fn table_sizes(&self) -> (usize, usize, usize, usize) {
        (
            self.clients.len(),
            self.allocations.len(),
            self.peers.len(),
            self.accepts.len(),
        )
    }

    /// Closes every connection, relayed listener and the listener (each exactly once), then
    /// reports [`TurnServerEvent::Closed`]. Idempotent.
    pub fn close(&mut self, _now: Instant) {
        if self.closed {
            return;
        }
        self.closed = true;
        let controls: Vec<SocketId> = self.allocations.keys().copied().collect();
        for c in controls {
            self.delete_allocation(c, EndReason::Shutdown);
        }
        let clients: Vec<SocketId> = self.clients.keys().copied().collect();
        for s in clients {
            self.close_client(s);
        }
        let peers: Vec<u32> = self.peers.keys().copied().collect();
        for id in peers {
            self.close_peer(id);
        }
        if core::mem::take(&mut self.listener_open) {
            self.ops.push_back(SocketOp::Close { socket: LISTENER });
        }
        self.listening = false;
        // An accept still outstanding may yet complete: its stream is closed then.
        self.orphan_accepts(LISTENER);
        self.timeout = None;
        self.push_event(TurnServerEvent::Closed);
    }

    fn push_event(&mut self, event: TurnServerEvent) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// A socket id never used before (ids are not reused while the server runs).
    fn new_socket(&mut self) -> Option<SocketId> {
        if self.next_id == u32::MAX {
            return None;
        }
        let id = SocketId(self.next_id);
        self.next_id = self.next_id.saturating_add(1);
        Some(id)
    }

    /// Connections of every kind open (or being opened) now, with the outstanding accepts.
    fn connection_load(&self) -> usize {
        self.clients
            .len()
            .saturating_add(self.peers.len())
            .saturating_add(self.accepts.len())
    }

    /// Keeps one accept outstanding on the listener and on every relayed listener while the
    /// connection budget has room.
    fn fill_accepts(&mut self) {
        if self.closed {
            return;
        }
        let main_waiting = self.accepts.values().any(|l| *l == LISTENER);
        if self.listening
            && !self.accept_broken
            && !main_waiting
            && self.connection_load() < self.config.max_connections
        {
            self.ask_accept(LISTENER);
        }
        let wanting: Vec<SocketId> = self
            .allocations
            .values()
            .filter(|a| a.relayed.is_some() && !a.accepting && !a.accept_broken)
            .map(|a| a.listener)
            .collect();
        for listener in wanting {
            if self.connection_load() >= self.config.max_connections {
                return;
            }
            let Some(control) = self.listeners.get(&listener).copied() else {
                continue;
            };
            if let Some(a) = self.allocations.get_mut(&control) {
                a.accepting = true;
            }
            self.ask_accept(listener);
        }
    }

    fn ask_accept(&mut self, listener: SocketId) {
        let Some(socket) = self.new_socket() else {
            return;
        };
        self.accepts.insert(socket, listener);
        self.ops.push_back(SocketOp::Accept { listener, socket });
    }

    /// Queues `bytes` on `socket` in transmit-sized chunks; `false` (nothing queued) if that would
    /// exceed [`MAX_QUEUED`].
    fn send(&mut self, socket: SocketId, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return true;
        }
        if self.out.queued().saturating_add(bytes.len()) > MAX_QUEUED {
            return false;
        }
        self.out.push(socket, bytes);
        true
    }

    /// Closes connection `socket` on the listen address (once): a spliced one takes its peer
    /// along, a control connection its allocation.
    fn close_client(&mut self, socket: SocketId) {
        let Some(client) = self.clients.remove(&socket) else {
            return;
        };
        self.ops.push_back(SocketOp::Close { socket });
        if self.allocations.contains_key(&socket) {
            self.delete_allocation(socket, EndReason::ControlClosed);
        }
        if let Some(id) = client.spliced {
            self.close_peer(id);
        }
        self.fill_accepts();
    }

    /// Deletes the allocation of control connection `control` (once): its relayed listener and
    /// every peer connection (and their data connections) are closed.
    fn delete_allocation(&mut self, control: SocketId, reason: EndReason) {
        let Some(a) = self.allocations.remove(&control) else {
            return;
        };
        self.listeners.remove(&a.listener);
        self.orphan_accepts(a.listener);
        if a.listener_open {
            self.ops.push_back(SocketOp::Close { socket: a.listener });
        }
        for id in a.peers {
            self.close_peer(id);
        }
        if a.relayed.is_some() {
            self.stats.allocations_live = self.stats.allocations_live.saturating_sub(1);
            match reason {
                EndReason::Deallocated => bump(&mut self.stats.deallocated),
                EndReason::Expired => bump(&mut self.stats.expired),
                _ => {}
            }
            self.push_event(TurnServerEvent::Deallocated {
                relayed: a.relayed,
                reason,
            });
        }
        // A control connection left without an allocation gets the idle deadline again.
        let idle = self.config.idle_timeout;
        let now = self.now;
        if let Some(c) = self.clients.get_mut(&control) {
            c.idle_deadline = Some(now.saturating_add(idle));
        }
        self.fill_accepts();
    }

    fn refresh_timeout(&mut self) {
        let allocs = self.allocations.values().map(|a| a.expires);
        let peers = self
            .peers
            .values()
            .filter(|p| !matches!(p.state, PeerState::Spliced(_)))
            .map(|p| p.deadline);
        let idle = self.clients.values().filter_map(|c| c.idle_deadline);
        self.timeout = allocs.chain(peers).chain(idle).min();
    }
}

/// Adds one to a counter (saturating).
fn bump(counter: &mut u64) {
    *counter = counter.saturating_add(1);
}

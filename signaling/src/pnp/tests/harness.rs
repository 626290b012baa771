//! An in-memory network for one PNP server and several clients: answers socket intents, pairs TCP
//! connects with the server's accepts, delivers datagrams and stream chunks (optionally split or
//! lost), and records closes so tests can assert "exactly once".

use p2pd_proto::testing::{Driven, Output};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use p2pd_proto::{Instant, IoError, OpKind, SocketId, SocketOp, SocketOutcome, Transport};

use crate::envelope::seal;
use crate::identity::{Identity, PublicKey};
use crate::pnp::*;

pub const EPOCH: u64 = 1_700_000_000_000;

pub fn id(byte: u8) -> Identity {
    Identity::from_secret_bytes(&[byte; 32]).unwrap()
}

pub fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

pub fn server_addr() -> SocketAddr {
    "192.0.2.1:5300".parse().unwrap()
}

pub fn server_config() -> PnpServerConfig {
    PnpServerConfig::new(server_addr(), server_addr(), EPOCH)
}

/// Seals `request` from `from` to `to` at Unix time `now_ms` with `nonce`, padded to `pad_to`.
pub fn seal_request(
    from: &Identity,
    to: &PublicKey,
    now_ms: u64,
    nonce: [u8; 16],
    request: &Request,
    pad_to: usize,
) -> Vec<u8> {
    seal(from, to, now_ms, nonce, &request.encode(pad_to)).unwrap()
}

pub struct Client {
    /// The client; every input and drain goes through its contract checker.
    pub machine: Driven<PnpClient>,
    pub addr: SocketAddr,
    pub events: Vec<PnpClientEvent>,
    pub closes: Vec<SocketId>,
    pub open_tcp: HashMap<SocketId, SocketId>,
    next_port: u16,
}

/// Replies and requests seen on UDP, for the amplification check.
#[derive(Default)]
pub struct UdpLog {
    pub pairs: Vec<(usize, usize)>,
}

pub struct World {
    pub now: Instant,
    /// The server; every input and drain goes through its contract checker.
    pub server: Driven<PnpServer<MemoryStore>>,
    pub server_key: PublicKey,
    pub server_events: Vec<PnpServerEvent>,
    pub server_closes: Vec<SocketId>,
    /// Server connection sockets open now (accepted, not closed).
    pub server_open: std::collections::HashSet<SocketId>,
    pub clients: Vec<Client>,
    accepts: VecDeque<SocketId>,
    /// Server connection socket -> (client index, client socket).
    links: HashMap<SocketId, (usize, SocketId)>,
    /// Client->server TCP chunks are cut at this offset (first chunk) when set.
    pub split_at: Option<usize>,
    /// Client->server UDP datagrams to lose, in order (true = lose).
    pub lose_requests: VecDeque<bool>,
    /// Server->client UDP datagrams to lose, in order.
    pub lose_replies: VecDeque<bool>,
    /// Every client->server UDP datagram.
    pub captured: Vec<Vec<u8>>,
    pub udp: UdpLog,
    /// Refuse TCP connects.
    pub refuse_tcp: bool,
}

impl World {
    pub fn new(config: PnpServerConfig) -> World {
        Self::with_store(config, MemoryStore::new(1000))
    }

    pub fn with_store(config: PnpServerConfig, store: MemoryStore) -> World {
        let identity = id(200);
        let server_key = identity.public_key();
        let server = PnpServer::new(config, identity, store, 7).unwrap();
        let now = Instant::from_millis(1_000);
        let mut server =
            Driven::new("pnp server", server, |e| *e == PnpServerEvent::Closed).at(now);
        server.drain();
        let mut world = World {
            now,
            server,
            server_key,
            server_events: Vec::new(),
            server_closes: Vec::new(),
            server_open: Default::default(),
            clients: Vec::new(),
            accepts: VecDeque::new(),
            links: HashMap::new(),
            split_at: None,
            lose_requests: VecDeque::new(),
            lose_replies: VecDeque::new(),
            captured: Vec::new(),
            udp: UdpLog::default(),
            refuse_tcp: false,
        };
        world.pump();
        world
    }

    pub fn client_config(&self, transport: PnpTransport) -> PnpClientConfig {
        PnpClientConfig::new(server_addr(), self.server_key, transport, EPOCH)
    }

    /// Adds a client at `addr` with identity `key` (byte) and returns its index.
    pub fn add_client(&mut self, key: u8, addr: &str, transport: PnpTransport) -> usize {
        let config = self.client_config(transport);
        self.add_client_with(key, addr, config)
    }

    pub fn add_client_with(&mut self, key: u8, addr: &str, config: PnpClientConfig) -> usize {
        self.clients.push(Client {
            machine: Driven::new(
                "pnp client",
                PnpClient::new(config, id(key), u64::from(key)),
                |e| *e == PnpClientEvent::Closed,
            )
            .at(self.now),
            addr: addr.parse().unwrap(),
            events: Vec::new(),
            closes: Vec::new(),
            open_tcp: HashMap::new(),
            next_port: 50_000,
        });
        self.clients.len() - 1
    }

    /// Client `c`, its clock set to the world's.
    pub fn client(&mut self, c: usize) -> &mut Driven<PnpClient> {
        let now = self.now;
        self.clients[c].machine.clock(now)
    }

    /// Carries out every output of every machine (each drained through its checker) until none
    /// is left.
    pub fn pump(&mut self) {
        loop {
            let mut progressed = false;
            for c in 0..self.clients.len() {
                let out = self.clients[c].machine.take();
                progressed |= !out.is_empty();
                for output in out.into_outputs() {
                    match output {
                        Output::Transmit(t, bytes) => {
                            assert_eq!(t.destination, server_addr());
                            self.client_transmit(c, t.socket, bytes);
                        }
                        Output::Op(op) => self.client_op(c, op),
                        Output::Event(ev) => self.clients[c].events.push(ev),
                    }
                }
            }
            let out = self.server.take();
            progressed |= !out.is_empty();
            for output in out.into_outputs() {
                match output {
                    Output::Transmit(t, bytes) => {
                        self.server_transmit(t.socket, t.destination, bytes)
                    }
                    Output::Op(op) => self.server_op(op),
                    Output::Event(ev) => self.server_events.push(ev),
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// Advances time by `d`, firing every due timeout, then pumps.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let mut next = self.server.deadline();
            for c in &self.clients {
                if let Some(t) = c.machine.deadline() {
                    next = Some(next.map_or(t, |n: Instant| n.min(t)));
                }
            }
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    if self.server.deadline().is_some_and(|d| d <= now) {
                        self.server.clock(now).fire();
                    }
                    for c in 0..self.clients.len() {
                        if self.clients[c].machine.deadline().is_some_and(|d| d <= now) {
                            self.clients[c].machine.clock(now).fire();
                        }
                    }
                    self.pump();
                }
                _ => break,
            }
        }
        self.now = end;
        self.pump();
    }

    /// The single event of client `c` since the last call (asserts there is exactly one).
    pub fn take_event(&mut self, c: usize) -> PnpClientEvent {
        let events = std::mem::take(&mut self.clients[c].events);
        assert_eq!(events.len(), 1, "expected one event, got {events:?}");
        events.into_iter().next().unwrap()
    }

    /// Issues a command on client `c`, runs to completion (advancing time up to 10 s if needed)
    /// and returns its one event.
    pub fn run(
        &mut self,
        c: usize,
        command: impl FnOnce(&mut PnpClient, Instant) -> RequestId,
    ) -> PnpClientEvent {
        let now = self.now;
        let rid = self.clients[c].machine.clock(now).input(command);
        self.pump();
        let mut waited = 0;
        while self.clients[c].events.is_empty() && waited < 100 {
            self.advance(Duration::from_millis(100));
            waited += 1;
        }
        let ev = self.take_event(c);
        let ev_id = match &ev {
            PnpClientEvent::Registered { id, .. }
            | PnpClientEvent::Found { id, .. }
            | PnpClientEvent::NotFound { id, .. }
            | PnpClientEvent::Deleted { id, .. }
            | PnpClientEvent::Failed { id, .. } => *id,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(ev_id, rid);
        ev
    }

    pub fn register(&mut self, c: usize, n: &str, value: &[u8], version: u64) -> PnpClientEvent {
        let (n, value) = (name(n), value.to_vec());
        self.run(c, |m, now| {
            m.register(now, n, value, version, Duration::from_secs(600))
                .unwrap()
        })
    }

    pub fn lookup(&mut self, c: usize, n: &str) -> PnpClientEvent {
        let n = name(n);
        self.run(c, |m, now| m.lookup(now, n).unwrap())
    }

    pub fn delete(&mut self, c: usize, n: &str, version: u64) -> PnpClientEvent {
        let n = name(n);
        self.run(c, |m, now| m.delete(now, n, version).unwrap())
    }

    /// Sends raw bytes to the server's UDP socket from `from` and returns its replies.
    pub fn raw_udp(&mut self, from: SocketAddr, bytes: &[u8]) -> Vec<Vec<u8>> {
        let _ = self
            .server
            .clock(self.now)
            .datagram(UDP_SOCKET, from, bytes);
        let mut out = Vec::new();
        for (t, reply) in self.server.take_transmits() {
            assert_eq!(t.socket, UDP_SOCKET);
            assert_eq!(t.destination, from);
            assert!(
                t.len <= bytes.len(),
                "UDP reply {} > request {}",
                t.len,
                bytes.len()
            );
            out.push(reply);
        }
        self.pump();
        out
    }

    /// Opens a raw TCP connection to the server from `remote` and returns the server's socket.
    pub fn raw_connect(&mut self, remote: SocketAddr) -> SocketId {
        let accept = self
            .accepts
            .pop_front()
            .expect("server waiting for a connection");
        self.server_open.insert(accept);
        self.server.clock(self.now).outcome(
            accept,
            SocketOutcome::Accepted {
                local: server_addr(),
                remote,
            },
        );
        self.pump();
        accept
    }

    /// Sends raw bytes on a raw server connection and returns the bytes the server wrote back.
    pub fn raw_stream(&mut self, conn: SocketId, bytes: &[u8]) -> Vec<u8> {
        let _ = self.server.clock(self.now).stream(conn, bytes);
        let mut out = Vec::new();
        for (t, reply) in self.server.take_transmits() {
            assert_eq!(t.socket, conn);
            out.extend_from_slice(&reply);
        }
        self.pump();
        out
    }

    fn client_op(&mut self, c: usize, op: SocketOp) {
        let now = self.now;
        match op {
            SocketOp::Bind {
                socket, transport, ..
            } => {
                let client = &mut self.clients[c];
                let local = match transport {
                    Transport::Udp => client.addr,
                    Transport::Tcp => {
                        client.next_port += 1;
                        SocketAddr::new(client.addr.ip(), client.next_port)
                    }
                };
                client
                    .machine
                    .clock(now)
                    .outcome(socket, SocketOutcome::Bound { local });
            }
            SocketOp::Connect { socket, remote } => {
                assert_eq!(remote, server_addr());
                let accept = if self.refuse_tcp {
                    None
                } else {
                    self.accepts.pop_front()
                };
                let Some(accept) = accept else {
                    self.clients[c].machine.clock(now).outcome(
                        socket,
                        SocketOutcome::Failed {
                            op: OpKind::Connect,
                            destination: Some(remote),
                            error: IoError::ConnectionRefused,
                        },
                    );
                    return;
                };
                let client_addr = SocketAddr::new(self.clients[c].addr.ip(), 40_000);
                self.server_open.insert(accept);
                self.links.insert(accept, (c, socket));
                self.clients[c].open_tcp.insert(socket, accept);
                self.server.clock(now).outcome(
                    accept,
                    SocketOutcome::Accepted {
                        local: server_addr(),
                        remote: client_addr,
                    },
                );
                self.clients[c].machine.clock(now).outcome(
                    socket,
                    SocketOutcome::Connected {
                        local: client_addr,
                        remote,
                    },
                );
            }
            SocketOp::Close { socket } => {
                self.clients[c].closes.push(socket);
                if let Some(server_sock) = self.clients[c].open_tcp.remove(&socket) {
                    self.links.remove(&server_sock);
                    self.server
                        .clock(now)
                        .outcome(server_sock, SocketOutcome::PeerClosed);
                }
            }
            other => panic!("unexpected client op {other:?}"),
        }
    }

    fn server_op(&mut self, op: SocketOp) {
        let now = self.now;
        match op {
            SocketOp::Bind { socket, local, .. } => {
                self.server
                    .clock(now)
                    .outcome(socket, SocketOutcome::Bound { local });
            }
            SocketOp::Listen { .. } => {}
            SocketOp::Accept { listener, socket } => {
                assert_eq!(listener, TCP_LISTENER);
                assert!(!self.accepts.contains(&socket), "two accepts on one id");
                self.accepts.push_back(socket);
            }
            SocketOp::Close { socket } => {
                self.server_closes.push(socket);
                if socket == UDP_SOCKET || socket == TCP_LISTENER {
                    let n = self.server_closes.iter().filter(|s| **s == socket).count();
                    assert_eq!(n, 1, "{socket} closed twice");
                } else {
                    assert!(
                        self.server_open.remove(&socket),
                        "closed {socket}, not open"
                    );
                }
                assert!(
                    !self.accepts.contains(&socket),
                    "closed a socket still accepting"
                );
                if let Some((c, client_sock)) = self.links.remove(&socket) {
                    self.clients[c].open_tcp.remove(&client_sock);
                    self.clients[c]
                        .machine
                        .clock(now)
                        .outcome(client_sock, SocketOutcome::PeerClosed);
                }
            }
            other => panic!("unexpected server op {other:?}"),
        }
    }

    fn client_transmit(&mut self, c: usize, socket: SocketId, bytes: Vec<u8>) {
        let now = self.now;
        if socket == CLIENT_UDP_SOCKET {
            self.captured.push(bytes.clone());
            if self.lose_requests.pop_front().unwrap_or(false) {
                return;
            }
            let from = self.clients[c].addr;
            let _ = self.server.clock(now).datagram(UDP_SOCKET, from, &bytes);
            for (t, reply) in self.server.take_transmits() {
                if t.socket == UDP_SOCKET {
                    assert!(
                        t.len <= bytes.len(),
                        "UDP reply {} > request {}",
                        t.len,
                        bytes.len()
                    );
                    self.udp.pairs.push((bytes.len(), t.len));
                }
                self.server_transmit(t.socket, t.destination, reply);
            }
            return;
        }
        let Some(&server_sock) = self.clients[c].open_tcp.get(&socket) else {
            return;
        };
        let cut = self.split_at.map_or(bytes.len(), |k| k.min(bytes.len()));
        let (a, b) = bytes.split_at(cut);
        for chunk in [a, b] {
            if !chunk.is_empty() && self.links.contains_key(&server_sock) {
                let _ = self.server.clock(now).stream(server_sock, chunk);
            }
        }
    }

    fn server_transmit(&mut self, socket: SocketId, destination: SocketAddr, bytes: Vec<u8>) {
        let now = self.now;
        if socket == UDP_SOCKET {
            if self.lose_replies.pop_front().unwrap_or(false) {
                return;
            }
            if let Some(c) = self.clients.iter().position(|c| c.addr == destination) {
                let _ = self.clients[c].machine.clock(now).datagram(
                    CLIENT_UDP_SOCKET,
                    server_addr(),
                    &bytes,
                );
            }
            return;
        }
        if let Some(&(c, client_sock)) = self.links.get(&socket) {
            let _ = self.clients[c]
                .machine
                .clock(now)
                .stream(client_sock, &bytes);
        }
    }
}

/// Asserts that no socket id appears twice in `closes`.
pub fn assert_closed_once(closes: &[SocketId]) {
    let mut seen = std::collections::HashSet::new();
    for s in closes {
        assert!(seen.insert(*s), "{s} closed twice in {closes:?}");
    }
}

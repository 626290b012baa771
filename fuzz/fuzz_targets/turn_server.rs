//! Stateful fuzzing of the TURN server model (`p2pd_sim::TurnServer`) through the contract
//! checker.
//!
//! Inputs: connections accepted on the listen address and on relayed listeners (peers from
//! permitted or other IPs), arbitrary stream chunks, well-formed requests (Allocate, Refresh,
//! CreatePermission, Connect, ConnectionBind, Binding) with no, good, wrong, static or TURN REST
//! (valid or expired) credentials under the last nonce the server gave (or a stale or forged one),
//! split anywhere with trailing bytes, CONNECTION-IDs the server announced or made up, socket
//! outcomes (EOF, resets, refused sends, failed or completed connects and accepts, failed binds),
//! time steps, the whole happy path in one step (so splices are reached) and close. Checks
//! besides the contract: every message the server writes on a control or data connection before
//! its splice is a valid STUN message; tables and counters stay within the
//! configured bounds; after close nothing is left open.
#![no_main]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2pd_proto::stun::{Attribute, Class, Header, Message, MessageWriter, Method, TransactionId};
use p2pd_proto::testing::Driven;
use p2pd_proto::{Instant, IoError, OpKind, SocketId, SocketOp, SocketOutcome};
use p2pd_sim::{TurnServer, TurnServerConfig, TurnServerEvent};
use p2pd_turn::codec::{self, attr, long_term_key, method, RestCredentials, TurnAttribute, TurnWriter};

const REALM: &str = "fuzz.turn";
const SECRET: &[u8] = b"fuzz-secret";
const UNIX_NOW: u64 = 1_800_000_000;
const LISTENER: SocketId = SocketId(0);
const MAX_CONNECTIONS: usize = 8;
const MAX_ALLOCATIONS: usize = 2;

#[derive(Arbitrary, Debug)]
enum Op {
    /// The `which`-th outstanding accept completes, from peer address `from`.
    Accept { which: u8, from: u8 },
    /// Raw bytes on the `conn`-th known stream.
    Chunk { conn: u8, data: Vec<u8> },
    /// A well-formed request on the `conn`-th known stream.
    Request {
        conn: u8,
        kind: u8,
        auth: u8,
        lifetime: Option<u32>,
        transport: u8,
        peer: u8,
        id: u8,
        cut: u16,
        trailing: Vec<u8>,
    },
    /// An outcome on the `socket`-th known socket: 0 EOF, 1 reset, 2 refused send, 3 writable,
    /// 4 connected, 5 connect fails, 6 accept fails, 7 listen fails.
    Outcome { socket: u8, kind: u8 },
    Advance { ms: u32 },
    /// The happy path in one go (so the fuzzer starts from spliced connections): a control
    /// connection allocates with good credentials, permits peer `from`, the peer connects to
    /// the relayed address, a data connection binds it.
    Setup { from: u8 },
    Close,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Bit n: the n-th bind fails.
    bind_failures: u16,
    ops: Vec<Op>,
}

fn peer_addr(from: u8) -> SocketAddr {
    SocketAddr::from(([203, 0, 113, from % 4], 5000 + u16::from(from % 8)))
}

struct Harness {
    d: Driven<TurnServer>,
    /// Accepts outstanding: (listener, socket).
    accepts: Vec<(SocketId, SocketId)>,
    /// Streams known open (accepted or connected), in order of appearance.
    streams: Vec<SocketId>,
    /// Sockets with a Connect out.
    connecting: Vec<SocketId>,
    /// Relayed listeners (bound).
    listeners: Vec<SocketId>,
    /// Streams spliced (their bytes are raw).
    raw: BTreeSet<SocketId>,
    nonce: Vec<u8>,
    ids: Vec<u32>,
    tid: u32,
    closed: bool,
}

impl Harness {
    fn check(&mut self) {
        let out = self.d.take();
        for op in out.ops {
            match op {
                SocketOp::Accept { listener, socket } => self.accepts.push((listener, socket)),
                SocketOp::Listen { socket, .. } if socket != LISTENER => self.listeners.push(socket),
                SocketOp::Connect { socket, .. } => self.connecting.push(socket),
                SocketOp::Close { socket } => {
                    self.streams.retain(|s| *s != socket);
                    self.connecting.retain(|s| *s != socket);
                    self.listeners.retain(|s| *s != socket);
                    self.accepts.retain(|(l, _)| *l != socket);
                    self.raw.remove(&socket);
                }
                _ => {}
            }
        }
        for (t, bytes) in out.transmits {
            if self.raw.contains(&t.socket) {
                continue;
            }
            let msg = match Message::decode(&bytes) {
                Ok(m) => m,
                Err(e) => panic!("server wrote a non-STUN message on {:?}: {e:?} {bytes:?}", t.socket),
            };
            if let Ok(Some(TurnAttribute::Nonce(n))) = codec::find(&msg, attr::NONCE) {
                self.nonce = n.to_vec();
            }
            if let Ok(Some(TurnAttribute::ConnectionId(id))) = codec::find(&msg, attr::CONNECTION_ID) {
                if self.ids.len() < 16 {
                    self.ids.push(id);
                }
            }
            if msg.method() == method::CONNECTION_BIND && msg.class() == Class::Success {
                // Spliced from now on: bytes are the peer's.
                self.raw.insert(t.socket);
            }
        }
        let (clients, allocations, peers, accepts) = self.d.machine.table_sizes();
        assert!(clients + peers <= MAX_CONNECTIONS, "{clients} + {peers} connections");
        assert!(allocations <= MAX_ALLOCATIONS);
        assert!(accepts <= 1 + MAX_ALLOCATIONS);
        let s = self.d.machine.stats();
        assert!(s.allocations_live <= s.allocations_total);
        assert!(s.allocations_live as usize <= allocations);
    }

    /// Completes the `which`-th outstanding accept on `listener` from `remote`.
    fn accept(&mut self, listener: SocketId, remote: SocketAddr) -> Option<SocketId> {
        let at = self.accepts.iter().position(|(l, _)| *l == listener)?;
        let (_, socket) = self.accepts.remove(at);
        self.streams.push(socket);
        if listener != LISTENER {
            // A peer: its stream carries the client's raw bytes.
            self.raw.insert(socket);
        }
        self.d.outcome(socket, SocketOutcome::Accepted { local: "192.0.2.1:3478".parse().unwrap(), remote });
        self.check();
        Some(socket)
    }

    fn send(&mut self, socket: SocketId, bytes: &[u8]) {
        let _ = self.d.stream(socket, bytes);
        self.check();
    }

    fn setup(&mut self, from: u8) -> Option<()> {
        let from = from & 0x7F;
        let control = self.accept(LISTENER, SocketAddr::from(([198, 51, 100, 1], 40001)))?;
        let challenge = self.request(0, 0, None, 0, from, 0, None);
        self.send(control, &challenge);
        let allocate = self.request(0, 1, None, 0, from, 0, None);
        self.send(control, &allocate);
        let listener = *self.listeners.last()?;
        let permit = self.request(2, 1, None, 0, from, 0, None);
        self.send(control, &permit);
        self.accept(listener, peer_addr(from))?;
        let id = *self.ids.last()?;
        let data = self.accept(LISTENER, SocketAddr::from(([198, 51, 100, 1], 40002)))?;
        let bind = self.request(4, 1, None, 0, from, 0, Some(id));
        self.send(data, &bind);
        Some(())
    }

    #[allow(clippy::too_many_arguments)]
    fn request(&mut self, kind: u8, auth: u8, lifetime: Option<u32>, transport: u8, peer: u8, id: u8, cid: Option<u32>) -> Vec<u8> {
        self.tid = self.tid.wrapping_add(1);
        let mut t = [0u8; 12];
        t[..4].copy_from_slice(&self.tid.to_be_bytes());
        let m: Method = match kind % 6 {
            0 => method::ALLOCATE,
            1 => method::REFRESH,
            2 => method::CREATE_PERMISSION,
            3 => method::CONNECT,
            4 => method::CONNECTION_BIND,
            _ => Method::BINDING,
        };
        let header = Header::new(Class::Request, m, TransactionId::new(t));
        let mut buf = vec![0u8; 1024];
        let mut w = MessageWriter::new(&mut buf, header).unwrap();
        if m == method::ALLOCATE {
            let proto = match transport % 3 {
                0 => codec::TRANSPORT_TCP,
                1 => codec::TRANSPORT_UDP,
                _ => transport,
            };
            w.add_turn(&header, &TurnAttribute::RequestedTransport(proto)).unwrap();
        }
        if let Some(l) = lifetime {
            // A third of them 0: a deallocation when it is a Refresh.
            let l = if l % 3 == 0 { 0 } else { l % 100 };
            w.add_turn(&header, &TurnAttribute::Lifetime(l)).unwrap();
        }
        if m == method::CREATE_PERMISSION || m == method::CONNECT {
            w.add_turn(&header, &TurnAttribute::XorPeerAddress(peer_addr(peer))).unwrap();
            if peer & 0x80 != 0 {
                w.add_turn(&header, &TurnAttribute::XorPeerAddress(peer_addr(peer >> 2))).unwrap();
            }
        }
        if m == method::CONNECTION_BIND {
            let cid = match (cid, self.ids.get(usize::from(id) % (self.ids.len() + 1))) {
                (Some(c), _) => c,
                (None, Some(i)) => *i,
                (None, None) => u32::from(id),
            };
            w.add_turn(&header, &TurnAttribute::ConnectionId(cid)).unwrap();
        }
        let (user, pass, nonce): (String, String, Vec<u8>) = match auth % 7 {
            0 => (String::new(), String::new(), Vec::new()),
            1 => ("u".into(), "p".into(), self.nonce.clone()),
            2 => ("u".into(), "wrong".into(), self.nonce.clone()),
            3 => {
                let now_s = self.d.now.as_nanos() / 1_000_000_000;
                let c = RestCredentials::new(SECRET, "rest", UNIX_NOW + now_s + 60);
                (c.username, c.password, self.nonce.clone())
            }
            4 => {
                let c = RestCredentials::new(SECRET, "late", UNIX_NOW - 10);
                (c.username, c.password, self.nonce.clone())
            }
            5 => ("u".into(), "p".into(), b"0000000000000000forged-nonce-forged-nonce-forgeee".to_vec()),
            _ => ("v".into(), "p".into(), self.nonce.clone()),
        };
        if auth % 7 != 0 {
            w.add(&Attribute::Username(user.as_bytes())).unwrap();
            w.add_turn(&header, &TurnAttribute::Realm(REALM)).unwrap();
            w.add_turn(&header, &TurnAttribute::Nonce(&nonce)).unwrap();
            w.add_message_integrity(&long_term_key(user.as_bytes(), REALM.as_bytes(), pass.as_bytes()))
                .unwrap();
        }
        w.add_fingerprint().unwrap();
        let n = w.finish();
        buf.truncate(n);
        buf
    }
}

fuzz_target!(|input: Input| {
    let mut config = TurnServerConfig::new("192.0.2.1:3478".parse().unwrap(), REALM)
        .with_rest_secret(SECRET)
        .with_user("u", "p");
    config.unix_now = UNIX_NOW;
    config.max_connections = MAX_CONNECTIONS;
    config.max_allocations = MAX_ALLOCATIONS;
    config.max_permissions = 2;
    config.max_peers_per_allocation = 2;
    config.max_peer_buffer = 256;
    config.nonce_lifetime = Duration::from_secs(20);
    config.default_lifetime = Duration::from_secs(10);
    config.max_lifetime = Duration::from_secs(30);
    config.bind_timeout = Duration::from_secs(5);
    config.idle_timeout = Duration::from_secs(15);
    let server = TurnServer::new(config, 3);
    let mut binds = 0u32;
    let failures = input.bind_failures;
    let answer = move |op: &SocketOp| match *op {
        SocketOp::Bind { socket, local, .. } => {
            let n = binds;
            binds += 1;
            Some(if n < 16 && failures & (1 << n) != 0 {
                SocketOutcome::Failed { op: OpKind::Bind, destination: None, error: IoError::AddrInUse }
            } else {
                let port = if local.port() == 0 { 40000 + (socket.0 % 20000) as u16 } else { local.port() };
                SocketOutcome::Bound { local: SocketAddr::new(local.ip(), port) }
            })
        }
        _ => None,
    };
    let d = Driven::new("turn server", server, |e| *e == TurnServerEvent::Closed)
        .at(Instant::from_millis(1000))
        .answering(answer);
    let mut h = Harness {
        d,
        accepts: Vec::new(),
        streams: Vec::new(),
        connecting: Vec::new(),
        listeners: Vec::new(),
        raw: BTreeSet::new(),
        nonce: Vec::new(),
        ids: Vec::new(),
        tid: 0,
        closed: false,
    };
    h.d.drain();
    h.check();
    for op in input.ops.into_iter().take(64) {
        match op {
            Op::Accept { which, from } => {
                if h.accepts.is_empty() {
                    continue;
                }
                let (listener, socket) = h.accepts.remove(usize::from(which) % h.accepts.len());
                let remote = if listener == LISTENER {
                    SocketAddr::from(([198, 51, 100, from % 4], 40000 + u16::from(from)))
                } else {
                    h.raw.insert(socket);
                    peer_addr(from)
                };
                h.streams.push(socket);
                h.d.outcome(socket, SocketOutcome::Accepted { local: "192.0.2.1:3478".parse().unwrap(), remote });
            }
            Op::Chunk { conn, data } => {
                let Some(&s) = h.streams.get(usize::from(conn) % h.streams.len().max(1)) else { continue };
                let _ = h.d.stream(s, &data);
            }
            Op::Request { conn, kind, auth, lifetime, transport, peer, id, cut, trailing } => {
                let Some(&s) = h.streams.get(usize::from(conn) % h.streams.len().max(1)) else { continue };
                let mut bytes = h.request(kind, auth, lifetime, transport, peer, id, None);
                bytes.extend(trailing.into_iter().take(64));
                let cut = usize::from(cut) % (bytes.len() + 1);
                let _ = h.d.stream(s, &bytes[..cut]);
                h.check();
                if !h.streams.contains(&s) {
                    continue;
                }
                let _ = h.d.stream(s, &bytes[cut..]);
            }
            Op::Outcome { socket, kind } => {
                let all: Vec<SocketId> = h
                    .streams
                    .iter()
                    .chain(h.connecting.iter())
                    .chain(h.listeners.iter())
                    .chain(h.accepts.iter().map(|(_, s)| s))
                    .copied()
                    .collect();
                let Some(&s) = all.get(usize::from(socket) % all.len().max(1)) else { continue };
                let outcome = match kind % 8 {
                    0 => SocketOutcome::PeerClosed,
                    1 => SocketOutcome::Failed { op: OpKind::Receive, destination: None, error: IoError::ConnectionReset },
                    2 => SocketOutcome::Failed { op: OpKind::Send, destination: None, error: IoError::WouldBlock },
                    3 => SocketOutcome::Writable,
                    4 if h.connecting.contains(&s) => {
                        h.connecting.retain(|c| *c != s);
                        h.streams.push(s);
                        h.raw.insert(s);
                        SocketOutcome::Connected { local: "192.0.2.1:41000".parse().unwrap(), remote: peer_addr(0) }
                    }
                    5 if h.connecting.contains(&s) => {
                        h.connecting.retain(|c| *c != s);
                        SocketOutcome::Failed { op: OpKind::Connect, destination: None, error: IoError::ConnectionRefused }
                    }
                    6 if h.accepts.iter().any(|(_, a)| *a == s) => {
                        h.accepts.retain(|(_, a)| *a != s);
                        SocketOutcome::Failed { op: OpKind::Accept, destination: None, error: IoError::Other(None) }
                    }
                    7 if h.listeners.contains(&s) => {
                        SocketOutcome::Failed { op: OpKind::Listen, destination: None, error: IoError::AddrInUse }
                    }
                    _ => continue,
                };
                // Accept outcomes are only for outstanding accepts (handled above).
                if h.accepts.iter().any(|(_, a)| *a == s) {
                    continue;
                }
                h.d.outcome(s, outcome);
            }
            Op::Advance { ms } => {
                h.d.advance(Duration::from_millis(u64::from(ms % 60_000)));
            }
            Op::Setup { from } => {
                let _ = h.setup(from);
            }
            Op::Close => {
                h.closed = true;
                h.d.input(|m, now| m.close(now));
                h.check();
                assert!(h.d.checker.finished());
                // Accepts still outstanding may complete after the end: they are closed then.
                let late: Vec<(SocketId, SocketId)> = std::mem::take(&mut h.accepts);
                for (_, s) in late {
                    h.d.outcome(s, SocketOutcome::Accepted { local: "192.0.2.1:3478".parse().unwrap(), remote: peer_addr(1) });
                }
                h.check();
                h.d.checker.assert_all_closed();
                return;
            }
        }
        h.check();
    }
});

//! Stateful fuzzing of STUN over TCP, both ends, each driven through the contract checker.
//!
//! Server ([`StunServer`] with TCP): accepts on outstanding ids (and on ids it never asked for),
//! arbitrary stream chunks and valid Binding requests split anywhere, socket outcomes, UDP
//! datagrams, time steps, listener failures and closes. Checks besides the contract: responses
//! only on open connections (or bound UDP roles), valid, bounded, echoing a transaction id,
//! XOR-MAPPED-ADDRESS = the connection's remote, never OTHER-ADDRESS over TCP; a stream it did not
//! ask for is closed at once, one it asked for is kept (evicting another if full); nothing closed
//! that is not open; open connections within the limit and the per-source cap, and accepts
//! outstanding + open within the slots (the limit plus the spare).
//!
//! Client ([`TcpBinding`]): socket outcomes in any order, arbitrary chunks and genuine responses
//! (success, error, wrong id) split anywhere, time, close and release. Checks besides the
//! contract: at most one `Mapped`/`Failed`; exactly one close intent, none after a failed bind or
//! a release (the released socket is the caller's); requests only while connected and only the one
//! Binding request.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2pd_proto::client_tcp::{TcpBinding, TcpBindingConfig, TcpBindingEvent, TCP_BINDING_SOCKET};
use p2pd_proto::server::{
    Role, ServerConfig, ServerEvent, StunServer, MAX_RESPONSE_LEN, TCP_CONNECTION_BASE, TCP_LISTENER,
};
use p2pd_proto::stun::{
    Attribute, ChangeRequest, Class, ErrorCode, Header, Message, MessageWriter, Method,
    TransactionId,
};
use p2pd_proto::testing::Driven;
use p2pd_proto::{Instant, IoError, OpKind, SocketId, SocketOp, SocketOutcome, Transport};

const MAX_CONN: usize = 3;
const PER_SOURCE: usize = 2;

#[derive(Arbitrary, Debug)]
enum ServerOp {
    /// Answer the `n`-th outstanding accept (or a made-up id) with a connection from `from`.
    Accept { n: u8, made_up: bool, from: u8 },
    AcceptFails { n: u8 },
    Chunk { conn: u8, data: Vec<u8> },
    /// Valid requests (with some attributes) on `conn`, the whole split at `cuts`.
    Requests { conn: u8, count: u8, change: u8, port: Option<u16>, software: bool, cuts: Vec<u16> },
    Outcome { conn: u8, kind: u8 },
    Datagram { role: u8, data: Vec<u8> },
    ListenerFails { listen: bool },
    Advance { ms: u32 },
    Close,
}

#[derive(Arbitrary, Debug)]
enum ClientOp {
    Bound,
    BindFails,
    Connected,
    ConnectFails,
    PeerClosed,
    Failed { op: u8 },
    Chunk(Vec<u8>),
    /// A genuine response (kind 0 success, 1 error, 2 wrong id, 3 indication), split at `cuts`.
    Response { kind: u8, mapped_port: u16, cuts: Vec<u16>, trailing: Vec<u8> },
    Advance { ms: u32 },
    Timeout,
    Close,
    Release,
}

#[derive(Arbitrary, Debug)]
struct Input {
    idle_s: u8,
    server_ops: Vec<ServerOp>,
    keep_open: bool,
    keepalive_s: Option<u8>,
    timeout_ms: u16,
    client_ops: Vec<ClientOp>,
}

fn remote(from: u8) -> SocketAddr {
    SocketAddr::new([203, 0, 113, from % 8].into(), 40000 + u16::from(from))
}

fn conn_id(conn: u8) -> SocketId {
    SocketId(TCP_CONNECTION_BASE + u32::from(conn) % (MAX_CONN as u32 + 1))
}

fn split<'a>(data: &'a [u8], cuts: &[u16]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().take(8).map(|c| usize::from(*c) % (data.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut from = 0;
    for p in points.into_iter().chain([data.len()]) {
        out.push(&data[from..p]);
        from = p;
    }
    out
}

/// What the target knows of the server beyond the contract (the checker sees the rest).
struct ServerModel {
    /// Accept ids the server asked for and that are not answered yet.
    accepting: Vec<SocketId>,
    /// Open connections and their remote.
    open: BTreeMap<SocketId, SocketAddr>,
    /// Sockets that exist in the "runtime": UDP roles, the listener.
    bound: BTreeSet<SocketId>,
    closed: bool,
}

impl ServerModel {
    /// Checks what the last input produced.
    fn check(&mut self, d: &mut Driven<StunServer>) {
        let out = d.take();
        for (t, bytes) in out.transmits {
            assert!(t.len <= MAX_RESPONSE_LEN, "{} bytes", t.len);
            let m = Message::decode(&bytes).expect("responses are valid STUN");
            assert!(m.class().is_response());
            if let Some(remote) = self.open.get(&t.socket) {
                assert_eq!(t.destination, *remote);
                assert_eq!(m.other_address(), None, "no OTHER-ADDRESS over TCP");
                if m.class() == Class::Success {
                    assert_eq!(m.mapped_address(), Some(*remote));
                }
            } else {
                assert!(self.bound.contains(&t.socket), "sent on {:?}, not open", t.socket);
                assert!(d.machine.role_of(t.socket).is_some());
            }
        }
        for op in out.ops {
            match op {
                SocketOp::Close { socket } => {
                    let was_open = self.open.remove(&socket).is_some() || self.bound.remove(&socket);
                    assert!(was_open, "closed {socket:?} which is not open");
                }
                SocketOp::Accept { listener, socket } => {
                    assert_eq!(listener, TCP_LISTENER);
                    self.accepting.push(socket);
                }
                SocketOp::Listen { socket, .. } => assert_eq!(socket, TCP_LISTENER),
                SocketOp::Bind { socket, transport, .. } => {
                    assert_eq!(transport == Transport::Tcp, socket == TCP_LISTENER);
                    self.bound.insert(socket);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(self.open.len() <= MAX_CONN, "over the connection limit");
        assert!(self.accepting.len() + self.open.len() <= MAX_CONN + 1, "over the slots");
        for remote in self.open.values() {
            let same = self.open.values().filter(|r| r.ip() == remote.ip()).count();
            assert!(same <= PER_SOURCE, "{} holds {same} connections", remote.ip());
        }
        assert_eq!(d.machine.tcp_connections(), self.open.len());
    }
}

fn run_server(input: &Input) {
    let mut config = ServerConfig::single("192.0.2.1:3478".parse().unwrap()).with_tcp(true);
    config.tcp_limits.max_connections = MAX_CONN;
    config.tcp_limits.max_per_source = PER_SOURCE;
    config.queue_capacity = 8;
    config.tcp_limits.idle_timeout = std::time::Duration::from_secs(u64::from(input.idle_s % 30) + 1);
    config.tcp_limits.message_timeout = std::time::Duration::from_secs(u64::from(input.idle_s / 30) + 1);
    let server = StunServer::new(config).unwrap();
    let mut d = Driven::new("stun server (tcp)", server, |e| matches!(e, ServerEvent::Closed))
        .answering(Driven::<StunServer>::bind_answer());
    let mut m = ServerModel { accepting: Vec::new(), open: BTreeMap::new(), bound: BTreeSet::new(), closed: false };
    d.drain();
    m.check(&mut d);
    let mut buf = vec![0u8; 4096];
    for op in input.server_ops.iter().take(200) {
        match op {
            ServerOp::Accept { n, made_up, from } => {
                let socket = if *made_up || m.accepting.is_empty() {
                    // A runtime answers only ids the server used in an accept: one of its slots.
                    SocketId(TCP_CONNECTION_BASE + u32::from(*n) % (MAX_CONN as u32 + 1))
                } else {
                    m.accepting[usize::from(*n) % m.accepting.len()]
                };
                if m.open.contains_key(&socket) {
                    // A runtime never reuses an open id.
                    continue;
                }
                let asked = m.accepting.contains(&socket);
                m.accepting.retain(|s| *s != socket);
                // The runtime now holds a stream under this id: the server keeps it or closes it.
                m.open.insert(socket, remote(*from));
                let local = "192.0.2.1:3478".parse().unwrap();
                d.outcome(socket, SocketOutcome::Accepted { local, remote: remote(*from) });
                // The check sees the close of an unwanted stream, or of the one evicted for it.
                m.check(&mut d);
                if asked && !m.closed {
                    assert!(m.open.contains_key(&socket), "a stream it asked for is kept");
                } else {
                    assert!(!m.open.contains_key(&socket), "an unwanted stream is closed at once");
                }
            }
            ServerOp::AcceptFails { n } => {
                if m.accepting.is_empty() {
                    continue;
                }
                let socket = m.accepting.remove(usize::from(*n) % m.accepting.len());
                d.outcome(socket, SocketOutcome::Failed { op: OpKind::Accept, destination: None, error: IoError::Other(Some(24)) });
            }
            ServerOp::Chunk { conn, data } => {
                let _ = d.stream(conn_id(*conn), data);
            }
            ServerOp::Requests { conn, count, change, port, software, cuts } => {
                let mut stream = Vec::new();
                for i in 0..(count % 4) + 1 {
                    let header = Header::new(Class::Request, Method::BINDING, TransactionId::new([i; 12]));
                    let mut w = MessageWriter::new(&mut buf, header).unwrap();
                    let _ = w.add(&Attribute::ChangeRequest(ChangeRequest {
                        change_ip: change & 1 != 0,
                        change_port: change & 2 != 0,
                    }));
                    if let Some(p) = port {
                        let _ = w.add(&Attribute::ResponsePort(*p));
                    }
                    if *software {
                        let _ = w.add(&Attribute::Software("fuzz"));
                    }
                    let _ = w.add_fingerprint();
                    let n = w.finish();
                    stream.extend_from_slice(&buf[..n]);
                }
                for part in split(&stream, cuts) {
                    let _ = d.stream(conn_id(*conn), part);
                    m.check(&mut d);
                }
            }
            ServerOp::Outcome { conn, kind } => {
                let outcome = match kind % 3 {
                    0 => SocketOutcome::PeerClosed,
                    1 => SocketOutcome::Failed { op: OpKind::Send, destination: None, error: IoError::ConnectionReset },
                    _ => SocketOutcome::Failed { op: OpKind::Receive, destination: None, error: IoError::TimedOut },
                };
                d.outcome(conn_id(*conn), outcome);
            }
            ServerOp::Datagram { role, data } => {
                let role = Role::ALL[usize::from(*role) % 4];
                let _ = d.datagram(role.socket(), remote(1), data);
            }
            ServerOp::ListenerFails { listen } => {
                // A bind failure after `Bound` is the runtime's mistake: the listener it bound
                // still gets its close, as after a listen failure.
                let op = if *listen { OpKind::Listen } else { OpKind::Bind };
                d.outcome(TCP_LISTENER, SocketOutcome::Failed { op, destination: None, error: IoError::AddrInUse });
                // No accept is outstanding once the listener failed: a late `Accepted` for one
                // of them is a stream the server no longer waits for, closed at once.
                m.accepting.clear();
            }
            ServerOp::Advance { ms } => d.advance(std::time::Duration::from_millis(u64::from(*ms % 200_000))),
            ServerOp::Close => {
                d.input(|s, now| s.close(now));
                m.closed = true;
            }
        }
        m.check(&mut d);
    }
    d.input(|s, now| s.close(now));
    m.closed = true;
    m.check(&mut d);
    assert!(m.open.is_empty(), "connections left open after close: {:?}", m.open);
    d.checker.assert_all_closed();
}

fn response(kind: u8, id: TransactionId, mapped_port: u16, buf: &mut [u8]) -> usize {
    let (class, id) = match kind % 4 {
        0 => (Class::Success, id),
        1 => (Class::Error, id),
        2 => (Class::Success, TransactionId::new([0xEE; 12])),
        _ => (Class::Indication, id),
    };
    let mut w = MessageWriter::new(buf, Header::new(class, Method::BINDING, id)).unwrap();
    if class == Class::Error {
        w.add(&Attribute::ErrorCode(ErrorCode { code: 400 + u16::from(kind % 100), reason: "x" })).unwrap();
    } else if mapped_port % 5 != 0 {
        w.add(&Attribute::XorMappedAddress(SocketAddr::new([198, 51, 100, 7].into(), mapped_port)))
            .unwrap();
    }
    w.add(&Attribute::Software("fuzz server")).unwrap();
    w.add_fingerprint().unwrap();
    w.finish()
}

/// What the target knows of the client beyond the contract (the checker sees the rest).
#[derive(Default)]
struct ClientModel {
    connected: bool,
    bind_failed: bool,
    released: bool,
    closes: usize,
    outcomes: usize,
    requests: usize,
}

impl ClientModel {
    fn check(&mut self, d: &mut Driven<TcpBinding>, id: TransactionId) {
        let out = d.take();
        for (_, bytes) in out.transmits {
            assert!(self.connected, "transmit before the connection");
            let m = Message::decode(&bytes).expect("valid request");
            assert_eq!(m.method(), Method::BINDING);
            match m.class() {
                Class::Request => {
                    self.requests += 1;
                    assert_eq!(self.requests, 1, "one request");
                    assert_eq!(m.transaction_id(), id);
                }
                Class::Indication => {}
                c => panic!("sent a {c:?}"),
            }
        }
        for op in out.ops {
            match op {
                SocketOp::Bind { .. } => {}
                SocketOp::Connect { .. } => assert_eq!(self.closes, 0),
                SocketOp::Close { socket } => {
                    assert_eq!(socket, TCP_BINDING_SOCKET);
                    assert!(!self.bind_failed, "closed a socket whose bind failed");
                    self.closes += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        for ev in out.events {
            if let TcpBindingEvent::Mapped(_) | TcpBindingEvent::Failed { .. } = ev {
                self.outcomes += 1;
                assert_eq!(self.outcomes, 1, "two outcomes");
            }
        }
        if d.machine.is_done() {
            assert_eq!(d.deadline(), None);
        }
    }
}

fn run_client(input: &Input) {
    let server: SocketAddr = "192.0.2.1:3478".parse().unwrap();
    let local: SocketAddr = "10.0.0.2:40000".parse().unwrap();
    let mut config = TcpBindingConfig::new(server, local).keep_open(input.keep_open);
    config.timeout = std::time::Duration::from_millis(u64::from(input.timeout_ms) + 1);
    config.keepalive = input.keepalive_s.map(|s| std::time::Duration::from_secs(u64::from(s) + 1));
    let b = TcpBinding::new(config, u64::from(input.timeout_ms), Instant::ZERO);
    let id = b.transaction_id();
    let mut d = Driven::new("tcp binding", b, |e| matches!(e, TcpBindingEvent::Closed { .. }));
    d.drain();
    assert!(matches!(d.out.ops[..], [SocketOp::Bind { .. }]));
    let mut m = ClientModel::default();
    let mut resp = [0u8; 512];
    for op in input.client_ops.iter().take(64) {
        let s = TCP_BINDING_SOCKET;
        match op {
            ClientOp::Bound => d.outcome(s, SocketOutcome::Bound { local }),
            ClientOp::BindFails => {
                let binding = !d.machine.is_done() && d.machine.local_addr().is_none();
                d.outcome(s, SocketOutcome::Failed { op: OpKind::Bind, destination: None, error: IoError::AddrInUse });
                // Taken only while binding: then there is nothing to close.
                m.bind_failed |= binding && d.machine.is_done();
            }
            ClientOp::Connected => {
                let was_done = d.machine.is_done();
                d.outcome(s, SocketOutcome::Connected { local, remote: server });
                m.connected |= !was_done && d.machine.local_addr().is_some();
            }
            ClientOp::ConnectFails => d.outcome(s, SocketOutcome::Failed { op: OpKind::Connect, destination: None, error: IoError::ConnectionRefused }),
            ClientOp::PeerClosed => d.outcome(s, SocketOutcome::PeerClosed),
            ClientOp::Failed { op } => {
                let op = [OpKind::Send, OpKind::Receive, OpKind::Accept, OpKind::Listen][usize::from(*op) % 4];
                d.outcome(s, SocketOutcome::Failed { op, destination: None, error: IoError::ConnectionReset });
            }
            ClientOp::Chunk(data) => {
                let _ = d.stream(s, data);
            }
            ClientOp::Response { kind, mapped_port, cuts, trailing } => {
                let n = response(*kind, id, *mapped_port, &mut resp);
                let mut stream = resp[..n].to_vec();
                stream.extend_from_slice(trailing);
                for part in split(&stream, cuts) {
                    let _ = d.stream(s, part);
                    m.check(&mut d, id);
                }
            }
            ClientOp::Advance { ms } => {
                d.now = d.now.saturating_add(std::time::Duration::from_millis(u64::from(*ms % 100_000)));
            }
            ClientOp::Timeout => {
                // Jump to the deadline (time never goes back).
                if let Some(t) = d.deadline() {
                    d.now = d.now.max(t);
                    d.fire();
                }
            }
            ClientOp::Close => d.input(|b, now| b.close(now)),
            ClientOp::Release => {
                if let Some(socket) = d.input(|b, _| b.release_socket()) {
                    d.checker.released(socket);
                    m.released = true;
                }
            }
        }
        m.check(&mut d, id);
    }
    d.input(|b, now| b.close(now));
    m.check(&mut d, id);
    assert!(d.checker.finished(), "exactly one Closed");
    assert!(d.machine.is_done());
    d.checker.assert_all_closed();
    assert_eq!(m.closes + usize::from(m.bind_failed) + usize::from(m.released), 1, "one close, unless there is nothing to close");
}

fuzz_target!(|input: Input| {
    run_server(&input);
    run_client(&input);
});

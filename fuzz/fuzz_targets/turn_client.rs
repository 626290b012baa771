//! Stateful fuzzing of the TURN client machine ([`TurnClient`]) through the contract checker.
//!
//! Inputs: socket outcomes in any order, arbitrary stream chunks, and genuine answers to the last
//! request (401 challenge, 438 stale nonce, success with or without a valid MESSAGE-INTEGRITY,
//! any error code, a wrong transaction id, an indication, ChannelData) split anywhere, time
//! steps, timeouts, CreatePermission and close. Checks besides the contract: requests only while
//! connected, each a valid STUN request (Allocate, Refresh or CreatePermission, with FINGERPRINT,
//! within the transmit buffer); at most one `Failed`; exactly one close intent unless the bind
//! failed; a `Closed { deallocated: true }` only after a Refresh with LIFETIME 0 was sent; data
//! connections opened, closed or handed over, never named after; Send indications (UDP) valid.
#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2pd_proto::stun::{Attribute, Class, ErrorCode, Header, Message, MessageWriter, TransactionId};
use p2pd_proto::testing::Driven;
use p2pd_proto::{Instant, IoError, OpKind, SocketOp, SocketOutcome, TRANSMIT_BUFFER_LEN};
use p2pd_turn::codec::{self, attr, long_term_key, method, TurnAttribute, TurnWriter};
use p2pd_turn::{Credentials, RelayTransport, TurnClient, TurnConfig, TurnEvent, CONTROL_SOCKET};

#[derive(Arbitrary, Debug)]
enum Op {
    Bound,
    BindFails,
    Connected,
    ConnectFails,
    PeerClosed,
    Failed { op: u8 },
    Writable,
    Chunk(Vec<u8>),
    /// An answer to the last request: kind 0 challenge, 1 stale nonce, 2 success, 3 success with
    /// a bad MESSAGE-INTEGRITY, 4 error `code`, 5 wrong transaction id, 6 indication, 7 ChannelData.
    Answer { kind: u8, code: u16, lifetime: u32, nonce: u8, cuts: Vec<u16> },
    Advance { ms: u32 },
    Timeout,
    Permit { peer: u8 },
    /// RFC 6062: Connect to a peer.
    Connect { peer: u8 },
    /// A ConnectionAttempt indication from the server.
    Attempt { id: u32, peer: u8 },
    /// An outcome on the `which`-th open data connection: 0 bound, 1 connected, 2 bind fails,
    /// 3 connect fails, 4 peer closed, 5 reset.
    DataOutcome { which: u8, kind: u8 },
    /// An answer to the last request on a data connection, split at `cuts`, peer bytes behind it.
    DataAnswer { kind: u8, code: u16, cuts: Vec<u16>, trailing: Vec<u8> },
    DataChunk { which: u8, data: Vec<u8> },
    /// UDP allocations: send `len` bytes to a peer; a Data indication from a peer.
    Send { peer: u8, len: u16 },
    DataIndication { peer: u8, data: Vec<u8> },
    Close,
}

#[derive(Arbitrary, Debug)]
struct Input {
    udp: bool,
    lifetime_s: Option<u16>,
    timeout_ms: u16,
    ops: Vec<Op>,
}

const USER: &str = "u";
const PASS: &str = "p";
const REALM: &str = "fuzz.realm";

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

/// A server's answer to `request`.
fn answer(request: &[u8], kind: u8, code: u16, lifetime: u32, nonce: u8) -> Vec<u8> {
    let Ok(req) = Message::decode(request) else { return Vec::new() };
    let key = long_term_key(USER.as_bytes(), REALM.as_bytes(), PASS.as_bytes());
    let nonce = [b'n', nonce];
    if kind % 8 == 7 {
        // ChannelData on channel 0x4000 with three bytes (padded to four on a stream).
        return vec![0x40, 0x00, 0x00, 0x03, 1, 2, 3, 0];
    }
    let (class, id) = match kind % 8 {
        0 | 1 | 4 => (Class::Error, req.transaction_id()),
        5 => (Class::Success, TransactionId::new([0xEE; 12])),
        6 => (Class::Indication, req.transaction_id()),
        _ => (Class::Success, req.transaction_id()),
    };
    let header = Header::new(class, req.method(), id);
    let mut buf = vec![0u8; 512];
    let mut w = MessageWriter::new(&mut buf, header).unwrap();
    match kind % 8 {
        0 | 1 => {
            let code = if kind % 8 == 0 { 401 } else { 438 };
            w.add(&Attribute::ErrorCode(ErrorCode { code, reason: "x" })).unwrap();
            w.add_turn(&header, &TurnAttribute::Realm(REALM)).unwrap();
            w.add_turn(&header, &TurnAttribute::Nonce(&nonce)).unwrap();
        }
        4 => {
            let code = 300 + code % 400;
            w.add(&Attribute::ErrorCode(ErrorCode { code, reason: "x" })).unwrap();
            if code == 300 {
                w.add(&Attribute::Other { kind: 0x8023, value: &[0, 1, 0x0d, 0x96, 192, 0, 2, 9] }).unwrap();
            }
        }
        _ => {
            if req.method() == method::ALLOCATE && lifetime % 7 != 0 {
                let relayed: SocketAddr = "198.51.100.1:50000".parse().unwrap();
                w.add_turn(&header, &TurnAttribute::XorRelayedAddress(relayed)).unwrap();
            }
            if req.method() == method::CONNECT && lifetime % 11 != 0 {
                w.add_turn(&header, &TurnAttribute::ConnectionId(lifetime)).unwrap();
            }
            if lifetime % 3 != 0 {
                w.add_turn(&header, &TurnAttribute::Lifetime(lifetime % 100_000)).unwrap();
            }
            if kind % 8 == 3 {
                w.add(&Attribute::MessageIntegrity([7; 20])).unwrap();
            } else if lifetime % 5 != 0 {
                w.add_message_integrity(&key).unwrap();
            }
        }
    }
    w.add_fingerprint().unwrap();
    let n = w.finish();
    buf.truncate(n);
    buf
}

#[derive(Default)]
struct Model {
    /// The machine asked to connect its control socket (it is bound).
    connect_asked: bool,
    connected: bool,
    bind_failed: bool,
    /// Close intents for the control socket.
    closes: usize,
    /// Data connections the machine opened and still owns.
    data_open: Vec<p2pd_proto::SocketId>,
    /// The last request on a data connection.
    last_data_request: Option<(p2pd_proto::SocketId, Vec<u8>)>,
    failed: usize,
    dealloc_sent: bool,
    last_request: Vec<u8>,
}

impl Model {
    fn check(&mut self, d: &mut Driven<TurnClient>) {
        let out = d.take();
        for (t, bytes) in out.transmits {
            assert!(self.connected, "transmit before the connection");
            assert!(bytes.len() <= TRANSMIT_BUFFER_LEN);
            let m = Message::decode(&bytes).expect("valid request");
            if m.class() == Class::Indication {
                assert_eq!(m.method(), method::SEND);
                assert_eq!(t.socket, CONTROL_SOCKET);
                assert!(matches!(codec::find(&m, attr::DATA), Ok(Some(TurnAttribute::Data(_)))));
                continue;
            }
            assert_eq!(m.class(), Class::Request);
            assert!(m.has_fingerprint());
            let mth = m.method();
            if t.socket != CONTROL_SOCKET {
                assert!(self.data_open.contains(&t.socket), "sent on {:?}, not open", t.socket);
                assert_eq!(mth, method::CONNECTION_BIND);
                assert!(matches!(codec::find(&m, attr::CONNECTION_ID), Ok(Some(TurnAttribute::ConnectionId(_)))));
                self.last_data_request = Some((t.socket, bytes));
                continue;
            }
            assert!(
                mth == method::ALLOCATE
                    || mth == method::REFRESH
                    || mth == method::CREATE_PERMISSION
                    || mth == method::CONNECT
            );
            if mth == method::REFRESH && codec::find(&m, attr::LIFETIME) == Ok(Some(TurnAttribute::Lifetime(0))) {
                self.dealloc_sent = true;
            }
            self.last_request = bytes;
        }
        for op in out.ops {
            match op {
                SocketOp::Bind { socket, .. } if socket != CONTROL_SOCKET => {
                    assert!(!self.data_open.contains(&socket), "id reused while open");
                    self.data_open.push(socket);
                }
                SocketOp::Connect { socket, .. } if socket != CONTROL_SOCKET => {
                    assert!(self.data_open.contains(&socket));
                }
                SocketOp::Close { socket } if socket != CONTROL_SOCKET => {
                    assert!(self.data_open.contains(&socket), "closed {socket:?}, not open");
                    self.data_open.retain(|s| *s != socket);
                }
                SocketOp::Connect { .. } => {
                    assert_eq!(self.closes, 0);
                    self.connect_asked = true;
                }
                SocketOp::Bind { .. } => assert_eq!(self.closes, 0),
                SocketOp::Close { socket } => {
                    assert_eq!(socket, CONTROL_SOCKET);
                    assert!(!self.bind_failed, "closed a socket whose bind failed");
                    self.closes += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        for ev in out.events {
            match ev {
                TurnEvent::Failed(_) => {
                    self.failed += 1;
                    assert_eq!(self.failed, 1, "two failures");
                }
                TurnEvent::Closed { deallocated: true } => assert!(self.dealloc_sent),
                TurnEvent::PeerConnected { socket, .. } => {
                    assert!(self.data_open.contains(&socket), "handed over {socket:?}, not open");
                    self.data_open.retain(|s| *s != socket);
                    d.checker.released(socket);
                }
                _ => {}
            }
        }
        if d.machine.is_done() {
            assert_eq!(d.deadline(), None);
        }
    }
}

fuzz_target!(|input: Input| {
    let server: SocketAddr = "192.0.2.1:3478".parse().unwrap();
    let local: SocketAddr = "10.0.0.2:40000".parse().unwrap();
    let mut config = TurnConfig::new(server, local, Credentials::long_term(USER, PASS));
    config.transport = if input.udp { RelayTransport::Udp } else { RelayTransport::Tcp };
    config.lifetime = input.lifetime_s.map(|s| Duration::from_secs(u64::from(s)));
    config.timeout = Duration::from_millis(u64::from(input.timeout_ms) + 1);
    let client = TurnClient::new(config, u64::from(input.timeout_ms), Instant::ZERO);
    let mut d = Driven::new("turn client", client, |e| matches!(e, TurnEvent::Closed { .. }));
    d.drain();
    let mut m = Model::default();
    let s = CONTROL_SOCKET;
    for op in input.ops.iter().take(96) {
        match op {
            Op::Bound => d.outcome(s, SocketOutcome::Bound { local }),
            Op::BindFails => {
                let was_binding = !d.machine.is_done() && !m.connect_asked;
                d.outcome(s, SocketOutcome::Failed { op: OpKind::Bind, destination: None, error: IoError::AddrInUse });
                m.bind_failed |= was_binding && d.machine.is_done() && m.closes == 0;
            }
            Op::Connected => {
                let was_done = d.machine.is_done();
                d.outcome(s, SocketOutcome::Connected { local, remote: server });
                m.connected |= m.connect_asked && !was_done && !d.machine.is_done();
            }
            Op::ConnectFails => d.outcome(s, SocketOutcome::Failed { op: OpKind::Connect, destination: None, error: IoError::ConnectionRefused }),
            Op::PeerClosed => d.outcome(s, SocketOutcome::PeerClosed),
            Op::Failed { op } => {
                let op = [OpKind::Send, OpKind::Receive, OpKind::Shutdown][usize::from(*op) % 3];
                d.outcome(s, SocketOutcome::Failed { op, destination: None, error: IoError::ConnectionReset });
            }
            Op::Writable => d.outcome(s, SocketOutcome::Writable),
            Op::Chunk(data) => {
                let _ = d.stream(s, data);
            }
            Op::Answer { kind, code, lifetime, nonce, cuts } => {
                let bytes = answer(&m.last_request, *kind, *code, *lifetime, *nonce);
                for part in split(&bytes, cuts) {
                    let _ = d.stream(s, part);
                    m.check(&mut d);
                }
            }
            Op::Advance { ms } => d.advance(Duration::from_millis(u64::from(*ms % 1_000_000))),
            Op::Timeout => {
                if let Some(t) = d.deadline() {
                    d.now = d.now.max(t);
                    d.fire();
                }
            }
            Op::Permit { peer } => {
                let peer = SocketAddr::new([192, 0, 2, *peer % 24].into(), 7000);
                let _ = d.input(|c, now| c.create_permission(now, peer));
            }
            Op::Connect { peer } => {
                let peer = SocketAddr::new([192, 0, 2, *peer % 24].into(), 7000);
                let _ = d.input(|c, now| c.connect(now, peer));
            }
            Op::Attempt { id, peer } => {
                let header = Header::new(Class::Indication, method::CONNECTION_ATTEMPT, TransactionId::new([*peer; 12]));
                let mut buf = [0u8; 128];
                let mut w = MessageWriter::new(&mut buf, header).unwrap();
                w.add_turn(&header, &TurnAttribute::ConnectionId(*id)).unwrap();
                if peer % 5 != 0 {
                    let peer = SocketAddr::new([192, 0, 2, *peer % 24].into(), 7000);
                    w.add_turn(&header, &TurnAttribute::XorPeerAddress(peer)).unwrap();
                }
                let n = w.finish();
                let _ = d.stream(s, &buf[..n]);
            }
            Op::DataOutcome { which, kind } => {
                if m.data_open.is_empty() {
                    continue;
                }
                let socket = m.data_open[usize::from(*which) % m.data_open.len()];
                let data_local: SocketAddr = "10.0.0.2:40001".parse().unwrap();
                let outcome = match kind % 6 {
                    0 => SocketOutcome::Bound { local: data_local },
                    1 => SocketOutcome::Connected { local: data_local, remote: server },
                    2 => SocketOutcome::Failed { op: OpKind::Bind, destination: None, error: IoError::AddrInUse },
                    3 => SocketOutcome::Failed { op: OpKind::Connect, destination: None, error: IoError::ConnectionRefused },
                    4 => SocketOutcome::PeerClosed,
                    _ => SocketOutcome::Failed { op: OpKind::Receive, destination: None, error: IoError::ConnectionReset },
                };
                let bind_fails = kind % 6 == 2;
                d.outcome(socket, outcome);
                if bind_fails {
                    // A failed bind leaves nothing to close, whether or not the machine closes it.
                    m.check(&mut d);
                    if m.data_open.contains(&socket) && !d.checker.open_sockets().contains(&socket) {
                        m.data_open.retain(|x| *x != socket);
                    }
                }
            }
            Op::DataAnswer { kind, code, cuts, trailing } => {
                let Some((socket, req)) = m.last_data_request.clone() else { continue };
                let mut bytes = answer(&req, *kind, *code, 1, 1);
                bytes.extend_from_slice(trailing);
                for part in split(&bytes, cuts) {
                    let _ = d.stream(socket, part);
                    m.check(&mut d);
                }
            }
            Op::DataChunk { which, data } => {
                if m.data_open.is_empty() {
                    continue;
                }
                let socket = m.data_open[usize::from(*which) % m.data_open.len()];
                let _ = d.stream(socket, data);
            }
            Op::Send { peer, len } => {
                let peer = SocketAddr::new([192, 0, 2, *peer % 24].into(), 7000);
                let data = vec![0x5A; usize::from(*len % 1500)];
                let _ = d.input(|c, now| c.send_to(now, peer, &data));
            }
            Op::DataIndication { peer, data } => {
                let header = Header::new(Class::Indication, method::DATA, TransactionId::new([*peer; 12]));
                let mut buf = vec![0u8; 2048];
                let mut w = MessageWriter::new(&mut buf, header).unwrap();
                let peer = SocketAddr::new([192, 0, 2, *peer % 24].into(), 7000);
                w.add_turn(&header, &TurnAttribute::XorPeerAddress(peer)).unwrap();
                let _ = w.add_turn(&header, &TurnAttribute::Data(&data[..data.len().min(1024)]));
                let n = w.finish();
                let _ = d.stream(s, &buf[..n]);
            }
            Op::Close => d.input(|c, now| c.close(now)),
        }
        m.check(&mut d);
    }
    d.input(|c, now| c.close(now));
    m.check(&mut d);
    // A pending deallocation ends by its answer or its timeout.
    d.run_to_end();
    m.check(&mut d);
    assert!(d.checker.finished(), "exactly one Closed");
    assert!(d.machine.is_done());
    d.checker.assert_all_closed();
    assert_eq!(m.closes + usize::from(m.bind_failed), 1, "one close, unless the bind failed");
    assert!(m.data_open.is_empty() || m.data_open.iter().all(|s| !d.checker.open_sockets().contains(s)), "data connections left open: {:?}", m.data_open);
});

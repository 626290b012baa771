//! Stateful fuzzing of the PNP server machine: arbitrary datagrams, stream chunks, socket outcomes,
//! time steps and closes, plus valid sealed requests built from fuzz bytes (so the registry rules
//! are reached) and replays of earlier requests, driven through the contract checker. Checks besides
//! the contract: at most one reply per request, a UDP reply never larger than its request, every
//! reply within MAX_REPLY_LEN and sealed to the requester answering its nonce, only accepted
//! connections closed, all closed by close, tables bounded.
#![no_main]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2pd_proto::testing::Driven;
use p2pd_proto::{Instant, IoError, OpKind, SocketId, SocketOp, SocketOutcome};
use p2pd_signaling::pnp::{
    frame, MemoryStore, Name, PnpServer, PnpServerConfig, PnpServerEvent, Record, Reply, Request,
    MAX_MESSAGE_LEN, MAX_REPLY_LEN, TCP_LISTENER, UDP_SOCKET,
};
use p2pd_signaling::{seal, Identity, Opener};

const EPOCH: u64 = 1_700_000_000_000;
const NAMES: [&str; 4] = ["alice", "bob", "c", "dave.example"];

fn keys() -> &'static [Identity; 5] {
    static KEYS: OnceLock<[Identity; 5]> = OnceLock::new();
    KEYS.get_or_init(|| std::array::from_fn(|i| Identity::from_secret_bytes(&[i as u8 + 1; 32]).unwrap()))
}

#[derive(Arbitrary, Debug)]
enum ReqOp {
    Register { name: u8, value_len: u16, version: u8, ttl_s: u32, forge: bool, owner: u8 },
    Lookup { name: u8 },
    Delete { name: u8, version: u8 },
    RawPayload(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Datagram { from: u8, data: Vec<u8> },
    Valid { from: u8, key: u8, nonce: u16, op: ReqOp, pad: u16, skew_ms: i32, tcp: Option<(u8, u16)> },
    Replay { index: u8, from: u8 },
    Stream { conn: u8, data: Vec<u8> },
    Accept { v6: bool, from: u8 },
    Outcome { socket: u8, kind: u8 },
    Advance { ms: u32 },
    Close,
}

#[derive(Arbitrary, Debug)]
struct Input {
    rate: u8,
    names_per_source: u8,
    udp_fails: bool,
    ops: Vec<Op>,
}

fn addr(from: u8, v6: bool) -> SocketAddr {
    if v6 {
        SocketAddr::new(format!("2001:db8:{}::1", from % 4).parse().unwrap(), 4000 + u16::from(from))
    } else {
        SocketAddr::from(([198, 51, 100, from % 8], 4000 + u16::from(from)))
    }
}

/// What the target knows of the server beyond the contract (the checker sees the rest).
struct Harness {
    d: Driven<PnpServer<MemoryStore>>,
    open: HashSet<SocketId>,
    accepting: Vec<SocketId>,
    closed: bool,
    sent: Vec<(Vec<u8>, usize)>,
}

impl Harness {
    fn unix_ms(&self) -> u64 {
        self.d.machine.unix_ms(self.d.now)
    }

    /// Checks what the last input produced; returns the transmits (socket, bytes).
    fn check(&mut self) -> Vec<(SocketId, Vec<u8>)> {
        let out = self.d.take();
        let mut sent = Vec::new();
        for (t, bytes) in out.transmits {
            assert!(t.len <= MAX_REPLY_LEN + 2, "{} bytes", t.len);
            assert!(t.socket == UDP_SOCKET || self.open.contains(&t.socket), "send on {:?}", t.socket);
            sent.push((t.socket, bytes));
        }
        for op in out.ops {
            match op {
                SocketOp::Bind { .. } => {}
                SocketOp::Listen { socket, .. } => assert_eq!(socket, TCP_LISTENER),
                SocketOp::Accept { listener, socket } => {
                    assert_eq!(listener, TCP_LISTENER);
                    self.accepting.push(socket);
                }
                SocketOp::Close { socket } => {
                    if socket != UDP_SOCKET && socket != TCP_LISTENER {
                        assert!(self.open.remove(&socket), "closed {socket} which is not open");
                    }
                }
                other => panic!("unexpected op {other:?}"),
            }
        }
        for ev in out.events {
            if ev == PnpServerEvent::Closed {
                assert!(self.closed);
            }
        }
        let (rates, replies, replay, queued) = self.d.machine.table_sizes();
        assert!(rates <= 64 && replies <= 16 && replay <= 256 && queued <= 16);
        sent
    }
}

fn build(h: &Harness, key: u8, nonce: u16, op: ReqOp, pad: u16, skew_ms: i32) -> (Vec<u8>, usize) {
    let ks = keys();
    let key = (key % 4) as usize;
    let now_ms = h.unix_ms();
    let name = |i: u8| Name::new(NAMES[(i % 4) as usize]).unwrap();
    let payload = match op {
        ReqOp::Register { name: n, value_len, version, ttl_s, forge, owner } => {
            let owner = if owner % 8 == 0 { (key + 1) % 5 } else { key };
            let value = vec![0x61; usize::from(value_len) % 700];
            let expires = now_ms.saturating_add(u64::from(ttl_s % 1_000_000) * 1000);
            let record = Record::sign(&ks[owner], name(n), value.clone(), u64::from(version), expires)
                .unwrap_or_else(|_| Record::sign(&ks[owner], name(n), vec![], u64::from(version), expires).unwrap());
            let mut payload = Request::Register(Box::new(record)).encode(usize::from(pad) % 1000);
            if forge {
                if let Some(b) = payload.get_mut(10) {
                    *b ^= 1;
                }
            }
            payload
        }
        ReqOp::Lookup { name: n } => Request::Lookup(name(n)).encode(usize::from(pad) % 1000),
        ReqOp::Delete { name: n, version } => {
            Request::Delete { name: name(n), version: u64::from(version) }.encode(usize::from(pad) % 1000)
        }
        ReqOp::RawPayload(p) => p.into_iter().take(1000).collect(),
    };
    let ts = now_ms.saturating_add_signed(i64::from(skew_ms % 40_000));
    let mut n = [0u8; 16];
    n[..2].copy_from_slice(&nonce.to_be_bytes());
    let sealed = seal(&ks[key], &h.d.machine.public_key(), ts, n, &payload).unwrap();
    (sealed, key)
}

/// Checks a reply: it opens for the requester and answers `request`'s nonce.
fn check_reply(h: &Harness, request: &[u8], key: usize, reply: &[u8]) {
    let mut opener = Opener::with_window(4, u64::MAX / 4, u64::MAX / 4);
    let opened = opener.open(&keys()[key], h.unix_ms(), reply).expect("reply opens for the requester");
    assert_eq!(opened.sender, h.d.machine.public_key());
    let reply = Reply::decode(&opened.payload).expect("reply decodes");
    assert_eq!(&reply.request_nonce[..], &request[62..78]);
}

fuzz_target!(|input: Input| {
    let mut config = PnpServerConfig::new("192.0.2.1:5300".parse().unwrap(), "192.0.2.1:5300".parse().unwrap(), EPOCH);
    config.requests_per_window = u32::from(input.rate % 16);
    config.max_names_per_source = u64::from(input.names_per_source % 4);
    config.rate_table_capacity = 64;
    config.reply_cache_capacity = 16;
    config.replay_capacity = 256;
    config.transmit_queue_capacity = 16;
    config.tcp_limits.max_connections = 4;
    config.tcp_limits.max_per_source = 2;
    let server = PnpServer::new(config, Identity::from_secret_bytes(&[99; 32]).unwrap(), MemoryStore::new(8), 1).unwrap();
    // Binds succeed, but the UDP socket's first one if the input says so.
    let mut udp_fails = input.udp_fails;
    let answer = move |op: &SocketOp| match *op {
        SocketOp::Bind { socket, local, .. } => Some(if socket == UDP_SOCKET && core::mem::take(&mut udp_fails) {
            SocketOutcome::Failed { op: OpKind::Bind, destination: None, error: IoError::AddrInUse }
        } else {
            SocketOutcome::Bound { local }
        }),
        _ => None,
    };
    let d = Driven::new("pnp server", server, |e| *e == PnpServerEvent::Closed).at(Instant::from_millis(1000)).answering(answer);
    let mut h = Harness { d, open: HashSet::new(), accepting: Vec::new(), closed: false, sent: Vec::new() };
    h.d.drain();
    let _ = h.check();
    for op in input.ops.into_iter().take(48) {
        match op {
            Op::Datagram { from, data } => {
                let _ = h.d.datagram(UDP_SOCKET, addr(from, from & 0x80 != 0), &data);
                let out = h.check();
                assert!(out.len() <= 1, "one reply per datagram");
                for (s, r) in out {
                    assert_eq!(s, UDP_SOCKET);
                    assert!(r.len() <= data.len(), "amplification");
                }
            }
            Op::Valid { from, key, nonce, op, pad, skew_ms, tcp } => {
                let (bytes, key) = build(&h, key, nonce, op, pad, skew_ms);
                h.sent.push((bytes.clone(), key));
                match tcp {
                    None => {
                        let _ = h.d.datagram(UDP_SOCKET, addr(from, false), &bytes);
                        let out = h.check();
                        assert!(out.len() <= 1);
                        for (_, r) in out {
                            assert!(r.len() <= bytes.len(), "amplification");
                            check_reply(&h, &bytes, key, &r);
                        }
                    }
                    Some((conn, split)) => {
                        let Some(&socket) = h.open.iter().nth(usize::from(conn) % h.open.len().max(1)) else { continue };
                        let framed = frame(&bytes).unwrap();
                        let cut = usize::from(split) % (framed.len() + 1);
                        let _ = h.d.stream(socket, &framed[..cut]);
                        let _ = h.d.stream(socket, &framed[cut..]);
                        let out = h.check();
                        assert!(out.len() <= 1);
                        for (s, r) in out {
                            assert_eq!(s, socket);
                            assert_eq!(usize::from(u16::from_be_bytes([r[0], r[1]])), r.len() - 2);
                            assert!(r.len() - 2 <= MAX_MESSAGE_LEN);
                            check_reply(&h, &bytes, key, &r[2..]);
                        }
                    }
                }
            }
            Op::Replay { index, from } => {
                if h.sent.is_empty() {
                    continue;
                }
                let (bytes, key) = h.sent[usize::from(index) % h.sent.len()].clone();
                let _ = h.d.datagram(UDP_SOCKET, addr(from, false), &bytes);
                for (_, r) in h.check() {
                    assert!(r.len() <= bytes.len());
                    check_reply(&h, &bytes, key, &r);
                }
            }
            Op::Stream { conn, data } => {
                let socket = SocketId(u32::from(conn % 8));
                let _ = h.d.stream(socket, &data);
                let _ = h.check();
            }
            Op::Accept { v6, from } => {
                if h.accepting.is_empty() {
                    continue;
                }
                let socket = h.accepting.remove(0);
                // Open from now on (after close the server must close it at once).
                h.open.insert(socket);
                h.d.outcome(socket, SocketOutcome::Accepted { local: "192.0.2.1:5300".parse().unwrap(), remote: addr(from, v6) });
                let _ = h.check();
            }
            Op::Outcome { socket, kind } => {
                let socket = SocketId(u32::from(socket % 8));
                let outcome = match kind % 4 {
                    0 => SocketOutcome::PeerClosed,
                    1 => SocketOutcome::Failed { op: OpKind::Send, destination: None, error: IoError::ConnectionReset },
                    2 => SocketOutcome::Failed { op: OpKind::Accept, destination: None, error: IoError::Other(None) },
                    _ => SocketOutcome::Failed { op: OpKind::Receive, destination: None, error: IoError::ConnectionReset },
                };
                if matches!(outcome, SocketOutcome::Failed { op: OpKind::Accept, .. }) {
                    if let Some(i) = h.accepting.iter().position(|s| *s == socket) {
                        h.accepting.remove(i);
                    } else {
                        continue; // the runtime only fails accepts it was asked for
                    }
                }
                h.d.outcome(socket, outcome);
                let _ = h.check();
            }
            Op::Advance { ms } => {
                h.d.advance(std::time::Duration::from_millis(u64::from(ms % 120_000)));
                let _ = h.check();
            }
            Op::Close => {
                h.closed = true;
                h.d.input(|s, now| s.close(now));
                let _ = h.check();
                assert!(h.d.checker.finished());
                assert!(h.open.is_empty(), "open connections left after close");
                h.d.checker.assert_all_closed();
                h.accepting.clear();
            }
        }
    }
});

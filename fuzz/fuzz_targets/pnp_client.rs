//! Stateful fuzzing of the PNP client machine over UDP or TCP: arbitrary commands, socket outcomes,
//! datagrams, stream chunks and time, plus valid server replies (sealed by the real server key, to
//! the real nonce of a request the client sent) with fuzz-chosen bodies, driven through the
//! contract checker. Checks besides the contract: each accepted command ends in exactly one event,
//! transmits only to the server and within bounds, a Found record always verifies and matches its
//! request.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2pd_proto::testing::Driven;
use p2pd_proto::{Instant, IoError, OpKind, SocketId, SocketOp, SocketOutcome};
use p2pd_signaling::pnp::{
    frame, ErrorCode, Name, PnpClient, PnpClientConfig, PnpClientEvent, PnpTransport, Record, Reply,
    ReplyBody, Request, RequestId, CLIENT_UDP_SOCKET, MAX_MESSAGE_LEN,
};
use p2pd_signaling::{seal, Identity, Opener};

const EPOCH: u64 = 1_700_000_000_000;

fn server_key() -> &'static Identity {
    static KEY: OnceLock<Identity> = OnceLock::new();
    KEY.get_or_init(|| Identity::from_secret_bytes(&[99; 32]).unwrap())
}

fn client_key() -> &'static Identity {
    static KEY: OnceLock<Identity> = OnceLock::new();
    KEY.get_or_init(|| Identity::from_secret_bytes(&[1; 32]).unwrap())
}

fn server_addr() -> SocketAddr {
    "192.0.2.1:5300".parse().unwrap()
}

#[derive(Arbitrary, Debug)]
enum Body {
    Registered(u8),
    Found { name: String, value_len: u16, version: u8, ttl_ms: i32, forge: bool, owner_is_client: bool },
    Deleted(u8),
    Error(u8, u64),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Register { name: String, value_len: u16, version: u8, ttl_s: u16 },
    Lookup { name: String },
    Delete { name: String, version: u8 },
    Reply { request: u8, body: Body, wrong_source: bool, split: u16 },
    Datagram { data: Vec<u8> },
    Stream { socket: u8, data: Vec<u8> },
    Outcome { socket: u8, kind: u8 },
    Advance { ms: u16 },
    Close,
}

#[derive(Arbitrary, Debug)]
struct Input {
    tcp: bool,
    ops: Vec<Op>,
}

struct Sent {
    socket: SocketId,
    nonce: [u8; 16],
    request: Request,
}

fuzz_target!(|input: Input| {
    let transport = if input.tcp { PnpTransport::Tcp } else { PnpTransport::Udp };
    let mut config = PnpClientConfig::new(server_addr(), server_key().public_key(), transport, EPOCH);
    config.max_pending = 4;
    let client = PnpClient::new(config, client_key().clone(), 5);
    let mut d = Driven::new("pnp client", client, |e| matches!(e, PnpClientEvent::Closed)).at(Instant::from_millis(1));
    let mut ids: HashSet<RequestId> = HashSet::new();
    let mut names: HashMap<RequestId, Name> = HashMap::new();
    let mut finished: HashSet<RequestId> = HashSet::new();
    let mut binding: Vec<SocketId> = Vec::new();
    let mut sent: Vec<Sent> = Vec::new();
    let mut closed = false;
    let mut opener = Opener::with_window(64, u64::MAX / 4, u64::MAX / 4);

    for op in input.ops.into_iter().take(48) {
        match op {
            Op::Register { name, value_len, version, ttl_s } => {
                if let Ok(n) = Name::new(&name) {
                    let value = vec![7; usize::from(value_len) % 800];
                    if let Ok(id) = d.input(|c, now| c.register(now, n.clone(), value, u64::from(version), Duration::from_secs(u64::from(ttl_s)))) {
                        assert!(ids.insert(id));
                        names.insert(id, n);
                    }
                }
            }
            Op::Lookup { name } => {
                if let Ok(n) = Name::new(&name) {
                    if let Ok(id) = d.input(|c, now| c.lookup(now, n.clone())) {
                        assert!(ids.insert(id));
                        names.insert(id, n);
                    }
                }
            }
            Op::Delete { name, version } => {
                if let Ok(n) = Name::new(&name) {
                    if let Ok(id) = d.input(|c, now| c.delete(now, n.clone(), u64::from(version))) {
                        assert!(ids.insert(id));
                        names.insert(id, n);
                    }
                }
            }
            Op::Reply { request, body, wrong_source, split } => {
                if sent.is_empty() {
                    continue;
                }
                let s = &sent[usize::from(request) % sent.len()];
                let now_ms = d.machine.unix_ms(d.now);
                let body: Result<ReplyBody, Vec<u8>> = match body {
                    Body::Raw(raw) => Err(raw),
                    Body::Registered(v) => Ok(ReplyBody::Registered { version: u64::from(v) }),
                    Body::Deleted(v) => Ok(ReplyBody::Deleted { version: u64::from(v) }),
                    Body::Error(code, detail) => Ok(ReplyBody::Error { code: ErrorCode::from_u8(code), detail }),
                    Body::Found { name, value_len, version, ttl_ms, forge, owner_is_client } => {
                        let name = Name::new(&name).unwrap_or_else(|_| s.request.name().clone());
                        let owner = if owner_is_client { client_key() } else { server_key() };
                        let expires = now_ms.saturating_add_signed(i64::from(ttl_ms));
                        let Ok(record) = Record::sign(owner, name, vec![1; usize::from(value_len) % 641], u64::from(version), expires) else { continue };
                        let record = if forge {
                            let mut b = record.to_bytes();
                            let i = b.len() - 1;
                            b[i] ^= 1;
                            Record::from_bytes(&b).unwrap()
                        } else {
                            record
                        };
                        Ok(ReplyBody::Found(Box::new(record)))
                    }
                };
                let payload = match body {
                    Ok(body) => Reply { request_nonce: s.nonce, body }.encode(),
                    Err(raw) => raw.into_iter().take(1000).collect(),
                };
                let mut nonce = [0u8; 16];
                nonce[..8].copy_from_slice(&d.now.as_nanos().to_be_bytes());
                nonce[8] = request;
                nonce[9] = split as u8;
                let sealed = seal(server_key(), &client_key().public_key(), now_ms, nonce, &payload).unwrap();
                if s.socket == CLIENT_UDP_SOCKET {
                    let from = if wrong_source { "192.0.2.2:5300".parse().unwrap() } else { server_addr() };
                    let _ = d.datagram(CLIENT_UDP_SOCKET, from, &sealed);
                } else {
                    let framed = frame(&sealed).unwrap();
                    let cut = usize::from(split) % (framed.len() + 1);
                    let socket = s.socket;
                    let _ = d.stream(socket, &framed[..cut]);
                    let _ = d.stream(socket, &framed[cut..]);
                }
            }
            Op::Datagram { data } => {
                let _ = d.datagram(CLIENT_UDP_SOCKET, server_addr(), &data);
            }
            Op::Stream { socket, data } => {
                let _ = d.stream(SocketId(u32::from(socket % 8)), &data);
            }
            Op::Outcome { socket, kind } => {
                let socket = if binding.is_empty() || kind & 0x80 != 0 {
                    SocketId(u32::from(socket % 8))
                } else {
                    binding.remove(usize::from(socket) % binding.len())
                };
                let local: SocketAddr = "198.51.100.1:4000".parse().unwrap();
                let outcome = match kind % 6 {
                    0 | 1 => SocketOutcome::Bound { local },
                    2 => SocketOutcome::Connected { local, remote: server_addr() },
                    3 => SocketOutcome::PeerClosed,
                    4 => SocketOutcome::Failed { op: OpKind::Bind, destination: None, error: IoError::AddrInUse },
                    _ => SocketOutcome::Failed { op: OpKind::Connect, destination: Some(server_addr()), error: IoError::ConnectionRefused },
                };
                d.outcome(socket, outcome);
            }
            Op::Advance { ms } => d.advance(Duration::from_millis(u64::from(ms))),
            Op::Close => {
                closed = true;
                d.input(|c, now| c.close(now));
            }
        }
        // Check what the input produced (the checker saw it first).
        let out = d.take();
        for (t, bytes) in &out.transmits {
            assert_eq!(t.destination, server_addr());
            let envelope = if t.socket == CLIENT_UDP_SOCKET {
                assert!(t.len <= MAX_MESSAGE_LEN);
                &bytes[..]
            } else {
                assert_eq!(usize::from(u16::from_be_bytes([bytes[0], bytes[1]])), t.len - 2);
                &bytes[2..]
            };
            // Learn the request's nonce the way the server would (retransmissions replay).
            if let Ok(opened) = opener.open(server_key(), d.machine.unix_ms(d.now), envelope) {
                let request = Request::decode(&opened.payload).expect("client requests decode");
                sent.push(Sent { socket: t.socket, nonce: opened.nonce, request });
                if sent.len() > 16 {
                    sent.remove(0);
                }
            }
        }
        for op in out.ops {
            match op {
                SocketOp::Bind { socket, .. } => binding.push(socket),
                SocketOp::Connect { remote, .. } => assert_eq!(remote, server_addr()),
                SocketOp::Close { socket } => binding.retain(|s| *s != socket),
                other => panic!("unexpected op {other:?}"),
            }
        }
        for ev in out.events {
            let id = match &ev {
                PnpClientEvent::Closed => {
                    assert!(closed);
                    continue;
                }
                PnpClientEvent::Found { id, record } => {
                    assert!(record.verify(), "unverified record accepted");
                    assert_eq!(Some(record.name()), names.get(id), "record for another name");
                    *id
                }
                PnpClientEvent::Registered { id, .. }
                | PnpClientEvent::NotFound { id, .. }
                | PnpClientEvent::Deleted { id, .. }
                | PnpClientEvent::Failed { id, .. } => *id,
                other => panic!("unexpected event {other:?}"),
            };
            assert!(ids.contains(&id), "event for an unknown request");
            assert!(finished.insert(id), "two events for {id}");
        }
        assert!(d.machine.pending() <= 4);
    }
    if closed {
        assert!(d.checker.finished());
        assert_eq!(finished.len(), ids.len(), "a request ended without an event");
        d.checker.assert_all_closed();
    }
});

//! Stateful fuzzing of the STUN client machine: arbitrary commands, replies (well-formed, mutated or
//! raw), socket outcomes and time steps, driven through the contract checker. Checks besides the
//! contract: valid requests only, one result per started transaction, bounded transactions.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2pd_proto::client::{
    ClientConfig, ClientEvent, Request, Retransmit, StunClient, TransactionHandle,
};
use p2pd_proto::stun::{Attribute, ChangeRequest, Class, ErrorCode, Header, Message, MessageWriter};
use p2pd_proto::testing::{pick, Driven, Recorder};
use p2pd_proto::{IoError, OpKind, SocketId, SocketOp, SocketOutcome};

const ADDRS: [&str; 6] = [
    "192.0.2.1:3478",
    "192.0.2.1:3479",
    "192.0.2.2:3478",
    "192.0.2.2:3479",
    "[2001:db8::1]:3478",
    "203.0.113.7:9",
];

fn addr(i: u8) -> SocketAddr {
    ADDRS[usize::from(i) % ADDRS.len()].parse().unwrap()
}

#[derive(Arbitrary, Debug)]
enum ReplyAttr {
    Xor(u8, u16),
    Mapped(u8, u16),
    Other(u8),
    Origin(u8),
    Error(u16),
    Software(String),
    Raw(u16, Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Open { v6: bool },
    BindResult { which: u8, ok: bool },
    Start { socket: u8, server: u8, change: u8, legacy: bool, expect: Option<u8> },
    Reply { which: u8, from: u8, error: bool, attrs: Vec<ReplyAttr>, flip: Option<(u16, u8)>, fingerprint: bool },
    Raw { socket: u8, from: u8, data: Vec<u8> },
    Advance { ms: u16 },
    SendFailed { socket: u8 },
    Cancel { which: u8 },
    CloseSocket { socket: u8 },
    Close,
}

#[derive(Arbitrary, Debug)]
struct Input {
    seed: u64,
    single_shot: bool,
    ops: Vec<Op>,
}

/// What the target knows of the client beyond the contract (the checker sees the rest).
#[derive(Default)]
struct Model {
    sockets: Vec<SocketId>,
    unbound: Vec<SocketId>,
    started: HashSet<TransactionHandle>,
    ended: HashMap<TransactionHandle, usize>,
    sent: Vec<(SocketId, SocketAddr, Vec<u8>)>,
}

impl Model {
    /// Machine-specific checks on what one input produced.
    fn check(&mut self, out: Recorder<ClientEvent>) {
        for (t, bytes) in out.transmits {
            let msg = Message::decode(&bytes).expect("the client sends valid STUN");
            assert_eq!(msg.class(), Class::Request);
            if self.sent.len() > 64 {
                self.sent.remove(0);
            }
            self.sent.push((t.socket, t.destination, bytes));
        }
        for op in out.ops {
            match op {
                SocketOp::Bind { socket, .. } => self.unbound.push(socket),
                SocketOp::Close { .. } => {}
                other => panic!("unexpected intent {other:?}"),
            }
        }
        for ev in out.events {
            if let ClientEvent::Transaction(t) = ev {
                assert!(self.started.contains(&t.id), "result for an unknown transaction");
                *self.ended.entry(t.id).or_default() += 1;
                assert_eq!(self.ended[&t.id], 1, "two results for one transaction");
            }
        }
    }
}

fn build_reply(req: &[u8], error: bool, attrs: &[ReplyAttr], fingerprint: bool) -> Vec<u8> {
    let msg = Message::decode(req).unwrap();
    let header = Header {
        class: if error { Class::Error } else { Class::Success },
        ..*msg.header()
    };
    let mut buf = vec![0u8; 1024];
    let mut w = MessageWriter::new(&mut buf, header).unwrap();
    for a in attrs.iter().take(8) {
        let _ = match a {
            ReplyAttr::Xor(i, p) => w.add(&Attribute::XorMappedAddress(SocketAddr::new(addr(*i).ip(), *p))),
            ReplyAttr::Mapped(i, p) => w.add(&Attribute::MappedAddress(SocketAddr::new(addr(*i).ip(), *p))),
            ReplyAttr::Other(i) => w.add(&Attribute::OtherAddress(addr(*i))),
            ReplyAttr::Origin(i) => w.add(&Attribute::ResponseOrigin(addr(*i))),
            ReplyAttr::Error(c) => w.add(&Attribute::ErrorCode(ErrorCode { code: 300 + c % 400, reason: "x" })),
            ReplyAttr::Software(s) => w.add(&Attribute::Software(s)),
            ReplyAttr::Raw(k, v) => w.add(&Attribute::Other { kind: *k, value: v }),
        };
    }
    if fingerprint {
        let _ = w.add_fingerprint();
    }
    let n = w.finish();
    buf.truncate(n);
    buf
}

fuzz_target!(|input: Input| {
    let retransmit = if input.single_shot {
        Retransmit::SingleShot { timeout: Duration::from_millis(300) }
    } else {
        Retransmit::Rfc5389 {
            rto: Duration::from_millis(100),
            transmissions: 4,
            last_wait: 4,
            max_rto: Duration::from_millis(800),
        }
    };
    let config = ClientConfig { retransmit, max_transactions: 8, max_sockets: 4, ..ClientConfig::default() };
    let client = StunClient::new(config, input.seed);
    let mut d = Driven::new("stun client", client, |e| matches!(e, ClientEvent::Closed));
    let mut m = Model::default();
    for op in input.ops.into_iter().take(256) {
        match op {
            Op::Open { v6 } => {
                let local: SocketAddr = if v6 { "[2001:db8::9]:0" } else { "10.0.0.1:0" }.parse().unwrap();
                if let Ok(s) = d.input(|c, now| c.open_socket(now, local, Default::default())) {
                    m.sockets.push(s);
                }
            }
            Op::BindResult { which, ok } => {
                if let Some(s) = pick(&m.unbound, which) {
                    m.unbound.retain(|x| *x != s);
                    let outcome = if ok {
                        SocketOutcome::Bound { local: "10.0.0.1:4000".parse().unwrap() }
                    } else {
                        SocketOutcome::Failed { op: OpKind::Bind, destination: None, error: IoError::AddrInUse }
                    };
                    d.outcome(s, outcome);
                }
            }
            Op::Start { socket, server, change, legacy, expect } => {
                let s = pick(&m.sockets, socket).unwrap_or(SocketId(999));
                let change = match change % 4 {
                    0 => ChangeRequest::NONE,
                    1 => ChangeRequest::PORT,
                    2 => ChangeRequest::IP,
                    _ => ChangeRequest::BOTH,
                };
                let mut req = Request::binding(s, addr(server)).with_change(change);
                if legacy {
                    req = req.legacy();
                }
                if let Some(e) = expect {
                    req = req.expect_from(addr(e));
                }
                if let Ok(id) = d.input(|c, now| c.start(now, req)) {
                    assert!(m.started.insert(id), "handle reused");
                }
            }
            Op::Reply { which, from, error, attrs, flip, fingerprint } => {
                let Some((socket, _, req)) = m.sent.get(usize::from(which) % m.sent.len().max(1)).cloned() else {
                    continue;
                };
                let mut reply = build_reply(&req, error, &attrs, fingerprint);
                if let Some((at, x)) = flip {
                    let n = reply.len();
                    reply[usize::from(at) % n] ^= x;
                }
                let _ = d.datagram(socket, addr(from), &reply);
            }
            Op::Raw { socket, from, data } => {
                let s = pick(&m.sockets, socket).unwrap_or(SocketId(0));
                let _ = d.datagram(s, addr(from), &data);
            }
            Op::Advance { ms } => d.advance(Duration::from_millis(u64::from(ms))),
            Op::SendFailed { socket } => {
                if let Some(s) = pick(&m.sockets, socket) {
                    d.outcome(s, SocketOutcome::Failed { op: OpKind::Send, destination: Some(addr(0)), error: IoError::WouldBlock });
                }
            }
            Op::Cancel { which } => {
                let ids: Vec<_> = m.started.iter().copied().collect();
                if let Some(id) = pick(&ids, which) {
                    d.input(|c, now| c.cancel(now, id));
                }
            }
            Op::CloseSocket { socket } => {
                if let Some(s) = pick(&m.sockets, socket) {
                    d.input(|c, now| c.close_socket(now, s));
                }
            }
            Op::Close => d.input(|c, now| c.close(now)),
        }
        m.check(d.take());
        assert!(d.machine.in_flight() <= 8);
    }
    // Clean-up invariants: after close every transaction has ended exactly once and nothing is left.
    d.input(|c, now| c.close(now));
    d.input(|c, now| c.close(now));
    m.check(d.take());
    assert!(d.checker.finished());
    d.checker.assert_all_closed();
    assert_eq!(d.machine.in_flight(), 0);
    for id in &m.started {
        assert_eq!(m.ended.get(id), Some(&1), "transaction {id:?} never ended");
    }
});

//! Stateful fuzzing of the RFC 5780 server machine: arbitrary datagrams (raw or mutated requests) on
//! any role, bind outcomes and closes, driven through the contract checker. Checks besides the
//! contract: at most one bounded, valid response per request, sent from a bound role, echoing the
//! transaction id; only bound roles closed.
#![no_main]

use std::collections::HashSet;
use std::net::SocketAddr;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2pd_proto::server::{Role, ServerConfig, ServerEvent, StunServer, MAX_RESPONSE_LEN};
use p2pd_proto::stun::{Attribute, ChangeRequest, Class, Header, Message, MessageWriter, Method, TransactionId};
use p2pd_proto::testing::Driven;
use p2pd_proto::{IoError, OpKind, SocketOp, SocketOutcome, Verdict};

#[derive(Arbitrary, Debug)]
enum Op {
    Request { role: u8, from: u16, legacy: bool, change: u8, response_port: Option<u16>, extra: Vec<(u16, Vec<u8>)>, flip: Option<(u16, u8)> },
    Raw { role: u8, data: Vec<u8> },
    Close,
}

#[derive(Arbitrary, Debug)]
struct Input {
    v6: bool,
    alternates: u8,
    failed_roles: u8,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let (primary, alt_ip): (SocketAddr, std::net::IpAddr) = if input.v6 {
        ("[2001:db8::1]:3478".parse().unwrap(), "2001:db8::2".parse().unwrap())
    } else {
        ("192.0.2.1:3478".parse().unwrap(), "192.0.2.2".parse().unwrap())
    };
    let mut config = ServerConfig::single(primary);
    if input.alternates & 1 != 0 {
        config.alternate_ip = Some(alt_ip);
    }
    if input.alternates & 2 != 0 {
        config.alternate_port = Some(3479);
    }
    config.queue_capacity = 4;
    let server = StunServer::new(config).unwrap();
    let mut d = Driven::new("stun server", server, |e| matches!(e, ServerEvent::Closed));
    d.drain();
    let mut bound = HashSet::new();
    for op in d.take_ops() {
        let SocketOp::Bind { socket, local, .. } = op else { panic!("{op:?}") };
        let role = d.machine.role_of(socket).unwrap();
        if input.failed_roles & (1 << (role as u8)) != 0 {
            d.outcome(socket, SocketOutcome::Failed { op: OpKind::Bind, destination: None, error: IoError::AddrInUse });
        } else {
            d.outcome(socket, SocketOutcome::Bound { local });
            bound.insert(socket);
        }
    }
    let mut closed = false;
    let close = |d: &mut Driven<StunServer>, bound: &mut HashSet<_>| {
        d.input(|s, now| s.close(now));
        for op in d.take_ops() {
            let SocketOp::Close { socket } = op else { panic!("{op:?}") };
            assert!(bound.remove(&socket), "closed a socket that was not open");
        }
    };
    for op in input.ops.into_iter().take(128) {
        let mut source: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        let (role, data, expect_id) = match op {
            Op::Request { role, from, legacy, change, response_port, extra, flip } => {
                let id = TransactionId::new([role; 12]);
                let header = if legacy {
                    Header::legacy(Class::Request, Method::BINDING, *b"1234", id)
                } else {
                    Header::new(Class::Request, Method::BINDING, id)
                };
                let mut req = vec![0u8; 2048];
                let mut w = MessageWriter::new(&mut req, header).unwrap();
                let change = ChangeRequest { change_ip: change & 4 != 0, change_port: change & 2 != 0 };
                let _ = w.add(&Attribute::ChangeRequest(change));
                if let Some(p) = response_port {
                    let _ = w.add(&Attribute::ResponsePort(p));
                }
                for (kind, value) in extra.iter().take(4) {
                    let _ = w.add(&Attribute::Other { kind: *kind, value });
                }
                let n = w.finish();
                req.truncate(n);
                if let Some((at, x)) = flip {
                    let len = req.len();
                    req[usize::from(at) % len] ^= x;
                }
                source.set_port(from.max(1));
                (role, req, Some(id))
            }
            Op::Raw { role, data } => (role, data, None),
            Op::Close => {
                close(&mut d, &mut bound);
                closed = true;
                continue;
            }
        };
        let role = Role::ALL[usize::from(role) % 4];
        let verdict = d.datagram(role.socket(), source, &data);
        let out = d.take();
        assert!(out.ops.is_empty(), "{:?}", out.ops);
        assert!(out.transmits.len() <= 1, "one response per request");
        for (t, bytes) in &out.transmits {
            assert!(!closed, "response after close");
            assert!(t.len <= MAX_RESPONSE_LEN, "{} bytes", t.len);
            assert!(bound.contains(&t.socket), "sent from a socket that is not bound");
            let m = Message::decode(bytes).expect("responses are valid STUN");
            assert!(m.class().is_response());
            let req = Message::decode(&data).expect("only valid requests are answered");
            assert_eq!(m.transaction_id(), req.transaction_id());
            assert_eq!(m.header().cookie, req.header().cookie);
            if let Some(id) = expect_id {
                // A request we built (and did not corrupt in the id) is answered under its id.
                if req.transaction_id() == id {
                    assert_eq!(m.transaction_id(), id);
                }
            }
            assert_eq!(verdict, Verdict::Consumed);
        }
    }
    close(&mut d, &mut bound);
    assert!(d.checker.finished());
    d.checker.assert_all_closed();
});

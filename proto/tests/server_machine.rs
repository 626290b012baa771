//! Behaviour of the RFC 5780 server machine: roles, change requests, dialects, bounds, allocation.
// Test code: the package's strict lints (Cargo.toml `[lints]`) guard its library code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use core::net::SocketAddr;
use core::ops::ControlFlow;
use p2pd_proto::Machine;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use p2pd_proto::server::{Role, ServerConfig, ServerEvent, StunServer, MAX_RESPONSE_LEN};
use p2pd_proto::stun::{
    attr, AttrKind, Attribute, ChangeRequest, Class, Header, Message, MessageWriter, Method,
    TransactionId,
};
use p2pd_proto::testing::Driven;
use p2pd_proto::{
    DropReason, Instant, IoError, OpKind, Outputs, SocketId, SocketOp, SocketOutcome, Transmit,
    Verdict, TRANSMIT_BUFFER_LEN,
};

/// Counts heap allocations made by the current thread while `COUNTING` is set.
struct CountingAlloc;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = COUNTING.try_with(|c| {
            if c.get() {
                let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
            }
        });
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = COUNTING.try_with(|c| {
            if c.get() {
                let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
            }
        });
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const P: &str = "192.0.2.1:3478";
const CLIENT: &str = "203.0.113.9:40000";

/// Every drain of the server goes through the contract checker.
type Server = Driven<StunServer>;

/// A server with every bind intent answered as bound (or failed for `fail`).
fn server(config: ServerConfig, fail: Option<Role>) -> Server {
    let answer = move |op: &SocketOp| {
        let SocketOp::Bind { socket, local, .. } = *op else {
            return None;
        };
        Some(if Some(socket) == fail.map(Role::socket) {
            SocketOutcome::Failed {
                op: OpKind::Bind,
                destination: None,
                error: IoError::AddrNotAvailable,
            }
        } else {
            SocketOutcome::Bound { local }
        })
    };
    let s = StunServer::new(config).unwrap();
    let mut s =
        Driven::new("stun server", s, |e| matches!(e, ServerEvent::Closed)).answering(answer);
    s.drain();
    for op in &s.out.ops {
        assert!(
            matches!(
                op,
                SocketOp::Bind { .. } | SocketOp::Listen { .. } | SocketOp::Accept { .. }
            ),
            "unexpected {op:?}"
        );
    }
    s
}

fn full() -> Server {
    server(
        ServerConfig::rfc5780(addr(P), "192.0.2.2".parse().unwrap(), 3479),
        None,
    )
}

/// Counts the transmits of a drain without allocating (for the allocation tests); hands back
/// `Accepted` for an accept intent, as a runtime with a connection waiting would.
struct Served {
    answered: usize,
    accepted: Option<(SocketId, SocketOutcome)>,
    remote: SocketAddr,
    /// Hand back `Accepted` for accept intents (else only remember the last one asked for).
    auto_accept: bool,
}

impl Outputs<StunServer> for Served {
    fn transmit(&mut self, _: Transmit, _: &[u8]) {
        self.answered += 1;
    }
    fn socket_op(&mut self, op: SocketOp) {
        if let SocketOp::Accept { socket, listener } = op {
            assert_eq!(listener, p2pd_proto::server::TCP_LISTENER);
            let accepted = SocketOutcome::Accepted {
                local: addr(P),
                remote: self.remote,
            };
            self.accepted = Some((socket, accepted));
        }
    }
    fn event(&mut self, _: &mut StunServer, _: ServerEvent) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
    fn outcome(&mut self) -> Option<(Instant, SocketId, SocketOutcome)> {
        if !self.auto_accept {
            return None;
        }
        let (socket, outcome) = self.accepted.take()?;
        Some((Instant::ZERO, socket, outcome))
    }
}

/// Gives `s` an input, then drains it through its checker into `served`.
fn serve(s: &mut Server, served: &mut Served, buf: &mut [u8], input: impl FnOnce(&mut StunServer)) {
    s.checker.input(Instant::ZERO);
    input(&mut s.machine);
    let _ = s.checker.drain(&mut s.machine, buf, served);
}

fn request(legacy: bool, attrs: &[Attribute<'_>]) -> Vec<u8> {
    let id = TransactionId::new([9; 12]);
    let header = if legacy {
        Header::legacy(Class::Request, Method::BINDING, *b"1234", id)
    } else {
        Header::new(Class::Request, Method::BINDING, id)
    };
    let mut buf = [0u8; 256];
    let mut w = MessageWriter::new(&mut buf, header).unwrap();
    for a in attrs {
        w.add(a).unwrap();
    }
    let n = w.finish();
    buf[..n].to_vec()
}

/// Sends `req` to `role` and returns (answering socket, destination, response bytes).
fn ask(
    s: &mut Server,
    role: Role,
    from: &str,
    req: &[u8],
) -> Option<(SocketId, SocketAddr, Vec<u8>)> {
    let v = s.datagram(role.socket(), addr(from), req);
    assert_eq!(v, Verdict::Consumed);
    let mut sent = s.take_transmits();
    assert!(sent.len() <= 1, "one response per request");
    let (t, bytes) = sent.pop()?;
    assert!(t.len <= MAX_RESPONSE_LEN);
    Some((t.socket, t.destination, bytes))
}

#[test]
fn four_roles_answer_change_requests_from_the_right_socket() {
    let mut s = full();
    let addrs = [
        (Role::Primary, "192.0.2.1:3478"),
        (Role::AlternatePort, "192.0.2.1:3479"),
        (Role::AlternateIp, "192.0.2.2:3478"),
        (Role::AlternateBoth, "192.0.2.2:3479"),
    ];
    let role_addr = |r: Role| addr(addrs.iter().find(|(x, _)| *x == r).unwrap().1);
    for (received_on, _) in addrs {
        for (change, flip_ip, flip_port) in [
            (ChangeRequest::NONE, false, false),
            (ChangeRequest::PORT, false, true),
            (ChangeRequest::IP, true, false),
            (ChangeRequest::BOTH, true, true),
        ] {
            let req = request(false, &[Attribute::ChangeRequest(change)]);
            let (sock, dst, resp) = ask(&mut s, received_on, CLIENT, &req).unwrap();
            let expect_ip =
                matches!(received_on, Role::AlternateIp | Role::AlternateBoth) ^ flip_ip;
            let expect_port =
                matches!(received_on, Role::AlternatePort | Role::AlternateBoth) ^ flip_port;
            let answer_role = addrs
                .iter()
                .map(|(r, _)| *r)
                .find(|r| {
                    matches!(r, Role::AlternateIp | Role::AlternateBoth) == expect_ip
                        && matches!(r, Role::AlternatePort | Role::AlternateBoth) == expect_port
                })
                .unwrap();
            assert_eq!(sock, answer_role.socket(), "{received_on:?} {change:?}");
            assert_eq!(dst, addr(CLIENT));
            let m = Message::decode(&resp).unwrap();
            assert_eq!(m.class(), Class::Success);
            assert_eq!(m.xor_mapped_address(), Some(addr(CLIENT)));
            assert_eq!(m.response_origin(), Some(role_addr(answer_role)));
            // OTHER-ADDRESS differs in both IP and port from where the request arrived.
            let other = m.other_address().unwrap();
            let recv = role_addr(received_on);
            assert_ne!(other.ip(), recv.ip());
            assert_ne!(other.port(), recv.port());
            assert!(m.has_fingerprint());
        }
    }
    assert_eq!(s.machine.stats().responses, 16);
}

#[test]
fn without_alternates_change_requests_get_420_and_no_other_address() {
    let mut s = server(ServerConfig::single(addr(P)), None);
    let (_, _, resp) = ask(&mut s, Role::Primary, CLIENT, &request(false, &[])).unwrap();
    let m = Message::decode(&resp).unwrap();
    assert_eq!(m.other_address(), None);
    assert_eq!(m.mapped_address(), Some(addr(CLIENT)));
    for change in [ChangeRequest::PORT, ChangeRequest::IP, ChangeRequest::BOTH] {
        let req = request(false, &[Attribute::ChangeRequest(change)]);
        let (sock, _, resp) = ask(&mut s, Role::Primary, CLIENT, &req).unwrap();
        assert_eq!(sock, Role::Primary.socket());
        let m = Message::decode(&resp).unwrap();
        assert_eq!(m.class(), Class::Error);
        assert_eq!(m.error_code().unwrap().code, 420);
        let Some(Attribute::UnknownAttributes(list)) = m.get(AttrKind::UnknownAttributes) else {
            panic!("no UNKNOWN-ATTRIBUTES")
        };
        assert_eq!(list.iter().collect::<Vec<_>>(), vec![attr::CHANGE_REQUEST]);
    }
    // A change request that asks for nothing is fine.
    let req = request(false, &[Attribute::ChangeRequest(ChangeRequest::NONE)]);
    let (_, _, resp) = ask(&mut s, Role::Primary, CLIENT, &req).unwrap();
    assert_eq!(Message::decode(&resp).unwrap().class(), Class::Success);
}

#[test]
fn alternate_port_only_honours_port_changes() {
    let mut cfg = ServerConfig::single(addr(P));
    cfg.alternate_port = Some(3479);
    let mut s = server(cfg, None);
    let req = request(false, &[Attribute::ChangeRequest(ChangeRequest::PORT)]);
    let (sock, _, resp) = ask(&mut s, Role::Primary, CLIENT, &req).unwrap();
    assert_eq!(sock, Role::AlternatePort.socket());
    let m = Message::decode(&resp).unwrap();
    assert_eq!(m.response_origin(), Some(addr("192.0.2.1:3479")));
    assert_eq!(
        m.other_address(),
        None,
        "no OTHER-ADDRESS without a second IP"
    );
    let req = request(false, &[Attribute::ChangeRequest(ChangeRequest::IP)]);
    let (_, _, resp) = ask(&mut s, Role::Primary, CLIENT, &req).unwrap();
    assert_eq!(
        Message::decode(&resp).unwrap().error_code().unwrap().code,
        420
    );
}

#[test]
fn a_role_that_failed_to_bind_is_not_advertised() {
    let mut s = server(
        ServerConfig::rfc5780(addr(P), "192.0.2.2".parse().unwrap(), 3479),
        Some(Role::AlternateBoth),
    );
    let events = s.take_events();
    assert!(events.contains(&ServerEvent::SocketFailed {
        role: Role::AlternateBoth,
        error: IoError::AddrNotAvailable
    }));
    let (_, _, resp) = ask(&mut s, Role::Primary, CLIENT, &request(false, &[])).unwrap();
    assert_eq!(Message::decode(&resp).unwrap().other_address(), None);
    let req = request(false, &[Attribute::ChangeRequest(ChangeRequest::BOTH)]);
    let (_, _, resp) = ask(&mut s, Role::Primary, CLIENT, &req).unwrap();
    assert_eq!(
        Message::decode(&resp).unwrap().error_code().unwrap().code,
        420
    );
    let req = request(false, &[Attribute::ChangeRequest(ChangeRequest::IP)]);
    let (sock, _, _) = ask(&mut s, Role::Primary, CLIENT, &req).unwrap();
    assert_eq!(sock, Role::AlternateIp.socket());
}

#[test]
fn response_port_redirects_the_reply() {
    let mut s = full();
    let req = request(false, &[Attribute::ResponsePort(5555)]);
    let (_, dst, resp) = ask(&mut s, Role::Primary, CLIENT, &req).unwrap();
    assert_eq!(dst, addr("203.0.113.9:5555"));
    // The mapped address is still where the request came from.
    assert_eq!(
        Message::decode(&resp).unwrap().mapped_address(),
        Some(addr(CLIENT))
    );
}

#[test]
fn rfc3489_clients_are_answered_in_their_dialect() {
    let mut s = full();
    let req = request(true, &[Attribute::ChangeRequest(ChangeRequest::BOTH)]);
    let (sock, _, resp) = ask(&mut s, Role::Primary, CLIENT, &req).unwrap();
    assert_eq!(sock, Role::AlternateBoth.socket());
    let m = Message::decode(&resp).unwrap();
    assert!(m.is_legacy());
    assert_eq!(&resp[4..8], b"1234", "the 128-bit transaction id is echoed");
    assert_eq!(
        m.get(AttrKind::MappedAddress),
        Some(Attribute::MappedAddress(addr(CLIENT)))
    );
    assert_eq!(m.get(AttrKind::XorMappedAddress), None);
    assert_eq!(
        m.get(AttrKind::SourceAddress),
        Some(Attribute::SourceAddress(addr("192.0.2.2:3479")))
    );
    assert_eq!(
        m.get(AttrKind::ChangedAddress),
        Some(Attribute::ChangedAddress(addr("192.0.2.2:3479")))
    );
    assert!(!m.has_fingerprint());
    assert!(m
        .attributes()
        .all(|a| a.code >= 0x8000 || [1, 4, 5].contains(&a.code)));
}

#[test]
fn unknown_comprehension_required_attributes_get_420() {
    let mut s = full();
    let req = request(
        false,
        &[
            Attribute::Other {
                kind: 0x0033,
                value: b"abcd",
            },
            Attribute::Other {
                kind: 0xC001,
                value: b"ok",
            },
            Attribute::Other {
                kind: 0x0044,
                value: b"",
            },
        ],
    );
    let (_, _, resp) = ask(&mut s, Role::Primary, CLIENT, &req).unwrap();
    let m = Message::decode(&resp).unwrap();
    assert_eq!(m.error_code().unwrap().code, 420);
    let Some(Attribute::UnknownAttributes(list)) = m.get(AttrKind::UnknownAttributes) else {
        panic!()
    };
    assert_eq!(list.iter().collect::<Vec<_>>(), vec![0x0033, 0x0044]);
    assert_eq!(m.transaction_id(), TransactionId::new([9; 12]));
}

#[test]
fn bad_input_is_counted_never_answered() {
    let mut s = full();
    let good = request(false, &[]);
    let mut bad_fp = good.clone();
    bad_fp.extend_from_slice(&[0x80, 0x28, 0, 4, 1, 2, 3, 4]);
    bad_fp[3] += 8;
    let cases: Vec<(Vec<u8>, Verdict)> = vec![
        (vec![], Verdict::NotMine),
        (b"GET / HTTP/1.1\r\n\r\n....".to_vec(), Verdict::NotMine),
        (good[..19].to_vec(), Verdict::NotMine),
        (
            bad_fp,
            Verdict::Dropped(DropReason::Malformed(
                p2pd_proto::stun::DecodeError::FingerprintMismatch,
            )),
        ),
    ];
    for (bytes, verdict) in cases {
        assert_eq!(
            s.datagram(Role::Primary.socket(), addr(CLIENT), &bytes),
            verdict
        );
    }
    assert!(s.take_transmits().is_empty());
    assert_eq!(
        s.datagram(SocketId(77), addr(CLIENT), &good),
        Verdict::Dropped(DropReason::UnknownSocket)
    );
    // Responses and indications are not answered.
    let mut resp = good.clone();
    resp[1] = 0x01;
    resp[0] = 0x01;
    assert_eq!(
        s.datagram(Role::Primary.socket(), addr(CLIENT), &resp),
        Verdict::NotMine
    );
    let mut ind = good.clone();
    ind[1] = 0x11;
    assert_eq!(
        s.datagram(Role::Primary.socket(), addr(CLIENT), &ind),
        Verdict::Consumed
    );
    assert!(s.take_transmits().is_empty());
    assert_eq!(s.machine.stats().malformed, 1);
}

#[test]
fn queue_is_bounded() {
    let mut cfg = ServerConfig::single(addr(P));
    cfg.queue_capacity = 3;
    let mut s = server(cfg, None);
    let req = request(false, &[]);
    // Five requests before the server is drained.
    let verdicts = s.input(|s, now| {
        (0..5)
            .map(|_| s.handle_datagram(now, Role::Primary.socket(), addr(CLIENT), &req))
            .collect::<Vec<_>>()
    });
    for (i, v) in verdicts.into_iter().enumerate() {
        let expect = if i < 3 {
            Verdict::Consumed
        } else {
            Verdict::Dropped(DropReason::QueueFull)
        };
        assert_eq!(v, expect);
    }
    assert_eq!(s.take_transmits().len(), 3);
    assert_eq!(s.machine.stats().queue_full, 2);
}

#[test]
fn ipv6_worst_case_fits_the_bound() {
    let mut cfg = ServerConfig::rfc5780(
        addr("[2001:db8::1]:3478"),
        "2001:db8::2".parse().unwrap(),
        3479,
    );
    cfg.software = Some("0123456789abcdef0123456789abcdef");
    let mut s = server(cfg, None);
    let client = "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
    let (_, _, resp) = ask(&mut s, Role::Primary, client, &request(false, &[])).unwrap();
    let m = Message::decode(&resp).unwrap();
    assert_eq!(m.mapped_address(), Some(addr(client)));
    assert_eq!(m.other_address(), Some(addr("[2001:db8::2]:3479")));
    assert!(resp.len() <= MAX_RESPONSE_LEN, "{} bytes", resp.len());
    let mut long = ServerConfig::single(addr(P));
    long.software = Some("0123456789abcdef0123456789abcdef!");
    assert!(StunServer::new(long).is_err());
}

#[test]
fn close_releases_each_socket_once() {
    let mut s = full();
    let _ = s.take();
    s.input(|s, now| s.close(now));
    s.input(|s, now| s.close(now));
    let out = s.take();
    assert_eq!(out.ops.len(), 4);
    assert!(out.ops.iter().all(|o| matches!(o, SocketOp::Close { .. })));
    assert_eq!(out.events, vec![ServerEvent::Closed]);
    assert_eq!(
        s.datagram(Role::Primary.socket(), addr(CLIENT), &request(false, &[])),
        Verdict::Dropped(DropReason::Closed)
    );
    s.checker.assert_all_closed();
}

#[test]
fn no_heap_allocation_per_request() {
    let mut s = full();
    let requests: Vec<Vec<u8>> = vec![
        request(false, &[]),
        request(false, &[Attribute::ChangeRequest(ChangeRequest::BOTH)]),
        request(true, &[Attribute::ChangeRequest(ChangeRequest::PORT)]),
        request(
            false,
            &[Attribute::Other {
                kind: 0x0033,
                value: b"abcd",
            }],
        ),
        request(false, &[Attribute::ResponsePort(9)]),
    ];
    let mut buf = [0u8; TRANSMIT_BUFFER_LEN];
    let mut served = Served {
        answered: 0,
        accepted: None,
        remote: addr(CLIENT),
        auto_accept: true,
    };
    let primary = Role::Primary.socket();
    // Warm up (the queue was allocated at construction; this proves it never grows).
    for r in &requests {
        serve(&mut s, &mut served, &mut buf, |s| {
            let _ = s.handle_datagram(Instant::ZERO, primary, addr(CLIENT), r);
        });
    }
    served.answered = 0;
    // The counter works: one allocation is seen.
    COUNTING.with(|c| c.set(true));
    drop(std::hint::black_box(vec![1u8; 16]));
    COUNTING.with(|c| c.set(false));
    assert_eq!(
        ALLOCS.with(|a| a.get()),
        1,
        "the counting allocator sees allocations"
    );
    ALLOCS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    for i in 0..10_000 {
        let r = &requests[i % requests.len()];
        // Let a few queue up before draining, as a busy socket would.
        if i % 7 == 0 {
            serve(&mut s, &mut served, &mut buf, |s| {
                let _ = s.handle_datagram(Instant::ZERO, primary, addr(CLIENT), r);
            });
        } else {
            s.checker.input(Instant::ZERO);
            let _ = s
                .machine
                .handle_datagram(Instant::ZERO, primary, addr(CLIENT), r);
        }
    }
    serve(&mut s, &mut served, &mut buf, |_| {});
    COUNTING.with(|c| c.set(false));
    assert_eq!(served.answered, 10_000);
    assert_eq!(ALLOCS.with(|a| a.get()), 0, "allocations while serving");
}

#[test]
fn no_heap_allocation_per_tcp_request() {
    let mut cfg = ServerConfig::single(addr(P)).with_tcp(true);
    cfg.tcp_limits.max_connections = 4;
    let mut s = server(cfg, None);
    let mut accepts: Vec<SocketId> = s
        .take_ops()
        .into_iter()
        .filter_map(|op| match op {
            SocketOp::Accept { socket, .. } => Some(socket),
            _ => None,
        })
        .collect();
    // One accept per connection plus the spare; the spare stays outstanding (a newcomer there
    // would evict one of the four).
    assert_eq!(accepts.len(), 5);
    let mut spare = accepts.pop().unwrap();
    let client = addr(CLIENT);
    let accepted = SocketOutcome::Accepted {
        local: addr(P),
        remote: client,
    };
    for socket in &accepts {
        s.outcome(*socket, accepted);
    }
    let mut stream = request(false, &[]);
    stream.extend(request(
        false,
        &[Attribute::ChangeRequest(ChangeRequest::BOTH)],
    ));
    let mut buf = [0u8; TRANSMIT_BUFFER_LEN];
    let mut served = Served {
        answered: 0,
        accepted: None,
        remote: client,
        auto_accept: true,
    };
    // Warm up: one recycle, so the checker's tables have their nodes.
    serve(&mut s, &mut served, &mut buf, |s| {
        s.handle_socket_result(Instant::ZERO, accepts[0], SocketOutcome::PeerClosed)
    });
    ALLOCS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    for i in 0..5_000usize {
        let socket = accepts[i % accepts.len()];
        // Split the two requests at a moving offset.
        let cut = i % stream.len();
        serve(&mut s, &mut served, &mut buf, |s| {
            let _ = s.handle_stream(Instant::ZERO, socket, &stream[..cut]);
        });
        serve(&mut s, &mut served, &mut buf, |s| {
            let _ = s.handle_stream(Instant::ZERO, socket, &stream[cut..]);
        });
        // Recycle a connection now and then: close, re-accept (handed back inside the drain).
        if i % 100 == 0 {
            serve(&mut s, &mut served, &mut buf, |s| {
                s.handle_socket_result(Instant::ZERO, socket, SocketOutcome::PeerClosed)
            });
        }
    }
    // Evictions allocate nothing either: a newcomer on the spare evicts the connection that has
    // done least, whose slot becomes the next spare; the newcomer is served.
    served.auto_accept = false;
    for _ in 0..1_000 {
        serve(&mut s, &mut served, &mut buf, |s| {
            s.handle_socket_result(Instant::ZERO, spare, accepted)
        });
        let newcomer = spare;
        spare = served
            .accepted
            .take()
            .expect("the evicted slot accepts again")
            .0;
        assert_ne!(spare, newcomer);
        serve(&mut s, &mut served, &mut buf, |s| {
            let _ = s.handle_stream(Instant::ZERO, newcomer, &stream);
        });
    }
    COUNTING.with(|c| c.set(false));
    assert_eq!(served.answered, 12_000);
    assert_eq!(s.machine.stats().tcp_evicted_pool_full, 1_000);
    assert_eq!(ALLOCS.with(|a| a.get()), 0, "allocations while serving TCP");
}

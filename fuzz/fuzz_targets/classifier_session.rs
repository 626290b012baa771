//! Stateful fuzzing of the NAT classifier machine: well-formed Binding responses to its own requests
//! (fuzzer-chosen mapped address, source and OTHER-ADDRESS), mutated and raw datagrams, bind
//! outcomes, send failures and time steps. Checks the machine contract, not just "no panic":
//! exactly one `Done`, then `Closed`, then nothing; every socket closed at most once (exactly once
//! unless its bind failed); `poll_timeout` never at or before the time just handled; probes bounded.
#![no_main]

use p2pd_proto::Machine;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2pd_nat::{Classifier, ClassifierConfig, ClassifierEvent, ServerSpec};
use p2pd_proto::client::Retransmit;
use p2pd_proto::stun::{Attribute, Class, ErrorCode, Header, Message, MessageWriter};
use p2pd_proto::{Instant, IoError, OpKind, SocketId, SocketOp, SocketOutcome, TRANSMIT_BUFFER_LEN};

/// Addresses replies may come from or name: both simulated servers' four endpoints, a NAT, the host.
const ADDRS: [&str; 12] = [
    "192.0.2.1:3478",
    "192.0.2.2:3479",
    "192.0.2.1:3479",
    "192.0.2.2:3478",
    "192.0.2.11:3478",
    "192.0.2.12:3479",
    "192.0.2.11:3479",
    "192.0.2.12:3478",
    "203.0.113.10:40000",
    "10.0.0.2:5000",
    "[2001:db8::1]:3478",
    "0.0.0.0:0",
];

fn addr(i: u8) -> SocketAddr {
    ADDRS[usize::from(i) % ADDRS.len()].parse().unwrap()
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Source {
    /// Where the request went.
    Destination,
    /// One of [`ADDRS`].
    Pool(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum MappedChoice {
    /// The socket's own local address (no NAT).
    Local,
    /// A pool IP with a fuzzer-chosen port.
    Pool(u8, u16),
    /// A NAT-like address: 203.0.113.10 with a fuzzer-chosen port.
    Nat(u16),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Bind { which: u8, ok: bool, port: Option<u16> },
    Reply {
        which: u8,
        from: Source,
        mapped: Option<MappedChoice>,
        other: Option<u8>,
        legacy_mapped: bool,
        error: Option<u16>,
        flip: Option<(u16, u8)>,
        fingerprint: bool,
    },
    Raw { socket: u8, from: u8, data: Vec<u8> },
    Advance { ms: u16 },
    Tick { ms: u8 },
    SendFailed { socket: u8 },
    Start,
    Close,
}

#[derive(Arbitrary, Debug)]
struct Setup {
    seed: u64,
    servers: u8,
    duplicate_ids: bool,
    alternates: [Option<u8>; 3],
    parallel: u8,
    allocation_probes: u8,
    filter_transmissions: u8,
    transmissions: u8,
    deadline_ms: u16,
    local: u8,
    start_late: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    setup: Setup,
    ops: Vec<Op>,
}

#[derive(Default)]
struct Harness {
    now: Instant,
    /// Sockets with a Bind intent not yet answered (id, requested local).
    unbound: Vec<(SocketId, SocketAddr)>,
    /// Bound sockets and their local address.
    bound: HashMap<SocketId, SocketAddr>,
    /// Every socket that ever had a Bind intent.
    opened: HashSet<SocketId>,
    /// Sockets whose bind we failed (the OS closed them; no Close intent expected).
    bind_failed: HashSet<SocketId>,
    closed: HashSet<SocketId>,
    sent: Vec<(SocketId, SocketAddr, Vec<u8>)>,
    transmits: usize,
    done: usize,
    closed_event: bool,
}

impl Harness {
    fn drain(&mut self, c: &mut Classifier) {
        let mut buf = [0u8; TRANSMIT_BUFFER_LEN];
        while let Some(t) = c.poll_transmit(&mut buf) {
            assert!(!self.closed_event, "transmit after Closed");
            assert!(t.len <= TRANSMIT_BUFFER_LEN);
            assert!(self.opened.contains(&t.socket), "transmit on an unknown socket");
            assert!(!self.closed.contains(&t.socket), "transmit on a closed socket");
            let bytes = buf[..t.len].to_vec();
            let msg = Message::decode(&bytes).expect("the classifier sends valid STUN");
            assert_eq!(msg.class(), Class::Request);
            self.transmits += 1;
            if self.sent.len() > 64 {
                self.sent.remove(0);
            }
            self.sent.push((t.socket, t.destination, bytes));
        }
        while let Some(op) = c.poll_socket_op() {
            match op {
                SocketOp::Bind { socket, local, .. } => {
                    assert!(!self.closed_event, "bind after Closed");
                    assert!(self.opened.insert(socket), "socket id reused");
                    self.unbound.push((socket, local));
                }
                SocketOp::Close { socket } => {
                    assert!(self.opened.contains(&socket), "close of an unknown socket");
                    assert!(self.closed.insert(socket), "socket {socket:?} closed twice");
                    assert!(!self.bind_failed.contains(&socket), "close of a socket whose bind failed");
                    self.unbound.retain(|(s, _)| *s != socket);
                    self.bound.remove(&socket);
                }
                other => panic!("unexpected intent {other:?}"),
            }
        }
        while let Some(ev) = c.poll_event() {
            assert!(!self.closed_event, "event after Closed: {ev:?}");
            match ev {
                ClassifierEvent::Done(report) => {
                    self.done += 1;
                    assert_eq!(self.done, 1, "two Done reports");
                    assert!(report.servers_agreeing <= 3);
                }
                ClassifierEvent::Closed => {
                    self.closed_event = true;
                }
            }
        }
        if self.closed_event {
            assert_eq!(c.poll_timeout(), None, "timer after Closed");
            assert!(self.unbound.is_empty() && self.bound.is_empty(), "socket left open after Closed");
        }
    }

    fn bind(&mut self, c: &mut Classifier, which: u8, ok: bool, port: Option<u16>) {
        if self.unbound.is_empty() {
            return;
        }
        let (socket, local) = self.unbound.remove(usize::from(which) % self.unbound.len());
        if ok {
            let port = match (port, local.port()) {
                (Some(p), _) if p != 0 => p,
                (_, 0) => 40_000 + u16::from(which),
                (_, p) => p,
            };
            let ip = if local.ip().is_unspecified() {
                match local.ip() {
                    IpAddr::V4(_) => "10.0.0.2".parse().unwrap(),
                    IpAddr::V6(_) => "2001:db8::9".parse().unwrap(),
                }
            } else {
                local.ip()
            };
            let local = SocketAddr::new(ip, port);
            self.bound.insert(socket, local);
            c.handle_socket_result(self.now, socket, SocketOutcome::Bound { local });
        } else {
            self.bind_failed.insert(socket);
            c.handle_socket_result(
                self.now,
                socket,
                SocketOutcome::Failed { op: OpKind::Bind, destination: None, error: IoError::AddrInUse },
            );
        }
    }

    /// Advances to `to` and fires the timer if due; checks the next deadline is in the future.
    fn advance(&mut self, c: &mut Classifier, to: Instant, force: bool) {
        assert!(to >= self.now);
        self.now = to;
        if force || c.poll_timeout().is_some_and(|d| d <= self.now) {
            c.handle_timeout(self.now);
            if let Some(d) = c.poll_timeout() {
                assert!(d > self.now, "poll_timeout {d:?} not after the time just handled {:?}", self.now);
            }
        }
    }
}

fn reply(
    req: &[u8],
    mapped: Option<SocketAddr>,
    legacy_mapped: bool,
    other: Option<SocketAddr>,
    error: Option<u16>,
    fingerprint: bool,
) -> Vec<u8> {
    let msg = Message::decode(req).unwrap();
    let header = Header {
        class: if error.is_some() { Class::Error } else { Class::Success },
        ..*msg.header()
    };
    let mut buf = vec![0u8; 512];
    let mut w = MessageWriter::new(&mut buf, header).unwrap();
    if let Some(m) = mapped {
        let _ = if legacy_mapped {
            w.add(&Attribute::MappedAddress(m))
        } else {
            w.add(&Attribute::XorMappedAddress(m))
        };
    }
    if let Some(o) = other {
        let _ = w.add(&Attribute::OtherAddress(o));
    }
    if let Some(code) = error {
        let _ = w.add(&Attribute::ErrorCode(ErrorCode { code: 300 + code % 400, reason: "x" }));
    }
    if fingerprint {
        let _ = w.add_fingerprint();
    }
    let n = w.finish();
    buf.truncate(n);
    buf
}

fuzz_target!(|input: Input| {
    let s = &input.setup;
    let n_servers = usize::from(s.servers % 4);
    let primaries = ["192.0.2.1:3478", "192.0.2.11:3478", "192.0.2.21:3478"];
    let servers: Vec<ServerSpec> = (0..n_servers)
        .map(|i| ServerSpec {
            id: if s.duplicate_ids { 7 } else { i as u64 + 1 },
            primary: primaries[i].parse().unwrap(),
            alternate: s.alternates[i].map(addr),
        })
        .collect();
    let local_ip: IpAddr = match s.local % 3 {
        0 => "10.0.0.2",
        1 => "0.0.0.0",
        _ => "2001:db8::9",
    }
    .parse()
    .unwrap();
    let allocation_probes = u16::from(s.allocation_probes % 17);
    let config = ClassifierConfig {
        local_ip,
        parallel_servers: usize::from(s.parallel % 5),
        probe_retransmit: Retransmit::Rfc5389 {
            rto: Duration::from_millis(100),
            transmissions: u32::from(s.transmissions % 5),
            last_wait: 4,
            max_rto: Duration::from_millis(400),
        },
        filter_transmissions: u32::from(s.filter_transmissions % 5),
        deadline: Duration::from_millis(u64::from(s.deadline_ms % 10_000)),
        allocation_probes,
        ..ClassifierConfig::default()
    };
    let runs = n_servers.min(config.parallel_servers.max(1));
    let probe_bound = 6 * runs + 2 * usize::from(allocation_probes);
    let mut c = Classifier::new(config, &servers, s.seed);
    let mut h = Harness::default();
    let mut started = false;
    let mut closed_by_us = false;
    if !s.start_late {
        c.start(h.now);
        started = true;
    }
    h.drain(&mut c);
    for op in input.ops.into_iter().take(300) {
        match op {
            Op::Bind { which, ok, port } => h.bind(&mut c, which, ok, port),
            Op::Reply { which, from, mapped, other, legacy_mapped, error, flip, fingerprint } => {
                if h.sent.is_empty() {
                    continue;
                }
                let (socket, destination, req) = h.sent[usize::from(which) % h.sent.len()].clone();
                let local = h.bound.get(&socket).copied();
                let mapped = mapped.and_then(|m| match m {
                    MappedChoice::Local => local,
                    MappedChoice::Pool(i, p) => Some(SocketAddr::new(addr(i).ip(), p)),
                    MappedChoice::Nat(p) => Some(SocketAddr::new("203.0.113.10".parse().unwrap(), p)),
                });
                let mut bytes = reply(&req, mapped, legacy_mapped, other.map(addr), error, fingerprint);
                if let Some((at, x)) = flip {
                    let n = bytes.len();
                    bytes[usize::from(at) % n] ^= x;
                }
                let from = match from {
                    Source::Destination => destination,
                    Source::Pool(i) => addr(i),
                };
                let _ = c.handle_datagram(h.now, socket, from, &bytes);
            }
            Op::Raw { socket, from, data } => {
                let ids: Vec<SocketId> = h.opened.iter().copied().collect();
                let s = if ids.is_empty() { SocketId(0) } else { ids[usize::from(socket) % ids.len()] };
                let _ = c.handle_datagram(h.now, s, addr(from), &data);
            }
            Op::Advance { ms } => {
                let to = h.now.saturating_add(Duration::from_millis(u64::from(ms % 4000)));
                h.advance(&mut c, to, false);
            }
            Op::Tick { ms } => {
                let to = h.now.saturating_add(Duration::from_millis(u64::from(ms)));
                h.advance(&mut c, to, true);
            }
            Op::SendFailed { socket } => {
                let ids: Vec<SocketId> = h.bound.keys().copied().collect();
                if !ids.is_empty() {
                    let s = ids[usize::from(socket) % ids.len()];
                    c.handle_socket_result(
                        h.now,
                        s,
                        SocketOutcome::Failed { op: OpKind::Send, destination: Some(addr(0)), error: IoError::WouldBlock },
                    );
                }
            }
            Op::Start => {
                c.start(h.now);
                started = true;
            }
            Op::Close => {
                c.close(h.now);
                closed_by_us = true;
            }
        }
        h.drain(&mut c);
        assert!(c.probes().len() <= probe_bound, "{} probes > {probe_bound}", c.probes().len());
    }
    // Let it finish on its own: answer every bind, fire every timer. It must report once and close.
    if !started {
        c.start(h.now);
        h.drain(&mut c);
    }
    for _ in 0..10_000 {
        if h.closed_event {
            break;
        }
        while !h.unbound.is_empty() {
            h.bind(&mut c, 0, true, None);
            h.drain(&mut c);
        }
        match c.poll_timeout() {
            Some(d) => {
                let to = d.max(h.now);
                h.advance(&mut c, to, true);
            }
            None => break,
        }
        h.drain(&mut c);
        assert!(c.probes().len() <= probe_bound);
    }
    assert!(h.closed_event, "never Closed (done {}, closed by us {closed_by_us})", h.done);
    if !closed_by_us {
        assert_eq!(h.done, 1, "Closed without a Done report");
    }
    assert!(h.done <= 1);
    // Every socket that was bound (or never answered) was closed exactly once.
    for s in &h.opened {
        if !h.bind_failed.contains(s) {
            assert!(h.closed.contains(s), "socket {s:?} never closed");
        }
    }
    // Closing again changes nothing.
    c.close(h.now);
    h.drain(&mut c);
    assert_eq!(c.poll_timeout(), None);
});

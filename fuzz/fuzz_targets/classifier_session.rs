//! Stateful fuzzing of the NAT classifier machine: well-formed Binding responses to its own requests
//! (fuzzer-chosen mapped address, source and OTHER-ADDRESS), mutated and raw datagrams, bind
//! outcomes, send failures and time steps, driven through the contract checker. Checks besides the
//! contract: exactly one `Done` (unless closed first), then `Closed`; ids never reused, no close of
//! a socket whose bind failed, every socket closed by `Closed`; probes bounded.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2pd_nat::{Classifier, ClassifierConfig, ClassifierEvent, ServerSpec};
use p2pd_proto::client::Retransmit;
use p2pd_proto::stun::{Attribute, Class, ErrorCode, Header, Message, MessageWriter};
use p2pd_proto::testing::{pick, Driven};
use p2pd_proto::{IoError, OpKind, SocketId, SocketOp, SocketOutcome};

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
    budget_ms: u16,
    filter_attempts: u8,
    local: u8,
    start_late: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    setup: Setup,
    ops: Vec<Op>,
}

/// What the target knows of the classifier beyond the contract (the checker sees the rest).
#[derive(Default)]
struct Model {
    /// Sockets with a Bind intent not yet answered (id, requested local).
    unbound: Vec<(SocketId, SocketAddr)>,
    /// Bound sockets and their local address.
    bound: BTreeMap<SocketId, SocketAddr>,
    /// Every socket that ever had a Bind intent.
    opened: BTreeSet<SocketId>,
    /// Sockets whose bind we failed (the OS closed them; no Close intent expected).
    bind_failed: BTreeSet<SocketId>,
    sent: Vec<(SocketId, SocketAddr, Vec<u8>)>,
    done: usize,
}

impl Model {
    /// Machine-specific checks on what the last input produced.
    fn check(&mut self, d: &mut Driven<Classifier>) {
        let out = d.take();
        for (t, bytes) in out.transmits {
            assert!(self.opened.contains(&t.socket), "transmit on an unknown socket");
            let msg = Message::decode(&bytes).expect("the classifier sends valid STUN");
            assert_eq!(msg.class(), Class::Request);
            if self.sent.len() > 64 {
                self.sent.remove(0);
            }
            self.sent.push((t.socket, t.destination, bytes));
        }
        for op in out.ops {
            match op {
                SocketOp::Bind { socket, local, .. } => {
                    assert!(self.opened.insert(socket), "socket id reused");
                    self.unbound.push((socket, local));
                }
                SocketOp::Close { socket } => {
                    assert!(!self.bind_failed.contains(&socket), "close of a socket whose bind failed");
                    self.unbound.retain(|(s, _)| *s != socket);
                    self.bound.remove(&socket);
                }
                other => panic!("unexpected intent {other:?}"),
            }
        }
        for ev in out.events {
            match ev {
                ClassifierEvent::Done(report) => {
                    self.done += 1;
                    assert_eq!(self.done, 1, "two Done reports");
                    assert!(report.servers_agreeing <= 3);
                }
                ClassifierEvent::Closed => {
                    assert!(self.unbound.is_empty() && self.bound.is_empty(), "socket left open after Closed");
                }
            }
        }
    }

    fn bind(&mut self, d: &mut Driven<Classifier>, which: u8, ok: bool, port: Option<u16>) {
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
            d.outcome(socket, SocketOutcome::Bound { local });
        } else {
            self.bind_failed.insert(socket);
            d.outcome(socket, SocketOutcome::Failed { op: OpKind::Bind, destination: None, error: IoError::AddrInUse });
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
        budget: Duration::from_millis(u64::from(s.budget_ms % 10_000)),
        filter_attempts: u32::from(s.filter_attempts % 5),
        allocation_probes,
        ..ClassifierConfig::default()
    };
    let runs = n_servers.min(config.parallel_servers.max(1));
    // Six behaviour probes per server, each filtering test repeated up to `filter_attempts - 1`
    // times, and two allocation rounds.
    let repeats = 2 * (config.filter_attempts.max(1) as usize - 1);
    let probe_bound = (6 + repeats) * runs + 2 * usize::from(allocation_probes);
    let c = Classifier::new(config, &servers, s.seed);
    let mut d = Driven::new("classifier", c, |e| matches!(e, ClassifierEvent::Closed));
    let mut m = Model::default();
    let mut started = false;
    let mut closed_by_us = false;
    if !s.start_late {
        d.input(|c, now| c.start(now));
        started = true;
    }
    d.drain();
    m.check(&mut d);
    for op in input.ops.into_iter().take(300) {
        match op {
            Op::Bind { which, ok, port } => m.bind(&mut d, which, ok, port),
            Op::Reply { which, from, mapped, other, legacy_mapped, error, flip, fingerprint } => {
                if m.sent.is_empty() {
                    continue;
                }
                let (socket, destination, req) = m.sent[usize::from(which) % m.sent.len()].clone();
                let local = m.bound.get(&socket).copied();
                let mapped = mapped.and_then(|mc| match mc {
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
                let _ = d.datagram(socket, from, &bytes);
            }
            Op::Raw { socket, from, data } => {
                let ids: Vec<SocketId> = m.opened.iter().copied().collect();
                let s = pick(&ids, socket).unwrap_or(SocketId(0));
                let _ = d.datagram(s, addr(from), &data);
            }
            Op::Advance { ms } => d.advance(Duration::from_millis(u64::from(ms % 4000))),
            Op::Tick { ms } => {
                d.now = d.now.saturating_add(Duration::from_millis(u64::from(ms)));
                d.fire();
            }
            Op::SendFailed { socket } => {
                let ids: Vec<SocketId> = m.bound.keys().copied().collect();
                if let Some(s) = pick(&ids, socket) {
                    d.outcome(s, SocketOutcome::Failed { op: OpKind::Send, destination: Some(addr(0)), error: IoError::WouldBlock });
                }
            }
            Op::Start => {
                d.input(|c, now| c.start(now));
                started = true;
            }
            Op::Close => {
                d.input(|c, now| c.close(now));
                closed_by_us = true;
            }
        }
        m.check(&mut d);
        assert!(d.machine.probes().len() <= probe_bound, "{} probes > {probe_bound}", d.machine.probes().len());
    }
    // Let it finish on its own: answer every bind, fire every timer. It must report once and close.
    if !started {
        d.input(|c, now| c.start(now));
        m.check(&mut d);
    }
    for _ in 0..10_000 {
        if d.checker.finished() {
            break;
        }
        while !m.unbound.is_empty() {
            m.bind(&mut d, 0, true, None);
            m.check(&mut d);
        }
        match d.deadline() {
            Some(t) => {
                d.now = d.now.max(t);
                d.fire();
            }
            None => break,
        }
        m.check(&mut d);
        assert!(d.machine.probes().len() <= probe_bound);
    }
    assert!(d.checker.finished(), "never Closed (done {}, closed by us {closed_by_us})", m.done);
    if !closed_by_us {
        assert_eq!(m.done, 1, "Closed without a Done report");
    }
    assert!(m.done <= 1);
    // Every socket that was bound (or never answered) was closed exactly once.
    d.checker.assert_all_closed();
    // Closing again changes nothing.
    d.input(|c, now| c.close(now));
    m.check(&mut d);
});

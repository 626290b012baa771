//! Stateful fuzzing of the SNTP client machine: arbitrary datagrams, replies built from fuzz bytes
//! around the right originate timestamp, socket outcomes, time steps and closes, driven through the
//! contract checker. Checks besides the contract: bounded queries, valid requests, one Finished,
//! samples only before it, the caller's socket never closed.
#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2pd_proto::testing::{Driven, Output};
use p2pd_proto::{Instant, IoError, OpKind, SocketId, SocketOp, SocketOutcome, Verdict};
use p2pd_punch::sntp::packet::{unix_nanos_to_ntp, NtpPacket, PACKET_LEN};
use p2pd_punch::sntp::{SntpClient, SntpConfig, SntpEvent};

const EPOCH_NS: u64 = 1_700_000_000_000_000_000;

fn server(i: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1 + i % 4], 123))
}

/// A reply's fields, from fuzz bytes; the originate timestamp is the query's.
#[derive(Arbitrary, Debug)]
struct Reply {
    /// Force the fields a server that is up would send (mode 4, v4, stratum 1..=15, small root
    /// distance), so the fuzzer reaches accepted samples often.
    sane: bool,
    leap: u8,
    version: u8,
    mode: u8,
    stratum: u8,
    root_delay: u32,
    root_dispersion: u32,
    reference_id: [u8; 4],
    offset_ms: i32,
    hold_us: u32,
    zero_receive: bool,
    zero_transmit: bool,
    raw_times: Option<(u64, u64)>,
    flip: Option<(u8, u8)>,
    extra: u8,
}

#[derive(Arbitrary, Debug)]
enum Op {
    BindResult { ok: bool },
    Reply { which: u8, from: u8, wrong_socket: bool, reply: Reply },
    Raw { from: u8, data: Vec<u8> },
    Advance { ms: u16 },
    SendFailed,
    Close,
}

#[derive(Arbitrary, Debug)]
struct Input {
    seed: u64,
    servers: u8,
    samples: u8,
    attempts: u8,
    callers_socket: bool,
    ops: Vec<Op>,
}

/// What the target knows of the client beyond the contract (the checker sees the rest).
struct Model {
    socket: SocketId,
    owned: bool,
    /// An owned socket whose bind failed (so there is nothing to close).
    bind_failed: bool,
    bind_answered: bool,
    /// (destination, nonce, sent at)
    sent: Vec<(SocketAddr, u64, Instant)>,
    max_sends: usize,
    finished: usize,
    closes: usize,
}

impl Model {
    /// Machine-specific checks on what one input produced.
    fn check(&mut self, d: &mut Driven<SntpClient>) {
        let now = d.now;
        for out in d.take().into_outputs() {
            match out {
                Output::Transmit(t, bytes) => {
                    assert_eq!(self.finished, 0, "transmit after Finished");
                    assert_eq!(t.socket, self.socket);
                    assert_eq!(t.len, PACKET_LEN);
                    let req = NtpPacket::decode(&bytes).unwrap();
                    assert_eq!((req.mode, req.version, req.leap), (3, 4, 0));
                    assert_ne!(req.transmit_ts, 0);
                    assert_eq!(req.originate_ts | req.receive_ts | req.reference_ts, 0);
                    self.sent.push((t.destination, req.transmit_ts, now));
                    assert!(self.sent.len() <= self.max_sends, "more queries than configured");
                }
                Output::Op(SocketOp::Close { socket }) => {
                    assert!(self.owned, "closed the caller's socket");
                    assert_eq!(socket, self.socket);
                    self.closes += 1;
                }
                Output::Op(other) => panic!("unexpected intent {other:?}"),
                Output::Event(SntpEvent::Finished(result)) => {
                    self.finished += 1;
                    assert_eq!(self.finished, 1, "two Finished events");
                    if let Ok(est) = result {
                        assert!(est.samples >= 1);
                        assert!(est.uncertainty_ns >= est.delay_ns / 2);
                    }
                }
                Output::Event(SntpEvent::Sample(s)) => {
                    assert_eq!(self.finished, 0, "sample after Finished");
                    assert!(s.uncertainty_ns >= s.delay_ns / 2);
                }
                Output::Event(_) => {}
            }
        }
        if self.finished > 0 {
            assert_eq!(d.deadline(), None, "timer after Finished");
        }
    }

    fn wall(t: Instant) -> i128 {
        i128::from(EPOCH_NS) + i128::from(t.as_nanos())
    }

    fn build(&self, which: u8, r: &Reply) -> Option<(SocketAddr, Vec<u8>)> {
        if self.sent.is_empty() {
            return None;
        }
        let (dest, nonce, sent_at) = self.sent[usize::from(which) % self.sent.len()];
        let at_server = Self::wall(sent_at) + i128::from(r.offset_ms) * 1_000_000;
        let (t2, t3) = match r.raw_times {
            Some(raw) => raw,
            None => (
                unix_nanos_to_ntp(at_server),
                unix_nanos_to_ntp(at_server + i128::from(r.hold_us) * 1000),
            ),
        };
        let mut p = NtpPacket {
            leap: r.leap % 4,
            version: r.version % 8,
            mode: r.mode % 8,
            stratum: r.stratum,
            poll: 0,
            precision: -20,
            root_delay: r.root_delay,
            root_dispersion: r.root_dispersion,
            reference_id: r.reference_id,
            reference_ts: t2,
            originate_ts: nonce,
            receive_ts: if r.zero_receive { 0 } else { t2 },
            transmit_ts: if r.zero_transmit { 0 } else { t3 },
        };
        if r.sane {
            p.leap = r.leap % 3;
            p.version = 3 + r.version % 2;
            p.mode = 4;
            p.stratum = 1 + r.stratum % 15;
            p.root_delay %= 0x8000;
            p.root_dispersion %= 0x8000;
        }
        let mut out = vec![0u8; PACKET_LEN + usize::from(r.extra % 24)];
        p.encode(&mut out).unwrap();
        if let Some((at, x)) = r.flip {
            let n = out.len();
            out[usize::from(at) % n] ^= x;
        }
        Some((dest, out))
    }
}

fuzz_target!(|input: Input| {
    let servers: Vec<SocketAddr> = (0..1 + input.servers % 4).map(server).collect();
    let samples = 1 + u32::from(input.samples % 4);
    let attempts = 1 + u32::from(input.attempts % 3);
    let config = SntpConfig {
        samples_per_server: samples,
        sample_spacing: Duration::from_millis(200),
        reply_timeout: Duration::from_millis(100),
        attempts_per_sample: attempts,
        ..SntpConfig::new(servers.clone(), EPOCH_NS)
    };
    let client = SntpClient::new(config, input.seed).unwrap();
    let mut d = Driven::new("sntp client", client, |e| matches!(e, SntpEvent::Closed));
    let local: SocketAddr = "10.0.0.2:0".parse().unwrap();
    let (socket, owned) = if input.callers_socket {
        d.input(|c, now| c.use_socket(now, SocketId(77), local)).unwrap();
        (SocketId(77), false)
    } else {
        let socket = d.input(|c, now| c.open_socket(now, local, Default::default())).unwrap();
        assert!(matches!(d.take_ops()[..], [SocketOp::Bind { socket: s, .. }] if s == socket));
        (socket, true)
    };
    let mut m = Model {
        socket,
        owned,
        bind_failed: false,
        bind_answered: !owned,
        sent: Vec::new(),
        max_sends: servers.len() * samples as usize * attempts as usize,
        finished: 0,
        closes: 0,
    };
    m.check(&mut d);
    for op in input.ops.into_iter().take(256) {
        match op {
            Op::BindResult { ok } => {
                let outcome = if ok {
                    SocketOutcome::Bound { local: "10.0.0.2:40000".parse().unwrap() }
                } else {
                    SocketOutcome::Failed { op: OpKind::Bind, destination: None, error: IoError::AddrInUse }
                };
                d.outcome(m.socket, outcome);
                if !m.bind_answered && !d.checker.finished() {
                    m.bind_answered = true;
                    m.bind_failed = !ok;
                }
            }
            Op::Reply { which, from, wrong_socket, reply } => {
                if let Some((dest, bytes)) = m.build(which, &reply) {
                    let from = if from % 4 == 0 { server(from / 4) } else { dest };
                    let socket = if wrong_socket { SocketId(999) } else { m.socket };
                    let v = d.datagram(socket, from, &bytes);
                    if wrong_socket {
                        assert!(matches!(v, Verdict::Dropped(_)));
                    }
                }
            }
            Op::Raw { from, data } => {
                let v = d.datagram(m.socket, server(from), &data);
                if data.len() < PACKET_LEN {
                    assert!(matches!(v, Verdict::Dropped(_)));
                }
            }
            Op::Advance { ms } => d.advance(Duration::from_millis(u64::from(ms))),
            Op::SendFailed => d.outcome(
                m.socket,
                SocketOutcome::Failed { op: OpKind::Send, destination: Some(server(0)), error: IoError::WouldBlock },
            ),
            Op::Close => d.input(|c, now| c.close(now)),
        }
        m.check(&mut d);
    }
    // Run the clock out: the machine must finish on its own (every query gives up eventually).
    for _ in 0..1000 {
        let Some(t) = d.deadline() else { break };
        d.advance_to(t);
        m.check(&mut d);
    }
    d.input(|c, now| c.close(now));
    d.input(|c, now| c.close(now));
    m.check(&mut d);
    assert!(d.checker.finished());
    assert_eq!(m.finished, 1, "exactly one Finished");
    // An owned socket is closed once (never if its bind failed), the caller's never.
    d.checker.assert_all_closed();
    assert_eq!(m.closes, usize::from(m.owned && !m.bind_failed), "one close intent for an owned socket");
});

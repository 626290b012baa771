//! Stateful fuzzing of the SNTP client machine: arbitrary datagrams, replies built from fuzz bytes
//! around the right originate timestamp, socket outcomes, time steps and closes. Checks the
//! contract's invariants: no panic, bounded queries, valid requests, one Finished, one Close,
//! nothing after Closed.
#![no_main]

use p2pd_proto::Machine;
use std::net::SocketAddr;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2pd_proto::{
    Instant, IoError, OpKind, SocketId, SocketOp, SocketOutcome, Verdict, TRANSMIT_BUFFER_LEN,
};
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

struct Harness {
    client: SntpClient,
    now: Instant,
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
    closed_event: bool,
}

impl Harness {
    fn drain(&mut self) {
        let mut buf = [0u8; TRANSMIT_BUFFER_LEN];
        while let Some(t) = self.client.poll_transmit(&mut buf) {
            assert!(!self.closed_event, "transmit after Closed");
            assert_eq!(self.finished, 0, "transmit after Finished");
            assert_eq!(t.socket, self.socket);
            assert_eq!(t.len, PACKET_LEN);
            let req = NtpPacket::decode(&buf[..t.len]).unwrap();
            assert_eq!((req.mode, req.version, req.leap), (3, 4, 0));
            assert_ne!(req.transmit_ts, 0);
            assert_eq!(req.originate_ts | req.receive_ts | req.reference_ts, 0);
            self.sent.push((t.destination, req.transmit_ts, self.now));
            assert!(self.sent.len() <= self.max_sends, "more queries than configured");
        }
        while let Some(op) = self.client.poll_socket_op() {
            match op {
                SocketOp::Bind { socket, .. } => {
                    panic!("second bind intent for {socket:?}");
                }
                SocketOp::Close { socket } => {
                    assert!(self.owned, "closed the caller's socket");
                    assert_eq!(socket, self.socket);
                    self.closes += 1;
                    assert_eq!(self.closes, 1, "socket closed twice");
                }
                other => panic!("unexpected intent {other:?}"),
            }
        }
        while let Some(ev) = self.client.poll_event() {
            assert!(!self.closed_event, "event after Closed: {ev:?}");
            match ev {
                SntpEvent::Finished(result) => {
                    self.finished += 1;
                    assert_eq!(self.finished, 1, "two Finished events");
                    if let Ok(est) = result {
                        assert!(est.samples >= 1);
                        assert!(est.uncertainty_ns >= est.delay_ns / 2);
                    }
                }
                SntpEvent::Sample(s) => {
                    assert_eq!(self.finished, 0, "sample after Finished");
                    assert!(s.uncertainty_ns >= s.delay_ns / 2);
                }
                SntpEvent::Closed => self.closed_event = true,
                _ => {}
            }
        }
        if self.closed_event || self.finished > 0 {
            assert_eq!(self.client.poll_timeout(), None, "timer after the end");
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
    let mut client = SntpClient::new(config, input.seed).unwrap();
    let local: SocketAddr = "10.0.0.2:0".parse().unwrap();
    let (socket, owned) = if input.callers_socket {
        client.use_socket(Instant::ZERO, SocketId(77), local).unwrap();
        (SocketId(77), false)
    } else {
        let socket = client.open_socket(Instant::ZERO, local, Default::default()).unwrap();
        assert!(matches!(client.poll_socket_op(), Some(SocketOp::Bind { socket: s, .. }) if s == socket));
        (socket, true)
    };
    let mut h = Harness {
        client,
        now: Instant::ZERO,
        socket,
        owned,
        bind_failed: false,
        bind_answered: !owned,
        sent: Vec::new(),
        max_sends: servers.len() * samples as usize * attempts as usize,
        finished: 0,
        closes: 0,
        closed_event: false,
    };
    h.drain();
    for op in input.ops.into_iter().take(256) {
        let now = h.now;
        match op {
            Op::BindResult { ok } => {
                let outcome = if ok {
                    SocketOutcome::Bound { local: "10.0.0.2:40000".parse().unwrap() }
                } else {
                    SocketOutcome::Failed { op: OpKind::Bind, destination: None, error: IoError::AddrInUse }
                };
                h.client.handle_socket_result(now, h.socket, outcome);
                if !h.bind_answered && !h.closed_event {
                    h.bind_answered = true;
                    h.bind_failed = !ok;
                }
            }
            Op::Reply { which, from, wrong_socket, reply } => {
                if let Some((dest, bytes)) = h.build(which, &reply) {
                    let from = if from % 4 == 0 { server(from / 4) } else { dest };
                    let socket = if wrong_socket { SocketId(999) } else { h.socket };
                    let v = h.client.handle_datagram(now, socket, from, &bytes);
                    if wrong_socket {
                        assert!(matches!(v, Verdict::Dropped(_)));
                    }
                }
            }
            Op::Raw { from, data } => {
                let v = h.client.handle_datagram(now, h.socket, server(from), &data);
                if data.len() < PACKET_LEN {
                    assert!(matches!(v, Verdict::Dropped(_)));
                }
            }
            Op::Advance { ms } => {
                h.now = now.saturating_add(Duration::from_millis(u64::from(ms)));
                if h.client.poll_timeout().is_some_and(|d| d <= h.now) {
                    h.client.handle_timeout(h.now);
                }
            }
            Op::SendFailed => h.client.handle_socket_result(
                now,
                h.socket,
                SocketOutcome::Failed {
                    op: OpKind::Send,
                    destination: Some(server(0)),
                    error: IoError::WouldBlock,
                },
            ),
            Op::Close => h.client.close(now),
        }
        h.drain();
    }
    // Run the clock out: the machine must finish on its own (every query gives up eventually).
    for _ in 0..1000 {
        match h.client.poll_timeout() {
            Some(d) => {
                h.now = h.now.max(d);
                h.client.handle_timeout(h.now);
                h.drain();
            }
            None => break,
        }
    }
    h.client.close(h.now);
    h.client.close(h.now);
    h.drain();
    assert!(h.closed_event);
    assert_eq!(h.finished, 1, "exactly one Finished");
    let expected_closes = usize::from(h.owned && !h.bind_failed);
    assert_eq!(h.closes, expected_closes, "one close intent for an owned socket");
    assert_eq!(h.client.poll_timeout(), None);
});

//! Tests of the SNTP machine, driven in memory against fake servers built from the codec
//! (the codec's own tests are in `packet/tests.rs`).

use core::net::SocketAddr;
use core::time::Duration;

use p2pd_proto::stun::DecodeError;
use p2pd_proto::testing::{Driven, Output};
use p2pd_proto::{
    DropReason, Instant, IoError, OpKind, SocketId, SocketOp, SocketOutcome, Verdict,
};
use proptest::prelude::*;

use super::packet::{unix_nanos_to_ntp, KissCode, NtpPacket, RejectReason, PACKET_LEN};
use super::*;

const EPOCH_NS: u64 = 1_700_000_000_000_000_000; // 2023-11-14
const LOCAL: &str = "10.0.0.2:0";
const BOUND: &str = "10.0.0.2:40000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn server(i: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, i], 123))
}

// ---------------------------------------------------------------------------------------------
// A fake server and a harness

/// A server whose clock is `offset_ns` ahead of the client's wall clock, holding requests for
/// `hold_ns` (T3 − T2).
#[derive(Copy, Clone)]
struct FakeServer {
    offset_ns: i128,
    hold_ns: i128,
    stratum: u8,
    leap: u8,
    root_delay: u32,
    root_dispersion: u32,
    kiss: Option<KissCode>,
}

impl FakeServer {
    fn honest(offset_ns: i128) -> Self {
        FakeServer {
            offset_ns,
            hold_ns: 50_000,
            stratum: 2,
            leap: 0,
            root_delay: 0,
            root_dispersion: 0,
            kiss: None,
        }
    }

    /// The reply to `request`, received at client wall time `received` (ns).
    fn reply(&self, request: &[u8], received_wall: i128) -> Vec<u8> {
        let req = NtpPacket::decode(request).unwrap();
        let t2 = received_wall + self.offset_ns;
        let t3 = t2 + self.hold_ns;
        let mut p = NtpPacket {
            leap: self.leap,
            version: req.version,
            mode: 4,
            stratum: self.stratum,
            poll: 4,
            precision: -20,
            root_delay: self.root_delay,
            root_dispersion: self.root_dispersion,
            reference_id: *b"GPS\0",
            reference_ts: unix_nanos_to_ntp(t2 - 1_000_000_000),
            originate_ts: req.transmit_ts,
            receive_ts: unix_nanos_to_ntp(t2),
            transmit_ts: unix_nanos_to_ntp(t3),
        };
        if let Some(code) = self.kiss {
            p.stratum = 0;
            p.reference_id = code.0;
        }
        let mut out = vec![0u8; PACKET_LEN];
        p.encode(&mut out).unwrap();
        out
    }
}

struct Harness {
    /// The client; every input and drain goes through its contract checker.
    d: Driven<SntpClient>,
    now: Instant,
    socket: SocketId,
    /// (destination, bytes, sent at)
    sent: Vec<(SocketAddr, Vec<u8>, Instant)>,
    /// Replies in flight: (arrival, from, bytes).
    pending: Vec<(Instant, SocketAddr, Vec<u8>)>,
    events: Vec<SntpEvent>,
    closes: Vec<SocketId>,
}

fn driven(client: SntpClient) -> Driven<SntpClient> {
    Driven::new("sntp client", client, |e| matches!(e, SntpEvent::Closed))
}

fn config(servers: Vec<SocketAddr>) -> SntpConfig {
    SntpConfig {
        samples_per_server: 3,
        sample_spacing: Duration::from_millis(500),
        reply_timeout: Duration::from_millis(300),
        attempts_per_sample: 2,
        local_error: Duration::ZERO,
        ..SntpConfig::new(servers, EPOCH_NS)
    }
}

impl Harness {
    fn new(config: SntpConfig) -> Self {
        let mut d = driven(SntpClient::new(config, 7).unwrap());
        let socket = d
            .input(|c, now| c.open_socket(now, addr(LOCAL), Default::default()))
            .unwrap();
        assert!(matches!(d.take_ops()[..], [SocketOp::Bind { socket: s, .. }] if s == socket));
        d.outcome(socket, SocketOutcome::Bound { local: addr(BOUND) });
        let mut h = Harness {
            d,
            now: Instant::ZERO,
            socket,
            sent: Vec::new(),
            pending: Vec::new(),
            events: Vec::new(),
            closes: Vec::new(),
        };
        h.drain();
        h
    }

    /// Takes what the last inputs produced (the checker saw it first).
    fn drain(&mut self) {
        for out in self.d.take().into_outputs() {
            match out {
                Output::Transmit(t, bytes) => {
                    assert_eq!(t.socket, self.socket);
                    assert_eq!(t.len, PACKET_LEN);
                    self.sent.push((t.destination, bytes, self.now));
                }
                Output::Op(SocketOp::Close { socket }) => self.closes.push(socket),
                Output::Op(other) => panic!("unexpected intent {other:?}"),
                Output::Event(ev) => self.events.push(ev),
            }
        }
    }

    /// `handle_timeout` at the current time (due or not).
    fn fire(&mut self) {
        self.d.clock(self.now).fire();
        self.drain();
    }

    /// Closes the client at the current time.
    fn close(&mut self) {
        self.d.clock(self.now).input(|c, now| c.close(now));
        self.drain();
    }

    /// Moves time forward by `ms`, firing the timer as often as it falls due.
    fn advance(&mut self, ms: u64) {
        let target = self.now + Duration::from_millis(ms);
        while let Some(d) = self.d.deadline() {
            if d > target {
                break;
            }
            self.now = self.now.max(d);
            self.fire();
        }
        self.now = target;
    }

    fn wall(&self) -> i128 {
        wall_at(self.now)
    }

    /// Schedules the fake server's answer to the `index`-th sent query: it reaches the server
    /// `up_ms` after it was sent and comes back `down_ms` later, from the query's destination.
    fn schedule(&mut self, index: usize, server: FakeServer, up_ms: u64, down_ms: u64) {
        let (dest, req, sent_at) = self.sent[index].clone();
        let at_server = sent_at + Duration::from_millis(up_ms);
        let reply = server.reply(&req, wall_at(at_server));
        let leaves = at_server + Duration::from_nanos(server.hold_ns as u64);
        self.pending
            .push((leaves + Duration::from_millis(down_ms), dest, reply));
    }

    /// Processes the next delivery or timer (deliveries first on a tie); false if there is none.
    fn step(&mut self) -> bool {
        let delivery = self.pending.iter().map(|p| p.0).min();
        let timer = self.d.deadline();
        match (delivery, timer) {
            (Some(d), t) if t.is_none_or(|t| d <= t) => {
                let i = self.pending.iter().position(|p| p.0 == d).unwrap();
                let (at, from, bytes) = self.pending.remove(i);
                self.now = self.now.max(at);
                let _ = self.deliver(from, &bytes);
                true
            }
            (_, Some(t)) => {
                self.now = self.now.max(t);
                self.fire();
                true
            }
            _ => false,
        }
    }

    /// Answers `index` and runs until that answer is delivered; returns its verdict.
    fn answer(&mut self, index: usize, server: FakeServer, up_ms: u64, down_ms: u64) -> Verdict {
        let (dest, req, sent_at) = self.sent[index].clone();
        let at_server = sent_at + Duration::from_millis(up_ms);
        let reply = server.reply(&req, wall_at(at_server));
        let leaves = at_server + Duration::from_nanos(server.hold_ns as u64);
        self.advance_to(leaves + Duration::from_millis(down_ms));
        self.deliver(dest, &reply)
    }

    fn advance_to(&mut self, t: Instant) {
        if t > self.now {
            let ms = (t - self.now).as_millis() as u64;
            self.advance(ms);
            self.now = t;
        }
    }

    fn deliver(&mut self, from: SocketAddr, bytes: &[u8]) -> Verdict {
        self.deliver_on(self.socket, from, bytes)
    }

    fn deliver_on(&mut self, socket: SocketId, from: SocketAddr, bytes: &[u8]) -> Verdict {
        let v = self.d.clock(self.now).datagram(socket, from, bytes);
        self.drain();
        v
    }

    fn finished(&self) -> Option<&Result<ClockEstimate, SntpFailure>> {
        self.events.iter().find_map(|e| match e {
            SntpEvent::Finished(r) => Some(r),
            _ => None,
        })
    }

    fn samples(&self) -> Vec<SntpSample> {
        self.events
            .iter()
            .filter_map(|e| match e {
                SntpEvent::Sample(s) => Some(*s),
                _ => None,
            })
            .collect()
    }

    /// Answers every query as it goes out (or not, if `pick` says `None`), until the machine
    /// finishes.
    fn run_answering(
        &mut self,
        mut pick: impl FnMut(SocketAddr) -> Option<(FakeServer, u64, u64)>,
    ) {
        let mut answered = 0;
        for _ in 0..10_000 {
            while answered < self.sent.len() {
                if let Some((srv, up, down)) = pick(self.sent[answered].0) {
                    self.schedule(answered, srv, up, down);
                }
                answered += 1;
            }
            if self.finished().is_some() || !self.step() {
                return;
            }
        }
        panic!("never finished");
    }
}

fn wall_at(t: Instant) -> i128 {
    i128::from(EPOCH_NS) + i128::from(t.as_nanos())
}

// ---------------------------------------------------------------------------------------------
// The machine

#[test]
fn good_replies_give_the_offset_within_its_uncertainty() {
    let offset = 1_234_567_890i128;
    let mut h = Harness::new(config(vec![server(1)]));
    assert_eq!(
        h.events[0],
        SntpEvent::SocketReady {
            socket: h.socket,
            local: addr(BOUND)
        }
    );
    assert_eq!(
        h.sent.len(),
        1,
        "first query goes out once the socket is bound"
    );
    h.run_answering(|_| Some((FakeServer::honest(offset), 10, 10)));
    let est = h.finished().unwrap().clone().unwrap();
    assert_eq!(est.server, server(1));
    assert_eq!(est.samples, 3);
    assert_eq!(est.stratum, 2);
    // Symmetric 10 ms paths: exact offset; δ = 20 ms.
    assert_eq!(i128::from(est.offset_ns), offset);
    assert_eq!(est.delay_ns, 20_000_000);
    assert_eq!(est.uncertainty_ns, 10_000_001);
    assert_eq!(h.d.machine.stats().queries, 3);
    assert_eq!(h.d.machine.stats().retries, 0);
    assert_eq!(h.d.deadline(), None, "no timer after the end");
    // Samples 500 ms apart (spacing counted from each reply).
    let times: Vec<u64> = h.sent.iter().map(|s| s.2.as_nanos() / 1_000_000).collect();
    assert_eq!(times, vec![0, 520, 1040]);
}

#[test]
fn asymmetric_path_error_stays_within_half_the_delay() {
    let offset = -5_000_000_000i128; // server 5 s behind
    let mut h = Harness::new(config(vec![server(1)]));
    h.run_answering(|_| Some((FakeServer::honest(offset), 40, 4)));
    let est = h.finished().unwrap().clone().unwrap();
    // θ = θ₀ + (a − b)/2 = −5 s + 18 ms.
    assert_eq!(i128::from(est.offset_ns), offset + 18_000_000);
    assert_eq!(est.delay_ns, 44_000_000);
    assert!((i128::from(est.offset_ns) - offset).unsigned_abs() <= u128::from(est.uncertainty_ns));
}

#[test]
fn uncertainty_adds_root_distance_and_local_error() {
    let mut cfg = config(vec![server(1)]);
    cfg.samples_per_server = 1;
    cfg.local_error = Duration::from_millis(2);
    let mut h = Harness::new(cfg);
    let srv = FakeServer {
        root_delay: 0x0000_1000,      // 62.5 ms
        root_dispersion: 0x0000_0800, // 31.25 ms
        ..FakeServer::honest(0)
    };
    h.run_answering(|_| Some((srv, 5, 5)));
    let est = h.finished().unwrap().clone().unwrap();
    assert_eq!(
        est.uncertainty_ns,
        5_000_000 + 31_250_000 + 31_250_000 + 2_000_000 + 1
    );
}

#[test]
fn kiss_of_death_stops_queries_to_that_server() {
    let mut h = Harness::new(config(vec![server(1), server(2)]));
    let deny = FakeServer {
        kiss: Some(KissCode::DENY),
        ..FakeServer::honest(0)
    };
    let rate = FakeServer {
        kiss: Some(KissCode::RATE),
        ..FakeServer::honest(0)
    };
    h.run_answering(|dest| Some((if dest == server(1) { deny } else { rate }, 5, 5)));
    assert_eq!(
        h.finished(),
        Some(&Err(SntpFailure::AllServersRefused {
            kiss_codes: vec![KissCode::DENY, KissCode::RATE]
        }))
    );
    assert_eq!(h.sent.len(), 2, "one query each, nothing after the kiss");
    assert_eq!(h.d.machine.stats().kisses, 2);
}

#[test]
fn a_kiss_from_one_server_leaves_the_others() {
    let mut h = Harness::new(config(vec![server(1), server(2)]));
    let rate = FakeServer {
        kiss: Some(KissCode::RATE),
        ..FakeServer::honest(0)
    };
    h.run_answering(|dest| {
        Some(if dest == server(1) {
            (rate, 5, 5)
        } else {
            (FakeServer::honest(7_000), 5, 5)
        })
    });
    let est = h.finished().unwrap().clone().unwrap();
    assert_eq!(est.server, server(2));
    assert_eq!(est.offset_ns, 7_000);
    assert_eq!(h.sent.iter().filter(|s| s.0 == server(1)).count(), 1);
    assert_eq!(h.sent.iter().filter(|s| s.0 == server(2)).count(), 3);
}

#[test]
fn unsynchronized_server_is_a_typed_failure() {
    for srv in [
        FakeServer {
            leap: 3,
            ..FakeServer::honest(0)
        },
        FakeServer {
            stratum: 16,
            ..FakeServer::honest(0)
        },
    ] {
        let mut h = Harness::new(config(vec![server(1)]));
        h.run_answering(|_| Some((srv, 5, 5)));
        assert_eq!(h.finished(), Some(&Err(SntpFailure::Unsynchronized)));
        assert_eq!(
            h.sent.len(),
            1,
            "an unsynchronised server is not asked again"
        );
    }
}

#[test]
fn wrong_originate_is_dropped_and_the_query_times_out() {
    let mut h = Harness::new(config(vec![server(1)]));
    let (dest, req, _) = h.sent[0].clone();
    let mut reply = FakeServer::honest(0).reply(&req, h.wall());
    reply[24] ^= 1; // originate
    assert_eq!(
        h.deliver(dest, &reply),
        Verdict::Dropped(DropReason::UnknownTransaction)
    );
    assert_eq!(h.d.machine.stats().unknown_originate, 1);
    h.advance(10_000);
    assert_eq!(
        h.finished(),
        Some(&Err(SntpFailure::Timeout { queries: 6 })),
        "3 samples x 2 attempts"
    );
    assert_eq!(h.d.machine.stats().retries, 3);
}

#[test]
fn bad_input_is_counted_and_dropped() {
    let mut h = Harness::new(config(vec![server(1)]));
    let (dest, req, _) = h.sent[0].clone();
    let instant = FakeServer {
        hold_ns: 0,
        ..FakeServer::honest(0)
    };
    let good = instant.reply(&req, h.wall());
    for len in 0..PACKET_LEN {
        assert_eq!(
            h.deliver(dest, &good[..len]),
            Verdict::Dropped(DropReason::Malformed(DecodeError::TooShort))
        );
    }
    let mut client_mode = good.clone();
    client_mode[0] = 0b00_100_011;
    assert_eq!(
        h.deliver(dest, &client_mode),
        Verdict::Dropped(DropReason::Unexpected)
    );
    let mut v2 = good.clone();
    v2[0] = 0b00_010_100;
    assert_eq!(
        h.deliver(dest, &v2),
        Verdict::Dropped(DropReason::Unexpected)
    );
    // The request itself, looped back (its transmit timestamp is the nonce, mode 3).
    assert_eq!(
        h.deliver(dest, &req),
        Verdict::Dropped(DropReason::Unexpected)
    );
    // From the wrong address, then on the wrong socket.
    assert_eq!(
        h.deliver(server(9), &good),
        Verdict::Dropped(DropReason::WrongSource)
    );
    assert_eq!(
        h.deliver_on(SocketId(99), dest, &good),
        Verdict::Dropped(DropReason::UnknownSocket)
    );
    let stats = h.d.machine.stats();
    assert_eq!(stats.too_short, 48);
    assert_eq!(stats.wrong_header, 3);
    assert_eq!(stats.wrong_source, 2);
    // The genuine reply still counts, once.
    assert_eq!(h.deliver(dest, &good), Verdict::Consumed);
    assert_eq!(
        h.deliver(dest, &good),
        Verdict::Dropped(DropReason::Duplicate)
    );
    assert_eq!(h.samples().len(), 1);
}

#[test]
fn zero_transmit_timestamp_is_rejected_and_ends_the_sample() {
    let mut cfg = config(vec![server(1)]);
    cfg.samples_per_server = 1;
    let mut h = Harness::new(cfg);
    let (dest, req, _) = h.sent[0].clone();
    let mut reply = FakeServer::honest(0).reply(&req, h.wall());
    reply[40..48].fill(0);
    assert_eq!(
        h.deliver(dest, &reply),
        Verdict::Dropped(DropReason::Unexpected)
    );
    assert_eq!(
        h.finished(),
        Some(&Err(SntpFailure::BadReplies {
            last: RejectReason::ZeroTransmit
        }))
    );
}

#[test]
fn late_reply_after_a_retry_is_a_sample_with_its_own_send_time() {
    let mut cfg = config(vec![server(1)]);
    cfg.samples_per_server = 1;
    let mut h = Harness::new(cfg);
    h.advance(300); // timeout: retry
    assert_eq!(h.sent.len(), 2);
    assert_ne!(h.sent[0].1, h.sent[1].1, "a retry carries a fresh nonce");
    assert_eq!(h.d.machine.stats().retries, 1);
    // The first attempt's reply arrives 400 ms after it was sent (200 ms each way).
    assert_eq!(
        h.answer(0, FakeServer::honest(3_000_000), 200, 200),
        Verdict::Consumed
    );
    let est = h.finished().unwrap().clone().unwrap();
    assert_eq!(est.delay_ns, 400_000_000);
    assert_eq!(est.offset_ns, 3_000_000);
    // The retry's own reply after the end is dropped, not a second result.
    assert_eq!(
        h.answer(1, FakeServer::honest(3_000_000), 100, 100),
        Verdict::Dropped(DropReason::Unexpected)
    );
    assert_eq!(
        h.events
            .iter()
            .filter(|e| matches!(e, SntpEvent::Finished(_)))
            .count(),
        1
    );
}

#[test]
fn retry_reply_and_late_first_reply_both_count_before_the_end() {
    let mut h = Harness::new(config(vec![server(1)]));
    h.advance(300);
    assert_eq!(h.sent.len(), 2);
    // Retry answered quickly: sample 1 ends, sample 2 is scheduled.
    assert_eq!(h.answer(1, FakeServer::honest(0), 5, 5), Verdict::Consumed);
    // Then the first attempt's reply, very late: still a valid sample with a large δ.
    assert_eq!(
        h.answer(0, FakeServer::honest(0), 300, 300),
        Verdict::Consumed
    );
    assert_eq!(h.samples().len(), 2);
    assert!(h.samples()[1].delay_ns > h.samples()[0].delay_ns);
    h.run_answering(|_| Some((FakeServer::honest(0), 5, 5)));
    let est = h.finished().unwrap().clone().unwrap();
    assert_eq!(est.samples, 4);
    assert_eq!(
        est.delay_ns, 10_000_000,
        "the clock filter keeps the smallest δ"
    );
}

#[test]
fn several_servers_the_smallest_delay_wins() {
    let mut h = Harness::new(config(vec![server(1), server(2), server(3)]));
    assert_eq!(h.sent.len(), 3, "servers are asked in parallel");
    h.run_answering(|dest| {
        let (offset, one_way) = match dest {
            d if d == server(1) => (100_000, 30),
            d if d == server(2) => (200_000, 3),
            _ => (300_000, 12),
        };
        Some((FakeServer::honest(offset), one_way, one_way))
    });
    let est = h.finished().unwrap().clone().unwrap();
    assert_eq!(est.server, server(2));
    assert_eq!(est.offset_ns, 200_000);
    assert_eq!(est.samples, 9);
}

#[test]
fn a_nearby_server_with_a_bad_root_loses_to_a_farther_good_one() {
    let mut h = Harness::new(config(vec![server(1), server(2)]));
    h.run_answering(|dest| {
        Some(if dest == server(1) {
            (
                FakeServer {
                    root_dispersion: 0x0000_4000, // 250 ms
                    ..FakeServer::honest(1)
                },
                1,
                1,
            )
        } else {
            (FakeServer::honest(2), 20, 20)
        })
    });
    assert_eq!(h.finished().unwrap().clone().unwrap().server, server(2));
}

#[test]
fn silent_servers_time_out_after_every_attempt() {
    let mut h = Harness::new(config(vec![server(1), server(2)]));
    h.advance(60_000);
    assert_eq!(
        h.finished(),
        Some(&Err(SntpFailure::Timeout { queries: 12 }))
    );
    // Per server: attempt, retry after 300 ms, give up 300 ms later, next sample 500 ms on.
    let times: Vec<u64> = h
        .sent
        .iter()
        .filter(|s| s.0 == server(1))
        .map(|s| s.2.as_nanos() / 1_000_000)
        .collect();
    assert_eq!(times, vec![0, 300, 1100, 1400, 2200, 2500]);
    assert_eq!(h.d.deadline(), None);
}

#[test]
fn bind_failure_is_a_typed_failure_and_nothing_is_closed() {
    let mut client = driven(SntpClient::new(config(vec![server(1)]), 1).unwrap());
    let s = client
        .input(|c, now| c.open_socket(now, addr(LOCAL), Default::default()))
        .unwrap();
    let _ = client.take_ops();
    client.outcome(
        s,
        SocketOutcome::Failed {
            op: OpKind::Bind,
            destination: None,
            error: IoError::AddrInUse,
        },
    );
    assert_eq!(
        client.take_events(),
        vec![SntpEvent::Finished(Err(SntpFailure::SocketFailed(
            IoError::AddrInUse
        )))]
    );
    client.input(|c, now| c.close(now));
    assert_eq!(client.take_ops(), vec![]);
    assert_eq!(client.take_events(), vec![SntpEvent::Closed]);
    client.checker.assert_all_closed();
}

#[test]
fn close_is_idempotent_and_finishes_first() {
    let mut h = Harness::new(config(vec![server(1)]));
    h.close();
    h.close();
    assert_eq!(h.closes, vec![h.socket]);
    let tail: Vec<_> = h.events.iter().skip(1).cloned().collect();
    assert_eq!(
        tail,
        vec![
            SntpEvent::Finished(Err(SntpFailure::Closed)),
            SntpEvent::Closed
        ]
    );
    assert_eq!(h.d.deadline(), None);
    let (dest, req, _) = h.sent[0].clone();
    let reply = FakeServer::honest(0).reply(&req, h.wall());
    assert_eq!(
        h.deliver(dest, &reply),
        Verdict::Dropped(DropReason::Closed)
    );
    h.fire();
    assert_eq!(h.events.len(), 3, "nothing after Closed");
    assert_eq!(h.sent.len(), 1);
    h.d.checker.assert_all_closed();
}

#[test]
fn a_callers_socket_is_used_at_once_and_never_closed() {
    let mut client = driven(SntpClient::new(config(vec![server(1)]), 1).unwrap());
    client
        .input(|c, now| c.use_socket(now, SocketId(42), addr(BOUND)))
        .unwrap();
    assert_eq!(
        client.input(|c, now| c.use_socket(now, SocketId(43), addr(BOUND))),
        Err(SntpApiError::SocketAlreadySet)
    );
    let (t, _) = client.take_transmits().into_iter().next().unwrap();
    assert_eq!(t.socket, SocketId(42));
    assert_eq!(t.destination, server(1));
    client.input(|c, now| c.close(now));
    assert_eq!(client.take_ops(), vec![]);
}

#[test]
fn api_misuse_is_an_error() {
    let cfg = config(vec![server(1)]);
    /// Spoils one field of a valid configuration.
    type Spoil = fn(&mut SntpConfig);
    let refused: [(Spoil, SntpConfigError); 5] = [
        (|c| c.servers = vec![], SntpConfigError::ServerCount),
        (
            |c| c.servers = vec![server(1); 17],
            SntpConfigError::ServerCount,
        ),
        (|c| c.samples_per_server = 0, SntpConfigError::SampleCount),
        (|c| c.attempts_per_sample = 9, SntpConfigError::AttemptCount),
        (
            |c| c.reply_timeout = Duration::ZERO,
            SntpConfigError::ZeroTimeout,
        ),
    ];
    for (spoil, error) in refused {
        let mut bad = cfg.clone();
        spoil(&mut bad);
        assert_eq!(SntpClient::new(bad, 0).err(), Some(error));
    }
    let mut c = SntpClient::new(cfg, 0).unwrap();
    assert_eq!(
        c.open_socket(Instant::ZERO, addr("[::]:0"), Default::default()),
        Err(SntpApiError::AddressFamilyMismatch)
    );
    c.close(Instant::ZERO);
    assert_eq!(
        c.open_socket(Instant::ZERO, addr(LOCAL), Default::default()),
        Err(SntpApiError::Closed)
    );
}

#[test]
fn the_same_seed_and_inputs_give_the_same_bytes() {
    let run = || {
        let mut h = Harness::new(config(vec![server(1), server(2)]));
        h.run_answering(|d| Some((FakeServer::honest(i128::from(d.port())), 7, 3)));
        (h.sent.clone(), h.events.clone())
    };
    assert_eq!(run(), run());
}

#[test]
fn machine_trait_drives_it() {
    fn poll<M: p2pd_proto::Machine>(m: &mut M) -> Option<Instant> {
        m.poll_timeout()
    }
    let h = Harness::new(config(vec![server(1)]));
    let mut client = h.d.machine;
    assert_eq!(poll(&mut client), Some(Instant::from_millis(300)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the (bounded) path delays and true offset, the estimate is within its uncertainty.
    #[test]
    fn estimate_is_within_uncertainty(
        offset in -100_000_000_000i128..100_000_000_000i128,
        delays in proptest::collection::vec((0u64..400, 0u64..400), 3),
        hold in 0i128..10_000_000,
    ) {
        let mut h = Harness::new(config(vec![server(1)]));
        let srv = FakeServer { hold_ns: hold, ..FakeServer::honest(offset) };
        let mut next = 0;
        h.run_answering(|_| {
            let (up, down) = delays[next % delays.len()];
            next += 1;
            Some((srv, up, down))
        });
        let est = h.finished().unwrap().clone().unwrap();
        let error = (i128::from(est.offset_ns) - offset).unsigned_abs();
        prop_assert!(error <= u128::from(est.uncertainty_ns), "{error} > {}", est.uncertainty_ns);
    }

    /// Random datagrams never panic and never produce a sample.
    #[test]
    fn garbage_is_never_a_sample(data in proptest::collection::vec(any::<u8>(), 0..80)) {
        let mut h = Harness::new(config(vec![server(1)]));
        let v = h.deliver(server(1), &data);
        prop_assert!(matches!(v, Verdict::Dropped(_)));
        prop_assert!(h.samples().is_empty());
    }
}

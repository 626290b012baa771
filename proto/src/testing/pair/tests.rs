//! The in-memory network of [`Pair`] and the single-machine [`Driven`], with real machines and a
//! scripted one.

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::VecDeque;

use super::Pair;
use crate::client::{ClientConfig, ClientEvent, Request, StunClient};
use crate::client_tcp::{
    TcpBinding, TcpBindingConfig, TcpBindingError, TcpBindingEvent, TCP_BINDING_SOCKET,
};
use crate::server::{ServerConfig, StunServer};
use crate::testing::Driven;
use crate::{
    BindOptions, Instant, IoError, Machine, OpKind, SocketId, SocketOp, SocketOutcome, Transmit,
    Transport, Verdict,
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

/// What the scripted machine was given.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Got {
    Datagram(SocketId, SocketAddr, Vec<u8>),
    Stream(SocketId, Vec<u8>),
    Outcome(SocketId, SocketOutcome),
    Timeout(Instant),
}

/// A machine that emits what the test queues and reports every input as an event.
#[derive(Default)]
struct Script {
    transmits: VecDeque<(SocketId, SocketAddr, Vec<u8>)>,
    ops: VecDeque<SocketOp>,
    events: VecDeque<Got>,
    deadline: Option<Instant>,
    /// After a timeout, the next deadline is this much later.
    every: Option<Duration>,
}

impl Script {
    fn send(&mut self, socket: u32, to: &str, data: &[u8]) {
        self.transmits
            .push_back((SocketId(socket), addr(to), data.to_vec()));
    }
}

impl Machine for Script {
    type Event = Got;
    fn handle_datagram(&mut self, _: Instant, s: SocketId, from: SocketAddr, d: &[u8]) -> Verdict {
        self.events.push_back(Got::Datagram(s, from, d.to_vec()));
        Verdict::Consumed
    }
    fn handle_stream(&mut self, _: Instant, s: SocketId, d: &[u8]) -> Verdict {
        self.events.push_back(Got::Stream(s, d.to_vec()));
        Verdict::Consumed
    }
    fn handle_socket_result(&mut self, _: Instant, s: SocketId, outcome: SocketOutcome) {
        self.events.push_back(Got::Outcome(s, outcome));
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.events.push_back(Got::Timeout(now));
        self.deadline = self.every.map(|d| now + d);
    }
    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let (socket, destination, data) = self.transmits.pop_front()?;
        buf[..data.len()].copy_from_slice(&data);
        Some(Transmit {
            socket,
            destination,
            len: data.len(),
        })
    }
    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        self.ops.pop_front()
    }
    fn poll_event(&mut self) -> Option<Got> {
        self.events.pop_front()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
}

fn bind(socket: u32, transport: Transport, local: &str) -> SocketOp {
    SocketOp::Bind {
        socket: SocketId(socket),
        transport,
        local: addr(local),
        options: BindOptions::default(),
    }
}

fn listen(socket: u32) -> SocketOp {
    SocketOp::Listen {
        socket: SocketId(socket),
        backlog: 8,
    }
}

fn accept(listener: u32, socket: u32) -> SocketOp {
    SocketOp::Accept {
        listener: SocketId(listener),
        socket: SocketId(socket),
    }
}

fn connect(socket: u32, remote: &str) -> SocketOp {
    SocketOp::Connect {
        socket: SocketId(socket),
        remote: addr(remote),
    }
}

fn close(socket: u32) -> SocketOp {
    SocketOp::Close {
        socket: SocketId(socket),
    }
}

fn scripts() -> Pair<Script, Script> {
    Pair::new(Script::default(), Script::default())
}

#[test]
fn a_stun_binding_over_udp_maps_the_ephemeral_port_after_one_round_trip() {
    let server = StunServer::new(ServerConfig::single(addr("10.0.0.2:3478"))).unwrap();
    let client = StunClient::new(ClientConfig::default(), 7);
    let mut pair = Pair::new(client, server)
        .latency(Duration::from_millis(30), Duration::from_millis(20))
        .final_events(|e| matches!(e, ClientEvent::Closed), |_| false);
    let socket = pair
        .input_a(|c, now| c.open_socket(now, addr("0.0.0.0:0"), Default::default()))
        .unwrap();
    assert_eq!(pair.a.local_addr(socket), Some(addr("10.0.0.1:49152")));
    pair.input_a(|c, now| c.start(now, Request::binding(socket, addr("10.0.0.2:3478"))))
        .unwrap();
    assert!(pair.drive_until(|p| p
        .a
        .events
        .iter()
        .any(|e| matches!(e, ClientEvent::Transaction(_)))));
    assert_eq!(pair.now(), ms(50), "one round trip");
    let done = pair
        .a
        .take_events()
        .into_iter()
        .find_map(|e| match e {
            ClientEvent::Transaction(t) => Some(t),
            _ => None,
        })
        .unwrap();
    assert_eq!(done.outcome.unwrap().mapped, addr("10.0.0.1:49152"));
    assert_eq!(pair.b.verdicts, vec![Verdict::Consumed]);
    assert_eq!(pair.a.verdicts, vec![Verdict::Consumed]);
    pair.input_a(|c, now| c.close(now));
    pair.input_b(|s, now| s.close(now));
    pair.drive();
    pair.a.checker.assert_all_closed();
    pair.b.checker.assert_all_closed();
    assert_eq!((pair.a.open_sockets(), pair.b.open_sockets()), (0, 0));
}

#[test]
fn a_stun_binding_over_tcp_connects_to_the_listener_and_closes_both_ends() {
    let server =
        StunServer::new(ServerConfig::single(addr("10.0.0.2:3478")).with_tcp(true)).unwrap();
    let config = TcpBindingConfig::new(addr("10.0.0.2:3478"), addr("0.0.0.0:4000"));
    let client = TcpBinding::new(config, 3, Instant::ZERO);
    let mut pair = Pair::new(client, server)
        .latency(Duration::from_millis(5), Duration::from_millis(5))
        .final_events(|e| matches!(e, TcpBindingEvent::Closed { .. }), |_| false);
    pair.drive_until(|p| p.a.checker.finished());
    let events = pair.a.take_events();
    let TcpBindingEvent::Mapped(m) = &events[0] else {
        panic!("{events:?}");
    };
    assert_eq!(m.mapped, addr("10.0.0.1:4000"));
    assert_eq!(m.local, addr("10.0.0.1:4000"));
    assert_eq!(m.rtt, Duration::from_millis(10));
    // The client's close reaches the server as EOF; the server closes its end.
    pair.drive_for(Duration::from_secs(1));
    assert_eq!(pair.b.machine.tcp_connections(), 0);
    assert!(pair
        .b
        .ops
        .iter()
        .any(|op| matches!(op, SocketOp::Accept { .. })));
    pair.input_b(|s, now| s.close(now));
    pair.drive();
    pair.a.checker.assert_all_closed();
    pair.b.checker.assert_all_closed();
}

#[test]
fn a_connect_nobody_listens_to_is_refused_after_a_round_trip() {
    let server = StunServer::new(ServerConfig::single(addr("10.0.0.2:3478"))).unwrap();
    let config = TcpBindingConfig::new(addr("10.0.0.2:3478"), addr("0.0.0.0:0"));
    let client = TcpBinding::new(config, 3, Instant::ZERO);
    let mut pair =
        Pair::new(client, server).latency(Duration::from_millis(7), Duration::from_millis(8));
    pair.drive_until(|p| !p.a.events.is_empty());
    assert_eq!(pair.now(), ms(15));
    assert_eq!(
        pair.a.events[0],
        TcpBindingEvent::Failed {
            reason: TcpBindingError::ConnectFailed(IoError::ConnectionRefused)
        }
    );
}

#[test]
fn datagrams_reach_the_socket_on_their_port_or_are_dropped() {
    let mut pair = scripts();
    pair.input_a(|m, _| m.ops.push_back(bind(1, Transport::Udp, "0.0.0.0:5000")));
    pair.input_b(|m, _| m.ops.push_back(bind(7, Transport::Udp, "10.0.0.2:6000")));
    pair.input_a(|m, _| {
        m.send(1, "10.0.0.2:6000", b"hello");
        m.send(1, "10.0.0.2:6001", b"nobody");
        m.send(1, "192.0.2.9:6000", b"elsewhere");
    });
    pair.drive();
    assert_eq!(
        pair.b.take_events(),
        vec![
            Got::Outcome(
                SocketId(7),
                SocketOutcome::Bound {
                    local: addr("10.0.0.2:6000")
                }
            ),
            Got::Datagram(SocketId(7), addr("10.0.0.1:5000"), b"hello".to_vec()),
        ]
    );
    assert_eq!(pair.dropped(), 2);
}

#[test]
fn a_bind_on_a_foreign_ip_or_a_port_in_use_fails() {
    let mut pair = scripts();
    pair.input_a(|m, _| {
        m.ops.push_back(bind(1, Transport::Tcp, "0.0.0.0:0"));
        m.ops.push_back(bind(2, Transport::Tcp, "10.0.0.1:49152"));
        m.ops.push_back(bind(3, Transport::Udp, "10.0.0.1:49152"));
        m.ops.push_back(bind(4, Transport::Udp, "10.9.9.9:1"));
    });
    let events = pair.a.take_events();
    let outcome = |i: usize| match &events[i] {
        Got::Outcome(_, o) => *o,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        outcome(0),
        SocketOutcome::Bound {
            local: addr("10.0.0.1:49152")
        }
    );
    assert!(matches!(
        outcome(1),
        SocketOutcome::Failed {
            op: OpKind::Bind,
            error: IoError::AddrInUse,
            ..
        }
    ));
    assert!(
        matches!(outcome(2), SocketOutcome::Bound { .. }),
        "UDP has its own ports"
    );
    assert!(matches!(
        outcome(3),
        SocketOutcome::Failed {
            error: IoError::AddrNotAvailable,
            ..
        }
    ));
}

/// `a` connects from socket 1 to `b`'s listener 10 (accepting as 11 only when asked).
fn connected(pair: &mut Pair<Script, Script>, accept_now: bool) {
    pair.input_b(|m, _| {
        m.ops.push_back(bind(10, Transport::Tcp, "0.0.0.0:80"));
        m.ops.push_back(listen(10));
        if accept_now {
            m.ops.push_back(accept(10, 11));
        }
    });
    pair.input_a(|m, _| {
        m.ops.push_back(bind(1, Transport::Tcp, "0.0.0.0:0"));
        m.ops.push_back(connect(1, "10.0.0.2:80"));
    });
}

#[test]
fn bytes_sent_before_the_accept_arrive_right_after_it_in_order() {
    let mut pair = scripts().latency(Duration::from_millis(10), Duration::from_millis(10));
    connected(&mut pair, false);
    assert!(pair.drive_until(|p| p
        .a
        .events
        .iter()
        .any(|e| matches!(e, Got::Outcome(_, SocketOutcome::Connected { .. })))));
    assert_eq!(pair.now(), ms(20));
    pair.input_a(|m, _| {
        m.send(1, "10.0.0.2:80", b"one");
        m.send(1, "10.0.0.2:80", b"two");
        m.ops.push_back(SocketOp::Shutdown {
            socket: SocketId(1),
        });
    });
    pair.drive_for(Duration::from_millis(100));
    pair.b.take_events();
    pair.input_b(|m, _| m.ops.push_back(accept(10, 11)));
    pair.drive();
    let local = addr("10.0.0.2:80");
    let remote = addr("10.0.0.1:49152");
    assert_eq!(
        pair.b.take_events(),
        vec![
            Got::Outcome(SocketId(11), SocketOutcome::Accepted { local, remote }),
            Got::Stream(SocketId(11), b"one".to_vec()),
            Got::Stream(SocketId(11), b"two".to_vec()),
            Got::Outcome(SocketId(11), SocketOutcome::PeerClosed),
        ]
    );
    // After the shutdown a's transmits fail; b can still write to a.
    pair.input_a(|m, _| m.send(1, "10.0.0.2:80", b"late"));
    assert!(matches!(
        pair.a.events.last(),
        Some(Got::Outcome(
            _,
            SocketOutcome::Failed {
                op: OpKind::Send,
                error: IoError::Other(Some(32)),
                ..
            }
        ))
    ));
    pair.input_b(|m, _| m.send(11, "10.0.0.1:49152", b"back"));
    pair.drive();
    assert_eq!(
        pair.a.events.last(),
        Some(&Got::Stream(SocketId(1), b"back".to_vec()))
    );
    // Closing b's end reaches a as EOF; bytes to a closed end are dropped.
    pair.input_b(|m, _| m.ops.push_back(close(11)));
    pair.drive();
    assert_eq!(
        pair.a.events.last(),
        Some(&Got::Outcome(SocketId(1), SocketOutcome::PeerClosed))
    );
    pair.input_a(|m, _| m.ops.push_back(close(1)));
    pair.input_b(|m, _| m.ops.push_back(close(10)));
    pair.drive();
    pair.a.checker.assert_all_closed();
    pair.b.checker.assert_all_closed();
    assert_eq!((pair.a.open_sockets(), pair.b.open_sockets()), (0, 0));
}

#[test]
fn a_connection_is_refused_once_the_listener_is_closed() {
    let mut pair = scripts();
    connected(&mut pair, true);
    pair.drive();
    assert!(pair.b.events.iter().any(
        |e| matches!(e, Got::Outcome(s, SocketOutcome::Accepted { .. }) if *s == SocketId(11))
    ));
    pair.input_b(|m, _| m.ops.extend([close(11), close(10)]));
    pair.input_a(|m, _| {
        m.ops.push_back(close(1));
        m.ops.push_back(bind(2, Transport::Tcp, "0.0.0.0:0"));
        m.ops.push_back(connect(2, "10.0.0.2:80"));
    });
    pair.drive();
    assert!(matches!(
        pair.a.events.last(),
        Some(Got::Outcome(
            s,
            SocketOutcome::Failed {
                op: OpKind::Connect,
                error: IoError::ConnectionRefused,
                ..
            }
        )) if *s == SocketId(2)
    ));
}

#[test]
fn time_jumps_to_deadlines_and_drive_for_stops_at_its_end() {
    let mut pair = scripts();
    pair.input_a(|m, now| {
        m.deadline = Some(now + Duration::from_millis(300));
        m.every = Some(Duration::from_millis(500));
    });
    pair.drive_for(Duration::from_millis(1000));
    assert_eq!(pair.now(), ms(1000));
    assert_eq!(
        pair.a.take_events(),
        vec![Got::Timeout(ms(300)), Got::Timeout(ms(800))]
    );
    assert_eq!(pair.next_time(), Some(ms(1300)));
    assert!(pair.step());
    assert_eq!(pair.now(), ms(1300));
    // A periodic timer never lets the pair go idle; a condition ends the drive.
    assert!(pair.drive_until(|p| p.now() >= ms(3000)));
    assert_eq!(pair.now(), ms(3300));
    pair.input_a(|m, _| {
        m.deadline = None;
        m.every = None;
    });
    assert!(!pair.step());
    assert!(!pair.drive_until(|_| false), "idle before the condition");
}

#[test]
#[should_panic(expected = "still busy")]
fn drive_reports_a_pair_that_never_goes_idle() {
    let mut pair = scripts();
    pair.input_b(|m, now| {
        m.deadline = Some(now);
        m.every = Some(Duration::from_millis(1));
    });
    pair.drive();
}

#[test]
#[should_panic(expected = "second Close")]
fn every_drain_is_checked() {
    let mut pair = scripts();
    pair.input_a(|m, _| {
        m.ops
            .extend([bind(1, Transport::Udp, "0.0.0.0:0"), close(1), close(1)])
    });
}

#[test]
fn driven_answers_binds_fires_deadlines_and_records_outputs() {
    let client = StunClient::new(ClientConfig::default(), 7);
    let mut d = Driven::new("stun client", client, |e| matches!(e, ClientEvent::Closed))
        .answering(Driven::<StunClient>::bind_answer());
    let s = d
        .input(|c, now| c.open_socket(now, addr("10.0.0.2:5000"), Default::default()))
        .unwrap();
    assert!(matches!(d.take_ops()[..], [SocketOp::Bind { .. }]));
    assert!(matches!(
        d.take_events()[..],
        [ClientEvent::SocketReady { .. }]
    ));
    d.input(|c, now| c.start(now, Request::binding(s, addr("192.0.2.1:3478"))))
        .unwrap();
    d.run_until(ms(10_000));
    assert_eq!(
        d.take_transmits().len(),
        5,
        "the request and 4 retransmissions"
    );
    assert_eq!(d.now, ms(10_000));
    d.run_to_end();
    assert!(matches!(d.take_events()[..], [ClientEvent::Transaction(_)]));
    d.input(|c, now| c.close(now));
    let out = d.take();
    assert_eq!(out.ops, vec![SocketOp::Close { socket: s }]);
    assert!(matches!(out.events[..], [ClientEvent::Closed]));
    d.checker.assert_all_closed();
}

#[test]
fn driven_tcp_binding_on_scripted_outcomes() {
    let config = TcpBindingConfig::new(addr("192.0.2.1:3478"), addr("10.0.0.2:4000"));
    let b = TcpBinding::new(config, 1, Instant::ZERO);
    let mut d = Driven::new("tcp binding", b, |e| {
        matches!(e, TcpBindingEvent::Closed { .. })
    });
    d.drain();
    assert!(matches!(d.take_ops()[..], [SocketOp::Bind { .. }]));
    d.outcome(
        TCP_BINDING_SOCKET,
        SocketOutcome::Failed {
            op: OpKind::Bind,
            destination: None,
            error: IoError::AddrInUse,
        },
    );
    // A failed bind needs no close.
    assert!(d.take_ops().is_empty());
    assert!(d.checker.finished());
    d.checker.assert_all_closed();
}

//! Real-socket tests of the runtime on loopback, with small hand-written machines.
// Test code: the package's strict lints (Cargo.toml `[lints]`) guard its library code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::Duration;

use common::{udp_bind, Input, Reactions, Record, Scripted};
use p2pd_mio::{RunEnd, Runtime};
use p2pd_proto::{
    BindOptions, Instant, InterfaceName, IoError, OpKind, SocketId, SocketOp, SocketOutcome,
    Verdict,
};

const LIMIT: Option<Duration> = Some(Duration::from_secs(5));

// ---------------------------------------------------------------------------------------------
// Echo: binds two sockets, A pings B, B echoes, A arms a timer, the timer closes both.

#[derive(Debug, Clone, PartialEq)]
enum EchoEvent {
    Echoed(Vec<u8>),
    TimerFired { deadline: Instant, now: Instant },
    Failed(SocketId, SocketOutcome),
}

const A: SocketId = SocketId(1);
const B: SocketId = SocketId(2);

struct Echo {
    a: Option<SocketAddr>,
    b: Option<SocketAddr>,
    delay: Duration,
    echoes: u32,
}

fn echo_machine(ip: &str, delay: Duration) -> Scripted<Echo> {
    let local = format!("{ip}:0");
    let state = Echo {
        a: None,
        b: None,
        delay,
        echoes: 0,
    };
    Scripted::with_ops(
        state,
        [
            udp_bind(1, &local, BindOptions::default()),
            udp_bind(2, &local, BindOptions::default()),
        ],
    )
}

impl Reactions for Echo {
    type Event = EchoEvent;

    fn react(m: &mut Scripted<Self>, now: Instant, input: Input) -> Verdict {
        match input {
            Input::Datagram(B, from, data) => {
                assert_eq!(Some(from), m.state.a, "B hears A's real address");
                m.state.echoes += 1;
                m.tx.push_back((B, from, data));
            }
            Input::Datagram(_, from, data) => {
                assert_eq!(Some(from), m.state.b);
                m.events.push_back(EchoEvent::Echoed(data));
                m.deadline = Some(now + m.state.delay);
            }
            Input::Result(socket, SocketOutcome::Bound { local }) => {
                assert_ne!(local.port(), 0, "the real port is reported");
                if socket == A {
                    m.state.a = Some(local);
                } else {
                    m.state.b = Some(local);
                }
                if let (Some(_), Some(b)) = (m.state.a, m.state.b) {
                    m.tx.push_back((A, b, b"ping".to_vec()));
                }
            }
            Input::Result(socket, other) => m.events.push_back(EchoEvent::Failed(socket, other)),
            Input::Timeout(now) => {
                let deadline = m.deadline.take().expect("a timeout only with a deadline");
                m.events.push_back(EchoEvent::TimerFired { deadline, now });
                m.ops.push_back(SocketOp::Close { socket: A });
                m.ops.push_back(SocketOp::Close { socket: B });
            }
            Input::Stream(..) => return Verdict::NotMine,
        }
        Verdict::Consumed
    }
}

fn echo_round(ip: &str) {
    let mut rt = Runtime::new().unwrap();
    let delay = Duration::from_millis(50);
    let mut machine = echo_machine(ip, delay);
    let mut events = Vec::new();
    let started = std::time::Instant::now();
    let end = rt
        .run(&mut machine, LIMIT, |_, _, ev| {
            events.push(ev);
            ControlFlow::Continue(())
        })
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(end, RunEnd::Idle, "{events:?}");
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0], EchoEvent::Echoed(b"ping".to_vec()));
    match events[1] {
        EchoEvent::TimerFired { deadline, now } => {
            assert!(now >= deadline, "timer fired early: {now:?} < {deadline:?}");
            assert!(
                now - deadline < Duration::from_secs(1),
                "timer fired very late"
            );
        }
        ref other => panic!("unexpected {other:?}"),
    }
    assert!(elapsed >= delay, "the loop waited for the timer");
    assert_eq!(machine.state.echoes, 1);
    assert_eq!(rt.open_sockets(), 0, "Close released both sockets");
    let stats = rt.stats();
    assert_eq!(stats.datagrams_sent, 2);
    assert_eq!(stats.datagrams_received, 2);
    assert_eq!(stats.verdict_consumed, 2);
    assert_eq!(stats.send_errors, 0);
    assert_eq!(stats.timeouts, 1);
    assert_eq!(stats.sockets_opened, 2);
    assert_eq!(stats.sockets_closed, 2);
    // The runtime is reusable: the wakeups were few (no busy loop while waiting 50 ms).
    assert!(stats.wakeups < 20, "busy loop? {stats:?}");
}

#[test]
fn echo_ipv4() {
    echo_round("127.0.0.1");
}

#[test]
fn echo_ipv6() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        common::skip_or_fail("echo_ipv6: cannot bind [::1]");
        return;
    }
    echo_round("[::1]");
}

#[test]
fn runtime_is_reusable_across_runs() {
    let mut rt = Runtime::new().unwrap();
    for _ in 0..20 {
        let mut machine = echo_machine("127.0.0.1", Duration::from_millis(1));
        let end = rt
            .run(&mut machine, LIMIT, |_, _, _| ControlFlow::Continue(()))
            .unwrap();
        assert_eq!(end, RunEnd::Idle);
        assert_eq!(rt.open_sockets(), 0);
    }
    assert_eq!(rt.stats().datagrams_received, 40);
}

// ---------------------------------------------------------------------------------------------
// Script: every input becomes an event (`common::Record`); the test reacts in the callback.

type Script = Scripted<Record>;

fn script(ops: impl IntoIterator<Item = SocketOp>) -> Script {
    Scripted::with_ops(Record, ops)
}

/// Runs until `n` inputs have been seen (or the limit), returning them.
fn collect(rt: &mut Runtime, m: &mut Script, n: usize) -> Vec<Input> {
    common::collect(rt, m, LIMIT, n)
}

/// The report of a bind of `socket` that failed with `error`.
fn bind_failed(socket: u32, error: IoError) -> Input {
    Input::Result(
        SocketId(socket),
        SocketOutcome::Failed {
            op: OpKind::Bind,
            destination: None,
            error,
        },
    )
}

fn bound_addr(input: &Input) -> SocketAddr {
    match input {
        Input::Result(_, SocketOutcome::Bound { local }) => *local,
        other => panic!("expected Bound, got {other:?}"),
    }
}

#[test]
fn bind_to_non_local_address_fails() {
    let mut rt = Runtime::new().unwrap();
    let mut m = script([udp_bind(7, "192.0.2.1:0", BindOptions::default())]);
    let seen = collect(&mut rt, &mut m, 1);
    assert_eq!(seen, vec![bind_failed(7, IoError::AddrNotAvailable)]);
    assert_eq!(rt.open_sockets(), 0);
}

#[test]
fn send_on_unknown_or_closed_socket_is_reported() {
    let mut rt = Runtime::new().unwrap();
    let dst: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut m = Script::default();
    m.tx.push_back((SocketId(99), dst, b"x".to_vec()));
    let seen = collect(&mut rt, &mut m, 1);
    let failed = SocketOutcome::Failed {
        op: OpKind::Send,
        destination: Some(dst),
        error: IoError::UnknownSocket,
    };
    assert_eq!(seen, vec![Input::Result(SocketId(99), failed)]);

    // Bind, close, then send on the closed id; closing twice (and closing an unknown id) is harmless.
    m.ops
        .extend([udp_bind(1, "127.0.0.1:0", BindOptions::default())]);
    let seen = collect(&mut rt, &mut m, 1);
    bound_addr(&seen[0]);
    assert_eq!(rt.open_sockets(), 1);
    m.ops.extend([
        SocketOp::Close {
            socket: SocketId(1),
        },
        SocketOp::Close {
            socket: SocketId(1),
        },
        SocketOp::Close {
            socket: SocketId(12345),
        },
    ]);
    m.tx.push_back((SocketId(1), dst, b"late".to_vec()));
    // The transmit is drained before the close: it is sent. The next one is not.
    let _ = rt.drive(&mut m, |_, _, _| ControlFlow::Continue(()));
    assert_eq!(rt.open_sockets(), 0);
    m.tx.push_back((SocketId(1), dst, b"later".to_vec()));
    let seen = collect(&mut rt, &mut m, 1);
    assert_eq!(seen, vec![Input::Result(SocketId(1), failed)]);
    assert_eq!(rt.stats().send_errors, 2);
}

#[test]
fn reuse_port_lets_two_sockets_share_a_port() {
    let mut rt = Runtime::new().unwrap();
    let reuse = BindOptions {
        reuse_address: true,
        reuse_port: true,
        device: None,
    };
    let mut m = script([udp_bind(1, "127.0.0.1:0", reuse)]);
    let first = bound_addr(&collect(&mut rt, &mut m, 1)[0]);
    m.ops.push_back(udp_bind(2, &first.to_string(), reuse));
    let second = bound_addr(&collect(&mut rt, &mut m, 1)[0]);
    assert_eq!(first, second);
    // Without the flags the port is taken.
    m.ops
        .push_back(udp_bind(3, &first.to_string(), BindOptions::default()));
    let seen = collect(&mut rt, &mut m, 1);
    assert_eq!(seen, vec![bind_failed(3, IoError::AddrInUse)]);
    assert_eq!(rt.open_sockets(), 2);
}

#[test]
fn set_ttl_and_misdirected_ops() {
    let mut rt = Runtime::new().unwrap();
    let mut m = script([
        udp_bind(1, "127.0.0.1:0", BindOptions::default()),
        SocketOp::SetTtl {
            socket: SocketId(1),
            ttl: 3,
        },
        SocketOp::SetTtl {
            socket: SocketId(5),
            ttl: 3,
        },
        SocketOp::Connect {
            socket: SocketId(1),
            remote: "127.0.0.1:9".parse().unwrap(),
        },
    ]);
    let seen = collect(&mut rt, &mut m, 3);
    bound_addr(&seen[0]);
    assert_eq!(
        seen[1..],
        [
            Input::Result(
                SocketId(5),
                SocketOutcome::Failed {
                    op: OpKind::SetTtl,
                    destination: None,
                    error: IoError::UnknownSocket
                }
            ),
            // Connect is for TCP sockets only.
            Input::Result(
                SocketId(1),
                SocketOutcome::Failed {
                    op: OpKind::Connect,
                    destination: Some("127.0.0.1:9".parse().unwrap()),
                    error: IoError::Other(None)
                }
            ),
        ]
    );
    // Binding an id that is already open is refused and leaves the socket alone.
    m.ops
        .push_back(udp_bind(1, "127.0.0.1:0", BindOptions::default()));
    let seen = collect(&mut rt, &mut m, 1);
    assert!(matches!(
        seen[0],
        Input::Result(
            SocketId(1),
            SocketOutcome::Failed {
                op: OpKind::Bind,
                ..
            }
        )
    ));
    assert_eq!(rt.open_sockets(), 1);
}

#[test]
fn timer_never_fires_early_and_limit_and_idle_end_the_run() {
    let mut rt = Runtime::new().unwrap();
    let mut m = Script::default();
    for ms in [1u64, 7, 20, 33] {
        let deadline = rt.now() + Duration::from_millis(ms);
        m.deadline = Some(deadline);
        let seen = collect(&mut rt, &mut m, 1);
        match seen[..] {
            [Input::Timeout(now)] => assert!(now >= deadline),
            ref other => panic!("{other:?}"),
        }
    }
    assert_eq!(rt.stats().timeouts, 4);

    // A far deadline: the time limit ends the run, without firing it.
    m.deadline = Some(rt.now() + Duration::from_secs(3600));
    let started = std::time::Instant::now();
    let end = rt
        .run(&mut m, Some(Duration::from_millis(30)), |_, _, _| {
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(end, RunEnd::TimeLimit);
    assert!(started.elapsed() >= Duration::from_millis(30));
    assert_eq!(rt.stats().timeouts, 4);

    // No sockets, no deadline: idle at once.
    m.deadline = None;
    let end = rt
        .run(&mut m, None, |_, _, _| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(end, RunEnd::Idle);
}

#[test]
fn callback_commands_take_effect_and_bursts_are_read() {
    let mut rt = Runtime::new().unwrap();
    let mut m = script([
        udp_bind(1, "127.0.0.1:0", BindOptions::default()),
        udp_bind(2, "127.0.0.1:0", BindOptions::default()),
    ]);
    let seen = collect(&mut rt, &mut m, 2);
    let a = bound_addr(&seen[0]);
    let b = bound_addr(&seen[1]);
    assert_eq!(rt.local_addr(SocketId(1)), Some(a));

    // A burst larger than one wake-up's read budget.
    const BURST: usize = 400;
    for i in 0..BURST {
        m.tx.push_back((SocketId(1), b, (i as u32).to_be_bytes().to_vec()));
    }
    m.deadline = Some(rt.now() + Duration::from_millis(300));
    let mut received = 0usize;
    let end = rt
        .run(&mut m, LIMIT, |m, _, input| {
            match input {
                Input::Datagram(socket, from, _) => {
                    assert_eq!((socket, from), (SocketId(2), a));
                    received += 1;
                }
                Input::Timeout(_) => {
                    // A command from the callback: close both sockets; the run then goes idle.
                    m.ops.push_back(SocketOp::Close {
                        socket: SocketId(1),
                    });
                    m.ops.push_back(SocketOp::Close {
                        socket: SocketId(2),
                    });
                }
                other => panic!("{other:?}"),
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(end, RunEnd::Idle);
    assert_eq!(rt.open_sockets(), 0);
    let stats = rt.stats();
    assert_eq!(stats.datagrams_sent, BURST as u64);
    assert_eq!(stats.datagrams_received, received as u64);
    // Loopback may drop some of the burst if the receive buffer fills, but most arrive.
    assert!(received >= BURST / 2, "received {received} of {BURST}");
}

#[test]
fn bind_to_device_lo() {
    let mut rt = Runtime::new().unwrap();
    let lo = BindOptions {
        device: InterfaceName::new("lo"),
        ..BindOptions::default()
    };
    let bogus = BindOptions {
        device: InterfaceName::new("nosuchdev0"),
        ..BindOptions::default()
    };
    let mut m = script([
        udp_bind(1, "127.0.0.1:0", lo),
        udp_bind(2, "127.0.0.1:0", bogus),
    ]);
    let seen = collect(&mut rt, &mut m, 2);
    match &seen[0] {
        Input::Result(
            _,
            SocketOutcome::Failed {
                error: IoError::PermissionDenied,
                ..
            },
        ) => {
            common::skip_or_fail("bind_to_device_lo: SO_BINDTODEVICE not permitted (not root?)");
            return;
        }
        Input::Result(
            _,
            SocketOutcome::Failed {
                error: IoError::NoSuchDevice,
                ..
            },
        ) if !cfg!(target_os = "linux") => {
            common::skip_or_fail("bind_to_device_lo: no interface named lo on this platform");
            return;
        }
        other => {
            let local = bound_addr(other);
            assert_eq!(rt.local_addr(SocketId(1)), Some(local));
        }
    }
    assert!(
        matches!(
            seen[1],
            Input::Result(
                SocketId(2),
                SocketOutcome::Failed {
                    op: OpKind::Bind,
                    error: IoError::NoSuchDevice,
                    ..
                }
            )
        ),
        "{:?}",
        seen[1]
    );
    assert_eq!(rt.open_sockets(), 1);
}

#[test]
fn many_sequential_round_trips_do_not_grow_the_table() {
    let mut rt = Runtime::new().unwrap();
    for round in 0..200u32 {
        let mut m = script([
            udp_bind(1, "127.0.0.1:0", BindOptions::default()),
            udp_bind(2, "127.0.0.1:0", BindOptions::default()),
        ]);
        let seen = collect(&mut rt, &mut m, 2);
        let b = bound_addr(&seen[1]);
        m.tx.push_back((SocketId(1), b, round.to_be_bytes().to_vec()));
        let seen = collect(&mut rt, &mut m, 1);
        assert!(
            matches!(&seen[0], Input::Datagram(SocketId(2), _, d) if d[..] == round.to_be_bytes())
        );
        m.ops.extend([
            SocketOp::Close {
                socket: SocketId(1),
            },
            SocketOp::Close {
                socket: SocketId(2),
            },
        ]);
        assert_eq!(
            rt.run(&mut m, LIMIT, |_, _, _| ControlFlow::Continue(()))
                .unwrap(),
            RunEnd::Idle
        );
        assert_eq!(rt.open_sockets(), 0);
        // Two sockets at a time: their slots are reused, the table never grows past two.
        assert!(
            rt.slot_capacity() <= 2,
            "round {round}: {} slots",
            rt.slot_capacity()
        );
    }
    assert_eq!(rt.slot_capacity(), 2);
    let stats = rt.stats();
    assert_eq!(stats.datagrams_received, 200);
    assert_eq!(stats.sockets_opened, 400);
    assert_eq!(stats.sockets_closed, 400);
}

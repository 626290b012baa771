//! TCP through the runtime on loopback: bind-before-connect, stream bytes, EOF, refusal, listen.
// Test code: the package's strict lints (Cargo.toml `[lints]`) guard its library code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::time::Duration;

use common::{Reactions, Scripted};
use p2pd_mio::{RunEnd, Runtime};
use p2pd_proto::{
    BindOptions, Instant, IoError, OpKind, SocketId, SocketOp, SocketOutcome, Transport, Verdict,
};

const LIMIT: Option<Duration> = Some(Duration::from_secs(5));
const S: SocketId = SocketId(1);

fn tcp_bind(local: &str) -> SocketOp {
    SocketOp::Bind {
        socket: S,
        transport: Transport::Tcp,
        local: local.parse().unwrap(),
        options: BindOptions {
            reuse_address: true,
            reuse_port: true,
            device: None,
        },
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Input {
    Result(SocketOutcome),
    Stream(Vec<u8>),
}

/// Every input on the one stream `S` becomes an event; the test reacts in the callback.
#[derive(Default)]
struct OneStream {
    remote: Option<SocketAddr>,
}

type Tcp = Scripted<OneStream>;

impl Reactions for OneStream {
    type Event = Input;
    fn react(m: &mut Tcp, _: Instant, input: common::Input) -> Verdict {
        match input {
            common::Input::Stream(socket, data) => {
                assert_eq!(socket, S);
                m.events.push_back(Input::Stream(data));
            }
            common::Input::Result(socket, outcome) => {
                assert_eq!(socket, S);
                m.events.push_back(Input::Result(outcome));
            }
            common::Input::Datagram(..) | common::Input::Timeout(_) => return Verdict::NotMine,
        }
        Verdict::Consumed
    }
}

impl Tcp {
    /// A machine whose stream `S` talks to `remote`.
    fn to(remote: SocketAddr) -> Self {
        Scripted::new(OneStream {
            remote: Some(remote),
        })
    }

    /// Queues `bytes` on the stream `S`.
    fn send(&mut self, bytes: Vec<u8>) {
        let remote = self.state.remote.expect("a stream with a remote");
        self.tx.push_back((S, remote, bytes));
    }
}

/// Every byte the stream delivered, in order.
fn streamed(seen: &[Input]) -> Vec<u8> {
    seen.iter()
        .filter_map(|i| match i {
            Input::Stream(d) => Some(d.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn connect_exchange_and_peer_close() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = server.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (mut conn, from) = server.accept().unwrap();
        let mut got = [0u8; 4];
        conn.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        conn.write_all(b"pong").unwrap();
        from
    });

    let mut rt = Runtime::new().unwrap();
    let mut m = Tcp::to(server_addr);
    m.ops.push_back(tcp_bind("127.0.0.1:0"));
    let mut seen = Vec::new();
    let end = rt
        .run(&mut m, LIMIT, |m, _, input| {
            match &input {
                Input::Result(SocketOutcome::Bound { .. }) => {
                    m.ops.push_back(SocketOp::Connect {
                        socket: S,
                        remote: server_addr,
                    });
                }
                Input::Result(SocketOutcome::Connected { .. }) => m.send(b"ping".to_vec()),
                Input::Result(SocketOutcome::PeerClosed) => {
                    m.ops.push_back(SocketOp::Close { socket: S });
                }
                _ => {}
            }
            seen.push(input);
            ControlFlow::Continue(())
        })
        .unwrap();
    let client_addr = peer.join().unwrap();
    assert_eq!(end, RunEnd::Idle, "{seen:?}");
    let bound = match seen[0] {
        Input::Result(SocketOutcome::Bound { local }) => local,
        ref other => panic!("{other:?}"),
    };
    assert_eq!(
        bound, client_addr,
        "the connection comes from the bound address"
    );
    assert_eq!(
        seen[1],
        Input::Result(SocketOutcome::Connected {
            local: bound,
            remote: server_addr
        })
    );
    assert_eq!(streamed(&seen), b"pong");
    assert_eq!(seen.last(), Some(&Input::Result(SocketOutcome::PeerClosed)));
    assert_eq!(rt.open_sockets(), 0);
    assert_eq!(rt.stats().bytes_sent, 4);
    assert_eq!(rt.stats().bytes_received, 4);
}

#[test]
fn connect_to_closed_port_is_refused() {
    // Find a port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let remote: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut rt = Runtime::new().unwrap();
    let mut m = Tcp::default();
    m.ops.extend([
        tcp_bind("127.0.0.1:0"),
        SocketOp::Connect { socket: S, remote },
    ]);
    let mut seen = Vec::new();
    rt.run(&mut m, LIMIT, |_, _, input| {
        seen.push(input);
        if seen.len() == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(
        seen[1],
        Input::Result(SocketOutcome::Failed {
            op: OpKind::Connect,
            destination: Some(remote),
            error: IoError::ConnectionRefused
        })
    );
    // A transmit on the failed stream is reported, not a panic.
    m.state.remote = Some(remote);
    m.send(b"x".to_vec());
    m.ops.push_back(SocketOp::Close { socket: S });
    let _ = rt.drive(&mut m, |_, _, input| {
        assert!(matches!(
            input,
            Input::Result(SocketOutcome::Failed {
                op: OpKind::Send,
                ..
            })
        ));
        ControlFlow::Continue(())
    });
    assert_eq!(rt.open_sockets(), 0);
}

#[test]
fn listen_accepts_into_the_backlog() {
    let mut rt = Runtime::new().unwrap();
    let mut m = Tcp::default();
    m.ops.extend([
        tcp_bind("127.0.0.1:0"),
        SocketOp::Listen {
            socket: S,
            backlog: 8,
        },
    ]);
    let seen = common::drained(&mut rt, &mut m);
    let local = match seen[..] {
        [Input::Result(SocketOutcome::Bound { local })] => local,
        ref other => panic!("{other:?}"),
    };
    let conn = TcpStream::connect_timeout(&local, Duration::from_secs(2));
    assert!(conn.is_ok(), "{conn:?}");
    m.ops.push_back(SocketOp::Listen {
        socket: S,
        backlog: 8,
    });
    let _ = rt.drive(&mut m, |_, _, input| {
        // Listening twice is refused.
        assert!(matches!(
            input,
            Input::Result(SocketOutcome::Failed {
                op: OpKind::Listen,
                ..
            })
        ));
        ControlFlow::Continue(())
    });
    m.ops.push_back(SocketOp::Close { socket: S });
    assert_eq!(
        rt.run(&mut m, LIMIT, |_, _, _| ControlFlow::Continue(()))
            .unwrap(),
        RunEnd::Idle
    );
}

/// A listener that accepts into ids 10, 11, ... (one outstanding accept at a time) and echoes every
/// stream chunk back on the stream it came from.
#[derive(Default)]
struct Echo {
    next: u32,
    accepted: Vec<SocketId>,
}

const LISTENER: SocketId = SocketId(1);

impl Scripted<Echo> {
    fn accept_next(&mut self) {
        self.state.next += 1;
        self.ops.push_back(SocketOp::Accept {
            listener: LISTENER,
            socket: SocketId(9 + self.state.next),
        });
    }
}

impl Reactions for Echo {
    type Event = (SocketId, SocketOutcome);
    fn react(m: &mut Scripted<Self>, _: Instant, input: common::Input) -> Verdict {
        match input {
            common::Input::Stream(socket, data) => {
                assert!(m.state.accepted.contains(&socket));
                m.tx.push_back((socket, "0.0.0.0:0".parse().unwrap(), data));
            }
            common::Input::Result(socket, outcome) => {
                match outcome {
                    SocketOutcome::Bound { .. } => {}
                    SocketOutcome::Accepted { .. } => {
                        m.state.accepted.push(socket);
                        m.accept_next();
                    }
                    SocketOutcome::PeerClosed => m.ops.push_back(SocketOp::Close { socket }),
                    _ => {}
                }
                m.events.push_back((socket, outcome));
            }
            common::Input::Datagram(..) | common::Input::Timeout(_) => return Verdict::NotMine,
        }
        Verdict::Consumed
    }
}

#[test]
fn accept_names_connections_and_streams_them() {
    let mut rt = Runtime::new().unwrap();
    let mut m = Scripted::<Echo>::default();
    m.ops.extend([
        tcp_bind("127.0.0.1:0"),
        SocketOp::Listen {
            socket: LISTENER,
            backlog: 8,
        },
    ]);
    let mut local = None;
    let _ = rt.drive(&mut m, |_, _, (_, outcome)| {
        if let SocketOutcome::Bound { local: l } = outcome {
            local = Some(l);
        }
        ControlFlow::Continue(())
    });
    let local = local.unwrap();
    // Two clients connect before the machine asks for any connection: they wait in the backlog.
    let clients: Vec<_> = (0..2)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(local).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let msg = format!("hello {i}");
                c.write_all(msg.as_bytes()).unwrap();
                let mut back = vec![0u8; msg.len()];
                c.read_exact(&mut back).unwrap();
                assert_eq!(back, msg.as_bytes());
                c.local_addr().unwrap()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    m.accept_next();
    let mut remotes = Vec::new();
    let mut closed = 0;
    let end = rt
        .run(&mut m, LIMIT, |_, _, (socket, outcome)| {
            match outcome {
                SocketOutcome::Accepted { local: l, remote } => {
                    assert_eq!(l, local);
                    assert!(socket.0 >= 10);
                    remotes.push(remote);
                }
                SocketOutcome::PeerClosed => closed += 1,
                other => panic!("{other:?}"),
            }
            if closed == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(end, RunEnd::Break);
    let mut addrs: Vec<SocketAddr> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    addrs.sort();
    remotes.sort();
    assert_eq!(addrs, remotes);
    // The listener and the one outstanding accept: closing the listener ends it without a report.
    let _ = rt.drive(&mut m, |_, _, ev| panic!("{ev:?}"));
    assert_eq!(rt.open_sockets(), 1);
    m.ops.push_back(SocketOp::Close { socket: LISTENER });
    assert_eq!(
        rt.run(&mut m, LIMIT, |_, _, ev| panic!("{ev:?}")).unwrap(),
        RunEnd::Idle
    );
}

#[test]
fn accept_on_a_socket_that_is_not_listening_fails() {
    let mut rt = Runtime::new().unwrap();
    let mut m = Scripted::<Echo>::default();
    m.ops.push_back(tcp_bind("127.0.0.1:0"));
    m.accept_next();
    let seen = common::drained(&mut rt, &mut m);
    assert!(matches!(
        seen[..],
        [
            (LISTENER, SocketOutcome::Bound { .. }),
            (
                SocketId(10),
                SocketOutcome::Failed {
                    op: OpKind::Accept,
                    ..
                }
            )
        ]
    ));
    m.ops.push_back(SocketOp::Close { socket: LISTENER });
    let _ = rt.drive(&mut m, |_, _, _| ControlFlow::Continue(()));
    assert_eq!(rt.open_sockets(), 0);
}

/// `Shutdown` with bytes still queued in the runtime (the peer does not read at first): they are
/// all written before the FIN, the peer reads every byte and then EOF, a transmit after the
/// shutdown fails, and the peer's answer still arrives on our side (half-close).
#[test]
fn shutdown_after_queued_bytes_half_closes() {
    let (mut rt, mut m, mut conn) = connected_pair();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        go_rx.recv().unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        conn.write_all(b"answer after your EOF").unwrap();
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        got
    });
    let mut seen = Vec::new();
    let slice = Some(Duration::from_millis(5));
    let start = std::time::Instant::now();
    // Feed 4 KiB chunks while the runtime has room, until the kernel is full and the runtime
    // itself holds bytes (the peer is not reading).
    const CHUNK: usize = 4 * 1024;
    let mut fed = 0usize;
    let mut stalled_turns = 0;
    while stalled_turns < 20 {
        assert!(start.elapsed() < Duration::from_secs(10), "never filled up");
        if rt.unsent(S) + CHUNK <= p2pd_mio::MAX_STREAM_BUFFER {
            m.send(chunk_at(fed, CHUNK));
            fed += CHUNK;
        }
        rt.run(&mut m, slice, |_, _, i| {
            seen.push(i);
            ControlFlow::Continue(())
        })
        .unwrap();
        if rt.unsent(S) > 0 {
            stalled_turns += 1;
        }
    }
    assert!(
        !seen
            .iter()
            .any(|i| matches!(i, Input::Result(SocketOutcome::Failed { .. }))),
        "{seen:?}"
    );
    let held = rt.unsent(S);
    assert!(held > 0);
    m.ops.push_back(SocketOp::Shutdown { socket: S });
    seen.extend(common::drained(&mut rt, &mut m));
    // (A transmit polled in the same drain would go first: transmits before intents.)
    m.send(b"too late".to_vec());
    seen.extend(common::drained(&mut rt, &mut m));
    assert_eq!(rt.unsent(S), held, "the queue is kept for the shutdown");
    let failed: Vec<&Input> = seen
        .iter()
        .filter(|i| matches!(i, Input::Result(SocketOutcome::Failed { .. })))
        .collect();
    assert!(
        matches!(
            failed.as_slice(),
            [Input::Result(SocketOutcome::Failed {
                op: OpKind::Send,
                error: IoError::BrokenPipe,
                ..
            })]
        ),
        "a transmit after the shutdown fails: {failed:?}"
    );
    seen.clear();
    go_tx.send(()).unwrap();
    let end = rt
        .run(&mut m, LIMIT, |m, _, input| {
            if input == Input::Result(SocketOutcome::PeerClosed) {
                m.ops.push_back(SocketOp::Close { socket: S });
            }
            seen.push(input);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(end, RunEnd::Idle, "{seen:?}");
    let got = peer.join().unwrap();
    assert_eq!(got.len(), fed, "the peer read every byte, then EOF");
    assert!(got == chunk_at(0, fed));
    assert_eq!(streamed(&seen), b"answer after your EOF");
    assert_eq!(
        seen.last(),
        Some(&Input::Result(SocketOutcome::PeerClosed)),
        "{seen:?}"
    );
    assert_eq!(rt.open_sockets(), 0);
}

/// `Shutdown` on a socket that is not a connected stream fails with kind `Shutdown`
/// (`NotConnected`, as in the simulator).
#[test]
fn shutdown_on_a_bound_socket_fails() {
    let mut rt = Runtime::new().unwrap();
    let mut m = Tcp::default();
    m.ops.push_back(tcp_bind("127.0.0.1:0"));
    m.ops.push_back(SocketOp::Shutdown { socket: S });
    let seen = common::drained(&mut rt, &mut m);
    assert!(
        matches!(
            seen.as_slice(),
            [
                Input::Result(SocketOutcome::Bound { .. }),
                Input::Result(SocketOutcome::Failed {
                    op: OpKind::Shutdown,
                    error: IoError::NotConnected,
                    ..
                }),
            ]
        ),
        "{seen:?}"
    );
}

/// Connects `m` (socket `S`) to a fresh std listener; returns the runtime and the accepted peer
/// stream (not read by anyone yet).
fn connected_pair() -> (Runtime, Tcp, TcpStream) {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = server.local_addr().unwrap();
    let mut rt = Runtime::new().unwrap();
    let mut m = Tcp::to(server_addr);
    m.ops.push_back(tcp_bind("127.0.0.1:0"));
    let mut connected = false;
    let start = std::time::Instant::now();
    while !connected {
        assert!(start.elapsed() < Duration::from_secs(5));
        rt.run(&mut m, Some(Duration::from_millis(5)), |m, _, i| {
            match i {
                Input::Result(SocketOutcome::Bound { .. }) => m.ops.push_back(SocketOp::Connect {
                    socket: S,
                    remote: server_addr,
                }),
                Input::Result(SocketOutcome::Connected { .. }) => connected = true,
                other => panic!("{other:?}"),
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    }
    let (peer, _) = server.accept().unwrap();
    (rt, m, peer)
}

/// A transmit chunk of the counting pattern starting at byte `at`.
fn chunk_at(at: usize, len: usize) -> Vec<u8> {
    (at..at + len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn a_refused_stream_refuses_until_writable_then_takes_bytes_again() {
    let (mut rt, mut m, mut peer) = connected_pair();
    // Fill the kernel and the runtime while the peer does not read: transmits until one is
    // refused. Every byte accepted is remembered in order.
    let mut accepted = Vec::new();
    let mut offered = 0usize;
    let mut refusals = 0;
    let start = std::time::Instant::now();
    while refusals == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "never refused");
        let c = chunk_at(offered, 1400);
        offered += c.len();
        m.send(c.clone());
        let _ = rt.drive(&mut m, |_, _, i| {
            match i {
                Input::Result(SocketOutcome::Failed {
                    op: OpKind::Send,
                    error: IoError::WouldBlock,
                    ..
                }) => refusals += 1,
                other => panic!("{other:?}"),
            }
            ControlFlow::Continue(())
        });
        if refusals == 0 {
            accepted.extend_from_slice(&c);
        }
    }
    // Once refused, even a one-byte transmit is refused: refusals are always the last ones.
    m.send(vec![0xee]);
    let _ = rt.drive(&mut m, |_, _, i| {
        assert!(matches!(
            i,
            Input::Result(SocketOutcome::Failed {
                error: IoError::WouldBlock,
                ..
            })
        ));
        refusals += 1;
        ControlFlow::Continue(())
    });
    assert_eq!(refusals, 2);
    // The peer reads everything; the runtime reports Writable exactly once.
    let expected = accepted.len();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; expected];
        peer.read_exact(&mut got).unwrap();
        (peer, got)
    });
    let mut writable = 0;
    let start = std::time::Instant::now();
    while writable == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "no Writable");
        rt.run(&mut m, Some(Duration::from_millis(5)), |_, _, i| {
            assert_eq!(i, Input::Result(SocketOutcome::Writable));
            writable += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
    }
    let (mut peer, got) = reader.join().unwrap();
    assert!(
        got == accepted,
        "the peer got exactly the accepted bytes, in order"
    );
    // Writable: transmits are taken again.
    m.send(b"after".to_vec());
    let _ = rt.drive(&mut m, |_, _, i| panic!("{i:?}"));
    let mut tail = [0u8; 5];
    peer.read_exact(&mut tail).unwrap();
    assert_eq!(&tail, b"after");
    assert_eq!(writable, 1);
}

#[test]
fn close_after_shutdown_still_delivers_every_queued_byte() {
    let (mut rt, mut m, mut peer) = connected_pair();
    // Fill until the runtime itself holds bytes (the peer is not reading).
    let mut sent = Vec::new();
    let start = std::time::Instant::now();
    while rt.unsent(S) == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "never filled up");
        let c = chunk_at(sent.len(), 1400);
        m.send(c.clone());
        let _ = rt.drive(&mut m, |_, _, i| panic!("{i:?}"));
        sent.extend_from_slice(&c);
    }
    // Shutdown, then close at once: the machine's socket is gone, the bytes are not.
    m.ops.push_back(SocketOp::Shutdown { socket: S });
    m.ops.push_back(SocketOp::Close { socket: S });
    let _ = rt.drive(&mut m, |_, _, i| panic!("{i:?}"));
    assert_eq!(rt.open_sockets(), 0);
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        got
    });
    // The loop is not idle until the lingering stream is written out.
    let end = rt.run(&mut m, Some(Duration::from_secs(10)), |_, _, i| {
        panic!("{i:?}")
    });
    assert_eq!(end.unwrap(), RunEnd::Idle);
    let got = reader.join().unwrap();
    assert_eq!(got.len(), sent.len(), "every byte, then EOF");
    assert!(got == sent);
    assert_eq!(rt.stats().sockets_opened, rt.stats().sockets_closed);
}

#[test]
fn a_waker_ends_run_from_another_thread() {
    let (mut rt, mut m, _peer) = connected_pair();
    let waker = rt.waker().unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        waker.wake().unwrap();
    });
    let started = std::time::Instant::now();
    let end = rt
        .run(&mut m, Some(Duration::from_secs(10)), |_, _, i| {
            panic!("{i:?}")
        })
        .unwrap();
    t.join().unwrap();
    assert_eq!(end, RunEnd::Woken);
    assert!(started.elapsed() < Duration::from_secs(5));
}

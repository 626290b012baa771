//! Batched UDP I/O (`recvmmsg` / `sendmmsg` on Linux): bursts, mixed IPv4 / IPv6 sockets, a
//! failing datagram in the middle of a batch, and a run stopped in the middle of a read batch.
// Test code: the package's strict lints (Cargo.toml `[lints]`) guard its library code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::ops::ControlFlow;
use std::thread;
use std::time::Duration;

use common::{udp_bind, Input, Reactions, Scripted};
use p2pd_mio::{map_io_error, RunEnd, Runtime};
use p2pd_proto::{BindOptions, Instant, OpKind, SocketId, SocketOp, SocketOutcome, Verdict};

const LIMIT: Option<Duration> = Some(Duration::from_secs(10));

fn ipv6_available() -> bool {
    UdpSocket::bind("[::1]:0").is_ok()
}

/// Every input becomes an event, except datagrams in echo mode, which are sent back on the socket
/// they came in on (no event, so the echoes of one read batch leave in one send batch). In echo
/// mode the machine closes every socket once each has echoed `close_after` datagrams.
#[derive(Default)]
struct Relay {
    echo: bool,
    close_after: usize,
    echoed: HashMap<SocketId, usize>,
    bound: HashMap<SocketId, SocketAddr>,
}

impl Reactions for Relay {
    type Event = Input;

    fn react(m: &mut Scripted<Self>, _now: Instant, input: Input) -> Verdict {
        match input {
            Input::Datagram(socket, from, data) if m.state.echo => {
                m.tx.push_back((socket, from, data));
                let relay = &mut m.state;
                *relay.echoed.entry(socket).or_default() += 1;
                let done = relay.bound.keys().all(|id| {
                    relay
                        .echoed
                        .get(id)
                        .is_some_and(|&n| n >= relay.close_after)
                });
                if done {
                    for &socket in relay.bound.keys() {
                        m.ops.push_back(SocketOp::Close { socket });
                    }
                }
                Verdict::Consumed
            }
            Input::Datagram(..) | Input::Result(..) => {
                if let Input::Result(socket, SocketOutcome::Bound { local }) = input {
                    m.state.bound.insert(socket, local);
                }
                common::record(m, input)
            }
            Input::Stream(..) | Input::Timeout(_) => Verdict::NotMine,
        }
    }
}

fn collect(rt: &mut Runtime, m: &mut Scripted<Relay>, n: usize) -> Vec<Input> {
    common::collect(rt, m, LIMIT, n)
}

/// A new runtime and relay with `addrs` bound as sockets 1, 2, ..., and their real addresses.
fn bound_relay(addrs: &[&str]) -> (Runtime, Scripted<Relay>, Vec<SocketAddr>) {
    let mut rt = Runtime::new().unwrap();
    let mut m = Scripted::<Relay>::default();
    for (i, a) in addrs.iter().enumerate() {
        m.ops
            .push_back(udp_bind(i as u32 + 1, a, BindOptions::default()));
    }
    let seen = collect(&mut rt, &mut m, addrs.len());
    let bound = seen
        .iter()
        .map(|input| match input {
            Input::Result(_, SocketOutcome::Bound { local }) => *local,
            other => panic!("expected Bound, got {other:?}"),
        })
        .collect();
    (rt, m, bound)
}

/// Sends `n` numbered datagrams to `server` keeping up to `window` unanswered, and returns the
/// numbers of the echoes in the order they arrived.
fn burst_client(server: SocketAddr, n: u32, window: u32) -> Vec<u32> {
    let local = if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let sock = UdpSocket::bind(local).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::with_capacity(n as usize);
    let mut next = 0u32;
    let mut buf = [0u8; 64];
    while got.len() < n as usize {
        while next < n && next - (got.len() as u32) < window {
            sock.send_to(&next.to_be_bytes(), server).unwrap();
            next += 1;
        }
        let (len, from) = sock.recv_from(&mut buf).expect("an echo within 5 s");
        assert_eq!(from, server);
        assert_eq!(len, 4);
        got.push(u32::from_be_bytes(buf[..4].try_into().unwrap()));
    }
    got
}

fn echo_bursts(addrs: &[&str]) {
    const N: u32 = 1000;
    let (mut rt, mut m, servers) = bound_relay(addrs);
    m.state.echo = true;
    m.state.close_after = N as usize;
    let clients: Vec<_> = servers
        .iter()
        .map(|&server| thread::spawn(move || burst_client(server, N, 64)))
        .collect();
    let end = rt
        .run(&mut m, LIMIT, |_, _, input| panic!("unexpected {input:?}"))
        .unwrap();
    assert_eq!(end, RunEnd::Idle);
    let want: Vec<u32> = (0..N).collect();
    for client in clients {
        assert_eq!(client.join().unwrap(), want, "every echo, in order");
    }
    let stats = rt.stats();
    let total = u64::from(N) * servers.len() as u64;
    assert_eq!(stats.datagrams_received, total);
    assert_eq!(stats.datagrams_sent, total);
    assert_eq!(stats.bytes_sent, total * 4);
    assert_eq!(stats.send_errors, 0);
    assert_eq!(rt.open_sockets(), 0);
}

#[test]
fn burst_of_1000_is_echoed_in_order_ipv4() {
    echo_bursts(&["127.0.0.1:0"]);
}

#[test]
fn bursts_on_mixed_ipv4_and_ipv6_sockets() {
    if !ipv6_available() {
        common::skip_or_fail("bursts_on_mixed_ipv4_and_ipv6_sockets: cannot bind [::1]");
        return;
    }
    echo_bursts(&["127.0.0.1:0", "[::1]:0", "127.0.0.1:0", "[::1]:0"]);
}

/// Reads `n` datagrams from `sock`, returning (sender, payload) in arrival order.
fn read_n(sock: &UdpSocket, n: usize) -> Vec<(SocketAddr, Vec<u8>)> {
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 2048];
    (0..n)
        .map(|_| {
            let (len, from) = sock.recv_from(&mut buf).expect("a datagram within 5 s");
            (from, buf[..len].to_vec())
        })
        .collect()
}

#[test]
fn one_failing_datagram_in_a_batch_is_reported_and_the_rest_are_sent() {
    let (mut rt, mut m, bound) = bound_relay(&["127.0.0.1:0"]);
    let a = bound[0];
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dst = sink.local_addr().unwrap();
    // An IPv6 destination from an IPv4 socket: refused by the kernel (EAFNOSUPPORT on Linux).
    let bad: SocketAddr = "[::1]:9".parse().unwrap();
    let want_error = {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        map_io_error(&probe.send_to(b"x", bad).unwrap_err())
    };

    // 40 datagrams (more than one send batch), the 6th and the 35th undeliverable.
    for i in 0..40u8 {
        let to = if i == 5 || i == 34 { bad } else { dst };
        m.tx.push_back((SocketId(1), to, vec![i]));
    }
    let mut seen = Vec::new();
    let flow = rt.drive(&mut m, |_, _, input| {
        seen.push(input);
        ControlFlow::Continue(())
    });
    assert!(flow.is_continue());
    let failed = SocketOutcome::Failed {
        op: OpKind::Send,
        destination: Some(bad),
        error: want_error,
    };
    assert_eq!(
        seen,
        vec![
            Input::Result(SocketId(1), failed),
            Input::Result(SocketId(1), failed)
        ],
        "each failure reported once, after the drain"
    );
    let got = read_n(&sink, 38);
    let want: Vec<(SocketAddr, Vec<u8>)> = (0..40u8)
        .filter(|&i| i != 5 && i != 34)
        .map(|i| (a, vec![i]))
        .collect();
    assert_eq!(got, want, "the others are sent, in order");
    let stats = rt.stats();
    assert_eq!(stats.datagrams_sent, 38);
    assert_eq!(stats.send_errors, 2);
}

#[test]
fn transmits_on_alternating_sockets_keep_their_order() {
    let (mut rt, mut m, socks) = bound_relay(&["127.0.0.1:0", "127.0.0.1:0"]);
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dst = sink.local_addr().unwrap();
    // Runs of different lengths on each socket, so batches end on a socket change and when full.
    let mut want = Vec::new();
    let mut seq = 0u16;
    for (socket, run) in [(1usize, 3usize), (2, 1), (1, 40), (2, 33), (1, 1), (2, 5)] {
        for _ in 0..run {
            let payload = seq.to_be_bytes().to_vec();
            m.tx.push_back((SocketId(socket as u32), dst, payload.clone()));
            want.push((socks[socket - 1], payload));
            seq += 1;
        }
    }
    assert!(rt
        .drive(&mut m, |_, _, _| ControlFlow::Continue(()))
        .is_continue());
    assert_eq!(read_n(&sink, want.len()), want);
    assert_eq!(rt.stats().datagrams_sent, want.len() as u64);
    assert_eq!(rt.stats().send_errors, 0);
}

#[test]
fn a_run_stopped_mid_batch_resumes_with_the_rest() {
    let (mut rt, mut m, bound) = bound_relay(&["127.0.0.1:0"]);
    let a = bound[0];
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let from = peer.local_addr().unwrap();
    const N: u8 = 50;
    for i in 0..N {
        peer.send_to(&[i], a).unwrap();
    }
    // One datagram per run: each run stops after the first event, leaving the rest of the batch.
    let mut got = Vec::new();
    while got.len() < N as usize {
        let seen = collect(&mut rt, &mut m, 1);
        match &seen[..] {
            [Input::Datagram(SocketId(1), f, data)] => {
                assert_eq!(*f, from);
                got.push(data[0]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    assert_eq!(rt.stats().datagrams_received, u64::from(N));

    // Stop after the first of a new burst, then close the socket and bind a new one with the same
    // id: the old socket's remaining datagrams are dropped, not delivered on the new one.
    for i in 0..N {
        peer.send_to(&[i], a).unwrap();
    }
    let seen = collect(&mut rt, &mut m, 1);
    assert_eq!(seen, vec![Input::Datagram(SocketId(1), from, vec![0])]);
    m.ops.push_back(SocketOp::Close {
        socket: SocketId(1),
    });
    m.ops
        .push_back(udp_bind(1, "127.0.0.1:0", BindOptions::default()));
    let mut seen = Vec::new();
    let end = rt
        .run(&mut m, Some(Duration::from_millis(200)), |_, _, input| {
            seen.push(input);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(end, RunEnd::TimeLimit);
    assert!(
        matches!(
            &seen[..],
            [Input::Result(SocketId(1), SocketOutcome::Bound { .. })]
        ),
        "{seen:?}"
    );
    assert_eq!(rt.stats().datagrams_received, u64::from(N) + 1);
}

//! Machine contract tests: close idempotency, exactly-once socket closes, determinism, the
//! `Machine` trait, limits on commands.

use std::time::Duration;

use p2pd_proto::testing::{ContractChecker, Driven};
use p2pd_proto::{
    DropReason, Instant, Machine, OpKind, Outputs, SocketId, SocketOp, SocketOutcome, Transmit,
    Verdict,
};

use super::harness::*;
use crate::pnp::*;

#[test]
fn server_close_is_idempotent_and_closes_each_socket_once() {
    let mut w = World::new(server_config());
    let c1 = w.raw_connect("198.51.100.1:40000".parse().unwrap());
    let c2 = w.raw_connect("198.51.100.2:40000".parse().unwrap());
    w.server.clock(w.now).input(|s, now| s.close(now));
    w.server.clock(w.now).input(|s, now| s.close(now));
    let ops = w.server.take_ops();
    let mut closed: Vec<SocketId> = ops
        .iter()
        .map(|op| match op {
            SocketOp::Close { socket } => *socket,
            other => panic!("{other:?}"),
        })
        .collect();
    closed.sort();
    assert_eq!(closed, vec![UDP_SOCKET, TCP_LISTENER, c1, c2]);
    let events = w.server.take_events();
    assert_eq!(events, vec![PnpServerEvent::Closed]);
    assert_eq!(w.server.deadline(), None);
    assert_eq!(
        w.server
            .clock(w.now)
            .datagram(UDP_SOCKET, "198.51.100.1:1".parse().unwrap(), &[1]),
        Verdict::Dropped(DropReason::Closed)
    );
    // A connection the runtime accepted just before the close is still closed, once (after
    // Closed: the one output the contract allows there).
    w.server.clock(w.now).outcome(
        SocketId(10),
        SocketOutcome::Accepted {
            local: server_addr(),
            remote: "198.51.100.3:1".parse().unwrap(),
        },
    );
    assert_eq!(
        w.server.take_ops(),
        vec![SocketOp::Close {
            socket: SocketId(10)
        }]
    );
    w.server.clock(w.now + Duration::from_secs(100)).fire();
    assert_eq!(w.server.take_ops(), vec![]);
    w.server.checker.assert_all_closed();
}

#[test]
fn server_without_tcp_and_failed_sockets() {
    let mut config = server_config();
    config.tcp = None;
    let server = PnpServer::new(config.clone(), id(200), MemoryStore::new(1), 1).unwrap();
    let mut server = driven(server);
    let ops = server.take_ops();
    assert!(matches!(
        ops[..],
        [SocketOp::Bind {
            socket: UDP_SOCKET,
            ..
        }]
    ));
    server.outcome(
        UDP_SOCKET,
        SocketOutcome::Failed {
            op: OpKind::Bind,
            destination: None,
            error: p2pd_proto::IoError::AddrInUse,
        },
    );
    assert!(matches!(
        server.take_events()[..],
        [PnpServerEvent::SocketFailed { .. }]
    ));
    server.input(|s, now| s.close(now));
    assert_eq!(server.take_ops(), vec![]); // the failed socket never existed
    server.checker.assert_all_closed();
    config.udp = None;
    assert_eq!(
        PnpServer::new(config, id(200), MemoryStore::new(1), 1).err(),
        Some(PnpConfigError::NoTransport)
    );
    let mut config = server_config();
    config.tcp_limits.max_connections = MAX_CONNECTIONS + 1;
    assert_eq!(
        PnpServer::new(config, id(200), MemoryStore::new(1), 1).err(),
        Some(PnpConfigError::BadConnectionLimit)
    );
}

/// A server driven through its contract checker (nothing answered yet).
fn driven<S: NameStore>(server: PnpServer<S>) -> Driven<PnpServer<S>> {
    let mut d = Driven::new("pnp server", server, |e| *e == PnpServerEvent::Closed);
    d.drain();
    d
}

/// A server whose binds are answered at once.
fn bound_server() -> Driven<PnpServer<MemoryStore>> {
    let server = PnpServer::new(server_config(), id(200), MemoryStore::new(1), 1).unwrap();
    let mut d = Driven::new("pnp server", server, |e| *e == PnpServerEvent::Closed)
        .answering(Driven::<PnpClient>::bind_answer());
    d.drain();
    d
}

fn closes_of(ops: &[SocketOp], socket: SocketId) -> usize {
    ops.iter()
        .filter(|op| **op == SocketOp::Close { socket })
        .count()
}

#[test]
fn listen_failure_closes_the_listener_once() {
    let mut server = bound_server();
    let _ = server.take_ops();
    server.outcome(
        TCP_LISTENER,
        SocketOutcome::Failed {
            op: OpKind::Listen,
            destination: None,
            error: p2pd_proto::IoError::Other(None),
        },
    );
    let mut closes = closes_of(&server.take_ops(), TCP_LISTENER);
    server.input(|s, now| s.close(now));
    closes += closes_of(&server.take_ops(), TCP_LISTENER);
    assert_eq!(closes, 1);
    server.checker.assert_all_closed();
}

#[test]
fn accept_completing_after_listen_failure_is_closed_once() {
    let mut server = bound_server();
    let accepts: Vec<SocketId> = server
        .take_ops()
        .into_iter()
        .filter_map(|op| match op {
            SocketOp::Accept { socket, .. } => Some(socket),
            _ => None,
        })
        .collect();
    let late = *accepts.first().expect("an accept per free slot");
    server.outcome(
        TCP_LISTENER,
        SocketOutcome::Failed {
            op: OpKind::Listen,
            destination: None,
            error: p2pd_proto::IoError::Other(None),
        },
    );
    let _ = server.take_ops();
    // The listener is gone, so no accept is outstanding: a stream still reported for one is
    // closed at once and never served.
    server.outcome(
        late,
        SocketOutcome::Accepted {
            local: "192.0.2.1:7000".parse().unwrap(),
            remote: "198.51.100.9:40000".parse().unwrap(),
        },
    );
    assert_eq!(server.take_ops(), vec![SocketOp::Close { socket: late }]);
    assert_eq!(server.machine.open_connections(), 0);
    server.input(|s, now| s.close(now));
    let closes: Vec<SocketId> = server
        .take_ops()
        .into_iter()
        .filter_map(|op| match op {
            SocketOp::Close { socket } => Some(socket),
            _ => None,
        })
        .collect();
    assert!(!closes.contains(&late), "closed twice: {closes:?}");
    server.checker.assert_all_closed();
}

#[test]
fn client_close_fails_pending_and_closes_each_socket_once() {
    let mut w = World::new(server_config());
    let u = w.add_client(1, "198.51.100.1:4000", PnpTransport::Udp);
    let t = w.add_client(2, "198.51.100.2:4000", PnpTransport::Tcp);
    // Lose every UDP request so it stays pending; refuse nothing on TCP but never deliver
    // (the TCP request is answered and closed; a second one stays pending while binding).
    w.lose_requests.extend([true; 10]);
    let now = w.now;
    let rid = w
        .client(u)
        .clock(now)
        .input(|m, now| m.lookup(now, name("x")))
        .unwrap();
    w.pump();
    let tid = w
        .client(t)
        .clock(now)
        .input(|m, now| m.lookup(now, name("x")))
        .unwrap();
    // Do not pump the TCP client: its request is still binding.
    for c in [u, t] {
        w.client(c).clock(now).input(|m, now| m.close(now));
        w.client(c).clock(now).input(|m, now| m.close(now));
    }
    w.pump();
    let ev_u = std::mem::take(&mut w.clients[u].events);
    assert_eq!(
        ev_u,
        vec![
            PnpClientEvent::Failed {
                id: rid,
                reason: PnpFailure::Closed
            },
            PnpClientEvent::Closed
        ]
    );
    let ev_t = std::mem::take(&mut w.clients[t].events);
    assert_eq!(
        ev_t,
        vec![
            PnpClientEvent::Failed {
                id: tid,
                reason: PnpFailure::Closed
            },
            PnpClientEvent::Closed
        ]
    );
    assert_eq!(w.clients[u].closes, vec![CLIENT_UDP_SOCKET]);
    assert_eq!(w.clients[t].closes.len(), 1);
    assert_eq!(
        w.client(u)
            .clock(now)
            .input(|m, now| m.lookup(now, name("x"))),
        Err(PnpClientError::Closed)
    );
    assert_eq!(w.client(u).deadline(), None);
}

#[test]
fn tcp_peer_close_before_reply_fails_once() {
    let server = id(200);
    let config = PnpClientConfig::new(server_addr(), server.public_key(), PnpTransport::Tcp, EPOCH);
    let client = PnpClient::new(config, id(1), 1);
    let mut client = Driven::new("pnp client", client, |e| *e == PnpClientEvent::Closed)
        .at(Instant::from_millis(1));
    let rid = client.input(|c, now| c.lookup(now, name("x"))).unwrap();
    let [SocketOp::Bind { socket, local, .. }] = client.take_ops()[..] else {
        panic!()
    };
    client.outcome(socket, SocketOutcome::Bound { local });
    assert_eq!(
        client.take_ops(),
        vec![SocketOp::Connect {
            socket,
            remote: server_addr()
        }]
    );
    client.outcome(
        socket,
        SocketOutcome::Connected {
            local,
            remote: server_addr(),
        },
    );
    let (t, bytes) = client.take_transmits().into_iter().next().unwrap();
    assert_eq!(t.socket, socket);
    assert_eq!(
        usize::from(u16::from_be_bytes([bytes[0], bytes[1]])),
        t.len - 2
    );
    client.outcome(socket, SocketOutcome::PeerClosed);
    client.outcome(socket, SocketOutcome::PeerClosed);
    assert_eq!(client.take_ops(), vec![SocketOp::Close { socket }]);
    assert_eq!(
        client.take_events(),
        vec![PnpClientEvent::Failed {
            id: rid,
            reason: PnpFailure::ConnectionClosed
        }]
    );
    client.input(|c, now| c.close(now));
    assert_eq!(client.take_ops(), vec![]);
    client.checker.assert_all_closed();
}

#[test]
fn pending_requests_are_bounded() {
    let server = id(200);
    let mut config =
        PnpClientConfig::new(server_addr(), server.public_key(), PnpTransport::Udp, EPOCH);
    config.max_pending = 2;
    let mut client = PnpClient::new(config, id(1), 1);
    let now = Instant::ZERO;
    client.lookup(now, name("a")).unwrap();
    client.lookup(now, name("b")).unwrap();
    assert_eq!(
        client.lookup(now, name("c")),
        Err(PnpClientError::TooManyPending)
    );
    assert_eq!(
        client.register(
            now,
            name("c"),
            vec![0; MAX_VALUE_LEN + 1],
            1,
            Duration::ZERO
        ),
        Err(PnpClientError::TooManyPending)
    );
}

#[test]
fn same_seeds_same_bytes() {
    let run = || {
        let mut w = World::new(server_config());
        let a = w.add_client(1, "198.51.100.1:4000", PnpTransport::Udp);
        w.lose_replies.push_back(true);
        w.register(a, "alice", b"1", 1);
        w.lookup(a, "alice");
        w.captured.clone()
    };
    assert_eq!(run(), run());
}

#[derive(Default)]
struct Sink {
    transmits: Vec<(Transmit, Vec<u8>)>,
    ops: Vec<SocketOp>,
    events: usize,
}

impl<M: Machine + ?Sized> Outputs<M> for Sink {
    fn transmit(&mut self, transmit: Transmit, bytes: &[u8]) {
        self.transmits.push((transmit, bytes.to_vec()));
    }
    fn socket_op(&mut self, op: SocketOp) {
        self.ops.push(op);
    }
    fn event(&mut self, _: &mut M, _event: M::Event) -> std::ops::ControlFlow<()> {
        self.events += 1;
        std::ops::ControlFlow::Continue(())
    }
}

#[test]
fn machines_drive_through_the_trait_with_a_boxed_store() {
    let store: Box<dyn NameStore> = Box::new(MemoryStore::new(10));
    let mut server: Box<dyn Machine<Event = PnpServerEvent>> =
        Box::new(PnpServer::new(server_config(), id(200), store, 3).unwrap());
    let mut buf = vec![0u8; p2pd_proto::TRANSMIT_BUFFER_LEN];
    let mut sink = Sink::default();
    // The shared drain, checked, through the trait object.
    let mut checker = ContractChecker::new("boxed pnp server", |e| *e == PnpServerEvent::Closed);
    checker.input(Instant::ZERO);
    let deadline = checker
        .drain(server.as_mut(), &mut buf, &mut sink)
        .continue_value()
        .flatten();
    assert!(deadline.is_some());
    for op in std::mem::take(&mut sink.ops) {
        if let SocketOp::Bind { socket, local, .. } = op {
            let bound = SocketOutcome::Bound { local };
            checker.outcome(socket, &bound);
            server.handle_socket_result(Instant::ZERO, socket, bound);
        }
    }
    let _ = checker.drain(server.as_mut(), &mut buf, &mut sink);
    assert_eq!(sink.events, 2); // UDP and TCP listening
    let accepts = sink
        .ops
        .iter()
        .filter(|op| matches!(op, SocketOp::Accept { .. }))
        .count();
    assert_eq!(accepts, 65, "one accept per connection and the spare");

    let config = PnpClientConfig::new(
        server_addr(),
        id(200).public_key(),
        PnpTransport::Udp,
        EPOCH,
    );
    let mut client = PnpClient::new(config, id(1), 1);
    let mut checker = ContractChecker::new("dyn pnp client", |e| *e == PnpClientEvent::Closed);
    checker.input(Instant::ZERO);
    client.lookup(Instant::ZERO, name("x")).unwrap();
    let client: &mut dyn Machine<Event = PnpClientEvent> = &mut client;
    let mut sink = Sink::default();
    let deadline = checker
        .drain(client, &mut buf, &mut sink)
        .continue_value()
        .flatten();
    assert_eq!(deadline, Some(Instant::ZERO + Duration::from_secs(5)));
    assert_eq!(sink.ops.len(), 1);
}

//! Regressions of the node's probing (ports, retries, closing) and its API misuse errors.

use super::probes::probe_elsewhere;
use super::*;
use p2pd_nat::{Mapping, PortAllocation};
use p2pd_signaling::rendezvous::BrokerSpec;

/// A node's configuration with this STUN server (one broker, ignored in the external signaling
/// mode).
fn config(stun_server: SocketAddr) -> PunchNodeConfig {
    let brokers = vec![BrokerSpec::new(None, "192.0.2.10:1883".parse().unwrap())];
    PunchNodeConfig::new(
        RendezvousConfig::new(brokers, 1_800_000_000_000),
        stun_server,
    )
}

fn node(nat: Option<NatView>, secret: u8) -> PunchNode {
    let mut config = config("192.0.2.1:3478".parse().unwrap());
    config.nat = nat;
    let identity = Identity::from_secret_bytes(&[secret; 32]).unwrap();
    PunchNode::new(config, identity, [7; 32], 7, Instant::ZERO).unwrap()
}

fn peer() -> PublicKey {
    Identity::from_secret_bytes(&[9; 32]).unwrap().public_key()
}

/// The probes' (socket, local port) binds.
fn probe_binds(n: &mut PunchNode) -> Vec<(SocketId, u16)> {
    let mut out = Vec::new();
    while let Some(op) = n.poll_socket_op() {
        if let SocketOp::Bind { socket, local, .. } = op {
            if matches!(n.sockets.route(socket), Some((Part::Probe(_), _))) {
                out.push((socket, local.port()));
            }
        }
    }
    out
}

#[test]
fn closing_while_probing_closes_the_probe_socket() {
    // Regression: a probe that finished on close left the table before its `Close` was
    // polled, so its socket was never closed.
    let mut n = node(None, 1);
    n.punch(Instant::ZERO, peer()).unwrap();
    let binds = probe_binds(&mut n);
    assert_eq!(binds.len(), 1);
    n.close(Instant::ZERO);
    let mut closes = Vec::new();
    while let Some(op) = n.poll_socket_op() {
        if let SocketOp::Close { socket } = op {
            closes.push(socket);
        }
    }
    assert!(closes.contains(&binds[0].0), "{closes:?}");
    assert_eq!(
        closes.iter().filter(|s| **s == binds[0].0).count(),
        1,
        "closed once"
    );
}

#[test]
fn probes_run_from_another_port_when_the_prediction_follows_the_local_port() {
    // Regression: with a dependent mapping and preserving (or fixed-offset) allocation, a
    // kept-open probe from the punch port holds the external port the punch connection is
    // predicted to get.
    let view = |mapping, allocation| {
        Some(NatView {
            mapping,
            allocation,
        })
    };
    assert!(probe_elsewhere(view(
        Mapping::AddressAndPortDependent,
        PortAllocation::Preserving
    )));
    assert!(probe_elsewhere(view(
        Mapping::AddressDependent,
        PortAllocation::FixedOffset { offset: 10 }
    )));
    assert!(!probe_elsewhere(view(
        Mapping::EndpointIndependent,
        PortAllocation::Preserving
    )));
    assert!(!probe_elsewhere(view(
        Mapping::AddressAndPortDependent,
        PortAllocation::Sequential { stride: 1 }
    )));
    assert!(!probe_elsewhere(None));
    let mut n = node(
        view(Mapping::AddressAndPortDependent, PortAllocation::Preserving),
        1,
    );
    n.punch(Instant::ZERO, peer()).unwrap();
    let binds = probe_binds(&mut n);
    assert_eq!(binds.len(), 1);
    let punch_port = n.probes[0].port;
    assert_ne!(binds[0].1, punch_port);
    let mut same = node(None, 1);
    same.punch(Instant::ZERO, peer()).unwrap();
    let binds = probe_binds(&mut same);
    assert_eq!(binds[0].1, same.probes[0].port);
}

#[test]
fn a_round_whose_probes_all_fail_is_probed_again_from_fresh_ports() {
    // Regression: one lost probe ended the whole punch with `NoSockets`.
    use p2pd_proto::{IoError, OpKind};
    let mut n = node(None, 1);
    n.punch(Instant::ZERO, peer()).unwrap();
    let mut seen = Vec::new();
    for attempt in 0..3 {
        let binds = probe_binds(&mut n);
        assert_eq!(binds.len(), 1, "attempt {attempt}");
        let (socket, port) = binds[0];
        assert!(!seen.contains(&port), "fresh port");
        seen.push(port);
        n.handle_socket_result(
            Instant::ZERO,
            socket,
            SocketOutcome::Failed {
                op: OpKind::Bind,
                destination: None,
                error: IoError::AddrInUse,
            },
        );
    }
    assert!(probe_binds(&mut n).is_empty(), "no fourth attempt");
    let events: Vec<NodeEvent> = core::iter::from_fn(|| n.poll_event()).collect();
    let probe_failures = events
        .iter()
        .filter(|e| matches!(e, NodeEvent::ProbeFailed { .. }))
        .count();
    assert_eq!(probe_failures, 3, "{events:?}");
    assert!(
        matches!(
            events.last(),
            Some(NodeEvent::Failed(PunchFailure::NoSockets(_)))
        ),
        "{events:?}"
    );
}

#[test]
fn api_misuse_is_a_typed_error() {
    let mut n = node(None, 1);
    assert_eq!(
        n.send(Instant::ZERO, b"x"),
        Err(PunchApiError::NotConnected)
    );
    assert_eq!(n.finish(Instant::ZERO), Err(PunchApiError::NotConnected));
    n.punch(Instant::ZERO, peer()).unwrap();
    assert_eq!(
        n.punch(Instant::ZERO, peer()),
        Err(PunchApiError::InProgress)
    );
    n.close(Instant::ZERO);
    assert_eq!(n.punch(Instant::ZERO, peer()), Err(PunchApiError::Closed));
}

/// Two established channels over an in-memory stream: (ours, the peer's).
fn channel_pair() -> (p2pd_channel::Channel, p2pd_channel::Channel) {
    use p2pd_channel::{Channel, ChannelConfig, Role};
    let (us, them) = (
        Identity::from_secret_bytes(&[1; 32]).unwrap(),
        Identity::from_secret_bytes(&[9; 32]).unwrap(),
    );
    let keys = |i: &Identity| ChannelKeys::new(i, [i.secret_bytes()[0]; 32]).unwrap();
    let role = Role::Initiator {
        expect: them.node_id(),
    };
    let mut a = Channel::new(
        ChannelConfig::default(),
        &keys(&us),
        role,
        b"t",
        [3; 32],
        Instant::ZERO,
    )
    .unwrap();
    let role = Role::Responder { expect: None };
    let mut b = Channel::new(
        ChannelConfig::default(),
        &keys(&them),
        role,
        b"t",
        [4; 32],
        Instant::ZERO,
    )
    .unwrap();
    for _ in 0..2 {
        let out = a.pending_transmit().to_vec();
        a.consume_transmit(out.len());
        b.handle_input(Instant::ZERO, &out);
        let out = b.pending_transmit().to_vec();
        b.consume_transmit(out.len());
        a.handle_input(Instant::ZERO, &out);
    }
    assert!(a.is_established() && b.is_established());
    (a, b)
}

#[test]
fn a_reset_before_the_peers_finish_is_a_failed_stream() {
    // Regression (punch_node_session): a reset (or any failure) of the punched stream before the
    // peer's authenticated FINISH was reported as a plain StreamClosed, like the peer's clean
    // end, so a forged RST could pass for the end of the data (`p2pd punch` exited 0).
    use p2pd_channel::stream::{SecureStream, StreamEvent};
    let reset = SocketOutcome::Failed {
        op: p2pd_proto::OpKind::Receive,
        destination: None,
        error: p2pd_proto::IoError::ConnectionReset,
    };
    let events = |s: &mut SecureStream| core::iter::from_fn(|| s.poll_event()).collect::<Vec<_>>();
    let (ours, _) = channel_pair();
    let mut stream = SecureStream::new(ours);
    stream.handle_outcome(Instant::ZERO, &reset);
    assert_eq!(
        events(&mut stream),
        vec![
            StreamEvent::Failed(ChannelFailure::Truncated),
            StreamEvent::PeerFinished
        ]
    );
    // After the peer's FINISH the data is whole: a reset then fails nothing more.
    let (ours, mut theirs) = channel_pair();
    let mut stream = SecureStream::new(ours);
    theirs.finish(Instant::ZERO).unwrap();
    stream.handle_bytes(Instant::ZERO, theirs.pending_transmit());
    stream.handle_outcome(Instant::ZERO, &reset);
    assert_eq!(events(&mut stream), vec![StreamEvent::PeerFinished]);
    assert!(!stream.is_open());
}

/// A host of the in-memory pair: a punch node in the external signaling mode, and a STUN server
/// (over TCP, on port 3478) for the other host's probes.
struct Host {
    node: PunchNode,
    stun: p2pd_proto::server::StunServer,
    sockets: SocketMap<HostPart>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum HostPart {
    Node,
    Stun,
}

impl Host {
    /// The host on `ip` with identity `secret`, whose node probes the STUN server on `peer_ip`.
    fn new(ip: &str, peer_ip: &str, secret: u8) -> Host {
        use p2pd_proto::server::{ServerConfig, StunServer};
        let identity = Identity::from_secret_bytes(&[secret; 32]).unwrap();
        let keys = ChannelKeys::new(&identity, [secret ^ 0x33; 32]).unwrap();
        let node = PunchNode::with_external_signaling(
            config(format!("{peer_ip}:3478").parse().unwrap()),
            keys,
            SeedSource::new([secret ^ 0x55; 32]),
            u64::from(secret),
            Instant::ZERO,
        )
        .unwrap();
        assert!(node.rendezvous().is_none());
        let stun = ServerConfig::single(format!("{ip}:3478").parse().unwrap()).with_tcp(true);
        Host {
            node,
            stun: StunServer::new(stun).unwrap(),
            sockets: SocketMap::new(),
        }
    }

    fn close(&mut self, now: Instant) {
        self.node.close(now);
        self.stun.close(now);
    }
}

impl Machine for Host {
    type Event = NodeEvent;

    fn handle_datagram(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        data: &[u8],
    ) -> Verdict {
        match self.sockets.route(socket) {
            Some((HostPart::Node, inner)) => self.node.handle_datagram(now, inner, from, data),
            Some((HostPart::Stun, inner)) => self.stun.handle_datagram(now, inner, from, data),
            None => Verdict::Dropped(DropReason::UnknownSocket),
        }
    }

    fn handle_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        match self.sockets.route(socket) {
            Some((HostPart::Node, inner)) => self.node.handle_stream(now, inner, data),
            Some((HostPart::Stun, inner)) => self.stun.handle_stream(now, inner, data),
            None => Verdict::Dropped(DropReason::UnknownSocket),
        }
    }

    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        match self.sockets.route(socket) {
            Some((HostPart::Node, inner)) => self.node.handle_socket_result(now, inner, outcome),
            Some((HostPart::Stun, inner)) => self.stun.handle_socket_result(now, inner, outcome),
            None => {}
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.node.poll_timeout().is_some_and(|t| t <= now) {
            self.node.handle_timeout(now);
        }
        if self.stun.poll_timeout().is_some_and(|t| t <= now) {
            self.stun.handle_timeout(now);
        }
    }

    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(t) = self
            .sockets
            .poll_transmit(HostPart::Node, &mut self.node, buf)
        {
            return Some(t);
        }
        self.sockets
            .poll_transmit(HostPart::Stun, &mut self.stun, buf)
    }

    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        if let Some(op) = self.sockets.poll_socket_op(HostPart::Node, &mut self.node) {
            return Some(op);
        }
        self.sockets.poll_socket_op(HostPart::Stun, &mut self.stun)
    }

    fn poll_event(&mut self) -> Option<NodeEvent> {
        while self.stun.poll_event().is_some() {}
        self.node.poll_event()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match (self.node.poll_timeout(), self.stun.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Moves every bytes between two taken streams (the runtime takes every transmit) until nothing
/// moves; returns the events each reported.
fn exchange(
    now: Instant,
    a: &mut SecureStream,
    b: &mut SecureStream,
) -> (
    Vec<p2pd_channel::stream::StreamEvent>,
    Vec<p2pd_channel::stream::StreamEvent>,
) {
    let mut buf = vec![0u8; TRANSMIT_BUFFER_LEN];
    loop {
        let mut moved = false;
        while let Some(n) = a.poll_transmit(&mut buf) {
            b.handle_bytes(now, &buf[..n]);
            moved = true;
        }
        while let Some(n) = b.poll_transmit(&mut buf) {
            a.handle_bytes(now, &buf[..n]);
            moved = true;
        }
        for s in [&mut *a, &mut *b] {
            if s.wants_settle() {
                s.handle_timeout(now);
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    (
        core::iter::from_fn(|| a.poll_event()).collect(),
        core::iter::from_fn(|| b.poll_event()).collect(),
    )
}

#[test]
fn two_nodes_with_external_signaling_punch_and_hand_over_their_streams() {
    use p2pd_channel::stream::StreamEvent;
    use p2pd_proto::testing::Pair;
    use std::time::Duration;
    let (a_key, b_key) = (1u8, 9u8);
    let public = |k: u8| Identity::from_secret_bytes(&[k; 32]).unwrap().public_key();
    let mut pair = Pair::new(
        Host::new("10.0.0.1", "10.0.0.2", a_key),
        Host::new("10.0.0.2", "10.0.0.1", b_key),
    )
    .latency(Duration::from_millis(15), Duration::from_millis(15))
    .final_events(
        |e| matches!(e, NodeEvent::Closed),
        |e| matches!(e, NodeEvent::Closed),
    );
    pair.input_a(|m, now| m.node.punch(now, public(b_key)))
        .unwrap();
    // The test is both nodes' signaling: every Signal goes to the other node at once. Each
    // stream is taken as soon as its node reports Connected.
    let mut taken: [Option<PunchedStream>; 2] = [None, None];
    let mut signals = [0usize; 2];
    let mut seen = Vec::new();
    let done = pair.drive_until(|p| {
        loop {
            let events = [p.a.take_events(), p.b.take_events()];
            if events.iter().all(Vec::is_empty) {
                break;
            }
            for (side, events) in events.into_iter().enumerate() {
                for ev in events {
                    match ev {
                        NodeEvent::Signal { to, payload } => {
                            signals[side] += 1;
                            if side == 0 {
                                assert_eq!(to, public(b_key));
                                p.input_b(|m, now| {
                                    m.node.handle_signal(now, public(a_key), &payload)
                                });
                            } else {
                                assert_eq!(to, public(a_key));
                                p.input_a(|m, now| {
                                    m.node.handle_signal(now, public(b_key), &payload)
                                });
                            }
                        }
                        NodeEvent::Connected { peer, .. } => {
                            let stream = if side == 0 {
                                p.input_a(|m, _| m.node.take_stream())
                            } else {
                                p.input_b(|m, _| m.node.take_stream())
                            }
                            .expect("connected: the stream is there to take");
                            assert_eq!(stream.peer, peer);
                            assert_eq!(stream.peer, public(if side == 0 { b_key } else { a_key }));
                            taken[side] = Some(stream);
                        }
                        other => seen.push((side, other)),
                    }
                }
            }
        }
        taken.iter().all(Option::is_some)
    });
    assert!(done, "{seen:?}");
    assert!(signals[0] > 0 && signals[1] > 0, "{signals:?}");
    assert!(
        !seen.iter().any(|(_, e)| matches!(
            e,
            NodeEvent::Failed(_) | NodeEvent::Data(_) | NodeEvent::StreamClosed
        )),
        "{seen:?}"
    );
    let [Some(mut a), Some(mut b)] = taken else {
        unreachable!()
    };
    // The sockets are the caller's now; the nodes forgot them.
    let outer_a = pair
        .a
        .machine
        .sockets
        .outer(HostPart::Node, a.socket)
        .unwrap();
    let outer_b = pair
        .b
        .machine
        .sockets
        .outer(HostPart::Node, b.socket)
        .unwrap();
    pair.a.checker.released(outer_a);
    pair.b.checker.released(outer_b);
    assert_eq!(pair.a.local_addr(outer_a), Some(a.local));
    assert_eq!(a.remote, b.local);
    assert_eq!(b.remote, a.local);
    assert!(!pair.a.machine.node.is_connected() && pair.a.machine.node.take_stream().is_none());
    assert_eq!(pair.a.machine.node.stream_socket(), None);
    // Both channels are established (the follower got the leader's last handshake message
    // through its node); drive the two streams directly.
    assert!(a.stream.is_established() && b.stream.is_established());
    let now = pair.now();
    a.stream.send(now, b"ping").unwrap();
    b.stream.send(now, b"pong").unwrap();
    let (a_events, b_events) = exchange(now, &mut a.stream, &mut b.stream);
    assert_eq!(a_events, vec![StreamEvent::Data(b"pong".to_vec())]);
    assert_eq!(b_events, vec![StreamEvent::Data(b"ping".to_vec())]);
    a.stream.finish(now).unwrap();
    let (_, b_events) = exchange(now, &mut a.stream, &mut b.stream);
    assert!(a.stream.poll_shutdown());
    assert_eq!(b_events, vec![StreamEvent::PeerFinished]);
    // Closing the nodes closes everything of theirs, never the taken sockets.
    pair.input_a(|m, now| m.close(now));
    pair.input_b(|m, now| m.close(now));
    pair.drive_for(Duration::from_secs(1));
    for (ops, outer) in [(&pair.a.ops, outer_a), (&pair.b.ops, outer_b)] {
        assert!(
            !ops.iter()
                .any(|op| matches!(op, SocketOp::Close { socket } if *socket == outer)),
            "{ops:?}"
        );
    }
    let closed = |events: &[NodeEvent]| events.last() == Some(&NodeEvent::Closed);
    assert!(closed(&pair.a.take_events()) && closed(&pair.b.take_events()));
    pair.a.checker.assert_all_closed();
    pair.b.checker.assert_all_closed();
}

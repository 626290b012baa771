//! Regressions of the node's probing (ports, retries, closing) and its API misuse errors.

use super::probes::probe_elsewhere;
use super::*;
use p2pd_nat::{Mapping, PortAllocation};
use p2pd_signaling::rendezvous::BrokerSpec;

fn node(nat: Option<NatView>, secret: u8) -> PunchNode {
    let brokers = vec![BrokerSpec::new(None, "192.0.2.10:1883".parse().unwrap())];
    let mut config = PunchNodeConfig::new(
        RendezvousConfig::new(brokers, 1_800_000_000_000),
        "192.0.2.1:3478".parse().unwrap(),
    );
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

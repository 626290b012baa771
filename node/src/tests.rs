//! The node against hand-played peers: strangers on the listener, the accept list, a genuine
//! inbound stream.

use core::net::SocketAddr;

use p2pd_channel::{Channel, ChannelConfig, ChannelKeys, Role};
use p2pd_proto::{Instant, Machine, SocketId, SocketOp, SocketOutcome, TRANSMIT_BUFFER_LEN};
use p2pd_signaling::rendezvous::{BrokerSpec, RendezvousConfig};
use p2pd_signaling::Identity;

use crate::ladder::OPEN;
use crate::wire::{Preface, PrefaceKind};
use crate::{NatSource, Node, NodeConfig, NodeEvent};

const LOCAL: &str = "10.0.0.1:4000";

fn identity(b: u8) -> Identity {
    Identity::from_secret_bytes(&[b; 32]).unwrap()
}

fn node(accept_from: Option<Vec<p2pd_signaling::NodeId>>) -> Node {
    let broker = BrokerSpec::new(None, "192.0.2.10:1883".parse().unwrap());
    let mut config = NodeConfig::new(
        RendezvousConfig::new(vec![broker], 1_800_000_000_000),
        vec![],
    );
    config.local_ip = "10.0.0.1".parse().unwrap();
    config.listen_port = 4000;
    config.nat = NatSource::Known(Some(OPEN));
    config.accept_from = accept_from;
    Node::new(config, identity(1), [7; 32], 7, Instant::ZERO).unwrap()
}

#[derive(Default)]
struct Out {
    transmits: Vec<(SocketId, Vec<u8>)>,
    ops: Vec<SocketOp>,
    events: Vec<NodeEvent>,
}

fn drain(n: &mut Node) -> Out {
    let mut out = Out::default();
    let mut buf = [0u8; TRANSMIT_BUFFER_LEN];
    loop {
        let mut any = false;
        while let Some(t) = n.poll_transmit(&mut buf) {
            any = true;
            out.transmits.push((t.socket, buf[..t.len].to_vec()));
        }
        while let Some(op) = n.poll_socket_op() {
            any = true;
            out.ops.push(op);
        }
        while let Some(e) = n.poll_event() {
            any = true;
            out.events.push(e);
        }
        if !any {
            return out;
        }
    }
}

/// The node with its listener bound; the accept it keeps outstanding.
struct Listening {
    node: Node,
    accept: SocketId,
}

fn listening(accept_from: Option<Vec<p2pd_signaling::NodeId>>) -> Listening {
    let mut n = node(accept_from);
    let out = drain(&mut n);
    let listener = out
        .ops
        .iter()
        .find_map(|op| match op {
            SocketOp::Bind { socket, local, .. } if *local == LOCAL.parse().unwrap() => {
                Some(*socket)
            }
            _ => None,
        })
        .expect("listener bind");
    n.handle_socket_result(
        Instant::ZERO,
        listener,
        SocketOutcome::Bound {
            local: LOCAL.parse().unwrap(),
        },
    );
    let out = drain(&mut n);
    let accept = next_accept(&out).expect("an accept outstanding");
    Listening { node: n, accept }
}

fn next_accept(out: &Out) -> Option<SocketId> {
    out.ops.iter().rev().find_map(|op| match op {
        SocketOp::Accept { socket, .. } => Some(*socket),
        _ => None,
    })
}

impl Listening {
    /// Accepts a connection from `remote`: its socket.
    fn accept(&mut self, remote: &str) -> SocketId {
        let s = self.accept;
        self.node.handle_socket_result(
            Instant::ZERO,
            s,
            SocketOutcome::Accepted {
                local: LOCAL.parse().unwrap(),
                remote: remote.parse::<SocketAddr>().unwrap(),
            },
        );
        let out = drain(&mut self.node);
        self.accept = next_accept(&out).expect("the listener keeps accepting");
        s
    }
}

fn closed(out: &Out, socket: SocketId) -> bool {
    out.ops.contains(&SocketOp::Close { socket })
}

#[test]
fn a_stranger_on_the_listener_gets_nothing_but_a_close() {
    let mut l = listening(None);
    let s = l.accept("198.51.100.9:5555");
    let n = &mut l.node;
    let _ = n.handle_stream(Instant::ZERO, s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let out = drain(n);
    assert!(closed(&out, s), "{:?}", out.ops);
    assert!(
        out.transmits.iter().all(|(sock, _)| *sock != s),
        "nothing is sent to a stranger"
    );
    assert!(!out
        .events
        .iter()
        .any(|e| matches!(e, NodeEvent::Accepted { .. })));
    assert_eq!(n.stats().strangers, 1);
}

/// A peer that dials the node: the preface and its channel's first message; then the node's
/// answer in, our last message out.
fn handshake(n: &mut Node, s: SocketId, who: &Identity) -> (Channel, Out) {
    let keys = ChannelKeys::new(who, [9; 32]).unwrap();
    let preface = Preface {
        kind: PrefaceKind::Direct,
        token: [3; 16],
    };
    let mut ch = Channel::new(
        ChannelConfig::default(),
        &keys,
        Role::Initiator {
            expect: identity(1).node_id(),
        },
        &preface.context(),
        [5; 32],
        Instant::ZERO,
    )
    .unwrap();
    let mut first = preface.encode().to_vec();
    first.extend_from_slice(ch.pending_transmit());
    let n1 = ch.pending_transmit().len();
    ch.consume_transmit(n1);
    let _ = n.handle_stream(Instant::ZERO, s, &first);
    let out = drain(n);
    for (sock, bytes) in &out.transmits {
        if *sock == s {
            ch.handle_input(Instant::ZERO, bytes);
        }
    }
    assert!(ch.is_established(), "the node answered with its proof");
    let last = ch.pending_transmit().to_vec();
    ch.consume_transmit(last.len());
    let _ = n.handle_stream(Instant::ZERO, s, &last);
    (ch, drain(n))
}

#[test]
fn only_identities_on_the_accept_list_get_a_stream() {
    let friend = identity(2);
    let mut l = listening(Some(vec![friend.node_id()]));
    let s = l.accept("198.51.100.9:5555");
    let (_, out) = handshake(&mut l.node, s, &identity(3));
    assert!(closed(&out, s), "{:?}", out.ops);
    assert!(!out
        .events
        .iter()
        .any(|e| matches!(e, NodeEvent::Accepted { .. })));
    assert_eq!(l.node.stats().strangers, 1);

    let s = l.accept("198.51.100.10:5555");
    let n = &mut l.node;
    let (mut ch, out) = handshake(n, s, &friend);
    let stream = out
        .events
        .iter()
        .find_map(|e| match e {
            NodeEvent::Accepted { stream, peer, .. } if *peer == friend.public_key() => {
                Some(*stream)
            }
            _ => None,
        })
        .expect("the friend is accepted");
    // Bytes both ways, sealed.
    ch.send(Instant::ZERO, b"hello node").unwrap();
    let sealed = ch.pending_transmit().to_vec();
    ch.consume_transmit(sealed.len());
    assert!(
        !sealed.windows(10).any(|w| w == b"hello node"),
        "sealed on the wire"
    );
    let _ = n.handle_stream(Instant::ZERO, s, &sealed);
    n.send(Instant::ZERO, stream, b"hello peer").unwrap();
    let out = drain(n);
    assert!(out
        .events
        .iter()
        .any(|e| matches!(e, NodeEvent::Data { bytes, .. } if bytes == b"hello node")));
    for (sock, bytes) in &out.transmits {
        if *sock == s {
            ch.handle_input(Instant::ZERO, bytes);
        }
    }
    let got: Vec<u8> = std::iter::from_fn(|| ch.poll_event())
        .filter_map(|e| match e {
            p2pd_channel::ChannelEvent::Data(d) => Some(d),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(got, b"hello peer");
}

#[test]
fn close_releases_every_socket_once_and_ends_with_closed() {
    let mut l = listening(None);
    let s = l.accept("198.51.100.9:5555");
    let n = &mut l.node;
    n.close(Instant::ZERO);
    let out = drain(n);
    assert!(
        closed(&out, s),
        "the handshaking connection is closed: {:?}",
        out.ops
    );
    let closes = out
        .ops
        .iter()
        .filter(|op| **op == SocketOp::Close { socket: s })
        .count();
    assert_eq!(closes, 1);
    n.close(Instant::ZERO);
    assert!(drain(n).ops.is_empty(), "close is idempotent");
}

// ----- closing relayed streams: the FINISH acknowledgement -----

/// A node with one accepted stream from identity 2 on socket `s`, the peer's channel `ch`.
struct Streamed {
    node: Node,
    s: SocketId,
    stream: crate::StreamId,
    ch: Channel,
}

fn streamed(relayed: bool) -> Streamed {
    let mut l = listening(None);
    let s = l.accept("198.51.100.9:5555");
    let (mut ch, out) = handshake(&mut l.node, s, &identity(2));
    while ch.poll_event().is_some() {}
    let stream = out
        .events
        .iter()
        .find_map(|e| match e {
            NodeEvent::Accepted { stream, .. } => Some(*stream),
            _ => None,
        })
        .expect("accepted");
    if relayed {
        l.node.pretend_relayed(stream);
    }
    Streamed {
        node: l.node,
        s,
        stream,
        ch,
    }
}

fn at(ms: u64) -> Instant {
    Instant::ZERO.saturating_add(core::time::Duration::from_millis(ms))
}

impl Streamed {
    /// Runs the node at `now` (settling its transmits) until it is quiet; everything it did.
    fn run(&mut self, now: Instant) -> Out {
        let mut all = Out::default();
        loop {
            self.node.handle_timeout(now);
            let out = drain(&mut self.node);
            let quiet = out.transmits.is_empty() && out.ops.is_empty() && out.events.is_empty();
            all.transmits.extend(out.transmits);
            all.ops.extend(out.ops);
            all.events.extend(out.events);
            if quiet {
                return all;
            }
        }
    }

    /// What the node wrote to the peer's socket, read by the peer's channel: its events.
    fn deliver_to_peer(&mut self, out: &Out, now: Instant) -> Vec<p2pd_channel::ChannelEvent> {
        for (sock, bytes) in &out.transmits {
            if *sock == self.s {
                self.ch.handle_input(now, bytes);
            }
        }
        std::iter::from_fn(|| self.ch.poll_event()).collect()
    }

    /// The peer's pending bytes into the node; what the node did.
    fn take_from_peer(&mut self, now: Instant) -> Out {
        let bytes = self.ch.pending_transmit().to_vec();
        self.ch.consume_transmit(bytes.len());
        let _ = self.node.handle_stream(now, self.s, &bytes);
        self.run(now)
    }

    /// Runs the node at `now`: whether the stream closed then.
    fn closes_at(&mut self, now: Instant) -> bool {
        let out = self.run(now);
        self.closed_stream(&out)
    }

    fn closed_stream(&self, out: &Out) -> bool {
        closed(out, self.s)
            && out.events.contains(&NodeEvent::StreamClosed {
                stream: self.stream,
            })
    }
}

#[test]
fn a_relayed_stream_lingers_until_the_peer_acknowledges_our_finish() {
    use p2pd_channel::ChannelEvent;
    let mut t = streamed(true);
    // The peer says its last and finishes first; the node acknowledges it.
    t.ch.send(at(1), b"request").unwrap();
    t.ch.finish(at(1)).unwrap();
    let out = t.take_from_peer(at(1));
    assert!(out
        .events
        .contains(&NodeEvent::PeerFinished { stream: t.stream }));
    assert_eq!(
        t.deliver_to_peer(&out, at(1)),
        [ChannelEvent::FinishAcknowledged]
    );
    // We answer, finish and close at once: our FINISH is out but not acknowledged yet, so the
    // stream lingers (no Shutdown, no Close: coturn would reset the peer's leg and drop the
    // bytes it still holds).
    t.node.send(at(2), t.stream, b"response").unwrap();
    t.node.finish(at(2), t.stream).unwrap();
    let out = t.run(at(2));
    assert!(out
        .events
        .contains(&NodeEvent::Finished { stream: t.stream }));
    t.node.close_stream(at(2), t.stream).unwrap();
    let closing = t.run(at(2));
    assert!(closing.ops.is_empty(), "lingers: {:?}", closing.ops);
    assert!(!t.closes_at(at(10_000)), "still lingering");
    // The peer reads the response and FINISH (they were in the relay) and acknowledges.
    assert_eq!(
        t.deliver_to_peer(&out, at(10_000)),
        [
            ChannelEvent::Data(b"response".to_vec()),
            ChannelEvent::PeerFinished
        ]
    );
    let out = t.take_from_peer(at(10_001));
    assert!(t.closed_stream(&out), "{out:?}", out = out.ops);
    // The FIN the relay could not carry goes out with the close (the runtime flushes first).
    let shutdown = out
        .ops
        .iter()
        .position(|op| *op == SocketOp::Shutdown { socket: t.s });
    let close = out
        .ops
        .iter()
        .position(|op| *op == SocketOp::Close { socket: t.s });
    assert!(shutdown < close && shutdown.is_some(), "{:?}", out.ops);
    assert!(
        !out.events
            .iter()
            .any(|e| matches!(e, NodeEvent::FinishAcknowledged { .. })),
        "nothing but StreamClosed after the close"
    );
}

#[test]
fn crossing_finishes_on_a_relayed_stream_are_acknowledged_both_ways_before_the_close() {
    use p2pd_channel::ChannelEvent;
    let mut t = streamed(true);
    // Both finish before either FINISH arrives; we close at once.
    t.node.send(at(1), t.stream, b"ours").unwrap();
    t.node.finish(at(1), t.stream).unwrap();
    let ours = t.run(at(1));
    t.node.close_stream(at(1), t.stream).unwrap();
    assert!(t.run(at(1)).ops.is_empty(), "lingers");
    t.ch.send(at(1), b"theirs").unwrap();
    t.ch.finish(at(1)).unwrap();
    // Their FINISH crosses ours: we have theirs (a) and ack it, but ours is unacknowledged (b).
    let out = t.take_from_peer(at(2));
    assert!(!t.closed_stream(&out), "{:?}", out.ops);
    // The peer reads our bytes, our FINISH and the ack of its FINISH, and acks ours.
    let mut both = ours;
    both.transmits.extend(out.transmits);
    assert_eq!(
        t.deliver_to_peer(&both, at(3)),
        [
            ChannelEvent::Data(b"ours".to_vec()),
            ChannelEvent::PeerFinished,
            ChannelEvent::FinishAcknowledged
        ]
    );
    let out = t.take_from_peer(at(4));
    assert!(t.closed_stream(&out), "{:?}", out.ops);
}

#[test]
fn a_lingering_relayed_stream_closes_when_the_relay_ends_it_or_the_linger_runs_out() {
    // No ack ever: the linger runs out.
    let mut t = streamed(true);
    t.node.finish(at(1), t.stream).unwrap();
    t.run(at(1));
    t.node.close_stream(at(1), t.stream).unwrap();
    assert!(t.run(at(1)).ops.is_empty());
    let limit = crate::RELAY_LINGER.as_millis() as u64;
    assert!(!t.closes_at(at(limit)));
    assert!(t.closes_at(at(limit + 1)));

    // The relay resets the connection (the peer closed): the stream closes at once.
    let mut t = streamed(true);
    t.node.finish(at(1), t.stream).unwrap();
    t.run(at(1));
    t.node.close_stream(at(1), t.stream).unwrap();
    assert!(t.run(at(1)).ops.is_empty());
    t.node.handle_socket_result(
        at(5),
        t.s,
        SocketOutcome::Failed {
            op: p2pd_proto::OpKind::Receive,
            destination: None,
            error: p2pd_proto::IoError::ConnectionReset,
        },
    );
    assert!(t.closes_at(at(5)));
}

#[test]
fn direct_and_unfinished_relayed_streams_close_at_once() {
    for relayed in [false, true] {
        let mut t = streamed(relayed);
        if !relayed {
            // A direct stream we finished, unacknowledged: the FIN is its half-close.
            t.node.finish(at(1), t.stream).unwrap();
            let out = t.run(at(1));
            assert!(out.ops.contains(&SocketOp::Shutdown { socket: t.s }));
        }
        // (A relayed stream closed without finish is an abort.)
        t.node.close_stream(at(1), t.stream).unwrap();
        assert!(t.closes_at(at(1)), "relayed: {relayed}");
    }
}

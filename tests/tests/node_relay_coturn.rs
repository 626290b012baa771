//! Phase C on real sockets: two nodes (the mio runtime, one thread each) that cannot reach each
//! other any other way (both announce a symmetric NAT with random ports, and no external
//! address) connect through coturn on loopback (`--use-auth-secret`, TURN REST credentials made
//! by the node per allocation), signaling through mosquitto.
//!
//! - a long transfer both ways through the relay outlives several allocation lifetimes (coturn
//!   grants at most 4 s, the node's TURN client refreshes at half of it), the allocation is
//!   deallocated once the stream closes (coturn logs the Refresh with lifetime 0 and the
//!   delete), and only the connecting side allocated;
//! - failover: relays that refuse the connection, never answer, or refuse the credentials are
//!   each followed by the next configured one; with no good relay left the connect fails with
//!   the last relay's typed failure.
//!
//! Skipped (with a message) when coturn or mosquitto is not installed (a failure under
//! `CI=true`).

use p2pd_tests as common;

use std::net::{SocketAddr, TcpListener};
use std::ops::ControlFlow;
use std::sync::mpsc;
use std::time::{Duration, Instant as StdInstant};

use common::servers::Coturn;
use common::{Mosquitto, LO1};
use p2pd_mio::Runtime;
use p2pd_nat::{Filtering, Mapping, PortAllocation};
use p2pd_node::{
    CredentialSource, Credentials, NatSource, Node, NodeConfig, NodeEvent, Path, Phase,
    PhaseFailure, PhaseOutcome, PhaseReport, RelaySpec, SkipReason, StreamId, Target,
};
use p2pd_signaling::rendezvous::{BrokerSpec, RendezvousConfig};
use p2pd_signaling::{Identity, NatInfo, PeerAddress};
use p2pd_turn::TurnFailure;

const REALM: &str = "p2pd.test";
const SECRET: &str = "p2pd-relay-secret";

/// A NAT nothing gets through: symmetric mapping and filtering, random ports.
const SYMMETRIC_RANDOM: NatInfo = NatInfo {
    mapping: Mapping::AddressAndPortDependent,
    filtering: Filtering::AddressAndPortDependent,
    allocation: PortAllocation::Random,
};

fn servers() -> Option<(Coturn, Mosquitto)> {
    if !common::on_path("turnserver") {
        common::skip_or_fail("coturn (turnserver) not installed");
        return None;
    }
    let Some(broker) = Mosquitto::start() else {
        common::skip_or_fail("mosquitto not installed");
        return None;
    };
    let secret = format!("--static-auth-secret={SECRET}");
    let coturn = Coturn::start_turn(
        "node-relay",
        REALM,
        &["--use-auth-secret", &secret, "--max-allocate-lifetime=4"],
    );
    Some((coturn, broker))
}

/// The REST credentials of coturn's secret (or another).
fn rest(secret: &str) -> CredentialSource {
    CredentialSource::Rest {
        secret: secret.as_bytes().to_vec(),
        user: "node".into(),
        ttl: Duration::from_secs(3600),
    }
}

fn relay(server: SocketAddr, credentials: CredentialSource) -> RelaySpec {
    RelaySpec {
        server,
        credentials,
    }
}

/// A node on loopback that announces [`SYMMETRIC_RANDOM`] and only its local endpoint.
fn node(rt: &Runtime, broker: SocketAddr, secret: u8, relays: Vec<RelaySpec>) -> Node {
    let spec = BrokerSpec::new(None, broker);
    let mut rendezvous = RendezvousConfig::new(vec![spec], rt.unix_epoch_ms());
    rendezvous.mqtt.backoff_initial = Duration::from_millis(100);
    let mut config = NodeConfig::new(rendezvous, Vec::new());
    config.local_ip = LO1;
    config.nat = NatSource::Known(Some(SYMMETRIC_RANDOM));
    config.relays = relays;
    config.relay_timeout = Duration::from_secs(1);
    let identity = Identity::from_secret_bytes(&[secret; 32]).expect("identity");
    Node::new(
        config,
        identity,
        [secret ^ 0x55; 32],
        u64::from(secret),
        rt.now(),
    )
    .expect("node")
}

/// Runs `node` for up to `limit`, returning its events.
fn run(rt: &mut Runtime, node: &mut Node, limit: Duration) -> Vec<NodeEvent> {
    let mut seen = Vec::new();
    rt.run(node, Some(limit), |_, _, ev| {
        seen.push(ev);
        ControlFlow::Break(())
    })
    .expect("runtime");
    seen
}

/// Runs `node` until `pick` takes an event (panics after `limit`).
fn run_until<T>(
    rt: &mut Runtime,
    node: &mut Node,
    limit: Duration,
    what: &str,
    mut pick: impl FnMut(&NodeEvent) -> Option<T>,
) -> T {
    let until = StdInstant::now() + limit;
    let mut seen = Vec::new();
    while StdInstant::now() < until {
        for ev in run(rt, node, until.saturating_duration_since(StdInstant::now())) {
            if let Some(t) = pick(&ev) {
                return t;
            }
            seen.push(ev);
        }
    }
    panic!("no {what} within {limit:?}; events {seen:?}");
}

/// The peer: a node that echoes every stream's bytes until told to stop; reports its
/// allocations and the path of what it accepted.
fn echo_peer(
    broker: SocketAddr,
    address: mpsc::Sender<PeerAddress>,
    stop: mpsc::Receiver<()>,
) -> Peer {
    std::thread::spawn(move || {
        let mut rt = Runtime::new().expect("runtime");
        let mut b = node(&rt, broker, 0x42, Vec::new());
        let ready = run_until(
            &mut rt,
            &mut b,
            Duration::from_secs(10),
            "ready",
            |ev| match ev {
                NodeEvent::Ready { address, .. } => Some((**address).clone()),
                _ => None,
            },
        );
        address.send(ready).expect("send address");
        let mut paths = Vec::new();
        let mut pending: Vec<(StreamId, Vec<u8>)> = Vec::new();
        while stop.try_recv().is_err() {
            for ev in run(&mut rt, &mut b, Duration::from_millis(50)) {
                let now = rt.now();
                match ev {
                    NodeEvent::Accepted { path, .. } => paths.push(path),
                    NodeEvent::Data { stream, bytes } => pending.push((stream, bytes)),
                    NodeEvent::PeerFinished { stream } => {
                        let _ = b.finish(now, stream);
                    }
                    _ => {}
                }
            }
            // Echo what fits; the rest waits for room.
            let now = rt.now();
            for (stream, bytes) in &mut pending {
                if let Ok(n) = b.send(now, *stream, bytes) {
                    bytes.drain(..n);
                }
            }
            pending.retain(|(_, b)| !b.is_empty());
        }
        b.close(rt.now());
        run_until(&mut rt, &mut b, Duration::from_secs(10), "closed", |ev| {
            matches!(ev, NodeEvent::Closed).then_some(())
        });
        (b.stats().allocations, paths)
    })
}

/// A connecting node's outcome.
struct Outcome {
    rt: Runtime,
    a: Node,
    event: NodeEvent,
    /// The relays that failed on the way: (relay, failure, whether the next was tried).
    relay_failures: Vec<(SocketAddr, PhaseFailure, bool)>,
}

/// The echo peer's thread: its allocations and the paths it accepted.
type Peer = std::thread::JoinHandle<(u64, Vec<Path>)>;

/// Starts the echo peer and connects to it from a node with `relays`.
fn connect_through(
    broker: SocketAddr,
    relays: Vec<RelaySpec>,
) -> (Outcome, mpsc::Sender<()>, Peer) {
    let (addr_tx, addr_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel();
    let peer = echo_peer(broker, addr_tx, stop_rx);
    let address = addr_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the peer is ready");
    let mut rt = Runtime::new().expect("runtime");
    let mut a = node(&rt, broker, 0x41, relays);
    run_until(&mut rt, &mut a, Duration::from_secs(10), "ready", |ev| {
        matches!(ev, NodeEvent::Ready { .. }).then_some(())
    });
    a.connect(rt.now(), Target::Address(Box::new(address)))
        .expect("connect");
    let mut relay_failures = Vec::new();
    let event = run_until(&mut rt, &mut a, Duration::from_secs(20), "connect", |ev| {
        if let NodeEvent::RelayFailed {
            relay,
            failure,
            next,
            ..
        } = ev
        {
            relay_failures.push((*relay, failure.clone(), *next));
        }
        matches!(
            ev,
            NodeEvent::Connected { .. } | NodeEvent::ConnectFailed { .. }
        )
        .then(|| ev.clone())
    });
    (
        Outcome {
            rt,
            a,
            event,
            relay_failures,
        },
        stop_tx,
        peer,
    )
}

fn report(phases: &[PhaseReport], phase: Phase) -> &PhaseReport {
    phases
        .iter()
        .find(|p| p.phase == phase)
        .expect("every phase is reported")
}

#[test]
fn an_unpunchable_pair_connects_through_coturn_and_the_allocation_lives_as_long_as_the_stream() {
    let Some((coturn, broker)) = servers() else {
        return;
    };
    let (mut o, stop, peer) =
        connect_through(broker.addr(), vec![relay(coturn.primary, rest(SECRET))]);
    let NodeEvent::Connected {
        stream,
        path,
        phases,
        elapsed,
        ..
    } = o.event.clone()
    else {
        panic!(
            "not connected: {:?}\ncoturn log:\n{}",
            o.event,
            coturn.log()
        );
    };
    eprintln!("connected {path:?} in {elapsed:?}: {phases:?}");
    assert_eq!(path, Path::Relayed);
    assert_eq!(report(&phases, Phase::Relay).outcome, PhaseOutcome::Won);
    assert_eq!(
        report(&phases, Phase::Punch).outcome,
        PhaseOutcome::Skipped(SkipReason::Unpunchable)
    );
    assert_eq!(o.a.open_relays(), 1);

    // A long transfer: 48 chunks of 16 KiB, one every 250 ms (12 s, three times the granted
    // lifetime), echoed back by the peer.
    let started = StdInstant::now();
    let mut sent = Vec::new();
    let mut echoed = Vec::new();
    let mut backlog: Vec<u8> = Vec::new();
    for i in 0..48u32 {
        let chunk: Vec<u8> = (0..16 * 1024u32)
            .map(|j| (i.wrapping_mul(31) ^ j) as u8)
            .collect();
        sent.extend_from_slice(&chunk);
        backlog.extend_from_slice(&chunk);
        let until = StdInstant::now() + Duration::from_millis(250);
        while StdInstant::now() < until {
            if !backlog.is_empty() {
                if let Ok(n) = o.a.send(o.rt.now(), stream, &backlog) {
                    backlog.drain(..n);
                }
            }
            for ev in run(
                &mut o.rt,
                &mut o.a,
                until.saturating_duration_since(StdInstant::now()),
            ) {
                match ev {
                    NodeEvent::Data { bytes, .. } => echoed.extend_from_slice(&bytes),
                    NodeEvent::StreamFailed { .. } | NodeEvent::StreamClosed { .. } => {
                        panic!(
                            "the relayed stream ended after {:?}: {ev:?}\ncoturn log:\n{}",
                            started.elapsed(),
                            coturn.log()
                        )
                    }
                    _ => {}
                }
            }
        }
    }
    while !backlog.is_empty() {
        if let Ok(n) = o.a.send(o.rt.now(), stream, &backlog) {
            backlog.drain(..n);
        }
        for ev in run(&mut o.rt, &mut o.a, Duration::from_millis(50)) {
            if let NodeEvent::Data { bytes, .. } = ev {
                echoed.extend_from_slice(&bytes);
            }
        }
    }
    o.a.finish(o.rt.now(), stream).expect("finish");
    run_until(
        &mut o.rt,
        &mut o.a,
        Duration::from_secs(10),
        "the echo",
        |ev| match ev {
            NodeEvent::Data { bytes, .. } => {
                echoed.extend_from_slice(bytes);
                None
            }
            NodeEvent::PeerFinished { .. } => Some(()),
            _ => None,
        },
    );
    let took = started.elapsed();
    eprintln!(
        "{} bytes there and back through the relay in {took:?}",
        sent.len()
    );
    assert!(
        echoed == sent,
        "the echo differs ({} of {} bytes)",
        echoed.len(),
        sent.len()
    );
    assert!(
        took > Duration::from_secs(8),
        "the transfer outlived the lifetime twice"
    );
    let log = coturn.log();
    let refreshes = log.matches("REFRESH processed, success").count();
    assert!(
        refreshes >= 2,
        "coturn saw {refreshes} refreshes; log:\n{log}"
    );

    // Closing the stream deallocates.
    o.a.close_stream(o.rt.now(), stream).expect("close");
    let until = StdInstant::now() + Duration::from_secs(5);
    while o.a.open_relays() > 0 && StdInstant::now() < until {
        run(&mut o.rt, &mut o.a, Duration::from_millis(50));
    }
    assert_eq!(o.a.open_relays(), 0, "the allocation is released");
    let deleted =
        |log: &str| log.contains("lifetime=0") && log.contains("delete: realm=<p2pd.test>");
    let until = StdInstant::now() + Duration::from_secs(5);
    while !deleted(&coturn.log()) && StdInstant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(deleted(&coturn.log()), "coturn log:\n{}", coturn.log());
    assert_eq!(o.a.stats().allocations, 1);

    stop.send(()).expect("stop the peer");
    let (peer_allocations, accepted) = peer.join().expect("peer");
    assert_eq!(
        accepted,
        vec![Path::Relayed],
        "the peer accepted one relayed stream"
    );
    assert_eq!(peer_allocations, 0, "only the connecting side allocates");
    o.a.close(o.rt.now());
    run_until(
        &mut o.rt,
        &mut o.a,
        Duration::from_secs(10),
        "closed",
        |ev| matches!(ev, NodeEvent::Closed).then_some(()),
    );
    assert_eq!(o.rt.open_sockets(), 0);
}

#[test]
fn relays_that_refuse_never_answer_or_reject_the_credentials_are_followed_by_the_next() {
    let Some((coturn, broker)) = servers() else {
        return;
    };
    // Nothing listens here (refused), and here a listener never accepts (silence).
    let refused = TcpListener::bind((LO1, 0)).expect("bind");
    let refused_at = refused.local_addr().expect("addr");
    drop(refused);
    let silent = TcpListener::bind((LO1, 0)).expect("bind");
    let relays = vec![
        relay(refused_at, rest(SECRET)),
        relay(silent.local_addr().expect("addr"), rest(SECRET)),
        relay(coturn.primary, rest("not-the-secret")),
        relay(coturn.primary, rest(SECRET)),
    ];
    let (o, stop, peer) = connect_through(broker.addr(), relays);
    let NodeEvent::Connected { path, phases, .. } = &o.event else {
        panic!(
            "not connected: {:?}\ncoturn log:\n{}",
            o.event,
            coturn.log()
        );
    };
    eprintln!("connected {path:?} after failover: {phases:?}");
    assert_eq!(*path, Path::Relayed);
    assert_eq!(report(phases, Phase::Relay).outcome, PhaseOutcome::Won);
    assert!(
        report(phases, Phase::Relay).took >= Duration::from_secs(1),
        "the silent relay's timeout is part of it"
    );
    assert_eq!(o.a.stats().allocations, 4, "every relay was tried in turn");
    // Each failure was reported, typed, with the next relay tried.
    let failed: Vec<SocketAddr> = o.relay_failures.iter().map(|f| f.0).collect();
    assert_eq!(
        failed,
        vec![
            refused_at,
            silent.local_addr().expect("addr"),
            coturn.primary
        ],
        "{:?}",
        o.relay_failures
    );
    assert!(
        o.relay_failures.iter().all(|f| f.2),
        "{:?}",
        o.relay_failures
    );
    assert!(matches!(
        o.relay_failures[0].1,
        PhaseFailure::Relay(TurnFailure::ConnectFailed(_))
    ));
    assert_eq!(
        o.relay_failures[1].1,
        PhaseFailure::Relay(TurnFailure::Timeout)
    );
    assert!(matches!(
        o.relay_failures[2].1,
        PhaseFailure::Relay(TurnFailure::Unauthenticated | TurnFailure::WrongCredentials)
    ));
    stop.send(()).expect("stop");
    let _ = peer.join();

    // Only bad relays: the last one's failure, typed.
    let relays = vec![
        relay(refused_at, rest(SECRET)),
        relay(
            coturn.primary,
            CredentialSource::LongTerm(Credentials::long_term("nobody", "nothing")),
        ),
    ];
    let (o, stop, peer) = connect_through(broker.addr(), relays);
    let NodeEvent::ConnectFailed { phases, .. } = &o.event else {
        panic!("connected through bad relays: {:?}", o.event);
    };
    eprintln!("failed: {phases:?}");
    assert!(
        matches!(
            report(phases, Phase::Relay).outcome,
            PhaseOutcome::Failed(PhaseFailure::Relay(
                TurnFailure::WrongCredentials | TurnFailure::Unauthenticated
            ))
        ),
        "{phases:?}"
    );
    assert_eq!(o.a.stats().allocations, 2);
    let nexts: Vec<bool> = o.relay_failures.iter().map(|f| f.2).collect();
    assert_eq!(nexts, vec![true, false], "{:?}", o.relay_failures);
    stop.send(()).expect("stop");
    let _ = peer.join();
}

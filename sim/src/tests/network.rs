//! Hosts and sockets: bind rules, ephemeral ports, undeliverable packets, links, ordering.

use super::*;
use crate::{Host, LinkConfig, RawEvent, RawUdp};
use p2pd_proto::IoError;

const A: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

#[test]
fn binds_follow_socket_rules() {
    let mut sim = Sim::new(9);
    let h = sim.add_host(Host::public([A, B]), RawUdp::new());
    let ids = sim.with_machine::<RawUdp, _>(h, |m, _| {
        [
            m.bind(addr(A, 5000)),
            m.bind(addr(B, 5000)),
            m.bind(addr(Ipv4Addr::UNSPECIFIED, 5000)),
            m.bind(addr(Ipv4Addr::new(10, 9, 9, 9), 5001)),
            m.bind(addr(Ipv4Addr::UNSPECIFIED, 0)),
            m.bind(addr(Ipv4Addr::UNSPECIFIED, 0)),
        ]
    });
    let ev = sim.take_events::<RawUdp>(h);
    assert_eq!(ev.len(), 6);
    assert_eq!(
        ev[0],
        RawEvent::Bound {
            socket: ids[0],
            local: addr(A, 5000)
        }
    );
    assert_eq!(
        ev[1],
        RawEvent::Bound {
            socket: ids[1],
            local: addr(B, 5000)
        }
    );
    assert_eq!(
        ev[2],
        RawEvent::Failed {
            socket: ids[2],
            error: IoError::AddrInUse
        }
    );
    assert_eq!(
        ev[3],
        RawEvent::Failed {
            socket: ids[3],
            error: IoError::AddrNotAvailable
        }
    );
    let ephemeral: Vec<u16> = ev[4..]
        .iter()
        .map(|e| match e {
            RawEvent::Bound { local, .. } => local.port(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(ephemeral.iter().all(|p| *p >= 49152), "{ephemeral:?}");
    assert_ne!(ephemeral[0], ephemeral[1]);

    // Closing frees the port.
    sim.with_machine::<RawUdp, _>(h, |m, _| {
        m.close(ids[0]);
        m.bind(addr(A, 5000));
    });
    assert!(matches!(
        sim.take_events::<RawUdp>(h)[..],
        [RawEvent::Bound { .. }]
    ));
}

#[test]
fn packets_go_to_the_socket_bound_to_their_destination() {
    let mut sim = Sim::new(10);
    let h = sim.add_host(Host::public([A, B]), RawUdp::new());
    let p = sim.add_host(Host::public([PEER]), RawUdp::new());
    let (on_a, on_any) = sim.with_machine::<RawUdp, _>(h, |m, _| {
        (
            m.bind(addr(A, 5000)),
            m.bind(addr(Ipv4Addr::UNSPECIFIED, 5001)),
        )
    });
    let s = sim.with_machine::<RawUdp, _>(p, |m, _| m.bind(addr(PEER, 9)));
    sim.with_machine::<RawUdp, _>(p, |m, _| {
        m.send(s, addr(A, 5000), b"1");
        m.send(s, addr(B, 5000), b"2"); // nobody on B:5000
        m.send(s, addr(B, 5001), b"3");
        m.send(s, addr(Ipv4Addr::new(203, 0, 113, 99), 1), b"4"); // unroutable
    });
    sim.take_events::<RawUdp>(h);
    sim.run_for(Duration::from_millis(1));
    let got: Vec<(SocketId, Vec<u8>)> = sim
        .take_events::<RawUdp>(h)
        .into_iter()
        .filter_map(|e| match e {
            RawEvent::Received { socket, data, .. } => Some((socket, data)),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec![(on_a, b"1".to_vec()), (on_any, b"3".to_vec())]);
    assert_eq!(sim.stats().no_socket, 1);
    assert_eq!(sim.stats().unroutable, 1);
}

#[test]
fn equal_latency_keeps_order_and_jitter_reorders_deterministically() {
    fn arrivals(link: LinkConfig, seed: u64) -> (Vec<u8>, u64) {
        let mut sim = Sim::new(seed);
        sim.record_trace();
        let h = sim.add_host(Host::public([A]).with_link(link), RawUdp::new());
        let p = sim.add_host(Host::public([PEER]), RawUdp::new());
        let s = sim.with_machine::<RawUdp, _>(h, |m, _| m.bind(addr(A, 1)));
        sim.with_machine::<RawUdp, _>(p, |m, _| m.bind(addr(PEER, 2)));
        for i in 0..50u8 {
            sim.with_machine::<RawUdp, _>(h, |m, _| m.send(s, addr(PEER, 2), &[i]));
        }
        sim.run_for(Duration::from_secs(1));
        let order = sim.trace().iter().map(|t| t.data[0]).collect();
        (order, sim.trace_hash())
    }
    let fixed = LinkConfig::with_latency(Duration::from_millis(30));
    let (order, _) = arrivals(fixed, 1);
    assert_eq!(order, (0..50).collect::<Vec<u8>>());

    let messy = fixed
        .jitter(Duration::from_millis(5))
        .duplicate(0.2)
        .reorder(0.2, Duration::from_millis(50));
    let (order, hash) = arrivals(messy, 1);
    assert!(order.len() > 50, "some packets were duplicated");
    assert!(
        order.windows(2).any(|w| w[0] > w[1]),
        "some packets were reordered"
    );
    assert_eq!(arrivals(messy, 1), (order, hash));
    assert_ne!(arrivals(messy, 2).1, hash);
}

/// A machine whose deadline never advances.
struct Stuck;

impl p2pd_proto::Machine for Stuck {
    type Event = ();
    fn handle_datagram(
        &mut self,
        _: p2pd_proto::Instant,
        _: SocketId,
        _: SocketAddr,
        _: &[u8],
    ) -> p2pd_proto::Verdict {
        p2pd_proto::Verdict::NotMine
    }
    fn handle_socket_result(
        &mut self,
        _: p2pd_proto::Instant,
        _: SocketId,
        _: p2pd_proto::SocketOutcome,
    ) {
    }
    fn handle_timeout(&mut self, _: p2pd_proto::Instant) {}
    fn poll_transmit(&mut self, _: &mut [u8]) -> Option<p2pd_proto::Transmit> {
        None
    }
    fn poll_socket_op(&mut self) -> Option<p2pd_proto::SocketOp> {
        None
    }
    fn poll_event(&mut self) -> Option<()> {
        None
    }
    fn poll_timeout(&self) -> Option<p2pd_proto::Instant> {
        Some(p2pd_proto::Instant::from_millis(5))
    }
}

/// The contract checker every simulated host runs catches it after the second `handle_timeout` at
/// the same instant (the simulator's own limit, far later, is a backstop).
#[test]
#[should_panic(expected = "the caller would spin")]
fn a_machine_whose_deadline_never_advances_is_reported() {
    let mut sim = Sim::new(11);
    sim.add_host(Host::public([A]), Stuck);
    sim.run_for(Duration::from_secs(1));
}

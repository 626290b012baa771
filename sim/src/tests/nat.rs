//! NAT box details: mapping lifetime and hairpinning, with raw UDP peers.

use super::*;
use crate::{Host, RawEvent, RawUdp};

fn raw_bind(sim: &mut Sim, host: HostId, local: SocketAddr) -> SocketId {
    sim.with_machine::<RawUdp, _>(host, |m, _| m.bind(local))
}

fn raw_send(sim: &mut Sim, host: HostId, socket: SocketId, to: SocketAddr, data: &[u8]) {
    sim.with_machine::<RawUdp, _>(host, |m, _| m.send(socket, to, data));
}

/// The sources and payloads a raw host received since last asked.
fn received(sim: &mut Sim, host: HostId) -> Vec<(SocketAddr, Vec<u8>)> {
    sim.take_events::<RawUdp>(host)
        .into_iter()
        .filter_map(|e| match e {
            RawEvent::Received { from, data, .. } => Some((from, data)),
            _ => None,
        })
        .collect()
}

#[test]
fn an_idle_mapping_expires_and_outbound_traffic_refreshes_it() {
    let mut b = eim_eif();
    b.mapping_lifetime = Duration::from_secs(30);
    let mut sim = Sim::new(6);
    let nat = sim.add_nat(NAT_IP, b);
    let inside = sim.add_host_behind(nat, PRIV, RawUdp::new());
    let peer = sim.add_host(Host::public([PEER]), RawUdp::new());
    let s_in = raw_bind(&mut sim, inside, addr(Ipv4Addr::UNSPECIFIED, 6000));
    let s_peer = raw_bind(&mut sim, peer, addr(PEER, 7000));
    sim.take_events::<RawUdp>(inside);
    sim.take_events::<RawUdp>(peer);

    raw_send(&mut sim, inside, s_in, addr(PEER, 7000), b"hello");
    sim.run_for(Duration::from_secs(10));
    let got = received(&mut sim, peer);
    assert_eq!(got, vec![(addr(NAT_IP, 6000), b"hello".to_vec())]);
    let external = got[0].0;

    raw_send(&mut sim, peer, s_peer, external, b"at 10 s");
    sim.run_for(Duration::from_secs(10));
    assert_eq!(received(&mut sim, inside).len(), 1);

    // Outbound at 20 s refreshes the mapping until 50 s.
    raw_send(&mut sim, inside, s_in, addr(PEER, 7000), b"keepalive");
    sim.run_for(Duration::from_secs(25));
    raw_send(&mut sim, peer, s_peer, external, b"at 45 s");
    sim.run_for(Duration::from_secs(1));
    assert_eq!(
        received(&mut sim, inside).len(),
        1,
        "alive 25 s after the refresh"
    );

    // Inbound traffic does not refresh it: at 80 s it has been 60 s since the last outbound packet.
    sim.run_for(Duration::from_secs(34));
    raw_send(&mut sim, peer, s_peer, external, b"at 80 s");
    sim.run_for(Duration::from_secs(1));
    assert!(
        received(&mut sim, inside).is_empty(),
        "expired mapping drops inbound"
    );
    let stats = sim.nat_stats(nat);
    assert_eq!(stats.expired, 1);
    assert_eq!(stats.dropped_no_mapping, 1);
    assert_eq!(stats.mappings_created, 1);
    assert_eq!(sim.nat_mappings(nat), 0);
}

/// Two raw hosts behind one NAT; A sends to B's external address. What B receives.
fn hairpin(on: bool) -> (Vec<(SocketAddr, Vec<u8>)>, crate::NatStats) {
    let mut b = eim_eif();
    b.hairpinning = on;
    let mut sim = Sim::new(7);
    let nat = sim.add_nat(NAT_IP, b);
    let a = sim.add_host_behind(nat, PRIV, RawUdp::new());
    let bh = sim.add_host_behind(nat, Ipv4Addr::new(10, 0, 0, 3), RawUdp::new());
    let peer = sim.add_host(Host::public([PEER]), RawUdp::new());
    let sa = raw_bind(&mut sim, a, addr(Ipv4Addr::UNSPECIFIED, 6000));
    let sb = raw_bind(&mut sim, bh, addr(Ipv4Addr::UNSPECIFIED, 6001));
    raw_bind(&mut sim, peer, addr(PEER, 7000));
    raw_send(&mut sim, a, sa, addr(PEER, 7000), b"a");
    raw_send(&mut sim, bh, sb, addr(PEER, 7000), b"b");
    sim.run_for(Duration::from_millis(10));
    let seen: Vec<SocketAddr> = received(&mut sim, peer).into_iter().map(|r| r.0).collect();
    assert_eq!(seen, vec![addr(NAT_IP, 6000), addr(NAT_IP, 6001)]);
    sim.take_events::<RawUdp>(bh);

    raw_send(&mut sim, a, sa, seen[1], b"via the NAT");
    sim.run_for(Duration::from_millis(10));
    (received(&mut sim, bh), sim.nat_stats(nat))
}

#[test]
fn hairpinning_loops_back_only_when_enabled() {
    let (got, stats) = hairpin(true);
    assert_eq!(got, vec![(addr(NAT_IP, 6000), b"via the NAT".to_vec())]);
    assert_eq!(stats.dropped_hairpin, 0);

    let (got, stats) = hairpin(false);
    assert!(got.is_empty());
    assert_eq!(stats.dropped_hairpin, 1);
}

#[test]
fn hosts_behind_one_nat_reach_each_other_by_private_ip() {
    let mut sim = Sim::new(8);
    let nat = sim.add_nat(NAT_IP, eim_eif());
    let a = sim.add_host_behind(nat, PRIV, RawUdp::new());
    let b = sim.add_host_behind(nat, Ipv4Addr::new(10, 0, 0, 3), RawUdp::new());
    let sa = raw_bind(&mut sim, a, addr(PRIV, 6000));
    raw_bind(&mut sim, b, addr(Ipv4Addr::UNSPECIFIED, 6000));
    raw_send(
        &mut sim,
        a,
        sa,
        addr(Ipv4Addr::new(10, 0, 0, 3), 6000),
        b"lan",
    );
    sim.run_for(Duration::from_millis(1));
    assert_eq!(
        received(&mut sim, b),
        vec![(addr(PRIV, 6000), b"lan".to_vec())]
    );
    assert_eq!(sim.nat_stats(nat).mappings_created, 0);
}

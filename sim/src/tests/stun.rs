//! STUN through the simulator: RTT, mapping, filtering and port allocation per behaviour.

use super::*;
use crate::{Host, LinkConfig};
use p2pd_nat::{PortAllocation, PortRange};

#[test]
fn public_client_learns_its_address_with_rtt_twice_the_latency() {
    let mut sim = Sim::new(1);
    sim.add_stun_server(S1, S2, P1, P2);
    let me = Ipv4Addr::new(198, 51, 100, 7);
    let link = LinkConfig::with_latency(Duration::from_millis(25));
    let seed = sim.machine_seed();
    let client = sim.add_host(
        Host::public([me]).with_link(link),
        StunClient::new(quick(), seed),
    );
    let socket = open(&mut sim, client, 4000);
    let tx = start(&mut sim, client, socket, addr(S1, P1), ChangeRequest::NONE);
    sim.run_for(Duration::from_secs(1));
    let done = results(&mut sim, client);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].id, tx);
    let reply = done[0].outcome.as_ref().expect("answered");
    assert_eq!(reply.mapped, addr(me, 4000));
    assert_eq!(reply.rtt, Duration::from_millis(50));
    assert_eq!(reply.transmissions, 1);
    assert_eq!(reply.other_address, Some(addr(S2, P2)));
}

#[test]
fn mapping_behaviour_decides_when_the_mapped_address_changes() {
    for mapping in [
        Mapping::EndpointIndependent,
        Mapping::AddressDependent,
        Mapping::AddressAndPortDependent,
    ] {
        let b = Behaviour::new(mapping, Filtering::EndpointIndependent);
        let Setup {
            mut sim, client, ..
        } = behind(2, b);
        let socket = open(&mut sim, client, 5000);
        let a = mapped(&mut sim, client, socket, addr(S1, P1));
        let other_ip = mapped(&mut sim, client, socket, addr(S2, P1));
        let other_port = mapped(&mut sim, client, socket, addr(S1, P2));
        let again = mapped(&mut sim, client, socket, addr(S1, P1));
        assert_eq!(a.ip(), NAT_IP);
        assert_eq!(a, again, "{mapping:?}: a mapping is reused");
        match mapping {
            Mapping::EndpointIndependent => {
                assert_eq!(a, other_ip);
                assert_eq!(a, other_port);
            }
            Mapping::AddressDependent => {
                assert_ne!(a, other_ip);
                assert_eq!(a, other_port);
            }
            Mapping::AddressAndPortDependent => {
                assert_ne!(a, other_ip);
                assert_ne!(a, other_port);
                assert_ne!(other_ip, other_port);
            }
        }
    }
}

#[test]
fn filtering_behaviour_decides_which_change_requests_get_through() {
    for filtering in [
        Filtering::EndpointIndependent,
        Filtering::AddressDependent,
        Filtering::AddressAndPortDependent,
    ] {
        let b = Behaviour::new(Mapping::EndpointIndependent, filtering);
        let Setup {
            mut sim,
            nat,
            client,
        } = behind(3, b);
        let socket = open(&mut sim, client, 5000);
        let both = transact(&mut sim, client, socket, addr(S1, P1), ChangeRequest::BOTH);
        let port = transact(&mut sim, client, socket, addr(S1, P1), ChangeRequest::PORT);
        let (both_ok, port_ok) = match filtering {
            Filtering::EndpointIndependent => (true, true),
            Filtering::AddressDependent => (false, true),
            Filtering::AddressAndPortDependent => (false, false),
        };
        assert_eq!(both.is_ok(), both_ok, "{filtering:?}: change both");
        assert_eq!(port.is_ok(), port_ok, "{filtering:?}: change port");
        for r in [&both, &port] {
            match r {
                Ok(m) => assert_eq!(m.ip(), NAT_IP),
                Err(f) => assert!(matches!(f, Failure::Timeout { .. }), "{f:?}"),
            }
        }
        // Every retransmission's reply was filtered (3 per failed transaction).
        let filtered = 3 * u64::from(!both_ok) + 3 * u64::from(!port_ok);
        assert_eq!(sim.nat_stats(nat).dropped_filtered, filtered);
    }
}

/// The external ports a NAT with `allocation` gives sockets on `locals` (one binding each).
fn external_ports(allocation: PortAllocation, range: PortRange, locals: &[u16]) -> Vec<u16> {
    let mut b = eim_eif().with_allocation(allocation);
    b.port_range = range;
    let Setup {
        mut sim, client, ..
    } = behind(4, b);
    locals
        .iter()
        .map(|local| {
            let socket = open(&mut sim, client, *local);
            mapped(&mut sim, client, socket, addr(S1, P1)).port()
        })
        .collect()
}

#[test]
fn port_allocation_follows_the_behaviour() {
    let locals = [5000, 5001, 5002, 5005];
    let all = PortRange::ALL;
    assert_eq!(
        external_ports(PortAllocation::Preserving, all, &locals),
        locals
    );
    assert_eq!(
        external_ports(PortAllocation::FixedOffset { offset: 1000 }, all, &locals),
        [6000, 6001, 6002, 6005]
    );
    assert_eq!(
        external_ports(
            PortAllocation::FixedOffset { offset: 10 },
            PortRange::new(5000, 5009).unwrap(),
            &locals
        ),
        [5000, 5001, 5002, 5005],
        "offsets wrap within the range"
    );
    let seq = external_ports(PortAllocation::Sequential { stride: 7 }, all, &locals);
    assert_eq!(seq, [5000, 5007, 5014, 5021]);
    let dep = external_ports(
        PortAllocation::LocalPortDependent { stride: 3 },
        all,
        &locals,
    );
    assert_eq!(dep, [5000, 5003, 5006, 5015]);
    let range = PortRange::new(20000, 20099).unwrap();
    let random = external_ports(PortAllocation::Random, range, &locals);
    assert!(random.iter().all(|p| range.contains(*p)), "{random:?}");
    assert_ne!(random, locals);
    let mut distinct = random.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), random.len());
}

#[test]
fn preserving_falls_back_to_the_next_free_port() {
    let Setup {
        mut sim,
        client,
        nat,
    } = behind(5, eim_eif());
    let seed = sim.machine_seed();
    let other = sim.add_host_behind(
        nat,
        Ipv4Addr::new(10, 0, 0, 3),
        StunClient::new(quick(), seed),
    );
    let a = open(&mut sim, client, 5000);
    let b = open(&mut sim, other, 5000);
    assert_eq!(mapped(&mut sim, client, a, addr(S1, P1)).port(), 5000);
    assert_eq!(mapped(&mut sim, other, b, addr(S1, P1)).port(), 5001);
    assert_eq!(sim.nat_stats(nat).mappings_created, 2);
}

/// 40 transactions over a lossy, jittery, duplicating, reordering link with the RFC 5389 policy:
/// how many succeeded, and the trace hash.
fn lossy_run(seed: u64) -> (usize, u64) {
    let mut sim = Sim::new(seed);
    sim.add_stun_server(S1, S2, P1, P2);
    let nat = sim.add_nat(NAT_IP, eim_eif());
    let seed = sim.machine_seed();
    let client = sim.add_host_behind(nat, PRIV, StunClient::new(ClientConfig::default(), seed));
    let link = LinkConfig::with_latency(Duration::from_millis(20))
        .jitter(Duration::from_millis(15))
        .loss(0.3)
        .duplicate(0.05)
        .reorder(0.05, Duration::from_millis(40));
    sim.set_nat_link(nat, link);
    let socket = open(&mut sim, client, 5000);
    for i in 0..40u16 {
        let server = addr(if i % 2 == 0 { S1 } else { S2 }, P1);
        start(&mut sim, client, socket, server, ChangeRequest::NONE);
    }
    sim.run_for(Duration::from_secs(45));
    let done = results(&mut sim, client);
    assert_eq!(done.len(), 40, "every transaction ended");
    assert!(sim.stats().lost > 0);
    (
        done.iter().filter(|t| t.outcome.is_ok()).count(),
        sim.trace_hash(),
    )
}

#[test]
fn lossy_links_still_complete_most_transactions_deterministically() {
    crate::run_seeds(1..=3, |seed| {
        let (ok, hash) = lossy_run(seed);
        assert!(ok >= 36, "seed {seed}: only {ok} of 40 succeeded");
        assert_eq!(lossy_run(seed), (ok, hash), "same seed, same run");
        assert_ne!(lossy_run(seed + 100).1, hash, "another seed, another run");
    });
}

//! The node's targets and its address kept true, in simulation: a connect by public key (the
//! fresh address asked for over signaling), by `p2pd1:` address, and by name long after the first
//! registration would have expired (the node refreshes it).

use core::time::Duration;

use p2pd_node::{Node, NodeEvent, Path, Target};
use p2pd_signaling::pnp::Name;
use p2pd_sim::node_matrix::{Family, Layout, NodeWorld};
use p2pd_sim::punch_matrix::NatKind;

fn ready(w: &mut NodeWorld) {
    assert!(w.run_until(Duration::from_secs(40), |w| w.is_ready(0) && w.is_ready(1)));
}

/// Connects A to `target`; the path.
fn connect(w: &mut NodeWorld, target: Target) -> Result<Path, String> {
    let a = w.hosts[0];
    let before = w.events[0].len();
    w.sim
        .with_machine::<Node, _>(a, |n, now| n.connect(now, target))
        .map_err(|e| e.to_string())?;
    let outcome = |w: &NodeWorld| {
        w.events[0].iter().skip(before).find_map(|e| match e {
            NodeEvent::Connected { path, .. } => Some(Ok(*path)),
            NodeEvent::ConnectFailed { phases, .. } => Some(Err(format!("{phases:?}"))),
            _ => None,
        })
    };
    assert!(w.run_until(Duration::from_secs(60), |w| outcome(w).is_some()));
    outcome(w).unwrap_or_else(|| Err("no outcome".into()))
}

fn b_address(w: &NodeWorld) -> p2pd_signaling::PeerAddress {
    w.events[1]
        .iter()
        .rev()
        .find_map(|e| match e {
            NodeEvent::Ready { address, .. } => Some((**address).clone()),
            _ => None,
        })
        .expect("B is ready")
}

#[test]
fn a_key_and_an_address_are_targets_too() {
    let mut w = NodeWorld::new(
        3,
        Layout::Apart(NatKind::PortRestricted, NatKind::Open),
        0.0,
        Family::Given,
    );
    ready(&mut w);
    let address = b_address(&w);
    assert_eq!(
        connect(&mut w, Target::Key(address.public_key)),
        Ok(Path::Direct)
    );
    assert_eq!(
        connect(&mut w, Target::Address(Box::new(address))),
        Ok(Path::Direct)
    );
    let leaks = w.close_and_check();
    assert!(leaks.is_empty(), "{leaks:?}");
}

#[test]
fn the_name_stays_registered_past_its_first_lifetime() {
    let mut w = NodeWorld::new(
        4,
        Layout::Apart(NatKind::Open, NatKind::PortRestricted),
        0.0,
        Family::Given,
    );
    ready(&mut w);
    // The registration lives 10 minutes; the node refreshes it at half of that.
    w.run_for(Duration::from_secs(25 * 60));
    let name = Name::new("bob").expect("name");
    assert_eq!(connect(&mut w, Target::Name(name)), Ok(Path::Reverse));
    let leaks = w.close_and_check();
    assert!(leaks.is_empty(), "{leaks:?}");
}

#[test]
fn a_renumbered_nat_is_noticed_and_the_name_follows() {
    let mut w = NodeWorld::new(
        5,
        Layout::Apart(NatKind::Open, NatKind::PortRestricted),
        0.0,
        Family::Classified,
    );
    ready(&mut w);
    let before = b_address(&w);
    let old_ip: std::net::IpAddr = [203, 0, 113, 2].into();
    assert_eq!(before.interfaces[0].endpoints[0].ip, old_ip);
    // B's uplink gets a new public IP: its kept-open binding dies with the old mappings.
    let nat = w.nats[1].expect("B is behind a NAT");
    w.sim.renumber_nat(nat, [203, 0, 113, 9].into());
    let new_ip: std::net::IpAddr = [203, 0, 113, 9].into();
    let moved = |w: &NodeWorld| b_address(w).interfaces[0].endpoints[0].ip == new_ip;
    assert!(
        w.run_until(Duration::from_secs(300), moved),
        "B still announces {:?}",
        b_address(&w)
    );
    // Classified again after the move, and the name leads to the new address.
    assert!(b_address(&w).interfaces[0].nat.is_some());
    let name = Name::new("bob").expect("name");
    assert_eq!(connect(&mut w, Target::Name(name)), Ok(Path::Reverse));
    let leaks = w.close_and_check();
    assert!(leaks.is_empty(), "{leaks:?}");
}

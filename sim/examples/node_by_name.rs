//! Two whole nodes connect by name in the simulator, through three kinds of network: an open
//! host (direct), a NATed host reaching an open one that cannot be dialled back (reverse), two
//! port-restricted cones (punched), and random against symmetric (relay needed). Each run checks
//! the path against the oracle, bytes both ways and that nothing is left after close.
//!
//! `cargo run -p p2pd-sim --example node_by_name`

use p2pd_sim::node_matrix::{run_one, Family, Layout};
use p2pd_sim::punch_matrix::NatKind;

fn main() {
    for layout in [
        Layout::Apart(NatKind::PortRestricted, NatKind::Open),
        Layout::Apart(NatKind::Open, NatKind::SymmetricRandom),
        Layout::Apart(NatKind::PortRestricted, NatKind::PortRestricted),
        Layout::SameNat(NatKind::SymmetricRandom),
        Layout::Apart(NatKind::SymmetricRandom, NatKind::SymmetricSequential),
    ] {
        let o = run_one(layout, 0.0, 1, Family::Given);
        let what = match &o.result {
            Ok((path, took)) => format!("{} in {} ms (virtual)", path.as_str(), took.as_millis()),
            Err(e) => e.chars().take(60).collect(),
        };
        println!("{:<40} {what}", layout.label());
        assert!(o.correct, "{o:?}");
        assert!(o.leaks.is_empty(), "{:?}", o.leaks);
    }
}

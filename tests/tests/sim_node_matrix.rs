//! The node's connection ladder in simulation: every pair of NAT kinds (and two hosts behind one
//! NAT) connect by name; the path taken is the oracle's (the pairs no punch can join go through
//! the simulated TURN relay, and only they), bytes cross both ways, no allocation is made for a
//! direct or reverse path, nothing leaks.
//! Three families: told the NAT (0 % and 10 % loss, two seeds), and classifying it itself (a
//! representative subset covering every expected path, 0 % loss). Each prints a one-line summary
//! (correct/total, median connect time per path).

use core::time::Duration;

use p2pd_node::Path;
use p2pd_sim::node_matrix::{expected, layouts, run_matrix, run_one, Family, Layout, NodeOutcome};
use p2pd_sim::punch_matrix::NatKind;

fn show(o: &NodeOutcome) -> String {
    format!(
        "{} loss {} seed {}: expected {:?}, got {:?}, allocations {}, leaks {:?}",
        o.layout.label(),
        o.loss,
        o.seed,
        o.expected,
        o.result,
        o.allocations,
        o.leaks
    )
}

/// One line: correct/total and the median connect time of each path taken.
fn summary(family: &str, outcomes: &[NodeOutcome]) -> String {
    let correct = outcomes
        .iter()
        .filter(|o| o.correct && o.leaks.is_empty())
        .count();
    let mut per_path = Vec::new();
    for path in [Path::Direct, Path::Reverse, Path::Punched, Path::Relayed] {
        let mut times: Vec<Duration> = outcomes
            .iter()
            .filter_map(|o| match o.result {
                Ok((p, t)) if p == path => Some(t),
                _ => None,
            })
            .collect();
        if times.is_empty() {
            continue;
        }
        times.sort();
        let median = times[times.len() / 2];
        per_path.push(format!(
            "{} {} median {} ms",
            path.as_str(),
            times.len(),
            median.as_millis()
        ));
    }
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    format!(
        "{family}: {correct}/{} correct; {}; failed {failed}",
        outcomes.len(),
        per_path.join(", ")
    )
}

/// Prints every outcome and the summary; panics with the wrong ones.
fn check(family: &str, outcomes: &[NodeOutcome]) {
    for o in outcomes {
        println!("{}", show(o));
    }
    println!("{}", summary(family, outcomes));
    let bad: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.correct || !o.leaks.is_empty())
        .map(show)
        .collect();
    assert!(
        bad.is_empty(),
        "{family}: {} of {} wrong:\n{}",
        bad.len(),
        outcomes.len(),
        bad.join("\n")
    );
}

#[test]
fn one_open_pair_connects_directly() {
    let o = run_one(
        Layout::Apart(NatKind::Open, NatKind::Open),
        0.0,
        1,
        Family::Given,
    );
    assert!(o.correct && o.leaks.is_empty(), "{}", show(&o));
}

#[test]
fn every_layout_takes_the_oracles_path() {
    let outcomes = run_matrix(&layouts(), &[0.0], 1, Family::Given, 2);
    check("given, 0 % loss", &outcomes);
    // Every one of the 64 ordered pairs connects; exactly the 9 unpunchable ones through the
    // relay.
    let pairs: Vec<&NodeOutcome> = outcomes
        .iter()
        .filter(|o| matches!(o.layout, Layout::Apart(..)))
        .collect();
    assert_eq!(pairs.len(), 64);
    assert!(pairs.iter().all(|o| o.result.is_ok()));
    let relayed: Vec<String> = outcomes
        .iter()
        .filter(|o| matches!(o.result, Ok((Path::Relayed, _))))
        .map(|o| o.layout.label())
        .collect();
    assert_eq!(relayed.len(), 9, "relayed: {relayed:?}");
}

/// Seeds per layout at 10 % loss: 2, or `P2PD_NODE_SEEDS`.
fn loss_seeds() -> u64 {
    std::env::var("P2PD_NODE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
}

#[test]
fn every_layout_takes_the_oracles_path_at_10_percent_loss() {
    let seeds = loss_seeds();
    let outcomes = run_matrix(&layouts(), &[0.10], seeds, Family::Given, 2);
    check(&format!("given, 10 % loss, {seeds} seeds"), &outcomes);
}

/// Twelve layouts covering every expected path (direct apart and behind one NAT, reverse,
/// punched, relayed), each node classifying its own NAT.
fn classified_layouts() -> Vec<Layout> {
    use NatKind::*;
    vec![
        Layout::Apart(Open, Open),
        Layout::Apart(PortRestricted, FullCone),
        Layout::Apart(SymmetricRandom, Open),
        Layout::SameNat(SymmetricPreserving),
        Layout::Apart(PortRestricted, Open),
        Layout::Apart(FullCone, Restricted),
        Layout::Apart(Open, SymmetricRandom),
        Layout::Apart(PortRestricted, PortRestricted),
        Layout::Apart(Restricted, SymmetricSequential),
        Layout::Apart(SymmetricPreserving, SymmetricPreserving),
        Layout::Apart(PortRestrictedRandom, SymmetricRandom),
        Layout::Apart(SymmetricRandom, SymmetricRandom),
    ]
}

#[test]
fn classified_layouts_cover_every_path() {
    let all = classified_layouts();
    for path in [Path::Direct, Path::Reverse, Path::Punched, Path::Relayed] {
        assert!(
            all.iter().any(|l| expected(*l) == path),
            "no classified layout expects {path:?}"
        );
    }
}

#[test]
fn classified_nodes_take_the_oracles_path() {
    let outcomes = run_matrix(&classified_layouts(), &[0.0], 1, Family::Classified, 2);
    check("classified, 0 % loss", &outcomes);
}

/// Regression (10 % loss, seed 18): B reported `Ready` once registered, before its subscription
/// on either broker was granted; A's reverse request, published at once, reached no one and
/// the connect timed out. `Ready` now waits for a broker to listen.
#[test]
fn ready_means_reachable_over_signaling() {
    let layout = Layout::Apart(NatKind::Open, NatKind::PortRestricted);
    let mut w = p2pd_sim::node_matrix::NodeWorld::new(18, layout, 0.10, Family::Given);
    let listening = |w: &p2pd_sim::node_matrix::NodeWorld, i: usize| {
        let r = w.sim.machine::<p2pd_node::Node>(w.hosts[i]).rendezvous();
        r.broker_ids()
            .any(|id| r.health(id).is_some_and(|h| h.listening))
    };
    assert!(w.run_until(Duration::from_secs(40), |w| w.is_ready(1)));
    assert!(listening(&w, 1), "B ready before listening on any broker");
    let o = run_one(layout, 0.10, 18, Family::Given);
    assert!(o.correct && o.leaks.is_empty(), "{}", show(&o));
}

//! The node's connection ladder in simulation: every pair of NAT kinds (and two hosts behind one
//! NAT) connect by name; the path taken is the oracle's, bytes cross both ways, nothing leaks.

use p2pd_sim::node_matrix::{expected, layouts, run_matrix, run_one, Family, Layout};
use p2pd_sim::punch_matrix::NatKind;

fn show(o: &p2pd_sim::node_matrix::NodeOutcome) -> String {
    format!(
        "{} loss {} seed {}: expected {:?}, got {:?}, leaks {:?}",
        o.layout.label(),
        o.loss,
        o.seed,
        o.expected,
        o.result,
        o.leaks
    )
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
    let all = layouts();
    let outcomes = run_matrix(&all, &[0.0], 1, Family::Given, 2);
    let bad: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.correct || !o.leaks.is_empty())
        .map(show)
        .collect();
    let paths: Vec<String> = outcomes
        .iter()
        .map(|o| format!("{}: {:?}", o.layout.label(), expected(o.layout)))
        .collect();
    for o in &outcomes {
        println!("{}", show(o));
    }
    assert!(
        bad.is_empty(),
        "{} of {} wrong:\n{}\n(all: {paths:?})",
        bad.len(),
        outcomes.len(),
        bad.join("\n")
    );
}

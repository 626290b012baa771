//! The classifier in the simulator against ground truth: every mapping x filtering combination, an
//! open host and firewalls, at 0 %, 10 % and 30 % loss, several seeds. The answer must equal the
//! truth or be `Inconclusive` — never wrong. Prints the inconclusive rate per loss level.

use core::time::Duration;
use std::net::{IpAddr, Ipv4Addr};

use p2pd_nat::{
    Behaviour, Classification, Classifier, ClassifierConfig, ClassifierEvent, Filtering, Mapping,
    ServerSpec,
};
use p2pd_sim::{run_seeds, Host, LinkConfig, Sim};

const MAPPINGS: [Mapping; 3] = [
    Mapping::EndpointIndependent,
    Mapping::AddressDependent,
    Mapping::AddressAndPortDependent,
];
const FILTERINGS: [Filtering; 3] = [
    Filtering::EndpointIndependent,
    Filtering::AddressDependent,
    Filtering::AddressAndPortDependent,
];

#[derive(Copy, Clone, Debug)]
enum Truth {
    Open,
    Firewall(Filtering),
    Nat(Mapping, Filtering),
}

fn servers() -> Vec<ServerSpec> {
    vec![
        ServerSpec {
            id: 1,
            primary: "192.0.2.1:3478".parse().unwrap(),
            alternate: None,
        },
        ServerSpec {
            id: 2,
            primary: "192.0.2.11:3478".parse().unwrap(),
            alternate: None,
        },
    ]
}

/// Runs one classification and returns the answer and the virtual time it took.
fn classify(truth: Truth, loss: f64, seed: u64) -> (Classification, Duration) {
    let mut sim = Sim::new(seed);
    sim.add_stun_server([192, 0, 2, 1].into(), [192, 0, 2, 2].into(), 3478, 3479);
    sim.add_stun_server([192, 0, 2, 11].into(), [192, 0, 2, 12].into(), 3478, 3479);
    let link = LinkConfig::with_latency(Duration::from_millis(15))
        .jitter(Duration::from_millis(5))
        .loss(loss);
    let machine_seed = sim.machine_seed();
    let host = match truth {
        Truth::Open => {
            let ip = Ipv4Addr::new(198, 51, 100, 7);
            let config = ClassifierConfig {
                local_ip: IpAddr::V4(ip),
                ..ClassifierConfig::default()
            };
            let c = Classifier::new(config, &servers(), machine_seed);
            sim.add_host(Host::public([ip]).with_link(link), c)
        }
        Truth::Firewall(filtering) => {
            // A firewall is a NAT box that does not translate: model it as endpoint-independent
            // mapping that preserves ports on the host's own public address.
            let ip = Ipv4Addr::new(198, 51, 100, 7);
            let nat = sim.add_nat(ip, Behaviour::new(Mapping::EndpointIndependent, filtering));
            sim.set_nat_link(nat, link);
            let config = ClassifierConfig {
                local_ip: IpAddr::V4(ip),
                ..ClassifierConfig::default()
            };
            let c = Classifier::new(config, &servers(), machine_seed);
            // The host's address equals the box's public one, as behind a stateful firewall.
            sim.add_host_behind(nat, ip, c)
        }
        Truth::Nat(mapping, filtering) => {
            let nat = sim.add_nat(
                Ipv4Addr::new(203, 0, 113, 10),
                Behaviour::new(mapping, filtering),
            );
            sim.set_nat_link(nat, link);
            let ip = Ipv4Addr::new(10, 0, 0, 2);
            let config = ClassifierConfig {
                local_ip: IpAddr::V4(ip),
                ..ClassifierConfig::default()
            };
            let c = Classifier::new(config, &servers(), machine_seed);
            sim.add_host_behind(nat, ip, c)
        }
    };
    let start = sim.now();
    sim.with_machine::<Classifier, _>(host, |c, now| c.start(now));
    let mut answer = None;
    for _ in 0..400 {
        sim.run_for(Duration::from_millis(50));
        for ev in sim.take_events::<Classifier>(host) {
            if let ClassifierEvent::Done(report) = ev {
                answer = Some((report.classification, sim.now() - start));
            }
        }
        if answer.is_some() {
            break;
        }
    }
    answer.expect("the classifier always reports before its deadline")
}

fn correct(truth: Truth, got: Classification) -> bool {
    match (truth, got) {
        (Truth::Open, Classification::Open) => true,
        (Truth::Firewall(f), Classification::Firewall(g)) => f == g,
        (Truth::Firewall(Filtering::EndpointIndependent), Classification::Open) => true,
        (Truth::Nat(m, f), Classification::Nat { mapping, filtering }) => {
            m == mapping && f == filtering
        }
        _ => false,
    }
}

fn truths() -> Vec<Truth> {
    let mut t = vec![Truth::Open];
    t.extend(FILTERINGS.iter().map(|f| Truth::Firewall(*f)));
    for m in MAPPINGS {
        for f in FILTERINGS {
            t.push(Truth::Nat(m, f));
        }
    }
    t
}

#[test]
fn never_wrong_at_any_loss() {
    use std::cell::Cell;
    let seeds: Vec<u64> = (1..=5).collect();
    for loss in [0.0, 0.10, 0.30] {
        let runs = Cell::new(0u32);
        let inconclusive = Cell::new(0u32);
        let slowest = Cell::new(Duration::ZERO);
        for truth in truths() {
            run_seeds(seeds.clone(), |seed| {
                let (got, took) = classify(truth, loss, seed);
                runs.set(runs.get() + 1);
                slowest.set(slowest.get().max(took));
                if let Classification::Inconclusive(reason) = got {
                    inconclusive.set(inconclusive.get() + 1);
                    assert!(
                        loss > 0.0,
                        "inconclusive without loss: {truth:?} -> {reason:?}"
                    );
                } else {
                    assert!(
                        correct(truth, got),
                        "WRONG: truth {truth:?}, classifier {got:?}, loss {loss}, seed {seed}"
                    );
                }
            });
        }
        println!(
            "loss {:>3.0}%: {} runs, {} inconclusive ({:.1} %), slowest {:?} (virtual time)",
            loss * 100.0,
            runs.get(),
            inconclusive.get(),
            f64::from(inconclusive.get()) * 100.0 / f64::from(runs.get()),
            slowest.get()
        );
    }
}

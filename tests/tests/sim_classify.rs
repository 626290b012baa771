//! The classifier in the simulator against ground truth: every mapping x filtering combination, an
//! open host and firewalls, at 0 %, 10 % and 30 % loss, several seeds. The answer must equal the
//! truth or be `Inconclusive` — never wrong. Prints the inconclusive rate per loss level.

use core::time::Duration;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use p2pd_nat::{
    Behaviour, Classification, Classifier, ClassifierConfig, ClassifierEvent, DeltaVerdict,
    Filtering, Mapping, PortAllocation, Report, ServerSpec,
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

const ALLOCATIONS: [PortAllocation; 5] = [
    PortAllocation::Preserving,
    PortAllocation::FixedOffset { offset: 1000 },
    PortAllocation::Sequential { stride: 1 },
    PortAllocation::LocalPortDependent { stride: 2 },
    PortAllocation::Random,
];

#[derive(Copy, Clone, Debug)]
enum Truth {
    Open,
    Firewall(Filtering),
    Nat(Mapping, Filtering, PortAllocation),
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
fn classify(truth: Truth, loss: f64, seed: u64) -> (Report, Duration) {
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
        Truth::Nat(mapping, filtering, allocation) => {
            let nat = sim.add_nat(
                Ipv4Addr::new(203, 0, 113, 10),
                Behaviour::new(mapping, filtering).with_allocation(allocation),
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
                answer = Some((report, sim.now() - start));
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
        (Truth::Nat(m, f, _), Classification::Nat { mapping, filtering }) => {
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
            for a in ALLOCATIONS {
                t.push(Truth::Nat(m, f, a));
            }
        }
    }
    t
}

/// Whether the allocation verdict is the truth or inconclusive (a test cut short by the deadline
/// counts as inconclusive); `None` when the truth has no allocation.
fn allocation_ok(truth: Truth, report: &Report) -> Option<bool> {
    let Truth::Nat(_, _, allocation) = truth else {
        return None;
    };
    Some(match report.allocation.as_ref().map(|a| a.verdict) {
        None | Some(DeltaVerdict::Inconclusive { .. }) => true,
        Some(v) => v.allocation() == Some(allocation),
    })
}

#[test]
fn never_wrong_at_any_loss() {
    use std::cell::Cell;
    let seeds: Vec<u64> = (1..=5).collect();
    let wall = std::time::Instant::now();
    for loss in [0.0, 0.10, 0.30] {
        let runs = Cell::new(0u32);
        let inconclusive = Cell::new(0u32);
        let nat_runs = Cell::new(0u32);
        let allocation_inconclusive = Cell::new(0u32);
        let slowest = Cell::new(Duration::ZERO);
        for truth in truths() {
            run_seeds(seeds.clone(), |seed| {
                let (report, took) = classify(truth, loss, seed);
                let got = report.classification;
                runs.set(runs.get() + 1);
                slowest.set(slowest.get().max(took));
                if let Classification::Inconclusive(reason) = got {
                    inconclusive.set(inconclusive.get() + 1);
                    assert!(
                        loss > 0.0,
                        "inconclusive without loss: {truth:?} -> {reason:?}"
                    );
                    return;
                }
                assert!(
                    correct(truth, got),
                    "WRONG: truth {truth:?}, classifier {got:?}, loss {loss}, seed {seed}"
                );
                if let Truth::Nat(..) = truth {
                    nat_runs.set(nat_runs.get() + 1);
                    let verdict = report.allocation.as_ref().map(|a| a.verdict);
                    assert_eq!(
                        allocation_ok(truth, &report),
                        Some(true),
                        "WRONG allocation: truth {truth:?}, verdict {verdict:?}, loss {loss}, seed {seed}"
                    );
                    if let None | Some(DeltaVerdict::Inconclusive { .. }) = verdict {
                        allocation_inconclusive.set(allocation_inconclusive.get() + 1);
                    }
                }
            });
        }
        println!(
            "loss {:>3.0}%: {} runs, {} inconclusive ({:.1} %); allocation inconclusive in {} of {} NAT runs ({:.1} %); slowest {:?} (virtual time)",
            loss * 100.0,
            runs.get(),
            inconclusive.get(),
            f64::from(inconclusive.get()) * 100.0 / f64::from(runs.get()),
            allocation_inconclusive.get(),
            nat_runs.get(),
            f64::from(allocation_inconclusive.get()) * 100.0 / f64::from(nat_runs.get().max(1)),
            slowest.get()
        );
    }
    println!("matrix wall time: {:?}", wall.elapsed());
}

mod liar {
    //! A STUN server that lies about its OTHER-ADDRESS: it wraps our honest server and rewrites
    //! that one attribute in every response.

    use std::net::SocketAddr;

    use p2pd_proto::server::StunServer;
    use p2pd_proto::stun::{Attribute, Message, MessageWriter};
    use p2pd_proto::{Instant, SocketId, SocketOp, SocketOutcome, Transmit, Verdict};

    pub struct LyingServer {
        pub inner: StunServer,
        pub claim: SocketAddr,
    }

    impl LyingServer {
        pub fn handle_datagram(
            &mut self,
            now: Instant,
            s: SocketId,
            from: SocketAddr,
            d: &[u8],
        ) -> Verdict {
            self.inner.handle_datagram(now, s, from, d)
        }
        pub fn handle_socket_result(&mut self, now: Instant, s: SocketId, o: SocketOutcome) {
            self.inner.handle_socket_result(now, s, o)
        }
        pub fn handle_timeout(&mut self, now: Instant) {
            self.inner.handle_timeout(now)
        }
        pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
            let t = self.inner.poll_transmit(buf)?;
            let original = buf[..t.len].to_vec();
            let msg = Message::decode(&original).ok()?;
            let mut w = MessageWriter::new(buf, *msg.header()).ok()?;
            for raw in msg.attributes() {
                let a = Attribute::parse(raw.code, raw.value, msg.header()).ok()?;
                match a {
                    Attribute::OtherAddress(_) => {
                        w.add(&Attribute::OtherAddress(self.claim)).ok()?
                    }
                    Attribute::ChangedAddress(_) => {
                        w.add(&Attribute::ChangedAddress(self.claim)).ok()?
                    }
                    Attribute::Fingerprint(_) => w.add_fingerprint().ok()?,
                    other => w.add(&other).ok()?,
                }
            }
            let len = w.finish();
            Some(Transmit { len, ..t })
        }
        pub fn poll_socket_op(&mut self) -> Option<SocketOp> {
            self.inner.poll_socket_op()
        }
        pub fn poll_event(&mut self) -> Option<p2pd_proto::server::ServerEvent> {
            self.inner.poll_event()
        }
        pub fn poll_timeout(&self) -> Option<Instant> {
            self.inner.poll_timeout()
        }
    }

    p2pd_proto::impl_machine!(LyingServer, p2pd_proto::server::ServerEvent);
}

/// One honest server and one that lies about its other address, in three ways. The answer must be
/// the truth (from the honest server, or from the liar too when its real alternate is configured).
#[test]
fn servers_that_lie_about_other_address_never_cause_a_wrong_answer() {
    use p2pd_proto::server::{ServerConfig, StunServer};
    let claims: [SocketAddr; 3] = [
        "192.0.2.21:3479".parse().unwrap(), // same IP as its primary: an obvious lie
        "192.0.2.99:3479".parse().unwrap(), // an address where nobody answers
        "192.0.2.2:3479".parse().unwrap(),  // the honest server's alternate
    ];
    for (i, claim) in claims.into_iter().enumerate() {
        for configured in [false, true] {
            for (m, f) in [
                (Mapping::EndpointIndependent, Filtering::AddressDependent),
                (
                    Mapping::AddressAndPortDependent,
                    Filtering::AddressDependent,
                ),
                (Mapping::EndpointIndependent, Filtering::EndpointIndependent),
            ] {
                let mut sim = Sim::new(100 + i as u64);
                sim.add_stun_server([192, 0, 2, 1].into(), [192, 0, 2, 2].into(), 3478, 3479);
                let liar = liar::LyingServer {
                    inner: StunServer::new(ServerConfig::rfc5780(
                        "192.0.2.21:3478".parse().unwrap(),
                        "192.0.2.22".parse().unwrap(),
                        3479,
                    ))
                    .unwrap(),
                    claim,
                };
                sim.add_host(
                    Host::public([Ipv4Addr::new(192, 0, 2, 21), Ipv4Addr::new(192, 0, 2, 22)]),
                    liar,
                );
                let nat = sim.add_nat(Ipv4Addr::new(203, 0, 113, 10), Behaviour::new(m, f));
                sim.set_nat_link(nat, LinkConfig::with_latency(Duration::from_millis(10)));
                let servers = [
                    ServerSpec {
                        id: 1,
                        primary: "192.0.2.1:3478".parse().unwrap(),
                        alternate: None,
                    },
                    ServerSpec {
                        id: 2,
                        primary: "192.0.2.21:3478".parse().unwrap(),
                        alternate: configured.then(|| "192.0.2.22:3479".parse().unwrap()),
                    },
                ];
                let config = ClassifierConfig {
                    local_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                    ..ClassifierConfig::default()
                };
                let seed = sim.machine_seed();
                let host = sim.add_host_behind(
                    nat,
                    Ipv4Addr::new(10, 0, 0, 2),
                    Classifier::new(config, &servers, seed),
                );
                sim.with_machine::<Classifier, _>(host, |c, now| c.start(now));
                sim.run_for(Duration::from_secs(12));
                let report = sim
                    .take_events::<Classifier>(host)
                    .into_iter()
                    .find_map(|e| match e {
                        ClassifierEvent::Done(r) => Some(r),
                        _ => None,
                    })
                    .expect("a report");
                let truth = Truth::Nat(m, f, PortAllocation::Preserving);
                assert!(
                    correct(truth, report.classification),
                    "claim {claim}, configured {configured}, {m:?}/{f:?}: {:?}",
                    report.classification
                );
                // With its real alternate configured the liar is fully usable. Otherwise the first
                // two lies make it unusable; the third points at another server that really
                // answers like an alternate would, so it is harmless and may count.
                let agreeing = report.servers_agreeing;
                let ok = match (configured, i) {
                    (true, _) => agreeing == 2,
                    (false, 2) => agreeing >= 1,
                    (false, _) => agreeing == 1,
                };
                assert!(
                    ok,
                    "claim {claim}, configured {configured}, {m:?}/{f:?}: {agreeing} agreeing"
                );
            }
        }
    }
}

//! The NAT classifier on real sockets against two of our RFC 5780 servers on loopback: there is no
//! NAT and no filtering between 127.0.0.1 and 127.0.0.2, so the answer must be `Open`, decided
//! early, with every socket closed afterwards. "Early" is checked on what the report says, not on
//! the wall clock (a debug build on two loaded cores): no probe ran out its transmissions (none
//! ended without a reply), every probe the answer rests on got a reply, and the answer rests on
//! replies alone (confidence 1, no verdict from silence); a probe the answer did not need may
//! still be pending when it is given.

use p2pd_tests as common;

use std::net::{IpAddr, Ipv4Addr};
use std::ops::ControlFlow;
use std::time::Duration;

use common::ServerThread;
use p2pd_mio::Runtime;
use p2pd_nat::classify::{ProbeKind, ProbeOutcome};
use p2pd_nat::{Classification, Classifier, ClassifierConfig, ClassifierEvent, ServerSpec};

#[test]
fn loopback_without_nat_is_open() {
    let a = ServerThread::rfc5780();
    let b = ServerThread::rfc5780();
    let servers: Vec<ServerSpec> = [&a, &b]
        .iter()
        .enumerate()
        .map(|(i, s)| ServerSpec {
            id: i as u64 + 1,
            primary: s.primary,
            alternate: None, // learned from OTHER-ADDRESS
        })
        .collect();
    let config = ClassifierConfig {
        local_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        ..ClassifierConfig::default()
    };
    let mut classifier = Classifier::new(config, &servers, 7);
    let mut runtime = Runtime::new().unwrap();
    classifier.start(runtime.now());
    let started = std::time::Instant::now();
    let mut report = None;
    let mut closed = false;
    runtime
        .run(
            &mut classifier,
            Some(Duration::from_secs(20)),
            |_, _, event| {
                match event {
                    ClassifierEvent::Done(r) => report = Some(r),
                    ClassifierEvent::Closed => {
                        closed = true;
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    let elapsed = started.elapsed();
    println!("classified in {elapsed:?}");
    let report = report.expect("a report");
    assert_eq!(report.classification, Classification::Open, "{report:#?}");
    assert_eq!(report.servers_agreeing, 2);
    assert!(closed, "the classifier closes its sockets");
    assert_eq!(runtime.open_sockets(), 0);
    // Decided early: the change-both replies arrive at once, nothing waits for silence. No probe
    // waited for its timeout: each got a reply or was still pending (not needed: the change-port
    // probe, once change-both answered); and no verdict rests on silence.
    for p in &report.probes {
        assert!(
            matches!(
                p.outcome,
                ProbeOutcome::Reply { .. } | ProbeOutcome::Pending
            ),
            "{:?} to {} waited for its timeout: {:?}",
            p.kind,
            p.destination,
            p.outcome
        );
    }
    assert_eq!(report.confidence, 1.0, "{report:#?}");
    for kind in [
        ProbeKind::MapPrimary,
        ProbeKind::MapAlternateIp,
        ProbeKind::MapAlternateBoth,
        ProbeKind::FilterControl,
        ProbeKind::FilterChangeBoth,
    ] {
        assert_eq!(
            report.probes.iter().filter(|p| p.kind == kind).count(),
            2,
            "{kind:?} once per server"
        );
        assert!(
            report
                .probes
                .iter()
                .filter(|p| p.kind == kind)
                .all(|p| matches!(p.outcome, ProbeOutcome::Reply { .. })),
            "{kind:?}: the answer rests on its reply"
        );
    }
    // The only public address is our own socket's.
    assert!(report
        .public_addresses
        .iter()
        .all(|a| a.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST)));
    // Both servers answered every probe the classifier sent them.
    for server in [a.stop(), b.stop()] {
        assert!(server.stats.requests >= 5, "{:?}", server.stats);
        assert_eq!(server.stats.requests, server.stats.responses);
    }
}

//! The NAT `Classifier` on real sockets: two of our RFC 5780 STUN servers on loopback (each on
//! 127.0.0.1 and 127.0.0.2, two ports, driven by a `p2pd_mio::Runtime` in its own thread) and the
//! classifier on the main thread's runtime. Between 127.0.0.1 and 127.0.0.2 there is no NAT and
//! no filtering, so the answer must be `Open`: every mapping probe sees our own address and the
//! change-IP-and-port replies come through.
//!
//! ```text
//! cargo run -p p2pd-nat --example classify_loopback
//! ```
// Example code: the package's strict lints (Cargo.toml `[lints]`) guard its library code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use p2pd_mio::Runtime;
use p2pd_nat::classify::ProbeOutcome;
use p2pd_nat::{Classification, Classifier, ClassifierConfig, ClassifierEvent, ServerSpec};
use p2pd_proto::server::{ServerConfig, ServerEvent, ServerStats, StunServer};

const LO1: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const LO2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A STUN server running in a thread until `stop` is set.
struct ServerThread {
    primary: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<ServerStats>,
}

/// A port the kernel just gave out on 127.0.0.1 (free now; the bind below may still race).
fn some_free_port() -> u16 {
    let socket = UdpSocket::bind((LO1, 0)).unwrap();
    socket.local_addr().unwrap().port()
}

/// Starts an RFC 5780 server on 127.0.0.1:p and 127.0.0.2:q (four sockets). Retries on fresh
/// ports if one of the four binds fails.
fn start_server() -> ServerThread {
    for _ in 0..10 {
        let (p, q) = (some_free_port(), some_free_port());
        if p == q {
            continue;
        }
        let config = ServerConfig::rfc5780(SocketAddr::new(LO1, p), LO2, q);
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut runtime = Runtime::new().unwrap();
            let mut server = StunServer::new(config).unwrap();
            // Run until all four roles have answered their bind intents.
            let (mut listening, mut failed) = (0, 0);
            runtime
                .run(&mut server, Some(Duration::from_secs(5)), |_, _, event| {
                    match event {
                        ServerEvent::Listening { .. } => listening += 1,
                        _ => failed += 1,
                    }
                    if listening + failed == 4 {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .unwrap();
            let ok = listening == 4;
            ready_tx.send(ok).unwrap();
            // Serve in short slices so the stop flag is seen quickly.
            while ok && !flag.load(Ordering::SeqCst) {
                runtime
                    .run(&mut server, Some(Duration::from_millis(20)), |_, _, _| {
                        ControlFlow::Continue(())
                    })
                    .unwrap();
            }
            server.close(runtime.now());
            runtime
                .run(&mut server, Some(Duration::from_secs(1)), |_, _, _| {
                    ControlFlow::Continue(())
                })
                .unwrap();
            server.stats()
        });
        if ready_rx.recv().unwrap() {
            return ServerThread {
                primary: SocketAddr::new(LO1, p),
                stop,
                thread,
            };
        }
        thread.join().unwrap();
    }
    panic!("could not bind a STUN server on 127.0.0.1 / 127.0.0.2");
}

fn main() {
    let servers = [start_server(), start_server()];
    let specs: Vec<ServerSpec> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| ServerSpec {
            id: i as u64 + 1,
            primary: s.primary,
            alternate: None, // learned from the servers' OTHER-ADDRESS
        })
        .collect();
    for s in &specs {
        println!("server {} on {} (+ 127.0.0.2)", s.id, s.primary);
    }

    // Bind to 127.0.0.1, not 0.0.0.0: with a known local IP, "mapped == local" means no NAT
    // (with an unspecified one it could also be a port-preserving NAT: Inconclusive).
    let config = ClassifierConfig {
        local_ip: LO1,
        ..ClassifierConfig::default()
    };
    let mut classifier = Classifier::new(config, &specs, 7);
    let mut runtime = Runtime::new().unwrap();
    classifier.start(runtime.now());
    let started = std::time::Instant::now();
    let mut report = None;
    runtime
        .run(
            &mut classifier,
            Some(Duration::from_secs(20)),
            |_, _, event| match event {
                ClassifierEvent::Done(r) => {
                    report = Some(r);
                    ControlFlow::Continue(()) // the classifier now closes its sockets
                }
                ClassifierEvent::Closed => ControlFlow::Break(()),
            },
        )
        .unwrap();
    let report = report.expect("a report");

    println!("classification: {:?}", report.classification);
    println!("public addresses: {:?}", report.public_addresses);
    println!(
        "servers agreeing: {}, confidence {}, {} probes, {:?}",
        report.servers_agreeing,
        report.confidence,
        report.probes.len(),
        started.elapsed()
    );
    for p in &report.probes {
        let outcome = match p.outcome {
            ProbeOutcome::Reply { mapped, source, .. } => format!("mapped {mapped}, from {source}"),
            other => format!("{other:?}"),
        };
        println!(
            "  server {} {:?} -> {}: {outcome}",
            p.server, p.kind, p.destination
        );
    }

    assert_eq!(report.classification, Classification::Open);
    assert_eq!(report.servers_agreeing, 2);
    assert!(report.public_addresses.iter().all(|a| a.ip() == LO1));
    assert_eq!(
        runtime.open_sockets(),
        0,
        "the classifier closed every socket"
    );
    for s in servers {
        s.stop.store(true, Ordering::SeqCst);
        let stats = s.thread.join().unwrap();
        assert_eq!(stats.requests, stats.responses);
    }
    println!("ok: loopback is open internet (no NAT, no filtering)");
}

//! Soak: 10,000 STUN transactions through one client Runtime against our server (its own Runtime in
//! a thread) on loopback, opening and closing sockets every round. Nothing may fail, and sockets,
//! transactions, timers and memory must return to their baseline.
//!
//! Memory is measured as the bytes live on the heap (a counting global allocator, client and
//! server together) after round 10 and after round 100: they may differ by at most
//! [`LIVE_SLACK`] bytes over those 9,000 transactions, so even a leaked 1-byte allocation per
//! transaction fails. VmRSS is checked too, with a looser slack for the allocator's warm-up.

use p2pd_proto::Machine;
use p2pd_tests as common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use common::heap::{live_bytes, LiveBytes};
use common::{loopback_retransmit, rss_kib, Client, ServerThread, LO1};
use p2pd_proto::client::{ClientEvent, Request};
use p2pd_proto::stun::ChangeRequest;
use p2pd_proto::{BindOptions, SocketId};

const ROUNDS: usize = 100;
const SOCKETS_PER_ROUND: usize = 4;
const TX_PER_SOCKET: usize = 25;
const TX_PER_ROUND: usize = SOCKETS_PER_ROUND * TX_PER_SOCKET;
/// The live heap may grow this much between round 10 and round 100 (9,000 transactions).
const LIVE_SLACK: i64 = 1024;

#[global_allocator]
static GLOBAL: LiveBytes = LiveBytes;

#[test]
fn ten_thousand_transactions_no_leaks() {
    let started = Instant::now();
    let server = ServerThread::rfc5780();
    let primary = server.primary;
    let alternate = server.alternate.expect("alternate");
    let alt_port = SocketAddr::new(primary.ip(), alternate.port());

    let mut c = Client::new(loopback_retransmit(), TX_PER_ROUND + 28, 0x50a4);
    let baseline_sockets = c.rt.open_sockets();
    assert_eq!(baseline_sockets, 0);
    let mut rss_after_10 = None;
    let mut live_after_10 = 0;
    let mut failures = Vec::new();
    let mut ok_count = 0usize;

    for round in 1..=ROUNDS {
        let now = c.rt.now();
        let mut sockets = Vec::with_capacity(SOCKETS_PER_ROUND);
        let mut handles = HashMap::with_capacity(TX_PER_ROUND);
        for _ in 0..SOCKETS_PER_ROUND {
            let s = c
                .client
                .open_socket(now, SocketAddr::new(LO1, 0), BindOptions::default())
                .expect("open_socket");
            sockets.push(s);
            // Transactions may start before the socket is bound; they go out once it is.
            for i in 0..TX_PER_SOCKET {
                let change = if i % 5 == 4 {
                    ChangeRequest::PORT
                } else {
                    ChangeRequest::NONE
                };
                let h = c
                    .client
                    .start(now, Request::binding(s, primary).with_change(change))
                    .expect("start");
                handles.insert(h, (s, change));
            }
        }
        assert_eq!(c.client.in_flight(), TX_PER_ROUND);

        let mut bound: HashMap<SocketId, SocketAddr> = HashMap::new();
        let mut done = HashSet::with_capacity(TX_PER_ROUND);
        c.rt.run(&mut c.client, Some(Duration::from_secs(30)), |_, _, ev| {
            match ev {
                ClientEvent::SocketReady { socket, local } => {
                    bound.insert(socket, local);
                }
                ClientEvent::SocketFailed { socket, error } => failures.push(format!(
                    "round {round}: socket {socket:?} failed: {error:?}"
                )),
                ClientEvent::Transaction(t) => {
                    let (socket, change) = handles.get(&t.id).copied().expect("known handle");
                    assert!(done.insert(t.id), "transaction {:?} ended twice", t.id);
                    assert_eq!(t.socket, socket);
                    match t.outcome {
                        Ok(r) => {
                            let expected_from = if change.any() { alt_port } else { primary };
                            if Some(&r.mapped) != bound.get(&socket) || r.source != expected_from {
                                failures.push(format!(
                                    "round {round}: wrong answer {r:?} (bound {:?})",
                                    bound.get(&socket)
                                ));
                            } else {
                                ok_count += 1;
                            }
                        }
                        Err(f) => failures.push(format!("round {round}: {f:?}")),
                    }
                }
                _ => {}
            }
            if done.len() == TX_PER_ROUND {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .expect("client run");
        assert_eq!(
            done.len(),
            TX_PER_ROUND,
            "round {round}: only {} transactions ended within 30 s",
            done.len()
        );
        assert_eq!(bound.len(), SOCKETS_PER_ROUND, "round {round}");
        assert_eq!(c.client.in_flight(), 0, "round {round}: transactions left");

        let now = c.rt.now();
        for s in sockets {
            c.client.close_socket(now, s);
        }
        let mut stray = Vec::new();
        let _ = c.rt.drive(&mut c.client, |_, _, ev| {
            stray.push(ev);
            ControlFlow::Continue(())
        });
        assert!(
            stray.is_empty(),
            "round {round}: events after close: {stray:?}"
        );
        assert_eq!(
            c.rt.open_sockets(),
            baseline_sockets,
            "round {round}: runtime sockets not back to baseline"
        );
        assert_eq!(c.client.open_sockets(), 0, "round {round}");
        assert_eq!(c.client.in_flight(), 0, "round {round}");

        if round == 10 {
            rss_after_10 = rss_kib();
            live_after_10 = live_bytes();
        }
    }
    let rss_after_100 = rss_kib();
    let live_after_100 = live_bytes();

    assert!(
        failures.is_empty(),
        "{} failures: {:#?}",
        failures.len(),
        failures
    );
    assert_eq!(ok_count, ROUNDS * TX_PER_ROUND);
    assert_eq!(c.client.poll_timeout(), None, "a timer is still armed");

    let cs = c.client.stats();
    let rs = c.rt.stats();
    let total = u64::try_from(ROUNDS * TX_PER_ROUND).expect("fits");
    assert_eq!(cs.requests, total, "{cs:?}");
    assert_eq!(cs.replies, total, "{cs:?}");
    assert_eq!(cs.timeouts, 0, "{cs:?}");
    let sockets_total = u64::try_from(ROUNDS * SOCKETS_PER_ROUND).expect("fits");
    assert_eq!(rs.sockets_opened, sockets_total, "{rs:?}");
    assert_eq!(rs.sockets_closed, sockets_total, "{rs:?}");
    assert_eq!(
        rs.datagrams_sent,
        cs.requests + cs.retransmissions,
        "{rs:?}"
    );

    c.close();
    let report = server.stop();
    assert_eq!(report.stats.queue_full, 0, "{:?}", report.stats);
    assert_eq!(report.stats.responses, report.stats.requests);
    assert!(report.stats.requests >= total, "{:?}", report.stats);
    assert_eq!(report.open_after_close, 0);

    println!(
        "soak: {total} transactions in {:.2} s ({} retransmissions, {} duplicates); \
         VmRSS after round 10: {:?} KiB, after round {ROUNDS}: {:?} KiB; live heap after round 10: \
         {live_after_10} bytes, after round {ROUNDS}: {live_after_100} bytes",
        started.elapsed().as_secs_f64(),
        cs.retransmissions,
        cs.duplicates,
        rss_after_10,
        rss_after_100
    );
    assert!(
        live_after_100 <= live_after_10 + LIVE_SLACK,
        "live heap grew from {live_after_10} to {live_after_100} bytes between round 10 and round \
         {ROUNDS} (slack {LIVE_SLACK})"
    );
    if let (Some(a), Some(b)) = (rss_after_10, rss_after_100) {
        assert!(
            b.saturating_sub(a) < 2048,
            "VmRSS grew by {} KiB between round 10 ({a} KiB) and round {ROUNDS} ({b} KiB)",
            b.saturating_sub(a)
        );
    } else if cfg!(target_os = "linux") {
        panic!("cannot read VmRSS from /proc/self/status");
    }
}

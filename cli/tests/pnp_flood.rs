//! The PNP server on real loopback sockets under a flood of new UDP sources (each datagram from
//! a new 127.x.y.z address, as a spoofer would send): fresh clients are still answered on their
//! first try, and the server reports the flood as rate-table evictions. Bounded (3 s of flood at
//! a quarter of the rate against a table an eighth of the default size, so the table is
//! overrun just as fast); `cargo bench -p p2pd --bench pnp_flood` runs the full-size attack.

mod common;
#[path = "common/flood.rs"]
mod flood;

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::mpsc;
use std::time::Duration;

use common::LO1;
use p2pd_cli::store_sqlite::SqliteStore;
use p2pd_mio::Runtime;
use p2pd_proto::Transport;
use p2pd_signaling::pnp::{PnpServer, PnpServerConfig, PnpServerEvent, PnpServerStats};
use p2pd_signaling::{Identity, PublicKey};

/// A PNP server (UDP only, SQLite in memory) in a thread; returns its counters when stopped.
struct ServerThread {
    udp: SocketAddr,
    key: PublicKey,
    thread: common::Stoppable<PnpServerStats>,
}

impl ServerThread {
    fn start(rate_table_capacity: usize) -> ServerThread {
        let identity = Identity::from_secret_bytes(&[0x5e; 32]).unwrap();
        let key = identity.public_key();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = common::Stoppable::spawn(move |stop| {
            let mut rt = Runtime::new().unwrap();
            let mut config =
                PnpServerConfig::new(SocketAddr::new(LO1, 0), SocketAddr::new(LO1, 0), 0);
            config.unix_epoch_ms = rt.unix_epoch_ms();
            config.tcp = None;
            config.rate_table_capacity = rate_table_capacity;
            let store = SqliteStore::in_memory().unwrap();
            let mut server = PnpServer::new(config, identity, store, 3).unwrap();
            let mut udp = None;
            rt.run(
                &mut server,
                Some(Duration::from_secs(5)),
                |_, _, ev| match ev {
                    PnpServerEvent::Listening {
                        transport: Transport::Udp,
                        local,
                    } => {
                        udp = Some(local);
                        ControlFlow::Break(())
                    }
                    other => panic!("server: {other:?}"),
                },
            )
            .unwrap();
            ready_tx.send(udp.unwrap()).unwrap();
            common::serve_pnp_until_stopped(&mut rt, &mut server, stop, Duration::from_secs(2));
            server.stats()
        });
        let udp = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server thread ready");
        ServerThread { udp, key, thread }
    }

    fn stop(self) -> PnpServerStats {
        self.thread.stop()
    }
}

#[test]
fn fresh_clients_are_answered_first_try_during_a_loopback_source_flood() {
    if !cfg!(target_os = "linux") {
        // Only Linux makes all of 127.0.0.0/8 local.
        common::skip_or_fail("the loopback flood needs every 127.x.y.z address to be local");
        return;
    }
    let server = ServerThread::start(512);
    let report = flood::run(&flood::Flood {
        server: server.udp,
        server_key: server.key,
        sources_per_second: 2_000,
        duration: Duration::from_secs(3),
        warmup: Duration::from_millis(500),
        probe_every: Duration::from_millis(50),
        probe_timeout: Duration::from_millis(500),
    });
    let stats = server.stop();
    println!("loopback flood: {report:?}; server {stats:?}");
    assert!(
        report.flood_sent >= 4_000 && report.flood_failed == 0,
        "the flood did not run: {report:?}"
    );
    assert!(
        stats.rate_evictions >= 2_000,
        "the flood overran the 512-entry rate table: {stats:?}"
    );
    assert!(report.probes >= 30, "{report:?}");
    assert!(
        report.answered_first_try * 100 >= report.probes * 95,
        "only {} of {} fresh clients were answered on their first try ({stats:?})",
        report.answered_first_try,
        report.probes
    );
}

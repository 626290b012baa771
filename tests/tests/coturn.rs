//! Interop: our STUN client against coturn (`turnserver --stun-only`) on 127.0.0.1 + 127.0.0.2.
//!
//! Skipped (with a message) when `turnserver` is not installed. coturn quirk: OTHER-ADDRESS and
//! change-IP are right only for the first `-L` address, so requests go to 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port_pair, loopback_retransmit, ChildGuard, Client, LO1, LO2};
use p2pd_proto::client::{BindingResponse, Request, Retransmit, TransactionResult};
use p2pd_proto::stun::ChangeRequest;

/// A coturn process on fresh loopback ports, killed (and its directory removed) on drop.
struct Coturn {
    primary: SocketAddr,
    alternate: SocketAddr,
    dir: PathBuf,
    guard: Option<ChildGuard>,
}

impl Coturn {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("turnserver.log")).unwrap_or_default()
    }

    fn start() -> Coturn {
        let mut last_log = String::new();
        for attempt in 0..5 {
            let (p, q) = free_port_pair();
            let dir = std::env::temp_dir()
                .join(format!("p2pd-coturn-{}-{attempt}-{p}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let log = std::fs::File::create(dir.join("turnserver.log")).expect("log file");
            let log2 = log.try_clone().expect("log file");
            let guard = ChildGuard::spawn(
                "turnserver",
                Command::new("turnserver")
                    .args(["-n", "--stun-only", "-L", "127.0.0.1", "-L", "127.0.0.2"])
                    .args(["--listening-port", &p.to_string()])
                    .args(["--alt-listening-port", &q.to_string()])
                    .args(["--no-tls", "--no-dtls", "--no-cli"])
                    .args(["--log-file", "stdout", "--simple-log"])
                    .arg("--userdb")
                    .arg(dir.join("turndb"))
                    .arg("--pidfile")
                    .arg(dir.join("turnserver.pid"))
                    .stdin(Stdio::null())
                    .stdout(log)
                    .stderr(log2),
            )
            .expect("spawn turnserver");
            let mut coturn = Coturn {
                primary: SocketAddr::new(LO1, p),
                alternate: SocketAddr::new(LO2, q),
                dir,
                guard: Some(guard),
            };
            if coturn.wait_ready() {
                return coturn;
            }
            last_log = coturn.log();
        }
        panic!("coturn did not answer STUN after 5 attempts; last log:\n{last_log}");
    }

    /// Polls the primary address with single-shot Binding requests until one is answered.
    fn wait_ready(&mut self) -> bool {
        let mut c = Client::new(
            Retransmit::SingleShot {
                timeout: Duration::from_millis(200),
            },
            4,
            0xc0_7e11,
        );
        let (sock, _) = c.open(SocketAddr::new(LO1, 0));
        let until = Instant::now() + Duration::from_secs(15);
        let mut ready = false;
        while Instant::now() < until {
            if let Some(g) = self.guard.as_mut() {
                if g.exited().is_some() {
                    break;
                }
            }
            if c.query(Request::binding(sock, self.primary))
                .outcome
                .is_ok()
            {
                ready = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        c.close();
        ready
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        drop(self.guard.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ok(t: &TransactionResult, coturn: &Coturn) -> BindingResponse {
    match &t.outcome {
        Ok(r) => *r,
        Err(f) => panic!(
            "transaction to {} ({:?}) failed: {f:?}\ncoturn log:\n{}",
            t.server,
            t.change,
            coturn.log()
        ),
    }
}

#[test]
fn rfc5780_against_coturn() {
    if !common::on_path("turnserver") {
        println!("SKIP: coturn (turnserver) not installed");
        return;
    }
    let coturn = Coturn::start();
    let (primary, alternate) = (coturn.primary, coturn.alternate);
    let (p, p2) = (primary.port(), alternate.port());

    let mut c = Client::new(loopback_retransmit(), 16, 0xc0_7e12);
    let (sock, local) = c.open(SocketAddr::new(LO1, 0));

    let r = ok(&c.query(Request::binding(sock, primary)), &coturn);
    assert_eq!(r.mapped, local, "XOR-MAPPED-ADDRESS");
    assert_eq!(r.other_address, Some(alternate), "OTHER-ADDRESS");
    assert_eq!(r.response_origin, Some(primary), "RESPONSE-ORIGIN");
    assert_eq!(r.source, primary);
    assert!(!r.legacy);

    let cases = [
        (ChangeRequest::PORT, SocketAddr::new(LO1, p2)),
        (ChangeRequest::IP, SocketAddr::new(LO2, p)),
        (ChangeRequest::BOTH, alternate),
    ];
    for (change, from) in cases {
        let r = ok(
            &c.query(Request::binding(sock, primary).with_change(change)),
            &coturn,
        );
        assert_eq!(r.source, from, "{change:?}: reply source");
        assert_eq!(r.response_origin, Some(from), "{change:?}: RESPONSE-ORIGIN");
        assert_eq!(r.mapped, local, "{change:?}");
        assert!(!r.legacy);
    }

    // RFC 3489 dialect: plain, and change BOTH.
    let r = ok(&c.query(Request::binding(sock, primary).legacy()), &coturn);
    assert!(r.legacy, "coturn answers in the RFC 3489 dialect");
    assert_eq!(r.mapped, local);
    assert_eq!(r.source, primary);
    let r = ok(
        &c.query(
            Request::binding(sock, primary)
                .with_change(ChangeRequest::BOTH)
                .legacy(),
        ),
        &coturn,
    );
    assert!(r.legacy);
    assert_eq!(r.mapped, local);
    assert_eq!(r.source, alternate);

    // Plain binding to the alternate port of the primary IP.
    let r = ok(
        &c.query(Request::binding(sock, SocketAddr::new(LO1, p2))),
        &coturn,
    );
    assert_eq!(r.mapped, local);
    assert_eq!(r.source, SocketAddr::new(LO1, p2));

    let stats = c.client.stats();
    assert_eq!(stats.replies, 7, "{stats:?}");
    assert_eq!(
        stats.timeouts + stats.malformed + stats.unexpected,
        0,
        "{stats:?}"
    );
    c.close();
}

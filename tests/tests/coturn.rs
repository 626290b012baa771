//! Interop: our STUN client against coturn (`turnserver --stun-only`) on 127.0.0.1 + 127.0.0.2.
//!
//! Skipped (with a message) when `turnserver` is not installed (a failure under `CI=true`). coturn
//! quirk: OTHER-ADDRESS and change-IP are right only for the first `-L` address, so requests go to
//! 127.0.0.1.

use p2pd_tests as common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::servers::Coturn;
use common::{loopback_retransmit, Client, LO1, LO2};
use p2pd_proto::client::{BindingResponse, Request, Retransmit, TransactionResult};
use p2pd_proto::stun::ChangeRequest;

/// Starts coturn on fresh loopback ports, once it answers STUN.
fn start_coturn() -> Coturn {
    Coturn::start("p2pd-coturn", "answer STUN", wait_ready)
}

/// Polls the primary address with single-shot Binding requests until one is answered.
fn wait_ready(coturn: &mut Coturn) -> bool {
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
        if coturn.exited() {
            break;
        }
        if c.query(Request::binding(sock, coturn.primary))
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
        common::skip_or_fail("coturn (turnserver) not installed");
        return;
    }
    let coturn = start_coturn();
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

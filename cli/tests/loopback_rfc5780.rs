//! Our STUN client against our RFC 5780 server on real loopback sockets (127.0.0.1 + 127.0.0.2),
//! in process (two runtimes, two threads) and through the `p2pd` command line.

mod common;

use p2pd_proto::Machine;
use std::net::SocketAddr;
use std::process::Command;

use common::{json_object, loopback_retransmit, CliServer, Client, ServerThread, LO1};
use p2pd_proto::client::{BindingResponse, Failure, Request, TransactionResult};
use p2pd_proto::stun::ChangeRequest;

fn ok(t: &TransactionResult) -> BindingResponse {
    match &t.outcome {
        Ok(r) => *r,
        Err(f) => panic!("transaction to {} ({:?}) failed: {f:?}", t.server, t.change),
    }
}

#[test]
fn all_four_roles_and_both_dialects() {
    let server = ServerThread::rfc5780();
    let primary = server.primary;
    let alternate = server.alternate.expect("alternate");
    let (p, p2) = (primary.port(), alternate.port());
    let alt_ip = alternate.ip();
    let at = |ip, port| SocketAddr::new(ip, port);

    let mut c = Client::new(loopback_retransmit(), 16, 0x5eed_0001);
    let (sock, local) = c.open(SocketAddr::new(LO1, 0));
    assert_eq!(local.ip(), LO1);
    assert_ne!(local.port(), 0);

    // Plain binding to the primary address.
    let r = ok(&c.query(Request::binding(sock, primary)));
    assert_eq!(r.mapped, local, "no NAT on loopback");
    assert_eq!(r.local, Some(local));
    assert_eq!(r.other_address, Some(alternate), "OTHER-ADDRESS");
    assert_eq!(r.response_origin, Some(primary), "RESPONSE-ORIGIN");
    assert_eq!(r.source, primary);
    assert!(!r.legacy);
    assert!(r.transmissions >= 1);

    // Each change request is answered from the right role.
    let cases = [
        (ChangeRequest::PORT, at(LO1, p2)),
        (ChangeRequest::IP, at(alt_ip, p)),
        (ChangeRequest::BOTH, at(alt_ip, p2)),
    ];
    for (change, from) in cases {
        let t = c.query(Request::binding(sock, primary).with_change(change));
        assert_eq!(t.change, change);
        let r = ok(&t);
        assert_eq!(r.source, from, "{change:?}: reply source");
        assert_eq!(r.response_origin, Some(from), "{change:?}: RESPONSE-ORIGIN");
        assert_eq!(r.mapped, local, "{change:?}: mapped");
        assert_eq!(
            r.other_address,
            Some(alternate),
            "{change:?}: OTHER-ADDRESS"
        );
        assert!(!r.legacy);
    }

    // Change requests with an explicit expected source.
    let r = ok(&c.query(
        Request::binding(sock, primary)
            .with_change(ChangeRequest::BOTH)
            .expect_from(alternate),
    ));
    assert_eq!(r.source, alternate);

    // Plain binding to the alternate address: OTHER-ADDRESS is then the primary.
    let r = ok(&c.query(Request::binding(sock, alternate)));
    assert_eq!(r.mapped, local);
    assert_eq!(r.response_origin, Some(alternate));
    assert_eq!(r.source, alternate);
    assert_eq!(r.other_address, Some(primary));

    // Change PORT sent to the alternate IP+port comes back from alternate IP, primary port.
    let r = ok(&c.query(Request::binding(sock, alternate).with_change(ChangeRequest::PORT)));
    assert_eq!(r.source, at(alt_ip, p));

    // RFC 3489 dialect (no magic cookie), change BOTH.
    let t = c.query(
        Request::binding(sock, primary)
            .with_change(ChangeRequest::BOTH)
            .legacy(),
    );
    let r = ok(&t);
    assert!(r.legacy, "reply in the RFC 3489 dialect");
    assert_eq!(r.mapped, local, "MAPPED-ADDRESS");
    assert_eq!(r.source, alternate);
    assert_eq!(r.response_origin, Some(alternate), "SOURCE-ADDRESS");
    assert_eq!(r.other_address, Some(alternate), "CHANGED-ADDRESS");

    // Legacy plain binding.
    let r = ok(&c.query(Request::binding(sock, primary).legacy()));
    assert!(r.legacy);
    assert_eq!(r.mapped, local);
    assert_eq!(r.source, primary);

    let transactions = 9u64;
    let cs = c.client.stats();
    assert_eq!(cs.requests, transactions);
    assert_eq!(cs.replies, transactions);
    assert_eq!(cs.timeouts, 0);
    assert_eq!(cs.malformed + cs.unexpected, 0);
    assert_eq!(c.client.in_flight(), 0);
    c.close();
    assert_eq!(c.client.poll_timeout(), None);

    let report = server.stop();
    let ss = report.stats;
    // Every transmission reached the server (loopback does not lose datagrams), and each was
    // answered exactly once, with success.
    assert_eq!(
        ss.requests,
        cs.requests + cs.retransmissions,
        "{ss:?} {cs:?}"
    );
    assert_eq!(ss.responses, ss.requests, "{ss:?}");
    assert_eq!(ss.error_responses, 0);
    assert_eq!(ss.malformed + ss.queue_full + ss.not_requests, 0, "{ss:?}");
    assert_eq!(ss.send_failures, 0);
    assert!(report.closed_event);
    assert_eq!(
        report.open_after_close, 0,
        "server sockets left after close"
    );
    assert_eq!(report.runtime.datagrams_received, ss.requests);
    assert_eq!(report.runtime.datagrams_sent, ss.responses);
}

#[test]
fn change_request_without_alternates_gets_error_420() {
    let server = ServerThread::single();
    let primary = server.primary;
    let mut c = Client::new(loopback_retransmit(), 16, 0x5eed_0002);
    let (sock, local) = c.open(SocketAddr::new(LO1, 0));

    let r = ok(&c.query(Request::binding(sock, primary)));
    assert_eq!(r.mapped, local);
    assert_eq!(r.source, primary);
    assert_eq!(r.other_address, None, "no OTHER-ADDRESS without alternates");

    // The server answers 420 from the address the request arrived at. The client accepts that
    // source only when told to (see `client_accepts_420_from_the_primary_address` below).
    for change in [ChangeRequest::PORT, ChangeRequest::IP, ChangeRequest::BOTH] {
        let t = c.query(
            Request::binding(sock, primary)
                .with_change(change)
                .expect_from(primary),
        );
        match t.outcome {
            Err(Failure::ErrorResponse { code, .. }) => assert_eq!(code, 420, "{change:?}"),
            other => panic!("{change:?}: expected error 420, got {other:?}"),
        }
    }
    let cs = c.client.stats();
    c.close();
    let report = server.stop();
    assert_eq!(report.stats.requests, cs.requests + cs.retransmissions);
    assert_eq!(
        report.stats.error_responses + report.stats.responses,
        report.stats.requests
    );
    assert!(report.stats.error_responses >= 3, "{:?}", report.stats);
}

/// Regression: a server without alternates answers a change request with 420 from the address the
/// request went to. The client once applied `source_acceptable` to error responses too, dropped
/// that 420 as `WrongSource` and ended the transaction with
/// `ServerMisbehaved(ReplyFromUnexpectedSource)`; an error response from the request's own server
/// address is accepted now, and the transaction ends with `ErrorResponse { code: 420 }`.
#[test]
fn client_accepts_420_from_the_primary_address() {
    let server = ServerThread::single();
    let mut c = Client::new(loopback_retransmit(), 16, 0x5eed_0003);
    let (sock, _) = c.open(SocketAddr::new(LO1, 0));
    let t = c.query(Request::binding(sock, server.primary).with_change(ChangeRequest::PORT));
    match t.outcome {
        Err(Failure::ErrorResponse { code, .. }) => assert_eq!(code, 420),
        other => panic!("expected error 420, got {other:?}"),
    }
    c.close();
}

fn p2pd_stun(server: SocketAddr, change: &str, legacy: bool) -> String {
    let mut cmd = Command::new(common::p2pd_bin());
    cmd.arg("stun")
        .arg(server.to_string())
        .args(["--change", change, "--local", "127.0.0.1:0", "--json"])
        .args(["--rto-ms", "200"]);
    if legacy {
        cmd.arg("--legacy");
    }
    let out = cmd.output().expect("run p2pd stun");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "p2pd stun {server} --change {change} failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn cli_stun_against_cli_stun_server() {
    let server = CliServer::start(common::p2pd_bin());
    let (primary, alternate) = (server.primary, server.alternate);
    let (p, p2) = (primary.port(), alternate.port());
    let cases = [
        ("none", false, primary),
        ("port", false, SocketAddr::new(LO1, p2)),
        ("ip", false, SocketAddr::new(alternate.ip(), p)),
        ("both", false, alternate),
        ("both", true, alternate),
    ];
    for (change, legacy, from) in cases {
        let text = p2pd_stun(primary, change, legacy);
        let json = json_object(&text);
        let field = |k: &str| {
            json[k]
                .as_str()
                .unwrap_or_else(|| panic!("no string {k} in {text}"))
                .to_string()
        };
        let ctx = format!("--change {change} legacy={legacy}: {text}");
        assert_eq!(field("server"), primary.to_string(), "{ctx}");
        let local: SocketAddr = field("local").parse().expect("local address");
        assert_eq!(local.ip(), LO1, "{ctx}");
        assert_eq!(field("mapped"), local.to_string(), "{ctx}");
        assert_eq!(field("other_address"), alternate.to_string(), "{ctx}");
        assert_eq!(field("source"), from.to_string(), "{ctx}");
        assert_eq!(field("response_origin"), from.to_string(), "{ctx}");
        assert_eq!(json["legacy"], legacy, "{ctx}");
        let tx = json["transmissions"].as_u64().expect("transmissions");
        assert!(tx >= 1, "{ctx}");
        let rtt = json["rtt_ms"].as_f64().expect("rtt_ms");
        assert!((0.0..1000.0).contains(&rtt), "{ctx}");
    }

    // A server that is not there: the CLI fails with a JSON error (timeout) and exit code 1.
    drop(server);
    let out = Command::new(common::p2pd_bin())
        .arg("stun")
        .arg(primary.to_string())
        .args(["--single-shot-ms", "300", "--json"])
        .output()
        .expect("run p2pd stun");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let json = json_object(&stdout);
    assert!(json["error"].is_string(), "{stdout}");
    assert!(json["kind"].is_string(), "{stdout}");
    assert_eq!(json["server"], primary.to_string(), "{stdout}");
}

//! Behaviour of the STUN client machine: retransmission, matching, failures, clean-up.
// Test code: the package's strict lints (Cargo.toml `[lints]`) guard its library code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use core::net::SocketAddr;
use core::time::Duration;

use p2pd_proto::client::{
    ClientApiError, ClientConfig, ClientEvent, Failure, Misbehaviour, Request, Retransmit,
    StunClient, TransactionHandle, TransactionResult,
};
use p2pd_proto::stun::{
    Attribute, ChangeRequest, Class, ErrorCode, Header, Message, MessageWriter,
};
use p2pd_proto::testing::Driven;
use p2pd_proto::{
    DropReason, Instant, IoError, OpKind, SocketId, SocketOp, SocketOutcome, Verdict,
};

const SERVER: &str = "192.0.2.1:3478";
const LOCAL: &str = "10.0.0.2:5000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

/// Every drain of the client goes through the contract checker.
type Client = Driven<StunClient>;

fn driven(c: StunClient) -> Client {
    Driven::new("stun client", c, |e| matches!(e, ClientEvent::Closed))
}

/// A client with one bound socket.
fn client(retransmit: Retransmit) -> (Client, SocketId) {
    let mut c = driven(StunClient::new(
        ClientConfig {
            retransmit,
            ..ClientConfig::default()
        },
        7,
    ));
    let s = c
        .input(|c, now| c.open_socket(now, addr(LOCAL), Default::default()))
        .unwrap();
    match c.take_ops()[..] {
        [SocketOp::Bind { socket, local, .. }] => {
            assert_eq!((socket, local), (s, addr(LOCAL)));
            c.outcome(s, SocketOutcome::Bound { local });
        }
        ref other => panic!("expected a bind intent, got {other:?}"),
    }
    assert!(matches!(
        c.take_events()[..],
        [ClientEvent::SocketReady { .. }]
    ));
    (c, s)
}

/// All transmits so far as (destination, bytes).
fn sent(c: &mut Client) -> Vec<(SocketAddr, Vec<u8>)> {
    c.take_transmits()
        .into_iter()
        .map(|(t, bytes)| (t.destination, bytes))
        .collect()
}

fn results(c: &mut Client) -> Vec<TransactionResult> {
    c.take_events()
        .into_iter()
        .filter_map(|ev| match ev {
            ClientEvent::Transaction(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// `start` at `at`.
fn start(
    c: &mut Client,
    at: Instant,
    request: Request,
) -> Result<TransactionHandle, ClientApiError> {
    c.clock(at).input(|c, now| c.start(now, request))
}

/// A datagram at `at`.
fn datagram(c: &mut Client, at: Instant, s: SocketId, from: SocketAddr, data: &[u8]) -> Verdict {
    c.clock(at).datagram(s, from, data)
}

/// A success response to `request` bytes with the given mapped address and extras.
fn respond(request: &[u8], class: Class, attrs: &[Attribute<'_>]) -> Vec<u8> {
    let req = Message::decode(request).unwrap();
    let header = Header {
        class,
        ..*req.header()
    };
    let mut buf = [0u8; 512];
    let mut w = MessageWriter::new(&mut buf, header).unwrap();
    for a in attrs {
        w.add(a).unwrap();
    }
    let n = w.finish();
    buf[..n].to_vec()
}

/// Runs time forward to `until`, firing timeouts, and returns the instants of transmissions.
fn run_until(c: &mut Client, until: Instant) -> Vec<Instant> {
    let mut times = Vec::new();
    loop {
        let now = match c.deadline() {
            Some(d) if d <= until => d,
            _ => break,
        };
        c.clock(now).fire();
        for _ in sent(c) {
            times.push(now);
        }
    }
    times
}

#[test]
fn rfc5389_retransmission_schedule_then_timeout() {
    let (mut c, s) = client(Retransmit::RFC5389);
    start(&mut c, ms(0), Request::binding(s, addr(SERVER))).unwrap();
    assert_eq!(sent(&mut c).len(), 1);
    let times = run_until(&mut c, ms(100_000));
    let expect: Vec<Instant> = [500, 1500, 3500, 7500, 15500, 31500]
        .into_iter()
        .map(ms)
        .collect();
    assert_eq!(times, expect);
    let r = results(&mut c);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].outcome, Err(Failure::Timeout { transmissions: 7 }));
    assert_eq!(c.deadline(), None, "no timer left after the end");
    assert_eq!(c.machine.stats().retransmissions, 6);
}

#[test]
fn custom_policy_caps_the_backoff() {
    let policy = Retransmit::Rfc5389 {
        rto: Duration::from_millis(100),
        transmissions: 5,
        last_wait: 2,
        max_rto: Duration::from_millis(250),
    };
    let (mut c, s) = client(policy);
    start(&mut c, ms(0), Request::binding(s, addr(SERVER))).unwrap();
    let _ = sent(&mut c);
    let times = run_until(&mut c, ms(10_000));
    assert_eq!(times, vec![ms(100), ms(300), ms(550), ms(800)]);
    let r = results(&mut c);
    assert_eq!(r[0].outcome, Err(Failure::Timeout { transmissions: 5 }));
    // The last wait is 2 x rto = 200 ms after the fifth send at 800 ms.
}

#[test]
fn single_shot_sends_once() {
    let (mut c, s) = client(Retransmit::SingleShot {
        timeout: Duration::from_secs(2),
    });
    start(&mut c, ms(0), Request::binding(s, addr(SERVER))).unwrap();
    assert_eq!(sent(&mut c).len(), 1);
    assert_eq!(c.deadline(), Some(ms(2000)));
    assert!(run_until(&mut c, ms(1999)).is_empty());
    assert!(results(&mut c).is_empty());
    assert!(run_until(&mut c, ms(2000)).is_empty());
    assert_eq!(
        results(&mut c)[0].outcome,
        Err(Failure::Timeout { transmissions: 1 })
    );
}

#[test]
fn reply_must_match_id_source_and_socket() {
    let (mut c, s) = client(Retransmit::RFC5389);
    let id = start(&mut c, ms(0), Request::binding(s, addr(SERVER))).unwrap();
    let (_, req) = sent(&mut c).remove(0);
    let mapped = addr("203.0.113.5:6000");
    let reply = respond(&req, Class::Success, &[Attribute::XorMappedAddress(mapped)]);

    // Another transaction's id: not ours.
    let mut other = reply.clone();
    other[10] ^= 0xFF;
    assert_eq!(
        datagram(&mut c, ms(10), s, addr(SERVER), &other),
        Verdict::NotMine
    );
    // Wrong source: dropped, transaction still alive.
    assert_eq!(
        datagram(&mut c, ms(10), s, addr("192.0.2.9:3478"), &reply),
        Verdict::Dropped(DropReason::WrongSource)
    );
    // Wrong socket.
    assert_eq!(
        datagram(&mut c, ms(10), SocketId(99), addr(SERVER), &reply),
        Verdict::Dropped(DropReason::WrongSocket)
    );
    // A request is not a reply.
    assert_eq!(
        datagram(&mut c, ms(10), s, addr(SERVER), &req),
        Verdict::NotMine
    );
    // Not STUN at all.
    assert_eq!(
        datagram(&mut c, ms(10), s, addr(SERVER), b"hello"),
        Verdict::NotMine
    );
    // Truncated STUN: malformed.
    assert!(matches!(
        datagram(&mut c, ms(10), s, addr(SERVER), &reply[..reply.len() - 4]),
        Verdict::Dropped(DropReason::Malformed(_))
    ));
    assert!(results(&mut c).is_empty());

    assert_eq!(
        datagram(&mut c, ms(42), s, addr(SERVER), &reply),
        Verdict::Consumed
    );
    let r = results(&mut c);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].id, id);
    let ok = r[0].outcome.as_ref().unwrap();
    assert_eq!(ok.mapped, mapped);
    assert_eq!(ok.rtt, Duration::from_millis(42));
    assert_eq!(ok.local, Some(addr(LOCAL)));
    // A late duplicate is recognised.
    assert_eq!(
        datagram(&mut c, ms(50), s, addr(SERVER), &reply),
        Verdict::Dropped(DropReason::Duplicate)
    );
    assert_eq!(c.deadline(), None);
    assert_eq!(c.machine.stats().malformed, 1);
}

#[test]
fn change_request_reply_must_come_from_the_changed_address() {
    let (mut c, s) = client(Retransmit::SingleShot {
        timeout: Duration::from_secs(1),
    });
    start(
        &mut c,
        ms(0),
        Request::binding(s, addr(SERVER)).with_change(ChangeRequest::BOTH),
    )
    .unwrap();
    let (_, req) = sent(&mut c).remove(0);
    assert_eq!(
        Message::decode(&req).unwrap().change_request(),
        Some(ChangeRequest::BOTH)
    );
    let reply = respond(
        &req,
        Class::Success,
        &[Attribute::XorMappedAddress(addr("203.0.113.5:6000"))],
    );
    // The server ignored the change and answered from its primary address.
    assert_eq!(
        datagram(&mut c, ms(5), s, addr(SERVER), &reply),
        Verdict::Dropped(DropReason::WrongSource)
    );
    // Only the port changed: still wrong.
    assert_eq!(
        datagram(&mut c, ms(5), s, addr("192.0.2.1:3479"), &reply),
        Verdict::Dropped(DropReason::WrongSource)
    );
    run_until(&mut c, ms(5000));
    assert_eq!(
        results(&mut c)[0].outcome,
        Err(Failure::ServerMisbehaved(
            Misbehaviour::ReplyFromUnexpectedSource {
                from: addr("192.0.2.1:3479")
            }
        ))
    );

    // The same request answered from the other IP and port is accepted.
    start(
        &mut c,
        ms(6000),
        Request::binding(s, addr(SERVER)).with_change(ChangeRequest::BOTH),
    )
    .unwrap();
    let (_, req) = sent(&mut c).remove(0);
    let reply = respond(
        &req,
        Class::Success,
        &[Attribute::XorMappedAddress(addr("203.0.113.5:6000"))],
    );
    assert_eq!(
        datagram(&mut c, ms(6010), s, addr("192.0.2.2:3479"), &reply),
        Verdict::Consumed
    );
    assert!(results(&mut c)[0].outcome.is_ok());
}

#[test]
fn expect_from_overrides_the_default() {
    let (mut c, s) = client(Retransmit::RFC5389);
    start(
        &mut c,
        ms(0),
        Request::binding(s, addr(SERVER))
            .with_change(ChangeRequest::PORT)
            .expect_from(addr("192.0.2.1:4000")),
    )
    .unwrap();
    let (_, req) = sent(&mut c).remove(0);
    let reply = respond(
        &req,
        Class::Success,
        &[Attribute::MappedAddress(addr("203.0.113.5:6000"))],
    );
    assert_eq!(
        datagram(&mut c, ms(1), s, addr("192.0.2.1:3479"), &reply),
        Verdict::Dropped(DropReason::WrongSource)
    );
    assert_eq!(
        datagram(&mut c, ms(1), s, addr("192.0.2.1:4000"), &reply),
        Verdict::Consumed
    );
}

#[test]
fn error_responses_and_misbehaviour_are_typed() {
    let (mut c, s) = client(Retransmit::RFC5389);
    start(&mut c, ms(0), Request::binding(s, addr(SERVER))).unwrap();
    start(&mut c, ms(0), Request::binding(s, addr(SERVER))).unwrap();
    start(&mut c, ms(0), Request::binding(s, addr(SERVER))).unwrap();
    let reqs = sent(&mut c);
    assert_eq!(reqs.len(), 3);
    let err = respond(
        &reqs[0].1,
        Class::Error,
        &[Attribute::ErrorCode(ErrorCode {
            code: 420,
            reason: "Unknown Attribute",
        })],
    );
    let no_mapped = respond(&reqs[1].1, Class::Success, &[Attribute::Software("x")]);
    let no_code = respond(&reqs[2].1, Class::Error, &[]);
    // Replies in reverse order: matching is by id, not by order.
    for r in [&no_code, &no_mapped, &err] {
        assert_eq!(
            datagram(&mut c, ms(3), s, addr(SERVER), r),
            Verdict::Consumed
        );
    }
    let mut outcomes: Vec<_> = results(&mut c)
        .into_iter()
        .map(|r| (r.id, r.outcome))
        .collect();
    outcomes.sort_by_key(|(id, _)| *id);
    assert_eq!(
        outcomes[0].1,
        Err(Failure::ErrorResponse {
            code: 420,
            reason: "Unknown Attribute".into()
        })
    );
    assert_eq!(
        outcomes[1].1,
        Err(Failure::ServerMisbehaved(
            Misbehaviour::MissingMappedAddress
        ))
    );
    assert_eq!(
        outcomes[2].1,
        Err(Failure::ServerMisbehaved(Misbehaviour::MissingErrorCode))
    );
}

#[test]
fn legacy_requests_carry_no_magic_cookie() {
    let (mut c, s) = client(Retransmit::RFC5389);
    start(
        &mut c,
        ms(0),
        Request::binding(s, addr(SERVER))
            .legacy()
            .with_change(ChangeRequest::PORT),
    )
    .unwrap();
    let (_, req) = sent(&mut c).remove(0);
    let msg = Message::decode(&req).unwrap();
    assert!(msg.is_legacy());
    assert_eq!(req.len(), 28);
    let reply = respond(
        &req,
        Class::Success,
        &[
            Attribute::MappedAddress(addr("203.0.113.5:6000")),
            Attribute::ChangedAddress(addr("192.0.2.2:3479")),
        ],
    );
    // A reply with the same 12 bytes but a different cookie field is another transaction.
    let mut wrong_cookie = reply.clone();
    wrong_cookie[4] ^= 1;
    assert_eq!(
        datagram(&mut c, ms(1), s, addr("192.0.2.1:3479"), &wrong_cookie),
        Verdict::NotMine
    );
    assert_eq!(
        datagram(&mut c, ms(1), s, addr("192.0.2.1:3479"), &reply),
        Verdict::Consumed
    );
    let r = results(&mut c);
    let ok = r[0].outcome.as_ref().unwrap();
    assert!(ok.legacy);
    assert_eq!(ok.other_address, Some(addr("192.0.2.2:3479")));
}

#[test]
fn transactions_wait_for_the_bind_and_fail_with_it() {
    let mut c = driven(StunClient::new(ClientConfig::default(), 1));
    let s = c
        .input(|c, now| c.open_socket(now, addr(LOCAL), Default::default()))
        .unwrap();
    start(&mut c, ms(0), Request::binding(s, addr(SERVER))).unwrap();
    assert!(sent(&mut c).is_empty(), "nothing is sent before the bind");
    assert_eq!(c.deadline(), None);
    assert!(matches!(c.take_ops()[..], [SocketOp::Bind { .. }]));
    c.clock(ms(1)).outcome(
        s,
        SocketOutcome::Failed {
            op: OpKind::Bind,
            destination: None,
            error: IoError::AddrInUse,
        },
    );
    let evs = c.take_events();
    assert!(matches!(
        evs[0],
        ClientEvent::SocketFailed {
            error: IoError::AddrInUse,
            ..
        }
    ));
    assert!(matches!(
        &evs[1],
        ClientEvent::Transaction(TransactionResult {
            outcome: Err(Failure::SocketFailed(IoError::AddrInUse)),
            ..
        })
    ));
    assert_eq!(c.machine.open_sockets(), 0);
    assert_eq!(c.take_ops(), [], "a socket that never bound is not closed");
    c.checker.assert_all_closed();
}

#[test]
fn close_is_idempotent_and_releases_every_socket_once() {
    let (mut c, s1) = client(Retransmit::RFC5389);
    let s2 = c
        .input(|c, now| c.open_socket(now, addr("10.0.0.2:5001"), Default::default()))
        .unwrap();
    let _ = c.take_ops();
    start(&mut c, ms(0), Request::binding(s1, addr(SERVER))).unwrap();
    start(&mut c, ms(0), Request::binding(s2, addr(SERVER))).unwrap();
    let _ = sent(&mut c);
    c.clock(ms(5)).input(|c, now| c.close(now));
    c.clock(ms(6)).input(|c, now| c.close(now));
    let mut closes = c.take_ops();
    closes.sort_by_key(|o| o.socket());
    assert_eq!(
        closes,
        vec![
            SocketOp::Close { socket: s1 },
            SocketOp::Close { socket: s2 }
        ]
    );
    let evs = c.take_events();
    assert_eq!(evs.len(), 3);
    assert!(evs[..2].iter().all(|e| matches!(
        e,
        ClientEvent::Transaction(TransactionResult {
            outcome: Err(Failure::Closed),
            ..
        })
    )));
    assert_eq!(evs[2], ClientEvent::Closed);
    assert_eq!(c.deadline(), None);
    assert!(sent(&mut c).is_empty());
    assert!(start(&mut c, ms(7), Request::binding(s1, addr(SERVER))).is_err());
    c.checker.assert_all_closed();
}

#[test]
fn limits_are_enforced_with_api_errors() {
    let mut c = driven(StunClient::new(
        ClientConfig {
            max_transactions: 2,
            max_sockets: 1,
            ..ClientConfig::default()
        },
        3,
    ));
    let s = c
        .input(|c, now| c.open_socket(now, addr(LOCAL), Default::default()))
        .unwrap();
    assert!(c
        .input(|c, now| c.open_socket(now, addr(LOCAL), Default::default()))
        .is_err());
    start(&mut c, ms(0), Request::binding(s, addr(SERVER))).unwrap();
    start(&mut c, ms(0), Request::binding(s, addr(SERVER))).unwrap();
    assert!(start(&mut c, ms(0), Request::binding(s, addr(SERVER))).is_err());
    assert!(start(
        &mut c,
        ms(0),
        Request::binding(s, addr("[2001:db8::1]:3478"))
    )
    .is_err());
    assert!(start(
        &mut c,
        ms(0),
        Request::binding(SocketId(1234), addr(SERVER))
    )
    .is_err());
}

#[test]
fn same_seed_same_bytes() {
    let run = || {
        let (mut c, s) = client(Retransmit::RFC5389);
        for _ in 0..5 {
            start(&mut c, ms(0), Request::binding(s, addr(SERVER))).unwrap();
        }
        let mut all = sent(&mut c);
        all.extend(
            run_until(&mut c, ms(2000))
                .into_iter()
                .map(|_| (addr(SERVER), vec![])),
        );
        all
    };
    assert_eq!(run(), run());
}

#[test]
fn error_to_a_change_request_is_accepted_from_the_server_address() {
    let (mut c, s) = client(Retransmit::RFC5389);
    start(
        &mut c,
        ms(0),
        Request::binding(s, addr(SERVER)).with_change(ChangeRequest::IP),
    )
    .unwrap();
    let (_, req) = sent(&mut c).remove(0);
    let err = respond(
        &req,
        Class::Error,
        &[Attribute::ErrorCode(ErrorCode {
            code: 420,
            reason: "Unknown Attribute",
        })],
    );
    // From the same IP but another port: neither the changed address nor the server.
    assert_eq!(
        datagram(&mut c, ms(2), s, addr("192.0.2.1:9999"), &err),
        Verdict::Dropped(DropReason::WrongSource)
    );
    assert_eq!(
        datagram(&mut c, ms(2), s, addr(SERVER), &err),
        Verdict::Consumed
    );
    assert!(matches!(
        &results(&mut c)[0].outcome,
        Err(Failure::ErrorResponse { code: 420, .. })
    ));
}

#[test]
fn a_request_may_carry_its_own_retransmission_policy() {
    let (mut c, s) = client(Retransmit::RFC5389);
    start(
        &mut c,
        ms(0),
        Request::binding(s, addr(SERVER)).with_retransmit(Retransmit::SingleShot {
            timeout: Duration::from_millis(250),
        }),
    )
    .unwrap();
    start(&mut c, ms(0), Request::binding(s, addr(SERVER))).unwrap();
    assert_eq!(sent(&mut c).len(), 2);
    // Only the default-policy transaction is retransmitted at 500 ms; the other ended at 250 ms.
    let times = run_until(&mut c, ms(600));
    assert_eq!(times, vec![ms(500)]);
    let r = results(&mut c);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].outcome, Err(Failure::Timeout { transmissions: 1 }));
}

//! The STUN-over-TCP binding machine: against our server over an in-memory stream split anywhere,
//! every failure reason, keep-open, release, keep-alives, closes exactly once, determinism.
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

use p2pd_proto::client_tcp::{
    CloseCause, TcpBinding, TcpBindingConfig, TcpBindingError, TcpBindingEvent, TcpMapping,
    MAX_TCP_RESPONSE_LEN, TCP_BINDING_SOCKET,
};
use p2pd_proto::server::{ServerConfig, ServerEvent, StunServer};
use p2pd_proto::stun::{
    Attribute, Class, DecodeError, ErrorCode, Header, Message, MessageWriter, Method, TransactionId,
};
use p2pd_proto::testing::Driven;
use p2pd_proto::{
    DropReason, Instant, IoError, OpKind, SocketId, SocketOp, SocketOutcome, Verdict,
};
use proptest::prelude::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const SERVER: &str = "192.0.2.1:3478";
const LOCAL: &str = "10.0.0.2:40000";
/// Where the "NAT" maps LOCAL.
const MAPPED: &str = "198.51.100.7:61000";

/// Every drain of the binding goes through the contract checker.
type Binding = Driven<TcpBinding>;

fn binding(config: TcpBindingConfig, seed: u64, now: Instant) -> Binding {
    let b = TcpBinding::new(config, seed, now);
    let mut b = Driven::new("tcp binding", b, |e| {
        matches!(e, TcpBindingEvent::Closed { .. })
    })
    .at(now);
    b.drain();
    b
}

fn ops(b: &mut Binding) -> Vec<SocketOp> {
    b.take_ops()
}

fn events(b: &mut Binding) -> Vec<TcpBindingEvent> {
    b.take_events()
}

fn closes(ops: &[SocketOp]) -> usize {
    ops.iter()
        .filter(|op| matches!(op, SocketOp::Close { .. }))
        .count()
}

/// A binding that has bound and connected; returns it with the request it sent.
fn connected(config: TcpBindingConfig, now: Instant) -> (Binding, Vec<u8>) {
    let mut b = binding(config, 11, now);
    let first = ops(&mut b);
    assert!(matches!(
        first[..],
        [SocketOp::Bind { socket: TCP_BINDING_SOCKET, local, options, .. }]
            if local == addr(LOCAL) && options.reuse_address && options.reuse_port
    ));
    b.outcome(
        TCP_BINDING_SOCKET,
        SocketOutcome::Bound { local: addr(LOCAL) },
    );
    assert_eq!(
        ops(&mut b),
        vec![SocketOp::Connect {
            socket: TCP_BINDING_SOCKET,
            remote: addr(SERVER)
        }]
    );
    b.outcome(
        TCP_BINDING_SOCKET,
        SocketOutcome::Connected {
            local: addr(LOCAL),
            remote: addr(SERVER),
        },
    );
    let sent = b.take_transmits();
    assert_eq!(sent.len(), 1, "one request");
    let (t, request) = sent.into_iter().next().expect("the request");
    assert_eq!(t.socket, TCP_BINDING_SOCKET);
    (b, request)
}

fn config() -> TcpBindingConfig {
    TcpBindingConfig::new(addr(SERVER), addr(LOCAL))
}

/// Our server's answer to `request`, as if the connection came from `MAPPED`.
fn server_answer(request: &[u8]) -> Vec<u8> {
    let server = StunServer::new(ServerConfig::single(addr(SERVER)).with_tcp(true)).unwrap();
    let mut s = Driven::new("stun server", server, |e| matches!(e, ServerEvent::Closed))
        .answering(Driven::<StunServer>::bind_answer());
    s.drain();
    let accept = s.take_ops().into_iter().find_map(|op| match op {
        SocketOp::Accept { socket, .. } => Some(socket),
        _ => None,
    });
    let socket = accept.unwrap();
    s.outcome(
        socket,
        SocketOutcome::Accepted {
            local: addr(SERVER),
            remote: addr(MAPPED),
        },
    );
    assert_eq!(s.stream(socket, request), Verdict::Consumed);
    let (t, answer) = s.take_transmits().into_iter().next().unwrap();
    assert_eq!(t.socket, socket);
    answer
}

fn response(class: Class, id: TransactionId, attrs: &[Attribute<'_>]) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let mut w = MessageWriter::new(&mut buf, Header::new(class, Method::BINDING, id)).unwrap();
    for a in attrs {
        w.add(a).unwrap();
    }
    w.add_fingerprint().unwrap();
    let n = w.finish();
    buf.truncate(n);
    buf
}

fn mapped_event(evs: &[TcpBindingEvent]) -> Option<&TcpMapping> {
    evs.iter().find_map(|e| match e {
        TcpBindingEvent::Mapped(m) => Some(m),
        _ => None,
    })
}

fn failed(evs: &[TcpBindingEvent]) -> Option<TcpBindingError> {
    evs.iter().find_map(|e| match e {
        TcpBindingEvent::Failed { reason } => Some(*reason),
        _ => None,
    })
}

proptest! {
    #[test]
    fn our_server_answer_split_anywhere_gives_the_mapping(
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        rtt_ms in 0u64..5000,
    ) {
        let t0 = Instant::from_millis(100);
        let (mut b, req) = connected(config(), t0);
        let answer = server_answer(&req);
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(answer.len() + 1)).collect();
        points.sort_unstable();
        let t1 = t0 + Duration::from_millis(rtt_ms);
        let mut from = 0;
        for p in points.into_iter().chain([answer.len()]) {
            if p == from {
                continue;
            }
            prop_assert_eq!(b.clock(t1).stream(TCP_BINDING_SOCKET, &answer[from..p]), Verdict::Consumed);
            from = p;
        }
        let evs = events(&mut b);
        let m = mapped_event(&evs).expect("mapped");
        prop_assert_eq!(m.local, addr(LOCAL));
        prop_assert_eq!(m.mapped, addr(MAPPED));
        prop_assert_eq!(m.response_origin, Some(addr(SERVER)));
        prop_assert_eq!(m.server_software.as_deref(), Some("p2pd-rs"));
        prop_assert_eq!(m.rtt, Duration::from_millis(rtt_ms));
        // Not kept open: closed right after the answer, once.
        prop_assert_eq!(closes(&ops(&mut b)), 1);
        prop_assert_eq!(evs.last(), Some(&TcpBindingEvent::Closed { cause: CloseCause::Local }));
        prop_assert_eq!(b.deadline(), None);
        b.clock(t1).input(|b, now| b.close(now));
        prop_assert!(ops(&mut b).is_empty());
        prop_assert!(events(&mut b).is_empty());
    }
}

#[test]
fn the_request_is_a_fingerprinted_binding_request_with_a_seeded_id() {
    let (b, req) = connected(config(), Instant::ZERO);
    let m = Message::decode(&req).unwrap();
    assert_eq!(m.class(), Class::Request);
    assert_eq!(m.method(), Method::BINDING);
    assert!(m.has_fingerprint());
    assert!(!m.is_legacy());
    assert_eq!(m.transaction_id(), b.machine.transaction_id());
    // Same seed, same bytes; another seed, another id.
    let (_, again) = connected(config(), Instant::ZERO);
    assert_eq!(req, again);
    let other = TcpBinding::new(config(), 12, Instant::ZERO);
    assert_ne!(other.transaction_id(), b.machine.transaction_id());
}

#[test]
fn kept_open_the_socket_stays_until_close() {
    let (mut b, req) = connected(config().keep_open(true), Instant::ZERO);
    let _ = b
        .clock(Instant::ZERO)
        .stream(TCP_BINDING_SOCKET, &server_answer(&req));
    let evs = events(&mut b);
    assert!(mapped_event(&evs).is_some());
    assert_eq!(evs.len(), 1, "no Closed yet: {evs:?}");
    assert!(ops(&mut b).is_empty(), "no close while kept open");
    assert!(b.machine.is_open());
    assert_eq!(b.deadline(), None, "no keep-alive configured");
    // Later bytes are read and ignored.
    assert_eq!(
        b.clock(Instant::ZERO)
            .stream(TCP_BINDING_SOCKET, b"whatever"),
        Verdict::Consumed
    );
    b.clock(Instant::ZERO).input(|b, now| b.close(now));
    b.clock(Instant::ZERO).input(|b, now| b.close(now));
    assert_eq!(
        ops(&mut b),
        vec![SocketOp::Close {
            socket: TCP_BINDING_SOCKET
        }]
    );
    assert_eq!(
        events(&mut b),
        vec![TcpBindingEvent::Closed {
            cause: CloseCause::Local
        }]
    );
    assert!(b.machine.is_done());
}

#[test]
fn kept_open_peer_close_or_error_ends_it_with_one_close() {
    for (outcome, cause) in [
        (SocketOutcome::PeerClosed, CloseCause::PeerClosed),
        (
            SocketOutcome::Failed {
                op: OpKind::Receive,
                destination: None,
                error: IoError::ConnectionReset,
            },
            CloseCause::Error(IoError::ConnectionReset),
        ),
    ] {
        let (mut b, req) = connected(config().keep_open(true), Instant::ZERO);
        let _ = b
            .clock(Instant::ZERO)
            .stream(TCP_BINDING_SOCKET, &server_answer(&req));
        let _ = events(&mut b);
        b.clock(Instant::ZERO).outcome(TCP_BINDING_SOCKET, outcome);
        assert_eq!(closes(&ops(&mut b)), 1);
        assert_eq!(events(&mut b), vec![TcpBindingEvent::Closed { cause }]);
        b.clock(Instant::ZERO).input(|b, now| b.close(now));
        assert!(ops(&mut b).is_empty());
    }
}

#[test]
fn release_hands_the_socket_over_without_closing_it() {
    let (mut b, req) = connected(config().keep_open(true), Instant::ZERO);
    let release = |b: &mut Binding| {
        let released = b.input(|b, _| b.release_socket());
        if let Some(socket) = released {
            b.checker.released(socket);
        }
        released
    };
    assert_eq!(release(&mut b), None, "not before the answer");
    let _ = b
        .clock(Instant::ZERO)
        .stream(TCP_BINDING_SOCKET, &server_answer(&req));
    let _ = events(&mut b);
    assert_eq!(release(&mut b), Some(TCP_BINDING_SOCKET));
    assert_eq!(release(&mut b), None);
    b.clock(Instant::ZERO).input(|b, now| b.close(now));
    assert!(ops(&mut b).is_empty(), "a released socket is never closed");
    assert_eq!(
        events(&mut b),
        vec![TcpBindingEvent::Closed {
            cause: CloseCause::Released
        }]
    );
}

#[test]
fn keepalives_are_sent_while_kept_open() {
    let mut cfg = config().keep_open(true);
    cfg.keepalive = Some(Duration::from_secs(30));
    let (mut b, req) = connected(cfg, Instant::ZERO);
    let t1 = Instant::from_millis(50);
    let _ = b.clock(t1).stream(TCP_BINDING_SOCKET, &server_answer(&req));
    for k in 1..=3u64 {
        let at = b.deadline().unwrap();
        assert_eq!(at, t1 + Duration::from_secs(30 * k));
        b.clock(at).fire();
        let (_, bytes) = b.take_transmits().into_iter().next().unwrap();
        let m = Message::decode(&bytes).unwrap();
        assert_eq!(m.class(), Class::Indication);
        assert_ne!(m.transaction_id(), b.machine.transaction_id());
    }
    assert_eq!(b.machine.stats().keepalives, 3);
    b.input(|b, now| b.close(now));
    assert_eq!(b.deadline(), None);
    assert!(b.take_transmits().is_empty());
}

#[test]
fn timeout_at_every_stage() {
    let t0 = Instant::from_millis(7);
    let deadline = t0 + Duration::from_secs(5);
    // While binding, while connecting, while waiting for the answer.
    for stage in 0..3 {
        let mut b = binding(config(), 1, t0);
        let _ = ops(&mut b);
        if stage >= 1 {
            b.clock(t0).outcome(
                TCP_BINDING_SOCKET,
                SocketOutcome::Bound { local: addr(LOCAL) },
            );
        }
        if stage >= 2 {
            b.clock(t0).outcome(
                TCP_BINDING_SOCKET,
                SocketOutcome::Connected {
                    local: addr(LOCAL),
                    remote: addr(SERVER),
                },
            );
        }
        let _ = ops(&mut b);
        assert_eq!(b.deadline(), Some(deadline));
        b.clock(t0 + Duration::from_millis(4999)).fire();
        assert!(events(&mut b).is_empty());
        b.clock(deadline).fire();
        let evs = events(&mut b);
        assert_eq!(
            failed(&evs),
            Some(TcpBindingError::Timeout),
            "stage {stage}"
        );
        assert_eq!(closes(&ops(&mut b)), 1);
        assert_eq!(b.deadline(), None);
    }
}

#[test]
fn bind_and_connect_failures() {
    let mut b = binding(config(), 1, Instant::ZERO);
    let _ = ops(&mut b);
    b.clock(Instant::ZERO).outcome(
        TCP_BINDING_SOCKET,
        SocketOutcome::Failed {
            op: OpKind::Bind,
            destination: None,
            error: IoError::AddrInUse,
        },
    );
    let evs = events(&mut b);
    assert_eq!(
        failed(&evs),
        Some(TcpBindingError::BindFailed(IoError::AddrInUse))
    );
    assert_eq!(closes(&ops(&mut b)), 0, "nothing was opened");
    assert!(b.machine.is_done());

    let mut b = binding(config(), 1, Instant::ZERO);
    let _ = ops(&mut b);
    b.clock(Instant::ZERO).outcome(
        TCP_BINDING_SOCKET,
        SocketOutcome::Bound { local: addr(LOCAL) },
    );
    let _ = ops(&mut b);
    b.clock(Instant::ZERO).outcome(
        TCP_BINDING_SOCKET,
        SocketOutcome::Failed {
            op: OpKind::Connect,
            destination: None,
            error: IoError::ConnectionRefused,
        },
    );
    assert_eq!(
        failed(&events(&mut b)),
        Some(TcpBindingError::ConnectFailed(IoError::ConnectionRefused))
    );
    assert_eq!(closes(&ops(&mut b)), 1);
}

#[test]
fn every_bad_answer_has_its_reason() {
    let (b, _) = connected(config(), Instant::ZERO);
    let id = b.machine.transaction_id();
    let cases: Vec<(Vec<u8>, TcpBindingError)> = vec![
        (
            response(
                Class::Error,
                id,
                &[Attribute::ErrorCode(ErrorCode {
                    code: 420,
                    reason: "Unknown",
                })],
            ),
            TcpBindingError::ErrorResponse { code: 420 },
        ),
        (
            response(Class::Success, id, &[]),
            TcpBindingError::MissingMappedAddress,
        ),
        (
            vec![0xFF; 24],
            TcpBindingError::Malformed(DecodeError::NotStun),
        ),
        (
            {
                let mut r = response(
                    Class::Success,
                    id,
                    &[Attribute::XorMappedAddress(addr(MAPPED))],
                );
                let last = r.len() - 1;
                r[last] ^= 0x40;
                r
            },
            TcpBindingError::Malformed(DecodeError::FingerprintMismatch),
        ),
        (
            response(
                Class::Success,
                id,
                &[Attribute::Software(&"x".repeat(MAX_TCP_RESPONSE_LEN))],
            ),
            TcpBindingError::Malformed(DecodeError::LengthMismatch),
        ),
    ];
    for (bytes, reason) in cases {
        let (mut b, _) = connected(config(), Instant::ZERO);
        let _ = b.clock(Instant::ZERO).stream(TCP_BINDING_SOCKET, &bytes);
        let evs = events(&mut b);
        assert_eq!(failed(&evs), Some(reason));
        assert!(mapped_event(&evs).is_none());
        assert_eq!(closes(&ops(&mut b)), 1);
        // Nothing more is read.
        assert_eq!(
            b.clock(Instant::ZERO).stream(TCP_BINDING_SOCKET, &bytes),
            Verdict::Dropped(DropReason::Closed)
        );
        assert!(events(&mut b).is_empty());
    }
    // The server closing before answering.
    let (mut b, _) = connected(config(), Instant::ZERO);
    b.clock(Instant::ZERO)
        .outcome(TCP_BINDING_SOCKET, SocketOutcome::PeerClosed);
    assert_eq!(failed(&events(&mut b)), Some(TcpBindingError::PeerClosed));
    assert_eq!(closes(&ops(&mut b)), 1);
}

#[test]
fn other_messages_are_skipped_until_the_answer() {
    let (mut b, _) = connected(config(), Instant::ZERO);
    let id = b.machine.transaction_id();
    let mut stream = response(
        Class::Success,
        TransactionId::new([0xAB; 12]),
        &[Attribute::XorMappedAddress(addr("192.0.2.99:1"))],
    );
    stream.extend(response(
        Class::Indication,
        TransactionId::new([1; 12]),
        &[],
    ));
    stream.extend(response(
        Class::Success,
        id,
        &[
            Attribute::XorMappedAddress(addr(MAPPED)),
            Attribute::Software("Coturn-4.6 'test'"),
        ],
    ));
    let _ = b.clock(Instant::ZERO).stream(TCP_BINDING_SOCKET, &stream);
    let evs = events(&mut b);
    let m = mapped_event(&evs).unwrap();
    assert_eq!(m.mapped, addr(MAPPED));
    assert_eq!(m.server_software.as_deref(), Some("Coturn-4.6 'test'"));
    assert_eq!(b.machine.stats().ignored, 2);
    assert_eq!(b.machine.stats().bytes_received, stream.len() as u64);
}

#[test]
fn foreign_sockets_and_datagrams_are_not_ours() {
    let (mut b, req) = connected(config(), Instant::ZERO);
    assert_eq!(
        b.clock(Instant::ZERO)
            .stream(SocketId(9), &server_answer(&req)),
        Verdict::Dropped(DropReason::UnknownSocket)
    );
    assert_eq!(
        b.clock(Instant::ZERO)
            .datagram(TCP_BINDING_SOCKET, addr(SERVER), &req),
        Verdict::NotMine
    );
    b.clock(Instant::ZERO)
        .outcome(SocketId(9), SocketOutcome::PeerClosed);
    assert!(events(&mut b).is_empty());
}

#[test]
fn close_before_the_answer_reports_only_closed() {
    let (mut b, _) = connected(config(), Instant::ZERO);
    b.clock(Instant::ZERO).input(|b, now| b.close(now));
    assert_eq!(
        events(&mut b),
        vec![TcpBindingEvent::Closed {
            cause: CloseCause::Local
        }]
    );
    assert_eq!(closes(&ops(&mut b)), 1);
    b.clock(Instant::from_millis(10_000)).fire();
    assert!(events(&mut b).is_empty());
}

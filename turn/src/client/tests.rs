//! The TURN client against a scripted in-memory TURN server, under the contract checker.

use super::*;
use p2pd_proto::stun::ErrorCode;
use p2pd_proto::testing::{ContractChecker, Recorder};
use p2pd_proto::TRANSMIT_BUFFER_LEN;

const SERVER: &str = "198.51.100.1:3478";
const LOCAL: &str = "10.0.0.2:40000";
const RELAYED: &str = "198.51.100.1:50000";
const MAPPED: &str = "203.0.113.9:40000";
const PEER: &str = "192.0.2.44:7000";
const CONNECTION_ID: u32 = 0x0102_0304;

/// A scripted TURN server: challenges unauthenticated requests, checks the long-term
/// MESSAGE-INTEGRITY and the nonce, and answers successes with MESSAGE-INTEGRITY.
struct Server {
    realm: &'static str,
    nonce: Vec<u8>,
    key: [u8; 16],
    /// Answer the next authenticated request with 438 and this new nonce.
    stale_next: Option<Vec<u8>>,
    /// Answer Allocate with this error code instead.
    allocate_error: Option<u16>,
    /// Answer Connect with this error code instead.
    connect_error: Option<u16>,
    /// Requests seen: (method, lifetime, authenticated).
    seen: Vec<(Method, Option<u32>, bool)>,
}

impl Server {
    fn new(username: &str, password: &str) -> Server {
        Server {
            realm: "p2pd.test",
            nonce: b"nonce-1".to_vec(),
            key: long_term_key(username.as_bytes(), b"p2pd.test", password.as_bytes()),
            stale_next: None,
            allocate_error: None,
            connect_error: None,
            seen: Vec::new(),
        }
    }

    fn answer(&mut self, request: &[u8]) -> Vec<u8> {
        let msg = Message::decode(request).unwrap();
        assert_eq!(msg.class(), Class::Request);
        assert!(msg.has_fingerprint());
        let has_mi = msg
            .attributes()
            .any(|a| a.code == stun_attr::MESSAGE_INTEGRITY);
        let lifetime = match codec::find(&msg, attr::LIFETIME).unwrap() {
            Some(TurnAttribute::Lifetime(l)) => Some(l),
            _ => None,
        };
        self.seen.push((msg.method(), lifetime, has_mi));
        let id = msg.transaction_id();
        let method = msg.method();
        if !has_mi || msg.verify_integrity(&self.key).is_err() {
            return self.error(method, id, 401, true);
        }
        let nonce = match codec::find(&msg, attr::NONCE).unwrap() {
            Some(TurnAttribute::Nonce(n)) => n.to_vec(),
            _ => panic!("authenticated request without NONCE"),
        };
        if let Some(fresh) = self.stale_next.take() {
            self.nonce = fresh;
            return self.error(method, id, 438, true);
        }
        assert_eq!(nonce, self.nonce, "request with an old nonce");
        if method == method::ALLOCATE {
            assert!(matches!(
                codec::find(&msg, attr::REQUESTED_TRANSPORT).unwrap(),
                Some(TurnAttribute::RequestedTransport(
                    codec::TRANSPORT_TCP | codec::TRANSPORT_UDP
                ))
            ));
            if let Some(code) = self.allocate_error {
                return self.error(method, id, code, false);
            }
        }
        if method == method::CONNECT {
            assert_eq!(
                codec::find(&msg, attr::XOR_PEER_ADDRESS).unwrap(),
                Some(TurnAttribute::XorPeerAddress(PEER.parse().unwrap()))
            );
            if let Some(code) = self.connect_error {
                return self.error(method, id, code, false);
            }
        }
        if method == method::CONNECTION_BIND {
            assert_eq!(
                codec::find(&msg, attr::CONNECTION_ID).unwrap(),
                Some(TurnAttribute::ConnectionId(CONNECTION_ID))
            );
        }
        let header = Header::new(Class::Success, method, id);
        let mut buf = [0u8; 512];
        let mut w = MessageWriter::new(&mut buf, header).unwrap();
        if method == method::ALLOCATE {
            w.add_turn(
                &header,
                &TurnAttribute::XorRelayedAddress(RELAYED.parse().unwrap()),
            )
            .unwrap();
            w.add(&Attribute::XorMappedAddress(MAPPED.parse().unwrap()))
                .unwrap();
            w.add_turn(&header, &TurnAttribute::Lifetime(600)).unwrap();
        }
        if method == method::CONNECT {
            w.add_turn(&header, &TurnAttribute::ConnectionId(CONNECTION_ID))
                .unwrap();
        }
        if method == method::REFRESH {
            w.add_turn(&header, &TurnAttribute::Lifetime(lifetime.unwrap_or(600)))
                .unwrap();
        }
        w.add_message_integrity(&self.key).unwrap();
        w.add_fingerprint().unwrap();
        let n = w.finish();
        buf[..n].to_vec()
    }

    fn error(&self, method: Method, id: TransactionId, code: u16, challenge: bool) -> Vec<u8> {
        let header = Header::new(Class::Error, method, id);
        let mut buf = [0u8; 512];
        let mut w = MessageWriter::new(&mut buf, header).unwrap();
        w.add(&Attribute::ErrorCode(ErrorCode {
            code,
            reason: "scripted",
        }))
        .unwrap();
        if challenge {
            w.add_turn(&header, &TurnAttribute::Realm(self.realm))
                .unwrap();
            w.add_turn(&header, &TurnAttribute::Nonce(&self.nonce))
                .unwrap();
        }
        w.add_fingerprint().unwrap();
        let n = w.finish();
        buf[..n].to_vec()
    }
}

struct Harness {
    client: TurnClient,
    checker: ContractChecker<TurnEvent>,
    rec: Recorder<TurnEvent>,
    buf: Vec<u8>,
    now: Instant,
}

fn is_final(e: &TurnEvent) -> bool {
    matches!(e, TurnEvent::Closed { .. })
}

impl Harness {
    fn new(credentials: Credentials) -> Harness {
        Harness::with(credentials, RelayTransport::Tcp)
    }

    fn with(credentials: Credentials, transport: RelayTransport) -> Harness {
        let mut config =
            TurnConfig::new(SERVER.parse().unwrap(), LOCAL.parse().unwrap(), credentials);
        config.transport = transport;
        let mut h = Harness {
            client: TurnClient::new(config, 7, Instant::ZERO),
            checker: ContractChecker::new("turn", is_final),
            rec: Recorder::default(),
            buf: vec![0; TRANSMIT_BUFFER_LEN],
            now: Instant::ZERO,
        };
        h.drain();
        h
    }

    /// The machine reported `failure`, then `Closed` without a deallocation, and closed every
    /// socket.
    fn fails_and_closes(&mut self, failure: TurnFailure) {
        assert_eq!(
            self.rec.take_events(),
            vec![
                TurnEvent::Failed(failure),
                TurnEvent::Closed { deallocated: false }
            ]
        );
        self.checker.assert_all_closed();
    }

    fn drain(&mut self) {
        let _ = self
            .checker
            .drain(&mut self.client, &mut self.buf, &mut self.rec);
    }

    fn outcome(&mut self, outcome: SocketOutcome) {
        self.outcome_on(CONTROL_SOCKET, outcome);
    }

    fn outcome_on(&mut self, socket: SocketId, outcome: SocketOutcome) {
        self.checker.input(self.now);
        self.checker.outcome(socket, &outcome);
        self.client.handle_socket_result(self.now, socket, outcome);
        self.drain();
    }

    fn stream_on(&mut self, socket: SocketId, bytes: &[u8]) -> Verdict {
        self.checker.input(self.now);
        let v = self.client.handle_stream(self.now, socket, bytes);
        self.drain();
        v
    }

    /// A data connection's Bind answered and its Connect completed; returns its ConnectionBind.
    fn data_connected(&mut self) -> (SocketId, Vec<u8>) {
        let ops = self.rec.take_ops();
        let [SocketOp::Bind {
            socket,
            transport: Transport::Tcp,
            ..
        }] = ops[..]
        else {
            panic!("{ops:?}");
        };
        assert_ne!(socket, CONTROL_SOCKET);
        self.outcome_on(
            socket,
            SocketOutcome::Bound {
                local: "10.0.0.2:40001".parse().unwrap(),
            },
        );
        let server = SERVER.parse().unwrap();
        assert_eq!(
            self.rec.take_ops(),
            vec![SocketOp::Connect {
                socket,
                remote: server
            }]
        );
        self.outcome_on(
            socket,
            SocketOutcome::Connected {
                local: "10.0.0.2:40001".parse().unwrap(),
                remote: server,
            },
        );
        let mut t = self.rec.take_transmits();
        assert_eq!(t.len(), 1, "{t:?}");
        let (transmit, bytes) = t.pop().unwrap();
        assert_eq!(
            transmit.socket, socket,
            "ConnectionBind on the data connection"
        );
        (socket, bytes)
    }

    /// Bind and connect; returns the Allocate request.
    fn connect(&mut self) -> Vec<u8> {
        let ops = self.rec.take_ops();
        assert!(matches!(
            ops[..],
            [SocketOp::Bind {
                socket: CONTROL_SOCKET,
                transport: Transport::Tcp,
                ..
            }]
        ));
        self.outcome(SocketOutcome::Bound {
            local: LOCAL.parse().unwrap(),
        });
        assert!(matches!(
            self.rec.take_ops()[..],
            [SocketOp::Connect { .. }]
        ));
        self.outcome(SocketOutcome::Connected {
            local: LOCAL.parse().unwrap(),
            remote: SERVER.parse().unwrap(),
        });
        self.one_request()
    }

    fn one_request(&mut self) -> Vec<u8> {
        let mut t = self.rec.take_transmits();
        assert_eq!(t.len(), 1, "{t:?}");
        let (transmit, bytes) = t.pop().unwrap();
        assert_eq!(transmit.socket, CONTROL_SOCKET);
        bytes
    }

    fn stream(&mut self, bytes: &[u8]) -> Verdict {
        self.checker.input(self.now);
        let v = self.client.handle_stream(self.now, CONTROL_SOCKET, bytes);
        self.drain();
        v
    }

    fn advance_to(&mut self, t: Instant) {
        self.now = t;
        self.checker.timeout_input(t);
        let _ = self
            .checker
            .timeout(&mut self.client, t, &mut self.buf, &mut self.rec);
    }

    /// Runs requests through `server` until none is waiting.
    fn serve(&mut self, server: &mut Server, first: Vec<u8>) {
        let mut next = Some(first);
        while let Some(req) = next.take() {
            let answer = server.answer(&req);
            assert_eq!(self.stream(&answer), Verdict::Consumed);
            let mut t = self.rec.take_transmits();
            assert!(t.len() <= 1, "{t:?}");
            next = t.pop().map(|(_, b)| b);
        }
    }
}

fn allocated(h: &mut Harness, server: &mut Server) {
    let req = h.connect();
    h.serve(server, req);
    assert_eq!(
        h.rec.take_events(),
        vec![TurnEvent::Allocated {
            relayed: RELAYED.parse().unwrap(),
            mapped: Some(MAPPED.parse().unwrap()),
            lifetime: Duration::from_secs(600),
        }]
    );
}

#[test]
fn allocates_after_the_401_challenge_refreshes_permits_and_deallocates_on_close() {
    let mut h = Harness::new(Credentials::long_term("u", "p"));
    let mut server = Server::new("u", "p");
    allocated(&mut h, &mut server);
    assert_eq!(
        server.seen,
        vec![
            (method::ALLOCATE, None, false),
            (method::ALLOCATE, None, true)
        ]
    );
    assert_eq!(h.client.relayed(), Some(RELAYED.parse().unwrap()));

    // CreatePermission.
    h.checker.input(h.now);
    h.client
        .create_permission(h.now, PEER.parse().unwrap())
        .unwrap();
    h.drain();
    let req = h.one_request();
    h.serve(&mut server, req);
    assert_eq!(
        h.rec.take_events(),
        vec![TurnEvent::PermissionCreated {
            peer: PEER.parse().unwrap()
        }]
    );

    // The permission is refreshed at 240 s, the allocation at 300 s (half of 600).
    assert_eq!(
        h.client.poll_timeout(),
        Some(Instant::ZERO + PERMISSION_REFRESH)
    );
    h.advance_to(Instant::ZERO + PERMISSION_REFRESH);
    let req = h.one_request();
    h.serve(&mut server, req);
    assert!(
        h.rec.take_events().is_empty(),
        "permission refreshes are silent"
    );
    h.advance_to(Instant::ZERO + Duration::from_secs(300));
    let req = h.one_request();
    h.serve(&mut server, req);
    assert_eq!(
        h.rec.take_events(),
        vec![TurnEvent::Refreshed {
            lifetime: Duration::from_secs(600)
        }]
    );
    assert_eq!(h.client.stats().refreshes, 1);
    assert_eq!(
        server.seen.last(),
        Some(&(method::REFRESH, Some(600), true))
    );

    // Close: Refresh LIFETIME 0, then the socket's close, then Closed; a second close is a no-op.
    h.checker.input(h.now);
    h.client.close(h.now);
    h.drain();
    h.checker.input(h.now);
    h.client.close(h.now);
    h.drain();
    let req = h.one_request();
    assert!(
        h.rec.take_ops().is_empty(),
        "closed before the deallocation was answered"
    );
    h.serve(&mut server, req);
    assert_eq!(server.seen.last(), Some(&(method::REFRESH, Some(0), true)));
    assert_eq!(
        h.rec.take_ops(),
        vec![SocketOp::Close {
            socket: CONTROL_SOCKET
        }]
    );
    assert_eq!(
        h.rec.take_events(),
        vec![TurnEvent::Closed { deallocated: true }]
    );
    h.checker.input(h.now);
    h.client.close(h.now);
    h.drain();
    assert!(h.rec.take().is_empty());
    h.checker.assert_all_closed();
    assert_eq!(h.checker.closes(), 1);
}

#[test]
fn a_stale_nonce_is_retried_with_the_new_nonce() {
    let mut h = Harness::new(Credentials::long_term("u", "p"));
    let mut server = Server::new("u", "p");
    server.stale_next = Some(b"nonce-2".to_vec());
    allocated(&mut h, &mut server);
    assert_eq!(server.seen.len(), 3, "challenge, stale nonce, success");
    assert_eq!(server.nonce, b"nonce-2");
}

#[test]
fn a_wrong_password_fails_unauthenticated_and_closes_once() {
    let mut h = Harness::new(Credentials::long_term("u", "wrong"));
    let mut server = Server::new("u", "p");
    let req = h.connect();
    h.serve(&mut server, req);
    assert_eq!(server.seen.len(), 2, "one challenge, one refusal, no loop");
    h.fails_and_closes(TurnFailure::Unauthenticated);
}

#[test]
fn allocate_errors_are_typed_failures() {
    for (code, failure) in [
        (403, TurnFailure::Forbidden),
        (437, TurnFailure::AllocationMismatch),
        (441, TurnFailure::WrongCredentials),
        (442, TurnFailure::UnsupportedTransportProtocol),
        (486, TurnFailure::AllocationQuotaReached),
        (508, TurnFailure::InsufficientCapacity),
        (599, TurnFailure::Other(599)),
    ] {
        let mut h = Harness::new(Credentials::long_term("u", "p"));
        let mut server = Server::new("u", "p");
        server.allocate_error = Some(code);
        let req = h.connect();
        h.serve(&mut server, req);
        h.fails_and_closes(failure);
    }
}

#[test]
fn every_error_code_has_its_failure() {
    let table = [
        (300, TurnFailure::TryAlternate(None)),
        (400, TurnFailure::BadRequest),
        (401, TurnFailure::Unauthenticated),
        (403, TurnFailure::Forbidden),
        (420, TurnFailure::UnknownAttribute),
        (437, TurnFailure::AllocationMismatch),
        (438, TurnFailure::StaleNonce),
        (440, TurnFailure::AddressFamilyNotSupported),
        (441, TurnFailure::WrongCredentials),
        (442, TurnFailure::UnsupportedTransportProtocol),
        (443, TurnFailure::PeerAddressFamilyMismatch),
        (446, TurnFailure::ConnectionAlreadyExists),
        (447, TurnFailure::ConnectionTimeoutOrFailure),
        (486, TurnFailure::AllocationQuotaReached),
        (500, TurnFailure::ServerError),
        (508, TurnFailure::InsufficientCapacity),
        (487, TurnFailure::Other(487)),
    ];
    for (code, failure) in table {
        assert_eq!(TurnFailure::from_code(code, None), failure);
        assert!(!failure.to_string().is_empty());
    }
}

#[test]
fn responses_split_into_single_bytes_are_reassembled() {
    let mut h = Harness::new(Credentials::long_term("u", "p"));
    let mut server = Server::new("u", "p");
    let req = h.connect();
    let challenge = server.answer(&req);
    for b in &challenge {
        assert_eq!(h.stream(std::slice::from_ref(b)), Verdict::Consumed);
    }
    let req = h.one_request();
    let ok = server.answer(&req);
    for b in &ok {
        assert_eq!(h.stream(std::slice::from_ref(b)), Verdict::Consumed);
    }
    assert!(matches!(
        h.rec.take_events()[..],
        [TurnEvent::Allocated { .. }]
    ));
}

#[test]
fn a_success_with_a_wrong_integrity_is_ignored() {
    let mut h = Harness::new(Credentials::long_term("u", "p"));
    let mut server = Server::new("u", "p");
    let req = h.connect();
    let challenge = server.answer(&req);
    assert_eq!(h.stream(&challenge), Verdict::Consumed);
    let req = h.one_request();
    let mut forged = server.answer(&req);
    // Flip a bit of the XOR-RELAYED-ADDRESS: MESSAGE-INTEGRITY no longer verifies.
    forged[27] ^= 1;
    // The FINGERPRINT must still hold, or the codec rejects it first: recompute it.
    let n = forged.len();
    let crc = crc32(&forged[..n - 8]) ^ p2pd_proto::stun::FINGERPRINT_XOR;
    forged[n - 4..].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(h.stream(&forged), Verdict::Consumed);
    assert!(h.rec.take_events().is_empty());
    assert_eq!(h.client.stats().ignored, 1);
    // The real answer still works.
    let real = server.answer(&req);
    server.seen.pop();
    assert_eq!(h.stream(&real), Verdict::Consumed);
    assert!(matches!(
        h.rec.take_events()[..],
        [TurnEvent::Allocated { .. }]
    ));
}

/// CRC-32 (ISO-HDLC), bitwise: the test's own, independent of the codec's.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn no_answer_times_out_and_closes() {
    let mut h = Harness::new(Credentials::long_term("u", "p"));
    let _ = h.connect();
    let deadline = h.client.poll_timeout().unwrap();
    assert_eq!(deadline, Instant::ZERO + Duration::from_secs(10));
    h.advance_to(deadline);
    h.fails_and_closes(TurnFailure::Timeout);
}

#[test]
fn close_before_the_allocation_closes_at_once() {
    let mut h = Harness::new(Credentials::long_term("u", "p"));
    let _ = h.connect();
    h.checker.input(h.now);
    h.client.close(h.now);
    h.drain();
    assert!(h.rec.take_transmits().is_empty());
    assert_eq!(
        h.rec.take_events(),
        vec![TurnEvent::Closed { deallocated: false }]
    );
    h.checker.assert_all_closed();
}

#[test]
fn a_refused_connect_is_a_typed_failure() {
    let mut h = Harness::new(Credentials::long_term("u", "p"));
    let _ = h.rec.take_ops();
    h.outcome(SocketOutcome::Bound {
        local: LOCAL.parse().unwrap(),
    });
    h.outcome(SocketOutcome::Failed {
        op: OpKind::Connect,
        destination: None,
        error: IoError::ConnectionRefused,
    });
    h.fails_and_closes(TurnFailure::ConnectFailed(IoError::ConnectionRefused));
}

#[test]
fn rest_credentials_are_expiry_colon_user() {
    let c = Credentials::rest(b"north", "alice", 1_699_999_000, Duration::from_secs(1000));
    assert_eq!(c.username, "1700000000:alice");
    assert_eq!(
        c,
        Credentials::long_term(
            c.username.clone(),
            RestCredentials::new(b"north", "alice", 1_700_000_000).password
        )
    );
    assert!(!format!("{c:?}").contains(&c.password));
}

#[test]
fn create_permission_before_allocation_is_misuse() {
    let mut h = Harness::new(Credentials::long_term("u", "p"));
    assert_eq!(
        h.client.create_permission(h.now, PEER.parse().unwrap()),
        Err(TurnError::NotAllocated)
    );
}

#[test]
fn garbage_from_the_server_is_a_typed_failure_not_a_panic() {
    let mut h = Harness::new(Credentials::long_term("u", "p"));
    let _ = h.connect();
    let v = h.stream(&[
        0x01, 0x01, 0x00, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    assert!(matches!(v, Verdict::Dropped(DropReason::Malformed(_))));
    assert!(matches!(
        h.rec.take_events()[..],
        [
            TurnEvent::Failed(TurnFailure::Malformed(_)),
            TurnEvent::Closed { .. }
        ]
    ));
    h.checker.assert_all_closed();
}

#[test]
fn channel_data_is_framed_padded_to_four_and_ignored() {
    // ChannelData on channel 0x4001 with 5 bytes: a 4-byte header, padded to 12 on a stream.
    let channel = [0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0];
    assert_eq!(frame_len(&[]), Err(DecodeError::TooShort));
    assert_eq!(frame_len(&channel[..3]), Err(DecodeError::TooShort));
    assert_eq!(frame_len(&channel[..4]), Ok(12));
    let challenge = {
        let mut h = Harness::new(Credentials::long_term("u", "p"));
        let req = h.connect();
        Server::new("u", "p").answer(&req)
    };
    assert_eq!(frame_len(&challenge), Ok(challenge.len()));
    let mut chunk = channel.to_vec();
    chunk.extend_from_slice(&challenge);
    chunk.extend_from_slice(&channel);
    for cut in 0..=chunk.len() {
        let mut h = Harness::new(Credentials::long_term("u", "p"));
        let _ = h.connect();
        assert_eq!(h.stream(&chunk[..cut]), Verdict::Consumed, "cut at {cut}");
        assert_eq!(h.stream(&chunk[cut..]), Verdict::Consumed, "cut at {cut}");
        assert_eq!(h.client.stats().ignored, 2, "cut at {cut}");
        // The challenge between them was answered: the Allocate goes again, authenticated.
        let retry = h.one_request();
        let retry = Message::decode(&retry).unwrap();
        assert!(retry
            .attributes()
            .any(|a| a.code == stun_attr::MESSAGE_INTEGRITY));
    }
}

#[test]
fn channel_data_longer_than_the_buffer_is_malformed() {
    let mut h = Harness::new(Credentials::long_term("u", "p"));
    let _ = h.connect();
    let v = h.stream(&[0x40, 0x01, 0xFF, 0xFF]);
    let e = DecodeError::LengthMismatch;
    assert_eq!(v, Verdict::Dropped(DropReason::Malformed(e)));
    assert!(matches!(
        h.rec.take_events()[..],
        [
            TurnEvent::Failed(TurnFailure::Malformed(DecodeError::LengthMismatch)),
            TurnEvent::Closed { .. }
        ]
    ));
    h.checker.assert_all_closed();
}

/// Allocated, with a permission for PEER.
fn permitted(h: &mut Harness, server: &mut Server) {
    allocated(h, server);
    h.checker.input(h.now);
    h.client
        .create_permission(h.now, PEER.parse().unwrap())
        .unwrap();
    h.drain();
    let req = h.one_request();
    h.serve(server, req);
    let _ = h.rec.take_events();
}

/// An allocation with a permission for PEER, a Connect to it answered, and the data connection
/// up with its ConnectionBind written: the harness, the server, the data socket and the bind.
fn data_connection_up() -> (Harness, Server, SocketId, Vec<u8>) {
    let mut h = Harness::new(Credentials::long_term("u", "p"));
    let mut server = Server::new("u", "p");
    permitted(&mut h, &mut server);
    h.checker.input(h.now);
    h.client.connect(h.now, PEER.parse().unwrap()).unwrap();
    h.drain();
    let req = h.one_request();
    let answer = server.answer(&req);
    assert_eq!(h.stream(&answer), Verdict::Consumed);
    let (socket, bind) = h.data_connected();
    (h, server, socket, bind)
}

#[test]
fn connect_binds_a_data_connection_and_hands_it_over() {
    let (mut h, mut server, socket, bind) = data_connection_up();
    assert_eq!(server.seen.last().map(|s| s.0), Some(method::CONNECT));
    // The answer and the peer's first bytes in one chunk: the bytes are handed over with it.
    let mut answer = server.answer(&bind);
    assert_eq!(
        server.seen.last(),
        Some(&(method::CONNECTION_BIND, None, true))
    );
    answer.extend_from_slice(b"hello");
    assert_eq!(h.stream_on(socket, &answer), Verdict::Consumed);
    assert_eq!(
        h.rec.take_events(),
        vec![TurnEvent::PeerConnected {
            peer: PEER.parse().unwrap(),
            socket,
            data: b"hello".to_vec(),
        }]
    );
    h.checker.released(socket);
    assert!(
        h.rec.take_ops().is_empty(),
        "the handed-over socket is not closed"
    );
    assert_eq!(h.client.stats().connections, 1);
    assert_eq!(
        h.client.handle_stream(h.now, socket, b"more"),
        Verdict::Dropped(DropReason::UnknownSocket),
        "the machine no longer reads it"
    );

    h.checker.input(h.now);
    h.client.close(h.now);
    h.drain();
    let req = h.one_request();
    h.serve(&mut server, req);
    assert_eq!(
        h.rec.take_ops(),
        vec![SocketOp::Close {
            socket: CONTROL_SOCKET
        }]
    );
    h.checker.assert_all_closed();
}

#[test]
fn a_peers_connection_attempt_is_bound_and_handed_over() {
    let mut h = Harness::new(Credentials::long_term("u", "p"));
    let mut server = Server::new("u", "p");
    permitted(&mut h, &mut server);
    let header = Header::new(
        Class::Indication,
        method::CONNECTION_ATTEMPT,
        TransactionId::new([9; 12]),
    );
    let mut buf = [0u8; 128];
    let mut w = MessageWriter::new(&mut buf, header).unwrap();
    w.add_turn(&header, &TurnAttribute::ConnectionId(CONNECTION_ID))
        .unwrap();
    w.add_turn(
        &header,
        &TurnAttribute::XorPeerAddress(PEER.parse().unwrap()),
    )
    .unwrap();
    let n = w.finish();
    assert_eq!(h.stream(&buf[..n]), Verdict::Consumed);
    let (socket, bind) = h.data_connected();
    let answer = server.answer(&bind);
    assert_eq!(h.stream_on(socket, &answer), Verdict::Consumed);
    assert_eq!(
        h.rec.take_events(),
        vec![TurnEvent::PeerConnected {
            peer: PEER.parse().unwrap(),
            socket,
            data: Vec::new(),
        }]
    );
    h.checker.released(socket);
}

#[test]
fn a_refused_connect_fails_that_peer_only() {
    let mut h = Harness::new(Credentials::long_term("u", "p"));
    let mut server = Server::new("u", "p");
    server.connect_error = Some(447);
    permitted(&mut h, &mut server);
    h.checker.input(h.now);
    h.client.connect(h.now, PEER.parse().unwrap()).unwrap();
    h.drain();
    let req = h.one_request();
    h.serve(&mut server, req);
    assert_eq!(
        h.rec.take_events(),
        vec![TurnEvent::PeerConnectFailed {
            peer: PEER.parse().unwrap(),
            failure: TurnFailure::ConnectionTimeoutOrFailure,
        }]
    );
    assert!(h.rec.take_ops().is_empty());
    assert_eq!(h.client.relayed(), Some(RELAYED.parse().unwrap()));
}

#[test]
fn a_data_connection_without_an_answer_times_out_and_is_closed() {
    let (mut h, _server, socket, _bind) = data_connection_up();
    h.advance_to(h.now + Duration::from_secs(10));
    assert_eq!(
        h.rec.take_events(),
        vec![TurnEvent::PeerConnectFailed {
            peer: PEER.parse().unwrap(),
            failure: TurnFailure::Timeout,
        }]
    );
    assert_eq!(h.rec.take_ops(), vec![SocketOp::Close { socket }]);
    assert_eq!(h.client.relayed(), Some(RELAYED.parse().unwrap()));
}

#[test]
fn close_during_a_data_connection_setup_closes_both_sockets() {
    let (mut h, mut server, socket, _bind) = data_connection_up();
    h.checker.input(h.now);
    h.client.close(h.now);
    h.drain();
    assert_eq!(h.rec.take_ops(), vec![SocketOp::Close { socket }]);
    let req = h.one_request();
    h.serve(&mut server, req);
    assert_eq!(
        h.rec.take_ops(),
        vec![SocketOp::Close {
            socket: CONTROL_SOCKET
        }]
    );
    h.checker.assert_all_closed();
    assert_eq!(h.checker.closes(), 2);
}

#[test]
fn connect_on_a_udp_allocation_is_misuse() {
    let mut config = TurnConfig::new(
        SERVER.parse().unwrap(),
        LOCAL.parse().unwrap(),
        Credentials::long_term("u", "p"),
    );
    config.transport = RelayTransport::Udp;
    let mut c = TurnClient::new(config, 1, Instant::ZERO);
    assert_eq!(
        c.connect(Instant::ZERO, PEER.parse().unwrap()),
        Err(TurnError::NotAllocated)
    );
}

fn data_indication(peer: &str, data: &[u8]) -> Vec<u8> {
    let header = Header::new(Class::Indication, method::DATA, TransactionId::new([4; 12]));
    let mut buf = [0u8; 256];
    let mut w = MessageWriter::new(&mut buf, header).unwrap();
    w.add_turn(
        &header,
        &TurnAttribute::XorPeerAddress(peer.parse().unwrap()),
    )
    .unwrap();
    w.add_turn(&header, &TurnAttribute::Data(data)).unwrap();
    w.add_fingerprint().unwrap();
    let n = w.finish();
    buf[..n].to_vec()
}

#[test]
fn udp_allocations_send_and_receive_through_indications() {
    let mut h = Harness::with(Credentials::long_term("u", "p"), RelayTransport::Udp);
    let mut server = Server::new("u", "p");
    let peer: SocketAddr = PEER.parse().unwrap();
    assert_eq!(
        h.client.send_to(h.now, peer, b"early"),
        Err(TurnError::NotAllocated)
    );
    permitted(&mut h, &mut server);
    assert_eq!(
        h.client
            .send_to(h.now, "192.0.2.99:1".parse().unwrap(), b"x"),
        Err(TurnError::NoPermission)
    );
    assert_eq!(
        h.client.send_to(h.now, peer, &[0; MAX_SEND_LEN + 1]),
        Err(TurnError::TooLong)
    );
    assert_eq!(
        h.client.connect(h.now, peer),
        Err(TurnError::NotTcpAllocation)
    );
    h.checker.input(h.now);
    h.client.send_to(h.now, peer, &[7; MAX_SEND_LEN]).unwrap();
    h.drain();
    let send = h.one_request();
    assert!(send.len() <= TRANSMIT_BUFFER_LEN);
    let msg = Message::decode(&send).unwrap();
    assert_eq!(
        (msg.class(), msg.method()),
        (Class::Indication, method::SEND)
    );
    assert_eq!(
        codec::find(&msg, attr::XOR_PEER_ADDRESS).unwrap(),
        Some(TurnAttribute::XorPeerAddress(peer))
    );
    assert_eq!(
        codec::find(&msg, attr::DATA).unwrap(),
        Some(TurnAttribute::Data(&[7; MAX_SEND_LEN][..]))
    );
    for _ in 0..MAX_SEND_QUEUE {
        h.client.send_to(h.now, peer, b"q").unwrap();
    }
    assert_eq!(
        h.client.send_to(h.now, peer, b"q"),
        Err(TurnError::QueueFull)
    );
    h.drain();
    assert_eq!(h.rec.take_transmits().len(), MAX_SEND_QUEUE);

    // Data from the permitted peer is an event; from anyone else it is dropped and counted.
    assert_eq!(h.stream(&data_indication(PEER, b"pong")), Verdict::Consumed);
    assert_eq!(
        h.rec.take_events(),
        vec![TurnEvent::PeerData {
            peer,
            data: b"pong".to_vec()
        }]
    );
    let ignored = h.client.stats().ignored;
    assert_eq!(
        h.stream(&data_indication("203.0.113.1:5", b"spoof")),
        Verdict::Consumed
    );
    assert!(h.rec.take_events().is_empty());
    assert_eq!(h.client.stats().ignored, ignored + 1);
}

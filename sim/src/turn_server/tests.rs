//! The server alone under the contract checker: the long-term authentication dance, framing,
//! allocation errors, peers that never get bound, and close.

use core::net::SocketAddr;
use core::time::Duration;

use p2pd_proto::stun::{Attribute, Class, Header, Message, MessageWriter};
use p2pd_proto::stun::{Method, TransactionId};
use p2pd_proto::testing::Driven;
use p2pd_proto::{Instant, SocketId, SocketOp, SocketOutcome};
use p2pd_turn::codec::{self, attr, error, long_term_key, method, TurnAttribute, TurnWriter};

use super::{TurnServer, TurnServerConfig, TurnServerEvent, LISTENER};

const REALM: &str = "unit.p2pd";
const CLIENT: &str = "198.51.100.7:40000";
const PEER: &str = "203.0.113.9:5555";

fn listen() -> SocketAddr {
    "192.0.2.1:3478".parse().unwrap()
}

fn config() -> TurnServerConfig {
    TurnServerConfig::new(listen(), REALM).with_user("u", "p")
}

struct H {
    d: Driven<TurnServer>,
    tid: u8,
    /// Accepts seen and not answered: (listener, socket).
    accepts: Vec<(SocketId, SocketId)>,
}

impl H {
    fn new(config: TurnServerConfig) -> H {
        let d = Driven::new("turn server", TurnServer::new(config, 7), |e| {
            *e == TurnServerEvent::Closed
        })
        .at(Instant::from_millis(1_000))
        .answering(Driven::<TurnServer>::bind_answer());
        let mut h = H {
            d,
            tid: 0,
            accepts: Vec::new(),
        };
        h.d.drain();
        h
    }

    /// The outstanding accept on `listener`.
    fn accept_on(&mut self, listener: SocketId) -> SocketId {
        let _ = self.ops();
        let at = self
            .accepts
            .iter()
            .position(|(l, _)| *l == listener)
            .expect("an accept outstanding");
        self.accepts.remove(at).1
    }

    /// The intents since the last call (accepts are remembered).
    fn ops(&mut self) -> Vec<SocketOp> {
        let ops = self.d.take_ops();
        for op in &ops {
            if let SocketOp::Accept { listener, socket } = op {
                self.accepts.push((*listener, *socket));
            }
        }
        ops
    }

    /// A client connection to the listen address.
    fn connect(&mut self) -> SocketId {
        let s = self.accept_on(LISTENER);
        self.d.outcome(
            s,
            SocketOutcome::Accepted {
                local: listen(),
                remote: CLIENT.parse().unwrap(),
            },
        );
        s
    }

    /// A request of `method` with `attrs`, and credentials (nonce, password) if given.
    fn request(
        &mut self,
        method: Method,
        attrs: &[TurnAttribute<'_>],
        creds: Option<(&[u8], &str)>,
    ) -> Vec<u8> {
        self.tid = self.tid.wrapping_add(1);
        let header = Header::new(Class::Request, method, TransactionId::new([self.tid; 12]));
        let mut buf = [0u8; 1024];
        let mut w = MessageWriter::new(&mut buf, header).unwrap();
        for a in attrs {
            w.add_turn(&header, a).unwrap();
        }
        if let Some((nonce, password)) = creds {
            w.add(&Attribute::Username(b"u")).unwrap();
            w.add_turn(&header, &TurnAttribute::Realm(REALM)).unwrap();
            w.add_turn(&header, &TurnAttribute::Nonce(nonce)).unwrap();
            w.add_message_integrity(&long_term_key(b"u", REALM.as_bytes(), password.as_bytes()))
                .unwrap();
        }
        w.add_fingerprint().unwrap();
        let n = w.finish();
        buf[..n].to_vec()
    }

    /// The messages written on `socket` since the last call.
    fn replies(&mut self, socket: SocketId) -> Vec<Vec<u8>> {
        self.d
            .take_transmits()
            .into_iter()
            .filter(|(t, _)| t.socket == socket)
            .map(|(_, b)| b)
            .collect()
    }

    fn one_reply(&mut self, socket: SocketId) -> Vec<u8> {
        let mut r = self.replies(socket);
        assert_eq!(r.len(), 1, "{r:?}");
        r.remove(0)
    }

    /// Sends an Allocate without credentials; returns the challenge's nonce.
    fn challenge(&mut self, s: SocketId) -> Vec<u8> {
        let req = self.request(method::ALLOCATE, &[tcp()], None);
        let _ = self.d.stream(s, &req);
        let r = self.one_reply(s);
        let msg = Message::decode(&r).unwrap();
        assert_eq!(msg.class(), Class::Error);
        assert_eq!(msg.error_code().unwrap().code, error::UNAUTHENTICATED);
        assert_eq!(
            codec::find(&msg, attr::REALM),
            Ok(Some(TurnAttribute::Realm(REALM)))
        );
        match codec::find(&msg, attr::NONCE) {
            Ok(Some(TurnAttribute::Nonce(n))) => n.to_vec(),
            other => panic!("no nonce: {other:?}"),
        }
    }

    /// A full allocation on a new connection: (control socket, relayed listener, nonce).
    fn allocated(&mut self) -> (SocketId, SocketId, Vec<u8>) {
        let s = self.connect();
        let nonce = self.challenge(s);
        let req = self.request(method::ALLOCATE, &[tcp()], Some((&nonce, "p")));
        let _ = self.d.stream(s, &req);
        let listener = self
            .ops()
            .into_iter()
            .find_map(|op| match op {
                SocketOp::Listen { socket, .. } => Some(socket),
                _ => None,
            })
            .expect("the relayed listener listens");
        let r = self.one_reply(s);
        let msg = Message::decode(&r).unwrap();
        assert_eq!(msg.class(), Class::Success, "{msg:?}");
        assert!(msg
            .verify_integrity(&long_term_key(b"u", REALM.as_bytes(), b"p"))
            .is_ok());
        (s, listener, nonce)
    }
}

fn tcp() -> TurnAttribute<'static> {
    TurnAttribute::RequestedTransport(codec::TRANSPORT_TCP)
}

fn code(bytes: &[u8]) -> u16 {
    Message::decode(bytes)
        .unwrap()
        .error_code()
        .map_or(0, |e| e.code)
}

#[test]
fn challenge_then_allocate_with_the_nonce() {
    let mut h = H::new(config());
    let (s, _, _) = h.allocated();
    let st = h.d.machine.stats();
    assert_eq!(
        (st.challenges, st.allocations_live, st.allocations_total),
        (1, 1, 1)
    );
    let relayed = h.d.machine.relayed_addresses();
    assert_eq!(relayed.len(), 1);
    assert_eq!(relayed[0].ip(), listen().ip());
    // A second Allocate on the same connection: 437.
    let nonce = h.challenge(s);
    let req = h.request(method::ALLOCATE, &[tcp()], Some((&nonce, "p")));
    let _ = h.d.stream(s, &req);
    assert_eq!(code(&h.one_reply(s)), error::ALLOCATION_MISMATCH);
}

#[test]
fn wrong_password_is_401_and_counted() {
    let mut h = H::new(config());
    let s = h.connect();
    let nonce = h.challenge(s);
    let req = h.request(method::ALLOCATE, &[tcp()], Some((&nonce, "wrong")));
    let _ = h.d.stream(s, &req);
    let r = h.one_reply(s);
    assert_eq!(code(&r), error::UNAUTHENTICATED);
    assert_eq!(h.d.machine.stats().auth_refused, 1);
    assert_eq!(h.d.machine.stats().allocations_total, 0);
}

#[test]
fn an_old_nonce_is_438_with_a_new_one() {
    let mut c = config();
    c.nonce_lifetime = Duration::from_secs(5);
    let mut h = H::new(c);
    let s = h.connect();
    let nonce = h.challenge(s);
    h.d.advance(Duration::from_secs(6));
    let req = h.request(method::ALLOCATE, &[tcp()], Some((&nonce, "p")));
    let _ = h.d.stream(s, &req);
    let r = h.one_reply(s);
    assert_eq!(code(&r), error::STALE_NONCE);
    let msg = Message::decode(&r).unwrap();
    let Ok(Some(TurnAttribute::Nonce(fresh))) = codec::find(&msg, attr::NONCE) else {
        panic!("438 without a nonce");
    };
    assert_ne!(fresh, &nonce[..]);
    // The new nonce works.
    let fresh = fresh.to_vec();
    let req = h.request(method::ALLOCATE, &[tcp()], Some((&fresh, "p")));
    let _ = h.d.stream(s, &req);
    assert_eq!(h.d.machine.stats().allocations_total, 1);
    // A forged nonce (right length, wrong tag) is not ours either.
    let mut forged = fresh.clone();
    forged[40] = if forged[40] == b'0' { b'1' } else { b'0' };
    let req = h.request(method::REFRESH, &[], Some((&forged, "p")));
    let _ = h.replies(s);
    let _ = h.d.stream(s, &req);
    assert_eq!(code(&h.one_reply(s)), error::STALE_NONCE);
}

#[test]
fn a_request_split_byte_by_byte_is_reassembled_and_two_at_once_both_answered() {
    let mut h = H::new(config());
    let s = h.connect();
    let req = h.request(method::ALLOCATE, &[tcp()], None);
    for b in &req {
        let _ = h.d.stream(s, core::slice::from_ref(b));
    }
    assert_eq!(code(&h.one_reply(s)), error::UNAUTHENTICATED);
    let mut two = h.request(Method::BINDING, &[], None);
    two.extend(h.request(method::REFRESH, &[], None));
    let _ = h.d.stream(s, &two);
    let r = h.replies(s);
    assert_eq!(r.len(), 2);
    let binding = Message::decode(&r[0]).unwrap();
    assert_eq!(binding.xor_mapped_address(), Some(CLIENT.parse().unwrap()));
    assert_eq!(code(&r[1]), error::UNAUTHENTICATED);
}

#[test]
fn a_malformed_frame_closes_the_connection_once() {
    let mut h = H::new(config());
    let s = h.connect();
    let _ = h.d.stream(s, &[0xFF; 40]);
    let closes = h
        .ops()
        .into_iter()
        .filter(|op| *op == SocketOp::Close { socket: s })
        .count();
    assert_eq!(closes, 1);
    assert_eq!(h.d.machine.stats().malformed, 1);
    // More bytes on it are not the server's any more.
    let _ = h.d.stream(s, &[0xFF; 4]);
    assert_eq!(h.d.machine.stats().malformed, 1);
    // An oversized message is malformed too.
    let s = h.connect();
    let mut big = vec![0u8; 24];
    big[2..4].copy_from_slice(&8192u16.to_be_bytes());
    big[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    let _ = h.d.stream(s, &big);
    assert_eq!(h.d.machine.stats().malformed, 2);
}

#[test]
fn udp_is_442_and_the_quota_is_486() {
    let mut c = config();
    c.max_allocations = 1;
    let mut h = H::new(c);
    let _ = h.allocated();
    let s = h.connect();
    let nonce = h.challenge(s);
    let udp = TurnAttribute::RequestedTransport(codec::TRANSPORT_UDP);
    let req = h.request(method::ALLOCATE, &[udp], Some((&nonce, "p")));
    let _ = h.d.stream(s, &req);
    assert_eq!(code(&h.one_reply(s)), error::UNSUPPORTED_TRANSPORT_PROTOCOL);
    let req = h.request(method::ALLOCATE, &[tcp()], Some((&nonce, "p")));
    let _ = h.d.stream(s, &req);
    assert_eq!(code(&h.one_reply(s)), error::ALLOCATION_QUOTA_REACHED);
}

#[test]
fn a_peer_gets_a_connection_attempt_and_is_closed_if_never_bound() {
    let mut h = H::new(config());
    let (_, ps, _, _) = peer_waiting(&mut h);
    let _ = h.d.stream(ps, b"early bytes are held");
    h.d.run_for(Duration::from_secs(31));
    assert!(h.ops().contains(&SocketOp::Close { socket: ps }));
    assert_eq!(h.d.machine.stats().bind_timeouts, 1);
    assert_eq!(h.d.machine.table_sizes().2, 0);
}

#[test]
fn deallocation_and_close_release_every_socket_once() {
    let mut h = H::new(config());
    let (s, listener, nonce) = h.allocated();
    let req = h.request(
        method::REFRESH,
        &[TurnAttribute::Lifetime(0)],
        Some((&nonce, "p")),
    );
    let _ = h.d.stream(s, &req);
    let r = Message::decode(&h.one_reply(s)).unwrap().class();
    assert_eq!(r, Class::Success);
    assert!(h.ops().contains(&SocketOp::Close { socket: listener }));
    let st = h.d.machine.stats();
    assert_eq!((st.allocations_live, st.deallocated), (0, 1));
    let (_, _, _) = h.allocated();
    h.d.input(|m, now| m.close(now));
    h.d.input(|m, now| m.close(now));
    assert!(h.d.checker.finished());
    h.d.checker.assert_all_closed();
}

/// An allocation with a permitted peer connected to the relayed address, the ConnectionAttempt
/// checked: (control, peer socket, CONNECTION-ID, nonce).
fn peer_waiting(h: &mut H) -> (SocketId, SocketId, u32, Vec<u8>) {
    let (s, listener, nonce) = h.allocated();
    let peer: SocketAddr = PEER.parse().unwrap();
    let req = h.request(
        method::CREATE_PERMISSION,
        &[TurnAttribute::XorPeerAddress(peer)],
        Some((&nonce, "p")),
    );
    let _ = h.d.stream(s, &req);
    let _ = h.replies(s);
    let ps = h.accept_on(listener);
    h.d.outcome(
        ps,
        SocketOutcome::Accepted {
            local: listen(),
            remote: peer,
        },
    );
    // The client hears of it: a ConnectionAttempt naming the peer and a connection id.
    let ind = h.one_reply(s);
    let msg = Message::decode(&ind).unwrap();
    assert_eq!(msg.class(), Class::Indication);
    assert_eq!(msg.method(), method::CONNECTION_ATTEMPT);
    assert_eq!(
        codec::find(&msg, attr::XOR_PEER_ADDRESS),
        Ok(Some(TurnAttribute::XorPeerAddress(peer)))
    );
    let Ok(Some(TurnAttribute::ConnectionId(id))) = codec::find(&msg, attr::CONNECTION_ID) else {
        panic!("no CONNECTION-ID");
    };
    (s, ps, id, nonce)
}

#[test]
fn connection_bind_splices_held_and_trailing_bytes_both_ways_then_half_closes() {
    let mut h = H::new(config());
    let (_, ps, id, nonce) = peer_waiting(&mut h);
    let _ = h.d.stream(ps, b"held before the bind; ");
    let data = h.connect();
    let mut bind = h.request(
        method::CONNECTION_BIND,
        &[TurnAttribute::ConnectionId(id)],
        Some((&nonce, "p")),
    );
    bind.extend_from_slice(b"client bytes in the same segment");
    let _ = h.d.stream(data, &bind);
    let out = h.d.take_transmits();
    let on_data: Vec<&Vec<u8>> = out
        .iter()
        .filter(|(t, _)| t.socket == data)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(on_data.len(), 2, "{on_data:?}");
    let answer = Message::decode(on_data[0]).unwrap();
    assert_eq!(answer.class(), Class::Success);
    assert_eq!(answer.method(), method::CONNECTION_BIND);
    assert_eq!(on_data[1].as_slice(), b"held before the bind; ");
    let to_peer: Vec<u8> = out
        .iter()
        .filter(|(t, _)| t.socket == ps)
        .flat_map(|(_, b)| b.clone())
        .collect();
    assert_eq!(to_peer, b"client bytes in the same segment");
    // Spliced: bytes pass through untouched, even ones that look like STUN.
    let _ = h.d.stream(data, &[0xFF; 7]);
    let _ = h.d.stream(ps, b"reply");
    let out = h.d.take_transmits();
    let on = |socket: SocketId| -> Vec<Vec<u8>> {
        out.iter()
            .filter(|(t, _)| t.socket == socket)
            .map(|(_, b)| b.clone())
            .collect()
    };
    assert_eq!(on(ps), vec![vec![0xFF; 7]]);
    assert_eq!(on(data), vec![b"reply".to_vec()]);
    let st = h.d.machine.stats();
    assert_eq!(st.connections_spliced, 1);
    assert_eq!(st.bytes_relayed, 22 + 32 + 7 + 5);
    // The peer's EOF shuts the data connection's sending half; the client's EOF then closes both.
    h.d.outcome(ps, SocketOutcome::PeerClosed);
    let ops = h.ops();
    assert!(
        ops.contains(&SocketOp::Shutdown { socket: data }),
        "{ops:?}"
    );
    assert!(
        !ops.iter().any(|op| matches!(op, SocketOp::Close { .. })),
        "{ops:?}"
    );
    h.d.outcome(data, SocketOutcome::PeerClosed);
    let ops = h.ops();
    assert!(ops.contains(&SocketOp::Close { socket: ps }), "{ops:?}");
    assert!(ops.contains(&SocketOp::Close { socket: data }), "{ops:?}");
    assert_eq!(h.d.machine.table_sizes().2, 0);
}

#[test]
fn connection_bind_needs_the_allocations_user_and_a_waiting_id() {
    let mut c = config();
    c.users.push(("w".into(), "p".into()));
    let mut h = H::new(c);
    let (_, _, id, nonce) = peer_waiting(&mut h);
    let data = h.connect();
    // An unknown CONNECTION-ID: 400.
    let bind = h.request(
        method::CONNECTION_BIND,
        &[TurnAttribute::ConnectionId(id.wrapping_add(1))],
        Some((&nonce, "p")),
    );
    let _ = h.d.stream(data, &bind);
    assert_eq!(code(&h.one_reply(data)), error::BAD_REQUEST);
    assert_eq!(h.d.machine.stats().connections_spliced, 0);
}

#[test]
fn a_peer_that_overflows_before_its_bind_is_closed() {
    let mut c = config();
    c.max_peer_buffer = 16;
    let mut h = H::new(c);
    let (_, ps, _, _) = peer_waiting(&mut h);
    let _ = h.d.stream(ps, &[1; 10]);
    let _ = h.d.stream(ps, &[2; 10]);
    assert!(h.ops().contains(&SocketOp::Close { socket: ps }));
    assert_eq!(h.d.machine.stats().peer_overflow, 1);
}

#[test]
fn the_control_connection_ending_deletes_its_allocation_and_peers() {
    let mut h = H::new(config());
    let (s, ps, _, nonce) = peer_waiting(&mut h);
    // Connect to a peer without a permission: 403.
    let stranger: SocketAddr = "203.0.113.77:80".parse().unwrap();
    let req = h.request(
        method::CONNECT,
        &[TurnAttribute::XorPeerAddress(stranger)],
        Some((&nonce, "p")),
    );
    let _ = h.d.stream(s, &req);
    assert_eq!(code(&h.one_reply(s)), error::FORBIDDEN);
    let listener = h.d.machine.allocations.get(&s).map(|a| a.listener).unwrap();
    h.d.outcome(s, SocketOutcome::PeerClosed);
    let ops = h.ops();
    for socket in [s, ps, listener] {
        assert!(
            ops.contains(&SocketOp::Close { socket }),
            "{socket}: {ops:?}"
        );
    }
    let st = h.d.machine.stats();
    assert_eq!((st.allocations_live, st.deallocated, st.expired), (0, 0, 0));
    assert_eq!(h.d.machine.table_sizes(), (0, 0, 0, 1));
}

//! A TURN allocation end to end, in memory: the client machine asks, a scripted server
//! challenges it (401 with REALM and NONCE), the client answers with its long-term credentials,
//! the server grants a relayed address, and the close deallocates (Refresh with LIFETIME 0).
//! The caller plays the runtime: it carries the client's bytes to the server and back.
//!
//! `cargo run -p p2pd-turn --example allocate_in_memory`
// Example code: the package's strict lints (Cargo.toml `[lints]`) guard its library code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use p2pd_proto::stun::{Attribute, Class, ErrorCode, Header, Message, MessageWriter};
use p2pd_proto::{Instant, Machine, SocketOp, SocketOutcome, TRANSMIT_BUFFER_LEN};
use p2pd_turn::codec::{self, attr, long_term_key, method, TurnAttribute, TurnWriter};
use p2pd_turn::{Credentials, TurnClient, TurnConfig, TurnEvent, CONTROL_SOCKET};

const REALM: &str = "example.org";
const NONCE: &[u8] = b"a-nonce";

/// The server's answer to one request: a challenge unless it carries valid credentials.
fn answer(request: &[u8], key: &[u8; 16]) -> Vec<u8> {
    let msg = Message::decode(request).unwrap();
    let header = Header::new(Class::Success, msg.method(), msg.transaction_id());
    let mut buf = [0u8; 512];
    if msg.verify_integrity(key).is_err() {
        let header = Header::new(Class::Error, msg.method(), msg.transaction_id());
        let mut w = MessageWriter::new(&mut buf, header).unwrap();
        w.add(&Attribute::ErrorCode(ErrorCode {
            code: 401,
            reason: "Unauthorized",
        }))
        .unwrap();
        w.add_turn(&header, &TurnAttribute::Realm(REALM)).unwrap();
        w.add_turn(&header, &TurnAttribute::Nonce(NONCE)).unwrap();
        w.add_fingerprint().unwrap();
        let n = w.finish();
        println!("server: 401 for {:?} (realm {REALM})", msg.method());
        return buf[..n].to_vec();
    }
    let mut w = MessageWriter::new(&mut buf, header).unwrap();
    let lifetime = match codec::find(&msg, attr::LIFETIME).unwrap() {
        Some(TurnAttribute::Lifetime(l)) => l,
        _ => 600,
    };
    if msg.method() == method::ALLOCATE {
        w.add_turn(
            &header,
            &TurnAttribute::XorRelayedAddress("198.51.100.1:50000".parse().unwrap()),
        )
        .unwrap();
        w.add(&Attribute::XorMappedAddress(
            "203.0.113.9:40000".parse().unwrap(),
        ))
        .unwrap();
    }
    w.add_turn(&header, &TurnAttribute::Lifetime(lifetime))
        .unwrap();
    w.add_message_integrity(key).unwrap();
    w.add_fingerprint().unwrap();
    let n = w.finish();
    println!(
        "server: success for {:?}, lifetime {lifetime} s",
        msg.method()
    );
    buf[..n].to_vec()
}

fn main() {
    let server = "198.51.100.1:3478".parse().unwrap();
    let local = "10.0.0.2:40000".parse().unwrap();
    let key = long_term_key(b"alice", REALM.as_bytes(), b"secret");
    let config = TurnConfig::new(server, local, Credentials::long_term("alice", "secret"));
    let mut client = TurnClient::new(config, 7, Instant::ZERO);
    let now = Instant::ZERO;
    let mut buf = [0u8; TRANSMIT_BUFFER_LEN];
    let mut events = Vec::new();
    let mut deallocated = None;
    loop {
        let mut progressed = false;
        while let Some(op) = client.poll_socket_op() {
            progressed = true;
            match op {
                SocketOp::Bind { socket, .. } => {
                    client.handle_socket_result(now, socket, SocketOutcome::Bound { local })
                }
                SocketOp::Connect { socket, remote } => client.handle_socket_result(
                    now,
                    socket,
                    SocketOutcome::Connected { local, remote },
                ),
                SocketOp::Close { socket } => println!("client: closes socket {socket:?}"),
                _ => {}
            }
        }
        while let Some(t) = client.poll_transmit(&mut buf) {
            progressed = true;
            assert_eq!(t.socket, CONTROL_SOCKET);
            let reply = answer(&buf[..t.len], &key);
            let _ = client.handle_stream(now, CONTROL_SOCKET, &reply);
        }
        while let Some(ev) = client.poll_event() {
            progressed = true;
            match &ev {
                TurnEvent::Allocated { relayed, .. } => {
                    println!("client: relayed address {relayed}; closing");
                    client.close(now);
                }
                TurnEvent::Closed { deallocated: d } => deallocated = Some(*d),
                _ => {}
            }
            events.push(ev);
        }
        if !progressed {
            break;
        }
    }
    assert!(
        events
            .iter()
            .any(|e| matches!(e, TurnEvent::Allocated { .. })),
        "{events:?}"
    );
    assert_eq!(deallocated, Some(true), "the close deallocated: {events:?}");
    println!("client: closed, allocation released");
}

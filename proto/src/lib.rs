//! # p2pd-proto
//!
//! The base of p2pd-rs: the **machine contract** every protocol machine follows, the **STUN codec**,
//! the **STUN client** machine (transactions with RFC 5389 retransmission), the **RFC 5780 STUN
//! server** machine (UDP, and STUN over TCP on its primary address) and the **STUN-over-TCP
//! binding** machine ([`client_tcp::TcpBinding`]) that learns a NAT's TCP mapping for a local port.
//! Nothing here does I/O, reads a clock, spawns a thread or uses a global RNG: the caller owns
//! sockets, time and the loop.
//!
//! ## The driving loop
//!
//! A machine takes inputs (`handle_datagram`, `handle_socket_result`, `handle_timeout`, commands) that
//! all carry `now`, and after every input the caller drains its outputs in a fixed order: transmits,
//! socket intents, events, then the next deadline. Here a client and a server talk through an
//! in-memory "network":
//!
//! ```
//! use core::time::Duration;
//! use p2pd_proto::{Instant, Machine, SocketOp, SocketOutcome, TRANSMIT_BUFFER_LEN};
//! use p2pd_proto::client::{ClientConfig, ClientEvent, Request, StunClient};
//! use p2pd_proto::server::{ServerConfig, StunServer};
//!
//! let server_addr = "192.0.2.10:3478".parse().unwrap();
//! let client_addr = "198.51.100.7:40000".parse().unwrap();
//! let mut server = StunServer::new(ServerConfig::single(server_addr)).unwrap();
//! let mut client = StunClient::new(ClientConfig::default(), 42);
//! let mut now = Instant::ZERO;
//! let socket = client.open_socket(now, client_addr, Default::default()).unwrap();
//! let tx = client.start(now, Request::binding(socket, server_addr)).unwrap();
//!
//! // Answer every bind intent as a runtime would.
//! fn bind_all<M: Machine>(m: &mut M, now: Instant) {
//!     while let Some(op) = m.poll_socket_op() {
//!         if let SocketOp::Bind { socket, local, .. } = op {
//!             m.handle_socket_result(now, socket, SocketOutcome::Bound { local });
//!         }
//!     }
//! }
//! bind_all(&mut server, now);
//! bind_all(&mut client, now);
//!
//! let mut buf = [0u8; TRANSMIT_BUFFER_LEN];
//! let mut reply = None;
//! for _ in 0..10 {
//!     now = now + Duration::from_millis(5);
//!     while let Some(t) = client.poll_transmit(&mut buf) {
//!         // The "network" delivers the request to the server's socket.
//!         let sock = server.socket_for(t.destination).unwrap();
//!         let _ = server.handle_datagram(now, sock, client_addr, &buf[..t.len]);
//!     }
//!     while let Some(t) = server.poll_transmit(&mut buf) {
//!         let _ = client.handle_datagram(now, socket, server_addr, &buf[..t.len]);
//!     }
//!     while let Some(ev) = client.poll_event() {
//!         if let ClientEvent::Transaction(done) = ev {
//!             reply = Some(done);
//!         }
//!     }
//!     if let Some(deadline) = client.poll_timeout() {
//!         if deadline <= now { client.handle_timeout(now); }
//!     }
//! }
//! let done = reply.expect("answered");
//! assert_eq!(done.id, tx);
//! assert_eq!(done.outcome.unwrap().mapped, client_addr);
//! ```
//!
//! Runtimes and simulators run this loop through [`Machine`]; [`drain`] is the loop as a function
//! (the simulator uses it).
//!
//! ## Examples
//!
//! - runnable example: `cargo run -p p2pd-proto --example stun_in_memory` (client and RFC 5780
//!   server drained with [`drain`] through an in-memory network in virtual time, with a lost
//!   request and its retransmission);
//! - runnable example: `cargo run -p p2pd-proto --example tokio_stun` (client and server, each
//!   driven from a tokio task on a real UDP socket on 127.0.0.1: `select!` over `recv_from` and
//!   `sleep_until(poll_timeout)`).
#![forbid(unsafe_code)]
// Strict lints: [workspace.lints] in the root Cargo.toml. Unit tests may also do unchecked
// arithmetic (clippy.toml lets them unwrap, expect, panic and index).
#![cfg_attr(test, allow(clippy::arithmetic_side_effects))]
#![warn(missing_docs)]

pub mod accept;
pub mod client;
pub mod client_tcp;
pub mod compose;
pub mod machine;
pub mod rng;
pub mod send_buffer;
pub mod server;
pub mod stun;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod time;

pub use machine::{
    drain, BindOptions, DropReason, InterfaceName, IoError, Machine, OpKind, Outputs, SocketId,
    SocketOp, SocketOutcome, Transmit, Transport, Verdict, TRANSMIT_BUFFER_LEN,
};
pub use rng::Rng;
pub use time::Instant;

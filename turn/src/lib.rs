//! TURN (RFC 8656, with RFC 6062 TCP allocations) for p2pd: the TURN attributes and credentials on
//! the workspace's STUN codec ([`codec`]) and the [`TurnClient`] machine ([`client`]): Allocate with
//! long-term or TURN REST API credentials, Refresh, CreatePermission and deallocation on close.
//!
//! # Why not `turn-client-proto`
//!
//! Measured against the machine contract (ARCHITECTURE.md) by reading its documentation on
//! docs.rs (turn-client-proto 0.2 to 0.7.2, 2026-12):
//!
//! - It brings a second STUN codec: it re-exports `stun_proto` and `turn_types` (`pub use
//!   stun_proto as stun`) and builds every message with them, while the workspace keeps one STUN
//!   codec (`p2pd_proto::stun`, zero-copy, fuzzed differentially against `stun-types`).
//! - Its time is `stun_proto::Instant` and its outputs are its own `Transmit<T>` and
//!   `TransmitBuild<DelayedMessageOrChannelSend<T>>`, addressed by local and remote
//!   `SocketAddr`: no `SocketId`, no socket intents (`SocketOp`), so it cannot ask for the TCP data
//!   connections of RFC 6062 nor close its sockets; the caller must open them and report them back
//!   (`allocated_tcp_socket(id, five_tuple, ...)`, `tcp_closed(...)`).
//! - A client is constructed per 5-tuple (`TurnClientUdp::allocate(local_addr,
//!   turn_server_address, credentials, ...)`), so the local address must be known before the
//!   socket exists, the reverse of our bind-then-report order.
//! - It has no seeded RNG parameter for transaction ids and no typed per-error-code failure; it
//!   logs through `tracing`.
//!
//! Wrapping it would mean translating two time types, two transmit shapes and two codecs at every
//! input; so p2pd implements TURN on its own codec, which already has the framing, the XOR address
//! format and HMAC-SHA1 MESSAGE-INTEGRITY (the long-term mechanism only changes the key).
#![forbid(unsafe_code)]
// Strict lints: [workspace.lints] in the root Cargo.toml. Unit tests may also do unchecked
// arithmetic (clippy.toml lets them unwrap, expect, panic and index).
#![cfg_attr(test, allow(clippy::arithmetic_side_effects))]
#![warn(missing_docs)]

pub mod client;
pub mod codec;

pub use client::{
    CredentialSource, Credentials, RelayTransport, TurnClient, TurnConfig, TurnError, TurnEvent,
    TurnFailure, TurnStats, CONTROL_SOCKET, MAX_DATA_CONNECTIONS, MAX_SEND_LEN, MAX_SEND_QUEUE,
};

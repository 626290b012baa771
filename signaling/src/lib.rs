//! # p2pd-signaling
//!
//! Encrypted signaling: identities, sealed envelopes, the MQTT client machine, multi-broker rendezvous,
//! the PNP name registry and the peer address format. Filled in by the signaling issue; today it only
//! fixes the crate's place and lints in the workspace.
#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
#![warn(missing_docs)]

pub use p2pd_proto::{Instant, SocketId};

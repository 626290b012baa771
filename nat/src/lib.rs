//! # p2pd-nat
//!
//! NAT behaviour discovery: the behaviour model, the classifier machine, the port-delta test, port
//! prediction and the STUN server list. Filled in by the NAT issue; today it re-exports the STUN
//! vocabulary it will build on.
#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
#![warn(missing_docs)]

pub use p2pd_proto::stun::ChangeRequest;

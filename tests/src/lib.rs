//! # p2pd-sim
//!
//! The workspace's cross-crate test crate. Today it holds:
//!
//! - integration tests on real sockets (`tests/`): our STUN client against our RFC 5780 server on
//!   127.0.0.1 + 127.0.0.2, against coturn, coturn's `turnutils_natdiscovery` against our server, the
//!   `p2pd` CLI end to end, and a 10,000-transaction soak through the mio runtime;
//! - the `stun-load` binary, a closed-loop STUN load generator used by `bench/server-throughput.sh`.
//!
//! The deterministic network simulator (virtual time, links, NAT boxes built from `p2pd-nat`'s
//! behaviour model) lands here with the NAT discovery work.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

//! # p2pd-punch
//!
//! TCP hole punching between two nodes behind NATs, as sans-IO machines (no I/O, no clock, seeded
//! RNG; time and wall-clock epochs are passed in):
//!
//! - [`Puncher`] ([`machine`]): the punch itself. Offer / answer / acknowledge over signaling, a
//!   meet time both clocks agree on, sockets bound with reuse flags ahead of it, timed
//!   simultaneous connects plus a listener per port, a secure channel handshake
//!   ([`p2pd_channel`], Noise XX bound to both identities) on every connection that elects the
//!   first one proving the peer, retried rounds with fresh candidates. It ends in
//!   [`PunchEvent::Connected`] (the stream and its established channel are the caller's) or a
//!   typed [`PunchFailure`].
//! - [`node::PunchNode`]: a whole punching node in one machine: signaling
//!   ([`p2pd_signaling::Rendezvous`] over MQTT brokers), a STUN-over-TCP probe per punch port to
//!   learn its mapping, the [`Puncher`], and afterwards the punched stream through its channel
//!   (send, half-close, bytes in; authenticated and encrypted). The CLI's `p2pd punch` is this machine on the mio runtime.
//! - [`message`]: the punch signaling messages ([`Message`], [`PunchCandidate`]s); [`plan`]: local port choice and external port prediction from the NAT's
//!   behaviour.
//! - [`clock`]: peer clock offset from a four-timestamp exchange and meet-time agreement with an
//!   explicit uncertainty; [`sntp`]: the SNTP client machine ([`SntpClient`]) that measures our
//!   own wall clock against NTP servers.
//!
//! Node ids are signaling's [`NodeId`] (the smaller id leads). API misuse is a
//! [`PunchApiError`]; protocol failures are events.
//!
//! Runnable examples: `cargo run -p p2pd-punch --example sntp_in_memory` (the [`SntpClient`]
//! against an in-memory server 250 ms ahead, over asymmetric delays: offset ± uncertainty) and
//! `cargo run -p p2pd-punch --example meet_time` (peer clock offset from four timestamps, then a
//! meet time proposed by one peer and agreed by the other).
#![forbid(unsafe_code)]
// Strict lints: [workspace.lints] in the root Cargo.toml. Unit tests may also do unchecked
// arithmetic (clippy.toml lets them unwrap, expect, panic and index).
#![cfg_attr(test, allow(clippy::arithmetic_side_effects))]
#![warn(missing_docs)]

pub mod clock;
mod error;
pub mod machine;
pub mod message;
pub mod node;
pub mod plan;
pub mod sntp;

pub use clock::{agree, propose, ClockError, MeetPolicy, MeetTime, PeerClock, Proposer, WallTime};
pub use error::PunchApiError;
pub use machine::{PunchConfig, PunchEvent, PunchFailure, Puncher};
pub use message::{Message, PunchCandidate, SessionId};
pub use p2pd_proto::{Instant, Machine, SocketId};
pub use p2pd_signaling::NodeId;
pub use sntp::{
    ClockEstimate, SntpApiError, SntpClient, SntpConfig, SntpConfigError, SntpEvent, SntpFailure,
};

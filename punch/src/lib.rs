//! # p2pd-punch
//!
//! TCP hole punching: clock offset, meet-time agreement and the punch machine. Filled in by the punching
//! issue; today it only fixes the crate's place and lints in the workspace.
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

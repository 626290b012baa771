//! # p2pd-node
//!
//! The node: `connect(name)` hands back an authenticated, encrypted stream to the peer, whatever
//! NATs stand between, by the cheapest path that works. A sans-IO machine (no I/O, no clock,
//! seeded randomness) composing the parts of the other crates:
//!
//! - **its own address, kept true** (module `own`): a TCP listener; the listener port's external
//!   address (a STUN-over-TCP binding from that port, kept open); the NAT behaviour (classified
//!   with RFC 5780 servers, or given); the `p2pd1:` address built from them; its registration
//!   under our name on every PNP server, refreshed at half its lifetime; answers to
//!   fresh-address requests over signaling;
//! - **the ladder** ([`ladder`] decides, [`Node::connect`] runs it): resolve the target (a PNP
//!   name on every server, a fresh address over signaling in parallel; or a `p2pd1:` address;
//!   or a public key), then **phase A** within a 3 s budget: direct dials to every endpoint that
//!   can be reachable raced with a reverse request (the peer dials us when we are the reachable
//!   one); **phase B**: the TCP punch ([`p2pd_punch`]) only for punchable pairs; **phase C**:
//!   a TURN relay ([`p2pd_turn`], an RFC 6062 TCP allocation; [`NodeConfig::relays`]), allocated
//!   at once when nothing else can work, else alongside the punch and released unused if
//!   another path wins. The first stream whose secure channel
//!   proves the expected identity wins; every other attempt is closed once;
//! - **every stream through the secure channel** ([`p2pd_channel`], Noise XX bound to the node
//!   identities): the side that connects is the channel's initiator and picks the winner; a
//!   stranger who connects to the listener gets nothing but a closed connection.
//!
//! Events report each connect with its path (`Direct`, `Reverse`, `Punched`, `Relayed`), the
//! elapsed time and what every phase did ([`PhaseReport`]), or a failure that says why each
//! phase failed. Inbound streams come as [`NodeEvent::Accepted`].
//!
//! The CLI's `p2pd node` and `p2pd connect` are this machine on the mio runtime; the simulator
//! runs it on virtual networks behind every NAT kind.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::arithmetic_side_effects))]
#![warn(missing_docs)]

mod config;
mod connect;
mod conns;
pub mod ladder;
mod node;
mod own;
mod phases;
mod punches;
mod relays;
mod resolve;
mod signal;
mod streams;
mod target;
mod types;
pub mod wire;

#[cfg(test)]
mod tests;

pub use config::{pnp_client_config, NatSource, NodeConfig, RelaySpec};
pub use node::{Node, NodeError, NodeStats};
pub use p2pd_proto::{Instant, Machine, SocketId};
pub use p2pd_turn::{CredentialSource, Credentials};
pub use streams::RELAY_LINGER;
pub use target::{Target, TargetError};
pub use types::{
    ConnectId, NodeApiError, NodeEvent, Path, Phase, PhaseFailure, PhaseOutcome, PhaseReport,
    SkipReason, StreamId,
};

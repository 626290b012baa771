//! # p2pd-nat
//!
//! NAT behaviour discovery, as pure machines and functions (no I/O, no clock, injected RNG):
//!
//! - [`Behaviour`]: the RFC 4787 / RFC 5780 vocabulary (mapping, filtering, port allocation, port
//!   range, hairpinning, mapping lifetime) shared by the classifier and the simulator's NAT boxes,
//!   with the translation to p2pd's labels ([`Behaviour::p2pd`]).
//! - [`Classifier`]: a machine that runs the mapping and filtering tests against several STUN
//!   servers in parallel, then the port-allocation test, and reports every probe as evidence with
//!   an answer or `Inconclusive` — never a guess ([`classify`] explains the method).
//! - [`delta_test`]: the port-allocation ("delta") scorer over probe observations.
//! - [`predict`]: ranked candidates for the external port of a chosen local port.
//! - [`default_servers`] / [`ServerList`]: RFC 5780 servers with canonical ids and health.
//!
//! Runnable example: `cargo run -p p2pd-nat --example classify_loopback` (the classifier on a
//! `p2pd_mio::Runtime` against two of our RFC 5780 servers on 127.0.0.1 / 127.0.0.2: `Open`).
//!
//! ```
//! use p2pd_nat::{Behaviour, Filtering, Mapping, PortAllocation};
//! let nat = Behaviour::new(Mapping::AddressAndPortDependent, Filtering::AddressAndPortDependent)
//!     .with_allocation(PortAllocation::Sequential { stride: 1 });
//! assert_eq!(nat.p2pd().to_string(), "symmetric, independent delta 1");
//! ```
#![forbid(unsafe_code)]
// Strict lints: [workspace.lints] in the root Cargo.toml. Unit tests may also do unchecked
// arithmetic (clippy.toml lets them unwrap, expect, panic and index).
#![cfg_attr(test, allow(clippy::arithmetic_side_effects))]
#![warn(missing_docs)]

mod behaviour;
pub mod classify;
mod delta;
mod predict;
mod servers;

pub use behaviour::{
    Behaviour, Connectivity, Filtering, Mapping, P2pdDelta, P2pdLabel, P2pdNatType, PortAllocation,
    PortRange,
};
pub use classify::{
    Classification, Classifier, ClassifierConfig, ClassifierEvent, ClassifyInconclusive, Report,
    ServerSpec,
};
pub use delta::{
    decide, delta_test, score_round, DeltaConfig, DeltaInconclusive, DeltaReport, DeltaVerdict,
    LocalPorts, Observation, RoundEvidence, Tally,
};
pub use p2pd_proto::stun::ChangeRequest;
pub use p2pd_proto::{Instant, Machine};
pub use predict::{
    local_for_external, predict, PortCandidate, PortMapping, PredictConfig, CONFIDENCE_DEPENDENT,
    CONFIDENCE_EXACT, CONFIDENCE_SEQUENTIAL, MAX_CANDIDATES,
};
pub use servers::{
    canonical_id, default_servers, is_public_candidate, HealthConfig, ServerEntry, ServerHealth,
    ServerId, ServerList, MAX_SERVERS,
};

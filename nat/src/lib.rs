//! # p2pd-nat
//!
//! NAT behaviour discovery. Today: the behaviour model ([`Behaviour`]: mapping, filtering, port
//! allocation, port range, hairpinning, mapping lifetime) shared by the classifier and the simulator,
//! and its translation to p2pd's labels. The classifier machine, the delta scorer, port prediction and
//! the STUN server list come next.
//!
//! ```
//! use p2pd_nat::{Behaviour, Filtering, Mapping, PortAllocation};
//! let nat = Behaviour::new(Mapping::AddressAndPortDependent, Filtering::AddressAndPortDependent)
//!     .with_allocation(PortAllocation::Sequential { stride: 1 });
//! assert_eq!(nat.p2pd().to_string(), "symmetric, independent delta 1");
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]
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
    Classification, Classifier, ClassifierConfig, ClassifierEvent, Report, ServerSpec,
};
pub use delta::{
    decide, delta_test, score_round, DeltaConfig, DeltaReport, DeltaVerdict, InconclusiveReason,
    LocalPorts, Observation, RoundEvidence, Tally,
};
pub use p2pd_proto::stun::ChangeRequest;
pub use predict::{
    local_for_external, predict, Candidate, PortMapping, PredictConfig, CONFIDENCE_DEPENDENT,
    CONFIDENCE_EXACT, CONFIDENCE_SEQUENTIAL, MAX_CANDIDATES,
};
pub use servers::{
    default_servers, is_public_candidate, HealthConfig, ServerEntry, ServerHealth, ServerId,
    ServerList, MAX_SERVERS,
};

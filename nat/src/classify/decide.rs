//! The classifier's decision, as pure functions of the evidence: from the probes (and which servers
//! still count) to a [`Classification`], its confidence and the loss it is based on. The machine in
//! [`super`] gathers the probes; nothing here sends, times or remembers anything.
//!
//! # Per server (RFC 5780 §4.3, §4.4)
//!
//! - **Mapping** ([`mapping_of`]): the mapped addresses of the mapping socket's requests to the
//!   server's primary address (`X1`), its alternate IP with the primary port (`X2`) and its alternate
//!   IP and port (`X3`). All equal: endpoint-independent. `X1 != X2` and `X2 == X3`:
//!   address-dependent. `X2 != X3`: address-and-port-dependent (also when `X1 == X2`: the RFC stops
//!   after `X1 == X2`, but a mapping that changes with the destination port is not
//!   endpoint-independent by RFC 4787's definition, and we have `X3` anyway). Until all three
//!   replied, the server has no mapping result.
//! - **Filtering** ([`filtering_of`]): a reply to "change IP and port" means endpoint-independent;
//!   silence there but a reply to "change port", address-dependent; silence to both,
//!   address-and-port-dependent. A probe still pending, failed or answered with an error leaves the
//!   server without a filtering result.
//!
//! # Across servers ([`decide`])
//!
//! Only usable servers count (their first answers came and their alternate address is believable),
//! and only those with both results ([`verdicts`]). Then, in order:
//!
//! 1. no such server: `Inconclusive(NoUsableServer)`;
//! 2. their mappings differ, or their filterings differ: `MappingDisagrees` / `FilteringDisagrees`;
//! 3. filtering rests on silence and the chance that loss alone caused it
//!    ([`false_negative_chance`]) is above the configured limit: `SilenceNotConclusive`;
//! 4. endpoint-independent mapping must give one mapped address for every server's primary
//!    address too, else `MappingDisagrees`;
//! 5. the first primary mapped address equal to the mapping socket's local address means no
//!    translation: `Open` (endpoint-independent filtering) or `Firewall(filtering)`. With an
//!    unspecified local IP the address cannot be compared: equal ports are
//!    `LocalAddressUnknown` (a port-preserving NAT looks the same), different ports a NAT;
//! 6. otherwise `Nat { mapping, filtering }`.
//!
//! [`classification`] puts the whole answer together: no reply at all (every probe silent) is
//! `Blocked`, and a report cut short by the deadline before any server completed is
//! `Inconclusive(Deadline)` (or `Blocked` when nothing ever answered).
//!
//! # Silence and loss
//!
//! [`loss_estimate`] estimates the per-transmission loss from the probes whose replies were
//! expected (a reply after `k` transmissions: `k - 1` losses and a success; no reply: all losses;
//! plus one imagined loss and success). Filtering probes are left out (they are sent faster than
//! the round trip), and so are the probes of servers whose tests did not complete, except the
//! port-allocation probes. [`false_negative_chance`] raises that loss to the number of unanswered
//! transmissions of each usable server's decisive filtering probe and multiplies over the servers.

use core::net::SocketAddr;
use core::time::Duration;

use p2pd_proto::stun::ChangeRequest;
use p2pd_proto::SocketId;

use crate::behaviour::{Filtering, Mapping};

/// What a probe tested.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// Mapping socket to the primary address.
    MapPrimary,
    /// Mapping socket to the alternate IP, primary port.
    MapAlternateIp,
    /// Mapping socket to the alternate IP and port.
    MapAlternateBoth,
    /// Filtering socket to the primary address (the control).
    FilterControl,
    /// Filtering socket: answer from the other IP and port.
    FilterChangeBoth,
    /// Filtering socket: answer from the other port.
    FilterChangePort,
    /// Port-allocation test, round 1 (a fresh socket on a random local port).
    AllocationRandom,
    /// Port-allocation test, round 2 (fresh sockets on consecutive local ports).
    AllocationConsecutive,
}

/// How a probe ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Still running (only in a report cut short by the deadline).
    Pending,
    /// A reply.
    Reply {
        /// Our mapped address.
        mapped: SocketAddr,
        /// The OTHER-ADDRESS the server reported.
        other_address: Option<SocketAddr>,
        /// Where the reply came from.
        source: SocketAddr,
        /// Round-trip time.
        rtt: Duration,
        /// Transmissions made before the reply came.
        transmissions: u32,
    },
    /// No acceptable reply after every transmission.
    NoReply {
        /// Transmissions made.
        transmissions: u32,
    },
    /// An error response.
    ErrorResponse {
        /// Its code.
        code: u16,
    },
    /// The server broke the protocol (for example answered a change request from the wrong
    /// address), or the socket failed.
    Failed,
}

/// One probe, as evidence.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The server's canonical id.
    pub server: u64,
    /// What it tested.
    pub kind: ProbeKind,
    /// The local socket.
    pub socket: SocketId,
    /// Where the request went.
    pub destination: SocketAddr,
    /// The change requested.
    pub change: ChangeRequest,
    /// How it ended.
    pub outcome: ProbeOutcome,
}

/// Why the classifier gave no answer.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClassifyInconclusive {
    /// No server produced a complete, consistent set of results.
    NoUsableServer,
    /// Servers gave different mapping results.
    MappingDisagrees,
    /// Servers gave different filtering results.
    FilteringDisagrees,
    /// The mapped address is our own, but our local IP is not known, so "no NAT" cannot be told
    /// from a port-preserving NAT.
    LocalAddressUnknown,
    /// The deadline passed first.
    Deadline,
    /// Filtering rests on silence, and with the loss seen on this path (and the servers that could
    /// corroborate it) silence is not proof enough: the chance that every transmission was lost is
    /// above [`ClassifierConfig::max_false_negative`](crate::ClassifierConfig::max_false_negative).
    SilenceNotConclusive,
}

/// The classifier's answer.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Classification {
    /// A public address with no filtering.
    Open,
    /// A public address behind a filtering firewall.
    Firewall(Filtering),
    /// A NAT.
    Nat {
        /// Its mapping behaviour.
        mapping: Mapping,
        /// Its filtering behaviour.
        filtering: Filtering,
    },
    /// No server answered anything.
    Blocked,
    /// No safe answer.
    Inconclusive(ClassifyInconclusive),
}

/// What the decision reads.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Evidence<'a> {
    /// Every probe so far.
    pub(crate) probes: &'a [Probe],
    /// The canonical ids of the servers whose results may count, in configuration order.
    pub(crate) usable: &'a [u64],
    /// The mapping socket's local address, if known.
    pub(crate) local: Option<SocketAddr>,
    /// The highest acceptable chance that a "filtered" verdict is only loss.
    pub(crate) max_false_negative: f64,
}

/// How `server`'s probe of `kind` ended, if it was started.
pub(crate) fn outcome_of(probes: &[Probe], server: u64, kind: ProbeKind) -> Option<ProbeOutcome> {
    probes
        .iter()
        .find(|p| p.server == server && p.kind == kind)
        .map(|p| p.outcome)
}

/// The mapped address of `server`'s probe of `kind`, if it got a reply.
pub(crate) fn mapped_of(probes: &[Probe], server: u64, kind: ProbeKind) -> Option<SocketAddr> {
    match outcome_of(probes, server, kind)? {
        ProbeOutcome::Reply { mapped, .. } => Some(mapped),
        _ => None,
    }
}

/// `server`'s mapping result (RFC 5780 §4.3), once its three mapping probes replied.
pub(crate) fn mapping_of(probes: &[Probe], server: u64) -> Option<Mapping> {
    let m1 = mapped_of(probes, server, ProbeKind::MapPrimary)?;
    let m2 = mapped_of(probes, server, ProbeKind::MapAlternateIp)?;
    let m3 = mapped_of(probes, server, ProbeKind::MapAlternateBoth)?;
    Some(if m1 == m2 && m2 == m3 {
        Mapping::EndpointIndependent
    } else if m1 != m2 && m2 == m3 {
        Mapping::AddressDependent
    } else if m2 != m3 {
        Mapping::AddressAndPortDependent
    } else {
        // m1 == m2 but m2 != m3 is covered above; anything else is inconsistent.
        return None;
    })
}

/// `server`'s filtering result (RFC 5780 §4.4), once both filtering probes ended in a reply or
/// silence.
pub(crate) fn filtering_of(probes: &[Probe], server: u64) -> Option<Filtering> {
    let both = outcome_of(probes, server, ProbeKind::FilterChangeBoth)?;
    let port = outcome_of(probes, server, ProbeKind::FilterChangePort)?;
    match (both, port) {
        (ProbeOutcome::Reply { .. }, _) => Some(Filtering::EndpointIndependent),
        (ProbeOutcome::NoReply { .. }, ProbeOutcome::Reply { .. }) => {
            Some(Filtering::AddressDependent)
        }
        (ProbeOutcome::NoReply { .. }, ProbeOutcome::NoReply { .. }) => {
            Some(Filtering::AddressAndPortDependent)
        }
        _ => None,
    }
}

/// The mapping and filtering results of every usable server with complete results.
pub(crate) fn verdicts(e: &Evidence<'_>) -> (Vec<Mapping>, Vec<Filtering>) {
    let mut mappings = Vec::new();
    let mut filterings = Vec::new();
    for &server in e.usable {
        if let (Some(m), Some(f)) = (mapping_of(e.probes, server), filtering_of(e.probes, server)) {
            mappings.push(m);
            filterings.push(f);
        }
    }
    (mappings, filterings)
}

/// The per-transmission chance that a request or its reply is lost on this path, estimated from
/// the probes whose reply was expected (a reply after `k` transmissions counts `k - 1` losses
/// and one success; no reply, all losses), with one imagined loss and success added so that a
/// clean but short record never gives zero.
pub(crate) fn loss_estimate(e: &Evidence<'_>) -> f64 {
    let (mut lost, mut sent) = (1.0f64, 2.0f64);
    // Only servers whose tests completed speak for the path: a server that is down, or whose
    // claimed alternate is a black hole, says nothing about loss.
    let complete: Vec<u64> = e
        .usable
        .iter()
        .copied()
        .filter(|&s| mapping_of(e.probes, s).is_some() && filtering_of(e.probes, s).is_some())
        .collect();
    for p in e.probes {
        let allocation = matches!(
            p.kind,
            ProbeKind::AllocationRandom | ProbeKind::AllocationConsecutive
        );
        if !allocation && !complete.contains(&p.server) {
            continue;
        }
        // The filtering probes are sent faster than the round trip, so their transmission
        // counts say nothing about loss; the others retransmit only after `probe_retransmit`'s
        // timeout (a path slower than that overstates loss, which only makes us more careful).
        if matches!(
            p.kind,
            ProbeKind::FilterChangeBoth | ProbeKind::FilterChangePort
        ) {
            continue;
        }
        match p.outcome {
            ProbeOutcome::Reply { transmissions, .. } => {
                sent += f64::from(transmissions);
                lost += f64::from(transmissions.saturating_sub(1));
            }
            ProbeOutcome::NoReply { transmissions } => {
                sent += f64::from(transmissions);
                lost += f64::from(transmissions);
            }
            _ => {}
        }
    }
    (lost / sent).clamp(0.0, 1.0)
}

/// The chance that the filtering verdict is wrong because loss alone silenced the decisive
/// probe on every agreeing server (0 when filtering was shown by a reply).
pub(crate) fn false_negative_chance(e: &Evidence<'_>) -> f64 {
    let q = loss_estimate(e);
    let mut chance = 1.0f64;
    let mut negative = false;
    for &server in e.usable {
        let decisive = match filtering_of(e.probes, server) {
            Some(Filtering::AddressDependent) => ProbeKind::FilterChangeBoth,
            Some(Filtering::AddressAndPortDependent) => ProbeKind::FilterChangePort,
            _ => continue,
        };
        if let Some(ProbeOutcome::NoReply { transmissions }) =
            outcome_of(e.probes, server, decisive)
        {
            negative = true;
            chance *= q.powi(i32::try_from(transmissions).unwrap_or(i32::MAX));
        }
    }
    if negative {
        chance
    } else {
        0.0
    }
}

/// The answer from the usable servers' results (see the module docs for the rules).
pub(crate) fn decide(e: &Evidence<'_>) -> Classification {
    let (mappings, filterings) = verdicts(e);
    let (Some(&mapping), Some(&filtering)) = (mappings.first(), filterings.first()) else {
        return Classification::Inconclusive(ClassifyInconclusive::NoUsableServer);
    };
    if mappings.iter().any(|m| *m != mapping) {
        return Classification::Inconclusive(ClassifyInconclusive::MappingDisagrees);
    }
    if filterings.iter().any(|f| *f != filtering) {
        return Classification::Inconclusive(ClassifyInconclusive::FilteringDisagrees);
    }
    if false_negative_chance(e) > e.max_false_negative {
        return Classification::Inconclusive(ClassifyInconclusive::SilenceNotConclusive);
    }
    // Endpoint-independent mapping must hold across servers too.
    let primaries: Vec<SocketAddr> = e
        .usable
        .iter()
        .filter_map(|&s| mapped_of(e.probes, s, ProbeKind::MapPrimary))
        .collect();
    if mapping == Mapping::EndpointIndependent
        && primaries.windows(2).any(|w| w.first() != w.get(1))
    {
        return Classification::Inconclusive(ClassifyInconclusive::MappingDisagrees);
    }
    let translated = match (primaries.first(), e.local) {
        (Some(mapped), Some(local)) if !local.ip().is_unspecified() => *mapped != local,
        (Some(mapped), Some(local)) if mapped.port() == local.port() => {
            return Classification::Inconclusive(ClassifyInconclusive::LocalAddressUnknown)
        }
        _ => true,
    };
    if !translated {
        return if filtering == Filtering::EndpointIndependent {
            Classification::Open
        } else {
            Classification::Firewall(filtering)
        };
    }
    Classification::Nat { mapping, filtering }
}

/// The report's answer: [`decide`], except that silence everywhere is `Blocked`, and that a run
/// cut short by the deadline (`deadline`) before any server completed is `Inconclusive(Deadline)`,
/// or `Blocked` if nothing ever answered.
pub(crate) fn classification(e: &Evidence<'_>, deadline: bool) -> Classification {
    let any_reply = e
        .probes
        .iter()
        .any(|p| matches!(p.outcome, ProbeOutcome::Reply { .. }));
    if deadline && verdicts(e).0.is_empty() {
        if any_reply {
            Classification::Inconclusive(ClassifyInconclusive::Deadline)
        } else {
            Classification::Blocked
        }
    } else if !any_reply
        && e.probes
            .iter()
            .all(|p| matches!(p.outcome, ProbeOutcome::NoReply { .. }))
    {
        Classification::Blocked
    } else {
        decide(e)
    }
}

/// The probe's name in reports: `map-primary`, `map-alternate-ip`, `map-alternate-ip+port`,
/// `filter-control`, `filter-change-ip+port`, `filter-change-port`, `allocation-random-port`,
/// `allocation-consecutive-port`.
impl core::fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.pad(match self {
            ProbeKind::MapPrimary => "map-primary",
            ProbeKind::MapAlternateIp => "map-alternate-ip",
            ProbeKind::MapAlternateBoth => "map-alternate-ip+port",
            ProbeKind::FilterControl => "filter-control",
            ProbeKind::FilterChangeBoth => "filter-change-ip+port",
            ProbeKind::FilterChangePort => "filter-change-port",
            ProbeKind::AllocationRandom => "allocation-random-port",
            ProbeKind::AllocationConsecutive => "allocation-consecutive-port",
        })
    }
}

impl ClassifyInconclusive {
    /// A short stable key for scripts: `no-usable-server`, `mapping-disagrees`,
    /// `filtering-disagrees`, `local-address-unknown`, `deadline`, `silence-not-conclusive`.
    pub fn key(&self) -> &'static str {
        match self {
            ClassifyInconclusive::NoUsableServer => "no-usable-server",
            ClassifyInconclusive::MappingDisagrees => "mapping-disagrees",
            ClassifyInconclusive::FilteringDisagrees => "filtering-disagrees",
            ClassifyInconclusive::LocalAddressUnknown => "local-address-unknown",
            ClassifyInconclusive::Deadline => "deadline",
            ClassifyInconclusive::SilenceNotConclusive => "silence-not-conclusive",
        }
    }
}

/// The reason in words (for example `servers disagree about the mapping`).
impl core::fmt::Display for ClassifyInconclusive {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.pad(match self {
            ClassifyInconclusive::NoUsableServer => {
                "no server gave a complete, consistent set of results"
            }
            ClassifyInconclusive::MappingDisagrees => "servers disagree about the mapping",
            ClassifyInconclusive::FilteringDisagrees => "servers disagree about the filtering",
            ClassifyInconclusive::LocalAddressUnknown => {
                "the mapped address equals the local port but the local IP is unknown"
            }
            ClassifyInconclusive::Deadline => "the deadline passed first",
            ClassifyInconclusive::SilenceNotConclusive => {
                "filtering rests on silence, and with the loss seen on this path silence is not \
                 proof enough"
            }
        })
    }
}

/// The verdict in words: `open internet (no NAT, no filtering)`, `UDP firewall, no NAT (F
/// filtering)`, `NAT: M mapping, F filtering`, `blocked (no server answered)` or
/// `inconclusive: REASON`.
impl core::fmt::Display for Classification {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Classification::Open => f.write_str("open internet (no NAT, no filtering)"),
            Classification::Firewall(filtering) => {
                write!(f, "UDP firewall, no NAT ({filtering} filtering)")
            }
            Classification::Nat { mapping, filtering } => {
                write!(f, "NAT: {mapping} mapping, {filtering} filtering")
            }
            Classification::Blocked => f.write_str("blocked (no server answered)"),
            Classification::Inconclusive(why) => write!(f, "inconclusive: {why}"),
        }
    }
}

#[cfg(test)]
mod tests;

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
//!
//! A test may be attempted several times ([`outcome_of`] sums the silent attempts' transmissions;
//! any reply wins). [`worth_repeating`] names the filtering tests whose silence is not yet
//! conclusive on its own server, which the machine sends again while its budget lasts.

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

/// How `server`'s test of `kind` ended, over every attempt at it (a test whose silence was not
/// yet conclusive is sent again as a new probe): the first reply if any attempt got one; else
/// the first failure or error response (a server breaking the protocol spoils the test); else,
/// if some attempts ended in silence, one silence with their transmissions added up (attempts
/// still pending, or cut short by the budget, do not count); else pending. `None` if never started.
pub(crate) fn outcome_of(probes: &[Probe], server: u64, kind: ProbeKind) -> Option<ProbeOutcome> {
    let mut attempts = probes
        .iter()
        .filter(|p| p.server == server && p.kind == kind)
        .map(|p| p.outcome)
        .peekable();
    attempts.peek()?;
    let mut silent: Option<u32> = None;
    let mut spoilt = None;
    for outcome in attempts {
        match outcome {
            ProbeOutcome::Reply { .. } => return Some(outcome),
            ProbeOutcome::Failed | ProbeOutcome::ErrorResponse { .. } => {
                spoilt = spoilt.or(Some(outcome));
            }
            ProbeOutcome::NoReply { transmissions } => {
                silent = Some(silent.unwrap_or(0).saturating_add(transmissions));
            }
            ProbeOutcome::Pending => {}
        }
    }
    Some(match (spoilt, silent) {
        (Some(outcome), _) => outcome,
        (None, Some(transmissions)) => ProbeOutcome::NoReply { transmissions },
        (None, None) => ProbeOutcome::Pending,
    })
}

/// Whether an attempt at `server`'s test of `kind` is still running.
pub(crate) fn in_flight(probes: &[Probe], server: u64, kind: ProbeKind) -> bool {
    probes
        .iter()
        .any(|p| p.server == server && p.kind == kind && p.outcome == ProbeOutcome::Pending)
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

/// The filtering test whose silence `server`'s filtering result rests on, and that silence's
/// transmissions: "change IP and port" for address-dependent filtering, "change port" for
/// address-and-port-dependent; `None` when the result is unknown or shown by a reply.
pub(crate) fn decisive_silence(probes: &[Probe], server: u64) -> Option<(ProbeKind, u32)> {
    let decisive = match filtering_of(probes, server)? {
        Filtering::AddressDependent => ProbeKind::FilterChangeBoth,
        Filtering::AddressAndPortDependent => ProbeKind::FilterChangePort,
        Filtering::EndpointIndependent => return None,
    };
    match outcome_of(probes, server, decisive)? {
        ProbeOutcome::NoReply { transmissions } => Some((decisive, transmissions)),
        _ => None,
    }
}

/// The chance that loss alone silenced `transmissions` transmissions at per-transmission loss `q`.
fn silenced_by_loss(q: f64, transmissions: u32) -> f64 {
    q.powi(i32::try_from(transmissions).unwrap_or(i32::MAX))
}

/// The chance that the filtering verdict is wrong because loss alone silenced the decisive
/// probe on every agreeing server (0 when filtering was shown by a reply).
pub(crate) fn false_negative_chance(e: &Evidence<'_>) -> f64 {
    let q = loss_estimate(e);
    let mut chance = 1.0f64;
    let mut negative = false;
    for &server in e.usable {
        if let Some((_, transmissions)) = decisive_silence(e.probes, server) {
            negative = true;
            chance *= silenced_by_loss(q, transmissions);
        }
    }
    if negative {
        chance
    } else {
        0.0
    }
}

/// The filtering tests worth sending again, as (server, kind): for every usable server whose
/// mapping and filtering results are known but whose filtering rests on a silence that loss alone
/// could explain more often than the configured limit allows (on its own, without counting on the
/// other servers to corroborate it), the test of that silence, unless an attempt at it is still
/// running. One more silent attempt multiplies the chance by the loss again; a reply settles it.
/// Empty once every server's result is as sure as required: then nothing more is to be learned.
pub(crate) fn worth_repeating(e: &Evidence<'_>) -> Vec<(u64, ProbeKind)> {
    let q = loss_estimate(e);
    let mut repeat = Vec::new();
    for &server in e.usable {
        if mapping_of(e.probes, server).is_none() {
            continue;
        }
        let Some((kind, transmissions)) = decisive_silence(e.probes, server) else {
            continue;
        };
        if silenced_by_loss(q, transmissions) > e.max_false_negative
            && !in_flight(e.probes, server, kind)
        {
            repeat.push((server, kind));
        }
    }
    repeat
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

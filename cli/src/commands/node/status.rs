//! Status lines of `p2pd node` and `p2pd connect` on stderr (stdout carries the stream): human
//! lines, or with `--json` one object per line with an `event` field: `ready`, `accepted`,
//! `progress`, `connected`, `failed`, `stream_failed`, `registration_failed`, `closed`.

use std::net::SocketAddr;

use p2pd_node::{PhaseFailure, PhaseOutcome, PhaseReport};
use p2pd_signaling::{NatInfo, PeerAddress, PublicKey};
use serde::Serialize;

use crate::commands::report::Reporter;

/// The status printer.
pub struct Status {
    pub out: Reporter,
}

/// One phase of a connect, as printed.
#[derive(Debug, Serialize)]
pub struct PhaseLine {
    pub phase: &'static str,
    /// `won`, `lost`, `skipped`, `failed`, `done`.
    pub outcome: &'static str,
    pub started_ms: Option<u128>,
    pub took_ms: u128,
    /// Why it was skipped or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl PhaseLine {
    pub fn of(r: &PhaseReport) -> PhaseLine {
        let (outcome, reason) = match &r.outcome {
            PhaseOutcome::Won => ("won", None),
            PhaseOutcome::Lost => ("lost", None),
            PhaseOutcome::Done => ("done", None),
            PhaseOutcome::Skipped(why) => ("skipped", Some(why.to_string())),
            PhaseOutcome::Failed(why) => ("failed", Some(why.to_string())),
        };
        PhaseLine {
            phase: r.phase.as_str(),
            outcome,
            started_ms: r.started.map(|d| d.as_millis()),
            took_ms: r.took.as_millis(),
            reason,
        }
    }

    fn human(&self) -> String {
        match &self.reason {
            Some(r) => format!("{} {} ({r})", self.phase, self.outcome),
            None => format!("{} {} in {} ms", self.phase, self.outcome, self.took_ms),
        }
    }
}

/// The NAT behaviour, as printed.
#[derive(Debug, Serialize)]
pub struct NatLine {
    pub mapping: String,
    pub filtering: String,
    pub allocation: String,
}

impl NatLine {
    pub fn of(n: &NatInfo) -> NatLine {
        NatLine {
            mapping: format!("{:?}", n.mapping),
            filtering: format!("{:?}", n.filtering),
            allocation: format!("{:?}", n.allocation),
        }
    }
}

#[derive(Debug, Serialize)]
struct Line<T: Serialize> {
    event: &'static str,
    #[serde(flatten)]
    fields: T,
}

#[derive(Debug, Serialize)]
struct Ready {
    name: Option<String>,
    public_key: String,
    address: String,
    nat: Option<NatLine>,
}

#[derive(Debug, Serialize)]
struct Accepted {
    peer: String,
    path: &'static str,
    remote: SocketAddr,
}

#[derive(Debug, Serialize)]
struct Connected {
    target: String,
    peer: String,
    path: &'static str,
    remote: SocketAddr,
    elapsed_ms: u128,
    phases: Vec<PhaseLine>,
}

#[derive(Debug, Serialize)]
struct Failed {
    target: String,
    elapsed_ms: u128,
    phases: Vec<PhaseLine>,
}

#[derive(Debug, Serialize)]
struct Progress {
    target: String,
    phase: &'static str,
    elapsed_ms: u128,
}

#[derive(Debug, Serialize)]
struct Reason {
    reason: String,
}

#[derive(Debug, Serialize)]
struct RelayFailed {
    relay: SocketAddr,
    reason: String,
    next: bool,
}

impl Status {
    fn emit<T: Serialize>(&self, event: &'static str, human: String, fields: T) {
        self.out.status(human, &Line { event, fields });
    }

    pub fn ready(&self, name: Option<&str>, address: &PeerAddress, nat: Option<&NatInfo>) {
        let text = address.to_text().unwrap_or_default();
        let nat_text = nat.map_or_else(
            || "NAT unknown".to_string(),
            |n| {
                format!(
                    "NAT {:?} mapping, {:?} filtering, {:?} ports",
                    n.mapping, n.filtering, n.allocation
                )
            },
        );
        let human = match name {
            Some(n) => format!("ready: reachable as {n} ({nat_text}); address {text}"),
            None => format!("ready ({nat_text}); address {text}"),
        };
        self.emit(
            "ready",
            human,
            Ready {
                name: name.map(str::to_string),
                public_key: address.public_key.to_string(),
                address: text,
                nat: nat.map(NatLine::of),
            },
        );
    }

    pub fn accepted(&self, peer: &PublicKey, path: &'static str, remote: SocketAddr) {
        self.emit(
            "accepted",
            format!("accepted {} ({path}, from {remote})", peer.node_id()),
            Accepted {
                peer: peer.to_string(),
                path,
                remote,
            },
        );
    }

    pub fn connected(
        &self,
        target: &str,
        peer: &PublicKey,
        path: &'static str,
        remote: SocketAddr,
        elapsed_ms: u128,
        phases: Vec<PhaseLine>,
    ) {
        let tried: Vec<String> = phases
            .iter()
            .filter(|p| p.outcome != "skipped")
            .map(PhaseLine::human)
            .collect();
        self.emit(
            "connected",
            format!(
                "connected to {target} ({}) {path} via {remote} after {elapsed_ms} ms [{}]",
                peer.node_id(),
                tried.join("; ")
            ),
            Connected {
                target: target.to_string(),
                peer: peer.to_string(),
                path,
                remote,
                elapsed_ms,
                phases,
            },
        );
    }

    pub fn failed(&self, target: &str, elapsed_ms: u128, phases: Vec<PhaseLine>) {
        let why: Vec<String> = phases.iter().map(PhaseLine::human).collect();
        self.emit(
            "failed",
            format!(
                "cannot connect to {target} after {elapsed_ms} ms: {}",
                why.join("; ")
            ),
            Failed {
                target: target.to_string(),
                elapsed_ms,
                phases,
            },
        );
    }

    pub fn progress(&self, target: &str, phase: &'static str, elapsed_ms: u128) {
        self.emit(
            "progress",
            format!(
                "connecting to {target}: {phase} ({:.1} s)",
                elapsed_ms as f64 / 1000.0
            ),
            Progress {
                target: target.to_string(),
                phase,
                elapsed_ms,
            },
        );
    }

    /// A relay failed for the connect (`next`: the next configured one is tried).
    pub fn relay_failed(&self, relay: SocketAddr, failure: &PhaseFailure, next: bool) {
        let then = if next {
            "trying the next relay"
        } else {
            "no relay left"
        };
        self.emit(
            "relay_failed",
            format!("relay {relay}: {failure} ({then})"),
            RelayFailed {
                relay,
                reason: failure.to_string(),
                next,
            },
        );
    }

    pub fn reason(&self, event: &'static str, human: String, reason: String) {
        self.emit(event, human, Reason { reason });
    }
}

//! The probe manager: a STUN-over-TCP probe per punch port, and the round's candidates planned from
//! what they saw.

use core::net::SocketAddr;

use p2pd_proto::client_tcp::{TcpBinding, TcpBindingConfig, TcpBindingEvent};
use p2pd_proto::Instant;

use super::{NodeEvent, PunchNode};
use crate::machine::PunchFailure;
use crate::plan::{pick_local_ports, plan_candidates, NatView, Observation};

/// One probe.
pub(super) struct Probe {
    /// Its serial number: its namespace is `Part::Probe(serial)`.
    pub(super) serial: u32,
    /// The punch port the probe is for (the probe itself may run from another port: see
    /// [`probe_elsewhere`]).
    pub(super) port: u16,
    pub(super) machine: TcpBinding,
    pub(super) result: Option<Option<Observation>>,
    pub(super) closed: bool,
    /// Probed for the round being prepared (an earlier round's probe is only waiting to close).
    pub(super) current: bool,
}

/// Which round the probes are for, and who to tell.
#[derive(Copy, Clone, Debug)]
pub(super) enum Pending {
    Initiate,
    Provide(u8),
}

impl PunchNode {
    pub(super) fn start_probes(&mut self, now: Instant, pending: Pending) {
        self.probe_attempts = self.probe_attempts.saturating_add(1);
        for p in &mut self.probes {
            p.machine.close(now);
            p.current = false;
        }
        let n = self.config.ports_per_round.clamp(1, 8);
        let elsewhere = probe_elsewhere(self.config.nat);
        let mut ports = pick_local_ports(
            &mut self.rng,
            if elsewhere { n.saturating_mul(2) } else { n },
        );
        // With `elsewhere`, the second half are the probes' own ports.
        let probe_ports = if elsewhere {
            ports.split_off(n)
        } else {
            ports.clone()
        };
        for (port, probe_port) in ports.into_iter().zip(probe_ports) {
            let serial = self.next_probe;
            self.next_probe = self.next_probe.wrapping_add(1);
            let local = SocketAddr::new(self.config.punch.bind_ip, probe_port);
            let mut binding = TcpBindingConfig::new(self.config.stun_server, local).keep_open(true);
            binding.timeout = self.config.probe_timeout;
            self.probes.push(Probe {
                serial,
                port,
                machine: TcpBinding::new(binding, self.rng.next_u64(), now),
                result: None,
                closed: false,
                current: true,
            });
        }
        self.pending = Some(pending);
    }

    pub(super) fn on_probe(&mut self, i: usize, ev: TcpBindingEvent) {
        let Some(p) = self.probes.get_mut(i) else {
            return;
        };
        match ev {
            TcpBindingEvent::Mapped(m) => {
                p.result = Some(Some(Observation {
                    local_port: p.port,
                    mapped: m.mapped,
                }));
            }
            TcpBindingEvent::Failed { reason } => {
                p.result = Some(None);
                let port = p.port;
                self.events
                    .push_back(NodeEvent::ProbeFailed { port, reason });
            }
            TcpBindingEvent::Closed { .. } => {
                p.closed = true;
                if p.result.is_none() {
                    p.result = Some(None);
                }
            }
            _ => {}
        }
    }

    pub(super) fn probes_done(&self) -> bool {
        self.pending.is_some() && self.probes.iter().all(|p| p.result.is_some() || p.closed)
    }

    /// All probes of the round answered: plan and hand the candidates on.
    pub(super) fn finish_probes(&mut self, now: Instant) -> bool {
        let Some(pending) = self.pending.take() else {
            return false;
        };
        // Only this round's probes: an earlier round's observation is stale (a sequential NAT has
        // moved on since, and its ports would add pairs that take the predicted ports).
        let observations: Vec<Observation> = self
            .probes
            .iter()
            .filter(|p| p.current)
            .filter_map(|p| p.result.flatten())
            .collect();
        let candidates = plan_candidates(self.config.nat, &observations);
        if self.closing {
            return true;
        }
        let round = match pending {
            Pending::Initiate => 0,
            Pending::Provide(r) => r,
        };
        if candidates.is_empty() && self.probe_attempts < self.config.probe_attempts {
            // Every probe failed (lost segments, a slow server): probe again from fresh ports.
            self.start_probes(now, pending);
            return true;
        }
        if candidates.is_empty() {
            self.events
                .push_back(NodeEvent::Failed(PunchFailure::NoSockets(
                    p2pd_proto::IoError::Other(None),
                )));
            self.puncher.close(now);
            return true;
        }
        self.events.push_back(NodeEvent::Candidates {
            round,
            candidates: candidates.clone(),
        });
        let accepted = match pending {
            Pending::Initiate => match self.peer {
                Some(peer) => self
                    .puncher
                    .initiate(now, peer.node_id(), candidates)
                    .is_ok(),
                None => false,
            },
            Pending::Provide(r) => self.puncher.provide_candidates(now, r, candidates).is_ok(),
        };
        if !accepted {
            self.puncher.close(now);
        }
        true
    }
}

/// Whether the probes must run from other ports than the punch ports: with a dependent mapping
/// whose external port follows the local port (preserving, fixed offset), a probe kept open from
/// the punch port would hold the very external port the punch connection is predicted to get (its
/// mapping is for the STUN server, a different destination), and the NAT would give the punch
/// connection another one. The probe then only tells the external IP.
pub(super) fn probe_elsewhere(view: Option<NatView>) -> bool {
    view.is_some_and(|v| {
        v.mapping != p2pd_nat::Mapping::EndpointIndependent
            && matches!(
                v.allocation,
                p2pd_nat::PortAllocation::Preserving | p2pd_nat::PortAllocation::FixedOffset { .. }
            )
    })
}

//! Local port choice and external port prediction for a punch round.
//!
//! A side picks fresh local ports ([`pick_local_ports`]), learns the TCP mapping its NAT gives each
//! of them by a STUN binding over TCP from that very port (kept open, so the mapping stays alive:
//! [`Observation`]), and predicts, from its NAT's behaviour, the external endpoint the NAT will use
//! when the same local port connects to the peer ([`plan_candidates`]):
//!
//! | mapping | allocation | predicted external port for the peer |
//! |---|---|---|
//! | endpoint-independent | any | the observed mapping (the NAT reuses it) |
//! | dependent | preserving | the local port |
//! | dependent | fixed offset `k` | the local port + `k` |
//! | dependent | sequential, stride `s` | observed + `s`, and observed + `2s` as a second guess |
//! | dependent | local-port-dependent | the observed mapping |
//! | dependent | random | the observed mapping (a guess; the peer must be reachable instead) |
//!
//! Without a classification the mapping is assumed endpoint-independent (the common case).

use core::net::SocketAddr;

use p2pd_nat::{Mapping, PortAllocation};
use p2pd_proto::Rng;

use crate::message::{PunchCandidate, MAX_CANDIDATES};

/// The lowest local port [`pick_local_ports`] chooses (below Linux's ephemeral range, so no
/// outgoing connection takes it meanwhile).
pub const LOCAL_PORT_LOW: u16 = 20_000;
/// The highest local port [`pick_local_ports`] chooses.
pub const LOCAL_PORT_HIGH: u16 = 32_000;

/// What this side knows about its NAT's TCP behaviour (from classification).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NatView {
    /// The mapping behaviour.
    pub mapping: Mapping,
    /// The port allocation.
    pub allocation: PortAllocation,
}

/// The mapping a TCP STUN binding from `local_port` reported.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The local port.
    pub local_port: u16,
    /// The external endpoint the STUN server saw.
    pub mapped: SocketAddr,
}

/// `n` distinct random local ports in [`LOCAL_PORT_LOW`]..=[`LOCAL_PORT_HIGH`].
pub fn pick_local_ports(rng: &mut Rng, n: usize) -> Vec<u16> {
    let span = u64::from(LOCAL_PORT_HIGH.saturating_sub(LOCAL_PORT_LOW)).saturating_add(1);
    let mut out: Vec<u16> = Vec::with_capacity(n);
    let mut tries = 0u32;
    while out.len() < n && tries < 10_000 {
        tries = tries.saturating_add(1);
        let offset = u16::try_from(rng.below(span)).unwrap_or(0);
        let port = LOCAL_PORT_LOW.saturating_add(offset);
        if !out.contains(&port) {
            out.push(port);
        }
    }
    out
}

/// Our candidates for the peer from the observations (at most [`MAX_CANDIDATES`]).
pub fn plan_candidates(view: Option<NatView>, observations: &[Observation]) -> Vec<PunchCandidate> {
    let mut out = Vec::new();
    for o in observations {
        for external in predict(view, o) {
            let candidate = PunchCandidate {
                local_port: o.local_port,
                external,
            };
            if external.port() != 0 && !out.contains(&candidate) && out.len() < MAX_CANDIDATES {
                out.push(candidate);
            }
        }
    }
    out
}

fn predict(view: Option<NatView>, o: &Observation) -> Vec<SocketAddr> {
    let with_port = |port: u16| SocketAddr::new(o.mapped.ip(), port);
    let Some(view) = view else {
        return vec![o.mapped];
    };
    if view.mapping == Mapping::EndpointIndependent {
        return vec![o.mapped];
    }
    match view.allocation {
        PortAllocation::Preserving => vec![with_port(o.local_port)],
        PortAllocation::FixedOffset { offset } => {
            vec![with_port(wrap(i64::from(o.local_port), i64::from(offset)))]
        }
        PortAllocation::Sequential { stride } => {
            let s = i64::from(stride);
            let base = i64::from(o.mapped.port());
            vec![
                with_port(wrap(base, s)),
                with_port(wrap(base, s.saturating_mul(2))),
            ]
        }
        PortAllocation::LocalPortDependent { .. } | PortAllocation::Random => vec![o.mapped],
    }
}

/// `base + delta` wrapped into 1..=65535.
fn wrap(base: i64, delta: i64) -> u16 {
    let v = base.saturating_add(delta).rem_euclid(65_535);
    u16::try_from(v)
        .ok()
        .filter(|p| *p != 0)
        .unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pd_nat::Mapping;

    fn obs(local: u16, mapped: &str) -> Observation {
        Observation {
            local_port: local,
            mapped: mapped.parse().unwrap(),
        }
    }

    #[test]
    fn predictions_follow_the_table() {
        let o = [obs(20_000, "203.0.113.1:41000")];
        let eim = NatView {
            mapping: Mapping::EndpointIndependent,
            allocation: PortAllocation::Random,
        };
        assert_eq!(plan_candidates(Some(eim), &o)[0].external.port(), 41_000);
        assert_eq!(plan_candidates(None, &o)[0].external.port(), 41_000);
        let dep = |allocation| NatView {
            mapping: Mapping::AddressAndPortDependent,
            allocation,
        };
        let ports = |v| {
            plan_candidates(Some(v), &o)
                .iter()
                .map(|c| c.external.port())
                .collect::<Vec<_>>()
        };
        assert_eq!(ports(dep(PortAllocation::Preserving)), [20_000]);
        assert_eq!(
            ports(dep(PortAllocation::FixedOffset { offset: 1000 })),
            [21_000]
        );
        assert_eq!(
            ports(dep(PortAllocation::FixedOffset { offset: -25_000 })),
            [60_535]
        );
        assert_eq!(
            ports(dep(PortAllocation::Sequential { stride: 2 })),
            [41_002, 41_004]
        );
        assert_eq!(ports(dep(PortAllocation::Random)), [41_000]);
        let high = [obs(20_000, "203.0.113.1:65535")];
        let c = plan_candidates(Some(dep(PortAllocation::Sequential { stride: 1 })), &high);
        assert_eq!(c[0].external.port(), 1);
        assert!(c
            .iter()
            .all(|c| c.external.port() != 0 && c.local_port == 20_000));
    }

    #[test]
    fn local_ports_are_distinct_and_in_range() {
        let mut rng = Rng::from_seed(7);
        let p = pick_local_ports(&mut rng, 16);
        assert_eq!(p.len(), 16);
        for (i, a) in p.iter().enumerate() {
            assert!((LOCAL_PORT_LOW..=LOCAL_PORT_HIGH).contains(a));
            assert!(!p[..i].contains(a));
        }
    }
}

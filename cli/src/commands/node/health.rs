//! Server health for the node commands: the STUN servers are tried freshest first (ranked by the
//! health file next to the identity, `health.sqlite`, which `p2pd servers` also writes), and what
//! the node sees of its brokers (up, down) and PNP servers (registration refused or unanswered)
//! is recorded there for the next run. A health file that cannot be opened only costs the
//! ranking: the node runs with the configured order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{stun_id, Endpoint};
use crate::health_store::{HealthStore, ServerKind};

/// The health file beside `identity`.
pub fn path_beside(identity: &Path) -> PathBuf {
    match identity.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join("health.sqlite"),
        _ => PathBuf::from("health.sqlite"),
    }
}

/// The node's view of the health file.
pub struct NodeHealth {
    store: Option<HealthStore>,
    /// Canonical id -> address text, per kind, for the servers this node uses.
    names: HashMap<(ServerKind, u64), String>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl NodeHealth {
    /// Opens the health file (`None` inside: no ranking, no recording).
    pub fn open(path: &Path) -> NodeHealth {
        let store = match HealthStore::open(path) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(error = %e, path = %path.display(), "no server health file");
                None
            }
        };
        NodeHealth {
            store,
            names: HashMap::new(),
        }
    }

    /// Remembers the address of a server this node uses, for the records.
    pub fn name(&mut self, kind: ServerKind, id: u64, address: &str) {
        self.names.insert((kind, id), address.to_string());
    }

    /// `texts` (STUN servers, `HOST[:PORT]`) freshest first for `kind` (stable otherwise).
    pub fn rank_stun(&self, kind: ServerKind, texts: &[String]) -> Vec<String> {
        let ids: Vec<u64> = texts
            .iter()
            .map(|t| {
                Endpoint::parse(t, super::super::STUN_PORT).map_or(0, |e| stun_id(&e).as_u64())
            })
            .collect();
        let Some(order) = self.store.as_ref().and_then(|s| s.rank(kind, &ids).ok()) else {
            return texts.to_vec();
        };
        let mut out = Vec::with_capacity(texts.len());
        for id in order {
            for (t, i) in texts.iter().zip(&ids) {
                if *i == id && !out.contains(t) {
                    out.push(t.clone());
                }
            }
        }
        for t in texts {
            if !out.contains(t) {
                out.push(t.clone());
            }
        }
        out
    }

    /// Records what a node event says about a server: a broker up (its "RTT" is the time from the
    /// node's start to the connection, an upper bound), a broker down, a PNP registration failed.
    pub fn on_event(&mut self, since_start: Duration, ev: &p2pd_node::NodeEvent) {
        use p2pd_node::NodeEvent;
        use p2pd_signaling::RendezvousEvent;
        match ev {
            NodeEvent::Signaling(RendezvousEvent::BrokerUp { broker }) => {
                self.record(ServerKind::Mqtt, broker.as_u64(), Ok(since_start));
            }
            NodeEvent::Signaling(RendezvousEvent::BrokerDown { broker, reason, .. }) => {
                self.record(ServerKind::Mqtt, broker.as_u64(), Err(reason.to_string()));
            }
            NodeEvent::RegistrationFailed { server, reason } => {
                self.record(ServerKind::Pnp, server.0, Err(reason.to_string()));
            }
            _ => {}
        }
    }

    /// Records what the node saw of server `id` of `kind`.
    pub fn record(&mut self, kind: ServerKind, id: u64, outcome: Result<Duration, String>) {
        let Some(address) = self.names.get(&(kind, id)).cloned() else {
            return;
        };
        if let Some(store) = &mut self.store {
            if let Err(e) = store.record(kind, id, &address, outcome, unix_ms()) {
                tracing::debug!(error = %e, "cannot record server health");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_servers_are_tried_freshest_first_and_events_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_beside(&dir.path().join("identity.key"));
        assert_eq!(path, dir.path().join("health.sqlite"));
        let texts: Vec<String> = ["192.0.2.1:3478", "192.0.2.2:3478", "192.0.2.3:3478"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let id = |t: &str| stun_id(&Endpoint::parse(t, 3478).unwrap()).as_u64();
        {
            let mut store = HealthStore::open(&path).unwrap();
            store
                .record(
                    ServerKind::StunUdp,
                    id(&texts[0]),
                    &texts[0],
                    Err("down".into()),
                    1_000,
                )
                .unwrap();
            store
                .record(
                    ServerKind::StunUdp,
                    id(&texts[2]),
                    &texts[2],
                    Ok(Duration::from_millis(9)),
                    2_000,
                )
                .unwrap();
        }
        let mut health = NodeHealth::open(&path);
        let ranked = health.rank_stun(ServerKind::StunUdp, &texts);
        assert_eq!(
            ranked,
            vec![texts[2].clone(), texts[1].clone(), texts[0].clone()]
        );
        // A broker the node uses going down is remembered for the next run.
        health.name(ServerKind::Mqtt, 77, "192.0.2.9:1883");
        let down = p2pd_node::NodeEvent::Signaling(p2pd_signaling::RendezvousEvent::BrokerDown {
            broker: p2pd_signaling::BrokerId::from_u64(77),
            reason: p2pd_signaling::mqtt::DisconnectReason::ConnectTimeout,
            retry_in: Duration::from_secs(1),
        });
        health.on_event(Duration::from_secs(1), &down);
        drop(health);
        let store = HealthStore::open(&path).unwrap();
        let h = store.get(ServerKind::Mqtt, 77).unwrap().expect("recorded");
        assert_eq!(h.failures, 1);
        assert_eq!(h.address, "192.0.2.9:1883");
    }
}

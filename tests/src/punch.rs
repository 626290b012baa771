//! Helpers for the real-socket punch tests: a [`PunchNode`] side (a runtime kept across rounds
//! and the round's node) driven in 2 ms slices (our STUN server over TCP is in `servers`).

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use p2pd_mio::Runtime;
use p2pd_punch::node::{NodeEvent, PunchNode, PunchNodeConfig};
use p2pd_signaling::rendezvous::{BrokerSpec, RendezvousConfig};

/// One side: a runtime kept across rounds and the round's node.
pub struct Side {
    pub rt: Runtime,
    pub node: Option<PunchNode>,
    pub events: Vec<NodeEvent>,
    /// Bytes received on the punched stream.
    pub data: Vec<u8>,
}

impl Side {
    pub fn node(&mut self) -> &mut PunchNode {
        self.node.as_mut().expect("a node this round")
    }

    /// Runs this side's loop for up to `slice`.
    pub fn turn(&mut self, slice: Duration) {
        let Some(node) = self.node.as_mut() else {
            return;
        };
        let events = &mut self.events;
        let data = &mut self.data;
        self.rt
            .run(node, Some(slice), |_, _, ev| {
                if let NodeEvent::Data(bytes) = &ev {
                    data.extend_from_slice(bytes);
                }
                events.push(ev);
                ControlFlow::Continue(())
            })
            .expect("run");
    }

    pub fn closed(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, NodeEvent::Closed))
            .count()
    }

    pub fn connected(&self) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, NodeEvent::Connected { .. }))
    }
}

/// Runs both sides in turns until `done` holds or `timeout` passes; returns whether it held.
pub fn run_until(
    a: &mut Side,
    b: &mut Side,
    timeout: Duration,
    mut done: impl FnMut(&Side, &Side) -> bool,
) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        a.turn(Duration::from_millis(2));
        b.turn(Duration::from_millis(2));
        if done(a, b) {
            return true;
        }
    }
    false
}

pub fn config(brokers: &[SocketAddr], stun: SocketAddr, rt: &Runtime) -> PunchNodeConfig {
    let specs = brokers.iter().map(|b| BrokerSpec::new(None, *b)).collect();
    let mut c = PunchNodeConfig::new(RendezvousConfig::new(specs, rt.unix_epoch_ms()), stun);
    c.rendezvous.mqtt.backoff_initial = Duration::from_millis(100);
    c.rendezvous.mqtt.backoff_max = Duration::from_millis(500);
    // Loopback signaling takes milliseconds: a short meet lead keeps 100 rounds quick.
    c.punch.lead = Duration::from_millis(300);
    c.punch.min_margin = Duration::from_millis(50);
    c.probe_timeout = Duration::from_secs(3);
    c
}

pub fn describe(side: &Side) -> String {
    side.events
        .iter()
        .filter(|e| !matches!(e, NodeEvent::Data(_)))
        .map(|e| format!("{e:?}"))
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// Whether the side's node listens on every broker.
pub fn subscribed(s: &Side) -> bool {
    let r = s
        .node
        .as_ref()
        .expect("node")
        .rendezvous()
        .expect("own signaling");
    r.broker_ids()
        .all(|id| r.health(id).is_some_and(|h| h.listening))
}

/// A side with its own runtime and no node yet.
pub fn new_side() -> Side {
    Side {
        rt: Runtime::new().expect("runtime"),
        node: None,
        events: Vec::new(),
        data: Vec::new(),
    }
}

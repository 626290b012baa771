//! Phase B: each punch is a [`PunchNode`] child whose signaling the node carries (its
//! messages start with [`p2pd_punch::message::TAG`]). A punch we start serves one connect; a
//! punch a peer offers is answered by a fresh child, and its stream is reported as accepted.
//! Once connected, the punched stream and its established channel move to the node
//! ([`PunchNode::take_stream`]) and the child is closed and retired.

use p2pd_channel::SeedSource;
use p2pd_proto::Instant;
use p2pd_punch::node::{NodeEvent as PunchNodeEvent, PunchNode, PunchNodeConfig};
use p2pd_punch::plan::NatView;
use p2pd_signaling::PublicKey;

use crate::node::{Node, Part};
use crate::types::{ConnectId, NodeEvent, Path, PhaseFailure};

/// Most punches at once (offers beyond it are ignored).
const MAX_PUNCHES: usize = 16;

/// One punch child.
pub(crate) struct PunchSlot {
    pub(crate) serial: u32,
    pub(crate) peer: PublicKey,
    pub(crate) node: PunchNode,
    /// The connect it serves (`None`: answering a peer's offer, or its connect is over).
    pub(crate) connect: Option<ConnectId>,
    /// It reported `Closed`: retire it.
    pub(crate) closed: bool,
}

impl Node {
    /// A punch child toward `peer` (initiating it for `connect`); `None` if it cannot be built.
    pub(crate) fn start_punch(
        &mut self,
        now: Instant,
        peer: PublicKey,
        connect: Option<ConnectId>,
    ) -> Option<u32> {
        let stun = self.config.stun_tcp?;
        if self.punches.len() >= MAX_PUNCHES {
            return None;
        }
        let mut config = PunchNodeConfig::new(self.config.rendezvous.clone(), stun);
        config.punch = self.config.punch.clone();
        config.punch.bind_ip = self.config.local_ip;
        config.nat = self.own.nat.flatten().map(|n| NatView {
            mapping: n.mapping,
            allocation: n.allocation,
        });
        let seeds = SeedSource::new(self.seeds.next_seed());
        let mut node = PunchNode::with_external_signaling(
            config,
            self.keys.clone(),
            seeds,
            self.rng.next_u64(),
            now,
        )
        .ok()?;
        if connect.is_some() && node.punch(now, peer).is_err() {
            return None;
        }
        let serial = self.next_punch;
        self.next_punch = self.next_punch.wrapping_add(1);
        self.punches.push(PunchSlot {
            serial,
            peer,
            node,
            connect,
            closed: false,
        });
        Some(serial)
    }

    /// A punch message from `from` (over signaling).
    pub(crate) fn on_punch_signal(&mut self, now: Instant, from: PublicKey, payload: &[u8]) {
        if self.closing {
            return;
        }
        let slot = self
            .punches
            .iter_mut()
            .find(|p| p.peer == from && !p.closed && !p.node.is_connected());
        match slot {
            Some(p) => p.node.handle_signal(now, from, payload),
            None => {
                if !self.accepts(&from) {
                    self.stats.strangers = self.stats.strangers.saturating_add(1);
                    return;
                }
                if self.start_punch(now, from, None).is_some() {
                    if let Some(p) = self.punches.last_mut() {
                        p.node.handle_signal(now, from, payload);
                    }
                }
            }
        }
    }

    pub(crate) fn on_punch(&mut self, now: Instant, i: usize, ev: PunchNodeEvent) {
        let Some(slot) = self.punches.get_mut(i) else {
            return;
        };
        match ev {
            PunchNodeEvent::Signal { to, payload } => {
                let _ = self.rendezvous.send(now, &to, None, &payload);
            }
            PunchNodeEvent::Connected { .. } => {
                let serial = slot.serial;
                let connect = slot.connect.take();
                let Some(punched) = slot.node.take_stream() else {
                    return;
                };
                slot.node.close(now);
                let socket = self.new_socket();
                if self
                    .sockets
                    .adopt(Part::Punch(serial), punched.socket, Part::Own, socket)
                    .is_none()
                {
                    return;
                }
                let peer = punched.peer;
                let remote = punched.remote;
                let stream = self.add_stream(socket, remote, peer, Path::Punched, punched.stream);
                match connect {
                    Some(c) if self.connect_open(c) => {
                        self.connect_won(now, c, stream, peer, Path::Punched, remote);
                    }
                    Some(_) => {
                        // Another path won meanwhile.
                        self.stats.losers = self.stats.losers.saturating_add(1);
                        let _ = self.close_stream(now, stream);
                    }
                    None => {
                        if self.accepts(&peer) {
                            self.events.push_back(NodeEvent::Accepted {
                                stream,
                                peer,
                                path: Path::Punched,
                                remote,
                            });
                        } else {
                            self.stats.strangers = self.stats.strangers.saturating_add(1);
                            let _ = self.close_stream(now, stream);
                        }
                    }
                }
            }
            PunchNodeEvent::Failed(reason) => {
                let connect = slot.connect.take();
                slot.node.close(now);
                if let Some(c) = connect {
                    self.punch_failed(now, c, PhaseFailure::Punch(reason));
                }
            }
            PunchNodeEvent::Closed => slot.closed = true,
            _ => {}
        }
    }
}

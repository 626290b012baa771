//! The [`Node`] machine: its parts, the routing of every input to them, and the drain of their
//! output (see the [crate docs](crate)).

use core::net::SocketAddr;
use std::collections::VecDeque;

use p2pd_channel::{ChannelKeys, SeedSource};
use p2pd_nat::Classifier;
use p2pd_proto::client_tcp::TcpBinding;
use p2pd_proto::compose::SocketMap;
use p2pd_proto::{
    DropReason, Instant, Machine, Rng, SocketId, SocketOp, SocketOutcome, Transmit, Verdict,
};
use p2pd_signaling::pnp::{PnpClient, PnpServerId};
use p2pd_signaling::rendezvous::Rendezvous;
use p2pd_signaling::{Identity, PublicKey};

use crate::config::{NatSource, NodeConfig};
use crate::connect::Connect;
use crate::conns::Conn;
use crate::own::Own;
use crate::punches::PunchSlot;
use crate::relays::RelaySlot;
use crate::streams::StreamSlot;
use crate::types::{NodeApiError, NodeEvent};

/// The node's parts, each with its own socket-id namespace in the node's [`SocketMap`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Part {
    /// The rendezvous (broker connections).
    Signaling,
    /// A PNP client, by index.
    Pnp(usize),
    /// The STUN-over-TCP binding from the listener's port.
    Binding,
    /// The NAT classifier.
    Classifier,
    /// A punch, by serial number.
    Punch(u32),
    /// A relay allocation, by serial number.
    Relay(u32),
    /// The node's own sockets: the listener, dials, accepted connections, streams.
    Own,
}

/// Why [`Node::new`] refused its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeError {
    /// The signaling configuration.
    Rendezvous(p2pd_signaling::rendezvous::RendezvousConfigError),
    /// The secure channel's settings are out of range.
    Channel,
}

impl core::fmt::Display for NodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NodeError::Rendezvous(e) => write!(f, "signaling: {e}"),
            NodeError::Channel => f.write_str("the secure channel settings are out of range"),
        }
    }
}

impl std::error::Error for NodeError {}

/// Counters (saturating).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Inbound connections accepted by the listener.
    pub accepted: u64,
    /// Inbound connections closed before proving an identity we take: no preface, a bad one, a
    /// failed handshake, a stranger not in `accept_from`, or dropped for a newcomer.
    pub strangers: u64,
    /// Connections (any path) closed because another one won.
    pub losers: u64,
    /// Signaling messages with our tag that did not parse.
    pub bad_messages: u64,
    /// Streams opened.
    pub streams: u64,
    /// Relay allocations started (phase C; none for pairs that connect otherwise, unless a
    /// punch was running).
    pub allocations: u64,
}

/// The node machine. See the [crate docs](crate).
pub struct Node {
    pub(crate) config: NodeConfig,
    pub(crate) key: PublicKey,
    pub(crate) keys: ChannelKeys,
    pub(crate) seeds: SeedSource,
    pub(crate) rng: Rng,
    pub(crate) sockets: SocketMap<Part>,
    pub(crate) rendezvous: Rendezvous,
    pub(crate) pnp: Vec<PnpClient>,
    pub(crate) binding: Option<TcpBinding>,
    pub(crate) classifier: Option<Classifier>,
    pub(crate) own: Own,
    pub(crate) connects: Vec<Connect>,
    pub(crate) conns: Vec<Conn>,
    pub(crate) punches: Vec<PunchSlot>,
    pub(crate) relays: Vec<RelaySlot>,
    pub(crate) streams: Vec<StreamSlot>,
    /// Intents of the node's own sockets (their ids in `Part::Own`).
    pub(crate) ops: VecDeque<SocketOp>,
    /// Intents already translated (of children retired before the caller drained them).
    pub(crate) retired_ops: VecDeque<SocketOp>,
    /// Bytes for the node's own sockets before they are streams (prefaces, handshakes).
    pub(crate) transmits: VecDeque<(SocketId, SocketAddr, Vec<u8>)>,
    pub(crate) next_socket: u32,
    pub(crate) next_stream: u64,
    pub(crate) next_connect: u64,
    pub(crate) next_punch: u32,
    pub(crate) next_relay: u32,
    pub(crate) events: VecDeque<NodeEvent>,
    pub(crate) stats: NodeStats,
    pub(crate) closing: bool,
    pub(crate) closed_reported: bool,
    pub(crate) rendezvous_closed: bool,
    pub(crate) pnp_closed: usize,
    pub(crate) deadline: Option<Instant>,
    pub(crate) last_now: Instant,
}

impl core::fmt::Debug for Node {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Node")
            .field("key", &self.key)
            .field("connects", &self.connects.len())
            .field("streams", &self.streams.len())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node for `identity`. It binds its listener, learns its address (external address,
    /// NAT behaviour), connects to its brokers and, with a name, registers it. `channel_secret`
    /// (32 secret random bytes: from the OS in a runtime, from the simulation's seed in a
    /// simulator) keys every secure channel; `seed` draws everything that needs no secrecy.
    pub fn new(
        mut config: NodeConfig,
        identity: Identity,
        channel_secret: [u8; 32],
        seed: u64,
        now: Instant,
    ) -> Result<Self, NodeError> {
        let mut rng = Rng::from_seed(seed);
        let mut seeds = SeedSource::new(channel_secret);
        let keys =
            ChannelKeys::new(&identity, seeds.next_seed()).map_err(|_| NodeError::Channel)?;
        config.channel.check().map_err(|_| NodeError::Channel)?;
        config.punch.node_id = identity.node_id();
        config.punch.unix_epoch_ns = config.rendezvous.unix_epoch_ms.saturating_mul(1_000_000);
        config.punch.channel = config.channel;
        let rendezvous = Rendezvous::new(
            config.rendezvous.clone(),
            identity.clone(),
            rng.next_u64(),
            now,
        )
        .map_err(NodeError::Rendezvous)?;
        let pnp = config
            .pnp
            .iter()
            .map(|c| PnpClient::new(c.clone(), identity.clone(), rng.next_u64()))
            .collect();
        let nat_known = match &config.nat {
            NatSource::Known(nat) => Some(*nat),
            NatSource::Classify(_) => None,
        };
        let mut node = Node {
            key: identity.public_key(),
            keys,
            seeds,
            rng,
            sockets: SocketMap::new(),
            rendezvous,
            pnp,
            binding: None,
            classifier: None,
            own: Own::new(nat_known),
            connects: Vec::new(),
            conns: Vec::new(),
            punches: Vec::new(),
            relays: Vec::new(),
            streams: Vec::new(),
            ops: VecDeque::new(),
            retired_ops: VecDeque::new(),
            transmits: VecDeque::new(),
            next_socket: 0,
            next_stream: 0,
            next_connect: 0,
            next_punch: 0,
            next_relay: 0,
            events: VecDeque::new(),
            stats: NodeStats::default(),
            closing: false,
            closed_reported: false,
            rendezvous_closed: false,
            pnp_closed: 0,
            deadline: None,
            last_now: now,
            config,
        };
        node.start_own(now);
        node.pump(now);
        Ok(node)
    }

    /// Our public key.
    pub fn public_key(&self) -> PublicKey {
        self.key
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        self.stats
    }

    /// The signaling machine (broker health).
    pub fn rendezvous(&self) -> &Rendezvous {
        &self.rendezvous
    }

    /// The PNP servers' canonical ids, in configuration order.
    pub fn pnp_servers(&self) -> Vec<PnpServerId> {
        self.pnp.iter().map(|c| c.server_id()).collect()
    }

    /// Sockets the node holds open (for leak checks).
    pub fn open_sockets(&self) -> usize {
        self.sockets.len()
    }

    /// Relay allocations held (for connects in progress and relayed streams).
    pub fn open_relays(&self) -> usize {
        self.relays.len()
    }

    /// Connects, connections, punches and streams alive (for leak checks).
    pub fn live(&self) -> (usize, usize, usize, usize) {
        (
            self.connects.len(),
            self.conns.len(),
            self.punches.len(),
            self.streams.len(),
        )
    }

    /// Closes everything. Idempotent; [`NodeEvent::Closed`] comes last (a relayed stream we
    /// finished lingers until its FINISHes are in and ours acknowledged, at most
    /// [`RELAY_LINGER`](crate::RELAY_LINGER), before: see [`Node::close_stream`]).
    pub fn close(&mut self, now: Instant) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.fail_all_connects(now);
        self.rendezvous.close(now);
        for c in &mut self.pnp {
            c.close(now);
        }
        if let Some(b) = &mut self.binding {
            b.close(now);
        }
        if let Some(c) = &mut self.classifier {
            c.close(now);
        }
        for p in &mut self.punches {
            p.node.close(now);
        }
        let sockets: Vec<SocketId> = self.conns.iter().map(|c| c.socket).collect();
        for s in sockets {
            self.drop_conn(s);
        }
        for s in &mut self.streams {
            // A relayed stream we finished lingers for the acknowledgements (bounded).
            s.close_or_linger(now);
        }
        // Allocations go, but a lingering stream's only when it closes (the deallocation would
        // end it at once, and the relay would drop what it still holds for the peer).
        let lingering: Vec<_> = self
            .streams
            .iter()
            .filter(|s| !s.closing)
            .map(|s| s.id)
            .collect();
        for r in &mut self.relays {
            if !r.stream.is_some_and(|id| lingering.contains(&id)) {
                r.client.close(now);
            }
        }
        self.close_listener();
        self.own.stop();
        self.pump(now);
    }

    /// A fresh id for one of the node's own sockets.
    pub(crate) fn new_socket(&mut self) -> SocketId {
        // Ids cycle; one still open is skipped.
        loop {
            let id = SocketId(self.next_socket);
            self.next_socket = self.next_socket.wrapping_add(1);
            if self.sockets.outer(Part::Own, id).is_none() {
                return id;
            }
        }
    }

    /// Takes every part's events, glues them, retires finished children and caches the deadline.
    pub(crate) fn pump(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.rendezvous.poll_event() {
                progressed = true;
                self.on_rendezvous(now, ev);
            }
            for i in 0..self.pnp.len() {
                while let Some(ev) = self.pnp.get_mut(i).and_then(|c| c.poll_event()) {
                    progressed = true;
                    self.on_pnp(now, i, ev);
                }
            }
            while let Some(ev) = self.binding.as_mut().and_then(|b| b.poll_event()) {
                progressed = true;
                self.on_binding(now, ev);
            }
            while let Some(ev) = self.classifier.as_mut().and_then(|c| c.poll_event()) {
                progressed = true;
                self.on_classifier(now, ev);
            }
            for i in 0..self.punches.len() {
                while let Some(ev) = self.punches.get_mut(i).and_then(|p| p.node.poll_event()) {
                    progressed = true;
                    self.on_punch(now, i, ev);
                }
            }
            for i in 0..self.relays.len() {
                while let Some(ev) = self.relays.get_mut(i).and_then(|r| r.client.poll_event()) {
                    progressed = true;
                    self.on_relay(now, i, ev);
                }
            }
            for i in 0..self.streams.len() {
                while let Some(ev) = self.streams.get_mut(i).and_then(|s| s.stream.poll_event()) {
                    progressed = true;
                    self.on_stream_event(i, ev);
                }
            }
            progressed |= self.step_connects(now);
            progressed |= self.step_own(now);
            progressed |= self.step_lingering(now);
            if !progressed {
                break;
            }
        }
        self.retire_children();
        self.last_now = now;
        self.deadline = self.next_deadline(now);
    }

    /// Children that are done leave; their last intents stay queued.
    fn retire_children(&mut self) {
        let mut retired = VecDeque::new();
        if self.binding.as_ref().is_some_and(|b| b.is_done()) {
            if let Some(mut b) = self.binding.take() {
                while let Some(op) = self.sockets.poll_socket_op(Part::Binding, &mut b) {
                    retired.push_back(op);
                }
            }
        }
        let mut i = 0;
        while i < self.punches.len() {
            if self.punches.get(i).is_some_and(|p| p.closed) {
                let mut p = self.punches.remove(i);
                while let Some(op) = self
                    .sockets
                    .poll_socket_op(Part::Punch(p.serial), &mut p.node)
                {
                    retired.push_back(op);
                }
                // What it still holds it never names again: an outstanding accept ended by its
                // listener's close, the alias of the stream it handed over.
                self.sockets.forget(Part::Punch(p.serial));
            } else {
                i = i.saturating_add(1);
            }
        }
        let mut i = 0;
        while i < self.relays.len() {
            if self.relays.get(i).is_some_and(|r| r.closed) {
                let mut r = self.relays.remove(i);
                while let Some(op) = self
                    .sockets
                    .poll_socket_op(Part::Relay(r.serial), &mut r.client)
                {
                    retired.push_back(op);
                }
                // The aliases of the data connections it handed over.
                self.sockets.forget(Part::Relay(r.serial));
            } else {
                i = i.saturating_add(1);
            }
        }
        self.retired_ops.extend(retired);
    }

    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let mut deadline: Option<Instant> = None;
        let mut add = |t: Option<Instant>| {
            if let Some(t) = t {
                deadline = Some(deadline.map_or(t, |d| d.min(t)));
            }
        };
        add(self.rendezvous.poll_timeout());
        for c in &self.pnp {
            add(c.poll_timeout());
        }
        add(self.binding.as_ref().and_then(|b| b.poll_timeout()));
        add(self.classifier.as_ref().and_then(|c| c.poll_timeout()));
        for p in &self.punches {
            add(p.node.poll_timeout());
        }
        for r in &self.relays {
            add(r.client.poll_timeout());
        }
        for s in &self.streams {
            add(s.stream.poll_timeout());
            if s.stream.wants_settle() {
                add(Some(now));
            }
        }
        for c in &self.conns {
            add(Some(c.deadline));
        }
        for c in &self.connects {
            add(c.deadline());
        }
        add(self.linger_deadline());
        add(self.own.deadline());
        deadline
    }

    /// The route of an input socket.
    fn route(&self, socket: SocketId) -> Option<(Part, SocketId)> {
        self.sockets.route(socket)
    }
}

impl Machine for Node {
    type Event = NodeEvent;

    fn handle_datagram(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        data: &[u8],
    ) -> Verdict {
        let verdict = match self.route(socket) {
            Some((Part::Pnp(i), inner)) => match self.pnp.get_mut(i) {
                Some(c) => c.handle_datagram(now, inner, from, data),
                None => Verdict::Dropped(DropReason::UnknownSocket),
            },
            Some((Part::Classifier, inner)) => match &mut self.classifier {
                Some(c) => c.handle_datagram(now, inner, from, data),
                None => Verdict::Dropped(DropReason::UnknownSocket),
            },
            _ => Verdict::Dropped(DropReason::UnknownSocket),
        };
        self.pump(now);
        verdict
    }

    fn handle_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        let verdict = match self.route(socket) {
            Some((Part::Signaling, inner)) => self.rendezvous.handle_stream(now, inner, data),
            Some((Part::Pnp(i), inner)) => match self.pnp.get_mut(i) {
                Some(c) => c.handle_stream(now, inner, data),
                None => Verdict::Dropped(DropReason::UnknownSocket),
            },
            Some((Part::Binding, inner)) => match &mut self.binding {
                Some(b) => b.handle_stream(now, inner, data),
                None => Verdict::Dropped(DropReason::UnknownSocket),
            },
            Some((Part::Classifier, inner)) => match &mut self.classifier {
                Some(c) => c.handle_stream(now, inner, data),
                None => Verdict::Dropped(DropReason::UnknownSocket),
            },
            Some((Part::Punch(serial), inner)) => {
                match self.punches.iter_mut().find(|p| p.serial == serial) {
                    Some(p) => p.node.handle_stream(now, inner, data),
                    None => Verdict::Dropped(DropReason::UnknownSocket),
                }
            }
            Some((Part::Relay(serial), inner)) => {
                match self.relays.iter_mut().find(|r| r.serial == serial) {
                    Some(r) => r.client.handle_stream(now, inner, data),
                    None => Verdict::Dropped(DropReason::UnknownSocket),
                }
            }
            Some((Part::Own, inner)) => self.own_stream_bytes(now, inner, data),
            None => Verdict::Dropped(DropReason::UnknownSocket),
        };
        self.pump(now);
        verdict
    }

    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        match self.route(socket) {
            Some((Part::Signaling, inner)) => {
                self.rendezvous.handle_socket_result(now, inner, outcome)
            }
            Some((Part::Pnp(i), inner)) => {
                if let Some(c) = self.pnp.get_mut(i) {
                    c.handle_socket_result(now, inner, outcome);
                }
            }
            Some((Part::Binding, inner)) => {
                if let Some(b) = &mut self.binding {
                    b.handle_socket_result(now, inner, outcome);
                }
            }
            Some((Part::Classifier, inner)) => {
                if let Some(c) = &mut self.classifier {
                    c.handle_socket_result(now, inner, outcome);
                }
            }
            Some((Part::Punch(serial), inner)) => {
                if let Some(p) = self.punches.iter_mut().find(|p| p.serial == serial) {
                    p.node.handle_socket_result(now, inner, outcome);
                }
            }
            Some((Part::Relay(serial), inner)) => {
                if let Some(r) = self.relays.iter_mut().find(|r| r.serial == serial) {
                    r.client.handle_socket_result(now, inner, outcome);
                }
            }
            Some((Part::Own, inner)) => self.own_socket_result(now, inner, outcome),
            None => {
                // A stream accepted for a retired child's outstanding accept: the runtime holds
                // it, so it gets its one close.
                if matches!(outcome, SocketOutcome::Accepted { .. }) {
                    self.retired_ops.push_back(SocketOp::Close { socket });
                }
            }
        }
        self.pump(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.rendezvous.poll_timeout()) {
            self.rendezvous.handle_timeout(now);
        }
        for c in &mut self.pnp {
            if due(c.poll_timeout()) {
                c.handle_timeout(now);
            }
        }
        if let Some(b) = self.binding.as_mut().filter(|b| due(b.poll_timeout())) {
            b.handle_timeout(now);
        }
        if let Some(c) = self.classifier.as_mut().filter(|c| due(c.poll_timeout())) {
            c.handle_timeout(now);
        }
        for p in &mut self.punches {
            if due(p.node.poll_timeout()) {
                p.node.handle_timeout(now);
            }
        }
        for r in &mut self.relays {
            if due(r.client.poll_timeout()) {
                r.client.handle_timeout(now);
            }
        }
        for s in &mut self.streams {
            s.stream.handle_timeout(now);
        }
        self.conns_timeout(now);
        self.connects_timeout(now);
        self.own_timeout(now);
        self.pump(now);
    }

    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let transmit = self.next_transmit(buf);
        if transmit.is_some() {
            // A child may arm a timer as it sends (a STUN client's retransmission is due from
            // the send): the cached deadline must see it, or nothing wakes us to retransmit.
            self.deadline = self.next_deadline(self.last_now);
        }
        transmit
    }

    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        let op = self.next_socket_op();
        if op.is_some() {
            self.deadline = self.next_deadline(self.last_now);
        }
        op
    }

    fn poll_event(&mut self) -> Option<NodeEvent> {
        let ev = self.events.pop_front();
        if ev.is_none() {
            self.report_closed();
            return self.events.pop_front();
        }
        ev
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
}

impl Node {
    /// The next transmit of any part.
    fn next_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(t) = self
            .sockets
            .poll_transmit(Part::Signaling, &mut self.rendezvous, buf)
        {
            return Some(t);
        }
        for (i, c) in self.pnp.iter_mut().enumerate() {
            if let Some(t) = self.sockets.poll_transmit(Part::Pnp(i), c, buf) {
                return Some(t);
            }
        }
        if let Some(b) = &mut self.binding {
            if let Some(t) = self.sockets.poll_transmit(Part::Binding, b, buf) {
                return Some(t);
            }
        }
        if let Some(c) = &mut self.classifier {
            if let Some(t) = self.sockets.poll_transmit(Part::Classifier, c, buf) {
                return Some(t);
            }
        }
        for p in &mut self.punches {
            if let Some(t) = self
                .sockets
                .poll_transmit(Part::Punch(p.serial), &mut p.node, buf)
            {
                return Some(t);
            }
        }
        for r in &mut self.relays {
            if let Some(t) = self
                .sockets
                .poll_transmit(Part::Relay(r.serial), &mut r.client, buf)
            {
                return Some(t);
            }
        }
        self.poll_own_transmit(buf)
    }

    /// The next socket intent of any part.
    fn next_socket_op(&mut self) -> Option<SocketOp> {
        if let Some(op) = self.retired_ops.pop_front() {
            return Some(op);
        }
        if let Some(op) = self
            .sockets
            .poll_socket_op(Part::Signaling, &mut self.rendezvous)
        {
            return Some(op);
        }
        for (i, c) in self.pnp.iter_mut().enumerate() {
            if let Some(op) = self.sockets.poll_socket_op(Part::Pnp(i), c) {
                return Some(op);
            }
        }
        if let Some(b) = &mut self.binding {
            if let Some(op) = self.sockets.poll_socket_op(Part::Binding, b) {
                return Some(op);
            }
        }
        if let Some(c) = &mut self.classifier {
            if let Some(op) = self.sockets.poll_socket_op(Part::Classifier, c) {
                return Some(op);
            }
        }
        for p in &mut self.punches {
            if let Some(op) = self
                .sockets
                .poll_socket_op(Part::Punch(p.serial), &mut p.node)
            {
                return Some(op);
            }
        }
        for r in &mut self.relays {
            if let Some(op) = self
                .sockets
                .poll_socket_op(Part::Relay(r.serial), &mut r.client)
            {
                return Some(op);
            }
        }
        self.poll_own_op()
    }

    fn report_closed(&mut self) {
        if self.closing
            && !self.closed_reported
            && self.rendezvous_closed
            && self.pnp_closed >= self.pnp.len()
            && self.binding.is_none()
            && self.classifier.is_none()
            && self.punches.is_empty()
            && self.relays.is_empty()
            && self.conns.is_empty()
            && self.streams.is_empty()
            && self.ops.is_empty()
            && self.retired_ops.is_empty()
            && !self.own.holds_listener()
        {
            self.closed_reported = true;
            self.events.push_back(NodeEvent::Closed);
        }
    }

    /// The API guard.
    pub(crate) fn check_open(&self) -> Result<(), NodeApiError> {
        if self.closing {
            Err(NodeApiError::Closed)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;
    use p2pd_nat::ServerSpec;
    use p2pd_proto::Transport;
    use p2pd_signaling::rendezvous::{BrokerSpec, RendezvousConfig};

    /// A node that classifies its NAT against one server (as `p2pd node` does).
    fn classifying_node() -> Node {
        let broker = BrokerSpec::new(
            None,
            SocketAddr::from((Ipv4Addr::new(203, 0, 113, 3), 1883)),
        );
        let mut config = NodeConfig::new(RendezvousConfig::new(vec![broker], 0), Vec::new());
        config.local_ip = Ipv4Addr::new(192, 0, 2, 2).into();
        config.nat = NatSource::Classify(vec![ServerSpec {
            id: 1,
            primary: SocketAddr::from((Ipv4Addr::new(203, 0, 113, 1), 3478)),
            alternate: None,
        }]);
        let identity = Identity::from_secret_bytes(&[5; 32]).unwrap();
        Node::new(config, identity, [6; 32], 7, Instant::ZERO).unwrap()
    }

    /// The classifier's STUN client arms each retransmission as the request is sent; the node's
    /// deadline must include it right after the send, with no other input in between (in the
    /// real-NAT lab the filtering trains stopped after the first send and the NAT came out
    /// unknown: nothing woke the node to retransmit).
    #[test]
    fn the_deadline_follows_timers_armed_by_a_send() {
        let mut node = classifying_node();
        let now = Instant::ZERO;
        let mut port = 40000u16;
        let mut buf = vec![0u8; 2048];
        let mut sent = 0;
        for _ in 0..10 {
            while let Some(op) = node.poll_socket_op() {
                assert_eq!(node.poll_timeout(), node.next_deadline(node.last_now));
                if let SocketOp::Bind {
                    socket,
                    transport: Transport::Udp,
                    local,
                    ..
                } = op
                {
                    port += 1;
                    let local = SocketAddr::new(local.ip(), port);
                    node.handle_socket_result(now, socket, SocketOutcome::Bound { local });
                }
            }
            while node.poll_transmit(&mut buf).is_some() {
                sent += 1;
                assert_eq!(
                    node.poll_timeout(),
                    node.next_deadline(node.last_now),
                    "after send {sent}"
                );
            }
        }
        assert!(sent > 0, "the classifier sent its probes");
        let due = node.poll_timeout().expect("a retransmission is due");
        assert!(
            due <= now.saturating_add(core::time::Duration::from_millis(500)),
            "{due:?}"
        );
    }
}

//! A whole punching node in one machine: signaling ([`Rendezvous`] over MQTT brokers), mapping
//! discovery (a [`TcpBinding`] STUN-over-TCP probe from every punch port, kept open so the mapping
//! lives; from another port when the NAT's mapping is dependent and its allocation follows the local
//! port, so the probe does not hold the port the punch connection is predicted to get), the
//! [`Puncher`], and afterwards the punched stream itself, through the secure channel the punch's
//! election established ([`p2pd_channel`]: authenticated to the peer's identity, encrypted):
//! bytes in as [`NodeEvent::Data`], out with [`PunchNode::send`], our end of the sending side with
//! [`PunchNode::finish`] (the channel's authenticated FINISH, then the TCP FIN: the peer reads EOF
//! once every byte is written), and we keep receiving until the peer's own FINISH,
//! [`NodeEvent::StreamClosed`]. An end of the stream without it, or any tampered byte, is
//! [`NodeEvent::StreamFailed`].
//!
//! The runtime (or the simulator) drives it like any machine; the CLI's `p2pd punch` is this
//! machine plus stdin/stdout. Each part (the rendezvous, the puncher, every probe) names its own
//! sockets in its own namespace: a [`SocketMap`] hands out the ids the runtime sees and routes
//! every input back to its part; the punched stream is adopted from the puncher when it connects.
//!
//! The punched stream is a [`SecureStream`] (the channel and its send buffer under the runtime's
//! flow control): the node reports its events as its own, or hands it over with its socket
//! ([`PunchNode::take_stream`]) to a parent that drives it directly.
//!
//! With [`PunchNode::with_external_signaling`] the node has no rendezvous of its own: a parent
//! machine carries the punch messages ([`NodeEvent::Signal`] out, [`PunchNode::handle_signal`]
//! in). The messages are the same, so such a node punches with one that has its own signaling.
//!
//! [`TcpBinding`]: p2pd_proto::client_tcp::TcpBinding

mod probes;
mod stream;
#[cfg(test)]
mod tests;

use core::net::SocketAddr;
use core::time::Duration;
use p2pd_proto::Machine;
use std::collections::VecDeque;

use p2pd_channel::stream::SecureStream;
use p2pd_channel::{ChannelFailure, ChannelKeys, SeedSource};
use p2pd_proto::client_tcp::TcpBindingError;
use p2pd_proto::compose::SocketMap;
use p2pd_proto::{
    DropReason, Instant, Rng, SocketId, SocketOp, SocketOutcome, Transmit, Verdict,
    TRANSMIT_BUFFER_LEN,
};
use p2pd_signaling::rendezvous::{Rendezvous, RendezvousConfig, RendezvousEvent};
use p2pd_signaling::{Identity, NodeId, PublicKey, NODE_ID_LEN};

use crate::error::PunchApiError;
use crate::machine::{PunchConfig, PunchEvent, PunchFailure, Puncher};
use crate::message::{PunchCandidate, TAG};
use crate::plan::NatView;

use probes::{Pending, Probe};
use stream::Stream;
pub use stream::SEND_BUFFER;

/// The node's parts, each with its own socket-id namespace in the node's [`SocketMap`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    /// The rendezvous machine (broker connections).
    Signaling,
    /// The punch machine (punch sockets, until one connects).
    Puncher,
    /// A probe, by serial number.
    Probe(u32),
    /// The punched stream, adopted from the puncher (its id in this namespace is always 0).
    Stream,
}

/// The punched stream's id in its own namespace.
const STREAM_ID: SocketId = SocketId(0);

/// Which part of a [`PunchNode`] holds a socket ([`PunchNode::socket_part`]), for diagnostics and
/// test harnesses that answer the node's intents.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NodePart {
    /// Signaling: a broker connection of the rendezvous.
    Signaling,
    /// The punch machine: a punch port's listener or connection.
    Puncher,
    /// A STUN-over-TCP probe.
    Probe,
    /// The punched stream.
    Stream,
}

/// How a [`PunchNode`] runs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PunchNodeConfig {
    /// Signaling (brokers, epoch). With external signaling only its `unix_epoch_ms` is used
    /// (the punch's wall-clock epoch).
    pub rendezvous: RendezvousConfig,
    /// The punch machine's settings (its `node_id` and `unix_epoch_ns` are set from the node).
    pub punch: PunchConfig,
    /// The STUN server (TCP) that tells each punch port's mapping.
    pub stun_server: SocketAddr,
    /// Our NAT's behaviour, if classified (without it the mapping is taken to be
    /// endpoint-independent).
    pub nat: Option<NatView>,
    /// Local ports per round. Default 1.
    pub ports_per_round: usize,
    /// A probe's time limit. Default 5 s.
    pub probe_timeout: Duration,
    /// Times a round's probing is tried (fresh ports each time) before the punch fails with
    /// [`PunchFailure::NoSockets`] because no probe answered. Default 3.
    pub probe_attempts: u32,
}

impl PunchNodeConfig {
    /// Defaults for these signaling settings and STUN server.
    pub fn new(rendezvous: RendezvousConfig, stun_server: SocketAddr) -> Self {
        let epoch_ns = rendezvous.unix_epoch_ms.saturating_mul(1_000_000);
        PunchNodeConfig {
            rendezvous,
            punch: PunchConfig::new(NodeId([0; NODE_ID_LEN]), epoch_ns),
            stun_server,
            nat: None,
            ports_per_round: 1,
            probe_timeout: Duration::from_secs(5),
            probe_attempts: 3,
        }
    }
}

/// Why [`PunchNode::new`] refused its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PunchNodeError {
    /// The signaling configuration.
    Rendezvous(p2pd_signaling::rendezvous::RendezvousConfigError),
    /// The secure channel's settings (`config.punch.channel`) are out of range.
    Channel,
}

impl core::fmt::Display for PunchNodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PunchNodeError::Rendezvous(e) => write!(f, "signaling: {e}"),
            PunchNodeError::Channel => f.write_str("the secure channel settings are out of range"),
        }
    }
}

impl std::error::Error for PunchNodeError {}

/// What a [`PunchNode`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A signaling event (broker up/down, rejected envelope, a non-punch message...).
    Signaling(RendezvousEvent),
    /// A round's probes found these candidates.
    Candidates {
        /// The round.
        round: u8,
        /// Our candidates.
        candidates: Vec<PunchCandidate>,
    },
    /// A probe failed (its port is left out of the round).
    ProbeFailed {
        /// The local port.
        port: u16,
        /// Why.
        reason: TcpBindingError,
    },
    /// The punch machine's progress (armed, round failed).
    Punch(PunchEvent),
    /// Punched: the stream to the peer is up (the node's, until [`PunchNode::take_stream`]).
    Connected {
        /// The peer's key.
        peer: PublicKey,
        /// Our end.
        local: SocketAddr,
        /// The peer's end.
        remote: SocketAddr,
    },
    /// Bytes from the peer on the punched stream (authenticated and decrypted).
    Data(Vec<u8>),
    /// The punched stream's secure channel failed (tampered bytes, the stream cut before the
    /// peer's FINISH...): nothing more is delivered or sent; [`NodeEvent::StreamClosed`] follows.
    StreamFailed(ChannelFailure),
    /// Our sending side is finished: after [`PunchNode::finish`], every queued byte was taken by
    /// the runtime and the `Shutdown` went out ([`PunchNode::is_finished`] is true from now on).
    Finished,
    /// There is room again in the send buffer (at least half of [`SEND_BUFFER`] is free), after
    /// a [`PunchNode::send`] failed because it was full or left it more than half full.
    Writable,
    /// The peer finished sending (its authenticated FINISH, after its last [`NodeEvent::Data`]),
    /// or the stream failed.
    /// Reported once. After an EOF the stream stays up for our side: [`PunchNode::is_connected`]
    /// is still true and [`PunchNode::send`] / [`PunchNode::finish`] work as before; after a
    /// failure (or a failure that comes later) `is_connected` is false.
    StreamClosed,
    /// A punch message for `to`, for the parent's signaling to carry (only in the external
    /// signaling mode, [`PunchNode::with_external_signaling`]; the peer's node hands it to
    /// [`PunchNode::handle_signal`]).
    Signal {
        /// The peer.
        to: PublicKey,
        /// The punch message (its first byte is [`crate::message::TAG`]).
        payload: Vec<u8>,
    },
    /// The punch failed for good.
    Failed(PunchFailure),
    /// Everything is released: the last event.
    Closed,
}

/// The punched stream, handed over by [`PunchNode::take_stream`].
#[derive(Debug)]
#[non_exhaustive]
pub struct PunchedStream {
    /// Its socket, an id in the node's (the runtime's) namespace: the caller's from now on (the
    /// node never names it again, not even to close it).
    pub socket: SocketId,
    /// Our end.
    pub local: SocketAddr,
    /// The peer's end.
    pub remote: SocketAddr,
    /// The peer's key (the identity its channel proved).
    pub peer: PublicKey,
    /// The stream's secure channel and send buffer, with every byte and event the node had not
    /// reported yet.
    pub stream: SecureStream,
}

/// The composite punching node (see the [module docs](self)).
pub struct PunchNode {
    config: PunchNodeConfig,
    /// Every part's sockets, in the runtime's namespace.
    sockets: SocketMap<Part>,
    /// Our own signaling; `None` when the parent carries the punch messages
    /// ([`PunchNode::with_external_signaling`]).
    rendezvous: Option<Rendezvous>,
    puncher: Puncher,
    probes: Vec<Probe>,
    /// Probes' socket intents, taken out of them at every pump so that a finished probe can leave
    /// the table before the caller polled its `Close`.
    probe_ops: VecDeque<SocketOp>,
    next_probe: u32,
    /// Probing attempts made for the pending round.
    probe_attempts: u32,
    pending: Option<Pending>,
    peer: Option<PublicKey>,
    stream: Option<Stream>,
    rng: Rng,
    events: VecDeque<NodeEvent>,
    closing: bool,
    closed_reported: bool,
    rendezvous_closed: bool,
    puncher_closed: bool,
    deadline: Option<Instant>,
    /// The time of the last input (for deadlines set while polling).
    last_now: Instant,
}

impl core::fmt::Debug for PunchNode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PunchNode")
            .field("probes", &self.probes.len())
            .field("connected", &self.stream.is_some())
            .finish_non_exhaustive()
    }
}

impl PunchNode {
    /// A node for `identity`; it connects to its brokers at once and answers punch offers.
    /// `channel_secret` (32 secret random bytes: from the OS in a runtime, from the simulation's
    /// seed in a simulator) keys the secure channel's static and ephemeral keys; `seed` draws
    /// everything that needs no secrecy (ids, jitter).
    pub fn new(
        config: PunchNodeConfig,
        identity: Identity,
        channel_secret: [u8; 32],
        seed: u64,
        now: Instant,
    ) -> Result<Self, PunchNodeError> {
        let mut rng = Rng::from_seed(seed);
        let mut seeds = SeedSource::new(channel_secret);
        let keys =
            ChannelKeys::new(&identity, seeds.next_seed()).map_err(|_| PunchNodeError::Channel)?;
        let rendezvous = Rendezvous::new(config.rendezvous.clone(), identity, rng.next_u64(), now)
            .map_err(PunchNodeError::Rendezvous)?;
        Self::build(config, keys, seeds, rng, Some(rendezvous), now)
    }

    /// A punch node without its own rendezvous: its parent carries the punch messages (it
    /// reports them as [`NodeEvent::Signal`] and hands the peer's to
    /// [`PunchNode::handle_signal`]). `config.rendezvous` is ignored except its `unix_epoch_ms`
    /// (the punch's wall-clock epoch). `keys` are the node's channel keys (its identity), `seeds`
    /// key every channel of the punch, `seed` draws everything that needs no secrecy. It speaks
    /// the same punch messages as a node with its own signaling.
    pub fn with_external_signaling(
        config: PunchNodeConfig,
        keys: ChannelKeys,
        seeds: SeedSource,
        seed: u64,
        now: Instant,
    ) -> Result<Self, PunchNodeError> {
        Self::build(config, keys, seeds, Rng::from_seed(seed), None, now)
    }

    fn build(
        mut config: PunchNodeConfig,
        keys: ChannelKeys,
        seeds: SeedSource,
        mut rng: Rng,
        rendezvous: Option<Rendezvous>,
        now: Instant,
    ) -> Result<Self, PunchNodeError> {
        config.punch.node_id = keys.identity().node_id();
        config.punch.unix_epoch_ns = config.rendezvous.unix_epoch_ms.saturating_mul(1_000_000);
        let puncher = Puncher::new(config.punch.clone(), keys, seeds, rng.next_u64())
            .map_err(|_| PunchNodeError::Channel)?;
        let rendezvous_closed = rendezvous.is_none();
        let mut node = PunchNode {
            config,
            sockets: SocketMap::new(),
            rendezvous,
            puncher,
            probes: Vec::new(),
            probe_ops: VecDeque::new(),
            next_probe: 0,
            probe_attempts: 0,
            pending: None,
            peer: None,
            stream: None,
            rng,
            events: VecDeque::new(),
            closing: false,
            closed_reported: false,
            rendezvous_closed,
            puncher_closed: false,
            deadline: None,
            last_now: now,
        };
        node.pump(now);
        Ok(node)
    }

    /// Starts punching to `peer`: probes first, then the offer.
    pub fn punch(&mut self, now: Instant, peer: PublicKey) -> Result<(), PunchApiError> {
        if self.closing {
            return Err(PunchApiError::Closed);
        }
        if self.peer.is_some() || self.pending.is_some() {
            return Err(PunchApiError::InProgress);
        }
        self.peer = Some(peer);
        self.probe_attempts = 0;
        self.start_probes(now, Pending::Initiate);
        self.pump(now);
        Ok(())
    }

    /// The signaling machine (health, stats); `None` with external signaling.
    pub fn rendezvous(&self) -> Option<&Rendezvous> {
        self.rendezvous.as_ref()
    }

    /// A punch message (its first byte is [`TAG`]) from `from`, received by the parent's
    /// signaling (external signaling mode; with our own rendezvous it works the same). The first
    /// peer heard from (or the one we punch to) is the only one answered.
    pub fn handle_signal(&mut self, now: Instant, from: PublicKey, payload: &[u8]) {
        self.on_signal(now, from, payload);
        self.pump(now);
    }

    /// Hands the punched stream over, once connected (in either mode): the node forgets its
    /// socket (it never names it again, not even in a `Close`) and the caller owns it from now
    /// on, with its [`SecureStream`] (events the node had not reported yet stay in it). Call it
    /// when [`NodeEvent::Connected`] comes, before polling further events, so the stream's data
    /// is not reported as the node's. `None` before the stream is up, after it failed, after
    /// [`PunchNode::close`] and once taken.
    pub fn take_stream(&mut self) -> Option<PunchedStream> {
        if self.closing || !self.stream.as_ref().is_some_and(|s| s.secure.is_open()) {
            return None;
        }
        let s = self.stream.take()?;
        // Forget the socket without emitting its Close (the map releases it on the translation;
        // the intent is dropped): the caller closes it.
        let _forgotten = self
            .sockets
            .outbound(Part::Stream, SocketOp::Close { socket: STREAM_ID });
        self.pump(self.last_now);
        Some(PunchedStream {
            socket: s.socket,
            local: s.local,
            remote: s.remote,
            peer: s.peer,
            stream: s.secure,
        })
    }

    /// The punch machine (stats).
    pub fn puncher(&self) -> &Puncher {
        &self.puncher
    }

    /// Closes everything (the punched stream too). Idempotent; [`NodeEvent::Closed`] comes last.
    pub fn close(&mut self, now: Instant) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.puncher.close(now);
        if let Some(r) = &mut self.rendezvous {
            r.close(now);
        }
        for p in &mut self.probes {
            p.machine.close(now);
        }
        if let Some(s) = &mut self.stream {
            s.secure.close(now);
        }
        self.pump(now);
    }

    // ----- machine contract -----

    // ----- glue -----

    /// Takes every part's events, glues them, and caches the deadline.
    fn pump(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.rendezvous.as_mut().and_then(|r| r.poll_event()) {
                progressed = true;
                self.on_rendezvous(now, ev);
            }
            while let Some(ev) = self.puncher.poll_event() {
                progressed = true;
                self.on_punch(now, ev);
            }
            for i in 0..self.probes.len() {
                while let Some(ev) = self.probes.get_mut(i).and_then(|p| p.machine.poll_event()) {
                    progressed = true;
                    self.on_probe(i, ev);
                }
            }
            if self.probes_done() {
                progressed |= self.finish_probes(now);
            }
            if !progressed {
                break;
            }
        }
        // Probes that are closed and no longer needed leave the table; their last intents (the
        // `Close` of their socket) stay queued.
        for p in &mut self.probes {
            while let Some(op) = self
                .sockets
                .poll_socket_op(Part::Probe(p.serial), &mut p.machine)
            {
                self.probe_ops.push_back(op);
            }
        }
        if self.pending.is_none() {
            self.probes.retain(|p| !(p.closed && p.result.is_some()));
        }
        let mut deadline = self.rendezvous.as_ref().and_then(|r| r.poll_timeout());
        let stream_deadline = self.stream.as_ref().and_then(|s| s.secure.poll_timeout());
        for t in [self.puncher.poll_timeout(), stream_deadline]
            .into_iter()
            .chain(self.probes.iter().map(|p| p.machine.poll_timeout()))
            .flatten()
        {
            deadline = Some(deadline.map_or(t, |d| d.min(t)));
        }
        // Unsettled transmits settle at once (a blocked stream waits for `Writable`).
        if self
            .stream
            .as_ref()
            .is_some_and(|s| s.secure.wants_settle())
        {
            deadline = Some(deadline.map_or(now, |d| d.min(now)));
        }
        self.last_now = now;
        self.deadline = deadline;
    }

    fn on_rendezvous(&mut self, now: Instant, ev: RendezvousEvent) {
        match ev {
            RendezvousEvent::Message { from, payload, .. } if payload.first() == Some(&TAG) => {
                self.on_signal(now, from, &payload);
            }
            RendezvousEvent::Closed => self.rendezvous_closed = true,
            other => self.events.push_back(NodeEvent::Signaling(other)),
        }
    }

    /// A punch message from `from`: the first peer heard from (or the one we punch to) is the
    /// only one answered.
    fn on_signal(&mut self, now: Instant, from: PublicKey, payload: &[u8]) {
        if payload.first() != Some(&TAG) {
            return;
        }
        if self.peer.is_none() {
            self.peer = Some(from);
        }
        if self.peer == Some(from) {
            let _ = self.puncher.handle_signal(now, from.node_id(), payload);
        }
    }

    fn on_punch(&mut self, now: Instant, ev: PunchEvent) {
        match ev {
            PunchEvent::Signal { payload, .. } => {
                if let Some(peer) = self.peer {
                    match &mut self.rendezvous {
                        Some(r) => {
                            let _ = r.send(now, &peer, None, &payload);
                        }
                        None => self
                            .events
                            .push_back(NodeEvent::Signal { to: peer, payload }),
                    }
                }
            }
            PunchEvent::NeedCandidates { round } => {
                if !self.closing {
                    self.probe_attempts = 0;
                    self.start_probes(now, Pending::Provide(round));
                }
            }
            PunchEvent::Connected {
                socket,
                local,
                remote,
                peer,
                ..
            } => {
                // The stream and its channel are the node's from now on (the puncher does not
                // close it).
                let Some(channel) = self.puncher.take_channel(socket) else {
                    return;
                };
                // The winner's last handshake message (the leader's message 3) is still in its
                // channel: the stream sends it. Bytes the puncher had already queued on the
                // winner (normally none) go out first.
                let mut earlier = Vec::new();
                let mut buf = [0u8; TRANSMIT_BUFFER_LEN];
                while let Some(t) =
                    self.sockets
                        .poll_transmit(Part::Puncher, &mut self.puncher, &mut buf)
                {
                    if self.sockets.route(t.socket) == Some((Part::Puncher, socket)) {
                        earlier.extend_from_slice(buf.get(..t.len).unwrap_or_default());
                    }
                }
                let Some(socket) =
                    self.sockets
                        .adopt(Part::Puncher, socket, Part::Stream, STREAM_ID)
                else {
                    return;
                };
                for p in &mut self.probes {
                    p.machine.close(now);
                }
                self.events.push_back(NodeEvent::Connected {
                    peer,
                    local,
                    remote,
                });
                // The leader's last handshake message, and data that came right behind the
                // follower's.
                self.stream = Some(Stream {
                    socket,
                    local,
                    remote,
                    peer,
                    secure: SecureStream::with_prefix(channel, &earlier),
                    close_sent: false,
                });
                // The puncher has nothing left to do.
                self.puncher.close(now);
            }
            PunchEvent::Failed { reason } => {
                for p in &mut self.probes {
                    p.machine.close(now);
                }
                if reason != PunchFailure::Closed {
                    self.events.push_back(NodeEvent::Failed(reason));
                }
            }
            PunchEvent::Closed => self.puncher_closed = true,
            other => self.events.push_back(NodeEvent::Punch(other)),
        }
    }

    fn report_closed(&mut self) {
        if self.closing
            && !self.closed_reported
            && self.rendezvous_closed
            && self.puncher_closed
            && self.probes.iter().all(|p| p.closed)
            && self.stream.as_ref().is_none_or(|s| s.close_sent)
        {
            self.closed_reported = true;
            self.events.push_back(NodeEvent::Closed);
        }
    }
}

impl p2pd_proto::Machine for PunchNode {
    type Event = NodeEvent;

    /// Stream bytes: the punched stream, a probe, the puncher or a broker connection.
    fn handle_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        let verdict = match self.sockets.route(socket) {
            Some((Part::Stream, _)) => {
                if let Some(s) = self.stream.as_mut().filter(|_| !self.closing) {
                    s.secure.handle_bytes(now, data);
                }
                Verdict::Consumed
            }
            Some((Part::Probe(serial), inner)) => {
                match self.probes.iter_mut().find(|p| p.serial == serial) {
                    Some(p) => p.machine.handle_stream(now, inner, data),
                    None => Verdict::Dropped(DropReason::UnknownSocket),
                }
            }
            Some((Part::Puncher, inner)) => self.puncher.handle_stream(now, inner, data),
            Some((Part::Signaling, inner)) => match &mut self.rendezvous {
                Some(r) => r.handle_stream(now, inner, data),
                None => Verdict::Dropped(DropReason::UnknownSocket),
            },
            None => Verdict::Dropped(DropReason::UnknownSocket),
        };
        self.pump(now);
        verdict
    }

    /// A socket outcome, routed like stream bytes.
    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        let route = self.sockets.route(socket);
        if let Some(s) = self
            .stream
            .as_mut()
            .filter(|_| matches!(route, Some((Part::Stream, _))))
        {
            s.secure.handle_outcome(now, &outcome);
        } else {
            match route {
                Some((Part::Probe(serial), inner)) => {
                    if let Some(p) = self.probes.iter_mut().find(|p| p.serial == serial) {
                        p.machine.handle_socket_result(now, inner, outcome);
                    }
                }
                Some((Part::Puncher, inner)) => {
                    self.puncher.handle_socket_result(now, inner, outcome);
                }
                Some((Part::Signaling, inner)) => {
                    if let Some(r) = &mut self.rendezvous {
                        r.handle_socket_result(now, inner, outcome);
                    }
                }
                // A socket no part holds (closed already): nothing to tell.
                Some((Part::Stream, _)) | None => {}
            }
        }
        self.pump(now);
    }

    /// Time passed.
    fn handle_timeout(&mut self, now: Instant) {
        if let Some(s) = self.stream.as_mut() {
            // The send buffer's settle point (and the channel's deadline, were it due).
            s.secure.handle_timeout(now);
        }
        if let Some(r) = self
            .rendezvous
            .as_mut()
            .filter(|r| r.poll_timeout().is_some_and(|t| t <= now))
        {
            r.handle_timeout(now);
        }
        if self.puncher.poll_timeout().is_some_and(|t| t <= now) {
            self.puncher.handle_timeout(now);
        }
        for p in &mut self.probes {
            if p.machine.poll_timeout().is_some_and(|t| t <= now) {
                p.machine.handle_timeout(now);
            }
        }
        self.pump(now);
    }

    /// The next transmit of any part.
    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(r) = &mut self.rendezvous {
            if let Some(t) = self.sockets.poll_transmit(Part::Signaling, r, buf) {
                return Some(t);
            }
        }
        if let Some(t) = self
            .sockets
            .poll_transmit(Part::Puncher, &mut self.puncher, buf)
        {
            return Some(t);
        }
        for p in &mut self.probes {
            if let Some(t) = self
                .sockets
                .poll_transmit(Part::Probe(p.serial), &mut p.machine, buf)
            {
                return Some(t);
            }
        }
        self.poll_stream_transmit(buf)
    }

    /// The next socket intent of any part.
    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        if let Some(r) = &mut self.rendezvous {
            if let Some(op) = self.sockets.poll_socket_op(Part::Signaling, r) {
                return Some(op);
            }
        }
        if let Some(op) = self
            .sockets
            .poll_socket_op(Part::Puncher, &mut self.puncher)
        {
            return Some(op);
        }
        if let Some(op) = self.probe_ops.pop_front() {
            return Some(op);
        }
        for p in &mut self.probes {
            if let Some(op) = self
                .sockets
                .poll_socket_op(Part::Probe(p.serial), &mut p.machine)
            {
                return Some(op);
            }
        }
        self.poll_stream_op()
    }

    /// The next event.
    fn poll_event(&mut self) -> Option<NodeEvent> {
        // The node's own events, then the punched stream's (after its `Connected`), then the
        // last one.
        if let Some(ev) = self.events.pop_front() {
            return Some(ev);
        }
        if let Some(ev) = self.poll_stream_event() {
            return Some(ev);
        }
        self.report_closed();
        self.events.pop_front()
    }

    /// The earliest deadline of any part (cached).
    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
}

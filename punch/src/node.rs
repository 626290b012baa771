//! A whole punching node in one machine: signaling ([`Rendezvous`] over MQTT brokers), mapping
//! discovery (a [`TcpBinding`] STUN-over-TCP probe from every punch port, kept open so the mapping
//! lives; from another port when the NAT's mapping is dependent and its allocation follows the local
//! port, so the probe does not hold the port the punch connection is predicted to get), the
//! [`Puncher`], and afterwards the punched stream itself (bytes in as
//! [`NodeEvent::Data`], out with [`PunchNode::send`], our end of the sending side with
//! [`PunchNode::finish`]: the peer reads EOF once every byte is written, and we keep receiving
//! until its own EOF, [`NodeEvent::StreamClosed`]).
//!
//! The runtime (or the simulator) drives it like any machine; the CLI's `p2pd punch` is this
//! machine plus stdin/stdout. Socket ids are split into ranges: the rendezvous machine uses
//! `0 ..` ([`p2pd_signaling::rendezvous::SOCKETS_PER_BROKER`] per broker), the puncher [`PUNCH_SOCKET_BASE`] `..`, the probes
//! [`PROBE_SOCKET_BASE`] `..`.

use core::net::SocketAddr;
use core::time::Duration;
use p2pd_proto::Machine;
use std::collections::VecDeque;

use p2pd_proto::client_tcp::{
    TcpBinding, TcpBindingConfig, TcpBindingError, TcpBindingEvent, TCP_BINDING_SOCKET,
};
use p2pd_proto::{
    Instant, IoError, OpKind, Rng, SocketId, SocketOp, SocketOutcome, Transmit, Verdict,
    TRANSMIT_BUFFER_LEN,
};
use p2pd_signaling::rendezvous::{Rendezvous, RendezvousConfig, RendezvousEvent};
use p2pd_signaling::{Identity, PublicKey};

use crate::machine::{PunchConfig, PunchEvent, PunchFailure, Puncher};
use crate::message::{Candidate, TAG};
use crate::plan::{pick_local_ports, plan_candidates, NatView, Observation};

/// The puncher's first socket id.
pub const PUNCH_SOCKET_BASE: u32 = 10_000;
/// The probes' first socket id.
pub const PROBE_SOCKET_BASE: u32 = 20_000;
/// Probe socket ids cycle through this many.
const PROBE_SOCKET_IDS: u32 = 1024;
/// Most bytes queued for the punched stream.
pub const MAX_SEND_QUEUE: usize = 256 * 1024;

/// How a [`PunchNode`] runs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PunchNodeConfig {
    /// Signaling (brokers, epoch).
    pub rendezvous: RendezvousConfig,
    /// The punch machine's settings (its `node_id`, `unix_epoch_ns` and socket range are set
    /// from the node).
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
            punch: PunchConfig::new([0; 20], epoch_ns),
            stun_server,
            nat: None,
            ports_per_round: 1,
            probe_timeout: Duration::from_secs(5),
            probe_attempts: 3,
        }
    }
}

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
        candidates: Vec<Candidate>,
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
    /// Punched: the stream to the peer is up.
    Connected {
        /// The peer's key.
        peer: PublicKey,
        /// Our end.
        local: SocketAddr,
        /// The peer's end.
        remote: SocketAddr,
    },
    /// Bytes from the peer on the punched stream.
    Data(Vec<u8>),
    /// The peer finished sending (EOF, after its last [`NodeEvent::Data`]), or the stream failed.
    /// Reported once. After an EOF the stream stays up for our side: [`PunchNode::is_connected`]
    /// is still true and [`PunchNode::send`] / [`PunchNode::finish`] work as before; after a
    /// failure (or a failure that comes later) `is_connected` is false.
    StreamClosed,
    /// The punch failed for good.
    Failed(PunchFailure),
    /// Everything is released: the last event.
    Closed,
}

/// One probe.
struct Probe {
    outer: SocketId,
    /// The punch port the probe is for (the probe itself may run from another port: see
    /// [`probe_elsewhere`]).
    port: u16,
    machine: TcpBinding,
    result: Option<Option<Observation>>,
    closed: bool,
    /// Probed for the round being prepared (an earlier round's probe is only waiting to close).
    current: bool,
}

/// After the runtime refused a stream transmit (its buffer is full), the stream waits this long
/// before it writes again.
const STREAM_RETRY: Duration = Duration::from_millis(5);

/// The punched stream, once up.
///
/// A runtime may refuse a stream transmit when its own buffer for the stream is full
/// (`Failed { op: Send, error: WouldBlock }`; nothing of that transmit is taken). That is flow
/// control, not a broken stream: bytes stay in `out` until the runtime has taken them. The first
/// `emitted` bytes of `out` went out as the transmits in `chunks` since the last settle point;
/// refusals are reported in the same drain (the runtime and the simulator deliver socket outcomes
/// before any further input), so at the next input (stream bytes or a timeout; a transmit makes
/// the deadline immediate) every such transmit not refused was taken. Refused ones are always the
/// last ones: every transmit after the first of a batch is full-sized (the first carries the odd
/// remainder, so a whole queue goes out in one batch), so once one does not fit, none after it
/// does.
struct Stream {
    socket: SocketId,
    remote: SocketAddr,
    out: VecDeque<u8>,
    /// Bytes at the front of `out` handed to the runtime, not yet known to be taken.
    emitted: usize,
    /// Their transmits' lengths, in order.
    chunks: VecDeque<usize>,
    /// Transmits the runtime refused (the last ones of `chunks`).
    refused: usize,
    /// No stream transmit before this (after a refusal).
    blocked_until: Option<Instant>,
    /// Failed, or the node is closing: nothing more is sent or reported.
    closed: bool,
    /// [`PunchNode::finish`] was called: no more `send`; the `Shutdown` goes out once `out` is
    /// empty (every byte taken by the runtime).
    finishing: bool,
    /// The `Shutdown` intent went out.
    shut: bool,
    /// [`NodeEvent::StreamClosed`] was reported (the peer's EOF, or a failure).
    ended: bool,
}

impl Stream {
    /// Every transmit since the last settle point not refused was taken: drop those bytes, keep
    /// the refused ones queued (in order) to be sent again.
    fn settle(&mut self) {
        let refused: usize = self.chunks.iter().rev().take(self.refused).sum();
        let taken = self.emitted.saturating_sub(refused).min(self.out.len());
        self.out.drain(..taken);
        self.emitted = 0;
        self.chunks.clear();
        self.refused = 0;
    }

    fn clear(&mut self) {
        self.out.clear();
        self.emitted = 0;
        self.chunks.clear();
        self.refused = 0;
        self.blocked_until = None;
    }
}

/// Which round the probes are for, and who to tell.
#[derive(Copy, Clone, Debug)]
enum Pending {
    Initiate,
    Provide(u8),
}

/// The composite punching node (see the [module docs](self)).
pub struct PunchNode {
    config: PunchNodeConfig,
    rendezvous: Rendezvous,
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
    pub fn new(
        mut config: PunchNodeConfig,
        identity: Identity,
        seed: u64,
        now: Instant,
    ) -> Result<Self, p2pd_signaling::rendezvous::ConfigError> {
        let mut rng = Rng::from_seed(seed);
        config.rendezvous.socket_base = SocketId(0);
        config.punch.node_id = identity.node_id().0;
        config.punch.unix_epoch_ns = config.rendezvous.unix_epoch_ms.saturating_mul(1_000_000);
        config.punch.socket_base = SocketId(PUNCH_SOCKET_BASE);
        config.punch.socket_ids = PROBE_SOCKET_BASE.saturating_sub(PUNCH_SOCKET_BASE);
        let rendezvous = Rendezvous::new(config.rendezvous.clone(), identity, rng.next_u64(), now)?;
        let puncher = Puncher::new(config.punch.clone(), rng.next_u64());
        let mut node = PunchNode {
            config,
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
            rendezvous_closed: false,
            puncher_closed: false,
            deadline: None,
            last_now: now,
        };
        node.pump(now);
        Ok(node)
    }

    /// Starts punching to `peer`: probes first, then the offer.
    pub fn punch(&mut self, now: Instant, peer: PublicKey) -> Result<(), &'static str> {
        if self.closing {
            return Err("closed");
        }
        if self.peer.is_some() || self.pending.is_some() {
            return Err("a punch is already in progress");
        }
        self.peer = Some(peer);
        self.probe_attempts = 0;
        self.start_probes(now, Pending::Initiate);
        self.pump(now);
        Ok(())
    }

    /// Queues bytes for the punched stream. `Err` before it is up, after it failed or the node
    /// closed, after [`PunchNode::finish`], or when the queue is full. The peer's EOF
    /// ([`NodeEvent::StreamClosed`] with [`PunchNode::is_connected`] still true) does not stop
    /// sending.
    pub fn send(&mut self, now: Instant, bytes: &[u8]) -> Result<(), &'static str> {
        let stream = self.stream.as_mut().ok_or("not connected")?;
        if stream.closed {
            return Err("the stream is closed");
        }
        if stream.finishing {
            return Err("the sending side is finished");
        }
        if stream.out.len().saturating_add(bytes.len()) > MAX_SEND_QUEUE {
            return Err("send queue full");
        }
        stream.out.extend(bytes.iter().copied());
        self.pump(now);
        Ok(())
    }

    /// Finishes our sending side of the punched stream (half-close): once every byte queued so far
    /// has been taken by the runtime, the node emits [`SocketOp::Shutdown`] for the stream (the
    /// runtime writes what it still holds, then the FIN), so the peer reads all of it and then
    /// EOF. We keep receiving: [`NodeEvent::Data`] until the peer's own EOF,
    /// [`NodeEvent::StreamClosed`]; then [`PunchNode::close`]. [`PunchNode::send`] fails from now
    /// on. Idempotent; `Err` before the stream is up and after it failed or the node closed.
    pub fn finish(&mut self, now: Instant) -> Result<(), &'static str> {
        let stream = self.stream.as_mut().ok_or("not connected")?;
        if stream.closed {
            return Err("the stream is closed");
        }
        stream.finishing = true;
        self.pump(now);
        Ok(())
    }

    /// Whether [`PunchNode::finish`] has taken full effect on the node's side: every queued byte
    /// was taken by the runtime and the `Shutdown` intent went out (the runtime may still hold
    /// bytes it has not written: see its own view of the socket, [`PunchNode::stream_socket`]).
    pub fn is_finished(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.shut)
    }

    /// The punched stream's socket while it is up (for the runtime's own view of it, e.g. bytes
    /// it still holds unwritten).
    pub fn stream_socket(&self) -> Option<SocketId> {
        self.stream.as_ref().filter(|s| !s.closed).map(|s| s.socket)
    }

    /// Whether the punched stream is up: punched, not failed, the node not closed. Stays true
    /// after the peer's EOF and after [`PunchNode::finish`] (half-closed either way).
    pub fn is_connected(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| !s.closed)
    }

    /// Bytes waiting to be written to the punched stream (including those handed to the runtime
    /// and not yet known to be taken).
    pub fn queued(&self) -> usize {
        self.stream.as_ref().map_or(0, |s| s.out.len())
    }

    /// The signaling machine (health, stats).
    pub fn rendezvous(&self) -> &Rendezvous {
        &self.rendezvous
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
        self.rendezvous.close(now);
        for p in &mut self.probes {
            p.machine.close(now);
        }
        if let Some(s) = &mut self.stream {
            if !s.closed {
                s.closed = true;
            }
            s.clear();
        }
        self.pump(now);
    }

    // ----- machine contract -----

    // ----- glue -----

    fn start_probes(&mut self, now: Instant, pending: Pending) {
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
            let outer = SocketId(
                PROBE_SOCKET_BASE
                    .saturating_add(self.next_probe.checked_rem(PROBE_SOCKET_IDS).unwrap_or(0)),
            );
            self.next_probe = self.next_probe.wrapping_add(1);
            let local = SocketAddr::new(self.config.punch.bind_ip, probe_port);
            let mut binding = TcpBindingConfig::new(self.config.stun_server, local).keep_open(true);
            binding.timeout = self.config.probe_timeout;
            self.probes.push(Probe {
                outer,
                port,
                machine: TcpBinding::new(binding, self.rng.next_u64(), now),
                result: None,
                closed: false,
                current: true,
            });
        }
        self.pending = Some(pending);
    }

    /// Takes every part's events, glues them, and caches the deadline.
    fn pump(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.rendezvous.poll_event() {
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
            while let Some(op) = p.machine.poll_socket_op() {
                self.probe_ops.push_back(remap(op, p.outer));
            }
        }
        if self.pending.is_none() {
            self.probes.retain(|p| !(p.closed && p.result.is_some()));
        }
        let mut deadline = self.rendezvous.poll_timeout();
        for t in [self.puncher.poll_timeout()]
            .into_iter()
            .chain(self.probes.iter().map(|p| p.machine.poll_timeout()))
            .flatten()
        {
            deadline = Some(deadline.map_or(t, |d| d.min(t)));
        }
        if let Some(s) = self.stream.as_ref().filter(|s| !s.closed) {
            // Unsettled transmits settle at once; a refused stream retries after its pause.
            let t = if s.chunks.is_empty() {
                s.blocked_until
            } else {
                Some(now)
            };
            if let Some(t) = t {
                deadline = Some(deadline.map_or(t, |d| d.min(t)));
            }
        }
        self.last_now = now;
        self.deadline = deadline;
    }

    fn on_rendezvous(&mut self, now: Instant, ev: RendezvousEvent) {
        match ev {
            RendezvousEvent::Message { from, payload, .. } if payload.first() == Some(&TAG) => {
                if self.peer.is_none() {
                    self.peer = Some(from);
                }
                if self.peer == Some(from) {
                    let _ = self.puncher.handle_signal(now, from.node_id().0, &payload);
                }
            }
            RendezvousEvent::Closed => self.rendezvous_closed = true,
            other => self.events.push_back(NodeEvent::Signaling(other)),
        }
    }

    fn on_punch(&mut self, now: Instant, ev: PunchEvent) {
        match ev {
            PunchEvent::Signal { payload, .. } => {
                if let Some(peer) = self.peer {
                    let _ = self.rendezvous.send(now, &peer, None, &payload);
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
                leftover,
                ..
            } => {
                self.stream = Some(Stream {
                    socket,
                    remote,
                    out: VecDeque::new(),
                    emitted: 0,
                    chunks: VecDeque::new(),
                    refused: 0,
                    blocked_until: None,
                    closed: false,
                    finishing: false,
                    shut: false,
                    ended: false,
                });
                for p in &mut self.probes {
                    p.machine.close(now);
                }
                if let Some(peer) = self.peer {
                    self.events.push_back(NodeEvent::Connected {
                        peer,
                        local,
                        remote,
                    });
                }
                if !leftover.is_empty() {
                    self.events.push_back(NodeEvent::Data(leftover));
                }
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

    fn on_probe(&mut self, i: usize, ev: TcpBindingEvent) {
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

    fn probes_done(&self) -> bool {
        self.pending.is_some() && self.probes.iter().all(|p| p.result.is_some() || p.closed)
    }

    /// All probes of the round answered: plan and hand the candidates on.
    fn finish_probes(&mut self, now: Instant) -> bool {
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
        let result = match pending {
            Pending::Initiate => match self.peer {
                Some(peer) => self
                    .puncher
                    .initiate(now, peer.node_id().0, candidates)
                    .map(|_| ()),
                None => Err("no peer"),
            },
            Pending::Provide(r) => self.puncher.provide_candidates(now, r, candidates),
        };
        if result.is_err() {
            self.puncher.close(now);
        }
        true
    }

    fn report_closed(&mut self) {
        if self.closing
            && !self.closed_reported
            && self.rendezvous_closed
            && self.puncher_closed
            && self.probes.iter().all(|p| p.closed)
            && self
                .stream
                .as_ref()
                .is_none_or(|s| s.socket == SocketId(u32::MAX))
        {
            self.closed_reported = true;
            self.events.push_back(NodeEvent::Closed);
        }
    }
}

/// Whether the probes must run from other ports than the punch ports: with a dependent mapping
/// whose external port follows the local port (preserving, fixed offset), a probe kept open from
/// the punch port would hold the very external port the punch connection is predicted to get (its
/// mapping is for the STUN server, a different destination), and the NAT would give the punch
/// connection another one. The probe then only tells the external IP.
fn probe_elsewhere(view: Option<NatView>) -> bool {
    view.is_some_and(|v| {
        v.mapping != p2pd_nat::Mapping::EndpointIndependent
            && matches!(
                v.allocation,
                p2pd_nat::PortAllocation::Preserving | p2pd_nat::PortAllocation::FixedOffset { .. }
            )
    })
}

/// `op` with its socket id replaced by `outer` (a probe's single socket).
fn remap(op: SocketOp, outer: SocketId) -> SocketOp {
    match op {
        SocketOp::Bind {
            transport,
            local,
            options,
            ..
        } => SocketOp::Bind {
            socket: outer,
            transport,
            local,
            options,
        },
        SocketOp::Connect { remote, .. } => SocketOp::Connect {
            socket: outer,
            remote,
        },
        SocketOp::Listen { backlog, .. } => SocketOp::Listen {
            socket: outer,
            backlog,
        },
        SocketOp::SetTtl { ttl, .. } => SocketOp::SetTtl { socket: outer, ttl },
        SocketOp::Close { .. } => SocketOp::Close { socket: outer },
        other => other,
    }
}

impl p2pd_proto::Machine for PunchNode {
    type Event = NodeEvent;

    /// Stream bytes: the punched stream, a probe, the puncher or a broker connection.
    fn handle_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        if let Some(s) = self.stream.as_mut() {
            s.settle();
        }
        let verdict = if self.stream.as_ref().is_some_and(|s| s.socket == socket) {
            if !self.closing {
                self.events.push_back(NodeEvent::Data(data.to_vec()));
            }
            Verdict::Consumed
        } else if let Some(p) = self.probes.iter_mut().find(|p| p.outer == socket) {
            p.machine.handle_stream(now, TCP_BINDING_SOCKET, data)
        } else if socket.0 >= PUNCH_SOCKET_BASE {
            self.puncher.handle_stream(now, socket, data)
        } else {
            self.rendezvous.handle_stream(now, socket, data)
        };
        self.pump(now);
        verdict
    }

    /// A socket outcome, routed like stream bytes.
    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        if let Some(s) = self.stream.as_mut().filter(|s| s.socket == socket) {
            let refused = matches!(
                outcome,
                SocketOutcome::Failed {
                    op: OpKind::Send,
                    error: IoError::WouldBlock,
                    ..
                }
            );
            if refused && !s.closed && s.refused < s.chunks.len() {
                // Flow control: sent again after a pause (see `Stream`).
                s.refused = s.refused.saturating_add(1);
                s.blocked_until = Some(now.saturating_add(STREAM_RETRY));
            } else if matches!(outcome, SocketOutcome::PeerClosed) && !s.closed {
                // Half-closed by the peer: we may still send (and finish).
                if !s.ended {
                    s.ended = true;
                    self.events.push_back(NodeEvent::StreamClosed);
                }
            } else if matches!(outcome, SocketOutcome::Failed { .. }) && !s.closed {
                s.closed = true;
                s.clear();
                if !s.ended {
                    s.ended = true;
                    self.events.push_back(NodeEvent::StreamClosed);
                }
            }
        } else if let Some(p) = self.probes.iter_mut().find(|p| p.outer == socket) {
            p.machine
                .handle_socket_result(now, TCP_BINDING_SOCKET, outcome);
        } else if socket.0 >= PUNCH_SOCKET_BASE {
            self.puncher.handle_socket_result(now, socket, outcome);
        } else {
            self.rendezvous.handle_socket_result(now, socket, outcome);
        }
        self.pump(now);
    }

    /// Time passed.
    fn handle_timeout(&mut self, now: Instant) {
        if let Some(s) = self.stream.as_mut() {
            s.settle();
            if s.blocked_until.is_some_and(|t| t <= now) {
                s.blocked_until = None;
            }
        }
        if self.rendezvous.poll_timeout().is_some_and(|t| t <= now) {
            self.rendezvous.handle_timeout(now);
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
        if let Some(t) = self.rendezvous.poll_transmit(buf) {
            return Some(t);
        }
        if let Some(t) = self.puncher.poll_transmit(buf) {
            return Some(t);
        }
        for p in &mut self.probes {
            if let Some(t) = p.machine.poll_transmit(buf) {
                return Some(Transmit {
                    socket: p.outer,
                    ..t
                });
            }
        }
        let s = self.stream.as_mut()?;
        if s.closed || s.blocked_until.is_some() {
            return None;
        }
        let full = buf.len().min(TRANSMIT_BUFFER_LEN);
        let pending = s.out.len().saturating_sub(s.emitted);
        // Only the first transmit of a batch may be short (see `Stream`): it carries the odd
        // remainder, so the rest of the queue follows in full-sized transmits in the same batch.
        // Bytes queued after a batch started wait for the next settle point if they leave a
        // short tail (at the latest the immediate deadline below).
        let n = match (s.chunks.is_empty(), pending.checked_rem(full)) {
            (true, Some(odd)) if odd > 0 => odd,
            _ => pending.min(full),
        };
        if n == 0 || (n < full && !s.chunks.is_empty()) {
            return None;
        }
        for (dst, src) in buf.iter_mut().zip(s.out.range(s.emitted..)).take(n) {
            *dst = *src;
        }
        s.emitted = s.emitted.saturating_add(n);
        s.chunks.push_back(n);
        // Settle at once (a timeout now), so taken bytes leave the queue and the rest goes out.
        self.deadline = Some(
            self.deadline
                .map_or(self.last_now, |d| d.min(self.last_now)),
        );
        Some(Transmit {
            socket: s.socket,
            destination: s.remote,
            len: n,
        })
    }

    /// The next socket intent of any part.
    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        if let Some(op) = self.rendezvous.poll_socket_op() {
            return Some(op);
        }
        if let Some(op) = self.puncher.poll_socket_op() {
            return Some(op);
        }
        if let Some(op) = self.probe_ops.pop_front() {
            return Some(op);
        }
        for p in &mut self.probes {
            if let Some(op) = p.machine.poll_socket_op() {
                return Some(remap(op, p.outer));
            }
        }
        // Finishing: the `Shutdown` once the runtime has taken every byte (unsettled transmits
        // stay in `out` until the next settle point, so refused ones are sent first).
        if let Some(s) = self.stream.as_mut() {
            if s.finishing && !s.shut && !s.closed && s.out.is_empty() && s.chunks.is_empty() {
                s.shut = true;
                return Some(SocketOp::Shutdown { socket: s.socket });
            }
        }
        // The punched stream is ours once handed over: close it once, on close.
        if self.closing {
            if let Some(s) = self.stream.as_mut() {
                if s.closed && s.socket != SocketId(u32::MAX) {
                    let socket = s.socket;
                    s.socket = SocketId(u32::MAX);
                    return Some(SocketOp::Close { socket });
                }
            }
        }
        None
    }

    /// The next event.
    fn poll_event(&mut self) -> Option<NodeEvent> {
        let ev = self.events.pop_front();
        if ev.is_none() {
            self.report_closed();
            return self.events.pop_front();
        }
        ev
    }

    /// The earliest deadline of any part (cached).
    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pd_nat::{Mapping, PortAllocation};
    use p2pd_signaling::rendezvous::BrokerSpec;

    fn node(nat: Option<NatView>, secret: u8) -> PunchNode {
        let brokers = vec![BrokerSpec::new(None, "192.0.2.10:1883".parse().unwrap())];
        let mut config = PunchNodeConfig::new(
            RendezvousConfig::new(brokers, 1_800_000_000_000),
            "192.0.2.1:3478".parse().unwrap(),
        );
        config.nat = nat;
        let identity = Identity::from_secret_bytes(&[secret; 32]).unwrap();
        PunchNode::new(config, identity, 7, Instant::ZERO).unwrap()
    }

    fn peer() -> PublicKey {
        Identity::from_secret_bytes(&[9; 32]).unwrap().public_key()
    }

    type Driven = p2pd_proto::testing::Driven<PunchNode>;

    /// `node`, driven through the contract checker.
    fn driven(nat: Option<NatView>, secret: u8) -> Driven {
        let mut d = Driven::new("punch node", node(nat, secret), |e| {
            matches!(e, NodeEvent::Closed)
        });
        d.drain();
        d
    }

    /// The probes' (socket, local port) binds since the last call.
    fn probe_binds(n: &mut Driven) -> Vec<(SocketId, u16)> {
        n.take_ops()
            .into_iter()
            .filter_map(|op| match op {
                SocketOp::Bind { socket, local, .. } if socket.0 >= PROBE_SOCKET_BASE => {
                    Some((socket, local.port()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn closing_while_probing_closes_the_probe_socket() {
        // Regression: a probe that finished on close left the table before its `Close` was
        // polled, so its socket was never closed.
        let mut n = driven(None, 1);
        n.input(|n, now| n.punch(now, peer())).unwrap();
        let binds = probe_binds(&mut n);
        assert_eq!(binds.len(), 1);
        n.input(|n, now| n.close(now));
        let closes: Vec<SocketId> = n
            .take_ops()
            .into_iter()
            .filter_map(|op| match op {
                SocketOp::Close { socket } => Some(socket),
                _ => None,
            })
            .collect();
        assert!(closes.contains(&binds[0].0), "{closes:?}");
        assert_eq!(
            closes.iter().filter(|s| **s == binds[0].0).count(),
            1,
            "closed once"
        );
    }

    #[test]
    fn probes_run_from_another_port_when_the_prediction_follows_the_local_port() {
        // Regression: with a dependent mapping and preserving (or fixed-offset) allocation, a
        // kept-open probe from the punch port holds the external port the punch connection is
        // predicted to get.
        let view = |mapping, allocation| {
            Some(NatView {
                mapping,
                allocation,
            })
        };
        assert!(probe_elsewhere(view(
            Mapping::AddressAndPortDependent,
            PortAllocation::Preserving
        )));
        assert!(probe_elsewhere(view(
            Mapping::AddressDependent,
            PortAllocation::FixedOffset { offset: 10 }
        )));
        assert!(!probe_elsewhere(view(
            Mapping::EndpointIndependent,
            PortAllocation::Preserving
        )));
        assert!(!probe_elsewhere(view(
            Mapping::AddressAndPortDependent,
            PortAllocation::Sequential { stride: 1 }
        )));
        assert!(!probe_elsewhere(None));
        let mut n = driven(
            view(Mapping::AddressAndPortDependent, PortAllocation::Preserving),
            1,
        );
        n.input(|n, now| n.punch(now, peer())).unwrap();
        let binds = probe_binds(&mut n);
        assert_eq!(binds.len(), 1);
        let punch_port = n.machine.probes[0].port;
        assert_ne!(binds[0].1, punch_port);
        let mut same = driven(None, 1);
        same.input(|n, now| n.punch(now, peer())).unwrap();
        let binds = probe_binds(&mut same);
        assert_eq!(binds[0].1, same.machine.probes[0].port);
    }

    /// A node whose punched stream is up on `STREAM` (set directly: the punch itself is tested
    /// elsewhere), driven through the contract checker.
    fn streaming() -> Driven {
        let mut n = node(None, 1);
        n.stream = Some(Stream {
            socket: STREAM,
            remote: "203.0.113.20:40000".parse().unwrap(),
            out: VecDeque::new(),
            emitted: 0,
            chunks: VecDeque::new(),
            refused: 0,
            blocked_until: None,
            closed: false,
            finishing: false,
            shut: false,
            ended: false,
        });
        let mut d = Driven::new("punch node", n, |e| matches!(e, NodeEvent::Closed));
        d.drain();
        let _ = d.take();
        d
    }

    const STREAM: SocketId = SocketId(PUNCH_SOCKET_BASE + 2);

    /// The stream bytes of the transmits recorded so far.
    fn stream_transmits(d: &mut Driven) -> Vec<Vec<u8>> {
        d.take_transmits()
            .into_iter()
            .filter(|(t, _)| t.socket == STREAM)
            .map(|(_, bytes)| bytes)
            .collect()
    }

    #[test]
    fn refused_stream_transmits_go_out_again_without_spinning() {
        // Regression (fuzz punch_node_session): after the runtime refused a batch, the pause's
        // end sent the full chunks, the next wake-up at the same instant the short tail, and a
        // third one at that instant settled it: the contract allows two.
        let mut d = streaming();
        let bytes: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
        d.input(|n, now| n.send(now, &bytes)).unwrap();
        let first = stream_transmits(&mut d);
        assert!(!first.is_empty());
        // The runtime's buffer is full: every transmit of the batch is refused.
        let refused = SocketOutcome::Failed {
            op: OpKind::Send,
            destination: None,
            error: IoError::WouldBlock,
        };
        for _ in &first {
            d.outcome(STREAM, refused);
        }
        // Once the pause is over, everything goes out again, in order, without a spin.
        let mut taken = Vec::new();
        for _ in 0..10 {
            d.advance(Duration::from_millis(10));
            taken.extend(stream_transmits(&mut d).concat());
        }
        assert_eq!(taken, bytes);
        assert_eq!(d.machine.queued(), 0);
    }

    #[test]
    fn one_batch_carries_the_whole_queue() {
        // The first transmit of a batch carries the odd remainder, the others are full: a queue
        // goes out in one batch, and a refusal still hits a suffix of it.
        let mut d = streaming();
        let bytes: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
        d.input(|n, now| n.send(now, &bytes)).unwrap();
        let batch = stream_transmits(&mut d);
        let sizes: Vec<usize> = batch.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1000, 1500, 1500]);
        assert_eq!(batch.concat(), bytes);
        // The settle point (one wake-up at the same instant) leaves nothing queued.
        d.advance(Duration::ZERO);
        assert!(stream_transmits(&mut d).is_empty());
        assert_eq!(d.machine.queued(), 0);
        assert_eq!(d.deadline(), d.machine.rendezvous().poll_timeout());
    }

    #[test]
    fn a_round_whose_probes_all_fail_is_probed_again_from_fresh_ports() {
        // Regression: one lost probe ended the whole punch with `NoSockets`.
        use p2pd_proto::{IoError, OpKind};
        let mut n = driven(None, 1);
        n.input(|n, now| n.punch(now, peer())).unwrap();
        let mut seen = Vec::new();
        for attempt in 0..3 {
            let binds = probe_binds(&mut n);
            assert_eq!(binds.len(), 1, "attempt {attempt}");
            let (socket, port) = binds[0];
            assert!(!seen.contains(&port), "fresh port");
            seen.push(port);
            n.outcome(
                socket,
                SocketOutcome::Failed {
                    op: OpKind::Bind,
                    destination: None,
                    error: IoError::AddrInUse,
                },
            );
        }
        assert!(probe_binds(&mut n).is_empty(), "no fourth attempt");
        let events: Vec<NodeEvent> = n.take_events();
        let probe_failures = events
            .iter()
            .filter(|e| matches!(e, NodeEvent::ProbeFailed { .. }))
            .count();
        assert_eq!(probe_failures, 3, "{events:?}");
        assert!(
            matches!(
                events.last(),
                Some(NodeEvent::Failed(PunchFailure::NoSockets(_)))
            ),
            "{events:?}"
        );
    }
}

//! Forwarding: `p2pd node --forward HOST:PORT` hands every accepted stream to a local TCP
//! service (a fresh connection each), and `p2pd connect TARGET --forward LISTEN_ADDR` listens
//! locally and carries each local client over its own stream to the target, concurrently,
//! until stopped (SIGINT/SIGTERM).
//!
//! [`Forwarder`] is a machine around the [`Node`]: the node's sockets and the local ones (in
//! their own id namespace, through a [`SocketMap`]) on one runtime. Bytes from a local socket go
//! to its stream with [`Node::send`], the stream's bytes to the local socket through a
//! [`SendBuffer`] under the runtime's flow control; each side's end is passed on as a
//! half-close (FINISH / Shutdown). Neither direction can pause the other's reading, so bytes
//! waiting on either side are capped at [`MAX_WAITING`]: a pair over it is cut (both ends closed).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::Duration;

use p2pd_mio::{RunEnd, Runtime};
use p2pd_node::{
    ConnectId, Node, NodeApiError, NodeEvent, Phase, PhaseFailure, PhaseOutcome, PhaseReport,
    StreamId, Target,
};
use p2pd_proto::compose::SocketMap;
use p2pd_proto::send_buffer::{FlowControl, SendBuffer};
use p2pd_proto::{
    BindOptions, Instant, Machine, SocketId, SocketOp, SocketOutcome, Transmit, Transport, Verdict,
};
use p2pd_signaling::pnp::{ErrorCode, PnpFailure};

use super::health::NodeHealth;
use super::status::{PhaseLine, Status};
use crate::commands::stop_signal;

/// Most bytes waiting in one direction of one pair.
pub const MAX_WAITING: usize = 4 * 1024 * 1024;
/// How many times a local client's connect is retried after the PNP server said "rate limited".
const RATE_LIMIT_RETRIES: u8 = 3;
/// How often the loop checks for a stop request.
const SLICE: Duration = Duration::from_millis(200);

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Node,
    Local,
}

/// One stream and its local connection.
struct Pair {
    /// When the local side appeared (the connect timeout counts from here).
    opened: Instant,
    stream: Option<StreamId>,
    connect: Option<ConnectId>,
    local: SocketId,
    local_peer: SocketAddr,
    local_up: bool,
    /// The stream's bytes for the local socket.
    to_local: SendBuffer,
    /// Overflow of `to_local` (bytes the buffer did not take yet).
    to_local_wait: VecDeque<u8>,
    /// Local bytes the stream has not taken yet.
    to_stream: Vec<u8>,
    local_eof: bool,
    /// A rate-limited connect is tried again at this time.
    retry_at: Option<Instant>,
    /// Connects retried so far.
    retries: u8,
    /// `finish` was called on the stream.
    stream_finished: bool,
    /// The node reported `Finished`: every byte of ours was taken, the FIN is out.
    stream_flushed: bool,
    peer_finished: bool,
    local_shut: bool,
    closed: bool,
}

/// The node plus local sockets (see the module docs).
pub struct Forwarder {
    node: Node,
    map: SocketMap<Side>,
    ops: VecDeque<SocketOp>,
    pairs: Vec<Pair>,
    listener: Option<SocketId>,
    accepting: Option<SocketId>,
    /// Where accepted streams go (node mode).
    forward_to: Option<SocketAddr>,
    /// Where local clients connect to (connect mode).
    target: Option<Target>,
    /// Connect mode: a local client whose stream is not up this long after it came is closed.
    connect_timeout: Option<Duration>,
    ready: bool,
    next_id: u32,
    events: VecDeque<NodeEvent>,
    now: Instant,
}

impl Forwarder {
    fn new(node: Node, now: Instant) -> Forwarder {
        Forwarder {
            node,
            map: SocketMap::new(),
            ops: VecDeque::new(),
            pairs: Vec::new(),
            listener: None,
            accepting: None,
            forward_to: None,
            target: None,
            connect_timeout: None,
            ready: false,
            next_id: 0,
            events: VecDeque::new(),
            now,
        }
    }

    fn new_id(&mut self) -> SocketId {
        loop {
            let id = SocketId(self.next_id);
            self.next_id = self.next_id.wrapping_add(1);
            if self.map.outer(Side::Local, id).is_none() && self.listener != Some(id) {
                return id;
            }
        }
    }

    fn listen(&mut self, at: SocketAddr) {
        let socket = self.new_id();
        self.listener = Some(socket);
        self.ops.push_back(SocketOp::Bind {
            socket,
            transport: Transport::Tcp,
            local: at,
            options: BindOptions {
                reuse_address: true,
                ..BindOptions::default()
            },
        });
        self.ops.push_back(SocketOp::Listen {
            socket,
            backlog: 64,
        });
        self.accept_next();
    }

    fn accept_next(&mut self) {
        if let (Some(listener), None) = (self.listener, self.accepting) {
            let socket = self.new_id();
            self.accepting = Some(socket);
            self.ops.push_back(SocketOp::Accept { listener, socket });
        }
    }

    fn new_pair(&mut self, local: SocketId, local_peer: SocketAddr, local_up: bool) -> &mut Pair {
        let opened = self.now;
        self.pairs.push(Pair {
            opened,
            stream: None,
            connect: None,
            local,
            local_peer,
            local_up,
            to_local: SendBuffer::new(256 * 1024),
            to_local_wait: VecDeque::new(),
            to_stream: Vec::new(),
            local_eof: false,
            retry_at: None,
            retries: 0,
            stream_finished: false,
            stream_flushed: false,
            peer_finished: false,
            local_shut: false,
            closed: false,
        });
        let last = self.pairs.len().saturating_sub(1);
        &mut self.pairs[last]
    }

    /// A node event: pairs are made and fed here; status-worthy ones go to the caller.
    fn on_node_event(&mut self, now: Instant, ev: NodeEvent) {
        match ev {
            NodeEvent::Accepted { stream, .. } if self.forward_to.is_some() => {
                let Some(to) = self.forward_to else { return };
                let local = self.new_id();
                self.ops.push_back(SocketOp::Bind {
                    socket: local,
                    transport: Transport::Tcp,
                    local: SocketAddr::new(
                        if to.is_ipv4() {
                            [0, 0, 0, 0].into()
                        } else {
                            [0u16; 8].into()
                        },
                        0,
                    ),
                    options: BindOptions::default(),
                });
                self.ops.push_back(SocketOp::Connect {
                    socket: local,
                    remote: to,
                });
                self.new_pair(local, to, false).stream = Some(stream);
                self.events.push_back(ev);
            }
            NodeEvent::Connected {
                connect, stream, ..
            } => {
                if let Some(p) = self.pairs.iter_mut().find(|p| p.connect == Some(connect)) {
                    p.stream = Some(stream);
                } else {
                    // Its local client is gone (the node cannot cancel a connect): release the
                    // stream, or it stays open on both sides.
                    let _ = self.node.close_stream(now, stream);
                }
                self.events.push_back(ev);
            }
            NodeEvent::Accepted { stream, .. } => {
                // Connect mode carries no inbound streams.
                let _ = self.node.close_stream(now, stream);
                self.events.push_back(ev);
            }
            NodeEvent::ConnectFailed {
                connect,
                ref phases,
                ..
            } => {
                if let Some(p) = self.pairs.iter_mut().find(|p| p.connect == Some(connect)) {
                    // Every local client is a connect, each with its own name lookup: a burst
                    // of clients meets the PNP server's per-source rate limit. Such a connect
                    // is tried again once the server's window is over.
                    match rate_limited(phases) {
                        Some(wait) if p.retries < RATE_LIMIT_RETRIES => {
                            p.retries = p.retries.saturating_add(1);
                            p.connect = None;
                            p.retry_at = Some(now.saturating_add(wait));
                            return;
                        }
                        _ => p.closed = true,
                    }
                }
                self.events.push_back(ev);
            }
            NodeEvent::Data { stream, bytes } => {
                if let Some(p) = self.pairs.iter_mut().find(|p| p.stream == Some(stream)) {
                    p.to_local_wait.extend(bytes);
                    if p.to_local_wait.len() > MAX_WAITING {
                        p.closed = true;
                    }
                }
            }
            NodeEvent::PeerFinished { stream } => {
                if let Some(p) = self.pairs.iter_mut().find(|p| p.stream == Some(stream)) {
                    p.peer_finished = true;
                }
            }
            NodeEvent::StreamFailed { stream, .. } => {
                if let Some(p) = self.pairs.iter_mut().find(|p| p.stream == Some(stream)) {
                    p.closed = true;
                }
                self.events.push_back(ev);
            }
            NodeEvent::Ready { .. } => {
                self.ready = true;
                self.events.push_back(ev);
            }
            NodeEvent::Finished { stream } => {
                if let Some(p) = self.pairs.iter_mut().find(|p| p.stream == Some(stream)) {
                    p.stream_flushed = true;
                }
            }
            NodeEvent::Writable { .. } => {}
            other => self.events.push_back(other),
        }
        let _ = now;
    }

    /// Moves bytes along every pair and closes pairs that are done.
    fn pump(&mut self, now: Instant) {
        self.now = now;
        if let Some(limit) = self.connect_timeout {
            for p in &mut self.pairs {
                if p.stream.is_none() && now.saturating_duration_since(p.opened) >= limit {
                    p.closed = true;
                }
            }
        }
        loop {
            let mut any = false;
            while let Some(ev) = self.node.poll_event() {
                any = true;
                self.on_node_event(now, ev);
            }
            if !any {
                break;
            }
        }
        // Local clients waiting for the node to be ready, or for a connect slot (the node runs
        // at most `max_connects` at once: the others wait for one to end, they are not cut).
        if self.ready {
            let target = self.target.clone();
            for i in 0..self.pairs.len() {
                let wants = self.pairs.get(i).is_some_and(|p| {
                    p.stream.is_none()
                        && p.connect.is_none()
                        && !p.closed
                        && p.retry_at.is_none_or(|t| t <= now)
                });
                if let (true, Some(t)) = (wants, target.clone()) {
                    match self.node.connect(now, t) {
                        Ok(c) => {
                            self.pairs[i].connect = Some(c);
                            self.pairs[i].retry_at = None;
                        }
                        Err(NodeApiError::TooManyConnects) => break,
                        Err(_) => self.pairs[i].closed = true,
                    }
                }
            }
        }
        for p in &mut self.pairs {
            if p.closed {
                continue;
            }
            // Stream -> local.
            while !p.to_local_wait.is_empty() {
                let taken = p.to_local.push(p.to_local_wait.as_slices().0);
                if taken == 0 {
                    break;
                }
                p.to_local_wait.drain(..taken);
            }
            // Local -> stream.
            if let Some(stream) = p.stream {
                if !p.to_stream.is_empty() {
                    if let Ok(n) = self.node.send(now, stream, &p.to_stream) {
                        p.to_stream.drain(..n);
                    }
                }
                if p.local_eof && p.to_stream.is_empty() && !p.stream_finished {
                    p.stream_finished = true;
                    let _ = self.node.finish(now, stream);
                }
            }
            if p.peer_finished
                && p.local_up
                && !p.local_shut
                && p.to_local_wait.is_empty()
                && p.to_local.is_empty()
                && p.to_local.is_settled()
            {
                p.local_shut = true;
                self.ops.push_back(SocketOp::Shutdown { socket: p.local });
            }
            // Closing the stream drops what the node has not sent yet: only once `Finished`
            // said all of it is out.
            if p.local_shut && p.stream_flushed {
                p.closed = true;
            }
        }
        // Closed pairs release both ends.
        let mut i = 0;
        while i < self.pairs.len() {
            if self.pairs[i].closed {
                let p = self.pairs.remove(i);
                self.ops.push_back(SocketOp::Close { socket: p.local });
                if let Some(stream) = p.stream {
                    let _ = self.node.close_stream(now, stream);
                }
            } else {
                i += 1;
            }
        }
        // The node's own events from the calls above.
        while let Some(ev) = self.node.poll_event() {
            self.on_node_event(now, ev);
        }
    }

    fn local_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        if Some(socket) == self.accepting {
            self.accepting = None;
            if let SocketOutcome::Accepted { remote, .. } = outcome {
                self.new_pair(socket, remote, true);
            }
            self.accept_next();
            return;
        }
        let Some(p) = self.pairs.iter_mut().find(|p| p.local == socket) else {
            return;
        };
        if p.to_local.on_outcome(&outcome) != FlowControl::NotFlowControl {
            return;
        }
        match outcome {
            SocketOutcome::Connected { .. } => p.local_up = true,
            SocketOutcome::PeerClosed => p.local_eof = true,
            SocketOutcome::Failed { .. } => p.closed = true,
            _ => {}
        }
        let _ = now;
    }
}

impl Machine for Forwarder {
    type Event = NodeEvent;

    fn handle_datagram(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        data: &[u8],
    ) -> Verdict {
        let v = match self.map.route(socket) {
            Some((Side::Node, inner)) => self.node.handle_datagram(now, inner, from, data),
            _ => Verdict::NotMine,
        };
        self.pump(now);
        v
    }

    fn handle_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        let v = match self.map.route(socket) {
            Some((Side::Node, inner)) => self.node.handle_stream(now, inner, data),
            Some((Side::Local, inner)) => {
                if let Some(p) = self.pairs.iter_mut().find(|p| p.local == inner) {
                    p.to_stream.extend_from_slice(data);
                    if p.to_stream.len() > MAX_WAITING {
                        p.closed = true;
                    }
                }
                Verdict::Consumed
            }
            None => Verdict::NotMine,
        };
        self.pump(now);
        v
    }

    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        match self.map.route(socket) {
            Some((Side::Node, inner)) => self.node.handle_socket_result(now, inner, outcome),
            Some((Side::Local, inner)) => self.local_result(now, inner, outcome),
            None => {}
        }
        self.pump(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.node.poll_timeout().is_some_and(|t| t <= now) {
            self.node.handle_timeout(now);
        }
        for p in &mut self.pairs {
            p.to_local.settle();
        }
        self.pump(now);
    }

    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(t) = self.map.poll_transmit(Side::Node, &mut self.node, buf) {
            return Some(t);
        }
        for p in &mut self.pairs {
            if !p.local_up || p.closed {
                continue;
            }
            if let Some(len) = p.to_local.poll_transmit(buf) {
                let t = Transmit {
                    socket: p.local,
                    destination: p.local_peer,
                    len,
                };
                return self.map.transmit(Side::Local, t);
            }
        }
        None
    }

    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        if let Some(op) = self.map.poll_socket_op(Side::Node, &mut self.node) {
            return Some(op);
        }
        while let Some(op) = self.ops.pop_front() {
            if let Some(op) = self.map.outbound(Side::Local, op) {
                return Some(op);
            }
        }
        None
    }

    fn poll_event(&mut self) -> Option<NodeEvent> {
        // The node's own events are pulled here too, not only after an input: some appear only
        // when it is polled (`Closed`, once the runtime has taken its last intents), and after
        // those there may be no input left to run the pump.
        if self.events.is_empty() {
            self.pump(self.now);
        }
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let settle = self
            .pairs
            .iter()
            .any(|p| p.to_local.wants_settle())
            .then_some(self.now);
        let retry = self
            .pairs
            .iter()
            .filter(|p| p.connect.is_none() && p.stream.is_none() && !p.closed)
            .filter_map(|p| p.retry_at)
            .min();
        let give_up = self.connect_timeout.and_then(|limit| {
            self.pairs
                .iter()
                .filter(|p| p.stream.is_none() && !p.closed)
                .map(|p| p.opened.saturating_add(limit))
                .min()
        });
        [self.node.poll_timeout(), settle, retry, give_up]
            .into_iter()
            .flatten()
            .min()
    }
}

/// How long to wait before trying again, if the connect failed only because a PNP server said
/// "rate limited" (its detail: milliseconds until its window ends; 50 ms to 2 s).
fn rate_limited(phases: &[PhaseReport]) -> Option<Duration> {
    phases.iter().find_map(|p| match &p.outcome {
        PhaseOutcome::Failed(PhaseFailure::Lookup(PnpFailure::Refused {
            code: ErrorCode::RateLimited,
            detail,
        })) if p.phase == Phase::Resolve => Some(Duration::from_millis((*detail).clamp(50, 2000))),
        _ => None,
    })
}

/// `p2pd node --forward HOST:PORT`.
pub fn serve(
    rt: Runtime,
    node: Node,
    status: Status,
    health: NodeHealth,
    to: SocketAddr,
) -> Result<i32, String> {
    let now = rt.now();
    let mut f = Forwarder::new(node, now);
    f.forward_to = Some(to);
    run(rt, f, status, health)
}

/// `p2pd connect TARGET --forward LISTEN_ADDR`.
pub fn tunnel(
    rt: Runtime,
    node: Node,
    status: Status,
    health: NodeHealth,
    target: Target,
    listen: SocketAddr,
    timeout: Duration,
) -> Result<i32, String> {
    let now = rt.now();
    let mut f = Forwarder::new(node, now);
    f.target = Some(target.clone());
    f.connect_timeout = Some(timeout);
    f.listen(listen);
    status.reason(
        "listening",
        format!("forwarding {listen} to {target}"),
        listen.to_string(),
    );
    run(rt, f, status, health)
}

fn run(
    mut rt: Runtime,
    mut f: Forwarder,
    status: Status,
    mut health: NodeHealth,
) -> Result<i32, String> {
    let began = rt.now();
    let _ = stop_signal::install();
    let target = f.target.as_ref().map(|t| t.to_string()).unwrap_or_default();
    let mut closing = false;
    loop {
        if stop_signal::requested() && !closing {
            closing = true;
            let now = rt.now();
            f.node.close(now);
            f.pump(now);
        }
        let mut closed = false;
        let end = rt
            .run(&mut f, Some(SLICE), |_, now, ev| {
                health.on_event(now.saturating_duration_since(began), &ev);
                match ev {
                    NodeEvent::Ready { name, address, nat } => {
                        status.ready(name.as_ref().map(|n| n.as_str()), &address, nat.as_ref())
                    }
                    NodeEvent::Accepted {
                        peer, path, remote, ..
                    } => status.accepted(&peer, path.as_str(), remote),
                    NodeEvent::Connected {
                        peer,
                        path,
                        elapsed,
                        phases,
                        remote,
                        ..
                    } => status.connected(
                        &target,
                        &peer,
                        path.as_str(),
                        remote,
                        elapsed.as_millis(),
                        phases.iter().map(PhaseLine::of).collect(),
                    ),
                    NodeEvent::ConnectFailed {
                        elapsed, phases, ..
                    } => status.failed(
                        &target,
                        elapsed.as_millis(),
                        phases.iter().map(PhaseLine::of).collect(),
                    ),
                    NodeEvent::StreamFailed { reason, .. } => status.reason(
                        "stream_failed",
                        format!("a secure stream failed: {reason}"),
                        reason.to_string(),
                    ),
                    NodeEvent::Closed => closed = true,
                    _ => {}
                }
                ControlFlow::Continue(())
            })
            .map_err(|e| format!("event loop: {e}"))?;
        // Idle: no socket and no deadline left (a node that lost everything); do not spin.
        if end == RunEnd::Idle && !closed {
            std::thread::sleep(SLICE);
        }
        if closed {
            return Ok(0);
        }
    }
}

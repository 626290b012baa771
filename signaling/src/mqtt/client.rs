//! The sans-IO MQTT client machine: one broker, one TCP stream at a time, reconnecting forever.
//!
//! [`MqttClient`] follows the workspace's machine contract (see `p2pd_proto::machine`): it asks
//! for a TCP socket with [`SocketOp::Bind`] then [`SocketOp::Connect`], speaks MQTT 3.1.1 or 5
//! over the bytes given to [`handle_stream`](p2pd_proto::Machine::handle_stream), hands its output out in
//! chunks through [`poll_transmit`](p2pd_proto::Machine::poll_transmit), and reports what happened as
//! [`MqttEvent`]s. It never reads a clock; its randomness (client id, back-off jitter) comes from
//! the seed given to [`MqttClient::new`].
//!
//! What it does:
//! - CONNECT with a random client id (`p2pd-` + 16 alphanumerics, never derived from a node id),
//!   always a clean session; MQTT 5 can fall back to 3.1.1 when the broker refuses the version.
//!   In MQTT 5 the CONNECT carries our Maximum Packet Size, and the CONNACK's Maximum Packet
//!   Size, Receive Maximum and Server Keep Alive are obeyed;
//! - SUBSCRIBE (QoS 0 or 1), renewed after every reconnect; unless retained messages are wanted
//!   ([`MqttConfig::accept_retained`]), MQTT 5 brokers are asked not to send them and any that
//!   arrive anyway are acknowledged and dropped;
//! - an incoming PUBLISH larger than [`MqttConfig::max_packet_size`] is skipped as it streams
//!   past (never buffered) and reported ([`MqttEvent::PublishSkipped`]); the connection stays;
//! - PUBLISH QoS 0 (only while connected) and QoS 1 (packet ids, PUBACK matching, a bounded
//!   in-flight store, queued while disconnected, resent with DUP after a reconnect);
//! - PUBACK for incoming QoS 1 messages;
//! - keep-alive: PINGREQ after `keep_alive` without sending or without receiving; a PINGREQ
//!   without PINGRESP within `ping_timeout` ends the connection;
//! - a connect timeout covering bind, TCP connect and CONNACK;
//! - reconnect with exponential back-off and jitter, on every failure: broker close, socket
//!   error, timeout, refusal, undecodable packet, protocol violation. Only a connection that
//!   lasted [`MqttConfig::healthy_after`] resets the back-off, so a connection that dies right
//!   after its CONNACK cannot make the client reconnect in a tight loop.
//!
//! Every connection attempt uses a fresh [`SocketId`] (see [`MqttConfig::socket_ids`]) and closes
//! it exactly once; input for an earlier socket is ignored and counted. All buffers are bounded:
//! the decoder by `max_packet_size`, the outbound queue by `max_queued_bytes`, the in-flight store
//! by `max_inflight`, subscriptions by `max_subscriptions`, events by `max_pending_events`.
//!
//! ```
//! use p2pd_proto::{Instant, Machine, SocketOp, SocketOutcome};
//! use p2pd_signaling::mqtt::client::{MqttClient, MqttConfig};
//!
//! let broker = "192.0.2.1:1883".parse().unwrap();
//! let mut client = MqttClient::new(MqttConfig::new(broker), 7, Instant::ZERO);
//! let Some(SocketOp::Bind { socket, .. }) = client.poll_socket_op() else { panic!() };
//! client.handle_socket_result(Instant::ZERO, socket, SocketOutcome::Bound {
//!     local: "10.0.0.2:40000".parse().unwrap(),
//! });
//! assert!(matches!(client.poll_socket_op(), Some(SocketOp::Connect { .. })));
//! ```

use std::collections::VecDeque;

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::time::Duration;

use p2pd_proto::send_buffer::{FlowControl, SendBuffer};
use p2pd_proto::{
    BindOptions, DropReason, Instant, Rng, SocketId, SocketOp, SocketOutcome, Transmit, Transport,
    Verdict,
};

use super::codec::{encode, CodecError, Decoder, Packet, Protocol, QoS};

mod inbound;
mod outbound;
mod sizes;
mod types;

pub use types::{
    DisconnectReason, MqttConfig, MqttEvent, MqttStats, PublishError, PublishId, SubscribeError,
};

use sizes::{publish_size, subscribe_size, valid_filter, valid_topic_name};

/// Length of the random part of the client id.
const CLIENT_ID_RANDOM_LEN: usize = 16;
/// Characters of the random part of the client id (MQTT 3.1.1 servers must accept these).
const CLIENT_ID_ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
/// MQTT 5 CONNACK reason "Unsupported Protocol Version".
const V5_UNSUPPORTED_PROTOCOL: u8 = 0x84;
/// MQTT 3.1.1 CONNACK return code "unacceptable protocol version".
const V311_UNACCEPTABLE_PROTOCOL: u8 = 1;

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No socket; the next attempt starts at `retry_at`.
    Waiting { retry_at: Instant },
    /// Bind intent sent.
    Binding { socket: SocketId, deadline: Instant },
    /// Connect intent sent.
    Connecting { socket: SocketId, deadline: Instant },
    /// TCP connected, CONNECT queued, waiting for CONNACK.
    Handshaking { socket: SocketId, deadline: Instant },
    /// CONNACK accepted.
    Connected { socket: SocketId },
    /// `close` was called.
    Closed,
}

impl State {
    fn socket(self) -> Option<SocketId> {
        match self {
            State::Binding { socket, .. }
            | State::Connecting { socket, .. }
            | State::Handshaking { socket, .. }
            | State::Connected { socket } => Some(socket),
            State::Waiting { .. } | State::Closed => None,
        }
    }
}

/// Where a subscription is on the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubState {
    /// To be sent once connected (and when the queue has room).
    Unsent,
    /// SUBSCRIBE sent with this packet id.
    AwaitingAck(u16),
    /// SUBACK granted it.
    Granted,
}

#[derive(Debug, Clone)]
struct Subscription {
    filter: String,
    qos: QoS,
    state: SubState,
}

/// A QoS 1 message held until its PUBACK.
#[derive(Debug, Clone)]
struct Outgoing {
    id: PublishId,
    pkid: u16,
    topic: String,
    payload: Vec<u8>,
    /// Queued on the current connection, waiting for PUBACK.
    sent: bool,
    /// Sent on some connection before (the next send carries DUP).
    sent_before: bool,
}

/// Why a packet could not be queued.
#[derive(Debug)]
enum QueueError {
    Full,
    Encode,
}

/// Whether packet processing goes on after a packet.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// The sans-IO MQTT client. See the [module docs](self).
#[derive(Debug)]
pub struct MqttClient {
    config: MqttConfig,
    protocol: Protocol,
    client_id: String,
    rng: Rng,
    state: State,
    /// The latest `now` seen.
    now: Instant,
    decoder: Decoder,
    /// The first bytes of the current connection (to recognise a 3.1.1 CONNACK to a v5 CONNECT).
    first_bytes: [u8; 4],
    first_bytes_len: usize,
    /// Bytes waiting to be taken by the runtime for `outbound_socket`: the connection's one send
    /// buffer, under the runtime's flow control (a refused transmit stays here and goes out
    /// again after `Writable`; see [`SendBuffer`]).
    outbound: SendBuffer,
    /// When `outbound` was last settled, if no other input came since: a settle point at the same
    /// instant comes once (the client may refill the buffer from its backlog after a settle; the
    /// next settle then waits for the next instant, so the contract's "no third timeout at one
    /// instant" holds).
    settled_at: Option<Instant>,
    outbound_socket: Option<SocketId>,
    last_sent: Instant,
    last_received: Instant,
    ping_sent: Option<Instant>,
    subscriptions: Vec<Subscription>,
    inflight: VecDeque<Outgoing>,
    last_pkid: u16,
    next_publish_id: u64,
    /// Consecutive attempts or connections that ended before they were healthy.
    failures: u32,
    /// When the current connection's CONNACK arrived.
    connected_at: Option<Instant>,
    /// The broker's Maximum Packet Size on the current connection (MQTT 5 CONNACK).
    broker_max_packet_size: Option<usize>,
    /// The broker's Receive Maximum on the current connection: QoS 1 PUBLISHes sent and not yet
    /// acknowledged are at most this many.
    receive_maximum: usize,
    /// The keep-alive on the current connection (the broker's Server Keep Alive, else ours).
    keep_alive: Duration,
    /// Attempts started (selects the next socket id).
    attempt: u32,
    ops: VecDeque<SocketOp>,
    events: VecDeque<MqttEvent>,
    deadline: Option<Instant>,
    stats: MqttStats,
}

impl p2pd_proto::Machine for MqttClient {
    type Event = MqttEvent;

    /// Bytes arrived on the broker stream (in chunks of any size).
    fn handle_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        if self.is_closed() {
            self.count_dropped();
            return Verdict::Dropped(DropReason::Closed);
        }
        let current = match self.state {
            State::Handshaking { socket, .. } | State::Connected { socket } => Some(socket),
            _ => None,
        };
        if current != Some(socket) {
            self.count_dropped();
            return Verdict::Dropped(DropReason::UnknownSocket);
        }
        self.input_at(now);
        self.last_received = now;
        self.record_first_bytes(data);
        self.consume(now, socket, data);
        self.refresh_deadline();
        Verdict::Consumed
    }

    /// The outcome of a socket intent, or an asynchronous error on the stream.
    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        if self.is_closed() || self.state.socket() != Some(socket) {
            self.count_dropped();
            return;
        }
        self.input_at(now);
        if self.outbound_socket == Some(socket)
            && self.outbound.on_outcome(&outcome) != FlowControl::NotFlowControl
        {
            // Flow control, not a failure: refused bytes go out again after `Writable`.
            self.refresh_deadline();
            return;
        }
        match (self.state, outcome) {
            (State::Binding { socket, deadline }, SocketOutcome::Bound { .. }) => {
                self.ops.push_back(SocketOp::Connect {
                    socket,
                    remote: self.config.broker,
                });
                self.state = State::Connecting { socket, deadline };
            }
            (State::Connecting { socket, deadline }, SocketOutcome::Connected { .. }) => {
                self.state = State::Handshaking { socket, deadline };
                self.outbound_socket = Some(socket);
                let connect = Packet::Connect {
                    client_id: self.client_id.clone(),
                    keep_alive: keep_alive_secs(self.config.keep_alive),
                    clean_session: true,
                    protocol: self.protocol,
                    max_packet_size: match self.protocol {
                        Protocol::V311 => None,
                        Protocol::V5 => {
                            Some(u32::try_from(self.config.max_packet_size).unwrap_or(u32::MAX))
                        }
                    },
                };
                if self.queue_packet(now, &connect).is_err() {
                    self.disconnect(now, DisconnectReason::QueueOverflow, false);
                }
            }
            (_, SocketOutcome::PeerClosed) => {
                self.disconnect(now, DisconnectReason::PeerClosed, false);
            }
            (_, SocketOutcome::Failed { op, error, .. }) => {
                self.disconnect(now, DisconnectReason::Io { op, error }, false);
            }
            _ => self.count_dropped(),
        }
        self.refresh_deadline();
    }

    /// Starts the next attempt, ends an attempt that took too long, or runs the keep-alive.
    fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        // The settle point of the transmits of the last drain; their room takes what waits.
        if !self.outbound.is_settled() {
            self.outbound.settle();
            self.settled_at = Some(now);
            self.pump(now);
        }
        match self.state {
            State::Waiting { retry_at } if now >= retry_at => self.start_attempt(now),
            State::Binding { deadline, .. }
            | State::Connecting { deadline, .. }
            | State::Handshaking { deadline, .. }
                if now >= deadline =>
            {
                self.disconnect(now, DisconnectReason::ConnectTimeout, false);
            }
            State::Connected { .. } => match self.ping_sent {
                Some(sent) if now >= sent.saturating_add(self.config.ping_timeout) => {
                    self.disconnect(now, DisconnectReason::KeepAliveTimeout, false);
                }
                Some(_) => {}
                None => {
                    if self.ping_due().is_some_and(|due| now >= due) {
                        // A full queue cannot take the PINGREQ; the connection is then treated
                        // as if the ping went unanswered.
                        let _ = self.queue_packet(now, &Packet::PingReq);
                        self.ping_sent = Some(now);
                    }
                }
            },
            _ => {}
        }
        self.refresh_deadline();
    }

    /// Writes the next chunk of the outbound stream (at most `buf.len()` bytes) into `buf`.
    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let socket = self.outbound_socket?;
        let len = self.outbound.poll_transmit(buf)?;
        // Settle at once (a timeout now): taken bytes leave the buffer, making room for what
        // waits (see `handle_timeout`).
        self.refresh_deadline();
        Some(Transmit {
            socket,
            destination: self.config.broker,
            len,
        })
    }

    /// The next socket intent.
    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        let op = self.ops.pop_front()?;
        if let SocketOp::Close { socket } = op {
            if self.outbound_socket == Some(socket) {
                // Transmits go before intents: whatever could not go out before the close
                // (refused, or a short tail of an unsettled batch) never will.
                self.outbound.clear();
                self.outbound_socket = None;
                self.refresh_deadline();
            }
        }
        Some(op)
    }

    /// The next event.
    fn poll_event(&mut self) -> Option<MqttEvent> {
        self.events.pop_front()
    }

    /// The next deadline (cached; `None` once closed).
    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
}

impl MqttClient {
    /// A client for `config` whose randomness comes from `seed`. It starts connecting at once: the
    /// first [`poll_socket_op`](p2pd_proto::Machine::poll_socket_op) returns the Bind intent.
    pub fn new(config: MqttConfig, seed: u64, now: Instant) -> Self {
        let config = config.normalized();
        let max_queued_bytes = config.max_queued_bytes;
        let config_keep_alive = config.keep_alive;
        let mut rng = Rng::from_seed(seed);
        let client_id = random_client_id(&mut rng);
        let mut client = Self {
            protocol: config.protocol,
            decoder: Decoder::new(config.protocol, config.max_packet_size),
            config,
            client_id,
            rng,
            state: State::Waiting { retry_at: now },
            now,
            first_bytes: [0; 4],
            first_bytes_len: 0,
            outbound: SendBuffer::new(max_queued_bytes),
            settled_at: None,
            outbound_socket: None,
            last_sent: now,
            last_received: now,
            ping_sent: None,
            subscriptions: Vec::new(),
            inflight: VecDeque::new(),
            last_pkid: 0,
            next_publish_id: 0,
            failures: 0,
            connected_at: None,
            broker_max_packet_size: None,
            receive_maximum: usize::from(u16::MAX),
            keep_alive: config_keep_alive,
            attempt: 0,
            ops: VecDeque::new(),
            events: VecDeque::new(),
            deadline: None,
            stats: MqttStats::default(),
        };
        client.start_attempt(now);
        client.refresh_deadline();
        client
    }

    /// The client id sent in CONNECT (the same on every reconnect).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The protocol in use (MQTT 3.1.1 after a fallback).
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Whether the broker accepted the current connection.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected { .. })
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The counters.
    pub fn stats(&self) -> MqttStats {
        self.stats
    }

    /// QoS 1 messages held until their PUBACK.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Bytes waiting in the outbound queue.
    pub fn queued_bytes(&self) -> usize {
        self.outbound.len()
    }

    /// Subscribes to `filter` now if connected, else on connect, and again after every reconnect.
    /// Subscribing to a filter again replaces its QoS. The answer is a
    /// [`MqttEvent::Subscribed`] or [`MqttEvent::SubscribeFailed`].
    pub fn subscribe(
        &mut self,
        now: Instant,
        filter: &str,
        qos: QoS,
    ) -> Result<(), SubscribeError> {
        if self.is_closed() {
            return Err(SubscribeError::Closed);
        }
        if qos == QoS::ExactlyOnce {
            return Err(SubscribeError::UnsupportedQoS);
        }
        let fits = subscribe_size(self.protocol, filter.len())
            .is_some_and(|size| size <= self.config.max_packet_size);
        if !valid_filter(filter) || !fits {
            return Err(SubscribeError::InvalidFilter);
        }
        self.input_at(now);
        if let Some(sub) = self.subscriptions.iter_mut().find(|s| s.filter == filter) {
            sub.qos = qos;
            sub.state = SubState::Unsent;
        } else {
            if self.subscriptions.len() >= self.config.max_subscriptions {
                return Err(SubscribeError::TooManySubscriptions);
            }
            self.subscriptions.push(Subscription {
                filter: filter.to_owned(),
                qos,
                state: SubState::Unsent,
            });
        }
        self.pump(now);
        self.refresh_deadline();
        Ok(())
    }

    /// Publishes `payload` on `topic`.
    ///
    /// QoS 0 is sent only while connected and when the outbound queue has room. QoS 1 is held in
    /// the in-flight store until its PUBACK ([`MqttEvent::Delivered`] with the returned id): sent
    /// now if connected, else on connect, and again with DUP after a reconnect.
    pub fn publish(
        &mut self,
        now: Instant,
        topic: &str,
        payload: &[u8],
        qos: QoS,
    ) -> Result<PublishId, PublishError> {
        if self.is_closed() {
            return Err(PublishError::Closed);
        }
        if qos == QoS::ExactlyOnce {
            return Err(PublishError::UnsupportedQoS);
        }
        if !valid_topic_name(topic) {
            return Err(PublishError::InvalidTopic);
        }
        let max = self.max_outgoing_packet();
        let size =
            publish_size(self.protocol, topic.len(), qos, payload.len()).unwrap_or(usize::MAX);
        if size > max {
            return Err(PublishError::TooLarge { size, max });
        }
        self.input_at(now);
        let id = PublishId(self.next_publish_id);
        if qos == QoS::AtMostOnce {
            if !self.is_connected() {
                return Err(PublishError::NotConnected);
            }
            let packet = Packet::Publish {
                topic: topic.to_owned(),
                qos,
                pkid: 0,
                retain: false,
                dup: false,
                payload: payload.to_vec(),
            };
            self.queue_packet(now, &packet)
                .map_err(|_| PublishError::QueueFull)?;
        } else {
            if self.inflight.len() >= self.config.max_inflight {
                return Err(PublishError::QueueFull);
            }
            let pkid = self.allocate_pkid();
            self.inflight.push_back(Outgoing {
                id,
                pkid,
                topic: topic.to_owned(),
                payload: payload.to_vec(),
                sent: false,
                sent_before: false,
            });
            self.pump(now);
        }
        self.next_publish_id = self.next_publish_id.saturating_add(1);
        self.refresh_deadline();
        Ok(id)
    }

    /// Closes the client: a DISCONNECT if connected (best effort, ahead of the close intent), the
    /// Close intent for the current socket, then [`MqttEvent::Closed`]. Idempotent.
    pub fn close(&mut self, now: Instant) {
        if self.is_closed() {
            return;
        }
        self.input_at(now);
        if self.is_connected() {
            // Best effort: a full queue just means no DISCONNECT.
            let _ = self.queue_packet(now, &Packet::Disconnect);
        } else {
            // A CONNECT nobody will answer is not worth sending.
            self.outbound.clear();
        }
        if let Some(socket) = self.state.socket() {
            self.ops.push_back(SocketOp::Close { socket });
        }
        self.state = State::Closed;
        self.subscriptions.clear();
        self.inflight.clear();
        self.decoder = Decoder::new(self.protocol, self.config.max_packet_size);
        self.events.push_back(MqttEvent::Closed);
        self.deadline = None;
    }

    /// The largest packet we may send: ours, or the broker's if it said less.
    fn max_outgoing_packet(&self) -> usize {
        self.broker_max_packet_size
            .map_or(self.config.max_packet_size, |broker| {
                broker.min(self.config.max_packet_size)
            })
    }

    fn start_attempt(&mut self, now: Instant) {
        let offset = self
            .attempt
            .checked_rem(self.config.socket_ids)
            .unwrap_or(0);
        let socket = SocketId(self.config.socket_base.0.wrapping_add(offset));
        self.attempt = self.attempt.wrapping_add(1);
        let ip = if self.config.broker.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        };
        self.ops.push_back(SocketOp::Bind {
            socket,
            transport: Transport::Tcp,
            local: SocketAddr::new(ip, 0),
            options: BindOptions::default(),
        });
        self.state = State::Binding {
            socket,
            deadline: now.saturating_add(self.config.connect_timeout),
        };
        self.stats.attempts = self.stats.attempts.saturating_add(1);
    }

    /// Ends the current attempt or connection: closes its socket, forgets the stream state, marks
    /// subscriptions and QoS 1 messages for sending on the next connection, reports
    /// [`MqttEvent::Disconnected`] and schedules the next attempt (at once if `retry_now`).
    fn disconnect(&mut self, now: Instant, reason: DisconnectReason, retry_now: bool) {
        if let Some(socket) = self.state.socket() {
            self.ops.push_back(SocketOp::Close { socket });
        }
        self.outbound.clear();
        self.outbound_socket = None;
        self.decoder = Decoder::new(self.protocol, self.config.max_packet_size);
        self.first_bytes_len = 0;
        self.ping_sent = None;
        for sub in &mut self.subscriptions {
            sub.state = SubState::Unsent;
        }
        for message in &mut self.inflight {
            message.sent = false;
        }
        let healthy = self
            .connected_at
            .take()
            .is_some_and(|since| now.saturating_duration_since(since) >= self.config.healthy_after);
        if healthy {
            self.failures = 0;
        }
        self.broker_max_packet_size = None;
        self.receive_maximum = usize::from(u16::MAX);
        self.keep_alive = self.config.keep_alive;
        let retry_in = if retry_now {
            Duration::ZERO
        } else {
            self.failures = self.failures.saturating_add(1);
            self.backoff_delay()
        };
        self.state = State::Waiting {
            retry_at: now.saturating_add(retry_in),
        };
        self.stats.disconnects = self.stats.disconnects.saturating_add(1);
        if matches!(
            reason,
            DisconnectReason::Codec(_) | DisconnectReason::ProtocolViolation(_)
        ) {
            self.stats.protocol_errors = self.stats.protocol_errors.saturating_add(1);
        }
        self.push_event(MqttEvent::Disconnected { reason, retry_in });
    }

    /// `backoff_initial * 2^(failures - 1)`, capped at `backoff_max`, then drawn uniformly from
    /// its upper half.
    fn backoff_delay(&mut self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(31);
        let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
        let base = self
            .config
            .backoff_initial
            .saturating_mul(factor)
            .min(self.config.backoff_max);
        let base_nanos = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
        let half = base_nanos.checked_div(2).unwrap_or(0);
        let spread = base_nanos.saturating_sub(half);
        let jitter = self.rng.below(spread.saturating_add(1));
        Duration::from_nanos(half.saturating_add(jitter))
    }

    /// When the next PINGREQ is due (keep-alive enabled, connected, no ping outstanding).
    fn ping_due(&self) -> Option<Instant> {
        if self.keep_alive.is_zero() {
            return None;
        }
        let quiet_since = self.last_sent.min(self.last_received);
        Some(quiet_since.saturating_add(self.keep_alive))
    }

    fn push_event(&mut self, event: MqttEvent) {
        if self.events.len() >= self.config.max_pending_events {
            self.stats.events_dropped = self.stats.events_dropped.saturating_add(1);
        } else {
            self.events.push_back(event);
        }
    }

    /// An input other than a timeout at `now`: after it, one settle point may again come at the
    /// same instant (as the contract counts timeouts).
    fn input_at(&mut self, now: Instant) {
        self.now = now;
        self.settled_at = None;
    }

    fn count_dropped(&mut self) {
        self.stats.dropped = self.stats.dropped.saturating_add(1);
    }

    fn refresh_deadline(&mut self) {
        let deadline = match self.state {
            State::Waiting { retry_at } => Some(retry_at),
            State::Binding { deadline, .. }
            | State::Connecting { deadline, .. }
            | State::Handshaking { deadline, .. } => Some(deadline),
            State::Connected { .. } => match self.ping_sent {
                Some(sent) => Some(sent.saturating_add(self.config.ping_timeout)),
                None => self.ping_due(),
            },
            State::Closed => None,
        };
        // Transmits since the last settle point settle at once (a blocked stream waits for
        // `Writable`).
        self.deadline = if self.outbound.wants_settle() && self.outbound_socket.is_some() {
            let settle = if self.settled_at == Some(self.now) {
                self.now.saturating_add(Duration::from_nanos(1))
            } else {
                self.now
            };
            Some(deadline.map_or(settle, |d| d.min(settle)))
        } else {
            deadline
        };
    }
}

/// `p2pd-` and 16 random alphanumerics.
fn random_client_id(rng: &mut Rng) -> String {
    let mut id = String::from("p2pd-");
    let alphabet_len = u64::try_from(CLIENT_ID_ALPHABET.len()).unwrap_or(1);
    for _ in 0..CLIENT_ID_RANDOM_LEN {
        let index = usize::try_from(rng.below(alphabet_len)).unwrap_or(0);
        id.push(char::from(
            CLIENT_ID_ALPHABET.get(index).copied().unwrap_or(b'x'),
        ));
    }
    id
}

/// The keep-alive in whole seconds, rounded up, at most 65535 (0 disables it).
fn keep_alive_secs(keep_alive: Duration) -> u16 {
    let secs = keep_alive
        .as_secs()
        .saturating_add(u64::from(keep_alive.subsec_nanos() > 0));
    u16::try_from(secs).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests;

//! [`MqttBroker`]: a minimal MQTT 3.1.1 + 5 broker as a sans-IO machine, for the simulator
//! ([`crate::Sim::add_mqtt_broker`]) and any runtime.
//!
//! It binds a TCP listener, keeps one `Accept` outstanding per free connection slot
//! ([`BrokerConfig::max_connections`]) and speaks MQTT through `p2pd_signaling::mqtt::codec`:
//!
//! - the first packet must be CONNECT; its protocol level picks the connection's protocol (4: 3.1.1,
//!   5: MQTT 5; anything else gets CONNACK "unacceptable protocol version" and is closed). A second
//!   CONNECT, a packet before CONNECT, a packet only a broker sends, QoS 2, a malformed or oversized
//!   packet ([`BrokerConfig::max_packet_size`]) closes the connection. A client id already connected
//!   takes over: the older connection is closed. An empty client id gets a generated one.
//! - SUBSCRIBE: filters with `+` and `#` wildcards (topics starting with `$` are not matched by a
//!   leading wildcard); QoS 2 is granted as 1; beyond [`BrokerConfig::max_subscriptions`] per client
//!   or for an invalid filter the filter fails (0x80). No UNSUBSCRIBE.
//! - Retained messages: a PUBLISH with the retain flag replaces the topic's retained message (an
//!   empty payload deletes it; at most [`BrokerConfig::max_retained`] topics, beyond which a new
//!   topic's message is not kept). A SUBSCRIBE gets the matching retained messages, with the
//!   retain flag set, unless its MQTT 5 Retain Handling says not to (2, or 1 for a filter the
//!   client already had).
//! - MQTT 5 Maximum Packet Size: a packet larger than the client said it accepts is not sent
//!   (a PUBLISH is dropped as if delivered, counted in [`BrokerStats::dropped_oversize`]), unless
//!   [`BrokerConfig::honour_max_packet_size`] is off, which models a broker that ignores it.
//! - PUBLISH QoS 0/1: QoS 1 is acknowledged with PUBACK; the message goes to every subscribed
//!   connection (the publisher included if it subscribed) at min(granted, published) QoS, with a
//!   fresh packet id per receiver. Unacknowledged QoS 1 deliveries are kept (at most
//!   [`BrokerConfig::max_inflight`] per client; beyond, the delivery is dropped and counted).
//! - Sessions: a client that connects with clean session off keeps its subscriptions and
//!   unacknowledged QoS 1 deliveries when its connection ends (at most
//!   [`BrokerConfig::max_sessions`]); on its next such CONNECT, CONNACK says `session_present` and
//!   the kept deliveries are sent again once, with DUP set. A clean CONNECT drops the session.
//! - PINGREQ -> PINGRESP; DISCONNECT closes the connection. A client silent for 1.5 x its
//!   keep-alive is closed; a connection that sends no CONNECT within
//!   [`BrokerConfig::connect_timeout`] is closed.
//! - Bounds: connections, packet size, unsent bytes per connection
//!   ([`BrokerConfig::max_unsent`]: a client that does not read is closed), subscriptions, in-flight
//!   messages, sessions, queued events ([`MAX_EVENTS`]).
//!
//! [`MqttBroker::close`] closes every connection and the listener, each exactly once.

use core::net::{Ipv4Addr, SocketAddr};
use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};

use p2pd_proto::{
    BindOptions, Instant, IoError, SocketId, SocketOp, SocketOutcome, Transmit, Transport, Verdict,
};
use p2pd_signaling::mqtt::codec::{
    encode, ConnAckProperties, Decoded, Decoder, Packet, Protocol, QoS, RetainHandling,
    SubscribeFilter,
};

mod retained;
mod wire;

pub use wire::topic_matches;
use wire::{connect_level, valid_filter, Level};

/// Most events queued; beyond, the oldest are dropped.
pub const MAX_EVENTS: usize = 1024;

/// How an [`MqttBroker`] runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerConfig {
    /// The local address it listens on (port 1883 by default, all IPs).
    pub listen: SocketAddr,
    /// The listen backlog.
    pub backlog: u32,
    /// Most connections at once (one outstanding accept per free slot).
    pub max_connections: usize,
    /// Largest packet accepted, fixed header included.
    pub max_packet_size: usize,
    /// Most bytes queued for one connection that the network has not taken yet.
    pub max_unsent: usize,
    /// Most subscriptions per client.
    pub max_subscriptions: usize,
    /// Most unacknowledged QoS 1 deliveries per client.
    pub max_inflight: usize,
    /// Most sessions kept for disconnected clients.
    pub max_sessions: usize,
    /// How long a connection may wait before sending CONNECT.
    pub connect_timeout: Duration,
    /// Most topics with a retained message.
    pub max_retained: usize,
    /// Whether a client's MQTT 5 Maximum Packet Size is obeyed. `false` models a broker that
    /// sends oversized packets anyway (as every 3.1.1 broker does: its clients cannot say).
    pub honour_max_packet_size: bool,
}

impl BrokerConfig {
    /// The defaults, listening on `port` of every IP.
    pub fn new(port: u16) -> Self {
        BrokerConfig {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            ..BrokerConfig::default()
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 1883)),
            backlog: 64,
            max_connections: 64,
            max_packet_size: 64 * 1024,
            max_unsent: 256 * 1024,
            max_subscriptions: 32,
            max_inflight: 64,
            max_sessions: 256,
            connect_timeout: Duration::from_secs(10),
            max_retained: 1024,
            honour_max_packet_size: true,
        }
    }
}

/// Why the broker closed a connection (or saw it end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent DISCONNECT.
    Disconnect,
    /// The client closed the stream.
    PeerClosed,
    /// The stream failed (reset, timed out).
    Failed(IoError),
    /// A malformed, oversized or unsupported packet.
    Malformed,
    /// A packet not allowed here (before CONNECT, a second CONNECT, a broker-only packet, QoS 2,
    /// wildcards in a PUBLISH topic).
    ProtocolViolation,
    /// An unsupported protocol level in CONNECT.
    UnsupportedProtocol,
    /// Silent for 1.5 x its keep-alive, or no CONNECT in time.
    KeepAlive,
    /// Another connection took over its client id.
    TakenOver,
    /// The client did not read fast enough ([`BrokerConfig::max_unsent`]).
    SlowConsumer,
    /// The broker closed ([`MqttBroker::close`]).
    Shutdown,
}

/// What an [`MqttBroker`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerEvent {
    /// The listener is bound and listening.
    Listening {
        /// Its address.
        local: SocketAddr,
    },
    /// The listener could not be bound or could not listen; the broker does nothing more.
    ListenFailed {
        /// Why.
        error: IoError,
    },
    /// A client completed CONNECT.
    ClientConnected {
        /// The connection.
        socket: SocketId,
        /// Its client id.
        client_id: String,
        /// Its protocol.
        protocol: Protocol,
        /// Its remote address.
        remote: SocketAddr,
    },
    /// A connection ended.
    ClientClosed {
        /// The connection.
        socket: SocketId,
        /// Its client id, if it had connected.
        client_id: Option<String>,
        /// Why.
        reason: CloseReason,
    },
}

/// An [`MqttBroker`]'s counters.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// TCP connections accepted.
    pub accepted: u64,
    /// CONNECTs answered with success.
    pub connects: u64,
    /// Connections closed (for any reason).
    pub closed: u64,
    /// PUBLISH packets received.
    pub publishes_in: u64,
    /// PUBLISH packets sent to subscribers (resends included).
    pub publishes_out: u64,
    /// QoS 1 deliveries sent again on a session's resumption.
    pub resent: u64,
    /// PUBACKs received for our deliveries.
    pub pubacks_in: u64,
    /// SUBSCRIBE packets handled.
    pub subscribes: u64,
    /// PINGREQs answered.
    pub pings: u64,
    /// Connections closed for a malformed packet.
    pub malformed: u64,
    /// Connections closed for a protocol violation.
    pub violations: u64,
    /// Connections closed by the keep-alive or connect timeout.
    pub keepalive_timeouts: u64,
    /// Deliveries dropped because a client's in-flight table was full.
    pub dropped_inflight_full: u64,
    /// Connections closed because they did not read.
    pub slow_consumers: u64,
    /// Retained messages sent to subscribers (counted before the Maximum Packet Size check).
    pub retained_sent: u64,
    /// Retained messages not kept because the table was full.
    pub retained_refused: u64,
    /// Packets not sent because they exceed the client's Maximum Packet Size.
    pub dropped_oversize: u64,
}

const LISTENER: SocketId = SocketId(0);

/// A kept QoS 1 delivery.
#[derive(Clone, Debug)]
struct Inflight {
    topic: String,
    payload: Vec<u8>,
}

/// A client's state that can outlive its connection.
#[derive(Clone, Debug, Default)]
struct Session {
    subscriptions: BTreeMap<String, QoS>,
    inflight: BTreeMap<u16, Inflight>,
    next_pkid: u16,
}

impl Session {
    /// The packet id of a delivery at `qos`: 0 for QoS 0; for QoS 1 a free id, with the message
    /// held in flight until its PUBACK. `None`: not delivered, because the window of
    /// `max_inflight` is full (counted in `stats`) or no id is free.
    fn hold(
        &mut self,
        qos: QoS,
        topic: &str,
        payload: &[u8],
        max_inflight: usize,
        stats: &mut BrokerStats,
    ) -> Option<u16> {
        if qos != QoS::AtLeastOnce {
            return Some(0);
        }
        if self.inflight.len() >= max_inflight {
            stats.dropped_inflight_full += 1;
            return None;
        }
        let id = self.pkid()?;
        self.inflight.insert(
            id,
            Inflight {
                topic: topic.to_string(),
                payload: payload.to_vec(),
            },
        );
        Some(id)
    }

    fn pkid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            if !self.inflight.contains_key(&self.next_pkid) {
                return Some(self.next_pkid);
            }
        }
        None
    }
}

#[derive(Debug)]
struct Conn {
    remote: SocketAddr,
    /// Bytes before the protocol is known.
    pre: Vec<u8>,
    decoder: Option<Decoder>,
    protocol: Protocol,
    client_id: Option<String>,
    keep_session: bool,
    session: Session,
    /// Closed after this without a packet.
    deadline: Instant,
    /// 1.5 x keep-alive (`None`: disabled).
    grace: Option<Duration>,
    /// Bytes queued and not yet taken by `poll_transmit`.
    unsent: usize,
    /// The client's MQTT 5 Maximum Packet Size.
    max_packet_size: Option<usize>,
}

/// The broker machine. See the module docs.
#[derive(Debug)]
pub struct MqttBroker {
    config: BrokerConfig,
    conns: BTreeMap<SocketId, Conn>,
    /// Accept ids outstanding.
    accepting: usize,
    next_id: u32,
    sessions: BTreeMap<String, Session>,
    /// Topic -> (QoS, payload) of its retained message.
    retained: BTreeMap<String, (QoS, Vec<u8>)>,
    next_auto_id: u64,
    ops: VecDeque<SocketOp>,
    out: crate::out_queue::OutQueue,
    events: VecDeque<BrokerEvent>,
    stats: BrokerStats,
    timeout: Option<Instant>,
    listening: bool,
    closed: bool,
}

impl MqttBroker {
    /// A broker that binds and listens as soon as it is drained.
    pub fn new(config: BrokerConfig) -> Self {
        let mut ops = VecDeque::new();
        ops.push_back(SocketOp::Bind {
            socket: LISTENER,
            transport: Transport::Tcp,
            local: config.listen,
            options: BindOptions {
                reuse_address: true,
                ..BindOptions::default()
            },
        });
        MqttBroker {
            config,
            conns: BTreeMap::new(),
            accepting: 0,
            next_id: 1,
            sessions: BTreeMap::new(),
            retained: BTreeMap::new(),
            next_auto_id: 0,
            ops,
            out: crate::out_queue::OutQueue::default(),
            events: VecDeque::new(),
            stats: BrokerStats::default(),
            timeout: None,
            listening: false,
            closed: false,
        }
    }

    /// The counters.
    pub fn stats(&self) -> BrokerStats {
        self.stats
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The connections a PUBLISH to `topic` would be delivered to now (connected, with a matching
    /// subscription), by socket id in socket order. A socket id is not reused while the broker
    /// runs, so a test can tell later whether that very connection is still there.
    pub fn subscribers(&self, topic: &str) -> Vec<SocketId> {
        self.conns
            .iter()
            .filter(|(_, c)| {
                c.client_id.is_some()
                    && c.session
                        .subscriptions
                        .keys()
                        .any(|f| topic_matches(f, topic))
            })
            .map(|(s, _)| *s)
            .collect()
    }

    /// Client ids connected now, in socket order.
    pub fn clients(&self) -> Vec<String> {
        self.conns
            .values()
            .filter_map(|c| c.client_id.clone())
            .collect()
    }

    /// Closes every connection and the listener (each exactly once). Idempotent.
    pub fn close(&mut self, _now: Instant) {
        if self.closed {
            return;
        }
        self.closed = true;
        let ids: Vec<SocketId> = self.conns.keys().copied().collect();
        for id in ids {
            self.close_conn(id, CloseReason::Shutdown);
        }
        self.ops.push_back(SocketOp::Close { socket: LISTENER });
        self.timeout = None;
    }

    fn event(&mut self, event: BrokerEvent) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// Keeps one accept outstanding per free slot.
    fn fill_accepts(&mut self) {
        if !self.listening || self.closed {
            return;
        }
        while self.conns.len() + self.accepting < self.config.max_connections {
            let socket = SocketId(self.next_id);
            self.next_id = self.next_id.wrapping_add(1).max(1);
            self.accepting += 1;
            self.ops.push_back(SocketOp::Accept {
                listener: LISTENER,
                socket,
            });
        }
    }

    fn send(&mut self, socket: SocketId, packet: &Packet) {
        let Some(conn) = self.conns.get_mut(&socket) else {
            return;
        };
        let mut bytes = Vec::new();
        if encode(packet, conn.protocol, &mut bytes).is_err() {
            return;
        }
        let too_large = conn.max_packet_size.is_some_and(|max| bytes.len() > max);
        if too_large && self.config.honour_max_packet_size {
            // MQTT 5: not sent, and a QoS 1 PUBLISH counts as delivered.
            self.stats.dropped_oversize += 1;
            if let Packet::Publish { pkid, .. } = packet {
                conn.session.inflight.remove(pkid);
            }
            return;
        }
        if conn.unsent + bytes.len() > self.config.max_unsent {
            self.stats.slow_consumers += 1;
            self.close_conn(socket, CloseReason::SlowConsumer);
            return;
        }
        conn.unsent += bytes.len();
        self.out.push(socket, &bytes);
    }

    /// Ends a connection: its queued bytes go out first (dropped for a slow consumer), then the
    /// Close intent (always: the socket is ours until closed); its session is kept or dropped; its
    /// slot gets a new accept.
    fn close_conn(&mut self, socket: SocketId, reason: CloseReason) {
        let Some(conn) = self.conns.remove(&socket) else {
            return;
        };
        self.stats.closed += 1;
        self.ops.push_back(SocketOp::Close { socket });
        if reason == CloseReason::SlowConsumer {
            self.out.forget(socket);
        }
        if let Some(id) = &conn.client_id {
            if conn.keep_session {
                if self.sessions.len() >= self.config.max_sessions {
                    self.sessions.pop_first();
                }
                self.sessions.insert(id.clone(), conn.session);
            }
        }
        self.event(BrokerEvent::ClientClosed {
            socket,
            client_id: conn.client_id,
            reason,
        });
        self.fill_accepts();
    }

    fn refresh_timeout(&mut self) {
        self.timeout = self.conns.values().map(|c| c.deadline).min();
    }

    fn feed(&mut self, now: Instant, socket: SocketId, data: &[u8]) {
        let max = self.config.max_packet_size;
        let Some(conn) = self.conns.get_mut(&socket) else {
            return;
        };
        let mut rest: &[u8] = data;
        if conn.decoder.is_none() {
            let room = max.saturating_sub(conn.pre.len());
            let take = rest.len().min(room);
            conn.pre.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            match connect_level(&conn.pre) {
                Level::NeedMore if conn.pre.len() >= max => {
                    return self.violation(socket, CloseReason::Malformed);
                }
                Level::NeedMore => return,
                Level::NotConnect => return self.violation(socket, CloseReason::ProtocolViolation),
                Level::Is(4) => conn.protocol = Protocol::V311,
                Level::Is(5) => conn.protocol = Protocol::V5,
                Level::Is(_) => {
                    // 3.1.1's "unacceptable protocol version" is understood by older clients too.
                    let mut bytes = Vec::new();
                    let refuse = Packet::ConnAck {
                        session_present: false,
                        code: 1,
                        properties: ConnAckProperties::default(),
                    };
                    if encode(&refuse, Protocol::V311, &mut bytes).is_ok() {
                        self.out.push(socket, &bytes);
                    }
                    self.stats.violations += 1;
                    return self.close_conn(socket, CloseReason::UnsupportedProtocol);
                }
            }
            let mut decoder = Decoder::new(conn.protocol, max);
            let pre = core::mem::take(&mut conn.pre);
            // `pre` is at most `max` bytes: it fits.
            let _ = decoder.push(&pre);
            conn.decoder = Some(decoder);
        }
        loop {
            let Some(conn) = self.conns.get_mut(&socket) else {
                return;
            };
            let Some(decoder) = conn.decoder.as_mut() else {
                return;
            };
            let taken = match decoder.push(rest) {
                Ok(n) => n,
                Err(_) => return self.violation(socket, CloseReason::Malformed),
            };
            rest = &rest[taken..];
            let mut packets = Vec::new();
            let mut bad = false;
            while let Some(next) = decoder.next() {
                match next {
                    Ok(Decoded::Packet(p)) => packets.push(p),
                    // Larger than we accept: a broker closes such a client.
                    Ok(Decoded::Skipped(_)) | Err(_) => {
                        bad = true;
                        break;
                    }
                }
            }
            let progressed = taken > 0 || !packets.is_empty();
            for p in packets {
                if !self.conns.contains_key(&socket) {
                    return;
                }
                self.packet(now, socket, p);
            }
            if bad {
                return self.violation(socket, CloseReason::Malformed);
            }
            if rest.is_empty() || !progressed {
                return;
            }
        }
    }

    fn violation(&mut self, socket: SocketId, reason: CloseReason) {
        match reason {
            CloseReason::Malformed => self.stats.malformed += 1,
            _ => self.stats.violations += 1,
        }
        self.close_conn(socket, reason);
    }

    fn packet(&mut self, now: Instant, socket: SocketId, packet: Packet) {
        let Some(conn) = self.conns.get_mut(&socket) else {
            return;
        };
        let connected = conn.client_id.is_some();
        if connected {
            if let Some(grace) = conn.grace {
                conn.deadline = now + grace;
            }
        }
        match packet {
            Packet::Connect {
                client_id,
                keep_alive,
                clean_session,
                max_packet_size,
                ..
            } if !connected => {
                if let Some(conn) = self.conns.get_mut(&socket) {
                    conn.max_packet_size =
                        max_packet_size.map(|m| usize::try_from(m).unwrap_or(usize::MAX));
                }
                self.on_connect(now, socket, client_id, keep_alive, clean_session)
            }
            _ if !connected => self.violation(socket, CloseReason::ProtocolViolation),
            Packet::Subscribe { pkid, topics } => self.on_subscribe(socket, pkid, topics),
            Packet::Publish {
                topic,
                qos,
                pkid,
                payload,
                retain,
                ..
            } => self.on_publish(socket, topic, qos, pkid, retain, payload),
            Packet::PubAck { pkid } => {
                if conn.session.inflight.remove(&pkid).is_some() {
                    self.stats.pubacks_in += 1;
                }
            }
            Packet::PingReq => {
                self.stats.pings += 1;
                self.send(socket, &Packet::PingResp);
            }
            Packet::Disconnect => self.close_conn(socket, CloseReason::Disconnect),
            _ => self.violation(socket, CloseReason::ProtocolViolation),
        }
    }

    fn on_connect(
        &mut self,
        now: Instant,
        socket: SocketId,
        client_id: String,
        keep_alive: u16,
        clean_session: bool,
    ) {
        let client_id = if client_id.is_empty() {
            self.next_auto_id += 1;
            format!("auto-{}", self.next_auto_id)
        } else {
            client_id
        };
        // Take over an existing connection of the same client.
        let older: Vec<SocketId> = self
            .conns
            .iter()
            .filter(|(s, c)| **s != socket && c.client_id.as_deref() == Some(client_id.as_str()))
            .map(|(s, _)| *s)
            .collect();
        for s in older {
            self.close_conn(s, CloseReason::TakenOver);
        }
        let session = if clean_session {
            self.sessions.remove(&client_id);
            None
        } else {
            self.sessions.remove(&client_id)
        };
        let present = session.is_some();
        let Some(conn) = self.conns.get_mut(&socket) else {
            return;
        };
        conn.client_id = Some(client_id.clone());
        conn.keep_session = !clean_session;
        conn.session = session.unwrap_or_default();
        conn.grace = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        conn.deadline = conn.grace.map_or(Instant::MAX, |g| now + g);
        let (protocol, remote) = (conn.protocol, conn.remote);
        let resend: Vec<(u16, Inflight)> = conn
            .session
            .inflight
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        self.stats.connects += 1;
        self.send(
            socket,
            &Packet::ConnAck {
                session_present: present,
                code: 0,
                properties: ConnAckProperties::default(),
            },
        );
        for (pkid, m) in resend {
            self.stats.resent += 1;
            self.stats.publishes_out += 1;
            self.send(
                socket,
                &Packet::Publish {
                    topic: m.topic,
                    qos: QoS::AtLeastOnce,
                    pkid,
                    retain: false,
                    dup: true,
                    payload: m.payload,
                },
            );
        }
        self.event(BrokerEvent::ClientConnected {
            socket,
            client_id,
            protocol,
            remote,
        });
    }

    fn on_subscribe(&mut self, socket: SocketId, pkid: u16, topics: Vec<SubscribeFilter>) {
        let max = self.config.max_subscriptions;
        let Some(conn) = self.conns.get_mut(&socket) else {
            return;
        };
        self.stats.subscribes += 1;
        let mut retained_for = Vec::new();
        let codes = topics
            .into_iter()
            .map(|topic| {
                let granted = topic.qos.min(QoS::AtLeastOnce);
                let subs = &mut conn.session.subscriptions;
                let existed = subs.contains_key(&topic.filter);
                if !valid_filter(&topic.filter) || (subs.len() >= max && !existed) {
                    return 0x80;
                }
                let send_retained = match topic.retain_handling {
                    RetainHandling::SendOnSubscribe => true,
                    RetainHandling::SendOnNewSubscribe => !existed,
                    RetainHandling::DoNotSend => false,
                };
                if send_retained {
                    retained_for.push((topic.filter.clone(), granted));
                }
                subs.insert(topic.filter, granted);
                match granted {
                    QoS::AtMostOnce => 0,
                    _ => 1,
                }
            })
            .collect();
        self.send(socket, &Packet::SubAck { pkid, codes });
        for (filter, granted) in retained_for {
            self.send_retained(socket, &filter, granted);
        }
    }

    fn on_publish(
        &mut self,
        socket: SocketId,
        topic: String,
        qos: QoS,
        pkid: u16,
        retain: bool,
        payload: Vec<u8>,
    ) {
        if qos == QoS::ExactlyOnce || topic.is_empty() || topic.contains(['+', '#']) {
            return self.violation(socket, CloseReason::ProtocolViolation);
        }
        self.stats.publishes_in += 1;
        if qos == QoS::AtLeastOnce {
            self.send(socket, &Packet::PubAck { pkid });
        }
        if retain {
            self.retain(&topic, qos, &payload);
        }
        let max_inflight = self.config.max_inflight;
        let mut deliveries = Vec::new();
        for (s, conn) in self.conns.iter_mut() {
            if conn.client_id.is_none() {
                continue;
            }
            let granted = conn
                .session
                .subscriptions
                .iter()
                .filter(|(f, _)| topic_matches(f, &topic))
                .map(|(_, q)| *q)
                .max();
            let Some(granted) = granted else {
                continue;
            };
            let q = granted.min(qos);
            let Some(id) = conn
                .session
                .hold(q, &topic, &payload, max_inflight, &mut self.stats)
            else {
                continue;
            };
            deliveries.push((*s, q, id));
        }
        for (s, q, id) in deliveries {
            self.stats.publishes_out += 1;
            self.send(
                s,
                &Packet::Publish {
                    topic: topic.clone(),
                    qos: q,
                    pkid: id,
                    retain: false,
                    dup: false,
                    payload: payload.clone(),
                },
            );
        }
    }
}

impl p2pd_proto::Machine for MqttBroker {
    type Event = BrokerEvent;

    /// Bytes arrived on a connection.
    fn handle_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        if !self.conns.contains_key(&socket) {
            return Verdict::NotMine;
        }
        self.feed(now, socket, data);
        self.refresh_timeout();
        Verdict::Consumed
    }

    /// Outcomes of the listener's intents, accepted connections and stream ends.
    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        if socket == LISTENER {
            match outcome {
                SocketOutcome::Bound { local } if !self.closed => {
                    self.ops.push_back(SocketOp::Listen {
                        socket: LISTENER,
                        backlog: self.config.backlog,
                    });
                    self.listening = true;
                    self.event(BrokerEvent::Listening { local });
                    self.fill_accepts();
                }
                SocketOutcome::Failed { op, error, .. }
                    if op == p2pd_proto::OpKind::Bind || op == p2pd_proto::OpKind::Listen =>
                {
                    if op == p2pd_proto::OpKind::Listen {
                        // The bind succeeded: the socket is ours to close.
                        self.ops.push_back(SocketOp::Close { socket: LISTENER });
                    }
                    self.listening = false;
                    self.closed = true;
                    self.event(BrokerEvent::ListenFailed { error });
                }
                _ => {}
            }
            return;
        }
        match outcome {
            SocketOutcome::Accepted { remote, .. } => {
                self.accepting = self.accepting.saturating_sub(1);
                if self.closed {
                    self.ops.push_back(SocketOp::Close { socket });
                    return;
                }
                self.stats.accepted += 1;
                self.conns.insert(
                    socket,
                    Conn {
                        remote,
                        pre: Vec::new(),
                        decoder: None,
                        protocol: Protocol::V311,
                        client_id: None,
                        keep_session: false,
                        session: Session::default(),
                        deadline: now + self.config.connect_timeout,
                        grace: None,
                        unsent: 0,
                        max_packet_size: None,
                    },
                );
            }
            SocketOutcome::Failed {
                op: p2pd_proto::OpKind::Accept,
                ..
            } => {
                // The slot stays empty: re-asking could spin on a broken listener.
                self.accepting = self.accepting.saturating_sub(1);
            }
            SocketOutcome::PeerClosed => self.close_conn(socket, CloseReason::PeerClosed),
            SocketOutcome::Failed { error, .. } => {
                self.close_conn(socket, CloseReason::Failed(error))
            }
            _ => {}
        }
        self.refresh_timeout();
    }

    /// Closes connections past their keep-alive or connect deadline.
    fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<SocketId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        for s in due {
            self.stats.keepalive_timeouts += 1;
            self.close_conn(s, CloseReason::KeepAlive);
        }
        self.refresh_timeout();
    }

    /// The next chunk of a connection's outgoing bytes.
    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let (transmit, len) = self.out.poll_transmit(buf)?;
        if let Some(conn) = self.conns.get_mut(&transmit.socket) {
            conn.unsent = conn.unsent.saturating_sub(len);
        }
        Some(transmit)
    }

    /// The next socket intent.
    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        self.ops.pop_front()
    }

    /// The next event.
    fn poll_event(&mut self) -> Option<BrokerEvent> {
        self.events.pop_front()
    }

    /// The earliest keep-alive or connect deadline.
    fn poll_timeout(&self) -> Option<Instant> {
        self.timeout
    }
}

impl crate::Sim {
    /// Adds a public host with IP `ip` running an [`MqttBroker`] on `port` (default settings).
    ///
    /// # Panics
    /// If `ip` is in use.
    pub fn add_mqtt_broker(&mut self, ip: Ipv4Addr, port: u16) -> crate::HostId {
        self.add_mqtt_broker_with(crate::Host::public([ip]), BrokerConfig::new(port))
    }

    /// Adds `host` running an [`MqttBroker`] with `config`. Kill it with
    /// [`crate::Sim::kill_host`] (its clients' connections are reset) and bring it back with
    /// [`crate::Sim::restart_mqtt_broker`].
    pub fn add_mqtt_broker_with(
        &mut self,
        host: crate::Host,
        config: BrokerConfig,
    ) -> crate::HostId {
        self.add_host(host, MqttBroker::new(config))
    }

    /// Kills whatever runs on `host` and starts a fresh [`MqttBroker`] with `config` there (no
    /// sessions survive).
    pub fn restart_mqtt_broker(&mut self, host: crate::HostId, config: BrokerConfig) {
        self.restart_host(host, MqttBroker::new(config));
    }
}

//! Phase C: the relay. The side that connects allocates an RFC 6062 TCP relay
//! ([`p2pd_turn::TurnClient`]) on the first configured relay, permits the peer's external IPs,
//! and once phase C begins sends the relayed address over signaling
//! ([`Message::RelayOffer`]); the peer dials it with a relay preface, the relay hands us the
//! connection (ConnectionAttempt, then ConnectionBind on a data connection of ours) and the
//! secure channel runs over it with us as initiator, like a reverse connection.
//!
//! When the plan has nothing before phase C (the pair cannot be punched), the allocation starts
//! with phase A, so falling back costs about one signaling round trip; otherwise it starts with
//! the punch and is released unused when another path wins (relays are shared and paid for: a
//! pair that connects directly allocates nothing). A relay that refuses, cannot be reached or
//! times out (each step within [`NodeConfig::relay_timeout`](crate::NodeConfig::relay_timeout)),
//! or whose relayed address the peer cannot reach, is followed by the next configured one; the
//! last failure is the phase's. A winning relay's allocation lives (and is refreshed) as long as
//! its stream, and is deallocated when the stream closes.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use p2pd_proto::{Instant, SocketOp};
use p2pd_turn::{RelayTransport, TurnClient, TurnConfig, TurnEvent};

use crate::connect::{start_phase, Stage};
use crate::conns::{Conn, ConnRole, ConnState};
use crate::node::{Node, Part};
use crate::types::{ConnectId, NodeEvent, Phase, PhaseFailure, PhaseOutcome, SkipReason, StreamId};
use crate::wire::{Message, PREFACE_LEN, TOKEN_LEN};

/// Most allocations at once (for connects in progress and relayed streams).
const MAX_RELAYS: usize = 64;

/// One allocation.
pub(crate) struct RelaySlot {
    pub(crate) serial: u32,
    pub(crate) client: TurnClient,
    /// The connect it serves until one path wins or the relay fails.
    pub(crate) connect: Option<ConnectId>,
    /// The relayed stream it carries, once the relay won.
    pub(crate) stream: Option<StreamId>,
    /// The peer's external IPs, to permit.
    peer_ips: Vec<IpAddr>,
    /// The relayed address, once allocated.
    pub(crate) relayed: Option<SocketAddr>,
    /// Permissions still awaited.
    permits_pending: usize,
    /// Allocated, and every permission created.
    pub(crate) ready: bool,
    /// It reported `Closed`: retire it.
    pub(crate) closed: bool,
}

impl Node {
    /// Unix time in seconds at `now` (for TURN REST credentials).
    fn unix_now(&self, now: Instant) -> u64 {
        let ms = self
            .config
            .rendezvous
            .unix_epoch_ms
            .saturating_add(now.as_nanos() / 1_000_000);
        ms / 1000
    }

    /// Starts an allocation on the next configured relay for connect `i` (reporting phase C as
    /// started); false if no relay is left to try.
    pub(crate) fn start_relay(&mut self, now: Instant, i: usize) -> bool {
        if self.relays.len() >= MAX_RELAYS {
            return false;
        }
        let unix_now = self.unix_now(now);
        let local_ip = self.config.local_ip;
        let timeout = self.config.relay_timeout;
        let seed = self.rng.next_u64();
        let serial = self.next_relay;
        let Some(c) = self.connects.get_mut(i) else {
            return false;
        };
        let Some(spec) = self.config.relays.get(c.relay_next) else {
            return false;
        };
        let peer_ips: Vec<IpAddr> = c
            .peer
            .iter()
            .flat_map(|p| p.interfaces.iter())
            .filter_map(|i| i.endpoints.first())
            .map(|e| e.ip)
            .collect();
        c.relay_next = c.relay_next.saturating_add(1);
        let local_ip = match (spec.server, local_ip) {
            (SocketAddr::V4(_), ip @ IpAddr::V4(_)) | (SocketAddr::V6(_), ip @ IpAddr::V6(_)) => ip,
            (SocketAddr::V4(_), _) => Ipv4Addr::UNSPECIFIED.into(),
            (SocketAddr::V6(_), _) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let mut turn = TurnConfig::new(
            spec.server,
            SocketAddr::new(local_ip, 0),
            spec.credentials.credentials(unix_now),
        );
        turn.transport = RelayTransport::Tcp;
        turn.timeout = timeout;
        c.relay = Some(serial);
        let id = c.id;
        start_phase(c, Phase::Relay, now);
        self.next_relay = self.next_relay.wrapping_add(1);
        self.stats.allocations = self.stats.allocations.saturating_add(1);
        self.relays.push(RelaySlot {
            serial,
            client: TurnClient::new(turn, seed, now),
            connect: Some(id),
            stream: None,
            peer_ips,
            relayed: None,
            permits_pending: 0,
            ready: false,
            closed: false,
        });
        true
    }

    /// Phase C begins for connect `i` (phases A and B are over): offer the relay when it is
    /// ready, start one if none runs, or fail the connect.
    pub(crate) fn start_phase_c(&mut self, now: Instant, i: usize) {
        let no_relay = self.config.relays.is_empty();
        let Some(c) = self.connects.get_mut(i) else {
            return;
        };
        if no_relay {
            crate::connect::end_phase(
                c,
                Phase::Relay,
                now,
                PhaseOutcome::Skipped(SkipReason::NoRelay),
            );
            self.fail_connect(now, i);
            return;
        }
        c.stage = Stage::PhaseC { until: None };
        let id = c.id;
        if c.relay.is_none() && !self.start_relay(now, i) {
            self.relay_exhausted(now, i);
            return;
        }
        self.events.push_back(NodeEvent::Progress {
            connect: id,
            phase: Phase::Relay,
        });
        self.offer_relay_if_ready(now, id);
    }

    /// No relay is left for connect `i`: phase C fails with the last relay's failure.
    fn relay_exhausted(&mut self, now: Instant, i: usize) {
        let Some(c) = self.connects.get_mut(i) else {
            return;
        };
        let failure = c.relay_failure.take().unwrap_or(PhaseFailure::Timeout);
        crate::connect::end_phase(c, Phase::Relay, now, PhaseOutcome::Failed(failure));
        self.fail_connect(now, i);
    }

    /// Sends the relay offer for `connect` if phase C runs, no offer is out and its
    /// allocation is ready.
    fn offer_relay_if_ready(&mut self, now: Instant, connect: ConnectId) {
        let Some(i) = self.connects.iter().position(|c| c.id == connect) else {
            return;
        };
        let Some(c) = self.connects.get(i) else {
            return;
        };
        if c.stage != (Stage::PhaseC { until: None }) || c.relay_token.is_some() {
            return;
        }
        let Some(relayed) = c
            .relay
            .and_then(|serial| self.relays.iter().find(|r| r.serial == serial))
            .filter(|r| r.ready)
            .and_then(|r| r.relayed)
        else {
            return;
        };
        let Some(peer) = c.peer.clone() else {
            return;
        };
        let mut token = [0u8; TOKEN_LEN];
        self.rng.fill_bytes(&mut token);
        let message = Message::RelayOffer { token, relayed }.encode();
        let sent = self
            .rendezvous
            .send(now, &peer.public_key, Some(&peer.brokers), &message)
            .is_ok()
            || self
                .rendezvous
                .send(now, &peer.public_key, None, &message)
                .is_ok();
        if !sent {
            self.relay_failed(now, connect, PhaseFailure::Signaling);
            return;
        }
        let until = now.saturating_add(self.config.relay_timeout);
        if let Some(c) = self.connects.get_mut(i) {
            c.relay_token = Some(token);
            c.stage = Stage::PhaseC { until: Some(until) };
        }
    }

    /// The relay of `connect` failed: release it and try the next one (at once, whichever phase
    /// runs); with none left, phase C fails if it runs (else when it begins).
    pub(crate) fn relay_failed(&mut self, now: Instant, connect: ConnectId, failure: PhaseFailure) {
        let Some(i) = self.connects.iter().position(|c| c.id == connect) else {
            return;
        };
        let Some(c) = self.connects.get_mut(i) else {
            return;
        };
        if c.stage == Stage::Done {
            return;
        }
        let serial = c.relay.take();
        c.relay_token = None;
        c.relay_failure = Some(failure.clone());
        let in_phase_c = matches!(c.stage, Stage::PhaseC { .. });
        if in_phase_c {
            c.stage = Stage::PhaseC { until: None };
        }
        let relay = serial
            .and_then(|serial| self.relays.iter().find(|r| r.serial == serial))
            .map(|r| r.client.config().server);
        if let Some(serial) = serial {
            self.release_relay(now, serial);
        }
        self.drop_relayed_conns_of(connect);
        let next = self.start_relay(now, i);
        if let Some(relay) = relay {
            self.events.push_back(NodeEvent::RelayFailed {
                connect,
                relay,
                failure,
                next,
            });
        }
        if !next && in_phase_c {
            self.relay_exhausted(now, i);
        }
    }

    /// Closes allocation `serial` (deallocating it) for good.
    pub(crate) fn release_relay(&mut self, now: Instant, serial: u32) {
        if let Some(r) = self.relays.iter_mut().find(|r| r.serial == serial) {
            r.connect = None;
            r.client.close(now);
        }
    }

    /// The relayed stream `stream` is gone: its allocation goes too.
    pub(crate) fn relayed_stream_closed(&mut self, stream: StreamId) {
        let now = self.last_now;
        if let Some(r) = self.relays.iter_mut().find(|r| r.stream == Some(stream)) {
            r.stream = None;
            r.client.close(now);
        }
    }

    /// The peer could not reach our relayed address.
    pub(crate) fn relay_offer_failed(
        &mut self,
        now: Instant,
        from: p2pd_signaling::PublicKey,
        token: [u8; TOKEN_LEN],
    ) {
        let connect = self
            .connects
            .iter()
            .find(|c| c.relay_token == Some(token) && c.key == Some(from))
            .map(|c| c.id);
        if let Some(connect) = connect {
            self.relay_failed(now, connect, PhaseFailure::PeerCouldNotDial);
        }
    }

    /// The peer offers its relayed address: dial it (as the channel's responder).
    pub(crate) fn on_relay_offer(
        &mut self,
        now: Instant,
        from: p2pd_signaling::PublicKey,
        token: [u8; TOKEN_LEN],
        relayed: SocketAddr,
    ) {
        if self.closing || !self.accepts(&from) {
            self.stats.bad_messages = self.stats.bad_messages.saturating_add(1);
            return;
        }
        if self
            .conns
            .iter()
            .any(|c| matches!(&c.role, ConnRole::RelayDial { token: t, .. } if *t == token))
        {
            return;
        }
        if !self.may_dial_for_peer() {
            self.stats.bad_messages = self.stats.bad_messages.saturating_add(1);
            return;
        }
        let until = now.saturating_add(self.config.channel.handshake_timeout);
        self.open_dial(
            now,
            relayed,
            ConnRole::RelayDial {
                requester: from,
                token,
            },
            until,
        );
    }

    /// An event of allocation `i`.
    pub(crate) fn on_relay(&mut self, now: Instant, i: usize, ev: TurnEvent) {
        let Some(slot) = self.relays.get_mut(i) else {
            return;
        };
        let serial = slot.serial;
        let connect = slot.connect;
        match ev {
            TurnEvent::Allocated { relayed, .. } => {
                slot.relayed = Some(relayed);
                let ips = slot.peer_ips.clone();
                let mut failure = None;
                for ip in &ips {
                    match slot.client.create_permission(now, SocketAddr::new(*ip, 0)) {
                        Ok(()) => slot.permits_pending = slot.permits_pending.saturating_add(1),
                        Err(_) => failure = Some(PhaseFailure::BadAddress),
                    }
                }
                if ips.is_empty() {
                    failure = Some(PhaseFailure::BadAddress);
                }
                if let (Some(failure), Some(c)) = (failure, connect) {
                    self.relay_failed(now, c, failure);
                }
            }
            TurnEvent::PermissionCreated { .. } => {
                slot.permits_pending = slot.permits_pending.saturating_sub(1);
                if slot.permits_pending == 0 && slot.relayed.is_some() {
                    slot.ready = true;
                    if let Some(c) = connect {
                        self.offer_relay_if_ready(now, c);
                    }
                }
            }
            TurnEvent::PermissionFailed { failure, .. } => {
                if let Some(c) = connect {
                    self.relay_failed(now, c, PhaseFailure::Relay(failure));
                }
            }
            TurnEvent::PeerConnected { socket, data, .. } => {
                // The data connection's far end is the relay: the stream's bytes go there.
                let server = slot.client.config().server;
                self.relayed_connection(now, serial, connect, server, socket, &data);
            }
            TurnEvent::Failed(failure) => {
                if let Some(c) = connect {
                    self.relay_failed(now, c, PhaseFailure::Relay(failure));
                }
            }
            TurnEvent::Closed { .. } => slot.closed = true,
            _ => {}
        }
    }

    /// The relay (at `server`) handed us a data connection: it must open with the relay preface
    /// of the offer still out, then the channel's handshake.
    fn relayed_connection(
        &mut self,
        now: Instant,
        serial: u32,
        connect: Option<ConnectId>,
        server: SocketAddr,
        socket: p2pd_proto::SocketId,
        data: &[u8],
    ) {
        let own = self.new_socket();
        if self
            .sockets
            .adopt(Part::Relay(serial), socket, Part::Own, own)
            .is_none()
        {
            return;
        }
        let wanted = connect.filter(|c| {
            self.connects
                .iter()
                .any(|x| x.id == *c && x.relay_token.is_some() && x.stage != Stage::Done)
        });
        let Some(connect) = wanted else {
            // Nobody waits for it (a late or unasked connection through our relay).
            self.stats.strangers = self.stats.strangers.saturating_add(1);
            self.ops.push_back(SocketOp::Close { socket: own });
            return;
        };
        self.conns.push(Conn {
            socket: own,
            remote: server,
            role: ConnRole::Relayed { connect },
            state: ConnState::Preface(Vec::with_capacity(PREFACE_LEN)),
            deadline: now.saturating_add(self.config.channel.handshake_timeout),
            opened: now,
        });
        if !data.is_empty() {
            let _ = self.own_stream_bytes(now, own, data);
        }
    }

    /// Closes the connections our relay handed us for `connect`.
    fn drop_relayed_conns_of(&mut self, connect: ConnectId) {
        let sockets: Vec<_> = self
            .conns
            .iter()
            .filter(|c| matches!(c.role, ConnRole::Relayed { connect: id } if id == connect))
            .map(|c| c.socket)
            .collect();
        for s in sockets {
            self.drop_conn(s);
        }
    }
}

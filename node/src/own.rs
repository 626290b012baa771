//! The node's own address, kept true: the listener (bound, listening, always one accept
//! outstanding), the listener port's external address (a STUN-over-TCP binding from that very
//! port, kept open so its mapping lives), the NAT behaviour (classified or given), the
//! `p2pd1:` address built from them, and its registration under our name on every PNP server,
//! refreshed at half its lifetime and retried after a failure.

use core::net::SocketAddr;
use core::time::Duration;

use p2pd_nat::{Classification, Classifier, ClassifierEvent};
use p2pd_proto::client_tcp::{TcpBinding, TcpBindingConfig, TcpBindingEvent};
use p2pd_proto::{BindOptions, Instant, SocketId, SocketOp, SocketOutcome, Transport};
use p2pd_signaling::pnp::{PnpClientEvent, RequestId};
use p2pd_signaling::{Endpoint, Interface, InterfaceLabel, NatInfo, PeerAddress};

use crate::config::NatSource;
use crate::ladder::{SelfView, OPEN};
use crate::node::{Node, Part};
use crate::types::NodeEvent;

/// How long after a failed registration (or binding) it is tried again.
const RETRY: Duration = Duration::from_secs(5);
/// How often the listener's binding sends a keep-alive.
const BINDING_KEEPALIVE: Duration = Duration::from_secs(25);
/// Listener backlog.
const BACKLOG: u32 = 64;

/// The own-address state.
#[derive(Debug)]
pub(crate) struct Own {
    /// The listener's socket while it is held.
    pub(crate) listener: Option<SocketId>,
    /// Its bound address.
    pub(crate) listen_addr: Option<SocketAddr>,
    /// The outstanding accept's socket.
    pub(crate) accepting: Option<SocketId>,
    /// The listener port's external address, once the binding answered.
    pub(crate) external: Option<SocketAddr>,
    /// The binding answered or failed (the address can be built).
    binding_done: bool,
    /// Retry the binding at.
    binding_retry: Option<Instant>,
    /// Our NAT behaviour; `Some(_)` once known or given up on.
    pub(crate) nat: Option<Option<NatInfo>>,
    /// The classifier reported `Closed` (retire it).
    classifier_closed: bool,
    /// Our current address.
    pub(crate) address: Option<PeerAddress>,
    /// The address has changed since it was last registered (or reported).
    dirty: bool,
    /// Registrations in flight: (server index, request).
    registrations: Vec<(usize, RequestId)>,
    /// Next registration round (refresh or retry).
    register_at: Option<Instant>,
    /// The address last registered (on at least one PNP server; any address without a name).
    registered: Option<PeerAddress>,
    /// The address that was last reported `Ready`.
    reported: Option<PeerAddress>,
}

impl Own {
    pub(crate) fn new(nat: Option<Option<NatInfo>>) -> Own {
        Own {
            listener: None,
            listen_addr: None,
            accepting: None,
            external: None,
            binding_done: false,
            binding_retry: None,
            nat,
            classifier_closed: false,
            address: None,
            dirty: false,
            registrations: Vec::new(),
            register_at: None,
            registered: None,
            reported: None,
        }
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        match (self.binding_retry, self.register_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// No more refreshes or retries (the node closes).
    pub(crate) fn stop(&mut self) {
        self.register_at = None;
        self.binding_retry = None;
    }

    pub(crate) fn holds_listener(&self) -> bool {
        self.listener.is_some()
    }

    /// What the planner knows of us.
    pub(crate) fn view(&self) -> SelfView {
        let mut external_ips = Vec::new();
        if let Some(e) = self.external {
            external_ips.push(e.ip());
        }
        if let Some(l) = self.listen_addr.filter(|l| !l.ip().is_unspecified()) {
            if !external_ips.contains(&l.ip()) {
                external_ips.push(l.ip());
            }
        }
        SelfView {
            nat: self.nat.flatten(),
            external_ips,
        }
    }
}

impl Node {
    /// Binds the listener and starts the classifier.
    pub(crate) fn start_own(&mut self, now: Instant) {
        let socket = self.new_socket();
        self.own.listener = Some(socket);
        self.ops.push_back(SocketOp::Bind {
            socket,
            transport: Transport::Tcp,
            local: SocketAddr::new(self.config.local_ip, self.config.listen_port),
            options: reuse(),
        });
        self.start_classifier(now);
    }

    /// Classifies the NAT (with [`NatSource::Classify`]; nothing if a classification runs): the
    /// address is rebuilt and registered again once it answers.
    fn start_classifier(&mut self, now: Instant) {
        if self.classifier.is_some() {
            return;
        }
        if let NatSource::Classify(servers) = &self.config.nat {
            let mut config = self.config.classifier.clone();
            config.local_ip = self.config.local_ip;
            let mut classifier = Classifier::new(config, servers, self.rng.next_u64());
            classifier.start(now);
            self.classifier = Some(classifier);
            self.own.nat = None;
        }
    }

    /// The listener's outcomes: bound (listen, learn the external address), an accepted
    /// connection (a new inbound handshake, and the next accept).
    pub(crate) fn on_listener_result(
        &mut self,
        now: Instant,
        socket: SocketId,
        outcome: SocketOutcome,
    ) {
        match outcome {
            SocketOutcome::Bound { local } if Some(socket) == self.own.listener => {
                self.own.listen_addr = Some(local);
                self.ops.push_back(SocketOp::Listen {
                    socket,
                    backlog: BACKLOG,
                });
                self.next_accept();
                self.start_binding(now);
            }
            SocketOutcome::Failed { .. } if Some(socket) == self.own.listener => {
                // No listener: the node still connects out (direct and punch), it is just not
                // reachable; its address carries no listener port.
                self.close_listener();
                self.own.binding_done = true;
            }
            _ => {}
        }
    }

    /// Keeps one accept outstanding.
    pub(crate) fn next_accept(&mut self) {
        if self.closing || self.own.accepting.is_some() {
            return;
        }
        let Some(listener) = self.own.listener else {
            return;
        };
        let socket = self.new_socket();
        self.own.accepting = Some(socket);
        self.ops.push_back(SocketOp::Accept { listener, socket });
    }

    pub(crate) fn close_listener(&mut self) {
        if let Some(listener) = self.own.listener.take() {
            // An outstanding accept ends with its listener.
            self.own.accepting = None;
            self.ops.push_back(SocketOp::Close { socket: listener });
        }
    }

    /// A STUN-over-TCP binding from the listener's port (reuse flags, kept open).
    fn start_binding(&mut self, now: Instant) {
        self.own.binding_retry = None;
        let (Some(server), Some(local)) = (self.config.stun_tcp, self.own.listen_addr) else {
            self.own.binding_done = true;
            return;
        };
        let mut config = TcpBindingConfig::new(server, local).keep_open(true);
        config.options = reuse();
        // The binding keeps the listener's mapping alive through NATs that idle TCP out, and
        // its keep-alive is how we notice the network moved under us (a renumbered uplink
        // answers it with a reset): the binding ends, is made again, and a new external
        // address re-classifies and re-registers us.
        config.keepalive = Some(BINDING_KEEPALIVE);
        self.binding = Some(TcpBinding::new(config, self.rng.next_u64(), now));
    }

    pub(crate) fn on_binding(&mut self, now: Instant, ev: TcpBindingEvent) {
        match ev {
            TcpBindingEvent::Mapped(m) => {
                let moved = self.own.external.is_some_and(|e| e != m.mapped);
                if self.own.external != Some(m.mapped) {
                    self.own.external = Some(m.mapped);
                    self.own.dirty = true;
                }
                self.own.binding_done = true;
                if moved {
                    // The network changed under us (a new external address): what we know of
                    // the NAT may be stale too.
                    self.start_classifier(now);
                }
            }
            TcpBindingEvent::Failed { .. } => {
                self.own.binding_done = true;
                self.own.binding_retry = Some(now.saturating_add(RETRY));
            }
            // The kept-open mapping ended (the server closed it): learn it again.
            TcpBindingEvent::Closed { .. } if !self.closing && self.own.binding_retry.is_none() => {
                self.own.binding_retry = Some(now.saturating_add(RETRY));
            }
            _ => {}
        }
    }

    pub(crate) fn on_classifier(&mut self, _now: Instant, ev: ClassifierEvent) {
        match ev {
            ClassifierEvent::Done(report) => {
                let nat = match report.classification {
                    Classification::Open => Some(OPEN),
                    Classification::Firewall(filtering) => Some(NatInfo { filtering, ..OPEN }),
                    Classification::Nat { .. } => report.behaviour().as_ref().map(NatInfo::from),
                    _ => None,
                };
                self.own.nat = Some(nat);
                self.own.dirty = true;
            }
            ClassifierEvent::Closed => self.own.classifier_closed = true,
        }
    }

    pub(crate) fn own_timeout(&mut self, now: Instant) {
        if self.own.binding_retry.is_some_and(|t| t <= now) && self.binding.is_none() {
            self.start_binding(now);
        }
    }

    /// Builds the address once everything is known, and registers it when due.
    pub(crate) fn step_own(&mut self, now: Instant) -> bool {
        let mut progressed = false;
        if self.own.classifier_closed {
            self.own.classifier_closed = false;
            if let Some(mut c) = self.classifier.take() {
                while let Some(op) = self.sockets.poll_socket_op(Part::Classifier, &mut c) {
                    self.retired_ops.push_back(op);
                }
            }
        }
        if self.closing {
            return false;
        }
        let ready = self.own.binding_done && self.own.nat.is_some();
        if ready && (self.own.address.is_none() || self.own.dirty) {
            self.own.dirty = false;
            let address = self.build_address();
            if self.own.address.as_ref() != Some(&address) {
                self.own.address = Some(address);
                // A new address: register it at once.
                self.own.register_at = Some(now);
                progressed = true;
            }
        }
        if self.own.register_at.is_some_and(|t| t <= now) && self.own.registrations.is_empty() {
            self.own.register_at = None;
            progressed |= self.register(now);
        }
        progressed
    }

    fn build_address(&self) -> PeerAddress {
        let mut endpoints: Vec<Endpoint> = Vec::new();
        let port = self.own.listen_addr.map(|l| l.port()).unwrap_or(0);
        if let Some(e) = self.own.external {
            endpoints.push(Endpoint::from(e));
        }
        if let Some(local) = self.own.listen_addr.filter(|l| !l.ip().is_unspecified()) {
            let e = Endpoint::from(local);
            if !endpoints.contains(&e) && port != 0 {
                endpoints.push(e);
            }
        }
        let nat = self.own.nat.flatten().map(|mut n| {
            // A sequential stride of 0 cannot be written; it is not sequential then.
            if matches!(
                n.allocation,
                p2pd_nat::PortAllocation::Sequential { stride: 0 }
            ) {
                n.allocation = p2pd_nat::PortAllocation::Random;
            }
            n
        });
        PeerAddress {
            public_key: self.key,
            interfaces: vec![Interface {
                label: InterfaceLabel::Unnamed,
                nat,
                endpoints,
            }],
            brokers: self.rendezvous.broker_ids().take(8).collect(),
        }
    }

    /// Registers the address on every PNP server (or reports it ready when we have no name).
    fn register(&mut self, now: Instant) -> bool {
        let Some(address) = self.own.address.clone() else {
            return false;
        };
        let Some(name) = self.config.name.clone() else {
            self.report_ready();
            return true;
        };
        let value = address.to_bytes().unwrap_or_default();
        let version = self.pnp.first().map_or(0, |c| c.unix_ms(now));
        let ttl = self.config.registration_ttl;
        for (i, client) in self.pnp.iter_mut().enumerate() {
            if let Ok(id) = client.register(now, name.clone(), value.clone(), version, ttl) {
                self.own.registrations.push((i, id));
            }
        }
        if self.own.registrations.is_empty() {
            self.own.register_at = Some(now.saturating_add(RETRY));
        }
        true
    }

    pub(crate) fn on_registration(&mut self, now: Instant, server: usize, ev: &PnpClientEvent) {
        let (id, failure) = match ev {
            PnpClientEvent::Registered { id, .. } => (*id, None),
            PnpClientEvent::Failed { id, reason } => (*id, Some(reason.clone())),
            _ => return,
        };
        let Some(pos) = self
            .own
            .registrations
            .iter()
            .position(|&(i, r)| i == server && r == id)
        else {
            return;
        };
        self.own.registrations.remove(pos);
        match failure {
            None => {
                self.report_ready();
                let half = self
                    .config
                    .registration_ttl
                    .checked_div(2)
                    .unwrap_or_default();
                let refresh = now.saturating_add(half.max(Duration::from_secs(1)));
                if self.own.register_at.is_none_or(|t| t > refresh) {
                    self.own.register_at = Some(refresh);
                }
            }
            Some(reason) => {
                if let Some(c) = self.pnp.get(server) {
                    self.events.push_back(NodeEvent::RegistrationFailed {
                        server: c.server_id(),
                        reason,
                    });
                }
                let retry = now.saturating_add(RETRY);
                if self.own.register_at.is_none_or(|t| t > retry) {
                    self.own.register_at = Some(retry);
                }
            }
        }
    }

    /// The current address is registered: report it ready once signaling can reach us too.
    fn report_ready(&mut self) {
        self.own.registered = self.own.address.clone();
        self.try_ready();
    }

    /// Reports the registered address `Ready` once we listen on at least one broker: a peer
    /// that finds us by name must also reach us over signaling (a reverse request published
    /// before we subscribe is lost).
    pub(crate) fn try_ready(&mut self) {
        if self.own.reported == self.own.registered || self.closing {
            return;
        }
        let listening = self
            .rendezvous
            .broker_ids()
            .any(|id| self.rendezvous.health(id).is_some_and(|h| h.listening));
        if !listening {
            return;
        }
        self.own.reported = self.own.registered.clone();
        if let Some(address) = self.own.registered.clone() {
            self.events.push_back(NodeEvent::Ready {
                name: self.config.name.clone(),
                nat: self.own.nat.flatten(),
                address: Box::new(address),
            });
        }
    }
}

/// The listener's and its binding's bind options: they share the port.
fn reuse() -> BindOptions {
    BindOptions {
        reuse_address: true,
        reuse_port: true,
        device: None,
    }
}

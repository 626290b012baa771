//! Requests to the server: queueing and encoding them (with the long-term credentials once
//! challenged), matching responses, and the 401 challenge and 438 stale-nonce retries.

use p2pd_proto::stun::{
    attr as stun_attr, Attribute, Class, Header, Message, MessageWriter, Method, TransactionId,
};
use p2pd_proto::Instant;

use super::{
    Auth, Kind, Pending, RelayTransport, State, TurnClient, TurnEvent, TurnFailure,
    ALTERNATE_SERVER, CONTROL_SOCKET, MAX_CHALLENGE_LEN, MAX_PENDING, MAX_STALE_NONCE_RETRIES,
};
use crate::codec::{self, attr, error, long_term_key, method, TurnAttribute, TurnWriter};

impl TurnClient {
    /// Queues a new request of `kind`; `false` if [`MAX_PENDING`] are already in flight (the
    /// request is then dropped; its own deadline or the data connection's ends it).
    pub(super) fn start(&mut self, now: Instant, kind: Kind) -> bool {
        let socket = match kind {
            Kind::ConnectionBind { socket, .. } => socket,
            _ => CONTROL_SOCKET,
        };
        if self.pending.len() >= MAX_PENDING {
            return false;
        }
        let id = self.new_id();
        self.pending.push(Pending {
            id,
            socket,
            kind,
            deadline: now.saturating_add(self.config.timeout),
            stale_retries: 0,
            authenticated: false,
            unsent: true,
        });
        true
    }

    pub(super) fn new_id(&mut self) -> TransactionId {
        let mut id = [0u8; 12];
        self.rng.fill_bytes(&mut id);
        TransactionId::new(id)
    }

    /// Whether a success response's MESSAGE-INTEGRITY, if it carries one, verifies under our key.
    pub(super) fn integrity_ok(&self, msg: &Message<'_>) -> bool {
        let has_mi = msg
            .attributes()
            .any(|a| a.code == stun_attr::MESSAGE_INTEGRITY);
        !has_mi
            || self
                .auth
                .as_ref()
                .is_some_and(|a| msg.verify_integrity(&a.key).is_ok())
    }

    /// Handles one STUN message from the server.
    pub(super) fn message(&mut self, now: Instant, msg: &Message<'_>) {
        if msg.class() == Class::Indication
            && msg.method() == method::CONNECTION_ATTEMPT
            && self.state == State::Allocated
            && self.config.transport == RelayTransport::Tcp
        {
            // A peer connected to the relayed address (RFC 6062 §5.3).
            let id = codec::find(msg, attr::CONNECTION_ID);
            let peer = codec::find(msg, attr::XOR_PEER_ADDRESS);
            if let (
                Ok(Some(TurnAttribute::ConnectionId(id))),
                Ok(Some(TurnAttribute::XorPeerAddress(peer))),
            ) = (id, peer)
            {
                self.open_data(now, peer, id);
            } else {
                self.ignore();
            }
            return;
        }
        if msg.class() == Class::Indication
            && msg.method() == method::DATA
            && self.state == State::Allocated
            && self.config.transport == RelayTransport::Udp
        {
            let peer = codec::find(msg, attr::XOR_PEER_ADDRESS);
            let data = codec::find(msg, attr::DATA);
            match (peer, data) {
                (
                    Ok(Some(TurnAttribute::XorPeerAddress(peer))),
                    Ok(Some(TurnAttribute::Data(data))),
                ) if self.permissions.iter().any(|p| p.ip() == peer.ip()) => {
                    self.events.push_back(TurnEvent::PeerData {
                        peer,
                        data: data.to_vec(),
                    });
                }
                _ => self.ignore(),
            }
            return;
        }
        if !msg.class().is_response() {
            self.ignore();
            return;
        }
        let Some(at) = self
            .pending
            .iter()
            .position(|p| p.id == msg.transaction_id() && !p.unsent && p.socket == CONTROL_SOCKET)
        else {
            self.ignore();
            return;
        };
        let Some(p) = self.pending.get(at).copied() else {
            return;
        };
        if msg.method() != kind_method(p.kind) {
            self.ignore();
            return;
        }
        // A response that carries MESSAGE-INTEGRITY must verify under our key.
        if msg.class() == Class::Success && !self.integrity_ok(msg) {
            self.ignore();
            return;
        }
        self.pending.swap_remove(at);
        if msg.class() == Class::Success {
            self.success(now, p, msg);
        } else {
            self.error(now, p, msg);
        }
    }

    pub(super) fn error(&mut self, now: Instant, p: Pending, msg: &Message<'_>) {
        let code = msg.error_code().map_or(0, |e| e.code);
        let realm = match codec::find(msg, attr::REALM) {
            Ok(Some(TurnAttribute::Realm(r))) if r.len() <= MAX_CHALLENGE_LEN => Some(r),
            _ => None,
        };
        let nonce = match codec::find(msg, attr::NONCE) {
            Ok(Some(TurnAttribute::Nonce(n))) if n.len() <= MAX_CHALLENGE_LEN => Some(n),
            _ => None,
        };
        let retry = match code {
            error::UNAUTHENTICATED if !p.authenticated => match (realm, nonce) {
                (Some(realm), Some(nonce)) => {
                    let c = &self.config.credentials;
                    self.auth = Some(Auth {
                        realm: realm.to_owned(),
                        nonce: nonce.to_vec(),
                        key: long_term_key(
                            c.username.as_bytes(),
                            realm.as_bytes(),
                            c.password.as_bytes(),
                        ),
                    });
                    Ok(p.stale_retries)
                }
                _ => Err(TurnFailure::BadChallenge),
            },
            error::STALE_NONCE if p.stale_retries < MAX_STALE_NONCE_RETRIES => {
                match (self.auth.as_mut(), nonce) {
                    (Some(auth), Some(nonce)) => {
                        auth.nonce = nonce.to_vec();
                        if let Some(realm) = realm {
                            if realm != auth.realm {
                                let c = &self.config.credentials;
                                auth.realm = realm.to_owned();
                                auth.key = long_term_key(
                                    c.username.as_bytes(),
                                    realm.as_bytes(),
                                    c.password.as_bytes(),
                                );
                            }
                        }
                        Ok(p.stale_retries.saturating_add(1))
                    }
                    _ => Err(TurnFailure::StaleNonce),
                }
            }
            _ => {
                let alternate = msg
                    .attributes()
                    .find(|a| a.code == ALTERNATE_SERVER)
                    .and_then(|a| {
                        match Attribute::parse(stun_attr::MAPPED_ADDRESS, a.value, msg.header()) {
                            Ok(Attribute::MappedAddress(addr)) => Some(addr),
                            _ => None,
                        }
                    });
                Err(TurnFailure::from_code(code, alternate))
            }
        };
        match retry {
            Ok(stale_retries) => {
                let id = self.new_id();
                self.pending.push(Pending {
                    id,
                    socket: p.socket,
                    kind: p.kind,
                    deadline: now.saturating_add(self.config.timeout),
                    stale_retries,
                    authenticated: false,
                    unsent: true,
                });
            }
            Err(failure) => match p.kind {
                Kind::CreatePermission { peer, .. } => {
                    self.permissions.retain(|q| q.ip() != peer.ip());
                    self.events
                        .push_back(TurnEvent::PermissionFailed { peer, failure });
                }
                Kind::Refresh { lifetime: 0 } => self.finish(),
                Kind::Allocate | Kind::Refresh { .. } => self.fail(failure),
                Kind::Connect { peer } => {
                    self.events
                        .push_back(TurnEvent::PeerConnectFailed { peer, failure });
                }
                Kind::ConnectionBind { socket, .. } => {
                    if let Some(at) = self.data.iter().position(|c| c.socket == socket) {
                        self.drop_data(at, failure);
                    }
                }
            },
        }
    }

    /// Writes request `p` into `buf`.
    pub(super) fn encode(&self, p: &Pending, buf: &mut [u8]) -> Option<usize> {
        let header = Header::new(Class::Request, kind_method(p.kind), p.id);
        let mut w = MessageWriter::new(buf, header).ok()?;
        if let Some(s) = self.config.software {
            w.add(&Attribute::Software(s)).ok()?;
        }
        match p.kind {
            Kind::Allocate => {
                let proto = match self.config.transport {
                    RelayTransport::Udp => codec::TRANSPORT_UDP,
                    RelayTransport::Tcp => codec::TRANSPORT_TCP,
                };
                w.add_turn(&header, &TurnAttribute::RequestedTransport(proto))
                    .ok()?;
                if let Some(l) = self.config.lifetime {
                    let secs = u32::try_from(l.as_secs()).unwrap_or(u32::MAX);
                    w.add_turn(&header, &TurnAttribute::Lifetime(secs)).ok()?;
                }
            }
            Kind::Refresh { lifetime } => {
                w.add_turn(&header, &TurnAttribute::Lifetime(lifetime))
                    .ok()?;
            }
            Kind::CreatePermission { peer, .. } | Kind::Connect { peer } => {
                w.add_turn(&header, &TurnAttribute::XorPeerAddress(peer))
                    .ok()?;
            }
            Kind::ConnectionBind { id, .. } => {
                w.add_turn(&header, &TurnAttribute::ConnectionId(id)).ok()?;
            }
        }
        if let Some(auth) = &self.auth {
            w.add(&Attribute::Username(
                self.config.credentials.username.as_bytes(),
            ))
            .ok()?;
            w.add_turn(&header, &TurnAttribute::Realm(&auth.realm))
                .ok()?;
            w.add_turn(&header, &TurnAttribute::Nonce(&auth.nonce))
                .ok()?;
            w.add_message_integrity(&auth.key).ok()?;
        }
        w.add_fingerprint().ok()?;
        Some(w.finish())
    }
}

fn kind_method(kind: Kind) -> Method {
    match kind {
        Kind::Allocate => method::ALLOCATE,
        Kind::Refresh { .. } => method::REFRESH,
        Kind::CreatePermission { .. } => method::CREATE_PERMISSION,
        Kind::Connect { .. } => method::CONNECT,
        Kind::ConnectionBind { .. } => method::CONNECTION_BIND,
    }
}

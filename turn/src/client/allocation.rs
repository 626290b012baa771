//! The allocation: its Allocate and Refresh answers, the refresh timer and the permissions.

use core::net::SocketAddr;
use core::time::Duration;

use p2pd_proto::stun::Message;
use p2pd_proto::Instant;

use super::{
    Kind, Pending, State, TurnClient, TurnError, TurnEvent, TurnFailure, MAX_PERMISSIONS,
    PERMISSION_REFRESH,
};
use crate::codec::{self, attr, TurnAttribute};

impl TurnClient {
    /// Asks for a permission for `peer`'s IP address (RFC 8656 §9); kept refreshed until close.
    /// A peer whose IP already has one is accepted and nothing is sent.
    pub fn create_permission(&mut self, now: Instant, peer: SocketAddr) -> Result<(), TurnError> {
        if self.state != State::Allocated {
            return Err(TurnError::NotAllocated);
        }
        if self.permissions.iter().any(|p| p.ip() == peer.ip()) {
            return Ok(());
        }
        if self.permissions.len() >= MAX_PERMISSIONS {
            return Err(TurnError::TooManyPermissions);
        }
        self.permissions.push(peer);
        let _ = self.start(now, Kind::CreatePermission { peer, first: true });
        self.permissions_at
            .get_or_insert(now.saturating_add(PERMISSION_REFRESH));
        self.update_deadline();
        Ok(())
    }

    pub(super) fn success(&mut self, now: Instant, p: Pending, msg: &Message<'_>) {
        let lifetime = match codec::find(msg, attr::LIFETIME) {
            Ok(Some(TurnAttribute::Lifetime(s))) => Some(Duration::from_secs(u64::from(s))),
            _ => None,
        };
        match p.kind {
            Kind::Allocate => {
                let relayed = match codec::find(msg, attr::XOR_RELAYED_ADDRESS) {
                    Ok(Some(TurnAttribute::XorRelayedAddress(a))) => a,
                    _ => return self.fail(TurnFailure::BadResponse),
                };
                let lifetime = lifetime.unwrap_or(Duration::from_secs(600));
                self.relayed = Some(relayed);
                self.state = State::Allocated;
                self.schedule_refresh(now, lifetime);
                self.events.push_back(TurnEvent::Allocated {
                    relayed,
                    mapped: msg.xor_mapped_address(),
                    lifetime,
                });
            }
            Kind::Refresh { lifetime: 0 } => {
                self.deallocated = true;
                self.finish();
            }
            Kind::Refresh { .. } => {
                let lifetime = lifetime.unwrap_or(Duration::from_secs(600));
                self.stats.refreshes = self.stats.refreshes.saturating_add(1);
                self.schedule_refresh(now, lifetime);
                self.events.push_back(TurnEvent::Refreshed { lifetime });
            }
            Kind::CreatePermission { peer, first } => {
                if first {
                    self.events.push_back(TurnEvent::PermissionCreated { peer });
                }
            }
            Kind::Connect { peer } => match codec::find(msg, attr::CONNECTION_ID) {
                Ok(Some(TurnAttribute::ConnectionId(id))) => self.open_data(now, peer, id),
                _ => self.events.push_back(TurnEvent::PeerConnectFailed {
                    peer,
                    failure: TurnFailure::BadResponse,
                }),
            },
            // Answered on the data connection (`data_stream`), never here.
            Kind::ConnectionBind { .. } => self.ignore(),
        }
    }

    fn schedule_refresh(&mut self, now: Instant, lifetime: Duration) {
        // Half the lifetime, but at least a second (a tiny lifetime must not make us spin).
        let half = lifetime
            .checked_div(2)
            .unwrap_or_default()
            .max(Duration::from_secs(1));
        self.refresh_at = Some(now.saturating_add(half));
    }

    /// The lifetime to ask for in refreshes.
    pub(super) fn requested_lifetime(&self) -> u32 {
        self.config
            .lifetime
            .map_or(600, |l| u32::try_from(l.as_secs()).unwrap_or(u32::MAX))
    }
}

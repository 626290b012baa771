//! Resolution, the ladder's first step: a name is looked up on every PNP server at once (the
//! first verified record whose address carries its owner's key wins, and a fresher address is
//! asked for over signaling in parallel); a key is resolved by asking the peer for its address
//! over signaling; an address needs nothing.

use p2pd_proto::Instant;
use p2pd_signaling::pnp::{PnpClientEvent, PnpFailure};
use p2pd_signaling::{PeerAddress, PublicKey};

use crate::connect::{end_phase, Stage};
use crate::node::Node;
use crate::types::{Phase, PhaseFailure, PhaseOutcome};
use crate::wire::Message;

impl Node {
    /// A PNP lookup's answer.
    pub(crate) fn on_lookup(&mut self, now: Instant, server: usize, ev: &PnpClientEvent) {
        let id = match ev {
            PnpClientEvent::Found { id, .. }
            | PnpClientEvent::NotFound { id, .. }
            | PnpClientEvent::Failed { id, .. } => *id,
            _ => return,
        };
        let Some(connect) = self
            .connects
            .iter_mut()
            .find(|c| c.lookups.contains(&(server, id)))
        else {
            return;
        };
        connect.lookups.retain(|&l| l != (server, id));
        if connect.stage != Stage::Resolving || connect.peer.is_some() {
            return;
        }
        match ev {
            PnpClientEvent::Found { record, .. } => {
                match PeerAddress::from_bytes(record.value()) {
                    Ok(address) if address.public_key == *record.owner() => {
                        connect.key = Some(address.public_key);
                        connect.peer = Some(address);
                        end_phase(connect, Phase::Resolve, now, PhaseOutcome::Done);
                        // A fresher address over signaling, in parallel with the ladder.
                        let nonce = self.rng.next_u64();
                        connect.address_nonce = Some(nonce);
                        let message = Message::AddressRequest { nonce }.encode();
                        let owner = *record.owner();
                        let _ = self.rendezvous.send(now, &owner, None, &message);
                    }
                    _ => connect.lookup_failure = Some(PnpFailure::MalformedReply),
                }
            }
            PnpClientEvent::NotFound { .. } => connect.found_nothing = true,
            PnpClientEvent::Failed { reason, .. } => connect.lookup_failure = Some(reason.clone()),
            _ => {}
        }
        if connect.peer.is_none() && connect.lookups.is_empty() {
            let failure = match (&connect.lookup_failure, connect.found_nothing) {
                (_, true) | (None, false) => PhaseFailure::NameNotFound,
                (Some(PnpFailure::MalformedReply), _) => PhaseFailure::BadAddress,
                (Some(e), false) => PhaseFailure::Lookup(e.clone()),
            };
            end_phase(connect, Phase::Resolve, now, PhaseOutcome::Failed(failure));
        }
    }

    /// A fresh address from the peer (an answer to our request).
    pub(crate) fn on_address_reply(
        &mut self,
        now: Instant,
        from: PublicKey,
        nonce: u64,
        address: PeerAddress,
    ) {
        if address.public_key != from {
            self.stats.bad_messages = self.stats.bad_messages.saturating_add(1);
            return;
        }
        for connect in &mut self.connects {
            if connect.address_nonce != Some(nonce) || connect.key.is_some_and(|k| k != from) {
                continue;
            }
            connect.address_nonce = None;
            match connect.stage {
                Stage::Resolving if connect.peer.is_none() => {
                    connect.key = Some(from);
                    connect.peer = Some(address.clone());
                    end_phase(connect, Phase::Resolve, now, PhaseOutcome::Done);
                }
                // The ladder runs already: later phases use the fresher address.
                Stage::Resolving | Stage::PhaseA { .. } => connect.peer = Some(address.clone()),
                Stage::PhaseB | Stage::PhaseC { .. } | Stage::Done => {}
            }
        }
    }
}

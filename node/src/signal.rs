//! What arrives over signaling and from the PNP servers: punch messages to their punch, the
//! node's own messages (fresh-address requests and replies, reverse requests), registrations
//! and lookups.

use p2pd_proto::Instant;
use p2pd_signaling::pnp::PnpClientEvent;
use p2pd_signaling::rendezvous::RendezvousEvent;
use p2pd_signaling::PublicKey;

use crate::node::Node;
use crate::types::NodeEvent;
use crate::wire::{Message, TAG};

impl Node {
    pub(crate) fn on_rendezvous(&mut self, now: Instant, ev: RendezvousEvent) {
        match ev {
            RendezvousEvent::Message { from, payload, .. } => match payload.first() {
                Some(&p2pd_punch::message::TAG) => self.on_punch_signal(now, from, &payload),
                Some(&TAG) => match Message::decode(&payload) {
                    Some(m) => self.on_message(now, from, m),
                    None => self.stats.bad_messages = self.stats.bad_messages.saturating_add(1),
                },
                _ => self.stats.bad_messages = self.stats.bad_messages.saturating_add(1),
            },
            RendezvousEvent::Closed => self.rendezvous_closed = true,
            ev @ RendezvousEvent::Listening { .. } => {
                self.events.push_back(NodeEvent::Signaling(ev));
                self.try_ready();
            }
            ev @ (RendezvousEvent::BrokerUp { .. } | RendezvousEvent::BrokerDown { .. }) => {
                self.events.push_back(NodeEvent::Signaling(ev))
            }
            _ => {}
        }
    }

    fn on_message(&mut self, now: Instant, from: PublicKey, message: Message) {
        match message {
            Message::AddressRequest { nonce } => {
                if !self.accepts(&from) {
                    return;
                }
                if let Some(address) = self.own.address.clone() {
                    let reply = Message::AddressReply {
                        nonce,
                        address: Box::new(address),
                    };
                    let _ = self.rendezvous.send(now, &from, None, &reply.encode());
                }
            }
            Message::AddressReply { nonce, address } => {
                self.on_address_reply(now, from, nonce, *address)
            }
            Message::ReverseRequest { token, address } => {
                self.on_reverse_request(now, from, token, *address)
            }
            Message::ReverseFailed { token } => self.reverse_failed(now, from, token),
            Message::RelayOffer { token, relayed } => {
                self.on_relay_offer(now, from, token, relayed)
            }
            Message::RelayFailed { token } => self.relay_offer_failed(now, from, token),
        }
    }

    pub(crate) fn on_pnp(&mut self, now: Instant, server: usize, ev: PnpClientEvent) {
        match &ev {
            PnpClientEvent::Closed => self.pnp_closed = self.pnp_closed.saturating_add(1),
            PnpClientEvent::Registered { .. } => self.on_registration(now, server, &ev),
            PnpClientEvent::Failed { .. } => {
                self.on_registration(now, server, &ev);
                self.on_lookup(now, server, &ev);
            }
            _ => self.on_lookup(now, server, &ev),
        }
    }
}

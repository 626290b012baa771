//! # p2pd-signaling
//!
//! Encrypted signaling between nodes: identities, sealed envelopes, an MQTT client machine,
//! multi-broker rendezvous, the PNP name registry and the peer address format.
//!
//! - [`Identity`] / [`PublicKey`] / [`NodeId`]: secp256k1 key pairs (k256) and the node id derived
//!   from the public key (first 20 bytes of SHA-256 over the compressed key).
//! - [`seal`] / [`Opener`]: the sealed [`envelope`] (wire format v1, documented there):
//!   ECIES-encrypted to the recipient, ECDSA-signed by the sender, with a timestamp and nonce that
//!   the [`Opener`] checks against a freshness window and a bounded replay cache.
//! - [`mqtt`]: the MQTT codec ([`MqttPacket`], [`MqttDecoder`]: bounded streaming decode, MQTT
//!   3.1.1 and 5) and the sans-IO [`MqttClient`] machine (QoS 0/1, keep-alive, reconnect with
//!   back-off and jitter, bounded queues).
//! - [`rendezvous`]: the [`Rendezvous`] machine: a node's topic from its id, every message sealed
//!   once and published on every broker, de-duplicated on receipt, brokers named by canonical
//!   [`BrokerId`]s with per-broker health.
//! - [`pnp`]: the PNP name registry ([`PnpServer`] over UDP and length-prefixed TCP with a
//!   [`NameStore`] trait, [`PnpClient`]): owner-signed records, expiry, increasing versions, a
//!   server-time window, quotas, bounded replies.
//! - [`PeerAddress`]: the versioned, canonical peer [`address`] format (binary and `p2pd1:` text).
//!
//! Like every protocol crate this one does no I/O, reads no clock and no global RNG: time
//! (`now_ms`, Unix milliseconds) and randomness (key bytes, nonces) are passed in.
//!
//! Runnable examples: `cargo run -p p2pd-signaling --example rendezvous_in_memory` (identities,
//! seal/open, then two [`Rendezvous`] machines exchanging a message through a tiny in-memory MQTT
//! broker built on the codec) and `cargo run -p p2pd-signaling --example pnp_in_memory` (register
//! and look up a name with [`PnpClient`] and [`PnpServer`] over an in-memory network).
//!
//! ```
//! use p2pd_signaling::{seal, Identity, Opener};
//! let alice = Identity::from_secret_bytes(&[1; 32]).unwrap();
//! let bob = Identity::from_secret_bytes(&[2; 32]).unwrap();
//! let now = 1_700_000_000_000;
//! let bytes = seal(&alice, &bob.public_key(), now, [7; 16], b"hello").unwrap();
//! let mut opener = Opener::new(1024);
//! let opened = opener.open(&bob, now + 10, &bytes).unwrap();
//! assert_eq!(opened.payload, b"hello");
//! assert_eq!(opened.sender, alice.public_key());
//! ```
#![forbid(unsafe_code)]
// Strict lints: [workspace.lints] in the root Cargo.toml. Unit tests may also do unchecked
// arithmetic (clippy.toml lets them unwrap, expect, panic and index).
#![cfg_attr(test, allow(clippy::arithmetic_side_effects))]
#![warn(missing_docs)]

pub mod address;
mod ecies;
pub mod envelope;
mod identity;
pub mod mqtt;
pub mod pnp;
pub mod rendezvous;

pub use address::{
    AddressError, BrokerId, Endpoint, Interface, InterfaceLabel, NatInfo, Part, PeerAddress,
};
pub use envelope::{seal, OpenError, Opened, Opener, SealError};
pub use identity::{
    Identity, InvalidKey, NodeId, PublicKey, NODE_ID_LEN, PUBLIC_KEY_LEN, SECRET_KEY_LEN,
    SIGNATURE_LEN,
};
pub use mqtt::client::{MqttClient, MqttConfig, MqttEvent};
pub use mqtt::codec::{CodecError as MqttCodecError, Decoder as MqttDecoder, Packet as MqttPacket};
pub use p2pd_proto::{Instant, Machine, SocketId};
pub use pnp::{MemoryStore, NameStore, PnpClient, PnpServer};
pub use rendezvous::{BrokerSpec, Rendezvous, RendezvousConfig, RendezvousEvent};

#[cfg(test)]
mod tests;

//! MQTT for signaling.
//!
//! Only [`codec`] exists today: our own packet types and a streaming, size-bounded decoder
//! over the pinned `mqttbytes-ng` crate, which nothing outside [`codec`] touches. The sans-IO
//! client machine (CONNECT, SUBSCRIBE QoS 1, PUBLISH, PUBACK, keep-alive) comes next.

pub mod client;
pub mod codec;

pub use codec::{encode, CodecError, Decoder, Packet, Protocol, QoS};

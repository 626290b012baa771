//! MQTT for signaling.
//!
//! - [`codec`]: our own packet types and a streaming, size-bounded decoder over the pinned
//!   `mqttbytes-ng` crate, which nothing outside [`codec`] touches (MQTT 3.1.1 and 5).
//! - [`client`]: the sans-IO client machine ([`MqttClient`]): CONNECT (5 with fallback to
//!   3.1.1), SUBSCRIBE, PUBLISH QoS 0/1 with PUBACK tracking and DUP resend, keep-alive,
//!   connect timeout, reconnect with back-off and jitter, bounded queues, idempotent close.

pub mod client;
pub mod codec;

pub use client::{
    DisconnectReason, MqttClient, MqttConfig, MqttEvent, MqttStats, PublishError, PublishId,
    SubscribeError,
};
pub use codec::{
    encode, CodecError, ConnAckProperties, Decoded, Decoder, Packet, Protocol, QoS, RetainHandling,
    SkippedPublish, SubscribeFilter,
};

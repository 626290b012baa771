//! Encoded sizes and name checks, so `publish` and `subscribe` refuse bad input up front.

use crate::mqtt::codec::{Protocol, QoS};

/// Largest remaining length MQTT can express.
const MAX_REMAINING_LEN: usize = 268_435_455;

/// Whole packet size (fixed header included) for a `remaining` length, `None` if too large.
fn frame_size(remaining: usize) -> Option<usize> {
    if remaining > MAX_REMAINING_LEN {
        return None;
    }
    // One type byte and one to four remaining-length bytes.
    let header = match remaining {
        0..=127 => 2,
        128..=16_383 => 3,
        16_384..=2_097_151 => 4,
        _ => 5,
    };
    remaining.checked_add(header)
}

/// Bytes of the (empty) property block in MQTT 5.
fn properties_len(protocol: Protocol) -> usize {
    match protocol {
        Protocol::V311 => 0,
        Protocol::V5 => 1,
    }
}

/// Size of the PUBLISH our codec writes for these lengths (no properties).
pub(super) fn publish_size(
    protocol: Protocol,
    topic_len: usize,
    qos: QoS,
    payload_len: usize,
) -> Option<usize> {
    // Topic length prefix, plus the packet id above QoS 0.
    let fixed = if qos == QoS::AtMostOnce { 2 } else { 4 };
    let remaining = topic_len
        .checked_add(fixed)?
        .checked_add(properties_len(protocol))?
        .checked_add(payload_len)?;
    frame_size(remaining)
}

/// Size of a one-filter SUBSCRIBE our codec writes (no properties).
pub(super) fn subscribe_size(protocol: Protocol, filter_len: usize) -> Option<usize> {
    // Packet id, properties, filter length prefix, filter, options byte.
    let remaining = filter_len
        .checked_add(5)?
        .checked_add(properties_len(protocol))?;
    frame_size(remaining)
}

/// A PUBLISH topic name: non-empty, at most 65535 bytes, no wildcard, no NUL.
pub(super) fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= usize::from(u16::MAX) && !topic.contains(['+', '#', '\0'])
}

/// A SUBSCRIBE topic filter: non-empty, at most 65535 bytes, no NUL (wildcards are the
/// broker's to judge).
pub(super) fn valid_filter(filter: &str) -> bool {
    !filter.is_empty() && filter.len() <= usize::from(u16::MAX) && !filter.contains('\0')
}

//! What the broker reads before and besides the codec: the protocol level of a CONNECT, topic
//! filters and how they match topics.

/// What the first bytes of a connection say about its CONNECT.
pub(super) enum Level {
    /// Not enough bytes yet.
    NeedMore,
    /// The first packet is not a CONNECT of MQTT.
    NotConnect,
    /// The protocol level byte.
    Is(u8),
}

/// The protocol level of the CONNECT at the start of `pre`: fixed header 0x10, remaining length,
/// then the protocol name (length 4, "MQTT") and the level byte.
pub(super) fn connect_level(pre: &[u8]) -> Level {
    let Some(&first) = pre.first() else {
        return Level::NeedMore;
    };
    if first != 0x10 {
        return Level::NotConnect;
    }
    let mut header = 1;
    loop {
        let Some(&b) = pre.get(header) else {
            return Level::NeedMore;
        };
        header += 1;
        if b & 0x80 == 0 {
            break;
        }
        if header > 4 {
            return Level::NotConnect;
        }
    }
    let Some(name) = pre.get(header..header + 6) else {
        return Level::NeedMore;
    };
    if name != [0, 4, b'M', b'Q', b'T', b'T'] {
        return Level::NotConnect;
    }
    match pre.get(header + 6) {
        None => Level::NeedMore,
        Some(&level) => Level::Is(level),
    }
}

/// A topic filter: non-empty, `#` only as the last level, `+` and `#` alone in their level.
pub(super) fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i + 1 == levels.len(),
        "+" => true,
        l => !l.contains(['+', '#']),
    })
}

/// Whether `topic` matches `filter` (`+` one level, `#` the rest; `$` topics only explicitly).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pd_signaling::mqtt::codec::{encode, Packet, Protocol};

    #[test]
    fn filters_match_topics() {
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/b", "a/c"));
        assert!(topic_matches("a/+", "a/c"));
        assert!(!topic_matches("a/+", "a/c/d"));
        assert!(topic_matches("a/#", "a/c/d"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("#", "x/y"));
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(valid_filter("a/+/#"));
        assert!(!valid_filter("a/#/b"));
        assert!(!valid_filter("a+/b"));
        assert!(!valid_filter(""));
    }

    #[test]
    fn connect_level_is_read_from_the_header() {
        let mut wire = Vec::new();
        let connect = Packet::Connect {
            client_id: "c".into(),
            keep_alive: 30,
            clean_session: true,
            protocol: Protocol::V5,
            max_packet_size: Some(1024),
        };
        encode(&connect, Protocol::V5, &mut wire).unwrap();
        assert!(matches!(connect_level(&wire), Level::Is(5)));
        assert!(matches!(connect_level(&wire[..8]), Level::NeedMore));
        assert!(matches!(connect_level(&[0x30, 0]), Level::NotConnect));
    }
}

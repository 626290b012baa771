//! A configured TURN relay ([`crate::config::Relay`]) as the TURN client's settings
//! ([`p2pd_turn::TurnConfig`]): its address resolved, and its credentials ([`credentials`]),
//! long-term ones as given, or TURN REST API ones derived from the shared secret for
//! [`REST_TTL`] under the user name [`rest_user`] (the node id in hex, else [`DEFAULT_REST_USER`]).
//!
//! `p2pd servers` allocates with these settings; the node commands use the same function.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use p2pd_signaling::NodeId;
use p2pd_turn::{CredentialSource, Credentials, TurnConfig};

use crate::config::{Relay, RelayAuth};

/// How long TURN REST API credentials stay valid: one hour.
pub const REST_TTL: Duration = Duration::from_secs(3600);

/// The TURN REST API user name without a node identity.
pub const DEFAULT_REST_USER: &str = "p2pd";

/// The user part of TURN REST API credentials: `node`'s id in hex, else [`DEFAULT_REST_USER`].
pub fn rest_user(node: Option<&NodeId>) -> String {
    node.map_or_else(|| DEFAULT_REST_USER.to_string(), NodeId::to_string)
}

/// The credentials for `relay`: long-term ones as configured, or TURN REST API ones from its
/// secret, valid for [`REST_TTL`] from `unix_now` (seconds since the epoch), for
/// [`rest_user`]`(node)`.
pub fn credentials(relay: &Relay, node: Option<&NodeId>, unix_now: u64) -> Credentials {
    credential_source(relay, node).credentials(unix_now)
}

/// Where `relay`'s credentials come from: long-term ones as configured, or TURN REST API ones
/// from its secret for [`rest_user`]`(node)`, each set valid for [`REST_TTL`] (a node makes a
/// fresh set for every allocation).
pub fn credential_source(relay: &Relay, node: Option<&NodeId>) -> CredentialSource {
    match &relay.auth {
        RelayAuth::Secret(secret) => CredentialSource::Rest {
            secret: secret.as_bytes().to_vec(),
            user: rest_user(node),
            ttl: REST_TTL,
        },
        RelayAuth::Credentials { username, password } => {
            CredentialSource::LongTerm(Credentials::long_term(username.clone(), password.clone()))
        }
    }
}

/// The TURN client's settings for `relay`: its address resolved (a host name too, preferring
/// IPv4), any local address of that family, and [`credentials`]. The rest is
/// [`TurnConfig::new`]'s (a TCP allocation, 10 s per step). Fails only when the address does not
/// resolve.
pub fn turn_config(
    relay: &Relay,
    node: Option<&NodeId>,
    unix_now: u64,
) -> Result<TurnConfig, String> {
    let server = relay.address.resolve()?;
    let local = match server {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    Ok(TurnConfig::new(
        server,
        local,
        credentials(relay, node, unix_now),
    ))
}

/// The node id of the identity file at `path`, if it can be read (else `None`: the caller uses
/// [`DEFAULT_REST_USER`]).
pub fn node_id_of(path: &Path) -> Option<NodeId> {
    if !path.is_file() {
        return None;
    }
    crate::identity_file::read_identity(path)
        .ok()
        .map(|identity| identity.node_id())
}

/// Seconds since the unix epoch, by the wall clock (0 before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Endpoint;
    use p2pd_turn::RelayTransport;

    fn relay(address: &str, auth: RelayAuth) -> Relay {
        Relay {
            address: Endpoint::parse(address, 3478).unwrap(),
            auth,
        }
    }

    #[test]
    fn long_term_credentials_are_taken_as_given() {
        let r = relay(
            "192.0.2.1",
            RelayAuth::Credentials {
                username: "u".into(),
                password: "p".into(),
            },
        );
        let c = credentials(&r, None, 1_700_000_000);
        assert_eq!(c, Credentials::long_term("u", "p"));
        // The node id does not change them.
        let node = NodeId([7; 20]);
        assert_eq!(credentials(&r, Some(&node), 0), c);
    }

    #[test]
    fn rest_credentials_expire_in_an_hour_under_the_node_id() {
        let r = relay("192.0.2.1", RelayAuth::Secret("s3cret".into()));
        let now = 1_700_000_000;
        let node = NodeId([0xab; 20]);
        let c = credentials(&r, Some(&node), now);
        assert_eq!(
            c,
            Credentials::rest(b"s3cret", &"ab".repeat(20), now, REST_TTL)
        );
        assert_eq!(c.username, format!("{}:{}", now + 3600, "ab".repeat(20)));
        assert!(!c.password.is_empty());
        // Without an identity the user is "p2pd".
        let anon = credentials(&r, None, now);
        assert_eq!(anon.username, format!("{}:p2pd", now + 3600));
        assert_eq!(anon, Credentials::rest(b"s3cret", "p2pd", now, REST_TTL));
        // Another secret, another password.
        let other = relay("192.0.2.1", RelayAuth::Secret("other".into()));
        assert_ne!(credentials(&other, None, now).password, anon.password);
    }

    #[test]
    fn turn_config_resolves_the_address() {
        let r = relay("192.0.2.1:5349", RelayAuth::Secret("s".into()));
        let c = turn_config(&r, None, 10).unwrap();
        assert_eq!(c.server, "192.0.2.1:5349".parse().unwrap());
        assert_eq!(c.local, "0.0.0.0:0".parse().unwrap());
        assert_eq!(c.transport, RelayTransport::Tcp);
        assert_eq!(c.credentials, credentials(&r, None, 10));
        let r6 = relay("[2001:db8::1]", RelayAuth::Secret("s".into()));
        let c6 = turn_config(&r6, None, 10).unwrap();
        assert_eq!(c6.server, "[2001:db8::1]:3478".parse().unwrap());
        assert_eq!(c6.local, "[::]:0".parse().unwrap());
        let named = relay("localhost:3478", RelayAuth::Secret("s".into()));
        assert_eq!(turn_config(&named, None, 10).unwrap().server.port(), 3478);
    }

    #[test]
    fn node_id_of_a_missing_or_bad_file_is_none() {
        let dir = crate::test_dir("relay-node-id");
        assert_eq!(node_id_of(&dir.path().join("none.key")), None);
        assert_eq!(node_id_of(dir.path()), None);
        let identity = crate::identity_file::generate_identity().unwrap();
        let path = dir.path().join("id.key");
        crate::identity_file::write_identity(&path, &identity, false).unwrap();
        assert_eq!(node_id_of(&path), Some(identity.node_id()));
    }
}

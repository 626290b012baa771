//! [`TurnServerConfig`]: how a [`TurnServer`](super::TurnServer) runs.

use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::time::Duration;

/// How a [`TurnServer`](super::TurnServer) runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnServerConfig {
    /// The address it listens on for control and data connections (port 3478 by default).
    pub listen: SocketAddr,
    /// The IP relayed listeners and outgoing peer connections are bound to (`None`: the listen
    /// IP).
    pub relay_ip: Option<IpAddr>,
    /// The REALM.
    pub realm: String,
    /// The TURN REST API shared secret (`None`: REST usernames are not accepted).
    pub rest_secret: Option<Vec<u8>>,
    /// Static long-term users: (username, password).
    pub users: Vec<(String, String)>,
    /// Unix time (seconds) at [`Instant::ZERO`](p2pd_proto::Instant::ZERO): REST usernames expire on this clock.
    pub unix_now: u64,
    /// How long a nonce is good for; an older one gets 438 Stale Nonce.
    pub nonce_lifetime: Duration,
    /// The lifetime granted when none (or a shorter one) is asked for.
    pub default_lifetime: Duration,
    /// The longest lifetime granted.
    pub max_lifetime: Duration,
    /// Most allocations at once (486 beyond).
    pub max_allocations: usize,
    /// Most TCP connections at once, of every kind (control, data, peer).
    pub max_connections: usize,
    /// Most permissions per allocation.
    pub max_permissions: usize,
    /// Most peer connections per allocation (waiting for ConnectionBind or spliced).
    pub max_peers_per_allocation: usize,
    /// Most bytes held from a peer before its ConnectionBind; beyond, the peer is closed.
    pub max_peer_buffer: usize,
    /// How long a peer connection waits for its ConnectionBind.
    pub bind_timeout: Duration,
    /// How long a connection with no allocation and no splice may stay.
    pub idle_timeout: Duration,
    /// The listen backlog (also of relayed listeners).
    pub backlog: u32,
}

impl TurnServerConfig {
    /// The defaults on `listen`, realm `realm`, with no credentials yet.
    pub fn new(listen: SocketAddr, realm: impl Into<String>) -> Self {
        TurnServerConfig {
            listen,
            realm: realm.into(),
            ..TurnServerConfig::default()
        }
    }

    /// Adds the TURN REST API shared secret.
    pub fn with_rest_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.rest_secret = Some(secret.into());
        self
    }

    /// Adds a static user.
    pub fn with_user(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.users.push((username.into(), password.into()));
        self
    }

    /// The IP relayed addresses live on.
    pub(super) fn relay_ip(&self) -> IpAddr {
        self.relay_ip.unwrap_or(self.listen.ip())
    }
}

impl Default for TurnServerConfig {
    fn default() -> Self {
        TurnServerConfig {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 3478)),
            relay_ip: None,
            realm: "p2pd.sim".to_string(),
            rest_secret: None,
            users: Vec::new(),
            unix_now: 1_700_000_000,
            nonce_lifetime: Duration::from_secs(600),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            max_allocations: 64,
            max_connections: 256,
            max_permissions: 32,
            max_peers_per_allocation: 16,
            max_peer_buffer: 64 * 1024,
            bind_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            backlog: 64,
        }
    }
}

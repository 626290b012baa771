//! How a [`Node`](crate::Node) runs.

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;

use p2pd_channel::ChannelConfig;
use p2pd_nat::{ClassifierConfig, ServerSpec};
use p2pd_punch::PunchConfig;
use p2pd_signaling::pnp::{Name, PnpClientConfig, PnpTransport};
use p2pd_signaling::rendezvous::RendezvousConfig;
use p2pd_signaling::PublicKey;
use p2pd_signaling::{NatInfo, NodeId};
use p2pd_turn::CredentialSource;

/// Where the node's NAT behaviour comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum NatSource {
    /// Classify at start with these RFC 5780 STUN servers (over UDP).
    Classify(Vec<ServerSpec>),
    /// Known already (`None`: unknown, never punch).
    Known(Option<NatInfo>),
}

/// A TURN relay for phase C of the ladder (an RFC 6062 TCP allocation on it carries the stream).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelaySpec {
    /// The server's address (TURN over TCP).
    pub server: SocketAddr,
    /// Its credentials (REST ones are made afresh for each allocation).
    pub credentials: CredentialSource,
}

/// A node's settings. [`NodeConfig::new`] gives defaults.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeConfig {
    /// Signaling: the brokers (the node's topic is derived from its key).
    pub rendezvous: RendezvousConfig,
    /// The PNP servers (names are registered on all of them and looked up on all of them).
    pub pnp: Vec<PnpClientConfig>,
    /// Our name, registered (and refreshed) on every PNP server.
    pub name: Option<Name>,
    /// How long a registration is valid; it is refreshed at half of it.
    pub registration_ttl: Duration,
    /// The local IP the node binds and announces (an unspecified IP binds every interface
    /// and announces only the external address).
    pub local_ip: IpAddr,
    /// The listener's port (0: any free port).
    pub listen_port: u16,
    /// A STUN server reachable over TCP: it tells the listener's external address (and the punch
    /// probes' mappings). `None`: only local addresses are announced and the punch is off.
    pub stun_tcp: Option<SocketAddr>,
    /// Where our NAT behaviour comes from.
    pub nat: NatSource,
    /// The classifier's settings (with [`NatSource::Classify`]).
    pub classifier: ClassifierConfig,
    /// Phase A's budget: direct dials and the reverse request race within it.
    pub direct_budget: Duration,
    /// How long name resolution (PNP lookups, or the fresh address asked for over signaling)
    /// may take.
    pub resolve_timeout: Duration,
    /// The punch's settings (`node_id` and `unix_epoch_ns` are set by the node).
    pub punch: PunchConfig,
    /// The secure channel's settings (both peers must agree on `max_frame`).
    pub channel: ChannelConfig,
    /// Accept inbound streams only from these identities (`None`: from anyone who proves an
    /// identity).
    pub accept_from: Option<Vec<NodeId>>,
    /// The TURN relays for phase C, in order of preference: a relay that refuses, cannot be
    /// reached or times out is followed by the next. Empty: no relaying.
    pub relays: Vec<RelaySpec>,
    /// Phase C's budget per relay: each step of the allocation, and the wait for the peer to
    /// come through the relay once it has the relayed address.
    pub relay_timeout: Duration,
    /// Most connects in progress at once.
    pub max_connects: usize,
    /// Most inbound connections still in their preface or handshake (the oldest is dropped for a
    /// newcomer).
    pub max_handshakes: usize,
    /// Most open streams.
    pub max_streams: usize,
}

impl NodeConfig {
    /// Defaults for these brokers and PNP servers: no name, 10 min registrations, any local IP
    /// and port, no STUN, unknown NAT, 3 s phase A, 5 s resolution, no relay (5 s per relay
    /// step), at most 16 connects, 32
    /// handshakes and 256 streams.
    pub fn new(rendezvous: RendezvousConfig, pnp: Vec<PnpClientConfig>) -> Self {
        let epoch_ns = rendezvous.unix_epoch_ms.saturating_mul(1_000_000);
        NodeConfig {
            rendezvous,
            pnp,
            name: None,
            registration_ttl: Duration::from_secs(600),
            local_ip: IpAddr::from([0, 0, 0, 0]),
            listen_port: 0,
            stun_tcp: None,
            nat: NatSource::Known(None),
            classifier: ClassifierConfig::default(),
            direct_budget: Duration::from_secs(3),
            resolve_timeout: Duration::from_secs(5),
            punch: PunchConfig::new(NodeId([0; p2pd_signaling::NODE_ID_LEN]), epoch_ns),
            channel: ChannelConfig::default(),
            accept_from: None,
            relays: Vec::new(),
            relay_timeout: Duration::from_secs(5),
            max_connects: 16,
            max_handshakes: 32,
            max_streams: 256,
        }
    }
}

/// A PNP client's settings as a node uses them: over UDP, its first retransmission after 250 ms
/// (doubling), so five transmissions fit in the 5 s a resolution may take (a lookup survives
/// heavy loss on the path; the client's own default sends four).
pub fn pnp_client_config(
    server: SocketAddr,
    key: PublicKey,
    unix_epoch_ms: u64,
) -> PnpClientConfig {
    let mut c = PnpClientConfig::new(server, key, PnpTransport::Udp, unix_epoch_ms);
    c.retransmit = Duration::from_millis(250);
    c.max_retransmits = 6;
    c.timeout = Duration::from_secs(5);
    c
}

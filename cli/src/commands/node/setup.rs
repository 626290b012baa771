//! The node's configuration from the configuration file and the command line: brokers, STUN
//! servers (the first one over TCP for the listener's address and the punch, all of them for
//! classifying the NAT), PNP servers with their keys, the local IP and listener port.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use p2pd_node::{NatSource, NodeConfig};
use p2pd_signaling::pnp::PnpServerId;
use p2pd_signaling::rendezvous::RendezvousConfig;
use p2pd_signaling::Identity;

use super::health::{self, NodeHealth};
use crate::health_store::ServerKind;
use crate::identity_file::{default_identity_path, read_identity};

/// Options shared by `p2pd node` and `p2pd connect`.
#[derive(Debug, Args)]
pub struct NodeOptions {
    /// The identity file (default: $P2PD_IDENTITY, else ~/.config/p2pd/identity.key).
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// An MQTT broker, HOST[:PORT] (repeat for more). Default: the configuration's brokers.
    #[arg(long = "broker")]
    pub brokers: Vec<String>,
    /// A STUN server, HOST[:PORT] (repeat for more; the first must answer over TCP too).
    /// Default: the configuration's STUN servers.
    #[arg(long = "stun")]
    pub stun: Vec<String>,
    /// The local IP to bind and announce (default: the one that routes to the first STUN
    /// server).
    #[arg(long)]
    pub local_ip: Option<IpAddr>,
    /// The listener's port (0 to 65535; 0, the default, picks a free port).
    #[arg(long, default_value = "0")]
    pub listen_port: u16,
    /// Status lines on stderr as JSON objects (one per line, with an `event` field).
    #[arg(long)]
    pub json: bool,
}

/// What the commands need to start a node.
pub struct Setup {
    /// The identity read from the identity file.
    pub identity: Identity,
    /// The node's configuration.
    pub config: NodeConfig,
    /// The server health file, for the records of this run.
    pub health: NodeHealth,
}

/// Builds the node's configuration (`unix_epoch_ms`: the runtime's wall clock at its epoch).
pub fn setup(
    command: &str,
    options: &NodeOptions,
    config_flag: Option<&Path>,
    unix_epoch_ms: u64,
) -> Result<Setup, String> {
    let path = options
        .identity
        .clone()
        .unwrap_or_else(default_identity_path);
    let identity =
        read_identity(&path).map_err(|e| format!("{e} (create one with `p2pd id new`)"))?;
    let loaded = crate::config::load(config_flag)?;
    let brokers: Vec<String> = if options.brokers.is_empty() {
        loaded
            .config
            .brokers
            .iter()
            .map(|e| e.text.clone())
            .collect()
    } else {
        options.brokers.clone()
    };
    if brokers.is_empty() {
        return Err(format!(
            "no broker: give --broker, or list brokers in the configuration ({})",
            loaded.source
        ));
    }
    let mut health = NodeHealth::open(&health::path_beside(&path));
    let brokers = super::super::signal::parse_brokers(&brokers)?;
    for b in &brokers {
        health.name(ServerKind::Mqtt, b.id.as_u64(), &b.address.to_string());
    }
    let stun_texts: Vec<String> = if options.stun.is_empty() {
        loaded.config.stun.iter().map(|e| e.text.clone()).collect()
    } else {
        options.stun.clone()
    };
    // Freshest first: the classifier takes the first ones, and the first answers over TCP too
    // (the freshest over TCP of them).
    let mut stun_texts = health.rank_stun(ServerKind::StunUdp, &stun_texts);
    if let Some(best_tcp) = health.rank_stun(ServerKind::StunTcp, &stun_texts).first() {
        if let Some(pos) = stun_texts.iter().position(|t| t == best_tcp) {
            let t = stun_texts.remove(pos);
            stun_texts.insert(0, t);
        }
    }
    let mut servers = Vec::new();
    for text in &stun_texts {
        servers.push(super::super::nat::server_spec(text)?);
    }
    let first = servers.first().map(|s| s.primary).ok_or_else(|| {
        format!("{command}: no STUN server: give --stun, or list stun servers in the configuration")
    })?;
    let mut pnp = Vec::new();
    for server in &loaded.config.pnp {
        let address = server.address.resolve()?;
        health.name(
            ServerKind::Pnp,
            PnpServerId::new(address, &server.key).0,
            &server.address.text,
        );
        pnp.push(p2pd_node::pnp_client_config(
            address,
            server.key,
            unix_epoch_ms,
        ));
    }
    let local_ip = match options.local_ip {
        Some(ip) => ip,
        None => super::super::nat::route_local_ip(first, None)?,
    };
    let mut rendezvous = RendezvousConfig::new(brokers, unix_epoch_ms);
    rendezvous.mqtt.backoff_max = Duration::from_secs(5);
    let mut config = NodeConfig::new(rendezvous, pnp);
    config.local_ip = local_ip;
    config.listen_port = options.listen_port;
    config.stun_tcp = Some(first);
    config.nat = NatSource::Classify(servers);
    config.classifier.local_ip = local_ip;
    // Phase C: the configured relays in file order, REST credentials made per allocation for
    // our node id.
    for relay in &loaded.config.relay {
        config.relays.push(p2pd_node::RelaySpec {
            server: relay.address.resolve()?,
            credentials: crate::relay::credential_source(relay, Some(&identity.node_id())),
        });
    }
    Ok(Setup {
        identity,
        config,
        health,
    })
}

/// The first address of `text` (HOST:PORT) for `--forward`.
pub fn forward_address(text: &str) -> Result<SocketAddr, String> {
    super::super::resolve(text, 0).and_then(|a| {
        if a.port() == 0 {
            Err(format!("{}: give a port", super::super::quoted(text)))
        } else {
            Ok(a)
        }
    })
}

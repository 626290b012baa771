//! The sub-commands of `p2pd`: one module per job, human output by default, `--json` for scripts.

pub mod config;
pub mod id;
pub mod name;
pub mod nat;
pub mod node;
pub mod ntp;
pub mod numbers;
pub mod pnp_server;
pub mod punch;
pub mod report;
pub mod servers;
pub mod signal;
pub mod sim;
pub mod stdin_relay;
pub mod stop_signal;
pub mod stun;
pub mod stun_server;
pub mod tcp_limits;

use std::net::{SocketAddr, ToSocketAddrs};

use p2pd_proto::InterfaceName;

/// The default STUN port.
pub const STUN_PORT: u16 = 3478;

/// Resolves `HOST[:PORT]` (IPv6 literals as `[::1]:3478` or bare `::1`), preferring IPv4.
pub fn resolve(target: &str, default_port: u16) -> Result<SocketAddr, String> {
    if let Ok(a) = target.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = target.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let with_port = if target
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        target.to_string()
    } else {
        format!("{target}:{default_port}")
    };
    let addrs: Vec<SocketAddr> = with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {target}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{target} has no addresses"))
}

/// `text` in double quotes, with quotes, backslashes and control characters escaped (for user
/// input in error messages).
pub fn quoted(text: &str) -> String {
    format!("\"{}\"", text.escape_debug())
}

/// Parses an interface name for `--interface`.
pub fn interface(name: &str) -> Result<InterfaceName, String> {
    InterfaceName::new(name).ok_or_else(|| {
        format!(
            "invalid interface name {} (1 to {} bytes, no '/' or NUL)",
            quoted(name),
            InterfaceName::MAX_LEN
        )
    })
}

//! The loopback lab of the node tests (`node_connect`, `node_forward`, `node_soak_real`): real
//! servers as child processes and a configuration file naming them (the running `p2pd` whose
//! JSON status lines are collected is `node_proc::Proc`).
#![allow(dead_code)]

use super::procs::{start_pnp, start_stun_rfc5780};
use super::{identity, Mosquitto, Scratch};

/// The servers and a configuration file naming them.
pub struct Lab {
    /// Scratch directory (identity files, the name store).
    pub dir: Scratch,
    /// The configuration file naming the servers.
    pub config: std::path::PathBuf,
    _servers: Vec<super::procs::Server>,
    _broker: Mosquitto,
}

/// Starts mosquitto, our STUN server (UDP + TCP, RFC 5780 on 127.0.0.1 + 127.0.0.2) and our PNP
/// server (key `[0x71; 32]`) as child processes and writes the configuration file; `None` when
/// mosquitto is not installed.
pub fn lab(tag: &str) -> Option<Lab> {
    let broker = Mosquitto::start()?;
    let dir = Scratch::new(tag);
    let (stun, p) = start_stun_rfc5780();
    let (pnp, n) = start_pnp(&dir.path("names.db"), &dir.identity_file("pnp.key", 0x71));
    let config = dir.path("config.toml");
    std::fs::write(
        &config,
        format!(
            "stun = [\"127.0.0.1:{p}\"]\nbrokers = [\"{}\"]\n\n[[pnp]]\naddress = \"127.0.0.1:{n}\"\nkey = \"{}\"\n",
            broker.addr(),
            identity(0x71).public_key()
        ),
    )
    .expect("config");
    Some(Lab {
        dir,
        config,
        _servers: vec![stun, pnp],
        _broker: broker,
    })
}

//! `p2pd node --name NAME`: run a node reachable by name; it prints `ready` once registered, then
//! carries the first accepted stream to stdin/stdout like `nc -l` (or, with `--forward
//! HOST:PORT`, hands every accepted stream to that local TCP service until stopped).
//!
//! `p2pd connect TARGET`: connect to a name, a `p2pd1:` address or a public key by the cheapest
//! path that works (direct, reverse, punched, or relayed through the configuration's `[[relay]]`
//! TURN servers) and carry stdin/stdout over the stream (or, with
//! `--forward LISTEN_ADDR`, listen locally and carry each local client over its own stream, like
//! `ssh -L`).
//!
//! Every stream is authenticated to the peer's identity and encrypted (the secure channel).
//! Status lines go to stderr (`--json`: one object per line with an `event` field). Exit 0 when
//! the stream ended cleanly, 1 otherwise.

mod forward;
mod health;
mod pipe;
pub mod setup;
mod status;

use std::path::Path;
use std::time::Duration;

use clap::Args;
use p2pd_node::{Node, Target};
use p2pd_signaling::pnp::Name;

use crate::errln;
use crate::identity_file::{os_secret, os_seed};
use p2pd_mio::Runtime;

pub use setup::NodeOptions;
use status::Status;

use super::report::Reporter;

/// Options of `p2pd node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The name to register on the PNP servers.
    #[arg(long)]
    pub name: String,
    /// Hand every accepted stream to this local TCP service (HOST:PORT) instead of stdin/stdout.
    #[arg(long, value_name = "HOST:PORT")]
    pub forward: Option<String>,
    /// Servers, identity and output.
    #[command(flatten)]
    pub options: NodeOptions,
}

/// Options of `p2pd connect`.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The peer: a registered name, a p2pd1: address, or a public key (66 hex digits).
    pub target: String,
    /// Listen on LISTEN_ADDR (HOST:PORT) and carry each local client over its own stream.
    #[arg(long, value_name = "LISTEN_ADDR")]
    pub forward: Option<String>,
    /// Give up if no stream is up this many seconds after the start (0 to 31536000); with
    /// --forward, a local client whose stream is not up this long after it connected is closed.
    #[arg(long, value_name = "S", default_value = "60", value_parser = super::numbers::seconds)]
    pub timeout: Duration,
    /// Servers, identity and output.
    #[command(flatten)]
    pub options: NodeOptions,
}

/// What the loop does with streams.
pub enum Mode {
    /// `p2pd node`: wait for a peer.
    Listen,
    /// `p2pd connect`: connect to the target.
    Connect {
        /// Whom to connect to.
        target: Target,
        /// Give up after this long.
        timeout: Duration,
    },
}

fn start(
    command: &str,
    options: &NodeOptions,
    name: Option<Name>,
    config_flag: Option<&Path>,
) -> Result<(Runtime, Node, Status, health::NodeHealth), String> {
    let rt = Runtime::new().map_err(|e| format!("runtime: {e}"))?;
    let mut s = setup::setup(command, options, config_flag, rt.unix_epoch_ms())?;
    s.config.name = name;
    let seed = os_seed().map_err(|e| format!("random seed: {e}"))?;
    let secret = os_secret().map_err(|e| format!("random channel secret: {e}"))?;
    let node_health = s.health;
    let node =
        Node::new(s.config, s.identity, secret, seed, rt.now()).map_err(|e| e.to_string())?;
    let status = Status {
        out: Reporter { json: options.json },
    };
    Ok((rt, node, status, node_health))
}

/// Runs `p2pd node`; returns the exit code.
pub fn run_node(args: &NodeArgs, config_flag: Option<&Path>) -> i32 {
    let result = Name::new(&args.name)
        .map_err(|e| format!("bad --name: {e}"))
        .and_then(|name| start("node", &args.options, Some(name), config_flag))
        .and_then(|(rt, node, status, health)| match &args.forward {
            Some(to) => {
                let to = setup::forward_address(to)?;
                forward::serve(rt, node, status, health, to)
            }
            None => pipe::pipe(rt, node, status, health, Mode::Listen),
        });
    finish("node", result)
}

/// Runs `p2pd connect`; returns the exit code.
pub fn run_connect(args: &ConnectArgs, config_flag: Option<&Path>) -> i32 {
    let result = Target::parse(&args.target)
        .map_err(|e| e.to_string())
        .and_then(|target| {
            let (rt, node, status, health) = start("connect", &args.options, None, config_flag)?;
            match &args.forward {
                Some(listen) => {
                    let listen = setup::forward_address(listen)?;
                    forward::tunnel(rt, node, status, health, target, listen, args.timeout)
                }
                None => pipe::pipe(
                    rt,
                    node,
                    status,
                    health,
                    Mode::Connect {
                        target,
                        timeout: args.timeout,
                    },
                ),
            }
        });
    finish("connect", result)
}

fn finish(command: &str, result: Result<i32, String>) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            errln!("p2pd {command}: {e}");
            1
        }
    }
}

//! `p2pd`: NAT traversal from the command line.
//!
//! ```text
//! p2pd stun SERVER [--change port|ip|both] [--legacy] [--json]
//! p2pd stun-server --primary IP [--alternate IP] [--port P] [--alt-port P2] [--json]
//! ```

use clap::{Parser, Subcommand};
use p2pd_mio::cli;

/// NAT traversal toolkit: STUN client and RFC 5780 server.
#[derive(Debug, Parser)]
#[command(name = "p2pd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ask a STUN server for our mapped address (prints mapped address, other address and RTT).
    Stun(cli::stun::StunArgs),
    /// Run an RFC 5780 STUN server (two IPs x two ports).
    StunServer(cli::stun_server::StunServerArgs),
}

fn main() {
    let args = Cli::parse();
    let code = match &args.command {
        Command::Stun(a) => cli::stun::run(a),
        Command::StunServer(a) => cli::stun_server::run(a),
    };
    std::process::exit(code);
}

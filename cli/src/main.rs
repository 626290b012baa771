//! `p2pd`: NAT traversal from the command line.
//!
//! ```text
//! p2pd stun SERVER [--change port|ip|both] [--legacy] [--json]
//! p2pd stun-server --primary IP [--alternate IP] [--port P] [--alt-port P2] [--json]
//! p2pd nat [--server ADDR[,ALT]|ID ...] [--list-servers] [--local-ip IP] [--interface IF] [--timeout S] [--verbose] [--json]
//! p2pd ntp SERVER... [--samples N] [--spacing-ms MS] [--timeout-ms MS] [--json]
//! p2pd sim nat|punch [--seeds N] [--loss 0,10,30] [--json]
//! p2pd id new|show [--file PATH] [--force] [--json]
//! p2pd signal listen [--broker HOST[:PORT] ...] [--identity FILE] [--count N] [--timeout S] [--json]
//! p2pd punch PEER|--wait [--broker HOST[:PORT] ...] [--stun HOST[:PORT]] [--identity FILE] [--json]
//! p2pd signal send PEER MESSAGE [--broker HOST[:PORT] ...] [--identity FILE] [--timeout S] [--json]
//! p2pd pnp-server --db FILE [--udp ADDR] [--tcp ADDR] [--identity FILE] [--capacity N] [--duration S] [--json]
//! p2pd name register NAME VALUE [--server ADDR|ID] [--server-key HEX] [--tcp] [--version N] [--ttl S] [--identity FILE] [--json]
//! p2pd name lookup NAME [--server ADDR|ID] [--server-key HEX] [--tcp] [--json]
//! p2pd name delete NAME [--server ADDR|ID] [--server-key HEX] [--tcp] [--version N] [--identity FILE] [--json]
//! p2pd servers [--timeout S] [--health FILE] [--json]
//! p2pd node --name NAME [--forward HOST:PORT] [--broker ..] [--stun ..] [--identity FILE] [--json]
//! p2pd connect TARGET [--forward LISTEN_ADDR] [--timeout S] [--broker ..] [--stun ..] [--identity FILE] [--json]
//! p2pd config show [--json] [--show-secrets]
//! p2pd config path [--json]
//! ```
//!
//! `--config FILE` (anywhere on the line) names the configuration file; without it,
//! `$P2PD_CONFIG`, else `~/.config/p2pd/config.toml`, else built-in defaults (see
//! `p2pd_cli::config`). Its STUN servers, brokers and PNP servers are used when the command's own
//! `--stun`, `--broker`, `--server` / `--server-key` (or `nat --server`) are not given; the flags
//! always win, and a command whose flags are all given never reads the file.
//!
//! Diagnostics (sockets opened and closed, failed socket intents, wakeups) go to stderr through
//! `tracing`: `p2pd -v ...` shows debug events, `p2pd -vv ...` trace events, `--log-level LEVEL`
//! (before or after the sub-command) sets the level; without either, `RUST_LOG` is honoured when
//! set, else only warnings and errors are shown. They are not the command's output (its text or
//! `--json` lines), which is unchanged by them. `p2pd nat --verbose` (`-v` after `nat`) is `nat`'s
//! own flag: it prints every probe.
//!
//! Every numeric option has a range (shown in its `--help`); a value outside it, NaN, a negative
//! or an empty one is refused with a message naming the option and the range, exit code 2.
//!
//! Exit codes: 0 success, 1 failure, 2 usage (a bad option), 3 `nat` inconclusive, 141 stdout
//! closed by its reader (`p2pd ... | head -n 2`, as for a tool killed by SIGPIPE): the command
//! stops quietly and cleanly, see `p2pd_cli::output`.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;

use clap::{ArgAction, Parser, Subcommand};
use p2pd_cli::commands as cli;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};

/// NAT traversal toolkit: STUN client, RFC 5780 server and NAT classifier.
#[derive(Debug, Parser)]
#[command(name = "p2pd", version, about)]
struct Cli {
    /// Diagnostics on stderr: -v debug, -vv trace (before the sub-command; default: warnings,
    /// or RUST_LOG when set).
    #[arg(short = 'v', action = ArgAction::Count)]
    log_verbose: u8,
    /// Diagnostics on stderr at this level: off, error, warn, info, debug or trace (overrides -v
    /// and RUST_LOG).
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<LevelFilter>,
    /// The configuration file (default: $P2PD_CONFIG, else ~/.config/p2pd/config.toml; built-in
    /// defaults when there is none). Command-line flags override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// Sends `tracing` events to stderr: at `--log-level`, else at the level of `-v` / `-vv`, else as
/// `RUST_LOG` says, else warnings and errors.
fn init_logging(args: &Cli) {
    let level = match (args.log_level, args.log_verbose) {
        (Some(level), _) => Some(level),
        (None, 0) => None,
        (None, 1) => Some(LevelFilter::DEBUG),
        (None, _) => Some(LevelFilter::TRACE),
    };
    let filter = match level {
        Some(level) => EnvFilter::default().add_directive(level.into()),
        None => EnvFilter::builder()
            .with_default_directive(LevelFilter::WARN.into())
            .from_env_lossy(),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ask a STUN server for our mapped address (prints mapped address, other address and RTT).
    Stun(cli::stun::StunArgs),
    /// Run an RFC 5780 STUN server (two IPs x two ports).
    StunServer(cli::stun_server::StunServerArgs),
    /// Classify the NAT or firewall in front of this host (RFC 5780 tests against several servers).
    Nat(cli::nat::NatArgs),
    /// Measure this host's clock offset from NTP servers (SNTP), with its uncertainty.
    Ntp(cli::ntp::NtpArgs),
    /// Run the deterministic simulator (`sim nat`: the classifier's accuracy matrix; `sim punch`: the
    /// punch matrix against its oracle).
    Sim(cli::sim::SimArgs),
    /// Create or show this node's identity (secp256k1 key pair; the node id derives from it).
    Id(cli::id::IdArgs),
    /// Encrypted, signed messages between nodes through several MQTT brokers.
    Signal(cli::signal::SignalArgs),
    /// Run a PNP name registry server (UDP and TCP, names kept in SQLite).
    PnpServer(cli::pnp_server::PnpServerArgs),
    /// Register, look up or delete a name on a PNP server.
    Name(cli::name::NameArgs),
    /// Punch a TCP connection to a peer through both NATs, then pipe stdin/stdout over it.
    Punch(cli::punch::PunchArgs),
    /// Run a node reachable by name: print `ready`, then pipe the first accepted stream to
    /// stdin/stdout (or forward every stream to a local service).
    Node(cli::node::NodeArgs),
    /// Connect to a node by name, address or key (direct, reverse, punched, or through a
    /// configured TURN relay; every stream authenticated and encrypted) and pipe stdin/stdout
    /// (or forward a local port).
    Connect(cli::node::ConnectArgs),
    /// Check every configured server at once (STUN over UDP and TCP, RFC 5780, MQTT brokers, PNP
    /// servers and their keys, relays by a TURN allocation with their credentials): reachability,
    /// RTT, relayed address and last success.
    Servers(cli::servers::ServersArgs),
    /// Show the effective configuration (STUN servers, brokers, PNP servers, relays) or its file.
    Config(cli::config::ConfigArgs),
}

fn main() {
    let args = Cli::parse();
    init_logging(&args);
    tracing::debug!("p2pd {}", env!("CARGO_PKG_VERSION"));
    let config = args.config.as_deref();
    let code = match &args.command {
        Command::Stun(a) => cli::stun::run(a),
        Command::StunServer(a) => cli::stun_server::run(a),
        Command::Nat(a) => cli::nat::run(a, config),
        Command::Ntp(a) => cli::ntp::run(a),
        Command::Sim(a) => cli::sim::run(a),
        Command::Id(a) => cli::id::run(a),
        Command::Signal(a) => cli::signal::run(a, config),
        Command::PnpServer(a) => cli::pnp_server::run(a),
        Command::Name(a) => cli::name::run(a, config),
        Command::Punch(a) => cli::punch::run(a, config),
        Command::Servers(a) => cli::servers::run(a, config),
        Command::Node(a) => cli::node::run_node(a, config),
        Command::Connect(a) => cli::node::run_connect(a, config),
        Command::Config(a) => cli::config::run(a, config),
    };
    std::process::exit(p2pd_cli::output::exit_code(code));
}

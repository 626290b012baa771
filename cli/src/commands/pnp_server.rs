//! `p2pd pnp-server`: the PNP name registry server on UDP and TCP, with its names in SQLite.

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use p2pd_proto::Transport;
use p2pd_signaling::pnp::{
    NameStore, PnpServer, PnpServerConfig, PnpServerEvent, PnpServerId, PnpServerStats,
};
use p2pd_signaling::PublicKey;

use super::json::Object;
use super::stop_signal;
use crate::identity_file::{default_identity_path, os_seed, read_identity};
use crate::store_sqlite::{SqliteStore, DEFAULT_CAPACITY};
use p2pd_mio::Runtime;

/// How long the loop runs between checks for SIGINT / SIGTERM and the `--duration` limit.
const SLICE: Duration = Duration::from_millis(100);
/// How long a clean stop may take to release the sockets.
const CLOSE_LIMIT: Duration = Duration::from_secs(2);

/// Options of `p2pd pnp-server`.
#[derive(Debug, Args)]
pub struct PnpServerArgs {
    /// The SQLite database holding the names (created if missing; names survive restarts).
    #[arg(long)]
    pub db: PathBuf,
    /// The UDP address to serve on.
    #[arg(long, default_value = "0.0.0.0:5300")]
    pub udp: SocketAddr,
    /// The TCP address to serve on.
    #[arg(long, default_value = "0.0.0.0:5300")]
    pub tcp: SocketAddr,
    /// The server's identity file; clients pin its public key (default: $P2PD_IDENTITY, else
    /// ~/.config/p2pd/identity.key).
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// The most names the database may hold.
    #[arg(long, default_value_t = DEFAULT_CAPACITY)]
    pub capacity: u64,
    /// Stop after this many seconds (default: serve until SIGINT or SIGTERM).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `p2pd pnp-server`; returns the process exit code.
pub fn run(args: &PnpServerArgs) -> i32 {
    match serve(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("p2pd pnp-server: {e}");
            1
        }
    }
}

fn serve(args: &PnpServerArgs) -> Result<i32, String> {
    let path = args.identity.clone().unwrap_or_else(default_identity_path);
    let identity =
        read_identity(&path).map_err(|e| format!("{e} (create one with `p2pd id new`)"))?;
    let key = identity.public_key();
    let limit = match args.duration {
        Some(s) => Some(Duration::try_from_secs_f64(s).map_err(|e| format!("--duration: {e}"))?),
        None => None,
    };
    let store = SqliteStore::open(&args.db)
        .map_err(|e| e.to_string())?
        .with_capacity(args.capacity);
    let names = store.len().map_err(|e| e.to_string())?;
    let mut rt = Runtime::new().map_err(|e| format!("runtime: {e}"))?;
    let mut config = PnpServerConfig::new(args.udp, args.tcp, rt.unix_epoch_ms());
    // A restarted server must get its port back while old connections linger in TIME_WAIT.
    config.bind_options.reuse_address = true;
    let seed = os_seed().map_err(|e| format!("random seed: {e}"))?;
    let mut server =
        PnpServer::new(config, identity, store, seed).map_err(|e| format!("configuration: {e}"))?;
    stop_signal::install().map_err(|e| format!("signal handlers: {e}"))?;

    let json = args.json;
    let db = args.db.display().to_string();
    if json {
        println!(
            "{}",
            Object::new()
                .str("event", "starting")
                .str("public_key", &key.to_string())
                .str("db", &db)
                .uint("names", names)
                .finish()
        );
    } else {
        println!("public key  {key}");
        println!("database    {db} ({names} names)");
    }

    let started = std::time::Instant::now();
    let (mut listening, mut failed, mut closed) = (0usize, 0usize, false);
    let mut loop_error = None;
    while !closed && failed == 0 {
        if stop_signal::requested() || limit.is_some_and(|l| started.elapsed() >= l) {
            break;
        }
        let result = rt.run(&mut server, Some(SLICE), |_, _, event| {
            match event {
                PnpServerEvent::Listening { transport, local } => {
                    listening += 1;
                    print_listening(transport, local, &key, json);
                    if listening == 2 && !json {
                        println!("ready");
                    }
                }
                PnpServerEvent::SocketFailed {
                    transport,
                    op,
                    error,
                } => {
                    failed += 1;
                    if json {
                        println!(
                            "{}",
                            Object::new()
                                .str("event", "socket-failed")
                                .str("transport", transport_name(transport))
                                .str("op", &op.to_string())
                                .str("error", &error.to_string())
                                .finish()
                        );
                    } else {
                        eprintln!(
                            "p2pd pnp-server: cannot serve {}: {op} failed: {error}",
                            transport_name(transport)
                        );
                    }
                    return ControlFlow::Break(());
                }
                PnpServerEvent::Closed => {
                    closed = true;
                    return ControlFlow::Break(());
                }
                _ => {}
            }
            ControlFlow::Continue(())
        });
        if let Err(e) = result {
            loop_error = Some(format!("event loop: {e}"));
            break;
        }
    }

    // Clean stop: close every socket and wait (bounded) until the runtime has released them.
    let now = rt.now();
    server.close(now);
    let _ = rt.run(&mut server, Some(CLOSE_LIMIT), |_, _, event| {
        if event == PnpServerEvent::Closed {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    let names = server.store().len().ok();
    print_stats(&server.stats(), names, rt.open_sockets(), json);
    if let Some(e) = loop_error {
        return Err(e);
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

fn transport_name(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
    }
}

/// A listener is up. The server id is a hash of the address clients use and the key, so it is
/// printed only for a specific address.
fn print_listening(transport: Transport, local: SocketAddr, key: &PublicKey, json: bool) {
    let id = (!local.ip().is_unspecified()).then(|| PnpServerId::new(local, key));
    if json {
        println!(
            "{}",
            Object::new()
                .str("event", "listening")
                .str("transport", transport_name(transport))
                .str("local", &local.to_string())
                .opt("server_id", id)
                .finish()
        );
    } else {
        match id {
            Some(id) => println!(
                "listening   {} {local} (server id {id})",
                transport_name(transport)
            ),
            None => println!(
                "listening   {} {local} (server id: depends on the address clients use)",
                transport_name(transport)
            ),
        }
    }
}

fn print_stats(stats: &PnpServerStats, names: Option<u64>, open_sockets: usize, json: bool) {
    if json {
        let mut o = Object::new()
            .str("event", "stopped")
            .uint("requests", stats.requests)
            .uint("error_replies", stats.error_replies)
            .uint("duplicates", stats.duplicates)
            .uint("stale", stats.stale)
            .uint("replays", stats.replays)
            .uint("bad_envelopes", stats.bad_envelopes)
            .uint("not_envelopes", stats.not_envelopes)
            .uint("oversize", stats.oversize)
            .uint("rate_limited", stats.rate_limited)
            .uint("amplification_dropped", stats.amplification_dropped)
            .uint("store_errors", stats.store_errors)
            .uint("pruned", stats.pruned)
            .uint("connections_accepted", stats.connections_accepted)
            .uint("bad_frames", stats.bad_frames)
            .uint("idle_closed", stats.idle_closed)
            .uint("open_sockets", open_sockets as u64);
        o = match names {
            Some(n) => o.uint("names", n),
            None => o.opt("names", None::<u64>),
        };
        println!("{}", o.finish());
    } else {
        println!(
            "stopped: {} requests ({} error replies, {} retransmissions answered from cache), \
             dropped: {} stale, {} replays, {} bad envelopes, {} not envelopes, {} oversize, \
             {} rate limited, {} amplification; {} store errors, {} pruned, {} TCP connections \
             ({} bad frames, {} idle); {} names stored",
            stats.requests,
            stats.error_replies,
            stats.duplicates,
            stats.stale,
            stats.replays,
            stats.bad_envelopes,
            stats.not_envelopes,
            stats.oversize,
            stats.rate_limited,
            stats.amplification_dropped,
            stats.store_errors,
            stats.pruned,
            stats.connections_accepted,
            stats.bad_frames,
            stats.idle_closed,
            names.map_or_else(|| "?".to_string(), |n| n.to_string()),
        );
    }
}

//! `p2pd pnp-server`: the PNP name registry server on UDP and TCP, with its names in SQLite.

use crate::{errln, outln};
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

use serde::Serialize;

use super::report::{display_opt, to_json, Reporter};
use super::stop_signal;
use super::tcp_limits::TcpLimitArgs;
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
    /// The most names the database may hold (1 to 1000000000).
    #[arg(long, default_value_t = DEFAULT_CAPACITY,
          value_parser = super::numbers::count::<u64>(1, 1_000_000_000))]
    pub capacity: u64,
    /// The TCP connection limits.
    #[command(flatten)]
    pub tcp_limits: TcpLimitArgs,
    /// Stop after this many seconds (0 to 31536000; default: serve until SIGINT or SIGTERM).
    #[arg(long, value_name = "S", value_parser = super::numbers::seconds)]
    pub duration: Option<Duration>,
    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `p2pd pnp-server`; returns the process exit code.
pub fn run(args: &PnpServerArgs) -> i32 {
    match serve(args) {
        Ok(code) => code,
        Err(e) => {
            errln!("p2pd pnp-server: {e}");
            1
        }
    }
}

fn serve(args: &PnpServerArgs) -> Result<i32, String> {
    let path = args.identity.clone().unwrap_or_else(default_identity_path);
    let identity =
        read_identity(&path).map_err(|e| format!("{e} (create one with `p2pd id new`)"))?;
    let key = identity.public_key();
    let limit = args.duration;
    let store = SqliteStore::open(&args.db)
        .map_err(|e| e.to_string())?
        .with_capacity(args.capacity);
    let names = store.len().map_err(|e| e.to_string())?;
    let mut rt = Runtime::new().map_err(|e| format!("runtime: {e}"))?;
    let mut config = PnpServerConfig::new(args.udp, args.tcp, rt.unix_epoch_ms());
    // A restarted server must get its port back while old connections linger in TIME_WAIT.
    config.bind_options.reuse_address = true;
    config.tcp_limits = args.tcp_limits.limits(config.tcp_limits);
    let seed = os_seed().map_err(|e| format!("random seed: {e}"))?;
    let mut server =
        PnpServer::new(config, identity, store, seed).map_err(|e| format!("configuration: {e}"))?;
    stop_signal::install().map_err(|e| format!("signal handlers: {e}"))?;

    let json = args.json;
    let out = Reporter { json };
    let db = args.db.display().to_string();
    out.line(
        format_args!("public key  {key}\ndatabase    {db} ({names} names)"),
        &PnpServerLine::Starting {
            public_key: key.to_string(),
            db: &db,
            names,
        },
    );

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
                        outln!("ready");
                    }
                }
                PnpServerEvent::SocketFailed {
                    transport,
                    op,
                    error,
                } => {
                    failed += 1;
                    out.note(
                        format_args!(
                            "p2pd pnp-server: cannot serve {}: {op} failed: {error}",
                            transport_name(transport)
                        ),
                        &PnpServerLine::SocketFailed {
                            transport: transport_name(transport),
                            op: op.to_string(),
                            error: error.to_string(),
                        },
                    );
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

/// `p2pd pnp-server --json`: one line per event.
#[derive(Debug, Serialize)]
#[serde(tag = "event")]
enum PnpServerLine<'a> {
    /// The server's key and database, before it listens.
    #[serde(rename = "starting")]
    Starting {
        public_key: String,
        db: &'a str,
        names: u64,
    },
    /// A listener is up; `server_id` is null on an unspecified address.
    #[serde(rename = "listening")]
    Listening {
        transport: &'static str,
        local: SocketAddr,
        #[serde(serialize_with = "display_opt")]
        server_id: Option<PnpServerId>,
    },
    /// A listener could not be opened (the server stops).
    #[serde(rename = "socket-failed")]
    SocketFailed {
        transport: &'static str,
        op: String,
        error: String,
    },
    /// The server stopped: every counter of [`PnpServerStats`] (the refusals and drops
    /// included); `names` is null if the store could not count.
    #[serde(rename = "stopped")]
    Stopped {
        requests: u64,
        error_replies: u64,
        duplicates: u64,
        stale: u64,
        replays: u64,
        bad_envelopes: u64,
        not_envelopes: u64,
        oversize: u64,
        rate_limited: u64,
        amplification_dropped: u64,
        store_errors: u64,
        pruned: u64,
        connections_accepted: u64,
        bad_frames: u64,
        idle_closed: u64,
        message_timeouts: u64,
        evicted: u64,
        open_sockets: u64,
        names: Option<u64>,
        rate_evictions: u64,
        queue_full: u64,
        send_failures: u64,
        connections_closed: u64,
        prune_steps: u64,
    },
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
    let human = match id {
        Some(id) => format!(
            "listening   {} {local} (server id {id})",
            transport_name(transport)
        ),
        None => format!(
            "listening   {} {local} (server id: depends on the address clients use)",
            transport_name(transport)
        ),
    };
    Reporter { json }.line(
        human,
        &PnpServerLine::Listening {
            transport: transport_name(transport),
            local,
            server_id: id,
        },
    );
}

fn print_stats(stats: &PnpServerStats, names: Option<u64>, open_sockets: usize, json: bool) {
    // Destructured without `..`: a counter added to PnpServerStats must be printed here too.
    let PnpServerStats {
        requests,
        error_replies,
        duplicates,
        oversize,
        not_envelopes,
        stale,
        replays,
        bad_envelopes,
        rate_limited,
        rate_evictions,
        amplification_dropped,
        queue_full,
        store_errors,
        pruned,
        prune_steps,
        connections_accepted,
        connections_closed,
        bad_frames,
        idle_closed,
        message_timeouts,
        evicted_source_full,
        evicted_pool_full,
        send_failures,
    } = *stats;
    if json {
        let line = PnpServerLine::Stopped {
            requests,
            error_replies,
            duplicates,
            stale,
            replays,
            bad_envelopes,
            not_envelopes,
            oversize,
            rate_limited,
            amplification_dropped,
            store_errors,
            pruned,
            connections_accepted,
            bad_frames,
            idle_closed,
            message_timeouts,
            evicted: evicted_source_full.saturating_add(evicted_pool_full),
            open_sockets: open_sockets as u64,
            names,
            rate_evictions,
            queue_full,
            send_failures,
            connections_closed,
            prune_steps,
        };
        outln!("{}", to_json(&line));
    } else {
        outln!(
            "stopped: {requests} requests ({error_replies} error replies, {duplicates} \
             retransmissions answered from cache), dropped: {stale} stale, {replays} replays, \
             {bad_envelopes} bad envelopes, {not_envelopes} not envelopes, {oversize} oversize, \
             {rate_limited} rate limited, {amplification_dropped} amplification, {queue_full} \
             queue full, {send_failures} send failures; {rate_evictions} rate-table evictions; \
             {store_errors} store errors, {pruned} pruned in {prune_steps} steps; \
             {connections_accepted} TCP connections ({connections_closed} closed, {bad_frames} \
             bad frames, {idle_closed} idle, {message_timeouts} late request, {} evicted); {} names \
             stored",
            evicted_source_full.saturating_add(evicted_pool_full),
            names.map_or_else(|| "?".to_string(), |n| n.to_string()),
        );
    }
}

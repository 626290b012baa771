//! `p2pd punch PEER`: punch a TCP connection to PEER through both NATs (signaling over MQTT
//! brokers, mappings from a STUN server over TCP), then carry stdin to the peer and the peer's bytes
//! to stdout, like netcat. Run it on both sides (or `--wait` on one).
//!
//! At stdin's EOF only our sending side is finished (a half-close: the peer reads every byte, then
//! EOF), and the peer's bytes keep coming to stdout; the connection is closed and the command
//! exits once the peer has finished sending too (or the stream fails).

use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use clap::Args;
use p2pd_nat::{Mapping, PortAllocation};
use p2pd_proto::Instant;
use p2pd_punch::node::{NodeEvent, PunchNode, PunchNodeConfig};
use p2pd_punch::plan::NatView;
use p2pd_punch::PunchEvent;
use p2pd_signaling::rendezvous::RendezvousConfig;
use p2pd_signaling::PublicKey;

use super::json::Object;
use super::resolve;
use super::signal::{parse_brokers, parse_peer};
use crate::identity_file::{default_identity_path, os_seed, read_identity};
use p2pd_mio::Runtime;

/// Options of `p2pd punch`.
#[derive(Debug, Args)]
pub struct PunchArgs {
    /// The peer: 66 hex digits of its public key, or its p2pd1: address. Omit with --wait.
    pub peer: Option<String>,
    /// Answer the first peer that punches to us instead of starting.
    #[arg(long)]
    pub wait: bool,
    /// An MQTT broker, HOST[:PORT]; give two or more.
    #[arg(long = "broker", required = true)]
    pub brokers: Vec<String>,
    /// A STUN server that speaks TCP, HOST[:PORT] (default port 3478).
    #[arg(long)]
    pub stun: String,
    /// The identity file (default: $P2PD_IDENTITY, else ~/.config/p2pd/identity.key).
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// Our NAT's mapping, if known: eim (endpoint-independent), adm, apdm.
    #[arg(long)]
    pub nat_mapping: Option<String>,
    /// Our NAT's port allocation, if known: preserving, offset:K, sequential:S, random.
    #[arg(long)]
    pub nat_allocation: Option<String>,
    /// Give up punching after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Status lines on stderr as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `p2pd punch`; returns the exit code.
pub fn run(args: &PunchArgs) -> i32 {
    match punch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("p2pd punch: {e}");
            1
        }
    }
}

fn parse_nat(args: &PunchArgs) -> Result<Option<NatView>, String> {
    let mapping = match args.nat_mapping.as_deref() {
        None => return Ok(None),
        Some("eim") => Mapping::EndpointIndependent,
        Some("adm") => Mapping::AddressDependent,
        Some("apdm") => Mapping::AddressAndPortDependent,
        Some(other) => return Err(format!("unknown --nat-mapping {other:?}")),
    };
    let allocation = match args.nat_allocation.as_deref().unwrap_or("preserving") {
        "preserving" => PortAllocation::Preserving,
        "random" => PortAllocation::Random,
        other => {
            let (kind, value) = other
                .split_once(':')
                .ok_or_else(|| format!("unknown --nat-allocation {other:?}"))?;
            match kind {
                "offset" => PortAllocation::FixedOffset {
                    offset: value.parse().map_err(|_| "bad offset")?,
                },
                "sequential" => PortAllocation::Sequential {
                    stride: value.parse().map_err(|_| "bad stride")?,
                },
                _ => return Err(format!("unknown --nat-allocation {other:?}")),
            }
        }
    };
    Ok(Some(NatView {
        mapping,
        allocation,
    }))
}

/// Status output (stderr): human lines or JSON objects.
struct Status {
    json: bool,
}

impl Status {
    fn line(&self, event: &str, text: &str, fields: Object) {
        if self.json {
            eprintln!("{}", fields.str("event", event).finish());
        } else {
            eprintln!("{text}");
        }
    }
}

fn punch(args: &PunchArgs) -> Result<i32, String> {
    let path = args.identity.clone().unwrap_or_else(default_identity_path);
    let identity =
        read_identity(&path).map_err(|e| format!("{e} (create one with `p2pd id new`)"))?;
    let peer: Option<PublicKey> = match (&args.peer, args.wait) {
        (Some(p), false) => Some(parse_peer(p)?.0),
        (None, true) => None,
        _ => return Err("give PEER, or --wait (not both)".into()),
    };
    let brokers = parse_brokers(&args.brokers)?;
    let stun = resolve(&args.stun, super::STUN_PORT)?;
    let mut rt = Runtime::new().map_err(|e| format!("runtime: {e}"))?;
    let mut config = PunchNodeConfig::new(RendezvousConfig::new(brokers, rt.unix_epoch_ms()), stun);
    config.nat = parse_nat(args)?;
    config.rendezvous.mqtt.backoff_max = Duration::from_secs(5);
    let seed = os_seed().map_err(|e| format!("random seed: {e}"))?;
    let status = Status { json: args.json };
    let me = identity.public_key();
    status.line(
        "started",
        &format!("node {} ({me})", identity.node_id()),
        Object::new()
            .str("node_id", &identity.node_id().to_string())
            .str("public_key", &me.to_string()),
    );
    let mut node = PunchNode::new(config, identity, seed, rt.now()).map_err(|e| e.to_string())?;

    // stdin on a thread; the loop below runs the node in short slices and feeds it. The channel
    // is bounded and drained only while little is pending, so a slow peer holds stdin back
    // instead of the whole input piling up in memory.
    let (tx, rx) = mpsc::sync_channel::<Option<Vec<u8>>>(STDIN_CHUNKS);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
                Ok(n) => {
                    if tx
                        .send(Some(buf.get(..n).unwrap_or_default().to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });

    let started = rt.now();
    let deadline = started.saturating_add(Duration::from_secs_f64(args.timeout));
    let mut punch_requested = peer.is_none();
    let mut state = LoopState::default();
    let mut stdout = std::io::stdout();
    loop {
        let now = rt.now();
        if !punch_requested && node.rendezvous().connected_brokers() > 0 {
            punch_requested = true;
            if let Some(peer) = peer {
                node.punch(now, peer).map_err(|e| e.to_string())?;
                status.line(
                    "punching",
                    &format!("punching to {}", peer.node_id()),
                    Object::new().str("peer", &peer.to_string()),
                );
            }
        }
        if state.connected_at.is_none() && now > deadline && !state.closing {
            status.line("timeout", "gave up: no connection in time", Object::new());
            state.failed = true;
            state.closing = true;
            node.close(now);
        }
        rt.run(
            &mut node,
            Some(Duration::from_millis(10)),
            |node, now, ev| on_event(node, now, ev, &status, started, &mut state, &mut stdout),
        )
        .map_err(|e| format!("event loop: {e}"))?;
        if state.closed {
            break;
        }
        // Feed stdin (at most about one send queue's worth waits here).
        while state.pending.len() < p2pd_punch::node::MAX_SEND_QUEUE {
            let Ok(msg) = rx.try_recv() else {
                break;
            };
            match msg {
                Some(bytes) => state.pending.extend_from_slice(&bytes),
                None => state.stdin_done = true,
            }
        }
        let now = rt.now();
        if node.is_connected() && !state.pending.is_empty() {
            let room = p2pd_punch::node::MAX_SEND_QUEUE.saturating_sub(node.queued());
            let n = room.min(state.pending.len());
            let chunk = state.pending.get(..n).unwrap_or_default();
            if n > 0 && node.send(now, chunk).is_ok() {
                state.pending.drain(..n);
            }
        }
        if state.stdin_done
            && state.pending.is_empty()
            && node.is_connected()
            && !state.finished
            && !state.closing
        {
            // stdin is done and all of it is handed to the node: finish our sending side. The
            // node shuts the stream down once the runtime has taken every byte, and the runtime
            // once it has written them; the peer then reads EOF, and we keep reading its bytes.
            state.finished = true;
            let _ = node.finish(now);
        }
        if state.peer_done && !state.closing {
            // Both directions done (the runtime has written everything: closing earlier would
            // drop what it still holds), or the stream failed: close.
            let written = state.finished
                && node.is_finished()
                && node.stream_socket().is_none_or(|s| rt.unsent(s) == 0);
            if written || !node.is_connected() {
                state.closing = true;
                node.close(now);
            }
        }
        let _ = rt.drive(&mut node, |node, now, ev| {
            on_event(node, now, ev, &status, started, &mut state, &mut stdout)
        });
        if state.closed {
            break;
        }
    }
    let _ = stdout.flush();
    Ok(if state.failed || state.connected_at.is_none() {
        1
    } else {
        0
    })
}

/// stdin chunks (16 KiB each) the reader thread may have waiting.
const STDIN_CHUNKS: usize = 4;

/// Milliseconds from `started` to `now`, for the status lines.
fn since(started: Instant, now: Instant) -> f64 {
    now.saturating_duration_since(started).as_millis() as f64
}

#[derive(Default)]
struct LoopState {
    connected_at: Option<Instant>,
    pending: Vec<u8>,
    stdin_done: bool,
    /// Our sending side is finished ([`PunchNode::finish`]).
    finished: bool,
    /// The peer finished sending, or the stream failed ([`NodeEvent::StreamClosed`]).
    peer_done: bool,
    closing: bool,
    closed: bool,
    failed: bool,
}

fn on_event(
    node: &mut PunchNode,
    now: Instant,
    ev: NodeEvent,
    status: &Status,
    started: Instant,
    state: &mut LoopState,
    stdout: &mut std::io::Stdout,
) -> ControlFlow<()> {
    match ev {
        NodeEvent::Data(bytes) => {
            let written = stdout.write_all(&bytes).and_then(|()| stdout.flush());
            if written.is_err() && !state.closing {
                state.closing = true;
                node.close(now);
            }
        }
        NodeEvent::Connected {
            peer,
            local,
            remote,
        } => {
            state.connected_at = Some(now);
            let ms = now.saturating_duration_since(started).as_millis();
            status.line(
                "connected",
                &format!(
                    "connected {local} -> {remote} (peer {}) after {ms} ms",
                    peer.node_id()
                ),
                Object::new()
                    .str("local", &local.to_string())
                    .str("remote", &remote.to_string())
                    .str("peer", &peer.to_string())
                    .num("elapsed_ms", ms as f64),
            );
        }
        NodeEvent::Candidates { round, candidates } => {
            let list: Vec<String> = candidates
                .iter()
                .map(|c| format!("{}->{}", c.local_port, c.external))
                .collect();
            status.line(
                "candidates",
                &format!("round {round}: candidates {}", list.join(" ")),
                Object::new()
                    .num("round", round)
                    .num("elapsed_ms", since(started, now))
                    .str("candidates", &list.join(" ")),
            );
        }
        NodeEvent::Punch(PunchEvent::Armed {
            round,
            meet,
            uncertainty,
        }) => {
            let in_ms = meet.saturating_duration_since(now).as_millis();
            status.line(
                "armed",
                &format!(
                    "round {round}: meeting in {in_ms} ms (clock uncertainty {} ms)",
                    uncertainty.as_millis()
                ),
                Object::new()
                    .num("round", round)
                    .num("elapsed_ms", since(started, now))
                    .num("meet_in_ms", in_ms as f64)
                    .num("uncertainty_ms", uncertainty.as_millis() as f64),
            );
        }
        NodeEvent::Punch(PunchEvent::RoundFailed { round, reason }) => {
            status.line(
                "round_failed",
                &format!("round {round} failed: {reason:?}"),
                Object::new()
                    .num("round", round)
                    .num("elapsed_ms", since(started, now))
                    .str("reason", &format!("{reason:?}")),
            );
        }
        NodeEvent::Failed(reason) => {
            status.line(
                "failed",
                &format!("punch failed: {reason:?}"),
                Object::new()
                    .str("reason", &format!("{reason:?}"))
                    .num("elapsed_ms", since(started, now)),
            );
            state.failed = true;
            if !state.closing {
                state.closing = true;
                node.close(now);
            }
        }
        NodeEvent::ProbeFailed { port, reason } => {
            status.line(
                "probe_failed",
                &format!("STUN over TCP from port {port} failed: {reason:?}"),
                Object::new()
                    .num("port", port)
                    .str("reason", &format!("{reason:?}")),
            );
        }
        NodeEvent::StreamClosed => {
            // The loop closes once our side is finished too (or at once if the stream failed).
            status.line(
                "peer_closed",
                "the peer closed the connection",
                Object::new(),
            );
            state.peer_done = true;
        }
        NodeEvent::Closed => {
            state.closed = true;
            return ControlFlow::Break(());
        }
        NodeEvent::Signaling(p2pd_signaling::RendezvousEvent::BrokerDown {
            broker,
            reason,
            ..
        }) => {
            status.line(
                "broker_down",
                &format!("broker {broker} down: {reason:?}"),
                Object::new().str("broker", &broker.to_string()),
            );
        }
        _ => {}
    }
    ControlFlow::Continue(())
}

//! `p2pd punch PEER`: punch a TCP connection to PEER through both NATs (signaling over MQTT
//! brokers, mappings from a STUN server over TCP), then carry stdin to the peer and the peer's bytes
//! to stdout, like netcat. Run it on both sides (or `--wait` on one).
//!
//! At stdin's EOF only our sending side is finished (a half-close: the peer reads every byte, then
//! EOF), and the peer's bytes keep coming to stdout; the connection is closed and the command
//! exits once the peer has finished sending too (or the stream fails).

use crate::errln;
use std::io::Write;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use std::time::Duration;

use clap::Args;
use p2pd_nat::{Mapping, PortAllocation};
use p2pd_proto::Instant;
use p2pd_punch::node::{NodeEvent, PunchNode, PunchNodeConfig};
use p2pd_punch::plan::NatView;
use p2pd_punch::PunchEvent;
use p2pd_signaling::rendezvous::RendezvousConfig;
use p2pd_signaling::PublicKey;

use serde::Serialize;

use super::report::Reporter;
use super::resolve;
use super::signal::{brokers_or_config, parse_brokers, parse_peer};
use crate::identity_file::{default_identity_path, os_secret, os_seed, read_identity};
use p2pd_mio::Runtime;

/// Options of `p2pd punch`.
#[derive(Debug, Args)]
pub struct PunchArgs {
    /// The peer: 66 hex digits of its public key, or its p2pd1: address. Omit with --wait.
    pub peer: Option<String>,
    /// Answer the first peer that punches to us instead of starting.
    #[arg(long)]
    pub wait: bool,
    /// An MQTT broker, HOST[:PORT]; give two or more. Default: the configuration's brokers (see
    /// `p2pd config show`).
    #[arg(long = "broker")]
    pub brokers: Vec<String>,
    /// A STUN server that speaks TCP, HOST[:PORT] (default port 3478). Default: the first `stun`
    /// server of the configuration.
    #[arg(long)]
    pub stun: Option<String>,
    /// The identity file (default: $P2PD_IDENTITY, else ~/.config/p2pd/identity.key).
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// Our NAT's mapping, if known: eim (endpoint-independent), adm, apdm.
    #[arg(long)]
    pub nat_mapping: Option<String>,
    /// Our NAT's port allocation, if known: preserving, offset:K (K from -65535 to 65535),
    /// sequential:S (S from 1 to 65535), random.
    #[arg(long)]
    pub nat_allocation: Option<String>,
    /// Give up punching after this many seconds (0 to 31536000).
    #[arg(long, value_name = "S", default_value = "60", value_parser = super::numbers::seconds)]
    pub timeout: Duration,
    /// Status lines on stderr as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `p2pd punch`; returns the exit code (2 for a configuration error).
pub fn run(args: &PunchArgs, config_flag: Option<&Path>) -> i32 {
    let brokers = match brokers_or_config("punch", &args.brokers, config_flag) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let stun = match &args.stun {
        Some(s) => s.clone(),
        None => match crate::config::load_for("punch", config_flag) {
            Ok(loaded) => match loaded.config.stun.first() {
                Some(e) => e.text.clone(),
                None => {
                    errln!(
                        "p2pd punch: no STUN server: give --stun, or list stun servers in the \
                         configuration ({})",
                        loaded.source
                    );
                    return crate::config::EXIT_CONFIG_ERROR;
                }
            },
            Err(code) => return code,
        },
    };
    match punch(args, &brokers, &stun) {
        Ok(code) => code,
        Err(e) => {
            errln!("p2pd punch: {e}");
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
        Some(other) => return Err(format!("unknown --nat-mapping {}", super::quoted(other))),
    };
    let allocation = match args.nat_allocation.as_deref().unwrap_or("preserving") {
        "preserving" => PortAllocation::Preserving,
        "random" => PortAllocation::Random,
        other => {
            let (kind, value) = other
                .split_once(':')
                .ok_or_else(|| format!("unknown --nat-allocation {}", super::quoted(other)))?;
            match kind {
                "offset" => PortAllocation::FixedOffset {
                    offset: value
                        .parse()
                        .ok()
                        .filter(|k: &i32| (-65535..=65535).contains(k))
                        .ok_or_else(|| {
                            format!(
                                "bad offset {} in --nat-allocation (-65535 to 65535)",
                                super::quoted(value)
                            )
                        })?,
                },
                "sequential" => PortAllocation::Sequential {
                    stride: value
                        .parse()
                        .ok()
                        .filter(|s: &u16| *s != 0)
                        .ok_or_else(|| {
                            format!(
                                "bad stride {} in --nat-allocation (1 to 65535)",
                                super::quoted(value)
                            )
                        })?,
                },
                _ => return Err(format!("unknown --nat-allocation {}", super::quoted(other))),
            }
        }
    };
    Ok(Some(NatView {
        mapping,
        allocation,
    }))
}

/// Status output (stderr; stdout carries the peer's bytes): human lines or JSON objects.
struct Status {
    out: Reporter,
}

impl Status {
    /// One status line: `text`, or `fields` followed by `"event": event`.
    fn line(&self, event: &'static str, text: &str, fields: Fields) {
        self.out.status(text, &StatusLine { fields, event });
    }
}

/// `p2pd punch --json`: a status line, its event's fields then the event's name.
#[derive(Debug, Serialize)]
struct StatusLine {
    #[serde(flatten)]
    fields: Fields,
    event: &'static str,
}

/// The fields of each status line (named by the line's event).
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Fields {
    /// `started`.
    Started {
        node_id: String,
        public_key: String,
    },
    /// `punching`.
    Punching {
        peer: String,
    },
    /// `connected`.
    Connected {
        local: SocketAddr,
        remote: SocketAddr,
        peer: String,
        elapsed_ms: u128,
    },
    /// `candidates`: `LOCAL_PORT->EXTERNAL` separated by spaces.
    Candidates {
        round: u8,
        elapsed_ms: u128,
        candidates: String,
    },
    /// `armed`.
    Armed {
        round: u8,
        elapsed_ms: u128,
        meet_in_ms: u128,
        uncertainty_ms: u128,
    },
    /// `round_failed`.
    RoundFailed {
        round: u8,
        elapsed_ms: u128,
        reason: String,
    },
    /// `failed`.
    Failed {
        reason: String,
        elapsed_ms: u128,
    },
    StreamFailed {
        reason: String,
        elapsed_ms: u128,
    },
    /// `probe_failed`.
    ProbeFailed {
        port: u16,
        reason: String,
    },
    /// `broker_down`.
    BrokerDown {
        broker: String,
    },
    /// `timeout`, `peer_closed`.
    Nothing {},
}

fn punch(args: &PunchArgs, brokers: &[String], stun: &str) -> Result<i32, String> {
    let path = args.identity.clone().unwrap_or_else(default_identity_path);
    let identity =
        read_identity(&path).map_err(|e| format!("{e} (create one with `p2pd id new`)"))?;
    let peer: Option<PublicKey> = match (&args.peer, args.wait) {
        (Some(p), false) => Some(parse_peer(p)?.0),
        (None, true) => None,
        _ => return Err("give PEER, or --wait (not both)".into()),
    };
    let brokers = parse_brokers(brokers)?;
    let stun = resolve(stun, super::STUN_PORT)?;
    let mut rt = Runtime::new().map_err(|e| format!("runtime: {e}"))?;
    let mut config = PunchNodeConfig::new(RendezvousConfig::new(brokers, rt.unix_epoch_ms()), stun);
    config.nat = parse_nat(args)?;
    config.rendezvous.mqtt.backoff_max = Duration::from_secs(5);
    let seed = os_seed().map_err(|e| format!("random seed: {e}"))?;
    let secret = os_secret().map_err(|e| format!("random channel secret: {e}"))?;
    let status = Status {
        out: Reporter { json: args.json },
    };
    let me = identity.public_key();
    status.line(
        "started",
        &format!("node {} ({me})", identity.node_id()),
        Fields::Started {
            node_id: identity.node_id().to_string(),
            public_key: me.to_string(),
        },
    );
    let mut node =
        PunchNode::new(config, identity, secret, seed, rt.now()).map_err(|e| e.to_string())?;

    let waker = rt.waker().map_err(|e| format!("runtime: {e}"))?;
    let rx = super::stdin_relay::spawn_reader(waker);

    let started = rt.now();
    let deadline = started.saturating_add(args.timeout);
    let mut punch_requested = peer.is_none();
    let mut state = LoopState::default();
    let mut stdout = std::io::stdout();
    loop {
        let now = rt.now();
        if !punch_requested && node.rendezvous().is_some_and(|r| r.connected_brokers() > 0) {
            punch_requested = true;
            if let Some(peer) = peer {
                node.punch(now, peer).map_err(|e| e.to_string())?;
                status.line(
                    "punching",
                    &format!("punching to {}", peer.node_id()),
                    Fields::Punching {
                        peer: peer.to_string(),
                    },
                );
            }
        }
        if state.connected_at.is_none() && now > deadline && !state.closing {
            status.line(
                "timeout",
                "gave up: no connection in time",
                Fields::Nothing {},
            );
            state.failed = true;
            state.closing = true;
            node.close(now);
        }
        // Hand stdin to the node while its send buffer takes it: at most one chunk waits here
        // (what a partial `send` left), the rest waits in the bounded channel or in stdin.
        let now = rt.now();
        while node.is_connected() {
            if state.pending.is_empty() {
                match rx.try_recv() {
                    Ok(Some(bytes)) => state.pending = bytes,
                    Ok(None) => state.stdin_done = true,
                    Err(_) => {}
                }
            }
            match node.send(now, &state.pending) {
                Ok(taken) if taken > 0 => {
                    state.pending.drain(..taken);
                }
                _ => break,
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
        if state.peer_done && !state.closing && (node.is_finished() || !node.is_connected()) {
            // Both directions done, or the stream failed: close. What the runtime still holds
            // of a finished stream is written after the close (it lingers), below.
            state.closing = true;
            node.close(now);
        }
        // Carry out what the commands above asked for; an event the loop acts on comes back to
        // the checks above at once.
        let flow = rt.drive(&mut node, |node, now, ev| {
            on_event(node, now, ev, &status, started, &mut state, &mut stdout)
        });
        if state.closed {
            break;
        }
        if flow.is_break() {
            continue;
        }
        // Run until something needs this loop: an event it acts on (`on_event` breaks), stdin
        // (the waker), or the connect deadline.
        let limit = state
            .connected_at
            .is_none()
            .then(|| deadline.saturating_duration_since(rt.now()));
        rt.run(&mut node, limit, |node, now, ev| {
            on_event(node, now, ev, &status, started, &mut state, &mut stdout)
        })
        .map_err(|e| format!("event loop: {e}"))?;
        if state.closed {
            break;
        }
    }
    // The node is closed; a finished stream may still be writing its last bytes.
    super::stdin_relay::linger(&mut rt, &mut node);
    let _ = stdout.flush();
    Ok(if state.failed || state.connected_at.is_none() {
        1
    } else {
        0
    })
}

/// Milliseconds from `started` to `now`, for the status lines.
fn since(started: Instant, now: Instant) -> u128 {
    now.saturating_duration_since(started).as_millis()
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
            if let Err(e) = written {
                // Nobody reads the peer's bytes any more: stop (exit code 141 on a closed pipe).
                crate::output::stdout_failed(&e);
                if !state.closing {
                    state.closing = true;
                    node.close(now);
                }
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
                Fields::Connected {
                    local,
                    remote,
                    peer: peer.to_string(),
                    elapsed_ms: ms,
                },
            );
            // The loop feeds the stream what stdin already gave.
            return ControlFlow::Break(());
        }
        NodeEvent::Candidates { round, candidates } => {
            let list: Vec<String> = candidates
                .iter()
                .map(|c| format!("{}->{}", c.local_port, c.external))
                .collect();
            status.line(
                "candidates",
                &format!("round {round}: candidates {}", list.join(" ")),
                Fields::Candidates {
                    round,
                    elapsed_ms: since(started, now),
                    candidates: list.join(" "),
                },
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
                Fields::Armed {
                    round,
                    elapsed_ms: since(started, now),
                    meet_in_ms: in_ms,
                    uncertainty_ms: uncertainty.as_millis(),
                },
            );
        }
        NodeEvent::Punch(PunchEvent::RoundFailed { round, reason }) => {
            status.line(
                "round_failed",
                &format!("round {round} failed: {reason}"),
                Fields::RoundFailed {
                    round,
                    elapsed_ms: since(started, now),
                    reason: reason.to_string(),
                },
            );
        }
        NodeEvent::Failed(reason) => {
            status.line(
                "failed",
                &format!("punch failed: {reason}"),
                Fields::Failed {
                    reason: reason.to_string(),
                    elapsed_ms: since(started, now),
                },
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
                &format!("STUN over TCP from port {port} failed: {reason}"),
                Fields::ProbeFailed {
                    port,
                    reason: reason.to_string(),
                },
            );
        }
        NodeEvent::StreamFailed(reason) => {
            // The secure channel refused the stream (tampered bytes, cut before the peer's
            // FINISH): nothing more is delivered; StreamClosed follows.
            status.line(
                "stream_failed",
                &format!("the secure stream failed: {reason}"),
                Fields::StreamFailed {
                    reason: reason.to_string(),
                    elapsed_ms: since(started, now),
                },
            );
            state.failed = true;
        }
        NodeEvent::StreamClosed => {
            // The loop closes once our side is finished too (or at once if the stream failed).
            status.line(
                "peer_closed",
                "the peer closed the connection",
                Fields::Nothing {},
            );
            state.peer_done = true;
            return ControlFlow::Break(());
        }
        // Room in the send buffer again (the loop feeds it), our side finished (the loop may
        // close).
        NodeEvent::Writable | NodeEvent::Finished => return ControlFlow::Break(()),
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
                &format!("broker {broker} down: {reason}"),
                Fields::BrokerDown {
                    broker: broker.to_string(),
                },
            );
        }
        // A broker came up: the loop may start the punch.
        NodeEvent::Signaling(_) => return ControlFlow::Break(()),
        _ => {}
    }
    ControlFlow::Continue(())
}

//! `p2pd signal listen` / `p2pd signal send PEER MESSAGE`: encrypted, signed messages between
//! nodes through several MQTT brokers at once (the rendezvous machine of `p2pd-signaling`).
//!
//! `send` asks the recipient for a signed receipt and waits for it (`--no-receipt`: only for the
//! brokers' acknowledgements); `listen` answers such requests, and reports what it rejects as
//! counts per reason, at most one line per few seconds ([`rejections`]).

mod rejections;

use crate::errln;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use p2pd_signaling::rendezvous::{
    BrokerSpec, Rendezvous, RendezvousConfig, RendezvousEvent, MAX_BROKERS,
};
use p2pd_signaling::{Identity, PeerAddress, PublicKey};

use serde::Serialize;

use super::report::Reporter;
use super::resolve;
use super::stop_signal;
use crate::identity_file::{default_identity_path, os_seed, parse_hex, read_identity};
use p2pd_mio::{RunEnd, Runtime};

/// The default MQTT port.
pub const MQTT_PORT: u16 = 1883;

/// `p2pd signal ...`
#[derive(Debug, Args)]
pub struct SignalArgs {
    #[command(subcommand)]
    command: SignalCommand,
}

/// Options shared by both sub-commands.
#[derive(Debug, Args)]
struct Common {
    /// An MQTT broker, HOST[:PORT] (default port 1883); give two or more, every message goes
    /// through each. Default: the configuration's brokers (see `p2pd config show`).
    #[arg(long = "broker")]
    brokers: Vec<String>,
    /// The identity file (default: $P2PD_IDENTITY, else ~/.config/p2pd/identity.key).
    #[arg(long)]
    identity: Option<PathBuf>,
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum SignalCommand {
    /// Print every message sent to this node (one line each) until interrupted.
    Listen {
        #[command(flatten)]
        common: Common,
        /// Stop after this many messages (1 to 18446744073709551615).
        #[arg(long, value_parser = super::numbers::count::<u64>(1, u64::MAX))]
        count: Option<u64>,
        /// Stop after this many seconds (0 to 31536000).
        #[arg(long, value_name = "S", value_parser = super::numbers::seconds)]
        timeout: Option<Duration>,
    },
    /// Send MESSAGE to PEER (a public key in hex, or a p2pd1: address) and wait for the
    /// recipient's signed receipt (exit 1 without one), printing the brokers' acknowledgements on
    /// the way.
    Send {
        /// The recipient: 66 hex digits of its public key, or its p2pd1: address.
        peer: String,
        /// The message (UTF-8 text).
        message: String,
        #[command(flatten)]
        common: Common,
        /// Give up waiting for the receipt (or the acknowledgements) after this many seconds (0 to
        /// 31536000).
        #[arg(long, value_name = "S", default_value = "10", value_parser = super::numbers::seconds)]
        timeout: Duration,
        /// Ask for no receipt: done (exit 0) once a broker acknowledged the message, as before
        /// receipts existed. The recipient's node may not even be listening.
        #[arg(long)]
        no_receipt: bool,
    },
}

/// Runs `p2pd signal`; returns the exit code (2 for a configuration error).
pub fn run(args: &SignalArgs, config_flag: Option<&Path>) -> i32 {
    let (verb, common) = match &args.command {
        SignalCommand::Listen { common, .. } => ("listen", common),
        SignalCommand::Send { common, .. } => ("send", common),
    };
    let brokers = match brokers_or_config(&format!("signal {verb}"), &common.brokers, config_flag) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let result = match &args.command {
        SignalCommand::Listen {
            common,
            count,
            timeout,
        } => listen(common, &brokers, *count, *timeout),
        SignalCommand::Send {
            peer,
            message,
            common,
            timeout,
            no_receipt,
        } => send(common, &brokers, peer, message, *timeout, !*no_receipt),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            errln!("p2pd signal: {e}");
            1
        }
    }
}

/// The `--broker` values, or without any the configuration's brokers (the configuration is read
/// only then). A configuration error, or a configuration with no broker, is reported here and
/// gives the exit code 2.
pub fn brokers_or_config(
    command: &str,
    flags: &[String],
    config_flag: Option<&Path>,
) -> Result<Vec<String>, i32> {
    if !flags.is_empty() {
        return Ok(flags.to_vec());
    }
    let loaded = crate::config::load_for(command, config_flag)?;
    if loaded.config.brokers.is_empty() {
        errln!(
            "p2pd {command}: no broker: give --broker, or list brokers in the configuration ({})",
            loaded.source
        );
        return Err(crate::config::EXIT_CONFIG_ERROR);
    }
    Ok(loaded
        .config
        .brokers
        .iter()
        .map(|b| b.text.clone())
        .collect())
}

/// Parses `--broker` values into canonical broker specs.
pub fn parse_brokers(values: &[String]) -> Result<Vec<BrokerSpec>, String> {
    if values.len() > MAX_BROKERS {
        return Err(format!("at most {MAX_BROKERS} brokers"));
    }
    let mut out: Vec<BrokerSpec> = Vec::new();
    for v in values {
        let address = resolve(v, MQTT_PORT)?;
        let host = host_part(v);
        let named = host.parse::<std::net::IpAddr>().is_err();
        let spec = BrokerSpec::new(named.then_some(host), address);
        if out.iter().any(|b| b.id == spec.id) {
            return Err(format!("broker {v} given twice"));
        }
        out.push(spec);
    }
    Ok(out)
}

/// The host of `HOST[:PORT]` (brackets of an IPv6 literal removed).
fn host_part(target: &str) -> &str {
    if let Some(rest) = target.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    if target.matches(':').count() > 1 {
        return target; // a bare IPv6 literal
    }
    target.split(':').next().unwrap_or(target)
}

/// Parses PEER: a hex public key or a `p2pd1:` address; returns the key and, for an address, the
/// broker ids it listens on.
pub fn parse_peer(peer: &str) -> Result<(PublicKey, Option<PeerAddress>), String> {
    if peer.starts_with("p2pd1:") {
        let addr = PeerAddress::from_text(peer).map_err(|e| format!("bad peer address: {e}"))?;
        return Ok((addr.public_key, Some(addr)));
    }
    let bytes = parse_hex(peer).ok_or("PEER is neither a hex public key nor a p2pd1: address")?;
    let key = PublicKey::from_bytes(&bytes).map_err(|e| format!("bad public key: {e}"))?;
    Ok((key, None))
}

fn load_identity(common: &Common) -> Result<Identity, String> {
    let path = common
        .identity
        .clone()
        .unwrap_or_else(default_identity_path);
    read_identity(&path).map_err(|e| format!("{e} (create one with `p2pd id new`)"))
}

fn start(
    common: &Common,
    brokers: &[String],
    identity: Identity,
) -> Result<(Runtime, Rendezvous), String> {
    let brokers = parse_brokers(brokers)?;
    if brokers.len() < 2 && !common.json {
        errln!("note: one broker only; give --broker twice or more so delivery survives an outage");
    }
    let rt = Runtime::new().map_err(|e| format!("runtime: {e}"))?;
    let config = RendezvousConfig::new(brokers, rt.unix_epoch_ms());
    let seed = os_seed().map_err(|e| format!("random seed: {e}"))?;
    let machine = Rendezvous::new(config, identity, seed, rt.now()).map_err(|e| e.to_string())?;
    Ok((rt, machine))
}

/// How long `listen` runs between checks for SIGINT / SIGTERM, the time limit and due
/// rejection summaries.
const SLICE: Duration = Duration::from_millis(100);

fn listen(
    common: &Common,
    brokers: &[String],
    count: Option<u64>,
    timeout: Option<Duration>,
) -> Result<i32, String> {
    let identity = load_identity(common)?;
    let node = identity.node_id();
    let key = identity.public_key();
    let (mut rt, mut machine) = start(common, brokers, identity)?;
    stop_signal::install().map_err(|e| format!("signal handlers: {e}"))?;
    let address = PeerAddress {
        public_key: key,
        interfaces: Vec::new(),
        brokers: machine.broker_ids().collect(),
    };
    let text = address.to_text().map_err(|e| e.to_string())?;
    let out = Reporter { json: common.json };
    out.line(
        format_args!("node id     {node}\npublic key  {key}\naddress     {text}"),
        &SignalLine::Listening {
            node_id: node.to_string(),
            public_key: key.to_string(),
            topic: machine.topic(),
            address: &text,
        },
    );
    // Nobody reads stdout (it closed at the first line): close at once.
    let limit = if crate::output::stdout_gone() {
        Some(Duration::ZERO)
    } else {
        timeout
    };
    let started = std::time::Instant::now();
    let mut received = 0u64;
    let mut closing = false;
    let mut closed = false;
    let mut rejections = rejections::Tally::default();
    let json = common.json;
    while !closed {
        if stop_signal::requested() || limit.is_some_and(|l| started.elapsed() >= l) {
            close(&mut rt, &mut machine);
            break;
        }
        let slice = limit.map_or(SLICE, |l| SLICE.min(l.saturating_sub(started.elapsed())));
        let end = rt
            .run(&mut machine, Some(slice), |m, now, ev| {
                match ev {
                    RendezvousEvent::Message {
                        from,
                        payload,
                        broker,
                        sent_at_ms,
                    } => {
                        received += 1;
                        let text = String::from_utf8_lossy(&payload);
                        out.line(
                            format_args!("{} {text}", from.node_id()),
                            &SignalLine::Message {
                                from: from.to_string(),
                                node_id: from.node_id().to_string(),
                                broker: broker.to_string(),
                                sent_at_ms,
                                message: &text,
                            },
                        );
                        if count.is_some_and(|c| received >= c) && !closing {
                            closing = true;
                            m.close(now);
                        }
                    }
                    RendezvousEvent::Rejected { reason, .. } => {
                        rejections.record(reason.label());
                        if let Some(summary) = rejections.due(now) {
                            out.note(summary.text(), &summary);
                        }
                    }
                    RendezvousEvent::Closed => return ControlFlow::Break(()),
                    other => report(&other, json),
                }
                ControlFlow::Continue(())
            })
            .map_err(|e| format!("event loop: {e}"))?;
        closed = matches!(end, RunEnd::Break | RunEnd::Idle);
        if let Some(summary) = rejections.due(rt.now()) {
            out.note(summary.text(), &summary);
        }
    }
    if let Some(summary) = rejections.finish() {
        out.note(summary.text(), &summary);
    }
    Ok(if count.is_some_and(|c| received < c) {
        1
    } else {
        0
    })
}

fn send(
    common: &Common,
    brokers: &[String],
    peer: &str,
    message: &str,
    timeout: Duration,
    want_receipt: bool,
) -> Result<i32, String> {
    let identity = load_identity(common)?;
    let (to, address) = parse_peer(peer)?;
    let (mut rt, mut machine) = start(common, brokers, identity)?;
    let via: Option<Vec<_>> = address.map(|a| a.brokers);
    let sent_at = rt.now();
    let sending = if want_receipt {
        machine.send_with_receipt(sent_at, &to, via.as_deref(), message.as_bytes())
    } else {
        machine.send(sent_at, &to, via.as_deref(), message.as_bytes())
    }
    .map_err(|e| e.to_string())?;
    let json = common.json;
    let mut acked = 0usize;
    let mut receipt = false;
    let mut closing = false;
    let end = rt
        .run(&mut machine, Some(timeout), |m, now, ev| {
            match ev {
                RendezvousEvent::Acknowledged { id, broker } if id == sending.id => {
                    acked += 1;
                    Reporter { json }.line(
                        format_args!("acknowledged by broker {broker}"),
                        &SignalLine::Acknowledged {
                            broker: broker.to_string(),
                        },
                    );
                }
                RendezvousEvent::Receipt {
                    id,
                    from,
                    broker,
                    received_at_ms,
                } if id == sending.id => {
                    receipt = true;
                    let round_trip_ms = now.saturating_duration_since(sent_at).as_millis();
                    Reporter { json }.line(
                        format_args!(
                            "receipt from {} via broker {broker} after {round_trip_ms} ms",
                            from.node_id()
                        ),
                        &SignalLine::Receipt {
                            from: from.to_string(),
                            node_id: from.node_id().to_string(),
                            broker: broker.to_string(),
                            received_at_ms,
                            round_trip_ms: u64::try_from(round_trip_ms).unwrap_or(u64::MAX),
                        },
                    );
                }
                RendezvousEvent::Closed => return ControlFlow::Break(()),
                other => report(&other, json),
            }
            // The receipt is proof of delivery: done even if a broker never acknowledged.
            let done = if want_receipt {
                receipt
            } else {
                acked >= sending.brokers
            };
            if done && !closing {
                closing = true;
                m.close(now);
            }
            ControlFlow::Continue(())
        })
        .map_err(|e| format!("event loop: {e}"))?;
    if end == RunEnd::TimeLimit {
        close(&mut rt, &mut machine);
    }
    if want_receipt && !receipt {
        errln!(
            "p2pd signal send: no receipt from the recipient within {} s ({acked} of {} \
             brokers acknowledged the message)",
            timeout.as_secs_f64(),
            sending.brokers
        );
        return Ok(1);
    }
    if acked == 0 && !receipt {
        errln!(
            "p2pd signal send: no broker acknowledged the message within {} s",
            timeout.as_secs_f64()
        );
        return Ok(1);
    }
    if acked < sending.brokers && !receipt {
        errln!(
            "p2pd signal send: {acked} of {} brokers acknowledged",
            sending.brokers
        );
    }
    Ok(0)
}

/// `p2pd signal listen|send --json`: one line per event.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum SignalLine<'a> {
    /// `listen`: this node's id, key, topic and address.
    Listening {
        node_id: String,
        public_key: String,
        topic: &'a str,
        address: &'a str,
    },
    /// `listen`: a message to us.
    Message {
        from: String,
        node_id: String,
        broker: String,
        sent_at_ms: u64,
        message: &'a str,
    },
    /// `send`: a broker took the message.
    Acknowledged { broker: String },
    /// `send`: the recipient's signed receipt.
    Receipt {
        from: String,
        node_id: String,
        broker: String,
        /// When the recipient answered (its clock, Unix ms).
        received_at_ms: u64,
        /// From sending to the receipt, on our clock.
        round_trip_ms: u64,
    },
}

/// A broker's health: `event` is `broker_up`, `broker_down` or `subscribed`; `detail` is empty
/// when there is nothing more to say. (Rejections are counted and summarised instead.)
#[derive(Debug, Serialize)]
struct BrokerLine<'a> {
    event: &'static str,
    broker: String,
    detail: &'a str,
}

/// Closes the machine and runs until its sockets are released (bounded).
fn close(rt: &mut Runtime, machine: &mut Rendezvous) {
    let now = rt.now();
    machine.close(now);
    let _ = rt.run(machine, Some(Duration::from_secs(2)), |_, _, ev| {
        if ev == RendezvousEvent::Closed {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
}

/// Broker health changes go to stderr (or JSON lines on stdout).
fn report(ev: &RendezvousEvent, json: bool) {
    let (kind, broker, detail) = match ev {
        RendezvousEvent::BrokerUp { broker } => ("broker_up", broker, String::new()),
        RendezvousEvent::BrokerDown {
            broker,
            reason,
            retry_in,
        } => (
            "broker_down",
            broker,
            format!("{reason}, retry in {} ms", retry_in.as_millis()),
        ),
        RendezvousEvent::Listening { broker } => ("subscribed", broker, String::new()),
        _ => return,
    };
    let human = if detail.is_empty() {
        format!("{kind} {broker}")
    } else {
        format!("{kind} {broker}: {detail}")
    };
    Reporter { json }.note(
        human,
        &BrokerLine {
            event: kind,
            broker: broker.to_string(),
            detail: &detail,
        },
    );
}

//! `p2pd name register|lookup|delete`: names on a PNP server (`p2pd pnp-server`), owned by this
//! node's identity and signed by it, so a lookup is verified without trusting the server.

use crate::{errln, outln};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use p2pd_proto::Instant;
use p2pd_signaling::pnp::{
    ErrorCode, Name, PnpClient, PnpClientConfig, PnpClientError, PnpClientEvent, PnpFailure,
    PnpServerId, PnpTransport, Record, RequestId,
};
use p2pd_signaling::{Identity, PublicKey};

use serde::Serialize;

use super::numbers::{self, MAX_SECONDS};
use super::report::{to_json, Reporter};
use super::resolve;
use crate::identity_file::{
    default_identity_path, generate_identity, os_seed, parse_hex, read_identity,
};
use p2pd_mio::Runtime;

/// The default PNP port.
pub const PNP_PORT: u16 = 5300;
/// How much longer than the request's own timeout the loop waits for the client to report.
const REPORT_GRACE: Duration = Duration::from_secs(2);

/// `p2pd name ...`
#[derive(Debug, Args)]
pub struct NameArgs {
    #[command(subcommand)]
    command: NameCommand,
}

/// How to reach the server; shared by every sub-command.
#[derive(Debug, Args)]
struct ServerArgs {
    /// The PNP server, HOST[:PORT] (default port 5300), or the id of a PNP server of the
    /// configuration (see `p2pd config show`). Default: the configuration's PNP server, if it
    /// lists exactly one.
    #[arg(long)]
    server: Option<String>,
    /// The server's public key (66 hex digits, printed by `p2pd pnp-server`). Default: the key
    /// the configuration gives the server.
    #[arg(long)]
    server_key: Option<String>,
    /// Use TCP instead of UDP.
    #[arg(long)]
    tcp: bool,
    /// Give up after this many seconds (0 to 31536000).
    #[arg(long, value_name = "S", default_value = "5", value_parser = numbers::seconds)]
    timeout: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// [`ServerArgs`] with the server and its key settled (from the flags or the configuration).
#[derive(Debug)]
struct ServerOptions {
    server: String,
    server_key: String,
    tcp: bool,
    timeout: Duration,
    json: bool,
}

/// Settles the server and its key: both flags as given; `--server` alone names a configured
/// server (by id or address) whose key is taken; neither takes the configuration's only PNP
/// server. Anything else is a usage error (exit 2), reported here.
fn server_options(
    verb: &str,
    args: &ServerArgs,
    config_flag: Option<&Path>,
) -> Result<ServerOptions, i32> {
    let command = format!("name {verb}");
    let settled = |server: String, server_key: String| ServerOptions {
        server,
        server_key,
        tcp: args.tcp,
        timeout: args.timeout,
        json: args.json,
    };
    let usage = |message: String| {
        errln!("p2pd {command}: {message}");
        crate::config::EXIT_CONFIG_ERROR
    };
    match (&args.server, &args.server_key) {
        (Some(server), Some(key)) => return Ok(settled(server.clone(), key.clone())),
        (None, Some(_)) => return Err(usage("--server-key needs --server".into())),
        _ => {}
    }
    let loaded = crate::config::load_for(&command, config_flag)?;
    let servers = &loaded.config.pnp;
    let chosen = match &args.server {
        Some(wanted) => {
            let as_endpoint = crate::config::Endpoint::parse(wanted, PNP_PORT).ok();
            let found = servers.iter().find(|p| {
                p.address.text == *wanted
                    || as_endpoint
                        .as_ref()
                        .is_some_and(|e| e.host == p.address.host && e.port == p.address.port)
                    || p.id()
                        .is_ok_and(|id| id.to_string() == wanted.to_ascii_lowercase())
            });
            found.ok_or_else(|| {
                usage(format!(
                    "--server {} is not a PNP server of the configuration ({}): give \
                     --server-key too",
                    super::quoted(wanted),
                    loaded.source
                ))
            })?
        }
        None => match servers.as_slice() {
            [] => {
                return Err(usage(format!(
                    "no PNP server: give --server and --server-key, or add a [[pnp]] table to the \
                     configuration ({}); {}",
                    loaded.source,
                    crate::config::NO_PUBLIC_PNP
                )))
            }
            [only] => only,
            several => {
                let ids: Vec<String> = several
                    .iter()
                    .map(|p| match p.id() {
                        Ok(id) => format!("{id} ({})", p.address.text),
                        Err(_) => p.address.text.clone(),
                    })
                    .collect();
                return Err(usage(format!(
                    "{} PNP servers in the configuration ({}): choose one with --server ID or \
                     ADDRESS: {}",
                    several.len(),
                    loaded.source,
                    ids.join(", ")
                )));
            }
        },
    };
    Ok(settled(chosen.address.text.clone(), chosen.key.to_string()))
}

#[derive(Debug, Subcommand)]
enum NameCommand {
    /// Register NAME with VALUE (or update it), owned and signed by this node's identity.
    Register {
        /// The name: 1 to 64 of a-z 0-9 - _ . starting with a letter or digit.
        name: String,
        /// The value (UTF-8 text, at most 640 bytes), for example a p2pd1: address.
        value: String,
        #[command(flatten)]
        server: ServerArgs,
        /// The record's version (0 to 18446744073709551615); it must exceed the version stored
        /// (default: the current Unix time in ms, so later registrations win).
        #[arg(long, value_parser = numbers::count::<u64>(0, u64::MAX))]
        version: Option<u64>,
        /// How long the record lives, in whole seconds (1 to 31536000; `p2pd pnp-server` keeps
        /// records at most 7 days).
        #[arg(long, default_value_t = 3600, value_parser = numbers::count::<u64>(1, MAX_SECONDS))]
        ttl: u64,
        /// The identity file (default: $P2PD_IDENTITY, else ~/.config/p2pd/identity.key).
        #[arg(long)]
        identity: Option<PathBuf>,
    },
    /// Look NAME up: prints its value, owner key, version and expiry; exits 1 if not found.
    Lookup {
        /// The name.
        name: String,
        #[command(flatten)]
        server: ServerArgs,
        /// The identity to sign the request with (default: a throwaway key).
        #[arg(long)]
        identity: Option<PathBuf>,
    },
    /// Delete NAME, which this node's identity must own.
    Delete {
        /// The name.
        name: String,
        #[command(flatten)]
        server: ServerArgs,
        /// The delete's version (0 to 18446744073709551615); it must exceed the version stored
        /// (default: the current Unix time in ms).
        #[arg(long, value_parser = numbers::count::<u64>(0, u64::MAX))]
        version: Option<u64>,
        /// The identity file (default as for `register`).
        #[arg(long)]
        identity: Option<PathBuf>,
    },
}

/// Runs `p2pd name`; returns the exit code (2 for a configuration error).
pub fn run(args: &NameArgs, config_flag: Option<&Path>) -> i32 {
    let (verb, server) = match &args.command {
        NameCommand::Register { server, .. } => ("register", server),
        NameCommand::Lookup { server, .. } => ("lookup", server),
        NameCommand::Delete { server, .. } => ("delete", server),
    };
    let server = match server_options(verb, server, config_flag) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let server = &server;
    let (verb, result) = match &args.command {
        NameCommand::Register {
            name,
            value,
            server: _,
            version,
            ttl,
            identity,
        } => (
            "register",
            register(name, value, server, *version, *ttl, identity.as_ref()),
        ),
        NameCommand::Lookup {
            name,
            server: _,
            identity,
        } => ("lookup", lookup(name, server, identity.as_ref())),
        NameCommand::Delete {
            name,
            server: _,
            version,
            identity,
        } => ("delete", delete(name, server, *version, identity.as_ref())),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            errln!("p2pd name {verb}: {e}");
            1
        }
    }
}

fn parse_name(name: &str) -> Result<Name, String> {
    Name::new(name).map_err(|e| format!("invalid name {}: {e}", super::quoted(name)))
}

fn owner_identity(path: Option<&PathBuf>) -> Result<Identity, String> {
    let path = path.cloned().unwrap_or_else(default_identity_path);
    read_identity(&path).map_err(|e| format!("{e} (create one with `p2pd id new`)"))
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The outcome of one request, with the server id it went to.
struct Exchange {
    event: PnpClientEvent,
    server_id: PnpServerId,
    /// Unix ms when the outcome arrived.
    unix_ms: u64,
}

/// Sends one request (made by `command`) and waits for its outcome.
fn exchange(
    options: &ServerOptions,
    identity: Identity,
    command: impl FnOnce(&mut PnpClient, Instant) -> Result<RequestId, PnpClientError>,
) -> Result<Exchange, String> {
    let server = resolve(&options.server, PNP_PORT)?;
    let key_bytes = parse_hex(&options.server_key).ok_or("--server-key is not hex")?;
    let key = PublicKey::from_bytes(&key_bytes).map_err(|e| format!("--server-key: {e}"))?;
    let timeout = options.timeout;
    let transport = if options.tcp {
        PnpTransport::Tcp
    } else {
        PnpTransport::Udp
    };
    let mut rt = Runtime::new().map_err(|e| format!("runtime: {e}"))?;
    let mut config = PnpClientConfig::new(server, key, transport, rt.unix_epoch_ms());
    config.timeout = timeout;
    let seed = os_seed().map_err(|e| format!("random seed: {e}"))?;
    let mut client = PnpClient::new(config, identity, seed);
    let server_id = client.server_id();
    command(&mut client, rt.now()).map_err(|e| e.to_string())?;
    let mut outcome = None;
    rt.run(
        &mut client,
        Some(timeout.saturating_add(REPORT_GRACE)),
        |m, now, event| {
            match event {
                PnpClientEvent::Closed => return ControlFlow::Break(()),
                event if outcome.is_none() => {
                    outcome = Some(event);
                    m.close(now);
                }
                _ => {}
            }
            ControlFlow::Continue(())
        },
    )
    .map_err(|e| format!("event loop: {e}"))?;
    let event = outcome.ok_or("the client reported nothing (internal error)")?;
    Ok(Exchange {
        event,
        server_id,
        unix_ms: unix_now_ms(),
    })
}

fn register(
    name: &str,
    value: &str,
    options: &ServerOptions,
    version: Option<u64>,
    ttl: u64,
    identity: Option<&PathBuf>,
) -> Result<i32, String> {
    let name = parse_name(name)?;
    let identity = owner_identity(identity)?;
    let owner = identity.public_key();
    let version = version.unwrap_or_else(unix_now_ms);
    let ttl = Duration::from_secs(ttl);
    let value = value.as_bytes().to_vec();
    let done = exchange(options, identity, |client, now| {
        client.register(now, name, value, version, ttl)
    })?;
    match done.event {
        PnpClientEvent::Registered { name, version, .. } => {
            Reporter { json: options.json }.line(
                format_args!(
                    "registered {name} version {version} for {} s (owner {owner}, server {})",
                    ttl.as_secs(),
                    done.server_id
                ),
                &NameLine::Registered {
                    name: name.as_str(),
                    version,
                    owner: owner.to_string(),
                    ttl_s: ttl.as_secs(),
                    server_id: done.server_id.to_string(),
                },
            );
            Ok(0)
        }
        other => failed(other, options),
    }
}

fn lookup(name: &str, options: &ServerOptions, identity: Option<&PathBuf>) -> Result<i32, String> {
    let name = parse_name(name)?;
    // A lookup needs no particular identity: a throwaway key reveals nothing about this node.
    let identity = match identity {
        Some(path) => owner_identity(Some(path))?,
        None => generate_identity().map_err(|e| format!("throwaway key: {e}"))?,
    };
    let done = exchange(options, identity, |client, now| client.lookup(now, name))?;
    match done.event {
        PnpClientEvent::Found { record, .. } => {
            print_record(&record, done.server_id, done.unix_ms, options.json);
            Ok(0)
        }
        PnpClientEvent::NotFound { name, .. } => {
            Reporter { json: options.json }.line(
                format_args!("{name}: not found"),
                &NameLine::NotFound {
                    name: name.as_str(),
                    server_id: done.server_id.to_string(),
                },
            );
            Ok(1)
        }
        other => failed(other, options),
    }
}

fn delete(
    name: &str,
    options: &ServerOptions,
    version: Option<u64>,
    identity: Option<&PathBuf>,
) -> Result<i32, String> {
    let name = parse_name(name)?;
    let identity = owner_identity(identity)?;
    let version = version.unwrap_or_else(unix_now_ms);
    let done = exchange(options, identity, |client, now| {
        client.delete(now, name, version)
    })?;
    match done.event {
        PnpClientEvent::Deleted { name, version, .. } => {
            Reporter { json: options.json }.line(
                format_args!(
                    "deleted {name} (version {version}, server {})",
                    done.server_id
                ),
                &NameLine::Deleted {
                    name: name.as_str(),
                    version,
                    server_id: done.server_id.to_string(),
                },
            );
            Ok(0)
        }
        other => failed(other, options),
    }
}

fn print_record(record: &Record, server_id: PnpServerId, unix_ms: u64, json: bool) {
    let value = String::from_utf8_lossy(record.value());
    let hex: String = record.value().iter().map(|b| format!("{b:02x}")).collect();
    let expires_in_s = record.expires_ms().saturating_sub(unix_ms) / 1000;
    if json {
        outln!(
            "{}",
            to_json(&NameLine::Found {
                name: record.name().as_str(),
                value: &value,
                value_hex: &hex,
                owner: record.owner().to_string(),
                version: record.version(),
                expires_ms: record.expires_ms(),
                expires_in_s,
                server_id: server_id.to_string(),
            }),
        );
    } else {
        outln!("name     {}", record.name());
        if std::str::from_utf8(record.value()).is_ok() {
            outln!("value    {value}");
        } else {
            outln!("value    (hex) {hex}");
        }
        outln!("owner    {}", record.owner());
        outln!("version  {}", record.version());
        outln!(
            "expires  {} (Unix ms, in {expires_in_s} s)",
            record.expires_ms()
        );
        outln!("server   {server_id}");
    }
}

/// `p2pd name ... --json`: the outcome, one line.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum NameLine<'a> {
    /// `register`: stored.
    Registered {
        name: &'a str,
        version: u64,
        owner: String,
        ttl_s: u64,
        server_id: String,
    },
    /// `lookup`: the verified record.
    Found {
        name: &'a str,
        value: &'a str,
        value_hex: &'a str,
        owner: String,
        version: u64,
        expires_ms: u64,
        expires_in_s: u64,
        server_id: String,
    },
    /// `lookup`: no such name.
    NotFound { name: &'a str, server_id: String },
    /// `delete`: gone.
    Deleted {
        name: &'a str,
        version: u64,
        server_id: String,
    },
    /// Any command: why it failed (`code` and `detail` only for a refusal).
    Failed {
        reason: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<u64>,
        message: &'a str,
    },
}

/// Explains a refusal code and its detail number.
fn explain(code: ErrorCode, detail: u64) -> String {
    match code {
        ErrorCode::NotFound => "not found".into(),
        ErrorCode::NotOwner => "the name belongs to another key".into(),
        ErrorCode::StaleVersion => {
            format!("stale version: the server holds version {detail}; give a larger --version")
        }
        ErrorCode::QuotaExceeded => format!("quota exceeded ({detail} names per source)"),
        ErrorCode::RateLimited => format!("rate limited; retry in {detail} ms"),
        ErrorCode::BadSignature => "the record's signature was refused".into(),
        ErrorCode::Malformed => "the server found the request malformed".into(),
        ErrorCode::TooLarge => format!("too large (limit {detail} bytes)"),
        ErrorCode::ServerBusy => "server busy (its store is full or failing)".into(),
        ErrorCode::InvalidName => "invalid name".into(),
        ErrorCode::InvalidExpiry => {
            format!(
                "invalid expiry (the latest accepted is {detail} Unix ms); give a shorter --ttl"
            )
        }
        ErrorCode::PaddingRequired => {
            format!("the server wants requests of at least {detail} bytes")
        }
        ErrorCode::UnsupportedVersion => {
            format!("the server speaks protocol version {detail}")
        }
        other => format!("error code {} (detail {detail})", other.to_u8()),
    }
}

/// What a client event is, in a word (for the message about an unexpected one).
fn event_name(event: &PnpClientEvent) -> &'static str {
    match event {
        PnpClientEvent::Registered { .. } => "registered",
        PnpClientEvent::Found { .. } => "found",
        PnpClientEvent::NotFound { .. } => "not found",
        PnpClientEvent::Deleted { .. } => "deleted",
        PnpClientEvent::Failed { .. } => "failed",
        PnpClientEvent::Closed => "closed",
        _ => "another event",
    }
}

/// Prints why a request failed; exit code 1.
fn failed(event: PnpClientEvent, options: &ServerOptions) -> Result<i32, String> {
    let (kind, code, detail, text) = match event {
        PnpClientEvent::Failed { reason, .. } => match reason {
            PnpFailure::Refused { code, detail } => (
                "refused",
                Some(code),
                Some(detail),
                format!("refused by the server: {}", explain(code, detail)),
            ),
            PnpFailure::Timeout => (
                "timeout",
                None,
                None,
                format!(
                    "no valid reply within {} s (check the address, --server-key and --tcp)",
                    options.timeout.as_secs_f64()
                ),
            ),
            PnpFailure::BadRecordSignature => (
                "bad_record_signature",
                None,
                None,
                "the server returned a record whose signature does not verify".into(),
            ),
            PnpFailure::ExpiredRecord => (
                "expired_record",
                None,
                None,
                "the server returned an expired record".into(),
            ),
            PnpFailure::Mismatch => (
                "mismatch",
                None,
                None,
                "the server's reply does not match the request".into(),
            ),
            PnpFailure::MalformedReply => (
                "malformed_reply",
                None,
                None,
                "the server's reply is malformed".into(),
            ),
            PnpFailure::Io { op, error } => ("io", None, None, format!("{op} failed: {error}")),
            PnpFailure::ConnectionClosed => (
                "connection_closed",
                None,
                None,
                "the server closed the connection before replying".into(),
            ),
            other => ("failed", None, None, other.to_string()),
        },
        other => (
            "unexpected",
            None,
            None,
            format!("unexpected event: {}", event_name(&other)),
        ),
    };
    let (code, detail) = match (code, detail) {
        (Some(code), Some(detail)) => (Some(code.to_string()), Some(detail)),
        _ => (None, None),
    };
    Reporter { json: options.json }.note(
        &text,
        &NameLine::Failed {
            reason: kind,
            code,
            detail,
            message: &text,
        },
    );
    Ok(1)
}

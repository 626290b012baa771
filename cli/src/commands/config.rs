//! `p2pd config show [--json] [--show-secrets]` and `p2pd config path [--json]`: the effective
//! configuration (see [`crate::config`]) and where it comes from.
//!
//! `show` prints TOML that is itself a valid configuration file (each server's canonical id in a
//! comment), or with `--json` one object: `source` (the file, or `built-in defaults`),
//! `found_by` (`--config`, `P2PD_CONFIG`, `default` or `none`), `defaults` (the keys that took
//! their built-in value), `stun` and `brokers` (`address`, `id`), `pnp` (`address`, `key`, `id`,
//! and `id_error` when the address does not resolve: a PNP id covers the resolved address),
//! `relay` (`address`, `id`, then `secret` or `username` and `password`) and `notes`. Secrets
//! and passwords are printed as `<redacted>` unless `--show-secrets`.

use crate::outln;
use std::fmt::Write as _;
use std::path::Path;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::report::to_json;
use crate::config::{
    self, broker_id, relay_id, stun_id, Endpoint, Loaded, Lookup, RelayAuth, NO_PUBLIC_PNP,
};

/// What secrets are printed as without `--show-secrets`.
pub const REDACTED: &str = "<redacted>";

/// `p2pd config ...`
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (the file's, with built-in defaults for what it leaves
    /// out) as TOML, with every server's canonical id.
    Show {
        /// Print one JSON object instead of TOML.
        #[arg(long)]
        json: bool,
        /// Print relay secrets and passwords instead of <redacted>.
        #[arg(long)]
        show_secrets: bool,
    },
    /// Print which configuration file is used (--config, else $P2PD_CONFIG, else
    /// ~/.config/p2pd/config.toml) and whether it exists.
    Path {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `p2pd config`; returns the exit code (2 for a configuration error).
pub fn run(args: &ConfigArgs, config_flag: Option<&Path>) -> i32 {
    match &args.command {
        ConfigCommand::Show { json, show_secrets } => {
            let loaded = match config::load_for("config show", config_flag) {
                Ok(l) => l,
                Err(code) => return code,
            };
            if *json {
                outln!("{}", to_json(&show_json(&loaded, *show_secrets)));
            } else {
                crate::out!("{}", show_toml(&loaded, *show_secrets));
            }
            0
        }
        ConfigCommand::Path { json } => {
            let lookup = config::lookup(config_flag);
            let exists = lookup.path().is_some_and(Path::exists);
            if *json {
                outln!(
                    "{}",
                    to_json(&PathLine {
                        path: lookup.path().map(|p| p.display().to_string()),
                        found_by: lookup.found_by(),
                        exists,
                    })
                );
            } else {
                match (&lookup, exists) {
                    (Lookup::None, _) => {
                        outln!("none (no $XDG_CONFIG_HOME or $HOME): built-in defaults")
                    }
                    (l, true) => outln!("{} (from {}, exists)", display(l), l.found_by()),
                    (l @ Lookup::Default(_), false) => {
                        outln!("{} (default, missing: built-in defaults)", display(l))
                    }
                    (l, false) => {
                        outln!("{} (from {}, missing: an error)", display(l), l.found_by())
                    }
                }
            }
            0
        }
    }
}

fn display(lookup: &Lookup) -> String {
    lookup
        .path()
        .map_or_else(String::new, |p| p.display().to_string())
}

/// `p2pd config path --json`.
#[derive(Debug, Serialize)]
struct PathLine {
    /// The file, or `null` when there is no home directory.
    path: Option<String>,
    found_by: &'static str,
    exists: bool,
}

/// `p2pd config show --json`.
#[derive(Debug, Serialize)]
struct ShowJson {
    source: String,
    found_by: &'static str,
    defaults: Vec<&'static str>,
    stun: Vec<Server>,
    brokers: Vec<Server>,
    pnp: Vec<PnpJson>,
    relay: Vec<RelayJson>,
    notes: Vec<&'static str>,
}

/// A STUN server or a broker.
#[derive(Debug, Serialize)]
struct Server {
    address: String,
    id: String,
}

#[derive(Debug, Serialize)]
struct PnpJson {
    address: String,
    key: String,
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct RelayJson {
    address: String,
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
}

fn secret(text: &str, show: bool) -> String {
    if show {
        text.to_string()
    } else {
        REDACTED.to_string()
    }
}

fn notes(loaded: &Loaded) -> Vec<&'static str> {
    let mut notes = Vec::new();
    if loaded.config.pnp.is_empty() {
        notes.push(NO_PUBLIC_PNP);
    }
    if loaded.config.relay.is_empty() {
        notes
            .push("no relays: none is built in (no public TURN credentials); add [[relay]] tables");
    }
    notes
}

fn show_json(loaded: &Loaded, show_secrets: bool) -> ShowJson {
    let c = &loaded.config;
    ShowJson {
        source: loaded.source.to_string(),
        found_by: loaded.lookup.found_by(),
        defaults: loaded.defaulted.clone(),
        stun: c
            .stun
            .iter()
            .map(|e| Server {
                address: e.text.clone(),
                id: stun_id(e).to_string(),
            })
            .collect(),
        brokers: c
            .brokers
            .iter()
            .map(|e| Server {
                address: e.text.clone(),
                id: broker_id(e).to_string(),
            })
            .collect(),
        pnp: c
            .pnp
            .iter()
            .map(|p| {
                let id = p.id();
                PnpJson {
                    address: p.address.text.clone(),
                    key: p.key.to_string(),
                    id: id.as_ref().ok().map(ToString::to_string),
                    id_error: id.err(),
                }
            })
            .collect(),
        relay: c
            .relay
            .iter()
            .map(|r| {
                let (s, u, p) = match &r.auth {
                    RelayAuth::Secret(s) => (Some(secret(s, show_secrets)), None, None),
                    RelayAuth::Credentials { username, password } => (
                        None,
                        Some(username.clone()),
                        Some(secret(password, show_secrets)),
                    ),
                };
                RelayJson {
                    address: r.address.text.clone(),
                    id: relay_id(&r.address).to_string(),
                    secret: s,
                    username: u,
                    password: p,
                }
            })
            .collect(),
        notes: notes(loaded),
    }
}

/// A TOML string (quoted and escaped).
fn quote(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

fn toml_list(out: &mut String, key: &str, items: &[Endpoint], id: impl Fn(&Endpoint) -> String) {
    if items.is_empty() {
        let _ = writeln!(out, "{key} = []");
        return;
    }
    let _ = writeln!(out, "{key} = [");
    for e in items {
        let _ = writeln!(out, "    {},  # id {}", quote(&e.text), id(e));
    }
    let _ = writeln!(out, "]");
}

fn show_toml(loaded: &Loaded, show_secrets: bool) -> String {
    let c = &loaded.config;
    let mut out = String::new();
    let _ = match &loaded.source {
        config::Source::File(p) => writeln!(
            out,
            "# p2pd configuration from {} (found by {})",
            p.display(),
            loaded.lookup.found_by()
        ),
        config::Source::BuiltIn => writeln!(
            out,
            "# p2pd configuration: built-in defaults ({})",
            match loaded.lookup.path() {
                Some(p) => format!("no file at {}", p.display()),
                None => "no $XDG_CONFIG_HOME or $HOME".to_string(),
            }
        ),
    };
    if matches!(loaded.source, config::Source::File(_)) && !loaded.defaulted.is_empty() {
        let _ = writeln!(
            out,
            "# built-in defaults for the keys the file leaves out: {}",
            loaded.defaulted.join(", ")
        );
    }
    out.push('\n');
    toml_list(&mut out, "stun", &c.stun, |e| stun_id(e).to_string());
    toml_list(&mut out, "brokers", &c.brokers, |e| {
        broker_id(e).to_string()
    });
    for note in notes(loaded) {
        let _ = writeln!(out, "\n# {note}");
    }
    for p in &c.pnp {
        let id = match p.id() {
            Ok(id) => format!("id {id}"),
            Err(e) => format!("id unknown: {e}"),
        };
        let _ = writeln!(out, "\n[[pnp]]");
        let _ = writeln!(out, "address = {}  # {id}", quote(&p.address.text));
        let _ = writeln!(out, "key = {}", quote(&p.key.to_string()));
    }
    for r in &c.relay {
        let _ = writeln!(out, "\n[[relay]]");
        let _ = writeln!(
            out,
            "address = {}  # id {}",
            quote(&r.address.text),
            relay_id(&r.address)
        );
        match &r.auth {
            RelayAuth::Secret(s) => {
                let _ = writeln!(out, "secret = {}", quote(&secret(s, show_secrets)));
            }
            RelayAuth::Credentials { username, password } => {
                let _ = writeln!(out, "username = {}", quote(username));
                let _ = writeln!(out, "password = {}", quote(&secret(password, show_secrets)));
            }
        }
    }
    out
}

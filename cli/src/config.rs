//! The configuration file: STUN servers, MQTT brokers, PNP servers and TURN relays.
//!
//! # Where it is
//!
//! [`lookup`] picks one file, in this order: the global `--config FILE` flag, else
//! `$P2PD_CONFIG` (an empty value counts as unset), else `$XDG_CONFIG_HOME/p2pd/config.toml`,
//! else `$HOME/.config/p2pd/config.toml` (the directory identity files use). A file named by the
//! flag or the variable must exist; a missing default file means the built-in defaults
//! ([`Config::builtin`]).
//!
//! # What it holds
//!
//! ```toml
//! stun = ["stun.example.org:3478", "192.0.2.1"]            # HOST[:PORT], default port 3478
//! brokers = ["test.mosquitto.org:1883", "broker.emqx.io"]  # HOST[:PORT], default port 1883
//!
//! [[pnp]]                                                  # a PNP name server
//! address = "pnp.example.org:5300"                         # HOST[:PORT], default port 5300
//! key = "02..."                                            # its secp256k1 public key, hex
//!
//! [[relay]]                                                # a TURN relay
//! address = "turn.example.org:3478"                        # HOST[:PORT], default port 3478
//! secret = "..."                                           # TURN REST API shared secret, or
//! # username = "..." and password = "..."                  # long-term credentials
//! ```
//!
//! A key missing from the file takes its built-in default (an empty list, `stun = []`, means
//! none). Unknown keys, malformed addresses, duplicate servers, bad keys and incomplete relays are
//! errors naming the file and the line. A file holding a relay (and so a secret or password) must
//! be readable and writable by its owner only (`chmod 600`), as identity files are. Secrets never
//! reach `Debug` output, logs or `p2pd config show` (unless `--show-secrets`).
//!
//! # Ids
//!
//! Every server is named by its canonical id, never by its position: STUN servers by
//! [`ServerId`] (a built-in server's address keeps the built-in id), brokers by [`BrokerId`],
//! PNP servers by [`PnpServerId`] (over the resolved address and the key), relays by
//! [`RelayId`] (the same FNV-1a scheme as brokers, with scheme `turn`).

use std::fmt;
use std::fs;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use p2pd_nat::{canonical_id, default_servers, ServerId};
use p2pd_signaling::pnp::PnpServerId;
use p2pd_signaling::rendezvous::MAX_BROKERS;
use p2pd_signaling::{BrokerId, PublicKey};
use serde::Deserialize;
use toml::Spanned;

use crate::identity_file::parse_hex;

/// The environment variable naming the configuration file.
pub const ENV_VAR: &str = "P2PD_CONFIG";
/// The configuration file's name in the p2pd configuration directory.
pub const FILE_NAME: &str = "config.toml";
/// The largest configuration file read: 1 MiB.
pub const MAX_CONFIG_FILE_LEN: u64 = 1024 * 1024;
/// The process exit code for a configuration error (as for any usage error).
pub const EXIT_CONFIG_ERROR: i32 = 2;

/// The default STUN port.
pub const STUN_PORT: u16 = crate::commands::STUN_PORT;
/// The default MQTT port.
pub const MQTT_PORT: u16 = crate::commands::signal::MQTT_PORT;
/// The default PNP port.
pub const PNP_PORT: u16 = crate::commands::name::PNP_PORT;
/// The default TURN port.
pub const TURN_PORT: u16 = 3478;

/// The built-in MQTT brokers: three public test brokers.
pub const DEFAULT_BROKERS: [&str; 3] = [
    "test.mosquitto.org:1883",
    "broker.hivemq.com:1883",
    "broker.emqx.io:1883",
];

/// Most STUN servers in a file.
pub const MAX_STUN: usize = p2pd_nat::MAX_SERVERS;
/// Most PNP servers in a file.
pub const MAX_PNP: usize = 64;
/// Most relays in a file.
pub const MAX_RELAYS: usize = 64;

/// Why there is no PNP server by default.
pub const NO_PUBLIC_PNP: &str = "no PNP servers: the PNP protocol has no public servers yet; run \
     `p2pd pnp-server` and add a [[pnp]] table with its address and key";

/// The p2pd configuration directory: `$XDG_CONFIG_HOME/p2pd`, else `$HOME/.config/p2pd` (`None`
/// without either). Identity files live there too.
pub fn config_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|dir| dir.join("p2pd"))
}

/// Which file holds the configuration, and how it was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// `--config FILE`.
    Flag(PathBuf),
    /// `$P2PD_CONFIG`.
    Env(PathBuf),
    /// The default path (its absence means the built-in defaults).
    Default(PathBuf),
    /// No flag, no variable, and neither `$XDG_CONFIG_HOME` nor `$HOME`: the built-in defaults.
    None,
}

impl Lookup {
    /// The file, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Lookup::Flag(p) | Lookup::Env(p) | Lookup::Default(p) => Some(p),
            Lookup::None => None,
        }
    }

    /// How the file was chosen: `--config`, `P2PD_CONFIG`, `default` or `none`.
    pub fn found_by(&self) -> &'static str {
        match self {
            Lookup::Flag(_) => "--config",
            Lookup::Env(_) => ENV_VAR,
            Lookup::Default(_) => "default",
            Lookup::None => "none",
        }
    }
}

/// Picks the configuration file: `flag`, else `$P2PD_CONFIG`, else the default path.
pub fn lookup(flag: Option<&Path>) -> Lookup {
    if let Some(path) = flag {
        return Lookup::Flag(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os(ENV_VAR).filter(|p| !p.is_empty()) {
        return Lookup::Env(PathBuf::from(path));
    }
    match config_dir() {
        Some(dir) => Lookup::Default(dir.join(FILE_NAME)),
        None => Lookup::None,
    }
}

/// A host: an IP literal or a DNS name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// An IP address.
    Ip(IpAddr),
    /// A DNS name (checked for syntax, not resolved).
    Name(String),
}

/// A `HOST[:PORT]` from the file: checked on load, resolved only when used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The host.
    pub host: Host,
    /// The port (the default port when the text gave none).
    pub port: u16,
    /// The text as written.
    pub text: String,
}

impl Endpoint {
    /// Parses `HOST[:PORT]`: `192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]:80`, `2001:db8::1`,
    /// `[2001:db8::1]`, `host.example.org`, `host.example.org:80`. Port 0 is refused.
    pub fn parse(text: &str, default_port: u16) -> Result<Endpoint, String> {
        let bad = |why: &str| {
            format!(
                "{} is not HOST[:PORT]: {why}",
                crate::commands::quoted(text)
            )
        };
        let port_of = |p: &str| match p.parse::<u16>() {
            Ok(0) => Err(bad("port 0")),
            Ok(p) => Ok(p),
            Err(_) => Err(bad("the port is not a number from 1 to 65535")),
        };
        let endpoint = |host, port| Endpoint {
            host,
            port,
            text: text.to_string(),
        };
        if let Ok(a) = text.parse::<SocketAddr>() {
            if a.port() == 0 {
                return Err(bad("port 0"));
            }
            return Ok(endpoint(Host::Ip(a.ip()), a.port()));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(endpoint(Host::Ip(ip), default_port));
        }
        if let Some(rest) = text.strip_prefix('[') {
            let (ip, after) = rest.split_once(']').ok_or_else(|| bad("no closing ]"))?;
            let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| bad("not an IPv6 address"))?;
            let port = match after {
                "" => default_port,
                p => port_of(p.strip_prefix(':').ok_or_else(|| bad("text after ]"))?)?,
            };
            return Ok(endpoint(Host::Ip(IpAddr::V6(ip)), port));
        }
        let (host, port) = match text.split_once(':') {
            Some((h, p)) if !p.contains(':') => (h, port_of(p)?),
            Some(_) => return Err(bad("not an IPv6 address (write [ADDRESS]:PORT)")),
            None => (text, default_port),
        };
        check_host_name(host).map_err(|why| bad(&why))?;
        Ok(endpoint(Host::Name(host.to_string()), port))
    }

    /// The host name, if the host is not an IP literal.
    pub fn host_name(&self) -> Option<&str> {
        match &self.host {
            Host::Name(n) => Some(n),
            Host::Ip(_) => None,
        }
    }

    /// The address canonical ids hash: the IP and port, or for a named host the port only (the
    /// ids of named servers cover the name and the port, never the address it resolves to).
    fn id_address(&self) -> SocketAddr {
        match self.host {
            Host::Ip(ip) => SocketAddr::new(ip, self.port),
            Host::Name(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), self.port),
        }
    }

    /// The address, resolving a name (preferring IPv4).
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        match self.host {
            Host::Ip(ip) => Ok(SocketAddr::new(ip, self.port)),
            Host::Name(_) => crate::commands::resolve(&self.text, self.port),
        }
    }
}

/// A DNS name's syntax: dot-separated labels of 1 to 63 letters, digits, `-` or `_` (not
/// starting or ending with `-`), 253 characters at most, an optional final dot.
fn check_host_name(host: &str) -> Result<(), String> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err("no host".into());
    }
    if name.len() > 253 {
        return Err("the host name is longer than 253 characters".into());
    }
    for label in name.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "bad host name label {}",
                crate::commands::quoted(label)
            ));
        }
    }
    Ok(())
}

/// A TURN relay's canonical id: FNV-1a of `"turn:" + host + ":" + port` for a named relay, else
/// of `"turn:" + address` (the scheme of [`BrokerId`] and [`ServerId`]). 16 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(pub u64);

impl fmt::Display for RelayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The canonical id of a STUN server: a built-in server's id for its primary address, else
/// [`ServerId::of`] the name (or the address). As `p2pd nat --server` names it, without resolving.
pub fn stun_id(e: &Endpoint) -> ServerId {
    if let Host::Ip(ip) = e.host {
        let addr = SocketAddr::new(ip, e.port);
        if let Some(builtin) = default_servers().iter().find(|s| s.primary == addr) {
            return builtin.id;
        }
    }
    ServerId::of(e.host_name(), e.id_address())
}

/// The canonical id of an MQTT broker, as `--broker` names it.
pub fn broker_id(e: &Endpoint) -> BrokerId {
    BrokerId::of(e.host_name(), e.id_address())
}

/// The canonical id of a relay.
pub fn relay_id(e: &Endpoint) -> RelayId {
    RelayId(canonical_id("turn", e.host_name(), e.id_address()))
}

/// A PNP server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PnpServer {
    /// Where it is.
    pub address: Endpoint,
    /// Its public key.
    pub key: PublicKey,
}

impl PnpServer {
    /// Its canonical id (resolving a host name: the id covers the address).
    pub fn id(&self) -> Result<PnpServerId, String> {
        Ok(PnpServerId::new(self.address.resolve()?, &self.key))
    }
}

/// How a relay authenticates us. `Debug` never shows the secret or the password.
#[derive(Clone, PartialEq, Eq)]
pub enum RelayAuth {
    /// A TURN REST API shared secret (time-limited credentials are derived from it).
    Secret(String),
    /// Long-term credentials.
    Credentials {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
}

impl fmt::Debug for RelayAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayAuth::Secret(_) => f.write_str("Secret(<redacted>)"),
            RelayAuth::Credentials { username, .. } => f
                .debug_struct("Credentials")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

/// A TURN relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relay {
    /// Where it is.
    pub address: Endpoint,
    /// How to authenticate.
    pub auth: RelayAuth,
}

/// The effective configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// STUN servers.
    pub stun: Vec<Endpoint>,
    /// MQTT brokers.
    pub brokers: Vec<Endpoint>,
    /// PNP servers.
    pub pnp: Vec<PnpServer>,
    /// TURN relays.
    pub relay: Vec<Relay>,
}

impl Config {
    /// The built-in defaults: the nat crate's STUN servers (their primary addresses), three
    /// public MQTT brokers ([`DEFAULT_BROKERS`]), no PNP server (none is public yet) and no relay
    /// (no credentials are ever built in).
    pub fn builtin() -> Config {
        Config {
            stun: builtin_stun(),
            brokers: builtin_brokers(),
            pnp: Vec::new(),
            relay: Vec::new(),
        }
    }

    /// Whether it holds a secret or a password.
    pub fn has_secrets(&self) -> bool {
        !self.relay.is_empty()
    }
}

fn builtin_stun() -> Vec<Endpoint> {
    default_servers()
        .iter()
        .filter_map(|s| Endpoint::parse(&s.primary.to_string(), STUN_PORT).ok())
        .collect()
}

fn builtin_brokers() -> Vec<Endpoint> {
    DEFAULT_BROKERS
        .iter()
        .filter_map(|b| Endpoint::parse(b, MQTT_PORT).ok())
        .collect()
}

/// Where the effective configuration came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// This file.
    File(PathBuf),
    /// The built-in defaults (no file).
    BuiltIn,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::BuiltIn => f.write_str("built-in defaults"),
        }
    }
}

/// A loaded configuration.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// How the file was chosen.
    pub lookup: Lookup,
    /// Where the values came from.
    pub source: Source,
    /// The values.
    pub config: Config,
    /// The keys that took their built-in default (absent from the file, or no file).
    pub defaulted: Vec<&'static str>,
}

impl Loaded {
    /// Whether `key` (`stun`, `brokers`, `pnp`, `relay`) took its built-in default.
    pub fn is_default(&self, key: &str) -> bool {
        self.defaulted.contains(&key)
    }
}

/// Loads the configuration [`lookup`] picks. Errors name the file (and the line when known).
pub fn load(flag: Option<&Path>) -> Result<Loaded, String> {
    let lookup = lookup(flag);
    let builtin = |lookup| Loaded {
        lookup,
        source: Source::BuiltIn,
        config: Config::builtin(),
        defaulted: vec!["stun", "brokers", "pnp", "relay"],
    };
    let path = match &lookup {
        Lookup::None => return Ok(builtin(lookup)),
        Lookup::Flag(p) | Lookup::Env(p) | Lookup::Default(p) => p.clone(),
    };
    let (text, mode) = match read_config_file(&path) {
        Ok(found) => found,
        Err(e) if e.kind == ReadErrorKind::NotFound && matches!(lookup, Lookup::Default(_)) => {
            return Ok(builtin(lookup))
        }
        Err(e) => {
            let hint = match (&lookup, e.kind) {
                (Lookup::Flag(_), ReadErrorKind::NotFound) => " (named by --config)",
                (Lookup::Env(_), ReadErrorKind::NotFound) => " (named by $P2PD_CONFIG)",
                _ => "",
            };
            return Err(format!("{}: {}{hint}", path.display(), e.message));
        }
    };
    let (config, defaulted) = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if config.has_secrets() {
        check_private(&path, mode)?;
    }
    Ok(Loaded {
        lookup,
        source: Source::File(path),
        config,
        defaulted,
    })
}

/// Refuses a file holding secrets that its group or others may read or write (Unix modes).
fn check_private(path: &Path, mode: u32) -> Result<(), String> {
    if mode & 0o077 != 0 {
        return Err(format!(
            "{}: permissions {mode:04o} are too open: the file holds relay secrets, so it must be \
             readable and writable by its owner only; fix with `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadErrorKind {
    NotFound,
    Other,
}

struct ReadError {
    kind: ReadErrorKind,
    message: String,
}

impl ReadError {
    fn other(message: impl Into<String>) -> Self {
        ReadError {
            kind: ReadErrorKind::Other,
            message: message.into(),
        }
    }
}

/// The text of the file at `path` and its permission bits (0 where there are none): only a
/// regular file of at most [`MAX_CONFIG_FILE_LEN`] bytes of UTF-8.
fn read_config_file(path: &Path) -> Result<(String, u32), ReadError> {
    let io = |e: std::io::Error| ReadError {
        kind: if e.kind() == std::io::ErrorKind::NotFound {
            ReadErrorKind::NotFound
        } else {
            ReadErrorKind::Other
        },
        message: if e.kind() == std::io::ErrorKind::NotFound {
            "no such file".to_string()
        } else {
            e.to_string()
        },
    };
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        // A FIFO without a writer would block the open; O_NONBLOCK returns at once and the
        // check below refuses it.
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = options.open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(ReadError::other(format!(
            "not a regular file ({}); the configuration is a TOML text file",
            crate::identity_file::file_kind(&meta)
        )));
    }
    let too_large = || {
        ReadError::other(format!(
            "larger than {MAX_CONFIG_FILE_LEN} bytes; not a p2pd configuration file"
        ))
    };
    if meta.len() > MAX_CONFIG_FILE_LEN {
        return Err(too_large());
    }
    #[cfg(unix)]
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o777
    };
    #[cfg(not(unix))]
    let mode = 0;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_CONFIG_FILE_LEN {
        return Err(too_large());
    }
    let text = String::from_utf8(bytes).map_err(|_| ReadError::other("not UTF-8 text"))?;
    Ok((text, mode))
}

/// The file as written; every key optional, nothing else allowed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    stun: Option<Vec<Spanned<String>>>,
    brokers: Option<Vec<Spanned<String>>>,
    pnp: Option<Vec<RawPnp>>,
    relay: Option<Vec<RawRelay>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPnp {
    address: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    address: Spanned<String>,
    secret: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Parses the text of a configuration file; returns it and the keys it left to the defaults.
/// Errors name the line.
pub fn parse(text: &str) -> Result<(Config, Vec<&'static str>), String> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let message = e.message().trim_end().to_string();
        match e.span() {
            Some(span) => format!("line {}: {message}", line_of(text, span.start)),
            None => message,
        }
    })?;
    let at = |span: std::ops::Range<usize>, message: String| {
        format!("line {}: {message}", line_of(text, span.start))
    };
    let mut defaulted = Vec::new();
    let builtin = Config::builtin();

    let stun = match raw.stun {
        None => {
            defaulted.push("stun");
            builtin.stun
        }
        Some(list) => endpoints(&list, "stun", STUN_PORT, MAX_STUN, |e| stun_id(e).as_u64())
            .map_err(|(span, m)| at(span, m))?,
    };
    let brokers = match raw.brokers {
        None => {
            defaulted.push("brokers");
            builtin.brokers
        }
        Some(list) => endpoints(&list, "brokers", MQTT_PORT, MAX_BROKERS, |e| {
            broker_id(e).as_u64()
        })
        .map_err(|(span, m)| at(span, m))?,
    };
    let pnp = match raw.pnp {
        None => {
            defaulted.push("pnp");
            builtin.pnp
        }
        Some(list) => {
            if list.len() > MAX_PNP {
                return Err(format!("at most {MAX_PNP} [[pnp]] tables"));
            }
            let mut out: Vec<PnpServer> = Vec::new();
            for p in list {
                let address = Endpoint::parse(p.address.get_ref(), PNP_PORT)
                    .map_err(|m| at(p.address.span(), format!("pnp address: {m}")))?;
                let key = parse_hex(p.key.get_ref())
                    .and_then(|b| PublicKey::from_bytes(&b).ok())
                    .ok_or_else(|| {
                        at(
                            p.key.span(),
                            "pnp key: not a secp256k1 public key in hex (66 hex digits, as \
                             `p2pd pnp-server` prints it)"
                                .into(),
                        )
                    })?;
                let server = PnpServer { address, key };
                if out
                    .iter()
                    .any(|o| o.key == server.key && same_place(&o.address, &server.address))
                {
                    return Err(at(
                        p.address.span(),
                        format!("pnp server {} listed twice", server.address.text),
                    ));
                }
                out.push(server);
            }
            out
        }
    };
    let relay = match raw.relay {
        None => {
            defaulted.push("relay");
            builtin.relay
        }
        Some(list) => {
            if list.len() > MAX_RELAYS {
                return Err(format!("at most {MAX_RELAYS} [[relay]] tables"));
            }
            let mut out: Vec<Relay> = Vec::new();
            for r in list {
                let span = r.address.span();
                let address = Endpoint::parse(r.address.get_ref(), TURN_PORT)
                    .map_err(|m| at(span.clone(), format!("relay address: {m}")))?;
                let name = address.text.clone();
                let auth = match (r.secret, r.username, r.password) {
                    (Some(secret), None, None) => RelayAuth::Secret(secret),
                    (None, Some(username), Some(password)) => {
                        RelayAuth::Credentials { username, password }
                    }
                    (Some(_), _, _) => {
                        return Err(at(
                            span,
                            format!(
                                "relay {name}: give either secret or username and password, \
                                 not both"
                            ),
                        ))
                    }
                    (None, Some(_), None) => {
                        return Err(at(span, format!("relay {name}: username without password")))
                    }
                    (None, None, Some(_)) => {
                        return Err(at(span, format!("relay {name}: password without username")))
                    }
                    (None, None, None) => {
                        return Err(at(
                            span,
                            format!(
                                "relay {name}: no credentials (give secret, or username and \
                                 password)"
                            ),
                        ))
                    }
                };
                let relay = Relay { address, auth };
                if out
                    .iter()
                    .any(|o| relay_id(&o.address) == relay_id(&relay.address))
                {
                    return Err(at(span, format!("relay {name} listed twice")));
                }
                out.push(relay);
            }
            out
        }
    };
    Ok((
        Config {
            stun,
            brokers,
            pnp,
            relay,
        },
        defaulted,
    ))
}

/// Whether two endpoints name the same host and port.
fn same_place(a: &Endpoint, b: &Endpoint) -> bool {
    let host = |e: &Endpoint| match &e.host {
        Host::Ip(ip) => ip.to_canonical().to_string(),
        Host::Name(n) => n.trim_end_matches('.').to_ascii_lowercase(),
    };
    a.port == b.port && host(a) == host(b)
}

/// Parses a list of `HOST[:PORT]`, refusing duplicates (by canonical id) and more than `max`.
fn endpoints(
    list: &[Spanned<String>],
    key: &str,
    default_port: u16,
    max: usize,
    id: impl Fn(&Endpoint) -> u64,
) -> Result<Vec<Endpoint>, (std::ops::Range<usize>, String)> {
    if list.len() > max {
        let span = list.first().map_or(0..0, Spanned::span);
        return Err((span, format!("{key}: at most {max} entries")));
    }
    let mut out: Vec<Endpoint> = Vec::new();
    for item in list {
        let e = Endpoint::parse(item.get_ref(), default_port)
            .map_err(|m| (item.span(), format!("{key}: {m}")))?;
        if let Some(first) = out.iter().find(|o| id(o) == id(&e)) {
            return Err((
                item.span(),
                format!(
                    "{key}: {} is the same server as {} (id {:016x})",
                    e.text,
                    first.text,
                    id(&e)
                ),
            ));
        }
        out.push(e);
    }
    Ok(out)
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    let end = at.min(text.len());
    text.as_bytes()
        .get(..end)
        .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
        + 1
}

/// Loads the configuration for a command that needs it; on failure prints the error and returns
/// the exit code ([`EXIT_CONFIG_ERROR`]).
pub fn load_for(command: &str, flag: Option<&Path>) -> Result<Loaded, i32> {
    load(flag).map_err(|e| {
        crate::errln!("p2pd {command}: configuration: {e}");
        EXIT_CONFIG_ERROR
    })
}

#[cfg(test)]
mod tests;

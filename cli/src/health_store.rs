//! Server health kept between runs: a small SQLite file (`health.sqlite`, next to the identity
//! file by default, see [`default_health_path`]) holding, for every server checked or used, when
//! it was last tried, when it last answered, its last RTT and its success and failure counts.
//!
//! `p2pd servers` writes it ([`HealthStore::record`]) and shows the last success of each server;
//! anything that picks among servers orders them with [`HealthStore::rank`]: freshest working
//! first, never tried next, failing last. Servers are keyed by their kind and canonical id (see
//! [`crate::config`]), never by their position in a list, so reordering or editing the
//! configuration keeps every server's history.
//!
//! The schema carries its version in `PRAGMA user_version` ([`SCHEMA_VERSION`]); a file with
//! another version is refused rather than guessed at. Nothing in the file is trusted to be
//! in range: counters and times read back are clamped, never a panic.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

/// The schema version this code writes and reads (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

/// The health file's name in the identity file's directory.
pub const FILE_NAME: &str = "health.sqlite";

/// How long a statement waits for another process holding the file (two `p2pd` at once).
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

const CREATE_SCHEMA: &str = "
    CREATE TABLE health (
        kind                 TEXT    NOT NULL,
        id                   INTEGER NOT NULL,
        address              TEXT    NOT NULL,
        last_attempt_ms      INTEGER NOT NULL,
        last_success_ms      INTEGER,
        last_rtt_us          INTEGER,
        successes            INTEGER NOT NULL,
        failures             INTEGER NOT NULL,
        consecutive_failures INTEGER NOT NULL,
        last_error           TEXT,
        PRIMARY KEY (kind, id)
    ) WITHOUT ROWID;
";

/// The longest error text kept for a server.
const MAX_ERROR_LEN: usize = 512;

/// What kind of server (each kind has its own ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServerKind {
    /// A STUN server over UDP.
    StunUdp,
    /// A STUN server over TCP.
    StunTcp,
    /// An MQTT broker.
    Mqtt,
    /// A PNP name server (with its key).
    Pnp,
    /// A TURN relay.
    Relay,
}

impl ServerKind {
    /// Every kind, in the order `p2pd servers` lists them.
    pub const ALL: [ServerKind; 5] = [
        ServerKind::StunUdp,
        ServerKind::StunTcp,
        ServerKind::Mqtt,
        ServerKind::Pnp,
        ServerKind::Relay,
    ];

    /// The kind's name in the file and in `--json`: `stun-udp`, `stun-tcp`, `mqtt`, `pnp` or
    /// `relay`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerKind::StunUdp => "stun-udp",
            ServerKind::StunTcp => "stun-tcp",
            ServerKind::Mqtt => "mqtt",
            ServerKind::Pnp => "pnp",
            ServerKind::Relay => "relay",
        }
    }
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the store knows about one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// The address it was last tried at (as configured).
    pub address: String,
    /// When it was last tried (Unix ms).
    pub last_attempt_ms: u64,
    /// When it last answered (Unix ms), if ever.
    pub last_success_ms: Option<u64>,
    /// The RTT of its last answer.
    pub last_rtt: Option<Duration>,
    /// Answers in all.
    pub successes: u64,
    /// Failures in all.
    pub failures: u64,
    /// Failures since its last answer (0 when the last attempt succeeded).
    pub consecutive_failures: u64,
    /// Why the last attempt failed (`None` when it succeeded).
    pub last_error: Option<String>,
}

/// The health file. See the [module docs](self).
pub struct HealthStore {
    connection: Connection,
}

impl fmt::Debug for HealthStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthStore")
            .field("path", &self.connection.path())
            .finish()
    }
}

/// Where the health file is by default: `health.sqlite` in the directory of the identity file
/// ([`crate::identity_file::default_identity_path`]).
pub fn default_health_path() -> PathBuf {
    let identity = crate::identity_file::default_identity_path();
    match identity.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(FILE_NAME),
        _ => PathBuf::from(FILE_NAME),
    }
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Ids are any u64; SQLite integers are i64: the same 64 bits.
fn id_to_sql(id: u64) -> i64 {
    i64::from_be_bytes(id.to_be_bytes())
}

/// Cuts `text` to at most [`MAX_ERROR_LEN`] bytes at a character boundary.
fn clip(text: &str) -> &str {
    let mut end = text.len().min(MAX_ERROR_LEN);
    while !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    text.get(..end).unwrap_or("")
}

impl HealthStore {
    /// Opens (or creates) the health file at `path`, creating its directory if needed. Errors
    /// name the file.
    pub fn open(path: &Path) -> Result<HealthStore, String> {
        let named = |e: &dyn fmt::Display| format!("{}: {e}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|e| named(&e))?;
            }
        }
        let connection = Connection::open(path).map_err(|e| named(&e))?;
        Self::prepare(connection).map_err(|e| named(&e))
    }

    /// A store in memory (tests); gone when dropped.
    pub fn in_memory() -> Result<HealthStore, String> {
        let connection = Connection::open_in_memory().map_err(|e| e.to_string())?;
        Self::prepare(connection)
    }

    fn prepare(connection: Connection) -> Result<HealthStore, String> {
        connection
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let version: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| format!("not an SQLite database ({e})"))?;
        match version {
            0 => {
                let tables: i64 = connection
                    .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
                    .map_err(|e| e.to_string())?;
                if tables != 0 {
                    return Err("an SQLite database that is not a p2pd health file".into());
                }
                connection
                    .execute_batch(&format!(
                        "BEGIN; {CREATE_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                    ))
                    .map_err(|e| format!("cannot create the schema: {e}"))?;
            }
            SCHEMA_VERSION => {}
            other => {
                return Err(format!(
                    "health file schema version {other}; this p2pd reads version \
                     {SCHEMA_VERSION} (remove the file to start afresh)"
                ))
            }
        }
        Ok(HealthStore { connection })
    }

    /// Records one attempt on the server `id` of `kind` at `address`, made at `now_unix_ms`:
    /// `Ok(rtt)` if it answered, `Err(why)` if not.
    pub fn record(
        &mut self,
        kind: ServerKind,
        id: u64,
        address: &str,
        outcome: Result<Duration, String>,
        now_unix_ms: u64,
    ) -> Result<(), String> {
        let old = self.get(kind, id)?;
        let mut h = old.unwrap_or(Health {
            address: String::new(),
            last_attempt_ms: 0,
            last_success_ms: None,
            last_rtt: None,
            successes: 0,
            failures: 0,
            consecutive_failures: 0,
            last_error: None,
        });
        h.address = address.to_string();
        h.last_attempt_ms = now_unix_ms;
        match outcome {
            Ok(rtt) => {
                h.last_success_ms = Some(now_unix_ms);
                h.last_rtt = Some(rtt);
                h.successes = h.successes.saturating_add(1);
                h.consecutive_failures = 0;
                h.last_error = None;
            }
            Err(why) => {
                h.failures = h.failures.saturating_add(1);
                h.consecutive_failures = h.consecutive_failures.saturating_add(1);
                h.last_error = Some(clip(&why).to_string());
            }
        }
        let rtt_us = h
            .last_rtt
            .map(|r| i64::try_from(r.as_micros()).unwrap_or(i64::MAX));
        self.connection
            .execute(
                "INSERT OR REPLACE INTO health (kind, id, address, last_attempt_ms, \
                 last_success_ms, last_rtt_us, successes, failures, consecutive_failures, \
                 last_error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    kind.as_str(),
                    id_to_sql(id),
                    h.address,
                    i64_of(h.last_attempt_ms),
                    h.last_success_ms.map(i64_of),
                    rtt_us,
                    i64_of(h.successes),
                    i64_of(h.failures),
                    i64_of(h.consecutive_failures),
                    h.last_error,
                ],
            )
            .map_err(|e| format!("cannot record the health of {kind} {id:016x}: {e}"))?;
        Ok(())
    }

    /// Runs `f` in one transaction, so many records cost one write to disk; nothing of it is kept
    /// if `f` fails.
    pub fn batch<R>(
        &mut self,
        f: impl FnOnce(&mut HealthStore) -> Result<R, String>,
    ) -> Result<R, String> {
        self.connection
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| format!("cannot start a transaction: {e}"))?;
        match f(self) {
            Ok(r) => {
                self.connection
                    .execute_batch("COMMIT")
                    .map_err(|e| format!("cannot commit: {e}"))?;
                Ok(r)
            }
            Err(e) => {
                let _ = self.connection.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// What the store knows about the server `id` of `kind`, if anything.
    pub fn get(&self, kind: ServerKind, id: u64) -> Result<Option<Health>, String> {
        self.connection
            .query_row(
                "SELECT address, last_attempt_ms, last_success_ms, last_rtt_us, successes, \
                 failures, consecutive_failures, last_error FROM health WHERE kind = ?1 AND id = ?2",
                params![kind.as_str(), id_to_sql(id)],
                |row| {
                    let rtt_us: Option<i64> = row.get(3)?;
                    Ok(Health {
                        address: row.get(0)?,
                        last_attempt_ms: u64_of(row.get(1)?),
                        last_success_ms: row.get::<_, Option<i64>>(2)?.map(u64_of),
                        last_rtt: rtt_us.map(|us| Duration::from_micros(u64_of(us))),
                        successes: u64_of(row.get(4)?),
                        failures: u64_of(row.get(5)?),
                        consecutive_failures: u64_of(row.get(6)?),
                        last_error: row.get(7)?,
                    })
                },
            )
            .optional()
            .map_err(|e| format!("cannot read the health of {kind} {id:016x}: {e}"))
    }

    /// Orders `ids` best first: recently succeeded (the last attempt answered; most recent
    /// success first, then lower RTT), then never tried, then failing (fewest consecutive
    /// failures first, then the most recent success); stable otherwise (equal servers keep the
    /// order they were given in).
    pub fn rank(&self, kind: ServerKind, ids: &[u64]) -> Result<Vec<u64>, String> {
        let mut keyed = Vec::with_capacity(ids.len());
        for &id in ids {
            keyed.push((rank_key(self.get(kind, id)?.as_ref()), id));
        }
        keyed.sort_by_key(|k| k.0);
        Ok(keyed.into_iter().map(|(_, id)| id).collect())
    }
}

/// The sort key of [`HealthStore::rank`]: smaller is better.
fn rank_key(h: Option<&Health>) -> (u8, u64, u64) {
    let older = |ms: Option<u64>| u64::MAX.saturating_sub(ms.unwrap_or(0));
    match h {
        Some(h) if h.consecutive_failures == 0 && h.last_success_ms.is_some() => {
            let rtt = h.last_rtt.map_or(u64::MAX, |r| {
                u64::try_from(r.as_micros()).unwrap_or(u64::MAX)
            });
            (0, older(h.last_success_ms), rtt)
        }
        None => (1, 0, 0),
        Some(h) => (2, h.consecutive_failures.max(1), older(h.last_success_ms)),
    }
}

#[cfg(test)]
mod tests;

//! A [`NameStore`] on SQLite, so a PNP server keeps its names across restarts and crashes.
//!
//! One table holds every name: the name (primary key), the owner-signed record as
//! [`Record::to_bytes`], its expiry in Unix milliseconds and the 9-byte [`SourceKey`] that wrote
//! it, with an index on (source, expiry) (quotas count a source's unexpired names) and one on the
//! expiry (pruning and making room take the earliest first). The schema carries its version in
//! `PRAGMA user_version` ([`SCHEMA_VERSION`]); a version-1 file is upgraded in place (one index
//! replaced), a file with any other version is refused rather than guessed at.
//!
//! Expired names count against nothing: a new name in a store at its capacity takes the place of
//! expired ones (at most [`RECLAIM_PER_PUT`] per insert), and pruning deletes at most the given
//! number of rows per call, earliest expiry first, and stops after [`PRUNE_TIME_BUDGET`], so that
//! a million names expiring together are removed in many short transactions instead of one long
//! `DELETE` that stalls the server (`cargo bench -p p2pd --bench pnp_prune` measures it).
//!
//! The file is opened in WAL mode with `synchronous = FULL`: a write the server has answered
//! is on disk, and a process killed at any moment leaves a consistent database. The log is
//! copied into the file by a thread of the store's own (a `PASSIVE` checkpoint every 250 ms),
//! not by whichever write crosses SQLite's auto-checkpoint threshold, so no store call that the
//! server's loop waits for pays for a checkpoint and its fsyncs.
//!
//! Nothing read back is trusted: every record is parsed and its owner signature verified, and it
//! must agree with its row (name, expiry). A row that fails is reported as
//! [`StoreError::Backend`] (the server answers `ServerBusy` for that name), never a panic.
//!
//! One `SqliteStore` should own a database file at a time: the name count behind the capacity
//! bound is kept in memory (counting a large table on every insert would be slow), so rows written
//! by another process are only counted after a reopen. Reading the file meanwhile (for example
//! with the `sqlite3` shell) is fine.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use p2pd_signaling::pnp::{
    Name, NameStore, Record, SourceKey, StoreError, StoredName, RECLAIM_PER_PUT,
};
use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension};

mod checkpointer;
use checkpointer::Checkpointer;

/// The schema version this code writes and reads (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 2;

/// The capacity of [`SqliteStore::open`] and [`SqliteStore::in_memory`] unless
/// [`SqliteStore::with_capacity`] sets another.
pub const DEFAULT_CAPACITY: u64 = 1_000_000;

/// How long a statement waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// The page cache of a store's connection, in KiB.
const CACHE_KIB: i64 = 64 * 1024;

/// Rows one prune statement deletes (a prune call runs several in one transaction).
const PRUNE_CHUNK: u64 = 32;

/// A prune call stops starting new chunks after this long, whatever its `max`: the server's loop
/// waits for the call, and on a slow or busy disk a fixed row count is no time bound (expired
/// rows are scattered over the table, so every deleted row dirties a page of its own).
pub const PRUNE_TIME_BUDGET: Duration = Duration::from_millis(8);

const CREATE_SCHEMA: &str = "
    CREATE TABLE names (
        name       TEXT    PRIMARY KEY NOT NULL,
        record     BLOB    NOT NULL,
        expires_ms INTEGER NOT NULL,
        source     BLOB    NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX names_by_source_expiry ON names (source, expires_ms);
    CREATE INDEX names_by_expiry ON names (expires_ms);
";

/// Version 1 -> 2: quotas count unexpired names only, so the source index carries the expiry.
const UPGRADE_FROM_1: &str = "
    DROP INDEX IF EXISTS names_by_source;
    CREATE INDEX names_by_source_expiry ON names (source, expires_ms);
";

/// A bounded [`NameStore`] in an SQLite database (a file, or memory for tests).
pub struct SqliteStore {
    connection: Connection,
    capacity: u64,
    /// Rows in the table, counted at open and kept up to date by every write.
    len: u64,
    /// For a file: the thread that checkpoints the write-ahead log.
    checkpointer: Option<Checkpointer>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.connection.path())
            .field("capacity", &self.capacity)
            .field("len", &self.len)
            .finish()
    }
}

fn backend(error: rusqlite::Error) -> StoreError {
    StoreError::Backend(error.to_string())
}

/// Unix milliseconds as an SQLite integer. Times past `i64::MAX` ms (292 million years) are
/// clamped; they only order the pruning index, the record itself keeps the exact value.
fn to_sql_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Opens (or creates) the database file at `path`, in WAL mode, creating the schema in a new
    /// file. Fails on a file that is not SQLite or has another [`SCHEMA_VERSION`].
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref();
        let connection = Connection::open(path)
            .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
        let mode: String = connection
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "{}: cannot use the WAL journal (SQLite chose \"{}\")",
                path.display(),
                mode.escape_debug()
            )));
        }
        // Checkpoints (copying the log into the file, with its fsyncs) run on a thread of their
        // own, never inside a store call that the server's loop waits for.
        connection
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(backend)?;
        let mut store = Self::prepare(connection)?;
        store.checkpointer = Some(
            Checkpointer::start(path, BUSY_TIMEOUT)
                .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?,
        );
        Ok(store)
    }

    /// A fresh database in memory (tests, simulation); gone when dropped.
    pub fn in_memory() -> Result<SqliteStore, StoreError> {
        Self::prepare(Connection::open_in_memory().map_err(backend)?)
    }

    /// The same store, holding at most `capacity` unexpired names: inserting a new name beyond
    /// it fails with [`StoreError::Full`] unless expired names can make room (replacing an
    /// existing name always works). A database that already holds more keeps them.
    pub fn with_capacity(mut self, capacity: u64) -> SqliteStore {
        self.capacity = capacity;
        self
    }

    /// The most names this store accepts.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn prepare(connection: Connection) -> Result<SqliteStore, StoreError> {
        connection.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        // A page cache that holds a busy server's hot pages (a million names take about 280 MB
        // on disk; SQLite's default cache is 2 MB, which makes every scattered delete a miss).
        connection
            .pragma_update(None, "cache_size", CACHE_KIB.wrapping_neg())
            .map_err(backend)?;
        let version: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(backend)?;
        match version {
            0 => {
                // A new database (or an empty one): create the schema and stamp it, atomically.
                connection
                    .execute_batch(&format!(
                        "BEGIN IMMEDIATE; {CREATE_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                    ))
                    .map_err(|e| {
                        let _ = connection.execute_batch("ROLLBACK");
                        StoreError::Backend(format!("cannot create the schema: {e}"))
                    })?;
            }
            1 => {
                connection
                    .execute_batch(&format!(
                        "BEGIN IMMEDIATE; {UPGRADE_FROM_1} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                    ))
                    .map_err(|e| {
                        let _ = connection.execute_batch("ROLLBACK");
                        StoreError::Backend(format!("cannot upgrade the schema from version 1: {e}"))
                    })?;
            }
            SCHEMA_VERSION => {}
            other => {
                return Err(StoreError::Backend(format!(
                    "unsupported schema version {other} (this build reads version {SCHEMA_VERSION})"
                )))
            }
        }
        let len: i64 = connection
            .query_row("SELECT COUNT(*) FROM names", [], |row| row.get(0))
            .map_err(backend)?;
        Ok(SqliteStore {
            connection,
            capacity: DEFAULT_CAPACITY,
            len: u64::try_from(len).unwrap_or(0),
            checkpointer: None,
        })
    }

    /// Deletes at most `max` names expired at `now_ms`, earliest first (one statement over the
    /// expiry index, so its cost is bounded by `max`); how many.
    fn delete_expired(connection: &Connection, now_ms: u64, max: u64) -> Result<u64, StoreError> {
        let removed = connection
            .prepare_cached(
                "DELETE FROM names WHERE name IN (
                     SELECT name FROM names WHERE expires_ms <= ?1 ORDER BY expires_ms LIMIT ?2
                 )",
            )
            .and_then(|mut s| s.execute(params![to_sql_ms(now_ms), to_sql_ms(max)]))
            .map_err(backend)?;
        Ok(u64::try_from(removed).unwrap_or(u64::MAX))
    }

    /// Decodes and checks one row; any disagreement is corruption.
    fn decode_row(
        name: &Name,
        record: Value,
        expires_ms: Value,
        source: Value,
    ) -> Result<StoredName, StoreError> {
        let corrupt = |what: &str| StoreError::Backend(format!("corrupt row for {name}: {what}"));
        let (Value::Blob(record), Value::Integer(expires_ms), Value::Blob(source)) =
            (record, expires_ms, source)
        else {
            return Err(corrupt("a column has the wrong type"));
        };
        let record = Record::from_bytes(&record).map_err(|e| corrupt(&format!("record: {e}")))?;
        if record.name() != name {
            return Err(corrupt("the record is for another name"));
        }
        if !record.verify() {
            return Err(corrupt("the record's owner signature does not verify"));
        }
        if to_sql_ms(record.expires_ms()) != expires_ms {
            return Err(corrupt("the expiry column disagrees with the record"));
        }
        let source = SourceKey::from_bytes(&source).ok_or_else(|| corrupt("bad source key"))?;
        Ok(StoredName { record, source })
    }
}

impl NameStore for SqliteStore {
    fn get(&self, name: &Name) -> Result<Option<StoredName>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT record, expires_ms, source FROM names WHERE name = ?1")
            .map_err(backend)?;
        // Read as untyped values: a column of the wrong type is a corrupt row, not a query error.
        let row = statement
            .query_row([name.as_str()], |row| {
                Ok((
                    row.get::<_, Value>(0)?,
                    row.get::<_, Value>(1)?,
                    row.get::<_, Value>(2)?,
                ))
            })
            .optional()
            .map_err(backend)?;
        match row {
            None => Ok(None),
            Some((record, expires_ms, source)) => {
                Self::decode_row(name, record, expires_ms, source).map(Some)
            }
        }
    }

    fn put(&mut self, entry: StoredName, now_ms: u64) -> Result<(), StoreError> {
        let name = entry.record.name().as_str();
        let transaction = self.connection.transaction().map_err(backend)?;
        let exists = transaction
            .prepare_cached("SELECT 1 FROM names WHERE name = ?1")
            .and_then(|mut s| s.exists([name]))
            .map_err(backend)?;
        let mut freed = 0;
        if !exists && self.len >= self.capacity {
            // Expired names do not count: make room from them (dropping the transaction on
            // `Full` rolls this back, which is harmless).
            let excess = self.len.saturating_sub(self.capacity).saturating_add(1);
            freed = Self::delete_expired(&transaction, now_ms, excess.min(RECLAIM_PER_PUT))?;
            if freed == 0 {
                return Err(StoreError::Full);
            }
        }
        transaction
            .prepare_cached(
                "INSERT INTO names (name, record, expires_ms, source) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET
                     record = excluded.record,
                     expires_ms = excluded.expires_ms,
                     source = excluded.source",
            )
            .and_then(|mut s| {
                s.execute(params![
                    name,
                    entry.record.to_bytes(),
                    to_sql_ms(entry.record.expires_ms()),
                    &entry.source.to_bytes()[..],
                ])
            })
            .map_err(backend)?;
        transaction.commit().map_err(backend)?;
        self.len = self.len.saturating_sub(freed);
        if !exists {
            self.len = self.len.saturating_add(1);
        }
        Ok(())
    }

    fn delete(&mut self, name: &Name) -> Result<bool, StoreError> {
        let removed = self
            .connection
            .prepare_cached("DELETE FROM names WHERE name = ?1")
            .and_then(|mut s| s.execute([name.as_str()]))
            .map_err(backend)?;
        self.len = self.len.saturating_sub(removed as u64);
        Ok(removed > 0)
    }

    fn count_for_source(&self, source: SourceKey, now_ms: u64) -> Result<u64, StoreError> {
        let count: i64 = self
            .connection
            .prepare_cached("SELECT COUNT(*) FROM names WHERE source = ?1 AND expires_ms > ?2")
            .and_then(|mut s| {
                s.query_row(params![&source.to_bytes()[..], to_sql_ms(now_ms)], |row| {
                    row.get(0)
                })
            })
            .map_err(backend)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Deletes expired rows in chunks of [`PRUNE_CHUNK`] inside one transaction, until `max`
    /// rows, none left, or [`PRUNE_TIME_BUDGET`] spent. The transaction commits with
    /// `synchronous = NORMAL` (no fsync of its own; a prune lost to a power cut is redone), so
    /// the call costs its deletes and nothing else.
    fn prune_expired(&mut self, now_ms: u64, max: u64) -> Result<u64, StoreError> {
        let started = std::time::Instant::now();
        self.connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(backend)?;
        let result = (|| {
            let transaction = self.connection.transaction().map_err(backend)?;
            let mut removed = 0u64;
            while removed < max {
                let chunk = PRUNE_CHUNK.min(max.saturating_sub(removed));
                let n = Self::delete_expired(&transaction, now_ms, chunk)?;
                removed = removed.saturating_add(n);
                if n < chunk || started.elapsed() >= PRUNE_TIME_BUDGET {
                    break;
                }
            }
            transaction.commit().map_err(backend)?;
            Ok(removed)
        })();
        let restored = self
            .connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(backend);
        let removed = result?;
        restored?;
        self.len = self.len.saturating_sub(removed);
        Ok(removed)
    }

    fn len(&self) -> Result<u64, StoreError> {
        Ok(self.len)
    }
}

#[cfg(test)]
mod tests;

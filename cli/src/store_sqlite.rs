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
//! expired ones (at most [`RECLAIM_PER_PUT`] per insert), and pruning removes the rest, earliest
//! expiry first, a bounded number per call.
//!
//! The file is opened in WAL mode with `synchronous = FULL`: a write the server has answered
//! is on disk, and a process killed at any moment leaves a consistent database.
//!
//! Nothing read back is trusted: every record is parsed and its owner signature verified, and it
//! must agree with its row (name, expiry). A row that fails is reported as
//! [`StoreError::Backend`] (the server answers `ServerBusy` for that name), never a panic.
//!
//! One `SqliteStore` should own a database file at a time: the name count behind the capacity
//! bound is kept in memory (counting a large table on every insert would be slow), so rows written
//! by another process are only counted after a reopen. Reading the file meanwhile (for example
//! with the `sqlite3` shell) is fine.
//!
//! ## Pruning on a thread of the store's own
//!
//! A file store deletes expired names and checkpoints the write-ahead log on a thread with its
//! own connection; [`NameStore::prune_expired`] only gives it the time and a credit of rows and
//! returns how many it deleted since the last call (and [`NameStore::prune_pending`] whether it
//! is still at it), so the call never touches the database. A store in memory, where no disk
//! waits, prunes within the call ([`PRUNE_CHUNK`]-row statements in one transaction, at most
//! [`PRUNE_TIME_BUDGET`]).
//!
//! Why, measured with `cargo bench -p p2pd --bench pnp_prune` (a million expired names, 280 MB,
//! ext4 on a virtual disk): when the server's loop pruned within the call (an 8 ms budget, a
//! commit without fsync), its calls took a median of 18 ms and up to 116 to 405 ms across runs.
//! Both halves stalled: the deletes (up to 120 ms) and the commit (up to 130 ms). Each
//! deleted row dirties about 1.25 pages (the table is ordered by name, so rows expiring together
//! sit on pages of their own; deleting in name order would scatter the two expiry indexes
//! instead), so a call of 1,000 rows logged about 4 MB, and the log grew to 5 GB: SQLite restarts
//! it only when a write begins with the whole log copied into the file, and `PASSIVE`
//! checkpoints every 250 ms never caught up with a writer that never paused. Smaller commits on
//! the loop would still put the disk's page-cache and journal stalls inside the loop's calls.
//!
//! The thread instead:
//!
//! - deletes in transactions of at most 256 rows and 4 ms of deletes (their commit only writes
//!   to the log), each holding a write lock that the store's own writes take first; a
//!   transaction ends after its current 32-row statement when a store call starts waiting, so a
//!   put waits for that statement and a commit, not for a whole transaction;
//! - syncs what each transaction logged right after it, outside the lock, so that the next put's
//!   `FULL` commit does not have to write it;
//! - checkpoints every 8,192 deleted rows (and every 250 ms otherwise) until a pass has copied
//!   the whole log with no commit in between, checked under the write lock, so that the next
//!   write restarts the log (it stays within some tens of MB).
//!
//! The write lock is an in-process lock beside SQLite's: a writer waiting for SQLite's lock
//! polls with sleeps of up to 100 ms. A delete the thread committed is counted in
//! [`NameStore::len`] before the lock is released, so a put deciding whether the store is full
//! sees it.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use p2pd_signaling::pnp::{
    Name, NameStore, Record, SourceKey, StoreError, StoredName, RECLAIM_PER_PUT,
};
use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension};

mod background;
use background::{Background, WriteLock};

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

/// A prune call of a store in memory stops starting new chunks after this long, whatever its
/// `max` (expired rows are scattered over the table, so every deleted row dirties a page of its
/// own and a row count is no time bound).
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
    /// Rows in the table, counted at open and kept up to date by every write, except those the
    /// background thread deleted after `len_synced` of them had been subtracted.
    len: u64,
    /// How many of the background thread's deletes `len` accounts for.
    len_synced: u64,
    /// How many of the background thread's deletes [`NameStore::prune_expired`] has reported.
    reported: u64,
    /// Whether the background thread was still at work at the last prune call.
    prune_pending: bool,
    /// Held by every write transaction (shared with the background thread).
    write: Arc<WriteLock>,
    /// For a file: the thread that prunes and checkpoints the write-ahead log.
    background: Option<Background>,
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
    /// file, and starts the store's thread (pruning and checkpoints; dropping the store stops
    /// it). Fails on a file that is not SQLite or has another [`SCHEMA_VERSION`].
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
        // Checkpoints (copying the log into the file, with its fsyncs) run on the store's
        // thread, never inside a store call that the server's loop waits for.
        connection
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(backend)?;
        let mut store = Self::prepare(connection)?;
        let background = Background::start(path)
            .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
        store.write = background.write_lock();
        store.background = Some(background);
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
            len_synced: 0,
            reported: 0,
            prune_pending: false,
            write: Arc::new(WriteLock::default()),
            background: None,
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

    /// Subtracts from `len` the rows the background thread has deleted since the last time.
    fn sync_len(&mut self, removed_by_thread: u64) {
        self.len = self
            .len
            .saturating_sub(removed_by_thread.saturating_sub(self.len_synced));
        self.len_synced = removed_by_thread;
    }

    /// Pruning without a thread (a store in memory, where no disk waits): expired rows in chunks
    /// of [`PRUNE_CHUNK`] inside one transaction, until `max` rows, none left, or
    /// [`PRUNE_TIME_BUDGET`] spent.
    fn prune_here(&mut self, now_ms: u64, max: u64) -> Result<u64, StoreError> {
        let started = std::time::Instant::now();
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
        self.len = self.len.saturating_sub(removed);
        Ok(removed)
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
        let write = Arc::clone(&self.write);
        let _write = write.for_loop();
        // Every delete the thread committed is counted before the lock was released.
        if let Some(removed) = self.background.as_ref().map(Background::removed) {
            self.sync_len(removed);
        }
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
        let _write = self.write.for_loop();
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

    /// A store in memory prunes here and now ([`SqliteStore::prune_here`]). A file store hands
    /// the work to its thread: the call gives it `now_ms` and a credit of `max` rows (what it
    /// deletes from now until the next call counts against it), and returns how many rows the
    /// thread deleted since the last call; [`NameStore::prune_pending`] then says whether the
    /// work asked for before this call was still running.
    fn prune_expired(&mut self, now_ms: u64, max: u64) -> Result<u64, StoreError> {
        let Some(background) = &self.background else {
            return self.prune_here(now_ms, max);
        };
        let progress = background.request(now_ms, max);
        self.prune_pending = progress.busy;
        self.sync_len(progress.removed);
        if let Some(error) = progress.error {
            // What the thread did delete is reported by the next call.
            return Err(StoreError::Backend(error));
        }
        let removed = progress.removed.saturating_sub(self.reported);
        self.reported = progress.removed;
        Ok(removed)
    }

    fn prune_pending(&self) -> bool {
        self.prune_pending
    }

    fn len(&self) -> Result<u64, StoreError> {
        let unsynced = self
            .background
            .as_ref()
            .map_or(0, |b| b.removed().saturating_sub(self.len_synced));
        Ok(self.len.saturating_sub(unsynced))
    }
}

#[cfg(test)]
mod tests;

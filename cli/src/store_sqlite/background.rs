//! The thread of a file store: it deletes expired names and checkpoints the write-ahead log from
//! a connection of its own, so that neither (nor the disk waits behind them) runs inside a store
//! call that the server's loop waits for. The module docs of `store_sqlite` say why, with the
//! measurements.
//!
//! The loop hands it work with [`Background::request`] (delete at most this many rows expired at
//! this time) and reads back what it did. Every write transaction, the loop's and the thread's,
//! holds the [`WriteLock`]; the thread's are short (a time budget) and end early when a store
//! call waits, so a store call waits for at most one statement of one of them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior};

use super::{SqliteStore, BUSY_TIMEOUT};

/// How often the log is checkpointed while the thread has nothing to delete (the loop's own
/// writes are copied into the file at this pace).
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// The most rows one transaction of the thread deletes.
pub(super) const TRANSACTION_ROWS: u64 = 256;

/// A transaction of the thread starts no new chunk after this long (its commit, which only
/// writes to the log, comes on top), nor once a store call waits for the write lock.
pub(super) const TRANSACTION_BUDGET: Duration = Duration::from_millis(4);

/// Rows one delete statement of the thread removes.
const CHUNK_ROWS: u64 = 32;

/// The thread checkpoints after deleting this many rows (each dirties about 1.25 pages, so the
/// log stays near 40 MB): copying the log into the file costs two fsyncs and rewrites each page
/// once however often it was logged, so a larger batch is cheaper per row.
pub(super) const CHECKPOINT_ROWS: u64 = 8_192;

/// The most checkpoint passes before one with the loop's writes held off (see [`checkpoint`]).
const CHECKPOINT_PASSES: u32 = 6;

/// The thread's page cache, in KiB (it reads the expiry index in order and table pages at random).
const CACHE_KIB: i64 = 16 * 1024;

/// How often the thread looks whether a store call waiting for the write lock has taken it.
const LOOP_FIRST_POLL: Duration = Duration::from_micros(20);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The lock every write transaction on the database holds, from the store's connection or the
/// thread's. SQLite's own lock would make a waiting writer poll with sleeps of up to 100 ms; this
/// one hands over as soon as the holder is done. Store calls go first: the thread does not take
/// the lock while one is waiting for it.
#[derive(Default)]
pub(super) struct WriteLock {
    mutex: Mutex<()>,
    loop_waiting: AtomicUsize,
}

impl WriteLock {
    /// Taken by the store's writes.
    pub(super) fn for_loop(&self) -> MutexGuard<'_, ()> {
        self.loop_waiting.fetch_add(1, Ordering::SeqCst);
        let guard = lock(&self.mutex);
        self.loop_waiting.fetch_sub(1, Ordering::SeqCst);
        guard
    }

    /// Whether a store call is waiting for the lock.
    fn loop_waiting(&self) -> bool {
        self.loop_waiting.load(Ordering::SeqCst) > 0
    }

    /// Taken by the thread, after any store call waiting for it.
    fn for_thread(&self) -> MutexGuard<'_, ()> {
        while self.loop_waiting() {
            std::thread::sleep(LOOP_FIRST_POLL);
        }
        lock(&self.mutex)
    }
}

/// What the store and the thread share.
struct Shared {
    state: Mutex<State>,
    /// Signalled when the store asks for work or for the thread to stop.
    wake: Condvar,
    write: Arc<WriteLock>,
}

#[derive(Default)]
struct State {
    stop: bool,
    /// Delete rows expiring at or before this Unix time (ms), as of the last request.
    now_ms: u64,
    /// Rows the thread may still delete before the next request.
    credit: u64,
    /// Rows asked of the transaction running now.
    in_flight: u64,
    /// Whether the last transaction found fewer expired rows than it could delete (none are
    /// left as of its time).
    exhausted: bool,
    /// Rows the thread has deleted since it started; a transaction's count is added before the
    /// write lock is released, so a store call holding the lock sees every committed delete.
    removed: u64,
    /// The last failure of a transaction, until a request reads it.
    error: Option<String>,
}

/// What a request found.
pub(super) struct Progress {
    /// Rows the thread has deleted since it started.
    pub(super) removed: u64,
    /// Whether the work asked for before was still running or may have more to do: credit left,
    /// a transaction in flight, or the last transaction did not run out of expired rows.
    pub(super) busy: bool,
    /// A transaction that failed since the last request.
    pub(super) error: Option<String>,
}

/// The running thread; dropping it stops it (after the transaction or checkpoint it is in).
pub(super) struct Background {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts the thread on the database at `path` (in WAL mode, its schema in place) with a
    /// connection of its own.
    pub(super) fn start(path: &Path) -> rusqlite::Result<Background> {
        let connection = Connection::open(path)?;
        connection.busy_timeout(BUSY_TIMEOUT)?;
        // Its commits only write to the log; the thread syncs the log after each (outside the
        // write lock) and checkpoints sync both files. A delete lost to a power cut is redone.
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.pragma_update(None, "wal_autocheckpoint", 0)?;
        connection.pragma_update(None, "cache_size", CACHE_KIB.wrapping_neg())?;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            write: Arc::new(WriteLock::default()),
        });
        let theirs = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("p2pd-sqlite-background".into())
            .spawn(move || run(connection, &PathBuf::from(wal), &theirs))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Background {
            shared,
            handle: Some(handle),
        })
    }

    /// The lock every write transaction holds.
    pub(super) fn write_lock(&self) -> Arc<WriteLock> {
        Arc::clone(&self.shared.write)
    }

    /// Rows the thread has deleted since it started.
    pub(super) fn removed(&self) -> u64 {
        lock(&self.shared.state).removed
    }

    /// Asks the thread to delete at most `max` rows expired at `now_ms` from now on, replacing
    /// what an earlier request left (a transaction already running counts against `max`), and
    /// says what it has done so far.
    pub(super) fn request(&self, now_ms: u64, max: u64) -> Progress {
        let mut state = lock(&self.shared.state);
        let progress = Progress {
            removed: state.removed,
            busy: state.in_flight > 0 || (max > 0 && (state.credit > 0 || !state.exhausted)),
            error: state.error.take(),
        };
        state.now_ms = now_ms;
        state.credit = max.saturating_sub(state.in_flight);
        drop(state);
        self.shared.wake.notify_one();
        progress
    }

    /// Something dropped only when the thread has ended (tests check that dropping the store
    /// stops it).
    #[cfg(test)]
    pub(super) fn watch(&self) -> std::sync::Weak<dyn std::any::Any + Send + Sync> {
        let shared: Arc<dyn std::any::Any + Send + Sync> = self.shared.clone();
        Arc::downgrade(&shared)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.wake.notify_one();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn run(mut connection: Connection, wal_path: &Path, shared: &Shared) {
    // The log, opened by the thread only to fsync it. SQLite takes no POSIX lock on this file
    // (its locks are on the database and the -shm file), so this descriptor cannot release one.
    let mut wal: Option<File> = None;
    let mut since_checkpoint = 0u64;
    let mut next_checkpoint = Instant::now().checked_add(CHECKPOINT_EVERY);
    loop {
        // Wait for credit, a due checkpoint or the stop flag.
        let job = {
            let mut state = lock(&shared.state);
            loop {
                if state.stop {
                    return;
                }
                if state.credit > 0 && since_checkpoint < CHECKPOINT_ROWS {
                    let rows = state.credit.min(TRANSACTION_ROWS);
                    state.credit = state.credit.saturating_sub(rows);
                    state.in_flight = rows;
                    break Some((state.now_ms, rows));
                }
                let now = Instant::now();
                let wait = match next_checkpoint {
                    Some(at) if at > now && since_checkpoint == 0 => {
                        at.saturating_duration_since(now)
                    }
                    _ => break None,
                };
                state = shared
                    .wake
                    .wait_timeout(state, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        };
        let Some((now_ms, rows)) = job else {
            checkpoint(&connection, &shared.write);
            since_checkpoint = 0;
            next_checkpoint = Instant::now().checked_add(CHECKPOINT_EVERY);
            continue;
        };
        let write = shared.write.for_thread();
        let result = delete_expired(&mut connection, now_ms, rows, &shared.write);
        let mut state = lock(&shared.state);
        state.in_flight = 0;
        match result {
            Ok((removed, exhausted)) => {
                // An empty transaction counts too, so that the log is checkpointed soon after
                // the thread runs out of work.
                since_checkpoint = since_checkpoint.saturating_add(removed.max(1));
                state.removed = state.removed.saturating_add(removed);
                state.exhausted = exhausted;
                if exhausted {
                    state.credit = 0;
                } else {
                    // Stopped by its time budget: the rest of its rows stay credited.
                    state.credit = state.credit.saturating_add(rows.saturating_sub(removed));
                }
            }
            Err(e) => {
                since_checkpoint = since_checkpoint.saturating_add(1);
                state.credit = 0;
                state.error = Some(e);
            }
        }
        drop(state);
        drop(write);
        // Sync what the transaction logged now, outside the write lock, rather than in the
        // loop's next `FULL` commit, whose fsync would have to write it first.
        if wal.is_none() {
            wal = File::open(wal_path).ok();
        }
        if let Some(file) = &wal {
            let _ = file.sync_data();
        }
    }
}

/// A number that changes whenever another connection commits.
fn data_version(connection: &Connection) -> rusqlite::Result<i64> {
    connection.query_row("PRAGMA data_version", [], |row| row.get(0))
}

/// One `PASSIVE` checkpoint (it waits for nobody): the frames in the log when it began, and how
/// many of them are now copied into the database file.
fn checkpoint_pass(connection: &Connection) -> rusqlite::Result<(i64, i64)> {
    connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get(1)?, row.get(2)?))
    })
}

/// Copies the log into the database file, so that the next write restarts the log from its
/// beginning. SQLite does that only if the whole log had been copied when that write began;
/// otherwise the log grows (by gigabytes while a million names are deleted beside a stream of
/// puts). A pass copies the frames that were there when it began, so it is complete only if no
/// other connection committed since: the thread checks that holding the write lock (no write in
/// flight, and no I/O under the lock). While the loop keeps committing during the passes, the
/// last pass holds the lock throughout. A failed pass (a lock held too long) is retried at the
/// next checkpoint.
fn checkpoint(connection: &Connection, write: &WriteLock) {
    for _ in 0..CHECKPOINT_PASSES {
        let Ok(before) = data_version(connection) else {
            return;
        };
        let Ok((log, copied)) = checkpoint_pass(connection) else {
            return;
        };
        if log == copied {
            let _write = write.for_thread();
            if data_version(connection).ok() == Some(before) {
                return;
            }
        }
    }
    let _write = write.for_thread();
    let _ = checkpoint_pass(connection);
}

/// One transaction deleting at most `rows` rows expired at `now_ms`, earliest first, in chunks,
/// until [`TRANSACTION_BUDGET`] or a store call waits for the write lock (held meanwhile): how
/// many, and whether it ran out of expired rows.
fn delete_expired(
    connection: &mut Connection,
    now_ms: u64,
    rows: u64,
    write: &WriteLock,
) -> Result<(u64, bool), String> {
    let started = Instant::now();
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    let mut removed = 0u64;
    let mut exhausted = false;
    while removed < rows {
        let chunk = CHUNK_ROWS.min(rows.saturating_sub(removed));
        let n =
            SqliteStore::delete_expired(&transaction, now_ms, chunk).map_err(|e| e.to_string())?;
        removed = removed.saturating_add(n);
        if n < chunk {
            exhausted = true;
            break;
        }
        if started.elapsed() >= TRANSACTION_BUDGET || write.loop_waiting() {
            break;
        }
    }
    transaction.commit().map_err(|e| e.to_string())?;
    Ok((removed, exhausted))
}

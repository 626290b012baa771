//! A thread that checkpoints a WAL database beside the store's own connection, so that copying
//! the write-ahead log into the database file (and its fsyncs) never runs inside a store call.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// How often the log is checkpointed.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// How often the thread looks at its stop flag while waiting.
const STOP_POLL: Duration = Duration::from_millis(25);

/// The running thread; dropping it stops it (at most [`STOP_POLL`] plus one checkpoint later).
pub(super) struct Checkpointer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path` (already in WAL mode) from a connection of
    /// its own. `PASSIVE` checkpoints wait for nobody: the store's connection keeps writing while
    /// one runs, and what is not copied this time is copied the next.
    pub(super) fn start(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Checkpointer> {
        let connection = Connection::open(path)?;
        connection.busy_timeout(busy_timeout)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("p2pd-sqlite-checkpoint".into())
            .spawn(move || run(&connection, &flag))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Checkpointer {
            stop,
            handle: Some(handle),
        })
    }
}

fn run(connection: &Connection, stop: &AtomicBool) {
    let mut waited = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(STOP_POLL);
        waited = waited.saturating_add(STOP_POLL);
        if waited >= CHECKPOINT_EVERY {
            waited = Duration::ZERO;
            // A failed checkpoint (a lock held too long) is retried at the next tick; the log
            // only grows meanwhile.
            let _ = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

//! How long the PNP server's SQLite store stalls when a million names have expired.
//!
//! Fills a database file (WAL, `synchronous = FULL`, as `p2pd pnp-server` opens it) with
//! `P2PD_PRUNE_ROWS` (default 1,000,000) names that have all expired, in one transaction, then:
//!
//! - `one DELETE`: what the store did before issue 10 (one `DELETE ... WHERE expires_ms <= now`),
//!   timed on a copy of the file;
//! - `prune steps`: [`NameStore::prune_expired`] with the server's default batch
//!   ([`PnpServerConfig::prune_batch`]) until a call removes nothing, each call timed: the
//!   longest call is the longest the server's event loop stalls;
//! - `put into a full store`: inserting new names into a store whose capacity is the row count
//!   (so it is "full" of expired names), each call timed.
//!
//! ```text
//! cargo bench -p p2pd --bench pnp_prune
//! P2PD_PRUNE_ROWS=200000 P2PD_PRUNE_BATCH=500 P2PD_PRUNE_SKIP_DELETE=1 cargo bench -p p2pd --bench pnp_prune
//! P2PD_PRUNE_DIR=/dev/shm cargo bench -p p2pd --bench pnp_prune    # without the disk's fsyncs
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use p2pd_cli::store_sqlite::SqliteStore;
use p2pd_signaling::pnp::{Name, NameStore, PnpServerConfig, Record, SourceKey, StoredName};
use p2pd_signaling::Identity;
use rusqlite::{params, Connection};

const NOW_MS: u64 = 1_700_000_000_000;

fn main() {
    let rows: u64 = std::env::var("P2PD_PRUNE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let base = std::env::var_os("P2PD_PRUNE_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = base.join(format!("p2pd-prune-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("names.db");
    let result = std::panic::catch_unwind(|| run(&path, rows));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn run(path: &Path, rows: u64) {
    let owner = Identity::from_secret_bytes(&[7; 32]).unwrap();
    let source = SourceKey::V4([192, 0, 2, 1]);
    drop(SqliteStore::open(path).unwrap());
    let started = Instant::now();
    fill(path, &owner, source, rows);
    println!(
        "filled {rows} expired names in {:.1} s ({} MB)",
        started.elapsed().as_secs_f64(),
        std::fs::metadata(path).unwrap().len() / 1_000_000
    );

    // Before: one statement.
    if std::env::var_os("P2PD_PRUNE_SKIP_DELETE").is_none() {
        one_delete(path);
    }
    after(path, &owner, source, rows);
}

fn one_delete(path: &Path) {
    let copy = path.with_extension("copy.db");
    checkpoint(path);
    std::fs::copy(path, &copy).unwrap();
    {
        let c = Connection::open(&copy).unwrap();
        c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
            .unwrap();
        c.pragma_update(None, "synchronous", "FULL").unwrap();
        let t = Instant::now();
        let n = c
            .execute(
                "DELETE FROM names WHERE expires_ms <= ?1",
                [i64::try_from(NOW_MS).unwrap()],
            )
            .unwrap();
        println!(
            "one DELETE: {n} rows in {:.1} ms (the server stalls that long)",
            ms(t.elapsed())
        );
    }
    let _ = std::fs::remove_file(&copy);
}

fn after(path: &Path, owner: &Identity, source: SourceKey, rows: u64) {
    // After: a full store of expired names still takes new ones, quickly.
    let mut store = SqliteStore::open(path).unwrap().with_capacity(rows);
    let mut puts = Vec::new();
    for i in 0..20 {
        let record = Record::sign(
            owner,
            Name::new(&format!("new{i}")).unwrap(),
            b"198.51.100.7:4000".to_vec(),
            1,
            NOW_MS + 60_000,
        )
        .unwrap();
        let t = Instant::now();
        store.put(StoredName { record, source }, NOW_MS).unwrap();
        puts.push(t.elapsed());
    }
    report("put into a store full of expired names", &mut puts);

    // After: bounded prune steps.
    let batch = PnpServerConfig::new(
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:1".parse().unwrap(),
        0,
    )
    .prune_batch;
    let batch = std::env::var("P2PD_PRUNE_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(batch);
    let mut steps = Vec::new();
    let mut pruned = 0;
    let t = Instant::now();
    loop {
        // As the server does: another step while the last one removed something.
        let step = Instant::now();
        let n = store.prune_expired(NOW_MS, batch).unwrap();
        steps.push(step.elapsed());
        pruned += n;
        if n == 0 {
            break;
        }
    }
    println!(
        "prune steps: {pruned} rows in {} steps of at most {batch}, {:.1} s in all",
        steps.len(),
        t.elapsed().as_secs_f64()
    );
    report("prune step", &mut steps);
    assert_eq!(store.len().unwrap(), 20);
}

/// Inserts `rows` names expiring at or before `NOW_MS`, in one transaction. Every row carries the
/// same signed record bytes (a real record's size; pruning never reads it).
fn fill(path: &Path, owner: &Identity, source: SourceKey, rows: u64) {
    let record = Record::sign(
        owner,
        Name::new("bulk").unwrap(),
        b"198.51.100.7:4000 203.0.113.9:4000".to_vec(),
        1,
        NOW_MS,
    )
    .unwrap()
    .to_bytes();
    let mut c = Connection::open(path).unwrap();
    let tx = c.transaction().unwrap();
    {
        let mut insert = tx
            .prepare("INSERT INTO names (name, record, expires_ms, source) VALUES (?1, ?2, ?3, ?4)")
            .unwrap();
        for i in 0..rows {
            let expires = i64::try_from(NOW_MS - 3_600_000 + (i * 7_919) % 3_600_000).unwrap();
            insert
                .execute(params![
                    format!("name-{i:07}"),
                    record,
                    expires,
                    &source.to_bytes()[..]
                ])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

fn checkpoint(path: &Path) {
    let c = Connection::open(path).unwrap();
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(what: &str, times: &mut [Duration]) {
    times.sort();
    let pick = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "{what}: {} calls, median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        times.len(),
        ms(pick(0.5)),
        ms(pick(0.99)),
        ms(pick(1.0))
    );
}

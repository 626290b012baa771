//! How long the PNP server's event loop waits for its SQLite store when a million names have
//! expired.
//!
//! Fills a database file (WAL, `synchronous = FULL`, as `p2pd pnp-server` opens it) with
//! `P2PD_PRUNE_ROWS` (default 1,000,000) names that have all expired, in one transaction, then:
//!
//! - `one DELETE`: what the store did before issue 10 (one `DELETE ... WHERE expires_ms <= now`),
//!   timed on a copy of the file (skipped with `P2PD_PRUNE_SKIP_DELETE`);
//! - `put ..., no pruning`: new names put into the store, whose capacity is the row count (so it
//!   is "full" of expired names), one every [`PnpServerConfig::prune_step_pause`]: what a put
//!   costs on this disk when nothing is being pruned, the baseline for the lines below;
//! - `prune step`: [`NameStore::prune_expired`] with the server's default batch
//!   ([`PnpServerConfig::prune_batch`], or `P2PD_PRUNE_BATCH`), paced as the server paces it (the
//!   next call a step pause after the last one began, while the last one removed something or
//!   [`NameStore::prune_pending`] says the store is still at it), each call timed;
//! - `put while pruning` and `get while pruning`: between two steps, as the server serves
//!   requests between two steps, a put of a new name and a get of an earlier one, each timed
//!   (the store prunes on a thread of its own, so these are where the loop could wait for it).
//!
//! The last line is the longest the loop waited for any of these calls while pruning; the
//! `prune steps` line also gives the total time and the largest the write-ahead log grew.
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

/// Puts timed before pruning starts (10 s at the server's step pause).
const IDLE_PUTS: u64 = 1_000;

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
    // After: a full store of expired names still takes new ones, quickly. One put every
    // `prune_step_pause`, as below while pruning: what a put costs on this disk without pruning.
    let config = PnpServerConfig::new(
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:1".parse().unwrap(),
        0,
    );
    let mut store = SqliteStore::open(path).unwrap().with_capacity(rows);
    let idle_puts = IDLE_PUTS.min(rows / 2);
    let mut puts = Vec::new();
    for i in 0..idle_puts {
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
        std::thread::sleep(config.prune_step_pause.saturating_sub(t.elapsed()));
    }
    report(
        "put into a store full of expired names, no pruning",
        &mut puts,
    );
    // From here on puts never need to make room (this run may add more names than it prunes).
    let mut store = store.with_capacity(u64::MAX);

    // After: prune steps paced as the server paces them (the next step `prune_step_pause` after
    // the last one started, while the last one removed something or the store is still at it),
    // and between two steps the requests the loop would serve: a put of a new name and a get.
    let batch = std::env::var("P2PD_PRUNE_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(config.prune_batch);
    let wal = path.with_extension("db-wal");
    let mut largest_wal = 0;
    let (mut steps, mut puts, mut gets) = (Vec::new(), Vec::new(), Vec::new());
    let mut pruned = 0;
    let mut live = idle_puts;
    let t = Instant::now();
    loop {
        let step = Instant::now();
        let n = store.prune_expired(NOW_MS, batch).unwrap();
        steps.push(step.elapsed());
        pruned += n;
        if n == 0 && !store.prune_pending() {
            break;
        }
        let record = Record::sign(
            owner,
            Name::new(&format!("new{live}")).unwrap(),
            b"198.51.100.7:4000".to_vec(),
            1,
            NOW_MS + 60_000,
        )
        .unwrap();
        let put = Instant::now();
        store.put(StoredName { record, source }, NOW_MS).unwrap();
        puts.push(put.elapsed());
        // A name put earlier (the bulk rows all carry one record, for another name).
        let name = Name::new(&format!("new{}", (live * 7_919) % live.max(1))).unwrap();
        live += 1;
        let get = Instant::now();
        assert!(store.get(&name).unwrap().is_some());
        gets.push(get.elapsed());
        largest_wal = largest_wal.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        if let Some(rest) = config.prune_step_pause.checked_sub(step.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    println!(
        "prune steps: {pruned} rows in {} steps of at most {batch} (every {} ms), {:.1} s in all, \
         write-ahead log at most {} MB",
        steps.len(),
        config.prune_step_pause.as_millis(),
        t.elapsed().as_secs_f64(),
        largest_wal / 1_000_000
    );
    let worst = steps.iter().chain(&puts).chain(&gets).max().copied();
    report("prune step", &mut steps);
    report("put while pruning", &mut puts);
    report("get while pruning", &mut gets);
    println!(
        "longest the loop waited for the store while pruning: {:.2} ms",
        worst.map_or(0.0, ms)
    );
    assert_eq!(store.len().unwrap(), live);
    drop(store);
    let c = Connection::open(path).unwrap();
    let count: i64 = c
        .query_row("SELECT COUNT(*) FROM names", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        u64::try_from(count).unwrap(),
        live,
        "len agrees with the table"
    );
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
    if times.is_empty() {
        println!("{what}: no calls");
        return;
    }
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

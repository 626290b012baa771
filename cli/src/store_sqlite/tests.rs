//! The SQLite store's tests: the behaviour every `NameStore` shares (run on the in-memory store
//! too), persistence, schema versions, corrupt rows, bounded pruning and query plans.

use super::*;
use crate::test_dir;
use p2pd_signaling::pnp::MemoryStore;
use p2pd_signaling::Identity;
use std::net::IpAddr;

const NOW_MS: u64 = 1_700_000_000_000;

fn identity(secret: u8) -> Identity {
    Identity::from_secret_bytes(&[secret; 32]).unwrap()
}

fn source(ip: &str) -> SourceKey {
    SourceKey::from_ip(ip.parse::<IpAddr>().unwrap())
}

fn entry(owner: u8, name: &str, version: u64, expires_ms: u64, from: &str) -> StoredName {
    let record = Record::sign(
        &identity(owner),
        Name::new(name).unwrap(),
        format!("value of {name} v{version}").into_bytes(),
        version,
        expires_ms,
    )
    .unwrap();
    StoredName {
        record,
        source: source(from),
    }
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// The behaviour every [`NameStore`] must have; `make(capacity)` gives an empty store.
fn behaves_like_a_name_store<S: NameStore>(make: impl Fn(usize) -> S) {
    let mut store = make(3);
    assert_eq!(store.len().unwrap(), 0);
    assert!(store.is_empty().unwrap());
    assert_eq!(store.get(&name("alice")).unwrap(), None);
    assert!(!store.delete(&name("alice")).unwrap());
    assert_eq!(
        store.count_for_source(source("192.0.2.1"), NOW_MS).unwrap(),
        0
    );

    // Insert and read back exactly.
    let alice = entry(1, "alice", 1, NOW_MS + 10_000, "192.0.2.1");
    store.put(alice.clone(), NOW_MS).unwrap();
    assert_eq!(store.get(&name("alice")).unwrap(), Some(alice));
    assert_eq!(store.len().unwrap(), 1);
    assert!(!store.is_empty().unwrap());
    assert_eq!(
        store.count_for_source(source("192.0.2.1"), NOW_MS).unwrap(),
        1
    );

    // Replacing keeps the count and moves the name to the new source.
    let alice2 = entry(1, "alice", 2, NOW_MS + 20_000, "2001:db8::1");
    store.put(alice2.clone(), NOW_MS).unwrap();
    assert_eq!(store.get(&name("alice")).unwrap(), Some(alice2));
    assert_eq!(store.len().unwrap(), 1);
    assert_eq!(
        store.count_for_source(source("192.0.2.1"), NOW_MS).unwrap(),
        0
    );
    // IPv6 sources count per /64.
    assert_eq!(
        store
            .count_for_source(source("2001:db8::ffff"), NOW_MS)
            .unwrap(),
        1
    );

    // Capacity: new names up to it, then Full; replacing still works when full.
    store
        .put(entry(2, "bob", 1, NOW_MS + 5_000, "192.0.2.1"), NOW_MS)
        .unwrap();
    store
        .put(entry(3, "carol", 1, NOW_MS + 30_000, "192.0.2.1"), NOW_MS)
        .unwrap();
    assert_eq!(store.len().unwrap(), 3);
    assert_eq!(
        store.put(entry(4, "dave", 1, NOW_MS + 30_000, "192.0.2.9"), NOW_MS),
        Err(StoreError::Full)
    );
    assert_eq!(store.get(&name("dave")).unwrap(), None);
    assert_eq!(store.len().unwrap(), 3);
    let bob2 = entry(2, "bob", 2, NOW_MS + 6_000, "192.0.2.1");
    store.put(bob2.clone(), NOW_MS).unwrap();
    assert_eq!(store.get(&name("bob")).unwrap(), Some(bob2));
    assert_eq!(
        store.count_for_source(source("192.0.2.1"), NOW_MS).unwrap(),
        2
    );

    // Delete frees a slot.
    assert!(store.delete(&name("carol")).unwrap());
    assert!(!store.delete(&name("carol")).unwrap());
    assert_eq!(store.get(&name("carol")).unwrap(), None);
    assert_eq!(store.len().unwrap(), 2);
    assert_eq!(
        store.count_for_source(source("192.0.2.1"), NOW_MS).unwrap(),
        1
    );
    store
        .put(entry(4, "dave", 1, NOW_MS + 30_000, "192.0.2.9"), NOW_MS)
        .unwrap();

    // Expired entries are still returned by get (the server decides) until pruned; pruning
    // removes those expiring at or before now.
    assert!(store.get(&name("bob")).unwrap().is_some());
    assert_eq!(store.prune_expired(NOW_MS, 100).unwrap(), 0);
    assert_eq!(store.prune_expired(NOW_MS + 6_000, 100).unwrap(), 1); // bob, exactly at expiry
    assert_eq!(store.get(&name("bob")).unwrap(), None);
    assert_eq!(
        store.count_for_source(source("192.0.2.1"), NOW_MS).unwrap(),
        0
    );
    assert_eq!(store.len().unwrap(), 2);
    assert_eq!(store.prune_expired(u64::MAX, 100).unwrap(), 2);
    assert!(store.is_empty().unwrap());
    assert_eq!(
        store
            .count_for_source(source("2001:db8::1"), NOW_MS)
            .unwrap(),
        0
    );

    // Expired names count against nothing. A full store of expired names takes new ones,
    // each in the place of the earliest expired name.
    let mut store = make(3);
    for (i, n) in ["e1", "e2", "e3"].into_iter().enumerate() {
        store
            .put(
                entry(1, n, 1, NOW_MS + 10 * (3 - i as u64), "192.0.2.1"),
                NOW_MS,
            )
            .unwrap();
    }
    assert_eq!(
        store.count_for_source(source("192.0.2.1"), NOW_MS).unwrap(),
        3
    );
    let later = NOW_MS + 20;
    assert_eq!(
        store.count_for_source(source("192.0.2.1"), later).unwrap(),
        1,
        "e2 and e3 expired"
    );
    assert_eq!(
        store.put(entry(2, "f1", 1, later + 100, "192.0.2.2"), NOW_MS),
        Err(StoreError::Full),
        "nothing has expired at NOW_MS"
    );
    store
        .put(entry(2, "f1", 1, later + 100, "192.0.2.2"), later)
        .unwrap();
    assert_eq!(
        store.get(&name("e3")).unwrap(),
        None,
        "the earliest went first"
    );
    assert!(store.get(&name("e2")).unwrap().is_some());
    store
        .put(entry(2, "f2", 1, later + 100, "192.0.2.2"), later)
        .unwrap();
    assert_eq!(store.get(&name("e2")).unwrap(), None);
    assert_eq!(store.len().unwrap(), 3);
    assert_eq!(
        store.put(entry(2, "f3", 1, later + 100, "192.0.2.2"), later),
        Err(StoreError::Full),
        "three unexpired names"
    );
    assert_eq!(
        store.count_for_source(source("192.0.2.2"), later).unwrap(),
        2
    );

    // Pruning takes at most `max` names per call, earliest first.
    let mut store = make(100);
    for i in 0..10u64 {
        store
            .put(
                entry(1, &format!("p{i}"), 1, NOW_MS + 10 - i, "192.0.2.1"),
                NOW_MS,
            )
            .unwrap();
    }
    store
        .put(entry(1, "live", 1, NOW_MS + 1_000, "192.0.2.1"), NOW_MS)
        .unwrap();
    let at = NOW_MS + 10;
    assert_eq!(store.prune_expired(at, 4).unwrap(), 4);
    for i in 0..10u64 {
        let gone = store.get(&name(&format!("p{i}"))).unwrap().is_none();
        assert_eq!(gone, i >= 6, "p{i} expires at NOW_MS + {}", 10 - i);
    }
    assert_eq!(store.prune_expired(at, 4).unwrap(), 4);
    assert_eq!(store.prune_expired(at, 4).unwrap(), 2);
    assert_eq!(store.prune_expired(at, 4).unwrap(), 0);
    assert_eq!(store.prune_expired(at, 0).unwrap(), 0);
    assert_eq!(store.len().unwrap(), 1);
    assert!(store.get(&name("live")).unwrap().is_some());

    // A zero-capacity store takes nothing.
    let mut none = make(0);
    assert_eq!(
        none.put(entry(1, "x", 1, NOW_MS, "192.0.2.1"), NOW_MS),
        Err(StoreError::Full)
    );
}

fn sqlite(capacity: usize) -> SqliteStore {
    SqliteStore::in_memory()
        .unwrap()
        .with_capacity(capacity as u64)
}

#[test]
fn memory_store_passes_the_shared_list() {
    behaves_like_a_name_store(MemoryStore::new);
}

#[test]
fn sqlite_store_passes_the_shared_list() {
    behaves_like_a_name_store(sqlite);
}

#[test]
fn sqlite_store_passes_the_shared_list_as_a_box_dyn() {
    behaves_like_a_name_store(|c| Box::new(sqlite(c)) as Box<dyn NameStore>);
}

#[test]
fn file_store_persists_across_reopen() {
    let dir = test_dir("store-sqlite-reopen");
    let path = dir.path().join("names.db");
    let alice = entry(1, "alice", 7, NOW_MS + 60_000, "192.0.2.1");
    let bob = entry(2, "bob", 3, NOW_MS + 1_000, "2001:db8::1");
    {
        let mut store = SqliteStore::open(&path).unwrap();
        let mode: String = store
            .connection
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        store.put(alice.clone(), NOW_MS).unwrap();
        store.put(bob.clone(), NOW_MS).unwrap();
        store
            .put(entry(3, "carol", 1, NOW_MS, "192.0.2.1"), NOW_MS)
            .unwrap();
        assert!(store.delete(&name("carol")).unwrap());
    }
    let mut store = SqliteStore::open(&path).unwrap().with_capacity(2);
    assert_eq!(store.len().unwrap(), 2, "the count is read back at open");
    assert_eq!(store.get(&name("alice")).unwrap(), Some(alice));
    assert_eq!(store.get(&name("bob")).unwrap(), Some(bob));
    assert_eq!(store.get(&name("carol")).unwrap(), None);
    assert_eq!(
        store.count_for_source(source("192.0.2.1"), NOW_MS).unwrap(),
        1
    );
    assert_eq!(
        store.put(entry(4, "dave", 1, NOW_MS, "192.0.2.1"), NOW_MS),
        Err(StoreError::Full),
        "the capacity counts names written before the reopen"
    );
    assert_eq!(prune_until_done(&mut store, NOW_MS + 1_000, 100), 1);
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.len().unwrap(), 1);
    assert!(store.get(&name("bob")).unwrap().is_none());
}

/// Calls `prune_expired` as the server does (again soon while a call removed something or the
/// store is still at it) until pruning is done; how many rows the calls reported, each at most
/// `max`.
fn prune_until_done(store: &mut SqliteStore, now_ms: u64, max: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut total = 0;
    loop {
        let n = store.prune_expired(now_ms, max).unwrap();
        assert!(n <= max, "one call reported {n} rows, more than {max}");
        total += n;
        if n == 0 && !store.prune_pending() {
            return total;
        }
        assert!(std::time::Instant::now() < deadline, "pruning does not end");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The rows in the table and the store's count, read holding the write lock (the thread's
/// deletes are counted before it releases the lock).
fn rows_and_len(store: &SqliteStore) -> (u64, u64) {
    let write = Arc::clone(&store.write);
    let _write = write.for_loop();
    let rows: i64 = store
        .connection
        .query_row("SELECT COUNT(*) FROM names", [], |r| r.get(0))
        .unwrap();
    (u64::try_from(rows).unwrap(), store.len().unwrap())
}

/// Fills `store` with `n` rows expiring at or before `NOW_MS`, in one transaction, straight
/// through SQL (one signed record blob for all: pruning never reads it).
fn fill_expired(store: &mut SqliteStore, n: u64) {
    let blob = entry(1, "x", 1, NOW_MS, "192.0.2.1").record.to_bytes();
    let source = source("192.0.2.1").to_bytes();
    let tx = store.connection.transaction().unwrap();
    {
        let mut insert = tx
            .prepare("INSERT INTO names (name, record, expires_ms, source) VALUES (?1, ?2, ?3, ?4)")
            .unwrap();
        for i in 0..n {
            insert
                .execute(params![
                    format!("bulk{i}"),
                    blob,
                    to_sql_ms(NOW_MS - (i % 1_000)),
                    &source[..]
                ])
                .unwrap();
        }
    }
    tx.commit().unwrap();
    store.len = store.len.saturating_add(n);
}

#[test]
fn pruning_many_expired_names_goes_in_bounded_steps() {
    let mut store = SqliteStore::in_memory().unwrap().with_capacity(10);
    fill_expired(&mut store, 20_500);
    assert_eq!(
        store.count_for_source(source("192.0.2.1"), NOW_MS).unwrap(),
        0
    );
    // 20,500 expired rows in a store of capacity 10: a new name still goes in.
    store
        .put(entry(2, "fresh", 1, NOW_MS + 60_000, "192.0.2.2"), NOW_MS)
        .unwrap();
    let mut steps = Vec::new();
    loop {
        let n = store.prune_expired(NOW_MS, 1_000).unwrap();
        steps.push(n);
        if n == 0 {
            break;
        }
        assert!(steps.len() <= 20_500, "pruning does not end");
    }
    // Each call removes at most its max (fewer if it ran out of time).
    assert!(steps.iter().all(|n| *n <= 1_000), "{steps:?}");
    assert_eq!(steps.iter().sum::<u64>(), 20_500 - RECLAIM_PER_PUT);
    assert!(steps.len() >= 21, "{steps:?}");
    assert_eq!(store.len().unwrap(), 1);
    let rows: i64 = store
        .connection
        .query_row("SELECT COUNT(*) FROM names", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1, "the in-memory count agrees with the table");
}

/// The query plan of `sql`, as SQLite's EXPLAIN QUERY PLAN lines.
fn plan(store: &SqliteStore, sql: &str) -> String {
    let mut statement = store
        .connection
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap();
    let rows = statement
        .query_map(params![&[0u8; 9][..], 1i64], |r| r.get::<_, String>(3))
        .unwrap();
    rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("; ")
}

#[test]
fn pruning_and_quota_queries_use_their_indexes() {
    let store = SqliteStore::in_memory().unwrap();
    // The prune step walks the expiry index for at most LIMIT rows, never the whole table.
    let prune = plan(
        &store,
        "SELECT name FROM names WHERE expires_ms <= ?2 ORDER BY expires_ms LIMIT ?2",
    );
    assert!(
        prune.contains("USING COVERING INDEX names_by_expiry"),
        "{prune}"
    );
    assert!(!prune.contains("TEMP B-TREE"), "{prune}");
    // The quota count reads the (source, expiry) index only.
    let quota = plan(
        &store,
        "SELECT COUNT(*) FROM names WHERE source = ?1 AND expires_ms > ?2",
    );
    assert!(
        quota.contains("USING COVERING INDEX names_by_source_expiry"),
        "{quota}"
    );
}

#[test]
fn the_log_is_checkpointed_by_the_store_thread_not_by_writes() {
    let dir = test_dir("store-sqlite-checkpoint");
    let path = dir.path().join("names.db");
    let mut store = SqliteStore::open(&path).unwrap();
    let autocheckpoint: i64 = store
        .connection
        .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
        .unwrap();
    assert_eq!(autocheckpoint, 0, "no write pays for a checkpoint");
    store
        .put(entry(1, "alice", 1, NOW_MS + 60_000, "192.0.2.1"), NOW_MS)
        .unwrap();
    // The database file itself (read with `immutable`, which ignores the log) gets the row
    // while the store is still open: the thread copied the log into it.
    let uri = format!("file:{}?immutable=1", path.display());
    let rows_in_file = || -> i64 {
        let c = Connection::open_with_flags(
            &uri,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
        )
        .unwrap();
        c.query_row("SELECT COUNT(*) FROM names", [], |r| r.get(0))
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while rows_in_file() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the log was not checkpointed within 5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(store);
}

#[test]
fn a_version_1_file_is_upgraded_in_place() {
    let dir = test_dir("store-sqlite-upgrade");
    let path = dir.path().join("v1.db");
    let alice = entry(1, "alice", 7, NOW_MS + 60_000, "192.0.2.1");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE names (
                 name       TEXT    PRIMARY KEY NOT NULL,
                 record     BLOB    NOT NULL,
                 expires_ms INTEGER NOT NULL,
                 source     BLOB    NOT NULL
             ) WITHOUT ROWID;
             CREATE INDEX names_by_source ON names (source);
             CREATE INDEX names_by_expiry ON names (expires_ms);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        c.execute(
            "INSERT INTO names VALUES (?1, ?2, ?3, ?4)",
            params![
                "alice",
                alice.record.to_bytes(),
                to_sql_ms(alice.record.expires_ms()),
                &alice.source.to_bytes()[..]
            ],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let version: i64 = store
        .connection
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let indexes: Vec<String> = store
        .connection
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(indexes, ["names_by_expiry", "names_by_source_expiry"]);
    assert_eq!(store.get(&name("alice")).unwrap(), Some(alice));
    assert_eq!(
        store.count_for_source(source("192.0.2.1"), NOW_MS).unwrap(),
        1
    );
    drop(store);
    assert!(
        SqliteStore::open(&path).is_ok(),
        "and opens again as version 2"
    );
}

#[test]
fn other_schema_versions_and_non_databases_are_refused() {
    let dir = test_dir("store-sqlite-schema");
    let path = dir.path().join("future.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA user_version = 99").unwrap();
    }
    match SqliteStore::open(&path) {
        Err(StoreError::Backend(e)) => assert!(e.contains("schema version 99"), "{e}"),
        other => panic!("expected a schema error, got {other:?}"),
    }
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![0x5a; 4096]).unwrap();
    assert!(matches!(
        SqliteStore::open(&junk),
        Err(StoreError::Backend(_))
    ));
    let missing_dir = dir.path().join("no-such-dir").join("x.db");
    assert!(matches!(
        SqliteStore::open(missing_dir),
        Err(StoreError::Backend(_))
    ));
}

#[test]
fn corrupt_rows_are_errors_not_panics() {
    let mut store = SqliteStore::in_memory().unwrap();
    let good = entry(1, "good", 1, NOW_MS + 1_000, "192.0.2.1");
    store.put(good.clone(), NOW_MS).unwrap();
    for (row, what) in [
        ("trunc", "record"),
        ("forged", "signature"),
        ("renamed", "another name"),
        ("expiry", "expiry"),
        ("source", "source"),
        ("text", "wrong type"),
    ] {
        store
            .put(entry(1, row, 1, NOW_MS + 1_000, "192.0.2.1"), NOW_MS)
            .unwrap();
        let changed = match row {
            "trunc" => store.connection.execute(
                "UPDATE names SET record = substr(record, 1, 20) WHERE name = ?1",
                [row],
            ),
            "forged" => {
                // Flip one bit of the signature (the record's last byte).
                let mut bytes: Vec<u8> = store
                    .connection
                    .query_row("SELECT record FROM names WHERE name = ?1", [row], |r| {
                        r.get(0)
                    })
                    .unwrap();
                *bytes.last_mut().unwrap() ^= 1;
                store.connection.execute(
                    "UPDATE names SET record = ?2 WHERE name = ?1",
                    params![row, bytes],
                )
            }
            "renamed" => store.connection.execute(
                "UPDATE names SET record = (SELECT record FROM names WHERE name = 'good')
                 WHERE name = ?1",
                [row],
            ),
            "expiry" => store.connection.execute(
                "UPDATE names SET expires_ms = expires_ms + 1 WHERE name = ?1",
                [row],
            ),
            "source" => store
                .connection
                .execute("UPDATE names SET source = x'07' WHERE name = ?1", [row]),
            _ => store.connection.execute(
                "UPDATE names SET record = 'not a blob' WHERE name = ?1",
                [row],
            ),
        };
        assert_eq!(changed.unwrap(), 1);
        match store.get(&name(row)) {
            Err(StoreError::Backend(e)) => {
                assert!(
                    e.contains("corrupt row for") && e.contains(what),
                    "{row}: {e}"
                )
            }
            other => panic!("{row}: expected a backend error, got {other:?}"),
        }
        // The rest of the store still works.
        assert_eq!(store.get(&name("good")).unwrap(), Some(good.clone()));
    }
    // A corrupt row can be replaced or deleted.
    store
        .put(entry(1, "trunc", 2, NOW_MS + 1_000, "192.0.2.1"), NOW_MS)
        .unwrap();
    assert!(store.get(&name("trunc")).unwrap().is_some());
    assert!(store.delete(&name("forged")).unwrap());
    assert_eq!(store.len().unwrap(), 6);
}

#[test]
fn backend_failures_are_errors() {
    let mut store = SqliteStore::in_memory().unwrap();
    store.connection.execute_batch("DROP TABLE names").unwrap();
    assert!(matches!(store.get(&name("a")), Err(StoreError::Backend(_))));
    assert!(matches!(
        store.put(entry(1, "a", 1, NOW_MS, "192.0.2.1"), NOW_MS),
        Err(StoreError::Backend(_))
    ));
    assert!(matches!(
        store.delete(&name("a")),
        Err(StoreError::Backend(_))
    ));
    assert!(matches!(
        store.prune_expired(NOW_MS, 1),
        Err(StoreError::Backend(_))
    ));
    assert!(matches!(
        store.count_for_source(source("192.0.2.1"), NOW_MS),
        Err(StoreError::Backend(_))
    ));
}

#[test]
fn a_file_store_prunes_on_its_thread_and_keeps_its_count() {
    let dir = test_dir("store-sqlite-thread");
    let path = dir.path().join("names.db");
    let mut store = SqliteStore::open(&path).unwrap().with_capacity(3_000);
    fill_expired(&mut store, 3_000);
    // The first call only hands the thread its work: nothing removed yet, more to come (so the
    // server steps again soon).
    assert_eq!(store.prune_expired(NOW_MS, 500).unwrap(), 0);
    assert!(store.prune_pending());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut live = 0;
    loop {
        // A put between two calls, as the server serves requests between two steps: it waits
        // for the thread's transaction, and takes the place of an expired name while the store
        // is full.
        store
            .put(
                entry(2, &format!("live{live}"), 1, NOW_MS + 60_000, "192.0.2.2"),
                NOW_MS,
            )
            .unwrap();
        live += 1;
        let (rows, len) = rows_and_len(&store);
        assert_eq!(rows, len, "the count follows the thread's deletes");
        let n = store.prune_expired(NOW_MS, 500).unwrap();
        assert!(n <= 500, "one call reported {n} rows");
        if n == 0 && !store.prune_pending() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "pruning does not end");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        rows_and_len(&store),
        (live, live),
        "only the live names are left"
    );
    assert_eq!(
        store.count_for_source(source("192.0.2.2"), NOW_MS).unwrap(),
        live
    );
    // Nothing expired is left: the next round finds nothing and ends at once.
    assert_eq!(prune_until_done(&mut store, NOW_MS, 500), 0);
}

#[test]
fn dropping_a_file_store_stops_its_thread() {
    let dir = test_dir("store-sqlite-drop");
    let path = dir.path().join("names.db");
    let mut store = SqliteStore::open(&path).unwrap();
    fill_expired(&mut store, 20_000);
    // The thread is busy deleting when the store is dropped.
    store.prune_expired(NOW_MS, u64::MAX).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let thread = store.background.as_ref().unwrap().watch();
    drop(store);
    assert!(thread.upgrade().is_none(), "the thread outlived its store");
    // What it committed is consistent: a reopened store counts what is there.
    let store = SqliteStore::open(&path).unwrap();
    let (rows, len) = rows_and_len(&store);
    assert_eq!(rows, len);
    assert!(rows < 20_000, "the thread deleted nothing in 20 ms");
}

#[test]
fn a_failed_prune_on_the_thread_is_an_error() {
    let dir = test_dir("store-sqlite-thread-error");
    let path = dir.path().join("names.db");
    let mut store = SqliteStore::open(&path).unwrap();
    fill_expired(&mut store, 10);
    store.connection.execute_batch("DROP TABLE names").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match store.prune_expired(NOW_MS, 100) {
            Ok(0) => {}
            Err(StoreError::Backend(_)) => break,
            other => panic!("{other:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the failure was not reported"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn the_log_restarts_while_the_thread_prunes_beside_puts() {
    // Five checkpoints' worth of rows. The log restarts after each (it peaked near 30 MB when
    // measured); with one plain `PASSIVE` pass per checkpoint instead, the puts kept it from
    // restarting and it grew past 95 MB.
    const ROWS: u64 = 5 * background::CHECKPOINT_ROWS;
    let dir = test_dir("store-sqlite-log");
    let path = dir.path().join("names.db");
    let wal = dir.path().join("names.db-wal");
    let mut store = SqliteStore::open(&path).unwrap();
    fill_expired(&mut store, ROWS);
    let mut largest = 0;
    let mut live = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let n = store.prune_expired(NOW_MS, 1_000).unwrap();
        if n == 0 && !store.prune_pending() {
            break;
        }
        // A put every step: a write that begins while the log is being copied would keep
        // the log from restarting.
        store
            .put(
                entry(2, &format!("live{live}"), 1, NOW_MS + 60_000, "192.0.2.2"),
                NOW_MS,
            )
            .unwrap();
        live += 1;
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        assert!(std::time::Instant::now() < deadline, "pruning does not end");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(rows_and_len(&store), (live, live));
    assert!(
        largest < 60_000_000,
        "the log grew to {largest} bytes while pruning {ROWS} rows"
    );
}

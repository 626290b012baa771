use super::*;

const MS: Duration = Duration::from_millis(1);

fn store_in(dir: &tempfile::TempDir) -> HealthStore {
    HealthStore::open(&dir.path().join("sub").join(FILE_NAME)).expect("open the health file")
}

#[test]
fn record_then_get_counts_and_keeps_the_last_success() {
    let dir = crate::test_dir("health");
    let mut s = store_in(&dir);
    assert_eq!(s.get(ServerKind::StunUdp, 7).unwrap(), None);
    s.record(ServerKind::StunUdp, 7, "192.0.2.1:3478", Ok(12 * MS), 1_000)
        .unwrap();
    s.record(
        ServerKind::StunUdp,
        7,
        "192.0.2.1:3478",
        Err("no reply".into()),
        2_000,
    )
    .unwrap();
    let h = s.get(ServerKind::StunUdp, 7).unwrap().expect("recorded");
    assert_eq!(h.address, "192.0.2.1:3478");
    assert_eq!(h.last_attempt_ms, 2_000);
    assert_eq!(h.last_success_ms, Some(1_000));
    assert_eq!(h.last_rtt, Some(12 * MS));
    assert_eq!((h.successes, h.failures, h.consecutive_failures), (1, 1, 1));
    assert_eq!(h.last_error.as_deref(), Some("no reply"));
    // Another kind with the same id is another server.
    assert_eq!(s.get(ServerKind::StunTcp, 7).unwrap(), None);

    // A success resets the consecutive failures and the error.
    s.record(ServerKind::StunUdp, 7, "192.0.2.1:3478", Ok(3 * MS), 3_000)
        .unwrap();
    let h = s.get(ServerKind::StunUdp, 7).unwrap().unwrap();
    assert_eq!((h.successes, h.failures, h.consecutive_failures), (2, 1, 0));
    assert_eq!(h.last_success_ms, Some(3_000));
    assert_eq!(h.last_error, None);

    // Ids above i64::MAX survive the trip through SQLite; the file survives a reopen.
    s.record(ServerKind::Pnp, u64::MAX, "x", Ok(MS), u64::MAX)
        .unwrap();
    drop(s);
    let s = store_in(&dir);
    let h = s.get(ServerKind::Pnp, u64::MAX).unwrap().unwrap();
    assert_eq!(h.last_success_ms, Some(i64::MAX as u64));
    assert_eq!(s.get(ServerKind::StunUdp, 7).unwrap().unwrap().successes, 2);
}

#[test]
fn rank_puts_fresh_working_first_then_untried_then_failing() {
    let mut s = HealthStore::in_memory().unwrap();
    let k = ServerKind::Mqtt;
    // 1: answered long ago. 2: answered recently, slow. 3: answered recently, fast.
    // 4: never tried. 5: failing twice. 6: failing once (answered before). 7: never tried.
    s.record(k, 1, "a", Ok(MS), 1_000).unwrap();
    s.record(k, 2, "b", Ok(50 * MS), 9_000).unwrap();
    s.record(k, 3, "c", Ok(5 * MS), 9_000).unwrap();
    s.record(k, 5, "e", Err("x".into()), 8_000).unwrap();
    s.record(k, 5, "e", Err("x".into()), 9_000).unwrap();
    s.record(k, 6, "f", Ok(MS), 5_000).unwrap();
    s.record(k, 6, "f", Err("x".into()), 9_000).unwrap();
    let ranked = s.rank(k, &[7, 6, 5, 4, 1, 2, 3]).unwrap();
    assert_eq!(ranked, vec![3, 2, 1, 7, 4, 6, 5]);
    // Another kind knows none of them: the order given, unchanged.
    assert_eq!(
        s.rank(ServerKind::Relay, &[5, 1, 3]).unwrap(),
        vec![5, 1, 3]
    );
    assert_eq!(s.rank(k, &[]).unwrap(), Vec::<u64>::new());
}

#[test]
fn refuses_foreign_databases_and_other_versions() {
    let dir = crate::test_dir("health-foreign");
    let foreign = dir.path().join("other.sqlite");
    let c = Connection::open(&foreign).unwrap();
    c.execute_batch("CREATE TABLE t (x INTEGER);").unwrap();
    drop(c);
    let e = HealthStore::open(&foreign).unwrap_err();
    assert!(e.contains("not a p2pd health file"), "{e}");
    assert!(e.contains("other.sqlite"), "{e}");

    let newer = dir.path().join("newer.sqlite");
    let c = Connection::open(&newer).unwrap();
    c.execute_batch("PRAGMA user_version = 99;").unwrap();
    drop(c);
    let e = HealthStore::open(&newer).unwrap_err();
    assert!(e.contains("version 99"), "{e}");

    let text = dir.path().join("text");
    std::fs::write(&text, "not a database at all, just some text....").unwrap();
    assert!(HealthStore::open(&text).is_err());
}

#[test]
fn long_errors_are_clipped_at_a_character_boundary() {
    let mut s = HealthStore::in_memory().unwrap();
    let long = "é".repeat(400);
    s.record(ServerKind::Relay, 1, "r", Err(long), 1).unwrap();
    let e = s
        .get(ServerKind::Relay, 1)
        .unwrap()
        .unwrap()
        .last_error
        .unwrap();
    assert!(e.len() <= MAX_ERROR_LEN && e.len() >= MAX_ERROR_LEN - 1);
    assert!(e.chars().all(|c| c == 'é'));
}

#[test]
fn a_batch_is_kept_whole_or_not_at_all() {
    let mut s = HealthStore::in_memory().unwrap();
    s.batch(|s| {
        s.record(ServerKind::Mqtt, 1, "a", Ok(MS), 10)?;
        s.record(ServerKind::Mqtt, 2, "b", Ok(MS), 10)
    })
    .unwrap();
    let e = s
        .batch(|s| {
            s.record(ServerKind::Mqtt, 3, "c", Ok(MS), 20)?;
            Err::<(), _>("stop".to_string())
        })
        .unwrap_err();
    assert_eq!(e, "stop");
    assert!(s.get(ServerKind::Mqtt, 2).unwrap().is_some());
    assert_eq!(s.get(ServerKind::Mqtt, 3).unwrap(), None);
}

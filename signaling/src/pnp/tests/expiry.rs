//! Expiry at the edges: expired names count against nothing, pruning runs in bounded steps, and
//! no expiry value (up to `u64::MAX`) or configuration keeps a name beyond the documented limit.

use std::time::Duration;

use super::harness::*;
use super::rules::open_reply;
use crate::pnp::*;

fn refusal(ev: &PnpClientEvent) -> Option<(ErrorCode, u64)> {
    match ev {
        PnpClientEvent::Failed {
            reason: PnpFailure::Refused { code, detail },
            ..
        } => Some((*code, *detail)),
        _ => None,
    }
}

fn register_for(w: &mut World, c: usize, n: &str, ttl: Duration) -> PnpClientEvent {
    let n = name(n);
    w.run(c, |m, now| {
        m.register(now, n, b"v".to_vec(), 1, ttl).unwrap()
    })
}

#[test]
fn expired_names_do_not_count_against_the_store_capacity() {
    let mut w = World::with_store(server_config(), MemoryStore::new(2));
    let a = w.add_client(1, "198.51.100.1:4000", PnpTransport::Udp);
    let b = w.add_client(2, "198.51.100.2:4000", PnpTransport::Udp);
    let ten_s = Duration::from_secs(10);
    assert!(matches!(
        register_for(&mut w, a, "first", ten_s),
        PnpClientEvent::Registered { .. }
    ));
    assert!(matches!(
        register_for(&mut w, a, "second", ten_s),
        PnpClientEvent::Registered { .. }
    ));
    let ev = register_for(&mut w, b, "third", ten_s);
    assert_eq!(refusal(&ev), Some((ErrorCode::ServerBusy, 0)), "full");
    // Both names expire; the next prune is a minute away, so they are still stored.
    w.advance(Duration::from_secs(11));
    assert_eq!(w.server.machine.stats().pruned, 0);
    assert_eq!(w.server.machine.store().len(), Ok(2));
    let ev = register_for(&mut w, b, "third", ten_s);
    assert!(
        matches!(ev, PnpClientEvent::Registered { .. }),
        "an expired name took the place: {ev:?}"
    );
    assert!(matches!(
        register_for(&mut w, b, "fourth", ten_s),
        PnpClientEvent::Registered { .. }
    ));
    assert_eq!(w.server.machine.store().len(), Ok(2));
    assert_eq!(w.server.machine.store().get(&name("first")), Ok(None));
}

#[test]
fn expired_names_do_not_count_against_a_source_quota() {
    let mut config = server_config();
    config.max_names_per_source = 2;
    let mut w = World::new(config);
    let a = w.add_client(1, "198.51.100.1:4000", PnpTransport::Udp);
    let ten_s = Duration::from_secs(10);
    register_for(&mut w, a, "n1", ten_s);
    register_for(&mut w, a, "n2", ten_s);
    let ev = register_for(&mut w, a, "n3", ten_s);
    assert_eq!(refusal(&ev), Some((ErrorCode::QuotaExceeded, 2)));
    w.advance(Duration::from_secs(11));
    assert_eq!(w.server.machine.stats().pruned, 0, "not pruned yet");
    let ev = register_for(&mut w, a, "n3", ten_s);
    assert!(matches!(ev, PnpClientEvent::Registered { .. }), "{ev:?}");
}

#[test]
fn pruning_runs_in_bounded_steps_and_serves_requests_in_between() {
    const EXPIRED: u64 = 200;
    const BATCH: u64 = 16;
    let mut config = server_config();
    config.prune_batch = BATCH;
    config.prune_step_pause = Duration::from_millis(10);
    let mut w = World::with_store(config, MemoryStore::new(1_000));
    let now_ms = w.server.machine.unix_ms(w.now);
    let owner = id(1);
    let source = SourceKey::V4([192, 0, 2, 9]);
    for i in 0..EXPIRED + 5 {
        // The last five stay live for an hour.
        let expires = if i < EXPIRED {
            now_ms + 1_000 + i
        } else {
            now_ms + 3_600_000
        };
        let record = Record::sign(&owner, name(&format!("n{i}")), vec![], 1, expires).unwrap();
        let store = w.server.machine.store_mut();
        store.put(StoredName { record, source }, now_ms).unwrap();
    }
    let a = w.add_client(2, "198.51.100.2:4000", PnpTransport::Udp);
    // The first prune is due one prune interval after the server's zero instant.
    let first = Duration::from_secs(60) - (w.now - p2pd_proto::Instant::ZERO);
    w.advance(first);
    let mut left = EXPIRED + 5 - BATCH;
    assert_eq!(w.server.machine.store().len(), Ok(left));
    assert_eq!(w.server.machine.stats().prune_steps, 1);
    assert_eq!(
        w.server.deadline(),
        Some(w.now + Duration::from_millis(10)),
        "the next step comes soon while expired names remain"
    );
    // Between two steps the server answers requests.
    assert!(matches!(
        w.lookup(a, &format!("n{}", EXPIRED + 1)),
        PnpClientEvent::Found { .. }
    ));
    let mut steps = 1;
    while w.server.machine.stats().pruned < EXPIRED {
        w.advance(Duration::from_millis(10));
        let len = w.server.machine.store().len().unwrap();
        assert!(left - len <= BATCH, "one step removed {}", left - len);
        left = len;
        steps += 1;
        assert!(steps <= 20, "pruning does not finish");
    }
    assert_eq!(w.server.machine.stats().pruned, EXPIRED);
    assert_eq!(
        w.server.machine.stats().prune_steps,
        EXPIRED.div_ceil(BATCH)
    );
    assert_eq!(w.server.machine.store().len(), Ok(5), "live names stay");
    // One more step finds nothing and puts the next one a prune interval away.
    assert!(w.server.deadline().unwrap() < w.now + Duration::from_secs(1));
    w.advance(Duration::from_millis(10));
    assert_eq!(
        w.server.machine.stats().prune_steps,
        EXPIRED.div_ceil(BATCH) + 1
    );
    assert!(w.server.deadline().unwrap() >= w.now + Duration::from_secs(59));
}

/// Registers a record with `expires_ms` through a raw UDP request and returns the reply body.
fn raw_register(w: &mut World, n: &str, expires_ms: u64, nonce: u8) -> ReplyBody {
    let now_ms = w.server.machine.unix_ms(w.now);
    let record = Record::sign(&id(1), name(n), b"v".to_vec(), 1, expires_ms).unwrap();
    let request = Request::Register(Box::new(record));
    let sealed = seal_request(&id(1), &w.server_key, now_ms, [nonce; 16], &request, 0);
    let replies = w.raw_udp("198.51.100.1:4000".parse().unwrap(), &sealed);
    assert_eq!(replies.len(), 1);
    open_reply(w, 1, &replies[0]).body
}

#[test]
fn huge_expiries_are_refused_with_the_latest_accepted() {
    let mut w = World::new(server_config());
    let now_ms = w.server.machine.unix_ms(w.now);
    let latest = now_ms + 7 * 24 * 3600 * 1000 + 5_000;
    for (i, expires) in [
        u64::MAX,
        u64::MAX - 1,
        i64::MAX as u64 + 1,
        i64::MAX as u64,
        latest + 1,
        0,
        now_ms,
    ]
    .into_iter()
    .enumerate()
    {
        let body = raw_register(&mut w, &format!("h{i}"), expires, i as u8);
        assert_eq!(
            body,
            ReplyBody::Error {
                code: ErrorCode::InvalidExpiry,
                detail: latest
            },
            "expires_ms {expires}"
        );
    }
    assert_eq!(w.server.machine.store().len(), Ok(0));
    assert_eq!(
        raw_register(&mut w, "edge", latest, 99),
        ReplyBody::Registered { version: 1 }
    );
}

#[test]
fn a_client_asking_for_an_endless_ttl_gets_invalid_expiry() {
    let mut w = World::new(server_config());
    let a = w.add_client(1, "198.51.100.1:4000", PnpTransport::Udp);
    for ttl in [
        Duration::MAX,
        Duration::from_secs(u64::MAX),
        Duration::from_millis(u64::MAX),
    ] {
        let ev = register_for(&mut w, a, "forever", ttl);
        let latest = w.server.machine.unix_ms(w.now) + 7 * 24 * 3600 * 1000 + 5_000;
        assert_eq!(
            refusal(&ev),
            Some((ErrorCode::InvalidExpiry, latest)),
            "{ttl:?}"
        );
    }
    assert_eq!(w.server.machine.store().len(), Ok(0));
}

#[test]
fn configurations_beyond_the_lifetime_and_skew_limits_are_refused() {
    let make = |config: PnpServerConfig| PnpServer::new(config, id(200), MemoryStore::new(1), 1);
    let mut config = server_config();
    config.max_lifetime = MAX_RECORD_LIFETIME;
    config.max_future_ms = MAX_CLOCK_SKEW_MS;
    assert!(make(config.clone()).is_ok());
    for lifetime in [
        MAX_RECORD_LIFETIME + Duration::from_millis(1),
        Duration::from_secs(u64::MAX),
        Duration::MAX,
    ] {
        let mut c = config.clone();
        c.max_lifetime = lifetime;
        assert_eq!(make(c).unwrap_err(), PnpConfigError::LifetimeTooLong);
    }
    for skew in [MAX_CLOCK_SKEW_MS + 1, u64::MAX] {
        let mut c = config.clone();
        c.max_future_ms = skew;
        assert_eq!(make(c).unwrap_err(), PnpConfigError::SkewTooLarge);
    }
    // With the largest accepted settings an endless expiry is still refused.
    let mut w = World::new(config);
    let now_ms = w.server.machine.unix_ms(w.now);
    let latest = now_ms + MAX_RECORD_LIFETIME.as_millis() as u64 + MAX_CLOCK_SKEW_MS;
    assert_eq!(
        raw_register(&mut w, "x", u64::MAX, 1),
        ReplyBody::Error {
            code: ErrorCode::InvalidExpiry,
            detail: latest
        }
    );
}

/// A store that prunes on a thread of its own, modelled: a call hands the work over and reports
/// what was removed since the last one, which is nothing for the first `lagging` calls (the
/// thread is still at it), then all that the memory store would remove.
struct BackgroundStore {
    inner: MemoryStore,
    lagging: u32,
    pending: bool,
}

impl NameStore for BackgroundStore {
    fn get(&self, name: &Name) -> Result<Option<StoredName>, StoreError> {
        self.inner.get(name)
    }
    fn put(&mut self, entry: StoredName, now_ms: u64) -> Result<(), StoreError> {
        self.inner.put(entry, now_ms)
    }
    fn delete(&mut self, name: &Name) -> Result<bool, StoreError> {
        self.inner.delete(name)
    }
    fn count_for_source(&self, source: SourceKey, now_ms: u64) -> Result<u64, StoreError> {
        self.inner.count_for_source(source, now_ms)
    }
    fn prune_expired(&mut self, now_ms: u64, max: u64) -> Result<u64, StoreError> {
        self.pending = self.lagging > 0;
        if self.pending {
            self.lagging -= 1;
            return Ok(0);
        }
        self.inner.prune_expired(now_ms, max)
    }
    fn prune_pending(&self) -> bool {
        self.pending
    }
    fn len(&self) -> Result<u64, StoreError> {
        self.inner.len()
    }
}

#[test]
fn a_store_still_pruning_in_the_background_gets_its_next_step_soon() {
    use p2pd_proto::{Instant, Machine};
    let mut config = server_config();
    config.prune_step_pause = Duration::from_millis(10);
    let mut store = BackgroundStore {
        inner: MemoryStore::new(100),
        lagging: 3,
        pending: false,
    };
    let record = Record::sign(&id(1), name("old"), vec![], 1, EPOCH + 1_000).unwrap();
    let source = SourceKey::V4([192, 0, 2, 9]);
    store.put(StoredName { record, source }, EPOCH).unwrap();
    let mut server = PnpServer::new(config, id(200), store, 7).unwrap();
    let mut now = Instant::ZERO + Duration::from_secs(60);
    assert_eq!(server.poll_timeout(), Some(now), "the first prune step");
    // Three steps report nothing removed, but the store is still at it: the next step is a
    // step pause away, not a prune interval.
    for _ in 0..3 {
        server.handle_timeout(now);
        now = now + Duration::from_millis(10);
        assert_eq!(server.poll_timeout(), Some(now));
        assert_eq!(server.stats().pruned, 0);
    }
    // Then it reports the removed name (the next step comes soon, more may be left) ...
    server.handle_timeout(now);
    assert_eq!(server.stats().pruned, 1);
    now = now + Duration::from_millis(10);
    assert_eq!(server.poll_timeout(), Some(now));
    // ... and a step that removes nothing with nothing pending waits a prune interval.
    server.handle_timeout(now);
    assert_eq!(server.stats().prune_steps, 5);
    assert_eq!(server.poll_timeout(), Some(now + Duration::from_secs(60)));
}

//! STUN servers: canonical ids, a small default list, and health-aware selection.
//!
//! # Ids
//!
//! A [`ServerId`] is the 64-bit FNV-1a hash of the server's identity string, never its position in
//! a list (p2pd names servers by list index or IP literal, so its "offsets" break whenever a list is
//! regenerated or reordered):
//!
//! - `"stun:" + host + ":" + port` when the host name is known (ASCII-lowercased, trailing dot
//!   removed; the port is the primary port), so the id survives the name moving to another address;
//! - otherwise `"stun:" + primary`, with the address in Rust's canonical `Display` form (`1.2.3.4:3478`,
//!   `[2001:db8::1]:3478`: RFC 5952 compressed IPv6, so p2pd's mix of exploded and compressed forms
//!   maps to one id).
//!
//! The alternate address and the RFC 5780 flag are not part of the identity.
//!
//! # Health and selection
//!
//! [`ServerList`] keeps a [`ServerHealth`] for each known id only (bounded by the list, at most
//! [`MAX_SERVERS`]): successes, failures, consecutive failures, last success and failure, and a
//! smoothed RTT (RFC 6298 weights: `srtt = 7/8 srtt + 1/8 rtt`). After
//! [`HealthConfig::backoff_after`] consecutive failures a server is skipped until
//! `last failure + backoff_base * 2^(consecutive - backoff_after)` (capped at `backoff_max`); a
//! success ends the back-off.
//!
//! [`ServerList::select`] scores every eligible server (see [`ServerHealth::score`]: success ratio,
//! consecutive failures, freshness of the last success, RTT), adds a random bonus of up to
//! [`HealthConfig::jitter_percent`] of the score drawn from the injected [`Rng`] (so load spreads
//! over similar servers, deterministically for a seed), and returns the best `n` ids, each at most
//! once. Servers are kept sorted by id, so the outcome does not depend on the order of the input list.

use core::fmt;
use core::time::Duration;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use p2pd_proto::{Instant, Rng};

/// A server's canonical id (see the module docs).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId(u64);

/// 64-bit FNV-1a, fed through `fmt::Write` so ids need no allocation.
struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn byte(&mut self, b: u8) {
        self.0 = (self.0 ^ u64::from(b)).wrapping_mul(Self::PRIME);
    }
}

impl fmt::Write for Fnv1a {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            self.byte(b.to_ascii_lowercase());
        }
        Ok(())
    }
}

/// The canonical 64-bit id of a service: FNV-1a of `scheme + ":" + host + ":" + port` when the
/// host name is known (ASCII-lowercased, trailing dot removed), otherwise of `scheme + ":" +
/// address` in Rust's canonical `Display` form. STUN servers (`"stun"`), MQTT brokers (`"mqtt"`)
/// and PNP servers share it, so no list position ever names a server.
pub fn canonical_id(scheme: &str, host: Option<&str>, address: SocketAddr) -> u64 {
    use fmt::Write as _;
    let mut h = Fnv1a(Fnv1a::OFFSET);
    // Writing into the hasher cannot fail.
    let _ = match host.map(|h| h.trim_end_matches('.')) {
        Some(name) if !name.is_empty() => write!(h, "{scheme}:{name}:{}", address.port()),
        _ => write!(h, "{scheme}:{address}"),
    };
    h.0
}

impl ServerId {
    /// The id of the server named `host` (if known) with primary address `primary`.
    pub fn of(host: Option<&str>, primary: SocketAddr) -> ServerId {
        ServerId(canonical_id("stun", host, primary))
    }

    /// The id as a number.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// An id from a number (for storage and tests).
    pub const fn from_u64(v: u64) -> ServerId {
        ServerId(v)
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A STUN server.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerEntry {
    /// Its canonical id ([`ServerEntry::new`] derives it; keep it consistent if you build the struct
    /// yourself).
    pub id: ServerId,
    /// Its DNS name, if known.
    pub host: Option<&'static str>,
    /// The address to send to.
    pub primary: SocketAddr,
    /// The RFC 5780 OTHER-ADDRESS (RFC 3489 CHANGED-ADDRESS): the alternate IP and port that
    /// answers a CHANGE-REQUEST.
    pub alternate: Option<SocketAddr>,
    /// Whether it answers CHANGE-REQUEST from its alternate IP and port, as NAT behaviour discovery
    /// needs (RFC 5780; p2pd's "change" servers).
    pub rfc5780: bool,
}

impl ServerEntry {
    /// An entry with its id derived from `host` and `primary`.
    pub fn new(
        host: Option<&'static str>,
        primary: SocketAddr,
        alternate: Option<SocketAddr>,
        rfc5780: bool,
    ) -> Self {
        ServerEntry {
            id: ServerId::of(host, primary),
            host,
            primary,
            alternate,
            rfc5780,
        }
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port))
}

/// The built-in servers: only servers whose addresses the p2pd reference states, all of them change
/// (RFC 5780 capable) servers with both endpoints known, and no loopback entry (p2pd's lists carry
/// `stunserver.stunprotocol.org` as `127.0.0.1` and `::1`):
///
/// - `hetzner1.p2pd.net` `88.99.211.216:3478`, CHANGED-ADDRESS `88.99.211.211:3479` (the RFC 3489
///   response embedded in p2pd's `stun_client.py`);
/// - `217.0.1.57:3478` with `217.0.1.58:3479` (a `STUN(test_nat)` group of aionetiface's
///   `servers.json`, dated 2025-12-27);
/// - `3.132.228.249:3478` with `3.135.212.85:3479` (p2pd's disabled live test).
///
/// Lists age: feed fresher entries to [`ServerList::new`] when you have them.
pub fn default_servers() -> Vec<ServerEntry> {
    vec![
        ServerEntry::new(
            Some("hetzner1.p2pd.net"),
            v4(88, 99, 211, 216, 3478),
            Some(v4(88, 99, 211, 211, 3479)),
            true,
        ),
        ServerEntry::new(
            None,
            v4(217, 0, 1, 57, 3478),
            Some(v4(217, 0, 1, 58, 3479)),
            true,
        ),
        ServerEntry::new(
            None,
            v4(3, 132, 228, 249, 3478),
            Some(v4(3, 135, 212, 85, 3479)),
            true,
        ),
    ]
}

/// Whether an address is fit for a public server list (not loopback, unspecified or port 0).
pub fn is_public_candidate(addr: SocketAddr) -> bool {
    let ip_ok = match addr.ip() {
        IpAddr::V4(ip) => !ip.is_loopback() && !ip.is_unspecified(),
        IpAddr::V6(ip) => !ip.is_loopback() && !ip.is_unspecified(),
    };
    ip_ok && addr.port() != 0
}

/// Health bookkeeping and selection settings.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct HealthConfig {
    /// Consecutive failures that start a back-off (default 2).
    pub backoff_after: u32,
    /// The first back-off (default 30 s); it doubles with each further failure.
    pub backoff_base: Duration,
    /// The longest back-off (default 30 min).
    pub backoff_max: Duration,
    /// How long a success counts as fresh (default 10 min).
    pub fresh_for: Duration,
    /// The RTT assumed for a server never measured (default 250 ms).
    pub default_rtt: Duration,
    /// The random bonus, in percent of a server's score (default 25).
    pub jitter_percent: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            backoff_after: 2,
            backoff_base: Duration::from_secs(30),
            backoff_max: Duration::from_secs(30 * 60),
            fresh_for: Duration::from_secs(10 * 60),
            default_rtt: Duration::from_millis(250),
            jitter_percent: 25,
        }
    }
}

/// What we know about one server.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServerHealth {
    /// Transactions answered.
    pub successes: u32,
    /// Transactions that failed (timed out or got an error).
    pub failures: u32,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// When it last answered.
    pub last_success: Option<Instant>,
    /// When it last failed.
    pub last_failure: Option<Instant>,
    /// Smoothed round-trip time.
    pub srtt: Option<Duration>,
}

impl ServerHealth {
    /// Records an answer after `rtt`.
    pub fn record_success(&mut self, now: Instant, rtt: Duration) {
        self.successes = self.successes.saturating_add(1);
        self.consecutive_failures = 0;
        self.last_success = Some(now);
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(s) => s
                .saturating_sub(s.checked_div(8).unwrap_or_default())
                .saturating_add(rtt.checked_div(8).unwrap_or_default()),
        });
    }

    /// Records a failure.
    pub fn record_failure(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.last_failure = Some(now);
    }

    /// The end of the current back-off, if the server is (or was) in one.
    pub fn backoff_until(&self, cfg: &HealthConfig) -> Option<Instant> {
        let over = self
            .consecutive_failures
            .checked_sub(cfg.backoff_after.max(1))?;
        let factor = 1u32.checked_shl(over.min(20)).unwrap_or(u32::MAX);
        let wait = cfg.backoff_base.saturating_mul(factor).min(cfg.backoff_max);
        Some(self.last_failure?.saturating_add(wait))
    }

    /// Whether the server is skipped at `now`.
    pub fn in_backoff(&self, now: Instant, cfg: &HealthConfig) -> bool {
        self.backoff_until(cfg).is_some_and(|until| now < until)
    }

    /// The selection score (higher is better): `reliability * freshness * speed` where
    ///
    /// - reliability = `1000 * (successes + 1) / (successes + failures + 2)`, divided by
    ///   `1 + consecutive failures`;
    /// - freshness = 4 if the last success is within `fresh_for`, 3 if never tried, 2 if it
    ///   answered before, 1 if it never answered;
    /// - speed = `100000 / (srtt in ms + 20)` (`default_rtt` when unmeasured).
    pub fn score(&self, now: Instant, cfg: &HealthConfig) -> u64 {
        let successes = u64::from(self.successes);
        let tries = successes.saturating_add(u64::from(self.failures));
        let reliability = successes
            .saturating_add(1)
            .saturating_mul(1000)
            .checked_div(tries.saturating_add(2))
            .unwrap_or(0)
            .checked_div(u64::from(self.consecutive_failures).saturating_add(1))
            .unwrap_or(0);
        let freshness = match self.last_success {
            Some(t) if now.saturating_duration_since(t) <= cfg.fresh_for => 4,
            Some(_) => 2,
            None if tries == 0 => 3,
            None => 1,
        };
        let rtt_ms =
            u64::try_from(self.srtt.unwrap_or(cfg.default_rtt).as_millis()).unwrap_or(u64::MAX);
        let speed = 100_000u64
            .checked_div(rtt_ms.saturating_add(20))
            .unwrap_or(0);
        reliability.saturating_mul(freshness).saturating_mul(speed)
    }
}

/// The most servers a [`ServerList`] holds; further entries are ignored.
pub const MAX_SERVERS: usize = 1024;

/// Known servers and their health.
#[derive(Clone, Debug)]
pub struct ServerList {
    /// Sorted by id, ids unique.
    servers: Vec<(ServerEntry, ServerHealth)>,
    cfg: HealthConfig,
}

impl ServerList {
    /// A list of `entries` (duplicate ids: the first wins; at most [`MAX_SERVERS`]), all healthy
    /// and untried.
    pub fn new(entries: impl IntoIterator<Item = ServerEntry>, cfg: HealthConfig) -> Self {
        let mut servers: Vec<(ServerEntry, ServerHealth)> = Vec::new();
        for e in entries {
            if servers.len() >= MAX_SERVERS {
                break;
            }
            if let Err(at) = servers.binary_search_by_key(&e.id, |(s, _)| s.id) {
                servers.insert(at, (e, ServerHealth::default()));
            }
        }
        ServerList { servers, cfg }
    }

    /// [`default_servers`] with the default [`HealthConfig`].
    pub fn default_list() -> Self {
        Self::new(default_servers(), HealthConfig::default())
    }

    /// How many servers it holds.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The settings.
    pub fn config(&self) -> &HealthConfig {
        &self.cfg
    }

    /// The servers, in id order.
    pub fn entries(&self) -> impl Iterator<Item = &ServerEntry> {
        self.servers.iter().map(|(e, _)| e)
    }

    fn slot(&self, id: ServerId) -> Option<&(ServerEntry, ServerHealth)> {
        let at = self.servers.binary_search_by_key(&id, |(s, _)| s.id).ok()?;
        self.servers.get(at)
    }

    fn health_mut(&mut self, id: ServerId) -> Option<&mut ServerHealth> {
        let at = self.servers.binary_search_by_key(&id, |(s, _)| s.id).ok()?;
        self.servers.get_mut(at).map(|(_, h)| h)
    }

    /// The server with this id.
    pub fn get(&self, id: ServerId) -> Option<&ServerEntry> {
        self.slot(id).map(|(e, _)| e)
    }

    /// Its health.
    pub fn health(&self, id: ServerId) -> Option<&ServerHealth> {
        self.slot(id).map(|(_, h)| h)
    }

    /// Records an answer from `id` after `rtt`. Returns false (and records nothing) for an unknown id.
    pub fn record_success(&mut self, id: ServerId, now: Instant, rtt: Duration) -> bool {
        self.health_mut(id)
            .map(|h| h.record_success(now, rtt))
            .is_some()
    }

    /// Records a failure of `id`. Returns false (and records nothing) for an unknown id.
    pub fn record_failure(&mut self, id: ServerId, now: Instant) -> bool {
        self.health_mut(id).map(|h| h.record_failure(now)).is_some()
    }

    /// Whether `id` is known and in back-off at `now`.
    pub fn in_backoff(&self, id: ServerId, now: Instant) -> bool {
        self.health(id)
            .is_some_and(|h| h.in_backoff(now, &self.cfg))
    }

    /// Up to `n` distinct servers, best first, skipping those in back-off (see the module docs).
    pub fn select(&self, now: Instant, n: usize, rng: &mut Rng) -> Vec<ServerId> {
        self.select_where(now, n, rng, |_| true)
    }

    /// [`ServerList::select`] among the servers for which `filter` holds (for example
    /// `|s| s.rfc5780` for NAT behaviour discovery).
    pub fn select_where(
        &self,
        now: Instant,
        n: usize,
        rng: &mut Rng,
        filter: impl Fn(&ServerEntry) -> bool,
    ) -> Vec<ServerId> {
        let jitter = u64::from(self.cfg.jitter_percent);
        let mut ranked: Vec<(u64, ServerId)> = self
            .servers
            .iter()
            .filter(|(e, h)| filter(e) && !h.in_backoff(now, &self.cfg))
            .map(|(e, h)| {
                let score = h.score(now, &self.cfg);
                let spread = score
                    .saturating_mul(jitter)
                    .checked_div(100)
                    .unwrap_or(0)
                    .saturating_add(1);
                (score.saturating_add(rng.below(spread)), e.id)
            })
            .collect();
        ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked.into_iter().take(n).map(|(_, id)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default health rules without the random bonus, so the order is predictable.
    fn no_jitter() -> HealthConfig {
        HealthConfig {
            jitter_percent: 0,
            ..HealthConfig::default()
        }
    }

    fn at(secs: u64) -> Instant {
        Instant::from_millis(secs * 1000)
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn many() -> Vec<ServerEntry> {
        (1..=6u8)
            .map(|i| ServerEntry::new(None, v4(192, 0, 2, i, 3478), None, false))
            .collect()
    }

    #[test]
    fn ids_are_fnv1a_of_the_identity() {
        let d = default_servers();
        assert_eq!(d[0].id.as_u64(), 0xd881_0907_c9e2_e441); // "stun:hetzner1.p2pd.net:3478"
        assert_eq!(d[1].id.as_u64(), 0x1607_4291_564b_9462); // "stun:217.0.1.57:3478"
        assert_eq!(d[2].id.as_u64(), 0x88e3_aedf_0337_4d73); // "stun:3.132.228.249:3478"
        assert_eq!(d[0].id.to_string(), "d8810907c9e2e441");
        assert_eq!(ServerId::from_u64(d[1].id.as_u64()), d[1].id);
        // The name wins over the address: same name, other address, same id.
        assert_eq!(
            ServerId::of(Some("HETZNER1.p2pd.net."), v4(1, 2, 3, 4, 3478)),
            d[0].id
        );
        // Not part of the identity: alternate and flag.
        let plain = ServerEntry::new(None, v4(217, 0, 1, 57, 3478), None, false);
        assert_eq!(plain.id, d[1].id);
        // Distinct servers, distinct ids (port and family matter).
        let mut ids: Vec<ServerId> = d.iter().map(|e| e.id).collect();
        ids.push(ServerId::of(None, v4(217, 0, 1, 57, 3479)));
        ids.push(ServerId::of(None, v4(217, 0, 1, 58, 3478)));
        ids.push(ServerId::of(
            Some("hetzner1.p2pd.net"),
            v4(88, 99, 211, 216, 3479),
        ));
        ids.extend(many().iter().map(|e| e.id));
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n);
        // IPv6: exploded and compressed literals are the same server.
        let a: SocketAddr = "[2001:0db8:0000:0000:0000:0000:0000:0001]:3478"
            .parse()
            .unwrap();
        let b: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
        assert_eq!(ServerId::of(None, a), ServerId::of(None, b));
    }

    #[test]
    fn default_list_is_change_capable_and_public() {
        let list = ServerList::default_list();
        assert_eq!(list.len(), 3);
        for e in list.entries() {
            assert!(e.rfc5780);
            assert!(is_public_candidate(e.primary));
            let alt = e.alternate.unwrap();
            assert!(is_public_candidate(alt));
            assert_ne!(alt.ip(), e.primary.ip());
            assert_ne!(alt.port(), e.primary.port());
            assert_eq!(e.id, ServerId::of(e.host, e.primary));
        }
        assert!(!is_public_candidate(v4(127, 0, 0, 1, 3478)));
        assert!(!is_public_candidate("[::1]:3478".parse().unwrap()));
    }

    #[test]
    fn ids_and_selection_are_stable_across_reorderings() {
        let mut entries = many();
        entries.extend(default_servers());
        let a = ServerList::new(entries.clone(), HealthConfig::default());
        entries.reverse();
        entries.push(entries[0]); // a duplicate is dropped
        let b = ServerList::new(entries, HealthConfig::default());
        assert_eq!(a.len(), 9);
        assert_eq!(b.len(), 9);
        assert!(a.entries().eq(b.entries()));
        let pick = |l: &ServerList| l.select(at(1), 5, &mut Rng::from_seed(7));
        assert_eq!(pick(&a), pick(&b));
    }

    #[test]
    fn health_updates() {
        let mut list = ServerList::new(many(), no_jitter());
        let id = many()[0].id;
        assert!(list.record_success(id, at(1), ms(100)));
        assert!(list.record_success(id, at(2), ms(200)));
        assert!(list.record_failure(id, at(3)));
        let h = *list.health(id).unwrap();
        assert_eq!((h.successes, h.failures, h.consecutive_failures), (2, 1, 1));
        assert_eq!((h.last_success, h.last_failure), (Some(at(2)), Some(at(3))));
        assert_eq!(h.srtt, Some(Duration::from_micros(112_500))); // 7/8 * 100 + 1/8 * 200
                                                                  // Unknown ids are not recorded and do not grow the table.
        let stranger = ServerId::of(None, v4(198, 51, 100, 1, 3478));
        assert!(!list.record_failure(stranger, at(4)));
        assert!(!list.record_success(stranger, at(4), ms(1)));
        assert!(list.health(stranger).is_none());
        assert_eq!(list.len(), 6);
        // Bounded.
        let huge = (0..2000u32)
            .map(|i| ServerEntry::new(None, v4(10, (i >> 8) as u8, i as u8, 1, 3478), None, false));
        assert_eq!(ServerList::new(huge, no_jitter()).len(), MAX_SERVERS);
    }

    #[test]
    fn selection_prefers_fresh_healthy_fast_servers() {
        let e = many();
        let mut list = ServerList::new(e.clone(), no_jitter());
        let now = at(1000);
        // e0: fresh, 20 ms. e1: fresh, 300 ms. e2: untried. e3: answered long ago.
        // e4: failed once. e5: in back-off.
        list.record_success(e[0].id, now, ms(20));
        list.record_success(e[1].id, now, ms(300));
        list.record_success(e[3].id, at(1), ms(20));
        list.record_failure(e[4].id, now);
        list.record_failure(e[5].id, now);
        list.record_failure(e[5].id, now);
        let order = list.select(now, 10, &mut Rng::from_seed(1));
        let want: Vec<ServerId> = [0, 3, 1, 2, 4].iter().map(|&i| e[i].id).collect();
        assert_eq!(order, want);
        assert_eq!(list.select(now, 2, &mut Rng::from_seed(1)), want[..2]);
        assert!(list.select(now, 0, &mut Rng::from_seed(1)).is_empty());
        // The filter.
        let mut mixed = e.clone();
        mixed.extend(default_servers());
        let mixed = ServerList::new(mixed, no_jitter());
        let change = mixed.select_where(now, 10, &mut Rng::from_seed(1), |s| s.rfc5780);
        assert_eq!(change.len(), 3);
        assert!(change.iter().all(|id| mixed.get(*id).unwrap().rfc5780));
    }

    #[test]
    fn jitter_spreads_equal_servers_deterministically() {
        let list = ServerList::new(many(), HealthConfig::default());
        let first = |seed| list.select(at(1), 1, &mut Rng::from_seed(seed))[0];
        assert_eq!(first(3), first(3));
        let mut seen: Vec<ServerId> = (0..64).map(first).collect();
        seen.sort_unstable();
        seen.dedup();
        assert!(seen.len() >= 4, "only {} distinct first picks", seen.len());
        for seed in 0..64 {
            let pick = list.select(at(1), 6, &mut Rng::from_seed(seed));
            let mut d = pick.clone();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), 6, "no id twice");
        }
    }

    #[test]
    fn backoff_grows_and_expires() {
        let e = many();
        let id = e[0].id;
        let mut list = ServerList::new(e, no_jitter());
        list.record_failure(id, at(100));
        assert!(!list.in_backoff(id, at(100)), "one failure is not enough");
        list.record_failure(id, at(100));
        assert!(list.in_backoff(id, at(100)));
        assert!(list.in_backoff(id, at(129)));
        assert!(!list.in_backoff(id, at(130)), "30 s back-off expired");
        assert!(list.select(at(110), 10, &mut Rng::from_seed(0)).len() == 5);
        assert!(list
            .select(at(130), 10, &mut Rng::from_seed(0))
            .contains(&id));
        // A third failure doubles it.
        list.record_failure(id, at(130));
        assert!(list.in_backoff(id, at(189)));
        assert!(!list.in_backoff(id, at(190)));
        // Capped.
        for _ in 0..50 {
            list.record_failure(id, at(200));
        }
        let h = list.health(id).unwrap();
        assert_eq!(h.backoff_until(list.config()), Some(at(200 + 30 * 60)));
        // A success ends it.
        list.record_success(id, at(201), ms(50));
        assert!(!list.in_backoff(id, at(201)));
    }
}

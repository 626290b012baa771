//! Name storage: the [`NameStore`] trait the server machine writes through, and a bounded
//! in-memory implementation.

use core::fmt;
use core::net::IpAddr;
use core::ops::Bound;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::record::{Name, Record};

/// Who a quota is counted against: an IPv4 address (/32) or an IPv6 /64 prefix. IPv4-mapped IPv6
/// addresses count as their IPv4 address.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKey {
    /// An IPv4 address.
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6([u8; 8]),
}

impl SourceKey {
    /// Length of [`SourceKey::to_bytes`].
    pub const ENCODED_LEN: usize = 9;

    /// The key of a source address.
    pub fn from_ip(ip: IpAddr) -> SourceKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => SourceKey::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let mut prefix = [0u8; 8];
                for (dst, src) in prefix.iter_mut().zip(v6.octets()) {
                    *dst = src;
                }
                SourceKey::V6(prefix)
            }
        }
    }

    /// A fixed-length encoding for storage: tag (4 or 6) then 8 bytes (IPv4 zero-padded).
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        let (tag, body): (u8, &[u8]) = match self {
            SourceKey::V4(a) => (4, a),
            SourceKey::V6(p) => (6, p),
        };
        let (first, rest) = out.split_at_mut(1);
        first.fill(tag);
        for (dst, src) in rest.iter_mut().zip(body) {
            *dst = *src;
        }
        out
    }

    /// Parses [`SourceKey::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Option<SourceKey> {
        let bytes: &[u8; Self::ENCODED_LEN] = bytes.try_into().ok()?;
        let (tag, body) = bytes.split_first()?;
        match tag {
            4 => {
                let (addr, pad) = body.split_at(4);
                if pad.iter().any(|b| *b != 0) {
                    return None;
                }
                Some(SourceKey::V4(addr.try_into().ok()?))
            }
            6 => Some(SourceKey::V6(body.try_into().ok()?)),
            _ => None,
        }
    }
}

/// A stored name: the owner's record and the source that last wrote it (quotas count names per
/// source; an update from another source moves the name to it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredName {
    /// The signed record.
    pub record: Record,
    /// The source that wrote it.
    pub source: SourceKey,
}

/// Why a store operation failed. The server answers [`super::ErrorCode::ServerBusy`] for both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The store holds as many names as it may.
    Full,
    /// The back end failed (for example an SQLite error), with a description.
    Backend(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Full => f.write_str("name store full"),
            StoreError::Backend(e) => write!(f, "name store failed: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// How many expired names one [`NameStore::put`] may drop to make room for a new name (so a put
/// into a full store stays cheap; more than one only in a store holding more names than its
/// capacity, for example reopened with a smaller one). The rest is left to
/// [`NameStore::prune_expired`].
pub const RECLAIM_PER_PUT: u64 = 64;

/// Where the server keeps names. Synchronous and plain data in, plain data out, so it is easy to
/// implement over SQLite and usable as `Box<dyn NameStore>`.
///
/// The server never relies on the store for expiry: it treats a record whose expiry has passed as
/// absent even if [`NameStore::prune_expired`] has not removed it yet. Expired names never count
/// against a limit: neither the store's capacity ([`NameStore::put`]) nor a source's quota
/// ([`NameStore::count_for_source`]). Pruning is done in bounded steps
/// ([`NameStore::prune_expired`] takes a maximum) so that a million names expiring together
/// never stall the server in one call.
pub trait NameStore {
    /// The entry for `name`, expired or not.
    fn get(&self, name: &Name) -> Result<Option<StoredName>, StoreError>;
    /// Inserts or replaces the entry for `entry.record.name()`. A new name goes into a store that
    /// holds fewer names than its capacity, or else in the place of names that have expired at
    /// `now_ms` (Unix ms): the earliest expired one, and up to [`RECLAIM_PER_PUT`] of them while
    /// the store holds more than its capacity. It fails with [`StoreError::Full`] only if no
    /// stored name has expired, so `Full` means at least `capacity` unexpired names.
    fn put(&mut self, entry: StoredName, now_ms: u64) -> Result<(), StoreError>;
    /// Removes `name`; whether it was there.
    fn delete(&mut self, name: &Name) -> Result<bool, StoreError>;
    /// How many names `source` holds that have not expired at `now_ms` (Unix ms).
    fn count_for_source(&self, source: SourceKey, now_ms: u64) -> Result<u64, StoreError>;
    /// Removes at most `max` entries whose record expires at or before `now_ms` (Unix ms),
    /// earliest first; how many. A store may remove fewer to bound the time of one call (the
    /// server's loop waits for it): the server calls again soon after any call that removed
    /// something, until one removes nothing.
    ///
    /// A store may instead prune on a thread of its own (a database on disk, whose writes can
    /// wait for the disk): then the call asks it to remove at most `max` entries expired at
    /// `now_ms` before the next call and returns how many it removed since the previous call,
    /// and [`NameStore::prune_pending`] says whether that work was still running, so that the
    /// server keeps calling.
    fn prune_expired(&mut self, now_ms: u64, max: u64) -> Result<u64, StoreError>;
    /// Whether pruning asked for before the last [`NameStore::prune_expired`] call was still
    /// running at that call (a store that prunes on a thread); the server then calls again soon
    /// even if that call reported nothing. A store that prunes within the call never is.
    fn prune_pending(&self) -> bool {
        false
    }
    /// How many entries the store holds, expired ones not yet pruned included.
    fn len(&self) -> Result<u64, StoreError>;
    /// Whether the store is empty.
    fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
}

impl<S: NameStore + ?Sized> NameStore for Box<S> {
    fn get(&self, name: &Name) -> Result<Option<StoredName>, StoreError> {
        (**self).get(name)
    }
    fn put(&mut self, entry: StoredName, now_ms: u64) -> Result<(), StoreError> {
        (**self).put(entry, now_ms)
    }
    fn delete(&mut self, name: &Name) -> Result<bool, StoreError> {
        (**self).delete(name)
    }
    fn count_for_source(&self, source: SourceKey, now_ms: u64) -> Result<u64, StoreError> {
        (**self).count_for_source(source, now_ms)
    }
    fn prune_expired(&mut self, now_ms: u64, max: u64) -> Result<u64, StoreError> {
        (**self).prune_expired(now_ms, max)
    }
    fn prune_pending(&self) -> bool {
        (**self).prune_pending()
    }
    fn len(&self) -> Result<u64, StoreError> {
        (**self).len()
    }
}

/// A bounded in-memory [`NameStore`] (tests, simulation, small servers).
///
/// Names are indexed by expiry (pruning and making room take the earliest first, in O(log n) per
/// name) and, per source, by expiry too (a quota counts only unexpired names).
#[derive(Clone, Debug)]
pub struct MemoryStore {
    capacity: usize,
    names: HashMap<Name, StoredName>,
    by_expiry: BTreeSet<(u64, Name)>,
    /// Per source: how many of its names expire at each instant.
    per_source: HashMap<SourceKey, BTreeMap<u64, u64>>,
}

impl MemoryStore {
    /// A store holding at most `capacity` unexpired names.
    pub fn new(capacity: usize) -> Self {
        MemoryStore {
            capacity,
            names: HashMap::new(),
            by_expiry: BTreeSet::new(),
            per_source: HashMap::new(),
        }
    }

    fn index(&mut self, entry: &StoredName) {
        let expires = entry.record.expires_ms();
        self.by_expiry
            .insert((expires, entry.record.name().clone()));
        let count = self
            .per_source
            .entry(entry.source)
            .or_default()
            .entry(expires)
            .or_insert(0);
        *count = count.saturating_add(1);
    }

    fn unindex(&mut self, entry: &StoredName) {
        let expires = entry.record.expires_ms();
        self.by_expiry
            .remove(&(expires, entry.record.name().clone()));
        if let Some(expiries) = self.per_source.get_mut(&entry.source) {
            if let Some(count) = expiries.get_mut(&expires) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    expiries.remove(&expires);
                }
            }
            if expiries.is_empty() {
                self.per_source.remove(&entry.source);
            }
        }
    }

    fn remove(&mut self, name: &Name) -> bool {
        match self.names.remove(name) {
            Some(old) => {
                self.unindex(&old);
                true
            }
            None => false,
        }
    }

    /// Removes at most `max` names expired at `now_ms`, earliest first; how many.
    fn drop_expired(&mut self, now_ms: u64, max: u64) -> u64 {
        let mut removed = 0u64;
        while removed < max {
            let Some((expires, name)) = self.by_expiry.first().cloned() else {
                break;
            };
            if expires > now_ms {
                break;
            }
            if !self.remove(&name) {
                // An index entry without its name cannot happen; drop it rather than loop.
                self.by_expiry.remove(&(expires, name));
            }
            removed = removed.saturating_add(1);
        }
        removed
    }
}

impl NameStore for MemoryStore {
    fn get(&self, name: &Name) -> Result<Option<StoredName>, StoreError> {
        Ok(self.names.get(name).cloned())
    }

    fn put(&mut self, entry: StoredName, now_ms: u64) -> Result<(), StoreError> {
        let name = entry.record.name().clone();
        if !self.names.contains_key(&name) && self.names.len() >= self.capacity {
            let excess = self
                .names
                .len()
                .saturating_sub(self.capacity)
                .saturating_add(1);
            let excess = u64::try_from(excess).unwrap_or(u64::MAX);
            if self.drop_expired(now_ms, excess.min(RECLAIM_PER_PUT)) == 0 {
                return Err(StoreError::Full);
            }
        }
        self.remove(&name);
        self.index(&entry);
        self.names.insert(name, entry);
        Ok(())
    }

    fn delete(&mut self, name: &Name) -> Result<bool, StoreError> {
        Ok(self.remove(name))
    }

    fn count_for_source(&self, source: SourceKey, now_ms: u64) -> Result<u64, StoreError> {
        Ok(self.per_source.get(&source).map_or(0, |expiries| {
            expiries
                .range((Bound::Excluded(now_ms), Bound::Unbounded))
                .fold(0u64, |sum, (_, n)| sum.saturating_add(*n))
        }))
    }

    fn prune_expired(&mut self, now_ms: u64, max: u64) -> Result<u64, StoreError> {
        Ok(self.drop_expired(now_ms, max))
    }

    fn len(&self) -> Result<u64, StoreError> {
        Ok(u64::try_from(self.names.len()).unwrap_or(u64::MAX))
    }
}

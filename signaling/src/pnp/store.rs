//! Name storage: the [`NameStore`] trait the server machine writes through, and a bounded
//! in-memory implementation.

use core::fmt;
use core::net::IpAddr;
use std::collections::HashMap;

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

/// Where the server keeps names. Synchronous and plain data in, plain data out, so it is easy to
/// implement over SQLite and usable as `Box<dyn NameStore>`.
///
/// The server never relies on the store for expiry: it treats a record whose expiry has passed as
/// absent even if [`NameStore::prune_expired`] has not removed it yet.
pub trait NameStore {
    /// The entry for `name`, expired or not.
    fn get(&self, name: &Name) -> Result<Option<StoredName>, StoreError>;
    /// Inserts or replaces the entry for `entry.record.name()`. Fails with [`StoreError::Full`]
    /// when inserting a new name into a full store.
    fn put(&mut self, entry: StoredName) -> Result<(), StoreError>;
    /// Removes `name`; whether it was there.
    fn delete(&mut self, name: &Name) -> Result<bool, StoreError>;
    /// How many names `source` holds (expired ones not yet pruned included).
    fn count_for_source(&self, source: SourceKey) -> Result<u64, StoreError>;
    /// Removes every entry whose record expires at or before `now_ms` (Unix ms); how many.
    fn prune_expired(&mut self, now_ms: u64) -> Result<u64, StoreError>;
    /// How many entries the store holds.
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
    fn put(&mut self, entry: StoredName) -> Result<(), StoreError> {
        (**self).put(entry)
    }
    fn delete(&mut self, name: &Name) -> Result<bool, StoreError> {
        (**self).delete(name)
    }
    fn count_for_source(&self, source: SourceKey) -> Result<u64, StoreError> {
        (**self).count_for_source(source)
    }
    fn prune_expired(&mut self, now_ms: u64) -> Result<u64, StoreError> {
        (**self).prune_expired(now_ms)
    }
    fn len(&self) -> Result<u64, StoreError> {
        (**self).len()
    }
}

/// A bounded in-memory [`NameStore`] (tests, simulation, small servers).
#[derive(Clone, Debug)]
pub struct MemoryStore {
    capacity: usize,
    names: HashMap<Name, StoredName>,
    per_source: HashMap<SourceKey, u64>,
}

impl MemoryStore {
    /// A store holding at most `capacity` names.
    pub fn new(capacity: usize) -> Self {
        MemoryStore {
            capacity,
            names: HashMap::new(),
            per_source: HashMap::new(),
        }
    }

    fn add_source(&mut self, source: SourceKey) {
        let count = self.per_source.entry(source).or_insert(0);
        *count = count.saturating_add(1);
    }

    fn remove_source(per_source: &mut HashMap<SourceKey, u64>, source: SourceKey) {
        if let Some(count) = per_source.get_mut(&source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_source.remove(&source);
            }
        }
    }
}

impl NameStore for MemoryStore {
    fn get(&self, name: &Name) -> Result<Option<StoredName>, StoreError> {
        Ok(self.names.get(name).cloned())
    }

    fn put(&mut self, entry: StoredName) -> Result<(), StoreError> {
        let name = entry.record.name();
        if !self.names.contains_key(name) && self.names.len() >= self.capacity {
            return Err(StoreError::Full);
        }
        let source = entry.source;
        if let Some(old) = self.names.insert(name.clone(), entry) {
            Self::remove_source(&mut self.per_source, old.source);
        }
        self.add_source(source);
        Ok(())
    }

    fn delete(&mut self, name: &Name) -> Result<bool, StoreError> {
        match self.names.remove(name) {
            Some(old) => {
                Self::remove_source(&mut self.per_source, old.source);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn count_for_source(&self, source: SourceKey) -> Result<u64, StoreError> {
        Ok(self.per_source.get(&source).copied().unwrap_or(0))
    }

    fn prune_expired(&mut self, now_ms: u64) -> Result<u64, StoreError> {
        let mut removed = 0u64;
        let per_source = &mut self.per_source;
        self.names.retain(|_, entry| {
            if entry.record.is_expired(now_ms) {
                Self::remove_source(per_source, entry.source);
                removed = removed.saturating_add(1);
                false
            } else {
                true
            }
        });
        Ok(removed)
    }

    fn len(&self) -> Result<u64, StoreError> {
        Ok(u64::try_from(self.names.len()).unwrap_or(u64::MAX))
    }
}

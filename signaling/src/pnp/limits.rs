//! The server's bounded tables: the per-source request rate limiter and the reply cache that
//! answers retransmitted requests.

use core::time::Duration;
use std::collections::{HashMap, VecDeque};
use std::hash::RandomState;

use hashlink::LinkedHashMap;

use p2pd_proto::Instant;
use sha2::{Digest, Sha256};

use crate::envelope::NONCE_LEN;
use crate::identity::PUBLIC_KEY_LEN;

use super::store::SourceKey;

/// What the rate limiter decided for one request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum RateVerdict {
    /// Within the source's budget.
    Allowed,
    /// Over budget, and the source has not been told in this window: answer `RateLimited` once.
    LimitedTell {
        /// Milliseconds until the window ends.
        retry_after_ms: u64,
    },
    /// Over budget and already told: drop silently.
    Limited,
}

#[derive(Copy, Clone, Debug)]
struct Window {
    start: Instant,
    count: u32,
    told: bool,
}

impl Window {
    fn new(now: Instant) -> Window {
        Window {
            start: now,
            count: 1,
            told: false,
        }
    }
}

/// SipHash with a per-table random key: the keys are chosen by whoever sends datagrams.
type SourceTable = LinkedHashMap<SourceKey, Window, RandomState>;

/// Fixed-window request counting per source, in a table of bounded size that never refuses a new
/// source.
///
/// # Admission does not depend on state a spoofer can fill
///
/// A UDP source address is trivially forged, and the limiter runs before the envelope is opened
/// (it exists to spare the public-key work), so every entry may have been created by an
/// unauthenticated sender that never sees a reply. The table therefore never turns a source away
/// because it is full: a new source always gets a fresh window (its first request is allowed),
/// and a full table makes room by forgetting the entry whose loss costs least. The table is a
/// segmented LRU of two lists, each ordered from least to most recently seen:
///
/// - `once`: sources seen exactly once, which is all a spoofed one-shot source can ever be;
/// - `repeat`: sources seen again (clients in conversation and senders over their budget, the
///   entries limiting is for). A `once` source is promoted on its second request.
///
/// When the table is full a new source takes the place of, in this order: the least recently
/// seen `repeat` entry if its window is over (it limits nothing any more); else the least
/// recently seen `once` entry (its whole state is "one request", forgetting it at worst grants
/// that source one more request); else the least recently seen `repeat` entry. So a flood of
/// one-shot spoofed sources only ever evicts other one-shot entries and stale windows: a sender
/// over its budget stays limited, and a genuine new client is answered on its first try however
/// fast the flood comes. Only a flood that repeats every forged source within a window can push
/// out live `repeat` entries, and then it just resets their windows.
///
/// Every operation is O(1); the table holds at most `capacity` entries (node memory is reused).
#[derive(Clone, Debug)]
pub(crate) struct RateLimiter {
    capacity: usize,
    limit: u32,
    window: Duration,
    once: SourceTable,
    repeat: SourceTable,
    evictions: u64,
}

impl RateLimiter {
    pub(crate) fn new(capacity: usize, limit: u32, window: Duration) -> Self {
        let capacity = capacity.max(1);
        RateLimiter {
            capacity,
            limit,
            window,
            once: LinkedHashMap::with_hasher(RandomState::new()),
            repeat: LinkedHashMap::with_hasher(RandomState::new()),
            evictions: 0,
        }
    }

    /// How many sources the table holds.
    pub(crate) fn len(&self) -> usize {
        self.once.len().saturating_add(self.repeat.len())
    }

    /// How many sources were forgotten to make room for new ones.
    pub(crate) fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Counts one request from `source` at `now` and says whether it is within budget.
    pub(crate) fn check(&mut self, now: Instant, source: SourceKey) -> RateVerdict {
        if let Some(window) = self.repeat.to_back(&source) {
            return Self::count(window, now, self.window, self.limit);
        }
        if let Some(mut window) = self.once.remove(&source) {
            let verdict = Self::count(&mut window, now, self.window, self.limit);
            self.repeat.insert(source, window);
            return verdict;
        }
        if self.limit == 0 {
            return RateVerdict::Limited;
        }
        if self.len() >= self.capacity {
            self.evict(now);
        }
        self.once.insert(source, Window::new(now));
        RateVerdict::Allowed
    }

    fn count(w: &mut Window, now: Instant, window: Duration, limit: u32) -> RateVerdict {
        let end = w.start.saturating_add(window);
        if now >= end {
            *w = Window::new(now);
            return if limit == 0 {
                RateVerdict::Limited
            } else {
                RateVerdict::Allowed
            };
        }
        if w.count < limit {
            w.count = w.count.saturating_add(1);
            return RateVerdict::Allowed;
        }
        if w.told {
            return RateVerdict::Limited;
        }
        w.told = true;
        let left = end.saturating_duration_since(now);
        RateVerdict::LimitedTell {
            retry_after_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Forgets one source (see the type's docs for which).
    fn evict(&mut self, now: Instant) {
        let stale_repeat = self
            .repeat
            .front()
            .is_some_and(|(_, w)| now >= w.start.saturating_add(self.window));
        let evicted = if stale_repeat {
            self.repeat.pop_front()
        } else {
            self.once.pop_front().or_else(|| self.repeat.pop_front())
        };
        if evicted.is_some() {
            self.evictions = self.evictions.saturating_add(1);
        }
    }

    /// Whether `source` is in the `repeat` list (tests).
    #[cfg(test)]
    pub(crate) fn is_repeat(&self, source: &SourceKey) -> bool {
        self.repeat.contains_key(source)
    }
}

type ReplyKey = ([u8; PUBLIC_KEY_LEN], [u8; NONCE_LEN]);

/// The last replies sent, keyed by the request's sender key and envelope nonce, so that a
/// retransmitted request (the very same bytes) gets the very same reply instead of a replay
/// error. Bounded; the oldest entry is evicted first.
#[derive(Clone, Debug)]
pub(crate) struct ReplyCache {
    capacity: usize,
    order: VecDeque<ReplyKey>,
    entries: HashMap<ReplyKey, ([u8; 32], Vec<u8>)>,
}

impl ReplyCache {
    pub(crate) fn new(capacity: usize) -> Self {
        ReplyCache {
            capacity,
            order: VecDeque::new(),
            entries: HashMap::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The reply sent for exactly these request bytes, if still cached.
    pub(crate) fn get(&self, key: &ReplyKey, request: &[u8]) -> Option<&[u8]> {
        let (digest, reply) = self.entries.get(key)?;
        (*digest == <[u8; 32]>::from(Sha256::digest(request))).then_some(reply.as_slice())
    }

    pub(crate) fn insert(&mut self, key: ReplyKey, request: &[u8], reply: Vec<u8>) {
        if self.capacity == 0 {
            return;
        }
        while self.order.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
        let digest = <[u8; 32]>::from(Sha256::digest(request));
        if self.entries.insert(key, (digest, reply)).is_none() {
            self.order.push_back(key);
        }
    }
}

//! The server's bounded tables: the per-source request rate limiter and the reply cache that
//! answers retransmitted requests.

use core::time::Duration;
use std::collections::{HashMap, VecDeque};

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
    /// A new source, and the table is full of live windows: drop.
    TableFull,
}

#[derive(Copy, Clone, Debug)]
struct Window {
    start: Instant,
    count: u32,
    told: bool,
}

/// Fixed-window request counting per source, in a table of bounded size.
#[derive(Clone, Debug)]
pub(crate) struct RateLimiter {
    capacity: usize,
    limit: u32,
    window: Duration,
    table: HashMap<SourceKey, Window>,
    last_sweep: Option<Instant>,
}

impl RateLimiter {
    pub(crate) fn new(capacity: usize, limit: u32, window: Duration) -> Self {
        RateLimiter {
            capacity: capacity.max(1),
            limit,
            window,
            table: HashMap::new(),
            last_sweep: None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn check(&mut self, now: Instant, source: SourceKey) -> RateVerdict {
        let window = self.window;
        if let Some(w) = self.table.get_mut(&source) {
            let end = w.start.saturating_add(window);
            if now >= end {
                *w = Window {
                    start: now,
                    count: 1,
                    told: false,
                };
                return RateVerdict::Allowed;
            }
            if w.count < self.limit {
                w.count = w.count.saturating_add(1);
                return RateVerdict::Allowed;
            }
            if w.told {
                return RateVerdict::Limited;
            }
            w.told = true;
            let left = end.saturating_duration_since(now);
            return RateVerdict::LimitedTell {
                retry_after_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
            };
        }
        if self.table.len() >= self.capacity {
            // Sweep finished windows, at most once per window length so that a flood of new
            // sources cannot make every request scan the table.
            let due = self
                .last_sweep
                .is_none_or(|t| now >= t.saturating_add(window));
            if !due {
                return RateVerdict::TableFull;
            }
            self.last_sweep = Some(now);
            self.table
                .retain(|_, w| now < w.start.saturating_add(window));
            if self.table.len() >= self.capacity {
                return RateVerdict::TableFull;
            }
        }
        if self.limit == 0 {
            return RateVerdict::Limited;
        }
        self.table.insert(
            source,
            Window {
                start: now,
                count: 1,
                told: false,
            },
        );
        RateVerdict::Allowed
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

//! Access links: latency, jitter, loss, duplication and reordering, applied per packet.

use core::time::Duration;

use p2pd_proto::{Instant, Rng};

/// The behaviour of one access link: between a host and the internet, between a NAT box and the
/// internet, or between a host behind a NAT and its NAT box (the LAN).
///
/// Every packet leaving or entering the link's side crosses it once, so a packet between two public
/// hosts crosses the sender's link and then the receiver's. The default is an ideal link: no delay, no
/// loss.
#[derive(Copy, Clone, Debug, Default, PartialEq)]
pub struct LinkConfig {
    /// One-way delay added to every packet.
    pub latency: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` per packet (jitter alone can reorder packets).
    pub jitter: Duration,
    /// Probability (0..=1) that a packet is lost.
    pub loss: f64,
    /// Probability (0..=1) that a packet is delivered twice (the copy gets its own jitter).
    pub duplicate: f64,
    /// Probability (0..=1) that a packet is held back by [`LinkConfig::reorder_delay`], so later
    /// packets overtake it.
    pub reorder: f64,
    /// The extra delay of a reordered packet.
    pub reorder_delay: Duration,
}

impl LinkConfig {
    /// An ideal link: no delay, no loss.
    pub const IDEAL: LinkConfig = LinkConfig {
        latency: Duration::ZERO,
        jitter: Duration::ZERO,
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        reorder_delay: Duration::ZERO,
    };

    /// A link with a fixed one-way latency and nothing else.
    pub fn with_latency(latency: Duration) -> Self {
        LinkConfig {
            latency,
            ..LinkConfig::IDEAL
        }
    }

    /// This link with `jitter`.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// This link with a loss probability.
    pub fn loss(mut self, loss: f64) -> Self {
        self.loss = loss;
        self
    }

    /// This link with a duplication probability.
    pub fn duplicate(mut self, duplicate: f64) -> Self {
        self.duplicate = duplicate;
        self
    }

    /// This link with a reordering probability and the extra delay of a reordered packet.
    pub fn reorder(mut self, reorder: f64, delay: Duration) -> Self {
        self.reorder = reorder;
        self.reorder_delay = delay;
        self
    }

    /// When the copies of a packet entering the link at `now` come out: none (lost), one, or two
    /// (duplicated). Randomness is drawn only for the effects that are enabled.
    pub(crate) fn traverse(&self, rng: &mut Rng, now: Instant) -> [Option<Instant>; 2] {
        if chance(rng, self.loss) {
            return [None, None];
        }
        let first = Some(self.arrival(rng, now));
        let second = chance(rng, self.duplicate).then(|| self.arrival(rng, now));
        [first, second]
    }

    fn arrival(&self, rng: &mut Rng, now: Instant) -> Instant {
        let mut delay = self.latency;
        if !self.jitter.is_zero() {
            let max = u64::try_from(self.jitter.as_nanos()).unwrap_or(u64::MAX);
            delay += Duration::from_nanos(rng.below(max.saturating_add(1)));
        }
        if chance(rng, self.reorder) {
            delay += self.reorder_delay;
        }
        now + delay
    }
}

/// True with probability `p` (never for `p <= 0`, without drawing).
pub(crate) fn chance(rng: &mut Rng, p: f64) -> bool {
    if p <= 0.0 {
        return false;
    }
    // 53 random bits as a float in [0, 1).
    let x = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    x < p
}

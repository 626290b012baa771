//! `p2pd signal listen`'s rejections, counted per reason and reported as summaries: at most one
//! line per [`SUMMARY_EVERY`] however many arrive, and a last one when the command ends. Anyone
//! can publish on a node's topic, so a line per rejected message would let them flood the output.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use p2pd_proto::Instant;
use serde::Serialize;

/// The shortest time between two summary lines.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(5);

/// Rejection counts per reason (`Rejection::label`), since the last summary and in all.
#[derive(Debug, Default)]
pub struct Tally {
    /// Since the last summary.
    recent: BTreeMap<&'static str, u64>,
    /// Since the start.
    total: BTreeMap<&'static str, u64>,
    /// When the last summary was taken.
    last: Option<Instant>,
}

/// One summary line (`--json`: `{"event":"rejected",...}`).
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Always `rejected`.
    pub event: &'static str,
    /// Rejections since the previous summary.
    pub count: u64,
    /// Those per reason.
    pub reasons: BTreeMap<&'static str, u64>,
    /// Rejections since the start.
    pub total: u64,
    /// The last summary, when the command ends (then `reasons` counts everything).
    #[serde(rename = "final")]
    pub last: bool,
}

impl Summary {
    /// The text form: `rejected 3 messages (1 bad_signature, 2 stale); 10 in all`.
    pub fn text(&self) -> String {
        let mut reasons = String::new();
        for (i, (label, n)) in self.reasons.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(reasons, "{sep}{n} {label}");
        }
        let messages = |n: u64| if n == 1 { "message" } else { "messages" };
        if self.last {
            format!(
                "rejected {} {} in all ({reasons})",
                self.total,
                messages(self.total)
            )
        } else {
            format!(
                "rejected {} {} ({reasons}); {} in all",
                self.count,
                messages(self.count),
                self.total
            )
        }
    }
}

impl Tally {
    /// Counts one rejection for `reason`.
    pub fn record(&mut self, reason: &'static str) {
        for map in [&mut self.recent, &mut self.total] {
            let n = map.entry(reason).or_default();
            *n = n.saturating_add(1);
        }
    }

    /// The summary of what was rejected since the last one, if there is anything and the last
    /// one is at least [`SUMMARY_EVERY`] old (the first comes at once).
    pub fn due(&mut self, now: Instant) -> Option<Summary> {
        if self.recent.is_empty()
            || self
                .last
                .is_some_and(|last| now.saturating_duration_since(last) < SUMMARY_EVERY)
        {
            return None;
        }
        self.last = Some(now);
        let reasons = std::mem::take(&mut self.recent);
        Some(Summary {
            event: "rejected",
            count: reasons.values().sum(),
            reasons,
            total: self.total.values().sum(),
            last: false,
        })
    }

    /// The closing summary of every rejection, if there was any.
    pub fn finish(&mut self) -> Option<Summary> {
        if self.total.is_empty() {
            return None;
        }
        self.recent.clear();
        let total = self.total.values().sum();
        Some(Summary {
            event: "rejected",
            count: total,
            reasons: self.total.clone(),
            total,
            last: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_makes_one_line_per_interval() {
        let mut tally = Tally::default();
        let mut lines = Vec::new();
        // 20,000 rejections over 12 s, 600 µs apart.
        for i in 0..20_000u64 {
            tally.record(if i % 4 == 0 { "stale" } else { "bad_signature" });
            let now = Instant::from_nanos(i * 600_000);
            lines.extend(tally.due(now));
        }
        lines.extend(tally.finish());
        // At 0 s, 5 s, 10 s, and the final one.
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[0].count, 1);
        assert_eq!(lines[0].text(), "rejected 1 message (1 stale); 1 in all");
        let periodic: u64 = lines[..3].iter().map(|s| s.count).sum();
        assert!(periodic <= 20_000);
        let last = &lines[3];
        assert!(last.last);
        assert_eq!(last.total, 20_000);
        assert_eq!(last.reasons["stale"], 5_000);
        assert_eq!(last.reasons["bad_signature"], 15_000);
        assert_eq!(
            last.text(),
            "rejected 20000 messages in all (15000 bad_signature, 5000 stale)"
        );
        let json = serde_json::to_string(&lines[1]).unwrap();
        assert!(
            json.starts_with(r#"{"event":"rejected","count":"#),
            "{json}"
        );
        assert!(json.ends_with(r#""final":false}"#), "{json}");
    }

    #[test]
    fn nothing_rejected_nothing_printed() {
        let mut tally = Tally::default();
        assert_eq!(tally.due(Instant::ZERO), None);
        assert_eq!(tally.finish(), None);
        tally.record("stale");
        assert!(tally.due(Instant::ZERO).is_some());
        // Nothing new: no line, even when due.
        assert_eq!(tally.due(Instant::from_millis(60_000)), None);
    }
}

//! Per-rule decision counters with envoyproxy/ratelimit's accounting:
//! `total_hits`, `over_limit`, `near_limit` (past 80% of the limit),
//! `within_limit` and `shadow_mode`. Plain atomics, so recording is a few
//! relaxed adds and the metrics endpoint reads them without locks.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The fraction of a limit past which hits count as near the limit.
pub const NEAR_LIMIT_RATIO: f64 = 0.8;

/// The counters of one rule (or one detailed-metric key).
#[derive(Debug, Default)]
pub struct RuleStats {
    pub total_hits: AtomicU64,
    pub over_limit: AtomicU64,
    pub near_limit: AtomicU64,
    pub within_limit: AtomicU64,
    pub shadow_mode: AtomicU64,
}

/// A point-in-time copy of [`RuleStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub total_hits: u64,
    pub over_limit: u64,
    pub near_limit: u64,
    pub within_limit: u64,
    pub shadow_mode: u64,
}

impl RuleStats {
    /// Records one descriptor's decision: `hits` against a limit of `limit`
    /// that had `used_before` counted, and whether it was over. Hits that
    /// cross a threshold are split between the buckets they fall into, as
    /// the reference implementation does.
    pub fn record(&self, limit: u64, used_before: u64, hits: u64, over: bool, shadow: bool) {
        if hits == 0 {
            return;
        }
        self.total_hits.fetch_add(hits, Relaxed);
        let after = used_before.saturating_add(hits);
        let near = near_threshold(limit);
        if over {
            if shadow {
                self.shadow_mode.fetch_add(hits, Relaxed);
            }
            if used_before >= limit {
                self.over_limit.fetch_add(hits, Relaxed);
            } else {
                self.over_limit
                    .fetch_add(after.saturating_sub(limit), Relaxed);
                self.near_limit
                    .fetch_add(limit.saturating_sub(near.max(used_before)), Relaxed);
            }
        } else {
            if after > near {
                let n = if used_before >= near {
                    hits
                } else {
                    after - near
                };
                self.near_limit.fetch_add(n, Relaxed);
            }
            self.within_limit.fetch_add(hits, Relaxed);
        }
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            total_hits: self.total_hits.load(Relaxed),
            over_limit: self.over_limit.load(Relaxed),
            near_limit: self.near_limit.load(Relaxed),
            within_limit: self.within_limit.load(Relaxed),
            shadow_mode: self.shadow_mode.load(Relaxed),
        }
    }
}

fn near_threshold(limit: u64) -> u64 {
    // floor(limit * 0.8) without floating point: exact for every u64.
    limit / 5 * 4 + (limit % 5) * 4 / 5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_threshold_is_floor_of_80_percent() {
        for l in 0..1000u64 {
            assert_eq!(
                near_threshold(l),
                (l as f64 * NEAR_LIMIT_RATIO).floor() as u64
            );
        }
    }

    #[test]
    fn accounting_splits_hits_across_thresholds() {
        let s = RuleStats::default();
        // limit 10, near threshold 8: hits 1..=8 within, 9 and 10 near, 11 over.
        for before in 0..10 {
            s.record(10, before, 1, false, false);
        }
        s.record(10, 10, 1, true, false);
        let snap = s.snapshot();
        assert_eq!(snap.total_hits, 11);
        assert_eq!(snap.within_limit, 10);
        assert_eq!(snap.near_limit, 2);
        assert_eq!(snap.over_limit, 1);

        // One big request from 7 to 12: 1 near (8..9?) split as the reference does.
        let s = RuleStats::default();
        s.record(10, 7, 5, true, true);
        let snap = s.snapshot();
        assert_eq!(snap.over_limit, 2);
        assert_eq!(snap.near_limit, 2);
        assert_eq!(snap.shadow_mode, 5);
        assert_eq!(snap.within_limit, 0);
    }
}

/// Rule statistics by metric key, kept across reloads so that a rule that
/// survives a reload keeps counting where it was.
#[derive(Debug, Default)]
pub struct StatsRegistry {
    map: parking_lot::Mutex<std::collections::HashMap<Box<str>, std::sync::Arc<RuleStats>>>,
}

impl StatsRegistry {
    /// The stats for `key`, created on first use.
    pub fn get_or_create(&self, key: &str) -> std::sync::Arc<RuleStats> {
        self.map.lock().entry(key.into()).or_default().clone()
    }

    /// Forgets every key not in `keep` (rules removed by a reload).
    pub fn retain(&self, keep: &std::collections::HashSet<&str>) {
        self.map.lock().retain(|k, _| keep.contains(&**k));
    }
}

//! Usage accounting: admitted and limited requests per key per UTC day,
//! summed in memory by the resolver ([`UsageRecorder`]) and written in
//! batches by the [`UsageFlusher`] (and once more on shutdown), plus each
//! key's last use, written at most once a minute per key.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;

use super::guard::AbuseGuard;
use super::model::Millis;
use super::repo::{RepoError, Repository, UsageDelta};
use super::resolver::QueryStats;
use super::{KeyError, now_ms};
use crate::core::clock::SystemClock;
use crate::telemetry::throttle::LogThrottle;

const DAY_MS: i64 = 86_400_000;
/// `last_used_at` is written at most this often per key.
const LAST_USED_EVERY_MS: i64 = 60_000;

#[derive(Debug, Default)]
struct Pending {
    /// (key id, day number since the epoch) -> (admitted, limited).
    counts: HashMap<(String, i64), (u64, u64)>,
    /// Key id -> latest use not yet written.
    last_used: HashMap<String, Millis>,
    /// When the oldest count in `counts` was recorded.
    oldest: Option<Millis>,
}

/// Counts waiting to be written.
#[derive(Debug, Default)]
pub struct UsageRecorder {
    pending: Mutex<Pending>,
    /// Key id -> when its `last_used_at` was last written.
    written: Mutex<HashMap<String, Millis>>,
    /// What the flusher did, for `/metrics`.
    pub flushes: FlushStats,
}

/// The flusher's record, for `/metrics`.
#[derive(Debug, Default)]
pub struct FlushStats {
    /// Flushes that wrote their batch.
    pub ok: AtomicU64,
    /// Flushes whose write failed (the batch stayed pending).
    pub failed: AtomicU64,
    /// The write's latency and errors (operation `usage_flush`).
    pub queries: QueryStats,
}

/// A batch taken for writing.
#[derive(Debug, Default)]
pub struct Batch {
    pub deltas: Vec<UsageDelta>,
    pub last_used: Vec<(String, Millis)>,
    /// When the oldest of `deltas` was recorded.
    pub oldest: Option<Millis>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.deltas.is_empty() && self.last_used.is_empty()
    }
}

impl UsageRecorder {
    /// Counts one request of `key_id` at `now`.
    pub fn record(&self, key_id: &str, now: Millis, admitted: bool) {
        let day = now.div_euclid(DAY_MS);
        let mut p = self.pending.lock();
        p.oldest.get_or_insert(now);
        let e = match p.counts.get_mut(&(key_id.to_string(), day)) {
            Some(e) => e,
            None => p.counts.entry((key_id.to_string(), day)).or_default(),
        };
        if admitted {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
        match p.last_used.get_mut(key_id) {
            Some(t) => *t = (*t).max(now),
            None => {
                p.last_used.insert(key_id.to_string(), now);
            }
        }
    }

    /// Takes everything pending; `last_used_at` only for keys not written
    /// in the last minute, unless `all` (shutdown).
    pub fn take(&self, now: Millis, all: bool) -> Batch {
        let mut p = self.pending.lock();
        let counts = std::mem::take(&mut p.counts);
        let oldest = p.oldest.take();
        let mut written = self.written.lock();
        let mut last_used = Vec::new();
        p.last_used.retain(|id, at| {
            let due = all
                || written
                    .get(id)
                    .is_none_or(|w| now - *w >= LAST_USED_EVERY_MS);
            if due {
                last_used.push((id.clone(), *at));
                written.insert(id.clone(), now);
            }
            !due
        });
        // Forget write times old enough not to matter.
        written.retain(|_, w| now - *w < LAST_USED_EVERY_MS);
        drop(written);
        drop(p);
        let deltas = counts
            .into_iter()
            .map(|((key_id, day), (admitted, limited))| UsageDelta {
                key_id,
                day: day_string(day),
                admitted,
                limited,
            })
            .collect();
        Batch {
            deltas,
            last_used,
            oldest,
        }
    }

    /// How long the oldest count not yet written has waited, in
    /// milliseconds at `now` (0 when nothing waits).
    pub fn lag_ms(&self, now: Millis) -> Millis {
        self.pending.lock().oldest.map_or(0, |o| (now - o).max(0))
    }

    /// Puts back a batch that could not be written, so nothing is lost.
    pub fn restore(&self, batch: Batch) {
        let mut p = self.pending.lock();
        p.oldest = match (p.oldest, batch.oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for d in batch.deltas {
            let Some(day) = day_number(&d.day) else {
                continue;
            };
            let e = p.counts.entry((d.key_id, day)).or_default();
            e.0 += d.admitted;
            e.1 += d.limited;
        }
        for (id, at) in batch.last_used {
            let e = p.last_used.entry(id).or_insert(at);
            *e = (*e).max(at);
        }
    }
}

/// Writes what the recorder holds, periodically and at shutdown.
#[derive(Debug)]
pub struct UsageFlusher {
    repo: Repository,
    usage: Arc<UsageRecorder>,
    /// Its expired counters are swept on the same tick.
    guard: Arc<AbuseGuard>,
    every: Duration,
    clock: SystemClock,
}

impl UsageFlusher {
    pub fn new(
        repo: Repository,
        usage: Arc<UsageRecorder>,
        guard: Arc<AbuseGuard>,
        every: Duration,
    ) -> UsageFlusher {
        UsageFlusher {
            repo,
            usage,
            guard,
            every,
            clock: SystemClock::default(),
        }
    }

    /// Writes pending usage; on failure it stays pending.
    ///
    /// # Errors
    /// [`KeyError::Unavailable`] when the key store cannot be written.
    pub async fn flush(&self, all: bool) -> Result<usize, KeyError> {
        let batch = self.usage.take(now_ms(&self.clock), all);
        if batch.is_empty() {
            return Ok(0);
        }
        let n = batch.deltas.len();
        let started = std::time::Instant::now();
        let written = self.repo.add_usage(&batch.deltas, &batch.last_used).await;
        let stats = &self.usage.flushes;
        stats.queries.record(
            started.elapsed(),
            written.as_ref().err().map(RepoError::kind),
        );
        if let Err(e) = written {
            stats.failed.fetch_add(1, Relaxed);
            self.usage.restore(batch);
            return Err(e.into());
        }
        stats.ok.fetch_add(1, Relaxed);
        Ok(n)
    }

    /// Flushes usage every `every` and sweeps the guard's counters, until
    /// `stop` resolves; then flushes everything once more.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = tick.tick() => {
                    if let Err(e) = self.flush(false).await {
                        static FAILED: LogThrottle = LogThrottle::new();
                        if let Some(r) = FAILED.admit() {
                            tracing::warn!(error = %e, occurrences = r.count, repeated = %r, "usage flush failed; kept for the next one");
                        }
                    }
                    self.guard.sweep();
                }
            }
        }
        match self.flush(true).await {
            Ok(n) => tracing::info!(rows = n, "usage flushed at shutdown"),
            Err(e) => tracing::error!(error = %e, "usage could not be flushed at shutdown"),
        }
    }
}

/// `YYYY-MM-DD` of a day number since the epoch.
pub fn day_string(day: i64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(day.saturating_mul(86_400))
        .map_or(time::Date::MIN, time::OffsetDateTime::date);
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

fn day_number(s: &str) -> Option<i64> {
    let date =
        time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).ok()?;
    let midnight = date.midnight().assume_utc().unix_timestamp();
    Some(midnight.div_euclid(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_key_and_day_and_restores() {
        let r = UsageRecorder::default();
        let t = 1_763_800_000_000; // 2025-11-22
        r.record("a", t, true);
        r.record("a", t + 1, false);
        r.record("a", t + DAY_MS, true);
        r.record("b", t, true);
        let mut b = r.take(t + DAY_MS, false);
        b.deltas
            .sort_by(|x, y| (&x.key_id, &x.day).cmp(&(&y.key_id, &y.day)));
        assert_eq!(b.deltas.len(), 3);
        assert_eq!(b.deltas[0].day, "2025-11-22");
        assert_eq!((b.deltas[0].admitted, b.deltas[0].limited), (1, 1));
        assert_eq!(b.deltas[1].day, "2025-11-23");
        assert_eq!(b.last_used.len(), 2);
        r.restore(b);
        let again = r.take(t + DAY_MS, true);
        let total: u64 = again.deltas.iter().map(|d| d.admitted + d.limited).sum();
        assert_eq!(total, 4);
    }

    #[test]
    fn lag_is_the_oldest_unwritten_count() {
        let r = UsageRecorder::default();
        let t = 1_000_000_000_000;
        assert_eq!(r.lag_ms(t), 0);
        r.record("a", t, true);
        r.record("b", t + 500, true);
        assert_eq!(r.lag_ms(t + 2_000), 2_000);
        let b = r.take(t + 2_000, false);
        assert_eq!(r.lag_ms(t + 2_000), 0);
        r.record("a", t + 3_000, true);
        // A failed write puts its counts back: the oldest is theirs again.
        r.restore(b);
        assert_eq!(r.lag_ms(t + 4_000), 4_000);
        let _ = r.take(t + 4_000, true);
        assert_eq!(r.lag_ms(t + 5_000), 0);
    }

    #[test]
    fn last_used_at_most_once_a_minute() {
        let r = UsageRecorder::default();
        let t = 1_000_000_000_000;
        r.record("a", t, true);
        assert_eq!(r.take(t, false).last_used.len(), 1);
        r.record("a", t + 1_000, true);
        assert!(r.take(t + 1_000, false).last_used.is_empty());
        assert_eq!(
            r.take(t + 61_000, false).last_used,
            vec![("a".into(), t + 1_000)]
        );
    }

    #[test]
    fn days_round_trip() {
        for d in [0, 1, 20_000, 20_414] {
            assert_eq!(day_number(&day_string(d)), Some(d));
        }
    }
}

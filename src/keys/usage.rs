//! Usage accounting: admitted and limited requests per key per UTC day,
//! summed in memory by the resolver ([`UsageRecorder`]) and written in
//! batches by the [`UsageFlusher`] (and once more on shutdown), plus each
//! key's last use, written at most once a minute per key.
//!
//! Written exactly once, across failures. Every batch taken for writing
//! gets a fresh flush id (a random UUID), which the repository records in
//! the same transaction as the batch's counts; a batch whose id is already
//! recorded is skipped. A write that fails may still have committed (the
//! connection dropped at COMMIT, the answer was lost), so a failed batch is
//! *held* exactly as it was, id included, and never merged with counts
//! recorded after it: retried under its id, it is either written now or
//! found written before, and counted once either way. The next flush
//! retries held batches first and takes new counts only once they are
//! through, so at most one batch is held while the database is down, and
//! new counts keep summing in memory meanwhile. The flusher prunes ids
//! older than [`FLUSH_ID_RETENTION_MS`] (hourly): a batch held for longer
//! than that could count twice.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;

use super::guard::AbuseGuard;
use super::model::Millis;
use super::repo::{Applied, RepoError, Repository, UsageDelta};
use super::resolver::QueryStats;
use super::{KeyError, now_ms};
use crate::core::clock::SystemClock;
use crate::telemetry::throttle::LogThrottle;

const DAY_MS: i64 = 86_400_000;
/// `last_used_at` is written at most this often per key.
const LAST_USED_EVERY_MS: i64 = 60_000;
/// Applied flush ids are kept this long (and pruned hourly).
pub const FLUSH_ID_RETENTION_MS: i64 = DAY_MS;
const PRUNE_EVERY_MS: i64 = 3_600_000;

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
    /// Batches whose write failed, oldest first, each kept with its flush
    /// id for the retry.
    held: Mutex<VecDeque<Batch>>,
    /// When the oldest count of the batch being written was recorded: it
    /// still counts in the lag (a write that hangs is not "no lag").
    writing: Mutex<Option<Millis>>,
    /// Key id -> when its `last_used_at` was last written.
    written: Mutex<HashMap<String, Millis>>,
    /// What the flusher did, for `/metrics`.
    pub flushes: FlushStats,
}

/// The flusher's record, for `/metrics`.
#[derive(Debug, Default)]
pub struct FlushStats {
    /// Batch writes that succeeded (a retried batch found written included).
    pub ok: AtomicU64,
    /// Batch writes that failed (the batch is held for the next flush).
    pub failed: AtomicU64,
    /// The write's latency and errors (operation `usage_flush`).
    pub queries: QueryStats,
}

/// A batch taken for writing.
#[derive(Debug)]
pub struct Batch {
    /// Recorded with the batch's counts: a retry of a batch already
    /// written is skipped.
    pub id: String,
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
            id: uuid::Uuid::new_v4().to_string(),
            deltas,
            last_used,
            oldest,
        }
    }

    /// How long the oldest count not yet written (pending, held or being
    /// written) has waited, in milliseconds at `now` (0 when nothing
    /// waits).
    pub fn lag_ms(&self, now: Millis) -> Millis {
        let pending = self.pending.lock().oldest;
        let held = self.held.lock().iter().filter_map(|b| b.oldest).min();
        let writing = *self.writing.lock();
        [pending, held, writing]
            .into_iter()
            .flatten()
            .min()
            .map_or(0, |o| (now - o).max(0))
    }

    /// Holds a batch that could not be written, id and all, to be retried
    /// before anything newer.
    pub fn hold(&self, batch: Batch) {
        self.held.lock().push_front(batch);
    }

    /// The oldest held batch, if any.
    pub fn take_held(&self) -> Option<Batch> {
        self.held.lock().pop_front()
    }

    /// What is not written yet: (rows, requests), pending and held.
    pub fn unwritten(&self) -> (usize, u64) {
        let p = self.pending.lock();
        let mut rows = p.counts.len();
        let mut requests: u64 = p.counts.values().map(|(a, l)| a + l).sum();
        drop(p);
        for b in self.held.lock().iter() {
            rows += b.deltas.len();
            requests += b.deltas.iter().map(|d| d.admitted + d.limited).sum::<u64>();
        }
        (rows, requests)
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
    /// When applied flush ids were last pruned.
    pruned_at: AtomicI64,
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
            pruned_at: AtomicI64::new(0),
        }
    }

    /// Writes held batches, then pending usage as a new batch; returns
    /// the rows written. A batch that fails is held, and newer counts stay
    /// pending.
    ///
    /// # Errors
    /// [`KeyError::Unavailable`] when the key store cannot be written.
    pub async fn flush(&self, all: bool) -> Result<usize, KeyError> {
        let now = now_ms(&self.clock);
        let mut rows = 0;
        while let Some(held) = self.usage.take_held() {
            rows += self.write(held, now).await?;
        }
        let batch = self.usage.take(now, all);
        if !batch.is_empty() {
            rows += self.write(batch, now).await?;
        }
        Ok(rows)
    }

    /// Writes one batch under its flush id; holds it when that fails.
    async fn write(&self, batch: Batch, now: Millis) -> Result<usize, KeyError> {
        let started = std::time::Instant::now();
        *self.usage.writing.lock() = batch.oldest;
        let written = self
            .repo
            .add_usage(&batch.id, now, &batch.deltas, &batch.last_used)
            .await;
        let stats = &self.usage.flushes;
        stats.queries.record(
            started.elapsed(),
            written.as_ref().err().map(RepoError::kind),
        );
        let rows = batch.deltas.len();
        let outcome = match written {
            Ok(Applied::Written) => {
                stats.ok.fetch_add(1, Relaxed);
                Ok(rows)
            }
            Ok(Applied::AlreadyApplied) => {
                stats.ok.fetch_add(1, Relaxed);
                tracing::info!(
                    flush_id = %batch.id,
                    rows,
                    "usage batch had been written already (its commit's answer was lost); not counted again"
                );
                Ok(0)
            }
            Err(e) => {
                stats.failed.fetch_add(1, Relaxed);
                // Held before `writing` is cleared: the lag never dips.
                self.usage.hold(batch);
                Err(e.into())
            }
        };
        *self.usage.writing.lock() = None;
        outcome
    }

    /// Forgets applied flush ids older than [`FLUSH_ID_RETENTION_MS`], at
    /// most once every hour.
    async fn prune(&self) {
        let now = now_ms(&self.clock);
        if now - self.pruned_at.load(Relaxed) < PRUNE_EVERY_MS {
            return;
        }
        self.pruned_at.store(now, Relaxed);
        match self.repo.prune_flushes(now - FLUSH_ID_RETENTION_MS).await {
            Ok(n) => tracing::debug!(pruned = n, "old usage flush ids pruned"),
            Err(e) => {
                tracing::warn!(error = %e, "old usage flush ids could not be pruned; next try in an hour");
            }
        }
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
                    match self.flush(false).await {
                        Ok(_) => self.prune().await,
                        Err(e) => {
                            static FAILED: LogThrottle = LogThrottle::new();
                            if let Some(r) = FAILED.admit() {
                                tracing::warn!(error = %e, occurrences = r.count, repeated = %r, "usage flush failed; kept for the next one");
                            }
                        }
                    }
                    self.guard.sweep();
                }
            }
        }
        match self.flush(true).await {
            Ok(n) => tracing::info!(rows = n, "usage flushed at shutdown"),
            Err(e) => {
                let (rows, requests) = self.usage.unwritten();
                tracing::error!(error = %e, rows, requests, "usage could not be flushed at shutdown; these counts are lost");
            }
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

/// The day number of a `YYYY-MM-DD` ([`day_string`]'s inverse, to test it).
#[cfg(test)]
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
    fn counts_per_key_and_day_and_holds() {
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
        let id = b.id.clone();
        r.hold(b);
        // Counts recorded meanwhile are not merged into the held batch: it
        // comes back as it was, under its id, and they come in a new one.
        r.record("a", t + DAY_MS, true);
        assert_eq!(r.unwritten(), (4, 5));
        let held = r.take_held().unwrap();
        assert_eq!(held.id, id);
        let total: u64 = held.deltas.iter().map(|d| d.admitted + d.limited).sum();
        assert_eq!(total, 4);
        assert!(r.take_held().is_none());
        let newer = r.take(t + DAY_MS, true);
        assert_ne!(newer.id, id);
        assert_eq!(newer.deltas.len(), 1);
        assert_eq!((newer.deltas[0].admitted, newer.deltas[0].limited), (1, 0));
        assert_eq!(r.unwritten(), (0, 0));
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
        // A failed write holds its batch: the oldest count is its again.
        r.hold(b);
        assert_eq!(r.lag_ms(t + 4_000), 4_000);
        let _ = r.take_held();
        assert_eq!(r.lag_ms(t + 4_000), 1_000);
        let _ = r.take(t + 4_000, true);
        assert_eq!(r.lag_ms(t + 5_000), 0);
        // A batch being written still counts.
        *r.writing.lock() = Some(t);
        assert_eq!(r.lag_ms(t + 5_000), 5_000);
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

//! A shared store (Redis) made safe to depend on: a circuit breaker, a
//! configured answer while the store is unreachable, and a local cache of
//! keys known to be over their limit.
//!
//! * **Failure mode.** When the primary store fails (error or timeout) or
//!   the breaker is open, checks are answered per [`FailureMode`]: `Allow`
//!   admits, `Deny` rejects, `Local` decides on an in-memory store with
//!   every limit divided by the number of replicas (`--local-fallback-divisor`).
//!   A request is always answered; it never waits longer than the primary's
//!   own timeout.
//! * **Circuit breaker.** After `failure_threshold` consecutive failures the
//!   breaker opens: the primary is not called for `open_for`; then one probe
//!   request goes through (half-open); its success closes the breaker, its
//!   failure opens it again for twice as long (up to `max_open_for`).
//! * **Over-limit cache.** A fixed-window denial where even one more hit is
//!   over the limit stays a denial until the window ends, so it is answered
//!   from memory until then without a round trip. Only denials are cached;
//!   the cache is bounded; entries are keyed by the limits' values too, so a
//!   limit changed by a reload never hits a stale entry. A cached denial does
//!   not add its hits to the shared counter.
//!
//! May depend on: `core`, the `store` trait and the memory store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use smallvec::SmallVec;

use super::{Check, CounterStore, MemoryStore, Outcomes, StoreError, StoreStats};
use crate::core::algorithm::{Outcome, Verdict};
use crate::core::limit::{Algorithm, LimitSpec};

/// What to answer while the shared store is unreachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailureMode {
    /// Admit every request (fail open).
    #[default]
    Allow,
    /// Reject every request (fail closed).
    Deny,
    /// Decide locally, each limit divided by the number of replicas.
    Local,
}

/// Breaker and cache settings.
#[derive(Clone, Copy, Debug)]
pub struct ResilienceOptions {
    pub mode: FailureMode,
    /// Replicas sharing the limits; local fallback limits are divided by it.
    pub local_divisor: u32,
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// First open period; doubles on each failed probe up to `max_open_for`.
    pub open_for: Duration,
    pub max_open_for: Duration,
    /// Keys held in the over-limit cache (0 disables it).
    pub over_limit_cache_size: u64,
}

impl Default for ResilienceOptions {
    fn default() -> Self {
        ResilienceOptions {
            mode: FailureMode::Allow,
            local_divisor: 1,
            failure_threshold: 3,
            open_for: Duration::from_millis(500),
            max_open_for: Duration::from_secs(10),
            over_limit_cache_size: 100_000,
        }
    }
}

/// The breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
struct Breaker {
    failures: AtomicU32,
    /// Set while open or probing.
    tripped: AtomicBool,
    /// A probe is in flight.
    probing: AtomicBool,
    /// (when the current open period ends, its length)
    open: Mutex<(Instant, Duration)>,
    threshold: u32,
    first: Duration,
    max: Duration,
}

impl Breaker {
    fn new(o: &ResilienceOptions) -> Breaker {
        Breaker {
            failures: AtomicU32::new(0),
            tripped: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            open: Mutex::new((Instant::now(), o.open_for)),
            threshold: o.failure_threshold.max(1),
            first: o.open_for,
            max: o.max_open_for.max(o.open_for),
        }
    }

    /// Whether this call may go to the primary; `true` with `probe` set when
    /// it is the half-open probe.
    fn admit(&self) -> (bool, bool) {
        if !self.tripped.load(Relaxed) {
            return (true, false);
        }
        let until = self.open.lock().0;
        if Instant::now() < until {
            return (false, false);
        }
        let won = self
            .probing
            .compare_exchange(false, true, Relaxed, Relaxed)
            .is_ok();
        (won, won)
    }

    fn success(&self, probe: bool) {
        self.failures.store(0, Relaxed);
        if probe || self.tripped.load(Relaxed) {
            if self.tripped.swap(false, Relaxed) {
                tracing::info!("counter store reachable again; circuit breaker closed");
            }
            *self.open.lock() = (Instant::now(), self.first);
            self.probing.store(false, Relaxed);
        }
    }

    fn failure(&self, probe: bool) {
        let n = self.failures.fetch_add(1, Relaxed) + 1;
        if probe {
            let mut open = self.open.lock();
            let next = (open.1 * 2).min(self.max);
            *open = (Instant::now() + next, next);
            self.probing.store(false, Relaxed);
        } else if n >= self.threshold && !self.tripped.swap(true, Relaxed) {
            *self.open.lock() = (Instant::now() + self.first, self.first);
            tracing::warn!(
                failures = n,
                open_for = ?self.first,
                "counter store failing; circuit breaker open"
            );
        }
    }

    fn state(&self) -> BreakerState {
        match (self.tripped.load(Relaxed), self.probing.load(Relaxed)) {
            (false, _) => BreakerState::Closed,
            (true, true) => BreakerState::HalfOpen,
            (true, false) => BreakerState::Open,
        }
    }
}

/// Releases an unfinished half-open probe.
struct ProbeGuard<'a> {
    breaker: &'a Breaker,
    armed: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.breaker.probing.store(false, Relaxed);
        }
    }
}

/// Counters about failure handling, for `/metrics`.
#[derive(Debug, Default)]
struct Counters {
    /// Checks answered by the failure mode.
    degraded: AtomicU64,
    /// Checks answered from the over-limit cache.
    cached_denials: AtomicU64,
    /// Calls to the primary that failed.
    failures: AtomicU64,
}

/// A primary store wrapped with a breaker, a failure mode and an
/// over-limit cache; see the module docs.
#[derive(Debug)]
pub struct Resilient<P> {
    primary: P,
    local: MemoryStore,
    options: ResilienceOptions,
    breaker: Breaker,
    /// Over-limit cache: key → when the denial ends.
    denials: Option<moka::sync::Cache<Box<[u8]>, Instant>>,
    counters: Counters,
}

/// What [`Resilient::health`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    pub breaker: BreakerState,
    pub mode: FailureMode,
    /// The shared store reports itself connected (checked even when no
    /// traffic is flowing to trip the breaker).
    pub connected: bool,
}

impl Health {
    /// Ready to serve: the shared store answers, or the local fallback
    /// stands in for it.
    pub fn ready(&self) -> bool {
        !self.degraded() || self.mode == FailureMode::Local
    }

    /// Serving, but not from the shared store.
    pub fn degraded(&self) -> bool {
        self.breaker != BreakerState::Closed || !self.connected
    }
}

impl<P: CounterStore> Resilient<P> {
    pub fn new(primary: P, local: MemoryStore, options: ResilienceOptions) -> Resilient<P> {
        let denials = (options.over_limit_cache_size > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(options.over_limit_cache_size)
                .build()
        });
        Resilient {
            primary,
            local,
            breaker: Breaker::new(&options),
            options,
            denials,
            counters: Counters::default(),
        }
    }

    pub fn primary(&self) -> &P {
        &self.primary
    }

    /// The local store behind `FailureMode::Local` (swept by the service).
    pub fn local(&self) -> &MemoryStore {
        &self.local
    }

    pub fn health(&self) -> Health {
        Health {
            breaker: self.breaker.state(),
            mode: self.options.mode,
            connected: self.primary.health().ready,
        }
    }

    /// Checks answered by the failure mode, from the cache, and failed
    /// calls to the primary.
    pub fn failure_counters(&self) -> (u64, u64, u64) {
        (
            self.counters.degraded.load(Relaxed),
            self.counters.cached_denials.load(Relaxed),
            self.counters.failures.load(Relaxed),
        )
    }

    async fn degrade(&self, checks: &[Check<'_>]) -> Result<Outcomes, StoreError> {
        self.counters
            .degraded
            .fetch_add(checks.len() as u64, Relaxed);
        match self.options.mode {
            FailureMode::Allow => Ok(checks.iter().map(|c| fixed_answer(c, true)).collect()),
            FailureMode::Deny => Ok(checks.iter().map(|c| fixed_answer(c, false)).collect()),
            FailureMode::Local => {
                let divisor = self.options.local_divisor.max(1);
                let divided: SmallVec<[SmallVec<[LimitSpec; 2]>; 4]> = checks
                    .iter()
                    .map(|c| c.limits.iter().map(|l| divide(l, divisor)).collect())
                    .collect();
                let local: SmallVec<[Check<'_>; 4]> = checks
                    .iter()
                    .zip(&divided)
                    .map(|(c, limits)| Check { limits, ..*c })
                    .collect();
                self.local.check(&local).await
            }
        }
    }
}

/// A limit divided among `divisor` replicas, never below 1 request (a
/// configured 0 stays 0).
fn divide(l: &LimitSpec, divisor: u32) -> LimitSpec {
    let part = |n: u32| if n == 0 { 0 } else { (n / divisor).max(1) };
    LimitSpec {
        requests_per_unit: part(l.requests_per_unit),
        burst: part(l.burst),
        ..*l
    }
}

/// Admit or reject without counting.
fn fixed_answer(c: &Check<'_>, admit: bool) -> Outcome {
    Outcome {
        admitted: admit,
        verdicts: c
            .limits
            .iter()
            .map(|l| Verdict {
                admitted: admit,
                used_before: 0,
                remaining: if admit {
                    u64::from(l.requests_per_unit).saturating_sub(c.hits)
                } else {
                    0
                },
                reset_ns: l.window_ns(),
            })
            .collect(),
    }
}

/// The over-limit cache key: the counter key plus every limit's values.
fn cache_key(c: &Check<'_>) -> Box<[u8]> {
    let mut k = Vec::with_capacity(c.key.len() + 40 * c.limits.len());
    k.extend_from_slice(c.key);
    for l in c.limits {
        k.extend_from_slice(&l.slot.to_le_bytes());
        k.extend_from_slice(&l.requests_per_unit.to_le_bytes());
        k.extend_from_slice(&l.burst.to_le_bytes());
        k.extend_from_slice(&l.window_ns.to_le_bytes());
        k.extend_from_slice(&l.offset_ns.to_le_bytes());
        k.push(l.unit.proto_number().to_le_bytes()[0]);
        k.push(l.algorithm as u8);
    }
    k.into()
}

/// If this outcome is a denial that any further hit would also get until
/// the end of a fixed window, how long it lasts.
fn cacheable_denial(c: &Check<'_>, o: &Outcome) -> Option<Duration> {
    if o.admitted {
        return None;
    }
    c.limits
        .iter()
        .zip(&o.verdicts)
        .filter(|(l, v)| {
            l.algorithm == Algorithm::FixedWindow
                && !v.admitted
                && v.used_before >= u64::from(l.requests_per_unit)
        })
        .map(|(_, v)| Duration::from_nanos(v.reset_ns))
        .max()
}

/// The answer for a cached denial.
fn cached_answer(c: &Check<'_>, until: Instant, now: Instant) -> Outcome {
    let reset = u64::try_from(until.saturating_duration_since(now).as_nanos()).unwrap_or(u64::MAX);
    Outcome {
        admitted: false,
        verdicts: c
            .limits
            .iter()
            .map(|l| Verdict {
                admitted: false,
                used_before: u64::from(l.requests_per_unit),
                remaining: 0,
                reset_ns: reset.max(1),
            })
            .collect(),
    }
}

impl<P: CounterStore> CounterStore for Resilient<P> {
    async fn check(&self, checks: &[Check<'_>]) -> Result<Outcomes, StoreError> {
        let now = Instant::now();
        // Answer what the over-limit cache knows; send the rest.
        let mut answers: SmallVec<[Option<Outcome>; 4]> = SmallVec::new();
        let mut cache_keys: SmallVec<[Option<Box<[u8]>>; 4]> = SmallVec::new();
        if let Some(denials) = &self.denials {
            for c in checks {
                let key = cache_key(c);
                let hit = denials.get(&key).filter(|until| *until > now);
                answers.push(hit.map(|until| {
                    self.counters.cached_denials.fetch_add(1, Relaxed);
                    cached_answer(c, until, now)
                }));
                cache_keys.push(Some(key));
            }
        } else {
            answers.extend(checks.iter().map(|_| None));
            cache_keys.extend(checks.iter().map(|_| None));
        }
        let pending: SmallVec<[Check<'_>; 4]> = checks
            .iter()
            .zip(&answers)
            .filter(|(_, a)| a.is_none())
            .map(|(c, _)| *c)
            .collect();
        if pending.is_empty() {
            return Ok(answers.into_iter().flatten().collect());
        }

        let (go, probe) = self.breaker.admit();
        let fresh = if go {
            // If this future is dropped mid-call (the caller went away), the
            // guard hands the probe back so the breaker cannot stay stuck.
            let mut guard = ProbeGuard {
                breaker: &self.breaker,
                armed: probe,
            };
            let result = self.primary.check(&pending).await;
            guard.armed = false;
            match result {
                Ok(o) if o.len() == pending.len() => {
                    self.breaker.success(probe);
                    Some(o)
                }
                Ok(_) => {
                    self.breaker.failure(probe);
                    self.counters.failures.fetch_add(1, Relaxed);
                    None
                }
                Err(e) => {
                    self.breaker.failure(probe);
                    self.counters.failures.fetch_add(1, Relaxed);
                    tracing::debug!(error = %e, "counter store call failed; using the failure mode");
                    None
                }
            }
        } else {
            None
        };
        let fresh = match fresh {
            Some(o) => {
                if let Some(denials) = &self.denials {
                    for ((c, o), key) in pending.iter().zip(&o).zip(
                        cache_keys
                            .iter()
                            .zip(&answers)
                            .filter(|(_, a)| a.is_none())
                            .map(|(k, _)| k),
                    ) {
                        if let (Some(d), Some(key)) = (cacheable_denial(c, o), key) {
                            denials.insert(key.clone(), now + d);
                        }
                    }
                }
                o
            }
            None => self.degrade(&pending).await?,
        };
        let mut fresh = fresh.into_iter();
        let mut out = Outcomes::with_capacity(checks.len());
        for a in answers {
            match a {
                Some(o) => out.push(o),
                None => match fresh.next() {
                    Some(o) => out.push(o),
                    None => {
                        return Err(StoreError::Unavailable(
                            "store answered fewer checks than it was sent".into(),
                        ));
                    }
                },
            }
        }
        Ok(out)
    }

    fn store_stats(&self) -> StoreStats {
        let primary = self.primary.store_stats();
        let local = self.local.store_stats();
        let (degraded_checks, cached_denials, failures) = self.failure_counters();
        StoreStats {
            live_counters: primary.live_counters + local.live_counters,
            expired: primary.expired + local.expired,
            overflow: primary.overflow + local.overflow,
            degraded_checks,
            cached_denials,
            failures,
            breaker: match self.breaker.state() {
                BreakerState::Closed => 0,
                BreakerState::Open => 1,
                BreakerState::HalfOpen => 2,
            },
            ..primary
        }
    }

    fn health(&self) -> super::StoreHealth {
        let h = self.health();
        super::StoreHealth {
            ready: h.ready(),
            degraded: h.degraded(),
        }
    }
}

/// Keeps the trait object-free: the service holds either store behind one
/// concrete type.
#[derive(Debug)]
pub enum AnyStore<P> {
    Memory(MemoryStore),
    Shared(Arc<Resilient<P>>),
}

impl<P: CounterStore> CounterStore for AnyStore<P> {
    async fn check(&self, checks: &[Check<'_>]) -> Result<Outcomes, StoreError> {
        match self {
            AnyStore::Memory(m) => m.check(checks).await,
            AnyStore::Shared(r) => r.check(checks).await,
        }
    }

    fn store_stats(&self) -> StoreStats {
        match self {
            AnyStore::Memory(m) => m.store_stats(),
            AnyStore::Shared(r) => r.store_stats(),
        }
    }

    fn health(&self) -> super::StoreHealth {
        match self {
            AnyStore::Memory(m) => m.health(),
            AnyStore::Shared(r) => CounterStore::health(&**r),
        }
    }
}

impl<P> AnyStore<P> {
    /// Drops expired counters of whichever memory store is in use.
    pub fn sweep(&self) {
        match self {
            AnyStore::Memory(m) => m.sweep(),
            AnyStore::Shared(r) => r.local.sweep(),
        }
    }
}

#[cfg(test)]
mod tests;

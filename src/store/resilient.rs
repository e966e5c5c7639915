//! A shared store (Redis) made safe to depend on: a configured answer for
//! every check the store cannot decide, a circuit breaker that stops
//! calling a store that answers nothing, a background probe that closes it
//! again, and a local cache of keys known to be over their limit.
//!
//! * **Failure mode.** A check the primary store cannot decide (an error, a
//!   node that is down, a timeout), or every check while the breaker is
//!   open, is answered per [`FailureMode`]: `Allow` admits, `Deny`
//!   rejects, `Local` decides on an in-memory store with every limit
//!   divided by the number of replicas (`--local-fallback-divisor`). Each
//!   check on its own: with one Redis Cluster master down, only the checks
//!   it owns are answered so. Such an answer is marked
//!   ([`Outcome::degraded`]): `Allow` and `Deny` carry no counter state (no
//!   counts, nothing remaining, no reset: nothing was counted), `Local`
//!   carries the local counters'. A request is always answered, and never
//!   waits longer than the primary's own bounds.
//! * **Circuit breaker.** After `failure_threshold` consecutive calls in
//!   which the primary decided none of its checks, the breaker opens and
//!   the primary is not called. A background probe
//!   ([`Resilient::watch`], every `probe_interval`, 100 ms by default)
//!   asks the primary for one cheap round trip ([`CounterStore::probe`])
//!   whether or not traffic arrives; the first answer closes the breaker,
//!   so decisions come from the primary again within `probe_interval` of
//!   it answering. No request is ever used as a probe.
//! * **Readiness.** A replica stays ready whatever the primary does: the
//!   failure mode answers for it, and taking every replica out of service
//!   at once when a shared dependency blips would turn a degraded limiter
//!   into none. [`Health::degraded`] (the `sluice_store_degraded` gauge,
//!   `/readyz`'s text, and the warnings logged when the breaker opens and
//!   closes) says when decisions are not coming from the primary.
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

use smallvec::SmallVec;

use super::{
    Check, CheckResults, CounterStore, HistogramSnapshot, MemoryStore, Outcomes, StoreError,
    StoreStats,
};
use crate::core::algorithm::{Fallback, Outcome, Verdict};
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

impl FailureMode {
    /// How answers of this mode are marked.
    pub fn fallback(self) -> Fallback {
        match self {
            FailureMode::Allow => Fallback::Allow,
            FailureMode::Deny => Fallback::Deny,
            FailureMode::Local => Fallback::Local,
        }
    }
}

/// Breaker and cache settings.
#[derive(Clone, Copy, Debug)]
pub struct ResilienceOptions {
    pub mode: FailureMode,
    /// Replicas sharing the limits; local fallback limits are divided by it.
    pub local_divisor: u32,
    /// Consecutive calls in which the primary decided nothing that open
    /// the breaker.
    pub failure_threshold: u32,
    /// How often the background probe asks the primary while the breaker
    /// is open.
    pub probe_interval: Duration,
    /// The most one probe may take.
    pub probe_timeout: Duration,
    /// Keys held in the over-limit cache (0 disables it).
    pub over_limit_cache_size: u64,
}

impl Default for ResilienceOptions {
    fn default() -> Self {
        ResilienceOptions {
            mode: FailureMode::Allow,
            local_divisor: 1,
            failure_threshold: 3,
            probe_interval: Duration::from_millis(100),
            probe_timeout: Duration::from_secs(1),
            over_limit_cache_size: 100_000,
        }
    }
}

/// The breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    /// Open, with a background probe in flight.
    HalfOpen,
}

#[derive(Debug)]
struct Breaker {
    failures: AtomicU32,
    open: AtomicBool,
    /// A background probe is in flight.
    probing: AtomicBool,
    threshold: u32,
}

impl Breaker {
    fn new(o: &ResilienceOptions) -> Breaker {
        Breaker {
            failures: AtomicU32::new(0),
            open: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            threshold: o.failure_threshold.max(1),
        }
    }

    fn is_open(&self) -> bool {
        self.open.load(Relaxed)
    }

    fn success(&self) {
        self.failures.store(0, Relaxed);
        if self.open.swap(false, Relaxed) {
            tracing::info!("counter store answers again; circuit breaker closed, deciding there");
        }
    }

    fn failure(&self, mode: FailureMode) {
        let n = self.failures.fetch_add(1, Relaxed) + 1;
        if n >= self.threshold && !self.open.swap(true, Relaxed) {
            tracing::warn!(
                failures = n,
                failure_mode = mode.fallback().as_str(),
                "counter store not answering; circuit breaker open, answering per the failure mode until a background probe gets through"
            );
        }
    }

    fn state(&self) -> BreakerState {
        match (self.is_open(), self.probing.load(Relaxed)) {
            (false, _) => BreakerState::Closed,
            (true, true) => BreakerState::HalfOpen,
            (true, false) => BreakerState::Open,
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
    /// Calls to the primary in which some check failed.
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
    denials: Option<moka::sync::Cache<u128, Instant>>,
    counters: Counters,
}

/// What [`Resilient::health`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    pub breaker: BreakerState,
    pub mode: FailureMode,
    /// The primary reports itself able to decide everything (connected,
    /// no node down).
    pub primary_ok: bool,
}

impl Health {
    /// Ready to serve: always, since the failure mode answers for the
    /// primary (see the module docs).
    pub fn ready(&self) -> bool {
        true
    }

    /// Serving, but not (only) from the shared store.
    pub fn degraded(&self) -> bool {
        self.breaker != BreakerState::Closed || !self.primary_ok
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
        let primary = self.primary.health();
        Health {
            breaker: self.breaker.state(),
            mode: self.options.mode,
            primary_ok: primary.ready && !primary.degraded,
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

    /// Probes the primary every `probe_interval` while the breaker is
    /// open, closing it on the first answer; runs until dropped.
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.options.probe_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.breaker.is_open() {
                continue;
            }
            self.breaker.probing.store(true, Relaxed);
            let probe = tokio::time::timeout(self.options.probe_timeout, self.primary.probe());
            let answered = matches!(probe.await, Ok(Ok(())));
            self.breaker.probing.store(false, Relaxed);
            if answered {
                self.breaker.success();
            } else {
                tracing::debug!("counter store probe failed; breaker stays open");
            }
        }
    }

    /// The failure mode's answers for `checks`.
    async fn degrade(&self, checks: &[Check<'_>]) -> Outcomes {
        self.counters
            .degraded
            .fetch_add(checks.len() as u64, Relaxed);
        match self.options.mode {
            FailureMode::Allow => checks.iter().map(|c| fixed_answer(c, true)).collect(),
            FailureMode::Deny => checks.iter().map(|c| fixed_answer(c, false)).collect(),
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
                // The memory store always answers; should it not, the
                // checks are admitted, marked as such.
                match self.local.check(&local).await {
                    Ok(mut o) if o.len() == checks.len() => {
                        for outcome in &mut o {
                            outcome.degraded = Some(Fallback::Local);
                        }
                        o
                    }
                    _ => checks.iter().map(|c| fixed_answer(c, true)).collect(),
                }
            }
        }
    }

    /// Every check decided: by the primary, from the over-limit cache, or
    /// by the failure mode.
    async fn decide_each(&self, checks: &[Check<'_>]) -> Outcomes {
        let now = Instant::now();
        // Answer what the over-limit cache knows; send the rest.
        let mut answers: SmallVec<[Option<Outcome>; 4]> = SmallVec::new();
        let mut cache_keys: SmallVec<[Option<u128>; 4]> = SmallVec::new();
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
        let pending: SmallVec<[usize; 4]> = (0..checks.len())
            .filter(|&i| answers[i].is_none())
            .collect();
        if pending.is_empty() {
            return answers.into_iter().flatten().collect();
        }
        let sent: SmallVec<[Check<'_>; 4]> = pending.iter().map(|&i| checks[i]).collect();

        let mut failed: SmallVec<[usize; 4]> = SmallVec::new();
        if self.breaker.is_open() {
            failed.extend(pending.iter().copied());
        } else {
            let mut results = self.primary.check_each(&sent).await.into_iter();
            let mut decided = 0usize;
            let mut first_error: Option<StoreError> = None;
            for &i in &pending {
                match results.next() {
                    Some(Ok(o)) => {
                        decided += 1;
                        if let (Some(denials), Some(Some(key)), Some(d)) = (
                            &self.denials,
                            cache_keys.get(i),
                            cacheable_denial(&checks[i], &o),
                        ) {
                            denials.insert(*key, now + d);
                        }
                        answers[i] = Some(o);
                    }
                    Some(Err(e)) => {
                        first_error.get_or_insert(e);
                        failed.push(i);
                    }
                    None => failed.push(i),
                }
            }
            if decided == 0 {
                self.breaker.failure(self.options.mode);
            } else {
                self.breaker.success();
            }
            if !failed.is_empty() {
                self.counters.failures.fetch_add(1, Relaxed);
                if let Some(e) = first_error {
                    tracing::debug!(error = %e, checks = failed.len(), "counter store could not decide; using the failure mode");
                }
            }
        }
        if !failed.is_empty() {
            let degraded_checks: SmallVec<[Check<'_>; 4]> =
                failed.iter().map(|&i| checks[i]).collect();
            let outcomes = self.degrade(&degraded_checks).await;
            for (&i, o) in failed.iter().zip(outcomes) {
                answers[i] = Some(o);
            }
        }
        answers
            .into_iter()
            .zip(checks)
            .map(|(a, c)| {
                a.unwrap_or_else(|| fixed_answer(c, self.options.mode != FailureMode::Deny))
            })
            .collect()
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

/// Admit or reject without counting, marked as the failure mode's answer.
/// The verdicts say only admitted or not: nothing was counted, so nothing
/// is remaining and no reset is known (a rejection is reported as at its
/// limit, so per-rule statistics count it over the limit).
fn fixed_answer(c: &Check<'_>, admit: bool) -> Outcome {
    Outcome {
        admitted: admit,
        verdicts: c
            .limits
            .iter()
            .map(|l| Verdict {
                admitted: admit,
                used_before: if admit {
                    0
                } else {
                    u64::from(l.requests_per_unit)
                },
                remaining: 0,
                reset_ns: 0,
            })
            .collect(),
        degraded: Some(if admit {
            Fallback::Allow
        } else {
            Fallback::Deny
        }),
    }
}

/// The over-limit cache key: XXH3-128 of the counter key plus every
/// limit's values (built on the stack for typical sizes; 128 bits, so two
/// different checks never meet in practice).
fn cache_key(c: &Check<'_>) -> u128 {
    let mut k: SmallVec<[u8; 320]> = SmallVec::new();
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
    xxhash_rust::xxh3::xxh3_128(&k)
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
        degraded: None,
    }
}

impl<P: CounterStore> CounterStore for Resilient<P> {
    /// Never fails: what the primary cannot decide, the failure mode does.
    async fn check(&self, checks: &[Check<'_>]) -> Result<Outcomes, StoreError> {
        Ok(self.decide_each(checks).await)
    }

    async fn check_each(&self, checks: &[Check<'_>]) -> CheckResults {
        self.decide_each(checks).await.into_iter().map(Ok).collect()
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.primary.probe().await
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

    fn store_histograms(&self) -> Vec<HistogramSnapshot> {
        self.primary.store_histograms()
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
    // The shared store's future (a Redis batch in flight) is many times
    // the size of the memory store's: boxed, so that every caller's
    // future (and the memory store's path, copied into tonic's box on
    // every request) stays small.
    async fn check(&self, checks: &[Check<'_>]) -> Result<Outcomes, StoreError> {
        match self {
            AnyStore::Memory(m) => m.check(checks).await,
            AnyStore::Shared(r) => Box::pin(r.check(checks)).await,
        }
    }

    async fn check_each(&self, checks: &[Check<'_>]) -> CheckResults {
        match self {
            AnyStore::Memory(m) => m.check_each(checks).await,
            AnyStore::Shared(r) => Box::pin(r.check_each(checks)).await,
        }
    }

    async fn probe(&self) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(m) => m.probe().await,
            AnyStore::Shared(r) => r.probe().await,
        }
    }

    fn store_histograms(&self) -> Vec<HistogramSnapshot> {
        match self {
            AnyStore::Memory(m) => m.store_histograms(),
            AnyStore::Shared(r) => r.store_histograms(),
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

impl<P: CounterStore> AnyStore<P> {
    /// The background probe of a shared store's breaker
    /// ([`Resilient::watch`]); `None` for the memory store.
    pub fn watch(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        match self {
            AnyStore::Memory(_) => None,
            AnyStore::Shared(r) => Some(r.clone().watch()),
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

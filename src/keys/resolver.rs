//! The request path of API keys: secrets → keys (cache first, the key
//! store on a miss), the limits in force, `ValidateKey`'s charge against
//! them, and the usage each decision adds.
//!
//! Holds the hasher, the cache, a counter-store handle (the engine's
//! store, so a key has one budget in `ValidateKey` and `ShouldRateLimit`)
//! and the shared usage recorder and failed-validation guard. Admin
//! changes live in [`super::admin`], writing usage in [`super::usage`].
//!
//! Bounded work per request, whatever the caller sends:
//! * a malformed secret (too long, characters no key has) is an unknown
//!   key, answered without hashing or a lookup;
//! * a caller past its failed-validation allowance gets no lookups, only
//!   what the cache already knows;
//! * the misses of one request are looked up concurrently, and concurrent
//!   misses of one secret share one lookup ([`Flights`]);
//! * every lookup is bounded by the key-store timeout (on its own pool,
//!   [`Repository::lookups`]); when the store cannot answer, the
//!   [`KeyStoreFailureMode`] says what the request gets.
//!
//! While tracing is on, a request waiting on a key lookup (a cache miss)
//! has a child span for it, with the query's error recorded on it; a
//! cached key has none.
//!
//! May depend on: `core`, the `store` trait, `engine`, the rest of `keys`,
//! and `telemetry::otel` / `telemetry::trace::truncate` for spans (leaf
//! helpers). Knows nothing of gRPC.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;
use smallvec::SmallVec;
use tokio::sync::OnceCell;

use super::cache::{Cached, KeyCache};
use super::guard::AbuseGuard;
use super::hashing::KeyHasher;
use super::model::{self, Millis, PlanLimit, Quota, ResolvedKey};
use super::repo::Repository;
use super::usage::UsageRecorder;
use super::{KeyError, LimitReport, Resolution, Validation, Verdict, now_ms, validate};
use crate::core::algorithm::whole_seconds;
use crate::core::clock::SystemClock;
use crate::core::limit::{Algorithm, ChargePolicy, LimitSpec};
use crate::engine::Engine;
use crate::store::{Check, CounterStore, StoreHealth};

/// What a request gets for a key the key store could not look up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyStoreFailureMode {
    /// The key's descriptor is over the limit.
    Deny,
    /// The key's descriptor has no limit.
    Allow,
    /// The cached entry, even past its TTL, when there is one; else deny.
    #[default]
    Cached,
}

impl KeyStoreFailureMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyStoreFailureMode::Deny => "deny",
            KeyStoreFailureMode::Allow => "allow",
            KeyStoreFailureMode::Cached => "cached",
        }
    }
}

/// The resolver's bounds.
#[derive(Clone, Copy, Debug)]
pub struct ResolverOptions {
    /// Bound on one key-store lookup (connection wait included).
    pub timeout: Duration,
    pub failure_mode: KeyStoreFailureMode,
    /// Connections of the lookup pool.
    pub max_connections: u32,
}

impl Default for ResolverOptions {
    fn default() -> Self {
        ResolverOptions {
            timeout: Duration::from_millis(100),
            failure_mode: KeyStoreFailureMode::Cached,
            max_connections: 10,
        }
    }
}

/// How a secret's standing was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A fresh cache entry.
    Cache,
    /// A key-store lookup (this request's or a concurrent one's).
    Store,
    /// A cache entry past its TTL: the store failed (`cached` mode).
    Stale,
    /// Not a well-formed key: no lookup.
    Malformed,
    /// The caller is past its failed-validation allowance: no lookup.
    Refused,
}

/// Where one secret of a request stands.
#[derive(Clone, Debug)]
pub enum Standing {
    Resolved {
        resolution: Resolution,
        source: Source,
    },
    /// The key store could not answer and the failure mode found nothing
    /// to answer from: the caller applies [`Resolver::failure_mode`].
    Unavailable,
}

/// Why one lookup failed; shared by every request waiting on it.
#[derive(Clone, Debug, thiserror::Error)]
enum LookupError {
    #[error("key store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{message}")]
    Store {
        /// [`super::repo::RepoError::kind`].
        kind: &'static str,
        message: Arc<str>,
    },
}

impl LookupError {
    /// A bounded name, for the errors metric and the span.
    fn kind(&self) -> &'static str {
        match self {
            LookupError::Timeout(_) => "timeout",
            LookupError::Store { kind, .. } => kind,
        }
    }
}

/// Buckets of the key-store query latency, in seconds.
const QUERY_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Key-store operations the metrics are labelled with.
pub const OPERATIONS: [&str; 2] = ["lookup", "usage_flush"];
/// Error kinds the metrics are labelled with (see `RepoError::kind`, plus
/// `timeout`).
pub const ERROR_KINDS: [&str; 5] = ["timeout", "unavailable", "database", "corrupt", "other"];

/// Per key-store operation: query latency and errors by kind.
#[derive(Debug)]
pub struct QueryStats {
    /// Time of each query (answered or failed), in seconds.
    pub seconds: crate::store::Histogram,
    /// Failed queries, by [`ERROR_KINDS`] index.
    pub errors: [AtomicU64; ERROR_KINDS.len()],
}

impl Default for QueryStats {
    fn default() -> Self {
        QueryStats {
            seconds: crate::store::Histogram::new(QUERY_BUCKETS),
            errors: Default::default(),
        }
    }
}

impl QueryStats {
    /// Records one query that took `elapsed` and failed with `kind`, if
    /// it failed.
    pub fn record(&self, elapsed: Duration, error: Option<&str>) {
        self.seconds.observe(elapsed.as_secs_f64());
        if let Some(kind) = error {
            let i = ERROR_KINDS
                .iter()
                .position(|k| *k == kind)
                .unwrap_or(ERROR_KINDS.len() - 1);
            self.errors[i].fetch_add(1, Relaxed);
        }
    }
}

/// Counters about the key store, for `/metrics`.
#[derive(Debug, Default)]
pub struct KeyStoreStats {
    /// Lookups sent to the key store.
    pub lookups: AtomicU64,
    /// Misses answered by another request's lookup of the same secret.
    pub shared: AtomicU64,
    /// Lookups that failed or timed out.
    pub failures: AtomicU64,
    /// Misses not looked up because the caller failed too often.
    pub refused: AtomicU64,
    /// Keys answered by the failure mode, by answer.
    pub degraded_cached: AtomicU64,
    pub degraded_deny: AtomicU64,
    pub degraded_allow: AtomicU64,
    /// The lookup query's latency and errors.
    pub lookup_queries: QueryStats,
}

/// One lookup in flight per secret hash: concurrent misses of a secret
/// wait for the first one's answer instead of querying again.
#[derive(Debug, Default)]
struct Flights {
    map: Mutex<HashMap<String, Flight>>,
}

type Flight = Arc<OnceCell<Result<Cached, LookupError>>>;

/// Takes a finished (or abandoned) flight off the board.
struct Landing<'a> {
    flights: &'a Flights,
    hash: &'a str,
    cell: Flight,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        let mut map = self.flights.map.lock();
        if map
            .get(self.hash)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cell))
        {
            map.remove(self.hash);
        }
    }
}

/// Resolves keys and charges their limits.
#[derive(Debug)]
pub struct Resolver<S> {
    repo: Repository,
    hasher: KeyHasher,
    cache: Arc<KeyCache>,
    usage: Arc<UsageRecorder>,
    guard: Arc<AbuseGuard>,
    engine: Arc<Engine<S>>,
    clock: SystemClock,
    options: ResolverOptions,
    flights: Flights,
    stats: KeyStoreStats,
    /// The last lookup failed; cleared by a good lookup or [`Resolver::probe`].
    failing: AtomicBool,
}

impl<S: CounterStore> Resolver<S> {
    /// `repo` should be a lookup pool ([`Repository::lookups`]).
    pub fn new(
        repo: Repository,
        hasher: KeyHasher,
        cache: Arc<KeyCache>,
        usage: Arc<UsageRecorder>,
        guard: Arc<AbuseGuard>,
        engine: Arc<Engine<S>>,
        options: ResolverOptions,
    ) -> Resolver<S> {
        Resolver {
            repo,
            hasher,
            cache,
            usage,
            guard,
            engine,
            clock: SystemClock::default(),
            options,
            flights: Flights::default(),
            stats: KeyStoreStats::default(),
            failing: AtomicBool::new(false),
        }
    }

    pub fn cache(&self) -> &KeyCache {
        &self.cache
    }

    pub fn guard(&self) -> &AbuseGuard {
        &self.guard
    }

    pub fn now(&self) -> Millis {
        now_ms(&self.clock)
    }

    pub const fn failure_mode(&self) -> KeyStoreFailureMode {
        self.options.failure_mode
    }

    pub fn stats(&self) -> &KeyStoreStats {
        &self.stats
    }

    /// The usage recorder (its flush statistics, for `/metrics`).
    pub fn usage(&self) -> &UsageRecorder {
        &self.usage
    }

    /// Whether key lookups are being answered: like the counter store's,
    /// always ready (the failure mode answers while the key store fails:
    /// taking every replica out of rotation would let a proxy that fails
    /// open skip every limit), degraded while lookups fail.
    pub fn health(&self) -> StoreHealth {
        StoreHealth {
            ready: true,
            degraded: self.failing.load(Relaxed),
        }
    }

    /// Opens the lookup pool's first connection (at start-up, before
    /// requests come); when it cannot, lookups open it when they need it.
    pub async fn warm(&self) {
        if let Err(e) = self.repo.warm().await {
            tracing::warn!(error = %e, "the key lookup pool could not open a connection yet; lookups will open one");
        }
    }

    /// While lookups fail, runs the lookup query once (for a hash no key
    /// has, bounded by the timeout), so health recovers without traffic.
    pub async fn probe(&self) {
        if !self.failing.load(Relaxed) {
            return;
        }
        let answered = tokio::time::timeout(self.options.timeout, self.repo.find_by_hash("probe"))
            .await
            .is_ok_and(|r| r.is_ok());
        if answered {
            self.store_answered();
        }
    }

    fn store_answered(&self) {
        if self.failing.swap(false, Relaxed) {
            tracing::info!("key store answers again");
        }
    }

    fn store_failed(&self, e: &LookupError) {
        self.stats.failures.fetch_add(1, Relaxed);
        if !self.failing.swap(true, Relaxed) {
            tracing::warn!(
                error = %e,
                failure_mode = self.options.failure_mode.as_str(),
                "key store lookups fail; answering keys by the failure mode until it recovers"
            );
        } else {
            tracing::debug!(error = %e, "key store lookup failed");
        }
    }

    /// The hash of a well-formed secret; `None` for one no key can have.
    fn hash_of(&self, secret: &str) -> Option<String> {
        validate::key_shape(secret).then(|| self.hasher.hash(secret))
    }

    /// One key-store lookup of `hash`, shared with concurrent callers of
    /// the same hash, bounded by the timeout; the answer is cached.
    async fn lookup(&self, hash: &str) -> Result<Cached, LookupError> {
        let (cell, shared) = {
            let mut map = self.flights.map.lock();
            match map.get(hash) {
                Some(c) => (c.clone(), true),
                None => {
                    let c = Flight::default();
                    map.insert(hash.to_string(), c.clone());
                    (c, false)
                }
            }
        };
        if shared {
            self.stats.shared.fetch_add(1, Relaxed);
        }
        // A span per request waiting on a lookup (its own query, or one a
        // concurrent request has in flight for the same secret: then
        // `shared` says so, and the query is that request's).
        let span = crate::telemetry::otel::parent_span().map(|p| self.lookup_span(&p, shared));
        let landing = Landing {
            flights: &self.flights,
            hash,
            cell,
        };
        let answer = landing.cell.get_or_init(|| self.query(hash)).await.clone();
        if let Some(span) = span {
            match &answer {
                Ok(c) => {
                    span.record("sluice.key_found", matches!(c, Cached::Found(_)));
                }
                Err(e) => {
                    let message = e.to_string();
                    crate::telemetry::otel::record_error(
                        &span,
                        e.kind(),
                        crate::telemetry::trace::truncate(&message, 256),
                    );
                }
            }
        }
        answer
    }

    /// The span of one request's key lookup, a child of `parent` (its
    /// RPC's SERVER span). Names the table, never the key or its hash.
    fn lookup_span(&self, parent: &tracing::Span, shared: bool) -> tracing::Span {
        let system = match self.repo.backend() {
            super::repo::Backend::Postgres => "postgresql",
            super::repo::Backend::Sqlite => "sqlite",
        };
        tracing::info_span!(
            target: "sluice::keys",
            parent: parent,
            "key lookup",
            otel.name = "SELECT key_secrets",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            error.type = tracing::field::Empty,
            db.system.name = system,
            db.operation.name = "SELECT",
            db.collection.name = "key_secrets",
            sluice.key_lookup_shared = shared,
            sluice.key_found = tracing::field::Empty,
        )
    }

    async fn query(&self, hash: &str) -> Result<Cached, LookupError> {
        self.stats.lookups.fetch_add(1, Relaxed);
        let started = std::time::Instant::now();
        let answer =
            match tokio::time::timeout(self.options.timeout, self.repo.find_by_hash(hash)).await {
                Err(_) => Err(LookupError::Timeout(self.options.timeout)),
                Ok(Err(e)) => Err(LookupError::Store {
                    kind: e.kind(),
                    message: e.to_string().into(),
                }),
                Ok(Ok(found)) => Ok(match found {
                    Some(f) => Cached::Found(Arc::new(ResolvedKey::new(
                        f.key,
                        f.plan,
                        f.secret_expires_at,
                    ))),
                    None => Cached::Missing,
                }),
            };
        self.stats.lookup_queries.record(
            started.elapsed(),
            answer.as_ref().err().map(LookupError::kind),
        );
        match &answer {
            Ok(c) => {
                self.cache.insert(hash.to_string(), c.clone(), self.now());
                self.store_answered();
            }
            Err(e) => self.store_failed(e),
        }
        answer
    }

    /// Where a cached or looked-up entry stands at `now`.
    fn standing(found: Cached, now: Millis) -> Resolution {
        let Cached::Found(key) = found else {
            return Resolution {
                verdict: Verdict::NotFound,
                key: None,
            };
        };
        if key.secret_expires_at.is_some_and(|e| e <= now) {
            // A rotated-out secret past its grace identifies nothing.
            return Resolution {
                verdict: Verdict::NotFound,
                key: None,
            };
        }
        let verdict = match key.key.state(now) {
            model::KeyState::Active => Verdict::Valid,
            model::KeyState::Disabled => Verdict::Disabled,
            model::KeyState::Expired => Verdict::Expired,
            model::KeyState::Revoked => Verdict::Revoked,
        };
        Resolution {
            verdict,
            key: Some(key),
        }
    }

    /// Where each of a request's secrets stands, in order; never fails.
    ///
    /// Misses are looked up concurrently, at most as many as `caller` has
    /// failures left this minute (the rest are unknown keys, answered
    /// without a lookup). Every secret that turns out not valid counts as
    /// a failure of `caller`. `None`: no guard.
    pub async fn resolve_all(
        &self,
        secrets: &[&str],
        caller: Option<&str>,
    ) -> SmallVec<[Standing; 2]> {
        let now = self.now();
        let mut budget = caller.map_or(u64::MAX, |c| self.guard.failures_left(c));
        let mut out: SmallVec<[Standing; 2]> = SmallVec::with_capacity(secrets.len());
        // (index in `out`, hash, the stale entry if any).
        let mut misses: SmallVec<[(usize, String, Option<Cached>); 2]> = SmallVec::new();
        for (i, secret) in secrets.iter().enumerate() {
            let Some(hash) = self.hash_of(secret) else {
                out.push(Standing::Resolved {
                    resolution: Self::standing(Cached::Missing, now),
                    source: Source::Malformed,
                });
                continue;
            };
            let stale = match self.cache.get(&hash, now) {
                Some(hit) if hit.fresh => {
                    out.push(Standing::Resolved {
                        resolution: Self::standing(hit.value, now),
                        source: Source::Cache,
                    });
                    continue;
                }
                Some(hit) => Some(hit.value),
                None => None,
            };
            if budget == 0 {
                self.stats.refused.fetch_add(1, Relaxed);
                out.push(Standing::Resolved {
                    resolution: Self::standing(Cached::Missing, now),
                    source: Source::Refused,
                });
                continue;
            }
            budget -= 1;
            out.push(Standing::Unavailable);
            misses.push((i, hash, stale));
        }
        if let [(i, hash, stale)] = misses.as_mut_slice() {
            // Boxed: a lookup (a database query) is a large future, and
            // inline it would make every caller's future, cache hits
            // included, as large as it is.
            let answer = Box::pin(self.lookup(hash)).await;
            out[*i] = self.settle(answer, stale.take(), now);
        } else if !misses.is_empty() {
            let answers =
                futures_util::future::join_all(misses.iter().map(|(_, h, _)| self.lookup(h))).await;
            for ((i, _, stale), answer) in misses.into_iter().zip(answers) {
                out[i] = self.settle(answer, stale, now);
            }
        }
        if let Some(c) = caller {
            for s in &out {
                if let Standing::Resolved { resolution, source } = s
                    && resolution.verdict != Verdict::Valid
                    && *source != Source::Refused
                {
                    self.guard.record_failure(c);
                }
            }
        }
        out
    }

    /// A lookup's answer, or the failure mode's.
    fn settle(
        &self,
        answer: Result<Cached, LookupError>,
        stale: Option<Cached>,
        now: Millis,
    ) -> Standing {
        match (answer, self.options.failure_mode, stale) {
            (Ok(c), _, _) => Standing::Resolved {
                resolution: Self::standing(c, now),
                source: Source::Store,
            },
            (Err(_), KeyStoreFailureMode::Cached, Some(c)) => {
                self.stats.degraded_cached.fetch_add(1, Relaxed);
                Standing::Resolved {
                    resolution: Self::standing(c, now),
                    source: Source::Stale,
                }
            }
            (Err(_), KeyStoreFailureMode::Allow, _) => {
                self.stats.degraded_allow.fetch_add(1, Relaxed);
                Standing::Unavailable
            }
            (Err(_), KeyStoreFailureMode::Deny | KeyStoreFailureMode::Cached, _) => {
                self.stats.degraded_deny.fetch_add(1, Relaxed);
                Standing::Unavailable
            }
        }
    }

    /// The limits of `key` in force at `now`: its plan's (or its own) and,
    /// last, the monthly quota's current period.
    pub fn limits_at(&self, key: &ResolvedKey, now: Millis) -> SmallVec<[LimitSpec; 4]> {
        let mut specs: SmallVec<[LimitSpec; 4]> = key.specs.iter().copied().collect();
        if let Some(q) = key.plan.quota {
            specs.push(quota_spec(q, now, specs.len()));
        }
        specs
    }

    /// `ValidateKey`: looks the key up, checks scopes, and charges `cost`
    /// (0: only reports) against every limit, all or nothing.
    ///
    /// # Errors
    /// [`KeyError::Invalid`] for a bad cost or scope list;
    /// [`KeyError::TooManyFailures`] when `caller` has failed too often;
    /// [`KeyError::Unavailable`] when the key store cannot answer (and the
    /// failure mode has no cached entry); the counter store's errors.
    pub async fn validate(
        &self,
        secret: &str,
        cost: u64,
        required_scopes: &[String],
        caller: Option<&str>,
    ) -> Result<Validation, KeyError> {
        if cost > validate::MAX_COST {
            return Err(KeyError::Invalid {
                field: "cost".into(),
                problem: format!("is {cost}; at most {} is allowed", validate::MAX_COST),
            });
        }
        validate::scopes("required_scopes", required_scopes)?;
        if let Some(c) = caller
            && self.guard.failures_exhausted(c)
        {
            return Err(KeyError::TooManyFailures);
        }
        let standing = self.resolve_all(&[secret], caller).await.into_iter().next();
        let Some(Standing::Resolved { resolution: r, .. }) = standing else {
            return Err(KeyError::Unavailable("the key store did not answer".into()));
        };
        let Some(key) = r.key else {
            return Ok(Validation {
                verdict: r.verdict,
                key: None,
                limits: Vec::new(),
            });
        };
        if r.verdict != Verdict::Valid {
            return Ok(Validation {
                verdict: r.verdict,
                key: Some(key),
                limits: Vec::new(),
            });
        }
        if let Some(missing) = required_scopes.iter().find(|s| !key.key.scopes.contains(s)) {
            tracing::debug!(key_id = %key.key.id, scope = %missing, "key lacks a required scope");
            return Ok(Validation {
                verdict: Verdict::InsufficientScope,
                key: Some(key),
                limits: Vec::new(),
            });
        }
        let now = self.now();
        let specs = self.limits_at(&key, now);
        let mut limits = Vec::with_capacity(specs.len());
        let mut verdict = Verdict::Valid;
        if !specs.is_empty() {
            let check = Check {
                key: &key.counter_key,
                limits: &specs,
                hits: cost,
                policy: ChargePolicy::AllOrNothing,
            };
            let outcomes = self.engine.store().check(&[check]).await?;
            let outcome = outcomes.into_iter().next().unwrap_or_default();
            let quota_index = key.plan.quota.map(|_| specs.len() - 1);
            for (i, (spec, v)) in specs.iter().zip(&outcome.verdicts).enumerate() {
                let exceeded = cost > 0 && !v.admitted;
                let is_quota = quota_index == Some(i);
                if exceeded {
                    verdict = if is_quota {
                        Verdict::UsageExceeded
                    } else if verdict == Verdict::UsageExceeded {
                        verdict
                    } else {
                        Verdict::RateLimited
                    };
                }
                let name = if is_quota {
                    "quota".to_string()
                } else {
                    key.limits.get(i).map(PlanLimit::label).unwrap_or_default()
                };
                let capacity = match spec.algorithm {
                    Algorithm::TokenBucket => spec.burst,
                    Algorithm::FixedWindow | Algorithm::SlidingWindow => spec.requests_per_unit,
                };
                limits.push(LimitReport {
                    name,
                    limit: u64::from(capacity),
                    remaining: v.remaining,
                    reset_seconds: whole_seconds(v.reset_ns),
                    exceeded,
                });
            }
        }
        self.usage
            .record(&key.key.id, now, verdict == Verdict::Valid);
        Ok(Validation {
            verdict,
            key: Some(key),
            limits,
        })
    }

    /// Counts a ShouldRateLimit decision made on a key's limits.
    pub fn record_decision(&self, key_id: &str, admitted: bool) {
        self.usage.record(key_id, self.now(), admitted);
    }
}

/// The quota's current period as a fixed window: from the last refill
/// (00:00 UTC on `refill_day`) to the next, so the count resets exactly
/// on the refill day whatever the month's length.
fn quota_spec(q: Quota, now: Millis, index: usize) -> LimitSpec {
    let (start, end) = quota_period(q.refill_day, now);
    let len_ns = u64::try_from(end - start).unwrap_or(1).max(1) * 1_000_000;
    let start_ns = u64::try_from(start).unwrap_or(0) * 1_000_000;
    LimitSpec::with_window(
        q.requests,
        len_ns,
        start_ns % len_ns,
        Algorithm::FixedWindow,
        None,
        index,
    )
}

/// The quota period around `now`, in ms: [last refill, next refill).
pub fn quota_period(refill_day: u8, now: Millis) -> (Millis, Millis) {
    use time::{Date, Month, OffsetDateTime};
    let today = OffsetDateTime::from_unix_timestamp(now.div_euclid(1000))
        .map_or(Date::MIN, OffsetDateTime::date);
    let day = refill_day.clamp(1, 28);
    let (mut y, mut m) = (today.year(), today.month());
    if today.day() < day {
        if m == Month::January {
            y -= 1;
        }
        m = m.previous();
    }
    let start = Date::from_calendar_date(y, m, day).unwrap_or(today);
    let (ny, nm) = if m == Month::December {
        (y + 1, Month::January)
    } else {
        (y, m.next())
    };
    let end = Date::from_calendar_date(ny, nm, day).unwrap_or(today);
    let ms = |d: Date| {
        d.midnight()
            .assume_utc()
            .unix_timestamp()
            .saturating_mul(1000)
    };
    (ms(start), ms(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Millis {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp()
            * 1000
    }

    #[test]
    fn quota_periods_follow_the_refill_day() {
        assert_eq!(
            quota_period(15, at("2026-11-22T10:00:00Z")),
            (at("2026-11-15T00:00:00Z"), at("2026-12-15T00:00:00Z"))
        );
        assert_eq!(
            quota_period(15, at("2026-11-14T23:59:59Z")),
            (at("2026-10-15T00:00:00Z"), at("2026-11-15T00:00:00Z"))
        );
        assert_eq!(
            quota_period(1, at("2026-01-01T00:00:00Z")),
            (at("2026-01-01T00:00:00Z"), at("2026-02-01T00:00:00Z"))
        );
        assert_eq!(
            quota_period(10, at("2026-01-05T00:00:00Z")),
            (at("2025-12-10T00:00:00Z"), at("2026-01-10T00:00:00Z"))
        );
    }

    #[test]
    fn quota_window_starts_on_the_refill_instant() {
        let now = at("2026-11-22T10:00:00Z");
        let spec = quota_spec(
            Quota {
                requests: 10,
                refill_day: 15,
            },
            now,
            0,
        );
        let now_ns = u64::try_from(now).unwrap() * 1_000_000;
        let (v, _) = crate::core::algorithm::LimitState::new(Algorithm::FixedWindow)
            .evaluate(&spec, now_ns, 1);
        let reset_s = whole_seconds(v.reset_ns);
        let expected = u64::try_from(at("2026-12-15T00:00:00Z") - now).unwrap() / 1000;
        assert_eq!(reset_s, expected);
    }
}

//! The request path of API keys: a secret → its key (cache first, the
//! key store on a miss), the limits in force, `ValidateKey`'s charge
//! against them, and the usage each decision adds.
//!
//! Holds the hasher, the cache, a counter-store handle (the engine's
//! store, so a key has one budget in `ValidateKey` and `ShouldRateLimit`)
//! and the shared usage recorder and failed-validation guard. Admin
//! changes live in [`super::admin`], writing usage in [`super::usage`].
//!
//! May depend on: `core`, the `store` trait, `engine`, and the rest of
//! `keys`. Knows nothing of gRPC.

use std::sync::Arc;

use smallvec::SmallVec;

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
use crate::store::{Check, CounterStore};

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
}

impl<S: CounterStore> Resolver<S> {
    pub fn new(
        repo: Repository,
        hasher: KeyHasher,
        cache: Arc<KeyCache>,
        usage: Arc<UsageRecorder>,
        guard: Arc<AbuseGuard>,
        engine: Arc<Engine<S>>,
    ) -> Resolver<S> {
        Resolver {
            repo,
            hasher,
            cache,
            usage,
            guard,
            engine,
            clock: SystemClock::default(),
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

    /// Looks a key up by its full secret (cache first) and says where it
    /// stands now, before scopes and limits.
    ///
    /// # Errors
    /// [`KeyError::Invalid`] for an over-long key; [`KeyError::Unavailable`]
    /// when the key store cannot answer a cache miss.
    pub async fn resolve(&self, secret: &str) -> Result<Resolution, KeyError> {
        if secret.len() > validate::MAX_KEY_LEN {
            return Err(KeyError::Invalid {
                field: "key".into(),
                problem: format!(
                    "has {} bytes; at most {} are allowed",
                    secret.len(),
                    validate::MAX_KEY_LEN
                ),
            });
        }
        // Every key, known or not, costs one keyed hash and one lookup, so
        // timing says nothing about which keys exist.
        let hash = self.hasher.hash(secret);
        let found = match self.cache.get(&hash) {
            Some(c) => c,
            None => {
                let c = match self.repo.find_by_hash(&hash).await? {
                    Some(f) => Cached::Found(Arc::new(ResolvedKey::new(
                        f.key,
                        f.plan,
                        f.secret_expires_at,
                    ))),
                    None => Cached::Missing,
                };
                self.cache.insert(hash, c.clone());
                c
            }
        };
        let Cached::Found(key) = found else {
            return Ok(Resolution {
                verdict: Verdict::NotFound,
                key: None,
            });
        };
        let now = self.now();
        if key.secret_expires_at.is_some_and(|e| e <= now) {
            // A rotated-out secret past its grace identifies nothing.
            return Ok(Resolution {
                verdict: Verdict::NotFound,
                key: None,
            });
        }
        let verdict = match key.key.state(now) {
            model::KeyState::Active => Verdict::Valid,
            model::KeyState::Disabled => Verdict::Disabled,
            model::KeyState::Expired => Verdict::Expired,
            model::KeyState::Revoked => Verdict::Revoked,
        };
        Ok(Resolution {
            verdict,
            key: Some(key),
        })
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
    /// [`KeyError::TooManyFailures`] when `caller` has failed too often;
    /// others as [`Resolver::resolve`] and the counter store.
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
        let r = self.resolve(secret).await?;
        let Some(key) = r.key else {
            if let Some(c) = caller {
                self.guard.record_failure(c);
            }
            return Ok(Validation {
                verdict: r.verdict,
                key: None,
                limits: Vec::new(),
            });
        };
        if r.verdict != Verdict::Valid {
            if let Some(c) = caller {
                self.guard.record_failure(c);
            }
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

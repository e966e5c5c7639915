//! API keys and plans: the key manager behind `ValidateKey`, the admin
//! API and key-aware `ShouldRateLimit`.
//!
//! * [`model`]: plans, keys, usage and audit records; plan limits → engine
//!   limits.
//! * [`hashing`]: key generation (OS CSPRNG) and HMAC-SHA256 hashing.
//! * [`repo`]: the PostgreSQL / SQLite store (sqlx, migrations/).
//! * [`cache`]: found and missing lookups, dropped on change.
//! * [`notify`]: change notifications between replicas.
//! * [`usage`]: per-key daily counts, flushed in batches.
//! * [`guard`]: limits on failed validations and admin calls.
//! * [`validate`]: bounds on every input field.
//!
//! May depend on: `core`, the `store` trait and `engine` (to count plan
//! limits on the same counters as every other limit). Knows nothing of
//! gRPC.

pub mod cache;
pub mod guard;
pub mod hashing;
pub mod model;
pub mod notify;
pub mod repo;
pub mod usage;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;

use crate::core::algorithm::whole_seconds;
use crate::core::clock::{Clock, SystemClock};
use crate::core::limit::{Algorithm, ChargePolicy, LimitSpec};
use crate::engine::Engine;
use crate::store::{Check, CounterStore, StoreError};

use cache::{CacheOptions, Cached, KeyCache};
use guard::{AbuseGuard, GuardOptions};
use hashing::KeyHasher;
use model::{Actor, ApiKey, AuditEvent, Millis, Plan, PlanLimit, Quota, ResolvedKey, UsageDay};
use repo::{ChangeError, KeyChanges, KeyFilter, RepoError, Repository};
use usage::UsageRecorder;

/// Why a key-management call failed; the gRPC layer maps each variant to
/// a status code.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("too many failed key validations from this address; try again in a minute")]
    TooManyFailures,
    #[error("key store unavailable: {0}")]
    Unavailable(String),
    #[error("counter store: {0}")]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<RepoError> for KeyError {
    fn from(e: RepoError) -> KeyError {
        match e {
            RepoError::Corrupt { .. } => KeyError::Internal(e.to_string()),
            RepoError::Scheme(_) | RepoError::Db(_) | RepoError::Migrate(_) => {
                KeyError::Unavailable(e.to_string())
            }
        }
    }
}

impl From<ChangeError> for KeyError {
    fn from(e: ChangeError) -> KeyError {
        match e {
            ChangeError::NotFound(_) => KeyError::NotFound(e.to_string()),
            ChangeError::AlreadyExists(_) => KeyError::AlreadyExists(e.to_string()),
            ChangeError::NoSuchPlan(p) => KeyError::Invalid {
                field: "plan".into(),
                problem: format!("no plan named {p:?}"),
            },
            ChangeError::PlanInUse { .. } | ChangeError::Revoked(_) => {
                KeyError::FailedPrecondition(e.to_string())
            }
            ChangeError::Repo(r) => r.into(),
        }
    }
}

impl From<hashing::RandomError> for KeyError {
    fn from(e: hashing::RandomError) -> KeyError {
        KeyError::Internal(e.to_string())
    }
}

/// The answer about a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    NotFound,
    Disabled,
    Expired,
    Revoked,
    InsufficientScope,
    RateLimited,
    UsageExceeded,
}

/// A key looked up by its secret.
#[derive(Clone, Debug)]
pub struct Resolution {
    pub verdict: Verdict,
    /// `None` only for `NotFound`.
    pub key: Option<Arc<ResolvedKey>>,
}

/// Where one limit stands after a validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitReport {
    pub name: String,
    pub limit: u64,
    pub remaining: u64,
    pub reset_seconds: u64,
    pub exceeded: bool,
}

/// The result of `ValidateKey`.
#[derive(Clone, Debug)]
pub struct Validation {
    pub verdict: Verdict,
    pub key: Option<Arc<ResolvedKey>>,
    pub limits: Vec<LimitReport>,
}

/// A new key and its secret, shown once.
#[derive(Debug)]
pub struct CreatedKey {
    pub key: ApiKey,
    pub secret: String,
}

/// A rotated key, its new secret and when the old one stops.
#[derive(Debug)]
pub struct RotatedKey {
    pub key: ApiKey,
    pub secret: String,
    pub previous_expires_at: Millis,
}

/// What `CreateKey` asks for.
#[derive(Clone, Debug, Default)]
pub struct NewKey {
    pub name: String,
    pub owner_id: String,
    pub plan: String,
    pub scopes: Vec<String>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub expires_at: Option<Millis>,
    pub prefix: String,
    pub limits: Option<Vec<PlanLimit>>,
}

/// What `CreatePlan` / `UpdatePlan` ask for.
#[derive(Clone, Debug, Default)]
pub struct PlanDraft {
    pub name: String,
    pub description: String,
    pub limits: Vec<PlanLimit>,
    pub quota: Option<Quota>,
}

/// Key-manager settings.
#[derive(Clone, Copy, Debug)]
pub struct KeyOptions {
    pub cache: CacheOptions,
    pub guard: GuardOptions,
    /// How often usage is written.
    pub flush_every: Duration,
}

impl Default for KeyOptions {
    fn default() -> Self {
        KeyOptions {
            cache: CacheOptions::default(),
            guard: GuardOptions::default(),
            flush_every: Duration::from_secs(10),
        }
    }
}

/// Carries key and plan changes to other replicas (besides PostgreSQL's
/// NOTIFY, which the repository sends itself).
pub trait ChangeBus: Send + Sync + std::fmt::Debug + 'static {
    /// Announces `payload` (a key id, `plan:<name>` or `*`); never blocks.
    fn publish(&self, payload: String);
}

/// Keys, plans and their limits.
#[derive(Debug)]
pub struct KeyManager<S> {
    repo: Repository,
    hasher: KeyHasher,
    cache: KeyCache,
    usage: UsageRecorder,
    guard: AbuseGuard,
    engine: Arc<Engine<S>>,
    clock: SystemClock,
    options: KeyOptions,
    bus: Option<Arc<dyn ChangeBus>>,
}

fn now_ms(clock: &SystemClock) -> Millis {
    i64::try_from(clock.now_ns() / 1_000_000).unwrap_or(i64::MAX)
}

impl<S: CounterStore> KeyManager<S> {
    pub fn new(
        repo: Repository,
        hasher: KeyHasher,
        engine: Arc<Engine<S>>,
        options: KeyOptions,
    ) -> KeyManager<S> {
        KeyManager {
            repo,
            hasher,
            cache: KeyCache::new(options.cache),
            usage: UsageRecorder::default(),
            guard: AbuseGuard::new(options.guard),
            engine,
            clock: SystemClock::default(),
            options,
            bus: None,
        }
    }

    /// Also announces changes on `bus`.
    #[must_use]
    pub fn with_bus(mut self, bus: Arc<dyn ChangeBus>) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Drops local cache entries for a change and tells other replicas.
    fn changed(&self, payload: String) {
        self.apply_change(&payload);
        if let Some(bus) = &self.bus {
            bus.publish(payload);
        }
    }

    pub fn repo(&self) -> &Repository {
        &self.repo
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

    // ---- the request path ----

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
    /// others as [`KeyManager::resolve`] and the counter store.
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

    // ---- change notifications ----

    /// Applies a change announced by another replica (or by this one).
    pub fn apply_change(&self, payload: &str) {
        match payload.strip_prefix("plan:") {
            Some(plan) => self.cache.invalidate_plan(plan),
            None if payload == "*" => self.cache.invalidate_all(),
            None => self.cache.invalidate_key(payload),
        }
    }

    // ---- usage flushing ----

    /// Writes pending usage; on failure it stays pending.
    ///
    /// # Errors
    /// [`KeyError::Unavailable`] when the key store cannot be written.
    pub async fn flush(&self, all: bool) -> Result<usize, KeyError> {
        let batch = self.usage.take(self.now(), all);
        if batch.is_empty() {
            return Ok(0);
        }
        let n = batch.deltas.len();
        if let Err(e) = self.repo.add_usage(&batch.deltas, &batch.last_used).await {
            self.usage.restore(batch);
            return Err(e.into());
        }
        Ok(n)
    }

    /// Flushes usage every `flush_every` and sweeps the guard's counters,
    /// until `stop` resolves; then flushes everything once more.
    pub async fn run_flusher(&self, stop: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.options.flush_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = tick.tick() => {
                    if let Err(e) = self.flush(false).await {
                        tracing::warn!(error = %e, "usage flush failed; kept for the next one");
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

    // ---- admin: plans ----

    /// # Errors
    /// [`KeyError::Invalid`] naming the field; [`KeyError::AlreadyExists`].
    pub async fn create_plan(&self, draft: PlanDraft, actor: &Actor) -> Result<Plan, KeyError> {
        let plan = checked_plan(draft, self.now())?;
        self.repo.create_plan(&plan, actor).await?;
        Ok(plan)
    }

    /// # Errors
    /// [`KeyError::NotFound`].
    pub async fn get_plan(&self, name: &str) -> Result<Plan, KeyError> {
        self.repo
            .get_plan(name)
            .await?
            .ok_or_else(|| KeyError::NotFound(format!("plan {name:?} not found")))
    }

    /// # Errors
    /// [`KeyError::Invalid`] for a bad page size.
    pub async fn list_plans(&self, after: &str, page_size: u32) -> Result<Vec<Plan>, KeyError> {
        let n = validate::page_size("page_size", page_size)?;
        Ok(self.repo.list_plans(after, n).await?)
    }

    /// # Errors
    /// [`KeyError::Invalid`], [`KeyError::NotFound`].
    pub async fn update_plan(&self, draft: PlanDraft, actor: &Actor) -> Result<Plan, KeyError> {
        let plan = checked_plan(draft, self.now())?;
        let stored = self.repo.update_plan(&plan, actor).await?;
        self.changed(format!("plan:{}", stored.name));
        Ok(stored)
    }

    /// # Errors
    /// [`KeyError::FailedPrecondition`] while keys use the plan.
    pub async fn delete_plan(&self, name: &str, actor: &Actor) -> Result<(), KeyError> {
        validate::plan_name("name", name)?;
        self.repo.delete_plan(name, actor, self.now()).await?;
        Ok(())
    }

    // ---- admin: keys ----

    /// # Errors
    /// [`KeyError::Invalid`] naming the field (an unknown plan included).
    pub async fn create_key(&self, new: NewKey, actor: &Actor) -> Result<CreatedKey, KeyError> {
        validate::text("name", &new.name, validate::MAX_NAME)?;
        validate::text("owner_id", &new.owner_id, validate::MAX_OWNER)?;
        validate::plan_name("plan", &new.plan)?;
        validate::scopes("scopes", &new.scopes)?;
        validate::metadata("metadata", &new.metadata)?;
        let prefix = if new.prefix.is_empty() {
            validate::DEFAULT_PREFIX.to_string()
        } else {
            new.prefix
        };
        validate::prefix("prefix", &prefix)?;
        if let Some(l) = &new.limits {
            validate::limits("limits", l, false)?;
        }
        let now = self.now();
        if new.expires_at.is_some_and(|e| e <= now) {
            return Err(KeyError::Invalid {
                field: "expires_at".into(),
                problem: "must be in the future".into(),
            });
        }
        let fresh = self.hasher.generate(&prefix)?;
        let key = ApiKey {
            id: hashing::new_id("key")?,
            name: new.name,
            owner_id: new.owner_id,
            plan: new.plan,
            scopes: new.scopes,
            metadata: new.metadata,
            limits: new.limits.filter(|l| !l.is_empty()),
            hint: fresh.hint.clone(),
            enabled: true,
            expires_at: new.expires_at,
            created_at: now,
            updated_at: now,
            last_used_at: None,
            revoked_at: None,
        };
        self.repo.create_key(&key, &fresh.hash, actor).await?;
        Ok(CreatedKey {
            key,
            secret: fresh.secret,
        })
    }

    /// # Errors
    /// [`KeyError::NotFound`].
    pub async fn get_key(&self, id: &str) -> Result<ApiKey, KeyError> {
        self.repo
            .get_key(id)
            .await?
            .ok_or_else(|| KeyError::NotFound(format!("key {id:?} not found")))
    }

    /// # Errors
    /// [`KeyError::Invalid`] for a bad page size.
    pub async fn list_keys(
        &self,
        filter: &KeyFilter,
        after: &str,
        page_size: u32,
    ) -> Result<Vec<ApiKey>, KeyError> {
        let n = validate::page_size("page_size", page_size)?;
        Ok(self.repo.list_keys(filter, after, n, self.now()).await?)
    }

    /// # Errors
    /// [`KeyError::Invalid`], [`KeyError::NotFound`],
    /// [`KeyError::FailedPrecondition`] for a revoked key.
    pub async fn update_key(
        &self,
        id: &str,
        changes: KeyChanges,
        actor: &Actor,
    ) -> Result<ApiKey, KeyError> {
        if let Some(n) = &changes.name {
            validate::text("name", n, validate::MAX_NAME)?;
        }
        if let Some(p) = &changes.plan {
            validate::plan_name("plan", p)?;
        }
        if let Some(s) = &changes.scopes {
            validate::scopes("scopes.scopes", s)?;
        }
        if let Some(m) = &changes.metadata {
            validate::metadata("metadata", m)?;
        }
        if let Some(Some(l)) = &changes.limits {
            validate::limits("limits.limits", l, false)?;
        }
        let now = self.now();
        if let Some(Some(e)) = changes.expires_at
            && e <= now
        {
            return Err(KeyError::Invalid {
                field: "expires_at".into(),
                problem: "must be in the future".into(),
            });
        }
        let key = self.repo.update_key(id, &changes, actor, now).await?;
        self.changed(id.to_string());
        Ok(key)
    }

    /// # Errors
    /// [`KeyError::NotFound`], [`KeyError::FailedPrecondition`].
    pub async fn revoke_key(
        &self,
        id: &str,
        reason: &str,
        actor: &Actor,
    ) -> Result<ApiKey, KeyError> {
        validate::optional_text("reason", reason, validate::MAX_REASON)?;
        let key = self.repo.revoke_key(id, reason, actor, self.now()).await?;
        self.changed(id.to_string());
        Ok(key)
    }

    /// # Errors
    /// [`KeyError::Invalid`] for a grace period over 30 days;
    /// [`KeyError::NotFound`], [`KeyError::FailedPrecondition`].
    pub async fn rotate_key(
        &self,
        id: &str,
        grace: Duration,
        actor: &Actor,
    ) -> Result<RotatedKey, KeyError> {
        if grace.as_secs() > validate::MAX_GRACE_SECONDS {
            return Err(KeyError::Invalid {
                field: "grace_period".into(),
                problem: format!(
                    "must be at most {} s (30 days)",
                    validate::MAX_GRACE_SECONDS
                ),
            });
        }
        let current = self.get_key(id).await?;
        let prefix = current
            .hint
            .split_once("_...")
            .map_or(validate::DEFAULT_PREFIX, |(p, _)| p)
            .to_string();
        let fresh = self.hasher.generate(&prefix)?;
        let now = self.now();
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        let until = now.saturating_add(grace_ms);
        let key = self
            .repo
            .rotate_key(id, &fresh.hash, &fresh.hint, until, actor, now)
            .await?;
        self.changed(id.to_string());
        Ok(RotatedKey {
            key,
            secret: fresh.secret,
            previous_expires_at: until,
        })
    }

    // ---- admin: usage and audit ----

    /// Usage between two days; defaults to the last 30 days.
    ///
    /// # Errors
    /// [`KeyError::Invalid`] for a bad day or page size.
    pub async fn usage(
        &self,
        key_id: &str,
        from_day: &str,
        to_day: &str,
        after: (&str, &str),
        page_size: u32,
    ) -> Result<Vec<UsageDay>, KeyError> {
        let n = validate::page_size("page_size", page_size)?;
        let today = self.now().div_euclid(86_400_000);
        let from = if from_day.is_empty() {
            usage::day_string(today - 29)
        } else {
            validate::day("from_day", from_day)?;
            from_day.to_string()
        };
        let to = if to_day.is_empty() {
            usage::day_string(today)
        } else {
            validate::day("to_day", to_day)?;
            to_day.to_string()
        };
        Ok(self.repo.usage(key_id, &from, &to, after, n).await?)
    }

    /// # Errors
    /// [`KeyError::Invalid`] for a bad page size.
    pub async fn audit_events(
        &self,
        target: &str,
        actor: &str,
        before_id: i64,
        page_size: u32,
    ) -> Result<Vec<AuditEvent>, KeyError> {
        let n = validate::page_size("page_size", page_size)?;
        Ok(self.repo.audit_events(target, actor, before_id, n).await?)
    }
}

/// A plan from a checked draft, stamped `now` (an update keeps the stored
/// creation time).
fn checked_plan(d: PlanDraft, now: Millis) -> Result<Plan, KeyError> {
    validate::plan_name("plan.name", &d.name)?;
    validate::optional_text(
        "plan.description",
        &d.description,
        validate::MAX_DESCRIPTION,
    )?;
    validate::limits("plan.limits", &d.limits, d.quota.is_none())?;
    if let Some(q) = &d.quota {
        validate::quota("plan.monthly_quota", q)?;
    }
    Ok(Plan {
        name: d.name,
        description: d.description,
        limits: d.limits,
        quota: d.quota,
        created_at: now,
        updated_at: now,
    })
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

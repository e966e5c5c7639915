//! The admin side of API keys: plans and keys created, read, changed and
//! revoked (each change with its audit event, written by the repository
//! in the same transaction), usage and audit reads, and the change
//! notices that drop cached copies here and on other replicas.
//!
//! Needs no counter store: it never decides a limit.
//!
//! May depend on: the rest of `keys`. Knows nothing of gRPC.

use std::sync::Arc;
use std::time::Duration;

use super::cache::KeyCache;
use super::guard::AbuseGuard;
use super::hashing::{self, KeyHasher};
use super::model::{Actor, ApiKey, AuditEvent, Millis, Plan, UsageDay};
use super::repo::{Announce, KeyChanges, KeyFilter, Notice, Repository};
use super::{
    ChangeBus, CreatedKey, KeyError, NewKey, PlanDraft, RotatedKey, now_ms, usage, validate,
};
use crate::core::clock::SystemClock;

/// Keys and plans, as the admin API changes them.
#[derive(Debug)]
pub struct KeyAdmin {
    repo: Repository,
    hasher: KeyHasher,
    cache: Arc<KeyCache>,
    guard: Arc<AbuseGuard>,
    clock: SystemClock,
    bus: Option<Arc<dyn ChangeBus>>,
}

impl KeyAdmin {
    pub fn new(
        repo: Repository,
        hasher: KeyHasher,
        cache: Arc<KeyCache>,
        guard: Arc<AbuseGuard>,
        bus: Option<Arc<dyn ChangeBus>>,
    ) -> KeyAdmin {
        KeyAdmin {
            repo,
            hasher,
            cache,
            guard,
            clock: SystemClock::default(),
            bus,
        }
    }

    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    /// The admin-call allowance per token subject.
    pub fn guard(&self) -> &AbuseGuard {
        &self.guard
    }

    pub fn now(&self) -> Millis {
        now_ms(&self.clock)
    }

    // ---- admin: plans ----

    /// # Errors
    /// [`KeyError::Invalid`] naming the field; [`KeyError::AlreadyExists`].
    pub async fn create_plan(&self, draft: PlanDraft, actor: &Actor) -> Result<Plan, KeyError> {
        let plan = checked_plan(draft, self.now())?;
        self.repo.create_plan(&plan, actor).await?.announce(self);
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
        Ok(self.repo.update_plan(&plan, actor).await?.announce(self))
    }

    /// # Errors
    /// [`KeyError::FailedPrecondition`] while keys use the plan.
    pub async fn delete_plan(&self, name: &str, actor: &Actor) -> Result<(), KeyError> {
        validate::plan_name("name", name)?;
        self.repo
            .delete_plan(name, actor, self.now())
            .await?
            .announce(self);
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
        self.repo
            .create_key(&key, &fresh.hash, actor)
            .await?
            .announce(self);
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
        Ok(self
            .repo
            .update_key(id, &changes, actor, now)
            .await?
            .announce(self))
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
        Ok(self
            .repo
            .revoke_key(id, reason, actor, self.now())
            .await?
            .announce(self))
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
            .await?
            .announce(self);
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

/// A committed change's notice: dropped from this replica's cache at once,
/// and published to the others.
impl Announce for KeyAdmin {
    fn announce(&self, notice: &Notice) {
        let Some(payload) = notice.payload() else {
            return;
        };
        self.cache.apply_notice(&payload);
        if let Some(bus) = &self.bus {
            bus.publish(payload);
        }
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

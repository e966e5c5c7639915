//! The key store: plans, keys, secrets, daily usage and audit events in
//! PostgreSQL or SQLite, through sqlx's Any driver.
//!
//! One set of queries serves both databases: times are BIGINT
//! milliseconds, lists and objects are JSON text, booleans are 0/1, and
//! every statement is a constant with bound parameters (no SQL is built
//! from input). Every admin change and its audit event commit in one
//! transaction; on PostgreSQL the same transaction sends a NOTIFY so that
//! other replicas drop what they cached.
//!
//! May depend on: `keys::model`, sqlx. Knows nothing of gRPC or caching.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

use super::model::{
    Actor, ApiKey, AuditEvent, KeyState, Millis, Plan, PlanLimit, Quota, StoredLimit, UsageDay,
};

/// The channel key changes are announced on (PostgreSQL).
pub const NOTIFY_CHANNEL: &str = "sluice_keys";

/// Which database is behind the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A key-store failure.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("unsupported database URL {0:?}: use postgres://... or sqlite://...")]
    Scheme(String),
    #[error("key store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrating the key store: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row in {table}: {what}")]
    Corrupt { table: &'static str, what: String },
}

/// What a change found.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("no plan named {0:?}")]
    NoSuchPlan(String),
    #[error("plan {name:?} is used by {keys} key(s); move or revoke them first")]
    PlanInUse { name: String, keys: i64 },
    #[error("key {0} is revoked; a revoked key cannot change")]
    Revoked(String),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl From<sqlx::Error> for ChangeError {
    fn from(e: sqlx::Error) -> ChangeError {
        ChangeError::Repo(RepoError::Db(e))
    }
}

/// Changes to a key; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct KeyChanges {
    pub name: Option<String>,
    pub plan: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    pub enabled: Option<bool>,
    /// `Some(None)` removes the expiry.
    pub expires_at: Option<Option<Millis>>,
    /// `Some(None)` returns the key to its plan's limits.
    pub limits: Option<Option<Vec<PlanLimit>>>,
}

/// Which keys to list.
#[derive(Clone, Debug, Default)]
pub struct KeyFilter {
    pub owner_id: Option<String>,
    pub plan: Option<String>,
    pub state: Option<KeyState>,
}

/// One key's usage to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageDelta {
    pub key_id: String,
    pub day: String,
    pub admitted: u64,
    pub limited: u64,
}

/// A key found by a secret's hash.
#[derive(Debug)]
pub struct Found {
    pub key: ApiKey,
    pub plan: Plan,
    pub secret_expires_at: Option<Millis>,
}

macro_rules! key_columns {
    () => {
        "k.id, k.name, k.owner_id, k.plan, k.scopes, k.metadata, k.limits, k.hint, \
         k.enabled, k.expires_at, k.created_at, k.updated_at, k.last_used_at, k.revoked_at"
    };
}
const KEY_COLUMN_COUNT: usize = 14;

macro_rules! plan_columns {
    () => {
        "p.name, p.description, p.limits, p.quota_requests, p.quota_refill_day, \
         p.created_at, p.updated_at"
    };
}

/// The key store.
#[derive(Clone, Debug)]
pub struct Repository {
    pool: AnyPool,
    backend: Backend,
}

impl Repository {
    /// Connects (a SQLite file is created if missing).
    ///
    /// # Errors
    /// [`RepoError::Scheme`] for another URL; [`RepoError::Db`] when the
    /// database cannot be reached.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Repository, RepoError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(RepoError::Scheme(redact(url)));
        };
        let url = match backend {
            // Create the file on first start.
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_string(),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // Readers never wait for the writer; writers wait
                        // for each other instead of failing.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Repository { pool, backend })
    }

    pub const fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies pending migrations. On PostgreSQL, concurrent callers
    /// (replicas starting together) serialize on an advisory lock.
    ///
    /// # Errors
    /// [`RepoError::Migrate`] when a migration fails or the database holds
    /// migrations this binary does not know.
    pub async fn migrate(&self) -> Result<(), RepoError> {
        match self.backend {
            Backend::Postgres => {
                sqlx::migrate!("migrations/postgres")
                    .run(&self.pool)
                    .await?
            }
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&self.pool).await?,
        }
        Ok(())
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Closes the pool, waiting for connections in use.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- lookups on the request path ----

    /// The key whose (current or grace-period) secret hashes to `hash`.
    ///
    /// # Errors
    /// [`RepoError`] when the query fails or a row is corrupt.
    pub async fn find_by_hash(&self, hash: &str) -> Result<Option<Found>, RepoError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            ", s.expires_at, ",
            plan_columns!(),
            " FROM key_secrets s JOIN api_keys k ON k.id = s.key_id \
             JOIN plans p ON p.name = k.plan WHERE s.hash = $1"
        ))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let key = key_from_row(&row, 0)?;
        let secret_expires_at: Option<i64> = row.try_get(KEY_COLUMN_COUNT)?;
        let plan = plan_from_row(&row, KEY_COLUMN_COUNT + 1)?;
        Ok(Some(Found {
            key,
            plan,
            secret_expires_at,
        }))
    }

    // ---- plans ----

    /// # Errors
    /// [`ChangeError::AlreadyExists`] for a taken name.
    pub async fn create_plan(&self, plan: &Plan, actor: &Actor) -> Result<(), ChangeError> {
        let mut tx = self.pool.begin().await?;
        let exists = sqlx::query("SELECT 1 FROM plans WHERE name = $1")
            .bind(&plan.name)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(ChangeError::AlreadyExists(format!("plan {:?}", plan.name)));
        }
        let (quota_requests, refill_day) = quota_columns(plan.quota);
        sqlx::query(
            "INSERT INTO plans (name, description, limits, quota_requests, quota_refill_day, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&plan.name)
        .bind(&plan.description)
        .bind(limits_json(&plan.limits))
        .bind(quota_requests)
        .bind(refill_day)
        .bind(plan.created_at)
        .bind(plan.updated_at)
        .execute(&mut *tx)
        .await?;
        self.audit(
            &mut tx,
            actor,
            "plan.create",
            &format!("plan/{}", plan.name),
            plan_details(plan),
            plan.created_at,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// # Errors
    /// [`RepoError`] when the query fails.
    pub async fn get_plan(&self, name: &str) -> Result<Option<Plan>, RepoError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            plan_columns!(),
            " FROM plans p WHERE p.name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| plan_from_row(&r, 0)).transpose()
    }

    /// Plans after `after` by name, at most `limit`.
    ///
    /// # Errors
    /// [`RepoError`] when the query fails.
    pub async fn list_plans(&self, after: &str, limit: u32) -> Result<Vec<Plan>, RepoError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            plan_columns!(),
            " FROM plans p WHERE p.name > $1 ORDER BY p.name LIMIT $2"
        ))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| plan_from_row(r, 0)).collect()
    }

    /// Replaces a plan's description, limits and quota.
    ///
    /// # Errors
    /// [`ChangeError::NotFound`] for an unknown plan.
    pub async fn update_plan(&self, plan: &Plan, actor: &Actor) -> Result<Plan, ChangeError> {
        let mut tx = self.pool.begin().await?;
        let (quota_requests, refill_day) = quota_columns(plan.quota);
        let done = sqlx::query(
            "UPDATE plans SET description = $2, limits = $3, quota_requests = $4, \
             quota_refill_day = $5, updated_at = $6 WHERE name = $1",
        )
        .bind(&plan.name)
        .bind(&plan.description)
        .bind(limits_json(&plan.limits))
        .bind(quota_requests)
        .bind(refill_day)
        .bind(plan.updated_at)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(ChangeError::NotFound(format!("plan {:?}", plan.name)));
        }
        let row = sqlx::query(concat!(
            "SELECT ",
            plan_columns!(),
            " FROM plans p WHERE p.name = $1"
        ))
        .bind(&plan.name)
        .fetch_one(&mut *tx)
        .await?;
        let stored = plan_from_row(&row, 0)?;
        self.audit(
            &mut tx,
            actor,
            "plan.update",
            &format!("plan/{}", plan.name),
            plan_details(plan),
            plan.updated_at,
        )
        .await?;
        self.notify(&mut tx, &format!("plan:{}", plan.name)).await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// # Errors
    /// [`ChangeError::PlanInUse`] while keys (revoked ones included) use
    /// it; [`ChangeError::NotFound`] for an unknown plan.
    pub async fn delete_plan(
        &self,
        name: &str,
        actor: &Actor,
        now: Millis,
    ) -> Result<(), ChangeError> {
        let mut tx = self.pool.begin().await?;
        let keys: i64 = sqlx::query("SELECT COUNT(*) FROM api_keys WHERE plan = $1")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if keys > 0 {
            return Err(ChangeError::PlanInUse {
                name: name.to_string(),
                keys,
            });
        }
        let done = sqlx::query("DELETE FROM plans WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(|e| in_use_or(e, name))?;
        if done.rows_affected() == 0 {
            return Err(ChangeError::NotFound(format!("plan {name:?}")));
        }
        self.audit(
            &mut tx,
            actor,
            "plan.delete",
            &format!("plan/{name}"),
            serde_json::json!({}),
            now,
        )
        .await?;
        tx.commit().await.map_err(|e| in_use_or(e, name))?;
        Ok(())
    }

    // ---- keys ----

    /// Stores a new key and its first secret's hash.
    ///
    /// # Errors
    /// [`ChangeError::NoSuchPlan`] for an unknown plan.
    pub async fn create_key(
        &self,
        key: &ApiKey,
        hash: &str,
        actor: &Actor,
    ) -> Result<(), ChangeError> {
        let mut tx = self.pool.begin().await?;
        ensure_plan(&mut tx, &key.plan).await?;
        sqlx::query(
            "INSERT INTO api_keys (id, name, owner_id, plan, scopes, metadata, limits, hint, \
             enabled, expires_at, created_at, updated_at, last_used_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, NULL, NULL)",
        )
        .bind(&key.id)
        .bind(&key.name)
        .bind(&key.owner_id)
        .bind(&key.plan)
        .bind(json_text(&key.scopes))
        .bind(json_text(&key.metadata))
        .bind(key.limits.as_deref().map(limits_json))
        .bind(&key.hint)
        .bind(i64::from(key.enabled))
        .bind(key.expires_at)
        .bind(key.created_at)
        .bind(key.updated_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO key_secrets (hash, key_id, created_at, expires_at) VALUES ($1, $2, $3, NULL)",
        )
        .bind(hash)
        .bind(&key.id)
        .bind(key.created_at)
        .execute(&mut *tx)
        .await?;
        self.audit(
            &mut tx,
            actor,
            "key.create",
            &format!("key/{}", key.id),
            key_details(key),
            key.created_at,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// # Errors
    /// [`RepoError`] when the query fails.
    pub async fn get_key(&self, id: &str) -> Result<Option<ApiKey>, RepoError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys k WHERE k.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| key_from_row(&r, 0)).transpose()
    }

    /// Keys matching `filter` with ids after `after`, at most `limit`.
    ///
    /// # Errors
    /// [`RepoError`] when the query fails.
    pub async fn list_keys(
        &self,
        filter: &KeyFilter,
        after: &str,
        limit: u32,
        now: Millis,
    ) -> Result<Vec<ApiKey>, RepoError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys k WHERE k.id > $1 \
             AND ($2 = '' OR k.owner_id = $2) AND ($3 = '' OR k.plan = $3) \
             AND ($4 = 0 \
               OR ($4 = 1 AND k.revoked_at IS NULL AND k.enabled = 1 \
                   AND (k.expires_at IS NULL OR k.expires_at > $5)) \
               OR ($4 = 2 AND k.revoked_at IS NULL AND k.enabled = 0) \
               OR ($4 = 3 AND k.revoked_at IS NULL AND k.enabled = 1 \
                   AND k.expires_at IS NOT NULL AND k.expires_at <= $5) \
               OR ($4 = 4 AND k.revoked_at IS NOT NULL)) \
             ORDER BY k.id LIMIT $6"
        ))
        .bind(after)
        .bind(filter.owner_id.as_deref().unwrap_or(""))
        .bind(filter.plan.as_deref().unwrap_or(""))
        .bind(filter.state.map_or(0, KeyState::number))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| key_from_row(r, 0)).collect()
    }

    /// Applies `changes` to a key that is not revoked; returns the result.
    ///
    /// # Errors
    /// [`ChangeError::NotFound`], [`ChangeError::Revoked`],
    /// [`ChangeError::NoSuchPlan`].
    pub async fn update_key(
        &self,
        id: &str,
        changes: &KeyChanges,
        actor: &Actor,
        now: Millis,
    ) -> Result<ApiKey, ChangeError> {
        let mut tx = self.pool.begin().await?;
        if let Some(plan) = &changes.plan {
            ensure_plan(&mut tx, plan).await?;
        }
        let (set_expiry, expiry) = match changes.expires_at {
            Some(e) => (1i64, e),
            None => (0, None),
        };
        let (set_limits, limits) = match &changes.limits {
            Some(l) => (1i64, l.as_deref().map(limits_json)),
            None => (0, None),
        };
        let done = sqlx::query(
            "UPDATE api_keys SET \
               name = COALESCE($2, name), plan = COALESCE($3, plan), \
               scopes = COALESCE($4, scopes), metadata = COALESCE($5, metadata), \
               enabled = COALESCE($6, enabled), \
               expires_at = CASE WHEN $7 = 1 THEN $8 ELSE expires_at END, \
               limits = CASE WHEN $9 = 1 THEN $10 ELSE limits END, \
               updated_at = $11 \
             WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(changes.name.as_deref())
        .bind(changes.plan.as_deref())
        .bind(changes.scopes.as_ref().map(json_text))
        .bind(changes.metadata.as_ref().map(json_text))
        .bind(changes.enabled.map(i64::from))
        .bind(set_expiry)
        .bind(expiry)
        .bind(set_limits)
        .bind(limits)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(missing_or_revoked(&mut tx, id).await);
        }
        let key = fetch_key(&mut tx, id).await?;
        self.audit(
            &mut tx,
            actor,
            "key.update",
            &format!("key/{id}"),
            changes_details(changes),
            now,
        )
        .await?;
        self.notify(&mut tx, id).await?;
        tx.commit().await?;
        Ok(key)
    }

    /// Revokes a key: final, and its secrets stop working at once.
    ///
    /// # Errors
    /// [`ChangeError::NotFound`], [`ChangeError::Revoked`].
    pub async fn revoke_key(
        &self,
        id: &str,
        reason: &str,
        actor: &Actor,
        now: Millis,
    ) -> Result<ApiKey, ChangeError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = $2, updated_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(missing_or_revoked(&mut tx, id).await);
        }
        let key = fetch_key(&mut tx, id).await?;
        self.audit(
            &mut tx,
            actor,
            "key.revoke",
            &format!("key/{id}"),
            serde_json::json!({ "reason": reason }),
            now,
        )
        .await?;
        self.notify(&mut tx, id).await?;
        tx.commit().await?;
        Ok(key)
    }

    /// Adds a new current secret; every older secret stops working at
    /// `grace_until` (or earlier, if it was already due to).
    ///
    /// # Errors
    /// [`ChangeError::NotFound`], [`ChangeError::Revoked`].
    pub async fn rotate_key(
        &self,
        id: &str,
        new_hash: &str,
        new_hint: &str,
        grace_until: Millis,
        actor: &Actor,
        now: Millis,
    ) -> Result<ApiKey, ChangeError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE api_keys SET hint = $2, updated_at = $3 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(new_hint)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(missing_or_revoked(&mut tx, id).await);
        }
        sqlx::query(
            "UPDATE key_secrets SET expires_at = $2 \
             WHERE key_id = $1 AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(id)
        .bind(grace_until)
        .execute(&mut *tx)
        .await?;
        // Secrets past their grace period identify nothing any more.
        sqlx::query("DELETE FROM key_secrets WHERE key_id = $1 AND expires_at <= $2")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO key_secrets (hash, key_id, created_at, expires_at) VALUES ($1, $2, $3, NULL)",
        )
        .bind(new_hash)
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let key = fetch_key(&mut tx, id).await?;
        self.audit(
            &mut tx,
            actor,
            "key.rotate",
            &format!("key/{id}"),
            serde_json::json!({ "previous_secret_expires_at": grace_until, "hint": new_hint }),
            now,
        )
        .await?;
        self.notify(&mut tx, id).await?;
        tx.commit().await?;
        Ok(key)
    }

    // ---- usage ----

    /// Adds usage and moves `last_used_at` forward, in one transaction.
    ///
    /// # Errors
    /// [`RepoError`]; nothing is written then.
    pub async fn add_usage(
        &self,
        deltas: &[UsageDelta],
        last_used: &[(String, Millis)],
    ) -> Result<(), RepoError> {
        if deltas.is_empty() && last_used.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for d in deltas {
            sqlx::query(
                "INSERT INTO usage_daily (key_id, day, admitted, limited) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (key_id, day) DO UPDATE SET \
                   admitted = usage_daily.admitted + excluded.admitted, \
                   limited = usage_daily.limited + excluded.limited",
            )
            .bind(&d.key_id)
            .bind(&d.day)
            .bind(i64::try_from(d.admitted).unwrap_or(i64::MAX))
            .bind(i64::try_from(d.limited).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
        }
        for (id, at) in last_used {
            sqlx::query(
                "UPDATE api_keys SET last_used_at = $2 \
                 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
            )
            .bind(id)
            .bind(*at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Usage rows between two days (inclusive), ordered by day then key,
    /// after the `(day, key_id)` cursor.
    ///
    /// # Errors
    /// [`RepoError`] when the query fails.
    pub async fn usage(
        &self,
        key_id: &str,
        from_day: &str,
        to_day: &str,
        after: (&str, &str),
        limit: u32,
    ) -> Result<Vec<UsageDay>, RepoError> {
        let rows = sqlx::query(
            "SELECT key_id, day, admitted, limited FROM usage_daily \
             WHERE ($1 = '' OR key_id = $1) AND day >= $2 AND day <= $3 \
             AND (day > $4 OR (day = $4 AND key_id > $5)) \
             ORDER BY day, key_id LIMIT $6",
        )
        .bind(key_id)
        .bind(from_day)
        .bind(to_day)
        .bind(after.0)
        .bind(after.1)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let admitted: i64 = r.try_get(2)?;
                let limited: i64 = r.try_get(3)?;
                Ok(UsageDay {
                    key_id: r.try_get(0)?,
                    day: r.try_get(1)?,
                    admitted: u64::try_from(admitted).unwrap_or(0),
                    limited: u64::try_from(limited).unwrap_or(0),
                })
            })
            .collect()
    }

    // ---- audit ----

    /// Events newest first, older than `before_id` (0: from the newest).
    ///
    /// # Errors
    /// [`RepoError`] when the query fails.
    pub async fn audit_events(
        &self,
        target: &str,
        actor: &str,
        before_id: i64,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, RepoError> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, request_id, details FROM audit_events \
             WHERE ($1 = '' OR target = $1) AND ($2 = '' OR actor = $2) \
             AND ($3 = 0 OR id < $3) ORDER BY id DESC LIMIT $4",
        )
        .bind(target)
        .bind(actor)
        .bind(before_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let details: String = r.try_get(6)?;
                Ok(AuditEvent {
                    id: r.try_get(0)?,
                    at: r.try_get(1)?,
                    actor: r.try_get(2)?,
                    action: r.try_get(3)?,
                    target: r.try_get(4)?,
                    request_id: r.try_get(5)?,
                    details: serde_json::from_str(&details).map_err(|e| RepoError::Corrupt {
                        table: "audit_events",
                        what: e.to_string(),
                    })?,
                })
            })
            .collect()
    }

    async fn audit(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        actor: &Actor,
        action: &str,
        target: &str,
        details: serde_json::Value,
        at: Millis,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO audit_events (at, actor, action, target, request_id, details) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(at)
        .bind(&actor.subject)
        .bind(action)
        .bind(target)
        .bind(&actor.request_id)
        .bind(details.to_string())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Announces a change to other replicas when the transaction commits
    /// (PostgreSQL; elsewhere another channel carries it).
    async fn notify(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        payload: &str,
    ) -> Result<(), sqlx::Error> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)::text")
                .bind(NOTIFY_CHANNEL)
                .bind(payload)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

async fn ensure_plan(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    plan: &str,
) -> Result<(), ChangeError> {
    let found = sqlx::query("SELECT 1 FROM plans WHERE name = $1")
        .bind(plan)
        .fetch_optional(&mut **tx)
        .await?;
    match found {
        Some(_) => Ok(()),
        None => Err(ChangeError::NoSuchPlan(plan.to_string())),
    }
}

async fn fetch_key(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
) -> Result<ApiKey, ChangeError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys k WHERE k.id = $1"
    ))
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(key_from_row(&row, 0)?)
}

async fn missing_or_revoked(tx: &mut sqlx::Transaction<'_, sqlx::Any>, id: &str) -> ChangeError {
    match sqlx::query("SELECT 1 FROM api_keys WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
    {
        Ok(Some(_)) => ChangeError::Revoked(id.to_string()),
        Ok(None) => ChangeError::NotFound(format!("key {id:?}")),
        Err(e) => e.into(),
    }
}

/// A foreign-key violation while deleting a plan means a key was added
/// to it meanwhile.
fn in_use_or(e: sqlx::Error, name: &str) -> ChangeError {
    if let sqlx::Error::Database(db) = &e
        && db.is_foreign_key_violation()
    {
        return ChangeError::PlanInUse {
            name: name.to_string(),
            keys: 1,
        };
    }
    e.into()
}

fn quota_columns(q: Option<Quota>) -> (Option<i64>, Option<i64>) {
    match q {
        Some(q) => (Some(i64::from(q.requests)), Some(i64::from(q.refill_day))),
        None => (None, None),
    }
}

fn json_text<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn limits_json(limits: &[PlanLimit]) -> String {
    let stored: Vec<StoredLimit> = limits.iter().map(StoredLimit::from).collect();
    json_text(&stored)
}

fn parse_limits(table: &'static str, text: &str) -> Result<Vec<PlanLimit>, RepoError> {
    let stored: Vec<StoredLimit> = serde_json::from_str(text).map_err(|e| RepoError::Corrupt {
        table,
        what: format!("limits: {e}"),
    })?;
    stored
        .into_iter()
        .map(|s| {
            s.into_limit().ok_or_else(|| RepoError::Corrupt {
                table,
                what: "limits: unknown unit or algorithm".into(),
            })
        })
        .collect()
}

fn corrupt(table: &'static str, what: impl std::fmt::Display) -> RepoError {
    RepoError::Corrupt {
        table,
        what: what.to_string(),
    }
}

fn key_from_row(row: &AnyRow, at: usize) -> Result<ApiKey, RepoError> {
    let scopes: String = row.try_get(at + 4)?;
    let metadata: String = row.try_get(at + 5)?;
    let limits: Option<String> = row.try_get(at + 6)?;
    let enabled: i64 = row.try_get(at + 8)?;
    Ok(ApiKey {
        id: row.try_get(at)?,
        name: row.try_get(at + 1)?,
        owner_id: row.try_get(at + 2)?,
        plan: row.try_get(at + 3)?,
        scopes: serde_json::from_str(&scopes).map_err(|e| corrupt("api_keys", e))?,
        metadata: serde_json::from_str(&metadata).map_err(|e| corrupt("api_keys", e))?,
        limits: limits.map(|l| parse_limits("api_keys", &l)).transpose()?,
        hint: row.try_get(at + 7)?,
        enabled: enabled != 0,
        expires_at: row.try_get(at + 9)?,
        created_at: row.try_get(at + 10)?,
        updated_at: row.try_get(at + 11)?,
        last_used_at: row.try_get(at + 12)?,
        revoked_at: row.try_get(at + 13)?,
    })
}

fn plan_from_row(row: &AnyRow, at: usize) -> Result<Plan, RepoError> {
    let limits: String = row.try_get(at + 2)?;
    let quota_requests: Option<i64> = row.try_get(at + 3)?;
    let refill_day: Option<i64> = row.try_get(at + 4)?;
    let quota = match (quota_requests, refill_day) {
        (Some(r), Some(d)) => Some(Quota {
            requests: u32::try_from(r).map_err(|e| corrupt("plans", e))?,
            refill_day: u8::try_from(d).map_err(|e| corrupt("plans", e))?,
        }),
        _ => None,
    };
    Ok(Plan {
        name: row.try_get(at)?,
        description: row.try_get(at + 1)?,
        limits: parse_limits("plans", &limits)?,
        quota,
        created_at: row.try_get(at + 5)?,
        updated_at: row.try_get(at + 6)?,
    })
}

fn plan_details(plan: &Plan) -> serde_json::Value {
    serde_json::json!({
        "description": plan.description,
        "limits": plan.limits.iter().map(PlanLimit::label).collect::<Vec<_>>(),
        "monthly_quota": plan.quota,
    })
}

fn key_details(key: &ApiKey) -> serde_json::Value {
    serde_json::json!({
        "name": key.name,
        "owner_id": key.owner_id,
        "plan": key.plan,
        "scopes": key.scopes,
        "expires_at": key.expires_at,
        "hint": key.hint,
        "limits": key.limits.as_ref().map(|l| l.iter().map(PlanLimit::label).collect::<Vec<_>>()),
    })
}

fn changes_details(c: &KeyChanges) -> serde_json::Value {
    let mut d = serde_json::Map::new();
    if let Some(v) = &c.name {
        d.insert("name".into(), v.clone().into());
    }
    if let Some(v) = &c.plan {
        d.insert("plan".into(), v.clone().into());
    }
    if let Some(v) = &c.scopes {
        d.insert("scopes".into(), serde_json::json!(v));
    }
    if c.metadata.is_some() {
        d.insert("metadata".into(), "changed".into());
    }
    if let Some(v) = c.enabled {
        d.insert("enabled".into(), v.into());
    }
    if let Some(v) = c.expires_at {
        d.insert("expires_at".into(), serde_json::json!(v));
    }
    if let Some(v) = &c.limits {
        d.insert(
            "limits".into(),
            serde_json::json!(
                v.as_ref()
                    .map(|l| l.iter().map(PlanLimit::label).collect::<Vec<_>>())
            ),
        );
    }
    serde_json::Value::Object(d)
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

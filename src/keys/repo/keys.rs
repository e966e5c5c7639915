//! The `api_keys` and `key_secrets` tables: keys, their secrets' hashes,
//! and the lookup on the request path.

use super::plans::{PlanRow, ensure_plan, plan_columns};
use super::{
    Audit, ChangeError, Committed, Notice, RepoError, Repository, corrupt, json_text, limits_json,
    parse_limits,
};
use crate::keys::model::{Actor, ApiKey, KeyState, Millis, Plan, PlanLimit};

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

/// A row of `api_keys`, as stored.
#[derive(Debug, sqlx::FromRow)]
struct KeyRow {
    id: String,
    name: String,
    owner_id: String,
    plan: String,
    /// JSON array of strings.
    scopes: String,
    /// JSON object.
    metadata: String,
    /// JSON array of limits, or NULL for the plan's.
    limits: Option<String>,
    hint: String,
    /// 0 or 1.
    enabled: i64,
    expires_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
}

/// A key, the secret it was found by, and its plan.
#[derive(Debug, sqlx::FromRow)]
struct FoundRow {
    #[sqlx(flatten)]
    key: KeyRow,
    secret_expires_at: Option<i64>,
    #[sqlx(flatten)]
    plan: PlanRow,
}

impl TryFrom<KeyRow> for ApiKey {
    type Error = RepoError;

    fn try_from(r: KeyRow) -> Result<ApiKey, RepoError> {
        Ok(ApiKey {
            scopes: serde_json::from_str(&r.scopes).map_err(|e| corrupt("api_keys", e))?,
            metadata: serde_json::from_str(&r.metadata).map_err(|e| corrupt("api_keys", e))?,
            limits: r.limits.map(|l| parse_limits("api_keys", &l)).transpose()?,
            id: r.id,
            name: r.name,
            owner_id: r.owner_id,
            plan: r.plan,
            hint: r.hint,
            enabled: r.enabled != 0,
            expires_at: r.expires_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
        })
    }
}

fn details(key: &ApiKey) -> serde_json::Value {
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

async fn fetch_key(conn: &mut sqlx::AnyConnection, id: &str) -> Result<ApiKey, ChangeError> {
    let row: KeyRow = sqlx::query_as(concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys k WHERE k.id = $1"
    ))
    .bind(id)
    .fetch_one(conn)
    .await?;
    Ok(ApiKey::try_from(row)?)
}

/// Why a change to a key that is not revoked touched no row.
async fn missing_or_revoked(conn: &mut sqlx::AnyConnection, id: &str) -> ChangeError {
    let found: Result<Option<String>, _> =
        sqlx::query_scalar("SELECT id FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await;
    match found {
        Ok(Some(_)) => ChangeError::Revoked(id.to_string()),
        Ok(None) => ChangeError::NotFound(format!("key {id:?}")),
        Err(e) => e.into(),
    }
}

impl Repository {
    // ---- the request path ----

    /// The key whose (current or grace-period) secret hashes to `hash`.
    ///
    /// # Errors
    /// [`RepoError`] when the query fails or a row is corrupt.
    pub async fn find_by_hash(&self, hash: &str) -> Result<Option<Found>, RepoError> {
        let row: Option<FoundRow> = sqlx::query_as(concat!(
            "SELECT ",
            key_columns!(),
            ", s.expires_at AS secret_expires_at, ",
            plan_columns!(),
            " FROM key_secrets s JOIN api_keys k ON k.id = s.key_id \
             JOIN plans p ON p.name = k.plan WHERE s.hash = $1"
        ))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(Found {
            key: ApiKey::try_from(row.key)?,
            plan: Plan::try_from(row.plan)?,
            secret_expires_at: row.secret_expires_at,
        }))
    }

    // ---- admin ----

    /// Stores a new key and its first secret's hash.
    ///
    /// # Errors
    /// [`ChangeError::NoSuchPlan`] for an unknown plan.
    pub async fn create_key(
        &self,
        key: &ApiKey,
        hash: &str,
        actor: &Actor,
    ) -> Result<Committed<()>, ChangeError> {
        let mut w = self.begin().await?;
        ensure_plan(w.conn(), &key.plan).await?;
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
        .execute(w.conn())
        .await?;
        sqlx::query(
            "INSERT INTO key_secrets (hash, key_id, created_at, expires_at) VALUES ($1, $2, $3, NULL)",
        )
        .bind(hash)
        .bind(&key.id)
        .bind(key.created_at)
        .execute(w.conn())
        .await?;
        let audit = Audit {
            actor,
            action: "key.create",
            target: format!("key/{}", key.id),
            details: details(key),
            at: key.created_at,
        };
        // A new random secret: no replica can have cached its hash.
        Ok(w.commit(audit, Notice::None, ()).await?)
    }

    /// # Errors
    /// [`RepoError`] when the query fails.
    pub async fn get_key(&self, id: &str) -> Result<Option<ApiKey>, RepoError> {
        let row: Option<KeyRow> = sqlx::query_as(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys k WHERE k.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(ApiKey::try_from).transpose()
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
        let rows: Vec<KeyRow> = sqlx::query_as(concat!(
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
        rows.into_iter().map(ApiKey::try_from).collect()
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
    ) -> Result<Committed<ApiKey>, ChangeError> {
        let mut w = self.begin().await?;
        if let Some(plan) = &changes.plan {
            ensure_plan(w.conn(), plan).await?;
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
        .execute(w.conn())
        .await?;
        if done.rows_affected() == 0 {
            return Err(missing_or_revoked(w.conn(), id).await);
        }
        let key = fetch_key(w.conn(), id).await?;
        let audit = Audit {
            actor,
            action: "key.update",
            target: format!("key/{id}"),
            details: changes_details(changes),
            at: now,
        };
        Ok(w.commit(audit, Notice::Key(id.to_string()), key).await?)
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
    ) -> Result<Committed<ApiKey>, ChangeError> {
        let mut w = self.begin().await?;
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = $2, updated_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .execute(w.conn())
        .await?;
        if done.rows_affected() == 0 {
            return Err(missing_or_revoked(w.conn(), id).await);
        }
        let key = fetch_key(w.conn(), id).await?;
        let audit = Audit {
            actor,
            action: "key.revoke",
            target: format!("key/{id}"),
            details: serde_json::json!({ "reason": reason }),
            at: now,
        };
        Ok(w.commit(audit, Notice::Key(id.to_string()), key).await?)
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
    ) -> Result<Committed<ApiKey>, ChangeError> {
        let mut w = self.begin().await?;
        let done = sqlx::query(
            "UPDATE api_keys SET hint = $2, updated_at = $3 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(new_hint)
        .bind(now)
        .execute(w.conn())
        .await?;
        if done.rows_affected() == 0 {
            return Err(missing_or_revoked(w.conn(), id).await);
        }
        sqlx::query(
            "UPDATE key_secrets SET expires_at = $2 \
             WHERE key_id = $1 AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(id)
        .bind(grace_until)
        .execute(w.conn())
        .await?;
        // Secrets past their grace period identify nothing any more.
        sqlx::query("DELETE FROM key_secrets WHERE key_id = $1 AND expires_at <= $2")
            .bind(id)
            .bind(now)
            .execute(w.conn())
            .await?;
        sqlx::query(
            "INSERT INTO key_secrets (hash, key_id, created_at, expires_at) VALUES ($1, $2, $3, NULL)",
        )
        .bind(new_hash)
        .bind(id)
        .bind(now)
        .execute(w.conn())
        .await?;
        let key = fetch_key(w.conn(), id).await?;
        let audit = Audit {
            actor,
            action: "key.rotate",
            target: format!("key/{id}"),
            details: serde_json::json!({
                "previous_secret_expires_at": grace_until,
                "hint": new_hint,
            }),
            at: now,
        };
        Ok(w.commit(audit, Notice::Key(id.to_string()), key).await?)
    }
}

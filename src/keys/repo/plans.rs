//! The `plans` table.

use super::{
    Audit, ChangeError, Committed, Notice, RepoError, Repository, corrupt, limits_json,
    parse_limits,
};
use crate::keys::model::{Actor, Millis, Plan, PlanLimit, Quota};

/// The columns of a [`PlanRow`], aliased so that they never collide with
/// a key's in a join.
macro_rules! plan_columns {
    () => {
        "p.name AS plan_name, p.description AS plan_description, p.limits AS plan_limits, \
         p.quota_requests AS plan_quota_requests, p.quota_refill_day AS plan_quota_refill_day, \
         p.created_at AS plan_created_at, p.updated_at AS plan_updated_at"
    };
}
pub(super) use plan_columns;

/// A row of `plans`, as stored.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct PlanRow {
    plan_name: String,
    plan_description: String,
    plan_limits: String,
    plan_quota_requests: Option<i64>,
    plan_quota_refill_day: Option<i64>,
    plan_created_at: i64,
    plan_updated_at: i64,
}

impl TryFrom<PlanRow> for Plan {
    type Error = RepoError;

    fn try_from(r: PlanRow) -> Result<Plan, RepoError> {
        let quota = match (r.plan_quota_requests, r.plan_quota_refill_day) {
            (Some(requests), Some(day)) => Some(Quota {
                requests: u32::try_from(requests).map_err(|e| corrupt("plans", e))?,
                refill_day: u8::try_from(day).map_err(|e| corrupt("plans", e))?,
            }),
            _ => None,
        };
        Ok(Plan {
            limits: parse_limits("plans", &r.plan_limits)?,
            name: r.plan_name,
            description: r.plan_description,
            quota,
            created_at: r.plan_created_at,
            updated_at: r.plan_updated_at,
        })
    }
}

fn quota_columns(q: Option<Quota>) -> (Option<i64>, Option<i64>) {
    match q {
        Some(q) => (Some(i64::from(q.requests)), Some(i64::from(q.refill_day))),
        None => (None, None),
    }
}

fn details(plan: &Plan) -> serde_json::Value {
    serde_json::json!({
        "description": plan.description,
        "limits": plan.limits.iter().map(PlanLimit::label).collect::<Vec<_>>(),
        "monthly_quota": plan.quota,
    })
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

/// Whether a plan named `plan` exists, inside a change.
pub(super) async fn ensure_plan(
    conn: &mut sqlx::AnyConnection,
    plan: &str,
) -> Result<(), ChangeError> {
    let found: Option<String> = sqlx::query_scalar("SELECT name FROM plans WHERE name = $1")
        .bind(plan)
        .fetch_optional(conn)
        .await?;
    match found {
        Some(_) => Ok(()),
        None => Err(ChangeError::NoSuchPlan(plan.to_string())),
    }
}

impl Repository {
    /// # Errors
    /// [`ChangeError::AlreadyExists`] for a taken name.
    pub async fn create_plan(
        &self,
        plan: &Plan,
        actor: &Actor,
    ) -> Result<Committed<()>, ChangeError> {
        let mut w = self.begin().await?;
        let exists: Option<String> = sqlx::query_scalar("SELECT name FROM plans WHERE name = $1")
            .bind(&plan.name)
            .fetch_optional(w.conn())
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
        .execute(w.conn())
        .await?;
        let audit = Audit {
            actor,
            action: "plan.create",
            target: format!("plan/{}", plan.name),
            details: details(plan),
            at: plan.created_at,
        };
        Ok(w.commit(audit, Notice::None, ()).await?)
    }

    /// # Errors
    /// [`RepoError`] when the query fails.
    pub async fn get_plan(&self, name: &str) -> Result<Option<Plan>, RepoError> {
        let row: Option<PlanRow> = sqlx::query_as(concat!(
            "SELECT ",
            plan_columns!(),
            " FROM plans p WHERE p.name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Plan::try_from).transpose()
    }

    /// Plans after `after` by name, at most `limit`.
    ///
    /// # Errors
    /// [`RepoError`] when the query fails.
    pub async fn list_plans(&self, after: &str, limit: u32) -> Result<Vec<Plan>, RepoError> {
        let rows: Vec<PlanRow> = sqlx::query_as(concat!(
            "SELECT ",
            plan_columns!(),
            " FROM plans p WHERE p.name > $1 ORDER BY p.name LIMIT $2"
        ))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Plan::try_from).collect()
    }

    /// Replaces a plan's description, limits and quota.
    ///
    /// # Errors
    /// [`ChangeError::NotFound`] for an unknown plan.
    pub async fn update_plan(
        &self,
        plan: &Plan,
        actor: &Actor,
    ) -> Result<Committed<Plan>, ChangeError> {
        let mut w = self.begin().await?;
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
        .execute(w.conn())
        .await?;
        if done.rows_affected() == 0 {
            return Err(ChangeError::NotFound(format!("plan {:?}", plan.name)));
        }
        let row: PlanRow = sqlx::query_as(concat!(
            "SELECT ",
            plan_columns!(),
            " FROM plans p WHERE p.name = $1"
        ))
        .bind(&plan.name)
        .fetch_one(w.conn())
        .await?;
        let stored = Plan::try_from(row)?;
        let audit = Audit {
            actor,
            action: "plan.update",
            target: format!("plan/{}", plan.name),
            details: details(plan),
            at: plan.updated_at,
        };
        let notice = Notice::Plan(plan.name.clone());
        Ok(w.commit(audit, notice, stored).await?)
    }

    /// # Errors
    /// [`ChangeError::PlanInUse`] while keys (revoked ones included) use
    /// it; [`ChangeError::NotFound`] for an unknown plan.
    pub async fn delete_plan(
        &self,
        name: &str,
        actor: &Actor,
        now: Millis,
    ) -> Result<Committed<()>, ChangeError> {
        let mut w = self.begin().await?;
        let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE plan = $1")
            .bind(name)
            .fetch_one(w.conn())
            .await?;
        if keys > 0 {
            return Err(ChangeError::PlanInUse {
                name: name.to_string(),
                keys,
            });
        }
        let done = sqlx::query("DELETE FROM plans WHERE name = $1")
            .bind(name)
            .execute(w.conn())
            .await
            .map_err(|e| in_use_or(e, name))?;
        if done.rows_affected() == 0 {
            return Err(ChangeError::NotFound(format!("plan {name:?}")));
        }
        let audit = Audit {
            actor,
            action: "plan.delete",
            target: format!("plan/{name}"),
            details: serde_json::json!({}),
            at: now,
        };
        // No key uses the plan, so nothing cached refers to it.
        w.commit(audit, Notice::None, ())
            .await
            .map_err(|e| in_use_or(e, name))
    }
}

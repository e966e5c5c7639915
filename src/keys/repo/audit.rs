//! The `audit_events` table: written only by [`super::Work::commit`], in
//! the transaction of the change it records.

use super::{Audit, RepoError, Repository, corrupt};
use crate::keys::model::AuditEvent;

/// A row of `audit_events`.
#[derive(Debug, sqlx::FromRow)]
struct AuditRow {
    id: i64,
    at: i64,
    actor: String,
    action: String,
    target: String,
    request_id: String,
    /// JSON object.
    details: String,
}

impl TryFrom<AuditRow> for AuditEvent {
    type Error = RepoError;

    fn try_from(r: AuditRow) -> Result<AuditEvent, RepoError> {
        Ok(AuditEvent {
            details: serde_json::from_str(&r.details).map_err(|e| corrupt("audit_events", e))?,
            id: r.id,
            at: r.at,
            actor: r.actor,
            action: r.action,
            target: r.target,
            request_id: r.request_id,
        })
    }
}

/// Records `audit` in the change's transaction.
pub(super) async fn insert(
    conn: &mut sqlx::AnyConnection,
    audit: &Audit<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_events (at, actor, action, target, request_id, details) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(audit.at)
    .bind(&audit.actor.subject)
    .bind(audit.action)
    .bind(&audit.target)
    .bind(&audit.actor.request_id)
    .bind(audit.details.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

impl Repository {
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
        let rows: Vec<AuditRow> = sqlx::query_as(
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
        rows.into_iter().map(AuditEvent::try_from).collect()
    }
}

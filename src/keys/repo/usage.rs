//! The `usage_daily` table, and `api_keys.last_used_at`, written by the
//! usage flusher.

use super::{RepoError, Repository};
use crate::keys::model::{Millis, UsageDay};

/// One key's usage to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageDelta {
    pub key_id: String,
    pub day: String,
    pub admitted: u64,
    pub limited: u64,
}

/// A row of `usage_daily`.
#[derive(Debug, sqlx::FromRow)]
struct UsageRow {
    key_id: String,
    day: String,
    admitted: i64,
    limited: i64,
}

impl From<UsageRow> for UsageDay {
    fn from(r: UsageRow) -> UsageDay {
        UsageDay {
            key_id: r.key_id,
            day: r.day,
            admitted: u64::try_from(r.admitted).unwrap_or(0),
            limited: u64::try_from(r.limited).unwrap_or(0),
        }
    }
}

impl Repository {
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
        let rows: Vec<UsageRow> = sqlx::query_as(
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
        Ok(rows.into_iter().map(UsageDay::from).collect())
    }
}

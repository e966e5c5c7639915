//! The `usage_daily` table, `api_keys.last_used_at` and `usage_flushes`,
//! written by the usage flusher.
//!
//! One batch is one transaction: its flush id goes into `usage_flushes`
//! first (an id already there means the batch was written before and only
//! the commit's answer was lost: nothing is added), then its counts as
//! multi-row upserts and its last uses as multi-row updates, at most
//! [`USAGE_ROWS_PER_STATEMENT`] rows per statement. The text of those two
//! is built from a row count only (`($1, $2, $3, $4), ($5, ...)`); every
//! value is a bound parameter.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{RepoError, Repository};
use crate::keys::model::{Millis, UsageDay};

/// Rows per multi-row statement: 4,000 bound parameters for counts (2,000
/// for last uses), well below SQLite's 32,766 and PostgreSQL's 65,535.
pub const USAGE_ROWS_PER_STATEMENT: usize = 1000;

/// What [`Repository::add_usage`] did with a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Its counts were added.
    Written,
    /// Its flush id was already recorded: it had been written before, and
    /// nothing was added this time.
    AlreadyApplied,
}

/// `rows` parenthesized tuples of `columns.len()` parameters numbered from
/// `$1`; a column with a type is written `CAST($n AS type)`.
fn placeholders(rows: usize, columns: &[Option<&str>]) -> String {
    let mut s = String::with_capacity(rows * columns.len() * 8);
    let mut n = 0;
    for row in 0..rows {
        if row > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for (i, cast) in columns.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            n += 1;
            let _ = match cast {
                Some(ty) => write!(s, "CAST(${n} AS {ty})"),
                None => write!(s, "${n}"),
            };
        }
        s.push(')');
    }
    s
}

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
    /// Adds one batch of usage and moves `last_used_at` forward, in one
    /// transaction that also records `flush_id` (at `applied_at`). A batch
    /// whose `flush_id` is already recorded is not added again
    /// ([`Applied::AlreadyApplied`]). Deltas for the same key and day are
    /// summed first, and last uses of the same key reduced to the latest:
    /// PostgreSQL refuses an upsert that meets one row twice.
    ///
    /// # Errors
    /// [`RepoError`]; nothing is written then.
    pub async fn add_usage(
        &self,
        flush_id: &str,
        applied_at: Millis,
        deltas: &[UsageDelta],
        last_used: &[(String, Millis)],
    ) -> Result<Applied, RepoError> {
        if deltas.is_empty() && last_used.is_empty() {
            return Ok(Applied::Written);
        }
        let mut counts: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
        for d in deltas {
            let e = counts
                .entry((d.key_id.as_str(), d.day.as_str()))
                .or_default();
            e.0 = e.0.saturating_add(d.admitted);
            e.1 = e.1.saturating_add(d.limited);
        }
        let counts: Vec<_> = counts.into_iter().collect();
        let mut latest: BTreeMap<&str, Millis> = BTreeMap::new();
        for (id, at) in last_used {
            let e = latest.entry(id.as_str()).or_insert(*at);
            *e = (*e).max(*at);
        }
        let latest: Vec<_> = latest.into_iter().collect();

        let mut tx = self.begin_write().await?;
        let recorded = sqlx::query(
            "INSERT INTO usage_flushes (flush_id, applied_at) VALUES ($1, $2) \
             ON CONFLICT (flush_id) DO NOTHING",
        )
        .bind(flush_id)
        .bind(applied_at)
        .execute(&mut *tx)
        .await?;
        if recorded.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(Applied::AlreadyApplied);
        }
        for chunk in counts.chunks(USAGE_ROWS_PER_STATEMENT) {
            let rows = placeholders(chunk.len(), &[None, None, None, None]);
            let sql = format!(
                "INSERT INTO usage_daily (key_id, day, admitted, limited) VALUES {rows} \
                 ON CONFLICT (key_id, day) DO UPDATE SET \
                   admitted = usage_daily.admitted + excluded.admitted, \
                   limited = usage_daily.limited + excluded.limited"
            );
            // Not kept prepared: each row count is a statement of its own.
            let mut q = sqlx::query(&sql).persistent(false);
            for ((key_id, day), (admitted, limited)) in chunk {
                q = q
                    .bind(*key_id)
                    .bind(*day)
                    .bind(i64::try_from(*admitted).unwrap_or(i64::MAX))
                    .bind(i64::try_from(*limited).unwrap_or(i64::MAX));
            }
            q.execute(&mut *tx).await?;
        }
        // One UPDATE ... FROM a VALUES list per chunk, the same text on
        // both databases (SQLite has UPDATE ... FROM since 3.33; the casts
        // give PostgreSQL the VALUES columns' types).
        for chunk in latest.chunks(USAGE_ROWS_PER_STATEMENT) {
            let rows = placeholders(chunk.len(), &[Some("TEXT"), Some("BIGINT")]);
            let sql = format!(
                "WITH v (key_id, used_at) AS (VALUES {rows}) \
                 UPDATE api_keys SET last_used_at = v.used_at FROM v \
                 WHERE api_keys.id = v.key_id \
                 AND (api_keys.last_used_at IS NULL OR api_keys.last_used_at < v.used_at)"
            );
            let mut q = sqlx::query(&sql).persistent(false);
            for (id, at) in chunk {
                q = q.bind(*id).bind(*at);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Applied::Written)
    }

    /// Forgets the flush ids recorded before `before`; returns how many.
    ///
    /// # Errors
    /// [`RepoError`] when the statement fails.
    pub async fn prune_flushes(&self, before: Millis) -> Result<u64, RepoError> {
        let done = sqlx::query("DELETE FROM usage_flushes WHERE applied_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
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

#[cfg(test)]
mod tests {
    use super::placeholders;

    #[test]
    fn placeholders_number_every_parameter() {
        assert_eq!(placeholders(1, &[None, None]), "($1, $2)");
        assert_eq!(
            placeholders(2, &[Some("TEXT"), None]),
            "(CAST($1 AS TEXT), $2), (CAST($3 AS TEXT), $4)"
        );
        assert_eq!(placeholders(0, &[None]), "");
    }
}

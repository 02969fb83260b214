//! Reads, on the read-only pool, and how this backend's rows are read
//! (decoding itself is shared: [`crate::store::rows`]).

use sqlx::Row as _;
use sqlx::sqlite::{SqliteConnection, SqliteRow};

use crate::job::{JobEvent, JobId, JobRecord, JobState};
use crate::store::history;
use crate::store::query::{bound, few_in_state, list_sql};
use crate::store::rows::{Row, event_of, record_of};
use crate::store::{JobQuery, StoreResult};

pub(super) async fn events_get(
    conn: &mut SqliteConnection,
    id: JobId,
) -> StoreResult<Vec<JobEvent>> {
    let rows = sqlx::query(history::EVENTS_SQL)
        .bind(id)
        .fetch_all(conn)
        .await?;
    rows.iter().map(event_of).collect()
}

pub(super) async fn record_get(
    conn: &mut SqliteConnection,
    id: JobId,
) -> StoreResult<Option<JobRecord>> {
    let row = sqlx::query("SELECT * FROM jobs WHERE id = ?1")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(record_of).transpose()
}

/// A page of the listing ([`crate::store::query::list_sql`]). SQLite keeps
/// no statistics here, so the writer's counts choose the plan: a state with
/// few jobs among many is read through its partial index (without it, an
/// empty state scanned the whole table: 11 ms per 100,000 jobs).
pub(super) async fn list(
    conn: &mut SqliteConnection,
    q: &JobQuery,
    in_state: Option<u64>,
) -> StoreResult<Vec<JobRecord>> {
    let index = match q.state {
        Some(JobState::Queued) => "jobs_ready",
        Some(JobState::Scheduled) => "jobs_scheduled",
        Some(JobState::Running) => "jobs_leased",
        Some(JobState::Dead) => "jobs_dead",
        Some(JobState::Cancelled) => "jobs_cancelled",
        Some(JobState::Succeeded) | None => "",
    };
    let from = match few_in_state(q, in_state) {
        true => format!("jobs INDEXED BY {index}"),
        false => "jobs".to_owned(),
    };
    let (sql, params) = list_sql(q, &from, "id", |n| format!("?{n}"));
    let query = bound(sql, params);
    let rows = query.fetch_all(conn).await?;
    rows.iter().map(record_of).collect()
}

impl Row for SqliteRow {
    fn int(&self, col: &str) -> StoreResult<Option<i64>> {
        Ok(self.try_get(col)?)
    }
    fn text(&self, col: &str) -> StoreResult<Option<String>> {
        Ok(self.try_get(col)?)
    }
}

impl Row for rusqlite::Row<'_> {
    fn int(&self, col: &str) -> StoreResult<Option<i64>> {
        Ok(self.get(col)?)
    }
    fn text(&self, col: &str) -> StoreResult<Option<String>> {
        Ok(self.get(col)?)
    }
}

/// [`crate::store::Store::leases_lost`]: `held` as a JSON array of
/// `[id, token]`, each looked up by its primary key.
pub(super) async fn leases_lost(
    conn: &mut SqliteConnection,
    held: &[(JobId, i64)],
) -> StoreResult<Vec<(JobId, i64)>> {
    let doc = serde_json::to_string(held)
        .map_err(|e| crate::store::StoreError::Backend(e.to_string()))?;
    Ok(sqlx::query_as(
        "SELECT h.value->>0, h.value->>1 FROM json_each(?1) AS h
         WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE id = h.value->>0 AND state = 'running'
                                                AND lease_token = h.value->>1)
         ORDER BY 1, 2",
    )
    .bind(doc)
    .fetch_all(conn)
    .await?)
}

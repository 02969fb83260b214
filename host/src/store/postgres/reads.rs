//! Reads, on the pool, and how this backend's rows are read (decoding
//! itself is shared: [`crate::store::rows`]).

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row as _};

use crate::clock::Timestamp;
use crate::job::{JobEvent, JobId, JobRecord};
use crate::store::history;
use crate::store::query::{bound, few_in_state, list_sql};
use crate::store::rows::{Row, event_of, parse_state, record_of};
use crate::store::{JobQuery, StateCounts, StoreResult, counts_per_type};

impl Row for PgRow {
    fn int(&self, col: &str) -> StoreResult<Option<i64>> {
        Ok(self.try_get(col)?)
    }
    fn text(&self, col: &str) -> StoreResult<Option<String>> {
        Ok(self.try_get(col)?)
    }
}

async fn record_on(conn: &mut PgConnection, id: JobId) -> StoreResult<Option<JobRecord>> {
    let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(record_of).transpose()
}

async fn events_on(conn: &mut PgConnection, id: JobId) -> StoreResult<Vec<JobEvent>> {
    let rows = sqlx::query(history::EVENTS_SQL)
        .bind(id)
        .fetch_all(conn)
        .await?;
    rows.iter().map(event_of).collect()
}

pub(super) async fn record_get(pool: &PgPool, id: JobId) -> StoreResult<Option<JobRecord>> {
    record_on(&mut *pool.acquire().await?, id).await
}

pub(super) async fn events_get(pool: &PgPool, id: JobId) -> StoreResult<Vec<JobEvent>> {
    events_on(&mut *pool.acquire().await?, id).await
}

/// The job and its history from one snapshot (a repeatable-read
/// transaction), so the state shown always matches the last event.
pub(super) async fn show(
    pool: &PgPool,
    id: JobId,
) -> StoreResult<Option<(JobRecord, Vec<JobEvent>)>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let Some(record) = record_on(&mut tx, id).await? else {
        return Ok(None);
    };
    let events = events_on(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Some((record, events)))
}

pub(super) async fn next_due(pool: &PgPool) -> StoreResult<Option<Timestamp>> {
    let next: Option<i64> =
        sqlx::query_scalar("SELECT MIN(run_at) FROM jobs WHERE state = 'scheduled'")
            .fetch_one(pool)
            .await?;
    Ok(next.map(Timestamp))
}

/// Jobs per type and state, from the counters every write to `jobs` keeps
/// (a trigger; see `migrations/postgres/0002_job_counts.sql`): at most 64
/// shards per type and state are summed, however many jobs there are.
pub(super) async fn counts_by_type(pool: &PgPool) -> StoreResult<Vec<(String, StateCounts)>> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT job_type, state, SUM(n)::BIGINT FROM job_counts
         GROUP BY job_type, state HAVING SUM(n) <> 0 ORDER BY job_type",
    )
    .fetch_all(pool)
    .await?;
    let rows = rows
        .into_iter()
        .map(|(job_type, state, n)| Ok((job_type, parse_state(&state)?, n as u64)))
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(counts_per_type(rows))
}

/// A page of the listing ([`crate::store::query::list_sql`]). A state with
/// few jobs (`in_state`, from the kept counts) is ordered by `id + 0`, so
/// the planner reads it through its partial index instead of walking the
/// primary key past every other job (measured: 300-470 ms at 1,000,000 jobs
/// for a page of a state with none or few).
pub(super) async fn list(
    pool: &PgPool,
    q: &JobQuery,
    in_state: Option<u64>,
) -> StoreResult<Vec<JobRecord>> {
    let order = if few_in_state(q, in_state) {
        "id + 0"
    } else {
        "id"
    };
    let (sql, params) = list_sql(q, "jobs", order, |n| format!("${n}"));
    let query = bound(sql, params);
    let rows = query.fetch_all(pool).await?;
    rows.iter().map(record_of).collect()
}

pub(super) const LEASES_LOST: &str = "
    SELECT h.id, h.token FROM unnest($1::bigint[], $2::bigint[]) AS h (id, token)
    WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = h.id AND jobs.lease_token = h.token)
    ORDER BY 1, 2";

/// [`crate::store::Store::leases_lost`], each lease looked up by the
/// primary key.
pub(super) async fn leases_lost(
    pool: &PgPool,
    held: &[(JobId, i64)],
) -> StoreResult<Vec<(JobId, i64)>> {
    let (ids, tokens): (Vec<i64>, Vec<i64>) = held.iter().copied().unzip();
    Ok(sqlx::query_as(LEASES_LOST)
        .bind(ids)
        .bind(tokens)
        .fetch_all(pool)
        .await?)
}

//! Schedules: each write one statement on the pool; two hosts moving one
//! schedule past the same tick race on its row, and one wins.

use std::sync::LazyLock;

use sqlx::{AssertSqlSafe, PgPool};

use crate::store::query::{schedule_advance_sql, schedule_put_sql};
use crate::store::rows::schedule_of;
use crate::store::{Advance, Schedule, StoreResult};

fn numbered(n: usize) -> String {
    format!("${n}")
}

/// Built once, from constants only.
static PUT: LazyLock<String> =
    LazyLock::new(|| format!("{} RETURNING (xmax = 0)", schedule_put_sql(numbered)));
static ADVANCE: LazyLock<String> = LazyLock::new(|| schedule_advance_sql(numbered));

/// True if it created the schedule (`xmax` is 0 only on a row the
/// statement inserted).
pub(super) async fn put(pool: &PgPool, s: &Schedule) -> StoreResult<bool> {
    Ok(sqlx::query_scalar(AssertSqlSafe(PUT.as_str()))
        .bind(&s.name)
        .bind(&s.job_type)
        .bind(&s.cron)
        .bind(&s.timezone)
        .bind(&s.payload)
        .bind(&s.source)
        .bind(s.next_run_at.as_micros())
        .bind(s.updated_at.as_micros())
        .fetch_one(pool)
        .await?)
}

pub(super) async fn delete(pool: &PgPool, name: &str) -> StoreResult<bool> {
    let done = sqlx::query("DELETE FROM schedules WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn advance(pool: &PgPool, a: &Advance) -> StoreResult<bool> {
    let done = sqlx::query(AssertSqlSafe(ADVANCE.as_str()))
        .bind(&a.name)
        .bind(a.from.as_micros())
        .bind(a.next.as_micros())
        .bind(a.fired.as_micros())
        .bind(a.job)
        .bind(a.now.as_micros())
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn list(pool: &PgPool) -> StoreResult<Vec<Schedule>> {
    let rows = sqlx::query("SELECT * FROM schedules ORDER BY name")
        .fetch_all(pool)
        .await?;
    rows.iter().map(schedule_of).collect()
}

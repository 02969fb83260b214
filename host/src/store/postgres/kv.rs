//! What plugins write through their host imports: their key-value stores
//! and their attempts' progress. One statement each, on the durable pool.

use sqlx::PgPool;

use crate::job::JobId;
use crate::store::{KvWrite, StoreResult};

/// A running attempt's progress, fenced by its lease (the token alone: only
/// a running job has one; see [`super::complete`] for why not the state too).
pub(super) const PROGRESS: &str = "UPDATE jobs SET progress = $3
     WHERE id = $1 AND lease_token = $2";

/// Records a running attempt's progress; false if its lease no longer holds.
pub(super) async fn progress(
    pool: &PgPool,
    id: JobId,
    token: i64,
    percent: u8,
) -> StoreResult<bool> {
    let done = sqlx::query(PROGRESS)
        .bind(id)
        .bind(token)
        .bind(i64::from(percent))
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn write(
    pool: &PgPool,
    scope: &str,
    key: &str,
    write: KvWrite,
) -> StoreResult<bool> {
    let (statement, value) = match write {
        KvWrite::Set(value) => (
            "INSERT INTO plugin_kv (scope, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (scope, key) DO UPDATE SET value = EXCLUDED.value",
            Some(value),
        ),
        KvWrite::SetIfAbsent(value) => (
            "INSERT INTO plugin_kv (scope, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (scope, key) DO NOTHING",
            Some(value),
        ),
        KvWrite::Delete => ("DELETE FROM plugin_kv WHERE scope = $1 AND key = $2", None),
    };
    let mut query = sqlx::query(statement).bind(scope).bind(key);
    if let Some(value) = value {
        query = query.bind(value);
    }
    Ok(query.execute(pool).await?.rows_affected() > 0)
}

pub(super) async fn get(pool: &PgPool, scope: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
    Ok(
        sqlx::query_scalar("SELECT value FROM plugin_kv WHERE scope = $1 AND key = $2")
            .bind(scope)
            .bind(key)
            .fetch_optional(pool)
            .await?,
    )
}

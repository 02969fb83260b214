//! Plugins' key-value stores: one statement each, on the durable pool.

use sqlx::PgPool;

use crate::store::{KvWrite, StoreResult};

pub(super) async fn write(
    pool: &PgPool,
    scope: &str,
    key: &str,
    write: KvWrite,
) -> StoreResult<bool> {
    let done = match write {
        KvWrite::Set(value) => sqlx::query(
            "INSERT INTO plugin_kv (scope, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (scope, key) DO UPDATE SET value = EXCLUDED.value",
        )
        .bind(scope)
        .bind(key)
        .bind(value)
        .execute(pool)
        .await?
        .rows_affected(),
        KvWrite::SetIfAbsent(value) => sqlx::query(
            "INSERT INTO plugin_kv (scope, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (scope, key) DO NOTHING",
        )
        .bind(scope)
        .bind(key)
        .bind(value)
        .execute(pool)
        .await?
        .rows_affected(),
        KvWrite::Delete => sqlx::query("DELETE FROM plugin_kv WHERE scope = $1 AND key = $2")
            .bind(scope)
            .bind(key)
            .execute(pool)
            .await?
            .rows_affected(),
    };
    Ok(done > 0)
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

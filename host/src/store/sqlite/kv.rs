//! What plugins write through their host imports: their key-value stores
//! and their attempts' progress. Writes go through the writer (one
//! statement, in its batch's transaction); reads are on the reader pool.

use rusqlite::{Connection, params};

use crate::job::JobId;
use crate::store::{KvWrite, StoreResult};

/// A running attempt's progress, fenced by its lease.
pub(super) fn progress(conn: &Connection, id: JobId, token: i64, percent: u8) -> StoreResult<bool> {
    let changed = conn
        .prepare_cached(
            "UPDATE jobs SET progress = ?3
             WHERE id = ?1 AND state = 'running' AND lease_token = ?2",
        )?
        .execute(params![id, token, percent])?;
    Ok(changed > 0)
}

pub(super) fn write(
    conn: &Connection,
    scope: &str,
    key: &str,
    write: &KvWrite,
) -> StoreResult<bool> {
    let changed = match write {
        KvWrite::Set(value) => conn
            .prepare_cached(
                "INSERT INTO plugin_kv (scope, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![scope, key, value])?,
        KvWrite::SetIfAbsent(value) => conn
            .prepare_cached(
                "INSERT INTO plugin_kv (scope, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (scope, key) DO NOTHING",
            )?
            .execute(params![scope, key, value])?,
        KvWrite::Delete => conn
            .prepare_cached("DELETE FROM plugin_kv WHERE scope = ?1 AND key = ?2")?
            .execute(params![scope, key])?,
    };
    Ok(changed > 0)
}

pub(super) async fn get(
    conn: &mut sqlx::SqliteConnection,
    scope: &str,
    key: &str,
) -> StoreResult<Option<Vec<u8>>> {
    Ok(
        sqlx::query_scalar("SELECT value FROM plugin_kv WHERE scope = ?1 AND key = ?2")
            .bind(scope)
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?,
    )
}

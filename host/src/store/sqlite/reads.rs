//! Reads, on the read-only pool (and row decoding, shared with the writer).

use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqliteRow};

use crate::clock::Timestamp;
use crate::job::{JobEvent, JobId, JobRecord, JobState};
use crate::store::{StoreError, StoreResult};

pub(super) async fn events_get(
    conn: &mut SqliteConnection,
    id: JobId,
) -> StoreResult<Vec<JobEvent>> {
    let rows = sqlx::query(
        "SELECT at, from_state, to_state, attempt, actor, reason, plugin_digest
         FROM job_events WHERE job_id = ?1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(JobEvent {
                at: Timestamp(row.try_get("at")?),
                from: row
                    .try_get::<Option<&str>, _>("from_state")?
                    .map(parse_state)
                    .transpose()?,
                to: state_of(row, "to_state")?,
                attempt: u32_of(row, "attempt")?,
                actor: row.try_get("actor")?,
                reason: row.try_get("reason")?,
                plugin_digest: row.try_get("plugin_digest")?,
            })
        })
        .collect()
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

/// A row of the jobs table, as either driver hands it over: sqlx's to the
/// readers, rusqlite's to the writer.
pub(super) trait JobsRow {
    fn int(&self, col: &str) -> StoreResult<Option<i64>>;
    fn text(&self, col: &str) -> StoreResult<Option<String>>;
}

impl JobsRow for SqliteRow {
    fn int(&self, col: &str) -> StoreResult<Option<i64>> {
        Ok(self.try_get(col)?)
    }
    fn text(&self, col: &str) -> StoreResult<Option<String>> {
        Ok(self.try_get(col)?)
    }
}

impl JobsRow for rusqlite::Row<'_> {
    fn int(&self, col: &str) -> StoreResult<Option<i64>> {
        Ok(self.get(col)?)
    }
    fn text(&self, col: &str) -> StoreResult<Option<String>> {
        Ok(self.get(col)?)
    }
}

pub(super) fn record_of(row: &impl JobsRow) -> StoreResult<JobRecord> {
    let null = |col: &str| StoreError::Backend(format!("jobs.{col} is NULL"));
    let int = |col: &str| row.int(col)?.ok_or_else(|| null(col));
    let text = |col: &str| row.text(col)?.ok_or_else(|| null(col));
    let count = |col: &str| -> StoreResult<u32> {
        let v = int(col)?;
        u32::try_from(v).map_err(|_| StoreError::Backend(format!("{col} out of range: {v}")))
    };
    Ok(JobRecord {
        id: int("id")?,
        job_type: text("job_type")?,
        state: parse_state(&text("state")?)?,
        payload: text("payload")?,
        idempotency_key: row.text("idempotency_key")?,
        attempt: count("attempt")?,
        max_attempts: count("max_attempts")?,
        run_at: Timestamp(int("run_at")?),
        last_error: row.text("last_error")?,
        result: row.text("result")?,
        plugin_digest: row.text("plugin_digest")?,
        lease_expires_at: row.int("lease_expires_at")?.map(Timestamp),
        created_at: Timestamp(int("created_at")?),
        updated_at: Timestamp(int("updated_at")?),
        started_at: row.int("started_at")?.map(Timestamp),
        finished_at: row.int("finished_at")?.map(Timestamp),
    })
}

pub(super) fn parse_state(s: &str) -> StoreResult<JobState> {
    s.parse().map_err(|e| StoreError::Backend(format!("{e}")))
}

pub(super) fn state_of(row: &SqliteRow, col: &str) -> StoreResult<JobState> {
    parse_state(row.try_get::<&str, _>(col)?)
}

pub(super) fn u32_of(row: &SqliteRow, col: &str) -> StoreResult<u32> {
    let v: i64 = row.try_get(col)?;
    u32::try_from(v).map_err(|_| StoreError::Backend(format!("{col} out of range: {v}")))
}

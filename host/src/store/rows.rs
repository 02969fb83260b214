//! Decoding rows of the jobs and job_events tables, shared by every backend:
//! each backend's row type says how to read an integer or a text column by
//! name ([`Row`]), and the record is built once, here.

use crate::clock::Timestamp;
use crate::job::{JobEvent, JobRecord, JobState};
use crate::store::{StoreError, StoreResult};

/// A row as a driver hands it over (sqlx's SQLite and PostgreSQL rows,
/// rusqlite's rows in the embedded writer).
pub(crate) trait Row {
    fn int(&self, col: &str) -> StoreResult<Option<i64>>;
    fn text(&self, col: &str) -> StoreResult<Option<String>>;
}

fn null(col: &str) -> StoreError {
    StoreError::Backend(format!("column {col} is NULL"))
}

fn int(row: &impl Row, col: &str) -> StoreResult<i64> {
    row.int(col)?.ok_or_else(|| null(col))
}

fn text(row: &impl Row, col: &str) -> StoreResult<String> {
    row.text(col)?.ok_or_else(|| null(col))
}

fn count(row: &impl Row, col: &str) -> StoreResult<u32> {
    let v = int(row, col)?;
    u32::try_from(v).map_err(|_| StoreError::Backend(format!("{col} out of range: {v}")))
}

/// A job's `priority` column.
pub(crate) fn priority_of(row: &impl Row) -> StoreResult<i16> {
    let v = int(row, "priority")?;
    i16::try_from(v).map_err(|_| StoreError::Backend(format!("priority out of range: {v}")))
}

/// A job's `timeout_ms` column (its own deadline, if it set one).
pub(crate) fn timeout_ms_of(row: &impl Row) -> StoreResult<Option<u32>> {
    Ok(row
        .int("timeout_ms")?
        .map(|ms| u32::try_from(ms).unwrap_or(u32::MAX)))
}

/// A row of `jobs` (every column).
pub(crate) fn record_of(row: &impl Row) -> StoreResult<JobRecord> {
    Ok(JobRecord {
        id: int(row, "id")?,
        job_type: text(row, "job_type")?,
        state: parse_state(&text(row, "state")?)?,
        payload: text(row, "payload")?,
        idempotency_key: row.text("idempotency_key")?,
        attempt: count(row, "attempt")?,
        max_attempts: count(row, "max_attempts")?,
        run_at: Timestamp(int(row, "run_at")?),
        last_error: row.text("last_error")?,
        result: row.text("result")?,
        plugin_digest: row.text("plugin_digest")?,
        lease_expires_at: row.int("lease_expires_at")?.map(Timestamp),
        created_at: Timestamp(int(row, "created_at")?),
        updated_at: Timestamp(int(row, "updated_at")?),
        started_at: row.int("started_at")?.map(Timestamp),
        finished_at: row.int("finished_at")?.map(Timestamp),
        progress: row.int("progress")?.map(|p| p.clamp(0, 100) as u8),
        priority: priority_of(row)?,
        timeout_ms: timeout_ms_of(row)?,
    })
}

/// A row of `schedules` (every column).
pub(crate) fn schedule_of(row: &impl Row) -> StoreResult<crate::store::Schedule> {
    Ok(crate::store::Schedule {
        name: text(row, "name")?,
        job_type: text(row, "job_type")?,
        cron: text(row, "cron")?,
        timezone: text(row, "timezone")?,
        payload: text(row, "payload")?,
        source: text(row, "source")?,
        next_run_at: Timestamp(int(row, "next_run_at")?),
        last_run_at: row.int("last_run_at")?.map(Timestamp),
        last_job_id: row.int("last_job_id")?,
        created_at: Timestamp(int(row, "created_at")?),
        updated_at: Timestamp(int(row, "updated_at")?),
    })
}

/// A row of `job_events` (at, from_state, to_state, attempt, actor, reason,
/// plugin_digest).
pub(crate) fn event_of(row: &impl Row) -> StoreResult<JobEvent> {
    Ok(JobEvent {
        at: Timestamp(int(row, "at")?),
        from: row
            .text("from_state")?
            .map(|s| parse_state(&s))
            .transpose()?,
        to: parse_state(&text(row, "to_state")?)?,
        attempt: count(row, "attempt")?,
        actor: text(row, "actor")?,
        reason: row.text("reason")?,
        plugin_digest: row.text("plugin_digest")?,
    })
}

pub(crate) fn parse_state(s: &str) -> StoreResult<JobState> {
    s.parse().map_err(|e| StoreError::Backend(format!("{e}")))
}

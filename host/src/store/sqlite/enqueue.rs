//! Enqueue: keyless jobs in one statement with writer-assigned ids, keyed
//! ones one by one against the idempotency index.

use rusqlite::{OptionalExtension, params};

use super::events::{Event, Events};
use super::tx::Tx;
use crate::clock::Timestamp;
use crate::job::JobState;
use crate::store::counts::moved;
use crate::store::rows::parse_state;
use crate::store::{Enqueued, NewJob, StoreError, StoreResult};

pub(super) fn initial_state(job: &NewJob, now: Timestamp) -> JobState {
    if job.run_at > now {
        JobState::Scheduled
    } else {
        JobState::Queued
    }
}

/// Creates jobs without idempotency keys in one statement. Ids are assigned
/// here, in order, from the writer's counter: the writer is the only writer,
/// so nobody can take them.
pub(super) fn insert_many(
    tx: &mut Tx<'_>,
    jobs: &[(&NewJob, Timestamp)],
    events: &mut Events,
) -> StoreResult<Vec<Enqueued>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let last = tx.ids.job;
    tx.ids.job += jobs.len() as i64;
    let mut rows = Vec::with_capacity(jobs.len());
    let mut created = Vec::with_capacity(jobs.len());
    for (n, (job, now)) in jobs.iter().enumerate() {
        let id = last + 1 + n as i64;
        let state = initial_state(job, *now);
        moved(&mut tx.moves, &job.job_type, None, state, 1);
        rows.push(serde_json::json!([
            id,
            job.job_type,
            state.as_str(),
            job.payload,
            job.max_attempts,
            job.run_at.as_micros(),
            now.as_micros(),
            job.priority,
            job.timeout_ms,
        ]));
        created.push(Enqueued::Created { id, state });
    }
    let doc = serde_json::to_string(&rows).map_err(|e| StoreError::Backend(e.to_string()))?;
    tx.conn()?.prepare_cached(
        "INSERT OR FAIL INTO jobs (id, job_type, state, payload, max_attempts, run_at, created_at, updated_at,
                                   priority, timeout_ms)
         SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, value->>6,
                value->>7, value->>8
         FROM jsonb_each(?)",
    )?
    .execute([doc])?;
    tx.write_events(events)?;
    tx.conn()?
        .prepare_cached(ENQUEUED_EVENTS)?
        .execute([last + 1, tx.ids.job])?;
    Ok(created)
}

/// The events of the jobs just created by [`insert_many`], from the first
/// id to the last. (Actor 1 is [`crate::store::history::API_ACTOR`].)
pub(super) const ENQUEUED_EVENTS: &str =
    "INSERT OR FAIL INTO job_events (job_id, at, from_state, to_state, attempt, actor_id, reason)
     SELECT id, created_at, NULL, state, 0, 1, 'enqueued'
     FROM jobs WHERE id BETWEEN ?1 AND ?2";

pub(super) fn insert(
    tx: &mut Tx<'_>,
    job: &NewJob,
    now: Timestamp,
    events: &mut Events,
) -> StoreResult<Enqueued> {
    let conn = tx.conn()?;
    let state = initial_state(job, now);
    let created: Option<i64> = conn
        .prepare_cached(
            "INSERT INTO jobs (job_type, state, payload, idempotency_key, max_attempts, run_at, created_at, updated_at,
                               priority, timeout_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9)
             ON CONFLICT (job_type, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING id",
        )?
        .query_row(
            params![
                job.job_type,
                state.as_str(),
                job.payload,
                job.idempotency_key,
                job.max_attempts,
                job.run_at.as_micros(),
                now.as_micros(),
                job.priority,
                job.timeout_ms,
            ],
            |r| r.get(0),
        )
        .optional()?;
    match created {
        Some(id) => {
            // SQLite numbered it past the largest id, which the counter follows.
            tx.ids.job = tx.ids.job.max(id);
            moved(&mut tx.moves, &job.job_type, None, state, 1);
            events.push(Event::enqueued(id, now, state));
            Ok(Enqueued::Created { id, state })
        }
        None => {
            let (id, state): (i64, String) = conn
                .prepare_cached(
                    "SELECT id, state FROM jobs WHERE job_type = ?1 AND idempotency_key = ?2",
                )?
                .query_row(params![job.job_type, job.idempotency_key], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            Ok(Enqueued::Existing {
                id,
                state: parse_state(&state)?,
            })
        }
    }
}

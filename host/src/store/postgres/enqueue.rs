//! Enqueue: keyless jobs in one statement, keyed ones one by one against the
//! idempotency index; each writes its `enqueued` event in the same statement.

use sqlx::PgConnection;

use crate::clock::Timestamp;
use crate::job::JobState;
use crate::store::rows::parse_state;
use crate::store::{Enqueued, NewJob, StoreResult};

fn initial_state(job: &NewJob, now: Timestamp) -> JobState {
    if job.run_at > now {
        JobState::Scheduled
    } else {
        JobState::Queued
    }
}

/// Creates jobs without idempotency keys. Each input row takes its id in
/// the same (materialized) row as its position `n`, so the ids come back in
/// the order of `jobs` whatever order PostgreSQL evaluates `nextval` in.
const INSERT_MANY: &str = "
    WITH input AS MATERIALIZED (
        SELECT nextval('jobs_id_seq') AS id, r.*
        FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[],
                    $7::bigint[], $8::bigint[])
             WITH ORDINALITY AS r (job_type, state, payload, max_attempts, run_at, created_at,
                                   priority, timeout_ms, n)
    ), created AS (
        INSERT INTO jobs (id, job_type, state, payload, max_attempts, run_at, created_at, updated_at,
                          priority, timeout_ms)
        SELECT id, job_type, state, payload, max_attempts, run_at, created_at, created_at,
               priority, timeout_ms
        FROM input ORDER BY n
        RETURNING id, state, created_at
    ), events AS (
        INSERT INTO job_events (job_id, at, from_state, to_state, attempt, actor_id, reason)
        SELECT id, created_at, NULL, state, 0, 1, 'enqueued' FROM created
    )
    SELECT id FROM input ORDER BY n";

pub(super) async fn insert_many(
    conn: &mut PgConnection,
    jobs: &[(&NewJob, Timestamp)],
) -> StoreResult<Vec<Enqueued>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let states: Vec<JobState> = jobs.iter().map(|(j, now)| initial_state(j, *now)).collect();
    let ids: Vec<i64> = sqlx::query_scalar(INSERT_MANY)
        .bind(
            jobs.iter()
                .map(|(j, _)| j.job_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(states.iter().map(|s| s.as_str()).collect::<Vec<_>>())
        .bind(
            jobs.iter()
                .map(|(j, _)| j.payload.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|(j, _)| i64::from(j.max_attempts))
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|(j, _)| j.run_at.as_micros())
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|(_, now)| now.as_micros())
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|(j, _)| i64::from(j.priority))
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|(j, _)| j.timeout_ms.map(i64::from))
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *conn)
        .await?;
    Ok(ids
        .into_iter()
        .zip(states)
        .map(|(id, state)| Enqueued::Created { id, state })
        .collect())
}

const INSERT_KEYED: &str = "
    WITH created AS (
        INSERT INTO jobs (job_type, state, payload, idempotency_key, max_attempts, run_at,
                          created_at, updated_at, priority, timeout_ms)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9)
        ON CONFLICT (job_type, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING id, state, created_at
    ), events AS (
        INSERT INTO job_events (job_id, at, from_state, to_state, attempt, actor_id, reason)
        SELECT id, created_at, NULL, state, 0, 1, 'enqueued' FROM created
    )
    SELECT id FROM created";

/// Creates one job, or finds the one holding its idempotency key (another
/// host's insert of the same key is waited for, then found).
pub(super) async fn insert(
    conn: &mut PgConnection,
    job: &NewJob,
    now: Timestamp,
) -> StoreResult<Enqueued> {
    let state = initial_state(job, now);
    let created: Option<i64> = sqlx::query_scalar(INSERT_KEYED)
        .bind(&job.job_type)
        .bind(state.as_str())
        .bind(&job.payload)
        .bind(&job.idempotency_key)
        .bind(i64::from(job.max_attempts))
        .bind(job.run_at.as_micros())
        .bind(now.as_micros())
        .bind(i64::from(job.priority))
        .bind(job.timeout_ms.map(i64::from))
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(id) = created {
        return Ok(Enqueued::Created { id, state });
    }
    let (id, state): (i64, String) =
        sqlx::query_as("SELECT id, state FROM jobs WHERE job_type = $1 AND idempotency_key = $2")
            .bind(&job.job_type)
            .bind(&job.idempotency_key)
            .fetch_one(&mut *conn)
            .await?;
    Ok(Enqueued::Existing {
        id,
        state: parse_state(&state)?,
    })
}

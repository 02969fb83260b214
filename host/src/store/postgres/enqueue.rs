//! Enqueue: keyless jobs in one statement, keyed ones one by one against the
//! idempotency index; each writes its `enqueued` event, and `NOTIFY`s the
//! hosts if it made a job ready, in the same statement.

use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgConnection, Postgres, Row as _};

use super::{READY_CHANNEL, ids_of};

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
///
/// If any job is ready now, the statement also sends `NOTIFY` (delivered
/// when it commits): the uncorrelated subquery of the last `SELECT` reads
/// the `notified` row once, which is what runs `pg_notify`. So a lone
/// enqueue needs no statement but this one (see the committer).
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
    ), notified AS (
        SELECT pg_notify($9, '') WHERE EXISTS (SELECT FROM created WHERE state = 'queued')
    )
    SELECT id, (SELECT count(*) FROM notified) FROM input ORDER BY n";

pub(super) async fn insert_many(
    conn: &mut PgConnection,
    jobs: &[(&NewJob, Timestamp)],
) -> StoreResult<Vec<Enqueued>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let (query, states) = insert_many_query(jobs);
    Ok(created(ids_of(query, conn).await?, states))
}

/// The jobs `insert_many` creates, from the ids its statement returned (in
/// the order of `states`).
pub(super) fn created(ids: Vec<i64>, states: Vec<JobState>) -> Vec<Enqueued> {
    ids.into_iter()
        .zip(states)
        .map(|(id, state)| Enqueued::Created { id, state })
        .collect()
}

/// `insert_many`'s statement, unsent (the committer sends a lone batch of
/// keyless jobs as a transaction of its own), and the state each job will
/// have. Its first column is each job's id, in the order of `jobs`.
pub(super) fn insert_many_query<'q>(
    jobs: &[(&'q NewJob, Timestamp)],
) -> (Query<'q, Postgres, PgArguments>, Vec<JobState>) {
    let states: Vec<JobState> = jobs.iter().map(|(j, now)| initial_state(j, *now)).collect();
    let query = sqlx::query(INSERT_MANY)
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
        .bind(READY_CHANNEL);
    (query, states)
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
    ), notified AS (
        SELECT pg_notify($10, '') WHERE EXISTS (SELECT FROM created WHERE state = 'queued')
    )
    SELECT id, (SELECT count(*) FROM notified) FROM created";

/// Creates one job, or finds the one holding its idempotency key (another
/// host's insert of the same key is waited for, then found).
pub(super) async fn insert(
    conn: &mut PgConnection,
    job: &NewJob,
    now: Timestamp,
) -> StoreResult<Enqueued> {
    let state = initial_state(job, now);
    let created: Option<i64> = sqlx::query(INSERT_KEYED)
        .bind(&job.job_type)
        .bind(state.as_str())
        .bind(&job.payload)
        .bind(&job.idempotency_key)
        .bind(i64::from(job.max_attempts))
        .bind(job.run_at.as_micros())
        .bind(now.as_micros())
        .bind(i64::from(job.priority))
        .bind(job.timeout_ms.map(i64::from))
        .bind(READY_CHANNEL)
        .fetch_optional(&mut *conn)
        .await?
        .map(|row| row.try_get(0))
        .transpose()?;
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

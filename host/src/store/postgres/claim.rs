//! Claims: lease the first jobs of each type asked for (highest priority,
//! then oldest due). `FOR UPDATE SKIP LOCKED` hands each job to one claimer
//! however many hosts claim at once; the leases of every type and their
//! events are one statement.

use std::time::Instant;

use sqlx::PgPool;
use sqlx::Row as _;

use super::READY_CHANNEL;
use crate::clock::Timestamp;
use crate::store::rows::{priority_of, timeout_ms_of};
use crate::store::{ClaimWait, ClaimedJob, StoreResult};
use crate::telemetry;

/// Every type of a round in one statement: for each request (in order), up
/// to its limit of its type's jobs, then at most `$9` in all, earlier
/// requests first. Each lateral subquery locks at most that total; rows
/// locked and not leased (when several types have work) are let go when
/// the statement's own transaction ends, at once (it runs alone), and the
/// statement then sends `NOTIFY`: another host's claim that skipped them
/// while they were locked hears that they are there.
pub(crate) const CLAIM: &str = "
    WITH req AS (
        SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::int[])
             WITH ORDINALITY AS r (job_type, lim, token, expires, digest_id, n)
    ), locked AS (
        SELECT j.id, j.priority, j.run_at, req.n, req.token, req.expires, req.digest_id
        FROM req CROSS JOIN LATERAL (
            SELECT id, priority, run_at FROM jobs
            WHERE state = 'queued' AND job_type = req.job_type
            ORDER BY priority DESC, run_at, id LIMIT least(req.lim, $9)
            FOR UPDATE SKIP LOCKED
        ) j
    ), picked AS (
        SELECT id, token, expires, digest_id FROM locked
        ORDER BY n, priority DESC, run_at, id
        LIMIT $9
    ), notified AS (
        SELECT pg_notify($10, '') WHERE (SELECT count(*) FROM locked) > $9
    ), leased AS (
        UPDATE jobs SET state = 'running', attempt = jobs.attempt + 1, lease_owner = $6,
               lease_token = picked.token, lease_expires_at = picked.expires, started_at = $7,
               updated_at = $7, progress = NULL
        FROM picked WHERE jobs.id = picked.id
        RETURNING jobs.id, jobs.job_type, jobs.payload, jobs.attempt, jobs.max_attempts,
                  jobs.run_at, jobs.priority, jobs.timeout_ms, picked.token, picked.digest_id
    ), events AS (
        INSERT INTO job_events (job_id, at, from_state, to_state, attempt, actor_id, digest_id)
        SELECT id, $7, 'queued', 'running', attempt, $8, digest_id FROM leased
    )
    SELECT id, job_type, payload, attempt, max_attempts, run_at, priority, timeout_ms, token,
           (SELECT count(*) FROM notified)
    FROM leased";

/// Leases, for each request of `wait` in order, up to its limit of its
/// type's queued jobs (highest priority first, oldest due first within a
/// priority), at most `wait.total` in all: one statement, one round trip,
/// however many types. `actor`: the claiming worker's id in the history;
/// `digests`: per request, its plugin version's. Every request of a wait
/// names the same owner and time.
pub(super) async fn claim(
    pool: &PgPool,
    wait: &ClaimWait,
    actor: i32,
    digests: &[i32],
) -> StoreResult<Vec<ClaimedJob>> {
    let Some(first) = wait.requests.first() else {
        return Ok(Vec::new());
    };
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let started = Instant::now();
    let rows = sqlx::query(CLAIM)
        .bind(
            wait.requests
                .iter()
                .map(|r| r.job_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            wait.requests
                .iter()
                .map(|r| count(r.limit))
                .collect::<Vec<_>>(),
        )
        .bind(wait.requests.iter().map(|r| r.token).collect::<Vec<_>>())
        .bind(
            wait.requests
                .iter()
                .map(|r| r.lease_expires_at.as_micros())
                .collect::<Vec<_>>(),
        )
        .bind(digests)
        .bind(&wait.owner)
        .bind(first.now.as_micros())
        .bind(actor)
        .bind(count(wait.total))
        .bind(READY_CHANNEL)
        .fetch_all(pool)
        .await?;
    metrics::histogram!(telemetry::CLAIM_DURATION).record(started.elapsed());
    let mut jobs = rows
        .iter()
        .map(|r| -> StoreResult<ClaimedJob> {
            let count = |col: &str| -> StoreResult<u32> {
                let v: i64 = r.try_get(col)?;
                u32::try_from(v).map_err(|_| {
                    crate::store::StoreError::Backend(format!("{col} out of range: {v}"))
                })
            };
            Ok(ClaimedJob {
                id: r.try_get("id")?,
                job_type: r.try_get("job_type")?,
                payload: r.try_get("payload")?,
                attempt: count("attempt")?,
                max_attempts: count("max_attempts")?,
                run_at: Timestamp(r.try_get("run_at")?),
                token: r.try_get("token")?,
                priority: priority_of(r)?,
                timeout_ms: timeout_ms_of(r)?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    jobs.sort_by_key(ClaimedJob::claim_order);
    Ok(jobs)
}

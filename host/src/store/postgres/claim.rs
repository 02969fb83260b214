//! Claims: lease the first jobs of a type (highest priority, then oldest
//! due). `FOR UPDATE SKIP LOCKED` hands each job to one claimer however many
//! hosts claim at once; the lease and its events are one statement.

use std::time::Instant;

use sqlx::PgPool;
use sqlx::Row as _;

use super::complete::Source;
use crate::clock::Timestamp;
use crate::store::rows::{priority_of, timeout_ms_of};
use crate::store::{ClaimRequest, ClaimedJob, StoreResult};
use crate::telemetry;

const CLAIM: &str = "
    WITH picked AS (
        SELECT id FROM jobs WHERE state = 'queued' AND job_type = $5
        ORDER BY priority DESC, run_at, id LIMIT $6
        FOR UPDATE SKIP LOCKED
    ), leased AS (
        UPDATE jobs SET state = 'running', attempt = jobs.attempt + 1, lease_owner = $1,
               lease_token = $2, lease_expires_at = $3, started_at = $4, updated_at = $4,
               progress = NULL
        FROM picked WHERE jobs.id = picked.id
        RETURNING jobs.id, jobs.payload, jobs.attempt, jobs.max_attempts, jobs.run_at,
                  jobs.priority, jobs.timeout_ms
    ), events AS (
        INSERT INTO job_events (job_id, at, from_state, to_state, attempt, actor_id, digest_id)
        SELECT id, $4, 'queued', 'running', attempt, $7, $8 FROM leased
    )
    SELECT id, payload, attempt, max_attempts, run_at, priority, timeout_ms FROM leased";

/// Leases up to `req.limit` queued jobs of one type, highest priority
/// first, oldest due first within a priority.
/// `source`: the ids of the claiming worker and the plugin version in the
/// history.
pub(super) async fn claim(
    pool: &PgPool,
    req: &ClaimRequest,
    source: Source,
) -> StoreResult<Vec<ClaimedJob>> {
    if req.limit == 0 {
        return Ok(Vec::new());
    }
    let started = Instant::now();
    let rows = sqlx::query(CLAIM)
        .bind(&req.owner)
        .bind(req.token)
        .bind(req.lease_expires_at.as_micros())
        .bind(req.now.as_micros())
        .bind(&req.job_type)
        .bind(i64::try_from(req.limit).unwrap_or(i64::MAX))
        .bind(source.actor)
        .bind(source.digest)
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
                job_type: req.job_type.clone(),
                payload: r.try_get("payload")?,
                attempt: count("attempt")?,
                max_attempts: count("max_attempts")?,
                run_at: Timestamp(r.try_get("run_at")?),
                token: req.token,
                priority: priority_of(r)?,
                timeout_ms: timeout_ms_of(r)?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    jobs.sort_by_key(ClaimedJob::claim_order);
    Ok(jobs)
}

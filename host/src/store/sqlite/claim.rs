//! Claims: lease the first jobs of a type (highest priority, then oldest
//! due), and write their events from the leased rows.

use std::time::Instant;

use rusqlite::params;

use super::events::Events;
use super::known::Readied;
use super::tx::Tx;
use crate::clock::Timestamp;
use crate::job::JobState;
use crate::store::counts::moved;
use crate::store::history::{Name, worker_actor};
use crate::store::{ClaimRequest, ClaimWait, ClaimedJob, StoreResult};
use crate::telemetry;

/// Serves a [`ClaimWait`]'s requests in order, up to its total. A parked
/// claim served `at` a later time has its leases start then, each as long as
/// its request asked.
///
/// A parked claim served because of `ready` claims only the types made
/// ready (its others were empty when it parked, and nothing readied them
/// since).
pub(super) fn claim_for(
    tx: &mut Tx<'_>,
    wait: &ClaimWait,
    ready: Option<&Readied<'_>>,
    events: &mut Events,
) -> StoreResult<Vec<ClaimedJob>> {
    let requests: Vec<&ClaimRequest> = wait
        .requests
        .iter()
        .filter(|r| {
            ready.is_none_or(|ready| ready.any || ready.types.contains(r.job_type.as_str()))
        })
        .collect();
    let mut jobs = Vec::new();
    for req in requests {
        let left = wait.total.saturating_sub(jobs.len());
        if left == 0 {
            break;
        }
        let mut req = req.clone();
        req.limit = req.limit.min(left);
        if let Some(ready) = ready
            && ready.at > req.now
        {
            req.lease_expires_at = req.lease_expires_at.plus(req.now.until(ready.at));
            req.now = ready.at;
        }
        jobs.extend(claim(tx, &req, events)?);
    }
    Ok(jobs)
}

/// Leases up to `req.limit` ready jobs of one type and writes their events.
pub(super) fn claim(
    tx: &mut Tx<'_>,
    req: &ClaimRequest,
    events: &mut Events,
) -> StoreResult<Vec<ClaimedJob>> {
    if req.limit == 0 || tx.empty.contains(&req.job_type) {
        return Ok(Vec::new());
    }
    // Earlier events first, so each job's history stays in order.
    tx.write_events(events)?;
    let conn = tx.conn()?;
    let started = Instant::now();
    let mut jobs = conn
        .prepare_cached(CLAIM)?
        .query_map(
            params![
                req.owner,
                req.token,
                req.lease_expires_at.as_micros(),
                req.now.as_micros(),
                req.job_type,
                i64::try_from(req.limit).unwrap_or(i64::MAX),
            ],
            |r| {
                Ok(ClaimedJob {
                    id: r.get(0)?,
                    job_type: req.job_type.clone(),
                    payload: r.get(1)?,
                    attempt: r.get(2)?,
                    max_attempts: r.get(3)?,
                    run_at: Timestamp(r.get(4)?),
                    token: req.token,
                    priority: r.get(5)?,
                    timeout_ms: r.get(6)?,
                })
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let actor = tx.name_id(Name::Actor(worker_actor(&req.owner)))?;
    let digest = tx.name_id(Name::Digest(req.plugin_digest.clone()))?;
    conn.prepare_cached(CLAIM_EVENTS)?.execute(params![
        req.now.as_micros(),
        actor,
        digest,
        req.lease_expires_at.as_micros(),
        req.token,
    ])?;
    metrics::histogram!(telemetry::CLAIM_DURATION).record(started.elapsed());
    jobs.sort_by_key(ClaimedJob::claim_order);
    if jobs.len() < req.limit {
        tx.found_empty.push((req.job_type.clone(), tx.last_phase));
    }
    moved(
        &mut tx.moves,
        &req.job_type,
        Some(JobState::Queued),
        JobState::Running,
        jobs.len() as u64,
    );
    Ok(jobs)
}

/// The claim: lease the jobs of one type with the highest priority, the
/// oldest due first within a priority.
///
/// The limit is `(?6 + 0)`, not a bare `?6`: SQLite (3.47 and later) reads a
/// bare bound LIMIT while planning and marks the statement to be prepared
/// again whenever that number changes, which for a claim (as many jobs as
/// there are free slots) is nearly every time. The plan does not depend on
/// it: the partial index yields the jobs in order and the scan stops at the
/// limit either way.
pub(super) const CLAIM: &str =
    "UPDATE OR FAIL jobs SET state = 'running', attempt = attempt + 1, lease_owner = ?1,
            lease_token = ?2, lease_expires_at = ?3, started_at = ?4, updated_at = ?4,
            progress = NULL
     WHERE id IN (SELECT id FROM jobs WHERE state = 'queued' AND job_type = ?5
                  ORDER BY priority DESC, run_at, id LIMIT (?6 + 0))
     RETURNING id, payload, attempt, max_attempts, run_at, priority, timeout_ms";

/// The events of the jobs a [`CLAIM`] just leased, written from their rows,
/// found by that lease (the reaper's index, on its exact expiry, then the
/// token).
pub(super) const CLAIM_EVENTS: &str =
    "INSERT OR FAIL INTO job_events (job_id, at, from_state, to_state, attempt, actor_id, reason, digest_id)
     SELECT id, ?1, 'queued', 'running', attempt, ?2, NULL, ?3
     FROM jobs WHERE state = 'running' AND lease_expires_at = ?4 AND lease_token = ?5";

//! Completions: every outcome of a batch in one statement per plugin
//! version, each row fenced by its own lease token.

use std::time::Instant;

use rusqlite::params;

use super::events::Events;
use super::tx::Tx;
use crate::job::{JobId, JobState};
use crate::store::counts::moved;
use crate::store::history::{Name, worker_actor};
use crate::store::{Completion, StoreError, StoreResult};
use crate::telemetry;

/// The events of the jobs whose completions just applied (`?1`, their
/// ids, all reported by actor `?2` from plugin version `?3`): each row
/// holds the time, the state reached and the error of a failed attempt.
pub(super) const COMPLETION_EVENTS: &str =
    "INSERT OR FAIL INTO job_events (job_id, at, from_state, to_state, attempt, actor_id, reason, digest_id)
     SELECT j.id, j.updated_at, 'running', j.state, j.attempt, ?2,
            CASE WHEN j.state = 'succeeded' THEN NULL ELSE j.last_error END, ?3
     FROM json_each(?1) AS c JOIN jobs AS j ON j.id = c.value";

/// Records completions (each for a distinct job) in one statement, each
/// fenced by its own lease token. Returns, per completion, whether it applied.
pub(super) fn complete_many(
    tx: &mut Tx<'_>,
    completions: &[&Completion],
    events: &mut Events,
) -> StoreResult<Vec<bool>> {
    // One statement per plugin version (a batch usually holds one or two);
    // the version is bound once, not repeated in every row.
    let mut by_digest: Vec<(&str, Vec<&Completion>)> = Vec::new();
    for &c in completions {
        match by_digest.iter_mut().find(|(d, _)| *d == c.plugin_digest) {
            Some((_, group)) => group.push(c),
            None => by_digest.push((&c.plugin_digest, vec![c])),
        }
    }
    let mut applied = Vec::with_capacity(completions.len());
    for (digest, group) in by_digest {
        // [id, token, state, result or error, run_at of a retry, now, started_at]
        let rows: Vec<_> = group
            .iter()
            .map(|c| {
                let (state, text, run_at) = c.outcome.columns();
                let run_at = run_at.map(|t| t.as_micros());
                (
                    c.id,
                    c.token,
                    state.as_str(),
                    text,
                    run_at,
                    c.now.as_micros(),
                    c.started_at.as_micros(),
                )
            })
            .collect();
        let doc = serde_json::to_string(&rows).map_err(|e| StoreError::Backend(e.to_string()))?;
        let started = Instant::now();
        let mut stmt = tx.conn()?.prepare_cached(
            "UPDATE OR FAIL jobs SET state = c.state,
                    result = CASE WHEN c.state = 'succeeded' THEN c.text END,
                    last_error = CASE WHEN c.state = 'succeeded' THEN jobs.last_error ELSE c.text END,
                    run_at = COALESCE(c.run_at, jobs.run_at),
                    finished_at = CASE WHEN c.state = 'scheduled' THEN NULL ELSE c.now END,
                    plugin_digest = c.digest, updated_at = c.now, started_at = c.started_at,
                    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
             FROM (SELECT value->>0 AS id, value->>1 AS token, value->>2 AS state,
                          value->>3 AS text, value->>4 AS run_at, value->>5 AS now,
                          value->>6 AS started_at, ?1 AS digest
                   FROM jsonb_each(?2)) AS c
             WHERE jobs.id = c.id AND jobs.state = 'running' AND jobs.lease_token = c.token
             RETURNING jobs.id, jobs.job_type",
        )?;
        let rows = stmt.query_map(params![digest, doc], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            applied.push(row?);
        }
        metrics::histogram!(telemetry::STORE_COMPLETE_DURATION).record(started.elapsed());
    }
    // Ids are distinct within `completions`, and the token is in the WHERE
    // clause, so an id coming back means that completion applied.
    let applied: std::collections::HashMap<i64, String> = applied.into_iter().collect();
    // The events come from the updated rows: one statement per reporting
    // owner (a host reports as one) and plugin version.
    tx.write_events(events)?;
    let mut by_source: Vec<((&str, &str), Vec<JobId>)> = Vec::new();
    let done = completions
        .iter()
        .map(|c| {
            let ok = applied.contains_key(&c.id);
            if ok {
                let (to, _, _) = c.outcome.columns();
                moved(
                    &mut tx.moves,
                    &applied[&c.id],
                    Some(JobState::Running),
                    to,
                    1,
                );
                let source = (c.owner.as_str(), c.plugin_digest.as_str());
                match by_source.iter_mut().find(|(s, _)| *s == source) {
                    Some((_, ids)) => ids.push(c.id),
                    None => by_source.push((source, vec![c.id])),
                }
            }
            ok
        })
        .collect();
    for ((owner, digest), ids) in by_source {
        let actor = tx.name_id(Name::Actor(worker_actor(owner)))?;
        let digest = tx.name_id(Name::Digest(digest.to_owned()))?;
        let ids = serde_json::to_string(&ids).map_err(|e| StoreError::Backend(e.to_string()))?;
        tx.conn()?
            .prepare_cached(COMPLETION_EVENTS)?
            .execute(params![ids, actor, digest])?;
    }
    Ok(done)
}

//! The rarer transitions, a statement or two each: release at shutdown,
//! the reaper, the promoter, the operator's replay and cancel, and the
//! pruner.

use rusqlite::{Connection, OptionalExtension, params};

use super::events::{Event, Events};
use super::tx::Tx;
use crate::clock::Timestamp;
use crate::job::{JobId, JobRecord, JobState};
use crate::store::counts::{Moves, moved, removed};
use crate::store::history;
use crate::store::query::{DeadFilter, Param, Prune, dead_conditions, prune_ids_sql};
use crate::store::rows::{parse_state, record_of};
use crate::store::{Buried, Moved, Reaped, StoreError, StoreResult};

pub(super) fn release(
    conn: &Connection,
    id: JobId,
    token: i64,
    now: Timestamp,
    events: &mut Events,
    moves: &mut Moves,
) -> StoreResult<bool> {
    let released: Option<(i64, String)> = conn
        .prepare_cached(
            "UPDATE jobs SET state = 'queued', attempt = attempt - 1, updated_at = ?1,
                    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
             WHERE id = ?2 AND state = 'running' AND lease_token = ?3
             RETURNING attempt, job_type",
        )?
        .query_row(params![now.as_micros(), id, token], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let Some((attempt, job_type)) = released else {
        return Ok(false);
    };
    moved(
        moves,
        &job_type,
        Some(JobState::Running),
        JobState::Queued,
        1,
    );
    events.push(Event {
        job_id: id,
        at: now,
        from: Some(JobState::Running),
        to: JobState::Queued,
        attempt,
        actor: history::RELEASE_ACTOR,
        reason: Some(history::RELEASE_REASON.into()),
    });
    Ok(true)
}

pub(super) fn reap(
    conn: &Connection,
    now: Timestamp,
    events: &mut Events,
    moves: &mut Moves,
) -> StoreResult<Reaped> {
    let mut stmt = conn.prepare_cached(
        "UPDATE OR FAIL jobs SET
                state = CASE WHEN attempt >= max_attempts THEN 'dead' ELSE 'queued' END,
                finished_at = CASE WHEN attempt >= max_attempts THEN ?1 ELSE NULL END,
                last_error = 'lease expired: attempt ' || attempt
                             || ' stopped without reporting an outcome (host crashed or was killed)',
                updated_at = ?1, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
         WHERE state = 'running' AND lease_expires_at <= ?1
         RETURNING id, state, attempt, last_error, job_type",
    )?;
    let rows = stmt
        .query_map([now.as_micros()], |r| {
            Ok((
                r.get::<_, JobId>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut reaped = Reaped::default();
    for (id, state, attempt, last_error, job_type) in rows {
        let to = parse_state(&state)?;
        moved(moves, &job_type, Some(JobState::Running), to, 1);
        events.push(Event {
            job_id: id,
            at: now,
            from: Some(JobState::Running),
            to,
            attempt,
            actor: history::REAP_ACTOR,
            reason: Some(last_error.clone()),
        });
        match to {
            JobState::Dead => reaped.dead.push(Buried {
                id,
                job_type,
                error: last_error,
            }),
            _ => reaped.requeued.push(Moved { id, job_type }),
        }
    }
    Ok(reaped)
}

pub(super) fn promote(
    conn: &Connection,
    now: Timestamp,
    events: &mut Events,
    moves: &mut Moves,
) -> StoreResult<Vec<Moved>> {
    let mut promoted = conn
        .prepare_cached(
            "UPDATE OR FAIL jobs SET state = 'queued', updated_at = ?1
             WHERE state = 'scheduled' AND run_at <= ?1 RETURNING id, attempt, job_type",
        )?
        .query_map([now.as_micros()], |r| {
            Ok((
                r.get::<_, JobId>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    promoted.sort_unstable();
    for (_, _, job_type) in &promoted {
        moved(
            moves,
            job_type,
            Some(JobState::Scheduled),
            JobState::Queued,
            1,
        );
    }
    events.extend(promoted.iter().map(|&(id, attempt, _)| Event {
        job_id: id,
        at: now,
        from: Some(JobState::Scheduled),
        to: JobState::Queued,
        attempt,
        actor: history::PROMOTE_ACTOR,
        reason: Some(history::PROMOTE_REASON.into()),
    }));
    Ok(promoted
        .into_iter()
        .map(|(id, _, job_type)| Moved { id, job_type })
        .collect())
}

pub(super) fn replay(
    conn: &Connection,
    id: JobId,
    now: Timestamp,
    events: &mut Events,
    moves: &mut Moves,
) -> StoreResult<JobRecord> {
    let changed = conn
        .prepare_cached(
            "UPDATE jobs SET state = 'queued', attempt = 0, run_at = ?1, result = NULL,
                    finished_at = NULL, updated_at = ?1
             WHERE id = ?2 AND state = 'dead'",
        )?
        .execute(params![now.as_micros(), id])?;
    operator_transition(
        conn,
        id,
        now,
        changed,
        (JobState::Dead, JobState::Queued),
        history::REPLAY_REASON,
        (events, moves),
    )
}

/// Every dead job `filter` picks → queued, fresh attempt budget, in one
/// statement; an event each, written before it by another. In id order.
///
/// The events are written from the jobs' own rows, so that a replay holds
/// none of them in memory. (Collected one by one and sent as one JSON
/// document, with an `UPDATE` that kept a statement journal in memory, the
/// operators benchmark's replay of 100,000 jobs took the host's peak RSS
/// to 134 MiB; now 74 MiB. The two causes were not measured apart.)
pub(super) fn replay_dead(
    tx: &mut Tx<'_>,
    filter: &DeadFilter,
    now: Timestamp,
    events: &mut Events,
) -> StoreResult<Vec<Moved>> {
    // ?1 the time, then the filter's: the same for both statements.
    let (conditions, params) = dead_conditions(
        filter,
        1,
        |n| format!("?{n}"),
        |p| format!("id IN (SELECT value FROM json_each({p}))"),
        |col, p| format!("instr({col}, {p}) > 0"),
    );
    let values: Vec<rusqlite::types::Value> =
        std::iter::once(rusqlite::types::Value::Integer(now.as_micros()))
            .chain(sql_values(params))
            .collect();
    // The batch's earlier events first, so that each job's history stays
    // in order.
    tx.write_events(events)?;
    let conn = tx.conn()?;
    let written = conn
        .prepare_cached(&format!(
            "INSERT OR FAIL INTO job_events (job_id, at, from_state, to_state, attempt, actor_id, reason)
             SELECT id, ?1, 'dead', 'queued', 0, {actor}, {reason} FROM jobs
             WHERE state = 'dead'{conditions}
             ORDER BY id",
            actor = history::OPERATOR_ACTOR.id,
            reason = sql_literal(history::REPLAY_REASON),
        ))?
        .execute(rusqlite::params_from_iter(&values))?;
    let mut replayed: Vec<Moved> = conn
        .prepare_cached(&format!(
            "UPDATE OR FAIL jobs SET state = 'queued', attempt = 0, run_at = ?1, result = NULL,
                    finished_at = NULL, updated_at = ?1
             WHERE state = 'dead'{conditions}
             RETURNING id, job_type"
        ))?
        .query_map(rusqlite::params_from_iter(&values), |r| {
            Ok(Moved {
                id: r.get(0)?,
                job_type: r.get(1)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    if written != replayed.len() {
        // One writer, one transaction: both statements saw the same jobs.
        return Err(StoreError::Backend(format!(
            "a replay wrote {written} events for {} jobs",
            replayed.len()
        )));
    }
    replayed.sort_by_key(|m| m.id);
    let mut per_type: std::collections::BTreeMap<&str, u64> = Default::default();
    for m in &replayed {
        *per_type.entry(&m.job_type).or_default() += 1;
    }
    for (job_type, n) in per_type {
        moved(
            &mut tx.moves,
            job_type,
            Some(JobState::Dead),
            JobState::Queued,
            n,
        );
    }
    Ok(replayed)
}

/// `text` as an SQL string literal.
fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The operator's statements' parameters (`store/query.rs`) as rusqlite
/// binds them.
fn sql_values(params: Vec<Param<'_>>) -> impl Iterator<Item = rusqlite::types::Value> + '_ {
    params.into_iter().map(|p| match p {
        Param::Text(t) => rusqlite::types::Value::Text(t.to_owned()),
        Param::Int(n) => rusqlite::types::Value::Integer(n),
        Param::Ids(doc) => rusqlite::types::Value::Text(doc),
    })
}

/// Deletes the finished jobs `p` picks and their events; how many.
pub(super) fn prune(conn: &Connection, p: &Prune, moves: &mut Moves) -> StoreResult<u64> {
    let (ids, params) = prune_ids_sql(p, "jobs INDEXED BY jobs_finished", "", |n| format!("?{n}"));
    let values = sql_values(params);
    let gone: Vec<(JobId, String)> = conn
        .prepare_cached(&format!(
            "DELETE FROM jobs WHERE id IN ({ids}) RETURNING id, job_type"
        ))?
        .query_map(rusqlite::params_from_iter(values), |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    if gone.is_empty() {
        return Ok(0);
    }
    // The writer does not enforce the events' foreign key: delete them here.
    let doc = serde_json::to_string(&gone.iter().map(|(id, _)| id).collect::<Vec<_>>())
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    conn.prepare_cached(
        "DELETE FROM job_events WHERE job_id IN (SELECT value FROM json_each(?1))",
    )?
    .execute([doc])?;
    let mut per_type: std::collections::BTreeMap<&str, u64> = Default::default();
    for (_, job_type) in &gone {
        *per_type.entry(job_type).or_default() += 1;
    }
    for (job_type, n) in per_type {
        removed(moves, job_type, p.state, n);
    }
    Ok(gone.len() as u64)
}

/// Pauses or resumes claims of `job_type`; whether that changed anything.
pub(super) fn queue_pause(
    conn: &Connection,
    job_type: &str,
    paused: bool,
    now: Timestamp,
) -> StoreResult<bool> {
    let changed = if paused {
        conn.prepare_cached(
            "INSERT INTO queue_pauses (job_type, paused_at) VALUES (?1, ?2)
             ON CONFLICT (job_type) DO NOTHING",
        )?
        .execute(params![job_type, now.as_micros()])?
    } else {
        conn.prepare_cached("DELETE FROM queue_pauses WHERE job_type = ?1")?
            .execute([job_type])?
    };
    Ok(changed > 0)
}

pub(super) fn cancel(
    conn: &Connection,
    id: JobId,
    now: Timestamp,
    events: &mut Events,
    moves: &mut Moves,
) -> StoreResult<JobRecord> {
    let from: Option<String> = conn
        .prepare_cached("SELECT state FROM jobs WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    let from = match from {
        None => return Err(StoreError::NotFound(id)),
        Some(s) => parse_state(&s)?,
    };
    let changed = conn
        .prepare_cached(
            "UPDATE jobs SET state = 'cancelled', finished_at = ?1, updated_at = ?1,
                             lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
             WHERE id = ?2 AND state IN ('queued', 'scheduled', 'running')",
        )?
        .execute(params![now.as_micros(), id])?;
    operator_transition(
        conn,
        id,
        now,
        changed,
        (from, JobState::Cancelled),
        history::CANCEL_REASON,
        (events, moves),
    )
}

/// After an operator's conditional UPDATE: records the event if it applied,
/// else says why not. Returns the job as it now is.
pub(super) fn operator_transition(
    conn: &Connection,
    id: JobId,
    now: Timestamp,
    rows_affected: usize,
    (from, to): (JobState, JobState),
    reason: &str,
    (events, moves): (&mut Events, &mut Moves),
) -> StoreResult<JobRecord> {
    let record = conn
        .prepare_cached("SELECT * FROM jobs WHERE id = ?1")?
        .query_row([id], |r| Ok(record_of(r)))
        .optional()?
        .transpose()?
        .ok_or(StoreError::NotFound(id))?;
    if rows_affected == 0 {
        return Err(StoreError::WrongState {
            id,
            state: record.state,
        });
    }
    moved(moves, &record.job_type, Some(from), to, 1);
    events.push(Event {
        job_id: id,
        at: now,
        from: Some(from),
        to,
        attempt: i64::from(record.attempt),
        actor: history::OPERATOR_ACTOR,
        reason: Some(reason.into()),
    });
    Ok(record)
}

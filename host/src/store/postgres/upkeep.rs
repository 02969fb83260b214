//! The rarer transitions, each one statement with its events: release at
//! shutdown, the reaper, the promoter, the operator's replay and cancel, and
//! the pruner.
//! Those that make jobs ready also `NOTIFY` in the same transaction, so the
//! other hosts' workers hear of it. The reaper and promoter skip rows
//! another host holds, so every host may run them at once.

use sqlx::{PgConnection, PgPool, Postgres, Row as _, Transaction};

use super::READY_CHANNEL;
use crate::clock::Timestamp;
use crate::job::{JobId, JobRecord, JobState};
use crate::store::history;
use crate::store::query::{DeadFilter, Param, Prune, bound, dead_conditions, prune_ids_sql};
use crate::store::rows::{parse_state, record_of};
use crate::store::{Buried, Moved, Reaped, StoreError, StoreResult};

async fn notify_ready(conn: &mut PgConnection) -> StoreResult<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(READY_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

/// Commits `tx`, having announced ready jobs first if there are any.
async fn commit(mut tx: Transaction<'_, Postgres>, readied: bool) -> StoreResult<()> {
    if readied {
        notify_ready(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) const RELEASE: &str = "
    WITH released AS (
        UPDATE jobs SET state = 'queued', attempt = attempt - 1, updated_at = $1,
               lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
        WHERE id = $2 AND lease_token = $3
        RETURNING id, attempt
    )
    INSERT INTO job_events (job_id, at, from_state, to_state, attempt, actor_id, reason)
    SELECT id, $1, 'running', 'queued', attempt, $4, $5 FROM released
    RETURNING job_id";

pub(super) async fn release(
    pool: &PgPool,
    id: JobId,
    token: i64,
    now: Timestamp,
) -> StoreResult<bool> {
    let mut tx = pool.begin().await?;
    let released: Option<i64> = sqlx::query_scalar(RELEASE)
        .bind(now.as_micros())
        .bind(id)
        .bind(token)
        .bind(history::RELEASE_ACTOR.id)
        .bind(history::RELEASE_REASON)
        .fetch_optional(&mut *tx)
        .await?;
    commit(tx, released.is_some()).await?;
    Ok(released.is_some())
}

const REAP: &str = "
    WITH expired AS (
        SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at <= $1
        FOR UPDATE SKIP LOCKED
    ), reaped AS (
        UPDATE jobs SET
               state = CASE WHEN jobs.attempt >= jobs.max_attempts THEN 'dead' ELSE 'queued' END,
               finished_at = CASE WHEN jobs.attempt >= jobs.max_attempts THEN $1 END,
               last_error = 'lease expired: attempt ' || jobs.attempt
                            || ' stopped without reporting an outcome (host crashed or was killed)',
               updated_at = $1, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
        FROM expired WHERE jobs.id = expired.id
        RETURNING jobs.id, jobs.state, jobs.attempt, jobs.last_error, jobs.job_type
    ), events AS (
        INSERT INTO job_events (job_id, at, from_state, to_state, attempt, actor_id, reason)
        SELECT id, $1, 'running', state, attempt, $2, last_error FROM reaped
    )
    SELECT id, state, job_type, last_error FROM reaped ORDER BY id";

pub(super) async fn reap(pool: &PgPool, now: Timestamp) -> StoreResult<Reaped> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(i64, String, String, String)> = sqlx::query_as(REAP)
        .bind(now.as_micros())
        .bind(history::REAP_ACTOR.id)
        .fetch_all(&mut *tx)
        .await?;
    let mut reaped = Reaped::default();
    for (id, state, job_type, error) in rows {
        match parse_state(&state)? {
            JobState::Dead => reaped.dead.push(Buried {
                id,
                job_type,
                error,
            }),
            _ => reaped.requeued.push(Moved { id, job_type }),
        }
    }
    commit(tx, !reaped.requeued.is_empty()).await?;
    Ok(reaped)
}

const PROMOTE: &str = "
    WITH due AS (
        SELECT id FROM jobs WHERE state = 'scheduled' AND run_at <= $1
        FOR UPDATE SKIP LOCKED
    ), promoted AS (
        UPDATE jobs SET state = 'queued', updated_at = $1
        FROM due WHERE jobs.id = due.id
        RETURNING jobs.id, jobs.attempt, jobs.job_type
    ), events AS (
        INSERT INTO job_events (job_id, at, from_state, to_state, attempt, actor_id, reason)
        SELECT id, $1, 'scheduled', 'queued', attempt, $2, $3 FROM promoted
    )
    SELECT id, job_type FROM promoted ORDER BY id";

pub(super) async fn promote(pool: &PgPool, now: Timestamp) -> StoreResult<Vec<Moved>> {
    let mut tx = pool.begin().await?;
    let promoted: Vec<(i64, String)> = sqlx::query_as(PROMOTE)
        .bind(now.as_micros())
        .bind(history::PROMOTE_ACTOR.id)
        .bind(history::PROMOTE_REASON)
        .fetch_all(&mut *tx)
        .await?;
    commit(tx, !promoted.is_empty()).await?;
    Ok(promoted
        .into_iter()
        .map(|(id, job_type)| Moved { id, job_type })
        .collect())
}

/// `(state = 'dead') IS TRUE` rather than `state = 'dead'`: the same test,
/// which the partial index `jobs_dead` does not match, so the planner finds
/// the job by its primary key instead of walking every dead job's entry
/// when its statistics say there are few.
pub(super) const REPLAY: &str = "
    WITH replayed AS (
        UPDATE jobs SET state = 'queued', attempt = 0, run_at = $1, result = NULL,
               finished_at = NULL, updated_at = $1
        WHERE id = $2 AND (state = 'dead') IS TRUE
        RETURNING *
    ), events AS (
        INSERT INTO job_events (job_id, at, from_state, to_state, attempt, actor_id, reason)
        SELECT id, $1, 'dead', 'queued', attempt, $3, $4 FROM replayed
    )
    SELECT * FROM replayed";

pub(super) async fn replay(pool: &PgPool, id: JobId, now: Timestamp) -> StoreResult<JobRecord> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(REPLAY)
        .bind(now.as_micros())
        .bind(id)
        .bind(history::OPERATOR_ACTOR.id)
        .bind(history::REPLAY_REASON)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else {
        return Err(why_not(&mut tx, id).await);
    };
    let record = record_of(&row)?;
    commit(tx, true).await?;
    Ok(record)
}

/// Every dead job `filter` picks → queued, fresh attempt budget, with an
/// event each, in one statement. In id order.
pub(super) async fn replay_dead(
    pool: &PgPool,
    filter: &DeadFilter,
    now: Timestamp,
) -> StoreResult<Vec<Moved>> {
    let (conditions, params) = dead_conditions(
        filter,
        3,
        |n| format!("${n}"),
        |p| format!("id IN (SELECT value::bigint FROM jsonb_array_elements_text({p}::jsonb))"),
        |col, p| format!("strpos({col}, {p}) > 0"),
    );
    let sql = format!(
        "WITH replayed AS (
            UPDATE jobs SET state = 'queued', attempt = 0, run_at = $1, result = NULL,
                   finished_at = NULL, updated_at = $1
            WHERE state = 'dead'{conditions}
            RETURNING id, job_type, attempt
        ), events AS (
            INSERT INTO job_events (job_id, at, from_state, to_state, attempt, actor_id, reason)
            SELECT id, $1, 'dead', 'queued', attempt, $2, $3 FROM replayed ORDER BY id
        )
        SELECT id, job_type FROM replayed ORDER BY id"
    );
    let fixed = [
        Param::Int(now.as_micros()),
        Param::Int(history::OPERATOR_ACTOR.id),
        Param::Text(history::REPLAY_REASON),
    ];
    let query = bound(sql, fixed.into_iter().chain(params).collect());
    let mut tx = pool.begin().await?;
    let rows = query.fetch_all(&mut *tx).await?;
    commit(tx, !rows.is_empty()).await?;
    rows.iter()
        .map(|row| {
            Ok(Moved {
                id: row.try_get("id")?,
                job_type: row.try_get("job_type")?,
            })
        })
        .collect()
}

/// Deletes the finished jobs `p` picks; their events go with them (the
/// foreign key cascades) and the count triggers see the DELETE. Rows another
/// host's pruner holds are skipped, not waited for.
pub(super) async fn prune(pool: &PgPool, p: &Prune) -> StoreResult<u64> {
    let (ids, params) = prune_ids_sql(p, "jobs", " FOR UPDATE SKIP LOCKED", |n| format!("${n}"));
    let sql = format!("DELETE FROM jobs WHERE id IN ({ids})");
    Ok(bound(sql, params).execute(pool).await?.rows_affected())
}

const CANCEL: &str = "
    WITH old AS (
        SELECT id, state FROM jobs WHERE id = $2 FOR UPDATE
    ), cancelled AS (
        UPDATE jobs SET state = 'cancelled', finished_at = $1, updated_at = $1,
                        lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
        FROM old WHERE jobs.id = old.id AND old.state IN ('queued', 'scheduled', 'running')
        RETURNING jobs.*, old.state AS from_state
    ), events AS (
        INSERT INTO job_events (job_id, at, from_state, to_state, attempt, actor_id, reason)
        SELECT id, $1, from_state, 'cancelled', attempt, $3, $4 FROM cancelled
    )
    SELECT * FROM cancelled";

pub(super) async fn cancel(pool: &PgPool, id: JobId, now: Timestamp) -> StoreResult<JobRecord> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(CANCEL)
        .bind(now.as_micros())
        .bind(id)
        .bind(history::OPERATOR_ACTOR.id)
        .bind(history::CANCEL_REASON)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else {
        return Err(why_not(&mut tx, id).await);
    };
    let record = record_of(&row)?;
    tx.commit().await?;
    Ok(record)
}

/// Why an operator's transition changed nothing: no such job, or the state
/// it is in.
async fn why_not(conn: &mut PgConnection, id: JobId) -> StoreError {
    let state: Result<Option<String>, _> =
        sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await;
    match state {
        Ok(None) => StoreError::NotFound(id),
        Ok(Some(s)) => match parse_state(&s) {
            Ok(state) => StoreError::WrongState { id, state },
            Err(e) => e,
        },
        Err(e) => e.into(),
    }
}

//! Completions: every outcome of a batch in one statement, each row fenced
//! by its own lease token, the events written from the updated rows.
//!
//! The token alone fences, as in every statement that finds a running job by
//! id: only a running job has one (the CHECK `jobs_lease_only_when_running`,
//! migration 0012), and leaving out `state = 'running'` keeps the planner on
//! the primary key. With it, the partial index `jobs_leased` matches too, and
//! statistics taken while few jobs ran make a scan of all of it look
//! cheapest (see [`super::BY_ID`]).

use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgConnection, Postgres};

use super::ids_of;

use crate::store::{Completion, StoreResult};

pub(super) const COMPLETE_MANY: &str = "
    WITH c AS (
        SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[],
                             $6::bigint[], $7::bigint[], $8::text[], $9::int[], $10::int[])
            AS c (id, token, state, text, run_at, now, started_at, digest, actor_id, digest_id)
    ), done AS (
        UPDATE jobs SET state = c.state,
               result = CASE WHEN c.state = 'succeeded' THEN c.text END,
               last_error = CASE WHEN c.state = 'succeeded' THEN jobs.last_error ELSE c.text END,
               run_at = COALESCE(c.run_at, jobs.run_at),
               finished_at = CASE WHEN c.state = 'scheduled' THEN NULL ELSE c.now END,
               plugin_digest = c.digest, updated_at = c.now, started_at = c.started_at,
               lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
        FROM c
        WHERE jobs.id = c.id AND jobs.lease_token = c.token
        RETURNING jobs.id, jobs.state, jobs.attempt, jobs.last_error, c.now, c.actor_id,
                  c.digest_id
    ), events AS (
        INSERT INTO job_events (job_id, at, from_state, to_state, attempt, actor_id, digest_id,
                                reason)
        SELECT id, now, 'running', state, attempt, actor_id, digest_id,
               CASE WHEN state = 'succeeded' THEN NULL ELSE last_error END
        FROM done
    )
    SELECT id FROM done";

/// Who reported a completion and from which plugin version, as ids of the
/// history's names ([`crate::store::history`]), looked up before it is
/// queued for the committer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Source {
    pub(super) actor: i32,
    pub(super) digest: i32,
}

/// Records completions of distinct jobs; returns, per completion, whether
/// its lease still held (and so whether it applied).
pub(super) async fn complete_many(
    conn: &mut PgConnection,
    completions: &[(&Completion, Source)],
) -> StoreResult<Vec<bool>> {
    let ids = ids_of(complete_many_query(completions), conn).await?;
    Ok(applied(completions, ids))
}

/// Per completion, whether it applied, from the ids `complete_many`'s
/// statement returned. Ids are distinct and the token is in the WHERE
/// clause: an id coming back means that completion applied.
pub(super) fn applied(completions: &[(&Completion, Source)], ids: Vec<i64>) -> Vec<bool> {
    let applied: std::collections::HashSet<i64> = ids.into_iter().collect();
    completions
        .iter()
        .map(|(c, _)| applied.contains(&c.id))
        .collect()
}

/// `complete_many`'s statement, unsent (the committer sends a lone batch
/// of completions as a transaction of its own). Its first column is the id
/// of each completion that applied.
pub(super) fn complete_many_query<'q>(
    completions: &[(&'q Completion, Source)],
) -> Query<'q, Postgres, PgArguments> {
    let n = completions.len();
    let (mut ids, mut tokens, mut states, mut texts, mut run_ats) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut nows, mut starts, mut digests, mut actor_ids, mut digest_ids) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for &(c, source) in completions {
        let (state, text, run_at) = c.outcome.columns();
        let run_at = run_at.map(|t| t.as_micros());
        ids.push(c.id);
        tokens.push(c.token);
        states.push(state.as_str());
        texts.push(text);
        run_ats.push(run_at);
        nows.push(c.now.as_micros());
        starts.push(c.started_at.as_micros());
        digests.push(c.plugin_digest.as_str());
        actor_ids.push(source.actor);
        digest_ids.push(source.digest);
    }
    sqlx::query(COMPLETE_MANY)
        .bind(ids)
        .bind(tokens)
        .bind(states)
        .bind(texts)
        .bind(run_ats)
        .bind(nows)
        .bind(starts)
        .bind(digests)
        .bind(actor_ids)
        .bind(digest_ids)
}

//! The operator's queries over many jobs (a listing, a bulk replay of the
//! dead-letter queue, retention) and the schedules' writes. Both backends
//! build the same statements here, with their own placeholders.

use std::fmt::Write as _;

use crate::clock::Timestamp;
use crate::job::{JobId, JobState};

/// The most jobs one page of a listing holds.
pub const MAX_LIST: usize = 1000;

/// Which jobs a listing shows, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobQuery {
    pub state: Option<JobState>,
    pub job_type: Option<String>,
    /// Only jobs older than this one (the cursor: the last id of the page
    /// before). Ids only grow, so pages never repeat or skip a job.
    pub before: Option<JobId>,
    /// 1 to [`MAX_LIST`].
    pub limit: usize,
}

/// Which dead jobs a bulk replay moves: every condition given holds (none
/// given: every dead job).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadFilter {
    pub job_type: Option<String>,
    pub ids: Option<Vec<JobId>>,
    /// Jobs whose last error contains this text (case-sensitive).
    pub error_contains: Option<String>,
}

/// Which finished jobs one prune deletes: up to `limit` jobs in `state` (a
/// final one: succeeded, dead or cancelled) that finished before
/// `finished_before`, oldest first, with their history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prune {
    pub state: JobState,
    pub job_type: Option<String>,
    pub finished_before: Timestamp,
    /// 1 to [`MAX_PRUNE`]: a pruner deletes in small batches, so no
    /// transaction holds the store for long.
    pub limit: usize,
}

/// The most jobs one prune deletes.
pub const MAX_PRUNE: usize = 10_000;

/// A statement's parameters, in placeholder order.
pub(crate) enum Param<'q> {
    Text(&'q str),
    Int(i64),
    /// A JSON array of ids (SQLite reads it with `json_each`; PostgreSQL
    /// with `jsonb_array_elements_text`).
    Ids(String),
}

/// Below this many jobs in a state, a listing of that state reads them
/// through the state's partial index and sorts them; above it, it walks the
/// table newest first, where so many are usually close together. (Neither
/// backend's planner can tell: SQLite keeps no statistics here, and
/// PostgreSQL's, even fresh, know nothing of how states lie along the ids.)
pub(crate) const FEW_IN_STATE: u64 = 20_000;

/// Whether a listing of `q.state`, which holds `in_state` jobs, is better
/// read through the state's partial index (there is none for succeeded).
pub(crate) fn few_in_state(q: &JobQuery, in_state: Option<u64>) -> bool {
    q.state.is_some_and(|s| s != JobState::Succeeded) && in_state.is_some_and(|n| n < FEW_IN_STATE)
}

/// `sql` with `params` bound in order: the statements built here, as either
/// backend runs them.
pub(crate) fn bound<'q, DB>(
    sql: String,
    params: Vec<Param<'q>>,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
where
    DB: sqlx::Database,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    // Built from fixed fragments; every value is a bound parameter.
    let query = sqlx::query(sqlx::AssertSqlSafe(sql));
    params.into_iter().fold(query, |query, p| match p {
        Param::Text(t) => query.bind(t),
        Param::Int(n) => query.bind(n),
        Param::Ids(doc) => query.bind(doc),
    })
}

/// The listing: `SELECT * FROM <from> ... ORDER BY <order> DESC` and its
/// parameters. The state is written as a literal, so the partial indexes
/// per state can serve it; `from` is `jobs` or `jobs` with a backend's index
/// hint, `order` is `id`, or an expression of it that keeps a backend from
/// walking the primary key.
pub(crate) fn list_sql<'q>(
    q: &'q JobQuery,
    from: &str,
    order: &str,
    placeholder: fn(usize) -> String,
) -> (String, Vec<Param<'q>>) {
    let mut sql = format!("SELECT * FROM {from} WHERE TRUE");
    let mut params = Vec::new();
    if let Some(state) = q.state {
        let _ = write!(sql, " AND state = '{}'", state.as_str());
    }
    if let Some(t) = &q.job_type {
        params.push(Param::Text(t));
        let _ = write!(sql, " AND job_type = {}", placeholder(params.len()));
    }
    if let Some(before) = q.before {
        params.push(Param::Int(before));
        let _ = write!(sql, " AND id < {}", placeholder(params.len()));
    }
    params.push(Param::Int(q.limit.clamp(1, MAX_LIST) as i64));
    let _ = write!(
        sql,
        " ORDER BY {order} DESC LIMIT {}",
        placeholder(params.len())
    );
    (sql, params)
}

/// The conditions of a bulk replay after `WHERE state = 'dead'`, numbering
/// placeholders after the first `taken`. `ids_in` turns a placeholder into
/// the backend's "id is in this JSON array" test; `contains` turns two
/// expressions into its substring test.
pub(crate) fn dead_conditions<'q>(
    f: &'q DeadFilter,
    taken: usize,
    placeholder: fn(usize) -> String,
    ids_in: fn(&str) -> String,
    contains: fn(&str, &str) -> String,
) -> (String, Vec<Param<'q>>) {
    let mut sql = String::new();
    let mut params = Vec::new();
    if let Some(t) = &f.job_type {
        params.push(Param::Text(t));
        let _ = write!(sql, " AND job_type = {}", placeholder(taken + params.len()));
    }
    if let Some(ids) = &f.ids {
        let doc = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
        params.push(Param::Ids(doc));
        let p = placeholder(taken + params.len());
        let _ = write!(sql, " AND {}", ids_in(&p));
    }
    if let Some(text) = &f.error_contains {
        params.push(Param::Text(text));
        let p = placeholder(taken + params.len());
        let _ = write!(sql, " AND {}", contains("last_error", &p));
    }
    (sql, params)
}

/// The ids a prune deletes, oldest finished first: `SELECT id FROM <from>
/// WHERE ...` (the state as a literal, so the finished jobs' partial index
/// serves it) and its parameters; `suffix` ends the statement (PostgreSQL
/// skips rows another host is deleting).
pub(crate) fn prune_ids_sql<'q>(
    p: &'q Prune,
    from: &str,
    suffix: &str,
    placeholder: fn(usize) -> String,
) -> (String, Vec<Param<'q>>) {
    let mut params = vec![Param::Int(p.finished_before.as_micros())];
    let mut sql = format!(
        "SELECT id FROM {from} WHERE state = '{}' AND finished_at IS NOT NULL \
         AND finished_at < {}",
        p.state.as_str(),
        placeholder(1)
    );
    if let Some(t) = &p.job_type {
        params.push(Param::Text(t));
        let _ = write!(sql, " AND job_type = {}", placeholder(params.len()));
    }
    params.push(Param::Int(p.limit.clamp(1, MAX_PRUNE) as i64));
    let _ = write!(
        sql,
        " ORDER BY finished_at LIMIT {}{suffix}",
        placeholder(params.len())
    );
    (sql, params)
}

/// Creates or replaces a schedule: name, type, cron, time zone, payload,
/// source, next run, now. A replacement keeps its next run (and history)
/// when its cron and time zone are the same. Every expression in `SET`
/// reads the row as it was.
pub(crate) fn schedule_put_sql(p: fn(usize) -> String) -> String {
    format!(
        "INSERT INTO schedules (name, job_type, cron, timezone, payload, source, next_run_at,
                                created_at, updated_at)
         VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {})
         ON CONFLICT (name) DO UPDATE SET
             job_type = excluded.job_type, payload = excluded.payload,
             source = excluded.source, updated_at = excluded.updated_at,
             next_run_at = CASE WHEN schedules.cron = excluded.cron
                                 AND schedules.timezone = excluded.timezone
                                THEN schedules.next_run_at ELSE excluded.next_run_at END,
             cron = excluded.cron, timezone = excluded.timezone",
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        p(6),
        p(7),
        p(8),
        p(8)
    )
}

/// Moves a schedule past a tick it fired: name, from, next, fired, job,
/// now; only if its next run is still `from`.
pub(crate) fn schedule_advance_sql(p: fn(usize) -> String) -> String {
    format!(
        "UPDATE schedules SET next_run_at = {}, last_run_at = {}, last_job_id = {}, updated_at = {}
         WHERE name = {} AND next_run_at = {}",
        p(3),
        p(4),
        p(5),
        p(6),
        p(1),
        p(2)
    )
}

//! The group commit: each of a host's committers takes every enqueue and
//! completion waiting on their channel and applies them in one transaction, so a busy
//! host pays one round trip per statement kind and one WAL flush per batch
//! instead of per job.
//!
//! A batch that is one statement (keyless enqueues only, or completions
//! only: at low load, a lone submission) is sent without BEGIN and COMMIT,
//! as a transaction of its own: one round trip to the server instead of
//! four.
//!
//! If the batch fails before its COMMIT, nothing of it was written: a lost
//! connection is retried on fresh ones for up to a second (pooled
//! connections may have died with the server's restart or a
//! `pg_terminate_backend`), any other failure replays
//! each command in a transaction of its own, so a failure stays with its
//! caller and nothing is half-written. A COMMIT whose answer is lost is
//! never sent again: the batch may have been written, and its callers are
//! told the store was unavailable. A lone statement counts as its own
//! COMMIT, except when the server refused it before it finished (see
//! [`autocommit`]).

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::StreamExt as _;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{Either, Executor as _, PgPool, Postgres, Row as _};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::complete::{Source, applied, complete_many, complete_many_query};
use super::enqueue::{created, insert, insert_many, insert_many_query};
use super::on_fresh_connections;
use crate::clock::Timestamp;
use crate::store::{Completion, Enqueued, NewJob, StoreError, StoreResult};

/// Most commands applied in one transaction.
const MAX_BATCH: usize = 1024;

/// One write, as the committer receives it.
pub(super) enum Cmd {
    Insert {
        job: NewJob,
        now: Timestamp,
        reply: oneshot::Sender<StoreResult<Enqueued>>,
    },
    InsertBatch {
        jobs: Vec<NewJob>,
        now: Timestamp,
        reply: oneshot::Sender<StoreResult<Vec<Enqueued>>>,
    },
    Complete {
        completion: Completion,
        source: Source,
        reply: oneshot::Sender<StoreResult<bool>>,
    },
}

/// What one command did.
enum Done {
    Enqueued(Enqueued),
    Batch(Vec<Enqueued>),
    Applied(bool),
}

/// Committers per host. Two, so that one batch is built and sent while
/// the other's statements run and its WAL flush is awaited.
pub(super) const COMMITTERS: usize = 2;

/// Runs until `closing`, then drains what was already sent and ends
/// (dropping `_ended`, which tells `close` it may close the pool). Every
/// committer of a host shares `rx`: each takes what is waiting when it is
/// free.
pub(super) async fn run(
    pool: PgPool,
    rx: Arc<Mutex<mpsc::Receiver<Cmd>>>,
    closing: CancellationToken,
    _ended: Arc<DropGuard>,
) {
    let mut batch: Vec<Cmd> = Vec::with_capacity(MAX_BATCH);
    loop {
        let received = {
            let mut rx = rx.lock().await;
            tokio::select! {
                n = rx.recv_many(&mut batch, MAX_BATCH) => n,
                () = closing.cancelled(), if !rx.is_closed() => {
                    // Take nothing new; what is queued is still applied.
                    rx.close();
                    continue;
                }
            }
        };
        if received == 0 {
            break;
        }
        let results = apply_or_replay(&pool, &batch).await;
        for (cmd, result) in batch.drain(..).zip(results) {
            answer(cmd, result);
        }
    }
}

/// Sends each caller its result. A caller that went away (its request was
/// cancelled) finds its change committed regardless, which is what it asked.
fn answer(cmd: Cmd, result: StoreResult<Done>) {
    match cmd {
        Cmd::Insert { reply, .. } => {
            let _ = reply.send(result.map(|done| match done {
                Done::Enqueued(e) => e,
                _ => unreachable!("an insert is answered with Enqueued"),
            }));
        }
        Cmd::InsertBatch { reply, .. } => {
            let _ = reply.send(result.map(|done| match done {
                Done::Batch(e) => e,
                _ => unreachable!("a batch insert is answered with Batch"),
            }));
        }
        Cmd::Complete { reply, .. } => {
            let _ = reply.send(result.map(|done| match done {
                Done::Applied(ok) => ok,
                _ => unreachable!("a completion is answered with Applied"),
            }));
        }
    }
}

async fn apply_or_replay(pool: &PgPool, batch: &[Cmd]) -> Vec<StoreResult<Done>> {
    let lost_before_commit = |f: &Failed| matches!(f, Failed::Before(e) if e.is_unavailable());
    let failed = match on_fresh_connections(|| apply(pool, batch), lost_before_commit).await {
        Ok(done) => return done.into_iter().map(Ok).collect(),
        // The COMMIT was sent and its answer lost: the batch may have
        // committed, so applying it again could create its jobs twice. Its
        // callers hear "unavailable" (a client retries with its idempotency
        // key; a worker's completion finds its lease gone or applies).
        Err(Failed::InCommit(e)) => return batch.iter().map(|_| Err(e.clone())).collect(),
        Err(Failed::Before(e)) => e,
    };
    if batch.len() == 1 || failed.is_unavailable() {
        // Alone already, or the database is out of reach: every command
        // would fail the same way, each after its own wait.
        return batch.iter().map(|_| Err(failed.clone())).collect();
    }
    let mut results = Vec::with_capacity(batch.len());
    for cmd in batch {
        let one = match apply(pool, std::slice::from_ref(cmd)).await {
            Ok(mut done) => Ok(done.pop().expect("one result per command")),
            Err(Failed::Before(e) | Failed::InCommit(e)) => Err(e),
        };
        results.push(one);
    }
    results
}

/// Why a batch failed: before its COMMIT was sent (nothing was written),
/// or in the COMMIT (it may or may not have been written).
enum Failed {
    Before(StoreError),
    InCommit(StoreError),
}

impl From<sqlx::Error> for Failed {
    fn from(e: sqlx::Error) -> Self {
        Failed::Before(e.into())
    }
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Self {
        Failed::Before(e)
    }
}

/// Applies `batch` in one transaction: every single keyless enqueue in one
/// statement, every completion (of distinct jobs) in one statement, the
/// rest in order; and one commit. A batch that is one of those statements
/// alone is sent as it is, without BEGIN and COMMIT. (The statements that
/// make jobs ready send their `NOTIFY` themselves.)
async fn apply(pool: &PgPool, batch: &[Cmd]) -> Result<Vec<Done>, Failed> {
    let (keyless, jobs): (Vec<usize>, Vec<(&NewJob, Timestamp)>) = batch
        .iter()
        .enumerate()
        .filter_map(|(i, cmd)| match cmd {
            Cmd::Insert { job, now, .. } if job.idempotency_key.is_none() => Some((i, (job, *now))),
            _ => None,
        })
        .unzip();
    // A second report for the same job in this batch is applied on its
    // own, after the bulk statement (its lease decides, as it would alone).
    let mut seen = HashSet::new();
    let (completed, completions): (Vec<usize>, Vec<(&Completion, Source)>) = batch
        .iter()
        .enumerate()
        .filter_map(|(i, cmd)| match cmd {
            Cmd::Complete {
                completion, source, ..
            } if seen.insert(completion.id) => Some((i, (completion, *source))),
            _ => None,
        })
        .unzip();

    // The whole batch is one statement: PostgreSQL runs it as a transaction
    // of its own, without BEGIN and COMMIT. A lone submission's path is then
    // one round trip to the server instead of four (BEGIN, the statement,
    // NOTIFY, COMMIT).
    if keyless.len() == batch.len() {
        let (query, states) = insert_many_query(&jobs);
        let ids = autocommit(pool, query).await?;
        return Ok(created(ids, states)
            .into_iter()
            .map(Done::Enqueued)
            .collect());
    }
    if completed.len() == batch.len() {
        let ids = autocommit(pool, complete_many_query(&completions)).await?;
        return Ok(applied(&completions, ids)
            .into_iter()
            .map(Done::Applied)
            .collect());
    }

    let mut tx = pool.begin().await?;
    let mut done: Vec<Option<Done>> = batch.iter().map(|_| None).collect();
    if !jobs.is_empty() {
        for (i, created) in keyless.iter().zip(insert_many(&mut tx, &jobs).await?) {
            done[*i] = Some(Done::Enqueued(created));
        }
    }
    if !completions.is_empty() {
        for (i, ok) in completed
            .iter()
            .zip(complete_many(&mut tx, &completions).await?)
        {
            done[*i] = Some(Done::Applied(ok));
        }
    }

    for (i, cmd) in batch.iter().enumerate() {
        if done[i].is_some() {
            continue;
        }
        done[i] = Some(match cmd {
            Cmd::Insert { job, now, .. } => Done::Enqueued(insert(&mut tx, job, *now).await?),
            Cmd::InsertBatch { jobs, now, .. } => {
                Done::Batch(insert_batch(&mut tx, jobs, *now).await?)
            }
            Cmd::Complete {
                completion, source, ..
            } => Done::Applied(complete_many(&mut tx, &[(completion, *source)]).await?[0]),
        });
    }

    tx.commit().await.map_err(|e| Failed::InCommit(e.into()))?;
    Ok(done
        .into_iter()
        .map(|d| d.expect("every command has a result"))
        .collect())
}

/// Runs `query` as a transaction of its own; returns its first column.
///
/// PostgreSQL commits such a statement at the Sync that ends it, after it
/// has sent the statement's CommandComplete. So an error the server sends
/// before that (a failed statement, or the FATAL of a connection that
/// `pg_terminate_backend` or a shutdown ended while it sat in the pool)
/// wrote nothing, and is `Before`. Any other failure (a connection lost
/// without an answer, as after a crash or a network reset; one after
/// CommandComplete; one of the client's own, to encode or decode) is
/// `InCommit`: the statement may have committed, and is not sent again.
/// Where a BEGIN would have failed first and been retried unseen, a lone
/// statement on a connection that died without a word is then a 503.
async fn autocommit(
    pool: &PgPool,
    query: Query<'_, Postgres, PgArguments>,
) -> Result<Vec<i64>, Failed> {
    let mut conn = pool.acquire().await?;
    let mut results = conn.fetch_many(query);
    let mut ids = Vec::new();
    let mut completed = false;
    let failed = loop {
        match results.next().await {
            None => return Ok(ids),
            Some(Ok(Either::Left(_))) => completed = true,
            Some(Ok(Either::Right(row))) => match row.try_get(0) {
                Ok(id) => ids.push(id),
                Err(e) => break Failed::InCommit(e.into()),
            },
            Some(Err(e @ sqlx::Error::Database(_))) if !completed => {
                break Failed::Before(e.into());
            }
            Some(Err(e)) => break Failed::InCommit(e.into()),
        }
    };
    drop(results);
    // Dead, or left mid-answer: not for the pool. (A statement the server
    // refused on a live connection leaves it usable.)
    if !matches!(&failed, Failed::Before(e) if !e.is_unavailable()) {
        conn.close_on_drop();
    }
    Err(failed)
}

/// A batch: its keyless jobs in one statement, then its keyed ones in
/// order, so a key repeated within the batch finds the job its first use
/// created. Results in the order of `jobs`.
async fn insert_batch(
    tx: &mut sqlx::PgConnection,
    jobs: &[NewJob],
    now: Timestamp,
) -> StoreResult<Vec<Enqueued>> {
    let (keyless, keyed): (Vec<_>, Vec<_>) = jobs
        .iter()
        .enumerate()
        .partition(|(_, j)| j.idempotency_key.is_none());
    let mut out: Vec<Option<Enqueued>> = vec![None; jobs.len()];
    let bulk: Vec<(&NewJob, Timestamp)> = keyless.iter().map(|(_, j)| (*j, now)).collect();
    for ((i, _), created) in keyless.iter().zip(insert_many(tx, &bulk).await?) {
        out[*i] = Some(created);
    }
    for (i, job) in keyed {
        out[i] = Some(insert(tx, job, now).await?);
    }
    Ok(out
        .into_iter()
        .map(|e| e.expect("every job was inserted"))
        .collect())
}

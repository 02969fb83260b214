//! The writer: one thread, one connection, every write. It takes every
//! command waiting on its channel, applies them in one transaction and
//! commits once (group commit); a failed batch is rolled back and replayed
//! command by command, so a failure stays with its caller. Claims that find
//! nothing park here and are served by the batch that readies their types.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use rusqlite::Connection;
use tokio::sync::mpsc;

use super::claim::{claim, claim_for};
use super::command::{Batch, Command, Op, Parked, Reply};
use super::complete::complete_many;
use super::enqueue::{insert, insert_many};
use super::events::Events;
use super::known::{Ids, Known, Readied, may_ready};
use super::tx::Tx;
use super::upkeep::{cancel, promote, prune, reap, release, replay, replay_dead};
use super::wal::{WalState, checkpoint, wal_restart};
use crate::clock::Timestamp;
use crate::store::counts::{Counts, Moves};
use crate::store::{ClaimWait, ClaimedJob, Completion, Enqueued, NewJob, StoreError, StoreResult};

/// Most commands applied in one transaction.
const MAX_BATCH: usize = 1024;

/// The writer: group-commits every waiting command, until a `Close` or
/// until every sender is gone.
pub(super) fn writer(
    conn: Connection,
    mut ids: Ids,
    counts: Counts,
    mut rx: mpsc::Receiver<Command>,
    wal: WalState,
) {
    let mut batch: Vec<Command> = Vec::with_capacity(MAX_BATCH);
    let mut parked: Vec<Parked> = Vec::new();
    let mut known = Known::default();
    // Owners whose unpark came before the claim it was meant to end.
    let mut early_unparks: HashSet<String> = HashSet::new();
    let mut closing = false;
    while !closing {
        if rx.blocking_recv_many(&mut batch, MAX_BATCH) == 0 {
            break;
        }
        closing = batch.iter().any(|c| matches!(c.op, Op::Close));
        parked.retain(|p| !p.reply.is_closed());
        let (results, woken) = match apply_batch(&conn, &mut ids, &known, &batch, &parked) {
            Ok(done) => {
                known.learn(&done);
                counts.apply(&done.moves);
                (done.results, done.woken)
            }
            // Something in the batch failed: nothing of it was committed.
            // Apply each command alone so the failure stays with its owner;
            // each may serve parked claims as a batch would.
            Err(_) => {
                let mut results = Vec::with_capacity(batch.len());
                for cmd in &batch {
                    let one = std::slice::from_ref(cmd);
                    let one = match apply_batch(&conn, &mut ids, &known, one, &parked) {
                        Ok(mut done) => {
                            known.learn(&done);
                            counts.apply(&done.moves);
                            answer_parked(&mut parked, std::mem::take(&mut done.woken));
                            done.results.pop().expect("one result per command")
                        }
                        Err(e) => Err(e),
                    };
                    results.push(one);
                }
                (results, Vec::new())
            }
        };
        let mut unparked = Vec::new();
        for (cmd, result) in batch.drain(..).zip(results) {
            match (cmd.op, result) {
                (Op::ClaimWait(wait), Ok(Reply::Park)) => {
                    if early_unparks.remove(&wait.owner) {
                        let _ = cmd.reply.send(Ok(Reply::Claimed(Vec::new())));
                    } else {
                        parked.push(Parked {
                            wait,
                            reply: cmd.reply,
                        });
                    }
                }
                // Answered when it was made: now the file holds it.
                (Op::Kv(write), result) => write.settle(result),
                (_, Ok(Reply::Unpark(owner))) => {
                    unparked.push(owner);
                    let _ = cmd.reply.send(Ok(Reply::Applied(true)));
                }
                // The caller may have gone away (its request was cancelled);
                // the change is committed regardless, which is what it asked for.
                (_, result) => {
                    let _ = cmd.reply.send(result);
                }
            }
        }
        // Parked claims this batch served, after the callers of the batch
        // (whose answers are the ones a client waits for).
        answer_parked(&mut parked, woken);
        for owner in unparked {
            let (ended, kept) = std::mem::take(&mut parked)
                .into_iter()
                .partition::<Vec<_>, _>(|p| p.wait.owner == owner);
            parked = kept;
            if ended.is_empty() {
                // The unpark overtook its claim: end that claim when it comes.
                early_unparks.insert(owner);
            }
            for p in ended {
                let _ = p.reply.send(Ok(Reply::Claimed(Vec::new())));
            }
        }
        // Every caller of the batch has its answer.
        if wal.restart_due.load(Ordering::Acquire) && !closing {
            wal_restart(&conn, &wal);
        }
    }
    // Leave a compact database behind: fold the whole WAL in and empty it.
    if let Err(e) = checkpoint(&conn, "TRUNCATE") {
        tracing::warn!(error = %e, "final WAL checkpoint failed");
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the sqlite writer connection");
    }
}

/// Sends the parked claims a batch served their jobs and forgets them
/// (`woken` holds indices into `parked`, in increasing order).
pub(super) fn answer_parked(parked: &mut Vec<Parked>, woken: Vec<(usize, Vec<ClaimedJob>)>) {
    // Last first, so `swap_remove` leaves the smaller indices in place.
    for (i, jobs) in woken.into_iter().rev() {
        let _ = parked.swap_remove(i).reply.send(Ok(Reply::Claimed(jobs)));
    }
}

/// Applies `batch` in one transaction. `Err` means the transaction was rolled
/// back; `Ok` holds each command's own result (a `NotFound` or `WrongState`
/// wrote nothing and does not spoil the batch).
///
/// Then, if the batch made jobs ready, it serves the parked claims waiting
/// for their types (and claims of this batch that parked) in the same
/// transaction: the second element lists the parked claims served, by index
/// into `parked`, with their jobs.
pub(super) fn apply_batch(
    conn: &Connection,
    ids: &mut Ids,
    known: &Known,
    batch: &[Command],
    parked: &[Parked],
) -> StoreResult<Batch> {
    let before = ids.job;
    let mut tx = Tx::new(conn, ids, known.empty_for(batch));
    let mut ready_types = Vec::new();
    let mut ready_any = false;
    let mut events = Events::new();
    let mut woken = Vec::new();
    let mut results: Vec<Option<StoreResult<Reply>>> = batch.iter().map(|_| None).collect();
    // Completions are the bulk of a busy writer's work: record all of them
    // in one statement. (They were concurrent, so no order among them or
    // with the other commands of the batch is lost.)
    let mut seen = std::collections::HashSet::new();
    let completions: Vec<(usize, &Completion)> = batch
        .iter()
        .enumerate()
        .filter_map(|(i, cmd)| match &cmd.op {
            Op::Complete(c) if seen.insert(c.id) => Some((i, c)),
            _ => None,
        })
        .collect();
    // Likewise every single enqueue without an idempotency key.
    let inserts: Vec<(usize, &NewJob, Timestamp)> = batch
        .iter()
        .enumerate()
        .filter_map(|(i, cmd)| match &cmd.op {
            Op::Insert(job, now) if job.idempotency_key.is_none() => Some((i, job, *now)),
            _ => None,
        })
        .collect();
    let mut run = || -> StoreResult<()> {
        if !inserts.is_empty() {
            let jobs: Vec<(&NewJob, Timestamp)> =
                inserts.iter().map(|(_, j, now)| (*j, *now)).collect();
            let created = insert_many(&mut tx, &jobs, &mut events)?;
            for ((i, _, _), created) in inserts.iter().zip(created) {
                results[*i] = Some(Ok(Reply::Enqueued(created)));
            }
        }
        if !completions.is_empty() {
            let all: Vec<&Completion> = completions.iter().map(|(_, c)| *c).collect();
            let applied = complete_many(&mut tx, &all, &mut events)?;
            for ((i, _), ok) in completions.iter().zip(applied) {
                results[*i] = Some(Ok(Reply::Applied(ok)));
            }
        }
        for (i, cmd) in batch.iter().enumerate() {
            if results[i].is_some() {
                continue;
            }
            let result = apply(&mut tx, &cmd.op, &mut events);
            if let Err(StoreError::Backend(e)) = result {
                return Err(StoreError::Backend(e));
            }
            results[i] = Some(result);
        }
        let ready = Readied::of(batch, &results);
        ready_types = ready.types.iter().map(|t| t.to_string()).collect();
        ready_any = ready.any;
        if ready.is_empty() {
            return Ok(());
        }
        tx.last_phase = true;
        // Claims parked earlier (`Ok`: their index in `parked`), then this
        // batch's that parked (`Err`: their index in the batch).
        let serve: Vec<(Result<usize, usize>, &ClaimWait)> =
            parked
                .iter()
                .enumerate()
                .filter(|(_, p)| !p.reply.is_closed())
                .map(|(i, p)| (Ok(i), &p.wait))
                .chain(batch.iter().enumerate().filter_map(|(i, cmd)| {
                    match (&cmd.op, &results[i]) {
                        (Op::ClaimWait(wait), Some(Ok(Reply::Park))) => Some((Err(i), wait)),
                        _ => None,
                    }
                }))
                .filter(|(_, wait)| ready.wanted_by(wait))
                .collect();
        for (whose, wait) in serve {
            let jobs = claim_for(&mut tx, wait, Some(&ready), &mut events)?;
            match whose {
                _ if jobs.is_empty() => {}
                Ok(i) => woken.push((i, jobs)),
                Err(i) => results[i] = Some(Ok(Reply::Claimed(jobs))),
            }
        }
        Ok(())
    };
    let outcome = run();
    // A claim's "nothing more" holds at the commit unless a command applied
    // after it may have readied its type. Keyless enqueues are applied
    // before any claim; the commands below run in order, after them.
    let (late_types, late_any) = may_ready(batch, false);
    let moves = std::mem::take(&mut tx.moves);
    let found_empty = std::mem::take(&mut tx.found_empty)
        .into_iter()
        .filter(|(t, last_phase)| *last_phase || !(late_any || late_types.contains(t.as_str())))
        .map(|(t, _)| t)
        .collect();
    let committed = match outcome {
        Ok(()) => tx.commit(&mut events),
        Err(e) => Err(e),
    };
    if let Err(e) = committed {
        // (`commit` consumed the transaction; a failed one is rolled back
        // on the same connection here.)
        let _ = conn.execute_batch("ROLLBACK");
        ids.job = before;
        ids.names.forget();
        return Err(e);
    }
    ids.names.settle();
    let results = results
        .into_iter()
        .map(|r| r.expect("every command has a result"))
        .collect();
    Ok(Batch {
        results,
        woken,
        found_empty,
        moves,
        ready_types,
        ready_any,
    })
}

pub(super) fn apply(tx: &mut Tx<'_>, op: &Op, events: &mut Events) -> StoreResult<Reply> {
    match op {
        Op::Insert(job, now) => insert(tx, job, *now, events).map(Reply::Enqueued),
        Op::InsertBatch(jobs, now) => {
            let (keyless, keyed): (Vec<_>, Vec<_>) = jobs
                .iter()
                .enumerate()
                .partition(|(_, j)| j.idempotency_key.is_none());
            let mut out: Vec<Option<Enqueued>> = vec![None; jobs.len()];
            let bulk: Vec<(&NewJob, Timestamp)> = keyless.iter().map(|(_, j)| (*j, *now)).collect();
            for ((i, _), created) in keyless.iter().zip(insert_many(tx, &bulk, events)?) {
                out[*i] = Some(created);
            }
            // Keyed jobs one by one, in order, so a key repeated within the
            // batch finds the job its first use created.
            for (i, job) in keyed {
                out[i] = Some(insert(tx, job, *now, events)?);
            }
            Ok(Reply::EnqueuedBatch(
                out.into_iter()
                    .map(|e| e.expect("every job was inserted"))
                    .collect(),
            ))
        }
        Op::Claim(req) => claim(tx, req, events).map(Reply::Claimed),
        Op::ClaimWait(wait) => {
            let jobs = claim_for(tx, wait, None, events)?;
            Ok(if jobs.is_empty() {
                Reply::Park
            } else {
                Reply::Claimed(jobs)
            })
        }
        Op::Unpark(owner) => Ok(Reply::Unpark(owner.clone())),
        // A repeated report for a job already in this batch's bulk update.
        Op::Complete(c) => {
            complete_many(tx, &[c], events).map(|applied| Reply::Applied(applied[0]))
        }
        // The rare ones: each on its own statements.
        Op::Release { .. }
        | Op::Reap(_)
        | Op::Promote(_)
        | Op::Replay(..)
        | Op::Cancel(..)
        | Op::Prune(_) => {
            let mut moves = Moves::new();
            let conn = tx.conn()?;
            let reply = match op {
                Op::Release { id, token, now } => {
                    release(conn, *id, *token, *now, events, &mut moves).map(Reply::Applied)
                }
                Op::Reap(now) => reap(conn, *now, events, &mut moves).map(Reply::Reaped),
                Op::Promote(now) => promote(conn, *now, events, &mut moves).map(Reply::Promoted),
                Op::Replay(id, now) => {
                    replay(conn, *id, *now, events, &mut moves).map(|r| Reply::Record(Box::new(r)))
                }
                Op::Cancel(id, now) => {
                    cancel(conn, *id, *now, events, &mut moves).map(|r| Reply::Record(Box::new(r)))
                }
                Op::Prune(p) => prune(conn, p, &mut moves).map(Reply::Pruned),
                _ => unreachable!("matched above"),
            };
            tx.moves.extend(moves);
            reply
        }
        Op::ReplayDead(filter, now) => replay_dead(tx, filter, *now, events).map(Reply::Replayed),
        Op::Kv(write) => write.apply(tx.conn()?).map(Reply::Applied),
        Op::Sync => Ok(Reply::Applied(true)),
        Op::QueuePause {
            job_type,
            paused,
            now,
        } => super::upkeep::queue_pause(tx.conn()?, job_type, *paused, *now).map(Reply::Applied),
        Op::Progress { id, token, percent } => {
            super::kv::progress(tx.conn()?, *id, *token, *percent).map(Reply::Applied)
        }
        Op::Schedule(op) => super::schedules::write(tx.conn()?, op).map(Reply::Applied),
        Op::Close => Ok(Reply::Closed),
    }
}

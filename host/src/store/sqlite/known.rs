//! What the writer knows about the jobs without asking SQLite: the next job
//! id, the ids of the history's names, the types known to have no ready
//! job, and what a batch readied.

use std::collections::{HashMap, HashSet};

use rusqlite::Connection;

use super::command::{Batch, Command, Op, Reply};
use crate::clock::Timestamp;
use crate::store::history::Name;
use crate::store::{ClaimWait, StoreResult};

/// The ids the writer hands out or has looked up. The writer is the only
/// writer, so it numbers new jobs itself instead of asking SQLite for
/// `MAX(id)` each time, and remembers the history's names once it has
/// their ids. (Events are numbered by SQLite, in the order they are
/// written.)
#[derive(Debug)]
pub(super) struct Ids {
    /// The largest job id in use.
    pub(super) job: i64,
    pub(super) names: Names,
}

impl Ids {
    pub(super) fn load(conn: &Connection) -> StoreResult<Ids> {
        let job = conn.query_row("SELECT COALESCE(MAX(id), 0) FROM jobs", [], |r| r.get(0))?;
        Ok(Ids {
            job,
            names: Names::default(),
        })
    }
}

/// The ids of the history's names (workers' actors, plugin versions; see
/// [`crate::store::history`]): those in the file, and those the open
/// transaction added, which a rollback takes back.
#[derive(Debug, Default)]
pub(super) struct Names {
    committed: HashMap<Name, i64>,
    pending: Vec<(Name, i64)>,
}

impl Names {
    pub(super) fn get(&self, name: &Name) -> Option<i64> {
        self.committed.get(name).copied().or_else(|| {
            self.pending
                .iter()
                .find_map(|(n, id)| (n == name).then_some(*id))
        })
    }

    /// A name this transaction found or added.
    pub(super) fn add(&mut self, name: Name, id: i64) {
        self.pending.push((name, id));
    }

    /// The transaction committed: what it found or added holds.
    pub(super) fn settle(&mut self) {
        self.committed.extend(self.pending.drain(..));
    }

    /// The transaction rolled back: what it added is gone.
    pub(super) fn forget(&mut self) {
        self.pending.clear();
    }
}

/// What the writer knows about the jobs without asking SQLite.
///
/// Only the writer makes jobs ready (enqueue, promote, requeue, release,
/// replay), so once a claim finds no ready job of a type, none appears until
/// the writer itself readies one: claims for that type skip their statement
/// until then. An idle host thus costs no statements for its idle types,
/// and a busy one none for the types without work.
#[derive(Debug, Default)]
pub(super) struct Known {
    /// Types with no ready job.
    pub(super) empty: HashSet<String>,
}

impl Known {
    /// The types a claim in `batch` may skip: known empty, and not readied
    /// by any command of the batch.
    pub(super) fn empty_for(&self, batch: &[Command]) -> HashSet<String> {
        if self.empty.is_empty() {
            return HashSet::new();
        }
        match may_ready(batch, true) {
            (_, true) => HashSet::new(),
            (types, false) => self
                .empty
                .iter()
                .filter(|t| !types.contains(t.as_str()))
                .cloned()
                .collect(),
        }
    }

    /// Learns from a committed batch: what it readied is no longer empty,
    /// then what its claims found empty (and nothing after them readied) is.
    pub(super) fn learn(&mut self, done: &Batch) {
        if done.ready_any {
            self.empty.clear();
        } else {
            for t in &done.ready_types {
                self.empty.remove(t);
            }
        }
        self.empty.extend(done.found_empty.iter().cloned());
    }
}

/// The types the commands of `batch` may ready, or whether they may ready
/// any. Without `keyless`, leaves out the keyless enqueues, which are applied
/// in bulk before every other command (so before every claim).
pub(super) fn may_ready(batch: &[Command], keyless: bool) -> (HashSet<&str>, bool) {
    let mut types = HashSet::new();
    for cmd in batch {
        match &cmd.op {
            Op::Insert(job, _) if keyless || job.idempotency_key.is_some() => {
                types.insert(job.job_type.as_str());
            }
            Op::InsertBatch(jobs, _) => types.extend(jobs.iter().map(|j| j.job_type.as_str())),
            Op::Promote(_)
            | Op::Reap(_)
            | Op::Release { .. }
            | Op::Replay(..)
            | Op::ReplayDead(..) => {
                return (types, true);
            }
            _ => {}
        }
    }
    (types, false)
}

/// What a batch made ready to claim.
pub(super) struct Readied<'b> {
    /// Jobs of these types were enqueued ready.
    pub(super) types: HashSet<&'b str>,
    /// Jobs of types the writer did not look up were made ready (promoted,
    /// requeued, released, replayed).
    pub(super) any: bool,
    /// The latest time any of it happened.
    pub(super) at: Timestamp,
}

impl<'b> Readied<'b> {
    pub(super) fn of(batch: &'b [Command], results: &[Option<StoreResult<Reply>>]) -> Self {
        let mut ready = Readied {
            types: Default::default(),
            any: false,
            at: Timestamp(0),
        };
        for (cmd, result) in batch.iter().zip(results) {
            let Some(Ok(reply)) = result else { continue };
            let at = match (&cmd.op, reply) {
                (Op::Insert(job, now), Reply::Enqueued(e)) if e.is_ready() => {
                    ready.types.insert(&job.job_type);
                    *now
                }
                (Op::InsertBatch(jobs, now), Reply::EnqueuedBatch(done)) => {
                    for (job, e) in jobs.iter().zip(done) {
                        if e.is_ready() {
                            ready.types.insert(&job.job_type);
                        }
                    }
                    *now
                }
                (Op::Promote(now), Reply::Promoted(ids)) if !ids.is_empty() => {
                    ready.any = true;
                    *now
                }
                (Op::ReplayDead(_, now), Reply::Replayed(moved)) if !moved.is_empty() => {
                    ready.any = true;
                    *now
                }
                (Op::Reap(now), Reply::Reaped(r)) if !r.requeued.is_empty() => {
                    ready.any = true;
                    *now
                }
                (Op::Release { now, .. }, Reply::Applied(true))
                | (Op::Replay(_, now), Reply::Record(_)) => {
                    ready.any = true;
                    *now
                }
                _ => continue,
            };
            ready.at = ready.at.max(at);
        }
        ready
    }

    pub(super) fn is_empty(&self) -> bool {
        !self.any && self.types.is_empty()
    }

    pub(super) fn wanted_by(&self, wait: &ClaimWait) -> bool {
        self.any
            || wait
                .requests
                .iter()
                .any(|r| self.types.contains(r.job_type.as_str()))
    }
}

//! The commands the writer takes, its replies, and what a committed batch
//! hands back: the vocabulary the writer and what it knows ([`super::known`])
//! share.

use tokio::sync::oneshot;

use crate::clock::Timestamp;
use crate::job::{JobId, JobRecord};
use crate::store::counts::Moves;
use crate::store::{
    ClaimRequest, ClaimWait, ClaimedJob, Completion, Enqueued, Moved, NewJob, Reaped, StoreResult,
};

/// One write, as the writer receives it.
pub(super) struct Command {
    pub(super) op: Op,
    pub(super) reply: oneshot::Sender<StoreResult<Reply>>,
}

pub(super) enum Op {
    Insert(NewJob, Timestamp),
    InsertBatch(Vec<NewJob>, Timestamp),
    Claim(ClaimRequest),
    ClaimWait(ClaimWait),
    Unpark(String),
    Complete(Completion),
    Release {
        id: JobId,
        token: i64,
        now: Timestamp,
    },
    Reap(Timestamp),
    Promote(Timestamp),
    Replay(JobId, Timestamp),
    ReplayDead(crate::store::DeadFilter, Timestamp),
    Cancel(JobId, Timestamp),
    Prune(crate::store::Prune),
    /// A key-value write already answered ([`super::kv`]): settled by the
    /// writer once its transaction commits, never answered.
    Kv(super::kv::Deferred),
    /// Nothing: answered once everything sent before it is committed.
    Sync,
    QueuePause {
        job_type: String,
        paused: bool,
        now: Timestamp,
    },
    Progress {
        id: JobId,
        token: i64,
        percent: u8,
    },
    Schedule(super::schedules::ScheduleOp),
    /// Stop after this batch.
    Close,
}

pub(super) enum Reply {
    Enqueued(Enqueued),
    EnqueuedBatch(Vec<Enqueued>),
    Claimed(Vec<ClaimedJob>),
    Applied(bool),
    Reaped(Reaped),
    Promoted(Vec<Moved>),
    Replayed(Vec<Moved>),
    Pruned(u64),
    Record(Box<JobRecord>),
    Closed,
    /// (Writer-internal, never sent.) A `ClaimWait` found nothing: keep it.
    Park,
    /// (Writer-internal.) End this owner's parked claims after the commit.
    Unpark(String),
}

/// A claim waiting in the writer for jobs of its types.
pub(super) struct Parked {
    pub(super) wait: ClaimWait,
    pub(super) reply: oneshot::Sender<StoreResult<Reply>>,
}

/// A committed batch: each command's result, the parked claims it served
/// (by index, with their jobs), and what it taught the writer.
pub(super) struct Batch {
    pub(super) results: Vec<StoreResult<Reply>>,
    pub(super) woken: Vec<(usize, Vec<ClaimedJob>)>,
    /// Types left without a ready job when the batch committed.
    pub(super) found_empty: Vec<String>,
    pub(super) moves: Moves,
    pub(super) ready_types: Vec<String>,
    pub(super) ready_any: bool,
}

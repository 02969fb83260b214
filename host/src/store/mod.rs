//! The store: the durable truth about every job.
//!
//! [`Store`] is the contract every backend implements; one module per backend
//! ([`sqlite`], [`postgres`]) maps its own errors to [`StoreError`] in one
//! place. The contract suite in `contract.rs` runs against every backend.
//!
//! Rules every backend keeps:
//! - a method returns only after its change is durably committed (the one
//!   exception, key-value writes on SQLite, is spelled out at
//!   [`Store::kv_write`]);
//! - each transition is one conditional statement (its WHERE clause names the
//!   states it leaves, and the lease token where a lease exists), and writes
//!   its event in the same transaction;
//! - a failed call changes nothing.
//!
//! The store does not read the clock: callers pass `now`, so tests and the
//! backends agree on time.

use async_trait::async_trait;

use crate::clock::Timestamp;
use crate::job::{JobEvent, JobId, JobRecord, JobState};

pub(crate) mod counts;
pub(crate) mod history;
pub mod postgres;
mod query;
pub(crate) mod rows;
pub mod sqlite;

pub use query::{DeadFilter, JobQuery, MAX_LIST, MAX_PRUNE, Prune};

#[cfg(test)]
mod contract;

/// A job to create.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub job_type: String,
    /// JSON text, already validated.
    pub payload: String,
    pub idempotency_key: Option<String>,
    pub max_attempts: u32,
    /// When it becomes due: `<= now` means queued at once, later means scheduled.
    pub run_at: Timestamp,
    /// Higher is claimed first ([`PRIORITIES`]); FIFO within a priority.
    pub priority: i16,
    /// Its own deadline per attempt, when shorter than its plugin's.
    pub timeout_ms: Option<u32>,
}

/// The priorities a job may have; 0 is the default.
pub const PRIORITIES: std::ops::RangeInclusive<i16> = -100..=100;

/// What an enqueue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// A new job was created.
    Created { id: JobId, state: JobState },
    /// The idempotency key was already used for this type: nothing was
    /// written; this is the job that holds it.
    Existing { id: JobId, state: JobState },
}

impl Enqueued {
    /// A new job that is ready to claim now (not delayed, not a duplicate).
    pub fn is_ready(&self) -> bool {
        matches!(
            self,
            Enqueued::Created {
                state: JobState::Queued,
                ..
            }
        )
    }
}

/// A request to lease up to `limit` ready jobs of one type.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub job_type: String,
    pub limit: usize,
    /// Who takes the lease (recorded in events).
    pub owner: String,
    /// The fence: every later transition of these jobs by this holder names
    /// it. Must be fresh for every claim (the worker draws 64 random bits):
    /// a backend may find the claim's jobs by it.
    pub token: i64,
    /// The plugin version that will run the attempts (recorded in events).
    pub plugin_digest: String,
    pub now: Timestamp,
    pub lease_expires_at: Timestamp,
}

/// A claim for several job types at once, which may wait for work.
///
/// The requests are served in order, each up to its own `limit` and all of
/// them together up to `total`. If none finds a ready job, a backend that
/// [parks claims](Store::parks_claims) keeps the claim and serves it in the
/// very transaction that next makes jobs of one of its types ready (an
/// enqueue, a promotion, a requeue), so a new job is created and leased with
/// one commit; [`Store::claim_unpark`] ends the wait. The leases then start
/// at that transaction's time and last as long as each request asked.
#[derive(Debug, Clone)]
pub struct ClaimWait {
    /// Who waits (the same owner as in every request).
    pub owner: String,
    pub requests: Vec<ClaimRequest>,
    pub total: usize,
}

/// A job leased to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedJob {
    pub id: JobId,
    pub job_type: String,
    pub payload: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    pub max_attempts: u32,
    /// When the client's request made it due: start of its queueing latency.
    pub run_at: Timestamp,
    pub token: i64,
    pub priority: i16,
    /// The job's own deadline per attempt, if it set one.
    pub timeout_ms: Option<u32>,
}

impl ClaimedJob {
    /// The order claims hand jobs out in: highest priority first, then
    /// oldest due.
    pub fn claim_order(&self) -> (std::cmp::Reverse<i16>, Timestamp, JobId) {
        (std::cmp::Reverse(self.priority), self.run_at, self.id)
    }
}

/// How an attempt ended, as the store records it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded {
        result: Option<String>,
    },
    /// A retryable failure with attempts left: scheduled again at `run_at`.
    Retry {
        error: String,
        run_at: Timestamp,
    },
    /// Fatal, or the last attempt failed: to the dead-letter queue.
    Dead {
        error: String,
    },
}

impl Outcome {
    /// What a completion writes, on every backend: the state it moves the
    /// job to, its text (the result of a success, the error of a failure)
    /// and, for a retry, when the job is due again.
    pub fn columns(&self) -> (JobState, Option<&str>, Option<Timestamp>) {
        match self {
            Outcome::Succeeded { result } => (JobState::Succeeded, result.as_deref(), None),
            Outcome::Retry { error, run_at } => (JobState::Scheduled, Some(error), Some(*run_at)),
            Outcome::Dead { error } => (JobState::Dead, Some(error), None),
        }
    }
}

/// The lease holder's report of one attempt.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: JobId,
    pub token: i64,
    pub owner: String,
    pub outcome: Outcome,
    pub plugin_digest: String,
    /// When the attempt actually began running (after its claim committed).
    pub started_at: Timestamp,
    pub now: Timestamp,
}

/// A job a maintenance service made ready, named with its type: the
/// dispatch fabric hints each type's own stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub id: JobId,
    pub job_type: String,
}

/// A job the reaper sent to the dead-letter queue, with the error it wrote
/// (the DLQ stream mirrors both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buried {
    pub id: JobId,
    pub job_type: String,
    pub error: String,
}

/// Jobs moved by the reaper.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reaped {
    pub requeued: Vec<Moved>,
    pub dead: Vec<Buried>,
}

/// A periodic job: at every tick of `cron` (in `timezone`), the scheduler
/// enqueues one job of `job_type` with `payload` ([`crate::schedules`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub name: String,
    pub job_type: String,
    /// A cron pattern: five fields, or six with seconds first.
    pub cron: String,
    /// An IANA time zone name (`UTC`, `Europe/Paris`).
    pub timezone: String,
    /// JSON text.
    pub payload: String,
    /// Who defined it: `api`, or `plugin:<name>` for a manifest's.
    pub source: String,
    /// The next tick to fire.
    pub next_run_at: Timestamp,
    pub last_run_at: Option<Timestamp>,
    pub last_job_id: Option<JobId>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A schedule moved past the tick it fired.
#[derive(Debug, Clone, PartialEq)]
pub struct Advance {
    pub name: String,
    /// The `next_run_at` it was fired from: the move applies only if it is
    /// still that (no other host moved it first).
    pub from: Timestamp,
    pub next: Timestamp,
    /// The tick fired, and the job it made.
    pub fired: Timestamp,
    pub job: JobId,
    pub now: Timestamp,
}

/// Count of jobs per state for one job type (or all).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StateCounts {
    pub queued: u64,
    pub scheduled: u64,
    pub running: u64,
    pub succeeded: u64,
    pub dead: u64,
    pub cancelled: u64,
}

impl StateCounts {
    fn slot(&mut self, state: JobState) -> &mut u64 {
        match state {
            JobState::Queued => &mut self.queued,
            JobState::Scheduled => &mut self.scheduled,
            JobState::Running => &mut self.running,
            JobState::Succeeded => &mut self.succeeded,
            JobState::Dead => &mut self.dead,
            JobState::Cancelled => &mut self.cancelled,
        }
    }

    pub fn add(&mut self, state: JobState, n: u64) {
        *self.slot(state) += n;
    }

    pub fn sub(&mut self, state: JobState, n: u64) {
        let slot = self.slot(state);
        *slot = slot.saturating_sub(n);
    }

    pub fn get(&self, state: JobState) -> u64 {
        match state {
            JobState::Queued => self.queued,
            JobState::Scheduled => self.scheduled,
            JobState::Running => self.running,
            JobState::Succeeded => self.succeeded,
            JobState::Dead => self.dead,
            JobState::Cancelled => self.cancelled,
        }
    }
}

/// Jobs per state over several types.
/// Folds `(type, state, n)` rows sorted by type (a `GROUP BY job_type,
/// state ORDER BY job_type`) into counts per type.
pub(crate) fn counts_per_type(
    rows: impl IntoIterator<Item = (String, JobState, u64)>,
) -> Vec<(String, StateCounts)> {
    let mut out: Vec<(String, StateCounts)> = Vec::new();
    for (job_type, state, n) in rows {
        if out.last().is_none_or(|(t, _)| *t != job_type) {
            out.push((job_type, StateCounts::default()));
        }
        out.last_mut().expect("pushed above").1.add(state, n);
    }
    out
}

impl<'a> std::iter::Sum<&'a StateCounts> for StateCounts {
    fn sum<I: Iterator<Item = &'a StateCounts>>(all: I) -> StateCounts {
        let mut total = StateCounts::default();
        for counts in all {
            for state in JobState::ALL {
                total.add(state, counts.get(state));
            }
        }
        total
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("job {0} not found")]
    NotFound(JobId),
    /// The job exists but is not in a state this operation applies to.
    #[error("job {id} is {state}")]
    WrongState { id: JobId, state: JobState },
    /// The store is shutting down and takes no more work.
    #[error("the store is closed")]
    Closed,
    /// The database cannot be reached (connection refused or lost, pool
    /// exhausted): nothing was written; the same call may succeed later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The backend failed; the message is for logs, never for clients.
    #[error("store backend error: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The store contract. Method names are noun-first: the thing, then the verb.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a job (or finds the one holding its idempotency key).
    async fn job_insert(&self, job: NewJob, now: Timestamp) -> StoreResult<Enqueued>;

    /// Creates many jobs in one transaction: all of them or none. Results
    /// are in the order of `jobs`; a key repeated within the batch names the
    /// job its first use created.
    async fn job_insert_batch(
        &self,
        jobs: Vec<NewJob>,
        now: Timestamp,
    ) -> StoreResult<Vec<Enqueued>>;

    async fn job_get(&self, id: JobId) -> StoreResult<Option<JobRecord>>;

    /// The job's history, oldest first.
    async fn job_events(&self, id: JobId) -> StoreResult<Vec<JobEvent>>;

    /// The job and its history as of one moment (one read snapshot), so the
    /// state shown always matches the last event shown.
    async fn job_show(&self, id: JobId) -> StoreResult<Option<(JobRecord, Vec<JobEvent>)>>;

    /// Leases up to `limit` queued jobs of one type, oldest due first, and
    /// counts their attempt. Jobs are handed to exactly one claimer.
    async fn job_claim(&self, req: ClaimRequest) -> StoreResult<Vec<ClaimedJob>>;

    /// Serves a [`ClaimWait`]: leases what is ready now; if nothing is and
    /// the backend parks claims, waits until jobs become ready or
    /// [`Store::claim_unpark`] is called (then returns an empty list).
    async fn job_claim_wait(&self, wait: ClaimWait) -> StoreResult<Vec<ClaimedJob>> {
        let mut jobs = Vec::new();
        for mut req in wait.requests {
            let left = wait.total.saturating_sub(jobs.len());
            if left == 0 {
                break;
            }
            req.limit = req.limit.min(left);
            match self.job_claim(req).await {
                Ok(claimed) => jobs.extend(claimed),
                // The leases already taken are committed: run them rather
                // than leave them to expire; the next round claims the rest.
                Err(e) if !jobs.is_empty() => {
                    tracing::warn!(error = %e, "a claim failed after others leased jobs; running those");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(jobs)
    }

    /// Whether [`Store::job_claim_wait`] waits for work (true) or returns at
    /// once (then the worker waits for hints).
    fn parks_claims(&self) -> bool {
        false
    }

    /// Ends `owner`'s parked claim: it returns what it leased, or nothing.
    /// If none is parked yet (the unpark overtook the claim), the owner's
    /// next claim that would park returns at once instead. Leases are never
    /// lost to an unpark.
    async fn claim_unpark(&self, _owner: &str) -> StoreResult<()> {
        Ok(())
    }

    /// Records an attempt's outcome if `token` still holds the job's lease.
    /// Returns false (and changes nothing) if the lease was lost.
    async fn job_complete(&self, completion: Completion) -> StoreResult<bool>;

    /// Gives a running job back to the queue without spending its attempt
    /// (graceful shutdown). Fenced like `job_complete`.
    async fn lease_release(&self, id: JobId, token: i64, now: Timestamp) -> StoreResult<bool>;

    /// Of the leases `held` (job id, lease token), the ones that no longer
    /// hold their job, by id: it was cancelled while running, or reaped and
    /// perhaps leased again. The worker stops those attempts: nothing they
    /// do can be recorded.
    async fn leases_lost(&self, held: &[(JobId, i64)]) -> StoreResult<Vec<(JobId, i64)>>;

    /// Moves every running job whose lease expired at or before `now` back to
    /// `queued`, or to `dead` if that was its last attempt.
    async fn lease_reap(&self, now: Timestamp) -> StoreResult<Reaped>;

    /// Moves every scheduled job due at or before `now` to `queued`.
    async fn job_promote(&self, now: Timestamp) -> StoreResult<Vec<Moved>>;

    /// When the earliest scheduled job falls due.
    async fn job_next_due(&self) -> StoreResult<Option<Timestamp>>;

    /// dead → queued with a fresh attempt budget.
    async fn job_replay(&self, id: JobId, now: Timestamp) -> StoreResult<JobRecord>;

    /// queued | scheduled | running → cancelled. A running job's lease is
    /// taken away with it: its attempt's completion is fenced out (and the
    /// worker stops the attempt when it sees, [`Store::leases_lost`]).
    async fn job_cancel(&self, id: JobId, now: Timestamp) -> StoreResult<JobRecord>;

    /// Pauses (`paused`) or resumes claims of `job_type` on every host
    /// sharing the store; whether that changed anything. Jobs of a paused
    /// type are still accepted; they wait.
    async fn queue_pause(&self, job_type: &str, paused: bool, now: Timestamp) -> StoreResult<bool>;

    /// The paused job types, sorted.
    async fn queues_paused(&self) -> StoreResult<Vec<String>>;

    /// Jobs, newest first, as [`JobQuery`] picks them.
    async fn job_list(&self, query: &JobQuery) -> StoreResult<Vec<JobRecord>>;

    /// Every dead job `filter` picks → queued with a fresh attempt budget, in
    /// one transaction; each gets its event. Returns them in id order (their
    /// original order, which claims keep: they share one `run_at`).
    async fn job_replay_dead(&self, filter: &DeadFilter, now: Timestamp)
    -> StoreResult<Vec<Moved>>;

    /// Deletes the finished jobs `prune` picks, with their history, in one
    /// transaction; how many. Their idempotency keys are free again.
    async fn job_prune(&self, prune: &Prune) -> StoreResult<u64>;

    /// Creates a schedule, or replaces the one of that name; true if it
    /// was created. A replacement with the same cron and time zone keeps
    /// its `next_run_at` and history (so loading the same manifest again
    /// shifts no tick); otherwise it takes the new one's.
    async fn schedule_put(&self, schedule: &Schedule) -> StoreResult<bool>;

    /// Deletes a schedule; false if there was none of that name.
    async fn schedule_delete(&self, name: &str) -> StoreResult<bool>;

    /// Moves a schedule past a tick it fired, if its `next_run_at` is still
    /// `advance.from`; whether it did.
    async fn schedule_advance(&self, advance: &Advance) -> StoreResult<bool>;

    /// Every schedule, by name.
    async fn schedules(&self) -> StoreResult<Vec<Schedule>>;

    /// Jobs per state, over all types.
    async fn counts(&self) -> StoreResult<StateCounts>;

    /// Jobs per state, per type, sorted by type.
    async fn counts_by_type(&self) -> StoreResult<Vec<(String, StateCounts)>>;

    /// A plugin's durable key-value store: one write. `scope` keeps each
    /// plugin's keys apart (it is the plugin's name). Later calls see it at
    /// once; it is durable by the time [`Store::kv_durable`] returns, and no
    /// later than any job completion sent after it.
    async fn kv_write(&self, scope: &str, key: &str, write: KvWrite) -> StoreResult<bool>;

    /// The value of `key` in `scope`, if set.
    async fn kv_get(&self, scope: &str, key: &str) -> StoreResult<Option<Vec<u8>>>;

    /// Returns once every key-value write answered so far is durable. A
    /// backend that commits each write before answering has nothing to wait
    /// for.
    async fn kv_durable(&self) -> StoreResult<()> {
        Ok(())
    }

    /// Records how far a running attempt has got (0-100), fenced by its
    /// lease token: false (and nothing written) if that lease is gone.
    async fn job_progress(&self, id: JobId, token: i64, percent: u8) -> StoreResult<bool>;

    /// Flushes and closes; later calls fail with [`StoreError::Closed`].
    async fn close(&self);
}

/// A write to a plugin's key-value store. What `kv_write` returns:
/// `Set` always true; `SetIfAbsent` whether it set the value (false: the key
/// had one, left as it was); `Delete` whether the key existed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvWrite {
    Set(Vec<u8>),
    SetIfAbsent(Vec<u8>),
    Delete,
}

impl From<sqlx::Error> for StoreError {
    /// Every sqlx backend maps its errors here: clients never see them.
    /// A lost or refused connection is [`StoreError::Unavailable`], so the
    /// API can say "try again" (503) instead of "we failed" (500).
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolClosed => StoreError::Closed,
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                StoreError::Unavailable(e.to_string())
            }
            // PostgreSQL's connection exceptions (class 08) and shutdowns
            // (57P01 admin shutdown, as pg_terminate_backend sends; 57P02
            // crash shutdown; 57P03 cannot connect now).
            sqlx::Error::Database(ref db)
                if db
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57P0")) =>
            {
                StoreError::Unavailable(e.to_string())
            }
            e => StoreError::Backend(e.to_string()),
        }
    }
}

impl StoreError {
    /// Whether the same call may succeed once the database is back.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

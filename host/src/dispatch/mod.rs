//! Wake-up hints: "a job may be ready", "a worker slot came free", "a job
//! was scheduled for later".
//!
//! In-process dispatch is a [`tokio::sync::Notify`]: a hint given while nobody
//! waits is kept (one permit), so a hint is never lost between a worker's
//! check and its wait. Hints carry no jobs; the store is the truth. Workers
//! also poll on an interval, so a lost hint only delays a job.
//!
//! Hints from other hosts arrive through [`pg_notify`] (PostgreSQL's
//! LISTEN/NOTIFY) when the store is shared, and through [`redis`] (Redis
//! Streams, one host per hint) when one is configured; they end here, as
//! `hint()`. What this host readies reaches the others through the same
//! fabric ([`Dispatch::ready`]).

pub mod pg_notify;
pub mod redis;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;

use crate::job::JobId;
use crate::store::Moved;

#[derive(Default)]
pub struct Dispatch {
    ready: Notify,
    freed: Notify,
    scheduled: Notify,
    /// Claims the worker began and finished: a hint read from Redis is
    /// acknowledged once a claim begun after it has finished.
    claims_started: AtomicU64,
    claims_settled: AtomicU64,
    redis: OnceLock<Arc<redis::Redis>>,
}

impl Dispatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends this host's hints to other hosts through Redis, too.
    pub fn set_redis(&self, redis: Arc<redis::Redis>) {
        let _ = self.redis.set(redis);
    }

    pub fn redis(&self) -> Option<&Arc<redis::Redis>> {
        self.redis.get()
    }

    /// Jobs of `job_type` were made ready and committed: hint this host's
    /// worker, and (with Redis) one other host's.
    /// (The ids are only collected when they go to Redis: without it, a
    /// submission pays for no list.)
    pub fn ready(&self, job_type: &str, ids: impl IntoIterator<Item = JobId>) {
        self.hint();
        if let Some(redis) = self.redis.get() {
            redis.ready(job_type, ids.into_iter().collect());
        }
    }

    /// Jobs a maintenance service made ready (committed): hinted as
    /// [`Dispatch::ready`] hints a submission, each on its type's stream.
    pub fn moved(&self, moved: &[Moved]) {
        if moved.is_empty() {
            return;
        }
        self.hint();
        if let Some(redis) = self.redis.get() {
            let mut by_type: BTreeMap<&str, Vec<JobId>> = BTreeMap::new();
            for job in moved {
                by_type.entry(&job.job_type).or_default().push(job.id);
            }
            for (job_type, ids) in by_type {
                redis.ready(job_type, ids);
            }
        }
    }

    /// A job went to the dead-letter queue (committed): mirrored to the
    /// type's DLQ stream when Redis is configured.
    pub fn dead(&self, job_type: &str, id: JobId, error: &str) {
        if let Some(redis) = self.redis.get() {
            redis.dead(job_type, id, error);
        }
    }

    /// The worker begins a claim.
    pub fn claim_started(&self) {
        self.claims_started.fetch_add(1, Ordering::AcqRel);
    }

    /// The worker's claim has returned (with jobs or without).
    pub fn claim_settled(&self) {
        self.claims_settled.fetch_add(1, Ordering::AcqRel);
    }

    pub fn claims_started(&self) -> u64 {
        self.claims_started.load(Ordering::Acquire)
    }

    pub fn claims_settled(&self) -> u64 {
        self.claims_settled.load(Ordering::Acquire)
    }

    /// A job may be ready: one was enqueued, promoted, requeued or replayed.
    /// (A store that parks claims learns this itself; the hint is for the
    /// others.)
    pub fn hint(&self) {
        self.ready.notify_one();
    }

    /// Waits for the next "may be ready" hint (or the one already given).
    pub async fn wait(&self) {
        self.ready.notified().await;
    }

    /// A worker slot came free: an attempt finished.
    pub fn freed(&self) {
        self.freed.notify_one();
    }

    /// Waits for the next freed slot (or the one already signalled).
    pub async fn wait_freed(&self) {
        self.freed.notified().await;
    }

    /// A job was scheduled for later (delayed, or a retry): the promoter
    /// re-reads when the next one falls due.
    pub fn scheduled(&self) {
        self.scheduled.notify_one();
    }

    pub async fn wait_scheduled(&self) {
        self.scheduled.notified().await;
    }
}

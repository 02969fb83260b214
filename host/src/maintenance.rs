//! Maintenance: the services that move jobs no worker is holding.
//!
//! - the *reaper* returns jobs whose lease expired (their host crashed or was
//!   killed) to the queue, or to the dead-letter queue if that was their last
//!   attempt;
//! - the *promoter* moves scheduled jobs (delayed, or awaiting a retry) to the
//!   queue when they fall due, sleeping until the earliest one.
//!
//! - the *pruner* deletes finished jobs past their retention (succeeded
//!   after a day, dead and cancelled after a week, by default), a small
//!   batch at a time, resting between batches so that it takes at most about
//!   a twentieth of the store's time from the work going on.
//!
//! The reaper and promoter hint the dispatcher when they make jobs ready (with Redis, on each
//! job's type stream; the reaper's dead jobs are mirrored on the DLQ stream). Neither touches a job
//! whose lease is live.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::dispatch::Dispatch;
use crate::job::JobState;
use crate::store::{Prune, Store, StoreError};
use crate::telemetry;

pub struct Maintenance {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub dispatch: Arc<Dispatch>,
    /// How often the reaper looks for expired leases.
    pub reap_interval: Duration,
    /// The longest the promoter sleeps without looking.
    pub promote_interval: Duration,
    /// How long finished jobs are kept, per final state (`None`: forever).
    pub retention: [(JobState, Option<Duration>); 3],
    /// How often the pruner looks.
    pub prune_interval: Duration,
}

/// Jobs one prune deletes: small enough that the transaction holds the
/// store for a few milliseconds.
pub const PRUNE_BATCH: usize = 1000;

/// After each full batch the pruner rests this many times as long as the
/// batch took: it takes at most a twentieth of the store's time, and still
/// deletes thousands of jobs a second (figures: the `prune` bench).
pub const PRUNE_REST: u32 = 19;

/// Deletes every finished job `template` picks (ignoring its limit), a batch
/// of `batch` at a time; after each full batch, rests `rest` times as long as
/// the batch took. Returns how many, or the first error with how many were
/// deleted before it.
pub async fn prune_all(
    store: &dyn Store,
    template: &Prune,
    batch: usize,
    rest: u32,
    mut progress: impl FnMut(u64),
) -> Result<u64, (StoreError, u64)> {
    let prune = Prune {
        limit: batch,
        ..template.clone()
    };
    let mut deleted = 0;
    loop {
        let started = std::time::Instant::now();
        let n = prune_once(store, &prune).await.map_err(|e| (e, deleted))?;
        deleted += n;
        progress(deleted);
        if n < batch as u64 {
            return Ok(deleted);
        }
        if rest > 0 {
            tokio::time::sleep(started.elapsed() * rest).await;
        }
    }
}

/// One prune (one transaction, at most `prune.limit` jobs), counted in
/// `jobhost_jobs_pruned_total`; how many it deleted.
pub async fn prune_once(store: &dyn Store, prune: &Prune) -> Result<u64, StoreError> {
    let n = store.job_prune(prune).await?;
    metrics::counter!(telemetry::JOBS_PRUNED, "state" => prune.state.as_str()).increment(n);
    Ok(n)
}

impl Maintenance {
    pub async fn reaper(self: Arc<Self>, stop: CancellationToken) {
        loop {
            match self.store.lease_reap(self.clock.now()).await {
                Ok(reaped) => {
                    if !reaped.requeued.is_empty() || !reaped.dead.is_empty() {
                        let requeued: Vec<_> = reaped.requeued.iter().map(|j| j.id).collect();
                        let dead: Vec<_> = reaped.dead.iter().map(|j| j.id).collect();
                        tracing::warn!(?requeued, ?dead, "reaped jobs whose lease expired");
                    }
                    self.dispatch.moved(&reaped.requeued);
                    for job in &reaped.dead {
                        self.dispatch.dead(&job.job_type, job.id, &job.error);
                    }
                }
                Err(e) => tracing::error!(error = %e, "reaping expired leases failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.reap_interval) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    pub async fn pruner(self: Arc<Self>, stop: CancellationToken) {
        loop {
            for (state, keep) in self.retention {
                let Some(keep) = keep else { continue };
                let prune = Prune {
                    state,
                    job_type: None,
                    finished_before: self.clock.now().minus(keep),
                    limit: PRUNE_BATCH,
                };
                let pruning = prune_all(&*self.store, &prune, PRUNE_BATCH, PRUNE_REST, |_| {});
                let result = tokio::select! {
                    r = pruning => r,
                    () = stop.cancelled() => return,
                };
                match result {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(%state, deleted = n, "pruned jobs past their retention")
                    }
                    Err((e, n)) => {
                        tracing::error!(%state, deleted = n, error = %e, "pruning failed")
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.prune_interval) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    pub async fn promoter(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let now = self.clock.now();
            let promoted = self.store.job_promote(now).await;
            match &promoted {
                Ok(moved) => self.dispatch.moved(moved),
                Err(e) => tracing::error!(error = %e, "promoting due jobs failed"),
            }
            let sleep = match self.store.job_next_due().await {
                // After a failure the due job is still due: wait before retrying.
                _ if promoted.is_err() => self.promote_interval,
                Ok(Some(next)) => now.until(next).min(self.promote_interval),
                Ok(None) => self.promote_interval,
                Err(e) => {
                    tracing::error!(error = %e, "reading the next due time failed");
                    self.promote_interval
                }
            };
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = self.dispatch.wait_scheduled() => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

//! Maintenance: the services that move jobs no worker is holding.
//!
//! - the *reaper* returns jobs whose lease expired (their host crashed or was
//!   killed) to the queue, or to the dead-letter queue if that was their last
//!   attempt;
//! - the *promoter* moves scheduled jobs (delayed, or awaiting a retry) to the
//!   queue when they fall due, sleeping until the earliest one.
//!
//! Both hint the dispatcher when they make jobs ready (with Redis, on each
//! job's type stream; the reaper's dead jobs are mirrored on the DLQ stream). Neither touches a job
//! whose lease is live.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::dispatch::Dispatch;
use crate::store::Store;

pub struct Maintenance {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub dispatch: Arc<Dispatch>,
    /// How often the reaper looks for expired leases.
    pub reap_interval: Duration,
    /// The longest the promoter sleeps without looking.
    pub promote_interval: Duration,
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

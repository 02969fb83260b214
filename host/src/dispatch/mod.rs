//! Wake-up hints: "a job may be ready", "a worker slot came free", "a job
//! was scheduled for later".
//!
//! In-process dispatch is a [`tokio::sync::Notify`]: a hint given while nobody
//! waits is kept (one permit), so a hint is never lost between a worker's
//! check and its wait. Hints carry no jobs; the store is the truth. Workers
//! also poll on an interval, so a lost hint only delays a job.
//!
//! Hints from other hosts arrive through [`pg_notify`] (PostgreSQL's
//! LISTEN/NOTIFY) when the store is shared; they end here, as `hint()`.

pub mod pg_notify;

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Dispatch {
    ready: Notify,
    freed: Notify,
    scheduled: Notify,
}

impl Dispatch {
    pub fn new() -> Self {
        Self::default()
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

//! The worker: claims ready jobs and runs them.
//!
//! The *producer* (one task per host) leases batches of queued jobs, only for
//! types with a loaded plugin and only as many as there are free slots (host
//! concurrency and each plugin's own). Each leased job becomes an *executor*
//! task: run one attempt in the runtime, turn its outcome into a transition
//! ([`decide`]), and record it through the store, fenced by the lease token.
//!
//! An executor frees its slot as soon as its attempt ends, so the next job
//! runs while the outcome waits for its commit; it keeps its *lease* until
//! the outcome is recorded. A host holds at most [`LEASES_PER_SLOT`] leases
//! per slot: when the store is slow to record outcomes, the producer claims
//! less instead of leasing jobs whose outcomes would wait past their lease.
//!
//! Shutdown comes in two steps: `stop` ends claiming (running attempts go on);
//! `abort` ends the attempts still running and gives their jobs back to the
//! queue without spending the attempt.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::clock::{Clock, Timestamp};
use crate::dispatch::Dispatch;
use crate::job::JobId;
use crate::plugins::{Handler, Registry};
use crate::runtime::{
    AttemptInput, AttemptOutcome, KvWrite, Limits, Runtime, Services, cap_plugin_text,
};
use crate::store::{ClaimRequest, ClaimWait, ClaimedJob, Completion, Outcome, Store, StoreError};
use crate::telemetry;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Names this host in leases and events.
    pub owner: String,
    /// Attempts in flight at once on this host.
    pub concurrency: usize,
    /// Most jobs leased per claim statement.
    pub claim_batch: usize,
    /// How long a lease outlives the attempt's deadline.
    pub lease_grace: Duration,
    /// Claim at least this often even without a hint.
    pub poll_interval: Duration,
}

pub struct Worker {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub runtime: Arc<Runtime>,
    /// What attempts' host imports write to (the store, behind
    /// [`StoreServices`]).
    pub services: Arc<dyn Services>,
    pub dispatch: Arc<Dispatch>,
    pub clock: Arc<dyn Clock>,
    pub control: Arc<Control>,
    pub config: WorkerConfig,
    /// Claim rounds so far (for the rotation).
    pub round: AtomicUsize,
    /// Leases this host holds: claimed, and the executor not done with the
    /// job yet (at most [`LEASES_PER_SLOT`] per slot).
    pub leases: AtomicUsize,
    /// When claims held back for want of leases may next be logged
    /// (microseconds on the host's clock).
    pub quiet_until: AtomicI64,
}

/// The operator's handle on the worker: pause and resume claiming on this
/// host, and the job types paused on every host (kept in the store; this is
/// this host's copy, refreshed by [`follow_paused_types`]). Attempts already
/// running are not affected by a pause; they are stopped one by one
/// ([`Control::interrupt`]).
#[derive(Debug)]
pub struct Control {
    paused: watch::Sender<bool>,
    paused_types: watch::Sender<Arc<BTreeSet<String>>>,
    /// Held across a read of the paused types from the store and taking
    /// it, so an older read never replaces a newer one.
    refreshing: tokio::sync::Mutex<()>,
    /// The attempts running on this host, by job and lease token, each
    /// with what stops it.
    running: std::sync::Mutex<HashMap<(JobId, i64), CancellationToken>>,
}

impl Control {
    pub fn new(paused: bool) -> Self {
        Control {
            paused: watch::Sender::new(paused),
            paused_types: watch::Sender::new(Arc::default()),
            refreshing: tokio::sync::Mutex::new(()),
            running: Default::default(),
        }
    }

    /// Stops the attempt of job `id` if one runs on this host (its job was
    /// cancelled): nothing it does after is recorded, and its slot is free
    /// at once.
    pub fn interrupt(&self, id: JobId) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for ((job, _), stop) in running.iter() {
            if *job == id {
                stop.cancel();
            }
        }
    }

    /// Stops the attempt holding one lease, if it runs on this host (its
    /// lease was lost: a newer attempt of the same job, here, goes on).
    fn interrupt_lease(&self, lease: (JobId, i64)) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stop) = running.get(&lease) {
            stop.cancel();
        }
    }

    /// The leases of the attempts running on this host.
    fn held(&self) -> Vec<(JobId, i64)> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.keys().copied().collect()
    }

    /// Registers a starting attempt until the guard is dropped.
    fn attempt_started(&self, id: JobId, token: i64) -> RunningAttempt<'_> {
        let stop = CancellationToken::new();
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((id, token), stop.clone());
        RunningAttempt {
            control: self,
            lease: (id, token),
            stop,
        }
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// The job types not claimed now.
    pub fn paused_types(&self) -> Arc<BTreeSet<String>> {
        self.paused_types.borrow().clone()
    }

    /// Reads the paused types from the store and takes them.
    pub async fn refresh_paused_types(&self, store: &dyn Store) -> crate::store::StoreResult<()> {
        let _one = self.refreshing.lock().await;
        let types = store.queues_paused().await?;
        self.set_paused_types(types);
        Ok(())
    }

    /// Takes the store's list of paused types; workers hear of a change.
    pub fn set_paused_types(&self, types: Vec<String>) {
        let types: BTreeSet<String> = types.into_iter().collect();
        self.paused_types.send_if_modified(|now| {
            let changed = **now != types;
            if changed {
                *now = Arc::new(types);
            }
            changed
        });
    }
}

/// An attempt in [`Control`]'s register while it runs.
struct RunningAttempt<'a> {
    control: &'a Control,
    lease: (JobId, i64),
    /// Cancelled when the attempt is to stop.
    stop: CancellationToken,
}

impl Drop for RunningAttempt<'_> {
    fn drop(&mut self) {
        self.control
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.lease);
    }
}

/// How often a host asks the store whether the leases of its running
/// attempts still hold (an operator on another host may have cancelled one).
pub const LEASE_WATCH: Duration = Duration::from_secs(1);

/// How often a host looks for types paused or resumed by another host.
pub const PAUSED_TYPES_REFRESH: Duration = Duration::from_secs(1);

/// Keeps `control`'s paused types in step with the store until `stop`.
pub async fn follow_paused_types(
    store: Arc<dyn Store>,
    control: Arc<Control>,
    stop: CancellationToken,
) {
    loop {
        if let Err(e) = control.refresh_paused_types(store.as_ref()).await {
            tracing::warn!(error = %e, "could not read the paused job types; keeping the last known");
        }
        tokio::select! {
            () = tokio::time::sleep(PAUSED_TYPES_REFRESH) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// The plugin capabilities that keep state, over the job store.
pub struct StoreServices(pub Arc<dyn Store>);

#[async_trait::async_trait]
impl Services for StoreServices {
    async fn kv_get(&self, scope: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.0.kv_get(scope, key).await.map_err(|e| e.to_string())
    }

    async fn kv_write(&self, scope: &str, key: &str, write: KvWrite) -> Result<bool, String> {
        self.0
            .kv_write(scope, key, write)
            .await
            .map_err(|e| e.to_string())
    }

    async fn kv_durable(&self) -> Result<(), String> {
        self.0.kv_durable().await.map_err(|e| e.to_string())
    }

    async fn progress(&self, job: i64, token: i64, percent: u8) -> Result<(), String> {
        self.0
            .job_progress(job, token, percent)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// One claim the producer is about to make.
struct Round {
    wait: ClaimWait,
    /// The registry's version the handlers were taken from.
    version: u64,
    /// The types paused when it was made.
    paused_types: Arc<BTreeSet<String>>,
    /// The handlers of the types asked for, to run what comes back.
    handlers: Vec<Arc<Handler>>,
    /// Some type was left out because its own slots were all busy.
    saturated: bool,
    /// Some type was left out by its rate limit: when it may start again.
    refill: Option<Duration>,
}

/// How a claim's round was limited: whether it may have left jobs behind
/// that only a claim, not a hint, would find.
#[derive(Debug, Default, Clone, Copy)]
struct Limited {
    /// The round's total, or some type's own limit, was reached: there may
    /// be more of that type.
    full: bool,
    /// Some type was left out because its slots were busy.
    left_out: bool,
    /// Some type was held back by its rate: when it may take more.
    refill: Option<Duration>,
}

/// Permits an executor holds while its attempt runs; dropping them frees the slots.
struct Slots {
    _host: OwnedSemaphorePermit,
    _type: OwnedSemaphorePermit,
}

/// A lease an executor holds, counted in [`Worker::leases`] from the claim
/// until the executor is done with its job (its outcome recorded, or given
/// up, or the executor panicked). Dropping it wakes the producer if it was
/// waiting for a lease.
struct Lease(Arc<Worker>);

impl Drop for Lease {
    fn drop(&mut self) {
        let worker = &self.0;
        if worker.leases.fetch_sub(1, Ordering::AcqRel) == worker.max_leases() {
            worker.dispatch.freed();
        }
    }
}

/// How often a host says that its claims are held back (it counts each time).
const HELD_BACK_QUIET: Duration = Duration::from_secs(30);

/// Leases a host may hold per slot of `--concurrency`: the attempts running
/// and up to three times as many outcomes waiting for their commit. (Two
/// held the embedded burn-down back in some runs, where outcomes wait about
/// 7 ms for a commit at 80,000 jobs/s; on PostgreSQL they wait 25-35 ms.)
pub const LEASES_PER_SLOT: usize = 4;

impl Worker {
    /// Claims and runs jobs until `stop`; then waits for running attempts
    /// (which `abort` cuts short) and returns.
    ///
    /// With a store that [parks claims](Store::parks_claims), an idle worker
    /// leaves one claim waiting in the store, which leases the next jobs in
    /// the transaction that creates them: a job starts one commit after it is
    /// submitted. Otherwise it waits for a hint or the poll interval.
    pub async fn run(self: Arc<Self>, stop: CancellationToken, abort: CancellationToken) {
        let host_slots = Arc::new(Semaphore::new(self.config.concurrency));
        let executors = TaskTracker::new();
        let mut paused = self.control.paused.subscribe();
        // A change of plugins, or of the paused types, ends the round built
        // on the ones before.
        let mut plugins = self.registry.subscribe();
        let mut paused_types = self.control.paused_types.subscribe();
        let parks = self.store.parks_claims();
        let watching = CancellationToken::new();
        let watcher = tokio::spawn(self.clone().watch_leases(watching.clone()));
        while !stop.is_cancelled() {
            plugins.borrow_and_update();
            paused_types.borrow_and_update();
            if *paused.borrow_and_update() {
                tokio::select! {
                    _ = paused.changed() => {}
                    () = stop.cancelled() => {}
                }
                continue;
            }
            let round = match self.next_claim(&host_slots) {
                Ok(round) => round,
                // Every slot or lease is busy (an attempt finishing or an
                // outcome recorded signals), or every type is at its rate
                // limit.
                Err(refill) => {
                    let wait = refill.map_or(self.config.poll_interval, |r| {
                        r.min(self.config.poll_interval)
                    });
                    tokio::select! {
                        () = self.dispatch.wait_freed() => {}
                        () = tokio::time::sleep(wait) => {}
                        _ = paused.changed() => {}
                        _ = plugins.changed() => {}
                        _ = paused_types.changed() => {}
                        () = stop.cancelled() => {}
                    }
                    continue;
                }
            };
            let (claimed, limited) = self
                .claim(round, &mut paused, (&mut plugins, &mut paused_types), &stop)
                .await;
            if !claimed.is_empty() {
                self.spawn_executors(claimed, &host_slots, &executors, &abort);
                // A type that got all it asked for may have more: claim again
                // at once. (A store that parks claims waits in the claim.)
                if parks || limited.full {
                    continue;
                }
            }
            if !parks {
                // Every type asked for was drained when the claim ran: a job
                // readied since has hinted (a hint waits for its waiter). A
                // freed slot matters only to a type that was left out or cut
                // short by its slots, time only to one held back by its rate.
                let cut_short = limited.full || limited.left_out;
                let refill = limited.refill.map(|r| r.min(self.config.poll_interval));
                tokio::select! {
                    () = self.dispatch.wait() => {}
                    () = self.dispatch.wait_freed(), if cut_short => {}
                    () = tokio::time::sleep(refill.unwrap_or_default()), if refill.is_some() => {}
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                    _ = paused.changed() => {}
                    _ = plugins.changed() => {}
                    _ = paused_types.changed() => {}
                    () = stop.cancelled() => {}
                }
            }
        }
        executors.close();
        executors.wait().await;
        watching.cancel();
        let _ = watcher.await;
    }

    /// Every [`LEASE_WATCH`], stops the running attempts whose lease no
    /// longer holds: cancelled through another host (this host's own
    /// cancels stop theirs at once), or reaped. Until `stop`.
    async fn watch_leases(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(LEASE_WATCH) => {}
                () = stop.cancelled() => return,
            }
            let held = self.control.held();
            if held.is_empty() {
                continue;
            }
            match self.store.leases_lost(&held).await {
                Ok(lost) => {
                    for lease in lost {
                        self.control.interrupt_lease(lease);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not check the leases of running attempts; looking again in a second")
                }
            }
        }
    }

    /// The next claim: every loaded plugin with a free slot, starting at the
    /// next one in turn (so a type with a backlog cannot take every freed
    /// slot from the types after it), at most as many jobs as there are free
    /// slots and leases (and, for a rate-limited type, as many as its rate
    /// allows now). Nothing to claim: `Err` with when a type left out by its
    /// rate may start again, if one was.
    fn next_claim(&self, host_slots: &Semaphore) -> Result<Round, Option<Duration>> {
        let leases_free = self
            .max_leases()
            .saturating_sub(self.leases.load(Ordering::Acquire));
        let slots_free = host_slots.available_permits();
        if leases_free == 0 && slots_free > 0 {
            self.held_back();
        }
        let host_free = slots_free.min(leases_free).min(self.config.claim_batch);
        if host_free == 0 {
            return Err(None);
        }
        // Read before the handlers: a change after it is seen as one.
        let version = self.registry.version();
        let paused_types = self.control.paused_types();
        let mut handlers = self.registry.handlers();
        handlers.retain(|h| !paused_types.contains(&h.job_type));
        if !handlers.is_empty() {
            let first = self.round.fetch_add(1, Ordering::Relaxed) % handlers.len();
            handlers.rotate_left(first);
        }
        let now = self.clock.now();
        let instant = std::time::Instant::now();
        let mut saturated = false;
        let mut refill: Option<Duration> = None;
        let mut requests = Vec::with_capacity(handlers.len());
        let mut included = Vec::with_capacity(handlers.len());
        for handler in handlers {
            let mut free = host_free.min(handler.slots.available_permits());
            if let Some(rate) = &handler.rate {
                let (allowed, wait) = rate.available(instant);
                free = free.min(allowed);
                if let Some(wait) = wait {
                    refill = Some(refill.map_or(wait, |r| r.min(wait)));
                }
            }
            if free == 0 {
                saturated = true;
                continue;
            }
            requests.push(ClaimRequest {
                job_type: handler.job_type.clone(),
                limit: free,
                owner: self.config.owner.clone(),
                token: rand::random(),
                plugin_digest: handler.plugin.compiled.digest.clone(),
                now,
                lease_expires_at: now
                    .plus(handler.plugin.manifest.limits.timeout + self.config.lease_grace),
            });
            included.push(handler);
        }
        if requests.is_empty() {
            return Err(refill);
        }
        Ok(Round {
            version,
            paused_types,
            wait: ClaimWait {
                owner: self.config.owner.clone(),
                requests,
                total: host_free,
            },
            handlers: included,
            saturated,
            refill,
        })
    }

    /// Leases jobs for `round`, and says whether it was limited (see
    /// [`Limited`]). A parked claim is ended (and returns what it
    /// leased, perhaps nothing) at the poll interval, on pause or stop, when
    /// a plugin is loaded, swapped or removed (so a job submitted after a
    /// swap starts on the new version), or when a slot frees if it asked for
    /// few jobs or left a type out for want of that type's own slots.
    async fn claim(
        &self,
        round: Round,
        paused: &mut watch::Receiver<bool>,
        (plugins, paused_types): (
            &mut watch::Receiver<u64>,
            &mut watch::Receiver<Arc<BTreeSet<String>>>,
        ),
        stop: &CancellationToken,
    ) -> (Vec<(ClaimedJob, Arc<Handler>)>, Limited) {
        let Round {
            wait,
            version,
            paused_types: paused_before,
            handlers,
            saturated,
            refill,
        } = round;
        // A claim parked for only a few slots while many more come free
        // would hold those back: end it when a slot frees, and claim again
        // for them all.
        let few = self.config.claim_batch.min(self.config.concurrency) / 2;
        let rescope = saturated || wait.total < few;
        // Each request's limit, beside its handler (the round made them in
        // step).
        let limits: Vec<usize> = wait.requests.iter().map(|r| r.limit).collect();
        let total = wait.total;
        self.dispatch.claim_started();
        let claim = self.store.job_claim_wait(wait);
        let claimed = if self.store.parks_claims() {
            tokio::pin!(claim);
            let wake = async {
                tokio::select! {
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                    _ = paused.changed() => {}
                    _ = plugins.changed() => {}
                    _ = paused_types.changed() => {}
                    () = stop.cancelled() => {}
                    () = self.dispatch.wait_freed(), if rescope => {}
                    // A rate-limited type left out may start again.
                    () = tokio::time::sleep(refill.unwrap_or_default()), if refill.is_some() => {}
                }
            };
            tokio::select! {
                // The claim first, so it is sent before any unpark is.
                biased;
                claimed = &mut claim => claimed,
                () = wake => {
                    if let Err(e) = self.store.claim_unpark(&self.config.owner).await {
                        tracing::error!(error = %e, "could not end the waiting claim");
                    }
                    claim.await
                }
            }
        } else {
            // Answered at once, with nothing to end early: the signals that
            // come meanwhile stay for the wait after it.
            claim.await
        };
        self.dispatch.claim_settled();
        let jobs = match claimed {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!(error = %e, "claim failed; retrying after the poll interval");
                tokio::select! {
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                    () = stop.cancelled() => {}
                }
                // Not known: look again as if it had been cut short.
                let unknown = Limited {
                    full: true,
                    ..Limited::default()
                };
                return (Vec::new(), unknown);
            }
        };
        // Each job beside its handler, counted per request as it goes.
        let mut taken = vec![0usize; handlers.len()];
        let claimed: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let i = handlers
                    .iter()
                    .position(|h| h.job_type == job.job_type)
                    .expect("the store leases only the types asked for");
                taken[i] += 1;
                (job, handlers[i].clone())
            })
            .collect();
        let limited = Limited {
            full: claimed.len() >= total || taken.iter().zip(&limits).any(|(n, limit)| n >= limit),
            left_out: saturated,
            refill,
        };
        // A plugin was loaded, swapped or removed, or a type paused, while
        // the claim was out: a job leased for a version no longer serving
        // its type, or of a type paused since, goes back to the queue (the
        // attempt refunded), for a later round to lease for the version
        // serving then. So a job submitted after a swap never starts on the
        // version before, and none starts after its type is paused.
        let paused_now = self.control.paused_types();
        let claimed = if self.registry.version() == version
            && Arc::ptr_eq(&paused_now, &paused_before)
        {
            claimed
        } else {
            let (current, stale): (Vec<_>, Vec<_>) =
                claimed.into_iter().partition(|(_, handler)| {
                    self.registry.is_current(handler) && !paused_now.contains(&handler.job_type)
                });
            for (job, _) in stale {
                let store = self.store.clone();
                let now = self.clock.now();
                tokio::spawn(async move {
                    match store.lease_release(job.id, job.token, now).await {
                        Ok(_) => tracing::debug!(
                            job = job.id,
                            "leased for a plugin version swapped out since: returned to the queue"
                        ),
                        Err(e) => {
                            tracing::error!(job = job.id, error = %e, "could not return a job leased for a swapped-out version; the reaper will requeue it when its lease expires")
                        }
                    }
                });
            }
            current
        };
        // Rate-limited types pay for what they leased.
        let now = std::time::Instant::now();
        for handler in &handlers {
            if let Some(rate) = &handler.rate {
                let n = claimed
                    .iter()
                    .filter(|(_, h)| Arc::ptr_eq(h, handler))
                    .count();
                rate.take(n, now);
            }
        }
        (claimed, limited)
    }

    fn spawn_executors(
        self: &Arc<Self>,
        claimed: Vec<(ClaimedJob, Arc<Handler>)>,
        host_slots: &Arc<Semaphore>,
        executors: &TaskTracker,
        abort: &CancellationToken,
    ) {
        // Only this task takes leases and slots, and the claim asked for no
        // more than were free.
        self.leases.fetch_add(claimed.len(), Ordering::AcqRel);
        for (job, handler) in claimed {
            let slots = Slots {
                _host: host_slots
                    .clone()
                    .try_acquire_owned()
                    .expect("host slot counted as free"),
                _type: handler
                    .slots
                    .clone()
                    .try_acquire_owned()
                    .expect("type slot counted as free"),
            };
            // Counted above: from here the guard gives it back, even if the
            // task never runs.
            let lease = Lease(self.clone());
            let abort = abort.clone();
            executors.spawn(async move {
                lease.0.execute(job, handler, slots, abort).await;
            });
        }
    }

    fn max_leases(&self) -> usize {
        self.config.concurrency * LEASES_PER_SLOT
    }

    /// Slots are free but every lease is taken: counted, and said at most
    /// every [`HELD_BACK_QUIET`].
    fn held_back(&self) {
        metrics::counter!(telemetry::CLAIMS_HELD_BACK).increment(1);
        let now = self.clock.now().as_micros();
        let quiet_until = self.quiet_until.load(Ordering::Relaxed);
        if now >= quiet_until {
            let next = now.saturating_add(HELD_BACK_QUIET.as_micros() as i64);
            self.quiet_until.store(next, Ordering::Relaxed);
            tracing::warn!(
                leases = self.max_leases(),
                "claims held back: every lease this host may hold waits for its outcome to be recorded; the store is slow to commit"
            );
        }
    }

    /// Runs one attempt of `job` and records its outcome.
    async fn execute(
        &self,
        job: ClaimedJob,
        handler: Arc<Handler>,
        slots: Slots,
        abort: CancellationToken,
    ) {
        let plugin = &handler.plugin;
        let started = self.clock.now();
        let metrics = &handler.metrics;
        metrics.started.increment(1);
        metrics
            .queue_latency
            .record(job.run_at.until(started).as_secs_f64());
        let input = AttemptInput {
            id: job.id,
            job_type: &handler.job_type,
            plugin: &plugin.name,
            payload: &job.payload,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            token: job.token,
            grants: &plugin.manifest.grants,
            services: &self.services,
        };
        let limits = job_limits(&plugin.manifest.limits, &job);
        let running = self.control.attempt_started(job.id, job.token);
        let report = tokio::select! {
            report = self.runtime.run(&plugin.compiled, &limits, input) => report,
            () = running.stop.cancelled() => {
                // Cancelled, or the lease was lost: the store has moved on
                // and would refuse the outcome.
                metrics.interrupted.increment(1);
                tracing::info!(job = job.id, attempt = job.attempt, "attempt stopped: the job was cancelled or its lease lost");
                drop(running);
                drop(slots);
                self.dispatch.freed();
                return;
            }
            () = abort.cancelled() => {
                match self.store.lease_release(job.id, job.token, self.clock.now()).await {
                    Ok(_) => tracing::warn!(job = job.id, "attempt cut short at shutdown; job returned to the queue"),
                    Err(e) => tracing::error!(job = job.id, error = %e, "could not release the lease at shutdown; the reaper will requeue the job when it expires"),
                }
                return;
            }
        };
        // Out of the register once the sandbox is done: the job may be
        // claimed again (a retry) while this outcome commits.
        drop(running);
        metrics
            .attempt_duration
            .record(report.duration.as_secs_f64());
        metrics.attempt_fuel.record(report.fuel_consumed as f64);

        if let AttemptOutcome::NotStarted(why) = &report.outcome {
            // Not the job's fault: give it back unspent, after a pause so a
            // host short of sandboxes does not spin.
            tracing::error!(job = job.id, error = %why, "could not start an attempt; returning the job to the queue");
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Err(e) = self
                .store
                .lease_release(job.id, job.token, self.clock.now())
                .await
            {
                tracing::error!(job = job.id, error = %e, "could not release the lease; the reaper will requeue the job when it expires");
            }
            drop(slots);
            self.dispatch.freed();
            return;
        }
        let now = self.clock.now();
        let outcome = decide(
            report.outcome,
            job.attempt,
            job.max_attempts,
            &plugin.manifest.backoff,
            now,
            &mut rand::rng(),
        );
        let counter = match &outcome {
            Outcome::Succeeded { .. } => &metrics.succeeded,
            Outcome::Retry { .. } => &metrics.retried,
            Outcome::Dead { .. } => &metrics.dead,
        };
        let retry = matches!(outcome, Outcome::Retry { .. });
        let dead_error = match &outcome {
            Outcome::Dead { error } => Some(error.clone()),
            _ => None,
        };
        if let Outcome::Retry { error, .. } | Outcome::Dead { error } = &outcome {
            tracing::debug!(job = job.id, attempt = job.attempt, error = %error, "attempt failed");
        }
        let completion = Completion {
            id: job.id,
            token: job.token,
            owner: self.config.owner.clone(),
            outcome,
            plugin_digest: plugin.compiled.digest.clone(),
            started_at: started,
            now,
        };
        // The sandbox is done: free its slot now, so the producer claims the
        // next job while this outcome waits for its group commit.
        drop(slots);
        self.dispatch.freed();
        let complete_started = std::time::Instant::now();
        let recorded = self.complete(completion).await;
        metrics
            .complete_duration
            .record(complete_started.elapsed().as_secs_f64());
        match recorded {
            Ok(true) => {
                counter.increment(1);
                if retry {
                    self.dispatch.scheduled();
                }
                if let Some(error) = dead_error {
                    self.dispatch.dead(&handler.job_type, job.id, &error);
                }
            }
            Ok(false) => tracing::warn!(
                job = job.id,
                attempt = job.attempt,
                "lease lost before the attempt finished; its outcome was discarded"
            ),
            Err(e) => {
                tracing::error!(job = job.id, error = %e, "could not record the attempt; the reaper will requeue the job when its lease expires")
            }
        }
    }

    /// Records a completion, retrying a few times if the backend hiccups,
    /// and for up to a minute while the database is unreachable (the lease
    /// outlives that by default, so an outage the database comes back from
    /// costs the outcome nothing).
    async fn complete(&self, completion: Completion) -> Result<bool, StoreError> {
        let mut delay = Duration::from_millis(50);
        let mut failures = 0;
        let give_up = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match self.store.job_complete(completion.clone()).await {
                Err(StoreError::Backend(e)) if failures < 3 => {
                    tracing::warn!(job = completion.id, error = %e, "recording the outcome failed; retrying");
                    failures += 1;
                }
                Err(StoreError::Unavailable(e)) if std::time::Instant::now() < give_up => {
                    tracing::warn!(job = completion.id, error = %e, "the store is unavailable; retrying the outcome");
                }
                other => return other,
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }
}

/// The limits of one attempt: the plugin's, with the job's own deadline
/// where it asked for a shorter one (the plugin's caps it).
fn job_limits(plugin: &Limits, job: &ClaimedJob) -> Limits {
    let own = job
        .timeout_ms
        .map(|ms| Duration::from_millis(u64::from(ms)));
    Limits {
        timeout: own.map_or(plugin.timeout, |own| own.min(plugin.timeout)),
        ..*plugin
    }
}

/// Turns an attempt's outcome into the transition the store records.
pub fn decide(
    outcome: AttemptOutcome,
    attempt: u32,
    max_attempts: u32,
    backoff: &Backoff,
    now: Timestamp,
    rng: &mut impl rand::Rng,
) -> Outcome {
    let error = match outcome {
        AttemptOutcome::Ok(Some(result)) if result.len() > MAX_RESULT => {
            // Retrying would repeat the job's side effects for the same result.
            return Outcome::Dead {
                error: format!(
                    "fatal: the result is {} bytes; the limit is {MAX_RESULT}",
                    result.len()
                ),
            };
        }
        AttemptOutcome::Ok(result) => {
            return Outcome::Succeeded {
                result: result.map(ensure_json),
            };
        }
        AttemptOutcome::Fatal(msg) => {
            return Outcome::Dead {
                error: format!("fatal: {}", truncate(msg)),
            };
        }
        AttemptOutcome::Retry(msg) => truncate(msg),
        AttemptOutcome::Trapped(reason) => reason.to_string(),
        AttemptOutcome::NotStarted(why) => why,
    };
    if attempt >= max_attempts {
        Outcome::Dead {
            error: format!("{error} (no attempts left: {attempt} of {max_attempts} used)"),
        }
    } else {
        Outcome::Retry {
            error,
            run_at: now.plus(backoff.delay(attempt, rng)),
        }
    }
}

/// Longest result a job may store, in bytes.
pub const MAX_RESULT: usize = 1 << 20;
/// Longest error message kept from a plugin, in bytes.
pub const MAX_ERROR: usize = 4096;

fn truncate(msg: String) -> String {
    cap_plugin_text(msg, MAX_ERROR)
}

/// A plugin's result must be JSON; a plain string is kept as a JSON string.
fn ensure_json(result: String) -> String {
    if serde_json::from_str::<serde::de::IgnoredAny>(&result).is_ok() {
        result
    } else {
        serde_json::Value::String(result).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::TrapReason;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn run(outcome: AttemptOutcome, attempt: u32) -> Outcome {
        let backoff = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        decide(
            outcome,
            attempt,
            3,
            &backoff,
            Timestamp(0),
            &mut StdRng::seed_from_u64(1),
        )
    }

    #[test]
    fn success_keeps_json_and_quotes_plain_text() {
        assert_eq!(
            run(AttemptOutcome::Ok(Some("{\"a\":1}".into())), 1),
            Outcome::Succeeded {
                result: Some("{\"a\":1}".into())
            }
        );
        assert_eq!(
            run(AttemptOutcome::Ok(Some("done".into())), 1),
            Outcome::Succeeded {
                result: Some("\"done\"".into())
            }
        );
        assert_eq!(
            run(AttemptOutcome::Ok(None), 1),
            Outcome::Succeeded { result: None }
        );
    }

    #[test]
    fn retryable_failures_back_off_until_the_last_attempt() {
        assert_eq!(
            run(AttemptOutcome::Retry("busy".into()), 2),
            Outcome::Retry {
                error: "busy".into(),
                run_at: Timestamp(2_000_000)
            }
        );
        assert_eq!(
            run(
                AttemptOutcome::Trapped(TrapReason::FuelExhausted { fuel: 10 }),
                1
            ),
            Outcome::Retry {
                error: "fuel exhausted after 10 units".into(),
                run_at: Timestamp(1_000_000)
            }
        );
        assert_eq!(
            run(AttemptOutcome::Retry("busy".into()), 3),
            Outcome::Dead {
                error: "busy (no attempts left: 3 of 3 used)".into()
            }
        );
    }

    #[test]
    fn oversized_output_is_cut_or_refused() {
        let Outcome::Retry { error, .. } = run(AttemptOutcome::Retry("é".repeat(5000)), 1) else {
            panic!("expected a retry")
        };
        assert!(error.len() <= MAX_ERROR + 20 && error.ends_with("[truncated]"));
        let huge = format!("\"{}\"", "x".repeat(MAX_RESULT));
        let Outcome::Dead { error } = run(AttemptOutcome::Ok(Some(huge)), 1) else {
            panic!("expected the DLQ")
        };
        assert!(error.contains("limit"), "{error}");
    }

    #[test]
    fn fatal_goes_straight_to_the_dlq() {
        assert_eq!(
            run(AttemptOutcome::Fatal("bad".into()), 1),
            Outcome::Dead {
                error: "fatal: bad".into()
            }
        );
    }
}

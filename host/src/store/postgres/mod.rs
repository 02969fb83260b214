//! The scale-out backend: PostgreSQL, shared by any number of hosts.
//!
//! Unlike SQLite, PostgreSQL takes writes from many connections and many
//! hosts at once, so this backend has no single writer. What it keeps of the
//! embedded store's shape is the group commit: enqueues and completions,
//! the two writes every job makes, go through one [`committer`] per host
//! that applies every waiting command in one transaction (one round trip
//! per statement kind, one WAL flush for the lot). Claims and the rarer
//! transitions run on their own pooled connections, each one statement
//! (data-modifying CTEs write a transition and its events together).
//!
//! Claims are safe across hosts: `FOR UPDATE SKIP LOCKED` hands each queued
//! job to one claimer, and every later transition of a running job names its
//! lease token in the WHERE clause. The reaper and promoter of every host may
//! run at once; they skip rows another holds.
//!
//! This backend does not park claims (another host's enqueue would never
//! reach a claim parked here): after a write that readies jobs it sends
//! `NOTIFY jobhost_ready` in the same transaction, which every host's
//! dispatcher listens for ([`crate::dispatch`]).
//!
//! The files, by role: this one opens the pool and runs the migrations and
//! implements the [`Store`] contract; [`committer`] is the group commit;
//! [`enqueue`], [`claim`], [`complete`], [`upkeep`] hold the statements of
//! each transition beside the function that runs it; [`reads`] the reads;
//! [`names`] the ids of the history's names.

mod catalog;
mod claim;
mod committer;
mod complete;
mod enqueue;
mod kv;
mod names;
mod reads;
mod schedules;
mod upkeep;

pub use catalog::PgCatalog;
#[cfg(test)]
pub(crate) use claim::CLAIM;

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{
    Advance, ClaimRequest, ClaimWait, ClaimedJob, Completion, DeadFilter, Enqueued, JobQuery,
    KvWrite, Moved, NewJob, Prune, Reaped, Schedule, StateCounts, Store, StoreError, StoreResult,
};
use crate::clock::Timestamp;
use crate::job::{JobEvent, JobId, JobRecord};
use crate::store::history::{Name, worker_actor};
use committer::Cmd;
use complete::Source;
use names::Names;

pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Says so at start when the server does not vacuum by itself: every
/// transition leaves a dead row, and without vacuum the jobs table and its
/// indexes only grow, and claims slow down as they walk past them.
async fn warn_without_autovacuum(pool: &PgPool) {
    let setting: Result<String, _> = sqlx::query_scalar("SHOW autovacuum").fetch_one(pool).await;
    if matches!(setting.as_deref(), Ok("off")) {
        tracing::warn!(
            "PostgreSQL's autovacuum is off: the rows every job transition leaves behind are never reclaimed, and the jobs table and its indexes grow until someone runs VACUUM; turn autovacuum on (or VACUUM jobs, job_events and job_counts regularly)"
        );
    }
}

/// The statements that find jobs by id (one, or a batch of ids). They run
/// on the `by_id` pool, and a test holds each of them to the primary key.
#[cfg(test)]
pub(crate) const BY_ID: [&str; 5] = [
    complete::COMPLETE_MANY,
    kv::PROGRESS,
    upkeep::RELEASE,
    upkeep::REPLAY,
    reads::LEASES_LOST,
];

/// The planner settings of the connections that find jobs by id (the
/// `by_id` pool): only an index may find them. sqlx prepares each statement
/// once per connection, and after five runs PostgreSQL keeps one generic
/// plan for it; a plan made while `jobs` was empty or never analyzed (a
/// new database; a server whose autovacuum is off) hashes the whole table
/// for every batch of completions: seen at 0.6–1.1 ms a completion in a
/// 5,000-job latency run, growing with the table. The pool's other
/// statements (the enqueues, which find jobs by idempotency key, and
/// BEGIN and COMMIT) lose nothing by them either.
pub(crate) const BY_ID_PLANNER: [(&str, &str); 3] = [
    ("enable_seqscan", "off"),
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
];

/// The channel every host LISTENs on for "jobs may be ready".
pub const READY_CHANNEL: &str = "jobhost_ready";

/// Commands that may wait for the committer before senders wait too.
const QUEUE_DEPTH: usize = 8192;

/// How the pool is sized and how long a caller waits for a connection.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Connections this host opens at most (at least 6): a quarter for
    /// claims and maintenance, a quarter (at least three, two of six) for the committers
    /// and the other statements that find jobs by id, the rest for
    /// operators, reads and the dispatcher's LISTEN (which keeps one for
    /// good).
    pub max_connections: u32,
    /// How long a call waits for a free connection (or a new one) before it
    /// fails with [`StoreError::Unavailable`].
    pub acquire_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

pub struct PgStore {
    /// Durable commits off the hot path (cancel, bulk replay, prune,
    /// schedules, kv, plugins) and reads.
    pool: PgPool,
    /// The committers (enqueues, completions) and the other statements that
    /// find jobs by a batch of ids or on a hot path (progress, release,
    /// replay, the lease check), planned by the primary key
    /// ([`BY_ID_PLANNER`]).
    by_id: PgPool,
    /// Commits that do not wait for the WAL flush (`synchronous_commit =
    /// off`): claims, the reaper and the promoter. None of them is
    /// acknowledged to a client, and losing one to a crash of PostgreSQL
    /// itself (the last ~200 ms, `wal_writer_delay`) only reruns or delays
    /// work: a lost claim leaves its job queued (or, if its attempt already
    /// ran, fenced out and run again: the WAL is written in order, so a
    /// durable completion also makes its claim durable), a lost requeue or
    /// promotion is made again by the next round. (Release at shutdown stays
    /// durable: lost, its job would wait for the reaper and lose the attempt
    /// release refunds.) Each claim is then a WAL flush the enqueues no
    /// longer queue behind.
    fast: PgPool,
    names: Names,
    committer: mpsc::Sender<Cmd>,
    /// Cancelled by `close`: the committer drains what it was sent, then ends.
    closing: CancellationToken,
    /// Cancelled when the committer has ended.
    committer_ended: CancellationToken,
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host/db`), creating the database
    /// if it does not exist, runs the migrations (under PostgreSQL's
    /// advisory lock, so hosts starting together take turns) and starts the
    /// committer.
    pub async fn open(url: &str, options: PgOptions) -> StoreResult<PgStore> {
        create_if_missing(url).await?;
        let connect = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Backend(format!("{}: {e}", redact(url))))?
            .application_name("jobhost");
        // A dead connection fails its statement and is dropped; the callers
        // retry on fresh ones (`on_fresh_connections`; the worker with
        // backoff). A ping before every use would cost a round trip each.
        let pool_options = || {
            PgPoolOptions::new()
                .acquire_timeout(options.acquire_timeout)
                .test_before_acquire(false)
        };
        let fast_connections = (options.max_connections / 4).max(1);
        // One beyond the committers' (from 7 connections up), so progress
        // and the lease check need not wait for a commit.
        let spare = u32::from(options.max_connections >= 7);
        let by_id_connections =
            (options.max_connections / 4).max(committer::COMMITTERS as u32 + spare);
        let pool = pool_options()
            .max_connections(options.max_connections - fast_connections - by_id_connections)
            .connect_with(connect.clone())
            .await
            .map_err(unreachable(url))?;
        let by_id = pool_options()
            .max_connections(by_id_connections)
            .connect_with(connect.clone().options(BY_ID_PLANNER))
            .await
            .map_err(unreachable(url))?;
        let fast = pool_options()
            .max_connections(fast_connections)
            .connect_with(connect.options([("synchronous_commit", "off")]))
            .await
            .map_err(unreachable(url))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend(format!("migrating {}: {e}", redact(url))))?;
        warn_without_autovacuum(&pool).await;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let closing = CancellationToken::new();
        let committer_ended = CancellationToken::new();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let ended = Arc::new(committer_ended.clone().drop_guard());
        for _ in 0..committer::COMMITTERS {
            let ended = ended.clone();
            tokio::spawn(committer::run(
                by_id.clone(),
                rx.clone(),
                closing.clone(),
                ended,
            ));
        }
        Ok(PgStore {
            pool,
            by_id,
            fast,
            names: Names::default(),
            committer: tx,
            closing,
            committer_ended,
        })
    }

    /// The pool of the statements by id, for the test of their plans.
    #[cfg(test)]
    pub(crate) fn by_id_pool(&self) -> &PgPool {
        &self.by_id
    }

    /// The pool, for the dispatcher's LISTEN connection.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn commit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> Cmd,
    ) -> StoreResult<T> {
        self.open_for_work()?;
        let (reply, answer) = oneshot::channel();
        self.committer
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs a read, again on a fresh connection if its own had died, so a
    /// client does not see a 503 for a connection PostgreSQL dropped while
    /// the database is up.
    async fn read<T, Fut>(&self, read: impl FnMut() -> Fut) -> StoreResult<T>
    where
        Fut: Future<Output = StoreResult<T>>,
    {
        self.open_for_work()?;
        on_fresh_connections(read, StoreError::is_unavailable).await
    }

    /// The ids, in the history, of a worker and the plugin version it runs.
    async fn source(&self, owner: &str, digest: &str) -> StoreResult<Source> {
        Ok(Source {
            actor: self
                .names
                .id(&self.fast, Name::Actor(worker_actor(owner)))
                .await?,
            digest: self
                .names
                .id(&self.fast, Name::Digest(digest.to_owned()))
                .await?,
        })
    }

    fn open_for_work(&self) -> StoreResult<()> {
        if self.closing.is_cancelled() {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }
}

/// The first column of each row `query` returns: the ids the writing
/// statements here return (they also return a column that runs their
/// `NOTIFY`).
async fn ids_of(
    query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    conn: &mut sqlx::PgConnection,
) -> StoreResult<Vec<i64>> {
    use sqlx::Row as _;
    let rows = query.fetch_all(conn).await?;
    Ok(rows
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?)
}

/// How long work that lost its connection is tried again on fresh ones.
const RECONNECT_WINDOW: Duration = Duration::from_secs(1);

/// Runs `attempt` again while it fails as `lost` says a dead connection
/// fails, for up to [`RECONNECT_WINDOW`]. A lost connection fails at once,
/// and the pool may hold several that died together (a server restart,
/// `pg_terminate_backend`); an unreachable server fails slower (the pool's
/// acquire timeout) and so is not tried again.
async fn on_fresh_connections<T, E, Fut>(
    mut attempt: impl FnMut() -> Fut,
    lost: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let started = std::time::Instant::now();
    loop {
        match attempt().await {
            Err(e) if lost(&e) && started.elapsed() < RECONNECT_WINDOW => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

/// The error for a server that cannot be reached at `url`.
fn unreachable(url: &str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
    move |e| StoreError::Unavailable(format!("connecting to {}: {e}", redact(url)))
}

/// Creates the database `url` names if it does not exist yet, so a first
/// start needs nothing but a running server. Hosts starting together may
/// both try: the loser finds it created.
async fn create_if_missing(url: &str) -> StoreResult<()> {
    use sqlx::migrate::MigrateDatabase;
    if sqlx::Postgres::database_exists(url)
        .await
        .map_err(unreachable(url))?
    {
        return Ok(());
    }
    match sqlx::Postgres::create_database(url).await {
        Ok(()) => {
            tracing::info!(url = %redact(url), "created the database");
            Ok(())
        }
        // 42P04: duplicate_database (another host created it first).
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(()),
        Err(e) => Err(StoreError::Backend(format!(
            "creating the database {}: {e}",
            redact(url)
        ))),
    }
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.rsplit_once('@')
        && let Some((user, _password)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

#[async_trait]
impl Store for PgStore {
    async fn job_insert(&self, job: NewJob, now: Timestamp) -> StoreResult<Enqueued> {
        self.commit(|reply| Cmd::Insert { job, now, reply }).await
    }

    async fn job_insert_batch(
        &self,
        jobs: Vec<NewJob>,
        now: Timestamp,
    ) -> StoreResult<Vec<Enqueued>> {
        self.commit(|reply| Cmd::InsertBatch { jobs, now, reply })
            .await
    }

    async fn job_get(&self, id: JobId) -> StoreResult<Option<JobRecord>> {
        self.read(|| reads::record_get(&self.pool, id)).await
    }

    async fn job_events(&self, id: JobId) -> StoreResult<Vec<JobEvent>> {
        self.read(|| reads::events_get(&self.pool, id)).await
    }

    async fn job_show(&self, id: JobId) -> StoreResult<Option<(JobRecord, Vec<JobEvent>)>> {
        self.read(|| reads::show(&self.pool, id)).await
    }

    async fn job_claim(&self, req: ClaimRequest) -> StoreResult<Vec<ClaimedJob>> {
        self.job_claim_wait(ClaimWait {
            owner: req.owner.clone(),
            total: req.limit,
            requests: vec![req],
        })
        .await
    }

    /// Every type of the round in one statement (this store never parks a
    /// claim: it returns at once).
    async fn job_claim_wait(&self, wait: ClaimWait) -> StoreResult<Vec<ClaimedJob>> {
        self.open_for_work()?;
        if wait.total == 0 || wait.requests.iter().all(|r| r.limit == 0) {
            return Ok(Vec::new());
        }
        let actor = self
            .names
            .id(&self.fast, Name::Actor(worker_actor(&wait.owner)))
            .await?;
        let mut digests = Vec::with_capacity(wait.requests.len());
        for req in &wait.requests {
            let digest = Name::Digest(req.plugin_digest.clone());
            digests.push(self.names.id(&self.fast, digest).await?);
        }
        claim::claim(&self.fast, &wait, actor, &digests).await
    }

    async fn job_complete(&self, completion: Completion) -> StoreResult<bool> {
        let source = self
            .source(&completion.owner, &completion.plugin_digest)
            .await?;
        self.commit(|reply| Cmd::Complete {
            completion,
            source,
            reply,
        })
        .await
    }

    async fn lease_release(&self, id: JobId, token: i64, now: Timestamp) -> StoreResult<bool> {
        self.open_for_work()?;
        upkeep::release(&self.by_id, id, token, now).await
    }

    async fn lease_reap(&self, now: Timestamp) -> StoreResult<Reaped> {
        self.open_for_work()?;
        upkeep::reap(&self.fast, now).await
    }

    async fn job_promote(&self, now: Timestamp) -> StoreResult<Vec<Moved>> {
        self.open_for_work()?;
        upkeep::promote(&self.fast, now).await
    }

    async fn job_next_due(&self) -> StoreResult<Option<Timestamp>> {
        self.read(|| reads::next_due(&self.pool)).await
    }

    async fn job_replay(&self, id: JobId, now: Timestamp) -> StoreResult<JobRecord> {
        self.open_for_work()?;
        upkeep::replay(&self.by_id, id, now).await
    }

    async fn leases_lost(&self, held: &[(JobId, i64)]) -> StoreResult<Vec<(JobId, i64)>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        self.read(|| reads::leases_lost(&self.by_id, held)).await
    }

    async fn job_cancel(&self, id: JobId, now: Timestamp) -> StoreResult<JobRecord> {
        self.open_for_work()?;
        upkeep::cancel(&self.pool, id, now).await
    }

    async fn queue_pause(&self, job_type: &str, paused: bool, now: Timestamp) -> StoreResult<bool> {
        self.open_for_work()?;
        let statement = if paused {
            "INSERT INTO queue_pauses (job_type, paused_at) VALUES ($1, $2)
             ON CONFLICT (job_type) DO NOTHING"
        } else {
            "DELETE FROM queue_pauses WHERE job_type = $1 AND $2::BIGINT IS NOT NULL"
        };
        let done = sqlx::query(statement)
            .bind(job_type)
            .bind(now.as_micros())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn schedule_put(&self, schedule: &Schedule) -> StoreResult<bool> {
        self.open_for_work()?;
        schedules::put(&self.pool, schedule).await
    }

    async fn schedule_delete(&self, name: &str) -> StoreResult<bool> {
        self.open_for_work()?;
        schedules::delete(&self.pool, name).await
    }

    async fn schedule_advance(&self, advance: &Advance) -> StoreResult<bool> {
        self.open_for_work()?;
        schedules::advance(&self.pool, advance).await
    }

    async fn schedules(&self) -> StoreResult<Vec<Schedule>> {
        self.read(|| schedules::list(&self.pool)).await
    }

    async fn queues_paused(&self) -> StoreResult<Vec<String>> {
        self.read(|| async {
            Ok(
                sqlx::query_scalar("SELECT job_type FROM queue_pauses ORDER BY job_type")
                    .fetch_all(&self.pool)
                    .await?,
            )
        })
        .await
    }

    async fn job_list(&self, query: &JobQuery) -> StoreResult<Vec<JobRecord>> {
        let in_state = match query.state {
            Some(state) => Some(self.counts().await?.get(state)),
            None => None,
        };
        self.read(|| reads::list(&self.pool, query, in_state)).await
    }

    async fn job_replay_dead(
        &self,
        filter: &DeadFilter,
        now: Timestamp,
    ) -> StoreResult<Vec<Moved>> {
        self.open_for_work()?;
        upkeep::replay_dead(&self.pool, filter, now).await
    }

    async fn job_prune(&self, prune: &Prune) -> StoreResult<u64> {
        self.open_for_work()?;
        upkeep::prune(&self.pool, prune).await
    }

    async fn kv_write(&self, scope: &str, key: &str, write: KvWrite) -> StoreResult<bool> {
        self.open_for_work()?;
        kv::write(&self.pool, scope, key, write).await
    }

    async fn kv_get(&self, scope: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.read(|| kv::get(&self.pool, scope, key)).await
    }

    async fn job_progress(&self, id: JobId, token: i64, percent: u8) -> StoreResult<bool> {
        self.open_for_work()?;
        kv::progress(&self.by_id, id, token, percent).await
    }

    async fn counts(&self) -> StoreResult<StateCounts> {
        let by_type = self.read(|| reads::counts_by_type(&self.pool)).await?;
        Ok(by_type.iter().map(|(_, counts)| counts).sum())
    }

    async fn counts_by_type(&self) -> StoreResult<Vec<(String, StateCounts)>> {
        self.read(|| reads::counts_by_type(&self.pool)).await
    }

    async fn close(&self) {
        self.closing.cancel();
        self.committer_ended.cancelled().await;
        self.pool.close().await;
        self.by_id.close().await;
        self.fast.close().await;
    }
}

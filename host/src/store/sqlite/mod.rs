//! The embedded backend: one SQLite file in WAL mode.
//!
//! SQLite has one writer, so this backend has exactly one writing connection,
//! owned by a single thread (the *writer*). Every write (enqueue, claim,
//! completion, maintenance) is a command sent to it; the writer takes every
//! command that is waiting, applies them all in one transaction and commits
//! once: one fsync for many HTTP requests and completions (group commit). If
//! any command fails, the writer rolls the batch back and applies each command
//! in a transaction of its own, so one bad command never fails its neighbours
//! and nothing is ever half-written. Reads use a small pool of read-only
//! connections, which WAL lets run beside the writer.
//!
//! sqlx opens the database, runs the migrations and serves the reads. The
//! writer drives its connection with rusqlite, on its own thread: each
//! statement is a function call there, where through sqlx it was a round
//! trip to the connection's own thread (a channel send, a wake-up and a
//! wake-up back, 46–136 µs on this machine class), several per batch.
//!
//! The files, by role:
//! - this one: opening the file (connections, pragmas, migrations) and the
//!   [`Store`] contract, each method a command to the writer or a read;
//! - [`writer`]: the group-commit loop and parked claims; [`command`]: the
//!   commands it takes and the batch it commits; [`known`]: what the writer
//!   knows without asking SQLite (the next id, the types without ready
//!   jobs, what a batch readied);
//!   [`tx`]: the writer's transaction;
//! - the statements, each beside the one function that runs it:
//!   [`enqueue`], [`claim`], [`complete`] (the hot path), [`upkeep`] (release,
//!   reaper, promoter, replay, cancel) and [`events`] (history rows);
//! - [`reads`]: the read-only queries and row decoding;
//! - [`wal`]: the background checkpoints and the writer's WAL restart.

mod claim;
mod command;
mod complete;
mod enqueue;
mod events;
mod known;
mod kv;
mod reads;
mod schedules;
mod tx;
mod upkeep;
mod wal;
mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::Connection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection as _};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::counts::Counts;
use super::{
    Advance, ClaimRequest, ClaimWait, ClaimedJob, Completion, DeadFilter, Enqueued, JobQuery,
    KvWrite, Moved, NewJob, Prune, Reaped, Schedule, StateCounts, Store, StoreError, StoreResult,
};
use crate::clock::Timestamp;
use crate::job::{JobEvent, JobId, JobRecord};
use crate::store::rows::parse_state;
use command::{Command, Op, Reply};
use known::Ids;
use reads::{events_get, record_get};
use schedules::ScheduleOp;
use wal::{WAL_FRAME_BYTES, WAL_RESTART_FRAMES, WalState, checkpoints};
use writer::writer;

pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// Commands that may wait for the writer before senders wait too.
const QUEUE_DEPTH: usize = 8192;
/// Prepared statements the writer keeps (it runs about twenty distinct ones).
const WRITER_STATEMENTS: usize = 64;

/// How SQLite syncs the WAL at commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Durability {
    /// fsync at every commit: an acknowledged job survives power loss.
    #[default]
    Full,
    /// fsync at checkpoints only: survives a crash of jobhost, may lose the
    /// last commits on power loss or an OS crash. Faster.
    Normal,
}

pub struct SqliteStore {
    writer: mpsc::Sender<Command>,
    readers: SqlitePool,
    checkpointer: CancellationToken,
    counts: Counts,
    /// The plugins' key-value stores, answered in memory ([`kv`]).
    kv: Arc<kv::KvView>,
    /// Cancelled when the writer has folded the WAL in and closed its
    /// connection (or its thread is gone).
    writer_ended: CancellationToken,
    /// The lock that makes this process the file's one owner, until closed.
    owner: std::sync::Mutex<Option<std::fs::File>>,
}

/// How long a connection waits for a lock another holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://path`),
    /// runs the migrations, and starts the writer.
    pub async fn open(url: &str, durability: Durability) -> StoreResult<SqliteStore> {
        SqliteStore::open_with(url, durability, WAL_RESTART_FRAMES).await
    }

    /// [`SqliteStore::open`] with the WAL restarted past `wal_restart_frames`.
    pub(crate) async fn open_with(
        url: &str,
        durability: Durability,
        wal_restart_frames: i64,
    ) -> StoreResult<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            })
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        // The writer opens the same file itself (see `open_writer`): an
        // in-memory database would be a second, separate one. Refused before
        // anything is opened or created.
        let path = options.get_filename().to_path_buf();
        if path
            .to_str()
            .is_none_or(|p| p.starts_with("file:") || p == ":memory:")
        {
            return Err(StoreError::Backend(format!(
                "{url}: the embedded store needs a file (sqlite://path/to/jobs.db), not an in-memory database"
            )));
        }
        let owner = own(&path)?;
        let mut conn = options.clone().connect().await?;
        MIGRATOR
            .run(&mut conn)
            .await
            .map_err(|e| StoreError::Backend(format!("migrating {url}: {e}")))?;
        conn.close().await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone().read_only(true))
            .await?;
        let checkpoint_conn = options.clone().connect().await?;
        let kv = Arc::new(kv::KvView::open(&path, BUSY_TIMEOUT)?);
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let wal = WalState {
            restart_frames: wal_restart_frames,
            restart_due: Arc::new(AtomicBool::new(false)),
        };
        let writer_ended = CancellationToken::new();
        // Cancelled when the writer thread ends, also if it panics.
        let ended = writer_ended.clone().drop_guard();
        let (opened, ready) = oneshot::channel();
        let writer_wal = wal.clone();
        std::thread::Builder::new()
            .name("jobhost-writer".into())
            .spawn(move || {
                let _ended = ended;
                let start = || -> StoreResult<_> {
                    let conn = open_writer(&path, durability, wal_restart_frames)?;
                    let ids = Ids::load(&conn)?;
                    let counts = load_counts(&conn)?;
                    Ok((conn, ids, counts))
                };
                match start() {
                    Ok((conn, ids, counts)) => {
                        if opened.send(Ok(counts.clone())).is_ok() {
                            writer(conn, ids, counts, rx, writer_wal);
                        }
                    }
                    Err(e) => {
                        let _ = opened.send(Err(e));
                    }
                }
            })
            .map_err(|e| StoreError::Backend(format!("starting the writer thread: {e}")))?;
        let counts = ready.await.map_err(|_| StoreError::Closed)??;
        let checkpointer = CancellationToken::new();
        tokio::spawn(checkpoints(checkpoint_conn, checkpointer.clone(), wal));
        Ok(SqliteStore {
            writer: tx,
            readers,
            checkpointer,
            counts,
            kv,
            writer_ended,
            owner: std::sync::Mutex::new(Some(owner)),
        })
    }

    async fn send(&self, op: Op) -> StoreResult<Reply> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Command { op, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn schedule_write(&self, op: ScheduleOp) -> StoreResult<bool> {
        match self.send(Op::Schedule(op)).await? {
            Reply::Applied(done) => Ok(done),
            _ => unreachable!("the writer answers Schedule with Applied"),
        }
    }
}

/// The writer's connection.
///
/// It does not checkpoint as it commits (that would stall every request
/// queued behind it); a connection of its own does, in the background, and
/// the writer only restarts a WAL that grew too long (see [`checkpoints`]).
///
/// Nor does it check the events' foreign key, a lookup per event row: it
/// writes every event of a hot transition from the job's own row (a join),
/// and every other one for a job it has just updated, so none can dangle.
/// The key stays declared in the schema.
/// Locks `<file>.lock` beside the database, for as long as the store is
/// open. The embedded store keeps what it knows of the file in memory (the
/// next id, the counts, the key-value view): a second process writing the
/// same file would make that untrue, so it is refused.
fn own(path: &std::path::Path) -> StoreResult<std::fs::File> {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".lock");
    let lock = path.with_file_name(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|e| StoreError::Backend(format!("{}: {e}", lock.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Backend(format!(
            "{}: another jobhost process has this database open (it holds {}); the embedded store has one owner. Stop it, or scale out on PostgreSQL",
            path.display(),
            lock.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StoreError::Backend(format!("{}: {e}", lock.display())))
        }
    }
}

fn open_writer(
    path: &std::path::Path,
    durability: Durability,
    wal_restart_frames: i64,
) -> StoreResult<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(WRITER_STATEMENTS);
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // Statement journals in memory, not in a temporary file that SQLite
    // creates, unlinks and closes about once a transaction.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // When the WAL restarts, the file is cut back to this size.
    conn.pragma_update(
        None,
        "journal_size_limit",
        wal_restart_frames * WAL_FRAME_BYTES,
    )?;
    Ok(conn)
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// The start-up count the writer then keeps (see [`Counts`]).
fn load_counts(conn: &Connection) -> StoreResult<Counts> {
    let mut stmt =
        conn.prepare("SELECT job_type, state, COUNT(*) FROM jobs GROUP BY job_type, state")?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let rows = rows
        .into_iter()
        .map(|(job_type, state, n)| Ok((job_type, parse_state(&state)?, n as u64)))
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Counts::from_rows(rows))
}

#[async_trait]
impl Store for SqliteStore {
    async fn job_insert(&self, job: NewJob, now: Timestamp) -> StoreResult<Enqueued> {
        match self.send(Op::Insert(job, now)).await? {
            Reply::Enqueued(e) => Ok(e),
            _ => unreachable!("the writer answers Insert with Enqueued"),
        }
    }

    async fn job_insert_batch(
        &self,
        jobs: Vec<NewJob>,
        now: Timestamp,
    ) -> StoreResult<Vec<Enqueued>> {
        match self.send(Op::InsertBatch(jobs, now)).await? {
            Reply::EnqueuedBatch(e) => Ok(e),
            _ => unreachable!("the writer answers InsertBatch with EnqueuedBatch"),
        }
    }

    async fn job_get(&self, id: JobId) -> StoreResult<Option<JobRecord>> {
        let mut conn = self.readers.acquire().await?;
        record_get(&mut conn, id).await
    }

    async fn job_events(&self, id: JobId) -> StoreResult<Vec<JobEvent>> {
        let mut conn = self.readers.acquire().await?;
        events_get(&mut conn, id).await
    }

    async fn job_show(&self, id: JobId) -> StoreResult<Option<(JobRecord, Vec<JobEvent>)>> {
        let mut conn = self.readers.acquire().await?;
        // A deferred transaction: both reads see the snapshot the first takes.
        let mut tx = conn.begin().await?;
        let Some(record) = record_get(&mut tx, id).await? else {
            return Ok(None);
        };
        let events = events_get(&mut tx, id).await?;
        tx.commit().await?;
        Ok(Some((record, events)))
    }

    async fn job_claim(&self, req: ClaimRequest) -> StoreResult<Vec<ClaimedJob>> {
        match self.send(Op::Claim(req)).await? {
            Reply::Claimed(jobs) => Ok(jobs),
            _ => unreachable!("the writer answers Claim with Claimed"),
        }
    }

    async fn job_claim_wait(&self, wait: ClaimWait) -> StoreResult<Vec<ClaimedJob>> {
        match self.send(Op::ClaimWait(wait)).await? {
            Reply::Claimed(jobs) => Ok(jobs),
            _ => unreachable!("the writer answers ClaimWait with Claimed"),
        }
    }

    fn parks_claims(&self) -> bool {
        true
    }

    async fn claim_unpark(&self, owner: &str) -> StoreResult<()> {
        self.send(Op::Unpark(owner.to_owned())).await.map(drop)
    }

    async fn job_complete(&self, completion: Completion) -> StoreResult<bool> {
        match self.send(Op::Complete(completion)).await? {
            Reply::Applied(applied) => Ok(applied),
            _ => unreachable!("the writer answers Complete with Applied"),
        }
    }

    async fn lease_release(&self, id: JobId, token: i64, now: Timestamp) -> StoreResult<bool> {
        match self.send(Op::Release { id, token, now }).await? {
            Reply::Applied(applied) => Ok(applied),
            _ => unreachable!("the writer answers Release with Applied"),
        }
    }

    async fn lease_reap(&self, now: Timestamp) -> StoreResult<Reaped> {
        match self.send(Op::Reap(now)).await? {
            Reply::Reaped(r) => Ok(r),
            _ => unreachable!("the writer answers Reap with Reaped"),
        }
    }

    async fn job_promote(&self, now: Timestamp) -> StoreResult<Vec<Moved>> {
        match self.send(Op::Promote(now)).await? {
            Reply::Promoted(ids) => Ok(ids),
            _ => unreachable!("the writer answers Promote with Promoted"),
        }
    }

    async fn job_next_due(&self) -> StoreResult<Option<Timestamp>> {
        let next: Option<i64> =
            sqlx::query_scalar("SELECT MIN(run_at) FROM jobs WHERE state = 'scheduled'")
                .fetch_one(&self.readers)
                .await?;
        Ok(next.map(Timestamp))
    }

    async fn job_replay(&self, id: JobId, now: Timestamp) -> StoreResult<JobRecord> {
        match self.send(Op::Replay(id, now)).await? {
            Reply::Record(r) => Ok(*r),
            _ => unreachable!("the writer answers Replay with Record"),
        }
    }

    async fn leases_lost(&self, held: &[(JobId, i64)]) -> StoreResult<Vec<(JobId, i64)>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.readers.acquire().await?;
        reads::leases_lost(&mut conn, held).await
    }

    async fn job_cancel(&self, id: JobId, now: Timestamp) -> StoreResult<JobRecord> {
        match self.send(Op::Cancel(id, now)).await? {
            Reply::Record(r) => Ok(*r),
            _ => unreachable!("the writer answers Cancel with Record"),
        }
    }

    async fn queue_pause(&self, job_type: &str, paused: bool, now: Timestamp) -> StoreResult<bool> {
        let op = Op::QueuePause {
            job_type: job_type.to_owned(),
            paused,
            now,
        };
        match self.send(op).await? {
            Reply::Applied(changed) => Ok(changed),
            _ => unreachable!("the writer answers QueuePause with Applied"),
        }
    }

    async fn schedule_put(&self, schedule: &Schedule) -> StoreResult<bool> {
        self.schedule_write(ScheduleOp::Put(schedule.clone())).await
    }

    async fn schedule_delete(&self, name: &str) -> StoreResult<bool> {
        self.schedule_write(ScheduleOp::Delete(name.to_owned()))
            .await
    }

    async fn schedule_advance(&self, advance: &Advance) -> StoreResult<bool> {
        self.schedule_write(ScheduleOp::Advance(advance.clone()))
            .await
    }

    async fn schedules(&self) -> StoreResult<Vec<Schedule>> {
        let mut conn = self.readers.acquire().await?;
        schedules::list(&mut conn).await
    }

    async fn queues_paused(&self) -> StoreResult<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT job_type FROM queue_pauses ORDER BY job_type")
                .fetch_all(&self.readers)
                .await?,
        )
    }

    async fn job_list(&self, query: &JobQuery) -> StoreResult<Vec<JobRecord>> {
        let in_state = query.state.map(|s| self.counts.total().get(s));
        let mut conn = self.readers.acquire().await?;
        reads::list(&mut conn, query, in_state).await
    }

    async fn job_replay_dead(
        &self,
        filter: &DeadFilter,
        now: Timestamp,
    ) -> StoreResult<Vec<Moved>> {
        match self.send(Op::ReplayDead(filter.clone(), now)).await? {
            Reply::Replayed(moved) => Ok(moved),
            _ => unreachable!("the writer answers ReplayDead with Replayed"),
        }
    }

    async fn job_prune(&self, prune: &Prune) -> StoreResult<u64> {
        match self.send(Op::Prune(prune.clone())).await? {
            Reply::Pruned(n) => Ok(n),
            _ => unreachable!("the writer answers Prune with Pruned"),
        }
    }

    async fn kv_write(&self, scope: &str, key: &str, write: KvWrite) -> StoreResult<bool> {
        let permit = self
            .writer
            .reserve()
            .await
            .map_err(|_| StoreError::Closed)?;
        self.kv.write(scope, key, write, permit)
    }

    async fn kv_get(&self, scope: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.kv.get(scope, key)
    }

    async fn kv_durable(&self) -> StoreResult<()> {
        if self.kv.unsettled() == 0 {
            return Ok(());
        }
        self.send(Op::Sync).await.map(drop)
    }

    async fn job_progress(&self, id: JobId, token: i64, percent: u8) -> StoreResult<bool> {
        match self.send(Op::Progress { id, token, percent }).await? {
            Reply::Applied(done) => Ok(done),
            _ => unreachable!("the writer answers Progress with Applied"),
        }
    }

    async fn counts(&self) -> StoreResult<StateCounts> {
        Ok(self.counts.total())
    }

    async fn counts_by_type(&self) -> StoreResult<Vec<(String, StateCounts)>> {
        Ok(self.counts.by_type())
    }

    async fn close(&self) {
        // Ok or Closed: either way the writer is gone afterwards.
        self.checkpointer.cancel();
        let _ = self.send(Op::Close).await;
        self.writer_ended.cancelled().await;
        self.readers.close().await;
        // The file is free for another owner.
        self.owner.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

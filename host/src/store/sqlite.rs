//! The embedded backend: one SQLite file in WAL mode.
//!
//! SQLite has one writer, so this module has exactly one writing connection,
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

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection as _, Row};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{
    ClaimRequest, ClaimWait, ClaimedJob, Completion, Enqueued, NewJob, Outcome, Reaped,
    StateCounts, Store, StoreError, StoreResult,
};
use crate::clock::Timestamp;
use crate::job::{JobEvent, JobId, JobRecord, JobState};
use crate::telemetry;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// Most commands applied in one transaction.
const MAX_BATCH: usize = 1024;
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
    /// Cancelled when the writer has folded the WAL in and closed its
    /// connection (or its thread is gone).
    writer_ended: CancellationToken,
}

/// Jobs per type and state, kept by the writer as it commits, so counting
/// (the admin API, the queue-depth gauges, a dashboard polling them) never
/// scans the jobs table. Counted once at start-up.
#[derive(Clone, Default)]
struct Counts(std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, StateCounts>>>);

/// One batch's changes to [`Counts`]: `n` jobs of a type moved from a state
/// (none for a new job) to another.
type Moves = Vec<(String, Option<JobState>, JobState, u64)>;

/// Adds a move to `moves`, merged with a like one.
fn moved(moves: &mut Moves, job_type: &str, from: Option<JobState>, to: JobState, n: u64) {
    if n == 0 {
        return;
    }
    match moves
        .iter_mut()
        .find(|(t, f, d, _)| t == job_type && *f == from && *d == to)
    {
        Some((_, _, _, m)) => *m += n,
        None => moves.push((job_type.to_owned(), from, to, n)),
    }
}

impl Counts {
    fn load(conn: &Connection) -> StoreResult<Counts> {
        let mut stmt =
            conn.prepare("SELECT job_type, state, COUNT(*) FROM jobs GROUP BY job_type, state")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let counts = Counts::default();
        {
            let mut all = counts.0.lock().expect("counts lock");
            for row in rows {
                let (job_type, state, n) = row?;
                all.entry(job_type)
                    .or_default()
                    .add(parse_state(&state)?, n as u64);
            }
        }
        Ok(counts)
    }

    fn apply(&self, moves: &Moves) {
        if moves.is_empty() {
            return;
        }
        let mut all = self.0.lock().expect("counts lock");
        for (job_type, from, to, n) in moves {
            let counts = match all.get_mut(job_type) {
                Some(c) => c,
                None => all.entry(job_type.clone()).or_default(),
            };
            if let Some(from) = from {
                counts.sub(*from, *n);
            }
            counts.add(*to, *n);
        }
    }
}

/// How often the WAL is checkpointed into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// WAL frames (pages) past which the writer restarts the WAL itself.
const WAL_RESTART_FRAMES: i64 = 16_384;
/// How long the writer waits for readers to leave an older snapshot before
/// it gives up a WAL restart until the next checkpoint tick.
const WAL_RESTART_PATIENCE: Duration = Duration::from_millis(100);
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
                    let counts = Counts::load(&conn)?;
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
            writer_ended,
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

/// A frame of the WAL: one page and its 24-byte header.
const WAL_FRAME_BYTES: i64 = 4096 + 24;

/// Shared by the checkpointer and the writer: how long the WAL may grow, and
/// whether it has.
#[derive(Clone)]
struct WalState {
    restart_frames: i64,
    /// The checkpointer saw more than `restart_frames` in the WAL: the
    /// writer restarts it between two batches.
    restart_due: Arc<AtomicBool>,
}

/// Copies committed WAL frames into the database file without blocking the
/// writer or the readers (a PASSIVE checkpoint), until `stop`.
///
/// A passive checkpoint alone never lets the WAL start over while writes
/// keep coming: SQLite rewinds the WAL only when a write transaction begins
/// with every frame copied, and a busy writer begins its next one while the
/// checkpoint is still copying. The WAL would then grow without bound (it
/// reached 11 GB draining two million jobs), and every page lookup of the
/// writer with it. So when the WAL holds more than the limit, this asks the
/// writer to restart it between two of its batches (see [`wal_restart`]),
/// and leaves the WAL to the writer until it has tried.
async fn checkpoints(mut conn: SqliteConnection, stop: CancellationToken, wal: WalState) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(CHECKPOINT_EVERY) => {}
            () = stop.cancelled() => break,
        }
        if wal.restart_due.load(Ordering::Acquire) {
            continue;
        }
        // (busy, frames in the WAL, frames copied)
        match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&mut conn)
            .await
        {
            Ok((_, frames, _)) if frames > wal.restart_frames => {
                wal.restart_due.store(true, Ordering::Release);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; will retry"),
        }
    }
    let _ = conn.close().await;
}

/// Copies the rest of the WAL into the database file and rewinds it, from
/// the writer's own connection between two batches (no other writer can be
/// waiting, so nothing stalls but the writer itself, for as long as the
/// copy of what the passive checkpoints had not copied yet and one fsync of
/// the database file take). The file is cut back to `journal_size_limit`.
fn wal_restart(conn: &Connection, wal: &WalState) {
    let started = Instant::now();
    // A restart waits for readers on an older snapshot to finish. Wait for
    // them only briefly here: the writer's queue is behind this, and if a
    // reader is slow the checkpointer asks again a tick later.
    let _ = conn.busy_timeout(WAL_RESTART_PATIENCE);
    let restarted = checkpoint(conn, "RESTART");
    let _ = conn.busy_timeout(BUSY_TIMEOUT);
    match restarted {
        // Done: the next transaction starts the WAL over.
        Ok(0) => {
            metrics::histogram!(telemetry::STORE_WAL_RESTART_DURATION).record(started.elapsed());
        }
        // A reader held an old snapshot longer than the patience.
        Ok(_) => tracing::debug!("a reader kept the WAL from restarting; will retry"),
        Err(e) => tracing::warn!(error = %e, "restarting the WAL failed; will retry"),
    }
    // Either way the checkpointer takes over again, and asks anew if the
    // WAL is still too long.
    wal.restart_due.store(false, Ordering::Release);
}

/// Runs a checkpoint of the given mode on the writer's connection; returns
/// whether it was kept from finishing (1) or not (0).
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<i64> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get(0))
}

/// One write, as the writer receives it.
struct Command {
    op: Op,
    reply: oneshot::Sender<StoreResult<Reply>>,
}

enum Op {
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
    Cancel(JobId, Timestamp),
    /// Stop after this batch.
    Close,
}

enum Reply {
    Enqueued(Enqueued),
    EnqueuedBatch(Vec<Enqueued>),
    Claimed(Vec<ClaimedJob>),
    Applied(bool),
    Reaped(Reaped),
    Promoted(Vec<JobId>),
    Record(Box<JobRecord>),
    Closed,
    /// (Writer-internal, never sent.) A `ClaimWait` found nothing: keep it.
    Park,
    /// (Writer-internal.) End this owner's parked claims after the commit.
    Unpark(String),
}

/// A claim waiting in the writer for jobs of its types.
struct Parked {
    wait: ClaimWait,
    reply: oneshot::Sender<StoreResult<Reply>>,
}

/// The next ids to hand out. The writer is the only writer, so it numbers new
/// jobs itself instead of asking SQLite for `MAX(id)` each time. (Events are
/// numbered by SQLite, in the order they are written.)
#[derive(Debug, Clone, Copy)]
struct Ids {
    /// The largest job id in use.
    job: i64,
}

impl Ids {
    fn load(conn: &Connection) -> StoreResult<Ids> {
        let job = conn.query_row("SELECT COALESCE(MAX(id), 0) FROM jobs", [], |r| r.get(0))?;
        Ok(Ids { job })
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
struct Known {
    /// Types with no ready job.
    empty: HashSet<String>,
}

impl Known {
    /// The types a claim in `batch` may skip: known empty, and not readied
    /// by any command of the batch.
    fn empty_for(&self, batch: &[Command]) -> HashSet<String> {
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
    fn learn(&mut self, done: &Batch) {
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

/// A committed batch: each command's result, the parked claims it served
/// (by index, with their jobs), and what it taught the writer.
struct Batch {
    results: Vec<StoreResult<Reply>>,
    woken: Vec<(usize, Vec<ClaimedJob>)>,
    /// Types left without a ready job when the batch committed.
    found_empty: Vec<String>,
    moves: Moves,
    ready_types: Vec<String>,
    ready_any: bool,
}

/// The writer's transaction: `BEGIN IMMEDIATE` with its first statement.
struct Tx<'c> {
    conn: &'c Connection,
    ids: &'c mut Ids,
    /// Types with no ready job, which claims skip (see [`Known`]).
    empty: HashSet<String>,
    /// Types a claim of this batch found without another ready job, and
    /// whether nothing later in the batch can have readied more.
    found_empty: Vec<(String, bool)>,
    /// Claims from now on come after every change of the batch.
    last_phase: bool,
    /// What the batch changed in the counts.
    moves: Moves,
    begun: bool,
}

// Every multi-row statement the writer runs says `OR FAIL`: without it,
// SQLite keeps a statement journal (a copy of each page before the
// statement changes it) so that a constraint error can undo that one
// statement and leave the rest of the transaction. The writer never needs
// that: any error rolls the whole batch back and replays its commands one
// by one. (It spares the claim's statements; one that calls a function,
// like the JSON ones, is journalled regardless, since a function may fail
// halfway. The journal went from 3.8% to 2.5% of the SQLite
// thread's samples in a burn-down, measured through sqlx.)
impl<'c> Tx<'c> {
    fn new(conn: &'c Connection, ids: &'c mut Ids, empty: HashSet<String>) -> Self {
        Tx {
            conn,
            ids,
            empty,
            found_empty: Vec::new(),
            last_phase: false,
            moves: Vec::new(),
            begun: false,
        }
    }

    /// The connection, in the transaction.
    fn conn(&mut self) -> StoreResult<&'c Connection> {
        if !self.begun {
            self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
            self.begun = true;
        }
        Ok(self.conn)
    }

    /// Writes the events collected so far, so that events written by
    /// statements after this one follow them in each job's history.
    fn write_events(&mut self, events: &mut Events) -> StoreResult<()> {
        if !events.is_empty() {
            let doc = events_doc(events)?;
            events.clear();
            self.conn()?.prepare_cached(EVENTS_INSERT)?.execute([doc])?;
        }
        Ok(())
    }

    /// Writes the events left and commits.
    fn commit(mut self, events: &mut Events) -> StoreResult<()> {
        if !self.begun && events.is_empty() {
            return Ok(()); // nothing was written
        }
        let started = Instant::now();
        self.write_events(events)?;
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        metrics::histogram!(telemetry::STORE_COMMIT_DURATION).record(started.elapsed());
        metrics::counter!(telemetry::STORE_TRANSACTIONS).increment(1);
        Ok(())
    }
}

/// The writer: group-commits every waiting command, until a `Close` or
/// until every sender is gone.
fn writer(
    conn: Connection,
    mut ids: Ids,
    counts: Counts,
    mut rx: mpsc::Receiver<Command>,
    wal: WalState,
) {
    let mut batch: Vec<Command> = Vec::with_capacity(MAX_BATCH);
    let mut parked: Vec<Parked> = Vec::new();
    let mut known = Known::default();
    // Owners whose unpark came before the claim it was meant to end.
    let mut early_unparks: HashSet<String> = HashSet::new();
    let mut closing = false;
    while !closing {
        if rx.blocking_recv_many(&mut batch, MAX_BATCH) == 0 {
            break;
        }
        closing = batch.iter().any(|c| matches!(c.op, Op::Close));
        parked.retain(|p| !p.reply.is_closed());
        let (results, woken) = match apply_batch(&conn, &mut ids, &known, &batch, &parked) {
            Ok(done) => {
                known.learn(&done);
                counts.apply(&done.moves);
                (done.results, done.woken)
            }
            // Something in the batch failed: nothing of it was committed.
            // Apply each command alone so the failure stays with its owner;
            // each may serve parked claims as a batch would.
            Err(_) => {
                let mut results = Vec::with_capacity(batch.len());
                for cmd in &batch {
                    let one = std::slice::from_ref(cmd);
                    let one = match apply_batch(&conn, &mut ids, &known, one, &parked) {
                        Ok(mut done) => {
                            known.learn(&done);
                            counts.apply(&done.moves);
                            answer_parked(&mut parked, std::mem::take(&mut done.woken));
                            done.results.pop().expect("one result per command")
                        }
                        Err(e) => Err(e),
                    };
                    results.push(one);
                }
                (results, Vec::new())
            }
        };
        let mut unparked = Vec::new();
        for (cmd, result) in batch.drain(..).zip(results) {
            match (cmd.op, result) {
                (Op::ClaimWait(wait), Ok(Reply::Park)) => {
                    if early_unparks.remove(&wait.owner) {
                        let _ = cmd.reply.send(Ok(Reply::Claimed(Vec::new())));
                    } else {
                        parked.push(Parked {
                            wait,
                            reply: cmd.reply,
                        });
                    }
                }
                (_, Ok(Reply::Unpark(owner))) => {
                    unparked.push(owner);
                    let _ = cmd.reply.send(Ok(Reply::Applied(true)));
                }
                // The caller may have gone away (its request was cancelled);
                // the change is committed regardless, which is what it asked for.
                (_, result) => {
                    let _ = cmd.reply.send(result);
                }
            }
        }
        // Parked claims this batch served, after the callers of the batch
        // (whose answers are the ones a client waits for).
        answer_parked(&mut parked, woken);
        for owner in unparked {
            let (ended, kept) = std::mem::take(&mut parked)
                .into_iter()
                .partition::<Vec<_>, _>(|p| p.wait.owner == owner);
            parked = kept;
            if ended.is_empty() {
                // The unpark overtook its claim: end that claim when it comes.
                early_unparks.insert(owner);
            }
            for p in ended {
                let _ = p.reply.send(Ok(Reply::Claimed(Vec::new())));
            }
        }
        // Every caller of the batch has its answer.
        if wal.restart_due.load(Ordering::Acquire) && !closing {
            wal_restart(&conn, &wal);
        }
    }
    // Leave a compact database behind: fold the whole WAL in and empty it.
    if let Err(e) = checkpoint(&conn, "TRUNCATE") {
        tracing::warn!(error = %e, "final WAL checkpoint failed");
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the sqlite writer connection");
    }
}

/// Sends the parked claims a batch served their jobs and forgets them
/// (`woken` holds indices into `parked`, in increasing order).
fn answer_parked(parked: &mut Vec<Parked>, woken: Vec<(usize, Vec<ClaimedJob>)>) {
    // Last first, so `swap_remove` leaves the smaller indices in place.
    for (i, jobs) in woken.into_iter().rev() {
        let _ = parked.swap_remove(i).reply.send(Ok(Reply::Claimed(jobs)));
    }
}

/// Applies `batch` in one transaction. `Err` means the transaction was rolled
/// back; `Ok` holds each command's own result (a `NotFound` or `WrongState`
/// wrote nothing and does not spoil the batch).
///
/// Then, if the batch made jobs ready, it serves the parked claims waiting
/// for their types (and claims of this batch that parked) in the same
/// transaction: the second element lists the parked claims served, by index
/// into `parked`, with their jobs.
fn apply_batch(
    conn: &Connection,
    ids: &mut Ids,
    known: &Known,
    batch: &[Command],
    parked: &[Parked],
) -> StoreResult<Batch> {
    let before = *ids;
    let mut tx = Tx::new(conn, ids, known.empty_for(batch));
    let mut ready_types = Vec::new();
    let mut ready_any = false;
    let mut events = Events::new();
    let mut woken = Vec::new();
    let mut results: Vec<Option<StoreResult<Reply>>> = batch.iter().map(|_| None).collect();
    // Completions are the bulk of a busy writer's work: record all of them
    // in one statement. (They were concurrent, so no order among them or
    // with the other commands of the batch is lost.)
    let mut seen = std::collections::HashSet::new();
    let completions: Vec<(usize, &Completion)> = batch
        .iter()
        .enumerate()
        .filter_map(|(i, cmd)| match &cmd.op {
            Op::Complete(c) if seen.insert(c.id) => Some((i, c)),
            _ => None,
        })
        .collect();
    // Likewise every single enqueue without an idempotency key.
    let inserts: Vec<(usize, &NewJob, Timestamp)> = batch
        .iter()
        .enumerate()
        .filter_map(|(i, cmd)| match &cmd.op {
            Op::Insert(job, now) if job.idempotency_key.is_none() => Some((i, job, *now)),
            _ => None,
        })
        .collect();
    let mut run = || -> StoreResult<()> {
        if !inserts.is_empty() {
            let jobs: Vec<(&NewJob, Timestamp)> =
                inserts.iter().map(|(_, j, now)| (*j, *now)).collect();
            let created = insert_many(&mut tx, &jobs, &mut events)?;
            for ((i, _, _), created) in inserts.iter().zip(created) {
                results[*i] = Some(Ok(Reply::Enqueued(created)));
            }
        }
        if !completions.is_empty() {
            let all: Vec<&Completion> = completions.iter().map(|(_, c)| *c).collect();
            let applied = complete_many(&mut tx, &all, &mut events)?;
            for ((i, _), ok) in completions.iter().zip(applied) {
                results[*i] = Some(Ok(Reply::Applied(ok)));
            }
        }
        for (i, cmd) in batch.iter().enumerate() {
            if results[i].is_some() {
                continue;
            }
            let result = apply(&mut tx, &cmd.op, &mut events);
            if let Err(StoreError::Backend(e)) = result {
                return Err(StoreError::Backend(e));
            }
            results[i] = Some(result);
        }
        let ready = Readied::of(batch, &results);
        ready_types = ready.types.iter().map(|t| t.to_string()).collect();
        ready_any = ready.any;
        if ready.is_empty() {
            return Ok(());
        }
        tx.last_phase = true;
        // Claims parked earlier (`Ok`: their index in `parked`), then this
        // batch's that parked (`Err`: their index in the batch).
        let serve: Vec<(Result<usize, usize>, &ClaimWait)> =
            parked
                .iter()
                .enumerate()
                .filter(|(_, p)| !p.reply.is_closed())
                .map(|(i, p)| (Ok(i), &p.wait))
                .chain(batch.iter().enumerate().filter_map(|(i, cmd)| {
                    match (&cmd.op, &results[i]) {
                        (Op::ClaimWait(wait), Some(Ok(Reply::Park))) => Some((Err(i), wait)),
                        _ => None,
                    }
                }))
                .filter(|(_, wait)| ready.wanted_by(wait))
                .collect();
        for (whose, wait) in serve {
            let jobs = claim_for(&mut tx, wait, Some(&ready), &mut events)?;
            match whose {
                _ if jobs.is_empty() => {}
                Ok(i) => woken.push((i, jobs)),
                Err(i) => results[i] = Some(Ok(Reply::Claimed(jobs))),
            }
        }
        Ok(())
    };
    let outcome = run();
    // A claim's "nothing more" holds at the commit unless a command applied
    // after it may have readied its type. Keyless enqueues are applied
    // before any claim; the commands below run in order, after them.
    let (late_types, late_any) = may_ready(batch, false);
    let moves = std::mem::take(&mut tx.moves);
    let found_empty = std::mem::take(&mut tx.found_empty)
        .into_iter()
        .filter(|(t, last_phase)| *last_phase || !(late_any || late_types.contains(t.as_str())))
        .map(|(t, _)| t)
        .collect();
    let committed = match outcome {
        Ok(()) => tx.commit(&mut events),
        Err(e) => Err(e),
    };
    if let Err(e) = committed {
        // (`commit` consumed the transaction; a failed one is rolled back
        // on the same connection here.)
        let _ = conn.execute_batch("ROLLBACK");
        *ids = before;
        return Err(e);
    }
    let results = results
        .into_iter()
        .map(|r| r.expect("every command has a result"))
        .collect();
    Ok(Batch {
        results,
        woken,
        found_empty,
        moves,
        ready_types,
        ready_any,
    })
}

/// The types the commands of `batch` may ready, or whether they may ready
/// any. Without `keyless`, leaves out the keyless enqueues, which are applied
/// in bulk before every other command (so before every claim).
fn may_ready(batch: &[Command], keyless: bool) -> (HashSet<&str>, bool) {
    let mut types = HashSet::new();
    for cmd in batch {
        match &cmd.op {
            Op::Insert(job, _) if keyless || job.idempotency_key.is_some() => {
                types.insert(job.job_type.as_str());
            }
            Op::InsertBatch(jobs, _) => types.extend(jobs.iter().map(|j| j.job_type.as_str())),
            Op::Promote(_) | Op::Reap(_) | Op::Release { .. } | Op::Replay(..) => {
                return (types, true);
            }
            _ => {}
        }
    }
    (types, false)
}

/// What a batch made ready to claim.
struct Readied<'b> {
    /// Jobs of these types were enqueued ready.
    types: HashSet<&'b str>,
    /// Jobs of types the writer did not look up were made ready (promoted,
    /// requeued, released, replayed).
    any: bool,
    /// The latest time any of it happened.
    at: Timestamp,
}

impl<'b> Readied<'b> {
    fn of(batch: &'b [Command], results: &[Option<StoreResult<Reply>>]) -> Self {
        let mut ready = Readied {
            types: Default::default(),
            any: false,
            at: Timestamp(0),
        };
        let queued = |e: &Enqueued| {
            matches!(
                e,
                Enqueued::Created {
                    state: JobState::Queued,
                    ..
                }
            )
        };
        for (cmd, result) in batch.iter().zip(results) {
            let Some(Ok(reply)) = result else { continue };
            let at = match (&cmd.op, reply) {
                (Op::Insert(job, now), Reply::Enqueued(e)) if queued(e) => {
                    ready.types.insert(&job.job_type);
                    *now
                }
                (Op::InsertBatch(jobs, now), Reply::EnqueuedBatch(done)) => {
                    for (job, e) in jobs.iter().zip(done) {
                        if queued(e) {
                            ready.types.insert(&job.job_type);
                        }
                    }
                    *now
                }
                (Op::Promote(now), Reply::Promoted(ids)) if !ids.is_empty() => {
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

    fn is_empty(&self) -> bool {
        !self.any && self.types.is_empty()
    }

    fn wanted_by(&self, wait: &ClaimWait) -> bool {
        self.any
            || wait
                .requests
                .iter()
                .any(|r| self.types.contains(r.job_type.as_str()))
    }
}

/// Serves a [`ClaimWait`]'s requests in order, up to its total. A parked
/// claim served `at` a later time has its leases start then, each as long as
/// its request asked.
///
/// A parked claim served because of `ready` claims only the types made
/// ready (its others were empty when it parked, and nothing readied them
/// since).
fn claim_for(
    tx: &mut Tx<'_>,
    wait: &ClaimWait,
    ready: Option<&Readied<'_>>,
    events: &mut Events,
) -> StoreResult<Vec<ClaimedJob>> {
    let requests: Vec<&ClaimRequest> = wait
        .requests
        .iter()
        .filter(|r| {
            ready.is_none_or(|ready| ready.any || ready.types.contains(r.job_type.as_str()))
        })
        .collect();
    let mut jobs = Vec::new();
    for req in requests {
        let left = wait.total.saturating_sub(jobs.len());
        if left == 0 {
            break;
        }
        let mut req = req.clone();
        req.limit = req.limit.min(left);
        if let Some(ready) = ready
            && ready.at > req.now
        {
            req.lease_expires_at = req.lease_expires_at.plus(req.now.until(ready.at));
            req.now = ready.at;
        }
        jobs.extend(claim(tx, &req, events)?);
    }
    Ok(jobs)
}

fn apply(tx: &mut Tx<'_>, op: &Op, events: &mut Events) -> StoreResult<Reply> {
    match op {
        Op::Insert(job, now) => insert(tx, job, *now, events).map(Reply::Enqueued),
        Op::InsertBatch(jobs, now) => {
            let (keyless, keyed): (Vec<_>, Vec<_>) = jobs
                .iter()
                .enumerate()
                .partition(|(_, j)| j.idempotency_key.is_none());
            let mut out: Vec<Option<Enqueued>> = vec![None; jobs.len()];
            let bulk: Vec<(&NewJob, Timestamp)> = keyless.iter().map(|(_, j)| (*j, *now)).collect();
            for ((i, _), created) in keyless.iter().zip(insert_many(tx, &bulk, events)?) {
                out[*i] = Some(created);
            }
            // Keyed jobs one by one, in order, so a key repeated within the
            // batch finds the job its first use created.
            for (i, job) in keyed {
                out[i] = Some(insert(tx, job, *now, events)?);
            }
            Ok(Reply::EnqueuedBatch(
                out.into_iter()
                    .map(|e| e.expect("every job was inserted"))
                    .collect(),
            ))
        }
        Op::Claim(req) => claim(tx, req, events).map(Reply::Claimed),
        Op::ClaimWait(wait) => {
            let jobs = claim_for(tx, wait, None, events)?;
            Ok(if jobs.is_empty() {
                Reply::Park
            } else {
                Reply::Claimed(jobs)
            })
        }
        Op::Unpark(owner) => Ok(Reply::Unpark(owner.clone())),
        // A repeated report for a job already in this batch's bulk update.
        Op::Complete(c) => {
            complete_many(tx, &[c], events).map(|applied| Reply::Applied(applied[0]))
        }
        // The rare ones: each on its own statements.
        Op::Release { .. } | Op::Reap(_) | Op::Promote(_) | Op::Replay(..) | Op::Cancel(..) => {
            let mut moves = Moves::new();
            let conn = tx.conn()?;
            let reply = match op {
                Op::Release { id, token, now } => {
                    release(conn, *id, *token, *now, events, &mut moves).map(Reply::Applied)
                }
                Op::Reap(now) => reap(conn, *now, events, &mut moves).map(Reply::Reaped),
                Op::Promote(now) => promote(conn, *now, events, &mut moves).map(Reply::Promoted),
                Op::Replay(id, now) => {
                    replay(conn, *id, *now, events, &mut moves).map(|r| Reply::Record(Box::new(r)))
                }
                Op::Cancel(id, now) => {
                    cancel(conn, *id, *now, events, &mut moves).map(|r| Reply::Record(Box::new(r)))
                }
                _ => unreachable!("matched above"),
            };
            tx.moves.extend(moves);
            reply
        }
        Op::Close => Ok(Reply::Closed),
    }
}

/// One history row. The commands of a batch collect theirs and the batch
/// writes them all in one statement just before it commits.
struct Event {
    job_id: JobId,
    at: Timestamp,
    from: Option<JobState>,
    to: JobState,
    attempt: i64,
    actor: String,
    reason: Option<String>,
    plugin_digest: Option<String>,
}

impl Event {
    fn enqueued(job_id: JobId, at: Timestamp, state: JobState) -> Event {
        Event {
            job_id,
            at,
            from: None,
            to: state,
            attempt: 0,
            actor: "api".into(),
            reason: Some("enqueued".into()),
            plugin_digest: None,
        }
    }
}

type Events = Vec<Event>;

/// Collected events, in one statement, in order. (The hot transitions,
/// enqueue, claim and completion, write theirs from the jobs' own rows
/// instead: [`ENQUEUED_EVENTS`], [`CLAIM_WITH_EVENTS`], [`COMPLETION_EVENTS`].)
///
/// Bulk rows travel as one JSON array of arrays, read with `jsonb_each`:
/// the `value` of each row is then JSONB, which `->>` reads as it is, where
/// `json_each` would render every row back to JSON text for `->>` to parse
/// again.
const EVENTS_INSERT: &str =
    "INSERT OR FAIL INTO job_events (job_id, at, from_state, to_state, attempt, actor, reason, plugin_digest)
     SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, value->>7
     FROM jsonb_each(?)";

/// The rows for [`EVENTS_INSERT`].
fn events_doc(events: &Events) -> StoreResult<String> {
    let rows: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.job_id,
                e.at.as_micros(),
                e.from.map(JobState::as_str),
                e.to.as_str(),
                e.attempt,
                &e.actor,
                &e.reason,
                &e.plugin_digest,
            )
        })
        .collect();
    serde_json::to_string(&rows).map_err(|e| StoreError::Backend(e.to_string()))
}

fn initial_state(job: &NewJob, now: Timestamp) -> JobState {
    if job.run_at > now {
        JobState::Scheduled
    } else {
        JobState::Queued
    }
}

/// Creates jobs without idempotency keys in one statement. Ids are assigned
/// here, in order, from the writer's counter: the writer is the only writer,
/// so nobody can take them.
fn insert_many(
    tx: &mut Tx<'_>,
    jobs: &[(&NewJob, Timestamp)],
    events: &mut Events,
) -> StoreResult<Vec<Enqueued>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let last = tx.ids.job;
    tx.ids.job += jobs.len() as i64;
    let mut rows = Vec::with_capacity(jobs.len());
    let mut created = Vec::with_capacity(jobs.len());
    for (n, (job, now)) in jobs.iter().enumerate() {
        let id = last + 1 + n as i64;
        let state = initial_state(job, *now);
        moved(&mut tx.moves, &job.job_type, None, state, 1);
        rows.push(serde_json::json!([
            id,
            job.job_type,
            state.as_str(),
            job.payload,
            job.max_attempts,
            job.run_at.as_micros(),
            now.as_micros(),
        ]));
        created.push(Enqueued::Created { id, state });
    }
    let doc = serde_json::to_string(&rows).map_err(|e| StoreError::Backend(e.to_string()))?;
    tx.conn()?.prepare_cached(
        "INSERT OR FAIL INTO jobs (id, job_type, state, payload, max_attempts, run_at, created_at, updated_at)
         SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, value->>6
         FROM jsonb_each(?)",
    )?
    .execute([doc])?;
    tx.write_events(events)?;
    tx.conn()?
        .prepare_cached(ENQUEUED_EVENTS)?
        .execute([last + 1, tx.ids.job])?;
    Ok(created)
}

/// The events of the jobs just created by [`insert_many`], from the first
/// id to the last.
const ENQUEUED_EVENTS: &str =
    "INSERT OR FAIL INTO job_events (job_id, at, from_state, to_state, attempt, actor, reason)
     SELECT id, created_at, NULL, state, 0, 'api', 'enqueued'
     FROM jobs WHERE id BETWEEN ?1 AND ?2";

/// The events of the jobs whose completions just applied (the parameter's
/// `ids`, all reported by its `actor`): each row holds the time, the state
/// reached, the error of a failed attempt and the plugin version.
const COMPLETION_EVENTS: &str =
    "INSERT OR FAIL INTO job_events (job_id, at, from_state, to_state, attempt, actor, reason, plugin_digest)
     SELECT j.id, j.updated_at, 'running', j.state, j.attempt, p.d->>'actor',
            CASE WHEN j.state = 'succeeded' THEN NULL ELSE j.last_error END, j.plugin_digest
     FROM (SELECT ? AS d) AS p, json_each(p.d, '$.ids') AS c JOIN jobs AS j ON j.id = c.value";

fn insert(
    tx: &mut Tx<'_>,
    job: &NewJob,
    now: Timestamp,
    events: &mut Events,
) -> StoreResult<Enqueued> {
    let conn = tx.conn()?;
    let state = initial_state(job, now);
    let created: Option<i64> = conn
        .prepare_cached(
            "INSERT INTO jobs (job_type, state, payload, idempotency_key, max_attempts, run_at, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
             ON CONFLICT (job_type, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING id",
        )?
        .query_row(
            params![
                job.job_type,
                state.as_str(),
                job.payload,
                job.idempotency_key,
                job.max_attempts,
                job.run_at.as_micros(),
                now.as_micros(),
            ],
            |r| r.get(0),
        )
        .optional()?;
    match created {
        Some(id) => {
            // SQLite numbered it past the largest id, which the counter follows.
            tx.ids.job = tx.ids.job.max(id);
            moved(&mut tx.moves, &job.job_type, None, state, 1);
            events.push(Event::enqueued(id, now, state));
            Ok(Enqueued::Created { id, state })
        }
        None => {
            let (id, state): (i64, String) = conn
                .prepare_cached(
                    "SELECT id, state FROM jobs WHERE job_type = ?1 AND idempotency_key = ?2",
                )?
                .query_row(params![job.job_type, job.idempotency_key], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            Ok(Enqueued::Existing {
                id,
                state: parse_state(&state)?,
            })
        }
    }
}

/// Leases up to `req.limit` ready jobs of one type and writes their events.
fn claim(tx: &mut Tx<'_>, req: &ClaimRequest, events: &mut Events) -> StoreResult<Vec<ClaimedJob>> {
    if req.limit == 0 || tx.empty.contains(&req.job_type) {
        return Ok(Vec::new());
    }
    // Earlier events first, so each job's history stays in order.
    tx.write_events(events)?;
    let conn = tx.conn()?;
    let started = Instant::now();
    let mut jobs = conn
        .prepare_cached(CLAIM)?
        .query_map(
            params![
                req.owner,
                req.token,
                req.lease_expires_at.as_micros(),
                req.now.as_micros(),
                req.job_type,
                i64::try_from(req.limit).unwrap_or(i64::MAX),
            ],
            |r| {
                Ok(ClaimedJob {
                    id: r.get(0)?,
                    job_type: req.job_type.clone(),
                    payload: r.get(1)?,
                    attempt: r.get(2)?,
                    max_attempts: r.get(3)?,
                    run_at: Timestamp(r.get(4)?),
                    token: req.token,
                })
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    conn.prepare_cached(CLAIM_EVENTS)?.execute(params![
        req.now.as_micros(),
        format!("worker:{}", req.owner),
        req.plugin_digest,
        req.lease_expires_at.as_micros(),
        req.token,
    ])?;
    metrics::histogram!(telemetry::CLAIM_DURATION).record(started.elapsed());
    jobs.sort_by_key(|j| (j.run_at, j.id));
    if jobs.len() < req.limit {
        tx.found_empty.push((req.job_type.clone(), tx.last_phase));
    }
    moved(
        &mut tx.moves,
        &req.job_type,
        Some(JobState::Queued),
        JobState::Running,
        jobs.len() as u64,
    );
    Ok(jobs)
}

/// The claim: lease the oldest due jobs of one type.
///
/// The limit is `(?6 + 0)`, not a bare `?6`: SQLite (3.47 and later) reads a
/// bare bound LIMIT while planning and marks the statement to be prepared
/// again whenever that number changes, which for a claim (as many jobs as
/// there are free slots) is nearly every time. The plan does not depend on
/// it: the partial index yields the jobs in order and the scan stops at the
/// limit either way.
const CLAIM: &str =
    "UPDATE OR FAIL jobs SET state = 'running', attempt = attempt + 1, lease_owner = ?1,
            lease_token = ?2, lease_expires_at = ?3, started_at = ?4, updated_at = ?4
     WHERE id IN (SELECT id FROM jobs WHERE state = 'queued' AND job_type = ?5
                  ORDER BY run_at, id LIMIT (?6 + 0))
     RETURNING id, payload, attempt, max_attempts, run_at";

/// The events of the jobs a [`CLAIM`] just leased, written from their rows,
/// found by that lease (the reaper's index, on its exact expiry, then the
/// token).
const CLAIM_EVENTS: &str =
    "INSERT OR FAIL INTO job_events (job_id, at, from_state, to_state, attempt, actor, reason, plugin_digest)
     SELECT id, ?1, 'queued', 'running', attempt, ?2, NULL, ?3
     FROM jobs WHERE state = 'running' AND lease_expires_at = ?4 AND lease_token = ?5";

/// Records completions (each for a distinct job) in one statement, each
/// fenced by its own lease token. Returns, per completion, whether it applied.
fn complete_many(
    tx: &mut Tx<'_>,
    completions: &[&Completion],
    events: &mut Events,
) -> StoreResult<Vec<bool>> {
    // One statement per plugin version (a batch usually holds one or two);
    // the version is bound once, not repeated in every row.
    let mut by_digest: Vec<(&str, Vec<&Completion>)> = Vec::new();
    for &c in completions {
        match by_digest.iter_mut().find(|(d, _)| *d == c.plugin_digest) {
            Some((_, group)) => group.push(c),
            None => by_digest.push((&c.plugin_digest, vec![c])),
        }
    }
    let mut applied = Vec::with_capacity(completions.len());
    for (digest, group) in by_digest {
        // [id, token, state, result or error, run_at of a retry, now, started_at]
        let rows: Vec<_> = group
            .iter()
            .map(|c| {
                let (state, text, run_at) = match &c.outcome {
                    Outcome::Succeeded { result } => (JobState::Succeeded, result.as_deref(), None),
                    Outcome::Retry { error, run_at } => (
                        JobState::Scheduled,
                        Some(error.as_str()),
                        Some(run_at.as_micros()),
                    ),
                    Outcome::Dead { error } => (JobState::Dead, Some(error.as_str()), None),
                };
                (
                    c.id,
                    c.token,
                    state.as_str(),
                    text,
                    run_at,
                    c.now.as_micros(),
                    c.started_at.as_micros(),
                )
            })
            .collect();
        let doc = serde_json::to_string(&rows).map_err(|e| StoreError::Backend(e.to_string()))?;
        let started = Instant::now();
        let mut stmt = tx.conn()?.prepare_cached(
            "UPDATE OR FAIL jobs SET state = c.state,
                    result = CASE WHEN c.state = 'succeeded' THEN c.text END,
                    last_error = CASE WHEN c.state = 'succeeded' THEN jobs.last_error ELSE c.text END,
                    run_at = COALESCE(c.run_at, jobs.run_at),
                    finished_at = CASE WHEN c.state = 'scheduled' THEN NULL ELSE c.now END,
                    plugin_digest = c.digest, updated_at = c.now, started_at = c.started_at,
                    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
             FROM (SELECT value->>0 AS id, value->>1 AS token, value->>2 AS state,
                          value->>3 AS text, value->>4 AS run_at, value->>5 AS now,
                          value->>6 AS started_at, ?1 AS digest
                   FROM jsonb_each(?2)) AS c
             WHERE jobs.id = c.id AND jobs.state = 'running' AND jobs.lease_token = c.token
             RETURNING jobs.id, jobs.job_type",
        )?;
        let rows = stmt.query_map(params![digest, doc], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            applied.push(row?);
        }
        metrics::histogram!(telemetry::STORE_COMPLETE_DURATION).record(started.elapsed());
    }
    // Ids are distinct within `completions`, and the token is in the WHERE
    // clause, so an id coming back means that completion applied.
    let applied: std::collections::HashMap<i64, String> = applied.into_iter().collect();
    // The events come from the updated rows: one statement per reporting
    // owner (a host reports as one).
    tx.write_events(events)?;
    let mut by_owner: Vec<(&str, Vec<JobId>)> = Vec::new();
    let done = completions
        .iter()
        .map(|c| {
            let ok = applied.contains_key(&c.id);
            if ok {
                let to = match c.outcome {
                    Outcome::Succeeded { .. } => JobState::Succeeded,
                    Outcome::Retry { .. } => JobState::Scheduled,
                    Outcome::Dead { .. } => JobState::Dead,
                };
                moved(
                    &mut tx.moves,
                    &applied[&c.id],
                    Some(JobState::Running),
                    to,
                    1,
                );
                match by_owner.iter_mut().find(|(owner, _)| *owner == c.owner) {
                    Some((_, ids)) => ids.push(c.id),
                    None => by_owner.push((&c.owner, vec![c.id])),
                }
            }
            ok
        })
        .collect();
    for (owner, ids) in by_owner {
        let doc = serde_json::json!({ "ids": ids, "actor": format!("worker:{owner}") });
        tx.conn()?
            .prepare_cached(COMPLETION_EVENTS)?
            .execute([doc.to_string()])?;
    }
    Ok(done)
}

fn release(
    conn: &Connection,
    id: JobId,
    token: i64,
    now: Timestamp,
    events: &mut Events,
    moves: &mut Moves,
) -> StoreResult<bool> {
    let released: Option<(i64, String)> = conn
        .prepare_cached(
            "UPDATE jobs SET state = 'queued', attempt = attempt - 1, updated_at = ?1,
                    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
             WHERE id = ?2 AND state = 'running' AND lease_token = ?3
             RETURNING attempt, job_type",
        )?
        .query_row(params![now.as_micros(), id, token], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let Some((attempt, job_type)) = released else {
        return Ok(false);
    };
    moved(
        moves,
        &job_type,
        Some(JobState::Running),
        JobState::Queued,
        1,
    );
    events.push(Event {
        job_id: id,
        at: now,
        from: Some(JobState::Running),
        to: JobState::Queued,
        attempt,
        actor: "worker".into(),
        reason: Some(
            "released at shutdown before the attempt finished; the attempt is not counted".into(),
        ),
        plugin_digest: None,
    });
    Ok(true)
}

fn reap(
    conn: &Connection,
    now: Timestamp,
    events: &mut Events,
    moves: &mut Moves,
) -> StoreResult<Reaped> {
    let mut stmt = conn.prepare_cached(
        "UPDATE OR FAIL jobs SET
                state = CASE WHEN attempt >= max_attempts THEN 'dead' ELSE 'queued' END,
                finished_at = CASE WHEN attempt >= max_attempts THEN ?1 ELSE NULL END,
                last_error = 'lease expired: attempt ' || attempt
                             || ' stopped without reporting an outcome (host crashed or was killed)',
                updated_at = ?1, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
         WHERE state = 'running' AND lease_expires_at <= ?1
         RETURNING id, state, attempt, last_error, job_type",
    )?;
    let rows = stmt
        .query_map([now.as_micros()], |r| {
            Ok((
                r.get::<_, JobId>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut reaped = Reaped::default();
    for (id, state, attempt, last_error, job_type) in rows {
        let to = parse_state(&state)?;
        moved(moves, &job_type, Some(JobState::Running), to, 1);
        events.push(Event {
            job_id: id,
            at: now,
            from: Some(JobState::Running),
            to,
            attempt,
            actor: "reaper".into(),
            reason: Some(last_error),
            plugin_digest: None,
        });
        match to {
            JobState::Dead => reaped.dead.push(id),
            _ => reaped.requeued.push(id),
        }
    }
    Ok(reaped)
}

fn promote(
    conn: &Connection,
    now: Timestamp,
    events: &mut Events,
    moves: &mut Moves,
) -> StoreResult<Vec<JobId>> {
    let mut promoted = conn
        .prepare_cached(
            "UPDATE OR FAIL jobs SET state = 'queued', updated_at = ?1
             WHERE state = 'scheduled' AND run_at <= ?1 RETURNING id, attempt, job_type",
        )?
        .query_map([now.as_micros()], |r| {
            Ok((
                r.get::<_, JobId>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    promoted.sort_unstable();
    for (_, _, job_type) in &promoted {
        moved(
            moves,
            job_type,
            Some(JobState::Scheduled),
            JobState::Queued,
            1,
        );
    }
    events.extend(promoted.iter().map(|&(id, attempt, _)| Event {
        job_id: id,
        at: now,
        from: Some(JobState::Scheduled),
        to: JobState::Queued,
        attempt,
        actor: "promoter".into(),
        reason: Some("due".into()),
        plugin_digest: None,
    }));
    Ok(promoted.into_iter().map(|(id, _, _)| id).collect())
}

fn replay(
    conn: &Connection,
    id: JobId,
    now: Timestamp,
    events: &mut Events,
    moves: &mut Moves,
) -> StoreResult<JobRecord> {
    let changed = conn
        .prepare_cached(
            "UPDATE jobs SET state = 'queued', attempt = 0, run_at = ?1, result = NULL,
                    finished_at = NULL, updated_at = ?1
             WHERE id = ?2 AND state = 'dead'",
        )?
        .execute(params![now.as_micros(), id])?;
    operator_transition(
        conn,
        id,
        now,
        changed,
        (JobState::Dead, JobState::Queued),
        "replayed from the dead-letter queue with a fresh attempt budget",
        (events, moves),
    )
}

fn cancel(
    conn: &Connection,
    id: JobId,
    now: Timestamp,
    events: &mut Events,
    moves: &mut Moves,
) -> StoreResult<JobRecord> {
    let from: Option<String> = conn
        .prepare_cached("SELECT state FROM jobs WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    let from = match from {
        None => return Err(StoreError::NotFound(id)),
        Some(s) => parse_state(&s)?,
    };
    let changed = conn
        .prepare_cached(
            "UPDATE jobs SET state = 'cancelled', finished_at = ?1, updated_at = ?1
             WHERE id = ?2 AND state IN ('queued', 'scheduled')",
        )?
        .execute(params![now.as_micros(), id])?;
    operator_transition(
        conn,
        id,
        now,
        changed,
        (from, JobState::Cancelled),
        "cancelled by an operator",
        (events, moves),
    )
}

/// After an operator's conditional UPDATE: records the event if it applied,
/// else says why not. Returns the job as it now is.
fn operator_transition(
    conn: &Connection,
    id: JobId,
    now: Timestamp,
    rows_affected: usize,
    (from, to): (JobState, JobState),
    reason: &str,
    (events, moves): (&mut Events, &mut Moves),
) -> StoreResult<JobRecord> {
    let record = conn
        .prepare_cached("SELECT * FROM jobs WHERE id = ?1")?
        .query_row([id], |r| Ok(record_of(r)))
        .optional()?
        .transpose()?
        .ok_or(StoreError::NotFound(id))?;
    if rows_affected == 0 {
        return Err(StoreError::WrongState {
            id,
            state: record.state,
        });
    }
    moved(moves, &record.job_type, Some(from), to, 1);
    events.push(Event {
        job_id: id,
        at: now,
        from: Some(from),
        to,
        attempt: i64::from(record.attempt),
        actor: "admin".into(),
        reason: Some(reason.into()),
        plugin_digest: None,
    });
    Ok(record)
}

async fn events_get(conn: &mut SqliteConnection, id: JobId) -> StoreResult<Vec<JobEvent>> {
    let rows = sqlx::query(
        "SELECT at, from_state, to_state, attempt, actor, reason, plugin_digest
         FROM job_events WHERE job_id = ?1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(JobEvent {
                at: Timestamp(row.try_get("at")?),
                from: row
                    .try_get::<Option<&str>, _>("from_state")?
                    .map(parse_state)
                    .transpose()?,
                to: state_of(row, "to_state")?,
                attempt: u32_of(row, "attempt")?,
                actor: row.try_get("actor")?,
                reason: row.try_get("reason")?,
                plugin_digest: row.try_get("plugin_digest")?,
            })
        })
        .collect()
}

async fn record_get(conn: &mut SqliteConnection, id: JobId) -> StoreResult<Option<JobRecord>> {
    let row = sqlx::query("SELECT * FROM jobs WHERE id = ?1")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(record_of).transpose()
}

/// A row of the jobs table, as either driver hands it over: sqlx's to the
/// readers, rusqlite's to the writer.
trait JobsRow {
    fn int(&self, col: &str) -> StoreResult<Option<i64>>;
    fn text(&self, col: &str) -> StoreResult<Option<String>>;
}

impl JobsRow for SqliteRow {
    fn int(&self, col: &str) -> StoreResult<Option<i64>> {
        Ok(self.try_get(col)?)
    }
    fn text(&self, col: &str) -> StoreResult<Option<String>> {
        Ok(self.try_get(col)?)
    }
}

impl JobsRow for rusqlite::Row<'_> {
    fn int(&self, col: &str) -> StoreResult<Option<i64>> {
        Ok(self.get(col)?)
    }
    fn text(&self, col: &str) -> StoreResult<Option<String>> {
        Ok(self.get(col)?)
    }
}

fn record_of(row: &impl JobsRow) -> StoreResult<JobRecord> {
    let null = |col: &str| StoreError::Backend(format!("jobs.{col} is NULL"));
    let int = |col: &str| row.int(col)?.ok_or_else(|| null(col));
    let text = |col: &str| row.text(col)?.ok_or_else(|| null(col));
    let count = |col: &str| -> StoreResult<u32> {
        let v = int(col)?;
        u32::try_from(v).map_err(|_| StoreError::Backend(format!("{col} out of range: {v}")))
    };
    Ok(JobRecord {
        id: int("id")?,
        job_type: text("job_type")?,
        state: parse_state(&text("state")?)?,
        payload: text("payload")?,
        idempotency_key: row.text("idempotency_key")?,
        attempt: count("attempt")?,
        max_attempts: count("max_attempts")?,
        run_at: Timestamp(int("run_at")?),
        last_error: row.text("last_error")?,
        result: row.text("result")?,
        plugin_digest: row.text("plugin_digest")?,
        lease_expires_at: row.int("lease_expires_at")?.map(Timestamp),
        created_at: Timestamp(int("created_at")?),
        updated_at: Timestamp(int("updated_at")?),
        started_at: row.int("started_at")?.map(Timestamp),
        finished_at: row.int("finished_at")?.map(Timestamp),
    })
}

fn parse_state(s: &str) -> StoreResult<JobState> {
    s.parse().map_err(|e| StoreError::Backend(format!("{e}")))
}

fn state_of(row: &SqliteRow, col: &str) -> StoreResult<JobState> {
    parse_state(row.try_get::<&str, _>(col)?)
}

fn u32_of(row: &SqliteRow, col: &str) -> StoreResult<u32> {
    let v: i64 = row.try_get(col)?;
    u32::try_from(v).map_err(|_| StoreError::Backend(format!("{col} out of range: {v}")))
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

    async fn job_promote(&self, now: Timestamp) -> StoreResult<Vec<JobId>> {
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

    async fn job_cancel(&self, id: JobId, now: Timestamp) -> StoreResult<JobRecord> {
        match self.send(Op::Cancel(id, now)).await? {
            Reply::Record(r) => Ok(*r),
            _ => unreachable!("the writer answers Cancel with Record"),
        }
    }

    async fn counts(&self) -> StoreResult<StateCounts> {
        let all = self.counts.0.lock().expect("counts lock");
        let mut total = StateCounts::default();
        for counts in all.values() {
            for state in JobState::ALL {
                total.add(state, counts.get(state));
            }
        }
        Ok(total)
    }

    async fn counts_by_type(&self) -> StoreResult<Vec<(String, StateCounts)>> {
        let all = self.counts.0.lock().expect("counts lock");
        Ok(all.iter().map(|(t, c)| (t.clone(), c.clone())).collect())
    }

    async fn close(&self) {
        // Ok or Closed: either way the writer is gone afterwards.
        self.checkpointer.cancel();
        let _ = self.send(Op::Close).await;
        self.writer_ended.cancelled().await;
        self.readers.close().await;
    }
}

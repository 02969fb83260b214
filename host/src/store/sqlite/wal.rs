//! WAL upkeep: passive checkpoints in the background, and the writer's
//! restart of a WAL grown too long.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use sqlx::Connection as _;
use sqlx::sqlite::SqliteConnection;
use tokio_util::sync::CancellationToken;

use super::BUSY_TIMEOUT;
use crate::telemetry;

/// How often the WAL is checkpointed into the database file.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// WAL frames (pages) past which the writer restarts the WAL itself.
pub(super) const WAL_RESTART_FRAMES: i64 = 16_384;
/// How long the writer waits for readers to leave an older snapshot before
/// it gives up a WAL restart until the next checkpoint tick.
pub(super) const WAL_RESTART_PATIENCE: Duration = Duration::from_millis(100);

/// A frame of the WAL: one page and its 24-byte header.
pub(super) const WAL_FRAME_BYTES: i64 = 4096 + 24;

/// Shared by the checkpointer and the writer: how long the WAL may grow, and
/// whether it has.
#[derive(Clone)]
pub(super) struct WalState {
    pub(super) restart_frames: i64,
    /// The checkpointer saw more than `restart_frames` in the WAL: the
    /// writer restarts it between two batches.
    pub(super) restart_due: Arc<AtomicBool>,
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
pub(super) async fn checkpoints(
    mut conn: SqliteConnection,
    stop: CancellationToken,
    wal: WalState,
) {
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
pub(super) fn wal_restart(conn: &Connection, wal: &WalState) {
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
pub(super) fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<i64> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get(0))
}

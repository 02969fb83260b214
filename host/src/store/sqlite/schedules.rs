//! Schedules: their writes, in the writer's transaction, and their read.

use std::sync::LazyLock;

use rusqlite::{Connection, OptionalExtension, params};
use sqlx::sqlite::SqliteConnection;

use crate::store::query::{schedule_advance_sql, schedule_put_sql};
use crate::store::rows::schedule_of;
use crate::store::{Advance, Schedule, StoreResult};

/// A write to the schedules, as the writer receives it.
pub(super) enum ScheduleOp {
    Put(Schedule),
    Delete(String),
    Advance(Advance),
}

fn numbered(n: usize) -> String {
    format!("?{n}")
}

/// Built once.
static PUT: LazyLock<String> = LazyLock::new(|| schedule_put_sql(numbered));
static ADVANCE: LazyLock<String> = LazyLock::new(|| schedule_advance_sql(numbered));

/// Applies `op`: whether it created (put), deleted or moved a schedule.
pub(super) fn write(conn: &Connection, op: &ScheduleOp) -> StoreResult<bool> {
    match op {
        ScheduleOp::Put(s) => {
            // The writer is the only writer: nothing comes between the two.
            let existed = conn
                .prepare_cached("SELECT 1 FROM schedules WHERE name = ?1")?
                .query_row([&s.name], |_| Ok(()))
                .optional()?
                .is_some();
            conn.prepare_cached(&PUT)?.execute(params![
                s.name,
                s.job_type,
                s.cron,
                s.timezone,
                s.payload,
                s.source,
                s.next_run_at.as_micros(),
                s.updated_at.as_micros(),
            ])?;
            Ok(!existed)
        }
        ScheduleOp::Delete(name) => Ok(conn
            .prepare_cached("DELETE FROM schedules WHERE name = ?1")?
            .execute([name])?
            > 0),
        ScheduleOp::Advance(a) => Ok(conn.prepare_cached(&ADVANCE)?.execute(params![
            a.name,
            a.from.as_micros(),
            a.next.as_micros(),
            a.fired.as_micros(),
            a.job,
            a.now.as_micros(),
        ])? > 0),
    }
}

pub(super) async fn list(conn: &mut SqliteConnection) -> StoreResult<Vec<Schedule>> {
    let rows = sqlx::query("SELECT * FROM schedules ORDER BY name")
        .fetch_all(conn)
        .await?;
    rows.iter().map(schedule_of).collect()
}

//! Reads, on the read-only pool, and how this backend's rows are read
//! (decoding itself is shared: [`crate::store::rows`]).

use sqlx::Row as _;
use sqlx::sqlite::{SqliteConnection, SqliteRow};

use crate::job::{JobEvent, JobId, JobRecord};
use crate::store::query::{Param, list_sql};
use crate::store::rows::{Row, event_of, record_of};
use crate::store::{JobQuery, StoreResult};

pub(super) async fn events_get(
    conn: &mut SqliteConnection,
    id: JobId,
) -> StoreResult<Vec<JobEvent>> {
    let rows = sqlx::query(
        "SELECT at, from_state, to_state, attempt, actor, reason, plugin_digest
         FROM job_events WHERE job_id = ?1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    rows.iter().map(event_of).collect()
}

pub(super) async fn record_get(
    conn: &mut SqliteConnection,
    id: JobId,
) -> StoreResult<Option<JobRecord>> {
    let row = sqlx::query("SELECT * FROM jobs WHERE id = ?1")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(record_of).transpose()
}

/// A page of the listing ([`crate::store::query::list_sql`]).
pub(super) async fn list(conn: &mut SqliteConnection, q: &JobQuery) -> StoreResult<Vec<JobRecord>> {
    let (sql, params) = list_sql(q, |n| format!("?{n}"));
    // Built from fixed fragments; every value is a bound parameter.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for p in params {
        query = match p {
            Param::Text(t) => query.bind(t),
            Param::Int(n) => query.bind(n),
            Param::Ids(doc) => query.bind(doc),
        };
    }
    let rows = query.fetch_all(conn).await?;
    rows.iter().map(record_of).collect()
}

impl Row for SqliteRow {
    fn int(&self, col: &str) -> StoreResult<Option<i64>> {
        Ok(self.try_get(col)?)
    }
    fn text(&self, col: &str) -> StoreResult<Option<String>> {
        Ok(self.try_get(col)?)
    }
}

impl Row for rusqlite::Row<'_> {
    fn int(&self, col: &str) -> StoreResult<Option<i64>> {
        Ok(self.get(col)?)
    }
    fn text(&self, col: &str) -> StoreResult<Option<String>> {
        Ok(self.get(col)?)
    }
}

//! The writer's transaction: begun with its first statement, its collected
//! events written in order, committed once.

use std::collections::HashSet;
use std::time::Instant;

use rusqlite::{Connection, OptionalExtension as _};

use super::events::{EVENTS_INSERT, Events, events_doc};
use super::known::Ids;
use crate::store::StoreResult;
use crate::store::counts::Moves;
use crate::store::history::Name;
use crate::telemetry;

/// The writer's transaction: `BEGIN IMMEDIATE` with its first statement.
pub(super) struct Tx<'c> {
    pub(super) conn: &'c Connection,
    pub(super) ids: &'c mut Ids,
    /// Types with no ready job, which claims skip (see [`Known`]).
    pub(super) empty: HashSet<String>,
    /// Types a claim of this batch found without another ready job, and
    /// whether nothing later in the batch can have readied more.
    pub(super) found_empty: Vec<(String, bool)>,
    /// Claims from now on come after every change of the batch.
    pub(super) last_phase: bool,
    /// What the batch changed in the counts.
    pub(super) moves: Moves,
    pub(super) begun: bool,
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
    pub(super) fn new(conn: &'c Connection, ids: &'c mut Ids, empty: HashSet<String>) -> Self {
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
    pub(super) fn conn(&mut self) -> StoreResult<&'c Connection> {
        if !self.begun {
            self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
            self.begun = true;
        }
        Ok(self.conn)
    }

    /// The id of a history name: known, found, or added in this
    /// transaction.
    pub(super) fn name_id(&mut self, name: Name) -> StoreResult<i64> {
        if let Some(id) = self.ids.names.get(&name) {
            return Ok(id);
        }
        let conn = self.conn()?;
        let found: Option<i64> = conn
            .prepare_cached(name.select_sql())?
            .query_row([name.text()], |r| r.get(0))
            .optional()?;
        let id = match found {
            Some(id) => id,
            None => conn
                .prepare_cached(name.insert_sql())?
                .query_row([name.text()], |r| r.get(0))?,
        };
        self.ids.names.add(name, id);
        Ok(id)
    }

    /// Writes the events collected so far, so that events written by
    /// statements after this one follow them in each job's history.
    pub(super) fn write_events(&mut self, events: &mut Events) -> StoreResult<()> {
        if !events.is_empty() {
            let doc = events_doc(events)?;
            events.clear();
            self.conn()?.prepare_cached(EVENTS_INSERT)?.execute([doc])?;
        }
        Ok(())
    }

    /// Writes the events left and commits.
    pub(super) fn commit(mut self, events: &mut Events) -> StoreResult<()> {
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

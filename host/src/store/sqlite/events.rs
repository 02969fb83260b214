//! History rows: the ones a batch collects and writes in one statement.

use crate::clock::Timestamp;
use crate::job::{JobId, JobState};
use crate::store::history::{API_ACTOR, Actor};
use crate::store::{StoreError, StoreResult};

/// One history row. The commands of a batch collect theirs and the batch
/// writes them all in one statement just before it commits.
pub(super) struct Event {
    pub(super) job_id: JobId,
    pub(super) at: Timestamp,
    pub(super) from: Option<JobState>,
    pub(super) to: JobState,
    pub(super) attempt: i64,
    /// One of the host's own actors (the rarer transitions are never a
    /// plugin's, so they name no plugin version).
    pub(super) actor: Actor,
    pub(super) reason: Option<String>,
}

impl Event {
    pub(super) fn enqueued(job_id: JobId, at: Timestamp, state: JobState) -> Event {
        Event {
            job_id,
            at,
            from: None,
            to: state,
            attempt: 0,
            actor: API_ACTOR,
            reason: Some("enqueued".into()),
        }
    }
}

pub(super) type Events = Vec<Event>;

/// Collected events, in one statement, in order. (The hot transitions,
/// enqueue, claim and completion, and the bulk replay write theirs from the
/// jobs' own rows instead: [`ENQUEUED_EVENTS`], [`CLAIM_WITH_EVENTS`],
/// [`COMPLETION_EVENTS`], `upkeep::replay_dead`.)
///
/// Bulk rows travel as one JSON array of arrays, read with `jsonb_each`:
/// the `value` of each row is then JSONB, which `->>` reads as it is, where
/// `json_each` would render every row back to JSON text for `->>` to parse
/// again.
pub(super) const EVENTS_INSERT: &str =
    "INSERT OR FAIL INTO job_events (job_id, at, from_state, to_state, attempt, actor_id, reason)
     SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6
     FROM jsonb_each(?)";

/// The rows for [`EVENTS_INSERT`].
pub(super) fn events_doc(events: &Events) -> StoreResult<String> {
    let rows: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.job_id,
                e.at.as_micros(),
                e.from.map(JobState::as_str),
                e.to.as_str(),
                e.attempt,
                e.actor.id,
                &e.reason,
            )
        })
        .collect();
    serde_json::to_string(&rows).map_err(|e| StoreError::Backend(e.to_string()))
}

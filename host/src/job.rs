//! The job vocabulary: ids, the closed set of states, and the transitions
//! between them. The store enforces the same states with a CHECK constraint
//! and performs each transition in one fenced statement; this module is the
//! map of which role may move a job out of each state.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::clock::Timestamp;

/// A job's id: assigned by the store, unique within it, never reused.
pub type JobId = i64;

/// Where a job is in its life. Each state says which role moves a job out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Ready to run now. Left by a worker's claim (→ running) or an
    /// operator's cancel.
    Queued,
    /// Waiting for `run_at`: a delayed job or one awaiting a retry. Left by the
    /// promoter when due (→ queued) or an operator's cancel.
    Scheduled,
    /// Leased to a worker. Left only by the holder of the current lease
    /// (→ succeeded | scheduled | dead, or → queued when it releases the lease
    /// at shutdown) or by the reaper once the lease has expired
    /// (→ queued, or → dead if no attempts remain).
    Running,
    /// Finished: the handler returned success. Final.
    Succeeded,
    /// The dead-letter queue: attempts exhausted or a fatal failure. Left only
    /// by an operator's replay (→ queued with a fresh attempt budget).
    Dead,
    /// Withdrawn by an operator before it ran. Final.
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Scheduled,
        JobState::Running,
        JobState::Succeeded,
        JobState::Dead,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown job state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for JobState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// Every way a job changes state. The store implements each one as a single
/// conditional statement whose WHERE clause is [`Transition::from_states`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// api: a new job, ready now (→ queued) or delayed (→ scheduled).
    Enqueue,
    /// worker: queued → running, taking a fenced lease.
    Claim,
    /// lease holder: the handler succeeded.
    Succeed,
    /// lease holder: a retryable failure with attempts left.
    Retry,
    /// lease holder: a fatal failure, or the last attempt failed.
    Fail,
    /// lease holder at shutdown: gives the job back without spending the attempt.
    Release,
    /// reaper: the lease expired with attempts left.
    ReapRequeue,
    /// reaper: the lease expired on the last attempt.
    ReapDead,
    /// promoter: a scheduled job is due.
    Promote,
    /// operator: a dead job runs again with a fresh attempt budget.
    Replay,
    /// operator: withdraws a job that has not finished. A running job's
    /// lease goes with it, so its attempt's outcome is fenced out.
    Cancel,
}

impl Transition {
    pub const ALL: [Transition; 11] = [
        Transition::Enqueue,
        Transition::Claim,
        Transition::Succeed,
        Transition::Retry,
        Transition::Fail,
        Transition::Release,
        Transition::ReapRequeue,
        Transition::ReapDead,
        Transition::Promote,
        Transition::Replay,
        Transition::Cancel,
    ];

    /// The states a job must be in for this transition to apply (empty for
    /// `Enqueue`, which creates the job).
    pub fn from_states(self) -> &'static [JobState] {
        use JobState::*;
        match self {
            Transition::Enqueue => &[],
            Transition::Claim => &[Queued],
            Transition::Succeed
            | Transition::Retry
            | Transition::Fail
            | Transition::Release
            | Transition::ReapRequeue
            | Transition::ReapDead => &[Running],
            Transition::Promote => &[Scheduled],
            Transition::Replay => &[Dead],
            Transition::Cancel => &[Queued, Scheduled, Running],
        }
    }

    /// The states this transition can lead to.
    pub fn to_states(self) -> &'static [JobState] {
        use JobState::*;
        match self {
            Transition::Enqueue => &[Queued, Scheduled],
            Transition::Claim => &[Running],
            Transition::Succeed => &[Succeeded],
            Transition::Retry => &[Scheduled],
            Transition::Fail | Transition::ReapDead => &[Dead],
            Transition::Release | Transition::ReapRequeue | Transition::Promote => &[Queued],
            Transition::Replay => &[Queued],
            Transition::Cancel => &[Cancelled],
        }
    }

    /// Whether a job may go from `from` to `to` at all, by any transition.
    pub fn is_legal(from: JobState, to: JobState) -> bool {
        Transition::ALL
            .iter()
            .any(|t| t.from_states().contains(&from) && t.to_states().contains(&to))
    }
}

/// A job as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    pub job_type: String,
    pub state: JobState,
    pub payload: String,
    pub idempotency_key: Option<String>,
    /// Attempts started so far (the running one included).
    pub attempt: u32,
    pub max_attempts: u32,
    /// When the job is next due (queued/scheduled), or was last made due.
    pub run_at: Timestamp,
    pub last_error: Option<String>,
    pub result: Option<String>,
    pub plugin_digest: Option<String>,
    pub lease_expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// When the latest attempt started: when it was leased while it runs,
    /// when it actually began running once it has finished.
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// How far the latest attempt got (0-100), as its plugin last reported.
    pub progress: Option<u8>,
    /// Higher is claimed first.
    pub priority: i16,
    /// Its own deadline per attempt, if it set one.
    pub timeout_ms: Option<u32>,
}

/// One entry of a job's append-only history.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    pub at: Timestamp,
    pub from: Option<JobState>,
    pub to: JobState,
    pub attempt: u32,
    /// Who moved it: `api`, `worker:<owner>`, `reaper`, `promoter`, `admin`.
    pub actor: String,
    pub reason: Option<String>,
    pub plugin_digest: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobState::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
        }
        assert!("finished".parse::<JobState>().is_err());
    }

    #[test]
    fn every_legal_transition_is_listed_and_nothing_else() {
        let legal = [
            (Queued, Running),
            (Queued, Cancelled),
            (Scheduled, Queued),
            (Scheduled, Cancelled),
            (Running, Succeeded),
            (Running, Scheduled),
            (Running, Dead),
            (Running, Queued),
            (Running, Cancelled),
            (Dead, Queued),
        ];
        for from in JobState::ALL {
            for to in JobState::ALL {
                assert_eq!(
                    Transition::is_legal(from, to),
                    legal.contains(&(from, to)),
                    "{from} → {to}"
                );
            }
        }
    }

    #[test]
    fn final_states_have_no_way_out_but_replay() {
        for from in [Succeeded, Cancelled] {
            assert!(
                JobState::ALL
                    .iter()
                    .all(|&to| !Transition::is_legal(from, to))
            );
        }
        let out_of_dead: Vec<_> = JobState::ALL
            .into_iter()
            .filter(|&to| Transition::is_legal(Dead, to))
            .collect();
        assert_eq!(out_of_dead, vec![Queued]);
    }

    #[test]
    fn only_the_lease_holder_the_reaper_and_a_cancel_leave_running() {
        let leaving_running: Vec<_> = Transition::ALL
            .into_iter()
            .filter(|t| t.from_states().contains(&Running))
            .collect();
        assert_eq!(
            leaving_running,
            vec![
                Transition::Succeed,
                Transition::Retry,
                Transition::Fail,
                Transition::Release,
                Transition::ReapRequeue,
                Transition::ReapDead,
                Transition::Cancel,
            ]
        );
    }
}

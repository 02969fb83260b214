//! Jobs per type and state, kept in memory by a backend that sees every
//! change (the embedded store's single writer), so counting (the admin API,
//! the queue-depth gauges, a dashboard polling them) never scans the jobs
//! table. Counted once at start-up, then moved by each committed batch.
//!
//! Backend-neutral: a backend supplies the start-up count and the moves of
//! each batch it commits. A backend shared by many hosts cannot keep them
//! (another host's commits are not seen here) and counts in the database.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::StateCounts;
use crate::job::JobState;

#[derive(Clone, Default)]
pub(crate) struct Counts(Arc<Mutex<BTreeMap<String, StateCounts>>>);

/// One batch's changes to [`Counts`]: `n` jobs of a type moved from a state
/// (none for a new job) to another (none for a deleted job).
pub(crate) type Moves = Vec<(String, Option<JobState>, Option<JobState>, u64)>;

/// Adds a move to `moves`, merged with a like one.
pub(crate) fn moved(
    moves: &mut Moves,
    job_type: &str,
    from: Option<JobState>,
    to: JobState,
    n: u64,
) {
    change(moves, job_type, from, Some(to), n);
}

/// Adds `n` deleted jobs of a type in `state` to `moves`.
pub(crate) fn removed(moves: &mut Moves, job_type: &str, state: JobState, n: u64) {
    change(moves, job_type, Some(state), None, n);
}

fn change(moves: &mut Moves, job_type: &str, from: Option<JobState>, to: Option<JobState>, n: u64) {
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
    /// Counts from `(type, state, n)` rows, as a start-up count gives them.
    pub(crate) fn from_rows(rows: impl IntoIterator<Item = (String, JobState, u64)>) -> Counts {
        let counts = Counts::default();
        {
            let mut all = counts.0.lock().expect("counts lock");
            for (job_type, state, n) in rows {
                all.entry(job_type).or_default().add(state, n);
            }
        }
        counts
    }

    /// Applies a committed batch's moves.
    pub(crate) fn apply(&self, moves: &Moves) {
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
            if let Some(to) = to {
                counts.add(*to, *n);
            }
        }
    }

    /// Jobs per state, over all types.
    pub(crate) fn total(&self) -> StateCounts {
        self.0.lock().expect("counts lock").values().sum()
    }

    /// Jobs per state, per type, sorted by type.
    pub(crate) fn by_type(&self) -> Vec<(String, StateCounts)> {
        let all = self.0.lock().expect("counts lock");
        all.iter().map(|(t, c)| (t.clone(), c.clone())).collect()
    }
}

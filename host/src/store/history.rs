//! Who writes a job's history, and what the transitions outside the hot
//! path say: the same on every backend.
//!
//! A history row names its actor and its plugin version by a small id
//! (tables `event_actors` and `event_digests`): a job writes three rows,
//! and spelling out the 64-character digest and the worker's name in each
//! made them about three times the size of everything else they hold. The
//! host's own actors have fixed ids, written by the migration that made the
//! table; a worker's (`worker:<owner>`) and each plugin version's are added
//! on first use and never change or go away. Reads join the names back, so
//! the API shows the same strings as before.

/// One of the host's own actors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Actor {
    /// Its row in `event_actors`, fixed by the migrations.
    pub(crate) id: i64,
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) name: &'static str,
}

/// The API: every enqueue. (The enqueue statements write its id, 1, as a
/// literal.)
pub(crate) const API_ACTOR: Actor = Actor { id: 1, name: "api" };

/// Release at shutdown: the host, not the job, cut the attempt short.
pub(crate) const RELEASE_ACTOR: Actor = Actor {
    id: 2,
    name: "worker",
};
pub(crate) const RELEASE_REASON: &str =
    "released at shutdown before the attempt finished; the attempt is not counted";

/// The reaper. Its reason is the job's new `last_error`, written in SQL:
/// `lease expired: attempt N stopped without reporting an outcome (host
/// crashed or was killed)`.
pub(crate) const REAP_ACTOR: Actor = Actor {
    id: 3,
    name: "reaper",
};

pub(crate) const PROMOTE_ACTOR: Actor = Actor {
    id: 4,
    name: "promoter",
};
pub(crate) const PROMOTE_REASON: &str = "due";

pub(crate) const OPERATOR_ACTOR: Actor = Actor {
    id: 5,
    name: "admin",
};
pub(crate) const REPLAY_REASON: &str =
    "replayed from the dead-letter queue with a fresh attempt budget";
pub(crate) const CANCEL_REASON: &str = "cancelled by an operator";

/// The actor of a worker's claims and completions.
pub(crate) fn worker_actor(owner: &str) -> String {
    format!("worker:{owner}")
}

/// A name interned for the history: a worker's actor or a plugin version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Name {
    Actor(String),
    Digest(String),
}

impl Name {
    /// Its id if it has one (on `$1`, the name; SQLite reads `$1` as the
    /// first parameter too).
    pub(crate) fn select_sql(&self) -> &'static str {
        match self {
            Name::Actor(_) => "SELECT id FROM event_actors WHERE name = $1",
            Name::Digest(_) => "SELECT id FROM event_digests WHERE digest = $1",
        }
    }

    /// Gives it an id (returned), unless another writer just did.
    pub(crate) fn insert_sql(&self) -> &'static str {
        match self {
            Name::Actor(_) => {
                "INSERT INTO event_actors (name) VALUES ($1)
                 ON CONFLICT (name) DO NOTHING RETURNING id"
            }
            Name::Digest(_) => {
                "INSERT INTO event_digests (digest) VALUES ($1)
                 ON CONFLICT (digest) DO NOTHING RETURNING id"
            }
        }
    }

    pub(crate) fn text(&self) -> &str {
        match self {
            Name::Actor(s) | Name::Digest(s) => s,
        }
    }
}

/// A job's history as the API shows it, names joined back (on `$1`, the
/// job's id).
pub(crate) const EVENTS_SQL: &str =
    "SELECT e.at, e.from_state, e.to_state, e.attempt, a.name AS actor, e.reason,
            d.digest AS plugin_digest
     FROM job_events AS e
     JOIN event_actors AS a ON a.id = e.actor_id
     LEFT JOIN event_digests AS d ON d.id = e.digest_id
     WHERE e.job_id = $1 ORDER BY e.id";

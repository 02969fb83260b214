//! What the transitions outside the hot path write into a job's history:
//! the actor and the reason of each, the same on every backend. (The hot
//! transitions write theirs in their statements: `api`/`enqueued` on
//! enqueue, `worker:<owner>` on claim and completion.)

/// Release at shutdown: the host, not the job, cut the attempt short.
pub(crate) const RELEASE_ACTOR: &str = "worker";
pub(crate) const RELEASE_REASON: &str =
    "released at shutdown before the attempt finished; the attempt is not counted";

/// The reaper. Its reason is the job's new `last_error`, written in SQL:
/// `lease expired: attempt N stopped without reporting an outcome (host
/// crashed or was killed)`.
pub(crate) const REAP_ACTOR: &str = "reaper";

pub(crate) const PROMOTE_ACTOR: &str = "promoter";
pub(crate) const PROMOTE_REASON: &str = "due";

pub(crate) const OPERATOR_ACTOR: &str = "admin";
pub(crate) const REPLAY_REASON: &str =
    "replayed from the dead-letter queue with a fresh attempt budget";
pub(crate) const CANCEL_REASON: &str = "cancelled by an operator";

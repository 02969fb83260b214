-- jobhost embedded store, version 1: jobs and their event history.
-- Times are microseconds since the Unix epoch (INTEGER).

CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY,
    job_type         TEXT    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN
                         ('queued', 'scheduled', 'running', 'succeeded', 'dead', 'cancelled')),
    payload          TEXT    NOT NULL,
    idempotency_key  TEXT,
    attempt          INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
    run_at           INTEGER NOT NULL,
    last_error       TEXT,
    result           TEXT,
    plugin_digest    TEXT,
    lease_owner      TEXT,
    lease_token      INTEGER,
    lease_expires_at INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    -- A running job always has a lease; no other job has one.
    CHECK ((state = 'running') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL))
);

-- An idempotency key names at most one job per type.
CREATE UNIQUE INDEX jobs_idempotency ON jobs (job_type, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- The claim: oldest due first, per type.
CREATE INDEX jobs_ready ON jobs (job_type, run_at, id) WHERE state = 'queued';
-- The promoter.
CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE state = 'scheduled';
-- The reaper.
CREATE INDEX jobs_leased ON jobs (lease_expires_at) WHERE state = 'running';

-- Append-only: every transition of every job.
CREATE TABLE job_events (
    id            INTEGER PRIMARY KEY,
    job_id        INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at            INTEGER NOT NULL,
    from_state    TEXT,
    to_state      TEXT    NOT NULL,
    attempt       INTEGER NOT NULL,
    actor         TEXT    NOT NULL,
    reason        TEXT,
    plugin_digest TEXT
);

CREATE INDEX job_events_by_job ON job_events (job_id, id);

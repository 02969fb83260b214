-- jobhost scale-out store, version 1: jobs and their event history.
-- The same shape as migrations/sqlite/0001_jobs.sql, so both backends pass
-- one contract suite. Times are microseconds since the Unix epoch (BIGINT),
-- as on SQLite: the store never reads the clock, the host passes `now`.

CREATE TABLE jobs (
    id               BIGSERIAL PRIMARY KEY,
    job_type         TEXT   NOT NULL,
    state            TEXT   NOT NULL CHECK (state IN
                         ('queued', 'scheduled', 'running', 'succeeded', 'dead', 'cancelled')),
    -- Kept as the client sent it (JSONB would reorder keys and drop duplicates).
    payload          TEXT   NOT NULL,
    idempotency_key  TEXT,
    attempt          BIGINT NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     BIGINT NOT NULL CHECK (max_attempts >= 1),
    run_at           BIGINT NOT NULL,
    last_error       TEXT,
    result           TEXT,
    plugin_digest    TEXT,
    lease_owner      TEXT,
    lease_token      BIGINT,
    lease_expires_at BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
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

-- Append-only: every transition of every job. A job's history is ordered by
-- id: each of its events is written after the one before it committed, and
-- the sequence is not cached per session, so its ids only grow.
CREATE TABLE job_events (
    id            BIGSERIAL PRIMARY KEY,
    job_id        BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at            BIGINT NOT NULL,
    from_state    TEXT,
    to_state      TEXT   NOT NULL,
    attempt       BIGINT NOT NULL,
    actor         TEXT   NOT NULL,
    reason        TEXT,
    plugin_digest TEXT
);

CREATE INDEX job_events_by_job ON job_events (job_id, id);

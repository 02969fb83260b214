-- jobhost scale-out store, version 9: submit options that outlive the
-- submission (as migrations/sqlite/0007_job_priority_timeout.sql).
-- - priority: higher is claimed first, FIFO (by when it became due, then
--   id) within a priority. -100 to 100, 0 by default; the API checks the
--   range.
-- - timeout_ms: the job's own deadline per attempt, when it asked for one
--   shorter than its plugin's (the worker takes the smaller of the two).
-- BIGINT like every other integer here, so both backends read rows one way.
-- Adding a column with a constant default rewrites nothing (PostgreSQL 11+);
-- timeout_ms has no CHECK (the API checks it), which would scan the table
-- under the migration's lock. Rebuilding jobs_ready does read the queued
-- jobs under that lock: on a deep backlog, enqueues and claims wait for it
-- (ARCHITECTURE.md, known limits).
ALTER TABLE jobs ADD COLUMN priority BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN timeout_ms BIGINT;

-- The claim: highest priority first, then oldest due, per type.
DROP INDEX jobs_ready;
CREATE INDEX jobs_ready ON jobs (job_type, priority DESC, run_at, id) WHERE state = 'queued';

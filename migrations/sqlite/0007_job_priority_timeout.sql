-- jobhost embedded store, version 7: submit options that outlive the
-- submission.
-- - priority: higher is claimed first, FIFO (by when it became due, then
--   id) within a priority. -100 to 100, 0 by default; the API checks the
--   range.
-- - timeout_ms: the job's own deadline per attempt, when it asked for one
--   shorter than its plugin's (the worker takes the smaller of the two).
--   The API checks it (1 ms to a day); no CHECK here, which would make the
--   migration read every row of a large table.
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN timeout_ms INTEGER;

-- The claim: highest priority first, then oldest due, per type.
DROP INDEX jobs_ready;
CREATE INDEX jobs_ready ON jobs (job_type, priority DESC, run_at, id) WHERE state = 'queued';

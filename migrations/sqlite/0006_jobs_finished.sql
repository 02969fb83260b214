-- jobhost embedded store, version 6: retention. Finished jobs (succeeded,
-- dead, cancelled: the only ones with a finished_at) by state and age, so
-- the pruner deletes the oldest of a state without scanning the table (the
-- shape River gives its own: state, finalized_at where finalized).
CREATE INDEX jobs_finished ON jobs (state, finished_at) WHERE finished_at IS NOT NULL;

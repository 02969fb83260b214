-- jobhost scale-out store, version 8: retention. Finished jobs (succeeded,
-- dead, cancelled: the only ones with a finished_at) by state and age, so
-- the pruner deletes the oldest of a state without scanning the table (the
-- shape River gives its own: state, finalized_at where finalized). A job's
-- events go with it (ON DELETE CASCADE), and the count triggers see the
-- DELETE like any other statement.
CREATE INDEX jobs_finished ON jobs (state, finished_at) WHERE finished_at IS NOT NULL;

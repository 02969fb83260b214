-- The dead-letter queue by type, newest last: the operator's listing and
-- bulk replay read it without scanning the table. Only dead jobs are in it,
-- so the hot transitions never touch it.
CREATE INDEX jobs_dead ON jobs (job_type, id) WHERE state = 'dead';
-- Cancelled jobs, for the listing (cancelling is rare: nothing hot writes it).
CREATE INDEX jobs_cancelled ON jobs (id) WHERE state = 'cancelled';

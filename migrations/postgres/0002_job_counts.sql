-- jobhost scale-out store, version 2: counts per type and state that cost
-- O(types) to read, not a scan of the jobs table.
--
-- Every statement that inserts, moves or deletes jobs adds its net change per
-- (type, state) to one of 64 shards, chosen by the writing connection: two
-- hosts' transactions seldom touch the same counter row, so they seldom wait
-- for each other's commit. A statement-level trigger with transition tables
-- keeps this in one place for every writer (a batch of 512 completions adds
-- two rows' worth of deltas, not 1,024), and in the writer's transaction, so
-- a count never disagrees with the rows it counts once both are committed.
-- Reading sums at most 64 rows per (type, state).
CREATE TABLE job_counts (
    job_type TEXT     NOT NULL,
    state    TEXT     NOT NULL,
    shard    SMALLINT NOT NULL,
    n        BIGINT   NOT NULL,
    PRIMARY KEY (job_type, state, shard)
);

INSERT INTO job_counts (job_type, state, shard, n)
SELECT job_type, state, 0, COUNT(*) FROM jobs GROUP BY job_type, state;

CREATE FUNCTION job_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO job_counts AS c (job_type, state, shard, n)
        SELECT job_type, state, pg_backend_pid() % 64, COUNT(*)
        FROM new_rows GROUP BY job_type, state
        ON CONFLICT (job_type, state, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO job_counts AS c (job_type, state, shard, n)
        SELECT job_type, state, pg_backend_pid() % 64, SUM(d)
        FROM (SELECT job_type, state, 1 AS d FROM new_rows
              UNION ALL
              SELECT job_type, state, -1 FROM old_rows) moves
        GROUP BY job_type, state HAVING SUM(d) <> 0
        ON CONFLICT (job_type, state, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    ELSE
        INSERT INTO job_counts AS c (job_type, state, shard, n)
        SELECT job_type, state, pg_backend_pid() % 64, -COUNT(*)
        FROM old_rows GROUP BY job_type, state
        ON CONFLICT (job_type, state, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER job_counts_on_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_counts_apply();
CREATE TRIGGER job_counts_on_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_counts_apply();
CREATE TRIGGER job_counts_on_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_counts_apply();

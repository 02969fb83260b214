-- jobhost embedded store, version 8: schedules (cron). Each row is a
-- periodic job: at every tick of `cron` in `timezone`, the scheduler
-- enqueues one job of `job_type` with `payload`, under the idempotency key
-- `schedule:<name>:<tick>`, so a tick makes one job however many hosts fire
-- it. `next_run_at` is the next tick to fire; a host moves it past the tick
-- it fired only if no other host did (a conditional UPDATE).
-- `source` says who defined it: `api`, or `plugin:<name>` for a manifest's.
CREATE TABLE schedules (
    name        TEXT    PRIMARY KEY,
    job_type    TEXT    NOT NULL,
    cron        TEXT    NOT NULL,
    timezone    TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    next_run_at INTEGER NOT NULL,
    last_run_at INTEGER,
    last_job_id INTEGER,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

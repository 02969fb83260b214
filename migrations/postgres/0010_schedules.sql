-- jobhost scale-out store, version 10: schedules (cron), as
-- migrations/sqlite/0008_schedules.sql. Each row is a periodic job: at every
-- tick of `cron` in `timezone`, a host's scheduler enqueues one job of
-- `job_type` with `payload` under the idempotency key
-- `schedule:<name>:<tick>`, so a tick makes one job however many hosts fire
-- it; `next_run_at` moves past a tick only once (a conditional UPDATE).
CREATE TABLE schedules (
    name        TEXT   PRIMARY KEY,
    job_type    TEXT   NOT NULL,
    cron        TEXT   NOT NULL,
    timezone    TEXT   NOT NULL,
    payload     TEXT   NOT NULL,
    source      TEXT   NOT NULL,
    next_run_at BIGINT NOT NULL,
    last_run_at BIGINT,
    last_job_id BIGINT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- Job types an operator paused: not claimed by any host until resumed.
CREATE TABLE queue_pauses (
    job_type  TEXT    PRIMARY KEY,
    paused_at INTEGER NOT NULL
);

-- jobhost embedded store, version 9: a leaner history row. Each event named
-- its actor and plugin version in full (the digest alone is 64 characters);
-- now it holds their ids, and each name is stored once. The host's own
-- actors have fixed ids (`store/history.rs`); workers' names and plugin
-- versions get theirs on first use. Names are never changed or deleted.

CREATE TABLE event_actors (
    id    INTEGER PRIMARY KEY,
    name  TEXT    NOT NULL UNIQUE
);
INSERT INTO event_actors (id, name) VALUES
    (1, 'api'), (2, 'worker'), (3, 'reaper'), (4, 'promoter'), (5, 'admin');
INSERT OR IGNORE INTO event_actors (name)
    SELECT DISTINCT actor FROM job_events ORDER BY actor;

CREATE TABLE event_digests (
    id      INTEGER PRIMARY KEY,
    digest  TEXT    NOT NULL UNIQUE
);
INSERT INTO event_digests (digest)
    SELECT DISTINCT plugin_digest FROM job_events WHERE plugin_digest IS NOT NULL
    ORDER BY plugin_digest;

-- The table rebuilt with the ids (same event ids, so each job's history
-- keeps its order).
CREATE TABLE job_events_v9 (
    id         INTEGER PRIMARY KEY,
    job_id     INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at         INTEGER NOT NULL,
    from_state TEXT,
    to_state   TEXT    NOT NULL,
    attempt    INTEGER NOT NULL,
    actor_id   INTEGER NOT NULL,
    reason     TEXT,
    digest_id  INTEGER
);
INSERT INTO job_events_v9 (id, job_id, at, from_state, to_state, attempt, actor_id, reason, digest_id)
    SELECT e.id, e.job_id, e.at, e.from_state, e.to_state, e.attempt, a.id, e.reason, d.id
    FROM job_events AS e
    JOIN event_actors AS a ON a.name = e.actor
    LEFT JOIN event_digests AS d ON d.digest = e.plugin_digest
    ORDER BY e.id;
DROP TABLE job_events;
ALTER TABLE job_events_v9 RENAME TO job_events;
CREATE INDEX job_events_by_job ON job_events (job_id, id);

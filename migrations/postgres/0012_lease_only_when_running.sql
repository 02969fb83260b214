-- Only a running job has a lease token. The first CHECK ties the state to
-- "token and expiry both set" and lets a finished job keep a token without
-- an expiry; this one closes that, so that the lease token alone fences a
-- running job's transitions (they find it by id and token, and leave the
-- state out to stay on the primary key: see store/postgres/complete.rs).
ALTER TABLE jobs ADD CONSTRAINT jobs_lease_only_when_running
    CHECK (lease_token IS NULL OR state = 'running') NOT VALID;
ALTER TABLE jobs VALIDATE CONSTRAINT jobs_lease_only_when_running;

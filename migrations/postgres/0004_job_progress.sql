-- jobhost scale-out store, version 4: how far the running attempt has got
-- (0-100, from the `progress` host import); NULL until it reports, and
-- cleared when an attempt starts. Adding a nullable column rewrites nothing.
ALTER TABLE jobs ADD COLUMN progress BIGINT;

-- jobhost embedded store, version 3: how far the running attempt has got
-- (0-100, from the `progress` host import); NULL until it reports, and
-- cleared when an attempt starts.
ALTER TABLE jobs ADD COLUMN progress INTEGER;

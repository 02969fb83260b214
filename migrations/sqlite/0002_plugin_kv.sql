-- jobhost embedded store, version 2: each plugin's durable key-value store
-- (the `kv` host import). `scope` is the plugin's job type: a plugin reads
-- and writes only its own keys.
CREATE TABLE plugin_kv (
    scope      TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    value      BLOB    NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;

-- jobhost scale-out store, version 5: the plugin catalog. Plugins uploaded
-- through the admin API are kept here so that every host converges on them
-- (each host follows the catalog into its own plugins directory).
-- `plugin_blobs` holds each .wasm once, by digest; `plugins` names the
-- version each job type runs (digest NULL: deleted), numbered from one
-- sequence so that newer is greater across all types.
CREATE TABLE plugin_blobs (
    digest   TEXT  PRIMARY KEY,
    wasm     BYTEA NOT NULL
);

CREATE SEQUENCE plugin_versions;

CREATE TABLE plugins (
    job_type    TEXT   PRIMARY KEY,
    digest      TEXT   REFERENCES plugin_blobs (digest),
    manifest    TEXT,
    version     BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

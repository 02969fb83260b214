//! Helpers shared by the library's own tests.

use std::path::PathBuf;

use crate::store::sqlite::{Durability, SqliteStore};

/// Where `cargo xtask plugins` lays out the compiled plugins.
pub fn plugins_dir() -> PathBuf {
    std::env::var_os("JOBHOST_TEST_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/jobhost-plugins")
        })
}

/// The bytes of a compiled plugin (`examples/NAME.wasm` or `testing/NAME.wasm`).
pub fn plugin_wasm(group: &str, name: &str) -> Vec<u8> {
    let path = plugins_dir().join(group).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. The tests need the compiled plugins: run `cargo xtask test` (or `cargo xtask plugins` first)",
            path.display()
        )
    })
}

/// A fresh SQLite store in its own temporary directory (kept alive by the guard).
pub async fn sqlite_store() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("creating a temp dir");
    let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let store = SqliteStore::open(&url, Durability::Full)
        .await
        .expect("opening sqlite store");
    (store, dir)
}

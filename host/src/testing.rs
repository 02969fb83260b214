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

/// A database of its own on the test PostgreSQL server, for one test:
/// created empty, dropped (with its connections) when the guard goes.
///
/// The server is `JOBHOST_TEST_DATABASE_URL`. `cargo xtask test` sets it
/// (to the local server unless given) and leaves the PostgreSQL tests out,
/// saying so, only when the server is unreachable outside CI; run directly
/// without it, these tests fail with a message saying what to set.
pub struct TestDb {
    pub url: String,
    admin_url: String,
    name: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        use sqlx::Connection;
        let admin_url = std::env::var("JOBHOST_TEST_DATABASE_URL").unwrap_or_else(|_| {
            panic!(
                "JOBHOST_TEST_DATABASE_URL is not set: the PostgreSQL tests need a server \
                 (e.g. postgres://postgres@127.0.0.1:5432/postgres); `cargo xtask test` sets it"
            )
        });
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "jobhost_test_{}_{}_{:08x}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            rand::random::<u32>()
        );
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {admin_url}: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        let _ = admin.close().await;
        TestDb {
            url: with_database(&admin_url, &name),
            admin_url,
            name,
        }
    }
}

/// `url` naming database `name` instead of its own.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let base = match base[after_scheme..].find('/') {
        Some(slash) => &base[..after_scheme + slash],
        None => base,
    };
    format!("{base}/{name}{query}")
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot block on
        // another: a thread of its own with a runtime of its own.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for dropping the test database")
                .block_on(async move {
                    use sqlx::Connection;
                    let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await?;
                    admin.close().await
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// A fresh PostgreSQL store in a database of its own (dropped by the guard).
pub async fn postgres_store() -> (crate::store::postgres::PgStore, TestDb) {
    let db = TestDb::create().await;
    let store = crate::store::postgres::PgStore::open(&db.url, Default::default())
        .await
        .unwrap_or_else(|e| panic!("opening the PostgreSQL store at {}: {e}", db.url));
    (store, db)
}

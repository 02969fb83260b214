//! `jobhost serve` configuration: flags, each also read from a `JOBHOST_*`
//! variable. Parsed and checked once, at start-up; errors name the flag.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::store::sqlite::Durability;

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on (port 0 picks a free port; the banner prints it).
    #[arg(long, env = "JOBHOST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory for the database, the admin token and the compiled-plugin cache.
    #[arg(long, env = "JOBHOST_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Store URL: `sqlite://PATH` (embedded, one host) or
    /// `postgres://USER@HOST:PORT/DB` (shared by any number of hosts).
    /// Default: `sqlite://<data-dir>/jobhost.db`.
    #[arg(long, env = "JOBHOST_DATABASE_URL")]
    pub database_url: Option<String>,

    /// PostgreSQL only: connections this host opens at most (at least 6:
    /// two committers, the LISTEN connection, reads, claims).
    #[arg(long, env = "JOBHOST_PG_MAX_CONNECTIONS", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(6..=1000))]
    pub pg_max_connections: u32,

    /// Redis for dispatch between hosts (`redis://HOST:PORT[/DB]`); needs a
    /// `postgres://` store. Optional: without it hosts hear each other
    /// through PostgreSQL's LISTEN/NOTIFY.
    #[arg(long, env = "JOBHOST_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// The prefix of every Redis key of this deployment (letters, digits,
    /// `_`, `-`, `.`, `:`; 1 to 64 bytes).
    #[arg(long, env = "JOBHOST_REDIS_PREFIX", default_value = "jobhost",
          value_parser = parse_redis_prefix)]
    pub redis_prefix: String,

    /// Redis: how long, in ms, a hint read by a host that neither acts on
    /// nor acknowledges it (it died, or is paused) waits before another
    /// host takes it over.
    #[arg(long, env = "JOBHOST_REDIS_TAKEOVER_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub redis_takeover_ms: u64,

    /// PostgreSQL only: how long a request waits for a database connection,
    /// in ms, before it fails with 503 `store_unavailable` (while the
    /// database is unreachable).
    #[arg(long, env = "JOBHOST_PG_ACQUIRE_TIMEOUT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub pg_acquire_timeout_ms: u64,

    /// Directory of plugins: `NAME.wasm` handles job type NAME, with an
    /// optional `NAME.toml` manifest. Default: `<data-dir>/plugins`.
    #[arg(long, env = "JOBHOST_PLUGINS")]
    pub plugins: Option<PathBuf>,

    /// Admin token. Default: generated on first start and kept in
    /// `<data-dir>/admin-token`.
    #[arg(long, env = "JOBHOST_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Attempts in flight at once on this host.
    #[arg(long, env = "JOBHOST_CONCURRENCY", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,

    /// Most jobs leased per claim.
    #[arg(long, env = "JOBHOST_CLAIM_BATCH", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub claim_batch: u32,

    /// How long a lease outlives its attempt's deadline, in ms. After a crash,
    /// a job waits at most its plugin's timeout plus this before it reruns.
    #[arg(long, env = "JOBHOST_LEASE_GRACE_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub lease_grace_ms: u64,

    /// Workers look for jobs at least this often, in ms, even without a hint.
    #[arg(long, env = "JOBHOST_POLL_INTERVAL_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub poll_interval_ms: u64,

    /// How often the reaper looks for expired leases, in ms.
    #[arg(long, env = "JOBHOST_REAP_INTERVAL_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub reap_interval_ms: u64,

    /// How long a succeeded job is kept after it finished (`90s`, `30m`,
    /// `24h`, `7d`; `forever` keeps every one). The pruner deletes older
    /// ones, with their history, in small batches.
    #[arg(long, env = "JOBHOST_RETAIN_SUCCEEDED", default_value = "24h",
          value_parser = parse_retention)]
    pub retain_succeeded: Retention,

    /// How long a dead job (the dead-letter queue) is kept after it died.
    #[arg(long, env = "JOBHOST_RETAIN_DEAD", default_value = "7d",
          value_parser = parse_retention)]
    pub retain_dead: Retention,

    /// How long a cancelled job is kept after it was cancelled.
    #[arg(long, env = "JOBHOST_RETAIN_CANCELLED", default_value = "7d",
          value_parser = parse_retention)]
    pub retain_cancelled: Retention,

    /// How often the pruner looks for jobs past their retention, in ms.
    #[arg(long, env = "JOBHOST_PRUNE_INTERVAL_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(10..=86_400_000))]
    pub prune_interval_ms: u64,

    /// On SIGTERM/SIGINT, how long running attempts may take to finish, in ms,
    /// before they are stopped and their jobs returned to the queue.
    #[arg(long, env = "JOBHOST_SHUTDOWN_GRACE_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub shutdown_grace_ms: u64,

    /// Largest request body, in bytes.
    #[arg(long, env = "JOBHOST_BODY_LIMIT", default_value_t = 1 << 20,
          value_parser = clap::value_parser!(u64).range(1..=(64 << 20)))]
    pub body_limit: u64,

    /// Largest memory any plugin may be granted, in MiB.
    #[arg(long, env = "JOBHOST_MAX_PLUGIN_MEMORY_MB", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_plugin_memory_mb: u64,

    /// Start with workers paused: jobs are accepted but none is claimed
    /// until `POST /admin/workers/resume`.
    #[arg(long, env = "JOBHOST_PAUSED")]
    pub paused: bool,

    /// SQLite durability: `full` syncs every commit (survives power loss);
    /// `normal` survives a crash of jobhost but may lose the last commits on
    /// power loss.
    #[arg(long, env = "JOBHOST_SQLITE_SYNC", value_enum, default_value_t = Durability::Full)]
    pub sqlite_sync: Durability,
}

/// How long finished jobs of one state are kept: `None` is forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention(pub Option<std::time::Duration>);

fn parse_retention(s: &str) -> Result<Retention, String> {
    if s == "forever" {
        return Ok(Retention(None));
    }
    let keep = humantime::parse_duration(s)
        .map_err(|e| format!("{e}: give a duration such as 24h, 7d or 90m, or `forever`"))?;
    if keep.is_zero() {
        return Err("a retention of 0 would delete jobs as they finish; give at least 1s".into());
    }
    Ok(Retention(Some(keep)))
}

fn parse_redis_prefix(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("1 to 64 letters, digits, `_`, `-`, `.` or `:`".to_owned())
    }
}

impl ServeConfig {
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("jobhost.db").display()))
    }

    pub fn plugins_dir(&self) -> PathBuf {
        self.plugins
            .clone()
            .unwrap_or_else(|| self.data_dir.join("plugins"))
    }
}

//! The jobhost under test: the real release binary on a fresh data directory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sqlx::Row;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, SqliteConnection};

pub const TOKEN: &str = "bench-admin-token-0123456789";

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub data: PathBuf,
    /// The PostgreSQL database the server uses, if not its SQLite file.
    pub database: Option<String>,
    /// The flags that put more hosts on the same database and Redis keys.
    pub shared: Vec<String>,
}

/// One job as the store recorded it.
pub struct JobRow {
    pub id: i64,
    pub state: String,
    pub attempt: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl Server {
    pub fn start(
        bin: &Path,
        plugins: &Path,
        data: &Path,
        args: &[String],
        database: Option<String>,
    ) -> Result<Server> {
        if data.exists() {
            std::fs::remove_dir_all(data)
                .with_context(|| format!("clearing {}", data.display()))?;
        }
        std::fs::create_dir_all(data)?;
        Server::spawn(bin, plugins, data, args, database)
    }

    /// Starts jobhost on a data directory (and database) as it is.
    pub fn spawn(
        bin: &Path,
        plugins: &Path,
        data: &Path,
        args: &[String],
        database: Option<String>,
    ) -> Result<Server> {
        let mut child = Command::new(bin)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--admin-token", TOKEN])
            .arg("--data-dir")
            .arg(data)
            .arg("--plugins")
            .arg(plugins)
            .args(args)
            .env("JOBHOST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("jobhost listening on http://") {
                        break url.trim().parse()?;
                    }
                }
                _ => bail!("jobhost exited before printing its address"),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(Server {
            child,
            addr,
            data: data.to_owned(),
            database,
            shared: Vec::new(),
        })
    }

    /// The server's peak resident set (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(f64::NAN)
    }

    /// CPU time the server has used so far (user + system, all threads), in
    /// seconds: what a job costs the host, whether or not it waited.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs_of(&self.child.id().to_string())
    }

    /// CPU seconds (user + system) of the server's threads named `name`;
    /// `None` if it has none.
    pub fn thread_cpu_secs(&self, name: &str) -> Option<f64> {
        let pid = self.child.id();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        let named: Vec<f64> = tasks
            .flatten()
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim_end() == name)
            })
            .map(|task| cpu_secs_of(&format!("{pid}/task/{}", task.file_name().display())))
            .collect();
        (!named.is_empty()).then(|| named.iter().sum())
    }

    /// Every job in the store, read straight from the database.
    pub async fn jobs(&self) -> Result<Vec<JobRow>> {
        const JOBS: &str =
            "SELECT id, state, attempt, started_at, finished_at FROM jobs ORDER BY id";
        fn row(r: &impl JobColumns) -> Result<JobRow> {
            Ok(JobRow {
                id: r.int("id")?.context("id")?,
                state: r.text("state")?,
                attempt: r.int("attempt")?.context("attempt")?,
                started_at: r.int("started_at")?,
                finished_at: r.int("finished_at")?,
            })
        }
        if let Some(url) = &self.database {
            let mut conn = PgConnection::connect(url).await?;
            let rows = sqlx::query(JOBS).fetch_all(&mut conn).await?;
            return rows.iter().map(row).collect();
        }
        let mut conn: SqliteConnection = SqliteConnectOptions::new()
            .filename(self.data.join("jobhost.db"))
            .read_only(true)
            .connect()
            .await?;
        let rows = sqlx::query(JOBS).fetch_all(&mut conn).await?;
        rows.iter().map(row).collect()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> Result<()> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::ensure!(status.success(), "jobhost exited with {status}");
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("jobhost did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A row of either database.
trait JobColumns {
    fn int(&self, col: &str) -> Result<Option<i64>>;
    fn text(&self, col: &str) -> Result<String>;
}

impl JobColumns for sqlx::sqlite::SqliteRow {
    fn int(&self, col: &str) -> Result<Option<i64>> {
        Ok(self.try_get(col)?)
    }
    fn text(&self, col: &str) -> Result<String> {
        Ok(self.try_get(col)?)
    }
}

impl JobColumns for sqlx::postgres::PgRow {
    fn int(&self, col: &str) -> Result<Option<i64>> {
        Ok(self.try_get(col)?)
    }
    fn text(&self, col: &str) -> Result<String> {
        Ok(self.try_get(col)?)
    }
}

/// Creates an empty database for `scenario` on the server `url` names
/// (dropping the previous run's) and returns its URL.
pub async fn fresh_database(url: &str, scenario: &str) -> Result<String> {
    let name = format!("jobhost_bench_{}", scenario.replace('-', "_"));
    let mut admin = PgConnection::connect(url)
        .await
        .with_context(|| format!("connecting to {url} (--database-url)"))?;
    for statement in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut admin)
            .await?;
    }
    // Every PostgreSQL figure depends on it: without autovacuum the dead
    // rows of every transition stay in the tables and indexes for the run.
    let autovacuum: String = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(&mut admin)
        .await?;
    println!("  PostgreSQL autovacuum: {autovacuum}");
    let server = url
        .split('?')
        .next()
        .and_then(|u| u.rsplit_once('/'))
        .map(|(server, _)| server)
        .filter(|s| s.contains("://") && !s.ends_with('/'))
        .with_context(|| format!("--database-url must name a database: {url}"))?;
    Ok(format!("{server}/{name}"))
}

/// Deletes the keys a previous run of `scenario` left under its prefix on
/// the Redis server `url` names, and returns the prefix.
pub async fn fresh_redis_prefix(url: &str, scenario: &str) -> Result<String> {
    let prefix = format!("jobhost-bench-{scenario}");
    let mut conn = redis::Client::open(url)
        .with_context(|| format!("--redis-url {url}"))?
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to {url} (--redis-url)"))?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await?;
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(&keys)
            .query_async::<()>(&mut conn)
            .await?;
    }
    Ok(prefix)
}

/// Checks that the store holds exactly the submitted jobs, each succeeded
/// on its first attempt. A fast figure must not hide a lost job.
pub fn verify(submitted: &[i64], rows: &[JobRow]) -> Result<String> {
    let mut want: Vec<i64> = submitted.to_vec();
    want.sort_unstable();
    want.dedup();
    anyhow::ensure!(
        want.len() == submitted.len(),
        "the server handed out a job id twice"
    );
    let have: Vec<i64> = rows.iter().map(|r| r.id).collect();
    anyhow::ensure!(
        have == want,
        "the store holds {} jobs, {} were submitted (ids differ)",
        have.len(),
        want.len()
    );
    let not_done: Vec<_> = rows
        .iter()
        .filter(|r| r.state != "succeeded")
        .take(5)
        .map(|r| (r.id, r.state.clone()))
        .collect();
    anyhow::ensure!(not_done.is_empty(), "jobs not succeeded: {not_done:?}");
    let retried = rows.iter().filter(|r| r.attempt != 1).count();
    anyhow::ensure!(retried == 0, "{retried} jobs took more than one attempt");
    Ok(format!(
        "{} of {} jobs succeeded once, ids match",
        rows.len(),
        submitted.len()
    ))
}

/// CPU time (user + system, all threads) a process has used so far, in
/// seconds: `pid` is a process id, or `self` for this one.
pub fn cpu_secs_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may
    // hold spaces): utime and stime are the 12th and 13th, in clock ticks.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: f64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / per_sec
}

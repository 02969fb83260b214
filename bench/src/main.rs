//! jobhost-bench: drives the real `jobhost` binary over HTTP and prints
//! figures. Started by `cargo xtask bench`; never asserts on timings, but
//! fails if any submitted job was lost, duplicated or failed.
//!
//! Scenarios (each with `--quick` for a run under a minute):
//! - `burn-down`: N no-op jobs submitted while workers are paused, then
//!   released; jobs/s from the first attempt start to the last completion.
//! - `latency`: open-loop arrival at fixed rates, one job per request;
//!   submit → attempt-start percentiles (same clock: host timestamps in the
//!   store, load-generator timestamps here).
//! - `submit`: 64 connections posting single jobs as fast as they can.
//! - `batch`: jobs/s through `POST /jobs/{type}/batch` (workers paused).
//! - `seed`: the seed project's k6 shape: ramp to 20 then 40 virtual users,
//!   each posting to /jobs/email_welcome and sleeping 0.2 s (the mails go
//!   to the mail API `cargo xtask bench` serves on 127.0.0.1:8025).
//! - `overhead`: per-attempt host cost split into claim, sandbox and complete,
//!   from the host's own histograms.
//! - `swap`: no-op jobs at 500/s; through the second half a new version of
//!   their plugin is uploaded every 500 ms; submit → start before and during.
//! - `kv`: a burn-down of jobs that each make one key-value set-if-absent;
//!   the calls' mean and p99 from the host's histogram.
//! - `prune`: a burn-down on a store holding many succeeded jobs, once with
//!   retention off and once while the pruner deletes them: the cost of
//!   retention to the work going on.

mod http;
mod report;
mod server;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::Value;

use http::Conn;
use report::{Report, histogram};
use server::{Server, verify};

#[derive(Parser)]
#[command(about = "Benchmarks for jobhost; prints figures, never asserts on them")]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Clone)]
struct Common {
    /// The jobhost binary (a release build).
    #[arg(long, env = "JOBHOST_BIN")]
    bin: PathBuf,
    /// Directory with noop.wasm and email_welcome.wasm (+ manifests).
    #[arg(long, env = "JOBHOST_BENCH_PLUGINS")]
    plugins: PathBuf,
    /// Where data directories and JSON results go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Shorter runs (each scenario under a minute).
    #[arg(long, global = true)]
    quick: bool,
    /// Extra flags for `jobhost serve`, e.g. `--serve-arg=--sqlite-sync=normal`.
    #[arg(long = "serve-arg", global = true)]
    serve_args: Vec<String>,
    /// The store under test: the embedded SQLite file, or PostgreSQL (a
    /// fresh database per scenario on the `--database-url` server).
    #[arg(long, global = true, value_enum, default_value_t = StoreKind::Sqlite)]
    store: StoreKind,
    /// The PostgreSQL server for `--store postgres` (a database on it is
    /// created for each scenario, named `jobhost_bench_<scenario>`).
    #[arg(
        long,
        global = true,
        env = "JOBHOST_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Dispatch through Redis Streams too (needs `--store postgres`): the
    /// hosts use the `--redis-url` server under the key prefix
    /// `jobhost-bench-<scenario>`, cleared before each scenario.
    #[arg(long, global = true)]
    redis: bool,
    /// The Redis server for `--redis`.
    #[arg(
        long,
        global = true,
        env = "JOBHOST_BENCH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StoreKind {
    Sqlite,
    Postgres,
}

#[derive(Subcommand)]
enum Scenario {
    /// Every scenario in turn.
    All,
    BurnDown {
        /// Jobs to burn down (default 200,000; 20,000 with --quick).
        #[arg(long)]
        jobs: Option<usize>,
        /// Hosts sharing the work (more than one needs --store postgres).
        #[arg(long, default_value_t = 1,
              value_parser = clap::value_parser!(u64).range(1..=8))]
        hosts: u64,
    },
    Latency {
        /// Arrival rates in jobs/s.
        #[arg(long, value_delimiter = ',', default_value = "500,5000")]
        rates: Vec<u64>,
        /// Seconds per rate (default 10; 3 with --quick).
        #[arg(long)]
        seconds: Option<u64>,
    },
    Submit {
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Seconds (default 10; 3 with --quick).
        #[arg(long)]
        seconds: Option<u64>,
    },
    Batch {
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Seconds (default 10; 3 with --quick).
        #[arg(long)]
        seconds: Option<u64>,
    },
    Seed {
        /// Seconds (default 60; 10 with --quick), half ramping to 20 users, half to 40.
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// No-op jobs at a fixed rate while a new version of their plugin is
    /// uploaded every 500 ms through the second half.
    Swap {
        #[arg(long, default_value_t = 500)]
        rate: u64,
        /// Seconds (default 20; 6 with --quick).
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Jobs that each make one key-value set-if-absent: the cost of a call.
    Kv {
        /// Jobs (default 100,000; 20,000 with --quick).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// A burn-down while the pruner deletes many succeeded jobs, against
    /// the same burn-down with retention off.
    Prune {
        /// Succeeded jobs to prune (default 1,000,000; 100,000 with --quick).
        #[arg(long)]
        jobs: Option<usize>,
        /// Jobs of each burn-down (default 200,000; 50,000 with --quick).
        #[arg(long)]
        burn: Option<usize>,
    },
    Overhead {
        /// Jobs (default 50,000; 10,000 with --quick).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// The operator's side with many jobs in the store: the dashboard's data
    /// endpoints, and a bulk replay of the dead-letter queue.
    Operators {
        /// Jobs in the store (default 1,000,000; 100,000 with --quick), one
        /// in ten of them dead.
        #[arg(long)]
        jobs: Option<usize>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let c = &cli.common;
        let q = c.quick;
        match cli.scenario {
            Scenario::All => {
                burn_down(c, if q { 20_000 } else { 200_000 }, "burn-down", 1).await?;
                latency(c, &[500, 5000], if q { 3 } else { 10 }).await?;
                submit(c, 64, if q { 3 } else { 10 }).await?;
                batch(c, 1000, 4, if q { 3 } else { 10 }).await?;
                seed(c, if q { 10 } else { 60 }).await?;
                kv(c, if q { 20_000 } else { 100_000 }).await?;
                swap(c, 500, if q { 6 } else { 20 }).await?;
                burn_down(c, if q { 10_000 } else { 50_000 }, "overhead", 1).await
            }
            Scenario::BurnDown { jobs, hosts } => {
                burn_down(
                    c,
                    jobs.unwrap_or(if q { 20_000 } else { 200_000 }),
                    "burn-down",
                    hosts as usize,
                )
                .await
            }
            Scenario::Latency { rates, seconds } => {
                latency(c, &rates, seconds.unwrap_or(if q { 3 } else { 10 })).await
            }
            Scenario::Submit {
                connections,
                seconds,
            } => submit(c, connections, seconds.unwrap_or(if q { 3 } else { 10 })).await,
            Scenario::Batch {
                batch: size,
                connections,
                seconds,
            } => {
                batch(
                    c,
                    size,
                    connections,
                    seconds.unwrap_or(if q { 3 } else { 10 }),
                )
                .await
            }
            Scenario::Seed { seconds } => seed(c, seconds.unwrap_or(if q { 10 } else { 60 })).await,
            Scenario::Swap { rate, seconds } => {
                swap(c, rate, seconds.unwrap_or(if q { 6 } else { 20 })).await
            }
            Scenario::Kv { jobs } => kv(c, jobs.unwrap_or(if q { 20_000 } else { 100_000 })).await,
            Scenario::Operators { jobs } => {
                operators(c, jobs.unwrap_or(if q { 100_000 } else { 1_000_000 })).await
            }
            Scenario::Prune { jobs, burn } => {
                prune(
                    c,
                    jobs.unwrap_or(if q { 100_000 } else { 1_000_000 }),
                    burn.unwrap_or(if q { 50_000 } else { 200_000 }),
                )
                .await
            }
            Scenario::Overhead { jobs } => {
                burn_down(
                    c,
                    jobs.unwrap_or(if q { 10_000 } else { 50_000 }),
                    "overhead",
                    1,
                )
                .await
            }
        }
    })
}

/// The scenario's `jobhost serve` flags (`--flag value` pairs or lone
/// switches), except those the user overrides with `--serve-arg=--flag=value`,
/// then the user's.
fn serve_args(c: &Common, defaults: &[&str]) -> Vec<String> {
    let overridden = |flag: &str| {
        c.serve_args
            .iter()
            .any(|a| a.split('=').next() == Some(flag))
    };
    let mut args: Vec<String> = Vec::new();
    let mut i = 0;
    while i < defaults.len() {
        let takes_value = defaults.get(i + 1).is_some_and(|v| !v.starts_with("--"));
        let width = if takes_value { 2 } else { 1 };
        if !overridden(defaults[i]) {
            args.extend(defaults[i..i + width].iter().map(|s| s.to_string()));
        }
        i += width;
    }
    args.extend(c.serve_args.iter().cloned());
    args
}

/// Starts jobhost with the scenario's flags on a fresh store (a new data
/// directory, and with `--store postgres` a new database).
async fn start(c: &Common, scenario: &str, defaults: &[&str]) -> Result<Server> {
    let mut shared = Vec::new();
    let database = match c.store {
        StoreKind::Sqlite => None,
        StoreKind::Postgres => {
            let url = server::fresh_database(&c.database_url, scenario).await?;
            shared.extend(["--database-url".to_owned(), url.clone()]);
            Some(url)
        }
    };
    if c.redis {
        anyhow::ensure!(database.is_some(), "--redis needs --store postgres");
        let prefix = server::fresh_redis_prefix(&c.redis_url, scenario).await?;
        shared.extend([
            "--redis-url".to_owned(),
            c.redis_url.clone(),
            "--redis-prefix".to_owned(),
            prefix,
        ]);
    }
    let mut args = serve_args(c, defaults);
    args.extend(shared.iter().cloned());
    let mut server = Server::start(
        &c.bin,
        &c.plugins,
        &c.out.join(format!("data-{scenario}")),
        &args,
        database,
    )?;
    server.shared = shared;
    Ok(server)
}

/// Starts one more host on `first`'s database (a data directory of its own).
fn start_another(c: &Common, first: &Server, name: &str, defaults: &[&str]) -> Result<Server> {
    let database = first
        .database
        .clone()
        .context("more hosts share a database: use --store postgres")?;
    let mut args = serve_args(c, defaults);
    args.extend(first.shared.iter().cloned());
    let mut server = Server::start(
        &c.bin,
        &c.plugins,
        &c.out.join(format!("data-{name}")),
        &args,
        Some(database),
    )?;
    server.shared = first.shared.clone();
    Ok(server)
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// What some connections submitted: accepted job ids, HTTP latency, errors.
struct Tally {
    ids: Vec<i64>,
    http: Histogram<u64>,
    errors: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            ids: Vec::new(),
            http: histogram(),
            errors: 0,
        }
    }

    /// Posts one job and records how it went.
    async fn submit(&mut self, conn: &mut Conn, path: &str, body: Bytes) -> Result<()> {
        let began = Instant::now();
        let (status, resp) = conn.post(path, body).await?;
        self.http
            .record(began.elapsed().as_micros().max(1) as u64)?;
        if status == 202 {
            let v: Value = serde_json::from_slice(&resp)?;
            self.ids.push(v["jobId"].as_i64().context("jobId")?);
        } else {
            self.errors += 1;
        }
        Ok(())
    }

    async fn gather(tasks: Vec<tokio::task::JoinHandle<Result<Tally>>>) -> Result<Tally> {
        let mut all = Tally::new();
        for t in tasks {
            let one = t.await??;
            all.ids.extend(one.ids);
            all.http.add(&one.http)?;
            all.errors += one.errors;
        }
        Ok(all)
    }
}

async fn admin(server: &Server) -> Result<Conn> {
    Conn::connect(server.addr, Some(server::TOKEN)).await
}

/// Submits `total` no-op jobs through the batch endpoint over `connections`
/// connections; returns their ids.
async fn submit_batches(
    server: &Server,
    total: usize,
    size: usize,
    connections: usize,
) -> Result<Vec<i64>> {
    submit_batches_of(server, "noop", |_| "{}".into(), total, size, connections).await
}

/// Submits `total` jobs of `job_type` in batches of `size`, the n-th job
/// (from 0) with payload `payload(n)`.
async fn submit_batches_of(
    server: &Server,
    job_type: &str,
    payload: fn(u64) -> String,
    total: usize,
    size: usize,
    connections: usize,
) -> Result<Vec<i64>> {
    let next = Arc::new(AtomicU64::new(0));
    let batches = total.div_ceil(size) as u64;
    let path = format!("/jobs/{job_type}/batch");
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (next, addr, path) = (next.clone(), server.addr, path.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr, None).await?;
            let mut ids = Vec::new();
            loop {
                let batch = next.fetch_add(1, Ordering::Relaxed);
                if batch >= batches {
                    break;
                }
                let first = batch * size as u64;
                let jobs: Vec<String> = (first..first + size as u64).map(payload).collect();
                let body = Bytes::from(format!("[{}]", jobs.join(",")));
                let (status, resp) = conn.post(&path, body).await?;
                anyhow::ensure!(
                    status == 202,
                    "batch submit: {status} {}",
                    String::from_utf8_lossy(&resp)
                );
                let v: Value = serde_json::from_slice(&resp)?;
                ids.extend(
                    v["jobIds"]
                        .as_array()
                        .context("jobIds")?
                        .iter()
                        .filter_map(Value::as_i64),
                );
            }
            Ok::<_, anyhow::Error>(ids)
        }));
    }
    let mut ids = Vec::with_capacity(total);
    for t in tasks {
        ids.extend(t.await??);
    }
    Ok(ids)
}

/// Polls until `n` jobs are in a final state.
async fn wait_done(server: &Server, n: u64, patience: Duration) -> Result<()> {
    let mut conn = admin(server).await?;
    let deadline = Instant::now() + patience;
    loop {
        let counts = conn.json("/admin/metrics/jobs").await?;
        let done = counts["succeeded"].as_u64().unwrap_or(0) + counts["dead"].as_u64().unwrap_or(0);
        if done >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {done} of {n} jobs finished within {patience:?}: {counts}");
        }
        // Counting is a scan of the jobs table: poll gently, so the
        // measurement does not slow down what it measures.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Seconds from the first attempt's start to the last one's finish.
fn drain_secs(rows: &[server::JobRow]) -> f64 {
    let first_start = rows.iter().filter_map(|r| r.started_at).min().unwrap_or(0);
    let last_finish = rows.iter().filter_map(|r| r.finished_at).max().unwrap_or(0);
    (last_finish - first_start) as f64 / 1e6
}

/// Sum and count of a Prometheus histogram, over all label sets.
fn prom_sum_count(text: &str, name: &str) -> (f64, f64) {
    (
        prom_value(text, &format!("{name}_sum")),
        prom_value(text, &format!("{name}_count")),
    )
}

/// A Prometheus series' value, summed over all label sets.
fn prom_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The store writer's work per job, from the host's own histograms: the
/// claim statements, the completion statements, and the commits (events and
/// fsync), each as statements per job and µs of writer time per job. The
/// writer is the one serial resource, so this is what caps throughput.
/// Returns the writer's µs per job in all.
async fn writer_figures(report: &mut Report, server: &Server, jobs: f64) -> Result<f64> {
    let mut conn = admin(server).await?;
    let metrics = String::from_utf8_lossy(&conn.get("/metrics").await?.1).into_owned();
    let mut total = 0.0;
    for (what, name) in [
        ("claim", "jobhost_claim_duration_seconds"),
        ("complete", "jobhost_store_complete_duration_seconds"),
        ("commit", "jobhost_store_commit_duration_seconds"),
    ] {
        let (sum, count) = prom_sum_count(&metrics, name);
        report.figure(
            format!("writer: {what} statements per job"),
            count / jobs,
            "",
        );
        report.figure(format!("writer: {what} per job"), sum / jobs * 1e6, "µs");
        total += sum / jobs * 1e6;
    }
    // Every transaction, also those committed by the statement that served
    // a parked claim (which the commit histogram above does not see).
    let transactions = prom_value(&metrics, "jobhost_store_transactions_total");
    report.figure(
        "writer: transactions (fsyncs) per job",
        transactions / jobs,
        "",
    );
    Ok(total)
}

/// The embedded store's writer thread, by the name the host gives it: its
/// CPU time is the host's serial cost per job without the waits (fsync).
const WRITER_THREAD: &str = "jobhost-writer";

/// Burns `jobs` no-op jobs down on `hosts` hosts (more than one share a
/// PostgreSQL database: `--store postgres`). Jobs are submitted to the first
/// while every host is paused, then every host is resumed.
async fn burn_down(c: &Common, jobs: usize, scenario: &str, hosts: usize) -> Result<()> {
    const FLAGS: &[&str] = &["--paused", "--concurrency", "1024", "--claim-batch", "512"];
    anyhow::ensure!(
        hosts == 1 || c.store == StoreKind::Postgres,
        "--hosts {hosts}: hosts share a database only with --store postgres"
    );
    let server = start(c, scenario, FLAGS).await?;
    let mut others = Vec::new();
    for n in 2..=hosts {
        others.push(start_another(
            c,
            &server,
            &format!("{scenario}-host{n}"),
            FLAGS,
        )?);
    }
    let all: Vec<&Server> = std::iter::once(&server).chain(&others).collect();
    let mut report = Report::new(scenario);
    report.param("jobs", jobs);
    report.param("hosts", hosts);
    report.param("serve_flags", "--concurrency 1024 --claim-batch 512");
    let submitted_at = Instant::now();
    let ids = submit_batches(&server, jobs, 5000, 2).await?;
    let submit_secs = submitted_at.elapsed().as_secs_f64();
    let mut conn = admin(&server).await?;
    let cpu = || all.iter().map(|s| s.cpu_secs()).sum::<f64>();
    let cpu_before = cpu();
    let writer_cpu_before = server.thread_cpu_secs(WRITER_THREAD);
    for host in &all {
        resume(host).await?;
    }
    wait_done(&server, jobs as u64, Duration::from_secs(1800)).await?;
    let cpu_us = (cpu() - cpu_before) / jobs as f64 * 1e6;
    // The embedded store's writer; PostgreSQL has none.
    let writer_cpu_us = server
        .thread_cpu_secs(WRITER_THREAD)
        .zip(writer_cpu_before)
        .map(|(after, before)| (after - before) / jobs as f64 * 1e6);
    let rows = server.jobs().await?;
    let verified = verify(&ids, &rows)?;
    let span = drain_secs(&rows);
    let metrics = String::from_utf8_lossy(&conn.get("/metrics").await?.1).into_owned();
    let per_job = |name: &str, jobs: f64| prom_sum_count(&metrics, name).0 / jobs * 1e6;
    let (_, attempts) = prom_sum_count(&metrics, "jobhost_attempt_duration_seconds");
    let sandbox_us = per_job("jobhost_attempt_duration_seconds", attempts);
    let complete_wait_us = per_job("jobhost_complete_duration_seconds", attempts);
    if scenario == "burn-down" {
        report.figure(
            "jobs/s (first start → last finish)",
            jobs as f64 / span,
            "jobs/s",
        );
        report.figure("burn-down time", span, "s");
        report.figure(
            "batch submit while paused",
            jobs as f64 / submit_secs,
            "jobs/s",
        );
    }
    let writer_us = writer_figures(&mut report, &server, attempts).await?;
    report.figure("sandbox per attempt (instantiate + call)", sandbox_us, "µs");
    report.figure(
        "host overhead per job (writer: claim + complete + commit)",
        writer_us,
        "µs",
    );
    if let Some(writer_cpu_us) = writer_cpu_us {
        report.figure(
            "host overhead per job, writer thread CPU (no waits)",
            writer_cpu_us,
            "µs",
        );
    } else if c.store == StoreKind::Sqlite {
        bail!("no thread named {WRITER_THREAD} in the server");
    }
    report.figure(
        "server CPU per job, all threads (claim → run → complete)",
        cpu_us,
        "µs",
    );
    report.figure(
        "server CPU per job beyond the sandbox",
        cpu_us - sandbox_us,
        "µs",
    );
    report.figure(
        "an executor's wait for its completion to commit",
        complete_wait_us,
        "µs",
    );
    report.figure("server peak RSS", server.peak_rss_mib(), "MiB");
    report.note(format!("verified: {verified}"));
    report.note("The writer figures are time on the store's single writer (the serial resource) per job, commits shared by every job of their batch. An executor's wait for its commit overlaps with other executors' work: a latency, not a cost.");
    if hosts > 1 {
        report.note(format!("{hosts} hosts: CPU per job is all hosts' together; the sandbox, writer and wait figures are the first host's"));
    }
    drop(all);
    for other in others {
        other.stop()?;
    }
    server.stop()?;
    report.finish(&c.out)
}

/// Retention's cost to the work going on. Fills the store with `jobs`
/// succeeded jobs (a burn-down), then restarts the host on it twice for a
/// burn-down of `burn` more: first with retention off (the control), then,
/// once the filled jobs are older than the retention, with the pruner on,
/// deleting them while the burn-down runs.
async fn prune(c: &Common, jobs: usize, burn: usize) -> Result<()> {
    const FLAGS: &[&str] = &["--paused", "--concurrency", "1024", "--claim-batch", "512"];
    const RETAIN_SECS: u64 = 30;
    let mut report = Report::new("prune");
    report.param("jobs", jobs);
    report.param("burn", burn);
    report.param("serve_flags", "--concurrency 1024 --claim-batch 512");
    let forever = ["--retain-succeeded", "forever"];
    let server = start(c, "prune", &[FLAGS, &forever].concat()).await?;
    let began = Instant::now();
    let ids = submit_batches(&server, jobs, 5000, 2).await?;
    resume(&server).await?;
    wait_done(&server, jobs as u64, Duration::from_secs(3600)).await?;
    report.figure("filled and burnt down", began.elapsed().as_secs_f64(), "s");
    let mut last = *ids.iter().max().context("no jobs")?;

    // The same burn-down on the same store, retention off, then on.
    let retain = format!("{RETAIN_SECS}s");
    let pruning = ["--retain-succeeded", &retain, "--prune-interval-ms", "1000"];
    let mut server = server;
    let mut filled_by = Instant::now();
    for (run, flags) in [("retention off", &forever[..]), ("pruning", &pruning[..])] {
        let mut args = serve_args(c, &[FLAGS, flags].concat());
        args.extend(server.shared.iter().cloned());
        let (data, database, shared) = (
            server.data.clone(),
            server.database.clone(),
            server.shared.clone(),
        );
        server.stop()?;
        if run == "pruning" {
            // Everything before is past its retention; what this burn-down
            // finishes is not, until well after it is checked.
            tokio::time::sleep(
                Duration::from_secs(RETAIN_SECS).saturating_sub(filled_by.elapsed()),
            )
            .await;
        }
        server = Server::spawn(&c.bin, &c.plugins, &data, &args, database)?;
        server.shared = shared;
        let mut conn = admin(&server).await?;
        let pruned = |text: &str| prom_value(text, "jobhost_jobs_pruned_total");
        let before = String::from_utf8_lossy(&conn.get("/metrics").await?.1).into_owned();
        let ids = submit_batches(&server, burn, 5000, 2).await?;
        let cpu_before = server.cpu_secs();
        resume(&server).await?;
        let pruned_at_resume = pruned(&String::from_utf8_lossy(&conn.get("/metrics").await?.1));
        wait_settled(&server, Duration::from_secs(3600)).await?;
        let after = String::from_utf8_lossy(&conn.get("/metrics").await?.1).into_owned();
        let cpu_us = (server.cpu_secs() - cpu_before) / burn as f64 * 1e6;
        let rows: Vec<_> = server
            .jobs()
            .await?
            .into_iter()
            .filter(|r| r.id > last)
            .collect();
        let verified = verify(&ids, &rows)?;
        last = *ids.iter().max().context("no jobs")?;
        let span = drain_secs(&rows);
        report.figure(
            format!("{run}: burn-down jobs/s"),
            burn as f64 / span,
            "jobs/s",
        );
        report.figure(format!("{run}: server CPU per job"), cpu_us, "µs");
        if run == "pruning" {
            let during = pruned(&after) - pruned_at_resume;
            report.figure("pruning: jobs pruned during the burn-down", during, "jobs");
            report.figure(
                "pruning: prune rate during the burn-down",
                during / span,
                "jobs/s",
            );
            report.figure(
                "pruning: jobs pruned before the burn-down (while submitting)",
                pruned_at_resume - pruned(&before),
                "jobs",
            );
            // Then on to the end, alone.
            let alone = Instant::now();
            let total = (jobs + burn) as f64;
            let pruned_then = pruned(&after);
            loop {
                let text = String::from_utf8_lossy(&conn.get("/metrics").await?.1).into_owned();
                if pruned(&text) >= total {
                    let secs = alone.elapsed().as_secs_f64();
                    report.figure(
                        "pruning: prune rate alone (to the last)",
                        (total - pruned_then) / secs,
                        "jobs/s",
                    );
                    break;
                }
                anyhow::ensure!(
                    alone.elapsed() < Duration::from_secs(3600),
                    "pruning never finished"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let counts = conn.json("/admin/metrics/jobs").await?;
            report.note(format!("after pruning: {counts}"));
        }
        report.note(format!("{run}: {verified}"));
        filled_by = Instant::now();
    }
    report.figure("server peak RSS", server.peak_rss_mib(), "MiB");
    report.note(format!("The pruner deletes 1,000 jobs a transaction and rests 19 times as long as each took; succeeded jobs are kept {RETAIN_SECS} s in the pruning run."));
    server.stop()?;
    report.finish(&c.out)
}

/// Waits until no job is queued, scheduled or running (the count of
/// succeeded jobs cannot tell: retention lowers it); `verify` then checks
/// every job.
async fn wait_settled(server: &Server, patience: Duration) -> Result<()> {
    let mut conn = admin(server).await?;
    let deadline = Instant::now() + patience;
    loop {
        let counts = conn.json("/admin/metrics/jobs").await?;
        let open: u64 = ["queued", "running", "scheduled"]
            .iter()
            .map(|s| counts[s].as_u64().unwrap_or(0))
            .sum();
        if open == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "jobs still open after {patience:?}: {counts}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn resume(server: &Server) -> Result<()> {
    let (status, _) = admin(server)
        .await?
        .post("/admin/workers/resume", Bytes::new())
        .await?;
    anyhow::ensure!(status == 200, "resume: {status}");
    Ok(())
}

/// A burn-down of jobs that each make one key-value `set-if-absent` (a key
/// of their own), as an idempotent handler does: the cost of a kv call
/// under load, from the host's histogram of them.
/// Fills the store through the batch endpoint (nine no-op jobs in ten, and
/// one of a type whose every attempt fails at once, so it lands in the
/// dead-letter queue), lets it burn down, then times the dashboard's data
/// endpoints with everything in the store, and a bulk replay of every dead
/// job.
async fn operators(c: &Common, jobs: usize) -> Result<()> {
    // The testing plugin has no behaviour for `doomed`: a fatal error.
    let plugins = c.out.join("plugins-operators");
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(c.plugins.join("noop.wasm"), plugins.join("noop.wasm"))?;
    let testing = c.plugins.join("../testing/testing.wasm");
    std::fs::copy(&testing, plugins.join("doomed.wasm"))
        .with_context(|| format!("{}: build it with `cargo xtask plugins`", testing.display()))?;
    std::fs::write(plugins.join("doomed.toml"), "max_attempts = 1\n")?;
    let c = &Common {
        plugins,
        ..c.clone()
    };
    let server = start(c, "operators", &[]).await?;
    let mut report = Report::new("operators");
    report.param("jobs", jobs);
    report.param("dead", jobs / 10);
    let began = Instant::now();
    let noops = submit_batches_of(&server, "noop", |_| "{}".into(), jobs - jobs / 10, 5000, 2);
    let doomed = submit_batches_of(&server, "doomed", |_| "{}".into(), jobs / 10, 5000, 1);
    let (noops, doomed) = tokio::try_join!(noops, doomed)?;
    wait_done(
        &server,
        (noops.len() + doomed.len()) as u64,
        Duration::from_secs(3600),
    )
    .await?;
    report.figure("filled and burnt down", began.elapsed().as_secs_f64(), "s");

    let mut conn = admin(&server).await?;
    let middle = doomed[doomed.len() / 2];
    let some_job = noops[noops.len() / 3];
    let endpoints = [
        (
            "GET /admin/metrics/jobs".to_owned(),
            "/admin/metrics/jobs".to_owned(),
        ),
        (
            "GET /admin/metrics/queue".to_owned(),
            "/admin/metrics/queue".to_owned(),
        ),
        ("GET /jobs?limit=50".to_owned(), "/jobs?limit=50".to_owned()),
        (
            "GET /jobs?state=dead&type=doomed&limit=50".to_owned(),
            "/jobs?state=dead&type=doomed&limit=50".to_owned(),
        ),
        (
            "GET /jobs?state=dead&limit=50&cursor=(middle)".to_owned(),
            format!("/jobs?state=dead&limit=50&cursor={middle}"),
        ),
        (
            "GET /jobs?state=succeeded&limit=50".to_owned(),
            "/jobs?state=succeeded&limit=50".to_owned(),
        ),
        (
            "GET /jobs?state=cancelled&limit=50 (none)".to_owned(),
            "/jobs?state=cancelled&limit=50".to_owned(),
        ),
        (
            "GET /jobs?state=queued&limit=50 (none)".to_owned(),
            "/jobs?state=queued&limit=50".to_owned(),
        ),
        ("GET /jobs/{id}".to_owned(), format!("/jobs/{some_job}")),
    ];
    for (name, path) in &endpoints {
        let mut h = histogram();
        for _ in 0..200 {
            let t = Instant::now();
            let (status, body) = conn.get(path).await?;
            anyhow::ensure!(
                status == 200,
                "{path}: {status} {}",
                String::from_utf8_lossy(&body)
            );
            h.record(t.elapsed().as_micros().max(1) as u64)?;
        }
        report.figure(
            format!("{name} p50"),
            h.value_at_quantile(0.5) as f64 / 1000.0,
            "ms",
        );
        report.figure(
            format!("{name} p99"),
            h.value_at_quantile(0.99) as f64 / 1000.0,
            "ms",
        );
    }

    // The replay alone: workers paused, so the replayed jobs wait.
    let (status, _) = conn.post("/admin/workers/pause", Bytes::new()).await?;
    anyhow::ensure!(status == 200, "pause: {status}");
    let t = Instant::now();
    let (status, body) = conn
        .post("/admin/dlq/replay", Bytes::from_static(br#"{"all": true}"#))
        .await?;
    let took = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        status == 200,
        "replay: {status} {}",
        String::from_utf8_lossy(&body)
    );
    let replayed = serde_json::from_slice::<Value>(&body)?["replayed"]
        .as_u64()
        .unwrap_or(0);
    anyhow::ensure!(
        replayed as usize == doomed.len(),
        "replayed {replayed} of {}",
        doomed.len()
    );
    report.figure(format!("bulk replay of {replayed} dead jobs"), took, "s");
    let counts = conn.json("/admin/metrics/jobs").await?;
    anyhow::ensure!(
        counts["dead"] == 0 && counts["queued"] == replayed,
        "after the replay: {counts}"
    );
    report.figure("server peak RSS", server.peak_rss_mib(), "MiB");
    report.note("Each endpoint is called 200 times in a row on one keep-alive connection, with every job finished (nothing else running). The replay is one call with workers paused; its jobs are then queued, counted.");
    report.finish(&c.out)?;
    server.stop()
}

async fn kv(c: &Common, jobs: usize) -> Result<()> {
    // The testing plugin's `kv_ops` behaviour, installed beside noop.
    let plugins = c.out.join("plugins-kv");
    std::fs::create_dir_all(&plugins)?;
    let testing = c.plugins.join("../testing/testing.wasm");
    std::fs::copy(&testing, plugins.join("kv_ops.wasm"))
        .with_context(|| format!("{}: build it with `cargo xtask plugins`", testing.display()))?;
    std::fs::write(
        plugins.join("kv_ops.toml"),
        "fuel = 10_000_000\ntimeout_ms = 5_000\nmemory_mb = 16\nmax_attempts = 1\nconcurrency = 1024\n",
    )?;
    let c = &Common {
        plugins,
        ..c.clone()
    };
    const FLAGS: &[&str] = &["--paused", "--concurrency", "1024", "--claim-batch", "512"];
    let server = start(c, "kv", FLAGS).await?;
    let mut report = Report::new("kv");
    report.param("jobs", jobs);
    report.param("serve_flags", "--concurrency 1024 --claim-batch 512");
    report.param("job", "one kv set-if-absent of a key of its own");
    let payload = |n| format!(r#"{{"ops":[["set_if_absent","job-{n}","sent"]]}}"#);
    let ids = submit_batches_of(&server, "kv_ops", payload, jobs, 5000, 2).await?;
    let cpu_before = server.cpu_secs();
    resume(&server).await?;
    wait_done(&server, ids.len() as u64, Duration::from_secs(1800)).await?;
    let cpu_us = (server.cpu_secs() - cpu_before) / ids.len() as f64 * 1e6;
    let rows = server.jobs().await?;
    let verified = verify(&ids, &rows)?;
    let span = drain_secs(&rows);
    let metrics =
        String::from_utf8_lossy(&admin(&server).await?.get("/metrics").await?.1).into_owned();
    let series = r#"jobhost_plugin_kv_duration_seconds_bucket{op="set_if_absent""#;
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let calls = buckets.last().map_or(0.0, |b| b.1);
    let at_most = |limit: f64| buckets.iter().find(|b| b.0 >= limit).map_or(0.0, |b| b.1);
    let p99 = buckets
        .iter()
        .find(|b| b.1 >= 0.99 * calls)
        .map_or(f64::NAN, |b| b.0);
    let (sum, _) = prom_sum_count(&metrics, "jobhost_plugin_kv_duration_seconds");
    report.figure(
        "jobs/s (first start → last finish)",
        ids.len() as f64 / span,
        "jobs/s",
    );
    report.figure("kv set-if-absent calls", calls, "");
    report.figure("kv set-if-absent mean", sum / calls * 1e6, "µs");
    report.figure("kv set-if-absent p99 (bucket bound)", p99 * 1e6, "µs");
    report.figure(
        "kv set-if-absent calls ≤ 50 µs",
        at_most(0.000_05) / calls * 100.0,
        "%",
    );
    report.figure("server CPU per job, all threads", cpu_us, "µs");
    report.figure("server peak RSS", server.peak_rss_mib(), "MiB");
    report.note(format!("verified: {verified}"));
    report.note("A call is timed in the host import, as the plugin waits for it: checks, then the store's answer. The embedded store answers in memory and queues the write to its writer (durable before the attempt's outcome and before any outbound request); PostgreSQL commits the write first. Bucket bounds: 5, 10, 25, 50, 100, 250 µs, ...");
    server.stop()?;
    report.finish(&c.out)
}

/// Open-loop arrival of single no-op jobs at `rate` per second for
/// `seconds`: connection i sends at t0 + (i + k·conns)/rate, whether or not
/// earlier requests were slow. If the connection was still waiting for the
/// server at that time, latency counts from the intended time, so a stall is
/// not hidden (no coordinated omission); otherwise from the actual send, so
/// the generator's own timer (tokio's is 1 ms granular, and fires up to 1 ms
/// late) is not counted as the server's latency. Returns each accepted job
/// with the wall-clock µs its latency counts from, the HTTP histogram and
/// the errors.
async fn open_loop(
    server: &Server,
    rate: u64,
    seconds: u64,
) -> Result<(Vec<(i64, i64)>, Histogram<u64>, u64)> {
    let conns = 64u64.min(rate.max(1));
    let total = rate * seconds;
    let t0 = Instant::now() + Duration::from_millis(100);
    let t0_wall = now_micros() + 100_000;
    let mut tasks = Vec::new();
    for i in 0..conns {
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr, None).await?;
            let mut sent = Vec::new();
            let mut http = histogram();
            let mut errors = 0u64;
            let mut k = i;
            let mut previous_done = Instant::now();
            while k < total {
                let offset = Duration::from_nanos(k * 1_000_000_000 / rate);
                let due = t0 + offset;
                tokio::time::sleep_until(due.into()).await;
                let stalled = previous_done > due;
                let began = Instant::now();
                let from = if stalled {
                    t0_wall + offset.as_micros() as i64
                } else {
                    now_micros()
                };
                let (status, body) = conn.post("/jobs/noop", Bytes::from_static(b"{}")).await?;
                previous_done = Instant::now();
                http.record(began.elapsed().as_micros().max(1) as u64)?;
                if status == 202 {
                    let v: Value = serde_json::from_slice(&body)?;
                    sent.push((v["jobId"].as_i64().context("jobId")?, from));
                } else {
                    errors += 1;
                }
                k += conns;
            }
            Ok::<_, anyhow::Error>((sent, http, errors))
        }));
    }
    let mut sent = Vec::new();
    let mut http = histogram();
    let mut errors = 0;
    for t in tasks {
        let (s, h, e) = t.await??;
        sent.extend(s);
        http.add(&h)?;
        errors += e;
    }
    Ok((sent, http, errors))
}

/// Submit → start latency of the jobs `sent` whose latency counts from
/// within `window` (wall-clock µs).
fn start_latency(
    sent: &[(i64, i64)],
    rows: &[server::JobRow],
    window: std::ops::Range<i64>,
) -> Result<Histogram<u64>> {
    let started: std::collections::HashMap<i64, i64> = rows
        .iter()
        .filter_map(|r| Some((r.id, r.started_at?)))
        .collect();
    let mut h = histogram();
    for (id, from) in sent.iter().filter(|(_, from)| window.contains(from)) {
        let at = started
            .get(id)
            .copied()
            .context("a submitted job never started")?;
        h.record((at - from).max(1) as u64)?;
    }
    Ok(h)
}

/// Hot swap under load: no-op jobs at `rate`/s for `seconds`; through the
/// second half, a new version of the no-op plugin is uploaded every 500 ms.
/// Submit → start latency before the swaps and while they happen.
async fn swap(c: &Common, rate: u64, seconds: u64) -> Result<()> {
    let server = start(c, "swap", &["--concurrency", "256"]).await?;
    let mut report = Report::new("swap");
    report.param("rate", rate);
    report.param("seconds", seconds);
    report.param(
        "swaps",
        "a new noop version uploaded every 500 ms through the second half",
    );
    let original = std::fs::read(c.plugins.join("noop.wasm"))?;
    let half = Duration::from_secs(seconds) / 2;
    let swap_from = now_micros() + half.as_micros() as i64 + 100_000;
    let addr = server.addr;
    let swapper = tokio::spawn(async move {
        tokio::time::sleep(half + Duration::from_millis(100)).await;
        let mut conn = Conn::connect(addr, Some(server::TOKEN)).await?;
        let mut swaps = 0u32;
        let until = Instant::now() + half;
        while Instant::now() < until {
            // The same code under a new digest: a custom section numbered
            // by the swap.
            let mut wasm = original.clone();
            let name = b"jobhost-bench-swap";
            let payload = swaps.to_string();
            wasm.push(0);
            wasm.push((1 + name.len() + payload.len()) as u8);
            wasm.push(name.len() as u8);
            wasm.extend_from_slice(name);
            wasm.extend_from_slice(payload.as_bytes());
            let (status, body) = conn.put("/admin/plugins/noop", Bytes::from(wasm)).await?;
            anyhow::ensure!(
                status == 200,
                "upload: {status} {}",
                String::from_utf8_lossy(&body)
            );
            swaps += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok::<_, anyhow::Error>(swaps)
    });
    let (sent, http, errors) = open_loop(&server, rate, seconds).await?;
    let swaps = swapper.await??;
    wait_done(&server, sent.len() as u64, Duration::from_secs(300)).await?;
    let rows = server.jobs().await?;
    let before = start_latency(&sent, &rows, i64::MIN..swap_from)?;
    let during = start_latency(&sent, &rows, swap_from..i64::MAX)?;
    report.latency("before the swaps: submit→start", &before);
    report.latency("during the swaps: submit→start", &during);
    report.figure(
        "p99 during / p99 before",
        during.value_at_quantile(0.99) as f64 / before.value_at_quantile(0.99).max(1) as f64,
        "×",
    );
    report.figure("swaps", swaps as f64, "");
    report.latency("HTTP", &http);
    report.figure("errors", errors as f64, "");
    let ids: Vec<i64> = sent.iter().map(|(id, _)| *id).collect();
    report.figure("server peak RSS", server.peak_rss_mib(), "MiB");
    report.note(format!("verified: {}", verify(&ids, &rows)?));
    server.stop()?;
    report.finish(&c.out)
}

async fn latency(c: &Common, rates: &[u64], seconds: u64) -> Result<()> {
    let server = start(c, "latency", &["--concurrency", "256"]).await?;
    let mut report = Report::new("latency");
    report.param("rates", rates.to_vec());
    report.param("serve_flags", "--concurrency 256");
    report.param("seconds_per_rate", seconds);
    let mut all_ids = Vec::new();
    for &rate in rates {
        let (sent, http, errors) = open_loop(&server, rate, seconds).await?;
        wait_done(
            &server,
            (all_ids.len() + sent.len()) as u64,
            Duration::from_secs(300),
        )
        .await?;
        let rows = server.jobs().await?;
        let latency = start_latency(&sent, &rows, i64::MIN..i64::MAX)?;
        report.latency(&format!("{rate}/s submit→start"), &latency);
        report.latency(&format!("{rate}/s HTTP"), &http);
        report.figure(format!("{rate}/s errors"), errors as f64, "");
        all_ids.extend(sent.iter().map(|(id, _)| *id));
    }
    let verified = verify(&all_ids, &server.jobs().await?)?;
    report.figure("server peak RSS", server.peak_rss_mib(), "MiB");
    report.note(format!("verified: {verified}"));
    server.stop()?;
    report.finish(&c.out)
}

/// Closed-loop load: `connections` tasks post single no-op jobs until the deadline.
async fn submit(c: &Common, connections: usize, seconds: u64) -> Result<()> {
    // Default concurrency: a larger pool makes the workers' transactions
    // bigger and the enqueues behind them wait longer (measured: 13,900 vs
    // 19,700 req/s at 256 vs 16).
    let server = start(c, "submit", &[]).await?;
    let mut report = Report::new("submit");
    report.param("connections", connections);
    report.param("seconds", seconds);
    report.param("serve_flags", "defaults (--concurrency 16)");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let began = Instant::now();
    let cpu_before = server.cpu_secs();
    let writer_cpu_before = server.thread_cpu_secs(WRITER_THREAD);
    let own_cpu_before = server::cpu_secs_of("self");
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr, None).await?;
            let mut tally = Tally::new();
            while Instant::now() < deadline {
                tally
                    .submit(&mut conn, "/jobs/noop", Bytes::from_static(b"{}"))
                    .await?;
            }
            Ok::<_, anyhow::Error>(tally)
        }));
    }
    let tally = Tally::gather(tasks).await?;
    let elapsed = began.elapsed().as_secs_f64();
    let cpu_secs = server.cpu_secs() - cpu_before;
    let writer_cpu_secs = server
        .thread_cpu_secs(WRITER_THREAD)
        .zip(writer_cpu_before)
        .map(|(after, before)| after - before);
    let own_cpu_secs = server::cpu_secs_of("self") - own_cpu_before;
    let requests = tally.http.len().max(1) as f64;
    report.figure("requests/s", tally.http.len() as f64 / elapsed, "req/s");
    report.latency("HTTP", &tally.http);
    report.figure("errors", tally.errors as f64, "");
    report.figure(
        "server CPU per request while submitting",
        cpu_secs / requests * 1e6,
        "µs",
    );
    // The embedded store's writer thread, of that (PostgreSQL has none).
    if let Some(writer) = writer_cpu_secs {
        report.figure(
            "server CPU per request, writer thread",
            writer / requests * 1e6,
            "µs",
        );
    }
    // The load generator shares the two cores with the server.
    report.figure(
        "load generator CPU per request",
        own_cpu_secs / tally.http.len().max(1) as f64 * 1e6,
        "µs",
    );
    wait_done(&server, tally.ids.len() as u64, Duration::from_secs(300)).await?;
    let verified = verify(&tally.ids, &server.jobs().await?)?;
    writer_figures(&mut report, &server, tally.ids.len() as f64).await?;
    report.figure("server peak RSS", server.peak_rss_mib(), "MiB");
    report.note(format!("verified: {verified}"));
    server.stop()?;
    report.finish(&c.out)
}

async fn batch(c: &Common, size: usize, connections: usize, seconds: u64) -> Result<()> {
    let server = start(c, "batch", &["--paused"]).await?;
    let mut report = Report::new("batch");
    report.param("batch", size);
    report.param("connections", connections);
    report.param("seconds", seconds);
    // Estimate from a short probe, then submit that many for the asked time.
    let began = Instant::now();
    let mut ids = submit_batches(&server, size * connections * 4, size, connections).await?;
    let probe_rate = ids.len() as f64 / began.elapsed().as_secs_f64();
    let target = ((probe_rate * seconds as f64) as usize).max(size);
    let began = Instant::now();
    let more = submit_batches(&server, target, size, connections).await?;
    let elapsed = began.elapsed().as_secs_f64();
    report.figure("jobs/s", more.len() as f64 / elapsed, "jobs/s");
    report.figure("requests/s", (more.len() / size) as f64 / elapsed, "req/s");
    ids.extend(more);
    resume(&server).await?;
    wait_done(&server, ids.len() as u64, Duration::from_secs(1800)).await?;
    let verified = verify(&ids, &server.jobs().await?)?;
    report.figure("server peak RSS", server.peak_rss_mib(), "MiB");
    report.note(format!("verified: {verified}"));
    report.note("workers paused while submitting: the figure is ingestion alone");
    server.stop()?;
    report.finish(&c.out)
}

async fn seed(c: &Common, seconds: u64) -> Result<()> {
    // email_welcome's example manifest sends its mails here; `cargo xtask
    // bench` serves a mail API there.
    const MAIL_API: &str = "127.0.0.1:8025";
    tokio::net::TcpStream::connect(MAIL_API).await.with_context(|| {
        format!("the seed scenario's email_welcome jobs post to http://{MAIL_API}/send, where nothing answers: run it through `cargo xtask bench`, which serves a mail API there")
    })?;
    let server = start(c, "seed", &[]).await?;
    let mut report = Report::new("seed");
    report.param("seconds", seconds);
    report.param(
        "shape",
        "ramp 0→20 users over the first half, 20→40 over the second; each posts then sleeps 0.2 s",
    );
    let began = Instant::now();
    let half = Duration::from_secs(seconds) / 2;
    let end = began + half * 2;
    let mut tasks = Vec::new();
    for vu in 0..40u32 {
        // User n starts once the ramp reaches n users.
        let start_at = if vu < 20 {
            half * vu / 20
        } else {
            half + half * (vu - 20) / 20
        };
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until((began + start_at).into()).await;
            let mut conn = Conn::connect(addr, None).await?;
            let mut tally = Tally::new();
            while Instant::now() < end {
                let user = loop {
                    let u: u32 = rand::random_range(1..1_000_000);
                    if u != 777 {
                        break u; // 777 is the always-failing example user
                    }
                };
                let body = Bytes::from(format!(r#"{{"userId":{user}}}"#));
                tally.submit(&mut conn, "/jobs/email_welcome", body).await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok::<_, anyhow::Error>(tally)
        }));
    }
    let tally = Tally::gather(tasks).await?;
    let (h, ids, errors) = (&tally.http, &tally.ids, tally.errors);
    report.figure("requests", h.len() as f64, "");
    report.figure("HTTP avg", h.mean() / 1000.0, "ms");
    report.figure("HTTP p95", h.value_at_quantile(0.95) as f64 / 1000.0, "ms");
    report.latency("HTTP", h);
    report.figure("errors", errors as f64, "");
    wait_done(&server, ids.len() as u64, Duration::from_secs(300)).await?;
    let verified = verify(ids, &server.jobs().await?)?;
    writer_figures(&mut report, &server, ids.len() as f64).await?;
    report.figure("server peak RSS", server.peak_rss_mib(), "MiB");
    report.note(format!("verified: {verified}"));
    report.note("the seed JobQ published 8.35 ms avg / 16.09 ms p95 for this shape");
    server.stop()?;
    report.finish(&c.out)
}

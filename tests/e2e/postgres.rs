//! The scale-out suite: several real `jobhost` hosts sharing one real
//! PostgreSQL database (a database of its own per test). Every test here
//! has "postgres" in its name: `cargo xtask test` leaves them out, saying
//! so, only when no server can be reached outside CI.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::{Plugins, Proxy, Server, TestDb};

const JOBS: usize = 5_000;
const HOSTS: usize = 3;
/// Requests in flight while submitting.
const SUBMITTERS: usize = 32;

fn noop() -> Plugins {
    Plugins::new().example("noop", "timeout_ms = 1_000\nmax_attempts = 5\n")
}

/// Submits job `n` (keyed `job-n`, so a resend after a lost answer names
/// the same job) to the live hosts in turn, moving on to the next host when
/// one does not answer. Returns its id.
async fn submit(http: &reqwest::Client, urls: &[String], killed: &AtomicBool, n: usize) -> i64 {
    for attempt in 0..100 {
        let live = if killed.load(Ordering::Acquire) {
            &urls[..HOSTS - 1]
        } else {
            urls
        };
        let url = &live[(n + attempt) % live.len()];
        let sent = http
            .post(format!("{url}/jobs/noop"))
            .header("Idempotency-Key", format!("job-{n}"))
            .body(format!(r#"{{"n":{n}}}"#))
            .send()
            .await;
        let Ok(resp) = sent else { continue };
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        match status {
            200 | 202 => return body["jobId"].as_i64().expect("jobId"),
            // The store was briefly out of reach: try again.
            503 => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => panic!("job {n}: {status} {body}"),
        }
    }
    panic!("job {n}: no host accepted it")
}

/// Three hosts share 5,000 jobs submitted round-robin; one is killed with
/// SIGKILL halfway through. Every job ends succeeded; the jobs the killed
/// host held run again on the others once their leases expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_three_hosts_lose_no_job_when_one_is_killed() {
    let db = TestDb::create().await;
    let flags = [
        "--database-url",
        db.url.as_str(),
        "--lease-grace-ms",
        "1000",
        "--reap-interval-ms",
        "200",
        "--poll-interval-ms",
        "200",
        "--pg-max-connections",
        "8",
    ];
    let mut hosts = Vec::new();
    for _ in 0..HOSTS {
        hosts.push(Server::start(noop(), &flags).await);
    }
    let urls: Arc<Vec<String>> = Arc::new(hosts.iter().map(|h| h.url.clone()).collect());
    let killed = Arc::new(AtomicBool::new(false));
    let submitted = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut submitters = tokio::task::JoinSet::new();
    for first in 0..SUBMITTERS {
        let (urls, killed, submitted) = (urls.clone(), killed.clone(), submitted.clone());
        submitters.spawn(async move {
            let http = reqwest::Client::new();
            let mut ids = Vec::new();
            for n in (first..JOBS).step_by(SUBMITTERS) {
                ids.push(submit(&http, &urls, &killed, n).await);
                submitted.fetch_add(1, Ordering::Relaxed);
            }
            ids
        });
    }
    // Halfway through the submissions, the last host dies.
    while submitted.load(Ordering::Relaxed) < JOBS / 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let running_at_kill = running(&db).await;
    killed.store(true, Ordering::Release);
    let status = hosts[HOSTS - 1].signal_and_wait(libc::SIGKILL);
    assert_eq!(status.code(), None, "killed by a signal");
    let killed_at = Instant::now();

    let mut ids = HashSet::new();
    while let Some(done) = submitters.join_next().await {
        ids.extend(done.unwrap());
    }
    assert_eq!(ids.len(), JOBS, "one job per submission, resends included");
    let submit_secs = started.elapsed().as_secs_f64();

    // Every job ends succeeded: wait for it on a surviving host.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (status, counts) = hosts[0].admin_get("/admin/metrics/jobs").await;
        assert_eq!(status, 200, "{counts}");
        if counts["succeeded"].as_u64() == Some(JOBS as u64) {
            assert_eq!(counts["total"].as_u64(), Some(JOBS as u64), "{counts}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every job succeeded: {counts}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = killed_at.elapsed().as_secs_f64();

    // The truth behind the API.
    let mut conn = db.connect().await;
    let (total, succeeded, attempts, twice): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE state = 'succeeded'),
                SUM(attempt)::BIGINT, COUNT(*) FILTER (WHERE attempt > 1)
         FROM jobs",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((total, succeeded), (JOBS as i64, JOBS as i64));
    let reaped: i64 = sqlx::query_scalar(
        "SELECT COUNT(DISTINCT e.job_id) FROM job_events AS e
         JOIN event_actors AS a ON a.id = e.actor_id WHERE a.name = 'reaper'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let completers: i64 = sqlx::query_scalar(
        "SELECT COUNT(DISTINCT actor_id) FROM job_events WHERE to_state = 'succeeded'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(completers >= 2, "the hosts shared the work: {completers}");
    // A job that ran twice was reaped from the killed host.
    assert!(twice <= reaped, "{twice} ran twice, {reaped} reaped");

    // Any host answers for any job.
    let some: Vec<i64> = ids.iter().copied().take(20).collect();
    for id in some {
        for host in &hosts[..HOSTS - 1] {
            assert_eq!(host.job(id).await["status"], "succeeded");
        }
    }
    eprintln!(
        "scale-out: {JOBS} jobs, {HOSTS} hosts (one killed while {running_at_kill} were running), \
         submitted in {submit_secs:.1} s; {attempts} attempts, {twice} jobs ran twice \
         ({reaped} reaped); {completers} hosts completed jobs; all succeeded {recovered:.1} s after the kill"
    );
}

/// How many jobs are leased right now, from the store's own table.
async fn running(db: &TestDb) -> i64 {
    let mut conn = db.connect().await;
    sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE state = 'running'")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// A host whose database connections are killed (`pg_terminate_backend`)
/// mid-run, and later cut off from the database for a while, recovers by
/// itself: submissions during the outage get `503 store_unavailable`, every
/// job accepted before, during or after ends succeeded, and the host is
/// never restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_host_rides_out_killed_connections_and_an_outage() {
    let db = TestDb::create().await;
    let (upstream, _) = db.via("unused:0");
    let mut proxy = Proxy::start(&upstream).await;
    let (_, url) = db.via(&proxy.addr.to_string());
    let flags = [
        "--database-url",
        url.as_str(),
        "--poll-interval-ms",
        "100",
        "--pg-acquire-timeout-ms",
        "500",
        // A claim whose answer the cut loses has still leased its jobs:
        // they rerun when the lease expires (timeout 1 s + this).
        "--lease-grace-ms",
        "2000",
    ];
    let host = Server::start(noop(), &flags).await;
    let mut accepted = Vec::new();
    let submit_some = |n: usize| {
        let host = &host;
        async move {
            let mut ids = Vec::new();
            for i in 0..n {
                ids.push(host.submit("noop", &format!(r#"{{"i":{i}}}"#)).await);
            }
            ids
        }
    };
    accepted.extend(submit_some(50).await);

    // Every connection of the test's database killed, jobs in flight.
    let batch: Vec<String> = (0..500).map(|b| format!(r#"{{"b":{b}}}"#)).collect();
    let batch_ids = host.submit_batch("noop", batch.iter().cloned()).await;
    accepted.extend(&batch_ids);
    let mut admin = db.connect().await;
    let killed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(killed > 0, "the host had connections to kill");
    accepted.extend(submit_some(20).await);

    // The network between host and database cut: refused, not accepted.
    proxy.cut().await;
    let cut_at = std::time::Instant::now();
    let mut refused = 0;
    for i in 0..5 {
        let (status, body) = host
            .post("/jobs/noop", &format!(r#"{{"outage":{i}}}"#))
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (503, Some("store_unavailable")),
            "{body}"
        );
        refused += 1;
    }
    let (status, _) = host.get("/healthz").await;
    assert_eq!(status, 200, "the host itself keeps serving");
    proxy.restore().await;
    let outage = cut_at.elapsed().as_secs_f64();

    // Back: the first submission after the outage goes through, and runs.
    let restored_at = std::time::Instant::now();
    let first = loop {
        let (status, body) = host.post("/jobs/noop", r#"{"after":true}"#).await;
        match status {
            202 => break body["jobId"].as_i64().unwrap(),
            503 => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => panic!("{status} {body}"),
        }
        assert!(
            restored_at.elapsed() < Duration::from_secs(60),
            "never recovered"
        );
    };
    host.wait_for(first, "succeeded").await;
    let recovered = restored_at.elapsed().as_secs_f64();
    accepted.push(first);
    for id in &accepted {
        host.wait_for(*id, "succeeded").await;
    }
    let outage_jobs: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE payload LIKE '%outage%'")
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert_eq!(outage_jobs, 0, "a refused submission wrote nothing");
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(
        total,
        accepted.len() as i64,
        "one job per acceptance, none twice"
    );
    // Each id of the batch names the payload at its position.
    let payloads: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, payload FROM jobs WHERE id = ANY($1)")
            .bind(&batch_ids)
            .fetch_all(&mut admin)
            .await
            .unwrap();
    let payloads: std::collections::HashMap<i64, String> = payloads.into_iter().collect();
    for (id, payload) in batch_ids.iter().zip(&batch) {
        assert_eq!(&payloads[id], payload, "job {id}");
    }
    eprintln!(
        "outage: {killed} connections killed mid-run, then {outage:.1} s cut off \
         ({refused} submissions refused with 503); a new job ran {recovered:.2} s after the \
         network came back; all {} accepted jobs succeeded",
        accepted.len()
    );
}

/// A Redis key prefix of the test's own, and its keys deleted at the end
/// (the test server is shared: never FLUSHALL it).
struct RedisKeys {
    url: String,
    prefix: String,
}

impl RedisKeys {
    fn new() -> RedisKeys {
        let url = std::env::var("JOBHOST_TEST_REDIS_URL").unwrap_or_else(|_| {
            panic!("JOBHOST_TEST_REDIS_URL is not set; run the tests with `cargo xtask test`")
        });
        let prefix = format!(
            "jobhost-test-{}-{:08x}",
            std::process::id(),
            crate::support::rand_u32()
        );
        RedisKeys { url, prefix }
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis_conn(&self.url).await
    }

    /// Deletes every key of the prefix: what FLUSHALL does to this
    /// deployment. Returns how many there were.
    async fn flush(&self) -> usize {
        flush(&self.url, &self.prefix).await
    }
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

async fn flush(url: &str, prefix: &str) -> usize {
    let mut conn = redis_conn(url).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    keys.len()
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        let _ = crate::support::on_own_runtime(async move { flush(&url, &prefix).await });
    }
}

/// The flags of a host on the test's database, dispatching through Redis
/// under the test's prefix.
fn redis_flags<'a>(db: &'a TestDb, keys: &'a RedisKeys) -> Vec<&'a str> {
    vec![
        "--database-url",
        db.url.as_str(),
        "--redis-url",
        keys.url.as_str(),
        "--redis-prefix",
        keys.prefix.as_str(),
    ]
}

/// The `noop` type's stream, as `GET /admin/metrics/queue` shows it.
async fn noop_stream(host: &Server) -> serde_json::Value {
    let (status, queue) = host.admin_get("/admin/metrics/queue").await;
    assert_eq!(status, 200, "{queue}");
    queue["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "noop")
        .map(|t| t["stream"].clone())
        .unwrap_or_default()
}

/// Two hosts dispatch through Redis Streams: every job is hinted on its
/// type's stream and acknowledged once claimed; the deployment's keys are
/// flushed mid-run and every job still completes (the streams and groups
/// come back by themselves); a job that dies is mirrored on the DLQ stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_hosts_dispatch_through_streams_and_survive_a_flush() {
    let db = TestDb::create().await;
    let keys = RedisKeys::new();
    let flags = redis_flags(&db, &keys);
    let plugins = || {
        Plugins::new()
            .example("noop", "timeout_ms = 1_000\n")
            .testing("always_fatal", "max_attempts = 1\n")
    };
    let a = Server::start(plugins(), &flags).await;
    let b = Server::start(plugins(), &flags).await;
    let hosts = [&a, &b];
    let mut ids = Vec::new();
    for i in 0..300 {
        ids.push(
            hosts[i % 2]
                .submit("noop", &format!(r#"{{"i":{i}}}"#))
                .await,
        );
    }
    let flushed = keys.flush().await;
    assert!(flushed >= 1, "the streams existed before the flush");
    for i in 300..600 {
        ids.push(
            hosts[i % 2]
                .submit("noop", &format!(r#"{{"i":{i}}}"#))
                .await,
        );
    }
    for id in &ids {
        hosts[(*id as usize) % 2].wait_for(*id, "succeeded").await;
    }
    // The stream and its group are back, and every hint read was
    // acknowledged. (Not necessarily both hosts as consumers: Redis 7.0
    // registers a consumer when a read serves it, and after the flush one
    // host may take all 300 new entries in one read of up to 512 while the
    // other is still pausing after its NOGROUP.)
    let deadline = Instant::now() + Duration::from_secs(60);
    let stream = loop {
        let stream = noop_stream(&a).await;
        if stream["length"].as_u64() >= Some(300)
            && stream["consumers"].as_u64() >= Some(1)
            && stream["pending"].as_u64() == Some(0)
        {
            break stream;
        }
        assert!(Instant::now() < deadline, "stream never settled: {stream}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The dead-letter queue, mirrored.
    let dead = a.submit("always_fatal", "{}").await;
    a.wait_for(dead, "dead").await;
    let mut conn = keys.conn().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(format!("{}:dlq:always_fatal", keys.prefix))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        let mirrored = entries.ids.iter().any(|e| {
            e.get::<i64>("job") == Some(dead)
                && e.get::<String>("error")
                    .is_some_and(|m| m.contains("never succeed"))
        });
        if mirrored {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "job {dead} never reached the DLQ stream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for host in hosts {
        let metrics = host.metrics_text().await;
        assert!(
            metrics.lines().any(|l| l == "jobhost_redis_up 1"),
            "Redis is up again for every host"
        );
    }
    eprintln!("redis: 600 jobs on 2 hosts, {flushed} keys flushed after 300; after: {stream}");
}

/// With Redis unreachable (a closed port) from the start, a host still
/// takes and runs every job, and says so in its metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_unreachable_jobs_still_complete() {
    let db = TestDb::create().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let redis_url = format!("redis://127.0.0.1:{closed}");
    let flags = [
        "--database-url",
        db.url.as_str(),
        "--redis-url",
        redis_url.as_str(),
        "--poll-interval-ms",
        "200",
    ];
    let host = Server::start(noop(), &flags).await;
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(host.submit("noop", &format!(r#"{{"i":{i}}}"#)).await);
    }
    for id in &ids {
        host.wait_for(*id, "succeeded").await;
    }
    let metrics = host.metrics_text().await;
    let errors: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("jobhost_redis_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(errors > 0.0, "Redis failures are counted:\n{metrics}");
    assert!(
        metrics.lines().any(|l| l == "jobhost_redis_up 0"),
        "and shown as down"
    );
}

/// Hints a host read and never acted on (it is paused) are taken over by
/// another host once idle for `--redis-takeover-ms`, and acknowledged
/// there: none is left pending with the silent host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_a_silent_hosts_hints_are_taken_over() {
    let db = TestDb::create().await;
    let keys = RedisKeys::new();
    let mut flags = redis_flags(&db, &keys);
    flags.extend(["--redis-takeover-ms", "500"]);
    let mut paused_flags = flags.clone();
    paused_flags.push("--paused");
    let silent = Server::start(noop(), &paused_flags).await;
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(silent.submit("noop", &format!(r#"{{"i":{i}}}"#)).await);
    }
    // The only reader so far is the paused host: it reads the first hints,
    // acts on none (it claims nothing) and so reads no more; the rest wait
    // in the stream.
    let deadline = Instant::now() + Duration::from_secs(60);
    while noop_stream(&silent).await["pending"].as_u64().unwrap_or(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "the paused host never read the hints"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let active = Server::start(noop(), &flags).await;
    for id in &ids {
        active.wait_for(*id, "succeeded").await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = noop_stream(&active).await;
        if now["pending"].as_u64() == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hints left with the paused host: {now}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let read: f64 = active
        .metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with("jobhost_redis_hints_read_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        read >= 50.0,
        "the active host took the 50 hints over: {read}"
    );
}

/// The entries of one of the test's streams that name job `id`.
async fn entries_for(keys: &RedisKeys, stream: &str, id: i64) -> Vec<redis::streams::StreamId> {
    let mut conn = keys.conn().await;
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("{}:{stream}", keys.prefix))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    entries
        .ids
        .into_iter()
        .filter(|e| e.get::<i64>("job") == Some(id))
        .collect()
}

/// What maintenance moves reaches the streams too: a delayed job is hinted
/// on its type's stream when the promoter queues it (its submission was not
/// hinted: it was not ready), and a job whose host was killed on its last
/// attempt is mirrored on the DLQ stream when the reaper buries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_the_promoter_and_the_reaper_publish() {
    let db = TestDb::create().await;
    let keys = RedisKeys::new();
    let mut flags = redis_flags(&db, &keys);
    flags.extend(["--lease-grace-ms", "300", "--reap-interval-ms", "200"]);
    let plugins = || {
        Plugins::new()
            .example("noop", "timeout_ms = 1_000\n")
            .testing("sleeper", "max_attempts = 1\ntimeout_ms = 3_000\n")
    };
    // The survivor starts first, its workers paused, so the doomed host is
    // killed well within the attempt's timeout however slow a start is.
    let mut paused = flags.clone();
    paused.push("--paused");
    let survivor = Server::start(plugins(), &paused).await;
    let mut doomed = Server::start(plugins(), &flags).await;
    let buried = doomed.submit("sleeper", r#"{"ms":60000}"#).await;
    doomed.wait_for(buried, "running").await;
    doomed.signal_and_wait(libc::SIGKILL);
    let (status, _) = survivor.admin_post("/admin/workers/resume").await;
    assert_eq!(status, 200);

    let (status, body) = survivor.post("/jobs/noop?delay_ms=300", "{}").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "scheduled");
    let delayed = body["jobId"].as_i64().unwrap();
    survivor.wait_for(delayed, "succeeded").await;
    let job = survivor.wait_for(buried, "dead").await;
    assert!(
        job["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("lease expired")),
        "{job}"
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hinted = entries_for(&keys, "stream:noop", delayed).await;
        let mirrored = entries_for(&keys, "dlq:sleeper", buried).await;
        let error_kept = mirrored.iter().any(|e| {
            e.get::<String>("error")
                .is_some_and(|m| m.contains("lease expired"))
        });
        if hinted.len() == 1 && error_kept {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "delayed job {delayed} hinted {} times; buried job {buried} mirrored: {error_kept}",
            hinted.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// In scale-out, a plugin uploaded to one host is published in the
/// database and every host converges on it: a new version, a new type, a
/// deletion, with the manifest as uploaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_uploaded_plugins_reach_every_host() {
    use crate::plugins::{delete_plugin, digest, noop_v2, plugin, put_plugin, wait_for_plugin};
    use crate::support::plugin_bytes;

    let db = TestDb::create().await;
    let flags = db.host_flags();
    let a = Server::start(noop(), &flags).await;
    let mut b = Server::start(noop(), &flags).await;
    let v1 = digest(&plugin_bytes("examples", "noop"));
    assert_eq!(plugin(&b, "noop").await.unwrap()["digest"], v1.as_str());

    // A new version, uploaded to A, reaches B with its manifest.
    let v2 = noop_v2();
    let manifest = "timeout_ms = 1_000\nconcurrency = 8\n";
    let (status, body) = put_plugin(&a, "noop", v2.clone(), Some(manifest)).await;
    assert_eq!(status, 200, "{body}");
    wait_for_plugin(&b, "noop", "on v2", |p| {
        p.is_some_and(|p| p["digest"] == digest(&v2).as_str())
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(b.plugins_dir().join("noop.toml")).unwrap(),
        manifest
    );
    assert_eq!(
        std::fs::read(b.plugins_dir().join("noop.wasm")).unwrap(),
        v2
    );
    let id = b.submit("noop", "{}").await;
    let job = b.wait_for(id, "succeeded").await;
    assert_eq!(job["pluginDigest"], digest(&v2).as_str());

    // A new type, uploaded to B, reaches A; deleted on A, it leaves B.
    let sleeper = plugin_bytes("testing", "testing");
    let (status, body) = put_plugin(&b, "sleeper", sleeper.clone(), None).await;
    assert_eq!(status, 200, "{body}");
    wait_for_plugin(&a, "sleeper", "added", |p| {
        p.is_some_and(|p| p["digest"] == digest(&sleeper).as_str())
    })
    .await;
    let id = a.submit("sleeper", r#"{"ms": 1}"#).await;
    a.wait_for(id, "succeeded").await;
    let (status, body) = delete_plugin(&a, "sleeper").await;
    assert_eq!(status, 200, "{body}");
    wait_for_plugin(&b, "sleeper", "removed", |p| p.is_none()).await;
    assert!(!b.plugins_dir().join("sleeper.wasm").exists());
    // Deleted everywhere: deleting again finds nothing.
    let (status, _) = delete_plugin(&b, "sleeper").await;
    assert_eq!(status, 404);

    // A host that was down during an upload catches up when it starts,
    // whatever its own directory holds.
    b.signal_and_wait(libc::SIGTERM);
    let v1_bytes = plugin_bytes("examples", "noop");
    let (status, body) = put_plugin(&a, "noop", v1_bytes.clone(), Some(manifest)).await;
    assert_eq!(status, 200, "{body}");
    b.restart();
    wait_for_plugin(&b, "noop", "back on v1", |p| {
        p.is_some_and(|p| p["digest"] == v1.as_str())
    })
    .await;
    assert_eq!(
        std::fs::read(b.plugins_dir().join("noop.wasm")).unwrap(),
        v1_bytes
    );

    // The catalog keeps only the .wasm files a type runs: v2's and the
    // deleted type's are gone.
    let mut conn = db.connect().await;
    let kept: Vec<String> = sqlx::query_scalar("SELECT digest FROM plugin_blobs")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, vec![v1.clone()]);
}

/// A type paused through one host is not claimed by any host; resumed
/// through another, its jobs run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_type_paused_on_one_host_waits_on_every_host() {
    let db = TestDb::create().await;
    let flags = db.host_flags();
    let plugins = || noop().testing("counter", "");
    let a = Server::start(plugins(), &flags).await;
    let b = Server::start(plugins(), &flags).await;
    let (status, body) = a.admin_post("/admin/queues/noop/pause").await;
    assert_eq!(status, 200, "{body}");
    // B hears of it from the store.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = b.admin_get("/admin/metrics/queue").await;
        let noop = body["types"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "noop")
            .cloned();
        if noop.is_some_and(|t| t["paused"] == true) {
            break;
        }
        assert!(Instant::now() < deadline, "B never saw the pause: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut waiting = Vec::new();
    for host in [&a, &b, &a, &b] {
        waiting.push(host.submit("noop", "{}").await);
    }
    // Jobs of another type, submitted after them to both hosts, run.
    for host in [&a, &b] {
        let id = host.submit("counter", "{}").await;
        host.wait_for(id, "succeeded").await;
    }
    for id in &waiting {
        assert_eq!(b.job(*id).await["status"], "queued", "job {id} was claimed");
    }
    let (status, body) = b.admin_post("/admin/queues/noop/resume").await;
    assert_eq!(status, 200, "{body}");
    for id in &waiting {
        a.wait_for(*id, "succeeded").await;
    }
}

/// A running job cancelled through a host that does not run it: the host
/// that runs it stops the attempt (it sees the lease gone), the job ends
/// `cancelled` and is not retried, and the freed slot runs the next job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_job_cancelled_on_one_host_stops_running_on_another() {
    let db = TestDb::create().await;
    let flags = db.host_flags();
    // One attempt at a time, for ten minutes if nobody stops it.
    let plugins = || Plugins::new().testing("sleeper", "concurrency = 1\ntimeout_ms = 600000\n");
    let runner = Server::start(plugins(), &flags).await;
    let mut paused_flags = flags.to_vec();
    paused_flags.push("--paused");
    let other = Server::start(plugins(), &paused_flags).await;
    let long = other.submit("sleeper", r#"{"ms": 600000}"#).await;
    runner.wait_for(long, "running").await;
    let (status, body) = other
        .admin_post(&format!("/admin/jobs/{long}/cancel"))
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("cancelled")),
        "{body}"
    );
    // The runner's only slot comes free: the next job runs.
    let next = other.submit("sleeper", r#"{"ms": 1}"#).await;
    runner.wait_for(next, "succeeded").await;
    let job = runner.job(long).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(job["attempts"], 1, "not retried: {job}");
    let metrics = runner.metrics_text().await;
    assert!(
        metrics.contains("jobhost_attempts_interrupted_total{type=\"sleeper\"} 1"),
        "{metrics}"
    );
}

/// A host whose outcomes cannot be recorded for a while (each waits for
/// the store) stops claiming once it holds four leases per slot: the
/// running attempts and the outcomes waiting for their commit. It does not
/// lease everything queued meanwhile, whose leases would expire before
/// their outcomes could be recorded. Once outcomes are recorded again,
/// every job succeeds on its first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_host_slow_to_record_outcomes_leases_no_more_than_it_can_finish() {
    const JOBS: usize = 60;
    let db = TestDb::create().await;
    let flags = [&db.host_flags()[..], &["--paused", "--concurrency", "4"]].concat();
    let host = Server::start(noop(), &flags).await;
    let mut ids = Vec::new();
    for _ in 0..JOBS {
        ids.push(host.submit("noop", "{}").await);
    }
    // Every outcome's history row waits for a lock this connection holds.
    let mut holder = db.connect().await;
    sqlx::raw_sql(
        "SELECT pg_advisory_lock(4242);
         CREATE FUNCTION hold_outcomes() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NULL; END $$;
         CREATE TRIGGER hold_outcomes AFTER INSERT ON job_events FOR EACH ROW
         WHEN (NEW.from_state = 'running') EXECUTE FUNCTION hold_outcomes();",
    )
    .execute(&mut holder)
    .await
    .unwrap();
    let (status, body) = host.admin_post("/admin/workers/resume").await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while running(&db).await < 16 {
        assert!(Instant::now() < deadline, "the host never leased 16 jobs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Time for many claim rounds (a slot is free all along): none leases more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(running(&db).await, 16, "4 slots hold at most 16 leases");
    // The counter appears once it is first incremented.
    let metrics = host.metrics_text().await;
    assert!(
        metrics.contains("jobhost_claims_held_back_total "),
        "the held-back claims are counted: {metrics}"
    );
    sqlx::query("SELECT pg_advisory_unlock(4242)")
        .execute(&mut holder)
        .await
        .unwrap();
    for id in ids {
        let job = host.wait_for(id, "succeeded").await;
        assert_eq!(job["attempts"], 1, "{job}");
    }
}

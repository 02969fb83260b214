//! Schedules (cron) on the real binary: managed over the admin API, one job
//! per tick, the missed-tick policy after downtime, and one job per tick
//! with three hosts on PostgreSQL.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Plugins, Server, TestDb};

/// Every second.
const EVERY_SECOND: &str = "* * * * * *";

/// The jobs of `job_type` (newest first, up to 1,000).
async fn jobs_of(host: &Server, job_type: &str) -> Vec<Value> {
    let (status, body) = host
        .admin_get(&format!("/jobs?type={job_type}&limit=1000"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["jobs"].as_array().unwrap().clone()
}

/// The tick a schedule's job was made for, from its idempotency key
/// (`schedule:<name>:<RFC 3339>`): a whole second, so two hosts name one
/// tick alike.
fn tick_of(job: &Value, schedule: &str) -> SystemTime {
    let key = job["idempotencyKey"].as_str().unwrap_or_default();
    let at = key
        .strip_prefix(&format!("schedule:{schedule}:"))
        .unwrap_or_else(|| panic!("not a tick of {schedule}: {job}"));
    let tick = humantime::parse_rfc3339(at).unwrap_or_else(|e| panic!("{at}: {e}"));
    let since_epoch = tick.duration_since(std::time::UNIX_EPOCH).unwrap();
    assert_eq!(
        since_epoch.subsec_nanos(),
        0,
        "a tick on a whole second: {key}"
    );
    tick
}

/// Waits until `host` has at least `n` jobs of `job_type`; returns them.
async fn wait_for_jobs(host: &Server, job_type: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = jobs_of(host, job_type).await;
        if jobs.len() >= n {
            return jobs;
        }
        assert!(
            Instant::now() < deadline,
            "only {} {job_type} jobs: {jobs:?}",
            jobs.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An operator defines, lists, replaces and deletes a schedule; it makes a
/// job a tick, each under its tick's key, which run; bad definitions are
/// refused with a named error and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_makes_a_job_per_tick_and_is_managed_over_the_api() {
    let host = Server::start(Plugins::new().testing("counter", ""), &[]).await;
    let definition = json!({"type": "counter", "cron": EVERY_SECOND, "payload": {"from": "cron"}});
    let (status, created) = host
        .admin_send(Method::PUT, "/admin/schedules/tick", Some(&definition))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        (&created["name"], &created["timezone"], &created["source"]),
        (&json!("tick"), &json!("UTC"), &json!("api"))
    );
    assert!(created["nextRunAt"].is_string(), "{created}");

    let jobs = wait_for_jobs(&host, "counter", 3).await;
    let ticks: BTreeSet<SystemTime> = jobs.iter().map(|j| tick_of(j, "tick")).collect();
    assert_eq!(ticks.len(), jobs.len(), "one job per tick: {jobs:?}");
    assert!(jobs.iter().all(|j| j["payload"] == json!({"from": "cron"})));
    let newest = jobs.iter().map(|j| j["jobId"].as_i64().unwrap()).max();
    let first = jobs
        .iter()
        .map(|j| j["jobId"].as_i64().unwrap())
        .min()
        .unwrap();
    host.wait_for(first, "succeeded").await;
    let (status, shown) = host.admin_get("/admin/schedules/tick").await;
    assert_eq!(status, 200, "{shown}");
    assert!(shown["lastRunAt"].is_string(), "{shown}");
    assert!(
        shown["lastJobId"].as_i64() >= newest,
        "{shown} vs {newest:?}"
    );

    // Replaced with the same cadence: 200, the new payload.
    let replaced =
        json!({"type": "counter", "cron": EVERY_SECOND, "payload": {"from": "cron", "v": 2}});
    let (status, body) = host
        .admin_send(Method::PUT, "/admin/schedules/tick", Some(&replaced))
        .await;
    assert_eq!((status, &body["payload"]["v"]), (200, &json!(2)), "{body}");

    // A daily one in Paris: 09:00 there is 07:00 or 08:00 UTC, never 09:00.
    let paris = json!({"type": "counter", "cron": "0 9 * * *", "timezone": "Europe/Paris"});
    let (status, body) = host
        .admin_send(Method::PUT, "/admin/schedules/morning", Some(&paris))
        .await;
    assert_eq!(status, 201, "{body}");
    let next = body["nextRunAt"].as_str().unwrap();
    assert!(
        next.contains("T07:00:00") || next.contains("T08:00:00"),
        "{body}"
    );
    let (_, listed) = host.admin_get("/admin/schedules").await;
    let names: Vec<&str> = listed["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["morning", "tick"]);

    // Bad definitions: a named error, nothing written.
    for (path, body, status, code) in [
        (
            "/admin/schedules/Bad%20Name",
            definition.clone(),
            400,
            "invalid_schedule",
        ),
        (
            "/admin/schedules/x",
            json!({"type": "counter"}),
            400,
            "invalid_schedule",
        ),
        (
            "/admin/schedules/x",
            json!({"type": "counter", "cron": "61 * * * *"}),
            400,
            "invalid_schedule",
        ),
        (
            "/admin/schedules/x",
            json!({"type": "counter", "cron": "0 9 * *"}),
            400,
            "invalid_schedule",
        ),
        (
            "/admin/schedules/x",
            json!({"type": "counter", "cron": "0 9 * * *", "timezone": "Mars/Olympus"}),
            400,
            "invalid_schedule",
        ),
        (
            "/admin/schedules/x",
            json!({"type": "counter", "cron": "0 9 * * *", "every": "day"}),
            400,
            "invalid_schedule",
        ),
        (
            "/admin/schedules/x",
            json!({"type": "nope", "cron": "0 9 * * *"}),
            404,
            "unknown_job_type",
        ),
    ] {
        let (got, err) = host.admin_send(Method::PUT, path, Some(&body)).await;
        assert_eq!(
            (got, err["code"].as_str()),
            (status, Some(code)),
            "{body}: {err}"
        );
    }
    let (_, after) = host.admin_get("/admin/schedules").await;
    assert_eq!(after["schedules"].as_array().unwrap().len(), 2, "{after}");
    let (status, err) = host.admin_get("/admin/schedules/x").await;
    assert_eq!(
        (status, err["code"].as_str()),
        (404, Some("schedule_not_found"))
    );

    // Deleted: no more jobs; its jobs stay.
    let (status, body) = host
        .admin_send(Method::DELETE, "/admin/schedules/tick", None)
        .await;
    assert_eq!((status, &body["deleted"]), (200, &json!(true)), "{body}");
    let (status, err) = host
        .admin_send(Method::DELETE, "/admin/schedules/tick", None)
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (404, Some("schedule_not_found"))
    );
    let left = jobs_of(&host, "counter").await.len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(jobs_of(&host, "counter").await.len(), left);
}

/// A plugin's manifest brings its schedules: stored when it loads (source
/// `plugin:<name>`), firing like any other, and deleted when a new version
/// of the manifest drops them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_manifest_brings_its_schedules_and_takes_them_away() {
    let manifest =
        "[[schedules]]\nname = \"heartbeat\"\ncron = \"* * * * * *\"\npayload = { beat = true }\n";
    let host = Server::start(Plugins::new().testing("counter", manifest), &[]).await;
    let jobs = wait_for_jobs(&host, "counter", 2).await;
    assert!(
        jobs.iter().all(|j| j["payload"] == json!({"beat": true})),
        "{jobs:?}"
    );
    let ticks: BTreeSet<SystemTime> = jobs.iter().map(|j| tick_of(j, "heartbeat")).collect();
    assert_eq!(ticks.len(), jobs.len());
    let (_, shown) = host.admin_get("/admin/schedules/heartbeat").await;
    assert_eq!(
        (&shown["source"], &shown["type"], &shown["cron"]),
        (
            &json!("plugin:counter"),
            &json!("counter"),
            &json!(EVERY_SECOND)
        ),
        "{shown}"
    );
    // Changed in the manifest only: the API refuses to replace or delete it.
    let other = json!({"type": "counter", "cron": "0 9 * * *"});
    let (status, err) = host
        .admin_send(Method::PUT, "/admin/schedules/heartbeat", Some(&other))
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (400, Some("invalid_schedule")),
        "{err}"
    );
    let (status, err) = host
        .admin_send(Method::DELETE, "/admin/schedules/heartbeat", None)
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (400, Some("invalid_schedule")),
        "{err}"
    );
    assert!(
        err["message"].as_str().unwrap().contains("manifest"),
        "{err}"
    );
    // The same plugin without the schedule: the watcher reloads it, and the
    // schedule goes.
    std::fs::write(
        host.plugins_dir().join("counter.toml"),
        "max_attempts = 2\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = host.admin_get("/admin/schedules/heartbeat").await;
        if status == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the schedule outlived its manifest"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// After downtime a schedule fires once, for the latest tick it missed,
/// not once per missed tick; then it keeps its cadence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_downtime_a_schedule_fires_once_not_once_per_missed_tick() {
    let mut host = Server::start(Plugins::new().testing("counter", ""), &[]).await;
    let definition = json!({"type": "counter", "cron": EVERY_SECOND});
    let (status, body) = host
        .admin_send(Method::PUT, "/admin/schedules/tick", Some(&definition))
        .await;
    assert_eq!(status, 201, "{body}");
    wait_for_jobs(&host, "counter", 1).await;
    host.signal_and_wait(libc::SIGTERM);
    let stopped = SystemTime::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let restarted = SystemTime::now();
    host.restart();
    let before = jobs_of(&host, "counter").await.len();
    let jobs = wait_for_jobs(&host, "counter", before + 2).await;
    // Ticks well inside the downtime: a job per missed tick would put
    // three or four here.
    let inside: Vec<SystemTime> = jobs
        .iter()
        .map(|j| tick_of(j, "tick"))
        .filter(|t| {
            *t > stopped + Duration::from_secs(1) && *t < restarted - Duration::from_secs(1)
        })
        .collect();
    assert!(inside.len() <= 1, "{inside:?} of {jobs:?}");
}

/// Three hosts share one PostgreSQL and each runs the scheduler: every
/// tick makes one job, whichever host fires it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_schedule_makes_one_job_per_tick_across_three_hosts() {
    let db = TestDb::create().await;
    let flags = db.host_flags();
    let mut hosts = Vec::new();
    for _ in 0..3 {
        hosts.push(Server::start(Plugins::new().testing("counter", ""), &flags).await);
    }
    let definition = json!({"type": "counter", "cron": EVERY_SECOND});
    let (status, body) = hosts[1]
        .admin_send(Method::PUT, "/admin/schedules/tick", Some(&definition))
        .await;
    assert_eq!(status, 201, "{body}");
    wait_for_jobs(&hosts[0], "counter", 6).await;
    let (status, _) = hosts[2]
        .admin_send(Method::DELETE, "/admin/schedules/tick", None)
        .await;
    assert_eq!(status, 200);
    // A pass that read the schedule before the delete may still fire.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let jobs = jobs_of(&hosts[0], "counter").await;
    let ticks: BTreeSet<SystemTime> = jobs.iter().map(|j| tick_of(j, "tick")).collect();
    assert_eq!(ticks.len(), jobs.len(), "one job per tick: {jobs:?}");
    // Each host counts the jobs it created: together, every job once.
    let mut created = 0;
    for host in &hosts {
        let metrics = host.metrics_text().await;
        created += metrics
            .lines()
            .find(|l| l.starts_with("jobhost_schedule_jobs_total{schedule=\"tick\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0, |n| n.parse::<u64>().unwrap());
    }
    assert_eq!(created, jobs.len() as u64, "{jobs:?}");
}

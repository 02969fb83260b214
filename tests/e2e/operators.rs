//! The operator's side over HTTP: listing jobs, and replaying the
//! dead-letter queue in bulk once the cause is fixed.

use serde_json::{Value, json};

use crate::plugins::put_plugin;
use crate::support::{ADMIN_TOKEN, Plugins, Server, jobhost, plugin_bytes};

/// The ids of a listing page, and its cursor.
fn page(body: &Value) -> (Vec<i64>, Option<String>) {
    let ids = body["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no jobs in {body}"))
        .iter()
        .map(|j| j["jobId"].as_i64().unwrap())
        .collect();
    (ids, body["nextCursor"].as_str().map(str::to_owned))
}

/// An operator finds why jobs of one type die, fixes the plugin, and
/// replays exactly those dead jobs in one call; they succeed. Bad filters
/// and queries change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_jobs_and_replay_the_dead_letter_queue() {
    // A broken `noop`: the testing plugin has no behaviour for that type.
    let plugins = Plugins::new()
        .testing("noop", "max_attempts = 1\n")
        .testing("flaky", "max_attempts = 1\n");
    let host = Server::start(plugins, &[]).await;
    let mut noops = Vec::new();
    for i in 0..5 {
        noops.push(host.submit("noop", &format!(r#"{{"i":{i}}}"#)).await);
    }
    let flaky = [
        host.submit("flaky", "{}").await,
        host.submit("flaky", "{}").await,
    ];
    for id in noops.iter().chain(&flaky) {
        host.wait_for(*id, "dead").await;
    }

    // The listing is the operator's: without the token, nothing.
    let (status, body) = host.get("/jobs?state=dead").await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));

    // Dead noop jobs, newest first, two a page, with their errors.
    let mut seen = Vec::new();
    let mut path = "/jobs?state=dead&type=noop&limit=2".to_owned();
    loop {
        let (status, body) = host.admin_get(&path).await;
        assert_eq!(status, 200, "{body}");
        for job in body["jobs"].as_array().unwrap() {
            assert_eq!(job["status"], "dead", "{job}");
            let error = job["lastError"].as_str().unwrap();
            assert!(error.contains("no behaviour for job type noop"), "{job}");
            assert!(job.get("events").is_none(), "a listing leaves out history");
        }
        let (ids, cursor) = page(&body);
        seen.extend(ids);
        match cursor {
            Some(c) => path = format!("/jobs?state=dead&type=noop&limit=2&cursor={c}"),
            None => break,
        }
    }
    let newest_first: Vec<i64> = noops.iter().rev().copied().collect();
    assert_eq!(seen, newest_first);
    let (_, body) = host.admin_get("/jobs?state=dead").await;
    assert_eq!(page(&body).0.len(), 7);

    for query in [
        "state=zombie",
        "limit=0",
        "limit=1001",
        "cursor=abc",
        "type=Not%20a%20type",
        "sort=asc",
    ] {
        let (status, body) = host.admin_get(&format!("/jobs?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["code"], "invalid_query", "{query}: {body}");
    }

    // Replays that name nothing, or too much, or badly: refused.
    for (body, code) in [
        ("{}", "invalid_filter"),
        (r#"{"all": true, "type": "noop"}"#, "invalid_filter"),
        (r#"{"ids": []}"#, "invalid_filter"),
        (r#"{"ids": [0]}"#, "invalid_filter"),
        (r#"{"type": "Not a type"}"#, "invalid_filter"),
        (r#"{"error": ""}"#, "invalid_filter"),
        (r#"{"kind": "noop"}"#, "invalid_json"),
        ("replay everything", "invalid_json"),
    ] {
        let (status, answer) = host.admin_post_json("/admin/dlq/replay", body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["code"], code, "{body}: {answer}");
    }
    let (_, body) = host.admin_get("/jobs?state=dead").await;
    assert_eq!(page(&body).0.len(), 7, "nothing moved");

    // The fix: the real noop plugin. Then one call replays the dead noop
    // jobs (and only those), and they succeed.
    let fixed = plugin_bytes("examples", "noop");
    let (status, body) = put_plugin(&host, "noop", fixed, Some("max_attempts = 1\n")).await;
    assert_eq!(status, 200, "{body}");
    let filter = r#"{"type": "noop", "error": "no behaviour"}"#;
    let (status, body) = host.admin_post_json("/admin/dlq/replay", filter).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({ "replayed": 5, "types": { "noop": 5 } }));
    for id in &noops {
        let job = host.wait_for(*id, "succeeded").await;
        let events = job["events"].as_array().unwrap();
        let replay = events
            .iter()
            .find(|e| e["from"] == "dead" && e["to"] == "queued")
            .unwrap_or_else(|| panic!("no replay event: {job}"));
        assert_eq!(replay["actor"], "admin", "{job}");
    }
    let (_, body) = host.admin_get("/jobs?state=dead").await;
    assert_eq!(
        page(&body).0,
        [flaky[1], flaky[0]],
        "the flaky jobs stay dead"
    );
    let again = host.admin_post_json("/admin/dlq/replay", filter).await;
    assert_eq!(again.1, json!({ "replayed": 0, "types": {} }));
}

/// Runs the CLI against `host` with the token; its exit code, stdout and
/// stderr.
fn cli(host: &Server, args: &[&str]) -> (i32, String, String) {
    let out = jobhost()
        .args(args)
        .args(["--url", &host.url, "--token", ADMIN_TOKEN])
        .env_remove("JOBHOST_ADMIN_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The same from a shell: enqueue, look, list the dead, replay them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_jobs_and_replays_the_dead_letter_queue() {
    let host = Server::start(Plugins::new().testing("noop", "max_attempts = 1\n"), &[]).await;
    let (code, out, err) = cli(&host, &["enqueue", "noop", r#"{"user":"ada"}"#, "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let id = serde_json::from_str::<Value>(&out).unwrap()["jobId"]
        .as_i64()
        .unwrap();
    let in_an_hour = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
    )
    .to_string();
    let (code, out, err) = cli(
        &host,
        &[
            "enqueue",
            "noop",
            "{}",
            "--run-at",
            &in_an_hour,
            "--max-attempts",
            "2",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let later = serde_json::from_str::<Value>(&out).unwrap()["jobId"]
        .as_i64()
        .unwrap();
    let job = host.job(later).await;
    assert_eq!(
        (&job["status"], &job["maxAttempts"]),
        (&json!("scheduled"), &json!(2)),
        "{job}"
    );
    let (code, out, _) = cli(&host, &["enqueue", "noop", "{}", "--idempotency-key", "k1"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("job ") && out.contains("queued"), "{out}");
    let (code, again, _) = cli(&host, &["enqueue", "noop", "{}", "--idempotency-key", "k1"]);
    assert_eq!(code, 0);
    assert!(again.contains("already submitted with this key"), "{again}");
    host.wait_for(id, "dead").await;

    let (code, out, err) = cli(
        &host,
        &["jobs", "list", "--state", "dead", "--type", "noop"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("{id}")) && out.contains("no behaviour"),
        "{out}"
    );
    let (code, out, _) = cli(&host, &["jobs", "list", "--state", "dead", "--json"]);
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert!(
        listed["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["jobId"] == id),
        "{listed}"
    );
    let (code, out, _) = cli(&host, &["jobs", "get", &id.to_string()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("dead") && out.contains("history") && out.contains("ada"),
        "{out}"
    );

    // Errors: named, exit 1, nothing changed.
    let (code, _, err) = cli(&host, &["dlq", "replay"]);
    assert_eq!(code, 1);
    assert!(err.contains("--type, --error, --id, or --all"), "{err}");
    let (code, _, err) = cli(&host, &["jobs", "list", "--state", "zombie"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid_query"), "{err}");
    let (code, _, err) = cli(
        &host,
        &["enqueue", "../admin/dlq/replay", r#"{"all":true}"#],
    );
    assert_eq!(code, 1);
    assert!(err.contains("is not a job type name"), "{err}");
    let (code, _, err) = cli(&host, &["jobs", "get", "999999"]);
    assert_eq!(code, 1);
    assert!(err.contains("job_not_found"), "{err}");
    let out = jobhost()
        .args([
            "jobs",
            "list",
            "--url",
            &host.url,
            "--token",
            "not-the-token-at-all",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));

    // Fixed, then replayed from the shell: it succeeds.
    let fixed = plugin_bytes("examples", "noop");
    let (status, body) = put_plugin(&host, "noop", fixed, Some("max_attempts = 1\n")).await;
    assert_eq!(status, 200, "{body}");
    let (code, out, err) = cli(&host, &["dlq", "replay", "--type", "noop"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replayed 2 dead jobs (noop: 2)"), "{out}");
    host.wait_for(id, "succeeded").await;
}

/// The queue of the type, as `GET /admin/metrics/queue` shows it.
async fn queue(host: &Server, job_type: &str) -> Value {
    let (status, body) = host.admin_get("/admin/metrics/queue").await;
    assert_eq!(status, 200, "{body}");
    body["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == job_type)
        .cloned()
        .unwrap_or_else(|| panic!("no queue {job_type}: {body}"))
}

/// A paused type's jobs are accepted and wait, while other types run, even
/// across a restart; resumed, they run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_type_waits_across_restarts_until_resumed() {
    let plugins = Plugins::new().example("noop", "").testing("counter", "");
    let mut host = Server::start(plugins, &[]).await;
    let (status, body) = host.admin_post("/admin/queues/counter/pause").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({ "type": "counter", "paused": true, "changed": true })
    );
    let (_, body) = host.admin_post("/admin/queues/counter/pause").await;
    assert_eq!(body["changed"], false, "{body}");
    let waiting = [
        host.submit("counter", "{}").await,
        host.submit("counter", "{}").await,
    ];
    // A job of another type, submitted after them, runs; they wait.
    let later = host.submit("noop", "{}").await;
    host.wait_for(later, "succeeded").await;
    for id in waiting {
        assert_eq!(host.job(id).await["status"], "queued");
    }
    let counter = queue(&host, "counter").await;
    assert_eq!(
        (counter["paused"].clone(), counter["queued"].clone()),
        (json!(true), json!(2))
    );
    assert_eq!(queue(&host, "noop").await["paused"], false);

    host.signal_and_wait(libc::SIGTERM);
    host.restart();
    let later = host.submit("noop", "{}").await;
    host.wait_for(later, "succeeded").await;
    for id in waiting {
        assert_eq!(
            host.job(id).await["status"],
            "queued",
            "still paused after a restart"
        );
    }
    let (status, body) = host.admin_post("/admin/queues/Not%20a%20type/pause").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_path")),
        "{body}"
    );
    let (status, body) = host.post("/admin/queues/counter/resume", "").await;
    assert_eq!(status, 401, "{body}");

    let (status, body) = host.admin_post("/admin/queues/counter/resume").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"], false, "{body}");
    for id in waiting {
        host.wait_for(id, "succeeded").await;
    }
}

/// Retention: the pruner deletes succeeded jobs once they outlive theirs and
/// keeps what it is told to keep forever; an operator deletes finished jobs
/// by state and age (over HTTP and from the CLI); bad requests delete
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_finished_jobs_and_operators_delete_them() {
    let plugins = Plugins::new()
        .testing("counter", "")
        .testing("always_fatal", "max_attempts = 1\n");
    let args = [
        "--retain-succeeded",
        "1s",
        "--retain-dead",
        "forever",
        "--prune-interval-ms",
        "100",
    ];
    let host = Server::start(plugins, &args).await;
    let done = host.submit("counter", "{}").await;
    let dead = [
        host.submit("always_fatal", "{}").await,
        host.submit("always_fatal", "{}").await,
    ];
    let (_, body) = host.post("/jobs/counter?delay_ms=3600000", "{}").await;
    let cancelled = body["jobId"].as_i64().unwrap();
    let (status, body) = host
        .admin_post(&format!("/admin/jobs/{cancelled}/cancel"))
        .await;
    assert_eq!(status, 200, "{body}");
    host.wait_for(done, "succeeded").await;
    for id in dead {
        host.wait_for(id, "dead").await;
    }

    // The succeeded job goes once it is a second old; nothing else does.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while host.get(&format!("/jobs/{done}")).await.0 != 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "job {done} never pruned"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, counts) = host.admin_get("/admin/metrics/jobs").await;
    assert_eq!(
        (&counts["succeeded"], &counts["dead"], &counts["cancelled"]),
        (&json!(0), &json!(2), &json!(1)),
        "{counts}"
    );
    assert!(
        host.metrics_text()
            .await
            .contains("jobhost_jobs_pruned_total{state=\"succeeded\"} 1")
    );

    // By hand: bad requests answer a named error and delete nothing.
    let delete = |query: &'static str, token: bool| {
        let mut req = host.http.delete(format!("{}/admin/jobs?{query}", host.url));
        if token {
            req = req.bearer_auth(crate::support::ADMIN_TOKEN);
        }
        async move { crate::support::decode(req.send().await.unwrap()).await }
    };
    let (status, _) = delete("state=dead&olderThan=0s", false).await;
    assert_eq!(status, 401);
    for query in [
        "",
        "state=dead",
        "olderThan=1h",
        "state=queued&olderThan=0s",
        "state=running&olderThan=0s",
        "state=dead&olderThan=soon",
        "state=dead&olderThan=0s&type=Not%20a%20type",
        "state=dead&olderThan=0s&everything=yes",
        "state=dead&olderThan=0s&limit=0",
        "state=dead&olderThan=0s&limit=10001",
    ] {
        let (status, body) = delete(query, true).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["code"], "invalid_filter", "{query}: {body}");
    }
    // Only what finished longer ago than asked.
    let (status, body) = delete("state=dead&olderThan=1h", true).await;
    assert_eq!((status, &body["deleted"]), (200, &json!(0)), "{body}");
    let (status, body) = delete("state=dead&olderThan=0s&type=counter", true).await;
    assert_eq!((status, &body["deleted"]), (200, &json!(0)), "{body}");
    for id in dead {
        assert_eq!(host.job(id).await["status"], "dead");
    }
    // A step at a time: one, with more left; then the rest.
    let (status, body) = delete("state=dead&olderThan=0s&type=always_fatal&limit=1", true).await;
    assert_eq!(
        (status, &body["deleted"], &body["more"]),
        (200, &json!(1), &json!(true)),
        "{body}"
    );
    let (status, body) = delete("state=dead&olderThan=0s&type=always_fatal", true).await;
    assert_eq!(
        (status, &body["deleted"], &body["more"]),
        (200, &json!(1), &json!(false)),
        "{body}"
    );
    for id in dead {
        assert_eq!(host.get(&format!("/jobs/{id}")).await.0, 404);
    }
    assert_eq!(host.job(cancelled).await["status"], "cancelled");

    // From a shell.
    let (code, out, err) = cli(
        &host,
        &[
            "jobs",
            "delete",
            "--state",
            "cancelled",
            "--older-than",
            "0s",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("deleted 1 cancelled jobs"), "{out}");
    assert_eq!(host.get(&format!("/jobs/{cancelled}")).await.0, 404);
    let (code, _, err) = cli(
        &host,
        &["jobs", "delete", "--state", "queued", "--older-than", "0s"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("invalid_filter"), "{err}");
    let (_, counts) = host.admin_get("/admin/metrics/jobs").await;
    assert_eq!(
        (&counts["succeeded"], &counts["dead"], &counts["cancelled"]),
        (&json!(0), &json!(0), &json!(0)),
        "{counts}"
    );
}

/// Cancel, on one host: a waiting job never runs; a running job's attempt
/// is stopped at once (its slot runs the next job), and the job ends
/// `cancelled`, not retried. A finished job is refused with its state.
#[tokio::test]
async fn cancel_stops_a_running_attempt_and_withdraws_a_waiting_job() {
    let plugins = Plugins::new().testing(
        "progress",
        "concurrency = 1\ntimeout_ms = 600000\nmax_attempts = 3\n",
    );
    let server = Server::start(plugins, &[]).await;
    // Reports 10%, then sleeps ten minutes unless stopped.
    let long = server
        .submit("progress", r#"{"percent": 10, "ms": 600000}"#)
        .await;
    let waiting = server.submit("progress", r#"{"percent": 1}"#).await;
    let running = server.wait_for(long, "running").await;
    assert_eq!(server.job(waiting).await["status"], "queued", "{running}");
    let (status, body) = server
        .admin_post(&format!("/admin/jobs/{long}/cancel"))
        .await;
    assert_eq!(
        (
            status,
            body["status"].as_str(),
            body["leaseExpiresAt"].is_null()
        ),
        (200, Some("cancelled"), true),
        "{body}"
    );
    let last = body["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (&last["from"], &last["to"]),
        (&json!("running"), &json!("cancelled"))
    );
    // The one slot is free at once: the waiting job runs.
    server.wait_for(waiting, "succeeded").await;
    let job = server.job(long).await;
    assert_eq!(
        (&job["status"], &job["attempts"]),
        (&json!("cancelled"), &json!(1)),
        "{job}"
    );
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains("jobhost_attempts_interrupted_total{type=\"progress\"} 1"),
        "{metrics}"
    );
    // A queued job is withdrawn before it runs.
    let (status, _) = server.admin_post("/admin/queues/progress/pause").await;
    assert_eq!(status, 200);
    let queued = server.submit("progress", "{}").await;
    let (code, out, err) = cli(&server, &["jobs", "cancel", &queued.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("job {queued}  progress  cancelled")),
        "{out}"
    );
    server.admin_post("/admin/queues/progress/resume").await;
    // Finished jobs stay as they are.
    for id in [waiting, long] {
        let state = server.job(id).await["status"].clone();
        let (status, err) = server.admin_post(&format!("/admin/jobs/{id}/cancel")).await;
        assert_eq!(
            (status, err["code"].as_str(), &err["state"]),
            (409, Some("invalid_job_state"), &state),
            "{err}"
        );
    }
    assert_eq!(server.job(queued).await["attempts"], 0);
}

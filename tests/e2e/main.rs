//! End-to-end tests: the real `jobhost` binary, real compiled plugins, a real
//! SQLite file, over real HTTP. Run with `cargo xtask test`.

mod browser;
mod email;
mod mail;
mod openapi;
mod operators;
mod plugins;
mod postgres;
mod schedules;
mod support;

use mail::MailServer;
use serde_json::{Value, json};
use support::{ADMIN_TOKEN, Plugins, Server};

/// email_welcome with fast retries, so the DLQ path takes milliseconds.
const EMAIL_FAST_RETRY: &str = "max_attempts = 3\n[backoff]\nbase_ms = 20\ncap_ms = 50\n";

/// email_welcome (fast retries) sending to `mail`.
fn email_plugins(mail: &MailServer) -> Plugins {
    Plugins::new().example("email_welcome", &mail.manifest(EMAIL_FAST_RETRY))
}

fn transitions(job: &Value) -> Vec<String> {
    job["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}>{}",
                e["from"].as_str().unwrap_or("new"),
                e["to"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test]
async fn happy_path_runs_the_job_in_its_plugin() {
    let mail = MailServer::start();
    let server = Server::start(email_plugins(&mail), &[]).await;
    let (status, health) = server.get("/healthz").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));

    let id = server
        .submit(
            "email_welcome",
            r#"{"userId":42,"email":"ada@example.com"}"#,
        )
        .await;
    let job = server.wait_for(id, "succeeded").await;
    assert_eq!(job["result"]["sentTo"], "ada@example.com");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["type"], "email_welcome");
    assert_eq!(job["payload"]["userId"], 42);
    assert_eq!(
        transitions(&job),
        ["new>queued", "queued>running", "running>succeeded"]
    );
    // Every attempt records the plugin version it ran.
    let digest = job["pluginDigest"].as_str().unwrap();
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(job["events"][2]["pluginDigest"], digest);
    for field in ["createdAt", "startedAt", "finishedAt", "updatedAt"] {
        assert!(job[field].is_string(), "{field} missing: {job}");
    }

    let (_, counts) = server.admin_get("/admin/metrics/jobs").await;
    assert_eq!(
        (counts["succeeded"].as_u64(), counts["total"].as_u64()),
        (Some(1), Some(1))
    );
    let metrics = server.metrics_text().await;
    for line in [
        "jobhost_jobs_enqueued_total{type=\"email_welcome\"} 1",
        "jobhost_attempts_started_total{type=\"email_welcome\"} 1",
        "jobhost_jobs_succeeded_total{type=\"email_welcome\"} 1",
        "jobhost_queue_depth{type=\"email_welcome\",state=\"queued\"} 0",
        "jobhost_attempt_duration_seconds_count{type=\"email_welcome\"} 1",
        "jobhost_attempt_fuel_consumed_count{type=\"email_welcome\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
}

#[tokio::test]
async fn a_form_encoded_body_is_still_read_as_json() {
    // `curl -d` sends application/x-www-form-urlencoded.
    let mail = MailServer::start();
    let server = Server::start(email_plugins(&mail), &[]).await;
    let resp = server
        .http
        .post(format!("{}/jobs/email_welcome", server.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"userId":7}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["jobId"]
        .as_i64()
        .unwrap();
    server.wait_for(id, "succeeded").await;
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_same_job_and_runs_it_once() {
    let mail = MailServer::start();
    let server = Server::start(email_plugins(&mail), &[]).await;
    let body = r#"{"userId":42,"idempotencyKey":"user#42#welcome"}"#;
    let id = server.submit("email_welcome", body).await;
    let (status, again) = server.post("/jobs/email_welcome", body).await;
    assert_eq!(
        (
            status,
            again["jobId"].as_i64(),
            again["duplicate"].as_bool()
        ),
        (200, Some(id), Some(true))
    );
    let job = server.wait_for(id, "succeeded").await;
    // After it ran, the key still names it; the handler ran exactly once.
    let (status, later) = server.post("/jobs/email_welcome", body).await;
    assert_eq!(
        (status, later["jobId"].as_i64(), later["status"].as_str()),
        (200, Some(id), Some("succeeded"))
    );
    assert_eq!(job["attempts"], 1);
    let runs = transitions(&server.job(id).await)
        .iter()
        .filter(|t| *t == "queued>running")
        .count();
    assert_eq!(runs, 1);

    // The header works too, and takes precedence over the body's field.
    let resp = server
        .http
        .post(format!("{}/jobs/email_welcome", server.url))
        .header("Idempotency-Key", "from-header")
        .body(r#"{"userId":1,"idempotencyKey":"from-body"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let header_id = resp.json::<Value>().await.unwrap()["jobId"]
        .as_i64()
        .unwrap();
    assert_eq!(server.job(header_id).await["idempotencyKey"], "from-header");
    let (_, counts) = server.admin_get("/admin/metrics/jobs").await;
    assert_eq!(counts["total"], 2);
}

#[tokio::test]
async fn a_job_that_always_fails_goes_dead_and_replay_runs_it_again() {
    let mail = MailServer::start();
    let server = Server::start(email_plugins(&mail), &[]).await;
    let id = server.submit("email_welcome", r#"{"userId":777}"#).await;
    let job = server.wait_for(id, "dead").await;
    assert_eq!(job["attempts"], 3);
    assert_eq!(job["maxAttempts"], 3);
    let error = job["lastError"].as_str().unwrap();
    assert!(
        error.contains("user 777") && error.contains("no attempts left"),
        "{error}"
    );
    assert_eq!(
        transitions(&job),
        [
            "new>queued",
            "queued>running",
            "running>scheduled",
            "scheduled>queued",
            "queued>running",
            "running>scheduled",
            "scheduled>queued",
            "queued>running",
            "running>dead",
        ]
    );
    let attempts: Vec<u64> = job["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [0, 1, 1, 1, 2, 2, 2, 3, 3]);
    let (_, queue) = server.admin_get("/admin/metrics/queue").await;
    assert_eq!(queue["types"][0]["type"], "email_welcome");
    assert_eq!(queue["types"][0]["dead"], 1);

    let (status, replayed) = server.admin_post(&format!("/admin/jobs/{id}/replay")).await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(
        (replayed["status"].as_str(), replayed["attempts"].as_u64()),
        (Some("queued"), Some(0))
    );
    // It runs again with a fresh budget, and (still failing) ends dead again.
    let job = server.wait_for_events(id, 18).await;
    assert_eq!(job["status"], "dead");
    assert_eq!(job["attempts"], 3);
    let replay_event = &job["events"][9];
    assert_eq!(
        (
            replay_event["from"].as_str(),
            replay_event["actor"].as_str()
        ),
        (Some("dead"), Some("admin"))
    );
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains("jobhost_jobs_dead_total{type=\"email_welcome\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("jobhost_jobs_retried_total{type=\"email_welcome\"} 4"),
        "{metrics}"
    );

    // Only dead jobs can be replayed.
    let ok = server.submit("email_welcome", r#"{"userId":1}"#).await;
    server.wait_for(ok, "succeeded").await;
    let (status, err) = server.admin_post(&format!("/admin/jobs/{ok}/replay")).await;
    assert_eq!(
        (status, err["code"].as_str(), err["state"].as_str()),
        (409, Some("invalid_job_state"), Some("succeeded"))
    );
    let (status, err) = server.admin_post("/admin/jobs/424242/replay").await;
    assert_eq!((status, err["code"].as_str()), (404, Some("job_not_found")));
}

#[tokio::test]
async fn a_job_that_fails_once_succeeds_on_its_retry() {
    let plugins = Plugins::new().testing(
        "flaky",
        "max_attempts = 2\n[backoff]\nbase_ms = 10\ncap_ms = 10\n",
    );
    let server = Server::start(plugins, &[]).await;
    let id = server.submit("flaky", "{}").await;
    let job = server.wait_for(id, "succeeded").await;
    assert_eq!(job["attempts"], 2);
    assert_eq!(job["result"]["attempt"], 2);
    assert_eq!(job["events"][2]["reason"], "first attempt always fails");
}

#[tokio::test]
async fn misbehaving_plugins_fail_their_own_jobs_only() {
    let mail = MailServer::start();
    let plugins = email_plugins(&mail)
        .testing("loop_forever", "fuel = 5_000_000\nmax_attempts = 1\n")
        .testing("memory_hog", "memory_mb = 8\nmax_attempts = 1\n")
        .testing("panicker", "max_attempts = 1\n")
        .testing("always_fatal", "max_attempts = 5\n");
    let server = Server::start(plugins, &[]).await;
    let cases = [
        ("loop_forever", "fuel exhausted after 5000000 units"),
        ("memory_hog", "memory limit of 8 MiB exceeded"),
        ("panicker", "panics on purpose"),
        ("always_fatal", "fatal: this job can never succeed"),
    ];
    let mut ids = Vec::new();
    for (job_type, _) in cases {
        ids.push(server.submit(job_type, "{}").await);
    }
    let good = server.submit("email_welcome", r#"{"userId":3}"#).await;
    for ((job_type, expected), id) in cases.iter().zip(ids) {
        let job = server.wait_for(id, "dead").await;
        let error = job["lastError"].as_str().unwrap();
        assert!(error.contains(expected), "{job_type}: {error}");
        // Fatal skips the remaining attempts.
        assert_eq!(job["attempts"], 1, "{job_type}");
    }
    server.wait_for(good, "succeeded").await;
}

#[tokio::test]
async fn admin_routes_need_the_token() {
    let mail = MailServer::start();
    let server = Server::start(email_plugins(&mail), &[]).await;
    let url = format!("{}/admin/metrics/jobs", server.url);
    for request in [
        server.http.get(&url),
        server.http.get(&url).bearer_auth("wrong-token"),
        server.http.get(&url).header("X-Admin-Token", "wrong-token"),
        server.http.get(&url).header("Authorization", ADMIN_TOKEN),
    ] {
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized");
        assert_eq!(body["status"], 401);
    }
    let resp = server
        .http
        .get(&url)
        .header("X-Admin-Token", ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, _) = server.admin_get("/admin/metrics/jobs").await;
    assert_eq!(status, 200);
    let (status, err) = server.post("/admin/jobs/1/replay", "").await;
    assert_eq!((status, err["code"].as_str()), (401, Some("unauthorized")));
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let mail = MailServer::start();
    let server = Server::start(email_plugins(&mail), &["--body-limit", "4096"]).await;
    let long_key = "k".repeat(201);
    let key_body = format!(r#"{{"userId":1,"idempotencyKey":"{long_key}"}}"#);
    let big_body = format!(r#"{{"userId":1,"pad":"{}"}}"#, "x".repeat(5000));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/jobs/no_such_type", "{}".into(), 404, "unknown_job_type"),
        (
            "/jobs/email_welcome",
            "{not json".into(),
            400,
            "invalid_json",
        ),
        ("/jobs/email_welcome", "".into(), 400, "invalid_json"),
        ("/jobs/email_welcome", big_body, 413, "payload_too_large"),
        (
            "/jobs/email_welcome",
            key_body,
            400,
            "idempotency_key_too_long",
        ),
        (
            "/jobs/email_welcome",
            r#"{"idempotencyKey":5}"#.into(),
            400,
            "invalid_idempotency_key",
        ),
        (
            "/jobs/email_welcome?delay_ms=soon",
            "{}".into(),
            400,
            "invalid_query",
        ),
        (
            "/jobs/email_welcome?color=red",
            "{}".into(),
            400,
            "invalid_query",
        ),
    ];
    for (path, body, status, code) in &cases {
        let (got, err) = server.post(path, body).await;
        assert_eq!(
            (got, err["code"].as_str()),
            (*status, Some(*code)),
            "{path}: {err}"
        );
        assert_eq!(err["status"], *status);
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (_, err) = server.post("/jobs/no_such_type", "{}").await;
    assert_eq!(err["loadedTypes"], serde_json::json!(["email_welcome"]));
    let (status, err) = server.get("/jobs/999999").await;
    assert_eq!((status, err["code"].as_str()), (404, Some("job_not_found")));
    let (status, err) = server.get("/jobs/abc").await;
    assert_eq!(
        (status, err["code"].as_str()),
        (400, Some("invalid_job_id"))
    );
    let (status, err) = server.get("/jobs/%FF").await;
    assert_eq!((status, err["code"].as_str()), (400, Some("invalid_path")));
    let (status, err) = server.get("/no/such/route").await;
    assert_eq!(
        (status, err["code"].as_str()),
        (404, Some("route_not_found"))
    );
    let resp = server
        .http
        .delete(format!("{}/jobs/1", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["code"],
        "method_not_allowed"
    );

    // Nothing was written by any of them.
    let (_, counts) = server.admin_get("/admin/metrics/jobs").await;
    assert_eq!(counts["total"], 0, "{counts}");
    // And a good request still works.
    let id = server.submit("email_welcome", r#"{"userId":1}"#).await;
    server.wait_for(id, "succeeded").await;
}

#[tokio::test]
async fn a_delayed_job_waits_then_runs() {
    let mail = MailServer::start();
    let server = Server::start(email_plugins(&mail), &[]).await;
    let (status, body) = server
        .post("/jobs/email_welcome?delay_ms=300", r#"{"userId":9}"#)
        .await;
    assert_eq!((status, body["status"].as_str()), (202, Some("scheduled")));
    let id = body["jobId"].as_i64().unwrap();
    let waiting = server.job(id).await;
    // RFC 3339 with fixed-width microseconds in UTC: string order is time order.
    let due = waiting["nextAttemptAt"].as_str().unwrap().to_owned();
    assert!(
        due.as_str() > waiting["createdAt"].as_str().unwrap(),
        "{waiting}"
    );
    let job = server.wait_for(id, "succeeded").await;
    assert_eq!(
        transitions(&job)[..2],
        ["new>scheduled", "scheduled>queued"]
    );
    let promoted_at = job["events"][1]["at"].as_str().unwrap();
    assert!(
        promoted_at >= due.as_str(),
        "promoted at {promoted_at}, due {due}"
    );
}

#[tokio::test]
async fn sigterm_lets_the_running_job_finish_and_exits_zero() {
    let plugins = Plugins::new().testing("sleeper", "timeout_ms = 10_000\n");
    let mut server = Server::start(plugins, &[]).await;
    let id = server.submit("sleeper", r#"{"ms":1500}"#).await;
    server.wait_for(id, "running").await;
    let status = server.signal_and_wait(libc::SIGTERM);
    assert_eq!(status.code(), Some(0), "{status:?}");
    server.restart();
    let job = server.job(id).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["result"]["slept"], 1500);
}

#[tokio::test]
async fn sigterm_past_the_grace_period_returns_the_job_to_the_queue() {
    let plugins = Plugins::new().testing("sleeper", "timeout_ms = 60_000\n");
    let mut server = Server::start(plugins, &["--shutdown-grace-ms", "200"]).await;
    let id = server.submit("sleeper", r#"{"ms":30000}"#).await;
    server.wait_for(id, "running").await;
    let status = server.signal_and_wait(libc::SIGTERM);
    assert_eq!(status.code(), Some(0), "{status:?}");
    // Look with workers paused, or the restarted host would run it again.
    server.restart_with(&["--paused"]);
    let job = server.job(id).await;
    assert_eq!(job["status"], "queued", "{job:#}");
    assert_eq!(
        job["attempts"], 0,
        "the interrupted attempt is refunded: {job:#}"
    );
    let last = job["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["from"].as_str(), last["to"].as_str()),
        (Some("running"), Some("queued"))
    );
    assert_eq!(last["attempt"], 0);
    assert!(
        last["reason"].as_str().unwrap().contains("shutdown"),
        "{last}"
    );
}

#[tokio::test]
async fn after_kill_9_the_job_completes_once_its_lease_expires() {
    let plugins = Plugins::new().testing("sleeper", "timeout_ms = 2_000\n");
    let flags = ["--lease-grace-ms", "500", "--reap-interval-ms", "100"];
    let mut server = Server::start(plugins, &flags).await;
    let id = server.submit("sleeper", r#"{"ms":1000}"#).await;
    server.wait_for(id, "running").await;
    let status = server.signal_and_wait(libc::SIGKILL);
    assert_eq!(status.code(), None, "killed by a signal");
    server.restart();
    let job = server.wait_for(id, "succeeded").await;
    assert_eq!(job["attempts"], 2, "{job:#}");
    let reaped = job["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["actor"] == "reaper" && e["to"] == "queued");
    assert!(reaped, "{job:#}");
}

/// A 202 means the job is on disk: submitters keep posting while the
/// server is killed with SIGKILL mid-stream, and after a restart on the same
/// data directory every job that was answered 202 is there and runs. (It
/// would fail if an answer went out before its group commit; a kill keeps
/// the OS's page cache, so it says nothing of the fsync itself.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_job_survives_kill_9_mid_stream() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let plugins = Plugins::new().example("noop", "max_attempts = 3\ntimeout_ms = 5_000\n");
    let flags = ["--lease-grace-ms", "500", "--reap-interval-ms", "100"];
    let mut server = Server::start(plugins, &flags).await;
    let acked = Arc::new(AtomicUsize::new(0));
    let mut submitters = Vec::new();
    for _ in 0..8 {
        let (http, url, acked) = (server.http.clone(), server.url.clone(), acked.clone());
        submitters.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            // Until the server is gone: an error or a refused connection.
            while let Ok(resp) = http
                .post(format!("{url}/jobs/noop"))
                .body("{}")
                .send()
                .await
            {
                if resp.status() != 202 {
                    break;
                }
                let Ok(body) = resp.json::<Value>().await else {
                    break;
                };
                ids.push(body["jobId"].as_i64().expect("a 202 names its job"));
                acked.fetch_add(1, Ordering::Relaxed);
            }
            ids
        }));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while acked.load(Ordering::Relaxed) < 2_000 {
        assert!(
            std::time::Instant::now() < deadline && !submitters.iter().all(|s| s.is_finished()),
            "only {} jobs acknowledged before the submitters stopped",
            acked.load(Ordering::Relaxed)
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let status = tokio::task::block_in_place(|| server.signal_and_wait(libc::SIGKILL));
    assert_eq!(status.code(), None, "killed by a signal");
    let mut ids = Vec::new();
    for s in submitters {
        ids.extend(s.await.unwrap());
    }
    assert!(ids.len() >= 2_000, "{} acknowledged", ids.len());

    server.restart();
    for &id in &ids {
        let (status, job) = server.get(&format!("/jobs/{id}")).await;
        assert_eq!(status, 200, "job {id} was acknowledged, then lost: {job}");
    }
    for id in ids {
        server.wait_for(id, "succeeded").await;
    }
}

/// Submit options: when a job is due (`runAt`, `delay_ms`) and how many
/// attempts it gets (`maxAttempts`), on one job and per item of a batch;
/// bad options change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_options_set_when_a_job_runs_and_its_attempts() {
    let plugins = Plugins::new().testing("flaky", "max_attempts = 3\n[backoff]\nbase_ms = 10\n");
    let server = Server::start(plugins, &[]).await;
    let in_an_hour = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
    )
    .to_string();
    let an_hour_ago = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() - std::time::Duration::from_secs(3600),
    )
    .to_string();

    // One attempt only: the flaky job's first failure is its last.
    let (status, body) = server.post("/jobs/flaky?maxAttempts=1", "{}").await;
    assert_eq!(status, 202, "{body}");
    let once = server
        .wait_for(body["jobId"].as_i64().unwrap(), "dead")
        .await;
    assert_eq!(
        (&once["attempts"], &once["maxAttempts"]),
        (&json!(1), &json!(1))
    );
    // The manifest's three: it succeeds on its second.
    let id = server.submit("flaky", "{}").await;
    let twice = server.wait_for(id, "succeeded").await;
    assert_eq!(
        (&twice["attempts"], &twice["maxAttempts"]),
        (&json!(2), &json!(3))
    );
    // Due in an hour: scheduled until then.
    let (status, body) = server
        .post(&format!("/jobs/flaky?runAt={in_an_hour}"), "{}")
        .await;
    assert_eq!(
        (status, &body["status"]),
        (202, &json!("scheduled")),
        "{body}"
    );
    let later = server.job(body["jobId"].as_i64().unwrap()).await;
    assert_eq!(
        later["nextAttemptAt"].as_str().map(|t| &t[..19]),
        Some(&in_an_hour[..19]),
        "{later}"
    );
    // A time gone by is now.
    let (status, body) = server
        .post(&format!("/jobs/flaky?runAt={an_hour_ago}"), "{}")
        .await;
    assert_eq!((status, &body["status"]), (202, &json!("queued")), "{body}");
    server
        .wait_for(body["jobId"].as_i64().unwrap(), "succeeded")
        .await;

    // A batch's items, each with its own options over the query's.
    let batch = json!({"jobs": [
        {"payload": {"n": 1}},
        {"payload": {"n": 2}, "maxAttempts": 1},
        {"payload": {"n": 3}, "runAt": in_an_hour},
        {"payload": {"n": 4}, "idempotencyKey": "four"},
        {"payload": {"n": 5, "idempotencyKey": "four"}},
    ]});
    let (status, body) = server
        .post("/jobs/flaky/batch?maxAttempts=2", &batch.to_string())
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (&body["created"], &body["duplicates"]),
        (&json!(4), &json!(1))
    );
    let ids: Vec<i64> = body["jobIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(ids[3], ids[4], "one key, one job");
    let first = server.wait_for(ids[0], "succeeded").await;
    assert_eq!(first["maxAttempts"], 2);
    assert_eq!(first["payload"], json!({"n": 1}));
    server.wait_for(ids[1], "dead").await;
    assert_eq!(server.job(ids[2]).await["status"], "scheduled");
    server.wait_for(ids[3], "succeeded").await;
    // The array form takes the query's options for every job.
    let (status, body) = server
        .post(
            &format!("/jobs/flaky/batch?runAt={in_an_hour}"),
            r#"[{"n": 6}, {"n": 7}]"#,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    for id in body["jobIds"].as_array().unwrap() {
        assert_eq!(
            server.job(id.as_i64().unwrap()).await["status"],
            "scheduled"
        );
    }

    // Bad options: a named error, nothing written.
    let (_, before) = server.admin_get("/admin/metrics/jobs").await;
    for query in [
        "maxAttempts=0",
        "maxAttempts=1001",
        "maxAttempts=many",
        "runAt=tomorrow",
        "runAt=2999-01-01T00:00:00Z",
        &format!("runAt={in_an_hour}&delay_ms=5"),
        "priority=high",
        "priority=101",
        "priority=-101",
        "priority=1.5",
        "timeoutMs=0",
        "timeoutMs=86400001",
    ] {
        let (status, body) = server.post(&format!("/jobs/flaky?{query}"), "{}").await;
        assert_eq!(
            (status, &body["code"]),
            (400, &json!("invalid_query")),
            "{query}: {body}"
        );
        let (status, body) = server
            .post(&format!("/jobs/flaky/batch?{query}"), "[{}]")
            .await;
        assert_eq!(
            (status, &body["code"]),
            (400, &json!("invalid_query")),
            "{query}: {body}"
        );
    }
    for items in [
        json!({"jobs": [{"payload": {}}, {"payload": {}, "maxAttempts": 0}]}),
        json!({"jobs": [{"payload": {}, "runAt": "soon"}]}),
        json!({"jobs": [{"payload": {}, "runAt": in_an_hour, "delayMs": 5}]}),
        json!({"jobs": [{"payload": {}, "color": "red"}]}),
        json!({"jobs": [{"payload": {}, "priority": 500}]}),
        json!({"jobs": [{"payload": {}, "priority": "high"}]}),
        json!({"jobs": [{"payload": {}, "timeoutMs": 0}]}),
        json!({"jobs": [{"n": 1}]}),
        json!({"jobs": []}),
        json!({"jobs": [{"payload": {}}], "more": 1}),
    ] {
        let (status, body) = server.post("/jobs/flaky/batch", &items.to_string()).await;
        assert_eq!(
            (status, &body["code"]),
            (400, &json!("invalid_batch")),
            "{items}: {body}"
        );
    }
    let (_, after) = server.admin_get("/admin/metrics/jobs").await;
    assert_eq!(before["total"], after["total"]);
}

/// Priorities order claims (higher first, first come first served within
/// one), on the real binary: jobs submitted while their queue is paused run
/// one at a time in priority order once it resumes. A job's own deadline
/// stops its attempt, and the plugin's deadline caps it.
#[tokio::test]
async fn priorities_order_claims_and_a_jobs_deadline_is_capped_by_its_plugin() {
    let plugins = Plugins::new().testing(
        "sleeper",
        "concurrency = 1\ntimeout_ms = 400\nmax_attempts = 1\n",
    );
    let server = Server::start(plugins, &[]).await;
    let (status, body) = server.admin_post("/admin/queues/sleeper/pause").await;
    assert_eq!(status, 200, "{body}");
    let mut submitted = Vec::new();
    for (name, query) in [
        ("normal-1", ""),
        ("low", "?priority=-5"),
        ("urgent-1", "?priority=10"),
        ("normal-2", "?priority=0"),
        ("urgent-2", "?priority=10"),
    ] {
        let payload = json!({"ms": 20, "name": name}).to_string();
        let (status, body) = server
            .post(&format!("/jobs/sleeper{query}"), &payload)
            .await;
        assert_eq!(status, 202, "{body}");
        submitted.push((name, body["jobId"].as_i64().unwrap()));
    }
    // A batch: the query's priority for all, an item's own over it.
    let batch = json!({"jobs": [
        {"payload": {"ms": 20, "name": "batch-low"}},
        {"payload": {"ms": 20, "name": "batch-top"}, "priority": 100},
    ]});
    let (status, body) = server
        .post("/jobs/sleeper/batch?priority=-10", &batch.to_string())
        .await;
    assert_eq!(status, 202, "{body}");
    let ids = body["jobIds"].as_array().unwrap();
    submitted.push(("batch-low", ids[0].as_i64().unwrap()));
    submitted.push(("batch-top", ids[1].as_i64().unwrap()));
    let (status, body) = server.admin_post("/admin/queues/sleeper/resume").await;
    assert_eq!(status, 200, "{body}");

    let mut runs = Vec::new();
    for (name, id) in &submitted {
        let job = server.wait_for(*id, "succeeded").await;
        let started = job["startedAt"].as_str().unwrap().to_owned();
        runs.push((started, *name, job["priority"].clone()));
    }
    runs.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        runs.iter().map(|(_, name, _)| *name).collect::<Vec<_>>(),
        [
            "batch-top",
            "urgent-1",
            "urgent-2",
            "normal-1",
            "normal-2",
            "low",
            "batch-low"
        ],
        "{runs:?}"
    );
    assert_eq!(
        runs.iter().map(|(_, _, p)| p.clone()).collect::<Vec<_>>(),
        [
            json!(100),
            json!(10),
            json!(10),
            json!(0),
            json!(0),
            json!(-5),
            json!(-10)
        ]
    );

    // Its own deadline stops a long attempt...
    let (status, body) = server
        .post("/jobs/sleeper?timeoutMs=100", r#"{"ms": 5000}"#)
        .await;
    assert_eq!(status, 202, "{body}");
    let short = server
        .wait_for(body["jobId"].as_i64().unwrap(), "dead")
        .await;
    assert_eq!(short["timeoutMs"], 100);
    assert!(
        short["lastError"]
            .as_str()
            .is_some_and(|e| e.starts_with("timed out after 100 ms")),
        "{short}"
    );
    // ... and asking for more than the plugin allows gets the plugin's.
    let (_, body) = server
        .post("/jobs/sleeper?timeoutMs=60000", r#"{"ms": 5000}"#)
        .await;
    let capped = server
        .wait_for(body["jobId"].as_i64().unwrap(), "dead")
        .await;
    assert_eq!(capped["timeoutMs"], 60000);
    assert!(
        capped["lastError"]
            .as_str()
            .is_some_and(|e| e.starts_with("timed out after 400 ms")),
        "{capped}"
    );
}

#[tokio::test]
async fn a_batch_is_committed_whole_and_paused_workers_hold_it() {
    let mail = MailServer::start();
    let server = Server::start(email_plugins(&mail), &["--paused"]).await;
    let (_, workers) = server.admin_get("/admin/workers").await;
    assert_eq!(workers["paused"], true);
    let batch =
        r#"[{"userId":1},{"userId":2,"idempotencyKey":"k"},{"userId":3,"idempotencyKey":"k"}]"#;
    let (status, body) = server.post("/jobs/email_welcome/batch", batch).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (body["created"].as_u64(), body["duplicates"].as_u64()),
        (Some(2), Some(1))
    );
    let ids: Vec<i64> = body["jobIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[1], ids[2], "a key repeated in the batch names one job");
    // Paused since start: accepted, not claimed.
    assert_eq!(server.job(ids[0]).await["status"], "queued");

    // Bad batches are refused whole.
    let long_key = "k".repeat(201);
    let bad_key = format!(r#"[{{"userId":4}},{{"userId":5,"idempotencyKey":"{long_key}"}}]"#);
    for (body, code) in [
        (r#"{"userId":1}"#.to_owned(), "invalid_batch"),
        ("[]".to_owned(), "invalid_batch"),
        ("[{\"userId\":1},".to_owned(), "invalid_batch"),
        (bad_key, "idempotency_key_too_long"),
    ] {
        let (status, err) = server.post("/jobs/email_welcome/batch", &body).await;
        assert_eq!(
            (status, err["code"].as_str()),
            (400, Some(code)),
            "{body}: {err}"
        );
    }
    let resp = server
        .http
        .post(format!("{}/jobs/email_welcome/batch", server.url))
        .header("Idempotency-Key", "whole-batch")
        .body("[{}]")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let (_, counts) = server.admin_get("/admin/metrics/jobs").await;
    assert_eq!(counts["total"], 2, "{counts}");

    let (status, resumed) = server.admin_post("/admin/workers/resume").await;
    assert_eq!((status, resumed["paused"].as_bool()), (200, Some(false)));
    for id in [ids[0], ids[1]] {
        server.wait_for(id, "succeeded").await;
    }
}

//! Plugins as a product: hot reload from the plugins directory, uploads
//! through the admin API, and broken files that never replace a working
//! version.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{ADMIN_TOKEN, PLUGIN_SECRET, Plugins, Server, decode, jobhost, plugin_bytes};

/// The no-op plugin with a custom section added: the same behaviour under
/// another digest, a second version to swap to.
pub(crate) fn noop_v2() -> Vec<u8> {
    let mut wasm = plugin_bytes("examples", "noop");
    let name = b"jobhost-test-version";
    let payload = b"2";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(payload);
    wasm.push(0); // a custom section
    wasm.push(section.len() as u8); // its size, one LEB128 byte
    wasm.extend_from_slice(&section);
    wasm
}

pub(crate) fn digest(wasm: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{:x}", sha2::Sha256::digest(wasm))
}

/// Writes a plugin file the way the README tells operators to: to a
/// temporary name, then renamed into place.
fn drop_in(dir: &Path, file: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

pub(crate) async fn put_plugin(
    host: &Server,
    job_type: &str,
    wasm: Vec<u8>,
    manifest: Option<&str>,
) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new().part(
        "wasm",
        reqwest::multipart::Part::bytes(wasm).file_name(format!("{job_type}.wasm")),
    );
    if let Some(text) = manifest {
        form = form.text("manifest", text.to_owned());
    }
    let resp = host
        .http
        .put(format!("{}/admin/plugins/{job_type}", host.url))
        .bearer_auth(ADMIN_TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap();
    decode(resp).await
}

async fn put_raw(host: &Server, job_type: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = host
        .http
        .put(format!("{}/admin/plugins/{job_type}", host.url))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/wasm")
        .body(body)
        .send()
        .await
        .unwrap();
    decode(resp).await
}

pub(crate) async fn delete_plugin(host: &Server, job_type: &str) -> (u16, Value) {
    let resp = host
        .http
        .delete(format!("{}/admin/plugins/{job_type}", host.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    decode(resp).await
}

/// The type's entry in `GET /admin/plugins`, if listed.
pub(crate) async fn plugin(host: &Server, job_type: &str) -> Option<Value> {
    let (status, body) = host.admin_get("/admin/plugins").await;
    assert_eq!(status, 200, "{body}");
    body["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == job_type)
        .cloned()
}

/// Polls `GET /admin/plugins` until `ok` holds for the type's entry.
pub(crate) async fn wait_for_plugin(
    host: &Server,
    job_type: &str,
    what: &str,
    ok: impl Fn(Option<&Value>) -> bool,
) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let entry = plugin(host, job_type).await;
        if ok(entry.as_ref()) {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "{job_type}: never {what}: {entry:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn submit_batch(host: &Server, job_type: &str, n: usize) -> Vec<i64> {
    let payloads = (0..n).map(|i| format!(r#"{{"ms":2,"i":{i}}}"#));
    host.submit_batch(job_type, payloads).await
}

/// Swaps v1 → v2 (an upload) → v1 (a file dropped into the directory)
/// while thousands of jobs are in flight: no job fails, each attempt
/// records the digest of the version that ran it, and a job submitted after
/// a swap completed runs on the new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_swap_under_load_without_a_failed_job() {
    let v1 = plugin_bytes("examples", "noop");
    let v2 = noop_v2();
    let (d1, d2) = (digest(&v1), digest(&v2));
    let host = Server::start(
        Plugins::new().example("noop", "concurrency = 64\n"),
        &["--paused"],
    )
    .await;
    assert_eq!(plugin(&host, "noop").await.unwrap()["digest"], d1.as_str());

    let in_flight = submit_batch(&host, "noop", 3000).await;
    host.admin_post("/admin/workers/resume").await;
    // v2 by upload, while the 3,000 run.
    let (status, body) = put_plugin(&host, "noop", v2.clone(), Some("concurrency = 64\n")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["digest"], d2.as_str());
    let after_v2 = submit_batch(&host, "noop", 1000).await;
    for id in &after_v2 {
        let job = host.wait_for(*id, "succeeded").await;
        assert_eq!(
            job["pluginDigest"],
            d2.as_str(),
            "submitted after the swap to v2: {job}"
        );
    }
    // v1 again, by dropping the file in while 3,000 more run: the watcher
    // swaps it.
    let mut in_flight = in_flight;
    in_flight.extend(submit_batch(&host, "noop", 3000).await);
    drop_in(&host.plugins_dir(), "noop.wasm", &v1);
    wait_for_plugin(&host, "noop", "back on v1", |p| {
        p.is_some_and(|p| p["digest"] == d1.as_str())
    })
    .await;
    let after_v1 = submit_batch(&host, "noop", 1000).await;

    let mut seen = HashSet::new();
    for (batch, want) in [
        (&in_flight, None),
        (&after_v2, Some(&d2)),
        (&after_v1, Some(&d1)),
    ] {
        for id in batch {
            let job = host.wait_for(*id, "succeeded").await;
            assert_eq!(job["attempts"], 1, "{job}");
            let ran = job["pluginDigest"].as_str().unwrap().to_owned();
            if let Some(want) = want {
                assert_eq!(
                    &ran, want,
                    "job {id} was submitted after the swap to {want}"
                );
            }
            // The attempt's own events carry the digest too.
            assert!(
                job["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["pluginDigest"] == ran.as_str()),
                "{job}"
            );
            seen.insert(ran);
        }
    }
    assert!(seen.contains(&d1) && seen.contains(&d2), "{seen:?}");
    let metrics = host.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("jobhost_plugin_loads_total{type=\"noop\"} 3")),
        "three versions installed (start, upload, drop-in):\n{metrics}"
    );
}

/// Files that do not load never replace a working version, whether
/// uploaded (refused with a clear error, nothing written) or dropped into
/// the directory (reported, the old version keeps serving); deleting a
/// plugin stops its claims and its queued jobs wait for it to come back;
/// a new file adds a type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_plugins_never_replace_a_working_version() {
    let v1 = plugin_bytes("examples", "noop");
    let d1 = digest(&v1);
    let host = Server::start(
        Plugins::new().example("noop", "").testing("sleeper", ""),
        &[],
    )
    .await;
    let dir = host.plugins_dir();

    // Uploads that are refused, each with its reason.
    let empty_component = b"\0asm\x0d\x00\x01\x00".to_vec();
    let refused = [
        (
            put_raw(&host, "noop", b"not wasm at all".to_vec()).await,
            "compiling plugin noop",
        ),
        (
            put_raw(&host, "noop", empty_component).await,
            "jobhost:plugin/handler world",
        ),
        (
            put_plugin(&host, "noop", v1.clone(), Some("fuel = 10\nturbo = true\n")).await,
            "turbo",
        ),
        (
            put_plugin(&host, "noop", v1.clone(), Some("timeout_ms = 0\n")).await,
            "timeout_ms",
        ),
    ];
    for ((status, body), says) in refused {
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["code"], "invalid_plugin", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains(says),
            "{says}: {body}"
        );
    }
    let (status, body) = put_raw(&host, "Bad Name", v1.clone()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_path")),
        "{body}"
    );
    // Nothing was written, and v1 serves.
    assert_eq!(std::fs::read(dir.join("noop.wasm")).unwrap(), v1);
    assert_eq!(std::fs::read_to_string(dir.join("noop.toml")).unwrap(), "");
    let id = host.submit("noop", "{}").await;
    assert_eq!(
        host.wait_for(id, "succeeded").await["pluginDigest"],
        d1.as_str()
    );

    // A corrupt file dropped in: reported, v1 keeps serving.
    drop_in(&dir, "noop.wasm", b"\0asm garbage");
    let entry = wait_for_plugin(&host, "noop", "reported as failed", |p| {
        p.is_some_and(|p| p["status"] == "failed")
    })
    .await
    .unwrap();
    assert_eq!(entry["digest"], d1.as_str(), "{entry}");
    assert!(
        entry["lastError"].as_str().unwrap().contains("noop"),
        "{entry}"
    );
    let id = host.submit("noop", "{}").await;
    assert_eq!(
        host.wait_for(id, "succeeded").await["pluginDigest"],
        d1.as_str()
    );
    let metrics = host.metrics_text().await;
    assert!(
        metrics.contains("jobhost_plugin_load_errors_total{type=\"noop\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("jobhost_plugin_ok{type=\"noop\"} 0"),
        "{metrics}"
    );
    // Fixed: loaded, the failure cleared.
    let v2 = noop_v2();
    drop_in(&dir, "noop.wasm", &v2);
    let entry = wait_for_plugin(&host, "noop", "loaded again", |p| {
        p.is_some_and(|p| p["status"] == "loaded")
    })
    .await
    .unwrap();
    assert_eq!(entry["digest"], digest(&v2).as_str());
    assert!(entry["lastError"].is_null(), "{entry}");

    // Deleted: no longer claimed; its queued jobs wait, and run once it is back.
    let (status, body) = delete_plugin(&host, "noop").await;
    assert_eq!(status, 200, "{body}");
    assert!(!dir.join("noop.wasm").exists());
    let (status, body) = delete_plugin(&host, "noop").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("plugin_not_found")),
        "{body}"
    );
    let (status, body) = host.post("/jobs/noop", "{}").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("unknown_job_type")),
        "{body}"
    );
    assert!(plugin(&host, "noop").await.is_none());

    // A job of a deleted type that was queued before: submitted while the
    // plugin is back but the workers are paused, then the plugin deleted.
    host.admin_post("/admin/workers/pause").await;
    let (status, body) = put_raw(&host, "noop", v1.clone()).await;
    assert_eq!(status, 200, "{body}");
    let waiting = host.submit("noop", "{}").await;
    delete_plugin(&host, "noop").await;
    host.admin_post("/admin/workers/resume").await;
    // The worker goes round (another type's job runs), and leaves it queued.
    let other = host.submit("sleeper", r#"{"ms":1}"#).await;
    host.wait_for(other, "succeeded").await;
    let other = host.submit("sleeper", r#"{"ms":1}"#).await;
    host.wait_for(other, "succeeded").await;
    assert_eq!(host.job(waiting).await["status"], "queued");
    // Back (a new type appears by dropping its file in): the job runs.
    drop_in(&dir, "noop.wasm", &v1);
    host.wait_for(waiting, "succeeded").await;

    // A brand-new type, by file.
    drop_in(&dir, "fresh.wasm", &v1);
    wait_for_plugin(&host, "fresh", "listed", |p| p.is_some()).await;
    let id = host.submit("fresh", "{}").await;
    host.wait_for(id, "succeeded").await;
}

/// `jobhost plugin check` tells a plugin it can run from files it cannot,
/// and says why; `--json` gives the same findings to scripts.
#[test]
fn plugin_check_tells_a_runnable_plugin_from_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let check = |file: &str, extra: &[&str]| {
        let out = jobhost()
            .args(["plugin", "check"])
            .arg(dir.path().join(file))
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let noop = plugin_bytes("examples", "noop");
    std::fs::write(dir.path().join("my_job.wasm"), &noop).unwrap();
    std::fs::write(dir.path().join("my_job.toml"), "timeout_ms = 2_000\n").unwrap();
    let (code, out, err) = check("my_job.wasm", &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("a jobhost plugin for job type \"my_job\""),
        "{out}"
    );
    assert!(out.contains(&digest(&noop)), "{out}");
    assert!(
        out.contains("jobhost:plugin/types"),
        "imports listed: {out}"
    );
    assert!(out.contains("timeout 2000 ms"), "manifest read: {out}");
    std::fs::write(dir.path().join("mailer.wasm"), &noop).unwrap();
    let types = "job_types = [\"welcome\", \"digest\"]\n";
    std::fs::write(dir.path().join("mailer.toml"), types).unwrap();
    let (code, out, err) = check("mailer.wasm", &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("a jobhost plugin for job types \"welcome\", \"digest\""),
        "{out}"
    );

    // A broken manifest beside it, a file that is not wasm, a component of
    // another world, a name that is not a job type.
    std::fs::write(dir.path().join("my_job.toml"), "fuel = 5\n").unwrap();
    let (code, out, _) = check("my_job.wasm", &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("`fuel` is 5"), "{out}");
    std::fs::write(dir.path().join("junk.wasm"), b"not wasm").unwrap();
    let (code, out, _) = check("junk.wasm", &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("NOT a plugin jobhost can run") && out.contains("compiling plugin junk"),
        "{out}"
    );
    std::fs::write(dir.path().join("other.wasm"), b"\0asm\x0d\x00\x01\x00").unwrap();
    let (code, out, _) = check("other.wasm", &["--json"]);
    assert_eq!(code, Some(1), "{out}");
    let found: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(found["valid"], false);
    assert!(
        found["problems"][0]
            .as_str()
            .unwrap()
            .contains("jobhost:plugin/handler world"),
        "{found}"
    );
    std::fs::write(dir.path().join("Bad Name.wasm"), &noop).unwrap();
    let (code, out, _) = check("Bad Name.wasm", &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not a job type name"), "{out}");
}

/// The 0.1.1 capabilities through the real binary: a running job shows the
/// progress its plugin reports, `config.get` returns the manifest's values
/// (an environment reference resolved by the host, never by the plugin),
/// and the key-value store keeps a set-once key across jobs.
#[tokio::test]
async fn plugins_report_progress_read_config_and_keep_keys() {
    let plugins = Plugins::new()
        .testing("progress", "timeout_ms = 30_000\n")
        .testing(
            "config_echo",
            "[config]\nmail_api_url = \"http://127.0.0.1:9/send\"\nfrom_env = { env = \"JOBHOST_PLUGIN_TEST_SECRET\" }\n",
        )
        .testing("kv_ops", "");
    let server = Server::start(plugins, &[]).await;

    let id = server
        .submit("progress", r#"{"percent": 60, "ms": 20000}"#)
        .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let job = server.job(id).await;
        if job["progress"] == 60 {
            assert_eq!(job["status"], "running", "{job:#}");
            break;
        }
        assert!(Instant::now() < deadline, "progress never showed: {job:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let id = server
        .submit(
            "config_echo",
            r#"{"keys": ["mail_api_url", "from_env", "PATH"]}"#,
        )
        .await;
    let job = server.wait_for(id, "succeeded").await;
    assert_eq!(job["progress"], Value::Null);
    assert_eq!(
        job["result"],
        serde_json::json!({"mail_api_url": "http://127.0.0.1:9/send", "from_env": PLUGIN_SECRET, "PATH": null})
    );

    let ops = r#"{"ops": [["set_if_absent", "welcome:1", "sent"], ["get", "welcome:1"]]}"#;
    let first = server.submit("kv_ops", ops).await;
    let first = server.wait_for(first, "succeeded").await;
    assert_eq!(first["result"], serde_json::json!([true, "sent"]));
    let second = server.submit("kv_ops", ops).await;
    let second = server.wait_for(second, "succeeded").await;
    assert_eq!(second["result"], serde_json::json!([false, "sent"]));
}

/// Runs a command that must succeed; its stdout.
fn must(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// docs/plugins.md, step by step: scaffold a plugin, build it with plain
/// cargo, check it, drop it in, run a job; then change it, rebuild, and
/// upload the second version while 2,000 jobs run, without a failed job.
/// (The one liberty: the crate goes to a temporary directory, not `..`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_author_follows_the_guide() {
    let host = Server::start(Plugins::new(), &[]).await;
    let work = tempfile::tempdir().unwrap();

    // 2. Create the plugin.
    let said = must(
        jobhost()
            .args(["plugin", "new", "hello", "--dir"])
            .arg(work.path()),
    );
    assert!(
        said.contains("cargo build --release --target wasm32-wasip2"),
        "{said}"
    );
    let crate_dir = work.path().join("hello");
    // 3. Build it.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = || {
        must(
            std::process::Command::new(&cargo)
                .args(["build", "--release", "--target", "wasm32-wasip2"])
                .current_dir(&crate_dir)
                .env_remove("CARGO_TARGET_DIR"),
        )
    };
    build();
    let wasm_path = crate_dir.join("target/wasm32-wasip2/release/hello.wasm");
    let checked = must(
        jobhost()
            .args(["plugin", "check"])
            .arg(&wasm_path)
            .arg("--manifest")
            .arg(crate_dir.join("hello.toml")),
    );
    assert!(
        checked.contains("a jobhost plugin for job type \"hello\""),
        "{checked}"
    );

    // 4. Install it: the manifest, then the plugin, into the directory.
    let dir = host.plugins_dir();
    std::fs::copy(crate_dir.join("hello.toml"), dir.join("hello.toml")).unwrap();
    std::fs::copy(&wasm_path, dir.join("hello.wasm")).unwrap();
    let v1 = std::fs::read(&wasm_path).unwrap();
    wait_for_plugin(&host, "hello", "loaded", |p| {
        p.is_some_and(|p| p["status"] == "loaded" && p["digest"] == digest(&v1).as_str())
    })
    .await;

    // 5. Run a job.
    let id = host.submit("hello", r#"{"name":"Ada"}"#).await;
    let job = host.wait_for(id, "succeeded").await;
    assert_eq!(
        job["result"],
        serde_json::json!({"greeting": "Hello, Ada!"})
    );

    // 6. A second version, uploaded under load.
    let lib = crate_dir.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    assert!(source.contains("Hello, {}!"), "{source}");
    std::fs::write(&lib, source.replace("Hello, {}!", "Welcome, {}!")).unwrap();
    build();
    let v2 = std::fs::read(&wasm_path).unwrap();
    assert_ne!(digest(&v1), digest(&v2));
    let payloads = (0..2000).map(|i| format!(r#"{{"name":"n{i}"}}"#));
    let in_flight = host.submit_batch("hello", payloads).await;
    let manifest = std::fs::read_to_string(crate_dir.join("hello.toml")).unwrap();
    let (status, body) = put_plugin(&host, "hello", v2.clone(), Some(&manifest)).await;
    assert_eq!(status, 200, "{body}");
    let after = host.submit("hello", r#"{"name":"Grace"}"#).await;

    let mut greetings = HashSet::new();
    for id in in_flight {
        let job = host.wait_for(id, "succeeded").await;
        assert_eq!(job["attempts"], 1, "{job}");
        let greeting = job["result"]["greeting"].as_str().unwrap();
        greetings.insert(greeting.split(',').next().unwrap().to_owned());
    }
    let job = host.wait_for(after, "succeeded").await;
    assert_eq!(
        job["result"],
        serde_json::json!({"greeting": "Welcome, Grace!"})
    );
    assert_eq!(job["pluginDigest"], digest(&v2).as_str());
    // Each in-flight job ran one version or the other, whichever it
    // started on.
    assert!(
        greetings.iter().all(|g| g == "Hello" || g == "Welcome"),
        "{greetings:?}"
    );
}

/// A second language: `plugins/py_counter` is Python, built with
/// componentize-py against the same WIT. It runs in the same sandbox, with
/// the same host imports (its key-value store, its log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_plugin_runs_with_the_same_contract() {
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/py_counter/py_counter.toml"),
    )
    .unwrap();
    let host = Server::start(Plugins::new().python("py_counter", &manifest), &[]).await;
    for seen in 1..=3 {
        let id = host.submit("py_counter", r#"{"word": "hello"}"#).await;
        let job = host.wait_for(id, "succeeded").await;
        assert_eq!(
            job["result"],
            serde_json::json!({"word": "hello", "seen": seen}),
            "{job:#}"
        );
    }
    let id = host.submit("py_counter", r#"{"word": "world"}"#).await;
    let job = host.wait_for(id, "succeeded").await;
    assert_eq!(job["result"]["seen"], 1, "{job:#}");
    // A payload it cannot read is fatal, as the plugin says.
    let id = host.submit("py_counter", r#"{"nothing": 1}"#).await;
    let job = host.wait_for(id, "dead").await;
    assert_eq!(job["attempts"], 1, "{job:#}");
    assert!(
        job["lastError"]
            .as_str()
            .unwrap()
            .contains("payload must be"),
        "{job:#}"
    );
}

/// Microseconds since the epoch of an RFC 3339 UTC timestamp
/// (`2026-12-03T14:01:35.979954Z`), as the API writes them.
fn micros(text: &str) -> i64 {
    let (date, time) = text.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let t: Vec<f64> = time.split(':').map(|p| p.parse().unwrap()).collect();
    days * 86_400_000_000 + ((t[0] * 3600.0 + t[1] * 60.0 + t[2]) * 1e6).round() as i64
}

/// `rate_per_second` caps the attempts of a type started per second on a
/// host: 60 jobs ready at once at 20/s (a second's worth may start at once)
/// start over at least two seconds, never more than 40 in any second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_type_starts_no_faster_than_its_rate() {
    assert_eq!(micros("1970-01-01T00:00:01.5Z"), 1_500_000);
    assert_eq!(micros("2000-03-01T00:00:00Z"), 951_868_800_000_000);
    let host = Server::start(
        Plugins::new().example("noop", "concurrency = 64\nrate_per_second = 20\n"),
        &["--paused"],
    )
    .await;
    let ids = submit_batch(&host, "noop", 60).await;
    host.admin_post("/admin/workers/resume").await;
    let mut starts = Vec::new();
    for id in ids {
        let job = host.wait_for(id, "succeeded").await;
        starts.push(micros(job["startedAt"].as_str().unwrap()));
    }
    starts.sort();
    for (i, &from) in starts.iter().enumerate() {
        let in_a_second = starts[i..]
            .iter()
            .take_while(|&&t| t < from + 1_000_000)
            .count();
        assert!(
            in_a_second <= 41,
            "{in_a_second} attempts started within a second of {from}"
        );
    }
    let span = starts.last().unwrap() - starts.first().unwrap();
    assert!(
        span >= 1_500_000,
        "60 attempts at 20/s started within {span} µs"
    );
}

/// One plugin handles the job types its manifest lists, with one key-value
/// store for all of them; no two plugins handle one type, and a type let go
/// by one plugin is taken up by the plugin that asked for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_plugin_handles_several_job_types() {
    let both = "job_types = [\"kv_ops\", \"kv_ops_other\"]\n";
    let host = Server::start(Plugins::new().testing("pair", both), &[]).await;
    let dir = host.plugins_dir();

    let set = host
        .submit("kv_ops", r#"{"ops":[["set","shared","from kv_ops"]]}"#)
        .await;
    host.wait_for(set, "succeeded").await;
    let get = r#"{"ops":[["get","shared"]]}"#;
    let id = host.submit("kv_ops_other", get).await;
    let job = host.wait_for(id, "succeeded").await;
    assert_eq!(job["result"], serde_json::json!(["from kv_ops"]), "{job}");
    // The plugin's own name is not one of its types.
    let (status, body) = host.post("/jobs/pair", "{}").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "unknown_job_type", "{body}");
    let entry = plugin(&host, "pair").await.expect("pair is listed");
    assert_eq!(
        entry["jobTypes"],
        serde_json::json!(["kv_ops", "kv_ops_other"])
    );

    // Another plugin asking for one of those types: refused as an upload
    // (nothing written), and as files dropped in (reported, not loaded).
    let testing = plugin_bytes("testing", "testing");
    let rival = "job_types = [\"kv_ops\"]\n";
    let (status, body) = put_plugin(&host, "rival", testing.clone(), Some(rival)).await;
    assert_eq!(status, 422, "{body}");
    let says = "job type \"kv_ops\" is already handled by plugin \"pair\"";
    assert!(body["message"].as_str().unwrap().contains(says), "{body}");
    assert!(!dir.join("rival.wasm").exists());
    drop_in(&dir, "rival.toml", rival.as_bytes());
    drop_in(&dir, "rival.wasm", &testing);
    let entry = wait_for_plugin(&host, "rival", "refused", |p| {
        p.is_some_and(|p| p["status"] == "failed")
    })
    .await
    .unwrap();
    assert!(
        entry["lastError"].as_str().unwrap().contains(says),
        "{entry}"
    );
    assert_eq!(entry["digest"], Value::Null, "{entry}");

    // `pair` lets kv_ops go: `rival` takes it, its files unchanged, and
    // runs it with a key-value store of its own.
    drop_in(&dir, "pair.toml", b"job_types = [\"kv_ops_other\"]\n");
    wait_for_plugin(&host, "rival", "loaded", |p| {
        p.is_some_and(|p| p["status"] == "loaded")
    })
    .await;
    let id = host.submit("kv_ops", get).await;
    let job = host.wait_for(id, "succeeded").await;
    assert_eq!(job["result"], serde_json::json!([null]), "{job}");
    let id = host.submit("kv_ops_other", get).await;
    let job = host.wait_for(id, "succeeded").await;
    assert_eq!(job["result"], serde_json::json!(["from kv_ops"]), "{job}");
}

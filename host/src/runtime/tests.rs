//! The runtime against the real compiled plugins (built by `cargo xtask plugins`).

use std::sync::LazyLock;
use std::time::Duration;

use super::*;
use crate::testing::{plugin_wasm, sqlite_store};
use crate::worker::StoreServices;

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        max_instances: 32,
        max_memory_bytes: 256 << 20,
        cache_dir: None,
    })
    .expect("engine")
}

fn limits() -> Limits {
    Limits {
        fuel: 500_000_000,
        timeout: Duration::from_secs(20),
        memory_bytes: 32 << 20,
    }
}

/// Services for tests whose plugins use no stateful capability: every call
/// fails, as it would with the store unreachable.
struct NoStore;

#[async_trait::async_trait]
impl Services for NoStore {
    async fn kv_get(&self, _: &str, _: &str) -> Result<Option<Vec<u8>>, String> {
        Err("no store in this test".into())
    }
    async fn kv_write(&self, _: &str, _: &str, _: KvWrite) -> Result<bool, String> {
        Err("no store in this test".into())
    }
    async fn kv_durable(&self) -> Result<(), String> {
        Ok(()) // nothing was written
    }
    async fn progress(&self, _: i64, _: i64, _: u8) -> Result<(), String> {
        Err("no store in this test".into())
    }
}

static NO_GRANTS: LazyLock<Arc<Grants>> = LazyLock::new(Arc::default);
static NO_STORE: LazyLock<Arc<dyn Services>> = LazyLock::new(|| Arc::new(NoStore));

fn input<'a>(job_type: &'a str, payload: &'a str) -> AttemptInput<'a> {
    input_with(job_type, payload, &NO_GRANTS, &NO_STORE)
}

fn input_with<'a>(
    job_type: &'a str,
    payload: &'a str,
    grants: &'a Arc<Grants>,
    services: &'a Arc<dyn Services>,
) -> AttemptInput<'a> {
    AttemptInput {
        id: 1,
        job_type,
        plugin: job_type,
        payload,
        attempt: 1,
        max_attempts: 3,
        token: 1,
        grants,
        services,
    }
}

/// The JSON result of an attempt that must succeed.
fn ok_json(report: AttemptReport) -> serde_json::Value {
    match report.outcome {
        AttemptOutcome::Ok(Some(text)) => serde_json::from_str(&text).expect("JSON result"),
        other => panic!("expected a result, got {other:?}"),
    }
}

/// The testing plugin, which picks its behaviour from the job type.
fn testing(rt: &Runtime) -> CompiledPlugin {
    rt.compile("testing", &plugin_wasm("testing", "testing"))
        .expect("testing plugin compiles")
}

fn email(rt: &Runtime) -> CompiledPlugin {
    rt.compile("email_welcome", &plugin_wasm("examples", "email_welcome"))
        .expect("email_welcome compiles")
}

/// After any failure, the same runtime still runs a healthy attempt.
async fn still_serving(rt: &Runtime) {
    let plugin = testing(rt);
    let report = rt.run(&plugin, &limits(), input("counter", "{}")).await;
    assert!(
        matches!(report.outcome, AttemptOutcome::Ok(Some(_))),
        "{:?}",
        report.outcome
    );
}

#[tokio::test]
async fn success_returns_the_result() {
    let rt = runtime();
    let plugin = testing(&rt);
    assert!(plugin.digest.starts_with("sha256:") && plugin.digest.len() == 7 + 64);
    let report = rt.run(&plugin, &limits(), input("counter", "{}")).await;
    assert!(report.fuel_consumed > 0);
    assert_eq!(ok_json(report), serde_json::json!({"calls": 1}));
}

#[tokio::test]
async fn retry_and_fatal_come_back_as_the_plugin_said() {
    let rt = runtime();
    let plugin = email(&rt);
    let report = rt
        .run(
            &plugin,
            &limits(),
            input("email_welcome", r#"{"userId":777}"#),
        )
        .await;
    assert!(
        matches!(&report.outcome, AttemptOutcome::Retry(m) if m.contains("777")),
        "{:?}",
        report.outcome
    );
    let report = rt
        .run(
            &plugin,
            &limits(),
            input("email_welcome", r#"{"name":"no id"}"#),
        )
        .await;
    assert!(
        matches!(&report.outcome, AttemptOutcome::Fatal(m) if m.contains("userId")),
        "{:?}",
        report.outcome
    );
    let testing = testing(&rt);
    let report = rt
        .run(&testing, &limits(), input("always_fatal", "{}"))
        .await;
    assert_eq!(
        report.outcome,
        AttemptOutcome::Fatal("this job can never succeed".into())
    );
}

#[tokio::test]
async fn an_endless_loop_runs_out_of_fuel_within_its_budget() {
    let rt = runtime();
    let plugin = testing(&rt);
    let budget = Limits {
        fuel: 20_000_000,
        ..limits()
    };
    let report = rt.run(&plugin, &budget, input("loop_forever", "{}")).await;
    assert_eq!(
        report.outcome,
        AttemptOutcome::Trapped(TrapReason::FuelExhausted { fuel: 20_000_000 })
    );
    assert_eq!(
        report.fuel_consumed, 20_000_000,
        "it may not burn more than its budget"
    );
    assert_eq!(
        TrapReason::FuelExhausted { fuel: 20_000_000 }.to_string(),
        "fuel exhausted after 20000000 units"
    );
    still_serving(&rt).await;
}

#[tokio::test]
async fn a_sleeping_plugin_is_stopped_at_its_deadline() {
    let rt = runtime();
    let plugin = testing(&rt);
    let short = Limits {
        timeout: Duration::from_millis(300),
        ..limits()
    };
    let report = rt
        .run(&plugin, &short, input("sleeper", r#"{"ms":60000}"#))
        .await;
    let timeout = Duration::from_millis(300);
    assert_eq!(
        report.outcome,
        AttemptOutcome::Trapped(TrapReason::TimedOut { timeout })
    );
    assert_eq!(
        TrapReason::TimedOut { timeout }.to_string(),
        "timed out after 300 ms"
    );
    // Sleeping burns (almost) no fuel: it was the clock, not the budget.
    assert!(
        report.fuel_consumed < 10_000_000,
        "{}",
        report.fuel_consumed
    );
    still_serving(&rt).await;
}

#[tokio::test]
async fn a_busy_plugin_is_also_stopped_at_its_deadline() {
    let rt = runtime();
    let plugin = testing(&rt);
    // Plenty of fuel: only the wall clock can stop it.
    let limits = Limits {
        fuel: u64::MAX / 4,
        timeout: Duration::from_millis(200),
        ..limits()
    };
    let report = rt.run(&plugin, &limits, input("loop_forever", "{}")).await;
    assert!(
        matches!(
            report.outcome,
            AttemptOutcome::Trapped(TrapReason::TimedOut { .. })
        ),
        "{:?}",
        report.outcome
    );
}

#[tokio::test]
async fn memory_growth_is_stopped_by_the_cap() {
    let rt = runtime();
    let plugin = testing(&rt);
    let capped = Limits {
        memory_bytes: 16 << 20,
        ..limits()
    };
    let report = rt.run(&plugin, &capped, input("memory_hog", "{}")).await;
    assert_eq!(
        report.outcome,
        AttemptOutcome::Trapped(TrapReason::MemoryExceeded {
            limit_bytes: 16 << 20
        })
    );
    assert_eq!(
        TrapReason::MemoryExceeded {
            limit_bytes: 16 << 20
        }
        .to_string(),
        "memory limit of 16 MiB exceeded"
    );
    still_serving(&rt).await;
}

#[tokio::test]
async fn a_panic_traps_and_reports_its_message() {
    let rt = runtime();
    let plugin = testing(&rt);
    let report = rt.run(&plugin, &limits(), input("panicker", "{}")).await;
    let AttemptOutcome::Trapped(TrapReason::Crashed(why)) = &report.outcome else {
        panic!("expected a crash, got {:?}", report.outcome);
    };
    assert!(why.contains("wasm trap"), "{why}");
    assert!(
        why.contains("panics on purpose"),
        "the panic message should reach the error: {why}"
    );
    still_serving(&rt).await;
}

#[tokio::test]
async fn every_attempt_gets_a_fresh_sandbox() {
    let rt = runtime();
    let plugin = testing(&rt);
    for _ in 0..3 {
        let report = rt.run(&plugin, &limits(), input("counter", "{}")).await;
        assert_eq!(
            report.outcome,
            AttemptOutcome::Ok(Some(r#"{"calls":1}"#.into()))
        );
    }
}

#[tokio::test]
async fn the_sandbox_grants_no_environment_files_or_network() {
    let rt = runtime();
    let plugin = testing(&rt);
    // The test process has an environment (PATH, HOME, ...); none of it may
    // reach the plugin.
    assert!(std::env::vars().count() > 0);
    let report = rt
        .run(&plugin, &limits(), input("probe_sandbox", "{}"))
        .await;
    let AttemptOutcome::Ok(Some(seen)) = report.outcome else {
        panic!("probe failed: {:?}", report.outcome);
    };
    let seen: serde_json::Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(seen["env"], 0, "{seen}");
    assert_eq!(seen["args"], 0, "{seen}");
    assert_eq!(seen["fs"], false, "{seen}");
    assert_eq!(seen["net"], false, "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_plugin_does_not_stall_others() {
    let rt = std::sync::Arc::new(runtime());
    let bad = testing(&rt);
    let good = testing(&rt);
    let forever = Limits {
        fuel: u64::MAX / 4,
        timeout: Duration::from_secs(20),
        ..limits()
    };
    // Four spinners on the runtime's two worker threads...
    let spinners: Vec<_> = (0..4)
        .map(|_| {
            let (rt, bad) = (rt.clone(), bad.clone());
            tokio::spawn(async move { rt.run(&bad, &forever, input("loop_forever", "{}")).await })
        })
        .collect();
    // ...and healthy attempts on the same threads still complete (the
    // spinners yield at every epoch tick), long before the spinners' deadline.
    let healthy: Vec<_> = (0..20)
        .map(|_| {
            let (rt, good) = (rt.clone(), good.clone());
            tokio::spawn(async move { rt.run(&good, &limits(), input("counter", "{}")).await })
        })
        .collect();
    for h in healthy {
        let report = h.await.unwrap();
        assert!(
            matches!(report.outcome, AttemptOutcome::Ok(Some(_))),
            "{:?}",
            report.outcome
        );
    }
    assert!(
        spinners.iter().all(|s| !s.is_finished()),
        "the spinners should still be spinning"
    );
    // Dropping a running attempt (as the deadline does) frees its thread.
    for s in spinners {
        s.abort();
        assert!(s.await.unwrap_err().is_cancelled());
    }
    still_serving(&rt).await;
}

#[tokio::test]
async fn a_chatty_plugin_is_not_failed_by_its_stderr() {
    let rt = runtime();
    let plugin = testing(&rt);
    let report = rt.run(&plugin, &limits(), input("chatty", "{}")).await;
    assert_eq!(report.outcome, AttemptOutcome::Ok(None));
    // The panic message written after 100 KiB of chatter is the part kept.
    let report = rt
        .run(&plugin, &limits(), input("chatty", r#"{"panic":true}"#))
        .await;
    let AttemptOutcome::Trapped(TrapReason::Crashed(why)) = &report.outcome else {
        panic!("expected a crash, got {:?}", report.outcome);
    };
    assert!(why.contains("chatty plugin panics after all that"), "{why}");
}

#[tokio::test]
async fn compiled_components_are_cached_by_digest() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        max_instances: 4,
        max_memory_bytes: 64 << 20,
        cache_dir: Some(dir.path().to_owned()),
    };
    let wasm = plugin_wasm("testing", "testing");
    let first = Runtime::new(config.clone())
        .unwrap()
        .compile("testing", &wasm)
        .unwrap();
    let cached: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let hex = first.digest.trim_start_matches("sha256:");
    assert!(cached[0].to_string_lossy().starts_with(hex), "{cached:?}");
    // A new runtime (a restart) loads the artifact instead of compiling:
    // the file is not rewritten.
    let artifact = dir.path().join(&cached[0]);
    let written = std::fs::metadata(&artifact).unwrap().modified().unwrap();
    let rt = Runtime::new(config).unwrap();
    let again = rt.compile("testing", &wasm).unwrap();
    assert_eq!(
        std::fs::metadata(&artifact).unwrap().modified().unwrap(),
        written
    );
    assert_eq!(again.digest, first.digest);
    let report = rt.run(&again, &limits(), input("counter", "{}")).await;
    assert!(matches!(report.outcome, AttemptOutcome::Ok(Some(_))));
}

#[tokio::test]
async fn a_component_for_another_world_is_refused_with_a_clear_error() {
    let rt = runtime();
    let err = rt
        .compile("junk", b"not wasm at all")
        .unwrap_err()
        .to_string();
    assert!(err.contains("compiling plugin junk"), "{err}");
}

#[tokio::test]
async fn config_get_sees_only_the_manifest_keys() {
    let rt = runtime();
    let plugin = testing(&rt);
    let grants = Arc::new(Grants {
        config: [(
            "mail_api_url".to_owned(),
            "http://127.0.0.1:9/send".to_owned(),
        )]
        .into(),
        ..Grants::default()
    });
    let seen = ok_json(
        rt.run(
            &plugin,
            &limits(),
            input_with(
                "config_echo",
                r#"{"keys":["mail_api_url","PATH","HOME",""]}"#,
                &grants,
                &NO_STORE,
            ),
        )
        .await,
    );
    assert_eq!(
        seen,
        serde_json::json!({"mail_api_url": "http://127.0.0.1:9/send", "PATH": null, "HOME": null, "": null})
    );
}

#[tokio::test]
async fn kv_is_private_to_each_plugin_and_keeps_its_limits() {
    let rt = runtime();
    let plugin = testing(&rt);
    let (store, _dir) = sqlite_store().await;
    let services: Arc<dyn Services> = Arc::new(StoreServices(Arc::new(store)));
    let run = |job_type: &'static str, payload: String| {
        let (rt, plugin, services) = (&rt, &plugin, &services);
        async move {
            ok_json(
                rt.run(
                    plugin,
                    &limits(),
                    input_with(job_type, &payload, &NO_GRANTS, services),
                )
                .await,
            )
        }
    };
    let ops = |ops: serde_json::Value| serde_json::json!({ "ops": ops }).to_string();

    let first = run(
        "kv_ops",
        ops(serde_json::json!([
            ["get", "welcome:42"],
            ["set_if_absent", "welcome:42", "sent"],
            ["set_if_absent", "welcome:42", "again"],
            ["get", "welcome:42"],
            ["set", "counter", "1"],
            ["set", "counter", "2"],
            ["get", "counter"]
        ])),
    )
    .await;
    assert_eq!(
        first,
        serde_json::json!([null, true, false, "sent", true, true, "2"])
    );

    // Another plugin names the same keys and sees none of them; its own
    // set-if-absent wins in its own scope.
    let other = run(
        "kv_ops_other",
        ops(serde_json::json!([
            ["get", "welcome:42"],
            ["get", "counter"],
            ["set_if_absent", "welcome:42", "mine"],
            ["delete", "counter"]
        ])),
    )
    .await;
    assert_eq!(other, serde_json::json!([null, null, true, false]));

    // A later attempt of the first plugin still has its keys (durable), and
    // the other plugin's write did not touch them.
    let again = run(
        "kv_ops",
        ops(serde_json::json!([
            ["get", "welcome:42"],
            ["delete", "counter"],
            ["delete", "counter"],
            ["get", "counter"]
        ])),
    )
    .await;
    assert_eq!(again, serde_json::json!(["sent", true, false, null]));

    // Limits: an empty or over-long key and an over-large value are refused
    // inside the plugin, and nothing is written.
    let long_key = "k".repeat(host::MAX_KV_KEY + 1);
    let refused = run(
        "kv_ops",
        ops(serde_json::json!([
            ["set", "", "v"],
            ["set", long_key, "v"],
            ["set_big", "big", host::MAX_KV_VALUE + 1],
            ["set", "nul\u{0}key", "v"],
            ["get", "big"],
            ["set_big", "fits", host::MAX_KV_VALUE]
        ])),
    )
    .await;
    for (i, why) in [
        (0, "1 to 256 bytes"),
        (1, "1 to 256 bytes"),
        (2, "at most 65536 bytes"),
    ] {
        let msg = refused[i]["invalid"]
            .as_str()
            .unwrap_or_else(|| panic!("{refused}"));
        assert!(msg.contains(why), "{msg}");
    }
    assert!(
        refused[3]["invalid"]
            .as_str()
            .is_some_and(|m| m.contains("NUL")),
        "{refused}"
    );
    assert_eq!(refused[4], serde_json::Value::Null);
    assert_eq!(refused[5], true);

    // With the store unreachable, a call fails inside the plugin as
    // `unavailable`; the attempt itself carries on.
    let down = ok_json(
        rt.run(
            &plugin,
            &limits(),
            input_with(
                "kv_ops",
                &ops(serde_json::json!([["get", "x"]])),
                &NO_GRANTS,
                &NO_STORE,
            ),
        )
        .await,
    );
    assert!(down[0]["unavailable"].is_string(), "{down}");
}

#[tokio::test]
async fn a_plugin_built_against_0_1_0_still_runs() {
    let rt = runtime();
    let wasm = include_bytes!("testdata/noop-wit-0.1.0.wasm");
    let seen = rt.inspect("noop", wasm).unwrap();
    assert!(
        seen.imports
            .iter()
            .any(|i| i == "jobhost:plugin/types@0.1.0"),
        "{:?}",
        seen.imports
    );
    let plugin = rt.compile("noop", wasm).expect("a 0.1.0 plugin links");
    let report = rt.run(&plugin, &limits(), input("noop", "{}")).await;
    assert!(
        matches!(report.outcome, AttemptOutcome::Ok(_)),
        "{:?}",
        report.outcome
    );
}

/// A local HTTP server counting the requests it gets; answers "hello".
async fn counting_server() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let hits = counted.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            "hello"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_http_reaches_only_the_allowed_hosts() {
    let rt = runtime();
    let plugin = testing(&rt);
    let (addr, hits) = counting_server().await;
    let allowed = Arc::new(Grants {
        outbound: vec![HostPattern::parse(&format!("http://127.0.0.1:{}", addr.port())).unwrap()],
        ..Grants::default()
    });
    let get = |url: String, grants: Arc<Grants>| {
        let (rt, plugin) = (&rt, &plugin);
        async move {
            let payload = serde_json::json!({ "url": url }).to_string();
            ok_json(
                rt.run(
                    plugin,
                    &limits(),
                    input_with("http_get", &payload, &grants, &NO_STORE),
                )
                .await,
            )
        }
    };

    let ok = get(
        format!("http://127.0.0.1:{}/hi", addr.port()),
        allowed.clone(),
    )
    .await;
    assert_eq!(ok, serde_json::json!({"status": 200, "body": "hello"}));
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // The same server by another name, on another port, over another
    // scheme, or with no allow-list at all: denied inside the plugin, and
    // nothing reaches the server.
    for (url, grants) in [
        (
            format!("http://localhost:{}/hi", addr.port()),
            allowed.clone(),
        ),
        (
            format!("http://127.0.0.1:{}/hi", addr.port() + 1),
            allowed.clone(),
        ),
        (
            format!("https://127.0.0.1:{}/hi", addr.port()),
            allowed.clone(),
        ),
        (
            format!("http://127.0.0.1:{}/hi", addr.port()),
            NO_GRANTS.clone(),
        ),
        (
            format!("http://user@127.0.0.1:{}/hi", addr.port()),
            allowed.clone(),
        ),
    ] {
        let seen = get(url.clone(), grants).await;
        assert_eq!(seen, serde_json::json!({ "denied": url }), "{url}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// Services whose key-value writes never become durable.
struct NeverDurable;

#[async_trait::async_trait]
impl Services for NeverDurable {
    async fn kv_get(&self, _: &str, _: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }
    async fn kv_write(&self, _: &str, _: &str, _: KvWrite) -> Result<bool, String> {
        Ok(true)
    }
    async fn kv_durable(&self) -> Result<(), String> {
        Err("the disk is gone".into())
    }
    async fn progress(&self, _: i64, _: i64, _: u8) -> Result<(), String> {
        Ok(())
    }
}

/// An outbound request waits until the key-value writes answered before it
/// are durable: when they cannot become durable, the request never leaves
/// and the plugin gets the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_request_waits_for_the_key_value_writes_before_it() {
    let rt = runtime();
    let plugin = testing(&rt);
    let (addr, hits) = counting_server().await;
    let grants = Arc::new(Grants {
        outbound: vec![HostPattern::parse(&format!("http://127.0.0.1:{}", addr.port())).unwrap()],
        ..Grants::default()
    });
    let services: Arc<dyn Services> = Arc::new(NeverDurable);
    let payload = serde_json::json!({ "url": format!("http://127.0.0.1:{}/", addr.port()) });
    let payload = payload.to_string();
    let seen = ok_json(
        rt.run(
            &plugin,
            &limits(),
            input_with("http_get", &payload, &grants, &services),
        )
        .await,
    );
    let error = seen["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the key-value store is unavailable: the disk is gone"),
        "{seen}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing reached the server");
}

#[tokio::test]
async fn host_side_objects_are_capped_outside_the_memory_limit() {
    let rt = runtime();
    let plugin = testing(&rt);
    let report = rt
        .run(&plugin, &limits(), input("resource_hog", "{}"))
        .await;
    let AttemptOutcome::Trapped(TrapReason::Crashed(why)) = &report.outcome else {
        panic!("expected the cap to stop it, got {:?}", report.outcome);
    };
    assert!(why.contains("resource table"), "{why}");
    still_serving(&rt).await;
}

/// Compiling runs at the lowest CPU priority, on a thread of its own: the
/// caller's priority is left as it was.
#[cfg(target_os = "linux")]
#[test]
fn compiling_runs_at_the_lowest_priority() {
    // SAFETY: reads the calling thread's niceness.
    let niceness = || unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let before = niceness();
    assert_eq!(super::at_low_priority(niceness), 19);
    assert_eq!(niceness(), before);
    assert_eq!(super::at_low_priority(|| 7), 7);
}

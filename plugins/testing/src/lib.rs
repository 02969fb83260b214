//! Misbehaving and edge-case handlers for jobhost's own test suite.
//!
//! One component serves several job types: the test harness installs this
//! `.wasm` under each name below (with its own manifest) and the job type
//! picks the behaviour. None of these is an example to copy.

wit_bindgen::generate!({ path: "../../wit", world: "handler" });

use jobhost::plugin::host::{Level, log, progress};
use jobhost::plugin::{config, kv};
use serde_json::{Value, json};

fn payload(job: &Job) -> Result<Value, Failure> {
    serde_json::from_str(&job.payload).map_err(|e| Failure::Fatal(format!("bad payload: {e}")))
}

fn kv_error(e: kv::Error) -> Value {
    match e {
        kv::Error::Invalid(m) => json!({ "invalid": m }),
        kv::Error::Unavailable(m) => json!({ "unavailable": m }),
    }
}

/// Runs `{"ops": [["set", key, value], ["get", key], ["set_if_absent", key,
/// value], ["delete", key], ["set_big", key, bytes]]}` against the plugin's
/// key-value store and returns each op's result.
fn kv_ops(job: &Job) -> Result<Option<String>, Failure> {
    let p = payload(job)?;
    let mut results = Vec::new();
    for op in p["ops"].as_array().cloned().unwrap_or_default() {
        let (name, key) = (op[0].as_str().unwrap_or(""), op[1].as_str().unwrap_or(""));
        let value = op[2].as_str().unwrap_or("").as_bytes().to_vec();
        let result = match name {
            "get" => kv::get(key).map(|v| match v {
                Some(v) => json!(String::from_utf8_lossy(&v)),
                None => Value::Null,
            }),
            "set" => kv::set(key, &value).map(|()| json!(true)),
            "set_big" => kv::set(key, &vec![b'x'; op[2].as_u64().unwrap_or(0) as usize])
                .map(|()| json!(true)),
            "set_if_absent" => kv::set_if_absent(key, &value).map(|b| json!(b)),
            "delete" => kv::delete(key).map(|b| json!(b)),
            other => return Err(Failure::Fatal(format!("unknown kv op {other}"))),
        };
        results.push(result.unwrap_or_else(kv_error));
    }
    Ok(Some(Value::Array(results).to_string()))
}

struct Testing;

impl Guest for Testing {
    fn handle(job: Job) -> Result<Option<String>, Failure> {
        match job.job_type.as_str() {
            // Burns fuel until the host stops it.
            "loop_forever" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            // Grows memory 1 MiB at a time until the host's cap denies it.
            "memory_hog" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "always_fatal" => Err(Failure::Fatal("this job can never succeed".into())),
            // Fails its first attempt, succeeds on the next.
            "flaky" => {
                if job.attempt == 1 {
                    Err(Failure::Retry("first attempt always fails".into()))
                } else {
                    Ok(Some(format!("{{\"attempt\":{}}}", job.attempt)))
                }
            }
            "panicker" => panic!("the panicker plugin panics on purpose"),
            // Writes 100 KiB to stderr, then panics if the payload says so.
            "chatty" => {
                for i in 0..1000 {
                    eprintln!("chatter line {i:04} {}", "-".repeat(80));
                }
                if job.payload.contains("panic") {
                    panic!("chatty plugin panics after all that");
                }
                Ok(None)
            }
            // Sleeps on the WASI monotonic clock (no fuel burns while it
            // waits) for payload `{"ms": N}`, then succeeds.
            "sleeper" => {
                let payload: serde_json::Value = serde_json::from_str(&job.payload)
                    .map_err(|e| Failure::Fatal(format!("bad payload: {e}")))?;
                let ms = payload["ms"].as_u64().unwrap_or(100);
                log(Level::Info, &format!("sleeping {ms} ms"));
                std::thread::sleep(std::time::Duration::from_millis(ms));
                Ok(Some(format!("{{\"slept\":{ms}}}")))
            }
            // Counts its calls in a static: a fresh sandbox per attempt
            // means every attempt sees 1.
            "counter" => {
                static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                Ok(Some(format!("{{\"calls\":{n}}}")))
            }
            // Reports what the sandbox lets it see: environment, files, network.
            "probe_sandbox" => {
                let env = std::env::vars().count();
                let fs = std::fs::read_dir("/").is_ok()
                    || std::fs::read_to_string("/etc/passwd").is_ok();
                let net = std::net::TcpStream::connect("127.0.0.1:5432").is_ok();
                let args = std::env::args().count();
                Ok(Some(format!(
                    "{{\"env\":{env},\"fs\":{fs},\"net\":{net},\"args\":{args}}}"
                )))
            }
            // Returns `config.get` of each key in `{"keys": [...]}`.
            "config_echo" => {
                let p = payload(&job)?;
                let mut out = serde_json::Map::new();
                for key in p["keys"].as_array().cloned().unwrap_or_default() {
                    let key = key.as_str().unwrap_or_default().to_owned();
                    out.insert(key.clone(), json!(config::get(&key)));
                }
                Ok(Some(Value::Object(out).to_string()))
            }
            "kv_ops" | "kv_ops_other" => kv_ops(&job),
            // Creates host-side objects (HTTP header sets) and never drops
            // them, until the host's cap on them stops the attempt.
            "resource_hog" => loop {
                let fields = wasi::http::types::Fields::new();
                std::mem::forget(fields);
            },
            // Reports `{"percent": P}` progress, then sleeps `{"ms": N}`
            // on the WASI clock and succeeds.
            "progress" => {
                let p = payload(&job)?;
                progress(p["percent"].as_u64().unwrap_or(50) as u8);
                std::thread::sleep(std::time::Duration::from_millis(
                    p["ms"].as_u64().unwrap_or(0),
                ));
                Ok(None)
            }
            // `{"url": U}`: GETs U through wasi:http; returns the status and
            // body, or the error (`denied` when the allow-list refuses it).
            "http_get" => {
                let p = payload(&job)?;
                let url = p["url"].as_str().unwrap_or_default();
                Ok(Some(
                    match jobhost_plugin::http::get(url, &[]) {
                        Ok(r) => json!({ "status": r.status, "body": r.text() }),
                        Err(jobhost_plugin::http::Error::Denied(u)) => json!({ "denied": u }),
                        Err(e) => json!({ "error": e.to_string() }),
                    }
                    .to_string(),
                ))
            }
            other => Err(Failure::Fatal(format!(
                "testing plugin has no behaviour for job type {other}"
            ))),
        }
    }
}

export!(Testing);

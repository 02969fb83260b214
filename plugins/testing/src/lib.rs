//! Misbehaving and edge-case handlers for jobhost's own test suite.
//!
//! One component serves several job types: the test harness installs this
//! `.wasm` under each name below (with its own manifest) and the job type
//! picks the behaviour. None of these is an example to copy.

wit_bindgen::generate!({ path: "../../wit", world: "handler" });

use jobhost::plugin::host::{Level, log};

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
            other => Err(Failure::Fatal(format!(
                "testing plugin has no behaviour for job type {other}"
            ))),
        }
    }
}

export!(Testing);

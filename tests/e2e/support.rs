//! Harness for the end-to-end tests: starts the real `jobhost` binary on a
//! free port with a plugin directory of the test's choosing, and talks HTTP
//! to it. Waiting is on observed state (polling the API), never on sleeps
//! standing in for events.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";

/// How long any wait may take before the test fails (generous: CI machines are slow).
const PATIENCE: Duration = Duration::from_secs(60);

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The jobhost binary under test, for its other subcommands.
pub fn jobhost() -> Command {
    Command::new(binary())
}

fn binary() -> PathBuf {
    std::env::var_os("JOBHOST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/debug/jobhost"))
}

fn compiled_plugins() -> PathBuf {
    std::env::var_os("JOBHOST_TEST_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/jobhost-plugins"))
}

/// The bytes of a compiled plugin: `group` is `examples` or `testing`.
pub fn plugin_bytes(group: &str, name: &str) -> Vec<u8> {
    let path = compiled_plugins().join(group).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run the tests with `cargo xtask test`",
            path.display()
        )
    })
}

/// A plugin directory for one test: `(job type, source wasm, manifest)`.
pub struct Plugins(Vec<(&'static str, &'static str, String)>);

impl Plugins {
    pub fn new() -> Self {
        Plugins(Vec::new())
    }

    /// `examples/email_welcome.wasm` under its own name.
    pub fn example(mut self, name: &'static str, manifest: &str) -> Self {
        self.0.push((name, "examples", manifest.to_owned()));
        self
    }

    /// `python/NAME.wasm` (built with componentize-py) under its own name.
    pub fn python(mut self, name: &'static str, manifest: &str) -> Self {
        self.0.push((name, "python", manifest.to_owned()));
        self
    }

    /// The testing plugin installed as job type `name` (it picks its
    /// behaviour from the type).
    pub fn testing(mut self, name: &'static str, manifest: &str) -> Self {
        self.0.push((name, "testing", manifest.to_owned()));
        self
    }

    fn install(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        for (name, group, manifest) in &self.0 {
            let file = if *group == "testing" {
                "testing"
            } else {
                *name
            };
            let src = compiled_plugins().join(group).join(format!("{file}.wasm"));
            std::fs::copy(&src, dir.join(format!("{name}.wasm"))).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run the tests with `cargo xtask test`",
                    src.display()
                )
            });
            std::fs::write(dir.join(format!("{name}.toml")), manifest).unwrap();
        }
    }
}

/// A running `jobhost serve`.
pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub data: tempfile::TempDir,
    args: Vec<String>,
    pub http: reqwest::Client,
}

impl Server {
    /// Starts jobhost with `plugins` and extra serve flags.
    pub async fn start(plugins: Plugins, args: &[&str]) -> Server {
        let data = tempfile::tempdir().unwrap();
        plugins.install(&data.path().join("plugins"));
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (child, url) = spawn(data.path(), &args);
        Server {
            child: Some(child),
            url,
            data,
            args,
            http: reqwest::Client::new(),
        }
    }

    /// The directory the server loads and watches plugins in.
    pub fn plugins_dir(&self) -> PathBuf {
        self.data.path().join("plugins")
    }

    /// Starts jobhost again on the same data directory (after a stop or kill).
    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// Restarts with extra flags added to the original ones.
    pub fn restart_with(&mut self, extra: &[&str]) {
        assert!(self.child.is_none(), "stop the server before restarting it");
        let mut args = self.args.clone();
        args.extend(extra.iter().map(|s| s.to_string()));
        let (child, url) = spawn(self.data.path(), &args);
        self.child = Some(child);
        self.url = url;
    }

    /// Sends a signal and waits for the process to exit.
    pub fn signal_and_wait(&mut self, signal: i32) -> ExitStatus {
        let mut child = self.child.take().expect("server is running");
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "jobhost did not exit after signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        decode(resp).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        decode(
            self.http
                .get(format!("{}{path}", self.url))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        let req = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(ADMIN_TOKEN);
        decode(req.send().await.unwrap()).await
    }

    pub async fn admin_post(&self, path: &str) -> (u16, Value) {
        let req = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(ADMIN_TOKEN);
        decode(req.send().await.unwrap()).await
    }

    pub async fn admin_post_json(&self, path: &str, body: &str) -> (u16, Value) {
        let req = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body.to_owned());
        decode(req.send().await.unwrap()).await
    }

    /// Any admin request, with an optional JSON body.
    pub async fn admin_send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            req = req.json(body);
        }
        decode(req.send().await.unwrap()).await
    }

    /// Submits a job that must be accepted; returns its id.
    pub async fn submit(&self, job_type: &str, payload: &str) -> i64 {
        let (status, body) = self.post(&format!("/jobs/{job_type}"), payload).await;
        assert_eq!(status, 202, "{body}");
        body["jobId"].as_i64().expect("jobId")
    }

    /// Submits one batch that must be accepted; returns its jobs' ids.
    pub async fn submit_batch(
        &self,
        job_type: &str,
        payloads: impl IntoIterator<Item = String>,
    ) -> Vec<i64> {
        let payloads: Vec<String> = payloads.into_iter().collect();
        let (status, body) = self
            .post(
                &format!("/jobs/{job_type}/batch"),
                &format!("[{}]", payloads.join(",")),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        body["jobIds"]
            .as_array()
            .expect("jobIds")
            .iter()
            .map(|id| id.as_i64().expect("a job id"))
            .collect()
    }

    pub async fn job(&self, id: i64) -> Value {
        let (status, body) = self.get(&format!("/jobs/{id}")).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Polls the job until its status is `status`; returns it.
    pub async fn wait_for(&self, id: i64, status: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let job = self.job(id).await;
            if job["status"] == status {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never became {status}: {job:#}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls the job until its history has at least `n` events; returns it.
    pub async fn wait_for_events(&self, id: i64, n: usize) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let job = self.job(id).await;
            if job["events"].as_array().is_some_and(|e| e.len() >= n) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never reached {n} events: {job:#}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn metrics_text(&self) -> String {
        let resp = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub async fn decode(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text:?}"));
    (status, body)
}

/// Starts the binary and reads its banner for the bound address.
/// The value of `JOBHOST_PLUGIN_TEST_SECRET` in every server's environment.
pub const PLUGIN_SECRET: &str = "s3cret-from-the-environment";

fn spawn(data: &Path, args: &[String]) -> (Child, String) {
    let mut child = Command::new(binary())
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--admin-token", ADMIN_TOKEN])
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env(
            "JOBHOST_LOG",
            std::env::var("JOBHOST_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        // For manifests' `{ env = "..." }` config values.
        .env("JOBHOST_PLUGIN_TEST_SECRET", PLUGIN_SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "starting {}: {e}; run the tests with `cargo xtask test`",
                binary().display()
            )
        });
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(rest) = line.strip_prefix("jobhost listening on ") {
                    break rest.trim().to_owned();
                }
            }
            _ => panic!(
                "jobhost exited before printing its address: {:?}",
                child.wait()
            ),
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, url)
}

/// A database of its own on the test PostgreSQL server
/// (`JOBHOST_TEST_DATABASE_URL`), for one test; dropped with the guard.
pub struct TestDb {
    pub url: String,
    admin_url: String,
    name: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        use sqlx::Connection;
        let admin_url = std::env::var("JOBHOST_TEST_DATABASE_URL").unwrap_or_else(|_| {
            panic!("JOBHOST_TEST_DATABASE_URL is not set; run the tests with `cargo xtask test`")
        });
        let name = format!("jobhost_e2e_{}_{:08x}", std::process::id(), rand_u32());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {admin_url}: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let _ = admin.close().await;
        let url = match admin_url.rsplit_once('/') {
            Some((server, _)) if server.contains("://") && !server.ends_with('/') => {
                format!("{server}/{name}")
            }
            _ => panic!("JOBHOST_TEST_DATABASE_URL must name a database: {admin_url}"),
        };
        TestDb {
            url,
            admin_url,
            name,
        }
    }

    /// A connection of the test's own, to check the truth behind the API.
    pub async fn connect(&self) -> sqlx::PgConnection {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&self.url).await.unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = on_own_runtime(async move {
            use sqlx::Connection;
            let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await?;
            admin.close().await
        });
    }
}

/// Runs `work` to its end on a thread and runtime of its own: for clean-up
/// in `Drop`, which runs inside the test's runtime and cannot block on it.
pub fn on_own_runtime<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> std::thread::Result<T> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for clean-up")
            .block_on(work)
    })
    .join()
}

pub fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}

impl TestDb {
    /// Flags for a host on this database that claims at least every 200 ms.
    pub fn host_flags(&self) -> [&str; 4] {
        [
            "--database-url",
            self.url.as_str(),
            "--poll-interval-ms",
            "200",
        ]
    }

    /// The server's `host:port`, and the URL with another `host:port` in
    /// its place (to reach the database through a [`Proxy`]).
    pub fn via(&self, host_port: &str) -> (String, String) {
        let (scheme, rest) = self.url.split_once("://").expect("a URL");
        let (authority, path) = rest.split_once('/').expect("a database in the URL");
        let (userinfo, server) = match authority.rsplit_once('@') {
            Some((u, s)) => (format!("{u}@"), s),
            None => (String::new(), authority),
        };
        let server = if server.contains(':') {
            server.to_owned()
        } else {
            format!("{server}:5432")
        };
        (server, format!("{scheme}://{userinfo}{host_port}/{path}"))
    }
}

/// A TCP proxy in front of the database that the test can cut (every
/// connection dropped, new ones refused) and restore: a network outage
/// between one host and PostgreSQL, with PostgreSQL itself untouched.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    upstream: String,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut proxy = Proxy {
            addr,
            upstream: upstream.to_owned(),
            task: None,
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let upstream = self.upstream.clone();
        self.task = Some(tokio::spawn(async move {
            // The forwarders belong to this task: aborting it drops the
            // set, which aborts them all.
            let mut live = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { continue };
                        let upstream = upstream.clone();
                        live.spawn(async move {
                            if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        });
                    }
                    Some(_) = live.join_next() => {}
                }
            }
        }));
    }

    /// Drops every connection and refuses new ones.
    pub async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Accepts connections again, on the same address.
    pub async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

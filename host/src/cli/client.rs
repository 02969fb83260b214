//! The command-line client: `jobhost enqueue`, `jobhost jobs get|list|delete` and
//! `jobhost dlq replay`, talking to a running host over its HTTP API.
//!
//! Every command takes `--url` (`JOBHOST_URL`, default the local host) and
//! the admin token (`--token` / `JOBHOST_ADMIN_TOKEN`, else the file
//! `<data-dir>/admin-token` the server wrote), prints a short human answer,
//! or the API's JSON with `--json`. An API error prints its code and message
//! and exits 1. Plain HTTP: put TLS in front of jobhost, and reach it
//! through that or a tunnel.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[derive(Debug, Args)]
pub struct Connection {
    /// The jobhost to talk to.
    #[arg(long, env = "JOBHOST_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The admin token (default: the one in `<data-dir>/admin-token`).
    #[arg(long, env = "JOBHOST_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where the server keeps its admin token, when `--token` is not given.
    #[arg(long, env = "JOBHOST_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Print the API's JSON answer instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// One job, with its history.
    Get {
        id: i64,
        #[command(flatten)]
        conn: Connection,
    },
    /// Jobs, newest first.
    List {
        /// queued, scheduled, running, succeeded, dead or cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Only jobs of this type.
        #[arg(long = "type")]
        job_type: Option<String>,
        /// How many (each page holds at most 1,000; more follow the cursor).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        conn: Connection,
    },
    /// Cancels a job that has not finished; a running attempt is stopped
    /// wherever it runs.
    Cancel {
        id: i64,
        #[command(flatten)]
        conn: Connection,
    },
    /// Deletes finished jobs, with their history: retention by hand.
    Delete {
        /// succeeded, dead or cancelled.
        #[arg(long)]
        state: String,
        /// Those that finished longer ago than this (`24h`, `7d`, `0s`: all).
        #[arg(long)]
        older_than: String,
        /// Only jobs of this type.
        #[arg(long = "type")]
        job_type: Option<String>,
        #[command(flatten)]
        conn: Connection,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Moves dead jobs back to the queue with a fresh attempt budget, in one
    /// transaction: those matching every condition given, or `--all`.
    Replay {
        /// Dead jobs of this type.
        #[arg(long = "type")]
        job_type: Option<String>,
        /// Dead jobs whose last error contains this text.
        #[arg(long)]
        error: Option<String>,
        /// These dead jobs (repeat the flag for several).
        #[arg(long = "id")]
        ids: Vec<i64>,
        /// Every dead job.
        #[arg(long, conflicts_with_all = ["job_type", "error", "ids"])]
        all: bool,
        #[command(flatten)]
        conn: Connection,
    },
}

/// `jobhost enqueue TYPE JSON`.
#[derive(Debug, Args)]
pub struct Enqueue {
    /// The job type.
    job_type: String,
    /// The payload, a JSON document (`-` or nothing: read it from stdin).
    payload: Option<String>,
    /// Submitting again with the same key returns the same job.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Run it no sooner than this many milliseconds from now.
    #[arg(long, conflicts_with = "run_at")]
    delay_ms: Option<u64>,
    /// Run it no sooner than this time (RFC 3339, UTC: 2026-12-03T09:00:00Z).
    #[arg(long)]
    run_at: Option<String>,
    /// Attempts before the dead-letter queue (default: the plugin's).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// -100 to 100 (default 0): higher is run first.
    #[arg(long, allow_hyphen_values = true)]
    priority: Option<i16>,
    /// Deadline per attempt in milliseconds (the plugin's own caps it).
    #[arg(long)]
    timeout_ms: Option<u32>,
    #[command(flatten)]
    conn: Connection,
}

/// An answer from the API: its status and JSON body.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Value,
}

impl Connection {
    fn token(&self) -> anyhow::Result<String> {
        if let Some(token) = &self.token {
            return Ok(token.clone());
        }
        let path = self.data_dir.join("admin-token");
        let token = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no --token or JOBHOST_ADMIN_TOKEN, and {} cannot be read",
                path.display()
            )
        })?;
        Ok(token.trim().to_owned())
    }

    pub(super) async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()?;
        let mut request = client.request(method, &url).bearer_auth(self.token()?);
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach jobhost at {}", self.url))?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer { status, body })
    }

    /// The answer, printed as JSON if asked; an API error is an error.
    pub(super) fn accept(&self, answer: Answer) -> anyhow::Result<Option<Value>> {
        if answer.status >= 400 {
            if self.json {
                println!("{}", serde_json::to_string_pretty(&answer.body)?);
            }
            return Err(api_error(&answer));
        }
        if self.json {
            println!("{}", serde_json::to_string_pretty(&answer.body)?);
            return Ok(None);
        }
        Ok(Some(answer.body))
    }
}

/// An error answer as the CLI reports it: its code, status and message.
fn api_error(answer: &Answer) -> anyhow::Error {
    let code = answer.body["code"].as_str().unwrap_or("error");
    let message = answer.body["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| answer.body.to_string());
    anyhow::anyhow!("{code} ({}): {message}", answer.status)
}

pub(super) fn block_on<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

pub fn enqueue(args: Enqueue) -> anyhow::Result<()> {
    let payload = match args.payload.as_deref() {
        None | Some("-") => std::io::read_to_string(std::io::stdin())?,
        Some(text) => text.to_owned(),
    };
    if !jobhost::plugins::valid_type_name(&args.job_type) {
        bail!(
            "{:?} is not a job type name (1-64 of a-z, 0-9, _ and -, starting with a letter)",
            args.job_type
        );
    }
    serde_json::from_str::<Value>(&payload).context("the payload must be a JSON document")?;
    let mut options = Vec::new();
    if let Some(ms) = args.delay_ms {
        options.push(format!("delay_ms={ms}"));
    }
    if let Some(at) = &args.run_at {
        options.push(format!("runAt={}", encode(at)));
    }
    if let Some(n) = args.max_attempts {
        options.push(format!("maxAttempts={n}"));
    }
    if let Some(n) = args.priority {
        options.push(format!("priority={n}"));
    }
    if let Some(ms) = args.timeout_ms {
        options.push(format!("timeoutMs={ms}"));
    }
    let mut path = format!("/jobs/{}", args.job_type);
    if !options.is_empty() {
        path.push_str(&format!("?{}", options.join("&")));
    }
    let conn = &args.conn;
    let answer = block_on(conn.send(
        reqwest::Method::POST,
        &path,
        Some(payload),
        args.idempotency_key.as_deref(),
    ))?;
    if let Some(body) = conn.accept(answer)? {
        let duplicate = if body["duplicate"] == true {
            " (already submitted with this key)"
        } else {
            ""
        };
        println!("job {} {}{duplicate}", body["jobId"], text(&body["status"]));
    }
    Ok(())
}

pub fn jobs(command: JobsCommand) -> anyhow::Result<()> {
    match command {
        JobsCommand::Get { id, conn } => {
            let answer =
                block_on(conn.send(reqwest::Method::GET, &format!("/jobs/{id}"), None, None))?;
            if let Some(job) = conn.accept(answer)? {
                print_job(&job);
            }
            Ok(())
        }
        JobsCommand::Cancel { id, conn } => {
            let path = format!("/admin/jobs/{id}/cancel");
            let answer = block_on(conn.send(reqwest::Method::POST, &path, None, None))?;
            if let Some(job) = conn.accept(answer)? {
                print_job(&job);
            }
            Ok(())
        }
        JobsCommand::List {
            state,
            job_type,
            limit,
            conn,
        } => {
            let jobs = block_on(list(&conn, state, job_type, limit))?;
            if conn.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "jobs": jobs }))?
                );
                return Ok(());
            }
            println!(
                "{:>10}  {:<24} {:<10} {:>8}  {:<27}  LAST ERROR",
                "ID", "TYPE", "STATUS", "ATTEMPTS", "UPDATED"
            );
            for job in &jobs {
                println!(
                    "{:>10}  {:<24} {:<10} {:>8}  {:<27}  {}",
                    job["jobId"],
                    text(&job["type"]),
                    text(&job["status"]),
                    format!("{}/{}", job["attempts"], job["maxAttempts"]),
                    text(&job["updatedAt"]),
                    short(job["lastError"].as_str().unwrap_or(""), 60),
                );
            }
            eprintln!("{} jobs", jobs.len());
            Ok(())
        }
        JobsCommand::Delete {
            state,
            older_than,
            job_type,
            conn,
        } => {
            let mut path = format!(
                "/admin/jobs?state={}&olderThan={}&limit={DELETE_STEP}",
                encode(&state),
                encode(&older_than)
            );
            if let Some(t) = &job_type {
                path.push_str(&format!("&type={}", encode(t)));
            }
            let deleted = block_on(delete_in_steps(&conn, &path, &state))?;
            if let Some((deleted, before)) = deleted {
                println!("deleted {deleted} {state} jobs that finished before {before}");
            }
            Ok(())
        }
    }
}

/// Jobs one call of `jobs delete` deletes (one transaction on the host).
const DELETE_STEP: usize = 10_000;

/// Deletes a step at a time until nothing is left, showing how far it has
/// got on a terminal (out of the jobs in that state when it began, an upper
/// bound). `None` with `--json` (each step's answer is printed instead).
async fn delete_in_steps(
    conn: &Connection,
    path: &str,
    state: &str,
) -> anyhow::Result<Option<(u64, String)>> {
    let counts = conn
        .send(reqwest::Method::GET, "/admin/metrics/jobs", None, None)
        .await
        .ok()
        .filter(|a| a.status == 200);
    let total = counts.and_then(|a| a.body[state].as_u64());
    let mut progress = Progress::new(total);
    let mut deleted = 0;
    loop {
        let began = std::time::Instant::now();
        let answer = conn.send(reqwest::Method::DELETE, path, None, None).await?;
        let body = answer.body.clone();
        // With --json each step's answer is printed as it comes.
        let summary = conn.accept(answer)?.is_some();
        deleted += body["deleted"].as_u64().unwrap_or(0);
        if summary {
            progress.show(deleted, "deleted");
        }
        if body["more"] != true {
            progress.done();
            return Ok(summary.then(|| (deleted, text(&body["finishedBefore"]))));
        }
        // Rest as long as the step took, as the host does between its own
        // transactions, so claims and completions go on. (Each step takes
        // `olderThan` from its own now.)
        tokio::time::sleep(began.elapsed()).await;
    }
}

/// A one-line progress display on stderr, when stderr is a terminal.
struct Progress {
    total: Option<u64>,
    tty: bool,
    shown: bool,
}

impl Progress {
    fn new(total: Option<u64>) -> Progress {
        Progress {
            total,
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            shown: false,
        }
    }

    fn show(&mut self, done: u64, what: &str) {
        if !self.tty {
            return;
        }
        self.shown = true;
        match self.total.filter(|t| *t > 0) {
            Some(total) => {
                let pct = (done.min(total) * 100) / total;
                let bar = "#".repeat((pct / 4) as usize);
                eprint!("\r[{bar:<25}] {what} {done} of at most {total} ({pct}%)   ");
            }
            None => eprint!("\r{what} {done}   "),
        }
    }

    fn done(&mut self) {
        if self.shown {
            eprintln!();
        }
    }
}

/// Up to `limit` jobs, following the cursor a page at a time, saying how
/// far it has got when there are several pages.
async fn list(
    conn: &Connection,
    state: Option<String>,
    job_type: Option<String>,
    limit: usize,
) -> anyhow::Result<Vec<Value>> {
    let mut jobs = Vec::new();
    let mut cursor: Option<String> = None;
    let mut progress = Progress::new(Some(limit as u64));
    while jobs.len() < limit {
        let mut path = format!("/jobs?limit={}", (limit - jobs.len()).min(1000));
        for (name, value) in [("state", &state), ("type", &job_type), ("cursor", &cursor)] {
            if let Some(value) = value {
                path.push_str(&format!("&{name}={}", encode(value)));
            }
        }
        let answer = conn.send(reqwest::Method::GET, &path, None, None).await?;
        if answer.status >= 400 {
            return Err(api_error(&answer));
        }
        let page = answer.body["jobs"].as_array().cloned().unwrap_or_default();
        jobs.extend(page);
        cursor = answer.body["nextCursor"].as_str().map(str::to_owned);
        if limit > 1000 {
            progress.show(jobs.len() as u64, "fetched");
        }
        if cursor.is_none() {
            break;
        }
    }
    progress.done();
    Ok(jobs)
}

pub fn dlq(command: DlqCommand) -> anyhow::Result<()> {
    let DlqCommand::Replay {
        job_type,
        error,
        ids,
        all,
        conn,
    } = command;
    let mut filter = serde_json::Map::new();
    if let Some(t) = job_type {
        filter.insert("type".into(), json!(t));
    }
    if let Some(e) = error {
        filter.insert("error".into(), json!(e));
    }
    if !ids.is_empty() {
        filter.insert("ids".into(), json!(ids));
    }
    if all {
        filter.insert("all".into(), json!(true));
    }
    if filter.is_empty() {
        bail!("name the dead jobs to replay: --type, --error, --id, or --all");
    }
    let answer = block_on(conn.send(
        reqwest::Method::POST,
        "/admin/dlq/replay",
        Some(Value::Object(filter).to_string()),
        None,
    ))?;
    if let Some(body) = conn.accept(answer)? {
        let per_type: Vec<String> = body["types"]
            .as_object()
            .map(|types| types.iter().map(|(t, n)| format!("{t}: {n}")).collect())
            .unwrap_or_default();
        match per_type.is_empty() {
            true => println!("replayed {} dead jobs", body["replayed"]),
            false => println!(
                "replayed {} dead jobs ({})",
                body["replayed"],
                per_type.join(", ")
            ),
        }
    }
    Ok(())
}

fn print_job(job: &Value) {
    println!(
        "job {}  {}  {}",
        job["jobId"],
        text(&job["type"]),
        text(&job["status"])
    );
    println!("  attempts   {}/{}", job["attempts"], job["maxAttempts"]);
    if job["priority"].as_i64().is_some_and(|p| p != 0) {
        println!("  priority   {}", job["priority"]);
    }
    for (label, field) in [
        ("created", "createdAt"),
        ("next try", "nextAttemptAt"),
        ("finished", "finishedAt"),
        ("progress", "progress"),
        ("timeout ms", "timeoutMs"),
        ("plugin", "pluginDigest"),
        ("last error", "lastError"),
    ] {
        if !job[field].is_null() {
            println!("  {label:<10} {}", text(&job[field]));
        }
    }
    println!("  payload    {}", job["payload"]);
    if !job["result"].is_null() {
        println!("  result     {}", job["result"]);
    }
    println!("  history");
    for e in job["events"].as_array().into_iter().flatten() {
        println!(
            "    {}  {:>9} → {:<9}  attempt {}  {}{}",
            text(&e["at"]),
            e["from"].as_str().unwrap_or("-"),
            text(&e["to"]),
            e["attempt"],
            text(&e["actor"]),
            e["reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
        );
    }
}

/// `value` percent-encoded for a query string (all but unreserved bytes).
pub(super) fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A JSON value as plain text (strings without their quotes).
pub(super) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn short(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

//! The dashboard in a real browser: headless Chromium, driven over the
//! WebDriver protocol through `chromedriver` (Debian: `chromium` and
//! `chromium-driver`). `cargo xtask test` leaves these tests out, loudly,
//! where chromedriver is missing; in CI that is a failure.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::plugins::put_plugin;
use crate::support::{ADMIN_TOKEN, Plugins, Server, plugin_bytes, root};

/// One browser session.
struct Browser {
    driver: Child,
    base: String,
    http: reqwest::Client,
}

impl Browser {
    async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian: apt-get install chromium chromium-driver)");
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = http.get(format!("{url}/status")).send().await;
            if let Ok(r) = ready
                && r.json::<Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == true)
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut options = json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1100"],
        });
        if std::path::Path::new("/usr/bin/chromium").exists() {
            options["binary"] = json!("/usr/bin/chromium");
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": options,
        }}});
        let session: Value = http
            .post(format!("{url}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {session}"));
        Browser {
            driver,
            base: format!("{url}/session/{id}"),
            http,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        answer["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn script(&self, script: &str) -> Value {
        let body = json!({ "script": script, "args": [] });
        self.call(reqwest::Method::POST, "/execute/sync", Some(body))
            .await
    }

    /// Polls `predicate` (a JavaScript expression) until it is true.
    async fn wait_until(&self, what: &str, predicate: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.script(&format!("return !!({predicate});")).await == true {
                return;
            }
            if Instant::now() > deadline {
                let page = self.script("return document.body.innerText;").await;
                panic!("the page never showed {what} ({predicate}); it shows:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        // The one entry is the W3C element reference.
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        let path = format!("/element/{id}/click");
        self.call(reqwest::Method::POST, &path, Some(json!({})))
            .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        let path = format!("/element/{id}/value");
        self.call(reqwest::Method::POST, &path, Some(json!({ "text": text })))
            .await;
    }

    async fn screenshot(&self, name: &str) -> std::path::PathBuf {
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let dir = root().join("target").join("test-output");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Text of the element with this id, as a JavaScript expression.
fn text_of(id: &str) -> String {
    format!("(document.getElementById('{id}') || {{}}).textContent")
}

/// An operator signs in, sees the counts, finds the dead jobs, and replays
/// one from the dead-letter page once its plugin is fixed: it moves, and
/// its page shows the whole history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_dashboard_shows_counts_and_replays_a_dead_job() {
    let plugins = Plugins::new()
        .testing("noop", "max_attempts = 1\n")
        .testing("counter", "");
    let host = Server::start(plugins, &[]).await;
    let mut done = Vec::new();
    for _ in 0..5 {
        done.push(host.submit("counter", "{}").await);
    }
    let dead = [
        host.submit("noop", "{}").await,
        host.submit("noop", "{}").await,
    ];
    for id in &done {
        host.wait_for(*id, "succeeded").await;
    }
    for id in &dead {
        host.wait_for(*id, "dead").await;
    }

    let browser = Browser::start().await;
    browser.goto(&host.url).await;
    browser
        .wait_until("the token form", "!document.getElementById('login').hidden")
        .await;
    browser.type_into("#token", ADMIN_TOKEN).await;
    browser.click("#login-button").await;
    browser
        .wait_until(
            "the counts",
            &format!("{} === '5'", text_of("count-succeeded")),
        )
        .await;
    browser
        .wait_until(
            "the dead count",
            &format!("{} === '2'", text_of("count-dead")),
        )
        .await;
    browser
        .wait_until(
            "the queues",
            "document.querySelector('#queues tbody').innerText.includes('counter')",
        )
        .await;
    let overview = browser.screenshot("dashboard-overview.png").await;

    // Pause and resume one queue's claims from the overview. (Clicked from
    // the page's own script: the table is redrawn every 2 s.)
    let queue_shows = |what: &str| {
        format!(
            "(document.getElementById('queue-counter') || {{innerText: ''}}).innerText.includes('{what}')"
        )
    };
    browser
        .script("document.getElementById('queue-toggle-counter').click();")
        .await;
    browser
        .wait_until("the queue paused", &queue_shows("(paused)"))
        .await;
    let (_, queues) = host.admin_get("/admin/metrics/queue").await;
    let counter = queues["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "counter");
    assert_eq!(counter.unwrap()["paused"], true, "{queues}");
    browser
        .script("document.getElementById('queue-toggle-counter').click();")
        .await;
    browser
        .wait_until(
            "the queue resumed",
            &format!("!{}", queue_shows("(paused)")),
        )
        .await;
    let after = host.submit("counter", "{}").await;
    host.wait_for(after, "succeeded").await;

    // The fix, then the replay of one dead job through the page.
    let fixed = plugin_bytes("examples", "noop");
    let (status, body) = put_plugin(&host, "noop", fixed, Some("max_attempts = 1\n")).await;
    assert_eq!(status, 200, "{body}");
    browser.click("nav button[data-tab=dlq]").await;
    for id in &dead {
        browser
            .wait_until(
                "a dead job's row",
                &format!("document.getElementById('dlq-row-{id}')"),
            )
            .await;
    }
    let row = browser
        .script(&format!(
            "return {};",
            text_of(&format!("dlq-row-{}", dead[0]))
        ))
        .await;
    assert!(
        row.as_str()
            .unwrap()
            .contains("no behaviour for job type noop"),
        "{row}"
    );
    browser.click(&format!("#dlq-pick-{}", dead[0])).await;
    browser.click("#replay-selected").await;
    browser
        .wait_until(
            "the replay's answer",
            &format!("{}.includes('Replayed 1 ')", text_of("dlq-message")),
        )
        .await;
    host.wait_for(dead[0], "succeeded").await;
    browser
        .wait_until(
            "the row gone, the other kept",
            &format!(
                "!document.getElementById('dlq-row-{}') && document.getElementById('dlq-row-{}')",
                dead[0], dead[1]
            ),
        )
        .await;
    assert_eq!(
        host.job(dead[1]).await["status"],
        "dead",
        "only the one picked"
    );
    let dlq = browser.screenshot("dashboard-dlq.png").await;

    // Its page: status and the whole history, the replay in it.
    browser
        .script(&format!("location.hash = 'job/{}';", dead[0]))
        .await;
    browser
        .wait_until(
            "the job's page",
            &format!("{} === 'succeeded'", text_of("job-status")),
        )
        .await;
    let history = browser
        .script("return document.getElementById('job-events').innerText;")
        .await;
    let history = history.as_str().unwrap();
    assert!(
        history.contains("replayed from the dead-letter queue"),
        "{history}"
    );
    assert!(history.contains("sha256:"), "digests shown: {history}");
    let job = browser.screenshot("dashboard-job.png").await;

    // Schedules: listed with their next run, and deleted from the page.
    let daily =
        serde_json::json!({"type": "counter", "cron": "0 9 * * *", "timezone": "Europe/Paris"});
    let (status, body) = host
        .admin_send(
            reqwest::Method::PUT,
            "/admin/schedules/morning",
            Some(&daily),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    browser.click("nav button[data-tab=schedules]").await;
    browser
        .wait_until(
            "the schedule's row",
            "(document.getElementById('schedule-morning') || {textContent: ''}).textContent.includes('Europe/Paris')",
        )
        .await;
    let schedules = browser.screenshot("dashboard-schedules.png").await;
    browser
        .script(
            "window.confirm = () => true; \
             document.querySelector('#schedule-morning button').click();",
        )
        .await;
    browser
        .wait_until(
            "the row gone",
            "!document.getElementById('schedule-morning')",
        )
        .await;
    assert_eq!(host.admin_get("/admin/schedules/morning").await.0, 404);
    println!(
        "screenshots: {} {} {} {}",
        overview.display(),
        dlq.display(),
        job.display(),
        schedules.display()
    );
}

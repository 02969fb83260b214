//! A local stand-in for a mail provider's HTTP API, for `email_welcome`:
//! the one thing the tests cannot have for real. It behaves as providers
//! with idempotency keys do: a request whose `idempotency-key` it has seen
//! is answered with the first request's message id and sends nothing.
//! It runs on a thread of its own, so a test blocked on a child process
//! does not stall it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::{Json, Router, routing::post};
use serde_json::{Value, json};
use tokio::sync::Notify;

#[derive(Default)]
struct Inner {
    /// Every request received, in order: (idempotency key, mail).
    requests: Vec<(Option<String>, Value)>,
    /// Mails sent (one per idempotency key), with their ids.
    delivered: Vec<(String, Value)>,
    ids_by_key: HashMap<String, String>,
    /// Mails to this address are sent, then their answer waits for `release`.
    hold: Option<String>,
    held: usize,
    /// Mails to this address are sent, then answered 500 (the answer is
    /// lost on the way back, as far as the sender can tell).
    fail_after_sending: Option<String>,
    /// Mails to this address are refused with this status, and not sent.
    refuse: Option<(String, u16)>,
}

#[derive(Clone, Default)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    released: Arc<Notify>,
    arrived: Arc<Notify>,
}

pub struct MailServer {
    pub addr: SocketAddr,
    shared: Shared,
}

impl MailServer {
    pub fn start() -> MailServer {
        let shared = Shared::default();
        let app = Router::new()
            .route("/send", post(send))
            .with_state(shared.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the mail server")
                .block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    tx.send(listener.local_addr().unwrap()).unwrap();
                    axum::serve(listener, app).await.unwrap();
                })
        });
        let addr = rx.recv().expect("the mail server started");
        MailServer { addr, shared }
    }

    /// An email_welcome manifest: `rest` (limits, `[backoff]`) with the
    /// allow-list and `[config]` that reach this server.
    pub fn manifest(&self, rest: &str) -> String {
        format!(
            "allowed_outbound_hosts = [\"http://{addr}\"]\n{rest}\n[config]\nmail_api_url = \"http://{addr}/send\"\n",
            addr = self.addr
        )
    }

    /// Mails sent to `to`.
    pub fn delivered_to(&self, to: &str) -> usize {
        let inner = self.shared.inner.lock().unwrap();
        inner
            .delivered
            .iter()
            .filter(|(_, m)| m["to"] == to)
            .count()
    }

    /// Requests received for `to` (sent or answered from the idempotency keys).
    pub fn requests_for(&self, to: &str) -> usize {
        let inner = self.shared.inner.lock().unwrap();
        inner.requests.iter().filter(|(_, m)| m["to"] == to).count()
    }

    pub fn requests(&self) -> Vec<(Option<String>, Value)> {
        self.shared.inner.lock().unwrap().requests.clone()
    }

    /// From now on, mails to `to` are sent but not answered until [`release`].
    pub fn hold(&self, to: &str) {
        self.shared.inner.lock().unwrap().hold = Some(to.to_owned());
    }

    /// Waits until a held mail has been sent (and its answer is waiting).
    pub async fn wait_held(&self) {
        loop {
            let arrived = self.shared.arrived.notified();
            if self.shared.inner.lock().unwrap().held > 0 {
                return;
            }
            tokio::time::timeout(std::time::Duration::from_secs(30), arrived)
                .await
                .expect("a held mail arrived");
        }
    }

    /// Stops holding, and answers every held request.
    pub fn release(&self) {
        self.shared.inner.lock().unwrap().hold = None;
        self.shared.released.notify_waiters();
    }

    /// Mails to `to` are refused with `status` and not sent (`None`: stop that).
    pub fn refuse(&self, to: Option<(&str, u16)>) {
        self.shared.inner.lock().unwrap().refuse = to.map(|(t, s)| (t.to_owned(), s));
    }

    /// Mails to `to` are sent and answered 500 (`None`: stop that).
    pub fn fail_after_sending(&self, to: Option<&str>) {
        self.shared.inner.lock().unwrap().fail_after_sending = to.map(str::to_owned);
    }
}

async fn send(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Json(mail): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let to = mail["to"].as_str().unwrap_or_default().to_owned();
    // Registered before the request is counted as held, so a release right
    // after is not missed.
    let released = shared.released.notified();
    let (id, hold, fail) = {
        let mut inner = shared.inner.lock().unwrap();
        inner.requests.push((key.clone(), mail.clone()));
        if let Some((_, status)) = inner.refuse.as_ref().filter(|(t, _)| *t == to) {
            let status = StatusCode::from_u16(*status).unwrap();
            return (status, Json(json!({"error": "refused"})));
        }
        let known = key.as_ref().and_then(|k| inner.ids_by_key.get(k).cloned());
        let id = match known {
            Some(id) => id,
            None => {
                let id = format!("msg-{}", inner.delivered.len() + 1);
                inner.delivered.push((id.clone(), mail));
                if let Some(k) = key {
                    inner.ids_by_key.insert(k, id.clone());
                }
                id
            }
        };
        let hold = inner.hold.as_deref() == Some(to.as_str());
        if hold {
            inner.held += 1;
        }
        let fail = inner.fail_after_sending.as_deref() == Some(to.as_str());
        (id, hold, fail)
    };
    if hold {
        shared.arrived.notify_waiters();
        released.await;
    }
    if fail {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "upstream timeout"})),
        );
    }
    (StatusCode::OK, Json(json!({ "id": id })))
}

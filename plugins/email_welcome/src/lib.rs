//! `email_welcome`: sends a new user's welcome mail, exactly once.
//!
//! Payload: `{"userId": 42, "email": "ada@example.com"}` (`email` optional).
//!
//! The mail is posted as JSON `{from, to, subject, body}` to the manifest's
//! `mail_api_url` (with `authorization: Bearer <api_key>` if `api_key` is
//! configured); the provider answers `{"id": "<message id>"}`, which becomes
//! the job's result (`"unknown"` if a 2xx answer has none). A 408, 409, 425,
//! 429 or 5xx, or a failed connection, is retried; any other status is a
//! refusal: fatal.
//!
//! Exactly once, whatever happens to the host:
//! - The key `welcome:<userId>` in the plugin's store names the job that owns
//!   the user's mail (`set-if-absent`: one job wins). Every other job for the
//!   user (a duplicate submission) succeeds without sending.
//! - The owning job may run again (a retry, a host killed mid-send, a
//!   replay). It sends with the same `idempotency-key: welcome-<userId>`,
//!   so a provider that already accepted the mail answers with the same
//!   message instead of sending another. Once the provider has answered,
//!   the key records the message id and later runs send nothing.
//! - If the provider refuses the mail for good (a 4xx other than those
//!   retried), nothing was sent: the key is released so a later job may
//!   try again. A 2xx never releases it.
//!
//! User 777 stands for a user whose provider always rejects the mail: every
//! attempt fails with `retry`, so the job ends in the dead-letter queue.

use jobhost_plugin::{Failure, Handler, Job, config, fatal, http, kv, log, retry};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    user_id: u64,
    email: Option<String>,
}

/// What the store keeps under `welcome:<userId>`, and the job's result.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Welcome {
    /// The job that owns this user's mail.
    job_id: u64,
    user_id: u64,
    sent_to: String,
    /// The provider's id, once it has accepted the mail.
    message_id: Option<String>,
    /// Set on a duplicate's result: the mail was another job's to send.
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate_of: Option<u64>,
}

#[derive(Deserialize)]
struct Accepted {
    id: Option<String>,
}

/// The user whose mail provider rejects every message (the seed's failure case).
const ALWAYS_REJECTED_USER: u64 = 777;

struct EmailWelcome;

impl Handler for EmailWelcome {
    type Payload = Payload;
    type Output = Welcome;

    fn handle(job: Job<Payload>) -> Result<Welcome, Failure> {
        let user = job.payload.user_id;
        if user == ALWAYS_REJECTED_USER {
            return Err(retry(format!(
                "mail provider rejected the welcome mail for user {user}"
            )));
        }
        let to = job
            .payload
            .email
            .clone()
            .unwrap_or_else(|| format!("user{user}@example.com"));
        let key = format!("welcome:{user}");
        let mine = Welcome {
            job_id: job.id,
            user_id: user,
            sent_to: to.clone(),
            message_id: None,
            duplicate_of: None,
        };
        if !kv::set_if_absent(&key, &serde_json::to_vec(&mine).unwrap_or_default())? {
            let owner: Welcome = kv::get(&key)?
                .and_then(|v| serde_json::from_slice(&v).ok())
                .ok_or_else(|| retry(format!("{key} changed while it was read")))?;
            if owner.job_id != job.id {
                log::info(&format!(
                    "user {user}'s welcome mail is job {}'s to send; not sending another",
                    owner.job_id
                ));
                return Ok(Welcome {
                    duplicate_of: Some(owner.job_id),
                    ..owner
                });
            }
            if owner.message_id.is_some() {
                return Ok(owner); // sent and recorded by an earlier run of this job
            }
            // An earlier run of this job may have reached the provider: the
            // idempotency key below makes sending again safe.
        }
        match send(&to, user) {
            Ok(message_id) => {
                let sent = Welcome {
                    message_id: Some(message_id),
                    ..mine
                };
                kv::set(&key, &serde_json::to_vec(&sent).unwrap_or_default())?;
                log::info(&format!("welcome mail to {to} for user {user} accepted"));
                Ok(sent)
            }
            Err(Failure::Fatal(why)) => {
                // Refused for good: nothing was sent; let a later job try.
                kv::delete(&key)?;
                Err(fatal(why))
            }
            Err(failure) => Err(failure),
        }
    }
}

/// Posts the mail; the provider's message id.
fn send(to: &str, user: u64) -> Result<String, Failure> {
    let url = config::require("mail_api_url")?;
    let from = config::get("from").unwrap_or_else(|| "welcome@jobhost.dev".into());
    let mail = serde_json::json!({
        "from": from,
        "to": to,
        "subject": "Welcome!",
        "body": format!("Hello, and welcome aboard (user {user})."),
    });
    let idempotency = format!("welcome-{user}");
    let bearer = config::get("api_key").map(|k| format!("Bearer {k}"));
    let mut headers = vec![("idempotency-key", idempotency.as_str())];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    let response = http::post_json(&url, &mail, &headers)?;
    match response.status {
        // Accepted: sent, whatever the body says (an answer without an id
        // must not free the key and let another job send again).
        200..=299 => Ok(serde_json::from_slice::<Accepted>(&response.body)
            .ok()
            .and_then(|a| a.id)
            .unwrap_or_else(|| "unknown".into())),
        // Not now: a timeout, the idempotency key in use by a concurrent
        // request, too early, a rate limit, the provider's trouble.
        408 | 409 | 425 | 429 | 500..=599 => Err(retry(format!(
            "mail API answered {}: {}",
            response.status,
            response.text()
        ))),
        status => Err(fatal(format!(
            "mail API refused the mail with {status}: {}",
            response.text()
        ))),
    }
}

jobhost_plugin::export!(EmailWelcome);

//! `email_welcome`: sends the welcome mail for a new user.
//!
//! Payload: `{"userId": 42, "email": "ada@example.com"}` (`email` optional).
//! This first version only logs the mail it would send; the outbound-HTTP
//! capability that lets it call a mail provider comes with a later contract
//! version. User 777 stands for a user whose provider always rejects the mail:
//! every attempt fails with `retry`, so the job ends in the dead-letter queue.

wit_bindgen::generate!({ path: "../../wit", world: "handler" });

use jobhost::plugin::host::{Level, log};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    user_id: u64,
    email: Option<String>,
}

/// The user whose mail provider rejects every message (the seed's failure case).
const ALWAYS_REJECTED_USER: u64 = 777;

struct EmailWelcome;

impl Guest for EmailWelcome {
    fn handle(job: Job) -> Result<Option<String>, Failure> {
        let payload: Payload = serde_json::from_str(&job.payload).map_err(|e| {
            Failure::Fatal(format!(
                "payload must be {{\"userId\": <number>, \"email\"?: <string>}}: {e}"
            ))
        })?;
        if payload.user_id == ALWAYS_REJECTED_USER {
            return Err(Failure::Retry(format!(
                "mail provider rejected the welcome mail for user {}",
                payload.user_id
            )));
        }
        let to = payload
            .email
            .unwrap_or_else(|| format!("user{}@example.com", payload.user_id));
        log(
            Level::Info,
            &format!("welcome mail to {to} for user {}", payload.user_id),
        );
        Ok(Some(
            serde_json::json!({ "sentTo": to, "userId": payload.user_id }).to_string(),
        ))
    }
}

export!(EmailWelcome);

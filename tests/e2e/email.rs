//! `email_welcome` for real: it posts to a mail API (a local stand-in) and
//! sends each user's welcome mail exactly once, whatever happens.

use std::collections::HashSet;

use crate::mail::MailServer;
use crate::support::{Plugins, Server};

/// Two attempts, quick retries, a short deadline (so a killed host's lease
/// expires soon).
const MANIFEST: &str =
    "max_attempts = 2\ntimeout_ms = 2_000\n[backoff]\nbase_ms = 20\ncap_ms = 50\njitter = 0.0\n";

#[tokio::test]
async fn email_welcome_sends_one_mail_per_user_whatever_happens() {
    let mail = MailServer::start();
    let plugins = Plugins::new().example("email_welcome", &mail.manifest(MANIFEST));
    let flags = ["--lease-grace-ms", "500", "--reap-interval-ms", "100"];
    let mut server = Server::start(plugins, &flags).await;

    // Duplicate submissions (no idempotency key): five jobs, one mail. The
    // other four succeed as duplicates of the one that sent it, without
    // calling the provider.
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(server.submit("email_welcome", r#"{"userId": 1}"#).await);
    }
    let mut senders = HashSet::new();
    for &id in &ids {
        let job = server.wait_for(id, "succeeded").await;
        let result = &job["result"];
        assert_eq!(result["sentTo"], "user1@example.com", "{job:#}");
        match result["duplicateOf"].as_i64() {
            Some(owner) => senders.insert(owner),
            None => senders.insert(id),
        };
    }
    assert_eq!(senders.len(), 1, "one job owns the mail: {senders:?}");
    assert_eq!(mail.delivered_to("user1@example.com"), 1);
    assert_eq!(mail.requests_for("user1@example.com"), 1);
    let (key, sent) = &mail.requests()[0];
    assert_eq!(key.as_deref(), Some("welcome-1"));
    assert_eq!(sent["subject"], "Welcome!");

    // kill -9 between sending and completing: the provider has sent the
    // mail, its answer has not reached the plugin. After the restart the
    // reaper requeues the job; its next attempt sends again with the same
    // idempotency key and the provider sends nothing new.
    mail.hold("user2@example.com");
    let id = server.submit("email_welcome", r#"{"userId": 2}"#).await;
    mail.wait_held().await;
    server.signal_and_wait(libc::SIGKILL);
    mail.release();
    server.restart();
    let job = server.wait_for(id, "succeeded").await;
    assert_eq!(mail.delivered_to("user2@example.com"), 1, "{job:#}");
    assert_eq!(mail.requests_for("user2@example.com"), 2);
    assert_eq!(job["attempts"], 2);
    assert!(
        job["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == "reaper"),
        "{job:#}"
    );
    let message_id = job["result"]["messageId"].as_str().unwrap().to_owned();
    assert!(message_id.starts_with("msg-"), "{job:#}");

    // A replay: the provider sends the mail but every answer is lost (500),
    // so the job retries and goes dead. Replayed once the provider answers
    // again, it succeeds with the mail already sent; a later duplicate
    // sends nothing.
    mail.fail_after_sending(Some("user3@example.com"));
    let id = server.submit("email_welcome", r#"{"userId": 3}"#).await;
    let dead = server.wait_for(id, "dead").await;
    assert!(
        dead["lastError"].as_str().unwrap().contains("500"),
        "{dead:#}"
    );
    assert_eq!(mail.requests_for("user3@example.com"), 2);
    mail.fail_after_sending(None);
    let (status, replayed) = server.admin_post(&format!("/admin/jobs/{id}/replay")).await;
    assert_eq!(status, 200, "{replayed}");
    let job = server.wait_for(id, "succeeded").await;
    assert_eq!(mail.requests_for("user3@example.com"), 3, "{job:#}");
    let again = server.submit("email_welcome", r#"{"userId": 3}"#).await;
    let again = server.wait_for(again, "succeeded").await;
    assert_eq!(again["result"]["duplicateOf"], id, "{again:#}");
    assert_eq!(mail.requests_for("user3@example.com"), 3);
    assert_eq!(mail.delivered_to("user3@example.com"), 1);

    // User 777's provider rejects every mail: dead after its attempts,
    // without a request.
    let id = server.submit("email_welcome", r#"{"userId": 777}"#).await;
    let dead = server.wait_for(id, "dead").await;
    assert!(
        dead["lastError"].as_str().unwrap().contains("777"),
        "{dead:#}"
    );
    assert_eq!(mail.requests_for("user777@example.com"), 0);
}

/// A 4xx other than 429 is fatal (and nothing was sent, so a later job for
/// the user may send), a 429 is retried, and a mail API outside the
/// allow-list is never reached.
#[tokio::test]
async fn email_welcome_maps_the_providers_answers_and_keeps_to_its_allow_list() {
    let mail = MailServer::start();
    let plugins = Plugins::new().example("email_welcome", &mail.manifest(MANIFEST));
    let server = Server::start(plugins, &[]).await;

    mail.refuse(Some(("user6@example.com", 422)));
    let id = server.submit("email_welcome", r#"{"userId": 6}"#).await;
    let dead = server.wait_for(id, "dead").await;
    assert_eq!(dead["attempts"], 1, "fatal: no second attempt");
    assert!(
        dead["lastError"]
            .as_str()
            .unwrap()
            .contains("refused the mail with 422"),
        "{dead:#}"
    );
    mail.refuse(None);
    let later = server.submit("email_welcome", r#"{"userId": 6}"#).await;
    let later = server.wait_for(later, "succeeded").await;
    assert_eq!(
        later["result"]["duplicateOf"],
        serde_json::Value::Null,
        "{later:#}"
    );
    assert_eq!(mail.delivered_to("user6@example.com"), 1);

    mail.refuse(Some(("user7@example.com", 429)));
    let id = server.submit("email_welcome", r#"{"userId": 7}"#).await;
    let dead = server.wait_for(id, "dead").await;
    assert_eq!(dead["attempts"], 2, "429 is retried: {dead:#}");
    assert!(
        dead["lastError"].as_str().unwrap().contains("429"),
        "{dead:#}"
    );
    assert_eq!(mail.delivered_to("user7@example.com"), 0);

    // The mail API's URL names a host the allow-list does not.
    let elsewhere = format!(
        "allowed_outbound_hosts = [\"http://{addr}\"]\nmax_attempts = 1\n[config]\nmail_api_url = \"http://localhost:{port}/send\"\n",
        addr = mail.addr,
        port = mail.addr.port()
    );
    let other = Server::start(Plugins::new().example("email_welcome", &elsewhere), &[]).await;
    let before = mail.requests().len();
    let id = other.submit("email_welcome", r#"{"userId": 8}"#).await;
    let dead = other.wait_for(id, "dead").await;
    let error = dead["lastError"].as_str().unwrap();
    assert!(
        error.contains("denied") && error.contains("allowed_outbound_hosts"),
        "{error}"
    );
    assert_eq!(mail.requests().len(), before);
}

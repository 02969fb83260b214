//! The OpenAPI document: served, 3.1, every error code in it, and every
//! route it documents answered by the real binary (the other direction, no
//! route without a specification, is checked in the API's unit tests).

use serde_json::Value;

use crate::support::{ADMIN_TOKEN, Plugins, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route_and_error() {
    let host = Server::start(Plugins::new().testing("counter", ""), &[]).await;
    let (status, doc) = host.get("/openapi.json").await;
    assert_eq!(status, 200, "{doc}");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    let error = &doc["components"]["schemas"]["Error"];
    let codes: Vec<&str> = error["properties"]["code"]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("no codes in {error}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for code in [
        "invalid_filter",
        "unknown_job_type",
        "store_unavailable",
        "route_not_found",
    ] {
        assert!(codes.contains(&code), "{code} is not documented");
    }
    let explained = error["properties"]["code"]["description"].as_str().unwrap();
    for code in &codes {
        assert!(
            explained.contains(&format!("`{code}`")),
            "{code} has no explanation"
        );
    }

    // Every documented operation exists, with the method documented: with
    // harmless values (no such job, type or plugin), it answers anything
    // but "no such route" or "not this method".
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let method = match method.as_str() {
                "get" => reqwest::Method::GET,
                "post" => reqwest::Method::POST,
                "put" => reqwest::Method::PUT,
                "delete" => reqwest::Method::DELETE,
                other => panic!("{other} {path}: an unexpected method"),
            };
            assert!(
                operation["responses"]
                    .as_object()
                    .is_some_and(|r| !r.is_empty()),
                "{method} {path} documents no response"
            );
            assert!(
                operation["summary"].is_string(),
                "{method} {path} has no summary"
            );
            let concrete = path
                .replace("{key}", "no_such_type")
                .replace("{id}", "999999")
                .replace("{type}", "no_such_type")
                .replace("{name}", "no_such_schedule");
            let response = host
                .http
                .request(method.clone(), format!("{}{concrete}", host.url))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value =
                serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null);
            assert!(
                !matches!(
                    body["code"].as_str(),
                    Some("route_not_found" | "method_not_allowed")
                ),
                "{method} {path} is documented but not served: {status} {body}"
            );
            operations += 1;
        }
    }
    assert!(operations >= 28, "{operations} operations documented");
    // The admin routes say they need the token.
    let replay = &doc["paths"]["/admin/dlq/replay"]["post"];
    assert!(replay["security"].is_array(), "{replay}");
}

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

    // Every answer is what the document says, field for field: one 2xx
    // answer of each kind, from submits to deletes.
    let id = host.submit("counter", r#"{"n": 1}"#).await;
    host.wait_for(id, "succeeded").await;
    // Paused, so the job to cancel waits for it.
    let paused = host.admin_post("/admin/queues/counter/pause").await;
    let cancelled = host.submit("counter", r#"{"n": 2}"#).await;
    let cancel = host
        .admin_post(&format!("/admin/jobs/{cancelled}/cancel"))
        .await;
    let daily = serde_json::json!({"type": "counter", "cron": "0 9 * * *", "payload": {"n": 3}});
    let created = host
        .admin_send(reqwest::Method::PUT, "/admin/schedules/daily", Some(&daily))
        .await;
    let keyed = r#"{"n": 4, "idempotencyKey": "once"}"#;
    let first = host.post("/jobs/counter", keyed).await;
    let again = host.post("/jobs/counter", keyed).await;
    assert_eq!((first.0, again.0), (202, 200), "{first:?} {again:?}");
    let mut answers = vec![
        ("/jobs/{key}", "post", first),
        ("/jobs/{key}", "post", again),
        (
            "/jobs/{key}/batch",
            "post",
            host.post("/jobs/counter/batch", r#"[{"n": 5}, {"n": 6}]"#)
                .await,
        ),
        ("/healthz", "get", host.get("/healthz").await),
        ("/admin/queues/{type}/pause", "post", paused),
        ("/admin/jobs/{id}/cancel", "post", cancel),
        (
            "/admin/queues/{type}/resume",
            "post",
            host.admin_post("/admin/queues/counter/resume").await,
        ),
        (
            "/admin/dlq/replay",
            "post",
            host.admin_post_json("/admin/dlq/replay", r#"{"all": true}"#)
                .await,
        ),
        (
            "/admin/jobs",
            "delete",
            host.admin_send(
                reqwest::Method::DELETE,
                "/admin/jobs?state=dead&olderThan=0s",
                None,
            )
            .await,
        ),
        ("/admin/schedules/{name}", "put", created),
        (
            "/admin/schedules/{name}",
            "get",
            host.admin_get("/admin/schedules/daily").await,
        ),
        ("/jobs/{key}", "get", host.get(&format!("/jobs/{id}")).await),
        ("/jobs", "get", host.admin_get("/jobs?limit=1").await),
    ];
    // The admin reads whose path is their documented path.
    for path in [
        "/admin/workers",
        "/admin/schedules",
        "/admin/plugins",
        "/admin/metrics/jobs",
        "/admin/metrics/queue",
    ] {
        answers.push((path, "get", host.admin_get(path).await));
    }
    // Deletes last: the plugin's takes its type away.
    for (path, concrete) in [
        ("/admin/schedules/{name}", "/admin/schedules/daily"),
        ("/admin/plugins/{type}", "/admin/plugins/counter"),
    ] {
        let answer = host
            .admin_send(reqwest::Method::DELETE, concrete, None)
            .await;
        answers.push((path, "delete", answer));
    }
    for (path, method, (status, body)) in answers {
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {body}"
        );
        let schema = &doc["paths"][path][method]["responses"][status.to_string()]["content"]["application/json"]
            ["schema"];
        assert!(
            schema.is_object(),
            "{method} {path} {status}: no schema for {body}"
        );
        if let Err(why) = conforms(&doc, schema, &body) {
            panic!("{method} {path} answered {body}\nwhich is not its schema {schema}: {why}");
        }
        // The check itself is not vacuous: a wrong state, a field the
        // document does not name, or a missing one fails it.
        if path == "/jobs/{key}" {
            for broken in [
                serde_json::json!({"status": "bogus"}),
                serde_json::json!({"undocumented": 1}),
            ] {
                let mut wrong = body.clone();
                for (k, v) in broken.as_object().unwrap() {
                    wrong[k] = v.clone();
                }
                assert!(conforms(&doc, schema, &wrong).is_err(), "{broken} passed");
            }
            let mut missing = body.clone();
            missing.as_object_mut().unwrap().remove("jobId");
            assert!(conforms(&doc, schema, &missing).is_err(), "no jobId passed");
            let nowhere = serde_json::json!({"$ref": "#/components/schemas/Nowhere"});
            assert!(
                conforms(&doc, &nowhere, &body).is_err(),
                "a dangling $ref passed"
            );
            let replayed = serde_json::json!({"$ref": "#/components/schemas/Replayed"});
            let wrong_count = serde_json::json!({"replayed": 1, "types": {"counter": "one"}});
            assert!(
                conforms(&doc, &replayed, &wrong_count).is_err(),
                "a map's wrong value passed"
            );
        }
    }
    let events = &doc["components"]["schemas"]["Job"]["properties"]["events"];
    assert!(events.is_object(), "the job's history is typed");
}

/// Whether `value` is what `schema` describes: its `$ref`, `oneOf`/`anyOf`/
/// `allOf`, `enum`, `type`, `required`, `properties` and `items`. An object
/// with `properties` may hold no other key: a field the code sends and the
/// document does not name is drift too.
fn conforms(doc: &Value, schema: &Value, value: &Value) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .ok_or_else(|| format!("an unexpected $ref {reference}"))?;
        let target = &doc["components"]["schemas"][name];
        if !target.is_object() {
            return Err(format!("{reference} names no schema"));
        }
        return conforms(doc, target, value);
    }
    for any in ["oneOf", "anyOf"] {
        if let Some(options) = schema[any].as_array()
            && !options.iter().any(|o| conforms(doc, o, value).is_ok())
        {
            return Err(format!("{value} matches none of {any} {schema}"));
        }
    }
    if let Some(all) = schema["allOf"].as_array() {
        for part in all {
            conforms(doc, part, value)?;
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{value} is not one of {schema}"));
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let is = |t: &str| match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    };
    if !types.is_empty() && !types.iter().any(|t| is(t)) {
        return Err(format!("{value} is not {types:?}"));
    }
    if let (Some(fields), Some(properties)) = (value.as_object(), schema["properties"].as_object())
    {
        for required in schema["required"].as_array().into_iter().flatten() {
            let key = required.as_str().unwrap_or_default();
            if !fields.contains_key(key) {
                return Err(format!("no `{key}` in {value}"));
            }
        }
        for (key, field) in fields {
            let described = properties
                .get(key)
                .ok_or_else(|| format!("`{key}` is not in the schema's properties"))?;
            conforms(doc, described, field).map_err(|why| format!("`{key}`: {why}"))?;
        }
    }
    // A map's values (`additionalProperties` as a schema).
    if let (Some(fields), true, Some(values)) = (
        value.as_object(),
        schema.get("properties").is_none(),
        schema.get("additionalProperties").filter(|s| s.is_object()),
    ) {
        for (key, field) in fields {
            conforms(doc, values, field).map_err(|why| format!("`{key}`: {why}"))?;
        }
    }
    if let (Some(items), Some(schema)) = (value.as_array(), schema.get("items")) {
        for item in items {
            conforms(doc, schema, item)?;
        }
    }
    Ok(())
}

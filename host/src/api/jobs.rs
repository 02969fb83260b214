//! `/jobs`: submit a job, read a job.
//!
//! - `POST /jobs/{type}`: the body is the job's JSON payload, whatever the
//!   `Content-Type` says (`curl -d` sends form encoding). Idempotency key from
//!   the `Idempotency-Key` header, else the payload's `idempotencyKey` field.
//!   Options in the query: `delay_ms=N` or `runAt=<RFC 3339>` (when it is
//!   due), `maxAttempts=N`, `priority=N` (-100 to 100, higher first) and
//!   `timeoutMs=N` (per attempt; the plugin's own timeout caps it). Answers
//!   `202 {"jobId", "status"}` once the job is durably committed, or `200
//!   {"jobId", "status", "duplicate": true}` if the key was used before.
//! - `POST /jobs/{type}/batch`: the body is a JSON array of payloads, or
//!   `{"jobs": [{"payload", "idempotencyKey", "runAt" | "delayMs",
//!   "maxAttempts", "priority", "timeoutMs"}]}` (at most [`MAX_BATCH`]); all
//!   are committed in one transaction, or none. The query's options hold for every job, an item's
//!   own over them. Answers `202 {"jobIds": [...], "created": n,
//!   "duplicates": m}` with the ids in the order of the jobs.
//! - `GET /jobs/{id}`: the job, its attempts, result, errors and history.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::Submitted;
use super::{ApiError, AppState, MAX_BATCH, MAX_IDEMPOTENCY_KEY, PathParam};
use crate::clock::Timestamp;
use crate::job::{JobEvent, JobRecord, JobState};
use crate::plugins::Handler;
use crate::store::{Enqueued, JobQuery, MAX_LIST, NewJob, PRIORITIES};

/// Longest delay a job may be submitted with: one year.
const MAX_DELAY_MS: u64 = 365 * 24 * 3600 * 1000;

pub fn router() -> OpenApiRouter<AppState> {
    // One path for both submit and show: axum (and OpenAPI) take one
    // parameter name per segment.
    OpenApiRouter::default()
        .routes(routes!(list))
        .routes(routes!(submit, show))
        .routes(routes!(submit_batch))
}

/// The handler of `job_type`, or the error that lists the types handled.
fn handler_for(app: &AppState, job_type: String) -> Result<Arc<Handler>, ApiError> {
    app.registry
        .handler(&job_type)
        .ok_or_else(|| ApiError::UnknownJobType {
            name: job_type,
            loaded: app.registry.types(),
        })
}

/// Submits a job.
///
/// The body is the job's JSON payload, whatever the `Content-Type`. Answers
/// once the job is durably committed.
#[utoipa::path(
    post,
    path = "/jobs/{key}",
    tag = "jobs",
    params(
        ("key" = String, Path, description = "The job type"),
        ("delay_ms" = Option<u64>, Query, description = "Run it no sooner than this many ms from now (at most a year)"),
        ("runAt" = Option<String>, Query, description = "Or: run it no sooner than this time (RFC 3339, UTC, such as 2026-12-03T09:00:00Z; at most a year ahead; a past time is now)"),
        ("maxAttempts" = Option<u32>, Query, description = "Attempts before the dead-letter queue, 1 to 1,000 (default: the plugin manifest's)"),
        ("priority" = Option<i16>, Query, description = "-100 to 100 (default 0): higher is claimed first, first come first served within a priority"),
        ("timeoutMs" = Option<u32>, Query, description = "Deadline per attempt in ms, 1 to 86,400,000; the plugin manifest's `timeout_ms` caps it"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 200 bytes; else the payload's `idempotencyKey` field. Resubmitting with a used key returns that job."),
    ),
    request_body(content = Object, description = "The payload: any JSON document", content_type = "application/json"),
    responses(
        (status = 202, description = "Committed", body = super::openapi::Submitted, example = json!({"jobId": 17, "status": "queued"})),
        (status = 200, description = "The idempotency key names a job already: that job, nothing run", body = super::openapi::Submitted,
         example = json!({"jobId": 17, "status": "succeeded", "duplicate": true})),
        (status = 400, description = "`invalid_json`, `invalid_query`, `invalid_idempotency_key`, `idempotency_key_too_long`, `invalid_path`", body = ApiError),
        (status = 404, description = "`unknown_job_type`", body = ApiError),
        (status = 413, description = "`payload_too_large`", body = ApiError),
        (status = 503, description = "`store_unavailable`, `unavailable`", body = ApiError),
    )
)]
async fn submit(
    State(app): State<AppState>,
    PathParam(job_type): PathParam,
    RawQuery(query): RawQuery,
    // The request itself rather than a `HeaderMap`, which axum would copy.
    request: Request,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    let handler = handler_for(&app, job_type)?;
    let now = app.clock.now();
    let options = SubmitOptions::from_query(query.as_deref(), now)?;
    let (parts, body) = request.into_parts();
    let bytes = read_body(body, &parts.headers, app.body_limit).await?;
    // Checks that the payload is JSON, and finds its key field, in one pass.
    let payload_field = key_field(&bytes)?;
    let idempotency_key = idempotency_key(&parts.headers, payload_field)?;
    // Valid JSON is valid UTF-8.
    let payload =
        String::from_utf8(bytes.into()).map_err(|e| ApiError::InvalidJson(e.to_string()))?;

    let job = NewJob {
        job_type: handler.job_type.clone(),
        payload,
        idempotency_key,
        max_attempts: options.max_attempts(&handler),
        run_at: options.run_at(now),
        priority: options.priority.unwrap_or(0),
        timeout_ms: options.timeout_ms,
    };
    match app.store.job_insert(job, now).await? {
        Enqueued::Created { id, state } => {
            handler.metrics.enqueued.increment(1);
            match state {
                JobState::Scheduled => app.dispatch.scheduled(),
                _ => app.dispatch.ready(&handler.job_type, [id]),
            }
            Ok((
                StatusCode::ACCEPTED,
                Json(Submitted {
                    job_id: id,
                    status: state,
                    duplicate: None,
                }),
            ))
        }
        Enqueued::Existing { id, state } => Ok((
            StatusCode::OK,
            Json(Submitted {
                job_id: id,
                status: state,
                duplicate: Some(true),
            }),
        )),
    }
}

/// Submits many jobs in one transaction: all of them or none.
#[utoipa::path(
    post,
    path = "/jobs/{key}/batch",
    tag = "jobs",
    params(
        ("key" = String, Path, description = "The job type"),
        ("delay_ms" = Option<u64>, Query, description = "Run them no sooner than this many ms from now"),
        ("runAt" = Option<String>, Query, description = "Or: no sooner than this time (RFC 3339, UTC)"),
        ("maxAttempts" = Option<u32>, Query, description = "Attempts before the dead-letter queue, 1 to 1,000"),
        ("priority" = Option<i16>, Query, description = "-100 to 100 (default 0): higher is claimed first"),
        ("timeoutMs" = Option<u32>, Query, description = "Deadline per attempt in ms, capped by the plugin manifest's"),
    ),
    request_body(content = [Object], description = "1 to 10,000 jobs: an array of payloads (each may carry its own `idempotencyKey`), all with the query's options; or `{\"jobs\": [{\"payload\": ..., \"idempotencyKey\": ..., \"runAt\" or \"delayMs\": ..., \"maxAttempts\": ..., \"priority\": ..., \"timeoutMs\": ...}]}`, each item's options over the query's", content_type = "application/json"),
    responses(
        (status = 202, description = "Committed; ids in the order of the array (a used key gives its job's id)", body = super::openapi::BatchSubmitted,
         example = json!({"jobIds": [18, 19, 17], "created": 2, "duplicates": 1})),
        (status = 400, description = "`invalid_batch`, `invalid_json`, `invalid_query`, `invalid_idempotency_key`, `idempotency_key_too_long`", body = ApiError),
        (status = 404, description = "`unknown_job_type`", body = ApiError),
        (status = 413, description = "`payload_too_large`", body = ApiError),
        (status = 503, description = "`store_unavailable`, `unavailable`", body = ApiError),
    )
)]
async fn submit_batch(
    State(app): State<AppState>,
    PathParam(job_type): PathParam,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let handler = handler_for(&app, job_type)?;
    if headers.contains_key("idempotency-key") {
        return Err(ApiError::InvalidIdempotencyKey(
            "a batch takes no Idempotency-Key header; put an idempotencyKey in each payload",
        ));
    }
    let now = app.clock.now();
    let options = SubmitOptions::from_query(query.as_deref(), now)?;
    let bytes = read_body(body, &headers, app.body_limit).await?;
    let jobs = if bytes.trim_ascii_start().starts_with(b"{") {
        batch_items(&bytes, options, &handler, now)?
    } else {
        batch_payloads(&bytes, options, &handler, now)?
    };
    let results = app.store.job_insert_batch(jobs, now).await?;
    let created = results
        .iter()
        .filter(|r| matches!(r, Enqueued::Created { .. }))
        .count();
    handler.metrics.enqueued.increment(created as u64);
    let ready = results.iter().filter(|r| r.is_ready()).map(|r| match r {
        Enqueued::Created { id, .. } | Enqueued::Existing { id, .. } => *id,
    });
    app.dispatch.ready(&handler.job_type, ready);
    if results.iter().any(|r| {
        matches!(
            r,
            Enqueued::Created {
                state: JobState::Scheduled,
                ..
            }
        )
    }) {
        app.dispatch.scheduled();
    }
    let ids: Vec<i64> = results
        .iter()
        .map(|r| match r {
            Enqueued::Created { id, .. } | Enqueued::Existing { id, .. } => *id,
        })
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "jobIds": ids, "created": created, "duplicates": results.len() - created })),
    ))
}

/// The array form of a batch: `[payload, ...]`, every job with the
/// query's options.
fn batch_payloads(
    bytes: &[u8],
    options: SubmitOptions,
    handler: &Handler,
    now: Timestamp,
) -> Result<Vec<NewJob>, ApiError> {
    let payloads: Vec<&serde_json::value::RawValue> =
        serde_json::from_slice(bytes).map_err(|e| {
            ApiError::InvalidBatch(format!(
                "the body must be a JSON array of payloads, or {{\"jobs\": [...]}}: {e}"
            ))
        })?;
    batch_size(payloads.len())?;
    let (run_at, max_attempts) = (options.run_at(now), options.max_attempts(handler));
    payloads
        .into_iter()
        .map(|raw| {
            let text = raw.get();
            let idempotency_key = raw_payload_key(text)?;
            Ok(NewJob {
                job_type: handler.job_type.clone(),
                payload: text.to_owned(),
                idempotency_key,
                max_attempts,
                run_at,
                priority: options.priority.unwrap_or(0),
                timeout_ms: options.timeout_ms,
            })
        })
        .collect()
}

/// The object form of a batch: `{"jobs": [{"payload": ..., "idempotencyKey",
/// "runAt" | "delayMs", "maxAttempts"}, ...]}`, each item's options over the
/// query's.
fn batch_items(
    bytes: &[u8],
    options: SubmitOptions,
    handler: &Handler,
    now: Timestamp,
) -> Result<Vec<NewJob>, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Items<'a> {
        #[serde(borrow)]
        jobs: Vec<Item<'a>>,
    }
    let items: Items = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::InvalidBatch(format!(
            "the object form is {{\"jobs\": [{{\"payload\": ..., \"idempotencyKey\", \"runAt\" or \"delayMs\", \"maxAttempts\", \"priority\", \"timeoutMs\"}}, ...]}}: {e}"
        ))
    })?;
    batch_size(items.jobs.len())?;
    items
        .jobs
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let own = options
                .with_item(&item, now)
                .map_err(|why| ApiError::InvalidBatch(format!("jobs[{i}]: {why}")))?;
            let text = item.payload.get();
            let idempotency_key = match item.idempotency_key {
                Some(key) => checked_key(Some(key))?,
                None => raw_payload_key(text)?,
            };
            Ok(NewJob {
                job_type: handler.job_type.clone(),
                payload: text.to_owned(),
                idempotency_key,
                max_attempts: own.max_attempts(handler),
                run_at: own.run_at(now),
                priority: own.priority.unwrap_or(0),
                timeout_ms: own.timeout_ms,
            })
        })
        .collect()
}

/// One job of a batch's object form: the payload as sent, and its options.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Item<'a> {
    #[serde(borrow)]
    payload: &'a serde_json::value::RawValue,
    idempotency_key: Option<String>,
    run_at: Option<String>,
    delay_ms: Option<u64>,
    max_attempts: Option<u32>,
    priority: Option<i64>,
    timeout_ms: Option<u64>,
}

fn batch_size(n: usize) -> Result<(), ApiError> {
    if n == 0 || n > MAX_BATCH {
        return Err(ApiError::InvalidBatch(format!(
            "a batch holds 1 to {MAX_BATCH} jobs, not {n}"
        )));
    }
    Ok(())
}

/// A job, with its attempts, result, errors and full history.
///
/// The job and its history are read from one snapshot, so the status always
/// matches the last event.
#[utoipa::path(
    get,
    path = "/jobs/{key}",
    tag = "jobs",
    params(("key" = i64, Path, description = "The job id")),
    responses(
        (status = 200, description = "The job, with its history (`events`)", body = JobView),
        (status = 400, description = "`invalid_job_id`", body = ApiError),
        (status = 404, description = "`job_not_found`", body = ApiError),
        (status = 503, description = "`store_unavailable`", body = ApiError),
    )
)]
async fn show(
    State(app): State<AppState>,
    PathParam(id): PathParam,
) -> Result<Json<JobView>, ApiError> {
    let job_id: i64 = match id.parse() {
        Ok(n) if n > 0 => n,
        _ => return Err(ApiError::InvalidJobId(id)),
    };
    let (record, events) = app
        .store
        .job_show(job_id)
        .await?
        .ok_or(ApiError::JobNotFound(id))?;
    Ok(Json(render_job(&record, &events)))
}

/// Default page size of `GET /jobs`.
const DEFAULT_LIST: usize = 50;

/// Jobs, newest first, a page at a time (admin token).
///
/// Each as `GET /jobs/{id}` shows it, without `events`. Behind the admin
/// token: payloads may hold what only operators should see.
#[utoipa::path(
    get,
    path = "/jobs",
    tag = "jobs",
    params(
        ("state" = Option<String>, Query, description = "queued, scheduled, running, succeeded, dead or cancelled"),
        ("type" = Option<String>, Query, description = "A job type"),
        ("limit" = Option<usize>, Query, description = "1 to 1,000 (default 50)"),
        ("cursor" = Option<i64>, Query, description = "The `nextCursor` of the page before"),
    ),
    security(("admin" = []), ("adminHeader" = [])),
    responses(
        (status = 200, description = "A page; `nextCursor` is set when it is full. Pages never repeat or skip a job.", body = JobPage),
        (status = 400, description = "`invalid_query`", body = ApiError),
        (status = 401, description = "`unauthorized`", body = ApiError),
        (status = 503, description = "`store_unavailable`", body = ApiError),
    )
)]
async fn list(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<JobPage>, ApiError> {
    if !super::admin::token_matches(&headers, &app.admin_token) {
        return Err(ApiError::Unauthorized);
    }
    let query = list_query(query.as_deref())?;
    let jobs = app.store.job_list(&query).await?;
    let next = (jobs.len() == query.limit)
        .then(|| jobs.last().map(|j| j.id.to_string()))
        .flatten();
    Ok(Json(JobPage {
        jobs: jobs.iter().map(render_listed).collect(),
        next_cursor: next,
    }))
}

fn list_query(query: Option<&str>) -> Result<JobQuery, ApiError> {
    let mut q = JobQuery {
        limit: DEFAULT_LIST,
        ..JobQuery::default()
    };
    let bad = |why: String| Err(ApiError::InvalidQuery(why));
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "state" => match value.parse::<JobState>() {
                Ok(state) => q.state = Some(state),
                Err(_) => {
                    return bad(format!(
                        "state must be one of queued, scheduled, running, succeeded, dead, cancelled; not {value:?}"
                    ));
                }
            },
            "type" if crate::plugins::valid_type_name(value) => q.job_type = Some(value.to_owned()),
            "type" => return bad(format!("{value:?} is not a job type name")),
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=MAX_LIST).contains(&n) => q.limit = n,
                _ => return bad(format!("limit must be 1 to {MAX_LIST}, not {value:?}")),
            },
            "cursor" => match value.parse::<i64>() {
                Ok(id) if id > 0 => q.before = Some(id),
                _ => {
                    return bad(format!(
                        "{value:?} is not a cursor; pass the nextCursor of the page before"
                    ));
                }
            },
            _ => {
                return bad(format!(
                    "unknown parameter {name:?}; the parameters are state, type, limit and cursor"
                ));
            }
        }
    }
    Ok(q)
}

/// A job as every API response shows it (`Job` in the OpenAPI document).
/// Times are RFC 3339 in UTC, with microseconds.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Job)]
pub(super) struct JobView {
    job_id: i64,
    /// The job type (its plugin).
    #[serde(rename = "type")]
    job_type: String,
    status: JobState,
    /// The payload as submitted.
    payload: Value,
    idempotency_key: Option<String>,
    /// Attempts started so far.
    attempts: u32,
    max_attempts: u32,
    /// -100 to 100; higher is claimed first.
    priority: i16,
    /// The job's own deadline per attempt, if it asked for one.
    timeout_ms: Option<u32>,
    /// When a queued or scheduled job is due; null otherwise.
    next_attempt_at: Option<String>,
    last_error: Option<String>,
    /// What a succeeded attempt returned (JSON).
    result: Option<Value>,
    /// The plugin version of the last attempt (`sha256:...`).
    plugin_digest: Option<String>,
    lease_expires_at: Option<String>,
    created_at: String,
    updated_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    /// 0-100, as the running attempt last reported it.
    progress: Option<u8>,
    /// Its history, oldest first (`GET /jobs/{id}` and the operators'
    /// actions on one job; a listing leaves it out).
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<EventView>>,
}

/// One transition in a job's history (`JobEvent` in the OpenAPI document).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = JobEvent)]
pub(super) struct EventView {
    at: String,
    /// Null for the job's creation.
    from: Option<JobState>,
    to: JobState,
    attempt: u32,
    /// Who moved it: `api`, `worker:<owner>` (the host's `--owner`), `reaper`, `promoter`, `admin`.
    actor: String,
    reason: Option<String>,
    plugin_digest: Option<String>,
}

/// A page of `GET /jobs` (`JobPage` in the OpenAPI document).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = JobPage)]
pub(super) struct JobPage {
    /// Newest first, each without `events`.
    jobs: Vec<JobView>,
    /// Set when the page is full: pass it as `cursor` for the next one.
    next_cursor: Option<String>,
}

/// A job as a listing shows it: all of it but its history.
pub(super) fn render_listed(job: &JobRecord) -> JobView {
    render(job, None)
}

/// The job with its history.
pub(super) fn render_job(job: &JobRecord, events: &[JobEvent]) -> JobView {
    render(job, Some(events))
}

fn render(job: &JobRecord, events: Option<&[JobEvent]>) -> JobView {
    let waiting = matches!(job.state, JobState::Queued | JobState::Scheduled);
    JobView {
        job_id: job.id,
        job_type: job.job_type.clone(),
        status: job.state,
        payload: raw_json(&job.payload),
        idempotency_key: job.idempotency_key.clone(),
        attempts: job.attempt,
        max_attempts: job.max_attempts,
        priority: job.priority,
        timeout_ms: job.timeout_ms,
        next_attempt_at: waiting.then(|| job.run_at.to_rfc3339()),
        last_error: job.last_error.clone(),
        result: job.result.as_deref().map(raw_json),
        plugin_digest: job.plugin_digest.clone(),
        lease_expires_at: job.lease_expires_at.map(|t| t.to_rfc3339()),
        created_at: job.created_at.to_rfc3339(),
        updated_at: job.updated_at.to_rfc3339(),
        started_at: job.started_at.map(|t| t.to_rfc3339()),
        finished_at: job.finished_at.map(|t| t.to_rfc3339()),
        progress: job.progress,
        events: events.map(|events| {
            events
                .iter()
                .map(|e| EventView {
                    at: e.at.to_rfc3339(),
                    from: e.from,
                    to: e.to,
                    attempt: e.attempt,
                    actor: e.actor.clone(),
                    reason: e.reason.clone(),
                    plugin_digest: e.plugin_digest.clone(),
                })
                .collect()
        }),
    }
}

/// Stored JSON text, embedded as JSON (it was validated on the way in).
fn raw_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// Most attempts a submission may ask for (as a manifest may).
const MAX_ATTEMPTS: u32 = 1_000;

/// A submission's options: from the query string, and in a batch's object
/// form from each item too (an item's own win).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct SubmitOptions {
    due: Due,
    /// Instead of the manifest's `max_attempts`.
    max_attempts: Option<u32>,
    /// Higher is claimed first (0 if not given).
    priority: Option<i16>,
    /// A deadline per attempt shorter than the manifest's.
    timeout_ms: Option<u32>,
}

/// When a job is due.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
enum Due {
    #[default]
    Now,
    /// `delay_ms` from now.
    After(Duration),
    /// `runAt` (RFC 3339, UTC); in the past means now.
    At(Timestamp),
}

impl SubmitOptions {
    /// The options of the query string: `delay_ms` or `runAt`,
    /// `maxAttempts`, `priority` and `timeoutMs`.
    fn from_query(query: Option<&str>, now: Timestamp) -> Result<SubmitOptions, ApiError> {
        let mut options = SubmitOptions::default();
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let bad = ApiError::InvalidQuery;
            match name.as_ref() {
                "delay_ms" => options.set_due(delay(&value).map_err(bad)?).map_err(bad)?,
                "runAt" => options
                    .set_due(run_at(&value, now).map_err(bad)?)
                    .map_err(bad)?,
                "maxAttempts" => options.max_attempts = Some(max_attempts(&value).map_err(bad)?),
                "priority" => options.priority = Some(priority(&value).map_err(bad)?),
                "timeoutMs" => options.timeout_ms = Some(timeout_ms(&value).map_err(bad)?),
                _ => {
                    return Err(ApiError::InvalidQuery(format!(
                        "unknown parameter {name:?}; the parameters are delay_ms, runAt, maxAttempts, priority and timeoutMs"
                    )));
                }
            }
        }
        Ok(options)
    }

    fn set_due(&mut self, due: Due) -> Result<(), String> {
        if self.due != Due::Now && self.due != due {
            return Err("give one of delay_ms and runAt".into());
        }
        self.due = due;
        Ok(())
    }

    /// A batch item's own options over these: its `runAt` or `delayMs`
    /// replaces when it is due, each of its other options the query's.
    fn with_item(self, item: &Item, now: Timestamp) -> Result<SubmitOptions, String> {
        let mut own = SubmitOptions::default();
        if let Some(ms) = item.delay_ms {
            own.set_due(delay(&ms.to_string())?)?;
        }
        if let Some(at) = &item.run_at {
            own.set_due(run_at(at, now)?)?;
        }
        if let Some(n) = item.max_attempts {
            own.max_attempts = Some(max_attempts(&n.to_string())?);
        }
        if let Some(n) = item.priority {
            own.priority = Some(priority(&n.to_string())?);
        }
        if let Some(ms) = item.timeout_ms {
            own.timeout_ms = Some(timeout_ms(&ms.to_string())?);
        }
        Ok(SubmitOptions {
            due: if own.due == Due::Now {
                self.due
            } else {
                own.due
            },
            max_attempts: own.max_attempts.or(self.max_attempts),
            priority: own.priority.or(self.priority),
            timeout_ms: own.timeout_ms.or(self.timeout_ms),
        })
    }

    fn run_at(&self, now: Timestamp) -> Timestamp {
        match self.due {
            Due::Now => now,
            Due::After(delay) => now.plus(delay),
            Due::At(at) => at.max(now),
        }
    }

    fn max_attempts(&self, handler: &Handler) -> u32 {
        self.max_attempts
            .unwrap_or(handler.plugin.manifest.max_attempts)
    }
}

fn delay(v: &str) -> Result<Due, String> {
    v.parse::<u64>()
        .ok()
        .filter(|ms| *ms <= MAX_DELAY_MS)
        .map(|ms| Due::After(Duration::from_millis(ms)))
        .ok_or_else(|| {
            format!("a delay is a whole number of milliseconds up to {MAX_DELAY_MS}, not {v:?}")
        })
}

fn run_at(v: &str, now: Timestamp) -> Result<Due, String> {
    let at = humantime::parse_rfc3339(v).map_err(|e| {
        format!(
            "runAt must be an RFC 3339 time in UTC such as 2026-12-03T09:00:00Z, not {v:?} ({e})"
        )
    })?;
    let micros = at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let at = Timestamp(i64::try_from(micros).unwrap_or(i64::MAX));
    if at > now.plus(Duration::from_millis(MAX_DELAY_MS)) {
        return Err(format!("runAt is more than a year from now: {v:?}"));
    }
    Ok(Due::At(at))
}

fn max_attempts(v: &str) -> Result<u32, String> {
    v.parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_ATTEMPTS).contains(n))
        .ok_or_else(|| format!("maxAttempts must be 1 to {MAX_ATTEMPTS}, not {v:?}"))
}

fn priority(v: &str) -> Result<i16, String> {
    v.parse::<i16>()
        .ok()
        .filter(|n| PRIORITIES.contains(n))
        .ok_or_else(|| {
            format!(
                "priority must be a whole number from {} to {}, not {v:?}",
                PRIORITIES.start(),
                PRIORITIES.end()
            )
        })
}

/// The longest deadline a submission may ask for (as a manifest may).
const MAX_TIMEOUT_MS: u32 = 24 * 3600 * 1000;

fn timeout_ms(v: &str) -> Result<u32, String> {
    v.parse::<u32>()
        .ok()
        .filter(|ms| (1..=MAX_TIMEOUT_MS).contains(ms))
        .ok_or_else(|| format!("timeoutMs must be 1 to {MAX_TIMEOUT_MS} milliseconds, not {v:?}"))
}

pub(super) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::InvalidJson(format!("could not read the request body: {e}"))
        }
    })
}

/// The job's idempotency key: the `Idempotency-Key` header, else the
/// payload's `idempotencyKey` field (`payload_field`, found by
/// [`key_field`]).
fn idempotency_key(
    headers: &HeaderMap,
    payload_field: Option<Value>,
) -> Result<Option<String>, ApiError> {
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::InvalidIdempotencyKey(
                        "the Idempotency-Key header must be visible ASCII",
                    )
                })?
                .to_owned(),
        ),
        None => return checked_key(field_key(payload_field)?),
    };
    checked_key(key)
}

/// The `idempotencyKey` of a batch payload kept as sent (only an object
/// can carry one).
fn raw_payload_key(text: &str) -> Result<Option<String>, ApiError> {
    if !text.starts_with('{') {
        return Ok(None);
    }
    checked_key(field_key(key_field(text.as_bytes())?)?)
}

/// Checks that `payload` is one JSON document and returns its own
/// `idempotencyKey` field, if it is an object with one: what parsing it
/// into a [`Value`] and reading the field gives, without building the
/// document (only that field's value is kept). Of duplicate fields the
/// last counts, as in a parsed document.
fn key_field(payload: &[u8]) -> Result<Option<Value>, ApiError> {
    use std::cell::Cell;

    use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

    /// The name serde_json gives a `RawValue` in flight: a [`Value`] parsed
    /// from an object whose first field has it is that field's string,
    /// parsed. A payload with a field so named is parsed whole, as before.
    const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

    enum Name {
        Key,
        RawValueToken,
        Other,
    }

    /// A field name, classified without allocating it.
    struct FieldName;
    impl<'de> Visitor<'de> for FieldName {
        type Value = Name;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a field name")
        }
        fn visit_str<E>(self, name: &str) -> Result<Name, E> {
            Ok(match name {
                "idempotencyKey" => Name::Key,
                RAW_VALUE_TOKEN => Name::RawValueToken,
                _ => Name::Other,
            })
        }
    }
    impl<'de> DeserializeSeed<'de> for FieldName {
        type Value = Name;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Name, D::Error> {
            d.deserialize_str(self)
        }
    }

    /// A value: its `idempotencyKey` field if it is an object with one.
    /// Nested values are read through it too, and dropped: serde's
    /// `IgnoredAny` would skip them without serde_json's depth limit and
    /// without checking their strings (UTF-8, `\u` surrogates), both of
    /// which a parsed document is held to.
    #[derive(Clone, Copy)]
    struct Doc<'a> {
        /// Set when a field has [`RAW_VALUE_TOKEN`]'s name.
        raw_value_token: &'a Cell<bool>,
    }
    impl<'de> DeserializeSeed<'de> for Doc<'_> {
        type Value = Option<Value>;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Doc<'_> {
        type Value = Option<Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON document")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut key = None;
            while let Some(name) = map.next_key_seed(FieldName)? {
                match name {
                    Name::Key => key = Some(map.next_value::<Value>()?),
                    Name::Other => {
                        map.next_value_seed(self)?;
                    }
                    Name::RawValueToken => {
                        self.raw_value_token.set(true);
                        return Err(de::Error::custom("parsed whole instead"));
                    }
                }
            }
            Ok(key)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element_seed(self)?.is_some() {}
            Ok(None)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }

    let invalid = |e: serde_json::Error| ApiError::InvalidJson(e.to_string());
    let raw_value_token = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(payload);
    let scanned = Doc {
        raw_value_token: &raw_value_token,
    }
    .deserialize(&mut de)
    .and_then(|field| de.end().map(|()| field));
    if raw_value_token.get() {
        let doc: Value = serde_json::from_slice(payload).map_err(invalid)?;
        return Ok(doc.get("idempotencyKey").cloned());
    }
    scanned.map_err(invalid)
}

/// The key an `idempotencyKey` field gives: a string; absent or `null` is
/// none (unchecked: see [`checked_key`]).
fn field_key(field: Option<Value>) -> Result<Option<String>, ApiError> {
    match field {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::InvalidIdempotencyKey(
            "the payload's idempotencyKey must be a string",
        )),
    }
}

fn checked_key(key: Option<String>) -> Result<Option<String>, ApiError> {
    match key {
        Some(k) if k.is_empty() => Err(ApiError::InvalidIdempotencyKey("the key is empty")),
        Some(k) if k.len() > MAX_IDEMPOTENCY_KEY => {
            Err(ApiError::IdempotencyKeyTooLong { len: k.len() })
        }
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `submit` read from a payload before [`key_field`]: the whole
    /// document parsed, then its field.
    fn parsed_key(doc: &[u8]) -> Result<Option<String>, &'static str> {
        let value: Value = serde_json::from_slice(doc).map_err(|_| "invalid_json")?;
        match value.get("idempotencyKey") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err("invalid_idempotency_key"),
        }
    }

    fn scanned_key(doc: &[u8]) -> Result<Option<String>, &'static str> {
        key_field(doc).and_then(field_key).map_err(|e| match e {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidIdempotencyKey(_) => "invalid_idempotency_key",
            _ => "other",
        })
    }

    #[test]
    fn the_payload_key_is_read_as_a_parsed_document_has_it() {
        let docs = [
            r#"{}"#,
            r#"{"idempotencyKey":"k1"}"#,
            r#"{"userId":42,"idempotencyKey":"user#42"}"#,
            r#"{"idempotencyKey":null}"#,
            r#"{"idempotencyKey":5}"#,
            r#"{"idempotencyKey":{"a":1}}"#,
            r#"{"idempotencyKey":["k"]}"#,
            r#"{"idempotencyKey":"first","idempotencyKey":"last"}"#,
            r#"{"idempotency\u004bey":"escaped name"}"#,
            r#"{"idempotencyKey":"esc\"aped \u00e9"}"#,
            r#"{"nested":{"idempotencyKey":"inner"}}"#,
            r#"{"idempotencykey":"other case"}"#,
            r#"[{"idempotencyKey":"in an array"}]"#,
            r#""idempotencyKey""#,
            r#"17"#,
            r#"-1.5e3"#,
            r#"true"#,
            r#"null"#,
            r#" { "a" : [1, 2, {"b": null}] , "idempotencyKey" : "spaced" } "#,
            r#""#,
            r#"{"#,
            r#"{"a":1}}"#,
            r#"{"a":1} x"#,
            r#"{"a":}"#,
            r#"{'a':1}"#,
            r#"[1,2"#,
            r#"1e400"#,
            r#"{"idempotencyKey":"k" "#,
            "  ",
            "\u{feff}{}",
            "01",
            "18446744073709551616",
            "-9223372036854775809",
            r#"{"a":"\ud800"}"#,
            r#"{"\ud800":1}"#,
            r#"{"a":"\ud83d\ude00"}"#,
            r#"{"idempotencyKey":"\ud800"}"#,
            // serde_json's name for a RawValue in flight: a parsed
            // document reads the field's string as the document.
            r#"{"$serde_json::private::RawValue":"{\"idempotencyKey\":\"k\"}"}"#,
            r#"{"$serde_json::private::RawValue":"x"}"#,
            r#"{"$serde_json::private::RawValue":1}"#,
            r#"{"$serde_json::private::RawValue":"{}","b":2}"#,
            r#"{"a":1,"$serde_json::private::RawValue":"{}","idempotencyKey":"k"}"#,
            r#"{"a":{"$serde_json::private::RawValue":"[]"},"idempotencyKey":"k"}"#,
        ];
        for doc in docs {
            let doc = doc.as_bytes();
            assert_eq!(scanned_key(doc), parsed_key(doc), "payload {doc:?}");
        }
        // Not UTF-8, in a value and in a name.
        for doc in [
            &b"{\"a\":\"\xff\"}"[..],
            b"{\"\xc3\":1}",
            b"\"\xed\xa0\x80\"",
        ] {
            assert_eq!(scanned_key(doc), Err("invalid_json"), "payload {doc:?}");
            assert_eq!(parsed_key(doc), Err("invalid_json"));
        }
    }

    #[test]
    fn the_header_key_wins_and_the_payload_field_is_then_not_read() {
        let mut headers = HeaderMap::new();
        headers.insert("idempotency-key", "from-header".parse().unwrap());
        let field = key_field(br#"{"idempotencyKey":5}"#).unwrap();
        assert_eq!(
            idempotency_key(&headers, field.clone()).unwrap(),
            Some("from-header".to_owned())
        );
        assert!(matches!(
            idempotency_key(&HeaderMap::new(), field),
            Err(ApiError::InvalidIdempotencyKey(_))
        ));
    }

    #[test]
    fn a_payload_too_deep_to_parse_is_invalid_json() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(scanned_key(deep.as_bytes()), Err("invalid_json"));
        // At serde_json's depth limit, arrays and objects alike.
        for depth in [1, 126, 127, 128, 129] {
            let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
            let in_key = format!(
                r#"{{"idempotencyKey":{}{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            );
            for doc in [arrays, objects, in_key] {
                let doc = doc.as_bytes();
                assert_eq!(scanned_key(doc), parsed_key(doc), "depth {depth}");
            }
        }
    }
}

//! `/admin`: operator routes, behind the admin token.
//!
//! - `POST /admin/jobs/{id}/replay`: dead → queued with a fresh attempt budget.
//! - `POST /admin/jobs/{id}/cancel`: queued, scheduled or running →
//!   cancelled. A running attempt is stopped: at once on this host, within
//!   a second on another ([`crate::worker::LEASE_WATCH`]).
//! - `POST /admin/dlq/replay`: every dead job a filter picks (type, ids,
//!   error text, or all) → queued, in one transaction.
//! - `DELETE /admin/jobs?state=&olderThan=[&type=]`: deletes the finished
//!   jobs (succeeded, dead or cancelled) that finished more than `olderThan`
//!   ago, with their history, in batches: retention by hand.
//! - `POST /admin/queues/{type}/pause`, `/resume`: stop and restart claims
//!   of one type on every host; kept in the store, so it survives restarts.
//! - `GET /admin/metrics/jobs`: jobs per state.
//! - `GET /admin/metrics/queue`: per type: queued, scheduled, running, dead.
//! - `GET /admin/plugins`: every plugin: digest, size, when it loaded, its
//!   limits, and whether its latest files loaded (`status`, `lastError`).
//! - `PUT /admin/plugins/{type}`: installs a plugin version: the `.wasm` as
//!   the body, or `multipart/form-data` with a `wasm` part and an optional
//!   `manifest` part (TOML). Checked and compiled before anything is
//!   written; at most [`MAX_PLUGIN_BYTES`].
//! - `DELETE /admin/plugins/{type}`: deletes its files; its jobs are no
//!   longer claimed here, queued ones wait.
//! - `/admin/schedules`: periodic jobs (cron), in [`super::schedules`].
//! - `GET /admin/workers`, `POST /admin/workers/pause`, `POST /admin/workers/resume`:
//!   stop and restart claiming on this host (running attempts go on).
//!
//! The token is taken from `Authorization: Bearer <token>` or `X-Admin-Token`
//! and compared in constant time.

use axum::Json;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart};
use axum::extract::{RawQuery, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::Response;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use super::jobs::{JobView, render_job};
use super::{ApiError, AppState, PathParam};
use crate::clock::Timestamp;
use crate::job::JobState;
use crate::maintenance::{prune_all, prune_once};
use crate::plugins::{LoadError, LoadedPlugin};
use crate::store::{MAX_PRUNE, Prune, StateCounts, StoreError};

pub fn router(state: AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(replay))
        .routes(routes!(cancel))
        .routes(routes!(delete_jobs))
        .routes(routes!(replay_dead))
        .routes(routes!(pause_queue))
        .routes(routes!(resume_queue))
        .routes(routes!(job_counts))
        .routes(routes!(queue_counts))
        .routes(routes!(plugins))
        .routes(
            routes!(upload_plugin, delete_plugin)
                .layer(DefaultBodyLimit::max(MAX_PLUGIN_BYTES + MULTIPART_SLACK)),
        )
        .routes(routes!(workers))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .merge(super::schedules::router())
        .route_layer(middleware::from_fn_with_state(state, require_admin))
}

async fn require_admin(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if !token_matches(request.headers(), &app.admin_token) {
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(request).await)
}

pub(super) fn token_matches(headers: &HeaderMap, expected: &str) -> bool {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-admin-token").and_then(|v| v.to_str().ok()));
    let Some(presented) = presented else {
        return false;
    };
    // Hash both sides so the comparison takes the same time whatever the
    // lengths; compare the digests in constant time.
    let a = Sha256::digest(presented.trim().as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}

fn job_id(id: &str) -> Result<i64, ApiError> {
    match id.parse::<i64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ApiError::InvalidJobId(id.to_owned())),
    }
}

/// Replays a dead job: back to `queued` with a fresh attempt budget.
#[utoipa::path(
    post,
    path = "/jobs/{id}/replay",
    tag = "operators",
    params(("id" = i64, Path, description = "The job id")),
    security(("admin" = []), ("adminHeader" = [])),
    responses(
        (status = 200, description = "The job as `GET /jobs/{id}` shows it", body = JobView),
        (status = 400, description = "`invalid_job_id`", body = ApiError),
        (status = 404, description = "`job_not_found`", body = ApiError),
        (status = 409, description = "`invalid_job_state`: only dead jobs are replayed", body = ApiError),
        (status = 503, description = "`store_unavailable`, `unavailable`", body = ApiError),
        (status = 401, description = "`unauthorized`", body = ApiError),
    )
)]
async fn replay(
    State(app): State<AppState>,
    PathParam(id): PathParam,
) -> Result<Json<JobView>, ApiError> {
    let job_id = job_id(&id)?;
    let record = app
        .store
        .job_replay(job_id, app.clock.now())
        .await
        .map_err(|e| match e {
            StoreError::WrongState { id, state } => ApiError::WrongState {
                id,
                state,
                action: "replayed",
                allowed: "dead",
            },
            other => other.into(),
        })?;
    app.dispatch.ready(&record.job_type, [record.id]);
    Ok(Json(render_job(
        &record,
        &events_after_commit(&app, job_id).await,
    )))
}

/// Deletes finished jobs by state and age, with their history.
///
/// Both `state` (a final one) and `olderThan` are required, so nothing is
/// deleted by accident. Deleted in transactions of 10,000,
/// oldest first, resting as long as each took so claims and completions go
/// on.
#[utoipa::path(
    delete,
    path = "/jobs",
    tag = "operators",
    params(("state" = String, Query, description = "succeeded, dead or cancelled"), ("olderThan" = String, Query, description = "A duration: `90s`, `30m`, `24h`, `7d`; `0s` is every finished job of the state"), ("type" = Option<String>, Query, description = "Only jobs of this type"), ("limit" = Option<usize>, Query, description = "Delete at most this many (1 to 10,000), oldest first, in one transaction, and say whether more are left: a client's loop can show its progress")),
    security(("admin" = []), ("adminHeader" = [])),
    responses(
        (status = 200, description = "How many were deleted; `more` when a `limit` was reached", body = super::openapi::JobsDeleted, example = json!({"deleted": 120, "more": false, "state": "dead", "type": null, "finishedBefore": "2026-12-01T09:00:00.000000Z"})),
        (status = 400, description = "`invalid_filter`: nothing deleted", body = ApiError),
        (status = 503, description = "`store_unavailable`, `unavailable`", body = ApiError),
        (status = 401, description = "`unauthorized`", body = ApiError),
    )
)]
async fn delete_jobs(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (prune, limited) = prune_query(query.as_deref(), app.clock.now())?;
    let deleted = if limited {
        prune_once(&*app.store, &prune).await.map_err(|e| (e, 0))
    } else {
        prune_all(&*app.store, &prune, MAX_PRUNE, 1, |_| {}).await
    };
    match deleted {
        Ok(deleted) => Ok(Json(json!({
            "deleted": deleted,
            "more": limited && deleted == prune.limit as u64,
            "state": prune.state,
            "type": prune.job_type,
            "finishedBefore": prune.finished_before.to_rfc3339(),
        }))),
        Err((e, deleted)) => {
            tracing::error!(deleted, error = %e, "deleting finished jobs stopped part way");
            Err(e.into())
        }
    }
}

/// The prune a `DELETE /admin/jobs` asks for, and whether it gave a limit.
fn prune_query(query: Option<&str>, now: Timestamp) -> Result<(Prune, bool), ApiError> {
    let bad = |why: String| ApiError::InvalidFilter(why);
    let (mut state, mut older_than, mut job_type, mut limit) = (None, None, None, None);
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let value = value.as_ref();
        match name.as_ref() {
            "state" => match value.parse::<JobState>() {
                Ok(s @ (JobState::Succeeded | JobState::Dead | JobState::Cancelled)) => {
                    state = Some(s)
                }
                _ => {
                    return Err(bad(format!(
                        "state must be succeeded, dead or cancelled (only finished jobs are deleted), not {value:?}"
                    )));
                }
            },
            "olderThan" => match humantime::parse_duration(value) {
                Ok(d) => older_than = Some(d),
                Err(e) => {
                    return Err(bad(format!(
                        "olderThan must be a duration such as 24h, 7d or 90m, not {value:?} ({e})"
                    )));
                }
            },
            "type" if crate::plugins::valid_type_name(value) => job_type = Some(value.to_owned()),
            "type" => return Err(bad(format!("{value:?} is not a job type name"))),
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=MAX_PRUNE).contains(&n) => limit = Some(n),
                _ => {
                    return Err(bad(format!(
                        "limit must be 1 to {MAX_PRUNE}, not {value:?}"
                    )));
                }
            },
            _ => {
                return Err(bad(format!(
                    "unknown parameter {name:?}; the parameters are state, olderThan, type and limit"
                )));
            }
        }
    }
    let (Some(state), Some(older_than)) = (state, older_than) else {
        return Err(bad(
            "give both state (succeeded, dead or cancelled) and olderThan (such as 7d)".into(),
        ));
    };
    let prune = Prune {
        state,
        job_type,
        finished_before: now.minus(older_than),
        limit: limit.unwrap_or(MAX_PRUNE),
    };
    Ok((prune, limit.is_some()))
}

/// Longest error text a replay filters by.
const MAX_FILTER_TEXT: usize = 1024;
/// Most ids one replay names.
const MAX_REPLAY_IDS: usize = 100_000;

/// Replays every dead job a filter picks, in one transaction.
///
/// The jobs go back to `queued` with a fresh attempt budget, each with its
/// event, in their original order; no page-size cap.
#[utoipa::path(
    post,
    path = "/dlq/replay",
    tag = "operators",
    request_body(content = Object, description = "`{\"type\": T, \"ids\": [..], \"error\": \"text\"}` (every condition given must hold; `error` is a substring of `lastError`, 1 to 1,024 bytes; 1 to 100,000 ids), or `{\"all\": true}`", content_type = "application/json", example = json!({"type": "email_welcome", "error": "timeout"})),
    security(("admin" = []), ("adminHeader" = [])),
    responses(
        (status = 200, description = "How many moved, per type", body = super::openapi::Replayed, example = json!({"replayed": 5, "types": {"email_welcome": 5}})),
        (status = 400, description = "`invalid_filter`, `invalid_json`", body = ApiError),
        (status = 503, description = "`store_unavailable`, `unavailable`", body = ApiError),
        (status = 401, description = "`unauthorized`", body = ApiError),
    )
)]
async fn replay_dead(
    State(app): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(rename = "type")]
        job_type: Option<String>,
        ids: Option<Vec<i64>>,
        error: Option<String>,
        #[serde(default)]
        all: bool,
    }
    let body: Body =
        serde_json::from_slice(&body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let bad = |why: &str| Err(ApiError::InvalidFilter(why.to_owned()));
    let narrowed = body.job_type.is_some() || body.ids.is_some() || body.error.is_some();
    match (narrowed, body.all) {
        (false, false) => {
            return bad("name the dead jobs to replay: type, ids, error, or {\"all\": true}");
        }
        (true, true) => return bad("\"all\" takes no other condition"),
        _ => {}
    }
    if let Some(t) = &body.job_type
        && !crate::plugins::valid_type_name(t)
    {
        return bad("type is not a job type name");
    }
    if let Some(ids) = &body.ids
        && (ids.is_empty() || ids.len() > MAX_REPLAY_IDS || ids.iter().any(|id| *id <= 0))
    {
        return Err(ApiError::InvalidFilter(format!(
            "ids holds 1 to {MAX_REPLAY_IDS} job ids (positive integers)"
        )));
    }
    if let Some(text) = &body.error
        && (text.is_empty() || text.len() > MAX_FILTER_TEXT)
    {
        return Err(ApiError::InvalidFilter(format!(
            "error is 1 to {MAX_FILTER_TEXT} bytes of text"
        )));
    }
    let filter = crate::store::DeadFilter {
        job_type: body.job_type,
        ids: body.ids,
        error_contains: body.error,
    };
    let moved = app.store.job_replay_dead(&filter, app.clock.now()).await?;
    let mut per_type: std::collections::BTreeMap<&str, Vec<i64>> = Default::default();
    for m in &moved {
        per_type.entry(&m.job_type).or_default().push(m.id);
    }
    for (job_type, ids) in &per_type {
        app.dispatch.ready(job_type, ids.iter().copied());
    }
    let types: serde_json::Map<String, Value> = per_type
        .iter()
        .map(|(t, ids)| (t.to_string(), json!(ids.len())))
        .collect();
    Ok(Json(json!({ "replayed": moved.len(), "types": types })))
}

/// Pauses claims of a job type on every host (kept across restarts).
#[utoipa::path(
    post,
    path = "/queues/{type}/pause",
    tag = "operators",
    params(("type" = String, Path, description = "The job type")),
    security(("admin" = []), ("adminHeader" = [])),
    responses(
        (status = 200, description = "Whether it changed anything", body = super::openapi::QueuePaused, example = json!({"type": "email_welcome", "paused": true, "changed": true})),
        (status = 404, description = "`plugin_not_found`", body = ApiError),
        (status = 503, description = "`store_unavailable`, `unavailable`", body = ApiError),
        (status = 401, description = "`unauthorized`", body = ApiError),
    )
)]
async fn pause_queue(
    State(app): State<AppState>,
    PathParam(job_type): PathParam,
) -> Result<Json<Value>, ApiError> {
    set_queue_paused(app, job_type, true).await
}

/// Resumes claims of a paused job type on every host.
#[utoipa::path(
    post,
    path = "/queues/{type}/resume",
    tag = "operators",
    params(("type" = String, Path, description = "The job type")),
    security(("admin" = []), ("adminHeader" = [])),
    responses(
        (status = 200, description = "Whether it changed anything", body = super::openapi::QueuePaused, example = json!({"type": "email_welcome", "paused": false, "changed": true})),
        (status = 404, description = "`plugin_not_found`", body = ApiError),
        (status = 503, description = "`store_unavailable`, `unavailable`", body = ApiError),
        (status = 401, description = "`unauthorized`", body = ApiError),
    )
)]
async fn resume_queue(
    State(app): State<AppState>,
    PathParam(job_type): PathParam,
) -> Result<Json<Value>, ApiError> {
    set_queue_paused(app, job_type, false).await
}

/// Pauses or resumes a type in the store, then here at once (the other
/// hosts see it within [`crate::worker::PAUSED_TYPES_REFRESH`]).
async fn set_queue_paused(
    app: AppState,
    job_type: String,
    paused: bool,
) -> Result<Json<Value>, ApiError> {
    let job_type = plugin_type(job_type)?;
    let changed = app
        .store
        .queue_pause(&job_type, paused, app.clock.now())
        .await?;
    app.workers.refresh_paused_types(app.store.as_ref()).await?;
    if changed {
        let what = if paused { "paused" } else { "resumed" };
        tracing::info!(job_type, "job type {what} by an operator");
    }
    if !paused {
        app.dispatch.hint();
    }
    Ok(Json(
        json!({ "type": job_type, "paused": paused, "changed": changed }),
    ))
}

/// Cancels a job that has not finished (queued, scheduled or running).
///
/// A running job ends `cancelled`, not retried: its attempt is stopped
/// wherever it runs (at once on this host, within a second on another), and
/// its outcome and progress are not recorded (key-value writes it makes
/// before it is stopped stay).
#[utoipa::path(
    post,
    path = "/jobs/{id}/cancel",
    tag = "operators",
    params(("id" = i64, Path, description = "The job id")),
    security(("admin" = []), ("adminHeader" = [])),
    responses(
        (status = 200, description = "The job as `GET /jobs/{id}` shows it", body = JobView),
        (status = 400, description = "`invalid_job_id`", body = ApiError),
        (status = 404, description = "`job_not_found`", body = ApiError),
        (status = 409, description = "`invalid_job_state`", body = ApiError),
        (status = 503, description = "`store_unavailable`, `unavailable`", body = ApiError),
        (status = 401, description = "`unauthorized`", body = ApiError),
    )
)]
async fn cancel(
    State(app): State<AppState>,
    PathParam(id): PathParam,
) -> Result<Json<JobView>, ApiError> {
    let job_id = job_id(&id)?;
    let record = app
        .store
        .job_cancel(job_id, app.clock.now())
        .await
        .map_err(|e| match e {
            StoreError::WrongState { id, state } => ApiError::WrongState {
                id,
                state,
                action: "cancelled",
                allowed: "queued, scheduled or running",
            },
            other => other.into(),
        })?;
    // Committed: a running attempt on this host stops now (other hosts'
    // workers see the lease gone).
    app.workers.interrupt(job_id);
    Ok(Json(render_job(
        &record,
        &events_after_commit(&app, job_id).await,
    )))
}

/// The history to show after a change was committed: failing to read it
/// must not report the (successful) change as an error.
async fn events_after_commit(app: &AppState, id: i64) -> Vec<crate::job::JobEvent> {
    app.store.job_events(id).await.unwrap_or_else(|e| {
        tracing::warn!(job = id, error = %e, "could not read the history after a committed change");
        Vec::new()
    })
}

/// Jobs per state, and the total (`JobCounts` in the OpenAPI document).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = JobCounts)]
struct JobCounts {
    queued: u64,
    scheduled: u64,
    running: u64,
    succeeded: u64,
    dead: u64,
    cancelled: u64,
    total: u64,
}

/// One job type's counts (`QueueCounts` in the OpenAPI document).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = QueueCounts)]
struct QueueCounts {
    /// The job type.
    #[serde(rename = "type")]
    job_type: String,
    queued: u64,
    scheduled: u64,
    running: u64,
    dead: u64,
    /// Whether its queue is paused (on every host).
    paused: bool,
    /// Its Redis stream, with `--redis-url` and while Redis answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<crate::dispatch::redis::StreamStats>,
}

/// Every job type's counts (`Queues` in the OpenAPI document).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = Queues)]
struct Queues {
    /// By type name.
    types: Vec<QueueCounts>,
}

/// Jobs per state, and the total (never a scan of the jobs table).
#[utoipa::path(
    get,
    path = "/metrics/jobs",
    tag = "operators",
    security(("admin" = []), ("adminHeader" = [])),
    responses(
        (status = 200, description = "Counts", body = JobCounts, example = json!({"queued": 3, "scheduled": 0, "running": 1, "succeeded": 120, "dead": 2, "cancelled": 0, "total": 126})),
        (status = 503, description = "`store_unavailable`, `unavailable`", body = ApiError),
        (status = 401, description = "`unauthorized`", body = ApiError),
    )
)]
async fn job_counts(State(app): State<AppState>) -> Result<Json<JobCounts>, ApiError> {
    let c = app.store.counts().await?;
    Ok(Json(JobCounts {
        total: JobState::ALL.iter().map(|s| c.get(*s)).sum(),
        queued: c.queued,
        scheduled: c.scheduled,
        running: c.running,
        succeeded: c.succeeded,
        dead: c.dead,
        cancelled: c.cancelled,
    }))
}

/// Per job type: queued, scheduled, running, dead, paused; with Redis, its stream.
#[utoipa::path(
    get,
    path = "/metrics/queue",
    tag = "operators",
    security(("admin" = []), ("adminHeader" = [])),
    responses(
        (status = 200, description = "Per type", body = Queues),
        (status = 503, description = "`store_unavailable`, `unavailable`", body = ApiError),
        (status = 401, description = "`unauthorized`", body = ApiError),
    )
)]
async fn queue_counts(State(app): State<AppState>) -> Result<Json<Queues>, ApiError> {
    let mut by_type: std::collections::BTreeMap<String, StateCounts> = app
        .registry
        .types()
        .into_iter()
        .map(|t| (t, StateCounts::default()))
        .collect();
    by_type.extend(app.store.counts_by_type().await?);
    // Scale-out with Redis: each type's stream (length, hints read and not
    // yet acknowledged, consumers), absent while Redis cannot be reached.
    let streams = match app.dispatch.redis() {
        Some(redis) => Some(
            redis
                .stats(&by_type.keys().cloned().collect::<Vec<_>>())
                .await,
        ),
        None => None,
    };
    let paused = app.workers.paused_types();
    let types = by_type
        .into_iter()
        .map(|(job_type, c)| QueueCounts {
            stream: streams.as_ref().and_then(|s| s.get(&job_type)).cloned(),
            paused: paused.contains(&job_type),
            job_type,
            queued: c.queued,
            scheduled: c.scheduled,
            running: c.running,
            dead: c.dead,
        })
        .collect();
    Ok(Json(Queues { types }))
}

/// Largest plugin upload (the `.wasm`), in bytes.
pub const MAX_PLUGIN_BYTES: usize = 64 << 20;
/// Room for a multipart upload's boundaries, headers and manifest.
const MULTIPART_SLACK: usize = 1 << 20;

/// Every plugin: version, limits, status and last error.
#[utoipa::path(
    get,
    path = "/plugins",
    tag = "plugins",
    security(("admin" = []), ("adminHeader" = [])),
    responses(
        (status = 200, description = "Every plugin, loaded or failed", body = PluginList),
        (status = 401, description = "`unauthorized`", body = ApiError),
    )
)]
async fn plugins(State(app): State<AppState>) -> Json<PluginList> {
    let mut failures = app.registry.failures();
    let mut plugins: Vec<PluginView> = app
        .registry
        .all()
        .iter()
        .map(|p| {
            let failure = failures.remove(&p.name);
            let mut plugin = render_plugin(p);
            if let Some(f) = failure {
                plugin.status = PluginStatus::Failed;
                plugin.last_error = Some(f.error);
                plugin.last_error_at = Some(rfc3339(f.at));
            }
            plugin
        })
        .collect();
    // Plugins whose files never loaded: nothing serves them.
    for (name, f) in failures {
        plugins.push(PluginView {
            job_type: name.clone(),
            name,
            job_types: None,
            digest: None,
            size_bytes: None,
            loaded_at: None,
            status: PluginStatus::Failed,
            last_error: Some(f.error),
            last_error_at: Some(rfc3339(f.at)),
            fuel: None,
            timeout_ms: None,
            memory_mb: None,
            max_attempts: None,
            concurrency: None,
            backoff: None,
        });
    }
    Json(PluginList { plugins })
}

/// Every plugin (`PluginList` in the OpenAPI document).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = PluginList)]
struct PluginList {
    plugins: Vec<PluginView>,
}

/// Whether a plugin serves its types.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum PluginStatus {
    /// Its version serves.
    Loaded,
    /// Its last file failed to load: a version loaded before it (if any,
    /// with its fields) still serves.
    Failed,
}

/// A plugin as the API shows it (`Plugin` in the OpenAPI document). A
/// plugin whose file never loaded has only `name`, `type`, `digest` (null),
/// `status` and its error.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Plugin)]
struct PluginView {
    name: String,
    /// The job type it serves by its name.
    #[serde(rename = "type")]
    job_type: String,
    /// Every job type it serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    job_types: Option<Vec<String>>,
    /// The version serving (`sha256:...` of the component).
    digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    loaded_at: Option<String>,
    status: PluginStatus,
    last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error_at: Option<String>,
    // Its manifest's limits and retry policy, while a version is loaded.
    /// Fuel per attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    fuel: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_mb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u32>,
    /// Attempts of its types at once on one host.
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backoff: Option<BackoffView>,
}

/// The retry delays: `baseMs` doubled per attempt up to `capMs`, with
/// `jitter` (0-1) of it random.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct BackoffView {
    base_ms: u64,
    cap_ms: u64,
    jitter: f64,
}

fn render_plugin(p: &LoadedPlugin) -> PluginView {
    let m = &p.manifest;
    PluginView {
        name: p.name.clone(),
        job_type: p.name.clone(),
        job_types: Some(p.job_types.clone()),
        digest: Some(p.compiled.digest.clone()),
        size_bytes: Some(p.size as u64),
        loaded_at: Some(rfc3339(p.loaded_at)),
        status: PluginStatus::Loaded,
        last_error: None,
        last_error_at: None,
        fuel: Some(m.limits.fuel),
        timeout_ms: Some(m.limits.timeout.as_millis() as u64),
        memory_mb: Some((m.limits.memory_bytes >> 20) as u64),
        max_attempts: Some(m.max_attempts),
        concurrency: Some(m.concurrency),
        backoff: Some(BackoffView {
            base_ms: m.backoff.base.as_millis() as u64,
            cap_ms: m.backoff.cap.as_millis() as u64,
            jitter: m.backoff.jitter,
        }),
    }
}

fn rfc3339(at: std::time::SystemTime) -> String {
    let micros = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    crate::clock::Timestamp(micros).to_rfc3339()
}

fn plugin_type(name: String) -> Result<String, ApiError> {
    if crate::plugins::valid_type_name(&name) {
        Ok(name)
    } else {
        Err(ApiError::InvalidPath(format!(
            "{name:?} is not a job type name (1-64 of a-z, 0-9, _ and -, starting with a letter)"
        )))
    }
}

fn load_error(e: LoadError) -> ApiError {
    match e {
        LoadError::Io { .. } => {
            tracing::error!(error = %e, "installing a plugin failed");
            ApiError::Internal
        }
        other => ApiError::InvalidPlugin(other.to_string()),
    }
}

/// Runs a plugin change (file I/O, perhaps a compile) on a blocking thread.
async fn off_executor<T: Send + 'static>(
    change: impl FnOnce() -> Result<T, LoadError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(change)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "a plugin change panicked");
            ApiError::Internal
        })?
        .map_err(load_error)
}

/// The upload's `.wasm` and optional manifest.
async fn read_upload(request: Request) -> Result<(Vec<u8>, Option<String>), ApiError> {
    let too_large = ApiError::PayloadTooLarge {
        limit: MAX_PLUGIN_BYTES,
    };
    let multipart = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !multipart {
        let body = axum::body::to_bytes(request.into_body(), MAX_PLUGIN_BYTES)
            .await
            .map_err(|_| too_large)?;
        return Ok((body.to_vec(), None));
    }
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::InvalidUpload(e.body_text()))?;
    let (mut wasm, mut manifest) = (None, None);
    loop {
        let field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(too_large);
            }
            Err(e) => return Err(ApiError::InvalidUpload(e.body_text())),
        };
        let name = field.name().unwrap_or_default().to_owned();
        let bytes = field.bytes().await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge {
                    limit: MAX_PLUGIN_BYTES,
                }
            } else {
                ApiError::InvalidUpload(e.body_text())
            }
        })?;
        match name.as_str() {
            "wasm" => wasm = Some(bytes.to_vec()),
            "manifest" => {
                let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                    ApiError::InvalidUpload("the manifest part is not UTF-8 text".into())
                })?;
                manifest = Some(text);
            }
            other => {
                return Err(ApiError::InvalidUpload(format!(
                    "unknown part {other:?}; the parts are `wasm` and `manifest`"
                )));
            }
        }
    }
    let wasm = wasm.ok_or_else(|| ApiError::InvalidUpload("no `wasm` part".into()))?;
    if wasm.len() > MAX_PLUGIN_BYTES {
        return Err(too_large);
    }
    Ok((wasm, manifest))
}

/// Installs a plugin version (on every host, in scale-out).
///
/// Checked and compiled before anything is written; at most 64 MiB.
#[utoipa::path(
    put,
    path = "/plugins/{type}",
    tag = "plugins",
    params(("type" = String, Path, description = "The plugin's name")),
    request_body(content = Vec<u8>, description = "The `.wasm` (`application/wasm`), or `multipart/form-data` with a `wasm` part and an optional `manifest` part (TOML)", content_type = "application/wasm"),
    security(("admin" = []), ("adminHeader" = [])),
    responses(
        (status = 200, description = "The plugin as `GET /admin/plugins` shows it", body = PluginView),
        (status = 400, description = "`invalid_upload`, `invalid_path`", body = ApiError),
        (status = 413, description = "`payload_too_large`", body = ApiError),
        (status = 422, description = "`invalid_plugin`: nothing changed", body = ApiError),
        (status = 503, description = "`store_unavailable`, `unavailable`", body = ApiError),
        (status = 401, description = "`unauthorized`", body = ApiError),
    )
)]
async fn upload_plugin(
    State(app): State<AppState>,
    PathParam(name): PathParam,
    request: Request,
) -> Result<Json<PluginView>, ApiError> {
    let job_type = plugin_type(name)?;
    let (wasm, manifest) = read_upload(request).await?;
    if wasm.is_empty() {
        return Err(ApiError::InvalidUpload("the .wasm is empty".into()));
    }
    // Checked (compiled once), then in scale-out published (every host
    // follows the catalog), then installed here: a refused file changes
    // nothing, and neither does an unreachable catalog.
    let (loader, name, bytes) = (app.loader.clone(), job_type.clone(), wasm.clone());
    let checked = off_executor(move || loader.check(&name, &bytes, manifest)).await?;
    if let Some(catalog) = &app.catalog {
        catalog
            .publish(&job_type, &wasm, checked.manifest())
            .await?;
    }
    let loader = app.loader.clone();
    let installed = off_executor(move || loader.install(checked, &wasm)).await?;
    Ok(Json(render_plugin(&installed)))
}

/// Deletes a plugin (its jobs wait; new submissions are refused).
#[utoipa::path(
    delete,
    path = "/plugins/{type}",
    tag = "plugins",
    params(("type" = String, Path, description = "The plugin's name")),
    security(("admin" = []), ("adminHeader" = [])),
    responses(
        (status = 200, description = "Deleted", body = super::openapi::PluginDeleted, example = json!({"type": "noop", "deleted": true})),
        (status = 404, description = "`plugin_not_found`", body = ApiError),
        (status = 503, description = "`store_unavailable`, `unavailable`", body = ApiError),
        (status = 401, description = "`unauthorized`", body = ApiError),
    )
)]
async fn delete_plugin(
    State(app): State<AppState>,
    PathParam(name): PathParam,
) -> Result<Json<Value>, ApiError> {
    let job_type = plugin_type(name)?;
    let loader = app.loader.clone();
    let name = job_type.clone();
    // In scale-out the deletion is published first, so an unreachable
    // catalog changes nothing.
    let published = match &app.catalog {
        Some(catalog) => catalog.unpublish(&job_type).await?,
        None => false,
    };
    let removed = off_executor(move || loader.uninstall(&name)).await? || published;
    if !removed {
        return Err(ApiError::PluginNotFound(job_type));
    }
    Ok(Json(json!({ "type": job_type, "deleted": true })))
}

/// Whether this host's workers are paused.
#[utoipa::path(
    get,
    path = "/workers",
    tag = "workers",
    security(("admin" = []), ("adminHeader" = [])),
    responses(
        (status = 200, description = "This host", body = super::openapi::Workers, example = json!({"paused": false})),
        (status = 401, description = "`unauthorized`", body = ApiError),
    )
)]
async fn workers(State(app): State<AppState>) -> Json<Value> {
    Json(json!({ "paused": app.workers.is_paused() }))
}

/// Stops claiming on this host (running attempts go on).
#[utoipa::path(
    post,
    path = "/workers/pause",
    tag = "workers",
    security(("admin" = []), ("adminHeader" = [])),
    responses(
        (status = 200, description = "Paused", body = super::openapi::Workers, example = json!({"paused": true})),
        (status = 401, description = "`unauthorized`", body = ApiError),
    )
)]
async fn pause(State(app): State<AppState>) -> Json<Value> {
    app.workers.set_paused(true);
    tracing::info!("workers paused by an operator");
    Json(json!({ "paused": true }))
}

/// Starts claiming again on this host.
#[utoipa::path(
    post,
    path = "/workers/resume",
    tag = "workers",
    security(("admin" = []), ("adminHeader" = [])),
    responses(
        (status = 200, description = "Resumed", body = super::openapi::Workers, example = json!({"paused": false})),
        (status = 401, description = "`unauthorized`", body = ApiError),
    )
)]
async fn resume(State(app): State<AppState>) -> Json<Value> {
    app.workers.set_paused(false);
    app.dispatch.hint();
    tracing::info!("workers resumed by an operator");
    Json(json!({ "paused": false }))
}

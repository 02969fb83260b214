//! `/admin`: operator routes, behind the admin token.
//!
//! - `POST /admin/jobs/{id}/replay`: dead → queued with a fresh attempt budget.
//! - `POST /admin/jobs/{id}/cancel`: queued or scheduled → cancelled.
//! - `GET /admin/metrics/jobs`: jobs per state.
//! - `GET /admin/metrics/queue`: per type: queued, scheduled, running, dead.
//! - `GET /admin/plugins`: loaded plugins, their digests and limits.
//! - `GET /admin/workers`, `POST /admin/workers/pause`, `POST /admin/workers/resume`:
//!   stop and restart claiming on this host (running attempts go on).
//!
//! The token is taken from `Authorization: Bearer <token>` or `X-Admin-Token`
//! and compared in constant time.

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::jobs::render_job;
use super::{ApiError, AppState, PathParam};
use crate::job::JobState;
use crate::store::{StateCounts, StoreError};

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/jobs/{id}/replay", post(replay))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/metrics/jobs", get(job_counts))
        .route("/metrics/queue", get(queue_counts))
        .route("/plugins", get(plugins))
        .route("/workers", get(workers))
        .route("/workers/pause", post(pause))
        .route("/workers/resume", post(resume))
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

fn token_matches(headers: &HeaderMap, expected: &str) -> bool {
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

async fn replay(
    State(app): State<AppState>,
    PathParam(id): PathParam,
) -> Result<Json<Value>, ApiError> {
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

async fn cancel(
    State(app): State<AppState>,
    PathParam(id): PathParam,
) -> Result<Json<Value>, ApiError> {
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
                allowed: "queued or scheduled",
            },
            other => other.into(),
        })?;
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

async fn job_counts(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let counts = app.store.counts().await?;
    let total: u64 = JobState::ALL.iter().map(|s| counts.get(*s)).sum();
    let mut body = serde_json::to_value(&counts).map_err(|_| ApiError::Internal)?;
    body["total"] = json!(total);
    Ok(Json(body))
}

async fn queue_counts(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
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
    let types: Vec<Value> = by_type
        .into_iter()
        .map(|(job_type, c)| {
            let mut entry = json!({
                "type": job_type,
                "queued": c.queued,
                "scheduled": c.scheduled,
                "running": c.running,
                "dead": c.dead,
            });
            if let Some(stream) = streams.as_ref().and_then(|s| s.get(&job_type)) {
                entry["stream"] = json!(stream);
            }
            entry
        })
        .collect();
    Ok(Json(json!({ "types": types })))
}

async fn plugins(State(app): State<AppState>) -> Json<Value> {
    let plugins: Vec<Value> = app
        .registry
        .all()
        .iter()
        .map(|p| {
            let m = &p.manifest;
            json!({
                "type": p.job_type,
                "digest": p.compiled.digest,
                "fuel": m.limits.fuel,
                "timeoutMs": m.limits.timeout.as_millis() as u64,
                "memoryMb": m.limits.memory_bytes >> 20,
                "maxAttempts": m.max_attempts,
                "concurrency": m.concurrency,
                "backoff": {
                    "baseMs": m.backoff.base.as_millis() as u64,
                    "capMs": m.backoff.cap.as_millis() as u64,
                    "jitter": m.backoff.jitter,
                },
            })
        })
        .collect();
    Json(json!({ "plugins": plugins }))
}

async fn workers(State(app): State<AppState>) -> Json<Value> {
    Json(json!({ "paused": app.workers.is_paused() }))
}

async fn pause(State(app): State<AppState>) -> Json<Value> {
    app.workers.set_paused(true);
    tracing::info!("workers paused by an operator");
    Json(json!({ "paused": true }))
}

async fn resume(State(app): State<AppState>) -> Json<Value> {
    app.workers.set_paused(false);
    app.dispatch.hint();
    tracing::info!("workers resumed by an operator");
    Json(json!({ "paused": false }))
}

//! The API's one error type: each variant has a stable `code`, a status and a
//! message that says what to do. The body is always
//! `{"code": ..., "message": ..., "status": ...}` plus variant details.
//! Backend errors are logged here and never shown to clients.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::job::{JobId, JobState};
use crate::store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    JobNotFound(String),
    InvalidJobId(String),
    UnknownJobType {
        name: String,
        loaded: Vec<String>,
    },
    InvalidJson(String),
    PayloadTooLarge {
        limit: usize,
    },
    IdempotencyKeyTooLong {
        len: usize,
    },
    InvalidIdempotencyKey(&'static str),
    InvalidQuery(String),
    InvalidBatch(String),
    InvalidFilter(String),
    InvalidPath(String),
    Unauthorized,
    WrongState {
        id: JobId,
        state: JobState,
        action: &'static str,
        allowed: &'static str,
    },
    PluginNotFound(String),
    InvalidPlugin(String),
    InvalidUpload(String),
    RouteNotFound,
    MethodNotAllowed,
    Unavailable,
    StoreUnavailable,
    Internal,
}

impl ApiError {
    /// The stable, machine-readable code (listed in the README).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::JobNotFound(_) => "job_not_found",
            ApiError::InvalidJobId(_) => "invalid_job_id",
            ApiError::UnknownJobType { .. } => "unknown_job_type",
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::IdempotencyKeyTooLong { .. } => "idempotency_key_too_long",
            ApiError::InvalidIdempotencyKey(_) => "invalid_idempotency_key",
            ApiError::InvalidQuery(_) => "invalid_query",
            ApiError::InvalidBatch(_) => "invalid_batch",
            ApiError::InvalidFilter(_) => "invalid_filter",
            ApiError::InvalidPath(_) => "invalid_path",
            ApiError::Unauthorized => "unauthorized",
            ApiError::WrongState { .. } => "invalid_job_state",
            ApiError::PluginNotFound(_) => "plugin_not_found",
            ApiError::InvalidPlugin(_) => "invalid_plugin",
            ApiError::InvalidUpload(_) => "invalid_upload",
            ApiError::RouteNotFound => "route_not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Unavailable => "unavailable",
            ApiError::StoreUnavailable => "store_unavailable",
            ApiError::Internal => "internal_error",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::JobNotFound(_)
            | ApiError::UnknownJobType { .. }
            | ApiError::PluginNotFound(_)
            | ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::InvalidPlugin(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::InvalidJobId(_)
            | ApiError::InvalidJson(_)
            | ApiError::IdempotencyKeyTooLong { .. }
            | ApiError::InvalidIdempotencyKey(_)
            | ApiError::InvalidQuery(_)
            | ApiError::InvalidBatch(_)
            | ApiError::InvalidFilter(_)
            | ApiError::InvalidPath(_)
            | ApiError::InvalidUpload(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::WrongState { .. } => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable | ApiError::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::JobNotFound(id) => format!("no job has id {id}"),
            ApiError::InvalidJobId(id) => format!("{id:?} is not a job id; job ids are positive integers"),
            ApiError::UnknownJobType { name, loaded } => format!(
                "no plugin handles job type {name:?}; loaded types: {}",
                if loaded.is_empty() { "none".to_owned() } else { loaded.join(", ") }
            ),
            ApiError::InvalidJson(why) => format!("the request body must be a JSON document: {why}"),
            ApiError::PayloadTooLarge { limit } => {
                format!("the request body is larger than the limit of {limit} bytes")
            }
            ApiError::IdempotencyKeyTooLong { len } => format!(
                "the idempotency key is {len} bytes; the limit is {} bytes",
                super::MAX_IDEMPOTENCY_KEY
            ),
            ApiError::InvalidIdempotencyKey(why) => format!("invalid idempotency key: {why}"),
            ApiError::InvalidQuery(why) => format!("invalid query string: {why}"),
            ApiError::InvalidBatch(why) => format!("invalid batch: {why}"),
            ApiError::InvalidFilter(why) => format!("invalid filter: {why}"),
            ApiError::InvalidPath(why) => format!("invalid path: {why}"),
            ApiError::Unauthorized => "admin routes need `Authorization: Bearer <token>` (or `X-Admin-Token: <token>`) with the admin token".to_owned(),
            ApiError::WrongState { id, state, action, allowed } => {
                format!("job {id} is {state}; only {allowed} jobs can be {action}")
            }
            ApiError::PluginNotFound(name) => format!("no plugin is installed for job type {name:?}"),
            ApiError::InvalidPlugin(why) => format!("the plugin was not installed (the version before, if any, keeps serving): {why}"),
            ApiError::InvalidUpload(why) => format!("invalid plugin upload: {why}"),
            ApiError::RouteNotFound => "no such route; see the README for the API".to_owned(),
            ApiError::MethodNotAllowed => "this route does not take that method".to_owned(),
            ApiError::Unavailable => "jobhost is shutting down; retry against another host or later".to_owned(),
            ApiError::StoreUnavailable => "the job store cannot be reached right now; retry later (with an idempotency key a retry never creates a second job)".to_owned(),
            ApiError::Internal => "internal error; the details are in the jobhost log".to_owned(),
        }
    }

    fn details(&self) -> Option<(&'static str, Value)> {
        match self {
            ApiError::UnknownJobType { loaded, .. } => Some(("loadedTypes", json!(loaded))),
            ApiError::PayloadTooLarge { limit } => Some(("limitBytes", json!(limit))),
            ApiError::WrongState { state, .. } => Some(("state", json!(state))),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = json!({
            "code": self.code(),
            "message": self.message(),
            "status": status.as_u16(),
        });
        if let Some((key, value)) = self.details() {
            body[key] = value;
        }
        (status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => ApiError::JobNotFound(id.to_string()),
            StoreError::WrongState { id, state } => ApiError::WrongState {
                id,
                state,
                action: "changed this way",
                allowed: "other",
            },
            StoreError::Closed => ApiError::Unavailable,
            StoreError::Unavailable(why) => {
                tracing::warn!(error = %why, "the store is unavailable");
                ApiError::StoreUnavailable
            }
            StoreError::Backend(why) => {
                tracing::error!(error = %why, "store error while serving a request");
                ApiError::Internal
            }
        }
    }
}

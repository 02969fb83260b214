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
    InvalidSchedule(String),
    ScheduleNotFound(String),
    InvalidUpload(String),
    RouteNotFound,
    MethodNotAllowed,
    Unavailable,
    StoreUnavailable,
    Internal,
}

/// Every error code, with its status and when it is answered: the OpenAPI
/// document's `Error` schema lists them (a test checks that every variant's
/// code and status are here).
pub const ERROR_CODES: &[(&str, u16, &str)] = &[
    (
        "invalid_schedule",
        400,
        "A schedule's name, body, cron pattern, time zone or payload is not one jobhost takes; the message says which.",
    ),
    ("schedule_not_found", 404, "No schedule has that name."),
    (
        "job_not_found",
        404,
        "No job has that id (or it was deleted by retention).",
    ),
    (
        "invalid_job_id",
        400,
        "A job id that is not a positive integer.",
    ),
    (
        "unknown_job_type",
        404,
        "No loaded plugin handles that job type; `loadedTypes` lists those that are.",
    ),
    (
        "invalid_json",
        400,
        "The body is not the JSON the route takes.",
    ),
    (
        "payload_too_large",
        413,
        "The body is larger than `--body-limit`; `limitBytes` says how large it may be.",
    ),
    (
        "idempotency_key_too_long",
        400,
        "An idempotency key over 200 bytes.",
    ),
    (
        "invalid_idempotency_key",
        400,
        "An empty or non-string idempotency key, or an `Idempotency-Key` header on a batch.",
    ),
    (
        "invalid_query",
        400,
        "A query parameter that is unknown or out of range.",
    ),
    (
        "invalid_batch",
        400,
        "A batch that is not a JSON array of 1 to 10,000 payloads.",
    ),
    (
        "invalid_filter",
        400,
        "A bulk replay or delete whose filter is missing, contradictory or out of range.",
    ),
    (
        "invalid_path",
        400,
        "A path segment that is not valid percent-encoded UTF-8.",
    ),
    (
        "unauthorized",
        401,
        "An admin route without the admin token (`Authorization: Bearer` or `X-Admin-Token`).",
    ),
    (
        "invalid_job_state",
        409,
        "The job is not in a state this action applies to; `state` says which it is in.",
    ),
    (
        "plugin_not_found",
        404,
        "No plugin is installed under that name.",
    ),
    (
        "invalid_plugin",
        422,
        "An uploaded plugin that does not load (manifest, world, limits, a job type another plugin handles); nothing was changed.",
    ),
    (
        "invalid_upload",
        400,
        "An upload that is not a `.wasm` body or a multipart form with a `wasm` part.",
    ),
    ("route_not_found", 404, "No such route."),
    (
        "method_not_allowed",
        405,
        "The route does not take that method.",
    ),
    ("unavailable", 503, "jobhost is shutting down."),
    (
        "store_unavailable",
        503,
        "The database cannot be reached; retry (with an idempotency key a retry never creates a second job).",
    ),
    (
        "internal_error",
        500,
        "A store failure; the details are in the log.",
    ),
];

impl utoipa::PartialSchema for ApiError {
    /// The one error shape, with every code (from [`ERROR_CODES`]).
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let table: String = ERROR_CODES
            .iter()
            .map(|(code, status, when)| format!("- `{code}` ({status}): {when}\n"))
            .collect();
        let code = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(ERROR_CODES.iter().map(|(code, _, _)| *code)))
            .description(Some(format!("Stable and machine-readable:\n\n{table}")));
        ObjectBuilder::new()
            .description(Some("Every error: a code, a message that says what to do, the HTTP status, and for some codes one more field."))
            .property("code", code)
            .required("code")
            .property("message", ObjectBuilder::new().schema_type(Type::String))
            .required("message")
            .property("status", ObjectBuilder::new().schema_type(Type::Integer))
            .required("status")
            .property("loadedTypes", ObjectBuilder::new().schema_type(Type::Array).description(Some("unknown_job_type: the job types that are loaded")))
            .property("limitBytes", ObjectBuilder::new().schema_type(Type::Integer).description(Some("payload_too_large: the limit")))
            .property("state", ObjectBuilder::new().schema_type(Type::String).description(Some("invalid_job_state: the job's state")))
            .into()
    }
}

impl utoipa::ToSchema for ApiError {
    fn name() -> std::borrow::Cow<'static, str> {
        "Error".into()
    }
}

impl ApiError {
    /// The stable, machine-readable code (listed in [`ERROR_CODES`]).
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
            ApiError::InvalidSchedule(_) => "invalid_schedule",
            ApiError::ScheduleNotFound(_) => "schedule_not_found",
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
            | ApiError::ScheduleNotFound(_)
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
            | ApiError::InvalidSchedule(_)
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
            ApiError::InvalidSchedule(why) => format!("invalid schedule: {why}"),
            ApiError::ScheduleNotFound(name) => format!("no schedule is named {name:?}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each variant: a new variant without a line in `ERROR_CODES`
    /// (or with a status that disagrees) fails here.
    #[test]
    fn every_error_code_is_documented() {
        let all = [
            ApiError::JobNotFound("1".into()),
            ApiError::InvalidJobId("x".into()),
            ApiError::UnknownJobType {
                name: "x".into(),
                loaded: vec![],
            },
            ApiError::InvalidJson(String::new()),
            ApiError::PayloadTooLarge { limit: 1 },
            ApiError::IdempotencyKeyTooLong { len: 201 },
            ApiError::InvalidIdempotencyKey(""),
            ApiError::InvalidQuery(String::new()),
            ApiError::InvalidBatch(String::new()),
            ApiError::InvalidFilter(String::new()),
            ApiError::InvalidPath(String::new()),
            ApiError::Unauthorized,
            ApiError::WrongState {
                id: 1,
                state: JobState::Queued,
                action: "",
                allowed: "",
            },
            ApiError::PluginNotFound(String::new()),
            ApiError::InvalidPlugin(String::new()),
            ApiError::InvalidUpload(String::new()),
            ApiError::InvalidSchedule(String::new()),
            ApiError::ScheduleNotFound(String::new()),
            ApiError::RouteNotFound,
            ApiError::MethodNotAllowed,
            ApiError::Unavailable,
            ApiError::StoreUnavailable,
            ApiError::Internal,
        ];
        for e in &all {
            let documented = ERROR_CODES.iter().find(|(code, _, _)| *code == e.code());
            assert_eq!(
                documented.map(|(_, status, _)| *status),
                Some(e.status().as_u16()),
                "{} is not documented with its status",
                e.code()
            );
        }
        assert_eq!(
            all.len(),
            ERROR_CODES.len(),
            "a code documented twice or for no variant"
        );
    }
}

//! The OpenAPI 3.1 document, served at `GET /openapi.json`, generated from
//! the code: every route is added with `utoipa_axum::routes!`, which takes
//! its method and path from the handler's `#[utoipa::path]`, so a route and
//! its specification cannot drift apart. A test checks that no route is
//! added any other way, and the end-to-end suite calls every documented
//! route on the real binary.

use axum::Json;
use utoipa::Modify;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

use super::AppState;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "jobhost",
        description = "A job host that runs every attempt in a WebAssembly sandbox. \
            Submit jobs, read them, and operate the queues. Admin routes need the admin \
            token: `Authorization: Bearer <token>` or `X-Admin-Token: <token>`. Every error \
            is the `Error` shape, with a stable `code`."
    ),
    modifiers(&AdminToken),
    tags(
        (name = "jobs", description = "Submit and read jobs"),
        (name = "operators", description = "The dead-letter queue, queues, retention and counts"),
        (name = "schedules", description = "Periodic jobs (cron)"),
        (name = "plugins", description = "The handler plugins"),
        (name = "workers", description = "This host's workers"),
        (name = "host", description = "Health, metrics, the dashboard and this document"),
    )
)]
struct Document;

/// The admin token, in either header.
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The admin token"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "adminHeader",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Admin-Token",
                "The admin token",
            ))),
        );
    }
}

/// An empty router that collects the document.
pub fn router() -> OpenApiRouter<AppState> {
    use utoipa::OpenApi as _;
    OpenApiRouter::with_openapi(Document::openapi()).routes(utoipa_axum::routes!(document))
}

/// The document as served, made once from what the routes collected (the
/// same for every app in a process): kept here rather than in a layer, so no
/// other request pays for it.
static SERVED: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();

pub fn serve(api: &OpenApi) {
    SERVED.get_or_init(|| serde_json::to_value(api).expect("the OpenAPI document serializes"));
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "host",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
async fn document() -> Json<serde_json::Value> {
    Json(SERVED.get().cloned().unwrap_or_default())
}

pub use shapes::{
    BatchSubmitted, Health, JobsDeleted, PluginDeleted, QueuePaused, Replayed, ScheduleDeleted,
    Submitted, Workers,
};

/// The shapes of the answers that are built in their handlers (the submit
/// paths; small acknowledgements). The end-to-end suite checks real answers
/// of each against the document, so they cannot drift apart.
mod shapes {
    // Only `Submitted` is built (by `POST /jobs/{type}`, which serializes
    // it straight to the body); the others describe what their handlers'
    // `json!` builds.
    #![allow(dead_code)]

    /// `POST /jobs/{type}`: the job, `duplicate` when its idempotency key named
    /// it already (`Submitted` in the document).
    #[derive(serde::Serialize, utoipa::ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct Submitted {
        pub job_id: i64,
        pub status: crate::job::JobState,
        /// Present (true) when the idempotency key named this job already.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub duplicate: Option<bool>,
    }

    /// `POST /jobs/{type}/batch`: ids in the order of the jobs.
    #[derive(serde::Serialize, utoipa::ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct BatchSubmitted {
        job_ids: Vec<i64>,
        /// Jobs created.
        created: u64,
        /// Jobs whose idempotency key named a job already.
        duplicates: u64,
    }

    /// `DELETE /admin/jobs`: what was deleted.
    #[derive(serde::Serialize, utoipa::ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct JobsDeleted {
        deleted: u64,
        /// A `limit` was reached: there may be more.
        more: bool,
        state: crate::job::JobState,
        #[serde(rename = "type")]
        job_type: Option<String>,
        /// The cut-off: jobs finished before it were deleted.
        finished_before: String,
    }

    /// `POST /admin/dlq/replay`: how many moved back to the queue, per type.
    #[derive(serde::Serialize, utoipa::ToSchema)]
    pub struct Replayed {
        replayed: u64,
        types: std::collections::BTreeMap<String, u64>,
    }

    /// A queue paused or resumed, on every host.
    #[derive(serde::Serialize, utoipa::ToSchema)]
    pub struct QueuePaused {
        #[serde(rename = "type")]
        job_type: String,
        paused: bool,
        /// False if it already was.
        changed: bool,
    }

    /// A plugin deleted.
    #[derive(serde::Serialize, utoipa::ToSchema)]
    pub struct PluginDeleted {
        #[serde(rename = "type")]
        job_type: String,
        deleted: bool,
    }

    /// A schedule deleted.
    #[derive(serde::Serialize, utoipa::ToSchema)]
    pub struct ScheduleDeleted {
        name: String,
        deleted: bool,
    }

    /// This host's workers.
    #[derive(serde::Serialize, utoipa::ToSchema)]
    pub struct Workers {
        paused: bool,
    }

    /// `GET /healthz`.
    #[derive(serde::Serialize, utoipa::ToSchema)]
    pub struct Health {
        /// `ok`.
        status: String,
    }
}

#[cfg(test)]
mod tests {
    /// Every route goes through `routes!` (so through its `#[utoipa::path]`):
    /// a plain route call in the API's modules would be a route without a
    /// specification.
    #[test]
    fn every_route_is_added_with_its_specification() {
        let sources = [
            ("mod.rs", include_str!("mod.rs")),
            ("jobs.rs", include_str!("jobs.rs")),
            ("admin.rs", include_str!("admin.rs")),
            ("dashboard.rs", include_str!("dashboard.rs")),
            ("health.rs", include_str!("health.rs")),
            ("metrics.rs", include_str!("metrics.rs")),
            ("openapi.rs", include_str!("openapi.rs")),
        ];
        let forbidden = [
            [".", "route("].concat(),
            [".", "route_service("].concat(),
            [".", "nest_service("].concat(),
        ];
        for (file, text) in sources {
            for call in &forbidden {
                assert!(
                    !text.contains(call.as_str()),
                    "api/{file} adds a route with {call}: add it with routes! and #[utoipa::path]"
                );
            }
        }
        let documented = sources
            .iter()
            .map(|(_, text)| text.matches("#[utoipa::path(").count())
            .sum::<usize>();
        assert!(documented > 24, "{documented} documented handlers");
    }
}

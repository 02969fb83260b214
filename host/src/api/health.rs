//! `GET /healthz`: the process is up and serving.

use axum::Json;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(healthz))
}

/// The process is up and serving.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "host",
    responses((status = 200, description = "Always, while the process serves", body = super::openapi::Health,
               example = json!({"status": "ok"})))
)]
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

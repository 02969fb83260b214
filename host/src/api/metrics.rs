//! `GET /metrics`: Prometheus text. Queue depth gauges are read from the
//! store at scrape time, so they are right on every host.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState};
use crate::job::JobState;
use crate::telemetry;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(render))
}

/// Prometheus metrics (text exposition format 0.0.4).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "host",
    responses(
        (status = 200, description = "Every metric, `jobhost_`-prefixed (see the README)",
         content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 503, description = "`store_unavailable`: the queue depths cannot be read", body = ApiError),
    )
)]
async fn render(State(app): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let Some(handle) = &app.prometheus else {
        return Err(ApiError::RouteNotFound);
    };
    for (job_type, counts) in app.store.counts_by_type().await? {
        for state in [
            JobState::Queued,
            JobState::Scheduled,
            JobState::Running,
            JobState::Dead,
        ] {
            metrics::gauge!(telemetry::QUEUE_DEPTH, "type" => job_type.clone(), "state" => state.as_str())
                .set(counts.get(state) as f64);
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    ))
}

//! The dashboard at `/`: one HTML page, a script and a stylesheet, compiled
//! into the binary (no build step, no dependency). The files are public;
//! everything they show comes from the admin API, with the token the page
//! asks for once and keeps in the browser session.

use axum::http::header;
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");

/// Only this host's own files and API; never framed.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(index))
        .routes(routes!(script))
        .routes(routes!(style))
}

/// The dashboard (it asks for the admin token once).
#[utoipa::path(get, path = "/", tag = "host",
    responses((status = 200, description = "The dashboard's page", content_type = "text/html", body = String)))]
async fn index() -> impl IntoResponse {
    file("text/html; charset=utf-8", INDEX)
}

/// The dashboard's script.
#[utoipa::path(get, path = "/dashboard/app.js", tag = "host",
    responses((status = 200, description = "JavaScript", content_type = "text/javascript", body = String)))]
async fn script() -> impl IntoResponse {
    file("text/javascript; charset=utf-8", SCRIPT)
}

/// The dashboard's stylesheet.
#[utoipa::path(get, path = "/dashboard/app.css", tag = "host",
    responses((status = 200, description = "CSS", content_type = "text/css", body = String)))]
async fn style() -> impl IntoResponse {
    file("text/css; charset=utf-8", STYLE)
}

fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

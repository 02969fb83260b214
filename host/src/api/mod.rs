//! The HTTP API. One module per resource, each exporting `router()`; they are
//! merged in [`app`]. Handlers validate input and call the store; every error
//! is an [`ApiError`], which alone decides status codes and renders the one
//! JSON error shape.

mod admin;
mod dashboard;
mod error;
mod health;
mod jobs;
mod metrics;
mod openapi;
mod schedules;

use std::sync::Arc;

use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

pub use error::ApiError;

use crate::clock::Clock;
use crate::dispatch::Dispatch;
use crate::plugins::{Loader, Registry};
use crate::store::Store;
use crate::worker::Control;

/// Most jobs in one `POST /jobs/{type}/batch`.
pub const MAX_BATCH: usize = 10_000;

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

/// What every handler may use: one shared [`App`], so that handing it to a
/// request (axum clones the state for each) is one reference count, not one
/// per field.
#[derive(Clone)]
pub struct AppState(Arc<App>);

impl From<App> for AppState {
    fn from(app: App) -> Self {
        AppState(Arc::new(app))
    }
}

impl std::ops::Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}

/// What the handlers share (through [`AppState`]).
pub struct App {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    /// Installs uploaded plugins into the plugins directory.
    pub loader: Arc<Loader>,
    /// In scale-out, where uploads are published for the other hosts.
    pub catalog: Option<Arc<dyn crate::plugins::Catalog>>,
    pub dispatch: Arc<Dispatch>,
    pub clock: Arc<dyn Clock>,
    pub workers: Arc<Control>,
    pub admin_token: Arc<str>,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    pub prometheus: Option<PrometheusHandle>,
}

/// A path parameter whose rejection (bad percent-encoding) is an
/// [`ApiError`] like every other error, not axum's plain-text 400.
pub struct PathParam(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(p)) => Ok(PathParam(p)),
            Err(e) => Err(ApiError::InvalidPath(e.body_text())),
        }
    }
}

/// The whole HTTP application, and its OpenAPI document at `/openapi.json`.
pub fn app(app: App) -> Router {
    let state = AppState::from(app);
    let (router, api) = openapi::router()
        .merge(dashboard::router())
        .merge(jobs::router())
        .nest("/admin", admin::router(state.clone()))
        .merge(metrics::router())
        .merge(health::router())
        .split_for_parts();
    openapi::serve(&api);
    router
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

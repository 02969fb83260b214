//! `/admin/schedules`: periodic jobs (cron), behind the admin token.
//!
//! - `GET /admin/schedules`: every schedule, by name, with its next and
//!   last tick and the job the last one made.
//! - `GET /admin/schedules/{name}`: one.
//! - `PUT /admin/schedules/{name}`: creates or replaces one; the body is
//!   `{"type", "cron", "timezone", "payload"}` (`timezone` defaults to UTC,
//!   `payload` to `{}`). `201` when created, `200` when replaced; a
//!   replacement with the same cron and time zone keeps its next tick.
//! - `DELETE /admin/schedules/{name}`: stops it; jobs it made stay.
//!
//! A schedule a plugin's manifest defines (source `plugin:<name>`) is
//! changed in the manifest: `PUT` and `DELETE` refuse it.
//!
//! How ticks fire, on every host at once, is [`crate::schedules`].

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::jobs::read_body;
use super::{ApiError, AppState, PathParam};
use crate::schedules::{Cadence, MAX_SCHEDULES};
use crate::store::Schedule;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(list))
        .routes(routes!(show, put, delete))
}

/// The body of a `PUT`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Definition {
    #[serde(rename = "type")]
    job_type: String,
    cron: String,
    timezone: Option<String>,
    payload: Option<Box<serde_json::value::RawValue>>,
}

/// A schedule as the API shows it (`Schedule` in the OpenAPI document).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Schedule)]
struct ScheduleView {
    name: String,
    /// The job type each tick enqueues.
    #[serde(rename = "type")]
    job_type: String,
    cron: String,
    /// IANA time zone the cron is read in.
    timezone: String,
    /// Each job's payload.
    payload: Value,
    /// `api`, or `plugin:<name>` for a manifest's `[[schedules]]`.
    source: String,
    /// The next tick; null if there is none.
    next_run_at: Option<String>,
    last_run_at: Option<String>,
    /// The job the last tick created.
    last_job_id: Option<i64>,
    created_at: String,
    updated_at: String,
}

/// Every schedule (`ScheduleList` in the OpenAPI document).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = ScheduleList)]
struct ScheduleList {
    schedules: Vec<ScheduleView>,
}

fn render(s: &Schedule) -> ScheduleView {
    ScheduleView {
        name: s.name.clone(),
        job_type: s.job_type.clone(),
        cron: s.cron.clone(),
        timezone: s.timezone.clone(),
        payload: serde_json::from_str::<Value>(&s.payload).unwrap_or(Value::Null),
        source: s.source.clone(),
        next_run_at: (s.next_run_at.as_micros() < i64::MAX).then(|| s.next_run_at.to_rfc3339()),
        last_run_at: s.last_run_at.map(|t| t.to_rfc3339()),
        last_job_id: s.last_job_id,
        created_at: s.created_at.to_rfc3339(),
        updated_at: s.updated_at.to_rfc3339(),
    }
}

/// A manifest's schedule is changed in its manifest: the API would be
/// undone the next time the plugin's schedules are written.
fn manifest_owned(s: &Schedule) -> Result<(), ApiError> {
    match s.source.strip_prefix("plugin:") {
        Some(plugin) => Err(ApiError::InvalidSchedule(format!(
            "{:?} is defined by the manifest of plugin {plugin:?}: change or remove it there",
            s.name
        ))),
        None => Ok(()),
    }
}

fn checked_name(name: &str) -> Result<(), ApiError> {
    if crate::plugins::valid_type_name(name) {
        Ok(())
    } else {
        Err(ApiError::InvalidSchedule(format!(
            "{name:?} is not a schedule name: 1 to 64 of a-z, 0-9, _ and -, starting with a letter"
        )))
    }
}

/// Every schedule, by name.
#[utoipa::path(
    get,
    path = "/schedules",
    tag = "schedules",
    security(("admin" = []), ("adminHeader" = [])),
    responses(
        (status = 200, description = "Every schedule, by name", body = ScheduleList,
         example = json!({"schedules": [{"name": "daily-digest", "type": "email_welcome", "cron": "0 9 * * *", "timezone": "Europe/Paris", "payload": {"userId": 1}, "source": "api", "nextRunAt": "2026-12-05T08:00:00.000000Z", "lastRunAt": null, "lastJobId": null, "createdAt": "2026-12-01T10:00:00.000000Z", "updatedAt": "2026-12-01T10:00:00.000000Z"}]})),
        (status = 401, description = "`unauthorized`", body = ApiError),
        (status = 503, description = "`store_unavailable`", body = ApiError),
    )
)]
async fn list(State(app): State<AppState>) -> Result<Json<ScheduleList>, ApiError> {
    let schedules = app.store.schedules().await?;
    Ok(Json(ScheduleList {
        schedules: schedules.iter().map(render).collect(),
    }))
}

/// One schedule.
#[utoipa::path(
    get,
    path = "/schedules/{name}",
    tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name")),
    security(("admin" = []), ("adminHeader" = [])),
    responses(
        (status = 200, description = "The schedule, as the listing shows it", body = ScheduleView),
        (status = 400, description = "`invalid_schedule` (a bad name)", body = ApiError),
        (status = 404, description = "`schedule_not_found`", body = ApiError),
        (status = 401, description = "`unauthorized`", body = ApiError),
        (status = 503, description = "`store_unavailable`", body = ApiError),
    )
)]
async fn show(
    State(app): State<AppState>,
    PathParam(name): PathParam,
) -> Result<Json<ScheduleView>, ApiError> {
    checked_name(&name)?;
    let schedules = app.store.schedules().await?;
    let found = schedules
        .iter()
        .find(|s| s.name == name)
        .ok_or(ApiError::ScheduleNotFound(name))?;
    Ok(Json(render(found)))
}

/// Creates or replaces a schedule.
///
/// At every tick of `cron` in `timezone`, one job of `type` with `payload`
/// is enqueued, however many hosts run.
#[utoipa::path(
    put,
    path = "/schedules/{name}",
    tag = "schedules",
    params(("name" = String, Path, description = "1 to 64 of a-z, 0-9, _ and -, starting with a letter")),
    request_body(content = Object, description = "`type` (a loaded job type), `cron` (five fields, `minute hour day month weekday`, or six with seconds first; `@hourly`, `@daily`, ...), `timezone` (IANA, default `UTC`), `payload` (any JSON, default `{}`)", content_type = "application/json",
        example = json!({"type": "email_welcome", "cron": "0 9 * * MON-FRI", "timezone": "Europe/Paris", "payload": {"userId": 1}})),
    security(("admin" = []), ("adminHeader" = [])),
    responses(
        (status = 201, description = "Created: the schedule", body = ScheduleView),
        (status = 200, description = "Replaced: the schedule (its next tick kept if its cron and time zone are unchanged)", body = ScheduleView),
        (status = 400, description = "`invalid_schedule`", body = ApiError),
        (status = 404, description = "`unknown_job_type`", body = ApiError),
        (status = 413, description = "`payload_too_large`", body = ApiError),
        (status = 401, description = "`unauthorized`", body = ApiError),
        (status = 503, description = "`store_unavailable`, `unavailable`", body = ApiError),
    )
)]
async fn put(
    State(app): State<AppState>,
    PathParam(name): PathParam,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ScheduleView>), ApiError> {
    checked_name(&name)?;
    let bytes = read_body(body, &headers, app.body_limit).await?;
    let def: Definition = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::InvalidSchedule(format!(
            "the body is {{\"type\", \"cron\", \"timezone\", \"payload\"}}: {e}"
        ))
    })?;
    if app.registry.handler(&def.job_type).is_none() {
        return Err(ApiError::UnknownJobType {
            name: def.job_type,
            loaded: app.registry.types(),
        });
    }
    let timezone = def.timezone.unwrap_or_else(|| "UTC".to_owned());
    let cadence = Cadence::parse(&def.cron, &timezone).map_err(ApiError::InvalidSchedule)?;
    let now = app.clock.now();
    let next_run_at = cadence.next_after(now).ok_or_else(|| {
        ApiError::InvalidSchedule(format!("{:?} has no tick from now on", def.cron))
    })?;
    let existing = app.store.schedules().await?;
    if let Some(s) = existing.iter().find(|s| s.name == name) {
        manifest_owned(s)?;
    }
    if existing.len() >= MAX_SCHEDULES && !existing.iter().any(|s| s.name == name) {
        return Err(ApiError::InvalidSchedule(format!(
            "there are {MAX_SCHEDULES} schedules already, the most a store holds"
        )));
    }
    let schedule = Schedule {
        name: name.clone(),
        job_type: def.job_type,
        cron: def.cron.trim().to_owned(),
        timezone,
        payload: def
            .payload
            .map_or_else(|| "{}".to_owned(), |p| p.get().to_owned()),
        source: "api".to_owned(),
        next_run_at,
        last_run_at: None,
        last_job_id: None,
        created_at: now,
        updated_at: now,
    };
    let created = app.store.schedule_put(&schedule).await?;
    let stored = app
        .store
        .schedules()
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or(schedule);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(render(&stored))))
}

/// Deletes a schedule; the jobs it made stay.
#[utoipa::path(
    delete,
    path = "/schedules/{name}",
    tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name")),
    security(("admin" = []), ("adminHeader" = [])),
    responses(
        (status = 200, description = "Deleted", body = super::openapi::ScheduleDeleted, example = json!({"name": "daily-digest", "deleted": true})),
        (status = 400, description = "`invalid_schedule`: a bad name, or a schedule a plugin manifest defines", body = ApiError),
        (status = 404, description = "`schedule_not_found`", body = ApiError),
        (status = 401, description = "`unauthorized`", body = ApiError),
        (status = 503, description = "`store_unavailable`, `unavailable`", body = ApiError),
    )
)]
async fn delete(
    State(app): State<AppState>,
    PathParam(name): PathParam,
) -> Result<Json<Value>, ApiError> {
    checked_name(&name)?;
    let schedules = app.store.schedules().await?;
    if let Some(s) = schedules.iter().find(|s| s.name == name) {
        manifest_owned(s)?;
    }
    if !app.store.schedule_delete(&name).await? {
        return Err(ApiError::ScheduleNotFound(name));
    }
    Ok(Json(json!({ "name": name, "deleted": true })))
}

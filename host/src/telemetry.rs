//! Metrics: the names jobhost exports and the Prometheus recorder.
//!
//! Roles record through the `metrics` facade with these names; nothing is
//! threaded through their signatures. Per-type handles ([`TypeMetrics`]) live
//! with each loaded plugin. Every name starts with `jobhost_`. Install the
//! recorder ([`prometheus`]) before loading plugins: handles taken earlier
//! record nothing.

use std::sync::OnceLock;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const JOBS_ENQUEUED: &str = "jobhost_jobs_enqueued_total";
pub const ATTEMPTS_STARTED: &str = "jobhost_attempts_started_total";
pub const JOBS_SUCCEEDED: &str = "jobhost_jobs_succeeded_total";
pub const JOBS_RETRIED: &str = "jobhost_jobs_retried_total";
pub const JOBS_DEAD: &str = "jobhost_jobs_dead_total";
/// Attempts stopped before they ended because their job was cancelled
/// while running (or their lease was lost), per type.
pub const ATTEMPTS_INTERRUPTED: &str = "jobhost_attempts_interrupted_total";
/// Claim rounds held back because every lease the host may hold was taken
/// while slots were free: outcomes waiting for the store to record them.
pub const CLAIMS_HELD_BACK: &str = "jobhost_claims_held_back_total";
/// Jobs created by schedules (cron), per schedule.
pub const SCHEDULE_JOBS: &str = "jobhost_schedule_jobs_total";
/// Finished jobs deleted by retention (the pruner or an operator), per state.
pub const JOBS_PRUNED: &str = "jobhost_jobs_pruned_total";
pub const ATTEMPT_DURATION: &str = "jobhost_attempt_duration_seconds";
pub const ATTEMPT_FUEL: &str = "jobhost_attempt_fuel_consumed";
pub const QUEUE_LATENCY: &str = "jobhost_queue_latency_seconds";
/// One claim in the store's writer (up to `--claim-batch` jobs of one type):
/// the lease statement and its events' insert.
pub const CLAIM_DURATION: &str = "jobhost_claim_duration_seconds";
/// One statement in the store's writer recording a batch of completions.
pub const STORE_COMPLETE_DURATION: &str = "jobhost_store_complete_duration_seconds";
/// One commit of the store's writer: the events, then the fsync.
pub const STORE_COMMIT_DURATION: &str = "jobhost_store_commit_duration_seconds";
/// Transactions the store's writer committed (at `--sqlite-sync full`, one
/// fsync each), however many commands each carried.
pub const STORE_TRANSACTIONS: &str = "jobhost_store_transactions_total";
/// The store's writer copying the rest of the WAL into the database and
/// rewinding it (when it grew past its limit under sustained writes).
pub const STORE_WAL_RESTART_DURATION: &str = "jobhost_store_wal_restart_duration_seconds";
/// Recording one attempt's outcome.
pub const COMPLETE_DURATION: &str = "jobhost_complete_duration_seconds";
pub const QUEUE_DEPTH: &str = "jobhost_queue_depth";
/// Redis Streams dispatch (scale-out with `--redis-url`).
pub const REDIS_UP: &str = "jobhost_redis_up";
pub const REDIS_ERRORS: &str = "jobhost_redis_errors_total";
pub const REDIS_HINTS_DROPPED: &str = "jobhost_redis_hints_dropped_total";
pub const REDIS_HINTS_READ: &str = "jobhost_redis_hints_read_total";
/// Plugin versions installed (at start, by the watcher or by an upload), per type.
pub const PLUGIN_LOADS: &str = "jobhost_plugin_loads_total";
/// Plugin files that did not load (the version before keeps serving), per type.
pub const PLUGIN_LOAD_ERRORS: &str = "jobhost_plugin_load_errors_total";
/// Whether a type's latest plugin files loaded (1) or failed (0).
pub const PLUGIN_OK: &str = "jobhost_plugin_ok";
/// One call of a plugin's key-value store, per operation (as the plugin
/// sees it: checks, the store's read or committed write).
pub const PLUGIN_KV_DURATION: &str = "jobhost_plugin_kv_duration_seconds";
/// Key-value writes answered to a plugin that the embedded store then
/// failed to write (each is also logged as an error).
pub const PLUGIN_KV_WRITE_ERRORS: &str = "jobhost_plugin_kv_write_errors_total";

const SECONDS_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];
const FUEL_BUCKETS: &[f64] = &[1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10];
/// Finer at the bottom: a key-value call is tens of microseconds.
const KV_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.01,
    0.1, 1.0,
];

/// The metric handles of one job type, registered once (when its plugin
/// loads) so the hot path neither formats labels nor looks them up.
#[derive(Debug, Clone)]
pub struct TypeMetrics {
    pub enqueued: Counter,
    pub started: Counter,
    pub succeeded: Counter,
    pub retried: Counter,
    pub dead: Counter,
    pub interrupted: Counter,
    pub attempt_duration: Histogram,
    pub attempt_fuel: Histogram,
    pub queue_latency: Histogram,
    pub complete_duration: Histogram,
}

impl TypeMetrics {
    /// Handles for `job_type` on the recorder installed now (no-ops if none).
    pub fn new(job_type: &str) -> TypeMetrics {
        let labels = [("type", job_type.to_owned())];
        TypeMetrics {
            enqueued: metrics::counter!(JOBS_ENQUEUED, &labels),
            started: metrics::counter!(ATTEMPTS_STARTED, &labels),
            succeeded: metrics::counter!(JOBS_SUCCEEDED, &labels),
            retried: metrics::counter!(JOBS_RETRIED, &labels),
            dead: metrics::counter!(JOBS_DEAD, &labels),
            interrupted: metrics::counter!(ATTEMPTS_INTERRUPTED, &labels),
            attempt_duration: metrics::histogram!(ATTEMPT_DURATION, &labels),
            attempt_fuel: metrics::histogram!(ATTEMPT_FUEL, &labels),
            queue_latency: metrics::histogram!(QUEUE_LATENCY, &labels),
            complete_duration: metrics::histogram!(COMPLETE_DURATION, &labels),
        }
    }
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
pub fn prometheus() -> Result<PrometheusHandle, String> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(ATTEMPT_FUEL.into()), FUEL_BUCKETS))
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(PLUGIN_KV_DURATION.into()), KV_BUCKETS)
        })
        .map_err(|e| e.to_string())?
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_ok() {
        describe();
        let _ = HANDLE.set(handle);
    }
    HANDLE
        .get()
        .cloned()
        .ok_or_else(|| "another metrics recorder is already installed".to_owned())
}

/// How often [`upkeep`] folds the histograms' new samples in.
const UPKEEP_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds the samples recorded since the last time into the histograms,
/// every few seconds, until `stop`. The recorder keeps each sample until
/// then (a scrape of `/metrics` does it too): without this, a host that
/// nobody scrapes kept about 90 bytes per job it ran, for as long as it ran
/// (331 MiB after the 3.3 million jobs of the batch scenario).
pub async fn upkeep(handle: PrometheusHandle, stop: tokio_util::sync::CancellationToken) {
    let mut every = tokio::time::interval(UPKEEP_PERIOD);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => handle.run_upkeep(),
        }
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(JOBS_ENQUEUED, "Jobs accepted, per type");
    describe_counter!(
        CLAIMS_HELD_BACK,
        "Claim rounds held back with slots free: every lease the host may hold was waiting for its outcome to be recorded (the store is slow to commit)"
    );
    describe_gauge!(
        REDIS_UP,
        "1 while Redis answers, 0 after a failed Redis command (hints fall back to polling)"
    );
    describe_counter!(REDIS_ERRORS, "Failed Redis commands, per command");
    describe_counter!(PLUGIN_LOADS, "Plugin versions installed, per type");
    describe_counter!(
        PLUGIN_LOAD_ERRORS,
        "Plugin files that failed to load (the previous version keeps serving), per type"
    );
    describe_gauge!(
        PLUGIN_OK,
        "1 if the type's latest plugin files loaded, 0 if they failed"
    );
    describe_counter!(
        REDIS_HINTS_DROPPED,
        "Ready and dead-letter entries not published to Redis (unreachable, or the queue full)"
    );
    describe_counter!(
        REDIS_HINTS_READ,
        "Hints read from Redis streams (new or taken over)"
    );
    describe_counter!(ATTEMPTS_STARTED, "Attempts started, per type");
    describe_counter!(JOBS_SUCCEEDED, "Jobs that succeeded, per type");
    describe_counter!(
        JOBS_RETRIED,
        "Failed attempts scheduled for a retry, per type"
    );
    describe_counter!(JOBS_DEAD, "Jobs moved to the dead-letter queue, per type");
    describe_counter!(
        JOBS_PRUNED,
        "Finished jobs deleted by retention (the pruner or DELETE /admin/jobs), per state"
    );
    describe_histogram!(
        ATTEMPT_DURATION,
        Unit::Seconds,
        "Time to instantiate and run one attempt"
    );
    describe_histogram!(ATTEMPT_FUEL, "Wasm fuel consumed by one attempt");
    describe_histogram!(
        PLUGIN_KV_DURATION,
        Unit::Seconds,
        "One call of a plugin's key-value store, per operation"
    );
    describe_counter!(
        PLUGIN_KV_WRITE_ERRORS,
        "Key-value writes answered to a plugin that the embedded store then failed to write"
    );
    describe_counter!(
        STORE_TRANSACTIONS,
        "Transactions committed by the store's writer (one fsync each at full durability)"
    );
    describe_histogram!(
        STORE_WAL_RESTART_DURATION,
        Unit::Seconds,
        "The store's writer folding a WAL grown past its limit into the database and starting it over"
    );
    describe_histogram!(QUEUE_LATENCY, Unit::Seconds, "From due to attempt start");
    describe_gauge!(
        QUEUE_DEPTH,
        "Jobs per type and state, read from the store at scrape time"
    );
}

#[cfg(test)]
mod tests {
    /// The files under `deploy/` (Grafana dashboard, Prometheus alert rules)
    /// name only metrics this module exports, and the dashboard is JSON.
    #[test]
    fn the_deploy_files_name_only_exported_metrics() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let here = include_str!("telemetry.rs");
        let dashboard = std::fs::read_to_string(root.join("deploy/grafana/jobhost.json")).unwrap();
        let alerts = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
        assert!(parsed["panels"].as_array().is_some_and(|p| p.len() > 5));
        let mut named = 0;
        for text in [&dashboard, &alerts] {
            for (at, _) in text.match_indices("jobhost_") {
                let name: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                let metric = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(&name);
                assert!(
                    here.contains(&format!("\"{metric}\"")),
                    "{metric} is not a metric jobhost exports"
                );
                named += 1;
            }
        }
        assert!(named > 15, "the files name metrics ({named})");
    }
}

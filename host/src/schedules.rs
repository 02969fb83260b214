//! Schedules (cron): periodic jobs.
//!
//! A schedule names a job type, a payload, a cron pattern and a time zone
//! ([`crate::store::Schedule`]); it is defined through the admin API
//! (`/admin/schedules`) or in a plugin's manifest (`[[schedules]]`, kept in
//! the store by [`follow_manifests`]), and kept in the store, so every host
//! sees it.
//!
//! Every host runs a [`Scheduler`]. Once a second it reads the schedules and,
//! for each one whose next tick has come, enqueues one job under the
//! idempotency key `schedule:<name>:<tick>`, then moves the schedule past
//! that tick with a conditional UPDATE. Two hosts firing the same tick
//! create one job (the key) and move the schedule once (the condition); a
//! host that dies between the two leaves the tick for the next pass, whose
//! enqueue finds the job already there.
//!
//! **Missed ticks.** After downtime (no host running), a schedule fires
//! once, for the latest tick that came while nobody looked, and skips the
//! ones before it, as cron does; then it keeps its cadence. A job per
//! missed tick would flood the queue after a long outage with work that is
//! already stale.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, Timestamp};
use crate::dispatch::Dispatch;
use crate::plugins::{Manifest, Registry};
use crate::store::{Advance, Enqueued, NewJob, Schedule, Store, StoreResult};
use crate::telemetry;

/// How often a host's scheduler looks for due schedules.
pub const SCHEDULER_INTERVAL: Duration = Duration::from_secs(1);

/// How far into a second a pass looks, so clocks a little apart between
/// hosts still see the tick come.
const PAST_THE_SECOND: Duration = Duration::from_millis(20);

/// Most schedules a store holds (each host reads them all every second).
pub const MAX_SCHEDULES: usize = 10_000;

/// A schedule's cron pattern in its time zone, checked.
#[derive(Debug, Clone)]
pub struct Cadence {
    cron: croner::Cron,
    tz: chrono_tz::Tz,
}

impl Cadence {
    /// Parses a pattern (five fields, or six with seconds first; `@daily`
    /// and the like) and an IANA time zone name.
    pub fn parse(cron: &str, timezone: &str) -> Result<Cadence, String> {
        let tz = chrono_tz::Tz::from_str(timezone).map_err(|_| {
            format!("{timezone:?} is not an IANA time zone name (such as UTC or Europe/Paris)")
        })?;
        let fields = cron.split_whitespace().count();
        if !(cron.trim_start().starts_with('@') || fields == 5 || fields == 6) {
            return Err(format!(
                "{cron:?} is not a cron pattern: five fields (minute hour day month weekday), or six with seconds first"
            ));
        }
        let cron = croner::Cron::from_str(cron)
            .map_err(|e| format!("{cron:?} is not a cron pattern: {e}"))?;
        Ok(Cadence { cron, tz })
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let local = whole_second(t)?.with_timezone(&self.tz);
        let next = self.cron.find_next_occurrence(&local, false).ok()?;
        Some(Timestamp(next.with_timezone(&Utc).timestamp_micros()))
    }

    /// The latest tick at or before `t`.
    pub fn latest_until(&self, t: Timestamp) -> Option<Timestamp> {
        let local = whole_second(t)?.with_timezone(&self.tz);
        let last = self.cron.find_previous_occurrence(&local, true).ok()?;
        Some(Timestamp(last.with_timezone(&Utc).timestamp_micros()))
    }
}

fn utc(t: Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(t.as_micros())
}

/// `t` cut to its whole second: ticks fall on whole seconds, whatever the
/// moment a host looks (croner keeps the fraction of the time it starts
/// from, and two hosts must name one tick alike).
fn whole_second(t: Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.as_micros().div_euclid(1_000_000), 0)
}

/// The idempotency key of a schedule's job for one tick.
pub fn tick_key(name: &str, tick: Timestamp) -> String {
    let at = utc(tick).map_or_else(
        || tick.as_micros().to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    );
    format!("schedule:{name}:{at}")
}

/// Which tick a due schedule fires now: the latest that has come, never one
/// before its `next_run_at` (ticks missed in between are skipped).
pub fn tick_to_fire(cadence: &Cadence, next_run_at: Timestamp, now: Timestamp) -> Timestamp {
    cadence
        .latest_until(now)
        .filter(|t| *t >= next_run_at)
        .unwrap_or(next_run_at)
}

/// Fires the schedules of every host's store (see the module's docs).
pub struct Scheduler {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub dispatch: Arc<Dispatch>,
    pub registry: Arc<Registry>,
}

impl Scheduler {
    /// Looks just after every whole second until `stop`: a pass that
    /// drifted past a second would skip a tick of a per-second pattern.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "could not read the schedules; trying again in a second");
            }
            let into_second = self.clock.now().as_micros().rem_euclid(1_000_000) as u64;
            let to_next = Duration::from_micros(1_000_000 - into_second) + PAST_THE_SECOND;
            tokio::select! {
                () = tokio::time::sleep(to_next.min(SCHEDULER_INTERVAL)) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// Fires every schedule whose tick has come. One that cannot be fired
    /// now is logged and left for the next pass; the others fire.
    pub async fn pass(&self) -> StoreResult<()> {
        let now = self.clock.now();
        for schedule in self.store.schedules().await? {
            if schedule.next_run_at > now {
                continue;
            }
            match Cadence::parse(&schedule.cron, &schedule.timezone) {
                Ok(cadence) => match self.fire(&schedule, &cadence, now).await {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(schedule = %schedule.name, error = %e, "could not fire the schedule; trying again at the next pass")
                    }
                },
                // Checked when it was put: only a store edited by hand.
                Err(e) => {
                    tracing::warn!(schedule = %schedule.name, error = %e, "schedule cannot fire")
                }
            }
        }
        Ok(())
    }

    /// Enqueues the schedule's job for the tick that has come (unless
    /// another host did), then moves it past that tick.
    async fn fire(&self, s: &Schedule, cadence: &Cadence, now: Timestamp) -> StoreResult<()> {
        let tick = tick_to_fire(cadence, s.next_run_at, now);
        let handler = self.registry.handler(&s.job_type);
        let max_attempts = handler.as_ref().map_or_else(
            || Manifest::default().max_attempts,
            |h| h.plugin.manifest.max_attempts,
        );
        let job = NewJob {
            job_type: s.job_type.clone(),
            payload: s.payload.clone(),
            idempotency_key: Some(tick_key(&s.name, tick)),
            max_attempts,
            run_at: tick,
            priority: 0,
            timeout_ms: None,
        };
        let (id, created) = match self.store.job_insert(job, now).await? {
            Enqueued::Created { id, .. } => {
                if let Some(h) = &handler {
                    h.metrics.enqueued.increment(1);
                }
                metrics::counter!(telemetry::SCHEDULE_JOBS, "schedule" => s.name.clone())
                    .increment(1);
                self.dispatch.ready(&s.job_type, [id]);
                (id, true)
            }
            // Another host fired this tick first.
            Enqueued::Existing { id, .. } => (id, false),
        };
        // A pattern with no tick left (a year gone by) is never due again.
        let next = cadence.next_after(now).unwrap_or(Timestamp(i64::MAX));
        let advance = Advance {
            name: s.name.clone(),
            from: s.next_run_at,
            next,
            fired: tick,
            job: id,
            now,
        };
        self.store.schedule_advance(&advance).await?;
        if created {
            tracing::info!(schedule = %s.name, job = id, tick = %tick.to_rfc3339(), "schedule fired");
        }
        Ok(())
    }
}

/// How often manifest schedules are written again without a plugin change
/// (writing only what differs): one deleted through the API comes back.
const MANIFEST_RESYNC: Duration = Duration::from_secs(60);

/// Keeps the schedules plugin manifests define (`[[schedules]]`) in the
/// store, in step with the plugins loaded here: at start, after every
/// change of plugins, and every minute (every 5 s after a failure), until
/// `stop`.
pub async fn follow_manifests(
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    stop: CancellationToken,
) {
    let mut changes = registry.subscribe();
    loop {
        changes.borrow_and_update();
        let again = match sync_manifests(&registry, store.as_ref(), clock.now()).await {
            Ok(()) => MANIFEST_RESYNC,
            Err(e) => {
                tracing::warn!(error = %e, "could not store the schedules of the plugin manifests; trying again in 5 s");
                Duration::from_secs(5)
            }
        };
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(again) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// For every loaded plugin: writes each schedule of its manifest that the
/// store does not hold as it is (source `plugin:<name>`), and deletes the
/// ones of that source its manifest no longer has. A plugin that is not
/// loaded here keeps its schedules (another host may serve it; delete them
/// with the API).
pub async fn sync_manifests(
    registry: &Registry,
    store: &dyn Store,
    now: Timestamp,
) -> StoreResult<()> {
    let stored = store.schedules().await?;
    for plugin in registry.all() {
        let source = format!("plugin:{}", plugin.name);
        let wanted = &plugin.manifest.schedules;
        for m in wanted {
            let job_type = m
                .job_type
                .clone()
                .or_else(|| plugin.job_types.first().cloned())
                .unwrap_or_else(|| plugin.name.clone());
            let same = stored.iter().any(|s| {
                s.name == m.name
                    && s.source == source
                    && s.job_type == job_type
                    && s.cron == m.cron
                    && s.timezone == m.timezone
                    && s.payload == m.payload
            });
            if same {
                continue;
            }
            // Checked when the manifest was parsed.
            let Some(next_run_at) = Cadence::parse(&m.cron, &m.timezone)
                .ok()
                .and_then(|c| c.next_after(now))
            else {
                continue;
            };
            let schedule = Schedule {
                name: m.name.clone(),
                job_type,
                cron: m.cron.clone(),
                timezone: m.timezone.clone(),
                payload: m.payload.clone(),
                source: source.clone(),
                next_run_at,
                last_run_at: None,
                last_job_id: None,
                created_at: now,
                updated_at: now,
            };
            store.schedule_put(&schedule).await?;
            tracing::info!(schedule = %m.name, plugin = %plugin.name, cron = %m.cron, "schedule from the plugin's manifest stored");
        }
        for gone in stored
            .iter()
            .filter(|s| s.source == source && !wanted.iter().any(|m| m.name == s.name))
        {
            store.schedule_delete(&gone.name).await?;
            tracing::info!(schedule = %gone.name, plugin = %plugin.name, "schedule no longer in the plugin's manifest: deleted");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> Timestamp {
        let t = DateTime::parse_from_rfc3339(rfc3339).unwrap();
        Timestamp(t.with_timezone(&Utc).timestamp_micros())
    }

    #[test]
    fn ticks_follow_the_pattern_in_its_time_zone() {
        let daily = Cadence::parse("0 9 * * *", "America/New_York").unwrap();
        // 09:00 in New York is 14:00 UTC in winter, 13:00 in summer.
        assert_eq!(
            daily.next_after(at("2026-12-04T12:00:00Z")),
            Some(at("2026-12-04T14:00:00Z"))
        );
        assert_eq!(
            daily.next_after(at("2026-07-01T14:00:00Z")),
            Some(at("2026-07-02T13:00:00Z"))
        );
        assert_eq!(
            daily.latest_until(at("2026-12-04T14:00:00Z")),
            Some(at("2026-12-04T14:00:00Z"))
        );
        let seconds = Cadence::parse("*/10 * * * * *", "UTC").unwrap();
        assert_eq!(
            seconds.next_after(at("2026-12-04T12:00:00Z")),
            Some(at("2026-12-04T12:00:10Z"))
        );
        // Ticks are whole seconds, whenever one looks: two hosts looking at
        // different moments of a second name the same tick.
        let every = Cadence::parse("* * * * * *", "UTC").unwrap();
        for moment in ["2026-12-04T12:00:00.000001Z", "2026-12-04T12:00:00.7Z"] {
            assert_eq!(
                every.next_after(at(moment)),
                Some(at("2026-12-04T12:00:01Z"))
            );
            assert_eq!(
                every.latest_until(at(moment)),
                Some(at("2026-12-04T12:00:00Z"))
            );
        }
        assert_eq!(
            daily.next_after(at("2026-12-04T12:00:00.123456Z")),
            Some(at("2026-12-04T14:00:00Z"))
        );
        let hourly = Cadence::parse("@hourly", "UTC").unwrap();
        assert_eq!(
            hourly.next_after(at("2026-12-04T12:30:00Z")),
            Some(at("2026-12-04T13:00:00Z"))
        );
    }

    /// What the known limit in ARCHITECTURE.md says: on the day clocks go
    /// back, a pattern fires in the first pass of the repeated hour only.
    #[test]
    fn when_clocks_go_back_the_repeated_hour_fires_once() {
        // New York, 2026-11-01: 01:00-01:59 is lived twice, at 05:xxZ (EDT)
        // and at 06:xxZ (EST).
        let every_ten = Cadence::parse("*/10 * * * *", "America/New_York").unwrap();
        assert_eq!(
            every_ten.next_after(at("2026-11-01T05:40:00Z")),
            Some(at("2026-11-01T05:50:00Z"))
        );
        let after_first_pass = every_ten.next_after(at("2026-11-01T05:50:00Z")).unwrap();
        assert_eq!(after_first_pass, at("2026-11-01T07:00:00Z"));
        // A daily tick in that hour fires once.
        let daily = Cadence::parse("30 1 * * *", "America/New_York").unwrap();
        assert_eq!(
            daily.next_after(at("2026-11-01T00:00:00Z")),
            Some(at("2026-11-01T05:30:00Z"))
        );
        assert_eq!(
            daily.next_after(at("2026-11-01T05:30:00Z")),
            Some(at("2026-11-02T06:30:00Z"))
        );
    }

    #[test]
    fn after_downtime_only_the_latest_missed_tick_fires() {
        let hourly = Cadence::parse("0 * * * *", "UTC").unwrap();
        let due = at("2026-12-04T09:00:00Z");
        // Back at 12:30: the 09:00, 10:00 and 11:00 ticks are skipped.
        assert_eq!(
            tick_to_fire(&hourly, due, at("2026-12-04T12:30:00Z")),
            at("2026-12-04T12:00:00Z")
        );
        // On time: the tick that is due.
        assert_eq!(tick_to_fire(&hourly, due, due), due);
    }

    #[test]
    fn bad_patterns_and_zones_are_refused_with_the_reason() {
        for (cron, tz, says) in [
            ("0 9 * *", "UTC", "five fields"),
            ("0 25 * * *", "UTC", "not a cron pattern"),
            ("every day", "UTC", "not a cron pattern"),
            ("0 9 * * *", "Mars/Olympus", "IANA time zone"),
        ] {
            let err = Cadence::parse(cron, tz).unwrap_err();
            assert!(err.contains(says), "{cron} {tz}: {err}");
        }
    }

    #[test]
    fn a_ticks_key_names_the_schedule_and_the_tick() {
        assert_eq!(
            tick_key("nightly", at("2026-12-04T09:00:00Z")),
            "schedule:nightly:2026-12-04T09:00:00Z"
        );
    }
}

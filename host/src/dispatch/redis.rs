//! Redis Streams dispatch: hints between hosts, each delivered to one host.
//!
//! Keys, under a prefix (`--redis-prefix`, default `jobhost`):
//! - `{prefix}:stream:{type}`: one stream per job type, an entry per job
//!   made ready (`job` = its id), added after the write that readied it has
//!   committed;
//! - `{prefix}:dlq:{type}`: a mirror of the jobs of that type that went to
//!   the dead-letter queue (`job`, `error`), for whoever watches it.
//!
//! Every stream has one consumer group, `workers`, and each host is one
//! consumer in it (host name, process id and a random suffix). A host reads
//! the streams of the types it has plugins for (`XREADGROUP ... BLOCK`),
//! hints its worker, and acknowledges the entries (`XACK`) once a claim that
//! started after it read them has finished. Entries a host read and never
//! acknowledged (it died) are taken over by another after
//! [`TAKEOVER_IDLE`] (`XAUTOCLAIM`).
//!
//! Redis carries hints only (invariant 1). Adding an entry never delays or
//! fails a request: entries go through a bounded channel to a publisher task
//! that pipelines them, and are dropped (counted) if Redis is unreachable.
//! Nothing is lost with them: every worker also claims from the store every
//! poll interval, and PostgreSQL's NOTIFY still wakes every host, so a
//! flushed, restarted or unreachable Redis delays jobs by at most one poll.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Dispatch;
use crate::job::JobId;
use crate::plugins::Registry;
use crate::telemetry;

/// The consumer group every host reads through.
const GROUP: &str = "workers";
/// How long a read waits for entries (also how often the reader looks up).
const BLOCK: Duration = Duration::from_millis(1_000);
/// Entries read at most per read.
const READ_COUNT: usize = 512;
/// By default, an entry read but not acknowledged for this long belongs to
/// a host presumed dead (or paused): another host takes it over.
pub const TAKEOVER_IDLE: Duration = Duration::from_secs(30);
/// How often a host looks for entries to take over.
const TAKEOVER_EVERY: Duration = Duration::from_secs(5);
/// Each stream keeps about this many entries (older ones are trimmed).
const STREAM_MAXLEN: usize = 100_000;
/// How long the publisher keeps publishing after it is told to stop.
const DRAIN: Duration = Duration::from_secs(2);
/// How often a host that has not acted on its hints yet looks again.
const UNACKED_RECHECK: Duration = Duration::from_millis(50);
/// Hints waiting for the publisher before new ones are dropped.
const PUBLISH_QUEUE: usize = 65_536;

/// What a host publishes.
enum Publish {
    Ready {
        job_type: String,
        ids: Vec<JobId>,
    },
    Dead {
        job_type: String,
        id: JobId,
        error: String,
    },
}

/// One stream's state, for `GET /admin/metrics/queue` (`Stream` in the
/// OpenAPI document).
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Stream)]
pub struct StreamStats {
    /// Entries in the stream (trimmed to about 100,000).
    pub length: u64,
    /// Hints read by a host and not yet acknowledged.
    pub pending: u64,
    /// Hosts reading it.
    pub consumers: u64,
}

/// This host's handle on the Redis fabric.
pub struct Redis {
    conn: ConnectionManager,
    prefix: String,
    consumer: String,
    /// How long an entry stays with a host that does not acknowledge it.
    takeover_idle: Duration,
    publish: mpsc::Sender<Publish>,
    publish_rx: std::sync::Mutex<Option<mpsc::Receiver<Publish>>>,
    /// The reader's connection: its reads block, so it has its own.
    reader: ConnectionManager,
}

impl Redis {
    /// Prepares the connections; they connect on first use, and reconnect
    /// by themselves, so a host starts and runs while Redis is down (only a
    /// malformed URL is an error here).
    pub fn connect(
        url: &str,
        prefix: &str,
        consumer: String,
        takeover_idle: Duration,
    ) -> anyhow::Result<Redis> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let conn = client.get_connection_manager_lazy(config.clone())?;
        let reader = client.get_connection_manager_lazy(
            config.set_response_timeout(Some(BLOCK + Duration::from_secs(2))),
        )?;
        let (publish, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        Ok(Redis {
            conn,
            prefix: prefix.to_owned(),
            consumer,
            takeover_idle,
            publish,
            publish_rx: std::sync::Mutex::new(Some(publish_rx)),
            reader,
        })
    }

    fn stream(&self, job_type: &str) -> String {
        format!("{}:stream:{job_type}", self.prefix)
    }

    fn dlq(&self, job_type: &str) -> String {
        format!("{}:dlq:{job_type}", self.prefix)
    }

    /// Jobs of `job_type` were made ready (committed). Never waits.
    pub fn ready(&self, job_type: &str, ids: Vec<JobId>) {
        self.send(Publish::Ready {
            job_type: job_type.to_owned(),
            ids,
        });
    }

    /// A job went to the dead-letter queue (committed). Never waits.
    pub fn dead(&self, job_type: &str, id: JobId, error: &str) {
        self.send(Publish::Dead {
            job_type: job_type.to_owned(),
            id,
            error: error.to_owned(),
        });
    }

    fn send(&self, what: Publish) {
        if self.publish.try_send(what).is_err() {
            metrics::counter!(telemetry::REDIS_HINTS_DROPPED).increment(1);
        }
    }

    /// Publishes what [`Redis::ready`] and [`Redis::dead`] queued, pipelined,
    /// until `stop`; then what is still queued, for at most [`DRAIN`] (an
    /// unreachable Redis must not hold up shutdown: the rest are dropped,
    /// and counted).
    pub async fn publisher(self: Arc<Self>, stop: CancellationToken) {
        let Some(mut rx) = self.publish_rx.lock().expect("publisher lock").take() else {
            return; // one publisher per host
        };
        let mut conn = self.conn.clone();
        let mut batch = Vec::with_capacity(256);
        let mut deadline: Option<Instant> = None;
        loop {
            let got = tokio::select! {
                got = rx.recv_many(&mut batch, 256) => got,
                () = stop.cancelled(), if !rx.is_closed() => {
                    rx.close();
                    deadline = Some(Instant::now() + DRAIN);
                    continue;
                }
            };
            if got == 0 {
                return;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                let mut dropped = batch.len() as u64;
                batch.clear();
                while rx.try_recv().is_ok() {
                    dropped += 1;
                }
                metrics::counter!(telemetry::REDIS_HINTS_DROPPED).increment(dropped);
                return;
            }
            let mut pipe = redis::pipe();
            let mut entries = 0u64;
            for what in batch.drain(..) {
                match what {
                    Publish::Ready { job_type, ids } => {
                        let stream = self.stream(&job_type);
                        for id in ids {
                            xadd(&mut pipe, &stream, &[("job", id.to_string())]);
                            entries += 1;
                        }
                    }
                    Publish::Dead {
                        job_type,
                        id,
                        error,
                    } => {
                        let fields = [("job", id.to_string()), ("error", error)];
                        xadd(&mut pipe, &self.dlq(&job_type), &fields);
                        entries += 1;
                    }
                }
            }
            if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                failed("XADD", &e);
                metrics::counter!(telemetry::REDIS_HINTS_DROPPED).increment(entries);
            } else {
                up();
            }
        }
    }

    /// Reads the streams of the types `registry` has plugins for (looked at
    /// again when a type is added or removed) until `stop`, hinting
    /// `dispatch` and acknowledging what was read once a claim begun after
    /// has settled.
    pub async fn reader(
        self: Arc<Self>,
        registry: Arc<Registry>,
        dispatch: Arc<Dispatch>,
        stop: CancellationToken,
    ) {
        let mut generation = registry.generation();
        let mut streams: Vec<String> = registry.types().iter().map(|t| self.stream(t)).collect();
        let mut conn = self.reader.clone();
        // Read but not yet acknowledged: (claims started when read, stream, entry id).
        let mut unacked: Vec<(u64, String, String)> = Vec::new();
        let mut groups_ready = false;
        let mut last_takeover: Option<Instant> = None;
        while !stop.is_cancelled() {
            // What a claim begun after the read has settled is acted on.
            let settled = dispatch.claims_settled();
            let (done, keep): (Vec<_>, Vec<_>) =
                unacked.into_iter().partition(|(at, _, _)| settled > *at);
            unacked = keep;
            if let Err(e) = self.ack(&mut conn, done).await {
                failed("XACK", &e);
            }
            if !unacked.is_empty() {
                // Not acted on yet (the worker is paused, or every slot is
                // busy): read nothing more, so new hints go to other hosts,
                // and these too once they have been idle long enough.
                tokio::select! {
                    () = tokio::time::sleep(UNACKED_RECHECK) => continue,
                    () = stop.cancelled() => break,
                }
            }
            if registry.generation() != generation {
                // A plugin was added or removed (hot reload): read its stream
                // too, or no longer.
                generation = registry.generation();
                streams = registry.types().iter().map(|t| self.stream(t)).collect();
                groups_ready = false;
            }
            if streams.is_empty() {
                tokio::select! {
                    () = tokio::time::sleep(BLOCK) => continue,
                    () = stop.cancelled() => break,
                }
            }
            if !groups_ready {
                match self.create_groups(&mut conn, &streams).await {
                    Ok(()) => groups_ready = true,
                    Err(e) => {
                        failed("XGROUP CREATE", &e);
                        pause(&stop).await;
                        continue;
                    }
                }
            }
            let mut read = Vec::new();
            let mut read_cmd = redis::cmd("XREADGROUP");
            read_cmd
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&streams)
                .arg(vec![">"; streams.len()]);
            let reply: redis::RedisResult<StreamReadReply> = tokio::select! {
                reply = read_cmd.query_async(&mut conn) => reply,
                () = stop.cancelled() => break,
            };
            match reply {
                Ok(reply) => {
                    up();
                    for key in reply.keys {
                        read.extend(key.ids.into_iter().map(|e| (key.key.clone(), e.id)));
                    }
                }
                Err(e) => {
                    // NOGROUP: the streams were flushed or trimmed away.
                    groups_ready = false;
                    failed("XREADGROUP", &e);
                    pause(&stop).await;
                }
            }
            if last_takeover.is_none_or(|at| at.elapsed() >= TAKEOVER_EVERY) {
                last_takeover = Some(Instant::now());
                match self.take_over(&mut conn, &streams).await {
                    Ok(taken) => read.extend(taken),
                    Err(e) => failed("XAUTOCLAIM", &e),
                }
            }
            if !read.is_empty() {
                // Counted after the read: only a claim that begins from here
                // on can have seen the jobs these entries announce.
                let started = dispatch.claims_started();
                metrics::counter!(telemetry::REDIS_HINTS_READ).increment(read.len() as u64);
                dispatch.hint();
                unacked.extend(read.into_iter().map(|(s, id)| (started, s, id)));
            }
        }
    }

    async fn create_groups(
        &self,
        conn: &mut ConnectionManager,
        streams: &[String],
    ) -> redis::RedisResult<()> {
        for stream in streams {
            // From the start of the stream: entries added while it had no
            // group (just after a flush) are read too.
            let created: redis::RedisResult<()> =
                conn.xgroup_create_mkstream(stream, GROUP, "0").await;
            match created {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Entries other consumers read and left unacknowledged for longer than
    /// the takeover time: now this host's.
    async fn take_over(
        &self,
        conn: &mut ConnectionManager,
        streams: &[String],
    ) -> redis::RedisResult<Vec<(String, String)>> {
        let mut taken = Vec::new();
        for stream in streams {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(stream)
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(self.takeover_idle.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("JUSTID")
                .query_async(conn)
                .await?;
            if !reply.claimed.is_empty() {
                tracing::info!(stream = %stream, entries = reply.claimed.len(), "took over hints a silent host had read");
            }
            taken.extend(reply.claimed.into_iter().map(|e| (stream.clone(), e.id)));
        }
        Ok(taken)
    }

    async fn ack(
        &self,
        conn: &mut ConnectionManager,
        done: Vec<(u64, String, String)>,
    ) -> redis::RedisResult<()> {
        if done.is_empty() {
            return Ok(());
        }
        let mut by_stream: HashMap<String, Vec<String>> = HashMap::new();
        for (_, stream, id) in done {
            by_stream.entry(stream).or_default().push(id);
        }
        let mut pipe = redis::pipe();
        for (stream, ids) in by_stream {
            pipe.cmd("XACK").arg(stream).arg(GROUP).arg(ids).ignore();
        }
        pipe.query_async::<()>(conn).await
    }

    /// Each type's stream: its length, entries read and not acknowledged,
    /// and consumers. A type is left out while Redis cannot be reached.
    pub async fn stats(&self, types: &[String]) -> HashMap<String, StreamStats> {
        let mut conn = self.conn.clone();
        let mut out = HashMap::new();
        for job_type in types {
            let stream = self.stream(job_type);
            let length: redis::RedisResult<u64> = conn.xlen(&stream).await;
            let Ok(length) = length else { continue };
            let mut stats = StreamStats {
                length,
                ..StreamStats::default()
            };
            let groups: redis::RedisResult<redis::streams::StreamInfoGroupsReply> =
                conn.xinfo_groups(&stream).await;
            if let Ok(groups) = groups
                && let Some(group) = groups.groups.iter().find(|g| g.name == GROUP)
            {
                stats.pending = group.pending as u64;
                stats.consumers = group.consumers as u64;
            }
            out.insert(job_type.clone(), stats);
        }
        out
    }
}

/// Adds an `XADD` of `fields` to `stream`, trimmed to about
/// [`STREAM_MAXLEN`] entries, to the pipeline.
fn xadd(pipe: &mut redis::Pipeline, stream: &str, fields: &[(&str, String)]) {
    let cmd = pipe
        .cmd("XADD")
        .arg(stream)
        .arg("MAXLEN")
        .arg("~")
        .arg(STREAM_MAXLEN)
        .arg("*");
    for (field, value) in fields {
        cmd.arg(*field).arg(value);
    }
    cmd.ignore();
}

/// Redis answered: the gauge says so.
fn up() {
    metrics::gauge!(telemetry::REDIS_UP).set(1.0);
}

/// Redis did not answer: count it, say it (once a second at most), and
/// set the gauge.
fn failed(op: &'static str, e: &redis::RedisError) {
    metrics::gauge!(telemetry::REDIS_UP).set(0.0);
    metrics::counter!(telemetry::REDIS_ERRORS, "op" => op).increment(1);
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_WARNED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST_WARNED.swap(now, Ordering::Relaxed) != now {
        tracing::warn!(error = %e, op, "Redis unavailable; jobs still run (workers poll the store)");
    }
}

async fn pause(stop: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
        () = stop.cancelled() => {}
    }
}

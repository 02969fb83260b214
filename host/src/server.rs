//! `jobhost serve`: opens the store, loads the plugins, starts the worker,
//! the maintenance services and the HTTP API, and shuts them down in order.

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::api::{self, App};
use crate::clock::{Clock, SystemClock};
use crate::config::ServeConfig;
use crate::dispatch::redis::Redis;
use crate::dispatch::{self, Dispatch};
use crate::job::JobState;
use crate::maintenance::Maintenance;
use crate::plugins::{Catalog, Loader, Registry};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::store::Store;
use crate::store::postgres::{PgCatalog, PgOptions, PgStore};
use crate::store::sqlite::SqliteStore;
use crate::telemetry;
use crate::worker::{Control, StoreServices, Worker, WorkerConfig};

/// Runs jobhost until `shutdown` resolves, then stops claiming, lets running
/// attempts finish within the grace period, and returns.
pub async fn run(config: ServeConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let admin_token = admin_token(&config)?;

    let (store, shared) = open_store(&config).await?;

    // Before the plugins load: they take their metric handles from it.
    let prometheus = match telemetry::prometheus() {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!(error = %e, "metrics are off");
            None
        }
    };

    let max_memory_bytes = (config.max_plugin_memory_mb as usize) << 20;
    let runtime = Arc::new(Runtime::new(RuntimeConfig {
        // Room for every attempt in flight plus plugin versions being swapped.
        max_instances: config.concurrency + 16,
        max_memory_bytes,
        cache_dir: Some(config.data_dir.join("cache")),
    })?);
    let registry = Arc::new(Registry::new());
    let plugins_dir = config.plugins_dir();
    let loader = Arc::new(Loader::new(
        runtime.clone(),
        registry.clone(),
        plugins_dir.clone(),
        max_memory_bytes,
    ));
    let loaded = {
        let loader = loader.clone();
        tokio::task::spawn_blocking(move || loader.load_all())
            .await
            .context("loading plugins")?
            .with_context(|| format!("loading plugins from {}", plugins_dir.display()))?
    };
    if loaded.is_empty() {
        tracing::warn!(dir = %plugins_dir.display(), "no plugins loaded: every job type will be unknown");
    }

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let dispatch = Arc::new(Dispatch::new());
    let stop = CancellationToken::new();
    if let Some(handle) = &prometheus {
        tokio::spawn(telemetry::upkeep(handle.clone(), stop.clone()));
    }
    let owner = format!("{}-{}", hostname(), std::process::id());
    // Redis Streams: this host's hints to the others, and theirs to it.
    let redis = match &config.redis_url {
        None => None,
        Some(url) => {
            anyhow::ensure!(
                shared.is_some(),
                "--redis-url needs a shared store: set --database-url postgres://..."
            );
            let consumer = format!("{owner}-{:08x}", rand::random::<u32>());
            let redis = Arc::new(
                Redis::connect(
                    url,
                    &config.redis_prefix,
                    consumer,
                    Duration::from_millis(config.redis_takeover_ms),
                )
                .context("--redis-url")?,
            );
            dispatch.set_redis(redis.clone());
            Some(redis)
        }
    };
    // The publisher outlives the worker, so the outcomes of attempts that
    // finish in the shutdown grace are still mirrored.
    let publish_stop = CancellationToken::new();
    let redis_tasks = redis.map(|redis| {
        (
            tokio::spawn(redis.clone().publisher(publish_stop.clone())),
            tokio::spawn(redis.reader(registry.clone(), dispatch.clone(), stop.clone())),
        )
    });
    // Other hosts' writes reach this host's workers as hints.
    // In scale-out, uploads are published in the database and every host
    // follows them (see plugins::catalog).
    let catalog = shared
        .as_ref()
        .map(|pool| Arc::new(PgCatalog(pool.clone())) as Arc<dyn Catalog>);
    let hints = shared.map(|pool| {
        tokio::spawn(dispatch::pg_notify::listen(
            pool,
            dispatch.clone(),
            stop.clone(),
        ))
    });

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;

    let abort = CancellationToken::new();
    let control = Arc::new(Control::new(config.paused));
    if config.paused {
        tracing::warn!("workers start paused: POST /admin/workers/resume to start running jobs");
    }
    // The types an operator paused, before the first claim.
    match store.queues_paused().await {
        Ok(types) => {
            if !types.is_empty() {
                tracing::warn!(
                    ?types,
                    "job types paused: POST /admin/queues/{{type}}/resume to claim them again"
                );
            }
            control.set_paused_types(types);
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read the paused job types; looking again in a second")
        }
    }
    let paused_types = tokio::spawn(crate::worker::follow_paused_types(
        store.clone(),
        control.clone(),
        stop.clone(),
    ));
    let worker = Arc::new(Worker {
        store: store.clone(),
        registry: registry.clone(),
        runtime: runtime.clone(),
        services: Arc::new(StoreServices(store.clone())),
        dispatch: dispatch.clone(),
        clock: clock.clone(),
        control: control.clone(),
        round: Default::default(),
        leases: Default::default(),
        quiet_until: Default::default(),
        config: WorkerConfig {
            owner,
            concurrency: config.concurrency as usize,
            claim_batch: config.claim_batch as usize,
            lease_grace: Duration::from_millis(config.lease_grace_ms),
            poll_interval: Duration::from_millis(config.poll_interval_ms),
        },
    });
    let worker_task = tokio::spawn(worker.run(stop.clone(), abort.clone()));
    let maintenance = Arc::new(Maintenance {
        store: store.clone(),
        clock: clock.clone(),
        dispatch: dispatch.clone(),
        reap_interval: Duration::from_millis(config.reap_interval_ms),
        promote_interval: Duration::from_secs(1),
        retention: [
            (JobState::Succeeded, config.retain_succeeded.0),
            (JobState::Dead, config.retain_dead.0),
            (JobState::Cancelled, config.retain_cancelled.0),
        ],
        prune_interval: Duration::from_millis(config.prune_interval_ms),
    });
    let pruner = tokio::spawn(maintenance.clone().pruner(stop.clone()));
    let reaper = tokio::spawn(maintenance.clone().reaper(stop.clone()));
    // Hot reload: the plugins directory, watched.
    let watcher = tokio::spawn(loader.clone().watch(stop.clone()));
    let follower = catalog.clone().map(|catalog| {
        tokio::spawn(crate::plugins::catalog::follow(
            loader.clone(),
            catalog,
            stop.clone(),
        ))
    });
    let promoter = tokio::spawn(maintenance.promoter(stop.clone()));
    let manifest_schedules = tokio::spawn(crate::schedules::follow_manifests(
        registry.clone(),
        store.clone(),
        clock.clone(),
        stop.clone(),
    ));
    let scheduler = tokio::spawn(
        crate::schedules::Scheduler {
            store: store.clone(),
            clock: clock.clone(),
            dispatch: dispatch.clone(),
            registry: registry.clone(),
        }
        .run(stop.clone()),
    );

    let app = api::app(App {
        store: store.clone(),
        registry,
        loader,
        catalog,
        dispatch,
        clock,
        workers: control,
        admin_token: admin_token.into(),
        body_limit: config.body_limit as usize,
        prometheus,
    });
    banner(&addr, &loaded);

    let http = {
        let stop = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };

    shutdown.await;
    tracing::info!("shutting down: no new jobs are claimed; running attempts may finish");
    stop.cancel();
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let mut worker_task = worker_task;
    if tokio::time::timeout(grace, &mut worker_task).await.is_err() {
        tracing::warn!("shutdown grace period over: stopping the attempts still running");
        abort.cancel();
        let _ = worker_task.await;
    }
    let _ = tokio::join!(
        reaper,
        promoter,
        pruner,
        scheduler,
        manifest_schedules,
        watcher,
        paused_types
    );
    if let Some(follower) = follower {
        let _ = follower.await;
    }
    if let Some(hints) = hints {
        let _ = hints.await;
    }
    publish_stop.cancel();
    if let Some((publisher, reader)) = redis_tasks {
        let _ = tokio::join!(publisher, reader);
    }
    match tokio::time::timeout(Duration::from_secs(5), http).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "http server error at shutdown"),
        Err(_) => tracing::warn!("http connections still open after 5 s; closing"),
        _ => {}
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Opens the store the URL names; for a shared (PostgreSQL) store, also
/// returns its pool, on which the dispatcher listens for other hosts' hints.
async fn open_store(config: &ServeConfig) -> anyhow::Result<(Arc<dyn Store>, Option<PgPool>)> {
    let url = config.database_url();
    if url.starts_with("sqlite:") {
        let store = SqliteStore::open(&url, config.sqlite_sync)
            .await
            .with_context(|| format!("opening the store at {url}"))?;
        return Ok((Arc::new(store), None));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let options = PgOptions {
            max_connections: config.pg_max_connections,
            acquire_timeout: Duration::from_millis(config.pg_acquire_timeout_ms),
        };
        let store = PgStore::open(&url, options)
            .await
            .context("opening the PostgreSQL store")?;
        let pool = store.pool().clone();
        return Ok((Arc::new(store), Some(pool)));
    }
    anyhow::bail!(
        "--database-url: expected sqlite://PATH or postgres://USER@HOST:PORT/DB, got {:?}",
        url.split_once("://")
            .map_or(url.as_str(), |(scheme, _)| scheme)
    )
}

/// The admin token: from the config, else from `<data-dir>/admin-token`,
/// else newly generated and written there (mode 0600), printed once.
fn admin_token(config: &ServeConfig) -> anyhow::Result<String> {
    if let Some(token) = &config.admin_token {
        anyhow::ensure!(
            token.trim().len() >= 16,
            "--admin-token must be at least 16 characters"
        );
        return Ok(token.trim().to_owned());
    }
    let path = config.data_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => {
            println!("admin token: in {}", path.display());
            return Ok(token.trim().to_owned());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let bytes: [u8; 24] = rand::random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, &token).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "admin token: {token} (generated; kept in {})",
        path.display()
    );
    Ok(token)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

fn banner(addr: &std::net::SocketAddr, loaded: &[String]) {
    println!("jobhost listening on http://{addr}");
    println!("  submit:  POST http://{addr}/jobs/{{type}}");
    println!("  metrics: GET  http://{addr}/metrics");
    println!("  admin:   http://{addr}/admin/... (Authorization: Bearer <admin token>)");
    println!(
        "  plugins: {}",
        if loaded.is_empty() {
            "none".to_owned()
        } else {
            loaded.join(", ")
        }
    );
    let _ = std::io::stdout().flush();
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "jobhost".to_owned())
}

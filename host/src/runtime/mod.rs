//! The wasm runtime: the only module that touches wasmtime.
//!
//! It owns one [`wasmtime::Engine`] for the process (pooling allocator, fuel
//! metering, epoch interruption), the [`Linker`] with the host imports, and
//! the compiled form of each plugin ([`CompiledPlugin`]: a pre-instantiated
//! component, cached on disk by digest). [`Runtime::run`] gives every attempt
//! a fresh `Store` with a fuel budget, a wall-clock deadline, a memory cap and
//! a WASI context that grants nothing, and turns whatever happens, traps
//! included, into an [`AttemptOutcome`]. Nothing a plugin does can unwind
//! into the host.

mod host;
mod outbound;

pub use outbound::HostPattern;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::WasiCtx;

use host::{AttemptState, MemoryCap, StderrTail};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "handler",
    imports: {
        "jobhost:plugin/host.progress": async,
        "jobhost:plugin/kv.get": async,
        "jobhost:plugin/kv.set": async,
        "jobhost:plugin/kv.set-if-absent": async,
        "jobhost:plugin/kv.delete": async,
    },
    exports: { default: async },
});

/// Per-component limits of the instance pool.
const MAX_CORE_INSTANCES: u32 = 16;
const MAX_MEMORIES: u32 = 4;
const MAX_TABLES: u32 = 8;
/// How much of each memory and table the pool resets in place (memset of
/// the dirty pages) instead of returning it to the kernel (madvise), which
/// the next attempt would fault back in.
const KEEP_RESIDENT: usize = 4 << 20;

/// How often the engine's epoch ticks. Every tick, a running attempt yields
/// to the async executor, so a busy plugin never monopolises a host thread.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// The most a plugin's stderr (panic messages) is kept for its error report.
const STDERR_CAPTURE: usize = 8 * 1024;
/// The most of that stderr quoted in a job's error.
const STDERR_IN_ERROR: usize = 500;
/// Host-side objects an attempt may hold at once (WASI streams, HTTP
/// requests, headers, ...): they live outside its memory cap, so they are
/// capped here.
const MAX_RESOURCES: usize = 10_000;
/// Largest set of HTTP headers an attempt may build, in bytes.
const MAX_HTTP_FIELDS: usize = 64 * 1024;

/// Process-wide sandbox settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Attempts that may be in flight at once (sizes the instance pool).
    pub max_instances: u32,
    /// The largest memory any plugin may be granted.
    pub max_memory_bytes: usize,
    /// Where compiled components are cached by digest (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
}

/// The limits of one attempt, from the plugin's manifest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub fuel: u64,
    pub timeout: Duration,
    pub memory_bytes: usize,
}

/// What a plugin's attempts may use beyond computing, from its manifest.
/// Shared by every attempt of one plugin version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grants {
    /// The manifest's `[config]`, with environment references resolved:
    /// all that `config.get` can return.
    pub config: BTreeMap<String, String>,
    /// `allowed_outbound_hosts`: where `wasi:http` requests may go (nowhere
    /// when empty).
    pub outbound: Vec<HostPattern>,
}

/// A write to a plugin's key-value store.
pub use crate::store::KvWrite;

/// The durable services behind the plugin capabilities that keep state
/// (the key-value store, progress). The worker implements it over the job
/// store; the runtime knows nothing of stores.
#[async_trait::async_trait]
pub trait Services: Send + Sync + 'static {
    /// The value of `key` in the plugin's `scope`.
    async fn kv_get(&self, scope: &str, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// One write; whether it changed anything. Seen by every later call at
    /// once; durable no later than the attempt's outcome.
    async fn kv_write(&self, scope: &str, key: &str, write: KvWrite) -> Result<bool, String>;
    /// Returns once every write answered so far is durable: called before
    /// anything an attempt decided leaves the host (an outbound request).
    async fn kv_durable(&self) -> Result<(), String>;
    /// Records the attempt's progress, fenced by its lease token.
    async fn progress(&self, job: i64, token: i64, percent: u8) -> Result<(), String>;
}

/// The job as the plugin sees it, the lease it runs under and what its
/// host imports reach.
#[derive(Clone)]
pub struct AttemptInput<'a> {
    pub id: i64,
    pub job_type: &'a str,
    /// The plugin's name: the scope of its key-value store.
    pub plugin: &'a str,
    pub payload: &'a str,
    pub attempt: u32,
    pub max_attempts: u32,
    /// The lease's fence, for the writes the attempt makes (progress).
    pub token: i64,
    pub grants: &'a Arc<Grants>,
    pub services: &'a Arc<dyn Services>,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    /// The handler succeeded, with an optional JSON result.
    Ok(Option<String>),
    /// The handler asked for a retry.
    Retry(String),
    /// The handler said the job can never succeed.
    Fatal(String),
    /// The sandbox stopped the attempt; always retryable.
    Trapped(TrapReason),
    /// The host could not start the attempt (every sandbox slot is taken):
    /// not the job's fault, so it does not count as an attempt.
    NotStarted(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum TrapReason {
    FuelExhausted { fuel: u64 },
    TimedOut { timeout: Duration },
    MemoryExceeded { limit_bytes: usize },
    Crashed(String),
}

impl std::fmt::Display for TrapReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrapReason::FuelExhausted { fuel } => write!(f, "fuel exhausted after {fuel} units"),
            TrapReason::TimedOut { timeout } => {
                write!(f, "timed out after {} ms", timeout.as_millis())
            }
            TrapReason::MemoryExceeded { limit_bytes } => {
                write!(
                    f,
                    "memory limit of {} MiB exceeded",
                    limit_bytes / (1024 * 1024)
                )
            }
            TrapReason::Crashed(why) => write!(f, "crashed: {why}"),
        }
    }
}

/// One attempt's outcome and what it cost.
#[derive(Debug, Clone)]
pub struct AttemptReport {
    pub outcome: AttemptOutcome,
    pub fuel_consumed: u64,
    /// Instantiate + call, as measured by the host.
    pub duration: Duration,
}

/// A plugin version, compiled and linked, ready to instantiate per attempt.
#[derive(Clone)]
pub struct CompiledPlugin {
    /// `sha256:<hex>` of the `.wasm` bytes.
    pub digest: String,
    pre: HandlerPre<AttemptState>,
}

impl std::fmt::Debug for CompiledPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPlugin")
            .field("digest", &self.digest)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("configuring the wasm engine: {0}")]
    Engine(String),
    #[error("compiling plugin {name}: {reason}")]
    Compile { name: String, reason: String },
    #[error(
        "linking plugin {name}: {reason} (does it target the jobhost:plugin/handler world of wit/jobhost.wit?)"
    )]
    Link { name: String, reason: String },
}

/// A plugin file, inspected (see [`Runtime::inspect`]).
#[derive(Debug)]
pub struct Inspection {
    pub digest: String,
    pub size: usize,
    /// Interfaces it imports, e.g. `wasi:cli/environment@0.2.6`.
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// Whether the host can run it: linked against what the host provides,
    /// with the `handle` export of the jobhost world.
    pub linked: Result<(), RuntimeError>,
}

pub struct Runtime {
    engine: Engine,
    linker: Linker<AttemptState>,
    cache_dir: Option<PathBuf>,
    /// The engine's compatibility fingerprint: part of every cache file name,
    /// so a new wasmtime or new settings never load a stale artifact.
    cache_tag: String,
    ticker_stop: Arc<AtomicBool>,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let engine_err = |e: wasmtime::Error| RuntimeError::Engine(format!("{e:#}"));
        let instances = config.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::new();
        // A Rust wasip2 component is a few core instances (the program and
        // its adapter shims) with one or two memories. Totals are sized for
        // every slot holding the largest component allowed, so one plugin
        // can never take the pool from the others.
        pool.total_component_instances(instances)
            .total_core_instances(instances * MAX_CORE_INSTANCES)
            .total_memories(instances * MAX_MEMORIES)
            .total_tables(instances * MAX_TABLES)
            .total_stacks(instances)
            .max_core_instances_per_component(MAX_CORE_INSTANCES)
            .max_memories_per_component(MAX_MEMORIES)
            .max_tables_per_component(MAX_TABLES)
            .max_memory_size(config.max_memory_bytes)
            // Reset memories with memset and leave them resident, scanning
            // only the dirty pages: the next attempt takes no faults. A Rust
            // plugin's memory starts at 17 pages (its 1 MiB stack, then data
            // and heap), so the first MiB alone would leave the heap to
            // madvise and fault in again on every attempt. Only pages an
            // attempt touched stay resident.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            .pagemap_scan(Enabled::Auto);
        let mut cfg = Config::new();
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(1 << 20)
            .concurrency_support(false);
        let engine = Engine::new(&cfg).map_err(engine_err)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_err)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(engine_err)?;
        Handler::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(engine_err)?;

        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let cache_tag = format!("{:016x}", hasher.finish());

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (weak, stop) = (engine.weak(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("jobhost-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| RuntimeError::Engine(format!("starting the epoch thread: {e}")))?;

        Ok(Runtime {
            engine,
            linker,
            cache_dir: config.cache_dir,
            cache_tag,
            ticker_stop,
        })
    }

    /// Compiles (or loads from the cache) and links a plugin. CPU-heavy on a
    /// cache miss: call it off the async executor. It runs on a thread of
    /// its own at the lowest CPU priority ([`at_low_priority`]).
    pub fn compile(&self, name: &str, wasm: &[u8]) -> Result<CompiledPlugin, RuntimeError> {
        at_low_priority(|| self.compile_here(name, wasm))
    }

    fn compile_here(&self, name: &str, wasm: &[u8]) -> Result<CompiledPlugin, RuntimeError> {
        let digest = digest_of(wasm);
        let compile_err = |e: wasmtime::Error| RuntimeError::Compile {
            name: name.to_owned(),
            reason: format!("{e:#}"),
        };
        let component = match self.cache_path(&digest) {
            Some(path) => self.cached_component(&path, wasm).map_err(compile_err)?,
            None => Component::new(&self.engine, wasm).map_err(compile_err)?,
        };
        let pre = self.link(name, &component)?;
        Ok(CompiledPlugin { digest, pre })
    }

    fn link(
        &self,
        name: &str,
        component: &Component,
    ) -> Result<HandlerPre<AttemptState>, RuntimeError> {
        let link_err = |e: wasmtime::Error| RuntimeError::Link {
            name: name.to_owned(),
            reason: format!("{e:#}"),
        };
        let pre = self.linker.instantiate_pre(component).map_err(link_err)?;
        HandlerPre::new(pre).map_err(link_err)
    }

    /// What a plugin file is, for `jobhost plugin check`: what it imports
    /// and exports, and whether it links as a handler of the jobhost world
    /// (`linked`). An error only if it does not compile at all. Uses no
    /// cache.
    pub fn inspect(&self, name: &str, wasm: &[u8]) -> Result<Inspection, RuntimeError> {
        let component = Component::new(&self.engine, wasm).map_err(|e| RuntimeError::Compile {
            name: name.to_owned(),
            reason: format!("{e:#}"),
        })?;
        let ty = component.component_type();
        Ok(Inspection {
            digest: digest_of(wasm),
            size: wasm.len(),
            imports: ty
                .imports(&self.engine)
                .map(|(n, _)| n.to_owned())
                .collect(),
            exports: ty
                .exports(&self.engine)
                .map(|(n, _)| n.to_owned())
                .collect(),
            linked: self.link(name, &component).map(drop),
        })
    }

    fn cache_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.trim_start_matches("sha256:");
        Some(
            self.cache_dir
                .as_ref()?
                .join(format!("{hex}-{}.cwasm", self.cache_tag)),
        )
    }

    fn cached_component(&self, path: &Path, wasm: &[u8]) -> wasmtime::Result<Component> {
        if path.exists() {
            // SAFETY: the file was written by `precompile_component` of an
            // engine with this same compatibility tag (it is in the name),
            // inside jobhost's own data directory.
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unusable compiled-plugin cache entry")
                }
            }
        }
        let bytes = self.engine.precompile_component(wasm)?;
        if let Some(dir) = path.parent() {
            let written = std::fs::create_dir_all(dir).and_then(|()| {
                // Write then rename, so a crash never leaves a torn artifact.
                let tmp = path.with_extension(format!(
                    "{}-{:x}.tmp",
                    std::process::id(),
                    rand::random::<u32>()
                ));
                write_synced(&tmp, &bytes)?;
                std::fs::rename(&tmp, path)
            });
            if let Err(e) = written {
                tracing::warn!(path = %path.display(), error = %e, "could not cache compiled plugin");
            }
        }
        // SAFETY: `bytes` was produced just now by this engine.
        unsafe { Component::deserialize(&self.engine, &bytes) }
    }

    /// Runs one attempt in a fresh sandbox.
    pub async fn run(
        &self,
        plugin: &CompiledPlugin,
        limits: &Limits,
        job: AttemptInput<'_>,
    ) -> AttemptReport {
        let started = Instant::now();
        let stderr = StderrTail::new(STDERR_CAPTURE);
        let mut wasi = WasiCtx::builder();
        wasi.stderr(stderr.clone());
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let mut http = wasmtime_wasi_http::WasiHttpCtx::new();
        http.set_field_size_limit(MAX_HTTP_FIELDS);
        let state = AttemptState {
            wasi: wasi.build(),
            table,
            memory: MemoryCap::new(limits.memory_bytes),
            token: job.token,
            http,
            caller: outbound::Caller {
                plugin: job.plugin.to_owned(),
                job_id: job.id,
                grants: job.grants.clone(),
                services: job.services.clone(),
            },
            services: job.services.clone(),
            progress: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.memory);
        // Cannot fail: fuel metering is on for this engine.
        store.set_fuel(limits.fuel).expect("fuel is enabled");
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
        store.set_epoch_deadline(1);

        let input = Job {
            id: job.id as u64,
            job_type: job.job_type.to_owned(),
            payload: job.payload.to_owned(),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
        };
        let call = async {
            let handler = plugin.pre.instantiate_async(&mut store).await?;
            handler.call_handle(&mut store, &input).await
        };
        let result = tokio::time::timeout(limits.timeout, call).await;
        let fuel_consumed = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let outcome = match result {
            Err(_elapsed) => AttemptOutcome::Trapped(TrapReason::TimedOut {
                timeout: limits.timeout,
            }),
            Ok(Ok(Ok(result))) => AttemptOutcome::Ok(result),
            Ok(Ok(Err(Failure::Retry(msg)))) => AttemptOutcome::Retry(msg),
            Ok(Ok(Err(Failure::Fatal(msg)))) => AttemptOutcome::Fatal(msg),
            Ok(Err(err))
                if err
                    .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                    .is_some() =>
            {
                AttemptOutcome::NotStarted(format!("{err:#}"))
            }
            Ok(Err(err)) => AttemptOutcome::Trapped(classify(
                &err,
                limits,
                store.data().memory.denied(),
                &stderr,
            )),
        };
        AttemptReport {
            outcome,
            fuel_consumed,
            duration: started.elapsed(),
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Writes a file and flushes it to disk before returning. Plugin files are
/// written beside the store's database: flushed here, on the thread that
/// writes them, their data is not left for the store's next commit (its
/// fsync) to wait on.
pub fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// A plugin's identity: `sha256:<hex>` of its `.wasm` bytes.
pub fn digest_of(wasm: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(wasm))
}

/// Cuts text a plugin handed the host (a log line, a failure message) to at
/// most `max` bytes on a character boundary, marking the cut.
pub fn cap_plugin_text(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(" [truncated]");
    }
    text
}

/// Names the reason a call trapped, in words a plugin author can act on.
fn classify(
    err: &wasmtime::Error,
    limits: &Limits,
    memory_denied: bool,
    stderr: &StderrTail,
) -> TrapReason {
    if let Some(Trap::OutOfFuel) = err.downcast_ref::<Trap>() {
        return TrapReason::FuelExhausted { fuel: limits.fuel };
    }
    // A denied growth makes Rust's allocator abort with `unreachable`.
    if memory_denied
        && matches!(
            err.downcast_ref::<Trap>(),
            Some(Trap::UnreachableCodeReached)
        )
    {
        return TrapReason::MemoryExceeded {
            limit_bytes: limits.memory_bytes,
        };
    }
    let mut why = match err.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{err:#}"),
    };
    // A Rust panic prints its message to stderr before it traps: keep the
    // tail of what the plugin wrote, minus the hint about backtraces.
    let captured = stderr.contents();
    let text = String::from_utf8_lossy(&captured);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    if !lines.is_empty() {
        let tail = lines[lines.len().saturating_sub(3)..].join(" ");
        let mut start = tail.len().saturating_sub(STDERR_IN_ERROR);
        while !tail.is_char_boundary(start) {
            start += 1;
        }
        why.push_str("; plugin stderr: ");
        why.push_str(&tail[start..]);
    }
    if memory_denied {
        why.push_str(&format!(
            " (after a memory growth past the {} MiB cap was denied)",
            limits.memory_bytes >> 20
        ));
    }
    TrapReason::Crashed(why)
}

#[cfg(test)]
mod tests;

/// Runs `work` on a thread of its own at the lowest CPU priority (nice 19,
/// on Linux): compiling a plugin is a burst of tens of milliseconds of one
/// core, which at normal priority delays the attempts and commits running
/// beside it (a hot swap under load). With idle cores it runs at full speed;
/// on a saturated host it still progresses, slowly.
fn at_low_priority<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    let mut work = Some(work);
    let done = std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("jobhost-compile".into())
            .spawn_scoped(scope, || {
                #[cfg(target_os = "linux")]
                // SAFETY: on Linux, `who = 0` is the calling thread alone:
                // only this short-lived thread's niceness changes.
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, 0, 19);
                }
                work.take().map(|work| work())
            })
            .ok()?;
        Some(
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        )
    });
    match done.flatten() {
        Some(out) => out,
        // No thread to be had: here, then.
        None => (work.take().expect("the work did not run"))(),
    }
}

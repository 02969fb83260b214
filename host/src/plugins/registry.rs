//! The registry: which plugin version handles each job type right now, and
//! which plugin files last failed to load.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use tokio::sync::Semaphore;

use super::{Manifest, ManifestError, valid_type_name};
use crate::runtime::{CompiledPlugin, Runtime, RuntimeError};
use crate::telemetry::TypeMetrics;

/// One loaded plugin version.
#[derive(Debug)]
pub struct LoadedPlugin {
    pub job_type: String,
    pub manifest: Manifest,
    /// The manifest as written (`None`: no manifest, every default): a
    /// changed file is told from an unchanged one by its text.
    pub manifest_text: Option<String>,
    pub compiled: CompiledPlugin,
    /// Size of the `.wasm`, in bytes.
    pub size: usize,
    pub loaded_at: SystemTime,
    /// Attempts of this type in flight on this host (`manifest.concurrency`).
    pub slots: Arc<Semaphore>,
    /// Attempts started per second on this host (`manifest.rate_per_second`).
    /// Shared with the versions before and after it while the rate stays
    /// the same, so a swap does not refill the bucket.
    pub rate: Option<Arc<super::RateLimit>>,
    pub metrics: TypeMetrics,
}

/// The plugin files of one type that did not load. The version before them
/// (if any) keeps serving.
#[derive(Debug, Clone)]
pub struct LoadFailure {
    pub error: String,
    pub at: SystemTime,
    /// What failed: the `.wasm`'s digest and the manifest's text, so the
    /// same broken files are reported once, not on every look.
    pub digest: String,
    pub manifest_text: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: {name:?} is not a valid job type name (1-64 of a-z, 0-9, _ and -, starting with a letter)"
    )]
    BadName { path: PathBuf, name: String },
    #[error("manifest {path}: {source}")]
    Manifest {
        path: PathBuf,
        source: ManifestError,
    },
    #[error("manifest {path}: memory_mb exceeds the host's limit of {limit_mb} MiB")]
    MemoryOverHostLimit { path: PathBuf, limit_mb: usize },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

#[derive(Default)]
pub struct Registry {
    plugins: RwLock<BTreeMap<String, Arc<LoadedPlugin>>>,
    failures: RwLock<BTreeMap<String, LoadFailure>>,
    /// Bumped whenever a type is added or removed (not when one is swapped):
    /// readers of per-type resources (Redis streams) know to look again.
    generation: AtomicU64,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The plugin that handles `job_type` now.
    pub fn get(&self, job_type: &str) -> Option<Arc<LoadedPlugin>> {
        self.read().get(job_type).cloned()
    }

    /// Every loaded plugin, by type name.
    pub fn all(&self) -> Vec<Arc<LoadedPlugin>> {
        self.read().values().cloned().collect()
    }

    pub fn types(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Changes each time a type is added or removed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Installs `plugin` as the handler of its type, replacing any other
    /// version (attempts holding the old one finish on it), and clears the
    /// type's failure. Returns the version it replaced.
    pub fn insert(&self, mut plugin: LoadedPlugin) -> Option<Arc<LoadedPlugin>> {
        let job_type = plugin.job_type.clone();
        let mut plugins = self.plugins.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = plugins.get(&job_type)
            && old.manifest.rate_per_second == plugin.manifest.rate_per_second
        {
            plugin.rate.clone_from(&old.rate);
        }
        let old = plugins.insert(job_type.clone(), Arc::new(plugin));
        drop(plugins);
        if old.is_none() {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        self.clear_failure(&job_type);
        metrics::counter!(crate::telemetry::PLUGIN_LOADS, "type" => job_type.clone()).increment(1);
        metrics::gauge!(crate::telemetry::PLUGIN_OK, "type" => job_type).set(1.0);
        old
    }

    /// Stops serving `job_type`: no new attempt starts; attempts in flight
    /// finish. Returns the version removed.
    pub fn remove(&self, job_type: &str) -> Option<Arc<LoadedPlugin>> {
        let old = self
            .plugins
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(job_type);
        if old.is_some() {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        self.clear_failure(job_type);
        old
    }

    /// Records that `job_type`'s files did not load.
    pub fn fail(&self, job_type: &str, failure: LoadFailure) {
        metrics::counter!(crate::telemetry::PLUGIN_LOAD_ERRORS, "type" => job_type.to_owned())
            .increment(1);
        metrics::gauge!(crate::telemetry::PLUGIN_OK, "type" => job_type.to_owned()).set(0.0);
        self.failures
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job_type.to_owned(), failure);
    }

    fn clear_failure(&self, job_type: &str) {
        self.failures
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(job_type);
    }

    /// The type's last load failure, if its latest files did not load.
    pub fn failure(&self, job_type: &str) -> Option<LoadFailure> {
        self.failures
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(job_type)
            .cloned()
    }

    /// Every type whose latest files did not load.
    pub fn failures(&self) -> BTreeMap<String, LoadFailure> {
        self.failures
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<LoadedPlugin>>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (each change is one call), so a poisoned lock is still good to read.
        self.plugins.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Checks and compiles one plugin version: the name, the manifest (`paths`
/// name the files in errors), the memory cap, and that the component is of
/// the jobhost world. CPU-heavy on a cache miss: call it off the executor.
pub fn build(
    runtime: &Runtime,
    name: &str,
    wasm: &[u8],
    manifest_text: Option<String>,
    paths: (&std::path::Path, &std::path::Path),
    max_memory_bytes: usize,
) -> Result<LoadedPlugin, LoadError> {
    let (wasm_path, manifest_path) = paths;
    if !valid_type_name(name) {
        return Err(LoadError::BadName {
            path: wasm_path.to_owned(),
            name: name.to_owned(),
        });
    }
    let manifest = match &manifest_text {
        Some(text) => Manifest::parse(text).map_err(|source| LoadError::Manifest {
            path: manifest_path.to_owned(),
            source,
        })?,
        None => Manifest::default(),
    };
    if manifest.limits.memory_bytes > max_memory_bytes {
        return Err(LoadError::MemoryOverHostLimit {
            path: manifest_path.to_owned(),
            limit_mb: max_memory_bytes >> 20,
        });
    }
    let compiled = runtime.compile(name, wasm)?;
    Ok(LoadedPlugin {
        slots: Arc::new(Semaphore::new(manifest.concurrency as usize)),
        rate: manifest
            .rate_per_second
            .map(|r| Arc::new(super::RateLimit::new(r, std::time::Instant::now()))),
        metrics: TypeMetrics::new(name),
        job_type: name.to_owned(),
        manifest,
        manifest_text,
        compiled,
        size: wasm.len(),
        loaded_at: SystemTime::now(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Instant;

    use super::{Registry, build};
    use crate::runtime::{Runtime, RuntimeConfig};
    use crate::testing::plugin_wasm;

    #[test]
    fn a_new_version_keeps_the_rate_limit_bucket_while_the_rate_is_the_same() {
        let rt = Runtime::new(RuntimeConfig {
            max_instances: 4,
            max_memory_bytes: 64 << 20,
            cache_dir: None,
        })
        .unwrap();
        let wasm = plugin_wasm("examples", "noop");
        let load = |manifest: &str| {
            let paths = (Path::new("noop.wasm"), Path::new("noop.toml"));
            build(&rt, "noop", &wasm, Some(manifest.into()), paths, 64 << 20).unwrap()
        };
        let registry = Registry::new();
        registry.insert(load("rate_per_second = 5\n"));
        let first = registry.get("noop").unwrap().rate.clone().unwrap();
        first.take(5, Instant::now());
        // A swap with the same rate: the same (emptied) bucket.
        registry.insert(load("rate_per_second = 5\nfuel = 2_000_000\n"));
        let second = registry.get("noop").unwrap().rate.clone().unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(second.available(Instant::now()).0, 0);
        // A new rate: a new bucket.
        registry.insert(load("rate_per_second = 7\n"));
        let third = registry.get("noop").unwrap().rate.clone().unwrap();
        assert!(!Arc::ptr_eq(&first, &third));
    }
}

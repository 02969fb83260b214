//! The registry: which plugin version handles each job type right now, and
//! which plugin files last failed to load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use tokio::sync::Semaphore;

use super::{Manifest, ManifestError, valid_type_name};
use crate::runtime::{CompiledPlugin, Runtime, RuntimeError};
use crate::telemetry::TypeMetrics;

/// One loaded plugin version: a component and its manifest.
#[derive(Debug)]
pub struct LoadedPlugin {
    /// Its name: the files' name, the scope of its key-value store.
    pub name: String,
    /// The job types it handles (the manifest's `job_types`, or its name).
    pub job_types: Vec<String>,
    pub manifest: Manifest,
    /// The manifest as written (`None`: no manifest, every default): a
    /// changed file is told from an unchanged one by its text.
    pub manifest_text: Option<String>,
    pub compiled: CompiledPlugin,
    /// Size of the `.wasm`, in bytes.
    pub size: usize,
    pub loaded_at: SystemTime,
}

/// What the registry maps a job type to: the plugin version handling it,
/// with the type's own limits on this host.
#[derive(Debug)]
pub struct Handler {
    pub job_type: String,
    pub plugin: Arc<LoadedPlugin>,
    /// Attempts of this type in flight on this host (`manifest.concurrency`).
    pub slots: Arc<Semaphore>,
    /// Attempts started per second on this host (`manifest.rate_per_second`).
    /// Shared with the versions before and after it while the rate stays
    /// the same, so a swap does not refill the bucket.
    pub rate: Option<Arc<super::RateLimit>>,
    pub metrics: TypeMetrics,
}

/// The files of one plugin that did not load. The version before them (if
/// any) keeps serving.
#[derive(Debug, Clone)]
pub struct LoadFailure {
    pub error: String,
    pub at: SystemTime,
    /// What failed: the `.wasm`'s digest and the manifest's text, so the
    /// same broken files are reported once, not on every look.
    pub digest: String,
    pub manifest_text: Option<String>,
    /// For files refused because another plugin handles one of their
    /// types: the registry's [generation](Registry::generation) then. The
    /// same files are looked at again once the types served change.
    pub types_generation: Option<u64>,
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
    #[error("{path}: job type {job_type:?} is already handled by plugin {other:?}")]
    TypeTaken {
        path: PathBuf,
        job_type: String,
        other: String,
    },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

pub struct Registry {
    maps: RwLock<Maps>,
    /// By plugin name.
    failures: RwLock<BTreeMap<String, LoadFailure>>,
    /// Bumped whenever a type is added or removed (not when one is swapped):
    /// readers of per-type resources (Redis streams) know to look again.
    generation: AtomicU64,
    /// Bumped on every change, swaps included: workers end claims made for
    /// the versions before.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            maps: RwLock::default(),
            failures: RwLock::default(),
            generation: AtomicU64::default(),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }
}

#[derive(Default)]
struct Maps {
    /// The version serving each plugin, by name.
    plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    /// The handler of each job type.
    handlers: BTreeMap<String, Arc<Handler>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The handler of `job_type` now.
    pub fn handler(&self, job_type: &str) -> Option<Arc<Handler>> {
        self.read().handlers.get(job_type).cloned()
    }

    /// Every job type's handler, by type name.
    pub fn handlers(&self) -> Vec<Arc<Handler>> {
        self.read().handlers.values().cloned().collect()
    }

    /// Every job type handled now.
    pub fn types(&self) -> Vec<String> {
        self.read().handlers.keys().cloned().collect()
    }

    /// Every loaded plugin's name.
    pub fn names(&self) -> Vec<String> {
        self.read().plugins.keys().cloned().collect()
    }

    /// The version of plugin `name` serving now.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.read().plugins.get(name).cloned()
    }

    /// Every loaded plugin, by name.
    pub fn all(&self) -> Vec<Arc<LoadedPlugin>> {
        self.read().plugins.values().cloned().collect()
    }

    /// Changes each time a type is added or removed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Counts every change, swaps included.
    pub fn version(&self) -> u64 {
        *self.changes.borrow()
    }

    /// Whether `handler` is the one serving its type now.
    pub fn is_current(&self, handler: &Arc<Handler>) -> bool {
        self.read()
            .handlers
            .get(&handler.job_type)
            .is_some_and(|now| Arc::ptr_eq(now, handler))
    }

    /// Told of every change, swaps included.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Refuses `plugin` if another plugin handles one of its job types
    /// (`path`: the file named in the error).
    pub fn check_types(&self, plugin: &LoadedPlugin, path: &Path) -> Result<(), LoadError> {
        let maps = self.read();
        for job_type in &plugin.job_types {
            if let Some(other) = maps.handlers.get(job_type)
                && other.plugin.name != plugin.name
            {
                return Err(LoadError::TypeTaken {
                    path: path.to_owned(),
                    job_type: job_type.clone(),
                    other: other.plugin.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// Installs `plugin` as the handler of its types, replacing its version
    /// before (attempts holding that one finish on it; types it no longer
    /// lists stop being claimed), and clears its failure. Returns the
    /// version it replaced. The caller has checked that no other plugin
    /// handles its types ([`Registry::check_types`]).
    pub fn insert(&self, plugin: LoadedPlugin) -> Option<Arc<LoadedPlugin>> {
        let name = plugin.name.clone();
        let plugin = Arc::new(plugin);
        let mut maps = self.maps.write().unwrap_or_else(|e| e.into_inner());
        let old = maps.plugins.insert(name.clone(), plugin.clone());
        let mut changed = false;
        if let Some(old) = &old {
            for job_type in &old.job_types {
                if !plugin.job_types.contains(job_type) {
                    maps.handlers.remove(job_type);
                    changed = true;
                }
            }
        }
        for job_type in &plugin.job_types {
            let manifest = &plugin.manifest;
            let before = maps.handlers.get(job_type);
            changed |= before.is_none();
            let rate = match before {
                Some(h) if h.plugin.manifest.rate_per_second == manifest.rate_per_second => {
                    h.rate.clone()
                }
                _ => manifest
                    .rate_per_second
                    .map(|r| Arc::new(super::RateLimit::new(r, std::time::Instant::now()))),
            };
            let handler = Handler {
                job_type: job_type.clone(),
                plugin: plugin.clone(),
                slots: Arc::new(Semaphore::new(manifest.concurrency as usize)),
                rate,
                metrics: TypeMetrics::new(job_type),
            };
            maps.handlers.insert(job_type.clone(), Arc::new(handler));
        }
        drop(maps);
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        self.changes.send_modify(|n| *n += 1);
        self.clear_failure(&name);
        metrics::counter!(crate::telemetry::PLUGIN_LOADS, "type" => name.clone()).increment(1);
        metrics::gauge!(crate::telemetry::PLUGIN_OK, "type" => name).set(1.0);
        old
    }

    /// Stops serving plugin `name`: no new attempt of its types starts;
    /// attempts in flight finish. Returns the version removed.
    pub fn remove(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        let mut maps = self.maps.write().unwrap_or_else(|e| e.into_inner());
        let old = maps.plugins.remove(name);
        if let Some(old) = &old {
            for job_type in &old.job_types {
                maps.handlers.remove(job_type);
            }
        }
        drop(maps);
        if old.is_some() {
            self.generation.fetch_add(1, Ordering::AcqRel);
            self.changes.send_modify(|n| *n += 1);
        }
        self.clear_failure(name);
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

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        // A panic while holding the lock cannot leave the maps half-updated
        // (each change is one call), so a poisoned lock is still good to read.
        self.maps.read().unwrap_or_else(|e| e.into_inner())
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
        name: name.to_owned(),
        job_types: manifest
            .job_types
            .clone()
            .unwrap_or_else(|| vec![name.to_owned()]),
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

    fn runtime() -> Runtime {
        Runtime::new(RuntimeConfig {
            max_instances: 4,
            max_memory_bytes: 64 << 20,
            cache_dir: None,
        })
        .unwrap()
    }

    #[test]
    fn each_type_has_one_plugin_and_follows_its_versions() {
        let rt = runtime();
        let wasm = plugin_wasm("examples", "noop");
        let load = |name: &str, manifest: &str| {
            let paths = (Path::new("x.wasm"), Path::new("x.toml"));
            build(&rt, name, &wasm, Some(manifest.into()), paths, 64 << 20).unwrap()
        };
        let registry = Registry::new();
        registry.insert(load("mailer", "job_types = [\"welcome\", \"digest\"]"));
        assert_eq!(registry.types(), ["digest", "welcome"]);
        assert_eq!(registry.names(), ["mailer"]);
        assert_eq!(registry.handler("welcome").unwrap().plugin.name, "mailer");
        assert!(registry.handler("mailer").is_none());
        let generation = registry.generation();

        // Another plugin may not take a type that is handled.
        let rival = load("rival", "job_types = [\"digest\"]");
        let err = registry
            .check_types(&rival, Path::new("rival.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rival.toml") && err.contains("\"digest\"") && err.contains("\"mailer\""),
            "{err}"
        );
        // A new version of the same plugin may keep, drop and add types.
        let v2 = load("mailer", "job_types = [\"welcome\", \"receipt\"]");
        registry.check_types(&v2, Path::new("mailer.toml")).unwrap();
        registry.insert(v2);
        assert_eq!(registry.types(), ["receipt", "welcome"]);
        assert!(registry.generation() > generation);
        // The dropped type is free for the other plugin now.
        registry
            .check_types(&rival, Path::new("rival.toml"))
            .unwrap();
        registry.insert(rival);
        assert_eq!(registry.handler("digest").unwrap().plugin.name, "rival");
        registry.remove("mailer");
        assert_eq!(registry.types(), ["digest"]);
        assert_eq!(registry.names(), ["rival"]);
    }

    #[test]
    fn a_new_version_keeps_the_rate_limit_bucket_while_the_rate_is_the_same() {
        let rt = runtime();
        let wasm = plugin_wasm("examples", "noop");
        let load = |manifest: &str| {
            let paths = (Path::new("noop.wasm"), Path::new("noop.toml"));
            build(&rt, "noop", &wasm, Some(manifest.into()), paths, 64 << 20).unwrap()
        };
        let registry = Registry::new();
        registry.insert(load("rate_per_second = 5\n"));
        let first = registry.handler("noop").unwrap().rate.clone().unwrap();
        // One instant throughout: compiling the next versions takes a while
        // (seconds on a loaded machine), and the bucket refills with time.
        let at = Instant::now();
        first.take(5, at);
        // A swap with the same rate: the same (emptied) bucket.
        registry.insert(load("rate_per_second = 5\nfuel = 2_000_000\n"));
        let second = registry.handler("noop").unwrap().rate.clone().unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(second.available(at).0, 0);
        // A new rate: a new bucket.
        registry.insert(load("rate_per_second = 7\n"));
        let third = registry.handler("noop").unwrap().rate.clone().unwrap();
        assert!(!Arc::ptr_eq(&first, &third));
    }
}

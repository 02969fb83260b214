//! The registry: which plugin version handles each job type right now.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio::sync::Semaphore;

use super::{Manifest, ManifestError, valid_type_name};
use crate::runtime::{CompiledPlugin, Runtime, RuntimeError};
use crate::telemetry::TypeMetrics;

/// One loaded plugin version.
#[derive(Debug)]
pub struct LoadedPlugin {
    pub job_type: String,
    pub manifest: Manifest,
    pub compiled: CompiledPlugin,
    /// Attempts of this type in flight on this host (`manifest.concurrency`).
    pub slots: Arc<Semaphore>,
    pub metrics: TypeMetrics,
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

    /// Installs `plugin` as the handler of its type, replacing any other version.
    pub fn insert(&self, plugin: LoadedPlugin) {
        let mut map = self.plugins.write().unwrap_or_else(|e| e.into_inner());
        map.insert(plugin.job_type.clone(), Arc::new(plugin));
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<LoadedPlugin>>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (insert is one call), so a poisoned lock is still good to read.
        self.plugins.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads every `NAME.wasm` (with its optional `NAME.toml`) in `dir`.
    /// Fails on the first plugin that does not load, naming it.
    pub fn load_dir(
        &self,
        runtime: &Runtime,
        dir: &Path,
        max_memory_bytes: usize,
    ) -> Result<Vec<String>, LoadError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| LoadError::Io { path, source }
        };
        let mut wasm_files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|ext| ext == "wasm"))
            .collect();
        wasm_files.sort();
        let mut loaded = Vec::new();
        for path in wasm_files {
            let plugin = load_one(runtime, &path, max_memory_bytes)?;
            tracing::info!(
                job_type = %plugin.job_type,
                digest = %plugin.compiled.digest,
                "loaded plugin"
            );
            loaded.push(plugin.job_type.clone());
            self.insert(plugin);
        }
        Ok(loaded)
    }
}

fn load_one(
    runtime: &Runtime,
    path: &Path,
    max_memory_bytes: usize,
) -> Result<LoadedPlugin, LoadError> {
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned();
    if !valid_type_name(&name) {
        return Err(LoadError::BadName {
            path: path.to_owned(),
            name,
        });
    }
    let manifest_path = path.with_extension("toml");
    let manifest = match std::fs::read_to_string(&manifest_path) {
        Ok(text) => Manifest::parse(&text).map_err(|source| LoadError::Manifest {
            path: manifest_path.clone(),
            source,
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
        Err(source) => {
            return Err(LoadError::Io {
                path: manifest_path,
                source,
            });
        }
    };
    if manifest.limits.memory_bytes > max_memory_bytes {
        return Err(LoadError::MemoryOverHostLimit {
            path: manifest_path,
            limit_mb: max_memory_bytes >> 20,
        });
    }
    let wasm = std::fs::read(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    let compiled = runtime.compile(&name, &wasm)?;
    Ok(LoadedPlugin {
        slots: Arc::new(Semaphore::new(manifest.concurrency as usize)),
        metrics: TypeMetrics::new(&name),
        job_type: name,
        manifest,
        compiled,
    })
}

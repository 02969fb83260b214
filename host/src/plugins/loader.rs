//! The plugins directory, kept in step with the registry: loaded at start,
//! watched afterwards (hot reload), and written by uploads.
//!
//! A change is found by content, not by timestamps: a type's `.wasm` digest
//! and manifest text are compared with the version serving, and only a
//! difference is compiled (off the async executor) and swapped in. Files
//! that do not load never replace a working version: the failure is logged,
//! counted and shown by `GET /admin/plugins`, and the version before keeps
//! serving. A type whose `.wasm` is gone stops being claimed; its queued
//! jobs wait.
//!
//! Events from the file system are debounced, and the directory is also
//! looked at every [`RESCAN`]: watchers miss changes on some mounts (a
//! volume shared between containers), and a look that finds nothing new
//! costs a read and a hash of each `.wasm`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::registry::{LoadFailure, build};
use super::{LoadError, LoadedPlugin, Registry};
use crate::runtime::{Runtime, digest_of};

/// File-system events closer together than this are one change.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// The longest the directory goes without a look, events or not.
pub const RESCAN: Duration = Duration::from_secs(10);

/// What a look at one type's files did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    /// A new type, or a new version of one: the digest now serving.
    Loaded(String),
    /// The files did not load; the version before (if any) keeps serving.
    Failed(String),
    /// The `.wasm` is gone: the type is no longer claimed.
    Removed,
}

/// An uploaded version, checked and compiled ([`Loader::check`]), ready to
/// [install](Loader::install).
pub struct Checked {
    plugin: LoadedPlugin,
    manifest: Option<String>,
}

impl Checked {
    /// The manifest it runs with.
    pub fn manifest(&self) -> Option<&str> {
        self.manifest.as_deref()
    }
}

pub struct Loader {
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    dir: PathBuf,
    max_memory_bytes: usize,
    /// One change at a time: an upload's two files and the watcher's look
    /// never interleave.
    lock: Mutex<()>,
    /// `.wasm` files whose names are not job type names, warned about once.
    misnamed: Mutex<BTreeSet<PathBuf>>,
}

impl Loader {
    pub fn new(
        runtime: Arc<Runtime>,
        registry: Arc<Registry>,
        dir: PathBuf,
        max_memory_bytes: usize,
    ) -> Loader {
        Loader {
            runtime,
            registry,
            dir,
            max_memory_bytes,
            lock: Mutex::new(()),
            misnamed: Mutex::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn paths(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.wasm")),
            self.dir.join(format!("{name}.toml")),
        )
    }

    /// Loads every plugin in the directory, at start. Strict: the first
    /// plugin that does not load fails the start, naming it.
    pub fn load_all(&self) -> Result<Vec<String>, LoadError> {
        let _one = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let (types, misnamed) = self.names_on_disk()?;
        if let Some(path) = misnamed.into_iter().next() {
            return Err(LoadError::BadName {
                name: path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                path,
            });
        }
        let mut loaded = Vec::new();
        for name in types {
            let (wasm_path, manifest_path) = self.paths(&name);
            let wasm = std::fs::read(&wasm_path).map_err(|source| LoadError::Io {
                path: wasm_path.clone(),
                source,
            })?;
            let manifest = read_manifest(&manifest_path)?;
            let plugin = self.build(&name, &wasm, manifest)?;
            self.registry.check_types(&plugin, &manifest_path)?;
            tracing::info!(plugin = name, digest = %plugin.compiled.digest, types = ?plugin.job_types, "loaded plugin");
            self.registry.insert(plugin);
            loaded.push(name);
        }
        Ok(loaded)
    }

    /// Brings the registry in step with the directory: every plugin on disk
    /// or loaded is looked at. Blocking (it may compile).
    pub fn sync(&self) -> Vec<(String, Change)> {
        let _one = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: BTreeSet<String> = match self.names_on_disk() {
            Ok((names, misnamed)) => {
                let mut warned = self.misnamed.lock().unwrap_or_else(|e| e.into_inner());
                for path in misnamed {
                    if !warned.contains(&path) {
                        tracing::warn!(path = %path.display(), "ignoring a .wasm whose name is not a valid plugin name (1-64 of a-z, 0-9, _ and -, starting with a letter)");
                        warned.insert(path);
                    }
                }
                names.into_iter().collect()
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the plugins directory failed; nothing changed");
                return Vec::new();
            }
        };
        names.extend(self.registry.names());
        names.extend(self.registry.failures().into_keys());
        let mut changes: Vec<(String, Change)> = names
            .into_iter()
            .map(|name| {
                let change = self.look(&name);
                (name, change)
            })
            .collect();
        // A plugin refused because another handled one of its types may
        // load now that the other has let it go (both changed at once).
        for (name, change) in &mut changes {
            if matches!(change, Change::Failed(_)) {
                match self.look(name) {
                    Change::Unchanged => {}
                    again => *change = again,
                }
            }
        }
        changes.retain(|(_, change)| *change != Change::Unchanged);
        changes
    }

    /// Looks at one type's files (the lock held).
    fn look(&self, name: &str) -> Change {
        let (wasm_path, manifest_path) = self.paths(name);
        let wasm = match std::fs::read(&wasm_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return if self.registry.remove(name).is_some() {
                    tracing::warn!(
                        plugin = name,
                        "plugin removed: its jobs are no longer claimed here; queued ones wait"
                    );
                    Change::Removed
                } else {
                    Change::Unchanged
                };
            }
            Err(source) => {
                let error = LoadError::Io {
                    path: wasm_path,
                    source,
                };
                return self.failed(name, String::new(), None, &error);
            }
            Ok(wasm) => wasm,
        };
        let manifest = match read_manifest(&manifest_path) {
            Ok(text) => text,
            Err(e) => return self.failed(name, digest_of(&wasm), None, &e),
        };
        let digest = digest_of(&wasm);
        let serving = self.registry.get(name);
        if serving
            .as_ref()
            .is_some_and(|p| p.compiled.digest == digest && p.manifest_text == manifest)
        {
            return Change::Unchanged;
        }
        if self.registry.failure(name).is_some_and(|f| {
            f.digest == digest
                && f.manifest_text == manifest
                && f.types_generation
                    .is_none_or(|g| g == self.registry.generation())
        }) {
            return Change::Unchanged; // the same broken files, reported already
        }
        let built = self
            .build(name, &wasm, manifest.clone())
            .and_then(|plugin| {
                self.registry.check_types(&plugin, &manifest_path)?;
                Ok(plugin)
            });
        match built {
            Ok(plugin) => {
                let digest = plugin.compiled.digest.clone();
                let old = self.registry.insert(plugin);
                tracing::info!(
                    plugin = name,
                    digest,
                    replaced = old.as_ref().map(|p| p.compiled.digest.as_str()),
                    "loaded plugin"
                );
                Change::Loaded(digest)
            }
            Err(e) => self.failed(name, digest, manifest, &e),
        }
    }

    fn failed(
        &self,
        name: &str,
        digest: String,
        manifest_text: Option<String>,
        error: &LoadError,
    ) -> Change {
        let serving = self.registry.get(name);
        tracing::error!(
            plugin = name,
            error = %error,
            still_serving = serving.as_ref().map(|p| p.compiled.digest.as_str()),
            "plugin files did not load; the version before keeps serving"
        );
        let types_generation =
            matches!(error, LoadError::TypeTaken { .. }).then(|| self.registry.generation());
        let error = error.to_string();
        self.registry.fail(
            name,
            LoadFailure {
                error: error.clone(),
                at: SystemTime::now(),
                digest,
                manifest_text,
                types_generation,
            },
        );
        Change::Failed(error)
    }

    fn build(
        &self,
        name: &str,
        wasm: &[u8],
        manifest: Option<String>,
    ) -> Result<LoadedPlugin, LoadError> {
        let (wasm_path, manifest_path) = self.paths(name);
        build(
            &self.runtime,
            name,
            wasm,
            manifest,
            (&wasm_path, &manifest_path),
            self.max_memory_bytes,
        )
    }

    /// Checks and compiles an uploaded version, writing nothing. `manifest`
    /// `None` keeps the manifest on disk, if any.
    pub fn check(
        &self,
        name: &str,
        wasm: &[u8],
        manifest: Option<String>,
    ) -> Result<Checked, LoadError> {
        let manifest = match manifest {
            Some(text) => Some(text),
            None => read_manifest(&self.paths(name).1)?,
        };
        let plugin = self.build(name, wasm, manifest.clone())?;
        self.registry.check_types(&plugin, &self.paths(name).1)?;
        Ok(Checked { plugin, manifest })
    }

    /// Installs a checked version: its files written (each to a temporary
    /// name, then renamed), then swapped in. On an error the version before
    /// keeps serving.
    pub fn install(&self, checked: Checked, wasm: &[u8]) -> Result<Arc<LoadedPlugin>, LoadError> {
        let installed = self.commit(checked.plugin, wasm, checked.manifest.as_deref())?;
        tracing::info!(plugin = %installed.name, digest = %installed.compiled.digest, "plugin uploaded");
        Ok(installed)
    }

    /// Whether `name` is served by exactly this digest and manifest.
    pub fn serves(&self, name: &str, digest: &str, manifest: Option<&str>) -> bool {
        self.registry
            .get(name)
            .is_some_and(|p| p.compiled.digest == digest && p.manifest_text.as_deref() == manifest)
    }

    /// Installs a version from the plugin catalog (`manifest` `None`: no
    /// manifest). A version that does not load is recorded as the type's
    /// failure, as a broken file in the directory would be.
    pub fn follow(
        &self,
        name: &str,
        wasm: &[u8],
        manifest: Option<String>,
    ) -> Result<(), LoadError> {
        let plugin = self
            .build(name, wasm, manifest.clone())
            .and_then(|plugin| {
                self.registry.check_types(&plugin, &self.paths(name).1)?;
                Ok(plugin)
            })
            .inspect_err(|e| {
                let _one = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                self.failed(name, digest_of(wasm), manifest.clone(), e);
            })?;
        self.commit(plugin, wasm, manifest.as_deref()).map(drop)
    }

    /// Makes the type's files exactly `wasm` and `manifest` (`None`: none)
    /// and swaps in `plugin`, built from them.
    fn commit(
        &self,
        plugin: LoadedPlugin,
        wasm: &[u8],
        manifest: Option<&str>,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        let _one = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let name = plugin.name.clone();
        let (wasm_path, manifest_path) = self.paths(&name);
        // Checked again under the lock: another plugin may have taken one
        // of its types since.
        self.registry.check_types(&plugin, &manifest_path)?;
        match manifest {
            Some(text) => write_atomically(&manifest_path, text.as_bytes())?,
            None => match std::fs::remove_file(&manifest_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(LoadError::Io {
                        path: manifest_path,
                        source,
                    });
                }
            },
        }
        write_atomically(&wasm_path, wasm)?;
        self.registry.insert(plugin);
        Ok(self.registry.get(&name).expect("inserted above"))
    }

    /// Deletes a type's files and stops serving it. False if it had neither.
    pub fn uninstall(&self, name: &str) -> Result<bool, LoadError> {
        let _one = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let (wasm_path, manifest_path) = self.paths(name);
        let mut found = false;
        for path in [&wasm_path, &manifest_path] {
            match std::fs::remove_file(path) {
                Ok(()) => found = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(LoadError::Io {
                        path: path.clone(),
                        source,
                    });
                }
            }
        }
        let served = self.registry.remove(name).is_some();
        if served {
            tracing::warn!(
                plugin = name,
                "plugin deleted: its jobs are no longer claimed here; queued ones wait"
            );
        }
        Ok(found || served)
    }

    /// The job types the directory has a `.wasm` for, and the `.wasm` files
    /// whose names are not job type names.
    fn names_on_disk(&self) -> Result<(Vec<String>, Vec<PathBuf>), LoadError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| LoadError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let (mut types, mut misnamed) = (Vec::new(), Vec::new());
        for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            if path.extension().is_none_or(|ext| ext != "wasm") {
                continue;
            }
            match path.file_stem().and_then(|s| s.to_str()) {
                Some(name) if super::valid_type_name(name) => types.push(name.to_owned()),
                _ => misnamed.push(path),
            }
        }
        types.sort();
        misnamed.sort();
        Ok((types, misnamed))
    }

    /// Watches the directory until `stop`, syncing after each burst of
    /// changes and every [`RESCAN`].
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        use notify_debouncer_mini::notify::RecursiveMode;
        let changed = Arc::new(Notify::new());
        let signal = changed.clone();
        let debouncer = notify_debouncer_mini::new_debouncer(
            DEBOUNCE,
            move |events: notify_debouncer_mini::DebounceEventResult| {
                if events.is_ok_and(|events| !events.is_empty()) {
                    signal.notify_one();
                }
            },
        );
        let _watching = match debouncer {
            Ok(mut debouncer) => match debouncer
                .watcher()
                .watch(&self.dir, RecursiveMode::NonRecursive)
            {
                Ok(()) => Some(debouncer),
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot watch the plugins directory; looking every {RESCAN:?} instead");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the plugins directory; looking every {RESCAN:?} instead");
                None
            }
        };
        loop {
            tokio::select! {
                () = changed.notified() => {}
                () = tokio::time::sleep(RESCAN) => {}
                () = stop.cancelled() => return,
            }
            let loader = self.clone();
            match tokio::task::spawn_blocking(move || loader.sync()).await {
                Ok(changes) => {
                    for (name, change) in changes {
                        tracing::debug!(plugin = name, ?change, "plugins directory changed");
                    }
                }
                Err(e) => tracing::error!(error = %e, "syncing the plugins directory panicked"),
            }
        }
    }
}

fn read_manifest(path: &Path) -> Result<Option<String>, LoadError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LoadError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over
/// `path`: a reader (the watcher, another host on a shared volume) sees the
/// old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    let tmp = path.with_extension(format!(
        "upload-{}-{:08x}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ));
    crate::runtime::write_synced(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            LoadError::Io {
                path: path.to_owned(),
                source,
            }
        })
}

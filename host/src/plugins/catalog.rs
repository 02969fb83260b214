//! The plugin catalog: in scale-out, the plugins uploaded through the admin
//! API are kept in the shared database (each `.wasm` once, by digest), and
//! every host follows the catalog into its own plugins directory, so all
//! hosts converge on the same versions within [`FOLLOW_EVERY`].
//!
//! The catalog names, per job type, the version to run (or that the type
//! was deleted), numbered from one sequence (drawn under the row's lock, so
//! the later of two racing uploads has the greater number): a host applies
//! an entry whenever its version is not the last it applied for that type.
//! So an upload to any host reaches every host, the latest upload wins
//! everywhere, and a host restarted with stale files catches up on its
//! first look. Types that are only on a host's disk (dropped in by hand)
//! are left alone, unless the API deleted that type: then the deletion
//! reaches every host.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Loader;
use crate::runtime::digest_of;
use crate::store::StoreResult;

/// How often a host looks at the catalog.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// One type's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub job_type: String,
    /// `None`: deleted.
    pub digest: Option<String>,
    /// The manifest's text (`None`: no manifest, every default).
    pub manifest: Option<String>,
    /// Greater is newer, across all types.
    pub version: i64,
}

#[async_trait::async_trait]
pub trait Catalog: Send + Sync + 'static {
    /// Records `wasm` (stored once per digest) as the version `job_type`
    /// runs; returns the entry's version.
    async fn publish(
        &self,
        job_type: &str,
        wasm: &[u8],
        manifest: Option<&str>,
    ) -> StoreResult<i64>;

    /// Records that `job_type` is deleted; false if it had no live entry.
    async fn unpublish(&self, job_type: &str) -> StoreResult<bool>;

    /// Every entry, deleted ones included.
    async fn entries(&self) -> StoreResult<Vec<Published>>;

    /// The `.wasm` of a digest.
    async fn wasm(&self, digest: &str) -> StoreResult<Option<Vec<u8>>>;
}

/// Applies the catalog to this host until `stop`.
pub async fn follow(loader: Arc<Loader>, catalog: Arc<dyn Catalog>, stop: CancellationToken) {
    let mut applied: HashMap<String, i64> = HashMap::new();
    let mut unreachable = false;
    loop {
        match catalog.entries().await {
            Ok(entries) => {
                if unreachable {
                    tracing::info!("the plugin catalog is reachable again");
                    unreachable = false;
                }
                for entry in entries {
                    // The catalog is the truth: any other version than the
                    // one applied last is applied.
                    if applied.get(&entry.job_type) == Some(&entry.version) {
                        continue;
                    }
                    match apply(&loader, &*catalog, &entry).await {
                        Ok(()) => {
                            applied.insert(entry.job_type, entry.version);
                        }
                        // Not applied: looked at again next time.
                        Err(e) => {
                            tracing::warn!(job_type = %entry.job_type, error = %e, "could not fetch a plugin from the catalog")
                        }
                    }
                }
            }
            Err(e) => {
                if !unreachable {
                    tracing::warn!(error = %e, "cannot read the plugin catalog; plugins here stay as they are");
                    unreachable = true;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Makes this host run what `entry` names. A version that does not load is
/// reported like a broken file (the one before keeps serving) and counts as
/// applied; only a failure to fetch it is retried.
async fn apply(
    loader: &Arc<Loader>,
    catalog: &dyn Catalog,
    entry: &Published,
) -> Result<(), String> {
    let job_type = entry.job_type.clone();
    let Some(digest) = &entry.digest else {
        let loader = loader.clone();
        let removed = tokio::task::spawn_blocking(move || loader.uninstall(&job_type))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if removed {
            tracing::info!(job_type = %entry.job_type, "plugin deleted on another host: removed here too");
        }
        return Ok(());
    };
    if loader.serves(&job_type, digest, entry.manifest.as_deref()) {
        return Ok(());
    }
    let wasm = catalog
        .wasm(digest)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("the catalog has no .wasm for {digest}"))?;
    if digest_of(&wasm) != *digest {
        return Err(format!(
            "the catalog's .wasm for {digest} has another digest"
        ));
    }
    let (loader, manifest) = (loader.clone(), entry.manifest.clone());
    let done = tokio::task::spawn_blocking(move || loader.follow(&job_type, &wasm, manifest))
        .await
        .map_err(|e| e.to_string())?;
    match done {
        Ok(()) => {
            tracing::info!(job_type = %entry.job_type, digest, "plugin from the catalog installed")
        }
        // Writing the files failed: try again next time.
        Err(e @ super::LoadError::Io { .. }) => return Err(e.to_string()),
        // It does not load here: recorded as the type's failure.
        Err(_) => {}
    }
    Ok(())
}

//! Plugins: their manifests and the registry of loaded versions.
//!
//! A plugin on disk is `NAME.wasm` with an optional `NAME.toml` manifest
//! beside it; it handles job type `NAME`, or the types its manifest lists in
//! `job_types` (no type is handled by two plugins). The registry maps each
//! job type to a [`Handler`]: the loaded version behind an `Arc` and the
//! type's own slots and rate on this host. An attempt holds its own `Arc`,
//! so a version swapped out later finishes the attempts it started. The
//! [`Loader`] keeps the registry in step with the directory (hot reload) and
//! installs uploads.

pub mod catalog;
mod loader;
mod manifest;
mod rate;
mod registry;

pub use catalog::{Catalog, Published};
pub use loader::{Change, Checked, Loader};
pub use manifest::{Manifest, ManifestError};
pub use rate::RateLimit;
pub use registry::{Handler, LoadError, LoadFailure, LoadedPlugin, Registry};

/// Longest job type name.
pub const MAX_TYPE_LEN: usize = 64;

/// Job type names: 1 to 64 of `a-z`, `0-9`, `_` and `-`, starting with a letter.
pub fn valid_type_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= MAX_TYPE_LEN
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::valid_type_name;

    #[test]
    fn type_names() {
        for ok in ["email_welcome", "a", "resize-image2"] {
            assert!(valid_type_name(ok), "{ok}");
        }
        for bad in ["", "Email", "1abc", "a b", "../x", "é", &"a".repeat(65)] {
            assert!(!valid_type_name(bad), "{bad}");
        }
    }
}

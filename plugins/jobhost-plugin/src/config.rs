//! The plugin's configuration: the `[config]` table of its manifest (a
//! value written `{ env = "VAR" }` comes from the host's environment).

use crate::{Failure, bindings, fatal};

/// The value of `key`, if the manifest sets it.
pub fn get(key: &str) -> Option<String> {
    bindings::jobhost::plugin::config::get(key)
}

/// The value of `key`, or a fatal failure naming it: for settings the
/// plugin cannot work without.
pub fn require(key: &str) -> Result<String, Failure> {
    get(key).ok_or_else(|| fatal(format!("the manifest's [config] has no {key:?}")))
}

//! The plugin's durable key-value store: private to the plugin, kept in the
//! job store, shared by every host. Keys are 1 to 256 bytes, values at most
//! 64 KiB. Its use is idempotent side effects:
//!
//! ```ignore
//! if !kv::set_if_absent(&format!("welcome:{user}"), b"sending")? {
//!     return Ok(()); // another attempt (or a duplicate job) got there first
//! }
//! ```

use crate::bindings::jobhost::plugin::kv;
use crate::{Failure, fatal, retry};

pub use kv::Error;

impl From<Error> for Failure {
    /// A key or value out of bounds is fatal; an unreachable store, retryable.
    fn from(e: Error) -> Failure {
        match e {
            Error::Invalid(m) => fatal(format!("kv: {m}")),
            Error::Unavailable(m) => retry(format!("kv: {m}")),
        }
    }
}

/// The value under `key`, if any.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    kv::get(key)
}

/// Stores `value` under `key`, replacing what was there.
pub fn set(key: &str, value: &[u8]) -> Result<(), Error> {
    kv::set(key, value)
}

/// Stores `value` under `key` only if the key is free: true for exactly
/// one caller, however many race.
pub fn set_if_absent(key: &str, value: &[u8]) -> Result<bool, Error> {
    kv::set_if_absent(key, value)
}

/// Removes `key`; true if it was set.
pub fn delete(key: &str) -> Result<bool, Error> {
    kv::delete(key)
}

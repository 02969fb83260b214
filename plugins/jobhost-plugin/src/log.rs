//! Lines in the host's log, tagged with the plugin, the job and the attempt
//! (longer than 4 KiB: truncated).

use crate::bindings::jobhost::plugin::host::{self, Level};

pub fn debug(message: &str) {
    host::log(Level::Debug, message);
}

pub fn info(message: &str) {
    host::log(Level::Info, message);
}

pub fn warn(message: &str) {
    host::log(Level::Warn, message);
}

pub fn error(message: &str) {
    host::log(Level::Error, message);
}

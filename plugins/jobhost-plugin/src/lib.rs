//! The SDK for jobhost plugins: a job handler in about ten lines.
//!
//! ```ignore
//! use jobhost_plugin::{Failure, Job, fatal};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Greet { name: String }
//!
//! struct Greeter;
//!
//! impl jobhost_plugin::Handler for Greeter {
//!     type Payload = Greet;
//!     type Output = String;
//!     fn handle(job: Job<Greet>) -> Result<String, Failure> {
//!         if job.payload.name.is_empty() {
//!             return Err(fatal("name is empty"));
//!         }
//!         Ok(format!("hello, {}", job.payload.name))
//!     }
//! }
//!
//! jobhost_plugin::export!(Greeter);
//! ```
//!
//! The payload arrives deserialised (a payload that does not fit `Payload`
//! fails the job as `fatal`, naming the problem); whatever `handle` returns
//! is stored as the job's JSON result (`()` stores none). A [`Failure`] says
//! whether the job is retried ([`retry`]) or goes straight to the
//! dead-letter queue ([`fatal`]); the errors of [`kv`], [`config`] and
//! [`http`] convert into one with `?`, retryable when retrying could help.
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm`
//! in `target/wasm32-wasip2/release/` is the plugin.

pub mod config;
pub mod http;
pub mod kv;
pub mod log;

use std::fmt;

pub use serde;
pub use serde_json;

/// The bindings of the jobhost WIT world (`wit/jobhost.wit`), for what the
/// SDK does not wrap.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "handler",
        pub_export_macro: true,
        export_macro_name: "__export_handler_world",
        default_bindings_module: "jobhost_plugin::bindings",
    });
}

use bindings::jobhost::plugin::types;

/// One attempt of one job, with its payload deserialised.
#[derive(Debug, Clone)]
pub struct Job<P> {
    /// Stable across attempts and replays: a good idempotency key.
    pub id: u64,
    pub job_type: String,
    pub payload: P,
    /// This attempt's number, from 1.
    pub attempt: u32,
    pub max_attempts: u32,
}

impl<P> Job<P> {
    /// Whether a retryable failure now sends the job to the dead-letter
    /// queue instead.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

/// Why an attempt did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Try again later, with backoff, while attempts remain.
    Retry(String),
    /// This job can never succeed: to the dead-letter queue now.
    Fatal(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Retry(m) => write!(f, "retry: {m}"),
            Failure::Fatal(m) => write!(f, "fatal: {m}"),
        }
    }
}

/// A failure worth retrying (a timeout, a rate limit, a provider's 5xx).
pub fn retry(message: impl fmt::Display) -> Failure {
    Failure::Retry(message.to_string())
}

/// A failure no retry can fix (a bad payload, a 4xx from the provider).
pub fn fatal(message: impl fmt::Display) -> Failure {
    Failure::Fatal(message.to_string())
}

/// Reports how far this attempt has got (0-100); `GET /jobs/{id}` shows it.
/// Only changes reach the store, so calling it often is cheap.
pub fn progress(percent: u8) {
    bindings::jobhost::plugin::host::progress(percent);
}

/// A job handler. Implement it and name the type in [`export!`].
pub trait Handler {
    /// The payload's shape, deserialised from the submitted JSON.
    type Payload: serde::de::DeserializeOwned;
    /// The result's shape, stored as the job's JSON result (`()`: none).
    type Output: serde::Serialize;

    fn handle(job: Job<Self::Payload>) -> Result<Self::Output, Failure>;
}

#[doc(hidden)]
pub fn __run<H: Handler>(job: types::Job) -> Result<Option<String>, types::Failure> {
    let payload = serde_json::from_str::<H::Payload>(&job.payload).map_err(|e| {
        types::Failure::Fatal(format!(
            "the payload does not fit {}: {e}",
            std::any::type_name::<H::Payload>()
        ))
    })?;
    let job = Job {
        id: job.id,
        job_type: job.job_type,
        payload,
        attempt: job.attempt,
        max_attempts: job.max_attempts,
    };
    match H::handle(job) {
        Ok(output) => match serde_json::to_value(&output) {
            Ok(serde_json::Value::Null) => Ok(None),
            Ok(value) => Ok(Some(value.to_string())),
            Err(e) => Err(types::Failure::Fatal(format!(
                "the result could not be written as JSON: {e}"
            ))),
        },
        Err(Failure::Retry(m)) => Err(types::Failure::Retry(m)),
        Err(Failure::Fatal(m)) => Err(types::Failure::Fatal(m)),
    }
}

/// Exports a [`Handler`] as the plugin's `handle`.
#[macro_export]
macro_rules! export {
    ($handler:ty) => {
        struct __JobhostPlugin;

        impl $crate::bindings::Guest for __JobhostPlugin {
            fn handle(
                job: $crate::bindings::jobhost::plugin::types::Job,
            ) -> ::core::result::Result<
                ::core::option::Option<::std::string::String>,
                $crate::bindings::jobhost::plugin::types::Failure,
            > {
                $crate::__run::<$handler>(job)
            }
        }

        $crate::bindings::__export_handler_world!(__JobhostPlugin with_types_in $crate::bindings);
    };
}

//! jobhost: a durable job host that runs every attempt in a sandboxed
//! WebAssembly component.
//!
//! How a job travels, and which module owns each step:
//!
//! - [`api`]: the HTTP surface (axum). Validates input, enqueues through the
//!   store, renders every error as one JSON shape. Decides nothing about jobs.
//! - [`store`]: the durable truth. The [`store::Store`] contract and one
//!   folder per backend (`sqlite/`: embedded, one host; `postgres/`: shared
//!   by many hosts). Every state change happens here, fenced by the lease
//!   token where a lease exists.
//! - [`dispatch`]: wake-up hints from "a job became ready" to the worker, in
//!   process and between hosts (PostgreSQL NOTIFY, Redis Streams). Hints
//!   only: losing every one of them delays jobs, never loses one.
//! - [`worker`]: the producer (claims batches of ready jobs for the types that
//!   have a plugin) and the executor (runs one attempt, records its outcome).
//! - [`runtime`]: the only module that touches wasmtime. One engine, the
//!   pooling allocator, a fresh sandbox per attempt with fuel, deadline and
//!   memory cap.
//! - [`plugins`]: manifests and the registry of loaded plugin versions.
//! - [`maintenance`]: the reaper (expired leases), the promoter (due
//!   scheduled jobs) and the pruner (retention).
//! - [`schedules`]: cron: periodic jobs, one per tick however many hosts.
//! - [`job`], [`backoff`], [`clock`]: the vocabulary: states and transitions,
//!   retry delays, injectable time.
//! - [`telemetry`]: metric names and the Prometheus recorder.
//! - [`server`]: assembles all of the above for `jobhost serve`.

pub mod api;
pub mod backoff;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod job;
pub mod maintenance;
pub mod plugins;
pub mod runtime;
pub mod schedules;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod worker;

#[cfg(test)]
mod testing;

//! What a plugin can reach: the per-attempt state and the host imports.
//! Each capability given to plugins is a unit here; none is granted unless
//! listed.

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::jobhost::plugin::host::{Host, Level};

/// Longest log line kept from a plugin.
const MAX_LOG_LINE: usize = 4096;

/// Everything one attempt's sandbox holds. Dropped with the attempt.
pub(super) struct AttemptState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub memory: MemoryCap,
    pub job_id: i64,
    pub plugin: String,
}

impl WasiView for AttemptState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl Host for AttemptState {
    fn log(&mut self, level: Level, message: String) {
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [truncated]");
        }
        let (job, plugin) = (self.job_id, self.plugin.as_str());
        match level {
            Level::Trace => tracing::trace!(target: "plugin", plugin, job, "{message}"),
            Level::Debug => tracing::debug!(target: "plugin", plugin, job, "{message}"),
            Level::Info => tracing::info!(target: "plugin", plugin, job, "{message}"),
            Level::Warn => tracing::warn!(target: "plugin", plugin, job, "{message}"),
            Level::Error => tracing::error!(target: "plugin", plugin, job, "{message}"),
        }
    }
}

impl super::jobhost::plugin::types::Host for AttemptState {}

/// The attempt's memory cap. Remembers a denied growth, so the host can say
/// "memory limit exceeded" instead of the trap the guest turns it into.
pub(super) struct MemoryCap {
    limit: usize,
    denied: bool,
}

impl MemoryCap {
    pub fn new(limit: usize) -> Self {
        MemoryCap {
            limit,
            denied: false,
        }
    }

    pub fn denied(&self) -> bool {
        self.denied
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired <= self.limit;
        self.denied |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

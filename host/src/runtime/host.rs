//! What a plugin can reach: the per-attempt state and the host imports.
//! Each capability given to plugins is a unit here; none is granted unless
//! listed.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
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
        let message = super::cap_plugin_text(message, MAX_LOG_LINE);
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

/// A plugin's stderr: accepts every write and keeps only the last
/// `capacity` bytes, so a chatty plugin never fails on a full pipe and a
/// panic message written last is always kept.
#[derive(Clone)]
pub(super) struct StderrTail {
    buf: Arc<Mutex<VecDeque<u8>>>,
    capacity: usize,
}

impl StderrTail {
    pub fn new(capacity: usize) -> Self {
        StderrTail {
            buf: Arc::default(),
            capacity,
        }
    }

    fn push(&self, bytes: &[u8]) {
        // A poisoned lock only means another writer panicked mid-push; the
        // bytes are diagnostics, so keep going with what is there.
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = &bytes[bytes.len().saturating_sub(self.capacity)..];
        let overflow = (buf.len() + bytes.len()).saturating_sub(self.capacity);
        buf.drain(..overflow);
        buf.extend(bytes);
    }

    pub fn contents(&self) -> Vec<u8> {
        let buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        buf.iter().copied().collect()
    }
}

impl IsTerminal for StderrTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrTail {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for StderrTail {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for StderrTail {
    async fn ready(&mut self) {}
}

impl AsyncWrite for StderrTail {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

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

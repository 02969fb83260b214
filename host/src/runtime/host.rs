//! What a plugin can reach: the per-attempt state and the host imports.
//! Each capability given to plugins is a unit here; none is granted unless
//! listed.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::jobhost::plugin::host::{Host, Level};
use super::jobhost::plugin::{config, kv};
use super::outbound::Caller;
use super::{KvWrite, Services};

/// Longest log line kept from a plugin.
const MAX_LOG_LINE: usize = 4096;
/// Longest key of the plugin key-value store, in bytes.
pub const MAX_KV_KEY: usize = 256;
/// Largest value of the plugin key-value store, in bytes.
pub const MAX_KV_VALUE: usize = 64 * 1024;

/// Everything one attempt's sandbox holds. Dropped with the attempt.
pub(super) struct AttemptState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub memory: MemoryCap,
    /// The lease the attempt runs under (fences its progress writes).
    pub token: i64,
    /// The plugin, the job and the grants; also the `wasi:http` hooks.
    pub caller: Caller,
    pub services: Arc<dyn Services>,
    pub http: WasiHttpCtx,
    /// The last progress written, so only changes are.
    pub progress: Option<u8>,
}

impl WasiView for AttemptState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for AttemptState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.caller,
        }
    }
}

impl Host for AttemptState {
    fn log(&mut self, level: Level, message: String) {
        let message = super::cap_plugin_text(message, MAX_LOG_LINE);
        let (job, plugin) = (self.caller.job_id, self.caller.plugin.as_str());
        match level {
            Level::Trace => tracing::trace!(target: "plugin", plugin, job, "{message}"),
            Level::Debug => tracing::debug!(target: "plugin", plugin, job, "{message}"),
            Level::Info => tracing::info!(target: "plugin", plugin, job, "{message}"),
            Level::Warn => tracing::warn!(target: "plugin", plugin, job, "{message}"),
            Level::Error => tracing::error!(target: "plugin", plugin, job, "{message}"),
        }
    }

    async fn progress(&mut self, percent: u8) {
        let percent = percent.min(100);
        if self.progress == Some(percent) {
            return;
        }
        self.progress = Some(percent);
        // Progress is advisory: a failed write is logged, never the
        // attempt's failure.
        if let Err(e) = self
            .services
            .progress(self.caller.job_id, self.token, percent)
            .await
        {
            let Caller { plugin, job_id, .. } = &self.caller;
            tracing::warn!(plugin = %plugin, job = job_id, error = %e, "could not record progress");
        }
    }
}

impl config::Host for AttemptState {
    fn get(&mut self, key: String) -> Option<String> {
        self.caller.grants.config.get(&key).cloned()
    }
}

impl AttemptState {
    fn kv_key(key: &str) -> Result<(), kv::Error> {
        if key.is_empty() || key.len() > MAX_KV_KEY {
            return Err(kv::Error::Invalid(format!(
                "a key must be 1 to {MAX_KV_KEY} bytes; this one is {}",
                key.len()
            )));
        }
        if key.contains('\0') {
            return Err(kv::Error::Invalid("a key must not contain NUL".into()));
        }
        Ok(())
    }

    fn kv_value(value: &[u8]) -> Result<(), kv::Error> {
        if value.len() > MAX_KV_VALUE {
            return Err(kv::Error::Invalid(format!(
                "a value must be at most {MAX_KV_VALUE} bytes; this one is {}",
                value.len()
            )));
        }
        Ok(())
    }

    async fn kv_write(&mut self, key: String, write: KvWrite) -> Result<bool, kv::Error> {
        Self::kv_key(&key)?;
        let op = match &write {
            KvWrite::Set(v) => Self::kv_value(v).map(|()| "set")?,
            KvWrite::SetIfAbsent(v) => Self::kv_value(v).map(|()| "set_if_absent")?,
            KvWrite::Delete => "delete",
        };
        let scope = &self.caller.plugin;
        timed(op, self.services.kv_write(scope, &key, write))
            .await
            .map_err(kv::Error::Unavailable)
    }
}

/// Awaits one call of the key-value store, timing it as the plugin waits.
async fn timed<T>(op: &'static str, call: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = call.await;
    metrics::histogram!(crate::telemetry::PLUGIN_KV_DURATION, "op" => op)
        .record(started.elapsed().as_secs_f64());
    out
}

impl kv::Host for AttemptState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::Error> {
        Self::kv_key(&key)?;
        timed("get", self.services.kv_get(&self.caller.plugin, &key))
            .await
            .map_err(kv::Error::Unavailable)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), kv::Error> {
        self.kv_write(key, KvWrite::Set(value)).await.map(drop)
    }

    async fn set_if_absent(&mut self, key: String, value: Vec<u8>) -> Result<bool, kv::Error> {
        self.kv_write(key, KvWrite::SetIfAbsent(value)).await
    }

    async fn delete(&mut self, key: String) -> Result<bool, kv::Error> {
        self.kv_write(key, KvWrite::Delete).await
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

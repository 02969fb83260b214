//! `jobhost serve`: runs the server until SIGTERM or SIGINT.

use jobhost::config::ServeConfig;
use tokio::signal::unix::{SignalKind, signal};

pub fn run(config: ServeConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("jobhost")
        .build()?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        };
        jobhost::server::run(config, shutdown).await
    })
}

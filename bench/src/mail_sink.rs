//! The mail API the example `email_welcome` manifest posts to
//! (`http://127.0.0.1:8025/send`), for the `seed` scenario: it accepts every
//! mail with a fresh message id and keeps nothing, so the figures are
//! jobhost's and not a provider's.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

pub const ADDR: &str = "127.0.0.1:8025";

/// Serves in the background until the process ends.
pub async fn start() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(ADDR).await.map_err(|e| {
        anyhow::anyhow!("the seed scenario's mail API needs {ADDR}, which is taken: {e}")
    })?;
    let sent = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sent = sent.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let id = sent.fetch_add(1, Ordering::Relaxed) + 1;
                    async move {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                            r#"{{"id":"bench-{id}"}}"#
                        )))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

//! A minimal keep-alive HTTP/1.1 client on hyper: one connection per task,
//! no pooling, no per-request allocation beyond the request itself.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    token: Option<String>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr, token: Option<&str>) -> Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Conn {
            sender,
            token: token.map(|t| format!("Bearer {t}")),
        })
    }

    pub async fn post(&mut self, path: &str, body: Bytes) -> Result<(u16, Bytes)> {
        self.send("POST", path, body).await
    }

    pub async fn put(&mut self, path: &str, body: Bytes) -> Result<(u16, Bytes)> {
        self.send("PUT", path, body).await
    }

    pub async fn get(&mut self, path: &str) -> Result<(u16, Bytes)> {
        self.send("GET", path, Bytes::new()).await
    }

    async fn send(&mut self, method: &str, path: &str, body: Bytes) -> Result<(u16, Bytes)> {
        self.sender.ready().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "127.0.0.1")
            .header(CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            req = req.header(AUTHORIZATION, token);
        }
        let resp = self.sender.send_request(req.body(Full::new(body))?).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    pub async fn json(&mut self, path: &str) -> Result<serde_json::Value> {
        let (status, body) = self.get(path).await?;
        anyhow::ensure!(
            status == 200,
            "GET {path}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        Ok(serde_json::from_slice(&body)?)
    }
}

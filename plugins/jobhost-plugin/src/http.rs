//! Outbound HTTP through `wasi:http`. The host sends a request only if its
//! scheme, host and port match the manifest's `allowed_outbound_hosts`;
//! anything else fails with [`Error::Denied`] and never leaves the host.
//!
//! ```ignore
//! let response = http::post_json(&url, &serde_json::json!({"to": to}), &[("authorization", &key)])?;
//! if !response.is_success() { ... }
//! let sent: Sent = response.json()?;
//! ```

use std::fmt;

use wasi::http::outgoing_handler;
use wasi::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasi::io::streams::StreamError;

use crate::{Failure, fatal, retry};

/// Largest response body read, in bytes.
pub const MAX_RESPONSE_BODY: usize = 16 << 20;

/// What went wrong with a request (not a non-2xx status: that is a
/// [`Response`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The URL's host is not in the manifest's `allowed_outbound_hosts`.
    Denied(String),
    /// The URL or a header is malformed.
    Invalid(String),
    /// The request failed on the way (DNS, connection, TLS, timeout).
    Transport(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Denied(url) => write!(
                f,
                "request to {url} denied: its host is not in the manifest's allowed_outbound_hosts"
            ),
            Error::Invalid(m) => write!(f, "invalid request: {m}"),
            Error::Transport(m) => write!(f, "request failed: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for Failure {
    /// A denied or malformed request is fatal (only a new manifest or
    /// payload can fix it); a failed transport is retryable.
    fn from(e: Error) -> Failure {
        match e {
            Error::Transport(_) => retry(e),
            _ => fatal(e),
        }
    }
}

/// A response, its body read in full.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON of type `T`; a body that does not fit is fatal.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Failure> {
        serde_json::from_slice(&self.body)
            .map_err(|e| fatal(format!("response body is not the JSON expected: {e}")))
    }
}

/// `GET url`.
pub fn get(url: &str, headers: &[(&str, &str)]) -> Result<Response, Error> {
    request("GET", url, headers, None)
}

/// `POST url` with `body` as JSON (`content-type: application/json`).
pub fn post_json(
    url: &str,
    body: &impl serde::Serialize,
    headers: &[(&str, &str)],
) -> Result<Response, Error> {
    let body = serde_json::to_vec(body).map_err(|e| Error::Invalid(e.to_string()))?;
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    request("POST", url, &all, Some(&body))
}

/// Splits `scheme://authority/path?query`.
fn split_url(url: &str) -> Result<(Scheme, &str, &str), Error> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::Invalid(format!("{url:?} is not an absolute URL")))?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => return Err(Error::Invalid(format!("scheme {other:?}: http or https"))),
    };
    let at = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(at);
    if authority.is_empty() {
        return Err(Error::Invalid(format!("{url:?} has no host")));
    }
    Ok((scheme, authority, if path.is_empty() { "/" } else { path }))
}

fn transport(e: ErrorCode) -> Error {
    Error::Transport(format!("{e:?}"))
}

/// Any request: `method` (e.g. "PUT"), headers, an optional body.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Response, Error> {
    let (scheme, authority, path) = split_url(url)?;
    let mut fields: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    // A known length, so the body is not sent chunked.
    if let Some(body) = body {
        fields.push(("content-length".into(), body.len().to_string().into_bytes()));
    }
    let fields =
        Fields::from_list(&fields).map_err(|e| Error::Invalid(format!("headers: {e:?}")))?;
    let req = OutgoingRequest::new(fields);
    let method = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "HEAD" => Method::Head,
        other => Method::Other(other.to_owned()),
    };
    let bad = |what: &str| Error::Invalid(format!("{what} of {url:?}"));
    req.set_method(&method).map_err(|()| bad("the method"))?;
    req.set_scheme(Some(&scheme))
        .map_err(|()| bad("the scheme"))?;
    req.set_authority(Some(authority))
        .map_err(|()| bad("the host"))?;
    req.set_path_with_query(Some(path))
        .map_err(|()| bad("the path"))?;
    let outgoing = req.body().map_err(|()| bad("the body"))?;

    // Send first, then stream the body: the host reads it as it goes.
    let pending = outgoing_handler::handle(req, None).map_err(|e| match e {
        ErrorCode::HttpRequestDenied => Error::Denied(url.to_owned()),
        e => transport(e),
    })?;
    // If the host refused the request (the allow-list), the body's stream is
    // closed: the response below says why, so that is the error reported.
    let mut written = Ok(());
    {
        let stream = outgoing.write().map_err(|()| bad("the body"))?;
        for chunk in body.unwrap_or_default().chunks(4096) {
            if let Err(e) = stream.blocking_write_and_flush(chunk) {
                written = Err(Error::Transport(format!("writing the body: {e:?}")));
                break;
            }
        }
    }
    if written.is_ok() {
        written = OutgoingBody::finish(outgoing, None).map_err(transport);
    }

    let response = loop {
        match pending.get() {
            Some(result) => break result,
            None => pending.subscribe().block(),
        }
    };
    let response = response
        .map_err(|()| Error::Transport("the response was already taken".into()))?
        .map_err(|e| match e {
            ErrorCode::HttpRequestDenied => Error::Denied(url.to_owned()),
            e => transport(e),
        })?;
    written?;
    let status = response.status();
    let headers = response.headers().entries();
    let incoming = response
        .consume()
        .map_err(|()| Error::Transport("the response body was already taken".into()))?;
    let stream = incoming
        .stream()
        .map_err(|()| Error::Transport("the response body was already taken".into()))?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_RESPONSE_BODY {
                    return Err(Error::Transport(format!(
                        "the response body is over {MAX_RESPONSE_BODY} bytes"
                    )));
                }
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(Error::Transport(format!(
                    "reading the body: {}",
                    e.to_debug_string()
                )));
            }
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

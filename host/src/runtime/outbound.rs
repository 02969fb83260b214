//! Outbound HTTP: `wasi:http` requests, checked against the plugin's
//! `allowed_outbound_hosts` before anything leaves the host. The list
//! denies everything when empty. A denied request fails inside the plugin
//! with `error-code.HTTP-request-denied` and is logged here with its URL.

use std::fmt;

use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// One entry of `allowed_outbound_hosts`: `scheme://host[:port]`, where the
/// scheme may be `*` (http or https), the host `*` (any) or `*.domain` (any
/// subdomain of domain, not domain itself), and the port `*` (any). Without
/// a port, only the scheme's default port is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    scheme: Option<String>,
    host: HostMatch,
    port: Option<u16>,
    /// The entry as written, for messages.
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com`, kept as `.example.com`.
    Subdomains(String),
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl HostPattern {
    /// Parses one entry; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let shape = "must be scheme://host[:port] (scheme http, https or *; host a name, an IP, * or *.domain; port a number or *)";
        let (scheme, rest) = text.split_once("://").ok_or(shape)?;
        let scheme = match scheme {
            "*" => None,
            "http" | "https" => Some(scheme.to_owned()),
            other => return Err(format!("has scheme {other:?}: only http, https or *")),
        };
        if rest.contains(['/', '?', '#', '@']) {
            return Err(format!("{shape}, with no path, query or user"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            // An IPv6 address without a port: [::1]
            Some((h, p)) if !p.contains(']') => (h, Some(p)),
            _ => (rest, None),
        };
        let port = match port {
            None => scheme.as_deref().and_then(default_port).map(Some).ok_or(
                "has scheme * and no port: name the port (or * for any), as the schemes' defaults differ",
            )?,
            Some("*") => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .map_err(|_| format!("has port {p:?}: a number from 0 to 65535 or *"))?,
            ),
        };
        let host = host.to_ascii_lowercase();
        let valid_name = |h: &str| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '[' | ']' | ':'))
        };
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            if !valid_name(domain) || domain.contains('*') {
                return Err(format!("has host {host:?}: {shape}"));
            }
            HostMatch::Subdomains(format!(".{domain}"))
        } else if valid_name(&host) {
            HostMatch::Exact(host)
        } else {
            return Err(format!("has host {host:?}: {shape}"));
        };
        Ok(HostPattern {
            scheme,
            host,
            port,
            text: text.to_owned(),
        })
    }

    /// Whether a request to `scheme://host:port` matches this entry.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        self.scheme.as_deref().is_none_or(|s| s == scheme)
            && self.port.is_none_or(|p| p == port)
            && match &self.host {
                HostMatch::Any => true,
                HostMatch::Exact(h) => *h == host,
                HostMatch::Subdomains(suffix) => host.ends_with(suffix.as_str()),
            }
    }
}

/// Who one attempt is and what its plugin was granted: the one place the
/// attempt's host imports read them. It is also the attempt's `wasi:http`
/// hooks: every request is checked against the allow-list, then sent by
/// wasmtime's default client (HTTP/1.1, TLS with the webpki roots).
pub(super) struct Caller {
    /// The plugin's name: also the scope of its key-value store.
    pub plugin: String,
    pub job_id: i64,
    pub grants: std::sync::Arc<super::Grants>,
    /// What a request waits for before it leaves: the key-value writes
    /// answered so far, durable.
    pub services: std::sync::Arc<dyn super::Services>,
}

impl Caller {
    fn permits(&self, uri: &http::Uri) -> bool {
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
            return false;
        };
        // The client connects to the authority as written: with user info
        // in it, the host checked would not be the host reached.
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return false;
        }
        let Some(port) = uri.port_u16().or_else(|| default_port(scheme)) else {
            return false;
        };
        self.grants
            .outbound
            .iter()
            .any(|p| p.allows(scheme, host, port))
    }
}

type Sent = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for Caller {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Sent {
        if !self.permits(request.uri()) {
            tracing::warn!(
                target: "plugin",
                plugin = %self.plugin,
                job = self.job_id,
                uri = %request.uri(),
                "outbound request denied: not in the manifest's allowed_outbound_hosts"
            );
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        _ = fut;
        let services = self.services.clone();
        Box::new(async move {
            use http_body_util::BodyExt;
            // Nothing decided on a key-value answer leaves before the write
            // behind that answer is durable (the embedded store answers
            // before its commit).
            services.kv_durable().await.map_err(|e| {
                HttpError::InternalError(Some(format!("the key-value store is unavailable: {e}")))
            })?;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::HostPattern;

    fn allows(pattern: &str, scheme: &str, host: &str, port: u16) -> bool {
        HostPattern::parse(pattern)
            .unwrap()
            .allows(scheme, host, port)
    }

    #[test]
    fn patterns_match_scheme_host_and_port() {
        assert!(allows(
            "https://api.mail.test",
            "https",
            "api.mail.test",
            443
        ));
        assert!(allows(
            "https://API.Mail.test",
            "https",
            "api.MAIL.test",
            443
        ));
        assert!(!allows(
            "https://api.mail.test",
            "http",
            "api.mail.test",
            80
        ));
        assert!(!allows(
            "https://api.mail.test",
            "https",
            "api.mail.test",
            8443
        ));
        assert!(!allows("https://api.mail.test", "https", "evil.test", 443));
        assert!(!allows("https://mail.test", "https", "api.mail.test", 443));
        assert!(allows("http://127.0.0.1:8025", "http", "127.0.0.1", 8025));
        assert!(!allows("http://127.0.0.1:8025", "http", "127.0.0.1", 8026));
        assert!(allows("http://localhost:*", "http", "localhost", 1234));
        assert!(allows("*://mail.test:8080", "https", "mail.test", 8080));
        assert!(allows(
            "https://*.mail.test",
            "https",
            "eu.api.mail.test",
            443
        ));
        assert!(!allows("https://*.mail.test", "https", "mail.test", 443));
        assert!(!allows(
            "https://*.mail.test",
            "https",
            "evilmail.test",
            443
        ));
        assert!(allows("https://*", "https", "anything.test", 443));
        assert!(allows("http://[::1]:8080", "http", "[::1]", 8080));
    }

    #[test]
    fn bad_patterns_say_what_is_wrong() {
        for (bad, why) in [
            ("api.mail.test", "scheme://host"),
            ("ftp://mail.test", "only http, https or *"),
            ("https://mail.test/send", "no path"),
            ("https://mail.test:99999", "port"),
            ("*://mail.test", "name the port"),
            ("https://", "host"),
            ("https://ma il.test", "host"),
            ("https://*.*.test", "host"),
        ] {
            let e = HostPattern::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}

//! A small blocking HTTP client for the Driftless server's `/v1` API, used by the client commands
//! (`produce`, `consume`, `topic`, `group`, `dlq`, `source`, `sink`, `reconcile`).
//!
//! Credentials and TLS: the API token (`--token` / `DRIFTLESS_TOKEN`) goes in an
//! `Authorization: Bearer` header of every request, and `https://` servers are verified against
//! `--ca-file` / `DRIFTLESS_CA_FILE` (PEM) when given, else the public web roots. They are set
//! once per process with [`configure`] (main does it before running a command), so every
//! command's `Client::new(server)` picks them up without each command passing them along. The
//! token is never printed: not in errors (they name the URL, which never carries it), not in
//! `Debug`.
//!
//! Invariants: every request goes to the one base URL given by `--server`, else
//! `DRIFTLESS_SERVER`, else [`DEFAULT_SERVER`]; path segments taken from the user (topic, group,
//! member and dead-letter ids) are percent-encoded, so a name can never change the route; a
//! response with status 4xx/5xx becomes a [`ClientError::Problem`] (parsed from RFC 9457
//! problem+json when the body is one, else built from the status and body text; a 401 also says
//! where the CLI took its token from, or that it sent none); a server that cannot be reached
//! becomes [`ClientError::Unreachable`], whose message names the URL and how to start or point at
//! a server; a TLS or protocol failure after connecting names the flag that usually fixes it
//! (`--ca-file`, `http://` vs `https://`). Response bodies are read up to [`RESPONSE_BYTES_MAX`].

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use ureq::http::Response;
use ureq::{Agent, Body};

/// Where the client commands look for a server when neither `--server` nor `DRIFTLESS_SERVER`
/// is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// Largest response body read, in bytes.
pub const RESPONSE_BYTES_MAX: u64 = 256 << 20;

/// Time allowed to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed for a whole request and its response, beyond any long-poll wait it asks for.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Media type of a JSON array of structured-mode CloudEvents.
pub const CLOUDEVENTS_BATCH: &str = "application/cloudevents-batch+json";

/// An RFC 9457 problem, as the server reports errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// `urn:driftless:problem:<slug>`, when the server said.
    #[serde(default, rename = "type")]
    pub ty: Option<String>,
    /// Short summary of the kind of problem.
    #[serde(default)]
    pub title: String,
    /// HTTP status code.
    #[serde(default)]
    pub status: u16,
    /// What went wrong in this request.
    #[serde(default)]
    pub detail: Option<String>,
    /// The request field at fault, if any.
    #[serde(default)]
    pub field: Option<String>,
    /// Index (0-based) of the event at fault in a batch, if any.
    #[serde(default)]
    pub event_index: Option<u64>,
    /// The limit that was reached, when it is a size in bytes (`body-too-large`).
    #[serde(default)]
    pub limit_bytes: Option<u64>,
}

impl Problem {
    /// Whether the problem's `type` is `urn:driftless:problem:<slug>`.
    pub fn is(&self, slug: &str) -> bool {
        self.ty.as_deref().and_then(|t| t.strip_prefix("urn:driftless:problem:")) == Some(slug)
    }

    /// Builds the problem from an error response: its problem+json body when it is one, else a
    /// problem whose detail is the (shortened) body text.
    pub fn from_response(status: u16, body: &[u8]) -> Self {
        if let Ok(mut p) = serde_json::from_slice::<Problem>(body) {
            if !p.title.is_empty() || p.detail.is_some() {
                if p.status == 0 {
                    p.status = status;
                }
                if p.title.is_empty() {
                    p.title = format!("HTTP {status}");
                }
                return p;
            }
        }
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let detail = if text.is_empty() {
            None
        } else {
            let mut short: String = text.chars().take(500).collect();
            if short.len() < text.len() {
                short.push('…');
            }
            Some(short)
        };
        Self {
            ty: None,
            title: format!("HTTP {status}"),
            status,
            detail,
            field: None,
            event_index: None,
            limit_bytes: None,
        }
    }

    /// `title: detail (field `f`)`, without the event index (callers that know what the index
    /// refers to add it themselves).
    pub fn summary(&self) -> String {
        let mut s = self.title.clone();
        if let Some(detail) = self.detail.as_deref().filter(|d| !d.is_empty()) {
            s.push_str(": ");
            s.push_str(detail);
        }
        if let Some(field) = &self.field {
            s.push_str(&format!(" (field `{field}`)"));
        }
        s
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())?;
        if let Some(i) = self.event_index {
            write!(f, " (event index {i})")?;
        }
        Ok(())
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status (boxed: a problem is large, and every
    /// `Result` of this client carries the error's size).
    #[error("{0}")]
    Problem(Box<Problem>),
    /// No server could be reached at the URL.
    #[error(
        "cannot reach a Driftless server at {server} ({error}); start one with `driftless serve`, \
         or point --server / DRIFTLESS_SERVER at a running server"
    )]
    Unreachable {
        /// The base URL tried.
        server: String,
        /// The underlying failure (in the message, not a `source`, so it is printed once).
        error: ureq::Error,
    },
    /// The request failed after connecting (timeout, protocol error, reset...).
    #[error("{method} {url} failed: {error}{hint}")]
    Transport {
        /// HTTP method.
        method: &'static str,
        /// Full URL.
        url: String,
        /// The underlying failure (in the message, not a `source`, so it is printed once).
        error: ureq::Error,
        /// What to do about it, when the failure says (`; ...`), else empty: see
        /// [`transport_hint`].
        hint: &'static str,
    },
    /// The server answered 2xx with a body that is not what the API documents.
    #[error("{method} {url}: unexpected response body: {reason}")]
    BadResponse {
        /// HTTP method.
        method: &'static str,
        /// Full URL.
        url: String,
        /// What did not parse.
        reason: String,
    },
}

/// Whether a transport error means nothing is listening (or reachable) at the address.
fn is_unreachable(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Io(io) => matches!(
            io.kind(),
            io::ErrorKind::ConnectionRefused
                | io::ErrorKind::AddrNotAvailable
                | io::ErrorKind::HostUnreachable
                | io::ErrorKind::NetworkUnreachable
        ),
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
        ureq::Error::Timeout(t) => matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve),
        _ => false,
    }
}

/// What the operator can do about a failure after connecting, as `; ...` to append to its
/// message, or `""` when the failure itself says enough. The raw transport errors ("invalid peer
/// certificate: UnknownIssuer", "http parse fail") name a symptom, not the flag that fixes it:
/// the usual causes are a server certificate from the operator's own CA without `--ca-file`, and
/// `http://` against a TLS server or the other way round.
fn transport_hint(base: &str, error: &ureq::Error) -> &'static str {
    let https = base.starts_with("https://");
    match error {
        // rustls reports a refused handshake as an `InvalidData` IO error.
        ureq::Error::Io(io) if https && io.kind() == io::ErrorKind::InvalidData => {
            let what = io.to_string();
            if what.contains("NotValidForName") || what.contains("not valid for name") {
                "; the server's TLS certificate does not name the host in --server: use a name \
                 it was issued for (or have it reissued with this name in its subject alt names)"
            } else if what.contains("certificate") {
                "; the server's TLS certificate was not accepted: if your own certificate \
                 authority issued it, pass that CA's PEM file with --ca-file or \
                 DRIFTLESS_CA_FILE, and give --server a host name the certificate was issued for"
            } else {
                "; the server did not answer TLS: if it serves plain HTTP (it logs \
                 `listening on http://...`), use http:// in --server / DRIFTLESS_SERVER"
            }
        }
        ureq::Error::Protocol(_) if !https => {
            "; the server did not answer plain HTTP: if it serves TLS (it logs `listening on \
             https://...`), use https:// in --server / DRIFTLESS_SERVER"
        }
        _ => "",
    }
}

/// What the operator can do about a 401, appended to the server's explanation: the server
/// speaks of `Authorization` headers, the CLI user gave (or forgot) `--token`.
fn unauthorized_hint(token_sent: bool) -> &'static str {
    if token_sent {
        "; the CLI sent the token given with --token / DRIFTLESS_TOKEN: check that it is the \
         whole `dlt_...` text `driftless token create` printed, and that `driftless token list` \
         on the server's host shows it, not expired"
    } else {
        "; the CLI sent no token: pass one with --token or DRIFTLESS_TOKEN (`driftless token \
         create` on the server's host makes one)"
    }
}

/// Percent-encodes one path segment: everything but RFC 3986 unreserved characters, and the dots
/// of `.`/`..` (which would otherwise be path navigation).
pub fn segment(s: &str) -> String {
    if s == "." || s == ".." {
        return s.replace('.', "%2E");
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Normalizes and checks a server base URL: `http://host:port` or `https://host:port`, any
/// trailing `/` removed.
pub fn normalize_server(server: &str) -> anyhow::Result<String> {
    let s = server.trim().trim_end_matches('/');
    let Some(host) = s.strip_prefix("http://").or_else(|| s.strip_prefix("https://")) else {
        anyhow::bail!(
            "server URL {s:?} must start with http:// or https:// (e.g. {DEFAULT_SERVER})"
        );
    };
    if host.is_empty() {
        anyhow::bail!("server URL {s:?} has no host (e.g. {DEFAULT_SERVER})");
    }
    Ok(s.to_string())
}

/// Largest CA file read, in bytes.
pub const CA_FILE_BYTES_MAX: u64 = 1 << 20;

/// How every client of this process authenticates and verifies the server.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// The API token sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// PEM file of the certificate authorities an `https://` server's certificate must chain
    /// to; the public web roots when absent.
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("token", &self.token.as_ref().map(|_| ".."))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

static OPTIONS: OnceLock<ClientOptions> = OnceLock::new();

/// Sets the options every [`Client::new`] of this process uses (the first call wins).
pub fn configure(options: ClientOptions) {
    let _ = OPTIONS.set(options);
}

/// Reads the certificates of a PEM CA file.
fn ca_certificates(path: &std::path::Path) -> anyhow::Result<Vec<ureq::tls::Certificate<'static>>> {
    use anyhow::Context as _;
    use std::io::Read as _;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open the CA file {} (--ca-file)", path.display()))?;
    let mut pem = Vec::new();
    file.take(CA_FILE_BYTES_MAX + 1)
        .read_to_end(&mut pem)
        .with_context(|| format!("cannot read the CA file {}", path.display()))?;
    if pem.len() as u64 > CA_FILE_BYTES_MAX {
        anyhow::bail!(
            "the CA file {} is larger than {CA_FILE_BYTES_MAX} bytes; give a PEM file of CA \
             certificates",
            path.display()
        );
    }
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => anyhow::bail!("the CA file {} is not valid PEM: {e}", path.display()),
        }
    }
    if certs.is_empty() {
        anyhow::bail!("the CA file {} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// A client for one server.
#[derive(Clone)]
pub struct Client {
    base: String,
    agent: Agent,
    /// `Bearer <token>`, when a token was given.
    authorization: Option<Arc<str>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish_non_exhaustive()
    }
}

impl Client {
    /// A client for the server at `server` (see [`normalize_server`]), with the options given
    /// to [`configure`].
    pub fn new(server: &str) -> anyhow::Result<Self> {
        let default = ClientOptions::default();
        Self::with_options(server, OPTIONS.get().unwrap_or(&default))
    }

    /// A client for the server at `server` with `options`.
    pub fn with_options(server: &str, options: &ClientOptions) -> anyhow::Result<Self> {
        let base = normalize_server(server)?;
        let mut config = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .user_agent(concat!("driftless-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &options.ca_file {
            let roots = ureq::tls::RootCerts::new_with_certs(&ca_certificates(path)?);
            config = config.tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build());
        }
        let agent: Agent = config.build().into();
        let authorization = match options.token.as_deref().map(str::trim) {
            None => None,
            Some("") => anyhow::bail!("the API token (--token / DRIFTLESS_TOKEN) is empty"),
            Some(t) if !t.bytes().all(|b| b.is_ascii_graphic()) => anyhow::bail!(
                "the API token (--token / DRIFTLESS_TOKEN) has spaces or control characters; \
                 give it as `driftless token create` printed it"
            ),
            Some(t) => Some(Arc::from(format!("Bearer {t}"))),
        };
        Ok(Self { base, agent, authorization })
    }

    /// Adds the `Authorization` header when a token was given.
    fn authorize<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(value) => request.header("authorization", &**value),
            None => request,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn fail(&self, method: &'static str, url: String, error: ureq::Error) -> ClientError {
        if is_unreachable(&error) {
            ClientError::Unreachable { server: self.base.clone(), error }
        } else {
            let hint = transport_hint(&self.base, &error);
            ClientError::Transport { method, url, error, hint }
        }
    }

    /// Turns a response into its body, or the error it reports.
    fn finish(
        &self,
        method: &'static str,
        url: String,
        result: Result<Response<Body>, ureq::Error>,
    ) -> Result<Vec<u8>, ClientError> {
        let mut response = result.map_err(|e| self.fail(method, url.clone(), e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(RESPONSE_BYTES_MAX)
            .read_to_vec()
            .map_err(|e| self.fail(method, url.clone(), e))?;
        if status >= 400 {
            let mut problem = Problem::from_response(status, &body);
            if status == 401 {
                let hint = unauthorized_hint(self.authorization.is_some());
                problem.detail = Some(match problem.detail.take() {
                    Some(detail) if !detail.is_empty() => format!("{detail}{hint}"),
                    _ => hint.trim_start_matches("; ").to_string(),
                });
            }
            return Err(ClientError::Problem(Box::new(problem)));
        }
        Ok(body)
    }

    fn decode<T: DeserializeOwned>(
        method: &'static str,
        url: String,
        body: &[u8],
    ) -> Result<T, ClientError> {
        serde_json::from_slice(body).map_err(|e| ClientError::BadResponse {
            method,
            url,
            reason: e.to_string(),
        })
    }

    /// `GET path`, decoding a JSON answer.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.get_waiting(path, &[], Duration::ZERO)
    }

    /// `GET path?query`, for a long poll that may legitimately take `wait` before answering.
    pub fn get_waiting<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        wait: Duration,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let mut request = self.authorize(self.agent.get(&url));
        for (k, v) in query {
            request = request.query(*k, v);
        }
        let result = request
            .header("accept", "application/json")
            .config()
            .timeout_global(Some(REQUEST_TIMEOUT + wait))
            .build()
            .call();
        let body = self.finish("GET", url.clone(), result)?;
        Self::decode("GET", url, &body)
    }

    /// `POST path` with a JSON body, decoding a JSON answer.
    pub fn post_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::BadResponse {
            method: "POST",
            url: url.clone(),
            reason: format!("could not encode the request: {e}"),
        })?;
        self.post_bytes(path, "application/json", &bytes)
    }

    /// `POST path` with a body of the given media type, decoding a JSON answer.
    pub fn post_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let result = self
            .authorize(self.agent.post(&url))
            .header("content-type", content_type)
            .header("accept", "application/json")
            .send(bytes);
        let body = self.finish("POST", url.clone(), result)?;
        Self::decode("POST", url, &body)
    }

    /// `POST path` without a body; the JSON answer, or `None` when the body is empty.
    pub fn post_empty(&self, path: &str) -> Result<Option<serde_json::Value>, ClientError> {
        let url = self.url(path);
        let result =
            self.authorize(self.agent.post(&url)).header("accept", "application/json").send_empty();
        let body = self.finish("POST", url.clone(), result)?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        Self::decode("POST", url, &body).map(Some)
    }

    /// `DELETE path`, ignoring any answer body.
    pub fn delete(&self, path: &str) -> Result<(), ClientError> {
        let url = self.url(path);
        let result =
            self.authorize(self.agent.delete(&url)).header("accept", "application/json").call();
        self.finish("DELETE", url, result).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_json_is_parsed_and_summarized() {
        let body = br#"{"type":"about:blank","title":"Invalid event","status":400,
            "detail":"attribute `time` is not RFC 3339","field":"time","event_index":2}"#;
        let p = Problem::from_response(400, body);
        assert_eq!(p.title, "Invalid event");
        assert_eq!(p.event_index, Some(2));
        assert_eq!(p.summary(), "Invalid event: attribute `time` is not RFC 3339 (field `time`)");
        assert_eq!(p.to_string(), format!("{} (event index 2)", p.summary()));
    }

    #[test]
    fn a_non_problem_error_body_becomes_the_detail() {
        let p = Problem::from_response(502, b"  bad gateway\n");
        assert_eq!(p.summary(), "HTTP 502: bad gateway");
        let p = Problem::from_response(404, b"");
        assert_eq!(p.summary(), "HTTP 404");
        let long = "x".repeat(2000);
        let p = Problem::from_response(500, long.as_bytes());
        assert!(p.detail.is_some_and(|d| d.chars().count() == 501));
        // JSON that is not a problem document is shown as text.
        let p = Problem::from_response(400, br#"{"error":"nope"}"#);
        assert_eq!(p.summary(), r#"HTTP 400: {"error":"nope"}"#);
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("orders.v1_a-b~"), "orders.v1_a-b~");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
        assert_eq!(segment("orders:0:12"), "orders%3A0%3A12");
        assert_eq!(segment(".."), "%2E%2E");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn server_urls_are_checked_and_normalized() {
        assert_eq!(normalize_server("http://127.0.0.1:7070/").unwrap(), "http://127.0.0.1:7070");
        assert_eq!(normalize_server(" http://h ").unwrap(), "http://h");
        assert_eq!(normalize_server("https://h:7070/").unwrap(), "https://h:7070");
        for bad in ["127.0.0.1:7070", "https://", "http://", "ftp://h"] {
            assert!(normalize_server(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn connection_refused_names_the_server_and_how_to_start_one() {
        // Bind then drop a listener: nothing listens on that port afterwards.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let client = Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let err = client.get::<serde_json::Value>("/v1/topics").unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("http://127.0.0.1:{port}")), "{msg}");
        assert!(msg.contains("driftless serve") && msg.contains("DRIFTLESS_SERVER"), "{msg}");
    }
}

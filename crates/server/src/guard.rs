//! The cross-site and DNS-rebinding guard: one middleware in front of every route, with or
//! without authentication, so that no web page open in an operator's browser can drive the API.
//!
//! A browser lets any page send requests to any address — loopback included — as long as they
//! look like a form or an image: no custom headers, a `text/plain` body, a `GET`. Three checks
//! close that, in this order:
//! 1. **`Host`** must be one of the names this server answers to: the loopback names
//!    (`localhost`, `127.0.0.1`, `[::1]`), the listen address's own IP when it is not
//!    unspecified, and `[server] allowed_hosts`. The port is not compared. A page that re-points
//!    its own DNS name at 127.0.0.1 (DNS rebinding) sends its own name as `Host`, so it is
//!    refused 421; a request without a usable `Host` is refused 400.
//! 2. **`Origin`**, when present, must be this server's own origin (the request's scheme and
//!    `Host`) or one of `[server] allowed_origins`; `null` (sandboxed frames, redirects) is
//!    foreign. Refused 403 for every method: even a `GET` changes state here (a fetch puts
//!    deliveries in flight).
//! 3. **`Sec-Fetch-Site`** `cross-site` or `same-site` is refused 403 the same way: it catches
//!    requests that carry no `Origin` (`<img>`, `<script>`, no-cors `GET`s). One exception: a
//!    top-level navigation to the dashboard page `/` (a link someone clicked), which changes
//!    nothing and whose page then calls the API same-origin.
//!
//! The fourth part of the defence is in `extract.rs`: a body must be declared JSON (415
//! otherwise), so a cross-origin request with a body always needs a CORS preflight, which this
//! server never grants.
//!
//! Invariants:
//! - a request with neither `Origin` nor `Sec-Fetch-Site` (curl, the CLI, other services) is
//!   judged by its `Host` alone;
//! - the health probes (`/healthz`, `/readyz`) skip the `Host` check only: orchestrators probe
//!   by pod IP, and the probes reveal and change nothing;
//! - names are compared in one canonical form ([`host_of`]): lowercase, IPv6 in brackets and
//!   compressed, no port; configured entries are checked and put in that form at start-up, so a
//!   malformed entry is a start-up error, never a silently dead rule.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::ServerSettings;
use crate::peer::PeerIdentity;
use crate::problem::Problem;

/// `Sec-Fetch-Site` (Fetch Metadata): where a browser request comes from.
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");
/// `Sec-Fetch-Mode`: `navigate` for a top-level page load.
const SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");
/// Longest `Host` or `Origin` value examined, in bytes (hyper bounds the head; this bounds the
/// work of parsing one value).
const NAME_BYTES_MAX: usize = 512;
/// Paths that skip the `Host` check (see the module's invariants).
const PROBES: [&str; 2] = ["/healthz", "/readyz"];

/// The names and origins this server accepts, in canonical form.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    hosts: Vec<String>,
    origins: Vec<String>,
}

impl Guard {
    /// The guard of a validated `[server]` table (entries that do not parse were refused by
    /// `ServerConfig::validate`; any left here are skipped).
    pub fn new(s: &ServerSettings) -> Self {
        let mut hosts: Vec<String> =
            ["localhost", "127.0.0.1", "[::1]"].iter().map(|h| (*h).to_string()).collect();
        match s.listen.parse::<SocketAddr>() {
            Ok(addr) if !addr.ip().is_unspecified() => hosts.push(ip_name(addr.ip())),
            Ok(_) => {}
            // A host name: the name clients use is likely that one.
            Err(_) => {
                if let Ok((host, _)) = host_of(&s.listen) {
                    hosts.push(host);
                }
            }
        }
        hosts.extend(s.allowed_hosts.iter().filter_map(|h| normalize_allowed_host(h).ok()));
        hosts.sort();
        hosts.dedup();
        let origins = s.allowed_origins.iter().filter_map(|o| normalize_origin(o).ok()).collect();
        Self { hosts, origins }
    }

    /// Whether a request may proceed; the refusal says what to configure.
    pub fn verdict(&self, method: &Method, path: &str, headers: &HeaderMap, tls: bool) -> Verdict {
        // Two of either header: which one counts is ambiguous between proxies, so neither does.
        if headers.get_all(header::HOST).iter().nth(1).is_some() {
            return Verdict::BadHost("the request has more than one Host header");
        }
        if headers.get_all(header::ORIGIN).iter().nth(1).is_some() {
            return Verdict::ForeignOrigin;
        }
        let host = match headers.get(header::HOST).map(|v| v.to_str()) {
            Some(Ok(h)) if h.len() <= NAME_BYTES_MAX => h,
            Some(_) => return Verdict::BadHost("the Host header is too long or not ASCII"),
            None => return Verdict::BadHost("the request has no Host header"),
        };
        let Ok((host_name, port)) = host_of(host) else {
            return Verdict::BadHost("the Host header is not a host name or IP address");
        };
        if !PROBES.contains(&path) && !self.hosts.contains(&host_name) {
            return Verdict::ForeignHost(host_name);
        }
        let scheme = if tls { "https" } else { "http" };
        let own = origin_text(scheme, &host_name, port);
        let origin = headers.get(header::ORIGIN);
        let origin_allowed = match origin {
            None => None,
            Some(value) => {
                let parsed = value
                    .to_str()
                    .ok()
                    .filter(|v| v.len() <= NAME_BYTES_MAX)
                    .and_then(|v| normalize_origin(v).ok());
                match parsed {
                    Some(o) if o == own => Some(false),
                    Some(o) if self.origins.contains(&o) => Some(true),
                    _ => return Verdict::ForeignOrigin,
                }
            }
        };
        let site = headers.get(SEC_FETCH_SITE).map(|v| v.as_bytes().to_ascii_lowercase());
        let cross = matches!(site.as_deref(), Some(b"cross-site" | b"same-site"));
        if cross && origin_allowed != Some(true) {
            let navigation = headers.get(SEC_FETCH_MODE).is_some_and(|m| m == "navigate");
            let page = path == "/" && (method == Method::GET || method == Method::HEAD);
            if !(navigation && page) {
                return Verdict::ForeignOrigin;
            }
        }
        Verdict::Allowed
    }
}

/// What [`Guard::verdict`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The request may proceed.
    Allowed,
    /// No usable `Host` (400).
    BadHost(&'static str),
    /// A `Host` this server does not answer to (421), in canonical form.
    ForeignHost(String),
    /// A foreign `Origin`, or a cross-site browser request (403).
    ForeignOrigin,
}

impl Verdict {
    fn into_problem(self) -> Option<Problem> {
        match self {
            Verdict::Allowed => None,
            Verdict::BadHost(why) => Some(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-host",
                "Invalid Host header",
                format!("{why}; send the name or address of this server as Host"),
            )),
            Verdict::ForeignHost(host) => Some(Problem::new(
                StatusCode::MISDIRECTED_REQUEST,
                "host-not-allowed",
                "Host not allowed",
                format!(
                    "this server does not answer to the name {host:?} (a guard against DNS \
                     rebinding); if clients reach it by that name, add it to [server] \
                     allowed_hosts"
                ),
            )),
            Verdict::ForeignOrigin => Some(Problem::new(
                StatusCode::FORBIDDEN,
                "cross-origin-refused",
                "Cross-origin request refused",
                "requests from other web origins are refused (a guard against web pages \
                 driving this API); if a web application on another origin must call it, add \
                 that origin to [server] allowed_origins"
                    .to_string(),
            )),
        }
    }
}

/// The middleware: refuses what [`Guard::verdict`] refuses, before any other layer runs.
pub(crate) async fn check(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    let tls = request.extensions().get::<PeerIdentity>().is_some_and(|p| p.tls);
    let verdict = guard.verdict(request.method(), request.uri().path(), request.headers(), tls);
    match verdict.into_problem() {
        None => next.run(request).await,
        Some(problem) => {
            tracing::debug!(status = problem.status, kind = %problem.ty, "request refused by the guard");
            problem.into_response()
        }
    }
}

/// An IP address as a `Host` names it: IPv6 in brackets.
fn ip_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// Splits an authority (`Host` value, or an origin without its scheme) into its canonical host
/// name and its port: lowercase, an IPv6 address bracketed and compressed.
pub(crate) fn host_of(authority: &str) -> Result<(String, Option<u16>), &'static str> {
    let a = authority.trim().to_ascii_lowercase();
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or("an IPv6 address without its `]`")?;
        let ip: Ipv6Addr = inside.parse().map_err(|_| "not an IPv6 address inside `[...]`")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after `]`")?),
        };
        (format!("[{ip}]"), port)
    } else if let Ok(ip) = a.parse::<Ipv6Addr>() {
        (format!("[{ip}]"), None)
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (a.clone(), None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| "a port above 65535")?)
        }
        Some(_) => return Err("a port that is not a number"),
    };
    let name_ok = host.starts_with('[')
        || (!host.is_empty()
            && host.len() <= 253
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
    if !name_ok {
        return Err("not a host name or IP address");
    }
    Ok((host, port))
}

/// An `allowed_hosts` entry in canonical form, or why it is not one.
pub(crate) fn normalize_allowed_host(entry: &str) -> Result<String, &'static str> {
    if entry.len() > crate::config::ALLOWED_ENTRY_BYTES_MAX {
        return Err("too long");
    }
    if entry.contains('/') {
        return Err("give a host name or IP address, without scheme or path");
    }
    match host_of(entry)? {
        (host, None) => Ok(host),
        (_, Some(_)) => Err("give the name without a port (ports are not compared)"),
    }
}

/// An origin (`scheme://host[:port]`, scheme `http` or `https`) in canonical form: lowercase,
/// without the scheme's default port, or why it is not one.
pub(crate) fn normalize_origin(text: &str) -> Result<String, &'static str> {
    if text.len() > crate::config::ALLOWED_ENTRY_BYTES_MAX.max(NAME_BYTES_MAX) {
        return Err("too long");
    }
    let lower = text.trim().to_ascii_lowercase();
    let (scheme, rest) = lower.split_once("://").ok_or("an origin is scheme://host[:port]")?;
    if scheme != "http" && scheme != "https" {
        return Err("the scheme must be http or https");
    }
    // Browsers send no trailing slash; a configured one is forgiven.
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err("an origin has no path, query, fragment or user");
    }
    let (host, port) = host_of(rest)?;
    Ok(origin_text(scheme, &host, port))
}

/// `scheme://host[:port]`, the port left out when it is the scheme's default (as browsers do).
fn origin_text(scheme: &str, host: &str, port: Option<u16>) -> String {
    match (scheme, port) {
        ("http", Some(80)) | ("https", Some(443)) | (_, None) => format!("{scheme}://{host}"),
        (_, Some(p)) => format!("{scheme}://{host}:{p}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn guard(listen: &str, hosts: &[&str], origins: &[&str]) -> Guard {
        let s = ServerSettings {
            listen: listen.into(),
            allowed_hosts: hosts.iter().map(|h| (*h).to_string()).collect(),
            allowed_origins: origins.iter().map(|o| (*o).to_string()).collect(),
            ..ServerSettings::default()
        };
        Guard::new(&s)
    }

    fn verdict(g: &Guard, method: Method, path: &str, headers: &[(&str, &str)]) -> Verdict {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        g.verdict(&method, path, &map, false)
    }

    #[test]
    fn hosts_are_compared_in_canonical_form_without_port() {
        let g = guard("127.0.0.1:7070", &["Driftless.Internal"], &[]);
        for ok in ["localhost", "LOCALHOST:1", "127.0.0.1:7070", "[::1]:9", "[0:0::1]", "::1"] {
            assert_eq!(verdict(&g, Method::GET, "/v1/topics", &[("host", ok)]), Verdict::Allowed);
        }
        let named = [("host", "driftless.internal:7070")];
        assert_eq!(verdict(&g, Method::GET, "/v1/topics", &named), Verdict::Allowed);
        for bad in ["attacker.example:7070", "localhost.", "127.0.0.2", "10.0.0.1"] {
            let v = verdict(&g, Method::GET, "/v1/topics", &[("host", bad)]);
            assert!(matches!(v, Verdict::ForeignHost(_)), "{bad}: {v:?}");
        }
        for bad in ["", "a b", "[::1", "localhost:x", "localhost:70000", "a@b"] {
            let v = verdict(&g, Method::GET, "/v1/topics", &[("host", bad)]);
            assert!(matches!(v, Verdict::BadHost(_)), "{bad:?}: {v:?}");
        }
        let twice = [("host", "localhost"), ("host", "evil.example")];
        assert!(matches!(verdict(&g, Method::GET, "/v1/topics", &twice), Verdict::BadHost(_)));
        let origins = [("host", "localhost"), ("origin", "http://localhost"), ("origin", "null")];
        assert_eq!(verdict(&g, Method::GET, "/v1/topics", &origins), Verdict::ForeignOrigin);
        // The probes answer under any name (orchestrators probe by IP).
        let probe = verdict(&g, Method::GET, "/healthz", &[("host", "10.1.2.3:7070")]);
        assert_eq!(probe, Verdict::Allowed);
    }

    #[test]
    fn the_listen_address_counts_unless_unspecified() {
        let g = guard("10.0.0.5:7070", &[], &[]);
        let h = [("host", "10.0.0.5:7070")];
        assert_eq!(verdict(&g, Method::GET, "/", &h), Verdict::Allowed);
        let g = guard("0.0.0.0:7070", &[], &[]);
        assert!(matches!(verdict(&g, Method::GET, "/", &h), Verdict::ForeignHost(_)));
    }

    #[test]
    fn origins_must_be_own_or_configured() {
        let g = guard("127.0.0.1:7070", &[], &["https://console.example"]);
        let get = |origin: &str| {
            verdict(
                &g,
                Method::GET,
                "/v1/topics",
                &[("host", "127.0.0.1:7070"), ("origin", origin)],
            )
        };
        assert_eq!(get("http://127.0.0.1:7070"), Verdict::Allowed);
        assert_eq!(get("https://console.example:443"), Verdict::Allowed);
        for bad in ["null", "http://evil.example", "https://127.0.0.1:7070", "http://127.0.0.1"] {
            assert_eq!(get(bad), Verdict::ForeignOrigin, "{bad}");
        }
    }

    #[test]
    fn cross_site_fetch_metadata_is_refused_except_navigating_to_the_dashboard() {
        let g = guard("127.0.0.1:7070", &[], &[]);
        let h = |site: &'static str, mode: &'static str| {
            [("host", "localhost:7070"), ("sec-fetch-site", site), ("sec-fetch-mode", mode)]
        };
        let fetch = "/v1/groups/g/members/m/events";
        assert_eq!(
            verdict(&g, Method::GET, fetch, &h("cross-site", "no-cors")),
            Verdict::ForeignOrigin
        );
        assert_eq!(
            verdict(&g, Method::GET, fetch, &h("same-site", "navigate")),
            Verdict::ForeignOrigin
        );
        assert_eq!(verdict(&g, Method::GET, fetch, &h("same-origin", "cors")), Verdict::Allowed);
        assert_eq!(verdict(&g, Method::GET, fetch, &h("none", "navigate")), Verdict::Allowed);
        assert_eq!(verdict(&g, Method::GET, "/", &h("cross-site", "navigate")), Verdict::Allowed);
        assert_eq!(
            verdict(&g, Method::POST, "/", &h("cross-site", "navigate")),
            Verdict::ForeignOrigin
        );
    }

    #[test]
    fn configured_entries_are_checked() {
        assert_eq!(normalize_allowed_host("Foo.Example").unwrap(), "foo.example");
        assert!(normalize_allowed_host("foo.example:80").is_err());
        assert!(normalize_allowed_host("http://foo").is_err());
        assert_eq!(normalize_origin("HTTPS://A.example:443/").unwrap(), "https://a.example");
        assert_eq!(normalize_origin("http://[::1]:8080").unwrap(), "http://[::1]:8080");
        for bad in ["a.example", "ftp://a", "http://a/b", "http://u@a", "http://a:x"] {
            assert!(normalize_origin(bad).is_err(), "{bad}");
        }
    }
}

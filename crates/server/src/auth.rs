//! Authentication and authorization of every request, when `[auth] enabled = true`.
//!
//! The layer ([`layer`]) runs on every route (and the fallback) before the handler:
//! 1. it looks up the request's (method, route template) in the policy table
//!    ([`policy::POLICIES`]); public routes pass as [`Principal::anonymous`];
//! 2. it authenticates, in this order: `Authorization: Bearer <token>` (when present it is the
//!    only credential looked at), the `driftless_session` cookie, a verified client
//!    certificate's subject (its grants are those of `[auth.clients]`; an unlisted subject has
//!    none). Failure is 401 with `WWW-Authenticate: Bearer`;
//! 3. it authorizes by the table's rule, naming the missing scope in a 403 problem;
//! 4. it inserts the [`Principal`] and the [`Access`] (the grants, for handlers that check
//!    names found in the body) and calls the handler.
//!
//! With authentication off every request is [`Principal::anonymous`] with unrestricted
//! [`Access`]: the API behaves as it always did.
//!
//! Invariants: a route without a policy row is refused to everyone (fail closed); a presented
//! token or cookie never appears in a log line, a metric or an answer (errors say "token
//! rejected" and why); every refusal is counted in `driftless_auth_denied_total{reason}`.

pub(crate) mod policy;
pub(crate) mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use driftless_auth::{Authenticator, Denied, Grants, Identity, Kind, Operation};
use driftless_core::Clock;
use serde::{Deserialize, Serialize};

use crate::config::ServerConfig;
use crate::extract::ApiJson;
use crate::peer::{PeerIdentity, Principal};
use crate::problem::Problem;
use crate::AppState;
use policy::{Lookup, Rule, Target};

/// Why a request was refused, as the `reason` label of `driftless_auth_denied_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// No credential at all.
    Missing,
    /// An `Authorization` header that is not a Driftless bearer token.
    Malformed,
    /// An unknown, revoked or wrong token.
    Unknown,
    /// An expired token.
    Expired,
    /// The tokens file cannot be read.
    Unavailable,
    /// A session cookie that is unknown, expired, or whose token is gone.
    Session,
    /// Authenticated, but no grant covers the request.
    Forbidden,
    /// A served route without a policy row.
    NoPolicy,
}

impl Reason {
    const ALL: [Reason; 8] = [
        Self::Missing,
        Self::Malformed,
        Self::Unknown,
        Self::Expired,
        Self::Unavailable,
        Self::Session,
        Self::Forbidden,
        Self::NoPolicy,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Unknown => "unknown",
            Self::Expired => "expired",
            Self::Unavailable => "unavailable",
            Self::Session => "session",
            Self::Forbidden => "forbidden",
            Self::NoPolicy => "no_policy",
        }
    }

    fn from_denied(d: Denied) -> Self {
        match d {
            Denied::Malformed => Self::Malformed,
            Denied::Unknown => Self::Unknown,
            Denied::Expired => Self::Expired,
            Denied::Unavailable => Self::Unavailable,
        }
    }
}

/// Refusals since start, by reason.
#[derive(Debug, Default)]
pub(crate) struct DeniedCounts([AtomicU64; Reason::ALL.len()]);

impl DeniedCounts {
    fn add(&self, reason: Reason) {
        let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    /// `(reason label, count)` for every reason, zeros included (so the family always shows).
    pub(crate) fn snapshot(&self) -> Vec<(&'static str, u64)> {
        Reason::ALL
            .iter()
            .zip(&self.0)
            .map(|(r, n)| (r.label(), n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Everything the layer and the session routes need.
#[derive(Debug)]
pub(crate) struct AuthState {
    enabled: bool,
    /// `None` when auth is off, or when the tokens file could not be opened by [`crate::router`]
    /// (then every token is refused).
    authenticator: Option<Authenticator>,
    /// Grants of each configured mTLS subject.
    clients: std::collections::HashMap<String, Arc<Grants>>,
    sessions: session::Sessions,
    denied: DeniedCounts,
    clock: Arc<dyn Clock>,
}

impl AuthState {
    /// The state for `config`: with auth on, opens the tokens file (an unreadable or invalid
    /// one is an error naming it).
    pub(crate) fn new(config: &ServerConfig, clock: Arc<dyn Clock>) -> Result<Self, String> {
        let a = &config.auth;
        let mut clients = std::collections::HashMap::new();
        for (subject, scopes) in &a.clients {
            let grants =
                Grants::parse(scopes).map_err(|e| format!("[auth.clients] `{subject}`: {e}"))?;
            clients.insert(subject.clone(), Arc::new(grants));
        }
        let authenticator = if a.enabled {
            let path = a.tokens_path(&config.server.data_dir);
            Some(Authenticator::open(&path).map_err(|e| e.to_string())?)
        } else {
            None
        };
        Ok(Self {
            enabled: a.enabled,
            authenticator,
            clients,
            sessions: session::Sessions::new(a.sessions_max, a.session_ttl_ms),
            denied: DeniedCounts::default(),
            clock,
        })
    }

    /// Auth as configured, but with no usable tokens file: every token is refused (what
    /// [`crate::router`] falls back to when [`AuthState::new`] fails, having logged why).
    pub(crate) fn refusing_tokens(config: &ServerConfig, clock: Arc<dyn Clock>) -> Self {
        let a = &config.auth;
        Self {
            enabled: a.enabled,
            authenticator: None,
            clients: std::collections::HashMap::new(),
            sessions: session::Sessions::new(a.sessions_max, a.session_ttl_ms),
            denied: DeniedCounts::default(),
            clock,
        }
    }

    /// Refusals so far, by reason.
    pub(crate) fn denied(&self) -> &DeniedCounts {
        &self.denied
    }

    /// Counts a refusal and logs it at debug level: the reason, the route and the principal
    /// when known — never a credential.
    fn refuse(&self, reason: Reason, route: &str, principal: Option<&str>) {
        self.denied.add(reason);
        tracing::debug!(
            reason = reason.label(),
            route,
            principal = principal.unwrap_or("-"),
            "request refused"
        );
    }

    fn token(&self, text: &str) -> Result<Identity, Denied> {
        match &self.authenticator {
            Some(a) => a.authenticate(text, self.clock.now_ms()),
            None => Err(Denied::Unavailable),
        }
    }
}

/// What the request may do, for handlers that check names found in the body.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    principal: Arc<str>,
    /// `None`: authentication is off, everything is allowed.
    grants: Option<Arc<Grants>>,
    auth: Option<Arc<AuthState>>,
}

impl Access {
    /// `Ok` when the request may do `operation` on the `kind` resource `name`, else the 403.
    pub(crate) fn require(
        &self,
        operation: Operation,
        kind: Kind,
        name: &str,
    ) -> Result<(), Problem> {
        let Some(grants) = &self.grants else { return Ok(()) };
        if grants.allows(operation, kind, name) {
            return Ok(());
        }
        if let Some(auth) = &self.auth {
            auth.refuse(Reason::Forbidden, "(a name in the body)", Some(&self.principal));
        }
        Err(forbidden(
            &self.principal,
            &policy::scope_text(operation, kind, Target::InBody, Some(name)),
        ))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Access {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        // The layer inserts it on every request; its absence is a wiring bug, and refusing is
        // the safe answer.
        parts.extensions.get::<Access>().cloned().ok_or_else(|| {
            Problem::internal("the request was not authorized (no access record); this is a bug")
        })
    }
}

/// The 401 answer.
fn unauthenticated(reason: Reason, presented: bool) -> Response {
    let detail = match reason {
        Reason::Missing => "this request needs credentials: send `Authorization: Bearer <token>` \
            (a token from `driftless token create`), sign in (POST /v1/session), or present a \
            client certificate"
            .to_string(),
        Reason::Session => "session rejected: unknown, expired, or its token was revoked or has \
            expired; sign in again"
            .to_string(),
        Reason::Malformed => "token rejected: the Authorization header must be `Bearer \
            dlt_<id>_<secret>`"
            .to_string(),
        Reason::Unknown => Denied::Unknown.to_string(),
        Reason::Expired => {
            format!("{}; create a new one with `driftless token create`", Denied::Expired)
        }
        _ => Denied::Unavailable.to_string(),
    };
    let mut response = Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "Authentication required",
        detail,
    )
    .into_response();
    let challenge = if presented {
        "Bearer realm=\"driftless\", error=\"invalid_token\""
    } else {
        "Bearer realm=\"driftless\""
    };
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    response
}

/// The 403 problem naming the missing scope.
fn forbidden(principal: &str, scope: &str) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "Not allowed",
        format!(
            "`{principal}` may not do this: it needs the scope `{scope}` (or one covering it: a \
             prefix pattern, `*`, or `admin` on the same resource)"
        ),
    )
}

/// Who the request is, or why it is not authenticated.
enum Who {
    Token(Identity),
    Client(Arc<str>, Arc<Grants>),
}

fn authenticate(auth: &AuthState, request: &Request) -> Result<Who, (Reason, bool)> {
    let headers = request.headers();
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let text = value.to_str().unwrap_or("");
        let token = match text.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => return Err((Reason::Malformed, true)),
        };
        return auth.token(token).map(Who::Token).map_err(|d| (Reason::from_denied(d), true));
    }
    if let Some(cookie) = session::cookie_value(headers) {
        let now = auth.clock.now_ms();
        let token_id = auth.sessions.token_of(&cookie, now).ok_or((Reason::Session, true))?;
        let identity = match &auth.authenticator {
            Some(a) => a.by_id(&token_id, now),
            None => Err(Denied::Unavailable),
        };
        return match identity {
            Ok(identity) => Ok(Who::Token(identity)),
            Err(_) => {
                // The token is gone or expired: so is the session.
                auth.sessions.close(&cookie);
                Err((Reason::Session, true))
            }
        };
    }
    let subject = request.extensions().get::<PeerIdentity>().and_then(|p| p.client_subject.clone());
    if let Some(subject) = subject {
        let grants = auth.clients.get(&subject).cloned().unwrap_or_default();
        return Ok(Who::Client(Arc::from(subject), grants));
    }
    Err((Reason::Missing, false))
}

/// The authentication and authorization layer (see the module documentation).
pub(crate) async fn layer(
    State(auth): State<Arc<AuthState>>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    if !auth.enabled {
        parts.extensions.insert(Principal::anonymous());
        parts.extensions.insert(Access {
            principal: Arc::from(Principal::ANONYMOUS),
            grants: None,
            auth: None,
        });
        return next.run(Request::from_parts(parts, body)).await;
    }
    let route = parts.extensions.get::<MatchedPath>().map(|m| m.as_str().to_string());
    let lookup = match &route {
        Some(route) => policy::lookup(&parts.method, route),
        // The fallback (no such route): only authenticated clients learn that.
        None => Lookup::OtherMethod,
    };
    if lookup == Lookup::Found(Rule::Public) {
        // A public route needs no credential, but acts as the one presented when it is valid
        // (`GET /v1/session` tells the dashboard who it is signed in as); an invalid one is
        // not refused here.
        let request = Request::from_parts(parts, body);
        let who = match authenticate(&auth, &request) {
            Ok(Who::Token(identity)) => Some(identity.name),
            Ok(Who::Client(name, _)) => Some(name),
            Err(_) => None,
        };
        let (mut parts, body) = request.into_parts();
        let name = who.unwrap_or_else(|| Arc::from(Principal::ANONYMOUS));
        parts.extensions.insert(Principal { name: Arc::clone(&name) });
        parts.extensions.insert(Access {
            principal: name,
            grants: Some(Arc::new(Grants::default())),
            auth: Some(Arc::clone(&auth)),
        });
        return next.run(Request::from_parts(parts, body)).await;
    }
    let request = Request::from_parts(parts, body);
    let (name, grants) = match authenticate(&auth, &request) {
        Ok(Who::Token(identity)) => (identity.name, identity.grants),
        Ok(Who::Client(name, grants)) => (name, grants),
        Err((reason, presented)) => {
            auth.refuse(reason, route.as_deref().unwrap_or("(no route)"), None);
            return unauthenticated(reason, presented);
        }
    };
    let (mut parts, body) = request.into_parts();
    let at = route.as_deref().unwrap_or("");
    match lookup {
        Lookup::Found(Rule::Need(op, kind, target)) => {
            let allowed = match target {
                Target::Every => grants.allows_every(op, kind),
                Target::InBody => grants.allows_some(op, kind),
                Target::Param(param) => {
                    let params = RawPathParams::from_request_parts(&mut parts, &()).await;
                    let value = params.ok().and_then(|p| {
                        p.iter().find(|(k, _)| *k == param).map(|(_, v)| v.to_string())
                    });
                    match value {
                        Some(value) if grants.allows(op, kind, &value) => true,
                        value => {
                            auth.refuse(
                                Reason::Forbidden,
                                route.as_deref().unwrap_or(""),
                                Some(&name),
                            );
                            let scope = policy::scope_text(op, kind, target, value.as_deref());
                            return forbidden(&name, &scope).into_response();
                        }
                    }
                }
            };
            if !allowed {
                auth.refuse(Reason::Forbidden, at, Some(&name));
                return forbidden(&name, &policy::scope_text(op, kind, target, None))
                    .into_response();
            }
        }
        Lookup::Found(Rule::Public) | Lookup::OtherMethod => {}
        Lookup::NoPolicy => {
            auth.refuse(Reason::NoPolicy, at, Some(&name));
            tracing::error!(
                route = route.as_deref().unwrap_or(""),
                method = %parts.method,
                "a served route has no authorization policy; refusing it (add it to auth/policy.rs)"
            );
            return Problem::new(
                StatusCode::FORBIDDEN,
                "no-policy",
                "Not allowed",
                "this route has no authorization policy, so it is refused to everyone",
            )
            .into_response();
        }
    }
    parts.extensions.insert(Principal { name: Arc::clone(&name) });
    parts.extensions.insert(Access {
        principal: name,
        grants: Some(grants),
        auth: Some(Arc::clone(&auth)),
    });
    next.run(Request::from_parts(parts, body)).await
}

// ---- sessions ------------------------------------------------------------------------------

/// Body of `POST /v1/session`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignIn {
    token: String,
}

/// Answer of a sign-in.
#[derive(Debug, Serialize)]
pub(crate) struct SignedIn {
    /// The principal the session acts as.
    principal: String,
    /// When the session ends, ms since the epoch.
    expires_at_ms: i64,
}

/// `POST /v1/session`: trades a token for a session cookie.
pub(crate) async fn sign_in(
    State(state): State<Arc<AppState>>,
    peer: Option<axum::Extension<PeerIdentity>>,
    ApiJson(body): ApiJson<SignIn>,
) -> Result<Response, Response> {
    let auth = &state.auth;
    if !auth.enabled {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "auth-disabled",
            "Authentication is off",
            "this server does not authenticate requests ([auth] enabled = false), so no \
             session is needed",
        )
        .into_response());
    }
    let identity = auth.token(&body.token).map_err(|d| {
        let reason = Reason::from_denied(d);
        auth.refuse(reason, "/v1/session", None);
        unauthenticated(reason, true)
    })?;
    let now = auth.clock.now_ms();
    let (cookie, expires_at_ms) = auth
        .sessions
        .open(Arc::clone(&identity.token_id), identity.expires_at_ms, now)
        .map_err(|e| match e {
            session::OpenError::Full(_) => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "sessions-full",
                "Too many sessions",
                e.to_string(),
            )
            .into_response(),
            session::OpenError::Random(e) => Problem::internal(e.to_string()).into_response(),
        })?;
    let tls = peer.is_some_and(|p| p.tls);
    let set = session::set_cookie(&cookie, expires_at_ms.saturating_sub(now), tls);
    let set = HeaderValue::from_str(&set).map_err(|_| {
        Problem::internal("the session cookie could not be encoded").into_response()
    })?;
    let answer = SignedIn { principal: identity.name.to_string(), expires_at_ms };
    Ok(([(header::SET_COOKIE, set)], Json(answer)).into_response())
}

/// Answer of `GET /v1/session`.
#[derive(Debug, Serialize)]
pub(crate) struct Session {
    /// Whether this server authenticates requests.
    auth_enabled: bool,
    /// The principal the request's credential (session cookie, token or client certificate)
    /// acts as; `null` when none was presented or it was not valid.
    principal: Option<String>,
}

/// `GET /v1/session`: who the request acts as (the dashboard shows it beside "sign out").
pub(crate) async fn who_am_i(
    State(state): State<Arc<AppState>>,
    axum::Extension(principal): axum::Extension<Principal>,
) -> Json<Session> {
    let signed_in = state.auth.enabled && &*principal.name != Principal::ANONYMOUS;
    Json(Session {
        auth_enabled: state.auth.enabled,
        principal: signed_in.then(|| principal.name.to_string()),
    })
}

/// `DELETE /v1/session`: ends the request's session (if any) and clears the cookie.
pub(crate) async fn sign_out(
    State(state): State<Arc<AppState>>,
    peer: Option<axum::Extension<PeerIdentity>>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(cookie) = session::cookie_value(&headers) {
        state.auth.sessions.close(&cookie);
    }
    let tls = peer.is_some_and(|p| p.tls);
    let clear = HeaderValue::from_str(&session::clear_cookie(tls))
        .unwrap_or_else(|_| HeaderValue::from_static("driftless_session=; Max-Age=0; Path=/"));
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, clear)]).into_response()
}

/// The rule for documenting `method route` in the OpenAPI document: `None` for a public
/// route, else the scope text with the route's parameter in braces.
pub(crate) fn documented_scope(method: &str, route: &str) -> Option<Option<String>> {
    let upper = method.to_ascii_uppercase();
    let row = policy::POLICIES.iter().find(|p| p.method == upper && p.route == route)?;
    Some(match row.rule {
        Rule::Public => None,
        Rule::Need(op, kind, target) => Some(policy::scope_text(op, kind, target, None)),
    })
}

#[cfg(test)]
mod tests {
    //! What needs a connection's facts ([`PeerIdentity`]), which only the TLS accept loop
    //! provides: requests are given the extension directly and sent through the real router.
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use axum::body::Body;
    use tower_service::Service;

    fn router(dir: &std::path::Path, clients: &[(&str, &[&str])]) -> axum::Router {
        let broker = Arc::new(
            driftless_broker::Broker::open(&dir.join("data"), Default::default()).unwrap(),
        );
        let mut config = ServerConfig::default();
        config.auth.enabled = true;
        config.auth.tokens_file = Some(dir.join("tokens.json"));
        for (subject, scopes) in clients {
            config
                .auth
                .clients
                .insert(subject.to_string(), scopes.iter().map(|s| s.to_string()).collect());
        }
        crate::router(broker, &config)
    }

    async fn call(router: &mut axum::Router, request: axum::http::Request<Body>) -> Response {
        std::future::poll_fn(|cx| Service::<axum::http::Request<Body>>::poll_ready(router, cx))
            .await
            .unwrap();
        router.call(request).await.unwrap()
    }

    fn request(
        method: &str,
        path: &str,
        peer: PeerIdentity,
        body: &str,
    ) -> axum::http::Request<Body> {
        let mut r = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        r.extensions_mut().insert(peer);
        r
    }

    #[tokio::test]
    async fn a_client_certificate_subject_acts_with_its_configured_scopes_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut app = router(dir.path(), &[("billing-svc", &["read:topic:*"])]);
        let peer = |subject: &str| PeerIdentity { tls: true, client_subject: Some(subject.into()) };
        let r = call(&mut app, request("GET", "/v1/topics", peer("billing-svc"), "")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let r =
            call(&mut app, request("POST", "/v1/topics", peer("billing-svc"), r#"{"name":"x"}"#))
                .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        // A verified subject that is not configured is authenticated but may do nothing.
        let r = call(&mut app, request("GET", "/v1/topics", peer("stranger"), "")).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        // TLS without a client certificate is not a credential.
        let r = call(
            &mut app,
            request("GET", "/v1/topics", PeerIdentity { tls: true, client_subject: None }, ""),
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn a_session_cookie_set_over_tls_is_secure() {
        let dir = tempfile::tempdir().unwrap();
        let store = driftless_auth::TokenStore::new(dir.path().join("tokens.json"));
        let created = store
            .create(
                "op",
                &["read:topic:*".to_string()],
                None,
                crate::routes::now_ms(),
                &mut driftless_auth::OsRandom,
            )
            .unwrap();
        let mut app = router(dir.path(), &[]);
        let body = serde_json::json!({"token": created.token.text}).to_string();
        let tls = PeerIdentity { tls: true, client_subject: None };
        let r = call(&mut app, request("POST", "/v1/session", tls.clone(), &body)).await;
        assert_eq!(r.status(), StatusCode::OK);
        let cookie = r.headers()[header::SET_COOKIE].to_str().unwrap().to_string();
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "; Secure"] {
            assert!(cookie.contains(attr), "{attr}: {cookie}");
        }
        let r = call(&mut app, request("DELETE", "/v1/session", tls, "")).await;
        let cleared = r.headers()[header::SET_COOKIE].to_str().unwrap();
        assert!(cleared.contains("Max-Age=0") && cleared.contains("Secure"), "{cleared}");
    }
}

//! Request extractors whose rejections are problem documents instead of axum's plain text.
//!
//! Invariants: a body is read only up to `request_body_bytes_max` (the router's
//! `DefaultBodyLimit`), and a longer one is answered 413; all of it must arrive within
//! `body_read_timeout_ms` of the handler asking for it, else 408 (a client trickling a body
//! holds its connection no longer than that; hyper then closes the connection, whose body was
//! left unread); a JSON body must say so in its `Content-Type` (`application/json` or
//! `application/*+json`, else 415: a cross-origin page can send `text/plain` without a CORS
//! preflight, never JSON — see `guard.rs`), and a body an endpoint ignores, if not empty, must be
//! declared the same way, or be a CloudEvents binary-mode event (`ce-*` headers, which a page
//! cannot send without a preflight either); JSON bodies must parse, and a parse failure names
//! the line and column, or the field when serde says which; a JSON body with a member given twice in
//! one object (at any depth) is refused 400 naming it — parsers disagree on which occurrence
//! counts (`serde_json` keeps the last, so `{"name":"a","name":"b"}` created `b`).

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::problem::Problem;
use crate::AppState;

/// The raw request body, bounded by the body limit.
#[derive(Debug)]
pub struct Body(pub Bytes);

impl FromRequest<Arc<AppState>> for Body {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let declared = body_declared(req.headers());
        let body = read_body(req, state).await?;
        if !body.0.is_empty() {
            declared?;
        }
        Ok(body)
    }
}

/// Whether a non-empty body's headers declare it acceptably: JSON, or a CloudEvents binary-mode
/// event, whose `ce-*` headers need a preflight cross-origin just as JSON does (the produce
/// endpoint then judges its content type itself, see `cloudevents.rs`).
fn body_declared(headers: &HeaderMap) -> Result<(), Problem> {
    if headers.keys().any(|k| k.as_str().starts_with("ce-")) {
        return Ok(());
    }
    require_json(
        headers,
        "a request body must be JSON (Content-Type: application/json, or a CloudEvents media \
         type where events are produced) or a CloudEvents binary-mode event (ce-* headers)",
    )
}

/// Refuses (415) a request whose `Content-Type` is not `application/json` or
/// `application/*+json` (parameters such as `charset` are ignored).
/// `expected` says what to send instead.
pub fn require_json(headers: &HeaderMap, expected: &str) -> Result<(), Problem> {
    let content_type = headers.get(header::CONTENT_TYPE);
    let media = content_type
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    let json = media.as_deref().is_some_and(|m| {
        m == "application/json"
            || m.strip_prefix("application/").is_some_and(|sub| sub.ends_with("+json"))
    });
    if json {
        return Ok(());
    }
    let got = match (content_type, media) {
        (None, _) => "no Content-Type".to_string(),
        (Some(_), Some(m)) => format!("Content-Type {m:?}"),
        (Some(_), None) => "a Content-Type that is not ASCII".to_string(),
    };
    Err(Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
        "Unsupported media type",
        format!("{expected}; got {got}"),
    )
    .with_field("content-type"))
}

/// Reads the whole body within `body_read_timeout_ms` and `request_body_bytes_max`.
async fn read_body(req: Request, state: &Arc<AppState>) -> Result<Body, Problem> {
    {
        let timeout = state.body_read_timeout;
        let read = tokio::time::timeout(timeout, Bytes::from_request(req, state)).await;
        let Ok(read) = read else {
            return Err(Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                "Request body too slow",
                format!(
                    "the request body did not arrive within body_read_timeout_ms ({} ms); send \
                     it at once, or smaller",
                    timeout.as_millis()
                ),
            ));
        };
        match read {
            Ok(b) => Ok(Body(b)),
            Err(rejection) => {
                let status = rejection.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    // The limit in bytes and its setting, so a client can split its requests to
                    // fit (`driftless produce` does) and an operator knows what to raise.
                    let max = state.request_body_bytes_max;
                    let mut problem = Problem::new(
                        status,
                        "body-too-large",
                        "Request body too large",
                        format!(
                            "the request body is larger than the server's limit of {max} bytes \
                             ([server] request_body_bytes_max); send fewer or smaller events per \
                             request, or raise the setting"
                        ),
                    );
                    problem.at.limit = Some("request_body_bytes_max".to_string());
                    problem.at.limit_bytes = Some(max as u64);
                    Err(problem)
                } else {
                    Err(Problem::new(
                        status,
                        "unreadable-body",
                        "Request body could not be read",
                        rejection.body_text(),
                    ))
                }
            }
        }
    }
}

/// A JSON request body deserialized into `T`.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let declared = require_json(
            req.headers(),
            "this endpoint takes a JSON body: send it with Content-Type: application/json",
        );
        // Read even when refused: a body left unread makes hyper close the connection.
        let Body(bytes) = read_body(req, state).await?;
        declared?;
        parse_json(&bytes).map(Self)
    }
}

/// Parses a JSON body, telling syntax errors (with line and column) from shape errors, and
/// refusing a member given twice in one object.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Problem::malformed_json("the request body", &e))?;
    // A second, allocation-light pass (the body is bounded by `request_body_bytes_max`): the
    // tree above already kept the last of two members, so the repeat must be found in the text.
    if let Err(e) = serde_json::from_slice::<NoRepeat>(bytes) {
        let text = e.to_string();
        // Between the first and the last backquote: the name itself may hold one.
        let member = match (text.find('`'), text.rfind('`')) {
            (Some(a), Some(b)) if a < b => text[a + 1..b].to_string(),
            _ => String::new(),
        };
        return Err(Problem::bad_request(format!(
            "the request body gives the member `{member}` more than once in one object; \
             give each member once"
        ))
        .with_field(member));
    }
    serde_json::from_value(value).map_err(|e| Problem::invalid_body("the request body", &e))
}

/// A query string deserialized into `T`.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(q)) => Ok(Self(q)),
            Err(rejection) => Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-query",
                "Invalid query string",
                rejection.body_text(),
            )),
        }
    }
}

/// Path parameters deserialized into `T`.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(p)) => Ok(Self(p)),
            Err(rejection) => Err(Problem::new(
                rejection.status(),
                "invalid-path",
                "Invalid path parameter",
                rejection.body_text(),
            )),
        }
    }
}

/// The member name under which serde_json's `arbitrary_precision` passes a number's digits.
const ARBITRARY_PRECISION_NUMBER: &str = "$serde_json::private::Number";

/// A JSON value walked only to prove that no object in it repeats a member; the error's text
/// carries the repeated name between backquotes.
struct NoRepeat;

impl<'de> Deserialize<'de> for NoRepeat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NoRepeat;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<NoRepeat, E> {
                Ok(NoRepeat)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<NoRepeat, E> {
                Ok(NoRepeat)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<NoRepeat, E> {
                Ok(NoRepeat)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<NoRepeat, E> {
                Ok(NoRepeat)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<NoRepeat, E> {
                Ok(NoRepeat)
            }
            fn visit_unit<E: de::Error>(self) -> Result<NoRepeat, E> {
                Ok(NoRepeat)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NoRepeat, A::Error> {
                while seq.next_element::<NoRepeat>()?.is_some() {}
                Ok(NoRepeat)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoRepeat, A::Error> {
                let mut seen = HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == ARBITRARY_PRECISION_NUMBER {
                        map.next_value::<de::IgnoredAny>()?;
                        continue;
                    }
                    if !seen.insert(key.clone()) {
                        return Err(de::Error::custom(format_args!("repeated member `{key}`")));
                    }
                    map.next_value::<NoRepeat>()?;
                }
                Ok(NoRepeat)
            }
        }
        d.deserialize_any(V)
    }
}

//! Request extractors whose rejections are problem documents instead of axum's plain text.
//!
//! Invariants: a body is read only up to `request_body_bytes_max` (the router's
//! `DefaultBodyLimit`), and a longer one is answered 413; JSON bodies are accepted whatever
//! their `Content-Type` (clients need not set it) but must parse, and a parse failure names the
//! line and column, or the field when serde says which.

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::problem::Problem;

/// The raw request body, bounded by the body limit.
#[derive(Debug)]
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(Self(b)),
            Err(rejection) => {
                let status = rejection.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    Err(Problem::new(
                        status,
                        "body-too-large",
                        "Request body too large",
                        "the request body exceeds request_body_bytes_max; send fewer or smaller \
                         events per request"
                            .to_string(),
                    ))
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

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Body(bytes) = Body::from_request(req, state).await?;
        parse_json(&bytes).map(Self)
    }
}

/// Parses a JSON body, telling syntax errors (with line and column) from shape errors.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Problem::malformed_json("the request body", &e))?;
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

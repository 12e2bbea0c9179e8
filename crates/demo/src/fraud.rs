//! The demo's Fraud service: an HTTP endpoint on loopback that receives Driftless's webhooks and
//! checks each one's Standard Webhooks signature, as a real receiver would.
//!
//! Invariant: a request counts as received only if its `webhook-signature` verifies against the
//! shared secret over `{webhook-id}.{webhook-timestamp}.{body}`; anything else is answered 401
//! and counted as rejected. Duplicates (a retried `webhook-id`) are counted once.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use driftless_sink::webhook::{secret_key, sign};

/// The shared secret of the demo's webhook.
pub const SECRET: &str = "whsec_ZHJpZnRsZXNzLWRlbW8tZnJhdWQtc2VjcmV0";

/// What the Fraud service saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Distinct event ids received with a valid signature.
    pub ids: BTreeSet<String>,
    /// Requests refused (bad or missing signature).
    pub rejected: u64,
    /// Requests received in all (retries included).
    pub requests: u64,
}

async fn receive(
    State(seen): State<Arc<Mutex<Seen>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let (id, ts, signature) = (h("webhook-id"), h("webhook-timestamp"), h("webhook-signature"));
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    seen.requests += 1;
    let valid =
        ts.parse::<i64>().is_ok_and(|ts| sign(&secret_key(SECRET), &id, ts, &body) == signature);
    if !valid {
        seen.rejected += 1;
        return StatusCode::UNAUTHORIZED;
    }
    seen.ids.insert(id);
    StatusCode::NO_CONTENT
}

/// Starts the receiver on a free loopback port; returns its URL and what it sees.
pub async fn start() -> std::io::Result<(String, Arc<Mutex<Seen>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/fraud/webhooks", listener.local_addr()?);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = Router::new().route("/fraud/webhooks", post(receive)).with_state(Arc::clone(&seen));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, seen))
}

//! The webhook target against a real HTTP receiver on loopback: signed requests in both modes, a
//! retried request carrying the same idempotency key, a 4xx going to the dead-letter queue, and a
//! receiver that is down opening the circuit without blaming any event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use driftless_sink::webhook::{secret_key, sign};
use driftless_sink::SinkState;
use serde_json::{json, Value};
use support::{broker, caught_up, event, quick_retries, start, wait_until};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<Received>>,
}

async fn receive(
    State(r): State<Arc<Receiver>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let id = headers.get("webhook-id").cloned().unwrap_or_default();
    let mut got = r.got.lock().unwrap();
    // Per endpoint: both sinks receive the same events.
    let seen_before = got
        .iter()
        .filter(|g| g.headers.get("webhook-id") == Some(&id) && g.path == uri.path())
        .count();
    got.push(Received { path: uri.path().to_string(), headers, body: body.to_vec() });
    match id.as_str() {
        "flaky" if seen_before == 0 => StatusCode::SERVICE_UNAVAILABLE,
        "bad" => StatusCode::BAD_REQUEST,
        _ => StatusCode::OK,
    }
}

async fn serve_on(listener: tokio::net::TcpListener) -> Arc<Receiver> {
    let state = Arc::new(Receiver::default());
    let app = Router::new()
        .route("/structured", post(receive))
        .route("/binary", post(receive))
        .with_state(Arc::clone(&state));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    state
}

fn sinks_toml(addr: &str) -> String {
    format!(
        r#"
        [[sink]]
        name = "fraud"
        topics = ["customers"]
        target = {{ kind = "webhook", url = "http://{addr}/structured", secret = "{SECRET}" }}
        [[sink.mapping]]
        types = ["customer.*"]

        [[sink]]
        name = "fraud-binary"
        topics = ["customers"]
        target = {{ kind = "webhook", url = "http://{addr}/binary", mode = "binary", secret = "{SECRET}" }}
        "#
    )
}

fn verify(r: &Received) {
    let id = &r.headers["webhook-id"];
    let ts: i64 = r.headers["webhook-timestamp"].parse().unwrap();
    let expected = sign(&secret_key(SECRET), id, ts, &r.body);
    assert_eq!(r.headers["webhook-signature"], expected, "signature of {id} on {}", r.path);
    assert_eq!(r.headers["idempotency-key"], *id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_retried_with_the_same_id_and_4xx_goes_to_the_dlq() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let receiver = serve_on(listener).await;
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), quick_retries(), "customers", 2);
    let ev = |id: &str, ty: &str| event(id, id, ty, json!({"n": 1}), None);
    b.produce(
        "customers",
        vec![
            ev("ok", "customer.created"),
            ev("flaky", "customer.updated"),
            ev("bad", "customer.updated"),
            ev("other", "order.created"), // the structured sink's mapping skips it
        ],
    )
    .unwrap();
    let sinks = start(&sinks_toml(&addr), &b);
    wait_until("both sinks to finish", Duration::from_secs(30), || async {
        caught_up(&b, "sink-fraud") && caught_up(&b, "sink-fraud-binary")
    })
    .await;
    let got = receiver.got.lock().unwrap().clone();
    let on = |path: &str, id: &str| -> Vec<Received> {
        got.iter().filter(|r| r.path == path && r.headers["webhook-id"] == id).cloned().collect()
    };
    for r in &got {
        verify(r);
    }
    let flaky = on("/structured", "flaky");
    assert_eq!(flaky.len(), 2, "the 503 was retried once");
    assert_eq!(flaky[0].body, flaky[1].body, "a retry resends the same event");
    assert_eq!(on("/structured", "ok").len(), 1);
    assert!(on("/structured", "other").is_empty(), "the mapping's types filter it out");
    assert_eq!(on("/binary", "other").len(), 1, "no mapping: every event goes");
    assert_eq!(on("/binary", "flaky").len(), 2, "each endpoint's 503 is retried");
    let body: Value = serde_json::from_slice(&on("/structured", "ok")[0].body).unwrap();
    assert_eq!(body["id"], "ok");
    assert_eq!(body["type"], "customer.created");
    let binary = &on("/binary", "ok")[0];
    assert_eq!(binary.headers["ce-id"], "ok");
    assert_eq!(binary.headers["ce-type"], "customer.created");
    assert_eq!(serde_json::from_slice::<Value>(&binary.body).unwrap(), json!({"n": 1}));

    let dead = b.dead_letters("sink-fraud").unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].event["id"], "bad");
    assert_eq!(dead[0].attempts, 1, "a 4xx is not retried");
    assert!(dead[0].errors[0].contains("400"), "{:?}", dead[0].errors);
    sinks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_is_down_opens_the_circuit_and_blames_no_event() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), quick_retries(), "customers", 1);
    let events: Vec<_> = (0..5)
        .map(|i| event(&format!("e{i}"), &format!("k{i}"), "customer.x", json!({}), None))
        .collect();
    b.produce("customers", events).unwrap();
    let toml = format!(
        r#"
        [[sink]]
        name = "fraud"
        topics = ["customers"]
        target = {{ kind = "webhook", url = "http://{addr}/structured", breaker_failures_max = 2, breaker_open_ms = 200 }}
        "#
    );
    let sinks = start(&toml, &b);
    let status = sinks.statuses()[0].clone();
    wait_until("the sink to see the outage", Duration::from_secs(30), || async {
        status.state().0 == SinkState::Retrying
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // many breaker periods
    assert!(b.dead_letters("sink-fraud").unwrap().is_empty(), "an outage blames no event");
    assert!(status.state().1.unwrap_or_default().contains("unavailable"));

    let receiver = serve_on(tokio::net::TcpListener::bind(&addr).await.unwrap()).await;
    wait_until("the catch-up", Duration::from_secs(30), || async { caught_up(&b, "sink-fraud") })
        .await;
    let mut ids: Vec<String> =
        receiver.got.lock().unwrap().iter().map(|r| r.headers["webhook-id"].clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids, ["e0", "e1", "e2", "e3", "e4"]);
    sinks.shutdown().await;
}

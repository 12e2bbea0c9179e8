#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Sinks through the HTTP API: a `sqlite` sink configured in `[[sink]]` starts with the server,
//! keeps a projection of what is produced over HTTP, shows in `/v1/sinks` and `/metrics`, pauses
//! and resumes; an unknown sink is a 404 problem; a bad mapping stops the start with its name.

mod support;

use std::time::{Duration, Instant};

use driftless_broker::BrokerConfig;
use driftless_sink::SinkConfig;
use serde_json::{json, Value};

fn wait(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sink(db: &std::path::Path, extra: &str) -> SinkConfig {
    toml::from_str(&format!(
        r#"
        name = "billing"
        topics = ["customers"]
        target = {{ kind = "sqlite", path = "{}" }}
        [[mapping]]
        types = ["customer.address_changed.*"]
        table = "invoice_contacts"
        key = ["customer_id"]
        columns = {{ customer_id = ".subject", city_line = '"\(.data.zip) \(.data.city)"' }}
        {extra}
        "#,
        db.display()
    ))
    .unwrap()
}

fn address_changed(id: &str, customer: &str, city: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/customers",
           "type": "customer.address_changed.v1", "subject": customer,
           "time": "2026-11-25T12:00:00Z", "data": {"zip": "10115", "city": city}})
}

fn city_of(db: &std::path::Path, customer: &str) -> Option<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(
        "SELECT city_line FROM invoice_contacts WHERE customer_id = ?1",
        [customer],
        |r| r.get(0),
    )
    .ok()
}

#[test]
fn a_configured_sink_projects_reports_pauses_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("billing.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TABLE invoice_contacts (customer_id TEXT PRIMARY KEY, city_line TEXT, \
             driftless_version TEXT)",
        )
        .unwrap();
    let mut config = support::config(BrokerConfig::default());
    config.sinks.push(sink(&db, ""));
    let server = support::start(config);
    server.create_topic("customers", 2);
    server.produce("customers", &[address_changed("e1", "c-1", "Berlin")]);
    wait("the projection", || city_of(&db, "c-1").as_deref() == Some("10115 Berlin"));

    let list = server.get("/v1/sinks").json();
    assert_eq!(list[0]["name"], json!("billing"));
    assert_eq!(list[0]["kind"], json!("sqlite"));
    assert_eq!(list[0]["group"], json!("sink-billing"));
    assert_eq!(list[0]["events_applied_total"], json!(1));

    server.post("/v1/sinks/billing/pause", &Value::Null);
    wait("the sink to pause", || {
        server.get("/v1/sinks/billing").json()["state"] == json!("paused")
    });
    server.produce("customers", &[address_changed("e2", "c-1", "Hamburg")]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        city_of(&db, "c-1").as_deref(),
        Some("10115 Berlin"),
        "a paused sink must not apply"
    );
    server.post("/v1/sinks/billing/resume", &Value::Null);
    wait("the change after resume", || city_of(&db, "c-1").as_deref() == Some("10115 Hamburg"));

    let metrics = server.get("/metrics").text;
    assert!(
        metrics.contains("driftless_sink_events_total{sink=\"billing\",outcome=\"applied\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("driftless_sink_state{sink=\"billing\",state=\"running\"} 1"));
    assert!(metrics.contains("driftless_projection_freshness_seconds{sink=\"billing\""));
    assert!(metrics.contains("driftless_sink_batch_events_count{sink=\"billing\"}"));

    let started = server.post("/v1/sinks/billing/rebuild", &Value::Null);
    assert_eq!(started.status, 202);
    wait("the rebuild", || {
        server.get("/v1/sinks/billing").json()["rebuild"]["phase"] == json!("done")
    });
    assert_eq!(city_of(&db, "c-1").as_deref(), Some("10115 Hamburg"), "rebuilt from the log");

    let p = server.get("/v1/sinks/nope").problem(404);
    assert!(p["detail"].as_str().unwrap().contains("nope"), "{p}");
}

#[test]
fn a_mapping_that_does_not_compile_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(BrokerConfig::default());
    let mut bad = sink(&dir.path().join("x.db"), "");
    bad.mappings[0].columns.insert("city_line".into(), ".data | ".into());
    config.sinks.push(bad);
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("sink[0].mapping[0].columns.city_line"), "{err}");
    assert!(err.contains("expected term at column 9"), "{err}");
}

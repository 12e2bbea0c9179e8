#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Sources through the HTTP API: a `sqlite_outbox` source configured in `[[source]]` starts with
//! the server, relays rows, shows in `/v1/sources` and `/metrics`, pauses and resumes, recreates
//! a topic deleted under it; an unknown source is a 404 problem.

mod support;

use std::time::{Duration, Instant};

use driftless_broker::BrokerConfig;
use driftless_connect::config::{OutboxColumns, SqliteOutboxConfig};
use driftless_connect::{SourceConfig, SourceKind};
use serde_json::{json, Value};

fn insert(path: &std::path::Path, id: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute(
        "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) \
         VALUES (?1, 'customers', 'c-1', 'customer.created.v1', '{}')",
        [id],
    )
    .unwrap();
}

fn wait(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_configured_source_relays_reports_pauses_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("customers.db");
    driftless_connect::sqlite_outbox::init_sqlite(&db, "outbox").unwrap();
    let mut config = support::config(BrokerConfig::default());
    config.sources.push(SourceConfig {
        name: "customers".into(),
        kind: SourceKind::SqliteOutbox(SqliteOutboxConfig {
            path: db.clone(),
            outbox: OutboxColumns::default(),
            poll_interval_ms: 10,
            batch_rows_max: 100,
        }),
        partitions: 2,
        paused: false,
    });
    let server = support::start(config);
    insert(&db, "e-1");
    let topic_events = |server: &support::Server| -> u64 {
        let r = server.get("/v1/topics/customers");
        if r.status != 200 {
            return 0;
        }
        r.json()["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["end_offset"].as_u64().unwrap())
            .sum()
    };
    wait("the first row to be relayed", || topic_events(&server) == 1);

    let list = server.get("/v1/sources").json();
    assert_eq!(list[0]["name"], json!("customers"));
    assert_eq!(list[0]["kind"], json!("sqlite_outbox"));
    assert_eq!(list[0]["state"], json!("running"));
    assert_eq!(list[0]["events_total"], json!(1));

    let paused = server.post("/v1/sources/customers/pause", &Value::Null).json();
    assert_eq!(paused["name"], json!("customers"));
    wait("the source to pause", || {
        server.get("/v1/sources/customers").json()["state"] == json!("paused")
    });
    insert(&db, "e-2");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(topic_events(&server), 1, "a paused source must not relay");
    server.post("/v1/sources/customers/resume", &Value::Null);
    wait("the second row after resume", || topic_events(&server) == 2);

    let metrics = server.get("/metrics").text;
    assert!(metrics.contains("driftless_source_events_total{source=\"customers\"} 2"), "{metrics}");
    assert!(metrics.contains("driftless_source_state{source=\"customers\",state=\"running\"} 1"));
    assert!(metrics.contains("driftless_outbox_backlog_rows{source=\"customers\"}"));
    assert!(
        metrics.contains("driftless_source_commit_to_durable_seconds_count{source=\"customers\"}")
    );

    // Deleting the topic a configured source writes is refused, naming it (issue 22)...
    let p = server.delete("/v1/topics/customers").problem(409);
    assert_eq!(p["used_by"], json!(["source/customers"]), "{p}");
    // ...unless forced: a topic deleted under a running source is recreated by its retry;
    // nothing is lost.
    assert_eq!(server.delete("/v1/topics/customers?force=true").status, 204);
    insert(&db, "e-3");
    wait("the topic to be recreated with the new row", || topic_events(&server) == 1);
    wait("the source to run again", || {
        server.get("/v1/sources/customers").json()["state"] == json!("running")
    });

    let p = server.get("/v1/sources/nope").problem(404);
    assert!(p["detail"].as_str().unwrap().contains("nope"), "{p}");
}

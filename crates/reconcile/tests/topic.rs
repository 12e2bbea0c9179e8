//! A topic as the source of truth: its events folded through the sink's own mapping (computed
//! columns included) are compared with a SQLite projection kept by a real sink; a hand edit, a
//! lost row and a ghost row are found, repaired by re-emitting the latest events, and gone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use driftless_broker::{Broker, BrokerConfig, TopicSpec};
use driftless_core::Event;
use driftless_reconcile::{DriftKind, ReconcileConfig, Reconcilers};
use driftless_sink::{SinkConfig, Sinks};
use serde_json::json;

fn exec(path: &std::path::Path, sql: &str) {
    rusqlite::Connection::open(path).unwrap().execute_batch(sql).unwrap();
}

fn changed(id: &str, key: &str, zip: &str, city: &str) -> Event {
    let mut e = Event::new(id, "/customers", "customer.changed");
    e.subject = Some(key.into());
    e.data = Some(json!({"zip": zip, "city": city}));
    e
}

async fn caught_up(b: &Broker) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b.describe_group("sink-crm").is_ok_and(|g| {
        !g.partitions.is_empty()
            && g.partitions.iter().all(|p| p.lag_events == 0 && p.inflight == 0)
    }) {
        assert!(Instant::now() < deadline, "the sink did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_source_finds_drift_in_computed_columns_and_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let proj = dir.path().join("crm.db");
    exec(
        &proj,
        "CREATE TABLE contacts (id TEXT PRIMARY KEY, city_line TEXT, driftless_version TEXT)",
    );
    let broker = Arc::new(Broker::open(&dir.path().join("log"), BrokerConfig::default()).unwrap());
    broker.create_topic("customers", TopicSpec { partitions: 2, ..TopicSpec::default() }).unwrap();
    let mut events = Vec::new();
    for i in 0..40 {
        events.push(changed(&format!("e{i}"), &format!("c{i:02}"), "10115", "Berlin"));
    }
    for i in 0..10 {
        events.push(changed(&format!("m{i}"), &format!("c{i:02}"), "20095", "Hamburg"));
    }
    let mut gone = Event::new("d1", "/customers", "customer.removed");
    gone.subject = Some("c39".into());
    events.push(gone);
    broker.produce("customers", events).unwrap();
    let sink: SinkConfig = toml::from_str(&format!(
        r#"
        name = "crm"
        topics = ["customers"]
        target = {{ kind = "sqlite", path = "{}" }}
        [[mapping]]
        types = ["customer.changed"]
        table = "contacts"
        key = ["id"]
        columns = {{ id = ".subject", city_line = '"\(.data.zip) \(.data.city)"' }}
        [[mapping]]
        types = ["customer.removed"]
        table = "contacts"
        key = ["id"]
        op = "delete"
        "#,
        proj.display()
    ))
    .unwrap();
    let sinks = Sinks::start(vec![sink.clone()], Arc::clone(&broker)).unwrap();
    caught_up(&broker).await;

    exec(
        &proj,
        "UPDATE contacts SET city_line = '99999 Nowhere' WHERE id = 'c03'; \
                 DELETE FROM contacts WHERE id = 'c20'; \
                 INSERT INTO contacts VALUES ('ghost', 'x', '0'); \
                 INSERT INTO contacts VALUES ('c39', '10115 Berlin', '0');",
    );
    let config: ReconcileConfig = toml::from_str(
        "name = \"crm\"\nsink = \"crm\"\nlag_window_ms = 0\nsource = { kind = \"topic\" }\n\
         [correction]\nupsert_type = \"customer.changed\"\ndelete_type = \"customer.removed\"\n",
    )
    .unwrap();
    let r =
        Reconcilers::start(vec![config], std::slice::from_ref(&sink), Arc::clone(&broker)).unwrap();
    let found = r.run_now("crm", Some(false)).await.unwrap();
    assert!(found.not_compared.is_empty(), "the computed column is compared: {found:?}");
    assert_eq!(found.rows_source, 39, "40 keys, one deleted");
    assert_eq!(found.keys[&DriftKind::Stale], ["c03"]);
    assert_eq!(found.keys[&DriftKind::Missing], ["c20"]);
    assert_eq!(found.keys[&DriftKind::Extra], ["c39", "ghost"]);

    let repaired = r.run_now("crm", Some(true)).await.unwrap();
    assert_eq!(repaired.repaired, 4);
    caught_up(&broker).await;
    let after = r.run_now("crm", Some(false)).await.unwrap();
    assert_eq!((after.missing, after.extra, after.stale), (0, 0, 0), "{after:?}");
    let line: String = rusqlite::Connection::open(&proj)
        .unwrap()
        .query_row("SELECT city_line FROM contacts WHERE id = 'c03'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(line, "20095 Hamburg", "the latest event was applied again");
    sinks.shutdown().await;
}

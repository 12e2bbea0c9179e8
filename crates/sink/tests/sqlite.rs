//! The SQLite table target against a real SQLite file: a clean pass, redelivery of everything
//! (nothing changes), the version guard and tombstones, and a schema error that names the table
//! and column.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use driftless_broker::{BrokerConfig, SeekTarget};
use driftless_sink::SinkState;
use serde_json::json;
use support::{broker, caught_up, event, start, wait_until};

fn sink_toml(path: &Path) -> String {
    format!(
        r#"
        [[sink]]
        name = "contacts"
        topics = ["customers"]
        target = {{ kind = "sqlite", path = "{}" }}
        [[sink.mapping]]
        types = ["customer.upserted"]
        table = "contacts"
        key = ["id"]
        columns = {{ id = ".subject", city = ".data.city", n = ".data.n" }}
        [[sink.mapping]]
        types = ["customer.deleted"]
        table = "contacts"
        key = ["id"]
        op = "delete"
        "#,
        path.display()
    )
}

fn rows(path: &Path) -> BTreeMap<String, (String, i64, String)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn.prepare("SELECT id, city, n, driftless_version FROM contacts").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn create(path: &Path) {
    rusqlite::Connection::open(path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE contacts (id TEXT PRIMARY KEY, city TEXT, n INTEGER, \
             driftless_version TEXT)",
        )
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_projection_survives_redelivery_and_refuses_stale_events() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("proj.db");
    create(&db);
    let b = broker(&dir.path().join("log"), BrokerConfig::default(), "customers", 2);
    let up = |id: &str, key: &str, city: &str, n: i64, seq: &str| {
        event(id, key, "customer.upserted", json!({"city": city, "n": n}), Some(seq))
    };
    b.produce(
        "customers",
        vec![
            up("a1", "a", "first", 1, "0001"),
            up("a2", "a", "second", 2, "0002"),
            up("a0", "a", "stale", 0, "0000"),
            up("d1", "d", "gone", 1, "0001"),
            event("d2", "d", "customer.deleted", json!({}), Some("0003")),
            up("d0", "d", "zombie", 9, "0002"),
            up("z1", "z", "other", 5, "0001"),
        ],
    )
    .unwrap();
    let sinks = start(&sink_toml(&db), &b);
    wait_until("the events", Duration::from_secs(30), || async { caught_up(&b, "sink-contacts") })
        .await;
    let want = BTreeMap::from([
        ("a".to_string(), ("second".to_string(), 2, "0002".to_string())),
        ("z".to_string(), ("other".to_string(), 5, "0001".to_string())),
    ]);
    assert_eq!(rows(&db), want, "stale upserts refused, the delete kept by its tombstone");

    b.seek("sink-contacts", "customers", None, SeekTarget::Earliest).unwrap();
    let status = sinks.statuses()[0].clone();
    wait_until("the replay", Duration::from_secs(30), || async {
        status.report().events_applied_total >= 14 && caught_up(&b, "sink-contacts")
    })
    .await;
    assert_eq!(rows(&db), want, "the replay changed nothing");
    sinks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_sqlite_column_is_named_and_the_sink_resumes_once_added() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("proj.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TABLE contacts (id TEXT PRIMARY KEY, city TEXT, driftless_version TEXT)",
        )
        .unwrap();
    let b = broker(&dir.path().join("log"), BrokerConfig::default(), "customers", 1);
    b.produce(
        "customers",
        vec![event("e1", "c1", "customer.upserted", json!({"city": "x", "n": 7}), None)],
    )
    .unwrap();
    let sinks = start(&sink_toml(&db), &b);
    let status = sinks.statuses()[0].clone();
    wait_until("the schema error", Duration::from_secs(30), || async {
        status.state().1.is_some_and(|e| e.contains("`contacts`") && e.contains("`n`"))
    })
    .await;
    assert_eq!(status.state().0, SinkState::Retrying);
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("ALTER TABLE contacts ADD COLUMN n INTEGER")
        .unwrap();
    wait_until("the sink to resume", Duration::from_secs(60), || async {
        caught_up(&b, "sink-contacts")
    })
    .await;
    assert_eq!(rows(&db)["c1"].1, 7);
    sinks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_rebuild_replaces_a_drifted_table_with_a_clean_pass() {
    use driftless_sink::rebuild::RebuildPhase;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("proj.db");
    create(&db);
    let b = broker(&dir.path().join("log"), BrokerConfig::default(), "customers", 2);
    let events: Vec<_> = (0..200)
        .map(|i| {
            let data = json!({"city": format!("city-{i}"), "n": i});
            event(&format!("e{i}"), &format!("k{}", i % 20), "customer.upserted", data, None)
        })
        .collect();
    b.produce("customers", events).unwrap();
    let sinks = start(&sink_toml(&db), &b);
    wait_until("the projection", Duration::from_secs(30), || async {
        caught_up(&b, "sink-contacts")
    })
    .await;
    let clean = rows(&db);
    assert_eq!(clean.len(), 20);
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "UPDATE contacts SET city = 'tampered' WHERE id = 'k3'; \
         INSERT INTO contacts VALUES ('extra', 'x', 0, '0'); DELETE FROM contacts WHERE id = 'k4';",
    )
    .unwrap();
    assert_ne!(rows(&db), clean);
    let status = sinks.rebuild("contacts").unwrap();
    wait_until("the rebuild", Duration::from_secs(60), || async {
        let phase = status.rebuild().unwrap().phase;
        assert_ne!(phase, RebuildPhase::Failed, "{:?}", status.rebuild());
        phase == RebuildPhase::Done
    })
    .await;
    assert_eq!(rows(&db), clean, "the rebuilt table is a clean pass");
    let leftovers: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name LIKE '%\\_\\_%' ESCAPE '\\'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(leftovers, 0, "no shadow or old table is left behind");
    sinks.shutdown().await;
}

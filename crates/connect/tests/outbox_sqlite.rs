#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The SQLite outbox relay against real database files and a real broker: committed rows reach
//! the log exactly once, rolled-back rows never, relayed rows leave the outbox, malformed rows
//! stop the source by name, and a crash between the append and the delete leaves no duplicate
//! even with the broker's deduplication switched off.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftless_broker::Broker;
use driftless_connect::config::{OutboxColumns, SqliteOutboxConfig};
use driftless_connect::outbox::{self, OutboxStore};
use driftless_connect::runtime::SourceContext;
use driftless_connect::sqlite_outbox::{self, SqliteStore};
use driftless_connect::ConnectError;
use driftless_core::Event;
use rusqlite::Connection;
use serde_json::json;
use support::{open_broker, topic_events as events, Relay};
use tokio::sync::watch;

const SOURCE: &str = "svc";
const KIND: &str = "sqlite_outbox";

fn config(db: &Path, batch_rows_max: u32) -> SqliteOutboxConfig {
    SqliteOutboxConfig {
        path: db.to_path_buf(),
        outbox: OutboxColumns::default(),
        poll_interval_ms: 5,
        batch_rows_max,
    }
}

fn start(broker: &Arc<Broker>, config: SqliteOutboxConfig) -> Relay {
    Relay::spawn(broker, SOURCE, KIND, move |mut ctx| async move {
        sqlite_outbox::run(SOURCE, &config, &mut ctx).await
    })
}

fn context(broker: &Arc<Broker>) -> (SourceContext, watch::Sender<bool>, watch::Sender<bool>) {
    support::context(broker, SOURCE, KIND)
}

/// A service database with the outbox table, in WAL mode (the service's choice).
fn service_db(dir: &Path) -> PathBuf {
    let db = dir.join("service.db");
    sqlite_outbox::init_sqlite(&db, "outbox").unwrap();
    let conn = connect(&db);
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())).unwrap();
    db
}

fn connect(db: &Path) -> Connection {
    let conn = Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(20)).unwrap();
    conn
}

/// Inserts rows `(id, aggregatetype, aggregateid, type, payload)` in one transaction.
fn write(conn: &mut Connection, rows: &[(&str, &str, &str, &str, &str)], commit: bool) {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
    for (id, agg, key, ty, payload) in rows {
        tx.execute(
            "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            [id, agg, key, ty, payload],
        )
        .unwrap();
    }
    if commit {
        tx.commit().unwrap();
    } else {
        tx.rollback().unwrap();
    }
}

fn outbox_ids(db: &Path) -> Vec<String> {
    let conn = connect(db);
    let mut stmt = conn.prepare("SELECT id FROM outbox ORDER BY seq").unwrap();
    stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

fn ids(broker: &Broker, topics: &[&str]) -> Vec<String> {
    topics.iter().flat_map(|t| events(broker, t)).map(|(_, e)| e.id).collect()
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn committed_rows_are_relayed_once_and_rolled_back_rows_never() {
    let dir = tempfile::tempdir().unwrap();
    let db = service_db(dir.path());
    let broker = open_broker(&dir.path().join("log"), true);
    let mut conn = connect(&db);
    write(
        &mut conn,
        &[
            ("c1-created", "customers", "c-1", "customer.created.v1", r#"{"name":"Ada"}"#),
            ("c1-moved", "customers", "c-1", "customer.moved.v1", r#"{"city":"Paris"}"#),
        ],
        true,
    );
    write(&mut conn, &[("c2-created", "customers", "c-2", "customer.created.v1", "{}")], false);
    conn.execute(
        "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, headers) VALUES \
         ('o1-placed', 'orders', 'o-1', 'order.placed.v1', '{\"total\": 12.5}', \
          '{\"traceparent\": \"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\", \
            \"tracestate\": \"vendor=1\", \"Not-An-Extension\": \"x\"}')",
        [],
    )
    .unwrap();

    let relay = start(&broker, config(&db, 100));
    wait_for("the first rows", Duration::from_secs(20), || {
        ids(&broker, &["customers", "orders"]).len() == 3
    })
    .await;
    // Rows written while the relay runs are relayed too; rolled back ones still never.
    write(&mut conn, &[("c3-created", "customers", "c-3", "customer.created.v1", "null")], true);
    write(&mut conn, &[("c4-created", "customers", "c-4", "customer.created.v1", "{}")], false);
    wait_for("the later row", Duration::from_secs(20), || {
        ids(&broker, &["customers"]).len() == 3 && outbox_ids(&db).is_empty()
    })
    .await;
    // Give a wrongly repeated append time to show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = Arc::clone(&relay.status);
    relay.stop().await.unwrap();

    let customers = events(&broker, "customers");
    let customer_ids: Vec<&str> = customers.iter().map(|(_, e)| e.id.as_str()).collect();
    assert_eq!(
        sorted(customer_ids.iter().map(|s| s.to_string()).collect()),
        ["c1-created", "c1-moved", "c3-created"]
    );
    let by_id: HashMap<&str, &Event> = customers.iter().map(|(_, e)| (e.id.as_str(), e)).collect();
    let created = by_id["c1-created"];
    assert_eq!(created.subject.as_deref(), Some("c-1"));
    assert_eq!(created.ty, "customer.created.v1");
    assert_eq!(created.source, "/outbox/svc");
    assert_eq!(created.data, Some(json!({"name": "Ada"})));
    assert_eq!(created.datacontenttype.as_deref(), Some("application/json"));
    assert!(created.time.as_deref().is_some_and(driftless_core::is_rfc3339));
    assert_eq!(by_id["c3-created"].data, None, "a JSON null payload carries no data");
    // One aggregate, one partition, in seq order.
    let c1: Vec<(usize, &str)> = customers
        .iter()
        .filter(|(_, e)| e.subject.as_deref() == Some("c-1"))
        .map(|(p, e)| (*p, e.id.as_str()))
        .collect();
    assert_eq!(c1.len(), 2);
    assert_eq!(c1[0].0, c1[1].0);
    assert_eq!([c1[0].1, c1[1].1], ["c1-created", "c1-moved"]);

    let orders = events(&broker, "orders");
    assert_eq!(orders.len(), 1);
    let placed = &orders[0].1;
    assert_eq!(placed.data, Some(json!({"total": 12.5})));
    assert_eq!(
        placed.extension_str("traceparent"),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(placed.extension_str("tracestate"), Some("vendor=1"));
    assert_eq!(placed.extensions.len(), 2, "invalid header names are skipped");

    assert!(outbox_ids(&db).is_empty(), "relayed rows are deleted");
    assert_eq!(status.events_total.load(Ordering::Relaxed), 4);
    assert_eq!(status.rows_total.load(Ordering::Relaxed), 4);
    assert_eq!(status.outbox_backlog_rows.load(Ordering::Relaxed), 0);
    // Idle after relaying: the marks are cleared, so a restart scans nothing.
    let state: serde_json::Value =
        serde_json::from_slice(&broker.connector_state(SOURCE).unwrap()).unwrap();
    assert_eq!(state, json!({"pending": {}}));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_row_stops_the_source_by_name_and_stays() {
    let dir = tempfile::tempdir().unwrap();
    let db = service_db(dir.path());
    let broker = open_broker(&dir.path().join("log"), true);
    let mut conn = connect(&db);
    write(
        &mut conn,
        &[
            ("good-1", "customers", "c-1", "customer.created.v1", "{}"),
            ("bad-1", "no such topic!", "c-1", "customer.created.v1", "{}"),
            ("good-2", "customers", "c-1", "customer.created.v1", "{}"),
        ],
        true,
    );
    let err = start(&broker, config(&db, 100)).task.await.unwrap().unwrap_err();
    match &err {
        ConnectError::OutboxRow { row, reason, .. } => {
            assert_eq!(row, "bad-1");
            assert!(reason.contains("aggregatetype"), "{reason}");
        }
        other => panic!("{other}"),
    }
    assert!(!err.is_transient());
    // The rows before it were relayed; it and the rows after it wait for the operator.
    assert_eq!(ids(&broker, &["customers"]), ["good-1"]);
    assert_eq!(outbox_ids(&db), ["bad-1", "good-2"]);

    // Fixed topic, but a payload that is not JSON: named again.
    conn.execute(
        "UPDATE outbox SET aggregatetype = 'customers', payload = 'not json' WHERE id = 'bad-1'",
        [],
    )
    .unwrap();
    let err = start(&broker, config(&db, 100)).task.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, ConnectError::OutboxRow { row, reason, .. }
            if row == "bad-1" && reason.contains("payload is not valid JSON")),
        "{err}"
    );
    assert_eq!(outbox_ids(&db), ["bad-1", "good-2"]);

    conn.execute("UPDATE outbox SET payload = '{}' WHERE id = 'bad-1'", []).unwrap();
    let relay = start(&broker, config(&db, 100));
    wait_for("the fixed rows", Duration::from_secs(20), || outbox_ids(&db).is_empty()).await;
    relay.stop().await.unwrap();
    assert_eq!(ids(&broker, &["customers"]), ["good-1", "bad-1", "good-2"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_table_or_file_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open_broker(&dir.path().join("log"), true);
    let db = dir.path().join("empty.db");
    Connection::open(&db).unwrap().execute_batch("CREATE TABLE other (x)").unwrap();
    let err = start(&broker, config(&db, 10)).task.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("driftless outbox init"), "{err}");

    let missing = dir.path().join("nope.db");
    let err = start(&broker, config(&missing, 10)).task.await.unwrap().unwrap_err();
    assert!(matches!(err, ConnectError::Config { .. }), "{err}");
    assert!(
        err.to_string().contains("no such file") && err.to_string().contains("nope.db"),
        "{err}"
    );
    assert!(!missing.exists(), "the relay never creates the service's database");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_append_and_delete_leaves_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let db = service_db(dir.path());
    let log_dir = dir.path().join("log");
    let broker = open_broker(&log_dir, false);
    // Deduplication is really off: a re-sent event is appended again.
    broker.create_topic("sanity", driftless_broker::TopicSpec::default()).unwrap();
    let e = Event::new("same", "/s", "t");
    broker.produce("sanity", vec![e.clone()]).unwrap();
    broker.produce("sanity", vec![e]).unwrap();
    assert_eq!(events(&broker, "sanity").len(), 2);

    let mut conn = connect(&db);
    let first: Vec<String> = (0..5).map(|i| format!("r{i}")).collect();
    for id in &first {
        write(&mut conn, &[(id.as_ref(), "customers", "c-1", "customer.changed.v1", "{}")], true);
    }
    let columns = OutboxColumns::default();
    {
        // Steps 1-3 of a batch, then the process "dies" before step 4.
        let (ctx, _paused, _shutdown) = context(&broker);
        let mut store = SqliteStore::open(SOURCE, &db, "outbox").await.unwrap();
        let batch = outbox::read_batch(&mut store, SOURCE, &columns, 100).await.unwrap();
        assert_eq!(batch.ids(), first);
        outbox::mark_pending(&ctx.emitter, &batch).await.unwrap();
        outbox::append(&ctx, &batch).await.unwrap();
    }
    assert_eq!(ids(&broker, &["customers"]), first);
    assert_eq!(outbox_ids(&db), first, "the delete never happened");

    // A restart of Driftless: the broker comes back from disk, the relay starts over.
    drop(broker);
    let broker = open_broker(&log_dir, false);
    write(&mut conn, &[("r5", "customers", "c-1", "customer.changed.v1", "{}")], true);
    let relay = start(&broker, config(&db, 100));
    wait_for("the outbox to drain", Duration::from_secs(20), || outbox_ids(&db).is_empty()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    relay.stop().await.unwrap();
    let expected: Vec<String> = (0..6).map(|i| format!("r{i}")).collect();
    assert_eq!(ids(&broker, &["customers"]), expected, "each row once, in seq order");

    // A crash after recording the marks but before appending: the rows are appended once.
    for id in ["r6", "r7"] {
        write(&mut conn, &[(id, "customers", "c-1", "customer.changed.v1", "{}")], true);
    }
    {
        let (ctx, _paused, _shutdown) = context(&broker);
        let mut store = SqliteStore::open(SOURCE, &db, "outbox").await.unwrap();
        let batch = outbox::read_batch(&mut store, SOURCE, &columns, 100).await.unwrap();
        outbox::mark_pending(&ctx.emitter, &batch).await.unwrap();
    }
    drop(broker);
    let broker = open_broker(&log_dir, false);
    let relay = start(&broker, config(&db, 100));
    wait_for("the outbox to drain", Duration::from_secs(20), || outbox_ids(&db).is_empty()).await;
    relay.stop().await.unwrap();
    let expected: Vec<String> = (0..8).map(|i| format!("r{i}")).collect();
    assert_eq!(ids(&broker, &["customers"]), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_only_skips_rows_found_in_their_own_topic() {
    let dir = tempfile::tempdir().unwrap();
    let db = service_db(dir.path());
    let broker = open_broker(&dir.path().join("log"), false);
    let mut conn = connect(&db);
    write(&mut conn, &[("x1", "customers", "c-1", "t", "{}")], true);
    let columns = OutboxColumns::default();
    let (ctx, _paused, _shutdown) = context(&broker);
    let mut store = SqliteStore::open(SOURCE, &db, "outbox").await.unwrap();
    let batch = outbox::read_batch(&mut store, SOURCE, &columns, 100).await.unwrap();
    outbox::mark_pending(&ctx.emitter, &batch).await.unwrap();
    // Another producer appends an event with the same id to the same topic; a different row
    // with that id in another topic must still be relayed.
    conn.execute("DELETE FROM outbox", []).unwrap();
    write(&mut conn, &[("x1", "orders", "o-1", "t", "{}")], true);
    ctx.emitter.emit(vec![("customers".into(), Event::new("x1", "/other", "t"))]).await.unwrap();
    assert_eq!(outbox::recover(&mut store, &ctx.emitter, &columns).await.unwrap(), 0);
    assert_eq!(outbox_ids(&db), ["x1"]);
    assert_eq!(store.backlog_rows().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writers_get_exactly_their_committed_rows_in_order() {
    const WRITERS: usize = 4;
    const ROWS_PER_WRITER: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let db = service_db(dir.path());
    let broker = open_broker(&dir.path().join("log"), true);
    let relay = start(&broker, config(&db, 64));

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let db = db.clone();
            tokio::task::spawn_blocking(move || {
                let mut conn = connect(&db);
                let mut committed = Vec::new();
                let (mut n, mut tx_no) = (0usize, 0usize);
                while n < ROWS_PER_WRITER {
                    let size = (1 + (tx_no * 7 + w) % 6).min(ROWS_PER_WRITER - n);
                    let commit = tx_no % 5 != 3;
                    let rows: Vec<(String, String, String, String)> = (n..n + size)
                        .map(|i| {
                            let topic = if i % 2 == 0 { "orders" } else { "payments" };
                            (
                                format!("w{w}-{i}"),
                                topic.to_string(),
                                format!("w{w}-agg{}", i % 8),
                                json!({"writer": w, "n": i}).to_string(),
                            )
                        })
                        .collect();
                    let refs: Vec<(&str, &str, &str, &str, &str)> = rows
                        .iter()
                        .map(|(id, t, k, p)| {
                            (id.as_str(), t.as_str(), k.as_str(), "e.v1", p.as_str())
                        })
                        .collect();
                    write(&mut conn, &refs, commit);
                    if commit {
                        committed.extend(rows.into_iter().map(|(id, ..)| id));
                    }
                    n += size;
                    tx_no += 1;
                }
                committed
            })
        })
        .collect();
    let mut committed = HashSet::new();
    for w in writers {
        committed.extend(w.await.unwrap());
    }
    assert!(committed.len() < WRITERS * ROWS_PER_WRITER, "some transactions rolled back");

    wait_for("every committed row", Duration::from_secs(60), || {
        outbox_ids(&db).is_empty() && ids(&broker, &["orders", "payments"]).len() >= committed.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    relay.stop().await.unwrap();

    let mut seen = HashSet::new();
    // Per aggregate: one partition, and `n` increasing in offset order.
    let mut last: BTreeMap<String, (usize, i64)> = BTreeMap::new();
    for topic in ["orders", "payments"] {
        for (p, e) in events(&broker, topic) {
            assert!(seen.insert(e.id.clone()), "{} appended twice", e.id);
            let key = format!("{topic}/{}", e.subject.clone().unwrap());
            let n = e.data.as_ref().unwrap()["n"].as_i64().unwrap();
            if let Some((lp, ln)) = last.insert(key.clone(), (p, n)) {
                assert_eq!(lp, p, "{key} spans partitions");
                assert!(ln < n, "{key}: {n} after {ln}");
            }
        }
    }
    assert_eq!(seen, committed);
}

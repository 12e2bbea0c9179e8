#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The initial CDC snapshot against a real throwaway PostgreSQL: every existing row is read once
//! with stream-faithful values, concurrent writes during the snapshot fold to the table's final
//! content, a snapshot interrupted mid-way resumes where it stopped, a plan over several tables
//! reads each into its own topic, snapshot rows in the Debezium payload are `r` events, and a
//! lost slot with `on_slot_lost = "resnapshot"` is recreated and every table read again.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftless_broker::{Broker, BrokerConfig};
use driftless_connect::config::{OnSlotLost, Payload, PgCdcConfig, SnapshotMode};
use driftless_connect::{SourceConfig, SourceKind, SourceState, Sources};
use driftless_core::Event;
use driftless_testkit::PgServer;
use serde_json::{json, Value};
use support::events;

const TOPIC: &str = "app.public.t";
const ROWS: i64 = 25_000;
const CHUNK_ROWS: u32 = 1_000;

struct Fixture {
    pg: PgServer,
    dir: tempfile::TempDir,
    broker: Arc<Broker>,
    db: tokio_postgres::Client,
}

impl Fixture {
    async fn new(setup_sql: &str) -> Self {
        let _ = tracing_subscriber::fmt().with_env_filter("info").with_test_writer().try_init();
        let pg = PgServer::start().unwrap();
        pg.create_database("app").unwrap();
        let db = connect(&pg).await;
        db.batch_execute(setup_sql).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let broker = Arc::new(Broker::open(dir.path(), BrokerConfig::default()).unwrap());
        Self { pg, dir, broker, db }
    }

    fn cdc(&self) -> PgCdcConfig {
        let mut c = PgCdcConfig::new(self.pg.url("app"));
        c.tables = vec!["public.t".into()];
        c.snapshot = SnapshotMode::Initial;
        c.snapshot_chunk_rows = CHUNK_ROWS;
        c.heartbeat_interval_ms = 200;
        c
    }

    fn start(&self) -> Sources {
        self.start_with(self.cdc())
    }

    fn start_with(&self, cdc: PgCdcConfig) -> Sources {
        let config = SourceConfig {
            name: "app".into(),
            kind: SourceKind::PostgresCdc(cdc),
            partitions: 2,
            paused: false,
        };
        Sources::start(vec![config], Arc::clone(&self.broker)).unwrap()
    }

    fn reopen_broker(&mut self) {
        // The log directory allows one owner: close this broker before opening it again.
        let elsewhere = tempfile::tempdir().unwrap();
        self.broker = Arc::new(Broker::open(elsewhere.path(), BrokerConfig::default()).unwrap());
        self.broker = Arc::new(Broker::open(self.dir.path(), BrokerConfig::default()).unwrap());
    }

    /// The table's rows as events carry them (`id` → row), read through the same text output
    /// the stream uses (jsonb's `to_jsonb` of the row would format numbers differently).
    async fn table(&self) -> BTreeMap<i64, Value> {
        let rows = self.db.query("SELECT id::int8, v FROM t", &[]).await.unwrap();
        rows.iter()
            .map(|r| {
                let id: i64 = r.get(0);
                let v: Option<String> = r.get(1);
                (id, json!({"id": id, "v": v}))
            })
            .collect()
    }
}

async fn connect(pg: &PgServer) -> tokio_postgres::Client {
    let (db, conn) = tokio_postgres::connect(&pg.url("app"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    db
}

fn data(e: &Event) -> &Value {
    e.data.as_ref().unwrap()
}

fn reads(events: &[Event]) -> Vec<&Event> {
    events.iter().filter(|e| data(e)["op"] == json!("read")).collect()
}

/// Applies the events in `sequence` order: read/insert/update set the row, delete removes it.
fn fold(mut events: Vec<Event>) -> BTreeMap<i64, Value> {
    events.sort_by_key(|e| e.extensions["sequence"].as_str().unwrap().to_string());
    let mut rows = BTreeMap::new();
    for e in &events {
        let d = data(e);
        let id = d["key"]["id"].as_i64().unwrap();
        match d["op"].as_str().unwrap() {
            "read" | "insert" | "update" => {
                rows.insert(id, d["after"].clone());
            }
            "delete" => {
                rows.remove(&id);
            }
            other => panic!("unexpected op {other}"),
        }
    }
    rows
}

/// Waits (up to 60 s) until the snapshot is done and the source is running again.
async fn wait_snapshot_done(sources: &Sources) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = &sources.statuses()[0];
    loop {
        let (state, error) = status.state();
        let total = status.snapshot_rows_total.load(Ordering::Relaxed);
        if state == SourceState::Running && total > 0 {
            return;
        }
        assert_ne!(state, SourceState::Failed, "{error:?}");
        assert!(
            Instant::now() < deadline,
            "snapshot not done: {state:?} ({error:?}), {} of {total} rows",
            status.snapshot_rows_done.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to 30 s) until the events fold to the table's content; returns the events.
async fn wait_fold_equals_table(f: &Fixture) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let want = f.table().await;
    loop {
        let e = events(&f.broker, TOPIC);
        let got = fold(e.clone());
        if got == want {
            return e;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(k)).take(5).collect();
            let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(k)).take(5).collect();
            let wrong: Vec<_> = want
                .iter()
                .filter(|(k, v)| got.get(k).is_some_and(|g| g != *v))
                .take(5)
                .map(|(k, v)| (k, v, &got[k]))
                .collect();
            panic!(
                "fold of {} events ({} keys) differs from the table ({} rows): missing \
                 {missing:?}, extra {extra:?}, wrong {wrong:?}",
                e.len(),
                got.len(),
                want.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_existing_row_is_read_once_with_stream_faithful_values() {
    let f = Fixture::new(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric, b bool, ts timestamptz, j jsonb);
         INSERT INTO t SELECT g, 'v' || g, (g || '.25')::numeric, g % 2 = 0,
                              timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second',
                              jsonb_build_object('g', g)
         FROM generate_series(1, {ROWS}) g;"
    ))
    .await;
    let sources = f.start();
    wait_snapshot_done(&sources).await;
    let status = &sources.statuses()[0];
    assert_eq!(status.snapshot_rows_done.load(Ordering::Relaxed), ROWS as u64);
    assert_eq!(status.snapshot_rows_total.load(Ordering::Relaxed), ROWS as u64);
    assert_eq!(status.state().0, SourceState::Running);

    let all = events(&f.broker, TOPIC);
    let reads = reads(&all);
    assert_eq!(reads.len(), ROWS as usize, "one read per row");
    let mut seen = BTreeMap::new();
    for e in &reads {
        let d = data(e);
        let id = d["key"]["id"].as_i64().unwrap();
        assert!(seen.insert(id, ()).is_none(), "row {id} read twice");
        let (h, m, s) = (id / 3600, (id / 60) % 60, id % 60);
        assert_eq!(
            d["after"],
            json!({
                "id": id, "v": format!("v{id}"), "n": format!("{id}.25"), "b": id % 2 == 0,
                "ts": format!("2026-01-01T{h:02}:{m:02}:{s:02}+00:00"),
                "j": format!(r#"{{"g": {id}}}"#),
            }),
            "row {id}"
        );
        assert_eq!(d["before"], Value::Null);
        assert_eq!(d["table"], json!("public.t"));
        assert_eq!(e.subject.as_deref(), Some(id.to_string().as_str()));
        assert_eq!(e.ty, "public.t.read");
        assert!(e.id.starts_with("app:snap:"), "{}", e.id);
    }
    assert_eq!(seen.len(), ROWS as usize);
    // Streaming went on during and after the snapshot.
    f.db.batch_execute("UPDATE t SET v = 'after' WHERE id = 7").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !events(&f.broker, TOPIC).iter().any(|e| data(e)["op"] == json!("update")) {
        assert!(Instant::now() < deadline, "the update after the snapshot never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sources.shutdown().await;
}

/// Updates, deletes, key changes and inserts from another connection until `stop`.
async fn write_concurrently(
    db: tokio_postgres::Client,
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
) {
    // A fixed-seed LCG: reproducible, no dependency.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next_id = ROWS + 1;
    while !stop.load(Ordering::Relaxed) {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let id = ((x >> 33) % ROWS as u64) as i64 + 1;
        let sql = match (x >> 20) % 10 {
            0..=4 => format!("UPDATE t SET v = 'u{x}' WHERE id = {id}"),
            5..=6 => format!("DELETE FROM t WHERE id = {id}"),
            7 => {
                next_id += 1;
                format!("UPDATE t SET id = {next_id} WHERE id = {id}")
            }
            _ => {
                next_id += 1;
                format!(
                    "BEGIN; INSERT INTO t VALUES ({next_id}, 'new'); \
                     UPDATE t SET v = 'w{x}' WHERE id = {}; COMMIT",
                    id % 977 + 1
                )
            }
        };
        db.batch_execute(&sql).await.unwrap();
        writes.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writes_during_the_snapshot_fold_to_the_final_table() {
    let f = Fixture::new(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, {ROWS}) g;"
    ))
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(write_concurrently(
        connect(&f.pg).await,
        Arc::clone(&stop),
        Arc::clone(&writes),
    ));
    let sources = f.start();
    wait_snapshot_done(&sources).await;
    let during = writes.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert!(during > 100, "only {during} writes happened during the snapshot");

    let all = wait_fold_equals_table(&f).await;
    let read = reads(&all).len();
    // Rows inserted (or moved to a new key) ahead of the reader are read too; rows changed
    // inside a chunk's window are not emitted as reads.
    let done = sources.statuses()[0].snapshot_rows_done.load(Ordering::Relaxed);
    assert!(read as u64 <= done, "{read} reads of {done} rows read");
    tracing::info!(writes = during, reads = read, "concurrent snapshot settled");
    sources.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_snapshot_resumes_after_its_last_durable_chunk() {
    let mut f = Fixture::new(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, {ROWS}) g;"
    ))
    .await;
    let sources = f.start();
    let status = Arc::clone(&sources.statuses()[0]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while status.snapshot_rows_done.load(Ordering::Relaxed) < 5_000 {
        assert!(Instant::now() < deadline, "the snapshot did not reach 5,000 rows");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    sources.shutdown().await;
    drop(sources);
    let done_at_stop = status.snapshot_rows_done.load(Ordering::Relaxed);
    assert!(done_at_stop < ROWS as u64, "the snapshot finished before it could be interrupted");
    let reads_at_stop = reads(&events(&f.broker, TOPIC)).len();
    // Changes while stopped wait in the slot and must win over the rows read later.
    f.db.batch_execute(
        "UPDATE t SET v = 'while down' WHERE id IN (1, 24999); DELETE FROM t WHERE id = 25000",
    )
    .await
    .unwrap();

    f.reopen_broker();
    let sources = f.start();
    wait_snapshot_done(&sources).await;
    let status = &sources.statuses()[0];
    // Progress was restored, not recounted: every row but the deleted one, each once.
    assert_eq!(status.snapshot_rows_done.load(Ordering::Relaxed), ROWS as u64 - 1);

    let all = wait_fold_equals_table(&f).await;
    let reads = reads(&all);
    let read_ids: std::collections::BTreeSet<i64> =
        reads.iter().map(|e| data(e)["key"]["id"].as_i64().unwrap()).collect();
    // Row 25000 was deleted before the second run read it.
    assert_eq!(read_ids.len(), ROWS as usize - 1, "every remaining key is read at least once");
    // Only the chunk in flight at the stop may be read twice; starting over would read at
    // least `reads_at_stop` rows again.
    assert!(
        reads.len() <= ROWS as usize + CHUNK_ROWS as usize,
        "{} reads ({reads_at_stop} before the stop at {done_at_stop} rows done): the snapshot \
         restarted instead of resuming",
        reads.len()
    );
    sources.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_rows_in_the_debezium_payload_are_reads_without_before() {
    const N: i64 = 50;
    let f = Fixture::new(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, {N}) g;"
    ))
    .await;
    let mut cdc = f.cdc();
    cdc.payload = Payload::Debezium;
    cdc.snapshot_chunk_rows = 20;
    let sources = f.start_with(cdc);
    wait_snapshot_done(&sources).await;
    let all = events(&f.broker, TOPIC);
    assert_eq!(all.len(), N as usize, "one event per row");
    let mut ids = std::collections::BTreeSet::new();
    for e in &all {
        let d = data(e);
        let id = d["after"]["id"].as_i64().unwrap();
        assert!(ids.insert(id), "row {id} read twice");
        assert_eq!(d["op"], json!("r"), "{d}");
        assert_eq!(d["before"], Value::Null, "{d}");
        assert_eq!(d["after"], json!({"id": id, "v": format!("v{id}")}));
        assert_eq!(d["source"]["snapshot"], json!("true"), "{d}");
        assert_eq!(
            (&d["source"]["db"], &d["source"]["schema"], &d["source"]["table"]),
            (&json!("app"), &json!("public"), &json!("t"))
        );
        assert!(d["ts_ms"].is_i64() && d["source"]["lsn"].is_u64(), "{d}");
        assert_eq!(e.ty, "public.t.read");
        assert_eq!(e.subject.as_deref(), Some(id.to_string().as_str()));
    }
    assert_eq!(ids, (1..=N).collect());
    // A change streamed after the snapshot is a create, not a snapshot read.
    f.db.batch_execute("INSERT INTO t VALUES (1000, 'later')").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let created = loop {
        if let Some(e) = events(&f.broker, TOPIC).into_iter().find(|e| data(e)["op"] == json!("c"))
        {
            break e;
        }
        assert!(Instant::now() < deadline, "the insert after the snapshot never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(data(&created)["after"], json!({"id": 1000, "v": "later"}));
    assert_eq!(data(&created)["source"]["snapshot"], json!("false"));
    sources.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_over_several_tables_reads_every_row_of_each_into_its_own_topic() {
    // `b` has exactly one chunk of rows (its end is found by an empty chunk), `c` none, `d` a
    // composite key; `b` is routed to a topic of its own.
    let f = Fixture::new(&format!(
        "CREATE TABLE a (id int PRIMARY KEY, v text);
         CREATE TABLE b (id int PRIMARY KEY, v text);
         CREATE TABLE c (id int PRIMARY KEY, v text);
         CREATE TABLE d (o int, n int, v text, PRIMARY KEY (o, n));
         INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 2500) g;
         INSERT INTO b SELECT g, 'b' || g FROM generate_series(1, {CHUNK_ROWS}) g;
         INSERT INTO d SELECT g / 10, g % 10, 'd' || g FROM generate_series(0, 29) g;"
    ))
    .await;
    let mut cdc = f.cdc();
    cdc.tables = ["a", "b", "c", "d"].iter().map(|t| format!("public.{t}")).collect();
    cdc.routes = BTreeMap::from([("public.b".to_string(), "bees".to_string())]);
    let sources = f.start_with(cdc);
    wait_snapshot_done(&sources).await;
    let status = &sources.statuses()[0];
    let rows = 2500 + u64::from(CHUNK_ROWS) + 30;
    assert_eq!(status.snapshot_rows_done.load(Ordering::Relaxed), rows);
    assert_eq!(status.snapshot_rows_total.load(Ordering::Relaxed), rows);

    // Each topic holds exactly its table's rows, each once, as reads of that table.
    let keys_of = |topic: &str, table: &str| -> Vec<Value> {
        let all = events(&f.broker, topic);
        for e in &all {
            assert_eq!(data(e)["op"], json!("read"), "{topic}: {e:?}");
            assert_eq!(data(e)["table"], json!(table), "{topic}: {e:?}");
            assert_eq!(e.ty, format!("{table}.read"));
        }
        let mut keys: Vec<Value> = all.iter().map(|e| data(e)["key"].clone()).collect();
        keys.sort_by_key(|k| k.to_string());
        keys
    };
    let ids = |n: i64| {
        let mut keys: Vec<Value> = (1..=n).map(|id| json!({"id": id})).collect();
        keys.sort_by_key(|k| k.to_string());
        keys
    };
    assert_eq!(keys_of("app.public.a", "public.a"), ids(2500));
    assert_eq!(keys_of("bees", "public.b"), ids(i64::from(CHUNK_ROWS)));
    assert!(events(&f.broker, "app.public.b").is_empty(), "b is routed to `bees`");
    assert!(events(&f.broker, "app.public.c").is_empty(), "c has no rows");
    let mut d: Vec<Value> = (0..30).map(|g| json!({"o": g / 10, "n": g % 10})).collect();
    d.sort_by_key(|k| k.to_string());
    assert_eq!(keys_of("app.public.d", "public.d"), d);
    let d_row = events(&f.broker, "app.public.d")
        .into_iter()
        .find(|e| data(e)["key"] == json!({"o": 2, "n": 7}))
        .unwrap();
    assert_eq!(data(&d_row)["after"], json!({"o": 2, "n": 7, "v": "d27"}));
    sources.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_slot_with_resnapshot_is_recreated_and_every_row_read_again() {
    const N: i64 = 3_000;
    let mut f = Fixture::new(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, {N}) g;"
    ))
    .await;
    let mut cdc = f.cdc();
    cdc.on_slot_lost = OnSlotLost::Resnapshot;
    let sources = f.start_with(cdc.clone());
    wait_snapshot_done(&sources).await;
    f.db.batch_execute("UPDATE t SET v = 'streamed' WHERE id = 1").await.unwrap();
    wait_fold_equals_table(&f).await;
    sources.shutdown().await;
    drop(sources);
    let first_run = events(&f.broker, TOPIC);
    let first_sequence_max =
        first_run.iter().map(|e| e.extensions["sequence"].as_str().unwrap().to_string()).max();

    // The slot disappears while the source is stopped, and the changes made meanwhile with it:
    // only a new snapshot can bring them.
    support::drop_slot(&f.db, "driftless_app").await;
    f.db.batch_execute(&format!(
        "UPDATE t SET v = 'while lost' WHERE id IN (2, {N}); INSERT INTO t VALUES ({}, 'new')",
        N + 1
    ))
    .await
    .unwrap();
    f.reopen_broker();
    let sources = f.start_with(cdc);
    wait_snapshot_done(&sources).await;
    let slot =
        f.db.query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'driftless_app'", &[])
            .await
            .unwrap();
    assert!(slot.is_some(), "the slot was not recreated");
    let status = &sources.statuses()[0];
    assert_eq!(status.snapshot_rows_done.load(Ordering::Relaxed), N as u64 + 1);
    // Streaming goes on from the new slot.
    f.db.batch_execute("UPDATE t SET v = 'after' WHERE id = 3").await.unwrap();
    let all = wait_fold_equals_table(&f).await;
    let again: Vec<i64> = reads(&all)
        .iter()
        .filter(|e| {
            Some(e.extensions["sequence"].as_str().unwrap().to_string()) > first_sequence_max
        })
        .map(|e| data(e)["key"]["id"].as_i64().unwrap())
        .collect();
    let distinct: std::collections::BTreeSet<i64> = again.iter().copied().collect();
    assert_eq!(again.len(), N as usize + 1, "every row read once more");
    assert_eq!(distinct, (1..=N + 1).collect(), "every row read once more");
    sources.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_changes_and_snapshot_reads_carry_every_attribute_of_the_cloudevents_payload() {
    // Both are written as JSON text straight from their rows (no `Event` is built): the whole
    // event is checked here against what the CloudEvents payload promises.
    let f = Fixture::new(
        "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric, b bool, ts timestamptz, j jsonb,
                         a int[], e text);
         INSERT INTO t VALUES (1, 'q\"uote\\ é', 1.50, true, '2026-01-01 00:00:00+00',
                               '{\"k\": [1, null]}', '{1,2}', NULL);",
    )
    .await;
    let sources = f.start();
    wait_snapshot_done(&sources).await;
    f.db.batch_execute(
        "INSERT INTO t SELECT 2, v, n, b, ts, j, a, e FROM t WHERE id = 1; \
         INSERT INTO t VALUES (3, 'x', 0, false, NULL, NULL, NULL, NULL);",
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (read, inserted) = loop {
        let all = events(&f.broker, TOPIC);
        let find = |id: i64| all.iter().find(|e| data(e)["key"]["id"] == json!(id)).cloned();
        if let (Some(r), Some(i)) = (find(1), find(2)) {
            break (r, i);
        }
        assert!(Instant::now() < deadline, "the snapshot read or the streamed insert is missing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    sources.shutdown().await;
    let row = |id: i64| {
        json!({"id": id, "v": "q\"uote\\ é", "n": "1.50", "b": true,
               "ts": "2026-01-01T00:00:00+00:00", "j": r#"{"k": [1, null]}"#, "a": [1, 2], "e": null})
    };
    // The attributes that vary run to run are checked for their form, then fixed.
    let normalised = |e: &Event, id_prefix: &str| {
        let mut v = serde_json::to_value(e).unwrap();
        assert!(v["id"].as_str().unwrap().starts_with(id_prefix), "{v}");
        assert!(v["pglsn"].as_str().unwrap().contains('/'), "{v}");
        assert!(v["pgxid"].is_u64() && v["sequence"].is_string() && v["time"].is_string());
        for attribute in ["id", "pglsn", "pgxid", "sequence", "time"] {
            v[attribute] = json!("…");
        }
        v
    };
    let envelope = |ty: &str, subject: &str, op: &str, id: i64| {
        json!({"specversion": "1.0", "id": "…", "source": "/pg/app", "type": ty,
               "subject": subject, "time": "…", "datacontenttype": "application/json",
               "data": {"op": op, "table": "public.t", "key": {"id": id}, "before": null,
                        "after": row(id)},
               "pglsn": "…", "pgxid": "…", "pgtxorder": 0, "sequence": "…"})
    };
    let mut expected = envelope("public.t.insert", "2", "insert", 2);
    expected["pgtxsize"] = json!(2); // a transaction's size; a snapshot chunk has none
    assert_eq!(normalised(&inserted, "app:"), expected);
    assert_eq!(normalised(&read, "app:snap:"), envelope("public.t.read", "1", "read", 1));
}

/// A table added to a source that already streams is snapshotted at the next start, also when
/// the source crashes in the middle of that snapshot (the failpoint after a durable append,
/// before its acknowledgement) while the table is written to: the events of both tables fold to
/// the tables' content, and the table that was captured from the start is not read again.
/// (Issue 22: an added table's existing rows were never read.)
#[tokio::test(flavor = "multi_thread")]
async fn a_table_added_later_is_snapshotted_through_crashes_and_concurrent_writes() {
    use driftless_connect::failpoint::Failpoints;
    use driftless_connect::pg::cdc;
    const ADDED_ROWS: i64 = 3_000;
    let f = Fixture::new(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g;
         CREATE TABLE u (id int PRIMARY KEY, v text);
         INSERT INTO u SELECT g, 'u' || g FROM generate_series(1, {ADDED_ROWS}) g;"
    ))
    .await;
    let sources = f.start();
    wait_snapshot_done(&sources).await;
    wait_fold_equals_table(&f).await;
    sources.shutdown().await;
    drop(sources);
    let t_reads = reads(&events(&f.broker, TOPIC)).len();
    assert_eq!(t_reads, 10);
    assert!(events(&f.broker, "app.public.u").is_empty(), "u is not captured yet");

    let mut config = f.cdc();
    config.tables.push("public.u".into());
    config.snapshot_chunk_rows = 200;
    let (mut ctx, _paused, shutdown) = support::context(&f.broker, "app", "postgres_cdc");
    ctx.failpoints = Failpoints::fail_after_append_before_ack(3);
    let failpoints = ctx.failpoints.clone();
    let status = Arc::clone(&ctx.status);
    let runs = tokio::spawn(async move {
        let mut crashes = 0;
        loop {
            match cdc::run("app", &config, &mut ctx).await {
                Err(driftless_connect::ConnectError::Failpoint { .. }) => crashes += 1,
                // The crashed run's walsender can hold the slot for a moment.
                Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(50)).await,
                other => return (other, crashes),
            }
        }
    });
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let db = connect(&f.pg).await;
        let writing = Arc::clone(&writing);
        tokio::spawn(async move {
            let mut n = 0i64;
            while writing.load(Ordering::Relaxed) {
                n += 1;
                let id = n * 37 % ADDED_ROWS + 1;
                db.batch_execute(&format!(
                    "UPDATE u SET v = 'w{n}' WHERE id = {id}; \
                     INSERT INTO u VALUES ({}, 'new{n}'); DELETE FROM u WHERE id = {};",
                    ADDED_ROWS + n,
                    n * 53 % ADDED_ROWS + 1
                ))
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (state, error) = status.state();
        if failpoints.after_append_before_ack_left() == 0
            && state == SourceState::Running
            && status.snapshot_rows_total.load(Ordering::Relaxed) > 0
        {
            break;
        }
        assert!(!runs.is_finished(), "the source ended: {state:?} {error:?}");
        assert!(Instant::now() < deadline, "the added snapshot never ended: {state:?} {error:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writing.store(false, Ordering::Relaxed);
    writer.await.unwrap();

    // Every row of u as the table holds it now, folded from reads and changes.
    let want: BTreeMap<i64, Value> =
        f.db.query("SELECT id::int8, v FROM u", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| {
                let id: i64 = r.get(0);
                let v: Option<String> = r.get(1);
                (id, json!({"id": id, "v": v}))
            })
            .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = fold(events(&f.broker, "app.public.u"));
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "u's events fold to {} rows, the table has {}",
            got.len(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.send_replace(true);
    let (ended, crashes) =
        tokio::time::timeout(Duration::from_secs(20), runs).await.unwrap().unwrap();
    ended.unwrap();
    assert_eq!(crashes, 3);
    assert!(!reads(&events(&f.broker, "app.public.u")).is_empty());
    // t was captured from the start: not read again.
    assert_eq!(reads(&events(&f.broker, TOPIC)).len(), t_reads);
    wait_fold_equals_table(&f).await;
}

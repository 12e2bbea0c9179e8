#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Postgres change data capture against a real throwaway PostgreSQL: types, TOAST, composite
//! keys, rollbacks, schema changes, restarts without duplicates (also after two crashes between
//! an append and its acknowledgement), slot loss, heartbeats.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftless_broker::{Broker, BrokerConfig};
use driftless_connect::config::{OnSlotLost, Payload, PgCdcConfig, SnapshotMode};
use driftless_connect::failpoint::Failpoints;
use driftless_connect::pg::cdc;
use driftless_connect::{ConnectError, SourceConfig, SourceKind, SourceState, Sources};
use driftless_core::Event;
use driftless_testkit::PgServer;
use serde_json::{json, Value};
use support::events;

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
        let (db, conn) =
            tokio_postgres::connect(&pg.url("app"), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        db.batch_execute(setup_sql).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let broker = Arc::new(Broker::open(dir.path(), BrokerConfig::default()).unwrap());
        Self { pg, dir, broker, db }
    }

    fn cdc(&self, tables: &[&str]) -> PgCdcConfig {
        let mut c = PgCdcConfig::new(self.pg.url("app"));
        c.tables = tables.iter().map(|t| t.to_string()).collect();
        c.snapshot = SnapshotMode::Never;
        c.heartbeat_interval_ms = 200;
        c
    }

    fn start(&self, cdc: PgCdcConfig) -> Sources {
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

    /// Reopens the broker with its id deduplication off, so only the source's own recovery can
    /// prevent duplicates.
    fn reopen_broker_without_dedup(&mut self) {
        let elsewhere = tempfile::tempdir().unwrap();
        self.broker = support::open_broker(elsewhere.path(), false);
        self.broker = support::open_broker(self.dir.path(), false);
    }

    async fn slot_confirmed_lsn(&self) -> Option<String> {
        self.db
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'driftless_app'",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get(0))
    }
}

/// Waits (up to 30 s) until `topic` holds at least `n` events; returns them.
async fn wait_events(broker: &Broker, topic: &str, n: usize) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let e = events(broker, topic);
        if e.len() >= n {
            return e;
        }
        assert!(Instant::now() < deadline, "only {} of {n} events reached {topic}", e.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_state(sources: &Sources, want: SourceState) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (state, error) = sources.statuses()[0].state();
        if state == want {
            return error;
        }
        assert!(Instant::now() < deadline, "source stayed {state:?} ({error:?}), wanted {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn data(e: &Event) -> &Value {
    e.data.as_ref().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn values_of_every_type_arrive_as_faithful_json() {
    let f = Fixture::new(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE TABLE t (id int8 PRIMARY KEY, n numeric, b bool, j jsonb, ts timestamptz,
                         tsl timestamp, d date, u uuid, by bytea, arr int4[], txt text[],
                         m mood, nul text, f float8, tm time)",
    )
    .await;
    let sources = f.start(f.cdc(&["public.t"]));
    wait_state(&sources, SourceState::Running).await;
    f.db.batch_execute(
        "INSERT INTO t VALUES (9223372036854775807, 12345678901234567890.123456789, true,
            '{\"a\": [1, {\"b\": null}]}', '2026-11-25 11:56:22.5+05:30', '2026-11-25 11:56:22',
            '2026-11-25', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff10',
            '{1,NULL,3}', '{\"a,b\",\"c\\\"d\",NULL}', 'happy', NULL, 'NaN', '23:59:59.25')",
    )
    .await
    .unwrap();
    let e = wait_events(&f.broker, "app.public.t", 1).await;
    let after = &data(&e[0])["after"];
    assert_eq!(after["id"], json!(9223372036854775807i64));
    assert_eq!(after["n"], json!("12345678901234567890.123456789"));
    assert_eq!(after["b"], json!(true));
    // json and jsonb travel as their text (JSON null is "null", SQL NULL is null).
    assert_eq!(after["j"], json!(r#"{"a": [1, {"b": null}]}"#));
    assert_eq!(after["ts"], json!("2026-11-25T06:26:22.5+00:00"));
    assert_eq!(after["tsl"], json!("2026-11-25T11:56:22"));
    assert_eq!(after["d"], json!("2026-11-25"));
    assert_eq!(after["u"], json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
    assert_eq!(after["by"], json!("AP8Q"));
    assert_eq!(after["arr"], json!([1, null, 3]));
    assert_eq!(after["txt"], json!(["a,b", "c\"d", null]));
    assert_eq!(after["m"], json!("happy"));
    assert_eq!(after["nul"], Value::Null);
    assert_eq!(after["f"], json!("NaN"));
    assert_eq!(after["tm"], json!("23:59:59.25"));
    assert_eq!(data(&e[0])["op"], json!("insert"));
    assert_eq!(e[0].subject.as_deref(), Some("9223372036854775807"));
    assert_eq!(e[0].ty, "public.t.insert");
    sources.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unsent_toasted_values_are_marked_unchanged_never_null() {
    let f = Fixture::new("CREATE TABLE doc (id int PRIMARY KEY, title text, body text)").await;
    let sources = f.start(f.cdc(&["public.doc"]));
    wait_state(&sources, SourceState::Running).await;
    // Random hex does not compress, so 200 kB is stored out of line (TOASTed).
    f.db.batch_execute(
        "INSERT INTO doc SELECT 1, 'v1', string_agg(md5(random()::text), '') FROM generate_series(1, 6250);
         UPDATE doc SET title = 'v2' WHERE id = 1;",
    )
    .await
    .unwrap();
    let e = wait_events(&f.broker, "app.public.doc", 2).await;
    assert_eq!(data(&e[0])["after"]["body"].as_str().unwrap().len(), 200_000);
    let update = data(&e[1]);
    assert_eq!(update["op"], json!("update"));
    assert_eq!(update["after"]["title"], json!("v2"));
    assert!(update["after"].get("body").is_none(), "unsent value must not appear: {update}");
    assert_eq!(update["unchanged"], json!(["body"]));
    sources.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn composite_keys_rollbacks_and_key_changes() {
    let f = Fixture::new("CREATE TABLE line (o int, n int, qty int, PRIMARY KEY (o, n))").await;
    let sources = f.start(f.cdc(&["public.line"]));
    wait_state(&sources, SourceState::Running).await;
    // One statement per call: a multi-statement string would be one implicit transaction.
    for sql in [
        "BEGIN",
        "INSERT INTO line VALUES (1, 1, 5)",
        "ROLLBACK",
        "INSERT INTO line VALUES (1, 2, 7)",
        "BEGIN",
        "UPDATE line SET qty = 99",
        "ROLLBACK",
        "UPDATE line SET n = 3 WHERE o = 1 AND n = 2",
        "DELETE FROM line",
    ] {
        f.db.batch_execute(sql).await.unwrap();
    }
    let e = wait_events(&f.broker, "app.public.line", 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut e2 = events(&f.broker, "app.public.line");
    assert_eq!(e2.len(), 4, "rolled-back changes must never appear: {e2:?}");
    // Order by sequence: per-key order is what the log promises; this test reads all partitions.
    e2.sort_by_key(|e| e.extensions["sequence"].as_str().unwrap().to_string());
    let ops: Vec<(&str, Option<&str>)> =
        e2.iter().map(|e| (data(e)["op"].as_str().unwrap(), e.subject.as_deref())).collect();
    assert_eq!(
        ops,
        [
            ("insert", Some("[1,2]")),
            ("delete", Some("[1,2]")),
            ("insert", Some("[1,3]")),
            ("delete", Some("[1,3]")),
        ]
    );
    assert_eq!(data(&e2[0])["key"], json!({"o": 1, "n": 2}));
    assert_eq!(data(&e2[1])["after"], Value::Null);
    // The key change is one transaction: its two events share the commit LSN, in order.
    assert_eq!(e2[1].extensions["pglsn"], e2[2].extensions["pglsn"]);
    assert_eq!(e2[1].extensions["pgtxsize"], json!(2));
    assert_eq!(
        (e2[1].extensions["pgtxorder"].clone(), e2[2].extensions["pgtxorder"].clone()),
        (json!(0), json!(1))
    );
    drop(e);
    sources.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn columns_added_and_dropped_mid_stream_are_picked_up() {
    let f = Fixture::new("CREATE TABLE c (id int PRIMARY KEY, a text, b text)").await;
    let sources = f.start(f.cdc(&["public.c"]));
    wait_state(&sources, SourceState::Running).await;
    f.db.batch_execute(
        "INSERT INTO c VALUES (1, 'a', 'b');
         ALTER TABLE c ADD COLUMN z int DEFAULT 7;
         INSERT INTO c VALUES (2, 'a', 'b', 8);
         ALTER TABLE c DROP COLUMN b;
         INSERT INTO c VALUES (3, 'a', 9);",
    )
    .await
    .unwrap();
    let mut e = wait_events(&f.broker, "app.public.c", 3).await;
    e.sort_by_key(|e| e.subject.clone());
    assert_eq!(data(&e[0])["after"], json!({"id": 1, "a": "a", "b": "b"}));
    assert_eq!(data(&e[1])["after"], json!({"id": 2, "a": "a", "b": "b", "z": 8}));
    assert_eq!(data(&e[2])["after"], json!({"id": 3, "a": "a", "z": 9}));
    sources.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_without_a_key_is_refused_at_start_naming_it() {
    let f = Fixture::new("CREATE TABLE nokey (a int, b int)").await;
    let sources = f.start(f.cdc(&["public.nokey"]));
    let error = wait_state(&sources, SourceState::Failed).await.unwrap();
    assert!(error.contains("public.nokey"), "{error}");
    assert!(error.contains("REPLICA IDENTITY FULL"), "{error}");
    sources.shutdown().await;
    // With REPLICA IDENTITY FULL and chosen key columns it streams, keyed by them.
    f.db.batch_execute("ALTER TABLE nokey REPLICA IDENTITY FULL").await.unwrap();
    let mut cdc = f.cdc(&["public.nokey"]);
    cdc.key_columns = BTreeMap::from([("public.nokey".to_string(), vec!["b".to_string()])]);
    let sources = f.start(cdc);
    wait_state(&sources, SourceState::Running).await;
    f.db.batch_execute("INSERT INTO nokey VALUES (1, 2); DELETE FROM nokey").await.unwrap();
    let e = wait_events(&f.broker, "app.public.nokey", 2).await;
    assert!(e.iter().all(|e| e.subject.as_deref() == Some("2")), "{e:?}");
    sources.shutdown().await;
}

/// Regression: a `REPLICA IDENTITY FULL` table marks every column as its identity, and events
/// were keyed by all of them (`[id, big, small]`), so each update of a row had another subject,
/// partition and order, and delete mappings keyed by the subject failed.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_identity_full_table_with_a_primary_key_is_keyed_by_it() {
    let f = Fixture::new(
        "CREATE TABLE full_pk (id int PRIMARY KEY, v text);
         ALTER TABLE full_pk REPLICA IDENTITY FULL;
         INSERT INTO full_pk VALUES (1, 'before')",
    )
    .await;
    let sources = f.start(f.cdc(&["public.full_pk"]));
    wait_state(&sources, SourceState::Running).await;
    f.db.batch_execute(
        "INSERT INTO full_pk VALUES (2, 'a'); UPDATE full_pk SET v = 'b' WHERE id = 2;
         UPDATE full_pk SET id = 3 WHERE id = 2; DELETE FROM full_pk WHERE id = 1",
    )
    .await
    .unwrap();
    // Insert 2, update 2, the key change (delete 2, insert 3), delete 1 (no snapshot here).
    let e = wait_events(&f.broker, "app.public.full_pk", 5).await;
    let subjects: Vec<_> = e.iter().map(|e| e.subject.clone().unwrap_or_default()).collect();
    let mut sorted = subjects.clone();
    sorted.sort();
    assert_eq!(sorted, ["1", "2", "2", "2", "3"], "{subjects:?}");
    for e in &e {
        assert_eq!(data(e)["key"].as_object().map(|k| k.len()), Some(1), "{e:?}");
    }
    sources.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_resumes_from_the_durable_position_without_duplicates() {
    let mut f = Fixture::new("CREATE TABLE r (id int PRIMARY KEY, v int)").await;
    let sources = f.start(f.cdc(&["public.r"]));
    wait_state(&sources, SourceState::Running).await;
    f.db.batch_execute("INSERT INTO r SELECT g, g FROM generate_series(1, 100) g").await.unwrap();
    wait_events(&f.broker, "app.public.r", 100).await;
    sources.shutdown().await;
    drop(sources);
    // Changes made while Driftless is down wait in the slot.
    f.db.batch_execute("UPDATE r SET v = v + 1 WHERE id <= 50").await.unwrap();
    f.reopen_broker();
    let sources = f.start(f.cdc(&["public.r"]));
    let e = wait_events(&f.broker, "app.public.r", 150).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let e2 = events(&f.broker, "app.public.r");
    assert_eq!(e2.len(), 150, "{} events, wanted 150", e2.len());
    let ids: HashSet<&str> = e.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), 150);
    sources.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_slot_stops_the_source_unless_told_to_resnapshot() {
    let mut f = Fixture::new("CREATE TABLE s (id int PRIMARY KEY)").await;
    let sources = f.start(f.cdc(&["public.s"]));
    wait_state(&sources, SourceState::Running).await;
    f.db.batch_execute("INSERT INTO s VALUES (1)").await.unwrap();
    wait_events(&f.broker, "app.public.s", 1).await;
    sources.shutdown().await;
    drop(sources);
    support::drop_slot(&f.db, "driftless_app").await;
    f.reopen_broker();
    let sources = f.start(f.cdc(&["public.s"]));
    let error = wait_state(&sources, SourceState::Failed).await.unwrap();
    assert!(error.contains("driftless_app") && error.contains("resnapshot"), "{error}");
    assert_eq!(f.slot_confirmed_lsn().await, None, "the slot must not be recreated silently");
    sources.shutdown().await;
    drop(sources);
    let mut cdc = f.cdc(&["public.s"]);
    cdc.on_slot_lost = OnSlotLost::Resnapshot;
    cdc.snapshot = SnapshotMode::Initial; // "resnapshot" needs snapshots (validation refuses otherwise)
    let sources = f.start(cdc);
    wait_state(&sources, SourceState::Running).await;
    assert!(f.slot_confirmed_lsn().await.is_some());
    sources.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_database_keeps_its_slot_advancing() {
    let f = Fixture::new("CREATE TABLE idle (id int PRIMARY KEY)").await;
    let sources = f.start(f.cdc(&["public.idle"]));
    wait_state(&sources, SourceState::Running).await;
    let lsn = |s: Option<String>| driftless_connect::pg::parse_lsn(&s.unwrap()).unwrap();
    let first = lsn(f.slot_confirmed_lsn().await);
    let mut advanced = 0;
    let mut last = first;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = lsn(f.slot_confirmed_lsn().await);
        assert!(now >= last, "confirmed LSN moved backwards");
        if now > last {
            advanced += 1;
        }
        last = now;
    }
    assert!(advanced >= 3, "confirmed LSN advanced only {advanced} times in 10 s with no writes");
    assert!(events(&f.broker, "app.public.idle").is_empty(), "heartbeats are not events");
    sources.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_debezium_payload_carries_before_after_source_op() {
    let f = Fixture::new("CREATE TABLE dz (id int PRIMARY KEY, v text)").await;
    let mut cdc = f.cdc(&["public.dz"]);
    cdc.payload = Payload::Debezium;
    let sources = f.start(cdc);
    wait_state(&sources, SourceState::Running).await;
    f.db.batch_execute("INSERT INTO dz VALUES (1, 'x'); DELETE FROM dz;").await.unwrap();
    let mut e = wait_events(&f.broker, "app.public.dz", 2).await;
    e.sort_by_key(|e| e.extensions["sequence"].as_str().unwrap().to_string());
    assert_eq!(data(&e[0])["op"], json!("c"));
    assert_eq!(data(&e[0])["after"], json!({"id": 1, "v": "x"}));
    assert_eq!(data(&e[0])["source"]["table"], json!("dz"));
    assert_eq!(data(&e[1])["op"], json!("d"));
    assert_eq!(data(&e[1])["before"]["id"], json!(1));
    assert!(data(&e[1])["ts_ms"].is_i64());
    sources.shutdown().await;
}

/// Regression test for "second crash within the replay window duplicates". After a crash between
/// an append and its acknowledgement, Postgres replays the transaction and the source drops the
/// replayed changes whose ids were appended since its stored marks. A second such crash before
/// Postgres's confirmed position passed the replay used to find the marks overwritten (by the
/// replay's own appends), so the third start appended the first crash's changes again.
///
/// One transaction larger than `buffer_bytes_max` is appended in parts and acknowledged only at
/// its commit, so each crash (the failpoint after an append, before the ack) lands inside the
/// replay window of the one before, whatever the timing. The broker's deduplication is off.
#[tokio::test(flavor = "multi_thread")]
async fn second_crash_within_the_replay_window_does_not_duplicate() {
    const TOPIC: &str = "app.public.w";
    const CHANGES: usize = 320;
    let mut f = Fixture::new("CREATE TABLE w (id int PRIMARY KEY, v text)").await;
    f.reopen_broker_without_dedup();
    let mut config = f.cdc(&["public.w"]);
    // The transaction (about 400 kB of events) is larger than the buffer: it is appended in parts.
    config.buffer_bytes_max = 32 << 10;
    let (mut ctx, _paused, shutdown) = support::context(&f.broker, "app", "postgres_cdc");
    ctx.failpoints = Failpoints::fail_after_append_before_ack(2);
    let failpoints = ctx.failpoints.clone();
    let status = Arc::clone(&ctx.status);
    let broker = Arc::clone(&f.broker);
    // A supervisor that restarts the source after each simulated crash and notes the log then.
    let runs = tokio::spawn(async move {
        let mut at_crash = Vec::new();
        loop {
            match cdc::run("app", &config, &mut ctx).await {
                Err(ConnectError::Failpoint { .. }) => at_crash.push(events(&broker, TOPIC)),
                // The crashed run's walsender can hold the slot for a moment.
                Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(50)).await,
                other => return (other, at_crash),
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while status.state().0 != SourceState::Running {
        assert!(!runs.is_finished(), "the source ended: {:?}", status.state());
        assert!(Instant::now() < deadline, "the source never ran: {:?}", status.state());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f.db.batch_execute(
        "BEGIN;
         INSERT INTO w SELECT g, repeat('x', 1000) || g FROM generate_series(1, 300) g;
         UPDATE w SET v = 'updated ' || id WHERE id <= 20;
         COMMIT;",
    )
    .await
    .unwrap();
    let distinct = |e: &[Event]| e.iter().map(|e| e.id.clone()).collect::<HashSet<_>>().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while distinct(&events(&f.broker, TOPIC)) < CHANGES {
        assert!(!runs.is_finished(), "the source ended early: {:?}", status.state());
        assert!(Instant::now() < deadline, "the changes never all arrived: {:?}", status.state());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.send_replace(true);
    let (ended, at_crash) =
        tokio::time::timeout(Duration::from_secs(20), runs).await.unwrap().unwrap();
    ended.unwrap();

    assert_eq!(failpoints.after_append_before_ack_left(), 0);
    let at_crash: Vec<usize> = at_crash.iter().map(Vec::len).collect();
    assert_eq!(at_crash.len(), 2, "the failpoint fired {} times", at_crash.len());
    // Each crash left part of the transaction in the log, the second more than the first: it
    // crashed while replaying what the first had appended.
    assert!(
        0 < at_crash[0] && at_crash[0] < at_crash[1] && at_crash[1] < CHANGES,
        "events in the log at the crashes: {at_crash:?}"
    );
    let all = events(&f.broker, TOPIC);
    assert_eq!(
        all.len(),
        CHANGES,
        "{} events for {CHANGES} changes: {} duplicated",
        all.len(),
        all.len() - distinct(&all)
    );
    let mut order: Vec<i64> =
        all.iter().map(|e| e.extensions["pgtxorder"].as_i64().unwrap()).collect();
    order.sort_unstable();
    assert_eq!(order, (0..CHANGES as i64).collect::<Vec<_>>(), "each change exactly once");
    let lsns: HashSet<&Value> = all.iter().map(|e| &e.extensions["pglsn"]).collect();
    assert_eq!(lsns.len(), 1, "one transaction");
}

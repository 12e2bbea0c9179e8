//! Every value arrives exactly (issue 19): the five classes of wrong values users found in
//! projections are planted by hand in a Postgres projection that a real sink filled correctly,
//! and reconciliation finds each of them, names its column, and reports nothing else — with the
//! Postgres table as the source of truth and with the topic as the source of truth.
//!
//! The classes: (1) `bytea` holding its base64 text's bytes; (2) a `float8` one unit in the last
//! place off; (3) `-0` become `0`; (4) a NULL where the source has a value (an unchanged TOASTed
//! value of a key change — key 13 becomes 14 without sending `body`); (5) JSON `null` become SQL
//! NULL, or the reverse. The events carry the values in the README's forms (base64, numbers as
//! Postgres prints them, `json`/`jsonb` as strings of their text), built from the source table as
//! the CDC source builds them.
//!
//! Regressions alongside: database output settings that hid class 2 (or invented drift), and a
//! SQLite BLOB that could not be compared with the `bytea` holding its bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftless_broker::{Broker, BrokerConfig, TopicSpec};
use driftless_core::Event;
use driftless_reconcile::{DriftKind, ReconcileConfig, Reconcilers, RunReport};
use driftless_sink::{SinkConfig, Sinks};
use driftless_testkit::PgServer;
use serde_json::{json, Value};
use tokio_postgres::{Client, NoTls};

/// The source table, and the projection's (with the version column).
const COLUMNS: &str =
    "id int8 PRIMARY KEY, b bytea, f8 float8, f4 float4, j json, jb jsonb, body text";

/// A float8 whose shortest text needs all 17 digits (issue 19's).
const F8: &str = "3.8479485277079987e-69";

/// Keys 1..=13, each holding the values the classes are about: the same bytes, `F8` or `-0`,
/// `-0` or `1.1` as float4, JSON `null` / SQL NULL / a JSON text with spaces and a duplicate
/// member, and a large text (the TOASTed column's stand-in).
const ROWS_SQL: &str = r#"
INSERT INTO items SELECT i, '\x00ff00ff5c27'::bytea,
  (CASE WHEN i % 2 = 0 THEN '3.8479485277079987e-69' ELSE '-0' END)::float8,
  (CASE WHEN i % 3 = 1 THEN '-0' ELSE '1.1' END)::float4,
  (CASE i % 3 WHEN 0 THEN 'null' WHEN 1 THEN NULL ELSE '{"b": 1,  "b": [2.50, -0]}' END)::json,
  (CASE i % 4 WHEN 0 THEN '{"a": [1, 2.50]}' WHEN 2 THEN 'null' ELSE NULL END)::jsonb,
  i || ':' || repeat('toasted ', 4000)
FROM generate_series(1, 13) i"#;

const SINK: &str = r#"
name = "items"
topics = ["items"]
target = { kind = "postgres", url = "URL" }
[[mapping]]
types = ["item.upserted"]
table = "items"
key = ["id"]
columns = { id = ".data.after.id", b = ".data.after.b", f8 = ".data.after.f8", f4 = ".data.after.f4", j = ".data.after.j", jb = ".data.after.jb", body = ".data.after.body" }
[[mapping]]
types = ["item.deleted"]
table = "items"
key = ["id"]
op = "delete"
"#;

async fn connect(pg: &PgServer, db: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(&pg.url(db), NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// The double just below `F8`, printed shortest: the value a lossy path wrote.
fn f8_neighbour() -> String {
    let below = f64::from_bits(F8.parse::<f64>().unwrap().to_bits() - 1);
    format!("{below:e}")
}

/// One key per class, planted in the projection: key → (the SQL that plants it, the column).
fn plants() -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "1",
            "UPDATE items SET b = convert_to(encode(b, 'base64'), 'UTF8') WHERE id = 1".into(),
            "b",
        ),
        ("2", format!("UPDATE items SET f8 = '{}' WHERE id = 2", f8_neighbour()), "f8"),
        ("3", "UPDATE items SET f8 = 0 WHERE id = 3".into(), "f8"),
        ("4", "UPDATE items SET f4 = 0 WHERE id = 4".into(), "f4"),
        ("14", "UPDATE items SET body = NULL WHERE id = 14".into(), "body"),
        ("6", "UPDATE items SET j = NULL WHERE id = 6".into(), "j"),
        ("7", "UPDATE items SET jb = 'null' WHERE id = 7".into(), "jb"),
        ("10", "UPDATE items SET j = 'null' WHERE id = 10".into(), "j"),
    ]
}

/// A CDC-like upsert of a row (`after`), maybe without its unsent values and from a moved key.
fn upserted(id: i64, after: Value, unchanged: &[&str], moved_from: Option<i64>) -> Event {
    let mut e = Event::new(format!("item-{id}-{}", unchanged.len()), "/app/items", "item.upserted");
    e.subject = Some(id.to_string());
    let mut data = json!({"op": "insert", "table": "items", "after": after});
    if !unchanged.is_empty() {
        data["unchanged"] = json!(unchanged);
    }
    if let Some(old) = moved_from {
        data["moved_from"] = json!({ "id": old });
    }
    e.data = Some(data);
    e
}

/// The source's rows as events, each value in its JSON form (what the CDC source sends).
async fn events_of(app: &Client, ids: &[i64], without: &[&str]) -> Vec<(i64, Value)> {
    app.batch_execute("SET extra_float_digits = 3").await.unwrap();
    let rows = app
        .query(
            "SELECT id, encode(b, 'base64'), f8::text, f4::text, j::text, jb::text, body \
             FROM items WHERE id = ANY($1) ORDER BY id",
            &[&ids],
        )
        .await
        .unwrap();
    let number = |t: String| -> Value { serde_json::from_str(&t).unwrap() };
    rows.into_iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let mut after = json!({
                "id": id,
                "b": r.get::<_, String>(1),
                "f8": number(r.get(2)),
                "f4": number(r.get(3)),
                "j": r.get::<_, Option<String>>(4),
                "jb": r.get::<_, Option<String>>(5),
                "body": r.get::<_, String>(6),
            });
            for w in without {
                after.as_object_mut().unwrap().remove(*w);
            }
            (id, after)
        })
        .collect()
}

async fn caught_up(b: &Broker) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !b.describe_group("sink-items").is_ok_and(|g| {
        !g.partitions.is_empty()
            && g.partitions.iter().all(|p| p.lag_events == 0 && p.inflight == 0)
    }) {
        assert!(Instant::now() < deadline, "the sink did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A source table and its projection, kept by a real sink from the topic `items`.
struct Fixture {
    pg: PgServer,
    proj: Client,
    broker: Arc<Broker>,
    sink: SinkConfig,
    sinks: Sinks,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// Keys 1..=13 written, then key 13 changed to 14 without its (unchanged) body: the source
    /// table updated, the topic given the delete naming the new key and the insert naming the
    /// old one.
    /// `settings` runs first (database defaults for the sessions opened afterwards).
    async fn start(settings: &str) -> Fixture {
        let pg = PgServer::start().unwrap();
        pg.create_database("app").unwrap();
        pg.create_database("proj").unwrap();
        let app = connect(&pg, "app").await;
        let proj = connect(&pg, "proj").await;
        app.batch_execute(&format!("CREATE TABLE items ({COLUMNS}); {ROWS_SQL}")).await.unwrap();
        proj.batch_execute(&format!("CREATE TABLE items ({COLUMNS}, driftless_version text)"))
            .await
            .unwrap();
        app.batch_execute(settings).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let broker = Arc::new(Broker::open(dir.path(), BrokerConfig::default()).unwrap());
        broker.create_topic("items", TopicSpec { partitions: 2, ..TopicSpec::default() }).unwrap();
        let all: Vec<i64> = (1..=13).collect();
        let reads: Vec<Event> = events_of(&app, &all, &[])
            .await
            .into_iter()
            .map(|(id, after)| upserted(id, after, &[], None))
            .collect();
        broker.produce("items", reads).unwrap();
        let sink: SinkConfig = toml::from_str(&SINK.replace("URL", &pg.url("proj"))).unwrap();
        let sinks = Sinks::start(vec![sink.clone()], Arc::clone(&broker)).unwrap();
        caught_up(&broker).await;

        // The key change, as CDC writes it: the delete names the key the row moves to (the sink
        // keeps the deleted row), then the insert carries every value but the unchanged body and
        // names the old key (the sink carries the body from the kept row).
        app.batch_execute("UPDATE items SET id = 14 WHERE id = 13").await.unwrap();
        let mut deleted = Event::new("item-13-deleted", "/app/items", "item.deleted");
        deleted.subject = Some("13".into());
        deleted.data = Some(
            json!({"op": "delete", "table": "items", "key": {"id": 13}, "moved_to": {"id": 14}}),
        );
        broker.produce("items", vec![deleted]).unwrap();
        caught_up(&broker).await;
        let (_, after) = events_of(&app, &[14], &["body"]).await.remove(0);
        broker.produce("items", vec![upserted(14, after, &["body"], Some(13))]).unwrap();
        caught_up(&broker).await;
        Fixture { pg, proj, broker, sink, sinks, _dir: dir }
    }

    /// A reconciliation of the projection with `source`.
    fn reconcilers(&self, source: &str) -> Reconcilers {
        let config: ReconcileConfig = toml::from_str(&format!(
            "name = \"items\"\nsink = \"items\"\nlag_window_ms = 0\nsource = {source}\n"
        ))
        .unwrap();
        Reconcilers::start(vec![config], std::slice::from_ref(&self.sink), Arc::clone(&self.broker))
            .unwrap()
    }

    async fn text(&self, sql: &str) -> String {
        self.proj.query_one(sql, &[]).await.unwrap().get(0)
    }
}

/// The stale keys a report lists, each with the columns it names.
fn stale(report: &RunReport) -> BTreeMap<String, Vec<String>> {
    let keys = report.keys.get(&DriftKind::Stale).cloned().unwrap_or_default();
    keys.into_iter()
        .map(|k| {
            let columns = report.stale_columns.get(&k).cloned().unwrap_or_default();
            (k, columns)
        })
        .collect()
}

/// Plants every class, runs, and checks the report lists exactly the planted keys, each with its
/// column.
async fn plants_are_found_each_with_its_column(f: &Fixture, r: &Reconcilers) {
    // The projection holds what the source holds, the tricky values included.
    f.proj.batch_execute("SET extra_float_digits = 3").await.unwrap();
    assert_eq!(f.text("SELECT b::text FROM items WHERE id = 1").await, "\\x00ff00ff5c27");
    assert_eq!(f.text("SELECT f8::text FROM items WHERE id = 2").await, F8);
    assert_eq!(f.text("SELECT f8::text FROM items WHERE id = 3").await, "-0");
    assert_eq!(f.text("SELECT f4::text FROM items WHERE id = 4").await, "-0");
    assert_eq!(f.text("SELECT j::text FROM items WHERE id = 6").await, "null");
    assert_eq!(f.text("SELECT jb::text FROM items WHERE id = 2").await, "null");
    assert_eq!(f.text("SELECT left(body, 11) FROM items WHERE id = 14").await, "13:toasted ");
    let clean = r.run_now("items", Some(false)).await.unwrap();
    assert_eq!((clean.missing, clean.extra, clean.stale), (0, 0, 0), "{clean:?}");
    assert_eq!(clean.rows_source, 13);
    assert_eq!(clean.buckets_differing, 0, "{clean:?}");

    for (_, sql, _) in plants() {
        f.proj.batch_execute(&sql).await.unwrap();
    }
    assert_eq!(f8_neighbour(), "3.847948527707998e-69", "issue 19's neighbour");
    assert_eq!(
        f.text("SELECT b::text FROM items WHERE id = 1").await,
        "\\x415038412f31776e",
        "the bytes of the base64 text, as issue 19 found them"
    );
    let found = r.run_now("items", Some(false)).await.unwrap();
    let planted: BTreeMap<String, Vec<String>> =
        plants().into_iter().map(|(k, _, c)| (k.to_string(), vec![c.to_string()])).collect();
    assert_eq!(stale(&found), planted, "{found:?}");
    assert_eq!((found.missing, found.extra, found.stale), (0, 0, planted.len()), "{found:?}");
    assert!(found.keys.get(&DriftKind::Missing).is_none_or(Vec::is_empty), "{found:?}");
    assert!(found.keys.get(&DriftKind::Extra).is_none_or(Vec::is_empty), "{found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_source_finds_each_planted_class_of_wrong_value_and_names_its_column() {
    let f = Fixture::start("").await;
    let r = f.reconcilers(&format!(
        "{{ kind = \"postgres\", url = \"{}\", table = \"items\" }}",
        f.pg.url("app")
    ));
    plants_are_found_each_with_its_column(&f, &r).await;
    r.shutdown().await;
    f.sinks.shutdown().await;
}

/// The topic's events are folded through the sink's mapping and rendered as the projection's
/// columns hold them: base64 decoded for `bytea`, a JSON string as the `json`/`jsonb` text, and
/// the key change's unchanged body carried from the old key — so a correct projection shows no
/// drift (it showed every `bytea` row stale, and key 14's body as NULL) and a NULL planted in
/// the carried value is found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_source_finds_each_planted_class_of_wrong_value_and_names_its_column() {
    let f = Fixture::start("").await;
    let r = f.reconcilers("{ kind = \"topic\" }");
    plants_are_found_each_with_its_column(&f, &r).await;
    r.shutdown().await;
    f.sinks.shutdown().await;
}

/// Regression: reconciliation's sessions took each database's defaults, so with
/// `extra_float_digits = 0` both sides printed a float8 and its neighbour as the same 15 digits
/// (class 2 unseen), and `bytea_output = 'escape'` on the source alone made every row stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_output_settings_neither_hide_a_float_one_unit_off_nor_invent_drift() {
    let f = Fixture::start(
        "ALTER DATABASE app SET extra_float_digits = 0; \
         ALTER DATABASE proj SET extra_float_digits = 0; \
         ALTER DATABASE app SET bytea_output = 'escape'",
    )
    .await;
    let r = f.reconcilers(&format!(
        "{{ kind = \"postgres\", url = \"{}\", table = \"items\" }}",
        f.pg.url("app")
    ));
    let clean = r.run_now("items", Some(false)).await.unwrap();
    assert_eq!((clean.missing, clean.extra, clean.stale), (0, 0, 0), "{clean:?}");
    let (_, sql, _) = plants().into_iter().find(|(k, _, _)| *k == "2").unwrap();
    f.proj.batch_execute(&sql).await.unwrap();
    let found = r.run_now("items", Some(false)).await.unwrap();
    let expected: BTreeMap<String, Vec<String>> = [("2".into(), vec!["f8".into()])].into();
    assert_eq!(stale(&found), expected, "{found:?}");
    let all: BTreeSet<_> = found.keys.values().flatten().collect();
    assert_eq!(all.len(), 1, "{found:?}");
    r.shutdown().await;
    f.sinks.shutdown().await;
}

/// Regression: SQLite rendered a BLOB as its bytes cast to text, which are not UTF-8 for most
/// bytes (the run failed reading them) and never Postgres's `\x…` text of the same `bytea`. Both
/// now print `\x` and lowercase hex: a BLOB holding a `bytea`'s bytes has its digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_blob_has_the_digest_of_the_postgres_bytea_with_its_bytes() {
    use driftless_reconcile::config::{Db, Side};
    use driftless_reconcile::db::Conn;
    let pg = PgServer::start().unwrap();
    let client = connect(&pg, "postgres").await;
    client
        .batch_execute(
            "CREATE TABLE t (id text PRIMARY KEY, b bytea); \
             INSERT INTO t SELECT 'k' || i, '\\x00ff00ff5c27'::bytea || int4send(i) \
             FROM generate_series(1, 300) i",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (id TEXT PRIMARY KEY, b BLOB)").unwrap();
        for i in 1..=300i32 {
            let mut bytes = vec![0x00, 0xff, 0x00, 0xff, 0x5c, 0x27];
            bytes.extend(i.to_be_bytes());
            conn.execute(
                "INSERT INTO t VALUES (?1, ?2)",
                rusqlite::params![format!("k{i}"), bytes],
            )
            .unwrap();
        }
    }
    let side =
        |db| Side { db, table: "t".into(), key: vec!["id".into()], columns: vec!["b".into()] };
    let (ps, ls) = (side(Db::Postgres(pg.url("postgres").into())), side(Db::Sqlite(path)));
    let (p, l) = (Conn::open(&ps.db).await.unwrap(), Conn::open(&ls.db).await.unwrap());
    let (dp, dl) = (p.buckets(&ps, 16).await.unwrap(), l.buckets(&ls, 16).await.unwrap());
    assert_eq!(dp.len(), 16);
    assert_eq!(dp, dl, "a bytea and a BLOB of the same bytes differ");
    let keys: Vec<String> = vec!["k1".into(), "k300".into()];
    let (cp, cl) =
        (p.column_hashes(&ps, &keys).await.unwrap(), l.column_hashes(&ls, &keys).await.unwrap());
    assert_eq!(cp.len(), 2);
    assert_eq!(cp, cl);
}

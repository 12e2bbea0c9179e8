//! Reconciliation against real PostgreSQL: a 100,000-row projection kept by a real sink, tampered
//! with directly (30 deletes, 40 modifications, 30 extra rows) while writes keep flowing; the
//! run reports exactly the 100 keys with their kinds, a repair fixes them through the log, and a
//! second run reports nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftless_broker::{Broker, BrokerConfig, TopicSpec};
use driftless_core::Event;
use driftless_reconcile::{DriftKind, ReconcileConfig, Reconcilers};
use driftless_sink::{SinkConfig, Sinks};
use driftless_testkit::PgServer;
use serde_json::json;
use tokio_postgres::{Client, NoTls};

const ROWS: usize = 100_000;

async fn connect(pg: &PgServer, db: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(&pg.url(db), NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

fn upserted(id: &str, city: &str, n: i64) -> Event {
    let mut e = Event::new(format!("{id}-{city}"), "/customers", "customer.upserted");
    e.subject = Some(id.to_string());
    e.data = Some(json!({"id": id, "city": city, "n": n}));
    e
}

fn key(i: usize) -> String {
    format!("c{i:06}")
}

async fn caught_up(b: &Broker, group: &str) -> bool {
    b.describe_group(group)
        .map(|g| !g.partitions.is_empty() && g.partitions.iter().all(|p| p.lag_events == 0))
        .unwrap_or(false)
}

async fn wait_caught_up(b: &Broker, group: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while !caught_up(b, group).await {
        assert!(Instant::now() < deadline, "the sink did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_reports_exactly_the_tampered_keys_repairs_them_and_then_finds_none() {
    let pg = PgServer::start().unwrap();
    pg.create_database("app").unwrap();
    pg.create_database("proj").unwrap();
    let app = connect(&pg, "app").await;
    app.batch_execute(&format!(
        "CREATE TABLE customers (id text PRIMARY KEY, city text, n bigint); \
         INSERT INTO customers SELECT 'c' || lpad(i::text, 6, '0'), 'city-' || i, i \
         FROM generate_series(0, {}) i",
        ROWS - 1
    ))
    .await
    .unwrap();
    let proj = connect(&pg, "proj").await;
    proj.batch_execute(
        "CREATE TABLE contacts (id text PRIMARY KEY, city text, n bigint, driftless_version text)",
    )
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let broker = Arc::new(Broker::open(dir.path(), BrokerConfig::default()).unwrap());
    broker.create_topic("customers", TopicSpec { partitions: 4, ..TopicSpec::default() }).unwrap();
    let events: Vec<Event> =
        (0..ROWS).map(|i| upserted(&key(i), &format!("city-{i}"), i as i64)).collect();
    for chunk in events.chunks(10_000) {
        broker.produce("customers", chunk.to_vec()).unwrap();
    }
    let sink: SinkConfig = toml::from_str(&format!(
        r#"
        name = "contacts"
        topics = ["customers"]
        target = {{ kind = "postgres", url = "{}" }}
        [[mapping]]
        types = ["customer.upserted"]
        table = "contacts"
        key = ["id"]
        columns = {{ id = ".subject", city = ".data.city", n = ".data.n" }}
        [[mapping]]
        types = ["customer.deleted"]
        table = "contacts"
        key = ["id"]
        op = "delete"
        "#,
        pg.url("proj")
    ))
    .unwrap();
    let sinks = Sinks::start(vec![sink.clone()], Arc::clone(&broker)).unwrap();
    wait_caught_up(&broker, "sink-contacts").await;

    // Tamper with the projection directly.
    let deleted: Vec<String> = (0..30).map(key).collect();
    let modified: Vec<String> = (100..140).map(key).collect();
    let extra: Vec<String> = (0..30).map(|i| format!("x{i:06}")).collect();
    proj.execute("DELETE FROM contacts WHERE id = ANY($1)", &[&deleted]).await.unwrap();
    proj.execute("UPDATE contacts SET city = 'tampered' WHERE id = ANY($1)", &[&modified])
        .await
        .unwrap();
    for x in &extra {
        proj.execute("INSERT INTO contacts VALUES ($1, 'ghost', 0, '0')", &[x]).await.unwrap();
    }

    let config: ReconcileConfig = toml::from_str(&format!(
        r#"
        name = "contacts"
        sink = "contacts"
        source = {{ kind = "postgres", url = "{}", table = "customers" }}
        lag_window_ms = 500
        [correction]
        upsert_type = "customer.upserted"
        delete_type = "customer.deleted"
        "#,
        pg.url("app")
    ))
    .unwrap();
    let reconcilers =
        Reconcilers::start(vec![config], std::slice::from_ref(&sink), Arc::clone(&broker)).unwrap();

    // Writes keep flowing during the runs: the source changes first, its event follows 100 ms
    // later (a relay's lag), on keys nobody tampered with.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, broker) = (Arc::clone(&stop), Arc::clone(&broker));
        let app = connect(&pg, "app").await;
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let k = key(50_000 + i % 200);
                let city = format!("live-{i}");
                app.execute("UPDATE customers SET city = $2 WHERE id = $1", &[&k, &city])
                    .await
                    .unwrap();
                let b = Arc::clone(&broker);
                let e = upserted(&k, &city, (50_000 + i % 200) as i64);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    tokio::task::spawn_blocking(move || b.produce("customers", vec![e]).unwrap())
                        .await
                        .unwrap();
                });
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            i
        })
    };

    let report = reconcilers.run_now("contacts", Some(false)).await.unwrap();
    let keys = |kind| -> BTreeSet<String> {
        report.keys.get(&kind).cloned().unwrap_or_default().into_iter().collect()
    };
    assert_eq!(keys(DriftKind::Missing), deleted.iter().cloned().collect::<BTreeSet<_>>());
    assert_eq!(keys(DriftKind::Stale), modified.iter().cloned().collect::<BTreeSet<_>>());
    assert_eq!(keys(DriftKind::Extra), extra.iter().cloned().collect::<BTreeSet<_>>());
    assert_eq!((report.missing, report.stale, report.extra), (30, 40, 30), "{report:?}");
    assert_eq!(report.rows_source, ROWS as i64);
    assert!(
        report.rows_shipped < (report.rows_source as usize) / 20,
        "only differing buckets leave the databases: {report:?}"
    );

    eprintln!(
        "detect {} ms, {} buckets ({} differing), {} rows shipped, {} settled in flight",
        report.detect_ms,
        report.buckets,
        report.buckets_differing,
        report.rows_shipped,
        report.settled_in_flight
    );
    let repaired = reconcilers.run_now("contacts", Some(true)).await.unwrap();
    assert_eq!(repaired.missing + repaired.stale + repaired.extra, 100, "{repaired:?}");
    assert_eq!(repaired.repaired, 100);
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(writes > 10, "writes flowed during the runs ({writes})");
    tokio::time::sleep(Duration::from_millis(300)).await; // the writer's last delayed events
    wait_caught_up(&broker, "sink-contacts").await;

    let after = reconcilers.run_now("contacts", Some(false)).await.unwrap();
    assert_eq!((after.missing, after.stale, after.extra), (0, 0, 0), "{after:?}");
    assert_eq!(after.buckets_differing, 0, "{after:?}");
    let ghost: i64 = proj
        .query_one("SELECT count(*) FROM contacts WHERE city IN ('ghost', 'tampered')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ghost, 0);
    let status = reconcilers.get("contacts").unwrap().report(true);
    assert_eq!(status.runs_total, 3);
    assert_eq!(status.history.len(), 2);
    sinks.shutdown().await;
    reconcilers.shutdown().await;
}

/// The digests are computed by SQL in Postgres and by Rust functions in SQLite: equal rows must
/// give equal digests, or a Postgres source could never match a SQLite projection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_sqlite_compute_the_same_digests() {
    use driftless_reconcile::config::{Db, Side};
    use driftless_reconcile::db::Conn;
    let pg = PgServer::start().unwrap();
    let client = connect(&pg, "postgres").await;
    client
        .batch_execute(
            "CREATE TABLE t (id text PRIMARY KEY, city text, n bigint); \
             INSERT INTO t SELECT 'k' || i, CASE WHEN i % 7 = 0 THEN NULL ELSE 'Zürich ' || i END, i \
             FROM generate_series(1, 2000) i",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (id TEXT PRIMARY KEY, city TEXT, n INTEGER)").unwrap();
        for i in 1..=2000i64 {
            let city = (i % 7 != 0).then(|| format!("Zürich {i}"));
            conn.execute(
                "INSERT INTO t VALUES (?1, ?2, ?3)",
                rusqlite::params![format!("k{i}"), city, i],
            )
            .unwrap();
        }
    }
    let side = |db| Side {
        db,
        table: "t".into(),
        key: vec!["id".into()],
        columns: vec!["city".into(), "n".into()],
    };
    let (ps, ls) = (side(Db::Postgres(pg.url("postgres").into())), side(Db::Sqlite(path)));
    let (p, l) = (Conn::open(&ps.db).await.unwrap(), Conn::open(&ls.db).await.unwrap());
    let (dp, dl) = (p.buckets(&ps, 64).await.unwrap(), l.buckets(&ls, 64).await.unwrap());
    assert_eq!(dp.len(), 64);
    assert_eq!(dp, dl, "bucket digests differ between Postgres and SQLite");
    let (rp, rl) =
        (p.rows_in(&ps, 64, &[3, 5]).await.unwrap(), l.rows_in(&ls, 64, &[3, 5]).await.unwrap());
    assert!(!rp.is_empty());
    assert_eq!(rp, rl);
}

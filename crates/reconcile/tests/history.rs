//! The history of runs survives a restart: it is stored in the log (connector state), bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use driftless_broker::{Broker, BrokerConfig};
use driftless_reconcile::{ReconcileConfig, Reconcilers};
use driftless_sink::SinkConfig;

fn exec(path: &std::path::Path, sql: &str) {
    rusqlite::Connection::open(path).unwrap().execute_batch(sql).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_of_runs_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (source, proj) = (dir.path().join("s.db"), dir.path().join("p.db"));
    exec(
        &source,
        "CREATE TABLE customers (id TEXT PRIMARY KEY, city TEXT); \
                   INSERT INTO customers VALUES ('a', 'x'), ('b', 'y'), ('c', 'z')",
    );
    exec(
        &proj,
        "CREATE TABLE contacts (id TEXT PRIMARY KEY, city TEXT, driftless_version TEXT); \
                 INSERT INTO contacts VALUES ('a', 'x', '1'), ('b', 'y', '1')",
    );
    let sink: SinkConfig = toml::from_str(&format!(
        "name = \"crm\"\ntopics = [\"customers\"]\n\
         target = {{ kind = \"sqlite\", path = \"{}\" }}\n\
         [[mapping]]\ntable = \"contacts\"\nkey = [\"id\"]\n\
         columns = {{ id = \".subject\", city = \".data.city\" }}\n",
        proj.display()
    ))
    .unwrap();
    let config: ReconcileConfig = toml::from_str(&format!(
        "name = \"crm\"\nsink = \"crm\"\nlag_window_ms = 0\n\
         source = {{ kind = \"sqlite\", path = \"{}\", table = \"customers\" }}\n",
        source.display()
    ))
    .unwrap();
    let log = dir.path().join("log");
    {
        let broker = Arc::new(Broker::open(&log, BrokerConfig::default()).unwrap());
        let r = Reconcilers::start(
            vec![config.clone()],
            std::slice::from_ref(&sink),
            Arc::clone(&broker),
        )
        .unwrap();
        let report = r.run_now("crm", None).await.unwrap();
        assert_eq!(report.missing, 1);
        r.shutdown().await;
    }
    let broker = Arc::new(Broker::open(&log, BrokerConfig::default()).unwrap());
    let r = Reconcilers::start(vec![config], &[sink], broker).unwrap();
    let status = r.get("crm").unwrap().report(true);
    let last = status.last_run.expect("the run before the restart is remembered");
    let report = last.report.expect("with its report");
    assert_eq!(report.missing, 1);
    assert_eq!(report.keys[&driftless_reconcile::DriftKind::Missing], ["c"]);
    assert_eq!(status.runs_total, 0, "runs_total counts since this start");
}

/// A composite key's correction is placed by the row's typed values, as a CDC event's subject
/// would be (`["t1",42]`, not `["t1","42"]`), so it lands in the key's partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_key_corrections_keep_typed_subjects() {
    let dir = tempfile::tempdir().unwrap();
    let (source, proj) = (dir.path().join("s.db"), dir.path().join("p.db"));
    exec(
        &source,
        "CREATE TABLE items (tenant TEXT, n INTEGER, city TEXT, PRIMARY KEY (tenant, n)); \
                   INSERT INTO items VALUES ('t1', 42, 'x')",
    );
    exec(
        &proj,
        "CREATE TABLE items (tenant TEXT, n INTEGER, city TEXT, driftless_version TEXT, \
                 PRIMARY KEY (tenant, n))",
    );
    let sink: SinkConfig = toml::from_str(&format!(
        "name = \"crm\"\ntopics = [\"items\"]\n\
         target = {{ kind = \"sqlite\", path = \"{}\" }}\n\
         [[mapping]]\ntable = \"items\"\nkey = [\"tenant\", \"n\"]\n\
         columns = {{ tenant = \".data.tenant\", n = \".data.n\", city = \".data.city\" }}\n",
        proj.display()
    ))
    .unwrap();
    let config: ReconcileConfig = toml::from_str(&format!(
        "name = \"items\"\nsink = \"crm\"\nlag_window_ms = 0\n\
         source = {{ kind = \"sqlite\", path = \"{}\", table = \"items\" }}\n\
         [correction]\nupsert_type = \"item.snapshot\"\ndelete_type = \"item.deleted\"\n\
         repair_wait_ms = 0\n",
        source.display()
    ))
    .unwrap();
    let broker = Arc::new(Broker::open(&dir.path().join("log"), BrokerConfig::default()).unwrap());
    broker.create_topic("items", driftless_broker::TopicSpec::default()).unwrap();
    let r =
        Reconcilers::start(vec![config], std::slice::from_ref(&sink), Arc::clone(&broker)).unwrap();
    let report = r.run_now("items", Some(true)).await.unwrap();
    assert_eq!((report.missing, report.repaired), (1, 1));
    // No sink runs here: the correction is appended but not applied, and the run says so.
    assert_eq!((report.pending, report.clean), (1, false), "{report:?}");
    let m = broker.join("reader", &["items".to_string()], None).unwrap().member_id;
    let got = broker.fetch("reader", &m, 10).unwrap();
    assert_eq!(got.deliveries.len(), 1);
    let e = &got.deliveries[0].event;
    assert_eq!(e["subject"], r#"["t1",42]"#);
    assert_eq!(e["correction"], true);
    assert_eq!(e["data"]["n"], 42);
}

/// Regression: a table source's correction ranked by its own new offset, so a real change
/// appended between the source read and the correction could be overwritten by the older state.
/// It now ranks just above the projection row it replaces (its version + `~`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_ranks_just_above_the_row_it_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let (source, proj) = (dir.path().join("s.db"), dir.path().join("p.db"));
    exec(
        &source,
        "CREATE TABLE customers (id TEXT PRIMARY KEY, city TEXT); \
                   INSERT INTO customers VALUES ('a', 'right')",
    );
    exec(
        &proj,
        "CREATE TABLE contacts (id TEXT PRIMARY KEY, city TEXT, driftless_version TEXT); \
                 INSERT INTO contacts VALUES ('a', 'wrong', '00000000000000000005')",
    );
    let sink: SinkConfig = toml::from_str(&format!(
        "name = \"crm\"\ntopics = [\"customers\"]\n\
         target = {{ kind = \"sqlite\", path = \"{}\" }}\n\
         [[mapping]]\ntable = \"contacts\"\nkey = [\"id\"]\n\
         columns = {{ id = \".subject\", city = \".data.city\" }}\n",
        proj.display()
    ))
    .unwrap();
    let config: ReconcileConfig = toml::from_str(&format!(
        "name = \"crm\"\nsink = \"crm\"\nlag_window_ms = 0\n\
         source = {{ kind = \"sqlite\", path = \"{}\", table = \"customers\" }}\n\
         [correction]\nupsert_type = \"c.snapshot\"\ndelete_type = \"c.deleted\"\n\
         repair_wait_ms = 0\n",
        source.display()
    ))
    .unwrap();
    let broker = Arc::new(Broker::open(&dir.path().join("log"), BrokerConfig::default()).unwrap());
    broker.create_topic("customers", driftless_broker::TopicSpec::default()).unwrap();
    let r =
        Reconcilers::start(vec![config], std::slice::from_ref(&sink), Arc::clone(&broker)).unwrap();
    let report = r.run_now("crm", Some(true)).await.unwrap();
    assert_eq!((report.stale, report.repaired), (1, 1));
    let m = broker.join("reader", &["customers".to_string()], None).unwrap().member_id;
    let e = &broker.fetch("reader", &m, 10).unwrap().deliveries[0].event;
    assert_eq!(e["sequence"], "00000000000000000005~");
    assert!(e["sequence"].as_str().unwrap() < "00000000000000000006", "below any later event");
}

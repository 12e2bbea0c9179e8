#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Reconciliation through the HTTP API, all SQLite (the embedded default): a sink keeps a
//! projection of a source table's events; a hand edit, a lost row and a ghost row are found by
//! `POST /v1/reconciliations/NAME/run`, repaired through the log, and gone on the next run; the
//! runs show in the history and `/metrics`.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use driftless_broker::BrokerConfig;
use serde_json::{json, Value};

fn wait(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exec(db: &Path, sql: &str) {
    rusqlite::Connection::open(db).unwrap().execute_batch(sql).unwrap();
}

fn count(db: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(db).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn drift_is_found_repaired_through_the_log_and_gone_on_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let (source, proj) = (dir.path().join("customers.db"), dir.path().join("crm.db"));
    exec(&source, "CREATE TABLE customers (id TEXT PRIMARY KEY, city TEXT)");
    exec(&proj, "CREATE TABLE contacts (id TEXT PRIMARY KEY, city TEXT, driftless_version TEXT)");
    let text = format!(
        r#"
        [[sink]]
        name = "crm"
        topics = ["customers"]
        target = {{ kind = "sqlite", path = "{proj}" }}
        [[sink.mapping]]
        types = ["customer.changed"]
        table = "contacts"
        key = ["id"]
        columns = {{ id = ".subject", city = ".data.city" }}
        [[sink.mapping]]
        types = ["customer.removed"]
        table = "contacts"
        key = ["id"]
        op = "delete"

        [[reconcile]]
        name = "crm-contacts"
        sink = "crm"
        source = {{ kind = "sqlite", path = "{source}", table = "customers" }}
        lag_window_ms = 100
        [reconcile.correction]
        upsert_type = "customer.changed"
        delete_type = "customer.removed"
        "#,
        proj = proj.display(),
        source = source.display()
    );
    let mut config = driftless_server::ServerConfig::from_toml(&text, Path::new("t.toml")).unwrap();
    config.broker = BrokerConfig::default();
    let server = support::start(config);
    server.create_topic("customers", 2);
    let mut events = Vec::new();
    for i in 0..50 {
        let id = format!("c{i:02}");
        exec(&source, &format!("INSERT INTO customers VALUES ('{id}', 'city-{i}')"));
        events.push(json!({"specversion": "1.0", "id": format!("e{i}"), "source": "/customers",
            "type": "customer.changed", "subject": id, "data": {"city": format!("city-{i}")}}));
    }
    server.produce("customers", &events);
    wait("the projection", || count(&proj, "SELECT count(*) FROM contacts") == 50);

    let clean = server.post("/v1/reconciliations/crm-contacts/run", &json!({})).json();
    assert_eq!(
        (clean["missing"].as_u64(), clean["extra"].as_u64(), clean["stale"].as_u64()),
        (Some(0), Some(0), Some(0)),
        "{clean}"
    );

    exec(
        &proj,
        "DELETE FROM contacts WHERE id = 'c01'; \
                 UPDATE contacts SET city = 'edited by hand' WHERE id = 'c02'; \
                 INSERT INTO contacts VALUES ('ghost', 'nowhere', '0')",
    );
    let found = server.post("/v1/reconciliations/crm-contacts/run", &Value::Null).json();
    assert_eq!(
        found["keys"],
        json!({"missing": ["c01"], "extra": ["ghost"], "stale": ["c02"]}),
        "{found}"
    );
    assert!(found["rows_shipped"].as_u64().unwrap() < 100, "{found}");

    let repaired =
        server.post("/v1/reconciliations/crm-contacts/run", &json!({"repair": true})).json();
    assert_eq!(repaired["repaired"], json!(3), "{repaired}");
    wait("the corrections to apply", || {
        count(&proj, "SELECT count(*) FROM contacts WHERE id = 'ghost' OR city = 'edited by hand'")
            == 0
            && count(&proj, "SELECT count(*) FROM contacts") == 50
    });
    let after = server.post("/v1/reconciliations/crm-contacts/run", &json!({})).json();
    assert_eq!(after["buckets_differing"], json!(0), "{after}");

    let history = server.get("/v1/reconciliations/crm-contacts").json();
    assert_eq!(history["runs_total"], json!(4));
    assert_eq!(history["history"].as_array().unwrap().len(), 3);
    let metrics = server.get("/metrics").text;
    assert!(
        metrics.contains("driftless_drift_rows{reconcile=\"crm-contacts\",kind=\"missing\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("driftless_reconcile_runs_total{reconcile=\"crm-contacts\"} 4"));
    let p = server.post("/v1/reconciliations/nope/run", &json!({})).problem(404);
    assert!(p["detail"].as_str().unwrap().contains("nope"));
    let bad =
        server.post("/v1/reconciliations/crm-contacts/run", &json!({"repiar": true})).problem(400);
    assert!(bad["detail"].as_str().unwrap().contains("repiar"), "{bad}");
}

#[test]
fn a_projection_far_off_is_reported_truncated_within_the_key_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (source, proj) = (dir.path().join("customers.db"), dir.path().join("crm.db"));
    exec(&source, "CREATE TABLE customers (id TEXT PRIMARY KEY, city TEXT)");
    for i in 0..50 {
        exec(&source, &format!("INSERT INTO customers VALUES ('c{i:02}', 'x')"));
    }
    exec(&proj, "CREATE TABLE contacts (id TEXT PRIMARY KEY, city TEXT, driftless_version TEXT)");
    let text = format!(
        r#"
        [[sink]]
        name = "crm"
        topics = ["customers"]
        paused = true
        target = {{ kind = "sqlite", path = "{proj}" }}
        [[sink.mapping]]
        table = "contacts"
        key = ["id"]
        columns = {{ id = ".subject", city = ".data.city" }}

        [[reconcile]]
        name = "crm-contacts"
        sink = "crm"
        source = {{ kind = "sqlite", path = "{source}", table = "customers" }}
        lag_window_ms = 0
        drifted_keys_max = 10
        "#,
        proj = proj.display(),
        source = source.display()
    );
    let config = driftless_server::ServerConfig::from_toml(&text, Path::new("t.toml")).unwrap();
    let server = support::start(config);
    server.create_topic("customers", 1);
    let r = server.post("/v1/reconciliations/crm-contacts/run", &json!({})).json();
    assert_eq!(r["truncated"], json!(true), "{r}");
    assert_eq!(r["missing"], json!(10), "{r}");
    assert_eq!(r["rows_source"], json!(50));
}

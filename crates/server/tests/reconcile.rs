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
    // The answer comes after the sink applied the corrections and the re-check found no drift.
    assert_eq!(
        (&repaired["applied"], &repaired["clean"], &repaired["drift_remaining"]),
        (&json!(3), &json!(true), &json!(0)),
        "{repaired}"
    );
    let states: Vec<&Value> =
        repaired["corrections"].as_array().unwrap().iter().map(|c| &c["state"]).collect();
    assert_eq!(states, [&json!("applied"); 3], "{repaired}");
    assert_eq!(
        repaired["differences"],
        json!([{"key": "c02", "columns": [
            {"column": "city", "source": "city-2", "projection": "edited by hand"}]}]),
        "{repaired}"
    );
    assert_eq!(
        count(&proj, "SELECT count(*) FROM contacts WHERE id = 'ghost' OR city = 'edited by hand'"),
        0
    );
    assert_eq!(count(&proj, "SELECT count(*) FROM contacts"), 50);
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

#[test]
fn repair_reports_success_while_the_sinks_dead_letter_the_corrections() {
    // The projection refuses a value the source holds (a CHECK the source does not have): the
    // correction is dead-lettered, and the run says so instead of claiming a repair.
    let dir = tempfile::tempdir().unwrap();
    let (source, proj) = (dir.path().join("customers.db"), dir.path().join("crm.db"));
    exec(&source, "CREATE TABLE customers (id TEXT PRIMARY KEY, city TEXT)");
    exec(
        &proj,
        "CREATE TABLE contacts (id TEXT PRIMARY KEY, city TEXT CHECK (city <> 'Atlantis'), \
         driftless_version TEXT)",
    );
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

        [[reconcile]]
        name = "crm-contacts"
        sink = "crm"
        source = {{ kind = "sqlite", path = "{source}", table = "customers" }}
        lag_window_ms = 100
        [reconcile.correction]
        upsert_type = "customer.changed"
        delete_type = "customer.removed"
        repair_wait_ms = 20000
        "#,
        proj = proj.display(),
        source = source.display()
    );
    let mut config = driftless_server::ServerConfig::from_toml(&text, Path::new("t.toml")).unwrap();
    config.broker =
        BrokerConfig { max_attempts: 2, backoff_initial_ms: 10, ..BrokerConfig::default() };
    let server = support::start(config);
    server.create_topic("customers", 1);
    exec(&source, "INSERT INTO customers VALUES ('c1', 'Berlin'), ('c2', 'Paris')");
    let events: Vec<Value> = [("c1", "Berlin"), ("c2", "Paris")]
        .iter()
        .map(|(id, city)| {
            json!({"specversion": "1.0", "id": format!("e-{id}"), "source": "/customers",
                "type": "customer.changed", "subject": id, "data": {"city": city}})
        })
        .collect();
    server.produce("customers", &events);
    wait("the projection", || count(&proj, "SELECT count(*) FROM contacts") == 2);
    // The source moves on without an event (the drift), to a value the projection refuses.
    exec(&source, "UPDATE customers SET city = 'Atlantis' WHERE id = 'c2'");

    let r = server.post("/v1/reconciliations/crm-contacts/run", &json!({"repair": true})).json();
    assert_eq!(r["repaired"], json!(1), "{r}");
    assert_eq!((&r["dead_lettered"], &r["applied"]), (&json!(1), &json!(0)), "{r}");
    assert_eq!(r["clean"], json!(false), "{r}");
    assert_eq!(r["keys_remaining"], json!(["c2"]), "{r}");
    let c = &r["corrections"][0];
    assert_eq!((&c["key"], &c["state"]), (&json!("c2"), &json!("dead_lettered")), "{r}");
    let why = c["error"].as_str().unwrap();
    assert!(why.contains("sink-crm") && why.contains("CHECK"), "{why}");

    let too_long = server
        .post("/v1/reconciliations/crm-contacts/run", &json!({"repair": true, "wait_ms": 600000}))
        .problem(400);
    assert!(too_long["detail"].as_str().unwrap().contains("60000"), "{too_long}");
}

#[test]
fn sqlite_reconciliation_reports_the_same_stale_keys_every_run_and_never_converges() {
    // A service keeps balances in a REAL column and its events carry them as its table holds
    // them; the projection declares NUMERIC, so SQLite stores the integral ones (20.0) as
    // INTEGER (20). Same numbers, printed `20.0` and `20`: keys 1, 2 and 5 were stale on every
    // run, and each repair wrote the same values again without ever converging.
    let dir = tempfile::tempdir().unwrap();
    let (source, proj) = (dir.path().join("customers.db"), dir.path().join("crm.db"));
    exec(&source, "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, balance REAL)");
    exec(
        &proj,
        "CREATE TABLE accounts (customer_id TEXT PRIMARY KEY, name TEXT, balance NUMERIC, \
         driftless_version TEXT)",
    );
    let text = format!(
        r#"
        [[sink]]
        name = "crm"
        topics = ["customer"]
        target = {{ kind = "sqlite", path = "{proj}" }}
        [[sink.mapping]]
        types = ["customer.*"]
        table = "accounts"
        key = ["customer_id"]
        columns = {{ customer_id = ".subject", name = ".data.name", balance = ".data.balance" }}

        [[reconcile]]
        name = "crm-accounts"
        sink = "crm"
        source = {{ kind = "sqlite", path = "{source}", table = "customers", key = ["id"] }}
        lag_window_ms = 100
        [reconcile.correction]
        upsert_type = "customer.snapshot.v1"
        delete_type = "customer.deleted.v1"
        repair_wait_ms = 10000
        "#,
        proj = proj.display(),
        source = source.display()
    );
    let config = driftless_server::ServerConfig::from_toml(&text, Path::new("t.toml")).unwrap();
    let server = support::start(config);
    server.create_topic("customer", 2);
    let balances = [(1, "20.0"), (2, "5.0"), (3, "19.99"), (4, "0.5"), (5, "100.0"), (6, "-3.25")];
    let mut events = Vec::new();
    for (id, balance) in balances {
        exec(&source, &format!("INSERT INTO customers VALUES ({id}, 'n{id}', {balance})"));
        let data: Value =
            serde_json::from_str(&format!(r#"{{"name": "n{id}", "balance": {balance}}}"#)).unwrap();
        events.push(json!({"specversion": "1.0", "id": format!("e{id}"), "source": "/customers",
            "type": "customer.created.v1", "subject": id.to_string(), "data": data}));
    }
    server.produce("customer", &events);
    wait("the projection", || count(&proj, "SELECT count(*) FROM accounts") == 6);

    let r = server.post("/v1/reconciliations/crm-accounts/run", &json!({})).json();
    assert_eq!((&r["stale"], &r["missing"], &r["extra"]), (&json!(0), &json!(0), &json!(0)), "{r}");
    assert_eq!(r["clean"], json!(true), "{r}");

    // A real drift still shows and is repaired, once.
    exec(&proj, "UPDATE accounts SET balance = 21 WHERE customer_id = '1'");
    let r = server.post("/v1/reconciliations/crm-accounts/run", &json!({"repair": true})).json();
    assert_eq!(r["keys"]["stale"], json!(["1"]), "{r}");
    assert_eq!(
        r["differences"][0]["columns"],
        json!([{"column": "balance", "source": "20", "projection": "21"}]),
        "{r}"
    );
    assert_eq!((&r["applied"], &r["clean"]), (&json!(1), &json!(true)), "{r}");
    let again =
        server.post("/v1/reconciliations/crm-accounts/run", &json!({"repair": true})).json();
    assert_eq!((&again["stale"], &again["repaired"]), (&json!(0), &json!(0)), "{again}");
}

#[test]
fn a_repair_is_refused_when_another_sink_reading_the_topic_would_dead_letter_its_corrections() {
    // `crm` is reconciled; `ledger` reads the same topic and keys its rows by a field the
    // service's events carry and a correction (the source row) does not: each correction would
    // be dead-lettered in `ledger`'s queue. The repair says so and appends nothing.
    let dir = tempfile::tempdir().unwrap();
    let (source, proj, ledger) =
        (dir.path().join("customers.db"), dir.path().join("crm.db"), dir.path().join("ledger.db"));
    exec(&source, "CREATE TABLE customers (id TEXT PRIMARY KEY, city TEXT)");
    exec(&proj, "CREATE TABLE contacts (id TEXT PRIMARY KEY, city TEXT, driftless_version TEXT)");
    exec(&ledger, "CREATE TABLE entries (account TEXT PRIMARY KEY, driftless_version TEXT)");
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

        [[sink]]
        name = "ledger"
        topics = ["customers"]
        target = {{ kind = "sqlite", path = "{ledger}" }}
        [[sink.mapping]]
        types = ["customer.*"]
        table = "entries"
        key = ["account"]
        columns = {{ account = ".data.billing.account" }}

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
        ledger = ledger.display(),
        source = source.display()
    );
    let config = driftless_server::ServerConfig::from_toml(&text, Path::new("t.toml")).unwrap();
    let server = support::start(config);
    server.create_topic("customers", 1);
    exec(&source, "INSERT INTO customers VALUES ('c1', 'Berlin')");
    server.produce(
        "customers",
        &[json!({"specversion": "1.0", "id": "e1", "source": "/customers",
            "type": "customer.changed", "subject": "c1",
            "data": {"city": "Berlin", "billing": {"account": "a-1"}}})],
    );
    wait("both projections", || {
        count(&proj, "SELECT count(*) FROM contacts") == 1
            && count(&ledger, "SELECT count(*) FROM entries") == 1
    });
    exec(&proj, "UPDATE contacts SET city = 'edited by hand'");
    let end = server.get("/v1/topics/customers").json()["partitions"][0]["end_offset"].clone();

    let r = server.post("/v1/reconciliations/crm-contacts/run", &json!({"repair": true})).json();
    let why = r["repair_refused"].as_str().unwrap_or_else(|| panic!("not refused: {r}"));
    assert!(why.contains("sink `ledger`") && why.contains("account"), "{why}");
    assert_eq!((&r["repaired"], &r["clean"]), (&json!(0), &json!(false)), "{r}");
    assert_eq!(
        server.get("/v1/topics/customers").json()["partitions"][0]["end_offset"],
        end,
        "nothing was appended"
    );
    let dlq = server.get("/v1/groups/sink-ledger/dlq").json();
    assert_eq!(dlq, json!([]), "{dlq}");
}

#[test]
fn a_sqlite_source_with_blobs_is_repaired_not_failed_by_sqlites_json() {
    // SQLite's JSON cannot hold a BLOB: reading the source row for a correction failed the run.
    // Bytes travel as base64 (as events carry them), and the projection's BLOB column decodes it.
    let dir = tempfile::tempdir().unwrap();
    let (source, proj) = (dir.path().join("files.db"), dir.path().join("copy.db"));
    exec(&source, "CREATE TABLE files (id TEXT PRIMARY KEY, body BLOB)");
    exec(&proj, "CREATE TABLE files (id TEXT PRIMARY KEY, body BLOB, driftless_version TEXT)");
    let text = format!(
        r#"
        [[sink]]
        name = "copy"
        topics = ["files"]
        target = {{ kind = "sqlite", path = "{proj}" }}
        [[sink.mapping]]
        types = ["file.*"]
        table = "files"
        key = ["id"]
        columns = {{ id = ".subject", body = ".data.body" }}

        [[reconcile]]
        name = "files"
        sink = "copy"
        source = {{ kind = "sqlite", path = "{source}", table = "files" }}
        lag_window_ms = 100
        [reconcile.correction]
        upsert_type = "file.snapshot"
        delete_type = "file.deleted"
        "#,
        proj = proj.display(),
        source = source.display()
    );
    let config = driftless_server::ServerConfig::from_toml(&text, Path::new("t.toml")).unwrap();
    let server = support::start(config);
    server.create_topic("files", 1);
    exec(&source, "INSERT INTO files VALUES ('f1', x'00fffe01'), ('f2', x'')");
    let events: Vec<Value> = [("f1", "AP/+AQ=="), ("f2", "")]
        .iter()
        .map(|(id, b64)| {
            json!({"specversion": "1.0", "id": format!("e-{id}"), "source": "/files",
                "type": "file.created", "subject": id, "data": {"body": b64}})
        })
        .collect();
    server.produce("files", &events);
    wait("the projection", || count(&proj, "SELECT count(*) FROM files") == 2);
    exec(&proj, "UPDATE files SET body = x'00' WHERE id = 'f1'");

    let r = server.post("/v1/reconciliations/files/run", &json!({"repair": true})).json();
    assert_eq!(r["keys"]["stale"], json!(["f1"]), "{r}");
    assert_eq!((&r["applied"], &r["clean"]), (&json!(1), &json!(true)), "{r}");
    assert_eq!(
        count(&proj, "SELECT count(*) FROM files WHERE id = 'f1' AND body = x'00fffe01'"),
        1
    );
}

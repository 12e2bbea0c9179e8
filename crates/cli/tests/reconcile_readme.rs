//! The README's reconciliation examples ("Reconciliation: finding and repairing drift"), run
//! verbatim through the real `driftless` binary: each `toml` block after a
//! `<!-- reconcile-example: NAME -->` marker is the server's config and the `sql` block after it
//! creates the tables. The only substitution: the README's URLs and file paths become the test's
//! own (each must occur in the block, so the README cannot drift from what is tested). The test
//! appends one `[[reconcile]]` of its own to each, shaped the wrong way, to check that a repair
//! that would write wrong values is refused.
//!
//! Each test: the source's rows reach the projection; drift is planted by hand in the projection
//! (an edited row, a lost row, a ghost row); `driftless reconcile NAME --repair` exits 0, says
//! the drift is gone, and the projection equals the source; the misconfigured repair exits 1
//! with its reason and appends nothing. Every wait is bounded; only loopback addresses are used.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use driftless_testkit::PgServer;
use support::ServeProcess;

const README: &str = include_str!("../../../README.md");

/// The `toml` and `sql` blocks after the marker of example `name`.
fn example(name: &str) -> (String, String) {
    let marker = format!("<!-- reconcile-example: {name} -->");
    let at = README.find(&marker).unwrap_or_else(|| panic!("README lacks {marker}"));
    let rest = &README[at..];
    let block = |rest: &str, lang: &str| -> (String, usize) {
        let open = format!("```{lang}\n");
        let start = rest.find(&open).unwrap_or_else(|| panic!("no {lang} block after {marker}"));
        let body = &rest[start + open.len()..];
        let end = body.find("```").unwrap();
        (body[..end].to_string(), start + open.len() + end)
    };
    let (toml, used) = block(rest, "toml");
    let (sql, _) = block(&rest[used..], "sql");
    (toml, sql)
}

/// `text` with each `from` replaced by `to`; each must occur.
fn substitute(text: &str, pairs: &[(&str, String)]) -> String {
    let mut out = text.to_string();
    for (from, to) in pairs {
        assert!(out.contains(from), "the README example no longer contains {from}");
        out = out.replace(from, to);
    }
    out
}

/// The SQL block's statements per database: a `-- NAME…` comment line starts NAME's.
fn statements(sql: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut current = String::new();
    for line in sql.lines() {
        if let Some(comment) = line.strip_prefix("-- ") {
            current = comment.split([':', ' ']).next().unwrap().to_string();
        } else if !line.trim().is_empty() {
            out.entry(current.clone()).or_default().push_str(&format!("{line}\n"));
        }
    }
    out
}

fn psql(pg: &PgServer, db: &str, sql: &str) -> String {
    let out = std::process::Command::new("/usr/lib/postgresql/15/bin/psql")
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", &pg.url(db), "-c", sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn lite(db: &Path, sql: &str) {
    rusqlite::Connection::open(db).unwrap().execute_batch(sql).unwrap();
}

fn lite_rows(db: &Path, sql: &str) -> Vec<String> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut stmt = c.prepare(sql).unwrap();
    let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
    rows.map(Result::unwrap).collect()
}

fn wait(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_readme_cdc_example_repairs_a_postgres_projection_and_refuses_row_shaped_corrections() {
    let (toml, sql) = example("cdc-postgres");
    let pg = PgServer::start().unwrap();
    let sql = statements(&sql);
    for db in ["app", "crm"] {
        pg.create_database(db).unwrap();
        psql(&pg, db, &sql[db]);
    }
    psql(
        &pg,
        "app",
        "INSERT INTO customers SELECT g, 'name-' || g, 'city-' || g FROM generate_series(1, 20) g",
    );
    let mut config = substitute(
        &toml,
        &[
            ("postgres://replicator:secret@127.0.0.1:5432/app", pg.url("app")),
            ("postgres://crm:secret@127.0.0.1:5432/crm", pg.url("crm")),
        ],
    );
    config.push_str(&format!(
        "\n[[reconcile]]\nname = \"crm-contacts-as-rows\"\nsink = \"crm\"\n\
         source = {{ kind = \"postgres\", url = \"{}\", table = \"public.customers\" }}\n\
         [reconcile.correction]\nupsert_type = \"public.customers.update\"\n\
         delete_type = \"public.customers.delete\"\ndata = \"row\"\n",
        pg.url("app")
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let server = ServeProcess::start_with_args(
        &dir.path().join("data"),
        &["--config", path.to_str().unwrap()],
    );
    let rows = |db: &str, table: &str| {
        psql(&pg, db, &format!("SELECT id, name, coalesce(city, 'NULL') FROM {table} ORDER BY id"))
    };
    wait("the snapshot in the projection", || rows("crm", "contacts") == rows("app", "customers"));

    psql(
        &pg,
        "crm",
        "UPDATE contacts SET city = 'edited by hand' WHERE id = 2; \
         DELETE FROM contacts WHERE id = 3; \
         INSERT INTO contacts VALUES (999, 'ghost', 'nowhere', '0')",
    );
    let planted = rows("crm", "contacts");

    let refused = server.run_cli(&["reconcile", "crm-contacts-as-rows", "--repair"], "");
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let out = text(&refused);
    assert!(out.contains("repair refused, nothing appended"), "{out}");
    assert!(out.contains("data = \"cdc\""), "the sentence names the setting: {out}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rows("crm", "contacts"), planted, "a refused repair changes nothing");

    let repaired = server.run_cli(&["reconcile", "crm-contacts", "--repair"], "");
    let out = text(&repaired);
    assert_eq!(repaired.status.code(), Some(0), "{out}");
    assert!(out.contains("3 corrections appended — 3 applied"), "{out}");
    assert!(out.contains("the drift is gone"), "{out}");
    assert!(
        out.contains("2 city: source \"city-2\", projection \"edited by hand\""),
        "the report shows the differing values: {out}"
    );
    assert_eq!(rows("crm", "contacts"), rows("app", "customers"));
}

#[test]
fn the_readme_outbox_example_repairs_a_sqlite_projection_converges_and_refuses_cdc_shaped_corrections(
) {
    let (toml, sql) = example("outbox-sqlite");
    let dir = tempfile::tempdir().unwrap();
    let (customers, shipping) = (dir.path().join("customers.db"), dir.path().join("shipping.db"));
    let sql = statements(&sql);
    lite(&customers, &sql["customers.db"]);
    lite(&shipping, &sql["shipping.db"]);
    let init = std::process::Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(["outbox", "init", "--sqlite"])
        .arg(&customers)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", text(&init));
    // The service: each change to its table and its event, in one transaction.
    let write = |id: i64, name: &str, city: &str, ty: &str| {
        lite(
            &customers,
            &format!(
                "BEGIN; INSERT INTO customers VALUES ({id}, '{name}', '{city}') \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, city = excluded.city; \
                 INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) VALUES \
                 ('{ty}-{id}-{city}', 'customer', '{id}', '{ty}', \
                  json_object('name', '{name}', 'city', '{city}')); COMMIT"
            ),
        )
    };
    for i in 1..=20 {
        write(i, &format!("name-{i}"), &format!("city-{i}"), "customer.created.v1");
    }
    let quoted = |p: &Path| format!("\"{}\"", p.display());
    let mut config = substitute(
        &toml,
        &[("\"customers.db\"", quoted(&customers)), ("\"shipping.db\"", quoted(&shipping))],
    );
    config.push_str(&format!(
        "\n[[reconcile]]\nname = \"shipping-as-cdc\"\nsink = \"shipping\"\n\
         source = {{ kind = \"sqlite\", path = {}, table = \"customers\", key = [\"id\"] }}\n\
         [reconcile.correction]\nupsert_type = \"customer.snapshot.v1\"\n\
         delete_type = \"customer.deleted.v1\"\ndata = \"cdc\"\n",
        quoted(&customers)
    ));
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let server = ServeProcess::start_with_args(
        &dir.path().join("data"),
        &["--config", path.to_str().unwrap()],
    );
    let source = || {
        lite_rows(
            &customers,
            "SELECT id || '|' || name || '|' || coalesce(city, 'NULL') FROM customers ORDER BY id",
        )
    };
    let projection = || {
        lite_rows(
            &shipping,
            "SELECT customer_id || '|' || name || '|' || coalesce(city, 'NULL') FROM recipients \
             ORDER BY CAST(customer_id AS INTEGER)",
        )
    };
    wait("the events in the projection", || projection() == source());
    // An update through the service too: its row's version is above the first events'.
    write(5, "name-5", "city-5b", "customer.updated.v1");
    wait("the update in the projection", || projection() == source());

    lite(
        &shipping,
        "UPDATE recipients SET city = 'edited by hand' WHERE customer_id = '2'; \
         UPDATE recipients SET name = 'edited too' WHERE customer_id = '5'; \
         DELETE FROM recipients WHERE customer_id = '3'; \
         INSERT INTO recipients VALUES ('999', 'ghost', 'nowhere', '0')",
    );
    let planted = projection();

    let refused = server.run_cli(&["reconcile", "shipping-as-cdc", "--repair"], "");
    let out = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{out}");
    assert!(out.contains("repair refused, nothing appended"), "{out}");
    assert!(out.contains("data = \"row\""), "the sentence names the setting: {out}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(projection(), planted, "a refused repair changes nothing");

    let repaired = server.run_cli(&["reconcile", "shipping-recipients", "--repair"], "");
    let out = text(&repaired);
    assert_eq!(repaired.status.code(), Some(0), "{out}");
    assert!(out.contains("4 corrections appended — 4 applied"), "{out}");
    assert!(out.contains("the drift is gone"), "{out}");
    assert!(
        out.contains("2 city: source \"city-2\", projection \"edited by hand\""),
        "the report shows the differing values: {out}"
    );
    assert_eq!(projection(), source());

    // Converged: later runs find nothing, and a repair has nothing to append.
    for _ in 0..2 {
        let again = server.run_cli(&["reconcile", "shipping-recipients", "--repair", "--json"], "");
        let out = text(&again);
        assert_eq!(again.status.code(), Some(0), "{out}");
        let report: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
        assert_eq!(
            (report["missing"].as_u64(), report["extra"].as_u64(), report["stale"].as_u64()),
            (Some(0), Some(0), Some(0)),
            "{out}"
        );
        assert_eq!(report["repaired"], serde_json::json!(0), "{out}");
    }
}

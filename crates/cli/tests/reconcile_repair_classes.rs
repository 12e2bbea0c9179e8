//! "A repair never writes a value the source does not hold", as a class: a CDC source and a
//! Postgres projection with a column of each kind of value (integers, numeric, float, text,
//! boolean, timestamps, dates, jsonb, bytea, arrays, NULL), kept by the real `driftless serve`.
//! Drift is planted by hand in every column; `driftless reconcile --repair` with the correction
//! shape left to be derived must make the projection equal the source, value for value, and
//! exit 0. The same corrections shaped as plain rows (`data = "row"`) would have written NULL
//! into every column (the issue's `(NULL, NULL)`): that repair must be refused before anything
//! is appended, exit 1, and leave the projection as it was.
//!
//! Invariants of the harness: every wait is bounded; only loopback addresses are used.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::time::{Duration, Instant};

use driftless_testkit::PgServer;
use support::ServeProcess;

const COLUMNS: &str = "i int4, n numeric, f float8, t text, b bool, ts timestamptz, d date, \
                       j jsonb, by bytea, arr int4[], nul text";
const NAMES: [&str; 11] = ["i", "n", "f", "t", "b", "ts", "d", "j", "by", "arr", "nul"];

fn psql(pg: &PgServer, db: &str, sql: &str) -> String {
    let out = std::process::Command::new("/usr/lib/postgresql/15/bin/psql")
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", &pg.url(db), "-c", sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Every row's values as Postgres prints them (UTC), in key order.
fn rows(pg: &PgServer, db: &str, table: &str) -> String {
    psql(
        pg,
        db,
        &format!(
            "SET TimeZone = 'UTC'; SELECT id, {} FROM {table} ORDER BY id",
            NAMES.map(|c| format!("coalesce({c}::text, 'NULL')")).join(", ")
        ),
    )
}

fn config(pg: &PgServer) -> String {
    // The key from the subject, every other column from `.data.after` (the mapping).
    let columns = std::iter::once("id = \".subject\"".to_string())
        .chain(NAMES.iter().map(|c| format!("{c} = \".data.after.{c}\"")))
        .collect::<Vec<_>>()
        .join(", ");
    let reconcile = |name: &str, extra: &str| {
        format!(
            "[[reconcile]]\nname = \"{name}\"\nsink = \"proj\"\nlag_window_ms = 200\n\
             source = {{ kind = \"postgres\", url = \"{src}\", table = \"items\" }}\n\
             [reconcile.correction]\nupsert_type = \"public.items.update\"\n\
             delete_type = \"public.items.delete\"\n{extra}\n",
            src = pg.url("src")
        )
    };
    format!(
        "[[source]]\nname = \"src\"\nkind = \"postgres_cdc\"\nurl = \"{src}\"\n\
         tables = [\"public.items\"]\nroutes.\"public.items\" = \"items\"\n\n\
         [[sink]]\nname = \"proj\"\ntopics = [\"items\"]\n\
         target = {{ kind = \"postgres\", url = \"{proj}\" }}\n\
         [[sink.mapping]]\ntypes = [\"public.items.read\", \"public.items.insert\", \
         \"public.items.update\"]\ntable = \"items\"\nkey = [\"id\"]\ncolumns = {{ {columns} }}\n\
         [[sink.mapping]]\ntypes = [\"public.items.delete\"]\ntable = \"items\"\nkey = [\"id\"]\n\
         op = \"delete\"\n\n{derived}\n{rows}",
        src = pg.url("src"),
        proj = pg.url("proj"),
        derived = reconcile("items", ""),
        rows = reconcile("items-as-rows", "data = \"row\"\nsequence = \"none\""),
    )
}

fn wait(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_repair_writes_exactly_the_source_values_of_every_column_kind_and_refuses_shapes_that_would_not(
) {
    let pg = PgServer::start().unwrap();
    pg.create_database("src").unwrap();
    pg.create_database("proj").unwrap();
    psql(&pg, "src", &format!("CREATE TABLE items (id int8 PRIMARY KEY, {COLUMNS})"));
    psql(
        &pg,
        "proj",
        &format!("CREATE TABLE items (id int8 PRIMARY KEY, {COLUMNS}, driftless_version text)"),
    );
    psql(
        &pg,
        "src",
        "INSERT INTO items SELECT g, g * 7, 1.50 + g, 0.1 * g, 'tëxt \"' || g || E'\\'', \
         g % 2 = 0, timestamptz '2024-02-29 23:59:59.123456+00' + g * interval '1 hour', \
         date '2024-02-29' + g, jsonb_build_object('a', jsonb_build_array(g, null)), \
         decode('00ff' || lpad(to_hex(g), 2, '0'), 'hex'), ARRAY[g, NULL, 3]::int4[], NULL \
         FROM generate_series(1, 30) g",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config(&pg)).unwrap();
    let server = ServeProcess::start_with_args(
        &dir.path().join("data"),
        &["--config", path.to_str().unwrap()],
    );
    wait("the snapshot in the projection", || {
        rows(&pg, "proj", "items") == rows(&pg, "src", "items")
    });

    // A hand edit in each column on its own key, a lost row and a ghost row.
    let edits = [
        "i = 0",
        "n = 0.5",
        "f = 0.30000000000000004",
        "t = 'edited'",
        "b = NOT b",
        "ts = ts + interval '1 microsecond'",
        "d = d + 1",
        "j = '{\"a\": [0]}'",
        "by = '\\x00'",
        "arr = ARRAY[1]",
        "nul = 'not null'",
    ];
    let mut sql: Vec<String> = edits
        .iter()
        .enumerate()
        .map(|(k, set)| format!("UPDATE items SET {set} WHERE id = {}", k + 1))
        .collect();
    sql.push("DELETE FROM items WHERE id = 20".into());
    sql.push("INSERT INTO items (id, t) VALUES (999, 'ghost')".into());
    psql(&pg, "proj", &sql.join("; "));
    let planted = rows(&pg, "proj", "items");
    assert_ne!(planted, rows(&pg, "src", "items"));

    let refused = server.run_cli(&["reconcile", "items-as-rows", "--repair"], "");
    let out = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{out}");
    assert!(out.contains("repair refused, nothing appended"), "{out}");
    assert!(out.contains("would write null into column `arr`"), "{out}");
    assert!(out.contains("data = \"cdc\""), "the sentence names the setting: {out}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rows(&pg, "proj", "items"), planted, "a refused repair changes nothing");

    let repaired = server.run_cli(&["reconcile", "items", "--repair"], "");
    let out = text(&repaired);
    assert_eq!(repaired.status.code(), Some(0), "{out}");
    assert!(out.contains("13 corrections appended — 13 applied"), "{out}");
    assert!(out.contains("the drift is gone"), "{out}");
    assert_eq!(rows(&pg, "proj", "items"), rows(&pg, "src", "items"));
}

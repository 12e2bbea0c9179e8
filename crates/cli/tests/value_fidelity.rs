//! Every value arrives exactly: a source table with a column of every kind of built-in
//! PostgreSQL type (and enums, domains, composites, ranges, arrays) is carried by the real
//! `driftless serve` — CDC snapshot reads and streamed inserts, updates, deletes — into a
//! Postgres projection and an SQLite projection, and each projected value is compared with the
//! source's.
//!
//! Postgres is compared in PostgreSQL as text (`col::text` on both sides, same server settings),
//! so a value that changed in any way (a rounded float, base64 written as bytes, a lost `-0`, a
//! JSON `null` turned into SQL NULL) fails with the row and column named. SQLite is compared as
//! the README documents it (integers, exact doubles as REAL, numeric as text, bytea as a BLOB,
//! json as its text).
//!
//! Invariants of the harness: every wait is bounded; only loopback addresses are used.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use driftless_testkit::PgServer;
use support::{http, ServeProcess};

/// Column name → type, in table order (the source and the projection share them).
const COLUMNS: &[(&str, &str)] = &[
    ("i2", "int2"),
    ("i4", "int4"),
    ("i8", "int8"),
    ("n", "numeric"),
    ("f4", "float4"),
    ("f8", "float8"),
    ("t", "text"),
    ("vc", "varchar(20)"),
    ("ch", "char(5)"),
    ("by", "bytea"),
    ("b", "bool"),
    ("d", "date"),
    ("tm", "time"),
    ("ttz", "timetz"),
    ("ts", "timestamp"),
    ("tstz", "timestamptz"),
    ("iv", "interval"),
    ("u", "uuid"),
    ("j", "json"),
    ("jb", "jsonb"),
    ("ai", "int4[]"),
    ("at", "text[]"),
    ("af", "float8[]"),
    ("aby", "bytea[]"),
    ("abox", "box[]"),
    ("e", "mood"),
    ("dm", "posint"),
    ("dby", "bytes"),
    ("comp", "pair"),
    ("r", "int4range"),
    ("tr", "tstzrange"),
    ("ip", "inet"),
    ("cidr_", "cidr"),
    ("mac", "macaddr"),
    ("mon", "money"),
    ("bt", "bit(4)"),
    ("vb", "varbit"),
    ("x", "xml"),
    ("tsv", "tsvector"),
    ("pt", "point"),
    ("bx", "box"),
    ("poly", "polygon"),
    ("circ", "circle"),
];

const TYPES_DDL: &str = "CREATE TYPE mood AS ENUM ('sad', 'happy', 'it''s');
     CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
     CREATE DOMAIN bytes AS bytea;
     CREATE TYPE pair AS (a int, b text);";

/// Rows of values (SQL literals, `NULL` for none), one per row, in `COLUMNS` order.
fn rows() -> Vec<Vec<&'static str>> {
    vec![
        vec![
            "-32768",
            "2147483647",
            "-9223372036854775808",
            "'123456789012345678901234567890.000000000000000000000000000001'",
            "'-0'",
            "'-0'",
            "'héllo \"q\" \\ back''slash\nnew line 🦀'",
            "'v'",
            "'ab'",
            "'\\x00ff00ff5c27'",
            "true",
            "'infinity'",
            "'23:59:59.999999'",
            "'12:00:00+05:30'",
            "'0044-03-15 12:00:00.5 BC'",
            "'1800-01-01 00:00:00.25+05:53:28'",
            "'1 year 2 mons -3 days 04:05:06.789'",
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            "'null'",
            "'null'",
            "'{1,NULL,3}'",
            "'{\"a,b\",\"c\\\"d\",NULL,\"NULL\",\"\"}'",
            "'{-0,NaN,Infinity,-Infinity}'",
            "'{\"\\\\x00ff\",NULL,\"\\\\x\"}'",
            "'{(1,1),(0,0);(2,2),(1,1)}'",
            "'it''s'",
            "7",
            "'\\x0a0b'",
            "'(1,\"x, y\")'",
            "'[1,5)'",
            "'[2026-01-01 00:00:00+00,infinity)'",
            "'192.168.0.1/24'",
            "'10.0.0.0/8'",
            "'08:00:2b:01:02:03'",
            "'1234.56'",
            "B'1010'",
            "B'101'",
            "'<a>b &amp; c</a>'",
            "'a fat cat sat'",
            "'(1.5,-2)'",
            "'(1,1),(0,0)'",
            "'((0,0),(1,1),(1,0))'",
            "'<(0,0),2.5>'",
        ],
        vec![
            "0",
            "-1",
            "9223372036854775807",
            "'NaN'",
            "'1.4e-45'",
            "'4.9e-324'",
            "''",
            "''",
            "'     '",
            "'\\x'",
            "false",
            "'0044-03-15 BC'",
            "'00:00:00'",
            "'00:00:00-09:30'",
            "'infinity'",
            "'-infinity'",
            "'-178000000 years'",
            "'00000000-0000-0000-0000-000000000000'",
            "' {\"a\":1, \"a\":2,\"u\":\"\\u00e9\\ud83e\\udd80\"} '",
            "'{\"a\": {\"b\": [1, 2.50, null, 1e-7, 12345678901234567890123]}}'",
            "'{{1,2},{3,4}}'",
            "'{}'",
            "'{3.8479485277079987e-69,2.567401560283309e-200}'",
            "'{}'",
            "'{}'",
            "'sad'",
            "1",
            "'\\x'",
            "'(,)'",
            "'empty'",
            "'(,)'",
            "'::1'",
            "'::/0'",
            "'ff:ff:ff:ff:ff:ff'",
            "'-0.01'",
            "B'0000'",
            "B''",
            "'<x/>'",
            "''",
            "'(0,-0)'",
            "'(0,0),(0,0)'",
            "'((0,0))'",
            "'<(1e300,-1e-300),0>'",
        ],
        vec![
            "1",
            "1",
            "1",
            "'Infinity'",
            "'3.4028235e38'",
            "'3.8479485277079987e-69'",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "'[1, \"\\u00e9\"]'",
            "'[]'",
            "NULL",
            "'{NULL}'",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
            "NULL",
        ],
        vec![
            "2",
            "2",
            "2",
            "'-Infinity'",
            "'NaN'",
            "'-Infinity'",
            "'x'",
            "'y'",
            "'z'",
            "'\\x5c785c'",
            "true",
            "'2026-11-25'",
            "'11:56:22.5'",
            "'11:56:22.5-00:00:01'",
            "'2026-11-25 11:56:22.123456'",
            "'2026-11-25 11:56:22.123456+00'",
            "'0'",
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            "'\"null\"'",
            "'\"\"'",
            "'{5,6}'",
            "'{\"\\\\\"}'",
            "'{0.1,1e+308,NULL}'",
            "'{NULL}'",
            "'{NULL}'",
            "'happy'",
            "2147483647",
            "'\\x00'",
            "'(-1,)'",
            "'(,10]'",
            "'empty'",
            "'0.0.0.0'",
            "'1.2.3.0/24'",
            "'00:00:00:00:00:00'",
            "'0'",
            "B'1111'",
            "B'1'",
            "'text only'",
            "'''quoted'' words'",
            "'(0,0)'",
            "'(1,2),(3,4)'",
            "'((1,2))'",
            "'<(0,0),0>'",
        ],
    ]
}

fn psql(pg: &PgServer, db: &str, sql: &str) -> String {
    let out = std::process::Command::new("/usr/lib/postgresql/15/bin/psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &pg.url(db), "-c", sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn table_ddl(name: &str, extra: &str) -> String {
    let cols: Vec<String> = COLUMNS.iter().map(|(c, t)| format!("{c} {t}")).collect();
    format!("CREATE TABLE {name} (id int8 PRIMARY KEY, {}{extra})", cols.join(", "))
}

fn insert(id: i64, row: &[&str]) -> String {
    let names: Vec<&str> = COLUMNS.iter().map(|(c, _)| *c).collect();
    format!("INSERT INTO t (id, {}) VALUES ({id}, {})", names.join(", "), row.join(", "))
}

/// Every row as text, one line per (id, column): `id|column|value-or-\N`.
fn as_text(pg: &PgServer, db: &str, table: &str) -> Vec<String> {
    let cols: Vec<String> = COLUMNS
        .iter()
        .map(|(c, _)| format!("'{c}=' || coalesce(quote_literal({c}::text), 'NULL')"))
        .collect();
    let out = psql(
        pg,
        db,
        &format!(
            "SELECT id || '|' || concat_ws('|', {}) FROM {table} ORDER BY id",
            cols.join(", ")
        ),
    );
    out.lines().map(str::to_string).collect()
}

fn config(dir: &Path, src: &str, proj: &str, lite: &Path) -> std::path::PathBuf {
    let text = format!(
        r#"
[[source]]
name = "app"
kind = "postgres_cdc"
url = "{src}"
tables = ["public.t"]
routes."public.t" = "t"

[[sink]]
name = "proj"
topics = ["t"]
target = {{ kind = "postgres", url = "{proj}" }}
[[sink.mapping]]
types = ["public.t.read", "public.t.insert", "public.t.update"]
table = "t"
key = ["id"]
row = ".data.after"
[[sink.mapping]]
types = ["public.t.delete"]
table = "t"
key = ["id"]
op = "delete"

[[sink]]
name = "lite"
topics = ["t"]
target = {{ kind = "sqlite", path = "{lite}" }}
[[sink.mapping]]
types = ["public.t.read", "public.t.insert", "public.t.update"]
table = "t"
key = ["id"]
columns = {{ id = ".data.after.id", i8 = ".data.after.i8", n = ".data.after.n", f8 = ".data.after.f8", t = ".data.after.t", by = ".data.after.by", b = ".data.after.b", j = ".data.after.j", jb = ".data.after.jb" }}
[[sink.mapping]]
types = ["public.t.delete"]
table = "t"
key = ["id"]
op = "delete"
"#,
        lite = lite.display()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_column_type_arrives_in_the_projections_exactly_as_the_source_holds_it() {
    let pg = PgServer::start().unwrap();
    pg.create_database("src").unwrap();
    pg.create_database("proj").unwrap();
    for db in ["src", "proj"] {
        psql(&pg, db, TYPES_DDL);
    }
    psql(&pg, "src", &table_ddl("t", ""));
    psql(&pg, "proj", &table_ddl("t", ", driftless_version text"));
    let rows = rows();
    assert!(rows.iter().all(|r| r.len() == COLUMNS.len()));
    // Rows 1..=4 exist before the source starts (snapshot reads).
    for (i, row) in rows.iter().enumerate() {
        psql(&pg, "src", &insert(i as i64 + 1, row));
    }

    let dir = tempfile::tempdir().unwrap();
    let lite = dir.path().join("lite.db");
    {
        let conn = rusqlite::Connection::open(&lite).unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, i8 INTEGER, n TEXT, f8 REAL, t TEXT, by BLOB,
                             b INTEGER, j TEXT, jb TEXT, driftless_version TEXT)",
        )
        .unwrap();
    }
    let cfg = config(dir.path(), &pg.url("src"), &pg.url("proj"), &lite);
    let server = ServeProcess::start_with_args(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );

    // Rows 11..=14 are streamed inserts; then every row of the first batch is updated to the
    // values of another row (streamed updates), and one is deleted.
    for (i, row) in rows.iter().enumerate() {
        psql(&pg, "src", &insert(i as i64 + 11, row));
    }
    let names: Vec<&str> = COLUMNS.iter().map(|(c, _)| *c).collect();
    for id in 1..=4 {
        let from = (id % 4) + 11;
        psql(
            &pg,
            "src",
            &format!(
                "UPDATE t SET ({cols}) = (SELECT {cols} FROM t WHERE id = {from}) WHERE id = {id}",
                cols = names.join(", ")
            ),
        );
    }
    psql(&pg, "src", "DELETE FROM t WHERE id = 14; INSERT INTO t (id) VALUES (99)");

    let want = as_text(&pg, "src", "t");
    wait_until("the Postgres projection to match", || as_text(&pg, "proj", "t") == want);
    let got = as_text(&pg, "proj", "t");
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w, g);
    }

    // SQLite: as documented in the README's value table.
    let expected_lite = |id: i64| -> Option<Vec<String>> {
        let out = psql(
            &pg,
            "src",
            &format!(
                "SELECT concat_ws('|', coalesce(i8::text, 'NULL'), coalesce(n::text, 'NULL'), coalesce(f8::text, 'NULL'), \
                 coalesce(t, 'NULL'), coalesce(encode(by, 'hex'), 'NULL'), \
                 coalesce(b::int::text, 'NULL'), coalesce(j::text, 'NULL'), \
                 coalesce(jb::text, 'NULL')) FROM t WHERE id = {id}"
            ),
        );
        let line = out.strip_suffix('\n').unwrap_or(&out);
        (!line.is_empty()).then(|| line.split('|').map(str::to_string).collect())
    };
    let read_lite = |id: i64| -> Option<Vec<String>> {
        let conn = rusqlite::Connection::open(&lite).ok()?;
        conn.query_row(
            "SELECT i8, n, f8, t, CASE WHEN by IS NULL THEN NULL ELSE hex(by) END, b, j, jb FROM t WHERE id = ?1",
            [id],
            |r| {
                let text = |i: usize| -> rusqlite::Result<String> {
                    Ok(match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => "NULL".into(),
                        rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                        rusqlite::types::ValueRef::Real(v) => format!("{v:?}"),
                        rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into(),
                        rusqlite::types::ValueRef::Blob(b) => String::from_utf8_lossy(b).into(),
                    })
                };
                (0..8).map(text).collect()
            },
        )
        .ok()
    };
    let ids = [1, 2, 3, 4, 11, 12, 13, 99];
    wait_until("the SQLite projection to hold every row", || {
        ids.iter().all(|&id| read_lite(id).is_some()) && read_lite(14).is_none()
    });
    for id in ids {
        let want = expected_lite(id).unwrap();
        let got = read_lite(id).unwrap();
        assert_eq!(got[0], want[0], "row {id} i8");
        assert_eq!(got[1], want[1], "row {id} numeric: exact text");
        if want[2] != "NULL" && !["NaN", "Infinity", "-Infinity"].contains(&want[2].as_str()) {
            let w: f64 = want[2].parse().unwrap();
            let g: f64 = got[2].parse().unwrap();
            // SQLite stores no negative zero: equal as numbers, bit for bit otherwise.
            assert!(g == w && (w == 0.0 || g.to_bits() == w.to_bits()), "row {id} f8: {g} vs {w}");
        } else {
            assert_eq!(got[2], want[2], "row {id} f8");
        }
        assert_eq!(got[3], want[3], "row {id} text");
        assert_eq!(
            got[4].to_lowercase(),
            if want[4] == "NULL" { "NULL".into() } else { want[4].clone() }.to_lowercase(),
            "row {id} bytea as BLOB"
        );
        assert_eq!(got[5], want[5], "row {id} bool");
        assert_eq!(got[6], want[6], "row {id} json text");
        assert_eq!(got[7], want[7], "row {id} jsonb text");
    }

    // Nothing went to a dead-letter queue.
    for group in ["sink-proj", "sink-lite"] {
        let (status, body) =
            http(&server.addr, "GET", &format!("/v1/groups/{group}/dlq"), "application/json", "")
                .unwrap();
        assert!(status == 200 && !body.contains("\"id\""), "{group}: {status} {body}");
    }
}

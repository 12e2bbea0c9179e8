#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `pg::types` against a real PostgreSQL: every supported type is stored, read back in its text
//! output format (the simple-query protocol returns exactly what `pgoutput` sends) and as
//! `col::text`, and converted with a catalog loaded from the server. Also checks that the
//! hard-coded built-in catalog agrees with the server's `pg_type`.

use driftless_connect::pg::types::{text_to_json, TypeCatalog, TypeKind};
use driftless_testkit::PgServer;
use serde_json::{json, Value};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// One column: name, SQL type, SQL literal, expected JSON of the output-function text, and,
/// where `col::text` differs (bool prints `true`, bpchar drops padding, inet adds the mask),
/// the expected JSON of that.
struct Case {
    column: &'static str,
    sql_type: &'static str,
    literal: &'static str,
    want: Value,
    want_cast: Option<Value>,
}

fn case(column: &'static str, sql_type: &'static str, literal: &'static str, want: Value) -> Case {
    Case { column, sql_type, literal, want, want_cast: None }
}

fn cases() -> Vec<Case> {
    vec![
        case("c_bool", "boolean", "true", json!(true)),
        case("c_bool_f", "boolean", "false", json!(false)),
        case("c_bytea", "bytea", r"'\x00ff000a'", json!("AP8ACg==")),
        case("c_bytea_empty", "bytea", "''", json!("")),
        case("c_char", "\"char\"", "'x'", json!("x")),
        case("c_name", "name", "'some_name'", json!("some_name")),
        case("c_int8", "int8", "9223372036854775807", json!(9_223_372_036_854_775_807_i64)),
        case("c_int8_min", "int8", "-9223372036854775808", json!(i64::MIN)),
        case("c_int2", "int2", "-32768", json!(-32768)),
        case("c_int4", "int4", "-2147483648", json!(-2_147_483_648_i64)),
        case(
            "c_text",
            "text",
            r#"$q$héllo "quoted", 'single' \back ✓ 🦀
second line$q$"#,
            json!("héllo \"quoted\", 'single' \\back ✓ 🦀\nsecond line"),
        ),
        case("c_oid", "oid", "4294967295", json!(4_294_967_295_u64)),
        case(
            "c_json",
            "json",
            r#"'{"b": [1, 2.5, "x"], "a": null}'"#,
            json!(r#"{"b": [1, 2.5, "x"], "a": null}"#),
        ),
        case("c_float4", "real", "'0.1'", json!(0.1)),
        case("c_float4_inf", "real", "'Infinity'", json!("Infinity")),
        case("c_float8", "float8", "'-1.5e300'", json!(-1.5e300)),
        case("c_float8_nan", "float8", "'NaN'", json!("NaN")),
        case("c_float8_ninf", "float8", "'-Infinity'", json!("-Infinity")),
        case("c_float8_third", "float8", "1.0/3", json!(1.0 / 3.0)),
        Case {
            column: "c_bpchar",
            sql_type: "char(5)",
            literal: "'ab'",
            want: json!("ab   "),
            want_cast: Some(json!("ab")),
        },
        case("c_varchar", "varchar(20)", r#"'a,b "c"'"#, json!("a,b \"c\"")),
        case("c_date", "date", "'2026-11-25'", json!("2026-11-25")),
        case("c_time", "time", "'11:56:22.5'", json!("11:56:22.5")),
        case("c_timestamp", "timestamp", "'2026-11-25 11:56:22.5'", json!("2026-11-25T11:56:22.5")),
        case(
            "c_timestamp_bc",
            "timestamp",
            "'0044-03-15 12:00 BC'",
            json!("0044-03-15 12:00:00 BC"),
        ),
        case(
            "c_tstz",
            "timestamptz",
            "'2026-11-25 06:26:22.123456+00'",
            json!("2026-11-25T11:56:22.123456+05:30"),
        ),
        // Before 1942 Asia/Kolkata is local mean time, +05:53:28: shifted to UTC.
        case(
            "c_tstz_lmt",
            "timestamptz",
            "'1800-01-01 00:00:00.25+00'",
            json!("1800-01-01T00:00:00.25+00:00"),
        ),
        case("c_tstz_inf", "timestamptz", "'infinity'", json!("infinity")),
        case(
            "c_tstz_bc",
            "timestamptz",
            "'0044-03-15 12:00:00+00 BC'",
            json!("0044-03-15 17:53:28+05:53:28 BC"),
        ),
        case("c_timetz", "timetz", "'11:56:22+05:30'", json!("11:56:22+05:30")),
        case("c_interval", "interval", "'1 day 2 hours 3.5 seconds'", json!("1 day 02:00:03.5")),
        case(
            "c_numeric",
            "numeric",
            "12345678901234567890.123456789",
            json!("12345678901234567890.123456789"),
        ),
        case("c_numeric_nan", "numeric", "'NaN'", json!("NaN")),
        case("c_numeric_scale", "numeric(10,3)", "1.5", json!("1.500")),
        case(
            "c_uuid",
            "uuid",
            "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
            json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ),
        case(
            "c_jsonb",
            "jsonb",
            r#"'{"nested": {"arr": [1, "two", null, true], "num": 12.50}, "u": "ü\u00e9\"q"}'"#,
            json!(r#"{"u": "üé\"q", "nested": {"arr": [1, "two", null, true], "num": 12.50}}"#),
        ),
        Case {
            column: "c_inet",
            sql_type: "inet",
            literal: "'10.0.0.1'",
            want: json!("10.0.0.1"),
            want_cast: Some(json!("10.0.0.1/32")),
        },
        case("c_mood", "mood", "'happy'", json!("happy")),
        case("c_posint", "posint", "42", json!(42)),
        case("c_price", "price", "19.9", json!("19.90")),
        case("c_intlist", "intlist", "'{1,2}'", json!([1, 2])),
        case("c_int2vector", "int2vector", "'1 2 3'", json!([1, 2, 3])),
        case("c_range", "int4range", "'[1,5]'", json!("[1,6)")),
        case("c_pair", "pair", "ROW(1, 'x y')", json!("(1,\"x y\")")),
        // Arrays.
        case("c_int_arr", "int4[]", "'{1,NULL,3}'", json!([1, null, 3])),
        case("c_int_empty", "int4[]", "'{}'", json!([])),
        case("c_int_2d", "int4[][]", "'{{1,2},{3,NULL}}'", json!([[1, 2], [3, null]])),
        case("c_int_3d", "int4[]", "'{{{1},{2}},{{3},{4}}}'", json!([[[1], [2]], [[3], [4]]])),
        case("c_int_bounds", "int4[]", "'[0:1]={5,6}'", json!("[0:1]={5,6}")),
        case("c_int_bounds_2d", "int4[]", "'[0:0][-1:0]={{5,6}}'", json!("[0:0][-1:0]={{5,6}}")),
        case("c_int2_arr", "int2[]", "'{-1,2}'", json!([-1, 2])),
        case(
            "c_int8_arr",
            "int8[]",
            "'{9223372036854775807,-9223372036854775808}'",
            json!([i64::MAX, i64::MIN]),
        ),
        case(
            "c_text_arr",
            "text[]",
            r#"ARRAY['a b', NULL, 'c"d', 'NULL', 'null', '', 'x\y', 'a,b', '{}', 'é', ' pad ', 'plain']"#,
            json!([
                "a b", null, "c\"d", "NULL", "null", "", "x\\y", "a,b", "{}", "é", " pad ", "plain"
            ]),
        ),
        case(
            "c_text_2d",
            "text[]",
            r#"ARRAY[ARRAY['a', '"'], ARRAY[NULL, '\']]"#,
            json!([["a", "\""], [null, "\\"]]),
        ),
        case("c_varchar_arr", "varchar[]", r#"'{"a,b"," "}'"#, json!(["a,b", " "])),
        case(
            "c_num_arr",
            "numeric[]",
            "'{1.50,NaN,-0.001,12345678901234567890.123456789}'",
            json!(["1.50", "NaN", "-0.001", "12345678901234567890.123456789"]),
        ),
        case("c_mood_arr", "mood[]", "'{happy,sad,NULL}'", json!(["happy", "sad", null])),
        case("c_posint_arr", "posint[]", "'{1,2}'", json!([1, 2])),
        case("c_bool_arr", "bool[]", "'{t,f,NULL}'", json!([true, false, null])),
        case("c_float4_arr", "real[]", "'{1.5,NaN,-Infinity}'", json!([1.5, "NaN", "-Infinity"])),
        case("c_float8_arr", "float8[]", "'{0.1,1e300}'", json!([0.1, 1e300])),
        case(
            "c_jsonb_arr",
            "jsonb[]",
            r#"ARRAY['{"a": [1, "x,y"]}'::jsonb, '"s"', NULL]"#,
            json!([r#"{"a": [1, "x,y"]}"#, r#""s""#, null]),
        ),
        case(
            "c_json_arr",
            "json[]",
            r#"ARRAY['{"k": "v"}'::json, '[]']"#,
            json!([r#"{"k": "v"}"#, "[]"]),
        ),
        case(
            "c_tstz_arr",
            "timestamptz[]",
            "ARRAY['2026-11-25 06:26:22+00'::timestamptz, 'infinity']",
            json!(["2026-11-25T11:56:22+05:30", "infinity"]),
        ),
        case(
            "c_ts_arr",
            "timestamp[]",
            "ARRAY['2026-11-25 11:56:22'::timestamp, NULL]",
            json!(["2026-11-25T11:56:22", null]),
        ),
        case("c_date_arr", "date[]", "'{2026-11-25}'", json!(["2026-11-25"])),
        case(
            "c_uuid_arr",
            "uuid[]",
            "'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'",
            json!(["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]),
        ),
        case(
            "c_bytea_arr",
            "bytea[]",
            r"ARRAY['\x00'::bytea, NULL, '']",
            json!(["AA==", null, ""]),
        ),
        case(
            "c_box_arr",
            "box[]",
            "ARRAY['(1,1),(0,0)'::box, '(2,2),(1,1)']",
            json!(["(1,1),(0,0)", "(2,2),(1,1)"]),
        ),
        case(
            "c_pair_arr",
            "pair[]",
            r#"ARRAY[ROW(1, 'a"b')::pair, NULL]"#,
            json!([r#"(1,"a""b")"#, null]),
        ),
    ]
}

async fn connect(pg: &PgServer) -> Client {
    let (client, connection) = tokio_postgres::connect(&pg.url("postgres"), NoTls).await.unwrap();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("connection error: {e}");
        }
    });
    // As the replication connection will be.
    client
        .batch_execute("SET DateStyle = 'ISO, MDY'; SET TimeZone = 'Asia/Kolkata'")
        .await
        .unwrap();
    client
}

/// Runs `sql` over the simple-query protocol and returns the first row's columns as text.
async fn simple_row(client: &Client, sql: &str) -> Vec<Option<String>> {
    for message in client.simple_query(sql).await.unwrap() {
        if let SimpleQueryMessage::Row(row) = message {
            return (0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect();
        }
    }
    panic!("no row from {sql}");
}

#[tokio::test]
async fn every_type_converts_as_specified() {
    let pg = PgServer::start().unwrap();
    let client = connect(&pg).await;
    let cases = cases();
    let columns: Vec<String> =
        cases.iter().map(|c| format!("{} {}", c.column, c.sql_type)).collect();
    let values: Vec<&str> = cases.iter().map(|c| c.literal).collect();
    client
        .batch_execute(&format!(
            "CREATE TYPE mood AS ENUM ('happy', 'sad');
             CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
             CREATE DOMAIN price AS numeric(10,2);
             CREATE DOMAIN intlist AS int4[];
             CREATE TYPE pair AS (a int4, b text);
             CREATE TABLE t (id int4 PRIMARY KEY, {});
             INSERT INTO t VALUES (1, {});",
            columns.join(", "),
            values.join(", ")
        ))
        .await
        .unwrap();

    let catalog = TypeCatalog::load(&client).await.unwrap();
    let builtin = TypeCatalog::builtin();
    let mood = simple_row(&client, "SELECT 'mood'::regtype::oid").await[0].clone().unwrap();
    let mood: u32 = mood.parse().unwrap();
    assert_eq!(catalog.get(mood).unwrap().kind, TypeKind::Enum);
    assert_eq!(catalog.name(mood), Some("mood"));

    let mut failures = Vec::new();
    for c in &cases {
        let row = simple_row(
            &client,
            &format!("SELECT {0}, {0}::text, pg_typeof({0})::oid FROM t", c.column),
        )
        .await;
        let (raw, cast) = (row[0].clone().unwrap(), row[1].clone().unwrap());
        let oid: u32 = row[2].as_deref().unwrap().parse().unwrap();
        assert!(catalog.contains(oid), "{}: oid {oid} not in catalog", c.column);

        let got = text_to_json(&catalog, oid, &raw);
        if got.as_ref() != Ok(&c.want) {
            failures.push(format!("{} output {raw:?}: got {got:?}, want {}", c.column, c.want));
        }
        let want_cast = c.want_cast.as_ref().unwrap_or(&c.want);
        let got = text_to_json(&catalog, oid, &cast);
        if got.as_ref() != Ok(want_cast) {
            failures.push(format!("{} ::text {cast:?}: got {got:?}, want {want_cast}", c.column));
        }
        // A built-in type converts the same without a database.
        if builtin.contains(oid) {
            let got = text_to_json(&builtin, oid, &raw);
            if got.as_ref() != Ok(&c.want) {
                failures.push(format!("{} builtin {raw:?}: got {got:?}", c.column));
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));

    // An unknown oid falls back to a string; malformed input is an error naming it.
    assert_eq!(text_to_json(&catalog, 4_000_000_000, "x").unwrap(), json!("x"));
    let e = text_to_json(&catalog, 1007, "{1,oops}").unwrap_err();
    assert!(e.contains("oops"), "{e}");
}

#[tokio::test]
async fn builtin_catalog_matches_pg_type() {
    let pg = PgServer::start().unwrap();
    let client = connect(&pg).await;
    let loaded = TypeCatalog::load(&client).await.unwrap();
    let builtin = TypeCatalog::builtin();
    assert!(builtin.len() >= 39, "{}", builtin.len());
    for info in builtin.iter() {
        assert_eq!(loaded.get(info.oid), Some(info), "oid {}", info.oid);
    }
    let named: &[(u32, &str)] = &[
        (16, "bool"),
        (17, "bytea"),
        (18, "char"),
        (19, "name"),
        (20, "int8"),
        (21, "int2"),
        (23, "int4"),
        (25, "text"),
        (26, "oid"),
        (114, "json"),
        (700, "float4"),
        (701, "float8"),
        (1042, "bpchar"),
        (1043, "varchar"),
        (1082, "date"),
        (1083, "time"),
        (1114, "timestamp"),
        (1184, "timestamptz"),
        (1266, "timetz"),
        (1186, "interval"),
        (1700, "numeric"),
        (2950, "uuid"),
        (3802, "jsonb"),
        (1000, "_bool"),
        (1001, "_bytea"),
        (1005, "_int2"),
        (1007, "_int4"),
        (1016, "_int8"),
        (1009, "_text"),
        (1015, "_varchar"),
        (1021, "_float4"),
        (1022, "_float8"),
        (1231, "_numeric"),
        (1115, "_timestamp"),
        (1185, "_timestamptz"),
        (1182, "_date"),
        (2951, "_uuid"),
        (199, "_json"),
        (3807, "_jsonb"),
    ];
    for &(oid, name) in named {
        assert_eq!(builtin.name(oid), Some(name), "builtin {oid}");
        assert_eq!(loaded.name(oid), Some(name), "pg_type {oid}");
    }
    // Array I/O uses the element type's delimiter; `box` is the built-in one with `;`.
    assert_eq!(loaded.get(1020).unwrap().kind, TypeKind::Array { element: 603, delimiter: ';' });
    // `point` and `name` have typelem but are fixed-length: not arrays.
    assert_eq!(loaded.get(600).unwrap().kind, TypeKind::Base);
    assert_eq!(loaded.get(19).unwrap().kind, TypeKind::Base);
}

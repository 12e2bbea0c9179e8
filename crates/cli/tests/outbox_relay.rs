#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
//! The outbox relays from the user's side: the real `driftless serve` with three outbox sources —
//! `postgres_outbox` in `mode = "cdc"` and in `mode = "poll"`, and `sqlite_outbox` — over tables
//! created with `driftless outbox init`, written to as a service does, watched through
//! `GET /v1/sources` and paused with `driftless source pause`.
//!
//! What it checks, for every mode: relayed rows leave the outbox once their events are in the
//! log (as the README promises), `outbox_backlog_rows` is 0 then, and while the relay is paused
//! it counts the rows written meanwhile.
//!
//! Invariants of the harness: every wait is bounded; the server is killed on drop.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use driftless_testkit::PgServer;
use serde_json::Value;

/// Rows written while the relay runs, then while it is paused.
const RUNNING_ROWS: usize = 3;
const PAUSED_ROWS: usize = 4;

/// Where a source's outbox lives.
enum Outbox {
    Postgres { url: String, table: &'static str },
    Sqlite { path: PathBuf },
}

impl Outbox {
    /// Rows in the outbox table.
    fn rows(&self, rt: &tokio::runtime::Runtime) -> i64 {
        match self {
            Outbox::Postgres { url, table } => rt.block_on(async {
                let client = pg(url).await;
                client
                    .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                    .await
                    .unwrap()
                    .get(0)
            }),
            Outbox::Sqlite { path } => rusqlite::Connection::open(path)
                .unwrap()
                .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
                .unwrap(),
        }
    }

    /// Inserts `n` outbox rows `<prefix>-<i>` in one transaction, as a service does.
    fn write(&self, rt: &tokio::runtime::Runtime, prefix: &str, n: usize) {
        let values: Vec<String> = (0..n)
            .map(|i| {
                format!("('{prefix}-{i}', 'customers', 'c-{i}', 'customer.created.v1', '{{}}')")
            })
            .collect();
        match self {
            Outbox::Postgres { url, table } => rt.block_on(async {
                pg(url)
                    .await
                    .batch_execute(&format!(
                        "BEGIN; INSERT INTO {table} (id, aggregatetype, aggregateid, type, \
                         payload) VALUES {}; COMMIT;",
                        values.join(", ")
                    ))
                    .await
                    .unwrap()
            }),
            Outbox::Sqlite { path } => rusqlite::Connection::open(path)
                .unwrap()
                .execute_batch(&format!(
                    "BEGIN IMMEDIATE; INSERT INTO outbox (id, aggregatetype, aggregateid, type, \
                     payload) VALUES {}; COMMIT;",
                    values.join(", ")
                ))
                .unwrap(),
        }
    }
}

async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// `driftless outbox init ARGS`, which must succeed.
fn outbox_init(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(["outbox", "init"])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "outbox init {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The source `name` as `GET /v1/sources` lists it.
fn source(server: &support::ServeProcess, name: &str) -> Value {
    let (status, body) =
        support::http(&server.addr, "GET", "/v1/sources", "application/json", "").unwrap();
    assert_eq!(status, 200, "{body}");
    let all: Value = serde_json::from_str(&body).unwrap();
    let list = all.as_array().cloned().or_else(|| all["sources"].as_array().cloned()).unwrap();
    list.into_iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no {name}: {body}"))
}

/// Events in `topic` (the sum of its partitions' end offsets).
fn events_in(server: &support::ServeProcess, topic: &str) -> u64 {
    match support::http(&server.addr, "GET", &format!("/v1/topics/{topic}"), "application/json", "")
    {
        Some((200, body)) => serde_json::from_str::<Value>(&body).unwrap()["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["end_offset"].as_u64().unwrap())
            .sum(),
        _ => 0,
    }
}

/// Waits until `check` holds, or fails with what `describe` says.
fn wait_for(what: &str, mut check: impl FnMut() -> bool, describe: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {}", describe());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn config(url: &str, sqlite: &Path) -> String {
    format!(
        "[[source]]\nname = \"pgcdc\"\nkind = \"postgres_outbox\"\nurl = \"{url}\"\n\
         mode = \"cdc\"\ntable = \"cdc.outbox\"\ntopic_prefix = \"cdc.\"\n\
         heartbeat_interval_ms = 500\n\n\
         [[source]]\nname = \"pgpoll\"\nkind = \"postgres_outbox\"\nurl = \"{url}\"\n\
         mode = \"poll\"\ntable = \"poll.outbox\"\ntopic_prefix = \"poll.\"\n\n\
         [[source]]\nname = \"lite\"\nkind = \"sqlite_outbox\"\npath = \"{}\"\n\
         topic_prefix = \"lite.\"\n",
        sqlite.display()
    )
}

/// Regression test for "outbox rows are never deleted in the default `mode = \"cdc\"` (the
/// README says they are deleted after the append); `outbox_backlog_rows` shows -1", and for a
/// paused relay whose backlog stayed at its last figure however many rows were written. In every
/// mode the relayed rows leave the outbox and the backlog reads 0; paused, it reads the rows
/// written meanwhile; resumed, they are relayed and deleted too.
#[test]
fn every_outbox_mode_deletes_relayed_rows_and_counts_its_backlog_even_paused() {
    let pg_server = PgServer::start().unwrap();
    pg_server.create_database("svc").unwrap();
    let url = pg_server.url("svc");
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("svc.db");
    outbox_init(&["--url", &url, "--table", "cdc.outbox"]);
    outbox_init(&["--url", &url, "--table", "poll.outbox"]);
    outbox_init(&["--sqlite", sqlite.to_str().unwrap()]);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let config_path = dir.path().join("driftless.toml");
    std::fs::write(&config_path, config(&url, &sqlite)).unwrap();
    let server = support::ServeProcess::start_with_args(
        &dir.path().join("data"),
        &["--config", config_path.to_str().unwrap()],
    );
    let sources = [
        ("pgcdc", "cdc.customers", Outbox::Postgres { url: url.clone(), table: "cdc.outbox" }),
        ("pgpoll", "poll.customers", Outbox::Postgres { url: url.clone(), table: "poll.outbox" }),
        ("lite", "lite.customers", Outbox::Sqlite { path: sqlite.clone() }),
    ];
    for (name, _, _) in &sources {
        wait_for(
            &format!("{name} to run"),
            || source(&server, name)["state"] == "running",
            || source(&server, name).to_string(),
        );
    }

    for (name, _, outbox) in &sources {
        outbox.write(&rt, &format!("{name}-running"), RUNNING_ROWS);
    }
    for (name, topic, outbox) in &sources {
        let described = || {
            format!(
                "{} events, {} rows in the outbox, source {}",
                events_in(&server, topic),
                outbox.rows(&rt),
                source(&server, name)
            )
        };
        wait_for(
            &format!("{name}: the rows relayed, deleted, and a backlog of 0"),
            || {
                events_in(&server, topic) == RUNNING_ROWS as u64
                    && outbox.rows(&rt) == 0
                    && source(&server, name)["outbox_backlog_rows"] == 0
            },
            described,
        );
    }

    for (name, _, _) in &sources {
        let out = server.run_cli(&["source", "pause", name], "");
        assert!(out.status.success(), "pause {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    for (name, _, outbox) in &sources {
        wait_for(
            &format!("{name} to pause"),
            || source(&server, name)["state"] == "paused",
            || source(&server, name).to_string(),
        );
        outbox.write(&rt, &format!("{name}-paused"), PAUSED_ROWS);
    }
    for (name, topic, outbox) in &sources {
        wait_for(
            &format!("{name}: a backlog of {PAUSED_ROWS} while paused"),
            || source(&server, name)["outbox_backlog_rows"] == PAUSED_ROWS as i64,
            || format!("{}, {} rows", source(&server, name), outbox.rows(&rt)),
        );
        assert_eq!(events_in(&server, topic), RUNNING_ROWS as u64, "{name} relayed while paused");
    }

    for (name, _, _) in &sources {
        let out = server.run_cli(&["source", "resume", name], "");
        assert!(out.status.success(), "resume {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let all = (RUNNING_ROWS + PAUSED_ROWS) as u64;
    for (name, topic, outbox) in &sources {
        wait_for(
            &format!("{name}: every row relayed and deleted after the resume"),
            || {
                events_in(&server, topic) == all
                    && outbox.rows(&rt) == 0
                    && source(&server, name)["outbox_backlog_rows"] == 0
                    && source(&server, name)["state"] == "running"
            },
            || format!("{} events, source {}", events_in(&server, topic), source(&server, name)),
        );
    }
}

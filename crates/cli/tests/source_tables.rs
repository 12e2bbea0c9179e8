#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
//! Tables added to a CDC source that already streams, from the user's side: the real
//! `driftless serve` with a `postgres_cdc` source over a real PostgreSQL, its config edited
//! between two runs, the topics read back with `driftless consume` and the snapshot followed with
//! `driftless source progress`.
//!
//! Invariants of the harness: every wait is bounded; the server is killed on drop; each read of a
//! topic uses a new consumer group, so it sees the topic from its start.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use driftless_testkit::PgServer;
use serde_json::Value;

/// The topics of the two tables (`{database}.{schema}.{table}`).
const TOPIC_A: &str = "app.public.a";
const TOPIC_EXTRA: &str = "app.public.extra";

/// A test's PostgreSQL connection, driven by its own small runtime.
struct Db {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Db {
    fn connect(url: &str) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            c
        });
        Self { rt, client }
    }

    fn run(&self, sql: &str) {
        self.rt.block_on(self.client.batch_execute(sql)).unwrap();
    }
}

/// The `[[source]]` config of a CDC source `app` over `tables`, reading 2 rows per chunk.
fn write_config(path: &Path, url: &str, tables: &[&str], snapshot: &str) {
    write_config_chunked(path, url, tables, snapshot, 2);
}

/// [`write_config`] with `chunk_rows` rows per snapshot chunk.
fn write_config_chunked(path: &Path, url: &str, tables: &[&str], snapshot: &str, chunk_rows: u32) {
    let tables = tables.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ");
    std::fs::write(
        path,
        format!(
            "[[source]]\nname = \"app\"\nkind = \"postgres_cdc\"\nurl = \"{url}\"\n\
             tables = [{tables}]\nsnapshot = \"{snapshot}\"\nsnapshot_chunk_rows = {chunk_rows}\n\
             heartbeat_interval_ms = 500\n"
        ),
    )
    .unwrap();
}

/// `GET /v1/sources/app`.
fn source(server: &support::ServeProcess) -> Value {
    let (status, body) =
        support::http(&server.addr, "GET", "/v1/sources/app", "application/json", "").unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Every event of `topic`, read with `driftless consume` by a new group.
fn consume(server: &support::ServeProcess, topic: &str) -> Vec<Value> {
    static GROUP: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let group = format!("reader-{}", GROUP.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let out = server.run_cli(&["consume", topic, "--group", &group, "--wait-ms", "300"], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("does not exist") {
        return Vec::new();
    }
    assert!(out.status.success(), "consume {topic}: {stderr}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line).unwrap();
            // `consume` prints the event itself, or a record wrapping it.
            record.get("event").cloned().unwrap_or(record)
        })
        .collect()
}

/// Waits until `topic` holds `n` events (or more), and returns them.
fn wait_events(server: &support::ServeProcess, topic: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = consume(server, topic);
        if events.len() >= n {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: {} events, expected {n}; source {}; events {events:#?}",
            events.len(),
            source(server)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the source is running (its snapshot, if any, done).
fn wait_running(server: &support::ServeProcess) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = source(server);
        if s["state"] == "running" {
            return;
        }
        assert!(Instant::now() < deadline, "the source never ran: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `(op, id, v)` of each event, in log order per partition (sorted for comparison).
fn changes(events: &[Value]) -> Vec<(String, i64, String)> {
    let mut out: Vec<(String, i64, String)> = events
        .iter()
        .map(|e| {
            let data = &e["data"];
            let row = if data["after"].is_null() { &data["before"] } else { &data["after"] };
            (
                data["op"].as_str().unwrap().to_string(),
                row["id"].as_i64().unwrap(),
                row["v"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Ids appearing more than once.
fn twice(events: &[Value]) -> Vec<String> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for e in events {
        *seen.entry(e["id"].as_str().unwrap()).or_default() += 1;
    }
    seen.into_iter().filter(|(_, n)| *n > 1).map(|(id, _)| id.to_string()).collect()
}

/// Regression test for "a table added to an existing CDC source never gets its existing rows":
/// after `public.extra` (3 rows) was added to `tables` and the server restarted, only later
/// inserts flowed and nothing warned. Now the added table is snapshotted while the source
/// streams, as the initial snapshot is: its 3 rows arrive as `read` events, then its changes;
/// `public.a` loses and repeats nothing, including the row written while the server was down.
#[test]
fn a_table_added_to_a_running_cdc_source_gets_its_existing_rows() {
    let pg = PgServer::start().unwrap();
    pg.create_database("app").unwrap();
    let url = pg.url("app");
    let db = Db::connect(&url);
    db.run(
        "CREATE TABLE a (id int PRIMARY KEY, v text);
         CREATE TABLE extra (id int PRIMARY KEY, v text);
         INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 5) g;
         INSERT INTO extra VALUES (1, 'old1'), (2, 'old2'), (3, 'old3');",
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("driftless.toml");
    let config_arg = config.to_str().unwrap().to_string();

    // First run: only `public.a`.
    write_config(&config, &url, &["public.a"], "initial");
    let server = support::ServeProcess::start_with_args(&data, &["--config", &config_arg]);
    wait_running(&server);
    db.run("INSERT INTO a VALUES (6, 'a6'); UPDATE extra SET v = 'old3b' WHERE id = 3;");
    wait_events(&server, TOPIC_A, 6);
    assert!(consume(&server, TOPIC_EXTRA).is_empty(), "extra is not captured yet");
    let status = server.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "serve did not stop cleanly: {status:?}");

    // While it is down: a change to each table.
    db.run("INSERT INTO a VALUES (7, 'a7'); UPDATE extra SET v = 'old2b' WHERE id = 2;");

    // Second run: `public.extra` added.
    write_config(&config, &url, &["public.a", "public.extra"], "initial");
    let server = support::ServeProcess::start_with_args(&data, &["--config", &config_arg]);
    let extra = wait_events(&server, TOPIC_EXTRA, 3);
    wait_running(&server);
    let expected_reads = vec![
        ("read".to_string(), 1, "old1".to_string()),
        ("read".to_string(), 2, "old2b".to_string()),
        ("read".to_string(), 3, "old3b".to_string()),
    ];
    assert_eq!(changes(&extra), expected_reads, "{extra:#?}");
    assert!(extra.iter().all(|e| e["type"] == "public.extra.read"), "{extra:#?}");

    // `source progress` shows the added table's snapshot, finished.
    let out = server.run_cli(&["source", "progress", "app", "--once"], "");
    let progress = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{progress}");
    assert!(progress.contains("3/3 rows (100%) — running"), "{progress:?}");

    // Later changes to both tables flow.
    db.run("INSERT INTO extra VALUES (4, 'new4'); UPDATE extra SET v = 'new1' WHERE id = 1;");
    db.run("INSERT INTO a VALUES (8, 'a8');");
    let extra = wait_events(&server, TOPIC_EXTRA, 5);
    let a = wait_events(&server, TOPIC_A, 8);
    std::thread::sleep(Duration::from_secs(1));
    let extra_again = consume(&server, TOPIC_EXTRA);
    let a_again = consume(&server, TOPIC_A);
    assert_eq!(extra_again.len(), extra.len(), "{extra_again:#?}");
    assert_eq!(a_again.len(), a.len(), "{a_again:#?}");
    let mut expected_extra = expected_reads.clone();
    expected_extra.push(("insert".into(), 4, "new4".into()));
    expected_extra.push(("update".into(), 1, "new1".into()));
    expected_extra.sort();
    assert_eq!(changes(&extra), expected_extra, "{extra:#?}");
    let expected_a: Vec<(String, i64, String)> = (1..=8)
        .map(|i| (if i <= 5 { "read" } else { "insert" }.to_string(), i, format!("a{i}")))
        .collect();
    let mut expected_a = expected_a;
    expected_a.sort();
    assert_eq!(changes(&a), expected_a, "public.a lost or repeated a change: {a:#?}");
    assert!(twice(&a).is_empty() && twice(&extra).is_empty());
    assert_eq!(source(&server)["state"], "running");
}

/// With `snapshot = "never"`, an added table is not read (its changes flow from the restart on),
/// and the source keeps running: the operator chose to stream changes only.
#[test]
fn a_table_added_with_snapshot_never_streams_its_changes_only() {
    let pg = PgServer::start().unwrap();
    pg.create_database("app").unwrap();
    let url = pg.url("app");
    let db = Db::connect(&url);
    db.run(
        "CREATE TABLE a (id int PRIMARY KEY, v text);
         CREATE TABLE extra (id int PRIMARY KEY, v text);
         INSERT INTO extra VALUES (1, 'old1'), (2, 'old2'), (3, 'old3');",
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("driftless.toml");
    let config_arg = config.to_str().unwrap().to_string();
    write_config(&config, &url, &["public.a"], "never");
    let server = support::ServeProcess::start_with_args(&data, &["--config", &config_arg]);
    wait_running(&server);
    drop(server);
    write_config(&config, &url, &["public.a", "public.extra"], "never");
    let server = support::ServeProcess::start_with_args(&data, &["--config", &config_arg]);
    wait_running(&server);
    db.run("INSERT INTO extra VALUES (4, 'new4');");
    wait_events(&server, TOPIC_EXTRA, 1);
    std::thread::sleep(Duration::from_secs(1));
    let extra = consume(&server, TOPIC_EXTRA);
    assert_eq!(changes(&extra), vec![("insert".to_string(), 4, "new4".to_string())]);
}

/// A table removed from `tables` stops emitting at once: a change made to it while the server
/// was down, still in the slot from before the publication dropped it, is not emitted either
/// (Postgres decodes it with the publication as it was then).
#[test]
fn a_table_removed_from_a_cdc_source_emits_nothing_more() {
    let pg = PgServer::start().unwrap();
    pg.create_database("app").unwrap();
    let url = pg.url("app");
    let db = Db::connect(&url);
    db.run(
        "CREATE TABLE a (id int PRIMARY KEY, v text);
         CREATE TABLE extra (id int PRIMARY KEY, v text);
         INSERT INTO a VALUES (1, 'a1'); INSERT INTO extra VALUES (1, 'old1');",
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("driftless.toml");
    let config_arg = config.to_str().unwrap().to_string();
    write_config(&config, &url, &["public.a", "public.extra"], "initial");
    let server = support::ServeProcess::start_with_args(&data, &["--config", &config_arg]);
    wait_running(&server);
    wait_events(&server, TOPIC_EXTRA, 1);
    let status = server.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "serve did not stop cleanly: {status:?}");

    // While it is down, before the restart removes `extra` from the publication.
    db.run("INSERT INTO extra VALUES (2, 'while down'); INSERT INTO a VALUES (2, 'a2');");
    write_config(&config, &url, &["public.a"], "initial");
    let server = support::ServeProcess::start_with_args(&data, &["--config", &config_arg]);
    wait_running(&server);
    db.run("INSERT INTO extra VALUES (3, 'after'); INSERT INTO a VALUES (3, 'a3');");
    wait_events(&server, TOPIC_A, 3);
    std::thread::sleep(Duration::from_secs(1));
    let extra = consume(&server, TOPIC_EXTRA);
    assert_eq!(
        changes(&extra),
        vec![("read".to_string(), 1, "old1".to_string())],
        "the removed table still emitted: {extra:#?}"
    );
}

/// Events in `topic` (the sum of its partitions' end offsets; 0 before it exists).
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

/// The added table's snapshot survives a SIGKILL of the server in its middle: after the restart
/// it resumes after its last durable chunk (at most that chunk is read twice), every row arrives,
/// and the table captured from the start is neither re-read nor missing a change.
#[test]
fn an_added_tables_snapshot_resumes_after_a_kill_in_its_middle() {
    const ROWS: u64 = 40_000;
    const CHUNK_ROWS: u32 = 500;
    let pg = PgServer::start().unwrap();
    pg.create_database("app").unwrap();
    let url = pg.url("app");
    let db = Db::connect(&url);
    db.run(&format!(
        "CREATE TABLE a (id int PRIMARY KEY, v text);
         CREATE TABLE extra (id int PRIMARY KEY, v text);
         INSERT INTO a VALUES (1, 'a1');
         INSERT INTO extra SELECT g, 'old' || g FROM generate_series(1, {ROWS}) g;"
    ));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("driftless.toml");
    let config_arg = config.to_str().unwrap().to_string();
    write_config_chunked(&config, &url, &["public.a"], "initial", CHUNK_ROWS);
    let server = support::ServeProcess::start_with_args(&data, &["--config", &config_arg]);
    wait_running(&server);
    wait_events(&server, TOPIC_A, 1);
    drop(server); // SIGKILL

    write_config_chunked(&config, &url, &["public.a", "public.extra"], "initial", CHUNK_ROWS);
    let server = support::ServeProcess::start_with_args(&data, &["--config", &config_arg]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let done_at_kill = loop {
        let s = source(&server);
        let done = s["snapshot_rows_done"].as_u64().unwrap_or(0);
        if s["state"] == "snapshotting" && done >= 2 * u64::from(CHUNK_ROWS) {
            break done;
        }
        assert!(s["state"] != "running" || done == 0, "finished before the kill: {s}");
        assert!(Instant::now() < deadline, "the added snapshot never got going: {s}");
        std::thread::sleep(Duration::from_millis(10));
    };
    server.kill();
    assert!(done_at_kill < ROWS, "the snapshot finished before the kill");
    db.run("INSERT INTO a VALUES (2, 'a2'); UPDATE extra SET v = 'changed' WHERE id = 1;");

    let server = support::ServeProcess::start_with_args(&data, &["--config", &config_arg]);
    let deadline = Instant::now() + Duration::from_secs(180);
    while source(&server)["state"] != "running" || events_in(&server, TOPIC_EXTRA) < ROWS {
        assert!(Instant::now() < deadline, "never resumed: {}", source(&server));
        std::thread::sleep(Duration::from_millis(100));
    }
    db.run("INSERT INTO extra VALUES (0, 'new');");
    let extra = wait_events(&server, TOPIC_EXTRA, ROWS as usize + 2);
    let reads = extra.iter().filter(|e| e["data"]["op"] == "read").count();
    assert!(
        reads <= ROWS as usize + CHUNK_ROWS as usize,
        "{reads} reads of {ROWS} rows (killed at {done_at_kill}): the snapshot started over"
    );
    // Every row arrived, and the newest event of each key is the table's row.
    let mut newest: BTreeMap<i64, (String, String)> = BTreeMap::new();
    for e in &extra {
        let after = &e["data"]["after"];
        let sequence = e["sequence"].as_str().unwrap().to_string();
        let id = after["id"].as_i64().unwrap();
        let v = after["v"].as_str().unwrap().to_string();
        if newest.get(&id).is_none_or(|(s, _)| *s < sequence) {
            newest.insert(id, (sequence, v));
        }
    }
    assert_eq!(newest.len(), ROWS as usize + 1, "rows missing from the added table's topic");
    assert_eq!(newest[&1].1, "changed");
    assert_eq!(newest[&0].1, "new");
    assert_eq!(newest[&(ROWS as i64)].1, format!("old{ROWS}"));
    let a = wait_events(&server, TOPIC_A, 2);
    assert_eq!(
        changes(&a),
        vec![
            ("insert".to_string(), 2, "a2".to_string()),
            ("read".to_string(), 1, "a1".to_string())
        ]
    );
}

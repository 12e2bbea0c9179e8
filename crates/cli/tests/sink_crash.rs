//! Crash test of a sink: 100,000 events (upserts and deletes over 5,000 keys) are applied to a
//! Postgres projection by `driftless serve` while the process dies 20 times — half of them by
//! SIGKILL at a random moment, half by the `sink.after_apply` failpoint, which aborts the
//! process after a batch committed in Postgres and before its deliveries were acknowledged (the
//! window where a sink without a version guard would apply events twice).
//!
//! What it proves: after the crashes, the projection's content hash equals that of a clean single
//! pass (a second sink, never crashed, over the same topic) and the history's final state; no
//! event went to the dead-letter queue.
//!
//! Invariants of the harness: every wait is bounded; every child is killed on drop or by the
//! end of its cycle; only loopback addresses are used.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use driftless_testkit::PgServer;
use rand::Rng;
use serde_json::{json, Value};
use support::{free_port, http, spawn_serve, ServeProcess};

const EVENTS: usize = 100_000;
const KEYS: usize = 5_000;
const CYCLES: usize = 20;
const BATCH: usize = 1_000;

fn config(dir: &Path, url: &str, paused: bool, with_clean: bool) -> std::path::PathBuf {
    // Small batches for the crashed sink, so the crashes land while it still has work.
    let sink = |name: &str, table: &str, paused: bool, batch: usize| {
        format!(
            r#"
            [[sink]]
            name = "{name}"
            topics = ["customers"]
            batch_events_max = {batch}
            paused = {paused}
            target = {{ kind = "postgres", url = "{url}" }}
            [[sink.mapping]]
            types = ["customer.upserted"]
            table = "{table}"
            key = ["id"]
            columns = {{ id = ".subject", city = ".data.city", n = ".data.n" }}
            [[sink.mapping]]
            types = ["customer.deleted"]
            table = "{table}"
            key = ["id"]
            op = "delete"
            "#
        )
    };
    let mut text = sink("proj", "contacts", paused, 50);
    if with_clean {
        text.push_str(&sink("clean", "contacts_clean", false, 500));
    }
    let path = dir.join(format!("config-{paused}-{with_clean}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Key → final (city, n), `None` when deleted.
type Model = BTreeMap<String, Option<(String, i64)>>;

/// The events, and the final state per key they leave.
fn history() -> (Vec<Value>, Model) {
    let mut events = Vec::new();
    let mut model = BTreeMap::new();
    let mut rng = rand::rng();
    for i in 0..EVENTS {
        let key = format!("c{:05}", rng.random_range(0..KEYS));
        if rng.random_bool(0.1) {
            events.push(json!({"specversion": "1.0", "id": format!("e{i}"), "source": "/crash",
                "type": "customer.deleted", "subject": key, "data": {}}));
            model.insert(key, None);
        } else {
            let city = format!("city-{i}");
            events.push(json!({"specversion": "1.0", "id": format!("e{i}"), "source": "/crash",
                "type": "customer.upserted", "subject": key, "data": {"city": city, "n": i}}));
            model.insert(key, Some((city, i as i64)));
        }
    }
    (events, model)
}

fn lag(addr: &str, group: &str) -> Option<u64> {
    let (status, body) = http(addr, "GET", &format!("/v1/groups/{group}"), "application/json", "")?;
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    let parts = v["partitions"].as_array()?;
    if parts.is_empty() {
        return None;
    }
    Some(parts.iter().map(|p| p["lag_events"].as_u64().unwrap_or(u64::MAX)).sum())
}

fn psql(pg: &PgServer, sql: &str) -> String {
    pg.psql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn table_hash(pg: &PgServer, table: &str) -> String {
    psql(
        pg,
        &format!(
            "SELECT count(*) || ':' || coalesce(md5(string_agg(id || '|' || coalesce(city, '') || \
             '|' || coalesce(n::text, '') || '|' || driftless_version, ',' ORDER BY id)), '') \
             FROM {table}"
        ),
    )
}

#[test]
fn a_sink_killed_20_times_leaves_the_projection_of_a_clean_single_pass() {
    let pg = PgServer::start().unwrap();
    for table in ["contacts", "contacts_clean"] {
        psql(
            &pg,
            &format!(
                "CREATE TABLE {table} (id text PRIMARY KEY, city text, n bigint, \
                 driftless_version text)"
            ),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let url = pg.url("postgres");
    let (events, model) = history();

    // Load the topic with the sink paused.
    {
        let cfg = config(dir.path(), &url, true, false);
        let server = ServeProcess::start_with_args(&data, &["--config", cfg.to_str().unwrap()]);
        let created = http(
            &server.addr,
            "POST",
            "/v1/topics",
            "application/json",
            r#"{"name": "customers", "partitions": 4}"#,
        )
        .unwrap();
        assert_eq!(created.0, 201, "{}", created.1);
        for chunk in events.chunks(BATCH) {
            let body = Value::Array(chunk.to_vec()).to_string();
            let r = http(
                &server.addr,
                "POST",
                "/v1/topics/customers/events",
                "application/cloudevents-batch+json",
                &body,
            )
            .unwrap();
            assert_eq!(r.0, 200, "{}", r.1);
        }
        server.kill();
    }

    // Crash the sink, 20 times.
    let cfg = config(dir.path(), &url, false, false);
    let (mut killed, mut aborted) = (0, 0);
    let mut rng = rand::rng();
    for cycle in 0..CYCLES {
        let addr = format!("127.0.0.1:{}", free_port());
        let failpoint = cycle % 2 == 0;
        let env: &[(&str, &str)] =
            if failpoint { &[("DRIFTLESS_FAILPOINTS", "sink.after_apply=0.02")] } else { &[] };
        let mut child = spawn_serve(&addr, &data, &["--config", cfg.to_str().unwrap()], env);
        let deadline = Instant::now()
            + if failpoint {
                Duration::from_secs(20)
            } else {
                Duration::from_millis(rng.random_range(300..2_000))
            };
        let exited = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        match exited {
            Some(status) => {
                assert_eq!(status.signal(), Some(libc_sigabrt()), "only the failpoint may end it");
                aborted += 1;
            }
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
                killed += 1;
            }
        }
    }
    assert_eq!(killed + aborted, CYCLES);
    assert!(aborted >= 1, "the failpoint between apply and acknowledgement never fired");
    let mid = table_hash(&pg, "contacts");
    let mid_rows: usize = mid.split(':').next().unwrap().parse().unwrap();

    // Recover, and make the clean single pass beside it.
    let cfg = config(dir.path(), &url, false, true);
    let server = ServeProcess::start_with_args(&data, &["--config", cfg.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(600);
    while lag(&server.addr, "sink-proj") != Some(0) || lag(&server.addr, "sink-clean") != Some(0) {
        assert!(Instant::now() < deadline, "the sinks did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }
    for group in ["sink-proj", "sink-clean"] {
        let (_, body) =
            http(&server.addr, "GET", &format!("/v1/groups/{group}/dlq"), "application/json", "")
                .unwrap();
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!([]), "{group}");
    }
    let crashed = table_hash(&pg, "contacts");
    let clean = table_hash(&pg, "contacts_clean");
    assert_eq!(crashed, clean, "the crashed projection differs from a clean pass");
    let expected = model.values().filter(|v| v.is_some()).count();
    assert!(crashed.starts_with(&format!("{expected}:")), "{crashed} vs {expected} rows");
    let rows = psql(&pg, "SELECT id || '|' || city || '|' || n FROM contacts ORDER BY id");
    let want: Vec<String> =
        model.iter().filter_map(|(k, v)| v.as_ref().map(|(c, n)| format!("{k}|{c}|{n}"))).collect();
    let got: Vec<&str> = rows.lines().collect();
    assert_eq!(got, want, "the projection is the history's final state");
    eprintln!("{killed} SIGKILLs, {aborted} failpoint aborts; {mid_rows} rows before recovery");
}

/// SIGABRT's number (6 on Linux).
fn libc_sigabrt() -> i32 {
    6
}

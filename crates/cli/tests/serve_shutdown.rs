//! `driftless serve` stops within its grace period whatever it is doing (issue 20: SIGTERM during
//! a sink rebuild never exited, 4 of 4 runs, still running after the 10 s grace).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{http, ServeProcess};

const EVENTS: usize = 40_000;

fn sigterm_and_wait(server: &mut ServeProcess, within: Duration) -> std::process::ExitStatus {
    let killed = Command::new("kill").args(["-TERM", &server.pid().to_string()]).status().unwrap();
    assert!(killed.success());
    let start = Instant::now();
    loop {
        if let Some(status) = server.child().try_wait().unwrap() {
            eprintln!("stopped {:?} after SIGTERM", start.elapsed());
            return status;
        }
        assert!(start.elapsed() < within, "still running {within:?} after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_during_a_sink_rebuild_exits_within_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("proj.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TABLE contacts (id TEXT PRIMARY KEY, n INTEGER, driftless_version TEXT)",
        )
        .unwrap();
    let config = dir.path().join("driftless.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [server]
            shutdown_grace_ms = 5000
            [[sink]]
            name = "proj"
            topics = ["customers"]
            batch_events_max = 50
            target = {{ kind = "sqlite", path = "{}" }}
            [[sink.mapping]]
            types = ["customer.upserted"]
            table = "contacts"
            key = ["id"]
            columns = {{ id = ".subject", n = ".data.n" }}
            "#,
            db.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let mut server = ServeProcess::start_with_args(&data, &["--config", config.to_str().unwrap()]);
    let addr = server.addr.clone();
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/topics",
        "application/json",
        r#"{"name":"customers","partitions":4}"#,
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    for chunk in 0..EVENTS / 1_000 {
        let events: Vec<_> = (0..1_000)
            .map(|i| {
                let n = chunk * 1_000 + i;
                json!({"specversion": "1.0", "id": format!("e-{n}"), "source": "/t",
                       "type": "customer.upserted", "subject": format!("k{}", n % 5_000),
                       "data": {"n": n}})
            })
            .collect();
        let (status, body) = http(
            &addr,
            "POST",
            "/v1/topics/customers/events",
            "application/cloudevents-batch+json",
            &json!(events).to_string(),
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
    }
    // The live sink idle first: SQLite allows one writer, and the shadows are created in the
    // same database.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, body) = http(&addr, "GET", "/v1/sinks/proj", "application/json", "").unwrap();
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        if report["events_applied_total"].as_u64() == Some(EVENTS as u64) {
            break;
        }
        assert!(Instant::now() < deadline, "the live sink did not catch up: {report}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) =
        http(&addr, "POST", "/v1/sinks/proj/rebuild", "application/json", "").unwrap();
    assert_eq!(status, 202, "{body}");
    // Into the rebuild (replaying, or waiting for the live sink to pause before the swap).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = http(&addr, "GET", "/v1/sinks/proj", "application/json", "").unwrap();
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        if report["rebuild"]["events_replayed"].as_u64().unwrap_or(0) >= 500 {
            let phase = report["rebuild"]["phase"].as_str().unwrap_or_default();
            assert!(matches!(phase, "replaying" | "swapping"), "{report}");
            break;
        }
        assert!(Instant::now() < deadline, "the rebuild did not progress: {report}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The grace period is 5 s; allow 3 s more for the process to tear down.
    let exit = sigterm_and_wait(&mut server, Duration::from_secs(8));
    assert_eq!(exit.code(), Some(0), "graceful shutdown exits 0");
}

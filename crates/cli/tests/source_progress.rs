#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
//! `driftless source progress` against the real `driftless serve` with a `postgres_cdc` source
//! over a real PostgreSQL table: the command follows the initial snapshot from a source that is
//! still starting to its end, prints the bar on stderr and exits 0.
//!
//! Invariants of the harness: the source is held in state `starting` by a table lock the test
//! owns, so the command certainly starts before the snapshot; every wait is bounded; the server
//! and the command are killed on drop or on failure.

mod support;

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use driftless_testkit::PgServer;
use serde_json::Value;

const ROWS: u64 = 3_000;

/// `GET /v1/sources/app`.
fn source(server: &support::ServeProcess) -> Value {
    let (status, body) =
        support::http(&server.addr, "GET", "/v1/sources/app", "application/json", "").unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// `driftless source progress app ARGS` against `server`, with stderr piped.
fn progress(server: &support::ServeProcess, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_driftless"));
    cmd.args(["source", "progress", "app", "--server", &server.base])
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Kills the child on drop (a failed assertion leaves no process behind).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Regression test for "`source progress` reports no snapshot for a source that is still
/// starting": it used to print `no snapshot (state starting)` and exit before the source had
/// planned its snapshot, so run right after `driftless serve` it showed nothing.
#[test]
fn progress_waits_for_a_starting_source_then_follows_its_snapshot_to_the_end() {
    let pg = PgServer::start().unwrap();
    pg.create_database("app").unwrap();
    let url = pg.url("app");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let admin = rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        c.batch_execute(&format!(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, {ROWS}) g;"
        ))
        .await
        .unwrap();
        c.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").await.unwrap();
        c
    });

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("driftless.toml");
    std::fs::write(
        &config,
        format!(
            "[[source]]\nname = \"app\"\nkind = \"postgres_cdc\"\nurl = \"{url}\"\n\
             tables = [\"public.t\"]\nsnapshot_chunk_rows = 100\n"
        ),
    )
    .unwrap();
    let server = support::ServeProcess::start_with_args(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    // The lock holds the source in setup (its publication and row count wait for it).
    assert_eq!(source(&server)["state"], "starting");

    let mut child = Reaped(progress(&server, &[]).spawn().unwrap());
    let stderr = Arc::new(Mutex::new(String::new()));
    let reader = {
        let mut pipe = child.0.stderr.take().unwrap();
        let stderr = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                stderr.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stderr.lock().unwrap().contains("app: waiting for the source to start") {
        if let Some(status) = child.0.try_wait().unwrap() {
            reader.join().unwrap();
            panic!(
                "`source progress` ended ({status}) while the source was starting: {:?}",
                stderr.lock().unwrap()
            );
        }
        assert!(Instant::now() < deadline, "no output: {:?}", stderr.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(source(&server)["state"], "starting", "the source got past the lock");
    rt.block_on(admin.batch_execute("COMMIT")).unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "`source progress` never ended: {:?}, source {}",
            stderr.lock().unwrap(),
            source(&server)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    reader.join().unwrap();
    let out = stderr.lock().unwrap().clone();
    assert!(status.success(), "exit {status}: {out:?}");
    let bar = format!("app: snapshot [{}] {ROWS}/{ROWS} rows (100%) — running\n", "#".repeat(30));
    assert!(out.ends_with(&bar), "{out:?}");
    let report = source(&server);
    assert_eq!(
        (report["state"].as_str(), report["snapshot_rows_done"].as_u64()),
        (Some("running"), Some(ROWS))
    );

    // Once the snapshot is done, the command prints the finished bar and exits at once.
    for args in [&[][..], &["--once"][..]] {
        let Output { status, stderr, .. } = progress(&server, args).output().unwrap();
        let out = String::from_utf8(stderr).unwrap();
        assert!(status.success(), "{args:?}: exit {status}: {out:?}");
        assert_eq!(out, format!("\r{bar}"), "{args:?}");
    }
}

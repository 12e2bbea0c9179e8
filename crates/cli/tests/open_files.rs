//! `driftless serve` under the usual soft open-file limit of 1,024 (issue 20, hole 6): the
//! server raises the soft limit to the hard limit at start, so neither many partitions nor many
//! idle connections run it out of file descriptors. The server runs under
//! `prlimit --nofile=1024:<hard>` (util-linux), as a login shell would start it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{free_port, http};

/// `driftless serve` under a soft open-file limit of 1,024; killed on drop.
struct Limited {
    child: Child,
    addr: String,
}

impl Limited {
    fn start(data_dir: &Path) -> Self {
        let limit = driftless_server::open_files::raise_open_files_limit();
        let hard =
            if limit.hard == u64::MAX { "unlimited".to_string() } else { limit.hard.to_string() };
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prlimit")
            .arg(format!("--nofile=1024:{hard}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_driftless"))
            .args(["serve", "--listen", &addr, "--data-dir"])
            .arg(data_dir)
            .env_remove("DRIFTLESS_CONFIG")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("prlimit (util-linux) runs the server under a soft limit of 1,024");
        let mut server = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("driftless serve exited at start under a soft limit of 1,024: {status}");
            }
            if http(&server.addr, "GET", "/healthz", "text/plain", "").is_some_and(|r| r.0 == 200) {
                return server;
            }
            assert!(Instant::now() < deadline, "driftless serve never became healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "driftless serve did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `GET /healthz` on a fresh connection; how long the whole answer took.
fn healthz(addr: &str) -> Duration {
    let start = Instant::now();
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("ok"), "{text}");
    start.elapsed()
}

#[test]
fn two_thousand_idle_connections_under_a_soft_limit_of_1024_do_not_stop_healthz() {
    let limit = driftless_server::open_files::raise_open_files_limit();
    assert!(limit.soft >= 3_000, "this test holds 2,000 sockets: {limit:?}");
    let dir = tempfile::tempdir().unwrap();
    let server = Limited::start(dir.path());
    let idle: Vec<TcpStream> =
        (0..2_000).map(|_| TcpStream::connect(&server.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500)); // the server has accepted them
    for _ in 0..5 {
        let took = healthz(&server.addr);
        assert!(took < Duration::from_millis(100), "/healthz took {took:?}");
    }
    drop(idle);
    server.stop();
}

fn post(addr: &str, path: &str, content_type: &str, body: &Value) -> Value {
    let (status, text) = http(addr, "POST", path, content_type, &body.to_string()).unwrap();
    assert!((200..300).contains(&status), "POST {path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Needs the log's cache of open partition files (issue 20, helper A1's part of hole 6): with
/// a hard limit of 20,000 on this machine, 20,000 partitions cannot each keep files open.
#[test]
fn twenty_thousand_partitions_restart_under_a_soft_limit_of_1024() {
    const TOPICS: usize = 20;
    const PARTITIONS: usize = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let server = Limited::start(dir.path());
    for t in 0..TOPICS {
        let spec = json!({"name": format!("wide-{t:02}"), "partitions": PARTITIONS});
        post(&server.addr, "/v1/topics", "application/json", &spec);
    }
    server.stop();

    let server = Limited::start(dir.path());
    let (status, text) = http(&server.addr, "GET", "/v1/topics", "application/json", "").unwrap();
    assert_eq!(status, 200, "{text}");
    let topics: Value = serde_json::from_str(&text).unwrap();
    let partitions: usize =
        topics.as_array().unwrap().iter().map(|t| t["partitions"].as_array().unwrap().len()).sum();
    assert!(partitions >= TOPICS * PARTITIONS, "{partitions} partitions after the restart");
    // Produce and fetch on several partitions of several topics.
    for t in [0, 9, 19] {
        let topic = format!("wide-{t:02}");
        let events: Vec<Value> = (0..40)
            .map(|i| {
                json!({"specversion": "1.0", "id": format!("{topic}-{i}"), "source": "/t",
                       "type": "t", "subject": format!("key-{i}"), "data": i})
            })
            .collect();
        let produced = post(
            &server.addr,
            &format!("/v1/topics/{topic}/events"),
            "application/cloudevents-batch+json",
            &json!(events),
        );
        let mut used: Vec<u64> = produced["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["partition"].as_u64().unwrap())
            .collect();
        used.sort_unstable();
        used.dedup();
        assert!(used.len() >= 10, "40 keys landed on {} partitions", used.len());
        let joined = post(
            &server.addr,
            &format!("/v1/groups/g-{t}/members"),
            "application/json",
            &json!({"topics": [topic]}),
        );
        let member = joined["member_id"].as_str().unwrap().to_string();
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while got < 40 {
            let (status, text) = http(
                &server.addr,
                "GET",
                &format!("/v1/groups/g-{t}/members/{member}/events?max=100&wait_ms=1000"),
                "application/json",
                "",
            )
            .unwrap();
            assert_eq!(status, 200, "{text}");
            let fetched: Value = serde_json::from_str(&text).unwrap();
            got += fetched["deliveries"].as_array().unwrap().len();
            assert!(Instant::now() < deadline, "fetched {got} of 40");
        }
    }
    server.stop();
}

#[test]
fn a_hard_open_file_limit_too_low_stops_start_up_naming_the_figures_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new("prlimit")
        .arg("--nofile=300:300")
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_driftless"))
        .args(["serve", "--listen", &addr, "--data-dir"])
        .arg(dir.path())
        .env_remove("DRIFTLESS_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("driftless serve started with a hard open-file limit of 300");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in ["300", "384", "ulimit -n", "LimitNOFILE"] {
        assert!(stderr.contains(needle), "the error names {needle:?}: {stderr}");
    }
}

//! `driftless serve` as an operator runs it: a typo in the config file stops start-up with an
//! error naming the key; `DRIFTLESS_LISTEN` and `DRIFTLESS_DATA_DIR` configure it; SIGTERM stops
//! it gracefully with exit status 0, and the data it acknowledged is there after a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns (status, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

fn start(port: u16, data_dir: &std::path::Path) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .arg("serve")
        .env("DRIFTLESS_LISTEN", format!("127.0.0.1:{port}"))
        .env("DRIFTLESS_DATA_DIR", data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(port, "GET", "/healthz", "text/plain", "").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "server did not become healthy");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

#[test]
fn a_config_typo_stops_start_up_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("driftless.toml");
    std::fs::write(&config, "[server]\nlisen = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lisen"), "the error names the unknown key: {stderr}");
}

#[test]
fn sigterm_stops_the_server_with_status_0_and_acknowledged_data_survives() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = start(port, dir.path());
    let (status, _) =
        http(port, "POST", "/v1/topics", "application/json", r#"{"name":"t"}"#).unwrap();
    assert_eq!(status, 201);
    let event = r#"{"specversion":"1.0","id":"e-1","source":"/test","type":"t.v1","subject":"k"}"#;
    let (status, body) =
        http(port, "POST", "/v1/topics/t/events", "application/cloudevents+json", event).unwrap();
    assert_eq!(status, 200, "{body}");

    let killed = Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the server did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(0), "graceful shutdown exits 0");
    drop(server);

    let port = free_port();
    let _server = start(port, dir.path());
    let (status, body) =
        http(port, "POST", "/v1/topics/t/events", "application/cloudevents+json", event).unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("\"duplicate\":true"),
        "the event from before the restart is there: {body}"
    );
}

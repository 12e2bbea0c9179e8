//! `driftless serve` as an operator runs it: a typo in the config file stops start-up with an
//! error naming the key; a jq syntax error in a mapping says what was expected and where; `DRIFTLESS_LISTEN` and `DRIFTLESS_DATA_DIR` configure it; SIGTERM stops
//! it gracefully with exit status 0, and the data it acknowledged is there after a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{free_port, http, ServeProcess};

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

/// Issue 22: a jq syntax error in a sink mapping ended in a Rust debug dump
/// (`[(File { code: …, path: () }, Parse([(Term, "")]))]`).
#[test]
fn a_jq_syntax_error_in_a_mapping_names_the_field_the_expectation_and_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("driftless.toml");
    let text = "[[sink]]\nname = \"crm\"\ntopics = [\"t\"]\n\
                target = { kind = \"sqlite\", path = \"crm.db\" }\n\
                [[sink.mapping]]\ntable = \"c\"\nkey = [\"id\"]\n\
                columns = { id = \".data.id\", name = \".data.name |\" }\n";
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port()), "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mapping[0].columns.name"), "names the field: {stderr}");
    assert!(
        stderr.contains("expected term at column 13 (end of expression)"),
        "says what was expected and where: {stderr}"
    );
    assert!(!stderr.contains("File {") && !stderr.contains("path: ()"), "a debug dump: {stderr}");
}

#[test]
fn sigterm_stops_the_server_with_status_0_and_acknowledged_data_survives() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServeProcess::start_with_env(free_port(), dir.path());
    let addr = server.addr.clone();
    let (status, _) =
        http(&addr, "POST", "/v1/topics", "application/json", r#"{"name":"t"}"#).unwrap();
    assert_eq!(status, 201);
    let event = r#"{"specversion":"1.0","id":"e-1","source":"/test","type":"t.v1","subject":"k"}"#;
    let (status, body) =
        http(&addr, "POST", "/v1/topics/t/events", "application/cloudevents+json", event).unwrap();
    assert_eq!(status, 200, "{body}");

    let killed = Command::new("kill").args(["-TERM", &server.pid().to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(status) = server.child().try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the server did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(0), "graceful shutdown exits 0");
    drop(server);

    let server = ServeProcess::start_with_env(free_port(), dir.path());
    let (status, body) =
        http(&server.addr, "POST", "/v1/topics/t/events", "application/cloudevents+json", event)
            .unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("\"duplicate\":true"),
        "the event from before the restart is there: {body}"
    );
}

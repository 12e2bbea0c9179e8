//! Runs the built `driftless` binary's client commands (produce, consume, topic, group, dlq)
//! end to end against a real `driftless serve` on a loopback port with a temporary data
//! directory.
//!
//! Invariants: each test that needs a server starts its own on a port picked by binding
//! `127.0.0.1:0` (then dropping the listener) and kills it when done, also on panic (via
//! [`Server`]'s `Drop`); only loopback addresses are used; every wait is bounded.

// Helpers, not #[test]s, so clippy's allow-unwrap-in-tests does not cover them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Output};

use serde_json::Value;

use support::TempServer as Server;

fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn ok(out: &Output) -> &Output {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\nstderr: {stderr}", out.status);
    out
}

const SRC: &str = r#""specversion":"1.0","source":"/test","type":"test.v1""#;

#[test]
fn produce_stops_at_a_bad_line_and_consume_prints_and_acks() {
    let server = Server::start();
    let created =
        ok(&server.run(&["topic", "create", "orders", "--partitions", "2"], "")).stdout.clone();
    let created: Value = serde_json::from_slice(&created).unwrap();
    assert_eq!(created["name"], "orders");
    let listed = lines(ok(&server.run(&["topic", "list"], "")));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "orders");

    // Line 2 has no id (generated: --generate-ids asks for it); line 3 is not JSON.
    let input = format!(
        "{{\"id\":\"e1\",\"subject\":\"a\",{SRC}}}\n{{\"subject\":\"b\",{SRC}}}\n{{bad\n\
         {{\"id\":\"e4\",{SRC}}}\n"
    );
    let out = server.run(&["produce", "orders", "--batch", "10", "--generate-ids"], &input);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad line must fail the run; stderr: {stderr}");
    assert!(stderr.contains("error: input line 3"), "{stderr}");
    let produced = lines(&out);
    assert_eq!(produced.len(), 2, "the two lines before the bad one: {produced:?}");
    assert_eq!(produced[0]["id"], "e1");
    assert_eq!(produced[0]["duplicate"], false);
    let generated = produced[1]["id"].as_str().unwrap().to_string();
    assert_eq!(generated.len(), 36, "{generated}");
    for p in &produced {
        assert!(p["partition"].is_u64() && p["offset"].is_u64(), "{p}");
    }

    // Re-sending e1 is a duplicate at the same place.
    let again = lines(ok(&server
        .run(&["produce", "orders"], &format!("{{\"id\":\"e1\",\"subject\":\"a\",{SRC}}}\n"))));
    assert_eq!(again[0]["duplicate"], true);
    assert_eq!(again[0]["offset"], produced[0]["offset"]);
    assert_eq!(again[0]["partition"], produced[0]["partition"]);

    // An event the server would refuse is refused before it is sent, naming its input line and
    // the attribute at fault (line 3: no source); nothing after it is sent.
    let input = format!(
        "\n\n{{\"id\":\"x2\",\"specversion\":\"1.0\",\"type\":\"t\"}}\n{{\"id\":\"x1\",{SRC}}}\n"
    );
    let out = server.run(&["produce", "orders"], &input);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("input line 3") && stderr.contains("`source`"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing was sent");

    let out = server.run(&["consume", "orders", "--group", "g", "--max", "2"], "");
    let consumed = lines(ok(&out));
    assert_eq!(consumed.len(), 2, "{consumed:?}");
    let mut ids: Vec<String> =
        consumed.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    let mut expected = vec!["e1".to_string(), generated];
    expected.sort();
    assert_eq!(ids, expected);
    for e in &consumed {
        assert_eq!(e["source"], "/test");
        assert!(e["partition"].is_u64() && e["offset"].is_u64(), "{e}");
    }

    // What was printed was acknowledged: the group has nothing left.
    let out = server.run(&["consume", "orders", "--group", "g", "--wait-ms", "200"], "");
    assert_eq!(lines(ok(&out)).len(), 0);

    let described: Value =
        serde_json::from_slice(&ok(&server.run(&["group", "describe", "g"], "")).stdout).unwrap();
    assert_eq!(described["group"], "g");
    assert!(described["members"].as_array().unwrap().is_empty(), "consume leaves: {described}");

    // Replay from the start delivers both events again.
    let moved =
        lines(ok(&server.run(&["group", "seek", "g", "--topic", "orders", "--earliest"], "")));
    assert_eq!(moved.len(), 2, "one line per partition: {moved:?}");
    assert!(moved.iter().all(|m| m["topic"] == "orders" && m["offset"] == 0), "{moved:?}");
    let out = server.run(&["consume", "orders", "--group", "g", "--wait-ms", "200"], "");
    assert_eq!(lines(ok(&out)).len(), 2);

    let groups = String::from_utf8(ok(&server.run(&["group", "list"], "")).stdout.clone()).unwrap();
    assert_eq!(groups, "g\n");
    assert!(lines(ok(&server.run(&["dlq", "list", "g"], ""))).is_empty());
    let out = server.run(&["dlq", "inspect", "g", "orders:0:0"], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.starts_with("error: "), "{stderr}");

    // A problem answer is shown as `error: <title>: <detail>`.
    let out = server.run(&["topic", "describe", "nope"], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.starts_with("error: ") && stderr.contains("nope"));

    ok(&server.run(&["topic", "delete", "orders"], ""));
    assert!(lines(ok(&server.run(&["topic", "list"], ""))).is_empty());
}

#[test]
fn an_unreachable_server_is_named_with_how_to_start_one() {
    // Bind and drop a listener: nothing listens on that port afterwards.
    let port = support::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let out = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(["topic", "list"])
        .env("DRIFTLESS_SERVER", &url)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(stderr.starts_with("error: ") && stderr.contains(&url), "{stderr}");
    assert!(stderr.contains("driftless serve") && stderr.contains("DRIFTLESS_SERVER"), "{stderr}");
}

#[test]
fn the_server_flag_overrides_the_environment_and_is_checked() {
    let out = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(["group", "list", "--server", "localhost:7070"])
        .env("DRIFTLESS_SERVER", "http://127.0.0.1:1")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("\"localhost:7070\" must start with http://"), "{stderr}");
}

#[test]
fn seek_needs_exactly_one_target() {
    let out = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(["group", "seek", "g", "--topic", "t", "--earliest", "--offset", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--earliest") && stderr.contains("--offset"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(["group", "seek", "g", "--topic", "t", "--time", "yesterday"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("RFC 3339"), "{stderr}");
}

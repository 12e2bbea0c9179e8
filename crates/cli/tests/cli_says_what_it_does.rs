//! Issue 22, item 6 ("the CLI says what it does"), from the user's side: the built `driftless`
//! binary against a real `driftless serve`. A missing `id` is refused unless `--generate-ids`
//! asks for one; an invalid topic name is refused with the rule it breaks (never "create it");
//! large events are split into requests the server accepts, and the server's 413 names its limit
//! in bytes; an event too large for any request is refused naming its line, size and the limit;
//! `topic create` prints one line; `dlq list` on an empty queue says so to people and prints
//! nothing to scripts; deleting a topic the server's configuration uses is refused, naming the
//! users, unless `--force`; list commands print tables on a terminal and JSON lines elsewhere;
//! `driftless completions SHELL` prints a completion script.
//!
//! Invariants: each test starts its own server (the built binary) over a temporary data
//! directory on a free loopback port and kills it when done, also on panic; every wait is
//! bounded; nothing is mocked.

// Helpers, not #[test]s, so clippy's allow-unwrap-in-tests does not cover them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Output};

use serde_json::Value;

use support::{ServeProcess, TempServer};

const HEAD: &str = r#""specversion":"1.0","source":"/test","type":"test.v1""#;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "exit {:?}\nstderr: {}", out.status, stderr(&out));
    out
}

fn failed(out: Output) -> Output {
    assert!(!out.status.success(), "must fail; stdout: {}", stdout(&out));
    out
}

/// One compact JSON value per stdout line.
fn json_lines(out: &Output) -> Vec<Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// Events stored in `topic`, over its partitions.
fn stored_events(server: &TempServer, topic: &str) -> u64 {
    let out = ok(server.run(&["topic", "describe", topic], ""));
    let described: Value = serde_json::from_slice(&out.stdout).unwrap();
    described["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["end_offset"].as_u64().unwrap() - p["start_offset"].as_u64().unwrap())
        .sum()
}

/// A server over a temporary directory with `config` as its `--config` file.
fn server_with_config(config: &str) -> (ServeProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("driftless.toml");
    std::fs::write(&path, config).unwrap();
    let data = dir.path().join("data");
    let serve = ServeProcess::start_with_args(&data, &["--config", path.to_str().unwrap()]);
    (serve, dir)
}

/// An event of `id` whose `data` is a string of `bytes` characters.
fn event_of(id: &str, bytes: usize) -> String {
    format!(r#"{{"id":"{id}",{HEAD},"data":"{}"}}"#, "x".repeat(bytes))
}

#[test]
fn produce_refuses_an_event_without_an_id_naming_the_line_and_the_generate_ids_flag() {
    let server = TempServer::start();
    ok(server.run(&["topic", "create", "orders"], ""));
    let input = format!("{{\"id\":\"e1\",{HEAD}}}\n\n{{{HEAD}}}\n{{\"id\":\"e3\",{HEAD}}}\n");
    let out = failed(server.run(&["produce", "orders"], &input));
    let message = stderr(&out);
    assert!(message.starts_with("error: input line 3: the event has no `id`"), "{message}");
    assert!(message.contains("--generate-ids"), "{message}");
    let printed = json_lines(&out);
    assert_eq!(printed.len(), 1, "only the line before it is sent: {printed:?}");
    assert_eq!(printed[0]["id"], "e1");
    assert_eq!(stored_events(&server, "orders"), 1, "nothing from line 3 on is stored");

    // Asked for, ids are generated (UUIDv7), and nothing is said about it.
    let out = ok(server.run(&["produce", "orders", "--generate-ids"], &input));
    let printed = json_lines(&out);
    assert_eq!(printed.len(), 3);
    let generated = printed[1]["id"].as_str().unwrap();
    assert_eq!(generated.len(), 36, "{generated}");
    assert_eq!(&generated[14..15], "7", "a UUIDv7: {generated}");
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn an_invalid_topic_name_is_refused_with_its_rule_never_with_a_suggestion_to_create_it() {
    let server = TempServer::start();
    for args in [
        vec!["produce", "../x"],
        vec!["consume", "../x", "--group", "g"],
        vec!["topic", "create", "../x"],
        vec!["topic", "delete", "a b"],
        vec!["group", "seek", "g", "--topic", "../x", "--earliest"],
    ] {
        let out = failed(server.run(&args, &format!("{{\"id\":\"a\",{HEAD}}}\n")));
        let message = stderr(&out);
        assert!(message.contains("is not a valid topic name"), "{args:?}: {message}");
        assert!(message.contains("only ASCII letters, digits"), "{args:?}: {message}");
        assert!(!message.contains("topic create"), "{args:?}: {message}");
    }
    // Over HTTP too: the unknown-topic problem says why such a topic cannot exist.
    let event = format!("{{\"id\":\"a\",{HEAD}}}");
    let (status, answer) = support::http(
        &server.serve.addr,
        "POST",
        "/v1/topics/..%2Fx/events",
        "application/cloudevents+json",
        &event,
    )
    .unwrap();
    assert_eq!(status, 404, "{answer}");
    assert!(answer.contains("it is not a valid topic name"), "{answer}");
    assert!(!answer.contains("topic create"), "{answer}");
}

#[test]
fn ten_events_of_1000_kib_are_split_into_requests_the_server_accepts() {
    let server = TempServer::start();
    ok(server.run(&["topic", "create", "big", "--partitions", "2"], ""));
    let input: String =
        (0..10).map(|i| format!("{}\n", event_of(&format!("big-{i}"), 1000 << 10))).collect();
    let out = ok(server.run(&["produce", "big"], &input));
    let printed = json_lines(&out);
    assert_eq!(printed.len(), 10, "{printed:?}");
    for (i, p) in printed.iter().enumerate() {
        assert_eq!(p["id"], format!("big-{i}"));
        assert_eq!(p["duplicate"], false);
    }
    assert_eq!(stored_events(&server, "big"), 10);

    // An event larger than a topic stores is refused before it is sent, naming its line, its
    // size and the limit; the lines before it are stored.
    let too_big = event_of("huge", 1 << 20);
    let input = format!("{}\n\n{too_big}\n", event_of("small", 10));
    let out = failed(server.run(&["produce", "big"], &input));
    let message = stderr(&out);
    let bytes = too_big.len() + "huge".len(); // placement key (the id) plus the text
    assert!(
        message.starts_with(&format!(
            "error: input line 3: the event is {bytes} bytes as stored (placement key plus JSON \
             text), over the largest event a topic stores (record_bytes_max) of 1048576 bytes"
        )),
        "{message}"
    );
    assert_eq!(json_lines(&out).len(), 1);
    assert_eq!(stored_events(&server, "big"), 11);
}

#[test]
fn the_servers_413_names_its_body_limit_and_produce_splits_its_batches_to_fit_it() {
    let (serve, _dir) = server_with_config("[server]\nrequest_body_bytes_max = 65536\n");
    ok(serve.run_cli(&["topic", "create", "t"], ""));

    // Over HTTP: the refusal names the limit in bytes and the setting.
    let body = format!("[{}]", event_of("raw", 70_000));
    let (status, answer) = support::http(
        &serve.addr,
        "POST",
        "/v1/topics/t/events",
        "application/cloudevents-batch+json",
        &body,
    )
    .unwrap();
    assert_eq!(status, 413, "{answer}");
    let problem: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(problem["type"], "urn:driftless:problem:body-too-large");
    assert_eq!(problem["limit_bytes"], 65536, "{problem}");
    assert_eq!(problem["limit"], "request_body_bytes_max");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("65536 bytes") && detail.contains("request_body_bytes_max"),
        "{detail}"
    );

    // Ten 20 KB events: the first request (200 KB) is refused; produce learns the limit from
    // the 413 and sends them all in requests under it, once each.
    let input: String =
        (0..10).map(|i| format!("{}\n", event_of(&format!("e{i}"), 20_000))).collect();
    let out = ok(serve.run_cli(&["produce", "t"], &input));
    let printed = json_lines(&out);
    assert_eq!(printed.len(), 10, "{printed:?}");
    assert!(printed.iter().all(|p| p["duplicate"] == false), "{printed:?}");

    // An event no request under the server's limit can carry: named with its line and size.
    let input = format!("{}\n{}\n", event_of("fits", 100), event_of("wide", 100_000));
    let out = failed(serve.run_cli(&["produce", "t", "--batch", "1"], &input));
    let message = stderr(&out);
    let bytes = event_of("wide", 100_000).len();
    assert!(
        message.starts_with(&format!("error: input line 2: the event is {bytes} bytes of JSON")),
        "{message}"
    );
    assert!(message.contains("(request_body_bytes_max) of 65536 bytes"), "{message}");
    assert_eq!(json_lines(&out).len(), 1, "line 1 was sent");
}

#[test]
fn topic_create_prints_one_line_and_not_the_partitions_internal_figures() {
    let server = TempServer::start();
    let out = ok(server.run(&["topic", "create", "orders", "--partitions", "3"], ""));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    let created: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(created["name"], "orders");
    assert_eq!(created["spec"]["partitions"], 3);
    assert!(!text.contains("sync_buckets"), "{text}");

    let out = ok(server.run(&["topic", "create", "billing", "--output", "table"], ""));
    assert_eq!(
        stdout(&out),
        "created topic billing with 1 partition(s), durability always, kept forever\n"
    );
}

#[test]
fn dlq_list_on_an_empty_queue_says_so_to_people_and_prints_nothing_to_scripts() {
    let server = TempServer::start();
    ok(server.run(&["topic", "create", "orders"], ""));
    ok(server.run(&["consume", "orders", "--group", "billing", "--wait-ms", "50"], ""));
    let out = ok(server.run(&["dlq", "list", "billing", "--output", "table"], ""));
    assert_eq!(stdout(&out), "no dead letters in group billing\n");
    let out = ok(server.run(&["dlq", "list", "billing", "--output", "json"], ""));
    assert_eq!(stdout(&out), "");
}

#[test]
fn deleting_a_topic_the_configured_sink_reads_is_refused_naming_it_unless_forced() {
    let (serve, _dir) = server_with_config(
        "[[sink]]\nname = \"audit-hook\"\ntopics = [\"orders\"]\n\
         target = { kind = \"webhook\", url = \"http://127.0.0.1:9/hook\" }\n",
    );
    ok(serve.run_cli(&["topic", "create", "orders"], ""));
    ok(serve.run_cli(&["topic", "create", "scratch"], ""));

    let out = failed(serve.run_cli(&["topic", "delete", "orders"], ""));
    let message = stderr(&out);
    assert!(message.starts_with("error: Topic in use: "), "{message}");
    assert!(message.contains("sink/audit-hook reads it"), "{message}");
    assert!(message.contains("--force"), "{message}");
    let listed = json_lines(&ok(serve.run_cli(&["topic", "list"], "")));
    assert_eq!(listed.len(), 2, "nothing was deleted: {listed:?}");

    // A topic nothing uses goes at once; the used one with --force.
    ok(serve.run_cli(&["topic", "delete", "scratch"], ""));
    ok(serve.run_cli(&["topic", "delete", "orders", "--force"], ""));
    assert!(json_lines(&ok(serve.run_cli(&["topic", "list"], ""))).is_empty());

    // The audit trail has all three, the refusal with its status.
    let (status, answer) =
        support::http(&serve.addr, "GET", "/v1/audit?limit=10", "application/json", "").unwrap();
    assert_eq!(status, 200, "{answer}");
    let records: Vec<Value> = serde_json::from_str(&answer).unwrap();
    let deletes: Vec<(String, u64)> = records
        .iter()
        .filter(|r| r["action"] == "topic.delete")
        .map(|r| (r["resource"].as_str().unwrap().to_string(), r["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        deletes,
        [
            ("topic/orders".to_string(), 204),
            ("topic/scratch".to_string(), 204),
            ("topic/orders".to_string(), 409)
        ],
        "newest first: {records:?}"
    );
}

/// `driftless ARGS` run under a pseudo-terminal (`script`), as a person at a terminal runs it;
/// what it printed.
fn on_a_terminal(args: &[&str]) -> String {
    let quoted: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_driftless"))
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let out = Command::new("script")
        .args(["-qefc", &quoted.join(" "), "/dev/null"])
        .env_remove("RUST_LOG")
        .env_remove("DRIFTLESS_OUTPUT")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap().replace("\r\n", "\n")
}

#[test]
fn list_commands_print_tables_on_a_terminal_and_json_lines_elsewhere() {
    let server = TempServer::start();
    ok(server.run(&["topic", "create", "orders", "--partitions", "2"], ""));
    ok(server.run(&["produce", "orders"], &format!("{{\"id\":\"a\",{HEAD}}}\n")));
    let base = server.serve.base.clone();

    let table = on_a_terminal(&["topic", "list", "--server", &base]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("NAME    PARTITIONS  EVENTS  BYTES"), "{table}");
    assert!(lines[1].starts_with("orders  2           1       "), "{table}");
    // Asked for, JSON on a terminal too; and tables through a pipe.
    let json = on_a_terminal(&["topic", "list", "--server", &base, "--output", "json"]);
    let listed: Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(listed["name"], "orders");
    let out = ok(server.run(&["topic", "list", "--output", "table"], ""));
    assert_eq!(stdout(&out).lines().next(), lines.first().copied());

    // Through a pipe (scripts, this test): JSON lines, unchanged.
    let listed = json_lines(&ok(server.run(&["topic", "list"], "")));
    assert_eq!(listed[0]["name"], "orders");

    // The other lists, as people see them when there is nothing to list.
    for (args, said) in [
        (["group", "list"], "no consumer groups\n"),
        (["sink", "list"], "no sinks configured (the server's [[sink]] tables)\n"),
        (["source", "list"], "no sources configured (the server's [[source]] tables)\n"),
    ] {
        let out = ok(server.run(&[args[0], args[1], "--output", "table"], ""));
        assert_eq!(stdout(&out), said, "{args:?}");
    }
    ok(server.run(&["consume", "orders", "--group", "billing", "--wait-ms", "50"], ""));
    let groups = on_a_terminal(&["group", "list", "--server", &base]);
    assert_eq!(groups, "GROUP\nbilling\n");
}

#[test]
fn token_list_prints_a_table_for_people() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.json");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_driftless"))
            .args(args)
            .arg("--tokens-file")
            .arg(&file)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let out = ok(run(&["token", "list", "--output", "table"]));
    assert_eq!(stdout(&out), format!("no tokens in {}\n", file.display()));
    ok(run(&["token", "create", "--name", "ops", "--scope", "admin:*:*"]));
    let out = ok(run(&["token", "list", "--output", "table"]));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("ID") && lines[0].contains("SCOPES"), "{text}");
    assert!(lines[1].contains(" ops ") && lines[1].contains("admin:*:*"), "{text}");
    assert!(lines[1].contains(" never ") && lines[1].ends_with(" valid"), "{text}");
    assert!(!text.contains("dlt_"), "never a secret: {text}");
}

#[test]
fn completions_print_a_script_for_every_shell() {
    for (shell, marker) in [
        ("bash", "_driftless()"),
        ("zsh", "#compdef driftless"),
        ("fish", "complete -c driftless"),
        ("elvish", "edit:completion:arg-completer[driftless]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let out = ok(Command::new(env!("CARGO_BIN_EXE_driftless"))
            .args(["completions", shell])
            .env_remove("RUST_LOG")
            .output()
            .unwrap());
        let script = stdout(&out);
        assert!(script.contains(marker), "{shell}: {script:.300}");
        assert!(script.contains("produce") && script.contains("generate-ids"), "{shell}");
    }
    let out = failed(
        Command::new(env!("CARGO_BIN_EXE_driftless"))
            .args(["completions", "tcsh"])
            .output()
            .unwrap(),
    );
    assert!(stderr(&out).contains("bash"), "the shells it knows: {}", stderr(&out));
}

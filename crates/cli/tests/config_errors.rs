//! Issue 22, item 5, from the operator's side: every mistake in the configuration file makes
//! `driftless serve --config FILE` refuse to start with a message naming the file, the line of
//! the offending key and the key's path (`source[1].heartbeat_interval_ms`) — whatever the
//! section and whatever the mistake.
//!
//! The test is a table over the class, not a few examples: every section (`[server]`,
//! `[broker]`, `[auth]`, both kinds of `[[source]]` — whose settings are flattened, which is
//! where the line used to be lost —, a `[[sink]]`, its inline `target`, its `[[sink.mapping]]`,
//! a `[[reconcile]]`) × every kind of mistake (an unknown key, a value of the wrong type, a
//! value out of range). Each case changes one line of a configuration that starts, runs the
//! real binary, and reads its stderr.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, ServeProcess};

/// A configuration with every section; `{dir}` is the test's directory. Each case below replaces
/// one line of it (found by its text) and names the line's number, counted from 1.
const BASE: &str = r#"[server]
connections_max = 100

[broker]
max_attempts = 5

[auth]
session_ttl_ms = 60000

[[source]]
name = "local"
kind = "sqlite_outbox"
path = "{dir}/app.db"
poll_interval_ms = 100

[[source]]
name = "orders"
kind = "postgres_cdc"
url = "postgres://app@127.0.0.1:9/app"
heartbeat_interval_ms = 10000

[[sink]]
name = "hook"
topics = ["t"]
target = { kind = "webhook", url = "http://127.0.0.1:9/h", timeout_ms = 1000 }

[[sink]]
name = "proj"
topics = ["t"]
target = { kind = "sqlite", path = "{dir}/proj.db" }
batch_events_max = 100
[[sink.mapping]]
table = "contacts"
key = ["id"]
columns = { id = ".subject" }

[[reconcile]]
name = "contacts"
sink = "proj"
source = { kind = "sqlite", path = "{dir}/truth.db", table = "contacts" }
lag_window_ms = 2000
"#;

/// One mistake: the line (as written in [`BASE`]) it replaces, its replacement, and the key
/// path the message must name.
struct Case {
    line: &'static str,
    with: &'static str,
    key: &'static str,
}

const fn case(line: &'static str, with: &'static str, key: &'static str) -> Case {
    Case { line, with, key }
}

/// Every section × {unknown key, wrong type, out of range}.
const CASES: &[Case] = &[
    // [server]
    case("connections_max = 100", "connections_mx = 100", "server.connections_mx"),
    case("connections_max = 100", "connections_max = \"many\"", "server.connections_max"),
    case("connections_max = 100", "connections_max = 0", "server.connections_max"),
    // [broker]
    case("max_attempts = 5", "max_attempt = 5", "broker.max_attempt"),
    case("max_attempts = 5", "max_attempts = \"5\"", "broker.max_attempts"),
    case("max_attempts = 5", "max_attempts = 0", "broker.max_attempts"),
    // [auth]
    case("session_ttl_ms = 60000", "session_ttl = 60000", "auth.session_ttl"),
    case("session_ttl_ms = 60000", "session_ttl_ms = true", "auth.session_ttl_ms"),
    case("session_ttl_ms = 60000", "session_ttl_ms = 0", "auth.session_ttl_ms"),
    // [[source]] kind = "sqlite_outbox" (settings flattened from two structs)
    case("poll_interval_ms = 100", "pol_interval_ms = 100", "source[0].pol_interval_ms"),
    case("poll_interval_ms = 100", "poll_interval_ms = [100]", "source[0].poll_interval_ms"),
    case("poll_interval_ms = 100", "poll_interval_ms = 0", "source[0].poll_interval_ms"),
    // [[source]] kind = "postgres_cdc"
    case(
        "heartbeat_interval_ms = 10000",
        "heartbeat_intervl_ms = 10000",
        "source[1].heartbeat_intervl_ms",
    ),
    case(
        "heartbeat_interval_ms = 10000",
        "heartbeat_interval_ms = \"10s\"",
        "source[1].heartbeat_interval_ms",
    ),
    case(
        "heartbeat_interval_ms = 10000",
        "heartbeat_interval_ms = 0",
        "source[1].heartbeat_interval_ms",
    ),
    case(
        "heartbeat_interval_ms = 10000",
        "heartbeat_interval_ms = 8640000000",
        "source[1].heartbeat_interval_ms",
    ),
    // [[sink]]
    case("batch_events_max = 100", "batch_event_max = 100", "sink[1].batch_event_max"),
    case("batch_events_max = 100", "batch_events_max = \"100\"", "sink[1].batch_events_max"),
    case("batch_events_max = 100", "batch_events_max = 0", "sink[1].batch_events_max"),
    // [[sink]] target = { … } (an inline table)
    case(
        "target = { kind = \"webhook\", url = \"http://127.0.0.1:9/h\", timeout_ms = 1000 }",
        "target = { kind = \"webhook\", url = \"http://127.0.0.1:9/h\", timeout = 1000 }",
        "sink[0].target.timeout",
    ),
    case(
        "target = { kind = \"webhook\", url = \"http://127.0.0.1:9/h\", timeout_ms = 1000 }",
        "target = { kind = \"webhook\", url = \"http://127.0.0.1:9/h\", timeout_ms = \"1s\" }",
        "sink[0].target.timeout_ms",
    ),
    case(
        "target = { kind = \"webhook\", url = \"http://127.0.0.1:9/h\", timeout_ms = 1000 }",
        "target = { kind = \"webhook\", url = \"http://127.0.0.1:9/h\", timeout_ms = 0 }",
        "sink[0].target.timeout_ms",
    ),
    // [[sink.mapping]]
    case("key = [\"id\"]", "keys = [\"id\"]", "sink[1].mapping[0].keys"),
    case("key = [\"id\"]", "key = 7", "sink[1].mapping[0].key"),
    case("key = [\"id\"]", "key = []", "sink[1].mapping[0].key"),
    // [[reconcile]]
    case("lag_window_ms = 2000", "lag_window = 2000", "reconcile[0].lag_window"),
    case("lag_window_ms = 2000", "lag_window_ms = \"2s\"", "reconcile[0].lag_window_ms"),
    case("lag_window_ms = 2000", "lag_window_ms = 99999999999", "reconcile[0].lag_window_ms"),
];

/// Runs `driftless serve --config <dir>/driftless.toml` with `text`, expecting a refusal at
/// start; returns the path given and the process's stderr. A configuration that is accepted
/// fails the test (after killing the server) instead of leaving it running.
fn refused_start(dir: &Path, text: &str) -> (String, String) {
    start_refusal(dir, text).unwrap_or_else(|why| panic!("{why}"))
}

/// [`refused_start`], with an accepted configuration as an `Err` saying so.
fn start_refusal(dir: &Path, text: &str) -> Result<(String, String), String> {
    let path = dir.join("driftless.toml");
    std::fs::write(&path, text).unwrap();
    let stderr_path = dir.join("stderr.txt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port()), "--data-dir"])
        .arg(dir.join("data"))
        .arg("--config")
        .arg(&path)
        .env_remove("DRIFTLESS_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    if status.is_none_or(|s| s.success()) {
        return Err(format!("the start was not refused ({status:?}):\n{text}\nstderr: {stderr}"));
    }
    Ok((path.display().to_string(), stderr))
}

fn base(dir: &Path) -> String {
    BASE.replace("{dir}", &dir.display().to_string())
}

#[test]
fn every_config_error_names_the_file_the_line_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = base(dir.path());
    let mut failures = Vec::new();
    for c in CASES {
        let number = base
            .lines()
            .position(|l| l == c.line)
            .unwrap_or_else(|| panic!("`{}` is not a line of the base config", c.line))
            + 1;
        let text = base.replacen(c.line, c.with, 1);
        let (file, stderr) = match start_refusal(dir.path(), &text) {
            Ok(refused) => refused,
            Err(why) => {
                failures.push(format!("`{}`: {why}", c.with));
                continue;
            }
        };
        let at = format!("{file}:{number}:");
        let key = format!("`{}`", c.key);
        if !stderr.contains(&at) || !stderr.contains(&key) {
            failures.push(format!(
                "`{}`: expected {at} and {key} in:\n  {}",
                c.with,
                stderr.trim()
            ));
        }
        // A message, not a dump of the parser's internals.
        assert!(!stderr.contains("Error {") && !stderr.contains("Spanned"), "{stderr}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn an_unknown_key_in_a_source_lists_the_keys_its_kind_takes() {
    let dir = tempfile::tempdir().unwrap();
    let text = base(dir.path()).replace("heartbeat_interval_ms = 10000", "heartbeat_ms = 10000");
    let (file, stderr) = refused_start(dir.path(), &text);
    assert!(stderr.contains(&format!("{file}:20:1")), "{stderr}");
    assert!(
        stderr.contains("`postgres_cdc`") && stderr.contains("`heartbeat_interval_ms`"),
        "{stderr}"
    );
}

#[test]
fn max_attempts_zero_is_refused_at_start_naming_its_line_and_range() {
    let dir = tempfile::tempdir().unwrap();
    let text = base(dir.path()).replace("max_attempts = 5", "max_attempts = 0");
    let (file, stderr) = refused_start(dir.path(), &text);
    assert!(stderr.contains(&format!("{file}:5:1")), "{stderr}");
    assert!(stderr.contains("`broker.max_attempts`") && stderr.contains("1 to 1000"), "{stderr}");
}

/// `[auth.clients]` without `[server.tls] client_ca_file` looked like access control but could
/// never match a client (no certificate is verified without the CA): refused, naming the entry
/// and the setting that is missing (found by following the README's security section).
#[test]
fn auth_clients_without_a_client_ca_are_refused_naming_the_missing_setting() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[auth.clients]\n\"billing-svc\" = [\"produce:topic:billing.*\"]\n",
        base(dir.path())
    );
    let (file, stderr) = refused_start(dir.path(), &text);
    assert!(stderr.contains(&file) && stderr.contains("`auth.clients.billing-svc`"), "{stderr}");
    assert!(stderr.contains("server.tls.client_ca_file"), "{stderr}");
}

#[test]
fn a_source_without_a_kind_or_with_an_unknown_one_is_named_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = base(dir.path()).replace("kind = \"postgres_cdc\"\n", "");
    let (file, stderr) = refused_start(dir.path(), &text);
    assert!(stderr.contains(&format!("{file}:16:")) && stderr.contains("`source[1]`"), "{stderr}");
    assert!(stderr.contains("postgres_cdc, postgres_outbox, sqlite_outbox"), "{stderr}");
    let text = base(dir.path()).replace("kind = \"postgres_cdc\"", "kind = \"mysql_cdc\"");
    let (file, stderr) = refused_start(dir.path(), &text);
    assert!(
        stderr.contains(&format!("{file}:18:")) && stderr.contains("`source[1].kind`"),
        "{stderr}"
    );
}

#[test]
fn a_toml_syntax_error_names_the_file_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = base(dir.path()).replace("max_attempts = 5", "max_attempts = = 5");
    let (file, stderr) = refused_start(dir.path(), &text);
    assert!(stderr.contains(&format!("{file}:5:")), "{stderr}");
}

/// The base configuration is valid: every case above fails because of its one change.
#[test]
fn the_base_configuration_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("driftless.toml");
    std::fs::write(&path, base(dir.path())).unwrap();
    let data = dir.path().join("data");
    let server = ServeProcess::start_with_args(&data, &["--config", path.to_str().unwrap()]);
    drop(server);
}

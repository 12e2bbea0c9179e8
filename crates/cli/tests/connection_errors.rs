//! Issue 22, item 5, from the operator's side: when a source, a sink or a reconciliation cannot
//! connect to PostgreSQL, what `driftless serve` shows (`GET /v1/sources`, `GET /v1/sinks`, a
//! reconciliation run's error) says why — connection refused, password authentication failed,
//! database does not exist — and names the server by its URL with the password replaced by
//! `***`, never the password itself. A SQLite database that cannot be opened names its path and
//! what is missing (the file, the directory) instead of SQLite's "unable to open database file".
//!
//! Real PostgreSQL (with a role that must give a password), real `driftless serve`; the closed
//! port is one that was free a moment ago.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::time::{Duration, Instant};

use driftless_testkit::{PgOptions, PgServer};
use serde_json::Value;
use support::{agent, free_port, get, post, ServeProcess};

/// The role's password; it must never show.
const PASSWORD: &str = "conn-err-pw-4f1d";

/// The `error` of the entry called `name` in a listing (`/v1/sources`, `/v1/sinks`), once it
/// has one (waits up to 60 s).
fn error_of(base: &str, listing: &str, name: &str) -> String {
    let agent = agent(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, body)) = get(&agent, &format!("{base}{listing}")) {
            let entries = body.as_array().cloned().unwrap_or_default();
            let entry = entries.iter().find(|e| e["name"] == name);
            if let Some(error) = entry.and_then(|e| e["error"].as_str()) {
                return error.to_string();
            }
        }
        assert!(Instant::now() < deadline, "{name} in {listing} never showed an error");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_failed_database_connection_says_why_and_names_the_database_without_the_password() {
    let pg = PgServer::start_with(PgOptions {
        password_users: vec!["app".into()],
        ..PgOptions::default()
    })
    .unwrap();
    pg.psql(&format!("CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'")).unwrap();
    pg.create_database("app").unwrap();
    pg.psql("ALTER DATABASE app OWNER TO app").unwrap();
    let port = pg.port();
    let closed = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("driftless.toml");
    let missing_file = dir.path().join("outbox.db").display().to_string();
    let missing_dir = dir.path().join("no-such-dir").display().to_string();
    std::fs::write(
        &config,
        format!(
            r#"
[[source]]
name = "refused"
kind = "postgres_cdc"
url = "postgres://app:{PASSWORD}@127.0.0.1:{closed}/app"

[[source]]
name = "wrong-password"
kind = "postgres_outbox"
mode = "poll"
url = "postgres://app:not-{PASSWORD}@127.0.0.1:{port}/app"

[[source]]
name = "no-database"
kind = "postgres_cdc"
url = "postgres://app:{PASSWORD}@127.0.0.1:{port}/nosuchdb"

[[sink]]
name = "proj"
topics = ["contacts"]
target = {{ kind = "postgres", url = "postgres://app:{PASSWORD}@127.0.0.1:{closed}/app" }}
[[sink.mapping]]
table = "contacts"
key = ["id"]
columns = {{ id = ".subject" }}

[[source]]
name = "no-file"
kind = "sqlite_outbox"
path = "{missing_file}"

[[sink]]
name = "no-dir"
topics = ["contacts"]
target = {{ kind = "sqlite", path = "{missing_dir}/proj.db" }}
[[sink.mapping]]
table = "contacts"
key = ["id"]
columns = {{ id = ".subject" }}

[[reconcile]]
name = "contacts"
sink = "proj"
source = {{ kind = "postgres", url = "postgres://app:{PASSWORD}@127.0.0.1:{port}/nosuchdb", table = "contacts" }}
"#
        ),
    )
    .unwrap();
    let server = ServeProcess::start_with_args(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let base = &server.base;

    let refused = error_of(base, "/v1/sources", "refused");
    assert!(refused.contains("connection refused"), "{refused}");
    assert!(refused.contains(&format!("postgres://app:***@127.0.0.1:{closed}/app")), "{refused}");

    let wrong = error_of(base, "/v1/sources", "wrong-password");
    assert!(wrong.contains("password authentication failed for user \"app\""), "{wrong}");
    assert!(wrong.contains(&format!("postgres://app:***@127.0.0.1:{port}/app")), "{wrong}");

    let missing = error_of(base, "/v1/sources", "no-database");
    assert!(missing.contains("database \"nosuchdb\" does not exist"), "{missing}");
    assert!(
        missing.contains(&format!("postgres://app:***@127.0.0.1:{port}/nosuchdb")),
        "{missing}"
    );

    let sink = error_of(base, "/v1/sinks", "proj");
    assert!(sink.contains("connection refused"), "{sink}");
    assert!(sink.contains(&format!("postgres://app:***@127.0.0.1:{closed}/app")), "{sink}");

    let run = post(
        &agent(Duration::from_secs(30)),
        &format!("{base}/v1/reconciliations/contacts/run"),
        "application/json",
        &Value::Null,
    );
    let run = format!("{run:?}");
    // The projection (the sink's database, on the closed port) is opened first.
    assert!(run.contains("projection database") && run.contains("connection refused"), "{run}");
    assert!(run.contains(&format!("postgres://app:***@127.0.0.1:{closed}/app")), "{run}");

    // SQLite says only "unable to open database file"; the message says what is missing.
    let no_file = error_of(base, "/v1/sources", "no-file");
    let expected = format!("cannot open SQLite database at {missing_file}: no such file");
    assert!(no_file.contains(&expected), "{no_file}");
    let no_dir = error_of(base, "/v1/sinks", "no-dir");
    assert!(no_dir.contains(&format!("no such directory {missing_dir}")), "{no_dir}");

    for text in [&refused, &wrong, &missing, &sink, &run] {
        assert!(!text.contains(PASSWORD), "the password in: {text}");
    }
}

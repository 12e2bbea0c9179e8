//! Acceptance test of issue 21's secrets promise: planted credentials never appear in any API
//! response, log line, metric or dead-letter history across a full scenario of the real
//! `driftless serve`.
//!
//! The scenario: PostgreSQL serving TLS only, with a role that must authenticate with a planted
//! password (characters that need URL escaping included); a CDC source reading with that role
//! (its URL given through an environment variable) with `sslmode=verify-full`; a second source
//! with the same password pointing at a closed port (it keeps failing); a Postgres sink with the
//! password inline; a webhook sink whose URL carries a planted `?token=` and whose signing secret
//! (also planted) comes from a file, against a receiver that answers 400 and echoes the request
//! line, so every event goes to the dead-letter queue; a reconciliation of the sink's projection
//! against the source table, with the password inline. Then every GET endpoint of the OpenAPI
//! document is called (path parameters filled from the listings), `/metrics`, the dashboard and
//! the dead-letter entries; the server is stopped; and its stdout and stderr (`RUST_LOG=trace`),
//! every response and every metric are searched for the planted values, raw and URL-escaped.
//! Authentication is on: every request presents an API token created by `driftless token
//! create`, the dashboard signs in with it, and one request presents a wrong token; neither
//! token's secret may appear either.
//!
//! The check could fail: the test asserts the failures happened (dead letters with the
//! receiver's answer, the broken source's error), that the password was really used (the
//! source's rows reached the projection), and that the logs are not empty.
//! `SECRETS_TEST_DUMP=1` prints every response and the logs (with `--nocapture`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use driftless_core::secret::percent_encode;
use driftless_testkit::{PgOptions, PgServer, TestCa};
use serde_json::Value;
use support::{agent, free_port, get, http, must, post};

/// The role's password: `@`, `/`, `:`, `%`, `?`, `&` and `#` all need escaping in a URL.
const PASSWORD: &str = "Pl@nted/pw:9%q?x&y#z-71c3";
/// The webhook URL's token.
const TOKEN: &str = "planted-hook-token-5e2d9a";
/// The webhook signing secret.
const SIGNING: &str = "whsec_cGxhbnRlZC1zaWduaW5nLXNlY3JldC03Nw==";

/// A token that looks real but is not in the tokens file: presented once, refused, never echoed.
const WRONG_API_TOKEN: &str =
    "dlt_0123456789abcdef_5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

/// Every form in which a planted value could leak; `api_token` is the one the test created.
fn planted(api_token: &str) -> Vec<String> {
    let mut out = Vec::new();
    // The secret half of an API token is what must never show; its public id may.
    let secret_half = |t: &str| t.rsplit('_').next().unwrap_or_default().to_string();
    out.push(secret_half(api_token));
    out.push(secret_half(WRONG_API_TOKEN));
    for v in [PASSWORD, TOKEN, SIGNING, api_token, WRONG_API_TOKEN] {
        out.push(v.to_string());
        out.push(percent_encode(v));
    }
    // The signing key is also used decoded (base64 after `whsec_`).
    out.push("planted-signing-secret-77".to_string());
    out
}

/// A webhook receiver that answers every request 400 with a body echoing the request line (so a
/// naive error history would hold the token); returns its port and how many requests it saw.
fn failing_receiver() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let counter = std::sync::Arc::clone(&counter);
            std::thread::spawn(move || {
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut b).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let len: usize = text
                    .to_ascii_lowercase()
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().to_string()))
                    .map_or(0, |v| v.parse().unwrap());
                let mut body = vec![0u8; len];
                let _ = stream.read_exact(&mut body);
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let line = text.lines().next().unwrap_or_default().to_string();
                let answer = format!("refused: {line}");
                let _ = stream.write_all(
                    format!(
                        "HTTP/1.1 400 Bad Request\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                        answer.len()
                    )
                    .as_bytes(),
                );
            });
        }
    });
    (port, seen)
}

fn config(dir: &Path, pg: &PgServer, ca: &TestCa, hook_port: u16) -> std::path::PathBuf {
    let pw = percent_encode(PASSWORD);
    let root = ca.ca_path().display().to_string();
    let proj = format!(
        "postgres://app_user:{pw}@localhost:{}/proj?sslmode=verify-full&sslrootcert={root}",
        pg.port()
    );
    let app = format!(
        "postgres://app_user:{pw}@localhost:{}/app?sslmode=verify-full&sslrootcert={root}",
        pg.port()
    );
    let down = format!("postgres://app_user:{pw}@127.0.0.1:{}/app", free_port());
    let secret_file = dir.join("signing-secret");
    std::fs::write(&secret_file, format!("{SIGNING}\n")).unwrap();
    let text = format!(
        r#"
[[source]]
name = "app"
kind = "postgres_cdc"
url = {{ env = "DRIFTLESS_TEST_APP_URL" }}
tables = ["public.customers"]
routes."public.customers" = "customers"
heartbeat_interval_ms = 500

[[source]]
name = "down"
kind = "postgres_outbox"
url = "{down}"
mode = "poll"

[[sink]]
name = "proj"
topics = ["customers"]
target = {{ kind = "postgres", url = "{proj}" }}
[[sink.mapping]]
types = ["public.customers.read", "public.customers.insert", "public.customers.update"]
table = "customers"
key = ["id"]
columns = {{ id = ".data.after.id", name = ".data.after.name" }}

[[sink]]
name = "hook"
topics = ["customers"]
target = {{ kind = "webhook", url = "http://127.0.0.1:{hook_port}/hook?token={TOKEN}", secret = {{ file = "{secret}" }}, timeout_ms = 2000 }}
[[sink.mapping]]
types = ["public.customers.*"]

[auth]
enabled = true

[[reconcile]]
name = "recon"
sink = "proj"
source = {{ kind = "postgres", url = "{app}", table = "customers" }}
"#,
        secret = secret_file.display(),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, &text).unwrap();
    // The source URL goes through the environment.
    std::fs::write(dir.join("app-url"), app).unwrap();
    path
}

/// A client that presents `token` as `Authorization: Bearer` on every request.
fn bearer_agent(token: &str) -> ureq::Agent {
    let value = ureq::http::HeaderValue::try_from(format!("Bearer {token}")).unwrap();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .middleware(
            move |mut req: ureq::http::Request<ureq::SendBody<'_>>,
                  next: ureq::middleware::MiddlewareNext<'_>| {
                req.headers_mut().insert(ureq::http::header::AUTHORIZATION, value.clone());
                next.handle(req)
            },
        )
        .build()
        .into()
}

/// Waits (up to 60 s) for `check`; panics with `what`.
fn wait(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Names to fill a path parameter with, from a listing's JSON.
fn names(listing: &Value) -> Vec<String> {
    let items = match listing {
        Value::Array(items) => items.clone(),
        Value::Object(map) => map.values().find_map(|v| v.as_array().cloned()).unwrap_or_default(),
        _ => vec![],
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => ["name", "id", "topic", "group"]
                .iter()
                .find_map(|k| o.get(*k).and_then(Value::as_str).map(str::to_string)),
            _ => None,
        })
        .collect()
}

#[test]
fn planted_credentials_never_appear_in_responses_logs_metrics_or_dead_letters() {
    let ca = TestCa::new("secrets").unwrap();
    let pg = PgServer::start_with(PgOptions {
        tls: Some(ca.server().clone()),
        password_users: vec!["app_user".into()],
    })
    .unwrap();
    pg.psql(&format!(
        "CREATE ROLE app_user LOGIN SUPERUSER REPLICATION PASSWORD '{}'",
        PASSWORD.replace('\'', "''")
    ))
    .unwrap();
    pg.create_database("app").unwrap();
    pg.create_database("proj").unwrap();
    let psql_db = |db: &str, sql: &str| {
        let out = Command::new("/usr/lib/postgresql/15/bin/psql")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", &pg.url(db), "-c", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    psql_db("app", "CREATE TABLE customers (id int PRIMARY KEY, name text)");
    psql_db("app", "INSERT INTO customers SELECT g, 'name ' || g FROM generate_series(1, 20) g");
    psql_db(
        "proj",
        "CREATE TABLE customers (id int PRIMARY KEY, name text, driftless_version text)",
    );

    let (hook_port, hook_requests) = failing_receiver();
    let dir = tempfile::tempdir().unwrap();
    let config_path = config(dir.path(), &pg, &ca, hook_port);
    let app_url = std::fs::read_to_string(dir.path().join("app-url")).unwrap();
    let data = dir.path().join("data");
    let (stdout_path, stderr_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let addr = format!("127.0.0.1:{}", free_port());
    // The API token, created by the CLI into the data directory's tokens file; every request
    // below presents it (and one presents a wrong one).
    let created = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(["token", "create", "--name", "ops", "--scope", "admin:*:*", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let api_token = String::from_utf8(created.stdout).unwrap().trim().to_string();
    assert!(api_token.starts_with("dlt_"), "{api_token}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(["serve", "--listen", &addr, "--data-dir"])
        .arg(&data)
        .arg("--config")
        .arg(&config_path)
        .env_remove("DRIFTLESS_CONFIG")
        .env_remove("DRIFTLESS_SERVER")
        .env("RUST_LOG", "trace")
        .env("NO_COLOR", "1")
        .env("DRIFTLESS_TEST_APP_URL", &app_url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://{addr}");
    wait("the server to be healthy", || {
        assert!(child.try_wait().unwrap().is_none(), "driftless serve exited at start");
        http(&addr, "GET", "/healthz", "text/plain", "").is_some_and(|r| r.0 == 200)
    });
    let mut responses: Vec<(String, String)> = Vec::new();
    // Authentication is on: without the token nothing is answered, a wrong one is refused
    // without being echoed, and with it everything below works.
    let anonymous = agent(Duration::from_secs(10));
    must("a request without a token", get(&anonymous, &format!("{base}/v1/topics")), 401);
    let wrong = bearer_agent(WRONG_API_TOKEN);
    let refused = must("a wrong token", get(&wrong, &format!("{base}/v1/topics")), 401);
    responses.push(("GET /v1/topics with a wrong token".into(), refused.to_string()));
    let agent = bearer_agent(&api_token);

    // The password was really used: the snapshot (and a streamed row) reached the projection.
    psql_db("app", "INSERT INTO customers VALUES (21, 'streamed')");
    wait("the projection", || psql_db("proj", "SELECT count(*) FROM customers") == "21");
    // The webhook failed every event into the dead-letter queue.
    wait("dead letters of the webhook sink", || {
        get(&agent, &format!("{base}/v1/groups/sink-hook/dlq"))
            .is_some_and(|(s, body)| s == 200 && names(&body).len() >= 21)
    });
    assert!(hook_requests.load(std::sync::atomic::Ordering::SeqCst) >= 21);
    // The broken source failed.
    wait("the broken source's error", || {
        get(&agent, &format!("{base}/v1/sources/down"))
            .is_some_and(|(_, body)| body.to_string().contains("error"))
    });
    // A reconciliation run.
    let run = post(
        &agent,
        &format!("{base}/v1/reconciliations/recon/run"),
        "application/json",
        &Value::Null,
    );
    responses.push(("POST /v1/reconciliations/recon/run".into(), format!("{run:?}")));

    // Every GET of the OpenAPI document, parameters filled from the listings.
    let openapi = must("openapi", get(&agent, &format!("{base}/v1/openapi.json")), 200);
    let listing = |path: &str| {
        names(&get(&agent, &format!("{base}{path}")).map(|r| r.1).unwrap_or(Value::Null))
    };
    let topics = listing("/v1/topics");
    let groups = listing("/v1/groups");
    let sources = listing("/v1/sources");
    let sinks = listing("/v1/sinks");
    let reconciliations = listing("/v1/reconciliations");
    assert!(sources.contains(&"down".to_string()), "{sources:?}");
    let mut dead_letter_ids = Vec::new();
    for g in &groups {
        for id in listing(&format!("/v1/groups/{g}/dlq")) {
            dead_letter_ids.push((g.clone(), id));
        }
    }
    assert!(!dead_letter_ids.is_empty());
    let mut called = BTreeSet::new();
    let mut skipped = BTreeSet::new();
    for (template, ops) in openapi["paths"].as_object().unwrap() {
        if ops.get("get").is_none() {
            continue;
        }
        // A member's fetch and stream would take deliveries from the running sinks (and the
        // stream never ends); members are not secrets.
        if template.contains("{member}") {
            skipped.insert(template.clone());
            continue;
        }
        let mut paths = vec![template.clone()];
        for (param, values) in [
            ("{topic}", &topics),
            ("{source}", &sources),
            ("{sink}", &sinks),
            ("{name}", &reconciliations),
        ] {
            paths = paths
                .into_iter()
                .flat_map(|p| {
                    if p.contains(param) {
                        values.iter().map(|v| p.replace(param, v)).collect::<Vec<_>>()
                    } else {
                        vec![p]
                    }
                })
                .collect();
        }
        let paths: Vec<String> = paths
            .into_iter()
            .flat_map(|p| {
                if p.contains("{id}") {
                    dead_letter_ids
                        .iter()
                        .map(|(g, id)| p.replace("{group}", g).replace("{id}", id))
                        .collect::<Vec<_>>()
                } else if p.contains("{group}") {
                    groups.iter().map(|g| p.replace("{group}", g)).collect()
                } else {
                    vec![p]
                }
            })
            .collect();
        assert!(!paths.is_empty(), "no values to fill {template}");
        for path in paths {
            assert!(!path.contains('{'), "unfilled parameter in {path}");
            let got = get(&agent, &format!("{base}{path}"));
            let (status, body) = got.unwrap_or_else(|| panic!("GET {path}: no answer"));
            assert!(status < 500, "GET {path}: {status} {body}");
            responses.push((format!("GET {path}"), body.to_string()));
        }
        called.insert(template.clone());
    }
    for path in ["/metrics", "/", "/healthz", "/v1/session"] {
        let (status, body) = get(&agent, &format!("{base}{path}")).unwrap();
        assert_eq!(status, 200, "GET {path}");
        responses.push((format!("GET {path}"), body.to_string()));
    }
    // The dashboard's sign-in: the answer and its cookie.
    let mut signed_in = agent
        .post(format!("{base}/v1/session"))
        .header("content-type", "application/json")
        .send(serde_json::json!({ "token": api_token }).to_string())
        .unwrap();
    assert_eq!(signed_in.status(), 200);
    let headers = format!("{:?}", signed_in.headers());
    responses.push(("POST /v1/session".into(), signed_in.body_mut().read_to_string().unwrap()));
    responses.push(("POST /v1/session headers".into(), headers));
    assert!(called.contains("/v1/groups/{group}/dlq/{id}"), "{called:?}");
    assert!(called.contains("/v1/sources/{source}"), "{called:?}");
    assert!(called.contains("/v1/reconciliations/{name}"), "{called:?}");

    // The failures are visible, redacted.
    let dlq: String = responses
        .iter()
        .filter(|(what, _)| what.contains("/dlq"))
        .map(|(_, body)| body.as_str())
        .collect();
    assert!(dlq.contains("answered 400"), "the receiver's refusals are in the history: {dlq}");
    assert!(dlq.contains("token=***"), "{dlq}");

    // Stop the server; collect its output.
    assert!(driftless_testkit::send_signal(child.id(), "TERM"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "driftless serve did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let logs = std::fs::read_to_string(&stderr_path).unwrap()
        + &std::fs::read_to_string(&stdout_path).unwrap();
    // Driftless' own events (dependencies log through `log`, which the binary does not bridge).
    assert!(logs.contains("DEBUG"), "RUST_LOG=trace produced no debug lines:\n{logs}");
    assert!(logs.contains("source=down"), "the broken source's failure is logged:\n{logs}");

    if std::env::var_os("SECRETS_TEST_DUMP").is_some() {
        for (what, body) in &responses {
            eprintln!("== {what}\n{}", body.chars().take(1500).collect::<String>());
        }
        eprintln!("== logs\n{logs}");
    }
    let mut leaks = Vec::new();
    for secret in planted(&api_token) {
        for (what, body) in &responses {
            if body.contains(&secret) {
                leaks.push(format!("{what} holds `{secret}`"));
            }
        }
        for line in logs.lines().filter(|l| l.contains(&secret)) {
            leaks.push(format!("log line holds `{secret}`: {line}"));
        }
    }
    assert!(leaks.is_empty(), "{} leaks (skipped {skipped:?}):\n{}", leaks.len(), leaks.join("\n"));
}

/// Runs `driftless serve` with `config_text` (expected to be refused at start) and returns its
/// stderr.
fn refused_start(config_text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config_text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port()), "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&path)
        .env_remove("DRIFTLESS_CONFIG")
        .env_remove("DRIFTLESS_TEST_SURELY_UNSET")
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the start was not refused");
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

#[test]
fn a_config_error_on_a_line_with_a_password_names_the_key_but_not_the_password() {
    let pw = percent_encode(PASSWORD);
    let text = format!(
        "[[sink]]\nname = \"p\"\ntopics = [\"t\"]\n\
         target = {{ kind = \"postgres\", url = \"postgres://u:{pw}@127.0.0.1/db\", versoin_column = \"v\" }}\n"
    );
    let stderr = refused_start(&text);
    assert!(stderr.contains("versoin_column"), "{stderr}");
    for secret in planted(WRONG_API_TOKEN) {
        assert!(!stderr.contains(&secret), "`{secret}` in: {stderr}");
    }
}

#[test]
fn a_secret_from_a_missing_variable_or_file_is_refused_naming_it() {
    let stderr = refused_start(
        "[[sink]]\nname = \"p\"\ntopics = [\"t\"]\n\
         target = { kind = \"postgres\", url = { env = \"DRIFTLESS_TEST_SURELY_UNSET\" } }\n",
    );
    assert!(stderr.contains("DRIFTLESS_TEST_SURELY_UNSET"), "{stderr}");
    let stderr = refused_start(
        "[[sink]]\nname = \"p\"\ntopics = [\"t\"]\n\
         target = { kind = \"webhook\", url = \"http://127.0.0.1:9/h\", secret = { file = \"/nonexistent/driftless/hook-secret\" } }\n",
    );
    assert!(stderr.contains("/nonexistent/driftless/hook-secret"), "{stderr}");
}

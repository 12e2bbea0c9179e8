//! OpenAPI-driven property test of the HTTP API: schemathesis reads the document the real
//! `driftless serve` publishes at `/v1/openapi.json`, generates requests for every operation
//! from it (valid and invalid ones: the coverage and fuzzing phases), sends them to that server,
//! and checks every response against the document.
//!
//! What must hold: no response is a 5xx (`not_a_server_error`); every status, content type,
//! header and body is one the document gives for that operation (so every 4xx, which the
//! document gives only as `application/problem+json`, is a problem document); and the document
//! itself is valid and satisfiable (schemathesis reports a schema it cannot generate data for
//! as an error, which fails this test).
//!
//! Bounded for CI: a fixed seed and at most `MAX_EXAMPLES` cases per operation (about four
//! minutes in all on the two-core CI machine, most of it SSE streams held open until the
//! request timeout; 100 cases took five and a half). Path parameters `topic` and `group` name a topic and a group that exist, so
//! the operations on them get past the 404; the others are generated. A failure prints
//! schemathesis's report, with a `curl` command reproducing each finding. Needs schemathesis
//! (`scripts/install-test-deps.sh` installs the pinned version in a virtualenv).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{http, ServeProcess};

/// Cases per operation; the seed fixes which.
const MAX_EXAMPLES: &str = "40";
const SEED: &str = "42";

/// The schemathesis executable: `DRIFTLESS_SCHEMATHESIS`, else the virtualenv that
/// `scripts/install-test-deps.sh` makes, else `schemathesis` on the `PATH`.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("DRIFTLESS_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let venv = PathBuf::from(home).join(".cache/driftless/schemathesis-venv/bin/schemathesis");
        if venv.exists() {
            return venv;
        }
    }
    PathBuf::from("schemathesis")
}

#[test]
fn the_http_api_answers_every_generated_request_as_its_openapi_document_says() {
    let dir = tempfile::tempdir().unwrap();
    // Long polls end well within schemathesis's request timeout.
    let config = dir.path().join("driftless.toml");
    std::fs::write(&config, "[server]\nfetch_wait_ms_max = 200\n").unwrap();
    let data = dir.path().join("data");
    let server = ServeProcess::start_with_args(&data, &["--config", config.to_str().unwrap()]);
    let post = |path: &str, content_type: &str, body: &str| {
        let (status, answer) = http(&server.addr, "POST", path, content_type, body).unwrap();
        assert!((200..300).contains(&status), "POST {path}: {status} {answer}");
    };
    post("/v1/topics", "application/json", r#"{"name":"orders","partitions":2}"#);
    post(
        "/v1/topics/orders/events",
        "application/cloudevents+json",
        r#"{"specversion":"1.0","id":"o-1","source":"/shop","type":"order.created","data":{"total":42}}"#,
    );
    post("/v1/groups/billing/members", "application/json", r#"{"topics":["orders"]}"#);
    let st_config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &st_config,
        "[parameters]\n\"path.topic\" = \"orders\"\n\"path.group\" = \"billing\"\n",
    )
    .unwrap();

    let output = Command::new(schemathesis())
        .arg("--config-file")
        .arg(&st_config)
        .args(["run", &format!("{}/v1/openapi.json", server.base)])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--seed",
            SEED,
            "--max-examples",
            MAX_EXAMPLES,
            // One worker: with two, hypothesis once failed inside its own code ("AST constructor
            // recursion depth mismatch", a runtime error of the tool, not a finding).
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--suppress-health-check",
            "all",
            "--no-color",
        ])
        .current_dir(dir.path())
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; install it with scripts/install-test-deps.sh \
                 (schemathesis==4.32.5 in ~/.cache/driftless/schemathesis-venv)",
                schemathesis().display()
            )
        });
    let report = String::from_utf8_lossy(&output.stdout);
    let summary = report.lines().rev().take(30).collect::<Vec<_>>();
    assert!(
        output.status.success(),
        "schemathesis found responses that break the OpenAPI document, or a document it cannot \
         use ({}):\n{report}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // A run that tested nothing proves nothing.
    assert!(
        report.contains("Tested: ") && !report.contains("Tested: 0"),
        "schemathesis tested no operation:\n{}",
        summary.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    server.kill();
}

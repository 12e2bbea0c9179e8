//! `driftless token create|list|revoke` as an operator runs them, against a real
//! `driftless serve` with `[auth] enabled = true`, and the client commands' `--token` and
//! `--ca-file` against real servers (https with a test CA, and one the CA does not vouch for).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::ServeProcess;

fn driftless(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(args)
        .env_remove("DRIFTLESS_TOKEN")
        .env_remove("DRIFTLESS_DATA_DIR")
        .env_remove("DRIFTLESS_TOKENS_FILE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// GET /v1/topics with `token`: the status.
fn topics_status(base: &str, token: &str) -> u16 {
    let agent = support::agent(Duration::from_secs(10));
    let r =
        agent.get(format!("{base}/v1/topics")).header("authorization", format!("Bearer {token}"));
    r.call().unwrap().status().as_u16()
}

#[test]
fn tokens_are_created_listed_used_and_revoked_within_a_second_from_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("driftless.toml");
    std::fs::write(&config, "[auth]\nenabled = true\n").unwrap();
    let server = ServeProcess::start_with_args(&data, &["--config", config.to_str().unwrap()]);
    let data_arg = data.to_str().unwrap();

    let out = driftless(&[
        "token",
        "create",
        "--name",
        "ops",
        "--scope",
        "admin:*:*",
        "--expires-in-days",
        "30",
        "--data-dir",
        data_arg,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let token = stdout.trim().to_string();
    assert_eq!(stdout.lines().count(), 1, "stdout is the token alone: {stdout:?}");
    assert!(token.starts_with("dlt_") && token.len() == 85, "{token}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("only time") && !stderr.contains(&token), "{stderr}");
    let file = std::fs::read_to_string(data.join("tokens.json")).unwrap();
    let secret = token.rsplit('_').next().unwrap();
    assert!(!file.contains(secret), "the tokens file holds the secret");

    // The running server accepts it (it reloads the file) through the CLI's --token.
    let start = Instant::now();
    loop {
        let out = server.run_cli(&["topic", "list", "--token", &token], "");
        if out.status.success() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(2), "never accepted: {}", text(&out.stderr));
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = server.run_cli(&["topic", "create", "orders", "--token", &token], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = server.run_cli(&["topic", "list"], "");
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("Authentication required"), "{stderr}");

    let out = driftless(&["token", "list", "--data-dir", data_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(listed["name"], "ops");
    assert_eq!(listed["scopes"], serde_json::json!(["admin:*:*"]));
    assert_eq!(listed["expired"], false);
    assert!(listed["expires_at_ms"].as_i64().unwrap() > listed["created_at_ms"].as_i64().unwrap());
    assert!(!text(&out.stdout).contains(secret) && listed.get("secret_sha256").is_none());

    assert_eq!(topics_status(&server.base, &token), 200);
    let out = driftless(&["token", "revoke", "ops", "--data-dir", data_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("revoked token"), "{}", text(&out.stderr));
    let revoked = Instant::now();
    loop {
        let status = topics_status(&server.base, &token);
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(revoked.elapsed() < Duration::from_secs(1), "still accepted 1 s after revoke");
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("revocation from another process took effect in {:?}", revoked.elapsed());
    let out = driftless(&["token", "revoke", "ops", "--data-dir", data_arg]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no token has the id or name"), "{}", text(&out.stderr));
}

#[test]
fn token_create_refuses_bad_scopes_and_names_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.json");
    let f = file.to_str().unwrap();
    let out = driftless(&[
        "token",
        "create",
        "--name",
        "x",
        "--scope",
        "write:topic:*",
        "--tokens-file",
        f,
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("unknown operation \"write\""), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    let out = driftless(&[
        "token",
        "create",
        "--name",
        "a b",
        "--scope",
        "read:topic:*",
        "--tokens-file",
        f,
    ]);
    assert!(text(&out.stderr).contains("not valid"), "{}", text(&out.stderr));
    let out = driftless(&["token", "create", "--name", "x", "--tokens-file", f]);
    assert!(!out.status.success(), "a token without scopes was made");
    assert!(!file.exists());
}

#[test]
fn token_commands_find_the_tokens_file_the_server_config_names() {
    let dir = tempfile::tempdir().unwrap();
    let custom = dir.path().join("custom-tokens.json");
    let config = dir.path().join("driftless.toml");
    std::fs::write(&config, format!("[auth]\ntokens_file = {:?}\n", custom.to_str().unwrap()))
        .unwrap();
    let c = config.to_str().unwrap();
    let out =
        driftless(&["token", "create", "--name", "a", "--scope", "read:topic:*", "--config", c]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(custom.exists(), "the config's tokens_file was not used");
    let out = driftless(&["token", "list", "--config", c]);
    assert_eq!(text(&out.stdout).lines().count(), 1, "{}", text(&out.stdout));
}

/// A one-connection https server with `cert`/`key`: answers `[]` to one request and returns
/// the request's head (or the handshake error).
fn https_once(cert: &Path, key: &Path) -> (u16, std::thread::JoinHandle<Result<String, String>>) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tls.read_exact(&mut byte).map_err(|e| e.to_string())?;
            head.push(byte[0]);
        }
        let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                      content-length: 2\r\nconnection: close\r\n\r\n[]";
        tls.write_all(answer.as_bytes()).map_err(|e| e.to_string())?;
        tls.flush().map_err(|e| e.to_string())?;
        tls.conn.send_close_notify();
        let _ = tls.flush();
        Ok(String::from_utf8_lossy(&head).into_owned())
    });
    (port, handle)
}

#[test]
fn client_commands_verify_an_https_server_with_the_ca_file_and_send_the_token() {
    let ca = driftless_testkit::TestCa::new("driftless-cli-test").unwrap();
    let (port, server) = https_once(&ca.server().cert_path, &ca.server().key_path);
    let token = format!("dlt_{}_{}", "1".repeat(16), "2".repeat(64));
    let out = driftless(&[
        "topic",
        "list",
        "--server",
        &format!("https://localhost:{port}"),
        "--ca-file",
        ca.ca_path().to_str().unwrap(),
        "--token",
        &token,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let head = server.join().unwrap().unwrap();
    assert!(head.starts_with("GET /v1/topics HTTP/1.1"), "{head}");
    assert!(head.to_lowercase().contains(&format!("authorization: bearer {token}")), "{head}");

    // A server whose certificate another CA issued is refused, and the token never sent.
    let other = driftless_testkit::TestCa::new("someone-else").unwrap();
    let (port, server) = https_once(&other.server().cert_path, &other.server().key_path);
    let out = driftless(&[
        "topic",
        "list",
        "--server",
        &format!("https://localhost:{port}"),
        "--ca-file",
        ca.ca_path().to_str().unwrap(),
        "--token",
        &token,
    ]);
    assert!(!out.status.success(), "an untrusted server was accepted");
    let stderr = text(&out.stderr);
    assert!(!stderr.contains(&token), "{stderr}");
    assert!(server.join().unwrap().is_err(), "the request reached the untrusted server");
}

#[test]
fn no_token_or_session_cookie_reaches_the_server_log_even_at_debug_level() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("driftless.toml");
    std::fs::write(&config, "[auth]\nenabled = true\n").unwrap();
    let d = data.to_str().unwrap();
    let out = driftless(&[
        "token",
        "create",
        "--name",
        "ops",
        "--scope",
        "read:topic:*",
        "--data-dir",
        d,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    let log_path = dir.path().join("server.log");
    let addr = format!("127.0.0.1:{}", support::free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(["serve", "--listen", &addr, "--data-dir", d, "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "debug")
        .env_remove("DRIFTLESS_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://{addr}");
    let start = Instant::now();
    while support::http(&addr, "GET", "/healthz", "text/plain", "").is_none_or(|r| r.0 != 200) {
        assert!(start.elapsed() < Duration::from_secs(60), "the server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let agent = support::agent(Duration::from_secs(10));
    let wrong = format!("dlt_{}_{}", "7".repeat(16), "8".repeat(64));
    for t in [&token, &wrong] {
        let r =
            agent.get(format!("{base}/v1/topics")).header("authorization", format!("Bearer {t}"));
        r.call().unwrap();
    }
    let r = agent
        .post(format!("{base}/v1/session"))
        .header("content-type", "application/json")
        .send(serde_json::json!({"token": token}).to_string().as_bytes())
        .unwrap();
    assert_eq!(r.status(), 200);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let cookie = set["driftless_session=".len()..].split(';').next().unwrap().to_string();
    for path in ["/v1/topics", "/v1/groups"] {
        let r = agent
            .get(format!("{base}{path}"))
            .header("cookie", format!("driftless_session={cookie}"));
        r.call().unwrap();
    }
    let r = agent.delete(format!("{base}/v1/session"));
    r.header("cookie", format!("driftless_session={cookie}")).call().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("request refused"), "the refusals were not logged:\n{log}");
    for (what, secret) in [
        ("token", token.as_str()),
        ("token secret", token.rsplit('_').next().unwrap()),
        ("wrong token", wrong.as_str()),
        ("wrong token's secret", wrong.rsplit('_').next().unwrap()),
        ("session cookie", cookie.as_str()),
    ] {
        assert!(!log.contains(secret), "the {what} is in the server log:\n{log}");
    }
}

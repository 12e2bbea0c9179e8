//! A new user following README.md: the shell and toml blocks marked `<!-- test: NAME -->` in the
//! README are read from the file and run as written (the `driftless` on `PATH` is the binary
//! under test), so an example that stops working, or prints something other than its comment
//! says, fails here instead of in front of a reader. Plus regression tests for what the
//! walkthrough found wrong in the CLI's own messages (issue 22: tell the operator the truth, and
//! what to do).
//!
//! Adaptations, each said where it is made: the README's `cargo build` line is this test's build;
//! servers listen on a free loopback port instead of 7070 (the machine is shared), so commands
//! get `DRIFTLESS_SERVER` or `DRIFTLESS_LISTEN`; `https://driftless.internal` is `localhost` (no
//! such DNS name here) and `/etc/driftless/` files are a test CA's, in the test's directory.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::ServeProcess;

/// The README's fenced blocks that follow a `<!-- test: TAG ... -->` line, as (language, body).
fn readme_blocks(tag: &str) -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let marker = format!("<!-- test: {tag}");
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix(&marker) else { continue };
        assert!(rest.starts_with(' '), "marker {line:?} is not `{marker} ...-->`");
        let fence = lines.next().unwrap_or_default();
        let lang = fence.strip_prefix("```").unwrap_or_else(|| {
            panic!("README: {line:?} must be followed by a fenced block, found {fence:?}")
        });
        let body: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
        blocks.push((lang.to_string(), body.join("\n")));
    }
    assert!(!blocks.is_empty(), "README.md has no block marked `{marker} -->`");
    blocks
}

/// The commands of a shell block: `\`-continued lines joined, comment-only lines dropped, each
/// command with its trailing `# comment` (outside quotes) split off.
fn shell_commands(block: &str) -> Vec<(String, String)> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head);
            continue;
        }
        current.push_str(line);
        joined.push(std::mem::take(&mut current));
    }
    joined
        .into_iter()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (mut single, mut double, mut previous) = (false, false, ' ');
            for (i, c) in l.char_indices() {
                match c {
                    '\'' if !double => single = !single,
                    '"' if !single => double = !double,
                    '#' if !single && !double && previous.is_whitespace() => {
                        return (l[..i].trim().to_string(), l[i + 1..].trim().to_string());
                    }
                    _ => {}
                }
                previous = c;
            }
            (l, String::new())
        })
        .collect()
}

/// `sh -c command` in `dir`, with the binary under test first on `PATH`, none of the caller's
/// Driftless settings, and `env` on top.
fn sh(command: &str, dir: &Path, env: &[(&str, &str)]) -> Output {
    let bin = Path::new(env!("CARGO_BIN_EXE_driftless")).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command).current_dir(dir).env("PATH", path);
    for var in [
        "DRIFTLESS_SERVER",
        "DRIFTLESS_TOKEN",
        "DRIFTLESS_CA_FILE",
        "DRIFTLESS_OUTPUT",
        "DRIFTLESS_CONFIG",
        "DRIFTLESS_DATA_DIR",
        "DRIFTLESS_TOKENS_FILE",
        "DRIFTLESS_LISTEN",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null()).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A `driftless serve` started by a test other than through [`ServeProcess`] (over TLS, or from
/// a README line), killed and reaped on drop.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts connections on 127.0.0.1:`port`, or panics if `serve` exits.
fn wait_listening(serve: &mut Serve, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = serve.0.try_wait().unwrap() {
            panic!("driftless serve exited at start ({status}); see its stderr above");
        }
        assert!(Instant::now() < deadline, "driftless serve never listened on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `driftless serve --listen 127.0.0.1:<free port> ARGS` over `data`, serving https with the
/// test CA's loopback certificate.
fn serve_tls(ca: &driftless_testkit::TestCa, data: &Path) -> (Serve, u16) {
    let port = support::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data)
        .arg("--tls-cert")
        .arg(&ca.server().cert_path)
        .arg("--tls-key")
        .arg(&ca.server().key_path)
        .env_remove("DRIFTLESS_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut serve = Serve(child);
    wait_listening(&mut serve, port);
    (serve, port)
}

#[test]
fn the_using_the_broker_walkthrough_prints_what_the_readme_says() {
    // The README showed `"partition":1` for subject c-1 on 4 partitions; murmur2 (Kafka's) puts
    // it on 3. Every command must succeed, and a `# {json}` comment is the exact output.
    let dir = tempfile::tempdir().unwrap();
    let (_, block) = readme_blocks("using-the-broker").remove(0);
    let server = ServeProcess::start(&dir.path().join("driftless-data"));
    let env = [("DRIFTLESS_SERVER", server.base.as_str())];
    let mut ran = 0;
    for (command, comment) in shell_commands(&block) {
        if command.starts_with("cargo build") {
            continue; // this test's own build is the binary on PATH
        }
        if command.starts_with("driftless serve") {
            // The server above stands in for it, on a free port (DRIFTLESS_SERVER says which).
            assert!(command.contains("--data-dir ./driftless-data"), "{command}");
            continue;
        }
        let out = sh(&command, dir.path(), &env);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "README command failed ({}):\n$ {command}\n{stdout}{}",
            out.status,
            text(&out.stderr)
        );
        if comment.starts_with('{') {
            let said: serde_json::Value = serde_json::from_str(&comment).unwrap();
            let got: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
                panic!("$ {command}\nprinted {stdout:?}, not the one JSON line shown: {e}")
            });
            assert_eq!(got, said, "README shows a different output for:\n$ {command}");
        }
        ran += 1;
    }
    assert!(ran >= 5, "only {ran} commands ran from the README block");
}

#[test]
fn the_securing_walkthrough_and_its_config_blocks_work_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let ca = driftless_testkit::TestCa::new("readme-securing").unwrap();
    // The files the README's config names, from a test CA, where the config will find them.
    std::fs::copy(&ca.server().cert_path, dir.path().join("tls.crt")).unwrap();
    std::fs::copy(&ca.server().key_path, dir.path().join("tls.key")).unwrap();
    std::fs::copy(ca.ca_path(), dir.path().join("ca.pem")).unwrap();

    let blocks = readme_blocks("securing");
    let toml: Vec<&str> =
        blocks.iter().filter(|(lang, _)| lang == "toml").map(|(_, b)| b.as_str()).collect();
    assert!(toml.len() >= 3, "expected the [server], [server.tls] and [auth] blocks");
    let config = toml.join("\n").replace("/etc/driftless/", "");
    std::fs::write(dir.path().join("driftless.toml"), config).unwrap();
    let (_, sh_block) = blocks.iter().find(|(lang, _)| lang == "sh").unwrap();
    let commands = shell_commands(sh_block);
    assert_eq!(commands.len(), 3, "{commands:?}");

    // 1. The token, printed once on stdout.
    let (create, _) = &commands[0];
    let out = sh(create, dir.path(), &[]);
    assert!(out.status.success(), "$ {create}\n{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    assert!(token.starts_with("dlt_"), "$ {create}\nprinted {token:?}");

    // 2. The server, with the config as the README gives it (on a free port, not 7070).
    let (serve, _) = &commands[1];
    assert!(serve.starts_with("driftless serve"), "{serve}");
    let port = support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let bin = Path::new(env!("CARGO_BIN_EXE_driftless")).parent().unwrap();
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {serve}"))
        .current_dir(dir.path())
        .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
        .env("DRIFTLESS_LISTEN", &listen)
        .env_remove("DRIFTLESS_CONFIG")
        .env_remove("DRIFTLESS_DATA_DIR")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Serve(child);
    wait_listening(&mut server, port);

    // 3. A client over https with the token and the CA file.
    let (client, _) = &commands[2];
    assert!(client.contains("dlt_…") && client.contains("driftless.internal:7070"), "{client}");
    let client = client
        .replace("dlt_…", &token)
        .replace("driftless.internal:7070", &format!("localhost:{port}"));
    let out = sh(&client, dir.path(), &[]);
    assert!(out.status.success(), "$ {client}\n{}", text(&out.stderr));
    // An empty server lists no topics: nothing on stdout.
    assert_eq!(text(&out.stdout), "", "$ {client}");
}

#[test]
fn a_certificate_refused_for_want_of_the_ca_file_names_the_ca_file_flag() {
    // Was: `GET https://localhost:P/v1/topics failed: io: invalid peer certificate:
    // UnknownIssuer`, which names the symptom but not the flag that fixes it.
    let dir = tempfile::tempdir().unwrap();
    let ca = driftless_testkit::TestCa::new("readme-ca-hint").unwrap();
    let (_server, port) = serve_tls(&ca, &dir.path().join("data"));
    let out =
        sh(&format!("driftless --server https://localhost:{port} topic list"), dir.path(), &[]);
    assert!(!out.status.success(), "a server from an unknown CA was accepted");
    let stderr = text(&out.stderr);
    for hint in ["certificate", "--ca-file", "DRIFTLESS_CA_FILE"] {
        assert!(stderr.contains(hint), "missing {hint:?} in: {stderr}");
    }
    // With the CA file the same command works.
    let out = sh(
        &format!("driftless --server https://localhost:{port} topic list"),
        dir.path(),
        &[("DRIFTLESS_CA_FILE", ca.ca_path().to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn the_wrong_scheme_for_the_server_says_to_use_the_other_one() {
    // Was: `protocol: http parse fail: invalid HTTP version` (http:// to a TLS server) and
    // `io: received corrupt message of type InvalidContentType` (https:// to a plain one).
    let dir = tempfile::tempdir().unwrap();
    let ca = driftless_testkit::TestCa::new("readme-scheme").unwrap();
    let (_tls, tls_port) = serve_tls(&ca, &dir.path().join("tls"));
    let out =
        sh(&format!("driftless --server http://localhost:{tls_port} topic list"), dir.path(), &[]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("use https://"), "{stderr}");

    let plain = ServeProcess::start(&dir.path().join("plain"));
    let https = plain.base.replace("http://", "https://");
    let out = sh(
        &format!("driftless --server {https} topic list"),
        dir.path(),
        &[("DRIFTLESS_CA_FILE", ca.ca_path().to_str().unwrap())],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("use http://"), "{stderr}");
}

#[test]
fn a_401_says_where_the_cli_took_its_token_from() {
    // Was: the server's `send Authorization: Bearer <token>` / `token rejected: unknown or
    // revoked`, which never says that the CLI's token comes from --token / DRIFTLESS_TOKEN.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("driftless.toml");
    std::fs::write(&config, "[auth]\nenabled = true\n").unwrap();
    let server = ServeProcess::start_with_args(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let env = [("DRIFTLESS_SERVER", server.base.as_str())];

    let out = sh("driftless topic list", dir.path(), &env);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("sent no token") && stderr.contains("DRIFTLESS_TOKEN"), "{stderr}");

    let unknown = format!("dlt_{}_{}", "1".repeat(16), "2".repeat(64));
    let out = sh("driftless topic list", dir.path(), &[env[0], ("DRIFTLESS_TOKEN", &unknown)]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(!stderr.contains(&unknown), "the token was printed: {stderr}");
    for hint in ["--token / DRIFTLESS_TOKEN", "driftless token list"] {
        assert!(stderr.contains(hint), "missing {hint:?} in: {stderr}");
    }
}

#[test]
fn a_demo_whose_address_is_taken_says_to_pick_another_with_listen() {
    // Was: `demo step `listen` failed: 127.0.0.1:7070: Address already in use`, the usual
    // outcome of a second `driftless demo --keep-running` (README: "Set up a fresh Debian
    // machine"), without saying how to get past it. A held port stands in for 7070 here.
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = sh(&format!("driftless demo --keep-running --listen {addr}"), dir.path(), &[]);
    assert!(!out.status.success(), "the demo ran on a taken address");
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&addr) && stderr.contains("--listen 127.0.0.1:PORT"), "{stderr}");
}

#[test]
fn consume_range_errors_say_what_the_number_is_and_its_real_bounds() {
    // Was: `--max 0` answered `0 is not in 1..18446744073709551615`, and `--wait-ms` took any
    // number, to be refused by the server after the group was joined.
    let dir = tempfile::tempdir().unwrap();
    let out = sh("driftless consume customers --group billing --max 0", dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("at least 1") && !stderr.contains("18446744073709551615"), "{stderr}");
    let out = sh("driftless consume customers --group billing --wait-ms 86400001", dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("86400000") && !stderr.contains("joining"), "{stderr}");
}

#[test]
fn a_token_works_on_its_first_request_right_after_token_create() {
    // README "API tokens and scopes": `driftless token create ...` then
    // `DRIFTLESS_TOKEN=dlt_… driftless produce ...`. The server looked at the tokens file at most
    // every 250 ms, so right after any other request a new token was refused as "unknown or
    // revoked".
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("driftless.toml");
    std::fs::write(&config, "[auth]\nenabled = true\n").unwrap();
    let data = dir.path().join("data");
    let server = ServeProcess::start_with_args(&data, &["--config", config.to_str().unwrap()]);
    let data = data.to_str().unwrap();
    let env = [("DRIFTLESS_SERVER", server.base.as_str()), ("DRIFTLESS_DATA_DIR", data)];
    for round in 0..3 {
        let name = format!("fresh-{round}");
        // Any request, so that the server has just looked at the file.
        let _ = sh("driftless topic list", dir.path(), &env);
        let out = sh(
            &format!("driftless token create --name {name} --scope 'read:topic:*'"),
            dir.path(),
            &env,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let token = text(&out.stdout).trim().to_string();
        let out = sh("driftless topic list", dir.path(), &[env[0], ("DRIFTLESS_TOKEN", &token)]);
        assert!(out.status.success(), "round {round}: {}", text(&out.stderr));
    }
}

//! `driftless serve`'s safe default and TLS flags, through the real binary (issue 21): listening
//! beyond loopback without authentication is refused at start with an error that says what to
//! do, unless the flag whose name says it is insecure is given; `--tls-cert`/`--tls-key` make it
//! announce and serve https.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A `driftless serve` child over its own data directory, killed and reaped on drop.
struct Serve(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(args: &[&str]) -> Serve {
    let data = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data.path())
        .args(args)
        .env_remove("DRIFTLESS_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Serve(child, data)
}

/// Reads the child's stderr until a line contains `needle` (returned) or it ends (`None`,
/// with everything read).
fn wait_for_line(s: &mut Serve, needle: &'static str) -> Result<String, String> {
    let stderr = s.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(needle) {
                let _ = tx.send(Ok(line));
                return;
            }
        }
        let _ = tx.send(Err(seen));
    });
    rx.recv_timeout(Duration::from_secs(120)).expect("serve neither started nor exited")
}

#[test]
fn serving_beyond_loopback_without_auth_is_refused_with_what_to_do() {
    let mut s = serve(&["--listen", "0.0.0.0:0"]);
    let stderr = wait_for_line(&mut s, "listening on").unwrap_err();
    let status = s.0.wait().unwrap();
    assert!(!status.success(), "{stderr}");
    for hint in ["0.0.0.0:0", "[auth] enabled = true", "--insecure-allow-unauthenticated-remote"] {
        assert!(stderr.contains(hint), "missing {hint:?} in: {stderr}");
    }
}

#[test]
fn the_insecure_flag_lets_it_serve_beyond_loopback() {
    let mut s = serve(&["--listen", "0.0.0.0:0", "--insecure-allow-unauthenticated-remote"]);
    let line = wait_for_line(&mut s, "listening on").unwrap();
    assert!(line.contains("listening on http://0.0.0.0:"), "{line}");
}

#[test]
fn tls_flags_make_it_serve_https() {
    let ca = driftless_testkit::TestCa::new("serve-ca").unwrap();
    let cert = ca.server().cert_path.to_str().unwrap().to_string();
    let key = ca.server().key_path.to_str().unwrap().to_string();
    let mut s = serve(&["--listen", "127.0.0.1:0", "--tls-cert", &cert, "--tls-key", &key]);
    let line = wait_for_line(&mut s, "listening on").unwrap();
    assert!(line.contains("listening on https://127.0.0.1:"), "{line}");
    // A key that is not the certificate's stops the start-up, naming the file.
    let other = driftless_testkit::TestCa::new("other-ca").unwrap();
    let wrong = other.server().key_path.to_str().unwrap().to_string();
    let mut bad = serve(&["--listen", "127.0.0.1:0", "--tls-cert", &cert, "--tls-key", &wrong]);
    let stderr = wait_for_line(&mut bad, "listening on").unwrap_err();
    assert!(stderr.contains(&wrong) && stderr.contains("does not go with"), "{stderr}");
}

//! Shared by the CLI's integration tests: the real `driftless serve` binary as a child process on
//! a free loopback port (or a given one, to restart it where its clients expect it), ready when
//! `/healthz` answers, killed (SIGKILL) and reaped on drop so a failing assertion never leaves a
//! server behind; and small HTTP clients for it (raw HTTP/1.1, and a JSON client over `ureq`
//! whose failures are answers, not errors, so crash tests can count them).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
#![allow(dead_code)] // each test file uses a different subset

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `driftless serve`.
pub struct ServeProcess {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl ServeProcess {
    /// Starts `driftless serve` over `data_dir` on a free port (retrying on another port if it
    /// exits at start, as when another process took the port) and waits until it is healthy.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with_args(data_dir, &[])
    }

    /// [`ServeProcess::start`] with more `serve` arguments (e.g. `--config FILE`).
    pub fn start_with_args(data_dir: &Path, extra: &[&str]) -> Self {
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_driftless"));
            cmd.args(["serve", "--listen", &addr, "--data-dir"]).arg(data_dir).args(extra);
            let child = spawn(cmd);
            let mut server = Self { child, base: format!("http://{addr}"), addr };
            if server.wait_healthy(Duration::from_secs(120)) {
                return server;
            }
        }
        panic!("driftless serve could not start on any of 5 ports");
    }

    /// Starts `driftless serve` with the listen address and data directory given through the
    /// `DRIFTLESS_LISTEN` / `DRIFTLESS_DATA_DIR` environment variables instead of flags.
    pub fn start_with_env(port: u16, data_dir: &Path) -> Self {
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_driftless"));
        cmd.arg("serve").env("DRIFTLESS_LISTEN", &addr).env("DRIFTLESS_DATA_DIR", data_dir);
        let child = spawn(cmd);
        let mut server = Self { child, base: format!("http://{addr}"), addr };
        assert!(server.wait_healthy(Duration::from_secs(60)), "driftless serve did not start");
        server
    }

    /// Starts `driftless serve` on exactly `addr` (as a restart on the port its clients use),
    /// with more arguments and environment, and waits until it is healthy; panics, naming the
    /// address, if it exits first (the port was taken, or the data directory refused).
    pub fn start_at(addr: &str, data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let child = spawn_serve(addr, data_dir, extra, env);
        let mut server = Self { child, base: format!("http://{addr}"), addr: addr.to_string() };
        assert!(
            server.wait_healthy(Duration::from_secs(120)),
            "driftless serve exited at start on {addr} over {} (see its stderr above)",
            data_dir.display()
        );
        server
    }

    /// Polls `/healthz`; false if the process exited first.
    fn wait_healthy(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                eprintln!("driftless serve exited at start ({status})");
                return false;
            }
            if http(&self.addr, "GET", "/healthz", "text/plain", "").is_some_and(|r| r.0 == 200) {
                return true;
            }
            assert!(Instant::now() < deadline, "driftless serve never became healthy");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs the client command `driftless ARGS` against this server with `stdin` as input.
    pub fn run_cli(&self, args: &[&str], stdin: &str) -> std::process::Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_driftless"))
            .args(args)
            .args(["--server", &self.base])
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child process, for waiting on its exit status.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// SIGKILL, and reap.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends `signal` ("STOP", "CONT", "TERM", ...) to the server; panics if it was not
    /// delivered (the process is gone).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id();
        assert!(driftless_testkit::send_signal(pid, signal), "SIG{signal} to server {pid} failed");
    }

    /// How the server exited, if it did (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// SIGTERM, as an operator stops it, and its exit status; `None` (after a SIGKILL) when it
    /// was still running `within` later.
    pub fn terminate(mut self, within: Duration) -> Option<ExitStatus> {
        self.signal("TERM");
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None // dropping `self` kills and reaps it
    }

    /// (VmRSS, VmHWM) of the server in kB, from `/proc/<pid>/status`.
    pub fn rss_kb(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| -> u64 {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| {
                panic!("no {name} in /proc/{}/status:\n{status}", self.child.id())
            });
            line[name.len()..].trim().trim_end_matches("kB").trim().parse().unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `driftless serve` on `addr` over `data_dir` with more arguments and environment,
/// without waiting for it to become healthy (a crash test's child may die before that).
pub fn spawn_serve(addr: &str, data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_driftless"));
    cmd.args(["serve", "--listen", addr, "--data-dir"]).arg(data_dir).args(extra);
    spawn_with_env(cmd, env)
}

fn spawn(cmd: Command) -> Child {
    spawn_with_env(cmd, &[])
}

/// Spawns with the tests' environment, then `env` on top (e.g. another `RUST_LOG`).
fn spawn_with_env(mut cmd: Command, env: &[(&str, &str)]) -> Child {
    cmd.env_remove("DRIFTLESS_CONFIG")
        .env_remove("DRIFTLESS_SERVER")
        .env("RUST_LOG", "warn")
        // mimalloc (the binary's allocator) keeps freed pages for a second before returning
        // them; tests that read the server's RSS should see live memory, not that cache.
        .env("MIMALLOC_PURGE_DELAY", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().unwrap()
}

/// One HTTP/1.1 request with `Connection: close` to `addr`; returns (status, body), or `None`
/// when the server cannot be reached.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

// ---- a JSON client ------------------------------------------------------------------------------

/// A `ureq` agent whose every request ends within `timeout` (connecting within 1 s), and that
/// hands back error statuses as answers.
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(1).min(timeout)))
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// The status and JSON body of an answered request; `None` when the request or the reading of
/// its answer failed. A body that is not JSON comes back as a string.
pub fn answer(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Option<(u16, serde_json::Value)> {
    answer_or_why_not(result).ok()
}

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAnswer {
    /// The agent's timeout passed first (a stopped or overloaded server).
    TimedOut,
    /// Anything else: refused or reset connection (a dead server), a broken answer.
    Failed,
}

/// [`answer`], saying why there was none.
pub fn answer_or_why_not(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, serde_json::Value), NoAnswer> {
    let why = |e: ureq::Error| match e {
        ureq::Error::Timeout(_) => NoAnswer::TimedOut,
        _ => NoAnswer::Failed,
    };
    let mut response = result.map_err(why)?;
    let status = response.status().as_u16();
    let bytes = response.body_mut().with_config().limit(64 << 20).read_to_vec().map_err(why)?;
    if bytes.is_empty() {
        return Ok((status, serde_json::Value::Null));
    }
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    });
    Ok((status, body))
}

/// One request: `GET`, `DELETE` or `POST` (with `body` as `(content type, JSON)`, or empty).
pub fn request(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<(&str, &serde_json::Value)>,
) -> Result<(u16, serde_json::Value), NoAnswer> {
    let result = match (method, body) {
        ("GET", None) => agent.get(url).call(),
        ("DELETE", None) => agent.delete(url).call(),
        ("POST", Some((content_type, body))) => {
            let bytes = serde_json::to_vec(body).unwrap();
            agent.post(url).header("content-type", content_type).send(&bytes[..])
        }
        ("POST", None) => agent.post(url).send_empty(),
        _ => panic!("support::request: {method} with a body is not supported"),
    };
    answer_or_why_not(result)
}

/// `GET url`, see [`answer`].
pub fn get(agent: &ureq::Agent, url: &str) -> Option<(u16, serde_json::Value)> {
    request(agent, "GET", url, None).ok()
}

/// `POST url` with `body` as `content_type`, see [`answer`].
pub fn post(
    agent: &ureq::Agent,
    url: &str,
    content_type: &str,
    body: &serde_json::Value,
) -> Option<(u16, serde_json::Value)> {
    request(agent, "POST", url, Some((content_type, body))).ok()
}

/// `DELETE url`, see [`answer`].
pub fn delete(agent: &ureq::Agent, url: &str) -> Option<(u16, serde_json::Value)> {
    request(agent, "DELETE", url, None).ok()
}

/// A request the test needs answered with `expect`; anything else fails the test.
pub fn must(what: &str, got: Option<(u16, serde_json::Value)>, expect: u16) -> serde_json::Value {
    match got {
        Some((status, body)) if status == expect => body,
        Some((status, body)) => panic!("{what}: expected {expect}, got {status}: {body}"),
        None => panic!("{what}: the server did not answer"),
    }
}

/// A running `driftless serve` over its own temporary data directory, removed with it.
pub struct TempServer {
    pub serve: ServeProcess,
    _dir: tempfile::TempDir,
}

impl TempServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let serve = ServeProcess::start(dir.path());
        Self { serve, _dir: dir }
    }

    /// Runs `driftless ARGS` against this server with `stdin` as input.
    pub fn run(&self, args: &[&str], stdin: &str) -> std::process::Output {
        self.serve.run_cli(args, stdin)
    }
}

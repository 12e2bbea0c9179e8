//! A throwaway NATS server with JetStream for tests, on a free loopback port.
//!
//! Invariants:
//! - JetStream stores its data in a scratch directory, removed on drop after the server has
//!   exited; no server process outlives its [`NatsServer`].
//! - [`NatsServer::start`] returns only once this server answers: each start gets a unique
//!   server name, and readiness requires the `INFO` line on the port to carry that name, so a
//!   different server that took the port is never mistaken for ours.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::error::{Result, TestkitError};
use crate::process::{
    find_on_path, log_tail, redirect_output, start_on_free_port, ServerProcess, Startup, POLL,
};

/// Name used in errors and logs.
const SERVER: &str = "NATS";
/// Overrides the binary lookup.
const BIN_ENV: &str = "DRIFTLESS_NATS_BIN";
/// Where Debian and Ubuntu install it.
const DEFAULT_BIN: &str = "/usr/sbin/nats-server";
/// What to do when the binary is missing.
const INSTALL_HINT: &str = "install it with `apt-get install -y nats-server`, or set \
                            DRIFTLESS_NATS_BIN to the nats-server binary";
/// How long startup may take.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown after SIGTERM may take before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Makes server names unique within this process.
static STARTS: AtomicU64 = AtomicU64::new(0);

/// A running, throwaway `nats-server` with JetStream enabled, listening on
/// `127.0.0.1:<port>` without authentication.
///
/// Dropping it shuts the server down (SIGTERM, then SIGKILL after 5 s) and removes its
/// JetStream store.
#[derive(Debug)]
pub struct NatsServer {
    /// Declared first: stopped before the scratch directory goes.
    process: ServerProcess,
    port: u16,
    log_path: PathBuf,
    /// Holds the JetStream store and the log; `None` once removed.
    scratch: Option<TempDir>,
}

impl NatsServer {
    /// Starts `nats-server -js` on a free loopback port with a fresh JetStream store, waiting
    /// (up to 30 s) until it greets clients.
    ///
    /// The binary is `DRIFTLESS_NATS_BIN` if set, else `nats-server` on `PATH`, else
    /// `/usr/sbin/nats-server`.
    pub fn start() -> Result<Self> {
        let bin = locate_binary()?;
        let base = std::env::temp_dir();
        let scratch = tempfile::Builder::new()
            .prefix("driftless-nats-")
            .tempdir_in(&base)
            .map_err(|source| TestkitError::Io {
                op: "create a scratch directory in",
                path: base,
                source,
            })?;
        let store = scratch.path().join("jetstream");
        let log_path = scratch.path().join("nats.log");
        let (process, port) = start_on_free_port(SERVER, |port| {
            let name = format!(
                "driftless-test-{}-{}-{}",
                std::process::id(),
                port,
                STARTS.fetch_add(1, Ordering::Relaxed)
            );
            let mut cmd = Command::new(&bin);
            cmd.arg("-js")
                .arg("-sd")
                .arg(&store)
                .args(["-a", "127.0.0.1", "-p"])
                .arg(port.to_string())
                .arg("-n")
                .arg(&name)
                .current_dir(scratch.path());
            redirect_output(&mut cmd, &log_path)?;
            let mut process = ServerProcess::spawn(SERVER, &mut cmd, false, "TERM", STOP_GRACE)?;
            wait_ready(&mut process, port, &name, &log_path)?;
            tracing::debug!(port, "NATS ready");
            Ok((process, port))
        })?;
        Ok(Self { process, port, log_path, scratch: Some(scratch) })
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The client URL: `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log file (removed on drop).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.process.stop();
        if let Some(scratch) = self.scratch.take() {
            let path = scratch.path().to_owned();
            if let Err(e) = scratch.close() {
                tracing::warn!(dir = %path.display(), error = %e, "could not remove NATS scratch directory");
            }
        }
    }
}

/// `DRIFTLESS_NATS_BIN`, else `nats-server` on `PATH`, else [`DEFAULT_BIN`].
fn locate_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os(BIN_ENV).filter(|bin| !bin.is_empty()) {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(TestkitError::MissingBinary {
                program: "nats-server",
                looked_at: format!("{} (from {BIN_ENV})", bin.display()),
                remedy: INSTALL_HINT,
            })
        };
    }
    find_on_path("nats-server")
        .or_else(|| Some(PathBuf::from(DEFAULT_BIN)).filter(|bin| bin.is_file()))
        .ok_or_else(|| TestkitError::MissingBinary {
            program: "nats-server",
            looked_at: format!("PATH and {DEFAULT_BIN}"),
            remedy: INSTALL_HINT,
        })
}

/// Polls until the server greets clients with an `INFO` line carrying `name`, exits, or
/// [`READY_TIMEOUT`] passes.
fn wait_ready(
    process: &mut ServerProcess,
    port: u16,
    name: &str,
    log: &Path,
) -> std::result::Result<(), Startup> {
    let started = Instant::now();
    loop {
        if let Some(status) = process.exit_status() {
            return Err(Startup::exited(SERVER, port, status, log, "address already in use"));
        }
        if server_name(port).as_deref() == Some(name) {
            return Ok(());
        }
        if started.elapsed() >= READY_TIMEOUT {
            return Err(Startup::Failed(TestkitError::NotReady {
                server: SERVER,
                port,
                waited: started.elapsed(),
                log: log.to_owned(),
                log_tail: log_tail(log),
            }));
        }
        thread::sleep(POLL);
    }
}

/// Connects to the port and returns `server_name` from the `INFO {...}` line a NATS server sends
/// first, or `None` if nothing there speaks NATS (yet).
fn server_name(port: u16) -> Option<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    let json = line.trim_end().strip_prefix("INFO ")?;
    let info: serde_json::Value = serde_json::from_str(json).ok()?;
    info.get("server_name")?.as_str().map(str::to_owned)
}

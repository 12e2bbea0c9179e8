//! Process plumbing shared by the servers: finding binaries, running short helper commands,
//! reading log tails, and owning a long-running server process until it is stopped and reaped.
//!
//! Invariants:
//! - No `unsafe`: signals are sent with the `kill` program, and the effective uid comes from
//!   `id -u`.
//! - A [`ServerProcess`] is always stopped and reaped when dropped: the shutdown signal goes to
//!   the server itself (through a `runuser` wrapper too, see [`ServerProcess::server_pid`]), and
//!   after the grace period it is killed with SIGKILL. No process outlives its owner.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Result, TestkitError};

/// How often startup and shutdown loops poll.
pub(crate) const POLL: Duration = Duration::from_millis(50);

/// How many log lines errors quote.
const LOG_TAIL_LINES: usize = 30;

/// A command line as text, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `cmd` to completion with captured output. Returns its trimmed stdout, or
/// [`TestkitError::CommandFailed`] with its output if it exited unsuccessfully.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let output = output_of(cmd)?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned());
    }
    let mut text = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !stdout.trim().is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(stdout.trim());
    }
    Err(TestkitError::CommandFailed {
        command: describe(cmd),
        status: output.status.to_string(),
        output: text,
    })
}

/// Runs `cmd` to completion with captured output, whatever its exit status.
pub(crate) fn output_of(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| TestkitError::Spawn { command: describe(cmd), source })
}

/// Whether this process runs as root, from `id -u`.
pub(crate) fn running_as_root() -> Result<bool> {
    Ok(run(Command::new("id").arg("-u"))? == "0")
}

/// The numeric uid and gid of `user`, from `id -u` and `id -g`.
pub(crate) fn user_ids(user: &'static str, server: &'static str) -> Result<(u32, u32)> {
    let lookup = |flag: &str| -> Result<u32> {
        let text = run(Command::new("id").arg(flag).arg(user))
            .map_err(|e| TestkitError::MissingUser { server, user, detail: e.to_string() })?;
        text.parse().map_err(|_| TestkitError::MissingUser {
            server,
            user,
            detail: format!("`id {flag} {user}` printed {text:?}, not a number"),
        })
    };
    Ok((lookup("-u")?, lookup("-g")?))
}

/// The first directory of `PATH` holding an executable file `name`.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// Removes every `PG*` variable from `cmd`'s environment, so a developer's `PGSSLMODE`,
/// `PGOPTIONS` or `PGSERVICE` cannot change how the testkit talks to its own server.
pub(crate) fn clear_pg_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// The last lines of a log file, or a note saying why it could not be read.
pub(crate) fn log_tail(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            let tail = lines[start..].join("\n");
            if tail.is_empty() {
                "(log is empty)".to_owned()
            } else {
                tail
            }
        }
        Err(e) => format!("(could not read log {}: {e})", path.display()),
    }
}

/// Sends `signal` (a name such as "INT", "KILL", "STOP" or "CONT") to `pid` with the `kill`
/// program. Returns whether it was delivered; a process that is already gone is not an error
/// worth reporting.
pub fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

/// Pids of the direct children of `parent`, found by reading the parent pid field of every
/// `/proc/<pid>/stat`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()))
        .filter(|&pid| parent_of(pid) == Some(parent))
        .collect()
}

/// The parent pid of `pid`, from `/proc/<pid>/stat`. The command name in that file is in
/// parentheses and may contain spaces or parentheses, so fields are counted after the last `)`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name: state, then the parent pid.
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// A running server process that is stopped and reaped when dropped.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    /// Name for logs, e.g. "PostgreSQL".
    name: &'static str,
    /// The spawned process: the server itself, or `runuser` when [`Self::via_runuser`].
    child: Child,
    /// Whether `child` is a `runuser` that runs the server as its only child.
    via_runuser: bool,
    /// The signal that asks the server to shut down, e.g. "INT" (PostgreSQL's fast shutdown).
    stop_signal: &'static str,
    /// How long to wait after `stop_signal` before SIGKILL.
    grace: Duration,
    /// Set once the child has been reaped.
    exit: Option<ExitStatus>,
}

impl ServerProcess {
    /// Spawns `cmd`; `via_runuser` says whether `cmd` is `runuser ... -- <server>`.
    pub(crate) fn spawn(
        name: &'static str,
        cmd: &mut Command,
        via_runuser: bool,
        stop_signal: &'static str,
        grace: Duration,
    ) -> Result<Self> {
        let child =
            cmd.spawn().map_err(|source| TestkitError::Spawn { command: describe(cmd), source })?;
        tracing::debug!(server = name, pid = child.id(), command = %describe(cmd), "spawned");
        Ok(Self { name, child, via_runuser, stop_signal, grace, exit: None })
    }

    /// The exit status if the process has exited (reaping it), or `None` while it runs.
    pub(crate) fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            // An error here means the child was already reaped, which only `stop` does.
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
            }
        }
        self.exit
    }

    /// The pid of the server itself. `runuser` does not forward SIGINT to its child (it ignores
    /// it) and turns SIGTERM into SIGTERM followed by SIGKILL two seconds later, so signals for
    /// the server must bypass it: the server is `runuser`'s only child, found through `/proc`.
    fn server_pid(&self) -> Option<u32> {
        if self.via_runuser {
            children_of(self.child.id()).into_iter().next()
        } else {
            Some(self.child.id())
        }
    }

    /// Polls until the process exits or `timeout` passes; returns whether it exited.
    fn wait_for_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.exit_status().is_some() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL);
        }
    }

    /// Asks the server to shut down, waits up to the grace period, then kills it with SIGKILL,
    /// and reaps it. Idempotent.
    pub(crate) fn stop(&mut self) {
        if self.exit_status().is_some() {
            return;
        }
        match self.server_pid() {
            Some(pid) => {
                send_signal(pid, self.stop_signal);
            }
            // runuser without a child: the server already exited and runuser is about to.
            None => tracing::debug!(server = self.name, "no server process under runuser"),
        }
        if self.wait_for_exit(self.grace) {
            tracing::debug!(server = self.name, status = ?self.exit, "stopped");
            return;
        }
        tracing::warn!(
            server = self.name,
            grace = ?self.grace,
            "did not stop after SIG{}; sending SIGKILL",
            self.stop_signal
        );
        if let Some(pid) = self.server_pid() {
            send_signal(pid, "KILL");
            // Let runuser notice its child died and exit by itself.
            self.wait_for_exit(Duration::from_secs(1));
        }
        if self.exit.is_none() {
            if let Err(e) = self.child.kill() {
                tracing::warn!(server = self.name, error = %e, "SIGKILL failed");
            }
            match self.child.wait() {
                Ok(status) => self.exit = Some(status),
                Err(e) => tracing::warn!(server = self.name, error = %e, "reaping failed"),
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `cmd`'s stdout and stderr to a fresh `log` file.
pub(crate) fn redirect_output(cmd: &mut Command, log: &Path) -> Result<()> {
    let io_error =
        |source| TestkitError::Io { op: "create log file", path: log.to_owned(), source };
    let stdout = File::create(log).map_err(io_error)?;
    let stderr = stdout.try_clone().map_err(io_error)?;
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    Ok(())
}

/// Ports tried before a start gives up because other processes keep taking them.
pub(crate) const PORT_ATTEMPTS: u32 = 3;

/// Why one startup attempt failed.
pub(crate) enum Startup {
    /// Another process bound the port first; the log tail says so. Worth another port.
    PortTaken(String),
    /// Anything else; not worth retrying.
    Failed(TestkitError),
}

impl Startup {
    /// The server exited during startup: `PortTaken` if its log tail contains `port_taken` (the
    /// server's own wording for EADDRINUSE), else the exit with the log tail.
    pub(crate) fn exited(
        server: &'static str,
        port: u16,
        status: std::process::ExitStatus,
        log: &Path,
        port_taken: &str,
    ) -> Self {
        let tail = log_tail(log);
        if tail.contains(port_taken) {
            return Startup::PortTaken(tail);
        }
        Startup::Failed(TestkitError::ServerExited {
            server,
            port,
            status: status.to_string(),
            log: log.to_owned(),
            log_tail: tail,
        })
    }
}

impl From<TestkitError> for Startup {
    fn from(e: TestkitError) -> Self {
        Startup::Failed(e)
    }
}

/// Runs `attempt` on a fresh free port until it succeeds, fails for a reason other than a taken
/// port, or [`PORT_ATTEMPTS`] ports were taken by someone else.
pub(crate) fn start_on_free_port<T>(
    server: &'static str,
    mut attempt: impl FnMut(u16) -> std::result::Result<T, Startup>,
) -> Result<T> {
    let mut last_tail = String::new();
    for n in 1..=PORT_ATTEMPTS {
        let port = crate::free_port()?;
        match attempt(port) {
            Ok(started) => return Ok(started),
            Err(Startup::PortTaken(tail)) => {
                tracing::debug!(server, port, attempt = n, "port taken before the server bound it");
                last_tail = tail;
            }
            Err(Startup::Failed(e)) => return Err(e),
        }
    }
    Err(TestkitError::PortTaken { server, attempts: PORT_ATTEMPTS, log_tail: last_tail })
}

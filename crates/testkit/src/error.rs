//! Errors of the testkit. Each says what failed, for which binary, port or directory, and what
//! to do about it, so a failing test explains its own environment problem.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while starting, querying or stopping a test server.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// A program the testkit needs is not installed where it looked.
    #[error("{program} not found (looked at {looked_at}); {remedy}")]
    MissingBinary {
        /// The program, e.g. "initdb".
        program: &'static str,
        /// Where it looked, e.g. a path or "DRIFTLESS_NATS_BIN, PATH and /usr/sbin".
        looked_at: String,
        /// How to install it or point the testkit at it.
        remedy: &'static str,
    },

    /// Running as root, but the unprivileged user a server must run as does not exist.
    #[error(
        "running as root, so {server} must run as user `{user}`, but looking that user up failed: \
         {detail}; `apt-get install -y postgresql-15` creates it, or run the tests as a non-root \
         user"
    )]
    MissingUser {
        /// The server, e.g. "PostgreSQL".
        server: &'static str,
        /// The user name.
        user: &'static str,
        /// What the lookup said.
        detail: String,
    },

    /// Binding `127.0.0.1:0` to reserve a port failed.
    #[error(
        "could not reserve a free port by binding 127.0.0.1:0: {source}; check that the loopback \
         interface is up and that the process may open sockets"
    )]
    FreePort {
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// Generating a test certificate failed.
    #[error("generating a test certificate failed: {0}")]
    Tls(String),

    /// A filesystem operation on the server's scratch directory failed.
    #[error("could not {op} {path}: {source}; check free space and permissions there")]
    Io {
        /// What the testkit was doing, e.g. "create data directory".
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// A program could not be started at all.
    #[error(
        "could not run `{command}`: {source}; check that the program exists and is executable"
    )]
    Spawn {
        /// The command line.
        command: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// A short-lived helper program (initdb, psql, id, ...) exited unsuccessfully.
    #[error("`{command}` failed ({status}); its output:\n{output}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// Its stderr and stdout, trimmed.
        output: String,
    },

    /// The server process exited before it became ready.
    #[error(
        "{server} on 127.0.0.1:{port} exited during startup ({status}); last lines of its log \
         {log} (removed with its scratch directory):\n{log_tail}"
    )]
    ServerExited {
        /// The server, e.g. "PostgreSQL".
        server: &'static str,
        /// The port it was told to listen on.
        port: u16,
        /// How it exited.
        status: String,
        /// Its log file, already removed with the scratch directory when the error is seen.
        log: PathBuf,
        /// The last lines of the log.
        log_tail: String,
    },

    /// Every attempt found its port taken by another process between reserving and binding it.
    #[error(
        "{server} could not bind a free port in {attempts} attempts (another process took each \
         one first); retry, or reduce the number of tests that start servers in parallel. Last \
         log lines:\n{log_tail}"
    )]
    PortTaken {
        /// The server, e.g. "NATS".
        server: &'static str,
        /// How many ports were tried.
        attempts: u32,
        /// The last lines of the last attempt's log.
        log_tail: String,
    },

    /// The server stayed up but did not become ready before the deadline.
    #[error(
        "{server} on 127.0.0.1:{port} was not ready after {waited:?}; the machine may be \
         overloaded. Last lines of its log {log} (removed with its scratch directory):\n{log_tail}"
    )]
    NotReady {
        /// The server, e.g. "PostgreSQL".
        server: &'static str,
        /// The port it was told to listen on.
        port: u16,
        /// How long the testkit waited.
        waited: Duration,
        /// Its log file, already removed with the scratch directory when the error is seen.
        log: PathBuf,
        /// The last lines of the log.
        log_tail: String,
    },

    /// Mounting a tmpfs failed (not root, or no `CAP_SYS_ADMIN` in a container).
    #[error(
        "could not mount a tmpfs of {size_bytes} bytes on {path}: {detail}; tests that fill a \
         disk mount their own tmpfs and must run as root (or with CAP_SYS_ADMIN: in Docker, \
         `--privileged` or `--cap-add SYS_ADMIN`)"
    )]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The size asked for.
        size_bytes: u64,
        /// What `mount` said.
        detail: String,
    },

    /// The crash harness could not start its child.
    #[error("crash harness: could not {reason}")]
    CrashChild {
        /// What it was doing.
        reason: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand for results of the testkit.
pub type Result<T, E = TestkitError> = std::result::Result<T, E>;

//! Start-up and serving errors of the server (request-level failures are
//! [`Problem`](crate::Problem)s, not these).
//!
//! Invariant: every variant names the file, directory or address involved; the cause is its
//! `source()` (not repeated in `Display`), so printing the chain (`{:#}` with anyhow) reads
//! "cannot read config file x.toml: No such file or directory"; a configuration mistake is one
//! sentence, "config file x.toml:3:1: `server.lisen`: unknown key …".

use std::io;
use std::path::PathBuf;

use driftless_broker::BrokerError;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A `[[source]]` could not be started.
    #[error("cannot start sources")]
    Source(#[source] driftless_connect::ConnectError),
    /// A `[[reconcile]]` could not be started.
    #[error("cannot start reconciliations")]
    Reconcile(#[source] driftless_reconcile::ReconcileError),
    /// A `[[sink]]` could not be started.
    #[error("cannot start sinks")]
    Sink(#[source] driftless_sink::SinkError),
    /// The configuration file could not be read.
    #[error("cannot read config file {path}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The configuration file is not valid TOML, or one of its settings is unknown, of the
    /// wrong type or out of range: `file:line:column`, the key path, what is expected.
    #[error("config file {}:{line}:{column}: {reason}", file.display())]
    Setting {
        /// The file (or `<inline>` for text given directly).
        file: PathBuf,
        /// 1-based line of the key (or of its table when the key is not written).
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// The key path, e.g. `source[1].heartbeat_interval_ms` (empty for a syntax error).
        key: String,
        /// "`key`: what is wrong and what is expected" — redacted (never the line as written:
        /// it may hold a credential).
        reason: String,
    },
    /// The broker could not open its data directory.
    #[error("cannot open the broker in {dir}")]
    OpenBroker {
        /// The data directory.
        dir: PathBuf,
        /// The broker's error.
        #[source]
        source: BrokerError,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address from `[server] listen`, `--listen` or `DRIFTLESS_LISTEN`.
        addr: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The async runtime could not start.
    #[error("cannot start the async runtime")]
    Runtime(#[source] io::Error),
    /// The open-file limit leaves too few file descriptors for the log and the connections.
    #[error(
        "the open-file limit (RLIMIT_NOFILE) is {limit} (hard limit {hard}), but driftless needs \
         at least {needed}: {reserve} for its own files and {log_min} each for the log's \
         partition files and for connections; raise it (`ulimit -n {needed}` or more in the \
         shell that starts driftless, or `LimitNOFILE=` in its systemd unit)"
    )]
    TooFewOpenFiles {
        /// The soft limit after raising it as far as allowed.
        limit: u64,
        /// The hard limit (`u64::MAX` when unlimited).
        hard: u64,
        /// The smallest limit that works.
        needed: u64,
        /// Descriptors kept for everything but the log and connections.
        reserve: u64,
        /// The fewest descriptors the log (and the connections) may have.
        log_min: u64,
    },
    /// Listening beyond loopback with authentication off, without the explicit insecure flag.
    #[error(
        "refusing to listen on {addr} without authentication: anyone who can reach it could \
         produce, delete topics and move consumer groups. Turn authentication on (`[auth] \
         enabled = true`, then `driftless token create`), or listen on loopback \
         (`--listen 127.0.0.1:7070`), or, only if a firewall or an authenticating proxy guards \
         the port, set `[server] insecure_allow_unauthenticated_remote = true` (flag \
         --insecure-allow-unauthenticated-remote)"
    )]
    UnauthenticatedRemote {
        /// The listen address.
        addr: String,
    },
    /// The API's TLS certificate, key or client CA could not be loaded.
    #[error("cannot set up TLS for the API")]
    Tls(#[source] crate::tls::TlsError),
    /// Accepting or serving connections failed.
    #[error("serving HTTP failed")]
    Serve(#[source] io::Error),
}

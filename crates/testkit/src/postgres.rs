//! A throwaway PostgreSQL 15 server for tests: its own data directory, a free loopback port,
//! logical replication enabled, and fsync switched off for speed.
//!
//! Invariants:
//! - Everything the server writes lives in one scratch directory, removed on drop after the
//!   server has exited; no server process outlives its [`PgServer`].
//! - [`PgServer::start`] returns only once this server (not some other process that took the
//!   port) accepts connections: `postmaster.pid` in our data directory says `ready` for our port,
//!   and `pg_isready` succeeds.
//! - As root, initdb and postgres run as user `postgres` through `runuser`; signals go to the
//!   postmaster directly, because `runuser` does not forward SIGINT.
//! - A server started with [`PgOptions::tls`] accepts TCP connections only over TLS (`hostssl`
//!   lines alone in `pg_hba.conf`), so a test that connects proves TLS was used; roles named in
//!   [`PgOptions::password_users`] must authenticate with their password (SCRAM), everyone else
//!   is trusted.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::error::{Result, TestkitError};
use crate::process::{
    clear_pg_env, describe, find_on_path, log_tail, redirect_output, run, running_as_root,
    start_on_free_port, user_ids, ServerProcess, Startup, POLL,
};

/// Name used in errors and logs.
const SERVER: &str = "PostgreSQL";
/// Where Debian and Ubuntu install PostgreSQL 15.
const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// Overrides [`DEFAULT_BIN_DIR`].
const BIN_ENV: &str = "DRIFTLESS_PG_BIN";
/// What to do when a binary is missing.
const INSTALL_HINT: &str = "install PostgreSQL 15 with `apt-get install -y postgresql-15`, or set \
                            DRIFTLESS_PG_BIN to a directory holding initdb, postgres, pg_isready \
                            and psql";
/// The unprivileged user PostgreSQL runs as when the tests run as root.
const OS_USER: &str = "postgres";
/// The database superuser initdb creates.
const SUPERUSER: &str = "postgres";
/// How long startup may take.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long fast shutdown may take before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The PostgreSQL programs the server needs.
#[derive(Debug, Clone)]
struct Binaries {
    initdb: PathBuf,
    postgres: PathBuf,
    /// Optional: without it, readiness falls back to a TCP connect.
    pg_isready: Option<PathBuf>,
    /// Optional: only [`PgServer::psql`] needs it.
    psql: Option<PathBuf>,
    /// Set when running as root: the `runuser` that runs initdb and postgres as `postgres`.
    runuser: Option<PathBuf>,
}

impl Binaries {
    fn locate(as_root: bool) -> Result<Self> {
        let dir = std::env::var_os(BIN_ENV)
            .filter(|dir| !dir.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_BIN_DIR), PathBuf::from);
        let required = |program: &'static str| -> Result<PathBuf> {
            let path = dir.join(program);
            if path.is_file() {
                Ok(path)
            } else {
                Err(TestkitError::MissingBinary {
                    program,
                    looked_at: path.display().to_string(),
                    remedy: INSTALL_HINT,
                })
            }
        };
        let optional = |program: &str| Some(dir.join(program)).filter(|path| path.is_file());
        let runuser = if as_root {
            let found = find_on_path("runuser").or_else(|| {
                ["/usr/sbin/runuser", "/sbin/runuser"]
                    .into_iter()
                    .map(PathBuf::from)
                    .find(|path| path.is_file())
            });
            Some(found.ok_or(TestkitError::MissingBinary {
                program: "runuser",
                looked_at: "PATH, /usr/sbin and /sbin".to_owned(),
                remedy: "running as root, PostgreSQL must run as user `postgres` through runuser; \
                         install it with `apt-get install -y util-linux`, or run the tests as a \
                         non-root user",
            })?)
        } else {
            None
        };
        Ok(Self {
            initdb: required("initdb")?,
            postgres: required("postgres")?,
            pg_isready: optional("pg_isready"),
            psql: optional("psql"),
            runuser,
        })
    }

    /// A command running `program` as the server's OS user: through `runuser` as root, directly
    /// otherwise. Messages are forced to English so startup failures can be recognised.
    fn server_command(&self, program: &Path) -> Command {
        let mut cmd = match &self.runuser {
            Some(runuser) => {
                let mut cmd = Command::new(runuser);
                cmd.args(["-u", OS_USER, "--"]).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        clear_pg_env(&mut cmd).env("LC_ALL", "C");
        cmd
    }
}

/// How to start a [`PgServer`] beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Serve TLS (`ssl = on`) with this certificate and key (from
    /// [`TestCa`](crate::TestCa)), and accept TCP connections only over TLS.
    pub tls: Option<crate::tls::CertFiles>,
    /// Roles that must authenticate with a password (`scram-sha-256`) over TCP; create them
    /// with `CREATE ROLE … LOGIN PASSWORD '…'`.
    pub password_users: Vec<String>,
}

/// A running, throwaway PostgreSQL 15 server listening on `127.0.0.1:<port>`, with
/// `wal_level = logical` and trust authentication for user `postgres`.
///
/// Dropping it shuts the server down (SIGINT, then SIGKILL after 5 s) and removes its data
/// directory.
#[derive(Debug)]
pub struct PgServer {
    /// Declared first: stopped before the scratch directory goes.
    process: ServerProcess,
    port: u16,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    bins: Binaries,
    as_root: bool,
    /// Holds the data directory, the socket directory and the log; `None` once removed.
    scratch: Option<TempDir>,
    /// `-c` settings beyond the defaults (TLS), kept for [`PgServer::restart`].
    settings: Vec<String>,
}

impl PgServer {
    /// Initialises a fresh cluster in a temporary directory and starts PostgreSQL on a free
    /// loopback port, waiting (up to 30 s) until it accepts connections.
    ///
    /// Binaries come from `/usr/lib/postgresql/15/bin`, or from the directory in
    /// `DRIFTLESS_PG_BIN`. As root, the server runs as user `postgres`.
    pub fn start() -> Result<Self> {
        Self::start_with(PgOptions::default())
    }

    /// [`PgServer::start`] serving TLS with `cert` (a [`TestCa`](crate::TestCa) server
    /// certificate): `ssl = on`, and `hostssl` lines only, so plain TCP is refused.
    pub fn start_tls(cert: &crate::tls::CertFiles) -> Result<Self> {
        Self::start_with(PgOptions { tls: Some(cert.clone()), ..PgOptions::default() })
    }

    /// [`PgServer::start`] with `options`.
    pub fn start_with(options: PgOptions) -> Result<Self> {
        let as_root = running_as_root()?;
        let bins = Binaries::locate(as_root)?;
        let owner = if as_root { Some(user_ids(OS_USER, SERVER)?) } else { None };

        let scratch = scratch_dir(as_root)?;
        let data_dir = scratch.path().join("data");
        let socket_dir = scratch.path().join("sock");
        for dir in [&data_dir, &socket_dir] {
            fs::create_dir(dir).map_err(|source| TestkitError::Io {
                op: "create directory",
                path: dir.clone(),
                source,
            })?;
            set_mode(dir, 0o700)?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|source| {
                    TestkitError::Io { op: "chown to user postgres", path: dir.clone(), source }
                })?;
            }
        }

        let mut initdb = bins.server_command(&bins.initdb);
        initdb
            .arg("-D")
            .arg(&data_dir)
            .args(["-A", "trust", "-U", SUPERUSER, "--no-sync", "-E", "UTF8", "--locale=C"])
            .current_dir(scratch.path());
        run(&mut initdb)?;
        let settings = configure(&options, &data_dir, owner)?;

        let log_path = scratch.path().join("postgres.log");
        let (process, port) = start_on_free_port(SERVER, |port| {
            let process = launch(
                &bins,
                &data_dir,
                &socket_dir,
                scratch.path(),
                &log_path,
                port,
                as_root,
                &settings,
            )?;
            Ok((process, port))
        })?;
        Ok(Self {
            process,
            port,
            data_dir,
            socket_dir,
            log_path,
            bins,
            as_root,
            scratch: Some(scratch),
            settings,
        })
    }

    /// Stops the server (fast shutdown), keeping its data: for tests of a database outage.
    /// [`PgServer::restart`] brings it back on the same port.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts the server again on the same port and data (after [`PgServer::stop`], or to
    /// restart a running one), waiting until it accepts connections.
    pub fn restart(&mut self) -> Result<()> {
        self.process.stop();
        let scratch = self.scratch.as_ref().map(|s| s.path().to_owned()).unwrap_or_default();
        self.process = launch(
            &self.bins,
            &self.data_dir,
            &self.socket_dir,
            &scratch,
            &self.log_path,
            self.port,
            self.as_root,
            &self.settings,
        )
        .map_err(|e| match e {
            Startup::Failed(e) => e,
            Startup::PortTaken(log_tail) => {
                TestkitError::PortTaken { server: SERVER, attempts: 1, log_tail }
            }
        })?;
        Ok(())
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host the server listens on: always `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// A connection URL for database `db` as superuser `postgres` (no password needed):
    /// `postgres://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@{}:{}/{db}", self.host(), self.port)
    }

    /// The pid of the postmaster (the first line of `postmaster.pid`), whose descendants are
    /// every server process; `None` while the server is stopped.
    pub fn pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// The cluster's data directory (removed on drop).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's log file (removed on drop).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Runs `sql` in database `postgres` with the `psql` program and returns its trimmed output,
    /// unaligned and without headers: one row per line, columns separated by `|`. Stops at the
    /// first error, which is returned with psql's message.
    pub fn psql(&self, sql: &str) -> Result<String> {
        let psql = self.bins.psql.as_ref().ok_or(TestkitError::MissingBinary {
            program: "psql",
            looked_at: format!(
                "{}/psql",
                self.bins.initdb.parent().unwrap_or(Path::new("")).display()
            ),
            remedy: INSTALL_HINT,
        })?;
        let mut cmd = Command::new(psql);
        clear_pg_env(&mut cmd)
            .env("PGCONNECT_TIMEOUT", "10")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", self.host(), "-p"])
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, "-d", "postgres", "-c", sql]);
        run(&mut cmd)
    }

    /// Creates database `name` (quoted, so any name is taken literally).
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.psql(&format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")))?;
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.process.stop();
        if let Some(scratch) = self.scratch.take() {
            let path = scratch.path().to_owned();
            if let Err(e) = scratch.close() {
                tracing::warn!(dir = %path.display(), error = %e, "could not remove PostgreSQL scratch directory");
            }
        }
    }
}

/// Writes `pg_hba.conf` and the TLS files for `options`; returns the extra `-c` settings.
fn configure(
    options: &PgOptions,
    data_dir: &Path,
    owner: Option<(u32, u32)>,
) -> Result<Vec<String>> {
    let write = |path: &Path, text: &str, mode: u32| -> Result<()> {
        fs::write(path, text).map_err(|source| TestkitError::Io {
            op: "write",
            path: path.to_owned(),
            source,
        })?;
        set_mode(path, mode)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|source| {
                TestkitError::Io { op: "chown to user postgres", path: path.to_owned(), source }
            })?;
        }
        Ok(())
    };
    let host = if options.tls.is_some() { "hostssl" } else { "host" };
    let mut hba = String::from("local all all trust\nlocal replication all trust\n");
    for user in &options.password_users {
        for db in ["all", "replication"] {
            hba.push_str(&format!("{host} {db} \"{user}\" 127.0.0.1/32 scram-sha-256\n"));
        }
    }
    for db in ["all", "replication"] {
        hba.push_str(&format!("{host} {db} all 127.0.0.1/32 trust\n"));
    }
    write(&data_dir.join("pg_hba.conf"), &hba, 0o600)?;
    let mut settings = Vec::new();
    if let Some(tls) = &options.tls {
        let (cert, key) = (data_dir.join("server.crt"), data_dir.join("server.key"));
        write(&cert, &tls.cert_pem, 0o644)?;
        write(&key, &tls.key_pem, 0o600)?;
        settings.push("ssl=on".to_owned());
        settings.push(format!("ssl_cert_file={}", cert.display()));
        settings.push(format!("ssl_key_file={}", key.display()));
    }
    Ok(settings)
}

/// Starts the server process on `port` and waits until it accepts connections.
#[allow(clippy::too_many_arguments)]
fn launch(
    bins: &Binaries,
    data_dir: &Path,
    socket_dir: &Path,
    scratch: &Path,
    log_path: &Path,
    port: u16,
    as_root: bool,
    settings: &[String],
) -> std::result::Result<ServerProcess, Startup> {
    let mut cmd = bins.server_command(&bins.postgres);
    cmd.arg("-D")
        .arg(data_dir)
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(socket_dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "wal_level=logical",
            "-c",
            "max_replication_slots=10",
            "-c",
            "max_wal_senders=10",
            // Durability off: a test cluster never survives a crash anyway. But
            // synchronous_commit stays on: logical decoding only sees flushed WAL, so with it
            // off every change reaches a replication consumer up to ~200 ms late (after the WAL
            // writer's next flush), and with fsync=off it saves nothing measurable.
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
        ])
        .current_dir(scratch);
    for setting in settings {
        cmd.arg("-c").arg(setting);
    }
    redirect_output(&mut cmd, log_path)?;
    let mut process = ServerProcess::spawn(SERVER, &mut cmd, as_root, "INT", STOP_GRACE)?;
    wait_ready(&mut process, bins, data_dir, port, log_path)?;
    tracing::debug!(port, data_dir = %data_dir.display(), "PostgreSQL ready");
    Ok(process)
}

/// A scratch directory. As root it is under `/tmp` and world-traversable (0755), so user
/// `postgres` can reach the data directory inside it.
fn scratch_dir(as_root: bool) -> Result<TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("driftless-pg-");
    let base = if as_root { PathBuf::from("/tmp") } else { std::env::temp_dir() };
    let dir = builder.tempdir_in(&base).map_err(|source| TestkitError::Io {
        op: "create a scratch directory in",
        path: base,
        source,
    })?;
    if as_root {
        set_mode(dir.path(), 0o755)?;
    }
    Ok(dir)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| TestkitError::Io {
        op: "set permissions of",
        path: path.to_owned(),
        source,
    })
}

/// Polls until the server is ready, exits, or [`READY_TIMEOUT`] passes.
fn wait_ready(
    process: &mut ServerProcess,
    bins: &Binaries,
    data_dir: &Path,
    port: u16,
    log: &Path,
) -> std::result::Result<(), Startup> {
    let started = Instant::now();
    loop {
        if let Some(status) = process.exit_status() {
            return Err(Startup::exited(SERVER, port, status, log, "Address already in use"));
        }
        if pid_file_says_ready(data_dir, port) && accepts_connections(bins, port) {
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

/// Whether `postmaster.pid` in our data directory records our port and the status `ready`
/// (lines 4 and 8), which proves it is this server, not another process, that listens there.
fn pid_file_says_ready(data_dir: &Path, port: u16) -> bool {
    let Ok(text) = fs::read_to_string(data_dir.join("postmaster.pid")) else { return false };
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines.get(3) == Some(&port.to_string().as_str()) && lines.get(7) == Some(&"ready")
}

/// Whether the server accepts connections: `pg_isready`, or a TCP connect without it.
fn accepts_connections(bins: &Binaries, port: u16) -> bool {
    match &bins.pg_isready {
        Some(pg_isready) => {
            let mut cmd = Command::new(pg_isready);
            clear_pg_env(&mut cmd)
                .args(["-q", "-t", "2", "-h", "127.0.0.1", "-p"])
                .arg(port.to_string())
                .args(["-U", SUPERUSER, "-d", "postgres"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            match cmd.status() {
                Ok(status) => status.success(),
                Err(e) => {
                    tracing::debug!(command = %describe(&cmd), error = %e, "pg_isready failed");
                    false
                }
            }
        }
        None => TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_secs(1),
        )
        .is_ok(),
    }
}

//! Every Postgres connection Driftless makes, with TLS as libpq's `sslmode` and `sslrootcert`
//! describe it: the outbox and CDC sources (queries and the replication stream), the Postgres
//! sink and reconciliation all connect through [`PgConnect`].
//!
//! ```no_run
//! # async fn f() -> Result<(), driftless_pgtls::PgTlsError> {
//! let pg = driftless_pgtls::PgConnect::parse(
//!     "postgres://app@db.internal/app?sslmode=verify-full&sslrootcert=/etc/driftless/ca.pem",
//! )?;
//! let (client, connection) = pg.connect().await?;
//! tokio::spawn(connection);
//! # drop(client); Ok(()) }
//! ```
//!
//! The modes, as in libpq:
//!
//! | `sslmode`     | encrypted            | chain verified | host name verified |
//! |---------------|----------------------|----------------|--------------------|
//! | `disable`     | no                   | -              | -                  |
//! | `prefer` (default) | if the server offers it | no      | no                 |
//! | `require`     | yes                  | no (yes if `sslrootcert` is given, as libpq) | no |
//! | `verify-ca`   | yes                  | yes            | no                 |
//! | `verify-full` | yes                  | yes            | yes                |
//!
//! `require` protects against eavesdropping only: anyone on the path can present a certificate.
//! Use `verify-full` wherever the network is not trusted. The trust store is the PEM file named by
//! `sslrootcert`, or Mozilla's roots (`webpki-roots`) when it is absent or `system`.
//!
//! Why a crate of its own: tokio-postgres parses only `disable | prefer | require` and has no TLS
//! implementation; `pgwire-replication` (the replication stream) has one, but it pulls in
//! aws-lc-rs. Here `sslmode`/`sslrootcert` are parsed and stripped before tokio-postgres sees the
//! URL, one rustls (ring) configuration is built, and it serves both: tokio-postgres through
//! [`MakeTlsConnect`], the replication client through a
//! relay on a Unix socket in a private (0700) directory ([`ReplicationEndpoint`]), which
//! negotiates TLS with the server exactly like libpq and forwards the bytes.
//!
//! Invariants: errors never contain a password — a failed connection names the URL with the
//! password replaced by `***` ([`PgConnect::redacted_url`]) and the cause in words
//! ([`connect_cause`]: refused, timed out, authentication, unknown database, TLS); rustls uses
//! the ring provider only.

mod relay;
mod verify;

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

pub use relay::ReplicationEndpoint;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS if the server offers it, without verification; plain otherwise (libpq's default).
    Prefer,
    /// TLS, not verified (unless `sslrootcert` is given: then as `VerifyCa`).
    Require,
    /// TLS, certificate chain verified against the trust store.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, PgTlsError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" | "allow" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(PgTlsError::Url {
                    reason: format!(
                        "sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"
                    ),
                })
            }
        })
    }

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A Postgres connection that could not be set up or made.
#[derive(Debug, thiserror::Error)]
pub enum PgTlsError {
    /// The URL (or key-value string) is not valid. Never contains the URL itself.
    #[error("invalid Postgres connection URL: {reason}")]
    Url {
        /// What is wrong.
        reason: String,
    },
    /// `sslrootcert` could not be used.
    #[error("cannot use sslrootcert {}: {reason}; give a readable PEM file of CA certificates", path.display())]
    RootCert {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Connecting failed (refused, timed out, authentication, unknown database, TLS).
    #[error("cannot connect to PostgreSQL at {target} (sslmode={mode}): {reason}")]
    Connect {
        /// The URL without its password ([`PgConnect::redacted_url`]).
        target: String,
        /// The mode in force.
        mode: &'static str,
        /// The cause in words ([`connect_cause`]), redacted; a failed verification says
        /// `certificate verification failed`.
        reason: String,
    },
}

/// A parsed connection: the driver's configuration (without `sslmode`/`sslrootcert`), the TLS
/// policy and the parts the replication client needs.
#[derive(Clone)]
pub struct PgConnect {
    /// tokio-postgres' configuration; its own `ssl_mode` is set to match.
    pub config: tokio_postgres::Config,
    /// The TLS policy (cheap to clone).
    pub tls: PgTls,
    /// Host name or address (first host): the name TLS verifies.
    pub host: String,
    /// Where TCP connects: `hostaddr` when given (libpq: the address, with `host` still the
    /// name checked by `verify-full`), else `host`.
    pub addr: String,
    /// TCP port.
    pub port: u16,
    /// User.
    pub user: String,
    /// Password (empty when none). Never print it.
    pub password: String,
    /// Database.
    pub database: String,
}

impl fmt::Debug for PgConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConnect")
            .field("target", &self.describe())
            .field("sslmode", &self.tls.mode)
            .finish_non_exhaustive()
    }
}

impl PgConnect {
    /// Parses a libpq URL (`postgres://user:pw@host:port/db?sslmode=…&sslrootcert=…`) or
    /// key-value string (`host=… sslmode=…`).
    pub fn parse(url: &str) -> Result<Self, PgTlsError> {
        let (rest, ssl) = strip_ssl_params(url)?;
        let mut config: tokio_postgres::Config =
            rest.parse().map_err(|e: tokio_postgres::Error| PgTlsError::Url {
                reason: driftless_core::redact(&e.to_string()),
            })?;
        let mut mode = match &ssl.mode {
            Some(m) => SslMode::parse(m)?,
            None => SslMode::Prefer,
        };
        if mode == SslMode::Require && ssl.root_cert.is_some() {
            // libpq: "if a root CA file exists, the behavior of sslmode=require will be the
            // same as that of verify-ca".
            mode = SslMode::VerifyCa;
        }
        if config.get_connect_timeout().is_none() {
            // libpq waits forever; behind a firewall that drops packets a source would stay
            // "starting" with no error to show.
            config.connect_timeout(std::time::Duration::from_millis(CONNECT_TIMEOUT_MS_DEFAULT));
        }
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let tls = PgTls::new(mode, ssl.root_cert.as_deref())?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_string(),
        };
        if host.starts_with('/') && mode != SslMode::Disable && mode != SslMode::Prefer {
            return Err(PgTlsError::Url {
                reason: format!("sslmode={} needs a TCP host, not a Unix socket", mode.as_str()),
            });
        }
        let addr = config.get_hostaddrs().first().map_or_else(|| host.clone(), |a| a.to_string());
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("postgres").to_string();
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let database = config.get_dbname().unwrap_or(&user).to_string();
        Ok(Self { config, tls, host, addr, port, user, password, database })
    }

    /// `host:port/database`, for messages (no credentials).
    pub fn describe(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.database)
    }

    /// The URL as an operator would write it, with the password replaced by `***`:
    /// `postgres://app:***@db.internal:5432/app`. What every connection error names.
    pub fn redacted_url(&self) -> String {
        use driftless_core::secret::percent_encode;
        let password = if self.password.is_empty() { "" } else { ":***" };
        let host = if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]", self.host) // IPv6
        } else {
            percent_encode(&self.host) // a Unix socket directory has slashes
        };
        format!(
            "postgres://{}{password}@{host}:{}/{}",
            percent_encode(&self.user),
            self.port,
            percent_encode(&self.database)
        )
    }

    /// "cannot connect to PostgreSQL at postgres://app:***@h:5432/app (sslmode=prefer):
    /// connection refused (is the server running …?)": the sentence for a failed connection
    /// attempt to this target, by anyone who connected on their own.
    pub fn connect_failure(&self, error: &tokio_postgres::Error) -> String {
        self.connect_error(error).to_string()
    }

    /// Connects with tokio-postgres. Spawn (or await) the returned connection.
    pub async fn connect(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<tokio_postgres::Socket, PgTlsStream<tokio_postgres::Socket>>,
        ),
        PgTlsError,
    > {
        self.config.connect(self.tls.clone()).await.map_err(|e| self.connect_error(&e))
    }

    /// A [`PgTlsError::Connect`] for this target from a driver error: the redacted URL and the
    /// cause in words ([`connect_cause`]).
    pub fn connect_error(&self, error: &tokio_postgres::Error) -> PgTlsError {
        PgTlsError::Connect {
            target: self.redacted_url(),
            mode: self.tls.mode.as_str(),
            reason: connect_cause(error, self),
        }
    }
}

/// How long a connection attempt may take when the URL sets no `connect_timeout`.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// Why connecting to `target` failed, in the words an operator acts on: `connection refused
/// (…)`, `timed out after 10000 ms (…)`, `password authentication failed for user "app"`,
/// `database "app" does not exist (…)`, a TLS failure, or the driver's own words (redacted).
///
/// The cause is read from the error's SQLSTATE (28P01, 28000, 3D000, …) and the kind of the
/// I/O error beneath it, not from the driver's wording, which changes between versions.
pub fn connect_cause(error: &tokio_postgres::Error, target: &PgConnect) -> String {
    if let Some(db) = error.as_db_error() {
        let user = &target.user;
        let database = &target.database;
        return match db.code().code() {
            "28P01" => format!(
                "password authentication failed for user \"{user}\" (check the password in the \
                 URL, or the variable or file it comes from)"
            ),
            "28000" => format!(
                "the server does not let user \"{user}\" connect: {} (check pg_hba.conf and \
                 that the role exists and may log in)",
                driftless_core::redact(db.message())
            ),
            "3D000" => format!(
                "database \"{database}\" does not exist (create it, or fix the database name in \
                 the URL)"
            ),
            "53300" => format!(
                "the server has no connection slot left: {} (raise max_connections, or lower the \
                 connections other clients hold)",
                driftless_core::redact(db.message())
            ),
            "57P03" => "the server is starting up or shutting down; retrying".to_string(),
            code => format!("{} (SQLSTATE {code})", driftless_core::redact(db.message())),
        };
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::ConnectionRefused => {
                    return "connection refused (is the server running and listening on that \
                            port?)"
                        .to_string()
                }
                io::ErrorKind::TimedOut => {
                    let ms = target.config.get_connect_timeout().map_or(0, |t| t.as_millis());
                    return format!(
                        "timed out after {ms} ms (is the host reachable, and the port open in its \
                         firewall? `connect_timeout` in the URL sets the wait, in seconds)"
                    );
                }
                io::ErrorKind::NotFound if target.host.starts_with('/') => {
                    return format!(
                        "no server socket in {} (is the server running, with \
                         unix_socket_directories set to it?)",
                        target.host
                    )
                }
                _ => {}
            }
            // The resolver's failure has no kind of its own; its wording comes from libc.
            if io.to_string().contains("lookup address") {
                return format!(
                    "the host name `{}` could not be resolved (check the host in the URL, and \
                     DNS)",
                    target.host
                );
            }
        }
        source = cause.source();
    }
    error_text(error)
}

/// A driver error with its causes (tokio-postgres' `Display` omits them: "error performing TLS
/// handshake" alone), redacted.
pub fn error_text(error: &tokio_postgres::Error) -> String {
    let mut chain = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        let text = s.to_string();
        if !chain.contains(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        source = s.source();
    }
    explain(&chain)
}

/// Redacts `text` and, when it is a certificate problem, says so in words an operator searches
/// for.
pub(crate) fn explain(text: &str) -> String {
    let text = driftless_core::redact(text);
    if text.contains("certificate verification failed") {
        return text;
    }
    if text.contains("invalid peer certificate") || text.contains("InvalidCertificate") {
        let hint = if text.contains("NotValidForName") || text.contains("not valid for name") {
            "the server's certificate is not valid for this host name"
        } else if text.contains("UnknownIssuer") {
            "the server's certificate is not signed by a CA in sslrootcert (or the system roots)"
        } else {
            "the server's certificate was rejected"
        };
        format!("certificate verification failed: {hint} ({text})")
    } else {
        text
    }
}

struct SslParams {
    mode: Option<String>,
    root_cert: Option<String>,
}

/// Removes `sslmode` and `sslrootcert` from a URL's query or a key-value string; tokio-postgres
/// would refuse `verify-ca`/`verify-full` and does not know `sslrootcert`.
fn strip_ssl_params(url: &str) -> Result<(String, SslParams), PgTlsError> {
    let mut ssl = SslParams { mode: None, root_cert: None };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_string(), ssl));
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "sslmode" => ssl.mode = Some(driftless_core::secret::percent_decode(v)),
                "sslrootcert" => ssl.root_cert = Some(driftless_core::secret::percent_decode(v)),
                _ => kept.push(pair),
            }
        }
        let rest =
            if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
        return Ok((rest, ssl));
    }
    // Key-value: tokens separated by spaces, values optionally single-quoted.
    let mut kept = String::with_capacity(url.len());
    let mut chars = url.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut end = url.len();
        let mut quoted = false;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '\'' => quoted = !quoted,
                c if c.is_whitespace() && !quoted => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let token = &url[start..end];
        let (k, v) = token.split_once('=').unwrap_or((token, ""));
        let v = v.trim_matches('\'').to_string();
        match k {
            "sslmode" => ssl.mode = Some(v),
            "sslrootcert" => ssl.root_cert = Some(v),
            _ => {
                if !kept.is_empty() {
                    kept.push(' ');
                }
                kept.push_str(token);
            }
        }
    }
    Ok((kept, ssl))
}

/// The TLS side of a connection: the mode and (unless `disable`) a rustls client configuration.
/// Implements tokio-postgres' `MakeTlsConnect`.
#[derive(Clone)]
pub struct PgTls {
    mode: SslMode,
    config: Option<Arc<ClientConfig>>,
}

impl PgTls {
    /// The policy for `mode` with the trust store from `root_cert` (a PEM file; `system` or
    /// absent: Mozilla's roots).
    pub fn new(mode: SslMode, root_cert: Option<&str>) -> Result<Self, PgTlsError> {
        if mode == SslMode::Disable {
            return Ok(Self { mode, config: None });
        }
        let config = verify::client_config(mode, root_cert)?;
        Ok(Self { mode, config: Some(Arc::new(config)) })
    }

    /// The mode in force.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    pub(crate) fn rustls_config(&self) -> Option<Arc<ClientConfig>> {
        self.config.clone()
    }
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, io::Error> {
        // The driver asks for a connector whatever the mode; with `disable` it never uses it.
        Ok(PgTlsConnect { config: self.config.clone(), domain: domain.to_string() })
    }
}

/// One TLS handshake about to happen.
pub struct PgTlsConnect {
    config: Option<Arc<ClientConfig>>,
    domain: String,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<PgTlsStream<S>, io::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let config = self.config.ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "TLS requested with sslmode=disable")
            })?;
            let name = ServerName::try_from(self.domain.clone()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("`{}` is not a valid host name for TLS", self.domain),
                )
            })?;
            let connector = tokio_rustls::TlsConnector::from(config);
            // The driver prints this as the cause of "error performing TLS handshake".
            let tls = connector
                .connect(name, stream)
                .await
                .map_err(|e| io::Error::new(e.kind(), explain(&e.to_string())))?;
            Ok(PgTlsStream(Box::new(tls)))
        })
    }
}

/// An established TLS stream to Postgres.
pub struct PgTlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding (as libpq's channel_binding=prefer falls back to); the
        // certificate is checked by the verifier instead.
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_stripped_from_urls_and_key_value_strings() {
        let (rest, ssl) = strip_ssl_params(
            "postgres://u:p@h:5/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@h:5/db?application_name=x");
        assert_eq!(ssl.mode.as_deref(), Some("verify-full"));
        assert_eq!(ssl.root_cert.as_deref(), Some("/ca.pem"));
        let (rest, ssl) =
            strip_ssl_params("host=h password='a b' sslmode=require dbname=d").unwrap();
        assert_eq!(rest, "host=h password='a b' dbname=d");
        assert_eq!(ssl.mode.as_deref(), Some("require"));
    }

    #[test]
    fn an_unknown_sslmode_is_refused_by_name() {
        let e = PgConnect::parse("postgres://u:secretpw@h/db?sslmode=verify-everything")
            .unwrap_err()
            .to_string();
        assert!(e.contains("verify-everything"), "{e}");
        assert!(!e.contains("secretpw"), "{e}");
    }

    #[test]
    fn require_with_a_root_certificate_verifies_the_chain_as_libpq_does() {
        let ca = driftless_testkit::TestCa::new("pgtls-unit").unwrap();
        let url =
            format!("postgres://u@h/db?sslmode=require&sslrootcert={}", ca.ca_path().display());
        assert_eq!(PgConnect::parse(&url).unwrap().tls.mode(), SslMode::VerifyCa);
        assert_eq!(PgConnect::parse("postgres://u@h/db").unwrap().tls.mode(), SslMode::Prefer);
    }
}

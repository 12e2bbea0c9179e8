//! Where the replication client connects: the server itself (`disable`, or `prefer` against a
//! server without TLS), or a TLS relay on a Unix socket.
//!
//! The replication client (`pgwire-replication`) is used without its own TLS (that feature pulls
//! in aws-lc-rs). For every other mode it connects to a Unix socket `.s.PGSQL.<port>` in a
//! private directory (0700 from creation, removed on drop), so no other user of the
//! machine can reach the relay. Per accepted connection the relay opens TCP to the server, sends
//! `SSLRequest` as libpq does, completes the handshake with the same rustls configuration as
//! every other connection (so `verify-full` means the same thing here), and copies bytes both
//! ways. A refused handshake is answered to the client as a Postgres `ErrorResponse`, so the
//! replication client's error says what failed (redacted; "certificate verification failed: …").
//!
//! Invariants: the relay never reads or changes the protocol after the handshake; it stops
//! accepting when the [`ReplicationEndpoint`] is dropped (connections in progress finish when
//! either side closes).

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::{explain, PgConnect, PgTlsError, SslMode};

/// `SSLRequest`: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Time allowed for TCP connect plus the one-byte `SSLRequest` answer.
const NEGOTIATE_MS_MAX: u64 = 10_000;

/// The host and port a replication client should use; keeps the relay alive.
pub struct ReplicationEndpoint {
    host: String,
    port: u16,
    _relay: Option<Relay>,
}

struct Relay {
    _dir: TempDir,
    accept: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl ReplicationEndpoint {
    /// The endpoint for `pg`'s replication connection. Must be called inside a tokio runtime.
    pub async fn start(pg: &PgConnect) -> Result<Self, PgTlsError> {
        let direct = || Self { host: pg.addr.clone(), port: pg.port, _relay: None };
        let Some(config) = pg.tls.rustls_config() else {
            return Ok(direct());
        };
        if pg.host.starts_with('/') {
            // `prefer` over a Unix socket: libpq does not use TLS there either.
            return Ok(direct());
        }
        if pg.tls.mode() == SslMode::Prefer && !server_offers_tls(pg).await {
            return Ok(direct());
        }
        let connect_error = |reason: String| PgTlsError::Connect {
            target: pg.redacted_url(),
            mode: pg.tls.mode().as_str(),
            reason,
        };
        let name = ServerName::try_from(pg.host.clone()).map_err(|_| {
            connect_error(format!("`{}` is not a valid host name for TLS", pg.host))
        })?;
        // 0700 from creation (tempfile's default follows the umask): only this user can reach
        // the socket, so no other local user can use the relay's verified connection.
        let dir = tempfile::Builder::new()
            .prefix("driftless-pg-relay-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .map_err(|e| connect_error(format!("creating the relay's socket directory: {e}")))?;
        let socket = dir.path().join(format!(".s.PGSQL.{}", pg.port));
        let listener = UnixListener::bind(&socket)
            .map_err(|e| connect_error(format!("binding the relay socket: {e}")))?;
        let target = Target {
            addr: pg.addr.clone(),
            port: pg.port,
            name,
            config,
            mode: pg.tls.mode(),
            describe: pg.describe(),
        };
        let accept = tokio::spawn(accept_loop(listener, Arc::new(target)));
        Ok(Self {
            host: dir.path().display().to_string(),
            port: pg.port,
            _relay: Some(Relay { _dir: dir, accept }),
        })
    }

    /// Host for the replication client: the server's, or the relay's socket directory.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Port (the server's; with the relay, the socket file's suffix).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the connection goes through the TLS relay.
    pub fn is_tls(&self) -> bool {
        self._relay.is_some()
    }
}

struct Target {
    /// Where to connect (`hostaddr`, else the host); the TLS name is the host.
    addr: String,
    port: u16,
    name: ServerName<'static>,
    config: Arc<ClientConfig>,
    mode: SslMode,
    describe: String,
}

async fn server_offers_tls(pg: &PgConnect) -> bool {
    let probe = async {
        let mut tcp = TcpStream::connect((pg.addr.as_str(), pg.port)).await?;
        tcp.write_all(&SSL_REQUEST).await?;
        let answer = tcp.read_u8().await?;
        Ok::<_, std::io::Error>(answer == b'S')
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(NEGOTIATE_MS_MAX), probe).await,
        Ok(Ok(true))
    )
}

async fn accept_loop(listener: UnixListener, target: Arc<Target>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                tokio::spawn(relay_one(client, Arc::clone(&target)));
            }
            Err(error) => {
                tracing::warn!(target_db = %target.describe, %error, "TLS relay accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn relay_one(mut client: UnixStream, target: Arc<Target>) {
    let negotiate = async {
        let mut tcp = TcpStream::connect((target.addr.as_str(), target.port)).await?;
        tcp.set_nodelay(true)?;
        tcp.write_all(&SSL_REQUEST).await?;
        let answer = tcp.read_u8().await?;
        Ok::<_, std::io::Error>((tcp, answer))
    };
    let (tcp, answer) =
        match tokio::time::timeout(Duration::from_millis(NEGOTIATE_MS_MAX), negotiate).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return refuse(&mut client, &target, &e.to_string()).await,
            Err(_) => {
                let reason = format!("no answer to SSLRequest within {NEGOTIATE_MS_MAX} ms");
                return refuse(&mut client, &target, &reason).await;
            }
        };
    let result = if answer == b'S' {
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&target.config));
        match connector.connect(target.name.clone(), tcp).await {
            Ok(mut tls) => tokio::io::copy_bidirectional(&mut client, &mut tls).await,
            Err(e) => return refuse(&mut client, &target, &e.to_string()).await,
        }
    } else if target.mode == SslMode::Prefer {
        let mut tcp = tcp;
        tokio::io::copy_bidirectional(&mut client, &mut tcp).await
    } else {
        let reason =
            format!("the server does not accept TLS, and sslmode={}", target.mode.as_str());
        return refuse(&mut client, &target, &reason).await;
    };
    if let Err(error) = result {
        tracing::debug!(target_db = %target.describe, %error, "replication relay connection ended");
    }
}

/// Tells the replication client why, as a Postgres `ErrorResponse` (FATAL, 08006).
async fn refuse(client: &mut UnixStream, target: &Target, reason: &str) {
    let message = format!(
        "{}",
        PgTlsError::Connect {
            target: target.describe.clone(),
            mode: target.mode.as_str(),
            reason: explain(reason),
        }
    );
    tracing::warn!(target_db = %target.describe, error = %message, "replication connection refused");
    // The client's startup packet is unread; answer anyway, then close.
    let mut body = Vec::with_capacity(message.len() + 32);
    for (code, value) in
        [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', "08006"), (b'M', message.as_str())]
    {
        body.push(code);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut frame = Vec::with_capacity(body.len() + 5);
    frame.push(b'E');
    let len = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    let _ = client.write_all(&frame).await;
    let _ = client.shutdown().await;
}

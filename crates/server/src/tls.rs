//! TLS for the HTTP API (`[server.tls]`): the server's certificate and key, reloaded when their
//! files change, and optional mutual TLS whose verified client certificate names the principal.
//!
//! rustls with the ring provider only. One `rustls::ServerConfig` lives for the whole run; its
//! certificate comes from [`ReloadingCert`], a resolver that hands every handshake the pair
//! loaded last. [`watch`] polls the two files' metadata every [`RELOAD_POLL`] and reloads on any
//! change, so a renewed certificate (certbot, cert-manager's symlink swap) is served by the next
//! connection without a restart; connections already open keep theirs.
//!
//! Invariants:
//! - the served pair is always one that loaded and matched: a new pair that does not parse, or
//!   whose key is not the certificate's, is logged (once per change of the files) and the
//!   previous pair kept — a half-written renewal never takes the API down;
//! - files are read up to [`PEM_FILE_BYTES_MAX`]; key material never appears in an error or a
//!   log line (errors name the file and what is wrong with it);
//! - the client certificate's subject is taken only from a chain the verifier accepted, and
//!   only when it has exactly one common name of printable characters ([`subject_common_name`]):
//!   an ambiguous subject names no principal rather than the wrong one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSettings;
use crate::peer::PeerIdentity;

/// How often the certificate and key files are checked for a change.
pub const RELOAD_POLL: Duration = Duration::from_secs(1);
/// Largest certificate, key or CA file read, in bytes (a long chain is a few KiB).
pub const PEM_FILE_BYTES_MAX: u64 = 1 << 20;
/// Longest client-certificate common name taken as a principal, in bytes.
pub const SUBJECT_BYTES_MAX: usize = 256;

/// Why a certificate, key or client CA could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A file is larger than [`PEM_FILE_BYTES_MAX`].
    #[error("{path} is {bytes} bytes; a PEM file of at most {PEM_FILE_BYTES_MAX} is expected")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// A file holds no usable PEM block of the kind needed.
    #[error("{path} holds no {what} (expected PEM: -----BEGIN {what}-----)")]
    Missing {
        /// The file.
        path: PathBuf,
        /// `CERTIFICATE` or `PRIVATE KEY`.
        what: &'static str,
    },
    /// A file's PEM could not be decoded.
    #[error("{path} is not valid PEM: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The decoder's reason (it never quotes the content).
        reason: String,
    },
    /// The key is unsupported, or it is not the certificate's key.
    #[error(
        "the key {key} does not go with the certificate {cert} (or is of an unsupported kind): \
         {reason}; give the certificate's own private key (PKCS#8, PKCS#1 or SEC1 PEM)"
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        reason: String,
    },
    /// The client CA file's certificates cannot verify clients.
    #[error("client_ca_file {path}: {reason}")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration (no usable protocol version).
    #[error("TLS configuration refused: {0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM file, bounded by [`PEM_FILE_BYTES_MAX`].
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read { path: path.to_path_buf(), source };
    let bytes = fs::metadata(path).map_err(read)?.len();
    if bytes > PEM_FILE_BYTES_MAX {
        return Err(TlsError::TooLarge { path: path.to_path_buf(), bytes });
    }
    fs::read(path).map_err(read)
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: path.to_path_buf(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Missing { path: path.to_path_buf(), what: "CERTIFICATE" });
    }
    Ok(certs)
}

/// Loads a certificate chain and its key, checking that they go together.
fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = certificates(cert)?;
    let pem = read_pem(key)?;
    let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            TlsError::Missing { path: key.to_path_buf(), what: "PRIVATE KEY" }
        }
        e => TlsError::Pem { path: key.to_path_buf(), reason: e.to_string() },
    })?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| TlsError::KeyMismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason: e.to_string(),
    })
}

/// What identifies a version of a file without reading it: size, modification time and inode
/// (a renewal by rename changes the inode even within one timestamp tick).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp { len: m.len(), modified: m.modified().ok(), inode })
}

/// What [`ReloadingCert::check`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Neither file changed since the last check.
    Unchanged,
    /// The files changed and the new pair is served from now on.
    Reloaded,
    /// The files changed but the new pair is unusable; the previous one is still served.
    Failed,
}

/// The server certificate, swapped when its files change.
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' stamps when last loaded (or last tried).
    seen: Mutex<(Option<Stamp>, Option<Stamp>)>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Loads the pair; an error here stops the start-up.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let provider = provider();
        let seen = (stamp(cert_file), stamp(key_file));
        let pair = load_pair(cert_file, key_file, &provider)?;
        Ok(Self {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(pair)),
            seen: Mutex::new(seen),
        })
    }

    /// The pair served to new connections.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Reloads the pair if either file changed since the last check (blocking file IO: call it
    /// off the executor threads).
    pub fn check(&self) -> Reload {
        let now = (stamp(&self.cert_file), stamp(&self.key_file));
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == now {
                return Reload::Unchanged;
            }
            // Tried once per change: a bad pair is reported once, not every poll.
            *seen = now;
        }
        match load_pair(&self.cert_file, &self.key_file, &self.provider) {
            Ok(pair) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
                tracing::info!(cert_file = %self.cert_file.display(), "TLS certificate reloaded");
                Reload::Reloaded
            }
            Err(e) => {
                tracing::warn!(
                    "the TLS certificate or key changed but cannot be used, so the previous one \
                     is still served: {e}"
                );
                Reload::Failed
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The API's TLS side: the acceptor for new connections and the certificate it reloads.
#[derive(Clone)]
pub struct TlsServer {
    /// Accepts connections with the current certificate.
    pub acceptor: TlsAcceptor,
    /// The certificate, for [`watch`].
    pub cert: Arc<ReloadingCert>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer").field("cert", &self.cert).finish_non_exhaustive()
    }
}

impl TlsServer {
    /// Loads `[server.tls]`.
    pub fn load(settings: &TlsSettings) -> Result<Self, TlsError> {
        let cert = Arc::new(ReloadingCert::load(&settings.cert_file, &settings.key_file)?);
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &settings.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let bad = |reason: String| TlsError::ClientCa { path: path.clone(), reason };
                let mut roots = RootCertStore::empty();
                for ca in certificates(path)? {
                    roots.add(ca).map_err(|e| bad(e.to_string()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                let verifier = if settings.client_cert_required {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(verifier.build().map_err(|e| bad(e.to_string()))?)
            }
        };
        let mut config =
            builder.with_cert_resolver(Arc::clone(&cert) as Arc<dyn ResolvesServerCert>);
        // HTTP/1.1 only (the accept loop drives hyper's HTTP/1 connection).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self { acceptor: TlsAcceptor::from(Arc::new(config)), cert })
    }
}

/// Polls the certificate files every [`RELOAD_POLL`] until `stopping` becomes true.
pub async fn watch(cert: Arc<ReloadingCert>, mut stopping: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(RELOAD_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        let cert = Arc::clone(&cert);
        // File IO: on the blocking pool. A panic there is not ours to handle; keep polling.
        let _ = tokio::task::spawn_blocking(move || cert.check()).await;
    }
}

/// What a finished handshake says about the peer.
pub fn peer_identity(connection: &rustls::ServerConnection) -> PeerIdentity {
    let client_subject = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| subject_common_name(leaf.as_ref()));
    PeerIdentity { tls: true, client_subject }
}

/// The subject common name of a DER certificate: `None` unless the subject has exactly one
/// common name, a UTF-8, printable or IA5 string of 1 to [`SUBJECT_BYTES_MAX`] bytes without
/// control characters.
///
/// A small DER walk rather than an X.509 crate: the certificate was parsed and verified by
/// webpki before this is called, and only the path `Certificate → tbsCertificate → subject` is
/// read, every length checked against what is left.
pub fn subject_common_name(der: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const VERSION: u8 = 0xa0; // [0] EXPLICIT
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3
    let (tag, certificate) = Der(der).next()?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs) = Der(certificate).next()?;
    if tag != SEQUENCE {
        return None;
    }
    let mut fields = Der(tbs);
    let (mut tag, _) = fields.next()?;
    if tag == VERSION {
        tag = fields.next()?.0; // serialNumber
    }
    if tag != 0x02 {
        return None;
    }
    // signature, issuer, validity, then subject: four SEQUENCEs.
    let mut subject = None;
    for _ in 0..4 {
        let (tag, content) = fields.next()?;
        if tag != SEQUENCE {
            return None;
        }
        subject = Some(content);
    }
    let mut names = Der(subject?);
    let mut found = None;
    while !names.0.is_empty() {
        let (tag, rdn) = names.next()?;
        if tag != SET {
            return None;
        }
        let mut attributes = Der(rdn);
        while !attributes.0.is_empty() {
            let (tag, attribute) = attributes.next()?;
            if tag != SEQUENCE {
                return None;
            }
            let mut parts = Der(attribute);
            let (tag, oid) = parts.next()?;
            if tag != OID {
                return None;
            }
            let (kind, value) = parts.next()?;
            if oid != COMMON_NAME {
                continue;
            }
            if found.is_some() {
                return None; // two common names: ambiguous
            }
            let text = match kind {
                0x0c => std::str::from_utf8(value).ok()?, // UTF8String
                0x13 | 0x16 if value.is_ascii() => std::str::from_utf8(value).ok()?, // Printable, IA5
                _ => return None,
            };
            found = Some(text);
        }
    }
    let name = found?;
    let printable =
        !name.is_empty() && name.len() <= SUBJECT_BYTES_MAX && !name.chars().any(char::is_control);
    printable.then(|| name.to_string())
}

/// A cursor over DER: each [`Der::next`] yields one element's tag and content.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        if tag & 0x1f == 0x1f {
            return None; // high tag numbers: not used on this path
        }
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None; // indefinite or absurd lengths are not DER
            }
            let (bytes, rest) = rest.split_at(n);
            let len = bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, rest)
        };
        if rest.len() < len {
            return None;
        }
        let (content, rest) = rest.split_at(len);
        self.0 = rest;
        Some((tag, content))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use driftless_testkit::TestCa;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().as_ref().to_vec()
    }

    #[test]
    fn the_subject_common_name_is_read_from_test_certificates() {
        let ca = TestCa::new("subject-ca").unwrap();
        let client = ca.client_cert("svc-billing").unwrap();
        assert_eq!(subject_common_name(&der(&client.cert_pem)).as_deref(), Some("svc-billing"));
        assert_eq!(subject_common_name(&der(&ca.server().cert_pem)).as_deref(), Some("localhost"));
        assert_eq!(subject_common_name(&der(ca.ca_pem())).as_deref(), Some("subject-ca"));
    }

    #[test]
    fn a_truncated_or_garbled_certificate_names_no_subject() {
        let ca = TestCa::new("garble-ca").unwrap();
        let good = der(&ca.client_cert("x").unwrap().cert_pem);
        for cut in [0, 1, 2, 10, good.len() / 2, good.len() - 1] {
            assert_eq!(subject_common_name(&good[..cut]), None, "cut at {cut}");
        }
        let mut flipped = good.clone();
        flipped[0] = 0x31;
        assert_eq!(subject_common_name(&flipped), None);
    }

    /// A real handshake over loopback with a client certificate: the verified subject is the
    /// peer identity.
    #[tokio::test]
    async fn a_verified_client_certificate_names_the_peer() {
        let ca = TestCa::new("mtls-ca").unwrap();
        let settings = TlsSettings {
            cert_file: ca.server().cert_path.clone(),
            key_file: ca.server().key_path.clone(),
            client_ca_file: Some(ca.ca_path().to_path_buf()),
            client_cert_required: false,
        };
        let server = TlsServer::load(&settings).unwrap();
        let client_cert = ca.client_cert("svc-crm").unwrap();
        for with_cert in [true, false] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let acceptor = server.acceptor.clone();
            let accepted = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let identity = peer_identity(tls.get_ref().1);
                tls.write_all(b"ok").await.unwrap();
                tls.shutdown().await.unwrap();
                identity
            });
            let connector = client(&ca, with_cert.then_some(&client_cert));
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            let mut answer = Vec::new();
            tls.read_to_end(&mut answer).await.unwrap();
            assert_eq!(answer, b"ok");
            let identity = accepted.await.unwrap();
            let expected = with_cert.then(|| "svc-crm".to_string());
            assert_eq!(identity, PeerIdentity { tls: true, client_subject: expected });
        }
    }

    /// Through the accept loop: every request of a mutual-TLS connection carries the verified
    /// subject in its `PeerIdentity` extension, and a plaintext server's requests carry
    /// `tls: false`.
    #[tokio::test]
    async fn the_accept_loop_puts_the_peer_identity_on_every_request() {
        use axum::routing::get;
        use axum::Extension;
        let ca = TestCa::new("conn-ca").unwrap();
        let settings = TlsSettings {
            cert_file: ca.server().cert_path.clone(),
            key_file: ca.server().key_path.clone(),
            client_ca_file: Some(ca.ca_path().to_path_buf()),
            client_cert_required: true,
        };
        let server = TlsServer::load(&settings).unwrap();
        let app = axum::Router::new().route(
            "/who",
            get(|Extension(peer): Extension<PeerIdentity>| async move {
                format!("{}:{}", peer.tls, peer.client_subject.unwrap_or_default())
            }),
        );
        let limits = crate::conn::Limits {
            connections_max: 8,
            header_read_timeout: Duration::from_secs(5),
            keep_alive_idle: Duration::from_secs(5),
            response_write_stall: Duration::from_secs(5),
        };
        let (stop, stopping) = watch::channel(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = tokio::spawn(crate::conn::serve(
            listener,
            app.clone(),
            limits,
            Some(server.acceptor.clone()),
            stopping.clone(),
        ));
        let plain_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain_addr = plain_listener.local_addr().unwrap();
        let plain = tokio::spawn(crate::conn::serve(plain_listener, app, limits, None, stopping));

        let cert = ca.client_cert("svc-ledger").unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = client(&ca, Some(&cert)).connect(name, tcp).await.unwrap();
        for _ in 0..2 {
            tls.write_all(b"GET /who HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = tls.read(&mut buf).await.unwrap();
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(text.ends_with("true:svc-ledger"), "{text}");
        }
        let mut tcp = tokio::net::TcpStream::connect(plain_addr).await.unwrap();
        tcp.write_all(b"GET /who HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.unwrap();
        let text = String::from_utf8_lossy(&answer).to_string();
        assert!(text.ends_with("false:"), "{text}");
        drop(tls);
        stop.send_replace(true);
        served.await.unwrap();
        plain.await.unwrap();
    }

    fn client(
        ca: &TestCa,
        cert: Option<&driftless_testkit::tls::CertFiles>,
    ) -> tokio_rustls::TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca.ca_pem().as_bytes()).unwrap()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match cert {
            None => builder.with_no_client_auth(),
            Some(c) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    #[test]
    fn changed_files_are_reloaded_and_a_bad_pair_keeps_the_old_one() {
        let ca = TestCa::new("reload-ca").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        fs::write(&cert, &ca.server().cert_pem).unwrap();
        fs::write(&key, &ca.server().key_pem).unwrap();
        let reloading = ReloadingCert::load(&cert, &key).unwrap();
        let first = reloading.current().cert[0].clone();
        assert_eq!(reloading.check(), Reload::Unchanged);

        // A certificate without its key: refused, the old pair still served, reported once.
        let next = ca.new_server_cert("next").unwrap();
        fs::write(&cert, &next.cert_pem).unwrap();
        assert_eq!(reloading.check(), Reload::Failed);
        assert_eq!(reloading.current().cert[0], first);
        assert_eq!(reloading.check(), Reload::Unchanged);

        // Its key arrives: the new pair is served.
        fs::write(&key, &next.key_pem).unwrap();
        assert_eq!(reloading.check(), Reload::Reloaded);
        assert_eq!(reloading.current().cert[0].as_ref(), der(&next.cert_pem).as_slice());

        // Garbage: refused, the new pair kept.
        fs::write(&key, "not a key").unwrap();
        assert_eq!(reloading.check(), Reload::Failed);
        assert_eq!(reloading.current().cert[0].as_ref(), der(&next.cert_pem).as_slice());
    }

    #[test]
    fn load_errors_name_the_file_and_never_quote_the_key() {
        let ca = TestCa::new("err-ca").unwrap();
        let other = TestCa::new("other-ca").unwrap();
        let err = ReloadingCert::load(&ca.server().cert_path, &other.server().key_path)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&other.server().key_path.display().to_string()), "{err}");
        assert!(err.contains("does not go with"), "{err}");
        let body: String = other.server().key_pem.lines().nth(1).unwrap().to_string();
        assert!(!err.contains(&body), "{err}");
        let missing = ReloadingCert::load(Path::new("/nonexistent/c.pem"), Path::new("/k"));
        assert!(missing.unwrap_err().to_string().contains("/nonexistent/c.pem"));
        let err = ReloadingCert::load(&ca.server().key_path, &ca.server().key_path).unwrap_err();
        assert!(err.to_string().contains("CERTIFICATE"), "{err}");
    }
}

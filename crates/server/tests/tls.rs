//! TLS for the HTTP API against a live server with certificates from a test CA (issue 21):
//! https round trips for a client that trusts the CA, refusals for one that does not and for
//! plaintext on the https port, the certificate reloaded when its files change, client
//! certificates required when configured, and the handshake bounded by the header timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftless_broker::BrokerConfig;
use driftless_server::{ServerConfig, TlsSettings};
use driftless_testkit::tls::CertFiles;
use driftless_testkit::TestCa;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::{config, start};

fn tls_config(cert: &Path, key: &Path, client_ca: Option<&Path>, required: bool) -> ServerConfig {
    let mut c = config(BrokerConfig::default());
    c.server.tls = Some(TlsSettings {
        cert_file: cert.to_path_buf(),
        key_file: key.to_path_buf(),
        client_ca_file: client_ca.map(Path::to_path_buf),
        client_cert_required: required,
    });
    c
}

fn client_config(trusted: &TestCa, cert: Option<&CertFiles>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(trusted.ca_pem().as_bytes()).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match cert {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    // Every connection a full handshake: a resumed session shows the certificate of the
    // session it resumes, not the one the server holds now.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// What one https request got: the status, the body and the server's certificate.
struct Answer {
    status: u16,
    body: String,
    server_cert: Vec<u8>,
}

/// One request over a new TLS connection to `localhost`; an `Err` is the TLS or IO failure.
fn https(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<Answer> {
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::clone(client), name).unwrap();
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        addr.port(),
        body.len()
    );
    tls.write_all(head.as_bytes())?;
    let mut answer = Vec::new();
    match tls.read_to_end(&mut answer) {
        Ok(_) => {}
        // A server closing without close_notify after a complete response is common.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(e) => return Err(e),
    }
    let server_cert = tls.conn.peer_certificates().unwrap()[0].as_ref().to_vec();
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok(Answer { status, body, server_cert })
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().as_ref().to_vec()
}

#[test]
fn a_client_trusting_the_test_ca_gets_https_answers() {
    let ca = TestCa::new("api-ca").unwrap();
    let s = start(tls_config(&ca.server().cert_path, &ca.server().key_path, None, false));
    let client = client_config(&ca, None);
    let a = https(s.addr, &client, "POST", "/v1/topics", r#"{"name":"secure"}"#).unwrap();
    assert_eq!(a.status, 201, "{}", a.body);
    let a = https(s.addr, &client, "GET", "/v1/topics", "").unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("secure"), "{}", a.body);
    assert_eq!(a.server_cert, der(&ca.server().cert_pem));
    // The guard sees the scheme: the page's own origin is https, not http.
    let own = format!("https://localhost:{}", s.addr.port());
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::clone(&client), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(s.addr).unwrap());
    for (origin, status) in [(own.as_str(), "200"), ("http://localhost", "403")] {
        write!(
            tls,
            "GET /v1/topics HTTP/1.1\r\nHost: localhost:{}\r\nOrigin: {origin}\r\n\r\n",
            s.addr.port()
        )
        .unwrap();
        let mut buf = [0u8; 4096];
        let n = tls.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{origin}: {text}");
    }
}

#[test]
fn a_client_that_does_not_trust_the_certificate_cannot_connect() {
    let ca = TestCa::new("api-ca").unwrap();
    let stranger = TestCa::new("other-ca").unwrap();
    let s = start(tls_config(&ca.server().cert_path, &ca.server().key_path, None, false));
    let err = https(s.addr, &client_config(&stranger, None), "GET", "/v1/topics", "")
        .err()
        .expect("an untrusted certificate must fail the handshake");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
}

#[test]
fn a_plaintext_request_to_the_https_port_gets_no_http_answer() {
    let ca = TestCa::new("api-ca").unwrap();
    let s = start(tls_config(&ca.server().cert_path, &ca.server().key_path, None, false));
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /v1/topics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer); // closed, or reset
    assert!(!answer.starts_with(b"HTTP/"), "{}", String::from_utf8_lossy(&answer));
    // The server still serves https afterwards.
    let a = https(s.addr, &client_config(&ca, None), "GET", "/healthz", "").unwrap();
    assert_eq!(a.status, 200);
}

#[test]
fn new_connections_get_the_certificate_written_over_the_old_files() {
    let ca = TestCa::new("api-ca").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &ca.server().cert_pem).unwrap();
    std::fs::write(&key, &ca.server().key_pem).unwrap();
    let s = start(tls_config(&cert, &key, None, false));
    let client = client_config(&ca, None);
    let first = https(s.addr, &client, "GET", "/healthz", "").unwrap();
    assert_eq!(first.server_cert, der(&ca.server().cert_pem));

    // A broken pair first: the old certificate keeps being served.
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
    std::thread::sleep(Duration::from_millis(2_500));
    let still = https(s.addr, &client, "GET", "/healthz", "").unwrap();
    assert_eq!((still.status, still.server_cert), (200, der(&ca.server().cert_pem)));

    let renewed = ca.new_server_cert("renewed").unwrap();
    std::fs::write(&key, &renewed.key_pem).unwrap();
    std::fs::write(&cert, &renewed.cert_pem).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = https(s.addr, &client, "GET", "/healthz", "").unwrap();
        assert_eq!(a.status, 200);
        if a.server_cert == der(&renewed.cert_pem) {
            break;
        }
        assert!(Instant::now() < deadline, "the renewed certificate was never served");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn client_certificates_are_required_only_when_configured() {
    let ca = TestCa::new("api-ca").unwrap();
    let alice = ca.client_cert("alice").unwrap();
    let stranger = TestCa::new("other-ca").unwrap();
    let foreign = stranger.client_cert("mallory").unwrap();
    let server = ca.server();
    let required = start(tls_config(&server.cert_path, &server.key_path, Some(ca.ca_path()), true));
    let a =
        https(required.addr, &client_config(&ca, Some(&alice)), "GET", "/v1/topics", "").unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(https(required.addr, &client_config(&ca, None), "GET", "/v1/topics", "").is_err());
    let other = client_config(&ca, Some(&foreign));
    assert!(https(required.addr, &other, "GET", "/v1/topics", "").is_err());

    let optional =
        start(tls_config(&server.cert_path, &server.key_path, Some(ca.ca_path()), false));
    let a = https(optional.addr, &client_config(&ca, None), "GET", "/v1/topics", "").unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    let a =
        https(optional.addr, &client_config(&ca, Some(&alice)), "GET", "/v1/topics", "").unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    // A certificate from another CA is refused even when certificates are optional.
    assert!(https(optional.addr, &other, "GET", "/v1/topics", "").is_err());
}

/// A client that connects and never says hello holds its slot no longer than the header
/// timeout.
#[test]
fn a_silent_client_is_closed_after_the_header_timeout() {
    let ca = TestCa::new("api-ca").unwrap();
    let mut c = tls_config(&ca.server().cert_path, &ca.server().key_path, None, false);
    c.server.header_read_timeout_ms = 300;
    let s = start(c);
    let mut silent = TcpStream::connect(s.addr).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(5), "{waited:?}");
}

/// At `connections_max`, silent connects (no ClientHello) do not lock a real client out for
/// the header timeout: an unfinished handshake yields its slot like an idle connection.
#[test]
fn silent_connects_at_the_bound_yield_their_slot_to_a_real_client() {
    let ca = TestCa::new("api-ca").unwrap();
    let mut c = tls_config(&ca.server().cert_path, &ca.server().key_path, None, false);
    c.server.connections_max = 1;
    c.server.header_read_timeout_ms = 20_000;
    let s = start(c);
    let silent: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(s.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let a = https(s.addr, &client_config(&ca, None), "GET", "/v1/topics", "").unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(t.elapsed() < Duration::from_secs(10), "waited {:?}", t.elapsed());
    drop(silent);
}

/// A certificate file that does not load stops the start-up, naming the file.
#[test]
fn a_bad_certificate_file_stops_the_start_up() {
    let ca = TestCa::new("api-ca").unwrap();
    let c = tls_config(&ca.server().key_path, &ca.server().key_path, None, false);
    let dir = tempfile::tempdir().unwrap();
    let broker =
        Arc::new(driftless_broker::Broker::open(dir.path(), BrokerConfig::default()).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let err = rt
        .block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            driftless_server::serve(listener, broker, &c, async {}).await
        })
        .unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        chain.contains("TLS") && chain.contains(&ca.server().key_path.display().to_string()),
        "{chain}"
    );
}

/// Mutual TLS with authentication on, end to end: a verified client certificate's subject is
/// the principal and acts with exactly the scopes `[auth.clients]` gives it; a subject not
/// listed may do nothing, and a client without a certificate must authenticate otherwise.
#[test]
fn a_client_certificate_subject_acts_with_its_configured_scopes_over_tls() {
    let ca = TestCa::new("api-ca").unwrap();
    let billing = ca.client_cert("billing-svc").unwrap();
    let unlisted = ca.client_cert("unlisted-svc").unwrap();
    let server = ca.server();
    let mut c = tls_config(&server.cert_path, &server.key_path, Some(ca.ca_path()), false);
    c.auth.enabled = true;
    let tokens = tempfile::tempdir().unwrap();
    c.auth.tokens_file = Some(tokens.path().join("tokens.json"));
    c.auth
        .clients
        .insert("billing-svc".into(), vec!["admin:topic:billing.*".into(), "read:topic:*".into()]);
    let s = start(c);
    let billing = client_config(&ca, Some(&billing));
    let a =
        https(s.addr, &billing, "POST", "/v1/topics", r#"{"name":"billing.invoices"}"#).unwrap();
    assert_eq!(a.status, 201, "{}", a.body);
    let a = https(s.addr, &billing, "POST", "/v1/topics", r#"{"name":"crm.customers"}"#).unwrap();
    assert_eq!(a.status, 403, "outside its prefix: {}", a.body);
    assert!(a.body.contains("admin:topic:crm.customers"), "names the scope it lacks: {}", a.body);
    let a = https(s.addr, &billing, "GET", "/v1/topics", "").unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("billing.invoices"), "{}", a.body);
    let a = https(s.addr, &billing, "GET", "/v1/session", "").unwrap();
    assert!(a.body.contains("\"principal\":\"billing-svc\""), "{}", a.body);

    let unlisted = client_config(&ca, Some(&unlisted));
    let a = https(s.addr, &unlisted, "GET", "/v1/topics", "").unwrap();
    assert_eq!(a.status, 403, "a verified but unlisted subject may do nothing: {}", a.body);
    let a = https(s.addr, &client_config(&ca, None), "GET", "/v1/topics", "").unwrap();
    assert_eq!(a.status, 401, "no certificate, no token: {}", a.body);
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `sslmode` against a real PostgreSQL serving TLS with a test CA (`PgServer::start_tls`, whose
//! `pg_hba.conf` has `hostssl` lines only, so a connection that succeeds was encrypted).

use driftless_pgtls::{PgConnect, PgTlsError};
use driftless_testkit::{PgServer, TestCa};

fn url(pg: &PgServer, host: &str, params: &str) -> String {
    format!("postgres://postgres@{host}:{}/postgres?hostaddr=127.0.0.1&{params}", pg.port())
}

async fn ssl_in_use(pg: &PgConnect) -> Result<bool, PgTlsError> {
    let (client, connection) = pg.connect().await?;
    tokio::spawn(connection);
    let row = client
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .unwrap();
    Ok(row.get(0))
}

#[tokio::test]
async fn verify_full_connects_when_the_chain_and_the_host_name_check_out() {
    let ca = TestCa::new("pgtls-ok").unwrap();
    let pg = PgServer::start_tls(ca.server()).unwrap();
    let root = ca.ca_path().display().to_string();
    for host in ["127.0.0.1", "localhost"] {
        let conn =
            PgConnect::parse(&url(&pg, host, &format!("sslmode=verify-full&sslrootcert={root}")))
                .unwrap();
        assert!(ssl_in_use(&conn).await.unwrap(), "connected to {host} without TLS");
    }
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_from_another_ca_and_says_why() {
    let ca = TestCa::new("pgtls-server").unwrap();
    let other = TestCa::new("pgtls-other").unwrap();
    let pg = PgServer::start_tls(ca.server()).unwrap();
    let conn = PgConnect::parse(&url(
        &pg,
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", other.ca_path().display()),
    ))
    .unwrap();
    let e = ssl_in_use(&conn).await.unwrap_err().to_string();
    assert!(e.contains("certificate verification failed"), "{e}");
    assert!(e.contains("not signed by a CA in sslrootcert"), "{e}");
    assert!(e.contains("verify-full") && e.contains("127.0.0.1"), "{e}");
}

#[tokio::test]
async fn verify_full_refuses_a_host_name_the_certificate_does_not_name_but_verify_ca_accepts_it() {
    let ca = TestCa::new("pgtls-name").unwrap();
    let pg = PgServer::start_tls(ca.server()).unwrap();
    let root = ca.ca_path().display().to_string();
    let full = PgConnect::parse(&url(
        &pg,
        "db.wrong.example",
        &format!("sslmode=verify-full&sslrootcert={root}"),
    ))
    .unwrap();
    let e = ssl_in_use(&full).await.unwrap_err().to_string();
    assert!(e.contains("certificate verification failed"), "{e}");
    assert!(e.contains("not valid for this host name"), "{e}");
    // The same server and name: verify-ca checks the chain only.
    let ca_only = PgConnect::parse(&url(
        &pg,
        "db.wrong.example",
        &format!("sslmode=verify-ca&sslrootcert={root}"),
    ))
    .unwrap();
    assert!(ssl_in_use(&ca_only).await.unwrap());
}

#[tokio::test]
async fn require_encrypts_without_verifying_and_disable_is_refused_by_a_tls_only_server() {
    let ca = TestCa::new("pgtls-require").unwrap();
    let pg = PgServer::start_tls(ca.server()).unwrap();
    let require = PgConnect::parse(&url(&pg, "127.0.0.1", "sslmode=require")).unwrap();
    assert!(ssl_in_use(&require).await.unwrap());
    let prefer = PgConnect::parse(&url(&pg, "127.0.0.1", "sslmode=prefer")).unwrap();
    assert!(ssl_in_use(&prefer).await.unwrap());
    let disable = PgConnect::parse(&url(&pg, "127.0.0.1", "sslmode=disable")).unwrap();
    let e = ssl_in_use(&disable).await.unwrap_err().to_string();
    assert!(e.contains("pg_hba.conf") || e.contains("no encryption"), "{e}");
}

#[tokio::test]
async fn a_missing_sslrootcert_is_named() {
    let e = PgConnect::parse(
        "postgres://u:pw1234567@127.0.0.1/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    assert!(!e.contains("pw1234567"), "{e}");
}

#[tokio::test]
async fn the_replication_relay_answers_a_refused_certificate_with_a_postgres_error() {
    use tokio::io::AsyncReadExt;
    let ca = TestCa::new("relay-server").unwrap();
    let other = TestCa::new("relay-other").unwrap();
    let pg = PgServer::start_tls(ca.server()).unwrap();
    let conn = PgConnect::parse(&url(
        &pg,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", other.ca_path().display()),
    ))
    .unwrap();
    let endpoint = driftless_pgtls::ReplicationEndpoint::start(&conn).await.unwrap();
    assert!(endpoint.is_tls());
    let socket =
        std::path::Path::new(endpoint.host()).join(format!(".s.PGSQL.{}", endpoint.port()));
    let mut client = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(20), client.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.first(), Some(&b'E'), "an ErrorResponse: {answer:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("08006"), "{text}");
    assert!(text.contains("certificate verification failed"), "{text}");
    // The socket's directory is private to this process's user.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(endpoint.host()).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "relay directory mode {mode:o}");
}

#[tokio::test]
async fn prefer_against_a_server_without_tls_connects_directly() {
    let pg = PgServer::start().unwrap();
    let conn = PgConnect::parse(&pg.url("postgres")).unwrap();
    let endpoint = driftless_pgtls::ReplicationEndpoint::start(&conn).await.unwrap();
    assert!(!endpoint.is_tls());
    assert_eq!((endpoint.host(), endpoint.port()), ("127.0.0.1", pg.port()));
    assert!(!ssl_in_use(&conn).await.unwrap());
}

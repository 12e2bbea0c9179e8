//! https webhooks against a live TLS server on loopback whose certificate comes from a test CA:
//! delivery when the sink trusts that CA (`ca_file`), and refusal — no request, nothing counted
//! delivered, a dead letter whose errors say "certificate verification failed" without the URL's
//! token — when the server's certificate is not trusted (Mozilla's roots, the default).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use driftless_testkit::tls::CertFiles;
use driftless_testkit::TestCa;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use support::{broker, caught_up, event, quick_retries, start, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "planted-Token-8c1e5b7d";

/// An HTTP/1.1-over-TLS server answering 200 to every request; counts the requests it read.
async fn https_server(cert: &CertFiles) -> (SocketAddr, Arc<AtomicUsize>) {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&cert.cert_path).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(&cert.key_path).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&requests);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, counted) = (acceptor.clone(), Arc::clone(&counted));
            tokio::spawn(async move {
                // A handshake the client refuses ends here.
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                loop {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let mut b = [0u8; 1];
                        if tls.read(&mut b).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(b[0]);
                    }
                    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    let mut body = vec![0u8; len];
                    tls.read_exact(&mut body).await.unwrap();
                    counted.fetch_add(1, Ordering::SeqCst);
                    tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
                }
            });
        }
    });
    (addr, requests)
}

fn sink_toml(addr: SocketAddr, ca_file: Option<&std::path::Path>) -> String {
    let ca = ca_file.map(|p| format!(", ca_file = \"{}\"", p.display())).unwrap_or_default();
    format!(
        r#"
        [[sink]]
        name = "hook"
        topics = ["customers"]
        target = {{ kind = "webhook", url = "https://localhost:{}/hook?token={TOKEN}", timeout_ms = 5000{ca} }}
        [[sink.mapping]]
        types = ["customer.*"]
        "#,
        addr.port()
    )
}

fn events(n: usize) -> Vec<driftless_core::Event> {
    (0..n)
        .map(|i| {
            event(&format!("e{i}"), &format!("c{i}"), "customer.upserted", json!({"i": i}), None)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_delivers_to_a_server_signed_by_the_configured_ca() {
    let ca = TestCa::new("hook-ok").unwrap();
    let (addr, requests) = https_server(ca.server()).await;
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), quick_retries(), "customers", 2);
    b.produce("customers", events(10)).unwrap();
    let sinks = start(&sink_toml(addr, Some(ca.ca_path())), &b);
    wait_until("delivery", Duration::from_secs(30), || async { caught_up(&b, "sink-hook") }).await;
    assert_eq!(requests.load(Ordering::SeqCst), 10);
    assert_eq!(sinks.statuses()[0].report().events_applied_total, 10);
    assert!(b.dead_letters("sink-hook").unwrap().is_empty());
    sinks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_refuses_a_server_with_an_untrusted_certificate() {
    let ca = TestCa::new("hook-untrusted").unwrap();
    let (addr, requests) = https_server(ca.server()).await;
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), quick_retries(), "customers", 1);
    b.produce("customers", events(1)).unwrap();
    // No ca_file: Mozilla's roots, which do not include the test CA.
    let sinks = start(&sink_toml(addr, None), &b);
    wait_until("the dead letter", Duration::from_secs(30), || async {
        b.dead_letters("sink-hook").is_ok_and(|d| !d.is_empty())
    })
    .await;
    let dead = b.dead_letters("sink-hook").unwrap();
    let errors = dead[0].errors.join("\n");
    assert!(errors.contains("certificate verification failed"), "{errors}");
    assert!(errors.contains("token=***"), "the URL is shown redacted: {errors}");
    assert!(!errors.contains(TOKEN), "{errors}");
    let status = sinks.statuses()[0].report();
    assert_eq!(status.events_applied_total, 0, "nothing was counted delivered");
    assert_eq!(requests.load(Ordering::SeqCst), 0, "no request reached the server");
    let (_, error) = sinks.statuses()[0].state();
    assert!(!error.unwrap_or_default().contains(TOKEN));
    sinks.shutdown().await;
}

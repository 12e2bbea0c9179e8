//! The Postgres target over TLS with `sslmode=verify-full` against a server that accepts TCP only
//! over TLS (`PgServer::start_tls`): it applies events when the certificate checks out, and
//! refuses (retrying, never applying) a server whose certificate is from another CA.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use driftless_broker::BrokerConfig;
use driftless_sink::SinkState;
use driftless_testkit::{PgServer, TestCa};
use serde_json::json;
use support::{broker, caught_up, event, start, wait_until};

fn sink_toml(url: &str) -> String {
    format!(
        r#"
        [[sink]]
        name = "contacts"
        topics = ["customers"]
        target = {{ kind = "postgres", url = "{url}" }}
        [[sink.mapping]]
        types = ["customer.upserted"]
        table = "contacts"
        key = ["id"]
        columns = {{ id = ".subject", city = ".data.city" }}
        "#
    )
}

fn verify_full(pg: &PgServer, ca: &TestCa) -> String {
    format!(
        "postgres://postgres@localhost:{}/proj?sslmode=verify-full&sslrootcert={}",
        pg.port(),
        ca.ca_path().display()
    )
}

async fn projection(ca: &TestCa) -> (PgServer, tokio_postgres::Client) {
    let pg = PgServer::start_tls(ca.server()).unwrap();
    pg.create_database("proj").unwrap();
    let conn = driftless_pgtls::PgConnect::parse(&verify_full(&pg, ca)).unwrap();
    let (client, connection) = conn.connect().await.unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE contacts (id text PRIMARY KEY, city text, driftless_version text)",
        )
        .await
        .unwrap();
    (pg, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_sink_with_verify_full_applies_events_over_tls() {
    let ca = TestCa::new("sink-tls").unwrap();
    let (pg, client) = projection(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), BrokerConfig::default(), "customers", 2);
    let events = (0..20)
        .map(|i| {
            let seq = format!("{i:04}");
            event(
                &format!("e{i}"),
                &format!("c{i}"),
                "customer.upserted",
                json!({"city": "Oslo"}),
                Some(&seq),
            )
        })
        .collect();
    b.produce("customers", events).unwrap();
    let sinks = start(&sink_toml(&verify_full(&pg, &ca)), &b);
    wait_until("the events", Duration::from_secs(30), || async { caught_up(&b, "sink-contacts") })
        .await;
    let n: i64 = client.query_one("SELECT count(*) FROM contacts", &[]).await.unwrap().get(0);
    assert_eq!(n, 20);
    sinks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_sink_refuses_a_server_whose_certificate_is_from_another_ca() {
    let ca = TestCa::new("sink-tls-server").unwrap();
    let other = TestCa::new("sink-tls-other").unwrap();
    let (pg, client) = projection(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), BrokerConfig::default(), "customers", 1);
    b.produce(
        "customers",
        vec![event("e1", "c1", "customer.upserted", json!({"city": "Oslo"}), Some("0001"))],
    )
    .unwrap();
    let sinks = start(&sink_toml(&verify_full(&pg, &other)), &b);
    let status = sinks.statuses()[0].clone();
    wait_until("the refusal", Duration::from_secs(30), || async {
        status.state().1.is_some_and(|e| e.contains("certificate verification failed"))
    })
    .await;
    let (state, error) = status.state();
    assert_eq!(state, SinkState::Retrying, "{error:?}");
    let error = error.unwrap();
    assert!(error.contains("not signed by a CA in sslrootcert"), "{error}");
    assert!(!caught_up(&b, "sink-contacts"));
    let n: i64 = client.query_one("SELECT count(*) FROM contacts", &[]).await.unwrap().get(0);
    assert_eq!(n, 0, "nothing was applied through an unverified connection");
    sinks.shutdown().await;
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Postgres sources over TLS with `sslmode=verify-full`, against a server that accepts TCP
//! only over TLS (`PgServer::start_tls`): the snapshot, the control queries and the replication
//! stream (through driftless-pgtls' relay) all verify the server's certificate, and so does the
//! polling outbox relay.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use driftless_broker::{Broker, BrokerConfig};
use driftless_connect::config::{
    OutboxColumns, OutboxMode, PgCdcConfig, PgOutboxConfig, SnapshotMode,
};
use driftless_connect::outbox;
use driftless_connect::pg::cdc;
use driftless_testkit::{PgServer, TestCa};
use support::{context, events};

fn tls_url(pg: &PgServer, ca: &TestCa, host: &str) -> String {
    format!(
        "postgres://postgres@{host}:{}/app?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
        pg.port(),
        ca.ca_path().display()
    )
}

async fn setup(pg: &PgServer, ca: &TestCa) -> tokio_postgres::Client {
    pg.create_database("app").unwrap();
    let conn = driftless_pgtls::PgConnect::parse(&tls_url(pg, ca, "localhost")).unwrap();
    let (db, connection) = conn.connect().await.unwrap();
    tokio::spawn(connection);
    db.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items VALUES (1, 'before the source');",
    )
    .await
    .unwrap();
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cdc_source_with_verify_full_snapshots_and_streams_over_tls() {
    let _ = tracing_subscriber::fmt().with_env_filter("info").with_test_writer().try_init();
    let ca = TestCa::new("cdc-tls").unwrap();
    let pg = PgServer::start_tls(ca.server()).unwrap();
    let db = setup(&pg, &ca).await;
    let dir = tempfile::tempdir().unwrap();
    let broker = Arc::new(Broker::open(dir.path(), BrokerConfig::default()).unwrap());

    let mut config = PgCdcConfig::new(tls_url(&pg, &ca, "localhost"));
    config.tables = vec!["public.items".into()];
    config.topic = "items".into();
    config.snapshot = SnapshotMode::Initial;
    config.heartbeat_interval_ms = 200;
    let (mut ctx, _paused, shutdown) = context(&broker, "app", "postgres_cdc");
    let task = tokio::spawn(async move { cdc::run("app", &config, &mut ctx).await });

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut inserted = false;
    loop {
        let got = events(&broker, "items");
        if !inserted && !got.is_empty() {
            db.execute("INSERT INTO items VALUES (2, 'streamed')", &[]).await.unwrap();
            inserted = true;
        }
        if got.len() >= 2 {
            let text = format!("{got:?}");
            assert!(text.contains("before the source") && text.contains("streamed"), "{text}");
            break;
        }
        assert!(!task.is_finished(), "the source ended: {:?}", task.await);
        assert!(Instant::now() < deadline, "only {} events arrived", got.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The walsender's connection is encrypted (the server would refuse plain TCP anyway).
    let ssl: bool = db
        .query_one(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.backend_type = 'walsender'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
    shutdown.send_replace(true);
    tokio::time::timeout(Duration::from_secs(20), task).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cdc_source_refuses_a_server_whose_certificate_is_from_another_ca() {
    let ca = TestCa::new("cdc-tls-server").unwrap();
    let other = TestCa::new("cdc-tls-other").unwrap();
    let pg = PgServer::start_tls(ca.server()).unwrap();
    let _db = setup(&pg, &ca).await;
    let dir = tempfile::tempdir().unwrap();
    let broker = Arc::new(Broker::open(dir.path(), BrokerConfig::default()).unwrap());
    let config = PgCdcConfig::new(tls_url(&pg, &other, "localhost"));
    let (mut ctx, _paused, _shutdown) = context(&broker, "app", "postgres_cdc");
    let e = tokio::time::timeout(Duration::from_secs(20), cdc::run("app", &config, &mut ctx))
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(e.contains("certificate verification failed"), "{e}");
    assert!(e.contains("source `app`"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cdc_source_refuses_a_host_name_the_server_certificate_does_not_name() {
    let ca = TestCa::new("cdc-tls-name").unwrap();
    let pg = PgServer::start_tls(ca.server()).unwrap();
    let _db = setup(&pg, &ca).await;
    let dir = tempfile::tempdir().unwrap();
    let broker = Arc::new(Broker::open(dir.path(), BrokerConfig::default()).unwrap());
    let config = PgCdcConfig::new(tls_url(&pg, &ca, "db.wrong.example"));
    let (mut ctx, _paused, _shutdown) = context(&broker, "app", "postgres_cdc");
    let e = tokio::time::timeout(Duration::from_secs(20), cdc::run("app", &config, &mut ctx))
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(e.contains("certificate verification failed"), "{e}");
    assert!(e.contains("not valid for this host name"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_outbox_with_verify_full_relays_rows_over_tls() {
    let ca = TestCa::new("outbox-tls").unwrap();
    let pg = PgServer::start_tls(ca.server()).unwrap();
    let db = setup(&pg, &ca).await;
    let url = tls_url(&pg, &ca, "localhost");
    outbox::init_postgres(&url, "app.outbox").await.unwrap();
    db.execute(
        "INSERT INTO app.outbox (id, aggregatetype, aggregateid, type, payload) \
         VALUES ('o1', 'customer', 'c1', 'customer.created', '{\"n\": 1}'::jsonb)",
        &[],
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broker = Arc::new(Broker::open(dir.path(), BrokerConfig::default()).unwrap());
    let config = PgOutboxConfig {
        url: url.into(),
        mode: OutboxMode::Poll,
        outbox: OutboxColumns {
            table: "app.outbox".into(),
            topic_prefix: "app.".into(),
            event_source: None,
        },
        poll_interval_ms: 5,
        batch_rows_max: 10,
        slot: None,
        heartbeat_interval_ms: 10_000,
    };
    let (mut ctx, _paused, shutdown) = context(&broker, "svc", "postgres_outbox");
    let task = tokio::spawn(async move { outbox::run_postgres("svc", &config, &mut ctx).await });
    let deadline = Instant::now() + Duration::from_secs(30);
    while events(&broker, "app.customer").is_empty() {
        assert!(!task.is_finished(), "the relay ended: {:?}", task.await);
        assert!(Instant::now() < deadline, "the outbox row was not relayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(events(&broker, "app.customer")[0].id, "o1");
    shutdown.send_replace(true);
    tokio::time::timeout(Duration::from_secs(20), task).await.unwrap().unwrap().unwrap();
}

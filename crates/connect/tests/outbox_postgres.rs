#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Postgres outbox relay against a real PostgreSQL server and a real broker. Poll mode:
//! committed rows reach the log exactly once, rolled-back rows never, relayed rows leave the
//! outbox, and a crash between the append and the commit of the delete leaves no duplicate even
//! with the broker's deduplication switched off. Cdc mode: committed rows once, rolled-back rows
//! never, and rows already in the outbox when the slot is created are relayed by its snapshot,
//! once, also when rows are inserted while the snapshot runs.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftless_broker::Broker;
use driftless_connect::config::{OutboxColumns, OutboxMode, PgOutboxConfig};
use driftless_connect::outbox::{self, PgStore};
use driftless_connect::pg::cdc;
use driftless_connect::runtime::SourceContext;
use driftless_connect::ConnectError;
use driftless_core::Event;
use driftless_testkit::PgServer;
use serde_json::json;
use support::{open_broker, topic_events as events, Relay};
use tokio::sync::watch;
use tokio_postgres::{Client, NoTls};

const SOURCE: &str = "svc";
const KIND: &str = "postgres_outbox";
const TABLE: &str = "app.outbox";

fn config(url: &str, batch_rows_max: u32) -> PgOutboxConfig {
    PgOutboxConfig {
        url: url.into(),
        mode: OutboxMode::Poll,
        outbox: OutboxColumns {
            table: TABLE.into(),
            topic_prefix: "app.".into(),
            event_source: None,
        },
        poll_interval_ms: 5,
        batch_rows_max,
        slot: None,
        heartbeat_interval_ms: 10_000,
    }
}

fn start(broker: &Arc<Broker>, config: PgOutboxConfig) -> Relay {
    Relay::spawn(broker, SOURCE, KIND, move |mut ctx| async move {
        outbox::run_postgres(SOURCE, &config, &mut ctx).await
    })
}

fn context(broker: &Arc<Broker>) -> (SourceContext, watch::Sender<bool>, watch::Sender<bool>) {
    support::context(broker, SOURCE, KIND)
}

async fn connect(url: &str) -> Client {
    let (client, connection) =
        url.parse::<tokio_postgres::Config>().unwrap().connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// A server with the outbox table `app.outbox`.
async fn server() -> (PgServer, String) {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap().unwrap();
    let url = pg.url("postgres");
    outbox::init_postgres(&url, TABLE).await.unwrap();
    outbox::init_postgres(&url, TABLE).await.unwrap(); // idempotent
    (pg, url)
}

/// Inserts rows `(id, aggregatetype, aggregateid, type, payload)` in one transaction.
async fn write(
    client: &mut Client,
    rows: &[(&str, &str, &str, &str, serde_json::Value)],
    commit: bool,
) {
    let tx = client.transaction().await.unwrap();
    for (id, agg, key, ty, payload) in rows {
        tx.execute(
            "INSERT INTO app.outbox (id, aggregatetype, aggregateid, type, payload) \
             VALUES ($1, $2, $3, $4, $5::text::jsonb)",
            &[id, agg, key, ty, &payload.to_string()],
        )
        .await
        .unwrap();
    }
    if commit {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
}

async fn outbox_ids(client: &Client) -> Vec<String> {
    client
        .query("SELECT id FROM app.outbox ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn ids(broker: &Broker, topics: &[&str]) -> Vec<String> {
    topics.iter().flat_map(|t| events(broker, t)).map(|(_, e)| e.id).collect()
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn poll_mode_relays_committed_rows_once_and_rolled_back_rows_never() {
    let (_pg, url) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = open_broker(dir.path(), true);
    let mut client = connect(&url).await;

    // Setup errors first: a missing table is explained.
    let mut missing = config(&url, 10);
    missing.outbox.table = "public.nope".into();
    let err = start(&broker, missing).task.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("driftless outbox init"), "{err}");

    write(
        &mut client,
        &[
            ("c1-created", "customers", "c-1", "customer.created.v1", json!({"name": "Ada"})),
            ("c1-moved", "customers", "c-1", "customer.moved.v1", json!({"city": "Paris"})),
        ],
        true,
    )
    .await;
    write(
        &mut client,
        &[("c2-created", "customers", "c-2", "customer.created.v1", json!({}))],
        false,
    )
    .await;
    client
        .execute(
            "INSERT INTO app.outbox (id, aggregatetype, aggregateid, type, payload, headers) VALUES \
             ('o1-placed', 'orders', 'o-1', 'order.placed.v1', '{\"total\": 12.5}', \
              '{\"traceparent\": \"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\", \
                \"tracestate\": \"vendor=1\", \"Not-An-Extension\": \"x\"}')",
            &[],
        )
        .await
        .unwrap();

    let relay = start(&broker, config(&url, 100));
    wait_until("the first rows", Duration::from_secs(20), || async {
        ids(&broker, &["app.customers", "app.orders"]).len() == 3
    })
    .await;
    write(
        &mut client,
        &[("c3-created", "customers", "c-3", "customer.created.v1", json!(1))],
        true,
    )
    .await;
    write(
        &mut client,
        &[("c4-created", "customers", "c-4", "customer.created.v1", json!(2))],
        false,
    )
    .await;
    wait_until("the later row", Duration::from_secs(20), || async {
        ids(&broker, &["app.customers"]).len() == 3 && outbox_ids(&client).await.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = Arc::clone(&relay.status);

    // A malformed row stops the source by name and stays in the outbox.
    write(&mut client, &[("bad-1", "no such topic!", "x", "t", json!({}))], true).await;
    let err = tokio::time::timeout(Duration::from_secs(20), relay.task).await.unwrap().unwrap();
    assert!(matches!(&err, Err(ConnectError::OutboxRow { row, .. }) if row == "bad-1"), "{err:?}");
    assert_eq!(outbox_ids(&client).await, ["bad-1"]);

    let mut customers = ids(&broker, &["app.customers"]);
    customers.sort();
    assert_eq!(customers, ["c1-created", "c1-moved", "c3-created"]);
    let all = events(&broker, "app.customers");
    let created = &all.iter().find(|(_, e)| e.id == "c1-created").unwrap().1;
    assert_eq!(created.subject.as_deref(), Some("c-1"));
    assert_eq!(created.ty, "customer.created.v1");
    assert_eq!(created.source, "/outbox/svc");
    assert_eq!(created.data, Some(json!({"name": "Ada"})));
    assert!(created.time.as_deref().is_some_and(driftless_core::is_rfc3339), "{:?}", created.time);
    let c1: Vec<&str> = all
        .iter()
        .filter(|(_, e)| e.subject.as_deref() == Some("c-1"))
        .map(|(_, e)| e.id.as_str())
        .collect();
    assert_eq!(c1, ["c1-created", "c1-moved"]);

    let orders = events(&broker, "app.orders");
    assert_eq!(orders.len(), 1);
    let placed = &orders[0].1;
    assert_eq!(placed.data, Some(json!({"total": 12.5})));
    assert_eq!(
        placed.extension_str("traceparent"),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(placed.extension_str("tracestate"), Some("vendor=1"));
    assert_eq!(placed.extensions.len(), 2);
    assert_eq!(status.events_total.load(Ordering::Relaxed), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_append_and_commit_leaves_no_duplicate() {
    let (_pg, url) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = open_broker(dir.path(), false);
    let mut client = connect(&url).await;
    let first: Vec<String> = (0..5).map(|i| format!("r{i}")).collect();
    for id in &first {
        write(&mut client, &[(id.as_str(), "customers", "c-1", "t", json!({}))], true).await;
    }
    let columns = config(&url, 100).outbox;
    {
        // Steps 1-3 of a batch; then the process "dies": its connection closes and Postgres
        // rolls the batch's transaction (and its locks) back.
        let (ctx, _paused, _shutdown) = context(&broker);
        let mut store = PgStore::open(SOURCE, &url, TABLE).await.unwrap();
        let batch = outbox::read_batch(&mut store, SOURCE, &columns, 100).await.unwrap();
        assert_eq!(batch.ids(), first);
        outbox::mark_pending(&ctx.emitter, &batch).await.unwrap();
        outbox::append(&ctx, &batch).await.unwrap();
    }
    assert_eq!(ids(&broker, &["app.customers"]), first);
    // The rows come back once the dead session's locks are gone.
    wait_until("the rollback", Duration::from_secs(20), || async {
        client
            .query("SELECT id FROM app.outbox FOR UPDATE NOWAIT", &[])
            .await
            .is_ok_and(|rows| rows.len() == 5)
    })
    .await;

    drop(broker);
    let broker = open_broker(dir.path(), false);
    write(&mut client, &[("r5", "customers", "c-1", "t", json!({}))], true).await;
    let relay = start(&broker, config(&url, 100));
    wait_until("the outbox to drain", Duration::from_secs(20), || async {
        outbox_ids(&client).await.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    relay.stop().await.unwrap();
    let expected: Vec<String> = (0..6).map(|i| format!("r{i}")).collect();
    assert_eq!(ids(&broker, &["app.customers"]), expected, "each row once, in seq order");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writers_get_exactly_their_committed_rows_in_order() {
    const WRITERS: usize = 4;
    const ROWS_PER_WRITER: usize = 500;
    let (_pg, url) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = open_broker(dir.path(), true);
    let relay = start(&broker, config(&url, 64));

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut client = connect(&url).await;
                let mut committed = Vec::new();
                let (mut n, mut tx_no) = (0usize, 0usize);
                while n < ROWS_PER_WRITER {
                    let size = (1 + (tx_no * 7 + w) % 6).min(ROWS_PER_WRITER - n);
                    let commit = tx_no % 5 != 3;
                    let rows: Vec<(String, &str, String, &str, serde_json::Value)> = (n..n + size)
                        .map(|i| {
                            let topic = if i % 2 == 0 { "orders" } else { "payments" };
                            (
                                format!("w{w}-{i}"),
                                topic,
                                format!("w{w}-agg{}", i % 8),
                                "e.v1",
                                json!({"writer": w, "n": i}),
                            )
                        })
                        .collect();
                    let refs: Vec<(&str, &str, &str, &str, serde_json::Value)> = rows
                        .iter()
                        .map(|(id, t, k, ty, p)| (id.as_str(), *t, k.as_str(), *ty, p.clone()))
                        .collect();
                    write(&mut client, &refs, commit).await;
                    if commit {
                        committed.extend(rows.into_iter().map(|(id, ..)| id));
                    }
                    n += size;
                    tx_no += 1;
                }
                committed
            })
        })
        .collect();
    let mut committed = HashSet::new();
    for w in writers {
        committed.extend(w.await.unwrap());
    }
    assert!(committed.len() < WRITERS * ROWS_PER_WRITER, "some transactions rolled back");

    let client = connect(&url).await;
    wait_until("every committed row", Duration::from_secs(60), || async {
        outbox_ids(&client).await.is_empty()
            && ids(&broker, &["app.orders", "app.payments"]).len() >= committed.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = Arc::clone(&relay.status);
    relay.stop().await.unwrap();
    assert_eq!(status.events_total.load(Ordering::Relaxed), committed.len() as u64);

    let mut seen = HashSet::new();
    let mut last: BTreeMap<String, (usize, i64)> = BTreeMap::new();
    for topic in ["app.orders", "app.payments"] {
        for (p, e) in events(&broker, topic) {
            assert!(seen.insert(e.id.clone()), "{} appended twice", e.id);
            let key = format!("{topic}/{}", e.subject.clone().unwrap());
            let n = e.data.as_ref().unwrap()["n"].as_i64().unwrap();
            if let Some((lp, ln)) = last.insert(key.clone(), (p, n)) {
                assert_eq!(lp, p, "{key} spans partitions");
                assert!(ln < n, "{key}: {n} after {ln}");
            }
        }
    }
    assert_eq!(seen, committed);
}

#[tokio::test(flavor = "multi_thread")]
async fn cdc_mode_relays_committed_rows_once_and_rolled_back_rows_never() {
    let (_pg, url) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = open_broker(dir.path(), false);
    let mut client = connect(&url).await;
    let mut cdc = config(&url, 10);
    cdc.mode = OutboxMode::Cdc;
    let relay = start(&broker, cdc.clone());
    let status = Arc::clone(&relay.status);
    wait_until("the CDC relay to run", Duration::from_secs(20), || {
        let running = status.state().0 == driftless_connect::SourceState::Running;
        async move { running }
    })
    .await;
    write(
        &mut client,
        &[
            ("c1-created", "customers", "c-1", "customer.created.v1", json!({"name": "Ada"})),
            ("c1-moved", "customers", "c-1", "customer.moved.v1", json!({"city": "Paris"})),
        ],
        true,
    )
    .await;
    write(
        &mut client,
        &[("c2-created", "customers", "c-2", "customer.created.v1", json!({}))],
        false,
    )
    .await;
    // The service may delete relayed rows at once (the Debezium pattern): deletes are no events.
    client.batch_execute("DELETE FROM app.outbox").await.unwrap();
    wait_until("two events", Duration::from_secs(20), || {
        let n = events(&broker, "app.customers").len();
        async move { n >= 2 }
    })
    .await;
    relay.stop().await.unwrap();
    // A restart re-reads nothing twice, even with the broker's deduplication off.
    write(
        &mut client,
        &[("c3-created", "customers", "c-3", "customer.created.v1", json!({}))],
        true,
    )
    .await;
    let relay = start(&broker, cdc);
    wait_until("three events", Duration::from_secs(20), || {
        let n = events(&broker, "app.customers").len();
        async move { n >= 3 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.stop().await.unwrap();
    let events: Vec<Event> = events(&broker, "app.customers").into_iter().map(|(_, e)| e).collect();
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique, HashSet::from(["c1-created", "c1-moved", "c3-created"]));
    let moved = events.iter().find(|e| e.id == "c1-moved").unwrap();
    assert_eq!(moved.subject.as_deref(), Some("c-1"));
    assert_eq!(moved.ty, "customer.moved.v1");
    assert_eq!(moved.data, Some(json!({"city": "Paris"})));
}

#[tokio::test(flavor = "multi_thread")]
async fn cdc_mode_relays_the_rows_already_in_the_outbox_through_its_snapshot() {
    let (_pg, url) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = open_broker(dir.path(), false);
    let mut client = connect(&url).await;
    // Written before the relay's slot exists: only the snapshot can relay them.
    write(
        &mut client,
        &[
            ("o1", "customers", "c-1", "customer.created.v1", json!({"name": "Ada"})),
            ("o2", "orders", "o-9", "order.placed.v1", json!({"total": 12})),
        ],
        true,
    )
    .await;
    let mut cdc = config(&url, 10);
    cdc.mode = OutboxMode::Cdc;
    let relay = start(&broker, cdc);
    let status = Arc::clone(&relay.status);
    wait_until("the snapshot", Duration::from_secs(30), || {
        let done = status.state().0 == driftless_connect::SourceState::Running
            && status.snapshot_rows_total.load(Ordering::Relaxed) > 0;
        async move { done }
    })
    .await;
    write(&mut client, &[("o3", "customers", "c-1", "customer.moved.v1", json!({}))], true).await;
    wait_until("three events", Duration::from_secs(20), || {
        let n = ids(&broker, &["app.customers", "app.orders"]).len();
        async move { n >= 3 }
    })
    .await;
    relay.stop().await.unwrap();
    assert_eq!(status.snapshot_rows_done.load(Ordering::Relaxed), 2);
    // Relayed rows leave the outbox, as in poll mode (issue 22: cdc mode never deleted them).
    assert!(outbox_ids(&client).await.is_empty(), "{:?}", outbox_ids(&client).await);
    assert_eq!(ids(&broker, &["app.customers"]), ["o1", "o3"]);
    let orders = events(&broker, "app.orders");
    assert_eq!(orders.len(), 1, "{orders:?}");
    let order = &orders[0].1;
    assert_eq!((order.id.as_str(), order.ty.as_str()), ("o2", "order.placed.v1"));
    assert_eq!(order.subject.as_deref(), Some("o-9"));
    assert_eq!(order.data, Some(json!({"total": 12})));
}

/// Regression test for "an outbox row inserted during a multi-chunk snapshot is relayed twice".
/// A new slot in cdc mode comes with a snapshot of the rows already in the outbox, read as outbox
/// events with the row's id. A row inserted after the slot exists is relayed by the stream; a
/// snapshot chunk whose key range holds it, requested after the stream decoded it, used to read
/// it again (a chunk only consulted its own window), relaying the same id twice.
///
/// The relay pauses right after creating its slot and requesting chunk 1; the rows inserted then
/// precede chunk 2's low watermark in WAL, so they are decoded before chunk 3, which holds their
/// keys, is requested. `postgres_outbox` has no chunk size setting, so the test runs the CDC
/// source with the outbox columns as `postgres_outbox` in cdc mode sets them, and chunks of 10
/// rows. The broker's deduplication is off.
#[tokio::test(flavor = "multi_thread")]
async fn an_outbox_row_inserted_during_a_multi_chunk_snapshot_is_relayed_once() {
    const OLD: usize = 20;
    const NEW: usize = 5;
    let (_pg, url) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = open_broker(dir.path(), false);
    let mut client = connect(&url).await;
    client
        .batch_execute(&format!(
            "INSERT INTO app.outbox (id, aggregatetype, aggregateid, type, payload) \
             SELECT 'old-' || g, 'customers', 'c-' || (g % 7), 'customer.created.v1', \
                    jsonb_build_object('g', g) \
             FROM generate_series(1, {OLD}) g"
        ))
        .await
        .unwrap();
    let mut cdc = driftless_connect::config::PgCdcConfig::new(url.clone());
    cdc.tables = vec![TABLE.into()];
    cdc.outbox = Some(config(&url, 10).outbox);
    cdc.snapshot_chunk_rows = 10;
    let (mut ctx, paused, shutdown) = context(&broker);
    paused.send_replace(true);
    let status = Arc::clone(&ctx.status);
    let relay = tokio::spawn(async move { cdc::run(SOURCE, &cdc, &mut ctx).await });
    wait_until("the relay to pause after creating its slot", Duration::from_secs(30), || {
        let paused = status.state().0 == driftless_connect::SourceState::Paused;
        async move { paused }
    })
    .await;
    for n in 0..NEW {
        let id = format!("new-{n}");
        write(&mut client, &[(&id, "customers", "c-new", "customer.created.v1", json!({}))], true)
            .await;
    }
    paused.send_replace(false);
    let expected: HashSet<String> =
        (1..=OLD).map(|g| format!("old-{g}")).chain((0..NEW).map(|n| format!("new-{n}"))).collect();
    wait_until("every row and the end of the snapshot", Duration::from_secs(60), || {
        let ids: HashSet<String> = ids(&broker, &["app.customers"]).into_iter().collect();
        let done = status.state().0 == driftless_connect::SourceState::Running
            && status.snapshot_rows_total.load(Ordering::Relaxed) > 0
            && ids == expected;
        async move { done }
    })
    .await;
    shutdown.send_replace(true);
    tokio::time::timeout(Duration::from_secs(20), relay).await.unwrap().unwrap().unwrap();

    // The snapshot read the old rows, and the new ones unless they were relayed and deleted
    // before the chunk holding their keys was read ...
    let read = status.snapshot_rows_done.load(Ordering::Relaxed);
    assert!((OLD as u64..=(OLD + NEW) as u64).contains(&read), "{read} rows read");
    // ... every row was relayed once, and left the outbox.
    assert!(outbox_ids(&client).await.is_empty(), "{:?}", outbox_ids(&client).await);
    let got = ids(&broker, &["app.customers"]);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &got {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "{} events for {} rows; twice: {twice:?}", got.len(), counts.len());
    assert_eq!(got.len(), OLD + NEW);
    let old = events(&broker, "app.customers").into_iter().find(|(_, e)| e.id == "old-8").unwrap();
    assert_eq!(old.1.subject.as_deref(), Some("c-1"));
    assert_eq!(old.1.data, Some(json!({"g": 8})));
}

/// Regression test for "outbox rows are never deleted in the default `mode = \"cdc\"`" (issue
/// 22): relayed rows are deleted once their events are durable, before the position is
/// acknowledged, so a crash between the durable append and the delete (the failpoint) leaves
/// neither a duplicate — Postgres sends the rows again and the recovered ids drop them — nor a
/// row behind: they are deleted after the restart. The broker's deduplication is off.
#[tokio::test(flavor = "multi_thread")]
async fn cdc_mode_deletes_relayed_rows_also_after_a_crash_before_the_delete() {
    use driftless_connect::failpoint::Failpoints;
    let (_pg, url) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = open_broker(dir.path(), false);
    let mut client = connect(&url).await;
    let mut cdc = config(&url, 10);
    cdc.mode = OutboxMode::Cdc;
    let (mut ctx, _paused, shutdown) = context(&broker);
    ctx.failpoints = Failpoints::fail_after_append_before_ack(1);
    let status = Arc::clone(&ctx.status);
    let runs = tokio::spawn(async move {
        let mut crashes = 0;
        loop {
            match outbox::run_postgres(SOURCE, &cdc, &mut ctx).await {
                Err(ConnectError::Failpoint { .. }) => crashes += 1,
                // The crashed run's walsender can hold the slot for a moment.
                Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(50)).await,
                other => return (other, crashes),
            }
        }
    });
    wait_until("the CDC relay to run", Duration::from_secs(20), || {
        let running = status.state().0 == driftless_connect::SourceState::Running;
        async move { running }
    })
    .await;
    write(
        &mut client,
        &[
            ("r1", "customers", "c-1", "customer.created.v1", json!({})),
            ("r2", "customers", "c-2", "customer.created.v1", json!({})),
            ("r3", "orders", "o-1", "order.placed.v1", json!({})),
        ],
        true,
    )
    .await;
    wait_until("the rows relayed and deleted", Duration::from_secs(30), || {
        let relayed = ids(&broker, &["app.customers", "app.orders"]).len() >= 3;
        let client = &client;
        async move { relayed && outbox_ids(client).await.is_empty() }
    })
    .await;
    wait_until("a backlog of 0", Duration::from_secs(10), || {
        let zero = status.outbox_backlog_rows.load(Ordering::Relaxed) == 0;
        async move { zero }
    })
    .await;
    shutdown.send_replace(true);
    let (ended, crashes) =
        tokio::time::timeout(Duration::from_secs(20), runs).await.unwrap().unwrap();
    ended.unwrap();
    assert_eq!(crashes, 1, "the failpoint did not fire");
    let mut got = ids(&broker, &["app.customers", "app.orders"]);
    got.sort();
    assert_eq!(got, ["r1", "r2", "r3"]);
}

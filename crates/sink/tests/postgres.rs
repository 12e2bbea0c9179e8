//! The Postgres table target against a real PostgreSQL: effectively-once apply under
//! redelivery, the version guard, poison events, an outage of the target, and schema errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use driftless_broker::{BrokerConfig, SeekTarget};
use driftless_sink::SinkState;
use driftless_testkit::PgServer;
use serde_json::json;
use support::{broker, caught_up, event, quick_retries, start, wait_until};
use tokio_postgres::{Client, NoTls};

const TABLE_DDL: &str = "CREATE TABLE contacts (id text PRIMARY KEY, city text, n int, \
                         driftless_version text)";

/// A throwaway PostgreSQL with database `proj` holding the tables of `ddl`, and a client to it.
async fn projection(ddl: &str) -> (PgServer, Client) {
    let pg = PgServer::start().unwrap();
    pg.create_database("proj").unwrap();
    let client = connect(&pg, "proj").await;
    client.batch_execute(ddl).await.unwrap();
    (pg, client)
}

async fn connect(pg: &PgServer, db: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(&pg.url(db), NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

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
        columns = {{ id = ".subject", city = ".data.city", n = ".data.n" }}
        [[sink.mapping]]
        types = ["customer.deleted"]
        table = "contacts"
        key = ["id"]
        op = "delete"
        "#
    )
}

/// id → (city, n).
type Rows = BTreeMap<String, (Option<String>, Option<i32>)>;

async fn rows(client: &Client) -> Rows {
    client
        .query("SELECT id, city, n FROM contacts", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
}

/// A history of upserts and deletes over `keys` keys, and the state it should leave.
fn history(events: usize, keys: usize) -> (Vec<driftless_core::Event>, Rows) {
    let mut out = Vec::new();
    let mut model = BTreeMap::new();
    for i in 0..events {
        let key = format!("c{}", (i * 7) % keys);
        let seq = format!("{i:08}");
        if i % 5 == 4 {
            out.push(event(&format!("e{i}"), &key, "customer.deleted", json!({}), Some(&seq)));
            model.remove(&key);
        } else {
            let city = format!("city-{i}");
            out.push(event(
                &format!("e{i}"),
                &key,
                "customer.upserted",
                json!({"city": city, "n": i}),
                Some(&seq),
            ));
            model.insert(key, (Some(city), Some(i as i32)));
        }
    }
    (out, model)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_duplicates_leave_the_projection_as_one_clean_pass() {
    let (pg, client) = projection(TABLE_DDL).await;
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), BrokerConfig::default(), "customers", 4);
    let (events, model) = history(600, 50);
    b.produce("customers", events).unwrap();
    let sinks = start(&sink_toml(&pg.url("proj")), &b);
    wait_until("the first pass", Duration::from_secs(30), || async {
        caught_up(&b, "sink-contacts")
    })
    .await;
    assert_eq!(rows(&client).await, model, "one pass gives the history's final state");
    let applied = sinks.statuses()[0].report().events_applied_total;
    assert_eq!(applied, 600);

    // Every event again, as after a crash before the acknowledgements.
    b.seek("sink-contacts", "customers", None, SeekTarget::Earliest).unwrap();
    let status = sinks.statuses()[0].clone();
    wait_until("the replay", Duration::from_secs(30), || async {
        status.report().events_applied_total >= 1200 && caught_up(&b, "sink-contacts")
    })
    .await;
    assert_eq!(rows(&client).await, model, "the replay changed nothing");
    let positions: i64 = client
        .query_one(
            "SELECT sum(applied_offset + 1)::bigint FROM driftless_sink_positions WHERE sink = 'contacts'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(positions, 600, "the applied positions cover every event");
    sinks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_event_is_refused_by_the_sequence_guard() {
    let (pg, client) = projection(TABLE_DDL).await;
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), BrokerConfig::default(), "customers", 1);
    let up = |id: &str, key: &str, city: &str, seq: &str| {
        event(id, key, "customer.upserted", json!({"city": city, "n": 1}), Some(seq))
    };
    b.produce(
        "customers",
        vec![
            up("a1", "a", "new", "0005"),
            up("a0", "a", "old", "0003"), // older than what is stored: refused
            up("d1", "d", "here", "0001"),
            event("d2", "d", "customer.deleted", json!({}), Some("0007")),
            up("d0", "d", "zombie", "0006"), // older than the delete: the tombstone refuses it
        ],
    )
    .unwrap();
    let sinks = start(&sink_toml(&pg.url("proj")), &b);
    wait_until("the events", Duration::from_secs(30), || async { caught_up(&b, "sink-contacts") })
        .await;
    let r = rows(&client).await;
    assert_eq!(
        r.get("a"),
        Some(&(Some("new".to_string()), Some(1))),
        "the stale write was refused"
    );
    assert!(!r.contains_key("d"), "the deleted row stayed deleted: {r:?}");
    let version: String = client
        .query_one("SELECT driftless_version FROM contacts WHERE id = 'a'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, "0005");
    let tomb: String = client
        .query_one("SELECT version FROM driftless_sink_tombstones WHERE key = '[\"d\"]'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tomb, "0007");
    sinks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_goes_to_the_dlq_while_other_keys_keep_updating() {
    let (pg, client) = projection(TABLE_DDL).await;
    let dir = tempfile::tempdir().unwrap();
    // One partition: the poison key shares it with every other key.
    let b = broker(dir.path(), quick_retries(), "customers", 1);
    let up = |id: &str, key: &str, n: serde_json::Value| {
        event(id, key, "customer.upserted", json!({"city": "x", "n": n}), None)
    };
    b.produce(
        "customers",
        vec![
            up("k1", "k1", json!(1)),
            up("p1", "p", json!("not a number")), // the target refuses it
            up("k2", "k2", json!(2)),
            up("p2", "p", json!(22)), // waits behind p1 (per-key order), then applies
            up("k3", "k3", json!(3)),
        ],
    )
    .unwrap();
    let mut bad_key = up("m1", "m", json!(5));
    bad_key.subject = None; // the mapping's key is the subject: a mapping error
    b.produce("customers", vec![bad_key]).unwrap();
    let sinks = start(&sink_toml(&pg.url("proj")), &b);
    wait_until("the dead letters", Duration::from_secs(30), || async {
        b.dead_letters("sink-contacts").map(|d| d.len()).unwrap_or(0) == 2
            && caught_up(&b, "sink-contacts")
    })
    .await;
    let r = rows(&client).await;
    for (k, n) in [("k1", 1), ("k2", 2), ("k3", 3), ("p", 22)] {
        assert_eq!(r.get(k).and_then(|v| v.1), Some(n), "{k} in {r:?}");
    }
    let dead = b.dead_letters("sink-contacts").unwrap();
    let p1 = dead.iter().find(|d| d.event["id"] == "p1").expect("p1 is dead-lettered");
    assert_eq!(p1.attempts, 3);
    assert!(p1.errors.iter().all(|e| e.contains("invalid input syntax")), "{:?}", p1.errors);
    let m1 = dead.iter().find(|d| d.event["id"] == "m1").expect("m1 is dead-lettered");
    assert!(m1.errors[0].contains("mapping[0].key"), "{:?}", m1.errors);
    assert!(sinks.statuses()[0].report().events_rejected_total >= 6);
    sinks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_down_for_30_s_catches_up_with_nothing_lost() {
    let (mut pg, client) = projection(TABLE_DDL).await;
    drop(client);
    let dir = tempfile::tempdir().unwrap();
    // Default delivery settings: an outage must not push events towards the dead-letter queue.
    let b = broker(dir.path(), BrokerConfig::default(), "customers", 4);
    let (events, model) = history(1000, 200);
    let (before, during) = events.split_at(400);
    b.produce("customers", before.to_vec()).unwrap();
    let sinks = start(&sink_toml(&pg.url("proj")), &b);
    wait_until("the first events", Duration::from_secs(30), || async {
        caught_up(&b, "sink-contacts")
    })
    .await;

    pg.stop();
    b.produce("customers", during.to_vec()).unwrap();
    let status = sinks.statuses()[0].clone();
    wait_until("the sink to notice", Duration::from_secs(30), || async {
        status.state().0 == SinkState::Retrying
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(status.state().0, SinkState::Retrying, "{:?}", status.state());
    assert!(status.state().1.unwrap_or_default().contains("unavailable"));
    pg.restart().unwrap();

    wait_until("the catch-up", Duration::from_secs(60), || async {
        caught_up(&b, "sink-contacts")
    })
    .await;
    let client = connect(&pg, "proj").await;
    assert_eq!(rows(&client).await, model, "nothing lost, nothing doubled");
    assert!(b.dead_letters("sink-contacts").unwrap().is_empty(), "the outage blamed no event");
    assert_eq!(status.state().0, SinkState::Running);
    sinks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_mismatch_names_the_table_and_column_and_resumes_once_fixed() {
    let (pg, client) = projection(
        "CREATE TABLE contacts (id text PRIMARY KEY, city text, driftless_version text)",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), BrokerConfig::default(), "customers", 1);
    b.produce(
        "customers",
        vec![event("e1", "c1", "customer.upserted", json!({"city": "x", "n": 7}), None)],
    )
    .unwrap();
    let sinks = start(&sink_toml(&pg.url("proj")), &b);
    let status = sinks.statuses()[0].clone();
    wait_until("the schema error", Duration::from_secs(30), || async {
        status.state().1.is_some_and(|e| e.contains("`contacts`") && e.contains("`n`"))
    })
    .await;
    assert_eq!(status.state().0, SinkState::Retrying);
    client.batch_execute("ALTER TABLE contacts ADD COLUMN n int").await.unwrap();
    wait_until("the sink to resume", Duration::from_secs(60), || async {
        caught_up(&b, "sink-contacts")
    })
    .await;
    assert_eq!(rows(&client).await.get("c1"), Some(&(Some("x".into()), Some(7))));
    sinks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_equals_a_clean_pass_while_readers_keep_the_old_table_until_the_swap() {
    use driftless_sink::rebuild::RebuildPhase;
    let (pg, client) = projection(TABLE_DDL).await;
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), BrokerConfig::default(), "customers", 4);
    let (events, _) = history(30_000, 2_000);
    let (first, later) = events.split_at(25_000);
    for chunk in first.chunks(5_000) {
        b.produce("customers", chunk.to_vec()).unwrap();
    }
    // Small batches: the replay takes long enough for readers to look at the table meanwhile.
    let toml = sink_toml(&pg.url("proj")).replace(
        "topics = [\"customers\"]",
        "topics = [\"customers\"]\n        batch_events_max = 50",
    );
    let sinks = start(&toml, &b);
    wait_until("the projection", Duration::from_secs(120), || async {
        caught_up(&b, "sink-contacts")
    })
    .await;
    // Drift: a hand-made edit and an extra row, which a rebuild from the log removes. The edit
    // claims a version above every event's, so the live sink's guard leaves it alone meanwhile.
    client
        .batch_execute(
            "UPDATE contacts SET city = 'tampered', driftless_version = '99999999' WHERE id = 'c7'",
        )
        .await
        .unwrap();
    client.batch_execute("INSERT INTO contacts VALUES ('extra', 'x', 0, '0')").await.unwrap();
    let before = rows(&client).await;

    let status = sinks.rebuild("contacts").unwrap();
    b.produce("customers", later.to_vec()).unwrap(); // writes keep flowing meanwhile
    let mut observed_old = 0;
    loop {
        let phase = status.rebuild().unwrap().phase;
        if phase == RebuildPhase::Done {
            break;
        }
        assert_ne!(phase, RebuildPhase::Failed, "{:?}", status.rebuild());
        let seen = rows(&client).await;
        if phase == RebuildPhase::Replaying
            && status.rebuild().unwrap().phase == RebuildPhase::Replaying
        {
            // Readers see the old table, drift included, until the swap.
            assert_eq!(seen.get("c7").and_then(|r| r.0.as_deref()), Some("tampered"));
            assert!(seen.contains_key("extra"));
            observed_old += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(observed_old > 0, "the replay was never observed");
    assert_ne!(before, rows(&client).await);
    wait_until("the live sink after the swap", Duration::from_secs(60), || async {
        caught_up(&b, "sink-contacts")
    })
    .await;
    let (all, model) = history(30_000, 2_000);
    assert_eq!(all.len(), 30_000);
    assert_eq!(rows(&client).await, model, "the rebuilt table is a clean pass over every event");
    let leftovers: Option<String> = client
        .query_one(
            "SELECT string_agg(relname, ', ') FROM pg_class WHERE relname LIKE 'contacts\\_\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leftovers, None, "no shadow, old table or shadow-named index is left behind");
    assert_eq!(sinks.statuses()[0].state().0, SinkState::Running);
    assert!(
        !b.list_groups().iter().any(|g| g.ends_with("-rebuild")),
        "the replay's group is deleted: {:?}",
        b.list_groups()
    );

    // The live sink keeps applying to the swapped-in table.
    b.produce(
        "customers",
        vec![event(
            "after",
            "c7",
            "customer.upserted",
            json!({"city": "after", "n": 1}),
            Some("99999999"),
        )],
    )
    .unwrap();
    wait_until("the next event", Duration::from_secs(30), || async {
        rows(&client).await.get("c7").and_then(|r| r.0.clone()).as_deref() == Some("after")
    })
    .await;
    assert!(sinks.rebuild("nope").is_err());
    sinks.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_workers_split_the_partitions_and_keep_the_projection_exact() {
    let (pg, client) = projection(TABLE_DDL).await;
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), BrokerConfig::default(), "customers", 4);
    let (events, model) = history(3_000, 100);
    b.produce("customers", events).unwrap();
    let toml = sink_toml(&pg.url("proj"))
        .replace("topics = [\"customers\"]", "topics = [\"customers\"]\n        workers = 3");
    let sinks = start(&toml, &b);
    wait_until("three members", Duration::from_secs(30), || async {
        b.describe_group("sink-contacts").is_ok_and(|g| g.members.len() == 3)
    })
    .await;
    wait_until("the projection", Duration::from_secs(60), || async {
        caught_up(&b, "sink-contacts")
    })
    .await;
    assert_eq!(rows(&client).await, model, "per-key order held across the workers");
    let members = b.describe_group("sink-contacts").unwrap().members;
    let assigned: usize = members.iter().map(|m| m.assignments.len()).sum();
    assert_eq!(assigned, 4, "every partition has one owner: {members:?}");
    assert!(members.iter().all(|m| !m.assignments.is_empty()), "each worker owns a partition");

    // A rebuild pauses every worker before the swap.
    let status = sinks.rebuild("contacts").unwrap();
    wait_until("the rebuild", Duration::from_secs(60), || async {
        let phase = status.rebuild().unwrap().phase;
        assert_ne!(phase, driftless_sink::rebuild::RebuildPhase::Failed, "{:?}", status.rebuild());
        phase == driftless_sink::rebuild::RebuildPhase::Done
    })
    .await;
    assert_eq!(rows(&client).await, model);
    wait_until("the workers to resume", Duration::from_secs(30), || async {
        status.state().0 == SinkState::Running
    })
    .await;
    sinks.shutdown().await;
}

/// Columns of many types, written by typed `unnest` arrays (or, for an array column, through
/// JSON): every value lands as the type's input function reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_every_common_type_land_in_their_columns() {
    let (pg, client) = projection(
        "CREATE TABLE typed (id uuid PRIMARY KEY, n numeric, b boolean, at timestamptz, \
             doc jsonb, label text, tags text[], driftless_version text); \
             CREATE TABLE untagged (id uuid PRIMARY KEY, n numeric, b boolean, at timestamptz, \
             doc jsonb, label text, driftless_version text)",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), BrokerConfig::default(), "things", 1);
    let data = json!({"id": "7b1c4f0e-2f7d-4a8e-9a57-0c4d2b8f1e11", "n": "12345678901234567890.5",
        "b": true, "at": "2026-11-25T12:00:00Z", "doc": {"nested": [1, "two"]}, "label": "it's",
        "tags": ["a", "b"]});
    b.produce("things", vec![event("e1", "x", "thing.v1", data, Some("1"))]).unwrap();
    let toml = format!(
        r#"
        [[sink]]
        name = "typed"
        topics = ["things"]
        target = {{ kind = "postgres", url = "{}" }}
        [[sink.mapping]]
        table = "typed"
        key = ["id"]
        row = ".data"
        [[sink.mapping]]
        table = "untagged"
        key = ["id"]
        row = ".data | del(.tags)"
        "#,
        pg.url("proj")
    );
    let sinks = start(&toml, &b);
    wait_until("the rows", Duration::from_secs(30), || async { caught_up(&b, "sink-typed") }).await;
    for table in ["typed", "untagged"] {
        let row = client
            .query_one(
                &format!(
                    "SELECT n::text, b, at = '2026-11-25T12:00:00Z', doc::text, label \
                     FROM {table}"
                ),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "12345678901234567890.5", "{table}");
        assert!(row.get::<_, bool>(1), "{table}");
        assert!(row.get::<_, bool>(2), "{table}");
        assert_eq!(row.get::<_, String>(3), r#"{"nested": [1, "two"]}"#, "{table}");
        assert_eq!(row.get::<_, String>(4), "it's", "{table}");
    }
    let tags: Vec<String> = client.query_one("SELECT tags FROM typed", &[]).await.unwrap().get(0);
    assert_eq!(tags, ["a", "b"]);
    sinks.shutdown().await;
}

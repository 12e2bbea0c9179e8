//! Crash test of Postgres change data capture: 100,000 changes from four concurrent writers
//! while the real `driftless serve` (with a `postgres_cdc` source) is SIGKILLed at random moments
//! at least 10 times and its replication connection is terminated by Postgres
//! (`pg_terminate_backend`) at least 10 times.
//!
//! What it proves, reading the log directly while the server is down and at the end:
//! - every committed change is in the log exactly once (0 missing, 0 duplicated ids, 0
//!   duplicated `(row, version)`), and no change of a rolled-back transaction is;
//! - the slot's confirmed LSN was never ahead of the durable position: after each kill, every
//!   change whose commit LSN is below the slot's `confirmed_flush_lsn` was already in the log
//!   (Postgres will never send it again, so had it been missing it would be lost).
//!
//! The broker's own deduplication is switched off (`dedup_ids_max = 0`), so only the source's
//! recovery can prevent duplicates.
//!
//! Invariants of the harness: writers record a change only after their COMMIT returned; every
//! wait is bounded; the server is killed on drop.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use driftless_broker::{Broker, BrokerConfig};
use driftless_connect::pg::parse_lsn;
use driftless_core::TopicName;
use driftless_testkit::PgServer;
use rand::Rng;
use serde_json::Value;

const KILLS: usize = 10;
const CHANGES: usize = 100_000;
const WRITERS: usize = 4;
const TOPIC: &str = "app.public.item";

/// A committed change: (row id, version after it).
type Change = (String, i64);

/// Every event of the CDC topic: event id → (change, commit LSN), plus the ids seen twice.
fn read_log(data_dir: &Path) -> (HashMap<String, (Change, u64)>, Vec<String>) {
    let broker = Broker::open(data_dir, BrokerConfig::default()).unwrap();
    let mut events = HashMap::new();
    let mut twice = Vec::new();
    if let Some(topic) = broker.log().topic(&TopicName::new(TOPIC).unwrap()) {
        for p in topic.partitions() {
            let mut next = p.start_offset();
            while next < p.end_offset() {
                let batch = p.read(next, 10_000, 64 << 20).unwrap();
                for r in batch.records {
                    let e: Value = serde_json::from_slice(&r.value.unwrap()).unwrap();
                    let after = &e["data"]["after"];
                    let change = (
                        after["id"].as_str().unwrap().to_string(),
                        after["version"].as_i64().unwrap(),
                    );
                    let lsn = parse_lsn(e["pglsn"].as_str().unwrap()).unwrap();
                    let id = e["id"].as_str().unwrap().to_string();
                    if events.insert(id.clone(), (change, lsn)).is_some() {
                        twice.push(id);
                    }
                }
                next = batch.next_offset;
            }
        }
    }
    (events, twice)
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// One writer: transactions of 1 to 20 inserts and updates of its own rows, 10% rolled back,
/// until `quota` changes are committed. Returns the committed changes.
async fn writer(url: String, w: usize, quota: usize) -> Vec<Change> {
    let mut client = connect(&url).await;
    let mut versions: Vec<(String, i64)> = Vec::new();
    let mut committed = Vec::new();
    let mut next_row = 0usize;
    while committed.len() < quota {
        let (n, rollback, picks) = {
            let mut rng = rand::rng();
            let n = rng.random_range(1..=20usize).min(quota - committed.len());
            let picks: Vec<Option<usize>> = (0..n)
                .map(|_| {
                    (!versions.is_empty() && rng.random_bool(0.4))
                        .then(|| rng.random_range(0..versions.len()))
                })
                .collect();
            (n, rng.random_bool(0.1), picks)
        };
        let tx = client.transaction().await.unwrap();
        let mut pending: Vec<(Option<usize>, Change)> = Vec::with_capacity(n);
        let mut staged: HashMap<usize, i64> = HashMap::new();
        for pick in picks {
            match pick {
                Some(i) => {
                    let v = staged.get(&i).copied().unwrap_or(versions[i].1) + 1;
                    tx.execute("UPDATE item SET version = $2 WHERE id = $1", &[&versions[i].0, &v])
                        .await
                        .unwrap();
                    staged.insert(i, v);
                    pending.push((Some(i), (versions[i].0.clone(), v)));
                }
                None => {
                    let id = format!("w{w}-{next_row}");
                    next_row += 1;
                    tx.execute("INSERT INTO item (id, version) VALUES ($1, 0)", &[&id])
                        .await
                        .unwrap();
                    pending.push((None, (id, 0)));
                }
            }
        }
        if rollback {
            tx.rollback().await.unwrap();
            continue;
        }
        tx.commit().await.unwrap();
        for (pick, change) in pending {
            match pick {
                Some(i) => versions[i].1 = change.1,
                None => versions.push(change.clone()),
            }
            committed.push(change);
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    committed
}

fn source_running(server: &support::ServeProcess) -> bool {
    support::http(&server.addr, "GET", "/v1/sources/app", "application/json", "")
        .is_some_and(|(status, body)| status == 200 && body.contains("\"state\":\"running\""))
}

fn wait_running(server: &support::ServeProcess) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !source_running(server) {
        assert!(Instant::now() < deadline, "the CDC source never reached state running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cdc_loses_and_duplicates_nothing_across_kills_and_replication_loss() {
    let pg = PgServer::start().unwrap();
    pg.create_database("app").unwrap();
    let url = pg.url("app");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let admin = rt.block_on(async {
        let c = connect(&url).await;
        c.batch_execute("CREATE TABLE item (id text PRIMARY KEY, version int8 NOT NULL)")
            .await
            .unwrap();
        c
    });
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("driftless.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\ndedup_ids_max = 0\n\n[[source]]\nname = \"app\"\nkind = \"postgres_cdc\"\nurl = \"{url}\"\n\
             tables = [\"public.item\"]\nsnapshot = \"never\"\nheartbeat_interval_ms = 500\n"
        ),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap().to_string();
    let mut server = support::ServeProcess::start_with_args(&data, &["--config", &config_arg]);
    wait_running(&server);

    let writers: Vec<_> =
        (0..WRITERS).map(|w| rt.spawn(writer(url.clone(), w, CHANGES / WRITERS))).collect();
    let writers_done = || writers.iter().all(|h| h.is_finished());
    let slot_lsn = || -> u64 {
        rt.block_on(admin.query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'driftless_app'",
            &[],
        ))
        .map(|r| parse_lsn(&r.get::<_, String>(0)).unwrap())
        .unwrap()
    };
    let mut kills: Vec<(u64, HashSet<String>)> = Vec::new();
    let mut terminations = 0usize;
    let mut rng = rand::rng();
    while kills.len() < KILLS || terminations < KILLS || !writers_done() {
        std::thread::sleep(Duration::from_millis(rng.random_range(200..900)));
        let terminated: i64 = rt
            .block_on(admin.query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication \
                 WHERE application_name = 'driftless-app'",
                &[],
            ))
            .unwrap()
            .get(0);
        terminations += terminated as usize;
        std::thread::sleep(Duration::from_millis(rng.random_range(200..900)));
        server.kill();
        let confirmed = slot_lsn();
        let (events, twice) = read_log(&data);
        assert!(
            twice.is_empty(),
            "kill {}: ids stored twice: {:?}",
            kills.len(),
            &twice[..twice.len().min(5)]
        );
        kills.push((confirmed, events.into_keys().collect()));
        server = support::ServeProcess::start_with_args(&data, &["--config", &config_arg]);
        wait_running(&server);
        assert!(kills.len() < 200, "writers never finished");
    }
    let mut committed: Vec<Change> = Vec::new();
    for h in writers {
        committed.extend(rt.block_on(h).unwrap());
    }
    assert_eq!(committed.len(), CHANGES);
    let expected: HashSet<Change> = committed.into_iter().collect();
    assert_eq!(expected.len(), CHANGES, "the workload itself repeated a change");

    // Let the source catch up, then stop it and read the log.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let ok = support::http(
            &server.addr,
            "GET",
            "/v1/topics/app.public.item",
            "application/json",
            "",
        )
        .and_then(|(s, body)| (s == 200).then_some(body))
        .and_then(|body| serde_json::from_str::<Value>(&body).ok())
        .map(|t| {
            t["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["end_offset"].as_u64().unwrap())
                .sum::<u64>()
        })
        .is_some_and(|n| n >= CHANGES as u64);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "the log never reached {CHANGES} events");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    server.kill();
    let (events, twice) = read_log(&data);
    assert!(twice.is_empty(), "ids stored twice: {:?}", &twice[..twice.len().min(5)]);
    let mut seen: BTreeMap<&Change, usize> = BTreeMap::new();
    for (change, _) in events.values() {
        *seen.entry(change).or_default() += 1;
    }
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(duplicated.is_empty(), "changes appended more than once: {duplicated:?}");
    let missing: Vec<_> = expected.iter().filter(|c| !seen.contains_key(c)).take(5).collect();
    assert!(missing.is_empty(), "committed changes missing from the log: {missing:?}");
    let extra: Vec<_> = seen.keys().filter(|c| !expected.contains(**c)).take(5).collect();
    assert!(extra.is_empty(), "changes of rolled-back transactions in the log: {extra:?}");
    assert_eq!(events.len(), CHANGES);
    for (k, (confirmed, at_kill)) in kills.iter().enumerate() {
        let behind: Vec<&String> = events
            .iter()
            .filter(|(id, (_, lsn))| lsn < confirmed && !at_kill.contains(*id))
            .map(|(id, _)| id)
            .take(5)
            .collect();
        assert!(
            behind.is_empty(),
            "kill {k}: the slot had confirmed past changes that were not durable: {behind:?}"
        );
    }
    assert!(
        kills.len() >= KILLS && terminations >= KILLS,
        "{} kills, {terminations} terminations",
        kills.len()
    );
    eprintln!(
        "{} kills, {terminations} replication connections terminated, {} events",
        kills.len(),
        events.len()
    );
}

//! Crash test: SIGKILL a process producing from 4 threads and consuming from a group, at random
//! moments, over 20 cycles.
//!
//! The child is this test binary re-run with `DRIFTLESS_BROKER_CRASH_DIR` set. It prints
//! `produced <id> <partition> <offset>` after each acknowledged produce, `delivered <id> <partition>
//! <offset>` for each delivery, and `acking <id>` / `acked <id>` around each acknowledgement. After
//! each kill the parent opens the broker itself and checks: every acknowledged produce is readable
//! at its position; no id is stored twice; committed offsets never moved backwards; every delivered
//! event whose acknowledgement was never attempted sits at or after its partition's committed
//! offset, so the group delivers it again. A final drain proves those events do come back.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftless_broker::{Broker, BrokerConfig, TopicSpec};
use driftless_core::Event;
use driftless_log::LogOptions;
use driftless_testkit::CrashChild;
use rand::Rng;

const CHILD_ENV: &str = "DRIFTLESS_BROKER_CRASH_DIR";
const TEST_NAME: &str = "kill9_during_produce_and_consume_loses_no_acknowledged_event";
const CYCLES: usize = 20;
const PARTITIONS: u32 = 4;

fn open(dir: &Path) -> Broker {
    let options = LogOptions { maintenance_interval_ms: None, ..LogOptions::new(dir) };
    let config = BrokerConfig { visibility_timeout_ms: 60_000, ..BrokerConfig::default() };
    Broker::open_with(options, Arc::new(driftless_core::SystemClock), config).unwrap()
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

fn child(dir: &str) -> ! {
    let b = Arc::new(open(Path::new(dir)));
    if b.describe_topic("t").is_err() {
        b.create_topic("t", TopicSpec { partitions: PARTITIONS, ..TopicSpec::default() }).unwrap();
    }
    let run: u64 = rand::rng().random();
    let producers: Vec<_> = (0..4)
        .map(|w| {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                for seq in 0u64.. {
                    let batch: Vec<Event> = (0..3)
                        .map(|i| {
                            let id = format!("r{run:x}-w{w}-{seq}-{i}");
                            let mut e = Event::new(id, "/crash", "t.v1");
                            e.subject = Some(format!("key-{}", (seq + i) % 16));
                            e
                        })
                        .collect();
                    for r in b.produce("t", batch).unwrap() {
                        say(format!("produced {} {} {}", r.id, r.partition, r.offset));
                    }
                }
            })
        })
        .collect();
    let consumer = {
        let b = Arc::clone(&b);
        std::thread::spawn(move || {
            let m = b.join("g", &["t".to_string()], None).unwrap().member_id;
            let mut rng = rand::rng();
            loop {
                let f = b.fetch("g", &m, 50).unwrap();
                let mut acks = Vec::new();
                for d in &f.deliveries {
                    let id = d.event["id"].as_str().unwrap().to_string();
                    say(format!("delivered {id} {} {}", d.partition, d.offset));
                    // Leave some unacknowledged until their visibility timeout.
                    if rng.random_range(0..10) < 8 {
                        acks.push((id, d.delivery_id.clone()));
                    }
                }
                let ids: Vec<String> = acks.iter().map(|a| a.1.clone()).collect();
                // Announced first: a kill between the ack and its "acked" line leaves the parent
                // unsure, and it must not count such an event as unacknowledged.
                for (id, _) in &acks {
                    say(format!("acking {id}"));
                }
                b.ack("g", &ids).unwrap();
                for (id, _) in acks {
                    say(format!("acked {id}"));
                }
                if f.deliveries.is_empty() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };
    for p in producers {
        let _ = p.join();
    }
    let _ = consumer.join();
    unreachable!("the child runs until killed");
}

#[derive(Default)]
struct History {
    produced: BTreeMap<String, (u32, u64)>,
    /// Delivered and no acknowledgement attempted: id → (partition, offset).
    unacked: BTreeMap<String, (u32, u64)>,
    acked: BTreeSet<String>,
}

impl History {
    fn record(&mut self, line: &str) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["produced", id, p, o] => {
                self.produced.insert(id.to_string(), (p.parse().unwrap(), o.parse().unwrap()));
            }
            ["delivered", id, p, o] if !self.acked.contains(*id) => {
                self.unacked.insert(id.to_string(), (p.parse().unwrap(), o.parse().unwrap()));
            }
            ["acking", id] => {
                self.unacked.remove(*id);
            }
            ["acked", id] => {
                self.unacked.remove(*id);
                self.acked.insert(id.to_string());
            }
            _ => {}
        }
    }
}

#[test]
fn kill9_during_produce_and_consume_loses_no_acknowledged_event() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rng();
    let mut history = History::default();
    let mut committed_before: BTreeMap<u32, u64> = BTreeMap::new();
    for cycle in 0..CYCLES {
        let child = CrashChild::spawn(TEST_NAME, CHILD_ENV, dir.path()).unwrap();
        let started = Instant::now();
        let run_for = Duration::from_millis(rng.random_range(50..400));
        let mut seen_produce = false;
        while !(seen_produce && started.elapsed() >= run_for) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "cycle {cycle}: child never produced"
            );
            if let Some(line) = child.next_line(Duration::from_millis(1)) {
                seen_produce |= line.starts_with("produced");
                history.record(&line);
            }
        }
        for line in child.kill() {
            history.record(&line);
        }

        let b = open(dir.path());
        let topic = b.describe_topic("t").unwrap();
        // Every acknowledged produce is stored, once, where it was acknowledged.
        let mut stored: HashMap<String, (u32, u64)> = HashMap::new();
        for p in 0..PARTITIONS {
            let end = topic.partitions[p as usize].end_offset;
            let part = b.log().topics().into_iter().find(|t| t.name().as_str() == "t").unwrap();
            let part = part.partition(p).unwrap();
            let mut next = 0;
            while next < end {
                let batch = part.read(next, 10_000, 8 << 20).unwrap();
                for r in &batch.records {
                    let e: serde_json::Value =
                        serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
                    let id = e["id"].as_str().unwrap().to_string();
                    assert!(
                        stored.insert(id.clone(), (p, r.offset)).is_none(),
                        "cycle {cycle}: {id} stored twice"
                    );
                }
                next = batch.next_offset;
            }
        }
        for (id, at) in &history.produced {
            assert_eq!(
                stored.get(id),
                Some(at),
                "cycle {cycle}: acknowledged produce {id} lost or moved"
            );
        }
        // Committed offsets never move backwards, and unacknowledged deliveries come back.
        if let Ok(group) = b.describe_group("g") {
            for gp in &group.partitions {
                let before = committed_before.insert(gp.partition, gp.committed).unwrap_or(0);
                assert!(
                    gp.committed >= before,
                    "cycle {cycle}: committed offset of {} went back",
                    gp.partition
                );
            }
            for (id, (p, offset)) in &history.unacked {
                let committed = committed_before.get(p).copied().unwrap_or(0);
                assert!(
                    *offset >= committed,
                    "cycle {cycle}: unacknowledged {id} at {offset} is below committed {committed}"
                );
            }
        }
    }
    // Finally, the group really delivers every unacknowledged event again.
    let b = open(dir.path());
    let m = b.join("g", &["t".to_string()], None).unwrap().member_id;
    let mut delivered = BTreeSet::new();
    loop {
        let f = b.fetch("g", &m, 1000).unwrap();
        if f.deliveries.is_empty() {
            break;
        }
        let ids: Vec<String> = f.deliveries.iter().map(|d| d.delivery_id.clone()).collect();
        delivered.extend(f.deliveries.iter().map(|d| d.event["id"].as_str().unwrap().to_string()));
        b.ack("g", &ids).unwrap();
    }
    for id in history.unacked.keys() {
        assert!(delivered.contains(id), "unacknowledged {id} was never delivered again");
    }
    assert!(
        history.produced.len() > 500,
        "the child should have produced plenty: {}",
        history.produced.len()
    );
}

//! Acceptance tests of the broker issue over real HTTP on loopback: per-key order holds while
//! several producers write concurrently, and three members of a group split a topic's partitions
//! and rebalance when one leaves, losing no event and redelivering exactly the deliveries the
//! leaver had not acknowledged.
//!
//! Each test starts the server in-process on `127.0.0.1:0` with a fresh data directory and talks
//! to it with a blocking client; every wait is bounded, and nothing asserts on timing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;

use driftless_broker::BrokerConfig;
use serde_json::{json, Value};

fn start() -> support::Server {
    support::start(support::config(BrokerConfig::default()))
}

fn event_id(d: &Value) -> &str {
    d["event"]["id"].as_str().unwrap()
}

fn partition_of(d: &Value) -> u32 {
    d["partition"].as_u64().unwrap() as u32
}

/// The partitions of `topic` in a membership's `assignments` (`[[topic, partition], ...]`).
fn assigned(membership: &Value, topic: &str) -> BTreeSet<u32> {
    membership["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a[0] == topic)
        .map(|a| a[1].as_u64().unwrap() as u32)
        .collect()
}

const PRODUCERS: usize = 4;
const KEYS_PER_PRODUCER: usize = 4;
const BATCHES_PER_PRODUCER: usize = 20;
const EVENTS_PER_BATCH: usize = 40;

#[test]
fn per_key_order_holds_with_concurrent_producers() {
    let s = Arc::new(start());
    s.create_topic("orders", 4);
    let member = s.membership("shipping", &["orders"])["member_id"].as_str().unwrap().to_string();

    // Each producer owns its keys and numbers each key's events 0, 1, 2, … in send order; the
    // batches of all producers interleave on the server.
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let mut next_seq = [0u64; KEYS_PER_PRODUCER];
                let mut placed: BTreeMap<String, Vec<(u32, u64)>> = BTreeMap::new();
                for _ in 0..BATCHES_PER_PRODUCER {
                    let events: Vec<Value> = (0..EVENTS_PER_BATCH)
                        .map(|j| {
                            // Keys interleave inside a batch too.
                            let k = (j * 7 + p) % KEYS_PER_PRODUCER;
                            let key = format!("p{p}-k{k}");
                            let seq = next_seq[k];
                            next_seq[k] += 1;
                            json!({"specversion": "1.0", "id": format!("{key}-{seq}"),
                                   "source": format!("/producer/{p}"), "type": "order.v1",
                                   "subject": key, "sequence": seq.to_string(),
                                   "data": {"key": key, "seq": seq}})
                        })
                        .collect();
                    for (e, r) in events.iter().zip(s.produce_results("orders", &events)) {
                        assert_eq!(r["id"], e["id"]);
                        assert_eq!(r["duplicate"], false, "{r}");
                        let key = e["subject"].as_str().unwrap().to_string();
                        placed.entry(key).or_default().push((
                            r["partition"].as_u64().unwrap() as u32,
                            r["offset"].as_u64().unwrap(),
                        ));
                    }
                }
                placed
            })
        })
        .collect();

    // One consumer long-polls and acknowledges while the producers are still sending.
    let total = PRODUCERS * BATCHES_PER_PRODUCER * EVENTS_PER_BATCH;
    let mut received: BTreeMap<String, Vec<(u64, u32, u64)>> = BTreeMap::new();
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count < total {
        assert!(Instant::now() < deadline, "only {count} of {total} events arrived");
        let deliveries = s.fetch("shipping", &member, 500, 1_000);
        for d in &deliveries {
            assert_eq!(d["attempt"], 1, "a delivery was repeated: {d}");
            let key = d["event"]["data"]["key"].as_str().unwrap().to_string();
            let seq = d["event"]["data"]["seq"].as_u64().unwrap();
            assert_eq!(d["event"]["sequence"], seq.to_string());
            received.entry(key).or_default().push((
                seq,
                partition_of(d),
                d["offset"].as_u64().unwrap(),
            ));
        }
        count += deliveries.len();
        if !deliveries.is_empty() {
            s.ack_all("shipping", &deliveries);
        }
    }
    let mut placed: BTreeMap<String, Vec<(u32, u64)>> = BTreeMap::new();
    for p in producers {
        placed.extend(p.join().unwrap());
    }

    assert_eq!(received.len(), PRODUCERS * KEYS_PER_PRODUCER, "keys received");
    for (key, got) in &received {
        let seqs: Vec<u64> = got.iter().map(|(seq, _, _)| *seq).collect();
        let sent = placed[key].len() as u64;
        assert_eq!(
            seqs,
            (0..sent).collect::<Vec<_>>(),
            "key {key}: out of order, lost or repeated"
        );
        // A key lives on one partition, at increasing offsets, where its produce said it was.
        let positions: Vec<(u32, u64)> = got.iter().map(|(_, p, o)| (*p, *o)).collect();
        assert_eq!(positions, placed[key], "key {key}: delivered elsewhere than produced");
        assert!(positions.iter().all(|(p, _)| *p == positions[0].0), "key {key} spans partitions");
        assert!(positions.windows(2).all(|w| w[0].1 < w[1].1), "key {key}: offsets not rising");
    }

    // Nothing more is delivered, and the group has no lag left.
    assert!(s.fetch("shipping", &member, 500, 200).is_empty());
    let group = s.get("/v1/groups/shipping").json();
    for p in group["partitions"].as_array().unwrap() {
        assert_eq!(p["lag_events"], 0, "{group}");
        assert_eq!(p["inflight"], 0, "{group}");
    }
}

#[test]
fn three_members_split_partitions_and_rebalance_when_one_leaves() {
    let s = start();
    let (topic, group) = ("ledger", "audit");
    s.create_topic(topic, 6);
    let members: Vec<String> = (0..3)
        .map(|_| s.membership(group, &[topic])["member_id"].as_str().unwrap().to_string())
        .collect();

    // Each member learns its current assignment by heartbeat (earlier joiners' join answers
    // predate the later joins): two partitions each, together all six, one generation.
    let memberships: Vec<Value> = members.iter().map(|m| s.heartbeat(group, m)).collect();
    let generation = &memberships[0]["generation"];
    let mut covered = BTreeSet::new();
    for m in &memberships {
        assert_eq!(&m["generation"], generation, "{memberships:?}");
        let mine = assigned(m, topic);
        assert_eq!(mine.len(), 2, "{m}");
        assert!(covered.is_disjoint(&mine), "a partition assigned twice: {memberships:?}");
        covered.extend(mine);
    }
    assert_eq!(covered, (0..6).collect::<BTreeSet<u32>>());

    // 60 events with distinct keys, so none waits for another of its key.
    let events: Vec<Value> = (0..60)
        .map(|i| {
            json!({"specversion": "1.0", "id": format!("e-{i}"), "source": "/ledger",
                   "type": "entry.v1", "subject": format!("account-{i}"), "data": {"i": i}})
        })
        .collect();
    let produced = s.produce_results(topic, &events);
    let partition_of_event: BTreeMap<String, u32> = produced
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r["partition"].as_u64().unwrap() as u32))
        .collect();

    // Member A takes everything of its two partitions and acknowledges half of it.
    let (a, a_parts) = (&members[0], assigned(&memberships[0], topic));
    let a_expected = partition_of_event.values().filter(|p| a_parts.contains(p)).count();
    assert!(a_expected >= 2, "member A's partitions hold {a_expected} events: nothing to split");
    let mut a_got: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a_got.len() < a_expected {
        assert!(Instant::now() < deadline, "A got {} of {a_expected}", a_got.len());
        a_got.extend(s.fetch(group, a, 100, 500));
    }
    assert!(a_got.iter().all(|d| a_parts.contains(&partition_of(d))), "A got others' events");
    let (a_acked, a_unacked) = a_got.split_at(a_got.len() / 2);
    s.ack_all(group, a_acked);
    let a_unacked: BTreeSet<String> = a_unacked.iter().map(|d| event_id(d).to_string()).collect();
    let r = s.delete(&format!("/v1/groups/{group}/members/{a}"));
    assert_eq!(r.status, 204, "{}", r.text);

    // The two others now own three partitions each and consume until the group is done.
    let rest = &members[1..];
    let after: Vec<Value> = rest.iter().map(|m| s.heartbeat(group, m)).collect();
    let (b_parts, c_parts) = (assigned(&after[0], topic), assigned(&after[1], topic));
    assert_eq!((b_parts.len(), c_parts.len()), (3, 3), "{after:?}");
    assert_eq!(b_parts.union(&c_parts).count(), 6, "{after:?}");

    let mut deliveries_of: BTreeMap<String, usize> = BTreeMap::new();
    for d in &a_got {
        *deliveries_of.entry(event_id(d).to_string()).or_default() += 1;
    }
    let mut done: BTreeSet<String> = a_acked.iter().map(|d| event_id(d).to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while done.len() < events.len() {
        assert!(Instant::now() < deadline, "{} of {} events done", done.len(), events.len());
        for (m, parts) in rest.iter().zip([&b_parts, &c_parts]) {
            let got = s.fetch(group, m, 100, 200);
            for d in &got {
                assert!(parts.contains(&partition_of(d)), "{m} got a partition not its own: {d}");
                *deliveries_of.entry(event_id(d).to_string()).or_default() += 1;
                done.insert(event_id(d).to_string());
            }
            if !got.is_empty() {
                s.ack_all(group, &got);
            }
        }
    }

    // Nothing lost; exactly A's unacknowledged events came twice; everything else once.
    assert_eq!(done.len(), 60);
    let twice: BTreeSet<String> =
        deliveries_of.iter().filter(|(_, n)| **n == 2).map(|(id, _)| id.clone()).collect();
    assert_eq!(twice, a_unacked, "redelivered events differ from A's unacknowledged ones");
    assert!(deliveries_of.values().all(|n| *n <= 2), "{deliveries_of:?}");
    assert_eq!(deliveries_of.len(), 60);
    for m in rest {
        assert!(s.fetch(group, m, 100, 200).is_empty(), "a delivery after all were acknowledged");
    }
    let described = s.get(&format!("/v1/groups/{group}")).json();
    assert_eq!(described["members"].as_array().unwrap().len(), 2, "{described}");
    for p in described["partitions"].as_array().unwrap() {
        assert_eq!(p["lag_events"], 0, "{described}");
        assert_eq!(p["inflight"], 0, "{described}");
    }
}

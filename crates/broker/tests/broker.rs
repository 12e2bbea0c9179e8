//! The broker's promises, one test each: idempotent produce, per-key order, consumer groups that
//! split and rebalance, retries that park only the failing key, the dead-letter queue, seek and
//! restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use driftless_broker::{Broker, BrokerConfig, BrokerError, SeekTarget, TopicSpec};
use driftless_core::{Event, ManualClock};
use driftless_log::LogOptions;

const T0: i64 = 1_700_000_000_000;

fn config() -> BrokerConfig {
    BrokerConfig {
        max_attempts: 3,
        backoff_initial_ms: 100,
        backoff_max_ms: 1_000,
        visibility_timeout_ms: 5_000,
        session_timeout_ms: 60_000,
        ..BrokerConfig::default()
    }
}

fn open(dir: &Path, clock: &Arc<ManualClock>) -> Broker {
    let options = LogOptions { maintenance_interval_ms: None, ..LogOptions::new(dir) };
    Broker::open_with(options, Arc::clone(clock) as _, config()).unwrap()
}

fn event(id: &str, subject: &str) -> Event {
    let mut e = Event::new(id, "/test", "thing.happened.v1");
    e.subject = Some(subject.to_string());
    e.data = Some(serde_json::json!({ "id": id }));
    e
}

fn spec(partitions: u32) -> TopicSpec {
    TopicSpec { partitions, ..TopicSpec::default() }
}

/// Fetches everything the member can get right now, acknowledging it; returns event ids.
fn drain(b: &Broker, group: &str, member: &str) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let f = b.fetch(group, member, 100).unwrap();
        if f.deliveries.is_empty() {
            return ids;
        }
        let acks: Vec<String> = f.deliveries.iter().map(|d| d.delivery_id.clone()).collect();
        ids.extend(f.deliveries.iter().map(|d| d.event["id"].as_str().unwrap().to_string()));
        b.ack(group, &acks).unwrap();
    }
}

#[test]
fn a_retried_produce_returns_the_original_position_and_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock);
    b.create_topic("t", spec(4)).unwrap();
    let first = b.produce("t", vec![event("a", "k1"), event("b", "k2")]).unwrap();
    assert!(first.iter().all(|r| !r.duplicate));
    let again = b.produce("t", vec![event("b", "k2"), event("a", "k1"), event("c", "k1")]).unwrap();
    assert_eq!(
        (again[0].partition, again[0].offset, again[0].duplicate),
        (first[1].partition, first[1].offset, true)
    );
    assert_eq!(
        (again[1].partition, again[1].offset, again[1].duplicate),
        (first[0].partition, first[0].offset, true)
    );
    assert!(!again[2].duplicate);
    // A repeat inside one request is appended once.
    let same = b.produce("t", vec![event("d", "k3"), event("d", "k3")]).unwrap();
    assert_eq!(
        (same[0].offset, same[1].offset, same[1].duplicate),
        (same[0].offset, same[0].offset, true)
    );
    let total: u64 = b.describe_topic("t").unwrap().partitions.iter().map(|p| p.end_offset).sum();
    assert_eq!(total, 4, "a, b, c, d once each");
    // After the window, the id is new again.
    clock.advance_ms(121_000);
    assert!(!b.produce("t", vec![event("a", "k1")]).unwrap()[0].duplicate);
}

#[test]
fn a_raw_fetch_hands_out_the_stored_json_text_of_the_same_events_as_a_parsed_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock);
    b.create_topic("t", spec(2)).unwrap();
    let mut e = event("a", "k1");
    e.data = Some(serde_json::json!({ "text": "quote \" and é", "n": [1, 2.5, null] }));
    e.extensions.insert("sequence".into(), serde_json::json!("0001"));
    b.produce("t", vec![e.clone(), event("b", "k2")]).unwrap();
    let parsed_member = b.join("parsed", &["t".to_string()], None).unwrap().member_id;
    let raw_member = b.join("raw", &["t".to_string()], None).unwrap().member_id;
    let parsed = b.fetch("parsed", &parsed_member, 10).unwrap();
    let raw = b.fetch_raw("raw", &raw_member, 10).unwrap();
    assert_eq!(raw.deliveries.len(), 2);
    for (p, r) in parsed.deliveries.iter().zip(&raw.deliveries) {
        assert_eq!((&p.delivery_id, p.offset, p.attempt), (&r.delivery_id, r.offset, r.attempt));
        let reparsed: serde_json::Value = serde_json::from_slice(&r.event).unwrap();
        assert_eq!(reparsed, p.event);
    }
    let first: Event = serde_json::from_slice(&raw.deliveries[0].event).unwrap();
    assert_eq!(first, e, "the raw text is the event as produced");
    // Raw deliveries are acknowledged like parsed ones.
    let ids: Vec<String> = raw.deliveries.iter().map(|d| d.delivery_id.clone()).collect();
    assert!(b.ack("raw", &ids).unwrap().is_empty());
    assert!(b.fetch_raw("raw", &raw_member, 10).unwrap().deliveries.is_empty());
}

#[test]
fn a_groups_listener_wakes_for_its_own_topics_and_group_but_not_for_others() {
    use driftless_log::Listener;
    use std::time::Duration;
    let quiet = Duration::from_millis(100);
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock);
    b.create_topic("x", spec(1)).unwrap();
    b.create_topic("y", spec(1)).unwrap();
    let a = b.join("a", &["x".to_string()], None).unwrap().member_id;
    let other = b.join("other", &["y".to_string()], None).unwrap().member_id;
    // A produce to a topic group `a` does not consume, and activity in another group, leave it asleep.
    let l = b.listen("a");
    b.produce("y", vec![event("y1", "k")]).unwrap();
    let f = b.fetch("other", &other, 10).unwrap();
    b.ack("other", &[f.deliveries[0].delivery_id.clone()]).unwrap();
    assert!(l.wait_timeout(quiet).is_none(), "woken by another topic or group");
    // A produce to its own topic wakes it.
    let l = b.listen("a");
    b.produce("x", vec![event("x1", "k")]).unwrap();
    assert!(l.wait_timeout(Duration::from_secs(10)).is_some(), "a produce to x must wake group a");
    // So does an acknowledgement in it (it may unblock the key's next event).
    let f = b.fetch("a", &a, 10).unwrap();
    let l = b.listen("a");
    b.ack("a", &[f.deliveries[0].delivery_id.clone()]).unwrap();
    assert!(l.wait_timeout(Duration::from_secs(10)).is_some(), "an ack in group a must wake it");
    // A listener on a group that does not exist yet wakes when groups are created.
    let l = b.listen("later");
    b.join("later", &["y".to_string()], None).unwrap();
    assert!(l.wait_timeout(Duration::from_secs(10)).is_some(), "creating a group must wake");
}

#[test]
fn the_dedup_window_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let first = {
        let b = open(dir.path(), &clock);
        b.create_topic("t", spec(2)).unwrap();
        b.produce("t", vec![event("a", "k1")]).unwrap()
    };
    let b = open(dir.path(), &clock);
    let again = b.produce("t", vec![event("a", "k1")]).unwrap();
    assert_eq!((again[0].offset, again[0].duplicate), (first[0].offset, true));
}

#[test]
fn concurrent_sends_of_the_same_id_append_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = Arc::new(open(dir.path(), &clock));
    b.create_topic("t", spec(1)).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| b.produce("t", vec![event(&format!("e{i}"), "k")]).unwrap()[0].offset)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let offsets: Vec<Vec<u64>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(offsets.windows(2).all(|w| w[0] == w[1]), "every sender sees the same offset per id");
    assert_eq!(b.describe_topic("t").unwrap().partitions[0].end_offset, 50);
}

#[test]
fn invalid_events_name_their_index_and_nothing_is_appended() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock);
    b.create_topic("t", spec(1)).unwrap();
    let mut bad = event("x", "k");
    bad.time = Some("yesterday".into());
    let err = b.produce("t", vec![event("a", "k"), event("b", "k"), bad]).unwrap_err();
    match err {
        BrokerError::InvalidEvent { index, source } => {
            assert_eq!((index, source.attribute.as_str()), (2, "time"))
        }
        other => panic!("{other}"),
    }
    assert_eq!(b.describe_topic("t").unwrap().partitions[0].end_offset, 0);
    assert!(matches!(b.produce("nope", vec![event("a", "k")]), Err(BrokerError::UnknownTopic(_))));
    assert!(matches!(b.create_topic("__mine", spec(1)), Err(BrokerError::ReservedTopic(_))));
    assert!(matches!(b.create_topic("t", spec(1)), Err(BrokerError::TopicExists(_))));
}

#[test]
fn per_key_order_holds_with_concurrent_producers() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = Arc::new(open(dir.path(), &clock));
    b.create_topic("t", spec(4)).unwrap();
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                for seq in 0..100 {
                    // Each producer owns two keys and sends them in order, in batches of two.
                    let batch = (0..2)
                        .map(|k| event(&format!("p{p}-k{k}-{seq}"), &format!("p{p}-k{k}")))
                        .collect();
                    b.produce("t", batch).unwrap();
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let m = b.join("g", &["t".to_string()], None).unwrap();
    let ids = drain(&b, "g", &m.member_id);
    assert_eq!(ids.len(), 800);
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for id in ids {
        let (key, seq) = id.rsplit_once('-').unwrap();
        let seq: i64 = seq.parse().unwrap();
        let prev = last.insert(key.to_string(), seq).unwrap_or(-1);
        assert_eq!(seq, prev + 1, "key {key} out of order");
    }
}

#[test]
fn three_members_split_partitions_and_rebalance_when_one_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock);
    b.create_topic("t", spec(6)).unwrap();
    let topics = ["t".to_string()];
    let members: Vec<String> =
        (0..3).map(|_| b.join("g", &topics, None).unwrap().member_id).collect();
    let assignments: Vec<Vec<(String, u32)>> =
        members.iter().map(|m| b.heartbeat("g", m).unwrap().assignments).collect();
    assert!(assignments.iter().all(|a| a.len() == 2), "{assignments:?}");
    let all: BTreeSet<_> = assignments.iter().flatten().collect();
    assert_eq!(all.len(), 6, "every partition has exactly one owner");

    let events: Vec<Event> = (0..60).map(|i| event(&format!("e{i}"), &format!("key{i}"))).collect();
    b.produce("t", events).unwrap();
    // Member 0 takes its deliveries but acknowledges only half; then it leaves.
    let f0 = b.fetch("g", &members[0], 1000).unwrap();
    assert!(!f0.deliveries.is_empty());
    let (acked, unacked) = f0.deliveries.split_at(f0.deliveries.len() / 2);
    b.ack("g", &acked.iter().map(|d| d.delivery_id.clone()).collect::<Vec<_>>()).unwrap();
    let mut seen: Vec<String> =
        acked.iter().map(|d| d.event["id"].as_str().unwrap().to_string()).collect();
    let unacked: BTreeSet<String> =
        unacked.iter().map(|d| d.event["id"].as_str().unwrap().to_string()).collect();
    b.leave("g", &members[0]).unwrap();
    let after: Vec<Vec<(String, u32)>> =
        members[1..].iter().map(|m| b.heartbeat("g", m).unwrap().assignments).collect();
    assert_eq!(after.iter().map(Vec::len).sum::<usize>(), 6);
    let mut redelivered = Vec::new();
    for m in &members[1..] {
        let ids = drain(&b, "g", m);
        redelivered
            .extend(ids.iter().filter(|id| seen.contains(id) || unacked.contains(*id)).cloned());
        seen.extend(ids);
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), 60, "no event lost");
    let redelivered: BTreeSet<String> = redelivered.into_iter().collect();
    assert_eq!(redelivered, unacked, "only the unacknowledged events are delivered again");
    assert!(b.describe_group("g").unwrap().partitions.iter().all(|p| p.lag_events == 0));
}

#[test]
fn a_failing_event_parks_only_its_key_and_reaches_the_dlq_after_max_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock);
    b.create_topic("t", spec(1)).unwrap();
    b.produce(
        "t",
        vec![event("poison", "bad"), event("after-poison", "bad"), event("ok-1", "good")],
    )
    .unwrap();
    let m = b.join("g", &["t".to_string()], None).unwrap().member_id;
    let mut good = Vec::new();
    let mut attempts = 0;
    for round in 0..10 {
        let f = b.fetch("g", &m, 100).unwrap();
        for d in &f.deliveries {
            let id = d.event["id"].as_str().unwrap();
            assert_ne!(id, "after-poison", "a later event of a parked key must wait");
            if id == "poison" {
                attempts += 1;
                assert_eq!(d.attempt, attempts);
                b.nack("g", &d.delivery_id, &format!("boom {round}")).unwrap();
            } else {
                good.push(id.to_string());
                b.ack("g", std::slice::from_ref(&d.delivery_id)).unwrap();
            }
        }
        if round == 0 {
            // Other keys keep flowing while the poison key is parked.
            b.produce("t", vec![event("ok-2", "good")]).unwrap();
        }
        clock.advance_ms(2_000);
        if attempts == 3 {
            break;
        }
    }
    assert_eq!(attempts, 3, "delivered exactly max_attempts times");
    let dead = b.dead_letters("g").unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event["id"], "poison");
    assert_eq!(dead[0].errors.len(), 3);
    assert!(dead[0].errors[0].contains("boom 0"));
    // The key is free again: the next event of it flows.
    good.extend(drain(&b, "g", &m));
    assert_eq!(good, ["ok-1", "ok-2", "after-poison"]);

    // Retry from the DLQ redelivers the event; acknowledging it empties the queue.
    b.retry_dead_letter("g", &dead[0].id).unwrap();
    let f = b.fetch("g", &m, 100).unwrap();
    assert_eq!(f.deliveries.len(), 1);
    assert_eq!(f.deliveries[0].event["id"], "poison");
    assert_eq!(f.deliveries[0].dead_letter_id.as_deref(), Some(dead[0].id.as_str()));
    b.ack("g", &[f.deliveries[0].delivery_id.clone()]).unwrap();
    assert!(b.dead_letters("g").unwrap().is_empty());
}

#[test]
fn an_unacknowledged_delivery_comes_back_after_the_visibility_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock);
    b.create_topic("t", spec(1)).unwrap();
    b.produce("t", vec![event("a", "k")]).unwrap();
    let m = b.join("g", &["t".to_string()], None).unwrap().member_id;
    assert_eq!(b.fetch("g", &m, 10).unwrap().deliveries.len(), 1);
    assert!(b.fetch("g", &m, 10).unwrap().deliveries.is_empty(), "in flight, not yet due");
    clock.advance_ms(5_001);
    let again = b.fetch("g", &m, 10).unwrap();
    assert_eq!(again.deliveries.len(), 1);
    assert_eq!(again.deliveries[0].attempt, 2);
}

#[test]
fn seek_by_time_replays_from_the_first_event_at_or_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock);
    b.create_topic("t", spec(1)).unwrap();
    for i in 0..10 {
        clock.set_ms(T0 + i * 1000);
        b.produce("t", vec![event(&format!("e{i}"), "k")]).unwrap();
    }
    let m = b.join("g", &["t".to_string()], None).unwrap().member_id;
    assert_eq!(drain(&b, "g", &m).len(), 10);
    let moved = b.seek("g", "t", None, SeekTarget::TimeMs(T0 + 6_500)).unwrap();
    assert_eq!(moved, vec![(0, 7)]);
    assert_eq!(drain(&b, "g", &m), ["e7", "e8", "e9"]);
    b.seek("g", "t", Some(0), SeekTarget::Earliest).unwrap();
    assert_eq!(drain(&b, "g", &m).len(), 10);
    let err = b.seek("g", "t", Some(0), SeekTarget::Offset(99)).unwrap_err();
    assert!(matches!(err, BrokerError::InvalidSeek { end: 10, .. }), "{err}");
}

#[test]
fn committed_offsets_and_dead_letters_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    {
        let b = open(dir.path(), &clock);
        b.create_topic("t", spec(1)).unwrap();
        b.produce("t", (0..5).map(|i| event(&format!("e{i}"), &format!("k{i}"))).collect())
            .unwrap();
        let m = b.join("g", &["t".to_string()], None).unwrap().member_id;
        let f = b.fetch("g", &m, 3).unwrap();
        b.ack("g", &[f.deliveries[0].delivery_id.clone(), f.deliveries[1].delivery_id.clone()])
            .unwrap();
        // The third goes to the DLQ.
        b.nack("g", &f.deliveries[2].delivery_id, "no").unwrap();
        clock.advance_ms(2_000);
        for _ in 0..2 {
            let d = b
                .fetch("g", &m, 10)
                .unwrap()
                .deliveries
                .into_iter()
                .find(|d| d.event["id"] == "e2");
            if let Some(d) = d {
                b.nack("g", &d.delivery_id, "no").unwrap();
            }
            clock.advance_ms(2_000);
        }
        assert_eq!(b.dead_letters("g").unwrap().len(), 1);
    }
    let b = open(dir.path(), &clock);
    let m = b.join("g", &["t".to_string()], None).unwrap().member_id;
    assert_eq!(
        drain(&b, "g", &m),
        ["e3", "e4"],
        "acknowledged and dead-lettered events are not redelivered"
    );
    assert_eq!(b.dead_letters("g").unwrap()[0].event["id"], "e2");
}

/// Regression: a seek whose target is invalid for one partition moved the others in memory.
#[test]
fn a_failed_seek_changes_nothing_and_creates_no_group() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock);
    b.create_topic("t", spec(2)).unwrap();
    b.produce("t", (0..40).map(|i| event(&format!("e{i}"), &format!("k{i}"))).collect()).unwrap();
    let m = b.join("g", &["t".to_string()], None).unwrap().member_id;
    assert_eq!(drain(&b, "g", &m).len(), 40);
    let ends: Vec<u64> =
        b.describe_topic("t").unwrap().partitions.iter().map(|p| p.end_offset).collect();
    let beyond_one = ends.iter().copied().min().unwrap() + 1;
    assert!(b.seek("g", "t", None, SeekTarget::Offset(beyond_one)).is_err());
    let committed: Vec<u64> =
        b.describe_group("g").unwrap().partitions.iter().map(|p| p.committed).collect();
    assert_eq!(committed, ends, "nothing moved");
    assert!(b.seek("new-group", "t", None, SeekTarget::Offset(999)).is_err());
    assert_eq!(b.list_groups(), ["g"]);
}

/// Regression: acknowledgements and rejections ignored the attempt number of the delivery id.
#[test]
fn a_stale_or_invented_attempt_cannot_reject_or_acknowledge_another_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock);
    b.create_topic("t", spec(1)).unwrap();
    b.produce("t", vec![event("a", "k")]).unwrap();
    let m = b.join("g", &["t".to_string()], None).unwrap().member_id;
    let first = b.fetch("g", &m, 10).unwrap().deliveries.remove(0);
    clock.advance_ms(5_001);
    let second = b.fetch("g", &m, 10).unwrap().deliveries.remove(0);
    assert_eq!(second.attempt, 2);
    assert!(matches!(
        b.nack("g", &first.delivery_id, "late"),
        Err(BrokerError::UnknownDelivery(_))
    ));
    assert_eq!(
        b.ack("g", &["t:0:0:9".to_string()]).unwrap(),
        ["t:0:0:9"],
        "attempt 9 never happened"
    );
    assert!(
        b.ack("g", std::slice::from_ref(&first.delivery_id)).unwrap().is_empty(),
        "a real earlier attempt may ack"
    );
}

/// Regression: a member's fetch always started at its first partition, starving the others.
#[test]
fn a_fetch_serves_every_assigned_partition_not_just_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock);
    b.create_topic("t", spec(4)).unwrap();
    b.produce("t", (0..400).map(|i| event(&format!("e{i}"), &format!("k{i}"))).collect()).unwrap();
    let m = b.join("g", &["t".to_string()], None).unwrap().member_id;
    let f = b.fetch("g", &m, 8).unwrap();
    let partitions: BTreeSet<u32> = f.deliveries.iter().map(|d| d.partition).collect();
    assert_eq!(f.deliveries.len(), 8);
    assert_eq!(partitions.len(), 4, "every partition gets a share: {partitions:?}");
}

/// Regression: rebuilding the dedup window on open ignored `dedup_ids_max`.
#[test]
fn the_dedup_window_rebuilt_on_open_respects_dedup_ids_max() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let small = BrokerConfig { dedup_ids_max: 10, ..config() };
    let options = || LogOptions { maintenance_interval_ms: None, ..LogOptions::new(dir.path()) };
    {
        let b = Broker::open_with(options(), Arc::clone(&clock) as _, small.clone()).unwrap();
        b.create_topic("t", spec(1)).unwrap();
        for i in 0..100 {
            clock.advance_ms(1);
            b.produce("t", vec![event(&format!("e{i}"), "k")]).unwrap();
        }
    }
    let b = Broker::open_with(options(), Arc::clone(&clock) as _, small).unwrap();
    assert!(b.produce("t", vec![event("e99", "k")]).unwrap()[0].duplicate, "recent ids are kept");
    assert!(
        !b.produce("t", vec![event("e0", "k")]).unwrap()[0].duplicate,
        "the oldest are dropped"
    );
}

/// Regression: dead letters were stored under `topic:partition:offset` alone, so two groups
/// refusing the same event shared one record — after a restart one group's dead letter was gone
/// (its offset already committed past it), and discarding it in one group erased it in the other.
#[test]
fn two_groups_dead_lettering_the_same_event_keep_both_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    {
        let b = open(dir.path(), &clock);
        b.create_topic("t", spec(1)).unwrap();
        b.produce("t", vec![event("poison", "k")]).unwrap();
        for group in ["crm", "billing"] {
            let m = b.join(group, &["t".to_string()], None).unwrap().member_id;
            for _ in 0..3 {
                let f = b.fetch(group, &m, 10).unwrap();
                assert_eq!(f.deliveries.len(), 1, "{group}");
                b.nack(group, &f.deliveries[0].delivery_id, "refused").unwrap();
                clock.advance_ms(2_000);
            }
            assert_eq!(b.dead_letters(group).unwrap().len(), 1, "{group}");
        }
    }
    let b = open(dir.path(), &clock);
    for group in ["crm", "billing"] {
        let dead = b.dead_letters(group).unwrap();
        assert_eq!(dead.len(), 1, "{group} lost its dead letter across the restart");
        assert_eq!(dead[0].group, group);
    }
    b.discard_dead_letter("crm", "t:0:0").unwrap();
    drop(b);
    let b = open(dir.path(), &clock);
    assert!(b.dead_letters("crm").unwrap().is_empty(), "discarded in crm");
    assert_eq!(b.dead_letters("billing").unwrap().len(), 1, "still dead in billing");
}

#[test]
fn a_group_without_members_is_deleted_with_its_offsets_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    {
        let b = open(dir.path(), &clock);
        b.create_topic("t", spec(2)).unwrap();
        b.produce("t", vec![event("a", "k1"), event("b", "k2")]).unwrap();
        let m = b.join("old", &["t".to_string()], None).unwrap().member_id;
        drain(&b, "old", &m);
        assert!(
            matches!(b.delete_group("old"), Err(BrokerError::GroupInUse { members: 1, .. })),
            "a group with a member is refused"
        );
        b.leave("old", &m).unwrap();
        b.delete_group("old").unwrap();
        assert!(!b.list_groups().contains(&"old".to_string()));
        assert!(matches!(b.describe_group("old"), Err(BrokerError::UnknownGroup(_))));
        // Deleting twice: nothing left to delete.
        assert!(matches!(b.delete_group("old"), Err(BrokerError::UnknownGroup(_))));
    }
    let b = open(dir.path(), &clock);
    assert!(!b.list_groups().contains(&"old".to_string()), "the deletion survives a restart");
    // A new group of that name starts from the beginning again.
    let m = b.join("old", &["t".to_string()], None).unwrap().member_id;
    assert_eq!(drain(&b, "old", &m).len(), 2);
}

#[test]
fn the_in_flight_limit_holds_through_acks_releases_rejections_timeouts_and_rebalances() {
    // The limit is enforced from a count kept per partition instead of a scan of every pending
    // window at each fetch; each way a delivery stops being in flight must give its slot back.
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let options = LogOptions { maintenance_interval_ms: None, ..LogOptions::new(dir.path()) };
    let b = Broker::open_with(
        options,
        Arc::clone(&clock) as _,
        BrokerConfig { inflight_per_member_max: 4, ..config() },
    )
    .unwrap();
    b.create_topic("t", spec(2)).unwrap();
    let events: Vec<Event> = (0..40).map(|i| event(&format!("e{i}"), &format!("k{i}"))).collect();
    b.produce("t", events).unwrap();
    let topics = ["t".to_string()];
    let a = b.join("g", &topics, None).unwrap().member_id;
    let ids = |f: &driftless_broker::Fetched| -> Vec<String> {
        f.deliveries.iter().map(|d| d.delivery_id.clone()).collect()
    };

    let first = b.fetch("g", &a, 100).unwrap();
    assert_eq!(first.deliveries.len(), 4, "the limit, not the 100 asked for");
    assert!(b.fetch("g", &a, 100).unwrap().deliveries.is_empty(), "at the limit");
    let held = ids(&first);
    b.ack("g", &held[..2]).unwrap();
    assert_eq!(b.fetch("g", &a, 100).unwrap().deliveries.len(), 2, "acks free their slots");
    b.release("g", &held[2..3]).unwrap();
    assert_eq!(b.fetch("g", &a, 100).unwrap().deliveries.len(), 1, "a release frees its slot");
    b.nack("g", &held[3], "boom").unwrap();
    assert_eq!(b.fetch("g", &a, 100).unwrap().deliveries.len(), 1, "a rejection frees its slot");

    // Everything in flight expires: the same deliveries come back (attempt 2), no more.
    clock.advance_ms(5_001);
    let again = b.fetch("g", &a, 100).unwrap();
    assert_eq!(again.deliveries.len(), 4);
    assert!(
        b.fetch("g", &a, 100).unwrap().deliveries.is_empty(),
        "expired ones are in flight again"
    );

    // A second member takes one partition: that partition's deliveries leave `a`'s count.
    let m2 = b.join("g", &topics, None).unwrap().member_id;
    let owned_by_a = b.heartbeat("g", &a).unwrap().assignments;
    assert_eq!(owned_by_a.len(), 1);
    let kept = again.deliveries.iter().filter(|d| (d.topic.clone(), d.partition) == owned_by_a[0]);
    let free = 4 - kept.count();
    assert_eq!(b.fetch("g", &a, 100).unwrap().deliveries.len(), free, "returned slots reused");
    assert!(!b.fetch("g", &m2, 100).unwrap().deliveries.is_empty());
}

#[test]
fn a_member_at_its_in_flight_limit_gets_its_expired_deliveries_back() {
    // Regression: expired deliveries still counted in flight, so a member that had fetched its
    // whole limit and lost the answers got nothing ever again while it kept heartbeating.
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let options = LogOptions { maintenance_interval_ms: None, ..LogOptions::new(dir.path()) };
    let config = BrokerConfig { inflight_per_member_max: 2, ..config() };
    let b = Broker::open_with(options, Arc::clone(&clock) as _, config).unwrap();
    b.create_topic("t", spec(1)).unwrap();
    b.produce("t", vec![event("a", "k1"), event("b", "k2"), event("c", "k3")]).unwrap();
    let m = b.join("g", &["t".to_string()], None).unwrap().member_id;
    assert_eq!(b.fetch("g", &m, 10).unwrap().deliveries.len(), 2); // answers lost
    clock.advance_ms(5_001);
    let back = b.fetch("g", &m, 10).unwrap();
    let ids: Vec<&str> = back.deliveries.iter().map(|d| d.event["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b"], "the expired deliveries, not the third event");
    assert!(back.deliveries.iter().all(|d| d.attempt == 2));
}

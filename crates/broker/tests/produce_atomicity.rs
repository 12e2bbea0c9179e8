//! Topics and produce under hostile numbers and partial failure: every number of a topic's
//! settings is range-checked before use (retention_ms = 2^63 used to delete sealed segments), a
//! produce request is refused whole when any limit is broken (a 1.1 MB event for partition 1
//! used to leave the valid event for partition 0 durable), a write failure part-way says
//! exactly which events are durable, and the server-wide topic and partition limits hold.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;
use std::sync::Arc;

use driftless_broker::{Broker, BrokerConfig, BrokerError, TopicSpec};
use driftless_core::{partition_for_key, Event, ManualClock, TopicName};
use driftless_log::fs::{FaultFs, FaultOp, Fs};
use driftless_log::{Durability, LogOptions};
use proptest::prelude::*;

const T0: i64 = 1_700_000_000_000;
const DAY_MS: i64 = 24 * 3600 * 1000;

fn open_with(
    dir: &Path,
    clock: &Arc<ManualClock>,
    fs: Arc<dyn Fs>,
    config: BrokerConfig,
) -> Broker {
    let options = LogOptions { maintenance_interval_ms: None, fs, ..LogOptions::new(dir) };
    Broker::open_with(options, Arc::clone(clock) as _, config).unwrap()
}

fn open(dir: &Path, clock: &Arc<ManualClock>) -> Broker {
    open_with(dir, clock, Arc::new(driftless_log::fs::StdFs), BrokerConfig::default())
}

/// An event whose subject places it on `partition` of a `partitions`-partition topic, with
/// `data_bytes` bytes of data.
fn event_on(id: &str, partition: u32, partitions: u32, data_bytes: usize) -> Event {
    let subject = (0..)
        .map(|n| format!("{id}-k{n}"))
        .find(|s| partition_for_key(s.as_bytes(), partitions) == partition)
        .unwrap();
    let mut e = Event::new(id, "/test", "thing.happened.v1");
    e.subject = Some(subject);
    e.data = Some(serde_json::json!({ "pad": "x".repeat(data_bytes) }));
    e
}

fn spec(partitions: u32) -> TopicSpec {
    TopicSpec { partitions, ..TopicSpec::default() }
}

fn end_offsets(b: &Broker, topic: &str) -> Vec<u64> {
    b.end_offsets(topic).unwrap()
}

/// Issue 20, hole 4: `retention_ms = 2^63` was accepted, wrapped to a negative age, and the
/// first maintenance pass deleted a sealed segment of acknowledged events.
#[test]
fn retention_ms_of_2_pow_63_is_refused_and_the_longest_retention_deletes_no_sealed_segment() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock);
    let huge = TopicSpec { retention_ms: Some(1 << 63), ..TopicSpec::default() };
    match b.create_topic("keep", huge) {
        Err(BrokerError::InvalidSetting { field: "retention_ms", reason }) => {
            assert!(
                reason.contains("9223372036854775808") && reason.contains("3153600000000"),
                "names the value and the range: {reason}"
            );
        }
        other => panic!("expected a refusal naming retention_ms, got {other:?}"),
    }
    assert!(b.list_topics().is_empty());
    // The longest accepted retention: events in a sealed segment (sealed by age after a week)
    // survive maintenance.
    let longest = TopicSpec { retention_ms: Some(driftless_log::MS_LIMIT), ..TopicSpec::default() };
    b.create_topic("keep", longest).unwrap();
    let first: Vec<Event> = (0..64).map(|i| event_on(&format!("a{i}"), 0, 1, 10)).collect();
    b.produce("keep", first).unwrap();
    clock.advance_ms(8 * DAY_MS);
    let second: Vec<Event> = (0..64).map(|i| event_on(&format!("b{i}"), 0, 1, 10)).collect();
    b.produce("keep", second).unwrap();
    let topic = b.log().topic(&TopicName::new("keep").unwrap()).unwrap();
    let p = topic.partition(0).unwrap();
    assert_eq!(p.stats().segments, 2, "the first week's events are in a sealed segment");
    b.log().run_maintenance().unwrap();
    assert_eq!((p.start_offset(), p.end_offset()), (0, 128), "no acknowledged event deleted");
}

/// Issue 20, hole 5: [valid event → p0, 1.1 MB event → p1] answered 413 naming the valid
/// event's index, while the p0 event was durable (a retry reported it as a duplicate).
#[test]
fn a_batch_with_an_oversized_event_for_another_partition_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock);
    b.create_topic("pt", spec(2)).unwrap();
    let small = event_on("small", 0, 2, 10);
    let big = event_on("big", 1, 2, 1_100_000);
    match b.produce("pt", vec![small.clone(), big]) {
        Err(BrokerError::EventTooLarge { index: 1, bytes, max: 1_048_576 }) => {
            assert!(bytes > 1_100_000);
        }
        other => panic!("expected the big event (index 1) refused, got {other:?}"),
    }
    assert_eq!(end_offsets(&b, "pt"), [0, 0], "nothing of the request is durable");
    let retry = b.produce("pt", vec![small]).unwrap();
    assert!(!retry[0].duplicate, "a retry is not a duplicate: nothing was appended");
    assert_eq!((retry[0].partition, retry[0].offset), (0, 0));
}

/// A partition's share of a request is one batch; a share over `batch_bytes_max` is refused
/// before any partition is written.
#[test]
fn a_batch_too_large_for_one_partition_appends_nothing_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock);
    b.create_topic("pt", spec(2)).unwrap();
    let mut events = vec![event_on("small", 0, 2, 10)];
    events.extend((0..9).map(|i| event_on(&format!("big{i}"), 1, 2, 1_000_000)));
    match b.produce("pt", events) {
        Err(BrokerError::BatchTooLarge { partition: 1, events: 9, bytes, max }) => {
            assert!(bytes > max);
        }
        other => panic!("expected partition 1's batch refused, got {other:?}"),
    }
    assert_eq!(end_offsets(&b, "pt"), [0, 0]);
    assert!(!b.produce("pt", vec![event_on("small", 0, 2, 10)]).unwrap()[0].duplicate);
}

/// The disk half of hole 5: a write failure on one partition after another was written. The
/// answer lists exactly which events are durable (index, partition, offset) and which are not,
/// and a resend finds the durable ones as duplicates.
#[test]
fn a_write_failure_on_one_partition_reports_exactly_which_events_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let fs = FaultFs::new();
    let b = open_with(dir.path(), &clock, Arc::new(Arc::clone(&fs)), BrokerConfig::default());
    b.create_topic("pt", spec(2)).unwrap();
    fs.fail(
        FaultOp::Write,
        &format!("topics{}pt{}1", std::path::MAIN_SEPARATOR, std::path::MAIN_SEPARATOR),
        0,
        true,
    );
    let events = vec![event_on("e0", 0, 2, 10), event_on("e1", 1, 2, 10), event_on("e2", 0, 2, 10)];
    let partial = match b.produce("pt", events.clone()) {
        Err(BrokerError::PartiallyDurable(p)) => p,
        other => panic!("expected a partial produce, got {other:?}"),
    };
    let durable: Vec<(usize, u32, u64)> =
        partial.durable.iter().map(|d| (d.index, d.partition, d.offset)).collect();
    assert_eq!(durable, [(0, 0, 0), (2, 0, 1)]);
    let not: Vec<(usize, &str, u32)> =
        partial.not_durable.iter().map(|n| (n.index, n.id.as_str(), n.partition)).collect();
    assert_eq!(not, [(1, "e1", 1)]);
    assert!(partial.not_durable[0].error.contains("write segment"), "{partial:?}");
    let detail = BrokerError::PartiallyDurable(partial).to_string();
    assert!(detail.contains("2 of the request's 3 events are durable"), "{detail}");
    // The durable ones are really there: a resend finds them.
    let again = b.produce("pt", vec![events[0].clone(), events[2].clone()]).unwrap();
    assert!(again.iter().all(|r| r.duplicate && r.partition == 0));
    // The failed partition refuses writes (poisoned) before anything of a request is written.
    fs.heal();
    match b.produce("pt", vec![event_on("e3", 0, 2, 10), events[1].clone()]) {
        Err(BrokerError::Log(driftless_log::LogError::Poisoned { partition: 1, .. })) => {}
        other => panic!("expected the poisoned partition refused up front, got {other:?}"),
    }
    assert_eq!(end_offsets(&b, "pt")[0], 2, "e3 was not appended");
}

/// The same when the data is written but its fsync fails: the partition is poisoned, its events
/// are reported not durable (a resend after the restart is safe either way), the others durable.
#[test]
fn a_failed_fsync_on_one_partition_reports_exactly_which_events_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let fs = FaultFs::new();
    let b = open_with(dir.path(), &clock, Arc::new(Arc::clone(&fs)), BrokerConfig::default());
    b.create_topic("pt", spec(3)).unwrap();
    let sep = std::path::MAIN_SEPARATOR;
    fs.fail(FaultOp::SyncData, &format!("topics{sep}pt{sep}1{sep}"), 0, true);
    let events = vec![
        event_on("e0", 2, 3, 10),
        event_on("e1", 1, 3, 10),
        event_on("e2", 0, 3, 10),
        event_on("e1", 1, 3, 10), // a repeat inside the request shares its first's fate
    ];
    let partial = match b.produce("pt", events) {
        Err(BrokerError::PartiallyDurable(p)) => p,
        other => panic!("expected a partial produce, got {other:?}"),
    };
    let durable: Vec<(usize, u32, u64)> =
        partial.durable.iter().map(|d| (d.index, d.partition, d.offset)).collect();
    assert_eq!(durable, [(0, 2, 0), (2, 0, 0)]);
    let not: Vec<(usize, u32)> =
        partial.not_durable.iter().map(|n| (n.index, n.partition)).collect();
    assert_eq!(not, [(1, 1), (3, 1)]);
    assert!(partial.not_durable[0].error.contains("fdatasync"), "{partial:?}");
    assert!(matches!(partial.cause, BrokerError::Log(driftless_log::LogError::Poisoned { .. })));
}

/// Global limits: topics and partitions across all topics, refused by name with the way out.
#[test]
fn creating_topics_beyond_topics_max_or_partitions_total_max_is_refused_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let config = BrokerConfig { topics_max: 3, partitions_total_max: 5, ..BrokerConfig::default() };
    let b = open_with(dir.path(), &clock, Arc::new(driftless_log::fs::StdFs), config.clone());
    b.create_topic("a", spec(2)).unwrap();
    b.create_topic("b", spec(2)).unwrap();
    match b.create_topic("c", spec(2)) {
        Err(e @ BrokerError::CapacityLimit { limit: "partitions_total_max", .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("partitions_total_max = 5, 4 in use"), "{msg}");
            assert!(msg.contains("raise partitions_total_max"), "{msg}");
        }
        other => panic!("expected partitions_total_max, got {other:?}"),
    }
    b.create_topic("c", spec(1)).unwrap();
    match b.create_topic("d", spec(1)) {
        Err(BrokerError::CapacityLimit { limit: "topics_max", max: 3, in_use: 3, .. }) => {}
        other => panic!("expected topics_max, got {other:?}"),
    }
    b.delete_topic("a").unwrap();
    b.create_topic("d", spec(1)).unwrap();
    // Existing topics over a lowered limit still open; only new ones are refused.
    drop(b);
    let lowered = BrokerConfig { topics_max: 1, ..config };
    let b = open_with(dir.path(), &clock, Arc::new(driftless_log::fs::StdFs), lowered);
    assert_eq!(b.list_topics().len(), 3);
    assert!(matches!(b.create_topic("e", spec(1)), Err(BrokerError::CapacityLimit { .. })));
}

fn extreme_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(driftless_log::MS_LIMIT),
        Just(driftless_log::MS_LIMIT + 1),
        Just(1 << 63),
        Just(u64::MAX),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Every `TopicSpec` number at its extremes: either refused naming the field, its value and
    /// the range (and nothing created), or created with exactly the spec given.
    #[test]
    fn every_topic_spec_number_is_refused_by_name_or_kept_exactly(
        partitions in prop_oneof![
            3 => Just(2u32),
            1 => prop_oneof![Just(0u32), Just(1), Just(1025), Just(u32::MAX)],
        ],
        retention_ms in prop_oneof![2 => Just(None), 1 => extreme_u64().prop_map(Some)],
        retention_bytes in prop_oneof![2 => Just(None), 1 => extreme_u64().prop_map(Some)],
        dedup_window_ms in prop_oneof![
            3 => Just(120_000u64),
            1 => prop_oneof![Just(0u64), Just(7 * 86_400_000 + 1), Just(1 << 63), Just(u64::MAX)],
        ],
        interval in prop_oneof![2 => Just(None), 1 => extreme_u64().prop_map(Some)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let b = open(dir.path(), &clock);
        let spec = TopicSpec {
            partitions,
            retention_ms,
            retention_bytes,
            compact: false,
            dedup_window_ms,
            durability: interval.map_or(Durability::Always, Durability::IntervalMs),
            owner: None,
        };
        match b.create_topic("t", spec.clone()) {
            Ok(created) => {
                prop_assert_eq!(&created.spec, &spec);
                // Correct retention: an event in a sealed segment (sealed by age after a week)
                // survives maintenance unless the retention asked for less.
                let produced = b.produce("t", vec![event_on("x", 0, partitions, 1)]).unwrap();
                prop_assert!(!produced[0].duplicate);
                clock.advance_ms(8 * DAY_MS);
                b.produce("t", vec![event_on("y", 0, partitions, 1)]).unwrap();
                b.log().run_maintenance().unwrap();
                let topic = b.log().topic(&TopicName::new("t").unwrap()).unwrap();
                let p = topic.partition(0).unwrap();
                prop_assert_eq!(p.end_offset(), 2);
                let kept_by_time = retention_ms.is_none_or(|r| i128::from(r) > i128::from(8 * DAY_MS));
                let kept_by_size = retention_bytes.is_none_or(|r| r > 1 << 20);
                if kept_by_time && kept_by_size {
                    prop_assert_eq!(p.start_offset(), 0, "an event inside retention was deleted");
                }
            }
            Err(BrokerError::InvalidSetting { field, reason }) => {
                prop_assert!(reason.contains("out of range; use"), "{}: {}", field, reason);
                prop_assert!(
                    ["partitions", "retention_ms", "retention_bytes", "dedup_window_ms", "durability"]
                        .contains(&field),
                    "{}", field
                );
                prop_assert!(b.list_topics().is_empty());
            }
            Err(other) => prop_assert!(false, "unexpected error {}", other),
        }
    }
}

//! Every field of a topic's configuration arrives from outside (an HTTP request, a `topic.json`):
//! extreme values of each (0, 1, the limit, just past it, 2^63, `u64::MAX`) are either refused
//! with an error naming the field, its value and the range, or give correct retention — no
//! record newer than the retention horizon is ever deleted.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::sync::Arc;

use driftless_core::{Clock, ManualClock};
use driftless_log::{
    Durability, Log, NewRecord, TopicConfig, DURABILITY_INTERVAL_MS_LIMIT, MS_LIMIT,
    PARTITIONS_MAX, RETENTION_BYTES_LIMIT, SEGMENT_BYTES_MAX_LIMIT,
};
use proptest::prelude::*;
use support::{name, options, read_all, small_segments, T0};

/// The reproduction: `retention_ms = 2^63` wrapped to a negative age and the first
/// retention pass deleted every sealed segment. It is refused now, naming the field and range.
#[test]
fn retention_ms_of_2_pow_63_is_refused_before_it_can_delete_a_sealed_segment() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let log = Log::open(options(dir.path(), &clock)).unwrap();
    let config = TopicConfig { retention_ms: Some(1 << 63), ..small_segments() };
    let err = log.create_topic(&name("keep"), config).unwrap_err().to_string();
    assert!(
        err.contains("retention_ms = 9223372036854775808") && err.contains(&MS_LIMIT.to_string()),
        "{err}"
    );
    assert!(log.topics().is_empty(), "a refused topic is not created");
}

/// Values worth trying for a `u64` field: the edges of every range in `TopicConfig::validate`
/// and the values that break a careless `as i64`.
fn extreme_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(MS_LIMIT),
        Just(MS_LIMIT + 1),
        Just(SEGMENT_BYTES_MAX_LIMIT),
        Just(SEGMENT_BYTES_MAX_LIMIT + 1),
        Just(RETENTION_BYTES_LIMIT),
        Just(i64::MAX as u64),
        Just(1 << 63),
        Just(u64::MAX),
    ]
}

fn extreme_usize() -> impl Strategy<Value = usize> {
    extreme_u64().prop_map(|v| usize::try_from(v).unwrap_or(usize::MAX))
}

/// The base value most of the time (so valid configurations get through), an extreme one else.
fn field<T: Clone + std::fmt::Debug + 'static>(
    base: T,
    extreme: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    prop_oneof![5 => Just(base), 1 => extreme].boxed()
}

fn config() -> impl Strategy<Value = TopicConfig> {
    let base =
        TopicConfig { segment_ms_max: 2_000, retention_ms: Some(10_000), ..small_segments() };
    let b = base.clone();
    (
        (
            field(
                b.partitions,
                prop_oneof![Just(0), Just(1), Just(PARTITIONS_MAX), Just(u32::MAX)],
            ),
            field(
                b.durability,
                prop_oneof![
                    Just(Durability::Never),
                    Just(Durability::IntervalMs(DURABILITY_INTERVAL_MS_LIMIT)),
                    extreme_u64().prop_map(Durability::IntervalMs),
                ],
            ),
            field(b.retention_ms, proptest::option::of(extreme_u64())),
            field(b.retention_bytes, proptest::option::of(extreme_u64())),
            field(b.tombstone_retention_ms, extreme_u64()),
            field(b.record_bytes_max, extreme_usize()),
        ),
        (
            field(b.batch_bytes_max, extreme_usize()),
            field(b.segment_bytes_max, extreme_u64()),
            field(b.segment_ms_max, extreme_u64()),
            field(b.index_interval_bytes, extreme_u64()),
            field(b.unsynced_bytes_max, extreme_u64()),
            field(b.compaction_map_bytes_max, extreme_usize()),
        ),
    )
        .prop_map(move |((p, d, rms, rb, tms, rec), (batch, seg, segms, idx, uns, cmap))| {
            TopicConfig {
                partitions: p,
                durability: d,
                retention_ms: rms,
                retention_bytes: rb,
                tombstone_retention_ms: tms,
                record_bytes_max: rec,
                batch_bytes_max: batch,
                segment_bytes_max: seg,
                segment_ms_max: segms,
                index_interval_bytes: idx,
                unsynced_bytes_max: uns,
                compaction_map_bytes_max: cmap,
                ..base.clone()
            }
        })
}

const FIELDS: [&str; 12] = [
    "partitions",
    "interval_ms",
    "retention_ms",
    "retention_bytes",
    "tombstone_retention_ms",
    "record_bytes_max",
    "batch_bytes_max",
    "segment_bytes_max",
    "segment_ms_max",
    "index_interval_bytes",
    "unsynced_bytes_max",
    "compaction_map_bytes_max",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn extreme_settings_are_refused_by_name_or_keep_every_record_inside_retention(
        config in config(),
        step_ms in prop_oneof![Just(1i64), Just(700), Just(3_000)],
        later_ms in prop_oneof![Just(0i64), Just(1), Just(9_999), Just(60_000), Just(1 << 40)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let log = Log::open(options(dir.path(), &clock)).unwrap();
        if let Err(e) = config.validate() {
            let msg = e.to_string();
            prop_assert!(
                msg.contains("out of range") && FIELDS.iter().any(|f| msg.contains(f)),
                "a refusal names the field and its range: {msg}"
            );
            prop_assert!(log.create_topic(&name("t"), config).is_err());
            prop_assert!(log.topics().is_empty());
            return Ok(());
        }
        // Partition count does not change retention; one keeps the case fast.
        let config = TopicConfig { partitions: 1, ..config };
        let topic = log.create_topic(&name("t"), config.clone()).unwrap();
        let p = Arc::clone(topic.partition(0).unwrap());
        let value = vec![b'v'; config.record_bytes_max.min(100)];
        let mut appended = Vec::new(); // (offset, append time)
        for _ in 0..40 {
            let a = p.append(&[NewRecord::unkeyed(&value)]).unwrap();
            appended.push((a.base_offset, clock.now_ms()));
            clock.advance_ms(step_ms);
        }
        let bytes_written = 40 * (value.len() + driftless_log::RECORD_HEADER_BYTES) as u64;
        clock.advance_ms(later_ms);
        let now = clock.now_ms();
        p.enforce_retention().unwrap();
        let kept: std::collections::BTreeSet<u64> = read_all(&p).iter().map(|r| r.0).collect();
        let (last, _) = *appended.last().unwrap();
        prop_assert!(kept.contains(&last), "the active segment's last record is never deleted");
        // Where retention by size presses, it may delete young records: check time only
        // where it does not.
        if config.retention_bytes.is_none_or(|r| r >= bytes_written) {
            // Exact arithmetic: the model must not share the code's conversions.
            let horizon = config.retention_ms.map_or(i128::MIN, |r| i128::from(now) - i128::from(r));
            for (offset, at) in appended {
                if i128::from(at) >= horizon {
                    prop_assert!(
                        kept.contains(&offset),
                        "offset {offset} appended at {at} is inside retention (horizon {horizon}) \
                         but was deleted"
                    );
                }
            }
        }
    }
}

/// A `topic.json` can hold anything (an older version accepted `retention_ms = 2^63`): opening
/// refuses an out-of-range value naming the file and the field, rather than running retention
/// with it.
#[test]
fn a_topic_json_with_an_out_of_range_retention_is_refused_by_name_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    {
        let log = Log::open(options(dir.path(), &clock)).unwrap();
        log.create_topic(&name("keep"), small_segments()).unwrap();
    }
    let meta = dir.path().join("topics/keep/topic.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    json["retention_ms"] = serde_json::json!(u64::MAX);
    std::fs::write(&meta, serde_json::to_vec(&json).unwrap()).unwrap();
    let err = Log::open(options(dir.path(), &clock)).unwrap_err().to_string();
    assert!(err.contains("topic.json") && err.contains("retention_ms"), "{err}");
}

//! The log's promises, one test each: appends and reads, time lookup, tailing, group commit,
//! limits, segment rolls across restarts, retention, compaction and topic lifecycle.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::sync::Arc;
use std::time::Duration;

use driftless_core::ManualClock;
use driftless_log::fs::{FaultFs, FaultOp};
use driftless_log::{Cleanup, Durability, Log, LogError, NewRecord, TopicConfig};
use support::*;

#[test]
fn appended_records_read_back_with_dense_offsets_keys_values_and_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let log = Log::open(options(dir.path(), &clock)).unwrap();
    let p = open_topic(&log, "t", TopicConfig::default());
    let a = p.append(&[NewRecord::keyed(b"k1", b"v1"), NewRecord::unkeyed(b"v2")]).unwrap();
    assert_eq!((a.base_offset, a.last_offset, a.timestamp_ms), (0, 1, T0));
    let b = p.append(&[NewRecord::tombstone(b"k1")]).unwrap();
    assert_eq!(b.base_offset, 2);
    assert_eq!(p.end_offset(), 3);
    let got = read_all(&p);
    assert_eq!(
        got,
        vec![
            (0, Some(b"k1".to_vec()), Some(b"v1".to_vec())),
            (1, None, Some(b"v2".to_vec())),
            (2, Some(b"k1".to_vec()), None),
        ]
    );
    // Reading from the middle, and past the end.
    let mid = p.read(1, 1, 1 << 20).unwrap();
    assert_eq!(mid.records.len(), 1);
    assert_eq!((mid.records[0].offset, mid.next_offset), (1, 2));
    assert_eq!(p.read(3, 10, 1 << 20).unwrap().records, vec![]);
}

#[test]
fn timestamps_never_go_backwards_and_time_lookup_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let log = Log::open(options(dir.path(), &clock)).unwrap();
    let p = open_topic(&log, "t", small_segments());
    for i in 0..200u64 {
        clock.set_ms(T0 + (i as i64) * 10);
        if i == 100 {
            clock.set_ms(T0); // the wall clock jumps back
        }
        p.append(&[NewRecord::unkeyed(format!("event-{i}").as_bytes())]).unwrap();
    }
    let records = p.read(0, 1000, 1 << 20).unwrap().records;
    assert!(records.windows(2).all(|w| w[0].timestamp_ms <= w[1].timestamp_ms));
    assert_eq!(p.offset_for_time(T0 + 505).unwrap(), Some(51));
    assert_eq!(p.offset_for_time(T0 + 500).unwrap(), Some(50));
    assert_eq!(p.offset_for_time(i64::MIN).unwrap(), Some(0));
    assert_eq!(p.offset_for_time(T0 + 1_000_000).unwrap(), None);
}

#[test]
fn a_tailing_reader_is_woken_by_an_append_without_polling() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let log = Log::open(options(dir.path(), &clock)).unwrap();
    let p = open_topic(&log, "t", TopicConfig::default());
    assert!(!p.wait_for(0, Duration::from_millis(20)), "nothing to wake for yet");
    let reader = {
        let p = Arc::clone(&p);
        std::thread::spawn(move || p.wait_for(0, Duration::from_secs(30)))
    };
    std::thread::sleep(Duration::from_millis(50));
    p.append(&[NewRecord::unkeyed(b"wake up")]).unwrap();
    assert!(reader.join().unwrap());
}

#[test]
fn concurrent_appenders_share_fsyncs_and_every_append_is_durable_when_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let fs = FaultFs::new();
    let log = Log::open(options_with_fs(dir.path(), &clock, Arc::new(Arc::clone(&fs)))).unwrap();
    let p = open_topic(&log, "t", TopicConfig::default());
    let before = fs.sync_data_calls();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let p = Arc::clone(&p);
            std::thread::spawn(move || {
                for i in 0..100 {
                    p.append(&[NewRecord::unkeyed(format!("{t}-{i}").as_bytes())]).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let syncs = fs.sync_data_calls() - before;
    assert_eq!(p.end_offset(), 1600);
    assert!(syncs >= 1, "acknowledged appends must have been fsynced");
    assert!(syncs < 1600, "16 concurrent appenders should share fsyncs, saw {syncs} for 1600");
    assert_eq!(p.stats().syncs, syncs);
}

#[test]
fn an_unsynced_append_is_invisible_until_waited_and_then_survives_a_power_loss() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let fs = FaultFs::new();
    {
        let log =
            Log::open(options_with_fs(dir.path(), &clock, Arc::new(Arc::clone(&fs)))).unwrap();
        let a = open_topic(&log, "a", TopicConfig::default());
        let b = open_topic(&log, "b", TopicConfig::default());
        let before = fs.sync_data_calls();
        // One caller writes two partitions, then waits for both (as the broker's produce does).
        let wa =
            a.append_unsynced(&[NewRecord::unkeyed(b"a0"), NewRecord::unkeyed(b"a1")]).unwrap();
        let wb = b.append_unsynced(&[NewRecord::unkeyed(b"b0")]).unwrap();
        assert_eq!((wa.base_offset, wa.last_offset, wb.last_offset), (0, 1, 0));
        assert_eq!(fs.sync_data_calls(), before, "writing must not fsync");
        assert!(read_all(&a).is_empty(), "readers must not see records that are not durable");
        a.wait_appended(&wa).unwrap();
        b.wait_appended(&wb).unwrap();
        assert_eq!(fs.sync_data_calls() - before, 2, "one fsync per partition");
        assert_eq!(read_all(&a).len(), 2);
        assert_eq!(read_all(&b).len(), 1);
        // Written but never waited for: may be lost, must never be half there.
        b.append_unsynced(&[NewRecord::unkeyed(b"b1"), NewRecord::unkeyed(b"b2")]).unwrap();
        fs.freeze();
    }
    fs.power_loss(7).unwrap();
    let log = Log::open(options(dir.path(), &clock)).unwrap();
    let (a, b) = (
        open_topic(&log, "a", TopicConfig::default()),
        open_topic(&log, "b", TopicConfig::default()),
    );
    assert_eq!(read_all(&a).len(), 2, "waited-for records survive");
    let b_after = read_all(&b);
    assert!(b_after.len() == 1 || b_after.len() == 3, "a batch is all or nothing: {b_after:?}");
    assert_eq!(b_after[0].2.as_deref(), Some(&b"b0"[..]));
}

#[test]
fn a_short_read_of_a_long_segment_reads_little_more_than_it_returns() {
    // Regression: every read took 1 MiB (the broker's byte limit) from the segment, to hand out
    // the few hundred records a fetch wanted, zeroing and copying the rest.
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let fs = FaultFs::new();
    let log = Log::open(options_with_fs(dir.path(), &clock, Arc::new(Arc::clone(&fs)))).unwrap();
    let p = open_topic(&log, "t", TopicConfig::default());
    let value = [b'v'; 200];
    for _ in 0..40 {
        let batch: Vec<NewRecord<'_>> = (0..500).map(|_| NewRecord::unkeyed(&value)).collect();
        p.append(&batch).unwrap();
    }
    assert_eq!(p.end_offset(), 20_000);
    let before = fs.bytes_read();
    let short = p.read(1_000, 100, 1 << 20).unwrap();
    assert_eq!(short.records.len(), 100);
    assert_eq!(short.records[0].offset, 1_000);
    let read = fs.bytes_read() - before;
    assert!(read <= 128 << 10, "100 records of ~230 bytes took {read} bytes of reads");

    // A long read still gets everything, in order, up to its byte limit.
    let long = p.read(0, usize::MAX, 8 << 20).unwrap();
    assert_eq!(long.records.len(), 20_000);
    assert!(long.records.iter().enumerate().all(|(i, r)| r.offset == i as u64));
    let capped = p.read(0, usize::MAX, 1 << 20).unwrap();
    assert!(capped.records.len() < 20_000 && capped.next_offset == capped.records.len() as u64);
}

#[test]
fn waiting_on_several_partitions_at_once_makes_each_durable_and_reports_each_failure_alone() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let fs = FaultFs::new();
    let log = Log::open(options_with_fs(dir.path(), &clock, Arc::new(Arc::clone(&fs)))).unwrap();
    let config = TopicConfig { partitions: 4, ..TopicConfig::default() };
    let topic = log.create_topic(&name("multi"), config).unwrap();
    let mut batches: Vec<(u32, driftless_log::Appended)> = (0..4)
        .map(|p| {
            let body = format!("p{p}");
            let a =
                topic.partition(p).unwrap().append_unsynced(&[NewRecord::unkeyed(body.as_bytes())]);
            (p, a.unwrap())
        })
        .collect();
    batches.push((9, batches[0].1)); // no such partition
                                     // Partition 2's fsync fails; the others' must still be reported durable, each on its own.
    fs.fail(FaultOp::SyncData, "multi/2/", 0, true);
    let before = fs.sync_data_calls();
    let outcomes = topic.wait_appended_all(&batches);
    assert_eq!(outcomes.len(), 5, "one outcome per batch, in order");
    for p in [0, 1, 3] {
        assert!(outcomes[p].is_ok(), "partition {p}: {:?}", outcomes[p]);
        assert_eq!(read_all(topic.partition(p as u32).unwrap()).len(), 1, "durable and visible");
    }
    assert!(outcomes[2].is_err(), "the failed fsync is reported for its own batch");
    assert!(read_all(topic.partition(2).unwrap()).is_empty(), "never served unless durable");
    assert!(matches!(outcomes[4], Err(LogError::UnknownPartition { partition: 9, .. })));
    assert!(fs.sync_data_calls() - before >= 4, "every partition's fsync was attempted");
}

#[test]
fn limits_reject_oversized_records_and_batches_and_empty_appends() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let log = Log::open(options(dir.path(), &clock)).unwrap();
    let p = open_topic(&log, "t", small_segments());
    let big = vec![0u8; 1025];
    let err = p.append(&[NewRecord::unkeyed(b"ok"), NewRecord::unkeyed(&big)]).unwrap_err();
    assert!(matches!(err, LogError::RecordTooLarge { index: 1, bytes: 1025, max: 1024 }), "{err}");
    let v = vec![0u8; 1000];
    let many = vec![NewRecord::unkeyed(&v); 5];
    assert!(matches!(p.append(&many).unwrap_err(), LogError::BatchTooLarge { max: 4096, .. }));
    assert!(matches!(p.append(&[]).unwrap_err(), LogError::EmptyBatch));
    assert_eq!(p.end_offset(), 0, "rejected appends write nothing");
}

#[test]
fn segments_roll_and_everything_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let values: Vec<Vec<u8>> =
        (0..300).map(|i| format!("value-{i:04}").repeat(10).into_bytes()).collect();
    {
        let log = Log::open(options(dir.path(), &clock)).unwrap();
        let p = open_topic(&log, "t", small_segments());
        for chunk in values.chunks(3) {
            let batch: Vec<_> = chunk.iter().map(|v| NewRecord::unkeyed(v)).collect();
            p.append(&batch).unwrap();
        }
        assert!(p.stats().segments > 5, "small segments should have rolled");
    }
    let log = Log::open(options(dir.path(), &clock)).unwrap();
    let p = open_topic(&log, "t", small_segments());
    let got = read_all(&p);
    assert_eq!(got.len(), 300);
    for (i, (offset, _, value)) in got.iter().enumerate() {
        assert_eq!(*offset, i as u64);
        assert_eq!(value.as_deref(), Some(&values[i][..]));
    }
    // Appending after reopen continues the offsets.
    assert_eq!(p.append(&[NewRecord::unkeyed(b"next")]).unwrap().base_offset, 300);
}

#[test]
fn retention_deletes_old_sealed_segments_by_time_and_by_size_but_never_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let log = Log::open(options(dir.path(), &clock)).unwrap();
    let config = TopicConfig { retention_ms: Some(60_000), ..small_segments() };
    let p = open_topic(&log, "t", config);
    let v = vec![7u8; 500];
    for _ in 0..40 {
        p.append(&[NewRecord::unkeyed(&v)]).unwrap();
    }
    assert_eq!(p.enforce_retention().unwrap().segments_deleted, 0, "nothing is old yet");
    clock.advance_ms(120_000);
    p.append(&[NewRecord::unkeyed(b"fresh")]).unwrap();
    let outcome = p.enforce_retention().unwrap();
    assert!(outcome.segments_deleted > 0);
    let stats = p.stats();
    assert_eq!(stats.segments, 1, "only the active segment, holding the fresh record, is left");
    assert!(stats.start_offset > 0 && stats.start_offset < 40);
    let start = stats.start_offset;
    assert!(
        matches!(p.read(0, 1, 1024), Err(LogError::OffsetTrimmed { log_start, .. }) if log_start == start)
    );
    assert_eq!(read_all(&p).len() as u64, 41 - start);

    let by_size = TopicConfig { retention_bytes: Some(8192), ..small_segments() };
    let q = open_topic(&log, "by-size", by_size);
    for _ in 0..100 {
        q.append(&[NewRecord::unkeyed(&v)]).unwrap();
    }
    q.enforce_retention().unwrap();
    let stats = q.stats();
    assert!(stats.size_bytes <= 8192 + 4096, "size {} over the retention", stats.size_bytes);
    assert!(stats.start_offset > 0);
    assert_eq!(stats.end_offset, 100);
}

#[test]
fn compaction_keeps_the_newest_value_per_key_and_expires_old_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let log = Log::open(options(dir.path(), &clock)).unwrap();
    let config = TopicConfig {
        cleanup: Cleanup::Compact,
        tombstone_retention_ms: 10_000,
        ..small_segments()
    };
    let p = open_topic(&log, "t", config.clone());
    for round in 0..20 {
        for key in 0..10 {
            let v = format!("key-{key}-round-{round}-{}", "x".repeat(40));
            p.append(&[NewRecord::keyed(format!("k{key}").as_bytes(), v.as_bytes())]).unwrap();
        }
    }
    p.append(&[NewRecord::tombstone(b"k3")]).unwrap();
    p.append(&[NewRecord::unkeyed(b"no key")]).unwrap();
    // Fill past the tombstone so it lands in a sealed segment.
    let pad = vec![1u8; 900];
    for _ in 0..10 {
        p.append(&[NewRecord::keyed(b"pad", &pad)]).unwrap();
    }
    let end = p.end_offset();
    let outcome = p.compact().unwrap();
    assert!(outcome.records_removed > 150, "{outcome:?}");
    let latest = |records: &[Row], key: &str| {
        records.iter().rev().find(|r| r.1.as_deref() == Some(key.as_bytes())).cloned()
    };
    let after = read_all(&p);
    for key in [0, 1, 2, 4, 9] {
        let (_, _, v) = latest(&after, &format!("k{key}")).unwrap();
        assert!(String::from_utf8(v.unwrap()).unwrap().starts_with(&format!("key-{key}-round-19")));
        let copies = after.iter().filter(|r| r.1.as_deref() == Some(format!("k{key}").as_bytes()));
        assert_eq!(copies.count(), 1, "older values of k{key} must be gone");
    }
    assert!(latest(&after, "k3").unwrap().2.is_none(), "the fresh tombstone stays");
    assert!(after.iter().any(|r| r.1.is_none()), "records without a key stay");
    assert!(after.windows(2).all(|w| w[0].0 < w[1].0), "offsets stay ordered");
    assert_eq!(p.end_offset(), end, "compaction never changes offsets");

    clock.advance_ms(20_000);
    p.compact().unwrap();
    assert!(latest(&read_all(&p), "k3").is_none(), "an expired tombstone is removed");

    // Compacted segments survive a restart.
    let before = read_all(&p);
    drop(p);
    drop(log);
    let log = Log::open(options(dir.path(), &clock)).unwrap();
    let p = open_topic(&log, "t", config);
    assert_eq!(read_all(&p), before);
}

#[test]
fn compaction_does_not_block_appends() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let log = Log::open(options(dir.path(), &clock)).unwrap();
    let config = TopicConfig {
        cleanup: Cleanup::Compact,
        durability: Durability::Never,
        ..small_segments()
    };
    let p = open_topic(&log, "t", config);
    let v = vec![3u8; 200];
    for i in 0..2000u32 {
        p.append(&[NewRecord::keyed(&(i % 50).to_le_bytes(), &v)]).unwrap();
    }
    let appender = {
        let p = Arc::clone(&p);
        std::thread::spawn(move || {
            for i in 0..2000u32 {
                p.append(&[NewRecord::keyed(&(i % 50).to_le_bytes(), b"new")]).unwrap();
            }
        })
    };
    for _ in 0..5 {
        p.compact().unwrap();
    }
    appender.join().unwrap();
    p.compact().unwrap();
    let all = read_all(&p);
    for key in 0..50u32 {
        let newest = all.iter().rev().find(|r| r.1.as_deref() == Some(&key.to_le_bytes()[..]));
        assert_eq!(newest.unwrap().2.as_deref(), Some(&b"new"[..]));
    }
}

#[test]
fn topics_are_created_listed_reopened_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    {
        let log = Log::open(options(dir.path(), &clock)).unwrap();
        let config = TopicConfig { partitions: 4, ..TopicConfig::default() };
        let t = log.create_topic(&name("orders"), config.clone()).unwrap();
        assert_eq!(t.partitions().len(), 4);
        assert!(matches!(log.create_topic(&name("orders"), config), Err(LogError::TopicExists(_))));
        assert!(matches!(t.partition(4), Err(LogError::UnknownPartition { count: 4, .. })));
        t.partition(2).unwrap().append(&[NewRecord::unkeyed(b"x")]).unwrap();
        log.create_topic(&name("doomed"), TopicConfig::default()).unwrap();
        // A second process cannot open the same directory.
        assert!(matches!(Log::open(options(dir.path(), &clock)), Err(LogError::Locked { .. })));
    }
    let log = Log::open(options(dir.path(), &clock)).unwrap();
    let names: Vec<_> = log.topics().iter().map(|t| t.name().to_string()).collect();
    assert_eq!(names, ["doomed", "orders"]);
    let orders = log.topic(&name("orders")).unwrap();
    assert_eq!(orders.config().partitions, 4);
    assert_eq!(orders.partition(2).unwrap().end_offset(), 1);
    let doomed = log.topic(&name("doomed")).unwrap();
    log.delete_topic(&name("doomed")).unwrap();
    assert!(log.topic(&name("doomed")).is_none());
    let err = doomed.partition(0).unwrap().append(&[NewRecord::unkeyed(b"x")]).unwrap_err();
    assert!(matches!(err, LogError::TopicDeleted(_)));
    assert!(!dir.path().join("topics/doomed").exists());
    assert!(matches!(log.delete_topic(&name("doomed")), Err(LogError::UnknownTopic(_))));
}

#[test]
fn interval_durability_flushes_in_the_background_and_readers_see_writes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let fs = FaultFs::new();
    let log = Log::open(options_with_fs(dir.path(), &clock, Arc::new(Arc::clone(&fs)))).unwrap();
    let config = TopicConfig { durability: Durability::IntervalMs(20), ..TopicConfig::default() };
    let p = open_topic(&log, "t", config);
    let before = fs.sync_data_calls();
    p.append(&[NewRecord::unkeyed(b"a")]).unwrap();
    assert_eq!(p.end_offset(), 1, "visible before the sync in interval mode");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fs.sync_data_calls() == before {
        assert!(std::time::Instant::now() < deadline, "the background flush never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn every_fsync_is_counted_in_exactly_one_latency_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let log = Log::open(options(dir.path(), &clock)).unwrap();
    let p = open_topic(&log, "t", TopicConfig::default());
    for i in 0..20u8 {
        p.append(&[NewRecord::unkeyed(&[i])]).unwrap();
    }
    let stats = p.stats();
    assert!(stats.syncs >= 20, "always-durable appends fsync: {}", stats.syncs);
    assert_eq!(stats.sync_buckets.iter().sum::<u64>(), stats.syncs);
    assert_eq!(stats.sync_buckets.len(), driftless_log::SYNC_BUCKET_BOUNDS_US.len() + 1);
}

/// Bytes of zeros past the records of a partition's only segment.
fn zero_tail(p: &driftless_log::Partition) -> u64 {
    let files = segment_files(p.dir());
    assert_eq!(files.len(), 1);
    std::fs::metadata(&files[0]).unwrap().len() - p.stats().size_bytes
}

/// 2,000 topics written once each held a whole MiB of preallocated zeros.
#[test]
fn a_partition_written_once_preallocates_a_page_or_two_not_a_mebibyte() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let log = Log::open(options(dir.path(), &clock)).unwrap();
    let p = open_topic(&log, "once", TopicConfig::default());
    p.append(&[NewRecord::unkeyed(b"x")]).unwrap();
    // One page past the record, rounded up to the page boundary.
    assert!(zero_tail(&p) <= 2 * 4096, "{} bytes of zeros", zero_tail(&p));
}

#[test]
fn preallocation_grows_to_a_mebibyte_for_a_fast_writer_and_shrinks_when_it_slows_down() {
    use driftless_log::{PREALLOCATE_BYTES, PREALLOCATE_BYTES_MIN};
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let log = Log::open(options(dir.path(), &clock)).unwrap();
    // `never`: the test is about file lengths, not fsyncs.
    let p = open_topic(
        &log,
        "rate",
        TopicConfig { durability: Durability::Never, ..TopicConfig::default() },
    );
    let value = [7u8; 4000];
    let mut largest = 0;
    // Fast: 8 MB written without the clock moving.
    for _ in 0..2000 {
        p.append(&[NewRecord::unkeyed(&value)]).unwrap();
        largest = largest.max(zero_tail(&p));
    }
    assert!(largest >= PREALLOCATE_BYTES / 2, "a fast writer preallocated at most {largest}");
    assert!(largest <= PREALLOCATE_BYTES + 4096, "{largest}");
    // Slow: one append every 5 s; each preallocation lasts longer than 4 s, so they halve.
    for _ in 0..700 {
        clock.advance_ms(5_000);
        p.append(&[NewRecord::unkeyed(&value)]).unwrap();
    }
    let mut tail_max = 0;
    for _ in 0..10 {
        clock.advance_ms(5_000);
        p.append(&[NewRecord::unkeyed(&value)]).unwrap();
        tail_max = tail_max.max(zero_tail(&p));
    }
    assert!(
        tail_max <= PREALLOCATE_BYTES_MIN + 4096,
        "a slow writer still preallocates {tail_max}"
    );
}

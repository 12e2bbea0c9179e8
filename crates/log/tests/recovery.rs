//! Recovery and fault handling: torn tails are truncated to the last complete batch, flipped bits
//! are reported and never served, and a failed fsync poisons the partition.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use driftless_core::ManualClock;
use driftless_log::fs::{FaultFs, FaultOp};
use driftless_log::{Log, LogError, NewRecord, TopicConfig};
use support::*;

fn flip_byte(path: &std::path::Path, at: u64) {
    let f = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x10;
    f.write_all_at(&b, at).unwrap();
}

/// Appends `n` single-record batches to topic `t` in a log at `dir`, closes the log, and returns
/// the partition's directory.
fn write_and_close(
    dir: &std::path::Path,
    clock: &Arc<ManualClock>,
    config: TopicConfig,
    n: usize,
) -> std::path::PathBuf {
    let log = Log::open(options(dir, clock)).unwrap();
    let p = open_topic(&log, "t", config);
    for i in 0..n {
        p.append(&[NewRecord::unkeyed(&record_value(i))]).unwrap();
    }
    p.dir().to_path_buf()
}

fn record_value(i: usize) -> Vec<u8> {
    format!("record-{i:05}-{}", "p".repeat(50)).into_bytes()
}

#[test]
fn a_torn_last_batch_is_truncated_whole_and_acknowledged_batches_survive() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let partition_dir;
    let len_before_last;
    {
        let log = Log::open(options(dir.path(), &clock)).unwrap();
        let p = open_topic(&log, "t", TopicConfig::default());
        for i in 0..10 {
            p.append(&[NewRecord::unkeyed(&record_value(i))]).unwrap();
        }
        partition_dir = p.dir().to_path_buf();
        // The records' bytes: the open file also holds preallocated zeros.
        len_before_last = p.stats().size_bytes;
        // This batch plays the one whose write was torn by a crash before its fsync.
        let v: Vec<Vec<u8>> = (10..13).map(record_value).collect();
        p.append(&v.iter().map(|v| NewRecord::unkeyed(v)).collect::<Vec<_>>()).unwrap();
    }
    let segment = &segment_files(&partition_dir)[0];
    let full = std::fs::metadata(segment).unwrap().len();
    let record_len = (full - len_before_last) / 3;
    // Keep the first record of the batch whole and half of the second: a tear inside the batch.
    let f = OpenOptions::new().write(true).open(segment).unwrap();
    f.set_len(len_before_last + record_len + record_len / 2).unwrap();
    drop(f);

    let log = Log::open(options(dir.path(), &clock)).unwrap();
    let p = open_topic(&log, "t", TopicConfig::default());
    let got = read_all(&p);
    assert_eq!(got.len(), 10, "the whole torn batch is gone, including its complete first record");
    for (i, (offset, _, value)) in got.iter().enumerate() {
        assert_eq!((*offset, value.as_deref()), (i as u64, Some(&record_value(i)[..])));
    }
    assert_eq!(std::fs::metadata(segment).unwrap().len(), len_before_last);
    assert_eq!(p.append(&[NewRecord::unkeyed(b"after")]).unwrap().base_offset, 10);
}

#[test]
fn garbage_or_zeroes_after_the_last_batch_are_truncated() {
    for tail in [vec![0u8; 3000], (0..3000u32).map(|i| (i * 7919 % 251) as u8).collect()] {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let segment;
        let good_len;
        {
            let log = Log::open(options(dir.path(), &clock)).unwrap();
            let p = open_topic(&log, "t", TopicConfig::default());
            for i in 0..5 {
                p.append(&[NewRecord::unkeyed(&record_value(i))]).unwrap();
            }
            segment = segment_files(p.dir())[0].clone();
            good_len = p.stats().size_bytes;
        }
        let f = OpenOptions::new().write(true).open(&segment).unwrap();
        f.write_all_at(&tail, good_len).unwrap();
        drop(f);
        let log = Log::open(options(dir.path(), &clock)).unwrap();
        let p = open_topic(&log, "t", TopicConfig::default());
        assert_eq!(read_all(&p).len(), 5);
        assert_eq!(std::fs::metadata(&segment).unwrap().len(), good_len);
    }
}

#[test]
fn a_flipped_bit_in_a_sealed_segment_is_reported_on_read_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let partition_dir = write_and_close(dir.path(), &clock, small_segments(), 100);
    let first = segment_files(&partition_dir)[0].clone();
    flip_byte(&first, 200);
    let log = Log::open(options(dir.path(), &clock)).unwrap();
    let p = open_topic(&log, "t", small_segments());
    let err = p.read(0, 1000, 1 << 20).unwrap_err();
    match &err {
        LogError::Corrupt { path, position, .. } => {
            assert_eq!(path, &first);
            assert!(*position <= 200, "reported at the record holding byte 200, got {position}");
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    assert!(err.to_string().contains(&first.display().to_string()));
    // Records before the flip are served; the bad one never is.
    let before = p.read(0, 1, 1 << 20).unwrap();
    assert_eq!(before.records[0].value.as_deref(), Some(&record_value(0)[..]));
    // Later segments are unaffected.
    let later = p.read(90, 10, 1 << 20).unwrap();
    assert_eq!(later.records.len(), 10);
}

#[test]
fn a_flipped_bit_in_the_last_record_of_a_sealed_segment_fails_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let partition_dir = write_and_close(dir.path(), &clock, small_segments(), 100);
    let first = segment_files(&partition_dir)[0].clone();
    let len = std::fs::metadata(&first).unwrap().len();
    flip_byte(&first, len - 3);
    let err = Log::open(options(dir.path(), &clock)).unwrap_err();
    assert!(matches!(&err, LogError::Corrupt { path, .. } if *path == first), "{err}");
}

#[test]
fn a_flipped_bit_before_the_unsynced_window_is_reported_on_read_and_never_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let config = TopicConfig {
        batch_bytes_max: 4096,
        record_bytes_max: 1024,
        unsynced_bytes_max: 8192,
        segment_bytes_max: 4 << 20,
        ..TopicConfig::default()
    };
    // Enough records that byte 100 lies before the window recovery may truncate: the unsynced
    // bytes plus the preallocated zeros (whole pages) of an active segment.
    let partition_dir = write_and_close(dir.path(), &clock, config.clone(), 15_000);
    let segment = segment_files(&partition_dir)[0].clone();
    let len = std::fs::metadata(&segment).unwrap().len();
    assert!(len > 100 + 8192 + driftless_log::PREALLOCATE_BYTES + 4096, "{len}");
    flip_byte(&segment, 100);
    // Recovery scans only the tail window, so the open succeeds and truncates nothing...
    let log = Log::open(options(dir.path(), &clock)).unwrap();
    let p = open_topic(&log, "t", config);
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), len);
    assert_eq!(p.end_offset(), 15_000);
    // ...and the bad record is reported when read, with its segment and position.
    match p.read(0, 1000, 1 << 20).unwrap_err() {
        LogError::Corrupt { path, position, .. } => {
            assert_eq!(path, segment);
            assert!(position <= 100);
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    // Records past the index entry after the flip are still served.
    assert_eq!(p.read(500, 500, 1 << 20).unwrap().records.len(), 500);
}

#[test]
fn a_failed_fsync_poisons_the_partition_and_nothing_is_acknowledged_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let fs = FaultFs::new();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(AtomicBool::new(false));
    {
        let log =
            Log::open(options_with_fs(dir.path(), &clock, Arc::new(Arc::clone(&fs)))).unwrap();
        let p = open_topic(&log, "t", TopicConfig::default());
        // The 30th fdatasync of a segment fails once; a retry would "succeed", as Linux's does.
        fs.fail(FaultOp::SyncData, ".log", 30, false);
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let (p, acked, failed) = (Arc::clone(&p), Arc::clone(&acked), Arc::clone(&failed));
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let v = format!("w{w}-{i}");
                        match p.append(&[NewRecord::unkeyed(v.as_bytes())]) {
                            Ok(a) => {
                                assert!(
                                    !failed.load(Ordering::SeqCst) || a.last_offset < u64::MAX,
                                    "appends that began after the failure must not succeed"
                                );
                                acked.lock().unwrap().push((a.base_offset, v));
                            }
                            Err(LogError::Poisoned { .. }) => {
                                failed.store(true, Ordering::SeqCst);
                                // Every later append on this partition is refused.
                                let again = p.append(&[NewRecord::unkeyed(b"later")]);
                                assert!(matches!(again, Err(LogError::Poisoned { .. })));
                                return;
                            }
                            Err(other) => panic!("unexpected error {other}"),
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert!(failed.load(Ordering::SeqCst), "the injected fsync failure must surface");
        assert!(p.poisoned().is_some());
        let syncs = fs.sync_data_calls();
        assert!(p.append(&[NewRecord::unkeyed(b"x")]).is_err());
        assert_eq!(fs.sync_data_calls(), syncs, "a poisoned partition never fsyncs again");
        // Readers see only what was durable before the failure.
        let visible = read_all(&p);
        assert!(visible.len() >= acked.lock().unwrap().len());
        assert_eq!(p.end_offset(), visible.len() as u64);
    }
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    let log = Log::open(options(dir.path(), &clock)).unwrap();
    let p = open_topic(&log, "t", TopicConfig::default());
    let after = read_all(&p);
    for (offset, value) in &acked {
        let found = after.iter().find(|r| r.0 == *offset).map(|r| r.2.clone().unwrap());
        assert_eq!(found.as_deref(), Some(value.as_bytes()), "acknowledged offset {offset} lost");
    }
    assert!(p.poisoned().is_none(), "a restart clears the poison after recovery");
    p.append(&[NewRecord::unkeyed(b"healthy again")]).unwrap();
}

#[test]
fn a_failed_directory_fsync_on_segment_roll_poisons_the_partition() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let fs = FaultFs::new();
    let log = Log::open(options_with_fs(dir.path(), &clock, Arc::new(Arc::clone(&fs)))).unwrap();
    let p = open_topic(&log, "t", small_segments());
    fs.fail(FaultOp::SyncDir, "/0", 0, true);
    let v = vec![1u8; 1000];
    let mut results = Vec::new();
    for _ in 0..10 {
        results.push(p.append(&[NewRecord::unkeyed(&v)]));
    }
    let first_err = results.iter().position(Result::is_err).expect("the roll must fail");
    assert!(results[first_err..].iter().all(|r| matches!(r, Err(LogError::Poisoned { .. }))));
    assert!(p.poisoned().unwrap().contains("fsync partition directory"));
}

/// RELIABILITY.md test 2: a simulated power cut drops unsynced bytes, tears the last write and
/// forgets directory entries that were never fsynced. Over many seeds, nothing acknowledged is
/// lost, nothing is duplicated, and offsets stay dense.
#[test]
fn power_loss_at_random_moments_loses_no_acknowledged_record() {
    for seed in 0..25u64 {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let fs = FaultFs::new();
        let acked = Arc::new(Mutex::new(Vec::new()));
        {
            let log =
                Log::open(options_with_fs(dir.path(), &clock, Arc::new(Arc::clone(&fs)))).unwrap();
            let p = open_topic(&log, "t", small_segments());
            let writers: Vec<_> = (0..4u64)
                .map(|w| {
                    let (p, acked) = (Arc::clone(&p), Arc::clone(&acked));
                    std::thread::spawn(move || {
                        for i in 0u64.. {
                            let n = 1 + (i + w) % 3;
                            let values: Vec<Vec<u8>> = (0..n)
                                .map(|j| {
                                    format!(
                                        "w{w}-{i}-{j}-{}",
                                        "z".repeat(((i * 37 + j * 11) % 300) as usize)
                                    )
                                    .into_bytes()
                                })
                                .collect();
                            let batch: Vec<_> =
                                values.iter().map(|v| NewRecord::unkeyed(v)).collect();
                            match p.append(&batch) {
                                Ok(a) => {
                                    let mut acked = acked.lock().unwrap();
                                    for (j, v) in values.into_iter().enumerate() {
                                        acked.push((a.base_offset + j as u64, v));
                                    }
                                }
                                Err(_) => return,
                            }
                        }
                    })
                })
                .collect();
            std::thread::sleep(std::time::Duration::from_millis(5 + seed * 3 % 40));
            // On a loaded machine the writers may not have finished one append in that time; the
            // cut must come after at least one acknowledgement or the test checks nothing.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while acked.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            fs.freeze();
            for w in writers {
                w.join().unwrap();
            }
        }
        fs.power_loss(seed).unwrap();
        let log = Log::open(options(dir.path(), &clock)).unwrap();
        let p = open_topic(&log, "t", small_segments());
        let after = read_all(&p);
        for (i, row) in after.iter().enumerate() {
            assert_eq!(row.0, i as u64, "seed {seed}: offsets must be dense");
        }
        let acked = acked.lock().unwrap();
        assert!(!acked.is_empty(), "seed {seed}: nothing was acknowledged before the cut");
        for (offset, value) in acked.iter() {
            let found = after.get(*offset as usize).and_then(|r| r.2.as_deref());
            assert_eq!(found, Some(&value[..]), "seed {seed}: acknowledged offset {offset} lost");
        }
        let mut values: Vec<_> = after.iter().map(|r| r.2.clone()).collect();
        values.sort();
        values.dedup();
        assert_eq!(values.len(), after.len(), "seed {seed}: a record was duplicated");
    }
}

/// RELIABILITY.md test 13: whatever bytes a segment file holds, opening and reading the log
/// returns records or a clear error — never a panic, never a huge allocation.
#[test]
fn opening_segments_full_of_arbitrary_bytes_never_panics() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for case in 0..200 {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let partition_dir;
        {
            let log = Log::open(options(dir.path(), &clock)).unwrap();
            let p = open_topic(&log, "t", small_segments());
            for i in 0..(case % 20) {
                p.append(&[NewRecord::unkeyed(&record_value(i))]).unwrap();
            }
            partition_dir = p.dir().to_path_buf();
        }
        // Overwrite a random stretch of a random segment or index file with random bytes.
        let mut files: Vec<_> =
            std::fs::read_dir(&partition_dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let file = &files[(state % files.len() as u64) as usize];
        let len = std::fs::metadata(file).unwrap().len();
        let at = if len == 0 { 0 } else { state % len };
        let garbage: Vec<u8> = (0..(state % 97 + 1)).map(|i| (state >> (i % 56)) as u8).collect();
        let f = OpenOptions::new().write(true).open(file).unwrap();
        f.write_all_at(&garbage, at).unwrap();
        drop(f);
        match Log::open(options(dir.path(), &clock)) {
            Err(LogError::Corrupt { .. }) => {}
            Err(other) => panic!("case {case}: unexpected error {other}"),
            Ok(log) => {
                let p = open_topic(&log, "t", small_segments());
                let mut next = p.start_offset();
                while next < p.end_offset() {
                    match p.read(next, 100, 1 << 20) {
                        Ok(batch) => next = batch.next_offset.max(next + 1),
                        Err(LogError::Corrupt { .. }) => break,
                        Err(other) => panic!("case {case}: unexpected error {other}"),
                    }
                }
            }
        }
    }
}

/// The active segment runs ahead of its records with zeros; a crash leaves them on disk. They
/// must not read as a tear, must be cut off on open, and sealed segments must never carry them.
#[test]
fn preallocated_zeros_survive_neither_a_crash_nor_a_roll() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let config = TopicConfig {
        segment_bytes_max: 64 << 10,
        batch_bytes_max: 4096,
        record_bytes_max: 1024,
        unsynced_bytes_max: 8192,
        ..TopicConfig::default()
    };
    let partition_dir;
    let fs = FaultFs::new();
    {
        let log =
            Log::open(options_with_fs(dir.path(), &clock, Arc::new(Arc::clone(&fs)))).unwrap();
        let p = open_topic(&log, "t", config.clone());
        for i in 0..2000 {
            p.append(&[NewRecord::unkeyed(&record_value(i))]).unwrap();
        }
        partition_dir = p.dir().to_path_buf();
        let files = segment_files(&partition_dir);
        assert!(files.len() > 2, "the test needs rolled segments: {files:?}");
        let (active, sealed) = files.split_last().unwrap();
        let active_len = std::fs::metadata(active).unwrap().len();
        let records_len = p.stats().size_bytes
            - sealed.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum::<u64>();
        assert!(active_len > records_len, "active segment preallocated: {active_len}");
        // No clean close: the machine goes down and the zeros stay on disk.
        fs.freeze();
        drop(log);
        fs.power_loss(1).unwrap();
    }
    for f in segment_files(&partition_dir).iter().rev().skip(1) {
        let bytes = std::fs::read(f).unwrap();
        assert_ne!(bytes.last(), Some(&0), "sealed segment {f:?} ends in zeros");
    }
    let log = Log::open(options(dir.path(), &clock)).unwrap();
    let p = open_topic(&log, "t", config);
    assert_eq!(p.end_offset(), 2000);
    let active = segment_files(&partition_dir).pop().unwrap();
    let records_len = p.stats().size_bytes
        - segment_files(&partition_dir)
            .iter()
            .rev()
            .skip(1)
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum::<u64>();
    assert_eq!(std::fs::metadata(&active).unwrap().len(), records_len, "zeros cut on open");
    p.append(&[NewRecord::unkeyed(b"after")]).unwrap();
    let last = p.read(2000, 1, 1 << 20).unwrap();
    assert_eq!(last.records[0].value.as_deref(), Some(&b"after"[..]));
    let all = read_all(&p);
    assert_eq!(all.len(), 2001);
    for (i, (offset, _, value)) in all.iter().take(2000).enumerate() {
        assert_eq!((*offset, value.as_deref()), (i as u64, Some(&record_value(i)[..])));
    }
}

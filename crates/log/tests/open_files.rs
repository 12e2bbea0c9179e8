//! The log under an open-file budget far below its number of partitions: files are opened on
//! demand and closed when idle, and the data stays intact. One test per process would be ideal
//! (descriptors are counted process-wide); the tests here take a lock so they do not overlap.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};

use driftless_core::ManualClock;
use driftless_log::fs::{FaultFs, Fs};
use driftless_log::{Appended, Log, LogOptions, NewRecord, Topic, TopicConfig};
use support::*;

/// Serialises the tests of this file: they count the process's descriptors.
static FDS: Mutex<()> = Mutex::new(());

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Descriptors the log may hold beyond its budget: the lock file, directory fsyncs, files being
/// opened by the helper threads that open partitions, reads in progress, and the files of the
/// 32 partitions a "request" has written and not yet synced.
const SLACK_FDS: usize = 48;

fn budget_options(dir: &Path, budget: usize) -> LogOptions {
    LogOptions { open_files_max: budget, ..options(dir, &Arc::new(ManualClock::new(T0))) }
}

fn value(topic: u32, partition: u32, n: u32) -> Vec<u8> {
    format!("t{topic}/p{partition}/{n}").into_bytes()
}

/// One record to every partition of `topic`, the way the broker's produce writes many
/// partitions: a request's partitions (here 32) written first, then their fsyncs waited for
/// together. Until then their files are dirty and stay open, on top of the budget.
fn append_to_all(topic: &Topic, t: u32, n: u32) {
    for request in topic.partitions().chunks(32) {
        let written: Vec<(u32, Appended)> = request
            .iter()
            .map(|p| {
                (p.id(), p.append_unsynced(&[NewRecord::unkeyed(&value(t, p.id(), n))]).unwrap())
            })
            .collect();
        for outcome in topic.wait_appended_all(&written) {
            outcome.unwrap();
        }
    }
}

#[test]
fn thousands_of_partitions_work_under_an_open_file_budget_of_128() {
    let _serial = FDS.lock().unwrap_or_else(|e| e.into_inner());
    const BUDGET: usize = 128;
    const TOPICS: u32 = 2;
    const PARTITIONS: u32 = 1024;
    let dir = tempfile::tempdir().unwrap();
    let baseline = open_fds();
    let within_budget = |when: &str| {
        let held = open_fds().saturating_sub(baseline);
        assert!(held <= BUDGET + SLACK_FDS, "{when}: the log holds {held} descriptors");
    };
    let check = |log: &Log, written: u32| {
        for t in 0..TOPICS {
            let topic = log.topic(&name(&format!("t{t}"))).unwrap();
            for p in topic.partitions() {
                let got: Vec<Vec<u8>> = read_all(p).into_iter().map(|r| r.2.unwrap()).collect();
                let want: Vec<Vec<u8>> = (0..written).map(|n| value(t, p.id(), n)).collect();
                assert_eq!(got, want, "t{t}/{}", p.id());
            }
        }
    };
    // A handle held past the log's drop keeps it from recording a clean shutdown, so the first
    // reopen recovers every partition in full (the second one starts from a clean shutdown).
    let held = {
        let log = Log::open(budget_options(dir.path(), BUDGET)).unwrap();
        for t in 0..TOPICS {
            let config = TopicConfig { partitions: PARTITIONS, ..TopicConfig::default() };
            let topic = log.create_topic(&name(&format!("t{t}")), config).unwrap();
            within_budget("after creating a topic");
            append_to_all(&topic, t, 0);
            within_budget("after appending to every partition");
        }
        check(&log, 1);
        within_budget("after reading every partition");
        log.topic(&name("t0")).unwrap()
    };
    for round in 1..3 {
        let log = Log::open(budget_options(dir.path(), BUDGET)).unwrap();
        within_budget("after recovering every partition");
        check(&log, round);
        for t in 0..TOPICS {
            append_to_all(&log.topic(&name(&format!("t{t}"))).unwrap(), t, round);
        }
        within_budget("after appending again");
        check(&log, round + 1);
    }
    drop(held);
}

/// The hot path must not pay for the cache: a partition written and read over and over while
/// many others are touched now and then keeps its files open.
#[test]
fn a_hot_partition_never_reopens_its_files() {
    let _serial = FDS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let options = LogOptions {
        fs: Arc::new(Arc::clone(&fs)) as Arc<dyn Fs>,
        ..budget_options(dir.path(), 32)
    };
    let log = Log::open(options).unwrap();
    let config =
        TopicConfig { partitions: 200, index_interval_bytes: 64, ..TopicConfig::default() };
    let topic = log.create_topic(&name("many"), config).unwrap();
    let hot = Arc::clone(topic.partition(0).unwrap());
    hot.append(&[NewRecord::unkeyed(b"warm")]).unwrap();
    let mut hot_opens = 0;
    for i in 0..400u32 {
        // Every other round, one of the idle partitions is touched (and its files opened).
        if i % 2 == 0 {
            let idle = topic.partition(1 + (i / 2) % 199).unwrap();
            idle.append(&[NewRecord::unkeyed(b"idle")]).unwrap();
        }
        let before = fs.opens();
        hot.append(&[NewRecord::unkeyed(format!("hot {i}").as_bytes())]).unwrap();
        hot.read(hot.end_offset() - 1, 1, 1 << 20).unwrap();
        hot_opens += fs.opens() - before;
    }
    assert_eq!(hot_opens, 0, "the hot partition reopened its files");
    assert_eq!(read_all(&hot).len(), 401);
}

/// Opening after a clean shutdown fdatasyncs nothing (every segment was synced at close); after
/// an unclean one, every active segment, since the page cache may hold bytes the disk lacks.
#[test]
fn a_clean_shutdown_spares_the_next_start_a_fsync_per_partition() {
    let _serial = FDS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let open = |fs: &Arc<FaultFs>| {
        let options = LogOptions {
            fs: Arc::new(Arc::clone(fs)) as Arc<dyn Fs>,
            ..budget_options(dir.path(), 64)
        };
        Log::open(options).unwrap()
    };
    let held = {
        let log = open(&FaultFs::new());
        let config = TopicConfig { partitions: 20, ..TopicConfig::default() };
        let topic = log.create_topic(&name("t"), config).unwrap();
        for p in topic.partitions() {
            p.append(&[NewRecord::unkeyed(b"v")]).unwrap();
        }
        topic
    };
    // Unclean: a handle outlived the log, so it could have written after the close.
    let fs = FaultFs::new();
    let log = open(&fs);
    assert!(fs.sync_data_calls() >= 20, "{} fdatasyncs", fs.sync_data_calls());
    drop(held);
    drop(log);
    assert!(dir.path().join("CLEAN").exists());
    let fs = FaultFs::new();
    let log = open(&fs);
    assert_eq!(fs.sync_data_calls(), 0);
    assert!(!dir.path().join("CLEAN").exists(), "the marker outlived the start");
    for p in log.topic(&name("t")).unwrap().partitions() {
        assert_eq!(read_all(p).len(), 1);
    }
}

/// The fsyncgate rule, end to end: an `interval_ms` partition's unsynced writes sit through
/// enough other files to evict everything clean several times over; its flush must still fsync
/// them through the descriptor they were written with (an evicted one would leave nothing to
/// sync), so they survive a power cut.
#[test]
fn unsynced_writes_outlive_eviction_and_their_flush_makes_them_survive_a_power_cut() {
    use driftless_log::Durability;
    let _serial = FDS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    {
        let options = LogOptions {
            fs: Arc::new(Arc::clone(&fs)) as Arc<dyn Fs>,
            ..budget_options(dir.path(), 16)
        };
        let log = Log::open(options).unwrap();
        let lazy =
            TopicConfig { durability: Durability::IntervalMs(3_600_000), ..TopicConfig::default() };
        let lazy = log.create_topic(&name("lazy"), lazy).unwrap();
        let p = Arc::clone(lazy.partition(0).unwrap());
        for i in 0..10u32 {
            p.append(&[NewRecord::unkeyed(format!("unsynced {i}").as_bytes())]).unwrap();
        }
        let busy = TopicConfig { partitions: 100, ..TopicConfig::default() };
        let busy = log.create_topic(&name("busy"), busy).unwrap();
        for q in busy.partitions() {
            q.append(&[NewRecord::unkeyed(b"b")]).unwrap();
            q.read(0, 1, 1 << 10).unwrap();
        }
        let syncs = fs.sync_data_calls();
        p.flush().unwrap();
        assert!(fs.sync_data_calls() > syncs, "the flush found nothing to fsync");
        fs.freeze();
    }
    fs.power_loss(7).unwrap();
    let log = Log::open(budget_options(dir.path(), 16)).unwrap();
    let p = Arc::clone(log.topic(&name("lazy")).unwrap().partition(0).unwrap());
    assert_eq!(read_all(&p).len(), 10, "flushed records were lost");
}

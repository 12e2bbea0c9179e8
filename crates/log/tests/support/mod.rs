//! Helpers shared by the log's integration tests: a log in a temp directory with a manual clock.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
#![allow(dead_code)] // each test file uses a different subset

use std::path::Path;
use std::sync::Arc;

use driftless_core::{ManualClock, TopicName};
use driftless_log::fs::Fs;
use driftless_log::{Log, LogOptions, Partition, TopicConfig};

pub const T0: i64 = 1_700_000_000_000;

pub fn name(s: &str) -> TopicName {
    TopicName::new(s).unwrap()
}

pub fn options(dir: &Path, clock: &Arc<ManualClock>) -> LogOptions {
    LogOptions {
        maintenance_interval_ms: None,
        clock: Arc::clone(clock) as _,
        ..LogOptions::new(dir)
    }
}

pub fn options_with_fs(dir: &Path, clock: &Arc<ManualClock>, fs: Arc<dyn Fs>) -> LogOptions {
    LogOptions { fs, ..options(dir, clock) }
}

/// Small segments so tests cross segment boundaries quickly.
pub fn small_segments() -> TopicConfig {
    TopicConfig {
        record_bytes_max: 1024,
        batch_bytes_max: 4096,
        segment_bytes_max: 4096,
        unsynced_bytes_max: 8192,
        index_interval_bytes: 256,
        ..TopicConfig::default()
    }
}

pub fn open_topic(log: &Log, topic: &str, config: TopicConfig) -> Arc<Partition> {
    let t = match log.topic(&name(topic)) {
        Some(t) => t,
        None => log.create_topic(&name(topic), config).unwrap(),
    };
    Arc::clone(t.partition(0).unwrap())
}

/// A record as (offset, key, value); `None` value is a tombstone.
pub type Row = (u64, Option<Vec<u8>>, Option<Vec<u8>>);

/// Every visible record of the partition.
pub fn read_all(p: &Partition) -> Vec<Row> {
    let mut out = Vec::new();
    let mut next = p.start_offset();
    loop {
        let batch = p.read(next, 1000, 1 << 20).unwrap();
        if batch.records.is_empty() && batch.next_offset == next {
            return out;
        }
        for r in batch.records {
            out.push((r.offset, r.key.map(|k| k.to_vec()), r.value.map(|v| v.to_vec())));
        }
        next = batch.next_offset;
    }
}

/// The segment files of a partition, oldest first.
pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

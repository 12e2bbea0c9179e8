//! Crash test: SIGKILL a process appending from 8 threads, at random moments, over 20 cycles.
//!
//! The child is this same test binary, re-run with `DRIFTLESS_CRASH_CHILD_DIR` set: it appends
//! batches from 8 writer threads and prints one `ack` line per acknowledged batch. The parent
//! kills it with SIGKILL at a random moment, then opens the log itself and checks the history:
//! every acknowledged record is present at its acknowledged offset, nothing is duplicated,
//! offsets are dense, every record passes its CRC, and each writer's records are in order.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftless_core::TopicName;
use driftless_log::{Log, LogOptions, NewRecord, TopicConfig};
use driftless_testkit::CrashChild;
use rand::Rng;

const CHILD_ENV: &str = "DRIFTLESS_CRASH_CHILD_DIR";
const TEST_NAME: &str =
    "kill9_during_concurrent_appends_loses_nothing_acknowledged_and_duplicates_nothing";
const WRITERS: u32 = 8;
const CYCLES: usize = 20;

fn topic() -> TopicName {
    TopicName::new("crash").unwrap()
}

fn config() -> TopicConfig {
    // Small segments so kills also land during segment rolls.
    TopicConfig {
        record_bytes_max: 4096,
        batch_bytes_max: 32 << 10,
        segment_bytes_max: 256 << 10,
        unsynced_bytes_max: 1 << 20,
        ..TopicConfig::default()
    }
}

fn open(dir: &Path) -> Log {
    Log::open(LogOptions { maintenance_interval_ms: None, ..LogOptions::new(dir) }).unwrap()
}

/// Parses a value `w<writer>:<seq>:<padding>`.
fn parse(value: &[u8]) -> (u32, u64) {
    let s = std::str::from_utf8(value).expect("value is UTF-8");
    let mut parts = s.splitn(3, ':');
    let w = parts.next().unwrap().trim_start_matches('w').parse().unwrap();
    let seq = parts.next().unwrap().parse().unwrap();
    (w, seq)
}

/// Everything in the log, checked for density and CRC (a corrupt record fails the read).
fn history(dir: &Path) -> Vec<(u64, u32, u64)> {
    let log = open(dir);
    let Some(t) = log.topic(&topic()) else { return Vec::new() };
    let p = t.partition(0).unwrap();
    assert_eq!(p.start_offset(), 0);
    let mut out = Vec::new();
    let mut next = 0;
    while next < p.end_offset() {
        let batch = p.read(next, 10_000, 4 << 20).unwrap();
        for r in &batch.records {
            assert_eq!(r.offset, next, "offsets must be dense");
            let (w, seq) = parse(r.value.as_deref().unwrap());
            out.push((r.offset, w, seq));
            next += 1;
        }
    }
    out
}

fn child(dir: &str) -> ! {
    let log = Arc::new(open(Path::new(dir)));
    let t = match log.topic(&topic()) {
        Some(t) => t,
        None => log.create_topic(&topic(), config()).unwrap(),
    };
    let p = Arc::clone(t.partition(0).unwrap());
    // Resume each writer after the highest sequence present, acknowledged or not.
    let mut next_seq: HashMap<u32, u64> = HashMap::new();
    for (_, w, seq) in history_in(&p) {
        let e = next_seq.entry(w).or_default();
        *e = (*e).max(seq + 1);
    }
    let threads: Vec<_> = (0..WRITERS)
        .map(|w| {
            let p = Arc::clone(&p);
            let mut seq = next_seq.get(&w).copied().unwrap_or(0);
            std::thread::spawn(move || {
                let mut rng = rand::rng();
                loop {
                    let n = rng.random_range(1..=5u64);
                    let values: Vec<Vec<u8>> = (0..n)
                        .map(|i| {
                            let pad = "x".repeat(rng.random_range(0..600));
                            format!("w{w}:{}:{pad}", seq + i).into_bytes()
                        })
                        .collect();
                    let batch: Vec<_> = values.iter().map(|v| NewRecord::unkeyed(v)).collect();
                    let a = p.append(&batch).unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {w} {seq} {n} {}", a.base_offset).unwrap();
                    out.flush().unwrap();
                    seq += n;
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    unreachable!("writers loop until killed");
}

fn history_in(p: &driftless_log::Partition) -> Vec<(u64, u32, u64)> {
    let mut out = Vec::new();
    let mut next = p.start_offset();
    while next < p.end_offset() {
        let batch = p.read(next, 10_000, 4 << 20).unwrap();
        for r in &batch.records {
            let (w, seq) = parse(r.value.as_deref().unwrap());
            out.push((r.offset, w, seq));
        }
        next = batch.next_offset;
    }
    out
}

#[test]
fn kill9_during_concurrent_appends_loses_nothing_acknowledged_and_duplicates_nothing() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rng();
    // (writer, seq) -> acknowledged offset, over all cycles.
    let mut acked: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    for cycle in 0..CYCLES {
        let child = CrashChild::spawn(TEST_NAME, CHILD_ENV, dir.path()).unwrap();
        let is_ack = |l: &String| l.starts_with("ack ");
        // Wait for the first acknowledgement, then let it run for a random while.
        let first = std::iter::from_fn(|| child.next_line(Duration::from_secs(60))).find(is_ack);
        record_ack(&mut acked, &first.expect("the child acknowledged nothing within 60 s"));
        let deadline = Instant::now() + Duration::from_millis(rng.random_range(1..400));
        while Instant::now() < deadline {
            if let Some(line) = child.next_line(Duration::from_millis(1)).filter(is_ack) {
                record_ack(&mut acked, &line);
            }
        }
        for line in child.kill().into_iter().filter(is_ack) {
            record_ack(&mut acked, &line);
        }

        let history = history(dir.path());
        let mut seen: HashMap<(u32, u64), u64> = HashMap::new();
        let mut last_seq: HashMap<u32, u64> = HashMap::new();
        for &(offset, w, seq) in &history {
            assert!(
                seen.insert((w, seq), offset).is_none(),
                "cycle {cycle}: w{w}:{seq} duplicated"
            );
            if let Some(prev) = last_seq.insert(w, seq) {
                assert!(seq > prev, "cycle {cycle}: writer {w} out of order");
            }
        }
        for (&(w, seq), &offset) in &acked {
            assert_eq!(
                seen.get(&(w, seq)),
                Some(&offset),
                "cycle {cycle}: acknowledged w{w}:{seq} at offset {offset} lost or moved"
            );
        }
    }
    assert!(acked.len() > 1000, "the child should have acknowledged many records: {}", acked.len());
}

/// Records the records of one `ack <writer> <first seq> <count> <base offset>` line.
fn record_ack(acked: &mut BTreeMap<(u32, u64), u64>, line: &str) {
    let f: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap()).collect();
    let (w, seq, n, base) = (f[0] as u32, f[1], f[2], f[3]);
    for i in 0..n {
        acked.insert((w, seq + i), base + i);
    }
}

//! Model test: the log against a simple in-memory model, under proptest.
//!
//! The model is a map from offset to record. Appends, reads, time lookups, restarts and torn
//! tails must match it exactly. Compaction and retention may remove records at the log's
//! discretion (they only touch sealed segments), so for those the test checks that every removed
//! record was allowed to go — superseded by a newer record of its key, an expired tombstone, or
//! older than the retention — and that the newest value of every key survived; then the model
//! follows the log.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use driftless_core::{Clock, ManualClock};
use driftless_log::{Cleanup, Log, LogError, NewRecord, Partition, TopicConfig};
use proptest::prelude::*;
use support::*;

const RETENTION_MS: u64 = 300_000;
const TOMBSTONE_MS: u64 = 60_000;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<(Option<u8>, Option<Vec<u8>>)>),
    Read { from_back: u64, max: usize },
    ReadByTime { back_ms: i64 },
    Advance(i64),
    Restart,
    TornTail(Vec<u8>),
    Compact,
    Retention,
}

fn op() -> impl Strategy<Value = Op> {
    let record = (
        prop::option::weighted(0.8, 0u8..6),
        prop::option::weighted(0.9, prop::collection::vec(any::<u8>(), 0..300)),
    );
    prop_oneof![
        8 => prop::collection::vec(record, 1..6).prop_map(Op::Append),
        3 => (0u64..40, 1usize..30).prop_map(|(from_back, max)| Op::Read { from_back, max }),
        1 => (0i64..400_000).prop_map(|back_ms| Op::ReadByTime { back_ms }),
        2 => (0i64..120_000).prop_map(Op::Advance),
        1 => Just(Op::Restart),
        1 => prop::collection::vec(any::<u8>(), 1..200).prop_map(Op::TornTail),
        1 => Just(Op::Compact),
        1 => Just(Op::Retention),
    ]
}

fn config() -> TopicConfig {
    TopicConfig {
        cleanup: Cleanup::Compact,
        retention_ms: Some(RETENTION_MS),
        tombstone_retention_ms: TOMBSTONE_MS,
        record_bytes_max: 512,
        batch_bytes_max: 4096,
        segment_bytes_max: 4096,
        unsynced_bytes_max: 8192,
        index_interval_bytes: 128,
        ..TopicConfig::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelRecord {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    ts: i64,
}

type Model = BTreeMap<u64, ModelRecord>;

fn log_contents(p: &Partition) -> Model {
    let mut out = Model::new();
    let mut next = p.start_offset();
    loop {
        let batch = p.read(next, 64, 1 << 16).unwrap();
        if batch.records.is_empty() && batch.next_offset == next {
            return out;
        }
        for r in batch.records {
            let rec = ModelRecord {
                key: r.key.map(|k| k.to_vec()),
                value: r.value.map(|v| v.to_vec()),
                ts: r.timestamp_ms,
            };
            out.insert(r.offset, rec);
        }
        next = batch.next_offset;
    }
}

struct Harness {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    log: Option<Log>,
    model: Model,
    next_offset: u64,
    last_ts: i64,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let log = Log::open(options(dir.path(), &clock)).unwrap();
        log.create_topic(&name("m"), config()).unwrap();
        Self { dir, clock, log: Some(log), model: Model::new(), next_offset: 0, last_ts: i64::MIN }
    }

    fn p(&self) -> Arc<Partition> {
        let log = self.log.as_ref().unwrap();
        Arc::clone(log.topic(&name("m")).unwrap().partition(0).unwrap())
    }

    fn restart(&mut self, tail: Option<&[u8]>) {
        let dir = self.p().dir().to_path_buf();
        self.log = None;
        if let Some(garbage) = tail {
            let active = segment_files(&dir).pop().unwrap();
            let f = OpenOptions::new().write(true).open(&active).unwrap();
            let len = f.metadata().unwrap().len();
            f.write_all_at(garbage, len).unwrap();
        }
        self.log = Some(Log::open(options(self.dir.path(), &self.clock)).unwrap());
        assert_eq!(log_contents(&self.p()), self.model, "contents differ after restart");
        assert_eq!(self.p().end_offset(), self.next_offset);
    }

    fn apply(&mut self, op: &Op) {
        let p = self.p();
        match op {
            Op::Append(records) => {
                let batch: Vec<NewRecord<'_>> = records
                    .iter()
                    .map(|(k, v)| NewRecord {
                        key: k.as_ref().map(std::slice::from_ref),
                        value: v.as_deref(),
                    })
                    .collect();
                let a = p.append(&batch).unwrap();
                assert_eq!(a.base_offset, self.next_offset);
                assert_eq!(a.last_offset, self.next_offset + records.len() as u64 - 1);
                assert_eq!(a.timestamp_ms, self.clock.now_ms().max(self.last_ts));
                self.last_ts = a.timestamp_ms;
                for (i, (k, v)) in records.iter().enumerate() {
                    let rec = ModelRecord {
                        key: k.map(|k| vec![k]),
                        value: v.clone(),
                        ts: a.timestamp_ms,
                    };
                    self.model.insert(a.base_offset + i as u64, rec);
                }
                self.next_offset = a.last_offset + 1;
            }
            Op::Read { from_back, max } => {
                let from = self.next_offset.saturating_sub(*from_back);
                let start = self.model.keys().next().copied().unwrap_or(self.next_offset);
                match p.read(from, *max, usize::MAX) {
                    Err(LogError::OffsetTrimmed { log_start, .. }) => {
                        assert!(from < log_start && log_start == p.start_offset());
                        assert!(self.model.range(..log_start).next().is_none());
                    }
                    Err(e) => panic!("read failed: {e}"),
                    Ok(batch) => {
                        assert!(from >= p.start_offset() || from >= start);
                        let expected: Vec<u64> =
                            self.model.range(from..).take(*max).map(|(o, _)| *o).collect();
                        let got: Vec<u64> = batch.records.iter().map(|r| r.offset).collect();
                        assert_eq!(got, expected, "read({from}, {max})");
                        for r in &batch.records {
                            let m = &self.model[&r.offset];
                            assert_eq!(r.key.as_deref(), m.key.as_deref());
                            assert_eq!(r.value.as_deref(), m.value.as_deref());
                            assert_eq!(r.timestamp_ms, m.ts);
                        }
                    }
                }
            }
            Op::ReadByTime { back_ms } => {
                let t = self.clock.now_ms() - back_ms;
                let expected = self.model.iter().find(|(_, r)| r.ts >= t).map(|(o, _)| *o);
                assert_eq!(p.offset_for_time(t).unwrap(), expected, "offset_for_time({t})");
            }
            Op::Advance(ms) => self.clock.advance_ms(*ms),
            Op::Restart => self.restart(None),
            Op::TornTail(garbage) => self.restart(Some(garbage)),
            Op::Compact => {
                p.compact().unwrap();
                let now = self.clock.now_ms();
                let after = log_contents(&p);
                let mut newest: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
                for (o, r) in &self.model {
                    if let Some(k) = &r.key {
                        newest.insert(k.clone(), *o);
                    }
                }
                for (o, r) in &self.model {
                    match after.get(o) {
                        Some(kept) => assert_eq!(kept, r, "compaction changed offset {o}"),
                        None => {
                            let k =
                                r.key.as_ref().expect("a record without a key was compacted away");
                            let superseded = newest[k] > *o;
                            let expired_tombstone = r.value.is_none()
                                && r.ts < now - TOMBSTONE_MS as i64
                                && newest[k] == *o;
                            assert!(
                                superseded || expired_tombstone,
                                "offset {o} removed without cause"
                            );
                        }
                    }
                }
                for (k, o) in &newest {
                    let r = &self.model[o];
                    let expired = r.value.is_none() && r.ts < now - TOMBSTONE_MS as i64;
                    assert!(expired || after.contains_key(o), "newest value of key {k:?} lost");
                }
                assert!(after.keys().all(|o| self.model.contains_key(o)));
                self.model = after;
            }
            Op::Retention => {
                p.enforce_retention().unwrap();
                let now = self.clock.now_ms();
                let start = p.start_offset();
                let after = log_contents(&p);
                for (o, r) in &self.model {
                    if *o < start {
                        assert!(r.ts < now - RETENTION_MS as i64, "offset {o} deleted too young");
                    } else {
                        assert_eq!(after.get(o), Some(r), "retention removed {o} past the start");
                    }
                }
                self.model = after;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn the_log_behaves_like_its_model(ops in prop::collection::vec(op(), 1..40)) {
        let mut h = Harness::new();
        for op in &ops {
            h.apply(op);
        }
        h.restart(None);
    }
}

//! Topics as the broker sees them: a log topic plus broker settings (the deduplication window),
//! and idempotent produce.
//!
//! Idempotent produce: every topic keeps the ids appended within its `dedup_window_ms` (at most
//! `dedup_ids_max` of them). An event whose id is there is not appended again; the caller gets the
//! original partition and offset with `duplicate = true`. An id being appended right now is
//! marked pending, and a concurrent request with the same id waits for it instead of appending a
//! second copy. Invariant: an id is marked done only after its append is durable; a failed append
//! removes its pending marks. On open the window is rebuilt from the log.
//!
//! Batch atomicity: a request's events are checked against every limit that can be checked
//! before anything is written (each event's stored size against `record_bytes_max`, each
//! partition's batch against `batch_bytes_max`, a poisoned partition), so a refusal leaves
//! nothing durable and a retry is not a duplicate. Each partition's share is one log batch,
//! atomic across crashes. What cannot be checked ahead (an IO error, a full disk, a partition
//! poisoned by another request meanwhile) can fail one partition after others were written:
//! then the answer is [`BrokerError::PartiallyDurable`], which lists exactly which events are
//! durable (index, partition, offset) and which are not.
//!
//! Every number of a [`TopicSpec`] comes from outside and is range-checked in [`log_config`]
//! before any arithmetic uses it; an out-of-range value is refused naming the field, the value
//! and the allowed range.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use driftless_core::{partition_for_key, Clock, RawEvent};
use driftless_log::{Durability, NewRecord, Topic};
use serde::{Deserialize, Serialize};

use crate::error::{BrokerError, Result};

/// Settings of a topic, as given when creating it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicSpec {
    /// Number of partitions, 1 to 1024.
    pub partitions: u32,
    /// Delete events older than this, 1 ms to 100 years; `None` keeps them.
    pub retention_ms: Option<u64>,
    /// Keep at most this many bytes per partition, 1 to 2^60; `None`: no limit.
    pub retention_bytes: Option<u64>,
    /// Keep only the newest event per placement key.
    pub compact: bool,
    /// How long a re-sent event id is recognised as a duplicate, 0 to 7 days.
    pub dedup_window_ms: u64,
    /// When a produce is acknowledged; `always` (fsynced) unless you accept losing data.
    pub durability: Durability,
    /// The principal that owns the topic: once the server authenticates requests, only it may
    /// produce to the topic. Checked like a topic name. Stored with the topic's settings (here,
    /// in `__topics`, and in the log's `topic.json`); absent from settings written before owners
    /// existed, which load as unowned. Left out when absent, so an unowned topic's settings read
    /// exactly as before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl Default for TopicSpec {
    fn default() -> Self {
        Self {
            partitions: 1,
            retention_ms: None,
            retention_bytes: None,
            compact: false,
            dedup_window_ms: 120_000,
            durability: Durability::Always,
            owner: None,
        }
    }
}

/// Where one produced event landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Produced {
    /// The event id.
    pub id: String,
    /// Its partition.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// Whether it had already been appended (inside the dedup window) and was not appended again.
    pub duplicate: bool,
}

/// An event of a produce request that is durable although the request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableEvent {
    /// Position of the event in the request, from 0.
    pub index: usize,
    /// The event id.
    pub id: String,
    /// Its partition.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// Whether it was already stored before this request (inside the dedup window).
    pub duplicate: bool,
}

/// An event of a produce request that is not known to be durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotDurableEvent {
    /// Position of the event in the request, from 0.
    pub index: usize,
    /// The event id.
    pub id: String,
    /// The partition it was placed on.
    pub partition: u32,
    /// Why its append failed.
    pub error: String,
}

/// What a produce that failed part-way left behind (see [`BrokerError::PartiallyDurable`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "{} of the request's {} events are durable and {} are not ({cause}); the answer lists which: \
     resend those not durable (a resend of an event that did survive is answered as a duplicate)",
    durable.len(), durable.len() + not_durable.len(), not_durable.len()
)]
pub struct PartialProduce {
    /// The topic.
    pub topic: String,
    /// Events that are durable, by index.
    pub durable: Vec<DurableEvent>,
    /// Events that are not, by index. A failed fsync leaves it open whether a crash-recovered
    /// partition keeps them; a resend is safe either way, since ids are deduplicated.
    pub not_durable: Vec<NotDurableEvent>,
    /// The first failure (it decides the answer's status).
    pub cause: BrokerError,
}

/// (index in the request, offset) of each event appended to one partition.
type Placed = Vec<(usize, u64)>;

#[derive(Debug, Clone, Copy)]
enum Mark {
    Pending,
    Done { partition: u32, offset: u64 },
}

/// Ids are hashed with foldhash, seeded per map: SipHash (std's default) made hashing, and
/// rehashing as the window grows, about a tenth of the CPU of a produce-heavy load.
type IdMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
struct Dedup {
    ids: IdMap<String, Mark>,
    /// Done ids in append order, with their append time, for expiry.
    order: VecDeque<(i64, String)>,
}

/// A topic with its broker-level state.
#[derive(Debug)]
pub(crate) struct TopicState {
    pub topic: Arc<Topic>,
    pub spec: TopicSpec,
    dedup: Mutex<Dedup>,
    dedup_changed: Condvar,
}

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

fn lock(m: &Mutex<Dedup>) -> MutexGuard<'_, Dedup> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TopicState {
    /// Wraps a log topic and rebuilds its dedup window from the log.
    pub fn open(topic: Arc<Topic>, spec: TopicSpec, now_ms: i64, ids_max: usize) -> Result<Self> {
        let mut dedup = Dedup::default();
        let since = now_ms.saturating_sub(window_ms(&spec));
        for p in topic.partitions() {
            let Some(mut next) = p.offset_for_time(since)? else { continue };
            while next < p.end_offset() {
                let batch = p.read(next, 10_000, 8 << 20)?;
                for r in &batch.records {
                    if let Some(Ok(e)) = r.value.as_deref().map(serde_json::from_slice::<IdOnly>) {
                        dedup.ids.insert(
                            e.id.clone(),
                            Mark::Done { partition: p.id(), offset: r.offset },
                        );
                        dedup.order.push_back((r.timestamp_ms, e.id));
                    }
                }
                next = batch.next_offset;
            }
        }
        let state = Self {
            topic,
            spec,
            dedup: Mutex::new(Dedup::default()),
            dedup_changed: Condvar::new(),
        };
        // Partitions were read one after another, so restore time order before capping.
        dedup.order.make_contiguous().sort_by_key(|(at, _)| *at);
        state.expire(&mut dedup, now_ms, ids_max);
        dedup.ids.shrink_to_fit();
        *lock(&state.dedup) = dedup;
        Ok(state)
    }

    fn expire(&self, d: &mut Dedup, now_ms: i64, ids_max: usize) {
        let cutoff = now_ms.saturating_sub(window_ms(&self.spec));
        while let Some((at, _)) = d.order.front() {
            if *at >= cutoff && d.order.len() <= ids_max {
                break;
            }
            if let Some((_, id)) = d.order.pop_front() {
                if matches!(d.ids.get(&id), Some(Mark::Done { .. })) {
                    d.ids.remove(&id);
                }
            }
        }
    }

    /// Appends `events` (validated by construction), skipping ids seen inside the dedup window.
    pub fn produce(
        &self,
        events: &[RawEvent],
        clock: &dyn Clock,
        ids_max: usize,
    ) -> Result<Vec<Produced>> {
        let partitions = self.topic.config().partitions;
        let mut results: Vec<Option<Produced>> = vec![None; events.len()];
        // Indexes of events this request appends, and of in-request repeats of them.
        let mut mine: Vec<usize> = Vec::new();
        let mut repeats: Vec<(usize, usize)> = Vec::new();
        {
            let mut d = lock(&self.dedup);
            self.expire(&mut d, clock.now_ms(), ids_max);
            let mut first_in_request: IdMap<&str, usize> = IdMap::default();
            for (i, e) in events.iter().enumerate() {
                if let Some(&first) = first_in_request.get(e.id()) {
                    repeats.push((i, first));
                    continue;
                }
                loop {
                    match d.ids.get(e.id()) {
                        Some(Mark::Done { partition, offset }) => {
                            results[i] = Some(Produced {
                                id: e.id().to_string(),
                                partition: *partition,
                                offset: *offset,
                                duplicate: true,
                            });
                            break;
                        }
                        Some(Mark::Pending) => {
                            // Another request is appending this id: wait for its outcome.
                            d = self.dedup_changed.wait(d).unwrap_or_else(|e| e.into_inner());
                        }
                        None => {
                            d.ids.insert(e.id().to_string(), Mark::Pending);
                            first_in_request.insert(e.id(), i);
                            mine.push(i);
                            break;
                        }
                    }
                }
            }
        }
        // From here until the marks are settled below, an unwinding panic takes them back.
        let mut guard = PendingGuard { state: self, events, mine: &mine, settled: false };
        // Group by partition, keeping request order inside each partition (per-key order).
        let mut by_partition: Vec<Vec<usize>> = vec![Vec::new(); partitions as usize];
        for &i in &mine {
            let p = partition_for_key(events[i].placement_key().as_bytes(), partitions);
            by_partition[p as usize].push(i);
        }
        // Every limit, for every partition, before anything is written: a refusal must leave
        // nothing durable (a retry of the request must not find half of it as duplicates).
        if let Err(e) = self.check_limits(events, &mine, &by_partition) {
            guard.settled = true;
            self.release_pending(events, &mine);
            return Err(e);
        }
        // Write every partition's batch first, then wait for all of them at once: the log's
        // helper threads overlap the partitions' fsyncs (and join other requests' group fsyncs),
        // so one request pays about one fsync latency, not one per partition.
        let written: Vec<(u32, Result<driftless_log::Appended>)> = (0..partitions)
            .filter(|&p| !by_partition[p as usize].is_empty())
            .map(|p| {
                let records: Vec<NewRecord<'_>> =
                    by_partition[p as usize].iter().map(|&i| record(&events[i])).collect();
                let appended = self
                    .topic
                    .partition(p)
                    .and_then(|partition| partition.append_unsynced(&records));
                (p, appended.map_err(BrokerError::from))
            })
            .collect();
        let to_wait: Vec<(u32, driftless_log::Appended)> =
            written.iter().filter_map(|(p, a)| Some((*p, *a.as_ref().ok()?))).collect();
        let mut waited = self.topic.wait_appended_all(&to_wait).into_iter();
        let outcomes: Vec<(u32, Result<Placed>)> = written
            .into_iter()
            .map(|(p, appended)| {
                let placed = appended.and_then(|a| {
                    waited
                        .next()
                        .unwrap_or_else(|| unreachable!("one outcome per batch waited on"))?;
                    Ok(by_partition[p as usize]
                        .iter()
                        .zip(a.base_offset..)
                        .map(|(&i, offset)| (i, offset))
                        .collect())
                });
                (p, placed)
            })
            .collect();
        let now = clock.now_ms();
        // (index, partition, error) of every event whose partition failed.
        let mut failed: Vec<(usize, u32, String)> = Vec::new();
        let mut first_error = None;
        {
            let mut d = lock(&self.dedup);
            for (p, outcome) in outcomes {
                match outcome {
                    Ok(placed) => {
                        for (i, offset) in placed {
                            let id = events[i].id().to_string();
                            let done = Mark::Done { partition: p, offset };
                            // The id went in as `Pending` above: update it in place.
                            match d.ids.get_mut(id.as_str()) {
                                Some(mark) => *mark = done,
                                None => {
                                    d.ids.insert(id.clone(), done);
                                }
                            }
                            d.order.push_back((now, id.clone()));
                            results[i] =
                                Some(Produced { id, partition: p, offset, duplicate: false });
                        }
                    }
                    Err(e) => {
                        let text = e.to_string();
                        for &i in &by_partition[p as usize] {
                            d.ids.remove(events[i].id());
                            failed.push((i, p, text.clone()));
                        }
                        first_error.get_or_insert(e);
                    }
                }
            }
            drop(d);
            guard.settled = true;
            self.dedup_changed.notify_all();
        }
        drop(guard);
        for (i, first) in repeats {
            results[i] = results[first].clone().map(|r| Produced { duplicate: true, ..r });
            if results[i].is_none() {
                if let Some(f) = failed.iter().find(|f| f.0 == first).cloned() {
                    failed.push((i, f.1, f.2));
                }
            }
        }
        if let Some(cause) = first_error {
            return Err(self.partial(events, results, failed, cause));
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| unreachable!("every event has a result")))
            .collect())
    }

    /// The error of a produce whose partition(s) failed: the failure itself when nothing of the
    /// request is durable, else the list of what is and what is not.
    fn partial(
        &self,
        events: &[RawEvent],
        results: Vec<Option<Produced>>,
        mut failed: Vec<(usize, u32, String)>,
        cause: BrokerError,
    ) -> BrokerError {
        let durable: Vec<DurableEvent> = results
            .into_iter()
            .enumerate()
            .filter_map(|(index, r)| {
                let r = r?;
                Some(DurableEvent {
                    index,
                    id: r.id,
                    partition: r.partition,
                    offset: r.offset,
                    duplicate: r.duplicate,
                })
            })
            .collect();
        if durable.is_empty() {
            return cause;
        }
        failed.sort_by_key(|f| f.0);
        let not_durable = failed
            .into_iter()
            .map(|(index, partition, error)| NotDurableEvent {
                index,
                id: events[index].id().to_string(),
                partition,
                error,
            })
            .collect();
        BrokerError::PartiallyDurable(Box::new(PartialProduce {
            topic: self.topic.name().to_string(),
            durable,
            not_durable,
            cause,
        }))
    }

    /// Checks what can be checked before writing: each event's stored size (lowest index
    /// first), each partition's batch size, and that no target partition is poisoned.
    fn check_limits(
        &self,
        events: &[RawEvent],
        mine: &[usize],
        by_partition: &[Vec<usize>],
    ) -> Result<()> {
        let config = self.topic.config();
        for &index in mine {
            let r = record(&events[index]);
            let bytes = r.key.map_or(0, <[u8]>::len) + r.value.map_or(0, <[u8]>::len);
            if bytes > config.record_bytes_max {
                return Err(BrokerError::EventTooLarge {
                    index,
                    bytes,
                    max: config.record_bytes_max,
                });
            }
        }
        for (p, indexes) in (0u32..).zip(by_partition) {
            if indexes.is_empty() {
                continue;
            }
            let bytes = indexes
                .iter()
                .fold(0usize, |sum, &i| sum.saturating_add(record(&events[i]).encoded_len()));
            if bytes > config.batch_bytes_max {
                return Err(BrokerError::BatchTooLarge {
                    partition: p,
                    events: indexes.len(),
                    bytes,
                    max: config.batch_bytes_max,
                });
            }
            let partition = self.topic.partition(p)?;
            if let Some(cause) = partition.poisoned() {
                return Err(driftless_log::LogError::Poisoned {
                    topic: self.topic.name().to_string(),
                    partition: p,
                    cause,
                }
                .into());
            }
        }
        Ok(())
    }

    /// Takes back the `Pending` marks of the ids at `mine` (a request that wrote nothing).
    fn release_pending(&self, events: &[RawEvent], mine: &[usize]) {
        let mut d = lock(&self.dedup); // recovers from the poison a panic may have left
        for &i in mine {
            let id = events[i].id();
            if matches!(d.ids.get(id), Some(Mark::Pending)) {
                d.ids.remove(id);
            }
        }
        drop(d);
        self.dedup_changed.notify_all();
    }
}

/// How an event is stored: keyed by its placement key (compaction keeps the newest per key).
fn record(e: &RawEvent) -> NewRecord<'_> {
    NewRecord::keyed(e.placement_key().as_bytes(), e.json().as_bytes())
}

/// Takes back a produce request's `Pending` dedup marks if it unwinds before settling them
/// (marking them done or removing them): a mark left behind would make every later send of that
/// id wait for an outcome that never comes.
struct PendingGuard<'a> {
    state: &'a TopicState,
    events: &'a [RawEvent],
    /// Indexes into `events` of the ids this request marked.
    mine: &'a [usize],
    settled: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.state.release_pending(self.events, self.mine);
        }
    }
}

/// Longest `dedup_window_ms`: 7 days (the window is rebuilt from the log on open, so it is read
/// back at every start).
pub const DEDUP_WINDOW_MS_MAX: u64 = 7 * 24 * 3600 * 1000;

/// The dedup window as the clock's type: exact for every validated window; a spec that skipped
/// validation (one stored by an older version) saturates instead of wrapping negative.
fn window_ms(spec: &TopicSpec) -> i64 {
    i64::try_from(spec.dedup_window_ms).unwrap_or(i64::MAX)
}

/// `Err` naming `field`, its value and the allowed range unless `value` is inside `lo..=hi`.
fn in_range(field: &'static str, value: u64, lo: u64, hi: u64, unit: &str) -> Result<()> {
    if value < lo || value > hi {
        return Err(BrokerError::InvalidSetting {
            field,
            reason: format!("{field} = {value} is out of range; use {lo} to {hi}{unit}"),
        });
    }
    Ok(())
}

/// Validates a spec and turns it into the log's topic configuration. Every number of the spec
/// is checked here, naming its field, before anything computes with it.
pub(crate) fn log_config(spec: &TopicSpec) -> Result<driftless_log::TopicConfig> {
    in_range(
        "partitions",
        u64::from(spec.partitions),
        1,
        u64::from(driftless_log::PARTITIONS_MAX),
        "",
    )?;
    if let Some(ms) = spec.retention_ms {
        in_range(
            "retention_ms",
            ms,
            1,
            driftless_log::MS_LIMIT,
            " (100 years); or null to keep events forever",
        )?;
    }
    if let Some(bytes) = spec.retention_bytes {
        in_range(
            "retention_bytes",
            bytes,
            1,
            driftless_log::RETENTION_BYTES_LIMIT,
            " (1 EiB); or null for no size limit",
        )?;
    }
    in_range("dedup_window_ms", spec.dedup_window_ms, 0, DEDUP_WINDOW_MS_MAX, " (7 days)")?;
    if let Durability::IntervalMs(ms) = spec.durability {
        in_range(
            "durability",
            ms,
            1,
            driftless_log::DURABILITY_INTERVAL_MS_LIMIT,
            " ms for interval_ms (1 day); or \"always\" / \"never\"",
        )?;
    }
    if let Some(owner) = &spec.owner {
        if let Some(reason) = driftless_core::TopicName::check(owner) {
            return Err(BrokerError::InvalidSetting {
                field: "owner",
                reason: format!("owner {owner:?} is not a valid principal name: {reason}"),
            });
        }
    }
    let config = driftless_log::TopicConfig {
        partitions: spec.partitions,
        durability: spec.durability,
        owner: spec.owner.clone(),
        retention_ms: spec.retention_ms,
        retention_bytes: spec.retention_bytes,
        cleanup: if spec.compact {
            driftless_log::Cleanup::Compact
        } else {
            driftless_log::Cleanup::Delete
        },
        ..driftless_log::TopicConfig::default()
    };
    // Whatever the checks above missed, the log's own validation names.
    config
        .validate()
        .map_err(|e| BrokerError::InvalidSetting { field: "topic", reason: e.to_string() })?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use driftless_core::{Event, SystemClock, TopicName};
    use driftless_log::{Log, LogOptions};

    use super::*;

    /// A produce that panics after marking its ids pending must not leave the marks: every later
    /// send of those ids would wait on them forever.
    #[test]
    fn a_produce_that_unwinds_takes_back_its_pending_marks() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(LogOptions::new(dir.path())).unwrap();
        let spec = TopicSpec::default();
        let topic = log.create_topic(&TopicName::new("t").unwrap(), log_config(&spec).unwrap());
        let state = TopicState::open(topic.unwrap(), spec, 0, 1000).unwrap();
        let events = [RawEvent::from_event(&Event::new("a", "/s", "t")).unwrap()];
        lock(&state.dedup).ids.insert("a".to_string(), Mark::Pending);
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard =
                PendingGuard { state: &state, events: &events, mine: &[0], settled: false };
            panic!("between marking and settling");
        }));
        assert!(unwound.is_err());
        assert!(!lock(&state.dedup).ids.contains_key("a"), "the pending mark was taken back");
        let produced = state.produce(&events, &SystemClock, 1000).unwrap();
        assert_eq!((produced[0].offset, produced[0].duplicate), (0, false));
    }
}

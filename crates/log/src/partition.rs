//! One partition: an ordered, append-only sequence of records split into segments.
//!
//! Write path (`append`), in order:
//! 1. validate sizes outside any lock;
//! 2. under the writer lock: refuse if poisoned; seal the active segment if the batch would
//!    overflow it (fdatasync the segment, write and fsync its seal index entry, create the next
//!    segment's files, fsync the directory); if more than `unsynced_bytes_max` would be unsynced,
//!    fdatasync first; encode the batch with consecutive offsets and one timestamp; `pwrite` it;
//! 3. outside the writer lock, in `always` mode, wait for durability: the first waiter whose
//!    records are not yet durable becomes the sync leader, fdatasyncs the active segment once for
//!    every batch written so far (group commit), advances the durable offset and wakes the others.
//!    `append` is steps 1-2 (`append_unsynced`) then step 3 (`wait_appended`); a caller writing
//!    several partitions (the broker's produce) runs the two halves itself, so its waits overlap
//!    the other partitions' fsyncs without a thread per partition.
//!
//! Invariants:
//! - an append returns `Ok` only after its bytes are durable (`always`), and readers never see a
//!   record that is not durable in `always` mode (so a batch from `append_unsynced` stays hidden
//!   until some fsync covers it);
//! - after any failed write or fsync the partition is poisoned: every later append and every
//!   waiter whose records were not yet durable gets [`LogError::Poisoned`]; the fsync is never
//!   retried;
//! - only the active segment can hold unsynced bytes, at most `unsynced_bytes_max` of them, so
//!   recovery may truncate only within that window of its tail (plus the preallocated zeros);
//! - the active segment's file runs up to [`PREALLOCATE_BYTES`] of zeros past its last record
//!   (about a second of the partition's writes, at least a page: `next_preallocation`):
//!   an fdatasync that neither grows the file nor allocates blocks skips the inode and
//!   block-bitmap writes, which made it ~35% cheaper on ext4 here. A sealed segment is truncated
//!   to its records before its seal is written, so only the active segment ever has a zero tail,
//!   and an all-zero region never decodes as a record (see [`crate::record`]);
//! - lock order is `maintenance` → `writer` → `sync`; no thread waits on `writer` while holding
//!   `sync`;
//! - every write that an fsync must cover goes through `CachedFile::for_write` and every fsync of
//!   a segment through `begin_sync`/`end_sync`, so the open-file cache never closes a file with
//!   unsynced writes (see [`crate::file_cache`]);
//! - a deleted partition (`begin_delete`) touches none of its files: appends get `TopicDeleted`
//!   and maintenance does nothing, until the deletion completes or is undone.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use driftless_core::Clock;
use event_listener::{Event, EventListener, Listener};

use crate::config::{Cleanup, Durability, TopicConfig};
use crate::error::{LogError, Result};
use crate::file_cache::{CachedFile, FileCache};
use crate::fs::{read_up_to, Fs, FsFile, OpenMode};
use crate::record::{self, body_bytes_max, NewRecord, Record};
use crate::segment::{IndexEntry, Scanner, Segment, Step, Summary, INDEX_ENTRY_BYTES};

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first record of the batch.
    pub base_offset: u64,
    /// Offset of the last record of the batch.
    pub last_offset: u64,
    /// The append time given to every record of the batch.
    pub timestamp_ms: i64,
}

/// Records returned by a read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadBatch {
    /// Records in offset order.
    pub records: Vec<Record>,
    /// Where the next read should start: one past the last record returned, or past a gap left by
    /// compaction.
    pub next_offset: u64,
}

/// What a retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Segments deleted.
    pub segments_deleted: usize,
    /// Bytes freed.
    pub bytes_deleted: u64,
}

/// What a compaction pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionOutcome {
    /// Segments rewritten or removed.
    pub segments_rewritten: usize,
    /// Records removed.
    pub records_removed: u64,
    /// Bytes freed.
    pub bytes_reclaimed: u64,
}

/// Upper bounds, in microseconds, of the fsync latency buckets in [`PartitionStats`]; the last
/// bucket counts everything slower than the last bound.
pub const SYNC_BUCKET_BOUNDS_US: [u64; 12] =
    [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 1_000_000];

/// Counters of one partition, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionStats {
    /// Records appended since open.
    pub records_appended: u64,
    /// Record bytes appended since open.
    pub bytes_appended: u64,
    /// Append calls since open.
    pub appends: u64,
    /// fdatasync calls on segment data since open.
    pub syncs: u64,
    /// Total time spent in those calls, in microseconds.
    pub sync_micros_total: u64,
    /// Longest of those calls, in microseconds.
    pub sync_micros_max: u64,
    /// Those calls by latency: `sync_buckets[i]` counts calls of at most
    /// `SYNC_BUCKET_BOUNDS_US[i]` µs (and more than the previous bound); the last counts the rest.
    pub sync_buckets: [u64; SYNC_BUCKET_BOUNDS_US.len() + 1],
    /// Bytes in all segments.
    pub size_bytes: u64,
    /// Number of segments.
    pub segments: usize,
    /// First offset still stored.
    pub start_offset: u64,
    /// One past the last offset readers can see.
    pub end_offset: u64,
}

#[derive(Debug, Default)]
struct Counters {
    records_appended: AtomicU64,
    bytes_appended: AtomicU64,
    appends: AtomicU64,
    syncs: AtomicU64,
    sync_micros_total: AtomicU64,
    sync_micros_max: AtomicU64,
    sync_buckets: [AtomicU64; SYNC_BUCKET_BOUNDS_US.len() + 1],
}

#[derive(Debug)]
struct Writer {
    active: Arc<Segment>,
    /// The active segment's index. Its appends are a cache's writes (entries are validated on
    /// open, and a lost one only lengthens recovery's scan), so they do not pin the file open;
    /// sealing rewrites the whole index and fsyncs it through one descriptor.
    idx_file: CachedFile,
    idx_len: u64,
    next_offset: u64,
    last_timestamp_ms: i64,
    /// Start of the last record in the active segment, for its seal entry.
    last_record_position: u64,
    bytes_since_index: u64,
    buf: Vec<u8>,
    /// Length of the active segment's file: its records, then zeros (preallocation).
    allocated_len: u64,
    /// Zeros the next preallocation writes: about a second of this partition's writes, between
    /// [`PREALLOCATE_BYTES_MIN`] and [`PREALLOCATE_BYTES`].
    preallocate_bytes: u64,
    /// When the last preallocation was written (append clock), to measure how fast it was used.
    preallocated_at_ms: i64,
}

#[derive(Debug)]
struct SyncState {
    /// One past the last durable offset.
    durable_end: u64,
    /// A leader is inside fdatasync.
    syncing: bool,
    last_sync: Instant,
}

/// Most zeros written past the active segment's last record whenever a batch would run past the
/// zeros already there, so that most fdatasyncs overwrite allocated blocks of a file whose length
/// does not change. Bounds how far a crashed active segment's file can run past its records.
/// A partition starts at [`PREALLOCATE_BYTES_MIN`] and doubles toward this while it uses each
/// preallocation within [`PREALLOCATE_GROW_MS`], so idle partitions hold a page, not a MiB.
pub const PREALLOCATE_BYTES: u64 = 1 << 20;
/// Fewest zeros a preallocation writes: one page.
pub const PREALLOCATE_BYTES_MIN: u64 = PAGE_BYTES;
/// A preallocation used up within this many milliseconds doubles the next one.
pub const PREALLOCATE_GROW_MS: i64 = 1_000;
/// A preallocation that lasted longer than this many milliseconds halves the next one.
pub const PREALLOCATE_SHRINK_MS: i64 = 4_000;

/// Preallocation ends on a page boundary, so the zeros past a segment's records never exceed this.
const ZERO_TAIL_BYTES_MAX: u64 = PREALLOCATE_BYTES + PAGE_BYTES;
const PAGE_BYTES: u64 = 4096;
/// The first chunk a read takes from a segment; later chunks of the same read double in size
/// (see `Scanner::with_growing_chunks`).
const READ_FIRST_CHUNK_BYTES: usize = 64 << 10;

/// One partition of a topic. Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Partition {
    topic: String,
    id: u32,
    dir: PathBuf,
    fs: Arc<dyn Fs>,
    cache: Arc<FileCache>,
    clock: Arc<dyn Clock>,
    config: TopicConfig,
    body_bytes_max: usize,
    segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    writer: Mutex<Writer>,
    sync: Mutex<SyncState>,
    synced: Condvar,
    visible_end: AtomicU64,
    log_start: AtomicU64,
    poison: OnceLock<Arc<str>>,
    deleted: AtomicBool,
    arrivals: Event,
    maintenance: Mutex<()>,
    counters: Counters,
}

/// The retention horizon: records appended before it are older than `age_ms` at `now`. Exact for
/// every validated age (at most [`crate::config::MS_LIMIT`]); an age beyond the clock's range
/// gives `i64::MIN`, before every record, so nothing is old enough. (`age_ms as i64` turned
/// 2^63 into `i64::MIN`, `now - i64::MIN` saturated to `i64::MAX`, and every sealed segment was
/// "older" than that and deleted.)
pub(crate) fn horizon_ms(now: i64, age_ms: u64) -> i64 {
    i64::try_from(age_ms).map_or(i64::MIN, |age| now.saturating_sub(age))
}

/// What every partition of a log shares: the filesystem, the open-file cache and the clock.
#[derive(Debug, Clone)]
pub(crate) struct Env {
    pub fs: Arc<dyn Fs>,
    pub cache: Arc<FileCache>,
    pub clock: Arc<dyn Clock>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a partition lock is a bug; the state it guards is still consistent
    // enough to report errors, and poisoning every later call would hide the original panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Places index entries the same way when appending, recovering and compacting: at the first
/// record of a batch once `interval` bytes passed since the previous entry.
struct IndexBuilder {
    interval: u64,
    since: u64,
    at_batch_start: bool,
    entries: Vec<IndexEntry>,
    last: Option<IndexEntry>,
}

impl IndexBuilder {
    fn new(interval: u64) -> Self {
        Self { interval, since: interval, at_batch_start: true, entries: Vec::new(), last: None }
    }

    fn observe(&mut self, position: u64, header: &record::Header, len: usize) {
        let entry =
            IndexEntry { offset: header.offset, position, timestamp_ms: header.timestamp_ms };
        if self.at_batch_start && self.since >= self.interval {
            self.entries.push(entry);
            self.since = 0;
        }
        self.since += len as u64;
        self.at_batch_start = header.is_batch_end();
        self.last = Some(entry);
    }

    /// Adds the seal entry (the last record) if it is not already the last entry.
    fn seal(mut self) -> Vec<IndexEntry> {
        if let Some(last) = self.last {
            if self.entries.last() != Some(&last) {
                self.entries.push(last);
            }
        }
        self.entries
    }
}

fn encode_index(base_offset: u64, entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * INDEX_ENTRY_BYTES);
    for e in entries {
        e.encode(base_offset, &mut out);
    }
    out
}

/// Sizes the next preallocation to the partition's write rate: about a second of its writes.
/// Called when a batch runs past the zeros already there, so the time since the previous
/// preallocation is how long that one lasted.
fn next_preallocation(w: &mut Writer, now_ms: i64) -> u64 {
    let lasted_ms = now_ms.saturating_sub(w.preallocated_at_ms);
    if lasted_ms <= PREALLOCATE_GROW_MS {
        w.preallocate_bytes = (w.preallocate_bytes * 2).min(PREALLOCATE_BYTES);
    } else if lasted_ms > PREALLOCATE_SHRINK_MS {
        w.preallocate_bytes = (w.preallocate_bytes / 2).max(PREALLOCATE_BYTES_MIN);
    }
    w.preallocated_at_ms = now_ms;
    w.preallocate_bytes
}

/// A segment's record file, held open by the caller for a scan.
fn open_segment(seg: &Segment) -> Result<Arc<dyn FsFile>> {
    seg.open_file().map_err(|e| LogError::io("open segment", &seg.log_path, e))
}

/// Runs a read again when a segment it meant to scan was deleted or replaced (by retention or
/// compaction) after the read took its list of segments and before it opened the file: the next
/// attempt sees the current segments (or that the offset was trimmed).
fn retry_replaced<T>(mut read: impl FnMut() -> Result<T>) -> Result<T> {
    const ATTEMPTS_MAX: usize = 4;
    let mut attempt = 1;
    loop {
        match read() {
            Err(LogError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && attempt < ATTEMPTS_MAX =>
            {
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn parse_base(path: &Path, ext: &str) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(ext)?;
    if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
        stem.parse().ok()
    } else {
        None
    }
}

impl Partition {
    /// Opens (and recovers) or creates the partition stored in `dir`.
    pub(crate) fn open(
        topic: &str,
        id: u32,
        dir: &Path,
        env: &Env,
        config: TopicConfig,
        clean_shutdown: bool,
    ) -> Result<Self> {
        let Env { fs, cache, clock } = env.clone();
        fs.create_dir_all(dir).map_err(|e| LogError::io("create partition directory", dir, e))?;
        let entries = fs.read_dir(dir).map_err(|e| LogError::io("list partition", dir, e))?;
        let mut bases = Vec::new();
        let mut removed_leftovers = false;
        for path in entries {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.ends_with(".cleaned") {
                // An interrupted compaction: the original segment is intact, drop the copy.
                fs.remove_file(&path)
                    .map_err(|e| LogError::io("remove compaction leftover", &path, e))?;
                removed_leftovers = true;
            } else if let Some(base) = parse_base(&path, ".log") {
                bases.push(base);
            }
        }
        if removed_leftovers {
            fs.sync_dir(dir).map_err(|e| LogError::io("fsync partition directory", dir, e))?;
        }
        bases.sort_unstable();

        let body_max = body_bytes_max(config.record_bytes_max);
        let p = PartitionOpener {
            topic,
            dir,
            fs: &*fs,
            cache: &cache,
            config: &config,
            body_max,
            clean_shutdown,
        };
        let mut segments = BTreeMap::new();
        let (active, writer_state) = match bases.split_last() {
            None => p.create_segment(0)?,
            Some((&last, sealed)) => {
                let mut prev_end = None;
                for &base in sealed {
                    let seg = p.open_sealed(base)?;
                    if prev_end.is_some_and(|end| end > base) {
                        return Err(LogError::Corrupt {
                            path: seg.log_path.clone(),
                            position: 0,
                            offset: base,
                            reason: "segment starts before the previous segment ends",
                        });
                    }
                    prev_end = Some(seg.end_offset());
                    segments.insert(base, Arc::new(seg));
                }
                p.recover_active(last)?
            }
        };
        let next_offset = active.end_offset();
        let log_start = segments.keys().next().copied().unwrap_or(active.base_offset);
        segments.insert(active.base_offset, Arc::clone(&active));
        let last_ts = segments.values().map(|s| s.last_timestamp_ms()).max().unwrap_or(i64::MIN);
        let writer = Writer {
            active: Arc::clone(&active),
            idx_file: writer_state.0,
            idx_len: writer_state.1,
            next_offset,
            last_timestamp_ms: last_ts,
            last_record_position: writer_state.2,
            bytes_since_index: writer_state.3,
            buf: Vec::new(),
            // Recovery and creation leave the file at its records' end.
            allocated_len: active.len(),
            preallocate_bytes: PREALLOCATE_BYTES_MIN,
            preallocated_at_ms: i64::MIN,
        };
        Ok(Self {
            topic: topic.to_string(),
            id,
            dir: dir.to_path_buf(),
            fs,
            cache,
            clock,
            body_bytes_max: body_max,
            config,
            segments: RwLock::new(segments),
            writer: Mutex::new(writer),
            sync: Mutex::new(SyncState {
                durable_end: next_offset,
                syncing: false,
                last_sync: Instant::now(),
            }),
            synced: Condvar::new(),
            visible_end: AtomicU64::new(next_offset),
            log_start: AtomicU64::new(log_start),
            poison: OnceLock::new(),
            deleted: AtomicBool::new(false),
            arrivals: Event::new(),
            maintenance: Mutex::new(()),
            counters: Counters::default(),
        })
    }

    /// The partition number.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The topic this partition belongs to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The directory holding this partition's segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// One past the last offset readers can see (in `always` mode: the last durable offset).
    pub fn end_offset(&self) -> u64 {
        self.visible_end.load(Ordering::Acquire)
    }

    /// The first offset still stored.
    pub fn start_offset(&self) -> u64 {
        self.log_start.load(Ordering::Acquire)
    }

    /// The reason this partition refuses writes, if it does.
    pub fn poisoned(&self) -> Option<Arc<str>> {
        self.poison.get().cloned()
    }

    fn poisoned_error(&self, cause: Arc<str>) -> LogError {
        LogError::Poisoned { topic: self.topic.clone(), partition: self.id, cause }
    }

    fn check_writable(&self) -> Result<()> {
        if self.deleted.load(Ordering::Acquire) {
            return Err(LogError::TopicDeleted(self.topic.clone()));
        }
        match self.poison.get() {
            Some(cause) => Err(self.poisoned_error(Arc::clone(cause))),
            None => Ok(()),
        }
    }

    /// Poisons the partition and returns the error for the caller that hit the failure.
    fn poison_with(&self, err: LogError) -> LogError {
        tracing::error!(topic = %self.topic, partition = self.id, error = %err,
            "write path failed; partition poisoned");
        let cause: Arc<str> = Arc::from(err.to_string());
        let _ = self.poison.set(Arc::clone(&cause));
        // Wake every durability waiter so it sees the poison instead of waiting forever.
        let _guard = lock(&self.sync);
        self.synced.notify_all();
        self.poisoned_error(self.poison.get().cloned().unwrap_or(cause))
    }

    /// Refuses appends and maintenance from now on, once the append and the maintenance pass
    /// in progress (if any) finished: after this, nothing of this partition touches its files
    /// until [`undo_delete`](Self::undo_delete).
    pub(crate) fn begin_delete(&self) {
        let _maintenance = lock(&self.maintenance);
        let _writer = lock(&self.writer);
        self.deleted.store(true, Ordering::Release);
    }

    /// A deletion failed before it took effect: the partition is writable again.
    pub(crate) fn undo_delete(&self) {
        self.deleted.store(false, Ordering::Release);
    }

    /// The topic's files are gone (moved to the trash): close every descriptor now, so the space
    /// is freed when the trash is emptied, and never reopen them.
    pub(crate) fn close_deleted_files(&self) {
        lock(&self.writer).idx_file.close_deleted();
        for seg in self.segments_snapshot() {
            seg.file.close_deleted();
        }
    }

    fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Appends `records` as one batch and returns where they landed.
    ///
    /// In `always` mode this returns only once the batch is durable; concurrent appenders share
    /// fsyncs. All records of a batch get the same timestamp and consecutive offsets. A batch is
    /// atomic across crashes: recovery keeps all of it or none.
    pub fn append(&self, records: &[NewRecord<'_>]) -> Result<Appended> {
        let appended = self.append_unsynced(records)?;
        self.wait_appended(&appended)?;
        Ok(appended)
    }

    /// Writes `records` as one batch like [`append`](Self::append), but in `always` mode returns
    /// before they are durable: they stay invisible to readers until an fsync covers them.
    /// Follow with [`wait_appended`](Self::wait_appended) before acknowledging anything. This
    /// lets one caller write to several partitions and then wait for all of them, without a
    /// thread per partition.
    pub fn append_unsynced(&self, records: &[NewRecord<'_>]) -> Result<Appended> {
        if records.is_empty() {
            return Err(LogError::EmptyBatch);
        }
        let mut total = 0usize;
        for (index, r) in records.iter().enumerate() {
            let bytes = r.key.map_or(0, <[u8]>::len) + r.value.map_or(0, <[u8]>::len);
            if bytes > self.config.record_bytes_max {
                return Err(LogError::RecordTooLarge {
                    index,
                    bytes,
                    max: self.config.record_bytes_max,
                });
            }
            total += r.encoded_len();
        }
        if total > self.config.batch_bytes_max {
            return Err(LogError::BatchTooLarge { bytes: total, max: self.config.batch_bytes_max });
        }

        let appended = {
            let mut w = lock(&self.writer);
            self.check_writable()?;
            let now = self.clock.now_ms();
            let active_len = w.active.len();
            let first_ts = w.active.first_timestamp_ms.load(Ordering::Acquire);
            if active_len > 0
                && (active_len + total as u64 > self.config.segment_bytes_max
                    || now.saturating_sub(first_ts) > self.config.segment_ms_max as i64)
            {
                self.roll(&mut w)?;
            }
            if self.config.durability != Durability::Never {
                let active = &w.active;
                let unsynced = active.len() - active.synced_len.load(Ordering::Acquire);
                if unsynced + total as u64 > self.config.unsynced_bytes_max {
                    self.sync_under_writer(&w)?;
                }
            }
            self.write_batch(&mut w, records, now, total)?
        };
        self.counters.appends.fetch_add(1, Ordering::Relaxed);
        self.counters.records_appended.fetch_add(records.len() as u64, Ordering::Relaxed);
        self.counters.bytes_appended.fetch_add(total as u64, Ordering::Relaxed);
        match self.config.durability {
            Durability::Always => {}
            Durability::IntervalMs(_) | Durability::Never => self.publish(appended.last_offset + 1),
        }
        Ok(appended)
    }

    /// Returns once the batch `appended` (from [`append_unsynced`](Self::append_unsynced)) is as
    /// durable as the partition promises: fsynced in `always` mode (leading a group fsync if no
    /// other appender is), at once otherwise.
    pub fn wait_appended(&self, appended: &Appended) -> Result<()> {
        match self.config.durability {
            Durability::Always => self.wait_durable(appended.last_offset + 1),
            Durability::IntervalMs(_) | Durability::Never => Ok(()),
        }
    }

    fn write_batch(
        &self,
        w: &mut Writer,
        records: &[NewRecord<'_>],
        now: i64,
        total: usize,
    ) -> Result<Appended> {
        let timestamp_ms = now.max(w.last_timestamp_ms);
        let base_offset = w.next_offset;
        let start = w.active.len();
        let mut buf = std::mem::take(&mut w.buf);
        buf.clear();
        buf.reserve(total);
        let mut last_record_position = start;
        let last = records.len() - 1;
        for (i, r) in records.iter().enumerate() {
            last_record_position = start + buf.len() as u64;
            record::encode(&mut buf, r, base_offset + i as u64, timestamp_ms, i == last);
        }
        debug_assert_eq!(buf.len(), total);
        let active = Arc::clone(&w.active);
        // for_write: from here until an fsync covers it, the cache keeps this descriptor open.
        let write = active.file.for_write().and_then(|file| {
            file.write_all_at(&buf, start)?;
            Ok(file)
        });
        w.buf = buf;
        let file = match write {
            Ok(file) => file,
            Err(e) => {
                return Err(self.poison_with(LogError::io("write segment", &active.log_path, e)))
            }
        };
        let end = start + total as u64;
        if end > w.allocated_len {
            // Whole pages, and no zeros past where this segment will be sealed anyway.
            let bytes = next_preallocation(w, now);
            let to = (end + bytes).div_ceil(PAGE_BYTES) * PAGE_BYTES;
            let to = to.min(self.config.segment_bytes_max).max(end);
            if to > end {
                let zeros = vec![0u8; (to - end) as usize];
                if let Err(e) = file.write_all_at(&zeros, end) {
                    let err = LogError::io("preallocate segment", &active.log_path, e);
                    return Err(self.poison_with(err));
                }
            }
            w.allocated_len = to;
        }
        drop(file);
        if w.bytes_since_index >= self.config.index_interval_bytes {
            let entry = IndexEntry { offset: base_offset, position: start, timestamp_ms };
            let mut raw = Vec::with_capacity(INDEX_ENTRY_BYTES);
            entry.encode(active.base_offset, &mut raw);
            // A cache's write (see `Writer::idx_file`): no fsync needs to cover it.
            let write = w.idx_file.get().and_then(|idx| idx.write_all_at(&raw, w.idx_len));
            if let Err(e) = write {
                return Err(self.poison_with(LogError::io("write index", &active.idx_path, e)));
            }
            w.idx_len += raw.len() as u64;
            active.index.write().unwrap_or_else(|e| e.into_inner()).push(entry);
            w.bytes_since_index = 0;
        }
        w.bytes_since_index += total as u64;
        let last_offset = base_offset + last as u64;
        if active.len() == 0 {
            active.first_timestamp_ms.store(timestamp_ms, Ordering::Release);
        }
        active.last_timestamp_ms.store(timestamp_ms, Ordering::Release);
        active.end_offset.store(last_offset + 1, Ordering::Release);
        active.len.store(start + total as u64, Ordering::Release);
        w.next_offset = last_offset + 1;
        w.last_timestamp_ms = timestamp_ms;
        w.last_record_position = last_record_position;
        Ok(Appended { base_offset, last_offset, timestamp_ms })
    }

    /// Makes offsets below `end` visible to readers and wakes tailing readers.
    fn publish(&self, end: u64) {
        let prev = self.visible_end.fetch_max(end, Ordering::AcqRel);
        if end > prev {
            self.arrivals.notify(usize::MAX);
        }
    }

    fn timed_sync(&self, file: &dyn FsFile) -> std::io::Result<()> {
        let started = Instant::now();
        let result = file.sync_data();
        let micros = started.elapsed().as_micros() as u64;
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        self.counters.sync_micros_total.fetch_add(micros, Ordering::Relaxed);
        self.counters.sync_micros_max.fetch_max(micros, Ordering::Relaxed);
        let bucket = SYNC_BUCKET_BOUNDS_US.partition_point(|&bound| bound < micros);
        self.counters.sync_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        result
    }

    /// Records that offsets below `end` are durable.
    fn mark_durable(&self, end: u64) {
        let mut s = lock(&self.sync);
        if end > s.durable_end {
            s.durable_end = end;
        }
        s.last_sync = Instant::now();
        drop(s);
        self.synced.notify_all();
        self.publish(end);
    }

    /// fdatasync while holding the writer lock (segment roll, unsynced window full).
    fn sync_under_writer(&self, w: &Writer) -> Result<()> {
        let len = w.active.len();
        if let Err(e) = w.active.file.sync_now(|file| self.timed_sync(file)) {
            let err = LogError::io("fdatasync segment", &w.active.log_path, e);
            return Err(self.poison_with(err));
        }
        w.active.synced_len.fetch_max(len, Ordering::AcqRel);
        self.mark_durable(w.next_offset);
        Ok(())
    }

    /// Waits until offsets below `end` are durable, leading a group fsync if nobody else is.
    fn wait_durable(&self, end: u64) -> Result<()> {
        let mut s = lock(&self.sync);
        loop {
            if s.durable_end >= end {
                return Ok(());
            }
            if let Some(cause) = self.poison.get() {
                return Err(self.poisoned_error(Arc::clone(cause)));
            }
            if s.syncing {
                s = self.synced.wait(s).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            s.syncing = true;
            drop(s);
            // Everything written so far rides on this fsync, not just our batch.
            // Under the writer lock no write is half done, so the write count is exact.
            let (segment, upto, len, to_sync) = {
                let w = lock(&self.writer);
                (Arc::clone(&w.active), w.next_offset, w.active.len(), w.active.file.begin_sync())
            };
            let result = match &to_sync {
                Ok(Some((file, _))) => self.timed_sync(&**file),
                // Nothing written since the last fsync (another path synced it).
                Ok(None) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            s = lock(&self.sync);
            s.syncing = false;
            match result {
                Ok(()) => {
                    if let Ok(Some((_, writes))) = to_sync {
                        segment.file.end_sync(writes);
                    }
                    segment.synced_len.fetch_max(len, Ordering::AcqRel);
                    drop(s);
                    self.mark_durable(upto);
                    s = lock(&self.sync);
                }
                Err(e) => {
                    drop(s);
                    let err =
                        self.poison_with(LogError::io("fdatasync segment", &segment.log_path, e));
                    return Err(err);
                }
            }
        }
    }

    /// Makes every written record durable now. A no-op in `never` mode.
    pub fn flush(&self) -> Result<()> {
        if self.config.durability == Durability::Never {
            return Ok(());
        }
        let end = lock(&self.writer).next_offset;
        self.wait_durable(end)
    }

    /// Flushes if this partition syncs on an interval and the interval has passed.
    pub(crate) fn flush_if_due(&self) -> Result<()> {
        if let Durability::IntervalMs(ms) = self.config.durability {
            let due = lock(&self.sync).last_sync.elapsed() >= Duration::from_millis(ms);
            if due && self.poison.get().is_none() {
                return self.flush();
            }
        }
        Ok(())
    }

    /// Seals the active segment and starts a new one. Called with the writer lock held.
    fn roll(&self, w: &mut Writer) -> Result<()> {
        let old = Arc::clone(&w.active);
        // 1. The sealed segment holds its records only (its preallocated zeros go) and must be
        //    wholly durable: recovery trusts sealed segments. The fdatasync covers the length.
        self.trim_preallocation(w)?;
        self.sync_under_writer(w)?;
        // 2. Seal entry, so reopening finds the segment's last offset and time without a scan.
        let seal = IndexEntry {
            offset: w.next_offset - 1,
            position: w.last_record_position,
            timestamp_ms: w.last_timestamp_ms,
        };
        //    The whole index is rewritten and fsynced through one descriptor: its earlier
        //    appends were a cache's writes, possibly through descriptors closed since.
        let mut index = old.index.write().unwrap_or_else(|e| e.into_inner());
        if index.last() != Some(&seal) {
            index.push(seal);
        }
        let raw = encode_index(old.base_offset, &index);
        drop(index);
        let sealed = w
            .idx_file
            .for_write()
            .and_then(|idx| idx.write_all_at(&raw, 0))
            .and_then(|()| w.idx_file.sync_now(|idx| idx.sync_data()));
        if let Err(e) = sealed {
            return Err(self.poison_with(LogError::io(
                "write and fdatasync index",
                &old.idx_path,
                e,
            )));
        }
        // 3. The next segment's files, made durable by fsyncing the directory.
        let opener = PartitionOpener {
            topic: &self.topic,
            dir: &self.dir,
            fs: &*self.fs,
            cache: &self.cache,
            config: &self.config,
            body_max: self.body_bytes_max,
            clean_shutdown: false,
        };
        let (active, (idx_file, idx_len, _, since)) =
            opener.create_segment(w.next_offset).map_err(|e| self.poison_with(e))?;
        self.segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(active.base_offset, Arc::clone(&active));
        w.active = active;
        w.idx_file = idx_file;
        w.idx_len = idx_len;
        w.bytes_since_index = since;
        w.last_record_position = 0;
        w.allocated_len = 0;
        Ok(())
    }

    /// Cuts the active segment's file back to its records. Called with the writer lock held.
    fn trim_preallocation(&self, w: &mut Writer) -> Result<()> {
        let len = w.active.len();
        if w.allocated_len > len {
            if let Err(e) = w.active.file.for_write().and_then(|file| file.set_len(len)) {
                let err = LogError::io("truncate preallocated zeros", &w.active.log_path, e);
                return Err(self.poison_with(err));
            }
            w.allocated_len = len;
        }
        Ok(())
    }

    fn segments_snapshot(&self) -> Vec<Arc<Segment>> {
        self.segments.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Reads up to `max_records` records (and about `max_bytes`, but at least one record) from
    /// offset `from`. Only visible records are returned; every one has a verified checksum.
    pub fn read(&self, from: u64, max_records: usize, max_bytes: usize) -> Result<ReadBatch> {
        retry_replaced(|| self.read_once(from, max_records, max_bytes))
            .map_err(|e| self.deleted_or(e))
    }

    /// A read of a deleted topic fails because its files are gone: say so instead.
    fn deleted_or(&self, err: LogError) -> LogError {
        if self.is_deleted() && matches!(err, LogError::Io { .. }) {
            LogError::TopicDeleted(self.topic.clone())
        } else {
            err
        }
    }

    fn read_once(&self, from: u64, max_records: usize, max_bytes: usize) -> Result<ReadBatch> {
        let visible = self.end_offset();
        let start = self.start_offset();
        if from < start {
            return Err(LogError::OffsetTrimmed {
                topic: self.topic.clone(),
                partition: self.id,
                requested: from,
                log_start: start,
            });
        }
        let mut out = ReadBatch { records: Vec::new(), next_offset: from };
        if from >= visible || max_records == 0 {
            return Ok(out);
        }
        let segments: Vec<Arc<Segment>> = {
            let map = self.segments.read().unwrap_or_else(|e| e.into_inner());
            let first = map.range(..=from).next_back().map_or(0, |(b, _)| *b);
            map.range(first..).map(|(_, s)| Arc::clone(s)).collect()
        };
        let mut bytes = 0usize;
        for seg in segments {
            if seg.base_offset >= visible {
                break;
            }
            let position = if from > seg.base_offset { seg.position_for_offset(from) } else { 0 };
            let file = open_segment(&seg)?;
            let mut scan = Scanner::new(&*file, position, seg.len(), self.body_bytes_max)
                // A fetch usually wants a few hundred records of a long segment: reading
                // `max_bytes` (1 MiB for the broker) every time zeroed and copied mostly bytes
                // it then dropped.
                .with_growing_chunks(READ_FIRST_CHUNK_BYTES, max_bytes.max(READ_FIRST_CHUNK_BYTES));
            loop {
                let step =
                    scan.next_step().map_err(|e| LogError::io("read segment", &seg.log_path, e))?;
                match step {
                    Step::Record { header, len, .. } => {
                        if header.offset >= visible {
                            out.next_offset = out.next_offset.max(visible);
                            return Ok(out);
                        }
                        if header.offset < from {
                            continue;
                        }
                        out.records.push(record::materialize(scan.record(len), &header));
                        out.next_offset = header.offset + 1;
                        bytes += len;
                        if out.records.len() >= max_records || bytes >= max_bytes {
                            return Ok(out);
                        }
                    }
                    Step::End => break,
                    Step::Invalid { position, reason } => {
                        return Err(LogError::Corrupt {
                            path: seg.log_path.clone(),
                            position,
                            offset: out.next_offset,
                            reason,
                        });
                    }
                    Step::Incomplete { position } => {
                        return Err(LogError::Corrupt {
                            path: seg.log_path.clone(),
                            position,
                            offset: out.next_offset,
                            reason: "segment ends inside a record",
                        });
                    }
                }
            }
        }
        out.next_offset = out.next_offset.max(visible);
        Ok(out)
    }

    /// The first visible offset whose append time is at least `timestamp_ms`, or `None` if every
    /// visible record is older.
    pub fn offset_for_time(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        retry_replaced(|| self.offset_for_time_once(timestamp_ms)).map_err(|e| self.deleted_or(e))
    }

    fn offset_for_time_once(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        let visible = self.end_offset();
        for seg in self.segments_snapshot() {
            if seg.base_offset >= visible {
                break;
            }
            if seg.last_timestamp_ms() < timestamp_ms {
                continue;
            }
            let position = seg.position_for_time(timestamp_ms);
            let file = open_segment(&seg)?;
            let mut scan = Scanner::new(&*file, position, seg.len(), self.body_bytes_max);
            loop {
                match scan
                    .next_step()
                    .map_err(|e| LogError::io("read segment", &seg.log_path, e))?
                {
                    Step::Record { header, .. } => {
                        if header.offset >= visible {
                            return Ok(None);
                        }
                        if header.timestamp_ms >= timestamp_ms {
                            return Ok(Some(header.offset.max(self.start_offset())));
                        }
                    }
                    Step::End => break,
                    Step::Invalid { position, reason } => {
                        return Err(LogError::Corrupt {
                            path: seg.log_path.clone(),
                            position,
                            offset: seg.base_offset,
                            reason,
                        });
                    }
                    Step::Incomplete { position } => {
                        return Err(LogError::Corrupt {
                            path: seg.log_path.clone(),
                            position,
                            offset: seg.base_offset,
                            reason: "segment ends inside a record",
                        });
                    }
                }
            }
        }
        Ok(None)
    }

    /// A listener that fires when new records become visible. Check [`Partition::end_offset`]
    /// after creating it and before awaiting it, or an arrival in between is missed. Await it in
    /// async code; call `wait`/`wait_timeout` on it in blocking code.
    pub fn listen(&self) -> EventListener {
        self.arrivals.listen()
    }

    /// Blocks until a record at `offset` or later is visible, or `timeout` passes. Returns whether
    /// one is visible. No polling: the appender wakes the waiter.
    pub fn wait_for(&self, offset: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.end_offset() > offset {
                return true;
            }
            let listener = self.listen();
            if self.end_offset() > offset {
                return true;
            }
            if listener.wait_deadline(deadline).is_none() {
                return self.end_offset() > offset;
            }
        }
    }

    /// Counters and sizes for metrics.
    pub fn stats(&self) -> PartitionStats {
        let segments = self.segments_snapshot();
        PartitionStats {
            records_appended: self.counters.records_appended.load(Ordering::Relaxed),
            bytes_appended: self.counters.bytes_appended.load(Ordering::Relaxed),
            appends: self.counters.appends.load(Ordering::Relaxed),
            syncs: self.counters.syncs.load(Ordering::Relaxed),
            sync_micros_total: self.counters.sync_micros_total.load(Ordering::Relaxed),
            sync_micros_max: self.counters.sync_micros_max.load(Ordering::Relaxed),
            sync_buckets: std::array::from_fn(|i| {
                self.counters.sync_buckets[i].load(Ordering::Relaxed)
            }),
            size_bytes: segments.iter().map(|s| s.len()).sum(),
            segments: segments.len(),
            start_offset: self.start_offset(),
            end_offset: self.end_offset(),
        }
    }

    fn active_base(&self) -> u64 {
        lock(&self.writer).active.base_offset
    }

    /// Deletes sealed segments past the topic's retention by age or size. The active segment is
    /// never deleted; readers holding a deleted segment finish reading it.
    pub fn enforce_retention(&self) -> Result<RetentionOutcome> {
        let _maintenance = lock(&self.maintenance);
        if self.is_deleted() {
            return Ok(RetentionOutcome::default());
        }
        let now = self.clock.now_ms();
        let active_base = self.active_base();
        let segments = self.segments_snapshot();
        let mut total: u64 = segments.iter().map(|s| s.len()).sum();
        let mut doomed = Vec::new();
        for seg in &segments {
            if seg.base_offset >= active_base {
                break;
            }
            let by_time = self
                .config
                .retention_ms
                .is_some_and(|r| seg.last_timestamp_ms() < horizon_ms(now, r));
            let by_size = self.config.retention_bytes.is_some_and(|r| total > r);
            if !(by_time || by_size) {
                break;
            }
            total = total.saturating_sub(seg.len());
            doomed.push(Arc::clone(seg));
        }
        self.remove_segments(&doomed)?;
        Ok(RetentionOutcome {
            segments_deleted: doomed.len(),
            bytes_deleted: doomed.iter().map(|s| s.len()).sum(),
        })
    }

    /// Drops segments from the map, moves the log start, then deletes their files.
    fn remove_segments(&self, doomed: &[Arc<Segment>]) -> Result<()> {
        if doomed.is_empty() {
            return Ok(());
        }
        {
            let mut map = self.segments.write().unwrap_or_else(|e| e.into_inner());
            for seg in doomed {
                map.remove(&seg.base_offset);
            }
            if let Some(first) = map.keys().next() {
                self.log_start.fetch_max(*first, Ordering::AcqRel);
            }
        }
        for seg in doomed {
            // Readers holding the segment keep an open descriptor; nobody reopens the path.
            seg.file.retire();
            for path in [&seg.log_path, &seg.idx_path] {
                match self.fs.remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(LogError::io("delete segment", path, e)),
                }
            }
        }
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| LogError::io("fsync partition directory", &self.dir, e))
    }

    /// Key compaction of sealed segments: keeps the newest record of each key, drops tombstones
    /// older than `tombstone_retention_ms`, keeps records without a key. Appends continue while
    /// it runs; offsets never change, so compaction leaves gaps.
    pub fn compact(&self) -> Result<CompactionOutcome> {
        let _maintenance = lock(&self.maintenance);
        let mut outcome = CompactionOutcome::default();
        if self.config.cleanup != Cleanup::Compact || self.is_deleted() {
            return Ok(outcome);
        }
        let now = self.clock.now_ms();
        let active_base = self.active_base();
        let visible = self.end_offset();
        let segments = self.segments_snapshot();
        if !segments.iter().any(|s| s.base_offset < active_base) {
            return Ok(outcome);
        }
        // Newest offset of every key, over everything visible (the active segment included).
        let mut latest: HashMap<Bytes, u64> = HashMap::new();
        let mut map_bytes = 0usize;
        for seg in &segments {
            let file = open_segment(seg)?;
            let mut scan = Scanner::new(&*file, 0, seg.len(), self.body_bytes_max);
            while let Some((header, rec)) = self.next_record(&mut scan, seg)? {
                if header.offset >= visible {
                    break;
                }
                if let Some(key) = rec.key {
                    if !latest.contains_key(&key) {
                        map_bytes += key.len() + 64;
                        if map_bytes > self.config.compaction_map_bytes_max {
                            return Err(LogError::CompactionMapFull {
                                topic: self.topic.clone(),
                                partition: self.id,
                                max: self.config.compaction_map_bytes_max,
                            });
                        }
                    }
                    // The record's own copy of its key (not a slice of the read buffer).
                    latest.insert(key, header.offset);
                }
            }
        }
        let tombstone_cutoff = horizon_ms(now, self.config.tombstone_retention_ms);
        let mut emptied = Vec::new();
        for seg in segments.iter().filter(|s| s.base_offset < active_base) {
            let mut kept = Vec::new();
            let mut builder = IndexBuilder::new(self.config.index_interval_bytes);
            let mut removed = 0u64;
            let file = open_segment(seg)?;
            let mut scan = Scanner::new(&*file, 0, seg.len(), self.body_bytes_max);
            loop {
                let step =
                    scan.next_step().map_err(|e| LogError::io("read segment", &seg.log_path, e))?;
                let (header, len) = match step {
                    Step::Record { header, len, .. } => (header, len),
                    Step::End => break,
                    Step::Invalid { position, reason } => {
                        return Err(LogError::Corrupt {
                            path: seg.log_path.clone(),
                            position,
                            offset: seg.base_offset,
                            reason,
                        })
                    }
                    Step::Incomplete { position } => {
                        return Err(LogError::Corrupt {
                            path: seg.log_path.clone(),
                            position,
                            offset: seg.base_offset,
                            reason: "segment ends inside a record",
                        })
                    }
                };
                let bytes = scan.record(len);
                let rec = record::materialize(bytes, &header);
                let keep = match &rec.key {
                    None => true,
                    Some(key) => {
                        latest.get(key) == Some(&header.offset)
                            && !(rec.is_tombstone() && header.timestamp_ms < tombstone_cutoff)
                    }
                };
                if keep {
                    builder.observe(kept.len() as u64, &header, len);
                    kept.extend_from_slice(bytes);
                } else {
                    removed += 1;
                }
            }
            if removed == 0 {
                continue;
            }
            outcome.segments_rewritten += 1;
            outcome.records_removed += removed;
            outcome.bytes_reclaimed += seg.len() - kept.len() as u64;
            if kept.is_empty() {
                emptied.push(Arc::clone(seg));
                continue;
            }
            let entries = builder.seal();
            let replacement = self.write_compacted(seg, &kept, entries)?;
            self.segments
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(seg.base_offset, Arc::new(replacement));
        }
        self.remove_segments(&emptied)?;
        Ok(outcome)
    }

    fn next_record(
        &self,
        scan: &mut Scanner<'_>,
        seg: &Segment,
    ) -> Result<Option<(record::Header, Record)>> {
        match scan.next_step().map_err(|e| LogError::io("read segment", &seg.log_path, e))? {
            Step::Record { header, len, .. } => {
                Ok(Some((header, record::materialize(scan.record(len), &header))))
            }
            Step::End => Ok(None),
            Step::Invalid { position, reason } => Err(LogError::Corrupt {
                path: seg.log_path.clone(),
                position,
                offset: seg.base_offset,
                reason,
            }),
            Step::Incomplete { position } => Err(LogError::Corrupt {
                path: seg.log_path.clone(),
                position,
                offset: seg.base_offset,
                reason: "segment ends inside a record",
            }),
        }
    }

    /// Writes a compacted copy next to `seg` and renames it over the original, index first is
    /// not needed: a stale index is detected and rebuilt on open.
    fn write_compacted(
        &self,
        seg: &Segment,
        kept: &[u8],
        entries: Vec<IndexEntry>,
    ) -> Result<Segment> {
        let tmp_log = seg.log_path.with_extension("log.cleaned");
        let tmp_idx = seg.idx_path.with_extension("idx.cleaned");
        let fs = &*self.fs;
        for (tmp, bytes) in
            [(&tmp_log, kept.to_vec()), (&tmp_idx, encode_index(seg.base_offset, &entries))]
        {
            if fs.exists(tmp) {
                fs.remove_file(tmp)
                    .map_err(|e| LogError::io("remove stale compaction file", tmp, e))?;
            }
            let file = fs
                .open(tmp, OpenMode::CreateNew)
                .map_err(|e| LogError::io("create compacted segment", tmp, e))?;
            file.write_all_at(&bytes, 0)
                .map_err(|e| LogError::io("write compacted segment", tmp, e))?;
            file.sync_data().map_err(|e| LogError::io("fdatasync compacted segment", tmp, e))?;
        }
        // From the rename on, the path names the compacted file: the old segment's handle must
        // never reopen it (its positions are the old file's).
        seg.file.retire();
        if let Err(e) = fs.rename(&tmp_log, &seg.log_path) {
            seg.file.unretire();
            return Err(LogError::io("install compacted segment", &seg.log_path, e));
        }
        fs.rename(&tmp_idx, &seg.idx_path)
            .map_err(|e| LogError::io("install compacted index", &seg.idx_path, e))?;
        fs.sync_dir(&self.dir)
            .map_err(|e| LogError::io("fsync partition directory", &self.dir, e))?;
        let file = self.cache.file(&seg.log_path, OpenMode::Read);
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            unreachable!("a non-empty segment has index entries");
        };
        let summary = Summary {
            end_offset: last.offset + 1,
            first_timestamp_ms: first.timestamp_ms,
            last_timestamp_ms: last.timestamp_ms,
        };
        Ok(Segment::new(&self.dir, seg.base_offset, file, kept.len() as u64, summary, entries))
    }

    /// Closes the partition for good: flushes in `interval` mode.
    pub(crate) fn close(&self) -> Result<()> {
        if self.poison.get().is_some() {
            return Ok(());
        }
        self.flush()?;
        // A clean shutdown leaves no zero tail, so a clean restart has nothing to look past.
        let mut w = lock(&self.writer);
        if w.allocated_len > w.active.len() {
            self.trim_preallocation(&mut w)?;
            self.sync_under_writer(&w)?;
        }
        Ok(())
    }
}

/// Opening and creating segments, shared by `open` and `roll`.
struct PartitionOpener<'a> {
    topic: &'a str,
    dir: &'a Path,
    fs: &'a dyn Fs,
    cache: &'a Arc<FileCache>,
    config: &'a TopicConfig,
    body_max: usize,
    /// The log was closed cleanly (every segment fdatasynced) and nothing wrote since.
    clean_shutdown: bool,
}

/// The active segment's index file, its length, the last record's position and the bytes
/// since the last index entry.
type ActiveState = (CachedFile, u64, u64, u64);

impl PartitionOpener<'_> {
    fn create_segment(&self, base: u64) -> Result<(Arc<Segment>, ActiveState)> {
        let (log_path, idx_path) = Segment::paths(self.dir, base);
        let file = self
            .fs
            .open(&log_path, OpenMode::CreateNew)
            .map_err(|e| LogError::io("create segment", &log_path, e))?;
        let idx = self
            .fs
            .open(&idx_path, OpenMode::CreateNew)
            .map_err(|e| LogError::io("create index", &idx_path, e))?;
        self.fs
            .sync_dir(self.dir)
            .map_err(|e| LogError::io("fsync partition directory", self.dir, e))?;
        let file = self.cache.adopt(&log_path, OpenMode::ReadWrite, file);
        let idx = self.cache.adopt(&idx_path, OpenMode::ReadWrite, idx);
        let summary = Summary { end_offset: base, ..Summary::EMPTY };
        let seg = Segment::new(self.dir, base, file, 0, summary, Vec::new());
        Ok((Arc::new(seg), (idx, 0, 0, self.config.index_interval_bytes)))
    }

    /// The valid entries of an index file and the file's length (`None`: no file).
    fn read_index(&self, base: u64, idx_path: &Path) -> Result<(Vec<IndexEntry>, Option<u64>)> {
        if !self.fs.exists(idx_path) {
            return Ok((Vec::new(), None));
        }
        let idx = self
            .fs
            .open(idx_path, OpenMode::Read)
            .map_err(|e| LogError::io("open index", idx_path, e))?;
        let len = idx.size().map_err(|e| LogError::io("stat index", idx_path, e))?;
        let bytes = read_up_to(&*idx, 0, len as usize)
            .map_err(|e| LogError::io("read index", idx_path, e))?;
        Ok((IndexEntry::decode_all(base, &bytes), Some(len)))
    }

    /// Writes `entries` as the whole index at `path` and fsyncs it, unless the file already
    /// holds exactly them (`on_disk_len` bytes of entries): most opens rewrite nothing.
    fn write_index(
        &self,
        path: &Path,
        base: u64,
        entries: &[IndexEntry],
        on_disk: Option<(&[IndexEntry], u64)>,
    ) -> Result<CachedFile> {
        let unchanged = on_disk.is_some_and(|(old, len)| {
            old == entries && len == (entries.len() * INDEX_ENTRY_BYTES) as u64
        });
        if unchanged {
            return Ok(self.cache.file(path, OpenMode::ReadWrite));
        }
        let file = if self.fs.exists(path) {
            self.fs.open(path, OpenMode::ReadWrite)
        } else {
            self.fs.open(path, OpenMode::CreateNew)
        }
        .map_err(|e| LogError::io("open index", path, e))?;
        let bytes = encode_index(base, entries);
        file.set_len(0).map_err(|e| LogError::io("truncate index", path, e))?;
        file.write_all_at(&bytes, 0).map_err(|e| LogError::io("write index", path, e))?;
        file.sync_data().map_err(|e| LogError::io("fdatasync index", path, e))?;
        // Synced and closed here: nothing of it is dirty, and an idle partition holds no index
        // descriptor.
        drop(file);
        Ok(self.cache.file(path, OpenMode::ReadWrite))
    }

    /// Opens a sealed segment, trusting its index if the seal entry checks out, else rebuilding
    /// the index from a full scan (which must find only valid records).
    fn open_sealed(&self, base: u64) -> Result<Segment> {
        let (log_path, idx_path) = Segment::paths(self.dir, base);
        let handle = self.cache.file(&log_path, OpenMode::Read);
        let file = handle.get().map_err(|e| LogError::io("open segment", &log_path, e))?;
        let len = file.size().map_err(|e| LogError::io("stat segment", &log_path, e))?;
        let (entries, _) = self.read_index(base, &idx_path)?;
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            let step = crate::segment::Scanner::new(&*file, last.position, len, self.body_max)
                .with_chunk_bytes(64 << 10)
                .next_step()
                .map_err(|e| LogError::io("read segment", &log_path, e))?;
            if let Step::Record { header, len: rec_len, .. } = step {
                if first.position == 0
                    && header.offset == last.offset
                    && last.position + rec_len as u64 == len
                {
                    let summary = Summary {
                        end_offset: last.offset + 1,
                        first_timestamp_ms: first.timestamp_ms,
                        last_timestamp_ms: last.timestamp_ms,
                    };
                    return Ok(Segment::new(self.dir, base, handle, len, summary, entries));
                }
            }
        }
        tracing::warn!(topic = self.topic, segment = %log_path.display(),
            "index of a sealed segment is missing or stale; rebuilding it from the records");
        let mut builder = IndexBuilder::new(self.config.index_interval_bytes);
        let mut summary = Summary { end_offset: base, ..Summary::EMPTY };
        let mut scan = crate::segment::Scanner::new(&*file, 0, len, self.body_max);
        loop {
            match scan.next_step().map_err(|e| LogError::io("read segment", &log_path, e))? {
                Step::Record { position, header, len, .. } => {
                    builder.observe(position, &header, len);
                    summary.end_offset = header.offset + 1;
                    summary.first_timestamp_ms =
                        summary.first_timestamp_ms.min(header.timestamp_ms);
                    summary.last_timestamp_ms = header.timestamp_ms;
                }
                Step::End => break,
                Step::Invalid { position, reason } => {
                    return Err(LogError::Corrupt {
                        path: log_path,
                        position,
                        offset: summary.end_offset,
                        reason,
                    });
                }
                Step::Incomplete { position } => {
                    return Err(LogError::Corrupt {
                        path: log_path,
                        position,
                        offset: summary.end_offset,
                        reason: "sealed segment ends inside a record",
                    });
                }
            }
        }
        drop(scan);
        let entries = builder.seal();
        drop(file);
        self.write_index(&idx_path, base, &entries, None)?;
        Ok(Segment::new(self.dir, base, handle, len, summary, entries))
    }

    /// Recovers the active (last) segment: scans the window that may hold unsynced bytes and
    /// truncates a torn tail there, back to the end of the last complete batch. An invalid record
    /// before that window is corruption and is reported.
    fn recover_active(&self, base: u64) -> Result<(Arc<Segment>, ActiveState)> {
        let (log_path, idx_path) = Segment::paths(self.dir, base);
        let handle = self.cache.file(&log_path, OpenMode::ReadWrite);
        // for_write: a truncation below must be covered by the fsync below, through this
        // descriptor; the fsync makes the file clean again. After a clean shutdown there is
        // nothing to sync unless recovery truncates.
        let file = if self.clean_shutdown { handle.get() } else { handle.for_write() }
            .map_err(|e| LogError::io("open segment", &log_path, e))?;
        let len = file.size().map_err(|e| LogError::io("stat segment", &log_path, e))?;
        // Past the durable records lie at most `unsynced_bytes_max` of unsynced ones and then
        // the preallocated zeros (whole pages): only there may a tear be truncated.
        let window = match self.config.durability {
            Durability::Never => u64::MAX,
            _ => self.config.unsynced_bytes_max.saturating_add(ZERO_TAIL_BYTES_MAX),
        };
        let safe_from = len.saturating_sub(window);
        let (mut entries, idx_len) = self.read_index(base, &idx_path)?;
        let on_disk = entries.clone();
        entries.retain(|e| e.position < len);
        // Start at the last index entry inside the synced prefix whose record checks out.
        let mut start = 0u64;
        let mut expected = base;
        let mut first_ts = None;
        while let Some(&entry) = entries.last() {
            if entry.position <= safe_from {
                let mut scan =
                    crate::segment::Scanner::new(&*file, entry.position, len, self.body_max)
                        .with_chunk_bytes(64 << 10);
                if let Ok(Step::Record { header, .. }) = scan.next_step() {
                    if header.offset == entry.offset {
                        start = entry.position;
                        expected = entry.offset;
                        first_ts = entries.first().map(|e| e.timestamp_ms);
                        entries.pop();
                        break;
                    }
                }
            }
            entries.pop();
        }
        if start == 0 {
            entries.clear();
            expected = base;
            first_ts = None;
        }
        let mut builder = IndexBuilder::new(self.config.index_interval_bytes);
        builder.entries = entries;
        // Records before `start` end at `expected`; the scan extends the summary from there.
        let mut summary = Summary { end_offset: expected, ..Summary::EMPTY };
        summary.first_timestamp_ms = first_ts.unwrap_or(i64::MAX);
        let mut committed = (start, summary, 0u64, builder.entries.len());
        let mut scan = crate::segment::Scanner::new(&*file, start, len, self.body_max);
        let tear = loop {
            match scan.next_step().map_err(|e| LogError::io("read segment", &log_path, e))? {
                Step::Record { position, header, len: rec_len, .. } => {
                    if header.offset != expected {
                        break Some((position, "offset out of sequence"));
                    }
                    expected += 1;
                    builder.observe(position, &header, rec_len);
                    summary.end_offset = header.offset + 1;
                    summary.first_timestamp_ms =
                        summary.first_timestamp_ms.min(header.timestamp_ms);
                    summary.last_timestamp_ms = header.timestamp_ms;
                    if header.is_batch_end() {
                        committed =
                            (position + rec_len as u64, summary, position, builder.entries.len());
                    }
                }
                Step::End => break None,
                Step::Invalid { position, reason } => break Some((position, reason)),
                Step::Incomplete { position } => break Some((position, "torn record at the end")),
            }
        };
        drop(scan);
        let (cut, summary, last_record_position, kept_entries) = committed;
        if cut < len {
            let (position, reason) = tear.unwrap_or((cut, "batch without its last record"));
            if position < safe_from {
                return Err(LogError::Corrupt {
                    path: log_path,
                    position,
                    offset: summary.end_offset.max(base),
                    reason,
                });
            }
            let zero_tail = len - cut <= ZERO_TAIL_BYTES_MAX
                && read_up_to(&*file, cut, (len - cut) as usize)
                    .map_err(|e| LogError::io("read segment", &log_path, e))?
                    .iter()
                    .all(|&b| b == 0);
            if zero_tail {
                // The preallocated zeros of a segment that was not closed cleanly: no tear.
                tracing::debug!(topic = self.topic, segment = %log_path.display(), cut,
                    zero_bytes = len - cut, "dropping the preallocated zeros after the last record");
            } else {
                tracing::warn!(topic = self.topic, segment = %log_path.display(), cut,
                    dropped_bytes = len - cut, reason, "truncating an unacknowledged torn tail");
            }
            let truncated = handle.for_write().and_then(|file| file.set_len(cut));
            truncated.map_err(|e| LogError::io("truncate torn tail", &log_path, e))?;
        }
        // What we are about to serve must be durable, whatever the crash left in the page cache.
        handle
            .sync_now(|file| file.sync_data())
            .map_err(|e| LogError::io("fdatasync segment", &log_path, e))?;
        drop(file);
        let mut entries = builder.entries;
        entries.truncate(kept_entries);
        let idx_file = self.write_index(
            &idx_path,
            base,
            &entries,
            idx_len.map(|len| (on_disk.as_slice(), len)),
        )?;
        let idx_len = (entries.len() * INDEX_ENTRY_BYTES) as u64;
        let since = match entries.last() {
            Some(e) => cut - e.position,
            None => self.config.index_interval_bytes,
        };
        let summary =
            if cut == 0 { Summary { end_offset: base, ..Summary::EMPTY } } else { summary };
        let seg = Segment::new(self.dir, base, handle, cut, summary, entries);
        Ok((Arc::new(seg), (idx_file, idx_len, last_record_position, since)))
    }
}

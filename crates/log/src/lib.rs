//! The embedded, durable, partitioned event log that everything in Driftless stands on.
//!
//! A [`Log`] is a data directory of topics; a topic is a fixed set of [`Partition`]s; a partition
//! is an append-only sequence of records with dense `u64` offsets, stored as segment files with a
//! sparse offset-and-time index.
//!
//! ```
//! use driftless_core::TopicName;
//! use driftless_log::{Log, LogOptions, NewRecord, TopicConfig};
//! let dir = tempfile::tempdir().unwrap();
//! let log = Log::open(LogOptions::new(dir.path())).unwrap();
//! let topic = log.create_topic(&TopicName::new("orders").unwrap(), TopicConfig::default()).unwrap();
//! let p = topic.partition(0).unwrap();
//! let at = p.append(&[NewRecord::keyed(b"order-1", b"{\"total\":42}")]).unwrap();
//! let batch = p.read(at.base_offset, 10, 1 << 20).unwrap();
//! assert_eq!(batch.records[0].value.as_deref(), Some(&b"{\"total\":42}"[..]));
//! ```
//!
//! # Durability contract
//!
//! **Record layout.** Every record carries its own CRC32C, which also covers its length, offset,
//! timestamp, flags, key and value; the layout is documented in `record.rs`. The last record of
//! every append is flagged as the end of its batch.
//!
//! **When an append is acknowledged.** With the default `durability = "always"`,
//! [`Partition::append`] returns only after `fdatasync` of the segment has returned success for
//! bytes that include the whole batch. Concurrent appenders share one `fdatasync` (group commit).
//! A caller that wrote several partitions can wait on all of them at once with
//! [`Topic::wait_appended_all`], whose helper threads overlap the fsyncs. A segment is
//! fdatasynced before the next one is created, and every file creation, rename and
//! deletion is followed by an `fsync` of its directory. Readers see only durable records.
//! `interval_ms` acknowledges after the write and syncs in the background; `never` does not sync
//! (unsafe, for tests and benchmarks).
//!
//! **Failed fsync.** The partition is poisoned: the failing append and everyone waiting on that
//! fsync get [`LogError::Poisoned`], as does every later append, until the process restarts. The
//! fsync is never retried, because Linux may have dropped the dirty pages it reported as failed.
//!
//! **What recovery may truncate.** On open, only the active (last) segment may lose bytes, and only
//! within its last `unsynced_bytes_max` bytes — the most the writer ever leaves unsynced. Recovery
//! scans that window (not the whole log), cuts at the first invalid or torn record, and then back
//! to the end of the last complete batch, so a batch survives whole or not at all. Those bytes were
//! never acknowledged. An invalid record anywhere else is corruption: opening or reading reports it
//! as [`LogError::Corrupt`] with the segment file, byte position and offset; it is never skipped and
//! never served. Indexes are caches: validated on open and rebuilt from the records when stale.
//!
//! **Limits.** `record_bytes_max`, `batch_bytes_max`, `segment_bytes_max` (at most 1 GiB) and
//! `unsynced_bytes_max` are per topic, in [`TopicConfig`]. [`LogOptions::open_files_max`] bounds
//! the files the log keeps open (soft: a file with unsynced writes is never closed, see
//! `file_cache.rs`), so the number of partitions is not bounded by the open-file limit.
//! Preallocated zeros follow each partition's write rate, from [`PREALLOCATE_BYTES_MIN`] to
//! [`PREALLOCATE_BYTES`].
//!
//! **Topics.** `topics/<name>/` holds topics under their exact names; deletion moves a topic to
//! `trash/` in one durable rename before forgetting it, so a crash leaves it intact or gone and
//! no valid name can collide with a marker (see `log.rs`).
//!
//! This crate knows nothing about HTTP, Postgres, consumer groups or CloudEvents: it stores keys
//! and values.

mod config;
mod error;
mod file_cache;
pub mod fs;
#[doc(hidden)]
pub mod fuzzing;
mod log;
mod partition;
mod record;
mod segment;
mod sync_pool;

pub use config::{
    Cleanup, Durability, TopicConfig, COMPACTION_MAP_BYTES_MAX_LIMIT, DURABILITY_INTERVAL_MS_LIMIT,
    MS_LIMIT, PARTITIONS_MAX, RECORD_BYTES_MAX_LIMIT, RETENTION_BYTES_LIMIT,
    SEGMENT_BYTES_MAX_LIMIT,
};
pub use error::{LogError, Result};
pub use event_listener::Listener;
pub use file_cache::{OPEN_FILES_MAX_DEFAULT, OPEN_FILES_MIN};
pub use log::{Log, LogOptions, Topic};
pub use partition::{
    Appended, CompactionOutcome, Partition, PartitionStats, ReadBatch, RetentionOutcome,
    PREALLOCATE_BYTES, PREALLOCATE_BYTES_MIN, PREALLOCATE_GROW_MS, PREALLOCATE_SHRINK_MS,
    SYNC_BUCKET_BOUNDS_US,
};
pub use record::{NewRecord, Record, RECORD_HEADER_BYTES};
pub use sync_pool::{SYNC_QUEUE_JOBS_MAX, SYNC_THREADS};

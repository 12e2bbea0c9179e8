//! Errors of the log. Each says what happened, to what, and what an operator can do about it.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use driftless_core::InvalidTopicName;

/// Everything that can go wrong in the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the log was doing, e.g. "fdatasync segment".
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// A write-path failure (usually a failed fsync) left the partition in an unknown state; it
    /// refuses writes until the process restarts and recovery verifies the files.
    #[error(
        "partition {topic}/{partition} is poisoned and refuses writes: {cause}; nothing written \
         after the failure was acknowledged. Check the disk, then restart Driftless so recovery can \
         verify the log"
    )]
    Poisoned {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: u32,
        /// The first failure, as text (the original `io::Error` is not `Clone`).
        cause: Arc<str>,
    },

    /// Bytes that should hold a valid record do not. The log never serves them and never skips
    /// them silently.
    #[error(
        "corrupt record in segment {path} at byte {position} (at or after offset {offset}): \
         {reason}. The log refuses to serve it; restore the partition from a backup, or remove the \
         segment files from this one onward to truncate the partition there"
    )]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the bad record in the segment.
        position: u64,
        /// The first offset that could be affected.
        offset: u64,
        /// What check failed.
        reason: &'static str,
    },

    /// One record's key plus value exceeds the topic's `record_bytes_max`.
    #[error("record {index} of the batch is {bytes} bytes; the limit record_bytes_max is {max}")]
    RecordTooLarge {
        /// Position of the record in the batch, from 0.
        index: usize,
        /// Its key plus value bytes.
        bytes: usize,
        /// The limit.
        max: usize,
    },

    /// A batch's encoded size exceeds the topic's `batch_bytes_max`.
    #[error("batch of {bytes} bytes on disk exceeds batch_bytes_max = {max}; split it")]
    BatchTooLarge {
        /// Encoded size of the batch.
        bytes: usize,
        /// The limit.
        max: usize,
    },

    /// An append with no records.
    #[error("an append needs at least one record")]
    EmptyBatch,

    /// A read asked for an offset that retention or compaction already removed.
    #[error(
        "offset {requested} of {topic}/{partition} was removed by retention; the log starts at \
         {log_start}: seek to {log_start} or later"
    )]
    OffsetTrimmed {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: u32,
        /// The offset asked for.
        requested: u64,
        /// The oldest offset still stored.
        log_start: u64,
    },

    /// A topic with this name already exists.
    #[error("topic {0} already exists")]
    TopicExists(String),

    /// No topic with this name exists.
    #[error("topic {0} does not exist")]
    UnknownTopic(String),

    /// The topic has fewer partitions than the number asked for.
    #[error("topic {topic} has {count} partitions; partition {partition} does not exist")]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// Partition asked for.
        partition: u32,
        /// Partitions the topic has.
        count: u32,
    },

    /// Another request is creating or deleting a topic of this name right now.
    #[error("topic {0} is being created or deleted by another request; retry once that finished")]
    TopicBusy(String),

    /// A deletion failed after the topic's directory was moved to the trash, and moving it back
    /// failed too: the topic is gone from this process, and whether it is gone from the disk
    /// depends on whether the move reached it.
    #[error(
        "deleting topic {topic} failed midway: {cause}; the topic is no longer served. If the disk \
         kept the move, the next start removes the topic; otherwise it comes back. Check the disk \
         and restart Driftless"
    )]
    DeletionUncertain {
        /// Topic name.
        topic: String,
        /// The failure that interrupted the deletion.
        cause: Box<LogError>,
    },

    /// The topic was deleted while this handle was held.
    #[error("topic {0} was deleted")]
    TopicDeleted(String),

    /// A configuration value is out of range or inconsistent with another.
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),

    /// A topic name broke the naming rules.
    #[error(transparent)]
    InvalidTopicName(#[from] InvalidTopicName),

    /// Another process holds the data directory.
    #[error(
        "data directory {path} is locked by another process; stop it, or point this one at a \
         different --data-dir"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },

    /// A topic's metadata file could not be read.
    #[error("topic metadata {path} is unreadable: {reason}")]
    BadMetadata {
        /// The metadata file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },

    /// Compaction would need more memory for its key map than allowed.
    #[error(
        "compaction of {topic}/{partition} stopped: its key map would exceed \
         compaction_map_bytes_max = {max}; raise the limit or the partition count"
    )]
    CompactionMapFull {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: u32,
        /// The limit.
        max: usize,
    },
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io { op, path: path.into(), source }
    }
}

/// Shorthand for results of the log.
pub type Result<T, E = LogError> = std::result::Result<T, E>;

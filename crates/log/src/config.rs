//! Per-topic configuration: partitions, durability, retention, compaction and size limits.
//!
//! Invariants checked by [`TopicConfig::validate`]: `record_bytes_max` fits in a batch, a batch
//! fits in a segment and in the unsynced window, and segments stay below 1 GiB so positions fit the
//! index's 32-bit fields.

use serde::{Deserialize, Serialize};

use crate::error::{LogError, Result};

/// When an append is acknowledged relative to `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Acknowledge only after the bytes are durable (group commit). Readers see only durable
    /// records. The default, and the only mode that keeps the promise "acknowledged means durable".
    #[default]
    Always,
    /// Acknowledge after the write reaches the page cache; a background thread syncs every this
    /// many milliseconds. A crash can lose up to that window of acknowledged records.
    IntervalMs(u64),
    /// Never sync except when sealing a segment. UNSAFE: a crash can lose any acknowledged record
    /// of the active segment. For tests and benchmarks only.
    Never,
}

/// What happens to old records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Cleanup {
    /// Delete whole segments by age and size.
    #[default]
    Delete,
    /// Keep the newest record per key (plus retention by age and size, if set).
    Compact,
}

/// The configuration of one topic, stored in its `topic.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicConfig {
    /// Number of partitions, 1 to [`PARTITIONS_MAX`].
    pub partitions: u32,
    /// When appends are acknowledged.
    pub durability: Durability,
    /// Delete sealed segments whose newest record is older than this; `None` keeps them forever.
    pub retention_ms: Option<u64>,
    /// Delete the oldest sealed segments while a partition is larger than this; `None`: no limit.
    pub retention_bytes: Option<u64>,
    /// Deletion only, or key compaction too.
    pub cleanup: Cleanup,
    /// How long a tombstone survives compaction, so slow readers still see the delete.
    pub tombstone_retention_ms: u64,
    /// Largest key plus value of one record.
    pub record_bytes_max: usize,
    /// Largest encoded size of one append.
    pub batch_bytes_max: usize,
    /// A segment is sealed and a new one started when the next batch would pass this size.
    pub segment_bytes_max: u64,
    /// A segment is also sealed when its first record is older than this, so retention by time
    /// works on quiet topics.
    pub segment_ms_max: u64,
    /// Bytes of records between two entries of the sparse offset and time index.
    pub index_interval_bytes: u64,
    /// Bytes written but not yet fsynced, at most. Recovery relies on it: an invalid record further
    /// than this from the end of the active segment is corruption, not a torn write.
    pub unsynced_bytes_max: u64,
    /// Memory for the key map of one compaction run.
    pub compaction_map_bytes_max: usize,
}

/// Most partitions a topic may have.
pub const PARTITIONS_MAX: u32 = 1024;
/// Largest segment: positions in the index are 32-bit.
pub const SEGMENT_BYTES_MAX_LIMIT: u64 = 1 << 30;

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            partitions: 1,
            durability: Durability::Always,
            retention_ms: None,
            retention_bytes: None,
            cleanup: Cleanup::Delete,
            tombstone_retention_ms: 24 * 3600 * 1000,
            record_bytes_max: 1 << 20,
            batch_bytes_max: 8 << 20,
            segment_bytes_max: 128 << 20,
            segment_ms_max: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            unsynced_bytes_max: 32 << 20,
            compaction_map_bytes_max: 256 << 20,
        }
    }
}

impl TopicConfig {
    /// Checks ranges and relations between limits.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(LogError::InvalidConfig(msg));
        if self.partitions == 0 || self.partitions > PARTITIONS_MAX {
            return bad(format!("partitions = {}; use 1 to {PARTITIONS_MAX}", self.partitions));
        }
        if self.record_bytes_max == 0 || self.record_bytes_max > 64 << 20 {
            return bad(format!(
                "record_bytes_max = {}; use 1 to 67108864 (64 MiB)",
                self.record_bytes_max
            ));
        }
        if self.batch_bytes_max < self.record_bytes_max + crate::record::RECORD_HEADER_BYTES {
            return bad(format!(
                "batch_bytes_max = {} cannot hold one record of record_bytes_max = {}",
                self.batch_bytes_max, self.record_bytes_max
            ));
        }
        if self.segment_bytes_max > SEGMENT_BYTES_MAX_LIMIT
            || self.segment_bytes_max < self.batch_bytes_max as u64
        {
            return bad(format!(
                "segment_bytes_max = {}; use batch_bytes_max ({}) to {SEGMENT_BYTES_MAX_LIMIT}",
                self.segment_bytes_max, self.batch_bytes_max
            ));
        }
        if self.unsynced_bytes_max < self.batch_bytes_max as u64 {
            return bad(format!(
                "unsynced_bytes_max = {} is below batch_bytes_max = {}",
                self.unsynced_bytes_max, self.batch_bytes_max
            ));
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes must be at least 1".into());
        }
        if self.segment_ms_max == 0 {
            return bad("segment_ms_max must be at least 1".into());
        }
        if let Durability::IntervalMs(0) = self.durability {
            return bad("durability interval_ms must be at least 1; use \"always\"".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        TopicConfig::default().validate().unwrap();
    }

    #[test]
    fn inconsistent_limits_are_rejected_with_the_field_named() {
        let cases = [
            (TopicConfig { partitions: 0, ..Default::default() }, "partitions"),
            (TopicConfig { batch_bytes_max: 10, ..Default::default() }, "batch_bytes_max"),
            (TopicConfig { segment_bytes_max: 2 << 30, ..Default::default() }, "segment_bytes_max"),
            (TopicConfig { unsynced_bytes_max: 1, ..Default::default() }, "unsynced_bytes_max"),
            (
                TopicConfig { durability: Durability::IntervalMs(0), ..Default::default() },
                "interval_ms",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
    }

    #[test]
    fn durability_serializes_as_documented() {
        let json = |d: Durability| serde_json::to_string(&d).unwrap();
        assert_eq!(json(Durability::Always), "\"always\"");
        assert_eq!(json(Durability::IntervalMs(50)), "{\"interval_ms\":50}");
        assert_eq!(json(Durability::Never), "\"never\"");
    }

    #[test]
    fn unknown_fields_are_errors_not_silent_defaults() {
        let err = serde_json::from_str::<TopicConfig>("{\"partitons\": 3}").unwrap_err();
        assert!(err.to_string().contains("partitons"));
    }
}

//! Per-topic configuration: partitions, durability, retention, compaction and size limits.
//!
//! Invariants checked by [`TopicConfig::validate`]: every field is inside its documented range
//! (the `*_LIMIT` constants below) before any arithmetic uses it — a configuration arrives from
//! outside (an HTTP request, a `topic.json` on disk), and a value such as `retention_ms = 2^63`
//! used to wrap to a negative age in `as i64` and delete every sealed segment. Ages in ms are at
//! most [`MS_LIMIT`] (100 years), so they convert to the clock's `i64` without loss; sizes in
//! bytes are bounded so sums of them cannot overflow. Between fields: `record_bytes_max` fits in a
//! batch, a batch fits in a segment and in the unsynced window, and segments stay below 1 GiB so
//! positions fit the index's 32-bit fields. A refusal names the field, the value and the range.

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
    /// The principal that owns the topic (the only one allowed to produce to it once the server
    /// authenticates requests), if any. The log stores it and never interprets it; it is checked
    /// like a topic name (1 to [`driftless_core::TOPIC_NAME_BYTES_MAX`] bytes of
    /// `[A-Za-z0-9._-]`). Absent from `topic.json` files written before owners existed, which
    /// therefore load as unowned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// Most partitions a topic may have.
pub const PARTITIONS_MAX: u32 = 1024;
/// Largest segment: positions in the index are 32-bit.
pub const SEGMENT_BYTES_MAX_LIMIT: u64 = 1 << 30;
/// Longest age or interval in ms any setting may name (retention, tombstone retention, segment
/// age): 100 years. Far beyond any real need, and far below `i64::MAX`, so `now - age` is exact.
pub const MS_LIMIT: u64 = 100 * 365 * 24 * 3600 * 1000;
/// Longest `durability = { interval_ms }`: one day. A longer interval is `never` in disguise.
pub const DURABILITY_INTERVAL_MS_LIMIT: u64 = 24 * 3600 * 1000;
/// Largest `retention_bytes`: 1 EiB, so a partition's size plus any segment never overflows.
pub const RETENTION_BYTES_LIMIT: u64 = 1 << 60;
/// Largest `record_bytes_max`: 64 MiB.
pub const RECORD_BYTES_MAX_LIMIT: usize = 64 << 20;
/// Largest `compaction_map_bytes_max`: 1 TiB (the map is memory; the limit is only a sanity bound).
pub const COMPACTION_MAP_BYTES_MAX_LIMIT: usize = 1 << 40;

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
            owner: None,
        }
    }
}

/// `Err` naming `field`, its value and the allowed range (`lo..=hi`, with a unit hint) unless
/// `value` is inside it.
fn in_range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    lo: T,
    hi: T,
    unit: &str,
) -> Result<()> {
    if value < lo || value > hi {
        return Err(LogError::InvalidConfig(format!(
            "{field} = {value} is out of range; use {lo} to {hi}{unit}"
        )));
    }
    Ok(())
}

/// A `usize` limit as `u64`: lossless on every platform Rust supports (`usize` is at most 64
/// bits); saturates rather than wraps if that ever changes.
fn as_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl TopicConfig {
    /// Checks every field's range, then the relations between limits. Range checks come first so
    /// the relations (`record_bytes_max + header`, …) never overflow.
    pub fn validate(&self) -> Result<()> {
        in_range("partitions", self.partitions, 1, PARTITIONS_MAX, "")?;
        if let Durability::IntervalMs(ms) = self.durability {
            in_range(
                "durability interval_ms",
                ms,
                1,
                DURABILITY_INTERVAL_MS_LIMIT,
                " (1 day); or \"always\" / \"never\"",
            )?;
        }
        if let Some(ms) = self.retention_ms {
            in_range("retention_ms", ms, 1, MS_LIMIT, " (100 years); or null to keep forever")?;
        }
        if let Some(bytes) = self.retention_bytes {
            in_range(
                "retention_bytes",
                bytes,
                1,
                RETENTION_BYTES_LIMIT,
                " (1 EiB); or null for no size limit",
            )?;
        }
        in_range(
            "tombstone_retention_ms",
            self.tombstone_retention_ms,
            0,
            MS_LIMIT,
            " (100 years)",
        )?;
        in_range(
            "record_bytes_max",
            self.record_bytes_max,
            1,
            RECORD_BYTES_MAX_LIMIT,
            " (64 MiB)",
        )?;
        in_range(
            "batch_bytes_max",
            as_u64(self.batch_bytes_max),
            as_u64(self.record_bytes_max + crate::record::RECORD_HEADER_BYTES),
            SEGMENT_BYTES_MAX_LIMIT,
            " (one record of record_bytes_max plus its header, to 1 GiB)",
        )?;
        in_range(
            "segment_bytes_max",
            self.segment_bytes_max,
            as_u64(self.batch_bytes_max),
            SEGMENT_BYTES_MAX_LIMIT,
            " (batch_bytes_max to 1 GiB)",
        )?;
        in_range("segment_ms_max", self.segment_ms_max, 1, MS_LIMIT, " (100 years)")?;
        in_range(
            "index_interval_bytes",
            self.index_interval_bytes,
            1,
            SEGMENT_BYTES_MAX_LIMIT,
            " (1 GiB)",
        )?;
        in_range(
            "unsynced_bytes_max",
            self.unsynced_bytes_max,
            as_u64(self.batch_bytes_max),
            SEGMENT_BYTES_MAX_LIMIT,
            " (batch_bytes_max to 1 GiB)",
        )?;
        in_range(
            "compaction_map_bytes_max",
            self.compaction_map_bytes_max,
            1,
            COMPACTION_MAP_BYTES_MAX_LIMIT,
            " (1 TiB)",
        )?;
        if let Some(owner) = &self.owner {
            if let Some(reason) = driftless_core::TopicName::check(owner) {
                return Err(LogError::InvalidConfig(format!(
                    "owner {owner:?} is not a valid principal name: {reason}"
                )));
            }
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
    fn every_out_of_range_field_is_named_with_its_value_and_range() {
        let cases = [
            (TopicConfig { retention_ms: Some(1 << 63), ..Default::default() }, "retention_ms"),
            (TopicConfig { retention_ms: Some(0), ..Default::default() }, "retention_ms"),
            (
                TopicConfig { retention_bytes: Some(u64::MAX), ..Default::default() },
                "retention_bytes",
            ),
            (TopicConfig { tombstone_retention_ms: u64::MAX, ..Default::default() }, "tombstone"),
            (TopicConfig { segment_ms_max: u64::MAX, ..Default::default() }, "segment_ms_max"),
            (
                TopicConfig { record_bytes_max: usize::MAX, ..Default::default() },
                "record_bytes_max",
            ),
            (TopicConfig { batch_bytes_max: usize::MAX, ..Default::default() }, "batch_bytes_max"),
            (TopicConfig { index_interval_bytes: 1 << 63, ..Default::default() }, "index_interval"),
            (TopicConfig { unsynced_bytes_max: u64::MAX, ..Default::default() }, "unsynced"),
            (TopicConfig { compaction_map_bytes_max: 0, ..Default::default() }, "compaction_map"),
            (
                TopicConfig { durability: Durability::IntervalMs(u64::MAX), ..Default::default() },
                "interval_ms",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(field) && err.contains("out of range; use"), "{err}");
        }
    }

    #[test]
    fn the_retention_horizon_never_wraps() {
        use crate::partition::horizon_ms;
        assert_eq!(horizon_ms(1_000, 400), 600);
        assert_eq!(horizon_ms(1_000, MS_LIMIT), 1_000 - MS_LIMIT as i64);
        // Ages past the clock's range: nothing is that old (2^63 used to mean "everything").
        for age in [1 << 63, u64::MAX] {
            assert_eq!(horizon_ms(1_700_000_000_000, age), i64::MIN);
        }
        assert_eq!(horizon_ms(i64::MIN + 5, 10), i64::MIN);
        assert_eq!(horizon_ms(-5, i64::MAX as u64), i64::MIN);
    }

    #[test]
    fn durability_serializes_as_documented() {
        let json = |d: Durability| serde_json::to_string(&d).unwrap();
        assert_eq!(json(Durability::Always), "\"always\"");
        assert_eq!(json(Durability::IntervalMs(50)), "{\"interval_ms\":50}");
        assert_eq!(json(Durability::Never), "\"never\"");
    }

    #[test]
    fn a_topic_json_without_an_owner_loads_as_unowned_and_an_owner_round_trips() {
        let old = serde_json::to_string(&TopicConfig::default()).unwrap();
        assert!(!old.contains("owner"), "an unowned topic.json is what older versions wrote");
        let back: TopicConfig = serde_json::from_str(&old).unwrap();
        assert_eq!(back.owner, None);
        let owned = TopicConfig { owner: Some("team-crm".into()), ..Default::default() };
        owned.validate().unwrap();
        let back: TopicConfig =
            serde_json::from_str(&serde_json::to_string(&owned).unwrap()).unwrap();
        assert_eq!(back.owner.as_deref(), Some("team-crm"));
        for bad in ["", "a b", "x/y", ".."] {
            let c = TopicConfig { owner: Some(bad.into()), ..Default::default() };
            assert!(c.validate().unwrap_err().to_string().contains("owner"), "{bad:?}");
        }
    }

    #[test]
    fn unknown_fields_are_errors_not_silent_defaults() {
        let err = serde_json::from_str::<TopicConfig>("{\"partitons\": 3}").unwrap_err();
        assert!(err.to_string().contains("partitons"));
    }
}

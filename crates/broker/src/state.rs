//! Broker metadata kept in the log itself, as compacted internal topics, so there is one storage
//! engine and one crash-recovery story.
//!
//! - `__topics`: key = topic name, value = its [`crate::TopicSpec`] as JSON;
//! - `__offsets`: key = (group, topic, partition) in the length-prefixed format of
//!   [`crate::keys`], value = the committed offset as JSON;
//! - `__dlq`: key = (group, dead-letter id) in that format, value = a [`crate::DeadLetter`] as
//!   JSON, tombstone when gone. Its records may be larger than an event: see
//!   [`DLQ_RECORD_BYTES_MAX`];
//! - `__connectors`: key = connector (source or sink) name, value = its position, opaque bytes
//!   owned by the connector (the broker never interprets them);
//! - `__audit`: the audit trail of administrative actions, unkeyed records (the server's JSON,
//!   opaque here) in append order. Not compacted: bounded by retention instead, whichever of
//!   [`AUDIT_RETENTION_MS`] (30 days) and [`AUDIT_RETENTION_BYTES`] (64 MiB, plus at most one
//!   [`AUDIT_SEGMENT_BYTES_MAX`] segment being filled) is reached first.
//!
//! Invariant: every write is an `always`-durability append, so state acknowledged to a client
//! survives a crash; on open the newest value per key wins. Like every `__` topic, `__audit` can be
//! neither created, deleted nor produced to through the broker's topic API (`ReservedTopic`, and
//! internal topics are not in the user topic table, so a produce finds no such topic).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use driftless_core::TopicName;
use driftless_log::{Cleanup, Log, LogError, NewRecord, Partition, TopicConfig};

use crate::error::{BrokerError, Result};

pub(crate) const TOPICS: &str = "__topics";
pub(crate) const OFFSETS: &str = "__offsets";
pub(crate) const DLQ: &str = "__dlq";
pub(crate) const CONNECTORS: &str = "__connectors";
/// The audit trail's internal topic.
pub const AUDIT: &str = "__audit";

/// How long audit records are kept: 30 days (sealed segments older than that are deleted).
pub const AUDIT_RETENTION_MS: u64 = 30 * 24 * 3600 * 1000;
/// Most bytes of audit records kept: 64 MiB (the oldest sealed segments go first). At a few
/// hundred bytes a record, that is a few hundred thousand administrative actions.
pub const AUDIT_RETENTION_BYTES: u64 = 64 << 20;
/// Size of one `__audit` segment, the unit in which retention deletes: 4 MiB.
pub const AUDIT_SEGMENT_BYTES_MAX: u64 = 4 << 20;
/// Largest audit record: 16 KiB (the server's records are a few hundred bytes; names in them
/// are bounded).
pub const AUDIT_RECORD_BYTES_MAX: usize = 16 << 10;
/// An `__audit` segment is sealed after a day, so retention by age also works when actions are
/// rare.
const AUDIT_SEGMENT_MS_MAX: u64 = 24 * 3600 * 1000;

/// Largest event record the broker stores: the log's default `record_bytes_max`, which every
/// user topic has (a test checks the two agree).
pub(crate) const EVENT_RECORD_BYTES_MAX: usize = 1 << 20;
/// Bound on what a dead letter's record holds besides its event: its key, ids, names, numbers,
/// field names and the bounded error history, each error byte escaped as at most 6 JSON bytes
/// (`\u00XX`). The stored event is never longer re-serialised than as stored (numbers keep their
/// text, `arbitrary_precision`; no string escape grows), so the event part is at most
/// [`EVENT_RECORD_BYTES_MAX`].
pub(crate) const DEAD_LETTER_METADATA_BYTES_MAX: usize = 128 << 10;
/// `__dlq`'s record limit: a dead letter of the largest acceptable event with its metadata
/// always fits, so dead-lettering never fails for size.
pub(crate) const DLQ_RECORD_BYTES_MAX: usize =
    EVENT_RECORD_BYTES_MAX + DEAD_LETTER_METADATA_BYTES_MAX;
const _: () = assert!(
    crate::groups::ERRORS_KEPT_MAX * (6 * crate::groups::ERROR_BYTES_MAX + 3) + (8 << 10)
        <= DEAD_LETTER_METADATA_BYTES_MAX
);

/// A value and the offset it was stored at; `None` for a tombstone.
pub(crate) type Versioned = (u64, Option<Bytes>);

/// One compacted key-value internal topic with a single partition.
#[derive(Debug, Clone)]
pub(crate) struct KvTopic {
    pub name: &'static str,
    pub partition: Arc<Partition>,
}

impl KvTopic {
    /// Opens (or creates) the internal topic `name` whose records hold up to
    /// `record_bytes_max` bytes.
    pub fn open(log: &Log, name: &'static str, record_bytes_max: usize) -> Result<Self> {
        let topic_name = TopicName::new(name)?;
        let topic = match log.topic(&topic_name) {
            Some(t) => t,
            None => log.create_topic(
                &topic_name,
                TopicConfig {
                    cleanup: Cleanup::Compact,
                    segment_bytes_max: 16 << 20,
                    record_bytes_max,
                    ..TopicConfig::default()
                },
            )?,
        };
        if topic.config().record_bytes_max < record_bytes_max {
            // A data directory created by an older version: the log cannot change a topic's
            // limit in place yet. Writes that do not fit fail and change nothing (a dead letter
            // that does not fit leaves its event pending), so this is a warning, not an error.
            tracing::warn!(
                topic = name,
                record_bytes_max = topic.config().record_bytes_max,
                wanted = record_bytes_max,
                "internal topic has a smaller record limit than this version uses; dead letters \
                 of events near the event size limit cannot be written and stay pending"
            );
        }
        Ok(Self { name, partition: Arc::clone(topic.partition(0)?) })
    }

    /// Every key's newest value (`None` for a tombstone) and its offset, in key order.
    pub fn load(&self) -> Result<BTreeMap<Vec<u8>, Versioned>> {
        let mut out = BTreeMap::new();
        let mut next = self.partition.start_offset();
        while next < self.partition.end_offset() {
            let batch = self.partition.read(next, 10_000, 8 << 20)?;
            for r in batch.records {
                let Some(key) = r.key else {
                    return Err(BrokerError::CorruptState {
                        topic: self.name,
                        offset: r.offset,
                        reason: "record without a key".into(),
                    });
                };
                out.insert(key.to_vec(), (r.offset, r.value));
            }
            next = batch.next_offset;
        }
        Ok(out)
    }

    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.append(&[NewRecord::keyed(key, value)])
    }

    pub fn put_many(&self, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let records: Vec<_> = entries.iter().map(|(k, v)| NewRecord::keyed(k, v)).collect();
        self.append(&records)
    }

    /// Tombstones for `keys`, in one durable append.
    pub fn delete_many(&self, keys: &[Vec<u8>]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let records: Vec<_> = keys.iter().map(|k| NewRecord::tombstone(k)).collect();
        self.append(&records)
    }

    pub fn delete(&self, key: &[u8]) -> Result<()> {
        self.append(&[NewRecord::tombstone(key)])
    }

    /// One durable append. A poisoned partition is reported as what it means for the broker
    /// (every group's acks fail while `__offsets` is poisoned) and how to recover.
    fn append(&self, records: &[NewRecord<'_>]) -> Result<()> {
        match self.partition.append(records) {
            Ok(_) => Ok(()),
            Err(LogError::Poisoned { cause, .. }) => Err(BrokerError::InternalTopicPoisoned {
                topic: self.name,
                consequence: match self.name {
                    OFFSETS => "every consumer group's acknowledgements and seeks fail",
                    DLQ => "dead letters cannot be written (their events stay pending)",
                    TOPICS => "topics cannot be created or deleted",
                    _ => "connectors cannot store their positions",
                },
                cause: cause.to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// Opens (or creates) `__audit`: one partition, deletion by age and size (see the module
/// documentation), every append fsynced.
pub(crate) fn open_audit(log: &Log) -> Result<Arc<Partition>> {
    let topic_name = TopicName::new(AUDIT)?;
    let topic = match log.topic(&topic_name) {
        Some(t) => t,
        None => log.create_topic(
            &topic_name,
            TopicConfig {
                cleanup: Cleanup::Delete,
                retention_ms: Some(AUDIT_RETENTION_MS),
                retention_bytes: Some(AUDIT_RETENTION_BYTES),
                segment_bytes_max: AUDIT_SEGMENT_BYTES_MAX,
                segment_ms_max: AUDIT_SEGMENT_MS_MAX,
                record_bytes_max: AUDIT_RECORD_BYTES_MAX,
                batch_bytes_max: 1 << 20,
                unsynced_bytes_max: 1 << 20,
                ..TopicConfig::default()
            },
        )?,
    };
    Ok(Arc::clone(topic.partition(0)?))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    topic: &'static str,
    offset: u64,
    bytes: &[u8],
) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| BrokerError::CorruptState {
        topic,
        offset,
        reason: e.to_string(),
    })
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain structs of strings and numbers cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

pub(crate) use crate::keys::{dlq_key, offset_key};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::{push_error, ERRORS_KEPT_MAX};
    use crate::{DeadLetter, DeadLetterState};

    #[test]
    fn a_dead_letter_of_the_largest_event_with_the_longest_history_fits_in_a_dlq_record() {
        assert_eq!(EVENT_RECORD_BYTES_MAX, TopicConfig::default().record_bytes_max);
        let event =
            serde_json::json!({ "id": "e", "data": "x".repeat(EVENT_RECORD_BYTES_MAX - 32) });
        let mut errors = Vec::new();
        for _ in 0..2 * ERRORS_KEPT_MAX {
            // Control characters: six bytes each once escaped.
            push_error(&mut errors, "\u{1}".repeat(5_000));
        }
        let (group, topic) = ("g".repeat(249), "t".repeat(249));
        let dead = DeadLetter {
            id: format!("{topic}:{}:{}", u32::MAX, u64::MAX),
            group,
            topic,
            partition: u32::MAX,
            offset: u64::MAX,
            event,
            attempts: u32::MAX,
            errors,
            dead_at_ms: i64::MIN,
            state: DeadLetterState::Retrying,
        };
        let record = dlq_key(&dead.group, &dead.id).len() + encode(&dead).len();
        assert!(record <= DLQ_RECORD_BYTES_MAX, "{record} > {DLQ_RECORD_BYTES_MAX}");
    }
}

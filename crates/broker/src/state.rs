//! Broker metadata kept in the log itself, as compacted internal topics, so there is one storage
//! engine and one crash-recovery story.
//!
//! - `__topics`: key = topic name, value = its [`crate::TopicSpec`] as JSON;
//! - `__offsets`: key = `group \0 topic \0 partition`, value = the committed offset as JSON;
//! - `__dlq`: key = dead-letter id, value = a [`crate::DeadLetter`] as JSON, tombstone when gone;
//! - `__connectors`: key = connector (source or sink) name, value = its position, opaque bytes
//!   owned by the connector (the broker never interprets them).
//!
//! Invariant: every write is an `always`-durability append, so state acknowledged to a client
//! survives a crash; on open the newest value per key wins.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use driftless_core::TopicName;
use driftless_log::{Cleanup, Log, NewRecord, Partition, TopicConfig};

use crate::error::{BrokerError, Result};

pub(crate) const TOPICS: &str = "__topics";
pub(crate) const OFFSETS: &str = "__offsets";
pub(crate) const DLQ: &str = "__dlq";
pub(crate) const CONNECTORS: &str = "__connectors";

/// A value and the offset it was stored at; `None` for a tombstone.
pub(crate) type Versioned = (u64, Option<Bytes>);

/// One compacted key-value internal topic with a single partition.
#[derive(Debug, Clone)]
pub(crate) struct KvTopic {
    pub name: &'static str,
    pub partition: Arc<Partition>,
}

impl KvTopic {
    pub fn open(log: &Log, name: &'static str) -> Result<Self> {
        let topic_name = TopicName::new(name)?;
        let topic = match log.topic(&topic_name) {
            Some(t) => t,
            None => log.create_topic(
                &topic_name,
                TopicConfig {
                    cleanup: Cleanup::Compact,
                    segment_bytes_max: 16 << 20,
                    ..TopicConfig::default()
                },
            )?,
        };
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
        self.partition.append(&[NewRecord::keyed(key, value)])?;
        Ok(())
    }

    pub fn put_many(&self, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let records: Vec<_> = entries.iter().map(|(k, v)| NewRecord::keyed(k, v)).collect();
        self.partition.append(&records)?;
        Ok(())
    }

    /// Tombstones for `keys`, in one durable append.
    pub fn delete_many(&self, keys: &[Vec<u8>]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let records: Vec<_> = keys.iter().map(|k| NewRecord::tombstone(k)).collect();
        self.partition.append(&records)?;
        Ok(())
    }

    pub fn delete(&self, key: &[u8]) -> Result<()> {
        self.partition.append(&[NewRecord::tombstone(key)])?;
        Ok(())
    }
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

/// The `__dlq` key of a group's dead letter. Dead-letter ids (`topic:partition:offset`) are
/// unique only within a group: two groups refusing the same event must not share a record.
pub(crate) fn dlq_key(group: &str, id: &str) -> Vec<u8> {
    format!("{group}\0{id}").into_bytes()
}

pub(crate) fn offset_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    format!("{group}\0{topic}\0{partition}").into_bytes()
}

//! A topic as the source of truth: its events, read in the log's order and folded through the
//! sink's own mapping, give each key's expected row, which is hashed in-process the way the
//! projection's database renders it.
//!
//! Invariants:
//! - folding applies the mapping exactly as the sink does (upserts merge the columns they write,
//!   deletes remove the key), so the expected row is what a clean pass would leave;
//! - at most `rows_max` keys are held; a larger topic is refused with the limit named;
//! - values are rendered as the projection's database renders its columns as text (booleans as
//!   `1`/`0` in SQLite and `true`/`false` in Postgres); JSON objects and arrays are compact JSON,
//!   which Postgres's `jsonb` text (with spaces) does not match — compare such columns only with a
//!   SQLite projection or leave them out.

use std::collections::BTreeMap;

use driftless_broker::Broker;
use driftless_core::TopicName;
use driftless_sink::config::OpKind;
use driftless_sink::mapping::Mapper;
use serde_json::Value;

use crate::db::RowHashes;
use crate::digest::{bucket, halves, BucketDigest, NULL_MARKER, UNIT_SEPARATOR};

/// Most keys a topic source may hold while folded (about an event's size each, in memory).
pub const KEYS_MAX: usize = 1_000_000;

/// Records read per call while folding.
const READ_RECORDS_MAX: usize = 10_000;
/// Bytes read per call while folding.
const READ_BYTES_MAX: usize = 8 << 20;

/// One key's folded state.
#[derive(Debug, Clone)]
struct Entry {
    columns: BTreeMap<String, Value>,
    /// The latest event that touched the key, as its stored text (a parsed `Value` tree took
    /// several times the text's memory, for every key), and its version (`sequence` or padded
    /// offset).
    event: Box<str>,
    version: String,
}

/// Every key's expected row, hashed.
#[derive(Debug, Default)]
pub struct Folded {
    /// Key text → its expected row.
    rows: BTreeMap<String, Row>,
}

/// One key's expected row.
#[derive(Debug)]
struct Row {
    hashes: (i64, i64),
    /// The latest event's text and its version.
    event: Box<str>,
    version: String,
}

fn render(v: &Value, sqlite: bool) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) if sqlite => Some(if *b { "1" } else { "0" }.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => Some(other.to_string()),
    }
}

/// Reads `topic` from its start and folds it through `mapper` into the rows of `table`.
#[allow(clippy::too_many_arguments)]
pub fn fold(
    broker: &Broker,
    topic: &str,
    mapper: &Mapper,
    table: &str,
    compared: &[String],
    sqlite: bool,
    rows_max: usize,
) -> Result<Folded, String> {
    let name = TopicName::new(topic).map_err(|e| e.to_string())?;
    let t = broker.log().topic(&name).ok_or_else(|| format!("topic `{topic}` does not exist"))?;
    let mut state: BTreeMap<String, Entry> = BTreeMap::new();
    for partition in t.partitions() {
        let mut at = partition.start_offset();
        loop {
            let batch = partition
                .read(at, READ_RECORDS_MAX, READ_BYTES_MAX)
                .map_err(|e| format!("reading `{topic}`: {e}"))?;
            if batch.records.is_empty() {
                break;
            }
            at = batch.next_offset;
            for r in batch.records {
                let Some(value) = r.value else { continue };
                let Ok(event) = std::str::from_utf8(&value) else { continue };
                // An event the mapping refuses is what the sink dead-letters: it made no row.
                // Mapped from its text, as the sink maps it.
                let Ok(mapped) = mapper.map_json(event, r.offset) else { continue };
                for op in mapped.ops.into_iter().filter(|op| op.table == table) {
                    let key = op
                        .key
                        .iter()
                        .map(|(_, v)| render(v, sqlite).unwrap_or_default())
                        .collect::<Vec<_>>();
                    let key = key.join(&UNIT_SEPARATOR.to_string());
                    match op.op {
                        OpKind::Delete => {
                            state.remove(&key);
                        }
                        OpKind::Upsert => {
                            let e = state.entry(key).or_insert_with(|| Entry {
                                columns: BTreeMap::new(),
                                event: Box::default(),
                                version: String::new(),
                            });
                            e.columns.extend(op.columns);
                            e.event = event.into();
                            e.version = op.version;
                        }
                    }
                }
                if state.len() > rows_max {
                    return Err(format!(
                        "topic `{topic}` holds more than {rows_max} keys (drifted_keys_max); \
                         compare a table instead, or raise the limit"
                    ));
                }
            }
        }
    }
    let rows = state
        .into_iter()
        .map(|(key, e)| {
            let mut text = key.clone();
            for c in compared {
                text.push(UNIT_SEPARATOR);
                match e.columns.get(c).and_then(|v| render(v, sqlite)) {
                    Some(v) => text.push_str(&v),
                    None => text.push(NULL_MARKER),
                }
            }
            (key, Row { hashes: halves(&text), event: e.event, version: e.version })
        })
        .collect();
    Ok(Folded { rows })
}

impl Folded {
    /// Keys held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Every bucket's digest.
    pub fn buckets(&self, n: i64) -> BTreeMap<i64, BucketDigest> {
        let mut out: BTreeMap<i64, BucketDigest> = BTreeMap::new();
        for (key, Row { hashes: (h1, h2), .. }) in &self.rows {
            let d = out.entry(bucket(key, n)).or_default();
            d.rows += 1;
            d.h1 += h1;
            d.h2 += h2;
        }
        out
    }

    /// The rows of `buckets`.
    pub fn rows_in(&self, n: i64, buckets: &[i64]) -> RowHashes {
        let wanted: std::collections::BTreeSet<i64> = buckets.iter().copied().collect();
        self.rows
            .iter()
            .filter(|(k, _)| wanted.contains(&bucket(k, n)))
            .map(|(k, row)| (k.clone(), row.hashes))
            .collect()
    }

    /// The rows of `keys`.
    pub fn rows_for_keys(&self, keys: &[String]) -> RowHashes {
        keys.iter().filter_map(|k| self.rows.get(k).map(|row| (k.clone(), row.hashes))).collect()
    }

    /// The latest event of `key`, parsed, and its version: what a correction re-emits.
    pub fn latest(&self, key: &str) -> Option<(Value, &str)> {
        let row = self.rows.get(key)?;
        Some((serde_json::from_str(&row.event).ok()?, row.version.as_str()))
    }
}

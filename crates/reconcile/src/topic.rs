//! A topic as the source of truth: its events, read in the log's order and folded through the
//! sink's own mapping, give each key's expected row, which is hashed in-process the way the
//! projection's database renders it.
//!
//! Invariants:
//! - folding applies the mapping exactly as the sink does (upserts merge the columns they write,
//!   deletes remove the key, an event the sink would refuse changes nothing), so the expected
//!   row is what a clean pass would leave;
//! - a value the event does not carry (`data.unchanged`: an unchanged TOASTed value) is kept
//!   from the key's row, and a new row (a key change's insert) carries it from the row under
//!   `data.moved_from`, as the sink does — never expected as NULL. The old key's row is the one
//!   folded when its delete is read; when that delete was read before the insert (the same
//!   partition, or an earlier one), the topic is read a second time for those old keys only;
//! - every value is rendered as the projection's database renders what the sink writes for it,
//!   through the sink's own conversions ([`driftless_sink::values`]): in Postgres the text the
//!   column type's input reads (`bytea` decoded from base64 into `\x` hex, a JSON string as the
//!   text of a `json`/`jsonb` column, numbers digit for digit), in SQLite the stored value as
//!   `CAST(… AS TEXT)` prints it (REALs printed by SQLite itself, an integral one as its integer,
//!   BLOBs as `\x` hex). Event
//!   values in the README's forms (CDC's) then compare exactly; a value that is not the text its
//!   column prints (`0.10` for a `float8`, a JSON object for a `jsonb` column, an RFC 3339 time
//!   for a `timestamptz`) shows as drift even in a correct projection — never the other way;
//! - at most `rows_max` keys are held; a larger topic is refused with the limit named.

use std::collections::{BTreeMap, BTreeSet};

use driftless_broker::Broker;
use driftless_core::TopicName;
use driftless_sink::config::OpKind;
use driftless_sink::mapping::{Mapper, RowOp};
use driftless_sink::values::{pg_text, sqlite_value, PgKind};
use rusqlite::types::Value as Sql;
use serde_json::Value;

use crate::db::RowHashes;
use crate::digest::{bucket, halves, BucketDigest, NULL_MARKER, UNIT_SEPARATOR};

/// Most keys a topic source may hold while folded (about an event's size each, in memory).
pub const KEYS_MAX: usize = 1_000_000;

/// Records read per call while folding.
const READ_RECORDS_MAX: usize = 10_000;
/// Bytes read per call while folding.
const READ_BYTES_MAX: usize = 8 << 20;

/// How the projection's database holds its columns: what a folded value is rendered by.
#[derive(Debug, Clone)]
pub enum Target {
    /// Postgres: each column's kind as the sink chooses it
    /// ([`driftless_sink::postgres::column_kinds`]); a column not listed is text.
    Postgres(BTreeMap<String, PgKind>),
    /// SQLite: the columns whose declared type makes them `BLOB`
    /// ([`driftless_sink::values::sqlite_blob`]).
    Sqlite(BTreeSet<String>),
}

/// Renders values as the target's database prints them.
struct Renderer<'t> {
    target: &'t Target,
    /// SQLite prints its own REALs (`CAST(… AS TEXT)`, digits and exponent its own way): an
    /// in-memory database prints each one, the library the projection is read with.
    lite: Option<rusqlite::Connection>,
}

impl<'t> Renderer<'t> {
    fn new(target: &'t Target) -> Result<Self, String> {
        let lite = match target {
            Target::Postgres(_) => None,
            Target::Sqlite(_) => {
                Some(rusqlite::Connection::open_in_memory().map_err(|e| e.to_string())?)
            }
        };
        Ok(Self { target, lite })
    }

    /// `v`, written by the sink into `column`, as the projection's database renders it as text;
    /// `None` for NULL; an error where the sink refuses the value (and so the event).
    fn text(&self, column: &str, v: &Value) -> Result<Option<String>, String> {
        match self.target {
            Target::Postgres(kinds) => pg_text(v, kinds.get(column).unwrap_or(&PgKind::Text))
                .map_err(|e| format!("{column}: {e}")),
            Target::Sqlite(blobs) => {
                let value = sqlite_value(v, blobs.contains(column))
                    .map_err(|e| format!("{column}: {e}"))?;
                Ok(match value {
                    Sql::Null => None,
                    Sql::Integer(i) => Some(i.to_string()),
                    Sql::Text(s) => Some(s),
                    Sql::Blob(bytes) => Some(hex_text(&bytes)),
                    Sql::Real(x) => {
                        let lite = self.lite.as_ref().ok_or("no SQLite to print a REAL")?;
                        let text: String = lite
                            .prepare_cached(&format!(
                                "SELECT {}",
                                crate::db::sqlite_real_text_sql("?1")
                            ))
                            .and_then(|mut s| s.query_row([x], |r| r.get(0)))
                            .map_err(|e| e.to_string())?;
                        Some(text)
                    }
                })
            }
        }
    }
}

/// Bytes as Postgres prints a `bytea` (and the projection's SQLite text of a BLOB): `\x` and
/// lowercase hex.
fn hex_text(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 + bytes.len() * 2);
    out.push_str("\\x");
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xF)]));
    }
    out
}

/// A compared column's rendered text (`None`: NULL).
type Texts = BTreeMap<String, Option<String>>;

/// One key's folded state.
#[derive(Debug, Clone, Default)]
struct Entry {
    /// The compared columns written so far, rendered.
    columns: Texts,
    /// A key change's insert made this row without some compared values (unchanged TOAST): the
    /// old key's text and those columns, to carry from the old key's row.
    carry: Option<(String, Vec<String>)>,
    /// The latest event that touched the key, as its stored text (a parsed `Value` tree took
    /// several times the text's memory, for every key), and its version (`sequence` or padded
    /// offset).
    event: Box<str>,
    version: String,
}

/// One row operation of an event, rendered.
struct Op {
    op: OpKind,
    key: String,
    /// The compared columns it writes.
    columns: Texts,
    /// The compared columns it does not carry (unchanged TOAST).
    unchanged: Vec<String>,
    /// The old key's text, for a key change's insert.
    moved_from: Option<String>,
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
    /// Each compared column's hash (the first half of its text's), to name differing columns.
    columns: Box<[u32]>,
    /// The latest event's text and its version.
    event: Box<str>,
    version: String,
}

/// What a fold reads from the topic.
struct Reader<'a> {
    broker: &'a Broker,
    topic: &'a str,
    mapper: &'a Mapper,
    table: &'a str,
    compared: &'a BTreeSet<&'a str>,
    render: &'a Renderer<'a>,
}

impl Reader<'_> {
    /// Calls `each` with every event's text and its row operations on the table, in the log's
    /// order per partition (an error from `each` stops the read).
    fn for_each(
        &self,
        mut each: impl FnMut(&str, Vec<Op>) -> Result<(), String>,
    ) -> Result<(), String> {
        let topic = self.topic;
        let name = TopicName::new(topic).map_err(|e| e.to_string())?;
        let t = self
            .broker
            .log()
            .topic(&name)
            .ok_or_else(|| format!("topic `{topic}` does not exist"))?;
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
                    // An event the mapping refuses, or with a value its column refuses, is what
                    // the sink dead-letters: it made no row. Mapped from its text, as the sink
                    // maps it.
                    let Ok(mapped) = self.mapper.map_json(event, r.offset) else { continue };
                    let ops: Result<Vec<Op>, String> = mapped
                        .ops
                        .into_iter()
                        .filter(|op| op.table == self.table)
                        .map(|op| self.op(op))
                        .collect();
                    if let Ok(ops) = ops {
                        each(event, ops)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// `op` rendered: every value is converted (as the sink would, refusing what it refuses),
    /// the compared ones kept.
    fn op(&self, op: RowOp) -> Result<Op, String> {
        let key_text =
            |values: &mut dyn Iterator<Item = (&str, &Value)>| -> Result<String, String> {
                let mut parts = Vec::new();
                for (name, v) in values {
                    parts.push(self.render.text(name, v)?.unwrap_or_default());
                }
                Ok(parts.join(&UNIT_SEPARATOR.to_string()))
            };
        let key = key_text(&mut op.key.iter().map(|(n, v)| (n.as_str(), v)))?;
        let moved_from = match &op.moved_from {
            Some(values) => {
                Some(key_text(&mut op.key.iter().map(|(n, _)| n.as_str()).zip(values.iter()))?)
            }
            None => None,
        };
        let mut columns = Texts::new();
        for (c, v) in &op.columns {
            let text = self.render.text(c, v)?;
            if self.compared.contains(c.as_str()) {
                columns.insert(c.clone(), text);
            }
        }
        let unchanged =
            op.unchanged.into_iter().filter(|c| self.compared.contains(c.as_str())).collect();
        Ok(Op { op: op.op, key, columns, unchanged, moved_from, version: op.version })
    }
}

/// Reads `topic` from its start and folds it through `mapper` into the rows of `table`, each
/// value rendered as `target` holds it.
pub fn fold(
    broker: &Broker,
    topic: &str,
    mapper: &Mapper,
    table: &str,
    compared: &[String],
    target: &Target,
    rows_max: usize,
) -> Result<Folded, String> {
    let render = Renderer::new(target)?;
    let names: BTreeSet<&str> = compared.iter().map(String::as_str).collect();
    let reader = Reader { broker, topic, mapper, table, compared: &names, render: &render };
    let mut state: BTreeMap<String, Entry> = BTreeMap::new();
    // Old keys of key changes still to carry from → the rows they held when deleted.
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    let mut captured: BTreeMap<String, Texts> = BTreeMap::new();
    reader.for_each(|event, ops| {
        for op in ops {
            match op.op {
                OpKind::Delete => {
                    if let Some(gone) = state.remove(&op.key) {
                        if wanted.contains(&op.key) {
                            captured.insert(op.key, gone.columns);
                        }
                    }
                }
                OpKind::Upsert => {
                    let new = !state.contains_key(&op.key);
                    if new && !op.unchanged.is_empty() {
                        // A new row without some values: the sink carries them from the row
                        // under the old key, or refuses the event.
                        let Some(old) = op.moved_from.clone() else { continue };
                        match state.get(&old) {
                            Some(o) => {
                                let values: Option<Texts> = op
                                    .unchanged
                                    .iter()
                                    .map(|c| Some((c.clone(), Some(carried(&o.columns, c)?))))
                                    .collect();
                                let Some(values) = values else { continue };
                                state.entry(op.key.clone()).or_default().columns.extend(values);
                            }
                            None => {
                                wanted.insert(old.clone());
                                let e = state.entry(op.key.clone()).or_default();
                                e.carry = Some((old, op.unchanged.clone()));
                            }
                        }
                    }
                    let e = state.entry(op.key).or_default();
                    if let Some((_, missing)) = &mut e.carry {
                        missing.retain(|c| !op.columns.contains_key(c));
                        if missing.is_empty() {
                            e.carry = None;
                        }
                    }
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
        Ok(())
    })?;
    // Old keys deleted before their key change's insert was read: read the topic again for them.
    let missed: BTreeSet<String> = state
        .values()
        .filter_map(|e| e.carry.as_ref().map(|(old, _)| old))
        .filter(|old| !captured.contains_key(*old))
        .cloned()
        .collect();
    if !missed.is_empty() {
        let mut old_rows: BTreeMap<String, Texts> = BTreeMap::new();
        reader.for_each(|_, ops| {
            for op in ops.into_iter().filter(|op| missed.contains(&op.key)) {
                match op.op {
                    OpKind::Delete => {
                        if let Some(gone) = old_rows.remove(&op.key) {
                            captured.insert(op.key, gone);
                        }
                    }
                    OpKind::Upsert => old_rows.entry(op.key).or_default().extend(op.columns),
                }
            }
            Ok(())
        })?;
        // An old key whose row is still there at the end is carried from as it is.
        for (old, row) in old_rows {
            captured.entry(old).or_insert(row);
        }
    }
    // Carry; a row whose values cannot be carried was refused by the sink: it is not there.
    state.retain(|_, e| match e.carry.take() {
        None => true,
        Some((old, missing)) => {
            let from = captured.get(&old);
            let values: Option<Texts> =
                missing.iter().map(|c| Some((c.clone(), Some(carried(from?, c)?)))).collect();
            match values {
                Some(values) => {
                    e.columns.extend(values);
                    true
                }
                None => false,
            }
        }
    });
    let rows = state
        .into_iter()
        .map(|(key, e)| {
            let mut text = key.clone();
            let mut columns = Vec::with_capacity(compared.len());
            for c in compared {
                text.push(UNIT_SEPARATOR);
                let start = text.len();
                match e.columns.get(c).and_then(Option::as_deref) {
                    Some(v) => text.push_str(v),
                    None => text.push(NULL_MARKER),
                }
                columns.push(halves(&text[start..]).0 as u32);
            }
            let row = Row {
                hashes: halves(&text),
                columns: columns.into(),
                event: e.event,
                version: e.version,
            };
            (key, row)
        })
        .collect();
    Ok(Folded { rows })
}

/// The value a key change carries from the old row's `column`: its text, if it has one (the
/// sink refuses to carry a NULL or a value the row does not hold).
fn carried(old: &Texts, column: &str) -> Option<String> {
    old.get(column).cloned().flatten()
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
        let wanted: BTreeSet<i64> = buckets.iter().copied().collect();
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

    /// Each compared column's hash in the rows of `keys` (as [`crate::db::Conn::column_hashes`]).
    pub fn column_hashes(&self, keys: &[String]) -> BTreeMap<String, Vec<i64>> {
        keys.iter()
            .filter_map(|k| {
                let row = self.rows.get(k)?;
                Some((k.clone(), row.columns.iter().map(|h| i64::from(*h)).collect()))
            })
            .collect()
    }

    /// The latest event of `key`, parsed, and its version: what a correction re-emits.
    pub fn latest(&self, key: &str) -> Option<(Value, &str)> {
        let row = self.rows.get(key)?;
        Some((serde_json::from_str(&row.event).ok()?, row.version.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use driftless_broker::{BrokerConfig, TopicSpec};
    use driftless_core::Event;
    use driftless_sink::SinkConfig;
    use serde_json::json;

    use super::*;

    fn upsert(id: i64, after: Value, moved_from: Option<i64>) -> Event {
        let mut e = Event::new(format!("u{id}-{}", moved_from.is_some()), "/t", "upserted");
        e.subject = Some(id.to_string());
        e.data = Some(match moved_from {
            Some(old) => json!({"after": after, "unchanged": ["body"], "moved_from": {"id": old}}),
            None => json!({ "after": after }),
        });
        e
    }

    fn delete(id: i64) -> Event {
        let mut e = Event::new(format!("d{id}"), "/t", "deleted");
        e.subject = Some(id.to_string());
        e
    }

    /// Folds `events` (one partition, in this order) into `items (id, body, n)`.
    fn fold_events(events: Vec<Event>) -> Folded {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
        broker.create_topic("t", TopicSpec { partitions: 1, ..TopicSpec::default() }).unwrap();
        broker.produce("t", events).unwrap();
        let sink: SinkConfig = toml::from_str(
            r#"
            name = "s"
            topics = ["t"]
            target = { kind = "postgres", url = "postgres://x@127.0.0.1/p" }
            [[mapping]]
            types = ["upserted"]
            table = "items"
            key = ["id"]
            columns = { id = ".data.after.id", body = ".data.after.body", n = ".data.after.n" }
            [[mapping]]
            types = ["deleted"]
            table = "items"
            key = ["id"]
            op = "delete"
            "#,
        )
        .unwrap();
        let mapper = Mapper::compile("s", &sink.mappings).unwrap();
        let compared = ["body".to_string(), "n".to_string()];
        let target = Target::Postgres(BTreeMap::new());
        fold(&broker, "t", &mapper, "items", &compared, &target, 100).unwrap()
    }

    fn hashes(texts: &[&str]) -> Vec<i64> {
        texts.iter().map(|t| halves(t).0).collect()
    }

    #[test]
    fn a_key_change_carries_its_unchanged_value_whether_the_old_key_is_deleted_before_or_after() {
        let old = || upsert(13, json!({"id": 13, "body": "large", "n": 1}), None);
        let moved = || upsert(14, json!({"id": 14, "n": 2}), Some(13));
        // As the CDC source writes a key change: the old key's delete, then the insert.
        for events in [vec![old(), delete(13), moved()], vec![old(), moved(), delete(13)]] {
            let folded = fold_events(events);
            assert_eq!(folded.len(), 1);
            let keys = ["13".to_string(), "14".to_string()];
            let columns = folded.column_hashes(&keys);
            assert_eq!(columns.get("14"), Some(&hashes(&["large", "2"])), "never NULL");
            assert!(!columns.contains_key("13"));
        }
    }

    #[test]
    fn a_key_change_with_nothing_to_carry_from_makes_no_row_as_the_sink_refuses_it() {
        let folded = fold_events(vec![upsert(14, json!({"id": 14, "n": 2}), Some(13))]);
        assert!(folded.is_empty());
        let later = upsert(14, json!({"id": 14, "body": "full", "n": 3}), None);
        let folded = fold_events(vec![upsert(14, json!({"id": 14, "n": 2}), Some(13)), later]);
        assert_eq!(folded.column_hashes(&["14".into()])["14"], hashes(&["full", "3"]));
    }
}

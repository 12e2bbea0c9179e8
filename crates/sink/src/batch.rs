//! A batch of mapped events on its way to a table target, and what the SQL targets share:
//! collapsing several operations on one row into the newest, grouping upserts by the columns
//! they write, and the positions the batch covers.
//!
//! Invariant: after [`collapse`], a (table, key) appears at most once, holding the operation
//! with the highest version (the latest in the batch on a tie) — one statement can then write
//! every row without touching one twice, and the result equals applying the events one by one
//! under the version guard.

use std::collections::BTreeMap;

use driftless_core::sql::quote_ident;

use crate::config::OpKind;
use crate::mapping::RowOp;

/// One delivered event and the row operations its mappings produced.
#[derive(Debug, Clone)]
pub struct Item {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// The event's `time`, Unix ms (0 when absent or unreadable).
    pub event_time_ms: i64,
    /// The operations (none: no mapping took the event).
    pub ops: Vec<RowOp>,
}

/// The highest offset and newest event time per (topic, partition) of a batch.
pub fn positions(items: &[&Item]) -> BTreeMap<(String, u32), (u64, i64)> {
    let mut out: BTreeMap<(String, u32), (u64, i64)> = BTreeMap::new();
    for it in items {
        let e =
            out.entry((it.topic.clone(), it.partition)).or_insert((it.offset, it.event_time_ms));
        e.0 = e.0.max(it.offset);
        e.1 = e.1.max(it.event_time_ms);
    }
    out
}

/// One statement's worth of rows: same table, same operation, same columns.
#[derive(Debug)]
pub struct Group<'a> {
    /// Target table.
    pub table: &'a str,
    /// Upsert or delete.
    pub op: OpKind,
    /// Key column names.
    pub key: Vec<&'a str>,
    /// Written column names (sorted; key columns included).
    pub columns: Vec<&'a str>,
    /// Columns whose values the events do not carry (`RowOp::unchanged`, the same for every
    /// operation of the group): kept on an existing row, carried from the old key on a new one.
    pub unchanged: Vec<&'a str>,
    /// Deletes that keep the deleted rows' values in their tombstones (`RowOp::keep_row`).
    pub keep_rows: bool,
    /// The operations.
    pub ops: Vec<&'a RowOp>,
}

impl Group<'_> {
    /// The quoted parts of this group's guarded upsert that every SQL dialect here writes the
    /// same way: the written columns, the conflict key, and the `SET` list (every non-key column
    /// and `version_column` taken from the `EXCLUDED` row), each joined with `, `.
    pub fn upsert_parts(&self, version_column: &str) -> UpsertParts {
        let vc = quote_ident(version_column);
        let join = |names: &[&str]| names.iter().map(|c| quote_ident(c)).collect::<Vec<_>>();
        let sets: Vec<String> = self
            .columns
            .iter()
            .filter(|c| !self.key.contains(c))
            .map(|c| quote_ident(c))
            .chain([vc])
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        UpsertParts {
            columns: join(&self.columns).join(", "),
            key: join(&self.key).join(", "),
            sets: sets.join(", "),
        }
    }
}

/// See [`Group::upsert_parts`].
#[derive(Debug)]
pub struct UpsertParts {
    /// `"a", "b"`: the written columns, in order.
    pub columns: String,
    /// The conflict target's columns.
    pub key: String,
    /// `"b" = EXCLUDED."b", "version" = EXCLUDED."version"`.
    pub sets: String,
}

/// What makes a statement: table, delete (0) or upsert (1), written columns, unsent columns,
/// whether deleted rows are kept.
type GroupKey<'a> = (&'a str, u8, Vec<&'a str>, Vec<&'a str>, bool);

/// Keeps the newest operation per (table, key) and groups the survivors into statements.
pub fn collapse<'a>(items: &[&'a Item]) -> Vec<Group<'a>> {
    let mut newest: BTreeMap<(&str, &str), &RowOp> = BTreeMap::new();
    for it in items {
        for op in &it.ops {
            let slot = newest.entry((op.table.as_str(), op.key_text.as_str())).or_insert(op);
            if op.version.as_bytes() >= slot.version.as_bytes() {
                *slot = op;
            }
        }
    }
    // Deletes (kind 0) of a table come before its upserts: a key change's insert can then carry
    // unsent values from the row its delete in the same batch keeps.
    let mut groups: BTreeMap<GroupKey<'a>, Group<'a>> = BTreeMap::new();
    for op in newest.into_values() {
        let columns: Vec<&str> = op.columns.keys().map(String::as_str).collect();
        let mut unchanged: Vec<&str> = op.unchanged.iter().map(String::as_str).collect();
        unchanged.sort_unstable();
        let kind = if op.op == OpKind::Delete { 0 } else { 1 };
        groups
            .entry((op.table.as_str(), kind, columns.clone(), unchanged.clone(), op.keep_row))
            .or_insert_with(|| Group {
                table: &op.table,
                op: op.op,
                key: op.key.iter().map(|(k, _)| k.as_str()).collect(),
                columns,
                unchanged,
                keep_rows: op.keep_row,
                ops: Vec::new(),
            })
            .ops
            .push(op);
    }
    groups.into_values().collect()
}

/// Parses an RFC 3339 timestamp to Unix ms; `None` if it is not one.
pub fn rfc3339_ms(s: &str) -> Option<i64> {
    if !driftless_core::is_rfc3339(s) {
        return None;
    }
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut ms = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let frac = &s[start..i];
        let first3: String = frac.chars().chain("000".chars()).take(3).collect();
        ms = first3.parse::<i64>().ok()?;
    }
    let offset_min = match b.get(i) {
        Some(b'Z' | b'z') => 0,
        Some(sign @ (b'+' | b'-')) => {
            let v = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if *sign == b'+' {
                v
            } else {
                -v
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi - offset_min) * 60_000 + sec * 1000 + ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(table: &str, key: &str, version: &str, op: OpKind) -> RowOp {
        RowOp::new(
            table.into(),
            op,
            vec![("id".into(), json!(key))],
            BTreeMap::from([("id".to_string(), json!(key))]),
            version.into(),
        )
    }

    fn item(offset: u64, ops: Vec<RowOp>) -> Item {
        Item { topic: "t".into(), partition: 0, offset, event_time_ms: offset as i64, ops }
    }

    #[test]
    fn collapse_keeps_the_newest_version_per_row() {
        let a = item(1, vec![op("t", "k", "2", OpKind::Upsert)]);
        let b = item(2, vec![op("t", "k", "1", OpKind::Delete)]); // stale
        let c = item(3, vec![op("t", "j", "5", OpKind::Delete)]);
        let groups = collapse(&[&a, &b, &c]);
        assert_eq!(groups.len(), 2);
        let ops: Vec<_> =
            groups.iter().flat_map(|g| g.ops.iter().map(|o| (o.op, o.version.clone()))).collect();
        assert!(
            ops.contains(&(OpKind::Upsert, "2".into()))
                && ops.contains(&(OpKind::Delete, "5".into()))
        );
        let pos = positions(&[&a, &b, &c]);
        assert_eq!(pos[&("t".to_string(), 0)], (3, 3));
    }

    #[test]
    fn rfc3339_parses_to_unix_ms() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339_ms("2024-02-29T12:00:00.5+01:00"), Some(1_709_204_400_500));
        assert_eq!(rfc3339_ms("not a time"), None);
    }
}

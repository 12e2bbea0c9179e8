//! `[[reconcile]]` entries: which projection (a sink's table) to compare with which source of
//! truth (a Postgres or SQLite table), on which columns, how often, and whether to repair.
//!
//! One definition drives apply and comparison: unless `columns` is given, the compared columns
//! are derived from the sink's mapping — a column mapped from a plain path (`.data.city`,
//! `.data.after.city`) is compared with the source column of the path's last name; computed
//! columns are listed as not compared (give them a SQL expression in `columns` to compare them).
//!
//! Invariant: [`Plan::derive`] runs before anything starts, so a reconciliation that runs has a
//! projection table, key columns in the same order on both sides, and at least one compared
//! column or key.

use std::collections::BTreeMap;
use std::path::PathBuf;

use driftless_core::Secret;
use driftless_sink::config::{OpKind, SinkConfig, TargetConfig};
use serde::{Deserialize, Serialize};

use crate::error::{ReconcileError, Result};

/// One `[[reconcile]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// Unique name.
    pub name: String,
    /// The sink whose projection is checked.
    pub sink: String,
    /// The projection table (default: the sink's only table).
    #[serde(default)]
    pub table: Option<String>,
    /// The source of truth.
    pub source: SourceTable,
    /// Projection column → SQL expression over the source table (overrides the derived ones).
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Run every this many ms (0: only when asked, through the API or CLI).
    #[serde(default)]
    pub interval_ms: u64,
    /// `report` (default) or `repair`.
    #[serde(default)]
    pub policy: Policy,
    /// How long a difference may be in flight (source → log → projection) before it counts:
    /// differing keys are checked again after this and after the sink caught up.
    #[serde(default = "default_lag_window_ms")]
    pub lag_window_ms: u64,
    /// Keys listed per kind in a report (counts are exact up to `drifted_keys_max`).
    #[serde(default = "default_keys_reported_max")]
    pub keys_reported_max: usize,
    /// Drifted keys one run holds in memory, re-checks and repairs; beyond it the report is
    /// marked `truncated` and the next run continues.
    #[serde(default = "default_drifted_keys_max")]
    pub drifted_keys_max: usize,
    /// How repairs are emitted (required for `policy = "repair"` or `--repair`).
    #[serde(default)]
    pub correction: Option<CorrectionConfig>,
}

/// Largest `interval_ms`: 30 days.
pub const INTERVAL_MS_MAX: u64 = 30 * 86_400_000;
/// Largest `lag_window_ms`: one day.
pub const LAG_WINDOW_MS_MAX: u64 = 86_400_000;
/// Largest `keys_reported_max` (a report is held in memory and kept in the history).
pub const KEYS_REPORTED_MAX_LIMIT: usize = 100_000;
/// Largest `drifted_keys_max` (the drifted keys of one run are held in memory).
pub const DRIFTED_KEYS_MAX_LIMIT: usize = 10_000_000;

impl ReconcileConfig {
    /// Checks the entry's limits against their ranges (its references to a sink are checked by
    /// [`Plan::derive`]): an absurd value is refused before anything starts, naming the key.
    pub fn check_limits(&self) -> Result<()> {
        let invalid = |field: &str, reason: String| ReconcileError::Config {
            name: self.name.clone(),
            field: field.into(),
            reason,
        };
        if self.interval_ms > INTERVAL_MS_MAX {
            return Err(invalid(
                "interval_ms",
                format!(
                    "must be 0 (only when asked) to {INTERVAL_MS_MAX} ms (30 days), got {}",
                    self.interval_ms
                ),
            ));
        }
        if self.lag_window_ms > LAG_WINDOW_MS_MAX {
            return Err(invalid(
                "lag_window_ms",
                format!(
                    "must be 0 to {LAG_WINDOW_MS_MAX} ms (one day), got {}",
                    self.lag_window_ms
                ),
            ));
        }
        if self.keys_reported_max > KEYS_REPORTED_MAX_LIMIT {
            return Err(invalid(
                "keys_reported_max",
                format!("must be 0 to {KEYS_REPORTED_MAX_LIMIT}, got {}", self.keys_reported_max),
            ));
        }
        if self.drifted_keys_max == 0 || self.drifted_keys_max > DRIFTED_KEYS_MAX_LIMIT {
            return Err(invalid(
                "drifted_keys_max",
                format!(
                    "must be 1 to {DRIFTED_KEYS_MAX_LIMIT} (a run with no room for a drifted \
                     key could never finish), got {}",
                    self.drifted_keys_max
                ),
            ));
        }
        Ok(())
    }
}

fn default_lag_window_ms() -> u64 {
    2_000
}
fn default_keys_reported_max() -> usize {
    1_000
}
fn default_drifted_keys_max() -> usize {
    100_000
}

/// Report only, or repair too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Find and report drift.
    #[default]
    Report,
    /// Find it and emit corrections.
    Repair,
}

/// The source-of-truth table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceTable {
    /// A Postgres table.
    Postgres {
        /// libpq-style URL (`sslmode`, `sslrootcert` as libpq), inline or `{ env = "NAME" }` /
        /// `{ file = "/path" }`.
        url: Secret,
        /// `schema.table` or `table`.
        table: String,
        /// Key columns, in the projection key's order (default: the projection's key names).
        #[serde(default)]
        key: Vec<String>,
    },
    /// A topic holding each key's latest event (typically compacted): its events are folded
    /// through the sink's own mapping, in the log's order, and compared in-process.
    Topic {
        /// The topic (default: the sink's first topic).
        #[serde(default)]
        topic: Option<String>,
    },
    /// A SQLite table.
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The table.
        table: String,
        /// As for Postgres.
        #[serde(default)]
        key: Vec<String>,
    },
}

/// How corrections are emitted: events in the source's language, flagged `correction = true`,
/// appended to the topic the sink reads, so every projection applies them on its normal path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrectionConfig {
    /// The topic (default: the sink's first topic).
    #[serde(default)]
    pub topic: Option<String>,
    /// `type` of a correction carrying a row's authoritative state.
    pub upsert_type: String,
    /// `type` of a correction removing a row the source does not have.
    pub delete_type: String,
    /// `source` attribute of corrections.
    #[serde(default = "default_correction_source")]
    pub source: String,
    /// `row`: `data` is the source row; `cdc`: `data` is `{op, table, key, before, after}` like
    /// the CDC source's events. Unset: derived from the sink's mapping ([`Plan::shape`]).
    #[serde(default)]
    pub data: Option<CorrectionData>,
    /// The corrections' `sequence`: `none` (ranked just above the projection's row, for
    /// outbox-fed projections) or `pg_lsn` (the source's WAL position before its rows are read,
    /// ranking with CDC events' sequences). Unset: derived ([`Plan::shape`]).
    #[serde(default)]
    pub sequence: Option<CorrectionSequence>,
    /// How long `--repair` waits for the sinks to apply the corrections before it re-checks,
    /// in ms (at most [`REPAIR_WAIT_MS_MAX`]).
    #[serde(default = "default_repair_wait_ms")]
    pub repair_wait_ms: u64,
}

/// Longest wait for corrections to be applied (the CLI's request must outlive it).
pub const REPAIR_WAIT_MS_MAX: u64 = 60_000;

fn default_repair_wait_ms() -> u64 {
    30_000
}

/// The shape a correction takes: what its `data` holds and how its `sequence` ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorrectionShape {
    /// `row` or `cdc`.
    pub data: CorrectionData,
    /// `none` or `pg_lsn`.
    pub sequence: CorrectionSequence,
}

fn default_correction_source() -> String {
    "/driftless/reconcile".into()
}

/// Shape of a correction's `data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorrectionData {
    /// The row as a JSON object.
    #[default]
    Row,
    /// `{op, table, key, before, after}`.
    Cdc,
}

/// A correction's `sequence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorrectionSequence {
    /// None: versions fall back to the offset.
    #[default]
    None,
    /// The Postgres source's WAL position, formatted like CDC sequences.
    PgLsn,
}

/// Where the projection lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Db {
    /// Postgres URL (a secret: it may hold a password).
    Postgres(Secret),
    /// SQLite file.
    Sqlite(PathBuf),
    /// A topic of the log, folded through the sink's mapping.
    Topic(String),
}

/// One side of a comparison: a table, its key expressions and compared expressions (in the
/// projection's column-name order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    /// The database.
    pub db: Db,
    /// The table.
    pub table: String,
    /// Key expressions.
    pub key: Vec<String>,
    /// Compared expressions, aligned with [`Plan::compared`].
    pub columns: Vec<String>,
}

/// What a run compares, resolved from the config and the sink's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The reconciliation's name.
    pub name: String,
    /// The sink's consumer group (whose lag decides what is in flight).
    pub group: String,
    /// The sink's topics.
    pub topics: Vec<String>,
    /// The projection's compared column names (sorted).
    pub compared: Vec<String>,
    /// Projection columns not compared (computed by the mapping), for the report.
    pub not_compared: Vec<String>,
    /// The source side.
    pub source: Side,
    /// The projection side.
    pub projection: Side,
    /// The projection's key column names.
    pub key_names: Vec<String>,
    /// The sink's version column (never compared: it records delivery, not content).
    pub version_column: String,
    /// The sink's mappings (a topic source is folded through them; corrections are dry-run
    /// through them before they are appended).
    pub mappings: Vec<driftless_sink::MappingConfig>,
    /// The other sinks reading the sink's topics: a correction they cannot map is refused too
    /// (it would be dead-lettered in their queues).
    pub others: Vec<OtherSink>,
}

/// Another sink reading a topic the corrections go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherSink {
    /// Its name.
    pub name: String,
    /// Its consumer group.
    pub group: String,
    /// Its topics.
    pub topics: Vec<String>,
    /// Its mappings.
    pub mappings: Vec<driftless_sink::MappingConfig>,
}

/// A plain jq path (`.a.b.c`): its last name.
fn path_leaf(expr: &str) -> Option<&str> {
    let e = expr.trim();
    if !e.starts_with('.') {
        return None;
    }
    let parts: Vec<&str> = e[1..].split('.').collect();
    let ok = parts.iter().all(|p| {
        !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !p.as_bytes()[0].is_ascii_digit()
    });
    if ok {
        parts.last().copied()
    } else {
        None
    }
}

impl Plan {
    /// Resolves `config` against its sink. `projection_columns` lists the projection table's
    /// columns (needed when the mapping writes a whole `row`).
    pub fn derive(
        config: &ReconcileConfig,
        sink: &SinkConfig,
        projection_columns: Option<&[String]>,
    ) -> Result<Plan> {
        let invalid = |field: &str, reason: String| ReconcileError::Config {
            name: config.name.clone(),
            field: field.into(),
            reason,
        };
        let (db, version_column) = match &sink.target {
            TargetConfig::Postgres { url, version_column } => {
                (Db::Postgres(url.clone()), version_column.clone())
            }
            TargetConfig::Sqlite { path, version_column } => {
                (Db::Sqlite(path.clone()), version_column.clone())
            }
            TargetConfig::Webhook(_) => {
                return Err(invalid("sink", format!("sink `{}` is a webhook: no table", sink.name)))
            }
        };
        let mut tables: Vec<&str> =
            sink.mappings.iter().filter_map(|m| m.table.as_deref()).collect();
        tables.sort();
        tables.dedup();
        let table = match (&config.table, tables.as_slice()) {
            (Some(t), _) if tables.contains(&t.as_str()) => t.clone(),
            (Some(t), _) => {
                return Err(invalid("table", format!("sink `{}` does not write `{t}`", sink.name)))
            }
            (None, [only]) => only.to_string(),
            (None, _) => {
                return Err(invalid(
                    "table",
                    format!("sink `{}` writes {} tables; name one", sink.name, tables.len()),
                ))
            }
        };
        let upserts: Vec<_> = sink
            .mappings
            .iter()
            .filter(|m| m.table.as_deref() == Some(table.as_str()) && m.op == OpKind::Upsert)
            .collect();
        let key_names = sink
            .mappings
            .iter()
            .find(|m| m.table.as_deref() == Some(table.as_str()))
            .map(|m| m.key.clone())
            .unwrap_or_default();
        // Derived: projection column → source column.
        let mut derived: BTreeMap<String, Option<String>> = BTreeMap::new();
        for m in &upserts {
            for (col, expr) in &m.columns {
                let leaf = path_leaf(expr).filter(|l| *l != "subject" || expr.trim() != ".subject");
                let entry = derived.entry(col.clone()).or_insert(leaf.map(str::to_string));
                if entry.as_deref() != leaf {
                    *entry = None; // mapped differently by two mappings: not derivable
                }
            }
            if m.row.is_some() {
                let cols = projection_columns.ok_or_else(|| {
                    invalid("columns", "the mapping writes a `row`: list the columns".into())
                })?;
                for c in cols {
                    derived.entry(c.clone()).or_insert_with(|| Some(c.clone()));
                }
            }
        }
        for k in &key_names {
            derived.remove(k);
        }
        derived.remove(&version_column);
        let mut compared = BTreeMap::new();
        let mut not_compared = Vec::new();
        for (col, src) in derived {
            match (config.columns.get(&col), src) {
                (Some(expr), _) => {
                    compared.insert(col, expr.clone());
                }
                (None, Some(src)) => {
                    compared.insert(col, src);
                }
                (None, None) => not_compared.push(col),
            }
        }
        for (col, expr) in &config.columns {
            compared.entry(col.clone()).or_insert_with(|| expr.clone());
        }
        let no_key = Vec::new();
        let first_topic = sink.topics.first().cloned().unwrap_or_default();
        let (source_db, source_table, source_key) = match &config.source {
            SourceTable::Postgres { url, table, key } => {
                (Db::Postgres(url.clone()), table.clone(), key)
            }
            SourceTable::Sqlite { path, table, key } => {
                (Db::Sqlite(path.clone()), table.clone(), key)
            }
            SourceTable::Topic { topic } => {
                let t = topic.clone().unwrap_or(first_topic);
                (Db::Topic(t.clone()), t, &no_key)
            }
        };
        if matches!(source_db, Db::Topic(_)) {
            // The mapping runs in-process: computed columns can be compared too.
            for c in std::mem::take(&mut not_compared) {
                compared.insert(c.clone(), c);
            }
        }
        let source_key = if source_key.is_empty() { key_names.clone() } else { source_key.clone() };
        if key_names.is_empty() || source_key.len() != key_names.len() {
            return Err(invalid(
                "source.key",
                format!(
                    "the projection's key is ({}); give as many source key columns",
                    key_names.join(", ")
                ),
            ));
        }
        if config.policy == Policy::Repair && config.correction.is_none() {
            return Err(invalid(
                "correction",
                "policy = \"repair\" needs [reconcile.correction] (upsert_type, delete_type)"
                    .into(),
            ));
        }
        if let Some(c) = &config.correction {
            if c.repair_wait_ms > REPAIR_WAIT_MS_MAX {
                return Err(invalid(
                    "correction.repair_wait_ms",
                    format!("{} is above the limit of {REPAIR_WAIT_MS_MAX}", c.repair_wait_ms),
                ));
            }
            if c.sequence == Some(CorrectionSequence::PgLsn)
                && !matches!(config.source, SourceTable::Postgres { .. })
            {
                return Err(invalid(
                    "correction.sequence",
                    "\"pg_lsn\" needs a Postgres source table (it reads its WAL position); use \"none\""
                        .into(),
                ));
            }
        }
        let names: Vec<String> = compared.keys().cloned().collect();
        Ok(Plan {
            name: config.name.clone(),
            group: sink.group(),
            topics: sink.topics.clone(),
            not_compared,
            source: Side {
                db: source_db,
                table: source_table,
                key: source_key,
                columns: compared.values().cloned().collect(),
            },
            projection: Side {
                db,
                table,
                key: key_names.clone(),
                columns: names.iter().map(|c| format!("\"{c}\"")).collect(),
            },
            compared: names,
            key_names,
            version_column,
            mappings: sink.mappings.clone(),
            others: Vec::new(),
        })
    }

    /// The correction shape for this plan: what the configuration says, else derived — `cdc`
    /// when the sink's mapping for the table reads `.data.after` (CDC events), else `row`; and
    /// `pg_lsn` for `cdc` corrections from a Postgres source (ranking with the CDC events'
    /// sequences), else `none`.
    pub fn shape(&self, correction: &CorrectionConfig) -> CorrectionShape {
        let reads_after = self
            .mappings
            .iter()
            .filter(|m| m.table.as_deref() == Some(self.projection.table.as_str()))
            .filter(|m| m.op == OpKind::Upsert)
            .any(|m| m.row.iter().chain(m.columns.values()).any(|e| e.contains(".data.after")));
        let data = correction.data.unwrap_or(if reads_after {
            CorrectionData::Cdc
        } else {
            CorrectionData::Row
        });
        let pg = matches!(self.source.db, Db::Postgres(_));
        let sequence = correction.sequence.unwrap_or(if data == CorrectionData::Cdc && pg {
            CorrectionSequence::PgLsn
        } else {
            CorrectionSequence::None
        });
        CorrectionShape { data, sequence }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink() -> SinkConfig {
        toml::from_str(
            r#"
            name = "billing"
            topics = ["customers"]
            target = { kind = "postgres", url = "postgres://x@127.0.0.1/b" }
            [[mapping]]
            types = ["customer.*"]
            table = "contacts"
            key = ["id"]
            columns = { id = ".subject", city = ".data.after.city", n = ".data.n", line = '"\(.data.zip) \(.data.city)"' }
            [[mapping]]
            types = ["customer.deleted"]
            table = "contacts"
            key = ["id"]
            op = "delete"
            "#,
        )
        .unwrap()
    }

    fn config(extra: &str) -> ReconcileConfig {
        toml::from_str(&format!(
            "name = \"r\"\nsink = \"billing\"\n{extra}\nsource = {{ kind = \"postgres\", url = \"u\", table = \"customers\" }}\n"
        ))
        .unwrap()
    }

    #[test]
    fn compared_columns_derive_from_the_mapping_and_computed_ones_are_listed() {
        let plan = Plan::derive(&config(""), &sink(), None).unwrap();
        assert_eq!(plan.compared, ["city", "n"]);
        assert_eq!(plan.source.columns, ["city", "n"]);
        assert_eq!(plan.not_compared, ["line"]);
        assert_eq!(plan.key_names, ["id"]);
        assert_eq!(plan.source.key, ["id"]);
        assert_eq!(plan.group, "sink-billing");
    }

    #[test]
    fn explicit_columns_override_and_compare_computed_ones() {
        let plan =
            Plan::derive(&config("columns = { line = \"zip || ' ' || city\" }"), &sink(), None)
                .unwrap();
        assert_eq!(plan.compared, ["city", "line", "n"]);
        assert_eq!(plan.source.columns[1], "zip || ' ' || city");
        assert!(plan.not_compared.is_empty());
    }

    #[test]
    fn repair_without_a_correction_is_refused() {
        let err = Plan::derive(&config("policy = \"repair\""), &sink(), None).unwrap_err();
        assert!(err.to_string().contains("correction"), "{err}");
    }
}

//! `[[source]]` entries of the server's TOML configuration.
//!
//! Invariant: [`SourceConfig::validate`] runs before anything starts, so a source that starts
//! has a valid name, a reachable-looking URL or path and limits inside their bounds. Defaults
//! are what a first-time user should get; every limit names its unit.

use std::collections::BTreeMap;
use std::path::PathBuf;

use driftless_core::Secret;
use serde::{Deserialize, Serialize};

use crate::error::{ConnectError, Result};

/// Longest source name, in bytes. Names appear in slot names, event ids and metric labels.
pub const SOURCE_NAME_BYTES_MAX: usize = 48;

/// One `[[source]]` entry.
///
/// serde cannot deny unknown keys through `flatten`, so unknown keys are refused by
/// [`unknown_keys`] instead (the server calls it on the raw TOML table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceConfig {
    /// Unique name: letters, digits, `_` and `-`. Positions are stored under it.
    pub name: String,
    /// What to read, and its settings.
    #[serde(flatten)]
    pub kind: SourceKind,
    /// Partitions of the topics this source creates when they do not exist yet.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Start paused (resume through the API or CLI).
    #[serde(default)]
    pub paused: bool,
}

/// The kinds of source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceKind {
    /// Change data capture from Postgres logical replication.
    PostgresCdc(PgCdcConfig),
    /// An outbox table in Postgres.
    PostgresOutbox(PgOutboxConfig),
    /// An outbox table in SQLite.
    SqliteOutbox(SqliteOutboxConfig),
}

/// Payload shape of CDC events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// `data` = `{"op", "key", "before", "after", "unchanged"}` (see ARCHITECTURE.md).
    #[default]
    Cloudevents,
    /// `data` = Debezium's envelope: `before`, `after`, `source`, `op`, `ts_ms`.
    Debezium,
}

/// What to do when the replication slot disappeared while the source had a position in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnSlotLost {
    /// Stop with an error: changes were lost and an operator must decide.
    #[default]
    Fail,
    /// Create a new slot and re-read every table (a new snapshot).
    Resnapshot,
}

/// Whether to read the tables' existing rows before streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Read existing rows once, when the slot is created (resumable).
    #[default]
    Initial,
    /// Stream changes only.
    Never,
}

/// `kind = "postgres_cdc"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgCdcConfig {
    /// `postgres://user:password@host:port/database[?sslmode=…&sslrootcert=…]`, inline or
    /// `{ env = "NAME" }` / `{ file = "/path" }`.
    pub url: Secret,
    /// Replication slot name; default `driftless_<name>`.
    #[serde(default)]
    pub slot: Option<String>,
    /// Publication name; default `driftless_<name>`.
    #[serde(default)]
    pub publication: Option<String>,
    /// `schema.table` names to capture; empty means every table (`FOR ALL TABLES`).
    #[serde(default)]
    pub tables: Vec<String>,
    /// Topic per table; `{database}`, `{schema}` and `{table}` are replaced.
    #[serde(default = "default_topic_template")]
    pub topic: String,
    /// Explicit per-table topics (`"public.orders" = "orders"`), overriding `topic`.
    #[serde(default)]
    pub routes: BTreeMap<String, String>,
    /// Key columns for tables without a primary key (`"public.log" = ["a", "b"]`).
    #[serde(default)]
    pub key_columns: BTreeMap<String, Vec<String>>,
    /// Event payload shape.
    #[serde(default)]
    pub payload: Payload,
    /// Initial snapshot.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Rows per snapshot chunk.
    #[serde(default = "default_snapshot_chunk_rows")]
    pub snapshot_chunk_rows: u32,
    /// How often an idle source writes a heartbeat into WAL so the slot keeps advancing.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Policy when the slot is gone.
    #[serde(default)]
    pub on_slot_lost: OnSlotLost,
    /// Most events appended per log batch (transactions are never split across batches unless
    /// one alone is larger).
    #[serde(default = "default_batch_events_max")]
    pub batch_events_max: usize,
    /// Most decoded-but-not-durable bytes held in memory before reading from Postgres pauses.
    #[serde(default = "default_buffer_bytes_max")]
    pub buffer_bytes_max: usize,
    /// Read this outbox table through CDC as outbox rows (set by `postgres_outbox` in cdc mode).
    #[serde(skip)]
    pub outbox: Option<OutboxColumns>,
}

/// How a Postgres outbox is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxMode {
    /// Through logical replication of the outbox table; relayed rows are deleted once their
    /// events are durable, as in poll mode.
    #[default]
    Cdc,
    /// By polling with `FOR UPDATE SKIP LOCKED`; rows are deleted after the append is durable.
    Poll,
}

/// The outbox table's column names (the Debezium outbox-router convention by default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxColumns {
    /// Outbox table, `schema.table` for Postgres.
    #[serde(default = "default_outbox_table")]
    pub table: String,
    /// Prefix prepended to `aggregatetype` to form the topic.
    #[serde(default)]
    pub topic_prefix: String,
    /// CloudEvents `source` attribute of relayed events; default `/outbox/<name>`.
    #[serde(default)]
    pub event_source: Option<String>,
}

impl Default for OutboxColumns {
    fn default() -> Self {
        Self { table: default_outbox_table(), topic_prefix: String::new(), event_source: None }
    }
}

/// `kind = "postgres_outbox"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgOutboxConfig {
    /// As for `postgres_cdc`.
    pub url: Secret,
    /// CDC (default) or polling.
    #[serde(default)]
    pub mode: OutboxMode,
    /// Table and routing.
    #[serde(flatten)]
    pub outbox: OutboxColumns,
    /// Polling interval when the outbox was empty (poll mode).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Rows read per poll.
    #[serde(default = "default_batch_rows_max")]
    pub batch_rows_max: u32,
    /// Replication slot (cdc mode); default `driftless_<name>`.
    #[serde(default)]
    pub slot: Option<String>,
    /// Heartbeat interval (cdc mode).
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
}

/// `kind = "sqlite_outbox"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqliteOutboxConfig {
    /// The SQLite database file (the service's own).
    pub path: PathBuf,
    /// Table and routing.
    #[serde(flatten)]
    pub outbox: OutboxColumns,
    /// Polling interval when the outbox was empty.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Rows read per poll.
    #[serde(default = "default_batch_rows_max")]
    pub batch_rows_max: u32,
}

const COMMON_KEYS: [&str; 4] = ["name", "kind", "partitions", "paused"];
const CDC_KEYS: [&str; 14] = [
    "url",
    "slot",
    "publication",
    "tables",
    "topic",
    "routes",
    "key_columns",
    "payload",
    "snapshot",
    "snapshot_chunk_rows",
    "heartbeat_interval_ms",
    "on_slot_lost",
    "batch_events_max",
    "buffer_bytes_max",
];
const OUTBOX_KEYS: [&str; 5] =
    ["table", "topic_prefix", "event_source", "poll_interval_ms", "batch_rows_max"];
const PG_OUTBOX_KEYS: [&str; 4] = ["url", "mode", "slot", "heartbeat_interval_ms"];

/// The `kind`s a `[[source]]` may have.
pub const KINDS: [&str; 3] = ["postgres_cdc", "postgres_outbox", "sqlite_outbox"];

/// Every key a `[[source]]` of `kind` reads, in the order the README lists them; `None` for an
/// unknown kind.
pub fn keys(kind: &str) -> Option<Vec<&'static str>> {
    let specific: &[&str] = match kind {
        "postgres_cdc" => &CDC_KEYS,
        "postgres_outbox" => &PG_OUTBOX_KEYS,
        "sqlite_outbox" => &["path"],
        _ => return None,
    };
    let outbox: &[&str] = if kind.ends_with("_outbox") { &OUTBOX_KEYS } else { &[] };
    Some(COMMON_KEYS.iter().chain(specific).chain(outbox).copied().collect())
}

/// The keys of a `[[source]]` table that no source of its `kind` reads (typos), given the
/// table's keys and its `kind`. An unknown kind is left to the deserializer's error.
pub fn unknown_keys<'a>(kind: &str, keys: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let Some(known) = self::keys(kind) else {
        return Vec::new();
    };
    keys.into_iter().filter(|k| !known.contains(k)).collect()
}

/// Checks that `value` has the type `key` takes in a `[[source]]`, on its own.
///
/// Why: the kind's settings are flattened into the entry, and serde's `flatten` loses the
/// position of a value, so a wrong type would be reported at the `[[source]]` header without
/// the key. The server calls this key by key first, with a deserializer that knows the value's
/// position. Keys no kind reads are accepted here ([`unknown_keys`] reports them).
pub fn check_setting<'de, D: serde::Deserializer<'de>>(
    key: &str,
    value: D,
) -> std::result::Result<(), D::Error> {
    fn is<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
        value: D,
    ) -> std::result::Result<(), D::Error> {
        T::deserialize(value).map(drop)
    }
    match key {
        "name" | "kind" | "slot" | "publication" | "topic" | "table" | "topic_prefix"
        | "event_source" => is::<String, D>(value),
        "partitions" | "snapshot_chunk_rows" | "batch_rows_max" => is::<u32, D>(value),
        "heartbeat_interval_ms" | "poll_interval_ms" => is::<u64, D>(value),
        "batch_events_max" | "buffer_bytes_max" => is::<usize, D>(value),
        "paused" => is::<bool, D>(value),
        "url" => is::<Secret, D>(value),
        "path" => is::<PathBuf, D>(value),
        "tables" => is::<Vec<String>, D>(value),
        "routes" => is::<BTreeMap<String, String>, D>(value),
        "key_columns" => is::<BTreeMap<String, Vec<String>>, D>(value),
        "payload" => is::<Payload, D>(value),
        "snapshot" => is::<SnapshotMode, D>(value),
        "on_slot_lost" => is::<OnSlotLost, D>(value),
        "mode" => is::<OutboxMode, D>(value),
        _ => Ok(()),
    }
}

/// Most `partitions` of a source's topics.
pub const PARTITIONS_MAX: u32 = 1024;
/// Largest `heartbeat_interval_ms` and `poll_interval_ms`: one day.
pub const INTERVAL_MS_MAX: u64 = 86_400_000;
/// Largest `snapshot_chunk_rows` and `batch_rows_max`.
pub const ROWS_MAX: u32 = 1_000_000;
/// Largest `batch_events_max`.
pub const BATCH_EVENTS_MAX_LIMIT: usize = 1_000_000;
/// Largest `buffer_bytes_max`: 16 GiB.
pub const BUFFER_BYTES_MAX_LIMIT: usize = 16 << 30;

fn default_partitions() -> u32 {
    4
}
fn default_topic_template() -> String {
    "{database}.{schema}.{table}".into()
}
fn default_snapshot_chunk_rows() -> u32 {
    10_000
}
fn default_heartbeat_interval_ms() -> u64 {
    10_000
}
fn default_batch_events_max() -> usize {
    10_000
}
fn default_buffer_bytes_max() -> usize {
    64 << 20
}
fn default_outbox_table() -> String {
    "outbox".into()
}
fn default_poll_interval_ms() -> u64 {
    100
}
fn default_batch_rows_max() -> u32 {
    1_000
}

impl SourceConfig {
    /// Checks names and limits; the error names the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| ConnectError::Config {
            source_name: self.name.clone(),
            field: field.into(),
            reason,
        };
        if self.name.is_empty()
            || self.name.len() > SOURCE_NAME_BYTES_MAX
            || !self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(bad(
                "name",
                format!(
                    "use 1 to {SOURCE_NAME_BYTES_MAX} characters from [A-Za-z0-9_-], got {:?}",
                    self.name
                ),
            ));
        }
        if self.partitions == 0 || self.partitions > PARTITIONS_MAX {
            return Err(bad(
                "partitions",
                format!("must be 1 to {PARTITIONS_MAX}, got {}", self.partitions),
            ));
        }
        // Every limit is checked against a range: 0 would stall a source (no rows per read, no
        // wait between polls) and a huge one overflows memory or clock arithmetic.
        let range = |field: &str, v: u64, max: u64, unit: &str| {
            if v == 0 || v > max {
                Err(bad(field, format!("must be 1 to {max}{unit}, got {v}")))
            } else {
                Ok(())
            }
        };
        const DAY: &str = " ms (one day)";
        match &self.kind {
            SourceKind::PostgresCdc(c) => {
                range("snapshot_chunk_rows", c.snapshot_chunk_rows.into(), ROWS_MAX.into(), "")?;
                range("heartbeat_interval_ms", c.heartbeat_interval_ms, INTERVAL_MS_MAX, DAY)?;
                range(
                    "batch_events_max",
                    c.batch_events_max as u64,
                    BATCH_EVENTS_MAX_LIMIT as u64,
                    "",
                )?;
                range(
                    "buffer_bytes_max",
                    c.buffer_bytes_max as u64,
                    BUFFER_BYTES_MAX_LIMIT as u64,
                    " bytes (16 GiB)",
                )?;
                if c.on_slot_lost == OnSlotLost::Resnapshot && c.snapshot == SnapshotMode::Never {
                    // Recreating a lost slot without re-reading the tables would silently skip
                    // every change made while it was gone.
                    return Err(bad(
                        "on_slot_lost",
                        "\"resnapshot\" re-reads the tables through a snapshot, which \
                         snapshot = \"never\" turns off: the changes made while the slot was \
                         lost would be missing. Set snapshot = \"initial\", or on_slot_lost = \
                         \"fail\""
                            .into(),
                    ));
                }
                for t in c.tables.iter().chain(c.routes.keys()).chain(c.key_columns.keys()) {
                    if t.split('.').count() != 2 {
                        return Err(bad("tables", format!("`{t}` must be written schema.table")));
                    }
                }
            }
            SourceKind::PostgresOutbox(c) => {
                range("poll_interval_ms", c.poll_interval_ms, INTERVAL_MS_MAX, DAY)?;
                range("batch_rows_max", c.batch_rows_max.into(), ROWS_MAX.into(), "")?;
                range("heartbeat_interval_ms", c.heartbeat_interval_ms, INTERVAL_MS_MAX, DAY)?;
            }
            SourceKind::SqliteOutbox(c) => {
                range("poll_interval_ms", c.poll_interval_ms, INTERVAL_MS_MAX, DAY)?;
                range("batch_rows_max", c.batch_rows_max.into(), ROWS_MAX.into(), "")?;
            }
        }
        Ok(())
    }

    /// The source's kind as written in the config (`postgres_cdc`, ...).
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            SourceKind::PostgresCdc(_) => "postgres_cdc",
            SourceKind::PostgresOutbox(_) => "postgres_outbox",
            SourceKind::SqliteOutbox(_) => "sqlite_outbox",
        }
    }
}

impl PgCdcConfig {
    /// A CDC configuration for `url` with every default.
    pub fn new(url: impl Into<Secret>) -> Self {
        Self {
            url: url.into(),
            slot: None,
            publication: None,
            tables: Vec::new(),
            topic: default_topic_template(),
            routes: BTreeMap::new(),
            key_columns: BTreeMap::new(),
            payload: Payload::default(),
            snapshot: SnapshotMode::default(),
            snapshot_chunk_rows: default_snapshot_chunk_rows(),
            heartbeat_interval_ms: default_heartbeat_interval_ms(),
            on_slot_lost: OnSlotLost::default(),
            batch_events_max: default_batch_events_max(),
            buffer_bytes_max: default_buffer_bytes_max(),
            outbox: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: `on_slot_lost = "resnapshot"` with `snapshot = "never"` recreated a lost slot
    /// without reading anything again, losing the changes made meanwhile with only a warning.
    #[test]
    fn resnapshot_without_snapshots_is_refused() {
        let mut cdc = PgCdcConfig::new("postgres://u@127.0.0.1/app");
        cdc.on_slot_lost = OnSlotLost::Resnapshot;
        cdc.snapshot = SnapshotMode::Never;
        let config = SourceConfig {
            name: "app".into(),
            kind: SourceKind::PostgresCdc(cdc.clone()),
            partitions: 1,
            paused: false,
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("on_slot_lost") && err.contains("snapshot"), "{err}");
        cdc.snapshot = SnapshotMode::Initial;
        let ok = SourceConfig { kind: SourceKind::PostgresCdc(cdc), ..config };
        assert!(ok.validate().is_ok());
    }

    /// [`check_setting`] must know every key some kind reads, or a wrong type in that key would
    /// again be reported at the `[[source]]` header.
    #[test]
    fn every_key_of_every_kind_has_its_type_checked() {
        for kind in KINDS {
            for key in keys(kind).unwrap_or_default() {
                let unit = serde::de::value::UnitDeserializer::<serde::de::value::Error>::new();
                assert!(check_setting(key, unit).is_err(), "{kind}: `{key}` is not checked");
            }
        }
    }
}

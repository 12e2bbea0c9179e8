//! `[[sink]]` entries of the server's TOML configuration.
//!
//! Invariant: [`SinkConfig::validate`] runs before anything starts, so a sink that starts has a
//! valid name, at least one topic, limits inside their bounds, and mappings that compile (the
//! jq expressions are compiled by [`crate::mapping::Mapper::compile`] at the same time). Defaults
//! are what a first-time user should get; every limit names its unit.

use std::path::PathBuf;

use driftless_core::Secret;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SinkError};

/// Longest sink name, in bytes. Names appear in group names and metric labels.
pub const SINK_NAME_BYTES_MAX: usize = 48;
/// Largest `batch_events_max`.
pub const BATCH_EVENTS_MAX_LIMIT: usize = 10_000;

/// One `[[sink]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Unique name: letters, digits, `_` and `-`.
    pub name: String,
    /// Topics the sink subscribes to.
    pub topics: Vec<String>,
    /// The consumer group (default `sink-<name>`); its committed offsets, lag and dead-letter
    /// queue are the sink's.
    #[serde(default)]
    pub group: Option<String>,
    /// Where events go.
    pub target: TargetConfig,
    /// How events become rows (required for table targets; for a webhook only `types` and
    /// `filter` are used, to choose which events are sent).
    #[serde(default, rename = "mapping")]
    pub mappings: Vec<MappingConfig>,
    /// Events fetched and applied in one transaction.
    #[serde(default = "default_batch_events_max")]
    pub batch_events_max: usize,
    /// Members of the sink's group applying in parallel, each with its own target connection;
    /// the topics' partitions are split among them (per-key order holds: a key lives in one
    /// partition). Table targets only (a webhook already sends concurrently).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Start paused (resume through the API or CLI).
    #[serde(default)]
    pub paused: bool,
}

fn default_batch_events_max() -> usize {
    500
}
fn default_workers() -> usize {
    1
}

/// Most `workers` per sink.
pub const WORKERS_MAX: usize = 16;
/// Largest webhook `timeout_ms` and `breaker_open_ms`: one day.
pub const WEBHOOK_MS_MAX: u64 = 86_400_000;
/// Largest webhook `requests_inflight_max` (each request holds a connection).
pub const REQUESTS_INFLIGHT_MAX_LIMIT: usize = 4_096;
/// Largest webhook `breaker_failures_max`.
pub const BREAKER_FAILURES_MAX_LIMIT: u32 = 1_000_000;

/// Where a sink writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TargetConfig {
    /// Tables in a Postgres database.
    Postgres {
        /// libpq-style URL, e.g. `postgres://billing@127.0.0.1/billing?sslmode=verify-full`;
        /// inline or `{ env = "NAME" }` / `{ file = "/path" }`.
        url: Secret,
        /// The text column, in every target table, holding the version of the event that wrote
        /// the row; the guard that refuses stale and duplicate events.
        #[serde(default = "default_version_column")]
        version_column: String,
    },
    /// Tables in a SQLite database file.
    Sqlite {
        /// The database file (created if missing; the tables must exist).
        path: PathBuf,
        /// As for Postgres.
        #[serde(default = "default_version_column")]
        version_column: String,
    },
    /// An HTTP endpoint receiving each event as a CloudEvent.
    Webhook(WebhookConfig),
}

/// Settings of a webhook target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The endpoint (`http://…` or `https://…`), inline or `{ env }` / `{ file }`: it may carry
    /// a token, so it is redacted everywhere it is shown.
    pub url: Secret,
    /// The Standard Webhooks signing secret, `whsec_<base64>` (or any string, used as raw
    /// bytes). Without it requests are not signed.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// For `https://`: trust only the CA certificates in this PEM file (a private CA) instead of
    /// Mozilla's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `structured` (the CloudEvent as a JSON body) or `binary` (`ce-*` headers, data as body).
    #[serde(default)]
    pub mode: WebhookMode,
    /// Time allowed for one request, connection included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Requests in flight at once (never more than one per key).
    #[serde(default = "default_concurrency")]
    pub requests_inflight_max: usize,
    /// What a 4xx answer (other than 408 and 429) does: `dead_letter` (default; the event is
    /// refused and retrying will not help) or `retry`.
    #[serde(default)]
    pub on_client_error: OnClientError,
    /// Consecutive failures (5xx, timeouts, refused connections) that open the circuit.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures_max: u32,
    /// How long an open circuit waits before one trial request.
    #[serde(default = "default_breaker_open_ms")]
    pub breaker_open_ms: u64,
}

fn default_version_column() -> String {
    "driftless_version".into()
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_concurrency() -> usize {
    32
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_open_ms() -> u64 {
    5_000
}

/// Webhook body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookMode {
    /// `application/cloudevents+json`.
    #[default]
    Structured,
    /// `ce-*` headers and the data as the body.
    Binary,
}

/// What a webhook's 4xx answer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnClientError {
    /// Straight to the dead-letter queue.
    #[default]
    DeadLetter,
    /// Retried with backoff like a 5xx.
    Retry,
}

/// Whether a mapping writes or removes its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Insert or update the row (only the mapped columns).
    #[default]
    Upsert,
    /// Delete the row, leaving a tombstone so an older event cannot bring it back.
    Delete,
}

/// One `[[sink.mapping]]`: which events, and how they become a row. Every matching mapping
/// applies (one event may update several tables); an event no mapping matches is skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// Event types this mapping takes; `*` matches any run of characters
    /// (`customer.*`). Empty: every type.
    #[serde(default)]
    pub types: Vec<String>,
    /// A jq expression over the whole CloudEvent; the event is taken only when it yields `true`.
    #[serde(default)]
    pub filter: Option<String>,
    /// The target table (`schema.table` in Postgres).
    #[serde(default)]
    pub table: Option<String>,
    /// The key columns: the table's primary key or a unique constraint over exactly them.
    #[serde(default)]
    pub key: Vec<String>,
    /// `upsert` (default) or `delete`.
    #[serde(default)]
    pub op: OpKind,
    /// Column → jq expression over the CloudEvent (e.g. `".data.address.city"`).
    #[serde(default)]
    pub columns: std::collections::BTreeMap<String, String>,
    /// A jq expression yielding an object whose fields are columns (e.g. `".data.after"`);
    /// fields it leaves out are left untouched. Combined with `columns`, `columns` wins.
    #[serde(default)]
    pub row: Option<String>,
    /// A jq expression yielding the row's version (a string or a non-negative integer).
    /// Default: the event's `sequence` attribute, else its offset in the partition.
    #[serde(default)]
    pub version: Option<String>,
}

impl SinkConfig {
    /// The consumer group.
    pub fn group(&self) -> String {
        self.group.clone().unwrap_or_else(|| format!("sink-{}", self.name))
    }

    /// `postgres`, `sqlite` or `webhook`.
    pub fn kind_name(&self) -> &'static str {
        match self.target {
            TargetConfig::Postgres { .. } => "postgres",
            TargetConfig::Sqlite { .. } => "sqlite",
            TargetConfig::Webhook(_) => "webhook",
        }
    }

    fn invalid(&self, field: &str, reason: impl Into<String>) -> SinkError {
        SinkError::Config { sink: self.name.clone(), field: field.into(), reason: reason.into() }
    }

    /// Checks what the types alone do not constrain.
    pub fn validate(&self) -> Result<()> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= SINK_NAME_BYTES_MAX
            && self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(self.invalid(
                "name",
                format!(
                    "use 1 to {SINK_NAME_BYTES_MAX} letters, digits, `_` or `-` (got {:?})",
                    self.name
                ),
            ));
        }
        if self.topics.is_empty() {
            return Err(self.invalid("topics", "name at least one topic"));
        }
        if self.batch_events_max == 0 || self.batch_events_max > BATCH_EVENTS_MAX_LIMIT {
            return Err(self.invalid(
                "batch_events_max",
                format!(
                    "must be 1 to {BATCH_EVENTS_MAX_LIMIT} events, got {}",
                    self.batch_events_max
                ),
            ));
        }
        let table_target = !matches!(self.target, TargetConfig::Webhook(_));
        if self.workers == 0 || self.workers > WORKERS_MAX || (!table_target && self.workers != 1) {
            return Err(self.invalid(
                "workers",
                format!(
                    "must be 1 to {WORKERS_MAX} for a table target, and 1 for a webhook \
                     (use requests_inflight_max), got {}",
                    self.workers
                ),
            ));
        }
        if table_target && self.mappings.is_empty() {
            return Err(self.invalid(
                "mapping",
                "a table target needs at least one [[sink.mapping]] saying which table each \
                 event type updates",
            ));
        }
        for (i, m) in self.mappings.iter().enumerate() {
            let field = |f: &str| format!("mapping[{i}].{f}");
            if !table_target {
                if m.table.is_some()
                    || !m.key.is_empty()
                    || !m.columns.is_empty()
                    || m.row.is_some()
                {
                    return Err(self.invalid(
                        &field("table"),
                        "a webhook sends whole events: only `types` and `filter` apply",
                    ));
                }
                continue;
            }
            let Some(table) = &m.table else {
                return Err(self.invalid(&field("table"), "name the target table"));
            };
            if !is_identifier_path(table) {
                return Err(self.invalid(
                    &field("table"),
                    format!("`{table}` is not a plain table name (letters, digits, `_`; `schema.table`)"),
                ));
            }
            if m.key.is_empty() {
                return Err(self.invalid(&field("key"), "name the key column(s)"));
            }
            for c in m.key.iter().chain(m.columns.keys()) {
                if !is_identifier(c) {
                    return Err(self.invalid(
                        &field("columns"),
                        format!("`{c}` is not a plain column name (letters, digits, `_`)"),
                    ));
                }
            }
            if m.op == OpKind::Upsert && m.columns.is_empty() && m.row.is_none() {
                return Err(self.invalid(
                    &field("columns"),
                    "an upsert needs `columns` or `row` to say what to write",
                ));
            }
        }
        match &self.target {
            TargetConfig::Postgres { version_column, .. }
            | TargetConfig::Sqlite { version_column, .. } => {
                if !is_identifier(version_column) {
                    return Err(self.invalid("target.version_column", "not a plain column name"));
                }
            }
            TargetConfig::Webhook(w) => {
                let url = w.url.expose();
                if !url.starts_with("http://") && !url.starts_with("https://") {
                    return Err(self.invalid("target.url", "use an http:// or https:// URL"));
                }
                if let Some(path) = &w.ca_file {
                    crate::webhook::load_ca_file(path)
                        .map_err(|reason| self.invalid("target.ca_file", reason))?;
                }
                // Each limit on its own key, so the error points at the line to fix.
                for (field, value, max, unit) in [
                    ("target.timeout_ms", w.timeout_ms, WEBHOOK_MS_MAX, " ms (one day)"),
                    ("target.breaker_open_ms", w.breaker_open_ms, WEBHOOK_MS_MAX, " ms (one day)"),
                    (
                        "target.requests_inflight_max",
                        w.requests_inflight_max as u64,
                        REQUESTS_INFLIGHT_MAX_LIMIT as u64,
                        "",
                    ),
                    (
                        "target.breaker_failures_max",
                        w.breaker_failures_max.into(),
                        BREAKER_FAILURES_MAX_LIMIT.into(),
                        "",
                    ),
                ] {
                    if value == 0 || value > max {
                        return Err(
                            self.invalid(field, format!("must be 1 to {max}{unit}, got {value}"))
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// A plain SQL identifier: it is quoted anyway, but a name that needs quoting is more likely a
/// typo than a wish.
pub(crate) fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

/// `table` or `schema.table`.
pub(crate) fn is_identifier_path(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() <= 2 && parts.iter().all(|p| is_identifier(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<SinkConfig, String> {
        let c: SinkConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    const BASE: &str = r#"
        name = "billing"
        topics = ["customers"]
        target = { kind = "postgres", url = "postgres://x@127.0.0.1/b" }
        [[mapping]]
        types = ["customer.*"]
        table = "contacts"
        key = ["id"]
        columns = { id = ".subject", city = ".data.city" }
    "#;

    #[test]
    fn a_valid_sink_parses_with_defaults() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.group(), "sink-billing");
        assert_eq!(c.batch_events_max, 500);
        assert!(matches!(&c.target, TargetConfig::Postgres { version_column, .. }
            if version_column == "driftless_version"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_name() {
        let typo = BASE.replace("topics", "topicz");
        assert!(parse(&typo).unwrap_err().contains("topicz"));
        let target_typo = BASE.replace("url =", "ulr =");
        assert!(parse(&target_typo).unwrap_err().contains("ulr"));
        let no_key = BASE.replace("key = [\"id\"]", "");
        assert!(parse(&no_key).unwrap_err().contains("mapping[0].key"));
        let bad_table = BASE.replace("\"contacts\"", "\"a;drop\"");
        assert!(parse(&bad_table).unwrap_err().contains("mapping[0].table"));
        let bad_batch = format!("batch_events_max = 0\n{BASE}");
        assert!(parse(&bad_batch).unwrap_err().contains("batch_events_max"));
    }

    #[test]
    fn webhook_urls_are_http_or_https_and_a_bad_ca_file_is_named() {
        let hook = |url: &str| {
            format!(
                "name = \"h\"\ntopics = [\"t\"]\ntarget = {{ kind = \"webhook\", url = \"{url}\" }}"
            )
        };
        assert!(parse(&hook("http://127.0.0.1:9/x")).is_ok());
        assert!(parse(&hook("ftp://x")).unwrap_err().contains("target.url"));
        assert!(parse(&hook("https://example.com/x")).is_ok());
        let with_ca = |ca: &str| {
            format!(
                "name = \"h\"\ntopics = [\"t\"]\ntarget = {{ kind = \"webhook\", url = \"https://h/x\", ca_file = \"{ca}\" }}"
            )
        };
        let e = parse(&with_ca("/nonexistent/driftless-ca.pem")).unwrap_err();
        assert!(e.contains("target.ca_file") && e.contains("/nonexistent/driftless-ca.pem"), "{e}");
    }
}

//! `driftless topic create|list|describe|delete`: topic administration over the HTTP API.
//!
//! Invariants: every topic name is checked before a request is sent
//! ([`crate::commands::check_topic_name`]); `create` sends only the settings given on the command
//! line (the server applies its defaults to the rest) and prints one line: a sentence with the
//! settings that matter (table output) or `{"name","spec"}` (JSON), never the per-partition
//! figures (`describe` shows those); `list` prints a table, or one compact JSON line per topic;
//! `describe` prints the topic's description as pretty JSON; `delete` prints nothing on stdout,
//! and a topic the server's sources, sinks or reconciliations use is deleted only with `--force`
//! (the server refuses it otherwise, naming them).

use std::io::{self, Write};

use anyhow::Context;
use clap::{Args, Subcommand};
use driftless_log::Durability;
use serde::Serialize;
use serde_json::{json, Value};

use crate::client::{segment, Client};
use crate::commands::{check_topic_name, print_line, print_lines, print_pretty};
use crate::output::{field, Output, Table};

/// `driftless topic ...`.
#[derive(Debug, Args)]
pub struct TopicArgs {
    #[command(subcommand)]
    command: TopicCommand,
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic and print its description.
    Create(CreateArgs),
    /// Print every topic (a table, or one JSON object per line).
    List,
    /// Print a topic's settings and per-partition figures.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Delete a topic and all its events.
    Delete {
        /// Topic name.
        name: String,
        /// Delete it even when the server's configured sources, sinks or reconciliations use it
        /// (they then read nothing, or recreate it empty).
        #[arg(long)]
        force: bool,
    },
}

/// Flags of `driftless topic create`; omitted settings take the server's defaults.
#[derive(Debug, Args)]
struct CreateArgs {
    /// Topic name: 1 to 249 of `A-Z a-z 0-9 . _ -`.
    name: String,

    /// Number of partitions (1 to 1024).
    #[arg(long, value_name = "N")]
    partitions: Option<u32>,

    /// Delete events older than this.
    #[arg(long, value_name = "MS")]
    retention_ms: Option<u64>,

    /// Keep at most this many bytes per partition.
    #[arg(long, value_name = "BYTES")]
    retention_bytes: Option<u64>,

    /// Keep only the newest event per key (`partitionkey`, else `subject`, else `id`).
    #[arg(long)]
    compact: bool,

    /// How long a re-sent event id is recognised as a duplicate.
    #[arg(long, value_name = "MS")]
    dedup_window_ms: Option<u64>,

    /// When a produce is acknowledged: `always` (fsynced), `never`, or `interval:MS`.
    #[arg(long, value_name = "MODE", value_parser = parse_durability)]
    durability: Option<Durability>,

    /// The principal that owns the topic: with authentication on, only it may produce.
    #[arg(long, value_name = "PRINCIPAL")]
    owner: Option<String>,
}

/// The body of `POST /v1/topics`.
#[derive(Debug, Serialize)]
struct CreateTopic<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    partitions: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retention_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retention_bytes: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    compact: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    dedup_window_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    durability: Option<Durability>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<&'a str>,
}

/// Parses `always`, `never` or `interval:MS` (MS ≥ 1).
pub fn parse_durability(s: &str) -> Result<Durability, String> {
    let bad = || format!("expected `always`, `never` or `interval:MS` with MS >= 1, got {s:?}");
    match s {
        "always" => Ok(Durability::Always),
        "never" => Ok(Durability::Never),
        _ => match s.strip_prefix("interval:").map(str::parse::<u64>) {
            Some(Ok(ms)) if ms >= 1 => Ok(Durability::IntervalMs(ms)),
            _ => Err(bad()),
        },
    }
}

/// The sentence `topic create` prints for people: name, partitions, durability, retention,
/// compaction and owner, from the server's answer.
pub fn created_sentence(created: &Value) -> String {
    let spec = &created["spec"];
    let mut s = format!(
        "created topic {} with {} partition(s), durability {}",
        field(created, "name"),
        field(spec, "partitions"),
        durability_text(&spec["durability"])
    );
    match (spec["retention_ms"].as_u64(), spec["retention_bytes"].as_u64()) {
        (None, None) => s.push_str(", kept forever"),
        (ms, bytes) => {
            let mut limits = Vec::new();
            if let Some(ms) = ms {
                limits.push(format!("{ms} ms"));
            }
            if let Some(b) = bytes {
                limits.push(format!("{b} bytes per partition"));
            }
            s.push_str(&format!(", kept for at most {}", limits.join(" or ")));
        }
    }
    if spec["compact"].as_bool() == Some(true) {
        s.push_str(", compacted");
    }
    if let Some(owner) = spec["owner"].as_str() {
        s.push_str(&format!(", owned by {owner}"));
    }
    s
}

/// `always`, `never`, `interval:MS` from the JSON the server answers.
fn durability_text(d: &Value) -> String {
    match d {
        Value::String(s) => s.clone(),
        Value::Object(m) => match m.get("interval_ms") {
            Some(ms) => format!("interval:{ms}"),
            None => d.to_string(),
        },
        _ => d.to_string(),
    }
}

/// The `topic list` table: one row per topic, events and bytes summed over its partitions.
fn list_table(topics: &[Value]) -> Table {
    let mut table =
        Table::new(&["NAME", "PARTITIONS", "EVENTS", "BYTES", "DURABILITY", "RETENTION", "OWNER"]);
    for t in topics {
        let spec = &t["spec"];
        let partitions = t["partitions"].as_array().map(Vec::as_slice).unwrap_or_default();
        let sum = |f: &dyn Fn(&Value) -> u64| partitions.iter().map(f).sum::<u64>();
        let events = sum(&|p| {
            p["end_offset"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(p["start_offset"].as_u64().unwrap_or(0))
        });
        let bytes = sum(&|p| p["size_bytes"].as_u64().unwrap_or(0));
        let retention = match (spec["retention_ms"].as_u64(), spec["retention_bytes"].as_u64()) {
            (None, None) => "forever".to_string(),
            (Some(ms), None) => format!("{ms} ms"),
            (None, Some(b)) => format!("{b} B/partition"),
            (Some(ms), Some(b)) => format!("{ms} ms or {b} B/partition"),
        };
        let retention = if spec["compact"].as_bool() == Some(true) {
            format!("{retention}, compacted")
        } else {
            retention
        };
        table.row(vec![
            field(t, "name"),
            field(spec, "partitions"),
            events.to_string(),
            bytes.to_string(),
            durability_text(&spec["durability"]),
            retention,
            field(spec, "owner"),
        ]);
    }
    table
}

/// Runs `driftless topic ...`.
pub fn run(server: &str, output: Output, args: TopicArgs) -> anyhow::Result<()> {
    let client = Client::new(server)?;
    let mut out = io::stdout().lock();
    match args.command {
        TopicCommand::Create(c) => {
            check_topic_name(&c.name)?;
            let body = CreateTopic {
                name: &c.name,
                partitions: c.partitions,
                retention_ms: c.retention_ms,
                retention_bytes: c.retention_bytes,
                compact: c.compact,
                dedup_window_ms: c.dedup_window_ms,
                durability: c.durability,
                owner: c.owner.as_deref(),
            };
            let created: Value = client.post_json("/v1/topics", &body)?;
            if output.is_json() {
                print_line(&mut out, &json!({"name": created["name"], "spec": created["spec"]}))?;
            } else {
                writeln!(out, "{}", created_sentence(&created)).context("writing to stdout")?;
            }
            out.flush().context("writing to stdout")
        }
        TopicCommand::List => {
            let topics: Vec<Value> = client.get("/v1/topics")?;
            if output.is_json() {
                return print_lines(&mut out, &topics);
            }
            if topics.is_empty() {
                writeln!(out, "no topics; create one with `driftless topic create NAME`")
                    .context("writing to stdout")?;
                return out.flush().context("writing to stdout");
            }
            list_table(&topics).write(&mut out)
        }
        TopicCommand::Describe { name } => {
            check_topic_name(&name)?;
            let topic: Value = client.get(&format!("/v1/topics/{}", segment(&name)))?;
            print_pretty(&mut out, &topic)
        }
        TopicCommand::Delete { name, force } => {
            check_topic_name(&name)?;
            let query = if force { "?force=true" } else { "" };
            client.delete(&format!("/v1/topics/{}{query}", segment(&name)))?;
            let _ = writeln!(io::stderr(), "deleted topic {name:?}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_modes_parse() {
        assert_eq!(parse_durability("always"), Ok(Durability::Always));
        assert_eq!(parse_durability("never"), Ok(Durability::Never));
        assert_eq!(parse_durability("interval:250"), Ok(Durability::IntervalMs(250)));
        for bad in ["", "Always", "interval:", "interval:0", "interval:x", "250"] {
            assert!(parse_durability(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_created_sentence_names_the_settings_that_matter() {
        let created = json!({"name":"orders","spec":{"partitions":3,"retention_ms":null,
            "retention_bytes":null,"compact":false,"dedup_window_ms":600000,"durability":"always"},
            "partitions":[{"sync_buckets":[0,0]}]});
        assert_eq!(
            created_sentence(&created),
            "created topic orders with 3 partition(s), durability always, kept forever"
        );
        let created = json!({"name":"c","spec":{"partitions":1,"retention_ms":5000,
            "retention_bytes":1024,"compact":true,"durability":{"interval_ms":5},"owner":"crm"}});
        assert_eq!(
            created_sentence(&created),
            "created topic c with 1 partition(s), durability interval:5, kept for at most 5000 ms \
             or 1024 bytes per partition, compacted, owned by crm"
        );
    }

    #[test]
    fn create_sends_only_the_given_settings() {
        let mut body = CreateTopic {
            name: "orders",
            partitions: Some(3),
            retention_ms: None,
            retention_bytes: None,
            compact: false,
            dedup_window_ms: None,
            durability: None,
            owner: None,
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"name":"orders","partitions":3})
        );
        body.compact = true;
        body.durability = Some(Durability::IntervalMs(5));
        body.retention_bytes = Some(1 << 20);
        body.owner = Some("crm-service");
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"name":"orders","partitions":3,"compact":true,
                "retention_bytes":1048576,"durability":{"interval_ms":5},"owner":"crm-service"})
        );
    }
}

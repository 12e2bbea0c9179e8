//! `driftless topic create|list|describe|delete`: topic administration over the HTTP API.
//!
//! Invariants: `create` sends only the settings given on the command line (the server applies its
//! defaults to the rest); `list` prints one compact JSON line per topic; `create` and `describe`
//! print the topic's description as pretty JSON; `delete` prints nothing on stdout.

use std::io::{self, Write};

use clap::{Args, Subcommand};
use driftless_log::Durability;
use serde::Serialize;
use serde_json::Value;

use crate::client::{segment, Client};
use crate::commands::{print_lines, print_pretty};

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
    /// Print every topic, one JSON object per line.
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

/// Runs `driftless topic ...`.
pub fn run(server: &str, args: TopicArgs) -> anyhow::Result<()> {
    let client = Client::new(server)?;
    let mut out = io::stdout().lock();
    match args.command {
        TopicCommand::Create(c) => {
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
            print_pretty(&mut out, &created)
        }
        TopicCommand::List => {
            let topics: Vec<Value> = client.get("/v1/topics")?;
            print_lines(&mut out, &topics)
        }
        TopicCommand::Describe { name } => {
            let topic: Value = client.get(&format!("/v1/topics/{}", segment(&name)))?;
            print_pretty(&mut out, &topic)
        }
        TopicCommand::Delete { name } => {
            client.delete(&format!("/v1/topics/{}", segment(&name)))?;
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

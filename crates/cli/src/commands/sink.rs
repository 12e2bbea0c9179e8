//! `driftless sink list|describe|pause|resume|rebuild`: the server's configured sinks.
//!
//! Invariants: `list` prints a table, or one compact JSON line per sink (state, error, applied,
//! skipped and rejected events, freshness); `describe` prints one as pretty JSON; `pause`, `resume` and
//! `rebuild` print the sink's status after the request as one JSON line.

use std::io::{self, Write};

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::client::{segment, Client};
use crate::commands::{print_line, print_lines, print_pretty};
use crate::output::{field, time_ms, Output, Table};

/// `driftless sink ...`.
#[derive(Debug, Args)]
pub struct SinkArgs {
    #[command(subcommand)]
    command: SinkCommand,
}

#[derive(Debug, Subcommand)]
enum SinkCommand {
    /// Print every sink's state and figures (a table, or one JSON object per line).
    List,
    /// Print one sink's state and figures.
    Describe {
        /// Sink name (its `name` in the server's `[[sink]]` table).
        name: String,
    },
    /// Stop applying after the current batch (its events stay in the group, unacknowledged).
    Pause {
        /// Sink name.
        name: String,
    },
    /// Resume a paused sink.
    Resume {
        /// Sink name.
        name: String,
    },
    /// Replay the sink's topics from the earliest event into shadow tables, then swap them in
    /// atomically; readers see the old tables until the swap.
    Rebuild {
        /// Sink name.
        name: String,
    },
}

/// The `sink list` table.
fn list_table(sinks: &[Value]) -> Table {
    let mut table = Table::new(&[
        "NAME",
        "KIND",
        "GROUP",
        "STATE",
        "APPLIED",
        "SKIPPED",
        "REJECTED",
        "LAST APPLIED (UTC)",
        "ERROR",
    ]);
    for s in sinks {
        table.row(vec![
            field(s, "name"),
            field(s, "kind"),
            field(s, "group"),
            field(s, "state"),
            field(s, "events_applied_total"),
            field(s, "events_skipped_total"),
            field(s, "events_rejected_total"),
            time_ms(s["last_applied_ms"].as_i64().unwrap_or(0)),
            field(s, "error"),
        ]);
    }
    table
}

/// Runs `driftless sink ...`.
pub fn run(server: &str, output: Output, args: SinkArgs) -> anyhow::Result<()> {
    let client = Client::new(server)?;
    let mut out = io::stdout().lock();
    let path = |name: &str| format!("/v1/sinks/{}", segment(name));
    match args.command {
        SinkCommand::List => {
            let sinks: Vec<Value> = client.get("/v1/sinks")?;
            if output.is_json() {
                return print_lines(&mut out, &sinks);
            }
            if sinks.is_empty() {
                writeln!(out, "no sinks configured (the server's [[sink]] tables)")?;
                return Ok(out.flush()?);
            }
            list_table(&sinks).write(&mut out)
        }
        SinkCommand::Describe { name } => {
            let sink: Value = client.get(&path(&name))?;
            print_pretty(&mut out, &sink)
        }
        SinkCommand::Pause { name } => {
            let sink = client.post_empty(&format!("{}/pause", path(&name)))?;
            print_line(&mut out, &sink)
        }
        SinkCommand::Resume { name } => {
            let sink = client.post_empty(&format!("{}/resume", path(&name)))?;
            print_line(&mut out, &sink)
        }
        SinkCommand::Rebuild { name } => {
            let sink = client.post_empty(&format!("{}/rebuild", path(&name)))?;
            print_line(&mut out, &sink)
        }
    }
}

//! `driftless sink list|describe|pause|resume|rebuild`: the server's configured sinks.
//!
//! Invariants: `list` prints one compact JSON line per sink (state, error, applied, skipped and
//! rejected events, freshness); `describe` prints one as pretty JSON; `pause`, `resume` and
//! `rebuild` print the sink's status after the request as one JSON line.

use std::io;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::client::{segment, Client};
use crate::commands::{print_line, print_lines, print_pretty};

/// `driftless sink ...`.
#[derive(Debug, Args)]
pub struct SinkArgs {
    #[command(subcommand)]
    command: SinkCommand,
}

#[derive(Debug, Subcommand)]
enum SinkCommand {
    /// Print every sink's state and figures, one JSON object per line.
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

/// Runs `driftless sink ...`.
pub fn run(server: &str, args: SinkArgs) -> anyhow::Result<()> {
    let client = Client::new(server)?;
    let mut out = io::stdout().lock();
    let path = |name: &str| format!("/v1/sinks/{}", segment(name));
    match args.command {
        SinkCommand::List => {
            let sinks: Vec<Value> = client.get("/v1/sinks")?;
            print_lines(&mut out, &sinks)
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

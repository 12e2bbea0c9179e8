//! `driftless source list|describe|pause|resume`: the server's configured sources.
//!
//! Invariants: `list` prints one compact JSON line per source (state, error, events, slot lag,
//! outbox backlog, snapshot progress); `describe` prints one as pretty JSON; `pause` and
//! `resume` print the source's status after the change as one JSON line.

use std::io;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::client::{segment, Client};
use crate::commands::{print_line, print_lines, print_pretty};

/// `driftless source ...`.
#[derive(Debug, Args)]
pub struct SourceArgs {
    #[command(subcommand)]
    command: SourceCommand,
}

#[derive(Debug, Subcommand)]
enum SourceCommand {
    /// Print every source's state and figures, one JSON object per line.
    List,
    /// Print one source's state and figures.
    Describe {
        /// Source name (its `name` in the server's `[[source]]` table).
        name: String,
    },
    /// Stop reading after the current batch (nothing acknowledged upstream is lost).
    Pause {
        /// Source name.
        name: String,
    },
    /// Resume a paused source.
    Resume {
        /// Source name.
        name: String,
    },
}

/// Runs `driftless source ...`.
pub fn run(server: &str, args: SourceArgs) -> anyhow::Result<()> {
    let client = Client::new(server)?;
    let mut out = io::stdout().lock();
    let path = |name: &str| format!("/v1/sources/{}", segment(name));
    match args.command {
        SourceCommand::List => {
            let sources: Vec<Value> = client.get("/v1/sources")?;
            print_lines(&mut out, &sources)
        }
        SourceCommand::Describe { name } => {
            let source: Value = client.get(&path(&name))?;
            print_pretty(&mut out, &source)
        }
        SourceCommand::Pause { name } => {
            let answer = client.post_empty(&format!("{}/pause", path(&name)))?;
            print_line(&mut out, &answer.unwrap_or(Value::Null))
        }
        SourceCommand::Resume { name } => {
            let answer = client.post_empty(&format!("{}/resume", path(&name)))?;
            print_line(&mut out, &answer.unwrap_or(Value::Null))
        }
    }
}

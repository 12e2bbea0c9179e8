//! `driftless dlq list|inspect|retry|discard`: a consumer group's dead-letter queue.
//!
//! Invariants: `list` prints a table (or, with `--output table` and an empty queue, the sentence
//! "no dead letters in group G"), or, as JSON, one line per dead letter (nothing at all for an
//! empty queue), its text as the server answered it
//! (read as a [`RawValue`], not parsed into a `Value` and written again: the CLI changes no
//! number or member order; the server answers compactly, and a raw line break, which could only
//! be whitespace, is printed as a space); `inspect` prints one dead letter (event, attempts, error
//! history) as pretty JSON, parsed to be indented; `retry` prints the server's answer, if it has a
//! body, as one JSON line; `discard` prints nothing on stdout. Dead-letter ids
//! (`topic:partition:offset`) are percent-encoded into the URL. The server keeps a dead letter's
//! event as a parsed `Value` (`broker::DeadLetter`), so what it answers is that, not the stored
//! text.

use std::io::{self, Write};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::client::{segment, Client};
use crate::commands::{print_line, print_pretty};
use crate::output::{field, time_ms, Output, Table};

/// `driftless dlq ...`.
#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Print a group's dead letters (a table, or one JSON object per line).
    List {
        /// Group name.
        group: String,
    },
    /// Print one dead letter with its event and error history.
    Inspect {
        /// Group name.
        group: String,
        /// Dead-letter id (`topic:partition:offset`).
        id: String,
    },
    /// Deliver a dead letter to the group again.
    Retry {
        /// Group name.
        group: String,
        /// Dead-letter id (`topic:partition:offset`).
        id: String,
    },
    /// Remove a dead letter from the queue for good.
    Discard {
        /// Group name.
        group: String,
        /// Dead-letter id (`topic:partition:offset`).
        id: String,
    },
}

fn path(group: &str, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("/v1/groups/{}/dlq/{}", segment(group), segment(id)),
        None => format!("/v1/groups/{}/dlq", segment(group)),
    }
}

/// The `dlq list` table: id, state, attempts, when, the event's id and type, the last error.
fn list_table(letters: &[Value]) -> Table {
    let mut table =
        Table::new(&["ID", "STATE", "ATTEMPTS", "DEAD AT (UTC)", "EVENT ID", "TYPE", "LAST ERROR"]);
    for l in letters {
        let last_error = l["errors"]
            .as_array()
            .and_then(|e| e.last())
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_string();
        table.row(vec![
            field(l, "id"),
            field(l, "state"),
            field(l, "attempts"),
            time_ms(l["dead_at_ms"].as_i64().unwrap_or(0)),
            field(&l["event"], "id"),
            field(&l["event"], "type"),
            last_error,
        ]);
    }
    table
}

/// Runs `driftless dlq ...`.
pub fn run(server: &str, output: Output, args: DlqArgs) -> anyhow::Result<()> {
    let client = Client::new(server)?;
    let mut out = io::stdout().lock();
    match args.command {
        DlqCommand::List { group } if !output.is_json() => {
            let letters: Vec<Value> = client.get(&path(&group, None))?;
            if letters.is_empty() {
                writeln!(out, "no dead letters in group {group}").context("writing to stdout")?;
                return out.flush().context("writing to stdout");
            }
            list_table(&letters).write(&mut out)
        }
        DlqCommand::List { group } => {
            let letters: Vec<Box<RawValue>> = client.get(&path(&group, None))?;
            for letter in &letters {
                // A raw line break can only be whitespace between tokens: keep one per line.
                let text = letter.get().replace(['\r', '\n'], " ");
                writeln!(out, "{text}").context("writing to stdout")?;
            }
            out.flush().context("writing to stdout")
        }
        DlqCommand::Inspect { group, id } => {
            let letter: Value = client.get(&path(&group, Some(&id)))?;
            print_pretty(&mut out, &letter)
        }
        DlqCommand::Retry { group, id } => {
            match client.post_empty(&format!("{}/retry", path(&group, Some(&id))))? {
                Some(answer) => {
                    print_line(&mut out, &answer)?;
                    out.flush()?;
                }
                None => {
                    let _ = writeln!(
                        io::stderr(),
                        "dead letter {id:?} of group {group:?} queued for redelivery"
                    );
                }
            }
            Ok(())
        }
        DlqCommand::Discard { group, id } => {
            client.delete(&path(&group, Some(&id)))?;
            let _ = writeln!(io::stderr(), "discarded dead letter {id:?} of group {group:?}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_paths_encode_ids() {
        assert_eq!(path("billing", None), "/v1/groups/billing/dlq");
        assert_eq!(path("billing", Some("orders:0:12")), "/v1/groups/billing/dlq/orders%3A0%3A12");
    }
}

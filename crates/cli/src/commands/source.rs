//! `driftless source list|describe|pause|resume`: the server's configured sources.
//!
//! Invariants: `list` prints a table, or one compact JSON line per source (state, error, events,
//! slot lag, outbox backlog, snapshot progress); `describe` prints one as pretty JSON; `pause` and
//! `resume` print the source's status after the change as one JSON line; `progress` draws the
//! initial snapshot's progress bar on stderr until it finishes (waiting first while the source is
//! still starting: only then does it know whether a snapshot comes).

use std::io::{self, Write};

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::client::{segment, Client};
use crate::commands::{print_line, print_lines, print_pretty};
use crate::output::{field, time_ms, Output, Table};

/// `driftless source ...`.
#[derive(Debug, Args)]
pub struct SourceArgs {
    #[command(subcommand)]
    command: SourceCommand,
}

#[derive(Debug, Subcommand)]
enum SourceCommand {
    /// Print every source's state and figures (a table, or one JSON object per line).
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
    /// Show a CDC source's initial snapshot as a progress bar (stderr) until it finishes.
    Progress {
        /// Source name.
        name: String,
        /// Print the current progress once instead of following it.
        #[arg(long)]
        once: bool,
    },
}

/// Width of the progress bar, in characters.
const BAR_CHARS: u64 = 30;
/// How often `progress` asks the server, in milliseconds.
const PROGRESS_POLL_MS: u64 = 500;

/// `snapshot [#######...] 12345/25000 rows (49%)`; a running snapshot never shows 100%.
pub fn progress_bar(done: u64, total: u64) -> String {
    let total = total.max(done).max(1);
    let filled = (done * BAR_CHARS / total).min(BAR_CHARS);
    format!(
        "snapshot [{}{}] {done}/{total} rows ({}%)",
        "#".repeat(filled as usize),
        ".".repeat((BAR_CHARS - filled) as usize),
        done * 100 / total
    )
}

/// The `source list` table.
fn list_table(sources: &[Value]) -> Table {
    let mut table = Table::new(&[
        "NAME",
        "KIND",
        "STATE",
        "EVENTS",
        "LAST EVENT (UTC)",
        "SLOT LAG BYTES",
        "BACKLOG ROWS",
        "ERROR",
    ]);
    // -1 means unknown (or not this kind of source).
    let known = |v: &Value| match v.as_i64() {
        Some(n) if n >= 0 => n.to_string(),
        _ => "-".to_string(),
    };
    for s in sources {
        table.row(vec![
            field(s, "name"),
            field(s, "kind"),
            field(s, "state"),
            field(s, "events_total"),
            time_ms(s["last_event_ms"].as_i64().unwrap_or(0)),
            known(&s["slot_lag_bytes"]),
            known(&s["outbox_backlog_rows"]),
            field(s, "error"),
        ]);
    }
    table
}

/// Runs `driftless source ...`.
pub fn run(server: &str, output: Output, args: SourceArgs) -> anyhow::Result<()> {
    let client = Client::new(server)?;
    let mut out = io::stdout().lock();
    let path = |name: &str| format!("/v1/sources/{}", segment(name));
    match args.command {
        SourceCommand::List => {
            let sources: Vec<Value> = client.get("/v1/sources")?;
            if output.is_json() {
                return print_lines(&mut out, &sources);
            }
            if sources.is_empty() {
                writeln!(out, "no sources configured (the server's [[source]] tables)")?;
                return Ok(out.flush()?);
            }
            list_table(&sources).write(&mut out)
        }
        SourceCommand::Describe { name } => {
            let source: Value = client.get(&path(&name))?;
            print_pretty(&mut out, &source)
        }
        SourceCommand::Pause { name } => {
            let answer = client.post_empty(&format!("{}/pause", path(&name)))?;
            print_line(&mut out, &answer.unwrap_or(Value::Null))
        }
        SourceCommand::Progress { name, once } => {
            let mut stderr = io::stderr().lock();
            loop {
                let s: Value = client.get(&path(&name))?;
                let done = s["snapshot_rows_done"].as_u64().unwrap_or(0);
                let total = s["snapshot_rows_total"].as_u64().unwrap_or(0);
                let state = s["state"].as_str().unwrap_or("unknown");
                if total == 0 && state == "starting" && !once {
                    // Not set up yet: it plans its snapshot (or finds none to take) first.
                    write!(stderr, "\r{name}: waiting for the source to start")?;
                    stderr.flush()?;
                    std::thread::sleep(std::time::Duration::from_millis(PROGRESS_POLL_MS));
                    continue;
                }
                if total == 0 && state != "snapshotting" {
                    writeln!(stderr, "{name}: no snapshot (state {state})")?;
                    return Ok(());
                }
                write!(stderr, "\r{name}: {}", progress_bar(done, total))?;
                stderr.flush()?;
                if once || (state != "snapshotting" && state != "starting") {
                    writeln!(stderr, " — {state}")?;
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_millis(PROGRESS_POLL_MS));
            }
        }
        SourceCommand::Resume { name } => {
            let answer = client.post_empty(&format!("{}/resume", path(&name)))?;
            print_line(&mut out, &answer.unwrap_or(Value::Null))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::progress_bar;

    #[test]
    fn the_bar_fills_with_progress_and_never_divides_by_zero() {
        assert_eq!(progress_bar(0, 0), format!("snapshot [{}] 0/1 rows (0%)", ".".repeat(30)));
        assert_eq!(
            progress_bar(5, 10),
            format!("snapshot [{}{}] 5/10 rows (50%)", "#".repeat(15), ".".repeat(15))
        );
        // Rows read can pass an estimate: the total follows.
        assert_eq!(
            progress_bar(12, 10),
            format!("snapshot [{}] 12/12 rows (100%)", "#".repeat(30))
        );
    }
}

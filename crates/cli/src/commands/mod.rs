//! The client commands of the `driftless` binary: each parses its flags (clap derive), calls the
//! server's HTTP API through [`crate::client::Client`] and prints the result.
//!
//! Invariants: results go to stdout, as tables and sentences or as JSON (one compact object per
//! line for streams and lists, pretty-printed for a single described object) as `--output` says
//! (see `crate::output`); warnings and confirmations go to stderr; a failure is returned as an
//! error (the binary prints it and exits non-zero). Writing to stdout is checked, so a closed
//! pipe stops a command instead of being ignored. A topic name from the command line is checked
//! against the server's naming rules before any request, so an invalid one is refused with the
//! rule it breaks, never answered "unknown topic, create it" with a name that cannot be created.

pub mod consume;
pub mod dlq;
pub mod group;
pub mod outbox;
pub mod produce;
pub mod reconcile;
pub mod sink;
pub mod source;
pub mod token;
pub mod topic;

use std::io::Write;

use anyhow::Context;
use serde::Serialize;

/// Writes `value` as one compact JSON line.
pub fn print_line<W: Write, T: Serialize + ?Sized>(out: &mut W, value: &T) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, value).context("writing to stdout")?;
    out.write_all(b"\n").context("writing to stdout")
}

/// Writes `value` as pretty JSON and flushes.
pub fn print_pretty<W: Write, T: Serialize + ?Sized>(out: &mut W, value: &T) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).context("writing to stdout")?;
    out.write_all(b"\n").context("writing to stdout")?;
    out.flush().context("writing to stdout")
}

/// Writes each item as one compact JSON line and flushes.
pub fn print_lines<W: Write, T: Serialize>(out: &mut W, items: &[T]) -> anyhow::Result<()> {
    for item in items {
        print_line(out, item)?;
    }
    out.flush().context("writing to stdout")
}

/// Refuses `name` unless it is a valid topic name, saying which rule it breaks.
pub fn check_topic_name(name: &str) -> anyhow::Result<()> {
    match driftless_core::TopicName::check(name) {
        None => Ok(()),
        Some(reason) => {
            anyhow::bail!("{name:?} is not a valid topic name: {reason}; no request was sent")
        }
    }
}

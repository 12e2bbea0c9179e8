//! `driftless produce TOPIC`: publishes CloudEvents read as JSON lines from stdin.
//!
//! Each non-blank input line is one structured-mode CloudEvent, sent as the user wrote it except
//! that an absent `id` is replaced by a random UUID-shaped id (with a warning, once per run, that
//! retries of such events cannot be deduplicated); the server validates everything else. Events
//! are sent in batches of `--batch`; after each batch is acknowledged, one JSON line per event is
//! printed (`id`, `partition`, `offset`, `duplicate`), in input order, and stdout is flushed.
//!
//! Invariants: a bad input line (not JSON, not an object, unreadable) stops the run with an error
//! naming its 1-based line number, after the lines before it have been sent, acknowledged and
//! printed; a problem answered for a batch is reported with the input line of the event at fault
//! (the problem's `event_index` mapped through the batch), and nothing after that batch is sent.

use std::io::{self, BufRead, BufWriter, Write};

use anyhow::Context;
use clap::Args;
use driftless_broker::Produced;
use rand::Rng;
use serde::Deserialize;
use serde_json::Value;

use crate::client::{segment, Client, ClientError, Problem, CLOUDEVENTS_BATCH};
use crate::commands::print_line;

/// Flags of `driftless produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to publish to.
    pub topic: String,

    /// Events per request. The server rejects batches above its `produce_events_max`
    /// (10000 by default).
    #[arg(long, default_value_t = 100, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch: u32,
}

/// Why an input line cannot be sent.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// The line is not JSON.
    #[error("input line {line}, column {column}: not valid JSON: {reason}")]
    NotJson {
        /// 1-based line number.
        line: usize,
        /// 1-based column of the error within the line.
        column: usize,
        /// What the JSON parser expected.
        reason: String,
    },
    /// The line is JSON but not an object.
    #[error("input line {line}: an event must be a JSON object, got {kind}")]
    NotObject {
        /// 1-based line number.
        line: usize,
        /// What it was instead.
        kind: &'static str,
    },
    /// The line could not be read (e.g. it is not UTF-8).
    #[error("input line {line}: cannot read it: {error}")]
    Read {
        /// 1-based line number.
        line: usize,
        /// The read error (in the message, not a `source`, so it is printed once).
        error: io::Error,
    },
}

/// An input line ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The event, as written, with an `id` added if it had none.
    pub event: Value,
    /// Whether the `id` was generated here.
    pub generated_id: bool,
}

/// Parses input line `line` (1-based): `None` for a blank line, else the event to send.
pub fn prepare_line(
    line: usize,
    text: &str,
    new_id: impl FnOnce() -> String,
) -> Result<Option<Prepared>, LineError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let value: Value = serde_json::from_str(text).map_err(|e| {
        // serde_json's message ends with its own "at line 1 column C", which would contradict
        // the input line number: keep only the reason.
        let message = e.to_string();
        let position = format!(" at line {} column {}", e.line(), e.column());
        let reason = message.strip_suffix(&position).unwrap_or(&message).to_string();
        LineError::NotJson { line, column: e.column(), reason }
    })?;
    let Value::Object(mut map) = value else {
        return Err(LineError::NotObject { line, kind: driftless_core::json_kind(&value) });
    };
    let generated_id = !map.contains_key("id");
    if generated_id {
        map.insert("id".to_string(), Value::String(new_id()));
    }
    Ok(Some(Prepared { event: Value::Object(map), generated_id }))
}

/// A random id shaped like a version-4 UUID.
pub fn random_id<R: Rng + ?Sized>(rng: &mut R) -> String {
    let mut v: u128 = rng.random();
    v = (v & !(0xF << 76)) | (0x4 << 76); // version 4
    v = (v & !(0x3 << 62)) | (0x2 << 62); // RFC 4122 variant
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        (v >> 96) as u32,
        (v >> 80) as u16,
        (v >> 64) as u16,
        (v >> 48) as u16,
        v & 0xFFFF_FFFF_FFFF
    )
}

/// The input line of the event at `event_index` in a batch whose events came from `lines`.
pub fn line_of_event(lines: &[usize], event_index: Option<u64>) -> Option<usize> {
    lines.get(usize::try_from(event_index?).ok()?).copied()
}

/// The message for a problem the server answered to a batch of input lines.
pub fn batch_problem_message(problem: &Problem, lines: &[usize]) -> String {
    let summary = problem.summary();
    match (line_of_event(lines, problem.event_index), problem.event_index) {
        (Some(line), _) => format!("{summary} (input line {line})"),
        (None, Some(i)) => format!("{summary} (event index {i} of {})", describe_lines(lines)),
        (None, None) => format!("{summary} ({})", describe_lines(lines)),
    }
}

fn describe_lines(lines: &[usize]) -> String {
    match (lines.first(), lines.last()) {
        (Some(a), Some(b)) if a == b => format!("the batch of input line {a}"),
        (Some(a), Some(b)) => format!("the batch of input lines {a}-{b}"),
        _ => "an empty batch".to_string(),
    }
}

#[derive(Debug, Deserialize)]
struct ProduceResponse {
    results: Vec<Produced>,
}

/// Events waiting to be sent, with the input line of each.
#[derive(Debug, Default)]
struct Batch {
    lines: Vec<usize>,
    events: Vec<Value>,
}

impl Batch {
    /// Sends the batch (if not empty), prints one line per result and flushes, then empties it.
    fn send<W: Write>(&mut self, client: &Client, path: &str, out: &mut W) -> anyhow::Result<()> {
        if self.events.is_empty() {
            return Ok(());
        }
        let body = serde_json::to_vec(&self.events).context("encoding the batch")?;
        let response: ProduceResponse = match client.post_bytes(path, CLOUDEVENTS_BATCH, &body) {
            Ok(r) => r,
            Err(ClientError::Problem(p)) => {
                anyhow::bail!("{}", batch_problem_message(&p, &self.lines))
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("sending {}", describe_lines(&self.lines))))
            }
        };
        if response.results.len() != self.events.len() {
            anyhow::bail!(
                "the server answered {} results for {} events ({})",
                response.results.len(),
                self.events.len(),
                describe_lines(&self.lines)
            );
        }
        for produced in &response.results {
            print_line(out, produced)?;
        }
        out.flush().context("writing to stdout")?;
        self.lines.clear();
        self.events.clear();
        Ok(())
    }
}

/// Reads events from `input` and produces them to `topic` in batches of `batch_size`, printing
/// results to `out` and the missing-id warning to `warn`.
pub fn produce<R: BufRead, W: Write, E: Write>(
    client: &Client,
    topic: &str,
    batch_size: usize,
    input: R,
    out: &mut W,
    warn: &mut E,
) -> anyhow::Result<()> {
    let path = format!("/v1/topics/{}/events", segment(topic));
    let batch_size = batch_size.max(1);
    let mut batch = Batch::default();
    let mut warned = false;
    let mut rng = rand::rng();
    for (index, line) in input.lines().enumerate() {
        let line_no = index + 1;
        let prepared = line
            .map_err(|error| LineError::Read { line: line_no, error })
            .and_then(|text| prepare_line(line_no, &text, || random_id(&mut rng)));
        match prepared {
            Ok(None) => {}
            Ok(Some(p)) => {
                if p.generated_id && !warned {
                    warned = true;
                    // Best effort: a closed stderr must not stop the run.
                    let _ = writeln!(
                        warn,
                        "warning: input line {line_no} has no `id`; events without one get a \
                         random id, so retrying them cannot be deduplicated (give each event a \
                         stable `id` to make produce idempotent)"
                    );
                }
                batch.lines.push(line_no);
                batch.events.push(p.event);
                if batch.events.len() >= batch_size {
                    batch.send(client, &path, out)?;
                }
            }
            Err(e) => {
                batch.send(client, &path, out)?;
                return Err(e.into());
            }
        }
    }
    batch.send(client, &path, out)
}

/// Runs `driftless produce` on stdin and stdout.
pub fn run(server: &str, args: ProduceArgs) -> anyhow::Result<()> {
    let client = Client::new(server)?;
    let mut out = BufWriter::new(io::stdout().lock());
    produce(
        &client,
        &args.topic,
        args.batch as usize,
        io::stdin().lock(),
        &mut out,
        &mut io::stderr(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed() -> String {
        "generated".to_string()
    }

    #[test]
    fn blank_lines_are_skipped() {
        for blank in ["", "   ", "\t"] {
            assert_eq!(prepare_line(1, blank, fixed).unwrap(), None);
        }
    }

    #[test]
    fn an_event_is_kept_as_written() {
        let text = r#"{"specversion":"0.3","id":"a","source":"/s","type":"t","x":[1,{"y":null}]}"#;
        let p = prepare_line(1, text, || panic!("must not generate")).unwrap().unwrap();
        assert!(!p.generated_id);
        assert_eq!(p.event, serde_json::from_str::<Value>(text).unwrap());
    }

    #[test]
    fn a_missing_id_is_generated_but_a_present_one_is_kept_even_if_invalid() {
        let p = prepare_line(4, r#"{"source":"/s","type":"t"}"#, fixed).unwrap().unwrap();
        assert!(p.generated_id);
        assert_eq!(p.event["id"], "generated");
        assert_eq!(p.event["source"], "/s");
        // The server validates ids; the CLI does not rewrite them.
        let p = prepare_line(4, r#"{"id":null}"#, fixed).unwrap().unwrap();
        assert!(!p.generated_id);
        assert_eq!(p.event["id"], Value::Null);
    }

    #[test]
    fn bad_lines_name_their_line_number() {
        let e = prepare_line(3, "{not json", fixed).unwrap_err();
        assert!(matches!(e, LineError::NotJson { line: 3, .. }));
        assert_eq!(
            e.to_string(),
            "input line 3, column 2: not valid JSON: key must be a string",
            "{e:?}"
        );
        let e = prepare_line(5, r#"{"id":"a"} x"#, fixed).unwrap_err();
        assert_eq!(e.to_string(), "input line 5, column 12: not valid JSON: trailing characters");
        let e = prepare_line(7, "[1,2]", fixed).unwrap_err();
        assert_eq!(e.to_string(), "input line 7: an event must be a JSON object, got an array");
        let e = prepare_line(8, "\"x\"", fixed).unwrap_err();
        assert!(matches!(e, LineError::NotObject { line: 8, kind: "a string" }));
    }

    #[test]
    fn random_ids_look_like_uuid_v4_and_differ() {
        let mut rng = rand::rng();
        let a = random_id(&mut rng);
        let b = random_id(&mut rng);
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12]);
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert!(parts[2].starts_with('4'), "{a}");
        assert!(matches!(parts[3].chars().next(), Some('8' | '9' | 'a' | 'b')), "{a}");
    }

    #[test]
    fn a_problem_event_index_maps_to_the_input_line() {
        // Batch built from lines 5, 6 and 9 (7 and 8 were blank).
        let lines = [5, 6, 9];
        assert_eq!(line_of_event(&lines, Some(2)), Some(9));
        assert_eq!(line_of_event(&lines, Some(0)), Some(5));
        assert_eq!(line_of_event(&lines, Some(3)), None);
        assert_eq!(line_of_event(&lines, None), None);
        let mut p = Problem {
            title: "Invalid event".into(),
            status: 400,
            detail: Some("required attribute `source` is missing".into()),
            field: Some("source".into()),
            event_index: Some(2),
        };
        assert_eq!(
            batch_problem_message(&p, &lines),
            "Invalid event: required attribute `source` is missing (field `source`) \
             (input line 9)"
        );
        p.event_index = None;
        p.field = None;
        assert!(batch_problem_message(&p, &lines).ends_with("(the batch of input lines 5-9)"));
        p.event_index = Some(10);
        assert!(batch_problem_message(&p, &lines).contains("event index 10 of the batch"));
    }
}

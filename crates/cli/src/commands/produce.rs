//! `driftless produce TOPIC`: publishes CloudEvents read as JSON lines from stdin.
//!
//! Each non-blank input line is one structured-mode CloudEvent, sent as the exact text the user
//! wrote (surrounding whitespace aside): numbers of any size and precision, member order, escapes
//! and whitespace inside the line reach the server, and are stored, byte for byte. An event
//! without an `id` is refused, naming its line: a producer retrying it would store it twice, as
//! nothing could recognise the retry. With `--generate-ids` such an event gets a new UUIDv7
//! instead, written in as `"id":"<uuid>",` right after the opening `{` (the user chose ids that
//! a retry cannot deduplicate). Each line is checked as the server checks a produced event
//! ([`RawEvent::parse`]: a valid CloudEvent, no member twice, no extension named like an
//! attribute), so the CLI refuses what the HTTP API refuses, naming the input line.
//!
//! Events are sent in batches (a JSON array of the lines' texts, written by hand) of at most
//! `--batch` events, whose request body stays within `--batch-bytes-max` and whose events
//! together stay within a partition's batch limit on disk, so a run of large events is split
//! into requests the server accepts instead of failing with "Request body too large". A server
//! whose `request_body_bytes_max` is lower says so in its 413 (`limit_bytes`); the batch is then
//! split to fit (the server appended none of it) and the rest of the run keeps to that limit. An
//! event larger than a topic stores ([`EVENT_BYTES_MAX`], placement key included), or than one
//! request may carry, is refused naming its line, its size and the limit. After each batch is
//! acknowledged, one JSON line per event is printed (`id`, `partition`, `offset`, `duplicate`),
//! in input order, and stdout is flushed.
//!
//! Invariants: the topic name is checked before anything is read or sent; the text sent for a
//! line is the line's JSON text, never parsed into a `serde_json::Value` and written again, plus
//! at most the generated `id` member; a bad input line (not JSON, not an object, not a valid
//! event, no `id` without `--generate-ids`, too large, unreadable) stops the run with an error
//! naming its 1-based line number, after the lines before it have been sent, acknowledged and
//! printed, and nothing from it or after it is sent; a problem answered for a batch (what the
//! server checks beyond the event itself) is reported with the input line of the event at fault
//! (the problem's `event_index` mapped through the batch), and nothing after that batch is sent.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufWriter, Write};

use anyhow::Context;
use clap::Args;
use driftless_broker::Produced;
use driftless_core::RawEvent;
use rand::Rng;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::client::{segment, Client, ClientError, Problem, CLOUDEVENTS_BATCH};
use crate::commands::{check_topic_name, print_line};

/// Largest event a topic stores, in bytes: its placement key plus its JSON text (the log's
/// `record_bytes_max`, the same for every user topic).
pub const EVENT_BYTES_MAX: usize = 1 << 20;

/// Most bytes the events of one request may take on disk in one partition (the log's
/// `batch_bytes_max`, the same for every user topic): each event's placement key, JSON text and
/// record header ([`driftless_log::RECORD_HEADER_BYTES`]). A batch is kept under it as if every
/// event went to the same partition.
pub const PARTITION_BATCH_BYTES_MAX: usize = 8 << 20;

/// The server's default `request_body_bytes_max`, the default of `--batch-bytes-max`.
pub const REQUEST_BYTES_MAX_DEFAULT: u64 = 8 << 20;

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

    /// Largest request body, in bytes: batches are split to stay within it. The default is the
    /// server's default `request_body_bytes_max`; a server with a lower limit names it when it
    /// refuses a body, and produce then keeps to that.
    #[arg(long, default_value_t = REQUEST_BYTES_MAX_DEFAULT, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1024..=(1 << 30)))]
    pub batch_bytes_max: u64,

    /// Give an event without an `id` a new UUIDv7 instead of refusing it. Retrying such an
    /// event stores it again: only a stable `id` lets the server recognise a retry.
    #[arg(long)]
    pub generate_ids: bool,
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
    /// The line is a JSON object but not an event the server accepts (the server's own check,
    /// [`RawEvent::parse`]: a missing or mistyped attribute, a member that occurs twice, ...).
    #[error("input line {line}: invalid CloudEvent attribute `{attribute}`: {reason}")]
    Invalid {
        /// 1-based line number.
        line: usize,
        /// The attribute at fault (`json` for the text as a whole).
        attribute: String,
        /// What was expected.
        reason: String,
    },
    /// The event has no `id` and `--generate-ids` was not given.
    #[error(
        "input line {line}: the event has no `id`. Give each event a stable `id` (the server \
         recognises a retried event by it and stores it once), or pass --generate-ids to give \
         events without one a new UUIDv7 (a retry of those is then stored twice)"
    )]
    MissingId {
        /// 1-based line number.
        line: usize,
    },
    /// The event is larger than a limit.
    #[error(
        "input line {line}: the event is {bytes} bytes{what}, over the {limit} of {max} bytes; \
         nothing from this line on was sent"
    )]
    TooLarge {
        /// 1-based line number.
        line: usize,
        /// Its size, as `what` says.
        bytes: usize,
        /// How `bytes` was counted.
        what: &'static str,
        /// The limit, named for the user.
        limit: &'static str,
        /// The limit in bytes.
        max: u64,
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
    /// The event's JSON text: the line as written (without surrounding whitespace), with an
    /// `id` member written in after the opening `{` if it had none.
    pub event: String,
    /// Whether the `id` was generated here.
    pub generated_id: bool,
    /// Its size as the topic stores it: placement key plus JSON text.
    pub stored_bytes: usize,
}

/// Checks input line `line` (1-based): `None` for a blank line, else the event text to send.
/// An event without an `id` gets one from `new_id` when given, else is refused.
pub fn prepare_line(
    line: usize,
    text: &str,
    new_id: Option<&mut dyn FnMut() -> String>,
) -> Result<Option<Prepared>, LineError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    // A `RawValue` checks the syntax and keeps the text; it holds the value without the
    // whitespace around it.
    let raw: &RawValue = serde_json::from_str(text).map_err(|e| {
        // serde_json's message ends with its own "at line 1 column C", which would contradict
        // the input line number: keep only the reason.
        let message = e.to_string();
        let position = format!(" at line {} column {}", e.line(), e.column());
        let reason = message.strip_suffix(&position).unwrap_or(&message).to_string();
        LineError::NotJson { line, column: e.column(), reason }
    })?;
    let json = raw.get();
    let Some(members) = json.strip_prefix('{') else {
        return Err(LineError::NotObject { line, kind: kind_of(json) });
    };
    // Reading the member names of text that parsed as JSON fails only where the event check
    // fails too (nesting past serde_json's depth limit): then no id is added, and that check
    // reports the line as the server would.
    let missing_id = !has_member(json, "id").unwrap_or(true);
    let checked = match (missing_id, new_id) {
        (false, _) => RawEvent::parse(raw),
        (true, None) => return Err(LineError::MissingId { line }),
        (true, Some(new_id)) => {
            // A `Value`'s Display is its JSON text: the id, quoted and escaped.
            let id = serde_json::Value::String(new_id()).to_string();
            let comma = if members.trim_start().starts_with('}') { "" } else { "," };
            RawEvent::from_string(format!("{{\"id\":{id}{comma}{members}"))
        }
    };
    let checked = checked.map_err(|e| LineError::Invalid {
        line,
        attribute: e.attribute,
        reason: e.reason,
    })?;
    let stored_bytes = checked.placement_key().len() + checked.json().len();
    Ok(Some(Prepared { event: checked.json().to_owned(), generated_id: missing_id, stored_bytes }))
}

/// Whether the JSON object `json` has a top-level member called `name` (after unescaping, as
/// the server reads names), whatever its value.
fn has_member(json: &str, name: &str) -> Result<bool, serde_json::Error> {
    let members: BTreeMap<String, IgnoredAny> = serde_json::from_str(json)?;
    Ok(members.contains_key(name))
}

/// What the JSON text `json` (not an object) is, by its first byte.
fn kind_of(json: &str) -> &'static str {
    match json.as_bytes().first() {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// A UUIDv7 (RFC 9562): `now_ms` in the first 48 bits, then random bits, so ids generated later
/// sort later.
pub fn uuid_v7<R: Rng + ?Sized>(now_ms: u64, rng: &mut R) -> String {
    let random: u128 = rng.random();
    let mut v = (u128::from(now_ms & 0xFFFF_FFFF_FFFF) << 80) | (random & ((1 << 80) - 1));
    v = (v & !(0xF << 76)) | (0x7 << 76); // version 7
    v = (v & !(0x3 << 62)) | (0x2 << 62); // RFC 9562 variant
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

/// The limits a batch is kept within.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most events per request (`--batch`).
    pub events_max: usize,
    /// Largest request body, in bytes (`--batch-bytes-max`, or what the server said).
    pub body_bytes_max: u64,
    /// Whether `body_bytes_max` is the server's own figure (from a 413), not a default.
    pub body_limit_from_server: bool,
}

/// Bytes of a request body holding events of these sizes: `[`, the events, a comma between two,
/// `]`.
fn body_bytes(sizes: impl Iterator<Item = usize>) -> u64 {
    let (count, sum) = sizes.fold((0u64, 0u64), |(n, s), b| (n + 1, s + b as u64));
    2 + sum + count.saturating_sub(1)
}

/// Events waiting to be sent, with the input line of each.
#[derive(Debug, Default)]
struct Batch {
    lines: Vec<usize>,
    /// Each event's JSON text, as [`prepare_line`] checked it.
    events: Vec<String>,
    /// Each event's size on disk (placement key, JSON text, record header).
    disk_bytes: Vec<usize>,
}

/// The request body for `events`: a JSON array of their texts, as they are.
fn batch_body(events: &[String]) -> Vec<u8> {
    let bytes: usize = events.iter().map(|e| e.len() + 1).sum();
    let mut body = Vec::with_capacity(bytes + 2);
    body.push(b'[');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(event.as_bytes());
    }
    body.push(b']');
    body
}

/// Refuses an event that no request within `limits` can carry.
fn check_fits(line: usize, event: &Prepared, limits: &Limits) -> Result<(), LineError> {
    if event.stored_bytes > EVENT_BYTES_MAX {
        return Err(LineError::TooLarge {
            line,
            bytes: event.stored_bytes,
            what: " as stored (placement key plus JSON text)",
            limit: "largest event a topic stores (record_bytes_max)",
            max: EVENT_BYTES_MAX as u64,
        });
    }
    let alone = body_bytes(std::iter::once(event.event.len()));
    if alone > limits.body_bytes_max {
        let limit = if limits.body_limit_from_server {
            "server's largest request body (request_body_bytes_max)"
        } else {
            "largest request body (--batch-bytes-max)"
        };
        return Err(LineError::TooLarge {
            line,
            bytes: event.event.len(),
            what: " of JSON",
            limit,
            max: limits.body_bytes_max,
        });
    }
    Ok(())
}

impl Batch {
    /// Whether `event` can join the batch within `limits`.
    fn has_room(&self, event: &Prepared, limits: &Limits) -> bool {
        if self.events.is_empty() {
            return true;
        }
        let body = body_bytes(self.events.iter().map(String::len).chain([event.event.len()]));
        let disk: usize = self.disk_bytes.iter().sum::<usize>()
            + event.stored_bytes
            + driftless_log::RECORD_HEADER_BYTES;
        self.events.len() < limits.events_max
            && body <= limits.body_bytes_max
            && disk <= PARTITION_BATCH_BYTES_MAX
    }

    fn push(&mut self, line: usize, event: Prepared) {
        self.lines.push(line);
        self.disk_bytes.push(event.stored_bytes + driftless_log::RECORD_HEADER_BYTES);
        self.events.push(event.event);
    }

    /// Sends the batch (if not empty) in as many requests as the server's body limit needs,
    /// printing one line per result and flushing after each, then empties it. A 413
    /// `body-too-large` lowers `limits` to the server's figure (or, without one, halves the
    /// body) and splits what is left; the server appended nothing of a refused request.
    fn send<W: Write>(
        &mut self,
        client: &Client,
        path: &str,
        limits: &mut Limits,
        out: &mut W,
    ) -> anyhow::Result<()> {
        let mut start = 0;
        while start < self.events.len() {
            // As many events as fit the body limit, at least one.
            let mut end = start + 1;
            while end < self.events.len()
                && body_bytes(self.events[start..=end].iter().map(String::len))
                    <= limits.body_bytes_max
            {
                end += 1;
            }
            let (lines, events) = (&self.lines[start..end], &self.events[start..end]);
            let sent = body_bytes(events.iter().map(String::len));
            let response: ProduceResponse =
                match client.post_bytes(path, CLOUDEVENTS_BATCH, &batch_body(events)) {
                    Ok(r) => r,
                    Err(ClientError::Problem(p)) if p.is("body-too-large") => {
                        let server_max = p.limit_bytes.filter(|&max| max < sent);
                        limits.body_bytes_max = server_max.unwrap_or(sent / 2).max(2);
                        limits.body_limit_from_server = server_max.is_some();
                        if events.len() == 1 {
                            return Err(LineError::TooLarge {
                                line: lines[0],
                                bytes: events[0].len(),
                                what: " of JSON",
                                limit: "server's largest request body (request_body_bytes_max)",
                                max: p.limit_bytes.unwrap_or(sent),
                            }
                            .into());
                        }
                        // Split again within the new limit; a single event over it is refused.
                        let new = *limits;
                        for (&line, event) in lines.iter().zip(events) {
                            let alone = body_bytes(std::iter::once(event.len()));
                            if alone > new.body_bytes_max {
                                return Err(LineError::TooLarge {
                                    line,
                                    bytes: event.len(),
                                    what: " of JSON",
                                    limit: "server's largest request body \
                                            (request_body_bytes_max)",
                                    max: new.body_bytes_max,
                                }
                                .into());
                            }
                        }
                        continue;
                    }
                    Err(ClientError::Problem(p)) => {
                        anyhow::bail!("{}", batch_problem_message(&p, lines))
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e)
                            .context(format!("sending {}", describe_lines(lines))))
                    }
                };
            if response.results.len() != events.len() {
                anyhow::bail!(
                    "the server answered {} results for {} events ({})",
                    response.results.len(),
                    events.len(),
                    describe_lines(lines)
                );
            }
            for produced in &response.results {
                print_line(out, produced)?;
            }
            out.flush().context("writing to stdout")?;
            start = end;
        }
        self.lines.clear();
        self.events.clear();
        self.disk_bytes.clear();
        Ok(())
    }
}

/// Reads events from `input` and produces them to `topic` in batches within `limits`, printing
/// results to `out`; events without an `id` get a UUIDv7 when `generate_ids`, else stop the run.
pub fn produce<R: BufRead, W: Write>(
    client: &Client,
    topic: &str,
    mut limits: Limits,
    generate_ids: bool,
    input: R,
    out: &mut W,
) -> anyhow::Result<()> {
    let path = format!("/v1/topics/{}/events", segment(topic));
    limits.events_max = limits.events_max.max(1);
    let mut batch = Batch::default();
    let mut rng = rand::rng();
    let mut new_id = || {
        let now = driftless_core::Clock::now_ms(&driftless_core::SystemClock);
        uuid_v7(u64::try_from(now).unwrap_or(0), &mut rng)
    };
    for (index, line) in input.lines().enumerate() {
        let line_no = index + 1;
        let generator: Option<&mut dyn FnMut() -> String> =
            if generate_ids { Some(&mut new_id) } else { None };
        let prepared = line
            .map_err(|error| LineError::Read { line: line_no, error })
            .and_then(|text| prepare_line(line_no, &text, generator))
            .and_then(|p| match p {
                Some(p) => check_fits(line_no, &p, &limits).map(|()| Some(p)),
                None => Ok(None),
            });
        match prepared {
            Ok(None) => {}
            Ok(Some(p)) => {
                if !batch.has_room(&p, &limits) {
                    batch.send(client, &path, &mut limits, out)?;
                    // The server may have named a lower body limit meanwhile.
                    if let Err(e) = check_fits(line_no, &p, &limits) {
                        return Err(e.into());
                    }
                }
                batch.push(line_no, p);
            }
            Err(e) => {
                batch.send(client, &path, &mut limits, out)?;
                return Err(e.into());
            }
        }
    }
    batch.send(client, &path, &mut limits, out)
}

/// Runs `driftless produce` on stdin and stdout.
pub fn run(server: &str, args: ProduceArgs) -> anyhow::Result<()> {
    check_topic_name(&args.topic)?;
    let client = Client::new(server)?;
    let mut out = BufWriter::new(io::stdout().lock());
    let limits = Limits {
        events_max: args.batch as usize,
        body_bytes_max: args.batch_bytes_max,
        body_limit_from_server: false,
    };
    produce(&client, &args.topic, limits, args.generate_ids, io::stdin().lock(), &mut out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// `prepare_line` with `--generate-ids`, every generated id being `generated`.
    fn with_ids(line: usize, text: &str) -> Result<Option<Prepared>, LineError> {
        prepare_line(line, text, Some(&mut || "generated".to_string()))
    }

    #[test]
    fn blank_lines_are_skipped() {
        for blank in ["", "   ", "\t"] {
            assert_eq!(with_ids(1, blank).unwrap(), None);
        }
    }

    /// The attributes every test event needs besides `id`.
    const HEAD: &str = r#""specversion":"1.0","source":"/s","type":"t""#;

    fn kept(text: &str) -> String {
        let p = prepare_line(1, text, None).unwrap().unwrap();
        assert!(!p.generated_id);
        p.event
    }

    #[test]
    fn an_event_is_kept_as_written() {
        let text = format!(r#"{{"id":"a",{HEAD},"x":true,"data":[1,{{"y":null}}]}}"#);
        assert_eq!(kept(&text), text);
    }

    #[test]
    fn produce_keeps_numbers_of_any_size_byte_for_byte() {
        for number in [
            "123456789012345678901234567890",
            "18446744073709551616",
            "-18446744073709551617",
            "0.1000000000000000055511151231257827",
            "-0",
            "-0.0",
            "1E+2",
            "2.50e-3",
            "1e-400",
        ] {
            let text = format!(r#"{{"id":"n",{HEAD},"data":{{"n":{number},"in":[{number}]}}}}"#);
            assert_eq!(kept(&text), text, "{number}");
        }
    }

    #[test]
    fn an_extension_keeps_a_number_of_any_size() {
        for number in ["123456789012345678901234567890", "-0.10000000000000000555", "7"] {
            let text = format!(r#"{{"id":"n",{HEAD},"big":{number}}}"#);
            assert_eq!(kept(&text), text);
        }
    }

    #[test]
    fn a_number_beyond_f64_is_kept_or_refused_exactly_as_the_server_does() {
        // The server checks data as a parse into a `Value` would: without serde_json's
        // `arbitrary_precision` feature that refuses 1e400 (out of range); with it, it keeps it.
        let text = format!(r#"{{"id":"n",{HEAD},"data":{{"n":1e400}}}}"#);
        let server = serde_json::from_str::<&RawValue>(&text).map(RawEvent::parse).unwrap();
        match (with_ids(6, &text), server) {
            (Ok(Some(p)), Ok(_)) => assert_eq!(p.event, text),
            (Err(LineError::Invalid { line: 6, attribute, reason }), Err(e)) => {
                assert_eq!((attribute, reason), (e.attribute, e.reason));
            }
            (cli, server) => panic!("the CLI and the server disagree: {cli:?} / {server:?}"),
        }
    }

    #[test]
    fn member_order_escapes_and_inner_whitespace_are_kept() {
        for text in [
            format!(
                r#"{{"z":1,"a":2,"id":"o",{HEAD},"data":{{"z":1,"a":2,"m":{{"b":0,"a":0}}}}}}"#
            ),
            format!(r#"{{"id":"u",{HEAD},"data":"\u00e9\ud83d\ude00\n","subject":"\u00e9"}}"#),
            format!("{{ \"id\" : \"w\" ,\t{HEAD} , \"data\" : [ 1 , 2 ] }}"),
            format!(r#"{{"data":"é/\/","id":"x",{HEAD}}}"#),
        ] {
            assert_eq!(kept(&text), text);
        }
    }

    #[test]
    fn only_the_whitespace_around_the_line_is_dropped() {
        let event = format!(r#"{{"id":"a",{HEAD}}}"#);
        assert_eq!(kept(&format!(" \t{event}  \r")), event);
    }

    #[test]
    fn a_missing_id_is_written_in_after_the_opening_brace() {
        let p = with_ids(4, &format!(r#"{{"data":{{"n":1.50}},{HEAD}}}"#)).unwrap().unwrap();
        assert!(p.generated_id);
        assert_eq!(p.event, format!(r#"{{"id":"generated","data":{{"n":1.50}},{HEAD}}}"#));
        let p = with_ids(4, &format!("  {{ \n{HEAD}}}")).unwrap().unwrap();
        assert_eq!(p.event, format!("{{\"id\":\"generated\", \n{HEAD}}}"));
        // An id needing escapes is written escaped.
        let p =
            prepare_line(4, &format!("{{{HEAD}}}"), Some(&mut || "a\"b".into())).unwrap().unwrap();
        assert_eq!(p.event, format!(r#"{{"id":"a\"b",{HEAD}}}"#));
        // An escaped name is the same member as the server reads it: no id is added.
        let text = format!(r#"{{"\u0069d":"e",{HEAD}}}"#);
        assert_eq!(kept(&text), text);
    }

    #[test]
    fn an_empty_object_gets_an_id_and_is_then_refused_for_what_else_it_lacks() {
        for text in ["{}", "{ }", " {\t} "] {
            let e = with_ids(2, text).unwrap_err();
            assert_eq!(
                e.to_string(),
                "input line 2: invalid CloudEvent attribute `specversion`: required attribute \
                 is missing",
                "{text:?}"
            );
        }
    }

    #[test]
    fn produce_refuses_a_member_that_occurs_twice_naming_the_line() {
        let e = with_ids(3, &format!(r#"{{"id":"d1","id":"d2",{HEAD}}}"#)).unwrap_err();
        assert!(matches!(&e, LineError::Invalid { line: 3, attribute, .. } if attribute == "id"));
        assert_eq!(
            e.to_string(),
            "input line 3: invalid CloudEvent attribute `id`: appears more than once in the \
             event object"
        );
        let e = with_ids(9, &format!(r#"{{"id":"a",{HEAD},"source":"/t"}}"#)).unwrap_err();
        assert!(e.to_string().starts_with("input line 9: invalid CloudEvent attribute `source`"));
        // Written in two spellings, still the same member.
        let e = with_ids(9, &format!(r#"{{"id":"a","\u0069d":"b",{HEAD}}}"#)).unwrap_err();
        assert!(matches!(&e, LineError::Invalid { attribute, .. } if attribute == "id"), "{e}");
    }

    #[test]
    fn produce_refuses_what_the_server_refuses() {
        for (text, attribute) in [
            (r#"{"id":null,"specversion":"1.0","source":"/s","type":"t"}"#, "id"),
            (r#"{"id":"a","specversion":"1.0","type":"t"}"#, "source"),
            (r#"{"id":"a","specversion":"0.3","source":"/s","type":"t"}"#, "specversion"),
            (r#"{"id":"a","specversion":"1.0","source":"/s","type":"t","time":"now"}"#, "time"),
            (r#"{"id":"a","specversion":"1.0","source":"/s","type":"t","Ext":1}"#, "Ext"),
        ] {
            let e = with_ids(1, text).unwrap_err();
            assert!(
                matches!(&e, LineError::Invalid { line: 1, attribute: a, .. } if a == attribute),
                "{text}: {e}"
            );
            let server = RawEvent::parse(serde_json::from_str(text).unwrap()).unwrap_err();
            assert_eq!(server.attribute, attribute);
        }
    }

    #[test]
    fn data_nested_too_deep_is_refused_as_the_server_refuses_it_with_or_without_an_id() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for id in ["", r#""id":"a","#] {
            let text = format!(r#"{{{id}{HEAD},"data":{deep}}}"#);
            let e = with_ids(2, &text).unwrap_err();
            assert!(
                matches!(&e, LineError::Invalid { line: 2, attribute, .. } if attribute == "json"),
                "{e}"
            );
        }
        let server = format!(r#"{{"id":"a",{HEAD},"data":{deep}}}"#);
        let server = RawEvent::parse(serde_json::from_str(&server).unwrap()).unwrap_err();
        assert_eq!(server.attribute, "json");
    }

    #[test]
    fn a_batch_body_is_the_event_texts_in_an_array() {
        assert_eq!(batch_body(&[]), b"[]");
        let events = vec![r#"{"n":1.0}"#.to_string(), r#"{ "b":2 , "a":1 }"#.to_string()];
        assert_eq!(batch_body(&events), br#"[{"n":1.0},{ "b":2 , "a":1 }]"#);
        let body = batch_body(&events);
        let items: Vec<&RawValue> = serde_json::from_slice(&body).unwrap();
        assert_eq!(items.iter().map(|i| i.get()).collect::<Vec<_>>(), events);
    }

    /// A JSON number: any length of digits, any precision, any exponent f64 can hold.
    fn number() -> impl Strategy<Value = String> {
        "-?(0|[1-9][0-9]{0,60})(\\.[0-9]{1,60})?([eE][+-]?[0-9]{1,2})?"
    }

    /// JSON whitespace, mostly none.
    fn space() -> impl Strategy<Value = String> {
        prop_oneof![3 => Just(String::new()), 1 => "[ \t]{1,3}"]
    }

    proptest! {
        #[test]
        fn prepared_text_equals_the_input_text_for_any_numbers_and_member_order(
            numbers in prop::collection::vec(number(), 1..8),
            names in prop::collection::vec("[a-z]{1,6}", 1..8),
            order in Just((0..6).collect::<Vec<usize>>()).prop_shuffle(),
            gaps in prop::collection::vec(space(), 8),
            with_id in any::<bool>(),
        ) {
            // `data` holds an object of the numbers under the names (repeats included: data is
            // kept as sent) and an array of them; the attributes come in any order.
            let data_members: Vec<String> = names
                .iter()
                .zip(numbers.iter().cycle())
                .map(|(k, n)| format!("{}\"{k}\"{}:{}{n}", gaps[0], gaps[1], gaps[2]))
                .collect();
            let all = numbers.join(&format!("{},", gaps[3]));
            let data = format!("{{{},\"all\":[{all}]}}", data_members.join(","));
            let members = [
                "\"id\":\"p\"".to_string(),
                "\"specversion\":\"1.0\"".to_string(),
                format!("\"source\":{}\"/s\"", gaps[4]),
                "\"type\":\"t\"".to_string(),
                format!("\"data\":{data}"),
                format!("\"subject\":{}\"{}\"", gaps[3], numbers[0]),
            ];
            let chosen: Vec<&str> = order
                .iter()
                .map(|&i| members[i].as_str())
                .filter(|m| with_id || !m.starts_with("\"id\""))
                .collect();
            let body = chosen.join(&format!("{},{}", gaps[5], gaps[6]));
            let text = format!("{{{}{body}{}}}", gaps[7], gaps[5]);
            let p = with_ids(1, &text).unwrap().unwrap();
            prop_assert_eq!(p.generated_id, !with_id);
            let expected = if with_id {
                text.clone()
            } else {
                format!("{{\"id\":\"generated\",{}", &text[1..])
            };
            prop_assert_eq!(p.event, expected);
        }
    }

    #[test]
    fn bad_lines_name_their_line_number() {
        let e = with_ids(3, "{not json").unwrap_err();
        assert!(matches!(e, LineError::NotJson { line: 3, .. }));
        assert_eq!(
            e.to_string(),
            "input line 3, column 2: not valid JSON: key must be a string",
            "{e:?}"
        );
        let e = with_ids(5, r#"{"id":"a"} x"#).unwrap_err();
        assert_eq!(e.to_string(), "input line 5, column 12: not valid JSON: trailing characters");
        let e = with_ids(7, "[1,2]").unwrap_err();
        assert_eq!(e.to_string(), "input line 7: an event must be a JSON object, got an array");
        let e = with_ids(8, "\"x\"").unwrap_err();
        assert!(matches!(e, LineError::NotObject { line: 8, kind: "a string" }));
    }

    #[test]
    fn generated_ids_are_uuid_v7_ordered_by_time_and_differ() {
        let mut rng = rand::rng();
        let a = uuid_v7(1_714_566_600_000, &mut rng);
        let b = uuid_v7(1_714_566_600_000, &mut rng);
        let later = uuid_v7(1_714_566_600_001, &mut rng);
        assert_ne!(a, b);
        assert!(a < later && b < later, "{a} {b} {later}");
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12]);
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert_eq!(format!("{}{}", parts[0], parts[1]), format!("{:012x}", 1_714_566_600_000u64));
        assert!(parts[2].starts_with('7'), "{a}");
        assert!(matches!(parts[3].chars().next(), Some('8' | '9' | 'a' | 'b')), "{a}");
    }

    #[test]
    fn an_event_without_an_id_is_refused_unless_ids_are_generated() {
        let text = format!("{{{HEAD}}}");
        let e = prepare_line(7, &text, None).unwrap_err();
        assert!(matches!(e, LineError::MissingId { line: 7 }));
        let message = e.to_string();
        assert!(message.starts_with("input line 7: the event has no `id`"), "{message}");
        assert!(message.contains("--generate-ids"), "{message}");
        assert!(with_ids(7, &text).unwrap().unwrap().generated_id);
    }

    #[test]
    fn the_stored_size_counts_the_placement_key_and_the_text() {
        let text = format!(r#"{{"id":"abc",{HEAD},"subject":"s1","partitionkey":"k"}}"#);
        let p = prepare_line(1, &text, None).unwrap().unwrap();
        assert_eq!(p.stored_bytes, text.len() + 1);
    }

    #[test]
    fn batches_stay_within_the_body_and_event_limits() {
        let limits =
            Limits { events_max: 100, body_bytes_max: 1000, body_limit_from_server: false };
        let event = |n: usize| {
            let pad = "x".repeat(n);
            prepare_line(1, &format!(r#"{{"id":"a",{HEAD},"data":"{pad}"}}"#), None)
                .unwrap()
                .unwrap()
        };
        let mut batch = Batch::default();
        let e = event(500);
        assert!(batch.has_room(&e, &limits));
        batch.push(1, e.clone());
        assert!(!batch.has_room(&e, &limits), "two would take more than 1000 bytes");
        let small = event(10);
        assert!(batch.has_room(&small, &limits));
        assert!(check_fits(3, &event(500), &limits).is_ok());
        let e = check_fits(3, &event(1000), &limits).unwrap_err();
        assert!(
            e.to_string().starts_with("input line 3: the event is 1065 bytes of JSON, over the largest request body (--batch-bytes-max) of 1000 bytes"),
            "{e}"
        );
        let huge = Limits { body_bytes_max: 1 << 30, ..limits };
        let e = check_fits(9, &event(EVENT_BYTES_MAX), &huge).unwrap_err();
        assert!(e.to_string().contains("record_bytes_max) of 1048576 bytes"), "{e}");
        assert_eq!(body_bytes([3usize, 4].into_iter()), 10);
        assert_eq!(body_bytes(std::iter::empty()), 2);
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
            ty: None,
            limit_bytes: None,
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

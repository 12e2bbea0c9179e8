//! `driftless produce TOPIC`: publishes CloudEvents read as JSON lines from stdin.
//!
//! Each non-blank input line is one structured-mode CloudEvent, sent as the exact text the user
//! wrote (surrounding whitespace aside): numbers of any size and precision, member order, escapes
//! and whitespace inside the line reach the server, and are stored, byte for byte. The only edit
//! is an absent `id`: `"id":"<random UUID-shaped id>",` is written in right after the opening `{`
//! (with a warning, once per run, that retries of such events cannot be deduplicated). Each line
//! is checked as the server checks a produced event ([`RawEvent::parse`]: a valid CloudEvent, no
//! member twice, no extension named like an attribute), so the CLI refuses what the HTTP API
//! refuses, naming the input line. Events are sent in batches of `--batch` (a JSON array of the
//! lines' texts, written by hand); after each batch is acknowledged, one JSON line per event is
//! printed (`id`, `partition`, `offset`, `duplicate`), in input order, and stdout is flushed.
//!
//! Invariants: the text sent for a line is the line's JSON text, never parsed into a
//! `serde_json::Value` and written again, plus at most the generated `id` member; a bad input
//! line (not JSON, not an object, not a valid event, unreadable) stops the run with an error
//! naming its 1-based line number, after the lines before it have been sent, acknowledged and
//! printed, and nothing from it or after it is sent; a problem answered for a batch (what the
//! server checks beyond the event itself, e.g. its size) is reported with the input line of the
//! event at fault (the problem's `event_index` mapped through the batch), and nothing after that
//! batch is sent.

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
}

/// Checks input line `line` (1-based): `None` for a blank line, else the event text to send.
pub fn prepare_line(
    line: usize,
    text: &str,
    new_id: impl FnOnce() -> String,
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
    let generated_id = !has_member(json, "id").unwrap_or(true);
    let checked = if generated_id {
        // A `Value`'s Display is its JSON text: the id, quoted and escaped.
        let id = serde_json::Value::String(new_id()).to_string();
        let comma = if members.trim_start().starts_with('}') { "" } else { "," };
        RawEvent::from_string(format!("{{\"id\":{id}{comma}{members}"))
    } else {
        RawEvent::parse(raw)
    };
    let checked = checked.map_err(|e| LineError::Invalid {
        line,
        attribute: e.attribute,
        reason: e.reason,
    })?;
    Ok(Some(Prepared { event: checked.json().to_owned(), generated_id }))
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
    /// Each event's JSON text, as [`prepare_line`] checked it.
    events: Vec<String>,
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

impl Batch {
    /// Sends the batch (if not empty), prints one line per result and flushes, then empties it.
    fn send<W: Write>(&mut self, client: &Client, path: &str, out: &mut W) -> anyhow::Result<()> {
        if self.events.is_empty() {
            return Ok(());
        }
        let body = batch_body(&self.events);
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
    use proptest::prelude::*;

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

    /// The attributes every test event needs besides `id`.
    const HEAD: &str = r#""specversion":"1.0","source":"/s","type":"t""#;

    fn kept(text: &str) -> String {
        let p = prepare_line(1, text, || panic!("must not generate")).unwrap().unwrap();
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
        match (prepare_line(6, &text, fixed), server) {
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
        let p =
            prepare_line(4, &format!(r#"{{"data":{{"n":1.50}},{HEAD}}}"#), fixed).unwrap().unwrap();
        assert!(p.generated_id);
        assert_eq!(p.event, format!(r#"{{"id":"generated","data":{{"n":1.50}},{HEAD}}}"#));
        let p = prepare_line(4, &format!("  {{ \n{HEAD}}}"), fixed).unwrap().unwrap();
        assert_eq!(p.event, format!("{{\"id\":\"generated\", \n{HEAD}}}"));
        // An id needing escapes is written escaped.
        let p = prepare_line(4, &format!("{{{HEAD}}}"), || "a\"b".into()).unwrap().unwrap();
        assert_eq!(p.event, format!(r#"{{"id":"a\"b",{HEAD}}}"#));
        // An escaped name is the same member as the server reads it: no id is added.
        let text = format!(r#"{{"\u0069d":"e",{HEAD}}}"#);
        assert_eq!(kept(&text), text);
    }

    #[test]
    fn an_empty_object_gets_an_id_and_is_then_refused_for_what_else_it_lacks() {
        for text in ["{}", "{ }", " {\t} "] {
            let e = prepare_line(2, text, fixed).unwrap_err();
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
        let e = prepare_line(3, &format!(r#"{{"id":"d1","id":"d2",{HEAD}}}"#), fixed).unwrap_err();
        assert!(matches!(&e, LineError::Invalid { line: 3, attribute, .. } if attribute == "id"));
        assert_eq!(
            e.to_string(),
            "input line 3: invalid CloudEvent attribute `id`: appears more than once in the \
             event object"
        );
        let e =
            prepare_line(9, &format!(r#"{{"id":"a",{HEAD},"source":"/t"}}"#), fixed).unwrap_err();
        assert!(e.to_string().starts_with("input line 9: invalid CloudEvent attribute `source`"));
        // Written in two spellings, still the same member.
        let e =
            prepare_line(9, &format!(r#"{{"id":"a","\u0069d":"b",{HEAD}}}"#), fixed).unwrap_err();
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
            let e = prepare_line(1, text, fixed).unwrap_err();
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
            let e = prepare_line(2, &text, fixed).unwrap_err();
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
            let p = prepare_line(1, &text, fixed).unwrap().unwrap();
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

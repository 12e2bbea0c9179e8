//! `driftless consume TOPIC --group G`: consumes a topic as a member of a consumer group.
//!
//! The command joins the group subscribing to TOPIC, long-polls for deliveries and prints one JSON
//! line per delivery: the CloudEvent as the server stored it, byte for byte, with
//! `"partition":P,"offset":O` written in before its closing `}`. The fetch answer's events are
//! read as raw text ([`RawValue`]), never parsed into a `serde_json::Value` and written again, so
//! numbers of any size and precision, member order and escapes come out as they were produced.
//! Without `--follow` it stops at the first fetch that returns nothing (after waiting up to
//! `--wait-ms`); with `--follow` it keeps polling. `--max N` stops after N events in both modes.
//!
//! Invariants: a printed line is the stored event text with the two members written in and
//! nothing else changed, except that a raw carriage return or newline (whitespace between tokens,
//! as in pretty-printed JSON an HTTP producer sent; inside strings JSON escapes them) is printed
//! as a space, so each event is one line and means the same; a delivery is acknowledged only
//! after its line has been written and stdout flushed (so what was acknowledged was printed; a
//! crash in between means redelivery, never loss); no more than `--max` events are fetched, so
//! none is left in flight unprinted; the member leaves the group on every exit path that returns
//! (success or error). Ctrl-C kills the process without leaving: the server then removes the
//! member after its session timeout and redelivers what was printed but not yet acknowledged.

use std::fmt::Write as _;
use std::io::{self, BufWriter, Write};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use driftless_broker::{Delivery, Fetched, Membership};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::client::{segment, Client};

/// Deliveries asked for per fetch (the server also caps in-flight deliveries per member).
pub const FETCH_MAX: u64 = 500;

/// Flags of `driftless consume`.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to consume.
    pub topic: String,

    /// Consumer group to join; members of one group share the topic's partitions.
    #[arg(long, value_name = "GROUP")]
    pub group: String,

    /// Stop after this many events.
    #[arg(long, value_name = "N", value_parser = events_max)]
    pub max: Option<u64>,

    /// Keep waiting for new events instead of stopping when caught up.
    #[arg(long)]
    pub follow: bool,

    /// How long one fetch waits for events before answering empty (at most a day, as the
    /// server accepts; it waits at most its `fetch_wait_ms_max` anyway).
    #[arg(long, default_value_t = 1000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(0..=WAIT_MS_MAX))]
    pub wait_ms: u64,
}

/// Longest `--wait-ms` the server accepts, in ms (one day).
const WAIT_MS_MAX: u64 = 86_400_000;

/// `--max`: a whole number of events, at least 1. (clap's own range check would print the
/// range as `1..18446744073709551615`.)
fn events_max(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("it is how many events to print before stopping: at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a whole number of events ({e})")),
    }
}

/// The line printed for a delivery, without its newline: the event's text with
/// `"partition":P,"offset":O` written in before its closing `}`, and any raw carriage return or
/// newline (whitespace between tokens) turned into a space. An event that is not an object,
/// which the server never sends, is wrapped as `{"event":...,"partition":P,"offset":O}`.
pub fn render(delivery: &Delivery<Box<RawValue>>) -> String {
    let text = delivery.event.get();
    let (partition, offset) = (delivery.partition, delivery.offset);
    let mut line = String::with_capacity(text.len() + 48);
    match text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        Some(members) => {
            line.push('{');
            line.push_str(members);
            if !members.trim().is_empty() {
                line.push(',');
            }
        }
        None => {
            line.push_str("{\"event\":");
            line.push_str(text);
            line.push(',');
        }
    }
    // Writing to a String cannot fail.
    let _ = write!(line, "\"partition\":{partition},\"offset\":{offset}}}");
    if line.contains(['\r', '\n']) {
        line = line.replace(['\r', '\n'], " ");
    }
    line
}

/// How many deliveries to ask for next, given how many were printed and the `--max` limit.
pub fn next_fetch_size(printed: u64, max: Option<u64>) -> u64 {
    match max {
        Some(max) => max.saturating_sub(printed).min(FETCH_MAX),
        None => FETCH_MAX,
    }
}

#[derive(Debug, Deserialize)]
struct AckResponse {
    #[serde(default)]
    unknown: Vec<String>,
}

/// Fetches, prints and acknowledges until done. Returns how many events were printed.
fn consume_loop<W: Write>(
    client: &Client,
    args: &ConsumeArgs,
    member: &Membership,
    out: &mut W,
) -> anyhow::Result<u64> {
    let group = segment(&args.group);
    let fetch_path = format!("/v1/groups/{group}/members/{}/events", segment(&member.member_id));
    let ack_path = format!("/v1/groups/{group}/ack");
    let mut printed = 0u64;
    loop {
        let want = next_fetch_size(printed, args.max);
        if want == 0 {
            return Ok(printed);
        }
        let query = [("max", want.to_string()), ("wait_ms", args.wait_ms.to_string())];
        let fetched: Fetched<Box<RawValue>> = client
            .get_waiting(&fetch_path, &query, Duration::from_millis(args.wait_ms))
            .with_context(|| format!("fetching from group {:?}", args.group))?;
        if fetched.deliveries.is_empty() {
            if args.follow {
                continue;
            }
            return Ok(printed);
        }
        let mut ids = Vec::with_capacity(fetched.deliveries.len());
        // `want` bounds the batch; a server answering more must not make us exceed --max (the
        // extra deliveries stay unacknowledged and are redelivered after the visibility timeout).
        let take = usize::try_from(want).unwrap_or(usize::MAX);
        for delivery in fetched.deliveries.iter().take(take) {
            let line = render(delivery);
            out.write_all(line.as_bytes()).context("writing to stdout")?;
            out.write_all(b"\n").context("writing to stdout")?;
            ids.push(delivery.delivery_id.clone());
        }
        out.flush().context("writing to stdout")?;
        printed += ids.len() as u64;
        let ack: AckResponse = client
            .post_json(&ack_path, &json!({ "delivery_ids": ids }))
            .context("acknowledging printed events")?;
        if !ack.unknown.is_empty() {
            eprintln!(
                "warning: {} printed event(s) were no longer in flight when acknowledged \
                 (visibility timeout or rebalance) and may be delivered again: {}",
                ack.unknown.len(),
                ack.unknown.join(", ")
            );
        }
    }
}

/// Runs `driftless consume`, printing to stdout.
pub fn run(server: &str, args: ConsumeArgs) -> anyhow::Result<()> {
    crate::commands::check_topic_name(&args.topic)?;
    let client = Client::new(server)?;
    let group = segment(&args.group);
    let member: Membership = client
        .post_json(&format!("/v1/groups/{group}/members"), &json!({ "topics": [args.topic] }))
        .with_context(|| format!("joining group {:?} on topic {:?}", args.group, args.topic))?;
    let mut out = BufWriter::new(io::stdout().lock());
    let result = consume_loop(&client, &args, &member, &mut out);
    let left = client
        .delete(&format!("/v1/groups/{group}/members/{}", segment(&member.member_id)))
        .with_context(|| format!("leaving group {:?}", args.group));
    match (result, left) {
        (Ok(_), left) => left,
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(left)) => {
            eprintln!("warning: {left:#}");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(event: &str) -> Delivery<Box<RawValue>> {
        Delivery {
            delivery_id: "orders:2:41:1".into(),
            topic: "orders".into(),
            partition: 2,
            offset: 41,
            attempt: 1,
            event: RawValue::from_string(event.to_string()).unwrap(),
            dead_letter_id: None,
        }
    }

    #[test]
    fn a_delivery_prints_as_the_stored_text_plus_partition_and_offset() {
        let event = r#"{"specversion":"1.0","id":"a","source":"/s","type":"t","data":{"n":1}}"#;
        assert_eq!(
            render(&delivery(event)),
            r#"{"specversion":"1.0","id":"a","source":"/s","type":"t","data":{"n":1},"partition":2,"offset":41}"#
        );
        assert_eq!(render(&delivery("5")), r#"{"event":5,"partition":2,"offset":41}"#);
        assert_eq!(render(&delivery("{}")), r#"{"partition":2,"offset":41}"#);
        assert_eq!(render(&delivery("{ }")), r#"{ "partition":2,"offset":41}"#);
    }

    #[test]
    fn consume_prints_numbers_member_order_and_escapes_byte_for_byte() {
        let event = r#"{"z":123456789012345678901234567890,"a":0.1000000000000000055511151231257827,"id":"\u00e9","n":[-0,1e400,18446744073709551616] }"#;
        let line = render(&delivery(event));
        assert_eq!(line, format!("{},\"partition\":2,\"offset\":41}}", &event[..event.len() - 1]));
    }

    #[test]
    fn line_breaks_between_tokens_become_spaces_so_an_event_stays_one_line() {
        let event = "{\r\n  \"id\": \"a\\n\",\n  \"n\": 1.50\n}";
        let line = render(&delivery(event));
        assert_eq!(line, "{    \"id\": \"a\\n\",   \"n\": 1.50 ,\"partition\":2,\"offset\":41}");
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["id"], "a\n", "an escaped newline inside a string stays");
    }

    #[test]
    fn fetches_never_ask_for_more_than_max_allows() {
        assert_eq!(next_fetch_size(0, None), FETCH_MAX);
        assert_eq!(next_fetch_size(10_000, None), FETCH_MAX);
        assert_eq!(next_fetch_size(0, Some(2)), 2);
        assert_eq!(next_fetch_size(1, Some(2)), 1);
        assert_eq!(next_fetch_size(2, Some(2)), 0);
        assert_eq!(next_fetch_size(0, Some(10_000)), FETCH_MAX);
    }
}

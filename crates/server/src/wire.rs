//! Deliveries written as JSON by hand, with each event's stored text copied in as is.
//!
//! `Broker::fetch_raw` hands out events as the bytes the log stored. Putting them through serde
//! would mean checking each one again (`RawValue`) and copying it twice; the fetch answer and
//! the stream's delivery frames are written here instead.
//!
//! Invariants: the output is exactly what serialising the broker's `Fetched<Value>` /
//! `Delivery<Value>` with serde would give, field for field and in the same order (strings
//! escaped by serde_json, `dead_letter_id` omitted when absent, `next_due_ms` `null` when
//! absent), apart from whitespace inside events (kept as produced; carriage returns become
//! spaces in stream frames); the event text is trusted to be JSON because
//! every write path stores checked or serialised JSON under a CRC (see `Broker::fetch_raw`).

use std::io::Write;

use bytes::Bytes;
use driftless_broker::{Delivery, Fetched};

/// `fetched` as a JSON object: `{"deliveries":[…],"generation":…,"next_due_ms":…}`.
pub fn fetched(fetched: &Fetched<Bytes>) -> Vec<u8> {
    let events: usize = fetched.deliveries.iter().map(|d| d.event.len()).sum();
    let mut out = Vec::with_capacity(events + fetched.deliveries.len() * 128 + 64);
    out.extend_from_slice(b"{\"deliveries\":[");
    for (i, d) in fetched.deliveries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_delivery(&mut out, d);
    }
    out.extend_from_slice(b"],\"generation\":");
    write_number(&mut out, fetched.generation);
    out.extend_from_slice(b",\"next_due_ms\":");
    match fetched.next_due_ms {
        Some(ms) => write_number(&mut out, ms),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    out
}

/// One delivery as the data of a server-sent event: its JSON object, with any carriage return
/// turned into a space. SSE cannot carry one (axum panics on it); in JSON text a raw carriage
/// return can only be whitespace between tokens (inside strings it is escaped), and a producer's
/// `\r\n` line ends are stored as sent. Newlines are fine: SSE splits and rejoins them.
pub fn delivery_sse(d: &Delivery<Bytes>) -> Result<String, std::string::FromUtf8Error> {
    let mut out = Vec::with_capacity(d.event.len() + 128);
    write_delivery(&mut out, d);
    for b in out.iter_mut().filter(|b| **b == b'\r') {
        *b = b' ';
    }
    String::from_utf8(out)
}

fn write_delivery(out: &mut Vec<u8>, d: &Delivery<Bytes>) {
    out.extend_from_slice(b"{\"delivery_id\":");
    write_string(out, &d.delivery_id);
    out.extend_from_slice(b",\"topic\":");
    write_string(out, &d.topic);
    out.extend_from_slice(b",\"partition\":");
    write_number(out, d.partition);
    out.extend_from_slice(b",\"offset\":");
    write_number(out, d.offset);
    out.extend_from_slice(b",\"attempt\":");
    write_number(out, d.attempt);
    out.extend_from_slice(b",\"event\":");
    out.extend_from_slice(&d.event);
    if let Some(id) = &d.dead_letter_id {
        out.extend_from_slice(b",\"dead_letter_id\":");
        write_string(out, id);
    }
    out.push(b'}');
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail, and a str always serialises.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_number(out: &mut Vec<u8>, n: impl std::fmt::Display) {
    let _ = write!(out, "{n}");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::Value;

    fn with_event(d: &Delivery<Bytes>, event: Value) -> Delivery<Value> {
        Delivery {
            delivery_id: d.delivery_id.clone(),
            topic: d.topic.clone(),
            partition: d.partition,
            offset: d.offset,
            attempt: d.attempt,
            event,
            dead_letter_id: d.dead_letter_id.clone(),
        }
    }

    #[test]
    fn hand_written_json_is_what_serde_writes() {
        // Compact and in sorted key order, as a `Value` serialises, so the bytes can match.
        let text =
            r#"{"data":{"é":[1,null]},"id":"a\"b","source":"/s","specversion":"1.0","type":"t"}"#;
        let d = Delivery {
            delivery_id: "t.q:3:17:2".to_string(),
            topic: "t.q\"".to_string(),
            partition: 3,
            offset: 17,
            attempt: 2,
            event: Bytes::from(text),
            dead_letter_id: None,
        };
        let mut dead = d.clone();
        dead.dead_letter_id = Some("g:t:3:17".into());
        let event: Value = serde_json::from_str(text).unwrap();
        for (deliveries, due) in [(vec![], None), (vec![d.clone(), dead.clone()], Some(99))] {
            let raw = Fetched { deliveries: deliveries.clone(), generation: 5, next_due_ms: due };
            let typed = Fetched {
                deliveries: deliveries.iter().map(|x| with_event(x, event.clone())).collect(),
                generation: 5,
                next_due_ms: due,
            };
            assert_eq!(fetched(&raw), serde_json::to_vec(&typed).unwrap());
        }
        for x in [&d, &dead] {
            let typed = with_event(x, event.clone());
            assert_eq!(delivery_sse(x).unwrap().as_bytes(), serde_json::to_vec(&typed).unwrap());
        }
    }

    #[test]
    fn a_stream_frame_carries_no_carriage_return_and_still_parses() {
        let text = "{\"specversion\":\"1.0\",\r\n\"id\":\"a\\r\",\"source\":\"/s\",\"type\":\"t\"}";
        let d = Delivery {
            delivery_id: "t:0:0:1".to_string(),
            topic: "t".to_string(),
            partition: 0,
            offset: 0,
            attempt: 1,
            event: Bytes::from(text),
            dead_letter_id: None,
        };
        let frame = delivery_sse(&d).unwrap();
        assert!(!frame.contains('\r'), "{frame:?}");
        let back: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(back["event"]["id"], "a\r", "an escaped carriage return inside a string stays");
    }
}

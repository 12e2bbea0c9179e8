//! The CloudEvents decoders on arbitrary requests: structured mode, batch mode and binary mode
//! (`ce-*` headers) through the server's `parse_request`, and `Event::from_value` on any JSON.
//!
//! Input: the first byte chooses the mode; for binary mode the rest is header lines
//! (`name: value`) up to a blank line, then the body; otherwise the rest is the body.
//!
//! Checks: no panic; a refusal is a 4xx problem; every accepted event is valid as
//! `Event::from_json` sees it, with the same id and placement key, and re-serialises to an event
//! that parses back equal (what is stored is what readers get).
#![no_main]

use driftless_core::{Event, RawEvent};
use driftless_server::fuzzing::{parse_request, BATCH, STRUCTURED};
use http::{header, HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

/// Events a batch may hold here: small, so the limit itself is reachable.
const EVENTS_MAX: usize = 8;

/// What a reader of the stored text gets must be the event that was accepted.
fn check_stored(raw: &RawEvent) {
    let event = match Event::from_json(raw.json().as_bytes()) {
        Ok(e) => e,
        Err(e) => panic!("an accepted event does not parse back: {e}\n{}", raw.json()),
    };
    assert_eq!(event.id, raw.id(), "id of {}", raw.json());
    assert_eq!(event.placement_key(), raw.placement_key(), "placement key of {}", raw.json());
    check_event(&event);
}

/// A valid event serialises to text that is accepted again and parses back equal.
fn check_event(event: &Event) {
    let raw = match RawEvent::from_event(event) {
        Ok(r) => r,
        Err(e) => panic!("a valid event is refused when serialised: {e}\n{event:?}"),
    };
    let again = match RawEvent::parse(
        &serde_json::value::RawValue::from_string(raw.json().into())
            .unwrap_or_else(|e| panic!("{e}")),
    ) {
        Ok(r) => r,
        Err(e) => panic!("a serialised event is refused: {e}\n{}", raw.json()),
    };
    let back = Event::from_json(again.json().as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&back, event, "round trip through {}", raw.json());
}

fn request(headers: &HeaderMap, body: &[u8]) {
    match parse_request(headers, body, EVENTS_MAX) {
        Ok(events) => {
            assert!(events.len() <= EVENTS_MAX, "{} events accepted", events.len());
            events.iter().for_each(check_stored);
        }
        Err(problem) => {
            assert!((400..500).contains(&problem.status), "status {}: {problem:?}", problem.status);
        }
    }
}

fn with_content_type(media: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if media == STRUCTURED { STRUCTURED } else { BATCH }),
    );
    headers
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 4 {
        0 => request(&with_content_type(STRUCTURED), rest),
        1 => request(&with_content_type(BATCH), rest),
        2 => {
            let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
                Some(at) => (&rest[..at], &rest[at + 2..]),
                None => (rest, &[][..]),
            };
            let mut headers = HeaderMap::new();
            for line in head.split(|&b| b == b'\n') {
                let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
                let (name, value) = (&line[..colon], &line[colon + 1..]);
                let value = value.strip_prefix(b" ").unwrap_or(value);
                // What hyper would hand the handler: names and values it accepts.
                let (Ok(name), Ok(value)) =
                    (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
                else {
                    continue;
                };
                headers.append(name, value);
            }
            request(&headers, body);
        }
        _ => {
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(rest) else { return };
            if let Ok(event) = Event::from_value(value) {
                check_event(&event);
            }
        }
    }
});

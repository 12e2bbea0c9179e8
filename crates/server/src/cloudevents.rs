//! The CloudEvents HTTP protocol binding: turns a produce request into events.
//!
//! Three modes, chosen by `Content-Type`:
//! - `application/cloudevents+json`: one structured-mode event;
//! - `application/cloudevents-batch+json`: a JSON array of structured-mode events;
//! - anything else with `ce-*` headers: binary mode — `ce-<name>` headers are the attributes
//!   (percent-decoded), the body is `data` (parsed when the content type is JSON, else base64 in
//!   `data_base64`) and `datacontenttype` is the `Content-Type`.
//!
//! Structured and batch events stay the JSON text they arrived as ([`RawEvent`]): each is checked
//! without building a tree, and stored as sent. Binary-mode events are built as an [`Event`].
//!
//! Invariants: every event is validated ([`RawEvent::parse`], or [`Event::from_value`] in binary
//! mode, which apply the same rules), so a failure names the attribute (`field`) and the event's
//! index in the request (`event_index`); the count is checked against `produce_events_max`
//! before any event is validated; parsing has no side effect, so an invalid request appends
//! nothing.

use axum::http::{header, HeaderMap, StatusCode};
use driftless_broker::BrokerError;
use driftless_core::{Event, InvalidEvent, RawEvent};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::problem::Problem;

/// Media type of a structured-mode event.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// Media type of a batch of structured-mode events.
pub const BATCH: &str = "application/cloudevents-batch+json";

/// Parses the events of a produce request.
pub fn parse_request(
    headers: &HeaderMap,
    body: &[u8],
    events_max: usize,
) -> Result<Vec<RawEvent>, Problem> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| {
            v.to_str().map_err(|_| {
                Problem::bad_request("the Content-Type header is not ASCII")
                    .with_field("content-type")
            })
        })
        .transpose()?;
    let media = content_type.map(media_type).unwrap_or_default();
    match media.as_str() {
        STRUCTURED => {
            let raw: &RawValue = serde_json::from_slice(body)
                .map_err(|e| Problem::malformed_json("the structured-mode event", &e))?;
            Ok(vec![validate(0, raw)?])
        }
        BATCH => {
            let items: Vec<&RawValue> = match serde_json::from_slice(body) {
                Ok(items) => items,
                // Valid JSON that is not an array gets its own message; otherwise the syntax
                // error of a plain parse, which points at the fault (the array parse would
                // complain about the type first).
                Err(_) => match serde_json::from_slice::<&RawValue>(body) {
                    Ok(_) => {
                        return Err(Problem::bad_request(format!(
                            "a {BATCH} body must be a JSON array of events"
                        )))
                    }
                    Err(e) => return Err(Problem::malformed_json("the event batch", &e)),
                },
            };
            if items.len() > events_max {
                return Err(
                    BrokerError::TooManyEvents { events: items.len(), max: events_max }.into()
                );
            }
            items.into_iter().enumerate().map(|(i, v)| validate(i, v)).collect()
        }
        _ if headers.keys().any(|k| k.as_str().starts_with("ce-")) => {
            let event = binary(headers, content_type, &media, body)?;
            let raw = RawEvent::from_event(&event)
                .map_err(|source| BrokerError::InvalidEvent { index: 0, source })?;
            Ok(vec![raw])
        }
        _ => Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            format!(
                "send one event as {STRUCTURED}, a JSON array as {BATCH}, or a binary-mode event \
                 with ce-specversion, ce-id, ce-source and ce-type headers; got Content-Type {:?}",
                content_type.unwrap_or("(none)")
            ),
        )
        .with_field("content-type")),
    }
}

fn validate(index: usize, raw: &RawValue) -> Result<RawEvent, Problem> {
    RawEvent::parse(raw).map_err(|source| BrokerError::InvalidEvent { index, source }.into())
}

/// The media type without parameters, lowercased: `Application/JSON; charset=utf-8` →
/// `application/json`.
fn media_type(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

fn is_json(media: &str) -> bool {
    media == "application/json" || media == "text/json" || media.ends_with("+json")
}

/// Builds a binary-mode event from `ce-*` headers and the body.
fn binary(
    headers: &HeaderMap,
    content_type: Option<&str>,
    media: &str,
    body: &[u8],
) -> Result<Event, Problem> {
    let invalid = |attribute: &str, reason: String| -> Problem {
        BrokerError::InvalidEvent {
            index: 0,
            source: InvalidEvent { attribute: attribute.to_string(), reason },
        }
        .into()
    };
    let mut map = Map::new();
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else { continue };
        if attribute == "datacontenttype" || attribute == "data" || attribute == "data_base64" {
            continue; // carried by Content-Type and the body in binary mode
        }
        if map.contains_key(attribute) {
            return Err(invalid(attribute, format!("header ce-{attribute} is repeated")));
        }
        let text = value.to_str().map_err(|_| {
            invalid(attribute, "header value must be ASCII (percent-encode it)".into())
        })?;
        let decoded = percent_decode(text).ok_or_else(|| {
            invalid(attribute, "header value has invalid percent-encoding or is not UTF-8".into())
        })?;
        map.insert(attribute.to_string(), Value::String(decoded));
    }
    if let Some(ct) = content_type {
        map.insert("datacontenttype".into(), Value::String(ct.to_string()));
    }
    if !body.is_empty() {
        if is_json(media) {
            let data: Value = serde_json::from_slice(body).map_err(|e| {
                invalid("data", format!("the body is {media} but not valid JSON: {e}"))
            })?;
            map.insert("data".into(), data);
        } else {
            map.insert("data_base64".into(), Value::String(base64(body)));
        }
    }
    Event::from_value(Value::Object(map))
        .map_err(|source| BrokerError::InvalidEvent { index: 0, source }.into())
}

/// Decodes `%XX` escapes (CloudEvents HTTP binding, header values); `None` if malformed or
/// not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(chunk.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        let sextets = [n >> 18, n >> 12, n >> 6, n];
        for (k, s) in sextets.iter().enumerate() {
            if k <= chunk.len() {
                out.push(char::from(ALPHABET[(s & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn event(raw: RawEvent) -> Event {
        serde_json::from_str(raw.json()).unwrap()
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), output);
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%C3%A9").as_deref(), Some("a bé"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
    }

    #[test]
    fn binary_mode_builds_an_event() {
        let h = headers(&[
            ("content-type", "application/octet-stream"),
            ("ce-specversion", "1.0"),
            ("ce-id", "b-1"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
            ("ce-subject", "k%201"),
            ("ce-traceparent", "00-abc-def-01"),
        ]);
        let e = event(parse_request(&h, b"\x00\x01", 10).unwrap().remove(0));
        assert_eq!(e.subject.as_deref(), Some("k 1"));
        assert_eq!(e.data_base64.as_deref(), Some("AAE="));
        assert_eq!(e.datacontenttype.as_deref(), Some("application/octet-stream"));
        assert_eq!(e.extension_str("traceparent"), Some("00-abc-def-01"));

        let h = headers(&[
            ("content-type", "application/json; charset=utf-8"),
            ("ce-specversion", "1.0"),
            ("ce-id", "b-2"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
        ]);
        let e = event(parse_request(&h, br#"{"a":1}"#, 10).unwrap().remove(0));
        assert_eq!(e.data, Some(serde_json::json!({"a": 1})));
    }

    #[test]
    fn binary_mode_names_the_missing_attribute() {
        let h = headers(&[
            ("content-type", "text/plain"),
            ("ce-specversion", "1.0"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
        ]);
        let p = parse_request(&h, b"x", 10).unwrap_err();
        assert_eq!((p.status, p.at.field.as_deref(), p.at.event_index), (400, Some("id"), Some(0)));
    }

    #[test]
    fn a_batch_over_the_limit_is_refused_before_parsing() {
        let h = headers(&[("content-type", BATCH)]);
        let p = parse_request(&h, b"[1,2,3]", 2).unwrap_err();
        assert_eq!(p.status, 413);
    }

    #[test]
    fn a_malformed_batch_that_is_not_an_array_names_the_syntax_error() {
        let h = headers(&[("content-type", BATCH)]);
        let p = parse_request(&h, br#"{"a":1"#, 10).unwrap_err();
        assert_eq!(p.status, 400);
        assert!(p.detail.contains("EOF while parsing an object"), "{}", p.detail);
        let p = parse_request(&h, br#"{"a":1}"#, 10).unwrap_err();
        assert!(p.detail.contains("must be a JSON array"), "{}", p.detail);
    }

    #[test]
    fn other_content_types_are_415() {
        let h = headers(&[("content-type", "application/json")]);
        assert_eq!(parse_request(&h, b"{}", 2).unwrap_err().status, 415);
    }
}

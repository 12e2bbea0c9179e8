//! The event envelope: a CloudEvents 1.0 event in its JSON (structured-mode) form.
//!
//! Invariants of a validated [`Event`]: `specversion` is `"1.0"`; `id`, `source` and `type` are
//! non-empty; `time`, when present, is an RFC 3339 timestamp; at most one of `data` and
//! `data_base64` is present, and `data_base64` is canonical standard base64 with padding (RFC 4648
//! §4: only the 64-letter alphabet, a length that is a multiple of 4, `=` only as the last one or
//! two characters, unused bits zero), so every reader decodes it to the same bytes; extension names are 1 to 20 lowercase ASCII letters or digits and
//! their values are strings, numbers or booleans. The placement key is `partitionkey`, else
//! `subject`, else `id` — never random, so a retried event lands on the partition of its first try.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The CloudEvents version Driftless speaks.
pub const SPEC_VERSION: &str = "1.0";
/// Longest extension attribute name the CloudEvents spec recommends.
pub const EXTENSION_NAME_BYTES_MAX: usize = 20;

/// A CloudEvents 1.0 event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Always `"1.0"`.
    pub specversion: String,
    /// Unique per source; the deduplication key.
    pub id: String,
    /// The owning service or connector, e.g. `/services/customers`.
    pub source: String,
    /// The business fact, e.g. `customer.address_changed.v1`.
    #[serde(rename = "type")]
    pub ty: String,
    /// The entity the fact is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When the fact happened, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Media type of `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    /// Schema of `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataschema: Option<String>,
    /// The payload, as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// The payload, as base64 of binary data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// Extension attributes: `partitionkey`, `sequence`, `traceparent` and any others.
    #[serde(flatten)]
    pub extensions: BTreeMap<String, Value>,
}

/// Why an event is not a valid CloudEvent, naming the attribute at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CloudEvent attribute `{attribute}`: {reason}")]
pub struct InvalidEvent {
    /// The attribute at fault (`id`, `time`, an extension name, or `json` for the document).
    pub attribute: String,
    /// What was expected.
    pub reason: String,
}

/// `v`'s JSON type with its article ("a string", "an object", "null"), for error messages that
/// say what was found instead of what was expected.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn invalid(attribute: &str, reason: impl Into<String>) -> InvalidEvent {
    InvalidEvent { attribute: attribute.to_string(), reason: reason.into() }
}

impl Event {
    /// A minimal valid event.
    pub fn new(id: impl Into<String>, source: impl Into<String>, ty: impl Into<String>) -> Self {
        Self {
            specversion: SPEC_VERSION.to_string(),
            id: id.into(),
            source: source.into(),
            ty: ty.into(),
            subject: None,
            time: None,
            datacontenttype: None,
            dataschema: None,
            data: None,
            data_base64: None,
            extensions: BTreeMap::new(),
        }
    }

    /// Parses and validates a structured-mode JSON event.
    pub fn from_json(bytes: &[u8]) -> Result<Self, InvalidEvent> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| invalid("json", format!("not valid JSON: {e}")))?;
        Self::from_value(value)
    }

    /// Validates a JSON value as a structured-mode event.
    ///
    /// Moves the attributes out of the object (no second deserialisation pass): what is left
    /// after the named attributes are the extensions.
    pub fn from_value(value: Value) -> Result<Self, InvalidEvent> {
        let Value::Object(mut map) = value else {
            return Err(invalid("json", "an event must be a JSON object"));
        };
        let mut string = |name: &str, required: bool| match map.remove(name) {
            None if required => Err(invalid(name, "required attribute is missing")),
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(invalid(name, "must be a string")),
        };
        let mut required = |name: &str| string(name, true).map(Option::unwrap_or_default);
        let (specversion, id, source, ty) =
            (required("specversion")?, required("id")?, required("source")?, required("type")?);
        let subject = string("subject", false)?;
        let time = string("time", false)?;
        let datacontenttype = string("datacontenttype", false)?;
        let dataschema = string("dataschema", false)?;
        let data_base64 = string("data_base64", false)?;
        let data = match map.remove("data") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        };
        let event = Event {
            specversion,
            id,
            source,
            ty,
            subject,
            time,
            datacontenttype,
            dataschema,
            data,
            data_base64,
            extensions: map.into_iter().collect(),
        };
        event.validate()?;
        Ok(event)
    }

    /// Checks the invariants listed in the module docs.
    pub fn validate(&self) -> Result<(), InvalidEvent> {
        let head = Head {
            specversion: &self.specversion,
            id: &self.id,
            source: &self.source,
            ty: &self.ty,
            time: self.time.as_deref(),
            has_data: self.data.is_some(),
            data_base64: self.data_base64.as_deref(),
        };
        check_head(
            &head,
            self.extensions.iter().map(|(name, value)| (name.as_str(), ExtensionKind::of(value))),
        )
    }

    /// The bytes that choose this event's partition: `partitionkey`, else `subject`, else `id`.
    pub fn placement_key(&self) -> &str {
        if let Some(Value::String(k)) = self.extensions.get("partitionkey") {
            return k;
        }
        self.subject.as_deref().unwrap_or(&self.id)
    }

    /// The string value of an extension attribute, if it is a string.
    pub fn extension_str(&self, name: &str) -> Option<&str> {
        self.extensions.get(name).and_then(Value::as_str)
    }
}

/// The attributes validation looks at, borrowed from an [`Event`] or from raw JSON text, so
/// both forms are checked by the one [`check_head`].
pub(crate) struct Head<'a> {
    pub(crate) specversion: &'a str,
    pub(crate) id: &'a str,
    pub(crate) source: &'a str,
    pub(crate) ty: &'a str,
    pub(crate) time: Option<&'a str>,
    pub(crate) has_data: bool,
    pub(crate) data_base64: Option<&'a str>,
}

/// An extension value's JSON type, as far as validation cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExtensionKind {
    String,
    /// A number or a boolean.
    Scalar,
    /// Null, an array or an object: not allowed.
    Other,
}

impl ExtensionKind {
    fn of(v: &Value) -> Self {
        match v {
            Value::String(_) => Self::String,
            Value::Number(_) | Value::Bool(_) => Self::Scalar,
            Value::Null | Value::Array(_) | Value::Object(_) => Self::Other,
        }
    }
}

/// The invariants of the module docs, over a borrowed view of an event.
pub(crate) fn check_head<'a>(
    head: &Head<'_>,
    extensions: impl Iterator<Item = (&'a str, ExtensionKind)>,
) -> Result<(), InvalidEvent> {
    if head.specversion != SPEC_VERSION {
        return Err(invalid("specversion", format!("must be \"1.0\", got {:?}", head.specversion)));
    }
    for (name, value) in [("id", head.id), ("source", head.source), ("type", head.ty)] {
        if value.is_empty() {
            return Err(invalid(name, "must not be empty"));
        }
    }
    if let Some(time) = head.time {
        if !is_rfc3339(time) {
            return Err(invalid("time", format!("must be an RFC 3339 timestamp, got {time:?}")));
        }
    }
    if let Some(b64) = head.data_base64 {
        if head.has_data {
            return Err(invalid("data_base64", "an event carries data or data_base64, not both"));
        }
        if let Err(reason) = check_base64(b64) {
            return Err(invalid("data_base64", format!("is not valid base64: {reason}")));
        }
    }
    let mut partitionkey = None;
    for (name, kind) in extensions {
        let name_ok = !name.is_empty()
            && name.len() <= EXTENSION_NAME_BYTES_MAX
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !name_ok {
            return Err(invalid(name, "extension names are 1 to 20 lowercase letters or digits"));
        }
        if NAMED_ATTRIBUTES.contains(&name) {
            // Only a hand-built `Event` can have one; serialised, it would repeat the member.
            return Err(invalid(name, "is a named attribute, not an extension"));
        }
        if kind == ExtensionKind::Other {
            return Err(invalid(name, "extension values are strings, numbers or booleans"));
        }
        if name == "partitionkey" {
            partitionkey = Some(kind);
        }
    }
    if partitionkey.is_some_and(|kind| kind != ExtensionKind::String) {
        return Err(invalid("partitionkey", "must be a string"));
    }
    Ok(())
}

/// The base64 alphabet's value of `b` (RFC 4648 §4, standard alphabet), `None` outside it.
fn sextet(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Checks that `text` is canonical standard base64 with padding (the form every decoder reads
/// the same way): why not, else `Ok`. Linear in the text, no allocation.
pub fn check_base64(text: &str) -> Result<(), String> {
    let b = text.as_bytes();
    if !b.len().is_multiple_of(4) {
        return Err(format!(
            "its length {} is not a multiple of 4 (standard base64 is padded with `=`)",
            b.len()
        ));
    }
    let body_len = b.len() - b.iter().rev().take(2).take_while(|&&c| c == b'=').count();
    for (i, &c) in b[..body_len].iter().enumerate() {
        if sextet(c).is_none() {
            let shown = text[i..].chars().next().unwrap_or('?');
            return Err(format!(
                "character {shown:?} at byte {i} is not in the base64 alphabet (A-Z a-z 0-9 + /)"
            ));
        }
    }
    // The unused low bits of the last character before the padding must be zero, else two
    // texts decode to the same bytes (and strict decoders refuse the text).
    let pad = b.len() - body_len;
    if pad > 0 {
        let last = sextet(b[body_len - 1]).unwrap_or(0);
        let unused_mask = if pad == 2 { 0b1111 } else { 0b11 };
        if last & unused_mask != 0 {
            return Err(format!(
                "the character before the padding, at byte {}, has non-zero unused bits",
                body_len - 1
            ));
        }
    }
    Ok(())
}

/// The attributes [`Event`] names as fields (`data_base64` included): the CloudEvents context
/// attributes and the data. An extension may not reuse one of these names.
pub const NAMED_ATTRIBUTES: [&str; 10] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
];

/// Whether `s` has the shape of an RFC 3339 timestamp (`2024-05-01T12:30:00Z`,
/// `2024-05-01T12:30:00.123+02:00`), with fields in range.
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone()).is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let num = |r: std::ops::Range<usize>| -> u32 {
        b[r].iter().fold(0, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
    {
        return false;
    }
    if !matches!(b[10], b'T' | b't' | b' ') || !digits(11..13) || b[13] != b':' || !digits(14..16) {
        return false;
    }
    if b[16] != b':' || !digits(17..19) {
        return false;
    }
    let (month, day, hour, minute, second) =
        (num(5..7), num(8..10), num(11..13), num(14..16), num(17..19));
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return false;
    }
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match b.get(i) {
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            b.len() == i + 6
                && digits(i + 1..i + 3)
                && b[i + 3] == b':'
                && digits(i + 4..i + 6)
                && num(i + 1..i + 3) <= 23
                && num(i + 4..i + 6) <= 59
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_structured_event_round_trips_with_extensions() {
        let json = br#"{"specversion":"1.0","id":"e-1","source":"/svc/customers","type":"customer.created.v1",
            "subject":"c-42","time":"2024-05-01T12:30:00.5Z","data":{"name":"Ada"},"partitionkey":"tenant-7","sequence":3}"#;
        let e = Event::from_json(json).unwrap();
        assert_eq!(e.placement_key(), "tenant-7");
        assert_eq!(e.extensions["sequence"], 3);
        let back: Event = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn from_value_builds_what_deserialising_the_struct_builds() {
        let json = br#"{"specversion":"1.0","id":"e-1","source":"/s","type":"t","subject":"k",
            "time":"2024-05-01T12:30:00Z","datacontenttype":"application/json",
            "dataschema":"urn:s","data":{"a":[1,null]},"traceparent":"00-ab","sequence":7}"#;
        let typed: Event = serde_json::from_slice(json).unwrap();
        assert_eq!(Event::from_json(json).unwrap(), typed);
        let b64 =
            br#"{"specversion":"1.0","id":"e-2","source":"/s","type":"t","data_base64":"AA=="}"#;
        assert_eq!(Event::from_json(b64).unwrap(), serde_json::from_slice::<Event>(b64).unwrap());
        // `data: null` is no data; a null string attribute is refused, naming it.
        let null_data = br#"{"specversion":"1.0","id":"e-3","source":"/s","type":"t","data":null}"#;
        assert_eq!(Event::from_json(null_data).unwrap().data, None);
        let null_subject =
            br#"{"specversion":"1.0","id":"e-4","source":"/s","type":"t","subject":null}"#;
        assert_eq!(Event::from_json(null_subject).unwrap_err().attribute, "subject");
    }

    #[test]
    fn placement_falls_back_from_partitionkey_to_subject_to_id() {
        let mut e = Event::new("e-1", "/s", "t");
        assert_eq!(e.placement_key(), "e-1");
        e.subject = Some("c-9".into());
        assert_eq!(e.placement_key(), "c-9");
    }

    #[test]
    fn each_broken_attribute_is_named() {
        let cases: [(&str, &str); 9] = [
            (r#"{"id":"1","source":"/s","type":"t"}"#, "specversion"),
            (r#"{"specversion":"1.0","source":"/s","type":"t"}"#, "id"),
            (r#"{"specversion":"1.0","id":"","source":"/s","type":"t"}"#, "id"),
            (r#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#, "specversion"),
            (r#"{"specversion":"1.0","id":"1","source":"/s","type":7}"#, "type"),
            (
                r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"yesterday"}"#,
                "time",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","Bad-Name":"x"}"#,
                "Bad-Name",
            ),
            (r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":{"a":1}}"#, "ext"),
            (r#"[1,2]"#, "json"),
        ];
        for (json, attribute) in cases {
            let err = Event::from_json(json.as_bytes()).unwrap_err();
            assert_eq!(err.attribute, attribute, "{json}: {err}");
        }
        assert_eq!(Event::from_json(b"{not json").unwrap_err().attribute, "json");
    }

    #[test]
    fn rfc3339_shapes() {
        for ok in
            ["2024-05-01T12:30:00Z", "2024-05-01T12:30:00.123456+02:00", "2024-12-31t23:59:60z"]
        {
            assert!(is_rfc3339(ok), "{ok}");
        }
        for bad in [
            "2024-05-01",
            "2024-13-01T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:30:00",
            "2024-05-01T12:30:00.Z",
            "2024-05-01T12:30:00+2:00",
            "2024-05-01T12:30:00Zjunk",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }
}

/// The `sequence` of a change at a Postgres position: the commit LSN and the change's position in
/// its transaction, as fixed-width upper-case hex, so that text order is position order. CDC
/// events carry it; reconciliation's corrections use it to rank with them.
pub fn pg_sequence(commit_lsn: u64, ordinal: u32) -> String {
    format!("{commit_lsn:016X}{ordinal:08X}")
}

#[cfg(test)]
mod pg_sequence_tests {
    use super::pg_sequence;

    #[test]
    fn pg_sequences_sort_as_text_in_position_order() {
        let a = pg_sequence(0x16B_3A28, 7);
        let b = pg_sequence(0x16B_3A28, 8);
        let c = pg_sequence(0x1_0000_0000, 0);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_eq!(a.len(), 24);
    }
}

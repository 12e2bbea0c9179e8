//! A validated CloudEvent kept as the JSON text it arrived in.
//!
//! The broker stores events as JSON text. An event that arrives as text (the HTTP produce path)
//! needs only its attributes checked and its id and placement key read; building a
//! `serde_json::Value` tree of it and serialising that again was most of a produce's CPU.
//! [`RawEvent::parse`] reads the object once, borrowing attribute strings from the text and
//! walking `data` without building it, and checks it with the same rules as
//! [`Event::validate`]; that one pass is the whole check, and the text is then kept as it is.
//!
//! Invariants: a `RawEvent` is always a valid CloudEvent (it is built only by
//! [`RawEvent::parse`], [`RawEvent::from_string`] or [`RawEvent::from_event`], which all
//! validate); its text is one JSON object that deserialises to an [`Event`] equal to what
//! [`Event::from_json`] builds from the same text (every part of it is checked as that parse
//! checks it: escapes, number range, nesting depth, nothing after the object);
//! it has no repeated member (refused, naming it: readers that deserialise stored text into
//! structs would fail on one, and which occurrence counts differs between JSON parsers), and no
//! extension shares a name with a named attribute. Inside `data` the text is kept as sent: a
//! repeated key there reaches every reader, and `serde_json` readers keep its last value.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::{check_head, invalid, ExtensionKind, Head};
use crate::{Event, InvalidEvent};

/// A validated CloudEvent as JSON text, with the attributes the broker needs read out.
#[derive(Debug, Clone)]
pub struct RawEvent {
    id: String,
    placement_key: String,
    /// Checked by [`check_text`], which walks every value as a parse would: no second pass to
    /// build a `RawValue` (that pass was a fifth of the CDC source's encoding CPU).
    json: String,
}

impl RawEvent {
    /// Checks `json` as a structured-mode event and keeps a copy of its text.
    ///
    /// Errors name the attribute at fault, as [`Event::from_json`] does (`json` when the text is
    /// not an object).
    pub fn parse(json: &RawValue) -> Result<Self, InvalidEvent> {
        let (id, placement_key) = check_text(json.get())?;
        Ok(Self { id, placement_key, json: json.get().to_owned() })
    }

    /// Checks `text` as [`RawEvent::parse`] does and keeps it without a copy: for event text a
    /// connector wrote itself instead of building an [`Event`] (the CDC source's changes).
    pub fn from_string(text: String) -> Result<Self, InvalidEvent> {
        let (id, placement_key) = check_text(&text)?;
        Ok(Self { id, placement_key, json: text })
    }

    /// Validates `event` and serialises it.
    pub fn from_event(event: &Event) -> Result<Self, InvalidEvent> {
        event.validate()?;
        let json = serde_json::to_string(event)
            .map_err(|e| invalid("json", format!("the event does not serialise: {e}")))?;
        Ok(Self { id: event.id.clone(), placement_key: event.placement_key().to_string(), json })
    }

    /// The event's `id`, its deduplication key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `partitionkey`, else `subject`, else `id`: the bytes that choose the partition.
    pub fn placement_key(&self) -> &str {
        &self.placement_key
    }

    /// The event's JSON text: one object, checked.
    pub fn json(&self) -> &str {
        &self.json
    }
}

/// Checks an event's text: one JSON object, a valid CloudEvent; returns its id and placement key.
fn check_text(text: &str) -> Result<(String, String), InvalidEvent> {
    if !text.starts_with('{') {
        return Err(invalid("json", "an event must be a JSON object"));
    }
    let fields: Fields<'_> = serde_json::from_str(text).map_err(|e| {
        invalid("json", format!("not a valid event (line and column within the event): {e}"))
    })?;
    fields.check()
}

/// A string that borrows from the text unless it had escapes.
struct Text<'a>(Cow<'a, str>);

/// One member's value as validation sees it. Deserialising one walks all of it, checked as
/// thoroughly as parsing it into a `serde_json::Value` would check it (string escapes, number
/// range, nesting depth): skipping a value as raw text checks less, and a stored event that
/// readers cannot parse would be a poison event.
enum Attr<'a> {
    Str(Text<'a>),
    /// A number or a boolean.
    Scalar,
    Null,
    /// An array or an object.
    Compound,
}

/// The member name under which serde_json's `arbitrary_precision` passes a number's digits.
const ARBITRARY_PRECISION_NUMBER: &str = "$serde_json::private::Number";

impl<'de> Deserialize<'de> for Attr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Attr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Attr::Str(Text(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Attr::Str(Text(Cow::Owned(v.to_string()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Attr::Str(Text(Cow::Owned(v))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Attr::Scalar)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Attr::Scalar)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Attr::Scalar)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Attr::Scalar)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Attr::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<Attr<'de>>()?.is_some() {}
                Ok(Attr::Compound)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                // serde_json's `arbitrary_precision` (on in this workspace, so that numbers keep
                // their digits) hands a number to a visitor as a one-member map under a private
                // name: that is a scalar, not an object.
                match map.next_key::<Text<'de>>()? {
                    None => return Ok(Attr::Compound),
                    Some(Text(name)) if name == ARBITRARY_PRECISION_NUMBER => {
                        map.next_value::<de::IgnoredAny>()?;
                        return Ok(Attr::Scalar);
                    }
                    Some(_) => {
                        map.next_value::<Attr<'de>>()?;
                    }
                }
                while map.next_entry::<Attr<'de>, Attr<'de>>()?.is_some() {}
                Ok(Attr::Compound)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Attr::deserialize(d)? {
            Attr::Str(t) => Ok(t),
            Attr::Scalar | Attr::Null | Attr::Compound => {
                Err(de::Error::custom("a member name is not a string"))
            }
        }
    }
}

/// The members of an event object, unvalidated.
#[derive(Default)]
struct Fields<'a> {
    specversion: Option<Attr<'a>>,
    id: Option<Attr<'a>>,
    source: Option<Attr<'a>>,
    ty: Option<Attr<'a>>,
    subject: Option<Attr<'a>>,
    time: Option<Attr<'a>>,
    datacontenttype: Option<Attr<'a>>,
    dataschema: Option<Attr<'a>>,
    data_base64: Option<Attr<'a>>,
    /// `data` is present and not `null`.
    has_data: bool,
    /// `data` was seen (for spotting a repeat).
    seen_data: bool,
    extensions: Vec<(Text<'a>, Attr<'a>)>,
    /// The first member name that occurs twice.
    repeated: Option<String>,
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CloudEvent object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut f = Fields::default();
                while let Some(Text(name)) = map.next_key::<Text<'de>>()? {
                    let slot = match &*name {
                        "specversion" => &mut f.specversion,
                        "id" => &mut f.id,
                        "source" => &mut f.source,
                        "type" => &mut f.ty,
                        "subject" => &mut f.subject,
                        "time" => &mut f.time,
                        "datacontenttype" => &mut f.datacontenttype,
                        "dataschema" => &mut f.dataschema,
                        "data_base64" => &mut f.data_base64,
                        "data" => {
                            let data: Attr<'de> = map.next_value()?;
                            if std::mem::replace(&mut f.seen_data, true) {
                                f.repeated.get_or_insert_with(|| name.to_string());
                            }
                            f.has_data = !matches!(data, Attr::Null);
                            continue;
                        }
                        _ => {
                            let value = map.next_value::<Attr<'de>>()?;
                            if f.extensions.iter().any(|(n, _)| n.0 == name) {
                                f.repeated.get_or_insert_with(|| name.to_string());
                            }
                            f.extensions.push((Text(name), value));
                            continue;
                        }
                    };
                    if slot.is_some() {
                        f.repeated.get_or_insert_with(|| name.to_string());
                    }
                    *slot = Some(map.next_value()?);
                }
                Ok(f)
            }
        }
        d.deserialize_map(V)
    }
}

/// A string attribute: `Ok(None)` when absent (an error if `required`), an error naming it when
/// present but not a string (`null` included).
fn string<'s>(
    attr: &'s Option<Attr<'_>>,
    name: &str,
    required: bool,
) -> Result<Option<&'s str>, InvalidEvent> {
    match attr {
        None if required => Err(invalid(name, "required attribute is missing")),
        None => Ok(None),
        Some(Attr::Str(t)) => Ok(Some(&t.0)),
        Some(_) => Err(invalid(name, "must be a string")),
    }
}

impl Fields<'_> {
    /// Validates in [`Event::from_value`]'s order; returns the id and the placement key.
    fn check(&self) -> Result<(String, String), InvalidEvent> {
        if let Some(name) = &self.repeated {
            return Err(invalid(name, "appears more than once in the event object"));
        }
        let required = |attr, name| string(attr, name, true).map(Option::unwrap_or_default);
        let specversion = required(&self.specversion, "specversion")?;
        let id = required(&self.id, "id")?;
        let source = required(&self.source, "source")?;
        let ty = required(&self.ty, "type")?;
        let subject = string(&self.subject, "subject", false)?;
        let time = string(&self.time, "time", false)?;
        string(&self.datacontenttype, "datacontenttype", false)?;
        string(&self.dataschema, "dataschema", false)?;
        let data_base64 = string(&self.data_base64, "data_base64", false)?;
        let head = Head { specversion, id, source, ty, time, has_data: self.has_data, data_base64 };
        // In name order, as `Event::validate` walks its sorted map: both name the same one of
        // several bad extensions.
        let mut extensions: Vec<&(Text<'_>, Attr<'_>)> = self.extensions.iter().collect();
        extensions.sort_unstable_by(|a, b| a.0 .0.cmp(&b.0 .0));
        check_head(
            &head,
            extensions.into_iter().map(|(name, value)| {
                let kind = match value {
                    Attr::Str(_) => ExtensionKind::String,
                    Attr::Scalar => ExtensionKind::Scalar,
                    Attr::Null | Attr::Compound => ExtensionKind::Other,
                };
                (&*name.0, kind)
            }),
        )?;
        let partitionkey = self.extensions.iter().find_map(|(name, value)| match value {
            Attr::Str(t) if name.0 == "partitionkey" => Some(&*t.0),
            _ => None,
        });
        let key = partitionkey.or(subject).unwrap_or(id);
        Ok((id.to_string(), key.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Result<RawEvent, InvalidEvent> {
        let json: &RawValue = serde_json::from_str(text).unwrap();
        RawEvent::parse(json)
    }

    #[test]
    fn a_raw_event_reads_what_the_parsed_event_reads() {
        let texts = [
            r#"{"specversion":"1.0","id":"e-1","source":"/s","type":"t","subject":"k",
                "time":"2024-05-01T12:30:00Z","data":{"a":[1,null]},"traceparent":"00-ab"}"#,
            r#"{"specversion":"1.0","id":"e-2","source":"/s","type":"t","subject":"k",
                "partitionkey":"tenant\u002d7","sequence":7,"flag":true}"#,
            r#"{"specversion":"1.0","id":"e\"3","source":"/s","type":"t","data":null,
                "data_base64":"AA=="}"#,
        ];
        for text in texts {
            let r = raw(text).unwrap();
            let e = Event::from_json(text.as_bytes()).unwrap();
            let owned = RawEvent::from_string(text.to_string()).unwrap();
            assert_eq!(
                (owned.id(), owned.placement_key(), owned.json()),
                (r.id(), r.placement_key(), r.json()),
                "from_string checks and keeps what parse does: {text}"
            );
            assert_eq!(r.id(), e.id, "{text}");
            assert_eq!(r.placement_key(), e.placement_key(), "{text}");
            // Readers deserialise stored text straight into the struct.
            let back: Event = serde_json::from_str(r.json()).unwrap();
            assert_eq!(back, e, "{text}");
        }
    }

    #[test]
    fn from_string_refuses_what_parse_refuses() {
        for (text, attribute) in [
            (r#"{"specversion":"1.0","id":"","source":"/s","type":"t"}"#, "id"),
            (r#"{"specversion":"1.0","id":"a","source":"/s","type":"t","time":"x"}"#, "time"),
            (r#"[1]"#, "json"),
            (r#"{"specversion":"1.0","id":"a","source":"/s","type":"t""#, "json"),
            // What the single checking pass must catch now that no RawValue parse follows it.
            (r#"{"specversion":"1.0","id":"a","source":"/s","type":"t"} {}"#, "json"),
            (r#"{"specversion":"1.0","id":"a","source":"/s","type":"t","data":"\q"}"#, "json"),
            (r#"{"specversion":"1.0","id":"a","source":"/s","type":"t","data":[1,]}"#, "json"),
        ] {
            let e = RawEvent::from_string(text.to_string()).unwrap_err();
            assert_eq!(e.attribute, attribute, "{text}: {e}");
        }
    }

    #[test]
    fn each_broken_attribute_is_named_as_the_parsed_path_names_it() {
        let cases = [
            r#"{"id":"1","source":"/s","type":"t"}"#,
            r#"{"specversion":"1.0","source":"/s","type":"t"}"#,
            r#"{"specversion":"1.0","id":"","source":"/s","type":"t"}"#,
            r#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":7}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":null}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"yesterday"}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","Bad-Name":"x"}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":{"a":1}}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":null}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","partitionkey":3}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":""}"#,
            r#"[1,2]"#,
            r#""text""#,
            // Several bad extensions: both paths name the first in name order.
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","p":1,"partitionkey":2,"Bad":1}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","partitionkey":2,"zz":null}"#,
        ];
        for text in cases {
            let parsed = Event::from_json(text.as_bytes()).unwrap_err();
            let err = raw(text).unwrap_err();
            assert_eq!(err.attribute, parsed.attribute, "{text}: {err} vs {parsed}");
        }
    }

    /// Regression: `data` was skipped as raw text, which does not check escapes, number range or
    /// depth, so events that no reader could parse back were accepted and stored.
    #[test]
    fn data_that_a_full_parse_refuses_is_refused() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        // (Numbers beyond f64's range are numbers: the workspace keeps their digits.)
        for data in [r#""\ud800""#, deep.as_str(), r#"{"a":"\x"}"#] {
            let text = format!(
                r#"{{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{data}}}"#
            );
            let json: Box<RawValue> = match serde_json::from_str(&text) {
                Ok(json) => json,
                Err(_) => continue, // not even a raw value: refused before an event is read
            };
            assert!(Event::from_json(text.as_bytes()).is_err(), "the parsed path refuses {data}");
            let err = RawEvent::parse(&json).unwrap_err();
            assert_eq!(err.attribute, "json", "{data}: {err}");
        }
        let fine = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":["\u00e9",1.5e300,null,{}]}}"#;
        assert!(raw(fine).is_ok());
    }

    #[test]
    fn a_repeated_member_is_refused_naming_it() {
        for (text, name) in [
            (r#"{"specversion":"1.0","id":"1","id":"2","source":"/s","type":"t"}"#, "id"),
            (
                r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data":2}"#,
                "data",
            ),
            (r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","x":1,"x":1}"#, "x"),
        ] {
            assert_eq!(raw(text).unwrap_err().attribute, name, "{text}");
        }
    }

    #[test]
    fn from_event_validates_and_keeps_the_serialised_event() {
        let mut e = Event::new("e-1", "/s", "t");
        e.subject = Some("k".into());
        let r = RawEvent::from_event(&e).unwrap();
        assert_eq!((r.id(), r.placement_key()), ("e-1", "k"));
        assert_eq!(serde_json::from_str::<Event>(r.json()).unwrap(), e);
        // An extension named like a named attribute would serialise as a repeated member.
        let mut shadow = e.clone();
        shadow.extensions.insert("id".into(), serde_json::json!("other"));
        assert_eq!(RawEvent::from_event(&shadow).unwrap_err().attribute, "id");
        e.id.clear();
        assert_eq!(RawEvent::from_event(&e).unwrap_err().attribute, "id");
    }
}

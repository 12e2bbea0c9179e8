//! `data_base64` is checked as canonical standard base64 (issue 20: `"!!!"` was stored): the
//! class test compares every decision of [`driftless_core::check_base64`], through both event
//! forms, with an independent strict decoder.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use driftless_core::{Event, RawEvent};
use proptest::prelude::*;
use serde_json::value::RawValue;

fn event_json(data_base64: &str) -> String {
    serde_json::json!({
        "specversion": "1.0", "id": "e", "source": "/s", "type": "t", "data_base64": data_base64
    })
    .to_string()
}

/// Whether both decoders of the event text (raw and tree) accept it; they must agree.
fn accepted(data_base64: &str) -> bool {
    let text = event_json(data_base64);
    let raw = RawEvent::parse(&RawValue::from_string(text.clone()).unwrap());
    let tree = Event::from_json(text.as_bytes());
    assert_eq!(raw.is_ok(), tree.is_ok(), "raw and tree disagree on {data_base64:?}");
    if let Err(e) = &raw {
        assert_eq!(e.attribute, "data_base64", "{e}");
    }
    raw.is_ok()
}

#[test]
fn data_base64_bang_bang_bang_is_refused() {
    let text = event_json("!!!");
    let e = RawEvent::parse(&RawValue::from_string(text.clone()).unwrap()).unwrap_err();
    assert_eq!(e.attribute, "data_base64");
    assert!(e.to_string().contains("base64"), "{e}");
    assert!(Event::from_json(text.as_bytes()).is_err());
    for bad in ["A", "AB=", "A===", "====", "Zh==", "Zm9=", "Zm 9v", "Zm9v\n", "Zm9v=", "é123"] {
        assert!(!accepted(bad), "{bad:?} was accepted");
    }
    for good in ["", "Zg==", "Zm8=", "Zm9v", "+/+/"] {
        assert!(accepted(good), "{good:?} was refused");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Any bytes' base64 is accepted, and decodes back to the bytes.
    #[test]
    fn any_bytes_base64_is_accepted_and_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
        prop_assert!(accepted(&text), "{text:?}");
        let stored = RawEvent::parse(&RawValue::from_string(event_json(&text)).unwrap()).unwrap();
        let event: Event = serde_json::from_str(stored.json()).unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(event.data_base64.unwrap()).unwrap();
        prop_assert_eq!(decoded, bytes);
    }

    /// Any string is accepted exactly when a strict decoder decodes it.
    #[test]
    fn any_string_that_is_not_valid_base64_is_refused(
        s in prop_oneof![
            "[A-Za-z0-9+/=]{0,12}",
            "[A-Za-z0-9+/= !\\-_\n.é]{0,12}",
            any::<String>(),
        ]
    ) {
        let valid = base64::engine::general_purpose::STANDARD.decode(&s).is_ok();
        prop_assert_eq!(accepted(&s), valid, "{:?}", s);
    }
}

//! Column values: a mapped JSON value becomes exactly what the target column holds.
//!
//! An event carries each value in one JSON form (the README's table: numbers as their exact
//! text, `bytea` as base64, `json`/`jsonb` as their text, arrays as nested JSON arrays, every
//! other type as the text Postgres prints). Writing it back is chosen by the *target column's*
//! type, never guessed from the value:
//! - Postgres: every value travels as the text the column type's input function reads, cast in
//!   SQL. Numbers are their JSON text digit for digit (serde_json keeps it:
//!   `arbitrary_precision`), so no value passes through a float; `bytea` columns decode base64
//!   (or take Postgres's own `\x` hex form, which base64 never starts with); `json`/`jsonb`
//!   columns take a JSON string as the JSON text it holds (how CDC carries them) and any other
//!   JSON value as its JSON text; array columns get an array literal built from nested JSON
//!   arrays, each element converted by the element type (so `bytea[]` elements decode too).
//! - SQLite: integers that fit `i64` are `INTEGER`, other numbers are `REAL` only when the
//!   double holds exactly the number's value, else `TEXT` with the exact digits; strings going
//!   to a column declared `BLOB` decode base64 into the bytes; booleans are `1`/`0`. A double
//!   is "exact" for a number whose value is the shortest text of its nearest double (what
//!   Postgres prints for `float8`): `0.1` is stored as the double `0.1`, and
//!   `0.1000000000000000055511151231257827` as text. SQLite keeps no negative zero.
//!
//! Invariants: nothing here rounds a number or re-encodes a string; a value the column cannot
//! take as documented (bad base64, an object for an array column) is an error naming what was
//! expected, which rejects the event (retry, then the dead-letter queue), never a silent NULL.

use base64::Engine as _;
use rusqlite::types::Value as Sql;
use serde_json::Value;

/// How a Postgres column's values are written, from its type with domains resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgKind {
    /// `json` or `jsonb`.
    Json,
    /// `bytea`.
    Bytea,
    /// `int2vector`, `oidvector`: space-separated numbers.
    Vector,
    /// An array; elements written as `element`, separated by `delimiter`.
    Array {
        /// The element type's kind.
        element: Box<PgKind>,
        /// The element type's `typdelim` (`;` for `box`).
        delimiter: char,
    },
    /// Any other type: the value's text.
    Text,
}

/// Deepest array nesting written (Postgres allows 6 dimensions).
const ARRAY_DEPTH_MAX: usize = 32;

/// `v` as the text `kind`'s input function reads; `None` for SQL NULL.
pub fn pg_text(v: &Value, kind: &PgKind) -> Result<Option<String>, String> {
    match (v, kind) {
        (Value::Null, _) => Ok(None),
        (Value::String(s), PgKind::Json) => Ok(Some(s.clone())),
        (other, PgKind::Json) => Ok(Some(other.to_string())),
        (Value::String(s), PgKind::Bytea) => bytea_text(s).map(Some),
        (other, PgKind::Bytea) => Err(format!(
            "a bytea column takes base64 text (or \\x hex), not {}",
            driftless_core::json_kind(other)
        )),
        (Value::Array(items), PgKind::Vector) => {
            let mut parts = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::Number(n) => parts.push(n.to_string()),
                    other => {
                        return Err(format!(
                            "a vector column takes numbers, not {}",
                            driftless_core::json_kind(other)
                        ))
                    }
                }
            }
            Ok(Some(parts.join(" ")))
        }
        (Value::Array(items), PgKind::Array { element, delimiter }) => {
            let mut out = String::new();
            array_literal(items, element, *delimiter, 0, &mut out)?;
            Ok(Some(out))
        }
        // An array column also takes Postgres's own array literal as a string.
        (Value::String(s), _) => Ok(Some(s.clone())),
        (Value::Bool(b), _) => Ok(Some(b.to_string())),
        (Value::Number(n), _) => Ok(Some(n.to_string())),
        (other @ Value::Object(_), PgKind::Array { .. }) => Err(format!(
            "an array column takes a JSON array, not {}",
            driftless_core::json_kind(other)
        )),
        (other, _) => Ok(Some(other.to_string())),
    }
}

/// Appends the array literal of `items` (`{…}`; nested JSON arrays are dimensions).
fn array_literal(
    items: &[Value],
    element: &PgKind,
    delimiter: char,
    depth: usize,
    out: &mut String,
) -> Result<(), String> {
    if depth > ARRAY_DEPTH_MAX {
        return Err(format!("an array nests more than {ARRAY_DEPTH_MAX} dimensions"));
    }
    out.push('{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(delimiter);
        }
        match item {
            Value::Array(sub) => array_literal(sub, element, delimiter, depth + 1, out)?,
            other => match pg_text(other, element).map_err(|e| format!("element {i}: {e}"))? {
                None => out.push_str("NULL"),
                Some(text) => {
                    // Quoted, so that `NULL`, delimiters, braces and spaces stay text.
                    out.push('"');
                    for c in text.chars() {
                        if c == '"' || c == '\\' {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                    out.push('"');
                }
            },
        }
    }
    out.push('}');
    Ok(())
}

/// Base64 (standard alphabet, padded) → Postgres hex input `\x…`; `\x…` is taken as it is.
fn bytea_text(s: &str) -> Result<String, String> {
    if s.starts_with("\\x") {
        return Ok(s.to_string());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("a bytea column takes base64 text (or \\x hex): {e}"))?;
    let mut out = String::with_capacity(2 + bytes.len() * 2);
    out.push_str("\\x");
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xF)]));
    }
    Ok(out)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether an SQLite column of this declared type is `blob` for [`sqlite_value`]: `BLOB` in
/// its name, in any case.
pub fn sqlite_blob(declared_type: &str) -> bool {
    declared_type.to_ascii_uppercase().contains("BLOB")
}

/// `v` as an SQLite value for a column whose declared type is `blob` (`BLOB` in it) or not.
pub fn sqlite_value(v: &Value, blob: bool) -> Result<Sql, String> {
    Ok(match v {
        Value::Null => Sql::Null,
        Value::Bool(b) => Sql::Integer(i64::from(*b)),
        Value::Number(n) => sqlite_number(n.as_str()),
        Value::String(s) if blob => Sql::Blob(
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| format!("a BLOB column takes base64 text: {e}"))?,
        ),
        Value::String(s) => Sql::Text(s.clone()),
        other => Sql::Text(other.to_string()),
    })
}

/// An integer in `i64` → `INTEGER`; a number whose value is the shortest text of its nearest
/// double → `REAL`; any other (more digits than a double holds, out of range) → `TEXT` with the
/// exact digits.
fn sqlite_number(text: &str) -> Sql {
    if let Ok(i) = text.parse::<i64>() {
        return Sql::Integer(i);
    }
    match text.parse::<f64>() {
        // A shortest text of `x` (`{:e}` is one; a tie may have another of the same length):
        // reads back as `x` with no more significant digits than the shortest.
        Ok(x) if x.is_finite() && significant(text) <= significant(&format!("{x:e}")) => {
            Sql::Real(x)
        }
        _ => Sql::Text(text.to_string()),
    }
}

/// How many significant digits a decimal number text has (`usize::MAX` if it is not one).
fn significant(text: &str) -> usize {
    normal(text).map_or(usize::MAX, |(_, digits, _)| digits.len())
}

/// Whether two decimal number texts (JSON number grammar) have the same value; `-0` and `0`
/// differ (Postgres and IEEE keep the sign).
#[cfg(test)]
fn same_decimal(a: &str, b: &str) -> bool {
    normal(a) == normal(b)
}

/// (negative, significant digits without leading or trailing zeros, exponent of the first
/// digit); zero is `(sign, "", 0)`. `None` if `s` is not a decimal number.
fn normal(s: &str) -> Option<(bool, String, i64)> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], s[i + 1..].parse::<i64>().ok()?),
        None => (s, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if !(int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())) || int.len() + frac.len() == 0
    {
        return None;
    }
    let digits: String = format!("{int}{frac}");
    let lead = digits.bytes().take_while(|&b| b == b'0').count();
    let sig = digits[lead..].trim_end_matches('0');
    if sig.is_empty() {
        return Some((neg, String::new(), 0));
    }
    // The first significant digit's power of ten.
    let first = i64::try_from(int.len()).ok()? - i64::try_from(lead).ok()? - 1 + exp;
    Some((neg, sig.to_string(), first))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn num(text: &str) -> Value {
        Value::Number(text.parse().unwrap())
    }

    #[test]
    fn numbers_are_written_digit_for_digit() {
        for text in [
            "123456789012345678901234567890",
            "18446744073709551616",
            "0.1000000000000000055511151231257827",
            "-0",
            "-0.0",
            "3.8479485277079987e-69",
            "1e400",
        ] {
            // The same number (serde writes an exponent's sign): never a rounded one.
            let written = pg_text(&num(text), &PgKind::Text).unwrap().unwrap();
            assert!(same_decimal(&written, text), "{text} → {written}");
        }
        assert!(!same_decimal("-0", "0") && !same_decimal("0.1", "0.10000000000000001"));
    }

    #[test]
    fn bytea_columns_decode_base64_and_take_hex() {
        let k = PgKind::Bytea;
        assert_eq!(pg_text(&json!("AP8A/1wn"), &k).unwrap().unwrap(), "\\x00ff00ff5c27");
        assert_eq!(pg_text(&json!(""), &k).unwrap().unwrap(), "\\x");
        assert_eq!(pg_text(&json!("\\x00ff"), &k).unwrap().unwrap(), "\\x00ff");
        assert!(pg_text(&json!("not base64!"), &k).unwrap_err().contains("base64"));
        assert!(pg_text(&json!(1), &k).is_err());
        assert_eq!(pg_text(&Value::Null, &k).unwrap(), None);
    }

    #[test]
    fn json_columns_take_a_string_as_the_json_text_it_holds() {
        assert_eq!(pg_text(&json!("null"), &PgKind::Json).unwrap().unwrap(), "null");
        assert_eq!(
            pg_text(&json!(r#"{"a":1,"a":2}"#), &PgKind::Json).unwrap().unwrap(),
            r#"{"a":1,"a":2}"#
        );
        assert_eq!(pg_text(&json!({"a": [1]}), &PgKind::Json).unwrap().unwrap(), r#"{"a":[1]}"#);
        assert_eq!(pg_text(&Value::Null, &PgKind::Json).unwrap(), None);
    }

    #[test]
    fn arrays_become_quoted_literals_with_their_element_conversion() {
        let text = PgKind::Array { element: Box::new(PgKind::Text), delimiter: ',' };
        let v = json!([["a\"b", null], ["NULL", "x\\y"]]);
        assert_eq!(pg_text(&v, &text).unwrap().unwrap(), r#"{{"a\"b",NULL},{"NULL","x\\y"}}"#);
        assert_eq!(pg_text(&json!([]), &text).unwrap().unwrap(), "{}");
        let floats = PgKind::Array { element: Box::new(PgKind::Text), delimiter: ',' };
        assert_eq!(
            pg_text(&json!([num("-0"), "NaN"]), &floats).unwrap().unwrap(),
            r#"{"-0","NaN"}"#
        );
        let bytes = PgKind::Array { element: Box::new(PgKind::Bytea), delimiter: ',' };
        assert_eq!(
            pg_text(&json!(["AP8=", null]), &bytes).unwrap().unwrap(),
            r#"{"\\x00ff",NULL}"#
        );
        let boxes = PgKind::Array { element: Box::new(PgKind::Text), delimiter: ';' };
        assert_eq!(
            pg_text(&json!(["(1,1),(0,0)", "(2,2),(1,1)"]), &boxes).unwrap().unwrap(),
            r#"{"(1,1),(0,0)";"(2,2),(1,1)"}"#
        );
        assert!(pg_text(&json!({"a": 1}), &text).is_err());
        assert_eq!(pg_text(&json!("{1,2}"), &text).unwrap().unwrap(), "{1,2}");
        assert_eq!(pg_text(&json!([1, 2]), &PgKind::Vector).unwrap().unwrap(), "1 2");
    }

    #[test]
    fn sqlite_keeps_numbers_exact_or_as_text() {
        assert_eq!(sqlite_number("42"), Sql::Integer(42));
        assert_eq!(sqlite_number("-9223372036854775808"), Sql::Integer(i64::MIN));
        assert_eq!(sqlite_number("9223372036854775808"), Sql::Text("9223372036854775808".into()));
        assert_eq!(sqlite_number("9.223372036854776e18"), Sql::Real(9.223372036854776e18));
        assert_eq!(sqlite_number("0.10000000000000001"), Sql::Text("0.10000000000000001".into()));
        assert_eq!(sqlite_number("-1468544763669157.2"), Sql::Real(-1468544763669157.2));
        assert_eq!(sqlite_number("0.5"), Sql::Real(0.5));
        assert_eq!(sqlite_number("2.5e-3"), Sql::Real(0.0025));
        assert_eq!(sqlite_number("0.1"), Sql::Real(0.1));
        assert_eq!(sqlite_number("3.8479485277079987e-69"), Sql::Real(3.8479485277079987e-69));
        assert_eq!(
            sqlite_number("0.1000000000000000055511151231257827"),
            Sql::Text("0.1000000000000000055511151231257827".into())
        );
        assert_eq!(sqlite_number("1e400"), Sql::Text("1e400".into()));
        assert_eq!(
            sqlite_number("123456789012345678901234567890"),
            Sql::Text("123456789012345678901234567890".into())
        );
        assert_eq!(sqlite_value(&json!("AP8="), true).unwrap(), Sql::Blob(vec![0, 255]));
        assert_eq!(sqlite_value(&json!("AP8="), false).unwrap(), Sql::Text("AP8=".into()));
        assert!(sqlite_value(&json!("!!"), true).is_err());
    }

    proptest! {
        /// Every double's shortest text is stored in SQLite as that very double.
        #[test]
        fn a_double_printed_shortest_is_stored_as_that_double(bits in any::<u64>()) {
            let x = f64::from_bits(bits);
            prop_assume!(x.is_finite());
            let text = serde_json::Number::from_f64(x).unwrap().to_string();
            match sqlite_number(&text) {
                Sql::Real(y) => prop_assert_eq!(y.to_bits(), x.to_bits()),
                other => prop_assert!(false, "{text}: {other:?}"),
            }
        }

        /// A number with more digits than its double holds is kept as its exact text.
        #[test]
        fn a_number_a_double_cannot_hold_is_stored_as_text(digits in "[1-9][0-9]{20,40}") {
            let text = format!("0.{digits}1");
            prop_assert_eq!(sqlite_number(&text), Sql::Text(text.clone()));
        }

        #[test]
        fn numbers_reach_postgres_as_their_own_text(text in "-?(0|[1-9][0-9]{0,40})(\\.[0-9]{1,40})?([eE][+-]?[0-9]{1,3})?") {
            let written = pg_text(&num(&text), &PgKind::Text).unwrap().unwrap();
            prop_assert!(same_decimal(&written, &text), "{} → {}", text, written);
        }

        #[test]
        fn base64_round_trips_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            prop_assert_eq!(pg_text(&json!(b64), &PgKind::Bytea).unwrap().unwrap(), format!("\\x{hex}"));
        }
    }
}

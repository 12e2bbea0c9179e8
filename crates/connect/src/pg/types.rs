//! Postgres values in their text output format → JSON, for change data capture.
//!
//! `pgoutput` logical replication sends every column in the type's text output format (the same
//! text `SELECT col` returns over the simple-query protocol). [`text_to_json`] turns that text
//! into the JSON value an event carries, using a [`TypeCatalog`] to know what each type oid is.
//!
//! Rules (by type, after resolving domains to their base type):
//! - `int2`, `int4`, `int8`, `oid` → JSON numbers, exact (parsed as `i64` / `u64`);
//!   `int2vector`, `oidvector` (space-separated) → arrays of such numbers.
//! - `float4`, `float8` → JSON numbers written exactly as Postgres printed them (the shortest
//!   text that reads back as the same value, with `extra_float_digits = 3` pinned on the
//!   connection; `-0` stays `-0`); `NaN`, `Infinity`, `-Infinity` → those strings. No float
//!   conversion happens: the number's text is carried (serde_json's `arbitrary_precision`).
//! - `numeric` → a JSON string holding the exact text (no precision loss), `"NaN"`,
//!   `"Infinity"` and `"-Infinity"` included.
//! - `bool`: `t` / `f` → `true` / `false` (`true` / `false`, what `bool::text` gives, too).
//! - `json`, `jsonb` → a JSON *string* holding the value's text exactly as Postgres printed it
//!   (Debezium does the same): so JSON `null` (`"null"`) differs from SQL NULL (`null`), and a
//!   `json` value keeps its whitespace, member order, duplicate members and escapes. Mappings
//!   read into it with jq's `fromjson`.
//! - `timestamptz` in the ISO `DateStyle` (`2026-11-25 11:56:22.123456+05:30`) → RFC 3339
//!   (`2026-11-25T11:56:22.123456+05:30`; `+00` becomes `+00:00`). An offset with seconds
//!   (local mean time of historical dates, `+05:53:28`) cannot be written in RFC 3339, so the
//!   instant is shifted to `+00:00`. Values RFC 3339 cannot express — `infinity`, `-infinity`,
//!   BC dates, years after 9999 — stay strings exactly as Postgres printed them.
//! - `timestamp` (without time zone): `2026-11-25 11:56:22.5` → `2026-11-25T11:56:22.5` (no
//!   offset: none is known); the same exceptions stay as printed.
//! - `bytea`: hex output (`\x0a0b`) or escape output (`\012\\a`) → standard base64.
//! - Arrays (element type known, `typcategory = 'A'`, variable length) → nested JSON arrays,
//!   one level per dimension; elements converted by the element type, unquoted `NULL` → `null`
//!   (a quoted `"NULL"` is the string `NULL`); the element type's delimiter is honoured (`;`
//!   for `box`). An array whose bounds are not the default (Postgres prints a prefix such as
//!   `[0:1]=`) is carried as a string of that exact text: a JSON array cannot hold its bounds.
//! - Enums, composites, ranges, `text`, `varchar`, `bpchar`, `name`, `char`, `date`, `time`,
//!   `timetz`, `interval`, `uuid`, `inet`, … and every type the catalog does not know → the text
//!   as a JSON string.
//!
//! Invariants:
//! - nothing here panics, whatever the input; malformed text is an `Err` whose reason quotes a
//!   bounded prefix of the offending text (the caller adds table and column);
//! - the catalog is a snapshot: a type created after [`TypeCatalog::load`] is unknown and comes
//!   out as a string, so callers reload when a relation mentions an oid the catalog does not
//!   [`contain`](TypeCatalog::contains);
//! - built-in type oids (below 10000) are the same in every database, which is why conversion
//!   of base types is chosen by oid and why [`TypeCatalog::builtin`] works without a database.

use std::collections::HashMap;

use base64::Engine as _;
use driftless_core::civil_from_days;
use serde_json::Value;

/// What kind of type an oid is (`pg_type.typtype`, refined for arrays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeKind {
    /// A base type (`typtype = 'b'`) that is not an array.
    Base,
    /// An enum (`typtype = 'e'`); values are their labels.
    Enum,
    /// A domain (`typtype = 'd'`), converted as its base type.
    Domain {
        /// `typbasetype`.
        base: u32,
    },
    /// A true array type: `typcategory = 'A'`, `typelem ≠ 0`, variable length.
    Array {
        /// `typelem`, the element type.
        element: u32,
        /// The element type's `typdelim`, which separates elements in the text form.
        delimiter: char,
    },
    /// A composite (row) type (`typtype = 'c'`).
    Composite,
    /// A range type (`typtype = 'r'`).
    Range,
    /// Anything else: pseudo-types, multiranges.
    Other,
}

/// One row of `pg_type`, as far as conversion needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// `pg_type.oid`.
    pub oid: u32,
    /// `typname` (without schema).
    pub name: String,
    /// What kind of type it is.
    pub kind: TypeKind,
    /// `typcategory` (`N` numeric, `S` string, `A` array, …).
    pub category: char,
}

/// Type oid → [`TypeInfo`] for one database.
#[derive(Debug, Clone, Default)]
pub struct TypeCatalog {
    types: HashMap<u32, TypeInfo>,
}

/// Built-in oids that conversion treats specially.
mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT2VECTOR: u32 = 22;
    pub const INT4: u32 = 23;
    pub const OID: u32 = 26;
    pub const OIDVECTOR: u32 = 30;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const JSONB: u32 = 3802;
}

/// Built-in base types: (oid, name, typcategory).
const BUILTIN_BASE: &[(u32, &str, char)] = &[
    (16, "bool", 'B'),
    (17, "bytea", 'U'),
    (18, "char", 'Z'),
    (19, "name", 'S'),
    (20, "int8", 'N'),
    (21, "int2", 'N'),
    (22, "int2vector", 'A'),
    (23, "int4", 'N'),
    (25, "text", 'S'),
    (26, "oid", 'N'),
    (30, "oidvector", 'A'),
    (114, "json", 'U'),
    (142, "xml", 'U'),
    (650, "cidr", 'I'),
    (700, "float4", 'N'),
    (701, "float8", 'N'),
    (869, "inet", 'I'),
    (1042, "bpchar", 'S'),
    (1043, "varchar", 'S'),
    (1082, "date", 'D'),
    (1083, "time", 'D'),
    (1114, "timestamp", 'D'),
    (1184, "timestamptz", 'D'),
    (1186, "interval", 'T'),
    (1266, "timetz", 'D'),
    (1700, "numeric", 'N'),
    (2950, "uuid", 'U'),
    (3802, "jsonb", 'U'),
];

/// Built-in array types: (oid, name, element oid). All their elements use `,`.
const BUILTIN_ARRAY: &[(u32, &str, u32)] = &[
    (143, "_xml", 142),
    (199, "_json", 114),
    (651, "_cidr", 650),
    (1000, "_bool", 16),
    (1001, "_bytea", 17),
    (1002, "_char", 18),
    (1003, "_name", 19),
    (1005, "_int2", 21),
    (1007, "_int4", 23),
    (1009, "_text", 25),
    (1014, "_bpchar", 1042),
    (1015, "_varchar", 1043),
    (1016, "_int8", 20),
    (1021, "_float4", 700),
    (1022, "_float8", 701),
    (1028, "_oid", 26),
    (1041, "_inet", 869),
    (1115, "_timestamp", 1114),
    (1182, "_date", 1082),
    (1183, "_time", 1083),
    (1185, "_timestamptz", 1184),
    (1187, "_interval", 1186),
    (1231, "_numeric", 1700),
    (1270, "_timetz", 1266),
    (2951, "_uuid", 2950),
    (3807, "_jsonb", 3802),
];

/// Deepest nesting of arrays and of type references (domains, array elements) followed.
/// Postgres allows 6 array dimensions; this only guards against cyclic or hostile input.
const DEPTH_MAX: usize = 32;

/// Characters of the offending text quoted in error reasons.
const QUOTE_CHARS_MAX: usize = 64;

impl TypeCatalog {
    /// Built-in types only (works without a database; unknown oids fall back to strings).
    pub fn builtin() -> Self {
        let mut types = HashMap::new();
        for &(oid, name, category) in BUILTIN_BASE {
            types.insert(oid, TypeInfo { oid, name: name.into(), kind: TypeKind::Base, category });
        }
        for &(oid, name, element) in BUILTIN_ARRAY {
            let kind = TypeKind::Array { element, delimiter: ',' };
            types.insert(oid, TypeInfo { oid, name: name.into(), kind, category: 'A' });
        }
        Self { types }
    }

    /// Every type of the database, from `pg_type` (oid, typname, typtype, typelem, typdelim,
    /// typbasetype, typcategory, typlen).
    pub async fn load(client: &tokio_postgres::Client) -> Result<Self, tokio_postgres::Error> {
        let rows = client
            .query(
                "SELECT oid, typname, typtype, typelem, typdelim, typbasetype, typcategory, \
                 typlen FROM pg_catalog.pg_type",
                &[],
            )
            .await?;
        struct Row {
            name: String,
            typtype: char,
            elem: u32,
            delim: char,
            base: u32,
            category: char,
            len: i16,
        }
        let char_of = |c: i8| char::from(c as u8);
        let mut raw = HashMap::with_capacity(rows.len());
        for row in rows {
            let oid: u32 = row.try_get(0)?;
            raw.insert(
                oid,
                Row {
                    name: row.try_get(1)?,
                    typtype: char_of(row.try_get(2)?),
                    elem: row.try_get(3)?,
                    delim: char_of(row.try_get(4)?),
                    base: row.try_get(5)?,
                    category: char_of(row.try_get(6)?),
                    len: row.try_get(7)?,
                },
            );
        }
        let mut types = HashMap::with_capacity(raw.len());
        for (&oid, r) in &raw {
            let kind = match r.typtype {
                'b' if r.category == 'A'
                    && r.elem != 0
                    && r.len == -1
                    && oid != oid::INT2VECTOR
                    && oid != oid::OIDVECTOR =>
                {
                    // Array I/O separates elements with the *element* type's delimiter.
                    let delimiter = raw.get(&r.elem).map_or(',', |e| e.delim);
                    TypeKind::Array { element: r.elem, delimiter }
                }
                'b' => TypeKind::Base,
                'e' => TypeKind::Enum,
                'd' => TypeKind::Domain { base: r.base },
                'c' => TypeKind::Composite,
                'r' => TypeKind::Range,
                _ => TypeKind::Other,
            };
            types.insert(oid, TypeInfo { oid, name: r.name.clone(), kind, category: r.category });
        }
        Ok(Self { types })
    }

    /// Whether the catalog knows `oid`.
    pub fn contains(&self, oid: u32) -> bool {
        self.types.contains_key(&oid)
    }

    /// The type's `typname`, if known.
    pub fn name(&self, oid: u32) -> Option<&str> {
        self.types.get(&oid).map(|t| t.name.as_str())
    }

    /// Everything known about `oid`.
    pub fn get(&self, oid: u32) -> Option<&TypeInfo> {
        self.types.get(&oid)
    }

    /// Every type known, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &TypeInfo> {
        self.types.values()
    }

    /// Number of types known.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// Whether no type is known.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }
}

/// Whether `type_oid` is `json` or `jsonb`, or a domain over one: values [`text_to_json`]
/// carries as their text.
pub fn is_json(catalog: &TypeCatalog, type_oid: u32) -> bool {
    let mut oid = type_oid;
    for _ in 0..DEPTH_MAX {
        match catalog.types.get(&oid).map(|t| t.kind) {
            Some(TypeKind::Domain { base }) => oid = base,
            _ => break,
        }
    }
    matches!(oid, oid::JSON | oid::JSONB)
}

/// Converts one value. Errors are a plain String reason (the caller wraps it with table/column).
pub fn text_to_json(catalog: &TypeCatalog, type_oid: u32, text: &str) -> Result<Value, String> {
    convert(catalog, type_oid, text, 0)
}

fn convert(
    catalog: &TypeCatalog,
    type_oid: u32,
    text: &str,
    depth: usize,
) -> Result<Value, String> {
    if depth > DEPTH_MAX {
        return Err(format!(
            "type {type_oid} nests more than {DEPTH_MAX} levels (cyclic domain or array?)"
        ));
    }
    match catalog.types.get(&type_oid).map(|t| t.kind) {
        Some(TypeKind::Domain { base }) => convert(catalog, base, text, depth + 1),
        Some(TypeKind::Array { element, delimiter }) => {
            let array = ArrayParser { catalog, element, delimiter, text, pos: 0, depth }
                .parse()
                .map_err(|reason| format!("array {}: {reason}", quote(text)))?;
            // Bounds other than 1 (`[0:1]={…}`) have no JSON form: the text carries them.
            if text.starts_with('[') {
                return Ok(Value::String(text.to_owned()));
            }
            Ok(array)
        }
        Some(TypeKind::Enum | TypeKind::Composite | TypeKind::Range | TypeKind::Other) => {
            Ok(Value::String(text.to_owned()))
        }
        Some(TypeKind::Base) | None => base_to_json(type_oid, text),
    }
}

/// Conversion of base types, chosen by (built-in, hence stable) oid.
fn base_to_json(type_oid: u32, text: &str) -> Result<Value, String> {
    match type_oid {
        oid::BOOL => match text {
            "t" | "true" => Ok(Value::Bool(true)),
            "f" | "false" => Ok(Value::Bool(false)),
            _ => Err(format!("invalid bool {}", quote(text))),
        },
        oid::INT2 | oid::INT4 | oid::INT8 => integer(text),
        oid::OID => text
            .parse::<u64>()
            .map(Value::from)
            .map_err(|e| format!("invalid oid {}: {e}", quote(text))),
        oid::INT2VECTOR | oid::OIDVECTOR => text
            .split_ascii_whitespace()
            .map(integer)
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        oid::FLOAT4 | oid::FLOAT8 => float(text),
        oid::NUMERIC => numeric(text),
        oid::JSON | oid::JSONB => Ok(Value::String(text.to_owned())),
        oid::TIMESTAMPTZ => timestamp(text, true),
        oid::TIMESTAMP => timestamp(text, false),
        oid::BYTEA => bytea(text)
            .map(|bytes| Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))),
        _ => Ok(Value::String(text.to_owned())),
    }
}

/// `text` in double quotes, cut to [`QUOTE_CHARS_MAX`] characters, control characters escaped.
fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_CHARS_MAX) {
        Some((cut, _)) => format!("{:?}… ({} bytes)", &text[..cut], text.len()),
        None => format!("{text:?}"),
    }
}

fn integer(text: &str) -> Result<Value, String> {
    // Postgres never prints `+`; accepting only its output keeps garbage out.
    if text.starts_with('+') {
        return Err(format!("invalid integer {}", quote(text)));
    }
    match text.parse::<i64>() {
        Ok(n) => Ok(Value::from(n)),
        Err(e) => Err(format!("invalid integer {}: {e}", quote(text))),
    }
}

fn float(text: &str) -> Result<Value, String> {
    if matches!(text, "NaN" | "Infinity" | "-Infinity") {
        return Ok(Value::String(text.to_owned()));
    }
    let bad = || format!("invalid floating-point number {}", quote(text));
    // Rust also accepts `inf`, `nan`, `infinity` in any case; Postgres prints only the above.
    if !text.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E')) {
        return Err(bad());
    }
    // Range check only: the number travels as the text Postgres printed, which is already the
    // shortest exact form (a float conversion here would be the lossy step this avoids).
    let x: f64 = text.parse().map_err(|_| bad())?;
    if !x.is_finite() {
        return Err(bad());
    }
    text.parse::<serde_json::Number>().map(Value::Number).map_err(|_| bad())
}

fn numeric(text: &str) -> Result<Value, String> {
    if matches!(text, "NaN" | "Infinity" | "-Infinity") || is_decimal(text) {
        Ok(Value::String(text.to_owned()))
    } else {
        Err(format!("invalid numeric {}", quote(text)))
    }
}

/// `-?digits(.digits)?([eE][+-]?digits)?`.
fn is_decimal(text: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let s = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => digits(int) && digits(frac),
        None => digits(mantissa),
    };
    let exponent_ok = exponent
        .is_none_or(|e| digits(e.strip_prefix('+').or_else(|| e.strip_prefix('-')).unwrap_or(e)));
    mantissa_ok && exponent_ok
}

/// Decodes `bytea` in the hex (`\x…`) or the escape output format.
fn bytea(text: &str) -> Result<Vec<u8>, String> {
    if let Some(hex) = text.strip_prefix("\\x") {
        let bytes = hex.as_bytes();
        if bytes.len() % 2 != 0 {
            return Err(format!("invalid bytea: odd number of hex digits in {}", quote(text)));
        }
        let nibble = |b: u8| match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        };
        return bytes
            .chunks_exact(2)
            .map(|pair| match (nibble(pair[0]), nibble(pair[1])) {
                (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
                _ => Err(format!("invalid bytea: bad hex digit in {}", quote(text))),
            })
            .collect();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
        } else if bytes.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            match bytes.get(i + 1..i + 4) {
                Some([a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7']) => {
                    out.push((a - b'0') << 6 | (b - b'0') << 3 | (c - b'0'));
                    i += 4;
                }
                _ => return Err(format!("invalid bytea escape in {}", quote(text))),
            }
        }
    }
    Ok(out)
}

/// Rewrites an ISO-DateStyle timestamp as RFC 3339 (see the module docs).
fn timestamp(text: &str, with_zone: bool) -> Result<Value, String> {
    let unchanged = || Ok(Value::String(text.to_owned()));
    if matches!(text, "infinity" | "-infinity") {
        return unchanged();
    }
    let what = if with_zone { "timestamptz" } else { "timestamp" };
    let bad = |why: &str| {
        Err(format!("invalid {what} {} ({why}; the session must use DateStyle ISO)", quote(text)))
    };
    let (body, bc) = match text.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (text, false),
    };
    let Some((date, rest)) = body.split_once(' ') else {
        return bad("no space between date and time");
    };
    let Some(ymd) = parse_date(date) else {
        return bad("date is not YYYY-MM-DD");
    };
    // Split time from offset: the offset starts at the first sign.
    let (time, offset) = match rest.find(['+', '-']) {
        Some(i) if with_zone => (&rest[..i], Some(&rest[i..])),
        Some(_) => return bad("unexpected offset"),
        None if with_zone => return bad("no UTC offset"),
        None => (rest, None),
    };
    let Some(hms) = parse_time(time) else {
        return bad("time is not HH:MM:SS[.ffffff]");
    };
    let offset_secs = match offset.map(parse_offset) {
        Some(Some(secs)) => Some(secs),
        Some(None) => return bad("offset is not ±HH[:MM[:SS]]"),
        None => None,
    };
    // RFC 3339 has no BC and four-digit years only.
    if bc || date.len() != 10 {
        return unchanged();
    }
    let Some(offset_secs) = offset_secs else {
        return Ok(Value::String(format!("{date}T{time}")));
    };
    if offset_secs % 60 == 0 {
        let sign = if offset_secs < 0 { '-' } else { '+' };
        let minutes = offset_secs.abs() / 60;
        return Ok(Value::String(format!(
            "{date}T{time}{sign}{:02}:{:02}",
            minutes / 60,
            minutes % 60
        )));
    }
    // An offset with seconds: shift the instant to UTC.
    let (y, m, d) = ymd;
    let (hh, mm, ss) = hms;
    let secs = days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss - offset_secs;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let tod = secs.rem_euclid(86_400);
    if !(1..=9999).contains(&y) {
        return unchanged();
    }
    let fraction = time.get(8..).unwrap_or("");
    Ok(Value::String(format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{fraction}+00:00",
        tod / 3600,
        tod / 60 % 60,
        tod % 60
    )))
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `Y…Y-MM-DD` with at least four year digits → (year, month, day).
fn parse_date(date: &str) -> Option<(i64, i64, i64)> {
    let mut parts = date.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() < 4 || y.len() > 6 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    if !(all_digits(y) && all_digits(m) && all_digits(d)) {
        return None;
    }
    let (y, m, d) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    ((1..=12).contains(&m) && (1..=31).contains(&d)).then_some((y, m, d))
}

/// `HH:MM:SS[.f…]` → (hours, minutes, whole seconds).
fn parse_time(time: &str) -> Option<(i64, i64, i64)> {
    let (whole, fraction) = match time.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (time, None),
    };
    if fraction.is_some_and(|f| !all_digits(f)) {
        return None;
    }
    let b = whole.as_bytes();
    if b.len() != 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let two = |s: &str| if all_digits(s) { s.parse::<i64>().ok() } else { None };
    let (h, m, s) = (two(whole.get(0..2)?)?, two(whole.get(3..5)?)?, two(whole.get(6..8)?)?);
    (h <= 24 && m <= 59 && s <= 60).then_some((h, m, s))
}

/// `±HH[:MM[:SS]]` → seconds east of UTC.
fn parse_offset(offset: &str) -> Option<i64> {
    let (sign, rest) = match offset.as_bytes().first()? {
        b'+' => (1, &offset[1..]),
        b'-' => (-1, &offset[1..]),
        _ => return None,
    };
    let mut secs = 0;
    let mut count = 0;
    for (i, part) in rest.split(':').enumerate() {
        if i > 2 || part.len() != 2 || !all_digits(part) {
            return None;
        }
        let n: i64 = part.parse().ok()?;
        if i > 0 && n > 59 {
            return None;
        }
        secs = secs * 60 + n;
        count = i + 1;
    }
    // Pad to seconds: `+05` is 5 hours, `+05:30` 5.5 hours.
    for _ in count..3 {
        secs *= 60;
    }
    Some(sign * secs)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parser of the array literal format (`array_out`), converting elements as it goes.
struct ArrayParser<'a> {
    catalog: &'a TypeCatalog,
    element: u32,
    delimiter: char,
    text: &'a str,
    /// Byte offset; always on a character boundary.
    pos: usize,
    /// Type nesting depth of the array itself.
    depth: usize,
}

/// Whitespace as the array parser (`scanner_isspace`) sees it.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

impl ArrayParser<'_> {
    fn peek(&self) -> Option<char> {
        self.text.get(self.pos..).and_then(|rest| rest.chars().next())
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(is_space) {
            self.bump();
        }
    }

    fn expect(&mut self, want: char) -> Result<(), String> {
        match self.bump() {
            Some(c) if c == want => Ok(()),
            Some(c) => {
                Err(format!("expected `{want}` at byte {}, found `{c}`", self.pos - c.len_utf8()))
            }
            None => Err(format!("expected `{want}`, found the end")),
        }
    }

    fn parse(mut self) -> Result<Value, String> {
        self.skip_space();
        if self.peek() == Some('[') {
            self.skip_dimensions()?;
        }
        self.expect('{')?;
        let value = self.parse_array(1)?;
        self.skip_space();
        match self.peek() {
            None => Ok(value),
            Some(_) => Err(format!("unexpected text after the closing `}}` at byte {}", self.pos)),
        }
    }

    /// `[lo:hi][lo:hi]…=`: bounds are dropped (JSON arrays start at 0 anyway).
    fn skip_dimensions(&mut self) -> Result<(), String> {
        let mut dims = 0;
        while self.peek() == Some('[') {
            dims += 1;
            if dims > DEPTH_MAX {
                return Err("too many dimensions".into());
            }
            self.bump();
            self.bound()?;
            if self.peek() == Some(':') {
                self.bump();
                self.bound()?;
            }
            self.expect(']')?;
            self.skip_space();
        }
        self.expect('=')?;
        self.skip_space();
        Ok(())
    }

    fn bound(&mut self) -> Result<(), String> {
        self.skip_space();
        if matches!(self.peek(), Some('+' | '-')) {
            self.bump();
        }
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.bump();
        }
        if self.pos == start {
            return Err(format!("bad dimension bound at byte {start}"));
        }
        self.skip_space();
        Ok(())
    }

    /// After `{`: elements or sub-arrays up to the matching `}`.
    fn parse_array(&mut self, nesting: usize) -> Result<Value, String> {
        if nesting > DEPTH_MAX {
            return Err(format!("more than {DEPTH_MAX} nested dimensions"));
        }
        let mut items = Vec::new();
        let mut sub_arrays: Option<bool> = None;
        self.skip_space();
        if self.peek() == Some('}') {
            self.bump();
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_space();
            let start = self.pos;
            let is_sub = self.peek() == Some('{');
            if *sub_arrays.get_or_insert(is_sub) != is_sub {
                return Err(format!("mixed sub-arrays and scalars at byte {start}"));
            }
            if is_sub {
                self.bump();
                items.push(self.parse_array(nesting + 1)?);
            } else {
                let index = items.len();
                let value = match self.element()? {
                    None => Value::Null,
                    Some(text) => convert(self.catalog, self.element, &text, self.depth + 1)
                        .map_err(|e| format!("element {index} (byte {start}): {e}"))?,
                };
                items.push(value);
            }
            self.skip_space();
            match self.bump() {
                Some('}') => return Ok(Value::Array(items)),
                Some(c) if c == self.delimiter => {}
                Some(c) => {
                    return Err(format!(
                        "expected `{}` or `}}` at byte {}, found `{c}`",
                        self.delimiter,
                        self.pos - c.len_utf8()
                    ))
                }
                None => return Err("unterminated array: missing `}`".into()),
            }
        }
    }

    /// One element's text; `None` for an unquoted `NULL`.
    fn element(&mut self) -> Result<Option<String>, String> {
        let start = self.pos;
        let mut out = String::new();
        if self.peek() == Some('"') {
            self.bump();
            loop {
                match self.bump() {
                    None => return Err(format!("unterminated quoted element at byte {start}")),
                    Some('\\') => match self.bump() {
                        Some(c) => out.push(c),
                        None => {
                            return Err(format!("dangling backslash in element at byte {start}"))
                        }
                    },
                    Some('"') => return Ok(Some(out)),
                    Some(c) => out.push(c),
                }
            }
        }
        // Unquoted: up to the delimiter or `}`; backslash escapes; surrounding space trimmed.
        let mut escaped = false;
        let mut kept = 0; // length of `out` up to its last escaped or non-space character
        loop {
            match self.peek() {
                None => return Err(format!("unterminated element at byte {start}")),
                Some(c) if c == self.delimiter || c == '}' => break,
                Some(c @ ('{' | '"')) => {
                    return Err(format!(
                        "unexpected `{c}` in unquoted element at byte {}",
                        self.pos
                    ))
                }
                Some('\\') => {
                    self.bump();
                    match self.bump() {
                        Some(c) => out.push(c),
                        None => {
                            return Err(format!("dangling backslash in element at byte {start}"))
                        }
                    }
                    escaped = true;
                    kept = out.len();
                }
                Some(c) => {
                    self.bump();
                    out.push(c);
                    if !is_space(c) {
                        kept = out.len();
                    }
                }
            }
        }
        out.truncate(kept);
        if out.is_empty() && !escaped {
            return Err(format!("empty unquoted element at byte {start}"));
        }
        if !escaped && out.eq_ignore_ascii_case("NULL") {
            return Ok(None);
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::json;

    use super::*;

    fn conv(oid: u32, text: &str) -> Result<Value, String> {
        text_to_json(&TypeCatalog::builtin(), oid, text)
    }

    fn ok(oid: u32, text: &str) -> Value {
        conv(oid, text).unwrap_or_else(|e| panic!("{oid} {text:?}: {e}"))
    }

    #[test]
    fn integers_are_exact() {
        assert_eq!(ok(20, "9223372036854775807"), json!(9_223_372_036_854_775_807_i64));
        assert_eq!(ok(20, "-9223372036854775808"), json!(i64::MIN));
        assert_eq!(ok(21, "-32768"), json!(-32768));
        assert_eq!(ok(26, "4294967295"), json!(4_294_967_295_u64));
        assert_eq!(ok(22, "1 2 3"), json!([1, 2, 3]));
        assert_eq!(ok(30, ""), json!([]));
        for bad in ["", "1.5", "+1", " 1", "9223372036854775808", "x"] {
            let e = conv(20, bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn floats_numbers_but_special_values_strings() {
        // The text Postgres printed is carried as the number, digit for digit.
        for s in ["1.5", "1e+301", "0.1", "-0", "3.8479485277079987e-69", "2.2250738585072014e-308"]
        {
            assert_eq!(ok(701, s).to_string(), s);
        }
        assert_eq!(ok(700, "3.4028235e+38").to_string(), "3.4028235e+38");
        assert_eq!(ok(700, "1e-45").to_string(), "1e-45");
        for s in ["NaN", "Infinity", "-Infinity"] {
            assert_eq!(ok(701, s), json!(s));
            assert_eq!(ok(700, s), json!(s));
        }
        for bad in ["nan", "inf", "infinity", "1e999", "", "1,5"] {
            assert!(conv(701, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numeric_keeps_exact_text() {
        for s in ["12345678901234567890.123456789", "-0.000", "0", "NaN", "Infinity", "-Infinity"] {
            assert_eq!(ok(1700, s), json!(s));
        }
        for bad in ["", "-", "1.", ".5", "1.2.3", "abc", "1e", "--1"] {
            assert!(conv(1700, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bools_strings_json() {
        assert_eq!(ok(16, "t"), json!(true));
        assert_eq!(ok(16, "false"), json!(false));
        assert!(conv(16, "yes").is_err());
        assert_eq!(ok(25, "héllo \"x\""), json!("héllo \"x\""));
        assert_eq!(ok(99_999, "whatever"), json!("whatever"));
        // json and jsonb travel as their exact text, so JSON null is not SQL NULL.
        assert_eq!(ok(3802, r#"{"a": [1, {"b": null}]}"#), json!(r#"{"a": [1, {"b": null}]}"#));
        assert_eq!(ok(114, "null"), json!("null"));
        assert_eq!(ok(114, r#"{"a":1,"a":2}"#), json!(r#"{"a":1,"a":2}"#));
    }

    #[test]
    fn timestamps_become_rfc3339() {
        let cases = [
            ("2026-11-25 11:56:22.123456+00", "2026-11-25T11:56:22.123456+00:00"),
            ("2026-11-25 11:56:22+05:30", "2026-11-25T11:56:22+05:30"),
            ("2026-11-25 11:56:22.5-08", "2026-11-25T11:56:22.5-08:00"),
            ("2026-11-25 11:56:22-09:30", "2026-11-25T11:56:22-09:30"),
            // Local mean time: shifted to UTC (05:53:28 east).
            ("1800-01-01 05:53:28+05:53:28", "1800-01-01T00:00:00+00:00"),
            ("1800-01-01 00:00:00.25+05:53:28", "1799-12-31T18:06:32.25+00:00"),
            ("1883-11-18 11:00:00-07:52:58", "1883-11-18T18:52:58+00:00"),
            ("infinity", "infinity"),
            ("-infinity", "-infinity"),
            ("0044-03-15 17:53:28+05:53:28 BC", "0044-03-15 17:53:28+05:53:28 BC"),
            ("294277-01-01 05:29:59+05:30", "294277-01-01 05:29:59+05:30"),
        ];
        for (pg, want) in cases {
            assert_eq!(ok(1184, pg), json!(want), "{pg}");
        }
        assert_eq!(ok(1114, "2026-11-25 11:56:22.5"), json!("2026-11-25T11:56:22.5"));
        assert_eq!(ok(1114, "0044-03-15 12:00:00 BC"), json!("0044-03-15 12:00:00 BC"));
        assert_eq!(ok(1114, "10000-01-01 00:00:00"), json!("10000-01-01 00:00:00"));
        for bad in [
            "Wed Nov 25 11:56:22.5 2026 PST",
            "2026-11-25",
            "2026-11-25 11:56:22",
            "2026-13-25 11:56:22+00",
            "2026-11-25 11:56:22+5",
            "2026-11-25 11:56:22.+00",
            "2026-11-25T11:56:22+00",
            "26-11-25 11:56:22+00",
        ] {
            let e = conv(1184, bad).unwrap_err();
            assert!(e.contains("DateStyle"), "{e}");
        }
        assert!(conv(1114, "2026-11-25 11:56:22+00").is_err());
    }

    #[test]
    fn civil_round_trip() {
        for days in (-800_000..3_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn bytea_to_base64() {
        assert_eq!(ok(17, "\\x"), json!(""));
        assert_eq!(ok(17, "\\x00ff0a"), json!("AP8K"));
        assert_eq!(ok(17, "\\x00FF0A"), json!("AP8K"));
        // Escape format: `\000`, `\\`, printable as is.
        assert_eq!(ok(17, "\\000\\377\\\\a"), json!("AP9cYQ=="));
        for bad in ["\\x0", "\\xzz", "\\9", "\\", "\\x00é"] {
            assert!(conv(17, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn arrays() {
        assert_eq!(ok(1007, "{1,2,3}"), json!([1, 2, 3]));
        assert_eq!(ok(1007, "{}"), json!([]));
        assert_eq!(ok(1007, "{{1,2},{3,4}}"), json!([[1, 2], [3, 4]]));
        // Bounds that are not the default travel as the exact text (still checked).
        assert_eq!(ok(1007, "[0:1]={1,2}"), json!("[0:1]={1,2}"));
        assert_eq!(ok(1007, "[1:1][-2:-1]={{3,4}}"), json!("[1:1][-2:-1]={{3,4}}"));
        assert_eq!(ok(1007, "{{NULL},{1}}"), json!([[null], [1]]));
        assert_eq!(ok(1007, " { 1 , null ,3 } "), json!([1, null, 3]));
        assert_eq!(
            ok(1009, r#"{"a b",NULL,"c\"d","NULL","","x\\y"," lead","a,b","{","null"}"#),
            json!(["a b", null, "c\"d", "NULL", "", "x\\y", " lead", "a,b", "{", "null"])
        );
        assert_eq!(ok(1009, r"{a\,b,\NULL,a\ ,é}"), json!(["a,b", "NULL", "a ", "é"]));
        assert_eq!(ok(1231, "{1.50,NaN,NULL}"), json!(["1.50", "NaN", null]));
        assert_eq!(ok(1000, "{t,f}"), json!([true, false]));
        assert_eq!(ok(1001, r#"{"\\x00ff",NULL}"#), json!(["AP8=", null]));
        assert_eq!(ok(3807, r#"{"{\"a\": 1}","[1, 2]"}"#), json!([r#"{"a": 1}"#, "[1, 2]"]));
        assert_eq!(
            ok(1185, r#"{"2026-11-25 11:56:22+05:30",infinity}"#),
            json!(["2026-11-25T11:56:22+05:30", "infinity"])
        );
        // The element type's delimiter.
        let mut catalog = TypeCatalog::builtin();
        catalog.types.insert(
            1020,
            TypeInfo {
                oid: 1020,
                name: "_box".into(),
                kind: TypeKind::Array { element: 603, delimiter: ';' },
                category: 'A',
            },
        );
        assert_eq!(
            text_to_json(&catalog, 1020, "{(1,1),(0,0);(2,2),(1,1)}").unwrap(),
            json!(["(1,1),(0,0)", "(2,2),(1,1)"])
        );
        for bad in [
            "", "{", "}", "{1,2", "{1,,2}", "{1}x", "{{1},2}", "{1,{2}}", "[0:1]{1}", "[x]={1}",
            "{\"a}", "{a\"b}", "{a{}", "{1\\", "{\"\\", "{1}}", "{,}", "1,2",
        ] {
            let e = conv(1009, bad).unwrap_err();
            assert!(e.starts_with("array "), "{bad}: {e}");
        }
        let e = conv(1007, "{1,x}").unwrap_err();
        assert!(e.contains("element 1") && e.contains("\"x\""), "{e}");
    }

    #[test]
    fn domains_and_cycles() {
        let mut catalog = TypeCatalog::builtin();
        let domain = |oid, base| TypeInfo {
            oid,
            name: format!("d{oid}"),
            kind: TypeKind::Domain { base },
            category: 'N',
        };
        catalog.types.insert(50_000, domain(50_000, 23));
        catalog.types.insert(50_001, domain(50_001, 50_002));
        catalog.types.insert(50_002, domain(50_002, 50_001));
        assert_eq!(text_to_json(&catalog, 50_000, "7").unwrap(), json!(7));
        assert!(text_to_json(&catalog, 50_001, "7").unwrap_err().contains("nests"));
        catalog.types.insert(50_003, domain(50_003, 3802));
        assert!(is_json(&catalog, 50_003) && is_json(&catalog, 114) && !is_json(&catalog, 50_000));
        assert!(!is_json(&catalog, 50_001), "a cyclic domain is not json");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("{}{}", "{".repeat(100_000), "}".repeat(100_000));
        assert!(conv(1007, &deep).unwrap_err().contains("nested"));
        let dims = format!("{}={{1}}", "[1:1]".repeat(1000));
        assert!(conv(1007, &dims).is_err());
    }

    #[test]
    fn long_input_is_quoted_bounded() {
        let long = "x".repeat(10_000);
        let e = conv(20, &long).unwrap_err();
        assert!(e.len() < 300, "{e}");
        let e = conv(1007, &format!("{{{long}}}")).unwrap_err();
        assert!(e.len() < 600, "{e}");
    }

    #[test]
    fn never_panics() {
        let pieces = [
            "",
            "{",
            "}",
            "\"",
            "\\",
            ",",
            ";",
            "[",
            "]",
            ":",
            "=",
            "-",
            "+",
            "NULL",
            "null",
            " ",
            "1",
            "0:1",
            "x",
            "é",
            "🦀",
            "\\x",
            "\\0",
            "t",
            "f",
            ".",
            "e",
            "BC",
            " BC",
            "2026-11-25",
            " 11:56:22",
            "+05",
            ":30",
            ":28",
            "NaN",
            "Infinity",
            "\u{0}",
            "\n",
        ];
        let oids = [
            16, 17, 18, 20, 21, 22, 23, 25, 26, 30, 114, 700, 701, 1000, 1001, 1007, 1009, 1016,
            1021, 1114, 1115, 1184, 1185, 1231, 1700, 3802, 3807, 12_345,
        ];
        let catalog = TypeCatalog::builtin();
        // Deterministic pseudo-random concatenations of tricky pieces.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = next() % 12;
            let text: String =
                (0..len).map(|_| pieces[(next() % pieces.len() as u64) as usize]).collect();
            for &oid in &oids {
                let _ = text_to_json(&catalog, oid, &text);
            }
        }
        // Every prefix of some valid values, cut at every character boundary.
        for valid in [
            r#"[0:1]={"a\"b",NULL}"#,
            "2026-11-25 11:56:22.123456+05:53:28 BC",
            "{{1,2},{3,4}}",
            "\\x00ff",
        ] {
            for (i, _) in valid.char_indices() {
                for &oid in &oids {
                    let _ = text_to_json(&catalog, oid, &valid[..i]);
                }
            }
        }
    }
}

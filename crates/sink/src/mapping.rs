//! Mappings: the anti-corruption layer that turns a publisher's events into a consumer's rows.
//!
//! Each `[[sink.mapping]]` chooses events (type patterns and an optional jq `filter`) and says
//! how they become one row operation: the table, the key columns, the columns (each a jq
//! expression over the whole CloudEvent, or one `row` expression yielding an object) and the
//! row's version. Expressions are jq, run by jaq — users write a language they already know, and
//! we do not invent one.
//!
//! Invariants:
//! - every expression is compiled when the sink starts; a syntax error stops the start with the
//!   mapping and expression named, never a runtime surprise;
//! - a mapping yields exactly one value per expression: none or several is an error for that
//!   event (it goes the retry/dead-letter way), never a guess;
//! - key values are non-null scalars, and versions are strings that order correctly as bytes
//!   (non-negative integers are zero-padded to 20 digits), because the targets compare them as
//!   text;
//! - an event mapped from its JSON text ([`Mapper::map_json`], the sink's path) gives exactly
//!   what the same event parsed into a `Value` gives ([`Mapper::map`]), for any valid JSON text.
//!   From text, a plain path reads only what it names: the top-level members are split once,
//!   values left as text, and only the object a path descends into and the value it ends at are
//!   parsed (a repeated member counts by its last occurrence, as in a parsed `Value`). The split
//!   follows structure only (strings, escapes, nesting), as the text is a stored event checked
//!   when it was produced; what a path ends at is parsed, so checked, when read. Parsing whole
//!   events into `Value` trees was the largest part of a table sink's CPU, and serde's checking
//!   skip over every member most of what was left.

use std::borrow::Cow;
use std::collections::BTreeMap;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, unwrap_valr, Compiler, Ctx, Vars};
use jaq_json::Val;
use serde_json::Value;

use crate::config::{MappingConfig, OpKind};
use crate::error::{Result, SinkError};

/// Largest value of one expression's output, in bytes of JSON; bounds what one event can make a
/// mapping allocate.
pub const EXPRESSION_OUTPUT_BYTES_MAX: usize = 1 << 20;

/// A compiled jq expression.
struct Jq {
    source: String,
    filter: jaq_core::Filter<data::JustLut<Val>>,
    /// For a plain path (`.`, `.data.after.city`): its names, walked on the JSON directly — the
    /// common case, and several times cheaper than converting the event for jaq.
    path: Option<Vec<String>>,
}

/// An event being mapped: parsed, or its JSON text with its top-level members once split; and
/// its jaq value once an expression needed it.
struct Input<'a> {
    event: Source<'a>,
    val: Option<Val>,
}

enum Source<'a> {
    Value(&'a Value),
    /// `top`: the event's members once split; `nested`: the members of each object a path
    /// descended into, by its text (several columns usually read one object, `.data.after`).
    Text {
        text: &'a str,
        top: Option<Members<'a>>,
        nested: Vec<(&'a str, Members<'a>)>,
    },
}

/// An object's members, values as text (without surrounding whitespace), in order.
type Members<'a> = Vec<(Cow<'a, str>, &'a str)>;

impl<'a> Input<'a> {
    fn value(event: &'a Value) -> Self {
        Self { event: Source::Value(event), val: None }
    }

    fn text(text: &'a str) -> Self {
        Self { event: Source::Text { text, top: None, nested: Vec::new() }, val: None }
    }

    fn val(&mut self) -> std::result::Result<&Val, String> {
        if self.val.is_none() {
            self.val = Some(match &self.event {
                Source::Value(v) => to_val(v)?,
                Source::Text { text, .. } => jq_val(text)?,
            });
        }
        self.val.as_ref().ok_or_else(|| "event conversion failed".to_string())
    }

    /// The value at a plain path, with jq's semantics: a missing field (or a field of null) is
    /// null; indexing anything else than an object is an error. `source` names the expression.
    fn path<S: AsRef<str>>(
        &mut self,
        names: &[S],
        source: &str,
    ) -> std::result::Result<Value, String> {
        let cannot = |kind: &str, name: &str| {
            format!("`{source}` failed: cannot index {kind} with \"{name}\"")
        };
        match &mut self.event {
            Source::Value(event) => {
                let mut at: &Value = event;
                for name in names {
                    let name = name.as_ref();
                    at = match at {
                        Value::Object(m) => m.get(name).unwrap_or(&Value::Null),
                        Value::Null => &Value::Null,
                        other => return Err(cannot(driftless_core::json_kind(other), name)),
                    };
                }
                Ok(at.clone())
            }
            Source::Text { text, top, nested } => {
                let Some((first, rest)) = names.split_first() else {
                    return serde_json::from_str(text)
                        .map_err(|e| format!("event is not JSON: {e}"));
                };
                if top.is_none() {
                    *top = Some(members(text)?);
                }
                let mut at = top.as_ref().and_then(|m| last_member(m, first.as_ref()));
                for name in rest {
                    let name = name.as_ref();
                    let Some(t) = at else { return Ok(Value::Null) };
                    at = match t.as_bytes().first() {
                        Some(b'{') => {
                            // By address: the same object text, not merely equal text.
                            let i = match nested.iter().position(|(o, _)| std::ptr::eq(*o, t)) {
                                Some(i) => i,
                                None => {
                                    nested.push((t, members(t)?));
                                    nested.len() - 1
                                }
                            };
                            last_member(&nested[i].1, name)
                        }
                        Some(b'n') => None,
                        _ => return Err(cannot(text_kind(t), name)),
                    };
                }
                match at {
                    None => Ok(Value::Null),
                    Some(raw) => {
                        serde_json::from_str(raw).map_err(|e| format!("event is not JSON: {e}"))
                    }
                }
            }
        }
    }

    /// A top-level attribute (`type`, `subject`, `sequence`), parsed; `None` when absent.
    fn attr(&mut self, name: &str) -> std::result::Result<Option<Value>, String> {
        match &self.event {
            Source::Value(event) => Ok(event.get(name).cloned()),
            Source::Text { .. } => {
                let v = self.path(&[name], name)?;
                Ok((!v.is_null()).then_some(v))
            }
        }
    }
}

/// The members of the JSON object `text`, values left as text, found by its structure alone:
/// strings (with their escapes) and nesting are followed, scalars are not read. The text is a
/// stored event, checked as a whole when it was produced, and each value a mapping uses is parsed
/// (checked) when it is read; serde's checking skip over every value was most of a mapping's CPU.
/// Malformed structure is an error, never a panic; a key with escapes is unescaped by serde.
fn members(text: &str) -> std::result::Result<Members<'_>, String> {
    let b = text.as_bytes();
    let broken = |at: usize, what: &str| format!("event is not JSON: {what} at byte {at}");
    // An event has a dozen or so members; growing from empty took a fifth of the split.
    let mut out = Vec::with_capacity(16);
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return Err(broken(i, "expected an object"));
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Ok(out);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return Err(broken(i, "expected a member name"));
        }
        let (end, escaped) = string_end(b, i).ok_or_else(|| broken(i, "unterminated string"))?;
        let key = if escaped {
            let raw = text.get(i..end).ok_or_else(|| broken(i, "bad member name"))?;
            Cow::Owned(serde_json::from_str::<String>(raw).map_err(|e| broken(i, &e.to_string()))?)
        } else {
            Cow::Borrowed(text.get(i + 1..end - 1).ok_or_else(|| broken(i, "bad member name"))?)
        };
        i = skip_ws(b, end);
        if b.get(i) != Some(&b':') {
            return Err(broken(i, "expected ':'"));
        }
        let start = skip_ws(b, i + 1);
        let end = value_end(b, start).ok_or_else(|| broken(start, "malformed value"))?;
        out.push((key, text.get(start..end).ok_or_else(|| broken(start, "malformed value"))?));
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Ok(out),
            _ => return Err(broken(i, "expected ',' or '}'")),
        }
    }
}

/// The first byte at or after `i` that is not JSON whitespace.
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// For the string opening at `b[i]` (a quote): one past its closing quote, and whether it holds
/// an escape. `None` if it does not end.
fn string_end(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        // memchr scans many bytes at a time; strings are most of an event's text.
        let k = j + memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        if b[k] == b'"' {
            return Some((k + 1, escaped));
        }
        escaped = true;
        j = k + 2;
    }
}

/// One past the end of the value starting at `b[i]`; `None` if it does not end (or does not
/// start: an empty scalar).
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i).map(|(end, _)| end),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                j += b
                    .get(j..)?
                    .iter()
                    .position(|c| matches!(c, b'"' | b'{' | b'}' | b'[' | b']'))?;
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?.0;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    _ => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                }
                j += 1;
            }
        }
        _ => {
            let rest = b.get(i..)?;
            let len = rest
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(rest.len());
            (len > 0).then_some(i + len)
        }
    }
}

/// The last member called `name` (as a parsed object keeps it).
fn last_member<'a>(members: &Members<'a>, name: &str) -> Option<&'a str> {
    members.iter().rev().find(|(k, _)| k == name).map(|(_, v)| *v)
}

/// The kind of the JSON value `text` starts, as [`driftless_core::json_kind`] names it.
fn text_kind(text: &str) -> &'static str {
    match text.as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'{') => "an object",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// The names of a plain path expression (`.` → none, `.a.b` → `a`, `b`), or `None`.
fn plain_path(source: &str) -> Option<Vec<String>> {
    let e = source.trim();
    if e == "." {
        return Some(Vec::new());
    }
    let rest = e.strip_prefix('.')?;
    let names: Vec<String> = rest.split('.').map(str::to_string).collect();
    let ok = names.iter().all(|n| {
        !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !n.as_bytes()[0].is_ascii_digit()
    });
    ok.then_some(names)
}

impl std::fmt::Debug for Jq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jq({:?})", self.source)
    }
}

impl Jq {
    fn compile(source: &str) -> std::result::Result<Self, String> {
        let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
        let funs = jaq_core::funs().chain(jaq_std::funs()).chain(jaq_json::funs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader.load(&arena, File { code: source, path: () }).map_err(|errs| {
            format!("cannot parse jq expression `{source}`: {}", load_errors(&errs))
        })?;
        let filter = Compiler::default().with_funs(funs).compile(modules).map_err(|errs| {
            format!("cannot compile jq expression `{source}`: {}", compile_errors(&errs))
        })?;
        Ok(Self { source: source.to_string(), filter, path: plain_path(source) })
    }

    /// Runs the expression on `input`; it must yield exactly one value.
    fn one(&self, input: &mut Input<'_>) -> std::result::Result<Value, String> {
        if let Some(path) = &self.path {
            return input.path(path, &self.source);
        }
        let input = input.val()?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut out = self.filter.id.run((ctx, input.clone())).map(unwrap_valr);
        let first = match out.next() {
            None => return Err(format!("`{}` yielded no value", self.source)),
            Some(Err(e)) => return Err(format!("`{}` failed: {e}", self.source)),
            Some(Ok(v)) => v,
        };
        if out.next().is_some() {
            return Err(format!("`{}` yielded several values; a column takes one", self.source));
        }
        let text = first.to_string();
        if text.len() > EXPRESSION_OUTPUT_BYTES_MAX {
            return Err(format!(
                "`{}` yielded {} bytes, over the {EXPRESSION_OUTPUT_BYTES_MAX}-byte limit",
                self.source,
                text.len()
            ));
        }
        serde_json::from_str(&text)
            .map_err(|e| format!("`{}` yielded a value that is not JSON ({e})", self.source))
    }
}

/// Most reports one jq error message lists (a config holds short expressions).
const JQ_REPORTS_MAX: usize = 3;

/// Where `at` (a slice of `code` that an error points at) starts in `code`: a 1-based column in
/// characters, and what is there (`end of expression` when nothing is).
fn position(code: &str, at: &str) -> String {
    let offset = (at.as_ptr() as usize).checked_sub(code.as_ptr() as usize);
    let column = offset.and_then(|o| code.get(..o)).map(|before| before.chars().count() + 1);
    let found: String = at.chars().take(12).collect();
    let found = if found.trim().is_empty() {
        "end of expression".to_string()
    } else {
        format!("`{}`", found.trim_end())
    };
    match column {
        Some(column) => format!("at column {column} ({found})"),
        None => format!("near {found}"),
    }
}

/// A parse error of jaq as a sentence: what was expected, at which column, what was found.
fn load_errors(errs: &jaq_core::load::Errors<&str, ()>) -> String {
    use jaq_core::load::Error;
    let mut reports = Vec::new();
    for (file, error) in errs {
        match error {
            Error::Io(items) => reports
                .extend(items.iter().map(|(name, why)| format!("cannot load `{name}`: {why}"))),
            Error::Lex(items) => reports.extend(items.iter().map(|(expect, at)| {
                format!("expected {} {}", expect.as_str(), position(file.code, at))
            })),
            Error::Parse(items) => reports.extend(items.iter().map(|(expect, at)| {
                format!("expected {} {}", expect.as_str(), position(file.code, at))
            })),
        }
    }
    joined(reports)
}

/// A compile error of jaq (an undefined name) as a sentence naming it and its column.
fn compile_errors(errs: &jaq_core::compile::Errors<&str, ()>) -> String {
    let mut reports = Vec::new();
    for (file, items) in errs {
        reports.extend(items.iter().map(|(name, undefined)| {
            let arity = match undefined {
                jaq_core::compile::Undefined::Filter(arity) => format!("/{arity}"),
                _ => String::new(),
            };
            let kind = undefined.as_str();
            format!("undefined {kind} `{name}{arity}` {}", position(file.code, name))
        }));
    }
    joined(reports)
}

fn joined(mut reports: Vec<String>) -> String {
    if reports.is_empty() {
        return "no details given".to_string();
    }
    let more = reports.len().saturating_sub(JQ_REPORTS_MAX);
    reports.truncate(JQ_REPORTS_MAX);
    let mut text = reports.join("; ");
    if more > 0 {
        text.push_str(&format!("; and {more} more"));
    }
    text
}

/// One row operation produced by a mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct RowOp {
    /// Target table.
    pub table: String,
    /// Upsert or delete.
    pub op: OpKind,
    /// Key column values, in the mapping's key order.
    pub key: Vec<(String, Value)>,
    /// Columns to write (key columns included); for a delete, the key columns only.
    pub columns: BTreeMap<String, Value>,
    /// The version guarding the row (bytewise-ordered text).
    pub version: String,
    /// The key as JSON text (`[v1, v2]`): how batches collapse rows and tombstones store keys.
    /// Rendered once here; the apply path reads it several times per row.
    pub key_text: String,
    /// Columns the mapping writes whose values the event does not carry (a CDC change's
    /// unchanged TOASTed values, `data.unchanged`): an existing row keeps its own, and a new row
    /// must carry them from `moved_from` or fail — never NULL.
    pub unchanged: Vec<String>,
    /// For a key change's insert (`data.moved_from`): the old key's values, in key order.
    pub moved_from: Option<Vec<Value>>,
    /// For a key change's delete (`data.moved_to`): the deleted row's values are kept (in its
    /// tombstone) for the insert to carry its unsent values from, if it comes later.
    pub keep_row: bool,
}

impl RowOp {
    /// An operation on `key` of `table`.
    pub fn new(
        table: String,
        op: OpKind,
        key: Vec<(String, Value)>,
        columns: BTreeMap<String, Value>,
        version: String,
    ) -> Self {
        let key_text = Value::Array(key.iter().map(|(_, v)| v.clone()).collect()).to_string();
        Self {
            table,
            op,
            key,
            columns,
            version,
            key_text,
            unchanged: Vec::new(),
            moved_from: None,
            keep_row: false,
        }
    }
}

/// What [`Mapper::map_json`] makes of one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// The row operations (none when no mapping takes the event).
    pub ops: Vec<RowOp>,
    /// The event's `time` attribute, if it has one.
    pub time: Option<String>,
}

#[derive(Debug)]
struct Compiled {
    index: usize,
    types: Vec<String>,
    filter: Option<Jq>,
    table: String,
    key: Vec<String>,
    op: OpKind,
    columns: Vec<(String, Jq)>,
    row: Option<Jq>,
    version: Option<Jq>,
}

/// A sink's compiled mappings.
#[derive(Debug)]
pub struct Mapper {
    mappings: Vec<Compiled>,
}

/// `*` matches any run of characters; everything else literally.
pub fn type_matches(pattern: &str, ty: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == ty;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !ty.starts_with(first) || !ty[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &ty[first.len()..ty.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Turns a version value into bytewise-ordered text.
fn version_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => n.as_u64().map(|n| format!("{n:020}")),
        _ => None,
    }
}

impl Mapper {
    /// Compiles every mapping of sink `sink`; an error names the mapping and the expression.
    pub fn compile(sink: &str, configs: &[MappingConfig]) -> Result<Self> {
        let invalid = |field: String, reason: String| SinkError::Config {
            sink: sink.to_string(),
            field,
            reason,
        };
        let mut mappings = Vec::new();
        for (i, m) in configs.iter().enumerate() {
            let jq = |field: &str, src: &str| {
                Jq::compile(src).map_err(|e| invalid(format!("mapping[{i}].{field}"), e))
            };
            let filter = m.filter.as_deref().map(|f| jq("filter", f)).transpose()?;
            let row = m.row.as_deref().map(|f| jq("row", f)).transpose()?;
            let version = m.version.as_deref().map(|f| jq("version", f)).transpose()?;
            let mut columns = Vec::new();
            for (c, src) in &m.columns {
                columns.push((c.clone(), jq(&format!("columns.{c}"), src)?));
            }
            mappings.push(Compiled {
                index: i,
                types: m.types.clone(),
                filter,
                table: m.table.clone().unwrap_or_default(),
                key: m.key.clone(),
                op: m.op,
                columns,
                row,
                version,
            });
        }
        Ok(Self { mappings })
    }

    /// The tables the mappings write, each with the columns named in `columns` and `key`
    /// (a `row` expression's columns are known only per event).
    pub fn tables(&self) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
        let mut out: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
        for m in &self.mappings {
            let e = out.entry(m.table.clone()).or_insert_with(|| (m.key.clone(), Vec::new()));
            for (c, _) in &m.columns {
                if !e.1.contains(c) {
                    e.1.push(c.clone());
                }
            }
        }
        out
    }

    /// Whether some mapping takes events of this type (webhooks send only those).
    pub fn selects(&self, event: &Value) -> std::result::Result<bool, String> {
        if self.mappings.is_empty() {
            return Ok(true);
        }
        let mut input = Input::value(event);
        for m in &self.mappings {
            if self.takes(m, &mut input)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn takes(&self, m: &Compiled, input: &mut Input<'_>) -> std::result::Result<bool, String> {
        if !m.types.is_empty() {
            let ty = input.attr("type")?;
            let ty = ty.as_ref().and_then(Value::as_str).unwrap_or("");
            if !m.types.iter().any(|p| type_matches(p, ty)) {
                return Ok(false);
            }
        }
        match &m.filter {
            None => Ok(true),
            Some(f) => {
                match f.one(input).map_err(|e| format!("mapping[{}].filter: {e}", m.index))? {
                    Value::Bool(b) => Ok(b),
                    Value::Null => Ok(false),
                    other => Err(format!(
                        "mapping[{}].filter must yield true or false, not {}",
                        m.index,
                        driftless_core::json_kind(&other)
                    )),
                }
            }
        }
    }

    /// The row operations for one event (none when no mapping takes it). `offset` is the
    /// event's position in its partition, the version of last resort.
    pub fn map(&self, event: &Value, offset: u64) -> std::result::Result<Vec<RowOp>, String> {
        self.map_input(&mut Input::value(event), offset)
    }

    /// [`Mapper::map`] for an event given as its JSON text (as the log stores it), reading only
    /// what the mappings name (see the module's invariants); with the event's `time`, read from
    /// the same split of its members.
    pub fn map_json(&self, event: &str, offset: u64) -> std::result::Result<Mapped, String> {
        let mut input = Input::text(event);
        let ops = self.map_input(&mut input, offset)?;
        let time = match input.attr("time")? {
            Some(Value::String(t)) => Some(t),
            _ => None,
        };
        Ok(Mapped { ops, time })
    }

    fn map_input(
        &self,
        input: &mut Input<'_>,
        offset: u64,
    ) -> std::result::Result<Vec<RowOp>, String> {
        let mut ops = Vec::new();
        // Read once, and only when a mapping takes the event.
        let mut toast: Option<(Vec<String>, Value)> = None;
        for m in &self.mappings {
            if !self.takes(m, input)? {
                continue;
            }
            let at = |what: &str, e: String| format!("mapping[{}].{what}: {e}", m.index);
            if toast.is_none() {
                toast = Some(unsent_values(input)?);
            }
            let (unsent, moved_from) =
                toast.as_ref().map_or((&[][..], &Value::Null), |(u, m)| (u, m));
            let mut unchanged = Vec::new();
            let mut columns = BTreeMap::new();
            if let Some(row) = &m.row {
                match row.one(input).map_err(|e| at("row", e))? {
                    Value::Object(obj) => {
                        for (c, v) in obj {
                            if !crate::config::is_identifier(&c) {
                                return Err(at(
                                    "row",
                                    format!("field `{c}` is not a plain column name"),
                                ));
                            }
                            columns.insert(c, v);
                        }
                        // A row from the change's columns lacks exactly its unsent values.
                        unchanged
                            .extend(unsent.iter().filter(|u| !columns.contains_key(*u)).cloned());
                    }
                    other => {
                        return Err(at(
                            "row",
                            format!(
                                "must yield an object, not {}",
                                driftless_core::json_kind(&other)
                            ),
                        ))
                    }
                }
            }
            for (c, jq) in &m.columns {
                if !unsent.is_empty() {
                    match after_column(jq) {
                        Some(name) if unsent.iter().any(|u| u == name) => {
                            unchanged.push(c.clone());
                            continue;
                        }
                        Some(_) => {}
                        // An expression that may read an unsent value would compute from null.
                        None => {
                            if let Some(u) = unsent.iter().find(|u| jq.source.contains(u.as_str()))
                            {
                                return Err(at(
                                    &format!("columns.{c}"),
                                    format!(
                                        "the event does not carry `{u}` (an unchanged TOASTed \
                                         value), which `{}` may read; map it with a plain path \
                                         (`.data.after.{u}`) or set REPLICA IDENTITY FULL on the \
                                         source table",
                                        jq.source
                                    ),
                                ));
                            }
                        }
                    }
                }
                columns
                    .insert(c.clone(), jq.one(input).map_err(|e| at(&format!("columns.{c}"), e))?);
            }
            let mut key = Vec::new();
            for k in &m.key {
                let v = match columns.get(k) {
                    Some(v) => v.clone(),
                    // A delete mapping may name only the key: take it from a CDC change's typed
                    // key (`data.key`, as its upserts' `.data.after` holds it: so tombstones
                    // match them, and each column of a composite key gets its own value), else
                    // from the subject.
                    None if m.columns.is_empty() && m.row.is_none() => {
                        match input.path(&["data", "key", k.as_str()], ".data.key") {
                            Ok(v) if !v.is_null() => v,
                            _ => input.attr("subject")?.unwrap_or(Value::Null),
                        }
                    }
                    None => Value::Null,
                };
                if v.is_null() || v.is_object() || v.is_array() {
                    return Err(at(
                        "key",
                        format!(
                            "key column `{k}` must be a string, number or boolean, not {}",
                            driftless_core::json_kind(&v)
                        ),
                    ));
                }
                key.push((k.clone(), v));
            }
            if m.op == OpKind::Delete {
                columns = key.iter().cloned().collect();
            } else {
                for (k, v) in &key {
                    columns.insert(k.clone(), v.clone());
                }
            }
            let version = match &m.version {
                Some(jq) => {
                    let v = jq.one(input).map_err(|e| at("version", e))?;
                    version_text(&v).ok_or_else(|| {
                        at(
                            "version",
                            "must yield a non-empty string or a non-negative integer".into(),
                        )
                    })?
                }
                None => input
                    .attr("sequence")?
                    .as_ref()
                    .and_then(version_text)
                    .unwrap_or_else(|| format!("{offset:020}")),
            };
            let mut op = RowOp::new(m.table.clone(), m.op, key, columns, version);
            if m.op == OpKind::Delete {
                let moved_to = input.path(&["data", "moved_to"], ".data.moved_to");
                op.keep_row = moved_to.is_ok_and(|v| !v.is_null());
            }
            if m.op == OpKind::Upsert && !unchanged.is_empty() {
                // The old key in the projection's terms: each key column read from the moved
                // row's key the way the mapping reads it from `after`.
                op.moved_from = m
                    .key
                    .iter()
                    .map(|k| {
                        let source = match (&m.row, m.columns.iter().find(|(c, _)| c == k)) {
                            (_, Some((_, jq))) => after_column(jq)?,
                            (Some(_), None) => k.as_str(),
                            (None, None) => return None,
                        };
                        moved_from.get(source).filter(|v| !v.is_null()).cloned()
                    })
                    .collect();
                op.unchanged = unchanged;
            }
            ops.push(op);
        }
        Ok(ops)
    }
}

/// A CDC change's unsent TOAST values (`data.unchanged`, column names) and the key it moved
/// from (`data.moved_from`); nothing for any other event.
fn unsent_values(input: &mut Input<'_>) -> std::result::Result<(Vec<String>, Value), String> {
    let unsent = match input.path(&["data", "unchanged"], ".data.unchanged") {
        Ok(Value::Array(names)) => {
            names.into_iter().filter_map(|n| n.as_str().map(str::to_string)).collect()
        }
        // Not a CDC change (no object `data`): nothing is unsent.
        _ => Vec::new(),
    };
    if unsent.is_empty() {
        return Ok((unsent, Value::Null));
    }
    let moved_from = input.path(&["data", "moved_from"], ".data.moved_from").unwrap_or(Value::Null);
    Ok((unsent, moved_from))
}

/// `X` when `jq` is the plain path `.data.after.X`.
fn after_column(jq: &Jq) -> Option<&str> {
    match jq.path.as_deref() {
        Some([data, after, column]) if data == "data" && after == "after" => Some(column),
        _ => None,
    }
}

fn to_val(event: &Value) -> std::result::Result<Val, String> {
    jq_val(&event.to_string())
}

/// An event as jaq's value, read by jaq's own parser: it keeps integers of any size exactly and
/// decimals as their text (serde's visitor would hand jaq a double, or with
/// `arbitrary_precision` a private map).
fn jq_val(text: &str) -> std::result::Result<Val, String> {
    jaq_json::read::parse_single(text.as_bytes()).map_err(|e| format!("event is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn mapping(toml_text: &str) -> Mapper {
        #[derive(serde::Deserialize)]
        struct M {
            mapping: Vec<MappingConfig>,
        }
        let m: M = toml::from_str(toml_text).unwrap();
        Mapper::compile("t", &m.mapping).unwrap()
    }

    fn address_changed() -> Value {
        json!({"specversion": "1.0", "id": "e1", "source": "/customers",
               "type": "customer.address_changed.v1", "subject": "c-42", "sequence": "7",
               "data": {"address": {"street": "Main St 1", "zip": "10115", "city": "Berlin"},
                        "country": "DE"}})
    }

    #[test]
    fn the_readme_example_maps_an_address_change_to_an_invoice_contact() {
        let m = mapping(
            r#"
            [[mapping]]
            types = ["customer.address_changed.*"]
            filter = '.data.country == "DE"'
            table = "invoice_contacts"
            key = ["customer_id"]
            columns = { customer_id = ".subject", street = ".data.address.street",
                        city_line = '"\(.data.address.zip) \(.data.address.city)"' }
            "#,
        );
        let ops = m.map(&address_changed(), 9).unwrap();
        assert_eq!(ops.len(), 1);
        let op = &ops[0];
        assert_eq!(op.table, "invoice_contacts");
        assert_eq!(op.key, vec![("customer_id".to_string(), json!("c-42"))]);
        assert_eq!(op.columns["city_line"], json!("10115 Berlin"));
        assert_eq!(op.columns["street"], json!("Main St 1"));
        assert_eq!(op.version, "7", "the event's sequence is the version");
        let mut us = address_changed();
        us["data"]["country"] = json!("US");
        assert!(m.map(&us, 9).unwrap().is_empty(), "the filter drops it");
        let mut other = address_changed();
        other["type"] = json!("customer.created.v1");
        assert!(m.map(&other, 9).unwrap().is_empty(), "the type does not match");
    }

    #[test]
    fn versions_default_to_the_padded_offset_and_integers_are_padded() {
        let m = mapping(
            "[[mapping]]\ntable = \"t\"\nkey = [\"id\"]\nrow = \".data\"\n\
             [[mapping]]\ntable = \"u\"\nkey = [\"id\"]\nrow = \".data\"\nversion = \".data.v\"",
        );
        let e = json!({"type": "x", "data": {"id": 1, "v": 12}});
        let ops = m.map(&e, 42).unwrap();
        assert_eq!(ops[0].version, "00000000000000000042");
        assert_eq!(ops[1].version, "00000000000000000012");
        assert!(ops[1].version.as_str() < "00000000000000000100");
    }

    #[test]
    fn a_null_key_or_many_values_is_an_error_naming_the_mapping() {
        let m = mapping(
            "[[mapping]]\ntable = \"t\"\nkey = [\"id\"]\ncolumns = { id = \".data.missing\" }",
        );
        let err = m.map(&json!({"type": "x", "data": {}}), 0).unwrap_err();
        assert!(err.contains("mapping[0].key") && err.contains("null"), "{err}");
        let m =
            mapping("[[mapping]]\ntable = \"t\"\nkey = [\"id\"]\ncolumns = { id = \".data[]\" }");
        let err = m.map(&json!({"type": "x", "data": [1, 2]}), 0).unwrap_err();
        assert!(err.contains("several values"), "{err}");
    }

    #[test]
    fn a_delete_takes_its_key_from_the_subject_and_writes_only_the_key() {
        let m = mapping("[[mapping]]\ntable = \"t\"\nkey = [\"id\"]\nop = \"delete\"");
        let ops = m.map(&json!({"type": "x", "subject": "k1", "data": {"a": 1}}), 3).unwrap();
        assert_eq!(ops[0].op, OpKind::Delete);
        assert_eq!(ops[0].columns, BTreeMap::from([("id".to_string(), json!("k1"))]));
        assert_eq!(ops[0].key_text, r#"["k1"]"#);
    }

    /// Regression: a CDC delete mapped by its key alone took every key column's value from the
    /// subject, a string (`"5"`), while its upserts hold the typed key (`5`): their tombstones
    /// never matched (`["5"]` against `[5]`), and a composite key got the whole subject twice.
    #[test]
    fn a_cdc_delete_takes_its_typed_key_from_data_key() {
        let m = mapping("[[mapping]]\ntable = \"t\"\nkey = [\"a\", \"b\"]\nop = \"delete\"");
        let e = json!({"type": "x", "subject": "[5,\"x\"]", "data": {"key": {"a": 5, "b": "x"}}});
        for ops in [m.map(&e, 3).unwrap(), m.map_json(&e.to_string(), 3).unwrap().ops] {
            assert_eq!(ops[0].key_text, r#"[5,"x"]"#);
            assert!(!ops[0].keep_row);
        }
    }

    /// Unchanged TOASTed values: never mapped to null; a key change names both keys.
    #[test]
    fn unsent_values_are_listed_not_mapped_to_null() {
        let rows = mapping(
            "[[mapping]]\ntypes = [\"*.insert\", \"*.update\"]\ntable = \"t\"\nkey = [\"id\"]\nrow = \".data.after\"\n\
             [[mapping]]\ntypes = [\"*.delete\"]\ntable = \"t\"\nkey = [\"id\"]\nop = \"delete\"",
        );
        let columns = mapping(
            "[[mapping]]\ntypes = [\"*.insert\"]\ntable = \"t\"\nkey = [\"pk\"]\n\
             columns = { pk = \".data.after.id\", big = \".data.after.big\", n = \".data.after.n\" }",
        );
        let computed = mapping(
            "[[mapping]]\ntable = \"t\"\nkey = [\"pk\"]\n\
             columns = { pk = \".data.after.id\", size = \".data.after.big | length\" }",
        );
        let insert = json!({"type": "t.insert", "data": {"after": {"id": 7, "n": 1},
            "key": {"id": 7}, "moved_from": {"id": 3}, "unchanged": ["big"]}});
        let delete = json!({"type": "t.delete", "data": {"before": {"id": 3},
            "key": {"id": 3}, "moved_to": {"id": 7}}});
        for text in [false, true] {
            let map = |m: &Mapper, e: &Value| {
                if text {
                    m.map_json(&e.to_string(), 1).map(|x| x.ops)
                } else {
                    m.map(e, 1)
                }
            };
            let op = &map(&rows, &insert).unwrap()[0];
            assert_eq!(op.unchanged, ["big"]);
            assert!(!op.columns.contains_key("big"));
            assert_eq!(op.moved_from, Some(vec![json!(3)]));
            let op = &map(&columns, &insert).unwrap()[0];
            assert_eq!(
                (op.unchanged.as_slice(), op.moved_from.clone()),
                (&["big".to_string()][..], Some(vec![json!(3)]))
            );
            assert!(!op.columns.contains_key("big") && op.columns["n"] == json!(1));
            let err = map(&computed, &insert).unwrap_err();
            assert!(err.contains("does not carry `big`"), "{err}");
            let op = &map(&rows, &delete).unwrap()[0];
            assert!(op.keep_row && op.key_text == "[3]", "{op:?}");
        }
    }

    #[test]
    fn syntax_errors_are_caught_at_compile_time_with_the_field() {
        let cfg: MappingConfig =
            toml::from_str("table = \"t\"\nkey = [\"id\"]\ncolumns = { id = \".a |\" }").unwrap();
        let err = Mapper::compile("s", &[cfg]).unwrap_err().to_string();
        assert!(err.contains("mapping[0].columns.id"), "{err}");
    }

    /// Issue 22: a jq syntax error ended in a Rust debug dump (`[(File { code: …, path: () },
    /// Parse([(Term, "")]))]`); it says what was expected, where, and what was found.
    #[test]
    fn jq_errors_are_sentences_with_the_column_not_debug_dumps() {
        for (source, says) in [
            (".a |", "expected term at column 5 (end of expression)"),
            (".a | if . then 1", "expected else or end at column 17 (end of expression)"),
            ("{a: 1 2}", "expected comma or right brace at column 7 (`2`)"),
            (".a | nosuchfn", "undefined filter `nosuchfn/0` at column 6"),
            ("$x", "undefined variable `$x` at column 1"),
        ] {
            let err = Jq::compile(source).unwrap_err();
            assert!(err.contains(says), "{source}: {err}");
            for dump in ["File {", "path: ()", "Parse(", "Term,", "Undefined"] {
                assert!(!err.contains(dump), "{source}: a debug dump: {err}");
            }
        }
    }

    #[test]
    fn plain_paths_give_what_jaq_gives() {
        let event = json!({"subject": "s", "data": {"after": {"city": "Oslo", "n": null}},
                           "text": "x"});
        for src in [".", ".subject", ".data.after.city", ".data.after.n", ".missing.deeper"] {
            let fast = Jq::compile(src).unwrap();
            assert!(fast.path.is_some(), "{src} is a plain path");
            let mut slow = Jq::compile(src).unwrap();
            slow.path = None;
            let text = event.to_string();
            let (mut a, mut b, mut c) =
                (Input::value(&event), Input::value(&event), Input::text(&text));
            let jaq = slow.one(&mut b).unwrap();
            assert_eq!(fast.one(&mut a).unwrap(), jaq, "{src}");
            assert_eq!(fast.one(&mut c).unwrap(), jaq, "{src} from text");
        }
        let bad = Jq::compile(".text.x").unwrap();
        assert!(bad.one(&mut Input::value(&event)).is_err());
        let text = event.to_string();
        let err = bad.one(&mut Input::text(&text)).unwrap_err();
        assert!(err.contains("cannot index a string with \"x\""), "{err}");
        assert!(Jq::compile(".a[0]").unwrap().path.is_none());
        assert!(Jq::compile(".data | .x").unwrap().path.is_none());
    }

    #[test]
    fn an_event_mapped_from_its_text_gives_what_its_parsed_value_gives() {
        let m = mapping(
            r#"
            [[mapping]]
            types = ["row.*"]
            table = "t"
            key = ["id"]
            row = ".data.after"
            [[mapping]]
            types = ["cols.*"]
            table = "u"
            key = ["id"]
            columns = { id = ".data.id", deep = ".data.a.b.c", whole = ".data", n = ".data.n + 1" }
            version = ".data.v"
            [[mapping]]
            types = ["gone"]
            table = "t"
            key = ["id"]
            op = "delete"
            [[mapping]]
            types = ["two.*"]
            table = "w"
            key = ["id"]
            columns = { id = ".data.id", x = ".data.p.q", y = ".data.r.q", z = ".data.p.s" }
            "#,
        );
        let cases = [
            // Sibling objects of the same length: each column reads its own object's members.
            r#"{"type":"two.x","data":{"id":1,"p":{"q":1,"s":3},"r":{"q":2,"s":4}}}"#,
            r#"{"type":"row.insert","sequence":"0009","data":{"after":{"id":1,"name":"a"}}}"#,
            // Escaped member names, and a repeated member (the last one counts, as in a Value).
            r#"{"type":"row.x","data":{"after":{"id":"k","x":[1,{"y":null}]},"after":{"id":2}}}"#,
            r#"{"type":"row.x","data":{"after":{"id":1},"after":{"id":3,"z":"last"}}}"#,
            r#"{"type":"cols.x","data":{"id":5,"a":{"b":{"c":"deep"}},"n":41,"v":7}}"#,
            r#"{"type":"cols.x","data":{"id":5,"a":null,"n":1,"v":"v1"}}"#,
            r#"{"type":"gone","subject":"s1","data":null}"#,
            r#"{"type":"other","data":{"after":{"id":1}}}"#,
            // Errors must match too: indexing a string, a missing key, a non-object row.
            r#"{"type":"cols.x","data":{"id":5,"a":"text","n":1,"v":1}}"#,
            r#"{"type":"row.x","data":{"after":{"name":"no id"}}}"#,
            r#"{"type":"row.x","data":{"after":[1,2]}}"#,
        ];
        for text in cases {
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(m.map_json(text, 7).map(|m| m.ops), m.map(&value, 7), "{text}");
        }
        let two = &m.map_json(cases[0], 7).unwrap().ops[0].columns;
        assert_eq!((&two["x"], &two["y"], &two["z"]), (&json!(1), &json!(2), &json!(3)));
        assert!(m.map_json(cases[1], 7).unwrap().ops[0].columns.contains_key("name"));
        assert_eq!(m.map_json(cases[3], 7).unwrap().ops[0].columns["z"], json!("last"));
        assert!(m.map_json(cases[8], 7).unwrap_err().contains("cannot index a string"));
        let timed = r#"{"type":"row.x","time":"2026-01-01T00:00:00Z","data":{"after":{"id":1}}}"#;
        assert_eq!(m.map_json(timed, 0).unwrap().time.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(m.map_json(cases[1], 0).unwrap().time, None);
    }

    /// A JSON value to render as text, member order and repeats included.
    #[derive(Debug, Clone)]
    enum J {
        Null,
        Bool(bool),
        Int(i64),
        Float(f64),
        Str(String),
        Arr(Vec<J>),
        Obj(Vec<(String, J)>),
    }

    fn json_tree() -> impl Strategy<Value = J> {
        let leaf = prop_oneof![
            Just(J::Null),
            any::<bool>().prop_map(J::Bool),
            any::<i64>().prop_map(J::Int),
            (-1e300f64..1e300).prop_map(J::Float),
            // Quotes, backslashes, control characters and non-ASCII text.
            "[\"\\\\a-z\u{0}-\u{1f}\u{e9}\u{1F600} {}\\[\\],:]{0,12}".prop_map(J::Str),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(J::Arr),
                prop::collection::vec(("[a-c\"\\\\\u{e9}]{0,3}", inner), 0..5).prop_map(J::Obj),
            ]
        })
    }

    /// Renders `j` with `gap` (JSON whitespace) between its tokens.
    fn render(j: &J, gap: &str, out: &mut String) {
        match j {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(&b.to_string()),
            J::Int(i) => out.push_str(&i.to_string()),
            J::Float(f) => out.push_str(&serde_json::to_string(f).unwrap()),
            J::Str(s) => out.push_str(&serde_json::to_string(s).unwrap()),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(gap);
                    render(item, gap, out);
                }
                out.push_str(gap);
                out.push(']');
            }
            J::Obj(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(gap);
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push_str(gap);
                    out.push(':');
                    out.push_str(gap);
                    render(v, gap, out);
                }
                out.push_str(gap);
                out.push('}');
            }
        }
    }

    /// serde's split of an object's members: the reference for [`members`].
    fn serde_members(text: &str) -> Vec<(String, String)> {
        struct Object(Vec<(String, String)>);
        impl<'de> serde::Deserialize<'de> for Object {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = Object;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("an object")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> std::result::Result<Object, A::Error> {
                        let mut out = Vec::new();
                        while let Some((k, v)) =
                            map.next_entry::<String, &'de serde_json::value::RawValue>()?
                        {
                            out.push((k, v.get().to_string()));
                        }
                        Ok(Object(out))
                    }
                }
                d.deserialize_map(V)
            }
        }
        serde_json::from_str::<Object>(text).unwrap().0
    }

    proptest! {
        /// The structural split finds exactly the members serde finds, in order, repeats and
        /// escaped names included, with or without whitespace between tokens.
        #[test]
        fn the_structural_split_finds_what_serde_finds(
            members_of in prop::collection::vec(("[a-c\"\\\\\u{e9}]{0,3}", json_tree()), 0..6),
            gap in prop_oneof![Just(""), Just(" "), Just("\n"), Just("\t"), Just("\r\n  ")],
        ) {
            let mut text = String::new();
            render(&J::Obj(members_of), gap, &mut text);
            let ours: Vec<(String, String)> = members(&text)
                .unwrap()
                .into_iter()
                .map(|(k, v)| (k.into_owned(), v.to_string()))
                .collect();
            prop_assert_eq!(ours, serde_members(&text), "{}", text);
        }

        /// Whatever the text, the split answers (members or an error) and never panics.
        #[test]
        fn the_structural_split_never_panics(text in "[{}\\[\\]\":,\\\\ a-c0-9\u{e9}]{0,40}") {
            let _ = members(&text);
        }
    }

    #[test]
    fn type_patterns() {
        assert!(type_matches("customer.*", "customer.created.v1"));
        assert!(type_matches("*.v1", "customer.created.v1"));
        assert!(type_matches("c*d*1", "customer.created.v1"));
        assert!(!type_matches("order.*", "customer.created.v1"));
        assert!(type_matches("exact", "exact") && !type_matches("exact", "exactly"));
    }
}

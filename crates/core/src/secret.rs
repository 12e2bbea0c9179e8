//! Credentials in configuration, and the redaction that keeps them out of every text Driftless
//! shows.
//!
//! A [`Secret`] is a configuration value that is a credential: a Postgres URL (it may carry a
//! password), a webhook URL (it may carry `?token=`), a signing secret. In TOML it is written
//! inline (`url = "postgres://…"`), or read from the environment (`url = { env = "PG_URL" }`) or
//! from a file (`url = { file = "/run/secrets/pg" }`, one trailing newline trimmed).
//!
//! Invariants:
//! - A `Secret`'s `Debug`, `Display` and `Serialize` print [`REDACTED`], never the value; the
//!   value is reached only through [`Secret::expose`], at the call that needs it (a driver's
//!   connect, an HTTP request, an HMAC key).
//! - Every `Secret` registers its value (and, for a URL, its password and query values) in a
//!   process-wide list, bounded by [`KNOWN_SECRETS_MAX`], so [`redact`] can remove it from any
//!   text, including texts written by a driver that never saw the `Secret` type.
//! - [`redact`] also removes, without any registration, the password of every `scheme://user:pw@`
//!   URL, every URL query value and every `password=` key-value pair, so a URL built at run time is
//!   covered too.
//! - Errors about a missing variable or file name the variable or the path, never a value.
//!
//! This module is the one exception to "core does no IO": resolving `{ env }` and `{ file }`
//! reads the environment or one small file ([`SECRET_FILE_BYTES_MAX`]) once, when the
//! configuration is loaded. It lives here because every crate with credentials depends on core.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// What every redacted value is replaced with.
pub const REDACTED: &str = "***";

/// Largest secret file read; a credential is never this big, a wrong path (a log file) may be.
pub const SECRET_FILE_BYTES_MAX: u64 = 64 * 1024;

/// Most distinct values kept for [`redact`]; later ones are still covered by the structural
/// rules (URL passwords, query values, `password=`), only not as free text.
pub const KNOWN_SECRETS_MAX: usize = 4096;

/// Shortest value redacted as free text: shorter ones ("a", "db") would blank out ordinary words.
/// Short passwords inside URLs and `password=` pairs are still redacted structurally.
pub const KNOWN_SECRET_BYTES_MIN: usize = 6;

/// A secret that could not be resolved.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SecretError {
    /// `{ env = "NAME" }` but the variable is not set (or not UTF-8).
    #[error(
        "environment variable `{name}` is not set (or not UTF-8); set it or write the value inline"
    )]
    EnvMissing {
        /// The variable's name.
        name: String,
    },
    /// `{ file = "/path" }` could not be read.
    #[error("cannot read the secret file {}: {reason}; check the path and its permissions", path.display())]
    FileUnreadable {
        /// The file.
        path: PathBuf,
        /// Why (the OS error, or too large / not UTF-8).
        reason: String,
    },
    /// The resolved value is empty.
    #[error("the secret from {from} is empty")]
    Empty {
        /// Where it came from (`environment variable X`, `file Y`, `inline value`).
        from: String,
    },
}

/// A credential from the configuration. See the module documentation.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a value and registers it for [`redact`].
    pub fn new(value: impl Into<String>) -> Self {
        let value: String = value.into();
        register(&value);
        Secret(Arc::from(value))
    }

    /// Reads `NAME` from the environment.
    pub fn from_env(name: &str) -> Result<Self, SecretError> {
        let value =
            std::env::var(name).map_err(|_| SecretError::EnvMissing { name: name.to_string() })?;
        let value = trim_one_newline(value);
        if value.is_empty() {
            return Err(SecretError::Empty { from: format!("environment variable `{name}`") });
        }
        Ok(Self::new(value))
    }

    /// Reads a file (at most [`SECRET_FILE_BYTES_MAX`]), trimming one trailing newline.
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        let unreadable =
            |reason: String| SecretError::FileUnreadable { path: path.to_path_buf(), reason };
        let len = std::fs::metadata(path).map_err(|e| unreadable(e.to_string()))?.len();
        if len > SECRET_FILE_BYTES_MAX {
            return Err(unreadable(format!(
                "{len} bytes, more than the {SECRET_FILE_BYTES_MAX} a secret may have"
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
        let value = String::from_utf8(bytes).map_err(|_| unreadable("not UTF-8".into()))?;
        let value = trim_one_newline(value);
        if value.is_empty() {
            return Err(SecretError::Empty { from: format!("file {}", path.display()) });
        }
        Ok(Self::new(value))
    }

    /// The value, for the one call that needs it. Never format it into a message.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret::new(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl Secret {
    /// What may be shown of it: a URL or key-value string keeps its shape (scheme, user, host,
    /// database, query names) with the password and query values redacted, so an operator can
    /// tell which one it is; anything else is [`REDACTED`].
    pub fn shown(&self) -> String {
        if self.0.contains("://") || self.0.contains('=') {
            redact_structure(&self.0)
        } else {
            REDACTED.to_string()
        }
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown())
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.shown())
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SecretVisitor)
    }
}

struct SecretVisitor;

impl<'de> serde::de::Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"a string, { env = "NAME" } or { file = "/path" }"#)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
        if v.is_empty() {
            return Err(E::custom(
                "an empty value; write the credential, { env = \"NAME\" } or { file = \"/path\" }",
            ));
        }
        Ok(Secret::new(v))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Secret, A::Error> {
        use serde::de::Error;
        let mut found: Option<Secret> = None;
        while let Some(key) = map.next_key::<String>()? {
            if found.is_some() {
                return Err(A::Error::custom(
                    "a secret takes exactly one of `env` or `file`, not both",
                ));
            }
            let secret = match key.as_str() {
                "env" => Secret::from_env(&map.next_value::<String>()?),
                "file" => Secret::from_file(&map.next_value::<PathBuf>()?),
                other => {
                    return Err(A::Error::custom(format!(
                        "unknown key `{other}` in a secret; expected `env` or `file`"
                    )))
                }
            };
            found = Some(secret.map_err(A::Error::custom)?);
        }
        found.ok_or_else(|| {
            A::Error::custom("an empty table; expected { env = \"NAME\" } or { file = \"/path\" }")
        })
    }
}

fn trim_one_newline(mut value: String) -> String {
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    value
}

static KNOWN: RwLock<Vec<Arc<str>>> = RwLock::new(Vec::new());

/// Registers `value` (and, if it is a URL, its decoded password and query values; if it is a
/// libpq key-value string, its password) so [`redact`] removes them from any text.
pub fn register(value: &str) {
    // A Postgres URL without a password or query values holds no credential; hiding it whole
    // would hide which server a connection error is about.
    let postgres = value.starts_with("postgres://") || value.starts_with("postgresql://");
    let plain = postgres && sensitive_spans(value).is_empty();
    let mut parts = if plain { Vec::new() } else { vec![value.to_string()] };
    for (start, end) in sensitive_spans(value) {
        let raw = &value[start..end];
        parts.push(raw.to_string());
        parts.push(percent_decode(raw));
    }
    // A panic elsewhere while holding the lock cannot leave the list half-written: keep using it.
    let mut known = KNOWN.write().unwrap_or_else(|p| p.into_inner());
    add_known(&mut known, parts);
}

fn add_known(known: &mut Vec<Arc<str>>, parts: Vec<String>) {
    for part in parts {
        if part.len() < KNOWN_SECRET_BYTES_MIN || part.contains(REDACTED) {
            continue;
        }
        if known.len() >= KNOWN_SECRETS_MAX {
            return;
        }
        if !known.iter().any(|k| **k == *part) {
            known.push(Arc::from(part));
            // Longest first, so a value that contains another is replaced whole.
            known.sort_by_key(|k| std::cmp::Reverse(k.len()));
        }
    }
}

/// `text` with every credential replaced by [`REDACTED`]: registered secret values, URL
/// passwords (`scheme://user:PASSWORD@host`), URL query values (`?token=VALUE&…`) and
/// `password=VALUE` pairs (quoted or not).
pub fn redact(text: &str) -> String {
    let mut out = text.to_string();
    {
        let known = KNOWN.read().unwrap_or_else(|p| p.into_inner());
        for value in known.iter() {
            if out.contains(&**value) {
                out = out.replace(&**value, REDACTED);
            }
        }
    }
    redact_structure(&out)
}

/// `text` with URL passwords, URL query values and `password=` values redacted (no registry).
fn redact_structure(text: &str) -> String {
    let out = text;
    let spans = sensitive_spans(out);
    if spans.is_empty() {
        return out.to_string();
    }
    let mut result = String::with_capacity(out.len());
    let mut at = 0;
    for (start, end) in spans {
        result.push_str(&out[at..start]);
        result.push_str(REDACTED);
        at = end;
    }
    result.push_str(&out[at..]);
    result
}

/// Byte ranges of `text` that hold credentials by their position: URL passwords, URL query
/// values and `password=` values. Sorted, not overlapping.
fn sensitive_spans(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    // URLs: every "://".
    let mut from = 0;
    while let Some(pos) = text[from..].find("://") {
        let authority_start = from + pos + 3;
        let url_end = authority_start
            + text[authority_start..]
                .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
                .unwrap_or(text.len() - authority_start);
        let authority_end = authority_start
            + text[authority_start..url_end]
                .find(['/', '?', '#'])
                .unwrap_or(url_end - authority_start);
        if let Some(at) = text[authority_start..authority_end].rfind('@') {
            let userinfo = &text[authority_start..authority_start + at];
            if let Some(colon) = userinfo.find(':') {
                let start = authority_start + colon + 1;
                let end = authority_start + at;
                if start < end {
                    spans.push((start, end));
                }
            }
        }
        if let Some(q) = text[authority_end..url_end].find('?') {
            let query_start = authority_end + q + 1;
            let query_end =
                query_start + text[query_start..url_end].find('#').unwrap_or(url_end - query_start);
            let mut pair_start = query_start;
            for pair in text[query_start..query_end].split('&') {
                if let Some(eq) = pair.find('=') {
                    let start = pair_start + eq + 1;
                    let end = pair_start + pair.len();
                    if start < end {
                        spans.push((start, end));
                    }
                }
                pair_start += pair.len() + 1;
            }
        }
        from = url_end.max(authority_start);
    }
    // libpq key-value: password=VALUE or password='VALUE with spaces'.
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(pos) = lower[from..].find("password") {
        let mut i = from + pos + "password".len();
        from = i;
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        if i >= bytes.len() || bytes[i] != b'=' {
            continue;
        }
        i += 1;
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        let start = i;
        let end = if i < bytes.len() && bytes[i] == b'\'' {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'\'' {
                if bytes[j] == b'\\' {
                    j += 1;
                }
                j += 1;
            }
            (j + 1).min(bytes.len())
        } else {
            let mut j = i;
            while j < bytes.len()
                && !bytes[j].is_ascii_whitespace()
                && !matches!(bytes[j], b'&' | b'"' | b',' | b';')
            {
                j += 1;
            }
            j
        };
        if start < end && &text[start..end] != REDACTED {
            spans.push((start, end));
        }
        from = end.max(from);
    }
    spans.sort_unstable();
    // Merge overlaps (a `password=` inside a URL query).
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for (s, e) in spans {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged.retain(|&(s, e)| text.is_char_boundary(s) && text.is_char_boundary(e));
    merged
}

/// `%XX` decoded (invalid escapes kept as written; invalid UTF-8 replaced).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for building URLs in tests
/// and examples.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn url_passwords_and_query_values_are_redacted_without_registration() {
        let text = "connecting to postgres://app:hunter2@db:5432/app failed; \
                    hook http://h/x?token=abc123&b=1 said no; password=pw9 'x'";
        let r = redact(text);
        assert_eq!(
            r,
            "connecting to postgres://app:***@db:5432/app failed; \
             hook http://h/x?token=***&b=*** said no; password=*** 'x'"
        );
    }

    #[test]
    fn quoted_keyword_passwords_are_redacted_whole() {
        let r = redact("host=h password='a b c' dbname=x");
        assert_eq!(r, "host=h password=*** dbname=x");
    }

    #[test]
    fn a_secret_prints_redacted_and_its_value_is_removed_from_any_text() {
        let s = Secret::new("whsec_registeredvalue42");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(
            redact("signing with whsec_registeredvalue42 failed"),
            "signing with *** failed"
        );
    }

    #[test]
    fn a_url_secret_displays_its_shape_without_the_password() {
        let s = Secret::new("postgres://u:Pa55word-x@db/app");
        assert_eq!(s.to_string(), "postgres://u:***@db/app");
        // Registered: the bare password is gone from a driver's message too, and the whole URL.
        assert_eq!(redact("auth failed for Pa55word-x"), "auth failed for ***");
        assert_eq!(redact("opening postgres://u:Pa55word-x@db/app"), "opening ***");
    }

    #[test]
    fn secrets_come_from_env_and_files_with_one_newline_trimmed() {
        std::env::set_var("DRIFTLESS_TEST_SECRET_FROM_ENV", "from-env-value\n");
        let s: Secret = toml_value(r#"{ env = "DRIFTLESS_TEST_SECRET_FROM_ENV" }"#).unwrap();
        assert_eq!(s.expose(), "from-env-value");
        let dir = std::env::temp_dir().join(format!("driftless-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        std::fs::write(&path, "from-file-value\n\n").unwrap();
        let s = Secret::from_file(&path).unwrap();
        assert_eq!(s.expose(), "from-file-value\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_variable_or_file_is_named_in_the_error() {
        let e = Secret::from_env("DRIFTLESS_TEST_SURELY_UNSET_42").unwrap_err().to_string();
        assert!(e.contains("DRIFTLESS_TEST_SURELY_UNSET_42"), "{e}");
        let e = Secret::from_file(Path::new("/nonexistent/driftless/secret")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/driftless/secret"), "{e}");
        let e = toml_value::<Secret>(r#"{ envv = "X" }"#).unwrap_err();
        assert!(e.contains("unknown key `envv`"), "{e}");
    }

    /// Deserializes `value` as a `Secret` through serde_json (the same visitor TOML uses).
    fn toml_value<T: serde::de::DeserializeOwned>(value: &str) -> Result<T, String> {
        // `{ env = "X" }` → `{"env": "X"}`.
        let json = value.replace(" = ", "\": ").replace("{ ", "{\"");
        serde_json::from_str(&json).map_err(|e| e.to_string())
    }

    proptest! {
        #[test]
        fn redacted_text_never_contains_a_url_password_or_token(
            password in "[^*]{1,24}",
            token in "[^*]{1,24}",
        ) {
            let pw_enc = percent_encode(&password);
            let tok_enc = percent_encode(&token);
            let text = format!(
                "source pg: connecting to postgres://app:{pw_enc}@127.0.0.1:5432/app: refused\n\
                 sink hook: http://127.0.0.1:9/hook?token={tok_enc}: 500 Internal Server Error\n\
                 libpq host=db password={pw_enc} dbname=app"
            );
            let r = redact(&text);
            prop_assert!(!r.contains(&format!(":{pw_enc}@")), "{r}");
            prop_assert!(!r.contains(&format!("token={tok_enc}")), "{r}");
            prop_assert!(!r.contains(&format!("password={pw_enc}")), "{r}");
            // Registered (as a configured Secret is), the decoded values are gone as free text.
            if password.len() >= KNOWN_SECRET_BYTES_MIN && token.len() >= KNOWN_SECRET_BYTES_MIN {
                let _pg = Secret::new(format!("postgres://app:{pw_enc}@127.0.0.1/app"));
                let _hook = Secret::new(format!("http://127.0.0.1:9/hook?token={tok_enc}"));
                let raw = format!("server said: bad password {password} / token {token}.");
                let r = redact(&raw);
                prop_assert!(!r.contains(&password), "{r}");
                prop_assert!(!r.contains(&token), "{r}");
            }
        }
    }
}

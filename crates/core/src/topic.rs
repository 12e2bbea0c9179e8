//! Validated topic names.
//!
//! Invariant: a [`TopicName`] is safe to use as a single path component and as a URL path segment:
//! 1 to [`TOPIC_NAME_BYTES_MAX`] bytes of ASCII letters, digits, `.`, `_` and `-`, and never `.` or
//! `..`. Names starting with `__` are reserved for Driftless's internal topics.

use std::fmt;

/// Longest accepted topic name, in bytes (Kafka's limit, so names can move between the two).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// A topic name that passed validation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct TopicName(String);

/// Why a string is not a valid topic name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic name {name:?}: {reason}")]
pub struct InvalidTopicName {
    /// The rejected name.
    pub name: String,
    /// What rule it broke, phrased for an operator.
    pub reason: &'static str,
}

impl TopicName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidTopicName> {
        let name = name.into();
        match Self::check(&name) {
            Some(reason) => Err(InvalidTopicName { name, reason }),
            None => Ok(Self(name)),
        }
    }

    /// Why `name` breaks the naming rules, if it does (no allocation). Consumer-group names
    /// follow the same rules and share this check.
    pub fn check(name: &str) -> Option<&'static str> {
        if name.is_empty() {
            Some("it is empty; use 1 to 249 characters from [A-Za-z0-9._-]")
        } else if name.len() > TOPIC_NAME_BYTES_MAX {
            Some("it is longer than 249 bytes; use 1 to 249 characters from [A-Za-z0-9._-]")
        } else if name == "." || name == ".." {
            Some("'.' and '..' are reserved path names")
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            Some("only ASCII letters, digits, '.', '_' and '-' are allowed")
        } else {
            None
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is one of Driftless's internal topics (offsets, DLQ state, connector positions).
    pub fn is_internal(&self) -> bool {
        self.0.starts_with("__")
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TopicName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TopicName::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["orders", "customers.v1", "pg.public.users", "a-b_c", "__consumer_offsets"] {
            assert_eq!(TopicName::new(name).map(|t| t.to_string()), Ok(name.to_string()));
        }
    }

    #[test]
    fn rejects_names_that_are_not_safe_path_components() {
        for name in ["", ".", "..", "a/b", "a b", "ünïcode", "x\0y", &"a".repeat(250)] {
            let err = TopicName::new(name).unwrap_err();
            assert_eq!(err.name, name);
            assert!(err.to_string().contains("invalid topic name"));
        }
    }

    #[test]
    fn internal_topics_are_recognised() {
        assert!(TopicName::new("__offsets").unwrap().is_internal());
        assert!(!TopicName::new("_offsets").unwrap().is_internal());
    }
}

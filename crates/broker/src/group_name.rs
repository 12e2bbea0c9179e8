//! Validated consumer-group names.
//!
//! Invariant: a [`GroupName`] is 1 to [`GROUP_NAME_BYTES_MAX`] bytes of ASCII letters, digits,
//! `.`, `_` and `-`, and never `.` or `..` — the same rules as topic names, so a name is safe as a
//! URL path segment, in a log line and inside the broker's internal keys. Every entry point that
//! takes a group name (the broker's API, hence HTTP, the sinks' configuration) checks it: an
//! unchecked name once carried a NUL that split another group's `__offsets` key.

use std::fmt;

/// Longest accepted group name, in bytes (the topic limit, so a sink's group can be named after
/// its topic).
pub const GROUP_NAME_BYTES_MAX: usize = driftless_core::TOPIC_NAME_BYTES_MAX;

/// A consumer-group name that passed validation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct GroupName(String);

/// Why a string is not a valid group name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid consumer group name {name:?}: {reason}")]
pub struct InvalidGroupName {
    /// The rejected name.
    pub name: String,
    /// What rule it broke, phrased for an operator.
    pub reason: &'static str,
}

impl GroupName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidGroupName> {
        let name = name.into();
        match Self::check(&name) {
            Some(reason) => Err(InvalidGroupName { name, reason }),
            None => Ok(Self(name)),
        }
    }

    /// Why `name` is not valid, if it is not (no allocation: the broker checks every call).
    pub fn check(name: &str) -> Option<&'static str> {
        driftless_core::TopicName::check(name)
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for GroupName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        GroupName::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["billing", "sink-orders", "sink-orders-rebuild", "a.b_c-1"] {
            assert_eq!(GroupName::new(name).map(|g| g.to_string()), Ok(name.to_string()));
        }
        assert!(GroupName::new("g".repeat(GROUP_NAME_BYTES_MAX)).is_ok());
    }

    #[test]
    fn rejects_names_with_separators_controls_or_too_long() {
        let long = "g".repeat(GROUP_NAME_BYTES_MAX + 1);
        for name in ["", ".", "..", "billing\0orders\x000", "a/b", "a:b", "a b", "é", &long] {
            let err = GroupName::new(name).unwrap_err();
            assert_eq!(err.name, name);
            assert!(err.to_string().contains("invalid consumer group name"), "{err}");
        }
    }
}

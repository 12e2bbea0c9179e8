//! Scopes: what a token (or a configured mTLS subject) may do, as `<operation>:<kind>:<pattern>`.
//!
//! Grammar (decided for the whole project, parsed strictly): operation ∈ {`read`, `produce`,
//! `consume`, `admin`}; kind ∈ {`topic`, `group`, `source`, `sink`, `reconciliation`, `server`}
//! or `*` (every kind); pattern = an exact name, a prefix ending in `*` (`crm.*`), or `*` alone
//! (every name). Names and prefixes use the resource-name alphabet `[A-Za-z0-9._-]`.
//!
//! Invariants: `admin` on a resource implies `read`, `produce` and `consume` on it, and nothing
//! else implies anything; a scope never matches a different kind; a prefix pattern matches
//! exactly the names that start with the prefix; parsing accepts nothing outside the grammar, so
//! a typo in a scope is an error at `token create` or at start, never a silently dead grant.

use std::fmt;
use std::str::FromStr;

/// Longest scope text accepted, in bytes (`admin:reconciliation:` plus a 249-byte name).
pub const SCOPE_BYTES_MAX: usize = 300;
/// Longest name or prefix in a pattern, in bytes (the resource-name limit).
pub const PATTERN_BYTES_MAX: usize = 249;

/// What a request does to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// Look at it (describe, list).
    Read,
    /// Append events to it.
    Produce,
    /// Receive events through it.
    Consume,
    /// Change or delete it; implies the other three.
    Admin,
}

impl Operation {
    /// Every operation, in grammar order.
    pub const ALL: [Operation; 4] = [Self::Read, Self::Produce, Self::Consume, Self::Admin];

    /// The word in the grammar.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Produce => "produce",
            Self::Consume => "consume",
            Self::Admin => "admin",
        }
    }

    /// Whether a grant of `self` covers a request for `wanted`.
    pub fn covers(self, wanted: Operation) -> bool {
        self == wanted || self == Self::Admin
    }
}

/// The kind of resource an operation is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A topic.
    Topic,
    /// A consumer group.
    Group,
    /// A configured source.
    Source,
    /// A configured sink.
    Sink,
    /// A configured reconciliation.
    Reconciliation,
    /// The server itself (metrics, audit, the API description).
    Server,
}

impl Kind {
    /// Every kind, in grammar order.
    pub const ALL: [Kind; 6] =
        [Self::Topic, Self::Group, Self::Source, Self::Sink, Self::Reconciliation, Self::Server];

    /// The word in the grammar.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Topic => "topic",
            Self::Group => "group",
            Self::Source => "source",
            Self::Sink => "sink",
            Self::Reconciliation => "reconciliation",
            Self::Server => "server",
        }
    }
}

/// Which names a scope applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Every name (`*`).
    Any,
    /// Names starting with this prefix (`crm.*` holds `crm.`).
    Prefix(String),
    /// Exactly this name.
    Exact(String),
}

impl Pattern {
    /// Whether `name` is one of the names this pattern applies to.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Prefix(p) => name.starts_with(p.as_str()),
            Self::Exact(n) => n == name,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Prefix(p) => write!(f, "{p}*"),
            Self::Exact(n) => f.write_str(n),
        }
    }
}

/// One grant: an operation on the resources of a kind (or every kind) whose names match.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    /// The operation granted (`admin` implies the others).
    pub operation: Operation,
    /// The kind it applies to; `None` is `*`, every kind.
    pub kind: Option<Kind>,
    /// The names it applies to.
    pub pattern: Pattern,
}

/// Why a scope's text is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// Not three `:`-separated parts.
    #[error(
        "scope {0:?} is not `<operation>:<kind>:<pattern>` (for example `produce:topic:crm.*`)"
    )]
    Shape(String),
    /// Longer than [`SCOPE_BYTES_MAX`].
    #[error("a scope is {0} bytes; at most {SCOPE_BYTES_MAX} are accepted")]
    TooLong(usize),
    /// Unknown operation word.
    #[error("scope {scope:?}: unknown operation {word:?}; use read, produce, consume or admin")]
    Operation {
        /// The whole scope.
        scope: String,
        /// The word found.
        word: String,
    },
    /// Unknown kind word.
    #[error(
        "scope {scope:?}: unknown kind {word:?}; use topic, group, source, sink, \
         reconciliation, server or *"
    )]
    Kind {
        /// The whole scope.
        scope: String,
        /// The word found.
        word: String,
    },
    /// The pattern is not a name, a prefix ending in `*`, or `*`.
    #[error(
        "scope {scope:?}: pattern {pattern:?} {why}; use a name, a prefix ending in `*` \
         (`crm.*`), or `*`, from the characters [A-Za-z0-9._-]"
    )]
    Pattern {
        /// The whole scope.
        scope: String,
        /// The pattern found.
        pattern: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(text: &str) -> Result<Self, ScopeError> {
        if text.len() > SCOPE_BYTES_MAX {
            return Err(ScopeError::TooLong(text.len()));
        }
        let mut parts = text.split(':');
        let (Some(op), Some(kind), Some(pattern), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ScopeError::Shape(text.to_string()));
        };
        let operation = Operation::ALL.into_iter().find(|o| o.as_str() == op).ok_or_else(|| {
            ScopeError::Operation { scope: text.to_string(), word: op.to_string() }
        })?;
        let kind = if kind == "*" {
            None
        } else {
            Some(Kind::ALL.into_iter().find(|k| k.as_str() == kind).ok_or_else(|| {
                ScopeError::Kind { scope: text.to_string(), word: kind.to_string() }
            })?)
        };
        let bad = |why| ScopeError::Pattern {
            scope: text.to_string(),
            pattern: pattern.to_string(),
            why,
        };
        let pattern = if pattern == "*" {
            Pattern::Any
        } else {
            let (body, prefix) = match pattern.strip_suffix('*') {
                Some(body) => (body, true),
                None => (pattern, false),
            };
            if body.is_empty() {
                return Err(bad("is empty"));
            }
            if body.len() > PATTERN_BYTES_MAX {
                return Err(bad("is longer than 249 bytes"));
            }
            if body.contains('*') {
                return Err(bad("has a `*` that is not at its end"));
            }
            if !body.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
                return Err(bad("has a character outside [A-Za-z0-9._-]"));
            }
            if prefix {
                Pattern::Prefix(body.to_string())
            } else {
                Pattern::Exact(body.to_string())
            }
        };
        Ok(Scope { operation, kind, pattern })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind.map_or("*", Kind::as_str);
        write!(f, "{}:{kind}:{}", self.operation.as_str(), self.pattern)
    }
}

impl Scope {
    /// Whether this grant allows `operation` on the `kind` resource called `name`.
    pub fn allows(&self, operation: Operation, kind: Kind, name: &str) -> bool {
        self.operation.covers(operation)
            && self.kind.is_none_or(|k| k == kind)
            && self.pattern.matches(name)
    }

    /// Whether this grant allows `operation` on every resource of `kind` (its pattern is `*`):
    /// what listing a kind needs, since a list names resources outside any narrower grant.
    pub fn allows_every(&self, operation: Operation, kind: Kind) -> bool {
        self.operation.covers(operation)
            && self.kind.is_none_or(|k| k == kind)
            && self.pattern == Pattern::Any
    }
}

/// The scopes of one principal. Denies everything not granted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    scopes: Vec<Scope>,
}

impl Grants {
    /// Grants holding `scopes`.
    pub fn new(scopes: Vec<Scope>) -> Self {
        Self { scopes }
    }

    /// Parses every scope text; the first error is returned.
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<Self, ScopeError> {
        texts.iter().map(|t| t.as_ref().parse()).collect::<Result<Vec<_>, _>>().map(Self::new)
    }

    /// The scopes.
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// Whether some scope allows `operation` on the `kind` resource `name`.
    pub fn allows(&self, operation: Operation, kind: Kind, name: &str) -> bool {
        self.scopes.iter().any(|s| s.allows(operation, kind, name))
    }

    /// Whether some scope allows `operation` on at least one name of `kind`: a request whose
    /// resource name is in its body can be refused early without one; the handler then checks
    /// the name itself.
    pub fn allows_some(&self, operation: Operation, kind: Kind) -> bool {
        self.scopes
            .iter()
            .any(|s| s.operation.covers(operation) && s.kind.is_none_or(|k| k == kind))
    }

    /// Whether some scope allows `operation` on every resource of `kind`.
    pub fn allows_every(&self, operation: Operation, kind: Kind) -> bool {
        self.scopes.iter().any(|s| s.allows_every(operation, kind))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn scope(s: &str) -> Scope {
        s.parse().unwrap()
    }

    #[test]
    fn scopes_round_trip_through_their_text() {
        for s in ["produce:topic:crm.*", "consume:group:sink-*", "admin:server:*", "admin:*:*"] {
            assert_eq!(scope(s).to_string(), s);
        }
        assert_eq!(scope("read:sink:crm").pattern, Pattern::Exact("crm".into()));
    }

    #[test]
    fn malformed_scopes_are_refused_with_the_reason() {
        for (text, needle) in [
            ("produce:topic", "is not `<operation>"),
            ("produce:topic:a:b", "is not `<operation>"),
            ("write:topic:a", "unknown operation \"write\""),
            ("read:topics:a", "unknown kind \"topics\""),
            ("read:topic:", "is empty"),
            ("read:topic:a*b", "not at its end"),
            ("read:topic:*a*", "not at its end"),
            ("read:topic:a b", "outside [A-Za-z0-9._-]"),
            ("read:topic:**", "not at its end"),
            ("READ:topic:a", "unknown operation"),
        ] {
            let err = text.parse::<Scope>().unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
        let long = format!("read:topic:{}", "a".repeat(SCOPE_BYTES_MAX));
        assert!(matches!(long.parse::<Scope>(), Err(ScopeError::TooLong(_))));
    }

    #[test]
    fn admin_implies_the_other_operations_and_nothing_else_does() {
        let admin = scope("admin:topic:orders");
        for op in Operation::ALL {
            assert!(admin.allows(op, Kind::Topic, "orders"), "{op:?}");
        }
        let consume = scope("consume:topic:orders");
        assert!(consume.allows(Operation::Consume, Kind::Topic, "orders"));
        for op in [Operation::Read, Operation::Produce, Operation::Admin] {
            assert!(!consume.allows(op, Kind::Topic, "orders"), "{op:?}");
        }
    }

    #[test]
    fn patterns_match_exact_names_prefixes_and_everything() {
        let prefix = scope("produce:topic:crm.*");
        assert!(prefix.allows(Operation::Produce, Kind::Topic, "crm.orders"));
        assert!(prefix.allows(Operation::Produce, Kind::Topic, "crm."));
        assert!(!prefix.allows(Operation::Produce, Kind::Topic, "crm"));
        assert!(!prefix.allows(Operation::Produce, Kind::Topic, "billing.crm.x"));
        assert!(!prefix.allows(Operation::Produce, Kind::Group, "crm.orders"));
        let exact = scope("read:group:g1");
        assert!(exact.allows(Operation::Read, Kind::Group, "g1"));
        assert!(!exact.allows(Operation::Read, Kind::Group, "g10"));
        let every = scope("admin:*:*");
        for kind in Kind::ALL {
            assert!(every.allows(Operation::Admin, kind, "anything"));
            assert!(every.allows_every(Operation::Read, kind));
        }
    }

    #[test]
    fn listing_needs_a_wildcard_grant() {
        let grants = Grants::parse(&["read:topic:crm.*", "read:group:*"]).unwrap();
        assert!(!grants.allows_every(Operation::Read, Kind::Topic));
        assert!(grants.allows_every(Operation::Read, Kind::Group));
        assert!(!grants.allows_every(Operation::Read, Kind::Sink));
        assert!(!Grants::default().allows(Operation::Read, Kind::Topic, "x"));
    }
}

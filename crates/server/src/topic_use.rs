//! Which configured sources, sinks and reconciliations use a topic, so that deleting a topic
//! something still reads or writes is refused (409 `topic-in-use`) instead of happening without
//! a word: a sink would go on consuming nothing, and a source would recreate the topic, empty,
//! at its next event.
//!
//! Invariants: the answer comes from the configuration the server started with (`[[source]]`,
//! `[[sink]]`, `[[reconcile]]`), never from traffic, so it is the same whether or not the
//! component has run yet; a source whose topics are named at run time is matched by the shape
//! of the names it can write (a CDC source's `topic` template, an outbox's `topic_prefix`), so it
//! may name a topic it never wrote (it *could*), never miss one it did; each user is named as
//! `kind/name`, like the audit trail's resources.

use driftless_connect::config::{SourceConfig, SourceKind};
use driftless_reconcile::ReconcileConfig;
use driftless_sink::config::SinkConfig;

/// One configured component and the topic names it reads or writes.
#[derive(Debug, Clone)]
struct User {
    /// `source/<name>`, `sink/<name>` or `reconciliation/<name>`.
    resource: String,
    /// What it does with the topic, for the refusal's sentence.
    verb: &'static str,
    names: Names,
}

/// The topic names a component uses.
#[derive(Debug, Clone)]
enum Names {
    /// Exactly these.
    Exact(Vec<String>),
    /// Any name matching one of these CDC templates, each placeholder (`{database}`, `{schema}`,
    /// `{table}`) standing for one or more characters; `Exact` routes come with them.
    Templates { templates: Vec<String>, routes: Vec<String> },
    /// Any name starting with this (an outbox: `topic_prefix + aggregatetype`).
    Prefix(String),
}

/// The configured users of topics.
#[derive(Debug, Clone, Default)]
pub(crate) struct TopicUsers {
    users: Vec<User>,
}

impl TopicUsers {
    /// The users named by the server's configuration.
    pub(crate) fn from_config(
        sources: &[SourceConfig],
        sinks: &[SinkConfig],
        reconciles: &[ReconcileConfig],
    ) -> Self {
        let mut users = Vec::new();
        for source in sources {
            let names = Names::of_source(source);
            users.push(User { resource: format!("source/{}", source.name), verb: "writes", names });
        }
        for sink in sinks {
            users.push(User {
                resource: format!("sink/{}", sink.name),
                verb: "reads",
                names: Names::Exact(sink.topics.clone()),
            });
        }
        for r in reconciles {
            // Only a reconciliation that repairs writes (its corrections); its sink's topics are
            // the sink's.
            let Some(correction) = &r.correction else { continue };
            let topic = correction.topic.clone().or_else(|| {
                sinks.iter().find(|s| s.name == r.sink).and_then(|s| s.topics.first().cloned())
            });
            if let Some(topic) = topic {
                users.push(User {
                    resource: format!("reconciliation/{}", r.name),
                    verb: "writes corrections to",
                    names: Names::Exact(vec![topic]),
                });
            }
        }
        Self { users }
    }

    /// The users of `topic`: `(resource, verb)` in configuration order (sources, sinks,
    /// reconciliations).
    pub(crate) fn of(&self, topic: &str) -> Vec<(&str, &'static str)> {
        self.users
            .iter()
            .filter(|u| u.names.matches(topic))
            .map(|u| (u.resource.as_str(), u.verb))
            .collect()
    }
}

/// The topics a source can write, for people: exact names, and patterns where `*` stands for a
/// placeholder's value (a CDC template's `{database}`, an outbox's aggregate type). The same
/// rules as the `topic-in-use` refusal, so `GET /v1/sources` and a deletion never disagree.
pub(crate) fn source_topic_patterns(source: &SourceConfig) -> Vec<String> {
    Names::of_source(source).patterns()
}

impl Names {
    /// The names a source's configuration lets it write.
    fn of_source(source: &SourceConfig) -> Self {
        match &source.kind {
            SourceKind::PostgresCdc(c) => {
                let unrouted: Vec<&String> =
                    c.tables.iter().filter(|t| !c.routes.contains_key(*t)).collect();
                let templates = if c.tables.is_empty() {
                    vec![c.topic.clone()]
                } else {
                    // Listed tables fix `{schema}` and `{table}`; `{database}` comes from the
                    // URL, which may be a secret, so it stays a placeholder. A routed table's
                    // events go to its route only.
                    unrouted
                        .iter()
                        .map(|t| {
                            let (schema, table) = t.split_once('.').unwrap_or(("public", t));
                            c.topic.replace("{schema}", schema).replace("{table}", table)
                        })
                        .collect()
                };
                Names::Templates { templates, routes: c.routes.values().cloned().collect() }
            }
            SourceKind::PostgresOutbox(c) => Names::Prefix(c.outbox.topic_prefix.clone()),
            SourceKind::SqliteOutbox(c) => Names::Prefix(c.outbox.topic_prefix.clone()),
        }
    }

    /// The names as patterns, `*` for each placeholder's value; sorted, without repeats.
    fn patterns(&self) -> Vec<String> {
        let mut out: Vec<String> = match self {
            Names::Exact(names) => names.clone(),
            Names::Templates { templates, routes } => routes
                .iter()
                .cloned()
                .chain(templates.iter().map(|t| {
                    PLACEHOLDERS
                        .iter()
                        .fold(t.clone(), |t, placeholder| t.replace(placeholder, "*"))
                }))
                .collect(),
            Names::Prefix(prefix) => vec![format!("{prefix}*")],
        };
        out.sort();
        out.dedup();
        out
    }

    fn matches(&self, topic: &str) -> bool {
        match self {
            Names::Exact(names) => names.iter().any(|n| n == topic),
            Names::Templates { templates, routes } => {
                routes.iter().any(|n| n == topic)
                    || templates.iter().any(|t| template_matches(t, topic))
            }
            Names::Prefix(prefix) => topic.len() > prefix.len() && topic.starts_with(prefix),
        }
    }
}

/// Placeholders of a CDC `topic` template.
const PLACEHOLDERS: [&str; 3] = ["{database}", "{schema}", "{table}"];

/// Whether `topic` is what `template` gives for some non-empty values of its placeholders.
fn template_matches(template: &str, topic: &str) -> bool {
    // Split the template into its literal pieces; between two pieces stood a placeholder.
    let mut pieces = vec![String::new()];
    let mut rest = template;
    'outer: while !rest.is_empty() {
        for p in PLACEHOLDERS {
            if let Some(after) = rest.strip_prefix(p) {
                pieces.push(String::new());
                rest = after;
                continue 'outer;
            }
        }
        let mut chars = rest.chars();
        if let (Some(c), Some(last)) = (chars.next(), pieces.last_mut()) {
            last.push(c);
        }
        rest = chars.as_str();
    }
    glob(&pieces, topic)
}

/// Whether `text` is `pieces[0] X1 pieces[1] X2 … pieces[n]` with every `Xi` non-empty.
fn glob(pieces: &[String], text: &str) -> bool {
    match pieces {
        [] => text.is_empty(),
        [only] => text == only,
        [first, rest @ ..] => {
            let Some(after) = text.strip_prefix(first.as_str()) else { return false };
            // The placeholder takes at least one character; try every split (names are short:
            // at most 249 bytes, and templates hold at most a few placeholders).
            after
                .char_indices()
                .skip(1)
                .map(|(i, _)| i)
                .chain(std::iter::once(after.len()).filter(|&n| n > 0))
                .any(|i| glob(rest, &after[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_names_they_can_produce() {
        let t = "{database}.{schema}.{table}";
        assert!(template_matches(t, "shop.public.orders"));
        assert!(template_matches(t, "a.b.c.d"), "a database name may hold a dot");
        assert!(!template_matches(t, "orders"));
        assert!(!template_matches(t, "..orders"), "placeholders are never empty");
        assert!(template_matches("cdc.{table}", "cdc.orders"));
        assert!(!template_matches("cdc.{table}", "cdc."));
        assert!(template_matches("customers", "customers"));
        assert!(!template_matches("customers", "customers2"));
        assert!(template_matches("{database}.public.orders", "shop.public.orders"));
        assert!(!template_matches("{database}.public.orders", "shop.public.order"));
    }

    #[test]
    fn cdc_patterns_name_routes_and_the_templates_of_unrouted_tables_only() {
        let source = |tables: &[&str], routes: &[(&str, &str)]| {
            let mut text = String::from(
                "name = \"app\"\nkind = \"postgres_cdc\"\nurl = \"postgres://u@h/db\"\n",
            );
            let quoted: Vec<String> = tables.iter().map(|t| format!("{t:?}")).collect();
            text.push_str(&format!("tables = [{}]\n", quoted.join(", ")));
            for (table, topic) in routes {
                text.push_str(&format!("routes.{table:?} = {topic:?}\n"));
            }
            let config: SourceConfig = toml::from_str(&text).unwrap();
            source_topic_patterns(&config)
        };
        assert_eq!(
            source(&["public.a", "public.b"], &[("public.a", "orders")]),
            ["*.public.b", "orders"]
        );
        assert_eq!(source(&["public.a"], &[("public.a", "orders")]), ["orders"]);
        assert_eq!(source(&[], &[]), ["*.*.*"]);
    }

    #[test]
    fn an_outbox_prefix_matches_longer_names_only() {
        assert!(Names::Prefix("crm.".into()).matches("crm.customers"));
        assert!(!Names::Prefix("crm.".into()).matches("crm."));
        assert!(!Names::Prefix("crm.".into()).matches("billing.x"));
        assert!(Names::Prefix(String::new()).matches("anything"));
    }
}

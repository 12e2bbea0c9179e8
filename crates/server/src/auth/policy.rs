//! The authorization policy: for every route the router serves, by (method, route template),
//! what a request needs.
//!
//! Invariants: the table is the only place that says who may call what; a route that is served
//! but has no entry is refused to everyone once authentication is on (fail closed), and the
//! acceptance test (`tests/auth.rs`) fails, because it walks the router's OpenAPI document and
//! this table and requires them to agree; resource names come from the route's own parameters
//! (`{topic}`, `{group}`, `{source}`, `{sink}`, `{name}`), never from the query or headers.
//!
//! Listing endpoints (`GET /v1/topics`, `/v1/groups`, `/v1/sources`, `/v1/sinks`,
//! `/v1/reconciliations`) need `read` on every name of their kind (`read:<kind>:*`, or `admin`,
//! or a `*` kind): a list names resources outside a narrower grant, and is not filtered.
//!
//! Two requests name their resources in the body, which the layer does not read: creating a
//! topic (`admin:topic:<name>`) and joining a group (`consume:topic:<t>` for every topic
//! joined, besides `consume:group:{group}`). The layer requires a grant of that operation on
//! some name of the kind ([`Target::InBody`]); the handler checks the names it parsed
//! ([`super::Access::require`]), so the name checked is the name used.

use axum::http::Method;
use driftless_auth::{Kind, Operation};

/// Which resource name a request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// The value of this route parameter.
    Param(&'static str),
    /// Every name of the kind: the grant's pattern must be `*`.
    Every,
    /// Names in the request body, checked by the handler.
    InBody,
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// Anyone, authenticated or not (health checks, the dashboard's shell, signing in and out).
    Public,
    /// A grant of the operation on the kind and the target name.
    Need(Operation, Kind, Target),
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// Upper-case HTTP method.
    pub method: &'static str,
    /// The route template, as the router declares it.
    pub route: &'static str,
    /// What the request needs.
    pub rule: Rule,
}

use Kind::{Group, Reconciliation, Server, Sink, Source, Topic};
use Operation::{Admin, Consume, Produce, Read};
use Target::{Every, InBody, Param};

const fn p(method: &'static str, route: &'static str, rule: Rule) -> Policy {
    Policy { method, route, rule }
}

const fn need(op: Operation, kind: Kind, target: Target) -> Rule {
    Rule::Need(op, kind, target)
}

/// Every route and what it needs.
pub(crate) const POLICIES: &[Policy] = &[
    p("GET", "/", Rule::Public),
    p("GET", "/ui/{asset}", Rule::Public),
    p("GET", "/healthz", Rule::Public),
    p("GET", "/readyz", Rule::Public),
    p("GET", "/v1/session", Rule::Public),
    p("POST", "/v1/session", Rule::Public),
    p("DELETE", "/v1/session", Rule::Public),
    p("GET", "/metrics", need(Admin, Server, Every)),
    p("GET", "/v1/openapi.json", need(Read, Server, Every)),
    p("GET", "/v1/topics", need(Read, Topic, Every)),
    p("POST", "/v1/topics", need(Admin, Topic, InBody)),
    p("GET", "/v1/topics/{topic}", need(Read, Topic, Param("topic"))),
    p("DELETE", "/v1/topics/{topic}", need(Admin, Topic, Param("topic"))),
    p("POST", "/v1/topics/{topic}/events", need(Produce, Topic, Param("topic"))),
    p("GET", "/v1/groups", need(Read, Group, Every)),
    p("GET", "/v1/groups/{group}", need(Read, Group, Param("group"))),
    p("DELETE", "/v1/groups/{group}", need(Admin, Group, Param("group"))),
    // And `consume:topic:<t>` for each topic in the body, checked by the handler.
    p("POST", "/v1/groups/{group}/members", need(Consume, Group, Param("group"))),
    p("DELETE", "/v1/groups/{group}/members/{member}", need(Consume, Group, Param("group"))),
    p(
        "POST",
        "/v1/groups/{group}/members/{member}/heartbeat",
        need(Consume, Group, Param("group")),
    ),
    p("GET", "/v1/groups/{group}/members/{member}/events", need(Consume, Group, Param("group"))),
    p("GET", "/v1/groups/{group}/members/{member}/stream", need(Consume, Group, Param("group"))),
    p("POST", "/v1/groups/{group}/members/{member}/credit", need(Consume, Group, Param("group"))),
    p("POST", "/v1/groups/{group}/ack", need(Consume, Group, Param("group"))),
    p("POST", "/v1/groups/{group}/nack", need(Consume, Group, Param("group"))),
    // Moving a group's position skips or replays events for every consumer of it.
    p("POST", "/v1/groups/{group}/seek", need(Admin, Group, Param("group"))),
    // Dead letters hold the events themselves: the group's consumers may read them.
    p("GET", "/v1/groups/{group}/dlq", need(Consume, Group, Param("group"))),
    p("GET", "/v1/groups/{group}/dlq/{id}", need(Consume, Group, Param("group"))),
    p("DELETE", "/v1/groups/{group}/dlq/{id}", need(Admin, Group, Param("group"))),
    p("POST", "/v1/groups/{group}/dlq/{id}/retry", need(Admin, Group, Param("group"))),
    p("GET", "/v1/sources", need(Read, Source, Every)),
    p("GET", "/v1/sources/{source}", need(Read, Source, Param("source"))),
    p("POST", "/v1/sources/{source}/pause", need(Admin, Source, Param("source"))),
    p("POST", "/v1/sources/{source}/resume", need(Admin, Source, Param("source"))),
    p("GET", "/v1/sinks", need(Read, Sink, Every)),
    p("GET", "/v1/sinks/{sink}", need(Read, Sink, Param("sink"))),
    p("POST", "/v1/sinks/{sink}/pause", need(Admin, Sink, Param("sink"))),
    p("POST", "/v1/sinks/{sink}/resume", need(Admin, Sink, Param("sink"))),
    p("POST", "/v1/sinks/{sink}/rebuild", need(Admin, Sink, Param("sink"))),
    p("GET", "/v1/reconciliations", need(Read, Reconciliation, Every)),
    p("GET", "/v1/reconciliations/{name}", need(Read, Reconciliation, Param("name"))),
    p("POST", "/v1/reconciliations/{name}/run", need(Admin, Reconciliation, Param("name"))),
    // Rates and lags of every topic, group and sink: names of every kind, like the listings.
    p("GET", "/v1/history", need(Read, Server, Every)),
    // Who did what: the administrators' record.
    p("GET", "/v1/audit", need(Admin, Server, Every)),
];

/// What the table says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The row for this method and route.
    Found(Rule),
    /// The route has rows, but not for this method (the router answers 405).
    OtherMethod,
    /// The route has no row at all: refused (fail closed).
    NoPolicy,
}

/// The rule for `method` on the route template `route` (`HEAD` is looked up as `GET`, as the
/// router serves it).
pub(crate) fn lookup(method: &Method, route: &str) -> Lookup {
    let method = if method == Method::HEAD { "GET" } else { method.as_str() };
    let mut known = false;
    for policy in POLICIES.iter().filter(|p| p.route == route) {
        known = true;
        if policy.method == method {
            return Lookup::Found(policy.rule);
        }
    }
    if known {
        Lookup::OtherMethod
    } else {
        Lookup::NoPolicy
    }
}

/// The scope text a rule asks for, with `name` for a parameter (what a 403 and the OpenAPI
/// document show).
pub(crate) fn scope_text(op: Operation, kind: Kind, target: Target, name: Option<&str>) -> String {
    let pattern = match (target, name) {
        (Target::Param(_), Some(n)) => n.to_string(),
        (Target::Param(param), None) => format!("{{{param}}}"),
        (Target::Every, _) => "*".to_string(),
        (Target::InBody, Some(n)) => n.to_string(),
        (Target::InBody, None) => "<name>".to_string(),
    };
    format!("{}:{}:{pattern}", op.as_str(), kind.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_method_and_route_has_one_row() {
        let mut seen = std::collections::HashSet::new();
        for p in POLICIES {
            assert!(seen.insert((p.method, p.route)), "{} {} twice", p.method, p.route);
        }
    }

    #[test]
    fn unknown_routes_are_refused_and_other_methods_pass_to_the_router() {
        assert_eq!(lookup(&Method::GET, "/v1/new-thing"), Lookup::NoPolicy);
        assert_eq!(lookup(&Method::PUT, "/v1/topics"), Lookup::OtherMethod);
        assert_eq!(lookup(&Method::HEAD, "/v1/topics"), Lookup::Found(need(Read, Topic, Every)));
    }
}
